//! A whole cairn deployment for one test: object store, metadata server, mount.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::logs::{find_panics, print_log_tails};
use crate::meta::MetaServer;
use crate::mount::{Mount, StoreArgs};
use crate::seaweed::SeaweedFs;
use crate::util::{test_dir, TestDir};
use crate::watchdog::{logs_under, Watchdog};

/// Where the cluster keeps its blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// A fresh SeaweedFS (`weed mini`) with one bucket.
    S3,
    /// A `file://` folder inside the cluster's folder.
    LocalFolder,
}

/// Builds a [`Cluster`]; see [`Cluster::s3`] and [`Cluster::local_folder`].
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    bin: PathBuf,
    store: StoreKind,
    volume: String,
    bucket: String,
    s3_prefix: Option<String>,
    meta_args: Vec<String>,
    mount_args: Vec<String>,
    mount_env: Vec<(String, String)>,
    timeout: Duration,
    name: String,
}

impl ClusterBuilder {
    fn new(bin: &Path, store: StoreKind) -> ClusterBuilder {
        let name = std::thread::current()
            .name()
            .unwrap_or("cluster")
            .to_string();
        let timeout = std::env::var("CAIRN_TEST_TIMEOUT")
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(Duration::from_secs(300));
        ClusterBuilder {
            bin: bin.to_path_buf(),
            store,
            volume: "testvol".into(),
            bucket: "cairn-test".into(),
            s3_prefix: None,
            meta_args: vec![],
            mount_args: vec![],
            mount_env: vec![],
            timeout,
            name,
        }
    }

    /// Volume name (default `testvol`).
    pub fn volume(mut self, v: &str) -> Self {
        self.volume = v.into();
        self
    }

    /// Bucket name (default `cairn-test`).
    pub fn bucket(mut self, b: &str) -> Self {
        self.bucket = b.into();
        self
    }

    /// Store blocks under `s3://BUCKET/PREFIX`.
    pub fn s3_prefix(mut self, p: &str) -> Self {
        self.s3_prefix = Some(p.into());
        self
    }

    /// Extra `cairn meta serve` arguments (`--block-size 1MiB`, `--sync`, ...).
    pub fn meta_args(mut self, args: &[&str]) -> Self {
        self.meta_args.extend(args.iter().map(|s| s.to_string()));
        self
    }

    /// Extra `cairn mount start` arguments.
    /// An environment variable for every mount of the cluster (test knobs of the daemon).
    pub fn mount_env(mut self, key: &str, value: &str) -> Self {
        self.mount_env.push((key.into(), value.into()));
        self
    }

    pub fn mount_args(mut self, args: &[&str]) -> Self {
        self.mount_args.extend(args.iter().map(|s| s.to_string()));
        self
    }

    /// Time limit of the whole test (default 300 s, or `$CAIRN_TEST_TIMEOUT` seconds); see
    /// [`Watchdog`].
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Name used for the folder and in messages (default: the test's thread name).
    pub fn name(mut self, n: &str) -> Self {
        self.name = n.into();
        self
    }

    /// Starts everything and mounts; panics (with logs) if any part fails.
    pub fn start(self) -> Cluster {
        let short = self
            .name
            .rsplit("::")
            .next()
            .unwrap_or(&self.name)
            .to_string();
        let dir = test_dir(&short);
        let watchdog = Watchdog::start(dir.path(), self.timeout, &self.name);
        let (s3, store) = match self.store {
            StoreKind::S3 => {
                let s3 = SeaweedFs::start();
                s3.create_bucket(&self.bucket);
                let url = match &self.s3_prefix {
                    Some(p) => format!("s3://{}/{p}", self.bucket),
                    None => format!("s3://{}", self.bucket),
                };
                let store = StoreArgs::s3_url(&s3, &url);
                (Some(s3), store)
            }
            StoreKind::LocalFolder => (None, StoreArgs::file(&dir.subdir("blocks"))),
        };
        let mut store = store;
        store.env.extend(self.mount_env);
        let meta_dir = dir.subdir("meta");
        let meta_args: Vec<&str> = self.meta_args.iter().map(|s| s.as_str()).collect();
        let meta = MetaServer::start(&self.bin, &meta_dir, &self.volume, &meta_args);
        let mountpoint = dir.subdir("mnt");
        let mount_args: Vec<&str> = self.mount_args.iter().map(|s| s.as_str()).collect();
        let mount = Mount::start_with(
            &self.bin,
            &self.volume,
            &mountpoint,
            &meta.addr(),
            &store,
            &mount_args,
        );
        Cluster {
            watchdog: Some(watchdog),
            mount: Some(mount),
            meta: Some(meta),
            s3,
            store,
            bucket: self.bucket,
            bin: self.bin,
            volume: self.volume,
            mount_args: self.mount_args,
            name: self.name,
            mounts_made: AtomicUsize::new(1),
            dir,
        }
    }
}

/// SeaweedFS (or a local folder) + bucket + `cairn meta serve` + one `cairn mount`, in one folder
/// under [`crate::test_root`], bounded in time by a [`Watchdog`].
///
/// Drop stops the mount (`cairn mount stop`) and the metadata server (SIGTERM), kills SeaweedFS,
/// and removes the folder. If the test has not failed by then, it fails the test if a stop failed
/// or any cairn log contains `panicked`; if the test is failing, it prints the tail of every log.
pub struct Cluster {
    watchdog: Option<Watchdog>,
    mount: Option<Mount>,
    meta: Option<MetaServer>,
    s3: Option<SeaweedFs>,
    store: StoreArgs,
    bucket: String,
    bin: PathBuf,
    volume: String,
    mount_args: Vec<String>,
    name: String,
    mounts_made: AtomicUsize,
    // Last: removed once everything above is stopped.
    dir: TestDir,
}

impl Cluster {
    /// A cluster over a fresh SeaweedFS bucket. `bin` is the `cairn` binary
    /// (`env!("CARGO_BIN_EXE_cairn")` in the cli crate's tests).
    pub fn s3(bin: impl AsRef<Path>) -> ClusterBuilder {
        ClusterBuilder::new(bin.as_ref(), StoreKind::S3)
    }

    /// A cluster over a `file://` block store in its folder.
    pub fn local_folder(bin: impl AsRef<Path>) -> ClusterBuilder {
        ClusterBuilder::new(bin.as_ref(), StoreKind::LocalFolder)
    }

    /// The first mount.
    pub fn mount(&self) -> &Mount {
        self.mount.as_ref().expect("cluster mount")
    }

    pub fn mount_mut(&mut self) -> &mut Mount {
        self.mount.as_mut().expect("cluster mount")
    }

    /// The first mount's path.
    pub fn path(&self) -> &Path {
        self.mount().path()
    }

    /// `path().join(rel)`.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.mount().join(rel)
    }

    pub fn meta(&self) -> &MetaServer {
        self.meta.as_ref().expect("cluster meta server")
    }

    pub fn meta_mut(&mut self) -> &mut MetaServer {
        self.meta.as_mut().expect("cluster meta server")
    }

    /// The S3 server (panics for a local-folder cluster).
    pub fn seaweed(&self) -> &SeaweedFs {
        self.s3
            .as_ref()
            .expect("this cluster has no SeaweedFS (local folder store)")
    }

    pub fn seaweed_mut(&mut self) -> &mut SeaweedFs {
        self.s3
            .as_mut()
            .expect("this cluster has no SeaweedFS (local folder store)")
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    pub fn store_args(&self) -> &StoreArgs {
        &self.store
    }

    pub fn volume(&self) -> &str {
        &self.volume
    }

    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// The cluster's folder.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops the first mount and mounts again: a fresh client with no cache.
    pub fn remount(&mut self) {
        self.mount_mut().restart();
    }

    /// Another mount of the same volume (a second client) at a new mount point in the folder.
    /// The caller owns it; drop it before the cluster (declare it after).
    pub fn new_mount(&self) -> Mount {
        let n = self.mounts_made.fetch_add(1, Ordering::SeqCst) + 1;
        let mp = self.dir.subdir(&format!("mnt{n}"));
        let args: Vec<&str> = self.mount_args.iter().map(|s| s.as_str()).collect();
        Mount::start_with(
            &self.bin,
            &self.volume,
            &mp,
            &self.meta().addr(),
            &self.store,
            &args,
        )
    }

    /// Log files of the cairn processes (everything but SeaweedFS's).
    pub fn cairn_logs(&self) -> Vec<PathBuf> {
        // SeaweedFS lives in a folder of its own, so this holds only cairn logs.
        logs_under(self.dir.path())
    }

    /// Every log file of the cluster, SeaweedFS's included.
    pub fn all_logs(&self) -> Vec<PathBuf> {
        let mut v = logs_under(self.dir.path());
        if let Some(s) = &self.s3 {
            v.push(s.log().to_path_buf());
        }
        v
    }

    /// Panics if a cairn log reports a panic (STYLE 4.4). Drop checks this too.
    pub fn assert_no_panics(&self) {
        crate::logs::assert_no_panics_in(&self.cairn_logs());
    }

    /// Prints the tail of every log.
    pub fn print_logs(&self, lines: usize) {
        print_log_tails(&self.all_logs(), lines);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let failing = std::thread::panicking();
        let mut problems = Vec::new();
        if let Some(w) = self.watchdog.as_ref().filter(|w| w.fired()) {
            problems.push(format!(
                "the test ran past its time limit of {} s: the watchdog killed its processes and \
                 mounts (the logs are printed above)",
                w.limit().as_secs()
            ));
        }
        if failing {
            let kept = crate::util::keep_failed();
            eprintln!(
                "testkit: {} failed; logs under {}{}",
                self.name,
                self.dir.path().display(),
                if kept {
                    ""
                } else {
                    " (their last lines below; the folder goes with the test: \
                     CAIRN_KEEP_FAILED=1 keeps it)"
                }
            );
            self.print_logs(40);
        }
        if let Some(mut m) = self.mount.take() {
            if failing {
                m.kill();
            } else if let Err(e) = m.try_stop() {
                problems.push(e);
                m.kill();
            }
        }
        if let Some(mut meta) = self.meta.take() {
            if failing {
                meta.kill();
            } else if let Err(e) = meta.try_stop() {
                if meta.is_running() || !e.contains("not running") {
                    problems.push(e);
                }
            }
        }
        let panics = find_panics(&self.cairn_logs());
        self.s3.take();
        self.watchdog.take();
        if failing {
            return;
        }
        if !panics.is_empty() {
            problems.push(format!("a cairn process panicked:\n{}", panics.join("\n")));
        }
        if !problems.is_empty() {
            panic!(
                "{}: cleanup found problems:\n{}",
                self.name,
                problems.join("\n\n")
            );
        }
    }
}
