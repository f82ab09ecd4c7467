//! The writeback uploader: writes the blocks staged in the disk cache to the object store.
//!
//! - Order: blocks found staged at open (left by a crash or an earlier run) are queued first, in
//!   the order they were staged; then each new one as it is staged. At most [`UPLOADS`] at once.
//! - Each upload is create-if-absent with the store's data retries (quiet), then the same
//!   "already exists" rules as [`crate::BlockStore::put`]. A block that still fails is retried
//!   with backoff *forever*: its only other copy is on this disk. Its first failure is logged
//!   (WARN), at most one such line per [`LOG_EVERY`] for all blocks, and its eventual upload
//!   after failures at INFO, rate-limited the same way.
//! - Two failures are final, as retrying cannot help: the staged copy fails its checksum (the
//!   local disk damaged it), or the store holds other bytes under the key (a bug). The copy is
//!   dropped, an ERROR logged, and [`crate::BlockStore::drain_writeback`] returns the error.
//! - A block removed from the cache while uploading (deleted) is deleted from the store after,
//!   and [`crate::BlockStore::delete`] waits for that upload ([`Uploader::wait_idle`]), so a
//!   delete is not undone by an upload that lands after it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use object_store::path::Path;
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

use crate::cache::DiskCache;
use crate::codec::BlockCodec;
use crate::error::BlockError;
use crate::retry::Backoff;
use crate::store::Core;

/// Most uploads at once.
const UPLOADS: usize = 8;
/// At most one failure (and one recovery) line per this much time.
const LOG_EVERY: Duration = Duration::from_secs(30);

/// Runs until dropped. See the module doc.
pub(crate) struct Uploader {
    queue: mpsc::UnboundedSender<String>,
    task: JoinHandle<()>,
    shared: Arc<Shared>,
}

impl Drop for Uploader {
    fn drop(&mut self) {
        // Aborting the dispatcher drops its JoinSet, which aborts every upload.
        self.task.abort();
    }
}

struct Shared {
    /// First final failure since `take_failure`.
    failure: Mutex<Option<BlockError>>,
    failed_log: RateLimit,
    recovered_log: RateLimit,
    /// Blocks whose upload attempt is under way, and a wake-up when one ends.
    busy: Mutex<HashSet<String>>,
    idle: Notify,
}

/// Marks a block's upload attempt as under way until dropped.
struct Busy<'a> {
    shared: &'a Shared,
    path: &'a str,
}

impl<'a> Busy<'a> {
    fn new(shared: &'a Shared, path: &'a str) -> Self {
        shared
            .busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(path.to_string());
        Busy { shared, path }
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.shared
            .busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(self.path);
        self.shared.idle.notify_waiters();
    }
}

/// Allows one event per [`LOG_EVERY`], counting the ones it suppresses.
#[derive(Default)]
struct RateLimit {
    state: Mutex<(Option<Instant>, u64)>,
}

impl RateLimit {
    /// Some(number suppressed since the last allowed one) if this one may be logged.
    fn allow(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (last, suppressed) = &mut *state;
        if last.is_some_and(|t| t.elapsed() < LOG_EVERY) {
            *suppressed += 1;
            return None;
        }
        *last = Some(Instant::now());
        Some(std::mem::take(suppressed))
    }
}

impl Uploader {
    /// Starts the dispatcher on the current runtime and queues the blocks staged in `cache`.
    pub(crate) fn start(core: Arc<Core>, cache: DiskCache) -> Uploader {
        let (queue, rx) = mpsc::unbounded_channel();
        for path in cache.staged_paths() {
            let _ = queue.send(path);
        }
        let shared = Arc::new(Shared {
            failure: Mutex::new(None),
            failed_log: RateLimit::default(),
            recovered_log: RateLimit::default(),
            busy: Mutex::default(),
            idle: Notify::new(),
        });
        let task = tokio::spawn(dispatch(core, cache, Arc::clone(&shared), rx));
        Uploader {
            queue,
            task,
            shared,
        }
    }

    /// Queues a newly staged block.
    pub(crate) fn enqueue(&self, path: String) {
        let _ = self.queue.send(path);
    }

    /// Waits until no upload attempt of `path` is under way. After the block left the cache,
    /// none starts again, and one that was under way has deleted what it landed.
    pub(crate) async fn wait_idle(&self, path: &str) {
        loop {
            // Created before the check: a notify_waiters after it wakes it.
            let idle = self.shared.idle.notified();
            let busy = self
                .shared
                .busy
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(path);
            if !busy {
                return;
            }
            idle.await;
        }
    }

    /// The first final failure since the last call.
    pub(crate) fn take_failure(&self) -> Option<BlockError> {
        self.shared
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

async fn dispatch(
    core: Arc<Core>,
    cache: DiskCache,
    shared: Arc<Shared>,
    mut queue: mpsc::UnboundedReceiver<String>,
) {
    // The semaphore is fair, so uploads start in queue order.
    let permits = Arc::new(Semaphore::new(UPLOADS));
    let mut uploads = JoinSet::new();
    loop {
        tokio::select! {
            Some(done) = uploads.join_next(), if !uploads.is_empty() => {
                if let Err(e) = done {
                    if e.is_panic() {
                        tracing::error!("a writeback upload task panicked: {e}");
                    }
                }
            }
            path = queue.recv() => match path {
                Some(path) => {
                    let (core, cache, shared, permits) =
                        (Arc::clone(&core), cache.clone(), Arc::clone(&shared), Arc::clone(&permits));
                    uploads.spawn(async move {
                        let _permit = permits.acquire_owned().await.expect("never closed");
                        upload(&core, &cache, &shared, path).await;
                    });
                }
                None => break,
            },
        }
    }
    while uploads.join_next().await.is_some() {}
}

/// Why an attempt did not upload.
enum Failed {
    /// Worth trying again.
    Retry(BlockError),
    /// Retrying cannot help: the staged copy is dropped.
    Final(BlockError),
}

/// Uploads one staged block, retrying until it is uploaded or no longer staged.
async fn upload(core: &Core, cache: &DiskCache, shared: &Shared, path: String) {
    let object = Path::from(path.as_str());
    let mut backoff = Backoff::new(&core.policy);
    let mut failures = 0u64;
    loop {
        let busy = Busy::new(shared, &path);
        let err = match attempt(core, cache, &path, &object).await {
            Ok(false) => return,
            Ok(true) => {
                if failures > 0 {
                    if let Some(suppressed) = shared.recovered_log.allow() {
                        tracing::info!(
                            path = %core.object_url(&object), failures, suppressed,
                            "writeback: block uploaded after failures"
                        );
                    }
                }
                if !cache.mark_uploaded(&path).await {
                    // Deleted while it uploaded: what landed is garbage.
                    let _ = core.delete(&core.upload, &object).await;
                }
                return;
            }
            Err(Failed::Final(err)) => {
                tracing::error!(
                    path = %core.object_url(&object), dir = %cache.dir().display(), error = %err,
                    "writeback: a staged block cannot be uploaded; dropping it (its data is lost)"
                );
                // Recorded first: the removal wakes drain_writeback, which reports it.
                shared
                    .failure
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert(err);
                cache.remove(&path).await;
                return;
            }
            Err(Failed::Retry(err)) => err,
        };
        drop(busy);
        failures += 1;
        if failures == 1 {
            if let Some(suppressed) = shared.failed_log.allow() {
                let (pending, bytes) = {
                    let usage = cache.usage();
                    (usage.staged_count, usage.staged_bytes)
                };
                tracing::warn!(
                    path = %core.object_url(&object), error = %err, pending, bytes,
                    suppressed,
                    "writeback: block upload failed; it stays in the disk cache and is retried until it succeeds"
                );
            }
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// One attempt: Ok(true) uploaded, Ok(false) no longer staged.
async fn attempt(
    core: &Core,
    cache: &DiskCache,
    path: &str,
    object: &Path,
) -> Result<bool, Failed> {
    let stored = match cache.read_staged(path).await {
        Ok(Some(stored)) => stored,
        Ok(None) => return Ok(false),
        Err(e) => {
            return Err(Failed::Retry(BlockError::BadConfig {
                message: format!(
                    "cannot read the staged block from the disk cache {}: {e}",
                    cache.dir().display()
                ),
            }))
        }
    };
    if let Err(reason) = BlockCodec::check_stored(&stored) {
        return Err(Failed::Final(BlockError::Corrupt {
            path: format!(
                "{} (staged in {})",
                core.object_url(object),
                cache.dir().display()
            ),
            reason,
        }));
    }
    match core
        .put_encoded(&core.upload, "upload", object, stored, None)
        .await
    {
        Ok(_) => Ok(true),
        Err(e @ BlockError::Conflict { .. }) => Err(Failed::Final(e)),
        Err(e) => Err(Failed::Retry(e)),
    }
}
