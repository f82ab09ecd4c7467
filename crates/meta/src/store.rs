//! The engine trait: transactions over typed tables of byte keys and values.
//!
//! The POSIX semantics live once, in [`crate::fs`], on top of [`MetaStore`]. An engine only
//! provides atomic transactions over the tables of [`Table`]: get, put, delete and ordered range
//! scans. [`RedbStore`] is the embedded engine; a PostgreSQL engine (one table of
//! `(table, key, value)` rows under SERIALIZABLE transactions) fits the same trait.
//!
//! A write transaction either commits every change the closure made, or none: when the closure
//! returns an error the transaction is dropped, which aborts it.
//!
//! # Logged mode: the memtable
//!
//! With [`RedbStore::open_logged`] (the server's mode) a commit's durability comes from its
//! [`RedoLog`] record, and a redb write transaction per commit would cost most of the commit's
//! time (page copies, checksums, the allocator). So commits do not touch redb: they go into a
//! [`MemTable`] in memory, and checkpoints apply the memtable to redb in bulk.
//!
//! Reads see three layers, newest first: the *active* memtable, the *frozen* one (a memtable a
//! checkpoint is applying, if any) and a redb read snapshot ([`crate::memtable`] merges them).
//!
//! A commit ([`MetaStore::write`], [`MetaStore::write_lazy`]):
//! 1. takes the log mutex, which serializes commits;
//! 2. runs the closure over its own buffered writes, then the memtable layers and redb;
//! 3. appends its write set (each key's last put or delete) to the log as one record, and with
//!    durability `sync`s it;
//! 4. only then merges the writes into the active memtable, so a reader never sees a change
//!    that a crash could still undo (in sync mode).
//!
//! A periodic checkpoint ([`Checkpoint::Periodic`], run by [`MetaStore::flush`] every
//! `CHECKPOINT_EVERY`, and by a commit that finds the memtable over its memory bound):
//! 1. under the log mutex, notes `S`, the last record's number, and moves the active memtable
//!    to `frozen` (under the memtable's write lock);
//! 2. without the log mutex (commits go on into a new active table), applies `frozen` to redb in
//!    one synced transaction that also stores `S` as [`keys::REDO_CHECKPOINT`];
//! 3. drops `frozen` under the memtable's write lock. The log is not started over, since
//!    records after `S` may be in it by now, unless it holds none ([`RedoLog::restart`] is safe
//!    exactly when every record in the log is in redb). At open, records up to `S` are skipped
//!    by their numbers and the rest replayed.
//!
//! A full checkpoint ([`Checkpoint::Full`], run by the commit that fills the log to
//! `CHECKPOINT_BYTES`, and when the store is dropped) holds the log mutex throughout: it applies
//! `frozen` and then the active table, stores the last record's number, and starts the log over.
//! Commits wait for one synced redb commit, once per `CHECKPOINT_BYTES` of log.
//!
//! Only one checkpoint runs at a time. If its redb commit fails, the memtable keeps the data
//! (`frozen` stays readable and is applied again by the next checkpoint) and the log keeps the
//! records, so nothing is lost. A failed write leaves redb refusing every later one (and some
//! reads) until the database is closed and opened again, so the failed checkpoint does that at once
//! (after the reads under way, waited for up to 100 ms), or else its next user does (at most every
//! second). Checkpoints are then retried after 1 s, doubling to 30 s, not at every commit; the
//! first failure is logged with its reason, and the recovery once. Meanwhile the log grows past its
//! preallocated size and the memtable with it: a disk that stays full ends in commits failing with
//! the log's own ENOSPC, and the acknowledged ones are all in the log.
//!
//! **Lock rule.** A reader takes the memtable's read lock *first*, then begins its redb read
//! transaction, and holds the lock for its whole read; a checkpoint removes `frozen` only under
//! the write lock and only after the redb commit that holds its contents. So every reader sees
//! `frozen`, or redb holding its contents, or both (with the same values), never neither.
//! Inside the lock, nothing that changes the memtable can happen, and a checkpoint's redb
//! commit only writes what the reader's layers already show, so the redb snapshot may even be
//! begun lazily, at the first read that reaches it. A commit instead takes the read lock per
//! access: it holds the log mutex, under which the active table cannot change, and its own
//! clone of `frozen`, so it never holds the lock while its closure runs.
//!
//! The locks are `parking_lot`'s, which hand themselves to a thread that has waited long
//! (eventual fairness; a full checkpoint hands the log mutex to waiting commits at once): with
//! `std`'s, a thread that re-locks in a loop (back-to-back commits, or a checkpoint loop) could
//! keep the log mutex from a waiting one for seconds.
//!
//! Lock order: the checkpoint mutex, then the log mutex, then the memtable lock. A closure given
//! to [`MetaStore::read`] must not commit (the commit's merge would wait for the reader's own
//! lock) nor read again (the `RwLock` queues a new reader behind a waiting writer).
//!
//! **Backups** ([`MetaStore::backup_to`]) run a periodic checkpoint and, still holding the
//! checkpoint mutex, begin a redb read transaction. Only checkpoints write redb in logged mode,
//! so that snapshot holds exactly the commits up to the checkpoint's `S`: a consistent cut that
//! contains every commit acknowledged before the backup began. The copy then reads that
//! snapshot holding no lock at all, so a long backup stalls neither commits nor readers nor
//! later checkpoints (redb keeps the snapshot's pages until it ends).

use crate::keys;
use crate::memtable::{self, MemTable, Writes, EMPTY};
use crate::redo::{self, RedoLog};
use parking_lot::{Mutex, MutexGuard, RwLock};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use std::cell::OnceCell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A failure of the storage engine itself (not of a filesystem rule).
#[derive(Debug, thiserror::Error)]
#[error("metadata store: {0}")]
pub struct StoreError(pub String);

/// How a failure for lack of disk space begins (see [`StoreError::is_no_space`]).
const NO_SPACE: &str = "no space left on the metadata server's disk";

impl StoreError {
    /// Whether the server's disk was full: clients get ENOSPC for it, which tells the user what
    /// to do, rather than EIO.
    pub fn is_no_space(&self) -> bool {
        self.0.starts_with(NO_SPACE)
    }

    /// An error of redb, as it words it; a full disk (its I/O error keeps only the OS's words,
    /// ENOSPC's "No space left on device") is marked as such.
    fn from_engine(message: String) -> StoreError {
        if message.contains("No space left on device") {
            StoreError(format!("{NO_SPACE}: {message}"))
        } else {
            StoreError(message)
        }
    }
}

macro_rules! store_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self { StoreError::from_engine(e.to_string()) }
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
    /// Run `f` in a read transaction over a consistent snapshot. `f` must not commit, nor read
    /// again through the store: in a [`RedbStore`] in logged mode, a commit would wait for the
    /// read's own lock, and a nested read could queue behind a commit that waits for it.
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
/// it that makes commits durable and a memtable in front of it (see the module doc, "Logged
/// mode").
pub struct RedbStore {
    /// The database; `None` only while a reopen after a failed write has not worked yet (see
    /// the module doc).
    db: RwLock<Option<Arc<redb::Database>>>,
    path: PathBuf,
    /// Set by a failed checkpoint: redb must be opened again before it is used.
    reopen: AtomicBool,
    /// When a reopen was last tried.
    last_reopen: Mutex<Option<Instant>>,
    /// Checkpoints failing since, and when the next may try.
    failing: Mutex<Option<Failing>>,
    sync: bool,
    dirty: AtomicBool,
    log: Option<Logged>,
    /// Set when a sync of the redo log failed: the page cache can no longer be trusted to hold
    /// what was appended, so nothing more may be committed until a restart replays the log.
    broken: AtomicBool,
}

/// The state of logged mode. Lock order: `checkpointing`, then `log`, then `mem`.
struct Logged {
    /// The redo log; held for the whole of a commit, so commits are serialized by it.
    log: Mutex<LogState>,
    /// The memtable layers. Readers hold the read lock for their whole read (the lock rule in
    /// the module doc); it is taken for writing only briefly.
    mem: RwLock<Layers>,
    /// Held by the one checkpoint running (and by a backup while it takes its snapshot).
    checkpointing: Mutex<()>,
}

/// A run of failed checkpoints (see the module doc).
struct Failing {
    since: Instant,
    attempts: u32,
    wait: Duration,
    next_try: Instant,
}

/// Least time between two tries to open the database again after a failed write.
const REOPEN_EVERY: Duration = Duration::from_secs(1);
/// How long a reopen waits for the reads under way to end.
const REOPEN_DRAIN: Duration = Duration::from_millis(100);

/// First and longest wait between failed checkpoints.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MOST: Duration = Duration::from_secs(30);

struct LogState {
    log: RedoLog,
    last_checkpoint: Instant,
}

/// Acknowledged commits that redb does not hold yet.
#[derive(Default)]
struct Layers {
    /// Where commits go.
    active: MemTable,
    /// What a periodic checkpoint is applying (or failed to apply, until the next one).
    frozen: Option<Frozen>,
}

struct Frozen {
    table: Arc<MemTable>,
    /// The last log record it holds.
    upto: u64,
}

/// Which checkpoint [`RedbStore::checkpoint`] runs (the module doc describes both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Checkpoint {
    /// Apply the memtable to the database while commits go on; the log keeps its records.
    Periodic,
    /// Apply everything and start the log over, holding commits back meanwhile.
    Full,
}

/// How much the memtable holds, for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemUsage {
    /// Keys held (puts and deletes), active and frozen.
    pub entries: usize,
    /// Bytes of those keys and values.
    pub bytes: usize,
}

/// A full checkpoint is due when the log holds this much (it is started over after each) ...
const CHECKPOINT_BYTES: u64 = redo::CAPACITY / 2;
/// ... and a periodic one when the memtable has held anything for this long: this bounds how
/// long commits live only in memory and the log (the log's size bounds the replay at start).
/// Not shorter: each checkpoint is a synced redb commit whose writes and flushes delay the
/// commits' own log syncs on the same disk (every 2 s cost a quarter of the single-thread
/// create rate in the metadata benchmark), and a longer interval lets a key created and
/// deleted within it never reach redb.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(30);
/// A commit that leaves the active memtable with more keys than this runs a periodic
/// checkpoint itself, so a burst between two periodic ones cannot take unbounded memory (about
/// 100 bytes of map overhead per key come on top of the keys and values) ...
const MEMTABLE_MAX_ENTRIES: usize = 200_000;
/// ... or with more bytes of keys and values than this. Half of `CHECKPOINT_BYTES`, so a burst of
/// large values is applied without stalling commits before the log fills and forces a full
/// checkpoint.
const MEMTABLE_MAX_BYTES: usize = 16 << 20;

impl RedbStore {
    /// Open or create the database at `path`, without a redo log (for copies: backups and
    /// checks). With `sync`, every commit is fsync'd before it returns; without, commits are
    /// durable at the next [`MetaStore::flush`].
    pub fn open(path: &Path, sync: bool) -> Result<Self, StoreError> {
        let db = open_db(path)?;
        let txn = begin_durable(&db)?;
        for t in Table::ALL {
            txn.open_table(t.def())?;
        }
        txn.commit()?;
        Ok(RedbStore {
            db: RwLock::new(Some(Arc::new(db))),
            path: path.to_path_buf(),
            reopen: AtomicBool::new(false),
            last_reopen: Mutex::new(None),
            failing: Mutex::new(None),
            sync,
            dirty: AtomicBool::new(false),
            log: None,
            broken: AtomicBool::new(false),
        })
    }

    /// Open the database at `path` with its redo log at `log`, first applying the log's records
    /// that the database does not hold yet. With `sync`, every commit's record is synced
    /// (`fdatasync`) before the commit returns, so a commit is durable at the cost of one small
    /// append; without, records are synced at each [`MetaStore::flush`]. Commits are held in a
    /// memtable and applied to the database by checkpoints (see the module doc).
    pub fn open_logged(path: &Path, log: &Path, sync: bool) -> Result<Self, StoreError> {
        let mut store = Self::open(path, sync)?;
        let (mut redo, records) = RedoLog::open(log).map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::StorageFull {
                format!(
                    "; it takes {} MiB on that disk: free space there",
                    redo::CAPACITY >> 20
                )
            } else {
                String::new()
            };
            StoreError(format!("open the redo log {}: {e}{hint}", log.display()))
        })?;
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
            let db = store.db()?;
            let txn = begin_durable(&db)?;
            for r in &todo {
                apply_write_set(&txn, &r.payload)?;
                last = r.seq;
            }
            txn.open_table(Table::Super.def())?
                .insert(keys::REDO_CHECKPOINT, &last.to_be_bytes()[..])?;
            txn.commit()?;
            tracing::info!(
                records = todo.len(),
                upto = last,
                "applied the redo log's records the database did not hold"
            );
        }
        let newest = records.last().map_or(0, |r| r.seq);
        redo.restart(last.max(newest) + 1);
        store.log = Some(Logged {
            log: Mutex::new(LogState {
                log: redo,
                last_checkpoint: Instant::now(),
            }),
            mem: RwLock::new(Layers::default()),
            checkpointing: Mutex::new(()),
        });
        Ok(store)
    }

    /// Run a checkpoint now (a no-op without a redo log): for tests, tools and shutdown; the
    /// store runs both kinds by itself when they are due.
    pub fn checkpoint(&self, kind: Checkpoint) -> Result<(), StoreError> {
        let Some(lg) = &self.log else {
            return Ok(());
        };
        match kind {
            Checkpoint::Periodic => {
                let _running = lg.checkpointing.lock();
                self.checkpoint_periodic(lg)
            }
            Checkpoint::Full => self.checkpoint_full(lg, true),
        }
    }

    /// What the memtable holds now (zero without a redo log).
    pub fn memtable_usage(&self) -> MemUsage {
        let Some(lg) = &self.log else {
            return MemUsage::default();
        };
        let m = lg.mem.read();
        let frozen = m.frozen.as_ref().map(|f| &*f.table);
        MemUsage {
            entries: m.active.len() + frozen.map_or(0, MemTable::len),
            bytes: m.active.bytes() + frozen.map_or(0, MemTable::bytes),
        }
    }

    /// The database, for one read or write (a reopen waits until no one holds it).
    fn db(&self) -> Result<Arc<redb::Database>, StoreError> {
        if self.reopen.load(Ordering::Acquire) {
            // Until then redb may refuse reads too. A failure is left to the next try.
            let _ = self.reopen_db();
        }
        self.db.read().clone().ok_or_else(|| {
            StoreError(format!(
                "the database {} is closed after a failed write and could not be opened again \
                 yet (retried every second; check the server's log and the disk)",
                self.path.display()
            ))
        })
    }

    /// Close the database and open it again, after a failed write (see the module doc); tried
    /// at most every [`REOPEN_EVERY`].
    fn reopen_db(&self) -> Result<(), StoreError> {
        let mut slot = self.db.write();
        if !self.reopen.load(Ordering::Acquire) {
            return Ok(());
        }
        {
            let mut last = self.last_reopen.lock();
            if last.is_some_and(|t| t.elapsed() < REOPEN_EVERY) {
                return Err(StoreError(
                    "the database is to be opened again after a failed write".into(),
                ));
            }
            *last = Some(Instant::now());
        }
        // The write lock keeps new reads from taking the database: the reads under way end in
        // microseconds, so wait for them a little (a backup's copy holds it far longer: then
        // the next try). Without the wait, a busy server could always have one under way.
        let drained = Instant::now() + REOPEN_DRAIN;
        while slot.as_ref().is_some_and(|db| Arc::strong_count(db) > 1) && Instant::now() < drained
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        if slot.as_ref().is_some_and(|db| Arc::strong_count(db) > 1) {
            return Err(StoreError(
                "the database must be opened again after a failed write, and a read still holds \
                 it"
                .into(),
            ));
        }
        // Closed first: redb refuses a second open of a file this process holds.
        *slot = None;
        *slot = Some(Arc::new(open_db(&self.path).inspect_err(|e| {
            tracing::debug!("cannot open the metadata database again yet: {e}");
        })?));
        self.reopen.store(false, Ordering::Release);
        tracing::debug!(path = %self.path.display(), "opened the metadata database again after a failed write");
        Ok(())
    }

    /// Whether checkpoints that are only due (not asked for) wait, after failures.
    fn backing_off(&self) -> bool {
        self.failing
            .lock()
            .as_ref()
            .is_some_and(|f| Instant::now() < f.next_try)
    }

    /// Count a checkpoint's outcome: the first failure of a run and the recovery are logged.
    fn note_checkpoint(&self, result: &Result<(), StoreError>) {
        let mut failing = self.failing.lock();
        match (result, failing.as_mut()) {
            (Ok(()), None) => {}
            (Ok(()), Some(f)) => {
                tracing::info!(
                    failed = f.attempts,
                    secs = f.since.elapsed().as_secs(),
                    "checkpoints of the metadata database work again"
                );
                *failing = None;
            }
            (Err(e), None) => {
                tracing::warn!(
                    path = %self.path.display(),
                    "checkpoint of the metadata database failed: {e}; acknowledged commits stay \
                     in the redo log and in memory, checkpoints are retried (up to every {}s): \
                     if its disk is full, free space there",
                    RETRY_MOST.as_secs()
                );
                let now = Instant::now();
                *failing = Some(Failing {
                    since: now,
                    attempts: 1,
                    wait: RETRY_FIRST,
                    next_try: now + RETRY_FIRST,
                });
            }
            (Err(e), Some(f)) => {
                tracing::debug!(attempts = f.attempts, "checkpoint failed again: {e}");
                f.attempts += 1;
                f.wait = (f.wait * 2).min(RETRY_MOST);
                f.next_try = Instant::now() + f.wait;
            }
        }
    }

    fn checkpoint_seq(&self) -> Result<u64, StoreError> {
        let txn = self.db()?.begin_read()?;
        let t = txn.open_table(Table::Super.def())?;
        let v = t.get(keys::REDO_CHECKPOINT)?;
        Ok(v.and_then(|v| v.value().try_into().ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0))
    }

    fn check_usable(&self) -> Result<(), StoreError> {
        if self.broken.load(Ordering::Acquire) {
            return Err(StoreError(
                "a sync of the redo log failed, so the disk may not hold what was written; \
                 restart the metadata server (it replays its redo log)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Sync the log; a failure marks the store broken (see `broken`).
    fn sync_log(&self, l: &mut LogState) -> Result<(), StoreError> {
        l.log.sync().map_err(|e| {
            self.broken.store(true, Ordering::Release);
            StoreError(format!(
                "sync the redo log {}: {e}; restart the metadata server (it replays its redo log)",
                l.log.path().display()
            ))
        })
    }

    fn commit<R, E: From<StoreError>>(
        &self,
        durable: bool,
        f: impl FnOnce(&mut dyn WriteTxn) -> Result<R, E>,
    ) -> Result<R, E> {
        match &self.log {
            Some(lg) => self.commit_logged(lg, durable, f),
            None => self.commit_plain(durable, f),
        }
    }

    /// A commit without a log: one redb write transaction.
    fn commit_plain<R, E: From<StoreError>>(
        &self,
        durable: bool,
        f: impl FnOnce(&mut dyn WriteTxn) -> Result<R, E>,
    ) -> Result<R, E> {
        let db = self.db()?;
        let txn = if durable {
            begin_durable(&db)?
        } else {
            let mut txn = db.begin_write().map_err(StoreError::from)?;
            txn.set_durability(redb::Durability::None)
                .map_err(StoreError::from)?;
            txn
        };
        let mut w = RedbWrite(txn);
        let out = f(&mut w)?;
        w.0.commit().map_err(StoreError::from)?;
        // The periodic flush makes the database itself durable.
        if !durable {
            self.dirty.store(true, Ordering::Release);
        }
        Ok(out)
    }

    /// A commit in logged mode: steps 1-4 of the module doc, then any checkpoint it made due.
    fn commit_logged<R, E: From<StoreError>>(
        &self,
        lg: &Logged,
        durable: bool,
        f: impl FnOnce(&mut dyn WriteTxn) -> Result<R, E>,
    ) -> Result<R, E> {
        let mut l = lg.log.lock();
        // Checked under the log mutex, so a commit that waited behind a failed sync sees it.
        self.check_usable()?;
        let frozen = lg.mem.read().frozen.as_ref().map(|f| f.table.clone());
        let mut w = LoggedWrite {
            mem: &lg.mem,
            frozen,
            base: Snapshot::new(self),
            writes: Writes::new(),
        };
        let out = f(&mut w)?;
        // The rest of `w` goes now: its read of redb must not outlive the commit (a checkpoint
        // this commit runs may have to open the database again, which waits for every read).
        let LoggedWrite { writes, base, .. } = w;
        drop(base);
        if writes.is_empty() {
            return Ok(out);
        }
        let mut record = Vec::new();
        for ((t, k), v) in &writes {
            encode_write(&mut record, *t, k, v.as_deref());
        }
        l.log.append(&record).map_err(|e| {
            let full = e.kind() == std::io::ErrorKind::StorageFull;
            let what = format!("append to the redo log {}: {e}", l.log.path().display());
            StoreError(if full {
                format!("{NO_SPACE}: {what}")
            } else {
                what
            })
        })?;
        if durable {
            self.sync_log(&mut l)?;
        }
        let (entries, bytes) = {
            let mut m = lg.mem.write();
            m.active.merge(writes);
            (m.active.len(), m.active.bytes())
        };
        let full = l.log.len() >= CHECKPOINT_BYTES;
        drop(l);
        // The commit itself is done (durable, visible): a checkpoint that fails leaves the data
        // in memory and in the log, so it is reported by `note_checkpoint` and not as the
        // commit's failure.
        if full && !self.backing_off() {
            let _ = self.checkpoint_full(lg, false);
        } else if (entries >= MEMTABLE_MAX_ENTRIES || bytes >= MEMTABLE_MAX_BYTES)
            && !self.backing_off()
        {
            // If a checkpoint is running already, the next commit checks again after it.
            if let Some(_running) = lg.checkpointing.try_lock() {
                let _ = self.checkpoint_periodic(lg);
            }
        }
        Ok(out)
    }

    /// A periodic checkpoint; the caller holds `checkpointing`.
    fn checkpoint_periodic(&self, lg: &Logged) -> Result<(), StoreError> {
        // A frozen table an earlier checkpoint failed to apply goes first (there is room for
        // one), then the active table is frozen and applied.
        while let Some((table, upto, retry)) = Self::freeze(lg) {
            self.apply(&[table.rows()], upto)?;
            Self::thaw(lg, upto);
            if !retry {
                break;
            }
        }
        Ok(())
    }

    /// Step 1 of a periodic checkpoint: the frozen table to apply and the last record it
    /// holds, freezing the active table unless one is frozen already (then `true`: it is a
    /// retry). `None` if the memtable is empty.
    fn freeze(lg: &Logged) -> Option<(Arc<MemTable>, u64, bool)> {
        let mut l = lg.log.lock();
        let mut m = lg.mem.write();
        l.last_checkpoint = Instant::now();
        if let Some(f) = &m.frozen {
            return Some((f.table.clone(), f.upto, true));
        }
        if m.active.is_empty() {
            return None;
        }
        let table = Arc::new(std::mem::take(&mut m.active));
        let upto = l.log.last_seq();
        m.frozen = Some(Frozen {
            table: table.clone(),
            upto,
        });
        Some((table, upto, false))
    }

    /// Step 3 of a periodic checkpoint, after redb's commit of the frozen table: drop it, and
    /// start the log over if it holds nothing newer.
    fn thaw(lg: &Logged, upto: u64) {
        let mut l = lg.log.lock();
        lg.mem.write().frozen = None;
        if l.log.last_seq() == upto {
            l.log.restart(upto + 1);
        }
    }

    /// A full checkpoint; with `force` false, only if the log is still full when its turn
    /// comes (another commit's may have run first).
    fn checkpoint_full(&self, lg: &Logged, force: bool) -> Result<(), StoreError> {
        let _running = lg.checkpointing.lock();
        let mut l = lg.log.lock();
        if !force && l.log.len() < CHECKPOINT_BYTES {
            return Ok(());
        }
        let upto = l.log.last_seq();
        {
            // Nothing else can change the memtable meanwhile: commits wait for the log mutex
            // and periodic checkpoints for `checkpointing`; readers go on. An empty memtable
            // means redb holds every record already: the log is just started over.
            let m = lg.mem.read();
            let frozen = m.frozen.as_ref().map_or(&EMPTY, |f| f.table.rows());
            if !frozen.is_empty() || !m.active.is_empty() {
                self.apply(&[frozen, m.active.rows()], upto)?;
            }
        }
        {
            let mut m = lg.mem.write();
            m.frozen = None;
            m.active = MemTable::new();
        }
        l.log.restart(upto + 1);
        l.last_checkpoint = Instant::now();
        // Commits have waited for a whole redb commit: they go next, ahead of anyone who would
        // barge in (another checkpoint from a tight loop would otherwise starve them).
        MutexGuard::unlock_fair(l);
        Ok(())
    }

    /// Apply `layers` (oldest first) to redb in one synced transaction that records `upto` as
    /// the last log record the database holds.
    fn apply(&self, layers: &[&Writes], upto: u64) -> Result<(), StoreError> {
        let result = self.try_apply(layers, upto);
        if result.is_err() {
            self.reopen.store(true, Ordering::Release);
            *self.last_reopen.lock() = None;
            let _ = self.reopen_db();
        }
        self.note_checkpoint(&result);
        result
    }

    fn try_apply(&self, layers: &[&Writes], upto: u64) -> Result<(), StoreError> {
        if self.reopen.load(Ordering::Acquire) {
            self.reopen_db()?;
        }
        let started = Instant::now();
        let db = self.db()?;
        let txn = begin_durable(&db)?;
        for rows in layers {
            // Rows are in table order: open each table once per layer.
            let mut open: Option<(Table, RedbTable<'_>)> = None;
            for ((t, k), v) in rows.iter() {
                if open.as_ref().map(|(ot, _)| *ot) != Some(*t) {
                    drop(open.take());
                    open = Some((*t, txn.open_table(t.def())?));
                }
                let Some((_, table)) = open.as_mut() else {
                    continue;
                };
                match v {
                    Some(v) => table.insert(k.as_slice(), v.as_slice())?,
                    None => table.remove(k.as_slice())?,
                };
            }
        }
        txn.open_table(Table::Super.def())?
            .insert(keys::REDO_CHECKPOINT, &upto.to_be_bytes()[..])?;
        txn.commit()?;
        tracing::debug!(
            keys = layers.iter().map(|l| l.len()).sum::<usize>(),
            upto,
            took_ms = started.elapsed().as_millis() as u64,
            "checkpoint applied to the database"
        );
        Ok(())
    }
}

impl Drop for RedbStore {
    /// Leave everything in the database file (a full checkpoint), so that it alone holds every
    /// commit and the next start has nothing to replay. Best effort: the log still holds the
    /// records if this fails.
    fn drop(&mut self) {
        let Some(lg) = &self.log else {
            return;
        };
        if self.memtable_usage().entries == 0 {
            return;
        }
        if let Err(e) = self.checkpoint_full(lg, true) {
            tracing::warn!(
                "final checkpoint of the metadata database failed; the redo log is replayed at \
                 the next start: {e}"
            );
            let _ = lg.log.lock().log.sync();
        }
    }
}

/// A write transaction that is durable when its commit returns, and that records redb's
/// allocator state, so that opening the file after a crash (or after a failed write, see the
/// module doc) is quick instead of a walk of the whole file: measured on a file of 2 million keys
/// (1.1 GB), 6.8 s to open after a crash without it and under 10 ms with it, for the same commit
/// time (20 commits of 100,000 keys: 11.5 s and 11.4 s).
fn begin_durable(db: &redb::Database) -> Result<redb::WriteTransaction, StoreError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(redb::Durability::Immediate)?;
    txn.set_quick_repair(true);
    Ok(txn)
}

/// Open (or create) the redb file at `path`.
fn open_db(path: &Path) -> Result<redb::Database, StoreError> {
    redb::Database::builder()
        .set_cache_size(256 << 20)
        .create(path)
        .map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError(format!(
                "{} is already open in another process",
                path.display()
            )),
            e => StoreError(format!("open {}: {e}", path.display())),
        })
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

/// Apply an encoded write set (a redo log record) to `txn`.
fn apply_write_set(txn: &redb::WriteTransaction, mut p: &[u8]) -> Result<(), StoreError> {
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
            txn.open_table(table.def())?.insert(key, value)?;
        } else {
            txn.open_table(table.def())?.remove(key)?;
        }
    }
    Ok(())
}

struct RedbRead {
    txn: redb::ReadTransaction,
    /// Tables opened so far, by [`Table::index`]: opening one walks redb's table tree, and a
    /// commit reads the same few tables again and again.
    open: [OnceCell<RedbReadTable>; Table::ALL.len()],
    /// Held for the read's whole life (dropped last), so that a reopen knows the database is
    /// in use.
    _db: Arc<redb::Database>,
}

/// A table open in a redb read transaction.
type RedbReadTable = redb::ReadOnlyTable<&'static [u8], &'static [u8]>;

impl RedbRead {
    fn begin(db: Arc<redb::Database>) -> Result<RedbRead, StoreError> {
        Ok(RedbRead {
            txn: db.begin_read()?,
            _db: db,
            open: Default::default(),
        })
    }

    fn table(&self, table: Table) -> Result<&RedbReadTable, StoreError> {
        let slot = &self.open[usize::from(table.index())];
        if let Some(t) = slot.get() {
            return Ok(t);
        }
        let t = self.txn.open_table(table.def())?;
        Ok(slot.get_or_init(|| t))
    }
}

impl ReadTxn for RedbRead {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        point(self.table(table)?, key)
    }
    fn range(
        &self,
        table: Table,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Pairs, StoreError> {
        scan(self.table(table)?, start, end, limit)
    }
}

/// A table open in a redb write transaction.
type RedbTable<'txn> = redb::Table<'txn, &'static [u8], &'static [u8]>;

/// A write transaction of a store without a log.
struct RedbWrite(redb::WriteTransaction);

/// The value of `key` in an open table, read or write.
fn point<T: ReadableTable<&'static [u8], &'static [u8]>>(
    t: &T,
    key: &[u8],
) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(t.get(key)?.map(|v| v.value().to_vec()))
}

/// Up to `limit` pairs of an open table, read or write, with `start <= key < end`.
fn scan<T: ReadableTable<&'static [u8], &'static [u8]>>(
    t: &T,
    start: &[u8],
    end: &[u8],
    limit: usize,
) -> Result<Pairs, StoreError> {
    let mut out = Vec::new();
    if start >= end {
        return Ok(out);
    }
    for item in t.range::<&[u8]>(start..end)? {
        if out.len() >= limit {
            break;
        }
        let (k, v) = item?;
        out.push((k.value().to_vec(), v.value().to_vec()));
    }
    Ok(out)
}

impl ReadTxn for RedbWrite {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        point(&self.0.open_table(table.def())?, key)
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

/// A redb read snapshot begun at the first read that reaches it (reads served by the memtable
/// never pay for one). Lazy is consistent under the lock rule: see the module doc.
struct Snapshot<'a> {
    store: &'a RedbStore,
    txn: OnceCell<RedbRead>,
}

impl<'a> Snapshot<'a> {
    fn new(store: &'a RedbStore) -> Self {
        Snapshot {
            store,
            txn: OnceCell::new(),
        }
    }

    fn txn(&self) -> Result<&RedbRead, StoreError> {
        if let Some(t) = self.txn.get() {
            return Ok(t);
        }
        let t = RedbRead::begin(self.store.db()?)?;
        Ok(self.txn.get_or_init(|| t))
    }
}

impl ReadTxn for Snapshot<'_> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.txn()?.get(table, key)
    }
    fn range(
        &self,
        table: Table,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Pairs, StoreError> {
        self.txn()?.range(table, start, end, limit)
    }
}

/// A commit in logged mode: its own buffered writes over the memtable over redb.
struct LoggedWrite<'a> {
    mem: &'a RwLock<Layers>,
    /// The frozen table as the commit began; kept even if a checkpoint drops it meanwhile,
    /// because the commit's snapshot of redb may predate that checkpoint's redb commit.
    frozen: Option<Arc<MemTable>>,
    base: Snapshot<'a>,
    writes: Writes,
}

impl LoggedWrite<'_> {
    /// Run `f` over the commit's layers, newest first: its own writes, the active memtable (read
    /// lock held only for the call), the frozen one as the commit began.
    fn with_layers<R>(&self, f: impl FnOnce(&[&Writes]) -> R) -> R {
        let m = self.mem.read();
        let frozen = self.frozen.as_deref().map_or(&EMPTY, MemTable::rows);
        f(&[&self.writes, m.active.rows(), frozen])
    }
}

impl ReadTxn for LoggedWrite<'_> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.with_layers(|layers| memtable::get(layers, &self.base, table, key))
    }
    fn range(
        &self,
        table: Table,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Pairs, StoreError> {
        self.with_layers(|layers| memtable::range(layers, &self.base, table, start, end, limit))
    }
}

impl WriteTxn for LoggedWrite<'_> {
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        memtable::buffer(&mut self.writes, table, key, Some(value));
        Ok(())
    }
    fn delete(&mut self, table: Table, key: &[u8]) -> Result<(), StoreError> {
        memtable::buffer(&mut self.writes, table, key, None);
        Ok(())
    }
}

impl MetaStore for RedbStore {
    fn read<R, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&dyn ReadTxn) -> Result<R, E>,
    ) -> Result<R, E> {
        let Some(lg) = &self.log else {
            let txn = RedbRead::begin(self.db()?)?;
            return f(&txn);
        };
        // The lock rule: the memtable's read lock first and for the whole read.
        let m = lg.mem.read();
        let base = Snapshot::new(self);
        let frozen = m.frozen.as_ref().map_or(&EMPTY, |f| f.table.rows());
        let layers = [m.active.rows(), frozen];
        f(&memtable::Layered::new(&layers, &base))
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
        if let Some(lg) = &self.log {
            let due = {
                let mut l = lg.log.lock();
                self.check_usable()?;
                self.sync_log(&mut l)?;
                let m = lg.mem.read();
                (!m.active.is_empty() || m.frozen.is_some())
                    && l.last_checkpoint.elapsed() >= CHECKPOINT_EVERY
            };
            // The log is synced: the commits are durable. A checkpoint that fails is reported
            // by `note_checkpoint` and retried later; it does not fail the flush.
            if due && !self.backing_off() {
                let _running = lg.checkpointing.lock();
                let _ = self.checkpoint_periodic(lg);
            }
            return Ok(());
        }
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        begin_durable(&*self.db()?)?.commit()?;
        Ok(())
    }

    /// In logged mode, the copy is of a snapshot taken right after a periodic checkpoint, and
    /// is read holding no lock (see the module doc, "Backups").
    fn backup_to(&self, path: &Path) -> Result<(), StoreError> {
        // Held while the copy reads it, so that a reopen waits for the copy.
        let db;
        let src = match &self.log {
            Some(lg) => {
                let _running = lg.checkpointing.lock();
                self.checkpoint_periodic(lg)?;
                db = self.db()?;
                db.begin_read()?
            }
            None => {
                db = self.db()?;
                db.begin_read()?
            }
        };
        let copy = redb::Database::create(path)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    const T: Table = Table::Xattrs;

    fn logged(dir: &Path) -> RedbStore {
        RedbStore::open_logged(&dir.join("meta.redb"), &dir.join("meta.redo"), false).unwrap()
    }

    fn put(s: &RedbStore, k: &str, v: &str) {
        s.write(|t| t.put(T, k.as_bytes(), v.as_bytes())).unwrap();
    }

    fn del(s: &RedbStore, k: &str) {
        s.write(|t| t.delete(T, k.as_bytes())).unwrap();
    }

    fn show(p: Pairs) -> String {
        p.into_iter()
            .map(|(k, v)| {
                format!(
                    "{}={}",
                    String::from_utf8_lossy(&k),
                    String::from_utf8_lossy(&v)
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn range(t: &dyn ReadTxn, limit: usize) -> String {
        show(t.range(T, b"", b"\xff", limit).unwrap())
    }

    /// What redb alone holds, without the memtable.
    fn in_db(s: &RedbStore) -> String {
        range(&RedbRead::begin(s.db().unwrap()).unwrap(), usize::MAX)
    }

    /// Rows in redb, then a frozen table over them, then the active table over that, then a
    /// commit's own writes over all three: reads take each key from the newest layer, deletes
    /// hide older rows, and applying the frozen table changes nothing that readers see.
    #[test]
    fn reads_see_a_frozen_table_between_the_active_one_and_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let s = logged(dir.path());
        for k in ["a", "b", "c", "d"] {
            put(&s, k, "db");
        }
        s.checkpoint(Checkpoint::Periodic).unwrap();
        assert_eq!(in_db(&s), "a=db b=db c=db d=db");
        // To be frozen: b deleted, c and e written.
        del(&s, "b");
        put(&s, "c", "frozen");
        put(&s, "e", "frozen");
        let lg = s.log.as_ref().unwrap();
        let running = lg.checkpointing.lock();
        let (table, upto, retry) = RedbStore::freeze(lg).unwrap();
        assert!(!retry);
        // Active: a deleted, b back, e deleted.
        del(&s, "a");
        put(&s, "b", "active");
        del(&s, "e");
        let want = "b=active c=frozen d=db";
        let check = |s: &RedbStore| {
            s.read(|t| {
                assert_eq!(range(t, usize::MAX), want);
                assert_eq!(range(t, 2), "b=active c=frozen");
                assert_eq!(t.get(T, b"a")?, None);
                assert_eq!(t.get(T, b"e")?, None);
                assert_eq!(t.get(T, b"c")?.as_deref(), Some(&b"frozen"[..]));
                Ok::<_, StoreError>(())
            })
            .unwrap();
        };
        check(&s);
        assert_eq!(in_db(&s), "a=db b=db c=db d=db");
        // A commit's own writes over the three layers; dropped because the closure fails.
        let r: Result<(), StoreError> = s.write(|t| {
            t.delete(T, b"b")?;
            t.put(T, b"a", b"own")?;
            assert_eq!(range(t, usize::MAX), "a=own c=frozen d=db");
            assert_eq!(range(t, 1), "a=own");
            assert_eq!(t.get(T, b"b")?, None);
            Err(StoreError("abort".into()))
        });
        assert!(r.is_err());
        check(&s);
        // The checkpoint's redb commit, then the frozen table goes: same view throughout.
        s.apply(&[table.rows()], upto).unwrap();
        check(&s);
        RedbStore::thaw(lg, upto);
        check(&s);
        assert_eq!(in_db(&s), "a=db c=frozen d=db e=frozen");
        drop(running);
        s.checkpoint(Checkpoint::Periodic).unwrap();
        check(&s);
        assert_eq!(in_db(&s), want);
        assert_eq!(s.memtable_usage(), MemUsage::default());
    }

    /// A frozen table whose apply did not happen (as after a failed redb commit) stays
    /// readable and is applied by the next checkpoint, before the active table.
    #[test]
    fn a_frozen_table_left_by_a_failed_checkpoint_is_applied_by_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let s = logged(dir.path());
        put(&s, "a", "old");
        put(&s, "b", "frozen");
        let lg = s.log.as_ref().unwrap();
        {
            let _running = lg.checkpointing.lock();
            RedbStore::freeze(lg).unwrap();
        }
        put(&s, "a", "active");
        s.read(|t| {
            assert_eq!(range(t, usize::MAX), "a=active b=frozen");
            Ok::<_, StoreError>(())
        })
        .unwrap();
        assert_eq!(in_db(&s), "");
        s.checkpoint(Checkpoint::Periodic).unwrap();
        assert_eq!(in_db(&s), "a=active b=frozen");
        assert_eq!(s.memtable_usage(), MemUsage::default());
        assert_eq!(s.checkpoint_seq().unwrap(), lg.log.lock().log.last_seq());
    }
}
