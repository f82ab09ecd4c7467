//! The on-disk block cache (L2) of a mount or a proxy, with optional crash-safe writeback.
//!
//! It holds *stored* block objects: the exact bytes that go to the bucket (compressed,
//! checksummed, encrypted if the volume is), named by their object path. So the disk never holds
//! plaintext of an encrypted volume, and a cached copy is verified by the codec like a read from
//! the bucket ([`crate::BlockStore::get`] does that, and drops a copy that fails).
//!
//! The folder:
//!
//! ```text
//! CAIRN-CACHE           marker; a non-empty folder without it is refused (it is not ours)
//! lock                  flock(LOCK_EX) of the one process using the folder; holds its pid
//! clean/xx/NAME         copies of objects that are in the bucket: evictable
//! staged/xx/NAME        writeback objects not uploaded yet: durable, never evicted
//! tmp/                  files being written; emptied at open
//! ```
//!
//! `NAME` is the object path with `%` and `/` escaped as `%25` and `%2F`; `xx` is the low byte of
//! crc32c(path) in hex: 256 folders, so that no folder grows huge.
//!
//! Durability: a staged entry is written to `tmp/`, fsynced, renamed into `staged/xx/`, and that
//! folder fsynced before [`DiskCache::stage`] returns, so it survives a crash of the process or
//! the host. Clean entries are never fsynced: losing one costs one read from the bucket. After its
//! upload a staged entry is renamed into `clean/` (not fsynced either: if the rename is lost, the
//! entry is uploaded again after the next open, which the store answers "already exists").
//!
//! A copy of a block just read from the bucket is written behind the read, by a task of its own
//! ([`DiskCache::insert_behind`], [`DiskCache::keep_behind`]): the read never waits for the disk.
//! It is written with `O_DIRECT` where the filesystem takes it, from page-aligned buffers kept for
//! reuse: the kernel holds the block's bytes already (in the pages of the file read), and a
//! second copy of them in the page cache only cost memory and CPU (fresh pages for every byte
//! read). Copies that are read back soon (the blocks of a file copied in for a random reader
//! that the kernel is not handed) go through the page cache.
//!
//! Space: an in-memory index, rebuilt at open by listing the folder, counts bytes (clean entries
//! in least-recently-used order, by file mtime at open). Before an entry is written, clean entries
//! are evicted, least recently used first, until
//! 1. clean + staged bytes stay within the capacity, and
//! 2. the filesystem keeps [`free_space_margin`] available (statvfs `f_bavail`): 10% of its size
//!    or 1 GiB, whichever is smaller. The cache gives way to the other users of the disk.
//!
//! A clean entry that does not fit is not cached. Staging that does not fit (staged bytes alone
//! would pass the capacity, or the disk is full) fails, and the caller uploads directly: the
//! writeback backlog is bounded by the capacity.

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::SystemTime;

use bytes::Bytes;
use tokio::sync::Notify;

use crate::error::BlockError;
use crate::pool::BufferPool;
use crate::store::off_runtime as blocking;

const MARKER: &str = "CAIRN-CACHE";
const MARKER_TEXT: &str = "cairn block cache, format 1: see crates/blocks/src/cache.rs\n";
const LOCK: &str = "lock";
const CLEAN: &str = "clean";
const STAGED: &str = "staged";
const TMP: &str = "tmp";
/// Upper bound of [`free_space_margin`].
const MAX_FREE_MARGIN: u64 = 1 << 30;
/// Most copies written behind reads at once ([`DiskCache::insert_behind`]); each holds its
/// entry's bytes until written.
const BEHIND: usize = 8;
/// Alignment of the buffer, offset and length of a direct write: the page size, a multiple of
/// every disk's logical block size.
const DIRECT_ALIGN: usize = 4096;
/// Buffers of direct writes kept for reuse (each as large as the largest entry written): a
/// fresh buffer costs a page fault per page on its first use.
const DIRECT_BUFFERS: usize = BEHIND;

/// Settings of the disk cache of a [`crate::BlockStore`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    /// The cache folder (created if missing). One process at a time.
    pub dir: PathBuf,
    /// Most bytes of entries, clean and staged together.
    pub capacity: u64,
    /// `put` stages blocks here and returns; a background task uploads them.
    pub writeback: bool,
}

/// Bytes the cache keeps available on its filesystem: 10% of its size, at most 1 GiB.
pub fn free_space_margin(fs_size: u64) -> u64 {
    (fs_size / 10).min(MAX_FREE_MARGIN)
}

/// Part of a cached copy, from [`DiskCache::get_range`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedRange {
    /// The bytes asked for, or fewer if the file ends before them.
    pub bytes: Bytes,
    /// Length of the whole file: a copy of another length than its object is damaged.
    pub file_len: u64,
    /// The copy waits for upload (it is the block's only copy).
    pub staged: bool,
}

/// What the cache holds, for logs and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheUsage {
    /// Entries that are also in the bucket.
    pub clean_count: u64,
    /// Their bytes.
    pub clean_bytes: u64,
    /// Entries waiting for upload.
    pub staged_count: u64,
    /// Their bytes.
    pub staged_bytes: u64,
    /// The configured capacity.
    pub capacity: u64,
}

/// The on-disk cache of stored block objects. Cheap to clone (shared). See the module doc.
#[derive(Clone)]
pub struct DiskCache {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for DiskCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskCache")
            .field("dir", &self.shared.dir)
            .field("usage", &self.usage())
            .finish()
    }
}

struct Shared {
    dir: PathBuf,
    capacity: u64,
    index: Mutex<Index>,
    /// Woken whenever a staged entry is uploaded or removed.
    staged_done: Notify,
    /// The flock; None once released.
    lock: Mutex<Option<File>>,
    tmp_counter: AtomicU64,
    /// Copies written behind reads ([`DiskCache::insert_behind`]).
    behind: Arc<tokio::sync::Semaphore>,
    /// Whether copies behind reads are written with `O_DIRECT`; cleared for good when the
    /// folder's filesystem refuses it.
    direct: AtomicBool,
    /// Page-aligned buffers of direct writes, kept for the next ones.
    direct_buffers: Mutex<Vec<Vec<u8>>>,
    /// Buffers that whole entries are read into.
    pool: OnceLock<Arc<BufferPool>>,
    /// Filesystem space as tests want it seen.
    #[cfg(test)]
    fake_space: Mutex<Option<Space>>,
}

#[derive(Clone, Copy, Debug)]
struct Space {
    avail: u64,
    total: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Clean,
    Staged,
}

impl State {
    fn folder(self) -> &'static str {
        match self {
            State::Clean => CLEAN,
            State::Staged => STAGED,
        }
    }
}

struct Entry {
    len: u64,
    state: State,
    /// Last use (clean) or staging order (staged): a key of `lru` or `staged`.
    tick: u64,
}

#[derive(Default)]
struct Index {
    entries: HashMap<String, Entry>,
    lru: BTreeMap<u64, String>,
    staged: BTreeMap<u64, String>,
    clock: u64,
    clean_bytes: u64,
    staged_bytes: u64,
    /// Bytes being written, counted against the capacity before they land.
    reserved: u64,
    /// Released: no more changes to the folder.
    closed: bool,
}

impl Index {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn remove(&mut self, path: &str) -> Option<Entry> {
        let entry = self.entries.remove(path)?;
        match entry.state {
            State::Clean => {
                self.lru.remove(&entry.tick);
                self.clean_bytes -= entry.len;
            }
            State::Staged => {
                self.staged.remove(&entry.tick);
                self.staged_bytes -= entry.len;
            }
        }
        Some(entry)
    }

    fn insert(&mut self, path: &str, len: u64, state: State) {
        self.remove(path);
        let tick = self.tick();
        match state {
            State::Clean => {
                self.lru.insert(tick, path.to_string());
                self.clean_bytes += len;
            }
            State::Staged => {
                self.staged.insert(tick, path.to_string());
                self.staged_bytes += len;
            }
        }
        self.entries
            .insert(path.to_string(), Entry { len, state, tick });
    }

    fn touch(&mut self, path: &str) {
        let tick = self.clock + 1;
        if let Some(entry) = self.entries.get_mut(path) {
            if entry.state == State::Clean {
                if let Some(p) = self.lru.remove(&entry.tick) {
                    entry.tick = tick;
                    self.lru.insert(tick, p);
                    self.clock = tick;
                }
            }
        }
    }

    /// Removes least recently used clean entries worth at least `bytes` (or all of them).
    fn evict(&mut self, bytes: u64) -> (Vec<String>, u64) {
        let (mut victims, mut freed) = (Vec::new(), 0);
        while freed < bytes {
            let Some((_, path)) = self.lru.pop_first() else {
                break;
            };
            if let Some(entry) = self.entries.remove(&path) {
                self.clean_bytes -= entry.len;
                freed += entry.len;
            }
            victims.push(path);
        }
        (victims, freed)
    }
}

/// `path` as one file name: `%` and `/` escaped.
fn file_name(path: &str) -> String {
    path.replace('%', "%25").replace('/', "%2F")
}

/// The object path of a file name, or None if the name is not one we write.
fn object_path(name: &str) -> Option<String> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        match rest.get(at..at + 3) {
            Some("%25") => out.push('%'),
            Some("%2F") => out.push('/'),
            _ => return None,
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    (!out.is_empty()).then_some(out)
}

fn shard(path: &str) -> String {
    format!("{:02x}", crc32c::crc32c(path.as_bytes()) & 0xff)
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

// The statvfs fields are u32 on some targets.
#[allow(clippy::useless_conversion)]
fn fs_space(dir: &Path) -> io::Result<Space> {
    let c = CString::new(dir.as_os_str().as_bytes())?;
    // SAFETY: statvfs writes into the zeroed struct we own; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let unit = u64::from(st.f_frsize);
    Ok(Space {
        avail: u64::from(st.f_bavail).saturating_mul(unit),
        total: u64::from(st.f_blocks).saturating_mul(unit),
    })
}

/// `len` bytes of `file` at `offset`, read into a new buffer without zeroing it first (a random
/// read from the cache reads a 64 KiB frame for a 4 KiB answer: zeroing it cost as much as the
/// checksum). Fails with `UnexpectedEof` if the file ends first.
fn read_exact_at_fresh(file: &File, len: usize, offset: u64) -> io::Result<Vec<u8>> {
    let mut buf: Vec<u8> = Vec::with_capacity(len);
    read_exact_at_into(file, &mut buf, len, offset)?;
    Ok(buf)
}

/// As [`read_exact_at_fresh`], into an empty `buf` (a pooled one), grown if it is too small.
fn read_exact_at_into(file: &File, buf: &mut Vec<u8>, len: usize, offset: u64) -> io::Result<()> {
    buf.clear();
    buf.reserve_exact(len);
    while buf.len() < len {
        let done = buf.len();
        let spare = &mut buf.spare_capacity_mut()[..len - done];
        // SAFETY: pread writes at most `spare.len()` bytes into the vector's spare capacity,
        // which is valid for writes of that many bytes; `set_len` below only counts the bytes
        // pread reports as written.
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                spare.as_mut_ptr().cast(),
                spare.len(),
                (offset + done as u64) as libc::off_t,
            )
        };
        match n {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n if n < 0 => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            // SAFETY: the first `done + n` bytes are initialized (see above).
            n => unsafe { buf.set_len(done + n as usize) },
        }
    }
    Ok(())
}

/// The whole file at `path`: into a buffer of `pool` when it is of block size.
fn read_whole(path: &Path, pool: Option<&Arc<BufferPool>>) -> io::Result<Bytes> {
    let file = File::open(path)?;
    let len = usize::try_from(file.metadata()?.len()).map_err(io::Error::other)?;
    let mut buf = pool.and_then(|p| p.take(len)).unwrap_or_default();
    read_exact_at_into(&file, &mut buf, len, 0)?;
    Ok(match pool {
        Some(pool) => pool.freeze(buf),
        None => Bytes::from(buf),
    })
}

fn closed() -> io::Error {
    io::Error::other("the disk cache was closed")
}

fn open_error(dir: &Path, what: &str, e: io::Error) -> BlockError {
    BlockError::BadConfig {
        message: format!(
            "cannot use the cache folder {}: {what}: {e}; check the path and its permissions or \
             choose another --cache-dir",
            dir.display()
        ),
    }
}

/// Takes the folder's lock, or says who holds it.
fn take_lock(dir: &Path) -> Result<File, BlockError> {
    let path = dir.join(LOCK);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| open_error(dir, "open its lock file", e))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(open_error(dir, "lock it", err));
        }
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let holder = match holder.trim() {
            "" => String::new(),
            pid => format!(" (pid {pid})"),
        };
        return Err(BlockError::BadConfig {
            message: format!(
                "the cache folder {} is in use by another cairn process{holder}: two processes \
                 cannot share a cache folder; give each mount its own --cache-dir",
                dir.display()
            ),
        });
    }
    let pid = format!("{}\n", std::process::id());
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| file.write_all(pid.as_bytes()))
        .map_err(|e| open_error(dir, "write its lock file", e))?;
    Ok(file)
}

/// Files of one state folder: (object path, length, mtime). Removes what we did not write.
fn scan(dir: &Path, state: State) -> io::Result<Vec<(String, u64, SystemTime)>> {
    let mut found = Vec::new();
    for folder in fs::read_dir(dir.join(state.folder()))? {
        let folder = folder?;
        if !folder.file_type()?.is_dir() {
            continue;
        }
        for file in fs::read_dir(folder.path())? {
            let file = file?;
            let meta = file.metadata()?;
            let name = file.file_name();
            let path = name.to_str().and_then(object_path);
            match path {
                Some(path)
                    if meta.is_file()
                        && folder.file_name().to_str() == Some(shard(&path).as_str()) =>
                {
                    let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                    found.push((path, meta.len(), mtime));
                }
                _ if state == State::Clean => {
                    let _ = fs::remove_file(file.path());
                }
                _ => tracing::warn!(
                    file = %file.path().display(),
                    "unexpected file in the writeback folder of the disk cache; leaving it alone"
                ),
            }
        }
    }
    found.sort_by_key(|(_, _, mtime)| *mtime);
    Ok(found)
}

impl DiskCache {
    /// Opens (creating if needed) the cache folder `dir`: takes its lock, empties `tmp/`, and
    /// rebuilds the index by listing the folder. Evicts down to `capacity` if it holds more.
    pub fn open(dir: &Path, capacity: u64) -> Result<DiskCache, BlockError> {
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        fs::create_dir_all(&dir).map_err(|e| open_error(&dir, "create it", e))?;
        if !dir.join(MARKER).exists() {
            let used = fs::read_dir(&dir)
                .map_err(|e| open_error(&dir, "list it", e))?
                .next()
                .is_some();
            if used {
                return Err(BlockError::BadConfig {
                    message: format!(
                        "{} is not empty and is not a cairn cache folder: give --cache-dir a new \
                         or empty folder",
                        dir.display()
                    ),
                });
            }
            fs::write(dir.join(MARKER), MARKER_TEXT)
                .map_err(|e| open_error(&dir, "write its marker file", e))?;
        }
        let lock = take_lock(&dir)?;
        let prepare = || -> io::Result<()> {
            for state in [State::Clean, State::Staged] {
                let folder = dir.join(state.folder());
                let mut created = false;
                for i in 0..=255u8 {
                    let sub = folder.join(format!("{i:02x}"));
                    if !sub.is_dir() {
                        fs::create_dir_all(&sub)?;
                        created = true;
                    }
                }
                if created && state == State::Staged {
                    // Staged files are fsynced into these folders: the folders must last too.
                    fsync_dir(&folder)?;
                    fsync_dir(&dir)?;
                }
            }
            let tmp = dir.join(TMP);
            let _ = fs::remove_dir_all(&tmp);
            fs::create_dir_all(&tmp)
        };
        prepare().map_err(|e| open_error(&dir, "prepare it", e))?;
        let clean = scan(&dir, State::Clean).map_err(|e| open_error(&dir, "list it", e))?;
        let staged = scan(&dir, State::Staged).map_err(|e| open_error(&dir, "list it", e))?;

        let mut index = Index::default();
        for (path, len, _) in staged {
            index.insert(&path, len, State::Staged);
        }
        for (path, len, _) in clean {
            if index.entries.contains_key(&path) {
                // Staged wins: an upload whose rename into clean/ was not finished.
                let _ = fs::remove_file(dir.join(CLEAN).join(shard(&path)).join(file_name(&path)));
            } else {
                index.insert(&path, len, State::Clean);
            }
        }
        let cache = DiskCache {
            shared: Arc::new(Shared {
                dir,
                capacity,
                index: Mutex::new(index),
                staged_done: Notify::new(),
                lock: Mutex::new(Some(lock)),
                tmp_counter: AtomicU64::new(0),
                behind: Arc::new(tokio::sync::Semaphore::new(BEHIND)),
                direct: AtomicBool::new(true),
                direct_buffers: Mutex::default(),
                pool: OnceLock::new(),
                #[cfg(test)]
                fake_space: Mutex::new(None),
            }),
        };
        let over = {
            let ix = cache.index();
            (ix.clean_bytes + ix.staged_bytes).saturating_sub(capacity)
        };
        if over > 0 {
            let (victims, _) = cache.index().evict(over);
            cache.unlink(State::Clean, &victims);
        }
        let usage = cache.usage();
        tracing::debug!(dir = %cache.dir().display(), ?usage, "disk cache opened");
        Ok(cache)
    }

    /// The cache folder.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// The most bytes it holds.
    pub fn capacity(&self) -> u64 {
        self.shared.capacity
    }

    /// What the cache holds.
    pub fn usage(&self) -> CacheUsage {
        let ix = self.index();
        CacheUsage {
            clean_count: ix.lru.len() as u64,
            clean_bytes: ix.clean_bytes,
            staged_count: ix.staged.len() as u64,
            staged_bytes: ix.staged_bytes,
            capacity: self.shared.capacity,
        }
    }

    /// Object paths of the staged entries, oldest first (the order to upload them in).
    pub fn staged_paths(&self) -> Vec<String> {
        self.index().staged.values().cloned().collect()
    }

    /// Whether `path` is cached (clean or staged). Does not mark it as used.
    pub fn contains(&self, path: &str) -> bool {
        let ix = self.index();
        !ix.closed && ix.entries.contains_key(path)
    }

    /// The stored bytes of `path` if cached, and whether they are staged (not uploaded yet).
    /// Marks a clean entry as used. A read error counts as a miss.
    pub async fn get(&self, path: &str) -> Option<(Bytes, bool)> {
        let pool = self.shared.pool.get().cloned();
        self.read_entry(path, move |file| read_whole(&file, pool.as_ref()))
            .await
    }

    /// Whole entries of block size are read into buffers of `pool` ([`crate::pool`]). Set
    /// once; later calls are ignored.
    pub(crate) fn use_pool(&self, pool: Arc<BufferPool>) {
        let _ = self.shared.pool.set(pool);
    }

    /// Stored bytes `range` of the cached copy of `path` (fewer if the file is shorter), read
    /// without the rest of the file: for random reads, which need a block's table and a frame
    /// or two, not the whole block. Marks a clean entry as used; a read error counts as a miss.
    pub async fn get_range(&self, path: &str, range: Range<u64>) -> Option<CachedRange> {
        let read = move |file: PathBuf| -> io::Result<(Bytes, u64)> {
            let file = File::open(file)?;
            let file_len = file.metadata()?.len();
            let end = range.end.min(file_len);
            let start = range.start.min(end);
            let buf = read_exact_at_fresh(&file, (end - start) as usize, start)?;
            Ok((Bytes::from(buf), file_len))
        };
        let ((bytes, file_len), staged) = self.read_entry(path, read).await?;
        Some(CachedRange {
            bytes,
            file_len,
            staged,
        })
    }

    /// Runs `read` on the file of `path`'s entry, off the async threads, and says whether the
    /// entry is staged. Marks a clean entry as used. A read error counts as a miss; a missing
    /// file is dropped from the index.
    async fn read_entry<T: Send + 'static>(
        &self,
        path: &str,
        read: impl Fn(PathBuf) -> io::Result<T> + Clone + Send + 'static,
    ) -> Option<(T, bool)> {
        // Twice: an upload may move the file from staged/ to clean/ between lookup and read.
        for _ in 0..2 {
            let state = {
                let mut ix = self.index();
                if ix.closed {
                    return None;
                }
                let state = ix.entries.get(path)?.state;
                ix.touch(path);
                state
            };
            let (file, read) = (self.file(state, path), read.clone());
            match blocking(move || read(file)).await {
                Ok(value) => return Some((value, state == State::Staged)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    let mut ix = self.index();
                    if ix.entries.get(path).map(|e| e.state) != Some(state) {
                        continue;
                    }
                    tracing::warn!(
                        path,
                        dir = %self.dir().display(),
                        "a cached block file is missing; dropping it from the disk cache"
                    );
                    ix.remove(path);
                    drop(ix);
                    self.shared.staged_done.notify_waiters();
                    return None;
                }
                Err(e) => {
                    tracing::warn!(
                        path,
                        dir = %self.dir().display(),
                        error = %e,
                        "cannot read a block from the disk cache; reading it from the object store"
                    );
                    return None;
                }
            }
        }
        None
    }

    /// The bytes of a staged entry, to upload: None if it is not staged (any more).
    pub async fn read_staged(&self, path: &str) -> io::Result<Option<Bytes>> {
        {
            let ix = self.index();
            if ix.closed || ix.entries.get(path).map(|e| e.state) != Some(State::Staged) {
                return Ok(None);
            }
        }
        let file = self.file(State::Staged, path);
        match blocking(move || fs::read(file)).await {
            Ok(bytes) => Ok(Some(Bytes::from(bytes))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Keeps a copy of an object that is in the bucket. Best effort: false if it was not cached
    /// (no room, an I/O error, or already cached).
    pub async fn insert(&self, path: &str, stored: Bytes) -> bool {
        self.copy(path, stored, false).await
    }

    async fn copy(&self, path: &str, stored: Bytes, direct: bool) -> bool {
        {
            let ix = self.index();
            if ix.closed || ix.entries.contains_key(path) {
                return false;
            }
        }
        let (this, path) = (self.clone(), path.to_string());
        match blocking(move || this.write_entry(&path, &stored, State::Clean, direct)).await {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(error = %e, "block not cached on disk");
                false
            }
        }
    }

    /// Keeps a copy of an object just read from the bucket, written by a task of its own, so
    /// that the read never waits for the disk: at most `BEHIND` (8) such copies at once, and none
    /// when they are all under way (the block is copied the next time it is read); with
    /// `O_DIRECT` where the filesystem takes it (module doc). Best effort, as
    /// [`DiskCache::insert`]. Four cold readers of 512 MiB each, SeaweedFS on the same disk and
    /// two cores: 340-347 MB/s with each block's read waiting for its copy, 418-420 with the
    /// copies behind the reads; then 435-482 MB/s written directly against 371-465 through the
    /// page cache, one reader 423-443 against 310-384, with half the mount's CPU.
    pub fn insert_behind(&self, path: &str, stored: Bytes) {
        match Arc::clone(&self.shared.behind).try_acquire_owned() {
            Ok(permit) => self.copy_behind(permit, path, stored),
            Err(_) => tracing::trace!(path, "disk cache busy; block not copied"),
        }
    }

    /// Keeps a copy of an object just read from the bucket whose bytes the kernel gets with the
    /// read (a random reader's file copied whole and handed over block by block): written by a
    /// task of its own and with `O_DIRECT`, as [`DiskCache::insert_behind`], but never skipped
    /// (this waits for one of its slots instead). Through the page cache, the copy of a 2 GiB
    /// file cost the mount 4-5 s more CPU and the reader reached the speed of memory at the 7th
    /// second instead of the 4th. Best effort, as [`DiskCache::insert`].
    pub async fn keep_behind(&self, path: &str, stored: Bytes) {
        let permit = Arc::clone(&self.shared.behind)
            .acquire_owned()
            .await
            .expect("never closed");
        self.copy_behind(permit, path, stored);
    }

    /// The direct copy of [`DiskCache::insert_behind`] and [`DiskCache::keep_behind`], on a task
    /// that holds one of their slots until it is written.
    fn copy_behind(&self, slot: tokio::sync::OwnedSemaphorePermit, path: &str, stored: Bytes) {
        let (this, path) = (self.clone(), path.to_string());
        tokio::spawn(async move {
            this.copy(&path, stored, true).await;
            drop(slot);
        });
    }

    /// Waits until the copies written behind reads so far are written (or dropped).
    pub async fn settle(&self) {
        let _all = self
            .shared
            .behind
            .acquire_many(BEHIND as u32)
            .await
            .expect("never closed");
    }

    /// Writes an object to upload durably (see the module doc); it is never evicted until
    /// [`DiskCache::mark_uploaded`]. Fails when it does not fit or on an I/O error: the caller
    /// then uploads directly.
    pub async fn stage(&self, path: &str, stored: Bytes) -> io::Result<()> {
        let (this, path) = (self.clone(), path.to_string());
        blocking(move || this.write_entry(&path, &stored, State::Staged, false)).await
    }

    /// After the upload of a staged entry: it becomes a clean entry. False if it was removed in
    /// the meantime (then the uploaded object is garbage).
    pub async fn mark_uploaded(&self, path: &str) -> bool {
        let (this, path) = (self.clone(), path.to_string());
        let marked = blocking(move || {
            let mut ix = this.index();
            if ix.closed {
                // The file stays staged; the next opener uploads it again (a no-op).
                return true;
            }
            match ix.entries.get(&path) {
                Some(e) if e.state == State::Staged => {}
                _ => return false,
            }
            let entry = ix.remove(&path).expect("entry checked above");
            let (from, to) = (
                this.file(State::Staged, &path),
                this.file(State::Clean, &path),
            );
            // Under the lock, so that a concurrent remove or stage sees one state. A rename is
            // a quick metadata operation.
            match fs::rename(&from, &to) {
                Ok(()) => ix.insert(&path, entry.len, State::Clean),
                Err(e) => {
                    tracing::debug!(error = %e, path, "cannot move an uploaded block to clean/");
                    let _ = fs::remove_file(&from);
                }
            }
            true
        })
        .await;
        self.shared.staged_done.notify_waiters();
        marked
    }

    /// Drops `path` from the cache, staged or clean. Returns whether it was staged; None if it
    /// was not cached.
    pub async fn remove(&self, path: &str) -> Option<bool> {
        let entry = {
            let mut ix = self.index();
            if ix.closed {
                return None;
            }
            ix.remove(path)?
        };
        let staged = entry.state == State::Staged;
        if staged {
            self.shared.staged_done.notify_waiters();
        }
        let file = self.file(entry.state, path);
        blocking(move || {
            let _ = fs::remove_file(file);
        })
        .await;
        Some(staged)
    }

    /// Waits until every entry staged before this call is uploaded or removed (or the cache is
    /// released).
    pub async fn wait_staged(&self) {
        let mark = self.index().clock;
        loop {
            let notified = self.shared.staged_done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let ix = self.index();
                if ix.closed || ix.staged.first_key_value().is_none_or(|(t, _)| *t > mark) {
                    return;
                }
            }
            notified.await;
        }
    }

    /// Releases the folder's lock: another process (or another `open` in this one) may use it.
    /// Nothing in the folder changes through this handle afterwards.
    pub fn release(&self) {
        self.index().closed = true;
        self.shared
            .lock
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        self.shared.staged_done.notify_waiters();
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        self.shared.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn file(&self, state: State, path: &str) -> PathBuf {
        self.shared
            .dir
            .join(state.folder())
            .join(shard(path))
            .join(file_name(path))
    }

    fn unlink(&self, state: State, paths: &[String]) {
        for path in paths {
            let _ = fs::remove_file(self.file(state, path));
        }
    }

    fn space(&self) -> io::Result<Space> {
        #[cfg(test)]
        if let Some(space) = *self.shared.fake_space.lock().unwrap() {
            return Ok(space);
        }
        fs_space(&self.shared.dir)
    }

    /// The file of the entry of `path`, for tests that damage it.
    #[cfg(test)]
    pub(crate) fn entry_file(&self, path: &str) -> Option<PathBuf> {
        let state = self.index().entries.get(path)?.state;
        Some(self.file(state, path))
    }

    /// Pretends the filesystem has `avail` of `total` bytes free, for tests.
    #[cfg(test)]
    pub(crate) fn fake_space(&self, avail: u64, total: u64) {
        *self.shared.fake_space.lock().unwrap() = Some(Space { avail, total });
    }

    /// Evicts clean entries so that `len` more bytes fit (module doc), and reserves them.
    /// Blocking.
    fn make_room(&self, len: u64, state: State) -> io::Result<()> {
        // Without statvfs, only the capacity bounds the cache.
        let space = self.space().ok();
        let capacity = self.shared.capacity;
        let (victims, result) = {
            let mut ix = self.index();
            if ix.closed {
                return Err(closed());
            }
            let used = ix.clean_bytes + ix.staged_bytes + ix.reserved;
            if state == State::Staged && ix.staged_bytes + ix.reserved + len > capacity {
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    format!(
                        "the disk cache holds {} bytes of blocks waiting for upload, and its \
                         capacity is {capacity} bytes",
                        ix.staged_bytes
                    ),
                ));
            }
            let over_capacity = (used + len).saturating_sub(capacity);
            if over_capacity > ix.clean_bytes {
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    "the disk cache is full",
                ));
            }
            let short = space.map_or(0, |s| {
                (free_space_margin(s.total) + len).saturating_sub(s.avail)
            });
            let (victims, freed) = ix.evict(over_capacity.max(short));
            let result = if freed < short {
                Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    format!(
                        "the filesystem of the disk cache is nearly full (the cache keeps {} bytes \
                         free)",
                        space.map_or(0, |s| free_space_margin(s.total))
                    ),
                ))
            } else {
                ix.reserved += len;
                Ok(())
            };
            (victims, result)
        };
        self.unlink(State::Clean, &victims);
        result
    }

    /// Writes `stored` into a new file `tmp`, durably if `sync`; with `direct`, with `O_DIRECT`
    /// where the filesystem takes it (the bytes go from a reused buffer to the disk, not through
    /// the page cache).
    fn write_file(&self, tmp: &Path, stored: &[u8], sync: bool, direct: bool) -> io::Result<()> {
        if direct && self.shared.direct.load(Ordering::Relaxed) {
            match self.write_direct(tmp, stored) {
                Ok(f) => return if sync { f.sync_all() } else { Ok(()) },
                // EINVAL: this filesystem (or its alignment) refuses direct I/O.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::debug!(
                        dir = %self.shared.dir.display(), error = %e,
                        "direct writes refused; the disk cache writes through the page cache"
                    );
                    self.shared.direct.store(false, Ordering::Relaxed);
                    let _ = fs::remove_file(tmp);
                }
                Err(e) => return Err(e),
            }
        }
        let mut f = File::create(tmp)?;
        f.write_all(stored)?;
        if sync {
            f.sync_all()?;
        }
        Ok(())
    }

    /// [`DiskCache::write_file`] with `O_DIRECT`, written padded to a whole page and the file
    /// cut back to its length. The whole pages of `stored` go to the disk from where they are
    /// when it starts on a page (blocks fetched into the buffer pool do: large allocations are
    /// page-aligned); the rest, or all of an unaligned `stored`, is copied into a page-aligned
    /// buffer first. That copy was a ninth of the mount's CPU in a cold sequential read
    /// (docs/benchmarks.md, data item 37).
    fn write_direct(&self, tmp: &Path, stored: &[u8]) -> io::Result<File> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DIRECT)
            .open(tmp)?;
        let in_place = if stored.as_ptr().align_offset(DIRECT_ALIGN) == 0 {
            stored.len() - stored.len() % DIRECT_ALIGN
        } else {
            0
        };
        f.write_all(&stored[..in_place])?;
        let rest = &stored[in_place..];
        if rest.is_empty() {
            return Ok(f);
        }
        let padded = rest.len().next_multiple_of(DIRECT_ALIGN);
        let mut buf = self.direct_buffer(padded);
        let at = buf.as_ptr().align_offset(DIRECT_ALIGN);
        let page = &mut buf[at..at + padded];
        page[..rest.len()].copy_from_slice(rest);
        page[rest.len()..].fill(0);
        let written = f.write_all(page);
        self.return_direct_buffer(buf);
        written?;
        if padded != rest.len() {
            f.set_len(stored.len() as u64)?;
        }
        Ok(f)
    }

    /// A buffer that holds `len` bytes from its first page-aligned byte on.
    fn direct_buffer(&self, len: usize) -> Vec<u8> {
        let mut kept = self
            .shared
            .direct_buffers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let fits = |b: &Vec<u8>| b.len() - b.as_ptr().align_offset(DIRECT_ALIGN) >= len;
        match kept.iter().position(fits) {
            Some(i) => kept.swap_remove(i),
            None => vec![0u8; len + DIRECT_ALIGN],
        }
    }

    fn return_direct_buffer(&self, buf: Vec<u8>) {
        let mut kept = self
            .shared
            .direct_buffers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if kept.len() < DIRECT_BUFFERS {
            kept.push(buf);
        }
    }

    /// Writes an entry (module doc) and indexes it. Blocking.
    fn write_entry(&self, path: &str, stored: &[u8], state: State, direct: bool) -> io::Result<()> {
        let len = stored.len() as u64;
        self.make_room(len, state)?;
        let dest = self.file(state, path);
        let n = self.shared.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self.shared.dir.join(TMP).join(n.to_string());
        let mut written = self
            .write_file(&tmp, stored, state == State::Staged, direct)
            .and_then(|()| fs::rename(&tmp, &dest));
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        } else if state == State::Staged {
            written = fsync_dir(dest.parent().expect("entry files are in a shard folder"));
            if written.is_err() {
                // Not known to be durable: not staged.
                let _ = fs::remove_file(&dest);
            }
        }
        let mut ix = self.index();
        ix.reserved -= len;
        written?;
        if ix.closed {
            return Err(closed());
        }
        match ix.entries.get(path).map(|e| e.state) {
            Some(State::Staged) if state == State::Clean => {
                // Staged copies win over clean ones.
                drop(ix);
                let _ = fs::remove_file(&dest);
                return Ok(());
            }
            Some(State::Clean) if state == State::Staged => {
                ix.remove(path);
                let _ = fs::remove_file(self.file(State::Clean, path));
            }
            _ => {}
        }
        ix.insert(path, len, state);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(n: usize, fill: u8) -> Bytes {
        Bytes::from(vec![fill; n])
    }

    #[test]
    fn reads_at_an_offset_without_zeroing_and_refuses_a_short_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        fs::write(&path, &data).unwrap();
        let file = File::open(&path).unwrap();
        for (len, at) in [
            (0, 0),
            (1, 0),
            (65_536, 4_096),
            (100_000, 99_999),
            (1, 199_999),
        ] {
            let got = read_exact_at_fresh(&file, len, at as u64).unwrap();
            assert_eq!(got, &data[at..at + len], "{len} bytes at {at}");
        }
        let e = read_exact_at_fresh(&file, 10, 199_995).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn names_round_trip() {
        for path in [
            "4a9d/vol1/00000000000004d2/1f.0000000000000007",
            "a%2Fb/c",
            "%",
            "x",
        ] {
            let name = file_name(path);
            assert!(!name.contains('/'), "{name}");
            assert_eq!(object_path(&name).as_deref(), Some(path));
        }
        assert_eq!(object_path("a%2"), None);
        assert_eq!(object_path("a%41"), None);
        assert_eq!(object_path(""), None);
    }

    #[test]
    fn margin_is_ten_percent_up_to_one_gib() {
        assert_eq!(free_space_margin(1 << 30), (1 << 30) / 10);
        assert_eq!(free_space_margin(5 << 30), 1 << 29);
        assert_eq!(free_space_margin(100 << 30), 1 << 30);
    }

    /// `data` in a buffer that starts on a page.
    fn page_aligned(data: &[u8]) -> Bytes {
        let mut buf = Vec::<u8>::with_capacity(data.len() + DIRECT_ALIGN);
        let at = buf.as_ptr().align_offset(DIRECT_ALIGN);
        buf.resize(at, 0);
        buf.extend_from_slice(data);
        let bytes = Bytes::from(buf).slice(at..);
        assert_eq!(bytes.as_ptr().align_offset(DIRECT_ALIGN), 0);
        bytes
    }

    /// Entries of every length round-trip byte for byte, written directly (padded to a page,
    /// then cut back; from a buffer that starts on a page or not) and through the page cache
    /// alike, clean and staged, also when the filesystem refuses direct writes; the buffers kept
    /// for direct writes stay within their bound, and nothing is left in tmp/.
    #[tokio::test]
    async fn entries_of_any_length_round_trip_direct_or_not() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 1 << 30).unwrap();
        let lens = [0, 1, 511, 4095, 4096, 4097, 65_536 + 7, (4 << 20) + 123];
        for direct in [true, false] {
            for (i, len) in lens.into_iter().enumerate() {
                let data: Vec<u8> = (0..len).map(|j| (j * 7 + i) as u8).collect();
                let (clean, staged) = (format!("c{direct}{i}"), format!("s{direct}{i}"));
                if direct {
                    cache.keep_behind(&clean, Bytes::from(data.clone())).await;
                    // Starting on a page: its whole pages are written from where they are.
                    let aligned = format!("a{i}");
                    cache.keep_behind(&aligned, page_aligned(&data)).await;
                    cache.settle().await;
                    let (got, _) = cache.get(&aligned).await.expect("the entry is there");
                    assert!(got == data, "{aligned}: other bytes came back");
                    let on_disk = fs::metadata(cache.file(State::Clean, &aligned)).unwrap();
                    assert_eq!(on_disk.len(), len as u64, "{aligned}");
                } else {
                    assert!(cache.insert(&clean, Bytes::from(data.clone())).await);
                }
                cache
                    .stage(&staged, Bytes::from(data.clone()))
                    .await
                    .unwrap();
                for (p, state) in [(&clean, State::Clean), (&staged, State::Staged)] {
                    let (got, was_staged) = cache.get(p).await.expect("the entry is there");
                    assert_eq!(
                        (got.len(), was_staged),
                        (len, state == State::Staged),
                        "{p}"
                    );
                    assert!(got == data, "{p}: other bytes came back");
                    let on_disk = fs::metadata(cache.file(state, p)).unwrap().len();
                    assert_eq!(on_disk, len as u64, "{p}");
                }
            }
        }
        assert!(
            cache.shared.direct.load(Ordering::Relaxed),
            "direct writes were refused"
        );
        assert!(cache.shared.direct_buffers.lock().unwrap().len() <= DIRECT_BUFFERS);
        // Refused by the filesystem: through the page cache.
        cache.shared.direct.store(false, Ordering::Relaxed);
        let data = Bytes::from(vec![7u8; 5000]);
        cache.keep_behind("refused", data.clone()).await;
        cache.settle().await;
        assert!(cache.get("refused").await.unwrap().0 == data);
        assert_eq!(
            fs::read_dir(dir.path().join(TMP)).unwrap().count(),
            0,
            "files left in tmp/"
        );
    }

    #[tokio::test]
    async fn least_recently_used_clean_entries_go_first() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 3000).unwrap();
        for p in ["a", "b", "c"] {
            assert!(cache.insert(p, bytes(1000, 1)).await);
        }
        // "a" is used, so "b" is the least recently used when "d" needs room.
        assert!(cache.get("a").await.is_some());
        assert!(cache.insert("d", bytes(1000, 2)).await);
        assert!(cache.get("b").await.is_none());
        for p in ["a", "c", "d"] {
            assert!(cache.get(p).await.is_some(), "{p}");
        }
        let usage = cache.usage();
        assert_eq!((usage.clean_count, usage.clean_bytes), (3, 3000));
        assert!(!cache.file(State::Clean, "b").exists());
        // Larger than the capacity: not cached, nothing evicted for it.
        assert!(!cache.insert("huge", bytes(4000, 3)).await);
        assert_eq!(cache.usage().clean_count, 3);

        // The index is rebuilt from the folder (in mtime order: set it, as timestamps are
        // coarse), and a smaller capacity evicts at open.
        for (p, secs) in [("a", 100), ("c", 200), ("d", 300)] {
            let file = File::options()
                .write(true)
                .open(cache.entry_file(p).unwrap())
                .unwrap();
            let mtime = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs);
            file.set_modified(mtime).unwrap();
        }
        drop(cache);
        let cache = DiskCache::open(dir.path(), 2000).unwrap();
        assert_eq!(cache.usage().clean_bytes, 2000);
        assert!(cache.get("a").await.is_none(), "the oldest goes");
        assert!(cache.get("c").await.is_some() && cache.get("d").await.is_some());
    }

    #[tokio::test]
    async fn staged_entries_are_not_evicted_and_bound_the_backlog() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 3000).unwrap();
        cache.stage("s1", bytes(1000, 1)).await.unwrap();
        cache.stage("s2", bytes(1000, 1)).await.unwrap();
        assert!(cache.insert("c1", bytes(1000, 1)).await);
        // Staging evicts the clean entry; then staging more than the capacity fails.
        cache.stage("s3", bytes(1000, 1)).await.unwrap();
        assert!(cache.get("c1").await.is_none());
        let err = cache.stage("s4", bytes(1000, 1)).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull, "{err}");
        assert!(!cache.insert("c2", bytes(10, 1)).await);
        assert_eq!(cache.staged_paths(), ["s1", "s2", "s3"]);
        assert!(cache.get("s2").await.unwrap().1, "staged");

        assert!(cache.mark_uploaded("s1").await);
        assert!(!cache.get("s1").await.unwrap().1, "clean after the upload");
        assert!(cache.file(State::Clean, "s1").exists());
        assert_eq!(cache.remove("s2").await, Some(true));
        assert!(
            !cache.mark_uploaded("s2").await,
            "removed before its upload finished"
        );
        let usage = cache.usage();
        assert_eq!((usage.staged_count, usage.clean_count), (1, 1));
    }

    #[tokio::test]
    async fn free_space_margin_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 1 << 40).unwrap();
        for p in ["a", "b", "c"] {
            assert!(cache.insert(p, bytes(1000, 1)).await);
        }
        // 100 GiB filesystem: the margin is 1 GiB. 1500 bytes short: two entries go.
        let total = 100 << 30;
        cache.fake_space((1 << 30) - 500, total);
        assert!(cache.insert("d", bytes(1000, 1)).await);
        assert_eq!(cache.usage().clean_count, 2);
        assert!(cache.get("a").await.is_none() && cache.get("b").await.is_none());
        // Far too little space: everything clean goes, and nothing can be staged.
        cache.fake_space(1000, total);
        let err = cache.stage("s", bytes(1000, 1)).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull, "{err}");
        assert_eq!(
            cache.usage(),
            CacheUsage {
                capacity: 1 << 40,
                ..Default::default()
            }
        );
    }

    #[tokio::test]
    async fn wait_staged_returns_once_earlier_entries_are_done() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 1 << 20).unwrap();
        cache.wait_staged().await;
        cache.stage("a", bytes(10, 1)).await.unwrap();
        cache.stage("b", bytes(10, 1)).await.unwrap();
        let waiter = tokio::spawn({
            let cache = cache.clone();
            async move { cache.wait_staged().await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        assert!(cache.mark_uploaded("a").await);
        // Staged after the wait began: not waited for.
        cache.stage("c", bytes(10, 1)).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        cache.remove("b").await;
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
    }

    #[test]
    fn one_process_per_folder() {
        let dir = tempfile::tempdir().unwrap();
        let first = DiskCache::open(dir.path(), 1 << 20).unwrap();
        let err = DiskCache::open(dir.path(), 1 << 20)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!(
                "the cache folder {} is in use by another cairn process (pid {})",
                dir.path().display(),
                std::process::id()
            )),
            "{err}"
        );
        first.release();
        DiskCache::open(dir.path(), 1 << 20).unwrap();
    }

    #[test]
    fn a_folder_that_is_not_a_cache_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("precious"), b"x").unwrap();
        let err = DiskCache::open(dir.path(), 1 << 20)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("is not empty and is not a cairn cache folder"),
            "{err}"
        );
        assert!(dir.path().join("precious").exists());
    }
}
