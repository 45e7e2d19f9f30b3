//! Helpers forked from cordon before its runtime starts, rather than spawned
//! later by exec'ing cordon again (`cordon __ns-init`, `cordon __janitor`).
//! An exec of cordon costs about a millisecond of CPU (the loader, the
//! relocation of a 10 MB binary, libc's start) and more of wall time, twice
//! per namespace run; a fork of the still single-threaded process costs a
//! tenth of that. The child is a copy of cordon at `main`, before any thread
//! or runtime exists, so it may run ordinary Rust code: no lock can be held
//! by a thread that the fork did not copy.
//!
//! Where the process already runs threads (an embedding program, the
//! benchmarks' in-process sandboxes) nothing is forked, and the backends
//! spawn their helpers by exec as before.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use crate::backend::namespace::init::Zygote as NsInitZygote;
use crate::janitor::Zygote as JanitorZygote;

/// What `main` forked for a run, for its backend to use instead of spawning.
#[derive(Default)]
pub struct Prefork {
    pub ns_init: Option<NsInitZygote>,
    pub janitor: Option<JanitorZygote>,
}

impl Prefork {
    /// Forks the helpers a namespace run needs (the janitor and ns-init) at
    /// the very start of a `cordon run`, before the command line is parsed:
    /// the less memory cordon has touched, the cheaper the forks and the
    /// copy-on-write faults after them. `keep_for` drops them again where
    /// the plan picks another backend. Nothing where this process has
    /// threads already; a fork that fails leaves that helper to be spawned
    /// later, so a run never fails here.
    pub fn early(argv: &[std::ffi::OsString]) -> Prefork {
        if argv.get(1).map(|a| a.as_os_str()) != Some(std::ffi::OsStr::new("run")) {
            return Prefork::default();
        }
        let janitor = JanitorZygote::fork().ok();
        let ns_init = NsInitZygote::fork().ok();
        Prefork { ns_init, janitor }
    }

    /// The helpers, if `plan` runs in namespaces; else none (those forked
    /// are killed and reaped).
    pub fn keep_for(self, plan: &crate::plan::Plan) -> Prefork {
        use crate::backend::Kind;
        // The VM's helpers are other programs (QEMU, passt), spawned as ever.
        let (kind, _) = crate::backend::select(plan.isolation, plan.accel);
        if kind != Kind::Namespace {
            return Prefork::default();
        }
        self
    }
}

/// Whether this process has one thread (from /proc/self/stat's 20th field).
pub fn single_threaded() -> bool {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return false };
    // The command name (2nd field) may hold spaces and parentheses: count
    // from the last ')'.
    let Some((_, rest)) = stat.rsplit_once(')') else { return false };
    rest.split_whitespace().nth(17) == Some("1")
}

/// A child forked by `Forked::spawn`, reaped through `wait_exit`; one
/// dropped unreaped (a helper the run never used) is killed and reaped.
pub struct Forked {
    pid: libc::pid_t,
    pidfd: Option<OwnedFd>,
    exited: bool,
}

impl Forked {
    /// Forks a child that runs `body` and exits with what it returns. In the
    /// child, before `body`: every signal back to its default and unblocked
    /// (cordon's SIGPIPE is ignored, which an exec'd step would inherit),
    /// an empty environment (nothing of cordon's reaches the sandbox),
    /// a process group of its own (a terminal's Ctrl-C is cordon's to
    /// handle), death with cordon (PR_SET_PDEATHSIG) unless `outlive` (the
    /// janitor, whose work begins when cordon dies), `fds` placed on their
    /// targets (`(ours, target)`), /dev/null on any of 0, 1, 2 not among
    /// them, and every other descriptor closed.
    ///
    /// An error where this process has threads (see the module's doc).
    pub fn spawn(fds: &[(RawFd, RawFd)], outlive: bool, body: impl FnOnce() -> i32) -> io::Result<Forked> {
        if !single_threaded() {
            return Err(io::Error::other("cordon has threads already: a forked helper could inherit a held lock"));
        }
        let null = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null")?;
        // SAFETY: getpid has no preconditions.
        let parent = unsafe { libc::getpid() };
        // SAFETY: the process is single-threaded (the caller's contract), so
        // the child may run any code; the parent only records the pid.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            child_setup(parent, fds, outlive, null.as_raw_fd());
            // A panic must end the child here, not unwind into the copy of
            // cordon's `main` (whose destructors would act on cordon's
            // behalf: kill its janitor, close descriptor numbers that now
            // mean something else).
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).unwrap_or(101);
            // SAFETY: _exit ends the child without running cordon's exit
            // handlers a second time.
            unsafe { libc::_exit(code) };
        }
        Ok(Forked { pid, pidfd: crate::procs::pidfd_open(pid as u32), exited: false })
    }

    pub fn id(&self) -> u32 {
        self.pid as u32
    }

    /// SIGKILL, unless it has been reaped (its pid may be another's now).
    pub fn kill(&self) {
        if !self.exited {
            // SAFETY: kill with integer arguments.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
        }
    }

    /// Waits up to `limit` (Duration::MAX: no limit) for it to exit, and
    /// reaps it; whether it did.
    pub fn wait_exit(&mut self, limit: Duration) -> bool {
        let (pid, exited) = (self.pid, &mut self.exited);
        crate::procs::wait_until(self.pidfd.as_ref(), limit, || {
            if !*exited {
                let mut status = 0;
                // SAFETY: waitpid on our own child with a valid status pointer.
                let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
                *exited = r == pid || (r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD));
            }
            *exited
        })
    }
}

impl Drop for Forked {
    fn drop(&mut self) {
        if !self.exited {
            self.kill();
            self.wait_exit(Duration::from_secs(5));
        }
    }
}

/// The child's side of `Forked::spawn`. Only returns when all is in place;
/// exits otherwise.
fn child_setup(parent: libc::pid_t, fds: &[(RawFd, RawFd)], outlive: bool, null: RawFd) {
    // SAFETY: plain system calls on this (single-threaded) child's own
    // state; every pointer passed is valid for the call.
    unsafe {
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        for sig in 1..libc::SIGRTMIN() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        // cordon's environment (a caller's tokens, say) is no business of a
        // helper that builds or guards a sandbox: its strings are zeroed
        // where they lie (the initial stack; setenv's copies are never made
        // by cordon), not merely unlinked, before the list is cleared.
        extern "C" {
            static mut environ: *mut *mut libc::c_char;
        }
        let mut e = environ;
        while !e.is_null() && !(*e).is_null() {
            std::ptr::write_bytes(*e, 0, libc::strlen(*e));
            e = e.add(1);
        }
        libc::clearenv();
        // No core file of a copy of cordon's memory, whatever cordon's limit.
        let no_core = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        libc::setrlimit(libc::RLIMIT_CORE, &no_core);
        libc::setpgid(0, 0);
        if !outlive && (libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 || libc::getppid() != parent) {
            libc::_exit(1);
        }
        // Out of the way of every target first, so no dup2 below overwrites
        // a descriptor another pair still needs.
        const HIGH: RawFd = 64;
        let mut moved = Vec::with_capacity(fds.len());
        for &(ours, target) in fds {
            let high = libc::fcntl(ours, libc::F_DUPFD_CLOEXEC, HIGH);
            if high < 0 {
                libc::_exit(1);
            }
            moved.push((high, target));
        }
        let null_high = libc::fcntl(null, libc::F_DUPFD_CLOEXEC, HIGH);
        if null_high < 0 {
            libc::_exit(1);
        }
        for std_fd in 0..3 {
            if !fds.iter().any(|&(_, t)| t == std_fd) && libc::dup2(null_high, std_fd) < 0 {
                libc::_exit(1);
            }
        }
        for &(high, target) in &moved {
            // dup2 clears close-on-exec on the target.
            if libc::dup2(high, target) < 0 {
                libc::_exit(1);
            }
        }
        // Every other descriptor: a helper must never hold cordon's ends (a
        // janitor holding its own stdin's write end would never see EOF),
        // nor anything cordon's launcher left open.
        let keep: Vec<RawFd> = fds.iter().map(|&(_, t)| t).collect();
        if !crate::procs::close_fds_from(3, &keep) {
            libc::_exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_single_threaded_counts_threads() {
        // The test harness runs tests on threads of its own.
        let t = std::thread::spawn(|| std::thread::sleep(Duration::from_millis(200)));
        assert!(!single_threaded());
        t.join().unwrap();
    }
}
