//! Userland image benchmark, baselines in the same run, rounds interleaved:
//! (1) time from spawning `cordon run [--image debian] -- echo hi` to the
//! first stdout byte and to exit, debian beside the default image on each
//! backend (namespace; VM under `--accel`, default tcg); (2) `make -jN` of a
//! generated, fixed C tree (see `ctree.rs`) on the host, in the namespace
//! backend and in the VM, both on the debian image. The compile is timed
//! inside the sandbox with `date` around make, apart from the whole run's
//! wall time, so startup and workspace copy are not counted as compile speed.
//! Prints one JSON object; progress goes to stderr.
//!
//! Needs the debian image in the cache (`cordon image build debian`): the
//! bench never builds it, which would take minutes and time the mirror.

mod ctree;

use clap::Parser;
use cordon_bench::{ms, profile_dir, static_agent};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// VM accelerator
    #[arg(long, default_value = "tcg")]
    accel: String,
    /// Interleaved rounds of the first-output measurement (4 runs each)
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Interleaved rounds of the compile on the host and in namespaces
    #[arg(long, default_value_t = 3)]
    compile_rounds: usize,
    /// Of those rounds, how many also compile in the VM (slow under TCG)
    #[arg(long, default_value_t = 1)]
    vm_compile_rounds: usize,
    /// C modules in the generated tree
    #[arg(long, default_value_t = 40)]
    files: usize,
    /// Generated functions per module
    #[arg(long, default_value_t = 8)]
    funcs: usize,
    /// make -j, and the VM's --cpus
    #[arg(long, default_value_t = 2)]
    jobs: usize,
    /// Seed of the generated tree
    #[arg(long, default_value_t = 0x5eed_c0de)]
    seed: u64,
    /// Only write the generated tree into this (new) directory and exit
    #[arg(long)]
    emit_tree: Option<PathBuf>,
}

/// The temp dir holding the generated tree; removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn cordon() -> Command {
    let mut c = Command::new(profile_dir().join("cordon"));
    c.env("CORDON_AGENT", static_agent()).arg("run").arg("--no-stdin").stdin(Stdio::null());
    c
}

fn debian<'a>(backend: &[&'a str]) -> Vec<&'a str> {
    [backend, &["--image", "debian"]].concat()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ratio(a: Duration, b: Duration) -> f64 {
    ((a.as_secs_f64() / b.as_secs_f64()) * 1000.0).round() / 1000.0
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

/// Time from spawn to the first byte on stdout, and to exit.
fn first_byte(backend: &[&str]) -> (Duration, Duration) {
    let t = Instant::now();
    let mut child = cordon()
        .args(backend)
        .args(["--", "echo", "hi"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn cordon");
    let mut b = [0u8; 1];
    child.stdout.as_mut().expect("piped").read_exact(&mut b).expect("first stdout byte");
    let first = t.elapsed();
    let st = child.wait().expect("wait cordon");
    assert!(st.success(), "cordon run {backend:?} -- echo hi: {st}");
    (first, t.elapsed())
}

/// One compile: the run's wall time, and what it printed: make's duration
/// and CPU time, the compiler, the program's checksum.
struct Compiled {
    wall: Duration,
    compile: Duration,
    cpu: Duration,
    cc: String,
    checksum: String,
}

/// The step: make, timed by `date` around it and by `times` in a shell that
/// ran only make (user+system CPU of the compilers, which load on this
/// host's other tenants inflates far less than wall time).
fn compile_script(jobs: usize) -> String {
    format!(
        "set -e\ncc --version | head -n1 | sed 's/^/bench-image-cc /'\ns=$(date +%s.%N)\n\
         sh -c 'make -s -j{jobs} >/dev/null || exit 1; times >.bench-cpu'\ne=$(date +%s.%N)\n\
         echo \"bench-image-compile $s $e\"\necho \"bench-image-cpu $(tail -n1 .bench-cpu)\"\n./prog\n"
    )
}

/// Seconds in a `times` line: `0m6.410000s 0m0.520000s` (user, system).
fn times_secs(line: &str) -> Option<f64> {
    let each: Option<Vec<f64>> = line
        .split_whitespace()
        .map(|t| {
            let (m, s) = t.strip_suffix('s')?.split_once('m')?;
            Some(m.parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?)
        })
        .collect();
    each.filter(|v| !v.is_empty()).map(|v| v.iter().sum())
}

fn run_compile(cmd: &mut Command) -> Compiled {
    let t = Instant::now();
    let out = cmd.stdin(Stdio::null()).output().expect("spawn compile");
    let wall = t.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{cmd:?}: {}\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    let field = |tag: &str| stdout.lines().find_map(|l| l.strip_prefix(tag)).map(str::trim).map(str::to_owned);
    let stamps = field("bench-image-compile ").expect("compile timestamps");
    let (s, e) = stamps.split_once(' ').expect("two timestamps");
    let (s, e): (f64, f64) = (s.parse().expect("start stamp"), e.parse().expect("end stamp"));
    let cpu = field("bench-image-cpu ").as_deref().and_then(times_secs).expect("make's CPU time");
    Compiled {
        wall,
        compile: Duration::from_secs_f64((e - s).max(0.0)),
        cpu: Duration::from_secs_f64(cpu),
        cc: field("bench-image-cc ").unwrap_or_default(),
        checksum: field("checksum ").expect("program checksum"),
    }
}

/// Copies the pristine tree so the host's objects never reach a workspace.
fn host_copy(tree: &Path, dst: &Path) {
    let _ = std::fs::remove_dir_all(dst);
    std::fs::create_dir_all(dst).expect("host build dir");
    for e in std::fs::read_dir(tree).expect("read tree") {
        let e = e.expect("tree entry");
        std::fs::copy(e.path(), dst.join(e.file_name())).expect("copy tree file");
    }
}

/// Medians of a backend's compiles, as JSON, plus (wall, compile, cpu).
fn summarize(runs: &[Compiled]) -> (serde_json::Value, [Duration; 3]) {
    let wall = median(runs.iter().map(|c| c.wall).collect());
    let compile = median(runs.iter().map(|c| c.compile).collect());
    let cpu = median(runs.iter().map(|c| c.cpu).collect());
    let v = serde_json::json!({
        "n": runs.len(),
        "compile_s": secs(compile),
        "compile_cpu_s": secs(cpu),
        "wall_s": secs(wall),
        "outside_compile_s": secs(wall.saturating_sub(compile)),
        "compile_s_samples": runs.iter().map(|c| secs(c.compile)).collect::<Vec<_>>(),
        "wall_s_samples": runs.iter().map(|c| secs(c.wall)).collect::<Vec<_>>(),
        "compile_cpu_s_samples": runs.iter().map(|c| secs(c.cpu)).collect::<Vec<_>>(),
        "cc": runs.first().map(|c| c.cc.clone()),
    });
    (v, [wall, compile, cpu])
}

fn main() -> ExitCode {
    let a = Args::parse();
    if let Some(dir) = &a.emit_tree {
        std::fs::create_dir(dir).expect("--emit-tree: a new directory");
        ctree::write(dir, a.seed, a.files, a.funcs).expect("generate C tree");
        return ExitCode::SUCCESS;
    }
    let ns: &[&str] = &["--isolation", "namespace"];
    let vm: &[&str] = &["--isolation", "vm", "--accel", &a.accel];

    // The debian image must already be cached: --no-build fails naming the
    // command that builds it instead of building it here.
    let check = cordon().args(debian(ns)).args(["--no-build", "--", "true"]).output().expect("spawn cordon");
    if !check.status.success() {
        eprint!("{}", String::from_utf8_lossy(&check.stderr));
        eprintln!("bench-image: the debian image is needed; build it first with `cordon image build debian`");
        return ExitCode::from(2);
    }

    // Warm every configuration once (the default image may need building).
    let configs: [(&str, Vec<&str>); 4] = [
        ("namespace_default", ns.to_vec()),
        ("namespace_debian", debian(ns)),
        ("vm_default", vm.to_vec()),
        ("vm_debian", debian(vm)),
    ];
    for (label, args) in &configs {
        eprintln!("bench-image: warm {label}");
        first_byte(args);
    }
    let mut firsts: Vec<(Vec<Duration>, Vec<Duration>)> = vec![Default::default(); configs.len()];
    for round in 0..a.rounds {
        for (i, (label, args)) in configs.iter().enumerate() {
            let (f, e) = first_byte(args);
            eprintln!("bench-image: round {round} {label}: first byte {:.0} ms, exit {:.0} ms", ms(f), ms(e));
            firsts[i].0.push(f);
            firsts[i].1.push(e);
        }
    }
    let med: Vec<(Duration, Duration)> = firsts.into_iter().map(|(f, e)| (median(f), median(e))).collect();
    let fo = |i: usize| serde_json::json!({"first_byte_ms": ms(med[i].0), "exit_ms": ms(med[i].1)});

    // The compile.
    let scratch = Scratch(std::env::temp_dir().join(format!("cordon-bench-image-{}", std::process::id())));
    let tree = scratch.0.join("tree");
    std::fs::create_dir_all(&tree).expect("tree dir");
    ctree::write(&tree, a.seed, a.files, a.funcs).expect("generate C tree");
    let lines: usize = std::fs::read_dir(&tree)
        .expect("read tree")
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).map(|s| s.lines().count()).unwrap_or(0))
        .sum();
    eprintln!("bench-image: C tree: {} modules x {} functions, {lines} lines, in {}", a.files, a.funcs, tree.display());
    let script = compile_script(a.jobs);
    let in_sandbox = |backend: &[&str], extra: &[&str]| {
        let mut c = cordon();
        c.args(debian(backend)).args(extra).arg("--workspace").arg(&tree).args(["--", "sh", "-c", &script]);
        c
    };
    let cpus = a.jobs.to_string();
    let (mut host, mut nsb, mut vmb) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..a.compile_rounds {
        // Alternate who goes first, so a drift in the host's load does not
        // always favour the same side.
        let mut order = vec!["host", "namespace"];
        if round % 2 == 1 {
            order.reverse();
        }
        if round < a.vm_compile_rounds {
            order.push("vm");
        }
        for place in order {
            let (c, into) = match place {
                "host" => {
                    let dir = scratch.0.join("host");
                    host_copy(&tree, &dir);
                    (run_compile(Command::new("sh").args(["-c", &script]).current_dir(&dir)), &mut host)
                }
                "namespace" => (run_compile(&mut in_sandbox(ns, &[])), &mut nsb),
                _ => (run_compile(&mut in_sandbox(vm, &["--cpus", &cpus])), &mut vmb),
            };
            eprintln!(
                "bench-image: round {round} {place}: make {:.2} s ({:.2} s CPU), wall {:.2} s",
                c.compile.as_secs_f64(),
                c.cpu.as_secs_f64(),
                c.wall.as_secs_f64()
            );
            into.push(c);
        }
    }
    let checksum = host[0].checksum.clone();
    for c in nsb.iter().chain(&vmb).chain(&host) {
        assert_eq!(c.checksum, checksum, "the programs built in each place must compute the same checksum");
    }
    assert!(!tree.join("prog").exists(), "a sandbox wrote its build back into the workspace");
    let (host_v, [host_wall, host_compile, host_cpu]) = summarize(&host);
    let (ns_v, [ns_wall, ns_compile, ns_cpu]) = summarize(&nsb);
    let mut compile = serde_json::json!({
        "tree": {"modules": a.files, "functions_per_module": a.funcs, "lines": lines, "seed": a.seed, "make_jobs": a.jobs},
        "checksum": checksum,
        "host": host_v,
        "namespace_debian": ns_v,
        "ratio_namespace_compile_vs_host": ratio(ns_compile, host_compile),
        "ratio_namespace_wall_vs_host": ratio(ns_wall, host_wall),
        "ratio_namespace_cpu_vs_host": ratio(ns_cpu, host_cpu),
        "target_ratio_namespace_vs_host": 1.1,
    });
    if !vmb.is_empty() {
        let (vm_v, [vm_wall, vm_compile, vm_cpu]) = summarize(&vmb);
        compile["vm_debian"] = vm_v;
        compile["vm_cpus"] = a.jobs.into();
        compile["ratio_vm_compile_vs_host"] = ratio(vm_compile, host_compile).into();
        compile["ratio_vm_wall_vs_host"] = ratio(vm_wall, host_wall).into();
        compile["ratio_vm_guest_cpu_vs_host"] = ratio(vm_cpu, host_cpu).into();
    }
    let out = serde_json::json!({
        "bench": "image",
        "accel": a.accel,
        "first_output": {
            "rounds": a.rounds,
            "command": "echo hi",
            "namespace_default": fo(0),
            "namespace_debian": fo(1),
            "vm_default": fo(2),
            "vm_debian": fo(3),
            "ratio_namespace_debian_vs_default_first_byte": ratio(med[1].0, med[0].0),
            "ratio_vm_debian_vs_default_first_byte": ratio(med[3].0, med[2].0),
            "ratio_vm_debian_vs_default_exit": ratio(med[3].1, med[2].1),
        },
        "compile": compile,
    });
    println!("{}", serde_json::to_string_pretty(&out).expect("json"));
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_times_secs_table() {
        for (line, want) in [
            ("0m6.410000s 0m0.520000s", Some(6.93)),
            ("1m2.5s 0m0.5s", Some(63.0)),
            ("0m0.00s 0m0.00s", Some(0.0)),
            ("6.4 0.5", None),
            ("", None),
        ] {
            let got = times_secs(line);
            assert_eq!(got.map(|g| (g * 1000.0).round()), want.map(|w: f64| (w * 1000.0).round()), "{line:?}");
        }
    }
}
