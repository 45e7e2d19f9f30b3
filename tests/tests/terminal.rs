//! cordon as a user at a terminal drives it: in a real pty (the test holds
//! the master), with a reader that goes away, with Ctrl-C, and with an agent
//! that stops answering, so only the runner's own deadlines can end the run.
//! The local-agent backend keeps these fast; the VM runs the same run.rs.

mod common;

use common::*;
use nix::pty::{openpty, Winsize};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn cordon() -> Command {
    let mut c = Command::new(cordon_bin());
    c.env("CORDON_AGENT", static_agent_bin());
    c
}

/// cordon on a fresh pty of `rows` x `cols`: stdin, stdout and stderr are
/// the slave; the test keeps the master (and never closes it early, as a
/// terminal emulator would not).
fn on_pty(args: &[&str], rows: u16, cols: u16) -> (Child, std::fs::File) {
    let ws = Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    let pty = openpty(Some(&ws), None).expect("openpty");
    let slave: OwnedFd = pty.slave;
    let mut cmd = cordon();
    cmd.args(args)
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave));
    // A session of its own with the pty as controlling terminal, like a shell's child.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().expect("spawning cordon");
    (child, std::fs::File::from(pty.master))
}

/// Reads the master until cordon exits (EIO once the slave is gone), with a
/// guard against a hang: a run that waits for a key press never ends.
fn finish(child: Child, master: std::fs::File, keys: &[(&str, &[u8])]) -> (Option<i32>, String) {
    finish_with(child, master, keys, None)
}

/// `finish`, also signalling `on` once its text appears.
fn finish_with(
    mut child: Child,
    master: std::fs::File,
    keys: &[(&str, &[u8])],
    mut on: Option<(&str, std::sync::mpsc::Sender<()>)>,
) -> (Option<i32>, String) {
    let fd = master.as_raw_fd();
    let mut master = master;
    let (tx, rx) = std::sync::mpsc::channel();
    let mut reader = master.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let mut seen = String::new();
    let mut keys = keys.iter();
    let mut next_key = keys.next();
    let guard = Instant::now() + Duration::from_secs(120);
    let status = loop {
        while let Ok(b) = rx.try_recv() {
            seen.push_str(&String::from_utf8_lossy(&b));
        }
        if let Some((after, bytes)) = next_key {
            if seen.contains(after) {
                master.write_all(bytes).unwrap();
                next_key = keys.next();
            }
        }
        if let Some((after, tx)) = &on {
            if seen.contains(after) {
                let _ = tx.send(());
                on = None;
            }
        }
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > guard {
            let _ = child.kill();
            let _ = child.wait();
            panic!("cordon did not end on its own (fd {fd}); output so far: {seen:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_millis(100));
    while let Ok(b) = rx.try_recv() {
        seen.push_str(&String::from_utf8_lossy(&b));
    }
    (status.code(), seen)
}

#[test]
fn test_pty_run_ends_without_a_key_press() {
    // The review's reproduction: `echo hi` in a terminal printed hi, then
    // waited for Enter. Nothing is typed here.
    let (child, master) = on_pty(&["run", "--isolation", "local-agent", "--", "echo", "hi"], 24, 80);
    let (code, seen) = finish(child, master, &[]);
    assert_eq!(code, Some(0), "{seen}");
    assert!(seen.contains("hi"), "{seen:?}");
}

#[test]
fn test_pty_tty_flag_gives_a_terminal_of_the_right_size() {
    let script = "if [ -t 0 ] && [ -t 1 ]; then echo on-a-tty; fi; stty size";
    let (child, master) = on_pty(&["run", "--isolation", "local-agent", "-t", "--", "sh", "-c", script], 33, 101);
    let (code, seen) = finish(child, master, &[]);
    assert_eq!(code, Some(0), "{seen}");
    assert!(seen.contains("on-a-tty"), "{seen:?}");
    assert!(seen.contains("33 101"), "{seen:?}");
    // Positive control for the -t check: without -t the step has no terminal.
    let (child, master) = on_pty(&["run", "--isolation", "local-agent", "--", "sh", "-c", script], 33, 101);
    let (_, seen) = finish(child, master, &[]);
    assert!(!seen.contains("on-a-tty"), "{seen:?}");
}

#[test]
fn test_pty_window_resize_reaches_the_step() {
    let script = "stty size; trap 'stty size; exit 0' WINCH; echo armed; while :; do sleep 0.1; done";
    let (child, master) = on_pty(&["run", "--isolation", "local-agent", "-t", "--", "sh", "-c", script], 24, 80);
    let fd = master.as_raw_fd();
    let resize = move || {
        let ws = libc::winsize { ws_row: 50, ws_col: 160, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCSWINSZ on our own pty master; the kernel sends SIGWINCH to cordon.
        unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) };
    };
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if rx.recv().is_ok() {
            resize();
        }
    });
    let (code, seen) = finish_with(child, master, &[], Some(("armed", tx)));
    assert_eq!(code, Some(0), "{seen:?}");
    assert!(seen.contains("24 80"), "{seen:?}");
    assert!(seen.contains("50 160"), "{seen:?}");
}

#[test]
fn test_pty_interactive_shell_and_ctrl_c_reach_the_step() {
    // An interactive shell: typed lines run, `exit` ends it.
    let (child, master) = on_pty(&["run", "--isolation", "local-agent", "-t", "--", "sh"], 24, 80);
    let (code, seen) = finish(child, master, &[("", b"echo $((6*7))\r"), ("42", b"exit 3\r")]);
    assert!(seen.contains("42"), "{seen:?}");
    assert_eq!(code, Some(3), "{seen:?}");
    // Raw mode: Ctrl-C is a byte for the step's terminal, which interrupts it.
    let args = ["run", "--isolation", "local-agent", "-t", "--", "sh", "-c", "echo ready; sleep 60; echo after"];
    let (child, master) = on_pty(&args, 24, 80);
    let (code, seen) = finish(child, master, &[("ready", b"\x03")]);
    assert_eq!(code, Some(130), "{seen:?}");
    assert!(!seen.contains("after"), "{seen:?}");
}

#[test]
fn test_pty_escape_key_stops_a_step_that_ignores_every_key() {
    // Raw mode sends Ctrl-C, Ctrl-\ and Ctrl-Z to the step; a step that traps
    // them all still ends with cordon's own escape key.
    let script = "trap '' INT QUIT TSTP; echo ready; sleep 60; echo after";
    let args = ["run", "--isolation", "local-agent", "-t", "--", "sh", "-c", script];
    let (child, master) = on_pty(&args, 24, 80);
    let (code, seen) = finish(child, master, &[("ready", b"\x03\x1c\x1a"), ("ready", b"\x1d")]);
    assert_eq!(code, Some(130), "{seen:?}");
    assert!(!seen.contains("after"), "{seen:?}");
    assert!(seen.contains("Ctrl-]"), "cordon says which key stops the step: {seen:?}");
}

#[test]
fn test_a_reader_that_stops_reading_does_not_stop_the_deadlines() {
    // stdout is a pipe nobody reads (a paused pager, a stalled log
    // collector): the step's timeout must still end the run.
    let mut child = cordon()
        .args(["run", "--isolation", "local-agent", "--no-stdin", "--timeout", "2s", "--", "yes"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let guard = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > guard {
            let _ = child.kill();
            panic!("cordon never ended while its stdout was not read");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(stdout);
    assert_eq!(status.code(), Some(124));
}

#[test]
fn test_closed_stdout_ends_the_step_like_a_shell_and_still_copies_artifacts() {
    let t = tempfile::tempdir().unwrap();
    let made = t.path().join("made.txt");
    let arts = t.path().join("arts");
    let script = format!("echo kept > {}; yes", made.display());
    let mut child = cordon()
        .args(["run", "--isolation", "local-agent", "--no-stdin", "--artifact", made.to_str().unwrap()])
        .args(["--artifacts-dir", arts.to_str().unwrap(), "--", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Like `| head -1`: read one line, then close the pipe.
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 2];
    stdout.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"y\n");
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(128 + libc::SIGPIPE), "{err}");
    assert!(!err.contains("error"), "a closed stdout is not an internal error: {err}");
    let copied = arts.join(made.strip_prefix("/").unwrap());
    assert_eq!(std::fs::read_to_string(copied).unwrap(), "kept\n");
}

/// A step that freezes its own agent (local-agent: the agent is the step's
/// parent on the host), so the agent can neither kill it nor report it:
/// only the runner's own deadline can end the run. Returns cordon's exit
/// code and its output (stderr, then JSON events).
fn frozen_agent_run(args: &[&str], signals: &[i32]) -> (Option<i32>, String) {
    let t = tempfile::tempdir().unwrap();
    let pidfile = t.path().join("pid");
    let script = format!("echo $$ > {}; kill -STOP $PPID; exec sleep 40", pidfile.display());
    let mut full = vec!["run", "--isolation", "local-agent", "--json", "--no-stdin"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["--", "sh", "-c", &script]);
    let mut child =
        cordon().args(full).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    // The step may freeze the agent before it reports the start: wait for the pid file.
    while std::fs::read_to_string(&pidfile).map(|s| s.trim().is_empty()).unwrap_or(true) {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    for &s in signals {
        unsafe { libc::kill(child.id() as i32, s) };
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let out = child.wait_with_output().unwrap();
    // The step outlives a frozen, killed agent on the host; end it.
    let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    unsafe { libc::kill(pid, libc::SIGKILL) };
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned() + &rest)
}

#[test]
fn test_runner_enforces_the_step_timeout_when_the_agent_cannot() {
    let (code, out) = frozen_agent_run(&["--timeout", "1s"], &[]);
    assert_eq!(code, Some(124), "{out}");
    assert!(out.contains("\"sandbox_torn_down\":true"), "{out}");
    assert!(out.contains("\"timed_out\":true"), "{out}");
}

#[test]
fn test_runner_enforces_the_job_timeout_and_ctrl_c_when_the_agent_cannot() {
    let (code, out) = frozen_agent_run(&["--job-timeout", "1s"], &[]);
    assert_eq!(code, Some(124), "{out}");
    assert!(out.contains("\"job_timed_out\":true"), "{out}");
    let (code, out) = frozen_agent_run(&[], &[libc::SIGINT]);
    assert_eq!(code, Some(130), "{out}");
    assert!(out.contains("\"cancelled\":true"), "{out}");
    // A second Ctrl-C stops waiting for the guest at once.
    let (code, _) = frozen_agent_run(&[], &[libc::SIGTERM, libc::SIGTERM]);
    assert_eq!(code, Some(143));
}

#[test]
fn test_job_file_cannot_reach_outside_its_directory() {
    let t = tempfile::tempdir().unwrap();
    let f = t.path().join("cordon.toml");
    std::fs::write(&f, "workspace = '/root'\n[[steps]]\nrun = 'true'\n").unwrap();
    let out = cordon().args(["run", "--isolation", "local-agent", "-f", f.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(120));
    assert!(String::from_utf8_lossy(&out.stderr).contains("outside the job file's directory"));
    // Positive control: the same job with a workspace inside runs.
    std::fs::create_dir(t.path().join("ws")).unwrap();
    std::fs::write(&f, "workspace = 'ws'\n[[steps]]\nrun = 'true'\n").unwrap();
    let out = cordon().args(["run", "--isolation", "local-agent", "-f", f.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}
