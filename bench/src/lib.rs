//! Shared helpers for the benchmark binaries.

use std::path::PathBuf;
use std::time::Duration;

/// Percentile (0..=100) of a sample, nearest-rank.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// target/release or target/debug next to this binary.
pub fn profile_dir() -> PathBuf {
    std::env::current_exe().expect("current_exe").parent().expect("bin dir").to_path_buf()
}

pub fn static_agent() -> PathBuf {
    std::env::var_os("CORDON_AGENT").map(PathBuf::from).unwrap_or_else(|| {
        profile_dir()
            .parent()
            .expect("target dir")
            .join("agent")
            .join(cordon::AGENT_TRIPLE)
            .join("release")
            .join("cordon-agent")
    })
}
