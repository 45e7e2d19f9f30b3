//! Limits on each backend: a fork bomb cannot starve the agent or outlive
//! the step's deadline, `pids` caps the tasks of a step, `memory` ends a
//! memory hog with an OOM kill that is reported while the agent survives
//! (per-step cgroups in the VM; one cgroup for the whole sandbox with
//! namespaces), and (VM-only) a guest flooding its console does not grow the
//! host's temp dir.

mod common;
#[macro_use]
mod backends;

use backends::*;
use std::process::Stdio;
use std::time::{Duration, Instant};

backend_tests! {
    both: [
        test_limits_fork_bomb_times_out_and_leaves_nothing,
        test_limits_without_fork_bomb_step_runs_normally,
        test_limits_pids_in_job_file_caps_forks,
        test_limits_default_pids_allow_100_children,
        test_limits_memory_hog_is_oom_killed_and_reported_and_the_agent_survives,
    ],
    // VM-only: the guest's console is the VM's.
    vm_only: [test_limits_console_flood_does_not_grow_the_temp_dir],
}

fn test_limits_fork_bomb_times_out_and_leaves_nothing(b: Backend) {
    // The step's own shell forks its sleeper and the bomb's subshell before
    // the bomb exists, then only waits (a builtin): it never forks while the
    // bomb holds pids.max (on a loaded host the bomb's children can fill it
    // before the shell's second fork of a pipeline, which ends sh with 2).
    let bomb = "sleep 30 & (b() { b | b & }; b); wait";
    let w = run_watched(b, &["--timeout", "20s", "--", "sh", "-c", bomb], "step_started", |_| {});
    assert_eq!(w.output.status.code(), Some(124), "{}", describe(&w.output));
    let ex = step_exited(&w.output, "command");
    assert_eq!(ex["timed_out"], true, "{}", describe(&w.output));
    // At native speed the bomb reaches pids.max at once; under TCG it may
    // not before the deadline, nor its output arrive before the teardown.
    if b == Backend::Namespace {
        let err = step_stream(&w.output, "command", "stderr");
        assert!(err.contains("can't fork"), "the bomb never reached the pids limit: {}", describe(&w.output));
    }
    // Whether the agent reports the kill or the runner tears the sandbox
    // down first depends on how fast the kernel ends ~4096 tasks (4-7 s
    // measured in the VM under TCG): both are a correct end, so neither is
    // asserted.
    w.assert_nothing_left(b, None, Duration::from_secs(10));
}

fn test_limits_without_fork_bomb_step_runs_normally(b: Backend) {
    // The control for the fork bomb: the same shape, no bomb, well inside the timeout.
    let out = b.output(&["--timeout", "20s", "--json", "--", "sh", "-c", "sleep 1; echo done"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let ex = step_exited(&out, "command");
    assert_eq!((ex["timed_out"].as_bool(), ex["exit_code"].as_i64()), (Some(false), Some(0)), "{}", describe(&out));
    assert_eq!(step_stream(&out, "command", "stdout"), "done\n");
}

/// Starts 100 sleeping children in an inner shell (which exits when a fork
/// fails), then, where the step has a cgroup of its own (the VM), reports
/// its `pids.events` with a builtin (no fork needed while the sleepers
/// still hold the limit).
const FORK_100: &str = "cg=$(cut -d: -f3 /proc/self/cgroup); \
    sh -c 'i=0; while [ $i -lt 100 ]; do sleep 60 & i=$((i+1)); done; echo forked $i'; \
    if [ -r /sys/fs/cgroup$cg/pids.events ]; then read ev < /sys/fs/cgroup$cg/pids.events; echo pids.events $ev; fi";

fn test_limits_pids_in_job_file_caps_forks(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("cordon.toml");
    std::fs::write(&job, format!("pids = 50\n[[steps]]\nname = 'forks'\nargv = ['sh', '-c', {FORK_100:?}]\n")).unwrap();
    let out = b.output(&["--json", "-f", job.to_str().unwrap()]);
    let s = step_stream(&out, "forks", "stdout");
    assert!(!s.contains("forked 100"), "100 children fit under pids = 50: {}", describe(&out));
    let err = step_stream(&out, "forks", "stderr");
    assert!(err.contains("can't fork"), "no fork failed: {}", describe(&out));
    if b.per_step_cgroup() {
        let hits: u64 = s.split("pids.events max ").nth(1).and_then(|r| r.trim().parse().ok()).unwrap_or(0);
        assert!(hits > 0, "no fork failed at pids.max: {}", describe(&out));
    }
}

fn test_limits_default_pids_allow_100_children(b: Backend) {
    let out = b.output(&["--json", "--", "sh", "-c", FORK_100]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let want = if b.per_step_cgroup() { "forked 100\npids.events max 0\n" } else { "forked 100\n" };
    assert_eq!(step_stream(&out, "command", "stdout"), want, "{}", describe(&out));
}

fn test_limits_memory_hog_is_oom_killed_and_reported_and_the_agent_survives(b: Backend) {
    // `memory = 256M` lets a step use 160M (the VM's guest, or the
    // namespace sandbox's cgroup); three dd at once touch 100M buffers each
    // (one 300M buffer would fail at malloc, not OOM).
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
    let out = b.output(&["--json", "-f", job.to_str().unwrap()]);
    let hog = step_exited(&out, "hog");
    assert_eq!(hog["oom_killed"], true, "{}", describe(&out));
    let before = std::fs::read_to_string(dir.path().join("cordon-artifacts/tmp/before"))
        .unwrap_or_else(|e| panic!("artifact not copied after the OOM kill ({e}): {}", describe(&out)));
    if b.per_step_cgroup() {
        // The VM: the step's own cgroup with memory.oom.group ends the whole
        // step, and the agent is exempt from the OOM killer.
        assert_eq!(hog["signal"], libc::SIGKILL, "{}", describe(&out));
        assert!(!step_stream(&out, "hog", "stdout").contains("survived"), "{}", describe(&out));
        assert_eq!(
            out.status.code(),
            Some(128 + libc::SIGKILL),
            "the step's own code, not an agent loss: {}",
            describe(&out)
        );
        assert_eq!(before, "-1000\n0\n", "the agent is exempt from the OOM killer, its steps are not");
    } else {
        // Namespaces: one cgroup for the whole sandbox (on v1 without a group
        // kill): the kernel kills the biggest task, a `dd`, and the kill is
        // still the step's to report; the agent, small, lives on.
        assert!(matches!(out.status.code(), Some(0) | Some(137)), "{}", describe(&out));
    }
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

/// VM-only: the console is the guest kernel's.
fn test_limits_console_flood_does_not_grow_the_temp_dir(b: Backend) {
    const FLOOD: u64 = 3_000_000;
    const CAP: u64 = 1 << 20;
    let tmp = tempfile::tempdir().unwrap();
    let step = format!("head -c {FLOOD} /dev/zero | tr '\\0' x > /dev/console; echo flooded");
    let mut child = b
        .run(&["--json", "--", "sh", "-c", &step])
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
    assert_eq!(step_stream(&out, "command", "stdout"), "flooded\n", "{}", describe(&out));
    assert!(most < CAP, "the temp dir grew to {most} bytes while the guest wrote {FLOOD} to its console");
}
