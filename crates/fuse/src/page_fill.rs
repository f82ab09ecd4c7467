//! The thread that hands the kernel the frames around random reads (`FUSE_NOTIFY_STORE`), so
//! that the next reads of those frames are page cache hits. What may be stored, and when, is
//! decided by the client ([`cairn_client::page_fill`]); this only delivers.
//!
//! A store runs on its own thread, after the read it came with is answered, and nothing waits
//! for it: in the kernel it locks each page it fills, and a page is locked while a read of it is
//! in flight, so a store may have to wait for other reads' answers. Done on a FUSE thread or a
//! runtime worker, that wait could hold up the very answer it waits for. Offers beyond a short
//! queue are dropped: a fill is only ever a head start, and a frame not stored is read by the
//! kernel when it is needed.

use cairn_client::{Client, PageFill};
use fuser::{INodeNo, Notifier};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use tokio::runtime::Handle;
use tracing::debug;

/// Fills waiting for the thread; more are dropped.
const QUEUE: usize = 128;

/// Largest store handed to the kernel at once: a whole block goes in pieces.
const STORE_CHUNK: usize = 1 << 20;

/// Test knob: milliseconds each fill waits before its ticket is checked, and again once its
/// store has begun, so that tests can make changes meet fills offered before them (which must
/// not be stored) and stores under way (which the changes must wait for).
const DELAY_VAR: &str = "CAIRN_PAGE_FILL_DELAY_MS";

/// The sending end of the page fill thread; the thread ends when this is dropped.
pub(crate) struct PageFiller {
    queue: SyncSender<PageFill>,
    client: Arc<Client>,
    /// Set once the session exists (stores need its channel to the kernel).
    notifier: Arc<OnceLock<Notifier>>,
}

impl PageFiller {
    /// Start the thread; stores begin once [`PageFiller::connect`] gives it the session's
    /// notifier.
    pub(crate) fn start(client: Arc<Client>, rt: Handle) -> std::io::Result<PageFiller> {
        let (queue, fills) = sync_channel::<PageFill>(QUEUE);
        let notifier = Arc::new(OnceLock::<Notifier>::new());
        let kernel = Arc::clone(&notifier);
        let filler = Arc::clone(&client);
        let delay = std::env::var(DELAY_VAR)
            .ok()
            .and_then(|v| v.parse().ok())
            .map(std::time::Duration::from_millis);
        std::thread::Builder::new()
            .name("cairn-page-fill".into())
            .spawn(move || {
                for fill in fills {
                    let Some(kernel) = kernel.get() else { continue };
                    if let Some(delay) = delay {
                        std::thread::sleep(delay);
                    }
                    // Whole blocks are read before the store begins: their refs name bytes that
                    // never change, and a change of the file meanwhile spoils the ticket. The
                    // cache reads run on this thread, which exists to wait: handed to the
                    // runtime's blocking pool instead, a read under way when the mount stops
                    // would be cancelled under this thread's feet.
                    let blocks: Vec<_> = fill
                        .blocks
                        .iter()
                        .filter_map(|b| {
                            let data = match &b.data {
                                Some(data) => data.clone(),
                                None => cairn_client::on_waiting_thread(|| {
                                    rt.block_on(client.block_for_fill(fill.ino, b.r))
                                })?,
                            };
                            Some((b.at, data.slice(..(b.len as usize).min(data.len()))))
                        })
                        .collect();
                    let Some(_storing) = client.begin_page_fill(&fill) else {
                        client.not_handed(fill.ino, fill.blocks.iter().map(|b| b.r));
                        continue;
                    };
                    if let Some(delay) = delay {
                        std::thread::sleep(delay);
                    }
                    'parts: for (offset, bytes) in fill.parts.iter().chain(&blocks) {
                        for (i, piece) in bytes.chunks(STORE_CHUNK).enumerate() {
                            let at = offset + (i * STORE_CHUNK) as u64;
                            // ENOENT: the kernel has forgotten the inode; nothing to fill.
                            if let Err(e) = kernel.store(INodeNo(fill.ino), at, piece) {
                                debug!(ino = fill.ino, offset = at, "page fill refused: {e}");
                                break 'parts;
                            }
                        }
                    }
                }
            })?;
        Ok(PageFiller {
            queue,
            client: filler,
            notifier,
        })
    }

    /// Give the thread the session's channel to the kernel.
    pub(crate) fn connect(&self, notifier: Notifier) {
        let _ = self.notifier.set(notifier);
    }

    /// Queue `fill`, or drop it if the thread is behind (its whole blocks then count as not
    /// handed over, for a later read to offer again).
    pub(crate) fn offer(&self, fill: PageFill) {
        if let Err(TrySendError::Full(fill) | TrySendError::Disconnected(fill)) =
            self.queue.try_send(fill)
        {
            self.client
                .not_handed(fill.ino, fill.blocks.iter().map(|b| b.r));
        }
    }
}
