//! Exec round trip (`true`) p50/p99 over the local-agent backend, and stdout
//! throughput of 1 GiB through cordon versus `head | cat` through a pipe,
//! measured in the same run. Prints one JSON object.

use cordon::agent::{AgentClient, ExecEvent};
use cordon_bench::{ms, percentile, profile_dir, static_agent};
use cordon_protocol::Exec;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ROUND_TRIPS: usize = 300;
const BYTES: u64 = 1 << 30;

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let (p50, p99, n) = rt.block_on(round_trips());
    let cordon_bin = profile_dir().join("cordon");
    let baseline = time_cmd(Command::new("sh").args(["-c", &format!("head -c {BYTES} /dev/zero | cat > /dev/null")]));
    let through = time_cmd(
        Command::new(&cordon_bin)
            .env("CORDON_AGENT", static_agent())
            .args([
                "run",
                "--isolation",
                "local-agent",
                "--no-stdin",
                "--",
                "head",
                "-c",
                &BYTES.to_string(),
                "/dev/zero",
            ])
            .stderr(Stdio::null()),
    );
    let mib = BYTES as f64 / (1 << 20) as f64;
    let out = serde_json::json!({
        "bench": "exec",
        "backend": "local-agent",
        "round_trip_true": {"n": n, "p50_ms": ms(p50), "p99_ms": ms(p99)},
        "stdout_throughput": {
            "bytes": BYTES,
            "cordon_s": through.as_secs_f64(),
            "cordon_mib_s": (mib / through.as_secs_f64()).round(),
            "baseline_pipe_cat_s": baseline.as_secs_f64(),
            "baseline_mib_s": (mib / baseline.as_secs_f64()).round(),
            "ratio_vs_baseline": ((baseline.as_secs_f64() / through.as_secs_f64()) * 1000.0).round() / 1000.0,
        }
    });
    println!("{}", serde_json::to_string_pretty(&out).expect("json"));
}

fn time_cmd(cmd: &mut Command) -> Duration {
    let t = Instant::now();
    let st = cmd.stdout(Stdio::null()).stdin(Stdio::null()).status().expect("spawn");
    assert!(st.success(), "{cmd:?} failed: {st}");
    t.elapsed()
}

async fn round_trips() -> (Duration, Duration, usize) {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    let mut child = cordon::backend::local::agent_command(&static_agent(), &theirs, "bench").spawn().expect("agent");
    drop(theirs);
    ours.set_nonblocking(true).expect("nonblocking");
    let stream = tokio::net::UnixStream::from_std(ours).expect("tokio stream");
    let client = AgentClient::connect(stream, "bench", Duration::from_secs(10)).await.expect("connect");
    let mut samples = Vec::with_capacity(ROUND_TRIPS);
    for i in 0..ROUND_TRIPS + 20 {
        let t = Instant::now();
        let mut h = client.exec(Exec { argv: vec!["true".into()], ..Default::default() }).await.expect("exec");
        h.started().await.expect("started");
        loop {
            if let ExecEvent::Exit(_) = h.next_event().await.expect("event") {
                break;
            }
        }
        if i >= 20 {
            samples.push(t.elapsed());
        }
    }
    let _ = client.shutdown(Duration::from_secs(5)).await;
    let _ = child.wait();
    samples.sort();
    (percentile(&samples, 50.0), percentile(&samples, 99.0), samples.len())
}
