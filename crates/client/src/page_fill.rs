//! Handing the kernel's page cache more than a read asked for, without ever handing it stale
//! bytes.
//!
//! A random read that misses the kernel's page cache costs one FUSE round trip for as little as
//! one page, yet the mount has just fetched and verified the whole 64 KiB frame around it (or
//! holds the whole block in memory). Giving the kernel the rest of that frame (the FUSE adapter
//! does it with `FUSE_NOTIFY_STORE`, after the read is answered) turns the next reads of the frame
//! into page cache hits, and a random reader of a file reaches the speed of memory sixteen times
//! sooner. Once a block is local (in memory whole, or in the disk cache), a random read of it
//! hands the kernel the whole block instead, once per open: one miss per block, not per frame.
//! Sequential reads have the kernel's read-ahead and get no fills.
//!
//! The danger is a store of bytes older than what the kernel should hold: a store is not a read
//! the kernel asked for, it overwrites whatever pages are there and extends the kernel's file
//! size to its end. So a fill carries a [`Ticket`] taken with the bytes, and is stored only while
//! the ticket is still good ([`PageFills::begin`]). A ticket is spoiled by every change that
//! could make its bytes stale in the kernel's eyes, and each such change, once applied here,
//! waits for the stores already under way before it is answered (so before the kernel acts on
//! it: truncates its pages, drops them at open, lets a writer in):
//! - an open for writing ([`PageFills::writer_opened`]): while a file has a writer on this mount
//!   no ticket is given and no store begins, since a write updates the kernel's pages before it
//!   reaches us;
//! - a size change (truncate, fallocate), an open that finds the file changed by another mount,
//!   and attributes about to tell the kernel another size than the one reads use here
//!   ([`PageFills::changed`]).
//!
//! Tickets are numbers from one mount-wide counter, so a file's gate forgotten at its last close
//! and made again never matches a ticket of before.

use cairn_proto::Ino;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Proof that a fill's bytes were current when they were read: a file's generation then.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket(u64);

/// Bytes of a file that the kernel may cache beside a read's answer: `parts` are (file offset,
/// bytes), each within the file's size.
#[derive(Debug)]
pub struct PageFill {
    /// The file.
    pub ino: Ino,
    /// (offset in the file, bytes) to store.
    pub parts: Vec<(u64, bytes::Bytes)>,
    /// Whole blocks to store too, whose bytes the filler reads from the mount's caches
    /// ([`crate::Client::block_for_fill`]) unless they come with them: a block ref names bytes
    /// that never change, so they are as current as the ticket whenever they are read.
    pub blocks: Vec<BlockFill>,
    /// Taken with the bytes; checked by [`PageFills::begin`].
    pub ticket: Ticket,
    /// Held until the fill is stored or dropped: bounds the bytes that fills carry.
    pub(crate) _hold: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// A whole block of a file to hand the kernel: its committed version `r`, at file offset `at`,
/// the first `len` bytes (the file's size may end inside it).
#[derive(Clone, Debug)]
pub struct BlockFill {
    /// Offset of the block in the file.
    pub at: u64,
    /// The block as committed when the ticket was taken.
    pub r: cairn_proto::BlockRef,
    /// Bytes of it within the file.
    pub len: u64,
    /// The block's bytes, when the one who offers it has them (a background read of it); else
    /// the filler reads them from the caches.
    pub data: Option<bytes::Bytes>,
}

#[derive(Default)]
struct Gate {
    generation: u64,
    writers: u32,
    stores: u32,
}

/// The gates of a mount's files (see the module doc).
pub struct PageFills {
    gates: Mutex<HashMap<Ino, Gate>>,
    next: AtomicU64,
    /// Woken when a file's last store under way ends.
    drained: Notify,
}

/// A store under way; dropping it ends the store.
pub struct StoreGuard {
    fills: Arc<PageFills>,
    ino: Ino,
}

impl Drop for StoreGuard {
    fn drop(&mut self) {
        let mut gates = self.fills.lock();
        if let Some(g) = gates.get_mut(&self.ino) {
            g.stores -= 1;
            if g.stores == 0 {
                self.fills.drained.notify_waiters();
            }
        }
    }
}

impl Default for PageFills {
    fn default() -> Self {
        PageFills {
            gates: Mutex::default(),
            next: AtomicU64::new(1),
            drained: Notify::new(),
        }
    }
}

impl PageFills {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Ino, Gate>> {
        self.gates.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fresh(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// A ticket for bytes of `ino` read now, or None while the file has a writer here.
    pub fn ticket(&self, ino: Ino) -> Option<Ticket> {
        let mut gates = self.lock();
        let g = gates.entry(ino).or_insert_with(|| Gate {
            generation: self.fresh(),
            ..Gate::default()
        });
        (g.writers == 0).then_some(Ticket(g.generation))
    }

    /// Start storing `fill` if its ticket is still good; the store must end (the guard dropped)
    /// before the file's next change is answered.
    pub fn begin(self: &Arc<Self>, fill: &PageFill) -> Option<StoreGuard> {
        let mut gates = self.lock();
        let g = gates.get_mut(&fill.ino)?;
        if g.writers > 0 || g.generation != fill.ticket.0 {
            return None;
        }
        g.stores += 1;
        Some(StoreGuard {
            fills: Arc::clone(self),
            ino: fill.ino,
        })
    }

    /// `ino` changed (its new state already applied here): spoil its tickets, then wait for the
    /// stores under way to end.
    pub async fn changed(&self, ino: Ino) {
        {
            let mut gates = self.lock();
            let Some(g) = gates.get_mut(&ino) else {
                // No gate: no ticket of it is good anyway.
                return;
            };
            g.generation = self.fresh();
        }
        self.quiesce(ino).await;
    }

    /// An open of `ino` for writing: no store begins until it closes ([`Self::writer_closed`]);
    /// returns once the stores under way have ended.
    pub async fn writer_opened(&self, ino: Ino) {
        {
            let mut gates = self.lock();
            let g = gates.entry(ino).or_default();
            g.writers += 1;
            g.generation = self.fresh();
        }
        self.quiesce(ino).await;
    }

    /// An open for writing of `ino` closed.
    pub fn writer_closed(&self, ino: Ino) {
        let mut gates = self.lock();
        if let Some(g) = gates.get_mut(&ino) {
            g.writers = g.writers.saturating_sub(1);
            g.generation = self.fresh();
        }
    }

    /// The last open of `ino` here closed: drop its gate, or, while a store is under way, spoil
    /// its tickets (the next open reads a fresh block map).
    pub fn forget(&self, ino: Ino) {
        let mut gates = self.lock();
        match gates.get_mut(&ino) {
            Some(g) if g.writers == 0 && g.stores == 0 => {
                gates.remove(&ino);
            }
            Some(g) => g.generation = self.fresh(),
            None => {}
        }
    }

    async fn quiesce(&self, ino: Ino) {
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.lock().get(&ino).is_none_or(|g| g.stores == 0) {
                return;
            }
            drained.await;
        }
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn fill(ino: Ino, ticket: Ticket) -> PageFill {
        PageFill {
            ino,
            blocks: Vec::new(),
            parts: Vec::new(),
            ticket,
            _hold: None,
        }
    }

    #[test]
    fn a_change_spoils_earlier_tickets_only() {
        let fills = Arc::new(PageFills::default());
        let old = fills.ticket(7).unwrap();
        futures::executor::block_on(fills.changed(7));
        assert!(fills.begin(&fill(7, old)).is_none());
        let new = fills.ticket(7).unwrap();
        assert!(fills.begin(&fill(7, new)).is_some());
    }

    #[test]
    fn no_ticket_or_store_while_a_writer_is_open() {
        let fills = Arc::new(PageFills::default());
        let before = fills.ticket(7).unwrap();
        futures::executor::block_on(fills.writer_opened(7));
        assert!(fills.ticket(7).is_none());
        assert!(fills.begin(&fill(7, before)).is_none());
        fills.writer_closed(7);
        // A ticket from before the writer never comes back to life.
        assert!(fills.begin(&fill(7, before)).is_none());
        let after = fills.ticket(7).unwrap();
        assert!(fills.begin(&fill(7, after)).is_some());
    }

    #[test]
    fn a_forgotten_gate_made_again_refuses_old_tickets() {
        let fills = Arc::new(PageFills::default());
        let old = fills.ticket(7).unwrap();
        fills.forget(7);
        assert!(fills.is_empty());
        let _new = fills.ticket(7).unwrap();
        assert!(fills.begin(&fill(7, old)).is_none());
    }

    #[tokio::test]
    async fn a_change_waits_for_the_stores_under_way() {
        let fills = Arc::new(PageFills::default());
        let t = fills.ticket(7).unwrap();
        let guard = fills.begin(&fill(7, t)).unwrap();
        let waiter = {
            let fills = Arc::clone(&fills);
            tokio::spawn(async move { fills.changed(7).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "the change went on during a store");
        drop(guard);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the change ended after the store")
            .unwrap();
        // Another file's stores do not hold it up.
        let t8 = fills.ticket(8).unwrap();
        let _g8 = fills.begin(&fill(8, t8)).unwrap();
        tokio::time::timeout(Duration::from_secs(5), fills.writer_opened(7))
            .await
            .expect("a writer of file 7 waits only for file 7's stores");
    }
}
