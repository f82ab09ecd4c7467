//! Online backup, restore and verification of a metadata database.
//!
//! Backup: a read transaction is a consistent snapshot (redb is MVCC), so copying every table
//! from one read transaction gives a database exactly as it was at one commit, while writers go
//! on. The server's store holds recent commits in its memtable, not yet in redb: its
//! [`MetaStore::backup_to`] first runs a checkpoint and begins the read transaction right after
//! it, so the copy holds every commit acknowledged before the backup began, and the copy itself
//! holds no lock that commits wait on (see [`crate::store`], "Backups"). The copy is written to
//! `PATH.partial`, made durable, then renamed to `PATH` and the folder fsync'd, so a crash never
//! leaves a half backup under the final name.
//!
//! Restore: the target folder must not be held by a running server (its lock is taken). The
//! backup is verified first (volume record, root, every entry and block map pointing at an
//! inode), then copied in with the same write-rename-fsync steps.

use crate::fs::Fs;
use crate::keys::*;
use crate::server::{FolderLock, DB_FILE, REDO_FILE};
use crate::store::{MetaStore, ReadTxn, RedbStore, StoreError, Table};
use anyhow::{bail, Context};
use cairn_proto::*;
use std::path::{Path, PathBuf};

/// What the `verify_*` functions found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// The volume's name.
    pub volume: String,
    /// Inodes stored.
    pub inodes: u64,
    /// Directory entries stored.
    pub entries: u64,
    /// Block map entries stored.
    pub blocks: u64,
    /// Problems found; empty when the database is consistent.
    pub problems: Vec<String>,
}

/// Check the references of a database: every entry and block map entry names an inode, every
/// readdir cookie names an entry, the root exists.
pub fn verify_txn(t: &dyn ReadTxn) -> Result<VerifyReport, StoreError> {
    let mut r = VerifyReport::default();
    match t.get(Table::Super, VOLUME)? {
        Some(v) => r.volume = dec::<VolumeRecord>(&v)?.info.name,
        None => r.problems.push("no volume record".into()),
    }
    let all = [0xffu8; 40];
    let inodes = t.range(Table::Inodes, &[], &all, usize::MAX)?;
    r.inodes = inodes.len() as u64;
    let exists = |ino: u64| {
        inodes
            .binary_search_by(|(k, _)| k.as_slice().cmp(&ino.to_be_bytes()[..]))
            .is_ok()
    };
    if !exists(ROOT_INO) {
        r.problems.push("no root directory".into());
    }
    for (k, v) in t.range(Table::Dentries, &[], &all, usize::MAX)? {
        r.entries += 1;
        let d: DentryRecord = dec(&v)?;
        if !exists(d.ino) {
            let parent = u64_at(&k, 0).unwrap_or(0);
            r.problems.push(format!(
                "entry {:?} in directory {parent} names missing inode {}",
                String::from_utf8_lossy(&k[8..]),
                d.ino
            ));
        }
    }
    for (k, _) in t.range(Table::Blocks, &[], &all, usize::MAX)? {
        r.blocks += 1;
        let ino = u64_at(&k, 0).unwrap_or(0);
        if !exists(ino) {
            r.problems
                .push(format!("block map entry for missing inode {ino}"));
        }
    }
    for (k, name) in t.range(Table::DirCookies, &[], &all, usize::MAX)? {
        let parent = u64_at(&k, 0).unwrap_or(0);
        if t.get(Table::Dentries, &k2(parent, &name))?.is_none() {
            r.problems.push(format!(
                "readdir cookie in directory {parent} names no entry"
            ));
        }
    }
    Ok(r)
}

/// Verify the database of a stopped server's folder, after applying its redo log as a start
/// would.
pub fn verify_folder(data_dir: &Path) -> anyhow::Result<VerifyReport> {
    let db = data_dir.join(DB_FILE);
    if !db.is_file() {
        bail!(
            "{} holds no metadata database ({DB_FILE})",
            data_dir.display()
        );
    }
    let store = RedbStore::open_logged(&db, &data_dir.join(REDO_FILE), false)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("open {}", db.display()))?;
    store
        .read(|t| verify_txn(t))
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// Verify the database file at `path` (not in use by a server).
pub fn verify_file(path: &Path) -> anyhow::Result<VerifyReport> {
    let store = RedbStore::open(path, true)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("open {}", path.display()))?;
    store
        .read(|t| verify_txn(t))
        .map_err(|e| anyhow::anyhow!("{e}"))
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Write a consistent copy of the live database to `to` (a new file).
pub fn backup<S: MetaStore>(fs: &Fs<S>, to: &Path) -> anyhow::Result<VerifyReport> {
    if to.exists() {
        bail!(
            "{} already exists: choose a new file name for the backup",
            to.display()
        );
    }
    let dir = to
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let partial = PathBuf::from(format!("{}.partial", to.display()));
    let _ = std::fs::remove_file(&partial);
    let written = (|| {
        fs.store().backup_to(&partial).map_err(|e| {
            let hint = if e.is_no_space() {
                ": free space on that disk or write the backup to another"
            } else {
                ""
            };
            anyhow::anyhow!("write {}: {e}{hint}", partial.display())
        })?;
        let report = verify_file(&partial)?;
        if let Some(first) = report.problems.first() {
            bail!("the copy is inconsistent ({} problems, first: {first}); run `cairn meta verify` on the server's folder", report.problems.len());
        }
        std::fs::rename(&partial, to)
            .with_context(|| format!("rename {} to {}", partial.display(), to.display()))?;
        Ok(report)
    })();
    if written.is_err() {
        // A copy cut short (a full disk, most often) would only hold on to the space.
        let _ = std::fs::remove_file(&partial);
    }
    let report = written?;
    fsync_dir(dir)?;
    Ok(report)
}

/// Restore the backup `from` into the data folder `data_dir` of a stopped server.
pub fn restore(from: &Path, data_dir: &Path) -> anyhow::Result<VerifyReport> {
    if !from.is_file() {
        bail!("backup {} does not exist or is not a file", from.display());
    }
    let _lock = FolderLock::acquire(data_dir)?;
    let staged = data_dir.join("meta.redb.restoring");
    let _ = std::fs::remove_file(&staged);
    std::fs::copy(from, &staged)
        .with_context(|| format!("copy {} to {}", from.display(), staged.display()))?;
    std::fs::File::open(&staged)?.sync_all()?;
    let report = match verify_file(&staged) {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&staged);
            return Err(e.context(format!("{} is not a cairn metadata backup", from.display())));
        }
    };
    if !report.problems.is_empty() {
        let _ = std::fs::remove_file(&staged);
        bail!(
            "backup {} is inconsistent ({} problems, first: {}); the data folder was not changed",
            from.display(),
            report.problems.len(),
            report.problems[0]
        );
    }
    // The old database's redo log must not be applied to the restored one: remove it (durably)
    // before the restored database takes the old one's place.
    let redo = data_dir.join(REDO_FILE);
    match std::fs::remove_file(&redo) {
        Ok(()) => fsync_dir(data_dir)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("remove {}", redo.display())),
    }
    std::fs::rename(&staged, data_dir.join(DB_FILE))
        .context("move the restored database in place")?;
    fsync_dir(data_dir)?;
    Ok(report)
}

/// Backups in `dir` made by the scheduler, oldest first.
pub fn scheduled_backups(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    n.starts_with("meta-") && n.ends_with(".redb")
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}
