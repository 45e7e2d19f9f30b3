//! A deny-list filter: everything not named in `table` is allowed (the
//! agent and arbitrary build tools must keep working), and what is named
//! is the kernel surface a confined step has no use for.

use super::{ConfineError, Layer, LAYER_SECCOMP};
use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;

/// A test on one argument, as the 32 bits the kernel reads (ints, and
/// the lower half of clone's and unshare's flags, the only part that
/// carries flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cond {
    Eq(u8, u32),
    Ne(u8, u32),
    /// `(arg & mask) == value`
    Masked(u8, u32, u32),
}

/// One row of the deny table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Deny {
    pub syscall: &'static str,
    pub nr: i64,
    /// Denied when one of these conjunctions holds; empty: always.
    pub when: Vec<Vec<Cond>>,
    pub errno: i32,
    pub why: &'static str,
}

const NEWTIME: u32 = 0x80; // CLONE_NEWTIME
/// The namespace flags; CLONE_NEWTIME only for unshare (in clone's flags
/// 0x80 is part of the exit signal; clone3 is refused as a whole).
pub(super) const NS_FLAGS: [(&str, u32); 7] = [
    ("CLONE_NEWNS", libc::CLONE_NEWNS as u32),
    ("CLONE_NEWCGROUP", libc::CLONE_NEWCGROUP as u32),
    ("CLONE_NEWUTS", libc::CLONE_NEWUTS as u32),
    ("CLONE_NEWIPC", libc::CLONE_NEWIPC as u32),
    ("CLONE_NEWUSER", libc::CLONE_NEWUSER as u32),
    ("CLONE_NEWPID", libc::CLONE_NEWPID as u32),
    ("CLONE_NEWNET", libc::CLONE_NEWNET as u32),
];
/// socket(2)'s type carries SOCK_CLOEXEC and SOCK_NONBLOCK above the
/// kernel's SOCK_TYPE_MASK.
pub(super) const SOCK_TYPE_MASK: u32 = 0xf;
const PER_LINUX: u32 = 0;
/// personality(0xffffffff) only reports the current persona.
const PER_QUERY: u32 = 0xffff_ffff;
/// Same number on every architecture (new system calls share numbers
/// since 5.1); not yet in libc.
const SYS_OPEN_TREE_ATTR: i64 = 467;

fn always(syscall: &'static str, nr: libc::c_long, why: &'static str) -> Deny {
    Deny { syscall, nr, when: Vec::new(), errno: libc::EPERM, why }
}

fn when(syscall: &'static str, nr: libc::c_long, when: Vec<Vec<Cond>>, why: &'static str) -> Deny {
    Deny { syscall, nr, when, errno: libc::EPERM, why }
}

/// Every system call the sandbox refuses, and why. EPERM unless said.
pub(super) fn table(allow_raw_sockets: bool) -> Vec<Deny> {
    use libc::*;
    const MOUNT: &str = "no mounts: the sandbox's root is final before the agent starts";
    const MOUNT_API: &str = "the new mount API: mounting by another name";
    const TRACE: &str = "no step reaches into another process, the agent (PID 1, same uid) above all";
    const KERNEL: &str = "the kernel is the host's: no replacing it, no modules";
    const KEYS: &str = "the kernel keyrings are not namespaced";
    const URING: &str = "a second system call path the filter cannot see into";
    const NEW_NS: &str =
        "the sandbox builds no namespaces: a new user namespace would give a step every capability back";
    const SWAP: &str = "the host's swap";
    let unshare_ns: Vec<Vec<Cond>> =
        NS_FLAGS.iter().map(|(_, f)| *f).chain([NEWTIME]).map(|f| vec![Cond::Masked(0, f, f)]).collect();
    let clone_ns: Vec<Vec<Cond>> = NS_FLAGS.iter().map(|(_, f)| vec![Cond::Masked(0, *f, *f)]).collect();
    let mut t = vec![
        always("mount", SYS_mount, MOUNT),
        always("umount2", SYS_umount2, MOUNT),
        always("pivot_root", SYS_pivot_root, MOUNT),
        always("fsopen", SYS_fsopen, MOUNT_API),
        always("fsconfig", SYS_fsconfig, MOUNT_API),
        always("fsmount", SYS_fsmount, MOUNT_API),
        always("fspick", SYS_fspick, MOUNT_API),
        always("move_mount", SYS_move_mount, MOUNT_API),
        always("open_tree", SYS_open_tree, MOUNT_API),
        always("open_tree_attr", SYS_OPEN_TREE_ATTR as c_long, MOUNT_API),
        always("mount_setattr", SYS_mount_setattr, MOUNT_API),
        always("ptrace", SYS_ptrace, TRACE),
        always("process_vm_readv", SYS_process_vm_readv, TRACE),
        always("process_vm_writev", SYS_process_vm_writev, TRACE),
        always("pidfd_getfd", SYS_pidfd_getfd, "takes another process's descriptors (the agent's control channel), like ptrace"),
        always("kexec_load", SYS_kexec_load, KERNEL),
        always("kexec_file_load", SYS_kexec_file_load, KERNEL),
        always("init_module", SYS_init_module, KERNEL),
        always("finit_module", SYS_finit_module, KERNEL),
        always("delete_module", SYS_delete_module, KERNEL),
        always("bpf", SYS_bpf, "eBPF programs run in the host's kernel"),
        always("perf_event_open", SYS_perf_event_open, "kernel and hardware introspection, a source of side channels"),
        always("keyctl", SYS_keyctl, KEYS),
        always("add_key", SYS_add_key, KEYS),
        always("request_key", SYS_request_key, KEYS),
        always("userfaultfd", SYS_userfaultfd, "stalls the kernel on a page fault at will: an exploit primitive"),
        always("io_uring_setup", SYS_io_uring_setup, URING),
        always("io_uring_enter", SYS_io_uring_enter, URING),
        always("io_uring_register", SYS_io_uring_register, URING),
        always("setns", SYS_setns, "no entering other namespaces"),
        always("open_by_handle_at", SYS_open_by_handle_at, "opens files by handle, around the mount tree"),
        always("reboot", SYS_reboot, "not the step's to do"),
        always("swapon", SYS_swapon, SWAP),
        always("swapoff", SYS_swapoff, SWAP),
        always("syslog", SYS_syslog, "the host's kernel log"),
        when("unshare", SYS_unshare, unshare_ns, NEW_NS),
        when("clone", SYS_clone, clone_ns, NEW_NS),
        Deny {
            syscall: "clone3",
            nr: SYS_clone3,
            when: Vec::new(),
            errno: ENOSYS,
            why: "its flags sit in memory a filter cannot read; ENOSYS makes libc fall back to clone, whose flags are checked",
        },
        when(
            "personality",
            SYS_personality,
            vec![vec![Cond::Ne(0, PER_LINUX), Cond::Ne(0, PER_QUERY)]],
            "no execution domain changes (ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC, ...); PER_LINUX and the query stay",
        ),
        when("ioctl", SYS_ioctl, vec![vec![Cond::Eq(1, TIOCSTI as u32)]], "no faking input on a terminal"),
        when(
            "socket",
            SYS_socket,
            vec![vec![Cond::Eq(0, AF_VSOCK as u32)]],
            "vsock is not network-namespaced: it would reach the host's and the hypervisor's services around the gate",
        ),
        when(
            "socket",
            SYS_socket,
            vec![vec![Cond::Eq(0, AF_NETLINK as u32), Cond::Eq(2, NETLINK_KOBJECT_UEVENT as u32)]],
            "the kernel sends the host's device events to every network namespace of the host's user namespace, the sandbox's included",
        ),
    ];
    if !allow_raw_sockets {
        let raw = |family: c_int| vec![Cond::Eq(0, family as u32), Cond::Masked(1, SOCK_TYPE_MASK, SOCK_RAW as u32)];
        t.push(when(
            "socket",
            SYS_socket,
            vec![vec![Cond::Eq(0, AF_PACKET as u32)], raw(AF_INET), raw(AF_INET6)],
            "link-layer and raw IP sockets forge what the gate and the kernel would refuse; only when the policy needs them",
        ));
    }
    t
}

pub(super) fn target_arch() -> Result<TargetArch, ConfineError> {
    #[cfg(target_arch = "x86_64")]
    return Ok(TargetArch::x86_64);
    #[cfg(target_arch = "aarch64")]
    return Ok(TargetArch::aarch64);
    #[allow(unreachable_code)]
    Err(ConfineError::UnsupportedArch(std::env::consts::ARCH))
}

fn condition(c: Cond) -> Result<SeccompCondition, seccompiler::BackendError> {
    let (arg, op, value) = match c {
        Cond::Eq(a, v) => (a, SeccompCmpOp::Eq, v),
        Cond::Ne(a, v) => (a, SeccompCmpOp::Ne, v),
        Cond::Masked(a, m, v) => (a, SeccompCmpOp::MaskedEq(m as u64), v),
    };
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value as u64)
}

/// The errno's name, for messages.
fn errno_name(e: i32) -> &'static str {
    match e {
        libc::EPERM => "EPERM rules",
        libc::ENOSYS => "ENOSYS rules",
        _ => "rules",
    }
}

/// On x86_64, x32 system calls carry the native audit arch with bit 30
/// set in the number, so none of the table's numbers would match them:
/// refused as a whole, as on kernels built without x32.
fn x32_guard() -> BpfProgram {
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    let stmt = |code: u16, k: u32| sock_filter { code, jt: 0, jf: 0, k };
    let jump = |code: u16, k: u32, jt: u8, jf: u8| sock_filter { code, jt, jf, k };
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    vec![
        stmt(LD_W_ABS, 4),                    // arch
        jump(JEQ_K, AUDIT_ARCH_X86_64, 0, 3), // another ABI: the main filter kills it
        stmt(LD_W_ABS, 0),                    // nr
        jump(JGE_K, X32_SYSCALL_BIT, 0, 1),
        stmt(RET_K, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        stmt(RET_K, libc::SECCOMP_RET_ALLOW),
    ]
}

/// The compiled filters in the order they are installed.
pub(super) fn programs(allow_raw_sockets: bool) -> Result<Vec<(&'static str, BpfProgram)>, ConfineError> {
    let arch = target_arch()?;
    let mut by_errno: BTreeMap<i32, BTreeMap<i64, Option<Vec<SeccompRule>>>> = BTreeMap::new();
    for d in table(allow_raw_sockets) {
        let slot = by_errno.entry(d.errno).or_default().entry(d.nr).or_insert_with(|| Some(Vec::new()));
        if d.when.is_empty() {
            // Unconditional: no rules at all means "on the number alone".
            *slot = None;
            continue;
        }
        if let Some(rules) = slot {
            for conj in &d.when {
                let conds = conj.iter().map(|c| condition(*c)).collect::<Result<Vec<_>, _>>();
                let rule = conds.and_then(SeccompRule::new).map_err(ConfineError::BuildFilter)?;
                rules.push(rule);
            }
        }
    }
    let mut out = Vec::new();
    if matches!(arch, TargetArch::x86_64) {
        out.push(("x32 guard", x32_guard()));
    }
    for (errno, rules) in by_errno {
        let rules = rules.into_iter().map(|(nr, r)| (nr, r.unwrap_or_default())).collect();
        let filter = SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(errno as u32), arch)
            .map_err(ConfineError::BuildFilter)?;
        out.push((errno_name(errno), filter.try_into().map_err(ConfineError::BuildFilter)?));
    }
    Ok(out)
}

fn summary(allow_raw_sockets: bool) -> String {
    let t = table(allow_raw_sockets);
    let names: std::collections::BTreeSet<&str> = t.iter().map(|d| d.syscall).collect();
    let raw = if allow_raw_sockets { "raw sockets allowed by the policy" } else { "raw and packet sockets denied" };
    format!(
        "{} system calls denied or narrowed (mounts, ptrace-likes, kexec/modules, bpf, perf, keyrings, userfaultfd, \
         io_uring, new namespaces, personality, TIOCSTI, vsock, kernel uevents); {raw}; clone3 ENOSYS; other ABIs refused",
        names.len()
    )
}

pub(super) fn install(allow_raw_sockets: bool) -> Result<Layer, ConfineError> {
    for (which, prog) in programs(allow_raw_sockets)? {
        seccompiler::apply_filter(&prog).map_err(|source| ConfineError::InstallFilter { which, source })?;
    }
    Ok(Layer::new(LAYER_SECCOMP, true, summary(allow_raw_sockets)))
}

pub(super) fn probe() -> Layer {
    if let Err(e) = target_arch() {
        return Layer::new(LAYER_SECCOMP, false, e.to_string());
    }
    const SECCOMP_GET_ACTION_AVAIL: libc::c_ulong = 2;
    let action: u32 = libc::SECCOMP_RET_ERRNO;
    // SAFETY: SECCOMP_GET_ACTION_AVAIL only reads the u32 it points to.
    let r = unsafe { libc::syscall(libc::SYS_seccomp, SECCOMP_GET_ACTION_AVAIL, 0 as libc::c_ulong, &action) };
    if r == 0 {
        return Layer::new(LAYER_SECCOMP, true, summary(false));
    }
    let why = match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::ENOSYS) => "the kernel has no seccomp (CONFIG_SECCOMP)",
        Some(libc::EOPNOTSUPP) => "the kernel's seccomp cannot return an errno",
        _ => "the kernel has no seccomp filters, or predates Linux 4.14 and cannot say",
    };
    Layer::new(LAYER_SECCOMP, false, why)
}
