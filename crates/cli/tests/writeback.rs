//! The disk cache (`--cache-dir`) and writeback (`--writeback`) end to end: writes acknowledged
//! while the object store is down survive a kill -9 of the mount and reach the bucket when the
//! mount starts again; the disk cache serves reads while the store is down; a mount without
//! `--cache-dir` has a default folder of its own (`--no-disk-cache`: none); random reads fill
//! the disk cache with whole blocks in the background, and later reads of them need no bucket;
//! `--readahead` bounds how far ahead of a sequential reader blocks are fetched; when the cache's
//! disk fills up, writes go straight to the store and nothing acknowledged is lost.

mod common;

use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

const MIB: u64 = 1 << 20;

/// (name, length, seed). With 4 MiB blocks: 1 + 1 + 3 + 0 blocks committed.
const FILES: [(&str, u64, u64); 4] = [
    ("small", 1000, 1),
    ("one-block", 4 * MIB, 2),
    ("three-blocks", 9 * MIB + 7, 3),
    ("empty", 0, 4),
];
const BLOCKS: usize = 5;

/// Runs `f` on its own thread and fails the test if it takes longer than `limit`: an operation
/// that went to the stopped store would retry for minutes instead of failing.
#[track_caller]
fn within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => v,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what}: not done within {limit:?}")
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            panic!("{what}: failed (see the panic above)")
        }
    }
}

fn write_files(root: &Path, sync: bool) -> Vec<String> {
    FILES
        .iter()
        .map(|&(name, len, seed)| {
            let path = root.join(name);
            within(Duration::from_secs(60), "write and close", move || {
                write_random_file(&path, seed, len, sync)
            })
            .unwrap_or_else(|e| panic!("write {name}: {e}"))
        })
        .collect()
}

fn check_files(root: &Path, hashes: &[String], when: &str) {
    for (&(name, len, _), hash) in FILES.iter().zip(hashes) {
        let (path, hash, when_) = (root.join(name), hash.clone(), when.to_string());
        within(
            Duration::from_secs(60),
            &format!("{when}: read {name}"),
            move || assert_file(&path, len, &hash, &when_),
        );
    }
}

/// Writes `len` random bytes of `seed` to `path`, fsync'd, and returns them (the model of the
/// file).
fn write_model(path: &Path, seed: u64, len: u64) -> Vec<u8> {
    use std::io::Write;
    let model = random_bytes(seed, len as usize);
    let f = fs::File::create(path).expect("create");
    (&f).write_all(&model).expect("write");
    f.sync_all().expect("fsync");
    model
}

/// A second mount of the cluster's volume at `c.dir()/name`, with no disk cache: it reads only
/// what reached the bucket.
fn mount_without_cache(c: &Cluster, name: &str) -> Mount {
    let mp = c.dir().join(name);
    fs::create_dir(&mp).expect("mkdir");
    Mount::start_with(
        c.bin(),
        c.volume(),
        &mp,
        &c.meta().addr(),
        c.store_args(),
        &["--no-disk-cache"],
    )
}

/// Files of the writeback folder of a disk cache: blocks not uploaded yet.
fn staged(cache: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for shard in fs::read_dir(cache.join("staged")).expect("the cache has a staged/ folder") {
        for f in fs::read_dir(shard.expect("entry").path()).expect("list a shard") {
            out.push(f.expect("entry").path());
        }
    }
    out
}

/// Block objects in the cluster's bucket (store probes excluded).
fn blocks_in_bucket(c: &Cluster) -> usize {
    c.seaweed()
        .list_objects(c.bucket())
        .iter()
        .filter(|o| !o.key.starts_with("cairn-probe/"))
        .count()
}

/// (a) With writeback, files written and closed while SeaweedFS is down are acknowledged (their
/// blocks staged on local disk); the mount daemon is killed with SIGKILL; SeaweedFS comes back;
/// the mount started again with the same cache folder uploads the staged blocks before it
/// serves, and the files read back byte for byte, also through a second mount without a cache.
#[test]
fn writeback_survives_store_outage_and_mount_kill9() {
    if !require_fuse() {
        return;
    }
    let cache_root = test_dir("writeback-cache");
    let cache = cache_root.path().join("cache");
    let cache_arg = cache.display().to_string();
    let mut c = Cluster::s3(bin())
        .mount_args(&[
            "--cache-dir",
            &cache_arg,
            "--cache-disk-size",
            "1GiB",
            "--writeback",
        ])
        .start();

    c.seaweed_mut().kill();
    let hashes = write_files(c.path(), false);
    // At least: a block the client superseded before committing it may still wait for its
    // delete (it would then be uploaded and left to reconciliation).
    let staged_blocks = staged(&cache).len();
    assert!(
        staged_blocks >= BLOCKS,
        "every block staged locally: {staged_blocks}"
    );

    c.mount_mut().kill();
    c.seaweed_mut().restart();
    assert_eq!(
        blocks_in_bucket(&c),
        0,
        "nothing was uploaded while the store was down"
    );

    c.remount();
    assert!(
        staged(&cache).is_empty(),
        "staged blocks are uploaded before the mount serves"
    );
    assert!(blocks_in_bucket(&c) >= BLOCKS);
    let log = fs::read_to_string(c.mount().log()).expect("mount log");
    assert!(
        log.contains("uploaded the blocks left by an earlier run"),
        "the mount log says what it uploaded at start:\n{log}"
    );
    check_files(
        c.path(),
        &hashes,
        "after kill -9 and a restart with the same cache",
    );

    let plain = mount_without_cache(&c, "plain");
    check_files(plain.path(), &hashes, "through a mount without the cache");
    drop(plain);
}

/// (b) The disk cache serves reads: files written without a cache are read once through a
/// mount with `--cache-dir`; that mount restarts (its memory cache is gone) and SeaweedFS is
/// stopped; the files still read back, from the disk cache.
#[test]
fn disk_cache_serves_reads_while_the_store_is_down() {
    if !require_fuse() {
        return;
    }
    let cache_root = test_dir("l2-cache");
    let cache = cache_root.path().join("cache");
    let cache_arg = cache.display().to_string();
    let mut c = Cluster::s3(bin()).start();
    let hashes = write_files(c.path(), true);

    let mp = c.dir().join("cached");
    fs::create_dir(&mp).expect("mkdir");
    let mut cached = Mount::start_with(
        c.bin(),
        c.volume(),
        &mp,
        &c.meta().addr(),
        c.store_args(),
        &["--cache-dir", &cache_arg, "--cache-disk-size", "256MiB"],
    );
    check_files(cached.path(), &hashes, "first read, filling the disk cache");
    cached.restart();
    c.seaweed_mut().kill();
    check_files(
        cached.path(),
        &hashes,
        "from the disk cache, with the store down",
    );
    drop(cached);
}

/// Cache flags that cannot work fail at once with one line that says what to do.
#[test]
fn cache_flags_are_checked() {
    let dir = test_dir("cache-flags");
    let mp = dir.subdir("mnt");
    let inside = mp.join("cache").display().to_string();
    let cache = dir.path().join("cache").display().to_string();
    let cases: [(&[&str], &[&str]); 7] = [
        (
            &["--writeback", "--no-disk-cache"],
            &["--writeback needs a disk cache", "--no-disk-cache"],
        ),
        (
            &["--cache-disk-size", "1GiB", "--no-disk-cache"],
            &["--cache-disk-size", "--no-disk-cache"],
        ),
        (
            &["--cache-dir", &cache, "--no-disk-cache"],
            &["--cache-dir", "--no-disk-cache"],
        ),
        (&["--cache-disk-size", "1MiB"], &["too small", "64MiB"]),
        (
            &["--cache-dir", &cache, "--cache-disk-size", "1MiB"],
            &["too small", "64MiB"],
        ),
        (
            &["--cache-dir", &cache, "--cache-disk-size", "lots"],
            &["--cache-disk-size", "not a size"],
        ),
        (&["--cache-dir", &inside], &["inside the mount point"]),
    ];
    for (args, mentions) in cases {
        let out = run_with_timeout(
            cairn(&["mount", "start", "vol"])
                .arg(&mp)
                .args(["--meta", "127.0.0.1:1", "--store", "file:///nonexistent"])
                .args(args)
                .env(CACHE_ROOT_VAR, disk_cache_root(&mp)),
            FAST,
        );
        assert_clean_failure(&out, mentions);
    }
    for made in [dir.path().join("cache"), disk_cache_root(&mp)] {
        assert!(
            !made.exists(),
            "nothing created for a refused mount: {}",
            made.display()
        );
    }
}

/// A mount without `--cache-dir` keeps a disk cache in a default folder of its own, named after
/// the volume and its mount point and noting the mount point; a second mount gets another;
/// `--no-disk-cache` makes none; and a default folder that cannot be made does not stop a mount
/// (it mounts without a disk cache and says so). The testkit points `CAIRN_CACHE_ROOT` (which
/// replaces /var/cache/cairn) at the test's folder.
#[test]
fn a_mount_has_a_default_disk_cache_unless_told_otherwise() {
    let Some(c) = local_cluster() else { return };
    let root = disk_cache_root(c.path());
    let dir = c
        .mount()
        .disk_cache_dir()
        .unwrap_or_else(|| panic!("no default disk cache folder in {}", root.display()));
    assert_eq!(dir.parent(), Some(root.as_path()));
    let name = dir.file_name().unwrap().to_string_lossy().to_string();
    let hash = name
        .strip_prefix("testvol-")
        .unwrap_or_else(|| panic!("{name}"));
    assert!(
        hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()),
        "VOLUME-HASH: {name}"
    );
    assert!(dir.join("CAIRN-CACHE").is_file(), "a cairn cache folder");
    let pid = c.mount().pid().expect("mount pid").to_string();
    assert_eq!(
        fs::read_to_string(dir.join("lock"))
            .expect("lock file")
            .trim(),
        pid,
        "the mount holds the folder's lock"
    );
    let log = fs::read_to_string(c.mount().log()).expect("mount log");
    assert!(
        log.lines()
            .any(|l| l.contains("disk cache") && l.contains(&dir.display().to_string())),
        "the mount log names its cache folder:
{log}"
    );
    // Two blocks: 4 MiB, not kept when written (large), and 100 KiB, kept.
    let len = 4 * MIB + (100 << 10);
    let h = write_random_file(&c.join("f"), 5, len, true).expect("write");
    assert_eq!(
        clean_copies(&dir).len(),
        1,
        "the small block written is kept in the default folder, the large one is not"
    );

    let second = c.new_mount();
    let dir2 = second.disk_cache_dir().expect("the second mount's folder");
    assert_ne!(dir2, dir, "two mounts never share a folder");
    assert_eq!(dir2.parent(), Some(root.as_path()));
    assert_file(&second.join("f"), len, &h, "through a second mount");
    drop(second);

    let plain = mount_without_cache(&c, "no-cache");
    assert_file(
        &plain.join("f"),
        len,
        &h,
        "through a mount without a disk cache",
    );
    assert!(
        plain.disk_cache_dir().is_none(),
        "--no-disk-cache made a folder"
    );
    assert_eq!(
        fs::read_dir(&root).expect("list").count(),
        2,
        "still two folders"
    );
    let log = fs::read_to_string(plain.log()).expect("mount log");
    assert!(
        log.contains("no disk cache: --no-disk-cache"),
        "the log says there is no disk cache:
{log}"
    );
    drop(plain);

    // A file where the root folder should be: no default folder can be made.
    let blocked = c.dir().join("not-a-folder");
    fs::write(&blocked, b"x").expect("write");
    let mut store = c.store_args().clone();
    store
        .env
        .push((CACHE_ROOT_VAR.into(), blocked.display().to_string()));
    let mp = c.dir().join("blocked");
    fs::create_dir(&mp).expect("mkdir");
    let blocked_mount = Mount::start_with(c.bin(), c.volume(), &mp, &c.meta().addr(), &store, &[]);
    assert_file(
        &blocked_mount.join("f"),
        len,
        &h,
        "through a mount whose default folder failed",
    );
    let log = fs::read_to_string(blocked_mount.log()).expect("mount log");
    let warning: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("mounting without a disk cache"))
        .collect();
    assert!(
        warning.len() == 1 && warning[0].contains("WARN") && warning[0].contains("--cache-dir"),
        "one warning line says why and what to do:
{log}"
    );
    drop(blocked_mount);
}

/// Random reads of a file larger than the memory cache fetch only the frames they need, and
/// also start background reads of their whole blocks into the disk cache: once those are done
/// the disk cache holds every block read, and after a restart (memory cache gone) with
/// SeaweedFS stopped, reads at other places in those blocks still return the data.
#[test]
fn random_reads_fill_the_disk_cache_and_then_need_no_bucket() {
    if !require_fuse() {
        return;
    }
    const BLOCKS: u64 = 6;
    let mut c = Cluster::s3(bin()).start();
    let model = write_model(&c.join("big"), 11, BLOCKS * 4 * MIB);
    // Another mount, whose disk cache is empty, with a memory cache smaller than the file.
    let mp = c.dir().join("reader");
    fs::create_dir(&mp).expect("mkdir");
    let mut reader = Mount::start_with(
        c.bin(),
        c.volume(),
        &mp,
        &c.meta().addr(),
        c.store_args(),
        &["--cache-size", "4MiB"],
    );
    let cache = reader
        .disk_cache_dir()
        .expect("the reader's disk cache folder");
    assert_eq!(
        clean_copies(&cache).len(),
        0,
        "a fresh mount's disk cache is empty"
    );

    let read_at = |root: &Path, offsets: Vec<u64>, when: &str| {
        let (path, model, when) = (root.join("big"), model.clone(), when.to_string());
        within(Duration::from_secs(30), &when.clone(), move || {
            use std::os::unix::fs::FileExt;
            let f = fs::File::open(&path).expect("open");
            let mut buf = vec![0u8; 4096];
            for off in offsets {
                f.read_exact_at(&mut buf, off)
                    .unwrap_or_else(|e| panic!("{when}: read at {off}: {e}"));
                assert!(
                    buf == model[off as usize..off as usize + 4096],
                    "{when}: the bytes at {off} differ"
                );
            }
        })
    };
    // One 4 KiB read per block, never where the last one ended (random reads), last block first.
    let first: Vec<u64> = (0..BLOCKS)
        .rev()
        .map(|i| i * 4 * MIB + MIB + i * 8192 + 123)
        .collect();
    read_at(reader.path(), first, "random reads of a cold mount");
    let filled = wait_until(Duration::from_secs(60), || {
        clean_copies(&cache).len() == BLOCKS as usize
    });
    assert!(
        filled,
        "after random reads, the disk cache holds {} of the {BLOCKS} blocks read",
        clean_copies(&cache).len()
    );

    reader.restart();
    c.seaweed_mut().kill();
    let again: Vec<u64> = (0..BLOCKS)
        .map(|i| i * 4 * MIB + 3 * MIB + 77 - i * 4096)
        .collect();
    read_at(
        reader.path(),
        again,
        "random reads from the disk cache, SeaweedFS stopped",
    );
    let log = fs::read_to_string(reader.log()).expect("mount log");
    assert!(
        !log.contains("block read failed"),
        "no read went to the bucket:
{log}"
    );
    drop(reader);
}

/// `--readahead` bounds how far a sequential reader is read ahead of: a cold mount reads the
/// first three blocks of a 16-block file sequentially (1 MiB reads), and the blocks fetched,
/// which land in its empty disk cache, are those read (and the next, which the kernel's own
/// read-ahead may ask for) with `--readahead 0`, and reach four blocks past them, no further,
/// with `--readahead 16MiB` (four blocks).
#[test]
fn readahead_reads_ahead_as_far_as_the_flag_allows() {
    if !require_fuse() {
        return;
    }
    const BLOCKS: u64 = 16;
    let c = Cluster::local_folder(bin()).start();
    let model = write_model(&c.join("big"), 12, BLOCKS * 4 * MIB);
    for (readahead, fewest, most) in [("0", 3, 4), ("16MiB", 7, 8)] {
        let mp = c.dir().join(format!("reader-{readahead}"));
        fs::create_dir(&mp).expect("mkdir");
        let reader = Mount::start_with(
            c.bin(),
            c.volume(),
            &mp,
            &c.meta().addr(),
            c.store_args(),
            &["--readahead", readahead],
        );
        let cache = reader.disk_cache_dir().expect("the reader's disk cache");
        assert_eq!(
            clean_copies(&cache).len(),
            0,
            "a fresh mount's disk cache is empty"
        );
        let path = reader.path().join("big");
        let head = model[..(3 * 4 * MIB) as usize].to_vec();
        within(Duration::from_secs(30), "sequential reads", move || {
            use std::io::Read;
            let mut f = fs::File::open(&path).expect("open");
            let mut got = vec![0u8; head.len()];
            for chunk in got.chunks_mut(MIB as usize) {
                f.read_exact(chunk).expect("read");
            }
            assert!(got == head, "the first three blocks read back as written");
        });
        // Read-ahead runs in the background: give it time to go as far as it will.
        wait_until(Duration::from_secs(5), || {
            clean_copies(&cache).len() >= most
        });
        std::thread::sleep(Duration::from_millis(500));
        let n = clean_copies(&cache).len();
        assert!(
            (fewest..=most).contains(&n),
            "--readahead {readahead}: {n} blocks fetched for three blocks read, expected {fewest} to {most}"
        );
    }
}

/// The disk of the cache fills up (another program takes all its space) in the middle of a
/// writeback workload: the writes that follow still succeed, their blocks uploaded directly,
/// and the mount's log says so and why; after kill -9 of the mount (right after the last close,
/// no fsync) and a start on the still full disk, every file reads back byte for byte, also
/// through a mount without a cache.
#[test]
fn a_full_cache_disk_sends_blocks_straight_to_the_store() {
    if !require_fuse() {
        return;
    }
    let root = test_dir("writeback-full-disk");
    let disk = SmallDisk::mount(&root.path().join("disk"), "48m");
    let cache = disk.0.join("cache").display().to_string();
    let mut c = Cluster::s3(bin())
        .mount_args(&[
            "--cache-dir",
            &cache,
            "--cache-disk-size",
            "64MiB",
            "--writeback",
        ])
        .start();
    // (name, length, seed): 3 blocks before the disk fills, 10 after.
    let before = [("before", 9 * MIB + 5, 21)];
    let after = [
        ("after-1", 16 * MIB, 22),
        ("after-2", 12 * MIB + 1, 23),
        ("after-3", 11 * MIB, 24),
        ("after-small", 3000, 25),
    ];
    let mut hashes = Vec::new();
    for &(name, len, seed) in &before {
        let path = c.join(name);
        let hash = within(
            Duration::from_secs(60),
            "write before the disk fills",
            move || write_random_file(&path, seed, len, true),
        );
        hashes.push((
            name,
            len,
            hash.unwrap_or_else(|e| panic!("write {name}: {e}")),
        ));
    }

    disk.fill();
    for &(name, len, seed) in &after {
        let path = c.join(name);
        let hash = within(Duration::from_secs(60), "write on a full disk", move || {
            write_random_file(&path, seed, len, false)
        });
        hashes.push((
            name,
            len,
            hash.unwrap_or_else(|e| panic!("write {name} with the cache's disk full: {e}")),
        ));
    }
    c.mount_mut().kill();
    let log = fs::read_to_string(c.mount().log()).expect("mount log");
    assert!(
        log.contains("cannot stage blocks in the disk cache; uploading them directly")
            && log.contains("nearly full"),
        "the mount log says the blocks go straight to the store, and why:\n{log}"
    );

    c.remount();
    for (name, len, hash) in &hashes {
        let (path, len, hash) = (c.join(name), *len, hash.clone());
        within(Duration::from_secs(60), "read back", move || {
            assert_file(
                &path,
                len,
                &hash,
                "after kill -9 and a start on the full disk",
            )
        });
    }
    let plain = mount_without_cache(&c, "plain");
    for (name, len, hash) in &hashes {
        assert_file(
            &plain.path().join(name),
            *len,
            hash,
            "through a mount without the cache",
        );
    }
    drop(plain);
}
