//! What a namespace sandbox must not learn from the host or leave on it,
//! each found by a hostile review and shown end to end:
//!
//! 1. As root the sandbox's network namespace belongs to the host's user
//!    namespace, and the kernel broadcasts every untagged uevent to all
//!    such namespaces (lib/kobject_uevent.c); NETLINK_KOBJECT_UEVENT needs
//!    no privilege to listen. The seccomp filter refuses that socket: the
//!    sandbox must not watch the host's device events (control: a listener
//!    in such a namespace outside cordon does see them).
//! 2. A cordon SIGKILLed while it waits for a force-killed sandbox's cgroup
//!    to empty (a second Ctrl-C, then a supervisor's SIGKILL), after the
//!    janitor was told the run ended, must still leave no cgroup behind.
//!
//! Runs as root.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn cordon() -> Command {
    let mut c = Command::new(cordon_bin());
    c.env("CORDON_AGENT", static_agent_bin()).stdin(Stdio::null());
    c
}

/// Reads the step's output up to the line holding `marker` (or its end).
fn read_past(out: &mut impl BufRead, marker: &str) {
    let mut line = String::new();
    while out.read_line(&mut line).unwrap() > 0 && !line.contains(marker) {
        line.clear();
    }
}

/// A `change` uevent for /dev/zero (udev re-applies its mode: harmless).
fn trigger_uevent() {
    std::fs::write("/sys/devices/virtual/mem/zero/uevent", "change").expect("triggering a uevent");
}

#[test]
fn test_ns_net_none_sees_no_host_uevents() {
    assert!(nix::unistd::geteuid().is_root(), "runs as root");
    // Positive control: a listener in a network namespace of the host's
    // user namespace (what ns-init now makes) does see the event.
    let control = Command::new("unshare")
        .args(["-n", "busybox", "timeout", "4", "busybox", "uevent", "env"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("unshare");
    let mut child = cordon()
        .args(["run", "--isolation", "namespace", "--", "sh", "-c"])
        .arg("timeout 4 uevent env & sleep 1; echo listening; wait")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("cordon");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    read_past(&mut out, "listening");
    for _ in 0..3 {
        trigger_uevent();
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    child.wait().unwrap();
    let control = control.wait_with_output().unwrap();
    assert!(
        String::from_utf8_lossy(&control.stdout).contains("DEVPATH=/devices/virtual/mem/zero"),
        "the control saw no uevent: the test proves nothing"
    );
    assert!(
        !rest.contains("DEVPATH=/devices/virtual/mem/zero"),
        "a --net none sandbox received the host's uevents:\n{rest}"
    );
}

/// The run's directory (a new cordon-* under the temp dir with `stage`).
fn run_dir(before: &[PathBuf]) -> Option<PathBuf> {
    std::fs::read_dir(std::env::temp_dir())
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("cordon-")))
        .find(|p| !before.contains(p) && p.join("stage").is_dir())
}

/// Directories called `name` under `root`, at most `depth` levels down.
fn find_named(root: &std::path::Path, name: &str, depth: u32) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if depth == 0 || name.is_empty() {
        return out;
    }
    for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let p = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            if e.file_name() == name {
                out.push(p);
            } else {
                out.extend(find_named(&p, name, depth - 1));
            }
        }
    }
    out
}

fn temp_entries() -> Vec<PathBuf> {
    std::fs::read_dir(std::env::temp_dir()).unwrap().flatten().map(|e| e.path()).collect()
}

#[test]
fn test_ns_sigkill_during_cgroup_removal_leaves_no_cgroup() {
    assert!(nix::unistd::geteuid().is_root(), "runs as root");
    let mut leaked = Vec::new();
    for attempt in 0..3 {
        let before = temp_entries();
        let err_path = std::env::temp_dir().join(format!("ns-review-{}-{attempt}.err", std::process::id()));
        let mut child = cordon()
            .args(["run", "--isolation", "namespace", "--", "sh", "-c"])
            .arg(
                "for j in $(seq 2000); do sleep 1000 & done; \
                 for i in 1 2; do awk 'BEGIN{s=\"x\"; while(length(s)<100000000) s=s s; system(\"sleep 100\")}' & done; \
                 sleep 4; echo ready; sleep 100",
            )
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&err_path).unwrap())
            .spawn()
            .expect("cordon");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        read_past(&mut out, "ready");
        let dir = run_dir(&before).expect("the run's directory");
        let err = std::fs::read_to_string(&err_path).unwrap();
        // Its name, then its directory in every hierarchy (the description
        // names pids, memory and cpu; freezer and unified have one too).
        let name = err
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .find(|w| w.starts_with("cordon-") && w.len() == "cordon-".len() + 12)
            .map(str::to_string)
            .unwrap_or_default();
        let cgroups = find_named(std::path::Path::new("/sys/fs/cgroup"), &name, 4);
        assert!(!cgroups.is_empty(), "no cgroup in the description: {err}");
        // Twice: the second stops waiting for the guest (teardown by kill).
        let pid = child.id() as i32;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        std::thread::sleep(Duration::from_millis(20));
        unsafe { libc::kill(pid, libc::SIGTERM) };
        // The janitor removes the directory on `D`: SIGKILL cordon then,
        // while it waits for the cgroup to empty.
        let t0 = Instant::now();
        while dir.exists() && t0.elapsed() < Duration::from_secs(10) {
            std::hint::spin_loop();
        }
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let st = child.wait().unwrap();
        std::thread::sleep(Duration::from_secs(8));
        let _ = std::fs::remove_file(&err_path);
        for c in &cgroups {
            if c.exists() {
                leaked.push((attempt, st.signal(), c.clone()));
                let _ = std::fs::remove_dir(c);
            }
        }
    }
    assert!(leaked.is_empty(), "cgroups left behind by a cordon SIGKILLed after D: {leaked:?}");
}
