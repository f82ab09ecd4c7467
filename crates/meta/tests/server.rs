//! The metadata server over its wire protocol: exactly-once mutations, group commit under
//! concurrency, session expiry releasing locks, and the folder lock.

use cairn_meta::{MetaServer, ServeConfig};
use cairn_proto::frame;
use cairn_proto::*;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn config(dir: &std::path::Path, sync: bool) -> ServeConfig {
    ServeConfig {
        bind_addr: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        volume: VolumeInfo {
            name: "v".into(),
            block_size: 1 << 20,
            compression: "none".into(),
            encrypted: false,
        },
        sync,
        flush_interval: Duration::from_millis(100),
        session_timeout: Duration::from_millis(600),
        backups: None,
    }
}

/// A bare protocol client: sends envelopes exactly as given.
struct Raw {
    sock: TcpStream,
    next: u64,
    session: u64,
}

impl Raw {
    async fn connect(addr: std::net::SocketAddr, resume: Option<u64>) -> Raw {
        match Raw::hello(addr, resume, false).await {
            (raw, Ok(_)) => raw,
            (_, other) => panic!("hello failed: {other:?}"),
        }
    }

    /// Connect and say Hello; the connection and the answer, whatever it is.
    async fn hello(
        addr: std::net::SocketAddr,
        resume: Option<u64>,
        attach: bool,
    ) -> (Raw, Response) {
        let mut raw = Raw {
            sock: TcpStream::connect(addr).await.unwrap(),
            next: 1,
            session: 0,
        };
        let hello = Request::Hello {
            protocol: PROTOCOL_VERSION,
            volume: "v".into(),
            session: resume,
            client: "test".into(),
            attach,
        };
        let resp = raw.send(0, hello).await;
        if let Ok(Reply::Hello { session, .. }) = &resp {
            raw.session = *session;
        }
        (raw, resp)
    }

    async fn send(&mut self, seq: u64, request: Request) -> Response {
        self.send_acked(seq, 0, request).await
    }

    /// Send, saying that every mutation up to `acked` has had its answer.
    async fn send_acked(&mut self, seq: u64, acked: u64, request: Request) -> Response {
        let env = Envelope {
            session: self.session,
            seq,
            acked,
            request,
        };
        self.next += 1;
        self.sock
            .write_all(&frame::encode(self.next, &env).unwrap())
            .await
            .unwrap();
        let (id, body) = frame::read_frame(&mut self.sock).await.unwrap().unwrap();
        assert_eq!(id, self.next);
        frame::decode(&body).unwrap()
    }
}

fn mknod(name: &str) -> Request {
    Request::Mknod {
        parent: ROOT_INO,
        name: name.into(),
        kind: FileKind::File,
        perm: 0o644,
        rdev: 0,
        caller: Caller::default(),
        open: false,
    }
}

#[tokio::test]
async fn a_retried_mutation_is_applied_once_even_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = MetaServer::start(config(dir.path(), true)).await.unwrap();
    let addr = server.local_addr();
    let mut c = Raw::connect(addr, None).await;
    let first = c.send(1, mknod("a")).await.unwrap();
    // The reply was "lost": the same (session, seq) comes again and gets the same answer,
    // not Exists.
    assert_eq!(c.send(1, mknod("a")).await.unwrap(), first);
    // A rename retried after it landed must not fail with NotFound.
    let rename = Request::Rename {
        parent: ROOT_INO,
        name: b"a".to_vec(),
        new_parent: ROOT_INO,
        new_name: b"b".to_vec(),
        flags: 0,
        caller: Caller::default(),
    };
    let renamed = c.send(2, rename.clone()).await;
    assert!(matches!(renamed, Ok(Reply::Dirs(_))), "{renamed:?}");
    let session = c.session;
    drop(c);
    server.stop().await.unwrap();
    let server = MetaServer::start(config(dir.path(), true)).await.unwrap();
    let mut c = Raw::connect(server.local_addr(), Some(session)).await;
    assert_eq!(c.session, session, "the session survives a restart");
    // The stored answer, not NotFound: the same directory attributes as the first time.
    assert_eq!(c.send(2, rename).await, renamed);
    // A new sequence number is a new request.
    assert_eq!(
        c.send(3, mknod("b")).await.unwrap_err().code,
        ErrorCode::Exists
    );
    server.stop().await.unwrap();
}

/// A mount's thread lanes attach to its session: a mutation sent on one connection and resent
/// on another with the same sequence number is applied once, and an attach never opens a
/// session (an unknown one is refused).
#[tokio::test]
async fn attached_connections_share_the_session_and_never_open_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = MetaServer::start(config(dir.path(), true)).await.unwrap();
    let addr = server.local_addr();
    let mut main = Raw::connect(addr, None).await;
    let (mut lane, resp) = Raw::hello(addr, Some(main.session), true).await;
    assert!(
        matches!(resp, Ok(Reply::Hello { session, .. }) if session == main.session),
        "{resp:?}"
    );
    let first = lane.send(1, mknod("a")).await.unwrap();
    assert_eq!(main.send(1, mknod("a")).await.unwrap(), first);
    let (_, refused) = Raw::hello(addr, Some(main.session + 1), true).await;
    assert_eq!(refused.unwrap_err().code, ErrorCode::Stale);
    let (_, refused) = Raw::hello(addr, None, true).await;
    assert_eq!(refused.unwrap_err().code, ErrorCode::Stale);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn concurrent_mutations_share_commits_and_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let server = MetaServer::start(config(dir.path(), true)).await.unwrap();
    let addr = server.local_addr();
    let mut tasks = Vec::new();
    for t in 0..8 {
        tasks.push(tokio::spawn(async move {
            let mut c = Raw::connect(addr, None).await;
            for i in 0..50u64 {
                c.send(i + 1, mknod(&format!("t{t}-{i}"))).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut c = Raw::connect(addr, None).await;
    assert_eq!(count_root_entries(&mut c).await, 400);
    server.stop().await.unwrap();
}

async fn count_root_entries(c: &mut Raw) -> usize {
    let Ok(Reply::Dir {
        entries, eof: true, ..
    }) = c
        .send(
            0,
            Request::ReadDir {
                ino: ROOT_INO,
                cookie: 0,
                limit: 4096,
                plus: false,
            },
        )
        .await
    else {
        panic!("readdir failed")
    };
    entries.len()
}

/// Lanes are served on threads of their own that commit for themselves when nobody else is
/// committing: mutations from lanes and from shared connections at once all land once (a resend
/// gets the first answer), reads and heartbeats are answered on a lane, and a stop ends the
/// lanes still open, so that the next server on the folder opens it with everything there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lanes_and_shared_connections_commit_together_and_a_stop_ends_the_lanes() {
    let dir = tempfile::tempdir().unwrap();
    let server = MetaServer::start(config(dir.path(), true)).await.unwrap();
    let addr = server.local_addr();
    let mut main = Raw::connect(addr, None).await;
    let session = main.session;
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        tasks.push(tokio::spawn(async move {
            let mut c = if t % 2 == 0 {
                let (lane, resp) = Raw::hello(addr, Some(session), true).await;
                assert!(resp.is_ok(), "{resp:?}");
                lane
            } else {
                Raw::connect(addr, None).await
            };
            for i in 0..50u64 {
                let seq = t * 1000 + i + 1;
                let first = c.send(seq, mknod(&format!("t{t}-{i}"))).await.unwrap();
                if i % 10 == 0 {
                    assert_eq!(
                        c.send(seq, mknod(&format!("t{t}-{i}"))).await.unwrap(),
                        first
                    );
                }
            }
            let found = c
                .send(
                    0,
                    Request::Lookup {
                        parent: ROOT_INO,
                        name: format!("t{t}-0").into(),
                    },
                )
                .await;
            assert!(matches!(found, Ok(Reply::Attr(_))), "{found:?}");
            assert_eq!(c.send(0, Request::Heartbeat).await, Ok(Reply::Empty));
            c
        }));
    }
    let mut open = Vec::new();
    for t in tasks {
        open.push(t.await.unwrap());
    }
    assert_eq!(count_root_entries(&mut main).await, 400);
    // Lanes and connections still open: the stop ends them all and lets go of the folder.
    tokio::time::timeout(Duration::from_secs(5), server.stop())
        .await
        .expect("stop ends the lanes still open")
        .unwrap();
    for mut c in open {
        let mut buf = [0u8; 1];
        let read = tokio::io::AsyncReadExt::read(&mut c.sock, &mut buf);
        let n = tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .expect("the server closes the connection")
            .unwrap_or(0);
        assert_eq!(n, 0, "the connection is closed");
    }
    let server = MetaServer::start(config(dir.path(), true)).await.unwrap();
    let mut c = Raw::connect(server.local_addr(), None).await;
    assert_eq!(count_root_entries(&mut c).await, 400);
    server.stop().await.unwrap();
}

/// The server keeps the answers of a session's mutations until the session says it has them,
/// and then drops them: after 300 acknowledged mutations only the last few dozen are stored.
#[tokio::test]
async fn acknowledged_answers_are_dropped() {
    use cairn_meta::store::{MetaStore, RedbStore, StoreError, Table};
    let dir = tempfile::tempdir().unwrap();
    let server = MetaServer::start(config(dir.path(), true)).await.unwrap();
    let mut c = Raw::connect(server.local_addr(), None).await;
    for seq in 1..=300u64 {
        c.send_acked(seq, seq - 1, mknod(&format!("f{seq}")))
            .await
            .unwrap();
    }
    server.stop().await.unwrap();
    let store = RedbStore::open_logged(
        &dir.path().join(cairn_meta::server::DB_FILE),
        &dir.path().join(cairn_meta::server::REDO_FILE),
        false,
    )
    .unwrap();
    let kept = store
        .read(|t| {
            Ok::<_, StoreError>(
                t.range(Table::Outcomes, &[], &[0xff; 17], usize::MAX)?
                    .len(),
            )
        })
        .unwrap();
    assert!((1..=70).contains(&kept), "{kept} answers kept of 300");
}

#[tokio::test]
async fn an_expired_session_releases_its_locks() {
    let dir = tempfile::tempdir().unwrap();
    let server = MetaServer::start(config(dir.path(), false)).await.unwrap();
    let addr = server.local_addr();
    let mut a = Raw::connect(addr, None).await;
    let Ok(Reply::Entry { attr: f, .. }) = a.send(1, mknod("f")).await else {
        panic!()
    };
    let write = LockSpec {
        owner: 1,
        start: 0,
        end: u64::MAX,
        typ: LockType::Write,
        pid: 1,
    };
    assert_eq!(
        a.send(
            2,
            Request::SetLock {
                ino: f.ino,
                lock: write,
                wait: false,
            }
        )
        .await,
        Ok(Reply::Empty)
    );
    let mut b = Raw::connect(addr, None).await;
    let err = b
        .send(
            1,
            Request::SetLock {
                ino: f.ino,
                lock: write,
                wait: false,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::WouldBlock);
    // `a` stops heartbeating (its host died); b keeps its own session alive.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut seq = 2;
    loop {
        assert_eq!(b.send(0, Request::Heartbeat).await, Ok(Reply::Empty));
        seq += 1;
        match b
            .send(
                seq,
                Request::SetLock {
                    ino: f.ino,
                    lock: write,
                    wait: true,
                },
            )
            .await
        {
            Ok(Reply::Empty) => break,
            Err(e) if e.code == ErrorCode::WouldBlock && std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            other => panic!("lock not released after expiry: {other:?}"),
        }
    }
    // The expired session's mount comes back on its old connection: a change in that session's
    // name is refused and applies nothing (a lock taken now would never be released).
    let err = a
        .send(
            3,
            Request::SetLock {
                ino: f.ino,
                lock: LockSpec { owner: 9, ..write },
                wait: false,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::SessionEnded);
    assert_eq!(
        a.send(4, mknod("g")).await.unwrap_err().code,
        ErrorCode::SessionEnded
    );
    let lookup = Request::Lookup {
        parent: ROOT_INO,
        name: b"g".to_vec(),
    };
    assert_eq!(
        b.send(0, lookup).await.unwrap_err().code,
        ErrorCode::NotFound
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_second_server_on_the_same_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = MetaServer::start(config(dir.path(), false)).await.unwrap();
    let err = MetaServer::start(config(dir.path(), false))
        .await
        .err()
        .unwrap();
    let msg = format!("{err:#}");
    assert!(msg.contains("in use by another metadata server"), "{msg}");
    server.stop().await.unwrap();
}

/// Two owners each holding a lock the other waits for: the second wait is refused with
/// Deadlock (EDEADLK) instead of both waiting forever; a wait with no cycle is not.
#[tokio::test]
async fn a_lock_wait_that_closes_a_cycle_is_a_deadlock() {
    let dir = tempfile::tempdir().unwrap();
    let server = MetaServer::start(config(dir.path(), false)).await.unwrap();
    let addr = server.local_addr();
    let mut a = Raw::connect(addr, None).await;
    let mut b = Raw::connect(addr, None).await;
    let ino = |r: Response| match r {
        Ok(Reply::Entry { attr, .. }) => attr.ino,
        other => panic!("{other:?}"),
    };
    let f = ino(a.send(1, mknod("f")).await);
    let g = ino(a.send(2, mknod("g")).await);
    let lock = |owner| LockSpec {
        owner,
        start: 0,
        end: u64::MAX,
        typ: LockType::Write,
        pid: 1,
    };
    let set = |ino, owner, wait| Request::SetLock {
        ino,
        lock: lock(owner),
        wait,
    };
    assert_eq!(a.send(3, set(f, 7, false)).await, Ok(Reply::Empty));
    assert_eq!(b.send(1, set(g, 8, false)).await, Ok(Reply::Empty));
    // a waits for g (held by b): an ordinary wait.
    assert_eq!(
        a.send(4, set(g, 7, true)).await.unwrap_err().code,
        ErrorCode::WouldBlock
    );
    // b now waiting for f (held by a, who waits for b) would never end.
    assert_eq!(
        b.send(2, set(f, 8, true)).await.unwrap_err().code,
        ErrorCode::Deadlock
    );
    // Once a stops waiting (its poll is forgotten), b's wait is an ordinary one again. Both
    // sessions stay alive meanwhile.
    for _ in 0..12 {
        assert_eq!(a.send(0, Request::Heartbeat).await, Ok(Reply::Empty));
        assert_eq!(b.send(0, Request::Heartbeat).await, Ok(Reply::Empty));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        b.send(3, set(f, 8, true)).await.unwrap_err().code,
        ErrorCode::WouldBlock
    );
    server.stop().await.unwrap();
}
