//! Sandboxes: something that runs an agent and hands back a connected
//! AgentClient. Dropping a Sandbox tears everything down.

pub mod local;

use crate::agent::{AgentClient, AgentError};

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("backend {0} is not available: {1}")]
    Unavailable(&'static str, String),
    #[error("guest agent binary not found (looked at {0}); build it with scripts/build-agent.sh or pass CORDON_AGENT")]
    NoAgent(String),
    #[error("spawning {what} failed")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to the agent failed")]
    Connect(#[source] AgentError),
    #[error("the sandbox did not boot: {why}{}", if console.is_empty() { String::new() } else { format!("\n--- last console lines ---\n{console}\n---") })]
    Boot { why: String, console: String },
    #[error("the network policy cannot be enforced here: {0}")]
    PolicyUnenforceable(String),
    #[error("preparing the guest image failed")]
    Image(#[source] crate::image::ImageError),
}

/// A running sandbox with a connected agent.
pub struct Sandbox {
    pub client: AgentClient,
    /// What the run report says about isolation.
    pub description: String,
    /// The tail of the guest console, for diagnostics when the agent is lost.
    pub console: Option<std::sync::Arc<crate::vm::console::Console>>,
    /// Keeps backend resources (processes, temp dirs) alive; dropped last.
    pub guard: Box<dyn SandboxGuard>,
}

/// Backend resources; dropping them tears the sandbox down.
pub trait SandboxGuard: Send {
    /// The agent acknowledged Shutdown, so the sandbox is ending by itself
    /// and is worth a short wait before being killed.
    fn shutdown_acked(&mut self) {}
}

impl Sandbox {
    /// Asks the agent to shut down, then tears everything down.
    pub async fn close(mut self) {
        let ack = tokio::time::timeout(
            std::time::Duration::from_secs(3),
            self.client.shutdown(std::time::Duration::from_secs(3)),
        )
        .await;
        if matches!(ack, Ok(Ok(()))) {
            self.guard.shutdown_acked();
        }
    }
}

/// A random per-sandbox token, hex encoded.
pub fn new_token() -> String {
    let mut b = [0u8; 16];
    // getrandom(2) cannot fail for 16 bytes once the pool is initialized;
    // fall back to the clock and pid rather than aborting a run.
    // SAFETY: b is a valid 16-byte buffer.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        b.copy_from_slice(&(t ^ ((std::process::id() as u128) << 64)).to_le_bytes());
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Finds the guest agent: an explicit path, next to this executable, or the
/// static build under the workspace's target directory.
pub fn find_agent(explicit: Option<&std::path::Path>) -> Result<std::path::PathBuf, BackendError> {
    if let Some(p) = explicit {
        return if p.is_file() { Ok(p.to_path_buf()) } else { Err(BackendError::NoAgent(p.display().to_string())) };
    }
    let mut tried = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            let mut candidates = vec![dir.join("cordon-agent")];
            // target/{debug,release}/cordon -> target/agent/<triple>/release/cordon-agent
            if let Some(target) = dir.parent() {
                candidates
                    .insert(0, target.join("agent").join(crate::AGENT_TRIPLE).join("release").join("cordon-agent"));
            }
            for c in candidates {
                if c.is_file() {
                    return Ok(c);
                }
                tried.push(c.display().to_string());
            }
        }
    }
    Err(BackendError::NoAgent(tried.join(", ")))
}
