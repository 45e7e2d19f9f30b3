//! `cordon run` end to end on each backend: `vm::` cases run QEMU under TCG
//! with the real Debian kernel and vhost-device-vsock, `namespace::` cases
//! the same job in Linux namespaces. Steps, exit codes, signals, timeouts,
//! tree kill, workspace, cancel and nothing left behind (processes, passt,
//! cgroups, temp files; Ctrl-C and SIGKILL) are one case each for both.
//! VM-only (no namespace counterpart exists): the virtio-serial control
//! channel, a corrupt kernel, a guest kernel panic.

mod common;
#[macro_use]
mod backends;

use backends::*;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

backend_tests! {
    both: [
        test_echo_and_exit_code,
        test_step_killed_by_a_signal,
        test_job_file_workspace_steps_artifact,
        test_job_stops_at_first_failure_with_its_code,
        test_step_timeout_kills_tree,
        test_nothing_survives_a_step,
        test_ctrl_c_cancels_and_cleans_up,
        test_sigkill_of_cordon_leaves_nothing,
        test_sigkill_of_cordon_with_the_gate_leaves_nothing,
        test_net_none_reaches_nothing_on_the_host,
        test_net_off_has_no_nic,
        test_identity,
    ],
    vm_only: [
        test_serial_control_channel,
        test_corrupt_kernel_fails_fast_with_boot_code,
        test_guest_panic_fails_fast_with_console_tail,
    ],
}

fn test_echo_and_exit_code(b: Backend) {
    let (code, out, err) = b.sh(&[], "echo hi; echo to-stderr >&2; exit 3");
    assert_eq!(code, 3, "{err}");
    assert_eq!(out, "hi\n");
    assert!(err.contains("to-stderr"), "{err}");
}

fn test_step_killed_by_a_signal(b: Backend) {
    let out = b.output(&["--json", "--", "sh", "-c", "echo before; kill -USR1 $$; echo after"]);
    let ex = step_exited(&out, "command");
    assert_eq!(
        (ex["signal"].as_i64(), ex["exit_code"].as_i64()),
        (Some(libc::SIGUSR1 as i64), None),
        "{}",
        describe(&out)
    );
    assert_eq!(out.status.code(), Some(128 + libc::SIGUSR1), "{}", describe(&out));
    assert_eq!(step_stream(&out, "command", "stdout"), "before\n", "{}", describe(&out));
}

fn test_job_file_workspace_steps_artifact(b: Backend) {
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
    let (code, out, err) = text(&b.output(&["-f", job.to_str().unwrap()]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "made\n/workspace\n");
    let arts = dir.path().join("cordon-artifacts");
    assert_eq!(std::fs::read(arts.join("out/result.bin")).unwrap(), input, "artifact not byte-identical");
    assert_eq!(std::fs::read(arts.join("out/note")).unwrap(), b"made\n");
    // The sandbox worked on a copy: the host's workspace is as it was.
    assert!(!ws.join("out").exists(), "the step wrote into the host's workspace");
}

fn test_job_stops_at_first_failure_with_its_code(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("cordon.toml");
    std::fs::write(&job, "[[steps]]\nrun = 'echo first'\n[[steps]]\nrun = 'exit 7'\n[[steps]]\nrun = 'echo never'\n")
        .unwrap();
    let (code, out, err) = text(&b.output(&["-f", job.to_str().unwrap()]));
    assert_eq!(code, 7, "{err}");
    assert_eq!(out, "first\n", "the step before the failure ran, the one after did not");
}

fn test_step_timeout_kills_tree(b: Backend) {
    // Two sleepers that ignore SIGTERM, one exec'd, one a grandchild; the
    // step says when both exist (the marker is split so the argv does not
    // hold it).
    let script = "sh -c 'trap \"\" TERM; exec sleep 1000' & sh -c 'trap \"\" TERM; sleep 1000' & \
                  until [ $(pidof sleep | wc -w) -ge 2 ]; do usleep 20000; done; echo ar''med; wait";
    let w = run_watched(b, &["--timeout", "3s", "--", "sh", "-c", script], "armed", |_| {});
    assert_eq!(w.output.status.code(), Some(124), "{}", describe(&w.output));
    let exited = step_exited(&w.output, "command");
    assert_eq!(exited["timed_out"], true, "{}", describe(&w.output));
    w.assert_nothing_left(b, Some("sleep"), Duration::from_secs(10));
}

fn test_nothing_survives_a_step(b: Backend) {
    // Step 1 leaves a daemon that left the session (setsid; the step waits
    // until it has: its session id is its own pid) and one that ignores
    // SIGTERM; the step's tree kill must still end both. Step 2 looks.
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("cordon.toml");
    std::fs::write(
        &job,
        r#"
[[steps]]
run = "setsid sleep 997 >/dev/null 2>&1 < /dev/null & d=$!; until [ \"$(cut -d' ' -f6 /proc/$d/stat)\" = $d ]; do usleep 10000; done; sh -c 'trap \"\" TERM; exec sleep 998' >/dev/null 2>&1 & echo started"
[[steps]]
run = "ps -o comm,args | grep -E 'sleep 99[78]' | grep -v grep || echo clean"
"#,
    )
    .unwrap();
    let (code, out, err) = text(&b.output(&["-f", job.to_str().unwrap()]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "started\nclean\n");
}

fn test_ctrl_c_cancels_and_cleans_up(b: Backend) {
    let w = run_watched(b, &["--", "sleep", "1000"], "step_started", |pid| {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid as i32, libc::SIGINT) };
    });
    assert_eq!(w.output.status.code(), Some(130), "{}", describe(&w.output));
    // Ctrl-C is handled: cordon has waited for everything by the time it exits.
    w.assert_nothing_left(b, Some("sleep"), Duration::ZERO);
}

fn test_sigkill_of_cordon_leaves_nothing(b: Backend) {
    let w = run_watched(b, &["--", "sleep", "1000"], "step_started", |pid| {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    });
    assert_eq!(w.output.status.signal(), Some(libc::SIGKILL));
    // PR_SET_PDEATHSIG and the janitor clean up after cordon, a little later.
    w.assert_nothing_left(b, Some("sleep"), Duration::from_secs(10));
}

fn test_sigkill_of_cordon_with_the_gate_leaves_nothing(b: Backend) {
    // The same with passt and the gate's frame source (QEMU's stream, the tap).
    let w = run_watched(b, &["--net", "full", "--", "sleep", "1000"], "step_started", |pid| {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    });
    assert_eq!(w.output.status.signal(), Some(libc::SIGKILL));
    assert!(w.seen.iter().any(|p| b.helper(p) == Some("passt")), "no passt under cordon: {:?}", w.seen);
    w.assert_nothing_left(b, Some("sleep"), Duration::from_secs(10));
}

fn test_net_none_reaches_nothing_on_the_host(b: Backend) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    // Every address a sandbox could use to reach the host: (the VM's NIC)
    // slirp's gateway, its DNS and host aliases, and loopback (its own).
    let script = format!(
        "ip link set lo up; if ip link show eth0 >/dev/null 2>&1; then echo has-nic; \
         ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2; fi; \
         (echo pong | nc -l -p 7777 >/dev/null &); until netstat -ltn | grep -q :7777; do usleep 20000; done; \
         nc -w 2 127.0.0.1 7777 </dev/null | grep -q pong && echo control-ok; \
         ok=0; for a in 10.0.2.2 10.0.2.3 10.0.2.4 127.0.0.1 1.1.1.1; do \
           if echo probe | nc -w 2 $a {port} >/dev/null 2>&1; then echo REACHED $a; ok=1; fi; done; exit $ok"
    );
    let (code, out, err) = b.sh(&[], &script);
    assert_eq!(out.contains("has-nic"), b.nic_with_net_none(), "{b:?}: NIC with --net none: {out}");
    assert!(out.contains("control-ok"), "nc in the sandbox does not work, so the probe proves nothing: {out} {err}");
    assert_eq!(code, 0, "the sandbox reached something: {out} {err}");
    assert!(listener.accept().is_err(), "the host listener saw a connection from the sandbox");
}

fn test_net_off_has_no_nic(b: Backend) {
    let (code, out, err) = b.sh(&["--net", "off"], "ip link | sed -n 's/^[0-9]*: \\([^:@]*\\).*/\\1/p'");
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["lo"]);
}

fn test_identity(b: Backend) {
    let (code, out, err) =
        b.sh(&["--cpus", "1", "--memory", "384M"], "hostname; id -u; nproc; echo tokens=$(env | grep -c TOKEN)");
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(&lines[..2], ["cordon", "0"], "{out}");
    if b.cpus_visible() {
        assert_eq!(lines[2], "1", "--cpus 1: {out}");
    }
    // The agent's token never reaches a step's environment.
    assert_eq!(lines.last(), Some(&"tokens=0"), "{out}");
}

/// VM-only: the virtio-serial transport is the VM's (macOS) alternative to vsock.
fn test_serial_control_channel(b: Backend) {
    let (code, out, err) = b.sh(&["--control", "serial", "--json"], "echo via-serial");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("virtio-serial"), "{out}");
    assert!(out.contains("via-serial"), "{out}");
}

/// VM-only: the kernel is the VM's.
fn test_corrupt_kernel_fails_fast_with_boot_code(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("vmlinuz");
    std::fs::write(&bad, vec![0x5au8; 4 << 20]).unwrap();
    let t = std::time::Instant::now();
    let (code, _, err) = text(&b.run(&["--", "true"]).env("CORDON_KERNEL", &bad).output().unwrap());
    assert_eq!(code, 122, "{err}");
    assert!(err.contains("did not boot"), "{err}");
    assert!(err.contains("QEMU exited"), "{err}");
    // "Fast" means QEMU's exit was noticed, not the boot deadline (90s under tcg).
    assert!(t.elapsed() < Duration::from_secs(60), "waited for the deadline instead of watching QEMU");
}

/// VM-only: a guest kernel and its console.
fn test_guest_panic_fails_fast_with_console_tail(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initramfs.cpio");
    let mut w = cordon::image::cpio::CpioWriter::new(Vec::new());
    w.dir("bin", 0o755).unwrap();
    w.dir("dev", 0o755).unwrap();
    w.char_dev("dev/console", 0o600, 5, 1).unwrap();
    // Through the kernel's log (as KERN_CRIT, above the quiet console's
    // level), not the tty: a panic does not wait for the serial port to
    // drain what userspace wrote there, so a tty line can be lost.
    w.char_dev("dev/kmsg", 0o600, 1, 11).unwrap();
    w.file("bin/busybox", 0o755, &std::fs::read("/bin/busybox").unwrap()).unwrap();
    w.file("init", 0o755, b"#!/bin/busybox sh\necho \"<2>init-giving-up\" > /dev/kmsg\nexit 1\n").unwrap();
    std::fs::write(&initrd, w.finish().unwrap()).unwrap();
    let t = std::time::Instant::now();
    let (code, _, err) = text(&b.run(&["--", "true"]).env("CORDON_INITRD", &initrd).output().unwrap());
    assert_eq!(code, 122, "{err}");
    assert!(err.contains("Kernel panic") || err.contains("Attempted to kill init"), "no panic in console tail: {err}");
    assert!(err.contains("init-giving-up"), "console tail missing: {err}");
    assert!(t.elapsed() < Duration::from_secs(60), "waited for the deadline instead of watching the console");
}

/// Not a backend's: the image both backends start from.
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
