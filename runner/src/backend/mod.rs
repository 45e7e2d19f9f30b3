//! Sandboxes: something that runs an agent and hands back a connected
//! AgentClient. Dropping a Sandbox tears everything down.

pub mod local;
pub mod namespace;
pub mod vm;

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

/// The backend a plan runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Vm,
    Namespace,
    LocalAgent,
}

/// The one `auto` rule (used by `cordon run` and `cordon doctor`): the VM when
/// `--accel` names an accelerator or a hardware one is usable, else
/// namespaces. Returns the choice and, when `auto` made it, why.
pub fn select(isolation: crate::plan::Isolation, accel: crate::plan::AccelChoice) -> (Kind, Option<String>) {
    use crate::plan::{AccelChoice, Isolation};
    match isolation {
        Isolation::Vm => (Kind::Vm, None),
        Isolation::Namespace => (Kind::Namespace, None),
        Isolation::LocalAgent => (Kind::LocalAgent, None),
        Isolation::Auto if accel != AccelChoice::Auto => {
            (Kind::Vm, Some(format!("--accel {accel:?} names the VM's accelerator").to_lowercase()))
        }
        Isolation::Auto => match vm::accel::resolve(AccelChoice::Auto) {
            Ok(a) => (Kind::Vm, Some(format!("{} is usable", a.as_str()))),
            Err(why) => (Kind::Namespace, Some(why)),
        },
    }
}

/// Starts the sandbox the plan asks for.
/// `pre`: the helpers `main` forked for it (prefork.rs), or none.
pub async fn start(
    plan: &crate::plan::Plan,
    pre: crate::prefork::Prefork,
    log: &dyn Fn(&str),
) -> Result<Sandbox, BackendError> {
    let (kind, why) = select(plan.isolation, plan.accel);
    if let (Kind::Namespace, Some(why)) = (kind, &why) {
        log(&format!("isolation: namespaces, because {why}"));
    }
    match kind {
        Kind::Vm => vm::start(plan, log).await,
        Kind::Namespace => namespace::start(plan, pre, log).await,
        Kind::LocalAgent => local::start(plan).await,
    }
}

/// The gated link for `plan` (see `netfilter::gated`).
pub(crate) fn gated_link(
    plan: &crate::plan::Plan,
    passt: &std::path::Path,
    dir: &std::path::Path,
    janitor: Option<&crate::janitor::Janitor>,
) -> Result<(crate::netfilter::gated::GatedLink, std::os::unix::net::UnixStream), BackendError> {
    let cfg = crate::netfilter::gated::LinkConfig {
        policy: crate::policy::Policy::new(plan.rules.clone(), plan.net == crate::plan::NetMode::Full),
        passt,
        dir,
        janitor,
        net_log: plan.net_log.clone(),
        passthrough: plan.bench_gate_passthrough,
    };
    crate::netfilter::gated::GatedLink::start(cfg)
        .map_err(|e| BackendError::Spawn { what: e.what.to_string(), source: e.source })
}

/// The passt the gate needs when the plan is gated: an old or missing one
/// is a refusal up front (exit 125), not a hang later.
pub(crate) fn passt_for(plan: &crate::plan::Plan) -> Result<Option<std::path::PathBuf>, BackendError> {
    if !plan.gated() {
        return Ok(None);
    }
    let p = crate::netfilter::passt::find().map_err(|e| BackendError::PolicyUnenforceable(e.to_string()))?;
    Ok(Some(p.path))
}

/// A running sandbox with a connected agent.
pub struct Sandbox {
    pub client: AgentClient,
    /// What the run report says about isolation.
    pub description: String,
    /// The tail of the guest console, for diagnostics when the agent is lost.
    /// A private (0700) directory that lives exactly as long as the sandbox
    /// and is removed even when cordon is SIGKILLed: artifacts are spooled
    /// and staged here.
    pub scratch: std::path::PathBuf,
    /// Keeps backend resources (processes, temp dirs) alive; dropped last.
    pub guard: Box<dyn SandboxGuard>,
}

/// Backend resources; dropping them tears the sandbox down.
pub trait SandboxGuard: Send {
    /// The agent acknowledged Shutdown, so the sandbox is ending by itself
    /// and is worth a short wait before being killed.
    fn shutdown_acked(&mut self) {}

    /// What the sandbox said about itself (the VM's console tail, ns-init's
    /// log), sanitized, for reports when the agent is lost.
    fn diagnostics(&self) -> String {
        String::new()
    }

    /// Out-of-memory kills in the sandbox so far, where the backend counts
    /// them outside the guest (the namespace backend's cgroup); `None` where
    /// the agent reports them itself.
    fn oom_kills(&self) -> Option<u64> {
        None
    }
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

/// Finds the guest agent: an explicit path, else the static build under the
/// workspace's target directory, else one next to this executable. A
/// statically linked candidate wins over a dynamic one (`cargo build` puts a
/// dynamic cordon-agent beside target/*/cordon; the VM cannot run it, and
/// building the image says so with the command that makes the static one).
pub fn find_agent(explicit: Option<&std::path::Path>) -> Result<std::path::PathBuf, BackendError> {
    if let Some(p) = explicit {
        return if p.is_file() { Ok(p.to_path_buf()) } else { Err(BackendError::NoAgent(p.display().to_string())) };
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            // target/{debug,release}/cordon -> target/agent/<triple>/release/cordon-agent
            if let Some(target) = dir.parent() {
                candidates.push(target.join("agent").join(crate::AGENT_TRIPLE).join("release").join("cordon-agent"));
            }
            candidates.push(dir.join("cordon-agent"));
        }
    }
    pick_agent(&candidates).ok_or_else(|| {
        BackendError::NoAgent(candidates.iter().map(|c| c.display().to_string()).collect::<Vec<_>>().join(", "))
    })
}

/// The first static candidate that exists, else the first that exists.
fn pick_agent(candidates: &[std::path::PathBuf]) -> Option<std::path::PathBuf> {
    let present: Vec<&std::path::PathBuf> = candidates.iter().filter(|c| c.is_file()).collect();
    let is_static = |p: &std::path::Path| {
        // The program headers sit near the start; one past 4 KiB counts as dynamic.
        let mut head = vec![0u8; 4096];
        let n = std::fs::File::open(p).and_then(|mut f| std::io::Read::read(&mut f, &mut head)).unwrap_or(0);
        head.truncate(n);
        !crate::image::has_interpreter(&head)
    };
    present.iter().find(|p| is_static(p)).or(present.first()).map(|p| p.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_pick_agent_prefers_static_over_dynamic() {
        let dir = tempfile::tempdir().unwrap();
        let dynamic = dir.path().join("dynamic");
        let fake_static = dir.path().join("static");
        std::fs::copy("/bin/sh", &dynamic).unwrap();
        std::fs::copy("/bin/busybox", &fake_static).unwrap();
        let missing = dir.path().join("missing");
        assert_eq!(pick_agent(&[dynamic.clone(), fake_static.clone()]), Some(fake_static.clone()));
        assert_eq!(pick_agent(&[missing.clone(), dynamic.clone()]), Some(dynamic));
        assert_eq!(pick_agent(&[missing]), None);
    }
}
