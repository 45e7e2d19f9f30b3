//! One exec's process tree: its session/process group, and when the agent has
//! a cgroup v2 hierarchy (as PID 1 in the VM), a cgroup of its own that also
//! catches descendants that leave the session. Killing the tree means both.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Where per-exec cgroups are created, when usable.
#[derive(Debug, Clone)]
pub struct CgroupRoot(pub PathBuf);

static NEXT_CGROUP: AtomicU64 = AtomicU64::new(1);

impl CgroupRoot {
    /// Uses `dir` when it is a writable cgroup v2 directory.
    pub fn probe(dir: &Path) -> Option<CgroupRoot> {
        let procs = dir.join("cgroup.procs");
        // cgroup.kill exists in child cgroups only, so it is not checked here.
        let ok =
            dir.join("cgroup.controllers").exists() && std::fs::OpenOptions::new().write(true).open(&procs).is_ok();
        ok.then(|| CgroupRoot(dir.to_path_buf()))
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

    fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.dir.join("cgroup.procs"))
            .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    fn oom_kills(&self) -> u64 {
        let s = std::fs::read_to_string(self.dir.join("memory.events")).unwrap_or_default();
        s.lines().find_map(|l| l.strip_prefix("oom_kill ").and_then(|v| v.trim().parse().ok())).unwrap_or(0)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.dir.join("cgroup.kill"), b"1");
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
    /// Sends `sig` to every process of the tree.
    pub fn signal(&self, sig: i32) {
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
            let _ = std::fs::write(cg.dir.join("cgroup.kill"), b"1");
        }
        self.signal(libc::SIGKILL);
    }

    /// Whether any process of the tree is still alive (zombies count as gone).
    pub fn is_empty(&self) -> bool {
        if let Some(cg) = &self.cgroup {
            if !cg.pids().is_empty() {
                return false;
            }
        }
        !group_alive(self.pgid)
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
