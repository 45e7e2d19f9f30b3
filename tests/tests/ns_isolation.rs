//! The namespace backend's isolation, probed from inside by a static probe
//! (`ns_probe/probe.c`) put in the workspace: writes outside the workspace,
//! /tmp, /run (and the sandbox's own /dev/shm) fail; the host's /home,
//! /root, /etc/shadow and processes are not visible, and kill(-1) reaches
//! none of them; the agent's /proc entries are out of a step's reach;
//! ptrace, mount, new user namespaces, module loading and io_uring are
//! refused; a fork bomb meets the pids limit; /dev/kvm, /dev/net/tun and the
//! host's sockets are out of reach (with `--net none` and through the gate);
//! as root the sandbox's network namespace belongs to the host's user
//! namespace, not the sandbox's;
//! `--rootfs host` shows the host's tools but not the caller's credentials
//! or environment; and as a normal user `--net none` runs while rules fail
//! closed. Every denial has its positive control: the same probe succeeding
//! on the host, or a harmless neighbour of the denied call succeeding
//! inside. No probe check changes an existing file, and what one creates it
//! removes: a sandbox that failed to confine it must not cost the host.
//!
//! Runs as root (the machine's CI user); the non-root cases drop to
//! 65534 with setpriv.

mod common;
mod ns_probe;

use common::*;
use ns_probe::Verdict;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const EPERM: i32 = libc::EPERM;
const ENOSYS: i32 = libc::ENOSYS;

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests run as root (they plant files in /root and /home and drop to uid 65534 with setpriv)"
    );
}

fn cordon() -> Command {
    let mut c = Command::new(cordon_bin());
    c.env("CORDON_AGENT", static_agent_bin()).stdin(Stdio::null());
    c
}

/// cordon's status and output, each stream cut to its last 4000 bytes.
fn describe(out: &Output) -> String {
    let tail = |b: &[u8]| String::from_utf8_lossy(&b[b.len().saturating_sub(4000)..]).into_owned();
    format!("status {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}", out.status, tail(&out.stdout), tail(&out.stderr))
}

/// `cordon run --isolation namespace --workspace WS EXTRA -- /workspace/probe CHECKS`.
fn run_probe_with(mut cmd: Command, ws: &Path, extra: &[&str], checks: &[&str]) -> (Output, BTreeMap<String, Verdict>) {
    cmd.args(["run", "--isolation", "namespace", "--workspace"]).arg(ws).args(extra).arg("--").arg("/workspace/probe");
    cmd.args(checks);
    let out = cmd.output().expect("running cordon");
    assert_eq!(out.status.code(), Some(0), "the probe's step did not run to the end: {}", describe(&out));
    let v = ns_probe::parse(&String::from_utf8_lossy(&out.stdout));
    (out, v)
}

fn run_probe(ws: &Path, extra: &[&str], checks: &[&str]) -> (Output, BTreeMap<String, Verdict>) {
    run_probe_with(cordon(), ws, extra, checks)
}

/// Asserts `check` failed with one of `errnos` (inside).
fn assert_denied(v: &BTreeMap<String, Verdict>, out: &Output, check: &str, errnos: &[i32]) {
    match ns_probe::get(v, check, &describe(out)) {
        Verdict::Err(e) if errnos.contains(&e) => {}
        other => panic!(
            "{check} inside the sandbox gave {other:?}, expected one of {:?}: {}",
            errnos.iter().map(|e| ns_probe::errno_name(*e)).collect::<Vec<_>>(),
            describe(out)
        ),
    }
}

/// Asserts `check` failed, whatever the errno (inside).
fn assert_fails(v: &BTreeMap<String, Verdict>, out: &Output, check: &str) {
    let got = ns_probe::get(v, check, &describe(out));
    assert!(!got.is_ok(), "{check} succeeded inside the sandbox ({got:?}): {}", describe(out));
}

fn assert_ok(v: &BTreeMap<String, Verdict>, out: &Output, check: &str) -> i64 {
    match ns_probe::get(v, check, &describe(out)) {
        Verdict::Ok(n) => n,
        Verdict::Err(e) => {
            panic!("{check} (a positive control) failed with {}: {}", ns_probe::errno_name(e), describe(out))
        }
    }
}

/// Asserts the same probe succeeds on the host: the control for a denial.
fn assert_host_ok(host: &BTreeMap<String, Verdict>, check: &str) -> i64 {
    match host.get(check) {
        Some(Verdict::Ok(n)) => *n,
        other => panic!("the control failed: {check} on the host gave {other:?}, so its denial inside proves nothing"),
    }
}

/// A path planted on the host for the duration of a test, removed on drop.
struct Planted(PathBuf);

impl Planted {
    /// `dir/name-<unique>/secret`, the directory created here.
    fn dir_with_secret(dir: &str, name: &str) -> Planted {
        let d = Path::new(dir).join(format!("{name}-{}-{}", std::process::id(), unique()));
        std::fs::create_dir(&d).unwrap_or_else(|e| panic!("creating {}: {e}", d.display()));
        std::fs::write(d.join("secret"), "hunter2\n").unwrap();
        Planted(d)
    }
}

impl Drop for Planted {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn unique() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

// ---------------------------------------------------------------- writes

/// Writes that must fail, and the ones that must work, in either rootfs.
/// Besides the workspace, /tmp and /run, the sandbox's own /dev/shm (a
/// private tmpfs, for POSIX semaphores) is writable: init.rs lists it; a
/// file planted in the host's /dev/shm shows it is not the host's.
fn check_writes(rootfs: &str, denied: &[&str]) {
    require_root();
    let host_shm = Planted::dir_with_secret("/dev/shm", "cordon-nsiso");
    let host_shm_check = format!("exists={}/secret", host_shm.0.display());
    let ws = ns_probe::workspace();
    let allowed = [
        "create=/workspace/ok",
        "create=/tmp/ok",
        "create=/run/ok",
        "mkdir=/tmp/ok.d",
        "mkdir=/workspace/ok.d",
        "openw=/dev/null",
        "create=/dev/shm/ok",
    ];
    let mut checks: Vec<&str> = allowed.iter().chain(denied).copied().collect();
    checks.push(&host_shm_check);
    assert_host_ok(&ns_probe::on_host(&ws.path().join("probe"), &[&host_shm_check]), &host_shm_check);
    let (out, v) = run_probe(ws.path(), &["--rootfs", rootfs], &checks);
    for c in allowed {
        assert_ok(&v, &out, c);
    }
    for c in denied {
        assert_fails(&v, &out, c);
    }
    assert_fails(&v, &out, &host_shm_check);
}

#[test]
fn test_ns_writes_outside_workspace_tmp_run_fail_image_rootfs() {
    check_writes(
        "image",
        &[
            "openw=/etc/passwd",
            "create=/etc/cordon-nsiso",
            "create=/cordon-nsiso",
            "openw=/bin/busybox",
            "openw=/init",
            "create=/usr/cordon-nsiso",
            "create=/root/cordon-nsiso",
            "create=/sys/cordon-nsiso",
            "mkdir=/cordon-nsiso.d",
            // Writable mounts: /dev's tmpfs (device files only) and /proc.
            "create=/dev/cordon-nsiso",
            "openw=/proc/sys/kernel/hostname",
            "openw=/proc/self/comm",
        ],
    );
}

#[test]
fn test_ns_writes_outside_workspace_tmp_run_fail_host_rootfs() {
    check_writes(
        "host",
        &[
            "openw=/etc/passwd",
            "openw=/usr/bin/env",
            "create=/etc/cordon-nsiso",
            "create=/usr/cordon-nsiso",
            "create=/usr/bin/cordon-nsiso",
            "create=/usr/lib/cordon-nsiso",
            "create=/cordon-nsiso",
            "mkdir=/cordon-nsiso.d",
            "create=/dev/cordon-nsiso",
            "openw=/proc/sys/kernel/hostname",
            "openw=/proc/self/comm",
        ],
    );
}

#[test]
fn test_ns_landlock_alone_denies_writing_an_owned_file_on_a_writable_mount() {
    // /proc/self/comm belongs to the process itself (mode 0644) on the
    // sandbox's own rw procfs: neither a read-only mount nor file modes stop
    // the owner writing it (the host's probe opens it: the control), only
    // Landlock's "writes only beneath /workspace, /tmp, /run" does. /tmp is
    // the control inside.
    let ws = ns_probe::workspace();
    let checks = ["create=/tmp/x", "openw=/proc/self/comm"];
    assert_host_ok(&ns_probe::on_host(&ws.path().join("probe"), &checks[1..]), checks[1]);
    let (out, v) = run_probe(ws.path(), &[], &checks);
    assert_ok(&v, &out, "create=/tmp/x");
    assert_denied(&v, &out, "openw=/proc/self/comm", &[libc::EACCES]);
}

// ------------------------------------------------- host files and processes

fn check_host_paths_invisible(rootfs: &str) {
    require_root();
    let root_secret = Planted::dir_with_secret("/root", ".cordon-nsiso");
    let home_secret = Planted::dir_with_secret("/home", "cordon-nsiso");
    let rs = format!("exists={}/secret", root_secret.0.display());
    let hs = format!("exists={}/secret", home_secret.0.display());
    let ws = ns_probe::workspace();
    let probe = ws.path().join("probe");
    let checks = [rs.as_str(), hs.as_str(), "read=/etc/shadow", "count=/home", "read=/etc/passwd"];

    let host = ns_probe::on_host(&probe, &checks);
    assert_host_ok(&host, &rs);
    assert_host_ok(&host, &hs);
    assert!(assert_host_ok(&host, "read=/etc/shadow") > 0, "the host's /etc/shadow is empty: nothing to hide");
    assert!(assert_host_ok(&host, "count=/home") > 0);

    let (out, v) = run_probe(ws.path(), &["--rootfs", rootfs], &checks);
    assert_fails(&v, &out, &rs);
    assert_fails(&v, &out, &hs);
    // Absent, unreadable, or the empty file bound over it: never its bytes.
    match ns_probe::get(&v, "read=/etc/shadow", &describe(&out)) {
        Verdict::Err(_) | Verdict::Ok(0) => {}
        Verdict::Ok(n) => panic!("/etc/shadow gave {n} bytes inside the sandbox: {}", describe(&out)),
    }
    match ns_probe::get(&v, "count=/home", &describe(&out)) {
        Verdict::Err(_) | Verdict::Ok(0) => {}
        Verdict::Ok(n) => panic!("/home lists {n} entries inside the sandbox: {}", describe(&out)),
    }
    // The control inside: files the root filesystem does hold are readable.
    assert!(assert_ok(&v, &out, "read=/etc/passwd") > 0, "{}", describe(&out));
}

#[test]
fn test_ns_host_home_root_and_shadow_invisible_image_rootfs() {
    check_host_paths_invisible("image");
}

#[test]
fn test_ns_host_home_root_and_shadow_invisible_host_rootfs() {
    check_host_paths_invisible("host");
}

/// A host process with `marker` in its command line (the probe pausing).
struct HostProcess(std::process::Child);

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn test_ns_host_processes_invisible() {
    let ws = ns_probe::workspace();
    let probe = ws.path().join("probe");
    let marker = format!("cordon-nsiso-proc-{}", unique());
    let pause = format!("pause={marker}");
    let sleeper = HostProcess(Command::new(&probe).arg(&pause).stdin(Stdio::null()).spawn().unwrap());
    let find = format!("findproc={marker}");
    let host_pid = format!("exists=/proc/{}", sleeper.0.id());
    let checks = [find.as_str(), host_pid.as_str(), "findproc=cordon-agent", "getpid", "count=/proc"];

    let until = Instant::now() + Duration::from_secs(10);
    let mut host = ns_probe::on_host(&probe, &checks);
    // The sleeper's exec may not have happened yet: a bound on waiting, not
    // a timing assertion.
    while host.get(&find) == Some(&Verdict::Ok(0)) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
        host = ns_probe::on_host(&probe, &checks);
    }
    assert!(assert_host_ok(&host, &find) >= 1, "the host's probe does not see its own sleeper");
    assert_host_ok(&host, &host_pid);

    let (out, v) = run_probe(ws.path(), &[], &checks);
    assert_eq!(
        ns_probe::get(&v, &find, &describe(&out)),
        Verdict::Ok(0),
        "a host process is visible inside: {}",
        describe(&out)
    );
    // Host pids are large; the sandbox's PID namespace counts from 1.
    let pid = assert_ok(&v, &out, "getpid");
    if pid != sleeper.0.id() as i64 {
        assert_fails(&v, &out, &host_pid);
    }
    assert!(pid < 100, "the step's pid {pid} is not from a fresh PID namespace: {}", describe(&out));
    // The control inside: the sandbox's own processes are visible (the agent).
    assert!(assert_ok(&v, &out, "findproc=cordon-agent") >= 1, "{}", describe(&out));
}

#[test]
fn test_ns_kill_all_reaches_no_host_process() {
    // kill(-1, SIGKILL) from a step signals every process it may signal:
    // its own background sleep dies (the control), the host's sleeper and
    // the agent (the run still reports) do not.
    let ws = ns_probe::workspace();
    let marker = format!("cordon-nsiso-kill-{}", unique());
    let sleeper = HostProcess(
        Command::new(ws.path().join("probe")).arg(format!("pause={marker}")).stdin(Stdio::null()).spawn().unwrap(),
    );
    let script = "sleep 100 & p=$!; kill -9 -1; wait $p; echo \"sleep: $?\"";
    let out = cordon().args(["run", "--isolation", "namespace", "--", "sh", "-c", script]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "sleep: 137\n", "{}", describe(&out));
    assert!(alive(sleeper.0.id() as i32), "kill -9 -1 inside the sandbox killed a host process");
}

/// The user namespace that owns namespace file `ns` (ioctl NS_GET_USERNS),
/// as its inode number.
fn owning_userns(ns: &str) -> std::io::Result<u64> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::fs::MetadataExt;
    const NS_GET_USERNS: libc::c_ulong = 0xb701; // _IO(0xb7, 0x1), linux/nsfs.h
    let f = std::fs::File::open(ns)?;
    // SAFETY: NS_GET_USERNS takes no argument and returns a new descriptor.
    let fd = unsafe { libc::ioctl(f.as_raw_fd(), NS_GET_USERNS as _) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this descriptor.
    let owner = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    Ok(owner.metadata()?.ino())
}

fn ns_inode(path: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().ino()
}

#[test]
fn test_ns_network_namespace_belongs_to_the_host_user_namespace() {
    // As root the sandbox's network namespace is made before its user
    // namespace: the sandbox's root holds no capability over it, whatever
    // it regains. Looked at from the host, on a sleeping step: its network
    // namespace is its own (not the host's), its user namespace is its own
    // (the control: it is in another user namespace), and the owner of
    // that network namespace is the host's user namespace.
    require_root();
    let mut child = cordon()
        .args(["run", "--isolation", "namespace", "--", "sh", "-c", "echo ready; exec sleep 60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
    assert_eq!(line, "ready\n");
    // `sh` may not have become `sleep` yet when its echo arrives: a bound
    // on waiting for the exec, not a timing assertion.
    let until = Instant::now() + Duration::from_secs(5);
    let sleeper = loop {
        let found = descendants(child.id())
            .into_iter()
            .find(|(p, _)| std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "sleep"))
            .map(|(p, _)| p);
        if found.is_some() || Instant::now() > until {
            break found;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let checked = sleeper.map(|p| {
        let (net, user) = (format!("/proc/{p}/ns/net"), format!("/proc/{p}/ns/user"));
        (ns_inode(&net), ns_inode(&user), owning_userns(&net).unwrap(), owning_userns(&user).unwrap())
    });
    // SAFETY: signalling our own child; SIGTERM ends the run and its sandbox.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    let (net, user, net_owner, user_parent) = checked.expect("no sleeping step under cordon");
    let host_user = ns_inode("/proc/self/ns/user");
    assert_ne!(net, ns_inode("/proc/self/ns/net"), "the step shares the host's network namespace");
    assert_ne!(user, host_user, "the step is in the host's user namespace: nothing to compare");
    assert_eq!(user_parent, host_user, "the sandbox's user namespace is not a child of the host's");
    assert_eq!(net_owner, host_user, "the sandbox's network namespace belongs to the sandbox's user namespace");
}

// ------------------------------------------------------------ system calls

#[test]
fn test_ns_privileged_syscalls_denied() {
    require_root();
    let ws = ns_probe::workspace();
    let probe = ws.path().join("probe");
    let denied = [
        "ptrace",
        "mount=/workspace",
        "unshare=user",
        "unshare=mnt",
        "unshare=net",
        "clone_newuser",
        "init_module",
        "finit_module",
        "delete_module",
        "io_uring",
    ];
    let controls = ["getpid", "signal", "tcp_self"];
    let checks: Vec<&str> = denied.iter().chain(&controls).copied().collect();

    // On the host, as root, the same calls go through (mount in a mount
    // namespace of the probe's own, so nothing reaches the host's tree).
    let mnt = tempfile::tempdir().unwrap();
    let host_mount = format!("mount={}", mnt.path().display());
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private"])
        .arg(&probe)
        .args(["ptrace", "unshare=user", "unshare=mnt", "unshare=net", "clone_newuser", "io_uring", &host_mount])
        .args(["init_module", "finit_module", "delete_module"])
        .output()
        .expect("unshare(1) from util-linux is needed for the host's mount control");
    let host = ns_probe::parse(&String::from_utf8_lossy(&out.stdout));
    for c in ["ptrace", "unshare=user", "unshare=mnt", "unshare=net", "clone_newuser", &host_mount] {
        assert_host_ok(&host, c);
    }
    let io_uring_off = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").map(|s| s.trim() != "0");
    if io_uring_off.unwrap_or(false) {
        panic!("kernel.io_uring_disabled is set on this host: the io_uring control cannot succeed");
    }
    assert_host_ok(&host, "io_uring");
    // The host's kernel here has no module support (ENOSYS); root with
    // CAP_SYS_MODULE never gets EPERM, so EPERM inside is the filter's.
    for c in ["init_module", "finit_module", "delete_module"] {
        assert_ne!(host.get(c), Some(&Verdict::Err(EPERM)), "{c} on the host as root gave EPERM: no control");
        assert!(host.contains_key(c), "no host verdict for {c}");
    }

    let (out, v) = run_probe(ws.path(), &[], &checks);
    for c in controls {
        assert_ok(&v, &out, c);
    }
    for c in denied {
        assert_denied(&v, &out, c, &[EPERM, ENOSYS]);
    }
    // The filter says EPERM for these (ENOSYS would be the kernel's own
    // answer, which is no proof of the filter).
    for c in ["init_module", "finit_module", "delete_module"] {
        assert_denied(&v, &out, c, &[EPERM]);
    }
}

// ------------------------------------------------------------------- pids

#[test]
fn test_ns_fork_probe_stops_at_pids_limit() {
    let ws = ns_probe::workspace();
    // The control: 100 children fit under 200.
    let (out, v) = run_probe(ws.path(), &["--pids", "200"], &["forks=100"]);
    assert_eq!(assert_ok(&v, &out, "forks=100"), 100);
    // Under 50 (the agent and the probe count too), the fork that would go
    // past the limit fails with EAGAIN.
    let (out, v) = run_probe(ws.path(), &["--pids", "50"], &["forks=100"]);
    assert_denied(&v, &out, "forks=100", &[libc::EAGAIN]);
    let got = assert_ok(&v, &out, "forks=100.count");
    assert!((1..50).contains(&got), "{got} children under --pids 50: {}", describe(&out));
}

/// A process by pid and start time (so a recycled pid is not mistaken for it).
type Task = (u32, u64);

fn start_time(stat_rest: &str) -> u64 {
    // Fields after the command's closing parenthesis: state is the 3rd field
    // of stat, starttime the 22nd.
    stat_rest.split_whitespace().nth(19).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// Every process whose parent is `pid`, transitively.
fn descendants(pid: u32) -> Vec<Task> {
    let mut parent_of = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else { continue };
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let ppid: u32 = rest.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        parent_of.push((p, ppid, start_time(rest)));
    }
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for (c, pp, start) in &parent_of {
            if *pp == p {
                out.push((*c, *start));
                frontier.push(*c);
            }
        }
    }
    out
}

/// Whether the very process `t` still lives (not a zombie, not a new
/// process that reuses its pid).
fn task_alive(t: Task) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", t.0)) else { return false };
    let Some((_, rest)) = stat.rsplit_once(')') else { return false };
    start_time(rest) == t.1 && alive(t.0 as i32)
}

#[test]
fn test_ns_fork_bomb_contained_by_pids_limit() {
    // A real fork bomb under --pids 64: the host counts the sandbox's tasks
    // while it runs; the step's deadline ends it; nothing is left.
    const LIMIT: usize = 64;
    // Files, not pipes: the bomb's "can't fork" lines would fill a pipe
    // nobody reads while cordon runs, and cordon would block on it.
    let (outlog, errlog) = (tempfile::NamedTempFile::new().unwrap(), tempfile::NamedTempFile::new().unwrap());
    let mut child = cordon()
        .args(["run", "--isolation", "namespace", "--pids", &LIMIT.to_string(), "--timeout", "4s", "--"])
        // The step's own shell forks its sleeper and the bomb's subshell
        // before the bomb exists, then only waits (a builtin): a fork of its
        // own once the bomb holds the limit would end the step early with 2.
        .args(["sh", "-c", "sleep 30 & (b() { b | b & }; b); wait"])
        .stdout(outlog.reopen().unwrap())
        .stderr(errlog.reopen().unwrap())
        .spawn()
        .unwrap();
    let cordon_pid = child.id();
    let mut most = 0;
    let mut seen = std::collections::BTreeSet::new();
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > until {
            let _ = child.kill();
            panic!("cordon did not end 60 s after a fork bomb with --timeout 4s (most tasks seen: {most})");
        }
        let d = descendants(cordon_pid);
        most = most.max(d.len());
        seen.extend(d);
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = child.wait().unwrap();
    let out =
        Output { status, stdout: std::fs::read(outlog.path()).unwrap(), stderr: std::fs::read(errlog.path()).unwrap() };
    assert_eq!(out.status.code(), Some(124), "{}", describe(&out));
    // The bomb did push against the limit (busybox says so), and the host
    // never saw more of the sandbox's tasks than the limit allows (plus
    // cordon's own helpers outside the sandbox's cgroup).
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("can't fork"), "the bomb never hit the limit: {}", describe(&out));
    assert!(most <= LIMIT + 4, "{most} tasks under cordon with --pids {LIMIT}: {}", describe(&out));
    for t in seen {
        assert!(!task_alive(t), "process {} of the sandbox outlived cordon", t.0);
    }
}

// ---------------------------------------------------- devices and sockets

/// Host endpoints a sandbox must not reach: a unix socket in /tmp and one
/// in /run, an abstract unix socket, a TCP listener on loopback.
struct HostSockets {
    _dir: tempfile::TempDir,
    _run: Planted,
    _listeners: (
        std::os::unix::net::UnixListener,
        std::os::unix::net::UnixListener,
        std::os::unix::net::UnixListener,
        std::net::TcpListener,
    ),
    checks: Vec<String>,
}

fn host_sockets() -> HostSockets {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixListener};
    let dir = tempfile::Builder::new().prefix("cordon-nsiso-").tempdir().unwrap();
    let tmp_sock = dir.path().join("host.sock");
    let run = Planted::dir_with_secret("/run", "cordon-nsiso");
    let run_sock = run.0.join("host.sock");
    let abstract_name = format!("cordon-nsiso-{}", unique());
    let l1 = UnixListener::bind(&tmp_sock).unwrap();
    let l2 = UnixListener::bind(&run_sock).unwrap();
    let l3 = UnixListener::bind_addr(&SocketAddr::from_abstract_name(abstract_name.as_bytes()).unwrap()).unwrap();
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let checks = vec![
        format!("unix={}", tmp_sock.display()),
        format!("unix={}", run_sock.display()),
        format!("abstract={abstract_name}"),
        format!("tcp={}", tcp.local_addr().unwrap()),
    ];
    HostSockets { _dir: dir, _run: run, _listeners: (l1, l2, l3, tcp), checks }
}

fn check_devices_and_sockets(rootfs: &str) {
    require_root();
    let socks = host_sockets();
    let ws = ns_probe::workspace();
    let probe = ws.path().join("probe");
    let mut denied: Vec<&str> = vec!["open=/dev/kvm", "open=/dev/net/tun", "mknod=/tmp/tun", "packet", "vsock"];
    denied.extend(socks.checks.iter().map(String::as_str));
    let controls = ["open=/dev/null", "open=/dev/urandom", "tcp_self"];
    let checks: Vec<&str> = denied.iter().chain(&controls).copied().collect();

    // The host reaches every one of them (mknod in a temp dir of its own).
    let mknod_here = format!("mknod={}", socks._dir.path().join("tun").display());
    let mut host_checks: Vec<&str> = denied.iter().copied().filter(|c| !c.starts_with("mknod=")).collect();
    host_checks.push(&mknod_here);
    let host = ns_probe::on_host(&probe, &host_checks);
    for c in host_checks.iter().filter(|c| **c != "vsock") {
        assert_host_ok(&host, c);
    }

    let (out, v) = run_probe(ws.path(), &["--rootfs", rootfs, "--net", "none"], &checks);
    for c in controls {
        assert_ok(&v, &out, c);
    }
    for c in denied {
        assert_fails(&v, &out, c);
    }
    // Creating the device node itself is refused outright.
    assert_denied(&v, &out, "mknod=/tmp/tun", &[EPERM]);
    assert_denied(&v, &out, "packet", &[EPERM]);
    assert_denied(&v, &out, "vsock", &[EPERM]);
}

#[test]
fn test_ns_devices_and_host_sockets_unreachable_image_rootfs() {
    check_devices_and_sockets("image");
}

#[test]
fn test_ns_devices_and_host_sockets_unreachable_host_rootfs() {
    check_devices_and_sockets("host");
}

#[test]
fn test_ns_host_sockets_unreachable_with_net_full() {
    // With a tap and the gate (root only), the sandbox's network namespace is
    // another one, built before its user namespace: the host's unix and
    // abstract sockets stay out of reach, its loopback is the sandbox's own,
    // and the host's loopback service behind the gateway is refused by the
    // gate unless a rule names it (the control: `--allow host:PORT`).
    require_root();
    let socks = host_sockets();
    let ws = ns_probe::workspace();
    let tcp = socks.checks.iter().find(|c| c.starts_with("tcp=")).expect("a tcp listener");
    let port = tcp.rsplit(':').next().expect("HOST:PORT");
    let via_gateway = format!("tcp={}:{port}", cordon::netfilter::GATEWAY_V4);
    let mut checks: Vec<&str> = socks.checks.iter().map(String::as_str).collect();
    checks.extend(["open=/dev/net/tun", "tcp_self", via_gateway.as_str()]);
    let host =
        ns_probe::on_host(&ws.path().join("probe"), &socks.checks.iter().map(String::as_str).collect::<Vec<_>>());
    for c in &socks.checks {
        assert_host_ok(&host, c);
    }

    let (out, v) = run_probe(ws.path(), &["--net", "full"], &checks);
    assert!(String::from_utf8_lossy(&out.stderr).contains("gate"), "not gated: {}", describe(&out));
    assert_ok(&v, &out, "tcp_self");
    for c in &socks.checks {
        assert_fails(&v, &out, c);
    }
    assert_fails(&v, &out, "open=/dev/net/tun");
    assert_fails(&v, &out, &via_gateway);

    let allow = format!("host:{port}");
    let (out, v) = run_probe(ws.path(), &["--allow", &allow], &[&via_gateway]);
    assert_ok(&v, &out, &via_gateway);
}

#[test]
fn test_ns_agent_out_of_reach_of_steps() {
    // PID 1 (the agent, same uid as the step) holds the control channel: a
    // step reads neither its memory, its environment (the session token)
    // nor its descriptors through /proc. The controls: the same files of
    // the step's own process, and the agent's entry in /proc is there.
    let ws = ns_probe::workspace();
    let denied =
        ["openro=/proc/1/mem", "openw=/proc/1/mem", "read=/proc/1/environ", "openro=/proc/1/fd/3", "read=/proc/1/maps"];
    let controls = ["openro=/proc/self/mem", "read=/proc/self/environ", "read=/proc/self/maps", "read=/proc/1/cmdline"];
    let checks: Vec<&str> = denied.iter().chain(&controls).copied().collect();
    let (out, v) = run_probe(ws.path(), &[], &checks);
    for c in controls {
        assert_ok(&v, &out, c);
    }
    for c in denied {
        assert_fails(&v, &out, c);
    }
}

// --------------------------------------------------------- --rootfs host

#[test]
fn test_ns_rootfs_host_hides_callers_credentials() {
    require_root();
    // A caller's HOME where homes live, with the usual credentials.
    let home = Planted::dir_with_secret("/home", "cordon-nsiso-home");
    let creds =
        [".ssh/id_ed25519", ".aws/credentials", ".config/gcloud/credentials.db", ".docker/config.json", ".kube/config"];
    for c in creds {
        let p = home.0.join(c);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, "secret\n").unwrap();
    }
    let ws = ns_probe::workspace();
    let probe = ws.path().join("probe");
    let mut checks: Vec<String> = creds.iter().map(|c| format!("exists={}/{c}", home.0.display())).collect();
    checks.push(format!("exists={}", home.0.display()));
    // root's own, when this host has them.
    for d in [".ssh", ".aws"] {
        if Path::new("/root").join(d).exists() {
            checks.push(format!("exists=/root/{d}"));
        }
    }
    let hidden: Vec<&str> = checks.iter().map(String::as_str).collect();
    let host = ns_probe::on_host(&probe, &hidden);
    for c in &hidden {
        assert_host_ok(&host, c);
    }

    let tools = ["openro=/usr/bin/env", "openro=/bin/sh", "read=/etc/passwd", "exists=/usr/lib"];
    let mut all = hidden.clone();
    all.extend(tools);
    all.extend(["exists=/root", "exists=/home", "read=/etc/shadow"]);
    let mut cmd = cordon();
    cmd.env("HOME", &home.0);
    let (out, v) = run_probe_with(cmd, ws.path(), &["--rootfs", "host"], &all);
    for c in &hidden {
        assert_fails(&v, &out, c);
    }
    assert_fails(&v, &out, "exists=/root");
    assert_fails(&v, &out, "exists=/home");
    assert!(matches!(v.get("read=/etc/shadow"), Some(Verdict::Ok(0)) | Some(Verdict::Err(_))), "{}", describe(&out));
    // The host's tools are there, and /etc is the host's.
    for c in tools {
        assert_ok(&v, &out, c);
    }
    let passwd = std::fs::metadata("/etc/passwd").unwrap().len() as i64;
    assert_eq!(assert_ok(&v, &out, "read=/etc/passwd"), passwd, "{}", describe(&out));
    // And a host tool runs (dynamically linked, from the host's /usr), with
    // none of the caller's environment: neither HOME nor a secret in it.
    let out = cordon()
        .env("HOME", &home.0)
        .env("AWS_SECRET_ACCESS_KEY", "cordon-nsiso-env-secret")
        .args(["run", "--isolation", "namespace", "--rootfs", "host", "--", "/usr/bin/env"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let env = String::from_utf8_lossy(&out.stdout);
    assert!(
        !env.contains(&home.0.display().to_string()),
        "the caller's HOME leaked into the step's environment: {env}"
    );
    assert!(!env.contains("cordon-nsiso-env-secret"), "the caller's environment leaked into the step: {env}");
    assert!(env.contains("PATH="), "the control: the step has an environment of its own: {env}");
}

// -------------------------------------------------------------- non-root

const NOBODY: u32 = 65534;

/// A home and an image cache an unprivileged user can use: the root's cache
/// hard-linked (same files, no copy; the directories are new and belong to
/// the user, so it could build or unpack what is missing there).
struct NobodyEnv {
    home: tempfile::TempDir,
}

impl NobodyEnv {
    fn new() -> NobodyEnv {
        require_root();
        // The root's cache holds the current image and its unpacked rootfs.
        let warm = cordon().args(["run", "--isolation", "namespace", "--", "true"]).output().unwrap();
        assert_eq!(warm.status.code(), Some(0), "warming the image cache: {}", describe(&warm));
        let home = tempfile::Builder::new().prefix("cordon-nsiso-nobody-").tempdir().unwrap();
        let cache = home.path().join("cache").join("cordon");
        std::fs::create_dir_all(&cache).unwrap();
        let src = cordon::image::cache_dir();
        let st = Command::new("cp")
            .arg("-al")
            .arg(src.join("kernels"))
            .arg(src.join("images"))
            .arg(&cache)
            .status()
            .unwrap();
        assert!(st.success(), "cp -al of {} failed", src.display());
        let mut dirs = vec![home.path().to_path_buf(), home.path().join("cache"), cache.clone(), cache.join("images")];
        dirs.extend(std::fs::read_dir(cache.join("images")).unwrap().flatten().map(|e| e.path()));
        for d in dirs {
            // Directories only: every file is a hard link to root's cache.
            std::os::unix::fs::chown(&d, Some(NOBODY), Some(NOBODY)).unwrap();
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        for bin in [cordon_bin(), static_agent_bin()] {
            let out = Command::new("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups", "test", "-x"])
                .arg(&bin)
                .status()
                .unwrap();
            assert!(out.success(), "{} is not executable by uid 65534", bin.display());
        }
        NobodyEnv { home }
    }

    /// cordon as uid/gid 65534, no supplementary groups, a clean environment.
    fn cordon(&self) -> Command {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]).arg(cordon_bin());
        c.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", self.home.path())
            .env("XDG_CACHE_HOME", self.home.path().join("cache"))
            .env("CORDON_AGENT", static_agent_bin())
            .current_dir(self.home.path())
            .stdin(Stdio::null());
        c
    }
}

#[test]
fn test_ns_non_root_net_none_runs_confined() {
    let env = NobodyEnv::new();
    let ws = ns_probe::workspace();
    let checks = [
        "getpid",
        "create=/workspace/ok",
        "create=/tmp/ok",
        "tcp_self",
        "create=/etc/cordon-nsiso",
        "openw=/proc/self/comm",
        "ptrace",
        "unshare=user",
        "mount=/workspace",
        "io_uring",
        "open=/dev/net/tun",
    ];
    for (net, rootfs) in [("none", "image"), ("off", "image"), ("none", "host")] {
        let extra = ["--net", net, "--rootfs", rootfs];
        let (out, v) = run_probe_with(env.cordon(), ws.path(), &extra, &checks);
        for c in ["getpid", "create=/workspace/ok", "create=/tmp/ok", "tcp_self"] {
            assert_ok(&v, &out, c);
        }
        for c in ["create=/etc/cordon-nsiso", "openw=/proc/self/comm", "open=/dev/net/tun"] {
            assert_fails(&v, &out, c);
        }
        for c in ["ptrace", "unshare=user", "mount=/workspace", "io_uring"] {
            assert_denied(&v, &out, c, &[EPERM, ENOSYS]);
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("65534"), "the first line does not say the sandbox maps to the caller's uid: {err}");
    }
}

#[test]
fn test_ns_non_root_pids_limit_enforced_or_reported() {
    // As a normal user on cgroup v1 (this host) no pids cgroup can be made:
    // `--pids` must then hold some other way or be reported as not
    // enforced on the run's first line (and `--strict` refuses to run).
    let env = NobodyEnv::new();
    let ws = ns_probe::workspace();
    let (out, v) = run_probe_with(env.cordon(), ws.path(), &["--pids", "50"], &["forks=100"]);
    let err = String::from_utf8_lossy(&out.stderr);
    let reported = err.lines().next().is_some_and(|l| l.contains("cgroup-pids: NOT ENFORCED"));
    match ns_probe::get(&v, "forks=100", &describe(&out)) {
        Verdict::Err(libc::EAGAIN) => {}
        Verdict::Ok(_) => assert!(reported, "100 tasks under --pids 50 and no word of it: {}", describe(&out)),
        other => panic!("forks=100 gave {other:?}: {}", describe(&out)),
    }
    if reported {
        let mut strict = env.cordon();
        strict.args(["run", "--isolation", "namespace", "--strict", "--pids", "50", "--", "echo", "ran"]);
        let out = strict.output().unwrap();
        assert_ne!(out.status.code(), Some(0), "--strict ran without a pids limit: {}", describe(&out));
        assert!(out.stdout.is_empty(), "{}", describe(&out));
    }
}

#[test]
fn test_ns_non_root_rules_fail_closed() {
    let env = NobodyEnv::new();
    // The control: the same user, the same command, --net none: it runs.
    let out =
        env.cordon().args(["run", "--isolation", "namespace", "--net", "none", "--", "echo", "ran"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ran\n");
    for policy in [&["--allow", "127.0.0.1:1"][..], &["--deny", "10.0.0.0/8"], &["--net", "full"]] {
        let out = env
            .cordon()
            .args(["run", "--isolation", "namespace"])
            .args(policy)
            .args(["--", "echo", "ran"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(125), "{policy:?} as a normal user: {}", describe(&out));
        assert!(out.stdout.is_empty(), "the step ran although its policy cannot be enforced: {}", describe(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("cannot be enforced") && err.contains("--net none"),
            "{policy:?}: the refusal does not say why or what to do instead: {err}"
        );
        assert!(
            err.contains("normal user") || err.contains("/dev/net/tun"),
            "{policy:?}: the refusal does not name the tap device or the user: {err}"
        );
    }
}
