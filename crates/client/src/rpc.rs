//! The metadata RPC client: one multiplexed connection, reconnect with backoff, session resume.
//!
//! Every call gets a request id; a reader task matches replies to waiting callers. When the
//! connection breaks, every waiting call fails with a transport error and is sent again on the
//! next connection, which resumes the same session (`Hello` with the old session id). Calls wait
//! and retry for up to `retry_for` before giving up with `Unavailable`, so a metadata server
//! restart makes operations pause, not fail.
//!
//! Mutations carry (session, sequence number). The server that stores each outcome with its
//! change makes a resent mutation apply once; until then a resent mutation may report the
//! error its first application causes (e.g. `Exists` for a create that did land).
//!
//! Thread lanes. A call made inside [`with_thread_lane`] (the FUSE adapter runs a request's
//! first poll there, on the FUSE thread itself) goes out on a blocking connection of that
//! thread's own, in the same session, and the thread waits in `read(2)` for its answer: the
//! server's reply wakes the very thread that answers the kernel. The multiplexed connection
//! costs three thread wake-ups more per call (the spawned task, the reader task, the task again),
//! which on a virtual machine is most of a metadata round trip: measured on loopback, a negative
//! LOOKUP took 164 us through it. A lane is only a shortcut, with these rules:
//! 1. A request that was not wholly written, or whose answer had begun to arrive (so the server
//!    has applied it and stored its outcome) when the lane broke, goes again on the multiplexed
//!    path with the same sequence number: the server answers it once.
//! 2. A request written whole but not answered within `LANE_WAIT` is never sent again while the
//!    lane lives: its answer is awaited on the same connection, off the FUSE thread (the rest of
//!    the request runs as a task). Sending it on another connection then could let the first copy,
//!    still on its way, run after its outcome was forgotten, and apply it twice.
//! 3. A lane that broke, timed out or was refused stops lanes of this client for a backoff
//!    (1 s, doubling to 30 s, reset by a lane call that works), as does a lost multiplexed
//!    connection or a session the server no longer knows: a server outage holds a FUSE thread
//!    for at most one short connect or `LANE_WAIT`, not once per request.
//! 4. Lanes connect to the address the multiplexed connection reached (no name resolution on a
//!    FUSE thread) and attach to its session; they never open one.

use cairn_proto::frame;
use cairn_proto::*;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap};
use std::io::{BufReader, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Mutex};
use tracing::{debug, info, warn};

type Pending = Arc<StdMutex<HashMap<u64, oneshot::Sender<Response>>>>;

struct Conn {
    /// The socket's write half: callers write their frames directly (no hop through a task).
    wr: Mutex<tokio::net::tcp::OwnedWriteHalf>,
    pending: Pending,
    generation: u64,
    /// Set by the reader task when the connection ends, before it fails the waiters.
    dead: Arc<AtomicBool>,
}

/// Settings of the metadata client.
#[derive(Clone, Debug)]
pub struct RpcConfig {
    /// `host:port` of the metadata server.
    pub addr: String,
    /// Volume to open.
    pub volume: String,
    /// Host and mount point, shown in the server's session list.
    pub client_name: String,
    /// How long calls wait for an unreachable server before failing.
    pub retry_for: Duration,
    /// How long one connection attempt may take.
    pub connect_timeout: Duration,
}

/// A connection to the metadata server that survives the server's restarts.
pub struct MetaClient {
    cfg: RpcConfig,
    conn: Mutex<Option<Arc<Conn>>>,
    session: AtomicU64,
    seq: AtomicU64,
    next_id: AtomicU64,
    generation: AtomicU64,
    volume: StdMutex<Option<VolumeInfo>>,
    lost: AtomicBool,
    /// The session was ended by [`MetaClient::end_session`].
    ended: AtomicBool,
    /// Mutations sent and not yet answered: the lowest bounds what the server must remember.
    inflight: StdMutex<BTreeSet<u64>>,
    heartbeat_ms: AtomicU64,
    /// The server that last answered a Hello syncs every change before acknowledging it.
    synced: AtomicBool,
    /// Tells this client's thread lanes from another client's (tests run several in a process).
    id: u64,
    /// The server's address as the multiplexed connection reached it: where lanes connect.
    peer: StdMutex<Option<std::net::SocketAddr>>,
    /// Lanes are not used before this time, and the backoff that set it.
    lanes_off: StdMutex<(Option<Instant>, Duration)>,
    /// The server no longer knows the session: no lanes until a new one is opened.
    stale: AtomicBool,
}

/// How long a FUSE thread waits for a lane's answer before the rest of the request goes on as a
/// task (still waiting on the same connection; see the module doc).
const LANE_WAIT: Duration = Duration::from_secs(1);

/// How long a lane may take to connect: the server answered the multiplexed connection, so a
/// slow connect means trouble, and the multiplexed path is there.
const LANE_CONNECT: Duration = Duration::from_millis(200);

/// First and longest pause of lanes after a lane failed.
const LANE_BACKOFF: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(30));

/// Source of [`MetaClient`] ids.
static NEXT_CLIENT_ID: AtomicU64 = AtomicU64::new(1);

/// What became of a call offered to a lane.
enum LaneCall {
    /// Not sent, or sent such that sending it again is safe: use the multiplexed path.
    Unsent,
    /// The server's answer (boxed: an answer is far larger than the other cases).
    Answered(Box<Response>),
    /// Sent and not answered yet: wait for the answer on the lane's connection.
    Waiting(WaitingLane),
}

/// A lane whose request is written and whose answer has not begun to arrive.
struct WaitingLane {
    sock: std::net::TcpStream,
    id: u64,
}

impl WaitingLane {
    /// The answer, or `None` if the connection broke first (then sending the request again is
    /// safe: the server reads nothing more from a broken connection, and what it read before
    /// is ahead of the resend in its queue).
    async fn answer(self) -> Option<Response> {
        self.sock.set_nonblocking(true).ok()?;
        let mut sock = tokio::net::TcpStream::from_std(self.sock).ok()?;
        match frame::read_frame(&mut sock).await {
            Ok(Some((id, body))) if id == self.id => frame::decode(&body).ok(),
            _ => None,
        }
    }
}

/// A thread's blocking connection to the metadata server (see the module doc).
struct Lane {
    client: u64,
    session: u64,
    sock: std::net::TcpStream,
    rd: BufReader<std::net::TcpStream>,
    next_id: u64,
}

thread_local! {
    /// Calls on this thread may use its lane (set by [`with_thread_lane`]).
    static LANE_ALLOWED: Cell<bool> = const { Cell::new(false) };
    /// This thread's lane.
    static LANE: RefCell<Option<Lane>> = const { RefCell::new(None) };
}

/// Run `f` with metadata calls made on this thread going over the thread's own blocking
/// connection (see the module doc). For threads that exist to wait for answers (FUSE threads);
/// never for a runtime's worker threads, which must not block.
pub fn with_thread_lane<R>(f: impl FnOnce() -> R) -> R {
    let before = LANE_ALLOWED.replace(true);
    let out = f();
    LANE_ALLOWED.set(before);
    out
}

/// Why a connection attempt or a call on a connection failed.
#[derive(Debug)]
enum Transport {
    /// Could not connect, or the connection broke: retry.
    Broken(String),
    /// The server answered the handshake with an error: do not retry.
    Refused(RpcError),
}

impl MetaClient {
    /// Connect and open a session; fails fast (no long retry) so that a mount with a wrong
    /// address reports it at once.
    pub async fn connect(cfg: RpcConfig) -> Result<Arc<MetaClient>, RpcError> {
        let client = Arc::new(MetaClient {
            cfg,
            conn: Mutex::new(None),
            session: AtomicU64::new(0),
            seq: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            generation: AtomicU64::new(0),
            volume: StdMutex::new(None),
            lost: false.into(),
            ended: false.into(),
            inflight: StdMutex::default(),
            heartbeat_ms: AtomicU64::new(0),
            synced: false.into(),
            id: NEXT_CLIENT_ID.fetch_add(1, Ordering::Relaxed),
            peer: StdMutex::new(None),
            lanes_off: StdMutex::new((None, LANE_BACKOFF.0)),
            stale: false.into(),
        });
        let mut last = String::new();
        for attempt in 0..3 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            match client.get_conn().await {
                Ok(_) => {
                    tokio::spawn(heartbeat(Arc::downgrade(&client)));
                    return Ok(client);
                }
                Err(Transport::Refused(e)) => return Err(e),
                Err(Transport::Broken(e)) => last = e,
            }
        }
        Err(RpcError::new(
            ErrorCode::Unavailable,
            format!(
                "cannot reach the metadata server at {}: {last}; check --meta and that `cairn meta serve` is running there",
                client.cfg.addr
            ),
        ))
    }

    /// The volume's settings, as the server sent them.
    pub fn volume(&self) -> VolumeInfo {
        self.volume
            .lock()
            .expect("volume lock")
            .clone()
            .expect("connected before use")
    }

    /// This client's session id.
    pub fn session(&self) -> u64 {
        self.session.load(Ordering::Relaxed)
    }

    async fn get_conn(&self) -> Result<Arc<Conn>, Transport> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref() {
            if !c.dead.load(Ordering::Acquire) {
                return Ok(c.clone());
            }
        }
        *guard = None;
        let conn = self.open_conn().await?;
        *guard = Some(conn.clone());
        if self.lost.swap(false, Ordering::Relaxed) {
            info!(addr = %self.cfg.addr, session = self.session(), "metadata server connection is back");
        }
        Ok(conn)
    }

    async fn open_conn(&self) -> Result<Arc<Conn>, Transport> {
        let sock =
            tokio::time::timeout(self.cfg.connect_timeout, TcpStream::connect(&self.cfg.addr))
                .await
                .map_err(|_| Transport::Broken("connection timed out".into()))?
                .map_err(|e| Transport::Broken(e.to_string()))?;
        let _ = sock.set_nodelay(true);
        let peer = sock.peer_addr().ok();
        let (mut rd, mut wr) = sock.into_split();
        let resume = match self.session.load(Ordering::Relaxed) {
            0 => None,
            s => Some(s),
        };
        let buf = self
            .hello_frame(resume, false)
            .map_err(|e| Transport::Broken(e.to_string()))?;
        wr.write_all(&buf)
            .await
            .map_err(|e| Transport::Broken(e.to_string()))?;
        let reply = tokio::time::timeout(self.cfg.connect_timeout, frame::read_frame(&mut rd))
            .await
            .map_err(|_| Transport::Broken("no answer to the handshake".into()))?
            .map_err(|e| Transport::Broken(e.to_string()))?
            .ok_or_else(|| Transport::Broken("server closed the connection".into()))?;
        let resp: Response =
            frame::decode(&reply.1).map_err(|e| Transport::Broken(e.to_string()))?;
        match resp {
            Ok(Reply::Hello {
                session,
                volume,
                heartbeat_ms,
                synced,
            }) => {
                if resume.is_some_and(|old| old != session) {
                    warn!(old = resume, new = session, "the metadata server had ended this mount's session: its locks were released");
                }
                self.session.store(session, Ordering::Relaxed);
                self.heartbeat_ms.store(heartbeat_ms, Ordering::Relaxed);
                self.synced.store(synced, Ordering::Release);
                *self.peer.lock().expect("peer lock") = peer;
                self.stale.store(false, Ordering::Release);
                *self.volume.lock().expect("volume lock") = Some(volume);
            }
            Ok(other) => {
                return Err(Transport::Broken(format!(
                    "unexpected handshake reply {other:?}"
                )))
            }
            Err(e) => return Err(Transport::Refused(e)),
        }
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let pending: Pending = Arc::default();
        let mut rd = tokio::io::BufReader::with_capacity(64 << 10, rd);
        let pend = pending.clone();
        let dead = Arc::new(AtomicBool::new(false));
        let dead_flag = dead.clone();
        tokio::spawn(async move {
            while let Ok(Some((id, body))) = frame::read_frame(&mut rd).await {
                let resp: Response = match frame::decode(&body) {
                    Ok(r) => r,
                    Err(e) => {
                        warn!("malformed reply from the metadata server: {e}");
                        break;
                    }
                };
                if let Some(w) = pend.lock().expect("pending lock").remove(&id) {
                    let _ = w.send(resp);
                }
            }
            // Wake every waiter: its call is resent on a new connection.
            dead_flag.store(true, Ordering::Release);
            pend.lock().expect("pending lock").clear();
        });
        Ok(Arc::new(Conn {
            wr: Mutex::new(wr),
            pending,
            generation,
            dead,
        }))
    }

    /// The encoded Hello that opens a connection: resuming `session` if given; `attach` for a
    /// thread lane.
    fn hello_frame(
        &self,
        session: Option<u64>,
        attach: bool,
    ) -> Result<Vec<u8>, frame::FrameError> {
        let hello = Envelope {
            session: 0,
            seq: 0,
            acked: 0,
            request: Request::Hello {
                protocol: PROTOCOL_VERSION,
                volume: self.cfg.volume.clone(),
                session,
                client: self.cfg.client_name.clone(),
                attach,
            },
        };
        frame::encode(0, &hello)
    }

    async fn drop_conn(&self, generation: u64) {
        let mut guard = self.conn.lock().await;
        if guard.as_ref().is_some_and(|c| c.generation == generation) {
            *guard = None;
        }
    }

    /// Send a request and wait for its answer, across reconnects.
    pub async fn call(&self, request: Request) -> Result<Reply, RpcError> {
        let seq = if request.is_mutation() {
            let mut inflight = self.inflight.lock().expect("inflight lock");
            let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
            inflight.insert(seq);
            seq
        } else {
            0
        };
        let result = match self.lane_call(seq, &request) {
            LaneCall::Answered(r) => *r,
            LaneCall::Unsent => self.call_seq(seq, request).await,
            LaneCall::Waiting(lane) => match lane.answer().await {
                Some(r) => r,
                None => self.call_seq(seq, request).await,
            },
        };
        if seq != 0 {
            self.inflight.lock().expect("inflight lock").remove(&seq);
        }
        result
    }

    /// The highest sequence number below which every mutation was answered.
    fn acked(&self) -> u64 {
        let inflight = self.inflight.lock().expect("inflight lock");
        match inflight.first() {
            Some(lowest) => lowest - 1,
            None => self.seq.load(Ordering::Relaxed),
        }
    }

    /// End this client's session on the server (the mount is going away): its locks and opens
    /// are released now rather than at expiry. Heartbeats stop.
    pub async fn end_session(&self) -> Result<(), RpcError> {
        self.ended.store(true, Ordering::Release);
        self.call(Request::EndSession).await.map(|_| ())
    }

    /// Drop the current connection (e.g. the server says the session is gone).
    pub async fn reset(&self) {
        self.stale.store(true, Ordering::Release);
        *self.conn.lock().await = None;
    }

    /// Whether the server syncs every change before acknowledging it (`--sync`), as it said in
    /// its last Hello.
    pub fn server_syncs(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Whether lanes may be tried now.
    fn lanes_on(&self) -> bool {
        let off = self.lanes_off.lock().expect("lanes lock");
        off.0.is_none_or(|until| Instant::now() >= until)
    }

    /// A lane failed: stop lanes for the backoff, and double it.
    fn lanes_failed(&self, why: &str) {
        let mut off = self.lanes_off.lock().expect("lanes lock");
        debug!(error = why, pause = ?off.1, "thread lane to the metadata server failed; using the shared connection");
        off.0 = Some(Instant::now() + off.1);
        off.1 = (off.1 * 2).min(LANE_BACKOFF.1);
    }

    /// A lane call worked: the next failure pauses lanes for the shortest backoff again.
    fn lanes_worked(&self) {
        let mut off = self.lanes_off.lock().expect("lanes lock");
        if off.1 != LANE_BACKOFF.0 {
            *off = (None, LANE_BACKOFF.0);
        }
    }

    /// Offer the call to this thread's lane (see the module doc for the rules).
    fn lane_call(&self, seq: u64, request: &Request) -> LaneCall {
        if !LANE_ALLOWED.get()
            || self.lost.load(Ordering::Relaxed)
            || self.ended.load(Ordering::Relaxed)
            || self.stale.load(Ordering::Acquire)
            || matches!(
                request,
                Request::Hello { .. }
                    | Request::Backup { .. }
                    | Request::EndSession
                    | Request::Heartbeat
            )
            || !self.lanes_on()
        {
            return LaneCall::Unsent;
        }
        let session = self.session();
        LANE.with_borrow_mut(|slot| {
            if slot
                .as_ref()
                .is_some_and(|l| l.client != self.id || l.session != session)
            {
                *slot = None;
            }
            if slot.is_none() {
                match self.open_lane(session) {
                    Ok(l) => *slot = Some(l),
                    Err(e) => {
                        self.lanes_failed(&e);
                        return LaneCall::Unsent;
                    }
                }
            }
            let l = slot.as_mut().expect("lane just opened");
            let env = Envelope {
                session,
                seq,
                acked: self.acked(),
                request: request.clone(),
            };
            match Self::exchange(l, &env) {
                Ok(Some(Err(e))) if e.code == ErrorCode::SessionEnded => {
                    // Not applied; the shared connection renews the session and sends it.
                    self.stale.store(true, Ordering::Release);
                    LaneCall::Unsent
                }
                Ok(Some(resp)) => {
                    self.lanes_worked();
                    LaneCall::Answered(Box::new(resp))
                }
                Ok(None) => {
                    let l = slot.take().expect("lane in use");
                    self.lanes_failed(&format!("no answer within {LANE_WAIT:?}"));
                    LaneCall::Waiting(WaitingLane {
                        sock: l.sock,
                        id: l.next_id,
                    })
                }
                Err(e) => {
                    // Safe to send again (rule 1 of the module doc): not written whole, broken
                    // before any answer, or the answer had begun.
                    *slot = None;
                    self.lanes_failed(&e);
                    LaneCall::Unsent
                }
            }
        })
    }

    /// Send `env` on the lane and read its answer: `Ok(None)` if the answer has not begun within
    /// [`LANE_WAIT`] (nothing of it read, so the lane can be handed over to wait); `Err` only
    /// where sending it again is safe.
    fn exchange(l: &mut Lane, env: &Envelope) -> Result<Option<Response>, String> {
        l.next_id += 1;
        let buf = frame::encode(l.next_id, env).map_err(|e| e.to_string())?;
        // Not written whole: the server drops a connection that ends inside a frame.
        (&l.sock).write_all(&buf).map_err(|e| e.to_string())?;
        // Wait for the first bytes of the answer without consuming any (BufReader only reads
        // when its buffer is empty, so an error leaves nothing read).
        match std::io::BufRead::fill_buf(&mut l.rd).map(|b| b.is_empty()) {
            Ok(true) => return Err("the server closed the connection".into()),
            Ok(false) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None)
            }
            // Broken before any answer: the server reads nothing more from it.
            Err(e) => return Err(e.to_string()),
        }
        // The answer has begun: the request was applied and its outcome is stored.
        match frame::read_frame_blocking(&mut l.rd).map_err(|e| e.to_string())? {
            Some((id, body)) if id == l.next_id => frame::decode::<Response>(&body)
                .map(Some)
                .map_err(|e| e.to_string()),
            Some((id, _)) => Err(format!("answer {id} to request {}", l.next_id)),
            None => Err("the server closed the connection".into()),
        }
    }

    /// Connect a lane and attach it to `session` (never a new session: a server that no longer
    /// knows it refuses, and the multiplexed connection's next Hello opens the new one).
    fn open_lane(&self, session: u64) -> Result<Lane, String> {
        if session == 0 {
            return Err("no session yet".into());
        }
        let addr = self
            .peer
            .lock()
            .expect("peer lock")
            .ok_or("no connection to the server yet")?;
        let sock =
            std::net::TcpStream::connect_timeout(&addr, LANE_CONNECT).map_err(|e| e.to_string())?;
        let _ = sock.set_nodelay(true);
        sock.set_read_timeout(Some(LANE_WAIT))
            .and_then(|()| sock.set_write_timeout(Some(LANE_WAIT)))
            .map_err(|e| e.to_string())?;
        let buf = self
            .hello_frame(Some(session), true)
            .map_err(|e| e.to_string())?;
        (&sock).write_all(&buf).map_err(|e| e.to_string())?;
        let mut rd =
            BufReader::with_capacity(64 << 10, sock.try_clone().map_err(|e| e.to_string())?);
        let (_, body) = frame::read_frame_blocking(&mut rd)
            .map_err(|e| e.to_string())?
            .ok_or("the server closed the connection")?;
        match frame::decode::<Response>(&body).map_err(|e| e.to_string())? {
            Ok(Reply::Hello {
                session: s, synced, ..
            }) if s == session => {
                // A lane may be the first to meet a restarted server.
                self.synced.store(synced, Ordering::Release);
                Ok(Lane {
                    client: self.id,
                    session,
                    sock,
                    rd,
                    next_id: 0,
                })
            }
            Ok(Reply::Hello { session: s, .. }) => {
                Err(format!("attached to session {s}, not {session}"))
            }
            Ok(other) => Err(format!("unexpected handshake reply {other:?}")),
            Err(e) => {
                if e.code == ErrorCode::Stale {
                    self.stale.store(true, Ordering::Release);
                }
                Err(e.to_string())
            }
        }
    }

    async fn call_seq(&self, seq: u64, request: Request) -> Result<Reply, RpcError> {
        let started = Instant::now();
        let mut backoff = Duration::from_millis(50);
        let mut renewals = 0;
        loop {
            let err = match self.get_conn().await {
                Ok(conn) => {
                    let env = Envelope {
                        session: self.session(),
                        seq,
                        acked: self.acked(),
                        request: request.clone(),
                    };
                    let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                    let buf = frame::encode(id, &env)
                        .map_err(|e| RpcError::new(ErrorCode::Internal, e.to_string()))?;
                    let (wtx, wrx) = oneshot::channel();
                    conn.pending.lock().expect("pending lock").insert(id, wtx);
                    let sent = !conn.dead.load(Ordering::Acquire)
                        && conn.wr.lock().await.write_all(&buf).await.is_ok();
                    if !sent {
                        conn.pending.lock().expect("pending lock").remove(&id);
                        self.drop_conn(conn.generation).await;
                        "connection closed".to_string()
                    } else {
                        match wrx.await {
                            // Nothing was applied: open a new session and send it there (the
                            // new connection's Hello does, and logs that the session ended).
                            Ok(Err(e)) if e.code == ErrorCode::SessionEnded && renewals < 3 => {
                                renewals += 1;
                                self.reset().await;
                                continue;
                            }
                            Ok(resp) => return resp,
                            Err(_) => {
                                self.drop_conn(conn.generation).await;
                                "connection lost".to_string()
                            }
                        }
                    }
                }
                Err(Transport::Refused(e)) => return Err(e),
                Err(Transport::Broken(e)) => e,
            };
            if !self.lost.swap(true, Ordering::Relaxed) {
                warn!(addr = %self.cfg.addr, "lost the metadata server ({err}); operations wait and retry");
            }
            if started.elapsed() > self.cfg.retry_for {
                return Err(RpcError::new(
                    ErrorCode::Unavailable,
                    format!(
                        "metadata server at {} unreachable for {:?}: {err}",
                        self.cfg.addr, self.cfg.retry_for
                    ),
                ));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}

/// Keep the session alive while the client exists and has not ended it.
async fn heartbeat(client: std::sync::Weak<MetaClient>) {
    loop {
        let every = match client.upgrade() {
            Some(c) if !c.ended.load(Ordering::Acquire) => {
                Duration::from_millis(c.heartbeat_ms.load(Ordering::Relaxed).max(100))
            }
            _ => return,
        };
        tokio::time::sleep(every).await;
        let Some(c) = client.upgrade() else { return };
        if let Err(e) = c.call(Request::Heartbeat).await {
            if e.code == ErrorCode::Stale {
                // The server ended our session: reconnect, which opens a new one.
                c.reset().await;
            }
        }
    }
}
