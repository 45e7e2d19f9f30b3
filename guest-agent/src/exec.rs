//! Runs one Exec: spawns the process in its own session (and cgroup when there
//! is one), streams its output with backpressure, feeds its stdin, enforces the
//! timeout, and reports exactly one Started/ExecFailed and, after all output,
//! one Exit. Whatever ends the exec (exit, timeout, Signal, lost connection),
//! the whole tree is gone before Exit is sent.

use bytes::Bytes;
use cordon_protocol::{Channel, Exec, ExecFailure, ExitStatus, Kind, Message, Window, DATA_CHUNK, DEFAULT_GRACE_MS};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use crate::fdio::FdIo;
use crate::outbox::Outbox;
use crate::reaper::{decode_status, Reaper};
use crate::tree::{vmstat_oom_kills, CgroupRoot, Limits, Tree};

/// PATH given to processes whose environment lacks one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How long a killed tree may take to be gone before Exit is sent anyway
/// (with an error logged). Under TCG the kernel needs about 4 s of guest
/// time to end the 4096 tasks of a fork bomb at the default `pids.max`.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// How long output may keep flowing after the tree is gone (a process that
/// escaped the tree may hold a pipe open).
const DRAIN_DEADLINE: Duration = Duration::from_secs(2);

pub struct ExecCtx {
    pub reaper: Arc<Reaper>,
    pub cgroups: Option<CgroupRoot>,
    /// Turns true once the VM's setup that only steps need (hostname,
    /// loopback, network) is done; every exec waits for it. None: nothing
    /// to wait for.
    pub setup: Option<watch::Receiver<bool>>,
    /// PID 1 of a PID namespace without per-exec cgroups (the namespace
    /// backend): when an exec ends and no other runs, everything else in the
    /// namespace is killed, so a step's setsid'd daemon cannot outlive it.
    pub sweep_namespace: bool,
    /// Execs running now.
    pub running: std::sync::atomic::AtomicUsize,
}

/// What the runner asks of a running exec besides its stdin.
pub enum ExecControl {
    /// Signal the whole tree.
    Signal(i32),
    /// The runner's terminal changed size; only meaningful with a pty.
    Resize(cordon_protocol::PtySize),
}

pub enum StdinEvent {
    Data(Bytes),
    Eof,
}

/// The connection's side of one exec.
pub struct ExecIo {
    pub out: Outbox,
    pub stream: u32,
    pub stdout_win: Window,
    pub stderr_win: Window,
    pub stdin: mpsc::UnboundedReceiver<StdinEvent>,
    pub stdin_inflight: crate::server::Inflight,
    pub signals: mpsc::UnboundedReceiver<ExecControl>,
    pub closed: watch::Receiver<bool>,
}

struct Spawned {
    tree: Tree,
    reaped: tokio::sync::oneshot::Receiver<crate::reaper::Reaped>,
    stdin: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    stdout: Box<dyn AsyncRead + Send + Unpin>,
    stderr: Option<Box<dyn AsyncRead + Send + Unpin>>,
    /// The pty master, for window size changes.
    pty: Option<OwnedFd>,
}

pub async fn run(ctx: Arc<ExecCtx>, req: Exec, io: ExecIo) {
    let ExecIo { out, stream, stdout_win, stderr_win, stdin, stdin_inflight, mut signals, mut closed } = io;
    if let Some(mut setup) = ctx.setup.clone() {
        let _ = setup.wait_for(|done| *done).await;
    }
    let started = Instant::now();
    let oom_before = vmstat_oom_kills();
    let mut sp = match spawn(&ctx, &req) {
        Ok(sp) => sp,
        Err((reason, message)) => {
            out.msg(stream, &Message::ExecFailed { reason, message }).await;
            return;
        }
    };
    tracing::debug!(stream, spawn_us = started.elapsed().as_micros() as u64, "spawned");
    ctx.running.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    out.msg(stream, &Message::Started { pid: sp.tree.pgid as u32 }).await;

    let pump_out = tokio::spawn(pump(out.clone(), stream, Kind::STDOUT, stdout_win.clone(), sp.stdout));
    let pump_err =
        sp.stderr.take().map(|r| tokio::spawn(pump(out.clone(), stream, Kind::STDERR, stderr_win.clone(), r)));
    let feeder = tokio::spawn(feed_stdin(out.clone(), stream, sp.stdin.take(), stdin, stdin_inflight));

    let grace = Duration::from_millis(req.grace_ms.unwrap_or(DEFAULT_GRACE_MS));
    let deadline = req.timeout_ms.map(|ms| tokio::time::Instant::now() + Duration::from_millis(ms));
    let mut timed_out = false;
    let mut we_killed = false;
    let mut killer: Option<tokio::task::JoinHandle<()>> = None;
    let tree = Arc::new(sp.tree);
    let reaped = loop {
        tokio::select! {
            r = &mut sp.reaped => break r.ok(),
            _ = sleep_until_opt(deadline), if !timed_out && killer.is_none() => {
                timed_out = true;
                we_killed = true;
                killer = Some(tokio::spawn(terminate(tree.clone(), grace)));
            }
            Some(c) = signals.recv() => match c {
                ExecControl::Signal(sig) => tree.signal(sig),
                ExecControl::Resize(size) => {
                    if let Some(m) = &sp.pty {
                        set_window_size(m, size);
                    }
                }
            },
            r = closed.changed(), if killer.is_none() => {
                if r.is_err() || *closed.borrow() {
                    we_killed = true;
                    killer = Some(tokio::spawn(terminate(tree.clone(), grace)));
                }
            }
        }
    };
    // The leader is gone; nothing of its tree may outlive the step.
    if let Some(k) = killer {
        let _ = k.await;
    }
    if !we_killed {
        terminate(tree.clone(), grace).await;
    }
    let others = ctx.running.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) > 1;
    if ctx.sweep_namespace && tree.cgroup.is_none() && !others {
        // SAFETY: kill(2) with -1 from PID 1 of a PID namespace reaches every
        // other process of that namespace and nothing outside it.
        unsafe { libc::kill(-1, libc::SIGKILL) };
    }

    let drain = async {
        let _ = pump_out.await;
        if let Some(p) = pump_err {
            let _ = p.await;
        }
    };
    let output_cut = tokio::time::timeout(DRAIN_DEADLINE, drain).await.is_err();
    if output_cut {
        tracing::warn!(stream, "output still open after the tree was killed; closing it");
        stdout_win.close();
        stderr_win.close();
        out.eof(stream, Kind::STDOUT).await;
        out.eof(stream, Kind::STDERR).await;
    }
    feeder.abort();

    let (code, signal, maxrss) = match reaped {
        Some(r) => {
            let (c, s) = decode_status(r.status);
            (c, s, r.maxrss_kb)
        }
        None => (None, None, 0),
    };
    let oom_killed = tree.oom_kills() > 0
        || (tree.cgroup.is_none() && !we_killed && signal == Some(libc::SIGKILL) && vmstat_oom_kills() > oom_before);
    let status = ExitStatus {
        code,
        signal,
        timed_out,
        oom_killed,
        wall_ms: started.elapsed().as_millis() as u64,
        peak_rss_kb: maxrss,
        output_cut,
    };
    out.msg(stream, &Message::Exit(status)).await;
}

async fn sleep_until_opt(d: Option<tokio::time::Instant>) {
    match d {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// SIGTERM to the tree, wait up to `grace` for it to empty, then SIGKILL.
/// A tree that hit its task limit gets no grace: its forks fail anyway,
/// and a fork bomb refills every slot a SIGTERM frees.
async fn terminate(tree: Arc<Tree>, grace: Duration) {
    if tree.is_empty() {
        return;
    }
    if tree.hit_task_limit() {
        tracing::info!(pgid = tree.pgid, "the tree hit its task limit; killing it without a grace period");
    } else {
        tree.signal(libc::SIGTERM);
        tree.signal(libc::SIGCONT);
        let until = Instant::now() + grace;
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if tree.is_empty() {
                return;
            }
        }
    }
    let until = Instant::now() + KILL_WAIT;
    loop {
        // Once per round: cgroup.kill walks every member in the kernel,
        // which the dying members need the CPU for.
        tree.kill();
        for _ in 0..25 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if tree.is_empty() {
                return;
            }
        }
        if Instant::now() >= until {
            tracing::error!(pgid = tree.pgid, "process tree survived SIGKILL for {KILL_WAIT:?}");
            return;
        }
    }
}

async fn pump(out: Outbox, stream: u32, kind: Kind, win: Window, mut r: Box<dyn AsyncRead + Send + Unpin>) {
    let mut buf = vec![0u8; DATA_CHUNK];
    loop {
        match r.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                if !out.data(stream, kind, &win, &buf[..n]).await {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(stream, error = %e, "reading exec output failed");
                break;
            }
        }
    }
    out.eof(stream, kind).await;
}

async fn feed_stdin(
    out: Outbox,
    stream: u32,
    mut w: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    mut rx: mpsc::UnboundedReceiver<StdinEvent>,
    inflight: crate::server::Inflight,
) {
    while let Some(ev) = rx.recv().await {
        match ev {
            StdinEvent::Data(b) => {
                if let Some(pipe) = w.as_mut() {
                    // A process that closed its stdin loses the rest, as with a pipe.
                    if pipe.write_all(&b).await.is_err() {
                        w = None;
                    }
                }
                inflight.fetch_sub(b.len() as u64, std::sync::atomic::Ordering::AcqRel);
                out.credit(stream, Channel::Stdin, b.len() as u32).await;
            }
            StdinEvent::Eof => {
                if let Some(mut pipe) = w.take() {
                    let _ = pipe.shutdown().await;
                }
            }
        }
    }
}

type Failure = (ExecFailure, String);

fn spawn(ctx: &ExecCtx, req: &Exec) -> Result<Spawned, Failure> {
    let Some(prog) = req.argv.first() else {
        return Err((ExecFailure::BadRequest, "argv is empty".into()));
    };
    if let Some(cwd) = &req.cwd {
        match std::fs::metadata(cwd) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err((ExecFailure::BadCwd, format!("{cwd} is not a directory"))),
            Err(e) => return Err((ExecFailure::BadCwd, format!("{cwd}: {e}"))),
        }
    }
    let mut cmd = Command::new(prog);
    cmd.args(&req.argv[1..]);
    if req.clear_env {
        cmd.env_clear();
    }
    let has_path = req.env.iter().any(|(k, _)| k == "PATH") || (!req.clear_env && std::env::var_os("PATH").is_some());
    if !has_path {
        cmd.env("PATH", DEFAULT_PATH);
    }
    // The agent's own settings are not the step's business.
    for k in [cordon_protocol::boot::MODE_ENV, "CORDON_AGENT_LOG"] {
        cmd.env_remove(k);
    }
    // Tools want a home (pip, git, compilers' caches): root's in the VM,
    // whose root is an overlay; /tmp in a namespace sandbox, whose root is
    // read-only.
    let has_home = req.env.iter().any(|(k, _)| k == "HOME") || std::env::var_os("HOME").is_some();
    if !has_home && !req.clear_env {
        let ns = std::env::var_os(cordon_protocol::boot::MODE_ENV).is_some();
        cmd.env("HOME", if ns { "/tmp" } else { "/root" });
    }
    for (k, v) in &req.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err((ExecFailure::BadRequest, format!("invalid environment variable name {k:?}")));
        }
        cmd.env(k, v);
    }
    if let Some(cwd) = &req.cwd {
        cmd.current_dir(cwd);
    }
    if let Some(gid) = req.gid {
        cmd.gid(gid);
    }
    if let Some(uid) = req.uid {
        cmd.uid(uid);
    }
    let limits = Limits { pids_max: req.pids_max, memory_max: req.memory_max };
    let cgroup = match &ctx.cgroups {
        Some(root) => match root.create_child() {
            // The limits are in place before the step's first process joins.
            Ok(cg) => match cg.set_limits(&limits) {
                Ok(()) => Some(cg),
                Err(e) => return Err((ExecFailure::Other, format!("applying the step's limits failed: {e}"))),
            },
            Err(e) if limits != Limits::default() && root.enforces_limits() => {
                return Err((ExecFailure::Other, format!("creating the step's cgroup for its limits failed: {e}")));
            }
            Err(e) => {
                tracing::warn!(error = %e, "creating the exec cgroup failed; using the process group only");
                None
            }
        },
        None => None,
    };
    // The agent as PID 1 is exempt from the OOM killer (-1000); its steps
    // must not inherit that, or an OOM could only end in a hang or a panic.
    let reset_oom_score = own_oom_score_adj() < 0;

    let (stdout, stderr, stdin_w): (Box<dyn AsyncRead + Send + Unpin>, Option<Box<dyn AsyncRead + Send + Unpin>>, _);
    let use_pty = req.pty.is_some();
    let mut pty = None;
    if let Some(size) = req.pty {
        let (master, slave) = openpty(size.rows, size.cols).map_err(other)?;
        let dup = |f: &OwnedFd| f.try_clone().map_err(other);
        // A terminal's stdin is the terminal; without runner stdin it reads EOF.
        cmd.stdin(Stdio::from(dup(&slave)?));
        cmd.stdout(Stdio::from(dup(&slave)?));
        cmd.stderr(Stdio::from(slave));
        if !req.stdin {
            // VEOF (^D) at the start of a line makes the first read return 0.
            // SAFETY: writing one byte from a static buffer to our pty master.
            unsafe { libc::write(master.as_raw_fd(), b"\x04".as_ptr().cast(), 1) };
        }
        let w: Option<Box<dyn AsyncWrite + Send + Unpin>> =
            if req.stdin { Some(Box::new(FdIo::new(dup(&master)?).map_err(other)?)) } else { None };
        pty = Some(dup(&master)?);
        stdout = Box::new(FdIo::new(master).map_err(other)?);
        stderr = None;
        stdin_w = w;
    } else {
        let (or, ow) = pipe().map_err(other)?;
        let (er, ew) = pipe().map_err(other)?;
        cmd.stdout(Stdio::from(ow));
        cmd.stderr(Stdio::from(ew));
        stdout = Box::new(pipe_reader(or).map_err(other)?);
        stderr = Some(Box::new(pipe_reader(er).map_err(other)?));
        if req.stdin {
            let (ir, iw) = pipe().map_err(other)?;
            cmd.stdin(Stdio::from(ir));
            stdin_w = Some(Box::new(tokio::net::unix::pipe::Sender::from_owned_fd(iw).map_err(other)?));
        } else {
            cmd.stdin(Stdio::null());
            stdin_w = None;
        }
    }

    let cg_ref = cgroup.as_ref().map(|c| c as *const crate::tree::Cgroup as usize);
    // SAFETY: the closure runs in the forked child and only makes
    // async-signal-safe calls (setsid, ioctl, open/write/close) on static or
    // pre-built paths.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if use_pty && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 && libc::ioctl(1, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(p) = cg_ref {
                // The cgroup outlives the spawn: it is moved into the Tree below.
                let cg = &*(p as *const crate::tree::Cgroup);
                cg.join_self()?;
            }
            if reset_oom_score {
                let fd = libc::open(c"/proc/self/oom_score_adj".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
            }
            Ok(())
        });
    }
    let (pid, reaped) = ctx
        .reaper
        .spawn_registered(|| cmd.spawn().map(|c| (c.id() as i32, c.id() as i32)))
        .map_err(|e| classify(prog, req.uid.is_some() || req.gid.is_some(), e))?;
    drop(cmd);
    Ok(Spawned { tree: Tree { pgid: pid, cgroup }, reaped, stdin: stdin_w, stdout, stderr, pty })
}

/// Sets the pty's window size; the kernel sends SIGWINCH to its foreground group.
fn set_window_size(master: &OwnedFd, size: cordon_protocol::PtySize) {
    let ws = libc::winsize { ws_row: size.rows, ws_col: size.cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads one winsize from a struct we own; the fd is ours.
    unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
}

/// This process's `oom_score_adj` (0 when unreadable).
fn own_oom_score_adj() -> i32 {
    std::fs::read_to_string("/proc/self/oom_score_adj").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

fn classify(prog: &str, set_ids: bool, e: std::io::Error) -> Failure {
    match e.kind() {
        std::io::ErrorKind::NotFound => (ExecFailure::NotFound, format!("{prog}: command not found")),
        std::io::ErrorKind::PermissionDenied if !set_ids => {
            (ExecFailure::PermissionDenied, format!("{prog}: permission denied"))
        }
        _ if set_ids && e.raw_os_error() == Some(libc::EPERM) => {
            (ExecFailure::BadUser, format!("switching user failed: {e}"))
        }
        _ => (ExecFailure::Other, format!("{prog}: {e}")),
    }
}

fn other(e: std::io::Error) -> Failure {
    (ExecFailure::Other, e.to_string())
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: fds is a valid 2-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two fresh fds that we now own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn pipe_reader(fd: OwnedFd) -> std::io::Result<tokio::net::unix::pipe::Receiver> {
    crate::fdio::set_nonblocking(fd.as_raw_fd())?;
    tokio::net::unix::pipe::Receiver::from_owned_fd(fd)
}

fn openpty(rows: u16, cols: u16) -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (mut m, mut s) = (0i32, 0i32);
    let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: valid out-pointers; name and termios may be null.
    if unsafe { libc::openpty(&mut m, &mut s, std::ptr::null_mut(), std::ptr::null(), &ws) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: openpty returned two fresh fds that we now own.
    let (m, s) = unsafe { (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s)) };
    for fd in [&m, &s] {
        // SAFETY: setting FD_CLOEXEC on an fd we own.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok((m, s))
}
