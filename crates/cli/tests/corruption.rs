//! A damaged block object is detected and reported as EIO with a log line naming the block,
//! never returned as file data.
//!
//! The mounts here have no disk cache (`--no-disk-cache`): a mount keeps a copy of every block
//! it writes there, and would read the good copy instead of the damaged object. Damaged copies in
//! the disk cache are the blocks crate's unit tests (`cached_copies_are_verified`,
//! `get_range_uses_whole_cached_copies_and_caches_no_parts`).

mod common;

use common::*;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

fn objects(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).expect("list the block folder") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            out.extend(objects(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// The tests of this file run one at a time: the first counts the objects its writes made, and
/// with another cluster busy beside it a write was seen to be uploaded twice (two versions of a
/// block), which is allowed but not what it counts.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn read_all(p: &Path) -> std::io::Result<Vec<u8>> {
    let mut v = Vec::new();
    fs::File::open(p)?.read_to_end(&mut v)?;
    Ok(v)
}

#[test]
fn flipped_and_truncated_blocks_give_eio_not_data() {
    let _serial = serial();
    if !require_fuse() {
        return;
    }
    let mut c = Cluster::local_folder(bin())
        .mount_args(&["--no-disk-cache"])
        .start();
    const MIB: u64 = 1 << 20;
    write_random_file(&c.join("flipped"), 7, 5 * MIB, true).expect("write");
    write_random_file(&c.join("truncated"), 8, 3 * MIB, true).expect("write");
    c.remount();
    let blocks = c.dir().join("blocks");
    let objs = objects(&blocks);
    assert_eq!(
        objs.len(),
        3,
        "two blocks for 5 MiB and one for 3 MiB: {objs:?}"
    );
    // Which object is which does not matter: damage every one, each in its own way.
    for (i, o) in objs.iter().enumerate() {
        let mut bytes = fs::read(o).expect("read object");
        if i % 2 == 0 {
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0x5a;
        } else {
            bytes.truncate(bytes.len() - 100);
        }
        fs::write(o, &bytes).expect("damage object");
    }
    for name in ["flipped", "truncated"] {
        let err = read_all(&c.join(name)).expect_err("a damaged block must not read as data");
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{name}: {err}");
    }
    let log = fs::read_to_string(c.mount().log()).expect("mount log");
    assert!(
        log.contains("block read failed"),
        "the mount log names the failed block:\n{log}"
    );
    // The mount is still usable.
    fs::write(c.join("fresh"), b"still works").expect("write after the errors");
    assert_eq!(fs::read(c.join("fresh")).expect("read"), b"still works");
}

/// A damaged frame read at random (so only the frames that hold the read are fetched) gives EIO
/// with a log line naming the block; reads of the block's other frames still return the data.
#[test]
fn a_damaged_frame_read_at_random_gives_eio() {
    let _serial = serial();
    if !require_fuse() {
        return;
    }
    // A memory cache smaller than the file: random reads fetch frames, not whole blocks.
    let mut c = Cluster::local_folder(bin())
        .mount_args(&["--cache-size", "4MiB", "--no-disk-cache"])
        .start();
    const MIB: u64 = 1 << 20;
    const FRAME: u64 = 64 << 10;
    let hash = write_random_file(&c.join("f"), 9, 5 * MIB, true).expect("write");
    assert_eq!(hash, random_file_hash(9, 5 * MIB));
    let model = random_bytes_of_file(9, 5 * MIB);
    assert_eq!(sha256_bytes(&model), hash);
    c.remount();
    // Random bytes do not compress: block 0's object is the 24-byte header, a table of 64
    // 16-byte entries, then the 4 MiB of the block as they are.
    let index_len = 24 + 64 * 16;
    let objs = objects(&c.dir().join("blocks"));
    let block0: Vec<&PathBuf> = objs
        .iter()
        .filter(|o| fs::metadata(o).expect("stat").len() == 4 * MIB + index_len)
        .collect();
    assert_eq!(block0.len(), 1, "one object holds block 0: {objs:?}");
    let damaged = 2 * MIB + 100;
    let mut bytes = fs::read(block0[0]).expect("read object");
    bytes[(index_len + damaged) as usize] ^= 0x20;
    fs::write(block0[0], &bytes).expect("damage object");

    use std::os::unix::fs::FileExt;
    let f = fs::File::open(c.join("f")).expect("open");
    // Not at offset 0, and never where the last read ended: random reads.
    let good = 5 * FRAME + 10;
    let mut buf = vec![0u8; 4096];
    f.read_exact_at(&mut buf, good)
        .expect("an undamaged frame reads");
    assert!(buf == model[good as usize..good as usize + 4096]);
    let err = f
        .read_exact_at(&mut buf, damaged - 50)
        .expect_err("a damaged frame must not read as data");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let good = 3 * MIB + 7;
    f.read_exact_at(&mut buf, good)
        .expect("another frame of the same block reads");
    assert!(buf == model[good as usize..good as usize + 4096]);
    let log = fs::read_to_string(c.mount().log()).expect("mount log");
    let name = block0[0].file_name().unwrap().to_string_lossy().to_string();
    assert!(
        log.lines()
            .any(|l| l.contains("block read failed") && l.contains(&name)),
        "the mount log names the damaged block {name}:\n{log}"
    );
}

/// The bytes `write_random_file(_, seed, len, _)` writes.
fn random_bytes_of_file(seed: u64, len: u64) -> Vec<u8> {
    let mut v = vec![0u8; len as usize];
    fill_random(seed, &mut v);
    v
}
