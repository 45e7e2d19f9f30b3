//! Spawning helper processes (qemu, vhost-device-vsock, the local agent)
//! so that they die with cordon even when cordon is SIGKILLed
//! (PR_SET_PDEATHSIG), and sit in their own process group so a terminal's
//! Ctrl-C reaches cordon alone, which then shuts them down in order.

use std::os::unix::process::CommandExt;

/// The running binary itself (exec works even when its file was replaced
/// or removed since it started, as an upgrade or a rebuild does).
pub const SELF_EXE: &str = "/proc/self/exe";

/// Prepares `cmd` to die with this process. Call on the thread that will
/// live as long as the child should (cordon's runtime is single-threaded).
pub fn die_with_parent(cmd: &mut std::process::Command) {
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: only async-signal-safe calls run in the child.
    unsafe {
        cmd.pre_exec(move || {
            libc::setpgid(0, 0);
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

/// Kills `pid` if it is still the process whose command line or name
/// (comm, which a forked helper sets: prefork.rs) contains `needle`.
pub fn kill_if_named(pid: u32, needle: &str) {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let comm = std::fs::read(format!("/proc/{pid}/comm")).unwrap_or_default();
    let named = |b: &[u8]| String::from_utf8_lossy(b).contains(needle);
    if !needle.is_empty() && (named(&cmdline) || named(&comm)) {
        // SAFETY: kill has no memory effects.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
}

/// Makes `fd` available to the child as `target` (inherited across exec).
pub fn pass_fd(cmd: &mut std::process::Command, fd: i32, target: i32) {
    // SAFETY: dup2 and fcntl are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if fd == target {
                libc::fcntl(target, libc::F_SETFD, 0);
            } else if libc::dup2(fd, target) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Waits up to `limit` for `c` to exit (this runs in `Drop`, with no runtime
/// to await on). Whether it did.
pub fn wait_exit(c: &mut tokio::process::Child, limit: std::time::Duration) -> bool {
    let pidfd = c.id().and_then(pidfd_open);
    wait_until(pidfd.as_ref(), limit, || matches!(c.try_wait(), Ok(Some(_)) | Err(_)))
}

/// Waits up to `limit` (Duration::MAX: no limit) until `exited` says yes,
/// woken by `pidfd` the moment it is readable (a child's pidfd when it
/// exits, a socket when something or end-of-file arrives), polling every
/// millisecond only where there is none (no pidfd_open before 5.3).
pub fn wait_until(
    pidfd: Option<impl std::os::fd::AsFd>,
    limit: std::time::Duration,
    mut exited: impl FnMut() -> bool,
) -> bool {
    let until = std::time::Instant::now().checked_add(limit);
    loop {
        if exited() {
            return true;
        }
        let now = std::time::Instant::now();
        if until.is_some_and(|u| now >= u) {
            return false;
        }
        match &pidfd {
            Some(fd) => {
                use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
                let left =
                    until.map_or(PollTimeout::NONE, |u| PollTimeout::try_from(u - now).unwrap_or(PollTimeout::MAX));
                let _ = poll(&mut [PollFd::new(fd.as_fd(), PollFlags::POLLIN)], left);
            }
            None => std::thread::sleep(std::time::Duration::from_millis(1)),
        }
    }
}

/// A pidfd for `pid` (readable once it exits), or None on an older kernel.
pub fn pidfd_open(pid: u32) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes integer arguments; a non-negative result is a
    // new descriptor that this process owns.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    // SAFETY: see above.
    (fd >= 0).then(|| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// Closes every descriptor from `first` up except those in `keep`:
/// close_range(2) where the kernel has it (5.9+) and nothing in `keep` lies
/// in the range, else one close per entry of /proc/self/fd, else one per
/// number below RLIMIT_NOFILE. Whether all of it is closed; a caller that
/// hands descriptors to a sandbox must stop on false. For a single-threaded
/// process (it allocates).
pub fn close_fds_from(first: i32, keep: &[i32]) -> bool {
    let first = first.max(0);
    if keep.iter().all(|&k| k < first) {
        // SAFETY: close_range with integer arguments.
        if unsafe { libc::syscall(libc::SYS_close_range, first as u32, u32::MAX, 0u32) } == 0 {
            return true;
        }
    }
    let listed: Option<Vec<i32>> = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect());
    let candidates: Vec<i32> = match listed {
        Some(l) => l,
        None => {
            let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            // SAFETY: getrlimit fills the struct it is given.
            if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
                return false;
            }
            (first..rl.rlim_cur.min(1 << 20) as i32).collect()
        }
    };
    for fd in candidates.into_iter().filter(|fd| *fd >= first && !keep.contains(fd)) {
        // SAFETY: closing a descriptor number; EBADF (already closed, or the
        // directory read above, gone now) is fine.
        unsafe { libc::close(fd) };
    }
    true
}
