//! The namespace backend's costs, interleaved in one run: wall time of
//! `cordon run --isolation namespace -- true` beside `bwrap --unshare-all
//! --ro-bind / / true` and plain `true`; the exec round trip (`true`)
//! inside one namespace sandbox; and 1 GiB of stdout through it beside
//! `dd | cat`. Prints one JSON object. Needs bubblewrap (scripts/setup.sh).

use clap::Parser;
use cordon::agent::ExecEvent;
use cordon_bench::{ms, percentile, profile_dir, static_agent};
use cordon_protocol::Exec;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BYTES: u64 = 1 << 30;

#[derive(Parser)]
struct Args {
    /// Repetitions of each whole-command measurement (interleaved)
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Exec round trips inside one sandbox
    #[arg(long, default_value_t = 300)]
    round_trips: usize,
}

fn time_cmd(cmd: &mut Command) -> Duration {
    timed(cmd).0
}

/// CPU time (user + system) of this process's waited-for descendants so far:
/// a run's whole tree, each process reaped by its parent in turn.
fn children_cpu() -> Duration {
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: ru is a valid rusage for getrusage to fill.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Wall time and CPU time of `cmd`'s whole process tree. CPU time barely
/// moves with other load on the machine; wall time does.
fn timed(cmd: &mut Command) -> (Duration, Duration) {
    let cpu0 = children_cpu();
    let t = Instant::now();
    let st = cmd.stdout(Stdio::null()).stderr(Stdio::null()).stdin(Stdio::null()).status().expect("spawn");
    assert!(st.success(), "{cmd:?} failed: {st}");
    (t.elapsed(), children_cpu() - cpu0)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    // The in-process sandbox below re-executes this binary for ns-init and
    // the janitor, as cordon's own main does.
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.len() == 2 && argv[1] == "__ns-init" {
        cordon::backend::namespace::init::main();
    }
    if argv.len() == 3 && argv[1] == "__janitor" {
        cordon::janitor::main(std::path::Path::new(&argv[2]));
    }
    let args = Args::parse();
    let cordon_bin = profile_dir().join("cordon");
    let cordon_true = || {
        let mut c = Command::new(&cordon_bin);
        c.env("CORDON_AGENT", static_agent()).args(["run", "--isolation", "namespace", "--no-stdin", "--", "true"]);
        c
    };
    let bwrap_true = || {
        let mut c = Command::new("bwrap");
        c.args(["--unshare-all", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "true"]);
        c
    };
    // Warm caches (the image's rootfs is unpacked on first use).
    time_cmd(&mut cordon_true());
    time_cmd(&mut bwrap_true());
    let (mut c, mut b, mut t) = (Vec::new(), Vec::new(), Vec::new());
    let (mut c_cpu, mut b_cpu) = (Vec::new(), Vec::new());
    for _ in 0..args.runs {
        let (wall, cpu) = timed(&mut cordon_true());
        c.push(wall);
        c_cpu.push(cpu);
        let (wall, cpu) = timed(&mut bwrap_true());
        b.push(wall);
        b_cpu.push(cpu);
        t.push(time_cmd(&mut Command::new("true")));
    }
    let (c, b, t) = (median(c), median(b), median(t));
    let (c_cpu, b_cpu) = (median(c_cpu), median(b_cpu));
    // SAFETY: getloadavg fills up to 3 doubles of the array it is given.
    let mut load = [0f64; 3];
    unsafe { libc::getloadavg(load.as_mut_ptr(), 3) };

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let (p50, p99, n) = rt.block_on(round_trips(args.round_trips));
    // dd with 1 MiB blocks on both sides: busybox `head` writes 4 KiB at a
    // time, which would measure busybox rather than the stream.
    let count = (BYTES >> 20).to_string();
    let dd = ["dd", "if=/dev/zero", "bs=1M", &format!("count={count}"), "status=none"];
    let baseline = time_cmd(Command::new("sh").args(["-c", &format!("{} | cat > /dev/null", dd.join(" "))]));
    let through = time_cmd(
        Command::new(&cordon_bin)
            .env("CORDON_AGENT", static_agent())
            .args(["run", "--isolation", "namespace", "--no-stdin", "--"])
            .args(&dd[..4]),
    );
    let mib = BYTES as f64 / (1 << 20) as f64;
    let ratio = |a: Duration, b: Duration| ((a.as_secs_f64() / b.as_secs_f64()) * 1000.0).round() / 1000.0;
    let out = serde_json::json!({
        "bench": "ns",
        "runs": args.runs,
        // scripts/build.sh makes it static-pie; a plain `cargo build` dynamic.
        "cordon_binary": linkage(&cordon_bin),
        "run_true_median_ms": {"cordon_namespace": ms(c), "bwrap_unshare_all": ms(b), "plain_true": ms(t)},
        "ratio_cordon_vs_bwrap": ratio(c, b),
        "target_ratio_vs_bwrap": 1.5,
        // The whole process tree's CPU time per run (median).
        "run_true_cpu_median_ms": {"cordon_namespace": ms(c_cpu), "bwrap_unshare_all": ms(b_cpu)},
        "cpu_ratio_cordon_vs_bwrap": ratio(c_cpu, b_cpu),
        "load_average_1m_at_end": (load[0] * 100.0).round() / 100.0,
        "round_trip_true": {"n": n, "p50_ms": ms(p50), "p99_ms": ms(p99)},
        "stdout_throughput": {
            "bytes": BYTES,
            "cordon_mib_s": (mib / through.as_secs_f64()).round(),
            "baseline_pipe_cat_mib_s": (mib / baseline.as_secs_f64()).round(),
            "ratio_vs_baseline": ratio(baseline, through),
        }
    });
    println!("{}", serde_json::to_string_pretty(&out).expect("json"));
}

/// "dynamic" when the ELF file has a program interpreter (PT_INTERP),
/// else "static-pie": the two start and fork at different costs.
fn linkage(bin: &std::path::Path) -> &'static str {
    let data = std::fs::read(bin).expect("read cordon");
    let u = |at: usize, n: usize| data[at..at + n].iter().rev().fold(0usize, |a, b| (a << 8) | *b as usize);
    let (phoff, phentsize, phnum) = (u(0x20, 8), u(0x36, 2), u(0x38, 2));
    const PT_INTERP: usize = 3;
    if (0..phnum).any(|i| u(phoff + i * phentsize, 4) == PT_INTERP) {
        "dynamic"
    } else {
        "static-pie"
    }
}

async fn round_trips(count: usize) -> (Duration, Duration, usize) {
    let cli =
        cordon::cli::Cli::try_parse_from(["cordon", "run", "--isolation", "namespace", "--", "true"]).expect("args");
    let cordon::cli::Command::Run(a) = cli.command else { unreachable!("run parsed") };
    let mut plan = cordon::plan::Plan::from_args(&a).expect("plan");
    plan.agent = Some(static_agent());
    let sb = cordon::backend::start(&plan, Default::default(), &|_| {}).await.expect("namespace sandbox");
    let mut samples = Vec::with_capacity(count);
    for i in 0..count + 20 {
        let t = Instant::now();
        let mut h = sb.client.exec(Exec { argv: vec!["true".into()], ..Default::default() }).await.expect("exec");
        h.started().await.expect("started");
        while !matches!(h.next_event().await.expect("event"), ExecEvent::Exit(_)) {}
        if i >= 20 {
            samples.push(t.elapsed());
        }
    }
    sb.close().await;
    samples.sort();
    (percentile(&samples, 50.0), percentile(&samples, 99.0), samples.len())
}
