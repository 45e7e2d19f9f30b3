//! Unit tests of confine.rs: the deny table, the compiled filter run through
//! a model of the kernel's BPF interpreter, Landlock rights, probe.

use super::seccomp::{programs, table, Cond, NS_FLAGS, SOCK_TYPE_MASK};
use super::*;
use seccompiler::sock_filter;

#[cfg(target_arch = "x86_64")]
const NATIVE: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const NATIVE: u32 = 0xc000_00b7;
const AUDIT_ARCH_I386: u32 = 0x4000_0003;
const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
const KILL: u32 = libc::SECCOMP_RET_KILL_PROCESS;

/// Runs one classic BPF program over a `seccomp_data` the way the kernel
/// does (only the instructions seccompiler and the x32 guard emit).
fn run_one(prog: &[sock_filter], nr: i64, arch: u32, args: [u64; 6]) -> u32 {
    let mut data = [0u8; 64];
    data[0..4].copy_from_slice(&(nr as i32).to_le_bytes());
    data[4..8].copy_from_slice(&arch.to_le_bytes());
    for (i, a) in args.iter().enumerate() {
        data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
    }
    let word = |off: u32| u32::from_le_bytes(data[off as usize..off as usize + 4].try_into().expect("4 bytes"));
    let (mut acc, mut pc) = (0u32, 0usize);
    loop {
        let i = &prog[pc];
        pc += 1;
        let jump = |taken: bool| if taken { i.jt as usize } else { i.jf as usize };
        match i.code {
            0x20 => acc = word(i.k),
            0x54 => acc &= i.k,
            0x05 => pc += i.k as usize,
            0x15 => pc += jump(acc == i.k),
            0x25 => pc += jump(acc > i.k),
            0x35 => pc += jump(acc >= i.k),
            0x45 => pc += jump(acc & i.k != 0),
            0x06 => return i.k,
            c => panic!("opcode {c:#x} not modelled"),
        }
    }
}

/// The kernel's verdict over every installed filter: the action of
/// highest precedence (lowest as a signed action), newest filter first.
fn verdict(allow_raw: bool, nr: i64, arch: u32, args: [u64; 6]) -> u32 {
    let progs = programs(allow_raw).expect("the filter compiles");
    let mut ret = ALLOW;
    for (_, p) in progs.iter().rev() {
        let cur = run_one(p, nr, arch, args);
        if ((cur & libc::SECCOMP_RET_ACTION_FULL) as i32) < ((ret & libc::SECCOMP_RET_ACTION_FULL) as i32) {
            ret = cur;
        }
    }
    ret
}

fn native(nr: libc::c_long, args: &[u64]) -> u32 {
    let mut a = [0u64; 6];
    a[..args.len()].copy_from_slice(args);
    verdict(false, nr, NATIVE, a)
}

fn errno(e: i32) -> u32 {
    libc::SECCOMP_RET_ERRNO | e as u32
}

#[test]
fn test_table_covers_the_issue_list_with_reasons() {
    let t = table(false);
    let names: Vec<&str> = t.iter().map(|d| d.syscall).collect();
    for want in [
        "mount",
        "umount2",
        "pivot_root",
        "ptrace",
        "process_vm_readv",
        "process_vm_writev",
        "kexec_load",
        "kexec_file_load",
        "init_module",
        "finit_module",
        "delete_module",
        "bpf",
        "perf_event_open",
        "keyctl",
        "add_key",
        "request_key",
        "userfaultfd",
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
        "unshare",
        "clone",
        "clone3",
        "setns",
        "open_by_handle_at",
        "reboot",
        "swapon",
        "swapoff",
        "personality",
        "socket",
    ] {
        assert!(names.contains(&want), "{want} is missing from the deny table");
    }
    for d in &t {
        assert!(d.why.len() > 10, "{} needs a reason", d.syscall);
        assert!(d.errno == libc::EPERM || (d.syscall == "clone3" && d.errno == libc::ENOSYS), "{}", d.syscall);
    }
}

#[test]
fn test_table_raw_sockets_only_with_the_policy() {
    let raw =
        |t: &[seccomp::Deny]| t.iter().any(|d| d.when.iter().any(|c| c.contains(&Cond::Eq(0, libc::AF_PACKET as u32))));
    assert!(raw(&table(false)));
    assert!(!raw(&table(true)));
    // The rest of the table does not depend on it.
    assert_eq!(table(true).len() + 1, table(false).len());
}

#[test]
fn test_table_sock_type_mask_strips_cloexec_and_nonblock() {
    for flags in [0, libc::SOCK_CLOEXEC, libc::SOCK_NONBLOCK, libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK] {
        assert_eq!((libc::SOCK_RAW | flags) as u32 & SOCK_TYPE_MASK, libc::SOCK_RAW as u32);
        assert_eq!((libc::SOCK_STREAM | flags) as u32 & SOCK_TYPE_MASK, libc::SOCK_STREAM as u32);
    }
    // And no namespace flag hides in the exit signal byte clone reads.
    for (name, f) in NS_FLAGS {
        assert_eq!(f & 0xff, 0, "{name}");
    }
}

#[test]
fn test_filter_denies_the_always_denied_by_number() {
    for d in table(false).iter().filter(|d| d.when.is_empty()) {
        assert_eq!(verdict(false, d.nr, NATIVE, [0; 6]), errno(d.errno), "{}", d.syscall);
    }
    for nr in [libc::SYS_getpid, libc::SYS_read, libc::SYS_write, libc::SYS_execve, libc::SYS_wait4] {
        assert_eq!(native(nr, &[]), ALLOW, "syscall {nr}");
    }
}

#[test]
fn test_filter_socket_masks_flags_in_the_type() {
    let s = |domain: i32, ty: i32| native(libc::SYS_socket, &[domain as u64, ty as u64]);
    let cloexec_nb = libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK;
    assert_eq!(s(libc::AF_INET, libc::SOCK_RAW), errno(libc::EPERM));
    assert_eq!(s(libc::AF_INET, libc::SOCK_RAW | cloexec_nb), errno(libc::EPERM));
    assert_eq!(s(libc::AF_INET6, libc::SOCK_RAW | libc::SOCK_CLOEXEC), errno(libc::EPERM));
    assert_eq!(s(libc::AF_PACKET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC), errno(libc::EPERM));
    assert_eq!(s(libc::AF_VSOCK, libc::SOCK_STREAM), errno(libc::EPERM));
    // Controls: what builds and tests use.
    assert_eq!(s(libc::AF_INET, libc::SOCK_STREAM | cloexec_nb), ALLOW);
    assert_eq!(s(libc::AF_INET6, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC), ALLOW);
    assert_eq!(s(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC), ALLOW);
    assert_eq!(s(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC), ALLOW);
    // The host's device events (a network namespace of the host's user
    // namespace gets them); the other netlink families stay (ip, ss).
    let nl = |ty: i32, proto: i32| native(libc::SYS_socket, &[libc::AF_NETLINK as u64, ty as u64, proto as u64]);
    assert_eq!(nl(libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, libc::NETLINK_KOBJECT_UEVENT), errno(libc::EPERM));
    assert_eq!(nl(libc::SOCK_RAW, libc::NETLINK_KOBJECT_UEVENT), errno(libc::EPERM));
    assert_eq!(nl(libc::SOCK_RAW, libc::NETLINK_ROUTE), ALLOW);
    assert_eq!(nl(libc::SOCK_DGRAM, libc::NETLINK_SOCK_DIAG), ALLOW);
    // The policy lifts the raw socket rules, never the vsock one.
    let raw_ok = |domain: i32, ty: i32| verdict(true, libc::SYS_socket, NATIVE, [domain as u64, ty as u64, 0, 0, 0, 0]);
    assert_eq!(raw_ok(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_CLOEXEC), ALLOW);
    assert_eq!(raw_ok(libc::AF_PACKET, libc::SOCK_RAW), ALLOW);
    assert_eq!(raw_ok(libc::AF_VSOCK, libc::SOCK_STREAM), errno(libc::EPERM));
}

#[test]
fn test_filter_clone_and_unshare_namespace_flags() {
    let sigchld = libc::SIGCHLD as u64;
    let thread = (libc::CLONE_VM
        | libc::CLONE_FS
        | libc::CLONE_FILES
        | libc::CLONE_SIGHAND
        | libc::CLONE_THREAD
        | libc::CLONE_SYSVSEM
        | libc::CLONE_SETTLS
        | libc::CLONE_PARENT_SETTID
        | libc::CLONE_CHILD_CLEARTID) as u64;
    assert_eq!(native(libc::SYS_clone, &[sigchld]), ALLOW, "fork");
    assert_eq!(native(libc::SYS_clone, &[thread]), ALLOW, "a thread");
    assert_eq!(native(libc::SYS_clone, &[(libc::CLONE_VM | libc::CLONE_VFORK) as u64 | sigchld]), ALLOW, "posix_spawn");
    for (name, f) in NS_FLAGS {
        assert_eq!(native(libc::SYS_clone, &[f as u64 | sigchld]), errno(libc::EPERM), "clone {name}");
        assert_eq!(native(libc::SYS_unshare, &[f as u64]), errno(libc::EPERM), "unshare {name}");
    }
    assert_eq!(
        native(libc::SYS_clone, &[(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) as u64 | sigchld]),
        errno(libc::EPERM)
    );
    assert_eq!(native(libc::SYS_unshare, &[0x80]), errno(libc::EPERM), "unshare CLONE_NEWTIME");
    // 0x80 in clone's flags is the exit signal's byte, not a namespace.
    assert_eq!(native(libc::SYS_clone, &[0x80 | sigchld]), ALLOW);
    assert_eq!(native(libc::SYS_unshare, &[(libc::CLONE_FILES | libc::CLONE_FS) as u64]), ALLOW);
    assert_eq!(native(libc::SYS_clone3, &[0, 88]), errno(libc::ENOSYS));
}

#[test]
fn test_filter_personality_only_linux_and_query() {
    assert_eq!(native(libc::SYS_personality, &[0]), ALLOW);
    assert_eq!(native(libc::SYS_personality, &[0xffff_ffff]), ALLOW);
    // The kernel reads an unsigned int: the upper half does not matter.
    assert_eq!(native(libc::SYS_personality, &[0xffff_ffff_ffff_ffff]), ALLOW);
    assert_eq!(native(libc::SYS_personality, &[0x0040000]), errno(libc::EPERM), "ADDR_NO_RANDOMIZE");
    assert_eq!(native(libc::SYS_personality, &[0x0400000]), errno(libc::EPERM), "READ_IMPLIES_EXEC");
    assert_eq!(native(libc::SYS_personality, &[0x0008]), errno(libc::EPERM), "PER_LINUX32");
}

#[test]
fn test_filter_ioctl_tiocsti_only() {
    assert_eq!(native(libc::SYS_ioctl, &[0, libc::TIOCSTI]), errno(libc::EPERM));
    for ok in [libc::TIOCSCTTY, libc::TIOCSWINSZ, libc::TIOCGWINSZ, libc::FIONBIO, libc::TCGETS] {
        assert_eq!(native(libc::SYS_ioctl, &[0, ok]), ALLOW, "ioctl {ok:#x}");
    }
}

#[test]
fn test_filter_other_abis_are_refused() {
    // A 32-bit system call (int 0x80, or an arm32 task): killed.
    assert_eq!(verdict(false, 1, AUDIT_ARCH_I386, [0; 6]), KILL);
    #[cfg(target_arch = "x86_64")]
    {
        // x32: mount's number with the x32 bit.
        assert_eq!(verdict(false, 0x4000_0000 + libc::SYS_mount, NATIVE, [0; 6]), errno(libc::ENOSYS));
        assert_eq!(verdict(false, 0x4000_0000 + libc::SYS_getpid, NATIVE, [0; 6]), errno(libc::ENOSYS));
    }
}

#[test]
fn test_landlock_rights_dev_is_devices_only() {
    use ::landlock::{Access, AccessFs, ABI};
    let dev = landlock::rights_for(std::path::Path::new("/dev"));
    assert!(dev.contains(AccessFs::WriteFile | AccessFs::IoctlDev | AccessFs::ReadFile));
    for no in [AccessFs::MakeReg, AccessFs::MakeDir, AccessFs::MakeFifo, AccessFs::MakeSock, AccessFs::MakeChar] {
        assert!(!dev.contains(no), "{no:?} in /dev");
    }
    assert!(!dev.contains(AccessFs::RemoveFile) && !dev.contains(AccessFs::Truncate));
    assert_eq!(landlock::rights_for(std::path::Path::new("/workspace")), AccessFs::from_all(ABI::V7));
    assert_eq!(landlock::rights_for(std::path::Path::new("/dev/shm")), AccessFs::from_all(ABI::V7));
}

#[test]
fn test_rlimits_core_is_zero_and_every_entry_has_a_reason() {
    let r = rlimits();
    assert!(r.iter().any(|(res, _, v, _)| *res == nix::sys::resource::Resource::RLIMIT_CORE && *v == 0));
    assert!(r.iter().all(|(_, _, _, why)| why.len() > 10));
}

fn status_field(name: &str) -> String {
    let s = std::fs::read_to_string("/proc/thread-self/status").expect("/proc/thread-self/status");
    s.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string())).unwrap_or_default()
}

#[test]
fn test_probe_changes_nothing_and_names_what_apply_names() {
    let before: Vec<String> =
        ["NoNewPrivs:", "Seccomp:", "CapEff:", "CapBnd:"].iter().map(|f| status_field(f)).collect();
    let layers = probe();
    let after: Vec<String> =
        ["NoNewPrivs:", "Seccomp:", "CapEff:", "CapBnd:"].iter().map(|f| status_field(f)).collect();
    assert_eq!(before, after);
    let names: Vec<&str> = layers.iter().map(|l| l.name.as_ref()).collect();
    assert_eq!(names, [LAYER_NO_NEW_PRIVS, LAYER_RLIMITS, LAYER_LANDLOCK, LAYER_CAPABILITIES, LAYER_SECCOMP]);
}

#[test]
fn test_layer_round_trips_through_json() {
    let l = Layer::new(LAYER_SECCOMP, true, "x");
    let back: Layer = serde_json::from_str(&serde_json::to_string(&l).unwrap()).unwrap();
    assert_eq!(back, l);
}
