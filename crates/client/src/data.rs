//! The client core: namespace calls, and the write buffer and read path of file contents.
//!
//! Per inode, a mount keeps one `FileState` while the file is open here:
//! - `dirty`: blocks changed by writes, not yet uploaded (whole-block buffers; a partial write to
//!   a block that has data needs the block's old bytes, so that an upload always carries the
//!   whole block: a write that starts mid-block reads them at once, one that starts at the
//!   block's first byte owes them (`Buf::base_to`) until a read, a gap, an upload or a truncate
//!   needs them, and never reads them if later writes cover the old bytes, as a sequential
//!   overwrite does);
//! - `pending`: blocks uploading or uploaded but not yet committed to the block map, with their
//!   bytes, so reads and later partial writes see them;
//! - `size` and `mtime` as this mount has made them.
//!
//! A block that a write fills is uploaded at once in the background, bounded by a mount-wide
//! semaphore (backpressure on the writer). Pending blocks are committed in batches while writing
//! continues, and all of them at flush/fsync/close. Reads look in `dirty`, then `pending`, then
//! the block map (cached per open, refreshed at open: close-to-open consistency) and the
//! in-memory cache of decoded blocks; sequential reads prefetch a growing window of blocks.
//!
//! Random reads (a read that does not start where the last one ended) of a file larger than the
//! memory cache, of a block not in memory, fetch only the 64 KiB frames that hold the bytes asked
//! for ([`BlockStore::get_part`]: one
//! ranged GET, plus one for the block's frame table the first time), not the whole block, and
//! keep those frames in the same in-memory cache, keyed by frame, so that a repeated random
//! read of the same area is served from memory. A whole block in the cache is always used
//! first. Sequential reads and read-ahead fetch whole blocks, and so do random reads of a file
//! that fits in the memory cache: once its blocks are all in memory every read hits, which frames
//! take 64 times as many requests to reach (measured on a loopback SeaweedFS: a 512 MiB file in
//! a 512 MiB cache, read at random 4 KiB at a time for 10 s from cold, gave about 2200 to 2800
//! reads/s with whole blocks and 150 to 250 with frames). For a file larger than the cache whole
//! blocks only churn it.
//!
//! With a disk cache, a random read that misses memory also starts a background read of the
//! whole block ([`BlockStore::get`], which keeps the block in the disk cache), unless the disk
//! cache has it already: the read itself still fetches only its frames and does not wait, and
//! the block's later reads come from local disk (the store reads only the frames they need from
//! the cached copy). This is what JuiceFS does with its disk cache: a bucket answers a ranged GET
//! about as slowly as a whole one (SeaweedFS reads the whole chunk), so frames alone, fetched
//! again at every read, keep random reads of a large file at the bucket's latency. A file that
//! takes at most a quarter of the disk cache is copied in whole, from its start, as soon as it
//! is read at random (`Client::warm_file`): its random reads touch every block soon anyway,
//! and one copy per read would pace the copy by reads that each wait on the bucket.

use crate::known_attrs::{EntryReply, KnownAttrs};
use crate::listings::{Known, Listings};
use crate::page_fill::{BlockFill, PageFill, PageFills, Ticket};
use crate::rpc::{MetaClient, RpcConfig};
use bytes::Bytes;
use cairn_blocks::{BlockCodec, BlockKey, BlockStore, Compression, Part, StoreConfig};
use cairn_proto::*;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// Default largest read-ahead window of a file: deep enough to keep a fast store busy for one
/// sequential reader, small enough that a few readers fit in the default memory cache.
pub const DEFAULT_READAHEAD: u64 = 32 << 20;

/// Settings of a mount client.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Metadata server and session settings.
    pub rpc: RpcConfig,
    /// Where the volume's blocks live.
    pub store: StoreConfig,
    /// Bytes of decoded blocks kept in memory, shared by all files.
    pub cache_bytes: u64,
    /// Most blocks uploading at once, mount-wide.
    pub max_uploads: usize,
    /// Largest read-ahead window of a file, in bytes (rounded up to whole blocks; 0: none).
    /// [`DEFAULT_READAHEAD`] unless set.
    pub readahead_bytes: u64,
    /// Key of an encrypted volume (never sent anywhere).
    pub encryption_key: Option<[u8; 32]>,
    /// Bytes of written blocks held in memory until they are committed, mount-wide: a writer
    /// that would go over first commits its own file's blocks, and the other files' are
    /// committed in the background.
    pub write_buffer_bytes: u64,
    /// Most block reads in flight at once, mount-wide (each holds a block's encoded and decoded
    /// bytes).
    pub max_fetches: usize,
}

impl ClientConfig {
    /// Defaults for everything but the addresses.
    pub fn new(rpc: RpcConfig, store: StoreConfig) -> Self {
        ClientConfig {
            rpc,
            store,
            cache_bytes: 512 << 20,
            max_uploads: 16,
            readahead_bytes: DEFAULT_READAHEAD,
            encryption_key: None,
            write_buffer_bytes: 256 << 20,
            max_fetches: 16,
        }
    }
}

/// The answer to an open: the attributes the file has now (close-to-open).
#[derive(Clone, Debug)]
pub struct Opened {
    /// Attributes at open.
    pub attr: Attr,
    /// The file is as this mount last saw it (same mtime, ctime and size as at its last open
    /// or commit here): the kernel's cached pages of it are still right and may be kept.
    pub unchanged: bool,
}

/// The answer to a read.
#[derive(Debug)]
pub struct ReadData {
    /// The bytes read (fewer than asked for at the end of the file).
    pub data: Bytes,
    /// More of the file around them that the kernel may cache ([`crate::page_fill`]).
    pub fill: Option<PageFill>,
}

impl From<Bytes> for ReadData {
    fn from(data: Bytes) -> Self {
        ReadData { data, fill: None }
    }
}

/// Of `data`, bytes `[data_at, data_at + len)` of the file: the whole frames around the part
/// of `read` they hold, within the file's `size`; None when that is no more than the read.
fn frames_around(
    data_at: u64,
    data: &Bytes,
    read: std::ops::Range<u64>,
    size: u64,
) -> Option<(u64, Bytes)> {
    let data_end = data_at + data.len() as u64;
    let (from, to) = (read.start.max(data_at), read.end.min(data_end));
    if from >= to {
        return None;
    }
    let lo = (from / FRAME * FRAME).max(data_at);
    let hi = to
        .div_ceil(FRAME)
        .saturating_mul(FRAME)
        .min(data_end)
        .min(size);
    if lo >= hi || (lo >= read.start && hi <= read.end) {
        return None;
    }
    Some((
        lo,
        data.slice((lo - data_at) as usize..(hi - data_at) as usize),
    ))
}

type UploadResult = Result<BlockRef, RpcError>;

struct Pending {
    data: Bytes,
    task: Option<JoinHandle<UploadResult>>,
    done: Option<BlockRef>,
    _budget: OwnedSemaphorePermit,
}

/// A block being written: its bytes, and its share of the mount's write budget, given back
/// when the block is committed (or dropped).
struct Buf {
    data: Vec<u8>,
    budget: OwnedSemaphorePermit,
    /// When above `data.len()`: bytes `[data.len(), base_to)` of the block are its old bytes,
    /// not read yet (see [`Client::owe_base`]); meaningless otherwise.
    base_to: usize,
}

impl Buf {
    fn new(data: Vec<u8>, budget: OwnedSemaphorePermit) -> Self {
        Buf {
            data,
            budget,
            base_to: 0,
        }
    }

    /// Whether old bytes are owed: the buffer is not the block's content until they are read.
    fn owes_base(&self) -> bool {
        self.base_to > self.data.len()
    }
}

#[derive(Default)]
struct FileInner {
    dirty: BTreeMap<u64, Buf>,
    /// When `dirty` last went from empty to not: the background flusher commits blocks left
    /// dirty for long.
    dirty_since: Option<std::time::Instant>,
    pending: BTreeMap<u64, Pending>,
    /// Size as this mount sees it (server size at open, grown by local writes).
    size: u64,
    /// A local change not yet committed.
    changed: bool,
    mtime: Option<Timestamp>,
    /// Cached block map entries (index -> ref) and whether the whole map is loaded.
    map: HashMap<u64, BlockRef>,
    map_loaded: bool,
    opens: u32,
    /// Sequential-read detection and read-ahead window.
    next_seq_offset: u64,
    ra_window: u64,
    ra_issued_to: u64,
    /// First error of a background upload, reported at the next flush.
    error: Option<RpcError>,
    /// The mount's commit counter at this file's last commit (see [`Client::overlay`]).
    last_commit: u64,
}

impl FileInner {
    /// Nothing buffered, uploading or failed: a flush of the file has nothing to do.
    fn nothing_to_commit(&self) -> bool {
        !self.changed && self.dirty.is_empty() && self.pending.is_empty() && self.error.is_none()
    }
}

struct FileState {
    inner: Mutex<FileInner>,
    /// Blocks (index, version) handed to the kernel whole since the file's first open (see
    /// [`Client::block_fill`]); goes with the state at the last close.
    handed: StdMutex<std::collections::HashSet<(u64, u64)>>,
}

/// Key of the in-memory cache: (inode, block index, block version, part), where part is
/// [`WHOLE`] for a whole decoded block, or the number of one of its [`FRAME`]-byte frames.
type CacheKey = (Ino, u64, u64, u32);

/// The part of a [`CacheKey`] that names a whole block.
const WHOLE: u32 = u32::MAX;

/// Bytes of the frames that random reads fetch and cache: the frame size blocks are written
/// with, so that one cached frame is one decoded frame of the object.
const FRAME: u64 = cairn_blocks::codec::FRAME_LEN as u64;

/// How far from where the last read of a file ended a read may start and still count as
/// sequential (see [`Client::read`]).
const REORDER_SLACK: u64 = 512 << 10;

/// Most background whole-block reads for random reads in flight at once, mount-wide (see
/// [`Client::fill_block`] and [`Client::warm_file`]). Enough to keep the store busy:
/// each holds its block while it is written to the cache (a third of its time), and a 2 GiB
/// file read at random was local after 5 s with 16, 6 s with 8 and 7 s with 4 (SeaweedFS on
/// the same 2 cores; 32 were no faster). Each holds its block as stored and as decoded while in
/// flight: at most 128 MiB.
const DISK_FILLS: usize = 16;

/// A file read at random is copied into the disk cache whole ([`Client::warm_file`]) when it
/// takes at most this share of the cache's capacity (1/4: a 2.5 GiB file in the default 10 GiB).
const WARM_SHARE: u64 = 4;
/// Block map entries a warm-up asks for at once.
const WARM_MAP_CHUNK: u64 = 256;

type BlockCache = quick_cache::sync::Cache<CacheKey, Bytes, BytesWeighter>;

#[derive(Clone)]
struct BytesWeighter;
impl quick_cache::Weighter<CacheKey, Bytes> for BytesWeighter {
    fn weight(&self, _k: &CacheKey, v: &Bytes) -> u64 {
        v.len().max(1) as u64
    }
}

/// Share of the memory cache that blocks read already may take from blocks not read yet.
///
/// New entries of the cache start "cold", and any cold entry not read yet is the first to go
/// when room is needed, while the "hot" ones (read at least once) may fill this share. At the
/// library's default (97%), a sequential reader's consumed blocks turned hot and left the cold
/// part one block per shard: read-ahead blocks were evicted before their reads arrived, and
/// fetched a second time (a 2 GiB cold read moved 3.8 GB from the bucket with a 256 MiB cache
/// and no disk cache; with the disk cache, each was read back from it). Each shard holds a
/// quarter of the default cache and keys fall in shards by a hash seeded at random, so four
/// readers' windows (a quarter of the cache) can put well over an eighth of it in one shard: at
/// one half, 11 runs in 15 of the unit test below lost blocks; at a quarter, none in 20.
const HOT_SHARE: f64 = 0.25;

/// The memory cache of `bytes` for blocks of `block_size`.
fn block_cache(bytes: u64, block_size: u32) -> BlockCache {
    let options = quick_cache::OptionsBuilder::new()
        // Counted in whole blocks, though frames share the bytes: the count also sets the
        // number of shards (at least 32 items each), and each shard holds an equal share of the
        // bytes. Counted in frames, a 512 MiB cache had 8 shards of 16 blocks, and a file that
        // fits in the cache no longer did (whole blocks evicted by the hash's unevenness).
        .estimated_items_capacity((bytes / u64::from(block_size)).max(16) as usize)
        .weight_capacity(bytes)
        .hot_allocation(HOT_SHARE)
        .build()
        .expect("every option is set within its range");
    BlockCache::with_options(
        options,
        BytesWeighter,
        Default::default(),
        Default::default(),
    )
}

/// The mount-client core.
pub struct Client {
    rpc: Arc<MetaClient>,
    store: BlockStore,
    volume: VolumeInfo,
    bs: u64,
    cache: Arc<BlockCache>,
    files: StdMutex<HashMap<Ino, Arc<FileState>>>,
    uploads: Arc<Semaphore>,
    /// The write budget, in blocks (see [`ClientConfig::write_buffer_bytes`]).
    buffers: Arc<Semaphore>,
    buffer_blocks: usize,
    flusher_wake: Arc<Notify>,
    fetches: Semaphore,
    /// Background reads of whole blocks into the disk cache for random reads (see
    /// [`Client::fill_block`]): at most [`DISK_FILLS`] at once, and the blocks they read.
    fills: Arc<Semaphore>,
    filling: StdMutex<std::collections::HashSet<(Ino, u64, u64)>>,
    /// Open files whose copy into the disk cache has begun (or is done) ([`Client::warm_file`]).
    warming: StdMutex<std::collections::HashSet<Ino>>,
    max_ra: u64,
    /// Bytes of the memory cache ([`ClientConfig::cache_bytes`]).
    cache_bytes: u64,
    /// Largest file whose blocks are handed to the kernel whole.
    block_fill_max: u64,
    /// Inodes known to have no `security.capability` xattr: the kernel asks before every write.
    no_caps: StdMutex<std::collections::HashSet<Ino>>,
    /// Inodes this mount has taken locks on: only their closes need to release locks.
    locked: StdMutex<std::collections::HashSet<Ino>>,
    /// Directory attributes from this mount's own changes, to answer the GETATTR that follows.
    dirs: FreshDirs,
    /// Directories whose every name this mount knows: lookups of other names answer here.
    listings: Listings,
    /// Attributes of files as last answered, for lookups answered from `listings`.
    known_attrs: KnownAttrs,
    /// Counts commits of file data, mount-wide.
    commits: std::sync::atomic::AtomicU64,
    /// Each file's (mtime, ctime, size) as of this mount's last open or commit of it.
    seen: StdMutex<HashMap<Ino, (Timestamp, Timestamp, u64)>>,
    /// Closes not yet sent to the server, and the wake-up of their sender.
    releases: StdMutex<Vec<Ino>>,
    release_wake: Arc<tokio::sync::Notify>,
    /// What random reads may hand the kernel's page cache, and when ([`crate::page_fill`]).
    page_fills: Arc<PageFills>,
    /// Where fills that no read carries go: blocks copied in the background for a random
    /// reader ([`Client::warm`]), to the FUSE layer's page fill thread. Unset: none.
    fill_sink: std::sync::OnceLock<FillSink>,
}

/// See [`Client::set_fill_sink`].
type FillSink = Box<dyn Fn(PageFill) + Send + Sync>;

/// Where a background read of a whole block puts it ([`Client::spawn_fill`]); the disk cache,
/// if there is one, gets it in every case.
#[derive(Clone, Copy)]
enum FillTo {
    /// The disk cache only, undecoded.
    Disk,
    /// The memory cache too, as read-ahead does.
    Memory,
    /// The kernel, whole, with the ticket taken when the block was read from the map of the
    /// file, then of the size given ([`Client::offer_block`]).
    Kernel(Ticket, u64),
}

/// Attributes of directories as this mount's last change in them left them. The kernel drops its
/// copy of a directory's attributes when an entry is added or removed, and asks again at the
/// next permission check: this answers that from the reply to the change, for as long as the
/// kernel itself would have kept them ([`FRESH_FOR`]).
#[derive(Default)]
struct FreshDirs(StdMutex<HashMap<Ino, (Attr, std::time::Instant)>>);

/// What tells one version of a file from another: a change of contents moves mtime (or size), and
/// every commit moves ctime.
fn version(a: &Attr) -> (Timestamp, Timestamp, u64) {
    (a.mtime, a.ctime, a.size)
}

/// Blocks left dirty this long are committed in the background, as the kernel writes back
/// dirty pages.
const DIRTY_FOR: Duration = Duration::from_secs(5);

/// How long a directory's attributes from a change are used: the attribute TTL the kernel is
/// given, so no answer is staler than a cached one would be.
const FRESH_FOR: Duration = Duration::from_secs(1);

/// How long a close waits for others to share its release's trip to the server. Short enough
/// that an unlinked file closed here is reclaimed at once for any purpose a user can see.
const RELEASE_BATCH_DELAY: Duration = Duration::from_millis(10);
/// Most closes in one Release request.
const RELEASE_BATCH_MAX: usize = 4096;

/// The memory this process may use, in bytes: the host's (`MemTotal`, or 8 GiB if it cannot be
/// read), or less if the process's memory cgroup or one above it sets a lower limit (v2
/// `memory.max`, v1 `memory.limit_in_bytes`), as a container's limit does (its page cache
/// counts against it).
fn host_memory() -> u64 {
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(8 << 30, |kib| kib << 10);
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let root = std::path::Path::new("/sys/fs/cgroup");
    let limit = |l: &str| {
        let (_, rest) = l.split_once(':')?;
        let (controllers, path) = rest.split_once(':')?;
        Some(if controllers.is_empty() {
            cgroup_limit(root, path, "memory.max")
        } else if controllers.split(',').any(|c| c == "memory") {
            cgroup_limit(&root.join("memory"), path, "memory.limit_in_bytes")
        } else {
            u64::MAX
        })
    };
    cgroup.lines().filter_map(limit).fold(total, u64::min)
}

/// The lowest limit in file `name` of cgroup `path` (as in /proc/self/cgroup) and its ancestors
/// under `root`; `u64::MAX` if none sets one.
fn cgroup_limit(root: &std::path::Path, path: &str, name: &str) -> u64 {
    let mut dir = std::path::PathBuf::from(path.trim());
    let mut lowest = u64::MAX;
    loop {
        let file = root.join(dir.strip_prefix("/").unwrap_or(&dir)).join(name);
        if let Some(max) = std::fs::read_to_string(file)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            lowest = lowest.min(max);
        }
        if !dir.pop() {
            return lowest;
        }
    }
}

/// How many inodes without `security.capability` a mount remembers (8 bytes each) before it
/// starts over.
const NO_CAPS_MAX: usize = 1 << 20;

impl FreshDirs {
    fn note(&self, dirs: &[Attr]) {
        let now = std::time::Instant::now();
        let mut m = self.0.lock().expect("dirs lock");
        if m.len() >= 4096 {
            m.retain(|_, (_, at)| now.duration_since(*at) < FRESH_FOR);
        }
        for a in dirs {
            m.insert(a.ino, (a.clone(), now));
        }
    }

    fn get(&self, ino: Ino) -> Option<Attr> {
        let m = self.0.lock().expect("dirs lock");
        m.get(&ino)
            .filter(|(_, at)| at.elapsed() < FRESH_FOR)
            .map(|(a, _)| a.clone())
    }

    fn forget(&self, ino: Ino) {
        self.0.lock().expect("dirs lock").remove(&ino);
    }
}

fn io_err(what: impl std::fmt::Display) -> RpcError {
    RpcError::new(ErrorCode::Io, what.to_string())
}

/// A block read the store could not answer (after its retries, or with bytes that failed
/// verification): logged with the block's name, and EIO for the reader.
fn read_failed(ino: Ino, r: BlockRef, e: cairn_blocks::BlockError) -> RpcError {
    warn!(
        ino,
        index = r.index,
        version = r.version,
        "block read failed: {e}"
    );
    io_err(format!("read block {} of inode {ino}: {e}", r.index))
}

fn unexpected(r: Reply) -> RpcError {
    RpcError::new(ErrorCode::Internal, format!("unexpected reply {r:?}"))
}

impl Client {
    /// Connect to the metadata server, open the block store and check that it is usable.
    pub async fn connect(cfg: ClientConfig) -> Result<Arc<Client>, RpcError> {
        let rpc = MetaClient::connect(cfg.rpc.clone()).await?;
        let volume = rpc.volume();
        let compression: Compression = volume.compression.parse().map_err(|e| {
            RpcError::new(
                ErrorCode::Invalid,
                format!("volume compression `{}`: {e}", volume.compression),
            )
        })?;
        let codec = match (volume.encrypted, &cfg.encryption_key) {
            (true, Some(key)) => BlockCodec::new(compression).with_key(key),
            (false, None) => BlockCodec::new(compression),
            (true, None) => {
                return Err(RpcError::new(
                    ErrorCode::Invalid,
                    format!("volume `{}` is encrypted: mount it with --encryption-key-file", volume.name),
                ))
            }
            (false, Some(_)) => {
                return Err(RpcError::new(
                    ErrorCode::Invalid,
                    format!(
                        "volume `{}` is not encrypted: drop --encryption-key-file (encryption is chosen when the volume is created: cairn meta serve --encrypted)",
                        volume.name
                    ),
                ))
            }
        };
        let store = BlockStore::open(&cfg.store, &volume.name, codec)
            .map_err(|e| RpcError::new(ErrorCode::Invalid, e.to_string()))?;
        store
            .check()
            .await
            .map_err(|e| RpcError::new(ErrorCode::Unavailable, e.to_string()))?;
        if volume.encrypted {
            check_key(&store, &volume.name).await?;
        }
        upload_staged(&store).await;
        let cache = Arc::new(block_cache(cfg.cache_bytes, volume.block_size));
        let buffer_blocks = (cfg.write_buffer_bytes / u64::from(volume.block_size)).max(4) as usize;
        let max_ra = cfg.readahead_bytes.div_ceil(u64::from(volume.block_size));
        // Files read at random are handed to the kernel block by block once local (the disk
        // cache copies them whole up to a quarter of its size; the memory cache keeps whole the
        // files it holds; without a disk cache, blocks are read whole for the kernel alone,
        // [`Client::fill_block`]), but not beyond an eighth of the host's memory.
        let local_max = store.cache().map_or(u64::MAX, |c| {
            (c.capacity() / WARM_SHARE).max(cfg.cache_bytes)
        });
        let block_fill_max = local_max.min(host_memory() / 8);
        let client = Arc::new(Client {
            rpc,
            store,
            bs: u64::from(volume.block_size),
            volume,
            cache,
            files: StdMutex::default(),
            uploads: Arc::new(Semaphore::new(cfg.max_uploads.max(1))),
            buffers: Arc::new(Semaphore::new(buffer_blocks)),
            buffer_blocks,
            flusher_wake: Arc::default(),
            fetches: Semaphore::new(cfg.max_fetches.max(1)),
            fills: Arc::new(Semaphore::new(DISK_FILLS)),
            filling: StdMutex::default(),
            warming: StdMutex::default(),
            max_ra,
            cache_bytes: cfg.cache_bytes,
            no_caps: StdMutex::default(),
            block_fill_max,
            locked: StdMutex::default(),
            dirs: FreshDirs::default(),
            listings: Listings::default(),
            known_attrs: KnownAttrs::default(),
            seen: StdMutex::default(),
            commits: Default::default(),
            releases: StdMutex::default(),
            release_wake: Arc::default(),
            page_fills: Arc::default(),
            fill_sink: std::sync::OnceLock::new(),
        });
        tokio::spawn(Self::release_loop(Arc::downgrade(&client)));
        tokio::spawn(Self::flush_loop(Arc::downgrade(&client)));
        Ok(client)
    }

    /// The volume's settings.
    pub fn volume(&self) -> &VolumeInfo {
        &self.volume
    }

    /// Where blocks go, for logs.
    pub fn store_description(&self) -> String {
        self.store.describe()
    }

    async fn call_attr(&self, req: Request) -> Result<Attr, RpcError> {
        match self.rpc.call(req).await? {
            Reply::Attr(a) => Ok(a),
            r => Err(unexpected(r)),
        }
    }

    async fn call_empty(&self, req: Request) -> Result<(), RpcError> {
        match self.rpc.call(req).await? {
            Reply::Empty => Ok(()),
            r => Err(unexpected(r)),
        }
    }

    /// Send a request that adds the entry `name` to directory `parent`; the answer's directory
    /// attributes are kept (see [`FreshDirs`]) and the name added to what is known of it.
    async fn call_entry(&self, req: Request, parent: Ino, name: &[u8]) -> Result<Attr, RpcError> {
        let sent = Instant::now();
        let ticket = self.known_attrs.ticket();
        let answer = self.rpc.call(req).await;
        if let Err(e) = &answer {
            // The name is there after all: another mount made it.
            if e.code == ErrorCode::Exists {
                self.listings.forget(parent);
            }
        }
        match answer? {
            Reply::Entry { attr, dir } => {
                self.dirs.note(std::slice::from_ref(&dir.attr));
                self.listings.changed(&dir, sent, |names| {
                    names.insert(name.to_vec(), attr.ino);
                });
                self.known_attrs.answered(&attr, ticket, sent);
                if attr.kind == FileKind::Dir {
                    self.listings.made(&attr, sent);
                }
                Ok(attr)
            }
            r => Err(unexpected(r)),
        }
    }

    /// Send a removal or rename; `edit` applies it to what is known of each directory it
    /// changed (called with the directory's inode).
    async fn call_dirs(
        &self,
        req: Request,
        edit: impl Fn(Ino, &mut crate::listings::Names),
    ) -> Result<(), RpcError> {
        let sent = Instant::now();
        match self.rpc.call(req).await? {
            Reply::Dirs(dirs) => {
                for d in &dirs {
                    self.listings
                        .changed(d, sent, |names| edit(d.attr.ino, names));
                }
                self.dirs
                    .note(&dirs.into_iter().map(|d| d.attr).collect::<Vec<_>>());
                Ok(())
            }
            r => Err(unexpected(r)),
        }
    }

    fn file(&self, ino: Ino) -> Option<Arc<FileState>> {
        self.files.lock().expect("files lock").get(&ino).cloned()
    }

    /// Overlay this mount's size and mtime on server attributes fetched when the commit counter
    /// stood at `before`: while the file has uncommitted changes, and also when one of its
    /// commits landed after the request went out (the server's answer may predate it; handing
    /// the kernel that older, shorter size would put the next O_APPEND write over the last one).
    ///
    /// Attributes that will tell the kernel another size than the one this mount reads the open
    /// file with (another mount changed it) first stop page fills of the older bytes.
    async fn overlay(&self, mut attr: Attr, before: u64) -> Attr {
        let mut other_size = false;
        if let Some(f) = self.file(attr.ino) {
            let inner = f.inner.lock().await;
            if inner.changed || inner.last_commit > before {
                attr.size = inner.size;
                if let Some(m) = inner.mtime {
                    attr.mtime = m;
                    attr.ctime = attr.ctime.max(m);
                }
            } else {
                other_size = attr.size != inner.size;
            }
        }
        if other_size {
            self.page_fills.changed(attr.ino).await;
        }
        attr
    }

    /// Find `name` in `parent`. A name known not to be there ([`crate::listings`]), or known to
    /// name a file whose attributes are known ([`crate::known_attrs`]), is answered without a
    /// round trip, so on the FUSE thread's first poll.
    pub async fn lookup(&self, parent: Ino, name: &[u8]) -> Result<EntryReply, RpcError> {
        let absent = || RpcError::new(ErrorCode::NotFound, "no such entry");
        let mut checked = false;
        loop {
            match self.listings.lookup(parent, name) {
                Known::Absent => return Err(absent()),
                // An open file may have a size here the server has not heard of yet.
                Known::Present { ino, until } if self.file(ino).is_none() => {
                    if let Some(e) = self.known_attrs.entry(ino, until) {
                        return Ok(e);
                    }
                    if checked || !self.known_attrs.knows(ino) {
                        break;
                    }
                }
                Known::Stale if !checked => {}
                _ => break,
            }
            // One look at the directory's ctime vouches for every name for a while.
            checked = true;
            let sent = Instant::now();
            match self.rpc.call(Request::GetAttr { ino: parent }).await {
                Ok(Reply::Attr(d)) => self.listings.checked(&d, sent),
                _ => break,
            }
        }
        let before = self.commit_count();
        let ticket = self.known_attrs.ticket();
        let sent = Instant::now();
        let found = self
            .call_attr(Request::Lookup {
                parent,
                name: name.to_vec(),
            })
            .await;
        // An answer that disagrees with the names known here: another mount changed the
        // directory.
        match (&found, self.listings.contains(parent, name)) {
            (Ok(_), Some(false)) => self.listings.forget(parent),
            (Err(e), Some(true)) if e.code == ErrorCode::NotFound => self.listings.forget(parent),
            _ => {}
        }
        let attr = self.overlay(found?, before).await;
        self.known_attrs.answered(&attr, ticket, sent);
        Ok(EntryReply::fresh(attr))
    }

    /// The mount's commit counter now (see [`Client::overlay`]).
    fn commit_count(&self) -> u64 {
        self.commits.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Attributes of `ino`.
    pub async fn getattr(&self, ino: Ino) -> Result<Attr, RpcError> {
        if let Some(a) = self.dirs.get(ino) {
            return Ok(a);
        }
        let before = self.commit_count();
        let ticket = self.known_attrs.ticket();
        let sent = Instant::now();
        let a = self.call_attr(Request::GetAttr { ino }).await?;
        if a.kind == FileKind::Dir {
            self.listings.checked(&a, sent);
        }
        let a = self.overlay(a, before).await;
        self.known_attrs.answered(&a, ticket, sent);
        Ok(a)
    }

    /// Change attributes. A size change first commits this mount's buffered writes.
    pub async fn setattr(&self, ino: Ino, set: SetAttr, caller: Caller) -> Result<Attr, RpcError> {
        self.known_attrs
            .changing(Some(ino), self.setattr_now(ino, set, caller))
            .await
    }

    async fn setattr_now(&self, ino: Ino, set: SetAttr, caller: Caller) -> Result<Attr, RpcError> {
        self.dirs.forget(ino);
        let file = self.file(ino);
        if let Some(f) = &file {
            let mut inner = f.inner.lock().await;
            if set.mtime.is_some() {
                // A commit after this would put the time of the writes over the one set here.
                self.flush_locked(ino, &mut inner).await?;
            } else if let Some(size) = set.size {
                self.truncate_buffers(ino, &mut inner, size);
            }
            let a = self
                .call_attr(Request::SetAttr {
                    ino,
                    set: set.clone(),
                    caller,
                })
                .await?;
            if set.size.is_some() {
                inner.size = a.size;
                inner.map.clear();
                inner.map_loaded = false;
                drop(inner);
                // Before the kernel cuts its pages: no older bytes may come after.
                self.page_fills.changed(ino).await;
            }
            return Ok(a);
        }
        let resize = set.size.is_some();
        let a = self
            .call_attr(Request::SetAttr { ino, set, caller })
            .await?;
        if resize {
            self.page_fills.changed(ino).await;
        }
        Ok(a)
    }

    /// A truncate of a file with buffered writes: instead of committing them first (an upload
    /// and a commit before the truncate may go out), drop what lies at or past `size` and cut the
    /// block that `size` falls in. The writes below `size` stay buffered and are committed later
    /// with the then current size, as if they came after the truncate, which they may, since
    /// nothing was acknowledged as committed.
    fn truncate_buffers(&self, ino: Ino, inner: &mut FileInner, size: u64) {
        let bs = self.bs;
        let keep_blocks = size.div_ceil(bs);
        let cut = (size % bs) as usize;
        // Whole blocks past the end go; their uploads, if started, are garbage.
        inner.dirty.retain(|&i, _| i < keep_blocks);
        let gone: Vec<u64> = inner
            .pending
            .range(keep_blocks..)
            .map(|(i, _)| *i)
            .collect();
        for i in gone {
            let p = inner.pending.remove(&i).expect("listed above");
            self.discard_pending(ino, p);
        }
        if cut != 0 {
            let last = size / bs;
            if let Some(buf) = inner.dirty.get_mut(&last) {
                buf.data.truncate(cut);
                // Old bytes past the new end are owed no more.
                buf.base_to = buf.base_to.min(cut);
                // Its upload (if any) holds older bytes that the dirty copy replaces anyway.
                if let Some(p) = inner.pending.remove(&last) {
                    self.discard_pending(ino, p);
                }
            } else if inner.pending.get(&last).is_some_and(|p| p.data.len() > cut) {
                // An upload of bytes past the new end: back to a buffer, cut, uploaded again.
                let Pending {
                    data,
                    task,
                    done,
                    _budget: budget,
                } = inner.pending.remove(&last).expect("checked above");
                let mut data = data.to_vec();
                data.truncate(cut);
                if inner.dirty.is_empty() {
                    inner.dirty_since = Some(std::time::Instant::now());
                }
                self.discard_upload(ino, done, task);
                inner.dirty.insert(last, Buf::new(data, budget));
            }
        }
        if inner.dirty.is_empty() {
            inner.dirty_since = None;
        }
        if !inner.dirty.is_empty() || !inner.pending.is_empty() {
            // Their commit comes after the truncate: it must not set an older mtime.
            inner.mtime = Some(Timestamp::now());
        }
    }

    /// fallocate: make the file at least `end` bytes long. Object storage has no space to
    /// reserve, so the new range is a hole (it reads as zeros).
    pub async fn allocate(&self, ino: Ino, end: u64, caller: Caller) -> Result<(), RpcError> {
        if self.getattr(ino).await?.size >= end {
            return Ok(());
        }
        let set = SetAttr {
            size: Some(end),
            ..SetAttr::default()
        };
        self.setattr(ino, set, caller).await.map(|_| ())
    }

    /// Create a non-directory node. With `open`, the file is also opened for this mount.
    #[allow(clippy::too_many_arguments)]
    pub async fn mknod(
        &self,
        parent: Ino,
        name: &[u8],
        kind: FileKind,
        perm: u32,
        rdev: u32,
        caller: Caller,
        open: bool,
    ) -> Result<Attr, RpcError> {
        let a = self
            .call_entry(
                Request::Mknod {
                    parent,
                    name: name.to_vec(),
                    kind,
                    perm,
                    rdev,
                    caller,
                    open,
                },
                parent,
                name,
            )
            .await?;
        if kind == FileKind::File {
            // Nothing sets a capability on create: the first write need not ask the server.
            self.remember_no_caps(a.ino);
        }
        if open {
            // A created file is open for writing.
            self.track_open(&a, None).await;
            self.page_fills.writer_opened(a.ino).await;
        }
        Ok(a)
    }

    /// Create a directory.
    pub async fn mkdir(
        &self,
        parent: Ino,
        name: &[u8],
        perm: u32,
        caller: Caller,
    ) -> Result<Attr, RpcError> {
        self.call_entry(
            Request::Mkdir {
                parent,
                name: name.to_vec(),
                perm,
                caller,
            },
            parent,
            name,
        )
        .await
    }

    /// Remove a file name.
    pub async fn unlink(&self, parent: Ino, name: &[u8], caller: Caller) -> Result<(), RpcError> {
        let req = Request::Unlink {
            parent,
            name: name.to_vec(),
            caller,
        };
        let gone = self.listings.ino_of(parent, name);
        let remove = self.call_dirs(req, |_, names| {
            names.remove(name);
        });
        self.known_attrs.changing(gone, remove).await
    }

    /// Remove an empty directory.
    pub async fn rmdir(&self, parent: Ino, name: &[u8], caller: Caller) -> Result<(), RpcError> {
        let req = Request::Rmdir {
            parent,
            name: name.to_vec(),
            caller,
        };
        self.call_dirs(req, |_, names| {
            names.remove(name);
        })
        .await
    }

    /// Rename with `rename_flags`.
    pub async fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        flags: u32,
        caller: Caller,
    ) -> Result<(), RpcError> {
        let req = Request::Rename {
            parent,
            name: name.to_vec(),
            new_parent,
            new_name: new_name.to_vec(),
            flags,
            caller,
        };
        // An exchange leaves both names in place; a move takes `name` away and leaves
        // `new_name` (new, or replaced). One answer per directory, the same one if both are.
        let exchange = flags & rename_flags::EXCHANGE != 0;
        // The kernel moves the moved inode's ctime itself; the replaced one loses a link.
        let moved = self.listings.ino_of(parent, name);
        let replaced = self.listings.ino_of(new_parent, new_name);
        let rename = self.call_dirs(req, |dir, names| {
            if dir == parent {
                if exchange {
                    names.insert(name.to_vec(), replaced.unwrap_or(0));
                } else {
                    names.remove(name);
                }
            }
            if dir == new_parent {
                names.insert(new_name.to_vec(), moved.unwrap_or(0));
            }
        });
        self.known_attrs
            .changing(moved.into_iter().chain(replaced), rename)
            .await
    }

    /// New hard link.
    pub async fn link(
        &self,
        ino: Ino,
        new_parent: Ino,
        new_name: &[u8],
        caller: Caller,
    ) -> Result<Attr, RpcError> {
        let before = self.commit_count();
        let a = self
            .call_entry(
                Request::Link {
                    ino,
                    new_parent,
                    new_name: new_name.to_vec(),
                    caller,
                },
                new_parent,
                new_name,
            )
            .await;
        // A lookup answered before the link may land after it, with one link fewer.
        self.known_attrs.forget(ino);
        Ok(self.overlay(a?, before).await)
    }

    /// New symlink.
    pub async fn symlink(
        &self,
        parent: Ino,
        name: &[u8],
        target: &[u8],
        caller: Caller,
    ) -> Result<Attr, RpcError> {
        self.call_entry(
            Request::Symlink {
                parent,
                name: name.to_vec(),
                target: target.to_vec(),
                caller,
            },
            parent,
            name,
        )
        .await
    }

    /// Symlink target.
    pub async fn readlink(&self, ino: Ino) -> Result<Vec<u8>, RpcError> {
        match self.rpc.call(Request::ReadLink { ino }).await? {
            Reply::Data(d) => Ok(d),
            r => Err(unexpected(r)),
        }
    }

    /// Directory entries after `cookie`, with attributes when `plus`.
    pub async fn readdir(
        &self,
        ino: Ino,
        cookie: u64,
        plus: bool,
    ) -> Result<(Vec<DirEntry>, bool), RpcError> {
        let before = self.commit_count();
        let ticket = self.known_attrs.ticket();
        let sent = Instant::now();
        match self
            .rpc
            .call(Request::ReadDir {
                ino,
                cookie,
                limit: 1024,
                plus,
            })
            .await?
        {
            Reply::Dir {
                mut entries,
                eof,
                ctime,
            } => {
                let names = entries.iter().map(|e| (e.name.as_slice(), e.ino, e.cookie));
                self.listings.listed(ino, cookie, names, eof, ctime, sent);
                if plus {
                    for e in &mut entries {
                        if let Some(a) = e.attr.take() {
                            let a = self.overlay(a, before).await;
                            self.known_attrs.answered(&a, ticket, sent);
                            e.attr = Some(a);
                        }
                    }
                }
                Ok((entries, eof))
            }
            r => Err(unexpected(r)),
        }
    }

    /// Filesystem statistics.
    pub async fn statfs(&self) -> Result<StatFs, RpcError> {
        match self.rpc.call(Request::StatFs).await? {
            Reply::StatFs(s) => Ok(s),
            r => Err(unexpected(r)),
        }
    }

    /// Set an xattr.
    pub async fn setxattr(
        &self,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        flags: u32,
    ) -> Result<(), RpcError> {
        self.no_caps.lock().expect("caps lock").remove(&ino);
        // An ACL changes the mode; any xattr the ctime.
        let set = self.call_empty(Request::SetXattr {
            ino,
            name: name.to_vec(),
            value: value.to_vec(),
            flags,
        });
        self.known_attrs.changing(Some(ino), set).await
    }

    /// Whether this mount knows `ino` has no xattr `name` (only `security.capability` is
    /// remembered: the kernel asks for it before every write).
    pub fn known_absent_xattr(&self, ino: Ino, name: &[u8]) -> bool {
        name == b"security.capability" && self.no_caps.lock().expect("caps lock").contains(&ino)
    }

    /// Remember that `ino` has no `security.capability`, forgetting all such inodes once there
    /// are [`NO_CAPS_MAX`] (a forgotten one costs one more request).
    fn remember_no_caps(&self, ino: Ino) {
        let mut set = self.no_caps.lock().expect("caps lock");
        if set.len() >= NO_CAPS_MAX {
            set.clear();
        }
        set.insert(ino);
    }

    /// Value of an xattr.
    pub async fn getxattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>, RpcError> {
        let caps = name == b"security.capability";
        if self.known_absent_xattr(ino, name) {
            return Err(ErrorCode::NoXattr.into());
        }
        match self
            .rpc
            .call(Request::GetXattr {
                ino,
                name: name.to_vec(),
            })
            .await
        {
            Ok(Reply::Data(d)) => Ok(d),
            Ok(r) => Err(unexpected(r)),
            Err(e) => {
                if caps && e.code == ErrorCode::NoXattr {
                    self.remember_no_caps(ino);
                }
                Err(e)
            }
        }
    }

    /// Names of all xattrs.
    pub async fn listxattr(&self, ino: Ino) -> Result<Vec<Vec<u8>>, RpcError> {
        match self.rpc.call(Request::ListXattr { ino }).await? {
            Reply::Names(n) => Ok(n),
            r => Err(unexpected(r)),
        }
    }

    /// Remove an xattr.
    pub async fn removexattr(&self, ino: Ino, name: &[u8]) -> Result<(), RpcError> {
        let remove = self.call_empty(Request::RemoveXattr {
            ino,
            name: name.to_vec(),
        });
        self.known_attrs.changing(Some(ino), remove).await
    }

    /// Count an open of the file `attr` describes, and give it the server's current size and
    /// block map (close-to-open) unless this mount has changes of it to commit. An open while the
    /// file is open here already gets them too when the server has another version than the one
    /// this mount last opened (`newer_since`: the commit count when the open's request went out)
    /// and no commit of this mount landed since (the server's answer could predate it): the
    /// earlier opens then see the new contents as well, as on NFS. The kernel sends the close of
    /// a descriptor (`RELEASE`) in the background, so it can arrive after the next open: were an
    /// open while one is still counted to share the older view, a process that closes and
    /// reopens a file another mount rewrote would read the old bytes.
    async fn track_open(&self, attr: &Attr, newer_since: Option<u64>) {
        // A close may drop the state between our finding it and locking it: then it is no longer
        // the one in `files`, and we look again.
        loop {
            let f = {
                let mut files = self.files.lock().expect("files lock");
                files
                    .entry(attr.ino)
                    .or_insert_with(|| {
                        Arc::new(FileState {
                            inner: Mutex::new(FileInner::default()),
                            handed: StdMutex::default(),
                        })
                    })
                    .clone()
            };
            let mut inner = f.inner.lock().await;
            if !self.file(attr.ino).is_some_and(|now| Arc::ptr_eq(&now, &f)) {
                continue;
            }
            let refresh =
                inner.opens == 0 || newer_since.is_some_and(|before| inner.last_commit <= before);
            if refresh && !inner.changed && inner.dirty.is_empty() && inner.pending.is_empty() {
                // Close-to-open: a fresh open sees the server's current size and block map.
                inner.size = attr.size;
                inner.map.clear();
                inner.map_loaded = false;
                inner.next_seq_offset = 0;
                inner.ra_window = 0;
                inner.ra_issued_to = 0;
            }
            inner.opens += 1;
            return;
        }
    }

    /// Open a file: the server keeps it alive while open, even if unlinked. `writable`: the open
    /// may write (its close must say so too, [`Client::release`]).
    pub async fn open(&self, ino: Ino, writable: bool) -> Result<Opened, RpcError> {
        let before = self.commit_count();
        let attr = self.call_attr(Request::Open { ino }).await?;
        let mut unchanged = false;
        if attr.kind == FileKind::File {
            unchanged = self.saw(&attr) == Some(version(&attr));
            self.track_open(&attr, (!unchanged).then_some(before)).await;
            // Before the kernel lets a writer in, or drops its pages of an older version.
            if writable {
                self.page_fills.writer_opened(ino).await;
            } else if !unchanged {
                self.page_fills.changed(ino).await;
            }
        }
        Ok(Opened {
            attr: self.overlay(attr, before).await,
            unchanged,
        })
    }

    /// Remember `attr` as the file's current version here; returns the one remembered before.
    fn saw(&self, attr: &Attr) -> Option<(Timestamp, Timestamp, u64)> {
        let mut seen = self.seen.lock().expect("seen lock");
        if seen.len() >= 65_536 {
            seen.clear();
        }
        seen.insert(attr.ino, version(attr))
    }

    /// Close one open of a file: commits buffered writes, then tells the server. `writable` as
    /// given to its open (a create is writable).
    pub async fn release(&self, ino: Ino, writable: bool) -> Result<(), RpcError> {
        let mut result = Ok(());
        if let Some(f) = self.file(ino) {
            let mut inner = f.inner.lock().await;
            result = self.flush_locked(ino, &mut inner).await;
            self.closed(ino, &mut inner, result.is_ok(), writable);
        }
        self.queue_release(ino);
        result
    }

    /// One open of `ino` ends (`writable` as given to it); the last one drops the file's state,
    /// unless its writes failed to commit (they stay for the next flush to report).
    fn closed(&self, ino: Ino, inner: &mut FileInner, committed: bool, writable: bool) {
        if writable {
            self.page_fills.writer_closed(ino);
        }
        inner.opens = inner.opens.saturating_sub(1);
        if inner.opens == 0 && committed {
            self.files.lock().expect("files lock").remove(&ino);
            self.page_fills.forget(ino);
            self.warming.lock().expect("warming lock").remove(&ino);
        }
    }

    /// The server hears of a close a little later (up to [`RELEASE_BATCH_DELAY`]), with other
    /// closes in one commit: nothing waits on it, and until then the file only stays alive a
    /// little longer.
    fn queue_release(&self, ino: Ino) {
        self.releases.lock().expect("releases lock").push(ino);
        self.release_wake.notify_one();
    }

    /// Send the releases queued by closes, a batch at a time, in one request.
    async fn release_loop(me: std::sync::Weak<Client>) {
        loop {
            let Some(c) = me.upgrade() else { return };
            if c.releases.lock().expect("releases lock").is_empty() {
                let wake = c.release_wake.clone();
                drop(c);
                let _ = tokio::time::timeout(Duration::from_secs(1), wake.notified()).await;
                continue;
            }
            // Let the closes of the next few milliseconds join this batch: a release sent at
            // each close wakes this task and the server once per close, and on two cores that
            // work competes with the next create (a tenth of a create's time).
            drop(c);
            tokio::time::sleep(RELEASE_BATCH_DELAY).await;
            let Some(c) = me.upgrade() else { return };
            c.flush_releases().await;
        }
    }

    /// The mount is going away: send the closes still queued, then end the session so that its
    /// locks and opens are released now.
    pub async fn shutdown(&self) {
        self.flush_releases().await;
        // Copies of blocks just read, still being written to the disk cache: a few ms each,
        // and the next mount would otherwise read those blocks from the bucket again.
        if let Some(cache) = self.store.cache() {
            cache.settle().await;
        }
        let (count, bytes) = self.store.writeback_pending();
        if count > 0 {
            tracing::info!(
                count,
                bytes,
                "uploading the blocks still staged in the writeback cache"
            );
            match tokio::time::timeout(Duration::from_secs(30), self.store.drain_writeback()).await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!("staged blocks not uploaded: {e}"),
                Err(_) => {
                    let (count, _) = self.store.writeback_pending();
                    warn!(count, "staged blocks left in the cache folder: the next mount with it uploads them")
                }
            }
        }
        if let Err(e) = self.rpc.end_session().await {
            warn!(
                "could not end the session (it expires by itself): {}",
                e.message
            );
        }
    }

    /// Send the releases queued so far, in one request (per `RELEASE_BATCH_MAX`).
    pub async fn flush_releases(&self) {
        let batch = std::mem::take(&mut *self.releases.lock().expect("releases lock"));
        for inos in batch.chunks(RELEASE_BATCH_MAX) {
            let inos = inos.to_vec();
            let count = inos.len();
            if let Err(e) = self.call_empty(Request::Release { inos }).await {
                warn!(count, "release of closed files failed: {}", e.message);
            }
        }
    }

    /// fsync: flush, wait until blocks staged in the writeback cache are in the object store,
    /// then make the metadata server's commits durable even when it runs without `--sync`.
    pub async fn fsync(&self, ino: Ino) -> Result<(), RpcError> {
        self.flush(ino).await?;
        self.store
            .drain_writeback()
            .await
            .map_err(|e| io_err(format!("upload staged blocks: {e}")))?;
        self.sync().await
    }

    /// Make every change acknowledged so far durable on the metadata server (fsyncdir). A
    /// server with `--sync` had each on disk before it answered it: no trip to it then.
    pub async fn sync(&self) -> Result<(), RpcError> {
        if self.rpc.server_syncs() {
            return Ok(());
        }
        self.call_empty(Request::Sync).await
    }

    /// Attributes this mount can answer without the server (a directory it just changed), so
    /// that the FUSE thread can reply at once.
    pub fn cached_attr(&self, ino: Ino) -> Option<Attr> {
        self.dirs.get(ino)
    }

    /// Whether a flush (a close) of `ino` by lock owner `owner` has nothing to do: no buffered
    /// writes, no error to report and no lock of this mount to drop. Then the FUSE thread replies
    /// at once instead of handing the request to the runtime.
    pub fn flush_is_noop(&self, ino: Ino, owner: Option<u64>) -> bool {
        if self.holds_locks(ino, owner) {
            return false;
        }
        self.file(ino)
            .is_none_or(|f| f.inner.try_lock().is_ok_and(|i| i.nothing_to_commit()))
    }

    /// [`Client::release`] done on the caller's thread when it has nothing to wait for
    /// ([`Client::flush_is_noop`]); false (and nothing done) otherwise.
    pub fn try_release_now(&self, ino: Ino, owner: Option<u64>, writable: bool) -> bool {
        if self.holds_locks(ino, owner) {
            return false;
        }
        if let Some(f) = self.file(ino) {
            let Ok(mut inner) = f.inner.try_lock() else {
                return false;
            };
            if !inner.nothing_to_commit() {
                return false;
            }
            self.closed(ino, &mut inner, true, writable);
        }
        self.queue_release(ino);
        true
    }

    /// Lets the client hand the kernel blocks it reads in the background (a random reader's
    /// file copied whole, `Client::warm_file`), through the thread that stores the fills of
    /// reads: `sink` queues a fill there.
    pub fn set_fill_sink(&self, sink: impl Fn(PageFill) + Send + Sync + 'static) {
        let _ = self.fill_sink.set(Box::new(sink));
    }

    /// Hand the kernel block `r` of `ino` whole, `data`, in a file of `size` bytes, with
    /// `ticket`, taken when `r` was read from the file's map; nothing if the file is closed or
    /// no sink is set. `hold` goes with the bytes until they are stored.
    fn offer_block(
        &self,
        ino: Ino,
        r: BlockRef,
        (ticket, size): (Ticket, u64),
        data: Bytes,
        hold: tokio::sync::OwnedSemaphorePermit,
    ) {
        let Some(sink) = self.fill_sink.get() else {
            return;
        };
        let Some(f) = self.file(ino) else {
            return;
        };
        let at = r.index * self.bs;
        let len = u64::from(r.len).min(size.saturating_sub(at));
        if len == 0 {
            return;
        }
        // Offered even if a read offered it already: that offer may yet fail (its bytes gone
        // from the caches), and nothing would offer the block again; a second store of the same
        // bytes costs a copy.
        f.handed
            .lock()
            .expect("handed blocks lock")
            .insert((r.index, r.version));
        sink(PageFill {
            ino,
            parts: Vec::new(),
            blocks: vec![BlockFill {
                at,
                r,
                len,
                data: Some(data),
            }],
            ticket,
            _hold: Some(hold),
        });
    }

    /// Start handing `fill` to the kernel, if its bytes are still current; the store must be
    /// done before the guard is dropped ([`crate::page_fill`]).
    pub fn begin_page_fill(&self, fill: &PageFill) -> Option<crate::page_fill::StoreGuard> {
        self.page_fills.begin(fill)
    }

    /// Whether a close by lock owner `owner` has locks of this mount to drop on `ino`.
    fn holds_locks(&self, ino: Ino, owner: Option<u64>) -> bool {
        owner.is_some() && self.locked.lock().expect("locked lock").contains(&ino)
    }

    /// Make every write so far committed (flush and close).
    pub async fn flush(&self, ino: Ino) -> Result<(), RpcError> {
        if let Some(f) = self.file(ino) {
            let mut inner = f.inner.lock().await;
            self.flush_locked(ino, &mut inner).await?;
        }
        Ok(())
    }

    /// Take, change or drop a lock. With `wait`, polls until the lock is free (F_SETLKW), the
    /// server finds a deadlock, or `interrupted` says the caller got a signal.
    pub async fn set_lock(
        &self,
        ino: Ino,
        lock: LockSpec,
        wait: bool,
        interrupted: impl Fn() -> bool,
    ) -> Result<(), RpcError> {
        if lock.typ != LockType::Unlock {
            self.locked.lock().expect("locked lock").insert(ino);
        }
        let mut backoff = Duration::from_millis(5);
        loop {
            match self.call_empty(Request::SetLock { ino, lock, wait }).await {
                Err(e) if wait && e.code == ErrorCode::WouldBlock => {
                    if interrupted() {
                        return Err(RpcError::new(
                            ErrorCode::Interrupted,
                            "interrupted while waiting for a lock",
                        ));
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(100));
                }
                other => return other,
            }
        }
    }

    /// The lock of another owner that conflicts with `lock`, if any.
    pub async fn get_lock(&self, ino: Ino, lock: LockSpec) -> Result<Option<LockSpec>, RpcError> {
        match self.rpc.call(Request::GetLock { ino, lock }).await? {
            Reply::Lock(l) => Ok(l),
            r => Err(unexpected(r)),
        }
    }

    /// Release every lock `owner` holds on `ino` (a close by that owner), if this mount ever
    /// locked the file.
    pub async fn release_locks(&self, ino: Ino, owner: u64) -> Result<(), RpcError> {
        if !self.holds_locks(ino, Some(owner)) {
            return Ok(());
        }
        let all = LockSpec {
            owner,
            start: 0,
            end: u64::MAX,
            typ: LockType::Unlock,
            pid: 0,
        };
        self.call_empty(Request::SetLock {
            ino,
            lock: all,
            wait: false,
        })
        .await
    }

    fn key(&self, ino: Ino, index: u64, version: u64) -> BlockKey {
        BlockKey {
            ino,
            index,
            version,
        }
    }

    /// Start uploading block `index` with `data` in the background.
    async fn start_upload(&self, ino: Ino, inner: &mut FileInner, index: u64, buf: Buf) {
        let data = self.store.buffers().freeze(buf.data);
        let permit = self
            .uploads
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore never closed");
        let version = rand::random::<u64>() | 1;
        let key = self.key(ino, index, version);
        let (store, cache, body) = (self.store.clone(), self.cache.clone(), data.clone());
        let len = data.len() as u32;
        let task = tokio::spawn(async move {
            let _permit = permit;
            store.put(&key, body.clone()).await.map_err(|e| {
                warn!(ino, index, "block upload failed: {e}");
                io_err(format!("upload block {index} of inode {ino}: {e}"))
            })?;
            cache.insert((ino, index, version, WHOLE), body);
            Ok(BlockRef {
                index,
                version,
                len,
            })
        });
        if let Some(old) = inner.pending.insert(
            index,
            Pending {
                data,
                task: Some(task),
                done: None,
                _budget: buf.budget,
            },
        ) {
            // A newer version replaces one never committed: its object is garbage now.
            self.discard_pending(ino, old);
        }
    }

    fn discard_pending(&self, ino: Ino, old: Pending) {
        self.discard_upload(ino, old.done, old.task);
    }

    /// Delete the object of an upload that will never be committed, once it is done.
    fn discard_upload(
        &self,
        ino: Ino,
        done: Option<BlockRef>,
        task: Option<JoinHandle<UploadResult>>,
    ) {
        let store = self.store.clone();
        tokio::spawn(async move {
            let r = match (done, task) {
                (Some(r), _) => Some(r),
                (None, Some(t)) => t.await.ok().and_then(|r| r.ok()),
                _ => None,
            };
            if let Some(r) = r {
                let _ = store
                    .delete(&BlockKey {
                        ino,
                        index: r.index,
                        version: r.version,
                    })
                    .await;
            }
        });
    }

    /// Commit uploaded blocks. With `all`, wait for every pending upload and commit them with
    /// the file's size; without, commit the uploads already finished (waiting for one if none
    /// is), growing the committed size only as far as those blocks reach. Keeps the writer's
    /// pipeline full while bounding what a file holds in memory.
    async fn commit_pending(
        &self,
        ino: Ino,
        inner: &mut FileInner,
        all: bool,
    ) -> Result<(), RpcError> {
        let mut first_err = inner.error.take();
        let mut chosen: Vec<u64> = inner
            .pending
            .iter()
            .filter(|(_, p)| {
                all || p.done.is_some() || p.task.as_ref().is_some_and(|t| t.is_finished())
            })
            .map(|(i, _)| *i)
            .collect();
        if chosen.is_empty() {
            chosen.extend(inner.pending.keys().next().copied());
        }
        let mut refs = Vec::with_capacity(chosen.len());
        for i in &chosen {
            let p = inner.pending.get_mut(i).expect("chosen from pending");
            if p.done.is_none() {
                if let Some(t) = p.task.take() {
                    match t.await {
                        Ok(Ok(r)) => p.done = Some(r),
                        Ok(Err(e)) => {
                            first_err.get_or_insert(e);
                        }
                        Err(e) => {
                            first_err.get_or_insert(io_err(format!("upload task failed: {e}")));
                        }
                    }
                }
            }
            if let Some(r) = p.done {
                refs.push(r);
            }
        }
        if let Some(e) = first_err {
            // Uploads that failed go back to dirty so that a later flush retries them.
            let failed: Vec<u64> = chosen
                .iter()
                .copied()
                .filter(|i| inner.pending[i].done.is_none())
                .collect();
            for i in failed {
                if let Some(p) = inner.pending.remove(&i) {
                    inner
                        .dirty
                        .entry(i)
                        .or_insert_with(|| Buf::new(p.data.to_vec(), p._budget));
                }
            }
            return Err(e);
        }
        let size = if all {
            inner.size
        } else {
            refs.iter()
                .map(|r| r.index * self.bs + u64::from(r.len))
                .max()
                .unwrap_or(0)
                .min(inner.size)
        };
        let mtime = inner.mtime.unwrap_or_else(Timestamp::now);
        let attr = self
            .call_attr(Request::CommitWrite {
                ino,
                blocks: refs.clone(),
                size,
                mtime,
            })
            .await;
        // Size and times moved (or may have, if the answer was lost).
        self.known_attrs.forget(ino);
        let attr = attr?;
        for r in refs {
            inner.map.insert(r.index, r);
        }
        inner.last_commit = self
            .commits
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel)
            + 1;
        self.saw(&attr);
        for i in chosen {
            inner.pending.remove(&i);
        }
        inner.size = inner.size.max(attr.size);
        Ok(())
    }

    async fn flush_locked(&self, ino: Ino, inner: &mut FileInner) -> Result<(), RpcError> {
        if inner.nothing_to_commit() {
            return Ok(());
        }
        let owing: Vec<u64> = inner
            .dirty
            .iter()
            .filter(|(_, b)| b.owes_base())
            .map(|(i, _)| *i)
            .collect();
        for index in owing {
            self.pay_base(ino, inner, index).await?;
        }
        let dirty = std::mem::take(&mut inner.dirty);
        inner.dirty_since = None;
        for (index, buf) in dirty {
            self.start_upload(ino, inner, index, buf).await;
        }
        self.commit_pending(ino, inner, true).await?;
        inner.changed = false;
        inner.mtime = None;
        Ok(())
    }

    /// Load the block map entries of blocks `[first, first+count)` into the cache of `inner`.
    async fn load_map(
        &self,
        ino: Ino,
        inner: &mut FileInner,
        first: u64,
        count: u64,
    ) -> Result<(), RpcError> {
        if inner.map_loaded {
            return Ok(());
        }
        // Small files: load the whole map at once.
        let total = inner.size.div_ceil(self.bs);
        let (first, count) = if total <= 256 {
            (0, total.max(1))
        } else {
            (first, count.max(64))
        };
        match self
            .rpc
            .call(Request::GetBlocks { ino, first, count })
            .await?
        {
            Reply::Blocks { blocks, .. } => {
                for b in blocks {
                    inner.map.entry(b.index).or_insert(b);
                }
                if first == 0 && count >= total {
                    inner.map_loaded = true;
                }
                Ok(())
            }
            r => Err(unexpected(r)),
        }
    }

    async fn fetch(&self, ino: Ino, r: BlockRef) -> Result<Bytes, RpcError> {
        let key = (ino, r.index, r.version, WHOLE);
        if let Some(b) = self.cache.get(&key) {
            return Ok(b);
        }
        let guard = match self.cache.get_value_or_guard_async(&key).await {
            Ok(b) => return Ok(b),
            Err(g) => g,
        };
        let permit = self.fetches.acquire().await.expect("never closed");
        let data = self
            .store
            .get(&self.key(ino, r.index, r.version))
            .await
            .map_err(|e| read_failed(ino, r, e))?;
        drop(permit);
        let _ = guard.insert(data.clone());
        // Frames of the block that random reads cached are now redundant: give their bytes back.
        for i in 0..u64::from(r.len).div_ceil(FRAME) {
            self.cache.remove(&(ino, r.index, r.version, i as u32));
        }
        Ok(data)
    }

    /// Bytes that hold `[start, end)` of block `r` (within its length), for a random read, and
    /// the offset in the block of the first of them: the whole block if it is in memory, else
    /// the cached frames that hold the range, fetching the ones missing (one ranged read of the
    /// span between the first and the last missing frame). Whole frames, so that the caller can
    /// also hand the kernel the rest of them ([`crate::page_fill`]).
    async fn fetch_range(
        self: &Arc<Self>,
        ino: Ino,
        r: BlockRef,
        (start, end): (u64, u64),
        file_size: u64,
        ticket: Option<Ticket>,
    ) -> Result<(Bytes, u64), RpcError> {
        let whole = (ino, r.index, r.version, WHOLE);
        if let Some(b) = self.cache.get(&whole) {
            return Ok((b.slice(..(r.len as usize).min(b.len())), 0));
        }
        let (first, last) = (start / FRAME, (end - 1) / FRAME);
        let frame_key = |i: u64| (ino, r.index, r.version, i as u32);
        let mut frames: Vec<Option<Bytes>> = (first..=last)
            .map(|i| self.cache.get(&frame_key(i)))
            .collect();
        let missing_from = frames.iter().position(Option::is_none);
        let missing_to = frames.iter().rposition(Option::is_none);
        if let (Some(lo), Some(hi)) = (missing_from, missing_to) {
            self.fill_block(ino, r, file_size, ticket);
            let (lo, hi) = (first + lo as u64, first + hi as u64);
            let block_len = u64::from(r.len);
            let span = lo * FRAME..((hi + 1) * FRAME).min(block_len);
            let permit = self.fetches.acquire().await.expect("never closed");
            let part = self
                .store
                .get_part(&self.key(ino, r.index, r.version), span.clone(), block_len)
                .await
                .map_err(|e| read_failed(ino, r, e))?;
            drop(permit);
            let got = match part {
                Part::Range(got) => got,
                Part::Whole(block) => {
                    // An object without frames (written by an older cairn) was read whole.
                    let block = block.slice(..(r.len as usize).min(block.len()));
                    self.cache.insert(whole, block.clone());
                    return Ok((block, 0));
                }
            };
            if got.len() as u64 != span.end - span.start {
                return Err(io_err(format!(
                    "read block {} of inode {ino}: the store returned {} bytes for {span:?}",
                    r.index,
                    got.len()
                )));
            }
            for i in lo..=hi {
                let at = ((i - lo) * FRAME) as usize;
                let frame = got.slice(at..(at + FRAME as usize).min(got.len()));
                self.cache.insert(frame_key(i), frame.clone());
                frames[(i - first) as usize] = Some(frame);
            }
            if (lo, hi) == (first, last) {
                // All of them in one read: its buffer is the answer, without a copy.
                return Ok((got, first * FRAME));
            }
        }
        let mut frames = frames
            .into_iter()
            .map(|f| f.expect("every missing frame was fetched above"));
        if first == last {
            return Ok((frames.next().expect("one frame"), first * FRAME));
        }
        let mut out = Vec::with_capacity(((last - first + 1) * FRAME) as usize);
        for frame in frames {
            out.extend_from_slice(&frame);
        }
        Ok((Bytes::from(out), first * FRAME))
    }

    /// A random read missed the memory cache in block `r` of a file of `size` bytes: with a
    /// disk cache, reads the whole block in the background (into the memory cache, as
    /// read-ahead does, and into the disk cache), so that the block's next reads are local and
    /// the read's page fill can hand the kernel the whole block ([`Client::block_fill`]); the
    /// read that calls this does not wait for it. In a file that is copied to the kernel whole,
    /// the block goes to the kernel instead, with the read's `ticket`. At most one read per
    /// block, and at most [`DISK_FILLS`] at once: when all are busy the block is skipped, and its
    /// next random read that misses memory tries again. A file small beside the disk cache is
    /// also copied in whole ([`Client::warm_file`]). Without a disk cache, a file the kernel may
    /// be handed whole ([`Client::block_fill_max`]) is copied in whole, to the kernel: there the
    /// kernel's page cache is the one place a file larger than the memory cache is kept whole,
    /// and a 2 GiB file read at random 128 KiB at a time stayed at 70-260 ranged reads a second
    /// for as long as it was read, where s3fs, copying it into a file of its own, reached the
    /// speed of memory in 5 s.
    fn fill_block(self: &Arc<Self>, ino: Ino, r: BlockRef, size: u64, ticket: Option<Ticket>) {
        let mut to = FillTo::Memory;
        match self.store.cache() {
            Some(cache) => {
                if size <= cache.capacity() / WARM_SHARE {
                    self.warm_file(ino);
                    // The copy hands such a file to the kernel block by block: the block read
                    // now goes first, the same way (read into the memory cache instead, the
                    // copy skipped it as under way, and it reached the kernel only if the read's
                    // own fill found it still there).
                    if let Some(ticket) = ticket.filter(|_| self.copied_to_kernel(size)) {
                        to = FillTo::Kernel(ticket, size);
                    }
                }
                if self.store.is_cached(&self.key(ino, r.index, r.version)) {
                    return;
                }
            }
            None => {
                if self.handed_whole(size) {
                    self.warm_file(ino);
                }
                return;
            }
        }
        if let Ok(permit) = Arc::clone(&self.fills).try_acquire_owned() {
            self.spawn_fill(ino, r, permit, to);
        }
    }

    /// Read block `r` in the background, into the caches and maybe the kernel as `to` says,
    /// holding `permit` until done; nothing if the block is being read already.
    fn spawn_fill(
        self: &Arc<Self>,
        ino: Ino,
        r: BlockRef,
        permit: tokio::sync::OwnedSemaphorePermit,
        to: FillTo,
    ) {
        let block = (ino, r.index, r.version);
        if !self.filling.lock().expect("filling lock").insert(block) {
            return;
        }
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let key = me.key(ino, r.index, r.version);
            let whole = (ino, r.index, r.version, WHOLE);
            let result = match to {
                FillTo::Disk => me.store.fetch_into_cache(&key).await.map(|()| None),
                FillTo::Memory => match me.cache.get_value_or_guard_async(&whole).await {
                    Ok(_) => Ok(None),
                    Err(guard) => me.store.get(&key).await.map(|data| {
                        let _ = guard.insert(data);
                        for i in 0..u64::from(r.len).div_ceil(FRAME) {
                            me.cache.remove(&(ino, r.index, r.version, i as u32));
                        }
                        None
                    }),
                },
                // Not through the memory cache: the bytes go with the fill (and the permit with
                // them), and churn no block of other files out of memory.
                FillTo::Kernel(..) => me.store.get_and_keep(&key).await.map(Some),
            };
            me.filling.lock().expect("filling lock").remove(&block);
            match (result, to) {
                (Ok(Some(data)), FillTo::Kernel(ticket, size)) => {
                    me.offer_block(ino, r, (ticket, size), data, permit);
                }
                (Ok(_), _) => {}
                // The reads that need the block report errors; this one only warms caches.
                (Err(e), _) => debug!(
                    ino,
                    index = r.index,
                    "background read of a block failed: {e}"
                ),
            }
        });
    }

    /// Block `r` at file offset `bstart`, to hand the kernel whole after a random read of
    /// `read` ([`PageFill::blocks`]), if it is local (in the memory cache whole, or in the disk
    /// cache) or being read whole ([`Client::fill_block`]), the file is small enough
    /// ([`Client::block_fill_max`]), the read did not cover it, and it was not handed over since
    /// the file's last open. The kernel's page cache then answers every later read of the block:
    /// a random reader of a file that is local reaches the speed of memory after one miss per
    /// block, not one per frame.
    fn block_fill(
        &self,
        f: &FileState,
        ino: Ino,
        r: BlockRef,
        bstart: u64,
        read: std::ops::Range<u64>,
        size: u64,
    ) -> Option<BlockFill> {
        let len = u64::from(r.len).min(size.saturating_sub(bstart));
        if len == 0
            || size > self.block_fill_max
            || (read.start <= bstart && read.end >= bstart + len)
        {
            return None;
        }
        let mut handed = f.handed.lock().expect("handed blocks lock");
        // Handed over already: no need to look for the block in the caches (a key to format and
        // the disk cache's index to lock, on a read path).
        if handed.contains(&(r.index, r.version)) {
            return None;
        }
        // A block being read for the kernel is offered by that read.
        let local = self.cache.contains_key(&(ino, r.index, r.version, WHOLE))
            || self.store.is_cached(&self.key(ino, r.index, r.version))
            || (!self.copied_to_kernel(size) && self.is_filling(ino, r));
        if !local {
            return None;
        }
        handed.insert((r.index, r.version));
        Some(BlockFill {
            at: bstart,
            r,
            len,
            data: None,
        })
    }

    /// The bytes of block `r` for a fill: from the memory cache (not counted as a use), the
    /// disk cache, or the background read of it under way (`Client::fill_block`), waited for.
    /// None if it is in none of them (a fill does not fetch a block itself; only a cached copy
    /// that fails its check is read again from the bucket, as any read of it would be); the
    /// block is then no longer counted as handed over, so that a later random read of it offers
    /// it again.
    pub async fn block_for_fill(&self, ino: Ino, r: BlockRef) -> Option<Bytes> {
        let whole = (ino, r.index, r.version, WHOLE);
        if let Some(b) = self.cache.peek(&whole) {
            return Some(b);
        }
        let key = self.key(ino, r.index, r.version);
        if self.store.is_cached(&key) {
            if let Ok(b) = self.store.get(&key).await {
                return Some(b);
            }
        } else if self.is_filling(ino, r) {
            // The read under way holds the memory cache's place for the block: this waits for
            // it, and gets the place itself (dropped at once) if that read failed or is over.
            if let Ok(b) = self.cache.get_value_or_guard_async(&whole).await {
                return Some(b);
            }
        }
        self.not_handed(ino, [r]);
        None
    }

    /// Whether the kernel may be handed a file of `size` bytes whole, block by block.
    fn handed_whole(&self, size: u64) -> bool {
        size <= self.block_fill_max && self.fill_sink.get().is_some()
    }

    /// Whether a file of `size` bytes read at random is copied whole to the kernel
    /// ([`Client::warm_file`]), so that its blocks' background reads hand them over themselves.
    fn copied_to_kernel(&self, size: u64) -> bool {
        self.handed_whole(size)
            && self
                .store
                .cache()
                .is_none_or(|c| size <= c.capacity() / WARM_SHARE)
    }

    /// Whether a background read of block `r` of `ino` is under way.
    fn is_filling(&self, ino: Ino, r: BlockRef) -> bool {
        self.filling
            .lock()
            .expect("filling lock")
            .contains(&(ino, r.index, r.version))
    }

    /// `blocks` of `ino` were offered to the kernel but not stored (their bytes gone from the
    /// caches, the offer dropped, or its ticket spoiled): a later random read offers them again.
    pub fn not_handed(&self, ino: Ino, blocks: impl IntoIterator<Item = BlockRef>) {
        if let Some(f) = self.file(ino) {
            let mut handed = f.handed.lock().expect("handed blocks lock");
            for r in blocks {
                handed.remove(&(r.index, r.version));
            }
        }
    }

    /// Copy a file that is read at random whole, block by block from its start, [`DISK_FILLS`]
    /// blocks at a time (shared with the fills of single blocks), while it stays open; once per
    /// open (the last close forgets it). Random reads of a file that fits in the cache touch
    /// every block soon, and one block read per random read paces the copy by the reads, which
    /// wait on the bucket meanwhile: a 2 GiB file read at random 128 KiB at a time was local
    /// after about 8 s that way, against 4.5 s copied whole. Blocks go to the disk cache, and,
    /// in a file the kernel may hold whole ([`Client::block_fill_max`]), to the kernel
    /// ([`Client::offer_block`]): the random reader then reaches the speed
    /// of memory as the copy ends (before, it took a miss per block after it, and a second or
    /// two more). Without a disk cache, only such files are copied, and to the kernel only.
    fn warm_file(self: &Arc<Self>, ino: Ino) {
        if !self.warming.lock().expect("warming lock").insert(ino) {
            return;
        }
        let me = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(e) = me.warm(ino).await {
                debug!(
                    ino,
                    "copying a file into the disk cache stopped: {}", e.message
                );
            }
        });
    }

    /// The copy of [`Client::warm_file`].
    async fn warm(self: &Arc<Self>, ino: Ino) -> Result<(), RpcError> {
        let mut next = 0;
        loop {
            // Closed: stop (a later random read after a new open starts over, skipping what
            // is cached).
            let Some(f) = self.file(ino) else {
                return Ok(());
            };
            let (refs, to): (Vec<BlockRef>, FillTo) = {
                let mut inner = f.inner.lock().await;
                let blocks = inner.size.div_ceil(self.bs);
                if next >= blocks {
                    return Ok(());
                }
                let to = (next + WARM_MAP_CHUNK).min(blocks);
                if !inner.map_loaded && (next..to).any(|i| !inner.map.contains_key(&i)) {
                    self.load_map(ino, &mut inner, next, to - next).await?;
                }
                let refs = (next..to)
                    .filter(|i| !inner.dirty.contains_key(i) && !inner.pending.contains_key(i))
                    .filter_map(|i| inner.map.get(&i).copied())
                    .collect();
                next = to;
                // A file the kernel may hold whole gets each block as it is copied, with a
                // ticket taken with the refs; the reader then reaches the speed of memory as the
                // copy ends, without a miss per block first.
                let ticket = self
                    .handed_whole(inner.size)
                    .then(|| self.page_fills.ticket(ino))
                    .flatten();
                let fill_to = ticket.map_or(FillTo::Disk, |t| FillTo::Kernel(t, inner.size));
                (refs, fill_to)
            };
            for r in refs {
                let handed = || {
                    f.handed
                        .lock()
                        .expect("handed blocks lock")
                        .contains(&(r.index, r.version))
                };
                if self.store.is_cached(&self.key(ino, r.index, r.version)) || handed() {
                    continue;
                }
                let permit = Arc::clone(&self.fills)
                    .acquire_owned()
                    .await
                    .expect("never closed");
                if self.file(ino).is_none() {
                    return Ok(());
                }
                self.spawn_fill(ino, r, permit, to);
            }
        }
    }

    /// Bytes of block `index` as the file has them, from `inner`'s buffers, or a ref to fetch.
    /// A buffer that owes old bytes must have them paid first ([`Client::pay_base`]).
    fn local_block(inner: &FileInner, index: u64) -> Option<Bytes> {
        if let Some(d) = inner.dirty.get(&index) {
            debug_assert!(!d.owes_base(), "block {index} read before its old bytes");
            return Some(Bytes::copy_from_slice(&d.data));
        }
        inner.pending.get(&index).map(|p| p.data.clone())
    }

    /// Read up to `len` bytes at `offset`. A random read also gives the rest of the frames it
    /// read, for the kernel's page cache ([`crate::page_fill`]).
    pub async fn read(
        self: &Arc<Self>,
        ino: Ino,
        offset: u64,
        len: u32,
    ) -> Result<ReadData, RpcError> {
        let Some(f) = self.file(ino) else {
            return Err(RpcError::new(
                ErrorCode::Stale,
                "read of a file that is not open",
            ));
        };
        let bs = self.bs;
        enum Src {
            Local(Bytes),
            Remote(BlockRef),
            /// Bytes `[start, end)` of the block, for a random read.
            Part(BlockRef, u64, u64),
            Hole,
        }
        let (plan, size, prefetch, ticket) = {
            let mut inner = f.inner.lock().await;
            let size = inner.size;
            if offset >= size || len == 0 {
                return Ok(ReadData::from(Bytes::new()));
            }
            let end = (offset + u64::from(len)).min(size);
            let (first, last) = (offset / bs, (end - 1) / bs);
            // Sequential: where the last read ended, or, once a run has begun, close to it
            // ([`REORDER_SLACK`] or two reads either side): the kernel sends the reads of one
            // sequential reader from several threads, and a few arrive out of order (about 2%
            // of the 256 KiB reads of a 1 GiB cold read, up to two reads late); taking those
            // for random reads restarted the read-ahead window and, in a file larger than the
            // memory cache, fetched frames and a background copy of blocks that read-ahead was
            // fetching anyway.
            let next = inner.next_seq_offset;
            let slack = REORDER_SLACK.max(2 * u64::from(len));
            let sequential =
                offset == next || (next > 0 && offset + slack >= next && offset <= next + slack);
            // A file that fits in the memory cache is worth keeping there whole: random reads
            // of it fetch whole blocks, as sequential ones do, and soon every read hits memory.
            // Frames are for files larger than the cache, where whole blocks only churn it.
            let keep_whole = size <= self.cache_bytes;
            let mut prefetch = Vec::new();
            let mut plan = Vec::new();
            for index in first..=last {
                self.pay_base(ino, &mut inner, index).await?;
                if let Some(b) = Self::local_block(&inner, index) {
                    plan.push((index, Src::Local(b)));
                    continue;
                }
                if !inner.map.contains_key(&index) && !inner.map_loaded {
                    self.load_map(ino, &mut inner, index, last - index + 1 + self.max_ra)
                        .await?;
                }
                let src = match inner.map.get(&index) {
                    None => Src::Hole,
                    Some(r) if sequential || keep_whole => Src::Remote(*r),
                    Some(r) => {
                        // Random access: only the frames that hold the bytes asked for, unless
                        // the read wants most of the block anyway.
                        let bstart = index * bs;
                        let from = offset.max(bstart) - bstart;
                        let to = (end.min(bstart + bs) - bstart).min(u64::from(r.len));
                        if from >= to {
                            // Past the block's data: zeros.
                            Src::Hole
                        } else if to - from >= u64::from(r.len) / 2 {
                            Src::Remote(*r)
                        } else {
                            Src::Part(*r, from, to)
                        }
                    }
                };
                plan.push((index, src));
            }
            // Sequential detection: grow the read-ahead window on each sequential read.
            if sequential && self.max_ra > 0 {
                inner.ra_window = (inner.ra_window * 2).clamp(1, self.max_ra);
                let from = (last + 1).max(inner.ra_issued_to);
                let to = (last + 1 + inner.ra_window).min(size.div_ceil(bs));
                for index in from..to {
                    if inner.dirty.contains_key(&index) || inner.pending.contains_key(&index) {
                        continue;
                    }
                    if !inner.map.contains_key(&index) && !inner.map_loaded {
                        self.load_map(ino, &mut inner, index, to - index + self.max_ra)
                            .await?;
                    }
                    if let Some(r) = inner.map.get(&index) {
                        prefetch.push(*r);
                    }
                }
                inner.ra_issued_to = inner.ra_issued_to.max(to);
            } else {
                inner.ra_window = 0;
                inner.ra_issued_to = 0;
            }
            // A block a sequential reader has read to its end is in the kernel's page cache (and
            // in the disk cache): kept in memory too, a long read filled the whole cache with
            // blocks read once, pushing out what random readers use, in fresh memory that cost
            // a sixth of the mount's CPU (docs/benchmarks.md, data item 32). The block before
            // the one this read ends leaves the cache (one block behind: a few reads of a run
            // arrive late), and its buffer goes to the next block fetched ([`cairn_blocks::pool`]).
            if sequential && last > 0 && (end == (last + 1) * bs || end == size) {
                if let Some(r) = inner.map.get(&(last - 1)) {
                    self.cache.remove(&(ino, r.index, r.version, WHOLE));
                }
            }
            // A late read of a sequential run does not move its end back.
            inner.next_seq_offset = if sequential { next.max(end) } else { end };
            // Taken under the file's lock, with the plan: a change applied after this spoils it.
            // Random reads get fills: the frames around reads shorter than a frame (the ones a
            // frame multiplies; a fill then holds at most two frames while it waits), and whole
            // blocks that are local (read by the filler, so a fill holds no block meanwhile).
            let ticket = if sequential {
                None
            } else {
                self.page_fills.ticket(ino)
            };
            (plan, size, prefetch, ticket)
        };
        for r in prefetch {
            let me = self.clone();
            tokio::spawn(async move {
                if let Err(e) = me.fetch(ino, r).await {
                    debug!("background read of block {} failed: {}", r.index, e.message);
                }
            });
        }
        let end = (offset + u64::from(len)).min(size);
        let fetches = plan.into_iter().map(|(index, src)| {
            let me = self.clone();
            async move {
                // The bytes, the offset in the block of the first of them, and the block as
                // committed if they are its bytes (not local writes, not zeros).
                let (data, at, committed) = match src {
                    Src::Local(b) => (b, 0, None),
                    Src::Hole => (Bytes::new(), 0, None),
                    Src::Remote(r) => {
                        let b = me.fetch(ino, r).await?;
                        (b.slice(..(r.len as usize).min(b.len())), 0, Some(r))
                    }
                    Src::Part(r, from, to) => {
                        let (b, at) = me.fetch_range(ino, r, (from, to), size, ticket).await?;
                        (b, at, Some(r))
                    }
                };
                Ok::<_, RpcError>((index, data, at, committed))
            }
        });
        let blocks = futures::future::try_join_all(fetches).await?;
        let fill = ticket.and_then(|ticket| {
            let (mut parts, mut whole) = (Vec::new(), Vec::new());
            for (index, data, at, committed) in &blocks {
                let Some(r) = committed else { continue };
                let bstart = index * bs;
                if let Some(b) = self.block_fill(&f, ino, *r, bstart, offset..end, size) {
                    whole.push(b);
                } else if u64::from(len) < FRAME {
                    parts.extend(frames_around(bstart + at, data, offset..end, size));
                }
            }
            (!parts.is_empty() || !whole.is_empty()).then_some(PageFill {
                ino,
                parts,
                blocks: whole,
                ticket,
                _hold: None,
            })
        });
        // The part of each block's bytes in the range, with its place in the answer; bytes a
        // block does not have (a hole, or past its data) are zeros.
        let want = (end - offset) as usize;
        let mut parts = Vec::with_capacity(blocks.len());
        for (index, data, at, _) in blocks {
            let bstart = index * bs + at;
            let from = offset.max(bstart);
            let to = end.min(index * bs + bs);
            if from >= to {
                continue;
            }
            let src_from = (from - bstart) as usize;
            let src_to = ((to - bstart) as usize).min(data.len());
            if src_from < src_to {
                parts.push(((from - offset) as usize, data.slice(src_from..src_to)));
            }
        }
        // The usual answer is one part of one block: that slice itself, without a copy.
        if let [(0, part)] = parts.as_slice() {
            if part.len() == want {
                return Ok(ReadData {
                    data: part.clone(),
                    fill,
                });
            }
        }
        let mut out = vec![0u8; want];
        for (dst, part) in parts {
            out[dst..dst + part.len()].copy_from_slice(&part);
        }
        Ok(ReadData {
            data: Bytes::from(out),
            fill,
        })
    }

    /// Write `data` at `offset`; returns the bytes accepted (all of them).
    pub async fn write(
        self: &Arc<Self>,
        ino: Ino,
        offset: u64,
        data: &[u8],
    ) -> Result<u32, RpcError> {
        let Some(f) = self.file(ino) else {
            return Err(RpcError::new(
                ErrorCode::Stale,
                "write to a file that is not open",
            ));
        };
        let bs = self.bs;
        let mut inner = f.inner.lock().await;
        if let Some(e) = inner.error.clone() {
            return Err(e);
        }
        let end = offset + data.len() as u64;
        let mut pos = offset;
        while pos < end {
            let index = pos / bs;
            let bstart = index * bs;
            let in_off = (pos - bstart) as usize;
            let n = ((bstart + bs).min(end) - pos) as usize;
            if !inner.dirty.contains_key(&index) {
                let budget = self.buffer_permit(ino, &mut inner).await?;
                let buf = match Self::owe_base(&inner, bs, index, in_off, n) {
                    Some(base_to) => Buf {
                        data: Vec::new(),
                        budget,
                        base_to,
                    },
                    None => {
                        let data = self.block_base(ino, &mut inner, index, in_off, n).await?;
                        Buf::new(data, budget)
                    }
                };
                if inner.dirty.is_empty() {
                    inner.dirty_since = Some(std::time::Instant::now());
                }
                inner.dirty.insert(index, buf);
            } else if inner.dirty[&index].data.len() < in_off {
                // A gap after the bytes written: the old bytes in it are needed now.
                self.pay_base(ino, &mut inner, index).await?;
            }
            let buf = inner.dirty.get_mut(&index).expect("inserted above");
            let src = &data[(pos - offset) as usize..][..n];
            if in_off == buf.data.len() {
                // Appending, the common case: no zeros written first. A large first write is
                // taken for the start of a whole block, whose room is taken at once rather than
                // grown by doubling (each step a copy and fresh pages to fault in): a block
                // buffer used before, if there is one ([`cairn_blocks::pool`]).
                if buf.data.capacity() == 0 && n as u64 >= bs / 4 {
                    match self.store.buffers().take(bs as usize) {
                        Some(room) => buf.data = room,
                        None => buf.data.reserve_exact(bs as usize),
                    }
                }
                buf.data.extend_from_slice(src);
            } else {
                if buf.data.len() < in_off + n {
                    buf.data.resize(in_off + n, 0);
                }
                buf.data[in_off..in_off + n].copy_from_slice(src);
            }
            let full = buf.data.len() as u64 == bs;
            pos += n as u64;
            if full {
                let buf = inner.dirty.remove(&index).expect("present");
                self.start_upload(ino, &mut inner, index, buf).await;
            }
        }
        inner.size = inner.size.max(end);
        inner.changed = true;
        inner.mtime = Some(Timestamp::now());
        // Keep memory bounded: commit finished uploads once enough are pending.
        if inner.pending.len() as u64 >= 2 * self.max_ra.max(4) {
            self.commit_pending(ino, &mut inner, false).await?;
        }
        Ok(data.len() as u32)
    }

    /// A block's share of the write budget. When it is spent: first this file's finished uploads
    /// are committed (which gives their shares back), then, as a last resort, its partly written
    /// blocks are uploaded and committed too; and the flusher is woken for the other files'.
    async fn buffer_permit(
        &self,
        ino: Ino,
        inner: &mut FileInner,
    ) -> Result<OwnedSemaphorePermit, RpcError> {
        loop {
            if let Ok(p) = self.buffers.clone().try_acquire_owned() {
                if self.buffers.available_permits() < self.buffer_blocks / 4 {
                    self.flusher_wake.notify_one();
                }
                return Ok(p);
            }
            self.flusher_wake.notify_one();
            if !inner.pending.is_empty() {
                self.commit_pending(ino, inner, false).await?;
            } else if !inner.dirty.is_empty() {
                self.flush_locked(ino, inner).await?;
            } else {
                // Other files hold the whole budget: the flusher gives it back.
                return Ok(self
                    .buffers
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("never closed"));
            }
        }
    }

    /// Commit, in the background, the blocks of files left dirty for [`DIRTY_FOR`], and of every
    /// idle file when the write budget runs low.
    async fn flush_loop(me: std::sync::Weak<Client>) {
        loop {
            let Some(c) = me.upgrade() else { return };
            let wake = c.flusher_wake.clone();
            let low = c.buffers.available_permits() < c.buffer_blocks / 4;
            let files: Vec<(Ino, Arc<FileState>)> = c
                .files
                .lock()
                .expect("files lock")
                .iter()
                .map(|(i, f)| (*i, f.clone()))
                .collect();
            for (ino, f) in files {
                // A file being written manages its own share.
                let Ok(mut inner) = f.inner.try_lock() else {
                    continue;
                };
                let old = inner.dirty_since.is_some_and(|t| t.elapsed() >= DIRTY_FOR);
                let holds = !inner.dirty.is_empty() || !inner.pending.is_empty();
                if holds && (low || old) {
                    if let Err(e) = c.flush_locked(ino, &mut inner).await {
                        // Reported to the writer at its next write, flush or close.
                        inner.error.get_or_insert(e);
                    }
                }
            }
            drop(c);
            let _ = tokio::time::timeout(Duration::from_secs(1), wake.notified()).await;
        }
    }

    /// For a write of `n` bytes at `in_off` that starts a buffer for block `index`: Some(the
    /// length of the block's old data) when the write starts at the block's first byte, does not
    /// cover all the old data, and the old bytes would have to come from the store; the buffer
    /// then owes them instead of reading them now. A sequential overwrite of a file (each block
    /// written from its start, in writes smaller than a block) so never reads the old blocks it
    /// replaces: before, every block cost a read of the old block first, and an overwrite after
    /// a remount ran at about a quarter of the speed of a first write.
    fn owe_base(inner: &FileInner, bs: u64, index: u64, in_off: usize, n: usize) -> Option<usize> {
        let bstart = index * bs;
        if in_off != 0 || bstart >= inner.size || inner.pending.contains_key(&index) {
            return None;
        }
        let existing = (inner.size - bstart).min(bs) as usize;
        (n < existing).then_some(existing)
    }

    /// Reads the old bytes that the buffer of block `index` owes, if it owes any, and appends
    /// them: after this the buffer is the block's content.
    async fn pay_base(&self, ino: Ino, inner: &mut FileInner, index: u64) -> Result<(), RpcError> {
        let Some(buf) = inner.dirty.get(&index) else {
            return Ok(());
        };
        if !buf.owes_base() {
            return Ok(());
        }
        let (have, base_to) = (buf.data.len(), buf.base_to);
        let old = self.committed_block(ino, inner, index).await?;
        let buf = inner.dirty.get_mut(&index).expect("checked above");
        // The file's lock is held across the fetch: nothing else touched the buffer.
        debug_assert_eq!((buf.data.len(), buf.base_to), (have, base_to));
        let from = have.min(old.len());
        let to = base_to.min(old.len());
        buf.data.extend_from_slice(&old[from..to.max(from)]);
        buf.data.resize(base_to, 0);
        Ok(())
    }

    /// The bytes of block `index` as the block map has them (loading its entry if needed):
    /// empty for a hole.
    async fn committed_block(
        &self,
        ino: Ino,
        inner: &mut FileInner,
        index: u64,
    ) -> Result<Bytes, RpcError> {
        if !inner.map.contains_key(&index) && !inner.map_loaded {
            self.load_map(ino, inner, index, 1).await?;
        }
        match inner.map.get(&index).copied() {
            Some(r) => {
                let b = self.fetch(ino, r).await?;
                Ok(b.slice(..(r.len as usize).min(b.len())))
            }
            None => Ok(Bytes::new()),
        }
    }

    /// The current bytes of block `index` before a write of `n` bytes at `in_off` changes it:
    /// empty when the write covers all the data the block has.
    async fn block_base(
        &self,
        ino: Ino,
        inner: &mut FileInner,
        index: u64,
        in_off: usize,
        n: usize,
    ) -> Result<Vec<u8>, RpcError> {
        let bstart = index * self.bs;
        if bstart >= inner.size {
            return Ok(Vec::new());
        }
        let existing = (inner.size - bstart).min(self.bs) as usize;
        if in_off == 0 && n >= existing {
            return Ok(Vec::new());
        }
        if let Some(p) = inner.pending.get(&index) {
            return Ok(p.data.to_vec());
        }
        let mut base = self.committed_block(ino, inner, index).await?.to_vec();
        base.resize(existing, 0);
        Ok(base)
    }
}

/// Uploads the blocks an earlier run left staged in the disk cache (a crash, or a stop before its
/// uploads finished), before the mount serves: their commits may be lost with that run, but
/// not their bytes, and new work must not overtake them.
async fn upload_staged(store: &BlockStore) {
    // As found at open: the store's uploader starts on them at once, and may be done already.
    let (Some(cache), Some(u)) = (store.cache(), store.cache_found()) else {
        return;
    };
    info!(
        dir = %cache.dir().display(),
        capacity = u.capacity,
        cached_blocks = u.clean_count,
        cached_bytes = u.clean_bytes,
        staged_blocks = u.staged_count,
        staged_bytes = u.staged_bytes,
        "disk cache"
    );
    let (count, bytes) = (u.staged_count, u.staged_bytes);
    if count == 0 {
        return;
    }
    info!(
        count,
        bytes, "uploading the blocks left in the disk cache by an earlier run before mounting"
    );
    let progress = async {
        loop {
            tokio::time::sleep(Duration::from_secs(10)).await;
            let (count, bytes) = store.writeback_pending();
            info!(
                count,
                bytes, "still uploading blocks left by an earlier run"
            );
        }
    };
    tokio::select! {
        result = store.drain_writeback() => match result {
            Ok(()) => info!(count, "uploaded the blocks left by an earlier run"),
            // Logged by the uploader too; the blocks concerned cannot be uploaded at all, and
            // refusing to mount would not bring them back.
            Err(e) => tracing::error!("some blocks left by an earlier run could not be uploaded: {e}"),
        },
        () = progress => {}
    }
}

/// The block that proves a mount's key: block 0 of inode 0 (no file has inode 0), holding a known
/// text encrypted under the volume's key. The first encrypted mount writes it; every later mount
/// must decrypt it, so a wrong key fails the mount instead of the first read.
const KEY_CHECK: BlockKey = BlockKey {
    ino: 0,
    index: 0,
    version: 0,
};
const KEY_CHECK_TEXT: &[u8] = b"cairn key check v1";

async fn check_key(store: &BlockStore, volume: &str) -> Result<(), RpcError> {
    let wrong = || {
        RpcError::new(
            ErrorCode::Invalid,
            format!("the encryption key does not match volume `{volume}`: mount with the key the volume was written with"),
        )
    };
    match store.get(&KEY_CHECK).await {
        Ok(text) if text == KEY_CHECK_TEXT => Ok(()),
        Ok(_) => Err(wrong()),
        Err(cairn_blocks::BlockError::NotFound { .. }) => {
            store
                .put(&KEY_CHECK, Bytes::from_static(KEY_CHECK_TEXT))
                .await
                .map_err(|e| io_err(format!("write the key check: {e}")))?;
            Ok(())
        }
        Err(cairn_blocks::BlockError::Corrupt { .. }) => Err(wrong()),
        Err(e) => Err(io_err(format!("read the key check: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sequential reader with read-ahead, through a cache of `cache_blocks` blocks: how many
    /// of the blocks it prefetched were gone when its reads arrived.
    #[test]
    fn a_cgroup_limit_anywhere_above_counts() {
        let root = tempfile::tempdir().unwrap();
        let leaf = root.path().join("kubepods/pod1/c1");
        std::fs::create_dir_all(&leaf).unwrap();
        std::fs::write(root.path().join("kubepods/memory.max"), "8589934592\n").unwrap();
        std::fs::write(root.path().join("kubepods/pod1/memory.max"), "2147483648\n").unwrap();
        std::fs::write(leaf.join("memory.max"), "max\n").unwrap();
        let limit = |path| cgroup_limit(root.path(), path, "memory.max");
        assert_eq!(limit("/kubepods/pod1/c1"), 2 << 30);
        assert_eq!(limit("/kubepods"), 8 << 30);
        assert_eq!(limit("/elsewhere"), u64::MAX);
        assert_eq!(limit("/"), u64::MAX);
    }

    fn prefetched_blocks_lost(cache_blocks: u64, window: u64, blocks: u64) -> u64 {
        const BS: u32 = 1 << 20;
        let cache = block_cache(cache_blocks * u64::from(BS), BS);
        let block = Bytes::from(vec![7u8; BS as usize]);
        let mut lost = 0;
        let mut issued = 0;
        for i in 0..blocks {
            while issued < (i + 1 + window).min(blocks) {
                cache.insert((1, issued, 1, WHOLE), block.clone());
                issued += 1;
            }
            // A block is read in several pieces, each a hit.
            for _ in 0..4 {
                if cache.get(&(1, i, 1, WHOLE)).is_none() {
                    lost += 1;
                    cache.insert((1, i, 1, WHOLE), block.clone());
                }
            }
        }
        lost
    }

    #[test]
    fn read_ahead_blocks_stay_cached_until_read() {
        // The mount's default: 512 MiB of 4 MiB blocks, 32 MiB of read-ahead (8 blocks), a file
        // 16 times the cache (the library's default share lost 1942 of 2048 blocks here); four
        // readers' windows at once; smaller caches, with read-ahead at most half of them (the
        // mount's limit) and at most 32 MiB. Keys fall in the cache's shards by a hash seeded at
        // random, so this checks a different spread each run.
        assert_eq!(prefetched_blocks_lost(128, 8, 2048), 0);
        assert_eq!(prefetched_blocks_lost(128, 32, 1024), 0);
        assert_eq!(prefetched_blocks_lost(64, 8, 2048), 0);
        assert_eq!(prefetched_blocks_lost(32, 4, 2048), 0);
        assert_eq!(prefetched_blocks_lost(16, 2, 1024), 0);
    }
}
