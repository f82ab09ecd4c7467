//! Command-line arguments. Parsing only validates; `run` resolves them into crate configs.

use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

const STORE_HEADING: &str = "Object store";
const CACHE_HEADING: &str = "Disk cache";

/// cairn: a distributed POSIX filesystem over object storage.
#[derive(Parser, Debug)]
#[command(name = "cairn", version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("CAIRN_GIT_COMMIT"), ")"), propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// All-in-one: metadata server and a local block store under DIR/.cairn, mounted at DIR/mnt.
    Up(UpArgs),
    /// Metadata server.
    #[command(subcommand)]
    Meta(MetaCommand),
    /// Mount client.
    #[command(subcommand)]
    Mount(MountCommand),
    /// Admin server (not available yet).
    Admin(NotYet),
    /// Caching proxy server (not available yet).
    Proxy(NotYet),
    /// Client of the admin API (not available yet).
    Configure(NotYet),
    /// Install and control the servers as systemd units (not available yet).
    Manage(NotYet),
    /// Update this binary from the admin server (not available yet).
    Update(NotYet),
    /// Kubernetes CSI driver (not available yet).
    Csi(NotYet),
}

/// Arguments of a command that does not exist yet.
#[derive(Args, Debug)]
pub struct NotYet {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    pub rest: Vec<String>,
}

#[derive(Args, Debug)]
pub struct UpArgs {
    /// Folder to hold everything: DIR/.cairn (state) and DIR/mnt (the mount).
    #[arg(required_unless_present = "stop")]
    pub dir: Option<PathBuf>,
    /// Stop the filesystem that `cairn up DIR` started, and unmount it.
    #[arg(long, value_name = "DIR", conflicts_with = "dir")]
    pub stop: Option<PathBuf>,
    /// Keep running in this terminal; Ctrl-C stops and unmounts.
    #[arg(long)]
    pub foreground: bool,
    /// Block store instead of DIR/.cairn/blocks, e.g. s3://bucket/prefix (AWS_* variables give credentials).
    #[arg(long, value_name = "URL", help_heading = STORE_HEADING)]
    pub store: Option<String>,
    #[command(flatten)]
    pub s3: S3Args,
    #[command(flatten)]
    pub cache: CacheArgs,
    /// Internal: report readiness on stdout (used when forking into the background).
    #[arg(long, hide = true)]
    pub notify_ready: bool,
}

#[derive(Subcommand, Debug)]
pub enum MetaCommand {
    /// Run the metadata server in the foreground.
    Serve(ServeArgs),
    /// Write a consistent copy of a running server's database (the server keeps serving).
    Backup(BackupArgs),
    /// Restore a backup into the data folder of a stopped server, after checking it.
    Restore(RestoreArgs),
    /// Check the consistency of a stopped server's database.
    Verify(VerifyArgs),
}

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// Metadata server address, host:port.
    #[arg(long, env = "CAIRN_META")]
    pub meta: String,
    /// Volume the server holds.
    #[arg(long, default_value = "default")]
    pub volume: String,
    /// File to write, on the server's host (must not exist).
    #[arg(long)]
    pub to: PathBuf,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Backup file written by `cairn meta backup`.
    #[arg(long)]
    pub from: PathBuf,
    /// Data folder of the (stopped) server to restore into.
    #[arg(long)]
    pub data_dir: PathBuf,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Data folder of the (stopped) server.
    #[arg(long)]
    pub data_dir: PathBuf,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7420")]
    pub bind_addr: SocketAddr,
    /// Database folder. Only one server may use it at a time.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Volume this server holds; created on first start with the settings below.
    #[arg(long, default_value = "default", value_parser = parse_volume_name)]
    pub volume: String,
    #[command(flatten)]
    pub volume_settings: VolumeSettings,
    /// Sync every commit (its redo log record) before acknowledging it; concurrent commits share
    /// one sync. Without it, the log is synced every --flush-interval: a crash of the server's
    /// host loses the changes of the last interval, although they were acknowledged (a crash of
    /// the process alone loses nothing).
    #[arg(long)]
    pub sync: bool,
    /// Without --sync: how often commits are made durable.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub flush_interval: std::time::Duration,
    /// A mount not heard from for this long loses its session: its locks are released and
    /// the unlinked files it kept open are freed.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub session_timeout: std::time::Duration,
    /// Take scheduled online backups into this folder (as meta-TIME.redb).
    #[arg(long)]
    pub backup_dir: Option<PathBuf>,
    /// With --backup-dir: time between backups.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub backup_interval: std::time::Duration,
    /// With --backup-dir: how many backups to keep (the oldest go first).
    #[arg(long, default_value_t = 24)]
    pub backup_keep: usize,
}

/// Compression of a new volume unless told otherwise: lz4 costs little enough CPU per byte
/// written that a mount keeps up with the store on a small host, while data already compressed
/// (archives, media, BAM, Parquet: most of what large pipelines move) gains nothing from more.
pub const DEFAULT_COMPRESSION: &str = "lz4";

/// Settings fixed when a volume is created.
#[derive(Args, Debug, Clone)]
pub struct VolumeSettings {
    /// Block size of a new volume: 256KiB, 512KiB, 1MiB, 2MiB, 4MiB or 8MiB.
    #[arg(long, default_value = "4MiB", value_parser = parse_block_size)]
    pub block_size: u32,
    /// Compression of new blocks: lz4, zstd, zstd:LEVEL (1-19) or none. zstd stores text in
    /// about half the space lz4 does, for about twice the CPU on every write.
    #[arg(long, default_value = DEFAULT_COMPRESSION, value_parser = parse_compression)]
    pub compression: String,
    /// A new volume's blocks are encrypted by its mounts (AES-256-GCM with a key only the
    /// mounts hold: `cairn mount start --encryption-key-file`).
    #[arg(long)]
    pub encrypted: bool,
}

#[derive(Subcommand, Debug)]
pub enum MountCommand {
    /// Mount a volume. Returns once the mount is live, leaving a daemon (unless --foreground).
    Start(Box<MountArgs>),
    /// Unmount cleanly: open files are flushed and the daemon exits.
    Stop(StopArgs),
}

#[derive(Args, Debug)]
pub struct MountArgs {
    /// Volume name.
    pub volume: String,
    /// Where to mount: an existing, empty directory.
    pub mountpoint: PathBuf,
    /// Metadata server address, host:port.
    #[arg(long, env = "CAIRN_META")]
    pub meta: String,
    /// Where the volume's blocks live: file:///abs/path or s3://bucket[/prefix].
    #[arg(long, value_name = "URL", help_heading = STORE_HEADING, env = "CAIRN_STORE")]
    pub store: String,
    #[command(flatten)]
    pub s3: S3Args,
    /// Stay in the foreground (logs to stderr unless --log-file).
    #[arg(long)]
    pub foreground: bool,
    /// Log file [default: /var/log/cairn/mount-VOLUME.log when in the background].
    #[arg(long)]
    pub log_file: Option<PathBuf>,
    /// Mount over a non-empty directory.
    #[arg(long)]
    pub nonempty: bool,
    /// Key of an encrypted volume: a file of 32 bytes, or of 64 hex digits (e.g. made with
    /// `openssl rand -hex 32 > key`). It never leaves this host.
    #[arg(long, value_name = "PATH")]
    pub encryption_key_file: Option<std::path::PathBuf>,
    /// Memory for cached blocks, e.g. 512MiB.
    #[arg(long, default_value = "512MiB", value_parser = parse_size)]
    pub cache_size: u64,
    #[command(flatten)]
    pub disk_cache: CacheArgs,
    /// How long operations wait for an unreachable metadata server before failing with EIO.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub meta_timeout: std::time::Duration,
    #[command(flatten)]
    pub transfer: TransferArgs,
    /// Internal: report readiness on stdout (used when forking into the background).
    #[arg(long, hide = true)]
    pub notify_ready: bool,
}

const TRANSFER_HEADING: &str = "Transfers (per mount)";

/// How much of the object store a mount uses at once. The defaults suit a host with a few
/// cores next to a store on a fast network; raise them for a store far away (more requests in
/// flight hide its latency), lower them to leave bandwidth and memory to others.
#[derive(Args, Debug, Clone)]
pub struct TransferArgs {
    /// Most blocks uploading at once (each holds one block in memory).
    #[arg(long, default_value_t = 16, value_name = "N", help_heading = TRANSFER_HEADING,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub max_uploads: u16,
    /// Most block reads in flight at once, read-ahead included (each holds a block in memory).
    #[arg(long, default_value_t = 16, value_name = "N", help_heading = TRANSFER_HEADING,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub max_downloads: u16,
    /// Largest read-ahead window of a file read sequentially, e.g. 64MiB; 0 turns read-ahead
    /// off. It grows from one block, doubling with each sequential read [default: 32MiB, or
    /// half of --cache-size if that is less]
    #[arg(long, value_name = "SIZE", help_heading = TRANSFER_HEADING, value_parser = parse_size)]
    pub readahead: Option<u64>,
    /// Written data held in memory until it is committed, for all files together, e.g.
    /// 256MiB; a writer that would go over it first commits its own blocks.
    #[arg(long, default_value = "256MiB", value_name = "SIZE", help_heading = TRANSFER_HEADING,
          value_parser = parse_size)]
    pub write_buffer: u64,
}

#[derive(Args, Debug, Clone, Default)]
pub struct S3Args {
    /// S3 endpoint, e.g. http://127.0.0.1:8333 [default: AWS].
    #[arg(long, value_name = "URL", help_heading = STORE_HEADING, env = "CAIRN_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// S3 region [default: us-east-1].
    #[arg(long, help_heading = STORE_HEADING, env = "CAIRN_S3_REGION")]
    pub s3_region: Option<String>,
}

/// The on-disk block cache (L2) and writeback. A mount has a disk cache unless
/// --no-disk-cache: random reads of large files fill it in the background, so that they stop
/// paying the bucket's latency at every read.
#[derive(Args, Debug, Clone, Default)]
pub struct CacheArgs {
    /// Keep blocks read and written in this folder (as stored in the bucket: compressed, and
    /// encrypted if the volume is). One process per folder; created if missing. Default of
    /// `mount start`: /var/cache/cairn/VOLUME-HASH (HASH: 16 hex digits from the mount point),
    /// else, if that cannot be used, $XDG_CACHE_HOME/cairn/VOLUME-HASH or
    /// ~/.cache/cairn/VOLUME-HASH, else no disk cache (with a warning in the log);
    /// $CAIRN_CACHE_ROOT, if set, replaces these folders. Default of `up`: DIR/.cairn/cache
    /// with --store, none with blocks in DIR/.cairn/blocks.
    #[arg(
        long,
        value_name = "DIR",
        help_heading = CACHE_HEADING,
        conflicts_with = "no_disk_cache"
    )]
    pub cache_dir: Option<PathBuf>,
    /// No disk cache: every read that misses the memory cache goes to the object store. A
    /// random read of a file of up to an eighth of the host's memory has the whole file read in
    /// the background, for the kernel's page cache.
    #[arg(long, help_heading = CACHE_HEADING)]
    pub no_disk_cache: bool,
    /// Most bytes the disk cache holds [default: 10GiB]. It also leaves 10% of its filesystem
    /// (at most 1 GiB) free.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, help_heading = CACHE_HEADING)]
    pub cache_disk_size: Option<u64>,
    /// Acknowledge writes once their blocks are safe in the disk cache folder (fsynced) and
    /// upload them in the background, retrying until the object store takes them; blocks left
    /// by a crash are uploaded when the mount starts again with the same folder, before it
    /// serves. Other hosts see a file's new contents only once its blocks are uploaded.
    #[arg(long, help_heading = CACHE_HEADING)]
    pub writeback: bool,
}

#[derive(Args, Debug)]
pub struct StopArgs {
    /// The mount point to unmount.
    pub mountpoint: PathBuf,
}

/// Volume names: 1 to 128 of `A-Z a-z 0-9 . _ -`, not starting with a dot (they name folders
/// in the bucket).
fn parse_volume_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !ok {
        return Err(format!("volume name `{s}` is not valid: use 1 to 128 letters, digits, `.`, `_` or `-`, not starting with `.`"));
    }
    Ok(s.to_string())
}

/// Sizes like 4MiB, 512KiB, 1G, 4096.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("`{s}` is not a size: use a number with an optional unit, e.g. 4MiB")
    })?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "`{s}` has an unknown unit: use KiB, MiB, GiB or TiB"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large"))
}

fn parse_block_size(s: &str) -> Result<u32, String> {
    let n = parse_size(s)?;
    const OK: [u64; 6] = [256 << 10, 512 << 10, 1 << 20, 2 << 20, 4 << 20, 8 << 20];
    if !OK.contains(&n) {
        return Err(format!(
            "block size `{s}` is not supported: use 256KiB, 512KiB, 1MiB, 2MiB, 4MiB or 8MiB"
        ));
    }
    Ok(n as u32)
}

fn parse_compression(s: &str) -> Result<String, String> {
    s.parse::<cairn_blocks::Compression>()
        .map(|c| c.to_string())
        .map_err(|e| e.to_string())
}

/// Durations like 500ms, 1s, 10m, 2h.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration: use e.g. 500ms, 1s, 10m"))?;
    Ok(match unit {
        "ms" => std::time::Duration::from_millis(n),
        "" | "s" => std::time::Duration::from_secs(n),
        "m" => std::time::Duration::from_secs(n * 60),
        "h" => std::time::Duration::from_secs(n * 3600),
        _ => return Err(format!("`{s}` has an unknown unit: use ms, s, m or h")),
    })
}
