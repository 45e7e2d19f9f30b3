//! What artifacts may do to the host beyond their own bytes: modes that
//! other local users could exploit, a copy-out that outlives Ctrl-C or
//! stretches forever. Each beside its positive control.

mod common;
#[macro_use]
mod backends;

use backends::*;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::Duration;

backend_tests! {
    both: [
        test_artifact_modes_follow_the_umask,
        test_artifact_entries_cost_their_headers,
    ],
    vm_only: [
        test_artifact_copy_has_its_own_deadline,
    ],
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

/// `cordon run <b> ARGS -- sh -c SCRIPT` under `umask`: code, stdout, stderr.
fn sh_with_umask(b: Backend, umask: u32, args: &[&str], script: &str) -> (i32, String, String) {
    let mut c = b.run(args);
    c.args(["--", "sh", "-c", script]);
    // SAFETY: umask(2) in the forked child before exec; async-signal-safe.
    unsafe {
        c.pre_exec(move || {
            libc::umask(umask as libc::mode_t);
            Ok(())
        });
    }
    text(&c.output().unwrap())
}

fn test_artifact_modes_follow_the_umask(b: Backend) {
    let script = "mkdir -p /workspace/o/d /workspace/o/s && cd /workspace/o && echo x > f && echo y > suid \
                  && chmod 777 f d && chmod 4777 suid && chmod 1777 s && ls -l";
    for (umask, file, dir) in [(0o022, 0o755, 0o755), (0o077, 0o700, 0o700), (0o002, 0o775, 0o775)] {
        let t = tempfile::tempdir().unwrap();
        let arts = t.path().join("arts");
        let (code, out, err) =
            sh_with_umask(b, umask, &["--artifacts-dir", arts.to_str().unwrap(), "--artifact", "o"], script);
        assert_eq!(code, 0, "{out} {err}");
        assert!(out.contains("rwxrwxrwx"), "the guest did make them world-writable: {out}");
        let o = arts.join("o");
        assert_eq!(mode(&o.join("f")), file, "umask {umask:o}: chmod 777 file");
        assert_eq!(mode(&o.join("suid")), file, "umask {umask:o}: chmod 4777 file");
        assert_eq!(mode(&o.join("d")), dir, "umask {umask:o}: chmod 777 directory");
        assert_eq!(mode(&o.join("s")), dir, "umask {umask:o}: chmod 1777 directory");
    }
    // Positive control: modes below the umask pass unchanged.
    let t = tempfile::tempdir().unwrap();
    let arts = t.path().join("arts");
    let script = "mkdir -p /workspace/o && echo x > /workspace/o/ro && chmod 444 /workspace/o/ro";
    let (code, out, err) =
        sh_with_umask(b, 0o022, &["--artifacts-dir", arts.to_str().unwrap(), "--artifact", "o"], script);
    assert_eq!(code, 0, "{out} {err}");
    assert_eq!(mode(&arts.join("o/ro")), 0o444);
}

/// Empty entries are not free: each costs its 512-byte header of the size
/// limit (which counts every archive byte), so an artifact of many empty
/// files cannot bring out unbounded inodes within a small limit.
fn test_artifact_entries_cost_their_headers(b: Backend) {
    let t = tempfile::tempdir().unwrap();
    let arts = t.path().join("arts");
    let script = "mkdir -p /workspace/many /workspace/few && cd /workspace/many && seq 1 5000 | xargs touch \
                  && cd /workspace/few && seq 1 500 | xargs touch";
    let args = ["--artifacts-dir", arts.to_str().unwrap(), "--max-artifacts-size", "1M"];
    let mut all = args.to_vec();
    all.extend_from_slice(&["--artifact", "many", "--artifact", "few"]);
    let (code, out, err) = b.sh(&all, script);
    assert_eq!(code, 118, "5000 empty files are 2.5 MB of headers: {out} {err}");
    assert!(err.contains("artifact /workspace/many not copied"), "{err}");
    assert!(!arts.join("many").exists());
    // Positive control: 500 empty files fit in 1M.
    assert_eq!(std::fs::read_dir(arts.join("few")).unwrap().count(), 500);
}

/// A copy-out that would take long (here: 2 GB, the same 100 MB file twenty
/// times, which TCG streams far slower than the deadline allows; a root
/// guest that freezes its agent between chunks is the hostile case) is cut
/// off by the copy-out's own deadline, without any --job-timeout.
fn test_artifact_copy_has_its_own_deadline(b: Backend) {
    let t = tempfile::tempdir().unwrap();
    let arts = t.path().join("arts");
    let script = "mkdir -p /workspace && echo s > /workspace/small && head -c 100000000 /dev/zero > /workspace/big";
    let mut all = vec!["--artifacts-dir", arts.to_str().unwrap(), "--artifacts-timeout", "2s", "--artifact", "small"];
    all.extend(std::iter::repeat_n(["--artifact", "big"], 20).flatten());
    let (code, out, err) = b.sh(&all, script);
    assert_eq!(code, 124, "the copy-out deadline ends the run: {out} {err}");
    assert!(err.contains("--artifacts-timeout"), "{err}");
    // Positive control: what came before the deadline was copied.
    assert_eq!(std::fs::read_to_string(arts.join("small")).unwrap(), "s\n");
}

/// Ctrl-C while a large artifact is being unpacked on the host stops the
/// unpacking: nothing is installed afterwards and the run's temp dir goes.
#[test]
fn test_ctrl_c_stops_artifact_staging() {
    let b = Backend::Namespace;
    let t = tempfile::tempdir().unwrap();
    let arts = t.path().join("arts");
    // 300,000 entries: seconds of unpacking, against the milliseconds the
    // signal takes to arrive after the `artifact_staging` event.
    let script = "mkdir -p /workspace/o && cd /workspace/o && seq 1 300000 | xargs touch && echo made";
    let args = ["--artifacts-dir", arts.to_str().unwrap(), "--artifact", "o", "--", "sh", "-c", script];
    let w = run_watched(b, &args, "artifact_staging", |pid| {
        // SAFETY: kill(2) on the cordon this test started.
        unsafe { libc::kill(pid as i32, libc::SIGINT) };
    });
    assert_eq!(w.output.status.code(), Some(130), "{}", describe(&w.output));
    w.assert_nothing_left(b, None, Duration::from_secs(10));
    assert!(!arts.join("o").exists(), "the artifact was installed after Ctrl-C: {}", describe(&w.output));
    // Positive control: the step did make the tree.
    assert!(step_stream(&w.output, "command", "stdout").contains("made"), "{}", describe(&w.output));
}
