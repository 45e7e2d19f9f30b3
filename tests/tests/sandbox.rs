//! The microVM backend end to end, under TCG: real QEMU, real Debian kernel,
//! real vhost-device-vsock.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

fn cordon() -> Command {
    let mut c = Command::new(cordon_bin());
    c.env("CORDON_AGENT", static_agent_bin()).stdin(Stdio::null());
    c
}

fn run_vm(args: &[&str]) -> std::process::Output {
    let mut full = vec!["run", "--accel", "tcg"];
    full.extend_from_slice(args);
    cordon().args(full).output().unwrap()
}

#[test]
fn test_vm_echo_and_exit_code() {
    let out = run_vm(&["--", "sh", "-c", "echo hi; echo to-stderr >&2; exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout, b"hi\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("to-stderr"));
}

#[test]
fn test_vm_serial_control_channel() {
    let out = run_vm(&["--control", "serial", "--json", "--", "sh", "-c", "echo via-serial"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("virtio-serial"), "{s}");
    assert!(s.contains("via-serial"), "{s}");
}

#[test]
fn test_vm_job_file_workspace_steps_artifact() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    let input: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    std::fs::write(ws.join("input.bin"), &input).unwrap();
    std::fs::write(
        ws.join("gen.sh"),
        "#!/bin/sh\nmkdir -p out && cp input.bin out/result.bin && echo made > out/note\n",
    )
    .unwrap();
    std::fs::set_permissions(ws.join("gen.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let job = dir.path().join("cordon.toml");
    std::fs::write(
        &job,
        r#"
workspace = "ws"
artifacts = ["out/result.bin", "out"]
[[steps]]
name = "make"
run = "./gen.sh"
[[steps]]
name = "check"
run = "test -f out/result.bin && cat out/note && pwd"
"#,
    )
    .unwrap();
    let out = cordon().args(["run", "--accel", "tcg", "-f", job.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "made\n/workspace\n");
    let arts = dir.path().join("cordon-artifacts");
    assert_eq!(std::fs::read(arts.join("out/result.bin")).unwrap(), input, "artifact not byte-identical");
    assert_eq!(std::fs::read(arts.join("out/note")).unwrap(), b"made\n");
}

#[test]
fn test_vm_job_stops_at_first_failure_with_its_code() {
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("cordon.toml");
    std::fs::write(&job, "[[steps]]\nrun = 'exit 7'\n[[steps]]\nrun = 'echo never'\n").unwrap();
    let out = cordon().args(["run", "--accel", "tcg", "-f", job.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(7));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("never"));
}

#[test]
fn test_vm_step_timeout_kills_tree() {
    let script = "sh -c 'trap \"\" TERM; exec sleep 1000' & sh -c 'trap \"\" TERM; sleep 1000' & wait";
    let out = run_vm(&["--timeout", "2s", "--json", "--", "sh", "-c", script]);
    assert_eq!(out.status.code(), Some(124), "{}", String::from_utf8_lossy(&out.stderr));
    let s = String::from_utf8_lossy(&out.stdout);
    let exited: serde_json::Value = s
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|e| e["event"] == "step_exited")
        .unwrap();
    assert_eq!(exited["timed_out"], true, "{s}");
}

#[test]
fn test_vm_nothing_survives_a_step() {
    // Step 1 leaves a daemon that left the session (setsid) and one that
    // ignores SIGTERM; the per-exec cgroup must still end both. Step 2 looks.
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("cordon.toml");
    std::fs::write(
        &job,
        r#"
[[steps]]
run = "setsid sleep 997 >/dev/null 2>&1 < /dev/null & sh -c 'trap \"\" TERM; exec sleep 998' >/dev/null 2>&1 & echo started"
[[steps]]
run = "ps -o comm,args | grep -E 'sleep 99[78]' | grep -v grep || echo clean"
"#,
    )
    .unwrap();
    let out = cordon().args(["run", "--accel", "tcg", "-f", job.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "started\nclean\n");
}

/// Children of `pid` (direct), by scanning /proc.
fn children(pid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else { continue };
        let Some((head, rest)) = stat.rsplit_once(')') else { continue };
        let ppid: u32 = rest.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        if ppid == pid {
            out.push((p, head.split_once('(').map(|x| x.1).unwrap_or_default().to_string()));
        }
    }
    out
}

fn cordon_temp_dir_of(qemu: u32) -> Option<std::path::PathBuf> {
    let cmd = std::fs::read(format!("/proc/{qemu}/cmdline")).ok()?;
    let s = String::from_utf8_lossy(&cmd);
    let i = s.find("/tmp/cordon-")?;
    let end = s[i + 5..].find('/').map(|j| i + 5 + j)?;
    Some(std::path::PathBuf::from(&s[i..end]))
}

/// Starts a long step, waits until it runs, then delivers `sig` to cordon.
fn interrupt_run(sig: i32) -> (std::process::ExitStatus, Vec<u32>, std::path::PathBuf) {
    let errlog = tempfile::NamedTempFile::new().unwrap();
    let mut child = cordon()
        .args(["run", "--accel", "tcg", "--json", "--", "sleep", "1000"])
        .stdout(Stdio::piped())
        .stderr(errlog.reopen().unwrap())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        let Some(l) = lines.next() else {
            panic!("cordon ended before the step started: {}", std::fs::read_to_string(errlog.path()).unwrap());
        };
        let l = l.unwrap();
        if l.contains("step_started") {
            break;
        }
    }
    let kids = children(pid);
    let helpers: Vec<u32> = kids
        .iter()
        .filter(|(_, n)| n.starts_with("qemu-system") || n.starts_with("vhost-device"))
        .map(|k| k.0)
        .collect();
    assert_eq!(helpers.len(), 2, "expected qemu and vhost-device-vsock under cordon: {kids:?}");
    let qemu = kids.iter().find(|(_, n)| n.starts_with("qemu")).unwrap().0;
    let dir = cordon_temp_dir_of(qemu).expect("qemu command line names cordon's temp dir");
    assert!(dir.exists());
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, sig) };
    let st = child.wait().unwrap();
    (st, helpers, dir)
}

fn gone(pid: u32) -> bool {
    !alive(pid as i32)
}

#[test]
fn test_vm_ctrl_c_cancels_and_cleans_up() {
    let (st, helpers, dir) = interrupt_run(libc::SIGINT);
    assert_eq!(st.code(), Some(130));
    for h in helpers {
        assert!(gone(h), "helper {h} survived Ctrl-C");
    }
    assert!(!dir.exists(), "temp dir {} left behind", dir.display());
}

#[test]
fn test_vm_sigkill_of_cordon_leaves_nothing() {
    let (st, helpers, dir) = interrupt_run(libc::SIGKILL);
    assert_eq!(st.signal(), Some(libc::SIGKILL));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    for h in helpers {
        assert!(rt.block_on(eventually(Duration::from_secs(10), || gone(h))), "helper {h} survived SIGKILL of cordon");
    }
    assert!(
        rt.block_on(eventually(Duration::from_secs(10), || !dir.exists())),
        "temp dir {} left behind",
        dir.display()
    );
}

use std::os::unix::process::ExitStatusExt;

#[test]
fn test_vm_corrupt_kernel_fails_fast_with_boot_code() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("vmlinuz");
    std::fs::write(&bad, vec![0x5au8; 4 << 20]).unwrap();
    let t = std::time::Instant::now();
    let out = cordon().env("CORDON_KERNEL", &bad).args(["run", "--accel", "tcg", "--", "true"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(122), "{err}");
    assert!(err.contains("did not boot"), "{err}");
    assert!(err.contains("QEMU exited"), "{err}");
    // "Fast" means QEMU's exit was noticed, not the boot deadline (90s under tcg).
    assert!(t.elapsed() < Duration::from_secs(60), "waited for the deadline instead of watching QEMU");
}

#[test]
fn test_vm_guest_panic_fails_fast_with_console_tail() {
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initramfs.cpio");
    let mut w = cordon::image::cpio::CpioWriter::new(Vec::new());
    w.dir("bin", 0o755).unwrap();
    w.dir("dev", 0o755).unwrap();
    w.char_dev("dev/console", 0o600, 5, 1).unwrap();
    w.file("bin/busybox", 0o755, &std::fs::read("/bin/busybox").unwrap()).unwrap();
    w.file("init", 0o755, b"#!/bin/busybox sh\necho init-giving-up\nexit 1\n").unwrap();
    std::fs::write(&initrd, w.finish().unwrap()).unwrap();
    let t = std::time::Instant::now();
    let out = cordon().env("CORDON_INITRD", &initrd).args(["run", "--accel", "tcg", "--", "true"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(122), "{err}");
    assert!(err.contains("Kernel panic") || err.contains("Attempted to kill init"), "no panic in console tail: {err}");
    assert!(err.contains("init-giving-up"), "console tail missing: {err}");
    assert!(t.elapsed() < Duration::from_secs(60), "waited for the deadline instead of watching the console");
}

#[test]
fn test_vm_net_none_reaches_nothing_on_the_host() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    // Every address a guest could use to reach the host: slirp's gateway,
    // its DNS and host aliases, and loopback (the guest's own).
    let script = format!(
        "ip link set lo up; ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2; \
         (echo pong | nc -l -p 7777 >/dev/null &); sleep 0.5; \
         nc -w 2 127.0.0.1 7777 </dev/null | grep -q pong && echo control-ok; \
         ok=0; for a in 10.0.2.2 10.0.2.3 10.0.2.4 127.0.0.1 1.1.1.1; do \
           if echo probe | nc -w 2 $a {port} >/dev/null 2>&1; then echo REACHED $a; ok=1; fi; done; \
         ip link show eth0 >/dev/null && echo has-nic; exit $ok"
    );
    let out = run_vm(&["--", "sh", "-c", &script]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("has-nic"), "--net none should still have a NIC: {stdout}");
    assert!(stdout.contains("control-ok"), "nc in the guest does not work, so the probe proves nothing: {stdout}");
    assert_eq!(
        out.status.code(),
        Some(0),
        "guest reached something: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(listener.accept().is_err(), "the host listener saw a connection from the guest");
}

#[test]
fn test_vm_net_off_has_no_nic() {
    let out = run_vm(&["--net", "off", "--", "sh", "-c", "ls /sys/class/net"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout).split_whitespace().collect::<Vec<_>>(), ["lo"]);
}

#[test]
fn test_vm_guest_identity() {
    let out = run_vm(&[
        "--cpus",
        "1",
        "--memory",
        "384M",
        "--",
        "sh",
        "-c",
        "hostname; id -u; nproc; grep -c . /proc/cmdline",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let s = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(&lines[..3], ["cordon", "0", "1"], "{s}");
}

#[test]
fn test_image_build_ls_rm() {
    let out = cordon().args(["image", "build"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let id = String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_string();
    // Building again reuses the cached image (same content, same id).
    let again = cordon().args(["image", "build"]).output().unwrap();
    assert!(String::from_utf8_lossy(&again.stdout).starts_with(&id));
    let ls = String::from_utf8_lossy(&cordon().args(["image", "ls"]).output().unwrap().stdout).into_owned();
    assert!(ls.lines().any(|l| l.starts_with(&id) && l.contains("default")), "{ls}");
    let rm = cordon().args(["image", "rm", "no-such-image"]).output().unwrap();
    assert_ne!(rm.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&rm.stderr).contains("no image named"), "{}", String::from_utf8_lossy(&rm.stderr));
}
