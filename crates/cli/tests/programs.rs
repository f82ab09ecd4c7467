//! Real programs on a mount: git, tar, rsync, sqlite3, cargo and stress-ng must work on cairn as
//! they do on a local disk. Each test builds its input outside the mount (in the cluster's folder),
//! runs the program with a time limit, and compares with the original.
//!
//! Needs the Debian packages git, tar, rsync, sqlite3, diffutils and stress-ng (scripts/setup).

mod common;

use common::*;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// A local-folder cluster whose watchdog fires after `limit_s` seconds, or None when FUSE tests
/// are skipped.
fn cluster(limit_s: u64) -> Option<Cluster> {
    require_fuse().then(|| {
        Cluster::local_folder(bin())
            .timeout(Duration::from_secs(limit_s))
            .start()
    })
}

/// A folder outside the mount, in the cluster's folder (removed with it).
fn outside(c: &Cluster) -> PathBuf {
    let p = c.dir().join("outside");
    std::fs::create_dir_all(&p).expect("mkdir outside");
    p
}

/// Runs `script` with `bash -c` under `set -euxo pipefail` (so stderr traces each command and the
/// failing one is the last traced), with `$MNT` the mount and `$OUT` a folder outside it, and
/// panics with its output unless it exits 0 within `limit_s` seconds.
#[track_caller]
fn sh(c: &Cluster, what: &str, script: &str, limit_s: u64) -> CmdOutput {
    let out = outside(c);
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(format!("set -euxo pipefail\n{script}"))
        .env("MNT", c.path())
        .env("OUT", &out)
        .env("PS4", "+ [line $LINENO] ")
        .env("LC_ALL", "C")
        .current_dir(&out)
        // git: no user or system configuration, a fixed identity.
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Cairn Test")
        .env("GIT_AUTHOR_EMAIL", "test@cairn.invalid")
        .env("GIT_COMMITTER_NAME", "Cairn Test")
        .env("GIT_COMMITTER_EMAIL", "test@cairn.invalid");
    let r = run_with_timeout(&mut cmd, Duration::from_secs(limit_s));
    assert!(
        r.success(),
        "{what} failed on the mount {} (the last `+` line of stderr is the failing command)\n{}",
        c.path().display(),
        r.describe()
    );
    r
}

/// Whether `prog` is on PATH.
fn have(prog: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {prog}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A tree with nested folders, an empty folder, symlinks (one dangling), a hard link, assorted
/// modes, fixed mtimes and a 5 MiB random file, at `$OUT/tree`.
const MAKE_TREE: &str = r#"
src=$OUT/tree
mkdir -p $src/a/b/c $src/empty $src/sticky
echo hello > $src/a/b/c/f
printf '' > $src/a/zero
seq 1 20000 > $src/a/b/nums
head -c 5242880 /dev/urandom > $src/big.bin
printf '#!/bin/sh\necho hi\n' > $src/a/run.sh
ln -s b/c/f $src/a/link
ln -s /nonexistent/target $src/dangling
ln $src/a/b/c/f $src/a/hard
chmod 0755 $src/a/run.sh
chmod 0640 $src/a/b/c/f
chmod 0600 $src/a/b/nums
chmod 0750 $src/a/b
chmod 1777 $src/sticky
chown 1234:5678 $src/a/zero
touch -h -d '2001-02-03 04:05:06' $src/a/link
touch -d '2001-02-03 04:05:06' $src/a/b/c/f $src/big.bin $src/a/b/c
"#;

/// Prints a listing of the tree at $1 (type, mode, owner, size, links, mtime in seconds; symlink
/// targets) that two copies must share. The size of a folder is left out: cairn reports 0 where
/// ext4 reports 4096 (POSIX leaves it unspecified).
const LISTING: &str = r#"
listing() {
    (cd "$1" && find . -type d -printf '%p %y %m %U:%G %n %Ts\n' | sort
     cd "$1" && find . -type f -printf '%p %y %m %U:%G %s %n %Ts\n' | sort
     cd "$1" && find . -type l -printf '%p -> %l\n' | sort)
}
"#;

#[test]
fn git_clone_fsck_commit_and_gc_on_the_mount() {
    let Some(c) = cluster(180) else { return };
    sh(
        &c,
        "git",
        r#"
src=$OUT/src
git init -q -b main $src
cd $src
echo hello > a.txt
mkdir -p d/e
seq 1 1000 > d/e/nums
head -c 200000 /dev/urandom > bin.dat
git add -A
git commit -q -m one
git mv a.txt b.txt
echo more >> d/e/nums
git commit -q -am two
printf '\000\001\002\377' >> bin.dat
git commit -q -am three

# file:// makes git use its pack transport instead of copying the object files.
git clone -q file://$src $MNT/clone
cd $MNT/clone
git fsck --full --strict
test "$(git log --format='%H %s' --stat)" = "$(git -C $src log --format='%H %s' --stat)"
cmp bin.dat $src/bin.dat
test -z "$(git status --porcelain)"

echo new > c.txt
git add c.txt
git mv b.txt d/b.txt
git commit -q -m four
test -z "$(git status --porcelain)"
git gc -q --aggressive --prune=now
git fsck --full --strict
test "$(git log --format=%s | tr '\n' ' ')" = "four three two one "
git -C $src fetch -q file://$MNT/clone main
test "$(git -C $src rev-parse FETCH_HEAD)" = "$(git rev-parse HEAD)"
"#,
        120,
    );
}

#[test]
fn tar_extract_onto_the_mount_compares_equal() {
    let Some(c) = cluster(180) else { return };
    sh(
        &c,
        "tar",
        &format!(
            "{MAKE_TREE}{LISTING}{}",
            r#"
tar --format=posix -C $src -cf $OUT/t.tar .
mkdir $MNT/x
tar -C $MNT/x -xpf $OUT/t.tar
tar -C $MNT/x --compare -f $OUT/t.tar
diff -r --no-dereference $src $MNT/x
diff <(listing $src) <(listing $MNT/x)
test "$(stat -c %i $MNT/x/a/hard)" = "$(stat -c %i $MNT/x/a/b/c/f)"
# and back out again: a tar made on the mount extracts to the same tree.
tar --format=posix -C $MNT/x -cf $OUT/back.tar .
mkdir $OUT/back
tar -C $OUT/back -xpf $OUT/back.tar
diff <(listing $src) <(listing $OUT/back)
"#
        ),
        90,
    );
}

#[test]
fn rsync_round_trip_through_the_mount() {
    let Some(c) = cluster(180) else { return };
    sh(
        &c,
        "rsync",
        &format!(
            "{MAKE_TREE}{LISTING}{}",
            r#"
rsync -aH $src/ $MNT/r/
rsync -aH $MNT/r/ $OUT/back/
diff -r --no-dereference $src $OUT/back
diff <(listing $src) <(listing $MNT/r)
diff <(listing $src) <(listing $OUT/back)
test -z "$(rsync -aH --dry-run --itemize-changes $src/ $MNT/r/)"
test -z "$(rsync -aH --dry-run --itemize-changes $MNT/r/ $OUT/back/)"
# An update: rsync writes a temporary file next to the target and renames it over.
echo changed >> $src/a/b/nums
rsync -aH $src/ $MNT/r/
cmp $src/a/b/nums $MNT/r/a/b/nums
test -z "$(rsync -aH --dry-run --itemize-changes $src/ $MNT/r/)"
"#
        ),
        90,
    );
}

/// 20,000 rows in four transactions, then integrity_check and count; prints the count.
const SQLITE_FILL: &str = r#"
fill() { # fill DB [PRAGMA...]
    sqlite3 -bail "$1" <<EOF
${2:-}
CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL);
CREATE INDEX t_v ON t(v);
EOF
    for i in 1 2 3 4; do
        sqlite3 -bail "$1" <<EOF
BEGIN;
WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 5000)
INSERT INTO t(v) SELECT hex(randomblob(40)) FROM n;
COMMIT;
EOF
    done
    test "$(sqlite3 -bail "$1" 'PRAGMA integrity_check;')" = ok
    test "$(sqlite3 -bail "$1" 'SELECT count(*) FROM t;')" = 20000
}
"#;

#[test]
fn sqlite_rollback_journal_and_wal_survive_a_remount() {
    let Some(mut c) = cluster(240) else { return };
    sh(
        &c,
        "sqlite3 (rollback journal)",
        &format!("{SQLITE_FILL}\nfill $MNT/journal.db 'PRAGMA journal_mode=DELETE;'\n"),
        120,
    );
    let wal = sh(
        &c,
        "sqlite3 (WAL)",
        &format!(
            "{SQLITE_FILL}\n{}",
            r#"
test "$(sqlite3 -bail $MNT/wal.db 'PRAGMA journal_mode=WAL;')" = wal
fill $MNT/wal.db
test "$(sqlite3 -bail $MNT/wal.db 'PRAGMA journal_mode;')" = wal
"#
        ),
        120,
    );
    drop(wal);
    c.remount();
    sh(
        &c,
        "sqlite3 after a remount",
        r#"
for db in journal wal; do
    test "$(sqlite3 -bail $MNT/$db.db 'PRAGMA integrity_check;')" = ok
    test "$(sqlite3 -bail $MNT/$db.db 'SELECT count(*) FROM t;')" = 20000
done
test "$(sqlite3 -bail $MNT/wal.db 'PRAGMA journal_mode;')" = wal
"#,
        60,
    );
}

#[test]
fn cargo_builds_and_runs_a_crate_on_the_mount() {
    if !have("cargo") {
        eprintln!("SKIPPED cargo_builds_and_runs_a_crate_on_the_mount: cargo is not on PATH");
        return;
    }
    let Some(c) = cluster(240) else { return };
    let out = sh(
        &c,
        "cargo",
        r#"
# Drop what the outer `cargo test` put in the environment, except where cargo lives.
for v in $(env | sed -n 's/^\(CARGO[A-Z_]*\|RUSTC[A-Z_]*\|RUSTFLAGS\|RUSTDOC[A-Z_]*\)=.*/\1/p'); do
    [ "$v" = CARGO_HOME ] || unset "$v"
done
cd $MNT
cargo new --offline --vcs none --quiet hello
cat >> hello/src/main.rs <<'EOF'
#[allow(dead_code)]
fn twice(x: u32) -> u32 { x * 2 }
EOF
CARGO_TARGET_DIR=$MNT/target cargo build --offline --quiet --manifest-path hello/Cargo.toml
$MNT/target/debug/hello
# a second build is a no-op, a touched source rebuilds
CARGO_TARGET_DIR=$MNT/target cargo build --offline --manifest-path hello/Cargo.toml 2>&1 | grep -v Compiling
touch hello/src/main.rs
CARGO_TARGET_DIR=$MNT/target cargo build --offline --manifest-path hello/Cargo.toml 2>&1 | grep Compiling
$MNT/target/debug/hello
"#,
        180,
    );
    assert_eq!(
        out.stdout.matches("Hello, world!").count(),
        2,
        "{}",
        out.describe()
    );
}

#[test]
fn stress_ng_filesystem_stressors() {
    let Some(c) = cluster(240) else { return };
    // stress-ng 0.15 stressors that exercise a file system, one instance each, 10 s each (they run
    // at once; tearing down what link/symlink/dentry made takes several seconds more).
    // Notes:
    // - fallocate: cairn does not implement fallocate (the mount logs `[Not Implemented]
    //   fallocate`); stress-ng accepts the EOPNOTSUPP and passes, so it stays in.
    // - seek: SEEK_DATA/SEEK_HOLE are not implemented (`[Not Implemented] lseek ... whence: 4`);
    //   stress-ng passes without them.
    // - lockf: its parent and child take overlapping lockf(F_LOCK) ranges of one file and run into
    //   deadlocks; the server answers the closing wait with EDEADLK, as a local filesystem does
    //   (before that, both waited forever, unkillable).
    // - io (legacy sync) and open (20,000 descriptors) are left out to keep the run short.
    let out = sh(
        &c,
        "stress-ng",
        r#"
mkdir $MNT/stress
stress-ng --temp-path $MNT/stress --timeout 10s --metrics-brief --verify \
    --dir 1 --dentry 1 --filename 1 --hdd 1 --hdd-bytes 32M --link 1 --symlink 1 --rename 1 \
    --flock 1 --fcntl 1 --fallocate 1 --fallocate-bytes 16M --mmap 1 --mmap-file \
    --mmap-bytes 16M --seek 1 --seek-size 16M --utime 1 --chmod 1 --fstat 1 --getdent 1 \
    --readahead 1 --readahead-bytes 16M --xattr 1 --lockf 2
"#,
        150,
    );
    let all = format!("{}\n{}", out.stdout, out.stderr);
    let bad: Vec<&str> = all
        .lines()
        .filter(|l| {
            let l = l.to_lowercase();
            (l.contains("fail") && !l.contains("failed: 0")) || l.contains("error")
        })
        .collect();
    assert!(
        bad.is_empty(),
        "stress-ng reported failures:\n{}\n{}",
        bad.join("\n"),
        out.describe()
    );
    let root = std::fs::metadata(c.path()).expect("stat the mount root after stress-ng");
    assert!(root.is_dir());
    // and lists: whatever stress-ng left behind is readable.
    let _ = list(&c.join("stress"));
}
