//! Descriptors never cross into a namespace sandbox: whatever cordon's
//! launcher left open (here a UDP socket of the host's network namespace)
//! and the agent's control socket must not reach a step, or the step could
//! leave the sandbox's network without the gate, or forge its own result.

mod common;

use common::*;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

/// Runs `argv` with a host UDP socket inherited as fd 9 (no close-on-exec),
/// as a careless launcher would leave it; returns stdout.
fn with_leaked_socket(cmd: &mut Command) -> String {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let fd = sock.as_raw_fd();
    // SAFETY: dup2 in the child before exec; 9 is free in a fresh child.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 9) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fds_of(listing: &str) -> Vec<String> {
    listing.split_whitespace().map(str::to_string).collect()
}

#[test]
fn test_no_inherited_descriptor_reaches_a_namespace_step() {
    // Positive control: a plain host process started the same way has fd 9.
    let host = with_leaked_socket(Command::new("sh").args(["-c", "ls /proc/$$/fd; :"]));
    assert!(fds_of(&host).contains(&"9".to_string()), "the leak is real: {host}");
    let mut c = Command::new(cordon_bin());
    c.env("CORDON_AGENT", static_agent_bin()).args([
        "run",
        "--isolation",
        "namespace",
        "--no-stdin",
        "--",
        "sh",
        "-c",
        "ls /proc/$$/fd; :",
    ]);
    let inside = with_leaked_socket(&mut c);
    assert_eq!(fds_of(&inside), ["0", "1", "2"], "a step holds only stdio: {inside}");
}
