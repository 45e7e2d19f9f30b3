//! The janitor: a tiny process (`cordon __janitor DIR`) that outlives a
//! SIGKILLed cordon just long enough to remove what the run left. Its
//! stdin, whose only writer is cordon, carries NUL-terminated records (a
//! pipe, not files in DIR: no disk writes on a run's path):
//!
//! - `P<pid> <name>`: a helper to kill if cordon dies first;
//! - `C<path>`: a sandbox cgroup to remove;
//! - `D`: the run ended normally, every helper is reaped (their pids free
//!   for reuse: nothing is killed from here on). DIR is removed at once,
//!   while cordon removes the cgroups; at end-of-file any of those still
//!   there are removed too (cordon died in between, maybe while waiting for
//!   them to empty), and DIR once more if it is back.
//!
//! At end-of-file without `D` (cordon died), it kills the helpers, removes
//! the cgroups (waiting a little for them to empty) and DIR.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::prefork::Forked;

pub struct Janitor {
    child: Proc,
}

/// The janitor process: spawned by exec, or forked early (prefork.rs); in
/// both, its stdin's only writer is cordon.
enum Proc {
    Spawned(Child),
    Forked(Forked, Option<OwnedFd>),
}

/// The name a forked janitor shows in /proc/PID/comm.
pub const ZYGOTE_COMM: &std::ffi::CStr = c"cordon-janitor";

/// A janitor forked from cordon's `main` (prefork.rs), which learns its
/// directory first on its stdin (NUL-terminated).
pub struct Zygote {
    child: Forked,
    stdin: OwnedFd,
}

impl Zygote {
    pub fn fork() -> std::io::Result<Zygote> {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let child = Forked::spawn(&[(r.as_raw_fd(), 0)], true, zygote_main)?;
        Ok(Zygote { child, stdin: w })
    }
}

/// A forked janitor's start: its directory, then as `main`. End-of-file
/// before a directory means the run ended before it made one.
fn zygote_main() -> i32 {
    // SAFETY: prctl with a valid NUL-terminated name.
    unsafe { libc::prctl(libc::PR_SET_NAME, ZYGOTE_COMM.as_ptr()) };
    ignore_terminal_signals();
    // NUL-terminated: the one byte no path holds.
    let mut dir = Vec::new();
    // The lock ends with this statement: `main` reads stdin again.
    let read = std::io::BufRead::read_until(&mut std::io::stdin().lock(), 0, &mut dir);
    match read {
        Ok(_) if dir.pop() == Some(0) => {
            main(Path::new(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&dir)))
        }
        _ => 0,
    }
}

impl Janitor {
    pub fn start(dir: &Path) -> std::io::Result<Janitor> {
        Self::start_with(dir, None)
    }

    /// As `start`, handing `dir` to a forked janitor when there is one.
    pub fn start_with(dir: &Path, zygote: Option<Zygote>) -> std::io::Result<Janitor> {
        if let Some(z) = zygote {
            let mut line = dir.as_os_str().as_encoded_bytes().to_vec();
            line.push(0);
            // One write of less than PIPE_BUF bytes: whole or not at all.
            let n = nix::unistd::write(&z.stdin, &line)?;
            if n != line.len() {
                return Err(std::io::Error::other("short write to the janitor"));
            }
            return Ok(Janitor { child: Proc::Forked(z.child, Some(z.stdin)) });
        }
        // This very binary, even when a rebuild or an upgrade replaced the
        // file since cordon started (its path then names the new one, or
        // nothing).
        let mut cmd = Command::new(crate::procs::SELF_EXE);
        cmd.arg("__janitor").arg(dir).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::null());
        // Own process group: a terminal's Ctrl-C must not kill it before
        // cordon. Without a pre_exec hook std spawns by posix_spawn (vfork),
        // not by copying cordon's address space first.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        Ok(Janitor { child: Proc::Spawned(cmd.spawn()?) })
    }

    /// Records a helper for the janitor to kill if cordon dies first.
    pub fn track(&self, pid: u32, name: &str) {
        self.send(&format!("P{pid} {name}"));
    }

    /// Records a sandbox cgroup for the janitor to remove if cordon dies.
    pub fn track_cgroup(&self, dir: &Path) {
        self.send(&format!("C{}", dir.display()));
    }

    /// One record, in one write (under PIPE_BUF: never interleaved or split).
    fn send(&self, record: &str) -> bool {
        let mut b = record.as_bytes().to_vec();
        if b.contains(&0) || b.len() >= 4096 {
            return false;
        }
        b.push(0);
        self.stdin().is_some_and(|w| nix::unistd::write(w, &b) == Ok(b.len()))
    }

    fn stdin(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        match &self.child {
            Proc::Spawned(c) => c.stdin.as_ref().map(|s| s.as_fd()),
            Proc::Forked(_, stdin) => stdin.as_ref().map(|s| s.as_fd()),
        }
    }

    /// The run ended normally and every helper is reaped: the janitor removes
    /// the directory now, alongside the rest of cordon's teardown. Whether it
    /// got the message is what it returns: if not, cordon removes the
    /// directory itself. Dropping the janitor waits for it.
    pub fn finish(&mut self) -> bool {
        self.send("D")
    }
}

impl Drop for Janitor {
    fn drop(&mut self) {
        // Closing stdin tells it to clean up now; wait so the directory is
        // gone when cordon exits.
        match &mut self.child {
            Proc::Spawned(c) => {
                drop(c.stdin.take());
                let _ = c.wait();
            }
            Proc::Forked(c, stdin) => {
                drop(stdin.take());
                c.wait_exit(std::time::Duration::MAX);
            }
        }
    }
}

/// The janitor must run to completion, whatever a terminal sends.
fn ignore_terminal_signals() {
    // SAFETY: setting dispositions to SIG_IGN.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
}

/// Removes cgroup directories cordon made (named `cordon-*` under
/// /sys/fs/cgroup), retrying for a few seconds while they empty.
fn remove_cgroups<'a>(dirs: impl Iterator<Item = &'a Path>) {
    let dirs: Vec<&Path> = dirs
        .filter(|d| {
            d.starts_with("/sys/fs/cgroup")
                && d.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("cordon-"))
        })
        .collect();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    for d in dirs {
        while std::fs::remove_dir(d).is_err() && d.exists() && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// Entry point of `cordon __janitor DIR`.
pub fn main(dir: &Path) -> ! {
    ignore_terminal_signals();
    let mut helpers: Vec<(u32, String)> = Vec::new();
    let mut cgroups: Vec<PathBuf> = Vec::new();
    let mut done = false;
    let mut input = std::io::stdin().lock();
    loop {
        let mut rec = Vec::new();
        match std::io::BufRead::read_until(&mut input, 0, &mut rec) {
            // End-of-file (a partial record: cordon died mid-write).
            Ok(_) if rec.pop() != Some(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
        let Some((&tag, rest)) = rec.split_first() else { continue };
        match tag {
            b'P' if !done => {
                let text = String::from_utf8_lossy(rest);
                if let Some((pid, name)) = text.split_once(' ') {
                    if let Ok(pid) = pid.parse() {
                        helpers.push((pid, name.to_string()));
                    }
                }
            }
            b'C' => cgroups.push(PathBuf::from(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(rest))),
            b'D' if rest.is_empty() && !done => {
                done = true;
                helpers.clear();
                remove_dir(dir);
            }
            _ => {}
        }
    }
    for (pid, name) in &helpers {
        crate::procs::kill_if_named(*pid, name);
    }
    // A namespace sandbox's cgroups: empty once its processes are gone (they
    // die with ns-init), removable only then: a moment's patience. After `D`
    // they are gone already (cordon removed them: each rmdir finds nothing),
    // unless cordon died while it waited for them to empty.
    remove_cgroups(cgroups.iter().map(PathBuf::as_path));
    // Again after `D`: a process of a sandbox torn down by force may have
    // written into it while it was being removed.
    remove_dir(dir);
    std::process::exit(0)
}

fn remove_dir(dir: &Path) {
    // Only ever remove a cordon temp dir.
    if dir.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("cordon-")) {
        let _ = std::fs::remove_dir_all(dir);
    }
}
