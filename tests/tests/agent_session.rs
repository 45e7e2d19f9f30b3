//! The agent serves exactly one authenticated session: connections that
//! stay silent or present a bad token neither block the runner nor use up
//! the slot; once the runner is in, every other connection is refused, also
//! after its session ends. The token comes from the environment, never argv,
//! and steps do not inherit it.

mod common;

use common::*;
use cordon::agent::AgentClient;
use cordon_protocol::frame::{encode, HEADER_LEN};
use cordon_protocol::{ErrorCode, Frame, FrameReader, Hello, Kind, Message, VERSION_MAX, VERSION_MIN};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

fn hello(token: &str) -> Vec<u8> {
    let h =
        Hello { version_min: VERSION_MIN, version_max: VERSION_MAX, runner_version: "t".into(), token: token.into() };
    encode(&Frame::new(0, Kind::CONTROL, 0, Message::Hello(h).to_bytes())).unwrap()
}

/// Sends Hello with `token` and returns the control messages until the agent
/// closes or goes quiet; an empty list when the connection is refused.
fn try_hello(path: &std::path::Path, token: &str) -> Vec<Message> {
    let Ok(mut s) = UnixStream::connect(path) else { return vec![] };
    let _ = s.write_all(&hello(token));
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut buf = Vec::new();
    let mut tmp = [0u8; 65536];
    while let Ok(n) = s.read(&mut tmp) {
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut r = FrameReader::new(&buf[..]);
    let mut out = Vec::new();
    let mut used = 0;
    while let Ok(Some(f)) = rt.block_on(r.read_frame()) {
        used += HEADER_LEN + f.body.len();
        if f.kind == Kind::CONTROL {
            out.push(Message::from_bytes(&f.body).unwrap());
        }
    }
    assert_eq!(used, buf.len(), "trailing garbage from the agent");
    out
}

fn welcomed(msgs: &[Message]) -> bool {
    msgs.iter().any(|m| matches!(m, Message::Welcome { .. }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_agent_serves_exactly_one_authenticated_session() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.sock");
    let child = std::process::Command::new(static_agent_bin())
        .arg("--listen")
        .arg(format!("unix:{}", path.display()))
        .env("CORDON_AGENT_TOKEN", "right")
        .env("CORDON_AGENT_LOG", "error")
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut child = ChildGuard(child);
    assert!(eventually(Duration::from_secs(10), || path.exists()).await, "the agent never listened");

    // A peer that connects and says nothing must not keep the runner out.
    let _silent = UnixStream::connect(&path).unwrap();
    // A bad token is refused and does not take the slot.
    let p = path.clone();
    let bad = tokio::task::spawn_blocking(move || try_hello(&p, "wrong")).await.unwrap();
    assert!(matches!(bad.as_slice(), [Message::Ready(_), Message::Error { code: ErrorCode::BadToken, .. }]), "{bad:?}");

    let stream = tokio::net::UnixStream::connect(&path).await.unwrap();
    let client = AgentClient::connect(stream, "right", Duration::from_secs(10)).await.expect("the runner gets in");
    let out = run(&client, exec(&["sh", "-c", "echo ${CORDON_AGENT_TOKEN:-unset}"])).await;
    assert_eq!(out.stdout, b"unset\n", "steps must not inherit the token");

    // While the session lives, the right token is worth nothing to anyone else.
    let p = path.clone();
    let second = tokio::task::spawn_blocking(move || try_hello(&p, "right")).await.unwrap();
    assert!(!welcomed(&second), "{second:?}");

    // Nor after it ends without Shutdown: the agent does not take a new runner.
    drop(client);
    let p = path.clone();
    let after = tokio::task::spawn_blocking(move || try_hello(&p, "right")).await.unwrap();
    assert!(!welcomed(&after), "{after:?}");
    assert!(eventually(Duration::from_secs(40), || matches!(child.0.try_wait(), Ok(Some(_)))).await);
}

#[test]
fn test_agent_without_a_token_authenticates_nobody() {
    let (mut s, child) = {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let mut cmd = cordon::backend::local::agent_command(&static_agent_bin(), &theirs, "");
        cmd.env_remove("CORDON_AGENT_TOKEN").env("CORDON_AGENT_LOG", "error");
        let child = cmd.spawn().unwrap();
        drop(theirs);
        (ours, ChildGuard(child))
    };
    s.write_all(&hello("")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    assert!(text.contains("BadToken") || text.contains("bad_token"), "{text}");
    assert!(!text.contains("Welcome") && !text.contains("welcome"), "{text}");
    drop(child);
}
