//! The engine trait: transactions over typed tables of byte keys and values.
//!
//! The POSIX semantics live once, in [`crate::fs`], on top of [`MetaStore`]. An engine only
//! provides atomic transactions over the tables of [`Table`]: get, put, delete and ordered range
//! scans. [`RedbStore`] is the embedded engine; a PostgreSQL engine (one table of
//! `(table, key, value)` rows under SERIALIZABLE transactions) fits the same trait.
//!
//! A write transaction either commits every change the closure made, or none: when the closure
//! returns an error the transaction is dropped, which aborts it.

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// A failure of the storage engine itself (not of a filesystem rule).
#[derive(Debug, thiserror::Error)]
#[error("metadata store: {0}")]
pub struct StoreError(pub String);

macro_rules! store_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self { StoreError(e.to_string()) }
        }
    )*};
}
store_err!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// The tables of the metadata store. Key layouts are documented in [`crate::keys`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Volume settings, counters.
    Super,
    /// ino -> inode record.
    Inodes,
    /// (parent, name) -> directory entry.
    Dentries,
    /// (parent, cookie) -> name: stable readdir cursor.
    DirCookies,
    /// (ino, name) -> xattr value.
    Xattrs,
    /// (ino, block index) -> block reference.
    Blocks,
    /// (time, ino, index, version) -> (): superseded block objects awaiting reconciliation.
    Garbage,
    /// (ino, session) -> open count.
    Opens,
    /// ino -> (): unlinked inodes still open somewhere.
    Orphans,
    /// session -> session record.
    Sessions,
    /// (table, record key, time) -> value before the change: history for time travel.
    History,
    /// (session, seq) -> response: outcomes of mutations, for exactly-once retries.
    Outcomes,
    /// (session, ino) -> (): the inodes a session has open (to release them when it ends).
    SessionOpens,
    /// (ino, session, owner, start) -> lock: file locks.
    Locks,
    /// (session, ino) -> (): the inodes a session holds locks on.
    SessionLocks,
}

impl Table {
    /// Every table, for engines that create them up front and for backups.
    pub const ALL: [Table; 15] = [
        Table::Super,
        Table::Inodes,
        Table::Dentries,
        Table::DirCookies,
        Table::Xattrs,
        Table::Blocks,
        Table::Garbage,
        Table::Opens,
        Table::Orphans,
        Table::Sessions,
        Table::History,
        Table::Outcomes,
        Table::SessionOpens,
        Table::Locks,
        Table::SessionLocks,
    ];

    fn name(self) -> &'static str {
        match self {
            Table::Super => "super",
            Table::Inodes => "inodes",
            Table::Dentries => "dentries",
            Table::DirCookies => "dir_cookies",
            Table::Xattrs => "xattrs",
            Table::Blocks => "blocks",
            Table::Garbage => "garbage",
            Table::Opens => "opens",
            Table::Orphans => "orphans",
            Table::Sessions => "sessions",
            Table::History => "history",
            Table::Outcomes => "outcomes",
            Table::SessionOpens => "session_opens",
            Table::Locks => "locks",
            Table::SessionLocks => "session_locks",
        }
    }

    fn def(self) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
        TableDefinition::new(self.name())
    }
}

/// Key-value pairs from a range scan.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Reads within a transaction.
pub trait ReadTxn {
    /// The value under `key`.
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Up to `limit` pairs with `start <= key < end`, in key order.
    fn range(
        &self,
        table: Table,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Pairs, StoreError>;
}

/// Reads and writes within a transaction.
pub trait WriteTxn: ReadTxn {
    /// Set `key` to `value`.
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError>;
    /// Remove `key` (absent is fine).
    fn delete(&mut self, table: Table, key: &[u8]) -> Result<(), StoreError>;
}

/// A transactional store of the tables in [`Table`].
pub trait MetaStore: Send + Sync + 'static {
    /// Run `f` in a read transaction over a consistent snapshot.
    fn read<R, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&dyn ReadTxn) -> Result<R, E>,
    ) -> Result<R, E>;
    /// Like [`MetaStore::write`], but the commit is durable only at the next durable commit or
    /// [`MetaStore::flush`], even on a store opened with `sync`: for bookkeeping whose loss in
    /// a crash is harmless (which files a session has open).
    fn write_lazy<R, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&mut dyn WriteTxn) -> Result<R, E>,
    ) -> Result<R, E>;
    /// Run `f` in a write transaction; commit if it returns `Ok`, abort otherwise.
    fn write<R, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&mut dyn WriteTxn) -> Result<R, E>,
    ) -> Result<R, E>;
    /// Make every commit so far durable (for the non-`--sync` mode's periodic flush).
    fn flush(&self) -> Result<(), StoreError>;
    /// Write a consistent copy of the whole store to `path` (a new file).
    fn backup_to(&self, path: &Path) -> Result<(), StoreError>;
}

/// The embedded engine: one redb file.
pub struct RedbStore {
    db: redb::Database,
    sync: bool,
    dirty: AtomicBool,
}

impl RedbStore {
    /// Open or create the database at `path`. With `sync`, every commit is fsync'd before it
    /// returns; without, commits are durable at the next [`MetaStore::flush`].
    pub fn open(path: &Path, sync: bool) -> Result<Self, StoreError> {
        let db = redb::Database::builder()
            .set_cache_size(256 << 20)
            .create(path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => StoreError(format!(
                    "{} is already open in another process",
                    path.display()
                )),
                e => StoreError(format!("open {}: {e}", path.display())),
            })?;
        let txn = db.begin_write()?;
        for t in Table::ALL {
            txn.open_table(t.def())?;
        }
        txn.commit()?;
        Ok(RedbStore {
            db,
            sync,
            dirty: AtomicBool::new(false),
        })
    }
}

impl RedbStore {
    fn commit<R, E: From<StoreError>>(
        &self,
        durable: bool,
        f: impl FnOnce(&mut dyn WriteTxn) -> Result<R, E>,
    ) -> Result<R, E> {
        let mut txn = self.db.begin_write().map_err(StoreError::from)?;
        let durability = if durable {
            redb::Durability::Immediate
        } else {
            redb::Durability::None
        };
        txn.set_durability(durability).map_err(StoreError::from)?;
        let mut txn = RedbWrite(txn);
        let out = f(&mut txn)?;
        txn.0.commit().map_err(StoreError::from)?;
        if !durable {
            self.dirty.store(true, Ordering::Release);
        }
        Ok(out)
    }
}

struct RedbRead(redb::ReadTransaction);
struct RedbWrite(redb::WriteTransaction);

fn scan<T: ReadableTable<&'static [u8], &'static [u8]>>(
    t: &T,
    start: &[u8],
    end: &[u8],
    limit: usize,
) -> Result<Pairs, StoreError> {
    let mut out = Vec::new();
    for item in t.range::<&[u8]>(start..end)? {
        if out.len() >= limit {
            break;
        }
        let (k, v) = item?;
        out.push((k.value().to_vec(), v.value().to_vec()));
    }
    Ok(out)
}

/// One `ReadTxn` impl for both redb transaction kinds: they differ only in the table type
/// `open_table` returns.
macro_rules! redb_reads {
    ($txn:ty) => {
        impl ReadTxn for $txn {
            fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
                let t = self.0.open_table(table.def())?;
                let v = t.get(key)?.map(|v| v.value().to_vec());
                Ok(v)
            }
            fn range(
                &self,
                table: Table,
                start: &[u8],
                end: &[u8],
                limit: usize,
            ) -> Result<Pairs, StoreError> {
                scan(&self.0.open_table(table.def())?, start, end, limit)
            }
        }
    };
}
redb_reads!(RedbRead);
redb_reads!(RedbWrite);

impl WriteTxn for RedbWrite {
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.0.open_table(table.def())?.insert(key, value)?;
        Ok(())
    }
    fn delete(&mut self, table: Table, key: &[u8]) -> Result<(), StoreError> {
        self.0.open_table(table.def())?.remove(key)?;
        Ok(())
    }
}

impl MetaStore for RedbStore {
    fn read<R, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&dyn ReadTxn) -> Result<R, E>,
    ) -> Result<R, E> {
        let txn = RedbRead(self.db.begin_read().map_err(StoreError::from)?);
        f(&txn)
    }

    fn write_lazy<R, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&mut dyn WriteTxn) -> Result<R, E>,
    ) -> Result<R, E> {
        self.commit(false, f)
    }

    fn write<R, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&mut dyn WriteTxn) -> Result<R, E>,
    ) -> Result<R, E> {
        self.commit(self.sync, f)
    }

    fn flush(&self) -> Result<(), StoreError> {
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let txn = self.db.begin_write()?;
        txn.commit()?;
        Ok(())
    }

    fn backup_to(&self, path: &Path) -> Result<(), StoreError> {
        let copy = redb::Database::create(path)?;
        let src = self.db.begin_read()?;
        let dst = copy.begin_write()?;
        for t in Table::ALL {
            let from = src.open_table(t.def())?;
            let mut to = dst.open_table(t.def())?;
            for item in from.iter()? {
                let (k, v) = item?;
                to.insert(k.value(), v.value())?;
            }
        }
        dst.commit()?;
        Ok(())
    }
}
