//! Mount lifecycle: checking the mount point, clearing a stale mount, mounting and unmounting.
//!
//! A killed mount daemon leaves its mount behind, answering "transport endpoint is not
//! connected" (ENOTCONN). Mounting again over it first detaches that dead mount
//! ([`clear_stale_mount`]), so that `cairn mount start` after a crash just works.

use crate::CairnFuse;
use anyhow::{bail, Context};
use fuser::{Config, MountOption, SessionACL};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use tracing::info;

/// How to mount.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// Where.
    pub mountpoint: PathBuf,
    /// Shown as the source in the mount table, e.g. `cairn:VOLUME`.
    pub fsname: String,
    /// Let users other than the mounting one use the mount (FUSE `allow_other`).
    pub allow_other: bool,
    /// Mount over a non-empty folder.
    pub nonempty: bool,
    /// Kernel request dispatch threads.
    pub threads: usize,
}

/// Whether `path` is a dead FUSE mount (its daemon is gone).
fn is_stale(path: &Path) -> bool {
    matches!(std::fs::metadata(path), Err(e) if e.raw_os_error() == Some(libc::ENOTCONN))
}

/// Detach a dead mount left at `path` by a killed daemon; returns whether there was one.
pub fn clear_stale_mount(path: &Path) -> anyhow::Result<bool> {
    if !is_stale(path) {
        return Ok(false);
    }
    info!(path = %path.display(), "clearing a stale mount left by a stopped daemon");
    detach(path).with_context(|| format!("clear the stale mount at {}", path.display()))?;
    Ok(true)
}

fn detach(path: &Path) -> std::io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: a valid NUL-terminated path; umount2 touches no memory of ours.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Unmount `path` (the daemon flushes open files and exits).
pub fn unmount(path: &Path) -> anyhow::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: as in `detach`.
    if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL) => bail!("{} is not mounted", path.display()),
        Some(libc::EBUSY) => bail!(
            "{} is busy: a process has a file open or its working directory there; close it (see `fuser -m {}`) and try again",
            path.display(),
            path.display()
        ),
        Some(libc::ENOENT) => bail!("{} does not exist", path.display()),
        _ if is_stale(path) => {
            detach(path)?;
            Ok(())
        }
        _ => bail!("cannot unmount {}: {e}", path.display()),
    }
}

/// Check that `path` can be mounted on: an existing, empty directory (unless `nonempty`).
pub fn check_mountpoint(path: &Path, nonempty: bool) -> anyhow::Result<()> {
    clear_stale_mount(path)?;
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!(
                "mount point {} does not exist: create it first (mkdir -p {})",
                path.display(),
                path.display()
            )
        }
        Err(e) => bail!("cannot use mount point {}: {e}", path.display()),
    };
    if !meta.is_dir() {
        bail!("mount point {} is not a directory", path.display());
    }
    if !nonempty && std::fs::read_dir(path)?.next().is_some() {
        bail!(
            "mount point {} is not empty: use an empty directory, or pass --nonempty to mount over its contents",
            path.display()
        );
    }
    Ok(())
}

/// A live mount; dropping it does not unmount (use [`unmount`] or let the kernel end it).
pub struct MountedSession {
    session: fuser::Session<CairnFuse>,
}

impl MountedSession {
    /// Mount `fs` at the mount point; the mount is live when this returns.
    pub fn mount(fs: CairnFuse, opts: &MountOptions) -> anyhow::Result<MountedSession> {
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName(opts.fsname.clone()),
            MountOption::Subtype("cairn".into()),
            MountOption::DefaultPermissions,
            MountOption::NoAtime,
        ];
        config.acl = if opts.allow_other {
            SessionACL::All
        } else {
            SessionACL::Owner
        };
        config.n_threads = Some(opts.threads.max(1));
        let filler = fs.page_filler();
        let session = fuser::Session::new(fs, &opts.mountpoint, &config).map_err(|e| {
            let hint = match e.kind() {
                std::io::ErrorKind::PermissionDenied => {
                    ": mounting needs root (run as root or with sudo)"
                }
                std::io::ErrorKind::NotFound => {
                    ": is /dev/fuse there? (modprobe fuse; in a container, pass --device /dev/fuse)"
                }
                _ => "",
            };
            anyhow::anyhow!("cannot mount at {}: {e}{hint}", opts.mountpoint.display())
        })?;
        if let Some(filler) = filler {
            filler.connect(session.notifier());
        }
        Ok(MountedSession { session })
    }

    /// A handle that unmounts this session from another thread (on a signal).
    pub fn unmounter(&mut self) -> fuser::SessionUnmounter {
        self.session.unmount_callable()
    }

    /// Serve kernel requests until the filesystem is unmounted.
    pub fn run(self) -> anyhow::Result<()> {
        self.session.run().context("serve FUSE requests")
    }
}
