//! cairn mount-client core: everything a mount does, without the kernel.
//!
//! [`Client`] answers filesystem requests with reply-shaped values; the FUSE adapter
//! (`cairn-fuse`) only translates. It talks to the metadata server through [`rpc::MetaClient`]
//! and moves file contents as blocks through `cairn-blocks`, straight to object storage.
//!
//! Invariants:
//! - This crate never imports `fuser`; errors are `cairn_proto::RpcError` codes, which only the
//!   adapter maps to errno.
//! - A block is committed to the block map only after its object is durable in the store.
//! - flush, fsync and close return an error until every byte written before them is durable
//!   and committed; the data stays buffered so that a later flush can try again.

pub mod data;
pub mod known_attrs;
pub mod listings;
pub mod page_fill;
pub mod rpc;

pub use data::{Client, ClientConfig, Opened, ReadData, DEFAULT_READAHEAD};
pub use known_attrs::EntryReply;
pub use page_fill::PageFill;

/// Run `f` as a thread that exists to wait (a FUSE thread running a request's first poll): its
/// metadata calls go over the thread's own connection ([`rpc::with_thread_lane`]) and the block
/// store's blocking work runs on it ([`cairn_blocks::with_inline_blocking`]), so an answer that
/// needs one round trip or one cached block wakes no other thread.
pub fn on_waiting_thread<R>(f: impl FnOnce() -> R) -> R {
    rpc::with_thread_lane(|| cairn_blocks::with_inline_blocking(f))
}
