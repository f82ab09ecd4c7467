//! A create and an unlink as a mount sends them (one blocking connection, one request at a
//! time), against a metadata server in this process: with `commit_latency`, it tells the
//! server's commit from the way to and from it. For diagnosis of the metadata benchmark
//! (docs/benchmarks.md), not a test.
//!
//! `cargo run --release -p cairn-meta --example rpc_latency -- [DIR] [N] [sync: 0|1]`

use cairn_meta::{MetaServer, ServeConfig};
use cairn_proto::frame;
use cairn_proto::*;
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn pct(mut v: Vec<Duration>, name: &str) {
    v.sort();
    let p = |q: f64| v[((v.len() as f64 - 1.0) * q) as usize].as_micros();
    println!(
        "{name:<20} n={} p50={}us p90={}us p99={}us",
        v.len(),
        p(0.5),
        p(0.9),
        p(0.99)
    );
}

struct Conn {
    sock: TcpStream,
    id: u64,
    session: u64,
    seq: u64,
}

impl Conn {
    fn call(&mut self, request: Request, mutation: bool) -> Response {
        self.id += 1;
        let seq = if mutation {
            self.seq += 1;
            self.seq
        } else {
            0
        };
        let env = Envelope {
            session: self.session,
            seq,
            acked: self.seq.saturating_sub(1),
            request,
        };
        self.sock
            .write_all(&frame::encode(self.id, &env).expect("encode"))
            .expect("send");
        let (_, body) = frame::read_frame_blocking(&mut self.sock)
            .expect("read")
            .expect("a reply");
        frame::decode(&body).expect("decode")
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let base = args.next().unwrap_or_else(|| "/tmp".into());
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(2000);
    let sync = args.next().is_none_or(|s| s != "0");
    let dir = tempfile::tempdir_in(base).expect("temp dir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let server = rt
        .block_on(MetaServer::start(ServeConfig {
            bind_addr: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().to_path_buf(),
            volume: VolumeInfo {
                name: "probe".into(),
                block_size: 4 << 20,
                compression: "none".into(),
                encrypted: false,
            },
            sync,
            flush_interval: Duration::from_millis(500),
            session_timeout: Duration::from_secs(30),
            backups: None,
        }))
        .expect("server");
    let sock = TcpStream::connect(server.local_addr()).expect("connect");
    sock.set_nodelay(true).unwrap();
    let mut c = Conn {
        sock,
        id: 0,
        session: 0,
        seq: 0,
    };
    let hello = Request::Hello {
        protocol: PROTOCOL_VERSION,
        volume: "probe".into(),
        session: None,
        client: "probe".into(),
        attach: false,
    };
    match c.call(hello, false) {
        Ok(Reply::Hello { session, .. }) => c.session = session,
        other => panic!("hello: {other:?}"),
    }
    let caller = Caller::default();
    let (mut cr, mut lk, mut un) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let s = Instant::now();
        let r = c.call(
            Request::Mknod {
                parent: ROOT_INO,
                name: format!("f{i}").into_bytes(),
                kind: FileKind::File,
                perm: 0o644,
                rdev: 0,
                caller,
                open: false,
            },
            true,
        );
        cr.push(s.elapsed());
        assert!(r.is_ok(), "{r:?}");
        let s = Instant::now();
        let _ = c.call(
            Request::Lookup {
                parent: ROOT_INO,
                name: format!("f{i}").into_bytes(),
            },
            false,
        );
        lk.push(s.elapsed());
    }
    for i in 0..n {
        let s = Instant::now();
        let r = c.call(
            Request::Unlink {
                parent: ROOT_INO,
                name: format!("f{i}").into_bytes(),
                caller,
            },
            true,
        );
        un.push(s.elapsed());
        assert!(r.is_ok(), "{r:?}");
    }
    pct(cr, &format!("create sync={sync}"));
    pct(lk, "lookup");
    pct(un, &format!("unlink sync={sync}"));
    rt.block_on(server.stop()).expect("stop");
}
