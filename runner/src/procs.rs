//! Spawning helper processes (qemu, vhost-device-vsock, the local agent)
//! so that they die with cordon even when cordon is SIGKILLed
//! (PR_SET_PDEATHSIG), and sit in their own process group so a terminal's
//! Ctrl-C reaches cordon alone, which then shuts them down in order.

use std::os::unix::process::CommandExt;

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

/// Kills `pid` if it is still the process whose command line contains `needle`.
pub fn kill_if_named(pid: u32, needle: &str) {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if !needle.is_empty() && String::from_utf8_lossy(&cmdline).contains(needle) {
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

/// Waits up to `limit` for `c` to exit (polling: this runs in `Drop`, with
/// no runtime to await on). Whether it did.
pub fn wait_exit(c: &mut tokio::process::Child, limit: std::time::Duration) -> bool {
    let until = std::time::Instant::now() + limit;
    loop {
        if matches!(c.try_wait(), Ok(Some(_)) | Err(_)) {
            return true;
        }
        if std::time::Instant::now() >= until {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}
