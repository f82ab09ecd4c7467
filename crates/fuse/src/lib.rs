//! FUSE adapter over the cairn client core, and the mount lifecycle.
//!
//! Each `fuser::Filesystem` method does four things and nothing more: open a span, call one
//! async method of [`cairn_client::Client`] on the runtime, turn the result into the reply, and
//! map the error with [`errno`]. Requests run concurrently: the dispatch thread hands each one
//! to the tokio runtime and goes back to the kernel.

mod adapter;
mod lifecycle;
mod page_fill;

pub use adapter::{errno, CairnFuse};
pub use lifecycle::{check_mountpoint, clear_stale_mount, unmount, MountOptions, MountedSession};
