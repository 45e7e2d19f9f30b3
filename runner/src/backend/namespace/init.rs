//! `cordon __ns-init`: the child cordon spawns to build a namespace sandbox.
//! Single-threaded, before any runtime, because unshare(CLONE_NEWUSER)
//! demands it. Its steps, each answered over the sync socket (fd 4):
//!
//! 1. as root, at once: the sandbox's network namespace, owned by the host's
//!    user namespace (so the sandbox's root has no CAP_NET_ADMIN or
//!    CAP_NET_RAW over it), its loopback up; this runs while cordon makes
//!    the run's directory;
//! 2. read the Spec;
//! 3. with a tap (root only): the tap created and configured in that
//!    namespace, its fd sent to cordon for the gate;
//! 4. open the host paths it will bind (the mapped root cannot walk the
//!    host's 0700 directories); cordon makes the cgroups meanwhile;
//! 5. read the `Cgroups`; join the sandbox's v1 cgroups and open its v2 one
//!    (`cgjoin`);
//! 6. fork the child into new user, mount, PID, IPC and UTS namespaces
//!    (and, for a normal user, a network namespace with loopback only),
//!    into the v2 cgroup, and write its id maps from out here (as root,
//!    any range; as a normal user, its own ids): no round trip to cordon.
//!    The child is PID 1, in a cgroup namespace of its own, builds the root
//!    (`sys::setup_root`), confines itself (`confine::apply`) and becomes
//!    the agent, serving the protocol on fd 3. This process takes the
//!    sandbox's host ids (as root) and waits for it, and exits with its
//!    status; both die with cordon (PR_SET_PDEATHSIG).

use nix::sched::CloneFlags;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use super::sys::{self, RootPlan};
use cordon_protocol::boot;

/// Where the agent spools incoming archives in the sandbox (a host dir).
pub const SPOOL: &str = "/.cordon-spool";
/// The control connection's fd in the sandbox (the agent serves it).
pub const CONTROL_FD: i32 = 3;
/// The sync socket's fd in ns-init.
pub const SYNC_FD: i32 = 4;

/// What cordon asks ns-init to build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// The image's rootfs, or `None` for `--rootfs host`.
    pub image_root: Option<PathBuf>,
    pub workspace: PathBuf,
    /// A host directory of cordon's bound at /.cordon-spool, where the
    /// agent spools incoming archives (on disk, not in the sandbox's
    /// memory); none when the run uploads no workspace (the agent's spool
    /// is then the sandbox's /tmp).
    pub spool: Option<PathBuf>,
    /// The image's static busybox, for `ip` while configuring the tap.
    pub busybox: PathBuf,
    pub resolv: Option<PathBuf>,
    /// The tap's configuration (the guest's cordon.net spec), when the gate runs.
    pub tap: Option<String>,
    pub hostname: String,
    /// An empty directory where the new root is assembled.
    pub stage: PathBuf,
    /// Size of the sandbox's /tmp and /dev/shm.
    pub tmpfs_bytes: u64,
    pub token: String,
    pub allow_raw_sockets: bool,
    /// The gid range allowed unprivileged ICMP sockets in the tap's network
    /// namespace (its sysctl starts closed, "1 0").
    pub ping_gids: Option<(u32, u32)>,
    /// The host ids the sandbox's ids 0.. map to.
    pub ids: IdMap,
}

/// The sandbox's id maps: its 0 is host `uid`/`gid`, `len` ids in a row
/// (as root 65536 unused ones; as a normal user, just its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdMap {
    pub uid: u32,
    pub gid: u32,
    pub len: u32,
}

impl IdMap {
    /// Writes the maps of `pid`'s user namespace, from its parent namespace.
    /// A normal user may map only its own ids, after denying setgroups.
    fn write(&self, pid: nix::unistd::Pid, root: bool) -> std::io::Result<()> {
        let p = |f: &str| PathBuf::from(format!("/proc/{pid}/{f}"));
        if !root {
            std::fs::write(p("setgroups"), "deny")?;
        }
        std::fs::write(p("uid_map"), format!("0 {} {}\n", self.uid, self.len))?;
        std::fs::write(p("gid_map"), format!("0 {} {}\n", self.gid, self.len))
    }
}

/// cordon's second message: the sandbox's cgroups, made while ns-init
/// builds the network namespace and binds the root.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cgroups {
    /// Its directories in v1 hierarchies (ns-init joins them).
    pub v1: Vec<PathBuf>,
    /// Its v2 directory (PID 1 starts in it).
    pub v2: Option<PathBuf>,
    /// The pids limit as RLIMIT_NPROC, when no pids cgroup holds it.
    pub nproc_max: Option<u64>,
}

/// Messages from ns-init to cordon, one JSON line each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Report {
    /// The tap's fd rides along (SCM_RIGHTS).
    Tap,
    /// The layers PID 1 put in force, just before it became the agent.
    Confined {
        layers: Vec<super::confine::Layer>,
    },
    Failed {
        step: String,
        error: String,
    },
}

/// A message on the sync socket: one JSON line (spec, cgroups, reports).
pub fn line(m: &impl Serialize) -> Vec<u8> {
    let mut l = serde_json::to_vec(m).expect("sync messages serialize");
    l.push(b'\n');
    l
}

fn send(sync: &mut UnixStream, r: &Report) {
    let _ = sync.write_all(&line(r));
}

/// The next message from cordon, or the report of why it did not come.
fn receive<T: serde::de::DeserializeOwned>(sync: &mut UnixStream, pending: &mut Vec<u8>, step: &str) -> T {
    match read_line(sync, pending).map(|l| serde_json::from_slice(&l)) {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => fail(sync, step, e),
        Err(e) => fail(sync, step, e),
    }
}

fn fail(sync: &mut UnixStream, step: &str, e: impl std::fmt::Display) -> ! {
    send(sync, &Report::Failed { step: step.to_string(), error: e.to_string() });
    std::process::exit(1)
}

/// Reads one newline-terminated message; what came after it waits in
/// `pending` for the next call. Whole reads: byte-sized ones cost a system
/// call per byte of the spec.
fn read_line(sync: &mut UnixStream, pending: &mut Vec<u8>) -> std::io::Result<Vec<u8>> {
    loop {
        if let Some(i) = pending.iter().position(|b| *b == b'\n') {
            let mut line: Vec<u8> = pending.drain(..=i).collect();
            line.pop();
            return Ok(line);
        }
        if pending.len() > 1 << 20 {
            return Err(std::io::Error::other("message too long"));
        }
        let mut chunk = [0u8; 4096];
        let n = sync.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        pending.extend_from_slice(&chunk[..n]);
    }
}

/// Phase one of the root (see `sys::prepare_root`); as the host's root, in
/// a mount namespace of its own first (PID 1 of a normal user's sandbox
/// has one already).
fn prepare(sync: &mut UnixStream, plan: &RootPlan, own_ns: bool) {
    if own_ns {
        if let Err(e) = nix::sched::unshare(CloneFlags::CLONE_NEWNS) {
            fail(sync, "a mount namespace", e);
        }
    }
    if let Err(e) = sys::prepare_root(&mut sys::Real, plan) {
        fail(sync, "binding the sandbox's root", e);
    }
    // Phase two works relative to the new root (see `sys::finish_root`).
    if let Err(e) = nix::unistd::chdir(&sys::new_root(plan)) {
        fail(sync, "entering the sandbox's root", e);
    }
}

/// ns-init forked from cordon's `main` (prefork.rs) rather than exec'd:
/// it waits for its log and spec on the sync socket like an exec'd one.
pub struct Zygote {
    pub child: crate::prefork::Forked,
    /// cordon's ends of the control and sync sockets.
    pub control: UnixStream,
    pub sync: UnixStream,
}

/// The name a forked ns-init shows in /proc/PID/comm (the janitor's check
/// before it kills a tracked pid; see `procs::kill_if_named`).
pub const ZYGOTE_COMM: &std::ffi::CStr = c"cordon-ns-init";

impl Zygote {
    pub fn fork() -> std::io::Result<Zygote> {
        let (control, control_theirs) = UnixStream::pair()?;
        let (sync, sync_theirs) = UnixStream::pair()?;
        let fds = [(control_theirs.as_raw_fd(), CONTROL_FD), (sync_theirs.as_raw_fd(), SYNC_FD)];
        let child = crate::prefork::Forked::spawn(&fds, false, || {
            // SAFETY: prctl with a valid NUL-terminated name.
            unsafe { libc::prctl(libc::PR_SET_NAME, ZYGOTE_COMM.as_ptr()) };
            main()
        })?;
        Ok(Zygote { child, control, sync })
    }
}

/// cordon's first message on the sync socket: one byte, with ns-init's log
/// file as SCM_RIGHTS (a forked ns-init exists before the run's directory).
pub fn send_log(sync: &UnixStream, log: &std::fs::File) -> std::io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let fds = [log.as_raw_fd()];
    let iov = [std::io::IoSlice::new(b"L")];
    sendmsg::<()>(sync.as_raw_fd(), &iov, &[ControlMessage::ScmRights(&fds)], MsgFlags::empty(), None)?;
    Ok(())
}

/// Receives `send_log`'s file and makes it stdout and stderr. A single byte
/// is read, so nothing of the spec after it is taken.
fn recv_log(sync: &mut UnixStream) {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut byte = [0u8; 1];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let msg = match recvmsg::<()>(sync.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC) {
        Ok(m) if m.bytes == 1 => m,
        // cordon went away before the run began (or sent nothing usable).
        _ => std::process::exit(1),
    };
    let mut log = None;
    for c in msg.cmsgs().into_iter().flatten() {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for f in fds {
                // SAFETY: the kernel just gave us this descriptor.
                let owned = unsafe { OwnedFd::from_raw_fd(f) };
                log.get_or_insert(owned);
            }
        }
    }
    if let Some(log) = log {
        // SAFETY: dup2 onto stdout and stderr from a descriptor we own.
        unsafe {
            libc::dup2(log.as_raw_fd(), 1);
            libc::dup2(log.as_raw_fd(), 2);
        }
    }
}

/// The entry point of `cordon __ns-init`, and of a forked ns-init.
pub fn main() -> ! {
    // Only stdio, the control socket and the sync socket go on: a descriptor
    // cordon's launcher leaked (a socket of the host's network, a directory)
    // must never reach the sandbox.
    if !crate::procs::close_fds_from(SYNC_FD + 1, &[]) {
        std::process::exit(1);
    }
    // As the host's root still: ns-init (the sandbox's anchor outside it)
    // is never the OOM killer's pick; PID 1 goes back to 0 after the fork.
    let _ = std::fs::write("/proc/self/oom_score_adj", "-1000");
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() };
    // SAFETY: cordon passes the sync socket as fd 4; nothing else owns it.
    let mut sync = unsafe { UnixStream::from_raw_fd(SYNC_FD) };
    let root = nix::unistd::geteuid().is_root();
    // As the host's root, first: the network namespace (the costliest to
    // make) while cordon is still making the run's directory. Owned by the
    // host's user namespace, so the sandbox's root cannot reconfigure it;
    // loopback is brought up here for the same reason. A failure is
    // reported once cordon listens for reports (after the spec).
    let early_net = root.then(|| nix::sched::unshare(CloneFlags::CLONE_NEWNET).map(|()| super::tap::loopback_up()));
    recv_log(&mut sync);
    let mut pending = Vec::new();
    let spec: Spec = receive(&mut sync, &mut pending, "reading the spec");
    if let Some(Err(e)) = early_net {
        fail(&mut sync, "a network namespace", e);
    }
    if let Some(net) = &spec.tap {
        if early_net.is_none() {
            if let Err(e) = nix::sched::unshare(CloneFlags::CLONE_NEWNET) {
                fail(&mut sync, "a network namespace for the tap", e);
            }
        }
        let tap = match super::tap::create("tap0") {
            Ok(t) => t,
            Err(e) => fail(&mut sync, "creating the tap device", e),
        };
        if let Err(e) = super::tap::configure(&spec.busybox, "tap0", net) {
            fail(&mut sync, "configuring the tap device", e);
        }
        if let Some((lo, hi)) = spec.ping_gids {
            if let Err(e) = std::fs::write("/proc/sys/net/ipv4/ping_group_range", format!("{lo} {hi}")) {
                fail(&mut sync, "allowing ICMP sockets in the sandbox's network", e);
            }
        }
        send_fd(&mut sync, &Report::Tap, &tap);
        drop(tap);
    }
    let plan = RootPlan {
        image_root: spec.image_root.clone(),
        workspace: spec.workspace.clone(),
        spool: spec.spool.clone(),
        resolv: spec.resolv.clone(),
        hostname: spec.hostname.clone(),
        stage: spec.stage.clone(),
        tmpfs_bytes: spec.tmpfs_bytes,
    };
    if root {
        // Binds as the host's root, in a mount namespace of its own, before the
        // user namespace: its mapped root could not walk the host's 0700 paths.
        prepare(&mut sync, &plan, true);
    }
    let cgroups: Cgroups = receive(&mut sync, &mut pending, "reading the cgroups");
    // The cgroups as the host's user that owns them, before the user
    // namespace: the sandbox's own processes are all made after this.
    let cgroup_parents = match super::cgjoin::join_v1(&cgroups.v1) {
        Ok(p) => p,
        Err(e) => fail(&mut sync, "moving the sandbox into its cgroup", e),
    };
    let cgroup_v2 = match cgroups.v2.as_deref().map(super::cgjoin::open_v2).transpose() {
        Ok(fd) => fd,
        Err(e) => fail(&mut sync, "opening the sandbox's cgroup", e),
    };
    // The child's namespaces all at once: the kernel makes the user
    // namespace first and gives it the others. Its mount namespace is a copy
    // of this one (as root, with the root bound above: locked there, as in
    // any copy a user namespace gets); a normal user's sandbox gets its
    // network namespace here too (loopback only).
    let mut flags = CloneFlags::CLONE_NEWUSER
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS;
    if early_net.is_none() && spec.tap.is_none() {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    // PID 1 waits on this pipe for its id maps (one byte); end-of-file
    // instead says ns-init died (getppid says 0 across the PID namespace).
    // ns-init holds the writer until it exits.
    let maps = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => fail(&mut sync, "a pipe for PID 1", e),
    };
    // Still the host's user that owns the cgroup: CLONE_INTO_CGROUP checks it.
    match super::cgjoin::clone_into(flags, cgroup_v2.as_ref()) {
        Ok(super::cgjoin::Forked::Parent(child)) => {
            drop((maps.0, cgroup_v2));
            if let Err(e) = spec.ids.write(child, root) {
                let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(child, None);
                fail(&mut sync, "writing the sandbox's id maps", e);
            }
            // Held open until this process exits (PID 1's end-of-file check).
            let writer = maps.1;
            if nix::unistd::write(&writer, b"m") != Ok(1) {
                fail(&mut sync, "starting the sandbox's init", "the pipe to PID 1 broke");
            }
            // PID 1 holds the sandbox's cgroups from now on.
            super::cgjoin::leave_v1(cgroup_parents);
            if root {
                take_sandbox_ids(&mut sync, &spec.ids, parent);
            }
            let code = match nix::sys::wait::waitpid(child, None) {
                Ok(nix::sys::wait::WaitStatus::Exited(_, c)) => c,
                Ok(nix::sys::wait::WaitStatus::Signaled(_, s, _)) => 128 + s as i32,
                _ => 1,
            };
            // End-of-file on the sync socket: PID 1 is reaped, and with it
            // every process of the sandbox (the kernel reaped the PID
            // namespace first). cordon starts its cleanup while this
            // process's own exit (its mount namespace) runs.
            drop(sync);
            std::process::exit(code)
        }
        Ok(super::cgjoin::Forked::Child) => {}
        Err(e) => fail(&mut sync, "forking the sandbox's init", e),
    }
    drop((maps.1, cgroup_v2, cgroup_parents));
    let mut b = [0u8; 1];
    if !matches!(nix::unistd::read(&maps.0, &mut b), Ok(1)) {
        // SAFETY: _exit has no preconditions.
        unsafe { libc::_exit(1) };
    }
    set_root_ids(&mut sync);
    // SAFETY: prctl with an integer argument.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    // ns-init died between the byte and the death signal: end-of-file now.
    let _ = nix::fcntl::fcntl(&maps.0, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK));
    if matches!(nix::unistd::read(&maps.0, &mut b), Ok(0)) {
        // SAFETY: _exit has no preconditions.
        unsafe { libc::_exit(1) };
    }
    drop(maps.0);
    if !root {
        prepare(&mut sync, &plan, false);
    }
    // Rooted at the sandbox's cgroup, now that this process is in it.
    if let Err(e) = nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP) {
        fail(&mut sync, "a cgroup namespace", e);
    }
    // PID 1 of the sandbox from here on: back within the OOM killer's reach
    // (raising the score needs no privilege), like everything it starts.
    let _ = std::fs::write("/proc/self/oom_score_adj", "0");
    if early_net.is_none() && spec.tap.is_none() {
        // A normal user's network namespace is the sandbox's user
        // namespace's: loopback comes up from in here.
        crate::backend::namespace::tap::loopback_up();
    }
    if let Err(e) = sys::finish_root(&mut sys::Real, &plan) {
        fail(&mut sync, "building the sandbox's root", e);
    }
    let confine = super::confine::ConfineSpec {
        // /dev gets device-only rights (confine.rs); /dev/shm is a real tmpfs
        // (POSIX semaphores, Python's multiprocessing locks).
        writable: ["/workspace", SPOOL, "/tmp", "/run", "/dev", "/dev/shm"]
            .iter()
            .filter(|p| spec.spool.is_some() || **p != SPOOL)
            .map(PathBuf::from)
            .collect(),
        allow_raw_sockets: spec.allow_raw_sockets,
        nproc_max: cgroups.nproc_max,
    };
    let spool = if spec.spool.is_some() { SPOOL } else { "/tmp" };
    let layers = match super::confine::apply(&confine) {
        Ok(l) => l,
        Err(e) => fail(&mut sync, "confining the sandbox", e),
    };
    send(&mut sync, &Report::Confined { layers });
    drop(sync);
    become_agent(spool, spec.token)
}

/// As root, once PID 1 runs: this process waits on as the sandbox's root's
/// host ids, never as the host's root; then the death signal again (a
/// credential change clears it), and gone if cordon already is.
fn take_sandbox_ids(sync: &mut UnixStream, ids: &IdMap, parent: libc::pid_t) {
    use nix::unistd::{Gid, Uid};
    let _ = nix::unistd::setgroups(&[]);
    let (gid, uid) = (Gid::from_raw(ids.gid), Uid::from_raw(ids.uid));
    if let Err(e) = nix::unistd::setresgid(gid, gid, gid) {
        fail(sync, "taking the sandbox's ids (gid)", e);
    }
    if let Err(e) = nix::unistd::setresuid(uid, uid, uid) {
        fail(sync, "taking the sandbox's ids (uid)", e);
    }
    // SAFETY: prctl and getppid with integer arguments.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if libc::getppid() != parent {
            libc::_exit(1);
        }
    }
}

/// Root (0) inside the new user namespace, with no supplementary host groups
/// where the maps allow dropping them.
fn set_root_ids(sync: &mut UnixStream) {
    let _ = nix::unistd::setgroups(&[]);
    let root = (nix::unistd::Gid::from_raw(0), nix::unistd::Uid::from_raw(0));
    if let Err(e) = nix::unistd::setresgid(root.0, root.0, root.0) {
        fail(sync, "becoming the sandbox's root (gid)", e);
    }
    if let Err(e) = nix::unistd::setresuid(root.1, root.1, root.1) {
        fail(sync, "becoming the sandbox's root (uid)", e);
    }
}

/// PID 1 becomes the agent: the same server the VM's agent binary runs
/// (the `cordon-agent` library), in this process, with no exec. What the
/// steps can learn of this process is what an exec'd agent showed: the name
/// `init`, the command line `cordon-agent` (cordon's, with its host paths,
/// is zeroed where it lies; the environment was at the fork, prefork.rs),
/// the agent's
/// environment, and a process they cannot read or trace (not dumpable).
fn become_agent(spool: &str, token: String) -> ! {
    // SAFETY: prctl with a valid NUL-terminated name.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"init".as_ptr()) };
    zero_command_line();
    // Single-threaded: nothing reads the environment meanwhile.
    for (k, _) in std::env::vars_os() {
        std::env::remove_var(k);
    }
    std::env::set_var("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    std::env::set_var(boot::MODE_ENV, boot::MODE_NAMESPACE);
    std::env::set_var("CORDON_AGENT_LOG", "warn");
    cordon_agent::namespace_main(CONTROL_FD, token, PathBuf::from(spool))
}

/// Replaces this process's command line by `cordon-agent`, zeroing cordon's
/// where the kernel shows it from
/// (/proc/self/cmdline reads the memory between arg_start and arg_end,
/// fields 48 and 49 of /proc/self/stat, for anyone who can see the pid).
fn zero_command_line() {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return };
    let Some((_, rest)) = stat.rsplit_once(')') else { return };
    // Fields from the 3rd (state) on: arg_start is the 48th field.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let (Some(Ok(start)), Some(Ok(end))) =
        (f.get(45).map(|s| s.parse::<usize>()), f.get(46).map(|s| s.parse::<usize>()))
    else {
        return;
    };
    if start != 0 && end > start && end - start < 1 << 20 {
        // What ps shows for the VM's agent, where it fits (cordon's own
        // command line, `cordon run ...`, always leaves room).
        let name = b"cordon-agent";
        // SAFETY: [arg_start, arg_end) is this process's own argument area on
        // its initial stack, mapped and writable; nothing reads argv again.
        unsafe {
            std::ptr::write_bytes(start as *mut u8, 0, end - start);
            if end - start > name.len() {
                std::ptr::copy_nonoverlapping(name.as_ptr(), start as *mut u8, name.len());
            }
        }
    }
}

fn send_fd(sync: &mut UnixStream, r: &Report, fd: &OwnedFd) {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let line = line(r);
    let fds = [fd.as_raw_fd()];
    let iov = [std::io::IoSlice::new(&line)];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    if let Err(e) = sendmsg::<()>(sync.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None) {
        fail(sync, "sending the tap to cordon", e);
    }
}
