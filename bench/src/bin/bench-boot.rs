//! Boot benchmark: time from `cordon run` to the first byte of a step's
//! output and cordon's whole `-- true` run, beside a bare QEMU boot of the
//! same kernel and initramfs to the agent's listening marker (same machine
//! type and accelerator), measured in the same run; plus warm exec round
//! trips over vsock and over virtio-serial. Prints one JSON object.
//!
//! `--accel` (default tcg) and `--runs N` (default 5) are the only options.

use clap::Parser;
use cordon::agent::ExecEvent;
use cordon_bench::{ms, percentile, profile_dir, static_agent};
use cordon_protocol::Exec;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "tcg")]
    accel: String,
    #[arg(long, default_value_t = 5)]
    runs: usize,
    #[arg(long, default_value_t = 200)]
    round_trips: usize,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn cordon() -> Command {
    let mut c = Command::new(profile_dir().join("cordon"));
    c.env("CORDON_AGENT", static_agent()).stdin(Stdio::null()).stderr(Stdio::null());
    c
}

/// Time from spawn to the first byte on stdout, and to exit.
fn first_byte(accel: &str) -> (Duration, Duration) {
    let t = Instant::now();
    let mut child = cordon().args(["run", "--accel", accel, "--", "echo", "x"]).stdout(Stdio::piped()).spawn().unwrap();
    let mut b = [0u8; 1];
    child.stdout.as_mut().unwrap().read_exact(&mut b).unwrap();
    let first = t.elapsed();
    assert!(child.wait().unwrap().success());
    (first, t.elapsed())
}

fn whole_true(accel: &str) -> Duration {
    let t = Instant::now();
    assert!(cordon().args(["run", "--accel", accel, "--", "true"]).stdout(Stdio::null()).status().unwrap().success());
    t.elapsed()
}

/// Bare QEMU: same kernel, initramfs, machine and accelerator, console on a
/// pipe, no control device; stops at the agent's "listening" line.
fn bare_boot(accel: &str, kernel: &std::path::Path, initrd: &std::path::Path, extra: &str) -> Duration {
    let qemu = cordon::backend::vm::probe::qemu_binary().unwrap();
    let t = Instant::now();
    let mut child = Command::new(qemu)
        .args([
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-no-reboot",
            "-M",
            "microvm,rtc=on,acpi=on",
            "-accel",
            accel,
        ])
        .args(["-cpu", if accel == "tcg" { "max" } else { "host" }, "-smp", "1", "-m", "512M"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args([
            "-append",
            &format!("console=ttyS0 panic=-1 reboot=t quiet loglevel=4 cordon.listen=vsock:1024 {extra}"),
        ])
        .args(["-serial", "stdio", "-device", "virtio-rng-device"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let found = loop {
        match out.read(&mut buf) {
            Ok(0) | Err(_) => break false,
            Ok(n) => {
                seen.extend_from_slice(&buf[..n]);
                if String::from_utf8_lossy(&seen).contains("cordon-agent: listening on") {
                    break true;
                }
            }
        }
    };
    let d = t.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    assert!(found, "bare boot never reached the marker: {}", String::from_utf8_lossy(&seen));
    d
}

async fn round_trips(accel: &str, control: &str, n: usize) -> (Duration, Duration) {
    let cli = cordon::cli::Cli::try_parse_from(["cordon", "run", "--accel", accel, "--control", control, "--", "true"])
        .unwrap();
    let cordon::cli::Command::Run(args) = cli.command else { unreachable!("run parsed") };
    let mut args = *args;
    args.agent = Some(static_agent());
    let plan = cordon::plan::Plan::from_args(&args).unwrap();
    let sb = cordon::backend::vm::start(&plan, &|_| {}).await.unwrap();
    let mut samples = Vec::new();
    for i in 0..n + 10 {
        let t = Instant::now();
        let mut h = sb.client.exec(Exec { argv: vec!["true".into()], ..Default::default() }).await.unwrap();
        h.started().await.unwrap();
        while !matches!(h.next_event().await.unwrap(), ExecEvent::Exit(_)) {}
        if i >= 10 {
            samples.push(t.elapsed());
        }
    }
    sb.close().await;
    samples.sort();
    (percentile(&samples, 50.0), percentile(&samples, 99.0))
}

fn main() {
    let a = Args::parse();
    // Warm the image cache so no run pays for building it.
    assert!(cordon().args(["image", "build"]).stdout(Stdio::null()).status().unwrap().success());
    let img = cordon::image::list().unwrap().into_iter().next().expect("an image");
    let tsc =
        cordon::backend::vm::tsc::host_tsc_khz().map(|k| format!("tsc_early_khz={k} tsc=reliable")).unwrap_or_default();
    let extra = if a.accel == "tcg" { tsc } else { String::new() };

    let (mut firsts, mut wholes, mut bares) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..a.runs {
        bares.push(bare_boot(&a.accel, &img.kernel(), &img.initramfs(), &extra));
        firsts.push(first_byte(&a.accel).0);
        wholes.push(whole_true(&a.accel));
    }
    let (bare, first, whole) = (median(bares), median(firsts), median(wholes));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (v50, v99) = rt.block_on(round_trips(&a.accel, "vsock", a.round_trips));
    let (s50, s99) = rt.block_on(round_trips(&a.accel, "serial", a.round_trips));
    let ratio = |x: Duration| ((x.as_secs_f64() / bare.as_secs_f64()) * 1000.0).round() / 1000.0;
    let out = serde_json::json!({
        "bench": "boot",
        "accel": a.accel,
        "runs": a.runs,
        "kernel": img.meta.kernel_release,
        "baseline_bare_qemu_to_agent_marker_ms": ms(bare),
        "cordon_run_to_first_output_byte_ms": ms(first),
        "cordon_run_true_whole_ms": ms(whole),
        "ratio_first_byte_vs_bare": ratio(first),
        "ratio_whole_true_vs_bare": ratio(whole),
        "overhead_first_byte_pct": ((ratio(first) - 1.0) * 1000.0).round() / 10.0,
        "warm_exec_round_trip": {
            "n": a.round_trips,
            "vsock_p50_ms": ms(v50), "vsock_p99_ms": ms(v99),
            "serial_p50_ms": ms(s50), "serial_p99_ms": ms(s99),
        },
    });
    println!("{}", serde_json::to_string_pretty(&out).unwrap());
}
