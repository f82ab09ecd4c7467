//! The metadata server: a TCP listener speaking the framed protocol of `cairn_proto::frame`.
//!
//! Steps of a connection:
//! 1. The client sends `Hello` with its protocol version, volume and, after a reconnect, the
//!    session it had. The server opens a new session or resumes the old one.
//! 2. Every later frame is one request; each is executed on the blocking pool (redb calls block)
//!    and its response written back with the same request id, in completion order.
//! 3. A malformed frame closes the connection (the client reconnects and resends); it never takes
//!    the server down.
//!
//! Durability: with `sync`, each transaction is fsync'd before its reply is sent. Without, a
//! background task makes the commits durable every `flush_interval`; a crash can lose commits
//! made in the last interval, which `cairn meta serve --help` and docs/operations.md state.

use crate::fs::Fs;
use crate::store::{MetaStore, RedbStore};
use anyhow::{anyhow, bail, Context};
use cairn_proto::frame;
use cairn_proto::*;
use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
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
}

/// An exclusive lock on a data folder, held for the server's life.
#[derive(Debug)]
pub struct FolderLock {
    _file: File,
}

impl FolderLock {
    /// Take the lock on `dir`, creating the folder if needed.
    pub fn acquire(dir: &Path) -> anyhow::Result<FolderLock> {
        std::fs::create_dir_all(dir).with_context(|| format!("create data folder {}", dir.display()))?;
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

/// A running metadata server.
pub struct MetaServer {
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    fs: Arc<Fs<RedbStore>>,
    _lock: FolderLock,
}

impl MetaServer {
    /// Lock the folder, open the database and start listening.
    pub async fn start(cfg: ServeConfig) -> anyhow::Result<MetaServer> {
        let lock = FolderLock::acquire(&cfg.data_dir)?;
        let db_path = cfg.data_dir.join("meta.redb");
        let (store_path, sync) = (db_path.clone(), cfg.sync);
        let store = tokio::task::spawn_blocking(move || RedbStore::open(&store_path, sync))
            .await?
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("open metadata database {}", db_path.display()))?;
        let (fs, info) = Fs::load(store, cfg.volume.clone()).map_err(|e| anyhow!("{}", e.message))?;
        let fs = Arc::new(fs);
        let listener = TcpListener::bind(cfg.bind_addr).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::AddrInUse => anyhow!(
                "address {} is already in use: another process listens there; stop it or choose another --bind-addr",
                cfg.bind_addr
            ),
            _ => anyhow!("cannot listen on {}: {e}; check --bind-addr", cfg.bind_addr),
        })?;
        let addr = listener.local_addr()?;
        info!(%addr, volume = %info.name, block_size = info.block_size, compression = %info.compression, sync = cfg.sync, "metadata server listening");
        let (shutdown, rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, fs.clone(), info, rx.clone()));
        if !cfg.sync {
            tokio::spawn(flush_loop(fs.clone(), cfg.flush_interval, rx));
        }
        Ok(MetaServer { addr, shutdown, task, fs, _lock: lock })
    }

    /// The address it listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop accepting, make every commit durable, and return.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
        let fs = self.fs.clone();
        tokio::task::spawn_blocking(move || fs.store().flush()).await?.map_err(|e| anyhow!("{e}"))?;
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

async fn accept_loop(listener: TcpListener, fs: Arc<Fs<RedbStore>>, info: VolumeInfo, mut stop: watch::Receiver<bool>) {
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
        let (fs, info, stop) = (fs.clone(), info.clone(), stop.clone());
        tokio::spawn(async move {
            match connection(sock, fs, info, stop).await {
                Ok(()) => debug!(%peer, "connection closed"),
                Err(e) => info!(%peer, "connection dropped: {e:#}"),
            }
        });
    }
}

async fn connection(sock: TcpStream, fs: Arc<Fs<RedbStore>>, info: VolumeInfo, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    let (mut rd, wr) = sock.into_split();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(1024);
    let writer = tokio::spawn(async move {
        let mut wr = BufWriter::new(wr);
        while let Some(buf) = rx.recv().await {
            wr.write_all(&buf).await?;
            // Batch the frames that are ready into one write.
            while let Ok(more) = rx.try_recv() {
                wr.write_all(&more).await?;
            }
            wr.flush().await?;
        }
        Ok::<_, std::io::Error>(())
    });
    let mut session: Option<u64> = None;
    loop {
        let frame = tokio::select! {
            f = frame::read_frame(&mut rd) => f?,
            _ = stop.changed() => break,
        };
        let Some((id, body)) = frame else { break };
        let env: Envelope = frame::decode(&body)?;
        let op = env.request.op_name();
        if let Request::Hello { protocol, volume, session: resume, client } = env.request {
            let fs = fs.clone();
            let info = info.clone();
            let resp = tokio::task::spawn_blocking(move || hello(&fs, &info, protocol, &volume, resume, &client)).await?;
            if let Ok(Reply::Hello { session: s, .. }) = &resp {
                session = Some(*s);
            }
            tx.send(frame::encode(id, &resp)?).await?;
            continue;
        }
        let Some(sess) = session else {
            let resp: Response = Err(RpcError::new(ErrorCode::Internal, "the first request must be Hello"));
            tx.send(frame::encode(id, &resp)?).await?;
            continue;
        };
        let (fs, tx) = (fs.clone(), tx.clone());
        tokio::spawn(async move {
            let resp = match tokio::task::spawn_blocking(move || dispatch(&fs, sess, env.request)).await {
                Ok(r) => r,
                Err(e) => Err(RpcError::new(ErrorCode::Internal, format!("{op} failed: {e}"))),
            };
            if let Err(e) = &resp {
                if matches!(e.code, ErrorCode::Io | ErrorCode::Internal) {
                    warn!(op, session = sess, "request failed: {}", e.message);
                }
            }
            match frame::encode(id, &resp) {
                Ok(buf) => {
                    let _ = tx.send(buf).await;
                }
                Err(e) => warn!(op, "cannot encode reply: {e}"),
            }
        });
    }
    drop(tx);
    let _ = writer.await;
    Ok(())
}

fn hello(fs: &Fs<RedbStore>, info: &VolumeInfo, protocol: u32, volume: &str, resume: Option<u64>, client: &str) -> Response {
    if protocol != PROTOCOL_VERSION {
        return Err(RpcError::new(
            ErrorCode::Unsupported,
            format!("client speaks protocol {protocol}, this server speaks {PROTOCOL_VERSION}: use matching cairn versions"),
        ));
    }
    if volume != info.name {
        return Err(RpcError::new(
            ErrorCode::NotFound,
            format!("this metadata server serves volume `{}`, not `{volume}`: check the volume name", info.name),
        ));
    }
    let session = match resume {
        Some(s) if fs.session_exists(s)? => s,
        _ => fs.new_session(client)?,
    };
    info!(session, client, resumed = resume == Some(session), "client session");
    Ok(Reply::Hello { session, volume: info.clone() })
}

/// Execute one request for `session`.
pub fn dispatch<S: MetaStore>(fs: &Fs<S>, session: u64, req: Request) -> Response {
    Ok(match req {
        Request::Hello { .. } => return Err(RpcError::new(ErrorCode::Invalid, "Hello sent twice")),
        Request::Lookup { parent, name } => Reply::Attr(fs.lookup(parent, &name)?),
        Request::GetAttr { ino } => Reply::Attr(fs.getattr(ino)?),
        Request::SetAttr { ino, set, caller: _ } => Reply::Attr(fs.setattr(ino, &set)?),
        Request::Mknod { parent, name, kind, perm, rdev, caller, open } => {
            Reply::Attr(fs.mknod(parent, &name, kind, perm, rdev, &caller, session, open)?)
        }
        Request::Mkdir { parent, name, perm, caller } => Reply::Attr(fs.mkdir(parent, &name, perm, &caller)?),
        Request::Unlink { parent, name, caller: _ } => {
            fs.unlink(parent, &name)?;
            Reply::Empty
        }
        Request::Rmdir { parent, name, caller: _ } => {
            fs.rmdir(parent, &name)?;
            Reply::Empty
        }
        Request::Rename { parent, name, new_parent, new_name, flags, caller: _ } => {
            fs.rename(parent, &name, new_parent, &new_name, flags)?;
            Reply::Empty
        }
        Request::Link { ino, new_parent, new_name, caller: _ } => Reply::Attr(fs.link(ino, new_parent, &new_name)?),
        Request::Symlink { parent, name, target, caller } => Reply::Attr(fs.symlink(parent, &name, &target, &caller)?),
        Request::ReadLink { ino } => Reply::Data(fs.readlink(ino)?),
        Request::ReadDir { ino, cookie, limit, plus } => {
            let (entries, eof) = fs.readdir(ino, cookie, limit, plus)?;
            Reply::Dir { entries, eof }
        }
        Request::StatFs => Reply::StatFs(fs.statfs()?),
        Request::SetXattr { ino, name, value, flags } => {
            fs.setxattr(ino, &name, &value, flags)?;
            Reply::Empty
        }
        Request::GetXattr { ino, name } => Reply::Data(fs.getxattr(ino, &name)?),
        Request::ListXattr { ino } => Reply::Names(fs.listxattr(ino)?),
        Request::RemoveXattr { ino, name } => {
            fs.removexattr(ino, &name)?;
            Reply::Empty
        }
        Request::Open { ino } => Reply::Attr(fs.open(ino, session)?),
        Request::Release { ino } => {
            fs.release(ino, session)?;
            Reply::Empty
        }
        Request::GetBlocks { ino, first, count } => {
            let (blocks, size) = fs.get_blocks(ino, first, count)?;
            Reply::Blocks { blocks, size }
        }
        Request::CommitWrite { ino, blocks, size, mtime } => Reply::Attr(fs.commit_write(ino, &blocks, size, mtime)?),
    })
}
