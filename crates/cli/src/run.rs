//! Resolves parsed arguments into crate configs and runs the command.
//!
//! Background commands (`mount start`, `up`) re-run this binary in the foreground as a child in
//! its own session, with stdout as a pipe: the child prints `READY` once the mount is live, or
//! `error: ...` if it failed, and the parent relays that and exits 0 or 1. So a mount that fails
//! in the background still makes `cairn mount start` exit non-zero with the reason.

use crate::args::*;
use anyhow::{anyhow, bail, Context};
use cairn_blocks::{CacheConfig, StoreConfig};
use cairn_client::rpc::RpcConfig;
use cairn_client::{Client, ClientConfig};
use cairn_fuse::{CairnFuse, MountOptions, MountedSession};
use cairn_meta::{MetaServer, ServeConfig};
use cairn_proto::VolumeInfo;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command as Proc, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, info};

/// Run the command; returns the process exit code.
pub fn main(cli: Cli) -> i32 {
    let result = match cli.command {
        Command::Up(a) => up(a),
        Command::Meta(MetaCommand::Serve(a)) => serve(a),
        Command::Meta(MetaCommand::Backup(a)) => meta_backup(a),
        Command::Meta(MetaCommand::Restore(a)) => {
            init_logging(None);
            cairn_meta::backup::restore(&a.from, &a.data_dir).map(|r| {
                println!(
                    "restored volume `{}` into {}: {} inodes, {} entries, {} block map entries",
                    r.volume,
                    a.data_dir.display(),
                    r.inodes,
                    r.entries,
                    r.blocks
                )
            })
        }
        Command::Meta(MetaCommand::Verify(a)) => meta_verify(a),
        Command::Mount(MountCommand::Start(a)) => mount_start(*a),
        Command::Mount(MountCommand::Stop(a)) => {
            init_logging(None);
            cairn_fuse::unmount(&a.mountpoint)
                .map(|()| println!("unmounted {}", a.mountpoint.display()))
        }
        Command::Admin(_) => not_yet("admin"),
        Command::Proxy(_) => not_yet("proxy"),
        Command::Configure(_) => not_yet("configure"),
        Command::Manage(_) => not_yet("manage"),
        Command::Update(_) => not_yet("update"),
        Command::Csi(_) => not_yet("csi"),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            report_error(&e);
            1
        }
    }
}

fn not_yet(what: &str) -> anyhow::Result<()> {
    bail!("`cairn {what}` is not available yet in this version; see the README for what is")
}

static NOTIFY: std::sync::OnceLock<()> = std::sync::OnceLock::new();
static LOG_TO_FILE: std::sync::OnceLock<()> = std::sync::OnceLock::new();

fn report_error(e: &anyhow::Error) {
    let msg = format!("error: {e:#}");
    if LOG_TO_FILE.get().is_some() {
        tracing::error!("{msg}");
    }
    if NOTIFY.get().is_some() {
        // The parent is waiting on our stdout for the outcome.
        let mut out = std::io::stdout();
        let _ = writeln!(out, "{msg}");
        let _ = out.flush();
    }
    eprintln!("{msg}");
}

fn notify_ready(enabled: bool) {
    if enabled {
        let mut out = std::io::stdout();
        let _ = writeln!(out, "READY");
        let _ = out.flush();
        // Nothing more goes to the parent: point stdout at /dev/null.
        if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
            use std::os::fd::AsRawFd;
            // SAFETY: dup2 onto our own stdout descriptor.
            unsafe { libc::dup2(null.as_raw_fd(), 1) };
        }
    }
}

fn init_logging(file: Option<&Path>) {
    // fuser warns "Failed to umount filesystem" at the end of every session that was
    // unmounted from outside (`cairn mount stop`, umount), which is how every mount ends: its
    // session module's only warning, so only errors are kept from it.
    let filter = tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG")
        .unwrap_or_else(|_| "info,fuser::session=error".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    match file.and_then(|p| {
        if let Some(d) = p.parent() {
            let _ = std::fs::create_dir_all(d);
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .ok()
    }) {
        Some(f) => {
            let _ = builder
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(f))
                .try_init();
        }
        None => {
            use std::io::IsTerminal;
            let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            let _ = builder
                .with_ansi(ansi)
                .with_writer(std::io::stderr)
                .try_init();
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .context("start the async runtime")
}

fn serve(a: ServeArgs) -> anyhow::Result<()> {
    init_logging(None);
    let rt = runtime()?;
    rt.block_on(async {
        let server = MetaServer::start(ServeConfig {
            bind_addr: a.bind_addr,
            data_dir: a.data_dir,
            volume: VolumeInfo {
                name: a.volume,
                block_size: a.volume_settings.block_size,
                compression: a.volume_settings.compression,
                encrypted: a.volume_settings.encrypted,
            },
            sync: a.sync,
            flush_interval: a.flush_interval,
            session_timeout: a.session_timeout,
            backups: a.backup_dir.map(|d| (d, a.backup_interval, a.backup_keep)),
        })
        .await?;
        wait_for_signal().await;
        info!("stopping");
        server.stop().await
    })
}

fn meta_backup(a: BackupArgs) -> anyhow::Result<()> {
    init_logging(None);
    let rt = runtime()?;
    rt.block_on(async {
        let rpc = cairn_client::rpc::MetaClient::connect(RpcConfig {
            addr: a.meta.clone(),
            volume: a.volume.clone(),
            client_name: "cairn meta backup".into(),
            retry_for: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
        })
        .await
        .map_err(|e| anyhow!("{}", e.message))?;
        let to = std::path::absolute(&a.to).unwrap_or(a.to.clone());
        match rpc.call(cairn_proto::Request::Backup { to: to.display().to_string() }).await {
            Ok(cairn_proto::Reply::Backup { inodes, entries, blocks }) => {
                println!("backup written to {} on the server's host: {inodes} inodes, {entries} entries, {blocks} block map entries", to.display());
                Ok(())
            }
            Ok(other) => bail!("unexpected answer {other:?}"),
            Err(e) => bail!("backup failed: {}", e.message),
        }
    })
}

fn meta_verify(a: VerifyArgs) -> anyhow::Result<()> {
    init_logging(None);
    let _lock = cairn_meta::server::FolderLock::acquire(&a.data_dir)?;
    let r = cairn_meta::backup::verify_folder(&a.data_dir)?;
    println!(
        "volume `{}`: {} inodes, {} entries, {} block map entries",
        r.volume, r.inodes, r.entries, r.blocks
    );
    if r.problems.is_empty() {
        println!("no problems found");
        return Ok(());
    }
    for p in &r.problems {
        println!("problem: {p}");
    }
    bail!(
        "{} problems found in {}",
        r.problems.len(),
        a.data_dir.display()
    )
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn store_config(url: &str, s3: &S3Args, cache: Option<CacheConfig>) -> StoreConfig {
    StoreConfig {
        url: url.to_string(),
        s3_endpoint: s3.s3_endpoint.clone(),
        s3_region: s3.s3_region.clone(),
        access_key_id: None,
        secret_access_key: None,
        cache,
    }
}

/// Default of --cache-disk-size.
const DEFAULT_CACHE_DISK_SIZE: u64 = 10 << 30;
/// Smallest --cache-disk-size: room for a few of the largest (8 MiB) blocks.
const MIN_CACHE_DISK_SIZE: u64 = 64 << 20;

/// Where a mount's disk cache goes, as its flags say; see [`cache_plan`] and [`open_cache`].
#[derive(Debug)]
enum CachePlan {
    /// No disk cache, and why (for the log).
    Off(&'static str),
    /// --cache-dir: a folder that does not work fails the mount.
    Given(CacheConfig),
    /// The first of these folders that works. That none does must not stop a mount: it mounts
    /// without a disk cache and says why in the log (with --writeback, which cannot do without
    /// one, it fails).
    Default {
        dirs: Vec<PathBuf>,
        capacity: u64,
        writeback: bool,
    },
}

/// The disk cache flags, checked before a mount forks, so that mistakes show at once. `defaults`
/// gives the default folders, best first (none: no disk cache unless --cache-dir or
/// --writeback asks for one).
fn cache_plan(
    c: &CacheArgs,
    mountpoint: &Path,
    defaults: impl FnOnce() -> Vec<PathBuf>,
) -> anyhow::Result<CachePlan> {
    if c.no_disk_cache {
        if c.writeback {
            bail!("--writeback needs a disk cache, and --no-disk-cache turns it off: drop one of them (with --writeback, blocks wait in the cache folder until they are uploaded)");
        }
        if c.cache_disk_size.is_some() {
            bail!("--cache-disk-size is the size of the disk cache, and --no-disk-cache turns it off: drop one of them");
        }
        return Ok(CachePlan::Off("--no-disk-cache"));
    }
    let capacity = c.cache_disk_size.unwrap_or(DEFAULT_CACHE_DISK_SIZE);
    if capacity < MIN_CACHE_DISK_SIZE {
        bail!("--cache-disk-size of {capacity} bytes is too small: give at least 64MiB, e.g. --cache-disk-size 10GiB");
    }
    let Some(dir) = &c.cache_dir else {
        let dirs = defaults();
        if dirs.is_empty() {
            return Ok(CachePlan::Off("the blocks are on local disk already"));
        }
        return Ok(CachePlan::Default {
            dirs,
            capacity,
            writeback: c.writeback,
        });
    };
    let dir = std::path::absolute(dir)
        .with_context(|| format!("resolve --cache-dir {}", dir.display()))?;
    if dir.starts_with(mountpoint) {
        bail!(
            "--cache-dir {} is inside the mount point {}: choose a folder on a local disk outside it",
            dir.display(),
            mountpoint.display()
        );
    }
    Ok(CachePlan::Given(CacheConfig {
        dir,
        capacity,
        writeback: c.writeback,
    }))
}

/// The disk cache of a mount that is starting (in the process that will serve it): the
/// folder --cache-dir gives, or the first default folder that can be created and opened.
fn open_cache(plan: CachePlan, mountpoint: &Path) -> anyhow::Result<Option<CacheConfig>> {
    let (dirs, capacity, writeback) = match plan {
        CachePlan::Off(why) => {
            info!("no disk cache: {why}");
            return Ok(None);
        }
        CachePlan::Given(cfg) => return Ok(Some(cfg)),
        CachePlan::Default {
            dirs,
            capacity,
            writeback,
        } => (dirs, capacity, writeback),
    };
    let mut problems = Vec::new();
    for dir in dirs {
        match try_cache_dir(&dir, capacity, mountpoint) {
            Ok(()) => {
                return Ok(Some(CacheConfig {
                    dir,
                    capacity,
                    writeback,
                }))
            }
            Err(e) => problems.push(format!("{}: {e}", dir.display())),
        }
    }
    let problems = problems.join("; ");
    if writeback {
        bail!("--writeback needs a disk cache, and no default folder for one can be used ({problems}): give one with --cache-dir DIR");
    }
    tracing::warn!(
        "mounting without a disk cache: no default folder for one can be used ({problems}); \
         give one with --cache-dir DIR, or --no-disk-cache to mount without one and without this warning"
    );
    Ok(None)
}

/// Makes `dir` (mode 0700: it holds file contents) and opens it as a disk cache, to see that
/// it works; notes the mount point in it, so that a folder left by a mount point no longer used
/// can be told apart. The folder is released again for the block store to open.
fn try_cache_dir(dir: &Path, capacity: u64, mountpoint: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.starts_with(mountpoint) {
        return Err("it is inside the mount point".into());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create it: {e}"))?;
    let cache = cairn_blocks::DiskCache::open(dir, capacity).map_err(|e| e.to_string())?;
    let noted = std::fs::write(
        dir.join(MOUNT_POINT_NOTE),
        format!("{}\n", mountpoint.display()),
    );
    cache.release();
    noted.map_err(|e| format!("cannot write in it: {e}"))
}

/// The file in a default cache folder that names the mount point it is for.
const MOUNT_POINT_NOTE: &str = "mount-point";

/// The default disk cache folders of a mount of `volume` at `mountpoint` (canonical), best
/// first: `VOLUME-HASH` in $CAIRN_CACHE_ROOT if set, else in /var/cache/cairn and then in
/// $XDG_CACHE_HOME/cairn (or ~/.cache/cairn). HASH (16 hex digits, FNV-1a of the path) makes
/// one folder per mount point, so two mounts of a volume on one host never share one (a shared
/// folder is refused: it is locked by its mount). `var` reads the environment.
fn default_cache_dirs(
    volume: &str,
    mountpoint: &Path,
    var: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> Vec<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    // Volume names are checked later, by the server; this one names a folder now.
    let mut safe: String = volume
        .chars()
        .take(128)
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '_' | '-' => c,
            _ => '_',
        })
        .collect();
    if safe.is_empty() || safe.starts_with('.') {
        safe.insert(0, '_');
    }
    let hash = mountpoint
        .as_os_str()
        .as_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        });
    let name = format!("{safe}-{hash:016x}");
    let var = |k: &str| {
        var(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    if let Some(root) = var("CAIRN_CACHE_ROOT") {
        return vec![root.join(name)];
    }
    let mut dirs = vec![Path::new("/var/cache/cairn").join(&name)];
    let user = var("XDG_CACHE_HOME").or_else(|| var("HOME").map(|h| h.join(".cache")));
    if let Some(user) = user {
        dirs.push(user.join("cairn").join(&name));
    }
    dirs
}

/// The mount point as the default cache folder names it: canonical, without touching the mount
/// point itself if it cannot be (a dead mount left by a killed daemon answers ENOTCONN).
fn canonical_mountpoint(mountpoint: &Path) -> PathBuf {
    if let Ok(p) = std::fs::canonicalize(mountpoint) {
        return p;
    }
    match (mountpoint.parent(), mountpoint.file_name()) {
        (Some(parent), Some(name)) => std::fs::canonicalize(parent)
            .map(|p| p.join(name))
            .unwrap_or_else(|_| mountpoint.to_path_buf()),
        _ => mountpoint.to_path_buf(),
    }
}

/// The disk cache flags again, for a re-run of this binary.
fn cache_args(c: &CacheArgs) -> Vec<String> {
    let mut args = Vec::new();
    if let Some(dir) = &c.cache_dir {
        args.extend(["--cache-dir".into(), dir.display().to_string()]);
    }
    if c.no_disk_cache {
        args.push("--no-disk-cache".into());
    }
    if let Some(size) = c.cache_disk_size {
        args.extend(["--cache-disk-size".into(), size.to_string()]);
    }
    if c.writeback {
        args.push("--writeback".into());
    }
    args
}

fn client_name(mountpoint: &Path) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}:{}", host.trim(), mountpoint.display())
}

/// Re-run this binary in the foreground, in its own session, and relay its outcome.
fn daemonize(mut args: Vec<String>, log: &Path, what: &str) -> anyhow::Result<()> {
    args.push("--foreground".into());
    args.push("--notify-ready".into());
    if let Some(d) = log.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("create log folder {}", d.display()))?;
    }
    let logf = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("open log file {}", log.display()))?;
    let exe = std::env::current_exe().context("find this program's path")?;
    let mut child = Proc::new(exe)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(logf))
        .process_group(0)
        .spawn()
        .context("start the background process")?;
    let out = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(out).read_line(&mut line);
        let _ = tx.send(line);
    });
    match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(line) if line.trim() == "READY" => {
            println!("{what} (pid {}, log {})", child.id(), log.display());
            Ok(())
        }
        Ok(line) if line.starts_with("error: ") => {
            Err(anyhow!("{}", line.trim_start_matches("error: ").trim()))
        }
        Ok(_) => {
            let _ = child.wait();
            Err(anyhow!(
                "the background process exited before it was ready; see {}",
                log.display()
            ))
        }
        Err(_) => {
            let _ = child.kill();
            Err(anyhow!(
                "the background process was not ready after 120 s; see {}",
                log.display()
            ))
        }
    }
}

/// A key file: 32 raw bytes, or 64 hex digits (surrounding whitespace ignored).
fn read_key_file(path: &Path) -> anyhow::Result<[u8; 32]> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("read the encryption key file {}", path.display()))?;
    if let Ok(raw) = <[u8; 32]>::try_from(bytes.as_slice()) {
        return Ok(raw);
    }
    let text = String::from_utf8_lossy(&bytes);
    let hex = text.trim();
    let mut key = [0u8; 32];
    if hex.len() == 64 && hex.is_ascii() {
        let ok = (0..32).all(|i| match u8::from_str_radix(&hex[2 * i..2 * i + 2], 16) {
            Ok(b) => {
                key[i] = b;
                true
            }
            Err(_) => false,
        });
        if ok {
            return Ok(key);
        }
    }
    bail!(
        "encryption key file {} must hold 32 bytes or 64 hex digits (make one with `openssl rand -hex 32 > {}`)",
        path.display(),
        path.display()
    )
}

fn default_log(name: &str) -> PathBuf {
    PathBuf::from("/var/log/cairn").join(format!("{name}.log"))
}

/// A size as a user would write it: in the largest unit that divides it.
fn show_size(n: u64) -> String {
    for (unit, shift) in [("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if n > 0 && n.is_multiple_of(1 << shift) {
            return format!("{}{unit}", n >> shift);
        }
    }
    format!("{n} bytes")
}

fn mount_start(a: MountArgs) -> anyhow::Result<()> {
    let readahead = match a.transfer.readahead {
        Some(r) if r > a.cache_size => bail!(
            "--readahead {} is larger than --cache-size {}: blocks read ahead wait in the memory \
             cache, so a window larger than it evicts itself; lower --readahead or raise \
             --cache-size",
            show_size(r),
            show_size(a.cache_size)
        ),
        Some(r) => r,
        None => cairn_client::DEFAULT_READAHEAD.min(a.cache_size / 2),
    };
    let mountpoint = std::path::absolute(&a.mountpoint).unwrap_or(a.mountpoint.clone());
    let cache = cache_plan(&a.disk_cache, &mountpoint, || {
        default_cache_dirs(&a.volume, &canonical_mountpoint(&mountpoint), |k| {
            std::env::var_os(k)
        })
    })?;
    if !a.foreground {
        cairn_fuse::check_mountpoint(&mountpoint, a.nonempty)?;
        let log = a
            .log_file
            .clone()
            .unwrap_or_else(|| default_log(&format!("mount-{}", a.volume)));
        let mut args: Vec<String> = std::env::args().skip(1).collect();
        if a.log_file.is_none() {
            args.push("--log-file".into());
            args.push(log.display().to_string());
        }
        return daemonize(
            args,
            &log,
            &format!("mounted volume `{}` at {}", a.volume, mountpoint.display()),
        );
    }
    if a.notify_ready {
        let _ = NOTIFY.set(());
    }
    init_logging(a.log_file.as_deref());
    cairn_fuse::check_mountpoint(&mountpoint, a.nonempty)?;
    let cache = open_cache(cache, &canonical_mountpoint(&mountpoint))?;
    let rt = runtime()?;
    let encryption_key = a
        .encryption_key_file
        .as_deref()
        .map(read_key_file)
        .transpose()?;
    let cfg = ClientConfig {
        cache_bytes: a.cache_size,
        encryption_key,
        max_uploads: a.transfer.max_uploads.into(),
        max_fetches: a.transfer.max_downloads.into(),
        readahead_bytes: readahead,
        write_buffer_bytes: a.transfer.write_buffer,
        ..ClientConfig::new(
            RpcConfig {
                addr: a.meta.clone(),
                volume: a.volume.clone(),
                client_name: client_name(&mountpoint),
                retry_for: a.meta_timeout,
                connect_timeout: Duration::from_secs(5),
            },
            store_config(&a.store, &a.s3, cache),
        )
    };
    let client = rt
        .block_on(Client::connect(cfg))
        .map_err(|e| anyhow!("{}", e.message))?;
    serve_mount(
        &rt,
        client,
        &mountpoint,
        &a.volume,
        a.nonempty,
        a.notify_ready,
        async { std::future::pending::<()>().await },
    )
}

/// Turn transparent huge pages off for this process. mimalloc asks for them on its arenas, so
/// while a mount's memory grows (the block cache filling), the first touch of each 2 MiB faulted
/// in and zeroed a whole huge page inside one request: measured, one write in twenty of a
/// small-file workload took 2.7 ms of CPU in the kernel's page clearing instead of 0.1 ms. With
/// 4 KiB pages the same zeroing is spread over the requests that touch the memory.
fn no_huge_pages() {
    // SAFETY: prctl with PR_SET_THP_DISABLE takes integer arguments and changes only this
    // process's memory policy.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc != 0 {
        debug!(
            "transparent huge pages stay on: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Mount `client` at `mountpoint` and serve until unmounted, or until `stop` completes or a
/// signal arrives (both unmount first).
fn serve_mount(
    rt: &tokio::runtime::Runtime,
    client: Arc<Client>,
    mountpoint: &Path,
    volume: &str,
    nonempty: bool,
    notify: bool,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    no_huge_pages();
    let store = client.store_description();
    let fs = CairnFuse::new(client, rt.handle().clone());
    let opts = MountOptions {
        mountpoint: mountpoint.to_path_buf(),
        fsname: format!("cairn:{volume}"),
        allow_other: true,
        nonempty,
        // Metadata requests wait for their answer on the FUSE thread (thread lanes, see
        // cairn_client::rpc): with 2 threads, 4 processes creating files sent at most 2 requests
        // to the server at once. Each thread holds a 1 MiB request buffer.
        threads: 16,
    };
    let mut session = MountedSession::mount(fs, &opts)?;
    let mut unmounter = session.unmounter();
    info!(volume, mountpoint = %mountpoint.display(), store, "mounted");
    notify_ready(notify);
    rt.spawn(async move {
        tokio::select! {
            _ = wait_for_signal() => {}
            _ = stop => {}
        }
        info!("unmounting");
        // Files still open keep the mount busy: retry for a while rather than detach under them.
        for _ in 0..150 {
            match unmounter.unmount() {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!("unmount failed, retrying: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
    session.run()?;
    info!(mountpoint = %mountpoint.display(), "unmounted");
    Ok(())
}

fn up(a: UpArgs) -> anyhow::Result<()> {
    if let Some(dir) = a.stop {
        init_logging(None);
        return up_stop(&dir);
    }
    let dir = a.dir.clone().expect("clap requires DIR without --stop");
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let dir = std::fs::canonicalize(&dir).with_context(|| format!("resolve {}", dir.display()))?;
    let state = dir.join(".cairn");
    let mnt = dir.join("mnt");
    // The blocks of DIR/.cairn/blocks are on local disk already: a disk cache only when they
    // are not, or for --writeback.
    let cache = cache_plan(&a.cache, &mnt, || {
        if a.store.is_some() || a.cache.writeback {
            vec![state.join("cache")]
        } else {
            Vec::new()
        }
    })?;
    std::fs::create_dir_all(&mnt).with_context(|| format!("create {}", mnt.display()))?;
    if state.join("up.pid").exists()
        && std::fs::read_dir(&mnt)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
    {
        bail!(
            "cairn already seems to run in {}: stop it first with `cairn up --stop {}`",
            dir.display(),
            dir.display()
        );
    }
    if !a.foreground {
        cairn_fuse::check_mountpoint(&mnt, false)?;
        let log = state.join("cairn.log");
        let mut args: Vec<String> = vec!["up".into(), dir.display().to_string()];
        if let Some(s) = &a.store {
            args.extend(["--store".into(), s.clone()]);
        }
        if let Some(e) = &a.s3.s3_endpoint {
            args.extend(["--s3-endpoint".into(), e.clone()]);
        }
        if let Some(r) = &a.s3.s3_region {
            args.extend(["--s3-region".into(), r.clone()]);
        }
        args.extend(cache_args(&a.cache));
        daemonize(
            args,
            &log,
            &format!("cairn is up: {} is mounted", mnt.display()),
        )?;
        println!("  state:  {}", state.display());
        println!("  stop:   cairn up --stop {}", dir.display());
        return Ok(());
    }
    if a.notify_ready {
        let _ = NOTIFY.set(());
        init_logging(Some(&state.join("cairn.log")));
    } else {
        init_logging(None);
    }
    cairn_fuse::check_mountpoint(&mnt, false)?;
    let cache = open_cache(cache, &mnt)?;
    let blocks = state.join("blocks");
    std::fs::create_dir_all(&blocks).with_context(|| format!("create {}", blocks.display()))?;
    let store_url = a
        .store
        .clone()
        .unwrap_or_else(|| format!("file://{}", blocks.display()));
    let rt = runtime()?;
    let server = rt.block_on(MetaServer::start(ServeConfig {
        bind_addr: "127.0.0.1:0".parse().expect("literal address"),
        data_dir: state.join("meta"),
        volume: VolumeInfo {
            name: "default".into(),
            block_size: 4 << 20,
            compression: DEFAULT_COMPRESSION.into(),
            encrypted: false,
        },
        sync: true,
        flush_interval: Duration::from_secs(1),
        session_timeout: Duration::from_secs(60),
        backups: None,
    }))?;
    let cfg = ClientConfig::new(
        RpcConfig {
            addr: server.local_addr().to_string(),
            volume: "default".into(),
            client_name: client_name(&mnt),
            retry_for: Duration::from_secs(600),
            connect_timeout: Duration::from_secs(5),
        },
        store_config(&store_url, &a.s3, cache),
    );
    let client = rt
        .block_on(Client::connect(cfg))
        .map_err(|e| anyhow!("{}", e.message))?;
    std::fs::write(state.join("up.pid"), format!("{}\n", std::process::id()))
        .context("write the pid file")?;
    if !a.notify_ready {
        println!(
            "cairn is up: {} is mounted (blocks in {store_url})",
            mnt.display()
        );
        println!("  stop: Ctrl-C, or `cairn up --stop {}`", dir.display());
    }
    let result = serve_mount(&rt, client, &mnt, "default", false, a.notify_ready, async {
        std::future::pending::<()>().await
    });
    let stopped = rt.block_on(server.stop());
    let _ = std::fs::remove_file(state.join("up.pid"));
    result.and(stopped)
}

fn up_stop(dir: &Path) -> anyhow::Result<()> {
    let pidfile = dir.join(".cairn/up.pid");
    let mnt = dir.join("mnt");
    let pid: i32 = match std::fs::read_to_string(&pidfile) {
        Ok(s) => s
            .trim()
            .parse()
            .with_context(|| format!("read pid from {}", pidfile.display()))?,
        Err(_) => {
            // Nothing running; clear a mount a killed process may have left.
            if cairn_fuse::clear_stale_mount(&mnt)? {
                println!("cleared a stale mount at {}", mnt.display());
                return Ok(());
            }
            bail!(
                "cairn is not running in {} (no {}); nothing to stop",
                dir.display(),
                pidfile.display()
            );
        }
    };
    // SAFETY: sending a signal has no memory effects.
    if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        let _ = std::fs::remove_file(&pidfile);
        cairn_fuse::clear_stale_mount(&mnt)?;
        println!("cairn was not running (stale pid {pid}); cleaned up");
        return Ok(());
    }
    let started = Instant::now();
    // SAFETY: signal 0 only checks that the process exists.
    while unsafe { libc::kill(pid, 0) } == 0 {
        if started.elapsed() > Duration::from_secs(60) {
            bail!(
                "cairn (pid {pid}) did not stop within 60 s; a process may still be using {}",
                mnt.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("cairn stopped; {} is unmounted", mnt.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |k| {
            vars.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| OsString::from(v))
        }
    }

    fn args(no_disk_cache: bool, writeback: bool, size: Option<u64>) -> CacheArgs {
        CacheArgs {
            cache_dir: None,
            no_disk_cache,
            cache_disk_size: size,
            writeback,
        }
    }

    #[test]
    fn default_folders_are_per_mount_point_and_follow_the_environment() {
        let mp = Path::new("/mnt/data");
        let dirs = default_cache_dirs("vol1", mp, env(&[("HOME", "/home/ann")]));
        assert_eq!(dirs.len(), 2, "{dirs:?}");
        let name = dirs[0].file_name().unwrap().to_str().unwrap().to_string();
        let hash = name.strip_prefix("vol1-").expect("VOLUME-HASH");
        assert!(
            hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()),
            "{name}"
        );
        assert_eq!(dirs[0], Path::new("/var/cache/cairn").join(&name));
        assert_eq!(dirs[1], Path::new("/home/ann/.cache/cairn").join(&name));
        // Stable: the same mount point finds its folder again, another one gets its own.
        assert_eq!(default_cache_dirs("vol1", mp, env(&[])), dirs[..1]);
        assert_ne!(
            default_cache_dirs("vol1", Path::new("/mnt/data2"), env(&[]))[0],
            dirs[0]
        );

        let xdg = default_cache_dirs(
            "vol1",
            mp,
            env(&[("HOME", "/home/ann"), ("XDG_CACHE_HOME", "/x/cache")]),
        );
        assert_eq!(xdg[1], Path::new("/x/cache/cairn").join(&name));
        // A relative XDG_CACHE_HOME is ignored, as the XDG spec says.
        let rel = default_cache_dirs(
            "vol1",
            mp,
            env(&[("HOME", "/home/ann"), ("XDG_CACHE_HOME", "rel")]),
        );
        assert_eq!(rel, dirs);

        let root = default_cache_dirs(
            "vol1",
            mp,
            env(&[("HOME", "/home/ann"), ("CAIRN_CACHE_ROOT", "/t/caches")]),
        );
        assert_eq!(root, vec![Path::new("/t/caches").join(&name)]);

        // A volume name never makes the folder leave its parent.
        let odd = default_cache_dirs("../x/y", mp, env(&[]));
        assert_eq!(odd[0].parent(), Some(Path::new("/var/cache/cairn")));
        assert!(odd[0]
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("_.._x_y-"));
    }

    #[test]
    fn flags_that_contradict_each_other_are_refused() {
        let mp = Path::new("/mnt/m");
        let some = || vec![PathBuf::from("/tmp/c")];
        for (a, says) in [
            (args(true, true, None), "--writeback needs a disk cache"),
            (args(true, false, Some(1 << 30)), "--cache-disk-size"),
            (args(false, false, Some(1 << 20)), "too small"),
        ] {
            let err = cache_plan(&a, mp, some).unwrap_err().to_string();
            assert!(err.contains(says), "{err}");
        }
        assert!(matches!(
            cache_plan(&args(true, false, None), mp, some).unwrap(),
            CachePlan::Off(_)
        ));
        match cache_plan(&args(false, true, None), mp, some).unwrap() {
            CachePlan::Default {
                dirs,
                capacity,
                writeback,
            } => {
                assert_eq!(dirs, some());
                assert_eq!(capacity, DEFAULT_CACHE_DISK_SIZE);
                assert!(writeback);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_unusable_default_folder_falls_back_and_none_is_no_cache() {
        let tmp = tempdir();
        let mp = tmp.join("mnt");
        // A file where a folder should be: cannot be created.
        let blocked = tmp.join("file");
        std::fs::write(&blocked, b"x").unwrap();
        let good = tmp.join("caches/vol-0123456789abcdef");
        let plan = CachePlan::Default {
            dirs: vec![blocked.join("c"), mp.join("inside"), good.clone()],
            capacity: 1 << 30,
            writeback: false,
        };
        let cfg = open_cache(plan, &mp)
            .unwrap()
            .expect("the third folder works");
        assert_eq!(cfg.dir, good);
        assert_eq!(
            std::fs::read_to_string(good.join(MOUNT_POINT_NOTE)).unwrap(),
            format!("{}\n", mp.display())
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&good).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "the folder holds file contents");
        // Released: the block store can open it.
        cairn_blocks::DiskCache::open(&good, 1 << 30)
            .unwrap()
            .release();

        let none = || CachePlan::Default {
            dirs: vec![blocked.join("c")],
            capacity: 1 << 30,
            writeback: false,
        };
        assert!(open_cache(none(), &mp).unwrap().is_none());
        let err = open_cache(
            CachePlan::Default {
                dirs: vec![blocked.join("c")],
                capacity: 1 << 30,
                writeback: true,
            },
            &mp,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("--writeback needs a disk cache") && err.contains("--cache-dir"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&tmp);
    }

    /// A fresh folder under the system's temp folder (the cli crate has no tempfile).
    fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "cairn-cli-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
