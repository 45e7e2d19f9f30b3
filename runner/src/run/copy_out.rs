//! Copies the artifacts out after the steps: each one received into a spool
//! file in the sandbox's private scratch dir (so a SIGKILL leaves nothing),
//! within what is left of the run's size and entry limits, staged and moved
//! into place by `crate::artifacts`. One bad or missing artifact is named
//! and the others are still copied. The whole copy-out has its own deadline
//! (a guest that stalls the agent cannot stretch it), and Ctrl-C, SIGTERM,
//! the job deadline or that deadline cancel the unpacking on the host too.

use serde_json::json;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{RunError, Watch};
use crate::agent::AgentError;
use crate::artifacts::{self, ArtifactError, Destination};
use crate::backend::Sandbox;
use crate::exit;
use crate::plan::{Plan, GUEST_WORKSPACE};
use crate::term::say;

/// How copying the artifacts ended.
pub enum CopyEnd {
    /// Every artifact was handled; the count of those not copied.
    Done { failed: usize },
    /// A deadline or signal cut it short: the exit code.
    Interrupted(u8),
}

/// Where a guest artifact path lands below the artifacts dir: relative to
/// /workspace when inside it, else the absolute path without its leading `/`.
pub fn artifact_host_path(guest: &str) -> String {
    let rel = match guest.strip_prefix(GUEST_WORKSPACE) {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
        _ => guest,
    };
    rel.trim_start_matches('/').to_string()
}

fn destination(plan: &Plan, guest: &str) -> Destination {
    let mut below = plan.artifacts_dir.below.clone();
    below.extend(Path::new(&artifact_host_path(guest)).components().filter_map(|c| match c {
        std::path::Component::Normal(n) => Some(n.to_os_string()),
        _ => None,
    }));
    if below.is_empty() {
        // `/workspace` itself with a command-line artifacts dir: its contents
        // land in a directory named after it.
        below.push(OsString::from("workspace"));
    }
    Destination { anchor: plan.artifacts_dir.anchor.clone(), below }
}

/// Why one artifact was not copied, for the line that names it.
enum Failure {
    Agent(AgentError),
    Host(ArtifactError),
    /// Not about the artifact: the run itself failed (writing output).
    Run(RunError),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (e, mut src): (&dyn std::error::Error, _) = match self {
            Failure::Agent(AgentError::Remote { message, .. }) => return write!(f, "{message}"),
            Failure::Agent(e) => (e, std::error::Error::source(e)),
            Failure::Host(e) => (e, std::error::Error::source(e)),
            Failure::Run(e) => (e, std::error::Error::source(e)),
        };
        write!(f, "{e}")?;
        while let Some(s) = src {
            write!(f, ": {s}")?;
            src = s.source();
        }
        Ok(())
    }
}

/// After Ctrl-C or a deadline, how long the unpacking thread gets to see
/// the cancel flag (it looks between entries and 64 KiB chunks) before the
/// run goes on without it.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// What is left of the run's limits on artifacts.
#[derive(Clone, Copy)]
struct Left {
    bytes: u64,
    entries: u64,
}

/// Copies every artifact, within the run's limits and the copy-out's own
/// deadline (`--artifacts-timeout`), answering Ctrl-C and the job deadline.
/// Interrupted, it cancels the unpacking on the host and never installs
/// anything after that.
pub async fn copy_all(
    plan: &Plan,
    sb: &Sandbox,
    out: &mut super::Output,
    watch: &mut Watch<'_>,
) -> Result<CopyEnd, RunError> {
    if plan.artifacts.is_empty() {
        return Ok(CopyEnd::Done { failed: 0 });
    }
    let deadline = tokio::time::Instant::now() + plan.artifacts_timeout;
    let umask = artifacts::process_umask();
    if let Err(e) = artifacts::prepare_dir(&plan.artifacts_dir, plan.artifacts_dir_from_job) {
        let why = Failure::Host(e);
        say(&format!("no artifact copied: {why}"));
        for guest in &plan.artifacts {
            if out.json {
                out.event(json!({"event": "artifact_failed", "path": guest, "message": why.to_string()})).await?;
            }
        }
        return Ok(CopyEnd::Done { failed: plan.artifacts.len() });
    }
    let mut left = Left { bytes: plan.max_artifacts_size, entries: artifacts::MAX_ENTRIES };
    let mut failed = 0;
    for (i, guest) in plan.artifacts.iter().enumerate() {
        let dest = destination(plan, guest);
        let work = sb.scratch.join(format!("artifact-{i}"));
        let cancel = artifacts::Cancel::default();
        // Closed when the unpacking thread (or the copy before it) is done.
        let (done, finished) = tokio::sync::oneshot::channel::<()>();
        let job = Job { guest, dest: &dest, work: &work, left, umask, cancel: cancel.clone(), done };
        let ended = tokio::select! {
            r = copy_one(sb, out, job) => Ok(r),
            code = watch.interrupted() => Err(code),
            _ = tokio::time::sleep_until(deadline) => {
                say(&format!(
                    "copying the artifacts took longer than {:?} (--artifacts-timeout): {guest} and any after it are not copied",
                    plan.artifacts_timeout
                ));
                Err(exit::TIMED_OUT)
            }
        };
        let res = match ended {
            Ok(r) => r,
            Err(code) => {
                cancel.cancel();
                let _ = tokio::time::timeout(STOP_GRACE, finished).await;
                let _ = tokio::fs::remove_dir_all(&work).await;
                return Ok(CopyEnd::Interrupted(code));
            }
        };
        let _ = tokio::fs::remove_dir_all(&work).await;
        match res {
            Ok(c) => {
                left.bytes = left.bytes.saturating_sub(c.size);
                left.entries = left.entries.saturating_sub(c.entries);
                for s in &c.skipped {
                    say(&format!("artifact {guest}: {s}"));
                }
                if c.skipped_more > 0 {
                    say(&format!("artifact {guest}: {} more entries skipped", c.skipped_more));
                }
                if c.replaced {
                    say(&format!("artifact {guest}: replaced what an earlier run left at {}", dest.path().display()));
                }
                if out.json {
                    out.event(json!({"event": "artifact_copied", "path": guest, "entries": c.entries,
                        "bytes": c.size, "to": dest.path(), "replaced": c.replaced, "skipped": c.skipped,
                        "skipped_more": c.skipped_more}))
                        .await?;
                }
            }
            Err(Failure::Run(e)) => return Err(e),
            Err(Failure::Agent(
                e @ (AgentError::Lost(_) | AgentError::Protocol(_) | AgentError::Timeout(..) | AgentError::Io(_)),
            )) => {
                return Err(RunError::Artifact(guest.clone(), e));
            }
            Err(why) => {
                if matches!(why, Failure::Host(ArtifactError::TooManyEntries)) {
                    left.entries = 0;
                }
                failed += 1;
                say(&format!("artifact {guest} not copied: {why}"));
                if out.json {
                    out.event(json!({"event": "artifact_failed", "path": guest, "message": why.to_string()})).await?;
                }
            }
        }
    }
    Ok(CopyEnd::Done { failed })
}

struct Copied {
    size: u64,
    entries: u64,
    skipped: Vec<String>,
    skipped_more: u64,
    replaced: bool,
}

/// One artifact to copy.
struct Job<'a> {
    guest: &'a str,
    dest: &'a Destination,
    work: &'a Path,
    left: Left,
    umask: u32,
    cancel: artifacts::Cancel,
    /// Dropped when the work on the host is over.
    done: tokio::sync::oneshot::Sender<()>,
}

async fn copy_one(sb: &Sandbox, out: &mut super::Output, job: Job<'_>) -> Result<Copied, Failure> {
    let io = |e| Failure::Agent(AgentError::Io(e));
    let Job { guest, dest, work, left, umask, cancel, done } = job;
    tokio::fs::create_dir(work).await.map_err(io)?;
    let spool_path = work.join("archive.tar");
    let mut spool = tokio::fs::File::create(&spool_path).await.map_err(io)?;
    let (is_dir, size) =
        sb.client.receive_archive(guest, &mut spool, left.bytes, super::AGENT_SILENCE).await.map_err(Failure::Agent)?;
    drop(spool);
    if out.json {
        out.event(json!({"event": "artifact_staging", "path": guest, "bytes": size})).await.map_err(Failure::Run)?;
    }
    let (dest, work) = (dest.clone(), work.to_path_buf());
    let name = Path::new(guest).file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "workspace".into());
    let opts = artifacts::StageOptions { single_file: !is_dir, umask, max_entries: left.entries, cancel };
    tokio::task::spawn_blocking(move || {
        let _done = done;
        let root = work.join("staged");
        std::fs::create_dir(&root).map_err(|e| Failure::Agent(AgentError::Io(e)))?;
        let f = std::fs::File::open(&spool_path).map_err(|e| Failure::Agent(AgentError::Io(e)))?;
        let staged = artifacts::stage(std::io::BufReader::new(f), &root, &opts).map_err(Failure::Host)?;
        let _ = std::fs::remove_file(&spool_path);
        let src: PathBuf = if is_dir { root } else { root.join(&name) };
        if std::fs::symlink_metadata(&src).is_err() {
            let mut what = format!("file named {}", name.to_string_lossy());
            if !staged.skipped.is_empty() {
                what = format!("{what} ({})", staged.skipped.join("; "));
            }
            return Err(Failure::Host(ArtifactError::Missing(what)));
        }
        let replaced = artifacts::install(&src, &dest, &opts.cancel).map_err(Failure::Host)?;
        Ok(Copied {
            size,
            entries: staged.entries,
            skipped: staged.skipped,
            skipped_more: staged.skipped_more,
            replaced,
        })
    })
    .await
    .map_err(|e| Failure::Agent(AgentError::Io(std::io::Error::other(e))))?
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
        assert_eq!(artifact_host_path("/workspace"), "");
    }
}
