//! Folders, hashes, deterministic random data and waiting, for tests.

use sha2::{Digest, Sha256};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::mount::{lazy_unmount, mounts_under};

/// Where every testkit folder lives: `$CAIRN_TEST_ROOT`, default `/tmp/cairn-tests` (mode 0755).
pub fn test_root() -> PathBuf {
    let root = std::env::var_os("CAIRN_TEST_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/cairn-tests"));
    std::fs::create_dir_all(&root)
        .unwrap_or_else(|e| panic!("cannot create test root {}: {e}", root.display()));
    let _ = std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755));
    root
}

/// A fresh folder under [`test_root`], removed on drop unless `CAIRN_KEEP_TEST_DIRS=1` or a test
/// is failing with `CAIRN_KEEP_FAILED=1`. It is never removed while something is mounted under it:
/// it tries `umount -l` first, and leaves the folder (with a message) if a mount remains.
pub struct TestDir {
    path: PathBuf,
}

/// Creates a [`TestDir`] whose name starts with `prefix` (a test name, say), mode 0755 so that
/// unprivileged users (pjdfstest's `tests`) can reach what is inside.
pub fn test_dir(prefix: &str) -> TestDir {
    let clean: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let root = test_root();
    let path = loop {
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = root.join(format!("{clean}-{}-{n}-{nanos:x}", std::process::id()));
        match std::fs::create_dir(&p) {
            Ok(()) => break p,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("cannot create test folder {}: {e}", p.display()),
        }
    };
    let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755));
    TestDir { path }
}

impl TestDir {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `path/name`, created as a folder (mode 0755).
    pub fn subdir(&self, name: &str) -> PathBuf {
        let p = self.path.join(name);
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755));
        p
    }
}

/// Whether the folders of failing tests are kept (`CAIRN_KEEP_FAILED=1`).
pub(crate) fn keep_failed() -> bool {
    std::env::var("CAIRN_KEEP_FAILED").is_ok_and(|v| v == "1")
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let keep = std::env::var("CAIRN_KEEP_TEST_DIRS").is_ok_and(|v| v == "1")
            || (std::thread::panicking() && keep_failed());
        for m in mounts_under(&self.path) {
            eprintln!(
                "testkit: {} still mounted at cleanup; umount -l",
                m.display()
            );
            lazy_unmount(&m);
        }
        let left = mounts_under(&self.path);
        if !left.is_empty() {
            eprintln!(
                "testkit: NOT removing {}: still mounted: {left:?}",
                self.path.display()
            );
            return;
        }
        if keep {
            eprintln!("testkit: keeping {}", self.path.display());
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!("testkit: cannot remove {}: {e}", self.path.display());
        }
    }
}

/// True if FUSE tests should run. They need root and `/dev/fuse`: when either is missing this
/// panics with what to do, unless `CAIRN_SKIP_FUSE_TESTS=1`, when it returns false (the test
/// should return early).
pub fn require_fuse() -> bool {
    if std::env::var("CAIRN_SKIP_FUSE_TESTS").is_ok_and(|v| v == "1") {
        eprintln!("CAIRN_SKIP_FUSE_TESTS=1: skipping a FUSE test");
        return false;
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let dev = Path::new("/dev/fuse").exists();
    assert!(
        root && dev,
        "FUSE tests need root and /dev/fuse (root: {root}, /dev/fuse: {dev}); run scripts/setup \
         as root, or set CAIRN_SKIP_FUSE_TESTS=1 to skip them"
    );
    true
}

/// Lowercase hex SHA-256 of `data`.
pub fn sha256_bytes(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// Lowercase hex SHA-256 of a file's contents, read in 1 MiB chunks.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A small deterministic PRNG (xoshiro256**), so a failing run can be replayed from its seed.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    /// A seed from `CAIRN_TEST_SEED` if set, else from the clock; printed so a failure can be
    /// replayed.
    pub fn from_env_or_time(what: &str) -> Rng {
        let seed = seed_from_env_or_time();
        eprintln!("{what}: seed {seed} (replay with CAIRN_TEST_SEED={seed})");
        Rng::new(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in `lo..hi` (hi exclusive; hi > lo).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(hi > lo, "empty range {lo}..{hi}");
        lo + self.next_u64() % (hi - lo)
    }

    /// Fills `buf`. Filling in pieces whose lengths are multiples of 8 gives the same bytes as one
    /// fill of the whole.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let last = self.next_u64().to_le_bytes();
            let n = rest.len();
            rest.copy_from_slice(&last[..n]);
        }
    }
}

/// The seed of a randomized test: `CAIRN_TEST_SEED` if set (to replay a run), else the clock.
pub fn seed_from_env_or_time() -> u64 {
    std::env::var("CAIRN_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}

/// `len` pseudo-random (incompressible) bytes from `seed`.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Rng::new(seed).fill(&mut v);
    v
}

/// Fills `buf` with pseudo-random bytes from `seed`.
pub fn fill_random(seed: u64, buf: &mut [u8]) {
    Rng::new(seed).fill(buf);
}

/// Polls `f` every 50 ms until it returns true or `timeout` passes; returns the last result.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Writes `len` pseudo-random bytes from `seed` to `path` (created or truncated) in 1 MiB
/// writes, then closes it (after fsync if `sync`). Returns the SHA-256 of what it wrote, so large
/// files never need to be held in memory.
pub fn write_random_file(path: &Path, seed: u64, len: u64, sync: bool) -> std::io::Result<String> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    let hash = random_chunks(seed, len, |chunk| f.write_all(chunk))?;
    if sync {
        f.sync_all()?;
    }
    Ok(hash)
}

/// The SHA-256 that [`write_random_file`] returns for (`seed`, `len`), without writing.
pub fn random_file_hash(seed: u64, len: u64) -> String {
    random_chunks(seed, len, |_| Ok(())).expect("hashing alone cannot fail")
}

/// Generate the bytes of (`seed`, `len`) in 1 MiB chunks, hand each to `each`, and return
/// their SHA-256.
fn random_chunks(
    seed: u64,
    len: u64,
    mut each: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<String> {
    let mut rng = Rng::new(seed);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill(&mut buf[..n]);
        each(&buf[..n])?;
        h.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(hex(&h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_fill_matches_one_fill() {
        let whole = random_bytes(9, 3 << 20);
        let mut rng = Rng::new(9);
        let mut pieces = vec![0u8; 3 << 20];
        for c in pieces.chunks_mut(1 << 20) {
            rng.fill(c);
        }
        assert!(whole == pieces);
        assert_eq!(sha256_bytes(&whole), random_file_hash(9, 3 << 20));
    }
}
