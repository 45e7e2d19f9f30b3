//! cordon-agent: runs build and test steps for the cordon runner. As PID 1 in
//! the microVM it also sets the machine up and powers it off; elsewhere it is
//! a plain server. Configuration comes from flags, or as PID 1 from the
//! kernel command line (`cordon.listen=`, `cordon.modules=`); the token never
//! comes from argv or the command line (see token.rs).
//!
//! A library too: cordon's namespace backend runs the same server in the
//! process that is already PID 1 of the sandbox (`namespace_main`), instead
//! of exec'ing this binary there.

mod diskroot;
mod exec;
mod fdio;
mod init;
mod listen;
mod netconf;
mod outbox;
mod reaper;
mod server;
mod token;
mod transfer;
mod tree;

use clap::Parser;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crate::listen::Listen;

#[derive(Parser, Debug)]
#[command(name = "cordon-agent", version, about = "cordon's guest agent (normally started by cordon, not by hand)")]
struct Args {
    /// Where to serve: vsock:PORT, serial:NAME (a virtio-serial port name),
    /// unix:PATH, or fd:N (an inherited connected socket; serves it once)
    #[arg(long)]
    listen: Option<Listen>,
    /// Directory for spooling incoming archives (default: the system temp dir)
    #[arg(long)]
    spool_dir: Option<PathBuf>,
    /// A writable cgroup v2 directory under which each exec gets its own cgroup
    #[arg(long)]
    cgroup_root: Option<PathBuf>,
}

/// The `cordon-agent` binary's entry point.
pub fn main() {
    let t0 = Instant::now();
    // PID 1 of a VM sets the machine up; PID 1 of a namespace sandbox (cordon's
    // ns-init built it) is a plain server that also reaps orphans.
    let pid1 = std::process::id() == 1 && std::env::var_os(cordon_protocol::boot::MODE_ENV).is_none();
    init_logging();
    if pid1 {
        std::panic::set_hook(Box::new(|info| {
            eprintln!("cordon-agent: panic as PID 1: {info}");
            init::power_off(false);
        }));
        pid1_main(t0);
    }
    // Before any thread starts: the environment is process-global.
    let token = token::from_env();
    // Nothing this process inherited beyond stdio reaches a step: not
    // whatever cordon's own launcher left open, not the control socket.
    cloexec_from(3);
    if std::env::var_os(cordon_protocol::boot::MODE_ENV).is_some() {
        // A namespace sandbox's steps share this process's uid: keep them out
        // of /proc/1/environ (the token's first copy) and /proc/1/mem.
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    }
    let args = Args::parse();
    let Some(listen) = args.listen.clone() else {
        eprintln!("cordon-agent: --listen is required outside the VM");
        std::process::exit(2);
    };
    // Orphans of an exec's tree come back to us, so they are reaped and killable.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let cgroups = args.cgroup_root.as_deref().and_then(tree::CgroupRoot::probe);
    let code = match serve(listen, token.unwrap_or_default(), args.spool_dir, cgroups, None, None, t0) {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("cordon-agent: {e}");
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                eprintln!("  caused by: {s}");
                src = s.source();
            }
            1
        }
    };
    std::process::exit(code);
}

/// The agent as PID 1 of a namespace sandbox, in the process cordon's
/// ns-init made PID 1 (already confined: namespaces, Landlock, seccomp, no
/// capabilities), serving one session on the inherited socket `control_fd`.
/// No exec of this crate's binary: the same server, without a second
/// program's start (its loader, its libc's CPU probing, its runtime) on
/// every run's path. The caller has set the environment the steps inherit,
/// `boot::MODE_ENV` included, and holds no other thread.
pub fn namespace_main(control_fd: i32, token: String, spool_dir: PathBuf) -> ! {
    let t0 = Instant::now();
    init_logging();
    cloexec_from(3);
    // The steps share this process's uid: keep them out of /proc/1/mem and
    // /proc/1/environ.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    let code = match serve(Listen::Fd(control_fd), token, Some(spool_dir), None, None, None, t0) {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("cordon-agent: {e}");
            1
        }
    };
    std::process::exit(code)
}

/// The agent's log on stderr (the VM's console, or ns-init's log file),
/// filtered by CORDON_AGENT_LOG (default info).
fn init_logging() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CORDON_AGENT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
}

/// Marks every descriptor from `first` up close-on-exec: close_range(2)
/// with CLOSE_RANGE_CLOEXEC (Linux 5.11+), else each entry of
/// /proc/self/fd, else each number below RLIMIT_NOFILE. A step must never
/// inherit the control socket (it would read the runner's frames).
fn cloexec_from(first: i32) {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags.
    if unsafe { libc::syscall(libc::SYS_close_range, first as u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) } == 0 {
        return;
    }
    let listed: Option<Vec<i32>> = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect());
    let fds = listed.unwrap_or_else(|| {
        let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit fills the struct it is given.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) };
        (first..rl.rlim_cur.clamp(1024, 1 << 20) as i32).collect()
    });
    for fd in fds.into_iter().filter(|fd| *fd >= first) {
        // SAFETY: fcntl on a descriptor number; EBADF for a closed one is fine.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

fn pid1_main(t0: Instant) -> ! {
    init::mount_all();
    tracing::debug!(ms = t0.elapsed().as_millis() as u64, "mounted");
    init::protect_from_oom();
    let kernel_ms = init::uptime_ms().map(|u| u.saturating_sub(t0.elapsed().as_millis() as u64));
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let params = init::BootParams::parse(&cmdline);
    init::load_modules(&init::module_list(&params), &cmdline);
    // Hostname, loopback and the NIC matter to steps, not to the agent: with
    // no userland to enter first they are set on a thread while the agent
    // starts listening and the runner connects, and every exec waits for
    // them (ExecCtx::setup).
    let (hostname, net) = (params.hostname.clone().unwrap_or_else(|| "cordon".into()), params.net.clone());
    let setup = move || {
        init::set_hostname(&hostname);
        init::loopback_up();
        if let Some(net) = &net {
            init::configure_net(net);
        }
        tracing::debug!(ms = t0.elapsed().as_millis() as u64, "hostname, loopback, network");
    };
    let setup = if params.root.is_none() {
        match std::thread::Builder::new().name("setup".into()).spawn(setup) {
            Ok(h) => Some(h),
            Err(e) => {
                eprintln!("cordon-agent: no setup thread: {e}");
                init::power_off(params.reboot_to_halt);
            }
        }
    } else {
        setup();
        None
    };
    if let Some(fs) = params.root {
        if let Err(e) = diskroot::enter(fs) {
            eprintln!("cordon-agent: entering the image's userland: {e}");
            init::power_off(params.reboot_to_halt);
        }
        if let Some(net) = &params.net {
            init::write_resolv(net);
        }
    }
    tracing::debug!(ms = t0.elapsed().as_millis() as u64, "init done");
    let listen = match params.listen.as_deref().unwrap_or("vsock:1024").parse::<Listen>() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cordon-agent: {e}");
            init::power_off(params.reboot_to_halt);
        }
    };
    let cgroups = tree::CgroupRoot::probe(std::path::Path::new("/sys/fs/cgroup"));
    let token = token::from_fw_cfg().unwrap_or_default();
    tracing::debug!(ms = t0.elapsed().as_millis() as u64, "cgroups probed, token read");
    if let Err(e) = serve(listen, token, Some("/tmp".into()), cgroups, setup, kernel_ms, t0) {
        eprintln!("cordon-agent: {e}");
    }
    init::power_off(params.reboot_to_halt)
}

fn serve(
    listen: Listen,
    token: String,
    spool_dir: Option<PathBuf>,
    cgroups: Option<tree::CgroupRoot>,
    setup: Option<std::thread::JoinHandle<()>>,
    kernel_boot_ms: Option<u64>,
    t0: Instant,
) -> Result<server::Outcome, listen::ListenError> {
    // In a namespace sandbox the agent is one of many processes on the host's
    // CPUs: one thread serves it (no wakeups handed between workers); in the
    // VM, two workers keep output and input moving on the guest's CPUs.
    let rt = if std::env::var_os(cordon_protocol::boot::MODE_ENV).is_some() {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()
    }
    .expect("building the tokio runtime");
    tracing::debug!(ms = t0.elapsed().as_millis() as u64, "runtime built");
    rt.block_on(async move {
        let reaper = reaper::Reaper::start();
        let setup = setup.map(|h| {
            let (tx, rx) = tokio::sync::watch::channel(false);
            // Done even if it panicked (PID 1's panic hook powers off anyway):
            // no exec may wait forever.
            tokio::task::spawn_blocking(move || {
                let _ = h.join();
                let _ = tx.send(true);
            });
            rx
        });
        let mut capabilities = vec!["exec", "pty", "archive", "signal"];
        if let Some(root) = &cgroups {
            capabilities.push("cgroup");
            if root.enforces_limits() {
                capabilities.push(cordon_protocol::CAP_LIMITS);
            }
        }
        let agent = Arc::new(server::Agent {
            exec: Arc::new(exec::ExecCtx {
                reaper,
                cgroups,
                setup,
                sweep_namespace: std::process::id() == 1 && std::env::var_os(cordon_protocol::boot::MODE_ENV).is_some(),
                running: Default::default(),
            }),
            token,
            slot: server::Slot::default(),
            ready: cordon_protocol::Ready {
                agent_version: env!("CARGO_PKG_VERSION").to_string(),
                version_min: cordon_protocol::VERSION_MIN,
                version_max: cordon_protocol::VERSION_MAX,
                capabilities: capabilities.into_iter().map(String::from).collect(),
                kernel_boot_ms,
                agent_start_ms: t0.elapsed().as_millis() as u64,
            },
            spool_dir: spool_dir.unwrap_or_else(std::env::temp_dir),
        });
        listen::run(listen, agent).await
    })
}
