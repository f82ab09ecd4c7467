//! The `meta` workload: create, stat and unlink empty files.
//!
//! 1. Make a fresh folder `DIR/cairn-bench-meta-PID-NANOS` and one subfolder per thread (`t0`,
//!    `t1`, ...), untimed. Separate folders keep the threads from contending on one directory's
//!    lock in the kernel, so what is measured is the filesystem's per-operation cost and its
//!    ability to run operations in parallel.
//! 2. `create`: each thread creates its share of the N files in its folder with
//!    `open(O_CREAT|O_EXCL|O_WRONLY)` and `close` (both checked), as `touch` of a new file does.
//! 3. `stat`: each thread `stat`s each of its files. Right after `create` the kernel may still
//!    hold the entries and attributes the filesystem handed out (for the TTL it chose); with
//!    `--drop-caches` the kernel's dentry and inode caches are dropped first, so every `stat`
//!    reaches the filesystem.
//! 4. `unlink`: each thread unlinks each of its files (after dropping caches too, with
//!    `--drop-caches`).
//!
//!    With `--age-ms`, each of those two phases starts that long after the caches were dropped
//!    (untimed): past the 1 s TTL, nothing a filesystem remembers of `create` is fresh enough to
//!    answer a `stat` without asking its metadata server.
//! 5. Remove the folders, untimed.
//!
//! Every phase does exactly N operations: no time limit decides how many, so the same arguments
//! give two filesystems the same work.

use crate::runner::{run_phase, split, Marker};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Args, Debug)]
pub struct MetaArgs {
    /// Folder to work in (e.g. a mount point); a fresh subfolder is made and removed.
    #[arg(long)]
    pub dir: PathBuf,
    /// Threads, each in its own subfolder.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub threads: u64,
    /// Files in all, shared out evenly among the threads.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub files: u64,
    /// Drop the kernel's dentry and inode caches before `stat` and before `unlink`, so each
    /// operation reaches the filesystem (needs root: writes /proc/sys/vm/drop_caches).
    #[arg(long)]
    pub drop_caches: bool,
    /// Wait this long (untimed) before `stat` and before `unlink`, after dropping caches.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub age_ms: u64,
    /// Write `cairn-bench phase=NAME begin|end` to the kernel's trace_marker around each phase,
    /// so a trace of FUSE requests can be split by phase (scripts/bench counts requests this way).
    #[arg(long)]
    pub trace_marker: bool,
}

pub fn run(a: &MetaArgs) -> Result<()> {
    let threads = a.threads as usize;
    if a.files < a.threads {
        bail!(
            "--files {} is fewer than --threads {}: give each thread at least one file",
            a.files,
            a.threads
        );
    }
    if !a.dir.is_dir() {
        bail!("--dir {} is not a folder", a.dir.display());
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let root = a
        .dir
        .join(format!("cairn-bench-meta-{}-{nanos}", std::process::id()));
    std::fs::create_dir(&root).with_context(|| format!("create folder {}", root.display()))?;
    let result = phases(a, threads, &root);
    // Best effort: after a failure, leave no files behind either.
    let cleanup =
        std::fs::remove_dir_all(&root).with_context(|| format!("remove folder {}", root.display()));
    result.and(cleanup)
}

fn phases(a: &MetaArgs, threads: usize, root: &Path) -> Result<()> {
    let counts = split(a.files, threads);
    let mut paths: Vec<Vec<CString>> = Vec::with_capacity(threads);
    for (t, &n) in counts.iter().enumerate() {
        let d = root.join(format!("t{t}"));
        std::fs::create_dir(&d).with_context(|| format!("create folder {}", d.display()))?;
        paths.push(
            (0..n)
                .map(|i| cstring(&d.join(format!("f{i:07}"))))
                .collect::<Result<_>>()?,
        );
    }
    let paths = Arc::new(paths);
    let mut extra: Vec<(&'static str, String)> = if a.drop_caches {
        vec![("caches", "dropped".into())]
    } else {
        Vec::new()
    };
    if a.age_ms > 0 {
        extra.push(("aged_ms", a.age_ms.to_string()));
    }
    let age = std::time::Duration::from_millis(a.age_ms);

    let marker = Marker::new(a.trace_marker);

    let p = paths.clone();
    let r = marker.around("create", || {
        run_phase("create", &counts, move |t, i| create(&p[t][i as usize]))
    })?;
    println!("{}", r.line());

    if a.drop_caches {
        drop_caches()?;
    }
    std::thread::sleep(age);
    let p = paths.clone();
    let mut r = marker.around("stat", || {
        run_phase("stat", &counts, move |t, i| stat(&p[t][i as usize]))
    })?;
    r.extra = extra.clone();
    println!("{}", r.line());

    if a.drop_caches {
        drop_caches()?;
    }
    std::thread::sleep(age);
    let p = paths.clone();
    let mut r = marker.around("unlink", || {
        run_phase("unlink", &counts, move |t, i| unlink(&p[t][i as usize]))
    })?;
    r.extra = extra;
    println!("{}", r.line());
    Ok(())
}

fn cstring(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .with_context(|| format!("path {} has a NUL byte", p.display()))
}

fn os_err(what: &str, p: &CString) -> anyhow::Error {
    let e = std::io::Error::last_os_error();
    anyhow::anyhow!("{what} {}: {e}", p.to_string_lossy())
}

fn create(p: &CString) -> Result<()> {
    // SAFETY: `p` is a valid NUL-terminated string that outlives the call.
    let fd = unsafe {
        libc::open(
            p.as_ptr(),
            libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC,
            0o644,
        )
    };
    if fd < 0 {
        return Err(os_err("create", p));
    }
    // SAFETY: `fd` was just opened by us and is closed exactly once.
    if unsafe { libc::close(fd) } != 0 {
        return Err(os_err("close", p));
    }
    Ok(())
}

fn stat(p: &CString) -> Result<()> {
    // SAFETY: all-zero bytes are a valid `libc::stat` (plain integers).
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `p` is NUL-terminated and `st` is a valid, writable `stat` buffer.
    if unsafe { libc::stat(p.as_ptr(), &mut st) } != 0 {
        return Err(os_err("stat", p));
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_size != 0 {
        bail!(
            "stat {}: expected an empty regular file, got mode {:o} size {}",
            p.to_string_lossy(),
            st.st_mode,
            st.st_size
        );
    }
    Ok(())
}

fn unlink(p: &CString) -> Result<()> {
    // SAFETY: `p` is a valid NUL-terminated string that outlives the call.
    if unsafe { libc::unlink(p.as_ptr()) } != 0 {
        return Err(os_err("unlink", p));
    }
    Ok(())
}

/// Drops the kernel's reclaimable dentries and inodes (not the page cache: there is no data).
fn drop_caches() -> Result<()> {
    std::fs::write("/proc/sys/vm/drop_caches", "2\n")
        .context("write /proc/sys/vm/drop_caches for --drop-caches (needs root)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_on_a_local_folder_and_leaves_nothing() {
        let dir = std::env::temp_dir().join(format!("cairn-bench-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        run(&MetaArgs {
            dir: dir.clone(),
            threads: 3,
            files: 50,
            drop_caches: false,
            age_ms: 0,
            trace_marker: false,
        })
        .unwrap();
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        std::fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn fewer_files_than_threads_is_refused() {
        let e = run(&MetaArgs {
            dir: std::env::temp_dir(),
            threads: 4,
            files: 2,
            drop_caches: false,
            age_ms: 0,
            trace_marker: false,
        })
        .unwrap_err();
        assert!(e.to_string().contains("fewer than --threads"));
    }
}
