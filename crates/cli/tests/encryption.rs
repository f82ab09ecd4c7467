//! End-to-end encryption: the bucket holds only ciphertext, and a mount without the key or with
//! another key is refused with a clear error instead of reading garbage.

mod common;

use common::*;
use std::fs;
use std::path::Path;
use std::time::Duration;

fn all_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).expect("list") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            out.extend(all_bytes(&p));
        } else {
            out.extend(fs::read(&p).expect("read object"));
        }
    }
    out
}

fn try_mount(c: &Cluster, mp: &Path, key: Option<&Path>) -> CmdOutput {
    let mut cmd = cairn(&["mount", "start", c.volume()]);
    cmd.arg(mp)
        .args(["--meta", &c.meta().addr()])
        .args(&c.store_args().args);
    if let Some(k) = key {
        cmd.arg("--encryption-key-file").arg(k);
    }
    cmd.arg("--log-file").arg(c.dir().join("refused-mount.log"));
    cmd.env("RUST_BACKTRACE", "0")
        .env(CACHE_ROOT_VAR, disk_cache_root(mp));
    run_with_timeout(&mut cmd, Duration::from_secs(60))
}

#[test]
fn the_bucket_holds_no_plaintext_and_wrong_keys_are_refused() {
    if !require_fuse() {
        return;
    }
    let keys = tempfile_dir();
    let good = keys.join("good.key");
    fs::write(&good, "11".repeat(32)).expect("write key");
    let bad = keys.join("bad.key");
    fs::write(&bad, [0x22u8; 32]).expect("write key");
    let mut c = Cluster::local_folder(bin())
        .meta_args(&["--encrypted"])
        .mount_args(&["--encryption-key-file", good.to_str().expect("utf-8 path")])
        // Smaller than the file, so random reads fetch frames.
        .mount_args(&["--cache-size", "4MiB"])
        .start();
    let pattern = b"GATTACA-known-plaintext-pattern-".repeat(200_000);
    fs::write(c.join("genome.txt"), &pattern).expect("write");
    assert_eq!(fs::read(c.join("genome.txt")).expect("read back"), pattern);
    let stored = all_bytes(&c.dir().join("blocks"));
    assert!(!stored.is_empty());
    assert!(
        !stored.windows(32).any(|w| w == &pattern[..32]),
        "the known pattern appears in the block store"
    );
    // Random reads of a cold mount (frames fetched and decrypted one by one) read the data.
    c.remount();
    {
        use std::os::unix::fs::FileExt;
        let f = fs::File::open(c.join("genome.txt")).expect("open");
        let mut rng = Rng::from_env_or_time("encrypted random reads");
        for _ in 0..50 {
            let off = rng.range(1, pattern.len() as u64 - 4096);
            let mut buf = vec![0u8; 4096];
            f.read_exact_at(&mut buf, off).expect("random read");
            assert!(
                buf == pattern[off as usize..off as usize + 4096],
                "read at {off} differs"
            );
        }
    }

    for (key, expect) in [
        (Some(bad.as_path()), "does not match"),
        (None, "is encrypted"),
    ] {
        let mp = c.dir().join(format!("mnt-{}", key.is_some()));
        fs::create_dir_all(&mp).expect("mkdir");
        let out = try_mount(&c, &mp, key);
        assert!(!out.success(), "a mount with key {key:?} must be refused");
        assert!(
            out.stderr.contains(expect),
            "stderr names the problem ({expect}): {}",
            out.stderr
        );
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    }
    let _ = fs::remove_dir_all(&keys);
}

fn tempfile_dir() -> std::path::PathBuf {
    let root = std::env::var("CAIRN_TEST_ROOT").unwrap_or_else(|_| "/tmp/cairn-tests".into());
    let d = Path::new(&root).join(format!("keys-{}", std::process::id()));
    fs::create_dir_all(&d).expect("mkdir keys");
    d
}
