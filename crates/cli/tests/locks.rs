//! fcntl record locks and flock through real mounts: contention between processes on one mount
//! and across two mounts of one volume, blocking waits that wake when the holder lets go, and
//! the locks of a crashed mount released once its session expires.
//!
//! Each lock holder is a python3 child (an [`Agent`]) driven one command per line on stdin,
//! answering one line on stdout. Files on the mount are only ever open in those children, never
//! in the test process.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// The agent: `open`, `close`, `setlk|setlkw|getlk r|w|u START LEN`, `flock ex|sh|un [nb]`.
/// Answers `ok`, `err ERRNO_NAME`, or for getlk `lock r|w|u START LEN PID`.
const AGENT: &str = r#"
import errno, fcntl, os, struct, sys
path = sys.argv[1]
fd = None
T = {"r": fcntl.F_RDLCK, "w": fcntl.F_WRLCK, "u": fcntl.F_UNLCK}
N = {v: k for k, v in T.items()}
FMT = "hhqqi4x"  # struct flock on x86_64/aarch64 Linux: type, whence, start, len, pid
def out(s):
    sys.stdout.write(s + "\n")
    sys.stdout.flush()
for line in sys.stdin:
    a = line.split()
    if not a:
        continue
    try:
        c = a[0]
        if c == "open":
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            out("ok")
        elif c == "close":
            os.close(fd)
            fd = None
            out("ok")
        elif c in ("setlk", "setlkw", "getlk"):
            arg = struct.pack(FMT, T[a[1]], os.SEEK_SET, int(a[2]), int(a[3]), 0)
            cmd = {"setlk": fcntl.F_SETLK, "setlkw": fcntl.F_SETLKW, "getlk": fcntl.F_GETLK}[c]
            r = fcntl.fcntl(fd, cmd, arg)
            if c == "getlk":
                t, _, s, l, p = struct.unpack(FMT, r)
                out(f"lock {N.get(t, t)} {s} {l} {p}")
            else:
                out("ok")
        elif c == "flock":
            op = {"ex": fcntl.LOCK_EX, "sh": fcntl.LOCK_SH, "un": fcntl.LOCK_UN}[a[1]]
            if a[2:] == ["nb"]:
                op |= fcntl.LOCK_NB
            fcntl.flock(fd, op)
            out("ok")
        else:
            out("bad command " + c)
    except OSError as e:
        out("err " + errno.errorcode.get(e.errno, str(e.errno)))
"#;

/// How long one agent command may take when it is not meant to block.
const ANSWER: Duration = Duration::from_secs(20);

/// A python3 process holding one file on a mount, driven through stdin.
struct Agent {
    name: String,
    pid: u32,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    replies: Receiver<String>,
}

impl Agent {
    /// Starts the agent for `path` and opens the file (created if missing).
    fn open(name: &str, path: &Path) -> Agent {
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(AGENT)
            .arg(path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start python3");
        let out = child.stdout.take().expect("piped stdout");
        let (tx, replies) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        let mut a = Agent {
            name: name.to_string(),
            pid: child.id(),
            child: Some(child),
            stdin,
            replies,
        };
        a.expect_ok("open");
        a
    }

    fn pid(&self) -> u32 {
        self.pid
    }

    fn send(&mut self, cmd: &str) {
        let stdin = self.stdin.as_mut().expect("agent stdin");
        writeln!(stdin, "{cmd}")
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("{}: cannot send {cmd:?}: {e}", self.name));
    }

    /// The next answer, or None if there is none within `timeout`.
    fn answer_within(&mut self, timeout: Duration) -> Option<String> {
        match self.replies.recv_timeout(timeout) {
            Ok(line) => Some(line),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                let status = self.child.as_mut().map(|c| c.try_wait());
                panic!("{}: the agent exited ({status:?})", self.name)
            }
        }
    }

    /// Sends `cmd` and returns its answer (panics if there is none within [`ANSWER`]).
    fn ask(&mut self, cmd: &str) -> String {
        self.send(cmd);
        self.answer_within(ANSWER)
            .unwrap_or_else(|| panic!("{}: no answer to {cmd:?} within {ANSWER:?}", self.name))
    }

    #[track_caller]
    fn expect_ok(&mut self, cmd: &str) {
        let r = self.ask(cmd);
        assert_eq!(r, "ok", "{}: {cmd}", self.name);
    }

    /// SIGKILL (its open files are closed by the kernel), and reap it; after 5 s it is left to a
    /// thread to reap rather than hang the test (a wait for a lock ends within 100 ms of a
    /// signal, see `a_blocked_wait_ends_on_sigkill_and_deadlocks_are_refused`).
    fn kill(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = child.kill();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !matches!(child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "{}: still alive 5 s after SIGKILL; reaping it in the background",
            self.name
        );
        std::thread::spawn(move || child.wait());
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stdin.take();
        self.kill();
    }
}

/// A conflicting F_SETLK fails with EAGAIN or EACCES (fcntl(2) allows either).
#[track_caller]
fn assert_conflict(answer: &str, what: &str) {
    assert!(
        answer == "err EAGAIN" || answer == "err EACCES",
        "{what}: expected EAGAIN or EACCES, got {answer:?}"
    );
}

/// Sends a blocking request, checks it is still blocked after `hold`, runs `release` (on the
/// holder), and returns how long the request waited in all. Panics if it never completes.
fn blocked_until(
    waiter: &mut Agent,
    cmd: &str,
    hold: Duration,
    release: impl FnOnce(),
) -> Duration {
    let start = Instant::now();
    waiter.send(cmd);
    if let Some(early) = waiter.answer_within(hold) {
        panic!(
            "{}: {cmd:?} answered {early:?} after {:?}, while the holder still held the lock",
            waiter.name,
            start.elapsed()
        );
    }
    release();
    let answer = waiter.answer_within(ANSWER).unwrap_or_else(|| {
        panic!(
            "{}: {cmd:?} still blocked {ANSWER:?} after the holder let go",
            waiter.name
        )
    });
    let waited = start.elapsed();
    assert_eq!(
        answer, "ok",
        "{}: {cmd:?} after the holder let go",
        waiter.name
    );
    waited
}

/// The waiter waited about as long as the lock was held: at least `hold`, and woke within a
/// few seconds of the release (the mount polls the server with a backoff of at most 100 ms).
#[track_caller]
fn assert_woke_soon(waited: Duration, hold: Duration, what: &str) {
    assert!(
        waited >= hold && waited <= hold + Duration::from_secs(5),
        "{what}: waited {waited:?} for a lock held {hold:?}"
    );
}

/// The fcntl contention rules between agent `a` and agent `b` (different processes, on the same
/// file, through one mount or two).
fn fcntl_contention(path_a: &Path, path_b: &Path) {
    let mut a = Agent::open("holder A", path_a);
    let mut b = Agent::open("contender B", path_b);

    // A write lock on [0, 100) excludes an overlapping one; F_GETLK names the holder.
    a.expect_ok("setlk w 0 100");
    assert_conflict(
        &b.ask("setlk w 50 100"),
        "B's write lock over A's write lock",
    );
    assert_conflict(&b.ask("setlk r 99 1"), "B's read lock over A's write lock");
    assert_eq!(
        b.ask("getlk w 50 100"),
        format!("lock w 0 100 {}", a.pid()),
        "F_GETLK by B over A's lock reports A's type, range and pid"
    );
    // A's own F_GETLK sees no conflict with itself.
    assert_eq!(
        a.ask("getlk w 0 100"),
        "lock u 0 100 0",
        "F_GETLK by the holder itself"
    );

    // Ranges that do not overlap are independent.
    b.expect_ok("setlk w 100 100");
    assert_eq!(
        a.ask("getlk w 150 10"),
        format!("lock w 100 100 {}", b.pid()),
        "F_GETLK by A over B's lock"
    );
    assert_conflict(&a.ask("setlk w 150 1"), "A over B's range");

    // Read locks share; a write lock conflicts with a read lock of another process.
    a.expect_ok("setlk r 300 100");
    b.expect_ok("setlk r 300 100");
    assert_eq!(
        b.ask("getlk r 300 100"),
        "lock u 300 100 0",
        "F_GETLK for a read lock where only read locks are held"
    );
    b.expect_ok("setlk u 300 100");
    assert_conflict(
        &b.ask("setlk w 350 10"),
        "B's write lock over A's read lock",
    );
    let got = b.ask("getlk w 350 10");
    assert_eq!(
        got,
        format!("lock r 300 100 {}", a.pid()),
        "F_GETLK reports A's read lock"
    );

    // Unlocking part of a range frees that part only.
    a.expect_ok("setlk u 0 50");
    b.expect_ok("setlk w 0 50");
    assert_conflict(&b.ask("setlk w 50 1"), "[50, 100) is still A's");
    b.expect_ok("setlk u 0 50");

    // F_SETLKW waits while A holds the lock and wakes up when A unlocks.
    let hold = Duration::from_secs(2);
    let waited = blocked_until(&mut b, "setlkw w 60 10", hold, || {
        a.expect_ok("setlk u 50 50")
    });
    assert_woke_soon(waited, hold, "F_SETLKW woken by an unlock");
    assert_conflict(
        &a.ask("setlk w 60 10"),
        "B holds [60, 70) after its F_SETLKW",
    );

    // ... and when A closes the file (a close drops all of the process's POSIX locks).
    a.expect_ok("setlk w 500 100");
    let waited = blocked_until(&mut b, "setlkw w 500 100", hold, || a.expect_ok("close"));
    assert_woke_soon(waited, hold, "F_SETLKW woken by the holder's close");
    a.expect_ok("open");
    assert_conflict(
        &a.ask("setlk r 550 1"),
        "B holds [500, 600) after its F_SETLKW",
    );
    let got = a.ask("getlk w 0 1000");
    let b_locks =
        [(60, 10), (100, 100), (500, 100)].map(|(s, l)| format!("lock w {s} {l} {}", b.pid()));
    assert!(
        b_locks.contains(&got),
        "F_GETLK over B's three locks answered {got:?}, expected one of {b_locks:?}"
    );

    // B's death releases its locks.
    b.kill();
    let released = wait_until(Duration::from_secs(10), || a.ask("setlk w 0 1000") == "ok");
    assert!(
        released,
        "B was killed but its locks are still held 10 s later"
    );
}

/// Two processes on one mount: conflicting F_SETLK fails with EAGAIN/EACCES, F_GETLK reports the
/// holder's pid and range, other ranges and read locks are shared, and F_SETLKW waits exactly
/// until the holder unlocks or closes.
#[test]
fn fcntl_locks_between_processes_on_one_mount() {
    let Some(c) = local_cluster() else { return };
    let f = c.join("locked");
    fcntl_contention(&f, &f);
}

/// The same rules between processes on two mounts of the same volume.
#[test]
fn fcntl_locks_across_two_mounts() {
    let Some(c) = local_cluster() else { return };
    let m2 = c.new_mount();
    std::fs::write(c.join("locked"), b"x").expect("create the file");
    fcntl_contention(&c.join("locked"), &m2.join("locked"));
}

/// flock across two mounts: exclusive excludes, LOCK_NB gives EWOULDBLOCK, shared locks share,
/// and a blocked flock wakes when the holder closes the file.
#[test]
fn flock_across_two_mounts() {
    let Some(c) = local_cluster() else { return };
    let m2 = c.new_mount();
    std::fs::write(c.join("flocked"), b"x").expect("create the file");
    let mut a = Agent::open("holder A", &c.join("flocked"));
    let mut b = Agent::open("contender B", &m2.join("flocked"));

    a.expect_ok("flock ex nb");
    assert_eq!(
        b.ask("flock ex nb"),
        "err EAGAIN",
        "LOCK_EX|LOCK_NB against an exclusive flock (EWOULDBLOCK)"
    );
    assert_eq!(
        b.ask("flock sh nb"),
        "err EAGAIN",
        "LOCK_SH|LOCK_NB against an exclusive flock"
    );

    // Shared flocks share, and exclude an exclusive one.
    a.expect_ok("flock sh");
    b.expect_ok("flock sh nb");
    assert_eq!(
        a.ask("flock ex nb"),
        "err EAGAIN",
        "upgrade to LOCK_EX while B shares"
    );
    b.expect_ok("flock un");
    a.expect_ok("flock ex nb");

    // A blocking flock waits for an unlock ...
    let hold = Duration::from_secs(2);
    let waited = blocked_until(&mut b, "flock ex", hold, || a.expect_ok("flock un"));
    assert_woke_soon(waited, hold, "flock woken by LOCK_UN");
    assert_eq!(a.ask("flock ex nb"), "err EAGAIN", "B holds the flock");
    b.expect_ok("flock un");

    // ... and for the holder's close.
    a.expect_ok("flock ex nb");
    let waited = blocked_until(&mut b, "flock ex", hold, || a.expect_ok("close"));
    assert_woke_soon(waited, hold, "flock woken by the holder's close");
    a.expect_ok("open");
    assert_eq!(
        a.ask("flock sh nb"),
        "err EAGAIN",
        "B holds the flock after the close"
    );
}

/// A mount daemon killed with SIGKILL while one of its processes holds a lock: the lock stays
/// held (the server cannot tell a dead mount from a slow one) until the mount's session expires
/// (`--session-timeout 3s`), then another mount gets it.
#[test]
fn killed_mounts_locks_are_released_when_its_session_expires() {
    if !require_fuse() {
        return;
    }
    let timeout = Duration::from_secs(3);
    let mut c = Cluster::local_folder(bin())
        .meta_args(&["--session-timeout", "3s"])
        .start();
    let m2 = c.new_mount();
    std::fs::write(c.join("locked"), b"x").expect("create the file");
    std::fs::write(c.join("flocked"), b"x").expect("create the file");
    let mut a = Agent::open("fcntl holder on mount A", &c.join("locked"));
    let mut b = Agent::open("fcntl contender on mount B", &m2.join("locked"));
    let mut a2 = Agent::open("flock holder on mount A", &c.join("flocked"));
    let mut b2 = Agent::open("flock contender on mount B", &m2.join("flocked"));
    a.expect_ok("setlk w 0 100");
    a2.expect_ok("flock ex nb");
    assert_conflict(&b.ask("setlk w 0 1"), "before the kill");
    assert_eq!(b2.ask("flock ex nb"), "err EAGAIN", "flock before the kill");

    // Kill the daemon first, so that the holders' files are never closed through it.
    c.mount_mut().kill();
    let killed = Instant::now();
    a.kill();
    a2.kill();

    assert_conflict(
        &b.ask("setlk w 0 1"),
        "right after mount A was killed (its session has not expired yet)",
    );
    assert_eq!(
        b2.ask("flock ex nb"),
        "err EAGAIN",
        "flock right after mount A was killed"
    );
    let mut free_after = None;
    while killed.elapsed() < Duration::from_secs(15) {
        if b.ask("setlk w 0 100") == "ok" {
            free_after = Some(killed.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let free_after = free_after.unwrap_or_else(|| {
        panic!("the lock of the killed mount was still held 15 s after the kill (session timeout {timeout:?})")
    });
    eprintln!("the killed mount's lock was released {free_after:?} after the kill");
    // The session was last heard from at most one heartbeat (timeout / 4) before the kill.
    assert!(
        free_after >= timeout / 2,
        "released {free_after:?} after the kill, well before the {timeout:?} session timeout"
    );
    // Its flock went with the session too.
    b2.expect_ok("flock ex nb");
    drop((b, b2));
    drop(m2);
}

/// Locks are stored: a kill -9 and restart of the metadata server (`--sync`) keeps them held,
/// and an F_SETLKW waiting across the restart still wakes when the holder unlocks.
#[test]
fn locks_survive_a_meta_server_kill9() {
    if !require_fuse() {
        return;
    }
    let mut c = Cluster::local_folder(bin()).meta_args(&["--sync"]).start();
    let m2 = c.new_mount();
    std::fs::write(c.join("locked"), b"x").expect("create the file");
    let mut a = Agent::open("holder on mount A", &c.join("locked"));
    let mut b = Agent::open("contender on mount B", &m2.join("locked"));
    a.expect_ok("setlk w 0 100");
    a.expect_ok("setlk r 200 100");

    c.meta_mut().kill();
    c.meta_mut().restart();
    assert_conflict(&b.ask("setlk w 50 1"), "A's write lock after the restart");
    assert_eq!(
        b.ask("getlk w 250 1"),
        format!("lock r 200 100 {}", a.pid()),
        "A's read lock after the restart"
    );
    b.expect_ok("setlk r 250 10");

    // B waits in F_SETLKW while the server is killed and restarted again.
    b.send("setlkw w 0 10");
    assert_eq!(
        b.answer_within(Duration::from_secs(1)),
        None,
        "B's F_SETLKW while A holds the lock"
    );
    c.meta_mut().kill();
    std::thread::sleep(Duration::from_secs(1));
    c.meta_mut().restart();
    assert_eq!(
        b.answer_within(Duration::from_secs(2)),
        None,
        "B's F_SETLKW after the restart"
    );
    a.expect_ok("setlk u 0 100");
    assert_eq!(
        b.answer_within(ANSWER).as_deref(),
        Some("ok"),
        "B's F_SETLKW once A unlocked"
    );
    assert_conflict(&a.ask("setlk r 5 1"), "B holds [0, 10)");
}

/// A process blocked in F_SETLKW ends promptly when it gets SIGKILL (it used to stay in state D
/// until the lock was free), and a wait that would close a cycle across two mounts fails with
/// EDEADLK instead of hanging both.
#[test]
fn a_blocked_wait_ends_on_sigkill_and_deadlocks_are_refused() {
    let Some(c) = s3_cluster() else { return };
    let second = c.new_mount();
    let (pa, pb) = (c.join("f"), second.join("f"));
    let mut holder = Agent::open("holder", &pa);
    holder.expect_ok("setlk w 0 100");
    let mut waiter = Agent::open("waiter", &pb);
    waiter.send("setlkw w 0 100");
    assert!(
        waiter.answer_within(Duration::from_millis(500)).is_none(),
        "the waiter should block while the holder holds the lock"
    );
    let mut child = waiter.child.take().expect("waiter process");
    let killed = Instant::now();
    child.kill().expect("SIGKILL the waiter");
    let ended = wait_until(Duration::from_secs(5), || {
        !matches!(child.try_wait(), Ok(None))
    });
    assert!(
        ended,
        "a process waiting for a lock is still alive 5 s after SIGKILL"
    );
    println!("the killed waiter ended after {:?}", killed.elapsed());

    // A deadlock: the holder (mount 1) holds 0-99 and waits for 200-299, which a second agent
    // (mount 2) holds while it waits for 0-99.
    let mut other = Agent::open("other", &pb);
    other.expect_ok("setlk w 200 100");
    holder.send("setlkw w 200 100");
    let early = holder.answer_within(Duration::from_millis(500));
    assert!(
        early.is_none(),
        "the holder's wait ended at once: {early:?}"
    );
    let answer = other.ask("setlkw w 0 100");
    // Python names errno 35 EDEADLOCK (the same value as EDEADLK on Linux).
    assert!(
        answer == "err EDEADLK" || answer == "err EDEADLOCK",
        "the wait closing the cycle: {answer}"
    );
    // The other side goes on once the cycle is broken.
    other.expect_ok("setlk u 200 100");
    let got = holder
        .answer_within(Duration::from_secs(5))
        .expect("the holder's wait ends once the lock is free");
    assert_eq!(got, "ok");
}
