//! The disk cache (`--cache-dir`) and writeback (`--writeback`) end to end: writes acknowledged
//! while the object store is down survive a kill -9 of the mount and reach the bucket when the
//! mount starts again; the disk cache serves reads while the store is down.

mod common;

use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

const MIB: u64 = 1 << 20;

/// (name, length, seed). With 4 MiB blocks: 1 + 1 + 3 + 0 blocks committed.
const FILES: [(&str, u64, u64); 4] = [
    ("small", 1000, 1),
    ("one-block", 4 * MIB, 2),
    ("three-blocks", 9 * MIB + 7, 3),
    ("empty", 0, 4),
];
const BLOCKS: usize = 5;

/// Runs `f` on its own thread and fails the test if it takes longer than `limit`: an operation
/// that went to the stopped store would retry for minutes instead of failing.
#[track_caller]
fn within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => v,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what}: not done within {limit:?}")
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            panic!("{what}: failed (see the panic above)")
        }
    }
}

fn write_files(root: &Path, sync: bool) -> Vec<String> {
    FILES
        .iter()
        .map(|&(name, len, seed)| {
            let path = root.join(name);
            within(Duration::from_secs(60), "write and close", move || {
                write_random_file(&path, seed, len, sync)
            })
            .unwrap_or_else(|e| panic!("write {name}: {e}"))
        })
        .collect()
}

fn check_files(root: &Path, hashes: &[String], when: &str) {
    for (&(name, len, _), hash) in FILES.iter().zip(hashes) {
        let (path, hash, when_) = (root.join(name), hash.clone(), when.to_string());
        within(
            Duration::from_secs(60),
            &format!("{when}: read {name}"),
            move || assert_file(&path, len, &hash, &when_),
        );
    }
}

/// Files of the writeback folder of a disk cache: blocks not uploaded yet.
fn staged(cache: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for shard in fs::read_dir(cache.join("staged")).expect("the cache has a staged/ folder") {
        for f in fs::read_dir(shard.expect("entry").path()).expect("list a shard") {
            out.push(f.expect("entry").path());
        }
    }
    out
}

/// Block objects in the cluster's bucket (store probes excluded).
fn blocks_in_bucket(c: &Cluster) -> usize {
    c.seaweed()
        .list_objects(c.bucket())
        .iter()
        .filter(|o| !o.key.starts_with("cairn-probe/"))
        .count()
}

/// (a) With writeback, files written and closed while SeaweedFS is down are acknowledged (their
/// blocks staged on local disk); the mount daemon is killed with SIGKILL; SeaweedFS comes back;
/// the mount started again with the same cache folder uploads the staged blocks before it
/// serves, and the files read back byte for byte, also through a second mount without a cache.
#[test]
fn writeback_survives_store_outage_and_mount_kill9() {
    if !require_fuse() {
        return;
    }
    let cache_root = test_dir("writeback-cache");
    let cache = cache_root.path().join("cache");
    let cache_arg = cache.display().to_string();
    let mut c = Cluster::s3(bin())
        .mount_args(&[
            "--cache-dir",
            &cache_arg,
            "--cache-disk-size",
            "1GiB",
            "--writeback",
        ])
        .start();

    c.seaweed_mut().kill();
    let hashes = write_files(c.path(), false);
    // At least: a block the client superseded before committing it may still wait for its
    // delete (it would then be uploaded and left to reconciliation).
    let staged_blocks = staged(&cache).len();
    assert!(
        staged_blocks >= BLOCKS,
        "every block staged locally: {staged_blocks}"
    );

    c.mount_mut().kill();
    c.seaweed_mut().restart();
    assert_eq!(
        blocks_in_bucket(&c),
        0,
        "nothing was uploaded while the store was down"
    );

    c.remount();
    assert!(
        staged(&cache).is_empty(),
        "staged blocks are uploaded before the mount serves"
    );
    assert!(blocks_in_bucket(&c) >= BLOCKS);
    let log = fs::read_to_string(c.mount().log()).expect("mount log");
    assert!(
        log.contains("uploaded the blocks left by an earlier run"),
        "the mount log says what it uploaded at start:\n{log}"
    );
    check_files(
        c.path(),
        &hashes,
        "after kill -9 and a restart with the same cache",
    );

    let plain_mp = c.dir().join("plain");
    fs::create_dir(&plain_mp).expect("mkdir");
    let plain = Mount::start_with(
        c.bin(),
        c.volume(),
        &plain_mp,
        &c.meta().addr(),
        c.store_args(),
        &[],
    );
    check_files(plain.path(), &hashes, "through a mount without the cache");
    drop(plain);
}

/// (b) The disk cache serves reads: files written without a cache are read once through a
/// mount with `--cache-dir`; that mount restarts (its memory cache is gone) and SeaweedFS is
/// stopped; the files still read back, from the disk cache.
#[test]
fn disk_cache_serves_reads_while_the_store_is_down() {
    if !require_fuse() {
        return;
    }
    let cache_root = test_dir("l2-cache");
    let cache = cache_root.path().join("cache");
    let cache_arg = cache.display().to_string();
    let mut c = Cluster::s3(bin()).start();
    let hashes = write_files(c.path(), true);

    let mp = c.dir().join("cached");
    fs::create_dir(&mp).expect("mkdir");
    let mut cached = Mount::start_with(
        c.bin(),
        c.volume(),
        &mp,
        &c.meta().addr(),
        c.store_args(),
        &["--cache-dir", &cache_arg, "--cache-disk-size", "256MiB"],
    );
    check_files(cached.path(), &hashes, "first read, filling the disk cache");
    cached.restart();
    c.seaweed_mut().kill();
    check_files(
        cached.path(),
        &hashes,
        "from the disk cache, with the store down",
    );
    drop(cached);
}

/// Cache flags that cannot work fail at once with one line that says what to do.
#[test]
fn cache_flags_are_checked() {
    let dir = test_dir("cache-flags");
    let mp = dir.subdir("mnt");
    let inside = mp.join("cache").display().to_string();
    let cache = dir.path().join("cache").display().to_string();
    let cases: [(&[&str], &[&str]); 5] = [
        (&["--writeback"], &["--writeback needs --cache-dir"]),
        (&["--cache-disk-size", "1GiB"], &["--cache-dir"]),
        (
            &["--cache-dir", &cache, "--cache-disk-size", "1MiB"],
            &["too small", "64MiB"],
        ),
        (
            &["--cache-dir", &cache, "--cache-disk-size", "lots"],
            &["--cache-disk-size", "not a size"],
        ),
        (&["--cache-dir", &inside], &["inside the mount point"]),
    ];
    for (args, mentions) in cases {
        let out = run_with_timeout(
            cairn(&["mount", "start", "vol"])
                .arg(&mp)
                .args(["--meta", "127.0.0.1:1", "--store", "file:///nonexistent"])
                .args(args),
            FAST,
        );
        assert_clean_failure(&out, mentions);
    }
    assert!(
        !dir.path().join("cache").exists(),
        "nothing created for a refused mount"
    );
}
