//! The mount's memory stays bounded under a large parallel workload: 8 threads write disjoint
//! 512 MiB ranges of one 4 GiB file, then 8 threads read them back (checked), and the mount
//! daemon's peak resident memory (VmHWM) stays under the 1.5 GiB target. Also random writes all
//! over a file that touch far more blocks than the write budget holds, so the writer must commit
//! as it goes, while a second file is kept open with dirty blocks it never flushes by itself.
//! And a sequential read of a file larger than the memory cache does not fill it.

mod common;

use common::*;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::time::Instant;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const THREADS: u64 = 8;
/// The target of the data path: a mount's resident memory stays under this in any workload.
const RSS_LIMIT: u64 = 1536 * MIB;

/// Field `field` (a size in kB) of /proc/PID/status, in bytes.
fn status_bytes(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"));
    kb * 1024
}

/// Peak resident memory of `pid` so far, in bytes.
fn peak_rss(pid: i32) -> u64 {
    status_bytes(pid, "VmHWM")
}

/// One pseudo-random 1 MiB chunk per (seed, chunk number), so any range can be checked alone.
fn chunk(seed: u64, n: u64) -> Vec<u8> {
    random_bytes(seed.wrapping_mul(1_000_003).wrapping_add(n), MIB as usize)
}

#[test]
fn rss_stays_bounded_writing_and_reading_4gib_with_8_threads() {
    if !require_fuse() {
        return;
    }
    // 8 GiB through FUSE in a debug build: give it more than the default watchdog. The disk
    // caches are on, as by default, but smaller, so that they do not take 8 GiB of disk.
    let c = Cluster::s3(bin())
        .timeout(std::time::Duration::from_secs(900))
        .mount_args(&["--cache-disk-size", "1GiB"])
        .start();
    let pid = c.mount().pid().expect("mount daemon pid");
    let path = c.join("big");
    let per = 4 * GIB / THREADS;
    File::create(&path).expect("create");

    let t0 = Instant::now();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let path = path.clone();
            s.spawn(move || {
                let f = OpenOptions::new().write(true).open(&path).expect("open");
                for n in 0..per / MIB {
                    let at = t * per + n * MIB;
                    f.write_all_at(&chunk(t, n), at)
                        .unwrap_or_else(|e| panic!("write at {at}: {e}"));
                }
                f.sync_all().expect("fsync");
            });
        }
    });
    let wrote = t0.elapsed();
    let after_write = peak_rss(pid);
    assert_eq!(std::fs::metadata(&path).expect("stat").len(), 4 * GIB);

    // Read back cold: a second mount has nothing cached.
    let reader = c.new_mount();
    let rpid = reader.pid().expect("reader pid");
    let rpath = reader.join("big");
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let rpath = rpath.clone();
            s.spawn(move || {
                let f = File::open(&rpath).expect("open for reading");
                let mut buf = vec![0u8; MIB as usize];
                for n in 0..per / MIB {
                    let at = t * per + n * MIB;
                    f.read_exact_at(&mut buf, at)
                        .unwrap_or_else(|e| panic!("read at {at}: {e}"));
                    assert!(buf == chunk(t, n), "data differs at offset {at}");
                }
            });
        }
    });
    let read = t0.elapsed();
    let reader_peak = peak_rss(rpid);
    println!(
        "4 GiB, 8 threads: write {:.1} s, peak RSS {} MiB; read {:.1} s, peak RSS {} MiB",
        wrote.as_secs_f64(),
        after_write / MIB,
        read.as_secs_f64(),
        reader_peak / MIB
    );
    assert!(
        after_write < RSS_LIMIT,
        "the writing mount peaked at {} MiB, over the {} MiB target",
        after_write / MIB,
        RSS_LIMIT / MIB
    );
    assert!(
        reader_peak < RSS_LIMIT,
        "the reading mount peaked at {} MiB, over the {} MiB target",
        reader_peak / MIB,
        RSS_LIMIT / MIB
    );
}

/// Resident memory of `pid` now, in bytes.
fn rss(pid: i32) -> u64 {
    status_bytes(pid, "VmRSS")
}

#[test]
fn a_sequential_read_of_a_file_larger_than_the_memory_cache_leaves_it_small() {
    if !require_fuse() {
        return;
    }
    // Blocks a sequential reader has read are in the kernel's page cache: the mount keeps the
    // ones not read yet (read-ahead, 32 MiB here), not every block it ever read. Before, the
    // reader below held the whole 256 MiB cache of blocks read once.
    let cache = 256 * MIB;
    let c = Cluster::s3(bin())
        .mount_args(&["--cache-size", "256MiB"])
        .start();
    let path = c.join("stream");
    let size = 3 * cache;
    {
        let f = File::create(&path).expect("create");
        for n in 0..size / MIB {
            f.write_all_at(&chunk(7, n), n * MIB).expect("write");
        }
        f.sync_all().expect("fsync");
    }
    let reader = c.new_mount();
    let pid = reader.pid().expect("reader pid");
    let before = rss(pid);
    let f = File::open(reader.join("stream")).expect("open for reading");
    let mut buf = vec![0u8; MIB as usize];
    let mut most = 0;
    for n in 0..size / MIB {
        f.read_exact_at(&mut buf, n * MIB)
            .unwrap_or_else(|e| panic!("read MiB {n}: {e}"));
        assert!(buf == chunk(7, n), "data differs in MiB {n}");
        if n % 16 == 15 {
            most = most.max(rss(pid));
        }
    }
    println!(
        "{} MiB read sequentially: mount resident {} MiB before, at most {} MiB during",
        size / MIB,
        before / MIB,
        most / MIB
    );
    assert!(
        most < before + cache / 2,
        "the mount grew from {} MiB to {} MiB reading a file once: blocks read stay in memory",
        before / MIB,
        most / MIB
    );
}

#[test]
fn random_writes_over_many_blocks_commit_as_they_go_and_read_back() {
    let Some(c) = s3_cluster() else { return };
    let pid = c.mount().pid().expect("mount daemon pid");
    // An idle file holding dirty blocks: only the background flusher can give its share back.
    let idle = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(c.join("idle"))
        .expect("create idle");
    for n in 0..16 {
        idle.write_all_at(&chunk(99, n), n * 4 * MIB + 17)
            .expect("write idle");
    }
    // 1.5 GiB of distinct 4 MiB blocks, each touched by a small write in a shuffled order: the
    // default 256 MiB write budget holds 64 of them.
    let blocks = 384u64;
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(c.join("sparse"))
        .expect("create sparse");
    let mut order: Vec<u64> = (0..blocks).collect();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in (1..order.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    for &b in &order {
        let data = &chunk(b, 0)[..64 << 10];
        f.write_all_at(data, b * 4 * MIB + 1000)
            .unwrap_or_else(|e| panic!("write block {b}: {e}"));
    }
    f.sync_all().expect("fsync");
    for &b in &order {
        let mut buf = vec![0u8; 64 << 10];
        f.read_exact_at(&mut buf, b * 4 * MIB + 1000).expect("read");
        assert!(buf[..] == chunk(b, 0)[..64 << 10], "block {b} differs");
    }
    let peak = peak_rss(pid);
    println!(
        "random writes over {blocks} blocks: peak RSS {} MiB",
        peak / MIB
    );
    assert!(
        peak < RSS_LIMIT,
        "peaked at {} MiB, over the {} MiB target",
        peak / MIB,
        RSS_LIMIT / MIB
    );
    // The idle file's data is intact (it was committed in the background or is still buffered).
    for n in 0..16 {
        let mut buf = vec![0u8; MIB as usize];
        idle.read_exact_at(&mut buf, n * 4 * MIB + 17)
            .expect("read idle");
        assert!(buf == chunk(99, n), "idle file differs at chunk {n}");
    }
    drop(idle);
    drop(f);
}
