//! Executes a Plan: starts the sandbox, copies the workspace in, runs the
//! steps in order (stopping at the first failure), copies the artifacts out,
//! and maps the outcome to an exit code. Ctrl-C and SIGTERM cancel the
//! running step's whole tree and shut the sandbox down; so does the job
//! timeout.

use cordon_protocol::{Exec, ExecFailure, ExitStatus};
use serde_json::json;
use std::io::Write;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::agent::{AgentError, ExecEvent, ExecHandle, StartError};
use crate::backend::{self, BackendError, Sandbox};
use crate::cli::Isolation;
use crate::exit;
use crate::plan::{Plan, Step, GUEST_WORKSPACE};
use crate::vm::accel::AccelChoice;

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

/// How one step ended, from the runner's point of view.
enum StepEnd {
    Exited(ExitStatus),
    StartFailed(ExecFailure, String),
    Cancelled(i32, Option<ExitStatus>),
    JobTimedOut(Option<ExitStatus>),
}

struct Signals {
    int: Signal,
    term: Signal,
}

pub async fn run(plan: Plan) -> Result<u8, RunError> {
    let t0 = Instant::now();
    let mut sig = Signals {
        int: signal(SignalKind::interrupt()).map_err(RunError::Signals)?,
        term: signal(SignalKind::terminate()).map_err(RunError::Signals)?,
    };
    let json = plan.json;
    let sandbox = tokio::select! {
        s = start(&plan) => s?,
        _ = sig.int.recv() => return Ok(exit::for_signal(libc::SIGINT)),
        _ = sig.term.recv() => return Ok(exit::for_signal(libc::SIGTERM)),
    };
    let ready_ms = t0.elapsed().as_millis() as u64;
    let mut out = Output { json, prefix: plan.prefix, at_line_start: [true, true] };
    if json {
        out.event(json!({"event": "sandbox_ready", "isolation": sandbox.description, "ready_ms": ready_ms,
            "agent_version": sandbox.client.ready.agent_version, "kernel_boot_ms": sandbox.client.ready.kernel_boot_ms,
            "agent_start_ms": sandbox.client.ready.agent_start_ms, "agent_capabilities": sandbox.client.ready.capabilities}))?;
    } else if plan.isolation == Isolation::LocalAgent {
        eprintln!("cordon: WARNING: isolation {}", sandbox.description);
    } else {
        tracing::info!(isolation = %sandbox.description, ready_ms, "sandbox ready");
    }
    let deadline = plan.job_timeout.map(|d| tokio::time::Instant::now() + d);
    let res = run_job(&plan, &sandbox, &mut out, &mut sig, deadline).await;
    let code = match res {
        Ok(code) => code,
        Err(RunError::Agent(e, _)) => {
            let tail = sandbox.console.as_deref().map(|c| crate::vm::console_tail(c, 20)).unwrap_or_default();
            drop(sandbox);
            return Err(RunError::Agent(e, tail));
        }
        Err(e) => {
            sandbox.close().await;
            return Err(e);
        }
    };
    sandbox.close().await;
    if json {
        out.event(json!({"event": "run_finished", "exit_code": code, "wall_ms": t0.elapsed().as_millis() as u64}))?;
    }
    Ok(code)
}

async fn run_job(
    plan: &Plan,
    sandbox: &Sandbox,
    out: &mut Output,
    sig: &mut Signals,
    deadline: Option<tokio::time::Instant>,
) -> Result<u8, RunError> {
    if let Some(ws) = &plan.workspace {
        let t = Instant::now();
        let put = sandbox.client.put_archive(ws, GUEST_WORKSPACE);
        let files = tokio::select! {
            r = put => r.map_err(|e| RunError::Workspace(ws.display().to_string(), e))?,
            _ = sleep_until_opt(deadline) => return Ok(exit::TIMED_OUT),
            _ = sig.int.recv() => return Ok(exit::for_signal(libc::SIGINT)),
            _ = sig.term.recv() => return Ok(exit::for_signal(libc::SIGTERM)),
        };
        if out.json {
            out.event(json!({"event": "workspace_copied", "entries": files, "ms": t.elapsed().as_millis() as u64}))?;
        }
    }
    let mut code = 0u8;
    for step in &plan.steps {
        let end = run_step(sandbox, step, plan.stdin, out, sig, deadline).await?;
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
            StepEnd::Cancelled(sig, _) => exit::for_signal(*sig),
            StepEnd::JobTimedOut(_) => exit::TIMED_OUT,
        };
        report_step(out, step, &end, code)?;
        if matches!(end, StepEnd::Cancelled(..) | StepEnd::JobTimedOut(_)) {
            return Ok(code);
        }
        if code != 0 {
            break;
        }
    }
    for a in &plan.artifacts {
        let dir = &plan.artifacts_dir;
        let rel = artifact_host_path(a);
        let get = sandbox.client.get_archive_with(a, |is_dir| {
            let p = dir.join(&rel);
            if is_dir {
                p
            } else {
                p.parent().map(std::path::Path::to_path_buf).unwrap_or_else(|| dir.clone())
            }
        });
        let res = tokio::select! {
            r = get => r,
            _ = sleep_until_opt(deadline) => return Ok(exit::TIMED_OUT),
        };
        match res {
            Ok(n) => {
                if out.json {
                    out.event(json!({"event": "artifact_copied", "path": a, "entries": n, "to": dir.join(&rel)}))?;
                }
            }
            // A failed step may not have produced its artifacts; say so but keep its exit code.
            Err(AgentError::Remote { message, .. }) if code != 0 => {
                eprintln!("cordon: artifact {a} not copied: {message}");
            }
            Err(e) => return Err(RunError::Artifact(a.clone(), e)),
        }
    }
    Ok(code)
}

/// Where a guest artifact path lands under the artifacts dir: relative to
/// /workspace when inside it, else the absolute path without its leading `/`.
fn artifact_host_path(guest: &str) -> String {
    let rel = match guest.strip_prefix(GUEST_WORKSPACE) {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
        _ => guest,
    };
    rel.trim_start_matches('/').to_string()
}

async fn run_step(
    sb: &Sandbox,
    step: &Step,
    forward_stdin: bool,
    out: &mut Output,
    sig: &mut Signals,
    deadline: Option<tokio::time::Instant>,
) -> Result<StepEnd, RunError> {
    let req = Exec {
        argv: step.argv.clone(),
        env: step.env.clone(),
        cwd: step.cwd.clone(),
        timeout_ms: step.timeout.map(|d| d.as_millis() as u64),
        stdin: forward_stdin,
        ..Default::default()
    };
    let agent_err = |e| RunError::Agent(e, String::new());
    let mut h: ExecHandle = sb.client.exec(req).await.map_err(agent_err)?;
    let pid = match h.started().await {
        Ok(pid) => pid,
        Err(StartError::Failed { reason, message }) => return Ok(StepEnd::StartFailed(reason, message)),
        Err(StartError::Agent(e)) => return Err(agent_err(e)),
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
    // Why the step is being stopped, if it is: a signal number, or 0 for the job timeout.
    let mut stopping: Option<i32> = None;
    let mut kill_at: Option<tokio::time::Instant> = None;
    let end = loop {
        tokio::select! {
            ev = h.next_event() => match ev.map_err(agent_err)? {
                ExecEvent::Stdout(b) => out.data(&step.name, 0, &b)?,
                ExecEvent::Stderr(b) => out.data(&step.name, 1, &b)?,
                ExecEvent::Exit(st) => break match stopping {
                    Some(0) => StepEnd::JobTimedOut(Some(st)),
                    Some(sig) => StepEnd::Cancelled(sig, Some(st)),
                    None => StepEnd::Exited(st),
                },
            },
            _ = sig.int.recv() => {
                stopping.get_or_insert(libc::SIGINT);
                h.signal(libc::SIGTERM).await.map_err(agent_err)?;
                kill_at.get_or_insert(tokio::time::Instant::now() + Duration::from_secs(2));
            }
            _ = sig.term.recv() => {
                stopping.get_or_insert(libc::SIGTERM);
                h.signal(libc::SIGTERM).await.map_err(agent_err)?;
                kill_at.get_or_insert(tokio::time::Instant::now() + Duration::from_secs(2));
            }
            _ = sleep_until_opt(deadline), if stopping.is_none() => {
                stopping = Some(0);
                h.signal(libc::SIGTERM).await.map_err(agent_err)?;
                kill_at.get_or_insert(tokio::time::Instant::now() + Duration::from_secs(2));
            }
            _ = sleep_until_opt(kill_at) => {
                h.signal(libc::SIGKILL).await.map_err(agent_err)?;
                kill_at = None;
            }
        }
    };
    if let Some(t) = stdin_task {
        t.abort();
    }
    Ok(end)
}

async fn start(plan: &Plan) -> Result<Sandbox, RunError> {
    let log = |m: &str| eprintln!("cordon: {m}");
    match plan.isolation {
        Isolation::LocalAgent => Ok(backend::local::start(plan).await?),
        Isolation::Vm => Ok(crate::vm::start(plan, &log).await?),
        Isolation::Namespace => {
            Err(BackendError::Unavailable("namespace", "the namespace backend is not built yet".into()).into())
        }
        Isolation::Auto => {
            // An explicitly named accelerator means the VM; otherwise only a
            // usable hardware one does.
            let vm_ok = plan.accel != AccelChoice::Auto || crate::vm::accel::resolve(AccelChoice::Auto).is_ok();
            if vm_ok {
                return Ok(crate::vm::start(plan, &log).await?);
            }
            let why = crate::vm::accel::resolve(AccelChoice::Auto).err().unwrap_or_default();
            Err(BackendError::Unavailable(
                "auto",
                format!(
                    "{why}; the namespace fallback is not built yet (pass --accel tcg to use the VM under emulation)"
                ),
            )
            .into())
        }
    }
}

async fn sleep_until_opt(d: Option<tokio::time::Instant>) {
    match d {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn report_step(out: &mut Output, step: &Step, end: &StepEnd, code: u8) -> Result<(), RunError> {
    match end {
        StepEnd::Exited(st) | StepEnd::Cancelled(_, Some(st)) | StepEnd::JobTimedOut(Some(st)) => {
            let cancelled = matches!(end, StepEnd::Cancelled(..));
            let job_timed_out = matches!(end, StepEnd::JobTimedOut(_));
            if out.json {
                out.event(json!({"event": "step_exited", "step": step.name, "exit_code": st.code, "signal": st.signal,
                    "timed_out": st.timed_out || job_timed_out, "job_timed_out": job_timed_out, "oom_killed": st.oom_killed,
                    "cancelled": cancelled, "wall_ms": st.wall_ms, "peak_rss_kb": st.peak_rss_kb,
                    "output_cut": st.output_cut, "cordon_exit_code": code}))?;
                return Ok(());
            }
            if st.output_cut {
                eprintln!(
                    "cordon: step {:?}: output was cut: a process outside the step's tree kept its stdout/stderr open",
                    step.name
                );
            }
            if job_timed_out {
                eprintln!("cordon: the job timed out during step {:?}; its process tree was killed", step.name);
            } else if st.timed_out {
                eprintln!(
                    "cordon: step {:?} timed out after {} ms; its process tree was killed",
                    step.name, st.wall_ms
                );
            } else if cancelled {
                eprintln!("cordon: step {:?} cancelled", step.name);
            } else if st.oom_killed {
                eprintln!("cordon: step {:?} was killed by the out-of-memory killer", step.name);
            } else if let Some(sig) = st.signal {
                eprintln!("cordon: step {:?} was killed by signal {sig}", step.name);
            }
        }
        StepEnd::Cancelled(sig, None) => eprintln!("cordon: step {:?} cancelled by signal {sig}", step.name),
        StepEnd::JobTimedOut(None) => eprintln!("cordon: the job timed out during step {:?}", step.name),
        StepEnd::StartFailed(reason, message) => {
            if out.json {
                out.event(json!({"event": "step_failed_to_start", "step": step.name, "reason": reason, "message": message, "cordon_exit_code": code}))?;
            } else {
                eprintln!("cordon: step {:?} could not start: {message}", step.name);
            }
        }
    }
    Ok(())
}

/// Where step output goes: raw to stdout/stderr (optionally prefixed per
/// line), or JSON events on stdout.
struct Output {
    json: bool,
    prefix: bool,
    at_line_start: [bool; 2],
}

impl Output {
    fn data(&mut self, step: &str, which: usize, b: &[u8]) -> Result<(), RunError> {
        let stream = if which == 0 { "stdout" } else { "stderr" };
        if self.json {
            let ev = match std::str::from_utf8(b) {
                Ok(s) => json!({"event": "output", "step": step, "stream": stream, "data": s}),
                Err(_) => json!({"event": "output", "step": step, "stream": stream, "data_hex": hex::encode(b)}),
            };
            return self.event(ev);
        }
        let buf;
        let bytes = if self.prefix {
            buf = prefix_lines(b, &format!("[{step}] "), &mut self.at_line_start[which]);
            &buf[..]
        } else {
            b
        };
        let res = if which == 0 {
            let mut o = std::io::stdout().lock();
            o.write_all(bytes).and_then(|_| o.flush())
        } else {
            let mut e = std::io::stderr().lock();
            e.write_all(bytes).and_then(|_| e.flush())
        };
        res.map_err(RunError::Output)
    }

    fn event(&mut self, v: serde_json::Value) -> Result<(), RunError> {
        let mut o = std::io::stdout().lock();
        serde_json::to_writer(&mut o, &v).map_err(|e| RunError::Output(e.into()))?;
        o.write_all(b"\n").and_then(|_| o.flush()).map_err(RunError::Output)
    }
}

/// Inserts `prefix` at the start of every line; `at_start` carries line
/// state across chunks.
fn prefix_lines(b: &[u8], prefix: &str, at_start: &mut bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len() + prefix.len() * 4);
    for &c in b {
        if *at_start {
            out.extend_from_slice(prefix.as_bytes());
            *at_start = false;
        }
        out.push(c);
        if c == b'\n' {
            *at_start = true;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_artifact_host_path_table() {
        assert_eq!(artifact_host_path("/workspace/out/app"), "out/app");
        assert_eq!(artifact_host_path("/workspace/workspace/x"), "workspace/x");
        assert_eq!(artifact_host_path("/workspacefoo/x"), "workspacefoo/x");
        assert_eq!(artifact_host_path("/etc/hostname"), "etc/hostname");
    }

    #[test]
    fn test_prefix_lines_across_chunks() {
        let mut s = true;
        let mut out = prefix_lines(b"a\nb", "[x] ", &mut s);
        out.extend(prefix_lines(b"c\n\nd", "[x] ", &mut s));
        assert_eq!(String::from_utf8(out).unwrap(), "[x] a\n[x] bc\n[x] \n[x] d");
    }
}
