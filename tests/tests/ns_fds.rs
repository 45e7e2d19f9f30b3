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

/// `cordon run --isolation namespace` of a step that lists its descriptors.
fn listing_step() -> Command {
    let mut c = Command::new(cordon_bin());
    c.env("CORDON_AGENT", static_agent_bin()).args(["run", "--isolation", "namespace", "--no-stdin", "--"]);
    c.args(["sh", "-c", "ls /proc/$$/fd; :"]);
    c
}

fn fds_of(listing: &str) -> Vec<String> {
    listing.split_whitespace().map(str::to_string).collect()
}

#[test]
fn test_no_inherited_descriptor_reaches_a_namespace_step() {
    // Positive control: a plain host process started the same way has fd 9.
    let host = with_leaked_socket(Command::new("sh").args(["-c", "ls /proc/$$/fd; :"]));
    assert!(fds_of(&host).contains(&"9".to_string()), "the leak is real: {host}");
    let mut c = listing_step();
    let inside = with_leaked_socket(&mut c);
    assert_eq!(fds_of(&inside), ["0", "1", "2"], "a step holds only stdio: {inside}");
}

/// Makes close_range(2) fail with ENOSYS for the process and all it starts
/// (as on kernels before 5.9, or under a container runtime's seccomp
/// profile): a classic seccomp filter, installed before exec.
fn without_close_range(cmd: &mut Command) -> &mut Command {
    // SAFETY: prctl calls with a filter that lives in this (pre-exec) child.
    unsafe {
        cmd.pre_exec(|| {
            let nr = libc::SYS_close_range as u32;
            let mut code = [
                libc::sock_filter { code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16, jt: 0, jf: 0, k: 0 },
                libc::sock_filter { code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16, jt: 0, jf: 1, k: nr },
                libc::sock_filter {
                    code: (libc::BPF_RET | libc::BPF_K) as u16,
                    jt: 0,
                    jf: 0,
                    k: libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
                },
                libc::sock_filter {
                    code: (libc::BPF_RET | libc::BPF_K) as u16,
                    jt: 0,
                    jf: 0,
                    k: libc::SECCOMP_RET_ALLOW,
                },
            ];
            let prog = libc::sock_fprog { len: code.len() as u16, filter: code.as_mut_ptr() };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog as *const libc::sock_fprog) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// Without close_range (older kernels, seccomp profiles) the same holds:
/// cordon's forked helpers and the agent fall back to closing (or marking
/// close-on-exec) what /proc/self/fd lists, and the run ends as usual.
#[test]
fn test_no_inherited_descriptor_reaches_a_step_without_close_range() {
    // Positive control: under the filter, close_range really fails.
    let mut probe = Command::new("true");
    without_close_range(&mut probe);
    // SAFETY: one system call in the pre-exec child.
    unsafe {
        probe.pre_exec(|| match libc::syscall(libc::SYS_close_range, 1000u32, 1000u32, 0u32) {
            0 => Err(std::io::Error::other("close_range worked under the filter")),
            _ => Err(std::io::Error::last_os_error()),
        });
    }
    let e = probe.status().expect_err("the probe reports close_range's error");
    assert_eq!(e.raw_os_error(), Some(libc::ENOSYS), "{e}");

    let mut c = listing_step();
    without_close_range(&mut c);
    let inside = with_leaked_socket(&mut c);
    assert_eq!(fds_of(&inside), ["0", "1", "2"], "a step holds only stdio: {inside}");
}
