//! The redo log: what a crash leaves on disk (copied while the store is still open, as a crash
//! would leave it) opens to every commit that returned.

use cairn_meta::fs::Fs;
use cairn_meta::store::{MetaStore, RedbStore};
use cairn_proto::*;
use std::path::Path;

fn volume() -> VolumeInfo {
    VolumeInfo {
        name: "t".into(),
        block_size: 1 << 20,
        compression: "none".into(),
        encrypted: false,
    }
}

const ME: Caller = Caller {
    uid: 0,
    gid: 0,
    pid: 1,
    umask: 0,
};

fn open(dir: &Path, sync: bool) -> Fs<RedbStore> {
    let store =
        RedbStore::open_logged(&dir.join("meta.redb"), &dir.join("meta.redo"), sync).unwrap();
    Fs::load(store, volume()).unwrap().0
}

/// Copy the database and its log as they are on disk now.
fn crash_copy(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    for f in ["meta.redb", "meta.redo"] {
        std::fs::copy(from.join(f), to.path().join(f)).unwrap();
    }
    to
}

fn mkdir(fs: &Fs<RedbStore>, name: &str) -> Ino {
    fs.mkdir(ROOT_INO, name.as_bytes(), 0o755, &ME).unwrap().ino
}

#[test]
fn synced_commits_survive_a_crash_before_any_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let fs = open(dir.path(), true);
    let inos: Vec<Ino> = (0..50).map(|i| mkdir(&fs, &format!("d{i}"))).collect();
    fs.rename(ROOT_INO, b"d0", ROOT_INO, b"renamed", 0).unwrap();
    fs.rmdir(ROOT_INO, b"d1").unwrap();
    let copy = crash_copy(dir.path());
    drop(fs);

    let back = open(copy.path(), true);
    assert_eq!(back.lookup(ROOT_INO, b"renamed").unwrap().ino, inos[0]);
    assert_eq!(
        back.lookup(ROOT_INO, b"d1").unwrap_err().code,
        ErrorCode::NotFound
    );
    for (i, ino) in inos.iter().enumerate().skip(2) {
        assert_eq!(
            back.lookup(ROOT_INO, format!("d{i}").as_bytes())
                .unwrap()
                .ino,
            *ino
        );
    }
    // New inodes after the restart never reuse a number handed out before it.
    let fresh = mkdir(&back, "after");
    assert!(inos.iter().all(|i| *i < fresh));
}

/// Without `sync`, a killed process loses nothing: its records are in the page cache, which is
/// what a copy reads.
#[test]
fn unsynced_mode_loses_nothing_when_only_the_process_dies() {
    let dir = tempfile::tempdir().unwrap();
    let fs = open(dir.path(), false);
    mkdir(&fs, "flushed");
    fs.store().flush().unwrap();
    mkdir(&fs, "later");
    let copy = crash_copy(dir.path());
    drop(fs);
    let back = open(copy.path(), false);
    assert!(back.lookup(ROOT_INO, b"flushed").is_ok());
    assert!(back.lookup(ROOT_INO, b"later").is_ok());
}

#[test]
fn replay_is_idempotent_across_repeated_crashes_and_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let mut path = dir.path().to_path_buf();
    let mut keep = Vec::new();
    let mut expect: Vec<Vec<u8>> = Vec::new();
    for round in 0..4 {
        let fs = open(&path, true);
        for name in &expect {
            assert!(
                fs.lookup(ROOT_INO, name).is_ok(),
                "round {round}: {} lost",
                String::from_utf8_lossy(name)
            );
        }
        for i in 0..20 {
            let n = format!("r{round}-{i}");
            mkdir(&fs, &n);
            expect.push(n.into_bytes());
        }
        if round % 2 == 1 {
            // A checkpoint in the middle: the log starts over behind the database.
            std::thread::sleep(std::time::Duration::from_millis(2100));
            fs.store().flush().unwrap();
            let n = format!("r{round}-after-checkpoint");
            mkdir(&fs, &n);
            expect.push(n.into_bytes());
        }
        let copy = crash_copy(&path);
        drop(fs);
        path = copy.path().to_path_buf();
        keep.push(copy);
    }
    let fs = open(&path, true);
    for name in &expect {
        assert!(fs.lookup(ROOT_INO, name).is_ok());
    }
}

#[test]
fn a_log_that_does_not_continue_the_database_is_refused() {
    // A log that was started over after a checkpoint: its records begin well past 1.
    let a = tempfile::tempdir().unwrap();
    let fs = open(a.path(), true);
    for i in 0..5 {
        mkdir(&fs, &format!("a{i}"));
    }
    std::thread::sleep(std::time::Duration::from_millis(2100));
    fs.store().flush().unwrap();
    for i in 5..8 {
        mkdir(&fs, &format!("a{i}"));
    }
    let a_copy = crash_copy(a.path());
    drop(fs);
    // A young database beside that log, as if meta.redb had been swapped by hand.
    let c = tempfile::tempdir().unwrap();
    drop(open(c.path(), true));
    std::fs::copy(a_copy.path().join("meta.redo"), c.path().join("meta.redo")).unwrap();
    let err = RedbStore::open_logged(
        &c.path().join("meta.redb"),
        &c.path().join("meta.redo"),
        true,
    )
    .err()
    .expect("a foreign log is refused");
    assert!(err.0.contains("does not continue"), "{}", err.0);
    // The right database with its log opens and holds everything.
    let back = open(a_copy.path(), true);
    for i in 0..8 {
        assert!(back.lookup(ROOT_INO, format!("a{i}").as_bytes()).is_ok());
    }
}
