//! ns-init's side of the sandbox's cgroup: how the sandbox gets into it
//! without the cost of writing a pid into `cgroup.procs`. That write takes
//! the kernel's global threadgroup lock for writing, which waits out an RCU
//! grace period (8-12 ms on the development hosts, most of a `cordon run`).
//! Instead:
//!
//! - v1 hierarchies: ns-init, single-threaded, moves its only thread by
//!   writing 0 to each directory's `tasks` (a thread moving itself skips
//!   the global lock); everything it forks inherits the cgroups;
//! - v2: PID 1 is created directly in the sandbox's directory (clone3 with
//!   CLONE_INTO_CGROUP), which takes the lock only for reading; a kernel
//!   without it (before 5.7) gets the `cgroup.procs` write instead.
//!
//! Both run while ns-init still has the host uid that owns the files (root,
//! or the user a v2 subtree is delegated to), before it becomes the
//! sandbox's root.

use nix::sched::CloneFlags;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Moves this (single-threaded) process into each v1 directory. Returns
/// each parent directory's `tasks`, opened while this process is still the
/// host's user that owns them (the kernel checks the opener's credentials),
/// for `leave_v1`.
pub fn join_v1(dirs: &[PathBuf]) -> std::io::Result<Vec<std::fs::File>> {
    let mut parents = Vec::new();
    for d in dirs {
        let f = d.join("tasks");
        let r = std::fs::OpenOptions::new().write(true).open(&f).and_then(|mut h| h.write_all(b"0"));
        r.map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", f.display())))?;
        if let Some(p) = d.parent() {
            parents.extend(std::fs::OpenOptions::new().write(true).open(p.join("tasks")));
        }
    }
    Ok(parents)
}

/// Moves this process back out of the sandbox's v1 directories (once PID 1
/// exists and holds them), so that they empty when the sandbox does, not
/// when ns-init is gone too. Best effort: a directory still holding ns-init
/// is only removed later.
pub fn leave_v1(parents: Vec<std::fs::File>) {
    for mut p in parents {
        let _ = p.write_all(b"0");
    }
}

/// The v2 directory, opened for `clone_into`.
pub fn open_v2(dir: &Path) -> std::io::Result<OwnedFd> {
    use nix::fcntl::{open, OFlag};
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    open(dir, flags, nix::sys::stat::Mode::empty())
        .map_err(|e| std::io::Error::new(std::io::Error::from(e).kind(), format!("{}: {e}", dir.display())))
}

/// include/uapi/linux/sched.h (libc's c_int constant overflows).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// The kernel's `struct clone_args` (include/uapi/linux/sched.h), up to
/// `cgroup` (CLONE_ARGS_SIZE_VER2).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Where a fork-like `clone_into` returns.
pub enum Forked {
    Parent(nix::unistd::Pid),
    Child,
}

/// Forks (like fork(2)) with `flags` (namespaces for the child), the child
/// in the cgroup `v2` when given. Only for a single-threaded caller: the
/// child runs on with no atfork handlers.
pub fn clone_into(flags: CloneFlags, v2: Option<&OwnedFd>) -> std::io::Result<Forked> {
    let args = CloneArgs {
        flags: flags.bits() as u64 | if v2.is_some() { CLONE_INTO_CGROUP } else { 0 },
        exit_signal: libc::SIGCHLD as u64,
        cgroup: v2.map_or(0, |cg| cg.as_raw_fd() as u64),
        ..Default::default()
    };
    // SAFETY: clone3 without CLONE_VM and without a stack behaves as fork(2)
    // in a copy of this address space; `args` outlives the call.
    let r = unsafe { libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, std::mem::size_of::<CloneArgs>()) };
    match r {
        0 => Ok(Forked::Child),
        pid if pid > 0 => Ok(Forked::Parent(nix::unistd::Pid::from_raw(pid as i32))),
        _ => {
            let e = std::io::Error::last_os_error();
            // No clone3 (ENOSYS) or no CLONE_INTO_CGROUP (E2BIG, EINVAL):
            // join by cgroup.procs, then clone(2).
            if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::E2BIG | libc::EINVAL)) {
                if let Some(cg) = v2 {
                    join_v2_slow(cg)?;
                }
                return clone_legacy(flags);
            }
            Err(e)
        }
    }
}

/// clone(2) as fork(2) with `flags`, for kernels without clone3.
fn clone_legacy(flags: CloneFlags) -> std::io::Result<Forked> {
    // SAFETY: clone without CLONE_VM and with no new stack (0) behaves as
    // fork(2); the remaining arguments (tids, tls) are unused without their
    // flags.
    let r = unsafe {
        libc::syscall(libc::SYS_clone, flags.bits() as libc::c_long | libc::SIGCHLD as libc::c_long, 0, 0, 0, 0)
    };
    match r {
        0 => Ok(Forked::Child),
        pid if pid > 0 => Ok(Forked::Parent(nix::unistd::Pid::from_raw(pid as i32))),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// This process into the v2 directory `cg` by `cgroup.procs` (the slow path).
fn join_v2_slow(cg: &OwnedFd) -> std::io::Result<()> {
    use nix::fcntl::{openat, OFlag};
    let fd = openat(cg, "cgroup.procs", OFlag::O_WRONLY | OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())?;
    std::fs::File::from(fd).write_all(b"0")
}
