//! Block storage for cairn: the codec that turns a file's block into an object (compress,
//! checksum), the layout of block keys in the store, and every access to object storage.
//!
//! File contents are cut into fixed-size blocks (per volume, 256 KiB to 8 MiB). Each block is
//! written once, as one immutable object named by its [`BlockKey`]; a rewrite gets a new version
//! and so a new object. The metadata server's block map says which versions are current.
//!
//! Invariants:
//! - This crate is the only code in cairn that touches object storage (STYLE 1.4); the store is
//!   one `Arc<dyn ObjectStore>` built from decorators (see [`store`]).
//! - Bytes that fail verification are never returned as data: [`BlockStore::get`] checks the
//!   length and the checksums of every block (a cached copy too), [`BlockStore::get_range`] those
//!   of every frame it decodes and of the frame table; both re-read once, then report
//!   [`BlockError::Corrupt`].
//! - [`BlockStore::put`] returns Ok only when the block is durable in the store, or with
//!   writeback staged durably in the disk cache (and then uploaded, retried until it is), and
//!   may be repeated with the same bytes (create-if-absent, then read back and compare).
//! - The disk cache holds stored objects only, never plaintext of an encrypted volume.
//! - Decoding never panics on hostile bytes.
//!
//! It never knows about files, inodes or the metadata server beyond the numbers in a key.
//!
//! Modules: [`codec`] (the object format), [`key`] (object paths), [`store`] (the store and how
//! blocks are written and read), [`cache`] (the on-disk cache of stored objects, with writeback),
//! `writeback` (the uploader of staged blocks), `retry` (the retrying decorator), [`pool`] (block
//! buffers used again), [`error`].

pub mod cache;
pub mod codec;
pub mod error;
#[cfg(test)]
mod faults;
pub mod key;
pub mod pool;
mod retry;
pub mod store;
mod writeback;

pub use cache::{CacheConfig, CacheUsage, CachedRange, DiskCache};
pub use codec::{BlockCodec, CodecError, Compression, ParseCompressionError};
pub use error::BlockError;
pub use key::BlockKey;
pub use store::{with_inline_blocking, BlockStore, Part, StoreConfig};
