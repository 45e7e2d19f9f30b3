//! Exec through a real agent process: output, codes, signals, timeouts, trees.

mod common;

use common::*;
use cordon::agent::{ExecEvent, StartError};
use cordon_protocol::{Exec, ExecFailure, PtySize};
use sha2::{Digest, Sha256};
use std::time::Duration;

#[tokio::test]
async fn test_exec_echo_env_cwd() {
    let a = spawn_agent().await;
    let r = run(&a.client, exec(&["echo", "hello", "world"])).await;
    assert_eq!(r.stdout, b"hello world\n");
    assert_eq!(r.status.code, Some(0));

    let dir = tempfile::tempdir().unwrap();
    let req = Exec {
        env: vec![("GREETING".into(), "bonjour".into())],
        cwd: Some(dir.path().to_str().unwrap().into()),
        ..exec(&["sh", "-c", "echo $GREETING; pwd"])
    };
    let r = run(&a.client, req).await;
    assert_eq!(String::from_utf8(r.stdout).unwrap(), format!("bonjour\n{}\n", dir.path().display()));

    let req = Exec { clear_env: true, env: vec![("ONLY".into(), "1".into())], ..exec(&["env"]) };
    let out = String::from_utf8(run(&a.client, req).await.stdout).unwrap();
    assert!(out.contains("ONLY=1"), "{out}");
    assert!(!out.contains("HOME="), "clear_env leaked the agent's environment: {out}");
}

#[tokio::test]
async fn test_exec_stdin_round_trip() {
    let a = spawn_agent().await;
    let mut h = a.client.exec(Exec { stdin: true, ..exec(&["sha256sum"]) }).await.unwrap();
    h.started().await.unwrap();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let w = h.stdin();
    let d2 = data.clone();
    let writer = tokio::spawn(async move {
        w.write(&d2).await.unwrap();
        w.close().await.unwrap();
    });
    let r = collect(&mut h).await;
    writer.await.unwrap();
    let want = hex::encode(Sha256::digest(&data));
    assert_eq!(String::from_utf8(r.stdout).unwrap().split_whitespace().next(), Some(want.as_str()));
}

#[tokio::test]
async fn test_exec_exact_exit_codes() {
    let a = spawn_agent().await;
    for code in [0, 1, 42, 255] {
        let r = run(&a.client, exec(&["sh", "-c", &format!("exit {code}")])).await;
        assert_eq!((r.status.code, r.status.signal, r.status.timed_out), (Some(code), None, false));
    }
}

#[tokio::test]
async fn test_exec_death_by_signal_reported() {
    let a = spawn_agent().await;
    let r = run(&a.client, exec(&["sh", "-c", "kill -TERM $$"])).await;
    assert_eq!((r.status.code, r.status.signal), (None, Some(libc::SIGTERM)));
    let r = run(&a.client, exec(&["sh", "-c", "kill -SEGV $$"])).await;
    assert_eq!(r.status.signal, Some(libc::SIGSEGV));
}

#[tokio::test]
async fn test_exec_timeout_kills_grandchild_ignoring_sigterm() {
    let a = spawn_agent().await;
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("gc.pid");
    // The grandchild ignores SIGTERM (inherited across exec) and sleeps.
    let script = format!("sh -c 'trap \"\" TERM; echo $$ > {p}; exec sleep 1000' & wait", p = pidfile.display());
    let req = Exec { timeout_ms: Some(1000), grace_ms: Some(300), ..exec(&["sh", "-c", &script]) };
    let r = run(&a.client, req).await;
    assert!(r.status.timed_out, "{:?}", r.status);
    let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    assert!(!alive(pid), "grandchild {pid} survived the timeout");
}

#[tokio::test]
async fn test_exec_leader_exit_reaps_background_children() {
    let a = spawn_agent().await;
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("bg.pid");
    let script = format!("sleep 1000 >/dev/null 2>&1 & echo $! > {p}", p = pidfile.display());
    let r = run(&a.client, Exec { grace_ms: Some(200), ..exec(&["sh", "-c", &script]) }).await;
    assert_eq!(r.status.code, Some(0));
    let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    assert!(!alive(pid), "background process {pid} outlived its step");
}

#[tokio::test]
async fn test_exec_signal_request_reaches_tree() {
    let a = spawn_agent().await;
    let mut h = a.client.exec(exec(&["sh", "-c", "echo up; sleep 1000"])).await.unwrap();
    h.started().await.unwrap();
    assert_eq!(h.next_event().await.unwrap(), ExecEvent::Stdout("up\n".into()));
    h.signal(libc::SIGKILL).await.unwrap();
    let r = collect(&mut h).await;
    assert_eq!(r.status.signal, Some(libc::SIGKILL));
    assert!(!r.status.timed_out);
}

#[tokio::test]
async fn test_exec_200mb_stdout_intact_stderr_separate() {
    let a = spawn_agent().await;
    let total = 200_000_000usize;
    let script = format!("(yes err | head -c 3000000 >&2) & yes abcdefghij | head -c {total}; wait");
    let r = run(&a.client, exec(&["sh", "-c", &script])).await;
    assert_eq!(r.status.code, Some(0));
    assert_eq!(r.stdout.len(), total);
    let want: Vec<u8> = b"abcdefghij\n".iter().copied().cycle().take(total).collect();
    assert_eq!(Sha256::digest(&r.stdout), Sha256::digest(&want), "stdout corrupted");
    assert_eq!(r.stderr.len(), 3_000_000);
    assert!(r.stderr.chunks(4).all(|c| c == b"err\n" || b"err\n".starts_with(c)), "stderr mixed with stdout");
}

#[tokio::test]
async fn test_exec_concurrent_on_one_connection() {
    let a = spawn_agent().await;
    // A waits for stdin; B runs to completion while A is still running.
    let mut ha = a.client.exec(Exec { stdin: true, ..exec(&["sh", "-c", "read x; echo A:$x"]) }).await.unwrap();
    ha.started().await.unwrap();
    let mut hs = Vec::new();
    for i in 0..4 {
        let mut h = a.client.exec(exec(&["sh", "-c", &format!("echo B{i}")])).await.unwrap();
        h.started().await.unwrap();
        hs.push(h);
    }
    for (i, h) in hs.iter_mut().enumerate() {
        let r = collect(h).await;
        assert_eq!(r.stdout, format!("B{i}\n").into_bytes());
    }
    ha.stdin().write(b"go\n").await.unwrap();
    let r = collect(&mut ha).await;
    assert_eq!(r.stdout, b"A:go\n");
}

#[tokio::test]
async fn test_exec_failures_are_typed() {
    let a = spawn_agent().await;
    let dir = tempfile::tempdir().unwrap();
    let noexec = dir.path().join("data.txt");
    std::fs::write(&noexec, "not a program").unwrap();
    let cases = [
        (exec(&["/definitely/not/here"]), ExecFailure::NotFound),
        (exec(&["no-such-command-xyz"]), ExecFailure::NotFound),
        (Exec { cwd: Some("/no/such/dir".into()), ..exec(&["true"]) }, ExecFailure::BadCwd),
        (exec(&[]), ExecFailure::BadRequest),
        (exec(&[noexec.to_str().unwrap()]), ExecFailure::PermissionDenied),
    ];
    for (req, want) in cases {
        let mut h = a.client.exec(req.clone()).await.unwrap();
        match h.started().await {
            Err(StartError::Failed { reason, .. }) => assert_eq!(reason, want, "{req:?}"),
            other => panic!("{req:?}: expected {want:?}, got {other:?}"),
        }
    }
    // The connection is still good.
    assert_eq!(run(&a.client, exec(&["true"])).await.status.code, Some(0));
}

#[tokio::test]
async fn test_exec_pty() {
    let a = spawn_agent().await;
    let req = Exec { pty: Some(PtySize { rows: 33, cols: 101 }), ..exec(&["sh", "-c", "tty; stty size"]) };
    let r = run(&a.client, req).await;
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(out.contains("/dev/pts/"), "{out}");
    assert!(out.contains("33 101"), "{out}");
}

#[tokio::test]
async fn test_lost_connection_kills_running_tree() {
    let Agent { client, mut child } = spawn_agent().await;
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("p");
    let script = format!("trap '' TERM; echo $$ > {}.tmp; mv {0}.tmp {0}; exec sleep 1000", pidfile.display());
    let mut h = client.exec(Exec { grace_ms: Some(200), ..exec(&["sh", "-c", &script]) }).await.unwrap();
    h.started().await.unwrap();
    assert!(eventually(Duration::from_secs(10), || pidfile.exists()).await, "step never wrote its pid");
    let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    assert!(alive(pid));
    // Closing the connection must kill the step's tree and end the agent.
    drop(h);
    drop(client);
    assert!(eventually(Duration::from_secs(10), || !alive(pid)).await, "exec {pid} survived the lost connection");
    let st = child.0.wait().unwrap();
    assert_eq!(st.code(), Some(0), "agent should exit cleanly after its fd connection ends");
}

#[tokio::test]
async fn test_exec_escaped_holder_of_stdout_is_reported_not_hidden() {
    // Without a cgroup (local agent), a process that leaves the session and
    // keeps stdout open outlives the tree kill; the exit must say output was cut.
    let a = spawn_agent().await;
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("escaped.pid");
    let script = format!("setsid sh -c 'echo $$ > {p}; exec sleep 60' & sleep 0.3; echo done", p = pidfile.display());
    let r = run(&a.client, Exec { grace_ms: Some(100), ..exec(&["sh", "-c", &script]) }).await;
    assert_eq!(r.stdout, b"done\n");
    assert!(r.status.output_cut, "{:?}", r.status);
    if let Ok(pid) = std::fs::read_to_string(&pidfile).map(|s| s.trim().parse::<i32>().unwrap_or(0)) {
        if pid > 0 {
            // SAFETY: killing the test's own escaped sleeper.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}
