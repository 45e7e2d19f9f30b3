//! Executes a Plan: starts the sandbox, copies the workspace in, runs the
//! steps in order (stopping at the first failure), copies the artifacts out,
//! and maps the outcome to an exit code.
//!
//! The runner enforces every deadline itself and never trusts the guest to
//! keep one: a step timeout, the job timeout, Ctrl-C and SIGTERM first ask
//! the agent to kill the step's tree (SIGTERM, then SIGKILL); when no exit
//! arrives within a grace period, the runner tears the sandbox down and
//! reports the step as timed out or cancelled. Every other wait (start of a
//! step, workspace upload, artifact download, shutdown) is bounded too.

mod copy_out;
mod output;

use cordon_protocol::{Exec, ExecFailure, ExitStatus, PtySize};
use serde_json::json;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::agent::{AgentError, ExecEvent, ExecHandle, StartError};
use crate::backend::{self, BackendError, Sandbox};
use crate::cli::Isolation;
use crate::exit;
use crate::image::ImageError;
use crate::plan::{Plan, Step, GUEST_WORKSPACE};
use crate::term::say;
pub use copy_out::artifact_host_path;
use output::Output;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("talking to the agent failed{}", console_note(.1))]
    Agent(#[source] AgentError, String),
    #[error("copying the workspace {0} into the sandbox failed")]
    Workspace(String, #[source] AgentError),
    #[error("copying artifact {0} out of the sandbox failed")]
    Artifact(String, #[source] AgentError),
    #[error("writing the step's output failed")]
    Output(#[source] std::io::Error),
    #[error("installing signal handlers failed")]
    Signals(#[source] std::io::Error),
}

fn console_note(tail: &str) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!("\n--- last console lines ---\n{tail}\n---")
    }
}

impl RunError {
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Backend(BackendError::Image(
                ImageError::NotFound(_) | ImageError::NotBuilt { .. } | ImageError::BadSpec(_) | ImageError::InUse(_),
            )) => exit::BAD_CONFIG,
            RunError::Backend(BackendError::Unavailable(..) | BackendError::NoAgent(_) | BackendError::Image(_)) => {
                exit::BACKEND_UNAVAILABLE
            }
            RunError::Backend(BackendError::Connect(_) | BackendError::Boot { .. }) => exit::BOOT_FAILED,
            RunError::Backend(BackendError::Spawn { .. }) => exit::INTERNAL,
            RunError::Backend(BackendError::PolicyUnenforceable(_)) => exit::POLICY_UNENFORCEABLE,
            RunError::Agent(..) => exit::AGENT_LOST,
            RunError::Workspace(..) | RunError::Artifact(..) => exit::AGENT_LOST,
            RunError::Output(_) | RunError::Signals(_) => exit::INTERNAL,
        }
    }
}

/// How long after the agent was told to kill a step (SIGTERM, then SIGKILL
/// after the agent's grace) the runner waits for the step's exit before it
/// tears the sandbox down itself.
const KILL_AFTER: Duration = Duration::from_millis(cordon_protocol::DEFAULT_GRACE_MS);
const ABANDON_AFTER: Duration = Duration::from_secs(5);
/// A step must be confirmed started within this long.
const START_DEADLINE: Duration = Duration::from_secs(60);
/// An agent that sends nothing at all for this long during a transfer is
/// considered gone (a starved or hostile agent must not stall the run).
pub(crate) const AGENT_SILENCE: Duration = Duration::from_secs(60);

/// Why the runner is stopping a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Signal(i32),
    JobTimeout,
    StepTimeout,
}

impl Stop {
    fn exit_code(self) -> u8 {
        match self {
            Stop::Signal(s) => exit::for_signal(s),
            Stop::JobTimeout | Stop::StepTimeout => exit::TIMED_OUT,
        }
    }
}

/// How one step ended, from the runner's point of view.
pub enum StepEnd {
    Exited(ExitStatus),
    StartFailed(ExecFailure, String),
    /// The runner stopped it; `None`: no exit came and the sandbox was
    /// torn down.
    Stopped(Stop, Option<ExitStatus>),
}

/// Ctrl-C, SIGTERM and the job deadline, watched during every phase.
pub struct Watch<'a> {
    int: &'a mut Signal,
    term: &'a mut Signal,
    deadline: Option<tokio::time::Instant>,
}

impl Watch<'_> {
    /// Resolves with the exit code when a signal arrives or the job
    /// deadline passes.
    async fn interrupted(&mut self) -> u8 {
        tokio::select! {
            _ = self.int.recv() => exit::for_signal(libc::SIGINT),
            _ = self.term.recv() => exit::for_signal(libc::SIGTERM),
            _ = sleep_until_opt(self.deadline) => {
                say("the job timed out");
                exit::TIMED_OUT
            }
        }
    }
}

/// What the job came to; `torn_down` when the sandbox is no longer worth a
/// polite shutdown.
struct JobEnd {
    code: u8,
    torn_down: bool,
}

/// `pre`: the helpers `main` forked for this run (prefork.rs), or none.
pub async fn run(plan: Plan, pre: crate::prefork::Prefork) -> Result<u8, RunError> {
    let t0 = Instant::now();
    let mut int = signal(SignalKind::interrupt()).map_err(RunError::Signals)?;
    let mut term = signal(SignalKind::terminate()).map_err(RunError::Signals)?;
    let json = plan.json;
    // A userland image that must be built (or waited for) is made first,
    // on a thread of its own, so Ctrl-C and SIGTERM end the wait: the
    // build (mmdebstrap) dies with cordon and leaves nothing mounted.
    if plan.image != crate::image::userland::ImageSpec::Default {
        let (spec, no_build) = (plan.image.clone(), plan.no_build.clone());
        let prepare = tokio::task::spawn_blocking(move || {
            let log = |m: &str| say(m);
            let progress = crate::image::progress::Progress::auto(json, &log);
            crate::image::userland::resolve(&spec, no_build.as_deref(), &progress).map(drop)
        });
        tokio::select! {
            r = prepare => match r {
                Ok(r) => r.map_err(|e| RunError::Backend(BackendError::Image(e)))?,
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            },
            _ = int.recv() => return Ok(exit::for_signal(libc::SIGINT)),
            _ = term.recv() => return Ok(exit::for_signal(libc::SIGTERM)),
        }
    }
    let sandbox = tokio::select! {
        s = start(&plan, pre) => s?,
        _ = int.recv() => return Ok(exit::for_signal(libc::SIGINT)),
        _ = term.recv() => return Ok(exit::for_signal(libc::SIGTERM)),
    };
    let ready_ms = t0.elapsed().as_millis() as u64;
    let mut out = Output::new(json, plan.prefix)?;
    if json {
        out.event(json!({"event": "sandbox_ready", "isolation": sandbox.description, "ready_ms": ready_ms,
            "agent_version": sandbox.client.ready.agent_version, "kernel_boot_ms": sandbox.client.ready.kernel_boot_ms,
            "agent_start_ms": sandbox.client.ready.agent_start_ms, "agent_capabilities": sandbox.client.ready.capabilities})).await?;
    } else if sandbox.description.starts_with("namespace") {
        // The layers in force, every run: nothing about isolation is implied.
        say(&format!("isolation: {}", sandbox.description));
    } else if plan.isolation == Isolation::LocalAgent {
        say(&format!("WARNING: isolation {}", sandbox.description));
    } else {
        tracing::info!(isolation = %sandbox.description, ready_ms, "sandbox ready");
    }
    let deadline = plan.job_timeout.map(|d| tokio::time::Instant::now() + d);
    let mut watch = Watch { int: &mut int, term: &mut term, deadline };
    let end = match run_job(&plan, &sandbox, &mut out, &mut watch).await {
        Ok(end) => end,
        Err(RunError::Agent(e, _)) => {
            let tail = sandbox.guard.diagnostics();
            drop(sandbox);
            out.finish(None);
            return Err(RunError::Agent(e, crate::term::sanitize(&tail)));
        }
        Err(e) => {
            drop(sandbox);
            out.finish(None);
            return Err(e);
        }
    };
    if end.torn_down {
        drop(sandbox);
    } else {
        sandbox.close().await;
    }
    if json {
        out.event(json!({"event": "run_finished", "exit_code": end.code, "wall_ms": t0.elapsed().as_millis() as u64}))
            .await?;
    }
    // Everything the step wrote reaches the reader, however slow; only a run
    // the user or a deadline cut short stops waiting for a reader that has
    // stopped reading.
    let cut_short = matches!(end.code, exit::TIMED_OUT | 130 | 143);
    out.finish(cut_short.then_some(Duration::from_secs(2)));
    Ok(end.code)
}

async fn run_job(plan: &Plan, sandbox: &Sandbox, out: &mut Output, watch: &mut Watch<'_>) -> Result<JobEnd, RunError> {
    if let Some(ws) = &plan.workspace {
        let t = Instant::now();
        let put = sandbox.client.put_archive(ws, GUEST_WORKSPACE);
        let files = tokio::select! {
            r = put => r.map_err(|e| RunError::Workspace(ws.display().to_string(), e))?,
            code = watch.interrupted() => return Ok(JobEnd { code, torn_down: true }),
            _ = silence(&sandbox.client) => {
                let e = AgentError::Timeout(AGENT_SILENCE, "the agent to take the workspace");
                return Err(RunError::Workspace(ws.display().to_string(), e));
            }
        };
        if out.json {
            out.event(json!({"event": "workspace_copied", "entries": files, "ms": t.elapsed().as_millis() as u64}))
                .await?;
        }
    }
    let mut code = 0u8;
    for step in &plan.steps {
        let end = run_step(sandbox, plan, step, out, watch).await?;
        code = match &end {
            StepEnd::Exited(st) if st.timed_out => exit::TIMED_OUT,
            StepEnd::Exited(st) => match (st.code, st.signal) {
                (Some(c), _) => c.clamp(0, 255) as u8,
                (None, Some(s)) => exit::for_signal(s),
                (None, None) => exit::AGENT_LOST,
            },
            StepEnd::StartFailed(ExecFailure::NotFound, _) => exit::NOT_FOUND,
            StepEnd::StartFailed(ExecFailure::PermissionDenied | ExecFailure::Other, _) => exit::CANNOT_EXECUTE,
            StepEnd::StartFailed(ExecFailure::BadCwd | ExecFailure::BadUser | ExecFailure::BadRequest, _) => {
                exit::BAD_CONFIG
            }
            StepEnd::Stopped(stop, _) => stop.exit_code(),
        };
        out.step_end(step, &end, code).await?;
        match end {
            StepEnd::Stopped(_, None) => return Ok(JobEnd { code, torn_down: true }),
            StepEnd::Stopped(..) => return Ok(JobEnd { code, torn_down: false }),
            _ if code != 0 => break,
            _ => {}
        }
    }
    match copy_out::copy_all(plan, sandbox, out, watch).await? {
        copy_out::CopyEnd::Interrupted(c) => Ok(JobEnd { code: c, torn_down: true }),
        copy_out::CopyEnd::Done { failed } if failed > 0 && code == 0 => {
            say(&format!("{failed} artifact(s) could not be copied although every step passed"));
            Ok(JobEnd { code: exit::ARTIFACTS, torn_down: false })
        }
        copy_out::CopyEnd::Done { .. } => Ok(JobEnd { code, torn_down: false }),
    }
}

/// Resolves once the agent has been silent for `AGENT_SILENCE`.
async fn silence(client: &crate::agent::AgentClient) {
    loop {
        let quiet = client.silent_for();
        if quiet >= AGENT_SILENCE {
            return;
        }
        tokio::time::sleep(AGENT_SILENCE - quiet + Duration::from_millis(10)).await;
    }
}

/// Sends a signal to the step's tree without letting a stalled transport
/// hold up the runner's own deadlines.
async fn tell(h: &ExecHandle, signal: i32) {
    let _ = tokio::time::timeout(Duration::from_secs(1), h.signal(signal)).await;
}

/// The runner's side of stopping a step.
#[derive(Default)]
struct Stopping {
    why: Option<Stop>,
    kill_at: Option<tokio::time::Instant>,
    abandon_at: Option<tokio::time::Instant>,
}

impl Stopping {
    async fn begin(&mut self, why: Stop, h: &ExecHandle) {
        let now = tokio::time::Instant::now();
        if self.why.is_some() {
            // Asked twice (a second Ctrl-C): stop waiting for the guest.
            self.abandon_at = Some(now);
            return;
        }
        self.why = Some(why);
        tell(h, libc::SIGTERM).await;
        self.kill_at = Some(now + KILL_AFTER);
        self.abandon_at = Some(now + KILL_AFTER + ABANDON_AFTER);
    }
}

async fn run_step(
    sb: &Sandbox,
    plan: &Plan,
    step: &Step,
    out: &mut Output,
    watch: &mut Watch<'_>,
) -> Result<StepEnd, RunError> {
    let pty = plan.tty.then(|| {
        let (rows, cols) = crate::term::window_size();
        PtySize { rows, cols }
    });
    let req = Exec {
        argv: step.argv.clone(),
        env: step.env.clone(),
        cwd: step.cwd.clone(),
        timeout_ms: step.timeout.map(|d| d.as_millis() as u64),
        stdin: plan.stdin,
        pty,
        pids_max: Some(plan.pids_max),
        memory_max: Some(plan.step_memory_max),
        ..Default::default()
    };
    let agent_err = |e| RunError::Agent(e, String::new());
    let step_deadline = step.timeout.map(|t| tokio::time::Instant::now() + t);
    let start = async {
        let mut h = sb.client.exec(req).await?;
        let r = h.started().await;
        Ok::<_, AgentError>((h, r))
    };
    let (mut h, pid) = tokio::select! {
        r = tokio::time::timeout(START_DEADLINE, start) => match r {
            Err(_) => return Err(agent_err(AgentError::Timeout(START_DEADLINE, "the step to start"))),
            Ok(Err(e)) => return Err(agent_err(e)),
            Ok(Ok((_, Err(StartError::Failed { reason, message })))) => return Ok(StepEnd::StartFailed(reason, message)),
            Ok(Ok((_, Err(StartError::Agent(e))))) => return Err(agent_err(e)),
            Ok(Ok((h, Ok(pid)))) => (h, pid),
        },
        code = watch.interrupted() => {
            let stop = if code == exit::TIMED_OUT { Stop::JobTimeout } else { Stop::Signal(code as i32 - 128) };
            return Ok(StepEnd::Stopped(stop, None));
        }
        // The step may already run (and time out) before the agent says so.
        _ = sleep_until_opt(step_deadline.map(|d| d + KILL_AFTER + ABANDON_AFTER)) => {
            return Ok(StepEnd::Stopped(Stop::StepTimeout, None));
        }
    };
    if out.json {
        out.event(json!({"event": "step_started", "step": step.name, "argv": step.argv, "pid": pid})).await?;
    }
    // Raw mode only while a step with a pty runs, restored on every way out.
    let raw = (plan.tty && crate::term::stdin_is_tty()).then(crate::term::RawMode::enter).flatten();
    if raw.is_some() {
        say(&format!("-t: keys go to the step; {} stops it (twice: at once)", crate::term::ESCAPE_NAME));
    }
    // Stdin goes through its own task: a full window (a starved agent) must
    // not hold up this loop's deadlines. In raw mode it also watches for the
    // escape key, the user's way out of a step that ignores every other key.
    let (escape_tx, mut escape_rx) = tokio::sync::mpsc::channel::<()>(2);
    let watch_escape = raw.is_some();
    let stdin_task = plan.stdin.then(|| {
        let (w, mut chunks) = (h.stdin(), crate::term::stdin_chunks());
        tokio::spawn(async move {
            while let Some(Some(mut data)) = chunks.recv().await {
                if watch_escape {
                    if let Some(i) = data.iter().position(|b| *b == crate::term::ESCAPE) {
                        let _ = escape_tx.try_send(());
                        data.truncate(i);
                    }
                }
                if !data.is_empty() && w.write(&data).await.is_err() {
                    return;
                }
            }
            let _ = w.close().await;
        })
    });
    let mut stop = Stopping::default();
    let mut winch = if plan.tty { signal(SignalKind::window_change()).ok() } else { None };
    // Output waits for room in the writer's queue before the next event is
    // taken from the agent: a reader that stops reading slows the step (its
    // window closes), never this loop.
    let queue = out.sender();
    let mut pending: Option<output::Chunk> = None;
    // Where the backend counts OOM kills outside the guest (a namespace
    // sandbox's cgroup), a kill during the step is reported as the step's.
    let oom_base = sb.guard.oom_kills();
    let mut sigpiped = false;
    let end = loop {
        tokio::select! {
            permit = queue.reserve(), if pending.is_some() => {
                if let (Ok(p), Some(c)) = (permit, pending.take()) {
                    p.send(c);
                }
            }
            ev = h.next_event(), if pending.is_none() => match ev.map_err(agent_err)? {
                ExecEvent::Stdout(b) => pending = Some(out.format(&step.name, 0, &b)),
                ExecEvent::Stderr(b) => pending = Some(out.format(&step.name, 1, &b)),
                ExecEvent::Exit(mut st) => {
                    st.oom_killed |= oom_base.is_some_and(|b| sb.guard.oom_kills().unwrap_or(b) > b);
                    break match stop.why {
                        Some(why) => StepEnd::Stopped(why, Some(st)),
                        None => StepEnd::Exited(st),
                    };
                }
            },

            _ = out.stdout_closed(), if !sigpiped => {
                // As in a shell pipeline: the writer learns its reader is gone.
                sigpiped = true;
                tell(&h, libc::SIGPIPE).await;
            }
            Some(()) = escape_rx.recv() => stop.begin(Stop::Signal(libc::SIGINT), &h).await,
            Some(()) = recv_signal(&mut winch) => {
                let (rows, cols) = crate::term::window_size();
                let _ = tokio::time::timeout(Duration::from_secs(1), h.resize(rows, cols)).await;
            }
            _ = watch.int.recv() => stop.begin(Stop::Signal(libc::SIGINT), &h).await,
            _ = watch.term.recv() => stop.begin(Stop::Signal(libc::SIGTERM), &h).await,
            _ = sleep_until_opt(watch.deadline), if stop.why.is_none() => stop.begin(Stop::JobTimeout, &h).await,
            // The agent kills the step at its timeout; this is the runner's own
            // enforcement for an agent that cannot (starved, or hostile).
            _ = sleep_until_opt(step_deadline), if stop.why.is_none() => stop.begin(Stop::StepTimeout, &h).await,
            _ = sleep_until_opt(stop.kill_at) => {
                stop.kill_at = None;
                tell(&h, libc::SIGKILL).await;
            }
            _ = sleep_until_opt(stop.abandon_at) => break StepEnd::Stopped(stop.why.unwrap_or(Stop::StepTimeout), None),
        }
    };
    if let Some(t) = stdin_task {
        t.abort();
    }
    Ok(end)
}

async fn recv_signal(s: &mut Option<Signal>) -> Option<()> {
    match s {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

async fn start(plan: &Plan, pre: crate::prefork::Prefork) -> Result<Sandbox, RunError> {
    Ok(backend::start(plan, pre, &|m: &str| say(m)).await?)
}

async fn sleep_until_opt(d: Option<tokio::time::Instant>) {
    match d {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
