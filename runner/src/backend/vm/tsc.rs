//! The host TSC frequency, for TCG guests on x86_64. Under TCG the guest's
//! TSC is the host's, and a guest that calibrates it against the emulated PIT
//! while its vCPU thread is descheduled (several VMs on two cores) fails
//! calibration, marks the TSC unstable, finds no HPET or PM timer on microvm,
//! and hangs at boot. `tsc_early_khz=` skips that calibration.

/// Measured once per host boot and cached.
pub fn host_tsc_khz() -> Option<u64> {
    if std::env::consts::ARCH != "x86_64" {
        return None;
    }
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let cache = crate::image::cache_dir().join(format!("tsc-khz-{}", boot_id.trim()));
    if let Some(v) = std::fs::read_to_string(&cache).ok().and_then(|s| s.trim().parse().ok()) {
        return Some(v);
    }
    let khz = measure()?;
    if let Some(dir) = cache.parent() {
        let _ = std::fs::create_dir_all(dir);
        let _ = std::fs::write(&cache, khz.to_string());
    }
    Some(khz)
}

#[cfg(target_arch = "x86_64")]
fn measure() -> Option<u64> {
    // The median of a few short windows tolerates one being preempted.
    let mut samples = Vec::new();
    for _ in 0..5 {
        let t0 = std::time::Instant::now();
        // SAFETY: rdtsc has no preconditions on x86_64.
        let c0 = unsafe { core::arch::x86_64::_rdtsc() };
        std::thread::sleep(std::time::Duration::from_millis(10));
        // SAFETY: as above.
        let c1 = unsafe { core::arch::x86_64::_rdtsc() };
        let ns = t0.elapsed().as_nanos() as u64;
        if ns > 0 && c1 > c0 {
            samples.push((c1 - c0) * 1_000_000 / ns);
        }
    }
    samples.sort_unstable();
    samples.get(samples.len() / 2).copied().filter(|&k| k > 100_000)
}

#[cfg(not(target_arch = "x86_64"))]
fn measure() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_measure_is_plausible() {
        if let Some(k) = measure() {
            assert!((100_000..10_000_000).contains(&k), "{k} kHz");
        }
    }
}
