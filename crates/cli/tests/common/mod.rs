//! Helpers shared by the end-to-end tests (each test file is its own binary; not all use all).
#![allow(dead_code)]

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub use cairn_testkit::*;

/// The `cairn` binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cairn"))
}

/// `cairn ARGS`, ready to run. A mount it starts keeps its default disk cache under the test
/// root, not in /var/cache; tests that mount set [`CACHE_ROOT_VAR`] to their own folder
/// ([`disk_cache_root`]) so that it goes with them.
pub fn cairn(args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.args(args)
        .env(CACHE_ROOT_VAR, test_root().join("disk-caches"));
    c
}

/// A cluster over a fresh SeaweedFS bucket, or None when FUSE tests are skipped.
pub fn s3_cluster() -> Option<Cluster> {
    require_fuse().then(|| Cluster::s3(bin()).start())
}

/// A cluster over a `file://` block store, or None when FUSE tests are skipped.
pub fn local_cluster() -> Option<Cluster> {
    require_fuse().then(|| Cluster::local_folder(bin()).start())
}

pub fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

/// The errno of an I/O error (0 if it has none).
pub fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// Asserts that `r` failed with `expected` errno.
#[track_caller]
pub fn assert_errno<T: std::fmt::Debug>(r: io::Result<T>, expected: i32, what: &str) {
    match r {
        Ok(v) => panic!(
            "{what}: expected errno {expected} ({}), got success {v:?}",
            io::Error::from_raw_os_error(expected)
        ),
        Err(e) => assert_eq!(
            errno(&e),
            expected,
            "{what}: expected errno {expected} ({}), got {e}",
            io::Error::from_raw_os_error(expected)
        ),
    }
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

pub const RENAME_NOREPLACE: u32 = 1;
pub const RENAME_EXCHANGE: u32 = 2;

/// renameat2(2) with AT_FDCWD on both sides.
pub fn renameat2(from: &Path, to: &Path, flags: u32) -> io::Result<()> {
    let (f, t) = (cpath(from), cpath(to));
    // SAFETY: valid NUL-terminated paths; the syscall takes (int, char*, int, char*, unsigned).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            flags,
        )
    };
    check(rc as libc::c_int)
}

pub fn setxattr(p: &Path, name: &str, value: &[u8], flags: i32) -> io::Result<()> {
    let (p, n) = (cpath(p), CString::new(name).expect("name"));
    // SAFETY: valid pointers and lengths.
    check(unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })
}

pub fn getxattr(p: &Path, name: &str) -> io::Result<Vec<u8>> {
    let (p, n) = (cpath(p), CString::new(name).expect("name"));
    // SAFETY: a size query with a null buffer, then a read into a buffer of that size.
    let len = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
    if len < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; len as usize + 1];
    let got = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(got as usize);
    Ok(buf)
}

pub fn listxattr(p: &Path) -> io::Result<Vec<String>> {
    let p = cpath(p);
    // SAFETY: as in getxattr.
    let len = unsafe { libc::listxattr(p.as_ptr(), std::ptr::null_mut(), 0) };
    if len < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; len as usize + 1];
    let got = unsafe { libc::listxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(got as usize);
    Ok(buf
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect())
}

pub fn removexattr(p: &Path, name: &str) -> io::Result<()> {
    let (p, n) = (cpath(p), CString::new(name).expect("name"));
    // SAFETY: valid NUL-terminated strings.
    check(unsafe { libc::removexattr(p.as_ptr(), n.as_ptr()) })
}

/// Drop the kernel's cached pages of `f` (a write through the mount leaves them there), so that
/// reads reach the mount.
pub fn drop_cached_pages(f: &std::fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: an advice call on an open descriptor.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "posix_fadvise");
}

/// truncate(2) by path.
pub fn truncate(p: &Path, len: u64) -> io::Result<()> {
    let p = cpath(p);
    // SAFETY: valid NUL-terminated path.
    check(unsafe { libc::truncate(p.as_ptr(), len as libc::off_t) })
}

/// Files in the `clean/` folder of the disk cache folder `cache`, at any depth: its copies of
/// blocks that are in the bucket too (none if the folder is not there yet).
pub fn clean_copies(cache: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.filter_map(Result::ok) {
            match e.file_type() {
                Ok(t) if t.is_dir() => walk(&e.path(), out),
                Ok(t) if t.is_file() => out.push(e.path()),
                _ => {}
            }
        }
    }
    let mut out = Vec::new();
    walk(&cache.join("clean"), &mut out);
    out
}

/// Names in a directory (without . and ..), sorted.
pub fn list(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    v.sort();
    v
}

/// Asserts the file at `p` has `len` bytes with SHA-256 `hash`.
#[track_caller]
pub fn assert_file(p: &Path, len: u64, hash: &str, when: &str) {
    let md = std::fs::metadata(p).unwrap_or_else(|e| panic!("{when}: stat {}: {e}", p.display()));
    assert_eq!(md.len(), len, "{when}: size of {}", p.display());
    let got = sha256_file(p).unwrap_or_else(|e| panic!("{when}: read {}: {e}", p.display()));
    assert_eq!(
        got,
        hash,
        "{when}: contents of {} ({len} bytes) differ",
        p.display()
    );
}

/// How long a command that must fail may take.
pub const FAST: Duration = Duration::from_secs(10);

/// Asserts a clean failure of the CLI (STYLE 2.6): it returned within [`FAST`], exited non-zero
/// (not by a signal), printed exactly one stderr line starting with `error: ` that mentions each
/// of `mentions`, printed no `Debug` formatting of an error, and did not panic.
#[track_caller]
pub fn assert_clean_failure(out: &CmdOutput, mentions: &[&str]) {
    let d = out.describe();
    assert!(
        !out.timed_out(),
        "the command did not return within its time limit\n{d}"
    );
    assert!(
        out.elapsed <= FAST,
        "the command took {:?} to fail (limit {FAST:?})\n{d}",
        out.elapsed
    );
    let code = out
        .code()
        .unwrap_or_else(|| panic!("the command died by a signal\n{d}"));
    assert_ne!(code, 0, "the command succeeded but should have failed\n{d}");
    assert!(
        !out.stderr.contains("panicked") && !out.stdout.contains("panicked"),
        "the command panicked\n{d}"
    );
    let errors = out.error_lines();
    assert_eq!(
        errors.len(),
        1,
        "expected exactly one stderr line starting with `error: `\n{d}"
    );
    let line = errors[0];
    for m in mentions {
        assert!(line.contains(m), "the error line should mention {m:?}\n{d}");
    }
    for debug in ["Os { code", "Custom { kind", "Error {", "Kind("] {
        assert!(
            !out.stderr.contains(debug),
            "stderr shows Debug output ({debug:?}); print the message and a hint\n{d}"
        );
    }
}

/// Makes sure nothing is mounted at or under `dir` and no process still mentions it, waiting up
/// to 10 s for daemons to exit; returns what was left (empty if clean).
pub fn leftovers(dir: &Path) -> Vec<String> {
    let needle = dir.display().to_string();
    wait_until(Duration::from_secs(10), || {
        mounts_under(dir).is_empty() && processes_mentioning(&needle).is_empty()
    });
    let mut left: Vec<String> = mounts_under(dir)
        .iter()
        .map(|m| format!("mount {}", m.display()))
        .collect();
    left.extend(
        processes_mentioning(&needle)
            .into_iter()
            .map(|(pid, cmd)| format!("pid {pid}: {cmd}")),
    );
    left
}

/// Cleans up what a test that ran `cairn` in the background may have left under `dir`: SIGKILL
/// to processes whose command line names `dir` (daemons that test started), then `umount -l`.
pub fn force_cleanup(dir: &Path) {
    for (pid, cmd) in processes_mentioning(&dir.display().to_string()) {
        eprintln!("cleanup: killing pid {pid}: {cmd}");
        // SAFETY: kill(2) on a daemon this test started (its command line names the test's folder).
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    for m in mounts_under(dir) {
        lazy_unmount(&m);
    }
}

/// A small tmpfs of a test's own (a disk that can fill up), unmounted when dropped: declare it
/// before the servers and mounts that use it, so that they are gone first.
pub struct SmallDisk(pub PathBuf);

impl SmallDisk {
    pub fn mount(at: &Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(at).expect("mkdir");
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .expect("run mount");
        assert!(out.status.success(), "mount a tmpfs: {out:?}");
        SmallDisk(at.to_path_buf())
    }

    /// Writes a file into the disk until it is full; returns it.
    pub fn fill(&self) -> PathBuf {
        use std::io::Write;
        let filler = self.0.join("filler");
        let mut f = std::fs::File::create(&filler).expect("create the filler");
        for chunk in [1 << 20, 4096] {
            let buf = vec![7u8; chunk];
            loop {
                match f.write(&buf) {
                    Ok(n) if n == buf.len() => {}
                    Ok(_) => break,
                    Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                    Err(e) => panic!("fill the disk: {e}"),
                }
            }
        }
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        lazy_unmount(&self.0);
    }
}
