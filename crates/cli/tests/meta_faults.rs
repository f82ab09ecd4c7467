//! Metadata server faults under a live workload: kill -9 mid-workload, a 30 s outage, a second
//! server on the same folder, an online backup under 4 writers (restored and mounted), and
//! `--meta-timeout`.
//!
//! The workloads run in python3 children. Files on the mount are never open in the test process
//! while its metadata server is down: the harness forks and execs processes then, and the
//! close-on-exec of such a file would send FLUSH to the mount, which waits for the server the
//! harness is about to start.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// One writer. For i = 0, 1, ...: create `ROOT/tmp.i` (O_EXCL) with `content(i)`, fsync, close
/// (ack `created i`); rename it to `ROOT/done/final.i` (ack `renamed i`); if i-3 is odd, unlink
/// `ROOT/done/final.(i-3)` (ack `deleted i-3`). The even files stay, so that the contents of
/// files written all through the run are checked at the end. Each ack is a line
/// `UNIX_TIME OP I` appended to STEPS (outside the mount) and fsynced, written only after the
/// operation returned; "steps" below are these acknowledged operations. Stops after N rounds
/// (values of i), or at the top of a round once the file STOP exists (`-`: none). Any error ends
/// it with a traceback and a non-zero exit.
///
/// Every operation depends on the one before it, so a lost acknowledged change or one applied
/// twice makes a later step fail (EEXIST, ENOENT) or leaves the wrong tree.
const WORKLOAD: &str = r#"
import os, sys, time
root, steps, n, stop = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
KEEP = 3
log = open(steps, "a")
def ack(op, i):
    log.write(f"{time.time():.6f} {op} {i}\n")
    log.flush()
    os.fsync(log.fileno())
def content(i):
    tag = f"{os.path.basename(root)}:{i}:".encode()
    size = 1000 + (i * 7919) % 200000
    return (tag * (size // len(tag) + 1))[:size]
done = os.path.join(root, "done")
os.makedirs(done, exist_ok=True)
i = 0
while i < n and not (stop != "-" and os.path.exists(stop)):
    tmp = os.path.join(root, f"tmp.{i}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    view = memoryview(content(i))
    while view:
        view = view[os.write(fd, view):]
    os.fsync(fd)
    os.close(fd)
    ack("created", i)
    os.rename(tmp, os.path.join(done, f"final.{i}"))
    ack("renamed", i)
    if i >= KEEP and (i - KEEP) % 2 == 1:
        os.unlink(os.path.join(done, f"final.{i - KEEP}"))
        ack("deleted", i - KEEP)
    i += 1
"#;

const KEEP: u64 = 3;

/// What [`WORKLOAD`] writes to `tmp.i` (TAG is the name of its folder).
fn content(tag: &str, i: u64) -> Vec<u8> {
    let unit = format!("{tag}:{i}:").into_bytes();
    let size = (1000 + (i * 7919) % 200_000) as usize;
    unit.iter().copied().cycle().take(size).collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Created(u64),
    Renamed(u64),
    Deleted(u64),
}

/// The operations of step `i` of [`WORKLOAD`].
fn step_ops(i: u64) -> Vec<Op> {
    let mut v = vec![Op::Created(i), Op::Renamed(i)];
    if i >= KEEP && (i - KEEP) % 2 == 1 {
        v.push(Op::Deleted(i - KEEP));
    }
    v
}

/// The first `len` operations of [`WORKLOAD`].
fn canonical(len: usize) -> Vec<Op> {
    let mut v = Vec::with_capacity(len + 3);
    let mut i = 0;
    while v.len() < len {
        v.extend(step_ops(i));
        i += 1;
    }
    v.truncate(len);
    v
}

/// Names under a writer's folder: `tmp.i` in it, `final.i` in its `done` folder.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Names {
    tmp: BTreeSet<u64>,
    fin: BTreeSet<u64>,
}

fn model(ops: &[Op]) -> Names {
    let mut n = Names::default();
    for op in ops {
        match *op {
            Op::Created(i) => {
                n.tmp.insert(i);
            }
            Op::Renamed(i) => {
                assert!(n.tmp.remove(&i), "model: rename of a missing tmp.{i}");
                n.fin.insert(i);
            }
            Op::Deleted(i) => {
                assert!(n.fin.remove(&i), "model: unlink of a missing final.{i}");
            }
        }
    }
    n
}

/// Seconds since the epoch, as python's `time.time()`.
fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// An acknowledged step of a workload.
#[derive(Debug, Clone, Copy)]
struct Step {
    at: f64,
    op: Op,
}

/// A [`WORKLOAD`] child writing under `ROOT` (on a mount), logging to files in the cluster folder.
struct Workload {
    tag: String,
    root: PathBuf,
    steps: PathBuf,
    proc: Proc,
    started: Instant,
}

impl Workload {
    /// Starts a writer in `mount/tag` for at most `n` rounds, stopping early once `stop` exists.
    fn start(dir: &Path, mount: &Path, tag: &str, n: u64, stop: Option<&Path>) -> Workload {
        let root = mount.join(tag);
        let steps = dir.join(format!("steps-{tag}.txt"));
        let mut cmd = Command::new("python3");
        cmd.arg("-c")
            .arg(WORKLOAD)
            .arg(&root)
            .arg(&steps)
            .arg(n.to_string())
            .arg(stop.map(|p| p.as_os_str().to_owned()).unwrap_or("-".into()));
        let log = dir.join(format!("workload-{tag}.log"));
        let proc = Proc::spawn(&format!("workload {tag}"), cmd, &log).expect("start python3");
        Workload {
            tag: tag.into(),
            root,
            steps,
            proc,
            started: Instant::now(),
        }
    }

    /// The steps acknowledged so far (checked to be the workload's sequence, in order).
    fn steps(&self) -> Vec<Step> {
        let text = fs::read_to_string(&self.steps).unwrap_or_default();
        let mut v = Vec::new();
        // The last line may be partly written; only complete lines count.
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        for line in complete.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            let bad = || panic!("{}: bad step line {line:?}", self.tag);
            if f.len() != 3 {
                bad();
            }
            let (Ok(at), Ok(i)) = (f[0].parse::<f64>(), f[2].parse::<u64>()) else {
                bad()
            };
            let op = match f[1] {
                "created" => Op::Created(i),
                "renamed" => Op::Renamed(i),
                "deleted" => Op::Deleted(i),
                _ => bad(),
            };
            v.push(Step { at, op });
        }
        let ops: Vec<Op> = v.iter().map(|s| s.op).collect();
        assert_eq!(
            ops,
            canonical(ops.len()),
            "{}: the acknowledged steps are not the workload's sequence",
            self.tag
        );
        v
    }

    /// Waits until at least `n` steps are acknowledged; panics after `timeout` or if it exits.
    fn wait_for_steps(&mut self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.steps().len() >= n {
                return;
            }
            if let Some(st) = self.proc.try_status() {
                panic!(
                    "{}: the workload exited ({st}) after {} steps, before reaching {n}:\n{}",
                    self.tag,
                    self.steps().len(),
                    tail(self.proc.log(), 30)
                );
            }
            assert!(
                Instant::now() < deadline,
                "{}: only {} steps after {timeout:?}, waiting for {n}",
                self.tag,
                self.steps().len()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// Waits for the workload to finish and panics (with its output) unless it succeeded.
    fn finish(&mut self, timeout: Duration) -> Duration {
        match self.proc.wait_timeout(timeout) {
            Some(st) if st.success() => self.started.elapsed(),
            Some(st) => panic!(
                "{}: the workload failed ({st}) after {} steps:\n{}",
                self.tag,
                self.steps().len(),
                tail(self.proc.log(), 30)
            ),
            None => panic!(
                "{}: the workload still runs after {timeout:?} ({} steps):\n{}",
                self.tag,
                self.steps().len(),
                tail(self.proc.log(), 30)
            ),
        }
    }
}

/// The names under a writer's folder `root` (panics on a name the workload never makes).
fn observed(root: &Path) -> Names {
    let mut n = Names::default();
    for name in list(root) {
        if name == "done" {
            continue;
        }
        let i = name
            .strip_prefix("tmp.")
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("unexpected {name:?} in {}", root.display()));
        n.tmp.insert(i);
    }
    for name in list(&root.join("done")) {
        let i = name
            .strip_prefix("final.")
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("unexpected {name:?} in {}/done", root.display()));
        n.fin.insert(i);
    }
    n
}

/// Checks that the tree under `root` is the workload's state after the first `m` operations
/// for some `m` in `lo..=hi`, and returns that `m`. Every `final.i` has its full contents; a
/// `tmp.i` (possibly still being written when the state was taken) reads back without error and
/// is no longer than its full contents.
fn check_writer_tree(root: &Path, tag: &str, lo: usize, hi: usize, when: &str) -> usize {
    let got = observed(root);
    let ops = canonical(hi);
    let m = (lo..=hi)
        .find(|&m| model(&ops[..m]) == got)
        .unwrap_or_else(|| {
            panic!(
                "{when}: {} is not the state after any prefix of {lo}..={hi} acknowledged \
                 operations\n  found: {got:?}\n  after {lo}: {:?}\n  after {hi}: {:?}",
                root.display(),
                model(&ops[..lo]),
                model(&ops[..hi])
            )
        });
    for &i in &got.fin {
        let p = root.join(format!("done/final.{i}"));
        let data = fs::read(&p).unwrap_or_else(|e| panic!("{when}: read {}: {e}", p.display()));
        assert!(
            data == content(tag, i),
            "{when}: {} has {} bytes that differ from the {} written",
            p.display(),
            data.len(),
            content(tag, i).len()
        );
    }
    for &i in &got.tmp {
        let p = root.join(format!("tmp.{i}"));
        let data = fs::read(&p).unwrap_or_else(|e| panic!("{when}: read {}: {e}", p.display()));
        assert!(
            data.len() <= content(tag, i).len(),
            "{when}: {} has {} bytes, more than the {} written",
            p.display(),
            data.len(),
            content(tag, i).len()
        );
    }
    m
}

/// The tree after a workload that ran to its end: the finals it kept, no tmp file.
fn check_finished(root: &Path, tag: &str, steps: usize, when: &str) {
    check_writer_tree(root, tag, steps, steps, when);
    assert!(
        observed(root).tmp.is_empty(),
        "{when}: tmp files left in {}",
        root.display()
    );
}

/// `cairn meta verify --data-dir DIR` succeeds and finds no problem.
fn assert_verifies(data_dir: &Path) {
    let out = run_with_timeout(
        cairn(&["meta", "verify", "--data-dir"]).arg(data_dir),
        Duration::from_secs(60),
    );
    assert!(
        out.success() && out.stdout.contains("no problems found"),
        "cairn meta verify failed\n{}",
        out.describe()
    );
}

/// kill -9 of the metadata server (`--sync`) twice, at random moments, under a workload that
/// creates, writes, renames and deletes files: the workload completes without an error, every
/// acknowledged step is there exactly once (nothing lost, nothing applied twice, nothing
/// half-renamed), and all of it survives one more kill -9 and a fresh mount.
#[test]
fn meta_kill9_mid_workload_loses_nothing_acknowledged() {
    if !require_fuse() {
        return;
    }
    let mut rng = Rng::from_env_or_time("meta_kill9_mid_workload");
    let mut c = Cluster::s3(bin())
        .meta_args(&["--sync"])
        .timeout(Duration::from_secs(240))
        .start();
    const N: u64 = 80;
    let total: usize = (0..N).map(|i| step_ops(i).len()).sum();
    let mut w = Workload::start(c.dir(), c.path(), "w", N, None);

    let mut at = 0;
    for round in 1..=2 {
        at = rng.range(at as u64 + 5, at as u64 + 75) as usize;
        let jitter = Duration::from_millis(rng.range(0, 40));
        let down = Duration::from_millis(rng.range(0, 1500));
        w.wait_for_steps(at, Duration::from_secs(60));
        std::thread::sleep(jitter);
        assert!(
            w.is_running(),
            "the workload ended before kill {round}; make it longer"
        );
        c.meta_mut().kill();
        let acked = w.steps().len();
        std::thread::sleep(down);
        c.meta_mut().restart();
        eprintln!(
            "kill {round}: after step {at} + {jitter:?} ({acked} acknowledged), down {down:?}"
        );
    }
    let took = w.finish(Duration::from_secs(150));
    let steps = w.steps().len();
    eprintln!("workload: {steps} steps in {took:?}");
    assert_eq!(steps, total, "steps acknowledged by the finished workload");
    check_finished(&w.root, "w", steps, "after the workload");

    // Everything acknowledged is durable: one more kill -9, and a fresh mount sees the same.
    c.meta_mut().kill();
    c.meta_mut().restart();
    c.remount();
    check_finished(&w.root, "w", steps, "after another kill -9 and a remount");

    c.mount_mut().stop();
    c.meta_mut().stop();
    assert_verifies(c.meta().data_dir());
}

/// The metadata server is down for 30 s under a workload: the mount's operations wait (no error,
/// no progress) and complete after the restart.
#[test]
fn mount_waits_out_a_30s_meta_outage() {
    if !require_fuse() {
        return;
    }
    let outage = Duration::from_secs(30);
    let mut c = Cluster::s3(bin())
        .meta_args(&["--sync"])
        .timeout(Duration::from_secs(180))
        .start();
    const N: u64 = 20;
    let mut w = Workload::start(c.dir(), c.path(), "w", N, None);
    w.wait_for_steps(10, Duration::from_secs(60));
    c.meta_mut().kill();
    let killed = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let before = w.steps().len();
    while killed.elapsed() < outage {
        assert!(
            w.is_running(),
            "the workload ended while the server was down:\n{}",
            tail(w.proc.log(), 30)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let during = w.steps().len();
    assert_eq!(
        during, before,
        "steps were acknowledged while the metadata server was down"
    );
    c.meta_mut().restart();
    let took = w.finish(Duration::from_secs(60));
    let steps = w.steps();
    eprintln!(
        "workload: {} steps in {took:?}; {before} before the outage",
        steps.len()
    );
    assert!(
        took >= outage,
        "the workload took {took:?}, less than the {outage:?} outage"
    );
    let gap = steps
        .windows(2)
        .map(|p| p[1].at - p[0].at)
        .fold(0.0, f64::max);
    assert!(
        gap >= outage.as_secs_f64() - 2.0,
        "the longest pause between two steps is {gap:.1} s; the outage was {outage:?}"
    );
    check_finished(&w.root, "w", steps.len(), "after the outage");
}

/// The metadata server stops answering without closing anything (SIGSTOP, as a VM pause or a
/// long stall would) for 7 s, twice, under two writers: requests sent before and during the
/// pause wait on their connections (a mount's thread lanes hand their wait to the runtime after
/// a second), and when the server goes on every operation completes exactly once: the writers
/// finish without an error and the trees are exactly what they acknowledged.
#[test]
fn a_paused_server_applies_every_waiting_request_once() {
    if !require_fuse() {
        return;
    }
    let c = Cluster::s3(bin())
        .meta_args(&["--sync"])
        .timeout(Duration::from_secs(180))
        .start();
    const N: u64 = 40;
    let total: usize = (0..N).map(|i| step_ops(i).len()).sum();
    let mut a = Workload::start(c.dir(), c.path(), "a", N, None);
    let mut b = Workload::start(c.dir(), c.path(), "b", N, None);
    let pid = c.meta().pid().expect("metadata server running");
    for at in [15, 45] {
        a.wait_for_steps(at, Duration::from_secs(60));
        // SAFETY: signals to a process this test started and still holds.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        std::thread::sleep(Duration::from_secs(7));
        unsafe { libc::kill(pid, libc::SIGCONT) };
    }
    a.finish(Duration::from_secs(90));
    b.finish(Duration::from_secs(90));
    for w in [&a, &b] {
        let steps = w.steps().len();
        assert_eq!(steps, total, "{}: steps acknowledged", w.tag);
        check_finished(&w.root, &w.tag, steps, "after the pauses");
    }
}

/// A second `cairn meta serve` on a folder a running server holds exits 1 with one error line
/// naming the folder (and the holder's pid); the first server keeps serving.
#[test]
fn second_meta_server_on_the_same_folder_is_refused() {
    let dir = test_dir("second_meta_server");
    let data = dir.path().join("meta");
    let mut first = MetaServer::start(&bin(), &data, "testvol", &[]);
    let port = free_port();
    let out = run_with_timeout(
        cairn(&[
            "meta",
            "serve",
            "--bind-addr",
            &format!("127.0.0.1:{port}"),
            "--volume",
            "testvol",
            "--data-dir",
        ])
        .arg(&data),
        Duration::from_secs(30),
    );
    assert_eq!(out.code(), Some(1), "exit code\n{}", out.describe());
    let pid = format!("pid {}", first.pid().expect("first server pid"));
    assert_clean_failure(&out, &["in use", &data.display().to_string(), &pid]);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the refused server listens on its port"
    );
    assert!(first.is_running(), "the first server died");
    std::net::TcpStream::connect(first.addr()).expect("the first server still accepts");
    first.stop();
}

/// `cairn meta backup` while 4 writers run. The backup restores into a fresh folder, verifies,
/// and serves a mount on which every file reads back and each writer's folder is its state after
/// some prefix of its steps: at least every step acknowledged before the backup began, at most
/// one more than those acknowledged before it ended.
#[test]
fn backup_under_four_writers_restores_a_consistent_tree() {
    if !require_fuse() {
        return;
    }
    let c = Cluster::s3(bin()).timeout(Duration::from_secs(240)).start();
    let stop = c.dir().join("stop-writers");
    let mut writers: Vec<Workload> = (0..4)
        .map(|k| Workload::start(c.dir(), c.path(), &format!("w{k}"), 100_000, Some(&stop)))
        .collect();
    for w in &mut writers {
        w.wait_for_steps(6, Duration::from_secs(60));
    }

    let backup = c.dir().join("backup.redb");
    let t0 = now();
    let out = run_with_timeout(
        cairn(&[
            "meta",
            "backup",
            "--meta",
            &c.meta().addr(),
            "--volume",
            c.volume(),
            "--to",
        ])
        .arg(&backup),
        Duration::from_secs(60),
    );
    let t1 = now();
    out.assert_success();
    eprintln!("backup took {:.3} s: {}", t1 - t0, out.stdout.trim());

    // Let every writer acknowledge a step after the backup, so they all ran across it.
    for w in &mut writers {
        let n = w.steps().iter().filter(|s| s.at < t1).count();
        w.wait_for_steps(n + 2, Duration::from_secs(60));
    }
    fs::write(&stop, b"").expect("create the stop file");
    let bounds: Vec<(String, usize, usize, usize)> = writers
        .iter_mut()
        .map(|w| {
            w.finish(Duration::from_secs(60));
            let steps = w.steps();
            let lo = steps.iter().filter(|s| s.at < t0).count();
            let hi = steps.iter().filter(|s| s.at < t1).count() + 1;
            (w.tag.clone(), lo, hi, steps.len())
        })
        .collect();
    for (tag, _, _, n) in &bounds {
        check_finished(
            &c.join(tag),
            tag,
            *n,
            "the live tree after the writers stopped",
        );
    }

    let restored = c.dir().join("restored");
    let out = run_with_timeout(
        cairn(&["meta", "restore", "--from"])
            .arg(&backup)
            .arg("--data-dir")
            .arg(&restored),
        Duration::from_secs(60),
    );
    out.assert_success();
    assert_verifies(&restored);

    let mut meta2 = MetaServer::start(c.bin(), &restored, c.volume(), &[]);
    let mp = c.dir().join("mnt-restored");
    fs::create_dir(&mp).expect("mkdir mnt-restored");
    let mut m2 = Mount::start_with(c.bin(), c.volume(), &mp, &meta2.addr(), c.store_args(), &[]);

    // Every file reads back fully.
    let mut files = 0;
    let mut stack = vec![m2.path().to_path_buf()];
    while let Some(d) = stack.pop() {
        for name in list(&d) {
            let p = d.join(&name);
            let md = fs::symlink_metadata(&p)
                .unwrap_or_else(|e| panic!("restored: stat {}: {e}", p.display()));
            if md.is_dir() {
                stack.push(p);
            } else {
                let data =
                    fs::read(&p).unwrap_or_else(|e| panic!("restored: read {}: {e}", p.display()));
                assert_eq!(
                    data.len() as u64,
                    md.len(),
                    "restored: bytes read from {}",
                    p.display()
                );
                files += 1;
            }
        }
    }
    let tags: Vec<String> = bounds.iter().map(|b| b.0.clone()).collect();
    assert_eq!(list(m2.path()), tags, "restored: the root folder");
    for (tag, lo, hi, _) in &bounds {
        let m = check_writer_tree(&m2.join(tag), tag, *lo, *hi, "restored backup");
        eprintln!("{tag}: the backup holds its first {m} steps ({lo} acknowledged before it began, {} before it ended)", hi - 1);
    }
    eprintln!("restored: {files} files read back");
    m2.stop();
    meta2.stop();
}

/// While the server is down a mount's operations wait (a mkdir blocks and completes after the
/// restart); a mount with `--meta-timeout 3s` fails the same operation with EIO after about 3 s,
/// and works again once the server is back.
#[test]
fn operations_wait_for_the_server_or_fail_after_meta_timeout() {
    if !require_fuse() {
        return;
    }
    let mut c = Cluster::local_folder(bin())
        .timeout(Duration::from_secs(120))
        .start();
    let mp = c.dir().join("mnt-short");
    fs::create_dir(&mp).expect("mkdir mnt-short");
    let mut short = Mount::start_with(
        c.bin(),
        c.volume(),
        &mp,
        &c.meta().addr(),
        c.store_args(),
        &["--meta-timeout", "3s"],
    );
    fs::create_dir(short.join("before")).expect("mkdir through the short mount");
    // Without --sync a change is durable after an fsync, and the server is about to be killed.
    fs::File::open(short.path())
        .and_then(|d| d.sync_all())
        .expect("fsync the root folder");

    /// mkdir ARGV[1] in a child; prints `ok SECONDS` or `err ERRNO_NAME SECONDS`.
    const MKDIR: &str = r#"
import errno, os, sys, time
t = time.monotonic()
try:
    os.mkdir(sys.argv[1])
    r = "ok"
except OSError as e:
    r = "err " + errno.errorcode.get(e.errno, str(e.errno))
print(f"{r} {time.monotonic() - t:.3f}", flush=True)
"#;
    let dir = c.dir().to_path_buf();
    let mkdir = |name: &str, path: &Path| {
        let mut cmd = Command::new("python3");
        cmd.arg("-c").arg(MKDIR).arg(path);
        let log = dir.join(format!("{name}.log"));
        (Proc::spawn(name, cmd, &log).expect("start python3"), log)
    };
    let answer = |log: &Path| -> String {
        fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.starts_with("=== testkit"))
            .collect::<Vec<_>>()
            .join("\n")
    };

    c.meta_mut().kill();
    let killed = Instant::now();
    let (mut waiting, waiting_log) = mkdir("mkdir-waiting", &c.join("made-while-down"));
    let (mut failing, failing_log) = mkdir("mkdir-failing", &short.join("fails-while-down"));

    let st = failing
        .wait_timeout(Duration::from_secs(20))
        .expect("the mkdir on the --meta-timeout 3s mount still blocks after 20 s");
    let got = answer(&failing_log);
    assert!(st.success(), "mkdir child: {st}\n{got}");
    let (verdict, secs) = got.rsplit_once(' ').expect("an answer line");
    let secs: f64 = secs.parse().expect("seconds");
    assert_eq!(
        verdict, "err EIO",
        "mkdir on the --meta-timeout 3s mount while the server is down"
    );
    assert!(
        (2.5..=10.0).contains(&secs),
        "the mkdir failed after {secs} s; --meta-timeout is 3 s"
    );

    // Meanwhile the mount with the default timeout (10 minutes) still waits.
    while killed.elapsed() < Duration::from_secs(6) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        waiting.is_running(),
        "the mkdir on the default mount returned while the server was down: {}",
        answer(&waiting_log)
    );
    c.meta_mut().restart();
    let st = waiting
        .wait_timeout(Duration::from_secs(30))
        .expect("the waiting mkdir did not complete within 30 s of the restart");
    let got = answer(&waiting_log);
    assert!(
        st.success() && got.starts_with("ok "),
        "the waiting mkdir: {st}\n{got}"
    );
    let secs: f64 = got
        .rsplit_once(' ')
        .expect("line")
        .1
        .parse()
        .expect("seconds");
    assert!(secs >= 5.0, "the waiting mkdir took only {secs} s");

    assert!(
        c.join("made-while-down").is_dir(),
        "the waited-for mkdir is there"
    );
    assert!(
        !short.join("fails-while-down").exists(),
        "the mkdir that failed with EIO happened anyway"
    );
    fs::create_dir(short.join("after")).expect("the short mount works again after the restart");
    assert_eq!(list(c.path()), vec!["after", "before", "made-while-down"]);
    short.stop();
}

/// The metadata server's disk fills up (another program takes all its space) under a writer of
/// large xattrs, then space comes back. While it is full: every operation that returned is kept,
/// the ones that cannot be kept fail with ENOSPC (not EIO), reads go on, and the server logs the
/// failed checkpoint once, not once per commit. Once space is back, writes work and checkpoints
/// resume without a restart (the log says so); after kill -9 and a restart every acknowledged
/// file and xattr is there. Killed again with changes only in its log, on a disk full again, the
/// server refuses to start with one line that says to free space, and starts with all of them
/// once there is.
#[test]
fn a_full_metadata_disk_refuses_with_enospc_and_recovers_without_a_restart() {
    if !require_fuse() {
        return;
    }
    let dir = test_dir("meta-full-disk");
    let _watchdog = Watchdog::start(dir.path(), Duration::from_secs(240), "meta full disk");
    // The data folder is the tmpfs itself, so that the server's log (beside it) is not on it.
    let disk = SmallDisk::mount(&dir.path().join("meta"), "160m");
    let mut meta = MetaServer::start(&bin(), &disk.0, "vol", &["--sync"]);
    let mp = dir.subdir("mnt");
    let mount = Mount::start_with(
        &bin(),
        "vol",
        &mp,
        &meta.addr(),
        &StoreArgs::file(&dir.subdir("blocks")),
        &["--no-disk-cache"],
    );
    let value = |i: usize| {
        let tag = format!("value {i} ");
        tag.repeat(60_000 / tag.len()).into_bytes()
    };
    // Create `name` and give it a 60 KB xattr; an error is returned as is.
    let put = |name: &str, i: usize| -> std::io::Result<()> {
        let p = mp.join(name);
        fs::File::create(&p)?;
        setxattr(&p, "user.v", &value(i), 0)
    };
    let mut kept = Vec::new();
    for i in 0..20 {
        let name = format!("before.{i}");
        put(&name, i).unwrap_or_else(|e| panic!("{name}: {e}"));
        kept.push((name, i));
    }

    let filler = disk.fill();
    let mut refused = None;
    for i in 20..3000 {
        let name = format!("full.{i}");
        match put(&name, i) {
            Ok(()) => kept.push((name, i)),
            Err(e) => {
                refused = Some((name, e));
                break;
            }
        }
    }
    let (name, e) = refused.expect("3000 xattrs of 60 KB on a full disk: one must be refused");
    assert_eq!(
        e.raw_os_error(),
        Some(libc::ENOSPC),
        "{name} on a full metadata disk: {e}"
    );
    // Reads go on: the names and values acknowledged so far.
    let names: BTreeSet<String> = list(&mp).into_iter().collect();
    for (name, _) in &kept {
        assert!(
            names.contains(name),
            "{name} is listed while the disk is full"
        );
    }
    assert_eq!(
        getxattr(&mp.join("before.3"), "user.v").expect("getxattr"),
        value(3)
    );
    let log = fs::read_to_string(meta.log()).expect("server log");
    let failed = log
        .matches("checkpoint of the metadata database failed")
        .count();
    assert!(
        (1..=3).contains(&failed),
        "{failed} lines for the failed checkpoints over {} commits: one per run of failures, \
         not one per commit:\n{}",
        kept.len(),
        tail(meta.log(), 20)
    );
    assert!(
        log.contains("no space left on the metadata server's disk"),
        "the refused commits say why:\n{}",
        tail(meta.log(), 20)
    );

    fs::remove_file(filler).expect("free the disk");
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut i = 3000;
    while !fs::read_to_string(meta.log())
        .expect("server log")
        .contains("checkpoints of the metadata database work again")
    {
        assert!(
            Instant::now() < deadline,
            "checkpoints did not resume within 90 s of space coming back:\n{}",
            tail(meta.log(), 20)
        );
        let name = format!("after.{i}");
        put(&name, i).unwrap_or_else(|e| panic!("{name} with space back: {e}"));
        kept.push((name, i));
        i += 1;
        std::thread::sleep(Duration::from_millis(500));
    }

    // Every file acknowledged so far, with its xattr.
    let check_kept = |kept: &[(String, usize)], when: &str| {
        for (name, i) in kept {
            assert_eq!(
                getxattr(&mp.join(name), "user.v").unwrap_or_else(|e| panic!("{name}: {e}")),
                value(*i),
                "{name} {when}"
            );
        }
    };
    meta.kill();
    meta.restart();
    check_kept(&kept, "after kill -9 and a restart of the server");

    // Killed with changes still only in its log, on a disk that is then full: the start that
    // must apply them says why it cannot and what to do; once space is back, it starts with all.
    for i in 5000..5020 {
        let name = format!("last.{i}");
        put(&name, i).unwrap_or_else(|e| panic!("{name}: {e}"));
        kept.push((name, i));
    }
    meta.kill();
    let filler = disk.fill();
    let addr = format!("127.0.0.1:{}", free_port());
    let data = disk.0.display().to_string();
    let out = run_with_timeout(
        cairn(&[
            "meta",
            "serve",
            "--bind-addr",
            &addr,
            "--volume",
            "vol",
            "--sync",
        ])
        .args(["--data-dir", &data])
        .env("RUST_BACKTRACE", "0"),
        FAST,
    );
    assert_clean_failure(&out, &["no space left", "free space on that disk"]);
    fs::remove_file(filler).expect("free the disk");
    meta.restart();
    check_kept(
        &kept,
        "after a start refused on a full disk and one with space back",
    );
    assert_no_panics_in(&[meta.log().to_path_buf()]);
    drop(mount);
    drop(meta);
}

/// `cairn meta backup` to a disk too small for the copy fails with one line that says so and
/// what to do, leaves no partial file there to hold the space, and the server goes on; a backup
/// to a disk with room then works.
#[test]
fn a_backup_to_a_full_disk_fails_cleanly_and_leaves_nothing() {
    if !require_fuse() {
        return;
    }
    let c = Cluster::local_folder(bin()).meta_args(&["--sync"]).start();
    let value = vec![b'x'; 3000];
    for i in 0..1000 {
        let p = c.join(format!("f{i}"));
        fs::File::create(&p).expect("create");
        setxattr(&p, "user.v", &value, 0).expect("setxattr");
    }
    let small = SmallDisk::mount(&c.dir().join("small"), "1m");
    let backup = |to: &Path| {
        run_with_timeout(
            cairn(&["meta", "backup", "--meta", &c.meta().addr()])
                .args(["--volume", c.volume()])
                .arg("--to")
                .arg(to)
                .env("RUST_BACKTRACE", "0"),
            Duration::from_secs(60),
        )
    };
    let out = backup(&small.0.join("b.redb"));
    assert_clean_failure(&out, &["no space left", "free space on that disk"]);
    assert_eq!(
        list(&small.0),
        Vec::<String>::new(),
        "nothing left on the small disk"
    );

    fs::File::create(c.join("after")).expect("the server goes on");
    let roomy = c.dir().join("b.redb");
    backup(&roomy).assert_success();
    assert!(roomy.is_file(), "the backup with room is written");
    drop(small);
}
