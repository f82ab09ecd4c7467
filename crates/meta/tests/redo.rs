//! The redo log: what a crash leaves on disk (copied while the store is still open, as a crash
//! would leave it) opens to every commit that returned.

use cairn_meta::fs::Fs;
use cairn_meta::keys::{k2, REDO_CHECKPOINT};
use cairn_meta::redo::RedoLog;
use cairn_meta::store::{Checkpoint, MetaStore, RedbStore, StoreError, Table};
use cairn_proto::*;
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

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
            fs.store().checkpoint(Checkpoint::Periodic).unwrap();
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
    // What the server's flush does once the checkpoint interval has passed.
    fs.store().checkpoint(Checkpoint::Periodic).unwrap();
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

/// Copy the database file of `dir` alone and open it without its log: what checkpoints wrote.
fn db_file_only(dir: &Path) -> (tempfile::TempDir, RedbStore) {
    let only = tempfile::tempdir().unwrap();
    std::fs::copy(dir.join("meta.redb"), only.path().join("meta.redb")).unwrap();
    let db = RedbStore::open(&only.path().join("meta.redb"), false).unwrap();
    (only, db)
}

/// Which of `names` (entries of the root) the database file of `dir` holds on its own.
fn in_db_file(dir: &Path, names: &[String]) -> Vec<bool> {
    let (_only, db) = db_file_only(dir);
    db.read(|t| {
        names
            .iter()
            .map(|n| {
                Ok(t.get(Table::Dentries, &k2(ROOT_INO, n.as_bytes()))?
                    .is_some())
            })
            .collect::<Result<Vec<_>, StoreError>>()
    })
    .unwrap()
}

/// The last log record the database file of `dir` holds, and the number of the first record
/// in its log.
fn checkpoint_and_log_start(dir: &Path) -> (u64, Option<u64>) {
    let (_only, db) = db_file_only(dir);
    let v = db
        .read(|t| t.get(Table::Super, REDO_CHECKPOINT))
        .unwrap()
        .map_or(0, |v| u64::from_be_bytes(v.try_into().unwrap()));
    let log = tempfile::tempdir().unwrap();
    std::fs::copy(dir.join("meta.redo"), log.path().join("meta.redo")).unwrap();
    let (_, records) = RedoLog::open(&log.path().join("meta.redo")).unwrap();
    (v, records.first().map(|r| r.seq))
}

fn mkdirs(fs: &Fs<RedbStore>, prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let name = format!("{prefix}{i}");
            mkdir(fs, &name);
            name
        })
        .collect()
}

fn assert_all_present(fs: &Fs<RedbStore>, names: &[String]) {
    for n in names {
        assert!(fs.lookup(ROOT_INO, n.as_bytes()).is_ok(), "{n} lost");
    }
}

/// Synced commits that only the memtable and the log hold (no checkpoint yet) are all there
/// after a crash.
#[test]
fn synced_commits_held_only_in_memory_survive_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let fs = open(dir.path(), true);
    let names = mkdirs(&fs, "m", 30);
    fs.rmdir(ROOT_INO, b"m3").unwrap();
    let copy = crash_copy(dir.path());
    drop(fs);
    assert!(in_db_file(copy.path(), &names).iter().all(|held| !held));
    let back = open(copy.path(), true);
    assert_all_present(&back, &[&names[..3], &names[4..]].concat());
    assert!(back.lookup(ROOT_INO, b"m3").is_err());
}

/// A periodic checkpoint does not start the log over when commits came in while it applied the
/// memtable: at open, the records the database holds are skipped by their numbers and the
/// tail after them is replayed.
#[test]
fn commits_after_a_periodic_checkpoint_replay_from_the_log_tail() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(open(dir.path(), true));
    let before = mkdirs(&fs, "before", 10);
    let mut during = Vec::new();
    let mut attempt = 0;
    let (copy, after) = loop {
        attempt += 1;
        // Commits go on while the checkpoint runs.
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (fs, stop) = (fs.clone(), stop.clone());
            let prefix = format!("during{attempt}-");
            std::thread::spawn(move || {
                let mut names = Vec::new();
                while !stop.load(Ordering::Acquire) {
                    let name = format!("{prefix}{}", names.len());
                    mkdir(&fs, &name);
                    names.push(name);
                }
                names
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs.store().checkpoint(Checkpoint::Periodic).unwrap();
        stop.store(true, Ordering::Release);
        during.extend(writer.join().unwrap());
        let after = mkdirs(&fs, &format!("after{attempt}-"), 10);
        let copy = crash_copy(dir.path());
        let (checkpoint, start) = checkpoint_and_log_start(copy.path());
        // The log was kept if it still begins at or before what the database holds.
        if start.is_some_and(|s| s <= checkpoint) {
            break (copy, after);
        }
        assert!(attempt < 10, "no commit ever landed during a checkpoint");
    };
    drop(fs);
    assert!(in_db_file(copy.path(), &before).iter().all(|held| *held));
    assert!(in_db_file(copy.path(), &after).iter().all(|held| !held));
    let back = open(copy.path(), true);
    assert_all_present(&back, &before);
    assert_all_present(&back, &during);
    assert_all_present(&back, &after);
}

/// After a full checkpoint the log starts over just past what the database holds; commits
/// after it are replayed from the new log.
#[test]
fn commits_after_a_full_checkpoint_replay_from_the_started_over_log() {
    let dir = tempfile::tempdir().unwrap();
    let fs = open(dir.path(), true);
    let before = mkdirs(&fs, "before", 10);
    fs.store().checkpoint(Checkpoint::Full).unwrap();
    let after = mkdirs(&fs, "after", 10);
    let copy = crash_copy(dir.path());
    drop(fs);
    let (checkpoint, start) = checkpoint_and_log_start(copy.path());
    assert_eq!(start, Some(checkpoint + 1));
    assert!(in_db_file(copy.path(), &before).iter().all(|held| *held));
    assert!(in_db_file(copy.path(), &after).iter().all(|held| !held));
    let back = open(copy.path(), true);
    assert_all_present(&back, &before);
    assert_all_present(&back, &after);
}

/// The commit that fills half the log runs a full checkpoint, which starts the log over; a
/// crash after it loses nothing.
#[test]
fn a_full_log_is_checkpointed_and_started_over() {
    let dir = tempfile::tempdir().unwrap();
    let p = |d: &Path| (d.join("meta.redb"), d.join("meta.redo"));
    let (db, log) = p(dir.path());
    let s = RedbStore::open_logged(&db, &log, true).unwrap();
    // One key rewritten with 1 MiB values: the log grows, the memtable does not.
    let mut big = vec![0u8; 1 << 20];
    for i in 0..40u32 {
        big[0] = i as u8;
        s.write(|t| {
            t.put(Table::Xattrs, b"big", &big)?;
            t.put(Table::Xattrs, format!("small{i:02}").as_bytes(), b"v")
        })
        .unwrap();
    }
    assert!(s.memtable_usage().bytes < 2 << 20);
    let copy = crash_copy(dir.path());
    drop(s);
    let (checkpoint, start) = checkpoint_and_log_start(copy.path());
    assert!(
        checkpoint >= 32,
        "no full checkpoint ran (database holds record {checkpoint})"
    );
    assert_eq!(start, Some(checkpoint + 1), "the log was not started over");
    let (db, log) = p(copy.path());
    let back = RedbStore::open_logged(&db, &log, true).unwrap();
    back.read(|t| {
        assert_eq!(t.get(Table::Xattrs, b"big")?.map(|v| v[0]), Some(39));
        let small = t.range(Table::Xattrs, b"small", b"smalm", usize::MAX)?;
        assert_eq!(small.len(), 40);
        Ok::<_, StoreError>(())
    })
    .unwrap();
}

/// A log that grew past its preallocated size (checkpoints failing meanwhile) is cut back to it
/// when it starts over, giving the disk its space again; records written after that read back.
#[test]
fn a_log_grown_past_its_size_is_cut_back_when_it_starts_over() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.redo");
    let (mut log, records) = RedoLog::open(&path).unwrap();
    assert!(records.is_empty());
    let payload = vec![7u8; 1 << 20];
    let mut appended = 0;
    while fs::metadata(&path).unwrap().len() <= cairn_meta::redo::CAPACITY {
        log.append(&payload).unwrap();
        appended += 1;
    }
    log.sync().unwrap();
    assert!(appended >= 64, "{appended} records of 1 MiB");
    log.restart(log.last_seq() + 1);
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        cairn_meta::redo::CAPACITY,
        "the log is cut back to its preallocated size"
    );
    let seq = log.append(b"after").unwrap();
    log.sync().unwrap();
    drop(log);
    let (_, records) = RedoLog::open(&path).unwrap();
    assert_eq!(
        records.len(),
        1,
        "only the record written after the restart"
    );
    assert_eq!(
        (records[0].seq, records[0].payload.as_slice()),
        (seq, &b"after"[..])
    );
}

/// What a crash leaves opens without a repair walk of the whole database file: every write to it
/// records redb's allocator state (a walk took 6.8 s for a 1.1 GB file; the server does not serve
/// until it is done). The copy is opened with a repair callback that refuses any repair.
#[test]
fn a_crash_leaves_a_database_that_opens_without_a_repair() {
    let dir = tempfile::tempdir().unwrap();
    let fs = open(dir.path(), true);
    let names = mkdirs(&fs, "before", 200);
    fs.store().checkpoint(Checkpoint::Periodic).unwrap();
    let more = mkdirs(&fs, "after", 50);
    let copy = crash_copy(dir.path());
    drop(fs);

    let mut builder = redb::Database::builder();
    builder.set_repair_callback(|session| session.abort());
    let opened = builder.create(copy.path().join("meta.redb"));
    assert!(
        opened.is_ok(),
        "the database left by a crash needs a repair: {:?}",
        opened.err()
    );
    drop(opened);
    let back = open(copy.path(), true);
    assert_all_present(&back, &names);
    assert_all_present(&back, &more);
}
