//! Where a synced metadata commit's time goes, on this machine's disk: the redb transaction, the
//! redo log append and its `fdatasync`, and a whole create and unlink through [`Fs`]. For
//! diagnosis of the metadata benchmark (docs/benchmarks.md), not a test.
//!
//! `cargo run --release -p cairn-meta --example commit_latency -- [DIR] [N]`

use cairn_meta::fs::Fs;
use cairn_meta::store::{MetaStore, RedbStore};
use cairn_proto::*;
use std::time::{Duration, Instant};

fn pct(mut v: Vec<Duration>, name: &str) {
    v.sort();
    let p = |q: f64| v[((v.len() as f64 - 1.0) * q) as usize].as_micros();
    println!(
        "{name:<28} n={} p50={}us p90={}us p99={}us",
        v.len(),
        p(0.5),
        p(0.9),
        p(0.99)
    );
}

fn main() {
    let mut args = std::env::args().skip(1);
    let base = args.next().unwrap_or_else(|| "/tmp".into());
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(2000);
    let dir = tempfile::tempdir_in(base).expect("temp dir");
    let caller = Caller {
        uid: 0,
        gid: 0,
        pid: 1,
        umask: 0,
    };
    let info = VolumeInfo {
        name: "probe".into(),
        block_size: 4 << 20,
        compression: "none".into(),
        encrypted: false,
    };

    // A bare fdatasync of a small overwrite.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(dir.path().join("probe"))
            .unwrap();
        f.write_all_at(&vec![0u8; 1 << 20], 0).unwrap();
        f.sync_all().unwrap();
        let mut t = Vec::new();
        for i in 0..n {
            let s = Instant::now();
            f.write_all_at(&[1u8; 200], (i as u64 * 200) % (1 << 20))
                .unwrap();
            f.sync_data().unwrap();
            t.push(s.elapsed());
        }
        pct(t, "write+fdatasync 200B");
    }

    for sync in [false, true] {
        let sub = dir.path().join(format!("db-{sync}"));
        std::fs::create_dir(&sub).unwrap();
        let store =
            RedbStore::open_logged(&sub.join("meta.redb"), &sub.join("meta.redo"), sync).unwrap();
        let (fs, _) = Fs::load(store, info.clone()).unwrap();
        let session = fs.new_session("probe").unwrap();
        let (mut c, mut u, mut l) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..n {
            let name = format!("f{i}");
            let s = Instant::now();
            fs.store()
                .write(|t| {
                    fs.mknod_in(
                        t,
                        ROOT_INO,
                        name.as_bytes(),
                        FileKind::File,
                        0o644,
                        0,
                        &caller,
                        session,
                        true,
                    )
                })
                .unwrap();
            c.push(s.elapsed());
            let s = Instant::now();
            let _ = fs.lookup(ROOT_INO, format!("g{i}").as_bytes());
            l.push(s.elapsed());
        }
        for i in 0..n {
            let name = format!("f{i}");
            let s = Instant::now();
            fs.store()
                .write(|t| fs.unlink_in(t, ROOT_INO, name.as_bytes()))
                .unwrap();
            u.push(s.elapsed());
        }
        pct(c, &format!("create (sync={sync})"));
        pct(l, &format!("negative lookup (sync={sync})"));
        pct(u, &format!("unlink (sync={sync})"));
    }
}
