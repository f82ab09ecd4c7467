//! Child processes with a log file, killed by PID, and commands run under a time limit.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Live children of this process, by PID, with their log path. The watchdog kills those under a
/// test's folder. A PID is removed under this lock in the same step that reaps it, so a PID here
/// is never one the kernel has reused.
static LIVE: Mutex<Vec<(i32, PathBuf)>> = Mutex::new(Vec::new());

fn live() -> std::sync::MutexGuard<'static, Vec<(i32, PathBuf)>> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sends SIGKILL to every live child whose log file is under `dir`. Returns their PIDs.
pub(crate) fn kill_all_under(dir: &Path) -> Vec<i32> {
    let guard = live();
    let mut killed = Vec::new();
    for (pid, log) in guard.iter() {
        if log.starts_with(dir) {
            // SAFETY: kill(2) with a PID we spawned and have not reaped (see LIVE).
            unsafe { libc::kill(*pid, libc::SIGKILL) };
            killed.push(*pid);
        }
    }
    killed
}

/// Environment hygiene for every child: the process env has `AWS_CA_BUNDLE` set, which breaks
/// AWS-SDK-style clients pointed at plain-http loopback endpoints. Logs go to files, so no colour codes (`NO_COLOR`, honoured by tracing-subscriber).
pub(crate) fn prepare(cmd: &mut Command) {
    cmd.env_remove("AWS_CA_BUNDLE");
    cmd.env("RUST_BACKTRACE", "1");
    cmd.env("NO_COLOR", "1");
}

/// Spawns `cmd` on one long-lived thread of this process.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not the process. Test
/// threads come and go (scoped threads, `spawn_blocking`), so all children are forked by this one
/// thread, which lives as long as the process: a child dies with the test binary and not before.
fn spawn_from_keeper(cmd: Command) -> std::io::Result<Child> {
    type Job = (Command, std::sync::mpsc::Sender<std::io::Result<Child>>);
    static KEEPER: std::sync::OnceLock<Mutex<std::sync::mpsc::Sender<Job>>> =
        std::sync::OnceLock::new();
    let sender = KEEPER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("testkit-spawner".into())
            .spawn(move || {
                while let Ok((mut cmd, reply)) = rx.recv() {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawn the testkit spawner thread");
        Mutex::new(tx)
    });
    let (tx, rx) = std::sync::mpsc::channel();
    sender
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, tx))
        .map_err(|_| std::io::Error::other("testkit spawner thread is gone"))?;
    rx.recv()
        .map_err(|_| std::io::Error::other("testkit spawner thread is gone"))?
}

/// A child process started by a test, its stdout and stderr appended to a log file.
///
/// Drop sends SIGKILL and reaps it. The child gets `PR_SET_PDEATHSIG(SIGKILL)` (see
/// `spawn_from_keeper`), so it also dies when the test binary dies.
pub struct Proc {
    name: String,
    child: Child,
    pid: i32,
    log: PathBuf,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Starts `cmd` with stdin from /dev/null and stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> std::io::Result<Proc> {
        if let Some(parent) = log.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut out = OpenOptions::new().create(true).append(true).open(log)?;
        writeln!(out, "=== testkit: starting {name}: {cmd:?}")?;
        let err = out.try_clone()?;
        prepare(&mut cmd);
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut guard = live();
        let child = spawn_from_keeper(cmd)?;
        let pid = child.id() as i32;
        guard.push((pid, log.to_path_buf()));
        Ok(Proc {
            name: name.to_string(),
            child,
            pid,
            log: log.to_path_buf(),
            status: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Reaps the child if it has exited, and returns its status.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            let mut guard = live();
            if let Ok(Some(st)) = self.child.try_wait() {
                guard.retain(|(p, _)| *p != self.pid);
                self.status = Some(st);
            }
        }
        self.status
    }

    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// Sends `sig` if the child has not been reaped.
    pub fn signal(&mut self, sig: i32) {
        if self.is_running() {
            let _guard = live();
            // SAFETY: kill(2) on our unreaped child (we hold LIVE, so nothing reaps it meanwhile).
            unsafe { libc::kill(self.pid, sig) };
        }
    }

    /// Waits up to `timeout` for the child to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_status() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, then reap. Returns the exit status.
    pub fn kill(&mut self) -> ExitStatus {
        self.signal(libc::SIGKILL);
        match self.wait_timeout(Duration::from_secs(30)) {
            Some(st) => st,
            // A process in uninterruptible sleep (D state, e.g. stuck on a dead FUSE mount) can
            // outlive SIGKILL for a while; report it rather than hang.
            None => panic!(
                "{} (pid {}) did not die within 30 s of SIGKILL",
                self.name, self.pid
            ),
        }
    }

    /// SIGTERM, wait up to `timeout`, then SIGKILL. Returns the status and whether it exited on
    /// SIGTERM (false: it had to be killed).
    pub fn terminate(&mut self, timeout: Duration) -> (ExitStatus, bool) {
        self.signal(libc::SIGTERM);
        if let Some(st) = self.wait_timeout(timeout) {
            return (st, true);
        }
        (self.kill(), false)
    }

    /// Appends a marker line to the log (for example before a restart).
    pub fn note(&self, line: &str) {
        note(&self.log, line);
    }
}

pub(crate) fn note(log: &Path, line: &str) {
    if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(log) {
        let _ = writeln!(f, "=== testkit: {line}");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.is_running() {
            self.signal(libc::SIGKILL);
            let _ = self.wait_timeout(Duration::from_secs(30));
        }
    }
}

/// What [`run_with_timeout`] saw.
#[derive(Debug, Clone)]
pub struct CmdOutput {
    /// None when the command was killed at the time limit.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
    /// False when stdout or stderr were still held open 2 s after the command exited (a daemon
    /// it left behind kept them: it should have redirected them).
    pub pipes_closed: bool,
    pub command: String,
}

impl CmdOutput {
    /// The exit code; None if killed by a signal or at the time limit.
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    pub fn timed_out(&self) -> bool {
        self.status.is_none()
    }

    pub fn success(&self) -> bool {
        self.status.map(|s| s.success()).unwrap_or(false)
    }

    /// Lines of stderr that start with `error:`.
    pub fn error_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| l.starts_with("error:"))
            .collect()
    }

    /// A readable account for assertion messages.
    pub fn describe(&self) -> String {
        let status = match self.status {
            None => "killed at the time limit".to_string(),
            Some(s) => match (s.code(), s.signal()) {
                (Some(c), _) => format!("exit code {c}"),
                (None, Some(sig)) => format!("killed by signal {sig}"),
                _ => format!("{s:?}"),
            },
        };
        format!(
            "command: {}\nstatus: {status} after {:.1} s\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command,
            self.elapsed.as_secs_f64(),
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }

    /// Panics unless the command exited 0.
    pub fn assert_success(&self) -> &Self {
        assert!(self.success(), "command failed\n{}", self.describe());
        self
    }
}

fn collect(
    mut r: impl Read + Send + 'static,
) -> (Arc<Mutex<Vec<u8>>>, std::sync::mpsc::Receiver<()>) {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let b = buf.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        loop {
            match r.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => b
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend_from_slice(&chunk[..n]),
            }
        }
        let _ = tx.send(());
    });
    (buf, rx)
}

/// Runs `cmd` to completion with captured output, killing it (SIGKILL) at `timeout`.
///
/// Returns as soon as the command exits, even if a daemon it started still holds its stdout or
/// stderr (see [`CmdOutput::pipes_closed`]).
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> CmdOutput {
    let command = format!("{cmd:?}");
    prepare(cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => panic!("cannot start {command}: {e}"),
    };
    let (out, out_done) = collect(child.stdout.take().expect("piped stdout"));
    let (err, err_done) = collect(child.stderr.take().expect("piped stderr"));
    let deadline = start + timeout;
    let status = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break Some(st);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = start.elapsed();
    let grace = Duration::from_secs(2);
    let pipes_closed = out_done.recv_timeout(grace).is_ok() & err_done.recv_timeout(grace).is_ok();
    let text = |b: &Arc<Mutex<Vec<u8>>>| {
        String::from_utf8_lossy(&b.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    };
    CmdOutput {
        status,
        stdout: text(&out),
        stderr: text(&err),
        elapsed,
        pipes_closed,
        command,
    }
}

/// Processes (other than this one) whose command line contains `needle`, as (pid, command line).
/// Tests use it to check that nothing was left running for a given folder.
pub fn processes_mentioning(needle: &str) -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let mut raw = Vec::new();
        if File::open(e.path().join("cmdline"))
            .and_then(|mut f| f.read_to_end(&mut raw))
            .is_err()
        {
            continue;
        }
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains(needle) {
            // Zombies (already exited, not yet reaped) have an empty cmdline, so are not listed.
            found.push((pid, cmdline.trim_end().to_string()));
        }
    }
    found
}
