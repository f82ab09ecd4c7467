//! `cairn mount start --foreground` as a child process, and mount-table helpers.
//!
//! Every mount started here keeps its default disk cache in the test's folder
//! ([`disk_cache_root`]), never in /var/cache.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::proc::{note, run_with_timeout, Proc};
use crate::seaweed::SeaweedFs;

const MOUNT_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stop refused as busy is tried again (see [`Mount::try_stop`]).
const BUSY_RETRY_FOR: Duration = Duration::from_secs(15);

/// The block store arguments of `cairn mount start`, and the environment they need.
#[derive(Debug, Clone)]
pub struct StoreArgs {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl StoreArgs {
    /// `--store s3://BUCKET --s3-endpoint ENDPOINT --s3-region REGION`, keys in the environment.
    pub fn s3(s3: &SeaweedFs, bucket: &str) -> StoreArgs {
        StoreArgs::s3_url(s3, &format!("s3://{bucket}"))
    }

    /// Like [`StoreArgs::s3`] with a full `s3://bucket/prefix` URL.
    pub fn s3_url(s3: &SeaweedFs, url: &str) -> StoreArgs {
        StoreArgs {
            args: vec![
                "--store".into(),
                url.into(),
                "--s3-endpoint".into(),
                s3.endpoint().into(),
                "--s3-region".into(),
                s3.region().into(),
            ],
            env: s3.client_env(),
        }
    }

    /// `--store file:///ABS/DIR`.
    pub fn file(dir: &Path) -> StoreArgs {
        assert!(
            dir.is_absolute(),
            "file store path must be absolute: {}",
            dir.display()
        );
        StoreArgs {
            args: vec!["--store".into(), format!("file://{}", dir.display())],
            env: vec![],
        }
    }
}

/// The variable that replaces /var/cache/cairn as the root of default disk cache folders.
pub const CACHE_ROOT_VAR: &str = "CAIRN_CACHE_ROOT";

/// Where the default disk cache folder of a mount at `mountpoint` goes when the testkit starts
/// it: `disk-caches/` beside the mount point, so in the test's folder and never in /var/cache
/// ([`Mount`] sets `CAIRN_CACHE_ROOT` to it, unless the store's environment says otherwise).
/// Tests that run `cairn mount start` themselves set it too.
pub fn disk_cache_root(mountpoint: &Path) -> PathBuf {
    mountpoint
        .parent()
        .unwrap_or(mountpoint)
        .join("disk-caches")
}

/// The default disk cache folder of the mount at `mountpoint` under `root`: the one whose
/// `mount-point` note names it. None before the mount made it (or without a disk cache).
pub fn disk_cache_dir_in(root: &Path, mountpoint: &Path) -> Option<PathBuf> {
    let want = format!("{}\n", mountpoint.display());
    std::fs::read_dir(root)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|dir| std::fs::read_to_string(dir.join("mount-point")).is_ok_and(|s| s == want))
}

/// Processes with a file, a working directory, a root or a mapping under `mountpoint`, one
/// line each ("pid comm: path"), to say why an unmount was refused as busy.
fn users_of(mountpoint: &Path) -> String {
    let mut lines = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return "(cannot read /proc)".into();
    };
    let mp = mountpoint.display().to_string();
    for entry in procs.filter_map(Result::ok) {
        let pid = entry.file_name().to_string_lossy().to_string();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let dir = entry.path();
        let who = format!(
            "{pid} {}",
            std::fs::read_to_string(dir.join("comm"))
                .unwrap_or_default()
                .trim()
        );
        let mut links: Vec<PathBuf> = vec![dir.join("cwd"), dir.join("root")];
        if let Ok(fds) = std::fs::read_dir(dir.join("fd")) {
            links.extend(fds.filter_map(Result::ok).map(|e| e.path()));
        }
        for target in links.iter().filter_map(|l| std::fs::read_link(l).ok()) {
            if target.starts_with(mountpoint) {
                lines.push(format!("{who}: {}", target.display()));
            }
        }
        let maps = std::fs::read_to_string(dir.join("maps")).unwrap_or_default();
        for line in maps.lines().filter(|l| l.contains(&mp)) {
            lines.push(format!("{who} (mapped): {line}"));
        }
    }
    if lines.is_empty() {
        "(no process found)".into()
    } else {
        lines.join("\n")
    }
}

/// Mount points in `/proc/self/mountinfo` (octal escapes decoded).
fn mount_points() -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_octal(p)))
        .collect()
}

fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// True if `path` is a mount point now (per `/proc/self/mountinfo`).
pub fn is_mounted(path: &Path) -> bool {
    mount_points().iter().any(|m| m == path)
}

/// Mount points at or under `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = mount_points()
        .into_iter()
        .filter(|m| m.starts_with(dir))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v.dedup();
    v
}

/// Detaches the mount at `path` (`umount -l`), whatever state its daemon is in. Ignores errors;
/// check [`is_mounted`] afterwards if it matters.
pub fn lazy_unmount(path: &Path) {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return;
    };
    for _ in 0..8 {
        if !is_mounted(path) {
            return;
        }
        // SAFETY: umount2 with a valid NUL-terminated path.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// A FUSE mount served by a `cairn mount start --foreground` child.
///
/// Drop stops it with `cairn mount stop` (or, if the test is failing or that fails, SIGKILL and
/// `umount -l`) and never leaves a mount behind.
pub struct Mount {
    bin: PathBuf,
    volume: String,
    mountpoint: PathBuf,
    meta_addr: String,
    store: StoreArgs,
    extra: Vec<String>,
    log: PathBuf,
    proc: Option<Proc>,
}

impl Mount {
    /// Mounts VOLUME at MOUNTPOINT (which must exist and be empty) and waits until the mount is
    /// in `/proc/self/mountinfo` and answers a stat. Panics with the daemon's log if it does not
    /// within 30 s.
    pub fn start(
        bin: &Path,
        volume: &str,
        mountpoint: &Path,
        meta_addr: &str,
        store: &StoreArgs,
    ) -> Mount {
        Mount::start_with(bin, volume, mountpoint, meta_addr, store, &[])
    }

    /// [`Mount::start`] with extra `cairn mount start` arguments.
    pub fn start_with(
        bin: &Path,
        volume: &str,
        mountpoint: &Path,
        meta_addr: &str,
        store: &StoreArgs,
        extra_args: &[&str],
    ) -> Mount {
        Mount::try_start(bin, volume, mountpoint, meta_addr, store, extra_args)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Mount::start_with`], returning the failure instead of panicking.
    pub fn try_start(
        bin: &Path,
        volume: &str,
        mountpoint: &Path,
        meta_addr: &str,
        store: &StoreArgs,
        extra_args: &[&str],
    ) -> Result<Mount, String> {
        let mountpoint = mountpoint
            .canonicalize()
            .map_err(|e| format!("mount point {}: {e}", mountpoint.display()))?;
        let name = mountpoint
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or("mnt".into());
        let log = mountpoint.with_file_name(format!("{name}.log"));
        let mut m = Mount {
            bin: bin.to_path_buf(),
            volume: volume.to_string(),
            mountpoint,
            meta_addr: meta_addr.to_string(),
            store: store.clone(),
            extra: extra_args.iter().map(|s| s.to_string()).collect(),
            log,
            proc: None,
        };
        m.launch()?;
        Ok(m)
    }

    /// The mount point (canonical).
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// `path().join(rel)`.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.mountpoint.join(rel)
    }

    /// The folder of this mount's default disk cache (in [`disk_cache_root`]), once made.
    pub fn disk_cache_dir(&self) -> Option<PathBuf> {
        disk_cache_dir_in(&disk_cache_root(&self.mountpoint), &self.mountpoint)
    }

    /// The daemon's stdout and stderr (all runs of this mount point).
    pub fn log(&self) -> &Path {
        &self.log
    }

    pub fn pid(&self) -> Option<i32> {
        self.proc.as_ref().map(|p| p.pid())
    }

    pub fn volume(&self) -> &str {
        &self.volume
    }

    /// Points later restarts at another metadata server address.
    pub fn set_meta_addr(&mut self, addr: &str) {
        self.meta_addr = addr.to_string();
    }

    pub fn is_mounted(&self) -> bool {
        is_mounted(&self.mountpoint)
    }

    /// True while the daemon process is alive.
    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(|p| p.is_running())
    }

    /// SIGKILL the daemon, then `umount -l` the dead mount.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.note("kill -9");
            p.kill();
        }
        lazy_unmount(&self.mountpoint);
    }

    /// SIGKILL the daemon and leave its dead mount in place ("transport endpoint is not
    /// connected"), as a crash would. Drop (or [`lazy_unmount`]) clears it.
    pub fn kill_daemon_only(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.note("kill -9 (mount left in place)");
            p.kill();
        }
    }

    /// `cairn mount stop MOUNTPOINT`, then waits for the daemon to exit. Panics (after cleaning up
    /// with SIGKILL and `umount -l`) if the stop fails, times out, the daemon exits non-zero, or
    /// the mount is still there.
    pub fn stop(&mut self) {
        if let Err(e) = self.try_stop() {
            self.kill();
            panic!("{e}");
        }
    }

    /// Like [`Mount::stop`], returning the failure (the mount may still be up: call `kill`).
    pub fn try_stop(&mut self) -> Result<(), String> {
        let Some(p) = self.proc.as_mut() else {
            return Ok(());
        };
        p.note("cairn mount stop");
        let stop = || {
            run_with_timeout(
                Command::new(&self.bin)
                    .args(["mount", "stop"])
                    .arg(&self.mountpoint),
                STOP_TIMEOUT,
            )
        };
        let mut out = stop();
        // Twice in full runs of the suite, a stop right after a test found the mount busy with
        // no process using it: try again for a while, and say how long it stayed busy.
        let started = Instant::now();
        let mut busy_tries = 0;
        while !out.success()
            && out.describe().contains("is busy")
            && started.elapsed() < BUSY_RETRY_FOR
        {
            busy_tries += 1;
            std::thread::sleep(Duration::from_millis(500));
            out = stop();
        }
        if busy_tries > 0 {
            p.note(&format!(
                "the mount was busy at the stop; {} after {busy_tries} more tries ({:.1} s)",
                if out.success() {
                    "stopped"
                } else {
                    "still busy"
                },
                started.elapsed().as_secs_f64()
            ));
        }
        let mut problems = Vec::new();
        if !out.success() {
            problems.push(format!(
                "`cairn mount stop` failed:\n{}\nwhat uses the mount now:\n{}",
                out.describe(),
                users_of(&self.mountpoint)
            ));
        }
        match p.wait_timeout(EXIT_TIMEOUT) {
            None => problems.push(format!(
                "the mount daemon did not exit within {EXIT_TIMEOUT:?} of the stop"
            )),
            Some(st) if !st.success() => {
                problems.push(format!("the mount daemon exited with {st}"))
            }
            Some(_) => {}
        }
        if is_mounted(&self.mountpoint) {
            problems.push("the mount is still in /proc/self/mountinfo".into());
        }
        if problems.is_empty() {
            self.proc = None;
            return Ok(());
        }
        Err(format!(
            "stopping the mount at {} failed:\n{}\n--- daemon log {} ---\n{}",
            self.mountpoint.display(),
            problems.join("\n"),
            self.log.display(),
            crate::logs::tail(&self.log, 40)
        ))
    }

    /// Mounts again with the same arguments (a fresh client, no cache), stopping first if mounted.
    pub fn restart(&mut self) {
        if self.proc.is_some() {
            self.stop();
        }
        self.launch().unwrap_or_else(|e| panic!("{e}"));
    }

    fn launch(&mut self) -> Result<(), String> {
        if is_mounted(&self.mountpoint) {
            return Err(format!(
                "{} is already a mount point",
                self.mountpoint.display()
            ));
        }
        let mut cmd = Command::new(&self.bin);
        cmd.args(["mount", "start", &self.volume])
            .arg(&self.mountpoint)
            .args(["--meta", &self.meta_addr])
            .args(&self.store.args)
            .arg("--foreground")
            .args(&self.extra)
            .env(CACHE_ROOT_VAR, disk_cache_root(&self.mountpoint))
            .envs(self.store.env.iter().map(|(k, v)| (k, v)));
        if let Ok(v) = std::env::var("CAIRN_LOG") {
            cmd.env("CAIRN_LOG", v);
        }
        let mut p = Proc::spawn("cairn mount", cmd, &self.log)
            .map_err(|e| format!("cannot run {}: {e}", self.bin.display()))?;
        let start = Instant::now();
        let mp_shown = self.mountpoint.display().to_string();
        let fail = |p: &mut Proc, log: &Path, why: String| -> String {
            if p.is_running() {
                p.kill();
            }
            format!(
                "mounting {mp_shown} failed: {why}\n--- daemon log {} ---\n{}",
                log.display(),
                crate::logs::tail(log, 40)
            )
        };
        loop {
            if let Some(st) = p.try_status() {
                lazy_unmount(&self.mountpoint);
                return Err(fail(
                    &mut p,
                    &self.log,
                    format!("the daemon exited ({st}) before the mount appeared"),
                ));
            }
            if is_mounted(&self.mountpoint) {
                break;
            }
            if start.elapsed() > MOUNT_TIMEOUT {
                let e = fail(
                    &mut p,
                    &self.log,
                    format!("no mount in /proc/self/mountinfo after {MOUNT_TIMEOUT:?}"),
                );
                lazy_unmount(&self.mountpoint);
                return Err(e);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // The mount exists; the daemon must also answer (FUSE INIT done). A stat that hangs is
        // run on its own thread so that we can report it.
        let (tx, rx) = std::sync::mpsc::channel();
        let mp = self.mountpoint.clone();
        std::thread::spawn(move || {
            let _ = tx.send(std::fs::metadata(&mp).map(|m| m.is_dir()));
        });
        let left = MOUNT_TIMEOUT
            .saturating_sub(start.elapsed())
            .max(Duration::from_secs(5));
        match rx.recv_timeout(left) {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => {
                let e = fail(
                    &mut p,
                    &self.log,
                    "the mount root is not a directory".into(),
                );
                lazy_unmount(&self.mountpoint);
                return Err(e);
            }
            Ok(Err(err)) => {
                let e = fail(
                    &mut p,
                    &self.log,
                    format!("stat of the mount root failed: {err}"),
                );
                lazy_unmount(&self.mountpoint);
                return Err(e);
            }
            Err(_) => {
                let e = fail(&mut p, &self.log, "stat of the mount root hung".into());
                lazy_unmount(&self.mountpoint);
                return Err(e);
            }
        }
        note(
            &self.log,
            &format!("mounted after {:.2} s", start.elapsed().as_secs_f64()),
        );
        self.proc = Some(p);
        Ok(())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.proc.is_none() {
            lazy_unmount(&self.mountpoint);
            return;
        }
        if std::thread::panicking() {
            crate::logs::print_log_tails(std::slice::from_ref(&self.log), 40);
            self.kill();
            return;
        }
        if let Err(e) = self.try_stop() {
            eprintln!("testkit: {e}");
            self.kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octal() {
        assert_eq!(unescape_octal("/a\\040b"), "/a b");
        assert_eq!(unescape_octal("/plain"), "/plain");
    }
}
