//! The namespace through a real FUSE mount: rename (plain, NOREPLACE, EXCHANGE), hard links,
//! symlinks, xattrs, chmod and chown, mkdir and rmdir, and large directory listings.

mod common;

use common::*;
use std::collections::HashSet;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

fn put(p: &Path, data: &[u8]) {
    fs::write(p, data).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
}

fn get(p: &Path) -> Vec<u8> {
    fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// Rename within a folder, across folders, over an existing file (which is replaced by the
/// source's contents), and of a non-empty folder; all still true after a remount.
#[test]
fn rename_within_and_across_directories() {
    let Some(mut c) = s3_cluster() else { return };
    let r = c.path().to_path_buf();
    fs::create_dir_all(r.join("a/sub")).expect("mkdir a/sub");
    fs::create_dir(r.join("b")).expect("mkdir b");
    let big = random_bytes(1, 5 << 20);
    put(&r.join("a/one"), b"one");
    put(&r.join("a/big"), &big);
    put(&r.join("b/target"), b"old target contents");
    put(&r.join("a/sub/deep"), b"deep");

    fs::rename(r.join("a/one"), r.join("a/uno")).expect("rename within a folder");
    assert_errno(fs::metadata(r.join("a/one")), libc::ENOENT, "old name");
    assert_eq!(get(&r.join("a/uno")), b"one");

    fs::rename(r.join("a/big"), r.join("b/big")).expect("rename across folders");
    assert_eq!(get(&r.join("b/big")), big);
    assert_eq!(list(&r.join("a")), vec!["sub", "uno"]);

    let ino = fs::metadata(r.join("a/uno")).expect("stat").ino();
    fs::rename(r.join("a/uno"), r.join("b/target")).expect("rename over an existing file");
    assert_eq!(
        get(&r.join("b/target")),
        b"one",
        "target has the source's contents"
    );
    assert_eq!(
        fs::metadata(r.join("b/target")).expect("stat").ino(),
        ino,
        "target is the source's inode"
    );
    assert_errno(
        fs::metadata(r.join("a/uno")),
        libc::ENOENT,
        "source name after rename over",
    );
    assert_eq!(list(&r.join("b")), vec!["big", "target"]);

    fs::rename(r.join("a/sub"), r.join("b/moved"))
        .expect("rename a non-empty folder across folders");
    assert_eq!(get(&r.join("b/moved/deep")), b"deep");
    assert_eq!(
        fs::metadata(r.join("b")).expect("stat b").nlink(),
        3,
        "b's nlink counts the moved folder"
    );
    assert_eq!(
        fs::metadata(r.join("a")).expect("stat a").nlink(),
        2,
        "a's nlink after its subfolder left"
    );

    // A folder cannot move into itself; a non-empty folder cannot be replaced.
    assert_errno(
        fs::rename(r.join("b"), r.join("b/moved/inside")),
        libc::EINVAL,
        "rename into own subtree",
    );
    fs::create_dir(r.join("a/full")).expect("mkdir");
    put(&r.join("a/full/f"), b"f");
    assert_errno(
        fs::rename(r.join("b/moved"), r.join("a/full")),
        libc::ENOTEMPTY,
        "rename over non-empty folder",
    );
    fs::create_dir(r.join("a/empty")).expect("mkdir");
    fs::rename(r.join("b/moved"), r.join("a/empty")).expect("rename over an empty folder");
    assert_eq!(get(&r.join("a/empty/deep")), b"deep");

    c.remount();
    assert_eq!(list(c.path()), vec!["a", "b"]);
    assert_eq!(list(&c.join("a")), vec!["empty", "full"]);
    assert_eq!(list(&c.join("b")), vec!["big", "target"]);
    assert_eq!(get(&c.join("b/big")), big);
    assert_eq!(get(&c.join("b/target")), b"one");
    assert_eq!(get(&c.join("a/empty/deep")), b"deep");
}

/// renameat2 RENAME_NOREPLACE fails with EEXIST over an existing name and leaves both alone;
/// RENAME_EXCHANGE swaps two names atomically, also across folders and between a file and a folder.
#[test]
fn renameat2_noreplace_and_exchange() {
    let Some(mut c) = s3_cluster() else { return };
    let r = c.path().to_path_buf();
    fs::create_dir(r.join("d")).expect("mkdir d");
    put(&r.join("x"), b"xxx");
    put(&r.join("y"), b"yyyyyy");

    assert_errno(
        renameat2(&r.join("x"), &r.join("y"), RENAME_NOREPLACE),
        libc::EEXIST,
        "NOREPLACE over y",
    );
    assert_eq!(get(&r.join("x")), b"xxx");
    assert_eq!(get(&r.join("y")), b"yyyyyy");
    renameat2(&r.join("x"), &r.join("d/x2"), RENAME_NOREPLACE).expect("NOREPLACE to a free name");
    assert_eq!(get(&r.join("d/x2")), b"xxx");
    assert_errno(
        fs::metadata(r.join("x")),
        libc::ENOENT,
        "source after NOREPLACE",
    );

    renameat2(&r.join("d/x2"), &r.join("y"), RENAME_EXCHANGE).expect("EXCHANGE across folders");
    assert_eq!(get(&r.join("y")), b"xxx", "y after exchange");
    assert_eq!(get(&r.join("d/x2")), b"yyyyyy", "d/x2 after exchange");

    fs::create_dir(r.join("e")).expect("mkdir e");
    put(&r.join("e/inside"), b"in e");
    renameat2(&r.join("e"), &r.join("y"), RENAME_EXCHANGE).expect("EXCHANGE a folder and a file");
    assert!(fs::metadata(r.join("y")).expect("stat y").is_dir());
    assert_eq!(get(&r.join("y/inside")), b"in e");
    assert_eq!(get(&r.join("e")), b"xxx");

    assert_errno(
        renameat2(&r.join("e"), &r.join("missing"), RENAME_EXCHANGE),
        libc::ENOENT,
        "EXCHANGE with a missing name",
    );
    assert_errno(
        renameat2(
            &r.join("e"),
            &r.join("y"),
            RENAME_EXCHANGE | RENAME_NOREPLACE,
        ),
        libc::EINVAL,
        "EXCHANGE|NOREPLACE",
    );

    c.remount();
    let r = c.path();
    assert_eq!(get(&r.join("e")), b"xxx");
    assert_eq!(get(&r.join("y/inside")), b"in e");
    assert_eq!(get(&r.join("d/x2")), b"yyyyyy");
}

/// Hard links share data and inode; nlink counts names; unlinking one keeps the other.
#[test]
fn hard_links_share_data() {
    let Some(mut c) = s3_cluster() else { return };
    let r = c.path().to_path_buf();
    fs::create_dir(r.join("other")).expect("mkdir");
    put(&r.join("orig"), b"version 1");
    fs::hard_link(r.join("orig"), r.join("other/link")).expect("link");
    let (a, b) = (
        fs::metadata(r.join("orig")).expect("stat"),
        fs::metadata(r.join("other/link")).expect("stat"),
    );
    assert_eq!(a.ino(), b.ino(), "same inode");
    assert_eq!(a.nlink(), 2);

    let data = random_bytes(2, (4 << 20) + 10);
    put(&r.join("other/link"), &data);
    assert_eq!(
        get(&r.join("orig")),
        data,
        "write through one name, read through the other"
    );

    fs::hard_link(r.join("orig"), r.join("third")).expect("second link");
    assert_eq!(fs::metadata(r.join("orig")).expect("stat").nlink(), 3);
    assert_errno(
        fs::hard_link(r.join("orig"), r.join("third")),
        libc::EEXIST,
        "link over an existing name",
    );
    assert_errno(
        fs::hard_link(r.join("other"), r.join("dirlink")),
        libc::EPERM,
        "hard link to a folder",
    );

    fs::remove_file(r.join("orig")).expect("unlink orig");
    assert_eq!(fs::metadata(r.join("other/link")).expect("stat").nlink(), 2);
    assert_eq!(
        get(&r.join("other/link")),
        data,
        "data stays after unlinking one name"
    );

    c.remount();
    let r = c.path();
    assert_eq!(fs::metadata(r.join("third")).expect("stat").nlink(), 2);
    assert_eq!(get(&r.join("third")), data);
    fs::remove_file(r.join("third")).expect("unlink third");
    assert_eq!(fs::metadata(r.join("other/link")).expect("stat").nlink(), 1);
    assert_eq!(get(&r.join("other/link")), data);
}

/// Symlinks: readlink gives the target verbatim; opening follows it (relative, absolute, to a
/// folder); lstat sees the link; a dangling link fails with ENOENT.
#[test]
fn symlinks_readlink_and_follow() {
    let Some(mut c) = s3_cluster() else { return };
    let r = c.path().to_path_buf();
    fs::create_dir(r.join("dir")).expect("mkdir");
    put(&r.join("dir/file"), b"target data");
    std::os::unix::fs::symlink("dir/file", r.join("rel")).expect("symlink relative");
    std::os::unix::fs::symlink(r.join("dir/file"), r.join("abs")).expect("symlink absolute");
    std::os::unix::fs::symlink("dir", r.join("dirlink")).expect("symlink to folder");
    std::os::unix::fs::symlink("nowhere/at/all", r.join("dangling")).expect("dangling symlink");
    let long_target = "x".repeat(1000);
    std::os::unix::fs::symlink(&long_target, r.join("long")).expect("symlink with a long target");

    assert_eq!(
        fs::read_link(r.join("rel")).expect("readlink"),
        Path::new("dir/file")
    );
    assert_eq!(
        fs::read_link(r.join("abs")).expect("readlink"),
        r.join("dir/file")
    );
    assert_eq!(
        fs::read_link(r.join("long")).expect("readlink").to_str(),
        Some(long_target.as_str())
    );
    assert_eq!(get(&r.join("rel")), b"target data");
    assert_eq!(get(&r.join("abs")), b"target data");
    assert_eq!(get(&r.join("dirlink/file")), b"target data");
    assert!(fs::symlink_metadata(r.join("rel"))
        .expect("lstat")
        .file_type()
        .is_symlink());
    assert_eq!(
        fs::symlink_metadata(r.join("rel")).expect("lstat").len(),
        8,
        "a symlink's size is its target's length"
    );
    assert_errno(
        fs::read(r.join("dangling")),
        libc::ENOENT,
        "open through a dangling link",
    );
    assert_errno(
        fs::read_link(r.join("dir/file")),
        libc::EINVAL,
        "readlink of a regular file",
    );

    // Writing through the link changes the target.
    put(&r.join("rel"), b"changed via link");
    assert_eq!(get(&r.join("dir/file")), b"changed via link");

    c.remount();
    let r = c.path();
    assert_eq!(
        fs::read_link(r.join("rel")).expect("readlink"),
        Path::new("dir/file")
    );
    assert_eq!(
        fs::read_link(r.join("dangling")).expect("readlink"),
        Path::new("nowhere/at/all")
    );
    assert_eq!(get(&r.join("dirlink/file")), b"changed via link");
}

/// Extended attributes: set, get, list, replace, remove, the CREATE and REPLACE flags, and
/// persistence across a remount.
#[test]
fn xattrs_set_get_list_remove() {
    let Some(mut c) = s3_cluster() else { return };
    let f = c.join("f");
    put(&f, b"data");
    let d = c.join("d");
    fs::create_dir(&d).expect("mkdir");

    setxattr(&f, "user.color", b"blue", 0).expect("setxattr");
    setxattr(&f, "user.empty", b"", 0).expect("setxattr empty value");
    let big = random_bytes(3, 4000);
    setxattr(&f, "user.big", &big, 0).expect("setxattr 4000 bytes");
    setxattr(&d, "user.on-dir", b"yes", 0).expect("setxattr on a folder");

    assert_eq!(getxattr(&f, "user.color").expect("getxattr"), b"blue");
    assert_eq!(getxattr(&f, "user.empty").expect("getxattr"), b"");
    assert_eq!(getxattr(&f, "user.big").expect("getxattr"), big);
    assert_eq!(getxattr(&d, "user.on-dir").expect("getxattr"), b"yes");
    let mut names = listxattr(&f).expect("listxattr");
    names.retain(|n| n.starts_with("user."));
    names.sort();
    assert_eq!(names, vec!["user.big", "user.color", "user.empty"]);

    assert_errno(
        setxattr(&f, "user.color", b"red", libc::XATTR_CREATE),
        libc::EEXIST,
        "XATTR_CREATE on existing",
    );
    assert_errno(
        setxattr(&f, "user.nope", b"x", libc::XATTR_REPLACE),
        libc::ENODATA,
        "XATTR_REPLACE on missing",
    );
    setxattr(&f, "user.color", b"red", libc::XATTR_REPLACE).expect("XATTR_REPLACE");
    assert_eq!(getxattr(&f, "user.color").expect("getxattr"), b"red");

    removexattr(&f, "user.empty").expect("removexattr");
    assert_errno(
        getxattr(&f, "user.empty"),
        libc::ENODATA,
        "getxattr after remove",
    );
    assert_errno(
        removexattr(&f, "user.empty"),
        libc::ENODATA,
        "removexattr twice",
    );
    assert_errno(
        getxattr(&f, "user.never"),
        libc::ENODATA,
        "getxattr of a name never set",
    );

    // A small buffer gets ERANGE.
    let cp = cpath(&f);
    let name = std::ffi::CString::new("user.color").expect("name");
    let mut small = [0u8; 1];
    // SAFETY: valid pointers; the buffer is 1 byte long, as passed.
    let rc = unsafe { libc::getxattr(cp.as_ptr(), name.as_ptr(), small.as_mut_ptr().cast(), 1) };
    assert_eq!(rc, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::ERANGE),
        "getxattr into a small buffer"
    );

    c.remount();
    let f = c.join("f");
    assert_eq!(
        getxattr(&f, "user.color").expect("getxattr after remount"),
        b"red"
    );
    assert_eq!(
        getxattr(&f, "user.big").expect("getxattr after remount"),
        big
    );
    assert_errno(
        getxattr(&f, "user.empty"),
        libc::ENODATA,
        "removed xattr after remount",
    );
    assert_eq!(
        getxattr(&c.join("d"), "user.on-dir").expect("getxattr after remount"),
        b"yes"
    );
}

/// chmod and chown show in stat (also from a fresh client); chmod also works on folders and
/// through an open descriptor.
#[test]
fn chmod_and_chown_show_in_stat() {
    let Some(mut c) = local_cluster() else { return };
    let f = c.join("f");
    put(&f, b"x");
    let d = c.join("d");
    fs::create_dir(&d).expect("mkdir");

    fs::set_permissions(&f, fs::Permissions::from_mode(0o640)).expect("chmod 640");
    assert_eq!(fs::metadata(&f).expect("stat").mode() & 0o7777, 0o640);
    fs::set_permissions(&d, fs::Permissions::from_mode(0o1750)).expect("chmod dir 1750");
    let md = fs::metadata(&d).expect("stat");
    assert_eq!(md.mode() & 0o7777, 0o1750);
    assert!(md.is_dir());
    let fh = File::open(&f).expect("open");
    fh.set_permissions(fs::Permissions::from_mode(0o604))
        .expect("fchmod");
    drop(fh);
    assert_eq!(fs::metadata(&f).expect("stat").mode() & 0o7777, 0o604);

    let ctime = fs::metadata(&f).expect("stat").ctime();
    std::os::unix::fs::chown(&f, Some(1234), Some(5678)).expect("chown");
    let md = fs::metadata(&f).expect("stat");
    assert_eq!((md.uid(), md.gid()), (1234, 5678));
    assert!(md.ctime() >= ctime, "ctime must not go back on chown");
    std::os::unix::fs::chown(&f, None, Some(42)).expect("chgrp only");
    let md = fs::metadata(&f).expect("stat");
    assert_eq!((md.uid(), md.gid()), (1234, 42));
    std::os::unix::fs::chown(&d, Some(7), Some(8)).expect("chown dir");

    // A new file belongs to its creator (root here) with the mode asked for, less the umask.
    let mut g = fs::OpenOptions::new();
    std::os::unix::fs::OpenOptionsExt::mode(g.write(true).create_new(true), 0o600);
    g.open(c.join("g"))
        .expect("create 0600")
        .write_all(b"g")
        .expect("write");
    let md = fs::metadata(c.join("g")).expect("stat");
    assert_eq!((md.uid(), md.gid(), md.mode() & 0o777), (0, 0, 0o600));

    c.remount();
    let md = fs::metadata(c.join("f")).expect("stat");
    assert_eq!((md.uid(), md.gid(), md.mode() & 0o7777), (1234, 42, 0o604));
    let md = fs::metadata(c.join("d")).expect("stat");
    assert_eq!((md.uid(), md.gid(), md.mode() & 0o7777), (7, 8, 0o1750));
}

/// mkdir, EEXIST, ENOTEMPTY on a non-empty folder, ENOTDIR, rmdir, and nlink of folders.
#[test]
fn mkdir_rmdir() {
    let Some(c) = s3_cluster() else { return };
    let r = c.path().to_path_buf();
    fs::create_dir_all(r.join("p/q/r")).expect("mkdir -p");
    assert!(fs::metadata(r.join("p/q/r")).expect("stat").is_dir());
    assert_errno(fs::create_dir(r.join("p")), libc::EEXIST, "mkdir existing");
    assert_errno(
        fs::create_dir(r.join("missing/child")),
        libc::ENOENT,
        "mkdir under a missing parent",
    );
    put(&r.join("p/file"), b"f");
    assert_errno(
        fs::create_dir(r.join("p/file/x")),
        libc::ENOTDIR,
        "mkdir under a file",
    );
    assert_eq!(
        fs::metadata(r.join("p")).expect("stat").nlink(),
        3,
        "nlink of p (., its entry, q/..)"
    );

    assert_errno(
        fs::remove_dir(r.join("p")),
        libc::ENOTEMPTY,
        "rmdir non-empty",
    );
    assert_errno(
        fs::remove_dir(r.join("p/file")),
        libc::ENOTDIR,
        "rmdir a file",
    );
    assert_errno(
        fs::remove_file(r.join("p/q")),
        libc::EISDIR,
        "unlink a folder",
    );
    fs::remove_dir(r.join("p/q/r")).expect("rmdir r");
    assert_errno(
        fs::metadata(r.join("p/q/r")),
        libc::ENOENT,
        "stat after rmdir",
    );
    assert_errno(fs::remove_dir(r.join("p/q/r")), libc::ENOENT, "rmdir twice");
    fs::remove_dir(r.join("p/q")).expect("rmdir q");
    assert_eq!(fs::metadata(r.join("p")).expect("stat").nlink(), 2);
    fs::remove_file(r.join("p/file")).expect("unlink");
    fs::remove_dir(r.join("p")).expect("rmdir p");
    assert!(list(&r).is_empty());

    // A folder can be made again under the same name, empty.
    fs::create_dir(r.join("p")).expect("mkdir again");
    assert!(list(&r.join("p")).is_empty());
}

fn long_name(i: usize) -> String {
    // Long names make each getdents buffer hold few entries, so a listing takes many calls.
    format!("{i:05}-{}", "n".repeat(150))
}

/// A folder of 1,000 entries lists completely, with no duplicates, in one mount and in another.
#[test]
fn readdir_1000_entries_complete() {
    let Some(c) = s3_cluster() else { return };
    let d = c.join("big");
    fs::create_dir(&d).expect("mkdir");
    let mut want: Vec<String> = (0..1000).map(long_name).collect();
    for (i, n) in want.iter().enumerate() {
        if i % 100 == 0 {
            fs::create_dir(d.join(n)).expect("mkdir entry");
        } else {
            File::create(d.join(n)).expect("create entry");
        }
    }
    want.sort();
    for when in ["first listing", "second listing"] {
        let got = list(&d);
        let unique: HashSet<&String> = got.iter().collect();
        assert_eq!(unique.len(), got.len(), "{when}: duplicates in the listing");
        assert_eq!(got.len(), 1000, "{when}: entries listed");
        assert!(
            got == want,
            "{when}: listing differs from the names created"
        );
    }
    let m2 = c.new_mount();
    assert!(list(&m2.join("big")) == want, "listing in a second mount");
    drop(m2);
}

/// While entries are deleted during a listing, no entry appears twice, none that was never
/// deleted is missed, and only names that existed show up.
#[test]
fn readdir_while_deleting_has_no_duplicates() {
    let Some(c) = s3_cluster() else { return };
    let d = c.join("churn");
    fs::create_dir(&d).expect("mkdir");
    let all: Vec<String> = (0..1000).map(long_name).collect();
    for n in &all {
        File::create(d.join(n)).expect("create");
    }
    let mut seen = Vec::new();
    let mut deleted = HashSet::new();
    let mut it = fs::read_dir(&d).expect("opendir");
    for _ in 0..150 {
        let e = it.next().expect("entry").expect("readdir");
        seen.push(e.file_name().to_string_lossy().into_owned());
    }
    // Delete every third name, seen or not yet seen.
    for (i, n) in all.iter().enumerate() {
        if i % 3 == 0 {
            fs::remove_file(d.join(n)).expect("unlink during listing");
            deleted.insert(n.clone());
        }
    }
    for e in it {
        seen.push(
            e.expect("readdir")
                .file_name()
                .to_string_lossy()
                .into_owned(),
        );
    }
    let mut dup = HashSet::new();
    let twice: Vec<&String> = seen.iter().filter(|n| !dup.insert(*n)).collect();
    assert!(
        twice.is_empty(),
        "entries listed twice: {:?}",
        &twice[..twice.len().min(5)]
    );
    let known: HashSet<&String> = all.iter().collect();
    let unknown: Vec<&String> = seen.iter().filter(|n| !known.contains(n)).collect();
    assert!(unknown.is_empty(), "names never created: {unknown:?}");
    let seen_set: HashSet<&String> = seen.iter().collect();
    let missed: Vec<&String> = all
        .iter()
        .filter(|n| !deleted.contains(*n) && !seen_set.contains(n))
        .collect();
    assert!(
        missed.is_empty(),
        "{} surviving entries were not listed, e.g. {:?}",
        missed.len(),
        missed.first()
    );
    assert_eq!(
        list(&d).len(),
        1000 - deleted.len(),
        "listing after the deletions"
    );
}
