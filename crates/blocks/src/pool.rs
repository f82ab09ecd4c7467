//! Buffers for whole blocks, used again instead of freed.
//!
//! A mount moves its data in blocks of a few MiB. A block's buffer freed goes back to the
//! kernel (the allocator purges it), and the next block's buffer is fresh memory again: one page
//! fault and one zeroed page per 4 KiB touched. In a cold sequential read that was 180,000 faults
//! per 2 GiB and a sixth of the mount's CPU (docs/benchmarks.md, data item 32), more on a virtual
//! machine that hands freed pages back to its host. A [`BufferPool`] keeps a few freed buffers of
//! block size and gives them to the next block instead.
//!
//! A buffer goes back to the pool only when the last [`Bytes`] that shares it is dropped
//! ([`Bytes::from_owner`]), so bytes handed out are never written again while anyone holds them.
//! Buffers below [`MIN_POOLED`] are not pooled: small blocks are cheap to allocate, and a pool of
//! them would hold memory for nothing.

use bytes::Bytes;
use std::sync::{Arc, Mutex};

/// Smallest buffer worth pooling: small files' blocks are allocated as usual.
pub const MIN_POOLED: usize = 1 << 20;

/// Idle buffers of block size kept for the next blocks. Bounded: at most `max_idle` buffers wait
/// in it (each as large as the largest block asked for), the rest are freed as usual.
#[derive(Debug)]
pub struct BufferPool {
    max_idle: usize,
    idle: Mutex<Vec<Vec<u8>>>,
}

impl BufferPool {
    /// A pool that keeps at most `max_idle` idle buffers.
    pub fn new(max_idle: usize) -> Arc<BufferPool> {
        Arc::new(BufferPool {
            max_idle,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// An empty buffer with room for `len` bytes: an idle one if one fits (and is not more than
    /// twice as large), else a new one (a little larger). `None` below [`MIN_POOLED`]: allocate
    /// it yourself.
    pub fn take(&self, len: usize) -> Option<Vec<u8>> {
        if len < MIN_POOLED {
            return None;
        }
        let found = {
            let mut idle = self.lock();
            let at = idle
                .iter()
                .position(|b| b.capacity() >= len && b.capacity() / 2 <= len);
            at.map(|i| idle.swap_remove(i))
        };
        // A little room over `len`, so that one buffer serves a block (a writer's buffer) and
        // its object (header, frame table, seals: under 3 KiB for 4 MiB) alike. Room never
        // written is never touched, so it costs address space only.
        Some(
            found
                .unwrap_or_else(|| Vec::with_capacity((len + len / 32).next_multiple_of(64 << 10))),
        )
    }

    /// `buf` as [`Bytes`] whose buffer comes back to the pool once the last of them (slices and
    /// clones included) is dropped.
    pub fn freeze(self: &Arc<Self>, buf: Vec<u8>) -> Bytes {
        if buf.capacity() < MIN_POOLED {
            return Bytes::from(buf);
        }
        Bytes::from_owner(Pooled {
            buf,
            pool: Arc::clone(self),
        })
    }

    /// Idle buffers now (for tests and logs).
    pub fn idle(&self) -> usize {
        self.lock().len()
    }

    /// The idle list. Nothing panics while holding it, and a buffer given back from a `Drop`
    /// must not panic either: a poisoned lock is used as it is.
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn give_back(&self, mut buf: Vec<u8>) {
        let mut idle = self.lock();
        if idle.len() < self.max_idle {
            buf.clear();
            idle.push(buf);
        }
    }
}

/// The owner behind pooled [`Bytes`]: returns its buffer when dropped.
struct Pooled {
    buf: Vec<u8>,
    pool: Arc<BufferPool>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_comes_back_only_when_its_last_bytes_are_dropped() {
        let pool = BufferPool::new(2);
        let mut buf = pool.take(4 << 20).expect("pooled size");
        buf.extend_from_slice(&[7; 4 << 20]);
        let ptr = buf.as_ptr();
        let bytes = pool.freeze(buf);
        let slice = bytes.slice(10..20);
        drop(bytes);
        assert_eq!(pool.idle(), 0, "a slice still holds the buffer");
        assert_eq!(&slice[..], &[7; 10]);
        drop(slice);
        assert_eq!(pool.idle(), 1);
        let again = pool.take(4 << 20).expect("pooled size");
        assert_eq!(again.as_ptr(), ptr, "the same buffer is given again");
        assert!(again.is_empty());
    }

    #[test]
    fn small_or_much_smaller_asks_get_no_idle_buffer_and_the_pool_stays_bounded() {
        let pool = BufferPool::new(1);
        assert!(pool.take(4096).is_none());
        assert_eq!(pool.freeze(vec![1; 10]).len(), 10);
        let (a, b) = (pool.take(8 << 20).unwrap(), pool.take(8 << 20).unwrap());
        drop((pool.freeze(a), pool.freeze(b)));
        assert_eq!(pool.idle(), 1, "at most max_idle buffers wait");
        let small = pool.take(2 << 20).unwrap();
        assert!(
            small.capacity() < 8 << 20,
            "an 8 MiB buffer is not given for 2 MiB"
        );
        assert_eq!(pool.idle(), 1);
    }
}
