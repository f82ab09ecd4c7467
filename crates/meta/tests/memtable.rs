//! The memtable of a logged store: reads through it over the database, its memory bound,
//! backups and shutdown, and consistency while commits, checkpoints and reads run at once.

use cairn_meta::keys;
use cairn_meta::store::{Checkpoint, MetaStore, Pairs, RedbStore, StoreError, Table};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

const T: Table = Table::Xattrs;

fn logged(dir: &Path, sync: bool) -> RedbStore {
    RedbStore::open_logged(&dir.join("meta.redb"), &dir.join("meta.redo"), sync).unwrap()
}

fn key(prefix: &str, i: u32) -> Vec<u8> {
    format!("{prefix}{i:06}").into_bytes()
}

fn keys_of(p: &Pairs) -> Vec<String> {
    p.iter()
        .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
        .collect()
}

fn names(prefix: &str, it: impl IntoIterator<Item = u32>) -> Vec<String> {
    it.into_iter().map(|i| format!("{prefix}{i:06}")).collect()
}

/// The rows of `table` in a database file opened on its own, without log or memtable.
fn file_rows(path: &Path, table: Table) -> Pairs {
    let db = RedbStore::open(path, false).unwrap();
    db.read(|t| t.range(table, b"", b"\xff", usize::MAX))
        .unwrap()
}

#[test]
fn range_limits_count_rows_left_after_the_memtable_deletes_some() {
    let dir = tempfile::tempdir().unwrap();
    let s = logged(dir.path(), false);
    s.write(|t| {
        for i in 0..20 {
            t.put(T, &key("k", i), b"db")?;
        }
        Ok::<_, StoreError>(())
    })
    .unwrap();
    s.checkpoint(Checkpoint::Periodic).unwrap();
    // The memtable deletes every row but the last five and overwrites one.
    s.write(|t| {
        for i in 0..15 {
            t.delete(T, &key("k", i))?;
        }
        t.put(T, &key("k", 17), b"mem")
    })
    .unwrap();
    assert_eq!(s.memtable_usage().entries, 16);
    s.read(|t| {
        assert_eq!(keys_of(&t.range(T, b"k", b"l", 2)?), names("k", [15, 16]));
        let all = t.range(T, b"k", b"l", usize::MAX)?;
        assert_eq!(keys_of(&all), names("k", 15..20));
        assert_eq!(all[2].1, b"mem");
        assert_eq!(t.get(T, &key("k", 3))?, None);
        assert_eq!(t.get(T, &key("k", 17))?.as_deref(), Some(&b"mem"[..]));
        Ok::<_, StoreError>(())
    })
    .unwrap();
    // A commit sees its own deletes over both, and its limit counts what is left.
    s.write(|t| {
        t.delete(T, &key("k", 15))?;
        t.put(T, &key("k", 2), b"own")?;
        assert_eq!(keys_of(&t.range(T, b"k", b"l", 2)?), names("k", [2, 16]));
        assert_eq!(t.get(T, &key("k", 15))?, None);
        Ok::<_, StoreError>(())
    })
    .unwrap();
    // A checkpoint writes the merged result to the database file.
    s.checkpoint(Checkpoint::Periodic).unwrap();
    drop(s);
    let rows = file_rows(&dir.path().join("meta.redb"), T);
    assert_eq!(keys_of(&rows), names("k", [2, 16, 17, 18, 19]));
}

/// Without periodic checkpoints (no flush), a commit that leaves the memtable over its bound
/// of keys checkpoints it.
#[test]
fn the_memtable_stays_bounded_without_periodic_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let s = logged(dir.path(), false);
    let mut peak = 0;
    let mut emptied = false;
    for c in 0..50u32 {
        s.write(|t| {
            for i in 0..5000u32 {
                t.put(T, &key("e", c * 5000 + i), b"v")?;
            }
            Ok::<_, StoreError>(())
        })
        .unwrap();
        let u = s.memtable_usage();
        peak = peak.max(u.entries);
        emptied |= c > 0 && u.entries == 0;
    }
    assert!(emptied, "no checkpoint ran");
    assert!(peak <= 200_000, "{peak} keys in memory");
    let n = s
        .read(|t| t.range(T, b"e", b"f", usize::MAX))
        .unwrap()
        .len();
    assert_eq!(n, 250_000);
    // Large values: the byte bound applies before the log fills.
    let big = vec![7u8; 512 << 10];
    for i in 0..40 {
        s.write(|t| t.put(T, &key("big", i), &big)).unwrap();
        assert!(s.memtable_usage().bytes <= (16 << 20) + big.len() + 16);
    }
}

#[test]
fn dropping_the_store_leaves_everything_in_the_database_file() {
    let dir = tempfile::tempdir().unwrap();
    let s = logged(dir.path(), true);
    for i in 0..30 {
        s.write(|t| t.put(T, &key("d", i), b"v")).unwrap();
    }
    s.checkpoint(Checkpoint::Periodic).unwrap();
    for i in 0..10 {
        s.write(|t| t.delete(T, &key("d", i))).unwrap();
    }
    assert!(s.memtable_usage().entries > 0);
    drop(s);
    let rows = file_rows(&dir.path().join("meta.redb"), T);
    assert_eq!(keys_of(&rows), names("d", 10..30));
}

/// A backup is taken from the database right after a checkpoint: it holds what was only in
/// memory, and is a consistent cut while commits go on.
#[test]
fn a_backup_holds_the_memtable_and_a_consistent_cut() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(logged(dir.path(), false));
    for i in 0..100 {
        s.write(|t| t.put(T, &key("a", i), b"v")).unwrap();
        if i == 50 {
            s.checkpoint(Checkpoint::Periodic).unwrap();
        }
    }
    s.write(|t| t.delete(T, &key("a", 7))).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (s, stop) = (s.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Acquire) {
                s.write(|t| {
                    t.put(T, &key("p", i), b"1")?;
                    t.put(T, &key("q", i), b"1")
                })
                .unwrap();
                i += 1;
            }
            i
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(50));
    let to = dir.path().join("backup.redb");
    s.backup_to(&to).unwrap();
    stop.store(true, Ordering::Release);
    let written = writer.join().unwrap();
    let rows = file_rows(&to, T);
    let a: Vec<_> = keys_of(&rows)
        .into_iter()
        .filter(|k| k.starts_with('a'))
        .collect();
    assert_eq!(a, names("a", (0..100).filter(|i| *i != 7)));
    let p = rows.iter().filter(|(k, _)| k[0] == b'p').count();
    let q = rows.iter().filter(|(k, _)| k[0] == b'q').count();
    assert_eq!(p, q, "a commit is in the backup whole or not at all");
    assert!(p as u32 <= written);
    // The backup records the log position it holds, like any checkpoint.
    let db = RedbStore::open(&to, false).unwrap();
    assert!(db
        .read(|t| t.get(Table::Super, keys::REDO_CHECKPOINT))
        .unwrap()
        .is_some());
}

/// One thread commits numbered keys (a pair per commit, and one moving key whose older copies
/// are deleted), another runs checkpoints of both kinds in a loop, a third reads. Every read is
/// a consistent snapshot: commits are seen whole and in order, and what was seen once is never
/// missing later. The writer goes on past `N` commits until both others have made some
/// rounds (at least one full checkpoint among them), so the three overlap however the threads
/// are scheduled.
#[test]
fn commits_checkpoints_and_reads_at_once_stay_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(logged(dir.path(), false));
    let done = Arc::new(AtomicBool::new(false));
    // Rounds made by the checkpointer and the reader, for the writer to wait for.
    let rounds = Arc::new([AtomicU32::new(0), AtomicU32::new(0)]);
    const N: u32 = 1500;
    const MAX: u32 = 100_000;
    const ROUNDS: u32 = 16;
    let writer = {
        let (s, rounds) = (s.clone(), rounds.clone());
        std::thread::spawn(move || {
            for i in 0..MAX {
                if i >= N && rounds.iter().all(|r| r.load(Ordering::Acquire) >= ROUNDS) {
                    return i;
                }
                s.write(|t| {
                    t.put(T, &key("a", i), b"1")?;
                    t.put(T, &key("b", i), b"1")?;
                    if i > 0 {
                        t.delete(T, &key("c", i - 1))?;
                    }
                    t.put(T, &key("c", i), b"1")
                })
                .unwrap();
            }
            panic!("{MAX} commits while checkpoints and reads made {rounds:?}")
        })
    };
    let checkpointer = {
        let (s, done, rounds) = (s.clone(), done.clone(), rounds.clone());
        std::thread::spawn(move || {
            let mut n = 0u32;
            while !done.load(Ordering::Acquire) {
                let kind = if n % 8 == 7 {
                    Checkpoint::Full
                } else {
                    Checkpoint::Periodic
                };
                s.checkpoint(kind).unwrap();
                n += 1;
                rounds[0].store(n, Ordering::Release);
            }
            n
        })
    };
    let reader = {
        let (s, done, rounds) = (s.clone(), done.clone(), rounds.clone());
        std::thread::spawn(move || {
            let mut seen = 0usize;
            let mut reads = 0u32;
            loop {
                let finished = done.load(Ordering::Acquire);
                let n = s
                    .read(|t| {
                        let a = t.range(T, b"a", b"b", usize::MAX)?;
                        let n = a.len();
                        assert_eq!(keys_of(&a), names("a", 0..n as u32), "commits in order");
                        let b = t.range(T, b"b", b"c", usize::MAX)?;
                        assert_eq!(b.len(), n, "both keys of a commit or neither");
                        let c = t.range(T, b"c", b"d", 2)?;
                        let want = if n == 0 {
                            vec![]
                        } else {
                            names("c", [n as u32 - 1])
                        };
                        assert_eq!(keys_of(&c), want, "deleted copies stay hidden");
                        if n > 0 {
                            let last = n as u32 - 1;
                            assert!(t.get(T, &key("a", last))?.is_some());
                            assert!(t.get(T, &key("b", last))?.is_some());
                        }
                        Ok::<_, StoreError>(n)
                    })
                    .unwrap();
                assert!(n >= seen, "{seen} keys seen, then only {n}");
                seen = n;
                reads += 1;
                rounds[1].store(reads, Ordering::Release);
                if finished {
                    return (seen, reads);
                }
            }
        })
    };
    let written = writer.join().unwrap();
    done.store(true, Ordering::Release);
    let checkpoints = checkpointer.join().unwrap();
    let (seen, reads) = reader.join().unwrap();
    assert_eq!(seen, written as usize);
    assert!(
        checkpoints >= ROUNDS && reads >= ROUNDS,
        "{checkpoints} checkpoints, {reads} reads"
    );
}
