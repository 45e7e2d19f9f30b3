//! Boot benchmark, per guest kernel (Debian's, cordon's): time from
//! `cordon run` to the first byte of a step's output and to its exit,
//! beside a bare QEMU boot of the same kernel and initramfs to the agent's
//! listening marker (same machine, accelerator, vCPUs, memory and kernel
//! command line), all interleaved in one run so the host's load falls on
//! every variant alike; plus the boot's stages per kernel and warm exec
//! round trips over vsock and over virtio-serial. Prints one JSON object
//! of medians.
//!
//! Stages of a run, from `cordon run --json` with cordon's vm log at debug:
//! the guest's uptime when the agent started (`kernel_boot_ms`: firmware
//! and kernel), the agent's start to ready (`agent_start_ms`: init), QEMU's
//! spawn to the agent's listening marker (seen only with vhost-user vsock)
//! and to its ready (host clock: the log lines' arrival) and ready to the
//! first output byte (host clock).

use clap::Parser;
use cordon::agent::ExecEvent;
use cordon::image::KernelChoice;
use cordon_bench::{ms, percentile, profile_dir, static_agent};
use cordon_protocol::Exec;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "tcg")]
    accel: String,
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Warm exec round trips per transport (0 skips them)
    #[arg(long, default_value_t = 200)]
    round_trips: usize,
    /// The kernels to compare, in order
    #[arg(long, value_enum, value_delimiter = ',', default_value = "debian,cordon")]
    kernels: Vec<KernelChoice>,
}

/// 40%: cordon's kernel's first output at least this much sooner than Debian's.
const TARGET_SOONER_PCT: f64 = 40.0;
/// cordon's first output within this factor of bare QEMU on the same kernel.
const TARGET_VS_BARE: f64 = 1.10;

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

fn median_u64(v: &[u64]) -> u64 {
    let mut v = v.to_vec();
    v.sort_unstable();
    v[v.len() / 2]
}

fn kernel_name(k: KernelChoice) -> &'static str {
    match k {
        KernelChoice::Auto => "auto",
        KernelChoice::Debian => "debian",
        KernelChoice::Cordon => "cordon",
    }
}

fn cordon() -> Command {
    let mut c = Command::new(profile_dir().join("cordon"));
    c.env("CORDON_AGENT", static_agent()).stdin(Stdio::null());
    c
}

/// One `cordon run -- echo x`, timed on the host.
struct Run {
    first_byte: Duration,
    whole: Duration,
    /// cordon's spawn to its "starting qemu" log line.
    before_qemu: Duration,
    /// "starting qemu" to "agent ready".
    qemu_to_ready: Duration,
    /// "starting qemu" to "agent listening" (the console marker bare QEMU's
    /// time is measured to), and from there to "agent ready" (the connect
    /// and handshake).
    qemu_to_marker: Option<Duration>,
    marker_to_ready: Option<Duration>,
    /// "agent ready" to the first output byte.
    ready_to_first: Duration,
    kernel_boot_ms: u64,
    agent_start_ms: u64,
}

fn cordon_run(accel: &str, kernel: KernelChoice) -> Run {
    let t = Instant::now();
    let mut child = cordon()
        .args(["--log", "cordon::backend::vm=debug", "run", "--json", "--accel", accel])
        .args(["--kernel", kernel_name(kernel), "--", "echo", "x"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The log lines are timed as they arrive: cordon logs "starting qemu"
    // just before the spawn and "agent ready" as the agent's Ready arrives.
    let stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let (mut spawn, mut marker, mut ready, mut all) = (None, None, None, String::new());
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if spawn.is_none() && line.contains("starting qemu") {
                spawn = Some(Instant::now());
            } else if marker.is_none() && line.contains("agent listening") {
                marker = Some(Instant::now());
            } else if ready.is_none() && line.contains("agent ready") {
                ready = Some(Instant::now());
            }
            all.push_str(&line[..line.len().min(300)]);
            all.push('\n');
        }
        (spawn, marker, ready, all)
    });
    let (mut first, mut boot) = (None, None);
    for line in BufReader::new(child.stdout.take().unwrap()).lines().map_while(Result::ok) {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        match v["event"].as_str() {
            Some("sandbox_ready") => {
                let get = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("sandbox_ready without {k}: {line}"));
                boot = Some((get("kernel_boot_ms"), get("agent_start_ms")));
            }
            Some("output") if first.is_none() => first = Some(Instant::now()),
            _ => {}
        }
    }
    let status = child.wait().unwrap();
    let whole = t.elapsed();
    let (spawn, marker, ready, log) = log.join().unwrap();
    assert!(status.success(), "cordon run failed ({status}):\n{log}");
    let (Some(first), Some(spawn), Some(ready), Some((kernel_boot_ms, agent_start_ms))) = (first, spawn, ready, boot)
    else {
        panic!("a run without output, its log lines or sandbox_ready:\n{log}");
    };
    Run {
        first_byte: first - t,
        whole,
        before_qemu: spawn - t,
        qemu_to_ready: ready.saturating_duration_since(spawn),
        qemu_to_marker: marker.map(|m| m.saturating_duration_since(spawn)),
        marker_to_ready: marker.map(|m| ready.saturating_duration_since(m)),
        ready_to_first: first.saturating_duration_since(ready),
        kernel_boot_ms,
        agent_start_ms,
    }
}

/// Bare QEMU: the kernel, initramfs, machine, accelerator, vCPUs, memory and
/// kernel command line cordon uses, a token in fw_cfg (without one the agent
/// waits for it), console on a pipe, no control device; stops at the
/// agent's "listening" line.
fn bare_boot(accel: &str, kernel: &Path, initrd: &Path, cmdline: &str, token: &Path) -> Duration {
    let qemu = cordon::backend::vm::probe::qemu_binary().unwrap();
    let t = Instant::now();
    let mut child = Command::new(qemu)
        .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
        .args(["-M", "microvm,rtc=on,acpi=on", "-accel", accel])
        .args(["-cpu", if accel == "tcg" { "max" } else { "host" }])
        .args(["-smp", &cordon::resources::default_cpus().to_string()])
        .args(["-m", &format!("{}M", cordon::resources::default_memory_mib())])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", cmdline])
        .arg("-fw_cfg")
        .arg(format!("name={},file={}", cordon::backend::vm::args::TOKEN_FW_CFG, token.display()))
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

/// The kernel command line vm::start builds for a run without network, for
/// a kernel of `hz`.
fn bare_cmdline(accel: &str, hz: Option<u64>) -> String {
    let mut c = cordon::backend::vm::args::kernel_cmdline(cordon::backend::vm::args::Machine::Microvm, "vsock:1024");
    if accel == "tcg" {
        if let Some(khz) = cordon::backend::vm::tsc::host_tsc_khz() {
            c.push(' ');
            c.push_str(&cordon::backend::vm::args::tcg_timing(khz, hz));
        }
    }
    if let Some(extra) = std::env::var_os("CORDON_KERNEL_APPEND") {
        c.push(' ');
        c.push_str(&extra.to_string_lossy());
    }
    c
}

fn load_avg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

#[derive(Default)]
struct Samples {
    bare: Vec<Duration>,
    runs: Vec<Run>,
}

impl Samples {
    fn summary(&self, image: &cordon::image::Image) -> serde_json::Value {
        let bare = median(&self.bare);
        let pick = |f: fn(&Run) -> Duration| median(&self.runs.iter().map(f).collect::<Vec<_>>());
        let first = pick(|r| r.first_byte);
        let (kernel, init) = (
            median_u64(&self.runs.iter().map(|r| r.kernel_boot_ms).collect::<Vec<_>>()),
            median_u64(&self.runs.iter().map(|r| r.agent_start_ms).collect::<Vec<_>>()),
        );
        // The median of the runs that have the stage; null when none has.
        let pick_some = |f: fn(&Run) -> Option<Duration>| {
            let v: Vec<Duration> = self.runs.iter().filter_map(f).collect();
            (!v.is_empty()).then(|| ms(median(&v)))
        };
        let min = |v: Vec<Duration>| ms(v.into_iter().min().unwrap_or_default());
        serde_json::json!({
            "kernel_release": image.meta.kernel_release,
            "image": image.meta.name,
            "baseline_bare_qemu_to_agent_marker_ms": ms(bare),
            "cordon_run_to_first_output_byte_ms": ms(first),
            "cordon_run_whole_ms": ms(pick(|r| r.whole)),
            "ratio_first_byte_vs_bare": ratio(first, bare),
            "min_first_byte_ms": min(self.runs.iter().map(|r| r.first_byte).collect()),
            "min_bare_ms": min(self.bare.clone()),
            "stages_ms": {
                "firmware_and_kernel_guest": kernel,
                "init_agent_start_to_ready_guest": init,
                "cordon_start_to_qemu_spawn_host": ms(pick(|r| r.before_qemu)),
                "qemu_spawn_to_agent_ready_host": ms(pick(|r| r.qemu_to_ready)),
                "qemu_spawn_to_listening_marker_host": pick_some(|r| r.qemu_to_marker),
                "listening_marker_to_agent_ready_host": pick_some(|r| r.marker_to_ready),
                "ready_to_first_output_byte_host": ms(pick(|r| r.ready_to_first)),
            },
        })
    }
}

fn ratio(x: Duration, base: Duration) -> f64 {
    ((x.as_secs_f64() / base.as_secs_f64()) * 1000.0).round() / 1000.0
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
    // Build (or find) each kernel's boot image first, so no run pays for it.
    let images: Vec<(KernelChoice, cordon::image::Image)> = a
        .kernels
        .iter()
        .map(|&k| {
            let img = cordon::image::build_default(&static_agent(), k, false, &|m| eprintln!("{m}"))
                .unwrap_or_else(|e| panic!("the {} image: {e}", kernel_name(k)));
            (k, img)
        })
        .collect();
    let cmdlines: Vec<String> = images.iter().map(|(_, img)| bare_cmdline(&a.accel, img.meta.kernel_hz)).collect();
    let token = std::env::temp_dir().join(format!("bench-boot-token-{}", std::process::id()));
    std::fs::write(&token, "0123456789abcdef").unwrap();
    let load_before = load_avg();
    let mut samples: Vec<Samples> = images.iter().map(|_| Samples::default()).collect();
    for i in 0..a.runs {
        // Rotate which kernel goes first, and alternate bare and cordon.
        for j in 0..images.len() {
            let k = (i + j) % images.len();
            let (choice, img) = &images[k];
            if (i + j) % 2 == 0 {
                samples[k].bare.push(bare_boot(&a.accel, &img.kernel(), &img.initramfs(), &cmdlines[k], &token));
                samples[k].runs.push(cordon_run(&a.accel, *choice));
            } else {
                samples[k].runs.push(cordon_run(&a.accel, *choice));
                samples[k].bare.push(bare_boot(&a.accel, &img.kernel(), &img.initramfs(), &cmdlines[k], &token));
            }
        }
    }
    let load_after = load_avg();
    let _ = std::fs::remove_file(&token);
    let mut kernels = serde_json::Map::new();
    for ((choice, img), s) in images.iter().zip(&samples) {
        kernels.insert(kernel_name(*choice).into(), s.summary(img));
    }
    let first_of = |k: KernelChoice| {
        images
            .iter()
            .position(|(c, _)| *c == k)
            .map(|i| median(&samples[i].runs.iter().map(|r| r.first_byte).collect::<Vec<_>>()))
    };
    let mut targets = serde_json::Map::new();
    if let (Some(deb), Some(own)) = (first_of(KernelChoice::Debian), first_of(KernelChoice::Cordon)) {
        let sooner = ((1.0 - own.as_secs_f64() / deb.as_secs_f64()) * 1000.0).round() / 10.0;
        targets.insert(
            "cordon_kernel_first_output_sooner_than_debian_pct".into(),
            serde_json::json!({"value": sooner, "target_at_least": TARGET_SOONER_PCT, "met": sooner >= TARGET_SOONER_PCT}),
        );
    }
    if let Some(i) = images.iter().position(|(c, _)| *c == KernelChoice::Cordon) {
        let r =
            ratio(median(&samples[i].runs.iter().map(|r| r.first_byte).collect::<Vec<_>>()), median(&samples[i].bare));
        targets.insert(
            "cordon_kernel_first_output_vs_bare_qemu".into(),
            serde_json::json!({"value": r, "target_at_most": TARGET_VS_BARE, "met": r <= TARGET_VS_BARE}),
        );
    }
    let mut out = serde_json::json!({
        "bench": "boot",
        "accel": a.accel,
        "runs": a.runs,
        "median_of": a.runs,
        "load_avg_1m": {"before": load_before, "after": load_after},
        "kernel_cmdline_bare": cmdlines,
        "kernels": kernels,
        "targets": targets,
    });
    if a.round_trips > 0 {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (v50, v99) = rt.block_on(round_trips(&a.accel, "vsock", a.round_trips));
        let (s50, s99) = rt.block_on(round_trips(&a.accel, "serial", a.round_trips));
        out["warm_exec_round_trip"] = serde_json::json!({
            "n": a.round_trips,
            "kernel": "auto",
            "vsock_p50_ms": ms(v50), "vsock_p99_ms": ms(v99),
            "serial_p50_ms": ms(s50), "serial_p99_ms": ms(s99),
        });
    }
    println!("{}", serde_json::to_string_pretty(&out).unwrap());
}
