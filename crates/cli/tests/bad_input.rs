//! Bad input fails early and clearly (STYLE 2.6): a non-zero exit within a few seconds, one
//! `error:` line on stderr that names what was wrong, no panic, and nothing left mounted or
//! running.

mod common;

use common::*;
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;

/// `cairn mount start VOLUME MP --meta META STORE..` in the background (no --foreground).
fn mount_start(mp: &Path, meta: &str, store: &StoreArgs, log: &Path) -> CmdOutput {
    let mut cmd = cairn(&["mount", "start", "testvol"]);
    cmd.arg(mp)
        .args(["--meta", meta])
        .args(&store.args)
        .arg("--log-file")
        .arg(log)
        .env(CACHE_ROOT_VAR, disk_cache_root(mp));
    cmd.envs(store.env.iter().map(|(k, v)| (k, v)));
    let out = run_with_timeout(&mut cmd, FAST + std::time::Duration::from_secs(20));
    // Whatever happened, leave nothing behind for the next test.
    if !mounts_under(mp).is_empty() || !processes_mentioning(&mp.display().to_string()).is_empty() {
        let left = leftovers(mp);
        force_cleanup(mp);
        assert!(
            left.is_empty(),
            "a failed mount left something behind: {left:?}\n{}",
            out.describe()
        );
    }
    out
}

fn meta_serve(args: &[&str], data_dir: &Path) -> CmdOutput {
    let mut cmd = cairn(&["meta", "serve"]);
    cmd.args(args).arg("--data-dir").arg(data_dir);
    run_with_timeout(&mut cmd, FAST + std::time::Duration::from_secs(20))
}

fn local_meta(dir: &TestDir) -> MetaServer {
    MetaServer::start(&bin(), &dir.subdir("meta"), "testvol", &[])
}

#[test]
fn mount_with_unreachable_meta_server() {
    if !require_fuse() {
        return;
    }
    let dir = test_dir("unreachable-meta");
    let mp = dir.subdir("mnt");
    let store = StoreArgs::file(&dir.subdir("blocks"));
    let out = mount_start(&mp, "127.0.0.1:1", &store, &dir.path().join("mount.log"));
    assert_clean_failure(&out, &["127.0.0.1:1"]);
    assert!(!is_mounted(&mp));
}

#[test]
fn mount_with_missing_bucket() {
    if !require_fuse() {
        return;
    }
    let s3 = SeaweedFs::start();
    s3.create_bucket("some-other-bucket");
    let dir = test_dir("missing-bucket");
    let meta = local_meta(&dir);
    let mp = dir.subdir("mnt");
    let store = StoreArgs::s3(&s3, "no-such-bucket");
    let out = mount_start(&mp, &meta.addr(), &store, &dir.path().join("mount.log"));
    assert_clean_failure(&out, &["no-such-bucket"]);
    assert!(!is_mounted(&mp));
    assert!(
        !s3.client()
            .bucket_exists("no-such-bucket")
            .expect("head bucket"),
        "the mount created the bucket"
    );
}

#[test]
fn mount_with_wrong_s3_secret() {
    if !require_fuse() {
        return;
    }
    let s3 = SeaweedFs::start();
    s3.create_bucket("bucket");
    let dir = test_dir("wrong-secret");
    let meta = local_meta(&dir);
    let mp = dir.subdir("mnt");
    let mut store = StoreArgs::s3(&s3, "bucket");
    for (k, v) in store.env.iter_mut() {
        if k == "AWS_SECRET_ACCESS_KEY" {
            *v = "not-the-secret".into();
        }
    }
    let out = mount_start(&mp, &meta.addr(), &store, &dir.path().join("mount.log"));
    assert_clean_failure(&out, &[]);
    assert!(!is_mounted(&mp));
}

#[test]
fn mount_point_does_not_exist() {
    if !require_fuse() {
        return;
    }
    let dir = test_dir("missing-mountpoint");
    let meta = local_meta(&dir);
    let mp = dir.path().join("no/such/dir");
    let store = StoreArgs::file(&dir.subdir("blocks"));
    let out = mount_start(&mp, &meta.addr(), &store, &dir.path().join("mount.log"));
    assert_clean_failure(&out, &[&mp.display().to_string()]);
    assert!(!mp.exists(), "the mount point was created");
}

#[test]
fn mount_point_not_empty() {
    if !require_fuse() {
        return;
    }
    let dir = test_dir("nonempty-mountpoint");
    let meta = local_meta(&dir);
    let mp = dir.subdir("mnt");
    std::fs::write(mp.join("precious"), b"keep me").expect("write");
    let store = StoreArgs::file(&dir.subdir("blocks"));
    let out = mount_start(&mp, &meta.addr(), &store, &dir.path().join("mount.log"));
    assert_clean_failure(&out, &[&mp.display().to_string()]);
    assert!(!is_mounted(&mp));
    assert_eq!(
        std::fs::read(mp.join("precious")).expect("read"),
        b"keep me"
    );
}

#[test]
fn mount_with_bad_store_url() {
    if !require_fuse() {
        return;
    }
    let dir = test_dir("bad-store-url");
    let meta = local_meta(&dir);
    let mp = dir.subdir("mnt");
    let store = StoreArgs {
        args: vec!["--store".into(), "ftp://example/bucket".into()],
        env: vec![],
    };
    let out = mount_start(&mp, &meta.addr(), &store, &dir.path().join("mount.log"));
    assert_clean_failure(&out, &["ftp://example/bucket"]);
    let store = StoreArgs {
        args: vec!["--store".into(), "file://relative/path".into()],
        env: vec![],
    };
    let out = mount_start(&mp, &meta.addr(), &store, &dir.path().join("mount.log"));
    assert_clean_failure(&out, &[]);
    assert!(!is_mounted(&mp));
}

#[test]
fn mount_stop_on_a_folder_that_is_not_mounted() {
    let dir = test_dir("stop-not-mounted");
    let out = run_with_timeout(cairn(&["mount", "stop"]).arg(dir.path()), FAST);
    assert_clean_failure(&out, &[&dir.path().display().to_string()]);
}

#[test]
fn meta_serve_on_a_port_in_use() {
    let dir = test_dir("port-in-use");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let out = meta_serve(
        &["--bind-addr", &addr, "--volume", "testvol"],
        &dir.path().join("meta"),
    );
    assert_clean_failure(&out, &[&addr]);
    drop(listener);
}

#[test]
fn meta_serve_twice_on_one_data_dir() {
    let dir = test_dir("data-dir-locked");
    let data = dir.subdir("meta");
    let mut first = MetaServer::start(&bin(), &data, "testvol", &[]);
    let addr = format!("127.0.0.1:{}", free_port());
    let out = meta_serve(&["--bind-addr", &addr, "--volume", "testvol"], &data);
    assert_clean_failure(&out, &[&data.display().to_string()]);
    assert!(
        first.is_running(),
        "the first server died when a second one tried its folder"
    );
    assert!(
        std::net::TcpStream::connect(first.addr()).is_ok(),
        "the first server stopped listening"
    );
    first.stop();
    assert_no_panics_in(&[first.log().to_path_buf()]);
}

#[test]
fn meta_serve_bad_block_size() {
    let dir = test_dir("bad-block-size");
    for bad in ["banana", "1GiB", "4KiB", "3MiB", "0", "-4MiB"] {
        let addr = format!("127.0.0.1:{}", free_port());
        let arg = format!("--block-size={bad}");
        let out = meta_serve(
            &["--bind-addr", &addr, "--volume", "testvol", &arg],
            &dir.path().join(format!("meta-{bad}")),
        );
        assert_clean_failure(&out, &[bad]);
    }
}

#[test]
fn mount_with_bad_transfer_limits() {
    let dir = test_dir("bad-transfer-limits");
    let mp = dir.subdir("mnt");
    let store = StoreArgs::file(&dir.subdir("blocks"));
    for (flag, value, named) in [
        ("--max-uploads", "0", "0"),
        ("--max-downloads", "5000", "5000"),
        ("--max-downloads", "many", "many"),
        ("--readahead", "32 parsecs", "32 parsecs"),
        ("--write-buffer", "-1", "-1"),
        // Larger than the memory cache (512MiB by default).
        (
            "--readahead",
            "1GiB",
            "--readahead 1GiB is larger than --cache-size 512MiB",
        ),
    ] {
        let mut cmd = cairn(&["mount", "start", "testvol"]);
        cmd.arg(&mp)
            .args(["--meta", "127.0.0.1:1"])
            .args(&store.args)
            .args([flag, value])
            .env(CACHE_ROOT_VAR, disk_cache_root(&mp));
        let out = run_with_timeout(&mut cmd, FAST);
        assert_clean_failure(&out, &[named]);
        assert!(!is_mounted(&mp));
    }
}

#[test]
fn meta_serve_bad_compression() {
    let dir = test_dir("bad-compression");
    let addr = format!("127.0.0.1:{}", free_port());
    let out = meta_serve(
        &[
            "--bind-addr",
            &addr,
            "--volume",
            "testvol",
            "--compression",
            "gzip",
        ],
        &dir.path().join("meta"),
    );
    assert_clean_failure(&out, &["gzip"]);
}

#[test]
fn unknown_subcommand_and_missing_arguments() {
    let out = run_with_timeout(&mut cairn(&["frobnicate"]), FAST);
    assert_clean_failure(&out, &["frobnicate"]);
    let out = run_with_timeout(&mut cairn(&["mount", "start"]), FAST);
    assert_clean_failure(&out, &[]);
    assert_eq!(
        out.code(),
        Some(2),
        "usage errors exit 2\n{}",
        out.describe()
    );
}

/// `--version` names the version and the git commit (STYLE 6.3).
#[test]
fn version_names_the_commit() {
    let out = run_with_timeout(&mut cairn(&["--version"]), FAST);
    out.assert_success();
    let line = out.stdout.trim();
    assert!(line.starts_with("cairn "), "{}", out.describe());
    assert!(
        line.contains(env!("CARGO_PKG_VERSION")),
        "{}",
        out.describe()
    );
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output();
    if let Ok(c) = commit {
        let c = String::from_utf8_lossy(&c.stdout).trim().to_string();
        if !c.is_empty() {
            assert!(
                line.contains(&c[..7.min(c.len())]),
                "--version should name commit {c}: {line}"
            );
        }
    }
}

/// A server whose disk has no room for its redo log (64 MiB, preallocated) fails at once with one
/// line that says how much it needs, and gives the disk its space back (a new log is left empty);
/// once there is room, the same folder serves.
#[test]
fn meta_serve_on_a_disk_too_small_for_its_log() {
    let dir = test_dir("meta-small-disk");
    let disk = SmallDisk::mount(&dir.path().join("disk"), "80m");
    let filler = disk.0.join("filler");
    std::fs::write(&filler, vec![7u8; 64 << 20]).expect("write the filler");
    let data = disk.0.join("meta");
    let addr = format!("127.0.0.1:{}", free_port());
    let out = meta_serve(&["--bind-addr", &addr, "--volume", "testvol"], &data);
    assert_clean_failure(&out, &["redo log", "64 MiB", "free space"]);
    let len = std::fs::metadata(data.join("meta.redo")).map_or(0, |m| m.len());
    assert_eq!(len, 0, "the log's preallocation is undone");
    std::fs::remove_file(&filler).expect("free the disk");
    let mut server = MetaServer::start(&bin(), &data, "testvol", &[]);
    assert!(server.is_running());
    server.stop();
    drop(server);
    drop(disk);
}
