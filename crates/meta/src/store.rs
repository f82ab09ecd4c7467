//! The engine trait: transactions over typed tables of byte keys and values.
//!
//! The POSIX semantics live once, in [`crate::fs`], on top of [`MetaStore`]. An engine only
//! provides atomic transactions over the tables of [`Table`]: get, put, delete and ordered range
//! scans. [`RedbStore`] is the embedded engine; a PostgreSQL engine (one table of
//! `(table, key, value)` rows under SERIALIZABLE transactions) fits the same trait.
//!
//! A write transaction either commits every change the closure made, or none: when the closure
//! returns an error the transaction is dropped, which aborts it.

use crate::keys;
use crate::redo::{self, RedoLog};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

    /// The table's number in redo log records: its place in [`Table::ALL`].
    fn index(self) -> u8 {
        Table::ALL
            .iter()
            .position(|t| *t == self)
            .expect("every table is in ALL") as u8
    }

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

/// The embedded engine: one redb file, and with [`RedbStore::open_logged`] a [`RedoLog`] beside
/// it that makes commits durable.
pub struct RedbStore {
    db: redb::Database,
    sync: bool,
    dirty: AtomicBool,
    log: Option<Mutex<Logged>>,
    /// Set when the database refused a commit whose record is already in the log: the two
    /// disagree until a restart replays the log, so nothing more may be written.
    broken: AtomicBool,
}

struct Logged {
    log: RedoLog,
    last_checkpoint: Instant,
}

/// A checkpoint is due when the log holds this much (it is started over after each) ...
const CHECKPOINT_BYTES: u64 = redo::CAPACITY / 2;
/// ... or when it has held anything for this long: this bounds the database's unsynced
/// changes (kept in its cache) and the replay time at start.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(2);

impl RedbStore {
    /// Open or create the database at `path`, without a redo log (for copies: backups and
    /// checks). With `sync`, every commit is fsync'd before it returns; without, commits are
    /// durable at the next [`MetaStore::flush`].
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
            log: None,
            broken: AtomicBool::new(false),
        })
    }

    /// Open the database at `path` with its redo log at `log`, first applying the log's records
    /// that the database does not hold yet. With `sync`, every commit's record is synced
    /// (`fdatasync`) before the commit returns, so a commit is durable at the cost of one small
    /// append; without, records are synced at each [`MetaStore::flush`].
    pub fn open_logged(path: &Path, log: &Path, sync: bool) -> Result<Self, StoreError> {
        let mut store = Self::open(path, sync)?;
        let (mut redo, records) = RedoLog::open(log)
            .map_err(|e| StoreError(format!("open the redo log {}: {e}", log.display())))?;
        let checkpoint = store.checkpoint_seq()?;
        let todo: Vec<_> = records.iter().filter(|r| r.seq > checkpoint).collect();
        let mut last = checkpoint;
        if let Some(first) = todo.first() {
            if first.seq != checkpoint + 1 {
                return Err(StoreError(format!(
                    "the redo log {} does not continue the database (it holds record {}, the log \
                     starts at {}): was meta.redb replaced by hand? `cairn meta restore` removes \
                     the log; to open the database as it is, move the log away",
                    log.display(),
                    checkpoint,
                    first.seq
                )));
            }
            let mut txn = store.db.begin_write()?;
            txn.set_durability(redb::Durability::Immediate)?;
            let mut w = RedbWrite { txn, record: None };
            for r in &todo {
                apply_write_set(&mut w, &r.payload)?;
                last = r.seq;
            }
            w.txn
                .open_table(Table::Super.def())?
                .insert(keys::REDO_CHECKPOINT, &last.to_be_bytes()[..])?;
            w.txn.commit()?;
            tracing::info!(
                records = todo.len(),
                upto = last,
                "applied the redo log's records the database did not hold"
            );
        }
        let newest = records.last().map_or(0, |r| r.seq);
        redo.restart(last.max(newest) + 1);
        store.log = Some(Mutex::new(Logged {
            log: redo,
            last_checkpoint: Instant::now(),
        }));
        Ok(store)
    }

    fn checkpoint_seq(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(Table::Super.def())?;
        let v = t.get(keys::REDO_CHECKPOINT)?;
        Ok(v.and_then(|v| v.value().try_into().ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0))
    }

    fn check_usable(&self) -> Result<(), StoreError> {
        if self.broken.load(Ordering::Acquire) {
            return Err(StoreError(
                "an earlier commit failed half-way; restart the metadata server (it replays its \
                 redo log)"
                    .into(),
            ));
        }
        Ok(())
    }

    fn commit<R, E: From<StoreError>>(
        &self,
        durable: bool,
        f: impl FnOnce(&mut dyn WriteTxn) -> Result<R, E>,
    ) -> Result<R, E> {
        self.check_usable()?;
        let mut txn = self.db.begin_write().map_err(StoreError::from)?;
        // With a log, the log is what makes a commit durable.
        let durability = if durable && self.log.is_none() {
            redb::Durability::Immediate
        } else {
            redb::Durability::None
        };
        txn.set_durability(durability).map_err(StoreError::from)?;
        let mut w = RedbWrite {
            txn,
            record: self.log.as_ref().map(|_| Vec::new()),
        };
        let out = f(&mut w)?;
        let mut due = false;
        match (&self.log, w.record.take()) {
            (Some(log), Some(record)) if !record.is_empty() => {
                let mut l = log.lock().expect("redo log lock");
                l.log
                    .append(&record)
                    .map_err(|e| StoreError(format!("append to the redo log: {e}")))?;
                if durable {
                    l.log
                        .sync()
                        .map_err(|e| StoreError(format!("sync the redo log: {e}")))?;
                }
                if let Err(e) = w.txn.commit() {
                    self.broken.store(true, Ordering::Release);
                    return Err(StoreError::from(e).into());
                }
                due = l.log.len() >= CHECKPOINT_BYTES;
            }
            _ => w.txn.commit().map_err(StoreError::from)?,
        }
        // Without a log, the periodic flush makes the database itself durable.
        if !durable && self.log.is_none() {
            self.dirty.store(true, Ordering::Release);
        }
        if due {
            self.checkpoint()?;
        }
        Ok(out)
    }

    /// Make the database itself durable up to the log's last record, then start the log over.
    fn checkpoint(&self) -> Result<(), StoreError> {
        let Some(log) = &self.log else {
            return Ok(());
        };
        self.check_usable()?;
        let mut txn = self.db.begin_write()?;
        txn.set_durability(redb::Durability::Immediate)?;
        let mut l = log.lock().expect("redo log lock");
        let last = l.log.last_seq();
        txn.open_table(Table::Super.def())?
            .insert(keys::REDO_CHECKPOINT, &last.to_be_bytes()[..])?;
        txn.commit()?;
        l.log.restart(last + 1);
        l.last_checkpoint = Instant::now();
        Ok(())
    }
}

/// Encode one put (`Some`) or delete (`None`) of a write set.
fn encode_write(out: &mut Vec<u8>, table: Table, key: &[u8], value: Option<&[u8]>) {
    out.push(table.index());
    out.push(u8::from(value.is_some()));
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    if let Some(v) = value {
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        out.extend_from_slice(v);
    }
}

/// Apply an encoded write set (a redo log record) to `t`.
fn apply_write_set(t: &mut RedbWrite, mut p: &[u8]) -> Result<(), StoreError> {
    fn take<'a>(p: &mut &'a [u8], n: usize) -> Result<&'a [u8], StoreError> {
        if p.len() < n {
            return Err(StoreError("a redo log record is cut short".into()));
        }
        let (a, b) = p.split_at(n);
        *p = b;
        Ok(a)
    }
    fn len(p: &mut &[u8]) -> Result<usize, StoreError> {
        Ok(u32::from_le_bytes(take(p, 4)?.try_into().expect("4 bytes")) as usize)
    }
    while !p.is_empty() {
        let head = take(&mut p, 2)?;
        let table = *Table::ALL
            .get(head[0] as usize)
            .ok_or_else(|| StoreError(format!("a redo log record names table {}", head[0])))?;
        let n = len(&mut p)?;
        let key = take(&mut p, n)?;
        if head[1] == 1 {
            let n = len(&mut p)?;
            let value = take(&mut p, n)?;
            t.txn.open_table(table.def())?.insert(key, value)?;
        } else {
            t.txn.open_table(table.def())?.remove(key)?;
        }
    }
    Ok(())
}

struct RedbRead(redb::ReadTransaction);

/// A write transaction, recording its write set when the store has a redo log.
struct RedbWrite {
    txn: redb::WriteTransaction,
    record: Option<Vec<u8>>,
}

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
    ($txn:ty, $inner:tt) => {
        impl ReadTxn for $txn {
            fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
                let t = self.$inner.open_table(table.def())?;
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
                scan(&self.$inner.open_table(table.def())?, start, end, limit)
            }
        }
    };
}
redb_reads!(RedbRead, 0);
redb_reads!(RedbWrite, txn);

impl WriteTxn for RedbWrite {
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.txn.open_table(table.def())?.insert(key, value)?;
        if let Some(r) = &mut self.record {
            encode_write(r, table, key, Some(value));
        }
        Ok(())
    }
    fn delete(&mut self, table: Table, key: &[u8]) -> Result<(), StoreError> {
        self.txn.open_table(table.def())?.remove(key)?;
        if let Some(r) = &mut self.record {
            encode_write(r, table, key, None);
        }
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
        if let Some(log) = &self.log {
            let due = {
                let mut l = log.lock().expect("redo log lock");
                l.log
                    .sync()
                    .map_err(|e| StoreError(format!("sync the redo log: {e}")))?;
                !l.log.is_empty() && l.last_checkpoint.elapsed() >= CHECKPOINT_EVERY
            };
            return if due { self.checkpoint() } else { Ok(()) };
        }
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
