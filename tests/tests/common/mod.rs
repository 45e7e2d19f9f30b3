//! Shared helpers: locate the built binaries and start a real agent process
//! connected over a socketpair. Missing binaries fail loudly.
#![allow(dead_code)]

use cordon::agent::{AgentClient, ExecEvent, ExecHandle};
use cordon_protocol::{Exec, ExitStatus};
use std::path::PathBuf;
use std::time::Duration;

/// target/debug (or release), from the test executable's own path.
pub fn target_profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent().and_then(|p| p.parent()).expect("test binary lives in target/<profile>/deps").to_path_buf()
}

pub fn cordon_bin() -> PathBuf {
    let p = target_profile_dir().join("cordon");
    assert!(p.is_file(), "{} missing: run `cargo build --workspace` first (scripts/test.sh does)", p.display());
    p
}

/// The statically linked agent from scripts/build-agent.sh.
pub fn static_agent_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CORDON_AGENT") {
        return PathBuf::from(p);
    }
    let p = target_profile_dir()
        .parent()
        .expect("target dir")
        .join("agent")
        .join(cordon::AGENT_TRIPLE)
        .join("release")
        .join("cordon-agent");
    assert!(p.is_file(), "{} missing: run scripts/build-agent.sh first (scripts/test.sh does)", p.display());
    p
}

pub struct Agent {
    pub client: AgentClient,
    pub child: ChildGuard,
}

/// Kills and reaps the agent when the test is done with it.
pub struct ChildGuard(pub std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A raw connected socket to a fresh agent (no handshake done).
pub fn spawn_raw_agent(token: &str) -> (std::os::unix::net::UnixStream, std::process::Child) {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    let mut cmd = cordon::backend::local::agent_command(&static_agent_bin(), &theirs, token);
    cmd.env("CORDON_AGENT_LOG", "error");
    let child = cmd.spawn().expect("spawning cordon-agent");
    drop(theirs);
    (ours, child)
}

pub async fn spawn_agent() -> Agent {
    let (sock, child) = spawn_raw_agent("test-token");
    sock.set_nonblocking(true).unwrap();
    let stream = tokio::net::UnixStream::from_std(sock).unwrap();
    let client = AgentClient::connect(stream, "test-token", Duration::from_secs(10)).await.expect("agent handshake");
    Agent { client, child: ChildGuard(child) }
}

pub fn exec(argv: &[&str]) -> Exec {
    Exec { argv: argv.iter().map(|s| s.to_string()).collect(), ..Default::default() }
}

pub struct Collected {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub status: ExitStatus,
}

pub async fn collect(h: &mut ExecHandle) -> Collected {
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    loop {
        match h.next_event().await.expect("exec event") {
            ExecEvent::Stdout(b) => stdout.extend_from_slice(&b),
            ExecEvent::Stderr(b) => stderr.extend_from_slice(&b),
            ExecEvent::Exit(status) => return Collected { stdout, stderr, status },
        }
    }
}

pub async fn run(client: &AgentClient, req: Exec) -> Collected {
    let mut h = client.exec(req).await.expect("exec request");
    h.started().await.expect("exec started");
    collect(&mut h).await
}

/// Whether `pid` is a live (non-zombie) process.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !matches!(s.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next()), Some("Z") | Some("X")),
        Err(_) => false,
    }
}

/// Polls `f` until it holds or `limit` passes (a bound on waiting, not a
/// performance assertion).
pub async fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let until = std::time::Instant::now() + limit;
    while std::time::Instant::now() < until {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f()
}
