//! The namespace backend: the same agent and protocol as the VM, as PID 1 of
//! new user, mount, PID, network, IPC, UTS and cgroup namespaces, confined
//! with no_new_privs, no capabilities, seccomp and Landlock, in a cgroup of
//! its own, on a read-only root (the image's rootfs, or the host's /usr,
//! /bin, /lib*, /etc with `--rootfs host`). The network policy is the VM's:
//! a tap inside the sandbox's network namespace whose frames the same gate
//! judges before passt. ns-init (init.rs) builds it; this side answers its
//! reports, wires the gate and connects to the agent.

pub mod cgjoin;
pub mod cgroup;
pub mod confine;
pub mod init;
pub mod layers;
pub mod sys;
pub mod tap;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use super::{find_agent, new_token, BackendError, Sandbox};
use crate::agent::AgentClient;
use crate::janitor::Janitor;
use crate::plan::{Plan, RootfsChoice};
use crate::prefork::Prefork;
use confine::Layer;
use init::{Report, Spec};

/// The sandbox's id range when cordon runs as root: 65536 ids from a random
/// multiple of 65536 in [0x7000_0000, 0x8000_0000), never host root, and
/// (with high probability) not another sandbox's.
fn root_map_base() -> u32 {
    let r = u32::from_str_radix(&new_token()[..4], 16).unwrap_or(0) % 4096;
    0x7000_0000 + r * 0x1_0000
}

/// Whether this process can open /dev/net/tun (root here; a normal user's
/// user namespace cannot: the node is 0600 root).
pub fn tun_usable() -> Result<(), String> {
    use nix::unistd::{access, AccessFlags};
    if !nix::unistd::geteuid().is_root() {
        return Err("the namespace backend creates its tap device as root, and cordon runs as a normal user".into());
    }
    access("/dev/net/tun", AccessFlags::R_OK | AccessFlags::W_OK).map_err(|e| format!("/dev/net/tun: {e}"))
}

/// ns-init: forked early (prefork.rs), or spawned by exec.
enum InitProc {
    Forked(crate::prefork::Forked),
    Spawned(tokio::process::Child),
}

impl InitProc {
    fn kill(&mut self) {
        match self {
            InitProc::Forked(c) => c.kill(),
            InitProc::Spawned(c) => {
                let _ = c.start_kill();
            }
        }
    }

    fn wait_exit(&mut self, limit: Duration) -> bool {
        match self {
            InitProc::Forked(c) => c.wait_exit(limit),
            InitProc::Spawned(c) => crate::procs::wait_exit(c, limit),
        }
    }

    fn id(&self) -> Option<u32> {
        match self {
            InitProc::Forked(c) => Some(c.id()),
            InitProc::Spawned(c) => c.id(),
        }
    }
}

struct Guard {
    init: Option<InitProc>,
    /// cordon's end of the sync socket: end-of-file once ns-init has reaped
    /// PID 1 (the whole sandbox is gone).
    sync: Option<UnixStream>,
    link: Option<crate::netfilter::gated::GatedLink>,
    tap_pump: Option<tokio::task::JoinHandle<()>>,
    cgroup: Option<cgroup::SandboxCgroup>,
    dir: Option<tempfile::TempDir>,
    /// ns-init's and the agent's stdout and stderr (a memfd).
    log: Option<std::fs::File>,
    janitor: Option<Janitor>,
    /// Keeps the userland image from being removed while the sandbox runs.
    _image: Option<crate::image::userland::InUse>,
    /// The agent acknowledged Shutdown: PID 1 is exiting by itself.
    acked: bool,
}

impl super::SandboxGuard for Guard {
    fn shutdown_acked(&mut self) {
        self.acked = true;
    }

    fn oom_kills(&self) -> Option<u64> {
        self.cgroup.as_ref().map(|c| c.oom_kills())
    }

    fn diagnostics(&self) -> String {
        self.log.as_ref().map(|f| crate::backend::vm::console::open_file_tail(f, 20)).unwrap_or_default()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        // ns-init's death takes PID 1 with it (PR_SET_PDEATHSIG), and with PID
        // 1 the whole PID namespace; the cgroup catches anything in between.
        // After an acknowledged Shutdown PID 1 exits by itself, and ns-init
        // exits once it has reaped it, which is after the kernel reaped
        // every other process of the PID namespace: then the cgroup is
        // already empty, and its removal needs no polling. Killing ns-init
        // first would leave PID 1 still dying while the cgroup is polled.
        // ns-init closes the sync socket once it has reaped PID 1, before its
        // own (slower) exit: the cleanup below overlaps that, and ns-init is
        // reaped at the end.
        let mut init = self.init.take();
        let sandbox_gone = self.acked && self.sync.take().is_some_and(|s| wait_eof(&s, Duration::from_secs(1)));
        if !sandbox_gone {
            if let Some(c) = init.as_mut() {
                if !(self.acked && c.wait_exit(Duration::from_secs(1))) {
                    c.kill();
                }
                c.wait_exit(Duration::from_secs(2));
            }
        }
        if let Some(t) = self.tap_pump.take() {
            t.abort();
        }
        // passt is reaped here: every helper is, from now on.
        drop(self.link.take());
        // The janitor removes the directory while the cgroup goes, once
        // nothing of the sandbox can write into it any more: at once when
        // ns-init said PID 1 is reaped, else after the cgroup is emptied.
        let hand_over = |j: &mut Option<Janitor>, d: &mut Option<tempfile::TempDir>| {
            if let (Some(j), Some(d)) = (j.as_mut(), d.as_mut()) {
                if j.finish() {
                    d.disable_cleanup(true);
                }
            }
        };
        if sandbox_gone {
            hand_over(&mut self.janitor, &mut self.dir);
        }
        // Dropping the cgroup kills what is left in it, waits for it to
        // empty and removes it.
        drop(self.cgroup.take());
        if !sandbox_gone {
            hand_over(&mut self.janitor, &mut self.dir);
        }
        drop(self.dir.take());
        if let Some(mut c) = init {
            if !c.wait_exit(Duration::from_secs(1)) {
                c.kill();
                c.wait_exit(Duration::from_secs(2));
            }
        }
        drop(self.janitor.take());
    }
}

fn spawn_err(what: &str) -> impl Fn(std::io::Error) -> BackendError + '_ {
    move |source| BackendError::Spawn { what: what.to_string(), source }
}

pub async fn start(plan: &Plan, pre: Prefork, log: &dyn Fn(&str)) -> Result<Sandbox, BackendError> {
    let root = nix::unistd::geteuid().is_root();
    if plan.gated() {
        // Fail closed: a policy other than off/none needs the tap and the gate.
        tun_usable().map_err(|why| {
            BackendError::PolicyUnenforceable(format!(
                "{why}; --net full and --allow/--deny rules need the tap device the gate reads (use --net none, or run as root, or use the VM)"
            ))
        })?;
    }
    let passt_bin = super::passt_for(plan)?;
    let agent = find_agent(plan.agent.as_deref())?;
    // Only the boot image's busybox and agent matter here, not its kernel.
    let rootfs = crate::image::default_rootfs(&agent, log).map_err(BackendError::Image)?;
    let progress = crate::image::progress::Progress::auto(plan.json, log);
    let userland = crate::image::userland::resolve(&plan.image, plan.no_build.as_deref(), &progress)
        .map_err(BackendError::Image)?;
    drop(progress);
    let image_hold = userland.as_ref().map(|u| u.hold()).transpose().map_err(BackendError::Image)?;

    let dir = tempfile::Builder::new()
        .prefix("cordon-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir()
        .map_err(spawn_err("temp dir"))?;
    let d = dir.path().to_path_buf();
    let janitor = Janitor::start_with(&d, pre.janitor).map_err(spawn_err("janitor"))?;
    let mut guard = Guard {
        init: None,
        sync: None,
        link: None,
        tap_pump: None,
        cgroup: None,
        dir: Some(dir),
        log: None,
        janitor: Some(janitor),
        _image: image_hold,
        acked: false,
    };
    let (uid_base, map_len) = if root { (root_map_base(), 0x1_0000) } else { (nix::unistd::getuid().as_raw(), 1) };
    let gid_base = if root { uid_base } else { nix::unistd::getgid().as_raw() };
    let ws = d.join("workspace");
    std::fs::create_dir(&ws).map_err(spawn_err("workspace dir"))?;
    if root {
        std::os::unix::fs::chown(&ws, Some(uid_base), Some(gid_base)).map_err(spawn_err("workspace dir"))?;
    }
    let resolv = if plan.gated() {
        let p = d.join("resolv.conf");
        std::fs::write(&p, format!("nameserver {}\n", crate::netfilter::DNS_V4)).map_err(spawn_err("resolv.conf"))?;
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .map_err(spawn_err("resolv.conf"))?;
        Some(p)
    } else {
        None
    };
    // Incoming archives are spooled on the host's disk, not in the
    // sandbox's memory-sized /run (a workspace may be larger).
    // Only a run that uploads a workspace sends archives in.
    let spool = plan.workspace.is_some().then(|| d.join("spool"));
    if let Some(spool) = &spool {
        std::fs::create_dir(spool).map_err(spawn_err("spool dir"))?;
        if root {
            std::os::unix::fs::chown(spool, Some(uid_base), Some(gid_base)).map_err(spawn_err("spool dir"))?;
        }
    }
    let stage = d.join("stage");
    std::fs::create_dir(&stage).map_err(spawn_err("stage dir"))?;
    let token = new_token();
    let spec = Spec {
        image_root: (plan.rootfs == RootfsChoice::Image)
            .then(|| userland.as_ref().map(|u| u.tree()).unwrap_or_else(|| rootfs.clone())),
        spool,
        workspace: ws,
        busybox: rootfs.join("bin/busybox"),
        resolv,
        tap: plan.gated().then(|| crate::netfilter::guest_net_spec().to_string()),
        hostname: "cordon".into(),
        stage,
        tmpfs_bytes: plan.step_memory_max,
        token: token.clone(),
        allow_raw_sockets: false,
        // ICMP echo through unprivileged ICMP sockets for the sandbox's ids
        // (no raw sockets there); the gate judges it like any flow.
        ping_gids: (root && plan.gated()).then_some((gid_base, gid_base + map_len - 1)),
        ids: init::IdMap { uid: uid_base, gid: gid_base, len: map_len },
    };

    // In memory, not in the run's directory: no disk write on the way.
    let logf = log_file().map_err(spawn_err("ns-init's log"))?;
    let (child, control_ours, mut sync_ours) = match pre.ns_init {
        Some(z) => (InitProc::Forked(z.child), z.control, z.sync),
        None => {
            let (control_ours, control_theirs) = UnixStream::pair().map_err(spawn_err("socketpair"))?;
            let (sync_ours, sync_theirs) = UnixStream::pair().map_err(spawn_err("socketpair"))?;
            let mut cmd = std::process::Command::new(crate::procs::SELF_EXE);
            cmd.arg("__ns-init").stdin(Stdio::null()).env_clear();
            cmd.stdout(logf.try_clone().map_err(spawn_err("ns-init's log"))?)
                .stderr(logf.try_clone().map_err(spawn_err("ns-init's log"))?);
            crate::procs::pass_fd(&mut cmd, control_theirs.as_raw_fd(), init::CONTROL_FD);
            crate::procs::pass_fd(&mut cmd, sync_theirs.as_raw_fd(), init::SYNC_FD);
            crate::procs::die_with_parent(&mut cmd);
            let mut cmd = tokio::process::Command::from(cmd);
            cmd.kill_on_drop(true);
            let child = cmd.spawn().map_err(spawn_err("cordon __ns-init"))?;
            (InitProc::Spawned(child), control_ours, sync_ours)
        }
    };
    if let (Some(j), Some(pid)) = (&guard.janitor, child.id()) {
        j.track(pid, "ns-init");
    }
    guard.init = Some(child);
    init::send_log(&sync_ours, &logf).map_err(spawn_err("ns-init"))?;
    guard.log = Some(logf);
    use std::io::Write;
    sync_ours.write_all(&init::line(&spec)).map_err(spawn_err("ns-init"))?;
    // ns-init binds the root while the cgroup is made; it joins the cgroup
    // itself (cgjoin.rs) once it has this second message.
    let limits = cgroup::Limits { pids_max: plan.pids_max, memory_max: plan.step_memory_max, cpus: plan.cpus };
    // Its own random name: cgroup paths are world-readable, the token is not.
    let (cg, layers) = cgroup::SandboxCgroup::create(&format!("cordon-{}", &new_token()[..12]), &limits);
    let nproc_max =
        (!layers.iter().any(|l| l.enforced && layers::canonical(&l.name) == "cgroup-pids")).then_some(plan.pids_max);
    let mut cgroups = init::Cgroups { nproc_max, ..Default::default() };
    if let Some(cg) = &cg {
        // For the janitor: a SIGKILLed cordon must not leave them behind.
        if let Some(j) = &guard.janitor {
            cg.dirs().iter().for_each(|p| j.track_cgroup(p));
        }
        cgroups.v1 = cg.v1_dirs();
        cgroups.v2 = cg.v2_dir().map(PathBuf::from);
    }
    guard.cgroup = cg;
    // A failed write is ns-init gone after a failure of its own: the
    // handshake reads its report.
    let _ = sync_ours.write_all(&init::line(&cgroups));
    let handshake = handshake(&mut sync_ours);
    let (tap, confined) = match handshake {
        Ok(x) => {
            guard.sync = Some(sync_ours);
            x
        }
        Err(why) => {
            let console = guard.log.as_ref().map(crate::backend::vm::console::open_file_all).unwrap_or_default();
            return Err(BackendError::Boot { why, console: crate::term::sanitize(console.trim()) });
        }
    };
    let mut all = core_layers(plan, root, uid_base);
    all.extend(confined);
    all.extend(layers);
    let layers = all;
    layers::check(&plan.required_layers, &layers)
        .map_err(|why| BackendError::Unavailable("namespace", format!("{why} (--require/--strict); nothing ran")))?;

    if let (Some(tap), Some(passt_bin)) = (tap, passt_bin) {
        let (link, guest_end) = super::gated_link(plan, &passt_bin, &d, guard.janitor.as_ref())?;
        guard.link = Some(link);
        guard.tap_pump = Some(crate::netfilter::tap::pump(tap, guest_end).map_err(spawn_err("tap relay"))?);
    }

    control_ours.set_nonblocking(true).map_err(spawn_err("socketpair"))?;
    let stream = tokio::net::UnixStream::from_std(control_ours).map_err(spawn_err("socketpair"))?;
    // The socketpair's other end is the agent's alone (PID 1 got it from
    // ns-init): Hello may go before Ready.
    let client = AgentClient::connect_with(stream, &token, Duration::from_secs(20), true)
        .await
        .map_err(BackendError::Connect)?;
    let description = describe(&layers);
    Ok(Sandbox { client, description, scratch: d, guard: Box::new(guard) })
}

/// ns-init's and the agent's log: a memfd, never executable where the kernel
/// can say so (MFD_NOEXEC_SEAL, 6.3+).
fn log_file() -> std::io::Result<std::fs::File> {
    use std::os::fd::FromRawFd;
    let create = |flags: libc::c_uint| {
        // SAFETY: a NUL-terminated name and plain flags.
        let fd = unsafe { libc::memfd_create(c"cordon-ns-log".as_ptr(), flags) };
        // SAFETY: a descriptor the kernel just gave us.
        (fd >= 0).then(|| unsafe { std::fs::File::from_raw_fd(fd) }).ok_or_else(std::io::Error::last_os_error)
    };
    create(libc::MFD_CLOEXEC | libc::MFD_NOEXEC_SEAL).or_else(|_| create(libc::MFD_CLOEXEC))
}

/// Whether `s` reaches end-of-file within `limit` (what is read before it
/// is discarded).
fn wait_eof(s: &UnixStream, limit: Duration) -> bool {
    use nix::errno::Errno;
    use nix::sys::socket::{recv, MsgFlags};
    let mut buf = [0u8; 256];
    crate::procs::wait_until(Some(s), limit, || match recv(s.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
        Ok(0) => true,
        Ok(_) | Err(Errno::EAGAIN | Errno::EINTR) => false,
        // Reset or worse: the peer is gone all the same.
        Err(_) => true,
    })
}

/// Answers ns-init's reports until PID 1 says it is confined (or something
/// failed). Blocking, bounded by a read timeout on the sync socket.
fn handshake(sync: &mut UnixStream) -> Result<(Option<OwnedFd>, Vec<Layer>), String> {
    let _ = sync.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = Vec::new();
    let mut tap = None;
    loop {
        let (report, fd) = next_report(sync, &mut buf)?;
        match report {
            Report::Tap => tap = Some(fd.ok_or("ns-init sent no tap descriptor")?),
            Report::Confined { layers } => return Ok((tap, layers)),
            Report::Failed { step, error } => return Err(format!("{step}: {error}")),
        }
    }
}

/// One report line (and the fd that rode with it, if any).
fn next_report(sync: &mut UnixStream, buf: &mut Vec<u8>) -> Result<(Report, Option<OwnedFd>), String> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut fd = None;
    loop {
        if let Some(i) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            let r = serde_json::from_slice(&line[..i]).map_err(|e| format!("ns-init sent garbage: {e}"))?;
            return Ok((r, fd));
        }
        let mut chunk = [0u8; 4096];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let mut iov = [std::io::IoSliceMut::new(&mut chunk)];
        let msg = match recvmsg::<()>(sync.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC) {
            Ok(m) => m,
            // A signal for cordon (Ctrl-C): its handler has noted it, and the
            // run acts on it once the sandbox is up (milliseconds away).
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(format!("ns-init did not answer: {e}")),
        };
        for c in msg.cmsgs().map_err(|e| format!("ns-init sent garbage: {e}"))? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                for f in fds {
                    // SAFETY: the kernel just gave us this descriptor.
                    let owned = unsafe { OwnedFd::from_raw_fd(f) };
                    fd.get_or_insert(owned);
                }
            }
        }
        let n = msg.bytes;
        if n == 0 {
            return Err("ns-init exited before the sandbox was ready".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The layers the namespaces themselves give (the rest come from ns-init's
/// confinement and the cgroup).
fn core_layers(plan: &Plan, root: bool, uid_base: u32) -> Vec<Layer> {
    let spool = if plan.workspace.is_some() { ", /.cordon-spool (archives in transit)" } else { "" };
    let fs = match plan.rootfs {
        RootfsChoice::Image => {
            format!("the image's rootfs, read-only; writable: /workspace, /tmp, /run, /dev/shm{spool}")
        }
        RootfsChoice::Host => "the host's /usr, /bin, /lib*, /etc read-only (no /root, /home, /etc/shadow)".to_string(),
    };
    let net = if plan.gated() { "a tap through the egress gate" } else { "loopback only" };
    let ids = if root {
        format!("root -> host uid {uid_base}..{}", uid_base + 0xffff)
    } else {
        format!("root -> your uid {uid_base}")
    };
    vec![
        Layer::new("filesystem", true, fs),
        Layer::new("pid", true, "own PID namespace, the agent is PID 1"),
        Layer::new("network", true, net),
        Layer { name: "uid-map".into(), enforced: true, detail: ids },
    ]
}

/// What `--isolation namespace` would enforce on this machine, for `cordon
/// doctor`: the namespaces, the confinement this kernel supports, and a
/// real (immediately removed) sandbox cgroup.
pub fn probe_layers(plan_memory: u64) -> Vec<Layer> {
    let root = nix::unistd::geteuid().is_root();
    let userns = std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .is_none_or(|n| n > 0);
    let mut v = vec![
        Layer::new(
            "filesystem",
            userns,
            if userns { "read-only root, writable /workspace, /tmp, /run" } else { "user namespaces are disabled" },
        ),
        Layer::new("pid", userns, if userns { "own PID namespace" } else { "user namespaces are disabled" }),
        match tun_usable() {
            Ok(()) => {
                Layer::new("network", true, "none/off: loopback only; full and rules: a tap through the egress gate")
            }
            Err(why) => Layer {
                name: "network".into(),
                enforced: true,
                detail: format!("loopback only; --net full and rules fail closed ({why})"),
            },
        },
        Layer::new(
            "uid-map",
            userns,
            if root { "root -> an unprivileged host uid range" } else { "root -> your own uid" },
        ),
    ];
    v.extend(confine::probe());
    let limits = cgroup::Limits { pids_max: crate::resources::DEFAULT_PIDS, memory_max: plan_memory, cpus: 1 };
    let (cg, cg_layers) = cgroup::SandboxCgroup::create(&format!("cordon-doctor-{}", std::process::id()), &limits);
    drop(cg);
    v.extend(cg_layers);
    v
}

/// The run's first line: every layer, enforced or not.
fn describe(layers: &[Layer]) -> String {
    format!("namespace ({})", layers::summary(layers))
}
