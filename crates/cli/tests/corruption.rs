//! A damaged block object is detected and reported as EIO with a log line naming the block,
//! never returned as file data.

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

fn read_all(p: &Path) -> std::io::Result<Vec<u8>> {
    let mut v = Vec::new();
    fs::File::open(p)?.read_to_end(&mut v)?;
    Ok(v)
}

#[test]
fn flipped_and_truncated_blocks_give_eio_not_data() {
    let Some(mut c) = local_cluster() else { return };
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
