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
use tracing::info;

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

/// The disk cache settings, checked (before a mount forks, so that mistakes show at once).
/// None without --cache-dir.
fn cache_config(c: &CacheArgs, mountpoint: &Path) -> anyhow::Result<Option<CacheConfig>> {
    let Some(dir) = &c.cache_dir else {
        if c.writeback {
            bail!("--writeback needs --cache-dir DIR: blocks wait there, on local disk, until they are uploaded");
        }
        if c.cache_disk_size.is_some() {
            bail!("--cache-disk-size is the size of the disk cache: give its folder with --cache-dir DIR too");
        }
        return Ok(None);
    };
    let capacity = c.cache_disk_size.unwrap_or(DEFAULT_CACHE_DISK_SIZE);
    if capacity < MIN_CACHE_DISK_SIZE {
        bail!("--cache-disk-size of {capacity} bytes is too small: give at least 64MiB, e.g. --cache-disk-size 10GiB");
    }
    let dir = std::path::absolute(dir)
        .with_context(|| format!("resolve --cache-dir {}", dir.display()))?;
    if dir.starts_with(mountpoint) {
        bail!(
            "--cache-dir {} is inside the mount point {}: choose a folder on a local disk outside it",
            dir.display(),
            mountpoint.display()
        );
    }
    Ok(Some(CacheConfig {
        dir,
        capacity,
        writeback: c.writeback,
    }))
}

/// The disk cache flags again, for a re-run of this binary.
fn cache_args(c: &CacheArgs) -> Vec<String> {
    let mut args = Vec::new();
    if let Some(dir) = &c.cache_dir {
        args.extend(["--cache-dir".into(), dir.display().to_string()]);
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

fn mount_start(a: MountArgs) -> anyhow::Result<()> {
    let mountpoint = std::path::absolute(&a.mountpoint).unwrap_or(a.mountpoint.clone());
    let cache = cache_config(&a.disk_cache, &mountpoint)?;
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
    let rt = runtime()?;
    let encryption_key = a
        .encryption_key_file
        .as_deref()
        .map(read_key_file)
        .transpose()?;
    let cfg = ClientConfig {
        cache_bytes: a.cache_size,
        encryption_key,
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
    let cache = cache_config(&a.cache, &mnt)?;
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
            compression: "zstd".into(),
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
