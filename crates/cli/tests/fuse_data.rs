//! File contents through a real FUSE mount: sizes around the 4 MiB block boundary, random
//! writes, truncation, unlinked open files, and what a second client sees after close.
//!
//! Every test starts its own cluster (SeaweedFS or a local folder, `cairn meta serve`,
//! `cairn mount start --foreground`) and checks contents by SHA-256, before and after a remount
//! (a fresh client: nothing cached).

mod common;

use common::*;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const BLOCK: u64 = 4 * MIB;

/// (size, seed) of the files of the size tests.
fn sizes(with_large: bool) -> Vec<(u64, u64)> {
    let mut v = vec![
        (0, 1),
        (1, 2),
        (BLOCK - 1, 3),
        (BLOCK, 4),
        (BLOCK + 1, 5),
        (2 * BLOCK + 17, 6),
    ];
    if with_large {
        v.push((100 * MIB, 7));
    }
    v
}

fn write_sizes(root: &Path, sizes: &[(u64, u64)]) -> Vec<(String, u64, String)> {
    sizes
        .iter()
        .map(|&(len, seed)| {
            let name = format!("file-{len}");
            // Half the files are fsynced before close, half only closed.
            let hash = write_random_file(&root.join(&name), seed, len, seed % 2 == 0)
                .unwrap_or_else(|e| panic!("write {name}: {e}"));
            assert_eq!(hash, random_file_hash(seed, len));
            (name, len, hash)
        })
        .collect()
}

fn check_sizes(root: &Path, files: &[(String, u64, String)], when: &str) {
    for (name, len, hash) in files {
        assert_file(&root.join(name), *len, hash, when);
    }
    let mut names: Vec<String> = files.iter().map(|f| f.0.clone()).collect();
    names.sort();
    assert_eq!(list(root), names, "{when}: directory listing");
}

/// Files of 0 B, 1 B, 4 MiB - 1, 4 MiB, 4 MiB + 1, 8 MiB + 17 and 100 MiB read back byte for
/// byte, then again from a fresh client; their blocks are in the bucket.
#[test]
fn sizes_round_trip_s3() {
    let Some(mut c) = s3_cluster() else { return };
    let files = write_sizes(c.path(), &sizes(true));
    check_sizes(c.path(), &files, "after close");
    c.remount();
    check_sizes(c.path(), &files, "after remount");

    // The data went to the bucket (not to the metadata server): random data does not compress,
    // so the block objects hold at least as many bytes as the files.
    let total: u64 = files.iter().map(|f| f.1).sum();
    let objects = c.seaweed().list_objects(c.bucket());
    let stored: u64 = objects.iter().map(|o| o.size).sum();
    assert!(
        !objects.is_empty(),
        "no objects in the bucket after writing {total} bytes"
    );
    assert!(
        stored >= total,
        "the bucket holds {stored} bytes in {} objects, less than the {total} bytes written",
        objects.len()
    );
}

/// The same sizes (without the 100 MiB one) over a `file://` block store.
#[test]
fn sizes_round_trip_local_folder() {
    let Some(mut c) = local_cluster() else { return };
    let files = write_sizes(c.path(), &sizes(false));
    check_sizes(c.path(), &files, "after close");
    c.remount();
    check_sizes(c.path(), &files, "after remount");
    let blocks = c.dir().join("blocks");
    let count = walk_files(&blocks);
    assert!(count > 0, "no block files under {}", blocks.display());
}

fn walk_files(dir: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let ft = e.file_type().expect("file type");
        if ft.is_dir() {
            n += walk_files(&e.path());
        } else if ft.is_file() {
            n += 1;
        }
    }
    n
}

/// 200 writes of random sizes (up to 1 MiB) at random offsets into a 20 MiB file, some across
/// block boundaries and some past the end, match a local copy: through the open descriptor,
/// after close, and from a fresh client.
#[test]
fn random_writes_match_local_copy() {
    let Some(mut c) = s3_cluster() else { return };
    let mut rng = Rng::from_env_or_time("random_writes_match_local_copy");
    let path = c.join("big");
    let size = 20 * MIB;
    let mut model = random_bytes(rng.next_u64(), size as usize);
    std::fs::write(&path, &model).expect("write initial 20 MiB");

    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open rw");
    for i in 0..200 {
        let len = rng.range(1, MIB + 1);
        let off = if i % 5 == 0 {
            // Straddle a block boundary.
            let boundary = BLOCK * rng.range(1, 6);
            boundary - rng.range(1, len.max(2)).min(boundary)
        } else if i % 23 == 0 {
            // Start at or past the end: the file grows (with a hole when past it).
            model.len() as u64 + rng.range(0, 2 * MIB)
        } else {
            rng.range(0, size)
        };
        let data = random_bytes(rng.next_u64(), len as usize);
        write_both(&f, &mut model, off, &data, i);
        if i % 50 == 49 {
            // Read-your-writes through the same descriptor, before close.
            let (o, l) = (rng.range(0, model.len() as u64 - 1), rng.range(1, 2 * MIB));
            let l = l.min(model.len() as u64 - o) as usize;
            let mut buf = vec![0u8; l];
            f.read_exact_at(&mut buf, o).expect("read back");
            assert!(
                buf == model[o as usize..o as usize + l],
                "read of {l} at {o} after write #{i} differs"
            );
        }
    }
    f.sync_all().expect("fsync");
    drop(f);

    let want = sha256_bytes(&model);
    assert_file(&path, model.len() as u64, &want, "after close");
    check_ranges(&path, &model, &mut rng, "after close");
    c.remount();
    assert_file(&path, model.len() as u64, &want, "after remount");
    check_ranges(&path, &model, &mut rng, "after remount");
}

/// Random reads of a cold mount (each fetches only the frames that hold it, not the whole
/// block): 400 preads at random offsets, of random lengths (4 KiB, up to 128 KiB, up to 1.5 MiB),
/// of a 5-block file with compressible and random parts and a hole, match a local copy; so does
/// a whole read afterwards, which mixes cached frames with whole blocks. With a memory cache
/// smaller than the file (frames): without a disk cache (every frame from the bucket), and with
/// an empty one (frames from the bucket while whole blocks fill the disk cache in the
/// background, then frames from the cached copies); with the default memory cache (the file
/// fits: whole blocks) and the disk cache the writes filled.
#[test]
fn random_reads_of_a_cold_mount_match_local_copy() {
    if !require_fuse() {
        return;
    }
    let mut rng = Rng::from_env_or_time("random_reads_of_a_cold_mount_match_local_copy");
    for (args, empty_disk_cache) in [
        (&["--cache-size", "8MiB", "--no-disk-cache"][..], false),
        (&["--cache-size", "8MiB"][..], true),
        (&[][..], false),
    ] {
        let mut c = Cluster::s3(bin()).mount_args(args).start();
        random_reads_match(&mut c, &mut rng, empty_disk_cache);
    }
}

fn random_reads_match(c: &mut Cluster, rng: &mut Rng, empty_disk_cache: bool) {
    let path = c.join("frames");
    let size = 5 * BLOCK + 12_345;
    let mut model = random_bytes(rng.next_u64(), size as usize);
    // Compressible stretches (frames stored compressed) among random ones (stored raw).
    for i in 0..size / (256 << 10) {
        if i % 3 == 0 {
            let at = (i * (256 << 10)) as usize;
            let end = (at + (300 << 10)).min(size as usize);
            for (j, b) in model[at..end].iter_mut().enumerate() {
                *b = b"cairn frames "[j % 13];
            }
        }
    }
    // Block 2 is a hole: never written.
    model[(2 * BLOCK) as usize..(3 * BLOCK) as usize].fill(0);
    {
        let f = File::create(&path).expect("create");
        f.write_all_at(&model[..(2 * BLOCK) as usize], 0)
            .expect("write blocks 0 and 1");
        f.write_all_at(&model[(3 * BLOCK) as usize..], 3 * BLOCK)
            .expect("write blocks 3 to 5");
        f.sync_all().expect("fsync");
    }
    if empty_disk_cache {
        // The writes left copies of every block in the disk cache: start without them.
        stop_and_empty_disk_cache(c);
    }
    c.remount();
    let f = File::open(&path).expect("open");
    for i in 0..400 {
        let len = match i % 10 {
            0..=4 => 4096,
            5..=7 => rng.range(1, 128 << 10),
            _ => rng.range(1, 3 * MIB / 2),
        };
        let off = if i % 10 == 0 {
            // Straddle a block boundary.
            BLOCK * rng.range(1, 6) - rng.range(1, 4096)
        } else {
            rng.range(1, size)
        };
        let len = len.min(size - off);
        let mut buf = vec![0u8; len as usize];
        f.read_exact_at(&mut buf, off)
            .unwrap_or_else(|e| panic!("read #{i} of {len} at {off}: {e}"));
        if buf != model[off as usize..(off + len) as usize] {
            let first = buf
                .iter()
                .zip(&model[off as usize..])
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            panic!("read #{i} of {len} bytes at {off} differs from byte {first} on");
        }
    }
    drop(f);
    assert_file(
        &path,
        size,
        &sha256_bytes(&model),
        "whole read after random reads",
    );
    c.assert_no_panics();
}

/// Stop the mount and delete its disk cache folder, so that the next mount starts cold.
fn stop_and_empty_disk_cache(c: &mut Cluster) {
    let cache = c
        .mount()
        .disk_cache_dir()
        .expect("a default disk cache folder");
    c.mount_mut().stop();
    std::fs::remove_dir_all(&cache).expect("empty the disk cache");
}

/// A cold 6-block file, with a memory cache smaller than it (random reads fetch frames) and a
/// disk cache of `disk_cache`: one 4 KiB random read, then the file stays open unread. Returns
/// how many blocks the disk cache holds once they stop coming (or after `wait`).
fn blocks_cached_after_one_random_read(disk_cache: &str, wait: Duration) -> usize {
    let mut c = Cluster::s3(bin())
        .mount_args(&["--cache-size", "8MiB", "--cache-disk-size", disk_cache])
        .start();
    let path = c.join("warm");
    let model = random_bytes(7, (6 * BLOCK) as usize);
    std::fs::write(&path, &model).expect("write the file");
    stop_and_empty_disk_cache(&mut c);
    c.remount();
    let cache = c.mount().disk_cache_dir().expect("the disk cache folder");
    let f = File::open(&path).expect("open");
    let mut buf = vec![0u8; 4096];
    let off = 3 * BLOCK + 123 * 4096;
    f.read_exact_at(&mut buf, off).expect("one random read");
    assert_eq!(
        buf,
        model[off as usize..off as usize + 4096],
        "the random read"
    );
    let deadline = Instant::now() + wait;
    let mut last = (clean_copies(&cache).len(), Instant::now());
    while Instant::now() < deadline && last.0 < 6 {
        std::thread::sleep(Duration::from_millis(100));
        let n = clean_copies(&cache).len();
        if n != last.0 {
            last = (n, Instant::now());
        } else if last.0 > 0 && last.1.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    drop(f);
    assert_file(
        &path,
        6 * BLOCK,
        &sha256_bytes(&model),
        "whole read after the copy",
    );
    c.assert_no_panics();
    last.0
}

/// A file read at random that takes at most a quarter of the disk cache is copied into it whole
/// in the background while it is open (one 4 KiB read of a 24 MiB file in a 256 MiB cache: all
/// 6 blocks cached, with no more reads); a larger one only gets the blocks its reads touch (the
/// same file in a 64 MiB cache: 1 block).
#[test]
fn a_file_read_at_random_is_copied_into_the_disk_cache_whole_if_small_beside_it() {
    if !require_fuse() {
        return;
    }
    let small = blocks_cached_after_one_random_read("256MiB", Duration::from_secs(60));
    assert_eq!(small, 6, "blocks of a 24 MiB file in a 256 MiB disk cache");
    let large = blocks_cached_after_one_random_read("64MiB", Duration::from_secs(5));
    assert_eq!(large, 1, "blocks of a 24 MiB file in a 64 MiB disk cache");
}

/// Write #`i`: `data` at `off` to the file and to its model (which grows as the file does).
fn write_both(f: &File, model: &mut Vec<u8>, off: u64, data: &[u8], i: usize) {
    let len = data.len();
    f.write_all_at(data, off)
        .unwrap_or_else(|e| panic!("write #{i} of {len} at {off}: {e}"));
    let end = off as usize + len;
    if end > model.len() {
        model.resize(end, 0);
    }
    model[off as usize..end].copy_from_slice(data);
}

/// Reads of random ranges (within a block, across blocks, at the end) match the model.
fn check_ranges(path: &Path, model: &[u8], rng: &mut Rng, when: &str) {
    let f = File::open(path).expect("open");
    let n = model.len() as u64;
    let mut ranges = vec![
        (0, 1),
        (BLOCK - 10, 20),
        (n - 1, 1),
        (n - 100, 100),
        (BLOCK * 2 - 1, BLOCK + 2),
    ];
    for _ in 0..30 {
        let o = rng.range(0, n);
        ranges.push((o, rng.range(1, 3 * MIB).min(n - o)));
    }
    for (o, l) in ranges {
        check_range(&f, model, o, l, when);
    }
    // Reading at and past the end returns nothing.
    let mut buf = [0u8; 16];
    assert_eq!(
        f.read_at(&mut buf, n).expect("read at EOF"),
        0,
        "{when}: read at EOF"
    );
    assert_eq!(
        f.read_at(&mut buf, n + BLOCK).expect("read past EOF"),
        0,
        "{when}: read past EOF"
    );
}

/// A read of `l` bytes at `o` through `f` matches the model.
fn check_range(f: &File, model: &[u8], o: u64, l: u64, when: &str) {
    let mut buf = vec![0u8; l as usize];
    f.read_exact_at(&mut buf, o)
        .unwrap_or_else(|e| panic!("{when}: read {l} at {o}: {e}"));
    assert!(
        buf == model[o as usize..(o + l) as usize],
        "{when}: read of {l} bytes at {o} differs"
    );
}

/// Truncating down drops the data; growing again reads zeros, never the old bytes.
#[test]
fn truncate_up_and_down() {
    let Some(mut c) = s3_cluster() else { return };
    let path = c.join("t");
    let mut model = random_bytes(11, (10 * MIB) as usize);
    std::fs::write(&path, &model).expect("write 10 MiB");

    // Down by path into the middle of block 1, then up by descriptor past the old end.
    let down = 5 * MIB + 123;
    truncate(&path, down).expect("truncate down");
    model.truncate(down as usize);
    assert_file(&path, down, &sha256_bytes(&model), "after truncate down");
    let f = OpenOptions::new().write(true).open(&path).expect("open");
    f.set_len(12 * MIB).expect("ftruncate up");
    drop(f);
    model.resize((12 * MIB) as usize, 0);
    assert_file(
        &path,
        12 * MIB,
        &sha256_bytes(&model),
        "after truncate up (zeros, not the old data)",
    );

    // Write into the extension, then cut inside a block and write past the end (a hole).
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open");
    let patch = random_bytes(12, 300_000);
    f.write_all_at(&patch, 9 * MIB).expect("write in extension");
    model[(9 * MIB) as usize..(9 * MIB) as usize + patch.len()].copy_from_slice(&patch);
    f.set_len(9 * MIB + 1000)
        .expect("ftruncate inside the patch");
    model.truncate((9 * MIB + 1000) as usize);
    f.write_all_at(b"end", 14 * MIB)
        .expect("write past the end");
    model.resize((14 * MIB) as usize, 0);
    model.extend_from_slice(b"end");
    f.sync_all().expect("fsync");
    drop(f);
    let want = sha256_bytes(&model);
    assert_file(&path, model.len() as u64, &want, "after cut and hole");

    // To zero and up again: all zeros.
    let z = c.join("z");
    std::fs::write(&z, random_bytes(13, (6 * MIB) as usize)).expect("write z");
    truncate(&z, 0).expect("truncate to 0");
    assert_eq!(std::fs::metadata(&z).expect("stat").len(), 0);
    truncate(&z, 6 * MIB + 7).expect("truncate up from 0");
    let zeros = vec![0u8; (6 * MIB + 7) as usize];
    assert_file(
        &z,
        zeros.len() as u64,
        &sha256_bytes(&zeros),
        "after truncate 0 then up",
    );

    // O_TRUNC on open.
    let o = c.join("o");
    std::fs::write(&o, random_bytes(14, (5 * MIB) as usize)).expect("write o");
    let mut f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&o)
        .expect("open O_TRUNC");
    f.write_all(b"short").expect("write");
    drop(f);
    assert_file(&o, 5, &sha256_bytes(b"short"), "after O_TRUNC");

    c.remount();
    assert_file(&path, model.len() as u64, &want, "after remount");
    assert_file(
        &z,
        zeros.len() as u64,
        &sha256_bytes(&zeros),
        "after remount",
    );
    assert_file(&o, 5, &sha256_bytes(b"short"), "after remount");
}

/// An open file that is unlinked stays readable (and writable) through its descriptor until
/// closed, while its name is gone.
#[test]
fn unlinked_open_file_stays_readable() {
    let Some(c) = s3_cluster() else { return };
    let path = c.join("doomed");
    let data = random_bytes(21, (6 * MIB + 5) as usize);
    std::fs::write(&path, &data).expect("write");
    let other = c.join("other");
    std::fs::write(&other, b"x").expect("write other");

    let mut f = File::open(&path).expect("open for reading");
    let rw = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open rw");
    std::fs::remove_file(&path).expect("unlink");
    assert_errno(std::fs::metadata(&path), libc::ENOENT, "stat after unlink");
    assert_eq!(
        list(c.path()),
        vec!["other".to_string()],
        "listing after unlink"
    );

    let mut got = Vec::new();
    f.read_to_end(&mut got)
        .expect("read through the descriptor after unlink");
    assert!(
        got == data,
        "contents through the unlinked descriptor differ ({} bytes read)",
        got.len()
    );
    assert_eq!(
        f.metadata().expect("fstat").nlink(),
        0,
        "nlink of an unlinked open file"
    );

    rw.write_all_at(b"still here", 4 * MIB - 3)
        .expect("write through the unlinked descriptor");
    rw.sync_all().expect("fsync the unlinked file");
    let mut buf = [0u8; 10];
    rw.read_exact_at(&mut buf, 4 * MIB - 3).expect("read back");
    assert_eq!(&buf, b"still here");
    drop(f);
    drop(rw);

    // A new file may take the name; the old contents do not come back.
    std::fs::write(&path, b"new").expect("recreate");
    assert_file(&path, 3, &sha256_bytes(b"new"), "recreated file");
    let mut names = list(c.path());
    names.sort();
    assert_eq!(names, vec!["doomed".to_string(), "other".to_string()]);
}

/// Close-to-open: a second mount of the same volume sees what the first wrote once the file is
/// closed, including an overwrite of a file it had read before, and the other way around.
#[test]
fn second_mount_sees_writes_after_close() {
    let Some(c) = s3_cluster() else { return };
    let m2 = c.new_mount();
    let (a1, a2) = (c.join("a.bin"), m2.join("a.bin"));

    let h = write_random_file(&a1, 31, 9 * MIB + 3, false).expect("write a.bin");
    assert_file(&a2, 9 * MIB + 3, &h, "second mount, first read");

    // Overwrite with a different size in mount 1; mount 2 opens again and sees the new data.
    let h = write_random_file(&a1, 32, 5 * MIB, false).expect("overwrite a.bin");
    assert_file(
        &a2,
        5 * MIB,
        &h,
        "second mount, after overwrite and close in the first",
    );

    // Same size, different bytes (mtime/size alone cannot reveal it).
    let h = write_random_file(&a1, 33, 5 * MIB, false).expect("rewrite a.bin");
    assert_file(
        &a2,
        5 * MIB,
        &h,
        "second mount, after a same-size rewrite in the first",
    );

    // Append in mount 1.
    let mut data = random_bytes(33, (5 * MIB) as usize);
    let mut f = OpenOptions::new()
        .append(true)
        .open(&a1)
        .expect("open append");
    f.write_all(b"appended").expect("append");
    drop(f);
    data.extend_from_slice(b"appended");
    assert_file(
        &a2,
        data.len() as u64,
        &sha256_bytes(&data),
        "second mount, after append in the first",
    );

    // New names and folders made by mount 1 (never looked up by mount 2 before).
    std::fs::create_dir(c.join("d")).expect("mkdir d");
    let h = write_random_file(&c.join("d/x"), 34, 100_000, false).expect("write d/x");
    assert_file(
        &m2.join("d/x"),
        100_000,
        &h,
        "second mount, new file in new folder",
    );
    assert_eq!(list(&m2.join("d")), vec!["x".to_string()]);

    // And the other way.
    let h = write_random_file(&m2.join("b.bin"), 35, 4 * MIB + 1, false).expect("write b.bin");
    assert_file(
        &c.join("b.bin"),
        4 * MIB + 1,
        &h,
        "first mount, file written by the second",
    );

    // Unlink in one, gone in the other (within the entry cache's lifetime, a few seconds at most).
    std::fs::remove_file(m2.join("b.bin")).expect("unlink b.bin");
    let gone = wait_until(std::time::Duration::from_secs(5), || {
        File::open(c.join("b.bin")).is_err_and(|e| errno(&e) == libc::ENOENT)
    });
    assert!(
        gone,
        "the first mount still opens b.bin 5 s after the second unlinked it"
    );
    drop(m2);
}

/// Close-to-open holds while a descriptor opened before the other mount's close is still open
/// here: a new open sees the new contents, and so does the older descriptor from then on (as on
/// NFS). The kernel sends a close to the mount in the background, so a process that closes a
/// file and opens it again can have its open handled before its close: that open must not share
/// the view of the descriptor it closed.
#[test]
fn an_open_sees_another_mounts_close_while_an_older_descriptor_is_open() {
    let Some(c) = s3_cluster() else { return };
    let m2 = c.new_mount();
    let path = c.join("shared");
    let old_bytes = random_bytes(41, (5 * MIB) as usize);
    std::fs::write(&path, &old_bytes).expect("write the first version");
    let older = File::open(&path).expect("open the first version");
    drop_cached_pages(&older);
    let mut head = vec![0u8; 4096];
    older
        .read_exact_at(&mut head, 0)
        .expect("read the first version");
    assert_eq!(head, old_bytes[..4096]);

    // Same size, other bytes, written and closed through the other mount.
    let new_bytes = random_bytes(42, (5 * MIB) as usize);
    std::fs::write(m2.join("shared"), &new_bytes).expect("rewrite through the other mount");

    let h = sha256_bytes(&new_bytes);
    assert_file(&path, 5 * MIB, &h, "an open after the other mount's close");
    let mut all = vec![0u8; new_bytes.len()];
    older
        .read_exact_at(&mut all, 0)
        .expect("read through the older descriptor");
    assert!(
        all == new_bytes,
        "the descriptor opened before reads other bytes than the file's after a newer open"
    );
    drop(older);
    drop(m2);
}

/// fallocate: mode 0 makes the file long enough (the new range reads as zeros, data before it is
/// kept) and never shrinks it; KEEP_SIZE is accepted and changes nothing; punching a hole is
/// refused with EOPNOTSUPP.
#[test]
fn fallocate_extends_and_keeps_data() {
    use std::os::unix::io::AsRawFd;
    let Some(c) = s3_cluster() else { return };
    let path = c.join("falloc");
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .expect("create");
    f.write_all_at(b"head", 0).expect("write");
    let fd = f.as_raw_fd();
    let falloc = |mode: i32, off: i64, len: i64| {
        // SAFETY: fd is open for the whole closure's use; fallocate only reads its arguments.
        let r = unsafe { libc::fallocate(fd, mode, off, len) };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    falloc(0, 1 << 20, 5 << 20).expect("fallocate mode 0");
    assert_eq!(f.metadata().expect("stat").len(), 6 << 20);
    falloc(0, 0, 100).expect("fallocate inside the file");
    assert_eq!(f.metadata().expect("stat").len(), 6 << 20, "never shrinks");
    falloc(libc::FALLOC_FL_KEEP_SIZE, 0, 64 << 20).expect("KEEP_SIZE");
    assert_eq!(f.metadata().expect("stat").len(), 6 << 20);
    let e = falloc(
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        0,
        4096,
    )
    .expect_err("punch hole");
    assert_eq!(errno(&e), libc::EOPNOTSUPP);
    drop(f);
    let data = std::fs::read(&path).expect("read back");
    assert_eq!(data.len(), 6 << 20);
    assert_eq!(&data[..4], b"head");
    assert!(
        data[4..].iter().all(|b| *b == 0),
        "the allocated range reads as zeros"
    );
}

/// O_APPEND writes through one descriptor while another descriptor of the file is opened, read
/// and closed, and the file is stat'ed: no append may land on an earlier one. (The close
/// committed the appends while the stat was under way, the stat reported the size from before
/// that commit, and the kernel placed the next append at that older end.)
#[test]
fn append_survives_a_concurrent_close_and_stat() {
    use std::io::Read;
    let Some(c) = s3_cluster() else { return };
    for trial in 0..5 {
        let path = c.join(format!("append-{trial}"));
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .expect("open for appending");
        let mut expect = Vec::new();
        for _ in 0..20 {
            f.write_all(&[b'x'; 1000]).expect("append x");
            expect.extend_from_slice(&[b'x'; 1000]);
            let mut other = File::open(&path).expect("second descriptor");
            let mut buf = Vec::new();
            other.read_to_end(&mut buf).expect("read");
            drop(other);
            f.write_all(&[b'y'; 1000]).expect("append y");
            expect.extend_from_slice(&[b'y'; 1000]);
            std::fs::metadata(&path).expect("stat");
        }
        drop(f);
        let got = std::fs::read(&path).expect("read back");
        assert_eq!(got.len(), expect.len(), "trial {trial}: appends were lost");
        assert!(got == expect, "trial {trial}: contents differ");
    }
}

/// Truncates of a file whose writes are still buffered (not closed, not fsync'd): the mount cuts
/// its buffers instead of committing them first, so what was written below the new end must
/// survive, what was past it must read as zeros when the file grows again, and a block being
/// uploaded when the cut comes must not bring old bytes back. Checked against a model after every
/// step through the same descriptor, then after close and after a remount.
#[test]
fn truncate_of_buffered_writes_matches_local_copy() {
    let Some(mut c) = s3_cluster() else { return };
    // The plain case first: a partial block buffered, cut, grown again; the cut-off bytes must
    // not come back (checked after a remount, so not from the kernel's page cache).
    let plain = c.join("plain");
    let f = File::create(&plain).expect("create plain");
    f.write_all_at(&[7u8; 100_000], 0).expect("write 100 kB");
    f.set_len(50_000).expect("cut to 50 kB");
    f.set_len(200_000).expect("grow to 200 kB");
    drop(f);
    let mut plain_model = vec![7u8; 50_000];
    plain_model.resize(200_000, 0);
    c.remount();
    assert_file(
        &plain,
        200_000,
        &sha256_bytes(&plain_model),
        "cut and grown, after remount",
    );

    let mut rng = Rng::from_env_or_time("truncate_of_buffered_writes_matches_local_copy");
    let path = c.join("cut");
    let mut model = random_bytes(rng.next_u64(), (6 * MIB) as usize);
    std::fs::write(&path, &model).expect("write initial 6 MiB");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open rw");
    for i in 0..120 {
        if i % 3 == 2 {
            // A cut: inside a block, on a boundary, to zero, or up past the end.
            let len = match rng.range(0, 4) {
                0 => BLOCK * rng.range(0, 4),
                1 => rng.range(0, 3 * BLOCK),
                2 => model.len() as u64 + rng.range(0, 2 * MIB),
                _ => rng.range(0, model.len() as u64 + 1),
            };
            f.set_len(len)
                .unwrap_or_else(|e| panic!("ftruncate #{i} to {len}: {e}"));
            model.resize(len as usize, 0);
        } else {
            // Writes of up to a block and a half, often across a boundary: some fill whole
            // blocks (uploaded at once), others leave partial blocks buffered.
            let len = rng.range(1, BLOCK + BLOCK / 2);
            let off = if i % 2 == 0 {
                let boundary = BLOCK * rng.range(1, 4);
                boundary.saturating_sub(rng.range(1, len.max(2)))
            } else {
                rng.range(0, model.len() as u64 + MIB)
            };
            let data = random_bytes(rng.next_u64(), len as usize);
            write_both(&f, &mut model, off, &data, i);
        }
        let meta = f.metadata().expect("fstat");
        assert_eq!(meta.len(), model.len() as u64, "size after step #{i}");
        if !model.is_empty() && i % 4 == 0 {
            let o = rng.range(0, model.len() as u64);
            let l = rng.range(1, 2 * BLOCK).min(model.len() as u64 - o) as usize;
            let mut buf = vec![0u8; l];
            f.read_exact_at(&mut buf, o).expect("read back");
            assert!(
                buf == model[o as usize..o as usize + l],
                "read of {l} at {o} after step #{i} differs from the model"
            );
        }
    }
    drop(f);
    let want = sha256_bytes(&model);
    assert_file(&path, model.len() as u64, &want, "after close");
    c.remount();
    assert_file(&path, model.len() as u64, &want, "after remount");
}

/// Overwrites of a file written by an earlier mount (its blocks in no cache), each block
/// starting at its first byte, so that the mount owes the old bytes a write does not cover
/// instead of reading them first: every way they can be needed gets them right, checked
/// against a model through the same descriptor, after close and after a remount. A sequential
/// overwrite that stops mid-block keeps the rest of that block; a read of a block half
/// rewritten; a write that leaves a gap after the new bytes; a truncate below, then above, the
/// old bytes owed; and a whole overwrite in 1 MiB writes.
#[test]
fn overwrites_from_block_starts_keep_the_old_bytes_they_do_not_cover() {
    let Some(mut c) = s3_cluster() else { return };
    let mut rng = Rng::from_env_or_time("overwrites_from_block_starts");
    let path = c.join("old");
    let mut model = random_bytes(rng.next_u64(), (4 * BLOCK + BLOCK / 2) as usize);
    std::fs::write(&path, &model).expect("write the old file");
    let whole = c.join("whole");
    let mut whole_model = random_bytes(rng.next_u64(), (4 * BLOCK - 12345) as usize);
    std::fs::write(&whole, &whole_model).expect("write the second old file");
    c.remount();

    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open rw");
    // Sequential overwrite of 6 MiB: block 1 keeps its old bytes from 6 MiB on.
    for i in 0..6 {
        let data = random_bytes(rng.next_u64(), MIB as usize);
        write_both(&f, &mut model, i * MIB, &data, i as usize);
    }
    check_range(
        &f,
        &model,
        5 * MIB,
        2 * MIB,
        "across new and old bytes of block 1",
    );
    // Block 2: 100 KiB at its start, then 10 bytes 1 MiB further: the gap is old bytes.
    let data = random_bytes(rng.next_u64(), 100 << 10);
    write_both(&f, &mut model, 2 * BLOCK, &data, 6);
    write_both(&f, &mut model, 2 * BLOCK + MIB, b"0123456789", 7);
    // Block 3: 1000 bytes at its start, cut 5000 bytes in, grown past the old end: old bytes
    // up to the cut, zeros after.
    let data = random_bytes(rng.next_u64(), 1000);
    write_both(&f, &mut model, 3 * BLOCK, &data, 8);
    f.set_len(3 * BLOCK + 5000).expect("cut in block 3");
    model.truncate((3 * BLOCK + 5000) as usize);
    f.set_len(4 * BLOCK + MIB).expect("grow past the old end");
    model.resize((4 * BLOCK + MIB) as usize, 0);
    check_range(
        &f,
        &model,
        2 * BLOCK,
        2 * BLOCK + MIB,
        "blocks 2 to 4 before close",
    );
    f.sync_all().expect("fsync");
    drop(f);

    // A whole overwrite, 1 MiB at a time, then longer than before.
    let f = OpenOptions::new()
        .write(true)
        .open(&whole)
        .expect("open the second file");
    let mut off = 0;
    while off < 4 * BLOCK {
        let data = random_bytes(rng.next_u64(), MIB as usize);
        write_both(&f, &mut whole_model, off, &data, off as usize);
        off += MIB;
    }
    drop(f);

    for (p, m) in [(&path, &model), (&whole, &whole_model)] {
        assert_file(p, m.len() as u64, &sha256_bytes(m), "after close");
    }
    c.remount();
    for (p, m) in [(&path, &model), (&whole, &whole_model)] {
        assert_file(p, m.len() as u64, &sha256_bytes(m), "after remount");
        check_ranges(p, m, &mut rng, "after remount");
    }
    c.assert_no_panics();
}
