//! Lookups a mount answers itself, from the names of folders it made and filled (crate
//! cairn_client::listings): they must agree with the server for this mount's own changes of
//! every kind, and another mount's changes must show within the entry TTL (1 s) and never turn
//! into a wrong error.

mod common;

use common::*;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
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
