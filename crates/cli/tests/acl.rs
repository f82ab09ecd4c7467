//! POSIX ACLs through a real mount: the kernel enforces them, the metadata server keeps the mode
//! and the ACL in step, applies the umask, and inherits default ACLs.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().expect("run a command");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// `cat PATH` as the unprivileged `tests` user (scripts/setup creates it).
fn cat_as_tests(p: &Path) -> (bool, String) {
    run(Command::new("setpriv")
        .args(["--reuid=tests", "--regid=tests", "--clear-groups", "cat"])
        .arg(p))
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).expect("stat").permissions().mode() & 0o7777
}

#[test]
fn acls_grant_access_follow_chmod_and_are_inherited() {
    let Some(c) = local_cluster() else { return };
    let secret = c.join("secret");
    fs::write(&secret, "s3cret").expect("write");
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).expect("chmod");
    assert!(!cat_as_tests(&secret).0, "mode 0600 must keep `tests` out");

    let (ok, out) = run(Command::new("setfacl")
        .args(["-m", "u:tests:r"])
        .arg(&secret));
    assert!(ok, "setfacl: {out}");
    let (ok, out) = cat_as_tests(&secret);
    assert!(
        ok && out == "s3cret",
        "the ACL entry must let `tests` read: {out}"
    );
    assert_eq!(mode(&secret), 0o640, "the group bits show the ACL mask");

    // chmod rewrites the mask: no group read, so the named entry is masked off.
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).expect("chmod");
    assert!(
        !cat_as_tests(&secret).0,
        "a mask of --- must keep `tests` out again"
    );
    let (_, acl) = run(Command::new("getfacl").arg("-p").arg(&secret));
    assert!(acl.contains("mask::---"), "{acl}");

    // Default ACLs are inherited by new files and directories, masked by the create mode.
    let dir = c.join("shared");
    fs::create_dir(&dir).expect("mkdir");
    let (ok, out) = run(Command::new("setfacl")
        .args(["-d", "-m", "u:tests:rwx"])
        .arg(&dir));
    assert!(ok, "setfacl -d: {out}");
    fs::write(dir.join("inherited"), "hello").expect("create under a default ACL");
    fs::set_permissions(dir.join("inherited"), fs::Permissions::from_mode(0o600)).expect("chmod");
    fs::set_permissions(dir.join("inherited"), fs::Permissions::from_mode(0o640)).expect("chmod");
    let (ok, out) = cat_as_tests(&dir.join("inherited"));
    assert!(
        ok && out == "hello",
        "the inherited entry must let `tests` read: {out}"
    );
    fs::create_dir(dir.join("sub")).expect("mkdir under a default ACL");
    let (_, acl) = run(Command::new("getfacl").arg("-p").arg(dir.join("sub")));
    assert!(
        acl.contains("default:user:tests:rwx"),
        "a new directory inherits the default ACL: {acl}"
    );
}

#[test]
fn the_umask_applies_without_a_default_acl() {
    let Some(c) = local_cluster() else { return };
    let script = format!(
        "umask 027 && touch {0}/f && mkdir {0}/d",
        c.path().display()
    );
    let (ok, out) = run(Command::new("sh").arg("-c").arg(script));
    assert!(ok, "{out}");
    assert_eq!(mode(&c.join("f")), 0o640);
    assert_eq!(mode(&c.join("d")), 0o750);
}
