//! Bounds a test in time: when it runs too long, kill what it started so it fails instead of hangs.
//!
//! A hung FUSE daemon blocks the test's syscalls in the kernel, where no timeout reaches them.
//! On expiry the watchdog prints the logs under the test's folder, SIGKILLs every process testkit
//! started there and detaches its mounts (`umount -l`): the blocked syscalls then fail (ENOTCONN)
//! and the test fails with a message. If the test still has not finished 60 s later, the watchdog
//! aborts the whole test binary (children die with it through PR_SET_PDEATHSIG).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::mount::{lazy_unmount, mounts_under};
use crate::proc::kill_all_under;

const GRACE: Duration = Duration::from_secs(60);

/// See the module doc. Dropping it disarms it.
pub struct Watchdog {
    done: Arc<(Mutex<bool>, Condvar)>,
    fired: Arc<AtomicBool>,
    limit: Duration,
    handle: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Arms a watchdog for whatever testkit starts under `dir`. `what` names the test in messages.
    pub fn start(dir: &Path, limit: Duration, what: &str) -> Watchdog {
        let done = Arc::new((Mutex::new(false), Condvar::new()));
        let d = done.clone();
        let fired = Arc::new(AtomicBool::new(false));
        let f = fired.clone();
        let dir = dir.to_path_buf();
        let what = what.to_string();
        let handle = std::thread::Builder::new()
            .name("testkit-watchdog".into())
            .spawn(move || {
                if wait_done(&d, limit) {
                    return;
                }
                f.store(true, Ordering::SeqCst);
                eprintln!(
                    "testkit watchdog: {what} still running after {} s; killing its processes and mounts under {}",
                    limit.as_secs(),
                    dir.display()
                );
                crate::logs::print_log_tails(&logs_under(&dir), 60);
                let killed = kill_all_under(&dir);
                eprintln!("testkit watchdog: sent SIGKILL to {killed:?}");
                for m in mounts_under(&dir) {
                    eprintln!("testkit watchdog: umount -l {}", m.display());
                    lazy_unmount(&m);
                }
                if !wait_done(&d, GRACE) {
                    eprintln!(
                        "testkit watchdog: {what} did not finish {} s after its processes were killed; aborting",
                        GRACE.as_secs()
                    );
                    std::process::abort();
                }
            })
            .expect("spawn watchdog thread");
        Watchdog {
            done,
            fired,
            limit,
            handle: Some(handle),
        }
    }

    /// True once the time limit passed and the watchdog killed the test's processes.
    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }

    pub fn limit(&self) -> Duration {
        self.limit
    }
}

/// True if marked done within `limit`.
fn wait_done(d: &Arc<(Mutex<bool>, Condvar)>, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let (lock, cv) = &**d;
    let mut done = lock.lock().unwrap_or_else(|e| e.into_inner());
    while !*done {
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        done = cv
            .wait_timeout(done, deadline - now)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
    true
}

/// `*.log` files up to three levels under `dir`, never descending into a mount point (a hung
/// mount would hang the walk).
pub(crate) fn logs_under(dir: &Path) -> Vec<PathBuf> {
    let mounts = mounts_under(dir);
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), 0)];
    while let Some((d, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if mounts.contains(&p) {
                continue;
            }
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() && depth < 3 {
                stack.push((p, depth + 1));
            } else if ft.is_file() && p.extension().is_some_and(|x| x == "log") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let (lock, cv) = &*self.done;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_all();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
