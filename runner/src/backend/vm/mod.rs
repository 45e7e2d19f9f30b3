//! The microVM backend: picks the accelerator and control transport, builds
//! (or reuses) the image, starts vhost-device-vsock and QEMU as children
//! that die with cordon, and waits for the agent's Ready while watching QEMU
//! and the console, so a dead QEMU or a guest panic is a readable boot
//! failure, not a hang. Dropping the guard shuts everything down and removes
//! the temp directory; the janitor covers a SIGKILLed cordon.

pub mod accel;
pub mod args;
pub mod console;
pub mod control;
pub mod probe;
pub mod qmp;
pub mod tsc;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::agent::AgentClient;
use crate::backend::{find_agent, new_token, BackendError, Sandbox};
use crate::janitor::Janitor;
use crate::netfilter::{DNS_V4, GATEWAY_V4, GUEST_V4};
use crate::plan::{NetMode, Plan};
use args::{Accel, Control, Machine, Net, VmConfig};
use control::{ControlKind, Io, AGENT_PORT, SERIAL_NAME};
use cordon_protocol::boot::{RootFs, ROOT_DISK_SERIAL, SCRATCH_DISK_SERIAL};

/// The fd number QEMU and passt get their end of the frame socket on.
const QEMU_NET_FD: i32 = 3;
/// The fd number QEMU gets its end of the console socket on.
const QEMU_CONSOLE_FD: i32 = 4;

pub fn default_boot_timeout(accel: Accel) -> Duration {
    match accel {
        Accel::Tcg => Duration::from_secs(90),
        Accel::Kvm | Accel::Hvf => Duration::from_secs(20),
    }
}

struct VmGuard {
    qemu: Option<tokio::process::Child>,
    daemon: Option<tokio::process::Child>,
    qmp: PathBuf,
    dir: Option<tempfile::TempDir>,
    janitor: Option<Janitor>,
    acked: bool,
    link: Option<crate::netfilter::gated::GatedLink>,
    console: Option<std::sync::Arc<console::Console>>,
    /// Keeps the userland image from being removed while the VM runs.
    _image: Option<crate::image::userland::InUse>,
}

impl crate::backend::SandboxGuard for VmGuard {
    fn shutdown_acked(&mut self) {
        self.acked = true;
    }

    fn diagnostics(&self) -> String {
        self.console.as_deref().map(|c| c.tail(20)).unwrap_or_default()
    }
}

impl Drop for VmGuard {
    fn drop(&mut self) {
        if let Some(mut q) = self.qemu.take() {
            // After the agent's ShutdownAck the guest powers itself off.
            let grace = if self.acked { Duration::from_secs(3) } else { Duration::ZERO };
            if !wait_exit(&mut q, grace) {
                let _ = qmp::quit(&self.qmp, Duration::from_secs(1));
                if !wait_exit(&mut q, Duration::from_secs(2)) {
                    let _ = q.start_kill();
                    wait_exit(&mut q, Duration::from_secs(2));
                }
            }
        }
        // The relay writes the audit log's last lines and summary when dropped.
        drop(self.link.take());
        if let Some(mut d) = self.daemon.take() {
            let _ = d.start_kill();
            wait_exit(&mut d, Duration::from_secs(2));
        }
        // Every helper is reaped: the janitor removes the directory (and
        // kills nothing whose pid may now be another's).
        if let (Some(j), Some(d)) = (self.janitor.as_mut(), self.dir.as_mut()) {
            if j.finish() {
                d.disable_cleanup(true);
            }
        }
        drop(self.dir.take());
        drop(self.janitor.take());
    }
}

use crate::procs::wait_exit;

/// A socketpair for the console: cordon's end, and QEMU's end on a high fd
/// number, so passing it as [`QEMU_CONSOLE_FD`] cannot clobber another fd
/// being passed.
fn console_pair() -> Result<(std::os::unix::net::UnixStream, std::os::fd::OwnedFd), BackendError> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let err = |source| BackendError::Spawn { what: "console socket".into(), source };
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(err)?;
    // SAFETY: F_DUPFD_CLOEXEC on an fd we own returns a fresh fd or -1.
    let high = unsafe { libc::fcntl(theirs.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 64) };
    if high < 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    // SAFETY: fcntl returned a fresh fd that we now own.
    Ok((ours, unsafe { std::os::fd::OwnedFd::from_raw_fd(high) }))
}

fn spawn(cmd: std::process::Command, what: &str) -> Result<tokio::process::Child, BackendError> {
    let mut cmd = cmd;
    crate::procs::die_with_parent(&mut cmd);
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    cmd.spawn().map_err(|source| BackendError::Spawn { what: what.to_string(), source })
}

/// Points a helper's stdout and stderr at one log file (one open file
/// description, so the two streams append instead of overwriting each other).
fn log_to(cmd: &mut std::process::Command, dir: &Path, name: &str) -> Result<(), BackendError> {
    let f = log_file(dir, name)?;
    let f2 = f.try_clone().map_err(|source| BackendError::Spawn { what: name.to_string(), source })?;
    cmd.stdout(f).stderr(f2);
    Ok(())
}

/// Writes `content` to a new file only its owner can read.
fn write_secret(path: &Path, content: &str) -> Result<PathBuf, BackendError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(content.as_bytes()))
        .map_err(|source| BackendError::Spawn { what: path.display().to_string(), source })?;
    Ok(path.to_path_buf())
}

fn log_file(dir: &Path, name: &str) -> Result<std::fs::File, BackendError> {
    std::fs::File::create(dir.join(name)).map_err(|source| BackendError::Spawn { what: name.to_string(), source })
}

pub async fn start(plan: &Plan, log: &dyn Fn(&str)) -> Result<Sandbox, BackendError> {
    let t0 = Instant::now();
    let accel = accel::resolve(plan.accel).map_err(|e| BackendError::Unavailable("vm", e))?;
    let qemu_bin = probe::qemu_binary().map_err(|e| BackendError::Unavailable("vm", e))?;
    let caps = probe::probe(&qemu_bin);
    let machine = match std::env::consts::ARCH {
        "aarch64" => Machine::Virt,
        _ if caps.microvm => Machine::Microvm,
        _ => Machine::Q35,
    };
    let kind = control::choose(plan.control).map_err(|e| BackendError::Unavailable("vm", e))?;
    // Before the image build and the boot: an old passt is a refusal, not a hang later.
    let passt_bin = crate::backend::passt_for(plan)?;
    let agent = find_agent(plan.agent.as_deref())?;
    let image = crate::image::build_default(&agent, plan.kernel, false, log).map_err(BackendError::Image)?;
    let progress = crate::image::progress::Progress::auto(plan.json, log);
    let userland = crate::image::userland::resolve(&plan.image, plan.no_build.as_deref(), &progress)
        .map_err(BackendError::Image)?;
    drop(progress);
    let image_hold = userland.as_ref().map(|u| u.hold()).transpose().map_err(BackendError::Image)?;

    let dir = tempfile::Builder::new()
        .prefix("cordon-")
        // Private to this user (tempfile leaves the mode to the umask).
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir()
        .map_err(|source| BackendError::Spawn { what: "temp dir".into(), source })?;
    let d = dir.path().to_path_buf();
    let janitor = Janitor::start(&d).map_err(|source| BackendError::Spawn { what: "janitor".into(), source })?;
    let mut guard = VmGuard {
        qemu: None,
        daemon: None,
        qmp: d.join("qmp.sock"),
        dir: Some(dir),
        janitor: Some(janitor),
        acked: false,
        link: None,
        console: None,
        _image: image_hold,
    };

    // The token reaches the guest as a fw_cfg file, never through argv (see
    // args.rs); the file lives in the 0700 temp dir until the agent is in.
    let token = new_token();
    let token_file = write_secret(&d.join("token"), &token)?;
    let (control, listen) = match &kind {
        ControlKind::KernelVsock => {
            // The CID is in argv: random on its own, not derived from the token.
            let cid = 3 + (u32::from_str_radix(&new_token()[..6], 16).unwrap_or(0) % 0x00ff_fff0);
            (Control::KernelVsock { cid }, format!("vsock:{AGENT_PORT}"))
        }
        ControlKind::VhostUser { daemon } => {
            let sock = d.join("vu.sock");
            let mut cmd = std::process::Command::new(daemon);
            cmd.arg("--vm")
                .arg(format!("guest-cid=3,socket={},uds-path={}", sock.display(), d.join("vsock.sock").display()))
                .stdin(Stdio::null());
            log_to(&mut cmd, &d, "vhost-device-vsock.log")?;
            let child = spawn(cmd, "vhost-device-vsock")?;
            if let (Some(j), Some(pid)) = (&guard.janitor, child.id()) {
                j.track(pid, "vhost-device-vsock");
            }
            // Its socket is awaited just before QEMU needs it: the daemon
            // starts while the rest of the VM is prepared.
            guard.daemon = Some(child);
            (Control::VhostUserVsock { socket: sock }, format!("vsock:{AGENT_PORT}"))
        }
        ControlKind::Serial => (
            Control::Serial { socket: d.join("agent.sock"), name: SERIAL_NAME.into() },
            format!("serial:{SERIAL_NAME}"),
        ),
    };
    let mut qemu_net_fd: Option<std::os::unix::net::UnixStream> = None;
    let net = if let Some(passt_bin) = &passt_bin {
        let (link, qemu_end) = crate::backend::gated_link(plan, passt_bin, &d, guard.janitor.as_ref())?;
        guard.link = Some(link);
        qemu_net_fd = Some(qemu_end);
        Net::Gated { fd: QEMU_NET_FD }
    } else {
        match plan.net {
            NetMode::None if caps.slirp => Net::UserRestricted,
            // Without slirp there is no NIC at all, which is stricter still.
            _ => Net::Off,
        }
    };
    let net_param = match net {
        Net::Off => String::new(),
        Net::UserRestricted => {
            let spec = cordon_protocol::boot::NetSpec {
                addr4: format!("{GUEST_V4}/24"),
                gateway4: GATEWAY_V4.to_string(),
                dns: DNS_V4.to_string(),
                v6: None,
                mtu: None,
            };
            format!(" {}", cordon_protocol::boot::BootParams { net: Some(spec), ..Default::default() }.render())
        }
        Net::Gated { .. } => {
            let net = Some(crate::netfilter::guest_net_spec());
            format!(" {}", cordon_protocol::boot::BootParams { net, ..Default::default() }.render())
        }
    };
    let mut disks = vec![];
    if let Some(u) = &userland {
        let scratch = d.join("scratch.img");
        // Sparse, but the guest may fill it: never promise it more than
        // the host has free where it lives.
        let free = nix::sys::statvfs::statvfs(&d).map(|v| v.blocks_available() * v.fragment_size()).unwrap_or(u64::MAX);
        let bytes = plan.disk_bytes.min(free / 10 * 9);
        if bytes < 64 << 20 {
            return Err(BackendError::Unavailable(
                "vm",
                format!("only {} MiB free in {} for the scratch disk", free >> 20, d.display()),
            ));
        }
        if bytes < plan.disk_bytes {
            log(&format!("scratch disk cut to {} MiB: that is what {} has free", bytes >> 20, d.display()));
        }
        crate::image::userland::make_scratch(&scratch, bytes).map_err(BackendError::Image)?;
        disks.push(args::Disk { path: u.erofs(), serial: ROOT_DISK_SERIAL.into(), read_only: true });
        disks.push(args::Disk { path: scratch, serial: SCRATCH_DISK_SERIAL.into(), read_only: false });
    }
    let root_param = userland.as_ref().map(|_| {
        let p = cordon_protocol::boot::BootParams { root: Some(RootFs::Erofs), ..Default::default() };
        format!(" {}", p.render())
    });
    let cfg = VmConfig {
        machine,
        accel,
        cpus: plan.cpus,
        memory_mib: plan.memory_mib,
        // Debugging aids (and how the tests boot a broken guest): replace the
        // image's kernel or initramfs.
        kernel: std::env::var_os("CORDON_KERNEL").map(PathBuf::from).unwrap_or_else(|| image.kernel()),
        initrd: std::env::var_os("CORDON_INITRD").map(PathBuf::from).unwrap_or_else(|| image.initramfs()),
        cmdline: {
            let mut c = args::kernel_cmdline(machine, &listen);
            if accel == Accel::Tcg {
                if let Some(khz) = tsc::host_tsc_khz() {
                    c.push(' ');
                    c.push_str(&args::tcg_timing(khz, image.meta.kernel_hz));
                }
            }
            c.push_str(&net_param);
            c.push_str(root_param.as_deref().unwrap_or_default());
            if let Some(extra) = std::env::var_os("CORDON_KERNEL_APPEND") {
                c.push(' ');
                c.push_str(&extra.to_string_lossy());
            }
            c
        },
        console_fd: QEMU_CONSOLE_FD,
        qmp_socket: d.join("qmp.sock"),
        token_file: token_file.clone(),
        control: control.clone(),
        net,
        sandbox: caps.seccomp,
        disks,
    };
    if let (Control::VhostUserVsock { socket }, Some(daemon)) = (&control, guard.daemon.as_mut()) {
        wait_daemon_socket(daemon, socket, &d).await?;
    }
    let mut cmd = std::process::Command::new(&qemu_bin);
    cmd.args(args::qemu_args(&cfg)).stdin(Stdio::null());
    log_to(&mut cmd, &d, "qemu.log")?;
    let (console_ours, console_theirs) = console_pair()?;
    let console = console::Console::spawn_reader(console_ours)
        .map_err(|source| BackendError::Spawn { what: "console reader".into(), source })?;
    {
        use std::os::fd::AsRawFd;
        crate::procs::pass_fd(&mut cmd, console_theirs.as_raw_fd(), QEMU_CONSOLE_FD);
    }
    if let Some(s) = &qemu_net_fd {
        use std::os::fd::AsRawFd;
        crate::procs::pass_fd(&mut cmd, s.as_raw_fd(), QEMU_NET_FD);
    }
    tracing::debug!(?cmd, "starting qemu");
    let qemu = spawn(cmd, &qemu_bin.display().to_string())?;
    drop(qemu_net_fd);
    drop(console_theirs);
    if let (Some(j), Some(pid)) = (&guard.janitor, qemu.id()) {
        j.track(pid, "qemu-system");
    }
    guard.qemu = Some(qemu);

    let deadline = plan.boot_timeout.unwrap_or_else(|| default_boot_timeout(accel));
    let client = wait_ready(&mut guard, &control, &token, &d, &console, deadline).await?;
    // QEMU read it at startup, and the agent now refuses any other session.
    let _ = std::fs::remove_file(&token_file);
    let boot_ms = t0.elapsed().as_millis() as u64;
    tracing::info!(boot_ms, "agent ready");
    let description = format!(
        "vm (QEMU {} {}, accel {}, kernel {}, image {}, control {}, net {})",
        match machine {
            Machine::Microvm => "microvm",
            Machine::Q35 => "q35",
            Machine::Virt => "virt",
        },
        caps.version.split_whitespace().nth(3).unwrap_or("?"),
        accel.as_str(),
        image.meta.kernel_release,
        plan.image.display_name(),
        kind.describe(),
        match net {
            Net::Off => "off (no NIC)",
            Net::UserRestricted => "none (user net, restrict=on)",
            Net::Gated { .. } => "gated (cordon egress gate -> passt)",
        }
    );
    guard.console = Some(console);
    Ok(Sandbox { client, description, scratch: d.clone(), guard: Box::new(guard) })
}

/// Waits for vhost-device-vsock to create its socket (QEMU connects to it
/// at startup), watching the daemon.
async fn wait_daemon_socket(daemon: &mut tokio::process::Child, sock: &Path, dir: &Path) -> Result<(), BackendError> {
    let until = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        if let Ok(Some(st)) = daemon.try_wait() {
            let why = std::fs::read_to_string(dir.join("vhost-device-vsock.log")).unwrap_or_default();
            return Err(BackendError::Boot {
                why: format!("vhost-device-vsock exited ({st}): {}", why.trim()),
                console: String::new(),
            });
        }
        if Instant::now() > until {
            return Err(BackendError::Boot {
                why: "vhost-device-vsock did not create its socket within 10s".into(),
                console: String::new(),
            });
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

async fn connect_once(control: &Control, dir: &Path) -> std::io::Result<Option<Box<dyn Io>>> {
    match control {
        Control::VhostUserVsock { .. } => control::try_vhost_user(&dir.join("vsock.sock"), AGENT_PORT).await,
        Control::KernelVsock { cid } => control::try_kernel_vsock(*cid, AGENT_PORT).await,
        Control::Serial { socket, .. } => control::try_serial(socket).await,
    }
}

async fn wait_ready(
    guard: &mut VmGuard,
    control: &Control,
    token: &str,
    dir: &Path,
    console: &console::Console,
    deadline: Duration,
) -> Result<AgentClient, BackendError> {
    let started = Instant::now();
    // The agent's console line saying its vsock listener is up (see the
    // agent's listen.rs for why vhost-user vsock must wait for it).
    let needs_marker = matches!(control, Control::VhostUserVsock { .. });
    let connect = async {
        if needs_marker {
            console.wait_listening().await;
            tracing::debug!("agent listening");
        }
        loop {
            match connect_once(control, dir).await {
                Ok(Some(io)) => {
                    let left = deadline.saturating_sub(started.elapsed()).max(Duration::from_secs(1));
                    // Over vsock the connection is the listening agent's once
                    // it is accepted, and nothing else runs in the guest yet:
                    // Hello may go before Ready (a one-way trip saved). A
                    // serial port may drop what comes before the agent reads.
                    let eager = !matches!(control, Control::Serial { .. });
                    return AgentClient::connect_with(io, token, left, eager).await.map_err(BackendError::Connect);
                }
                Ok(None) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(e) => return Err(BackendError::Spawn { what: "control channel".into(), source: e }),
            }
        }
    };
    let qemu = guard.qemu.as_mut().expect("qemu was just started");
    let watch = async {
        loop {
            if let Ok(Some(st)) = qemu.try_wait() {
                let log = std::fs::read_to_string(dir.join("qemu.log")).unwrap_or_default();
                return format!(
                    "QEMU exited during boot ({st}){}",
                    if log.trim().is_empty() { String::new() } else { format!(": {}", log.trim()) }
                );
            }
            if let Some(m) = console.panicked() {
                return format!("the guest failed during boot ({m})");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let res = tokio::select! {
        r = connect => r,
        why = watch => Err(BackendError::Boot { why, console: String::new() }),
        _ = tokio::time::sleep(deadline) => Err(BackendError::Boot {
            why: format!("the agent was not ready within {deadline:?}"),
            console: String::new(),
        }),
    };
    let helper_log = || {
        let log = console::file_tail(&dir.join("vhost-device-vsock.log"), 10);
        if log.trim().is_empty() {
            String::new()
        } else {
            format!(" (vhost-device-vsock says: {})", log.trim())
        }
    };
    res.map_err(|e| match e {
        BackendError::Boot { why, .. } => {
            BackendError::Boot { why: format!("{why}{}", helper_log()), console: console.tail(30) }
        }
        BackendError::Connect(err) => {
            BackendError::Boot { why: format!("the agent handshake failed: {err}"), console: console.tail(30) }
        }
        other => other,
    })
}
