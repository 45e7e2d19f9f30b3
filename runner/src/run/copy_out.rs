//! Copies the artifacts out after the steps: each one received into a spool
//! file in the sandbox's private scratch dir (so a SIGKILL leaves nothing),
//! within what is left of the run's size limit, staged and moved into place
//! by `crate::artifacts`. One bad or missing artifact is named and the
//! others are still copied.

use serde_json::json;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::{RunError, Watch};
use crate::agent::AgentError;
use crate::artifacts::{self, ArtifactError, Destination};
use crate::backend::Sandbox;
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
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (e, mut src): (&dyn std::error::Error, _) = match self {
            Failure::Agent(AgentError::Remote { message, .. }) => return write!(f, "{message}"),
            Failure::Agent(e) => (e, std::error::Error::source(e)),
            Failure::Host(e) => (e, std::error::Error::source(e)),
        };
        write!(f, "{e}")?;
        while let Some(s) = src {
            write!(f, ": {s}")?;
            src = s.source();
        }
        Ok(())
    }
}

pub async fn copy_all(
    plan: &Plan,
    sb: &Sandbox,
    out: &mut super::Output,
    watch: &mut Watch<'_>,
) -> Result<CopyEnd, RunError> {
    let mut left = plan.max_artifacts_size;
    let mut failed = 0;
    for (i, guest) in plan.artifacts.iter().enumerate() {
        let dest = destination(plan, guest);
        let work = sb.scratch.join(format!("artifact-{i}"));
        let res = tokio::select! {
            r = copy_one(sb, guest, &dest, &work, left) => r,
            code = watch.interrupted() => return Ok(CopyEnd::Interrupted(code)),
        };
        let _ = tokio::fs::remove_dir_all(&work).await;
        match res {
            Ok(c) => {
                left = left.saturating_sub(c.size);
                for s in &c.skipped {
                    say(&format!("artifact {guest}: {s}"));
                }
                if c.replaced {
                    say(&format!("artifact {guest}: replaced what an earlier run left at {}", dest.path().display()));
                }
                if out.json {
                    out.event(json!({"event": "artifact_copied", "path": guest, "entries": c.entries,
                        "bytes": c.size, "to": dest.path(), "replaced": c.replaced, "skipped": c.skipped})).await?;
                }
            }
            Err(Failure::Agent(
                e @ (AgentError::Lost(_) | AgentError::Protocol(_) | AgentError::Timeout(..) | AgentError::Io(_)),
            )) => {
                return Err(RunError::Artifact(guest.clone(), e));
            }
            Err(why) => {
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
    replaced: bool,
}

async fn copy_one(sb: &Sandbox, guest: &str, dest: &Destination, work: &Path, limit: u64) -> Result<Copied, Failure> {
    let io = |e| Failure::Agent(AgentError::Io(e));
    tokio::fs::create_dir(work).await.map_err(io)?;
    let spool_path = work.join("archive.tar");
    let mut spool = tokio::fs::File::create(&spool_path).await.map_err(io)?;
    let (is_dir, size) =
        sb.client.receive_archive(guest, &mut spool, limit, super::AGENT_SILENCE).await.map_err(Failure::Agent)?;
    drop(spool);
    let (dest, work) = (dest.clone(), work.to_path_buf());
    let name = Path::new(guest).file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "workspace".into());
    tokio::task::spawn_blocking(move || {
        let root = work.join("staged");
        std::fs::create_dir(&root).map_err(|e| Failure::Agent(AgentError::Io(e)))?;
        let f = std::fs::File::open(&spool_path).map_err(|e| Failure::Agent(AgentError::Io(e)))?;
        let staged = artifacts::stage(std::io::BufReader::new(f), &root, !is_dir).map_err(Failure::Host)?;
        let _ = std::fs::remove_file(&spool_path);
        let src: PathBuf = if is_dir { root } else { root.join(&name) };
        if std::fs::symlink_metadata(&src).is_err() {
            let mut what = format!("file named {}", name.to_string_lossy());
            if !staged.skipped.is_empty() {
                what = format!("{what} ({})", staged.skipped.join("; "));
            }
            return Err(Failure::Host(ArtifactError::Missing(what)));
        }
        let replaced = artifacts::install(&src, &dest).map_err(Failure::Host)?;
        Ok(Copied { size, entries: staged.entries, skipped: staged.skipped, replaced })
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
