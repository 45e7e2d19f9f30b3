//! Hostile artifacts from a real sandbox (root in it), on each backend: the
//! review's reproductions, each beside a positive control that shows the
//! same run still copies what is fine.

mod common;
#[macro_use]
mod backends;

use backends::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

backend_tests! {
    both: [
        test_artifact_symlink_never_writes_through_to_the_host,
        test_artifact_setuid_devices_and_missing,
        test_artifact_size_limit,
    ],
}

/// Exit code and stderr of `cordon run ARGS -- sh -c SCRIPT`.
fn run(b: Backend, args: &[&str], script: &str) -> (Option<i32>, String) {
    let (code, _, err) = b.sh(args, script);
    (Some(code), err)
}

fn empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).unwrap().next().is_none()
}

fn test_artifact_symlink_never_writes_through_to_the_host(b: Backend) {
    let t = tempfile::tempdir().unwrap();
    let victim = t.path().join("victim");
    let arts = t.path().join("arts");
    std::fs::create_dir_all(&victim).unwrap();
    let arts_s = arts.to_str().unwrap();
    // Run 1: the artifact itself is a symlink to a host directory: refused.
    let script = format!("mkdir -p /workspace && ln -s {} /workspace/out", victim.display());
    let (code, err) = run(b, &["--artifacts-dir", arts_s, "--artifact", "out"], &script);
    assert_eq!(code, Some(118), "{err}");
    assert!(err.contains("points outside the artifact"), "{err}");
    assert!(std::fs::symlink_metadata(arts.join("out")).is_err(), "no symlink left in the artifacts dir");
    // Run 2: an earlier cordon left that symlink; the next run writes out/d/f.
    std::fs::create_dir_all(&arts).unwrap();
    std::os::unix::fs::symlink(&victim, arts.join("out")).unwrap();
    let script = "mkdir -p /workspace/out/d && echo payload > /workspace/out/d/f";
    let (code, err) = run(b, &["--artifacts-dir", arts_s, "--artifact", "out/d/f", "--artifact", "out"], script);
    assert_eq!(code, Some(118), "out/d/f is refused: {err}");
    assert!(err.contains("is not a directory"), "{err}");
    assert!(empty(&victim), "nothing may land in the directory the symlink names");
    // Positive control: the whole `out` replaced the symlink with the real tree.
    assert!(err.contains("replaced what an earlier run left"), "{err}");
    assert!(std::fs::symlink_metadata(arts.join("out")).unwrap().is_dir());
    assert_eq!(std::fs::read_to_string(arts.join("out/d/f")).unwrap(), "payload\n");
    assert!(empty(&victim));
}

fn test_artifact_setuid_devices_and_missing(b: Backend) {
    let t = tempfile::tempdir().unwrap();
    let arts = t.path().join("arts");
    // A user namespace's root cannot make device nodes: the step says
    // whether it could, and a device is expected exactly where it could.
    let script = "mkdir -p /workspace/o && cd /workspace && echo x > o/suid && chmod 4755 o/suid \
                  && echo y > o/sgid && chmod 2770 o/sgid && mkfifo o/fifo \
                  && ln -s /etc/passwd o/abs && ln -s suid o/rel && echo fine > good.txt \
                  && if mknod o/null c 1 3; then echo MKNOD:ok; else echo MKNOD:denied; fi";
    let args = ["--artifacts-dir", arts.to_str().unwrap(), "--artifact", "o", "--artifact", "missing.txt"];
    let mut all = args.to_vec();
    all.extend_from_slice(&["--artifact", "/dev/null", "--artifact", "good.txt"]);
    let (code, out, err) = b.sh(&all, script);
    assert_eq!(code, 118, "missing artifacts after passing steps have their own code: {out} {err}");
    let made_device = if b.can_mknod() { "MKNOD:ok" } else { "MKNOD:denied" };
    assert!(out.contains(made_device), "{b:?}: {out} {err}");
    let mode = |p: &str| std::fs::symlink_metadata(arts.join(p)).unwrap().permissions().mode() & 0o7777;
    // Modes also lose what cordon's umask withholds (this test's own).
    let umask = cordon::artifacts::process_umask();
    assert_eq!(mode("o/suid"), 0o755 & !umask, "setuid is never created on the host");
    assert_eq!(mode("o/sgid"), 0o770 & !umask, "setgid is never created on the host");
    for skipped in ["o/null", "o/fifo", "o/abs"] {
        assert!(std::fs::symlink_metadata(arts.join(skipped)).is_err(), "{skipped} must be skipped");
    }
    if b.can_mknod() {
        assert!(err.contains("null: a character device, skipped"), "{err}");
    }
    assert!(err.contains("fifo: a fifo, skipped"), "{err}");
    assert!(err.contains("artifact /workspace/missing.txt not copied"), "{err}");
    assert!(err.contains("artifact /dev/null not copied"), "{err}");
    // Positive controls: what is fine is copied, a link inside the artifact kept.
    assert_eq!(std::fs::read_link(arts.join("o/rel")).unwrap(), Path::new("suid"));
    assert_eq!(std::fs::read_to_string(arts.join("good.txt")).unwrap(), "fine\n");
    assert_eq!(std::fs::read_to_string(arts.join("o/suid")).unwrap(), "x\n");
}

fn test_artifact_size_limit(b: Backend) {
    let t = tempfile::tempdir().unwrap();
    let arts = t.path().join("arts");
    let script = "mkdir -p /workspace && head -c 2000000 /dev/zero > /workspace/big && echo s > /workspace/small";
    let args = ["--artifacts-dir", arts.to_str().unwrap(), "--max-artifacts-size", "1M"];
    let mut all = args.to_vec();
    all.extend_from_slice(&["--artifact", "big", "--artifact", "small"]);
    let (code, err) = run(b, &all, script);
    assert_eq!(code, Some(118), "{err}");
    assert!(err.contains("artifact /workspace/big not copied"), "{err}");
    assert!(err.contains("artifact limit"), "{err}");
    assert!(!arts.join("big").exists());
    assert_eq!(std::fs::read_to_string(arts.join("small")).unwrap(), "s\n");
    // A failing step keeps its own code even when artifacts are missing.
    let (code, err) = run(b, &["--artifacts-dir", arts.to_str().unwrap(), "--artifact", "nope"], "exit 4");
    assert_eq!(code, Some(4), "{err}");
}
