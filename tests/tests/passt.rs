//! passt as cordon runs it (real QEMU under tcg, the egress gate, passt):
//! a guest TCP client that half-closes first still gets the server's late
//! reply and its EOF (Debian 12's passt never sent that FIN, so the step hung
//! until its timeout), and an old passt is refused with exit 125.

mod common;

use common::*;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn cordon() -> Command {
    let mut c = Command::new(cordon_bin());
    c.env("CORDON_AGENT", static_agent_bin()).stdin(Stdio::null());
    c
}

/// A loopback TCP server that reads each connection to EOF, then (later)
/// replies `late:<what it read>` and closes. Returns its port and what each
/// connection sent.
fn serve_after_eof() -> (u16, Arc<Mutex<Vec<String>>>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let seen = seen2.clone();
            std::thread::spawn(move || {
                let mut c = c;
                let mut got = String::new();
                if c.read_to_string(&mut got).is_err() {
                    return;
                }
                seen.lock().unwrap().push(got.clone());
                // The guest has half-closed; the host side closes later.
                std::thread::sleep(Duration::from_secs(1));
                let _ = c.write_all(format!("late:{got}").as_bytes());
            });
        }
    });
    (port, seen)
}

#[test]
fn test_passt_guest_half_close_gets_late_reply_and_eof() {
    let (port, seen) = serve_after_eof();
    // Each nc returns only once it has the server's FIN; the step timeout is
    // what a missing FIN runs into (exit 124).
    let script = format!(
        "nc 10.0.2.2 {port} </dev/null; echo \" rc=$?\"; \
         printf ping | nc 10.0.2.2 {port}; echo \" rc=$?\""
    );
    let out = cordon()
        .args(["run", "--accel", "tcg", "--allow", &format!("host:{port}"), "--timeout", "60s"])
        .args(["--", "sh", "-c", &script])
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "stdout: {stdout}\nstderr: {stderr}");
    assert_eq!(stdout, "late: rc=0\nlate:ping rc=0\n", "stderr: {stderr}");
    assert_eq!(*seen.lock().unwrap(), ["", "ping"]);
}

#[test]
fn test_passt_too_old_is_refused_with_125() {
    // A stand-in for Debian 12's passt: it carries the same version blob.
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("passt");
    std::fs::write(&fake, b"#!/bin/sh\nexit 0\n\0unknown version\nCopyright Red Hat\n\0").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();

    let out = cordon()
        .env("CORDON_PASST", &fake)
        .args(["run", "--accel", "tcg", "--net", "full", "--", "true"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("older than") && err.contains("scripts/setup.sh"), "{err}");

    let out = cordon().env("CORDON_PASST", &fake).arg("doctor").output().unwrap();
    let doctor = String::from_utf8_lossy(&out.stdout);
    let line = doctor.lines().find(|l| l.contains(" passt ")).unwrap_or_default();
    assert!(line.starts_with("--") && line.contains("unknown version"), "{doctor}");
}

#[test]
fn test_passt_cordon_build_is_used_and_new_enough() {
    let out = cordon().arg("doctor").output().unwrap();
    let doctor = String::from_utf8_lossy(&out.stdout);
    let line = doctor.lines().find(|l| l.contains(" passt ")).unwrap_or_default();
    assert!(
        line.starts_with("ok") && line.contains(cordon::netfilter::passt::CORDON_PASST),
        "scripts/setup.sh installs passt into {}: {doctor}",
        cordon::netfilter::passt::CORDON_PASST
    );
}
