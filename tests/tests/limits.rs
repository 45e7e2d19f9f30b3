//! Per-step limits in the microVM under TCG: a fork bomb cannot starve the
//! agent or outlive the step's deadline, `pids` caps the tasks of a step,
//! `memory.max` ends a memory hog with an OOM kill that is reported while the
//! agent survives, and a guest flooding its console does not grow the host's
//! temp dir.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn cordon() -> Command {
    let mut c = Command::new(cordon_bin());
    c.env("CORDON_AGENT", static_agent_bin()).stdin(Stdio::null());
    c
}

fn run_vm(args: &[&str]) -> std::process::Output {
    let mut full = vec!["run", "--accel", "tcg"];
    full.extend_from_slice(args);
    cordon().args(full).output().unwrap()
}

/// The JSON events cordon printed.
fn events(out: &std::process::Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

fn step_exited(out: &std::process::Output, step: &str) -> serde_json::Value {
    events(out)
        .into_iter()
        .find(|e| e["event"] == "step_exited" && e["step"] == step)
        .unwrap_or_else(|| panic!("no step_exited for {step}: {}", describe(out)))
}

/// The step's stdout, from the JSON output events.
fn step_stdout(out: &std::process::Output, step: &str) -> String {
    events(out)
        .iter()
        .filter(|e| e["event"] == "output" && e["step"] == step && e["stream"] == "stdout")
        .filter_map(|e| e["data"].as_str().map(str::to_string))
        .collect()
}

fn describe(out: &std::process::Output) -> String {
    format!(
        "status {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every process whose parent is `pid`, transitively (scans /proc).
fn descendants(pid: u32) -> Vec<(u32, String)> {
    let mut parent_of = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else { continue };
        let Some((head, rest)) = stat.rsplit_once(')') else { continue };
        let ppid: u32 = rest.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        parent_of.push((p, ppid, head.split_once('(').map(|x| x.1).unwrap_or_default().to_string()));
    }
    let mut out: Vec<(u32, String)> = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for (c, pp, name) in &parent_of {
            if *pp == p {
                out.push((*c, name.clone()));
                frontier.push(*c);
            }
        }
    }
    out
}

/// Runs cordon with `args` and `--json`, records its helper processes once
/// the step has started, and returns the output and those helpers.
fn run_watching_helpers(args: &[&str], tmpdir: &std::path::Path) -> (std::process::Output, Vec<(u32, String)>) {
    let mut full = vec!["run", "--accel", "tcg", "--json"];
    full.extend_from_slice(args);
    let errlog = tempfile::NamedTempFile::new().unwrap();
    let mut child = cordon()
        .args(full)
        .env("TMPDIR", tmpdir)
        .stdout(Stdio::piped())
        .stderr(errlog.reopen().unwrap())
        .spawn()
        .unwrap();
    let mut stdout = Vec::new();
    let mut helpers = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if line.contains("\"step_started\"") {
            helpers = descendants(child.id());
        }
        stdout.extend_from_slice(line.as_bytes());
        stdout.push(b'\n');
    }
    let status = child.wait().unwrap();
    let stderr = std::fs::read(errlog.path()).unwrap();
    (std::process::Output { status, stdout, stderr }, helpers)
}

#[test]
fn test_limits_fork_bomb_times_out_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let bomb = "b() { b | b & }; b; sleep 30";
    let (out, helpers) = run_watching_helpers(&["--timeout", "20s", "--", "sh", "-c", bomb], tmp.path());
    assert_eq!(out.status.code(), Some(124), "{}", describe(&out));
    let ex = step_exited(&out, "command");
    assert_eq!(ex["timed_out"], true, "{}", describe(&out));
    // Whether the agent reports the kill or the runner tears the sandbox
    // down first depends on how fast the guest kernel ends ~4096 tasks under
    // TCG (4-7 s measured): both are a correct end, so neither is asserted.
    assert!(
        helpers.iter().any(|(_, n)| n.starts_with("qemu-system")),
        "no qemu seen under cordon while the step ran: {helpers:?}"
    );
    for (pid, name) in &helpers {
        assert!(!alive(*pid as i32), "{name} ({pid}) outlived cordon");
    }
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().flatten().map(|e| e.path()).collect();
    assert!(left.is_empty(), "temp files left behind: {left:?}");
}

#[test]
fn test_limits_without_fork_bomb_step_runs_normally() {
    // The control for the fork bomb: the same shape, no bomb, well inside the timeout.
    let out = run_vm(&["--timeout", "20s", "--json", "--", "sh", "-c", "sleep 1; echo done"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let ex = step_exited(&out, "command");
    assert_eq!((ex["timed_out"].as_bool(), ex["exit_code"].as_i64()), (Some(false), Some(0)), "{}", describe(&out));
    assert_eq!(step_stdout(&out, "command"), "done\n");
}

/// Starts 100 sleeping children in an inner shell (which exits when a fork
/// fails), then reports the step cgroup's `pids.events` with a builtin (no
/// fork needed while the sleepers still hold the limit).
const FORK_100: &str = "cg=$(cut -d: -f3 /proc/self/cgroup); \
    sh -c 'i=0; while [ $i -lt 100 ]; do sleep 60 & i=$((i+1)); done; echo forked $i'; \
    read ev < /sys/fs/cgroup$cg/pids.events; echo pids.events $ev";

#[test]
fn test_limits_pids_in_job_file_caps_forks() {
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("cordon.toml");
    std::fs::write(&job, format!("pids = 50\n[[steps]]\nname = 'forks'\nargv = ['sh', '-c', {FORK_100:?}]\n")).unwrap();
    let out = cordon().args(["run", "--accel", "tcg", "--json", "-f", job.to_str().unwrap()]).output().unwrap();
    let s = step_stdout(&out, "forks");
    assert!(!s.contains("forked 100"), "100 children fit under pids = 50: {}", describe(&out));
    let hits: u64 = s.split("pids.events max ").nth(1).and_then(|r| r.trim().parse().ok()).unwrap_or(0);
    assert!(hits > 0, "no fork failed at pids.max: {}", describe(&out));
}

#[test]
fn test_limits_default_pids_allow_100_children() {
    let out = run_vm(&["--json", "--", "sh", "-c", FORK_100]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(step_stdout(&out, "command"), "forked 100\npids.events max 0\n", "{}", describe(&out));
}

#[test]
fn test_limits_memory_hog_is_oom_killed_and_reported_and_the_agent_survives() {
    // A 256M guest lets a step use 160M; three dd at once touch 100M
    // buffers each (one 300M buffer would fail at malloc, not OOM).
    // The job stops at the failed step, so the agent's survival shows in
    // what follows it: the artifact copy, and a clean end of the run.
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("cordon.toml");
    std::fs::write(
        &job,
        r#"
memory = "256M"
artifacts = ["/tmp/before"]
[[steps]]
name = "hog"
run = "cat /proc/1/oom_score_adj /proc/self/oom_score_adj > /tmp/before; for i in 1 2 3; do dd if=/dev/zero of=/dev/null bs=100M count=5 & done; wait; echo survived"
"#,
    )
    .unwrap();
    let out = cordon().args(["run", "--accel", "tcg", "--json", "-f", job.to_str().unwrap()]).output().unwrap();
    let hog = step_exited(&out, "hog");
    assert_eq!(hog["oom_killed"], true, "{}", describe(&out));
    assert_eq!(hog["signal"], libc::SIGKILL, "{}", describe(&out));
    assert!(!step_stdout(&out, "hog").contains("survived"), "{}", describe(&out));
    assert_eq!(
        out.status.code(),
        Some(128 + libc::SIGKILL),
        "the step's own code, not an agent loss: {}",
        describe(&out)
    );
    let before = std::fs::read_to_string(dir.path().join("cordon-artifacts/tmp/before"))
        .unwrap_or_else(|e| panic!("artifact not copied after the OOM kill ({e}): {}", describe(&out)));
    assert_eq!(before, "-1000\n0\n", "the agent is exempt from the OOM killer, its steps are not");
    assert!(events(&out).iter().any(|e| e["event"] == "run_finished"), "{}", describe(&out));
}

/// Bytes in files under `dir`, recursively.
fn tree_bytes(dir: &std::path::Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => tree_bytes(&e.path()),
            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}

#[test]
fn test_limits_console_flood_does_not_grow_the_temp_dir() {
    const FLOOD: u64 = 3_000_000;
    const CAP: u64 = 1 << 20;
    let tmp = tempfile::tempdir().unwrap();
    let step = format!("head -c {FLOOD} /dev/zero | tr '\\0' x > /dev/console; echo flooded");
    let mut child = cordon()
        .args(["run", "--accel", "tcg", "--json", "--", "sh", "-c", &step])
        .env("TMPDIR", tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut most = 0;
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        most = most.max(tree_bytes(tmp.path()));
        assert!(started.elapsed() < Duration::from_secs(600), "cordon did not finish");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(step_stdout(&out, "command"), "flooded\n", "{}", describe(&out));
    assert!(most < CAP, "the temp dir grew to {most} bytes while the guest wrote {FLOOD} to its console");
}
