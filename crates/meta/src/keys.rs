//! Every key and record of the metadata store, in one place.
//!
//! Integers in keys are big-endian so that byte order is numeric order; names are raw bytes.
//!
//! | table        | key                                   | value                        |
//! |--------------|---------------------------------------|------------------------------|
//! | `Super`      | `b"volume"`                           | [`VolumeRecord`]             |
//! | `Super`      | `b"next_ino"`, `b"next_session"`      | u64 BE                       |
//! | `Super`      | `b"usage"`                            | [`Usage`]                    |
//! | `Super`      | `b"redo_checkpoint"`                  | u64 BE                       |
//! | `Inodes`     | ino u64                               | [`InodeRecord`]              |
//! | `Dentries`   | parent u64 · name                     | [`DentryRecord`]             |
//! | `DirCookies` | parent u64 · cookie u64               | name                         |
//! | `Xattrs`     | ino u64 · name                        | value                        |
//! | `Blocks`     | ino u64 · index u64                   | [`BlockRecord`]              |
//! | `Garbage`    | nanos u64 · ino u64 · index u64 · version u64 | empty                |
//! | `Opens`      | ino u64 · session u64                 | count u32 BE                 |
//! | `Orphans`    | ino u64                               | empty                        |
//! | `Sessions`   | session u64                           | [`SessionRecord`]            |
//! | `History`    | table u8 · record key · nanos u64     | value before the change      |
//! | `Outcomes`   | session u64 · seq u64                 | bincode `Response`           |
//! | `SessionOpens` | session u64 · ino u64               | empty                        |
//! | `Locks`      | ino u64 · session u64 · owner u64 · start u64 | [`LockRecord`]       |
//! | `SessionLocks` | session u64 · ino u64               | empty                        |
//!
//! Why this shape:
//! - A directory's entries and its cookies are contiguous under the parent's prefix, so lookup is
//!   one get and readdir one range scan. Cookies are allocated from the directory's inode record
//!   and never reused, so a listing resumed at a cookie neither skips nor repeats entries while
//!   the directory changes.
//! - A file's block map is contiguous under its inode, so a read of a range of blocks is one scan,
//!   and a truncate deletes one range.
//! - `Garbage` is ordered by the time a block object was superseded: the reconciler deletes a
//!   prefix of it once the volume's retention has passed, and the time-travel view needs every
//!   object newer than its instant to still exist.
//! - `Outcomes` holds the answer to each mutation in the transaction that made it, so a retried
//!   request (same session and sequence number) gets the stored answer instead of running
//!   twice. Clients report the sequence below which every answer arrived; older outcomes go.
//! - `SessionOpens` and `SessionLocks` index by session what `Opens` and `Locks` index by inode,
//!   so that ending a session releases everything it held without a full scan.
//! - `History` (time travel, a later capability) keeps the value a record had before each change,
//!   keyed by the record's own table and key and then the time, so the state at T is the first
//!   history entry after T, or the current record when there is none.

use cairn_proto::{Attr, BlockRef, FileKind, Ino, Timestamp, VolumeInfo};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Key of the volume record in `Super`.
pub const VOLUME: &[u8] = b"volume";
/// Key of the inode counter in `Super`.
pub const NEXT_INO: &[u8] = b"next_ino";
/// Key of the session counter in `Super`.
pub const NEXT_SESSION: &[u8] = b"next_session";
/// Key of the usage counters in `Super`.
pub const USAGE: &[u8] = b"usage";
/// Key in `Super` of the last redo log record the database holds (u64 BE), written by each
/// checkpoint.
pub const REDO_CHECKPOINT: &[u8] = b"redo_checkpoint";

/// The volume this store holds.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct VolumeRecord {
    /// Settings sent to clients.
    pub info: VolumeInfo,
    /// Layout version of this store, for migrations.
    pub layout: u32,
}

/// Current layout version of the store.
pub const LAYOUT_VERSION: u32 = 1;

/// Space and inodes in use, kept exact in every transaction that changes them.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Inodes that exist (linked or orphaned).
    pub inodes: u64,
    /// Sum of regular file sizes.
    pub bytes: u64,
}

/// An inode: attributes plus what only some kinds have.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct InodeRecord {
    /// Kind.
    pub kind: FileKind,
    /// Permission bits.
    pub perm: u32,
    /// Hard links.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device number.
    pub rdev: u32,
    /// Size in bytes.
    pub size: u64,
    /// Access time.
    pub atime: Timestamp,
    /// Modification time.
    pub mtime: Timestamp,
    /// Change time.
    pub ctime: Timestamp,
    /// Creation time.
    pub crtime: Timestamp,
    /// Symlink target.
    pub target: Option<Vec<u8>>,
    /// Directories: the parent (for `..` and the rename ancestry check).
    pub parent: Ino,
    /// Directories: next readdir cookie to hand out.
    pub next_cookie: u64,
}

impl InodeRecord {
    /// The wire attributes of this inode.
    pub fn attr(&self, ino: Ino) -> Attr {
        Attr {
            ino,
            kind: self.kind,
            perm: self.perm,
            nlink: self.nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: self.rdev,
            size: self.size,
            atime: self.atime,
            mtime: self.mtime,
            ctime: self.ctime,
            crtime: self.crtime,
            generation: 1,
        }
    }
}

/// A directory entry.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct DentryRecord {
    /// Inode it names.
    pub ino: Ino,
    /// Kind of that inode (for readdir without a second lookup).
    pub kind: FileKind,
    /// Its readdir cookie.
    pub cookie: u64,
}

/// One block map entry.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockRecord {
    /// Object version.
    pub version: u64,
    /// File bytes in the block.
    pub len: u32,
}

impl BlockRecord {
    /// The wire form for block `index`.
    pub fn to_ref(self, index: u64) -> BlockRef {
        BlockRef {
            index,
            version: self.version,
            len: self.len,
        }
    }
}

/// A client session.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SessionRecord {
    /// Host and mount point, as the client said.
    pub client: String,
    /// When it was opened.
    pub opened: Timestamp,
}

/// A file lock held by (session, owner) over `start..=end`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockRecord {
    /// Last byte, inclusive.
    pub end: u64,
    /// Exclusive or shared.
    pub write: bool,
    /// Process that took it.
    pub pid: u32,
}

/// Encode a record (bincode, fixed-width integers).
pub fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    bincode::serialize(v).expect("in-memory records always serialize")
}

/// Decode a record; a torn or foreign value is an error, never a panic.
pub fn dec<T: DeserializeOwned>(b: &[u8]) -> Result<T, crate::store::StoreError> {
    bincode::deserialize(b).map_err(|e| crate::store::StoreError(format!("corrupt record: {e}")))
}

/// `a · b` as a key.
pub fn k2(a: u64, b: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + b.len());
    k.extend_from_slice(&a.to_be_bytes());
    k.extend_from_slice(b);
    k
}

/// `a · b` with both integers.
pub fn kk(a: u64, b: u64) -> Vec<u8> {
    k2(a, &b.to_be_bytes())
}

/// The first 8 bytes of a key as an integer.
pub fn u64_at(k: &[u8], at: usize) -> Option<u64> {
    k.get(at..at + 8)
        .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
}

/// Garbage key for a superseded block object.
pub fn garbage_key(now: Timestamp, ino: Ino, index: u64, version: u64) -> Vec<u8> {
    let nanos = (now.secs.max(0) as u64).saturating_mul(1_000_000_000) + u64::from(now.nanos);
    let mut k = kk(nanos, ino);
    k.extend_from_slice(&index.to_be_bytes());
    k.extend_from_slice(&version.to_be_bytes());
    k
}
