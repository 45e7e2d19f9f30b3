//! Network benchmark: bulk TCP guest->host throughput and connection rate
//! through cordon's egress gate, versus QEMU connected to passt directly
//! (passt alone), in the same run. Prints JSON.
//! Under TCG the guest's own CPU is the bottleneck; the ratio is what counts.

use clap::Parser;
use cordon::agent::ExecEvent;
use cordon_bench::static_agent;
use cordon_protocol::Exec;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "tcg")]
    accel: String,
    /// MiB to send per throughput run
    #[arg(long, default_value_t = 128)]
    mib: u64,
    /// Connections per connection-rate run
    #[arg(long, default_value_t = 30)]
    conns: u32,
    /// Interleaved repetitions of each configuration
    #[arg(long, default_value_t = 3)]
    reps: usize,
}

/// (bytes, seconds from accept to EOF) per connection.
type Records = Arc<Mutex<Vec<(u64, f64)>>>;

/// A sink that records every connection it accepts.
fn sink() -> (u16, Records) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let rec = Arc::new(Mutex::new(Vec::new()));
    let r2 = rec.clone();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let r3 = r2.clone();
            std::thread::spawn(move || {
                let mut c = c;
                let t = Instant::now();
                let mut buf = vec![0u8; 1 << 16];
                let mut n = 0u64;
                while let Ok(k) = c.read(&mut buf) {
                    if k == 0 {
                        break;
                    }
                    n += k as u64;
                }
                r3.lock().unwrap().push((n, t.elapsed().as_secs_f64()));
            });
        }
    });
    (port, rec)
}

async fn run(accel: &str, judge: bool, port: u16, script: &str) -> Duration {
    let cli = cordon::cli::Cli::try_parse_from([
        "cordon",
        "run",
        "--accel",
        accel,
        "--allow",
        &format!("host:{port}"),
        "--",
        "true",
    ])
    .unwrap();
    let cordon::cli::Command::Run(args) = cli.command else { unreachable!("run parsed") };
    let mut args = *args;
    args.agent = Some(static_agent());
    let mut plan = cordon::plan::Plan::from_args(&args).unwrap();
    plan.bench_gate_passthrough = !judge;
    let sb = cordon::backend::vm::start(&plan, &|_| {}).await.unwrap();
    let t = Instant::now();
    let mut h = sb
        .client
        .exec(Exec { argv: vec!["sh".into(), "-c".into(), script.into()], ..Default::default() })
        .await
        .unwrap();
    h.started().await.unwrap();
    while !matches!(h.next_event().await.unwrap(), ExecEvent::Exit(_)) {}
    let d = t.elapsed();
    sb.close().await;
    d
}

fn main() {
    let a = Args::parse();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut samples: std::collections::BTreeMap<&str, (Vec<f64>, Vec<f64>)> = Default::default();
    // Interleaved repetitions, medians reported: TCG throughput drifts with load.
    for _ in 0..a.reps {
        for (label, judge) in [("passt_alone", false), ("through_gate", true)] {
            let (port, rec) = sink();
            let bulk = format!("dd if=/dev/zero bs=64k count={} 2>/dev/null | nc -w 1 10.0.2.2 {port}", a.mib * 16);
            rt.block_on(run(&a.accel, judge, port, &bulk));
            std::thread::sleep(Duration::from_millis(300));
            let (bytes, secs) = rec.lock().unwrap().iter().copied().max_by_key(|r| r.0).unwrap_or((0, 1.0));
            let (port2, rec2) = sink();
            let conns =
                format!("i=0; while [ $i -lt {} ]; do echo x | nc -w 1 10.0.2.2 {port2}; i=$((i+1)); done", a.conns);
            let d = rt.block_on(run(&a.accel, judge, port2, &conns));
            std::thread::sleep(Duration::from_millis(300));
            let done = rec2.lock().unwrap().len();
            let e = samples.entry(label).or_default();
            e.0.push((bytes as f64 / (1 << 20) as f64 / secs * 10.0).round() / 10.0);
            e.1.push((done as f64 / d.as_secs_f64() * 10.0).round() / 10.0);
        }
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let mut results = serde_json::Map::new();
    for (label, (mibs, rates)) in &samples {
        results.insert(
            label.to_string(),
            serde_json::json!({
                "bulk_mib_s": median(mibs), "bulk_mib_s_samples": mibs,
                "connections_per_s": median(rates), "connections_per_s_samples": rates,
            }),
        );
    }
    let t = |k: &str, f: &str| results[k][f].as_f64().unwrap_or(0.0);
    let out = serde_json::json!({
        "bench": "net",
        "accel": a.accel,
        "results": results,
        "ratio_throughput_gate_vs_passt": ((t("through_gate", "bulk_mib_s") / t("passt_alone", "bulk_mib_s")) * 1000.0).round() / 1000.0,
        "ratio_conn_rate_gate_vs_passt": ((t("through_gate", "connections_per_s") / t("passt_alone", "connections_per_s")) * 1000.0).round() / 1000.0,
    });
    println!("{}", serde_json::to_string_pretty(&out).unwrap());
}
