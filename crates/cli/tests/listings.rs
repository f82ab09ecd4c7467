//! Lookups a mount answers itself, from the names of folders it made and filled (crate
//! cairn_client::listings) and the attributes of files it last had (crate
//! cairn_client::known_attrs): they must agree with the server for this mount's own changes of
//! every kind, and another mount's changes must show within the entry TTL (1 s) and never turn
//! into a wrong error or wrong data.

mod common;

use common::*;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

fn exists(p: &Path) -> bool {
    match fs::symlink_metadata(p) {
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => panic!("stat {}: {e}", p.display()),
    }
}

/// Every change this mount makes in a folder it made is reflected in the answers it gives
/// itself: names appear when made and disappear when removed, renamed (plain and exchange),
/// linked and symlinked; and the same names answer the same way in a second mount.
#[test]
fn this_mounts_changes_show_in_its_own_answers() {
    let Some(c) = local_cluster() else { return };
    let d = c.join("made");
    fs::create_dir(&d).expect("mkdir");
    assert!(!exists(&d.join("a")), "a before it is made");

    File::create(d.join("a")).expect("create a");
    assert!(exists(&d.join("a")), "a after create");
    fs::rename(d.join("a"), d.join("b")).expect("rename a b");
    assert!(!exists(&d.join("a")), "a after rename to b");
    assert!(exists(&d.join("b")), "b after rename from a");

    fs::hard_link(d.join("b"), d.join("h")).expect("link");
    assert!(exists(&d.join("h")), "hard link");
    std::os::unix::fs::symlink("b", d.join("s")).expect("symlink");
    assert!(exists(&d.join("s")), "symlink");
    fs::create_dir(d.join("sub")).expect("mkdir sub");
    assert!(exists(&d.join("sub")), "subfolder");
    assert!(!exists(&d.join("sub/x")), "a name in the new subfolder");
    File::create(d.join("sub/x")).expect("create sub/x");
    assert!(exists(&d.join("sub/x")), "sub/x after create");

    // Exchange: both names stay.
    File::create(d.join("e")).expect("create e");
    renameat2(&d.join("b"), &d.join("e"), libc::RENAME_EXCHANGE).expect("exchange b e");
    assert!(
        exists(&d.join("b")) && exists(&d.join("e")),
        "both names after exchange"
    );
    // Across folders.
    fs::rename(d.join("e"), d.join("sub/e")).expect("rename into sub");
    assert!(!exists(&d.join("e")), "e after moving it out");
    assert!(exists(&d.join("sub/e")), "sub/e after moving it in");

    fs::remove_file(d.join("b")).expect("unlink b");
    assert!(!exists(&d.join("b")), "b after unlink");
    File::create(d.join("b")).expect("create b again");
    assert!(exists(&d.join("b")), "b made again");
    fs::remove_file(d.join("sub/x")).expect("unlink sub/x");
    fs::remove_file(d.join("sub/e")).expect("unlink sub/e");
    fs::remove_dir(d.join("sub")).expect("rmdir sub");
    assert!(!exists(&d.join("sub")), "sub after rmdir");
    fs::create_dir(d.join("sub")).expect("mkdir sub again");
    assert!(exists(&d.join("sub")), "sub made again");

    let mut want = vec!["b", "h", "s", "sub"];
    want.sort();
    assert_eq!(list(&d), want, "listing in this mount");
    let m2 = c.new_mount();
    assert_eq!(list(&m2.join("made")), want, "listing in a second mount");
    for n in ["a", "e"] {
        assert!(!exists(&m2.join("made").join(n)), "{n} in a second mount");
    }
}

/// A name another mount makes in a folder this mount made shows here within the entry TTL,
/// and opening it with O_CREAT (without O_EXCL) opens the file the other mount made instead of
/// failing with EEXIST, even while this mount still takes the name for free.
#[test]
fn another_mounts_names_show_and_o_creat_opens_them() {
    let Some(c) = local_cluster() else { return };
    let m2 = c.new_mount();
    let here = c.join("shared");
    let there = m2.join("shared");
    fs::create_dir(&here).expect("mkdir here");
    assert!(!exists(&here.join("log")), "log before anyone makes it");

    // The other mount makes files; this one at once opens them as a program appending to a
    // shared log would, and truncates another.
    fs::write(there.join("log"), b"first\n").expect("write log there");
    fs::write(there.join("big"), b"0123456789").expect("write big there");
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(here.join("log"))
        .expect("open(O_CREAT|O_APPEND) of a file another mount made");
    log.write_all(b"second\n").expect("append here");
    drop(log);
    let t = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(here.join("big"))
        .expect("open(O_CREAT|O_TRUNC) of a file another mount made");
    drop(t);
    assert_eq!(
        fs::read(there.join("log")).expect("read log there"),
        b"first\nsecond\n",
        "the log holds both lines"
    );
    assert_eq!(
        fs::metadata(there.join("big"))
            .expect("stat big there")
            .len(),
        0,
        "O_TRUNC truncated the other mount's file"
    );

    // O_EXCL still refuses.
    fs::write(there.join("excl"), b"x").expect("write excl there");
    assert_errno(
        OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o644)
            .open(here.join("excl")),
        libc::EEXIST,
        "O_CREAT|O_EXCL of a name another mount made",
    );

    // A name made there while this mount has not looked: visible here within about the TTL.
    let before = Instant::now();
    fs::write(there.join("late"), b"y").expect("write late there");
    while !exists(&here.join("late")) {
        assert!(
            before.elapsed() < Duration::from_secs(5),
            "a name another mount made is still missing here after 5 s (the entry TTL is 1 s)"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // And a removal there: gone here within about the TTL too.
    fs::remove_file(there.join("late")).expect("unlink late there");
    let before = Instant::now();
    while exists(&here.join("late")) {
        assert!(
            before.elapsed() < Duration::from_secs(5),
            "a name another mount removed is still here after 5 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A folder this mount did not make becomes known by listing it whole (over several answers of
/// the server and several kernel buffers): every name listed is then found, a name not listed
/// is absent, and a name another mount adds later shows within about the TTL.
#[test]
fn a_whole_listing_teaches_a_folders_names() {
    let Some(c) = local_cluster() else { return };
    let m2 = c.new_mount();
    let there = m2.join("theirs");
    fs::create_dir(&there).expect("mkdir there");
    let names: Vec<String> = (0..1500)
        .map(|i| format!("{i:05}-{}", "x".repeat(60)))
        .collect();
    for n in &names {
        File::create(there.join(n)).expect("create there");
    }
    let here = c.join("theirs");
    let mut want = names.clone();
    want.sort();
    assert_eq!(list(&here), want, "listing here");
    // Past the kernel's TTL for the entries the listing gave it: the lookups reach the mount.
    std::thread::sleep(Duration::from_millis(1200));
    for n in &names {
        assert!(exists(&here.join(n)), "{n}, listed, is found here");
    }
    assert!(!exists(&here.join("missing")), "a name not listed");
    File::create(there.join("new")).expect("create new there");
    let before = Instant::now();
    while !exists(&here.join("new")) {
        assert!(
            before.elapsed() < Duration::from_secs(5),
            "a name another mount made after the listing is still missing here after 5 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The kernel's entries and attributes expire after 1 s; then its lookups of known files reach
/// the mount, which answers them itself.
fn past_the_ttl() {
    std::thread::sleep(Duration::from_millis(1200));
}

fn append(p: &Path, bytes: &[u8]) {
    OpenOptions::new()
        .append(true)
        .open(p)
        .and_then(|mut w| w.write_all(bytes))
        .unwrap_or_else(|e| panic!("append to {}: {e}", p.display()));
}

fn truncate(p: &Path, len: u64) {
    OpenOptions::new()
        .write(true)
        .open(p)
        .and_then(|w| w.set_len(len))
        .unwrap_or_else(|e| panic!("truncate {}: {e}", p.display()));
}

fn size_and_mode(p: &Path) -> (u64, u32) {
    let m = fs::metadata(p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display()));
    (m.len(), m.permissions().mode() & 0o7777)
}

/// A file this mount made, looked up again after the kernel forgot it, shows what every change
/// since made of it: this mount's writes, truncates, chmods and renames at once, and another
/// mount's within the TTL, in `stat` and in the bytes read (a size this mount knew from before
/// another mount grew or cut the file never shortens or pads what is read).
#[test]
fn files_looked_up_again_show_every_change() {
    let Some(c) = local_cluster() else { return };
    let m2 = c.new_mount();
    let d = c.join("kept");
    fs::create_dir(&d).expect("mkdir");
    let f = d.join("f");
    let there = m2.join("kept/f");

    // This mount's own changes.
    fs::write(&f, b"hello").expect("write");
    past_the_ttl();
    assert_eq!(size_and_mode(&f).0, 5, "size after this mount's write");
    fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).expect("chmod");
    past_the_ttl();
    assert_eq!(size_and_mode(&f), (5, 0o600), "after this mount's chmod");
    append(&f, b" world");
    past_the_ttl();
    assert_eq!(fs::read(&f).expect("read"), b"hello world");
    truncate(&f, 3);
    past_the_ttl();
    assert_eq!(
        fs::read(&f).expect("read"),
        b"hel",
        "after this mount's truncate"
    );
    fs::rename(&f, d.join("g")).expect("rename");
    past_the_ttl();
    assert!(!exists(&f), "f after the rename");
    assert_eq!(
        size_and_mode(&d.join("g")),
        (3, 0o600),
        "g after the rename"
    );
    fs::rename(d.join("g"), &f).expect("rename back");
    past_the_ttl();

    // Another mount's: grown, then cut, then chmod.
    append(&there, b"p me, please");
    past_the_ttl();
    assert_eq!(
        fs::read(&f).expect("read"),
        b"help me, please",
        "bytes another mount appended"
    );
    assert_eq!(size_and_mode(&f).0, 15, "size another mount grew");
    past_the_ttl();
    truncate(&there, 4);
    fs::set_permissions(&there, fs::Permissions::from_mode(0o640)).expect("chmod there");
    past_the_ttl();
    assert_eq!(
        size_and_mode(&f),
        (4, 0o640),
        "another mount's truncate and chmod"
    );
    assert_eq!(
        fs::read(&f).expect("read"),
        b"help",
        "another mount's truncate"
    );

    // A hard link made elsewhere by the other mount: the link count is not taken from before.
    fs::hard_link(&there, m2.join("kept2")).expect("link there");
    past_the_ttl();
    assert_eq!(
        std::os::unix::fs::MetadataExt::nlink(&fs::metadata(&f).expect("stat")),
        2,
        "a link another mount made"
    );

    // Removed here, gone here; removed there, gone here within the TTL.
    fs::write(d.join("h"), b"x").expect("write h");
    past_the_ttl();
    fs::remove_file(d.join("h")).expect("unlink h");
    assert!(!exists(&d.join("h")), "h after unlink");
    fs::remove_file(&there).expect("unlink there");
    past_the_ttl();
    assert!(!exists(&f), "f another mount removed");
}
