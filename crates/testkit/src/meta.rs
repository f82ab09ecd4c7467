//! `cairn meta serve` as a child process on a free port.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use crate::ports::free_port;
use crate::proc::{note, Proc};

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A metadata server started by a test. Its log is `<data_dir>.log` (beside the data folder, so it
/// survives restarts and never mixes with the server's own files). Drop kills it (SIGKILL).
pub struct MetaServer {
    bin: PathBuf,
    data_dir: PathBuf,
    volume: String,
    extra: Vec<String>,
    port: u16,
    log: PathBuf,
    proc: Option<Proc>,
}

impl MetaServer {
    /// Runs `BIN meta serve --bind-addr 127.0.0.1:PORT --data-dir DATA_DIR --volume VOLUME EXTRA..`
    /// on a free port and waits until the port accepts connections. Panics with the log if it
    /// does not (after 3 tries on fresh ports, in case another process took the port).
    pub fn start(bin: &Path, data_dir: &Path, volume: &str, extra_args: &[&str]) -> MetaServer {
        let name = data_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or("meta".into());
        let log = data_dir.with_file_name(format!("{name}.log"));
        let mut m = MetaServer {
            bin: bin.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            volume: volume.to_string(),
            extra: extra_args.iter().map(|s| s.to_string()).collect(),
            port: 0,
            log,
            proc: None,
        };
        let mut last = String::new();
        for _ in 0..3 {
            m.port = free_port();
            match m.launch() {
                Ok(()) => return m,
                Err(e) => last = e,
            }
        }
        panic!("cairn meta serve did not start: {last}");
    }

    /// `127.0.0.1:PORT`, for `--meta`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn volume(&self) -> &str {
        &self.volume
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    pub fn pid(&self) -> Option<i32> {
        self.proc.as_ref().map(|p| p.pid())
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(|p| p.is_running())
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.note("kill -9");
            p.kill();
        }
    }

    /// SIGTERM and wait for a clean exit. Panics if it has to be killed or exits non-zero.
    pub fn stop(&mut self) -> ExitStatus {
        assert!(self.proc.is_some(), "meta server is not running");
        self.try_stop().unwrap_or_else(|e| panic!("{e}"))
    }

    /// SIGTERM and wait (30 s, then SIGKILL). Err if it had to be killed or exited non-zero.
    /// Ok(None) if it was not running.
    pub fn try_stop(&mut self) -> Result<ExitStatus, String> {
        let Some(mut p) = self.proc.take() else {
            return Err("meta server is not running".into());
        };
        p.note("SIGTERM");
        let (st, clean) = p.terminate(STOP_TIMEOUT);
        if !clean {
            return Err(format!(
                "cairn meta serve did not exit within {STOP_TIMEOUT:?} of SIGTERM (killed); log {}:\n{}",
                self.log.display(),
                crate::logs::tail(&self.log, 30)
            ));
        }
        if !st.success() {
            return Err(format!(
                "cairn meta serve exited with {st} on SIGTERM; log {}:\n{}",
                self.log.display(),
                crate::logs::tail(&self.log, 30)
            ));
        }
        Ok(st)
    }

    /// Starts it again on the same folder and port (stopping it first with SIGTERM if running).
    /// Retries for 10 s while the port is still held by the previous process.
    pub fn restart(&mut self) {
        if self.is_running() {
            self.stop();
        }
        self.proc = None;
        note(&self.log, "restart");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.launch() {
                Ok(()) => return,
                Err(e) if Instant::now() >= deadline => {
                    panic!("cairn meta serve did not restart: {e}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    fn launch(&mut self) -> Result<(), String> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(["meta", "serve", "--bind-addr", &self.addr()])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--volume", &self.volume])
            .args(&self.extra);
        if let Ok(v) = std::env::var("CAIRN_LOG") {
            cmd.env("CAIRN_LOG", v);
        }
        let mut p = Proc::spawn("cairn meta serve", cmd, &self.log)
            .map_err(|e| format!("cannot run {}: {e}", self.bin.display()))?;
        let start = Instant::now();
        while start.elapsed() < READY_TIMEOUT {
            if let Some(st) = p.try_status() {
                return Err(format!(
                    "it exited ({st}) during start; log {}:\n{}",
                    self.log.display(),
                    crate::logs::tail(&self.log, 30)
                ));
            }
            if TcpStream::connect_timeout(
                &([127, 0, 0, 1], self.port).into(),
                Duration::from_secs(1),
            )
            .is_ok()
            {
                self.proc = Some(p);
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        p.kill();
        Err(format!(
            "port {} not listening after {READY_TIMEOUT:?}; log {}:\n{}",
            self.port,
            self.log.display(),
            crate::logs::tail(&self.log, 30)
        ))
    }
}

impl Drop for MetaServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            crate::logs::print_log_tails(std::slice::from_ref(&self.log), 40);
        }
        self.kill();
    }
}
