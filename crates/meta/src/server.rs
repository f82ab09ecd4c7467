//! The metadata server: a TCP listener speaking the framed protocol of `cairn_proto::frame`.
//!
//! Steps of a connection:
//! 1. The client sends `Hello` with its protocol version, volume and, after a reconnect, the
//!    session it had. The server opens a new session or resumes the old one.
//! 2. Every later frame is one request, answered with the same request id, in completion order.
//!    Point reads (lookup, getattr, ...) are answered on the connection task itself, mutations
//!    by the committer, other reads on the blocking pool. Whoever has the answer writes it to the
//!    socket (`ReplySink`): no hop through another task on the way out.
//! 3. A malformed frame closes the connection (the client reconnects and resends); it never takes
//!    the server down.
//!
//! A lane (a mount thread's own connection, attached to its mount's session; see the client's
//! rpc module) sends one request at a time and waits for each answer. Up to `LANE_THREADS_MAX`
//! lanes are served each on a thread of its own (`serve_lane`), with blocking I/O: the thread
//! that reads a request answers it, and commits a mutation itself when nobody is committing.
//!
//! Mutations are committed in batches (`Commits`): whoever commits takes every mutation waiting,
//! runs each in its own overlay (so a failed one leaves no trace), stores each answer under
//! (session, seq) in `Outcomes`, and commits the batch as one transaction with one fsync (group
//! commit). The committer thread commits for the connections on the runtime; a lane thread that
//! finds nobody committing commits what waits itself. A mutation that arrives again with a
//! (session, seq) already answered gets the stored answer: a retry after a lost reply, a
//! reconnect or a restart is applied exactly once.
//!
//! Sessions: a client heartbeats; a session not heard from for `session_timeout` is ended, which
//! releases its locks and opens. After a restart every stored session gets a fresh timeout, so
//! clients that reconnect in time keep their sessions.
//!
//! Durability: with `sync`, each transaction is fsync'd before its reply is sent. Without, a
//! background task makes the commits durable every `flush_interval`; a crash of the process or
//! its host loses the commits of the last interval (redb keeps non-durable commits in the
//! process), which `cairn meta serve --help` and docs/operations.md state.

use crate::fs::Fs;
use crate::keys::{dec, enc, kk};
use crate::overlay::Overlay;
use crate::store::{MetaStore, ReadTxn, RedbStore, StoreError, Table, WriteTxn};
use anyhow::{anyhow, bail, Context};
use cairn_proto::frame;
use cairn_proto::*;
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::{Condvar, Mutex};
use std::time::Duration;
use std::time::Instant;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// Settings of a metadata server.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Address to listen on.
    pub bind_addr: SocketAddr,
    /// Database folder; only one server may hold it.
    pub data_dir: PathBuf,
    /// The volume to serve; created with these settings when the folder is new.
    pub volume: VolumeInfo,
    /// Make every commit durable before acknowledging it.
    pub sync: bool,
    /// Without `sync`: how often commits are made durable.
    pub flush_interval: Duration,
    /// A session not heard from for this long is ended: its locks and opens are released.
    pub session_timeout: Duration,
    /// Scheduled backups: folder, interval and how many to keep.
    pub backups: Option<(PathBuf, Duration, usize)>,
}

/// An exclusive lock on a data folder, held for the server's life.
#[derive(Debug)]
pub struct FolderLock {
    _file: File,
}

impl FolderLock {
    /// Take the lock on `dir`, creating the folder if needed.
    pub fn acquire(dir: &Path) -> anyhow::Result<FolderLock> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("create data folder {}", dir.display()))?;
        let path = dir.join("LOCK");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("open {}", path.display()))?;
        // SAFETY: flock on a descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            bail!(
                "data folder {} is in use by another metadata server{}: stop it first, or use another --data-dir",
                dir.display(),
                if holder.trim().is_empty() { String::new() } else { format!(" (pid {})", holder.trim()) }
            );
        }
        let _ = file.set_len(0);
        let _ = std::fs::write(&path, format!("{}\n", std::process::id()));
        Ok(FolderLock { _file: file })
    }
}

/// What the connections share.
struct Shared {
    fs: Arc<Fs<RedbStore>>,
    info: VolumeInfo,
    commits: Arc<Commits>,
    lanes: Arc<Lanes>,
    /// Last time each live session was heard from.
    seen: Mutex<HashMap<u64, Instant>>,
    heartbeat: Duration,
    /// Every change is synced before it is acknowledged (`--sync`).
    sync: bool,
}

impl Drop for Shared {
    /// The last connection is gone: the committer thread ends once the queue is empty.
    fn drop(&mut self) {
        self.commits.close();
    }
}

/// A mutation waiting for the committer.
struct Job {
    session: u64,
    seq: u64,
    acked: u64,
    request: Request,
    reply: ReplyTo,
}

/// Where the answer to a request goes.
struct ReplyTo {
    to: Dest,
    op: &'static str,
    session: u64,
}

/// A connection's sink and the request id, or the slot of the lane thread that waits for it.
enum Dest {
    Sink { sink: Arc<ReplySink>, id: u64 },
    Slot(Arc<Slot>),
}

impl ReplyTo {
    /// Send the answer (a failed I/O or internal error is also logged here).
    fn send(self, resp: Response) {
        log_failure(self.op, self.session, &resp);
        match self.to {
            Dest::Sink { sink, id } => match frame::encode(id, &resp) {
                Ok(buf) => sink.send(buf),
                Err(e) => warn!(op = self.op, "cannot encode reply: {e}"),
            },
            Dest::Slot(slot) => slot.put(resp),
        }
    }
}

/// Log an answer that reports a failure of the server itself (not of the request).
fn log_failure(op: &str, session: u64, resp: &Response) {
    if let Err(e) = resp {
        if matches!(e.code, ErrorCode::Io | ErrorCode::Internal) {
            warn!(op, session, "request failed: {}", e.message);
        }
    }
}

/// Where whoever commits a lane thread's mutation leaves the answer, if not that thread itself.
#[derive(Default)]
struct Slot {
    state: Mutex<SlotState>,
    ready: Condvar,
}

#[derive(Default)]
struct SlotState {
    answer: Option<Response>,
    /// The lane thread sleeps on `ready`: only then is a wake-up (a system call) needed.
    waiting: bool,
}

impl Slot {
    fn put(&self, resp: Response) {
        let mut st = self.state.lock().expect("slot lock");
        st.answer = Some(resp);
        if st.waiting {
            drop(st);
            self.ready.notify_one();
        }
    }

    /// Wait for the answer (at once if this thread committed it).
    fn take(&self) -> Response {
        let mut st = self.state.lock().expect("slot lock");
        loop {
            if let Some(resp) = st.answer.take() {
                st.waiting = false;
                return resp;
            }
            st.waiting = true;
            st = self.ready.wait(st).expect("slot lock");
        }
    }
}

/// Most mutations in one transaction.
const BATCH_MAX: usize = 512;

/// Mutations waiting to be committed, and who commits them: one batch at a time (`busy`), all
/// that waits in one transaction with one fsync (group commit). The committer thread takes the
/// queue whenever nobody else is committing. A lane thread (see [`serve_lane`]) that finds
/// nobody committing takes the queue itself, its own mutation last: its answer then wakes no
/// other thread on the way.
#[derive(Default)]
struct Commits {
    queue: Mutex<CommitQueue>,
    /// Wakes the committer thread: work, the end of someone else's batch, or the end.
    wake: Condvar,
    /// Kept by whoever is committing (one at a time).
    pruned: Mutex<Pruned>,
}

#[derive(Default)]
struct CommitQueue {
    jobs: Vec<Job>,
    busy: bool,
    closed: bool,
}

impl CommitQueue {
    fn take_batch(&mut self) -> Vec<Job> {
        if self.jobs.len() <= BATCH_MAX {
            std::mem::take(&mut self.jobs)
        } else {
            self.jobs.drain(..BATCH_MAX).collect()
        }
    }
}

impl Commits {
    /// Queue `job` for the committer thread.
    fn submit(&self, job: Job) {
        let mut q = self.queue.lock().expect("commit queue lock");
        if q.closed {
            drop(q);
            return job.reply.send(Err(RpcError::new(
                ErrorCode::Internal,
                "the server is stopping",
            )));
        }
        q.jobs.push(job);
        let idle = !q.busy;
        drop(q);
        if idle {
            self.wake.notify_one();
        }
    }

    /// Queue `job` and, if nobody is committing, commit the queue on this (blocking) thread.
    fn submit_and_lead(&self, fs: &Fs<RedbStore>, job: Job) {
        let mut q = self.queue.lock().expect("commit queue lock");
        if q.closed || q.busy {
            drop(q);
            return self.submit(job);
        }
        q.jobs.push(job);
        q.busy = true;
        let batch = q.take_batch();
        drop(q);
        self.run(fs, batch);
        let mut q = self.queue.lock().expect("commit queue lock");
        q.busy = false;
        let more = !q.jobs.is_empty();
        drop(q);
        if more {
            self.wake.notify_one();
        }
    }

    /// The committer thread: commit what waits whenever nobody else is; end once closed and
    /// empty.
    fn committer(&self, fs: &Fs<RedbStore>) {
        loop {
            let batch = {
                let mut q = self.queue.lock().expect("commit queue lock");
                loop {
                    if !q.busy && !q.jobs.is_empty() {
                        break;
                    }
                    if q.closed && q.jobs.is_empty() {
                        return;
                    }
                    q = self.wake.wait(q).expect("commit queue lock");
                }
                q.busy = true;
                q.take_batch()
            };
            self.run(fs, batch);
            self.queue.lock().expect("commit queue lock").busy = false;
        }
    }

    fn close(&self) {
        self.queue.lock().expect("commit queue lock").closed = true;
        self.wake.notify_one();
    }

    /// Run one batch: one transaction, one commit, and every answer sent.
    fn run(&self, fs: &Fs<RedbStore>, batch: Vec<Job>) {
        let mut pruned = self.pruned.lock().expect("pruned lock");
        let run = |t: &mut dyn WriteTxn| {
            let mut out = Vec::with_capacity(batch.len());
            for job in &batch {
                out.push(run_once(fs, t, job, &mut pruned)?);
            }
            Ok::<_, StoreError>(out)
        };
        // Opens and releases are session bookkeeping: a batch of only those skips the fsync
        // (they are made durable with the next commit or flush).
        let lazy = batch
            .iter()
            .all(|j| matches!(j.request, Request::Open { .. } | Request::Release { .. }));
        let result = if lazy {
            fs.store().write_lazy(run)
        } else {
            fs.store().write(run)
        };
        match result {
            Ok(responses) => {
                for (job, resp) in batch.into_iter().zip(responses) {
                    job.reply.send(resp);
                }
            }
            Err(e) => {
                // Its deletions of answers did not happen: scan from 0 again.
                *pruned = Pruned::default();
                warn!("commit of {} metadata changes failed: {e}", batch.len());
                let code = crate::fs::store_error_code(&e);
                for job in batch {
                    job.reply
                        .send(Err(RpcError::new(code, format!("commit failed: {e}"))));
                }
            }
        }
    }
}

/// The sending side of a connection. Whoever has an answer (the connection task for point
/// reads, the committer thread for mutations) writes it straight to the socket when nothing is
/// queued before it; only what the socket does not take at once is queued for the connection's
/// writer task. On loopback, handing a reply to another task or thread costs more than writing
/// it: a commit's answer would otherwise wake two tasks on its way out.
struct ReplySink {
    wr: tokio::net::tcp::OwnedWriteHalf,
    state: Mutex<SinkState>,
    queued: tokio::sync::Notify,
}

#[derive(Default)]
struct SinkState {
    /// Frames not yet written, oldest first; `written` bytes of the first are on the socket.
    queue: std::collections::VecDeque<Vec<u8>>,
    written: usize,
    /// The connection is over: answers are dropped (the client resends on its next one).
    closed: bool,
}

impl ReplySink {
    fn new(wr: tokio::net::tcp::OwnedWriteHalf) -> Arc<ReplySink> {
        Arc::new(ReplySink {
            wr,
            state: Mutex::new(SinkState::default()),
            queued: tokio::sync::Notify::new(),
        })
    }

    /// Send one encoded frame, in order after every frame sent before it. Never blocks on the
    /// socket (safe on the committer thread).
    fn send(&self, buf: Vec<u8>) {
        let mut st = self.state.lock().expect("sink lock");
        if st.closed {
            return;
        }
        st.queue.push_back(buf);
        if st.queue.len() == 1 && !self.write_queued(&mut st) {
            return;
        }
        drop(st);
        self.queued.notify_one();
    }

    /// Writes queued frames, oldest first, as far as the socket takes them without waiting.
    /// True if some are left for when the socket is writable again; a broken socket closes the
    /// sink (and leaves nothing).
    fn write_queued(&self, st: &mut SinkState) -> bool {
        while let Some(front) = st.queue.front() {
            match self.wr.try_write(&front[st.written..]) {
                Ok(n) if n > 0 => {
                    st.written += n;
                    if st.written == front.len() {
                        st.queue.pop_front();
                        st.written = 0;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                Ok(_) | Err(_) => {
                    st.closed = true;
                    st.queue.clear();
                    return false;
                }
            }
        }
        false
    }

    /// Stop sending: what is queued is dropped, later answers too.
    fn close(&self) {
        let mut st = self.state.lock().expect("sink lock");
        st.closed = true;
        st.queue.clear();
        drop(st);
        self.queued.notify_one();
    }

    /// The writer task: writes what `send` queued, whenever the socket takes more.
    async fn drain(self: Arc<Self>) {
        loop {
            self.queued.notified().await;
            loop {
                let blocked = {
                    let mut st = self.state.lock().expect("sink lock");
                    if st.closed {
                        return;
                    }
                    self.write_queued(&mut st)
                };
                if !blocked {
                    break;
                }
                if self.wr.writable().await.is_err() {
                    self.close();
                    return;
                }
            }
        }
    }
}

/// The database file in a server's data folder.
pub const DB_FILE: &str = "meta.redb";
/// The redo log beside it (see [`crate::redo`]).
pub const REDO_FILE: &str = "meta.redo";

/// A running metadata server.
pub struct MetaServer {
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    fs: Arc<Fs<RedbStore>>,
    lanes: Arc<Lanes>,
    _lock: FolderLock,
}

impl MetaServer {
    /// Lock the folder, open the database and start listening.
    pub async fn start(cfg: ServeConfig) -> anyhow::Result<MetaServer> {
        let lock = FolderLock::acquire(&cfg.data_dir)?;
        let db_path = cfg.data_dir.join(DB_FILE);
        let (store_path, log_path, sync) =
            (db_path.clone(), cfg.data_dir.join(REDO_FILE), cfg.sync);
        let store = tokio::task::spawn_blocking(move || {
            RedbStore::open_logged(&store_path, &log_path, sync)
        })
        .await?
        .map_err(|e| {
            let hint = if e.is_no_space() {
                "; free space on that disk and start the server again (nothing acknowledged is \
                 lost: the redo log holds it)"
            } else {
                ""
            };
            anyhow!("{e}{hint}")
        })
        .with_context(|| format!("open metadata database {}", db_path.display()))?;
        let (fs, info) =
            Fs::load(store, cfg.volume.clone()).map_err(|e| anyhow!("{}", e.message))?;
        fs.store().flush().map_err(|e| anyhow!("{e}"))?;
        let fs = Arc::new(fs);
        let listener = TcpListener::bind(cfg.bind_addr).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::AddrInUse => anyhow!(
                "address {} is already in use: another process listens there; stop it or choose another --bind-addr",
                cfg.bind_addr
            ),
            _ => anyhow!("cannot listen on {}: {e}; check --bind-addr", cfg.bind_addr),
        })?;
        let addr = listener.local_addr()?;
        let commits = Arc::new(Commits::default());
        let (cfs, ccommits) = (fs.clone(), commits.clone());
        std::thread::Builder::new()
            .name("committer".into())
            .spawn(move || ccommits.committer(&cfs))?;
        let lanes = Arc::new(Lanes::default());
        // Sessions from before a restart get a fresh timeout to reconnect in.
        let now = Instant::now();
        let seen = fs
            .sessions()
            .map_err(|e| anyhow!("{}", e.message))?
            .into_iter()
            .map(|s| (s, now))
            .collect();
        let shared = Arc::new(Shared {
            fs: fs.clone(),
            info: info.clone(),
            commits,
            lanes: lanes.clone(),
            seen: Mutex::new(seen),
            heartbeat: (cfg.session_timeout / 4).max(Duration::from_millis(100)),
            sync: cfg.sync,
        });
        info!(%addr, volume = %info.name, block_size = info.block_size, compression = %info.compression, sync = cfg.sync, "metadata server listening");
        let (shutdown, rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, shared.clone(), rx.clone()));
        // Also with --sync: lazy commits (opens and releases) are flushed on this schedule.
        tokio::spawn(flush_loop(fs.clone(), cfg.flush_interval, rx.clone()));
        if let Some((dir, every, keep)) = cfg.backups.clone() {
            tokio::spawn(backup_loop(fs.clone(), dir, every, keep, rx.clone()));
        }
        tokio::spawn(expiry_loop(shared, cfg.session_timeout, rx));
        Ok(MetaServer {
            addr,
            shutdown,
            task,
            fs,
            lanes,
            _lock: lock,
        })
    }
    /// The address it listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop accepting, make every commit durable, and return.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
        self.lanes.stop();
        let fs = self.fs.clone();
        tokio::task::spawn_blocking(move || fs.store().flush())
            .await?
            .map_err(|e| anyhow!("{e}"))?;
        // The connections and the committer let go of the database as they wind down; the
        // folder lock is released only after, so that a server started next in this process
        // finds the database closed.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Arc::strong_count(&self.fs) > 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        info!("metadata server stopped");
        Ok(())
    }
}

async fn flush_loop(fs: Arc<Fs<RedbStore>>, every: Duration, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let fs = fs.clone();
        match tokio::task::spawn_blocking(move || fs.store().flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!("periodic flush of the metadata database failed: {e}"),
            Err(e) => warn!("periodic flush task failed: {e}"),
        }
    }
}

async fn backup_loop(
    fs: Arc<Fs<RedbStore>>,
    dir: PathBuf,
    every: Duration,
    keep: usize,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let (fs, dir) = (fs.clone(), dir.clone());
        let r = tokio::task::spawn_blocking(move || {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let to = dir.join(format!(
                "meta-{:012}.{:09}.redb",
                secs.as_secs(),
                secs.subsec_nanos()
            ));
            let report = crate::backup::backup(&fs, &to)?;
            let all = crate::backup::scheduled_backups(&dir);
            for old in all.iter().take(all.len().saturating_sub(keep.max(1))) {
                let _ = std::fs::remove_file(old);
            }
            Ok::<_, anyhow::Error>((to, report))
        })
        .await;
        match r {
            Ok(Ok((to, report))) => {
                info!(path = %to.display(), inodes = report.inodes, "scheduled backup written")
            }
            Ok(Err(e)) => warn!("scheduled backup failed: {e:#}"),
            Err(e) => warn!("scheduled backup failed: {e}"),
        }
    }
}

async fn expiry_loop(shared: Arc<Shared>, timeout: Duration, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(
        (timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(5)),
    );
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let expired: Vec<u64> = {
            let mut seen = shared.seen.lock().expect("sessions lock");
            let gone: Vec<u64> = seen
                .iter()
                .filter(|(_, t)| t.elapsed() > timeout)
                .map(|(s, _)| *s)
                .collect();
            for s in &gone {
                seen.remove(s);
            }
            gone
        };
        for session in expired {
            match end_session(&shared, session).await {
                Ok(()) => info!(session, "session expired: its locks and opens are released"),
                Err(e) => warn!(session, "cannot end expired session: {}", e.message),
            }
        }
    }
}

/// End `session` now: forget it, and release its locks and opens (expiry, or its mount said so).
async fn end_session(shared: &Arc<Shared>, session: u64) -> Result<(), RpcError> {
    let sh = shared.clone();
    tokio::task::spawn_blocking(move || end_session_now(&sh, session))
        .await
        .map_err(|e| RpcError::new(ErrorCode::Io, e.to_string()))?
}

/// [`end_session`] on a thread that may block.
fn end_session_now(shared: &Shared, session: u64) -> Result<(), RpcError> {
    shared.seen.lock().expect("sessions lock").remove(&session);
    let fs = &shared.fs;
    fs.store().write(|t| fs.end_session_in(t, session))
}

/// Answer an EndSession: its mount is going away (blocks).
fn end_session_reply(shared: &Shared, session: u64) -> Response {
    end_session_now(shared, session).map(|()| {
        info!(session, "session ended by its mount");
        Reply::Empty
    })
}

/// Per session, the sequence number up to which stored answers are known deleted. The deletion
/// of acknowledged answers then looks only at the numbers acknowledged since: a scan from 0
/// would walk every answer deleted since the last checkpoint (they are tombstones in the
/// memtable), thousands at a few thousand changes a second. Kept by whoever commits (one at a
/// time); after a restart it starts at 0, and the first scan of each session walks what is left.
#[derive(Default)]
struct Pruned(HashMap<u64, u64>);

impl Pruned {
    fn get(&self, session: u64) -> u64 {
        self.0.get(&session).copied().unwrap_or(0)
    }

    fn set(&mut self, session: u64, upto: u64) {
        if self.0.len() >= 65_536 {
            self.0.clear();
        }
        self.0.insert(session, upto);
    }
}

/// Answers a session has acknowledged are deleted once this many have gathered: one scan of
/// the session's answers per this many mutations, not one per mutation.
const PRUNE_EVERY: u64 = 64;

/// Apply one mutation exactly once: return the stored answer of an earlier attempt, or run it in
/// an overlay and keep its changes and answer only if it succeeds.
fn run_once(
    fs: &Fs<RedbStore>,
    t: &mut dyn WriteTxn,
    job: &Job,
    pruned: &mut Pruned,
) -> Result<Response, StoreError> {
    let key = kk(job.session, job.seq);
    if job.seq != 0 {
        if let Some(v) = t.get(Table::Outcomes, &key)? {
            return dec(&v);
        }
        // A session that ended (expired, or ended by its mount) has had its locks, opens and
        // answers dropped: a change in its name now would leak what it takes (a lock or an
        // open nobody releases), so it is refused and the mount resends it in a new session.
        if !fs.session_exists_in(t, job.session)? {
            return Ok(Err(RpcError::new(
                ErrorCode::SessionEnded,
                format!("session {} has ended", job.session),
            )));
        }
        let from = pruned.get(job.session);
        if job.acked >= from + PRUNE_EVERY {
            let old = t.range(
                Table::Outcomes,
                &kk(job.session, from),
                &kk(job.session, job.acked + 1),
                usize::MAX,
            )?;
            for (k, _) in old {
                t.delete(Table::Outcomes, &k)?;
            }
            pruned.set(job.session, job.acked);
        }
    }
    let mut overlay = Overlay::new(t);
    match apply_in(fs, &mut overlay, job.session, &job.request) {
        Ok(reply) => {
            let resp: Response = Ok(reply);
            if job.seq != 0 {
                overlay.put(Table::Outcomes, &key, &enc(&resp))?;
            }
            overlay.apply()?;
            Ok(resp)
        }
        // The overlay is dropped: a failed mutation changes nothing. Its answer is not stored;
        // a retry runs it again against the then-current state.
        Err(e) => Ok(Err(e)),
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        let (sock, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let _ = sock.set_nodelay(true);
        let (shared, stop) = (shared.clone(), stop.clone());
        tokio::spawn(async move {
            match connection(sock, shared, stop).await {
                Ok(()) => debug!(%peer, "connection closed"),
                Err(e) => info!(%peer, "connection dropped: {e:#}"),
            }
        });
    }
}

async fn connection(
    mut sock: TcpStream,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    // A lane says so in its first frame; it is read before the socket is split and buffered, so
    // that nothing is left behind in a buffer if the socket goes to a lane thread.
    let frame = tokio::select! {
        f = frame::read_frame(&mut sock) => f?,
        _ = stop.changed() => return Ok(()),
    };
    let Some((id, body)) = frame else {
        return Ok(());
    };
    let env: Envelope = frame::decode(&body)?;
    if matches!(env.request, Request::Hello { attach: true, .. }) && shared.lanes.has_room() {
        let (sh, request) = (shared.clone(), env.request);
        let resp = tokio::task::spawn_blocking(move || hello_request(&sh, request)).await?;
        tokio::io::AsyncWriteExt::write_all(&mut sock, &frame::encode(id, &resp)?).await?;
        let Ok(Reply::Hello { session, .. }) = resp else {
            return Ok(());
        };
        let sock = sock.into_std()?;
        sock.set_nonblocking(false)?;
        // Full or stopping since `has_room`: closing the lane is safe (its mount sends the
        // request it had no answer to on the multiplexed connection).
        let Some(ticket) = shared.lanes.register(&sock) else {
            return Ok(());
        };
        let lanes = shared.lanes.clone();
        let spawned = std::thread::Builder::new()
            .name("lane".into())
            .spawn(move || {
                match serve_lane(sock, &shared, session) {
                    Ok(()) => debug!(session, "lane closed"),
                    Err(e) => debug!(session, "lane dropped: {e:#}"),
                }
                shared.lanes.unregister(ticket);
            });
        if let Err(e) = spawned {
            lanes.unregister(ticket);
            warn!("cannot start a lane thread: {e}");
        }
        return Ok(());
    }
    let (rd, wr) = sock.into_split();
    let mut rd = tokio::io::BufReader::with_capacity(64 << 10, rd);
    let sink = ReplySink::new(wr);
    let writer = tokio::spawn(sink.clone().drain());
    let mut session: Option<u64> = None;
    let mut first = Some((id, env));
    loop {
        let (id, env) = match first.take() {
            Some(f) => f,
            None => {
                let frame = tokio::select! {
                    f = frame::read_frame(&mut rd) => f?,
                    _ = stop.changed() => break,
                };
                let Some((id, body)) = frame else { break };
                (id, frame::decode::<Envelope>(&body)?)
            }
        };
        let op = env.request.op_name();
        if matches!(env.request, Request::Hello { .. }) {
            let (sh, request) = (shared.clone(), env.request);
            let resp = tokio::task::spawn_blocking(move || hello_request(&sh, request)).await?;
            if let Ok(Reply::Hello { session: s, .. }) = &resp {
                session = Some(*s);
            }
            sink.send(frame::encode(id, &resp)?);
            continue;
        }
        let Some(sess) = session else {
            let resp: Response = Err(RpcError::new(
                ErrorCode::Internal,
                "the first request must be Hello",
            ));
            sink.send(frame::encode(id, &resp)?);
            continue;
        };
        match env.request {
            Request::Heartbeat => {
                sink.send(frame::encode(id, &heartbeat(&shared, sess))?);
                continue;
            }
            // Answered at once with --sync (see `blocking_answer`): no hop to the blocking pool.
            Request::Sync if shared.sync => {
                let resp = blocking_answer(&shared, sess, env.request);
                sink.send(frame::encode(id, &resp)?);
                continue;
            }
            Request::EndSession => {
                let sh = shared.clone();
                let resp =
                    tokio::task::spawn_blocking(move || end_session_reply(&sh, sess)).await?;
                sink.send(frame::encode(id, &resp)?);
                continue;
            }
            // Point reads are a few microseconds of redb: answer them here, without a hop to
            // another task or thread.
            Request::Lookup { .. }
            | Request::GetAttr { .. }
            | Request::GetXattr { .. }
            | Request::GetBlocks { .. }
            | Request::GetLock { .. }
            | Request::ReadLink { .. } => {
                let resp = read(&shared.fs, sess, env.request);
                sink.send(frame::encode(id, &resp)?);
                continue;
            }
            _ => {}
        }
        let reply = ReplyTo {
            to: Dest::Sink {
                sink: sink.clone(),
                id,
            },
            op,
            session: sess,
        };
        if env.request.is_mutation() {
            // Straight to the committer, which sends the answer itself.
            shared.commits.submit(Job {
                session: sess,
                seq: env.seq,
                acked: env.acked,
                request: env.request,
                reply,
            });
            continue;
        }
        // Backups, a durable Sync without --sync, listings: on the blocking pool.
        let sh = shared.clone();
        tokio::spawn(async move {
            let resp =
                match tokio::task::spawn_blocking(move || blocking_answer(&sh, sess, env.request))
                    .await
                {
                    Ok(r) => r,
                    Err(e) => Err(RpcError::new(
                        ErrorCode::Internal,
                        format!("{op} failed: {e}"),
                    )),
                };
            reply.send(resp);
        });
    }
    sink.close();
    let _ = writer.await;
    Ok(())
}

/// Answer a Heartbeat: the session's timeout starts over, unless it has already ended.
fn heartbeat(shared: &Shared, session: u64) -> Response {
    let known = shared
        .seen
        .lock()
        .expect("sessions lock")
        .get_mut(&session)
        .map(|t| *t = Instant::now())
        .is_some();
    if known {
        Ok(Reply::Empty)
    } else {
        Err(RpcError::new(ErrorCode::Stale, "session expired"))
    }
}

/// Answer a request that is neither a mutation nor session business, on a thread that may block:
/// a backup, a Sync (durable on return), or a read.
fn blocking_answer(shared: &Shared, session: u64, req: Request) -> Response {
    match req {
        Request::Backup { to } => match crate::backup::backup(&shared.fs, Path::new(&to)) {
            Ok(r) => {
                info!(
                    inodes = r.inodes,
                    entries = r.entries,
                    "online backup written"
                );
                Ok(Reply::Backup {
                    inodes: r.inodes,
                    entries: r.entries,
                    blocks: r.blocks,
                })
            }
            Err(e) => Err(RpcError::new(ErrorCode::Io, format!("{e:#}"))),
        },
        // With --sync, every change acknowledged so far is durable already; only opens and
        // releases are logged lazily, and the next synced change persists them before anything
        // that depends on them (docs/durability.md). An fsync of a small file saves a sync of the
        // log and two thread hops.
        Request::Sync if shared.sync => Ok(Reply::Empty),
        // Durable on return: an empty synchronous commit persists every earlier one.
        Request::Sync => match shared.fs.store().flush() {
            Ok(()) => Ok(Reply::Empty),
            Err(e) => Err(RpcError::new(ErrorCode::Io, format!("sync failed: {e}"))),
        },
        req => read(&shared.fs, session, req),
    }
}

/// Lane connections served on threads of their own, so that a stopping server can end them,
/// and so that a crowd of mounts cannot make the server start threads without bound.
#[derive(Default)]
struct Lanes {
    state: Mutex<LaneSet>,
}

#[derive(Default)]
struct LaneSet {
    socks: HashMap<u64, std::net::TcpStream>,
    next: u64,
    stopping: bool,
}

/// Most lanes served on threads; more are served like any connection, on the runtime.
const LANE_THREADS_MAX: usize = 256;

/// TCP keepalive of a lane: probes after 60 s idle, then every 10 s, and the connection ends
/// after 3 unanswered. A mount whose host died or was cut off without closing its lanes holds
/// their threads for about 90 s; an idle live mount keeps its lanes.
const LANE_KEEPALIVE: socket2::TcpKeepalive = socket2::TcpKeepalive::new()
    .with_time(Duration::from_secs(60))
    .with_interval(Duration::from_secs(10))
    .with_retries(3);

/// Turn on TCP keepalive with the lane's timings.
fn keep_alive(sock: &std::net::TcpStream) -> std::io::Result<()> {
    socket2::SockRef::from(sock).set_tcp_keepalive(&LANE_KEEPALIVE)
}

impl Lanes {
    fn has_room(&self) -> bool {
        let st = self.state.lock().expect("lanes lock");
        !st.stopping && st.socks.len() < LANE_THREADS_MAX
    }

    /// Keep a handle on `sock` to end it when the server stops; `None` if stopping or full.
    fn register(&self, sock: &std::net::TcpStream) -> Option<u64> {
        let mut st = self.state.lock().expect("lanes lock");
        if st.stopping || st.socks.len() >= LANE_THREADS_MAX {
            return None;
        }
        let handle = sock.try_clone().ok()?;
        st.next += 1;
        let ticket = st.next;
        st.socks.insert(ticket, handle);
        Some(ticket)
    }

    fn unregister(&self, ticket: u64) {
        self.state.lock().expect("lanes lock").socks.remove(&ticket);
    }

    /// End every lane: their threads see the end of their connection and return.
    fn stop(&self) {
        let mut st = self.state.lock().expect("lanes lock");
        st.stopping = true;
        for sock in st.socks.values() {
            let _ = sock.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// Serve a lane (a mount thread's own connection: one request at a time, each answered before
/// the next is sent) on this thread, with blocking I/O. The thread that reads a request answers
/// it, and commits a mutation itself when nobody else is committing. Through the runtime, a
/// mutation wakes the connection task and then the committer thread on its way in; on a virtual
/// machine each wake-up costs tens of microseconds of a create that takes a few hundred.
fn serve_lane(
    sock: std::net::TcpStream,
    shared: &Arc<Shared>,
    mut session: u64,
) -> anyhow::Result<()> {
    keep_alive(&sock)?;
    // A mount that stops reading its answers holds this thread, not the server.
    sock.set_write_timeout(Some(Duration::from_secs(30)))?;
    let mut rd = std::io::BufReader::with_capacity(64 << 10, sock.try_clone()?);
    let mut wr = sock;
    let slot = Arc::new(Slot::default());
    while let Some((id, body)) = frame::read_frame_blocking(&mut rd)? {
        let env: Envelope = frame::decode(&body)?;
        let op = env.request.op_name();
        let resp = match env.request {
            request @ Request::Hello { .. } => {
                let resp = hello_request(shared, request);
                if let Ok(Reply::Hello { session: s, .. }) = &resp {
                    session = *s;
                }
                resp
            }
            Request::Heartbeat => heartbeat(shared, session),
            Request::EndSession => end_session_reply(shared, session),
            request if request.is_mutation() => {
                let reply = ReplyTo {
                    to: Dest::Slot(slot.clone()),
                    op,
                    session,
                };
                let job = Job {
                    session,
                    seq: env.seq,
                    acked: env.acked,
                    request,
                    reply,
                };
                shared.commits.submit_and_lead(&shared.fs, job);
                // Logged by whoever committed it.
                let resp = slot.take();
                wr.write_all(&frame::encode(id, &resp)?)?;
                continue;
            }
            request => blocking_answer(shared, session, request),
        };
        log_failure(op, session, &resp);
        wr.write_all(&frame::encode(id, &resp)?)?;
    }
    Ok(())
}

/// Answer a Hello request (blocks: opening a session is a commit).
fn hello_request(shared: &Shared, request: Request) -> Response {
    let Request::Hello {
        protocol,
        volume,
        session: resume,
        client,
        attach,
    } = request
    else {
        return Err(RpcError::new(ErrorCode::Internal, "not a Hello"));
    };
    hello(shared, protocol, &volume, resume, &client, attach)
}

fn hello(
    shared: &Shared,
    protocol: u32,
    volume: &str,
    resume: Option<u64>,
    client: &str,
    attach: bool,
) -> Response {
    if protocol != PROTOCOL_VERSION {
        return Err(RpcError::new(
            ErrorCode::Unsupported,
            format!("client speaks protocol {protocol}, this server speaks {PROTOCOL_VERSION}: use matching cairn versions"),
        ));
    }
    if volume != shared.info.name {
        return Err(RpcError::new(
            ErrorCode::NotFound,
            format!(
                "this metadata server serves volume `{}`, not `{volume}`: check the volume name",
                shared.info.name
            ),
        ));
    }
    let known = resume.filter(|s| shared.seen.lock().expect("sessions lock").contains_key(s));
    let session = match known {
        // One more connection of a live mount (a thread lane): no session of its own, no
        // refresh of the session's timeout, and not worth a log line each.
        Some(s) if attach => {
            debug!(session = s, client, "connection attached to a session");
            return Ok(hello_reply(shared, s));
        }
        None if attach => {
            return Err(RpcError::new(
                ErrorCode::Stale,
                "no such session to attach to: it expired or the server lost it",
            ))
        }
        Some(s) => s,
        None => {
            if let Some(old) = resume {
                warn!(
                    session = old,
                    client, "client resumed an expired session: its locks were released"
                );
            }
            shared.fs.new_session(client)?
        }
    };
    shared
        .seen
        .lock()
        .expect("sessions lock")
        .insert(session, Instant::now());
    info!(
        session,
        client,
        resumed = resume == Some(session),
        "client session"
    );
    Ok(hello_reply(shared, session))
}

/// The answer to a Hello that opened, resumed or attached to `session`.
fn hello_reply(shared: &Shared, session: u64) -> Reply {
    Reply::Hello {
        session,
        volume: shared.info.clone(),
        heartbeat_ms: shared.heartbeat.as_millis() as u64,
        synced: shared.sync,
    }
}

/// Answer a request that changes nothing.
pub fn read<S: MetaStore>(fs: &Fs<S>, session: u64, req: Request) -> Response {
    Ok(match req {
        Request::Lookup { parent, name } => Reply::Attr(fs.lookup(parent, &name)?),
        Request::GetAttr { ino } => Reply::Attr(fs.getattr(ino)?),
        Request::ReadLink { ino } => Reply::Data(fs.readlink(ino)?),
        Request::ReadDir {
            ino,
            cookie,
            limit,
            plus,
        } => {
            let (entries, eof, ctime) = fs.readdir_at(ino, cookie, limit, plus)?;
            Reply::Dir {
                entries,
                eof,
                ctime,
            }
        }
        Request::StatFs => Reply::StatFs(fs.statfs()?),
        Request::GetXattr { ino, name } => Reply::Data(fs.getxattr(ino, &name)?),
        Request::ListXattr { ino } => Reply::Names(fs.listxattr(ino)?),
        Request::GetBlocks { ino, first, count } => {
            let (blocks, size) = fs.get_blocks(ino, first, count)?;
            Reply::Blocks { blocks, size }
        }
        Request::GetLock { ino, lock } => Reply::Lock(fs.get_lock(ino, session, &lock)?),
        other => {
            return Err(RpcError::new(
                ErrorCode::Internal,
                format!("{} is not a read", other.op_name()),
            ))
        }
    })
}

/// A directory's ctime before a change in it (`None` if it does not exist: the change will fail).
fn ctime_of<S: MetaStore>(fs: &Fs<S>, t: &dyn ReadTxn, dir: Ino) -> Option<Timestamp> {
    fs.getattr_in(t, dir).ok().map(|a| a.ctime)
}

/// The directory `dir` as a change left it, its ctime before being `was`. Every change of a
/// directory's entries moves its ctime strictly forward (by a nanosecond when the clock has not
/// moved, or went back), so mounts can tell their own changes from others' ([`DirChange`]).
fn dir_change<S: MetaStore>(
    fs: &Fs<S>,
    t: &mut dyn WriteTxn,
    dir: Ino,
    was: Option<Timestamp>,
) -> Result<DirChange, RpcError> {
    let mut attr = fs.getattr_in(t, dir)?;
    let was = was.unwrap_or_default();
    if attr.ctime <= was {
        let set = SetAttr {
            ctime: Some(was.next()),
            ..SetAttr::default()
        };
        attr = fs.setattr_in(t, dir, &set)?;
    }
    Ok(DirChange { attr, was })
}

/// The answer to a new entry: its attributes and its directory's, which changed with it (the
/// kernel asks for them next, to check permissions; the client answers from this).
fn entry<S: MetaStore>(
    fs: &Fs<S>,
    t: &mut dyn WriteTxn,
    attr: Attr,
    dir: Ino,
    was: Option<Timestamp>,
) -> Result<Reply, RpcError> {
    Ok(Reply::Entry {
        attr,
        dir: dir_change(fs, t, dir, was)?,
    })
}

/// The answer to a removal or rename: the directories it changed, each once.
fn dirs<S: MetaStore>(
    fs: &Fs<S>,
    t: &mut dyn WriteTxn,
    changed: &[(Ino, Option<Timestamp>)],
) -> Result<Reply, RpcError> {
    let mut out: Vec<DirChange> = Vec::with_capacity(changed.len());
    for &(ino, was) in changed {
        if out.iter().all(|d| d.attr.ino != ino) {
            out.push(dir_change(fs, t, ino, was)?);
        }
    }
    Ok(Reply::Dirs(out))
}

/// Apply a mutation for `session` within the transaction `t`.
pub fn apply_in<S: MetaStore>(
    fs: &Fs<S>,
    t: &mut dyn WriteTxn,
    session: u64,
    req: &Request,
) -> Response {
    Ok(match req {
        Request::SetAttr {
            ino,
            set,
            caller: _,
        } => Reply::Attr(fs.setattr_in(t, *ino, set)?),
        Request::Mknod {
            parent,
            name,
            kind,
            perm,
            rdev,
            caller,
            open,
        } => {
            let was = ctime_of(fs, t, *parent);
            let attr = fs.mknod_in(
                t, *parent, name, *kind, *perm, *rdev, caller, session, *open,
            )?;
            entry(fs, t, attr, *parent, was)?
        }
        Request::Mkdir {
            parent,
            name,
            perm,
            caller,
        } => {
            let was = ctime_of(fs, t, *parent);
            let attr = fs.mkdir_in(t, *parent, name, *perm, caller)?;
            entry(fs, t, attr, *parent, was)?
        }
        Request::Unlink {
            parent,
            name,
            caller: _,
        } => {
            let was = ctime_of(fs, t, *parent);
            fs.unlink_in(t, *parent, name)?;
            dirs(fs, t, &[(*parent, was)])?
        }
        Request::Rmdir {
            parent,
            name,
            caller: _,
        } => {
            let was = ctime_of(fs, t, *parent);
            fs.rmdir_in(t, *parent, name)?;
            dirs(fs, t, &[(*parent, was)])?
        }
        Request::Rename {
            parent,
            name,
            new_parent,
            new_name,
            flags,
            caller: _,
        } => {
            let was = ctime_of(fs, t, *parent);
            let new_was = ctime_of(fs, t, *new_parent);
            fs.rename_in(t, *parent, name, *new_parent, new_name, *flags)?;
            dirs(fs, t, &[(*parent, was), (*new_parent, new_was)])?
        }
        Request::Link {
            ino,
            new_parent,
            new_name,
            caller: _,
        } => {
            let was = ctime_of(fs, t, *new_parent);
            let attr = fs.link_in(t, *ino, *new_parent, new_name)?;
            entry(fs, t, attr, *new_parent, was)?
        }
        Request::Symlink {
            parent,
            name,
            target,
            caller,
        } => {
            let was = ctime_of(fs, t, *parent);
            let attr = fs.symlink_in(t, *parent, name, target, caller)?;
            entry(fs, t, attr, *parent, was)?
        }
        Request::SetXattr {
            ino,
            name,
            value,
            flags,
        } => {
            fs.setxattr_in(t, *ino, name, value, *flags)?;
            Reply::Empty
        }
        Request::RemoveXattr { ino, name } => {
            fs.removexattr_in(t, *ino, name)?;
            Reply::Empty
        }
        Request::Open { ino } => Reply::Attr(fs.open_in(t, *ino, session)?),
        Request::Release { inos } => {
            for ino in inos {
                fs.release_in(t, *ino, session)?;
            }
            Reply::Empty
        }
        Request::CommitWrite {
            ino,
            blocks,
            size,
            mtime,
        } => Reply::Attr(fs.commit_write_in(t, *ino, blocks, *size, *mtime)?),
        Request::SetLock { ino, lock, wait } => {
            fs.set_lock_in(t, *ino, session, lock, *wait)?;
            Reply::Empty
        }
        other => {
            return Err(RpcError::new(
                ErrorCode::Internal,
                format!("{} is not a mutation", other.op_name()),
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::ReplySink;
    use std::io::Read;
    use std::sync::Arc;
    use std::time::Duration;

    /// Lanes get keepalive with their timings, so a vanished mount's lanes end by themselves.
    #[test]
    fn lanes_have_tcp_keepalive() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (sock, _) = listener.accept().unwrap();
        super::keep_alive(&sock).unwrap();
        let s = socket2::SockRef::from(&sock);
        assert!(s.keepalive().unwrap());
        assert_eq!(s.tcp_keepalive_time().unwrap(), Duration::from_secs(60));
        assert_eq!(s.tcp_keepalive_interval().unwrap(), Duration::from_secs(10));
        assert_eq!(s.tcp_keepalive_retries().unwrap(), 3);
    }

    /// Frames sent from several threads at once, while the peer does not read (so the socket
    /// fills and frames queue for the writer task), all arrive whole, and each thread's in the
    /// order it sent them.
    #[test]
    fn frames_from_many_threads_arrive_whole_and_in_order_when_the_socket_fills() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut peer =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server_side, _) = listener.accept().expect("accept");
        server_side.set_nonblocking(true).expect("nonblocking");
        let sink = rt.block_on(async {
            let sock = tokio::net::TcpStream::from_std(server_side).expect("tokio socket");
            let (_rd, wr) = sock.into_split();
            let sink = ReplySink::new(wr);
            tokio::spawn(sink.clone().drain());
            sink
        });
        const THREADS: u32 = 4;
        const FRAMES: u32 = 500;
        let senders: Vec<_> = (0..THREADS)
            .map(|t| {
                let sink = Arc::clone(&sink);
                std::thread::spawn(move || {
                    for seq in 0..FRAMES {
                        // 12-byte header (length, thread, seq) and up to ~40 KiB of filler.
                        let filler = ((seq * 7919 + t * 104_729) % 40_000) as usize;
                        let mut f = Vec::with_capacity(12 + filler);
                        f.extend_from_slice(&((12 + filler) as u32).to_le_bytes());
                        f.extend_from_slice(&t.to_le_bytes());
                        f.extend_from_slice(&seq.to_le_bytes());
                        f.resize(12 + filler, (seq % 251) as u8);
                        sink.send(f);
                    }
                })
            })
            .collect();
        // Let the socket buffers fill before reading anything.
        std::thread::sleep(Duration::from_millis(300));
        peer.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let mut next = [0u32; THREADS as usize];
        let mut got = 0;
        while got < THREADS * FRAMES {
            let mut head = [0u8; 12];
            peer.read_exact(&mut head).expect("frame header");
            let len = u32::from_le_bytes(head[0..4].try_into().expect("4 bytes")) as usize;
            let t = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes"));
            let seq = u32::from_le_bytes(head[8..12].try_into().expect("4 bytes"));
            let mut body = vec![0u8; len - 12];
            peer.read_exact(&mut body).expect("frame body");
            assert!(t < THREADS, "garbled frame header: thread {t}");
            assert_eq!(seq, next[t as usize], "thread {t}'s frames out of order");
            assert!(
                body.iter().all(|&b| b == (seq % 251) as u8),
                "frame {seq} of thread {t} has foreign bytes"
            );
            next[t as usize] += 1;
            got += 1;
        }
        for s in senders {
            s.join().expect("sender thread");
        }
        // After close, sends are dropped quietly and nothing more reaches the peer.
        sink.close();
        sink.send(vec![1, 2, 3]);
        peer.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let mut rest = [0u8; 1];
        assert!(
            !matches!(peer.read(&mut rest), Ok(1)),
            "a frame sent after close reached the peer"
        );
        drop(rt);
    }
}
