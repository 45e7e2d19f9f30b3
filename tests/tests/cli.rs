//! The cordon binary as a user runs it (local-agent backend).

mod common;

use common::*;
use std::process::{Command, Stdio};

fn cordon() -> Command {
    let mut c = Command::new(cordon_bin());
    c.env("CORDON_AGENT", static_agent_bin());
    c
}

#[test]
fn test_cli_run_local_agent_output_and_exit_code() {
    let out = cordon()
        .args(["run", "--isolation", "local-agent", "--", "sh", "-c", "echo hi; echo oops >&2; exit 3"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(out.stdout, b"hi\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("oops"), "{err}");
    assert!(err.contains("NO ISOLATION"), "local-agent must say it isolates nothing: {err}");
}

#[test]
fn test_cli_stdin_is_forwarded() {
    let mut child = cordon()
        .args(["run", "--isolation", "local-agent", "--", "tr", "a-z", "A-Z"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"shout\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.stdout, b"SHOUT\n");
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn test_cli_exit_codes_for_failures() {
    let code = |args: &[&str]| {
        let mut full = vec!["run", "--isolation", "local-agent"];
        full.extend_from_slice(args);
        cordon().args(full).stdin(Stdio::null()).output().unwrap().status.code()
    };
    assert_eq!(code(&["--", "no-such-command-here"]), Some(127));
    assert_eq!(code(&["--timeout", "300ms", "--", "sleep", "30"]), Some(124));
    assert_eq!(code(&["--", "sh", "-c", "kill -KILL $$"]), Some(137));
    assert_eq!(code(&["--cwd", "/no/such/dir", "--", "true"]), Some(120));
    assert_eq!(code(&["--timeout", "soon", "--", "true"]), Some(120));
    assert_eq!(code(&[]), Some(120));
}

#[test]
fn test_cli_auto_falls_back_to_namespaces_and_says_why() {
    // These machines have no usable hardware accelerator (DESIGN.md): auto
    // must pick the namespace backend, say why, and list its layers.
    let out = cordon().args(["run", "--", "sh", "-c", "echo in-auto"]).stdin(Stdio::null()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(out.stdout, b"in-auto\n");
    assert!(err.contains("isolation: namespaces, because"), "{err}");
    assert!(err.contains("seccomp:") && err.contains("landlock:"), "{err}");
    // Strict runs refuse an unknown layer before anything runs.
    let out = cordon().args(["run", "--require", "selinux", "--", "true"]).stdin(Stdio::null()).output().unwrap();
    assert_eq!(out.status.code(), Some(120));
    // And --strict passes here, where every layer is in force.
    let out = cordon().args(["run", "--strict", "--", "true"]).stdin(Stdio::null()).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn test_cli_json_events() {
    let out = cordon()
        .args(["run", "--isolation", "local-agent", "--json", "--", "sh", "-c", "printf 'a\\n'; exit 5"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5));
    let events: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["sandbox_ready", "step_started", "output", "step_exited", "run_finished"]);
    assert_eq!(events[2]["data"], "a\n");
    assert_eq!(events[3]["exit_code"], 5);
    assert_eq!(events[4]["exit_code"], 5);
}

#[test]
fn test_cli_version_and_doctor() {
    let out = cordon().arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("cordon "));
    let out = cordon().arg("doctor").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("kvm"), "{s}");
}
