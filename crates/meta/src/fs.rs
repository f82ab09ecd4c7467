//! POSIX semantics of the namespace, once, over any [`MetaStore`].
//!
//! Every public method is one transaction: it reads what it needs, checks every rule, and only
//! then writes, so a failed request changes nothing. Access checks on permission bits are done by
//! the kernel (the mount uses `default_permissions`); this layer enforces the rules the kernel
//! cannot see: existence, types, emptiness, rename ancestry, link counts, and the bookkeeping of
//! timestamps, usage, open-but-unlinked inodes and superseded blocks.

use crate::acl;
use crate::keys::*;
use crate::store::{MetaStore, ReadTxn, StoreError, Table, WriteTxn};
use cairn_proto::*;

/// Result of a filesystem operation: a stable error code on failure.
pub type FsResult<T> = Result<T, RpcError>;

impl From<StoreError> for RpcError {
    fn from(e: StoreError) -> Self {
        RpcError::new(store_error_code(&e), e.0)
    }
}

/// What a client is told of a failure of the store: ENOSPC for a full disk (the user can act on
/// it), EIO for the rest.
pub fn store_error_code(e: &StoreError) -> ErrorCode {
    if e.is_no_space() {
        ErrorCode::NoSpace
    } else {
        ErrorCode::Io
    }
}

fn err<T>(code: ErrorCode) -> FsResult<T> {
    Err(RpcError::from(code))
}

/// How far the inode counter jumps at each start (see [`Fs::load`]): more inodes than a server
/// creates within one flush interval.
pub const INO_GAP_AT_START: u64 = 1 << 24;

/// Most entries one readdir answer carries.
pub const READDIR_MAX: u32 = 4096;

/// The filesystem of one volume.
pub struct Fs<S> {
    store: S,
    block_size: u64,
    lock_waits: crate::locks::LockWaits,
}

fn get_inode(t: &dyn ReadTxn, ino: Ino) -> FsResult<InodeRecord> {
    match t.get(Table::Inodes, &ino.to_be_bytes())? {
        Some(v) => Ok(dec(&v)?),
        None => err(ErrorCode::NotFound),
    }
}

fn put_inode(t: &mut dyn WriteTxn, ino: Ino, rec: &InodeRecord) -> FsResult<()> {
    Ok(t.put(Table::Inodes, &ino.to_be_bytes(), &enc(rec))?)
}

fn get_dentry(t: &dyn ReadTxn, parent: Ino, name: &[u8]) -> FsResult<Option<DentryRecord>> {
    match t.get(Table::Dentries, &k2(parent, name))? {
        Some(v) => Ok(Some(dec(&v)?)),
        None => Ok(None),
    }
}

fn check_name(name: &[u8]) -> FsResult<()> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return err(ErrorCode::Invalid);
    }
    if name.len() > NAME_MAX {
        return err(ErrorCode::NameTooLong);
    }
    Ok(())
}

fn get_u64(t: &dyn ReadTxn, key: &[u8]) -> FsResult<Option<u64>> {
    Ok(t.get(Table::Super, key)?.and_then(|v| u64_at(&v, 0)))
}

fn usage(t: &dyn ReadTxn) -> FsResult<Usage> {
    Ok(match t.get(Table::Super, USAGE)? {
        Some(v) => dec(&v)?,
        None => Usage::default(),
    })
}

fn add_usage(t: &mut dyn WriteTxn, inodes: i64, bytes: i64) -> FsResult<()> {
    let mut u = usage(t)?;
    u.inodes = u.inodes.saturating_add_signed(inodes);
    u.bytes = u.bytes.saturating_add_signed(bytes);
    Ok(t.put(Table::Super, USAGE, &enc(&u))?)
}

fn alloc_ino(t: &mut dyn WriteTxn) -> FsResult<Ino> {
    let ino = get_u64(t, NEXT_INO)?.unwrap_or(ROOT_INO + 1);
    t.put(Table::Super, NEXT_INO, &(ino + 1).to_be_bytes())?;
    Ok(ino)
}

/// A directory inode, or NotDir / NotFound.
fn get_dir(t: &dyn ReadTxn, ino: Ino) -> FsResult<InodeRecord> {
    let rec = get_inode(t, ino)?;
    if rec.kind != FileKind::Dir {
        return err(ErrorCode::NotDir);
    }
    Ok(rec)
}

fn add_dentry(
    t: &mut dyn WriteTxn,
    parent: Ino,
    dir: &mut InodeRecord,
    name: &[u8],
    ino: Ino,
    kind: FileKind,
) -> FsResult<()> {
    let cookie = dir.next_cookie;
    dir.next_cookie += 1;
    t.put(
        Table::Dentries,
        &k2(parent, name),
        &enc(&DentryRecord { ino, kind, cookie }),
    )?;
    t.put(Table::DirCookies, &kk(parent, cookie), name)?;
    Ok(())
}

fn remove_dentry(t: &mut dyn WriteTxn, parent: Ino, name: &[u8], d: &DentryRecord) -> FsResult<()> {
    t.delete(Table::Dentries, &k2(parent, name))?;
    t.delete(Table::DirCookies, &kk(parent, d.cookie))?;
    Ok(())
}

fn dir_is_empty(t: &dyn ReadTxn, ino: Ino) -> FsResult<bool> {
    Ok(t.range(Table::DirCookies, &kk(ino, 0), &kk(ino + 1, 0), 1)?
        .is_empty())
}

fn is_open(t: &dyn ReadTxn, ino: Ino) -> FsResult<bool> {
    Ok(!t
        .range(Table::Opens, &kk(ino, 0), &kk(ino + 1, 0), 1)?
        .is_empty())
}

/// Drop all data of an inode: its record, xattrs and blocks (recorded as garbage).
fn purge_inode(t: &mut dyn WriteTxn, ino: Ino, rec: &InodeRecord, now: Timestamp) -> FsResult<()> {
    drop_blocks_from(t, ino, 0, now)?;
    for (k, _) in t.range(
        Table::Xattrs,
        &kk(ino, 0)[..8],
        &(ino + 1).to_be_bytes(),
        usize::MAX,
    )? {
        t.delete(Table::Xattrs, &k)?;
    }
    t.delete(Table::Inodes, &ino.to_be_bytes())?;
    t.delete(Table::Orphans, &ino.to_be_bytes())?;
    let bytes = if rec.kind == FileKind::File {
        rec.size as i64
    } else {
        0
    };
    add_usage(t, -1, -bytes)
}

/// Remove block map entries with index >= `first`, recording their objects as garbage.
fn drop_blocks_from(t: &mut dyn WriteTxn, ino: Ino, first: u64, now: Timestamp) -> FsResult<()> {
    loop {
        let batch = t.range(Table::Blocks, &kk(ino, first), &kk(ino + 1, 0), 1024)?;
        if batch.is_empty() {
            return Ok(());
        }
        for (k, v) in batch {
            let index = u64_at(&k, 8).ok_or_else(|| StoreError("short block key".into()))?;
            let b: BlockRecord = dec(&v)?;
            t.put(
                Table::Garbage,
                &garbage_key(now, ino, index, b.version),
                &[],
            )?;
            t.delete(Table::Blocks, &k)?;
        }
    }
}

/// Drop one link of a non-directory inode; frees it when the last link goes and nobody has it
/// open, or parks it in `Orphans` until the last release.
fn unlink_inode(t: &mut dyn WriteTxn, ino: Ino, now: Timestamp) -> FsResult<()> {
    let mut rec = get_inode(t, ino)?;
    rec.nlink = rec.nlink.saturating_sub(1);
    rec.ctime = now;
    if rec.nlink == 0 {
        if is_open(t, ino)? {
            put_inode(t, ino, &rec)?;
            t.put(Table::Orphans, &ino.to_be_bytes(), &[])?;
        } else {
            purge_inode(t, ino, &rec, now)?;
        }
    } else {
        put_inode(t, ino, &rec)?;
    }
    Ok(())
}

/// Whether `ancestor` is `ino` or one of its ancestors (walks `parent` links up to the root).
fn is_ancestor(t: &dyn ReadTxn, ancestor: Ino, mut ino: Ino) -> FsResult<bool> {
    for _ in 0..100_000 {
        if ino == ancestor {
            return Ok(true);
        }
        if ino == ROOT_INO {
            return Ok(false);
        }
        ino = get_inode(t, ino)?.parent;
    }
    Err(RpcError::new(
        ErrorCode::Internal,
        "directory parent chain does not reach the root",
    ))
}

fn new_record(
    kind: FileKind,
    perm: u32,
    caller: &Caller,
    parent: &InodeRecord,
    now: Timestamp,
) -> InodeRecord {
    let mut perm = perm & 0o7777;
    let mut gid = caller.gid;
    if parent.perm & 0o2000 != 0 {
        // setgid directory: new entries take its group; new directories inherit the bit.
        gid = parent.gid;
        if kind == FileKind::Dir {
            perm |= 0o2000;
        }
    }
    if kind != FileKind::Dir && perm & 0o2000 != 0 && caller.uid != 0 && gid != caller.gid {
        perm &= !0o2000;
    }
    InodeRecord {
        kind,
        perm,
        nlink: if kind == FileKind::Dir { 2 } else { 1 },
        uid: caller.uid,
        gid,
        rdev: 0,
        size: 0,
        atime: now,
        mtime: now,
        ctime: now,
        crtime: now,
        target: None,
        parent: 0,
        next_cookie: 3,
    }
}

impl<S: MetaStore> Fs<S> {
    /// Open the filesystem of the volume in `store`, creating the volume (and its root) if the
    /// store is empty. Returns the volume as stored: its settings win over `info` once created.
    pub fn load(store: S, info: VolumeInfo) -> FsResult<(Self, VolumeInfo)> {
        let info = store.write(|t| {
            if let Some(v) = t.get(Table::Super, VOLUME)? {
                let rec: VolumeRecord = dec(&v)?;
                if rec.info.name != info.name {
                    return Err(RpcError::new(
                        ErrorCode::Invalid,
                        format!(
                            "this data folder holds volume `{}`, not `{}`: pass --volume {} or use another --data-dir",
                            rec.info.name, info.name, rec.info.name
                        ),
                    ));
                }
                // Inodes handed out in commits a crash rolled back may still be known to
                // mounts: skip past any number this store could have given out before.
                let next = get_u64(t, NEXT_INO)?.unwrap_or(ROOT_INO + 1);
                t.put(Table::Super, NEXT_INO, &next.saturating_add(INO_GAP_AT_START).to_be_bytes())?;
                return Ok(rec.info);
            }
            let now = Timestamp::now();
            let root = InodeRecord { atime: now, mtime: now, ctime: now, crtime: now, ..root_record() };
            put_inode(t, ROOT_INO, &root)?;
            t.put(Table::Super, VOLUME, &enc(&VolumeRecord { info: info.clone(), layout: LAYOUT_VERSION }))?;
            t.put(Table::Super, NEXT_INO, &(ROOT_INO + 1).to_be_bytes())?;
            add_usage(t, 1, 0)?;
            Ok(info)
        })?;
        Ok((
            Fs {
                store,
                block_size: u64::from(info.block_size),
                lock_waits: Default::default(),
            },
            info,
        ))
    }

    /// The underlying store (for flush and backup).
    pub fn store(&self) -> &S {
        &self.store
    }

    pub(crate) fn lock_waits(&self) -> &crate::locks::LockWaits {
        &self.lock_waits
    }

    /// Open a new client session.
    pub fn new_session_in(&self, t: &mut dyn WriteTxn, client: &str) -> FsResult<u64> {
        {
            // Random, not counted: a counter rolled back by a crash without --sync would hand a
            // live mount's session to another.
            let mut id = rand::random::<u64>() >> 1;
            while id == 0 || t.get(Table::Sessions, &id.to_be_bytes())?.is_some() {
                id = rand::random::<u64>() >> 1;
            }
            t.put(
                Table::Sessions,
                &id.to_be_bytes(),
                &enc(&SessionRecord {
                    client: client.to_string(),
                    opened: Timestamp::now(),
                }),
            )?;
            Ok(id)
        }
    }

    /// [`Self::new_session_in`] in a transaction of its own.
    pub fn new_session(&self, client: &str) -> FsResult<u64> {
        self.store.write(|t| self.new_session_in(t, client))
    }

    /// Whether a session exists (for resuming after a reconnect).
    pub fn session_exists(&self, id: u64) -> FsResult<bool> {
        self.store.read(|t| Ok(self.session_exists_in(t, id)?))
    }

    /// Whether a session exists, within a transaction (a change in an ended session's name is
    /// refused).
    pub fn session_exists_in(&self, t: &dyn ReadTxn, id: u64) -> Result<bool, StoreError> {
        Ok(t.get(Table::Sessions, &id.to_be_bytes())?.is_some())
    }

    /// Find `name` in `parent`.
    pub fn lookup(&self, parent: Ino, name: &[u8]) -> FsResult<Attr> {
        if name.len() > NAME_MAX {
            return err(ErrorCode::NameTooLong);
        }
        self.store.read(|t| {
            get_dir(t, parent)?;
            let d = get_dentry(t, parent, name)?.ok_or(RpcError::from(ErrorCode::NotFound))?;
            Ok(get_inode(t, d.ino)?.attr(d.ino))
        })
    }

    /// Attributes of `ino`.
    pub fn getattr(&self, ino: Ino) -> FsResult<Attr> {
        self.store.read(|t| self.getattr_in(t, ino))
    }

    /// Attributes of `ino` within a transaction.
    pub fn getattr_in(&self, t: &dyn ReadTxn, ino: Ino) -> FsResult<Attr> {
        Ok(get_inode(t, ino)?.attr(ino))
    }

    /// Change attributes; a size change truncates or extends the block map.
    pub fn setattr_in(&self, t: &mut dyn WriteTxn, ino: Ino, set: &SetAttr) -> FsResult<Attr> {
        let bs = self.block_size;
        {
            let mut rec = get_inode(t, ino)?;
            let now = Timestamp::now();
            if let Some(mode) = set.mode {
                rec.perm = mode & 0o7777;
                // chmod rewrites the owner, mask and other entries of an access ACL.
                let key = k2(ino, acl::ACCESS);
                if let Some(mut a) = t
                    .get(Table::Xattrs, &key)?
                    .and_then(|v| acl::Acl::parse(&v))
                {
                    a.chmod(mode);
                    t.put(Table::Xattrs, &key, &a.to_bytes())?;
                }
            }
            if set.uid.is_some() || set.gid.is_some() {
                let uid_changes = set.uid.is_some_and(|u| u != rec.uid);
                let gid_changes = set.gid.is_some_and(|g| g != rec.gid);
                if (uid_changes || gid_changes) && rec.kind != FileKind::Dir && set.mode.is_none() {
                    // chown clears setuid, and setgid when group-executable (as Linux does).
                    rec.perm &= !0o4000;
                    if rec.perm & 0o010 != 0 {
                        rec.perm &= !0o2000;
                    }
                }
                if let Some(u) = set.uid {
                    rec.uid = u;
                }
                if let Some(g) = set.gid {
                    rec.gid = g;
                }
            }
            if let Some(size) = set.size {
                match rec.kind {
                    FileKind::File => {}
                    FileKind::Dir => return err(ErrorCode::IsDir),
                    _ => return err(ErrorCode::Invalid),
                }
                if size < rec.size {
                    let first_gone = size.div_ceil(bs);
                    drop_blocks_from(t, ino, first_gone, now)?;
                    if size % bs != 0 {
                        let idx = size / bs;
                        let key = kk(ino, idx);
                        if let Some(v) = t.get(Table::Blocks, &key)? {
                            let mut b: BlockRecord = dec(&v)?;
                            b.len = b.len.min((size - idx * bs) as u32);
                            t.put(Table::Blocks, &key, &enc(&b))?;
                        }
                    }
                }
                add_usage(t, 0, size as i64 - rec.size as i64)?;
                rec.size = size;
                rec.mtime = now;
            }
            match set.atime {
                Some(TimeSet::Now) => rec.atime = now,
                Some(TimeSet::At(ts)) => rec.atime = ts,
                None => {}
            }
            match set.mtime {
                Some(TimeSet::Now) => rec.mtime = now,
                Some(TimeSet::At(ts)) => rec.mtime = ts,
                None => {}
            }
            rec.ctime = set.ctime.unwrap_or(now);
            put_inode(t, ino, &rec)?;
            Ok(rec.attr(ino))
        }
    }

    /// [`Self::setattr_in`] in a transaction of its own.
    pub fn setattr(&self, ino: Ino, set: &SetAttr) -> FsResult<Attr> {
        self.store.write(|t| self.setattr_in(t, ino, set))
    }

    #[allow(clippy::too_many_arguments)]
    fn create_node(
        t: &mut dyn WriteTxn,
        parent: Ino,
        name: &[u8],
        session: u64,
        open: bool,
        umask: u32,
        make: impl FnOnce(&InodeRecord, Timestamp) -> InodeRecord,
    ) -> FsResult<Attr> {
        check_name(name)?;
        {
            let mut dir = get_dir(t, parent)?;
            if dir.nlink == 0 {
                return err(ErrorCode::NotFound);
            }
            if get_dentry(t, parent, name)?.is_some() {
                return err(ErrorCode::Exists);
            }
            let now = Timestamp::now();
            let mut rec = make(&dir, now);
            let ino = alloc_ino(t)?;
            if rec.kind != FileKind::Symlink {
                // A default ACL on the directory replaces the umask (posix_acl_create).
                match t
                    .get(Table::Xattrs, &k2(parent, acl::DEFAULT))?
                    .and_then(|v| acl::Acl::parse(&v))
                {
                    Some(default) => {
                        let (perm, access, own_default) =
                            acl::inherit(&default, rec.perm, rec.kind == FileKind::Dir);
                        rec.perm = perm;
                        if let Some(a) = access {
                            t.put(Table::Xattrs, &k2(ino, acl::ACCESS), &a.to_bytes())?;
                        }
                        if let Some(d) = own_default {
                            t.put(Table::Xattrs, &k2(ino, acl::DEFAULT), &d.to_bytes())?;
                        }
                    }
                    None => rec.perm &= !umask,
                }
            }
            if rec.kind == FileKind::Dir {
                rec.parent = parent;
                dir.nlink += 1;
            }
            add_dentry(t, parent, &mut dir, name, ino, rec.kind)?;
            dir.mtime = now;
            dir.ctime = now;
            put_inode(t, parent, &dir)?;
            put_inode(t, ino, &rec)?;
            add_usage(t, 1, 0)?;
            if open {
                t.put(Table::Opens, &kk(ino, session), &1u32.to_be_bytes())?;
                t.put(Table::SessionOpens, &kk(session, ino), &[])?;
            }
            Ok(rec.attr(ino))
        }
    }

    /// Create a non-directory node; `open` also records an open by `session`.
    #[allow(clippy::too_many_arguments)]
    pub fn mknod_in(
        &self,
        t: &mut dyn WriteTxn,
        parent: Ino,
        name: &[u8],
        kind: FileKind,
        perm: u32,
        rdev: u32,
        caller: &Caller,
        session: u64,
        open: bool,
    ) -> FsResult<Attr> {
        if matches!(kind, FileKind::Dir | FileKind::Symlink) {
            return err(ErrorCode::Invalid);
        }
        Self::create_node(t, parent, name, session, open, caller.umask, |dir, now| {
            let mut r = new_record(kind, perm, caller, dir, now);
            r.rdev = rdev;
            r
        })
    }

    /// Create a directory.
    pub fn mkdir_in(
        &self,
        t: &mut dyn WriteTxn,
        parent: Ino,
        name: &[u8],
        perm: u32,
        caller: &Caller,
    ) -> FsResult<Attr> {
        Self::create_node(t, parent, name, 0, false, caller.umask, |dir, now| {
            new_record(FileKind::Dir, perm, caller, dir, now)
        })
    }

    /// Create a symlink.
    pub fn symlink_in(
        &self,
        t: &mut dyn WriteTxn,
        parent: Ino,
        name: &[u8],
        target: &[u8],
        caller: &Caller,
    ) -> FsResult<Attr> {
        if target.is_empty() {
            return err(ErrorCode::NotFound);
        }
        if target.len() > PATH_MAX {
            return err(ErrorCode::NameTooLong);
        }
        Self::create_node(t, parent, name, 0, false, 0, |dir, now| {
            let mut r = new_record(FileKind::Symlink, 0o777, caller, dir, now);
            r.perm = 0o777;
            r.size = target.len() as u64;
            r.target = Some(target.to_vec());
            r
        })
    }

    /// [`Self::mknod_in`] in a transaction of its own.
    #[allow(clippy::too_many_arguments)]
    pub fn mknod(
        &self,
        parent: Ino,
        name: &[u8],
        kind: FileKind,
        perm: u32,
        rdev: u32,
        caller: &Caller,
        session: u64,
        open: bool,
    ) -> FsResult<Attr> {
        self.store
            .write(|t| self.mknod_in(t, parent, name, kind, perm, rdev, caller, session, open))
    }

    /// [`Self::mkdir_in`] in a transaction of its own.
    pub fn mkdir(&self, parent: Ino, name: &[u8], perm: u32, caller: &Caller) -> FsResult<Attr> {
        self.store
            .write(|t| self.mkdir_in(t, parent, name, perm, caller))
    }

    /// [`Self::symlink_in`] in a transaction of its own.
    pub fn symlink(
        &self,
        parent: Ino,
        name: &[u8],
        target: &[u8],
        caller: &Caller,
    ) -> FsResult<Attr> {
        self.store
            .write(|t| self.symlink_in(t, parent, name, target, caller))
    }

    /// Target of a symlink.
    pub fn readlink(&self, ino: Ino) -> FsResult<Vec<u8>> {
        self.store.read(|t| {
            get_inode(t, ino)?
                .target
                .ok_or(RpcError::from(ErrorCode::Invalid))
        })
    }

    /// Remove a non-directory entry.
    pub fn unlink_in(&self, t: &mut dyn WriteTxn, parent: Ino, name: &[u8]) -> FsResult<()> {
        {
            let mut dir = get_dir(t, parent)?;
            let d = get_dentry(t, parent, name)?.ok_or(RpcError::from(ErrorCode::NotFound))?;
            if d.kind == FileKind::Dir {
                return err(ErrorCode::IsDir);
            }
            let now = Timestamp::now();
            remove_dentry(t, parent, name, &d)?;
            unlink_inode(t, d.ino, now)?;
            dir.mtime = now;
            dir.ctime = now;
            put_inode(t, parent, &dir)
        }
    }

    /// [`Self::unlink_in`] in a transaction of its own.
    pub fn unlink(&self, parent: Ino, name: &[u8]) -> FsResult<()> {
        self.store.write(|t| self.unlink_in(t, parent, name))
    }

    /// Remove an empty directory.
    pub fn rmdir_in(&self, t: &mut dyn WriteTxn, parent: Ino, name: &[u8]) -> FsResult<()> {
        if name == b"." {
            return err(ErrorCode::Invalid);
        }
        if name == b".." {
            return err(ErrorCode::NotEmpty);
        }
        {
            let mut dir = get_dir(t, parent)?;
            let d = get_dentry(t, parent, name)?.ok_or(RpcError::from(ErrorCode::NotFound))?;
            if d.kind != FileKind::Dir {
                return err(ErrorCode::NotDir);
            }
            if !dir_is_empty(t, d.ino)? {
                return err(ErrorCode::NotEmpty);
            }
            let now = Timestamp::now();
            let rec = get_inode(t, d.ino)?;
            remove_dentry(t, parent, name, &d)?;
            purge_inode(t, d.ino, &rec, now)?;
            dir.nlink = dir.nlink.saturating_sub(1);
            dir.mtime = now;
            dir.ctime = now;
            put_inode(t, parent, &dir)
        }
    }

    /// [`Self::rmdir_in`] in a transaction of its own.
    pub fn rmdir(&self, parent: Ino, name: &[u8]) -> FsResult<()> {
        self.store.write(|t| self.rmdir_in(t, parent, name))
    }

    /// Rename with `rename_flags` (NOREPLACE, EXCHANGE).
    pub fn rename_in(
        &self,
        t: &mut dyn WriteTxn,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        flags: u32,
    ) -> FsResult<()> {
        check_name(new_name)?;
        if flags & !(rename_flags::NOREPLACE | rename_flags::EXCHANGE) != 0
            || flags == rename_flags::NOREPLACE | rename_flags::EXCHANGE
        {
            return err(ErrorCode::Invalid);
        }
        {
            let now = Timestamp::now();
            get_dir(t, parent)?;
            get_dir(t, new_parent)?;
            let src = get_dentry(t, parent, name)?.ok_or(RpcError::from(ErrorCode::NotFound))?;
            let dst = get_dentry(t, new_parent, new_name)?;
            // Moving a directory under itself would detach a loop from the tree.
            if src.kind == FileKind::Dir
                && parent != new_parent
                && is_ancestor(t, src.ino, new_parent)?
            {
                return err(ErrorCode::Invalid);
            }
            if flags & rename_flags::EXCHANGE != 0 {
                let dst = dst.ok_or(RpcError::from(ErrorCode::NotFound))?;
                if dst.kind == FileKind::Dir
                    && parent != new_parent
                    && is_ancestor(t, dst.ino, parent)?
                {
                    return err(ErrorCode::Invalid);
                }
                return self.exchange(t, parent, name, src, new_parent, new_name, dst, now);
            }
            if let Some(dst) = dst {
                if flags & rename_flags::NOREPLACE != 0 {
                    return err(ErrorCode::Exists);
                }
                if dst.ino == src.ino {
                    // Two names of one inode: POSIX says do nothing.
                    return Ok(());
                }
                match (src.kind == FileKind::Dir, dst.kind == FileKind::Dir) {
                    (true, false) => return err(ErrorCode::NotDir),
                    (false, true) => return err(ErrorCode::IsDir),
                    (true, true) if !dir_is_empty(t, dst.ino)? => return err(ErrorCode::NotEmpty),
                    _ => {}
                }
                remove_dentry(t, new_parent, new_name, &dst)?;
                if dst.kind == FileKind::Dir {
                    let rec = get_inode(t, dst.ino)?;
                    purge_inode(t, dst.ino, &rec, now)?;
                    let mut np = get_inode(t, new_parent)?;
                    np.nlink = np.nlink.saturating_sub(1);
                    put_inode(t, new_parent, &np)?;
                } else {
                    unlink_inode(t, dst.ino, now)?;
                }
            }
            remove_dentry(t, parent, name, &src)?;
            let mut np = get_inode(t, new_parent)?;
            add_dentry(t, new_parent, &mut np, new_name, src.ino, src.kind)?;
            np.mtime = now;
            np.ctime = now;
            let mut moved = get_inode(t, src.ino)?;
            moved.ctime = now;
            if src.kind == FileKind::Dir && parent != new_parent {
                moved.parent = new_parent;
                np.nlink += 1;
            }
            put_inode(t, new_parent, &np)?;
            put_inode(t, src.ino, &moved)?;
            if parent != new_parent {
                let mut op = get_inode(t, parent)?;
                if src.kind == FileKind::Dir {
                    op.nlink = op.nlink.saturating_sub(1);
                }
                op.mtime = now;
                op.ctime = now;
                put_inode(t, parent, &op)?;
            }
            Ok(())
        }
    }

    /// [`Self::rename_in`] in a transaction of its own.
    pub fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        flags: u32,
    ) -> FsResult<()> {
        self.store
            .write(|t| self.rename_in(t, parent, name, new_parent, new_name, flags))
    }

    #[allow(clippy::too_many_arguments)]
    fn exchange(
        &self,
        t: &mut dyn WriteTxn,
        parent: Ino,
        name: &[u8],
        src: DentryRecord,
        new_parent: Ino,
        new_name: &[u8],
        dst: DentryRecord,
        now: Timestamp,
    ) -> FsResult<()> {
        // Each name keeps its cookie and now points at the other inode.
        t.put(
            Table::Dentries,
            &k2(parent, name),
            &enc(&DentryRecord {
                ino: dst.ino,
                kind: dst.kind,
                cookie: src.cookie,
            }),
        )?;
        t.put(
            Table::Dentries,
            &k2(new_parent, new_name),
            &enc(&DentryRecord {
                ino: src.ino,
                kind: src.kind,
                cookie: dst.cookie,
            }),
        )?;
        for (ino, kind, to) in [(src.ino, src.kind, new_parent), (dst.ino, dst.kind, parent)] {
            let mut r = get_inode(t, ino)?;
            r.ctime = now;
            if kind == FileKind::Dir {
                r.parent = to;
            }
            put_inode(t, ino, &r)?;
        }
        if parent != new_parent {
            let dirs_delta =
                i64::from(src.kind == FileKind::Dir) - i64::from(dst.kind == FileKind::Dir);
            for (p, delta) in [(parent, -dirs_delta), (new_parent, dirs_delta)] {
                let mut r = get_inode(t, p)?;
                r.nlink = r.nlink.saturating_add_signed(delta as i32);
                r.mtime = now;
                r.ctime = now;
                put_inode(t, p, &r)?;
            }
        } else {
            let mut r = get_inode(t, parent)?;
            r.mtime = now;
            r.ctime = now;
            put_inode(t, parent, &r)?;
        }
        Ok(())
    }

    /// A new hard link.
    pub fn link_in(
        &self,
        t: &mut dyn WriteTxn,
        ino: Ino,
        new_parent: Ino,
        new_name: &[u8],
    ) -> FsResult<Attr> {
        check_name(new_name)?;
        {
            let mut rec = get_inode(t, ino)?;
            if rec.kind == FileKind::Dir {
                return err(ErrorCode::NotPermitted);
            }
            if rec.nlink == 0 {
                return err(ErrorCode::NotFound);
            }
            if rec.nlink >= 65000 {
                return err(ErrorCode::TooManyLinks);
            }
            let mut dir = get_dir(t, new_parent)?;
            if get_dentry(t, new_parent, new_name)?.is_some() {
                return err(ErrorCode::Exists);
            }
            let now = Timestamp::now();
            add_dentry(t, new_parent, &mut dir, new_name, ino, rec.kind)?;
            dir.mtime = now;
            dir.ctime = now;
            put_inode(t, new_parent, &dir)?;
            rec.nlink += 1;
            rec.ctime = now;
            put_inode(t, ino, &rec)?;
            Ok(rec.attr(ino))
        }
    }

    /// [`Self::link_in`] in a transaction of its own.
    pub fn link(&self, ino: Ino, new_parent: Ino, new_name: &[u8]) -> FsResult<Attr> {
        self.store
            .write(|t| self.link_in(t, ino, new_parent, new_name))
    }

    /// Entries of a directory after `cookie`.
    pub fn readdir(
        &self,
        ino: Ino,
        cookie: u64,
        limit: u32,
        plus: bool,
    ) -> FsResult<(Vec<DirEntry>, bool)> {
        self.readdir_at(ino, cookie, limit, plus)
            .map(|(entries, eof, _)| (entries, eof))
    }

    /// [`Self::readdir`], and the directory's ctime as of the entries returned: a mount that
    /// reads a whole listing at one ctime knows every name in the directory (crate
    /// cairn_client::listings).
    pub fn readdir_at(
        &self,
        ino: Ino,
        cookie: u64,
        limit: u32,
        plus: bool,
    ) -> FsResult<(Vec<DirEntry>, bool, Timestamp)> {
        let limit = limit.clamp(1, READDIR_MAX) as usize;
        self.store.read(|t| {
            let ctime = get_dir(t, ino)?.ctime;
            let rows = t.range(
                Table::DirCookies,
                &kk(ino, cookie.saturating_add(1)),
                &kk(ino + 1, 0),
                limit + 1,
            )?;
            let eof = rows.len() <= limit;
            let mut out = Vec::with_capacity(rows.len().min(limit));
            for (k, name) in rows.into_iter().take(limit) {
                let cookie = u64_at(&k, 8).ok_or_else(|| StoreError("short cookie key".into()))?;
                let Some(d) = get_dentry(t, ino, &name)? else {
                    continue;
                };
                let attr = if plus {
                    Some(get_inode(t, d.ino)?.attr(d.ino))
                } else {
                    None
                };
                out.push(DirEntry {
                    name,
                    ino: d.ino,
                    kind: d.kind,
                    cookie,
                    attr,
                });
            }
            Ok((out, eof, ctime))
        })
    }

    /// Filesystem statistics.
    pub fn statfs(&self) -> FsResult<StatFs> {
        self.store.read(|t| {
            let u = usage(t)?;
            Ok(StatFs {
                used_bytes: u.bytes,
                used_inodes: u.inodes,
                total_bytes: 1 << 50,
                total_inodes: 1 << 32,
            })
        })
    }

    /// Set an xattr.
    pub fn setxattr_in(
        &self,
        t: &mut dyn WriteTxn,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        flags: u32,
    ) -> FsResult<()> {
        if name.is_empty() || name.len() > NAME_MAX {
            return err(ErrorCode::TooBig);
        }
        if value.len() > XATTR_VALUE_MAX {
            return err(ErrorCode::TooBig);
        }
        {
            let mut rec = get_inode(t, ino)?;
            let key = k2(ino, name);
            let exists = t.get(Table::Xattrs, &key)?.is_some();
            if flags & xattr_flags::CREATE != 0 && exists {
                return err(ErrorCode::Exists);
            }
            if flags & xattr_flags::REPLACE != 0 && !exists {
                return err(ErrorCode::NoXattr);
            }
            if name == acl::ACCESS || name == acl::DEFAULT {
                let parsed = acl::Acl::parse(value)
                    .ok_or(RpcError::new(ErrorCode::Invalid, "malformed POSIX ACL"))?;
                if name == acl::ACCESS {
                    // The mode follows the ACL; an ACL the mode says in full is not kept.
                    rec.perm = (rec.perm & !0o777) | parsed.mode_bits();
                    if parsed.is_minimal() {
                        t.delete(Table::Xattrs, &key)?;
                        rec.ctime = Timestamp::now();
                        return put_inode(t, ino, &rec);
                    }
                }
            }
            t.put(Table::Xattrs, &key, value)?;
            rec.ctime = Timestamp::now();
            put_inode(t, ino, &rec)
        }
    }

    /// [`Self::setxattr_in`] in a transaction of its own.
    pub fn setxattr(&self, ino: Ino, name: &[u8], value: &[u8], flags: u32) -> FsResult<()> {
        self.store
            .write(|t| self.setxattr_in(t, ino, name, value, flags))
    }

    /// Value of an xattr.
    pub fn getxattr(&self, ino: Ino, name: &[u8]) -> FsResult<Vec<u8>> {
        self.store.read(|t| {
            get_inode(t, ino)?;
            t.get(Table::Xattrs, &k2(ino, name))?
                .ok_or(RpcError::from(ErrorCode::NoXattr))
        })
    }

    /// Names of all xattrs.
    pub fn listxattr(&self, ino: Ino) -> FsResult<Vec<Vec<u8>>> {
        self.store.read(|t| {
            get_inode(t, ino)?;
            let rows = t.range(
                Table::Xattrs,
                &ino.to_be_bytes(),
                &(ino + 1).to_be_bytes(),
                usize::MAX,
            )?;
            Ok(rows.into_iter().map(|(k, _)| k[8..].to_vec()).collect())
        })
    }

    /// Remove an xattr.
    pub fn removexattr_in(&self, t: &mut dyn WriteTxn, ino: Ino, name: &[u8]) -> FsResult<()> {
        {
            let mut rec = get_inode(t, ino)?;
            let key = k2(ino, name);
            if t.get(Table::Xattrs, &key)?.is_none() {
                return err(ErrorCode::NoXattr);
            }
            t.delete(Table::Xattrs, &key)?;
            rec.ctime = Timestamp::now();
            put_inode(t, ino, &rec)
        }
    }

    /// [`Self::removexattr_in`] in a transaction of its own.
    pub fn removexattr(&self, ino: Ino, name: &[u8]) -> FsResult<()> {
        self.store.write(|t| self.removexattr_in(t, ino, name))
    }

    /// Record an open of `ino` by `session`.
    pub fn open_in(&self, t: &mut dyn WriteTxn, ino: Ino, session: u64) -> FsResult<Attr> {
        {
            let rec = get_inode(t, ino)?;
            let key = kk(ino, session);
            let n = t
                .get(Table::Opens, &key)?
                .and_then(|v| {
                    v.get(..4)
                        .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")))
                })
                .unwrap_or(0);
            t.put(Table::Opens, &key, &(n + 1).to_be_bytes())?;
            t.put(Table::SessionOpens, &kk(session, ino), &[])?;
            Ok(rec.attr(ino))
        }
    }

    /// [`Self::open_in`] in a transaction of its own.
    pub fn open(&self, ino: Ino, session: u64) -> FsResult<Attr> {
        self.store.write(|t| self.open_in(t, ino, session))
    }

    /// Drop an open of `ino` by `session`; the last close of an unlinked inode frees it.
    pub fn release_in(&self, t: &mut dyn WriteTxn, ino: Ino, session: u64) -> FsResult<()> {
        {
            let key = kk(ino, session);
            let n = t
                .get(Table::Opens, &key)?
                .and_then(|v| {
                    v.get(..4)
                        .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")))
                })
                .unwrap_or(0);
            if n > 1 {
                t.put(Table::Opens, &key, &(n - 1).to_be_bytes())?;
                return Ok(());
            }
            self.close_all_in(t, ino, session)
        }
    }

    /// [`Self::release_in`] in a transaction of its own.
    pub fn release(&self, ino: Ino, session: u64) -> FsResult<()> {
        self.store.write(|t| self.release_in(t, ino, session))
    }

    /// Drop every open of `ino` by `session`; frees the inode if it was the last open of an
    /// unlinked file.
    fn close_all_in(&self, t: &mut dyn WriteTxn, ino: Ino, session: u64) -> FsResult<()> {
        t.delete(Table::Opens, &kk(ino, session))?;
        t.delete(Table::SessionOpens, &kk(session, ino))?;
        if t.get(Table::Orphans, &ino.to_be_bytes())?.is_some() && !is_open(t, ino)? {
            let rec = get_inode(t, ino)?;
            purge_inode(t, ino, &rec, Timestamp::now())?;
        }
        Ok(())
    }

    /// End a session: release its locks and opens (freeing unlinked files it kept alive) and
    /// forget its stored outcomes.
    pub fn end_session_in(&self, t: &mut dyn WriteTxn, session: u64) -> FsResult<()> {
        self.release_session_locks_in(t, session)?;
        for (k, _) in t.range(
            Table::SessionOpens,
            &kk(session, 0),
            &kk(session + 1, 0),
            usize::MAX,
        )? {
            let ino = u64_at(&k, 8).ok_or_else(|| StoreError("short session-open key".into()))?;
            self.close_all_in(t, ino, session)?;
        }
        loop {
            let rows = t.range(Table::Outcomes, &kk(session, 0), &kk(session + 1, 0), 1024)?;
            if rows.is_empty() {
                break;
            }
            for (k, _) in rows {
                t.delete(Table::Outcomes, &k)?;
            }
        }
        t.delete(Table::Sessions, &session.to_be_bytes())?;
        Ok(())
    }

    /// Every session in the store, for expiry after a restart.
    pub fn sessions(&self) -> FsResult<Vec<u64>> {
        self.store.read(|t| {
            let rows = t.range(Table::Sessions, &[], &[0xff; 9], usize::MAX)?;
            Ok(rows.iter().filter_map(|(k, _)| u64_at(k, 0)).collect())
        })
    }

    /// Block map entries in `[first, first + count)` and the file size.
    pub fn get_blocks(&self, ino: Ino, first: u64, count: u64) -> FsResult<(Vec<BlockRef>, u64)> {
        self.store.read(|t| {
            let rec = get_inode(t, ino)?;
            let end = first.saturating_add(count);
            let rows = t.range(Table::Blocks, &kk(ino, first), &kk(ino, end), usize::MAX)?;
            let mut out = Vec::with_capacity(rows.len());
            for (k, v) in rows {
                let index = u64_at(&k, 8).ok_or_else(|| StoreError("short block key".into()))?;
                out.push(dec::<BlockRecord>(&v)?.to_ref(index));
            }
            Ok((out, rec.size))
        })
    }

    /// Commit blocks already durable in object storage; grow the file to at least `size`.
    pub fn commit_write_in(
        &self,
        t: &mut dyn WriteTxn,
        ino: Ino,
        blocks: &[BlockRef],
        size: u64,
        mtime: Timestamp,
    ) -> FsResult<Attr> {
        let bs = self.block_size;
        {
            let mut rec = get_inode(t, ino)?;
            if rec.kind != FileKind::File {
                return err(ErrorCode::Invalid);
            }
            let now = Timestamp::now();
            for b in blocks {
                if u64::from(b.len) > bs {
                    return err(ErrorCode::Invalid);
                }
                let key = kk(ino, b.index);
                if let Some(v) = t.get(Table::Blocks, &key)? {
                    let old: BlockRecord = dec(&v)?;
                    if old.version == b.version {
                        continue;
                    }
                    t.put(
                        Table::Garbage,
                        &garbage_key(now, ino, b.index, old.version),
                        &[],
                    )?;
                }
                t.put(
                    Table::Blocks,
                    &key,
                    &enc(&BlockRecord {
                        version: b.version,
                        len: b.len,
                    }),
                )?;
            }
            if size > rec.size {
                add_usage(t, 0, (size - rec.size) as i64)?;
                rec.size = size;
            }
            rec.mtime = mtime;
            rec.ctime = now;
            put_inode(t, ino, &rec)?;
            Ok(rec.attr(ino))
        }
    }

    /// [`Self::commit_write_in`] in a transaction of its own.
    pub fn commit_write(
        &self,
        ino: Ino,
        blocks: &[BlockRef],
        size: u64,
        mtime: Timestamp,
    ) -> FsResult<Attr> {
        self.store
            .write(|t| self.commit_write_in(t, ino, blocks, size, mtime))
    }
}

/// The root directory of a new volume.
fn root_record() -> InodeRecord {
    InodeRecord {
        kind: FileKind::Dir,
        perm: 0o755,
        nlink: 2,
        uid: 0,
        gid: 0,
        rdev: 0,
        size: 0,
        atime: Timestamp::default(),
        mtime: Timestamp::default(),
        ctime: Timestamp::default(),
        crtime: Timestamp::default(),
        target: None,
        parent: ROOT_INO,
        next_cookie: 3,
    }
}
