//! The sandbox backends the end-to-end suites run on, and the facts that
//! differ between them. A case is written once, as `fn test_x(b: Backend)`;
//! `backend_tests!` instantiates it as `vm::test_x` (QEMU under TCG) and
//! `namespace::test_x` (Linux namespaces), so a test's name shows its
//! backend. Also: watching a run's process tree, cgroups and temp dir, to
//! show that nothing outlives cordon.
#![allow(dead_code)]

use crate::common::*;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// Instantiates each case for both backends (`both`), and the VM-only ones
/// (`vm_only`) for the VM alone. Cases are `fn(Backend)` in the calling file.
#[allow(unused_macros)] // A suite of one backend's cases does not use it.
macro_rules! backend_tests {
    (both: [$($case:ident),* $(,)?] $(, vm_only: [$($vm:ident),* $(,)?])? $(,)?) => {
        /// The microVM backend: QEMU under TCG (`--isolation vm --accel tcg`).
        mod vm {
            $(#[test] fn $case() { super::$case($crate::backends::Backend::Vm) })*
            $($(#[test] fn $vm() { super::$vm($crate::backends::Backend::Vm) })*)?
        }
        /// The namespace backend (`--isolation namespace`).
        mod namespace {
            $(#[test] fn $case() { super::$case($crate::backends::Backend::Namespace) })*
        }
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Vm,
    Namespace,
}

/// `cordon` with the static agent and no stdin.
pub fn cordon() -> Command {
    let mut c = Command::new(cordon_bin());
    c.env("CORDON_AGENT", static_agent_bin()).stdin(Stdio::null());
    c
}

impl Backend {
    /// The `cordon run` flags that pick this backend. The VM's kernel is
    /// `auto` (cordon's own when built) unless CORDON_TEST_KERNEL names one,
    /// so the whole suite can run on each kernel.
    pub fn isolation(self) -> &'static [&'static str] {
        static VM: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
        match self {
            Backend::Vm => VM.get_or_init(|| {
                let kernel = std::env::var("CORDON_TEST_KERNEL").unwrap_or_else(|_| "auto".into());
                vec!["--isolation", "vm", "--accel", "tcg", "--kernel", Box::leak(kernel.into_boxed_str())]
            }),
            Backend::Namespace => &["--isolation", "namespace"],
        }
    }

    /// `run` and the isolation flags, then `args`.
    pub fn run_args<'a>(self, args: &[&'a str]) -> Vec<&'a str> {
        let mut full = vec!["run"];
        full.extend_from_slice(self.isolation());
        full.extend_from_slice(args);
        full
    }

    /// `cordon run <isolation> ARGS`, not started.
    pub fn run(self, args: &[&str]) -> Command {
        let mut c = cordon();
        c.args(self.run_args(args));
        c
    }

    pub fn output(self, args: &[&str]) -> Output {
        self.run(args).output().unwrap()
    }

    /// `cordon run <isolation> ARGS -- sh -c SCRIPT`: exit code (-1 for a
    /// signal), stdout, stderr.
    pub fn sh(self, args: &[&str], script: &str) -> (i32, String, String) {
        let mut c = self.run(args);
        c.args(["--", "sh", "-c", script]);
        text(&c.output().unwrap())
    }

    /// The sandbox's network device when the gate is in front of it.
    pub fn nic(self) -> &'static str {
        match self {
            Backend::Vm => "eth0",
            Backend::Namespace => "tap0",
        }
    }

    /// Whether a step can run a DHCP client on its NIC (the VM's root can;
    /// in namespaces ns-init configures the tap and steps get no packet
    /// sockets).
    pub fn dhcp_in_step(self) -> bool {
        self == Backend::Vm
    }

    /// Whether `--net none` still gives the sandbox a NIC (the VM's is
    /// QEMU's restricted SLIRP; namespaces have loopback only).
    pub fn nic_with_net_none(self) -> bool {
        self == Backend::Vm
    }

    /// Whether each step runs in a cgroup of its own that it can read at
    /// /sys/fs/cgroup (the VM's agent makes one per exec; the namespace
    /// backend has one cgroup for the whole sandbox, on the host).
    pub fn per_step_cgroup(self) -> bool {
        self == Backend::Vm
    }

    /// Whether the step can create device nodes (root in the VM; a user
    /// namespace's root cannot mknod).
    pub fn can_mknod(self) -> bool {
        self == Backend::Vm
    }

    /// Whether `--cpus N` shows as N CPUs to the step (the VM's vCPUs; the
    /// namespace backend's limit is a cgroup quota, nproc shows the host's).
    pub fn cpus_visible(self) -> bool {
        self == Backend::Vm
    }

    /// Whether the step's own processes are host processes under cordon.
    pub fn step_visible_on_host(self) -> bool {
        self == Backend::Namespace
    }

    /// The helper a host process is, if it is one of this backend's.
    pub fn helper(self, p: &Proc) -> Option<&'static str> {
        let cmd = p.cmdline.join(" ");
        match self {
            Backend::Vm if p.comm.starts_with("qemu-system") => Some("qemu"),
            Backend::Vm if p.comm.starts_with("vhost-device") => Some("vhost-device-vsock"),
            // Spawned by exec (`cordon __ns-init`) or forked and named (prefork.rs).
            Backend::Namespace if cmd.contains("__ns-init") || p.comm == "cordon-ns-init" => Some("ns-init"),
            Backend::Namespace if p.cmdline.first().is_some_and(|a| a == "cordon-agent") => Some("agent"),
            _ if p.comm == "passt" || p.comm.starts_with("passt.") => Some("passt"),
            _ if cmd.contains("__janitor") || p.comm == "cordon-janitor" => Some("janitor"),
            _ => None,
        }
    }

    /// The helpers that must be under cordon while any step runs.
    pub fn required_helpers(self) -> &'static [&'static str] {
        match self {
            Backend::Vm => &["qemu"],
            Backend::Namespace => &["ns-init", "agent"],
        }
    }
}

/// Exit code (-1 for a signal), stdout and stderr, as text.
pub fn text(out: &Output) -> (i32, String, String) {
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn describe(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The JSON events cordon printed with `--json`.
pub fn events(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

pub fn step_exited(out: &Output, step: &str) -> serde_json::Value {
    events(out)
        .into_iter()
        .find(|e| e["event"] == "step_exited" && e["step"] == step)
        .unwrap_or_else(|| panic!("no step_exited for {step}: {}", describe(out)))
}

/// One stream of a step's output, from the JSON output events.
pub fn step_stream(out: &Output, step: &str, stream: &str) -> String {
    events(out)
        .iter()
        .filter(|e| e["event"] == "output" && e["step"] == step && e["stream"] == stream)
        .filter_map(|e| e["data"].as_str().map(str::to_string))
        .collect()
}

/// A host process.
#[derive(Debug, Clone)]
pub struct Proc {
    pub pid: u32,
    pub comm: String,
    pub cmdline: Vec<String>,
    /// Clock ticks after boot (stat field 22): with the pid, this process
    /// and no later one that reuses its pid.
    pub start: u64,
}

impl Proc {
    /// Whether this very process still runs (not a zombie, and its pid not
    /// reused by a later process: a fork bomb's, on a busy host, cycles
    /// through the whole pid space in seconds).
    pub fn alive(&self) -> bool {
        stat_of(self.pid).is_some_and(|s| s.start == self.start) && alive(self.pid as i32)
    }
}

struct Stat {
    ppid: u32,
    comm: String,
    start: u64,
}

fn stat_of(pid: u32) -> Option<Stat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, rest) = stat.rsplit_once(')')?;
    // After the comm: state, ppid, ... starttime (field 22, so the 20th here).
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ppid = fields.get(1)?.parse().ok()?;
    let start = fields.get(19)?.parse().ok()?;
    Some(Stat { ppid, comm: head.split_once('(').map(|x| x.1).unwrap_or_default().to_string(), start })
}

/// Every process whose parent is `pid`, transitively (scans /proc).
pub fn descendants(pid: u32) -> Vec<Proc> {
    let mut all = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if let Some(s) = stat_of(p) {
            all.push((p, s));
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for (c, Stat { ppid: pp, comm, start }) in &all {
            if *pp == p {
                let cmdline = std::fs::read(format!("/proc/{c}/cmdline")).unwrap_or_default();
                let cmdline = cmdline
                    .split(|b| *b == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into())
                    .collect();
                out.push(Proc { pid: *c, comm: comm.clone(), cmdline, start: *start });
                frontier.push(*c);
            }
        }
    }
    out
}

/// The cgroup directories on the host named `cordon-*` that `pid` is in
/// (the namespace backend's sandbox cgroup, one per v1 hierarchy or v2).
pub fn sandbox_cgroups(pid: u32) -> Vec<PathBuf> {
    let Ok(own) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else { return Vec::new() };
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mut out = Vec::new();
    for line in own.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(_), Some(ctrls), Some(path)) = (f.next(), f.next(), f.next()) else { continue };
        if !Path::new(path).file_name().is_some_and(|n| n.to_string_lossy().starts_with("cordon-")) {
            continue;
        }
        for m in mountinfo.lines() {
            let Some((pre, post)) = m.split_once(" - ") else { continue };
            let pre: Vec<&str> = pre.split(' ').collect();
            let post: Vec<&str> = post.split(' ').collect();
            let (root, point) = (pre[3], pre[4]);
            let fits = match (post[0], ctrls) {
                ("cgroup2", "") => true,
                ("cgroup", c) if !c.is_empty() => {
                    let opts: Vec<&str> = post.get(2).unwrap_or(&"").split(',').collect();
                    c.split(',').all(|c| opts.contains(&c))
                }
                _ => false,
            };
            let Some(rel) = Path::new(path).strip_prefix(root).ok() else { continue };
            if fits {
                let dir = Path::new(point).join(rel);
                if !out.contains(&dir) {
                    out.push(dir);
                }
            }
        }
    }
    out
}

/// What was under cordon at a point of a run, and how the run ended.
pub struct Watched {
    pub output: Output,
    /// Processes under cordon when the marker appeared.
    pub seen: Vec<Proc>,
    /// The sandbox's cgroup directories on the host then.
    pub cgroups: Vec<PathBuf>,
    /// What cordon had in its TMPDIR then.
    pub temp_then: Vec<PathBuf>,
    /// cordon's TMPDIR, empty unless something was left behind.
    pub tmp: tempfile::TempDir,
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir).unwrap().flatten().map(|e| e.path()).collect()
}

/// Whether a `--json` line is the event named `marker`, or output holding it.
fn hits(line: &str, marker: &str) -> bool {
    let Ok(e) = serde_json::from_str::<serde_json::Value>(line) else { return false };
    e["event"] == marker || (e["event"] == "output" && e["data"].as_str().is_some_and(|d| d.contains(marker)))
}

/// Runs `cordon run --json <isolation> ARGS` with a TMPDIR of its own; at
/// the event named `marker` (or the first output holding it), records what is under cordon (processes,
/// the sandbox's cgroups, its temp files) and calls `then` with cordon's pid
/// (to signal it, say). Panics when the run ends without the marker.
pub fn run_watched(b: Backend, args: &[&str], marker: &str, then: impl FnOnce(u32)) -> Watched {
    let tmp = tempfile::tempdir().unwrap();
    let errlog = tempfile::NamedTempFile::new().unwrap();
    let mut full = vec!["--json"];
    full.extend_from_slice(args);
    let mut child =
        b.run(&full).env("TMPDIR", tmp.path()).stdout(Stdio::piped()).stderr(errlog.reopen().unwrap()).spawn().unwrap();
    let pid = child.id();
    let mut stdout = Vec::new();
    let mut snapshot = None;
    let mut then = Some(then);
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if snapshot.is_none() && hits(&line, marker) {
            let seen = descendants(pid);
            let mut cgroups = Vec::new();
            for p in &seen {
                for d in sandbox_cgroups(p.pid) {
                    if !cgroups.contains(&d) {
                        cgroups.push(d);
                    }
                }
            }
            snapshot = Some((seen, cgroups, entries(tmp.path())));
            if let Some(f) = then.take() {
                f(pid);
            }
        }
        stdout.extend_from_slice(line.as_bytes());
        stdout.push(b'\n');
    }
    let status = child.wait().unwrap();
    let output = Output { status, stdout, stderr: std::fs::read(errlog.path()).unwrap() };
    let Some((seen, cgroups, temp_then)) = snapshot else {
        panic!("the run ended before {marker:?} appeared: {}", describe(&output));
    };
    Watched { output, seen, cgroups, temp_then, tmp }
}

impl Watched {
    /// Asserts that what was under cordon is gone (within `grace`, for the
    /// janitor of a SIGKILLed cordon): every process, the sandbox's cgroups
    /// and the temp dir. Positive controls: the backend's helpers, its
    /// cgroups (namespaces) and the step's processes (where the host sees
    /// them, when `step_comm` names one) were there to begin with.
    pub fn assert_nothing_left(&self, b: Backend, step_comm: Option<&str>, grace: Duration) {
        let what = describe(&self.output);
        let names: Vec<&str> = self.seen.iter().filter_map(|p| b.helper(p)).collect();
        for h in b.required_helpers() {
            assert!(names.contains(h), "no {h} under cordon while the step ran: {:?}\n{what}", self.seen);
        }
        if let (true, Some(comm)) = (b.step_visible_on_host(), step_comm) {
            assert!(
                self.seen.iter().any(|p| p.comm == comm),
                "the step's {comm} was not under cordon: {:?}\n{what}",
                self.seen
            );
        }
        if b == Backend::Namespace {
            assert!(!self.cgroups.is_empty(), "the sandbox was in no cordon-* cgroup on the host\n{what}");
        }
        assert!(!self.temp_then.is_empty(), "cordon had no temp dir in TMPDIR while the step ran\n{what}");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let gone = |p: &Proc| !p.alive();
        rt.block_on(eventually(grace, || self.seen.iter().all(gone)));
        let left: Vec<&Proc> = self.seen.iter().filter(|p| !gone(p)).collect();
        rt.block_on(eventually(grace, || self.cgroups.iter().all(|d| !d.exists())));
        let left_cgroups: Vec<&PathBuf> = self.cgroups.iter().filter(|d| d.exists()).collect();
        // A failing run must not litter the host: end what this run left
        // (these processes were under our own cordon) before asserting.
        for p in left.iter().filter(|p| p.alive()) {
            // SAFETY: kill(2) on a process this test's cordon started (its
            // start time matched just now).
            unsafe { libc::kill(p.pid as i32, libc::SIGKILL) };
        }
        rt.block_on(eventually(Duration::from_secs(5), || left.iter().all(|p| gone(p))));
        for d in &left_cgroups {
            let _ = std::fs::remove_dir(d);
        }
        assert!(left.is_empty(), "outlived cordon: {left:?}\n{what}");
        assert!(left_cgroups.is_empty(), "the sandbox's cgroups outlived cordon: {left_cgroups:?}\n{what}");
        rt.block_on(eventually(grace, || entries(self.tmp.path()).is_empty()));
        let left = entries(self.tmp.path());
        assert!(left.is_empty(), "temp files left behind: {left:?} (there were {:?})\n{what}", self.temp_then);
    }
}
