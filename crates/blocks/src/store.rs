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
//! Two `Retrying` layers share the same inner store: one with the data budget (2 minutes) for
//! put, get and delete, one with a budget of seconds for [`BlockStore::check`], which must say
//! "unreachable" quickly instead of retrying for minutes.
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

use std::fmt;
use std::path::PathBuf;
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

use crate::codec::{BlockCodec, CodecError};
use crate::error::{io_kind, s3_error_code, transport_kind, BlockError};
use crate::key::BlockKey;
use crate::retry::{RetryPolicy, RetryingStore};

/// TCP connect timeout of the S3 client.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Timeout of one S3 request, body included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on the whole of [`BlockStore::check`].
const CHECK_TIMEOUT: Duration = Duration::from_secs(20);
/// Region when none is given.
const DEFAULT_REGION: &str = "us-east-1";
/// Longest volume name.
const MAX_VOLUME_LEN: usize = 128;
/// Blocks at least this large are encoded and decoded on the blocking thread pool: zstd takes
/// milliseconds per MiB (far more at high levels), which would stall other tasks on the runtime.
const OFFLOAD_MIN_LEN: usize = 128 << 10;

/// Runs CPU-heavy codec work off the async threads.
async fn off_runtime<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            // Only when the runtime shuts down before the task starts; the caller's own task
            // is being dropped then too.
            Err(e) => panic!("block codec task did not run: {e}"),
        },
    }
}

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
    /// Retrying with the data budget.
    data: Arc<dyn ObjectStore>,
    /// Retrying with the probe budget, for `check`.
    probe: Arc<dyn ObjectStore>,
    codec: BlockCodec,
    volume: String,
    location: Location,
}

impl fmt::Debug for BlockStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockStore")
            .field("store", &self.inner.data.to_string())
            .field("volume", &self.inner.volume)
            .field("codec", &self.inner.codec)
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

impl BlockStore {
    /// Opens the block store of `volume` described by `cfg`. Makes no request (a local folder is
    /// created if missing); use [`BlockStore::check`] to prove the store works.
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
        Ok(Self::assemble(
            inner,
            location,
            volume,
            codec,
            RetryPolicy::DATA,
        ))
    }

    /// Puts the retrying layers around `inner`.
    fn assemble(
        inner: Arc<dyn ObjectStore>,
        location: Location,
        volume: &str,
        codec: BlockCodec,
        data_policy: RetryPolicy,
    ) -> BlockStore {
        let data = Arc::new(RetryingStore::new(Arc::clone(&inner), data_policy));
        let probe = Arc::new(RetryingStore::new(inner, RetryPolicy::PROBE));
        BlockStore {
            inner: Arc::new(Inner {
                data,
                probe,
                codec,
                volume: volume.to_string(),
                location,
            }),
        }
    }

    /// e.g. "s3://bucket/prefix at http://127.0.0.1:8333" — for logs and errors.
    pub fn describe(&self) -> String {
        self.inner.location.describe()
    }

    /// The codec new blocks are written with.
    pub fn codec(&self) -> &BlockCodec {
        &self.inner.codec
    }

    fn path(&self, key: &BlockKey) -> Path {
        Path::from(key.object_path(&self.inner.volume))
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
        let inner = &self.inner;
        // Outside the block key space: block paths start with 4 hex digits.
        let path = Path::from(format!(
            "cairn-probe/{}/{:016x}",
            inner.volume,
            rand::random::<u64>()
        ));
        let raw = Bytes::from(format!("cairn store check of volume {}", inner.volume));
        let stored = inner.codec.encode_for(&raw, path.as_ref().as_bytes());
        inner
            .probe
            .put_opts(&path, stored.into(), PutMode::Create.into())
            .await
            .map_err(|e| self.error("check", &path, e))?;
        let (back, _) = self.read_verified(&inner.probe, "check", &path).await?;
        if back != raw {
            return Err(BlockError::Conflict {
                path: inner.location.object_url(&path),
            });
        }
        inner
            .probe
            .delete(&path)
            .await
            .map_err(|e| self.error("check", &path, e))?;
        Ok(())
    }

    /// Encode and write a block; returns the stored size in bytes. Durable when Ok. Writing the
    /// same key again with the same bytes is Ok (a replayed write); with other bytes it is
    /// [`BlockError::Conflict`].
    pub async fn put(&self, key: &BlockKey, raw: Bytes) -> Result<u64, BlockError> {
        let inner = &self.inner;
        let path = self.path(key);
        let stored = self.encode(raw.clone(), &path).await;
        let len = stored.len() as u64;
        match inner
            .data
            .put_opts(&path, stored.clone().into(), PutMode::Create.into())
            .await
        {
            Ok(_) => return Ok(len),
            Err(object_store::Error::AlreadyExists { .. }) => {}
            Err(e) => return Err(self.error("put", &path, e)),
        }
        match self.read_verified(&inner.data, "put", &path).await {
            Ok((existing, existing_len)) if existing == raw => Ok(existing_len),
            Ok(_) => Err(BlockError::Conflict {
                path: inner.location.object_url(&path),
            }),
            Err(err @ (BlockError::Corrupt { .. } | BlockError::NotFound { .. })) => {
                tracing::warn!(
                    path = %inner.location.object_url(&path), error = %err,
                    "existing block object is unreadable; replacing it"
                );
                inner
                    .data
                    .put_opts(&path, stored.into(), PutMode::Overwrite.into())
                    .await
                    .map_err(|e| self.error("put", &path, e))?;
                Ok(len)
            }
            Err(e) => Err(e),
        }
    }

    /// Encode for the object at `path` (the path is bound into the encryption, if any).
    async fn encode(&self, raw: Bytes, path: &Path) -> Bytes {
        if raw.len() < OFFLOAD_MIN_LEN {
            return self.inner.codec.encode_for(&raw, path.as_ref().as_bytes());
        }
        let (codec, path) = (self.inner.codec.clone(), path.to_string());
        off_runtime(move || codec.encode_for(&raw, path.as_bytes())).await
    }

    async fn decode(&self, stored: Bytes, path: &Path) -> Result<Bytes, CodecError> {
        if stored.len() < OFFLOAD_MIN_LEN {
            return self
                .inner
                .codec
                .decode_for(&stored, path.as_ref().as_bytes());
        }
        let (codec, path) = (self.inner.codec.clone(), path.to_string());
        off_runtime(move || codec.decode_for(&stored, path.as_bytes())).await
    }

    /// Read and decode a block; checks length and checksums.
    pub async fn get(&self, key: &BlockKey) -> Result<Bytes, BlockError> {
        let (raw, _) = self
            .read_verified(&self.inner.data, "get", &self.path(key))
            .await?;
        Ok(raw)
    }

    /// Delete a block object (missing is Ok).
    pub async fn delete(&self, key: &BlockKey) -> Result<(), BlockError> {
        let path = self.path(key);
        match self.inner.data.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error("delete", &path, e)),
        }
    }

    /// Reads and decodes an object, reading it a second time if it fails verification. Returns
    /// the raw block and the stored size.
    async fn read_verified(
        &self,
        store: &Arc<dyn ObjectStore>,
        op: &'static str,
        path: &Path,
    ) -> Result<(Bytes, u64), BlockError> {
        let read = || async {
            let stored = async { store.get(path).await?.bytes().await }
                .await
                .map_err(|e| self.error(op, path, e))?;
            let decoded = self.decode(stored.clone(), path).await;
            Ok::<_, BlockError>((decoded, stored.len() as u64))
        };
        let reason = match read().await? {
            (Ok(raw), len) => return Ok((raw, len)),
            (Err(reason), _) => reason,
        };
        tracing::warn!(
            path = %self.inner.location.object_url(path), %reason,
            "block object failed verification; reading it again"
        );
        match read().await? {
            (Ok(raw), len) => Ok((raw, len)),
            (Err(reason), _) => Err(BlockError::Corrupt {
                path: self.inner.location.object_url(path),
                reason,
            }),
        }
    }

    /// Turns an `object_store` error into the condition it means.
    fn error(&self, op: &'static str, path: &Path, err: object_store::Error) -> BlockError {
        use object_store::client::HttpErrorKind;
        let location = &self.inner.location;
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

    fn over(faults: &Arc<Flaky>) -> BlockStore {
        over_with(faults, FAST)
    }

    fn over_with(faults: &Arc<Flaky>, policy: RetryPolicy) -> BlockStore {
        BlockStore::assemble(
            Arc::clone(faults) as Arc<dyn ObjectStore>,
            Location::Memory,
            "vol",
            BlockCodec::new(Compression::Lz4),
            policy,
        )
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
                    reason: crate::codec::CodecError::PayloadChecksum { .. },
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.is_permanent());
        assert!(
            err.to_string()
                .starts_with("block `memory://ed0e/vol/0000000000000001/2.0000000000000003` is corrupt: payload checksum mismatch"),
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
