//! Executes a Plan: starts the sandbox, runs the steps in order (stopping at
//! the first failure), streams their output, and maps the outcome to an exit
//! code. Ctrl-C and SIGTERM cancel the running step's whole tree.

use cordon_protocol::{Exec, ExecFailure, ExitStatus};
use serde_json::json;
use std::io::Write;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::signal::unix::{signal, SignalKind};

use crate::agent::{AgentError, ExecEvent, ExecHandle, StartError};
use crate::backend::{self, BackendError, Sandbox};
use crate::cli::Isolation;
use crate::exit;
use crate::plan::{Plan, Step};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("talking to the agent failed")]
    Agent(#[from] AgentError),
    #[error("writing the step's output failed")]
    Output(#[source] std::io::Error),
}

impl RunError {
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Backend(BackendError::Unavailable(..)) | RunError::Backend(BackendError::NoAgent(_)) => {
                exit::BACKEND_UNAVAILABLE
            }
            RunError::Backend(BackendError::Connect(_)) => exit::BOOT_FAILED,
            RunError::Backend(BackendError::Spawn { .. }) => exit::INTERNAL,
            RunError::Agent(_) => exit::AGENT_LOST,
            RunError::Output(_) => exit::INTERNAL,
        }
    }
}

/// How one step ended, from the runner's point of view.
enum StepEnd {
    Exited(ExitStatus),
    StartFailed(ExecFailure, String),
    Cancelled(i32, Option<ExitStatus>),
}

pub async fn run(plan: Plan) -> Result<u8, RunError> {
    let t0 = Instant::now();
    let sandbox = start(&plan).await?;
    let ready_ms = t0.elapsed().as_millis() as u64;
    let mut out = Output { json: plan.json };
    if plan.json {
        out.event(json!({"event": "sandbox_ready", "isolation": sandbox.description, "ready_ms": ready_ms,
            "agent_version": sandbox.client.ready.agent_version, "kernel_boot_ms": sandbox.client.ready.kernel_boot_ms}))?;
    } else if plan.isolation == Isolation::LocalAgent {
        eprintln!("cordon: WARNING: isolation {}", sandbox.description);
    }
    let mut sigint = signal(SignalKind::interrupt()).map_err(RunError::Output)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(RunError::Output)?;
    let mut code = 0u8;
    for step in &plan.steps {
        let end =
            run_step(&sandbox, step, plan.stdin && plan.steps.len() == 1, &mut out, &mut sigint, &mut sigterm).await?;
        code = match &end {
            StepEnd::Exited(st) if st.timed_out => exit::TIMED_OUT,
            StepEnd::Exited(st) => match (st.code, st.signal) {
                (Some(c), _) => c.clamp(0, 255) as u8,
                (None, Some(s)) => exit::for_signal(s),
                (None, None) => exit::AGENT_LOST,
            },
            StepEnd::StartFailed(ExecFailure::NotFound, _) => exit::NOT_FOUND,
            StepEnd::StartFailed(ExecFailure::PermissionDenied, _) => exit::CANNOT_EXECUTE,
            StepEnd::StartFailed(ExecFailure::BadCwd | ExecFailure::BadUser | ExecFailure::BadRequest, _) => {
                exit::BAD_CONFIG
            }
            StepEnd::StartFailed(ExecFailure::Other, _) => exit::CANNOT_EXECUTE,
            StepEnd::Cancelled(sig, _) => exit::for_signal(*sig),
        };
        report_step(&mut out, step, &end, code)?;
        if code != 0 {
            break;
        }
    }
    let _ = sandbox.client.shutdown(Duration::from_secs(5)).await;
    if plan.json {
        out.event(json!({"event": "run_finished", "exit_code": code, "wall_ms": t0.elapsed().as_millis() as u64}))?;
    }
    drop(sandbox);
    Ok(code)
}

async fn start(plan: &Plan) -> Result<Sandbox, RunError> {
    match plan.isolation {
        Isolation::LocalAgent => Ok(backend::local::start(plan).await?),
        Isolation::Vm => Err(BackendError::Unavailable("vm", "the microVM backend is not built yet".into()).into()),
        Isolation::Namespace => {
            Err(BackendError::Unavailable("namespace", "the namespace backend is not built yet".into()).into())
        }
        Isolation::Auto => Err(BackendError::Unavailable(
            "auto",
            "no isolating backend is available in this build; --isolation local-agent runs without isolation".into(),
        )
        .into()),
    }
}

async fn run_step(
    sb: &Sandbox,
    step: &Step,
    forward_stdin: bool,
    out: &mut Output,
    sigint: &mut tokio::signal::unix::Signal,
    sigterm: &mut tokio::signal::unix::Signal,
) -> Result<StepEnd, RunError> {
    let req = Exec {
        argv: step.argv.clone(),
        env: step.env.clone(),
        cwd: step.cwd.clone(),
        timeout_ms: step.timeout.map(|d| d.as_millis() as u64),
        stdin: forward_stdin,
        ..Default::default()
    };
    let mut h: ExecHandle = sb.client.exec(req).await?;
    let pid = match h.started().await {
        Ok(pid) => pid,
        Err(StartError::Failed { reason, message }) => return Ok(StepEnd::StartFailed(reason, message)),
        Err(StartError::Agent(e)) => return Err(e.into()),
    };
    if out.json {
        out.event(json!({"event": "step_started", "step": step.name, "argv": step.argv, "pid": pid}))?;
    }
    let stdin_task = forward_stdin.then(|| {
        let w = h.stdin();
        tokio::spawn(async move {
            let mut input = tokio::io::stdin();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match input.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if w.write(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = w.close().await;
        })
    });
    let mut cancelled: Option<i32> = None;
    let mut kill_at: Option<tokio::time::Instant> = None;
    let end = loop {
        tokio::select! {
            ev = h.next_event() => match ev? {
                ExecEvent::Stdout(b) => out.data(&step.name, "stdout", &b)?,
                ExecEvent::Stderr(b) => out.data(&step.name, "stderr", &b)?,
                ExecEvent::Exit(st) => break match cancelled {
                    Some(sig) => StepEnd::Cancelled(sig, Some(st)),
                    None => StepEnd::Exited(st),
                },
            },
            _ = sigint.recv() => {
                cancelled.get_or_insert(libc::SIGINT);
                h.signal(libc::SIGTERM).await?;
                kill_at.get_or_insert(tokio::time::Instant::now() + Duration::from_secs(2));
            }
            _ = sigterm.recv() => {
                cancelled.get_or_insert(libc::SIGTERM);
                h.signal(libc::SIGTERM).await?;
                kill_at.get_or_insert(tokio::time::Instant::now() + Duration::from_secs(2));
            }
            _ = sleep_until_opt(kill_at) => {
                h.signal(libc::SIGKILL).await?;
                kill_at = None;
            }
        }
    };
    if let Some(t) = stdin_task {
        t.abort();
    }
    Ok(end)
}

async fn sleep_until_opt(d: Option<tokio::time::Instant>) {
    match d {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn report_step(out: &mut Output, step: &Step, end: &StepEnd, code: u8) -> Result<(), RunError> {
    match end {
        StepEnd::Exited(st) | StepEnd::Cancelled(_, Some(st)) => {
            if out.json {
                out.event(json!({"event": "step_exited", "step": step.name, "exit_code": st.code, "signal": st.signal,
                    "timed_out": st.timed_out, "oom_killed": st.oom_killed, "cancelled": matches!(end, StepEnd::Cancelled(..)),
                    "wall_ms": st.wall_ms, "peak_rss_kb": st.peak_rss_kb}))?;
            } else if st.timed_out {
                eprintln!(
                    "cordon: step {:?} timed out after {} ms; its process tree was killed",
                    step.name, st.wall_ms
                );
            } else if st.oom_killed {
                eprintln!("cordon: step {:?} was killed by the out-of-memory killer", step.name);
            } else if let Some(sig) = st.signal {
                eprintln!("cordon: step {:?} was killed by signal {sig}", step.name);
            }
        }
        StepEnd::Cancelled(sig, None) => {
            eprintln!("cordon: step {:?} cancelled by signal {sig}", step.name)
        }
        StepEnd::StartFailed(reason, message) => {
            if out.json {
                out.event(json!({"event": "step_failed_to_start", "step": step.name, "reason": reason, "message": message, "exit_code": code}))?;
            } else {
                eprintln!("cordon: step {:?} could not start: {message}", step.name);
            }
        }
    }
    Ok(())
}

/// Where step output goes: raw to stdout/stderr, or JSON events on stdout.
struct Output {
    json: bool,
}

impl Output {
    fn data(&mut self, step: &str, stream: &str, b: &[u8]) -> Result<(), RunError> {
        if self.json {
            let ev = match std::str::from_utf8(b) {
                Ok(s) => json!({"event": "output", "step": step, "stream": stream, "data": s}),
                Err(_) => {
                    json!({"event": "output", "step": step, "stream": stream, "data_hex": hex(b)})
                }
            };
            return self.event(ev);
        }
        let res = if stream == "stdout" {
            let mut o = std::io::stdout().lock();
            o.write_all(b).and_then(|_| o.flush())
        } else {
            let mut e = std::io::stderr().lock();
            e.write_all(b).and_then(|_| e.flush())
        };
        res.map_err(RunError::Output)
    }

    fn event(&mut self, v: serde_json::Value) -> Result<(), RunError> {
        let mut o = std::io::stdout().lock();
        serde_json::to_writer(&mut o, &v).map_err(|e| RunError::Output(e.into()))?;
        o.write_all(b"\n").and_then(|_| o.flush()).map_err(RunError::Output)
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
