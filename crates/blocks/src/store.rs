//! The object store of one volume: where blocks live and how they are written, read and checked.
//!
//! The store is one `Arc<dyn ObjectStore>` built from layers (STYLE 1.4), outermost first:
//!
//! ```text
//! Retrying(                        retry.rs: backoff within a budget, GET bodies buffered
//!   Prefix(AmazonS3(bucket), p)    s3://bucket/p: object_store's own retries off, timeouts set
//!   | LocalFileSystem(root)        file:///root: fsync on every put
//!   | InMemory)                    memory://: unit tests
//! ```
//!
//! Three `Retrying` layers share the same inner store: one with the data budget (2 minutes) for
//! put, get and delete, one with a budget of seconds for [`BlockStore::check`], which must say
//! "unreachable" quickly instead of retrying for minutes, and a quiet one for the writeback
//! uploader, which logs its failures itself (once per block, rate-limited).
//!
//! Writing a block ([`BlockStore::put`]):
//! 1. Encode it (compress, checksum: see [`crate::codec`]).
//! 2. PUT it create-if-absent (`PutMode::Create`: `If-None-Match: *` on S3, a hard link on a
//!    local folder), retrying transient failures.
//! 3. If the store answers "already exists", an earlier attempt landed (its response was lost) or
//!    the caller is replaying a write: read the object back and decode it. Same raw bytes: done.
//!    Different bytes: [`BlockError::Conflict`], since keys are never reused. Unreadable (corrupt)
//!    or gone: overwrite it, since we hold the bytes that belong there.
//!
//! Reading a block ([`BlockStore::get`]): GET with retries, then decode, which checks the body
//! length against the header and both checksums. A block that fails is read once more (a torn
//! read heals; damage at rest does not) and then reported as [`BlockError::Corrupt`]. Bytes that
//! failed verification are never returned.
//!
//! Reading part of a block ([`BlockStore::get_range`], for random access):
//! 1. The frame table of the object (format v2, see [`crate::codec`]): from the in-memory table
//!    cache, or one ranged GET of the header and the largest table a block of the length the
//!    caller gives can have (a longer table, from a writer with smaller frames, costs one more
//!    GET). The table is checked (its own crc) and then cached: block objects never change, so a
//!    table never goes stale. The cache is bounded by bytes ([`INDEX_CACHE_BYTES`]).
//! 2. One ranged GET of the contiguous span of frames that holds the bytes asked for; each frame
//!    is checked (stored crc, tag or raw crc) and decoded. Bytes outside the span are never
//!    fetched.
//! 3. Verification failures are handled as for `get`: the table is dropped from the cache, the
//!    read is made once more, then [`BlockError::Corrupt`] names the object.
//! 4. A version 1 object (no table) is read whole, as by `get`, and the caller is told so
//!    ([`Part::Whole`]) so that it can keep the whole block.
//!
//! GETs, ranged or not, go through the retrying layer, which also checks that the body is as
//! long as the range the store announced.
//!
//! With a disk cache ([`StoreConfig::cache`], [`crate::cache`]), which holds stored (encoded)
//! objects:
//! - `get` decodes a cached copy with the same checks; one that fails is dropped (a warning) and
//!   the block is read from the store. What the store returns is cached.
//! - `put` without writeback writes to the store, then caches the copy. With writeback it stages
//!   the object durably in the cache and returns; the uploader (writeback.rs) writes it to the
//!   store with steps 2 and 3 above, retrying forever, and then the copy becomes a clean one. If
//!   staging fails (cache full of staged blocks, disk full, I/O error), `put` writes directly.
//! - `get_range` serves the range from a cached copy of the whole object if there is one,
//!   reading from the file only the frame table (unless it is in the table cache) and the frames
//!   it needs, as from the store; it checks the frames it decodes and the copy's length against
//!   the table, and a copy that fails is dropped as by `get`. It never caches a part of an
//!   object: the cache holds whole objects only. [`BlockStore::is_cached`] says whether a block
//!   has a copy, so that a caller can fetch whole blocks for the cache in the background.
//! - `delete` drops the cached or staged copy too.

use std::cell::Cell;
use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutMode, RetryConfig,
};

use crate::cache::{CacheConfig, CacheUsage, DiskCache};
use crate::codec::{index_len_for, BlockCodec, CodecError, FrameIndex, IndexRead};
use crate::error::{io_kind, s3_error_code, transport_kind, BlockError};
use crate::key::BlockKey;
use crate::pool::BufferPool;
use crate::retry::{RetryPolicy, RetryingStore};
use crate::writeback::Uploader;

/// Whether requests to `endpoint` (None: AWS) may leave their body out of the signature
/// (`x-amz-content-sha256: UNSIGNED-PAYLOAD`). Hashing every body with SHA-256 was a seventh of a
/// mount's CPU on sequential writes. It is left out where nothing on the way can change the
/// bytes unseen: over TLS (which authenticates them) and to a loopback address. Over plain HTTP
/// to another host the signature keeps covering the body. Either way the frames' own checksums
/// (and, on encrypted volumes, their authentication tags) are checked on every read.
fn unsigned_payload_is_safe(endpoint: Option<&str>) -> bool {
    let Some(endpoint) = endpoint else {
        return true;
    };
    let Ok(u) = url::Url::parse(endpoint) else {
        return false;
    };
    match (u.scheme(), u.host()) {
        ("https", _) => true,
        ("http", Some(url::Host::Ipv4(a))) => a.is_loopback(),
        ("http", Some(url::Host::Ipv6(a))) => a.is_loopback(),
        ("http", Some(url::Host::Domain(d))) => d.eq_ignore_ascii_case("localhost"),
        _ => false,
    }
}

/// TCP connect timeout of the S3 client.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Timeout of one S3 request, body included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on the whole of [`BlockStore::check`].
const CHECK_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest round of retries of one writeback upload (retried forever in rounds).
const UPLOAD_ROUND: Duration = Duration::from_secs(10);
/// Region when none is given.
const DEFAULT_REGION: &str = "us-east-1";
/// Longest volume name.
const MAX_VOLUME_LEN: usize = 128;
/// Blocks at least this large are encoded and decoded on the blocking thread pool: zstd takes
/// milliseconds per MiB (far more at high levels), which would stall other tasks on the runtime.
const OFFLOAD_MIN_LEN: usize = 128 << 10;

/// Bytes of parsed frame tables kept in memory (about 2 KiB per 4 MiB block: some 8000 blocks).
pub const INDEX_CACHE_BYTES: u64 = 16 << 20;
/// Idle block buffers kept for the next blocks ([`crate::pool`]): as many as the downloads a
/// mount has in flight by default, 64 MiB of 4 MiB blocks.
const POOLED_BUFFERS: usize = 16;

/// What the store knows of an object's layout, once its first bytes were read.
enum Layout {
    /// Version 1: no frame table; read whole.
    Whole,
    /// Version 2: where the frames are.
    Frames(Arc<FrameIndex>),
}

#[derive(Clone)]
struct LayoutWeighter;

impl quick_cache::Weighter<String, Arc<Layout>> for LayoutWeighter {
    fn weight(&self, path: &String, layout: &Arc<Layout>) -> u64 {
        let index = match &**layout {
            Layout::Whole => 0,
            Layout::Frames(index) => index.weight(),
        };
        (path.len() as u64 + index + 32).max(1)
    }
}

type LayoutCache = quick_cache::sync::Cache<String, Arc<Layout>, LayoutWeighter>;

/// The answer of [`BlockStore::get_part`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Part {
    /// Exactly the raw bytes asked for (clamped to the block's length).
    Range(Bytes),
    /// The object has no frames (format v1) and was read whole: the whole raw block.
    Whole(Bytes),
}

thread_local! {
    /// Blocking work may run on this thread itself (set by [`with_inline_blocking`]).
    static INLINE_BLOCKING: Cell<bool> = const { Cell::new(false) };
}

/// Run `f` with the blocking work of the block store that it starts (the disk cache's file I/O,
/// block decoding) done on this thread, instead of handed to the runtime's blocking pool. For
/// threads that exist to wait (FUSE threads), never for a runtime's workers: a random read
/// served from the disk cache otherwise wakes two more threads (the pool's, then a worker to
/// resume the request), which on a small virtual machine cost more than the read itself.
pub fn with_inline_blocking<R>(f: impl FnOnce() -> R) -> R {
    let before = INLINE_BLOCKING.replace(true);
    let out = f();
    INLINE_BLOCKING.set(before);
    out
}

/// Runs blocking work (file I/O, CPU-heavy codec work) off the async threads: on this thread
/// inside [`with_inline_blocking`], else on the runtime's blocking pool (or on this thread after
/// all, when the pool refuses it because the runtime is shutting down).
pub(crate) async fn off_runtime<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    if INLINE_BLOCKING.get() {
        return work();
    }
    // The work waits in a slot of its own, not in the task: a task that the runtime cancels
    // before it starts (it is shutting down; a mount's worker threads still poll their tasks
    // then, and once panicked here at an unmount) drops its closure, and the work still has to
    // be done, here.
    let slot = Arc::new(std::sync::Mutex::new(Some(work)));
    let queued = Arc::clone(&slot);
    let take =
        |slot: &std::sync::Mutex<Option<_>>| slot.lock().unwrap_or_else(|e| e.into_inner()).take();
    match tokio::task::spawn_blocking(move || take(&queued).map(|work| work())).await {
        Ok(Some(value)) => value,
        Ok(None) => unreachable!("only a task that runs takes its work"),
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(_) => {
                let work = take(&slot).expect("a cancelled task never took its work");
                work()
            }
        },
    }
}

/// Blocks written of at least this many raw bytes are not copied into the disk cache after their
/// upload (smaller ones, the blocks of small files and the tails of large ones, are). A large
/// sequential write would otherwise write everything twice on the client's disk, competing with
/// the upload for CPU and disk, for reads that the page cache mostly answers; a later read of
/// such a block fills the cache as any read does.
const WRITE_THROUGH_BELOW: usize = 1 << 20;

/// Where blocks live, as the user gives it.
#[derive(Clone, Debug, Default)]
pub struct StoreConfig {
    /// "file:///abs/path" (a local folder; created if missing), "s3://bucket" or
    /// "s3://bucket/prefix", "memory://" (unit tests only).
    pub url: String,
    /// S3 endpoint, e.g. "http://127.0.0.1:8333" (None: AWS). http:// endpoints are allowed.
    pub s3_endpoint: Option<String>,
    /// S3 region (None: "us-east-1").
    pub s3_region: Option<String>,
    /// Credentials; None reads AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN)
    /// from the environment.
    pub access_key_id: Option<String>,
    /// Secret of `access_key_id`.
    pub secret_access_key: Option<String>,
    /// On-disk block cache (L2), optionally with writeback; see [`crate::cache`].
    pub cache: Option<CacheConfig>,
}

/// Where a store is; for messages and object URLs.
#[derive(Clone, Debug)]
enum Location {
    Memory,
    Local {
        root: PathBuf,
    },
    S3 {
        bucket: String,
        prefix: String,
        endpoint: Option<String>,
        region: String,
    },
}

impl Location {
    /// The store's URL, e.g. `s3://bucket/prefix`.
    fn url(&self) -> String {
        match self {
            Location::Memory => "memory://".to_string(),
            Location::Local { root } => format!("file://{}", root.display()),
            Location::S3 { bucket, prefix, .. } if prefix.is_empty() => format!("s3://{bucket}"),
            Location::S3 { bucket, prefix, .. } => format!("s3://{bucket}/{prefix}"),
        }
    }

    /// The server we talk to.
    fn endpoint(&self) -> String {
        match self {
            Location::S3 {
                endpoint: Some(endpoint),
                ..
            } => endpoint.clone(),
            Location::S3 { region, .. } => format!("https://s3.{region}.amazonaws.com"),
            Location::Memory | Location::Local { .. } => self.url(),
        }
    }

    fn describe(&self) -> String {
        match self {
            Location::S3 { .. } => format!("{} at {}", self.url(), self.endpoint()),
            Location::Memory | Location::Local { .. } => self.url(),
        }
    }

    /// Full URL of an object, for messages.
    fn object_url(&self, path: &Path) -> String {
        let url = self.url();
        if url.ends_with('/') {
            format!("{url}{path}")
        } else {
            format!("{url}/{path}")
        }
    }
}

/// The object store of one volume: encodes, writes, reads and checks blocks.
#[derive(Clone)]
pub struct BlockStore {
    inner: Arc<Inner>,
}

struct Inner {
    core: Arc<Core>,
    cache: Option<DiskCache>,
    writeback: bool,
    /// Uploads staged blocks; present whenever there is a cache (it may hold staged blocks of an
    /// earlier run even without writeback now).
    uploader: Option<Uploader>,
    /// What the disk cache held when it was opened, before the uploader began.
    found: Option<CacheUsage>,
    /// A failed stage was logged; cleared when staging works again.
    stage_failing: AtomicBool,
    /// Layouts (frame tables) of objects read in part, by object path.
    layouts: LayoutCache,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Deterministic, unlike the end of the uploader's tasks: the folder can be opened again
        // as soon as the last handle is gone.
        if let Some(cache) = &self.cache {
            cache.release();
        }
    }
}

/// What the uploader shares with the store: the object store and the codec, no cache.
pub(crate) struct Core {
    /// Retrying with the data budget.
    data: Arc<dyn ObjectStore>,
    /// Retrying with the probe budget, for `check`.
    probe: Arc<dyn ObjectStore>,
    /// Retrying quietly, in rounds of at most [`UPLOAD_ROUND`]: for the writeback uploader,
    /// which retries rounds forever and logs failures itself.
    pub(crate) upload: Arc<dyn ObjectStore>,
    codec: BlockCodec,
    volume: String,
    location: Location,
    /// Delays between the uploader's rounds.
    pub(crate) policy: RetryPolicy,
    /// Buffers of whole blocks, used again.
    pool: Arc<BufferPool>,
}

impl fmt::Debug for BlockStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let core = &self.inner.core;
        f.debug_struct("BlockStore")
            .field("store", &core.data.to_string())
            .field("volume", &core.volume)
            .field("codec", &core.codec)
            .field("cache", &self.inner.cache)
            .field("writeback", &self.inner.writeback)
            .finish()
    }
}

fn bad_config(message: impl Into<String>) -> BlockError {
    BlockError::BadConfig {
        message: message.into(),
    }
}

/// Volume names become one segment of every object path.
fn check_volume(volume: &str) -> Result<(), BlockError> {
    let ok = !volume.is_empty()
        && volume.len() <= MAX_VOLUME_LEN
        && !volume.starts_with('.')
        && volume
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(bad_config(format!(
            "invalid volume name `{volume}`: use 1 to {MAX_VOLUME_LEN} letters, digits, '.', '_' \
             or '-', not starting with '.'"
        )))
    }
}

/// Reads a setting from the config, else from the environment.
fn setting(value: &Option<String>, env: &str) -> Option<String> {
    value
        .clone()
        .or_else(|| std::env::var(env).ok())
        .filter(|v| !v.is_empty())
}

fn open_local(url: &str) -> Result<(Arc<dyn ObjectStore>, Location), BlockError> {
    let usage = "a local block store is file:///absolute/path";
    let parsed = url::Url::parse(url)
        .map_err(|e| bad_config(format!("invalid store URL `{url}`: {e}; {usage}")))?;
    let root = match parsed.host_str() {
        None | Some("") => parsed.to_file_path().ok(),
        Some(_) => None,
    }
    .ok_or_else(|| {
        bad_config(format!(
            "store URL `{url}` does not name an absolute path: {usage}"
        ))
    })?;
    std::fs::create_dir_all(&root).map_err(|e| {
        bad_config(format!(
            "cannot create the block folder {}: {e}; check the path and its permissions or choose another --store",
            root.display()
        ))
    })?;
    let store = LocalFileSystem::new_with_prefix(&root)
        .map_err(|e| {
            bad_config(format!(
                "cannot open the block folder {}: {e}",
                root.display()
            ))
        })?
        .with_fsync(true);
    Ok((Arc::new(store), Location::Local { root }))
}

fn open_s3(cfg: &StoreConfig, url: &str) -> Result<(Arc<dyn ObjectStore>, Location), BlockError> {
    let usage = "use s3://bucket or s3://bucket/prefix";
    let parsed = url::Url::parse(url)
        .map_err(|e| bad_config(format!("invalid store URL `{url}`: {e}; {usage}")))?;
    let bucket = parsed.host_str().unwrap_or_default().to_string();
    if bucket.is_empty() {
        return Err(bad_config(format!(
            "store URL `{url}` names no bucket: {usage}"
        )));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() || parsed.port().is_some() {
        return Err(bad_config(format!(
            "store URL `{url}` has parts an S3 store URL cannot have: {usage}, and give the server with --s3-endpoint"
        )));
    }
    let prefix = parsed.path().trim_matches('/').to_string();
    let region = cfg
        .s3_region
        .clone()
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| DEFAULT_REGION.to_string());

    let key = setting(&cfg.access_key_id, "AWS_ACCESS_KEY_ID");
    let secret = setting(&cfg.secret_access_key, "AWS_SECRET_ACCESS_KEY");
    let (key, secret) =
        match (key, secret) {
            (Some(k), Some(s)) => (k, s),
            // Without keys object_store would ask the EC2 instance metadata service, which is not
            // supported yet: say so rather than hang on a link-local address.
            (None, None) => {
                return Err(bad_config(format!(
                    "no S3 credentials for {url}: set AWS_ACCESS_KEY_ID and \
                 AWS_SECRET_ACCESS_KEY in the environment of the mount"
                )))
            }
            (Some(_), None) => return Err(bad_config(
                "an S3 access key id is set but no secret access key: set AWS_SECRET_ACCESS_KEY",
            )),
            (None, Some(_)) => {
                return Err(bad_config(
                    "an S3 secret access key is set but no access key id: set AWS_ACCESS_KEY_ID",
                ))
            }
        };

    let mut builder = AmazonS3Builder::new()
        .with_bucket_name(&bucket)
        .with_region(&region)
        .with_access_key_id(key)
        .with_secret_access_key(secret)
        .with_virtual_hosted_style_request(false)
        .with_client_options(
            ClientOptions::new()
                .with_connect_timeout(CONNECT_TIMEOUT)
                .with_timeout(REQUEST_TIMEOUT),
        )
        // Retries are ours (retry.rs), with one rule for what is permanent and one budget.
        .with_retry(RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: 0,
            retry_timeout: REQUEST_TIMEOUT,
        });
    if let Some(token) = std::env::var("AWS_SESSION_TOKEN")
        .ok()
        .filter(|t| !t.is_empty() && cfg.access_key_id.is_none())
    {
        builder = builder.with_token(token);
    }
    let endpoint = cfg.s3_endpoint.clone().filter(|e| !e.is_empty());
    if let Some(endpoint) = &endpoint {
        let valid = url::Url::parse(endpoint)
            .map(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
            .unwrap_or(false);
        if !valid {
            return Err(bad_config(format!(
                "invalid S3 endpoint `{endpoint}`: give it as http://host:port or https://host[:port]"
            )));
        }
        builder = builder
            .with_endpoint(endpoint.trim_end_matches('/'))
            .with_allow_http(endpoint.starts_with("http://"));
    }
    let builder = builder.with_unsigned_payload(unsigned_payload_is_safe(endpoint.as_deref()));
    let s3 = builder
        .build()
        .map_err(|e| bad_config(format!("cannot configure the S3 store {url}: {e}")))?;
    let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
        Arc::new(s3)
    } else {
        Arc::new(PrefixStore::new(s3, prefix.as_str()))
    };
    Ok((
        store,
        Location::S3 {
            bucket,
            prefix,
            endpoint: endpoint.map(|e| e.trim_end_matches('/').to_string()),
            region,
        },
    ))
}

/// Raw bytes `range` of an object, out of `raw`: the decoded `frames` of its `index`.
fn range_of_frames(
    index: &FrameIndex,
    frames: Range<usize>,
    raw: &Bytes,
    range: Range<u64>,
) -> Bytes {
    let base = index.raw_start(frames.start);
    let end = range.end.min(index.raw_len()) - base;
    raw.slice((range.start - base) as usize..end as usize)
}

/// A copy in the disk cache failed verification, so the caller reads the object store
/// instead: logged, and dropped unless it is staged (then it is the block's only copy until
/// uploaded, and the uploader's own check decides).
async fn cached_copy_failed(
    cache: &DiskCache,
    path: &Path,
    staged: bool,
    reason: impl std::fmt::Display,
) {
    if staged {
        tracing::error!(
            path = %path, dir = %cache.dir().display(), %reason,
            "a block waiting for upload in the disk cache failed verification; reading it from the object store"
        );
    } else {
        tracing::warn!(
            path = %path, dir = %cache.dir().display(), %reason,
            "cached copy of a block failed verification; dropped it, reading the block from the object store"
        );
        cache.remove(path.as_ref()).await;
    }
}

impl BlockStore {
    /// Opens the block store of `volume` described by `cfg`. Makes no request (a local folder is
    /// created if missing); use [`BlockStore::check`] to prove the store works. With a cache
    /// (`cfg.cache`), takes the cache folder's lock and queues the blocks staged there by an
    /// earlier run for upload; then it must be called within a tokio runtime.
    pub fn open(
        cfg: &StoreConfig,
        volume: &str,
        codec: BlockCodec,
    ) -> Result<BlockStore, BlockError> {
        check_volume(volume)?;
        let url = cfg.url.trim();
        let scheme = url.split_once("://").map(|(s, _)| s);
        if scheme != Some("s3") && (cfg.s3_endpoint.is_some() || cfg.s3_region.is_some()) {
            return Err(bad_config(format!(
                "an S3 endpoint or region is set but the store `{url}` is not s3://: drop --s3-endpoint/--s3-region or use an s3:// store"
            )));
        }
        let (inner, location): (Arc<dyn ObjectStore>, Location) = match scheme {
            Some("memory") if url == "memory://" => (Arc::new(InMemory::new()), Location::Memory),
            Some("file") => open_local(url)?,
            Some("s3") => open_s3(cfg, url)?,
            _ => {
                return Err(bad_config(format!(
                    "unsupported store URL `{url}`: use file:///path or s3://bucket[/prefix]"
                )))
            }
        };
        Self::assemble(
            inner,
            location,
            volume,
            codec,
            RetryPolicy::DATA,
            cfg.cache.as_ref(),
            INDEX_CACHE_BYTES,
        )
    }

    /// Puts the retrying layers around `inner`, and opens the cache.
    fn assemble(
        inner: Arc<dyn ObjectStore>,
        location: Location,
        volume: &str,
        codec: BlockCodec,
        data_policy: RetryPolicy,
        cache: Option<&CacheConfig>,
        index_cache_bytes: u64,
    ) -> Result<BlockStore, BlockError> {
        let pool = BufferPool::new(POOLED_BUFFERS);
        let data =
            Arc::new(RetryingStore::new(Arc::clone(&inner), data_policy).with_pool(pool.clone()));
        // Short rounds: the uploader retries forever around them, and logs a block's first
        // failed round, which should come soon after the store goes away.
        let upload_policy = RetryPolicy {
            budget: data_policy.budget.min(UPLOAD_ROUND),
            ..data_policy
        };
        let upload = Arc::new(RetryingStore::quiet(Arc::clone(&inner), upload_policy));
        let probe = Arc::new(RetryingStore::new(inner, RetryPolicy::PROBE));
        let core = Arc::new(Core {
            data,
            probe,
            upload,
            codec,
            volume: volume.to_string(),
            location,
            policy: data_policy,
            pool,
        });
        let (cache, uploader, writeback, found) = match cache {
            None => (None, None, false, None),
            Some(cfg) => {
                if tokio::runtime::Handle::try_current().is_err() {
                    return Err(bad_config(
                        "a block store with a disk cache must be opened within a tokio runtime",
                    ));
                }
                let cache = DiskCache::open(&cfg.dir, cfg.capacity)?;
                cache.use_pool(Arc::clone(&core.pool));
                let found = cache.usage();
                let uploader = Uploader::start(Arc::clone(&core), cache.clone());
                (Some(cache), Some(uploader), cfg.writeback, Some(found))
            }
        };
        Ok(BlockStore {
            inner: Arc::new(Inner {
                core,
                cache,
                writeback,
                uploader,
                found,
                stage_failing: AtomicBool::new(false),
                layouts: LayoutCache::with_weighter(
                    (index_cache_bytes / 2048).max(16) as usize,
                    index_cache_bytes,
                    LayoutWeighter,
                ),
            }),
        })
    }

    /// e.g. "s3://bucket/prefix at http://127.0.0.1:8333" — for logs and errors.
    pub fn describe(&self) -> String {
        self.inner.core.location.describe()
    }

    /// The codec new blocks are written with.
    pub fn codec(&self) -> &BlockCodec {
        &self.inner.core.codec
    }

    /// The disk cache, if the store has one.
    pub fn cache(&self) -> Option<&DiskCache> {
        self.inner.cache.as_ref()
    }

    /// Proves the store is usable before a mount goes live: reachable, bucket exists, credentials
    /// work, a probe object can be written, read and deleted. Takes seconds at most: transient
    /// failures are retried for about 3 s, and the whole check is bounded by 20 s.
    pub async fn check(&self) -> Result<(), BlockError> {
        match tokio::time::timeout(CHECK_TIMEOUT, self.check_probe()).await {
            Ok(result) => result,
            Err(_) => Err(BlockError::Timeout {
                store: self.describe(),
                op: "check",
                after: CHECK_TIMEOUT,
            }),
        }
    }

    async fn check_probe(&self) -> Result<(), BlockError> {
        let core = &self.inner.core;
        // Outside the block key space: block paths start with 4 hex digits.
        let path = Path::from(format!(
            "cairn-probe/{}/{:016x}",
            core.volume,
            rand::random::<u64>()
        ));
        let raw = Bytes::from(format!("cairn store check of volume {}", core.volume));
        let stored = core.codec.encode_for(&raw, path.as_ref().as_bytes());
        core.probe
            .put_opts(&path, stored.into(), PutMode::Create.into())
            .await
            .map_err(|e| core.error("check", &path, e))?;
        let (back, _) = core.read_verified(&core.probe, "check", &path).await?;
        if back != raw {
            return Err(BlockError::Conflict {
                path: core.location.object_url(&path),
            });
        }
        core.probe
            .delete(&path)
            .await
            .map_err(|e| core.error("check", &path, e))?;
        Ok(())
    }

    /// Encode and write a block; returns the stored size in bytes. Durable when Ok: in the store,
    /// or with writeback, staged in the disk cache (uploaded in the background; see
    /// [`BlockStore::drain_writeback`]). Writing the same key again with the same bytes is Ok (a
    /// replayed write); with other bytes it is [`BlockError::Conflict`].
    pub async fn put(&self, key: &BlockKey, raw: Bytes) -> Result<u64, BlockError> {
        let core = &self.inner.core;
        let path = core.path(key);
        let stored = core.encode(raw.clone(), &path).await;
        if let (Some(cache), true) = (&self.inner.cache, self.inner.writeback) {
            if let Some(len) = self.replayed_stage(cache, &path, &raw).await? {
                return Ok(len);
            }
            match cache.stage(path.as_ref(), stored.clone()).await {
                Ok(()) => {
                    if self.inner.stage_failing.swap(false, Ordering::Relaxed) {
                        tracing::info!(dir = %cache.dir().display(), "staging blocks in the disk cache works again");
                    }
                    if let Some(uploader) = &self.inner.uploader {
                        uploader.enqueue(path.to_string());
                    }
                    return Ok(stored.len() as u64);
                }
                Err(e) => {
                    if !self.inner.stage_failing.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            dir = %cache.dir().display(), error = %e,
                            "cannot stage blocks in the disk cache; uploading them directly until it works again"
                        );
                    }
                }
            }
        }
        let put = core.put_encoded(&core.data, "put", &path, stored.clone(), Some(&raw));
        let Some(cache) = self
            .inner
            .cache
            .as_ref()
            .filter(|_| raw.len() < WRITE_THROUGH_BELOW)
        else {
            return put.await.map(|(len, _)| len);
        };
        // The copy is written beside the upload, not after it: an fsync waits for this put, and
        // the upload takes far longer. Until the put succeeds nothing refers to the object, so a
        // copy of an object that never lands is only an unused entry; it is dropped at once when
        // the put fails, or when the bucket already held an equal object in another encoding.
        let (put, copied) = tokio::join!(put, cache.insert(path.as_ref(), stored));
        if copied && !matches!(put, Ok((_, true))) {
            cache.remove(path.as_ref()).await;
        }
        put.map(|(len, _)| len)
    }

    /// With writeback, a put of a block already staged: Some(stored size) if it holds the same
    /// bytes, Conflict if other bytes, None if it is not staged or its copy is damaged.
    async fn replayed_stage(
        &self,
        cache: &DiskCache,
        path: &Path,
        raw: &Bytes,
    ) -> Result<Option<u64>, BlockError> {
        let core = &self.inner.core;
        let Some((existing, true)) = cache.get(path.as_ref()).await else {
            return Ok(None);
        };
        match core.decode(existing.clone(), path).await {
            Ok(back) if back == raw => Ok(Some(existing.len() as u64)),
            Ok(_) => Err(BlockError::Conflict {
                path: core.location.object_url(path),
            }),
            Err(_) => Ok(None),
        }
    }

    /// Buffers of whole blocks that come back when their bytes are dropped: for callers that
    /// build blocks (a writer's block buffers), so that they reuse the ones of blocks read.
    pub fn buffers(&self) -> &Arc<BufferPool> {
        &self.inner.core.pool
    }

    /// Read and decode a block; checks length and checksums. With a cache, a cached copy is
    /// used if it passes the same checks (one that fails is dropped, with a warning, and the
    /// block read from the store), and a block read from the store is cached.
    pub async fn get(&self, key: &BlockKey) -> Result<Bytes, BlockError> {
        self.get_copied(key, true).await
    }

    /// As [`BlockStore::get`], but a block read from the store is copied into the disk cache
    /// without fail ([`DiskCache::keep_behind`]: this waits for a free copy slot, not for the
    /// copy): for background reads that leave the block in the cache and hand its bytes to the
    /// kernel.
    pub async fn get_and_keep(&self, key: &BlockKey) -> Result<Bytes, BlockError> {
        self.get_copied(key, false).await
    }

    async fn get_copied(&self, key: &BlockKey, behind: bool) -> Result<Bytes, BlockError> {
        let core = &self.inner.core;
        let path = core.path(key);
        if let Some(cache) = &self.inner.cache {
            if let Some((stored, staged)) = cache.get(path.as_ref()).await {
                match core.decode(stored, &path).await {
                    Ok(raw) => return Ok(raw),
                    Err(reason) => cached_copy_failed(cache, &path, staged, reason).await,
                }
            }
        }
        let (raw, stored) = core.read_verified(&core.data, "get", &path).await?;
        match &self.inner.cache {
            Some(cache) if behind => cache.insert_behind(path.as_ref(), stored),
            Some(cache) => cache.keep_behind(path.as_ref(), stored).await,
            None => {}
        }
        Ok(raw)
    }

    /// Copies the object of `key` into the disk cache without decoding it: for background
    /// copies that only warm the cache. Only its stored checksums are checked here (no
    /// decompression, no key); every read of the copy checks it whole, as for any cached copy.
    /// Nothing if there is no disk cache or the copy is there already.
    pub async fn fetch_into_cache(&self, key: &BlockKey) -> Result<(), BlockError> {
        let core = &self.inner.core;
        let path = core.path(key);
        let Some(cache) = &self.inner.cache else {
            return Ok(());
        };
        if cache.contains(path.as_ref()) {
            return Ok(());
        }
        let check = |stored: Bytes| off_runtime(move || BlockCodec::check_stored(&stored));
        let ((), stored) = core.read_checked(&core.data, "get", &path, check).await?;
        cache.insert(path.as_ref(), stored).await;
        Ok(())
    }

    /// Raw bytes `range` of a block (clamped to the block's length), fetching only the frames
    /// that hold them; see the module doc. `block_len` is the raw length of the block as the
    /// caller knows it (from the block map): it sizes the first read so that header and frame
    /// table come in one request; a wrong value costs a request, never a wrong answer. Checks
    /// as `get`: bytes that fail verification are never returned.
    pub async fn get_range(
        &self,
        key: &BlockKey,
        range: Range<u64>,
        block_len: u64,
    ) -> Result<Bytes, BlockError> {
        match self.get_part(key, range.clone(), block_len).await? {
            Part::Range(raw) => Ok(raw),
            Part::Whole(raw) => {
                let end = range.end.min(raw.len() as u64);
                Ok(raw.slice(range.start.min(end) as usize..end as usize))
            }
        }
    }

    /// As [`BlockStore::get_range`], but an object without frames (format v1), which has to be
    /// read whole, comes back whole ([`Part::Whole`]), so the caller can keep all of it.
    pub async fn get_part(
        &self,
        key: &BlockKey,
        range: Range<u64>,
        block_len: u64,
    ) -> Result<Part, BlockError> {
        let core = &self.inner.core;
        let path = core.path(key);
        if range.start >= range.end {
            return Ok(Part::Range(Bytes::new()));
        }
        if let Some(cache) = &self.inner.cache {
            if let Some(raw) = self
                .cached_part(cache, &path, range.clone(), block_len)
                .await
            {
                return Ok(Part::Range(raw));
            }
        }
        let reason = match self.read_part(&path, range.clone(), block_len).await? {
            Ok(Some(raw)) => return Ok(Part::Range(raw)),
            Ok(None) => return self.get(key).await.map(Part::Whole),
            Err(reason) => reason,
        };
        tracing::warn!(
            path = %core.object_url(&path), %reason,
            "block object failed verification; reading it again"
        );
        self.inner.layouts.remove(path.as_ref());
        match self.read_part(&path, range, block_len).await? {
            Ok(Some(raw)) => Ok(Part::Range(raw)),
            Ok(None) => self.get(key).await.map(Part::Whole),
            Err(reason) => Err(BlockError::Corrupt {
                path: core.object_url(&path),
                reason,
            }),
        }
    }

    /// Whether the disk cache holds a copy of the block (false without a disk cache).
    pub fn is_cached(&self, key: &BlockKey) -> bool {
        self.inner
            .cache
            .as_ref()
            .is_some_and(|cache| cache.contains(self.inner.core.path(key).as_ref()))
    }

    /// Raw bytes `range` of the block at `path` from its copy in the disk cache, reading only
    /// the copy's frame table (unless known) and the frames that hold them, as `read_part` reads
    /// the store. None: no copy, or one that failed verification (dropped, as by `get`), so the
    /// caller reads the store.
    async fn cached_part(
        &self,
        cache: &DiskCache,
        path: &Path,
        range: Range<u64>,
        block_len: u64,
    ) -> Option<Bytes> {
        let core = &self.inner.core;
        // Whether the copy read last is staged, for `cached_copy_failed`.
        let staged = AtomicBool::new(false);
        let prefix = |len: u64| {
            let staged = &staged;
            async move {
                let part = cache.get_range(path.as_ref(), 0..len).await.ok_or(())?;
                staged.store(part.staged, Ordering::Relaxed);
                Ok::<_, ()>(part.bytes)
            }
        };
        // The copy is the object: its checked table is the object's.
        let layout = match self.load_layout(path, block_len, prefix).await {
            Ok(Ok(layout)) => layout,
            Ok(Err(reason)) => {
                cached_copy_failed(cache, path, staged.load(Ordering::Relaxed), reason).await;
                return None;
            }
            Err(()) => return None,
        };
        let Layout::Frames(index) = &*layout else {
            // Version 1: no frames, decode the whole copy.
            let (stored, staged) = cache.get(path.as_ref()).await?;
            return match core.decode_range(stored, path, range).await {
                Ok(raw) => Some(raw),
                Err(reason) => {
                    cached_copy_failed(cache, path, staged, reason).await;
                    None
                }
            };
        };
        let frames = index.frames_for(range.clone());
        if frames.is_empty() {
            return Some(Bytes::new());
        }
        let span = index.stored_span(frames.clone());
        let part = cache.get_range(path.as_ref(), span).await?;
        let decoded = if part.file_len != index.object_len() {
            Err(CodecError::LengthMismatch {
                expected: index.object_len(),
                actual: part.file_len,
            })
        } else {
            core.decode_frames(Arc::clone(index), frames.clone(), part.bytes, path)
                .await
        };
        match decoded {
            Ok(raw) => Some(range_of_frames(index, frames, &raw, range)),
            Err(reason) => {
                cached_copy_failed(cache, path, part.staged, reason).await;
                None
            }
        }
    }

    /// The layout of the object at `path`: cached, or read from its first bytes in the store.
    async fn layout(
        &self,
        path: &Path,
        block_len: u64,
    ) -> Result<Result<Arc<Layout>, CodecError>, BlockError> {
        let core = &self.inner.core;
        self.load_layout(path, block_len, |len: u64| async move {
            core.data
                .get_range(path, 0..len)
                .await
                .map_err(|e| core.error("get", path, e))
        })
        .await
    }

    /// The layout of the object at `path`: from the table cache, or parsed from its first bytes
    /// as `prefix(len)` gives them (from the store, or from a cached copy), then cached.
    async fn load_layout<E, F, Fut>(
        &self,
        path: &Path,
        block_len: u64,
        prefix: F,
    ) -> Result<Result<Arc<Layout>, CodecError>, E>
    where
        F: Fn(u64) -> Fut,
        Fut: std::future::Future<Output = Result<Bytes, E>>,
    {
        if let Some(layout) = self.inner.layouts.get(path.as_ref()) {
            return Ok(Ok(layout));
        }
        let want = index_len_for(block_len);
        let mut bytes = prefix(want).await?;
        let mut parsed = FrameIndex::parse(&bytes);
        if let Ok(IndexRead::NeedIndex(len)) = parsed {
            // Fewer bytes than asked for: the object ends there.
            if (bytes.len() as u64) == want {
                bytes = prefix(len).await?;
                parsed = FrameIndex::parse(&bytes);
            }
        }
        let layout = match parsed {
            Ok(IndexRead::Whole) => Layout::Whole,
            Ok(IndexRead::Index(index)) => Layout::Frames(Arc::new(index)),
            Ok(IndexRead::NeedIndex(len)) => {
                return Ok(Err(CodecError::LengthMismatch {
                    expected: len,
                    actual: bytes.len() as u64,
                }))
            }
            Err(reason) => return Ok(Err(reason)),
        };
        let layout = Arc::new(layout);
        self.inner
            .layouts
            .insert(path.to_string(), Arc::clone(&layout));
        Ok(Ok(layout))
    }

    /// One attempt at raw bytes `range` of the object at `path` from the object store. Ok(None):
    /// the object has no frames.
    async fn read_part(
        &self,
        path: &Path,
        range: Range<u64>,
        block_len: u64,
    ) -> Result<Result<Option<Bytes>, CodecError>, BlockError> {
        let core = &self.inner.core;
        let layout = match self.layout(path, block_len).await? {
            Ok(layout) => layout,
            Err(reason) => return Ok(Err(reason)),
        };
        let Layout::Frames(index) = &*layout else {
            return Ok(Ok(None));
        };
        let frames = index.frames_for(range.clone());
        if frames.is_empty() {
            return Ok(Ok(Some(Bytes::new())));
        }
        let span = index.stored_span(frames.clone());
        let stored = core
            .data
            .get_range(path, span)
            .await
            .map_err(|e| core.error("get", path, e))?;
        let raw = match core
            .decode_frames(Arc::clone(index), frames.clone(), stored, path)
            .await
        {
            Ok(raw) => raw,
            Err(reason) => return Ok(Err(reason)),
        };
        Ok(Ok(Some(range_of_frames(index, frames, &raw, range))))
    }

    /// Parsed frame tables held in memory: (entries, bytes).
    pub fn index_cache_usage(&self) -> (usize, u64) {
        let layouts = &self.inner.layouts;
        (layouts.len(), layouts.weight())
    }

    /// Delete a block object (missing is Ok), and its cached copy. A staged copy not uploaded
    /// yet is dropped and its upload cancelled.
    pub async fn delete(&self, key: &BlockKey) -> Result<(), BlockError> {
        let core = &self.inner.core;
        let path = core.path(key);
        self.inner.layouts.remove(path.as_ref());
        if let Some(cache) = &self.inner.cache {
            // A copy written behind an earlier read must not land after the removal.
            cache.settle().await;
            cache.remove(path.as_ref()).await;
        }
        if let Some(uploader) = &self.inner.uploader {
            uploader.wait_idle(path.as_ref()).await;
        }
        core.delete(&core.data, &path).await
    }

    /// Waits until every block staged so far (by this store, or found at open) is uploaded. Use
    /// it where blocks must be in the object store, not only durable here: before a mount serves
    /// (blocks left by a crash), or to make a file visible to other hosts. Waits as long as the
    /// store is unreachable: uploads are retried forever. Returns the first error of a block
    /// that could not be uploaded at all (its staged copy damaged, or a conflicting object in
    /// the store) since the last call.
    pub async fn drain_writeback(&self) -> Result<(), BlockError> {
        let Some(cache) = &self.inner.cache else {
            return Ok(());
        };
        cache.wait_staged().await;
        match self
            .inner
            .uploader
            .as_ref()
            .and_then(Uploader::take_failure)
        {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// What the disk cache held when the store opened it, before staged blocks of an earlier
    /// run began to upload (they may be done by the time anyone asks [`Self::writeback_pending`]).
    pub fn cache_found(&self) -> Option<CacheUsage> {
        self.inner.found
    }

    /// Blocks waiting for upload in the disk cache, and their stored bytes.
    pub fn writeback_pending(&self) -> (u64, u64) {
        self.inner.cache.as_ref().map_or((0, 0), |cache| {
            let usage = cache.usage();
            (usage.staged_count, usage.staged_bytes)
        })
    }
}

impl Core {
    fn path(&self, key: &BlockKey) -> Path {
        Path::from(key.object_path(&self.volume))
    }

    /// Full URL of an object, for messages.
    pub(crate) fn object_url(&self, path: &Path) -> String {
        self.location.object_url(path)
    }

    /// Writes stored bytes create-if-absent (module doc, steps 2 and 3) through `store`. `raw` is
    /// what they decode to, if the caller has it. Returns the stored size and whether our bytes
    /// were written (false: an equal object was there already).
    pub(crate) async fn put_encoded(
        &self,
        store: &Arc<dyn ObjectStore>,
        op: &'static str,
        path: &Path,
        stored: Bytes,
        raw: Option<&Bytes>,
    ) -> Result<(u64, bool), BlockError> {
        let len = stored.len() as u64;
        match store
            .put_opts(path, stored.clone().into(), PutMode::Create.into())
            .await
        {
            Ok(_) => return Ok((len, true)),
            Err(object_store::Error::AlreadyExists { .. }) => {}
            Err(e) => return Err(self.error(op, path, e)),
        }
        match self.read_verified(store, op, path).await {
            Ok((existing_raw, existing)) => {
                let same = existing == stored
                    || match raw {
                        Some(raw) => existing_raw == raw,
                        None => self
                            .decode(stored, path)
                            .await
                            .is_ok_and(|ours| ours == existing_raw),
                    };
                if same {
                    Ok((existing.len() as u64, false))
                } else {
                    Err(BlockError::Conflict {
                        path: self.location.object_url(path),
                    })
                }
            }
            Err(err @ (BlockError::Corrupt { .. } | BlockError::NotFound { .. })) => {
                tracing::warn!(
                    path = %self.location.object_url(path), error = %err,
                    "existing block object is unreadable; replacing it"
                );
                store
                    .put_opts(path, stored.into(), PutMode::Overwrite.into())
                    .await
                    .map_err(|e| self.error(op, path, e))?;
                Ok((len, true))
            }
            Err(e) => Err(e),
        }
    }

    /// Deletes an object through `store`; missing is Ok.
    pub(crate) async fn delete(
        &self,
        store: &Arc<dyn ObjectStore>,
        path: &Path,
    ) -> Result<(), BlockError> {
        match store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error("delete", path, e)),
        }
    }

    /// Encode for the object at `path` (the path is bound into the encryption, if any).
    async fn encode(&self, raw: Bytes, path: &Path) -> Bytes {
        if raw.len() < OFFLOAD_MIN_LEN {
            return self.codec.encode_for(&raw, path.as_ref().as_bytes());
        }
        // Into a block buffer used again: the object is dropped once it is uploaded.
        let out = self
            .pool
            .take(index_len_for(raw.len() as u64) as usize + raw.len())
            .unwrap_or_default();
        let (codec, path) = (self.codec.clone(), path.to_string());
        let out = off_runtime(move || codec.encode_into(&raw, path.as_bytes(), out)).await;
        self.pool.freeze(out)
    }

    async fn decode(&self, stored: Bytes, path: &Path) -> Result<Bytes, CodecError> {
        if stored.len() < OFFLOAD_MIN_LEN {
            return self.codec.decode_for(&stored, path.as_ref().as_bytes());
        }
        let (codec, path) = (self.codec.clone(), path.to_string());
        off_runtime(move || codec.decode_for(&stored, path.as_bytes())).await
    }

    /// Decodes raw bytes `range` of a whole stored object.
    async fn decode_range(
        &self,
        stored: Bytes,
        path: &Path,
        range: Range<u64>,
    ) -> Result<Bytes, CodecError> {
        // A small range of a framed object decodes a frame or two; a version 1 object is
        // decoded whole.
        let small = range.end.saturating_sub(range.start) < OFFLOAD_MIN_LEN as u64
            && stored.get(4) == Some(&crate::codec::FORMAT_VERSION);
        if small || stored.len() < OFFLOAD_MIN_LEN {
            return self
                .codec
                .decode_range(&stored, path.as_ref().as_bytes(), range);
        }
        let (codec, path) = (self.codec.clone(), path.to_string());
        off_runtime(move || codec.decode_range(&stored, path.as_bytes(), range)).await
    }

    /// Decodes consecutive frames of an object from their stored bytes.
    async fn decode_frames(
        &self,
        index: Arc<FrameIndex>,
        frames: Range<usize>,
        stored: Bytes,
        path: &Path,
    ) -> Result<Bytes, CodecError> {
        if stored.len() < OFFLOAD_MIN_LEN {
            return self
                .codec
                .decode_frames(&index, frames, &stored, path.as_ref().as_bytes());
        }
        let (codec, path) = (self.codec.clone(), path.to_string());
        off_runtime(move || codec.decode_frames(&index, frames, &stored, path.as_bytes())).await
    }

    /// Reads and decodes an object, reading it a second time if it fails verification. Returns
    /// the raw block and the stored bytes.
    async fn read_verified(
        &self,
        store: &Arc<dyn ObjectStore>,
        op: &'static str,
        path: &Path,
    ) -> Result<(Bytes, Bytes), BlockError> {
        self.read_checked(store, op, path, |stored| self.decode(stored, path))
            .await
    }

    /// Reads an object and passes its stored bytes to `check`, reading it a second time if the
    /// check fails; reports it corrupt if the second read fails too. Returns what `check` gave
    /// and the stored bytes.
    async fn read_checked<T, F, Fut>(
        &self,
        store: &Arc<dyn ObjectStore>,
        op: &'static str,
        path: &Path,
        check: F,
    ) -> Result<(T, Bytes), BlockError>
    where
        F: Fn(Bytes) -> Fut,
        Fut: std::future::Future<Output = Result<T, CodecError>>,
    {
        let read = || async {
            let stored = async { store.get(path).await?.bytes().await }
                .await
                .map_err(|e| self.error(op, path, e))?;
            let checked = check(stored.clone()).await;
            Ok::<_, BlockError>((checked, stored))
        };
        let reason = match read().await? {
            (Ok(value), stored) => return Ok((value, stored)),
            (Err(reason), _) => reason,
        };
        tracing::warn!(
            path = %self.location.object_url(path), %reason,
            "block object failed verification; reading it again"
        );
        match read().await? {
            (Ok(value), stored) => Ok((value, stored)),
            (Err(reason), _) => Err(BlockError::Corrupt {
                path: self.location.object_url(path),
                reason,
            }),
        }
    }
    /// Turns an `object_store` error into the condition it means.
    pub(crate) fn error(
        &self,
        op: &'static str,
        path: &Path,
        err: object_store::Error,
    ) -> BlockError {
        use object_store::client::HttpErrorKind;
        let location = &self.location;
        match &err {
            object_store::Error::NotFound { .. } => {
                if let Location::S3 { bucket, .. } = location {
                    if s3_error_code(&err).as_deref() == Some("NoSuchBucket") {
                        return BlockError::MissingBucket {
                            bucket: bucket.clone(),
                            endpoint: location.endpoint(),
                        };
                    }
                }
                return BlockError::NotFound {
                    path: location.object_url(path),
                };
            }
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => {
                return BlockError::AccessDenied {
                    store: location.describe(),
                    detail: s3_error_code(&err).unwrap_or_else(|| "permission denied".to_string()),
                };
            }
            _ => {}
        }
        if matches!(
            transport_kind(&err),
            Some(HttpErrorKind::Connect | HttpErrorKind::Timeout)
        ) {
            return BlockError::Unreachable {
                endpoint: location.endpoint(),
                source: err,
            };
        }
        if matches!(location, Location::Local { .. })
            && io_kind(&err) == Some(std::io::ErrorKind::PermissionDenied)
        {
            return BlockError::LocalPermission {
                store: location.describe(),
                detail: err.to_string(),
            };
        }
        BlockError::Store {
            op,
            path: location.object_url(path),
            source: err,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Compression;
    use crate::faults::{flaky, Flaky, FAST};
    use std::sync::atomic::Ordering;

    #[test]
    fn blocking_work_refused_by_a_runtime_shutting_down_runs_on_the_caller() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .expect("runtime");
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<u32>();
        rt.spawn(async move {
            // Holds the worker until the runtime has begun to shut down.
            go_rx.recv().expect("go");
            let value = off_runtime(|| 42).await;
            done_tx.send(value).expect("send");
        });
        let dropper = std::thread::spawn(move || drop(rt));
        std::thread::sleep(Duration::from_millis(200));
        go_tx.send(()).expect("go");
        dropper.join().expect("the runtime shuts down");
        assert_eq!(done_rx.try_recv(), Ok(42));
    }

    fn over(faults: &Arc<Flaky>) -> BlockStore {
        over_with(faults, FAST)
    }

    #[test]
    fn bodies_are_signed_unless_tls_or_loopback_protects_them() {
        for (endpoint, unsigned) in [
            (None, true),
            (Some("https://s3.example.com"), true),
            (Some("https://10.0.0.5:9000"), true),
            (Some("http://127.0.0.1:8333"), true),
            (Some("http://[::1]:8333"), true),
            (Some("http://localhost:9000"), true),
            (Some("http://10.0.0.5:9000"), false),
            (Some("http://minio.internal:9000"), false),
            (Some("http://localhost.example.com"), false),
            (Some("not a url"), false),
        ] {
            assert_eq!(unsigned_payload_is_safe(endpoint), unsigned, "{endpoint:?}");
        }
    }

    fn over_with(faults: &Arc<Flaky>, policy: RetryPolicy) -> BlockStore {
        BlockStore::assemble(
            Arc::clone(faults) as Arc<dyn ObjectStore>,
            Location::Memory,
            "vol",
            BlockCodec::new(Compression::Lz4),
            policy,
            None,
            INDEX_CACHE_BYTES,
        )
        .unwrap()
    }

    fn cache_config(dir: &std::path::Path, capacity: u64, writeback: bool) -> CacheConfig {
        CacheConfig {
            dir: dir.to_path_buf(),
            capacity,
            writeback,
        }
    }

    /// A store over `faults` with a disk cache in `dir`; data retries give up after 100 ms.
    fn cached(
        faults: &Arc<Flaky>,
        codec: BlockCodec,
        cache: &CacheConfig,
    ) -> Result<BlockStore, BlockError> {
        BlockStore::assemble(
            Arc::clone(faults) as Arc<dyn ObjectStore>,
            Location::Memory,
            "vol",
            codec,
            RetryPolicy {
                budget: Duration::from_millis(100),
                ..FAST
            },
            Some(cache),
            INDEX_CACHE_BYTES,
        )
    }

    fn lz4() -> BlockCodec {
        BlockCodec::new(Compression::Lz4)
    }

    fn key(index: u64) -> BlockKey {
        BlockKey {
            ino: 7,
            index,
            version: 1,
        }
    }

    fn raw(index: u64) -> Bytes {
        Bytes::from(format!("block {index} ").repeat(10_000))
    }

    /// Whether the object of `key` is in the (inner, not cached) store.
    async fn in_bucket(faults: &Flaky, key: &BlockKey) -> bool {
        faults
            .inner
            .get(&Path::from(key.object_path("vol")))
            .await
            .is_ok()
    }

    async fn drain_within(store: &BlockStore, limit: Duration) -> Option<Result<(), BlockError>> {
        tokio::time::timeout(limit, store.drain_writeback())
            .await
            .ok()
    }

    /// Reads come from the cache (no store request); a damaged cached copy is detected, dropped
    /// and read again from the store, never returned.
    #[tokio::test]
    async fn cached_copies_are_verified() {
        let dir = tempfile::tempdir().unwrap();
        let faults = flaky(0, false);
        let store = cached(&faults, lz4(), &cache_config(dir.path(), 1 << 30, false)).unwrap();
        store.put(&key(1), raw(1)).await.unwrap();
        let calls = faults.calls.load(Ordering::SeqCst);
        assert_eq!(store.get(&key(1)).await.unwrap(), raw(1));
        assert_eq!(
            faults.calls.load(Ordering::SeqCst),
            calls,
            "served by the cache"
        );

        let path = key(1).object_path("vol");
        let file = store.cache().unwrap().entry_file(&path).unwrap();
        let mut bytes = std::fs::read(&file).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x10;
        std::fs::write(&file, &bytes).unwrap();
        assert_eq!(store.get(&key(1)).await.unwrap(), raw(1));
        assert_eq!(
            faults.calls.load(Ordering::SeqCst),
            calls + 1,
            "read from the store"
        );
        store.cache().unwrap().settle().await;
        // The good copy from the store replaced the damaged one.
        assert_ne!(std::fs::read(&file).unwrap(), bytes);
        assert_eq!(store.get(&key(1)).await.unwrap(), raw(1));
        assert_eq!(faults.calls.load(Ordering::SeqCst), calls + 1);

        // A block read from the store is cached.
        let other = over(&faults);
        other.put(&key(2), raw(2)).await.unwrap();
        assert_eq!(store.get(&key(2)).await.unwrap(), raw(2));
        store.cache().unwrap().settle().await;
        let calls = faults.calls.load(Ordering::SeqCst);
        assert_eq!(store.get(&key(2)).await.unwrap(), raw(2));
        assert_eq!(faults.calls.load(Ordering::SeqCst), calls);

        store.delete(&key(2)).await.unwrap();
        assert!(store
            .cache()
            .unwrap()
            .entry_file(&key(2).object_path("vol"))
            .is_none());
        assert!(matches!(
            store.get(&key(2)).await,
            Err(BlockError::NotFound { .. })
        ));
    }

    /// A background copy lands in the disk cache undecoded and serves later reads; an object
    /// damaged on every read is reported and not copied.
    #[tokio::test]
    async fn fetch_into_cache_copies_checked_objects_only() {
        let dir = tempfile::tempdir().unwrap();
        let faults = flaky(0, false);
        over(&faults).put(&key(1), raw(1)).await.unwrap();
        over(&faults).put(&key(2), raw(2)).await.unwrap();
        let store = cached(&faults, lz4(), &cache_config(dir.path(), 1 << 30, false)).unwrap();
        store.fetch_into_cache(&key(1)).await.unwrap();
        assert!(store.is_cached(&key(1)));
        let calls = faults.calls.load(Ordering::SeqCst);
        assert_eq!(store.get(&key(1)).await.unwrap(), raw(1));
        // Cached already: no request.
        store.fetch_into_cache(&key(1)).await.unwrap();
        assert_eq!(
            faults.calls.load(Ordering::SeqCst),
            calls,
            "served by the cache"
        );

        faults.damaged_reads.store(2, Ordering::SeqCst);
        let err = store.fetch_into_cache(&key(2)).await.unwrap_err();
        assert!(matches!(err, BlockError::Corrupt { .. }), "{err:?}");
        assert!(!store.is_cached(&key(2)));
        // Damaged once: read again, then copied.
        faults.damaged_reads.store(1, Ordering::SeqCst);
        store.fetch_into_cache(&key(2)).await.unwrap();
        assert!(store.is_cached(&key(2)));
        assert_eq!(store.get(&key(2)).await.unwrap(), raw(2));
    }

    /// A put copies its block into the disk cache while it uploads; one that fails leaves no
    /// copy behind.
    #[tokio::test]
    async fn a_failed_put_leaves_no_cached_copy() {
        let dir = tempfile::tempdir().unwrap();
        let faults = flaky(u32::MAX, false);
        let store = cached(&faults, lz4(), &cache_config(dir.path(), 1 << 30, false)).unwrap();
        store.put(&key(1), raw(1)).await.unwrap_err();
        let cache = store.cache().unwrap();
        assert!(cache.entry_file(&key(1).object_path("vol")).is_none());
        assert_eq!(cache.usage().clean_count, 0);
    }

    /// Writeback: puts succeed while the store is down; the blocks survive a crash (the store
    /// dropped without draining) and are uploaded after the cache is opened again.
    #[tokio::test]
    async fn staged_blocks_survive_a_crash_and_upload_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = cache_config(dir.path(), 1 << 30, true);
        let faults = flaky(u32::MAX, false);
        let store = cached(&faults, lz4(), &cfg).unwrap();
        let mut stored = 0;
        for i in 0..3 {
            stored += store.put(&key(i), raw(i)).await.unwrap();
        }
        assert_eq!(store.writeback_pending(), (3, stored));
        for i in 0..3 {
            assert_eq!(store.get(&key(i)).await.unwrap(), raw(i), "staged copy");
            assert!(!in_bucket(&faults, &key(i)).await);
        }
        drop(store);

        let store = cached(&faults, lz4(), &cfg).unwrap();
        assert_eq!(store.writeback_pending(), (3, stored), "found at open");
        faults.fail.store(0, Ordering::SeqCst);
        drain_within(&store, Duration::from_secs(10))
            .await
            .expect("drained")
            .unwrap();
        assert_eq!(store.writeback_pending(), (0, 0));
        let plain = over(&faults);
        for i in 0..3 {
            assert_eq!(plain.get(&key(i)).await.unwrap(), raw(i), "in the store");
        }
        // Uploaded copies stay as clean cache entries.
        let usage = store.cache().unwrap().usage();
        assert_eq!((usage.clean_count, usage.clean_bytes), (3, stored));
    }

    /// An unreachable store: the upload is retried (not given up after the data budget) and
    /// drain completes once the store is back.
    #[tokio::test]
    async fn writeback_retries_until_the_store_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let faults = flaky(u32::MAX, false);
        let store = cached(&faults, lz4(), &cache_config(dir.path(), 1 << 30, true)).unwrap();
        let len = store.put(&key(1), raw(1)).await.unwrap();
        // Several times the 100 ms budget of one round of retries.
        assert!(drain_within(&store, Duration::from_millis(500))
            .await
            .is_none());
        assert_eq!(store.writeback_pending(), (1, len));
        let calls = faults.calls.load(Ordering::SeqCst);
        assert!(calls > 20, "retried: {calls} calls");
        faults.fail.store(0, Ordering::SeqCst);
        drain_within(&store, Duration::from_secs(10))
            .await
            .expect("drained once the store is back")
            .unwrap();
        assert_eq!(store.writeback_pending(), (0, 0));
        assert!(in_bucket(&faults, &key(1)).await);
        // A replayed put of a block already uploaded.
        assert_eq!(store.put(&key(1), raw(1)).await.unwrap(), len);
        drain_within(&store, Duration::from_secs(10))
            .await
            .unwrap()
            .unwrap();
    }

    /// A delete drops a staged copy; its upload does not resurrect it.
    #[tokio::test]
    async fn delete_cancels_a_staged_upload() {
        let dir = tempfile::tempdir().unwrap();
        let faults = flaky(u32::MAX, false);
        let store = cached(&faults, lz4(), &cache_config(dir.path(), 1 << 30, true)).unwrap();
        store.put(&key(1), raw(1)).await.unwrap();
        faults.fail.store(0, Ordering::SeqCst);
        store.delete(&key(1)).await.unwrap();
        drain_within(&store, Duration::from_secs(10))
            .await
            .unwrap()
            .unwrap();
        // The uploader may have been mid-upload: it deletes what it wrote.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!in_bucket(&faults, &key(1)).await);
        assert!(matches!(
            store.get(&key(1)).await,
            Err(BlockError::NotFound { .. })
        ));
        assert_eq!(store.writeback_pending(), (0, 0));
    }

    /// Staging that cannot fit falls back to a direct upload; the put succeeds.
    #[tokio::test]
    async fn a_full_cache_falls_back_to_direct_upload() {
        let dir = tempfile::tempdir().unwrap();
        let faults = flaky(0, false);
        let store = cached(&faults, lz4(), &cache_config(dir.path(), 100, true)).unwrap();
        store.put(&key(1), raw(1)).await.unwrap();
        assert!(in_bucket(&faults, &key(1)).await);
        assert_eq!(store.writeback_pending(), (0, 0));
        assert_eq!(store.get(&key(1)).await.unwrap(), raw(1));
    }

    /// A staged copy damaged on the local disk is not uploaded: drain reports it.
    #[tokio::test]
    async fn a_damaged_staged_copy_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = cache_config(dir.path(), 1 << 30, true);
        let faults = flaky(u32::MAX, false);
        let store = cached(&faults, lz4(), &cfg).unwrap();
        store.put(&key(1), raw(1)).await.unwrap();
        let file = store
            .cache()
            .unwrap()
            .entry_file(&key(1).object_path("vol"))
            .unwrap();
        drop(store);
        let mut bytes = std::fs::read(&file).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&file, &bytes).unwrap();
        faults.fail.store(0, Ordering::SeqCst);
        let store = cached(&faults, lz4(), &cfg).unwrap();
        let err = drain_within(&store, Duration::from_secs(10))
            .await
            .unwrap()
            .unwrap_err();
        assert!(matches!(err, BlockError::Corrupt { .. }), "{err:?}");
        assert!(!in_bucket(&faults, &key(1)).await);
        assert_eq!(store.writeback_pending(), (0, 0));
        store.drain_writeback().await.unwrap();
    }

    /// The cache of an encrypted volume holds ciphertext only.
    #[tokio::test]
    async fn no_plaintext_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let faults = flaky(u32::MAX, false);
        let codec = BlockCodec::new(Compression::None).with_key(&[7; 32]);
        let store = cached(&faults, codec, &cache_config(dir.path(), 1 << 30, true)).unwrap();
        let secret = Bytes::from_static(b"the plaintext that must not reach the disk");
        store.put(&key(1), secret.clone()).await.unwrap();
        let file = store
            .cache()
            .unwrap()
            .entry_file(&key(1).object_path("vol"))
            .unwrap();
        let on_disk = std::fs::read(file).unwrap();
        assert!(!on_disk.windows(secret.len()).any(|w| w == &secret[..]));
        assert_eq!(store.get(&key(1)).await.unwrap(), secret);
    }

    #[tokio::test]
    async fn one_store_per_cache_folder() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = cache_config(dir.path(), 1 << 30, false);
        let faults = flaky(0, false);
        let first = cached(&faults, lz4(), &cfg).unwrap();
        let err = cached(&faults, lz4(), &cfg).unwrap_err();
        assert!(matches!(err, BlockError::BadConfig { .. }), "{err:?}");
        assert!(
            err.to_string().starts_with(&format!(
                "the cache folder {} is in use by another cairn process",
                dir.path().display()
            )),
            "{err}"
        );
        let clone = first.clone();
        drop(first);
        assert!(
            cached(&faults, lz4(), &cfg).is_err(),
            "a clone still holds it"
        );
        drop(clone);
        cached(&faults, lz4(), &cfg).unwrap();
    }

    /// Compressible and random halves, so frames of both kinds.
    fn mixed_block(len: usize, seed: u8) -> Bytes {
        let mut v: Vec<u8> = format!("block {seed} ").into_bytes().repeat(len / 8 + 1);
        v.truncate(len);
        let mut x = u64::from(seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        for b in &mut v[len / 2..] {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        Bytes::from(v)
    }

    fn requested(faults: &Flaky) -> Vec<Option<object_store::GetRange>> {
        std::mem::take(&mut *faults.gets.lock().unwrap())
    }

    fn bounded(r: &Option<object_store::GetRange>) -> Range<u64> {
        match r {
            Some(object_store::GetRange::Bounded(r)) => r.clone(),
            other => panic!("not a bounded range: {other:?}"),
        }
    }

    #[tokio::test]
    async fn get_range_equals_the_slice_of_get() {
        let faults = flaky(0, false);
        for codec in [
            lz4(),
            BlockCodec::new(Compression::Zstd { level: 3 }),
            BlockCodec::new(Compression::None).with_key(&[9; 32]),
        ] {
            let store = BlockStore::assemble(
                Arc::clone(&faults) as Arc<dyn ObjectStore>,
                Location::Memory,
                "vol",
                codec,
                FAST,
                None,
                INDEX_CACHE_BYTES,
            )
            .unwrap();
            let len = (4 << 20) - 12_345;
            let raw = mixed_block(len, 3);
            let k = key(rand::random::<u64>() >> 8);
            store.put(&k, raw.clone()).await.unwrap();
            assert_eq!(store.get(&k).await.unwrap(), raw);
            let len = len as u64;
            for r in [
                0..1,
                0..4096,
                65_535..65_537,
                1_000_000..1_131_072,
                len / 2 - 100..len / 2 + 100,
                len - 1..len,
                len - 10..len + 100,
                0..len,
                len..len + 5,
            ] {
                let end = r.end.min(len) as usize;
                let start = (r.start as usize).min(end);
                assert_eq!(
                    store.get_range(&k, r.clone(), len).await.unwrap(),
                    raw[start..end],
                    "{r:?}"
                );
                // A wrong length hint costs a request, not a wrong answer.
                assert_eq!(
                    store.get_range(&k, r.clone(), 1).await.unwrap(),
                    raw[start..end]
                );
            }
        }
    }

    /// Only the table and the frames that hold the range are fetched, and the table only once.
    #[tokio::test]
    async fn get_range_fetches_only_the_frames_it_needs() {
        use crate::codec::{index_len_for, FRAME_LEN};
        let faults = flaky(0, false);
        let store = over(&faults);
        let len = 4 << 20;
        let raw = mixed_block(len, 5);
        store.put(&key(1), raw.clone()).await.unwrap();
        let object = faults
            .inner
            .get(&Path::from(key(1).object_path("vol")))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        requested(&faults);

        let at = 3 * FRAME_LEN as u64 + 100;
        let got = store
            .get_range(&key(1), at..at + 4096, len as u64)
            .await
            .unwrap();
        assert_eq!(got, raw[at as usize..at as usize + 4096]);
        let gets = requested(&faults);
        assert_eq!(gets.len(), 2, "{gets:?}");
        let index_len = index_len_for(len as u64);
        assert_eq!(bounded(&gets[0]), 0..index_len);
        let IndexRead::Index(index) = FrameIndex::parse(&object).unwrap() else {
            panic!("not framed")
        };
        assert_eq!(bounded(&gets[1]), index.stored_span(3..4), "frame 3 only");
        assert!(index.stored_span(3..4).end - index.stored_span(3..4).start <= FRAME_LEN as u64);

        // The table is cached: one request, for the frames. A range over a frame boundary
        // fetches the two frames.
        let at = 8 * FRAME_LEN as u64 - 10;
        let got = store
            .get_range(&key(1), at..at + 20, len as u64)
            .await
            .unwrap();
        assert_eq!(got, raw[at as usize..at as usize + 20]);
        let gets = requested(&faults);
        assert_eq!(gets.len(), 1, "{gets:?}");
        assert_eq!(bounded(&gets[0]), index.stored_span(7..9), "frames 7 and 8");
        assert_eq!(store.index_cache_usage().0, 1);

        // A table longer than the hint allows: the header says how long, one more request.
        store.inner.layouts.clear();
        let got = store.get_range(&key(1), at..at + 20, 100).await.unwrap();
        assert_eq!(got, raw[at as usize..at as usize + 20]);
        let gets = requested(&faults);
        assert_eq!(
            gets.iter().map(bounded).collect::<Vec<_>>()[..2],
            [0..index_len_for(100), 0..index_len]
        );
    }

    /// The table cache stays within its bytes, however many blocks are read.
    #[tokio::test]
    async fn the_table_cache_is_bounded() {
        let faults = flaky(0, false);
        let cap = 8 << 10;
        let store = BlockStore::assemble(
            Arc::clone(&faults) as Arc<dyn ObjectStore>,
            Location::Memory,
            "vol",
            lz4(),
            FAST,
            None,
            cap,
        )
        .unwrap();
        let blocks = 60u64;
        for i in 0..blocks {
            store
                .put(&key(i), mixed_block(1 << 20, i as u8))
                .await
                .unwrap();
        }
        for i in 0..blocks {
            let got = store.get_range(&key(i), 10..20, 1 << 20).await.unwrap();
            assert_eq!(got, mixed_block(1 << 20, i as u8)[10..20]);
        }
        let (count, bytes) = store.index_cache_usage();
        assert!(bytes <= cap, "{bytes} bytes in the table cache");
        assert!(count > 0 && (count as u64) < blocks, "{count} tables");
    }

    /// A version 1 object (written by earlier builds) is read whole, and said to be whole.
    #[tokio::test]
    async fn version_1_objects_are_read_whole() {
        let faults = flaky(0, false);
        let store = over(&faults);
        let raw = mixed_block(300_000, 1);
        let path = Path::from(key(1).object_path("vol"));
        let v1 = crate::codec::encode_v1_for(store.codec(), &raw, path.as_ref().as_bytes());
        faults.inner.put(&path, v1.into()).await.unwrap();
        assert_eq!(
            store.get_part(&key(1), 100..200, 300_000).await.unwrap(),
            Part::Whole(raw.clone())
        );
        assert_eq!(
            store.get_range(&key(1), 100..200, 300_000).await.unwrap(),
            raw[100..200]
        );
        assert_eq!(store.get(&key(1)).await.unwrap(), raw);
    }

    /// A damaged read of a frame or of the table is read again; damage that stays is reported
    /// as corrupt, naming the object, never returned.
    #[tokio::test]
    async fn a_damaged_range_is_read_again_then_reported() {
        let faults = flaky(0, false);
        let store = over(&faults);
        let raw = mixed_block(1 << 20, 2);
        store.put(&key(1), raw.clone()).await.unwrap();
        for cached_table in [false, true] {
            if cached_table {
                store.get_range(&key(1), 0..1, 1 << 20).await.unwrap();
            } else {
                store.inner.layouts.clear();
            }
            faults.damaged_reads.store(1, Ordering::SeqCst);
            assert_eq!(
                store
                    .get_range(&key(1), 700_000..700_100, 1 << 20)
                    .await
                    .unwrap(),
                raw[700_000..700_100]
            );
            faults.damaged_reads.store(2, Ordering::SeqCst);
            let err = store
                .get_range(&key(1), 700_000..700_100, 1 << 20)
                .await
                .unwrap_err();
            assert!(
                matches!(
                    &err,
                    BlockError::Corrupt {
                        reason: CodecError::FrameChecksum { .. } | CodecError::IndexChecksum { .. },
                        ..
                    }
                ),
                "{err:?}"
            );
            let name = format!("block `memory://{}` is corrupt", key(1).object_path("vol"));
            assert!(err.to_string().starts_with(&name), "{err}");
            faults.damaged_reads.store(0, Ordering::SeqCst);
        }
        // A truncated object.
        let path = Path::from(key(1).object_path("vol"));
        let object = faults
            .inner
            .get(&path)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        faults
            .inner
            .put(&path, object.slice(..object.len() - 100).into())
            .await
            .unwrap();
        store.inner.layouts.clear();
        let err = store
            .get_range(&key(1), (1 << 20) - 10..1 << 20, 1 << 20)
            .await
            .unwrap_err();
        assert!(matches!(err, BlockError::Corrupt { .. }), "{err:?}");
    }

    /// With a disk cache: a cached whole copy serves ranges without a request (and a damaged
    /// copy is dropped); a range read from the store is not cached (only whole objects are).
    #[tokio::test]
    async fn get_range_uses_whole_cached_copies_and_caches_no_parts() {
        let dir = tempfile::tempdir().unwrap();
        let faults = flaky(0, false);
        let store = cached(&faults, lz4(), &cache_config(dir.path(), 1 << 30, false)).unwrap();
        let raw = mixed_block(1 << 20, 4);
        store.put(&key(1), raw.clone()).await.unwrap();
        assert!(
            !store.is_cached(&key(1)),
            "a large block written is not cached"
        );
        store.get(&key(1)).await.unwrap();
        store.cache().unwrap().settle().await;
        assert!(store.is_cached(&key(1)), "a whole block read is");
        let calls = faults.calls.load(Ordering::SeqCst);
        assert_eq!(
            store.get_range(&key(1), 5000..6000, 1 << 20).await.unwrap(),
            raw[5000..6000]
        );
        assert_eq!(faults.calls.load(Ordering::SeqCst), calls, "from the cache");

        let path = key(1).object_path("vol");
        let file = store.cache().unwrap().entry_file(&path).unwrap();
        let mut bytes = std::fs::read(&file).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&file, &bytes).unwrap();
        // The damage is in the last frame: a range elsewhere still reads from the copy, a
        // range in it reads from the store and drops the copy.
        assert_eq!(
            store.get_range(&key(1), 5000..6000, 1 << 20).await.unwrap(),
            raw[5000..6000]
        );
        assert_eq!(faults.calls.load(Ordering::SeqCst), calls);
        let end = 1 << 20;
        assert_eq!(
            store.get_range(&key(1), end - 10..end, end).await.unwrap(),
            raw[end as usize - 10..]
        );
        assert!(faults.calls.load(Ordering::SeqCst) > calls);
        assert!(store.cache().unwrap().entry_file(&path).is_none());

        // Written by another client: read in part, not cached.
        over(&faults).put(&key(2), raw.clone()).await.unwrap();
        assert_eq!(
            store.get_range(&key(2), 10..20, 1 << 20).await.unwrap(),
            raw[10..20]
        );
        assert!(store
            .cache()
            .unwrap()
            .entry_file(&key(2).object_path("vol"))
            .is_none());
        assert_eq!(store.get(&key(2)).await.unwrap(), raw);
        store.cache().unwrap().settle().await;
        assert!(store
            .cache()
            .unwrap()
            .entry_file(&key(2).object_path("vol"))
            .is_some());
    }

    /// A cached copy serves ranges by its table and frames alone: a store opened afresh over
    /// the cache folder (no table in memory) reads the table from the copy, makes no request,
    /// and says the block is cached. A copy of the wrong length is dropped even where the range
    /// asked for is intact, and the range is read from the store.
    #[tokio::test]
    async fn get_range_reads_table_and_frames_from_the_cached_copy() {
        let dir = tempfile::tempdir().unwrap();
        let faults = flaky(0, false);
        let cfg = cache_config(dir.path(), 1 << 30, false);
        let raw = mixed_block(1 << 20, 5);
        {
            let store = cached(&faults, lz4(), &cfg).unwrap();
            store.put(&key(1), raw.clone()).await.unwrap();
            store.get(&key(1)).await.unwrap();
            store.cache().unwrap().settle().await;
            assert!(store.is_cached(&key(1)));
            assert!(!store.is_cached(&key(2)));
        }
        let store = cached(&faults, lz4(), &cfg).unwrap();
        assert_eq!(store.index_cache_usage().0, 0, "no table in memory");
        let calls = faults.calls.load(Ordering::SeqCst);
        for at in [0, 70_000, 700_000, (1 << 20) - 4096] {
            assert_eq!(
                store
                    .get_range(&key(1), at..at + 4096, 1 << 20)
                    .await
                    .unwrap(),
                raw[at as usize..at as usize + 4096]
            );
        }
        assert_eq!(
            faults.calls.load(Ordering::SeqCst),
            calls,
            "no store request"
        );
        assert_eq!(store.index_cache_usage().0, 1, "the copy's table is kept");

        let path = key(1).object_path("vol");
        let file = store.cache().unwrap().entry_file(&path).unwrap();
        let mut bytes = std::fs::read(&file).unwrap();
        bytes.extend_from_slice(b"junk");
        std::fs::write(&file, &bytes).unwrap();
        assert_eq!(
            store.get_range(&key(1), 10..20, 1 << 20).await.unwrap(),
            raw[10..20]
        );
        assert!(
            faults.calls.load(Ordering::SeqCst) > calls,
            "read from the store"
        );
        assert!(!store.is_cached(&key(1)), "the damaged copy is dropped");
    }

    /// A cached copy whose frame table is damaged is dropped, and the range read from the store.
    #[tokio::test]
    async fn a_cached_copy_with_a_damaged_table_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let faults = flaky(0, false);
        let cfg = cache_config(dir.path(), 1 << 30, false);
        let raw = mixed_block(1 << 20, 6);
        {
            let store = cached(&faults, lz4(), &cfg).unwrap();
            store.put(&key(1), raw.clone()).await.unwrap();
            store.get(&key(1)).await.unwrap();
            store.cache().unwrap().settle().await;
        }
        let store = cached(&faults, lz4(), &cfg).unwrap();
        let path = key(1).object_path("vol");
        let file = store.cache().unwrap().entry_file(&path).unwrap();
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[30] ^= 0x40;
        std::fs::write(&file, &bytes).unwrap();
        let calls = faults.calls.load(Ordering::SeqCst);
        assert_eq!(
            store
                .get_range(&key(1), 500_000..500_100, 1 << 20)
                .await
                .unwrap(),
            raw[500_000..500_100]
        );
        assert!(
            faults.calls.load(Ordering::SeqCst) > calls,
            "read from the store"
        );
        assert!(!store.is_cached(&key(1)));
    }

    fn block() -> (BlockKey, Bytes) {
        let key = BlockKey {
            ino: 1,
            index: 2,
            version: 3,
        };
        (key, Bytes::from(vec![b'z'; 100_000]))
    }

    /// The first PUT lands but its response is lost (a timeout): the retry finds the object,
    /// reads it back, sees the same bytes, and reports success.
    #[tokio::test]
    async fn put_whose_first_attempt_landed_succeeds() {
        let faults = flaky(1, true);
        let store = over(&faults);
        let (key, raw) = block();
        let stored = store.put(&key, raw.clone()).await.unwrap();
        // put, put (AlreadyExists), get
        assert_eq!(faults.calls.load(Ordering::SeqCst), 3);
        assert_eq!(stored, store.codec().encode(&raw).len() as u64);
        assert_eq!(store.get(&key).await.unwrap(), raw);
    }

    #[tokio::test]
    async fn transient_failures_are_retried() {
        let faults = flaky(3, false);
        let store = over(&faults);
        let (key, raw) = block();
        store.put(&key, raw.clone()).await.unwrap();
        faults.fail.store(3, Ordering::SeqCst);
        assert_eq!(store.get(&key).await.unwrap(), raw);
    }

    /// A read that fails verification once is read again; bad bytes are never returned.
    #[tokio::test]
    async fn torn_read_is_read_again_then_reported() {
        let faults = flaky(0, false);
        let store = over(&faults);
        let (key, raw) = block();
        store.put(&key, raw.clone()).await.unwrap();
        faults.damaged_reads.store(1, Ordering::SeqCst);
        assert_eq!(store.get(&key).await.unwrap(), raw);
        faults.damaged_reads.store(2, Ordering::SeqCst);
        let err = store.get(&key).await.unwrap_err();
        assert!(
            matches!(
                &err,
                BlockError::Corrupt {
                    reason: crate::codec::CodecError::FrameChecksum { .. },
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.is_permanent());
        assert!(
            err.to_string()
                .starts_with("block `memory://ed0e/vol/0000000000000001/2.0000000000000003` is corrupt: frame 1 checksum mismatch"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn persistent_transient_failure_gives_up() {
        let faults = flaky(u32::MAX, false);
        let budget = Duration::from_millis(300);
        let store = over_with(&faults, RetryPolicy { budget, ..FAST });
        let start = std::time::Instant::now();
        let (key, raw) = block();
        let err = store.put(&key, raw).await.unwrap_err();
        assert!(!err.is_permanent(), "{err:?}");
        assert!(matches!(err, BlockError::Unreachable { .. }), "{err:?}");
        assert!(start.elapsed() < budget * 3, "{:?}", start.elapsed());
        assert!(faults.calls.load(Ordering::SeqCst) > 5);
    }

    fn open(url: &str) -> Result<BlockStore, BlockError> {
        let cfg = StoreConfig {
            url: url.to_string(),
            ..Default::default()
        };
        BlockStore::open(&cfg, "vol", BlockCodec::new(Compression::Lz4))
    }

    fn message(result: Result<BlockStore, BlockError>) -> String {
        match result {
            Ok(store) => panic!("opened {}", store.describe()),
            Err(e) => {
                assert!(matches!(e, BlockError::BadConfig { .. }), "{e:?}");
                assert!(e.is_permanent());
                e.to_string()
            }
        }
    }

    #[test]
    fn unsupported_urls_say_what_to_use() {
        assert_eq!(
            message(open("ftp://x")),
            "unsupported store URL `ftp://x`: use file:///path or s3://bucket[/prefix]"
        );
        for url in ["", "/tmp/x", "memory://x", "gs://b"] {
            assert!(
                message(open(url)).contains("use file:///path or s3://bucket"),
                "{url}"
            );
        }
        assert!(message(open("file://relative/path")).contains("absolute path"));
        assert!(message(open("s3://")).contains("names no bucket"));
    }

    #[test]
    fn s3_settings_are_checked() {
        let cfg = |url: &str, endpoint: Option<&str>| StoreConfig {
            url: url.to_string(),
            s3_endpoint: endpoint.map(str::to_string),
            s3_region: None,
            access_key_id: Some("k".into()),
            secret_access_key: Some("s".into()),
            cache: None,
        };
        let codec = BlockCodec::new(Compression::None);
        let store = BlockStore::open(
            &cfg("s3://b/p/q/", Some("http://127.0.0.1:8333/")),
            "v",
            codec.clone(),
        )
        .unwrap();
        assert_eq!(store.describe(), "s3://b/p/q at http://127.0.0.1:8333");
        let store = BlockStore::open(&cfg("s3://b", None), "v", codec.clone()).unwrap();
        assert_eq!(
            store.describe(),
            "s3://b at https://s3.us-east-1.amazonaws.com"
        );
        let err = BlockStore::open(&cfg("s3://b", Some("127.0.0.1:8333")), "v", codec.clone())
            .unwrap_err();
        assert!(err.to_string().contains("invalid S3 endpoint"), "{err}");
        let err = BlockStore::open(
            &cfg("file:///tmp/x", Some("http://h:1")),
            "v",
            codec.clone(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("is not s3://"), "{err}");
        let mut half = cfg("s3://b", None);
        half.secret_access_key = None;
        // The environment may hold a secret; only assert when it does not.
        if std::env::var_os("AWS_SECRET_ACCESS_KEY").is_none() {
            let err = BlockStore::open(&half, "v", codec).unwrap_err();
            assert!(err.to_string().contains("no secret access key"), "{err}");
        }
    }

    #[test]
    fn volume_names_are_checked() {
        let cfg = StoreConfig {
            url: "memory://".into(),
            ..Default::default()
        };
        let codec = BlockCodec::new(Compression::None);
        for bad in ["", ".", "..", "a/b", "a b", "é", &"x".repeat(129)] {
            let err = BlockStore::open(&cfg, bad, codec.clone()).unwrap_err();
            assert!(
                err.to_string().starts_with("invalid volume name"),
                "{bad}: {err}"
            );
        }
        for good in ["v", "prod-data", "a.b_c", "V1"] {
            BlockStore::open(&cfg, good, codec.clone()).unwrap();
        }
    }

    #[test]
    fn local_folder_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("a/b");
        let store = open(&format!("file://{}", root.display())).unwrap();
        assert!(root.is_dir());
        assert_eq!(store.describe(), format!("file://{}", root.display()));
    }
}
