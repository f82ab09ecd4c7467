use crate::page_fill::PageFiller;
use cairn_client::Client;
use cairn_proto::{
    Attr, Caller, ErrorCode, FileKind, LockSpec, LockType, RpcError, SetAttr, TimeSet, Timestamp,
};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use std::cell::Cell;
use std::ffi::OsStr;
use std::future::Future;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::runtime::Handle;
use tracing::warn;

/// How long the kernel may trust attributes and entries before asking again.
const TTL: Duration = Duration::from_secs(1);

/// Largest read and write request the kernel sends (1 MiB).
const MAX_IO: u32 = 1 << 20;

/// The errno for a cairn error code: the only place this mapping exists.
pub fn errno(code: ErrorCode) -> Errno {
    match code {
        ErrorCode::NotFound => Errno::ENOENT,
        ErrorCode::Exists => Errno::EEXIST,
        ErrorCode::NotDir => Errno::ENOTDIR,
        ErrorCode::IsDir => Errno::EISDIR,
        ErrorCode::NotEmpty => Errno::ENOTEMPTY,
        ErrorCode::AccessDenied => Errno::EACCES,
        ErrorCode::NotPermitted => Errno::EPERM,
        ErrorCode::Invalid => Errno::EINVAL,
        ErrorCode::NameTooLong => Errno::ENAMETOOLONG,
        ErrorCode::NoXattr => Errno::ENODATA,
        // setxattr/getxattr sizes: the kernel itself turns oversized buffers into ERANGE; what
        // reaches us is a value or name over the limit, which Linux reports as E2BIG.
        ErrorCode::TooBig => Errno::E2BIG,
        ErrorCode::TooManyLinks => Errno::EMLINK,
        ErrorCode::NoSpace => Errno::ENOSPC,
        ErrorCode::Stale => Errno::ESTALE,
        ErrorCode::ReadOnly => Errno::EROFS,
        ErrorCode::Unsupported => Errno::EOPNOTSUPP,
        ErrorCode::Io | ErrorCode::Internal => Errno::EIO,
        // The metadata server stayed unreachable past the client's patience.
        ErrorCode::Unavailable => Errno::EIO,
        ErrorCode::WouldBlock => Errno::EAGAIN,
        ErrorCode::Deadlock => Errno::EDEADLK,
        ErrorCode::Interrupted => Errno::EINTR,
        // The RPC client opens a new session and resends on it; reaching here means it could
        // not, as with Unavailable.
        ErrorCode::SessionEnded => Errno::EIO,
    }
}

thread_local! {
    /// The inode of the FUSE request whose future this thread is polling, named by the log line
    /// of its failure. A tracing span per request did this and cost about 5% of a
    /// one-thread create or unlink: the subscriber registers and formats every span, though
    /// almost none ever has a line logged in it.
    static REQUEST_INO: Cell<Option<u64>> = const { Cell::new(None) };
}

/// `fut`, which makes its request's inode the thread's [`REQUEST_INO`] while it is polled.
async fn in_request<F: Future>(ino: u64, fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(move |cx| {
        let outer = REQUEST_INO.replace(Some(ino));
        let polled = fut.as_mut().poll(cx);
        REQUEST_INO.set(outer);
        polled
    })
    .await
}

/// The errno for a failed request; a failure of the mount or its servers (not of the request)
/// is logged with the request's operation and inode.
fn reply_err(op: &str, e: &RpcError) -> Errno {
    match e.code {
        ErrorCode::Io | ErrorCode::Internal | ErrorCode::Unavailable => {
            let ino = REQUEST_INO.get();
            warn!(op, ino, "request failed: {}", e.message)
        }
        _ => {}
    }
    errno(e.code)
}

fn kind(k: FileKind) -> FileType {
    match k {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::CharDev => FileType::CharDevice,
        FileKind::BlockDev => FileType::BlockDevice,
        FileKind::Socket => FileType::Socket,
    }
}

fn attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.atime.into(),
        mtime: a.mtime.into(),
        ctime: a.ctime.into(),
        crtime: a.crtime.into(),
        kind: kind(a.kind),
        perm: (a.perm & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: MAX_IO,
        flags: 0,
    }
}

/// The handle of an open: all it says is whether the open may write, for its release.
fn file_handle(writable: bool) -> FileHandle {
    FileHandle(u64::from(writable))
}

/// Whether the open behind `fh` ([`file_handle`]) may write.
fn is_writable(fh: FileHandle) -> bool {
    fh.0 == 1
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
        umask: 0,
    }
}

/// The caller of a create, with the umask the kernel leaves to us (FUSE_DONT_MASK).
fn creator(req: &Request, umask: u32) -> Caller {
    Caller {
        umask: umask & 0o777,
        ..caller(req)
    }
}

fn time_set(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(t) => TimeSet::At(Timestamp::from(t)),
    }
}

/// The FUSE filesystem: a translator in front of [`Client`].
pub struct CairnFuse {
    client: Arc<Client>,
    rt: Handle,
    /// Requests start on the FUSE thread, metadata calls over its own connection
    /// (see [`Self::run`]).
    inline: bool,
    /// Hands random reads' frames to the kernel (see [`crate::page_fill`]); None when off.
    filler: Option<Arc<PageFiller>>,
}

impl CairnFuse {
    /// Serve `client` with futures run on `rt`. `CAIRN_THREAD_LANES=0` in the environment sends
    /// every request through the runtime, and `CAIRN_PAGE_FILL=0` stops page fills (to measure
    /// what each brings).
    pub fn new(client: Arc<Client>, rt: Handle) -> Self {
        let on = |var: &str| std::env::var(var).map_or(true, |v| v != "0");
        let inline = on("CAIRN_THREAD_LANES");
        let filler = on("CAIRN_PAGE_FILL")
            .then(|| match PageFiller::start(client.clone(), rt.clone()) {
                Ok(f) => Some(Arc::new(f)),
                Err(e) => {
                    warn!("no page fills: cannot start their thread: {e}");
                    None
                }
            })
            .flatten();
        if let Some(filler) = &filler {
            // Weak: the filler holds the client, and must not be kept alive by it.
            let filler = Arc::downgrade(filler);
            client.set_fill_sink(move |fill| {
                if let Some(filler) = filler.upgrade() {
                    filler.offer(fill);
                }
            });
        }
        CairnFuse {
            client,
            rt,
            inline,
            filler,
        }
    }

    /// Give the page fill thread the session's channel to the kernel, once the session exists.
    pub(crate) fn page_filler(&self) -> Option<Arc<PageFiller>> {
        self.filler.clone()
    }

    /// Run a request's future on the runtime.
    fn spawn<F>(&self, ino: u64, f: impl FnOnce(Arc<Client>) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.rt.spawn(in_request(ino, f(self.client.clone())));
    }

    /// Start a request on this FUSE thread: its first poll runs here, as a thread that may wait
    /// ([`cairn_client::on_waiting_thread`]: its metadata calls and disk cache reads are done
    /// here), so a request that needs one round trip or one cached block is answered without
    /// waking any other thread. Whatever is not done after that poll (a lock to wait for, a
    /// block to fetch, a lane that failed) goes on as a task on the runtime, which polls it
    /// again with a real waker. So a read served from memory, or a write that only
    /// copies into the file's buffer, is answered by the thread that received it. Not for
    /// requests that mostly wait (fsync, lock waits): a FUSE thread must not spend long on one
    /// request while others queue behind it.
    fn run<F>(&self, ino: u64, f: impl FnOnce(Arc<Client>) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        if !self.inline {
            return self.spawn(ino, f);
        }
        let mut fut = Box::pin(in_request(ino, f(self.client.clone())));
        let _runtime = self.rt.enter();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let first = cairn_client::on_waiting_thread(|| fut.as_mut().poll(&mut cx));
        if first.is_pending() {
            self.rt.spawn(fut);
        }
    }
}

/// The kernel's lock request as a cairn lock; `None` for an unknown type.
fn lock_spec(owner: LockOwner, start: u64, end: u64, typ: i32, pid: u32) -> Option<LockSpec> {
    let typ = match typ {
        libc::F_RDLCK => LockType::Read,
        libc::F_WRLCK => LockType::Write,
        libc::F_UNLCK => LockType::Unlock,
        _ => return None,
    };
    // The kernel says "to the end of the file" with OFFSET_MAX.
    let end = if end >= i64::MAX as u64 {
        u64::MAX
    } else {
        end
    };
    Some(LockSpec {
        owner: owner.0,
        start,
        end,
        typ,
        pid,
    })
}

/// Whether thread `tid` has a signal pending that it neither blocks nor ignores. The kernel
/// cannot interrupt a FUSE request once we have it (fuser answers FUSE_INTERRUPT with ENOSYS), and
/// waits even a SIGKILL out; so a lock wait looks for itself, and gives up with EINTR, as a local
/// F_SETLKW would.
fn signal_pending(tid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{tid}/status")) else {
        // Gone: nobody waits any more.
        return true;
    };
    let mask = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    let pending = mask("SigPnd:") | mask("ShdPnd:");
    pending & !mask("SigBlk:") & !mask("SigIgn:") != 0
}

fn kernel_end(end: u64) -> u64 {
    end.min(i64::MAX as u64)
}

fn name(n: &OsStr) -> Vec<u8> {
    n.as_bytes().to_vec()
}

impl Filesystem for CairnFuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_IO);
        let _ = config.set_max_readahead(MAX_IO);
        let _ = config.set_max_background(64);
        let wanted = InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_CACHE_SYMLINKS
            | InitFlags::FUSE_ASYNC_DIO
            | InitFlags::FUSE_POSIX_LOCKS
            | InitFlags::FUSE_FLOCK_LOCKS
            // The kernel enforces ACLs; the server keeps them, inherits default ACLs and applies
            // the umask itself (a default ACL replaces it).
            | InitFlags::FUSE_POSIX_ACL
            | InitFlags::FUSE_DONT_MASK;
        let _ = config.add_capabilities(wanted & config.capabilities());
        Ok(())
    }

    fn destroy(&mut self) {
        // Closes the server has not heard of yet, and the session's end; if this fails, the
        // session's expiry frees its locks and opens.
        // Called from within the runtime's context: wait for it on a thread of its own.
        let (c, rt) = (self.client.clone(), self.rt.clone());
        let _ = std::thread::spawn(move || {
            rt.block_on(
                async move { tokio::time::timeout(Duration::from_secs(40), c.shutdown()).await },
            )
        })
        .join();
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, n: &OsStr, reply: ReplyEntry) {
        let n = name(n);
        self.run(parent.0, move |c| async move {
            match c.lookup(parent.0, &n).await {
                // fuser takes the attributes' TTL first.
                Ok(e) => reply.entry_with_ttls(
                    &e.attr_ttl,
                    &e.entry_ttl,
                    &attr(&e.attr),
                    Generation(e.attr.generation),
                ),
                // An expected miss: not worth a log line.
                Err(e) => reply.error(reply_err("lookup", &e)),
            }
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if let Some(a) = self.client.cached_attr(ino.0) {
            reply.attr(&TTL, &attr(&a));
            return;
        }
        self.run(ino.0, move |c| async move {
            match c.getattr(ino.0).await {
                Ok(a) => reply.attr(&TTL, &attr(&a)),
                Err(e) => reply.error(reply_err("getattr", &e)),
            }
        });
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode: mode.map(|m| m & 0o7777),
            uid,
            gid,
            size,
            atime: atime.map(time_set),
            mtime: mtime.map(time_set),
            ctime: ctime.map(Timestamp::from),
        };
        let who = caller(req);
        self.run(ino.0, move |c| async move {
            match c.setattr(ino.0, set, who).await {
                Ok(a) => reply.attr(&TTL, &attr(&a)),
                Err(e) => reply.error(reply_err("setattr", &e)),
            }
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.run(ino.0, move |c| async move {
            match c.readlink(ino.0).await {
                Ok(t) => reply.data(&t),
                Err(e) => reply.error(reply_err("readlink", &e)),
            }
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        n: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let Some(k) = FileKind::from_mode(mode) else {
            reply.error(Errno::EINVAL);
            return;
        };
        let (n, who) = (name(n), creator(req, umask));
        self.run(parent.0, move |c| async move {
            match c
                .mknod(parent.0, &n, k, mode & 0o7777, rdev, who, false)
                .await
            {
                Ok(a) => reply.entry(&TTL, &attr(&a), Generation(a.generation)),
                Err(e) => reply.error(reply_err("mknod", &e)),
            }
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        n: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let (n, who) = (name(n), creator(req, umask));
        self.run(parent.0, move |c| async move {
            match c.mkdir(parent.0, &n, mode & 0o7777, who).await {
                Ok(a) => reply.entry(&TTL, &attr(&a), Generation(a.generation)),
                Err(e) => reply.error(reply_err("mkdir", &e)),
            }
        });
    }

    fn unlink(&self, req: &Request, parent: INodeNo, n: &OsStr, reply: ReplyEmpty) {
        let (n, who) = (name(n), caller(req));
        self.run(parent.0, move |c| async move {
            match c.unlink(parent.0, &n, who).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(reply_err("unlink", &e)),
            }
        });
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, n: &OsStr, reply: ReplyEmpty) {
        let (n, who) = (name(n), caller(req));
        self.run(parent.0, move |c| async move {
            match c.rmdir(parent.0, &n, who).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(reply_err("rmdir", &e)),
            }
        });
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let (n, t, who) = (
            name(link_name),
            target.as_os_str().as_bytes().to_vec(),
            caller(req),
        );
        self.run(parent.0, move |c| async move {
            match c.symlink(parent.0, &n, &t, who).await {
                Ok(a) => reply.entry(&TTL, &attr(&a), Generation(a.generation)),
                Err(e) => reply.error(reply_err("symlink", &e)),
            }
        });
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        n: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (n, nn, who) = (name(n), name(newname), caller(req));
        let flags = flags.bits();
        let mut wire = 0;
        if flags & libc::RENAME_NOREPLACE != 0 {
            wire |= cairn_proto::rename_flags::NOREPLACE;
        }
        if flags & libc::RENAME_EXCHANGE != 0 {
            wire |= cairn_proto::rename_flags::EXCHANGE;
        }
        if flags & !(libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE) != 0 {
            reply.error(Errno::EINVAL);
            return;
        }
        self.run(parent.0, move |c| async move {
            match c.rename(parent.0, &n, newparent.0, &nn, wire, who).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(reply_err("rename", &e)),
            }
        });
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let (nn, who) = (name(newname), caller(req));
        self.run(ino.0, move |c| async move {
            match c.link(ino.0, newparent.0, &nn, who).await {
                Ok(a) => reply.entry(&TTL, &attr(&a), Generation(a.generation)),
                Err(e) => reply.error(reply_err("link", &e)),
            }
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let writable = flags.0 & libc::O_ACCMODE != libc::O_RDONLY;
        let fh = file_handle(writable);
        self.run(ino.0, move |c| async move {
            match c.open(ino.0, writable).await {
                // Close-to-open: the kernel's page cache of the file is dropped at open, unless
                // the file is the version this mount last saw (then its pages are still right).
                Ok(o) if o.unchanged => reply.opened(fh, FopenFlags::FOPEN_KEEP_CACHE),
                Ok(_) => reply.opened(fh, FopenFlags::empty()),
                Err(e) => reply.error(reply_err("open", &e)),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let filler = self.filler.clone();
        self.run(ino.0, move |c| async move {
            match c.read(ino.0, offset, size).await {
                Ok(d) => {
                    reply.data(&d.data);
                    if let (Some(filler), Some(fill)) = (filler, d.fill) {
                        filler.offer(fill);
                    }
                }
                Err(e) => reply.error(reply_err("read", &e)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let data = data.to_vec();
        self.run(ino.0, move |c| async move {
            match c.write(ino.0, offset, &data).await {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(reply_err("write", &e)),
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock: LockOwner,
        reply: ReplyEmpty,
    ) {
        if self.client.flush_is_noop(ino.0, Some(lock.0)) {
            reply.ok();
            return;
        }
        self.run(ino.0, move |c| async move {
            // A close by a lock owner drops its POSIX locks on the file.
            let unlocked = c.release_locks(ino.0, lock.0).await;
            match c.flush(ino.0).await.and(unlocked) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(reply_err("flush", &e)),
            }
        });
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        lock: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let writable = is_writable(fh);
        if self
            .client
            .try_release_now(ino.0, lock.map(|l| l.0), writable)
        {
            reply.ok();
            return;
        }
        self.run(ino.0, move |c| async move {
            // Set when the last close of an open file description drops its flock.
            let unlocked = match lock {
                Some(owner) => c.release_locks(ino.0, owner.0).await,
                None => Ok(()),
            };
            match c.release(ino.0, writable).await.and(unlocked) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(reply_err("release", &e)),
            }
        });
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.spawn(ino.0, move |c| async move {
            match c.fsync(ino.0).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(reply_err("fsync", &e)),
            }
        });
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.spawn(ino.0, move |c| async move {
            match c.sync().await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(reply_err("fsyncdir", &e)),
            }
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.run(ino.0, move |c| async move {
            // Offsets: 1 is ".", 2 is "..", then the server's stable cookies (all >= 3).
            if offset < 1 && reply.add(ino, 1, FileType::Directory, ".") {
                return reply.ok();
            }
            if offset < 2 && reply.add(ino, 2, FileType::Directory, "..") {
                return reply.ok();
            }
            let mut cookie = offset.max(2);
            loop {
                match c.readdir(ino.0, cookie, false).await {
                    Ok((entries, eof)) => {
                        for e in &entries {
                            if reply.add(
                                INodeNo(e.ino),
                                e.cookie,
                                kind(e.kind),
                                OsStr::from_bytes(&e.name),
                            ) {
                                return reply.ok();
                            }
                            cookie = e.cookie;
                        }
                        if eof || entries.is_empty() {
                            return reply.ok();
                        }
                    }
                    Err(e) => return reply.error(reply_err("readdir", &e)),
                }
            }
        });
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        self.run(ino.0, move |c| async move {
            // "." and ".." carry no lookup count in the kernel; their attributes are the
            // directory's own (the kernel ignores those of ".."). Only the first batch of a
            // listing holds them, so only it pays for the getattr.
            if offset < 2 {
                let dot = match c.getattr(ino.0).await {
                    Ok(a) => attr(&a),
                    Err(e) => return reply.error(reply_err("readdirplus", &e)),
                };
                if offset < 1 && reply.add(ino, 1, ".", &TTL, &dot, Generation(0)) {
                    return reply.ok();
                }
                if reply.add(ino, 2, "..", &TTL, &dot, Generation(0)) {
                    return reply.ok();
                }
            }
            let mut cookie = offset.max(2);
            loop {
                match c.readdir(ino.0, cookie, true).await {
                    Ok((entries, eof)) => {
                        for e in &entries {
                            let Some(a) = &e.attr else { continue };
                            if reply.add(
                                INodeNo(e.ino),
                                e.cookie,
                                OsStr::from_bytes(&e.name),
                                &TTL,
                                &attr(a),
                                Generation(a.generation),
                            ) {
                                return reply.ok();
                            }
                            cookie = e.cookie;
                        }
                        if eof || entries.is_empty() {
                            return reply.ok();
                        }
                    }
                    Err(e) => return reply.error(reply_err("readdirplus", &e)),
                }
            }
        });
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.run(1, move |c| async move {
            match c.statfs().await {
                Ok(s) => {
                    let bsize = 4096u64;
                    let blocks = s.total_bytes / bsize;
                    let used = s.used_bytes.div_ceil(bsize);
                    let free = blocks.saturating_sub(used);
                    let ffree = s.total_inodes.saturating_sub(s.used_inodes);
                    reply.statfs(
                        blocks,
                        free,
                        free,
                        s.total_inodes,
                        ffree,
                        bsize as u32,
                        cairn_proto::NAME_MAX as u32,
                        bsize as u32,
                    )
                }
                Err(e) => reply.error(reply_err("statfs", &e)),
            }
        });
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        n: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let (n, v) = (name(n), value.to_vec());
        let mut wire = 0;
        if flags & libc::XATTR_CREATE != 0 {
            wire |= cairn_proto::xattr_flags::CREATE;
        }
        if flags & libc::XATTR_REPLACE != 0 {
            wire |= cairn_proto::xattr_flags::REPLACE;
        }
        self.run(ino.0, move |c| async move {
            match c.setxattr(ino.0, &n, &v, wire).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(reply_err("setxattr", &e)),
            }
        });
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, n: &OsStr, size: u32, reply: ReplyXattr) {
        let n = name(n);
        if self.client.known_absent_xattr(ino.0, &n) {
            // The kernel's check before every write: answered here, not on the runtime.
            reply.error(Errno::ENODATA);
            return;
        }
        self.run(ino.0, move |c| async move {
            match c.getxattr(ino.0, &n).await {
                Ok(v) if size == 0 => reply.size(v.len() as u32),
                Ok(v) if v.len() > size as usize => reply.error(Errno::ERANGE),
                Ok(v) => reply.data(&v),
                Err(e) => reply.error(reply_err("getxattr", &e)),
            }
        });
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.run(ino.0, move |c| async move {
            match c.listxattr(ino.0).await {
                Ok(names) => {
                    let mut buf = Vec::new();
                    for n in names {
                        buf.extend_from_slice(&n);
                        buf.push(0);
                    }
                    if size == 0 {
                        reply.size(buf.len() as u32)
                    } else if buf.len() > size as usize {
                        reply.error(Errno::ERANGE)
                    } else {
                        reply.data(&buf)
                    }
                }
                Err(e) => reply.error(reply_err("listxattr", &e)),
            }
        });
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, n: &OsStr, reply: ReplyEmpty) {
        let n = name(n);
        self.run(ino.0, move |c| async move {
            match c.removexattr(ino.0, &n).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(reply_err("removexattr", &e)),
            }
        });
    }

    fn getlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        reply: fuser::ReplyLock,
    ) {
        let Some(lock) = lock_spec(owner, start, end, typ, pid) else {
            return reply.error(Errno::EINVAL);
        };
        self.run(ino.0, move |c| async move {
            match c.get_lock(ino.0, lock).await {
                Ok(Some(l)) => {
                    let typ = if l.typ == LockType::Write {
                        libc::F_WRLCK
                    } else {
                        libc::F_RDLCK
                    };
                    reply.locked(l.start, kernel_end(l.end), typ, l.pid)
                }
                Ok(None) => reply.locked(0, 0, libc::F_UNLCK, 0),
                Err(e) => reply.error(reply_err("getlk", &e)),
            }
        });
    }

    fn setlk(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let Some(lock) = lock_spec(owner, start, end, typ, pid) else {
            return reply.error(Errno::EINVAL);
        };
        let waiter = req.pid();
        self.spawn(ino.0, move |c| async move {
            match c
                .set_lock(ino.0, lock, sleep, || signal_pending(waiter))
                .await
            {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(reply_err("setlk", &e)),
            }
        });
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        // Mode 0 is `Client::allocate`; KEEP_SIZE alone has nothing to do. Punching holes and
        // zeroing ranges are not supported.
        if mode & !libc::FALLOC_FL_KEEP_SIZE != 0 {
            return reply.error(Errno::EOPNOTSUPP);
        }
        let Some(end) = offset.checked_add(length).filter(|e| *e <= i64::MAX as u64) else {
            return reply.error(Errno::EFBIG);
        };
        if mode & libc::FALLOC_FL_KEEP_SIZE != 0 {
            return reply.ok();
        }
        let who = caller(req);
        self.spawn(ino.0, move |c| async move {
            match c.allocate(ino.0, end, who).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(reply_err("fallocate", &e)),
            }
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        n: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let (n, who) = (name(n), creator(req, umask));
        let exclusive = flags & libc::O_EXCL != 0;
        self.run(parent.0, move |c| async move {
            match c
                .mknod(parent.0, &n, FileKind::File, mode & 0o7777, 0, who, true)
                .await
            {
                Ok(a) => reply.created(
                    &TTL,
                    &attr(&a),
                    Generation(a.generation),
                    file_handle(true),
                    FopenFlags::empty(),
                ),
                // Without O_EXCL, an existing file is opened, not refused. The kernel asked to
                // create because a lookup said the name was free, and this mount may have said
                // so from a listing another mount has since changed (crate
                // cairn_client::listings; the listing is now forgotten): ESTALE makes the kernel
                // walk the path again with fresh lookups (`do_filp_open` retries with
                // LOOKUP_REVAL), and open the file it now finds, with its own permission checks
                // and O_TRUNC.
                Err(e) if e.code == ErrorCode::Exists && !exclusive => reply.error(Errno::ESTALE),
                Err(e) => reply.error(reply_err("create", &e)),
            }
        });
    }
}
