//! Page fills through a real FUSE mount: a random read hands the kernel the whole 64 KiB frame
//! around it (FUSE_NOTIFY_STORE), and no fill ever shows a reader bytes older than a write, a
//! truncate or another mount's change that came before its read.
//!
//! Pages of the files here carry (page number, stamp) pairs, so a stale page names itself.

mod common;

use common::*;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PAGE: u64 = 4096;

/// A cluster whose mounts hold each page fill a while after it begins, so that the changes of
/// these tests meet fills under way and fills offered before them.
fn slow_fill_cluster() -> Option<Cluster> {
    require_fuse().then(|| {
        Cluster::s3(bin())
            .mount_env("CAIRN_PAGE_FILL_DELAY_MS", "20")
            .start()
    })
}
const FRAME: u64 = 64 << 10;
const MIB: u64 = 1 << 20;

/// Page `page` with stamp `stamp`: the pair repeated.
fn page_bytes(page: u64, stamp: u32) -> Vec<u8> {
    let mut pair = [0u8; 8];
    pair[..4].copy_from_slice(&(page as u32).to_le_bytes());
    pair[4..].copy_from_slice(&stamp.to_le_bytes());
    pair.repeat((PAGE / 8) as usize)
}

/// The stamp of a page read back; panics if the page is not one of page `page`'s versions.
fn stamp_of(page: u64, bytes: &[u8], what: &str) -> u32 {
    let stamp = u32::from_le_bytes(bytes[4..8].try_into().unwrap());
    assert_eq!(
        bytes,
        page_bytes(page, stamp).as_slice(),
        "{what}: page {page} holds bytes that are no version of it"
    );
    stamp
}

fn write_stamped(path: &Path, pages: u64, stamp: u32) {
    let mut all = Vec::with_capacity((pages * PAGE) as usize);
    for p in 0..pages {
        all.extend_from_slice(&page_bytes(p, stamp));
    }
    std::fs::write(path, all).expect("write the stamped file");
}

/// Pages of `[offset, offset + len)` of `f` that the kernel holds.
fn resident_pages(f: &File, offset: u64, len: u64) -> usize {
    use std::os::fd::AsRawFd;
    // SAFETY: a read-only shared mapping of an open file, unmapped below; mincore only fills
    // `vec`, which has one byte per page of the mapping.
    unsafe {
        let map = libc::mmap(
            std::ptr::null_mut(),
            len as usize,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            offset as libc::off_t,
        );
        assert_ne!(
            map,
            libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        let mut vec = vec![0u8; (len / PAGE) as usize];
        let rc = libc::mincore(map, len as usize, vec.as_mut_ptr());
        let err = std::io::Error::last_os_error();
        libc::munmap(map, len as usize);
        assert_eq!(rc, 0, "mincore: {err}");
        vec.iter().filter(|b| **b & 1 != 0).count()
    }
}

/// A file `f` of `len` bytes stamped 1, open after a remount (nothing of it in the page cache).
fn cold_stamped_file(c: &mut Cluster, len: u64) -> File {
    write_stamped(&c.join("f"), len / PAGE, 1);
    c.remount();
    File::open(c.join("f")).expect("open")
}

/// One random 4 KiB read of a cold file brings its whole 64 KiB frame into the page cache, with
/// the file's bytes; a sequential reader gets no fills (the kernel's read-ahead serves it).
#[test]
fn a_random_read_fills_its_frame() {
    let Some(mut c) = s3_cluster() else { return };
    let f = cold_stamped_file(&mut c, 8 * MIB);
    let frame = MIB + 3 * FRAME;
    let mut buf = vec![0u8; PAGE as usize];
    f.read_exact_at(&mut buf, frame + 5 * PAGE).expect("read");
    stamp_of((frame + 5 * PAGE) / PAGE, &buf, "the read");
    let want = (FRAME / PAGE) as usize;
    let filled = wait_until(Duration::from_secs(10), || {
        resident_pages(&f, frame, FRAME) == want
    });
    assert!(
        filled,
        "after a 4 KiB read, {} of the {want} pages of its frame are in the page cache",
        resident_pages(&f, frame, FRAME)
    );
    // What the kernel was given is the file.
    for p in 0..FRAME / PAGE {
        let page = frame / PAGE + p;
        f.read_exact_at(&mut buf, page * PAGE)
            .expect("read a filled page");
        assert_eq!(stamp_of(page, &buf, "a filled page"), 1);
    }
    c.assert_no_panics();
}

/// Once a block of a file read at random is local (the disk cache copies such a file whole), a
/// random read of it hands the kernel the whole block, not just the frame around the read: a few
/// reads make all 4 MiB of the block page cache hits, where frame fills would need 64.
#[test]
fn a_random_read_of_a_local_block_fills_the_whole_block() {
    let Some(mut c) = s3_cluster() else { return };
    let f = cold_stamped_file(&mut c, 8 * MIB);
    let (block, block_len) = (4 * MIB, 4 * MIB);
    let want = (block_len / PAGE) as usize;
    let mut buf = vec![0u8; PAGE as usize];
    // Each probe reads one page of a frame of the second block not read before; the first
    // probes come before the file's copy is local and fill frames only.
    let mut probes = 0;
    let filled = wait_until(Duration::from_secs(20), || {
        if resident_pages(&f, block, block_len) == want || probes == block_len / FRAME {
            return true;
        }
        let at = block + probes * FRAME + PAGE;
        probes += 1;
        f.read_exact_at(&mut buf, at).expect("probe");
        std::thread::sleep(Duration::from_millis(100));
        resident_pages(&f, block, block_len) == want
    });
    assert!(
        filled && probes < block_len / FRAME / 2,
        "after {probes} random 4 KiB reads, {} of the {want} pages of the block are in the page \
         cache (frame fills alone would take 64 reads)",
        resident_pages(&f, block, block_len)
    );
    for p in (0..block_len / PAGE).step_by(37) {
        let page = block / PAGE + p;
        f.read_exact_at(&mut buf, page * PAGE)
            .expect("read a filled page");
        assert_eq!(stamp_of(page, &buf, "a page of the filled block"), 1);
    }
    c.assert_no_panics();
}

/// Without a disk cache, a random read of a file larger than the memory cache (but small beside
/// the host's memory) has the whole file read in the background and handed to the kernel: one
/// 128 KiB read (a frame's size and more, so no frame fill) brings all 32 MiB into the page
/// cache, with the file's bytes, and every later read is a page cache hit. (Before, such a
/// reader paid a ranged read of the bucket on every read of the file, however long it went on.)
#[test]
fn without_a_disk_cache_a_random_read_hands_the_kernel_the_file() {
    one_random_read_hands_the_kernel_the_file(&["--cache-size", "8MiB", "--no-disk-cache"]);
}

/// The same with a disk cache (the default): the file, small beside the cache, is copied into
/// it whole and handed to the kernel as it is copied; the disk cache's copy does not stay in the
/// page cache beside the kernel's (a second copy of every byte in memory).
#[test]
fn with_a_disk_cache_a_random_read_hands_the_kernel_the_file() {
    let Some(c) = one_random_read_hands_the_kernel_the_file(&["--cache-size", "8MiB"]) else {
        return;
    };
    let dir = c.mount().disk_cache_dir().expect("the mount's disk cache");
    let blocks = 32 * MIB / (4 * MIB);
    let copied = wait_until(Duration::from_secs(20), || {
        disk_cache_copies(&dir).len() as u64 >= blocks
    });
    let copies = disk_cache_copies(&dir);
    assert!(
        copied,
        "the disk cache holds {} of the file's {blocks} blocks",
        copies.len()
    );
    assert_not_in_page_cache(&copies);
}

/// A cold sequential read leaves copies of the blocks it read in the disk cache, and not in the
/// page cache beside the kernel's pages of the file read.
#[test]
fn a_sequential_reader_s_blocks_are_copied_to_disk_outside_the_page_cache() {
    let Some(mut c) = s3_cluster() else { return };
    let f = cold_stamped_file(&mut c, 32 * MIB);
    let mut buf = vec![0u8; MIB as usize];
    for at in (0..32 * MIB).step_by(MIB as usize) {
        f.read_exact_at(&mut buf, at).expect("read");
        for (i, page) in buf.chunks(PAGE as usize).enumerate() {
            stamp_of(at / PAGE + i as u64, page, "a sequential read");
        }
    }
    let dir = c.mount().disk_cache_dir().expect("the mount's disk cache");
    // Copies are written behind the reads, and skipped when the disk is busy: wait for some.
    let copied = wait_until(Duration::from_secs(20), || {
        disk_cache_copies(&dir).len() >= 4
    });
    std::thread::sleep(Duration::from_millis(500));
    let copies = disk_cache_copies(&dir);
    assert!(copied, "the disk cache holds {} of 8 blocks", copies.len());
    assert_not_in_page_cache(&copies);
}

/// Each copy of a block in the disk cache folder `dir`: its length as stored (compressed; the
/// stamped pages shrink), and how many of its pages are in the page cache.
fn disk_cache_copies(dir: &Path) -> Vec<(u64, u64)> {
    clean_copies(dir)
        .into_iter()
        .map(|p| {
            let f = File::open(&p).expect("open a cached copy");
            let len = f.metadata().expect("stat a cached copy").len();
            let resident = match len {
                0 => 0,
                _ => resident_pages(&f, 0, len.next_multiple_of(PAGE)) as u64,
            };
            (len, resident)
        })
        .collect()
}

/// The disk cache's copies do not stay in the page cache: they would be a second copy in
/// memory of the bytes the kernel keeps for the file itself.
fn assert_not_in_page_cache(copies: &[(u64, u64)]) {
    let bytes: u64 = copies.iter().map(|c| c.0).sum();
    let resident: u64 = copies.iter().map(|c| c.1).sum();
    assert!(
        resident * PAGE <= bytes / 4,
        "{} KiB of the disk cache's {} KiB of copies are in the page cache",
        resident * PAGE / 1024,
        bytes / 1024
    );
}

fn one_random_read_hands_the_kernel_the_file(mount_args: &[&str]) -> Option<Cluster> {
    let mut c = require_fuse().then(|| Cluster::s3(bin()).mount_args(mount_args).start())?;
    let len = 32 * MIB;
    let f = cold_stamped_file(&mut c, len);
    let at = 12 * MIB + 5 * FRAME;
    let mut buf = vec![0u8; (2 * FRAME) as usize];
    f.read_exact_at(&mut buf, at).expect("read");
    for (i, page) in buf.chunks(PAGE as usize).enumerate() {
        stamp_of(at / PAGE + i as u64, page, "the read");
    }
    let want = (len / PAGE) as usize;
    let mut most = 0;
    wait_until(Duration::from_secs(20), || {
        most = most.max(resident_pages(&f, 0, len));
        most == want
    });
    // All of them at once, but for a few the kernel may have reclaimed since they were handed
    // over: a full test run leaves the host's memory full of page cache, and pages handed over
    // but not read yet sit on the kernel's inactive list, where reclaim takes them 32 at a time
    // (one run found 8159 of 8192). Without the fill, the read alone brings in 32.
    assert!(
        most >= want - want / 16,
        "after one random 128 KiB read, at most {most} of the {want} pages of the file were in \
         the page cache at once (now {})",
        resident_pages(&f, 0, len)
    );
    let mut page = vec![0u8; PAGE as usize];
    for n in (0..len / PAGE).step_by(97) {
        f.read_exact_at(&mut page, n * PAGE)
            .expect("read a filled page");
        assert_eq!(stamp_of(n, &page, "a filled page"), 1);
    }
    c.assert_no_panics();
    Some(c)
}

/// Readers read pages at random, with fills, while a writer on the same mount opens the file,
/// stamps one page, and closes it, 150 times. A read that starts after a stamp's close returned
/// sees that stamp or a later one, never an older page that a fill put back. (A read and a write
/// of one page do not overlap: the kernel does not make them atomic with each other, on any
/// filesystem, and a page half copied by the writer is no fill's doing. Fills offered before a
/// write still come up after it.)
#[test]
fn fills_never_undo_a_write_on_the_same_mount() {
    let Some(c) = slow_fill_cluster() else { return };
    let path = c.join("f");
    // 64 pages in 4 frames: readers and the writer meet often.
    let pages = 64u64;
    write_stamped(&path, pages, 0);
    let stamps: Arc<Vec<AtomicU32>> = Arc::new((0..pages).map(|_| AtomicU32::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let turns = Arc::new(std::sync::RwLock::new(()));
    let readers: Vec<_> = (0..2)
        .map(|r| {
            let (path, stamps, stop) = (path.clone(), Arc::clone(&stamps), Arc::clone(&stop));
            let turns = Arc::clone(&turns);
            std::thread::spawn(move || {
                let mut rng = Rng::new(100 + r);
                let mut buf = vec![0u8; PAGE as usize];
                let mut reads = 0u64;
                while !stop.load(Ordering::Acquire) {
                    // A fresh open now and then: fills begin again from a cold file.
                    let f = File::open(&path).expect("reader open");
                    // Cold, so that reads miss (and offer fills).
                    drop_cached_pages(&f);
                    for _ in 0..200 {
                        let page = rng.next_u64() % pages;
                        let _turn = turns.read().unwrap_or_else(|e| e.into_inner());
                        let known = stamps[page as usize].load(Ordering::Acquire);
                        f.read_exact_at(&mut buf, page * PAGE).expect("reader read");
                        let got = stamp_of(page, &buf, "a reader");
                        assert!(
                            got >= known,
                            "page {page}: read stamp {got} after stamp {known} was written and closed"
                        );
                        reads += 1;
                    }
                }
                reads
            })
        })
        .collect();
    let mut rng = Rng::new(7);
    for stamp in 1..=150u32 {
        let page = rng.next_u64() % pages;
        let turn = turns.write().unwrap_or_else(|e| e.into_inner());
        let f = OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("writer open");
        f.write_all_at(&page_bytes(page, stamp), page * PAGE)
            .expect("writer write");
        drop(f);
        stamps[page as usize].store(stamp, Ordering::Release);
        drop(turn);
        std::thread::sleep(Duration::from_millis(2));
    }
    stop.store(true, Ordering::Release);
    for r in readers {
        let reads = r.join().expect("a reader failed");
        assert!(reads > 0);
    }
    // And the file as written, from a fresh open.
    let f = File::open(&path).expect("open");
    let mut buf = vec![0u8; PAGE as usize];
    for page in 0..pages {
        f.read_exact_at(&mut buf, page * PAGE).expect("final read");
        assert_eq!(
            stamp_of(page, &buf, "the final read"),
            stamps[page as usize].load(Ordering::Acquire),
            "page {page} after all writes"
        );
    }
    c.assert_no_panics();
}

/// A truncate by path (no open file) while fills of the part it cuts are on their way: once it
/// returns, no fill brings a page past the new end back into the kernel's cache (nor stretches
/// the file again), and after an extension that part reads as zeros.
#[test]
fn fills_never_undo_a_truncate() {
    let Some(c) = slow_fill_cluster() else { return };
    let path = c.join("f");
    let pages = 2 * MIB / PAGE;
    let half = pages / 2 * PAGE;
    for round in 0..5u32 {
        write_stamped(&path, pages, round + 1);
        let f = File::open(&path).expect("open");
        drop_cached_pages(&f);
        // Random reads of the second half: each miss offers a fill, and they queue.
        let mut rng = Rng::new(u64::from(round));
        let mut buf = vec![0u8; PAGE as usize];
        let until = Instant::now() + Duration::from_millis(150);
        while Instant::now() < until {
            let page = pages / 2 + rng.next_u64() % (pages / 2);
            f.read_exact_at(&mut buf, page * PAGE).expect("read");
            stamp_of(page, &buf, "before the truncate");
        }
        truncate(&path, half).expect("truncate");
        // Fills offered before the truncate come up now; none may be stored. (No read or stat
        // here: either would make the kernel fetch the size again and hide a stretched file.)
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(
            resident_pages(&f, half, half),
            0,
            "round {round}: pages past the new end are in the kernel's cache after the truncate"
        );
        assert_eq!(f.read_at(&mut buf, half).expect("read past the end"), 0);
        assert_eq!(f.metadata().expect("fstat").size(), half, "round {round}");
        drop(f);
        // Longer again: the new part reads as zeros.
        truncate(&path, pages * PAGE).expect("truncate up");
        let f = File::open(&path).expect("open");
        for page in (pages / 2..pages).step_by(37) {
            f.read_exact_at(&mut buf, page * PAGE)
                .expect("read the extension");
            assert!(
                buf.iter().all(|b| *b == 0),
                "round {round}: page {page} after truncate up"
            );
        }
    }
    c.assert_no_panics();
}

/// Another mount rewrites the file while a descriptor here, opened before, reads it at random
/// (offering fills of the old bytes) and then closes: an open here right after sees only the
/// new bytes (close-to-open), whatever fills of the old ones were still on their way.
#[test]
fn fills_never_undo_another_mounts_change() {
    let Some(c) = slow_fill_cluster() else { return };
    let m2 = c.new_mount();
    let path = c.join("f");
    let pages = 2 * MIB / PAGE;
    write_stamped(&path, pages, 1);
    let mut rng = Rng::new(3);
    let mut buf = vec![0u8; PAGE as usize];
    for stamp in 2..=6u32 {
        let old = File::open(&path).expect("open before the rewrite");
        drop_cached_pages(&old);
        f_read_random(&old, &mut rng, pages, 50, stamp - 1);
        write_stamped(&m2.join("f"), pages, stamp);
        // The old view, still: its fills carry the old bytes.
        f_read_random(&old, &mut rng, pages, 300, stamp - 1);
        drop(old);
        let f = File::open(&path).expect("open after the rewrite");
        let until = Instant::now() + Duration::from_millis(300);
        while Instant::now() < until {
            let page = rng.next_u64() % pages;
            f.read_exact_at(&mut buf, page * PAGE).expect("read");
            assert_eq!(
                stamp_of(page, &buf, "after the other mount's rewrite"),
                stamp,
                "page {page}"
            );
        }
    }
    drop(m2);
    c.assert_no_panics();
}

/// `count` random page reads of `f`, each of stamp `stamp`.
fn f_read_random(f: &File, rng: &mut Rng, pages: u64, count: usize, stamp: u32) {
    let mut buf = vec![0u8; PAGE as usize];
    for _ in 0..count {
        let page = rng.next_u64() % pages;
        f.read_exact_at(&mut buf, page * PAGE).expect("read");
        assert_eq!(stamp_of(page, &buf, "the old view"), stamp, "page {page}");
    }
}
