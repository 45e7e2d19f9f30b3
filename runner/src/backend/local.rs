//! The local-agent backend, for development only: the agent runs as a plain
//! host process connected over a socketpair. It isolates nothing and says so.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use super::{find_agent, new_token, BackendError, Sandbox};
use crate::agent::AgentClient;
use crate::plan::Plan;

struct Guard {
    child: tokio::process::Child,
    _scratch: tempfile::TempDir,
}

impl super::SandboxGuard for Guard {}

impl Drop for Guard {
    fn drop(&mut self) {
        // The agent kills its steps when the connection closes; make sure the
        // agent itself is gone too.
        let _ = self.child.start_kill();
    }
}

/// A command that starts the agent serving `conn` (one end of a connected
/// socket) as its fd 3, dying with this process. Drop `conn` after spawning.
/// The token goes in the environment, never argv (ps shows argv to every
/// local user; /proc/PID/environ only to the owner); the agent removes it
/// from its environment before any step could inherit it.
pub fn agent_command(agent: &Path, conn: &impl AsRawFd, token: &str) -> std::process::Command {
    let fd = conn.as_raw_fd();
    let mut cmd = std::process::Command::new(agent);
    cmd.arg("--listen").arg("fd:3").env(cordon_protocol::boot::TOKEN_ENV, token).stdin(std::process::Stdio::null());
    crate::procs::pass_fd(&mut cmd, fd, 3);
    crate::procs::die_with_parent(&mut cmd);
    cmd
}

pub async fn start(plan: &Plan) -> Result<Sandbox, BackendError> {
    let agent = find_agent(plan.agent.as_deref())?;
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()
        .map_err(|source| BackendError::Spawn { what: "socketpair".into(), source })?;
    let token = new_token();
    let scratch = tempfile::Builder::new()
        .prefix("cordon-")
        // Private to this user (tempfile leaves the mode to the umask).
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir()
        .map_err(|source| BackendError::Spawn { what: "temp dir".into(), source })?;
    let cmd = agent_command(&agent, &theirs, &token);
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    let child = cmd.spawn().map_err(|source| BackendError::Spawn { what: agent.display().to_string(), source })?;
    drop(theirs);
    ours.set_nonblocking(true).map_err(|source| BackendError::Spawn { what: "socketpair".into(), source })?;
    let stream = tokio::net::UnixStream::from_std(ours)
        .map_err(|source| BackendError::Spawn { what: "socketpair".into(), source })?;
    let client = AgentClient::connect(stream, &token, Duration::from_secs(10)).await.map_err(BackendError::Connect)?;
    Ok(Sandbox {
        client,
        description: "local-agent (development backend: NO ISOLATION, steps run as plain host processes)".into(),
        scratch: scratch.path().to_path_buf(),
        guard: Box::new(Guard { child, _scratch: scratch }),
    })
}
