//! cairn metadata server: the namespace, attributes, xattrs and block maps of a volume.
//!
//! Layers, bottom up: [`store`] (the engine trait and the redb engine: transactions over typed
//! tables, made durable through the [`redo`] log), [`keys`] (every key and record, in one table), [`fs`] (POSIX semantics, once, over
//! any engine) and [`server`] (sessions and the RPC listener).
//!
//! This crate never touches object storage: it stores block *references* that clients commit
//! after the objects are durable, and records superseded ones for the reconciler.

pub mod acl;
pub mod backup;
pub mod fs;
pub mod keys;
pub mod locks;
pub mod memtable;
pub mod overlay;
pub mod redo;
pub mod server;
pub mod store;

pub use server::{MetaServer, ServeConfig};
