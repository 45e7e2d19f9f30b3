//! One exec's process tree: its session/process group, and when the agent has
//! a cgroup v2 hierarchy (as PID 1 in the VM), a cgroup of its own that also
//! catches descendants that leave the session. Killing the tree means both.
//! The cgroup also carries the step's limits (tasks, memory, a CPU weight
//! below the agent's), written before the step's first process joins it, so
//! a fork bomb or a memory hog hits its limits while the agent stays alive
//! and responsive.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Where per-exec cgroups are created, when usable.
#[derive(Debug, Clone)]
pub struct CgroupRoot(pub PathBuf);

static NEXT_CGROUP: AtomicU64 = AtomicU64::new(1);

/// `cpu.weight` of every exec's cgroup. Tasks in the root cgroup (the agent
/// as PID 1) weigh 1024 each against a child cgroup's `weight * 10.24` for
/// all of its tasks together, so a step that saturates every CPU still
/// leaves the agent about four fifths of one whenever it wants it. An idle
/// agent costs the step nothing: the scheduler is work-conserving.
pub const STEP_CPU_WEIGHT: u32 = 25;

/// The limits of one exec's cgroup (see `cordon_protocol::Exec`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub pids_max: Option<u64>,
    pub memory_max: Option<u64>,
}

impl CgroupRoot {
    /// Uses `dir` when it is a writable cgroup v2 directory.
    pub fn probe(dir: &Path) -> Option<CgroupRoot> {
        let procs = dir.join("cgroup.procs");
        // cgroup.kill exists in child cgroups only, so it is not checked here.
        let ok =
            dir.join("cgroup.controllers").exists() && std::fs::OpenOptions::new().write(true).open(&procs).is_ok();
        ok.then(|| CgroupRoot(dir.to_path_buf()))
    }

    /// Whether child cgroups get the pids and memory controllers, so
    /// [`Limits`] can be enforced.
    pub fn enforces_limits(&self) -> bool {
        let enabled = std::fs::read_to_string(self.0.join("cgroup.subtree_control")).unwrap_or_default();
        let has = |c: &str| enabled.split_whitespace().any(|w| w == c);
        has("pids") && has("memory")
    }

    /// Creates a fresh child cgroup for one exec.
    pub fn create_child(&self) -> std::io::Result<Cgroup> {
        let n = NEXT_CGROUP.fetch_add(1, Ordering::Relaxed);
        let dir = self.0.join(format!("cordon-exec-{n}"));
        std::fs::create_dir(&dir)?;
        let procs = CString::new(dir.join("cgroup.procs").into_os_string().into_encoded_bytes())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        Ok(Cgroup { dir, procs })
    }
}

#[derive(Debug)]
pub struct Cgroup {
    dir: PathBuf,
    /// Pre-built so the forked child can join without allocating.
    procs: CString,
}

impl Cgroup {
    /// Moves the calling process into this cgroup. Async-signal-safe: meant
    /// for `pre_exec`.
    pub fn join_self(&self) -> std::io::Result<()> {
        // SAFETY: open/write/close on a valid C string path and a local buffer.
        unsafe {
            let fd = libc::open(self.procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let n = libc::write(fd, b"0".as_ptr().cast(), 1);
            libc::close(fd);
            if n != 1 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// Writes the limits into the cgroup; call before any process joins it.
    /// A limit that is asked for and cannot be written is an error; the CPU
    /// weight and the swap limit are best effort (their controller or swap
    /// may be absent).
    pub fn set_limits(&self, l: &Limits) -> std::io::Result<()> {
        let write = |file: &str, v: String| {
            std::fs::write(self.dir.join(file), &v)
                .map_err(|e| std::io::Error::new(e.kind(), format!("writing {v} to {file}: {e}")))
        };
        if let Some(n) = l.pids_max {
            write("pids.max", n.to_string())?;
        }
        if let Some(b) = l.memory_max {
            write("memory.max", b.to_string())?;
            // Without this a swapping guest would let the tree grow past memory.max.
            if self.dir.join("memory.swap.max").exists() {
                write("memory.swap.max", "0".into())?;
            }
            // One OOM kill takes the whole step, not a random member of it.
            write("memory.oom.group", "1".into())?;
        }
        if self.dir.join("cpu.weight").exists() {
            let _ = write("cpu.weight", STEP_CPU_WEIGHT.to_string());
        }
        Ok(())
    }

    /// Whether any task is in the cgroup (`cgroup.events`: cheaper than
    /// listing thousands of members).
    fn populated(&self) -> bool {
        match std::fs::read_to_string(self.dir.join("cgroup.events")) {
            Ok(ev) => ev.lines().any(|l| l == "populated 1"),
            Err(_) => !self.pids().is_empty(),
        }
    }

    /// Whether a fork ever failed at `pids.max`.
    fn hit_task_limit(&self) -> bool {
        let ev = std::fs::read_to_string(self.dir.join("pids.events")).unwrap_or_default();
        ev.lines().filter_map(|l| l.strip_prefix("max ")).any(|n| n.trim().parse::<u64>().unwrap_or(0) > 0)
    }

    fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.dir.join("cgroup.procs"))
            .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    fn oom_kills(&self) -> u64 {
        oom_kills_in(&std::fs::read_to_string(self.dir.join("memory.events")).unwrap_or_default())
    }

    /// Kills every member at once. `cgroup.kill` (Linux 5.14) is atomic
    /// against a fork bomb; without it the cgroup is frozen first, so no
    /// member forks between the listing and the signals.
    fn kill_all(&self) {
        if std::fs::write(self.dir.join("cgroup.kill"), b"1").is_ok() {
            return;
        }
        let frozen = std::fs::write(self.dir.join("cgroup.freeze"), b"1").is_ok();
        for pid in self.pids() {
            // SAFETY: kill has no memory effects; a stale pid gives ESRCH.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if frozen {
            // A frozen task still dies of SIGKILL once thawed.
            let _ = std::fs::write(self.dir.join("cgroup.freeze"), b"0");
        }
    }
}

/// OOM kills counted in a `memory.events` text: single kills plus whole-group
/// kills (`memory.oom.group`).
fn oom_kills_in(events: &str) -> u64 {
    let count = |key: &str| {
        events.lines().find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse::<u64>().ok())).unwrap_or(0)
    };
    count("oom_kill ") + count("oom_group_kill ")
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        self.kill_all();
        // The kernel removes members asynchronously; retry briefly.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
}

/// The tree of one exec.
#[derive(Debug)]
pub struct Tree {
    /// Leader pid, which is also the session and process group id.
    pub pgid: i32,
    pub cgroup: Option<Cgroup>,
}

impl Tree {
    /// Sends `sig` to every process of the tree (SIGKILL through
    /// [`Tree::kill`], atomic against forks).
    pub fn signal(&self, sig: i32) {
        if sig == libc::SIGKILL {
            return self.kill();
        }
        // SAFETY: kill has no memory effects; a stale pgid gives ESRCH.
        unsafe { libc::kill(-self.pgid, sig) };
        if let Some(cg) = &self.cgroup {
            for pid in cg.pids() {
                // SAFETY: as above.
                unsafe { libc::kill(pid, sig) };
            }
        }
    }

    /// Kills every process of the tree at once.
    pub fn kill(&self) {
        if let Some(cg) = &self.cgroup {
            cg.kill_all();
        }
        // SAFETY: kill has no memory effects; a stale pgid gives ESRCH.
        unsafe { libc::kill(-self.pgid, libc::SIGKILL) };
    }

    /// Whether any process of the tree is still alive (zombies count as gone).
    pub fn is_empty(&self) -> bool {
        if let Some(cg) = &self.cgroup {
            if cg.populated() {
                return false;
            }
        }
        !group_alive(self.pgid)
    }

    /// Whether the tree ever hit its task limit: a fork bomb, or a tree
    /// that cannot fork to clean up anyway.
    pub fn hit_task_limit(&self) -> bool {
        self.cgroup.as_ref().is_some_and(Cgroup::hit_task_limit)
    }

    pub fn oom_kills(&self) -> u64 {
        self.cgroup.as_ref().map(Cgroup::oom_kills).unwrap_or(0)
    }
}

/// Whether a non-zombie process in group `pgid` exists (scans /proc).
fn group_alive(pgid: i32) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    for e in dir.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the last ')' : state ppid pgrp ...
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let mut f = rest.split_whitespace();
        let state = f.next();
        let _ppid = f.next();
        let pgrp = f.next().and_then(|s| s.parse::<i32>().ok());
        if pgrp == Some(pgid) && state != Some("Z") && state != Some("X") {
            return true;
        }
    }
    false
}

/// System-wide OOM kill counter, for agents without a memory cgroup.
pub fn vmstat_oom_kills() -> u64 {
    std::fs::read_to_string("/proc/vmstat")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill ").and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_oom_kills_in_table() {
        let cases = [
            ("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n", 1),
            ("low 0\nhigh 0\nmax 9\noom 1\noom_kill 0\noom_group_kill 1\n", 1),
            ("oom_kill 2\noom_group_kill 1\n", 3),
            ("low 0\nmax 0\noom 0\noom_kill 0\n", 0),
            ("", 0),
        ];
        for (text, want) in cases {
            assert_eq!(oom_kills_in(text), want, "{text:?}");
        }
    }

    fn fake_cgroup(dir: &Path, files: &[&str]) -> Cgroup {
        for f in files {
            std::fs::write(dir.join(f), "").unwrap();
        }
        let procs = CString::new(dir.join("cgroup.procs").into_os_string().into_encoded_bytes()).unwrap();
        Cgroup { dir: dir.to_path_buf(), procs }
    }

    #[test]
    fn test_set_limits_writes_what_is_asked() {
        let d = tempfile::tempdir().unwrap();
        let cg = fake_cgroup(d.path(), &["memory.swap.max", "cpu.weight"]);
        cg.set_limits(&Limits { pids_max: Some(50), memory_max: Some(64 << 20) }).unwrap();
        let read = |f: &str| std::fs::read_to_string(d.path().join(f)).unwrap();
        assert_eq!(read("pids.max"), "50");
        assert_eq!(read("memory.max"), (64u64 << 20).to_string());
        assert_eq!(read("memory.swap.max"), "0");
        assert_eq!(read("memory.oom.group"), "1");
        assert_eq!(read("cpu.weight"), STEP_CPU_WEIGHT.to_string());
        std::mem::forget(cg);
    }

    #[test]
    fn test_set_limits_without_limits_touches_only_the_weight() {
        let d = tempfile::tempdir().unwrap();
        let cg = fake_cgroup(d.path(), &[]);
        cg.set_limits(&Limits::default()).unwrap();
        let names: Vec<_> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(names.is_empty(), "{names:?}");
        std::mem::forget(cg);
    }

    #[test]
    fn test_populated_and_hit_task_limit_from_event_files() {
        let d = tempfile::tempdir().unwrap();
        let cg = fake_cgroup(d.path(), &[]);
        assert!(!cg.hit_task_limit(), "no pids controller: never at the limit");
        for (events, pids_events, populated, hit) in
            [("populated 1\nfrozen 0\n", "max 0\n", true, false), ("populated 0\nfrozen 0\n", "max 3\n", false, true)]
        {
            std::fs::write(d.path().join("cgroup.events"), events).unwrap();
            std::fs::write(d.path().join("pids.events"), pids_events).unwrap();
            assert_eq!((cg.populated(), cg.hit_task_limit()), (populated, hit), "{events:?} {pids_events:?}");
        }
        std::mem::forget(cg);
    }

    #[test]
    fn test_set_limits_fails_when_a_limit_cannot_be_written() {
        let cg = Cgroup { dir: "/nonexistent/cordon-test".into(), procs: CString::new("x").unwrap() };
        let err = cg.set_limits(&Limits { pids_max: Some(5), memory_max: None }).unwrap_err();
        assert!(err.to_string().contains("pids.max"), "{err}");
        std::mem::forget(cg);
    }
}
