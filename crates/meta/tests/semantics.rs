//! Filesystem rules of the metadata layer, checked without a kernel or a network.

use cairn_meta::fs::Fs;
use cairn_meta::store::RedbStore;
use cairn_proto::*;

fn volume() -> VolumeInfo {
    VolumeInfo {
        name: "t".into(),
        block_size: 1 << 20,
        compression: "none".into(),
        encrypted: false,
    }
}

fn fresh() -> (tempfile::TempDir, Fs<RedbStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("meta.redb"), false).unwrap();
    let (fs, _) = Fs::load(store, volume()).unwrap();
    (dir, fs)
}

const ME: Caller = Caller {
    uid: 1000,
    gid: 1000,
    pid: 1,
    umask: 0,
};

fn file(fs: &Fs<RedbStore>, parent: Ino, name: &str) -> Attr {
    fs.mknod(
        parent,
        name.as_bytes(),
        FileKind::File,
        0o644,
        0,
        &ME,
        1,
        false,
    )
    .unwrap()
}

fn code<T: std::fmt::Debug>(r: Result<T, RpcError>) -> ErrorCode {
    r.unwrap_err().code
}

fn names(fs: &Fs<RedbStore>, dir: Ino) -> Vec<String> {
    let (entries, eof) = fs.readdir(dir, 0, 4096, false).unwrap();
    assert!(eof);
    let mut v: Vec<String> = entries
        .into_iter()
        .map(|e| String::from_utf8(e.name).unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn create_lookup_and_ownership() {
    let (_d, fs) = fresh();
    let a = file(&fs, ROOT_INO, "a");
    assert_eq!((a.uid, a.gid, a.perm, a.nlink), (1000, 1000, 0o644, 1));
    assert_eq!(fs.lookup(ROOT_INO, b"a").unwrap().ino, a.ino);
    assert_eq!(code(fs.lookup(ROOT_INO, b"b")), ErrorCode::NotFound);
    assert_eq!(
        code(fs.mkdir(ROOT_INO, b"a", 0o755, &ME)),
        ErrorCode::Exists
    );
    assert_eq!(code(fs.lookup(a.ino, b"x")), ErrorCode::NotDir);
    assert_eq!(
        code(fs.mkdir(ROOT_INO, &[b'x'; 256], 0o755, &ME)),
        ErrorCode::NameTooLong
    );
}

#[test]
fn directory_link_counts_and_rmdir() {
    let (_d, fs) = fresh();
    let d = fs.mkdir(ROOT_INO, b"d", 0o755, &ME).unwrap();
    fs.mkdir(d.ino, b"e", 0o755, &ME).unwrap();
    assert_eq!(fs.getattr(d.ino).unwrap().nlink, 3);
    assert_eq!(fs.getattr(ROOT_INO).unwrap().nlink, 3);
    assert_eq!(code(fs.rmdir(ROOT_INO, b"d")), ErrorCode::NotEmpty);
    assert_eq!(code(fs.unlink(ROOT_INO, b"d")), ErrorCode::IsDir);
    fs.rmdir(d.ino, b"e").unwrap();
    fs.rmdir(ROOT_INO, b"d").unwrap();
    assert_eq!(fs.getattr(ROOT_INO).unwrap().nlink, 2);
    assert_eq!(code(fs.getattr(d.ino)), ErrorCode::NotFound);
}

#[test]
fn rename_rules() {
    let (_d, fs) = fresh();
    let a = fs.mkdir(ROOT_INO, b"a", 0o755, &ME).unwrap();
    let b = fs.mkdir(a.ino, b"b", 0o755, &ME).unwrap();
    // A directory cannot move under itself.
    assert_eq!(
        code(fs.rename(ROOT_INO, b"a", b.ino, b"x", 0)),
        ErrorCode::Invalid
    );
    let f = file(&fs, ROOT_INO, "f");
    let g = file(&fs, a.ino, "g");
    // Over an existing file: the target is replaced and freed.
    fs.rename(ROOT_INO, b"f", a.ino, b"g", 0).unwrap();
    assert_eq!(fs.lookup(a.ino, b"g").unwrap().ino, f.ino);
    assert_eq!(code(fs.getattr(g.ino)), ErrorCode::NotFound);
    // File over directory, directory over file.
    file(&fs, ROOT_INO, "h");
    assert_eq!(
        code(fs.rename(ROOT_INO, b"h", a.ino, b"b", 0)),
        ErrorCode::IsDir
    );
    assert_eq!(
        code(fs.rename(a.ino, b"b", ROOT_INO, b"h", 0)),
        ErrorCode::NotDir
    );
    // NOREPLACE and EXCHANGE.
    assert_eq!(
        code(fs.rename(ROOT_INO, b"h", a.ino, b"g", rename_flags::NOREPLACE)),
        ErrorCode::Exists
    );
    let h = fs.lookup(ROOT_INO, b"h").unwrap();
    fs.rename(ROOT_INO, b"h", a.ino, b"g", rename_flags::EXCHANGE)
        .unwrap();
    assert_eq!(fs.lookup(ROOT_INO, b"h").unwrap().ino, f.ino);
    assert_eq!(fs.lookup(a.ino, b"g").unwrap().ino, h.ino);
    // Moving a directory across parents moves its `..` link.
    fs.rename(a.ino, b"b", ROOT_INO, b"b2", 0).unwrap();
    assert_eq!(fs.getattr(a.ino).unwrap().nlink, 2);
    assert_eq!(fs.getattr(ROOT_INO).unwrap().nlink, 4);
    assert_eq!(names(&fs, ROOT_INO), ["a", "b2", "h"]);
}

#[test]
fn hard_links_and_open_unlinked_files() {
    let (_d, fs) = fresh();
    let f = file(&fs, ROOT_INO, "f");
    fs.link(f.ino, ROOT_INO, b"g").unwrap();
    assert_eq!(fs.getattr(f.ino).unwrap().nlink, 2);
    fs.unlink(ROOT_INO, b"f").unwrap();
    assert_eq!(fs.getattr(f.ino).unwrap().nlink, 1);
    fs.open(f.ino, 7).unwrap();
    fs.unlink(ROOT_INO, b"g").unwrap();
    // Open by session 7: still there, with no names.
    assert_eq!(fs.getattr(f.ino).unwrap().nlink, 0);
    fs.release(f.ino, 7).unwrap();
    assert_eq!(code(fs.getattr(f.ino)), ErrorCode::NotFound);
    assert_eq!(fs.statfs().unwrap().used_inodes, 1);
}

#[test]
fn readdir_cookies_survive_changes() {
    let (_d, fs) = fresh();
    for i in 0..100 {
        file(&fs, ROOT_INO, &format!("f{i:03}"));
    }
    let (first, eof) = fs.readdir(ROOT_INO, 0, 10, false).unwrap();
    assert!(!eof);
    // Delete entries already listed and entries not yet listed, then resume.
    for i in [0, 5, 50, 99] {
        fs.unlink(ROOT_INO, format!("f{i:03}").as_bytes()).unwrap();
    }
    let mut seen: Vec<Vec<u8>> = first.iter().map(|e| e.name.clone()).collect();
    let mut cookie = first.last().unwrap().cookie;
    loop {
        let (more, eof) = fs.readdir(ROOT_INO, cookie, 7, false).unwrap();
        seen.extend(more.iter().map(|e| e.name.clone()));
        if let Some(l) = more.last() {
            cookie = l.cookie;
        }
        if eof {
            break;
        }
    }
    let mut dedup = seen.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(dedup.len(), seen.len(), "no entry twice");
    assert_eq!(
        seen.len(),
        100 - 2,
        "listed before deletion: f000, f005; never listed: f050, f099"
    );
}

#[test]
fn block_map_commit_truncate_and_garbage() {
    let (_d, fs) = fresh();
    let f = file(&fs, ROOT_INO, "f");
    let mb = 1 << 20;
    let blocks: Vec<BlockRef> = (0..3)
        .map(|i| BlockRef {
            index: i,
            version: 10 + i,
            len: mb,
        })
        .collect();
    let a = fs
        .commit_write(f.ino, &blocks, 3 * u64::from(mb), Timestamp::now())
        .unwrap();
    assert_eq!(a.size, 3 << 20);
    // Rewrite block 1: a new version replaces it.
    fs.commit_write(
        f.ino,
        &[BlockRef {
            index: 1,
            version: 99,
            len: mb,
        }],
        0,
        Timestamp::now(),
    )
    .unwrap();
    let (map, size) = fs.get_blocks(f.ino, 0, 10).unwrap();
    assert_eq!(size, 3 << 20);
    assert_eq!(
        map.iter().map(|b| b.version).collect::<Vec<_>>(),
        [10, 99, 12]
    );
    // Truncate into block 1: block 2 goes, block 1 is clipped.
    let set = SetAttr {
        size: Some((1 << 20) + 100),
        ..Default::default()
    };
    fs.setattr(f.ino, &set).unwrap();
    let (map, _) = fs.get_blocks(f.ino, 0, 10).unwrap();
    assert_eq!(map.len(), 2);
    assert_eq!(map[1].len, 100);
    assert_eq!(fs.statfs().unwrap().used_bytes, (1 << 20) + 100);
    assert_eq!(code(fs.setattr(ROOT_INO, &set)), ErrorCode::IsDir);
}

#[test]
fn xattrs() {
    let (_d, fs) = fresh();
    let f = file(&fs, ROOT_INO, "f");
    fs.setxattr(f.ino, b"user.a", b"1", 0).unwrap();
    assert_eq!(
        code(fs.setxattr(f.ino, b"user.a", b"2", xattr_flags::CREATE)),
        ErrorCode::Exists
    );
    assert_eq!(
        code(fs.setxattr(f.ino, b"user.b", b"2", xattr_flags::REPLACE)),
        ErrorCode::NoXattr
    );
    fs.setxattr(f.ino, b"user.b", b"2", 0).unwrap();
    assert_eq!(fs.getxattr(f.ino, b"user.a").unwrap(), b"1");
    assert_eq!(
        fs.listxattr(f.ino).unwrap(),
        vec![b"user.a".to_vec(), b"user.b".to_vec()]
    );
    fs.removexattr(f.ino, b"user.a").unwrap();
    assert_eq!(code(fs.getxattr(f.ino, b"user.a")), ErrorCode::NoXattr);
    assert_eq!(code(fs.removexattr(f.ino, b"user.a")), ErrorCode::NoXattr);
}

#[test]
fn reopen_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.redb");
    let ino = {
        let (fs, _) = Fs::load(RedbStore::open(&path, true).unwrap(), volume()).unwrap();
        file(&fs, ROOT_INO, "kept").ino
    };
    let (fs, info) = Fs::load(RedbStore::open(&path, true).unwrap(), volume()).unwrap();
    assert_eq!(info, volume());
    assert_eq!(fs.lookup(ROOT_INO, b"kept").unwrap().ino, ino);
    // A different volume name on the same folder is refused with a hint.
    let other = VolumeInfo {
        name: "other".into(),
        ..volume()
    };
    drop(fs);
    let e = Fs::load(RedbStore::open(&path, true).unwrap(), other)
        .err()
        .unwrap();
    assert!(e.message.contains("--volume t"), "{}", e.message);
}
