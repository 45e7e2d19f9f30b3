//! Default VM size from what this process may really use: its cgroup's
//! cpu.max and memory.max and its CPU affinity, not the host's totals.

/// Default vCPUs: what the cgroup and affinity allow, at most 2.
pub fn default_cpus() -> u32 {
    available_cpus().clamp(1, 2)
}

/// Default memory in MiB: a quarter of what is available, within 256..=2048.
pub fn default_memory_mib() -> u64 {
    (available_memory_mib() / 4).clamp(256, 2048)
}

/// Default most tasks of one step (`pids = N`, `--pids N`): enough for a
/// parallel build, few enough that a fork bomb stays small.
pub const DEFAULT_PIDS: u64 = 4096;

/// Most memory one step may use in a guest of `guest_mib`: the guest's RAM
/// less a reserve of an eighth, at least 96 MiB, for the kernel, the
/// initramfs and the agent, so that a step's OOM kill never takes them.
/// (Measured: of a 128 MiB guest, Debian's cloud kernel leaves 91 MiB total
/// and 59 MiB available after boot; of 256 MiB, 217 and 182.)
pub fn step_memory_max(guest_mib: u64) -> u64 {
    let reserve = (guest_mib / 8).max(96);
    guest_mib.saturating_sub(reserve) << 20
}

pub fn available_cpus() -> u32 {
    let affinity = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
    let quota = cgroup_file("cpu.max").and_then(|s| parse_cpu_max(&s));
    quota.map(|q| q.min(affinity)).unwrap_or(affinity)
}

pub fn available_memory_mib() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let avail_kb = meminfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemAvailable:").and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(1 << 20);
    let host = avail_kb / 1024;
    match cgroup_file("memory.max").and_then(|s| s.trim().parse::<u64>().ok()) {
        Some(limit) => host.min(limit >> 20),
        None => host,
    }
}

fn cgroup_file(name: &str) -> Option<String> {
    let cg = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cg.lines().find_map(|l| l.strip_prefix("0::"))?;
    std::fs::read_to_string(format!("/sys/fs/cgroup{}/{name}", path.trim_end_matches('/'))).ok()
}

/// `cpu.max` is "QUOTA PERIOD" or "max PERIOD".
fn parse_cpu_max(s: &str) -> Option<u32> {
    let mut it = s.split_whitespace();
    let quota = it.next()?;
    let period: u64 = it.next()?.parse().ok()?;
    if quota == "max" || period == 0 {
        return None;
    }
    let q: u64 = quota.parse().ok()?;
    Some(q.div_ceil(period).max(1) as u32)
}

/// Parses `512M`, `2G`, `1024` (MiB) into MiB.
pub fn parse_memory(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mul) = match s.chars().last() {
        Some('G' | 'g') => (&s[..s.len() - 1], 1024),
        Some('M' | 'm') => (&s[..s.len() - 1], 1),
        _ => (s, 1),
    };
    let n: u64 = num.trim().parse().map_err(|_| format!("invalid memory size {s:?}: use e.g. 512M or 2G"))?;
    let mib = n.checked_mul(mul).ok_or_else(|| format!("memory size {s:?} is too large"))?;
    if !(128..=1 << 20).contains(&mib) {
        return Err(format!("memory size {s:?} must be between 128M and 1024G"));
    }
    Ok(mib)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_cpu_max_table() {
        assert_eq!(parse_cpu_max("max 100000"), None);
        assert_eq!(parse_cpu_max("200000 100000"), Some(2));
        assert_eq!(parse_cpu_max("150000 100000"), Some(2));
        assert_eq!(parse_cpu_max("5000 100000"), Some(1));
        assert_eq!(parse_cpu_max("garbage"), None);
    }

    #[test]
    fn test_parse_memory_table() {
        assert_eq!(parse_memory("512M"), Ok(512));
        assert_eq!(parse_memory("2G"), Ok(2048));
        assert_eq!(parse_memory("1024"), Ok(1024));
        for bad in ["", "12", "x", "-5M", "99999999999999999999G"] {
            assert!(parse_memory(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn test_step_memory_max_table() {
        for (guest, want_mib) in
            [(128, 32), (256, 160), (512, 416), (768, 672), (1024, 896), (2048, 1792), (8192, 7168)]
        {
            assert_eq!(step_memory_max(guest), want_mib << 20, "{guest}");
        }
    }

    #[test]
    fn test_defaults_are_sane() {
        assert!((1..=2).contains(&default_cpus()));
        assert!((256..=2048).contains(&default_memory_mib()));
    }
}
