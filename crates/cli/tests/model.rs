//! Model test: random sequences of file system operations run both on a cairn mount and on a
//! local ext4 folder (the reference) must give the same results, errno included, and the same
//! trees after every step. proptest shrinks a failing sequence, which is printed as a list.
//!
//! What is compared: names, kinds, sizes, modes, owners, link counts, which names share an inode,
//! file contents, symlink targets, `user.` xattrs, and mtimes set with utimensat (other mtimes
//! only have to be recent on both sides). Not compared (documented differences or meaningless):
//! atime, ctime, st_blocks, st_dev, inode numbers, directory sizes.
//!
//! One cluster per test, cleared between cases. Environment: `CAIRN_MODEL_CASES` (cases per
//! test, default 16), `CAIRN_MODEL_OPS` (most operations per case, default 40),
//! `CAIRN_MODEL_SECS` (time for the cases, default 75: later cases are skipped),
//! `CAIRN_MODEL_SHRINK_SECS` (time for shrinking a failure, default 240), `CAIRN_TEST_SEED`
//! (replays a run), `CAIRN_MODEL_VERBOSE=1` (prints every step and its results),
//! `CAIRN_MODEL_HELD_WRITES=0` (no writes through a held descriptor, see [`op`]).

mod common;

use common::*;
use proptest::prelude::*;
use proptest::strategy::Union;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestError, TestRunner};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::ffi::CString;
use std::fmt;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// The volume's block size: small, so that writes and truncates cross block boundaries cheaply.
const BLOCK: u64 = 256 << 10;

/// Every path is made of these names, at most 4 deep, so that operations collide often.
const NAMES: [&str; 6] = ["a", "b", "c", "d", "e", "f"];

/// Symlink targets: relative and without `..`, so that following one never leaves the tree.
const TARGETS: [&str; 6] = ["a", "b", "a/b", "c/d", ".", "nowhere"];

const XATTRS: [&str; 3] = ["user.a", "user.b", "user.c"];

/// mtimes set by the test are below this (1973..2001); every other mtime is above it.
const SET_MTIME_LIMIT: i64 = 1_000_000_000;

// --- operations -----------------------------------------------------------------------------

/// A relative path, as indexes into [`NAMES`].
#[derive(Clone, PartialEq, Eq)]
struct P(Vec<u8>);

impl fmt::Display for P {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<&str> = self.0.iter().map(|i| NAMES[*i as usize]).collect();
        f.write_str(&parts.join("/"))
    }
}

impl fmt::Debug for P {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

#[derive(Clone, Debug)]
enum Op {
    Create {
        path: P,
        excl: bool,
        trunc: bool,
        mode: u32,
    },
    /// pwrite to a file opened with O_CREAT (mode 0644), then close.
    Write {
        path: P,
        off: u64,
        len: u64,
        seed: u64,
        fsync: bool,
    },
    Truncate {
        path: P,
        len: u64,
    },
    /// Several changes through one descriptor (O_RDWR|O_CREAT, maybe O_APPEND), then close: reads
    /// and truncates meet the mount's buffered writes.
    Edit {
        path: P,
        append: bool,
        edits: Vec<Edit>,
    },
    Mkdir {
        path: P,
        mode: u32,
    },
    Rmdir(P),
    Unlink(P),
    Rename {
        from: P,
        to: P,
        flags: u32,
    },
    Link {
        from: P,
        to: P,
    },
    Symlink {
        target: &'static str,
        path: P,
    },
    Chmod {
        path: P,
        mode: u32,
    },
    SetMtime {
        path: P,
        sec: i64,
        nsec: i64,
    },
    SetXattr {
        path: P,
        name: &'static str,
        len: usize,
        seed: u64,
        flags: i32,
    },
    RemoveXattr {
        path: P,
        name: &'static str,
    },
    /// Open (O_RDWR|O_CREAT, maybe O_APPEND) and keep the descriptor across later steps, closing
    /// the one held before: writes, truncates and reads through it meet renames, unlinks and
    /// other names' changes of the same file.
    Hold {
        path: P,
        append: bool,
    },
    /// One change through the held descriptor (EBADF when none is held).
    Held(Edit),
    /// Close the held descriptor (EBADF when none is held).
    CloseHeld,
    /// Close the held descriptor, stop the mount and mount again (no cache left).
    Remount,
    /// Close the held descriptor and restart the metadata server: SIGTERM, or SIGKILL (after an
    /// fsync of a directory when the server runs without `--sync`).
    RestartMeta {
        kill: bool,
    },
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Create {
                path,
                excl,
                trunc,
                mode,
            } => {
                let flags = match (excl, trunc) {
                    (true, true) => " O_EXCL|O_TRUNC",
                    (true, false) => " O_EXCL",
                    (false, true) => " O_TRUNC",
                    (false, false) => "",
                };
                write!(f, "create {path} {mode:04o}{flags}")
            }
            Op::Write {
                path,
                off,
                len,
                seed,
                fsync,
            } => write!(
                f,
                "write {path} at {off} len {len} (seed {seed}){}",
                if *fsync { " + fsync" } else { "" }
            ),
            Op::Truncate { path, len } => write!(f, "truncate {path} {len}"),
            Op::Edit {
                path,
                append,
                edits,
            } => {
                let e: Vec<String> = edits.iter().map(|e| e.to_string()).collect();
                let a = if *append { " (O_APPEND)" } else { "" };
                write!(f, "open {path}{a}, {}, close", e.join(", "))
            }
            Op::Mkdir { path, mode } => write!(f, "mkdir {path} {mode:04o}"),
            Op::Rmdir(p) => write!(f, "rmdir {p}"),
            Op::Unlink(p) => write!(f, "unlink {p}"),
            Op::Rename { from, to, flags } => {
                let fl = match *flags {
                    0 => "",
                    RENAME_NOREPLACE => " NOREPLACE",
                    RENAME_EXCHANGE => " EXCHANGE",
                    _ => " ?",
                };
                write!(f, "rename {from} {to}{fl}")
            }
            Op::Link { from, to } => write!(f, "link {from} {to}"),
            Op::Symlink { target, path } => write!(f, "symlink {target:?} at {path}"),
            Op::Chmod { path, mode } => write!(f, "chmod {mode:04o} {path}"),
            Op::SetMtime { path, sec, nsec } => write!(f, "set mtime of {path} to {sec}.{nsec:09}"),
            Op::SetXattr {
                path,
                name,
                len,
                seed,
                flags,
            } => {
                let fl = match *flags {
                    0 => "",
                    libc::XATTR_CREATE => " CREATE",
                    libc::XATTR_REPLACE => " REPLACE",
                    _ => " ?",
                };
                write!(f, "setxattr {path} {name} len {len} (seed {seed}){fl}")
            }
            Op::RemoveXattr { path, name } => write!(f, "removexattr {path} {name}"),
            Op::Hold { path, append } => {
                let a = if *append { " (O_APPEND)" } else { "" };
                write!(f, "open {path}{a} and hold it")
            }
            Op::Held(e) => write!(f, "held: {e}"),
            Op::CloseHeld => write!(f, "close the held file"),
            Op::Remount => write!(f, "remount"),
            Op::RestartMeta { kill: true } => write!(f, "metadata server: kill -9, start"),
            Op::RestartMeta { kill: false } => write!(f, "metadata server: stop, start"),
        }
    }
}

/// One step of [`Op::Edit`].
#[derive(Clone, Debug)]
enum Edit {
    Write {
        off: u64,
        len: u64,
        seed: u64,
    },
    Truncate(u64),
    /// pread from 0 to the end: its length and hash are part of the result.
    Read,
    Fsync,
}

impl fmt::Display for Edit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Edit::Write { off, len, seed } => write!(f, "write at {off} len {len} (seed {seed})"),
            Edit::Truncate(n) => write!(f, "ftruncate {n}"),
            Edit::Read => write!(f, "read all"),
            Edit::Fsync => write!(f, "fsync"),
        }
    }
}

/// A sequence of operations, shown one a line.
#[derive(Clone)]
struct Ops(Vec<Op>);

impl fmt::Debug for Ops {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, op) in self.0.iter().enumerate() {
            writeln!(f, "  {:>2}. {op}", i + 1)?;
        }
        Ok(())
    }
}

// --- strategies -----------------------------------------------------------------------------

/// Every case starts from this tree (after clearing the volume), so that most operations find
/// something to work on: folders `a`, `a/a`, `b`, files (across block boundaries), a hard link,
/// a symlink to a folder and an xattr.
fn base() -> Vec<Op> {
    let p = |s: &str| {
        P(s.split('/')
            .map(|n| NAMES.iter().position(|x| *x == n).expect("a name") as u8)
            .collect())
    };
    vec![
        Op::Mkdir {
            path: p("a"),
            mode: 0o755,
        },
        Op::Mkdir {
            path: p("a/a"),
            mode: 0o755,
        },
        Op::Mkdir {
            path: p("b"),
            mode: 0o755,
        },
        Op::Write {
            path: p("a/b"),
            off: 0,
            len: BLOCK + 40_000,
            seed: 1,
            fsync: false,
        },
        Op::Write {
            path: p("c"),
            off: 0,
            len: 5000,
            seed: 2,
            fsync: false,
        },
        Op::Write {
            path: p("b/a"),
            off: BLOCK - 500,
            len: 1000,
            seed: 3,
            fsync: false,
        },
        Op::Write {
            path: p("a/a/b"),
            off: 0,
            len: 100,
            seed: 5,
            fsync: false,
        },
        Op::Link {
            from: p("c"),
            to: p("b/c"),
        },
        Op::Symlink {
            target: "a",
            path: p("d"),
        },
        Op::SetXattr {
            path: p("c"),
            name: XATTRS[0],
            len: 10,
            seed: 4,
            flags: 0,
        },
    ]
}

/// Mostly shallow paths through the base tree's folders (`d` is a symlink to `a`), ending in
/// one of `last` (indexes into [`NAMES`], repeated to weigh them): on uniformly random paths
/// most operations would find nothing.
fn path_ending(last: Vec<u8>) -> impl Strategy<Value = P> {
    (
        prop_oneof![5 => Just(0usize), 4 => Just(1), 2 => Just(2), 1 => Just(3)],
        prop::collection::vec(prop::sample::select(vec![0u8, 0, 1, 3]), 3),
        prop::sample::select(last),
    )
        .prop_map(|(depth, mut v, last)| {
            v.truncate(depth);
            v.push(last);
            P(v)
        })
}

fn path() -> impl Strategy<Value = P> {
    path_ending(vec![0, 0, 1, 1, 2, 2, 3, 4, 5])
}

/// For operations on files: ends less often in the base tree's folders `a`, `b` and `d`.
fn file_path() -> impl Strategy<Value = P> {
    path_ending(vec![0, 1, 2, 2, 2, 4, 4, 5, 5])
}

/// Near the start, near a block boundary, or anywhere in the first 4 blocks.
fn offset() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => 0..4096u64,
        3 => (1..4u64, 0..8192u64).prop_map(|(k, d)| k * BLOCK - 4096 + d),
        1 => 0..4 * BLOCK,
    ]
}

fn size() -> impl Strategy<Value = u64> {
    prop_oneof![
        1 => Just(0u64),
        2 => 1..4096u64,
        2 => (1..5u64, 0..8192u64).prop_map(|(k, d)| k * BLOCK - 4096 + d),
        1 => 0..5 * BLOCK,
    ]
}

fn mode(modes: &[u32]) -> impl Strategy<Value = u32> {
    prop::sample::select(modes.to_vec())
}

fn write_len() -> impl Strategy<Value = u64> {
    prop_oneof![4 => 1..4096u64, 2 => 1..BLOCK + 8192]
}

/// One step of an [`Op::Edit`] or [`Op::Held`]; `writes: false` leaves writes out (even while
/// shrinking, which a zero weight would not).
fn edit(writes: bool) -> BoxedStrategy<Edit> {
    let others = prop_oneof![
        2 => size().prop_map(Edit::Truncate),
        2 => Just(Edit::Read),
        1 => Just(Edit::Fsync),
    ];
    if !writes {
        return others.boxed();
    }
    let write = (offset(), write_len(), 0..1000u64).prop_map(|(off, len, seed)| Edit::Write {
        off,
        len,
        seed,
    });
    prop_oneof![4 => write, 5 => others].boxed()
}

/// One operation. Remounts and restarts are slow (up to a second), so they are rare.
///
/// Writes through the held descriptor are on unless `CAIRN_MODEL_HELD_WRITES=0`. They found a
/// bug (fixed): a close of another descriptor committed the held one's writes while a stat was
/// under way, the stat answered with the server's size from before that commit, and the next
/// O_APPEND write landed on the previous one (see `fuse_data.rs`,
/// `append_survives_a_concurrent_close_and_stat`).
fn op(held_writes: bool) -> BoxedStrategy<Op> {
    let rename_flags = prop_oneof![
        6 => Just(0u32),
        1 => Just(RENAME_NOREPLACE),
        1 => Just(RENAME_EXCHANGE),
    ];
    let xattr_flags = prop_oneof![
        4 => Just(0),
        1 => Just(libc::XATTR_CREATE),
        1 => Just(libc::XATTR_REPLACE),
    ];
    let xattr_len = prop_oneof![1 => Just(0usize), 3 => 1..40usize, 1 => 100..1000usize];
    let name = prop::sample::select(XATTRS.to_vec());
    Union::new_weighted(vec![
        (
            6,
            (
                file_path(),
                any::<bool>(),
                any::<bool>(),
                mode(&[0o644, 0o600, 0o755]),
            )
                .prop_map(|(path, excl, trunc, mode)| Op::Create {
                    path,
                    excl,
                    trunc,
                    mode,
                })
                .boxed(),
        ),
        (
            9,
            (
                file_path(),
                offset(),
                write_len(),
                0..1000u64,
                prop::bool::weighted(0.2),
            )
                .prop_map(|(path, off, len, seed, fsync)| Op::Write {
                    path,
                    off,
                    len,
                    seed,
                    fsync,
                })
                .boxed(),
        ),
        (
            4,
            (file_path(), size())
                .prop_map(|(path, len)| Op::Truncate { path, len })
                .boxed(),
        ),
        (
            5,
            (
                file_path(),
                prop::bool::weighted(0.2),
                prop::collection::vec(edit(true), 1..6),
            )
                .prop_map(|(path, append, edits)| Op::Edit {
                    path,
                    append,
                    edits,
                })
                .boxed(),
        ),
        (
            6,
            (path(), mode(&[0o755, 0o700, 0o777]))
                .prop_map(|(path, mode)| Op::Mkdir { path, mode })
                .boxed(),
        ),
        (3, path().prop_map(Op::Rmdir).boxed()),
        (4, path().prop_map(Op::Unlink).boxed()),
        (
            6,
            (path(), path(), rename_flags)
                .prop_map(|(from, to, flags)| Op::Rename { from, to, flags })
                .boxed(),
        ),
        (
            3,
            (path(), path())
                .prop_map(|(from, to)| Op::Link { from, to })
                .boxed(),
        ),
        (
            2,
            (prop::sample::select(TARGETS.to_vec()), path())
                .prop_map(|(target, path)| Op::Symlink { target, path })
                .boxed(),
        ),
        (
            2,
            (
                path(),
                mode(&[0o644, 0o600, 0o755, 0o700, 0o000, 0o4755, 0o2755, 0o1777]),
            )
                .prop_map(|(path, mode)| Op::Chmod { path, mode })
                .boxed(),
        ),
        (
            2,
            (
                path(),
                0..1000i64,
                prop_oneof![Just(0i64), 0..1_000_000_000i64],
            )
                .prop_map(|(path, s, nsec)| Op::SetMtime {
                    path,
                    sec: 100_000_000 + s * 777_777,
                    nsec,
                })
                .boxed(),
        ),
        (
            3,
            (path(), name.clone(), xattr_len, 0..1000u64, xattr_flags)
                .prop_map(|(path, name, len, seed, flags)| Op::SetXattr {
                    path,
                    name,
                    len,
                    seed,
                    flags,
                })
                .boxed(),
        ),
        (
            2,
            (path(), name)
                .prop_map(|(path, name)| Op::RemoveXattr { path, name })
                .boxed(),
        ),
        (
            5,
            (file_path(), prop::bool::weighted(0.2))
                .prop_map(|(path, append)| Op::Hold { path, append })
                .boxed(),
        ),
        (6, edit(held_writes).prop_map(Op::Held).boxed()),
        (1, Just(Op::CloseHeld).boxed()),
        (1, Just(Op::Remount).boxed()),
        (
            1,
            any::<bool>()
                .prop_map(|kill| Op::RestartMeta { kill })
                .boxed(),
        ),
    ])
    .boxed()
}

// --- running an operation on a folder -------------------------------------------------------

/// Success, or the errno.
type Res = Result<(), i32>;

/// What an operation gave: what it read (empty for most), or the errno.
type Outcome = Result<String, i32>;

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn chk(rc: libc::c_int) -> Res {
    if rc == 0 {
        Ok(())
    } else {
        Err(last_errno())
    }
}

fn errno_name(e: i32) -> String {
    let name = match e {
        libc::ENOENT => "ENOENT",
        libc::EEXIST => "EEXIST",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::EINVAL => "EINVAL",
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        libc::ELOOP => "ELOOP",
        libc::ENODATA => "ENODATA",
        libc::EXDEV => "EXDEV",
        libc::EBUSY => "EBUSY",
        libc::EIO => "EIO",
        libc::ENOTSUP => "EOPNOTSUPP",
        libc::EMLINK => "EMLINK",
        libc::ERANGE => "ERANGE",
        libc::E2BIG => "E2BIG",
        libc::ESTALE => "ESTALE",
        libc::ENOTCONN => "ENOTCONN",
        libc::EBADF => "EBADF",
        _ => return format!("errno {e}"),
    };
    name.to_string()
}

fn show(r: &Outcome) -> String {
    match r {
        Ok(read) if read.is_empty() => "ok".into(),
        Ok(read) => format!("ok, read {read}"),
        Err(e) => errno_name(*e),
    }
}

fn pwrite_all(fd: libc::c_int, data: &[u8], off: u64) -> Res {
    let mut done = 0usize;
    while done < data.len() {
        // SAFETY: a buffer of its true length.
        let n = unsafe {
            libc::pwrite(
                fd,
                data[done..].as_ptr().cast(),
                data.len() - done,
                (off + done as u64) as libc::off_t,
            )
        };
        if n <= 0 {
            return Err(if n == 0 { libc::EIO } else { last_errno() });
        }
        done += n as usize;
    }
    Ok(())
}

fn pread_all(fd: libc::c_int) -> Result<Vec<u8>, i32> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 128 << 10];
    loop {
        // SAFETY: a buffer of its true length.
        let n = unsafe {
            libc::pread(
                fd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                out.len() as libc::off_t,
            )
        };
        if n < 0 {
            return Err(last_errno());
        }
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n as usize]);
    }
}

fn open_rw(file: &CString, append: bool) -> Result<libc::c_int, i32> {
    let mut flags = libc::O_RDWR | libc::O_CREAT | libc::O_CLOEXEC;
    if append {
        flags |= libc::O_APPEND;
    }
    // SAFETY: a NUL-terminated path.
    let fd = unsafe { libc::open(file.as_ptr(), flags, 0o644) };
    if fd < 0 {
        Err(last_errno())
    } else {
        Ok(fd)
    }
}

/// close(2); what a flush could not do shows here, so it counts.
fn close(fd: libc::c_int) -> Res {
    // SAFETY: fd is open and closed once.
    chk(unsafe { libc::close(fd) })
}

/// One [`Edit`] on an open descriptor; a read adds its length and hash to `reads`.
fn edit_fd(fd: libc::c_int, e: &Edit, reads: &mut Vec<String>) -> Res {
    match e {
        Edit::Write { off, len, seed } => pwrite_all(fd, &random_bytes(*seed, *len as usize), *off),
        // SAFETY: fd is open.
        Edit::Truncate(n) => chk(unsafe { libc::ftruncate(fd, *n as libc::off_t) }),
        Edit::Read => {
            let d = pread_all(fd)?;
            reads.push(format!("{} bytes {}", d.len(), &sha256_bytes(&d)[..12]));
            Ok(())
        }
        // SAFETY: fd is open.
        Edit::Fsync => chk(unsafe { libc::fsync(fd) }),
    }
}

/// One side of the comparison: a tree and the descriptor it holds for [`Op::Hold`].
struct Side {
    root: std::path::PathBuf,
    held: Option<libc::c_int>,
}

impl Drop for Side {
    fn drop(&mut self) {
        let _ = self.close_held();
    }
}

impl Side {
    fn close_held(&mut self) -> Res {
        self.held.take().map_or(Ok(()), close)
    }

    /// Runs one operation (remount and restart are the cluster's: see [`Model::step`]). Returns
    /// what it read (reads' lengths and hashes), or the first errno, close's included.
    fn apply(&mut self, op: &Op) -> Outcome {
        let root = self.root.clone();
        let at = |p: &P| cpath(&root.join(p.to_string()));
        let mut reads = Vec::new();
        let r = match op {
            Op::Edit {
                path,
                append,
                edits,
            } => open_rw(&at(path), *append).and_then(|fd| {
                let r = edits.iter().try_for_each(|e| edit_fd(fd, e, &mut reads));
                r.and(close(fd))
            }),
            Op::Hold { path, append } => {
                let closed = self.close_held();
                let opened = open_rw(&at(path), *append).map(|fd| self.held = Some(fd));
                closed.and(opened)
            }
            Op::Held(e) => match self.held {
                Some(fd) => edit_fd(fd, e, &mut reads),
                None => Err(libc::EBADF),
            },
            Op::CloseHeld => match self.held.take() {
                Some(fd) => close(fd),
                None => Err(libc::EBADF),
            },
            Op::Remount | Op::RestartMeta { .. } => self.close_held(),
            _ => apply_simple(&self.root, op),
        };
        r.map(|()| reads.join("; "))
    }
}

fn apply_simple(root: &Path, op: &Op) -> Res {
    let at = |p: &P| cpath(&root.join(p.to_string()));
    // SAFETY (every block below): plain syscalls on NUL-terminated paths and buffers that live
    // across the call, with their true lengths.
    match op {
        Op::Create {
            path,
            excl,
            trunc,
            mode,
        } => {
            let mut flags = libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC;
            if *excl {
                flags |= libc::O_EXCL;
            }
            if *trunc {
                flags |= libc::O_TRUNC;
            }
            let fd = unsafe { libc::open(at(path).as_ptr(), flags, *mode) };
            if fd < 0 {
                return Err(last_errno());
            }
            chk(unsafe { libc::close(fd) })
        }
        Op::Write {
            path,
            off,
            len,
            seed,
            fsync,
        } => {
            let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC;
            let fd = unsafe { libc::open(at(path).as_ptr(), flags, 0o644) };
            if fd < 0 {
                return Err(last_errno());
            }
            let mut r = pwrite_all(fd, &random_bytes(*seed, *len as usize), *off);
            if r.is_ok() && *fsync {
                r = chk(unsafe { libc::fsync(fd) });
            }
            // close reports what a flush could not do: it counts.
            let c = chk(unsafe { libc::close(fd) });
            r.and(c)
        }
        Op::Truncate { path, len } => {
            chk(unsafe { libc::truncate(at(path).as_ptr(), *len as libc::off_t) })
        }
        Op::Mkdir { path, mode } => chk(unsafe { libc::mkdir(at(path).as_ptr(), *mode) }),
        Op::Rmdir(path) => chk(unsafe { libc::rmdir(at(path).as_ptr()) }),
        Op::Unlink(path) => chk(unsafe { libc::unlink(at(path).as_ptr()) }),
        Op::Rename { from, to, flags } => renameat2(
            &root.join(from.to_string()),
            &root.join(to.to_string()),
            *flags,
        )
        .map_err(|e| errno(&e)),
        Op::Link { from, to } => chk(unsafe {
            libc::linkat(
                libc::AT_FDCWD,
                at(from).as_ptr(),
                libc::AT_FDCWD,
                at(to).as_ptr(),
                0,
            )
        }),
        Op::Symlink { target, path } => {
            let t = CString::new(*target).expect("target without NUL");
            chk(unsafe { libc::symlink(t.as_ptr(), at(path).as_ptr()) })
        }
        Op::Chmod { path, mode } => chk(unsafe { libc::chmod(at(path).as_ptr(), *mode) }),
        Op::SetMtime { path, sec, nsec } => {
            let times = [
                libc::timespec {
                    tv_sec: 0,
                    tv_nsec: libc::UTIME_OMIT,
                },
                libc::timespec {
                    tv_sec: *sec,
                    tv_nsec: *nsec,
                },
            ];
            chk(unsafe { libc::utimensat(libc::AT_FDCWD, at(path).as_ptr(), times.as_ptr(), 0) })
        }
        Op::SetXattr {
            path,
            name,
            len,
            seed,
            flags,
        } => {
            let v = random_bytes(*seed, *len);
            let n = CString::new(*name).expect("name");
            chk(unsafe {
                libc::setxattr(
                    at(path).as_ptr(),
                    n.as_ptr(),
                    v.as_ptr().cast(),
                    v.len(),
                    *flags,
                )
            })
        }
        Op::RemoveXattr { path, name } => {
            let n = CString::new(*name).expect("name");
            chk(unsafe { libc::removexattr(at(path).as_ptr(), n.as_ptr()) })
        }
        Op::Edit { .. }
        | Op::Hold { .. }
        | Op::Held(_)
        | Op::CloseHeld
        | Op::Remount
        | Op::RestartMeta { .. } => unreachable!("run by Side::apply"),
    }
}

// --- trees ----------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mtime {
    /// Set by the test with utimensat: must match to the nanosecond.
    Set(i64, i64),
    /// Set by the file system (above [`SET_MTIME_LIMIT`]).
    Recent,
}

/// What is compared of one name.
#[derive(Clone, PartialEq, Eq)]
struct Entry {
    kind: &'static str,
    mode: u32,
    owner: (u32, u32),
    nlink: u64,
    /// Files and symlinks only: directory sizes differ by design.
    size: Option<u64>,
    /// Files: SHA-256 of the contents, or the errno of reading them.
    data: Option<Result<String, i32>>,
    target: Option<Result<String, i32>>,
    mtime: Mtime,
    /// `user.` xattrs with the SHA-256 of their values.
    xattrs: Result<Vec<(String, String)>, i32>,
    /// Every name of the inode (non-directories), this one included.
    names: Vec<String>,
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} mode {:04o} owner {}:{} nlink {}",
            self.kind, self.mode, self.owner.0, self.owner.1, self.nlink
        )?;
        if let Some(s) = self.size {
            write!(f, " size {s}")?;
        }
        match &self.data {
            Some(Ok(h)) => write!(f, " data {}", &h[..12])?,
            Some(Err(e)) => write!(f, " data {}", errno_name(*e))?,
            None => {}
        }
        match &self.target {
            Some(Ok(t)) => write!(f, " -> {t:?}")?,
            Some(Err(e)) => write!(f, " -> {}", errno_name(*e))?,
            None => {}
        }
        match self.mtime {
            Mtime::Set(s, n) => write!(f, " mtime {s}.{n:09}")?,
            Mtime::Recent => write!(f, " mtime recent")?,
        }
        match &self.xattrs {
            Ok(x) if x.is_empty() => {}
            Ok(x) => {
                let shown: Vec<String> =
                    x.iter().map(|(n, h)| format!("{n}={}", &h[..8])).collect();
                write!(f, " xattrs [{}]", shown.join(" "))?
            }
            Err(e) => write!(f, " xattrs {}", errno_name(*e))?,
        }
        if self.names.len() > 1 {
            write!(f, " names {:?}", self.names)?;
        }
        Ok(())
    }
}

type Tree = BTreeMap<String, Entry>;

fn lxattrs(p: &Path) -> Result<Vec<(String, String)>, i32> {
    let c = cpath(p);
    let mut buf = vec![0u8; 64 << 10];
    // SAFETY: a buffer of its true length.
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(last_errno());
    }
    buf.truncate(n as usize);
    let mut out = Vec::new();
    for name in buf.split(|b| *b == 0).filter(|s| s.starts_with(b"user.")) {
        let cn = CString::new(name).expect("xattr name without NUL");
        let mut v = vec![0u8; 64 << 10];
        // SAFETY: as above.
        let got =
            unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        if got < 0 {
            return Err(last_errno());
        }
        v.truncate(got as usize);
        out.push((String::from_utf8_lossy(name).into_owned(), sha256_bytes(&v)));
    }
    out.sort();
    Ok(out)
}

/// Every name under `root` (and `.`, the root itself), without following symlinks.
fn snapshot(root: &Path) -> Result<Tree, String> {
    let mut tree = Tree::new();
    let mut inodes: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut todo = vec![".".to_string()];
    while let Some(rel) = todo.pop() {
        let p = if rel == "." {
            root.to_path_buf()
        } else {
            root.join(&rel)
        };
        let md = fs::symlink_metadata(&p).map_err(|e| format!("lstat {rel}: {e}"))?;
        let ft = md.file_type();
        let kind = if ft.is_file() {
            "file"
        } else if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else {
            "other"
        };
        let mut e = Entry {
            kind,
            mode: md.mode() & 0o7777,
            owner: (md.uid(), md.gid()),
            nlink: md.nlink(),
            size: (!ft.is_dir()).then_some(md.size()),
            data: None,
            target: None,
            mtime: if md.mtime() < SET_MTIME_LIMIT {
                Mtime::Set(md.mtime(), md.mtime_nsec())
            } else {
                Mtime::Recent
            },
            xattrs: lxattrs(&p),
            names: vec![],
        };
        if ft.is_file() {
            e.data = Some(
                fs::read(&p)
                    .map(|d| sha256_bytes(&d))
                    .map_err(|err| errno(&err)),
            );
        }
        if ft.is_symlink() {
            e.target = Some(
                fs::read_link(&p)
                    .map(|t| t.to_string_lossy().into_owned())
                    .map_err(|err| errno(&err)),
            );
        }
        if ft.is_dir() {
            let rd = fs::read_dir(&p).map_err(|err| format!("readdir {rel}: {err}"))?;
            for d in rd {
                let d = d.map_err(|err| format!("readdir {rel}: {err}"))?;
                let name = d.file_name().to_string_lossy().into_owned();
                todo.push(if rel == "." {
                    name
                } else {
                    format!("{rel}/{name}")
                });
            }
        } else {
            inodes.entry(md.ino()).or_default().push(rel.clone());
        }
        tree.insert(rel, e);
    }
    for names in inodes.values_mut() {
        names.sort();
        for n in names.iter() {
            tree.get_mut(n).expect("walked").names = names.clone();
        }
    }
    Ok(tree)
}

/// The first byte where two files differ, for the report (read again: it may have changed).
fn first_difference(a: &Path, b: &Path) -> String {
    match (fs::read(a), fs::read(b)) {
        (Ok(x), Ok(y)) if x == y => format!(
            "read again, both hold the same {} bytes: the difference did not last",
            x.len()
        ),
        (Ok(x), Ok(y)) => match x.iter().zip(&y).position(|(p, q)| p != q) {
            Some(i) => format!(
                "first differing byte at {i} (block {}, offset {} in it): local {:#04x}, \
                 cairn {:#04x}",
                i as u64 / BLOCK,
                i as u64 % BLOCK,
                x[i],
                y[i]
            ),
            None => format!(
                "one is a prefix of the other ({} vs {} bytes)",
                x.len(),
                y.len()
            ),
        },
        (x, y) => format!("read: local {:?}, cairn {:?}", x.err(), y.err()),
    }
}

/// Lines describing each difference between the reference and cairn.
fn diff(local: &Tree, cairn: &Tree, lroot: &Path, croot: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let keys: std::collections::BTreeSet<&String> = local.keys().chain(cairn.keys()).collect();
    for k in keys {
        match (local.get(k), cairn.get(k)) {
            (Some(l), None) => out.push(format!("{k}: only in the local folder: {l:?}")),
            (None, Some(c)) => out.push(format!("{k}: only on cairn: {c:?}")),
            (Some(l), Some(c)) if l != c => {
                let mut line = format!("{k}:\n      local: {l:?}\n      cairn: {c:?}");
                if l.kind == "file" && c.kind == "file" && l.data != c.data {
                    let rel = Path::new(k);
                    line += &format!(
                        "\n      {}",
                        first_difference(&lroot.join(rel), &croot.join(rel))
                    );
                }
                out.push(line);
            }
            _ => {}
        }
    }
    out
}

/// Removes everything under `root` and resets the root's mode, mtime and xattrs (a symlink to
/// `.` lets operations reach the root).
fn clear(root: &Path) -> Result<(), String> {
    for e in fs::read_dir(root).map_err(|e| format!("readdir {}: {e}", root.display()))? {
        let e = e.map_err(|e| format!("readdir {}: {e}", root.display()))?;
        let p = e.path();
        let is_dir = fs::symlink_metadata(&p)
            .map_err(|e| format!("lstat {}: {e}", p.display()))?
            .is_dir();
        let r = if is_dir {
            fs::remove_dir_all(&p)
        } else {
            fs::remove_file(&p)
        };
        r.map_err(|e| format!("remove {}: {e}", p.display()))?;
    }
    for name in XATTRS {
        match removexattr(root, name) {
            Ok(()) => {}
            Err(e) if errno(&e) == libc::ENODATA => {}
            Err(e) => return Err(format!("removexattr {name} of {}: {e}", root.display())),
        }
    }
    let c = cpath(root);
    // SAFETY: a NUL-terminated path; a null `times` means now.
    chk(unsafe { libc::chmod(c.as_ptr(), 0o755) })
        .and_then(|()| {
            chk(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), std::ptr::null(), 0) })
        })
        .map_err(|e| format!("reset the root {}: {}", root.display(), errno_name(e)))
}

// --- the model test ---------------------------------------------------------------------------

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// How the metadata server is run, and so what a kill -9 may lose.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Durability {
    /// `--sync`: every acknowledged operation survives kill -9.
    Sync,
    /// Grouped commits: only what an fsync covered survives, so a kill comes after an fsync of
    /// a directory (which makes the server fsync everything acknowledged so far).
    FsyncBeforeKill,
}

/// Fields drop in order: the held descriptors are closed before the mount stops.
struct Model {
    local: Side,
    cairn: Side,
    c: Cluster,
    /// Kept for its folder, removed on drop.
    _local_dir: TestDir,
    durability: Durability,
    /// `CAIRN_MODEL_VERBOSE=1`: print every step.
    verbose: bool,
}

impl Model {
    /// Makes sure the server runs and the mount is live, whatever an earlier case left.
    fn heal(&mut self) {
        let _ = self.local.close_held();
        let _ = self.cairn.close_held();
        if !self.c.meta_mut().is_running() {
            self.c.meta_mut().restart();
        }
        if !self.c.mount_mut().is_running() || !self.c.mount().is_mounted() {
            self.c.mount_mut().kill();
            self.c.mount_mut().restart();
        }
    }

    fn step(&mut self, op: &Op) -> Result<(Outcome, Outcome), String> {
        let local = self.local.apply(op);
        // Remount and restart close the held descriptor first: no descriptor of the mount may
        // stay open while the server is down and the harness forks.
        let cairn = self.cairn.apply(op);
        match op {
            Op::Remount => self.c.remount(),
            Op::RestartMeta { kill: false } => self.c.meta_mut().restart(),
            Op::RestartMeta { kill: true } => {
                if self.durability == Durability::FsyncBeforeKill {
                    // Closed before the kill, like every descriptor of the mount.
                    fs::File::open(self.c.path())
                        .and_then(|d| d.sync_all())
                        .map_err(|e| format!("fsync of the mount's root before the kill: {e}"))?;
                }
                self.c.meta_mut().kill();
                self.c.meta_mut().restart();
            }
            _ => {}
        }
        Ok((local, cairn))
    }

    /// Runs one case: every operation on both sides, comparing results and trees after each.
    fn run(&mut self, ops: &[Op]) -> Result<usize, String> {
        self.heal();
        clear(&self.local.root)?;
        clear(&self.cairn.root)?;
        self.run_steps(&base(), "base step")?;
        let r = self.run_steps(ops, "step");
        let (l, c) = (self.local.close_held(), self.cairn.close_held());
        let n = r?;
        if l != c {
            return Err(format!(
                "closing the held file at the end: the local folder gave {}, cairn gave {}",
                show(&l.map(|()| String::new())),
                show(&c.map(|()| String::new()))
            ));
        }
        Ok(n)
    }

    /// Returns how many operations succeeded.
    fn run_steps(&mut self, ops: &[Op], what: &str) -> Result<usize, String> {
        let mut succeeded = 0;
        for (i, op) in ops.iter().enumerate() {
            let n = format!("{what} {}", i + 1);
            let (l, c) = self.step(op)?;
            if self.verbose {
                eprintln!("  {n}. {op}: {} / {}", show(&l), show(&c));
            }
            succeeded += usize::from(l.is_ok());
            if l != c {
                return Err(format!(
                    "{n} `{op}`: the local folder gave {}, cairn gave {}",
                    show(&l),
                    show(&c)
                ));
            }
            let lt = snapshot(&self.local.root)
                .map_err(|e| format!("after {n} `{op}`: local folder: {e}"))?;
            let ct =
                snapshot(&self.cairn.root).map_err(|e| format!("after {n} `{op}`: cairn: {e}"))?;
            let d = diff(&lt, &ct, &self.local.root, &self.cairn.root);
            if !d.is_empty() {
                return Err(format!(
                    "after {n} `{op}` (both gave {}), the trees differ:\n    {}",
                    show(&l),
                    d.join("\n    ")
                ));
            }
        }
        Ok(succeeded)
    }
}

fn model_test(name: &str, store: StoreKind, durability: Durability) {
    if !require_fuse() {
        return;
    }
    let cases: u32 = env_or("CAIRN_MODEL_CASES", 16);
    let max_ops: usize = env_or("CAIRN_MODEL_OPS", 40);
    let case_secs: u64 = env_or("CAIRN_MODEL_SECS", 75);
    let shrink_secs: u32 = env_or("CAIRN_MODEL_SHRINK_SECS", 240);
    let seed = seed_from_env_or_time();
    eprintln!(
        "{name}: {cases} cases of up to {max_ops} operations, seed {seed} (replay with \
         CAIRN_TEST_SEED={seed})"
    );

    let mut meta_args = vec!["--block-size", "256KiB"];
    if durability == Durability::Sync {
        meta_args.push("--sync");
    }
    let builder = match store {
        StoreKind::S3 => Cluster::s3(bin()),
        StoreKind::LocalFolder => Cluster::local_folder(bin()),
    };
    // The umask is the process's: the same for both sides, and fixed so that modes are known.
    // SAFETY: umask has no preconditions.
    unsafe { libc::umask(0o022) };
    let c = builder
        .meta_args(&meta_args)
        .timeout(Duration::from_secs(
            case_secs + u64::from(shrink_secs) + 180,
        ))
        .start();
    let local_dir = test_dir(&format!("{name}-local"));
    let model = RefCell::new(Model {
        local: Side {
            root: local_dir.path().to_path_buf(),
            held: None,
        },
        cairn: Side {
            root: c.path().to_path_buf(),
            held: None,
        },
        c,
        _local_dir: local_dir,
        durability,
        verbose: std::env::var("CAIRN_MODEL_VERBOSE").is_ok_and(|v| v == "1"),
    });

    let config = Config {
        cases,
        failure_persistence: None,
        max_shrink_time: shrink_secs * 1000,
        max_shrink_iters: 2000,
        rng_seed: RngSeed::Fixed(seed),
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let held_writes = std::env::var("CAIRN_MODEL_HELD_WRITES").map_or(true, |v| v != "0");
    let strategy = prop::collection::vec(op(held_writes), 1..=max_ops.max(1)).prop_map(Ops);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(case_secs);
    let (ran, skipped, failed) = (Cell::new(0u32), Cell::new(0u32), Cell::new(false));
    // Runs of each candidate while shrinking: more than 1 when the failure is intermittent.
    let (tries, flaky) = (Cell::new(1u32), RefCell::new(String::new()));
    let run_once = |ops: &Ops| -> Result<usize, String> {
        let t = Instant::now();
        // A panic (of the harness, say) is a failure like any other.
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            model.borrow_mut().run(&ops.0)
        }))
        .unwrap_or_else(|p| {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(format!("panicked: {msg}"))
        });
        ran.set(ran.get() + 1);
        let took = t.elapsed().as_secs_f64();
        match &r {
            Ok(succeeded) if !failed.get() => eprintln!(
                "{name}: case {} ({} ops, {succeeded} succeeded) ok in {took:.1} s",
                ran.get(),
                ops.0.len()
            ),
            Ok(_) => {}
            Err(why) => eprintln!(
                "{name}: run {} ({} ops) FAILED in {took:.1} s: {}",
                ran.get(),
                ops.0.len(),
                why.lines().next().unwrap_or("")
            ),
        }
        r
    };
    let result = runner.run(&strategy, |ops| {
        // Out of time: the remaining cases pass unrun, but never while shrinking a failure.
        if !failed.get() && Instant::now() > deadline {
            skipped.set(skipped.get() + 1);
            return Ok(());
        }
        let mut r = run_once(&ops);
        for _ in 1..tries.get() {
            if r.is_err() {
                break;
            }
            r = run_once(&ops);
        }
        let Err(why) = r else { return Ok(()) };
        if !failed.get() {
            // First failure: shrinking needs to know whether it comes back every time.
            failed.set(true);
            const RERUNS: u32 = 3;
            let again = (0..RERUNS).filter(|_| run_once(&ops).is_err()).count();
            if again < RERUNS as usize {
                tries.set(4);
                *flaky.borrow_mut() = format!(
                    "The failure is intermittent: the first failing sequence failed again in \
                     {again} of {RERUNS} reruns, so each shrinking candidate ran up to 4 times; \
                     the sequence may not be minimal.\n"
                );
                eprintln!("{name}: {}", flaky.borrow().trim_end());
            }
        }
        Err(TestCaseError::fail(why))
    });
    let total = start.elapsed().as_secs_f64();
    match result {
        Ok(()) => {
            eprintln!(
                "{name}: {} cases passed in {total:.0} s{}",
                ran.get(),
                if skipped.get() > 0 {
                    format!(
                        " ({} more skipped: out of the {case_secs} s of CAIRN_MODEL_SECS)",
                        skipped.get()
                    )
                } else {
                    String::new()
                }
            );
            model.borrow().c.assert_no_panics();
        }
        Err(TestError::Fail(why, ops)) => panic!(
            "{name}: cairn and the local folder disagree (seed {seed}, {} runs, {total:.0} s).\n\
             Base steps, run first in every case:\n{}\n\
             Minimal failing sequence ({} steps):\n{ops:?}\n\
             {}Failure:\n  {why}",
            ran.get(),
            base()
                .iter()
                .map(|op| format!("   - {op}"))
                .collect::<Vec<_>>()
                .join("\n"),
            ops.0.len(),
            flaky.borrow(),
        ),
        Err(e) => panic!("{name}: proptest gave up: {e}"),
    }
}

/// Over S3 with `--sync`: the metadata server may be stopped or killed at any step.
#[test]
fn model_s3_sync() {
    model_test("model_s3_sync", StoreKind::S3, Durability::Sync);
}

/// Over a local-folder store with grouped commits: kills come right after an fsync.
#[test]
fn model_local_folder_grouped_commits() {
    model_test(
        "model_local_folder_grouped_commits",
        StoreKind::LocalFolder,
        Durability::FsyncBeforeKill,
    );
}
