//! The janitor: a tiny process (`cordon __janitor DIR`) that outlives a
//! SIGKILLed cordon just long enough to remove its temp directory. It waits
//! for end-of-file on its stdin, whose only writer is cordon; then it kills
//! any helper still listed in DIR/pids, removes the cgroups listed in
//! DIR/cgroups, and removes DIR. At a run's normal end cordon first writes
//! `DONE`: its helpers are reaped (their pids free for reuse: nothing is
//! killed), and the janitor removes DIR at once, while cordon removes the
//! cgroups; at end-of-file it removes any of them still there (cordon died
//! in between).

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::prefork::Forked;

pub struct Janitor {
    child: Proc,
    dir: PathBuf,
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
            return Ok(Janitor { child: Proc::Forked(z.child, Some(z.stdin)), dir: dir.to_path_buf() });
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
        Ok(Janitor { child: Proc::Spawned(cmd.spawn()?), dir: dir.to_path_buf() })
    }

    /// Records a helper for the janitor to kill if cordon dies first.
    pub fn track(&self, pid: u32, name: &str) {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("pids")) {
            let _ = writeln!(f, "{pid} {name}");
        }
    }
}

/// The byte that tells the janitor the run ended normally.
const DONE: u8 = b'D';

impl Janitor {
    /// The run ended normally and every helper is reaped: the janitor removes
    /// the directory now, alongside the rest of cordon's teardown. Whether it
    /// got the message is what it returns: if not, cordon removes the
    /// directory itself. Dropping the janitor waits for it.
    pub fn finish(&mut self) -> bool {
        let stdin = match &mut self.child {
            Proc::Spawned(c) => c.stdin.as_ref().map(|s| s.as_fd()),
            Proc::Forked(_, stdin) => stdin.as_ref().map(|s| s.as_fd()),
        };
        stdin.is_some_and(|w| nix::unistd::write(w, &[DONE]) == Ok(1))
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
/// /sys/fs/cgroup), retrying for up to `patience` while they empty.
fn remove_cgroups<'a>(dirs: impl Iterator<Item = &'a Path>, patience: std::time::Duration) {
    let dirs: Vec<&Path> = dirs
        .filter(|d| {
            d.starts_with("/sys/fs/cgroup")
                && d.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("cordon-"))
        })
        .collect();
    let until = std::time::Instant::now() + patience;
    for d in dirs {
        while std::fs::remove_dir(d).is_err() && d.exists() && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// Entry point of `cordon __janitor DIR`.
pub fn main(dir: &Path) -> ! {
    ignore_terminal_signals();
    let mut buf = [0u8; 64];
    // Read before the directory goes: the cgroups cordon is removing.
    let mut cgroups = None;
    loop {
        match std::io::stdin().read(&mut buf) {
            Ok(0) => break,
            Ok(n) if cgroups.is_none() && buf[..n].contains(&DONE) => {
                cgroups = Some(std::fs::read_to_string(dir.join("cgroups")).unwrap_or_default());
                remove_dir(dir);
            }
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    match cgroups {
        // Gone already, unless cordon died while removing them (after its
        // sandbox was gone: no waiting for them to empty).
        Some(list) => remove_cgroups(list.lines().map(Path::new), std::time::Duration::ZERO),
        None => {
            clean_after(dir);
            remove_dir(dir);
        }
    }
    std::process::exit(0)
}

fn remove_dir(dir: &Path) {
    // Only ever remove a cordon temp dir.
    if dir.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("cordon-")) {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// What a cordon that died left: helpers still running, cgroups.
fn clean_after(dir: &Path) {
    if let Ok(s) = std::fs::read_to_string(dir.join("pids")) {
        for line in s.lines() {
            if let Some((pid, name)) = line.split_once(' ') {
                if let Ok(pid) = pid.parse() {
                    crate::procs::kill_if_named(pid, name);
                }
            }
        }
    }
    // A namespace sandbox's cgroups: empty once its processes are gone (they
    // die with ns-init), removable only then; give them a moment.
    if let Ok(s) = std::fs::read_to_string(dir.join("cgroups")) {
        remove_cgroups(s.lines().map(Path::new), std::time::Duration::from_secs(5));
    }
}
