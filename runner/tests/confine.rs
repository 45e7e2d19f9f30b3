//! `confine::apply` checked from inside. A child of this test enters fresh
//! user, mount and network namespaces (root in them, with every capability
//! there, as the sandbox's PID 1 is), applies the confinement and tries what
//! a step must not do, each attempt in a forked grandchild; the same child
//! without `apply` is the control that shows each attempt would otherwise
//! work. `harness = false`: each child is this binary run again, single-
//! threaded (unshare(CLONE_NEWUSER), Landlock and seccomp act on the calling
//! thread), its role chosen by an environment variable.

use cordon::backend::namespace::confine::{self, ConfineSpec, Layer};
use std::ffi::CString;
use std::path::{Path, PathBuf};

const ROLE: &str = "CORDON_CONFINE_TEST_ROLE";
const DIR: &str = "CORDON_CONFINE_TEST_DIR";

fn main() {
    match std::env::var(ROLE).as_deref() {
        Ok("confined") => child(true),
        Ok("control") => child(false),
        _ => std::process::exit(driver()),
    }
}

/// What a check must show.
#[derive(Debug, Clone, Copy)]
enum Expect {
    Works,
    Errno(i32),
    /// Anything but this errno (a control for an attempt the filter denies).
    Not(i32),
    /// No claim (the kernel refuses it without capabilities in the initial
    /// namespace anyway: only the confined side says something).
    Any,
    /// Not attempted (it would change the host).
    Skip,
    /// A check of state that does not hold (the attempt returned 1).
    False,
}

use libc::{EACCES, ENOSYS, EPERM};
use Expect::*;

/// Every check: name, confined, control.
const CHECKS: &[(&str, Expect, Expect)] = &[
    ("mount_tmpfs", Errno(EPERM), Works),
    ("umount2", Errno(EPERM), Not(EPERM)),
    ("pivot_root", Errno(EPERM), Not(EPERM)),
    ("fsopen", Errno(EPERM), Works),
    ("unshare_user", Errno(EPERM), Works),
    ("unshare_mount", Errno(EPERM), Works),
    ("clone_newuser", Errno(EPERM), Works),
    ("clone3", Errno(ENOSYS), Works),
    ("setns", Errno(EPERM), Works),
    ("ptrace_traceme", Errno(EPERM), Works),
    ("process_vm_readv", Errno(EPERM), Works),
    ("pidfd_getfd", Errno(EPERM), Works),
    ("io_uring_setup", Errno(EPERM), Works),
    ("socket_packet", Errno(EPERM), Works),
    ("socket_raw_icmp", Errno(EPERM), Works),
    ("socket_vsock", Errno(EPERM), Not(EPERM)),
    ("socket_udp", Works, Works),
    ("socketpair_unix", Works, Works),
    ("init_module", Errno(EPERM), Any),
    ("finit_module", Errno(EPERM), Any),
    ("keyctl", Errno(EPERM), Works),
    ("add_key", Errno(EPERM), Works),
    ("bpf", Errno(EPERM), Any),
    ("perf_event_open", Errno(EPERM), Any),
    ("userfaultfd", Errno(EPERM), Works),
    ("open_by_handle_at", Errno(EPERM), Any),
    ("kexec_load", Errno(EPERM), Any),
    ("swapon", Errno(EPERM), Any),
    ("syslog", Errno(EPERM), Any),
    ("tiocsti", Errno(EPERM), Any),
    ("personality_no_aslr", Errno(EPERM), Works),
    ("personality_query", Works, Works),
    ("write_outside_new", Errno(EACCES), Works),
    ("write_outside_existing", Errno(EACCES), Works),
    ("truncate_outside", Errno(EACCES), Works),
    ("mkdir_outside", Errno(EACCES), Works),
    ("write_inside", Works, Works),
    ("mkdir_and_rename_inside", Works, Works),
    ("write_dev_null", Works, Works),
    ("write_pipe_by_proc_fd", Works, Works),
    ("mkdir_in_dev", Errno(EACCES), Skip),
    ("caps_all_zero", Works, False),
    ("no_new_privs_set", Works, False),
    ("seccomp_filtering", Works, False),
    ("fork_exec_true", Works, Works),
    ("thread_spawn", Works, Works),
    ("tokio_runtime_and_process", Works, Works),
    ("pty_session", Works, Works),
];

fn driver() -> i32 {
    let mut failed = 0;
    // This host's kernel has both; elsewhere this says which is missing.
    for l in confine::probe() {
        let ok = l.enforced;
        println!("probe {}: {} ({})", l.name, if ok { "enforced" } else { "NOT enforced" }, l.detail);
        if !ok {
            failed += 1;
        }
    }
    for role in ["control", "confined"] {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("ws")).expect("ws");
        std::fs::create_dir(dir.path().join("outside")).expect("outside");
        std::fs::write(dir.path().join("outside/existing"), "keep").expect("existing");
        let out = std::process::Command::new(std::env::current_exe().expect("own path"))
            .env(ROLE, role)
            .env(DIR, dir.path())
            .stdin(std::process::Stdio::null())
            .output()
            .expect("running the child");
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            println!("{role}: child failed: {:?}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
            failed += 1;
            continue;
        }
        for line in text.lines().filter_map(|l| l.strip_prefix("layer ")) {
            let l: Layer = serde_json::from_str(line).expect("layer json");
            println!("{role}: layer {}: enforced={} ({})", l.name, l.enforced, l.detail);
            if !l.enforced {
                failed += 1;
            }
        }
        for (name, confined, control) in CHECKS {
            let want = if role == "confined" { *confined } else { *control };
            let got = text.lines().find_map(|l| l.strip_prefix(&format!("check {name} ")));
            let ok = match (want, got) {
                (Skip, None) => true,
                (Skip, Some(_)) | (_, None) => false,
                (Any, Some(_)) => true,
                (Works, Some(g)) => g == "ok",
                (Errno(e), Some(g)) => g == format!("errno {e}"),
                (False, Some(g)) => g == "errno 1",
                (Not(e), Some(g)) => g != format!("errno {e}") && !g.starts_with("signal"),
            };
            println!(
                "test confine::{role}::{name} ... {} (want {want:?}, got {})",
                if ok { "ok" } else { "FAILED" },
                got.unwrap_or("-")
            );
            if !ok {
                failed += 1;
            }
        }
        if !std::fs::read_to_string(dir.path().join("outside/existing")).is_ok_and(|s| s == "keep" || role == "control")
        {
            println!("{role}: a file outside the writable paths was changed");
            failed += 1;
        }
    }
    println!("\nconfine: {}", if failed == 0 { "all passed".to_string() } else { format!("{failed} FAILED") });
    i32::from(failed != 0)
}

/// Root with every capability in fresh user, mount and network namespaces.
fn enter_namespaces() {
    let (uid, gid) = (nix::unistd::getuid().as_raw(), nix::unistd::getgid().as_raw());
    // SAFETY: unshare with flags only; this process is single-threaded.
    if unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS | libc::CLONE_NEWNET) } != 0 {
        panic!("unshare: {} (this test needs unprivileged user namespaces)", std::io::Error::last_os_error());
    }
    std::fs::write("/proc/self/setgroups", "deny").expect("setgroups");
    std::fs::write("/proc/self/uid_map", format!("0 {uid} 1")).expect("uid_map");
    std::fs::write("/proc/self/gid_map", format!("0 {gid} 1")).expect("gid_map");
    let root = CString::new("/").unwrap();
    // SAFETY: valid C string; no mount is created, only propagation changed.
    unsafe {
        libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
}

fn child(confined: bool) {
    let dir = PathBuf::from(std::env::var(DIR).expect("dir"));
    enter_namespaces();
    if confined {
        let spec =
            ConfineSpec { writable: vec![dir.join("ws"), "/dev".into()], allow_raw_sockets: false, nproc_max: None };
        let layers = confine::apply(&spec).expect("confine::apply");
        for l in layers {
            println!("layer {}", serde_json::to_string(&l).unwrap());
        }
    }
    for (name, _, _) in CHECKS {
        if *name == "mkdir_in_dev" && !confined {
            continue;
        }
        println!("check {name} {}", run_check(name, &dir));
    }
}

fn c(p: impl AsRef<Path>) -> CString {
    CString::new(p.as_ref().as_os_str().as_encoded_bytes()).expect("no NUL in test paths")
}

/// -1 with errno, as the libc wrappers return, into a code.
fn rc(r: libc::c_long) -> i32 {
    if r < 0 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(255)
    } else {
        0
    }
}

/// A child from clone/clone3 (0) exits at once; the caller reaps it.
fn reap_clone(r: libc::c_long) -> i32 {
    if r == 0 {
        // SAFETY: in the new child: leave without running anything.
        unsafe { libc::_exit(0) };
    }
    if r > 0 {
        // SAFETY: waiting for the child just made.
        unsafe { libc::waitpid(r as i32, std::ptr::null_mut(), libc::__WALL) };
    }
    rc(r)
}

fn status_all_zero(fields: &[&str]) -> i32 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let ok = fields
        .iter()
        .all(|f| s.lines().find_map(|l| l.strip_prefix(f)).is_some_and(|v| v.trim().chars().all(|c| c == '0')));
    i32::from(!ok)
}

fn status_is(field: &str, want: &str) -> i32 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    i32::from(s.lines().find_map(|l| l.strip_prefix(field)).map(str::trim) != Some(want))
}

/// Runs one attempt in a forked grandchild (so no attempt changes the next)
/// and says "ok", "errno N" or "signal N".
fn run_check(name: &str, dir: &Path) -> String {
    // SAFETY: this process is single-threaded; the child runs the check and
    // leaves with _exit.
    match unsafe { libc::fork() } {
        0 => {
            let code = attempt(name, dir);
            // SAFETY: leaving the forked child.
            unsafe { libc::_exit(code.clamp(0, 255)) }
        }
        pid if pid > 0 => {
            let mut status = 0;
            // SAFETY: waiting for our own child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            if libc::WIFEXITED(status) {
                match libc::WEXITSTATUS(status) {
                    0 => "ok".into(),
                    e => format!("errno {e}"),
                }
            } else {
                format!("signal {}", libc::WTERMSIG(status))
            }
        }
        _ => format!("errno {}", rc(-1)),
    }
}

/// One attempt: 0 when it worked, else the errno (or 1 for a failed check).
fn attempt(name: &str, dir: &Path) -> i32 {
    let outside = dir.join("outside");
    let ws = dir.join("ws");
    let null = std::ptr::null::<libc::c_void>();
    // SAFETY (every call below): the system calls get valid C strings,
    // buffers the size they are told, or null where the kernel accepts it;
    // anything created exits with this forked child.
    unsafe {
        match name {
            "mount_tmpfs" => {
                let (src, fs) = (c("none"), c("tmpfs"));
                rc(libc::mount(src.as_ptr(), c(&outside).as_ptr(), fs.as_ptr(), 0, null) as _)
            }
            "umount2" => rc(libc::umount2(c(&outside).as_ptr(), 0) as _),
            "pivot_root" => {
                rc(libc::syscall(libc::SYS_pivot_root, c("/nonexistent-a").as_ptr(), c("/nonexistent-b").as_ptr()))
            }
            "fsopen" => rc(libc::syscall(libc::SYS_fsopen, c("tmpfs").as_ptr(), 1 /* FSOPEN_CLOEXEC */)),
            "unshare_user" => rc(libc::unshare(libc::CLONE_NEWUSER) as _),
            "unshare_mount" => rc(libc::unshare(libc::CLONE_NEWNS) as _),
            "clone_newuser" => reap_clone(libc::syscall(
                libc::SYS_clone,
                (libc::CLONE_NEWUSER | libc::SIGCHLD) as libc::c_ulong,
                0,
                0,
                0,
                0,
            )),
            "clone3" => {
                // struct clone_args: flags, pidfd, child_tid, parent_tid, exit_signal, ...
                let mut args = [0u64; 11];
                args[4] = libc::SIGCHLD as u64;
                reap_clone(libc::syscall(libc::SYS_clone3, args.as_mut_ptr(), std::mem::size_of_val(&args)))
            }
            "setns" => {
                let fd = libc::open(c("/proc/self/ns/net").as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                rc(libc::setns(fd, libc::CLONE_NEWNET) as _)
            }
            "ptrace_traceme" => rc(libc::ptrace(libc::PTRACE_TRACEME, 0, null, null)),
            "process_vm_readv" => {
                let mut dst = [0u8; 8];
                let src = [7u8; 8];
                let l = libc::iovec { iov_base: dst.as_mut_ptr().cast(), iov_len: 8 };
                let r = libc::iovec { iov_base: src.as_ptr() as *mut _, iov_len: 8 };
                rc(libc::process_vm_readv(libc::getpid(), &l, 1, &r, 1, 0) as _)
            }
            "pidfd_getfd" => {
                let pidfd = libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0);
                if pidfd < 0 {
                    return 1;
                }
                rc(libc::syscall(libc::SYS_pidfd_getfd, pidfd, 0, 0))
            }
            "io_uring_setup" => {
                let mut params = [0u8; 120];
                rc(libc::syscall(libc::SYS_io_uring_setup, 1, params.as_mut_ptr()))
            }
            "socket_packet" => rc(libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) as _),
            "socket_raw_icmp" => rc(libc::socket(
                libc::AF_INET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::IPPROTO_ICMP,
            ) as _),
            "socket_vsock" => rc(libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) as _),
            "socket_udp" => rc(libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) as _),
            "socketpair_unix" => {
                let mut fds = [0; 2];
                rc(libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) as _)
            }
            "init_module" => rc(libc::syscall(libc::SYS_init_module, null, 0, c("").as_ptr())),
            "finit_module" => rc(libc::syscall(libc::SYS_finit_module, -1, c("").as_ptr(), 0)),
            // KEYCTL_GET_KEYRING_ID of KEY_SPEC_SESSION_KEYRING, created if missing.
            "keyctl" => rc(libc::syscall(libc::SYS_keyctl, 0, -3, 1)),
            "add_key" => {
                let (ty, desc) = (c("user"), c("cordon-confine-test"));
                rc(libc::syscall(
                    libc::SYS_add_key,
                    ty.as_ptr(),
                    desc.as_ptr(),
                    c("x").as_ptr(),
                    1,
                    -2, /* process keyring */
                ))
            }
            "bpf" => rc(libc::syscall(libc::SYS_bpf, 0xffff, null, 0)),
            "perf_event_open" => rc(libc::syscall(libc::SYS_perf_event_open, null, 0, -1, -1, 0)),
            // O_CLOEXEC | UFFD_USER_MODE_ONLY: allowed unprivileged.
            "userfaultfd" => rc(libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | 1)),
            "open_by_handle_at" => rc(libc::syscall(libc::SYS_open_by_handle_at, -1, null, 0)),
            "kexec_load" => rc(libc::syscall(libc::SYS_kexec_load, 0, 0, null, 0)),
            "swapon" => rc(libc::syscall(libc::SYS_swapon, c("/nonexistent").as_ptr(), 0)),
            // SYSLOG_ACTION_SIZE_BUFFER
            "syslog" => rc(libc::syscall(libc::SYS_syslog, 10, null, 0)),
            "tiocsti" => {
                let fd = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
                if fd < 0 {
                    return 1;
                }
                let ch = b'x';
                rc(libc::ioctl(fd, libc::TIOCSTI, &ch) as _)
            }
            "personality_no_aslr" => rc(libc::personality(0x0040000) as _),
            "personality_query" => rc(libc::personality(0xffff_ffff) as _),
            "write_outside_new" => open_write(&outside.join("new"), libc::O_CREAT),
            "write_outside_existing" => open_write(&outside.join("existing"), 0),
            "truncate_outside" => rc(libc::truncate(c(outside.join("existing")).as_ptr(), 0) as _),
            "mkdir_outside" => rc(libc::mkdir(c(outside.join("d")).as_ptr(), 0o700) as _),
            "write_inside" => open_write(&ws.join("new"), libc::O_CREAT | libc::O_TRUNC),
            "mkdir_and_rename_inside" => {
                let e = rc(libc::mkdir(c(ws.join("d")).as_ptr(), 0o700) as _);
                if e != 0 {
                    return e;
                }
                let e = open_write(&ws.join("f"), libc::O_CREAT);
                if e != 0 {
                    return e;
                }
                rc(libc::rename(c(ws.join("f")).as_ptr(), c(ws.join("d/f")).as_ptr()) as _)
            }
            "write_dev_null" => open_write(Path::new("/dev/null"), 0),
            // What `> /dev/stdout` does when stdout is a pipe.
            "write_pipe_by_proc_fd" => {
                let mut fds = [0; 2];
                if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
                    return 1;
                }
                open_write(Path::new(&format!("/proc/self/fd/{}", fds[1])), 0)
            }
            "mkdir_in_dev" => {
                let p = c("/dev/cordon-confine-test");
                let r = rc(libc::mkdir(p.as_ptr(), 0o700) as _);
                if r == 0 {
                    libc::rmdir(p.as_ptr());
                }
                r
            }
            "caps_all_zero" => status_all_zero(&["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"]),
            "no_new_privs_set" => status_is("NoNewPrivs:", "1"),
            "seccomp_filtering" => status_is("Seccomp:", "2"),
            "fork_exec_true" => i32::from(!std::process::Command::new("/bin/true").status().is_ok_and(|s| s.success())),
            "thread_spawn" => i32::from(std::thread::spawn(|| 42).join().ok() != Some(42)),
            "tokio_runtime_and_process" => tokio_check(),
            "pty_session" => pty_check(),
            other => panic!("no check named {other}"),
        }
    }
}

fn open_write(p: &Path, extra: i32) -> i32 {
    // SAFETY: a valid C string; the descriptor is closed at once.
    unsafe {
        let fd = libc::open(c(p).as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC | extra, 0o600);
        if fd < 0 {
            return rc(-1);
        }
        let n = libc::write(fd, b"x".as_ptr().cast(), 1);
        libc::close(fd);
        rc(n as _)
    }
}

/// The agent's runtime: worker threads, epoll, eventfd, pipes, a child.
fn tokio_check() -> i32 {
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(_) => return 1,
    };
    rt.block_on(async {
        let out = tokio::process::Command::new("/bin/sh").args(["-c", "echo hi"]).output().await;
        i32::from(!out.is_ok_and(|o| o.stdout == b"hi\n"))
    })
}

/// The agent's terminal steps: openpty, setsid and TIOCSCTTY in pre_exec.
fn pty_check() -> i32 {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    let Ok(pty) = nix::pty::openpty(None, None) else { return 1 };
    let dup = |f: &std::os::fd::OwnedFd| f.try_clone().expect("dup");
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.args(["-c", "tty"]).stdin(dup(&pty.slave)).stdout(dup(&pty.slave)).stderr(dup(&pty.slave));
    // SAFETY: only async-signal-safe calls in the forked child.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let Ok(mut child) = cmd.spawn() else { return 1 };
    drop(cmd);
    drop(pty.slave);
    let mut out = Vec::new();
    // Ends with EIO once the shell has gone and the slave is closed.
    let _ = std::fs::File::from(pty.master).read_to_end(&mut out);
    let ok = child.wait().is_ok_and(|s| s.success()) && out.starts_with(b"/dev/pts/");
    i32::from(!ok)
}
