//! Lifecycles a user drives from the shell: `cairn up DIR` / `cairn up --stop DIR`, and
//! `cairn mount start` in the background / `cairn mount stop`. Each leaves nothing mounted or
//! running once stopped.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

const START_LIMIT: Duration = Duration::from_secs(60);
/// Whole-test limit: past it the watchdog detaches the mounts, so blocked I/O fails instead of
/// hanging.
const TEST_LIMIT: Duration = Duration::from_secs(300);

/// Cleans up what the test started in the background if it fails half way: `cairn up --stop`
/// first for an up folder, then SIGKILL to daemons naming the folder and `umount -l`.
struct Guard {
    dir: PathBuf,
    up: bool,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !mounts_under(&self.dir).is_empty()
            || !processes_mentioning(&self.dir.display().to_string()).is_empty()
        {
            if self.up {
                let _ = run_with_timeout(
                    cairn(&["up", "--stop"]).arg(&self.dir),
                    Duration::from_secs(30),
                );
            }
            force_cleanup(&self.dir);
        }
    }
}

fn up(dir: &Path) -> CmdOutput {
    let out = run_with_timeout(cairn(&["up"]).arg(dir), START_LIMIT);
    assert!(out.success(), "cairn up failed\n{}", out.describe());
    assert!(!out.stderr.contains("panicked"), "{}", out.describe());
    assert!(
        out.pipes_closed,
        "cairn up left a daemon holding its stdout/stderr\n{}",
        out.describe()
    );
    out
}

fn up_stop(dir: &Path) {
    let out = run_with_timeout(cairn(&["up", "--stop"]).arg(dir), START_LIMIT);
    assert!(out.success(), "cairn up --stop failed\n{}", out.describe());
    let left = leftovers(dir);
    assert!(
        left.is_empty(),
        "left behind after cairn up --stop: {left:?}"
    );
}

/// `cairn up DIR` mounts DIR/mnt; a file written there reads back; `cairn up --stop DIR`
/// unmounts and stops everything; a second `cairn up DIR` finds the file again.
#[test]
fn up_write_read_stop_and_up_again() {
    if !require_fuse() {
        return;
    }
    let td = test_dir("up");
    let dir = td.path().to_path_buf();
    let _guard = Guard {
        dir: dir.clone(),
        up: true,
    };
    let _watchdog = Watchdog::start(&dir, TEST_LIMIT, "up_write_read_stop_and_up_again");
    let mnt = dir.join("mnt");

    up(&dir);
    assert!(
        is_mounted(&mnt),
        "{} is not mounted after cairn up returned",
        mnt.display()
    );
    let h = write_random_file(&mnt.join("hello.bin"), 5, (4 << 20) + 3, false).expect("write");
    assert_file(&mnt.join("hello.bin"), (4 << 20) + 3, &h, "after cairn up");
    std::fs::create_dir(mnt.join("sub")).expect("mkdir");
    std::fs::write(mnt.join("sub/small"), b"small").expect("write small");

    up_stop(&dir);
    assert!(!is_mounted(&mnt));
    let mounted: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter(|l| l.contains(&dir.display().to_string()))
        .map(String::from)
        .collect();
    assert!(
        mounted.is_empty(),
        "mountinfo still names {}: {mounted:?}",
        dir.display()
    );

    up(&dir);
    assert_file(
        &mnt.join("hello.bin"),
        (4 << 20) + 3,
        &h,
        "after a second cairn up",
    );
    assert_eq!(
        std::fs::read(mnt.join("sub/small")).expect("read"),
        b"small"
    );
    up_stop(&dir);
    assert_no_panics_in(&logs_of(&dir));
}

fn logs_of(dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if is_mounted(&p) {
                continue;
            }
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(t) if t.is_file() && p.extension().is_some_and(|x| x == "log") => v.push(p),
                _ => {}
            }
        }
    }
    v
}

/// `cairn up --stop` on a folder where nothing runs fails clearly.
#[test]
fn up_stop_when_nothing_runs() {
    let td = test_dir("up-stop-idle");
    let out = run_with_timeout(cairn(&["up", "--stop"]).arg(td.path()), FAST);
    assert_clean_failure(&out, &[&td.path().display().to_string()]);
}

/// `cairn mount start` without --foreground returns once the mount is live, leaving a daemon
/// that does not hold the caller's stdout/stderr; `cairn mount stop` unmounts and the daemon exits.
#[test]
fn mount_start_in_background_and_stop() {
    if !require_fuse() {
        return;
    }
    let s3 = SeaweedFs::start();
    s3.create_bucket("bg-bucket");
    let td = test_dir("mount-bg");
    let meta = MetaServer::start(&bin(), &td.subdir("meta"), "testvol", &[]);
    let mp = td.subdir("mnt");
    let _guard = Guard {
        dir: mp.clone(),
        up: false,
    };
    let _watchdog = Watchdog::start(td.path(), TEST_LIMIT, "mount_start_in_background_and_stop");
    let log = td.path().join("daemon.log");
    let store = StoreArgs::s3(&s3, "bg-bucket");

    let mut cmd = cairn(&["mount", "start", "testvol"]);
    cmd.arg(&mp)
        .args(["--meta", &meta.addr()])
        .args(&store.args)
        .arg("--log-file")
        .arg(&log)
        .env(CACHE_ROOT_VAR, disk_cache_root(&mp));
    cmd.envs(store.env.iter().map(|(k, v)| (k, v)));
    let out = run_with_timeout(&mut cmd, START_LIMIT);
    assert!(
        out.success(),
        "cairn mount start failed\n{}\n--- log ---\n{}",
        out.describe(),
        tail(&log, 40)
    );
    assert!(
        out.pipes_closed,
        "the mount daemon holds the caller's stdout/stderr\n{}",
        out.describe()
    );
    assert!(
        is_mounted(&mp),
        "cairn mount start returned 0 but nothing is mounted"
    );

    let h = write_random_file(&mp.join("f"), 9, 6 << 20, false).expect("write");
    assert_file(&mp.join("f"), 6 << 20, &h, "through the background mount");
    // The daemon in the background found its default disk cache folder too.
    let canonical = mp.canonicalize().expect("canonical mount point");
    assert!(
        disk_cache_dir_in(&disk_cache_root(&mp), &canonical).is_some(),
        "no default disk cache folder for {} in {}\n--- log ---\n{}",
        canonical.display(),
        disk_cache_root(&mp).display(),
        tail(&log, 40)
    );
    // Data written without fsync is flushed by a clean stop.
    let h2 = write_random_file(&mp.join("unsynced"), 10, 3 << 20, false).expect("write");

    let out = run_with_timeout(cairn(&["mount", "stop"]).arg(&mp), START_LIMIT);
    assert!(
        out.success(),
        "cairn mount stop failed\n{}\n--- log ---\n{}",
        out.describe(),
        tail(&log, 40)
    );
    let left = leftovers(&mp);
    assert!(
        left.is_empty(),
        "left behind after cairn mount stop: {left:?}"
    );
    assert!(
        s3.object_count("bg-bucket") > 0,
        "no blocks in the bucket after a clean stop"
    );

    // Mount again (in the foreground this time) and read both files.
    let m = Mount::start(&bin(), "testvol", &mp, &meta.addr(), &store);
    assert_file(&m.join("f"), 6 << 20, &h, "after remount");
    assert_file(&m.join("unsynced"), 3 << 20, &h2, "after remount");
    drop(m);
    assert_no_panics_in(&[log, meta.log().to_path_buf()]);
}
