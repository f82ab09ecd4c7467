//! Wire types and framing shared by the cairn mount client and the metadata server.
//!
//! This crate is the contract between the two sides of the metadata path. It holds:
//! - the attribute, directory-entry and block-map types the metadata server produces
//!   (the FUSE adapter converts [`Attr`] to the kernel's type; nothing else does);
//! - the [`Request`] / [`Reply`] messages and the stable [`ErrorCode`]s that cross the wire;
//! - the framing ([`frame`]): length-prefixed, request-id multiplexed, bincode-encoded frames.
//!
//! Invariants: every type here is versioned by [`PROTOCOL_VERSION`]; a change that an older peer
//! cannot decode bumps it. Decoders never panic on hostile bytes: lengths are bounded by
//! [`frame::MAX_FRAME_LEN`] before anything is allocated.

pub mod frame;

use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Version of the metadata RPC protocol; exchanged in [`Request::Hello`].
pub const PROTOCOL_VERSION: u32 = 5;

/// Inode number. 1 is the root directory of a volume.
pub type Ino = u64;

/// The root directory's inode number, as the kernel expects.
pub const ROOT_INO: Ino = 1;

/// Longest file name accepted, in bytes (as on Linux).
pub const NAME_MAX: usize = 255;

/// Longest symlink target and xattr value accepted, in bytes.
pub const PATH_MAX: usize = 4096;

/// Largest xattr value accepted, in bytes (the Linux VFS limit).
pub const XATTR_VALUE_MAX: usize = 65536;

/// A point in time with nanosecond precision, as stored and sent.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default,
)]
pub struct Timestamp {
    /// Seconds since the Unix epoch (negative before it).
    pub secs: i64,
    /// Nanoseconds within the second, below 1e9.
    pub nanos: u32,
}

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Self {
        Self::from(SystemTime::now())
    }

    /// The next representable instant: one nanosecond later.
    pub fn next(self) -> Self {
        if self.nanos >= 999_999_999 {
            Timestamp {
                secs: self.secs + 1,
                nanos: 0,
            }
        } else {
            Timestamp {
                secs: self.secs,
                nanos: self.nanos + 1,
            }
        }
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp {
                secs: d.as_secs() as i64,
                nanos: d.subsec_nanos(),
            },
            Err(e) => {
                let d = e.duration();
                let (mut secs, mut nanos) = (-(d.as_secs() as i64), d.subsec_nanos());
                if nanos > 0 {
                    secs -= 1;
                    nanos = 1_000_000_000 - nanos;
                }
                Timestamp { secs, nanos }
            }
        }
    }
}

impl From<Timestamp> for SystemTime {
    fn from(t: Timestamp) -> Self {
        if t.secs >= 0 {
            UNIX_EPOCH + Duration::new(t.secs as u64, t.nanos.min(999_999_999))
        } else {
            UNIX_EPOCH - Duration::from_secs(t.secs.unsigned_abs())
                + Duration::from_nanos(u64::from(t.nanos.min(999_999_999)))
        }
    }
}

/// Kind of an inode.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// Regular file: contents live in object storage as blocks.
    File,
    /// Directory.
    Dir,
    /// Symbolic link: the target lives in the inode record.
    Symlink,
    /// Named pipe.
    Fifo,
    /// Character device node.
    CharDev,
    /// Block device node.
    BlockDev,
    /// Unix domain socket node.
    Socket,
}

impl FileKind {
    /// The `S_IFMT` bits of this kind.
    pub fn mode_bits(self) -> u32 {
        match self {
            FileKind::File => 0o100000,
            FileKind::Dir => 0o040000,
            FileKind::Symlink => 0o120000,
            FileKind::Fifo => 0o010000,
            FileKind::CharDev => 0o020000,
            FileKind::BlockDev => 0o060000,
            FileKind::Socket => 0o140000,
        }
    }

    /// The kind named by the `S_IFMT` bits of `mode`, if any.
    pub fn from_mode(mode: u32) -> Option<FileKind> {
        Some(match mode & 0o170000 {
            0o100000 | 0 => FileKind::File,
            0o040000 => FileKind::Dir,
            0o120000 => FileKind::Symlink,
            0o010000 => FileKind::Fifo,
            0o020000 => FileKind::CharDev,
            0o060000 => FileKind::BlockDev,
            0o140000 => FileKind::Socket,
            _ => return None,
        })
    }
}

/// Attributes of an inode, as the metadata server holds them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    /// Inode number.
    pub ino: Ino,
    /// Kind of inode.
    pub kind: FileKind,
    /// Permission bits including setuid, setgid and sticky (`mode & 0o7777`).
    pub perm: u32,
    /// Number of hard links (directories: 2 + subdirectories).
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device number for device nodes.
    pub rdev: u32,
    /// Size in bytes (symlinks: length of the target).
    pub size: u64,
    /// Last access.
    pub atime: Timestamp,
    /// Last modification of contents.
    pub mtime: Timestamp,
    /// Last change of attributes or contents.
    pub ctime: Timestamp,
    /// Creation.
    pub crtime: Timestamp,
    /// Generation: together with `ino`, names an inode uniquely over the volume's life.
    pub generation: u64,
}

/// Who asks: the credentials of the process behind a FUSE request.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Caller {
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
    /// Process id, for logs and lock ownership.
    pub pid: u32,
    /// The process's umask, applied by the server on create unless the parent directory has a
    /// default ACL (which replaces it).
    pub umask: u32,
}

/// A time to set: a given instant, or the server's clock.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeSet {
    /// The server's current time.
    Now,
    /// This exact instant.
    At(Timestamp),
}

/// Attributes to change in one setattr; `None` leaves a field alone.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct SetAttr {
    /// New permission bits (`& 0o7777`).
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size (truncate or extend with a hole).
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<TimeSet>,
    /// New modification time.
    pub mtime: Option<TimeSet>,
    /// New change time (only the kernel's writeback path sets this).
    pub ctime: Option<Timestamp>,
}

/// One entry of a directory listing.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// Name within the directory (bytes: names need not be UTF-8).
    pub name: Vec<u8>,
    /// Inode the entry points at.
    pub ino: Ino,
    /// Kind of that inode.
    pub kind: FileKind,
    /// Stable cursor: listing again from this cookie resumes after this entry, whatever was
    /// added or removed meanwhile. Never 0 (0 means "from the start").
    pub cookie: u64,
    /// Attributes, when asked for (`plus`).
    pub attr: Option<Attr>,
}

/// One block of a file in the block map: which object holds the bytes of block `index`.
///
/// The object key is derived from (volume, inode, index, version) by `cairn-blocks`; the
/// metadata server never touches object storage and only stores these references.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockRef {
    /// Block index within the file (byte offset / block size).
    pub index: u64,
    /// Unique version of this block's object; a rewrite of the block gets a new version.
    pub version: u64,
    /// Bytes of the block that belong to the file, from its start. Bytes of the object past
    /// `len` are not file data (a truncate shortens `len` without rewriting the object), and
    /// reads past the object's end up to the file size are zeros.
    pub len: u32,
}

/// Filesystem statistics for statfs.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct StatFs {
    /// Bytes used by file data (logical).
    pub used_bytes: u64,
    /// Number of inodes in use.
    pub used_inodes: u64,
    /// Byte capacity reported to `df` (a quota, or a large nominal size).
    pub total_bytes: u64,
    /// Inode capacity reported to `df`.
    pub total_inodes: u64,
}

/// Volume settings the client needs to move blocks, sent at session start.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct VolumeInfo {
    /// Volume name; part of every block key.
    pub name: String,
    /// Block size in bytes (256 KiB to 8 MiB), fixed at creation.
    pub block_size: u32,
    /// Compression for new blocks: "zstd", "zstd:LEVEL", "lz4" or "none".
    pub compression: String,
    /// Blocks are encrypted on the clients (AES-256-GCM); every mount needs the key.
    pub encrypted: bool,
}

/// Flags of an xattr set, as in setxattr(2).
pub mod xattr_flags {
    /// Fail if the attribute exists.
    pub const CREATE: u32 = 1;
    /// Fail if the attribute does not exist.
    pub const REPLACE: u32 = 2;
}

/// Flags of a rename, as in renameat2(2).
pub mod rename_flags {
    /// Fail with `Exists` if the target exists.
    pub const NOREPLACE: u32 = 1;
    /// Swap source and target atomically; both must exist.
    pub const EXCHANGE: u32 = 2;
}

/// A request from a mount client to the metadata server.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Open or resume a client session. Must be the first request on a connection.
    Hello {
        /// The client's [`PROTOCOL_VERSION`].
        protocol: u32,
        /// Volume to serve.
        volume: String,
        /// Session to resume after a reconnect; `None` opens a new one.
        session: Option<u64>,
        /// Host name and mount point, for the operator's session list.
        client: String,
        /// Attach one more connection to `session` (a mount's thread lane): never opens a new
        /// session; a session the server does not know is refused with `Stale`.
        attach: bool,
    },
    /// Find `name` in directory `parent`.
    Lookup { parent: Ino, name: Vec<u8> },
    /// Attributes of an inode.
    GetAttr { ino: Ino },
    /// Change attributes.
    SetAttr {
        ino: Ino,
        set: SetAttr,
        caller: Caller,
    },
    /// Create a regular file, fifo, socket or device node; `open` also opens it for the session.
    Mknod {
        parent: Ino,
        name: Vec<u8>,
        kind: FileKind,
        perm: u32,
        rdev: u32,
        caller: Caller,
        open: bool,
    },
    /// Create a directory.
    Mkdir {
        parent: Ino,
        name: Vec<u8>,
        perm: u32,
        caller: Caller,
    },
    /// Remove a non-directory entry.
    Unlink {
        parent: Ino,
        name: Vec<u8>,
        caller: Caller,
    },
    /// Remove an empty directory.
    Rmdir {
        parent: Ino,
        name: Vec<u8>,
        caller: Caller,
    },
    /// Rename, with [`rename_flags`].
    Rename {
        parent: Ino,
        name: Vec<u8>,
        new_parent: Ino,
        new_name: Vec<u8>,
        flags: u32,
        caller: Caller,
    },
    /// New hard link to `ino`.
    Link {
        ino: Ino,
        new_parent: Ino,
        new_name: Vec<u8>,
        caller: Caller,
    },
    /// New symlink.
    Symlink {
        parent: Ino,
        name: Vec<u8>,
        target: Vec<u8>,
        caller: Caller,
    },
    /// Target of a symlink.
    ReadLink { ino: Ino },
    /// Up to `limit` entries of a directory after `cookie` (0: from the start).
    ReadDir {
        ino: Ino,
        cookie: u64,
        limit: u32,
        plus: bool,
    },
    /// Filesystem statistics.
    StatFs,
    /// Set an xattr, with [`xattr_flags`].
    SetXattr {
        ino: Ino,
        name: Vec<u8>,
        value: Vec<u8>,
        flags: u32,
    },
    /// Value of an xattr.
    GetXattr { ino: Ino, name: Vec<u8> },
    /// Names of all xattrs.
    ListXattr { ino: Ino },
    /// Remove an xattr.
    RemoveXattr { ino: Ino, name: Vec<u8> },
    /// Note that the session holds the inode open (keeps an unlinked inode alive).
    Open { ino: Ino },
    /// Drop one open by the session of each inode listed (an inode listed twice, two); the last
    /// open of an unlinked inode frees it. Many closes in one request: a mount sends them
    /// together a few milliseconds after they happen.
    Release { inos: Vec<Ino> },
    /// Block map entries with `first <= index < first + count`.
    GetBlocks { ino: Ino, first: u64, count: u64 },
    /// Commit blocks already durable in object storage, and grow the file to at least `size`.
    CommitWrite {
        ino: Ino,
        blocks: Vec<BlockRef>,
        size: u64,
        mtime: Timestamp,
    },
    /// Keep the session alive; a session not heard from for the expiry time is ended and its
    /// locks and opens released.
    Heartbeat,
    /// The mount is going away: end its session now (release its locks and opens) rather than
    /// at expiry.
    EndSession,
    /// Take, change or drop a lock without waiting (`WouldBlock` if another owner holds a
    /// conflicting one; the client polls for F_SETLKW).
    SetLock {
        ino: Ino,
        lock: LockSpec,
        /// The caller will wait (F_SETLKW) if the lock is taken: the server records whom it
        /// waits for, to detect deadlocks.
        wait: bool,
    },
    /// The first lock of another owner that conflicts with `lock`, if any (F_GETLK).
    GetLock { ino: Ino, lock: LockSpec },
    /// Write a consistent copy of the database to `to` on the server's host (online backup).
    Backup { to: String },
    /// Make every change acknowledged so far durable (fsync), also on a server without `--sync`.
    Sync,
}

/// Kind of a file lock.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockType {
    /// Shared.
    Read,
    /// Exclusive.
    Write,
    /// Release.
    Unlock,
}

/// A byte-range lock request or a lock held, as fcntl and flock describe them.
///
/// flock locks arrive as whole-file locks owned by the open file description; they share one
/// space with fcntl locks, so the two kinds conflict with each other (as on NFS).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockSpec {
    /// Lock owner within the session (the kernel's owner id).
    pub owner: u64,
    /// First byte.
    pub start: u64,
    /// Last byte, inclusive (`u64::MAX`: to the end of the file, whatever its size).
    pub end: u64,
    /// Read, write or unlock.
    pub typ: LockType,
    /// Process that asked (reported by F_GETLK).
    pub pid: u32,
}

impl Request {
    /// Whether the request changes state (and so carries a session sequence number that makes
    /// a retry exactly-once).
    pub fn is_mutation(&self) -> bool {
        !matches!(
            self,
            Request::Hello { .. }
                | Request::Lookup { .. }
                | Request::GetAttr { .. }
                | Request::ReadLink { .. }
                | Request::ReadDir { .. }
                | Request::StatFs
                | Request::GetXattr { .. }
                | Request::ListXattr { .. }
                | Request::GetBlocks { .. }
                | Request::Heartbeat
                | Request::EndSession
                | Request::GetLock { .. }
                | Request::Backup { .. }
                | Request::Sync
        )
    }

    /// Short stable name, for logs and metric labels.
    pub fn op_name(&self) -> &'static str {
        match self {
            Request::Hello { .. } => "hello",
            Request::Lookup { .. } => "lookup",
            Request::GetAttr { .. } => "getattr",
            Request::SetAttr { .. } => "setattr",
            Request::Mknod { .. } => "mknod",
            Request::Mkdir { .. } => "mkdir",
            Request::Unlink { .. } => "unlink",
            Request::Rmdir { .. } => "rmdir",
            Request::Rename { .. } => "rename",
            Request::Link { .. } => "link",
            Request::Symlink { .. } => "symlink",
            Request::ReadLink { .. } => "readlink",
            Request::ReadDir { .. } => "readdir",
            Request::StatFs => "statfs",
            Request::SetXattr { .. } => "setxattr",
            Request::GetXattr { .. } => "getxattr",
            Request::ListXattr { .. } => "listxattr",
            Request::RemoveXattr { .. } => "removexattr",
            Request::Open { .. } => "open",
            Request::Release { .. } => "release",
            Request::GetBlocks { .. } => "getblocks",
            Request::CommitWrite { .. } => "commitwrite",
            Request::Heartbeat => "heartbeat",
            Request::EndSession => "end_session",
            Request::SetLock { .. } => "setlock",
            Request::GetLock { .. } => "getlock",
            Request::Backup { .. } => "backup",
            Request::Sync => "sync",
        }
    }
}

/// A request as sent: the session and sequence number make mutations exactly-once.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// Client session (0 before Hello).
    pub session: u64,
    /// Per-session sequence number of a mutation, increasing; 0 for reads.
    pub seq: u64,
    /// Every mutation with a sequence number up to this one has been answered: the server may
    /// forget their outcomes.
    pub acked: u64,
    /// The request.
    pub request: Request,
}

/// The lowest cookie of a directory entry: a listing from any cookie below it (the FUSE
/// adapter keeps 1 and 2 for "." and "..") starts at the beginning.
pub const FIRST_COOKIE: u64 = 3;

/// A directory as one change left it, and its ctime just before the change. The server moves a
/// directory's ctime forward with every change of its entries, so a mount that knew the
/// directory's entries at ctime `was` knows them still, with this change applied; if it knew
/// another ctime, someone else changed the directory in between.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DirChange {
    /// The directory's attributes after the change.
    pub attr: Attr,
    /// Its ctime before the change.
    pub was: Timestamp,
}

/// A successful answer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Session opened or resumed; the client heartbeats every `heartbeat_ms`.
    Hello {
        session: u64,
        volume: VolumeInfo,
        heartbeat_ms: u64,
        /// Every change this server acknowledges is on disk already (`--sync`): a client's
        /// fsync needs no [`Request::Sync`] after its commit.
        synced: bool,
    },
    /// Attributes of the inode a request found, changed or created.
    Attr(Attr),
    /// A new directory entry (create, mkdir, symlink, link): the inode's attributes and those
    /// of the directory it is in, changed by it.
    Entry { attr: Attr, dir: DirChange },
    /// A removal or rename: the directories it changed.
    Dirs(Vec<DirChange>),
    /// Nothing to return.
    Empty,
    /// Bytes: symlink target or xattr value.
    Data(Vec<u8>),
    /// xattr names.
    Names(Vec<Vec<u8>>),
    /// Directory entries, whether the listing is complete, and the directory's ctime as of
    /// these entries (see [`DirChange`]).
    Dir {
        entries: Vec<DirEntry>,
        eof: bool,
        ctime: Timestamp,
    },
    /// Filesystem statistics.
    StatFs(StatFs),
    /// Block map entries, ordered by index; missing indices are holes. `size` is the file size.
    Blocks { blocks: Vec<BlockRef>, size: u64 },
    /// A conflicting lock (owner and all), or none.
    Lock(Option<LockSpec>),
    /// A backup was written: what it holds.
    Backup {
        inodes: u64,
        entries: u64,
        blocks: u64,
    },
}

/// Why a request failed: stable codes, mapped to errno by the FUSE adapter alone.
/// Not `non_exhaustive` on purpose: the errno mapping in the FUSE adapter is one exhaustive
/// match, so a new code forces a decision there.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// No such entry or inode (ENOENT).
    NotFound,
    /// Entry exists (EEXIST).
    Exists,
    /// A path component is not a directory (ENOTDIR).
    NotDir,
    /// Is a directory (EISDIR).
    IsDir,
    /// Directory not empty (ENOTEMPTY).
    NotEmpty,
    /// Permission bits forbid it (EACCES).
    AccessDenied,
    /// Only the owner or root may do it (EPERM).
    NotPermitted,
    /// Malformed or out-of-range argument (EINVAL).
    Invalid,
    /// Name longer than [`NAME_MAX`] (ENAMETOOLONG).
    NameTooLong,
    /// No such xattr (ENODATA).
    NoXattr,
    /// Value too large (E2BIG / ERANGE).
    TooBig,
    /// Too many hard links (EMLINK).
    TooManyLinks,
    /// Quota or space exhausted (ENOSPC).
    NoSpace,
    /// Inode handle no longer valid (ESTALE).
    Stale,
    /// Read-only volume or mount (EROFS).
    ReadOnly,
    /// Operation not supported (EOPNOTSUPP).
    Unsupported,
    /// Server-side storage failure (EIO).
    Io,
    /// Protocol misuse or a bug (EIO).
    Internal,
    /// Server unreachable for longer than the client's patience (EIO after retries).
    Unavailable,
    /// A conflicting lock is held (EAGAIN).
    WouldBlock,
    /// Waiting for this lock would close a cycle of waiting owners (EDEADLK).
    Deadlock,
    /// The caller was interrupted by a signal while it waited (EINTR).
    Interrupted,
    /// The session a mutation names has ended (expired, or ended by its mount): nothing was
    /// applied. The client opens a new session and sends the change again.
    SessionEnded,
}

/// A failed request: stable code plus a human message.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct RpcError {
    /// Stable code.
    pub code: ErrorCode,
    /// What happened, for logs.
    pub message: String,
}

impl RpcError {
    /// An error with a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
        }
    }
}

impl From<ErrorCode> for RpcError {
    fn from(code: ErrorCode) -> Self {
        RpcError {
            code,
            message: String::new(),
        }
    }
}

/// What the server sends back for a request.
pub type Response = Result<Reply, RpcError>;
