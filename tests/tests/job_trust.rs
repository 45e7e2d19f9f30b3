//! A job file (cordon.toml) may come from an untrusted checkout: it may not
//! write where the host executes things (`.git/hooks`, any dot path), nor
//! replace the checkout's own files, nor open guarded destinations, nor
//! raise host-protecting limits, unless the user says so on the command line
//! (`--trust-job`, or the flag itself). Each refusal beside a positive
//! control that the same run works when the user does say so. Runs use the
//! namespace backend: what is checked happens on the host, before or after
//! the sandbox.

#[allow(unused_macros)]
mod backends;
mod common;

use backends::*;
use std::path::{Path, PathBuf};

const STEP: &str = "[[steps]]\nrun = \"mkdir -p /workspace && printf '#!/bin/sh\\\\necho owned\\\\n' \
                    > /workspace/pre-commit && chmod 755 /workspace/pre-commit\"\n";

/// Writes `cordon.toml` in `dir` with `body` and one step that makes the
/// artifact `pre-commit`.
fn job(dir: &Path, body: &str) -> PathBuf {
    let f = dir.join("cordon.toml");
    std::fs::write(&f, format!("{body}\n{STEP}")).unwrap();
    f
}

/// `cordon run --isolation namespace -f FILE ARGS`: exit code, stdout, stderr.
fn run_job(f: &Path, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["-f", f.to_str().unwrap()];
    all.extend_from_slice(args);
    text(&Backend::Namespace.output(&all))
}

#[test]
fn test_job_file_artifacts_dir_cannot_name_dot_paths_or_the_job_dir() {
    let t = tempfile::tempdir().unwrap();
    let hooks = t.path().join(".git/hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    std::fs::create_dir_all(t.path().join("sub/.cache")).unwrap();
    for dir in [".git/hooks", ".git", "./.git/hooks", "sub/.cache", ".github/workflows", ".", "sub/.."] {
        let f = job(t.path(), &format!("artifacts_dir = {dir:?}\nartifacts = ['pre-commit']"));
        let (code, out, err) = run_job(&f, &[]);
        assert_eq!(code, 120, "artifacts_dir = {dir:?} must be refused: {out} {err}");
        assert!(err.contains("artifacts_dir"), "{dir}: {err}");
        assert!(!hooks.join("pre-commit").exists(), "{dir}: a git hook was written");
    }
    let (_, _, err) = run_job(&job(t.path(), "artifacts_dir = '.git/hooks'\nartifacts = ['pre-commit']"), &[]);
    assert!(err.contains("--artifacts-dir"), "the message names the flag that may: {err}");
    // Positive controls: a plain name works (twice: the second run replaces
    // what the first left, in the directory cordon made), and the command
    // line may name any directory, dot paths included.
    let f = job(t.path(), "artifacts_dir = 'hooks-out'\nartifacts = ['pre-commit']");
    for _ in 0..2 {
        let (code, out, err) = run_job(&f, &[]);
        assert_eq!(code, 0, "{out} {err}");
        assert!(std::fs::read_to_string(t.path().join("hooks-out/pre-commit")).unwrap().contains("owned"));
    }
    let (code, out, err) = run_job(&f, &["--artifacts-dir", hooks.to_str().unwrap()]);
    assert_eq!(code, 0, "{out} {err}");
    assert!(hooks.join("pre-commit").exists(), "the user's own --artifacts-dir is their choice");
}

#[test]
fn test_job_file_artifacts_dir_never_replaces_the_checkouts_files() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("pre-commit"), "reviewed\n").unwrap();
    let f = job(t.path(), "artifacts_dir = 'src'\nartifacts = ['pre-commit']");
    let (code, out, err) = run_job(&f, &[]);
    assert_eq!(code, 120, "{out} {err}");
    assert!(err.contains("was not created by cordon"), "{err}");
    assert_eq!(std::fs::read_to_string(src.join("pre-commit")).unwrap(), "reviewed\n");
    // A marker shipped in the checkout does not make the directory cordon's.
    for forged in ["cordon artifacts directory\n", "cordon artifacts directory\ninode 1\n"] {
        std::fs::write(src.join(".cordon-artifacts"), forged).unwrap();
        let (code, out, err) = run_job(&f, &[]);
        assert_eq!(code, 120, "forged marker {forged:?}: {out} {err}");
        assert_eq!(std::fs::read_to_string(src.join("pre-commit")).unwrap(), "reviewed\n");
    }
    // Positive control: the same artifact into a directory cordon creates.
    let f = job(t.path(), "artifacts_dir = 'build/out'\nartifacts = ['pre-commit']");
    let (code, out, err) = run_job(&f, &[]);
    assert_eq!(code, 0, "{out} {err}");
    assert!(t.path().join("build/out/pre-commit").exists());
    assert!(t.path().join("build/out/.cordon-artifacts").exists(), "cordon marks the directory it made");
}

/// A non-loopback address of this host (the test machine has one).
fn host_address() -> String {
    let a = cordon::netfilter::host_addresses().into_iter().find(|a| a.is_ipv4() && !a.is_loopback());
    a.expect("this host has a non-loopback IPv4 address").to_string()
}

#[test]
fn test_job_file_cannot_open_guarded_destinations() {
    let t = tempfile::tempdir().unwrap();
    let own = host_address();
    let guarded = [
        "host:8765",
        "tcp/host:22",
        "private",
        "metadata",
        "169.254.169.254",
        "169.254.0.0/16:80",
        "[fd00:ec2::254]:80",
        "udp/224.0.0.251:5353",
        "127.0.0.1:22",
        "168.63.129.16",
        own.as_str(),
    ];
    for rule in guarded {
        let f = job(t.path(), &format!("[network]\nallow = [{rule:?}]"));
        let (code, out, err) = run_job(&f, &[]);
        assert_eq!(code, 120, "allow {rule:?} from a job file must be refused: {out} {err}");
        assert!(err.contains(&format!("{rule:?}")) && err.contains("--trust-job"), "{rule}: {err}");
    }
    // Positive controls: with --trust-job the same file runs and says where
    // its policy came from; an ordinary rule needs no trust; the command
    // line's own rule is the user's.
    let f = job(t.path(), "[network]\nallow = ['host:8765', 'metadata']");
    let (code, out, err) = run_job(&f, &["--trust-job"]);
    assert_eq!(code, 0, "{out} {err}");
    let line = err.lines().find(|l| l.starts_with("cordon: network policy from ")).unwrap_or_else(|| panic!("{err}"));
    assert!(line.contains("cordon.toml") && line.contains("allow [host:8765, metadata]"), "{line}");
    let f = job(t.path(), "[network]\nallow = ['203.0.113.0/24:443']\ndeny = ['metadata']");
    let (code, out, err) = run_job(&f, &[]);
    assert_eq!(code, 0, "{out} {err}");
    assert!(err.contains("mode none, allow [203.0.113.0/24:443], deny [metadata]"), "{err}");
    let (code, out, err) = text(&Backend::Namespace.output(&["--allow", "host:8765", "--", "true"]));
    assert_eq!(code, 0, "{out} {err}");
    assert!(!err.contains("network policy from"), "no job file, no line: {err}");
}

#[test]
fn test_job_file_cannot_raise_host_protecting_limits() {
    let t = tempfile::tempdir().unwrap();
    let cases = [
        ("memory = '1000G'", "memory", ["--memory", "256M"]),
        ("cpus = 64", "cpus", ["--cpus", "1"]),
        ("pids = 1000000", "pids", ["--pids", "100"]),
        ("max_artifacts_size = '1T'", "max_artifacts_size", ["--max-artifacts-size", "1M"]),
        ("artifacts_timeout = '2h'", "artifacts_timeout", ["--artifacts-timeout", "1m"]),
    ];
    for (body, key, flag) in cases {
        let f = job(t.path(), body);
        let (code, out, err) = run_job(&f, &[]);
        assert_eq!(code, 120, "{body} must be refused: {out} {err}");
        assert!(err.contains(key) && err.contains("--trust-job") && err.contains(flag[0]), "{body}: {err}");
        // Positive control: the command line's value is the user's.
        let (code, out, err) = run_job(&f, &flag);
        assert_eq!(code, 0, "{body} with {flag:?}: {out} {err}");
    }
    // Within bounds a job file may set them.
    let (code, out, err) = run_job(&job(t.path(), "memory = '256M'\ncpus = 1\npids = 200"), &[]);
    assert_eq!(code, 0, "{out} {err}");
}
