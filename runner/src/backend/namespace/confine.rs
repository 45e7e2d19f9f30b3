//! The last hardening of the sandbox's PID 1 before it execs the agent:
//! no_new_privs, rlimits, Landlock, no capabilities, and a seccomp filter,
//! in that order: no_new_privs first (Landlock and seccomp need it without
//! CAP_SYS_ADMIN), the capabilities after Landlock and the securebits (which
//! need CAP_SETPCAP), the filter last so it binds only the agent and what it
//! spawns, which inherit all of it. `probe` says what `apply` would put in
//! force on this kernel without touching the calling process.

use std::borrow::Cow;
use std::path::PathBuf;

/// One isolation layer and whether it is in force.
///
/// `name` is a `Cow` rather than `&'static str` so a `Layer` can be read
/// back from ns-init's JSON report; the names made here are all static.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Layer {
    pub name: Cow<'static, str>,
    pub enforced: bool,
    pub detail: String,
}

impl Layer {
    pub fn new(name: &'static str, enforced: bool, detail: impl Into<String>) -> Layer {
        Layer { name: Cow::Borrowed(name), enforced, detail: detail.into() }
    }
}

pub const LAYER_NO_NEW_PRIVS: &str = "no_new_privs";
pub const LAYER_RLIMITS: &str = "rlimits";
pub const LAYER_LANDLOCK: &str = "landlock";
pub const LAYER_CAPABILITIES: &str = "capabilities";
pub const LAYER_SECCOMP: &str = "seccomp";

/// What to confine the sandbox to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfineSpec {
    /// Paths (inside the sandbox root) where writes are allowed: /workspace,
    /// /tmp, /run, /dev; missing ones are skipped and said so in the layer.
    /// Everything is readable and executable; each of these gets every write
    /// right (create, remove, rename, truncate, ioctl on devices), except
    /// exactly `/dev`, which gets only writing to and ioctls on the device
    /// files already there (/dev/null, /dev/tty, /dev/ptmx, /dev/pts/N): a
    /// step needs those, and nothing more (no new nodes, fifos, sockets or
    /// files in /dev). A tmpfs at /dev/shm is writable only if listed itself.
    pub writable: Vec<PathBuf>,
    /// AF_PACKET and raw IPv4/IPv6 sockets are let through the filter (only
    /// when the policy needs them). Steps still hold no CAP_NET_RAW, so this
    /// alone does not make them work.
    pub allow_raw_sockets: bool,
    /// RLIMIT_NPROC below [`NPROC_MAX`]: the plan's pids limit where no pids
    /// cgroup holds it (a normal user on cgroup v1, say). In the sandbox's
    /// own user namespace it counts the sandbox's tasks, threads included.
    pub nproc_max: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    #[error("setting no_new_privs failed")]
    NoNewPrivs(#[source] nix::Error),
    #[error("lowering RLIMIT_{name} failed")]
    Rlimit {
        name: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("locking the securebits failed")]
    Securebits(#[source] std::io::Error),
    #[error("dropping capability {cap} from the bounding set failed")]
    BoundingSet {
        cap: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("clearing the ambient capabilities failed")]
    Ambient(#[source] std::io::Error),
    #[error("clearing the capability sets failed")]
    Capset(#[source] std::io::Error),
    #[error("capabilities remain after dropping them ({0})")]
    CapsRemain(String),
    #[error("no seccomp filter is written for this architecture ({0})")]
    UnsupportedArch(&'static str),
    #[error("compiling the seccomp filter failed")]
    BuildFilter(#[source] seccompiler::BackendError),
    #[error("installing the seccomp filter ({which}) failed")]
    InstallFilter {
        which: &'static str,
        #[source]
        source: seccompiler::Error,
    },
}

/// In the sandbox's PID 1, single-threaded, after pivot_root and just before
/// execve of the agent: no_new_privs, rlimits, Landlock (best effort on
/// older kernels, reported), every capability dropped, the seccomp filter
/// last. Returns the layers as applied; an error only when a layer that must
/// hold did not (the caller then aborts the sandbox).
pub fn apply(spec: &ConfineSpec) -> Result<Vec<Layer>, ConfineError> {
    nix::sys::prctl::set_no_new_privs().map_err(ConfineError::NoNewPrivs)?;
    let nnp = Layer::new(LAYER_NO_NEW_PRIVS, true, "set: exec gains no setuid/setgid or file capabilities");
    let rl = apply_rlimits(spec.nproc_max)?;
    let ll = landlock::apply(&spec.writable);
    let caps = caps::drop_all()?;
    let sc = seccomp::install(spec.allow_raw_sockets)?;
    Ok(vec![nnp, rl, ll, caps, sc])
}

/// What `apply` would enforce on this kernel, in the same order and with the
/// same names, without changing this process.
pub fn probe() -> Vec<Layer> {
    vec![
        Layer::new(LAYER_NO_NEW_PRIVS, true, "set before the agent starts"),
        Layer::new(LAYER_RLIMITS, true, rlimit_summary()),
        landlock::probe(),
        Layer::new(LAYER_CAPABILITIES, true, "all dropped (bounding, ambient, inheritable, effective, permitted)"),
        seccomp::probe(),
    ]
}

/// The rlimits lowered in the sandbox: (resource, name, limit, why). Only
/// ever lowered (min with the current soft and hard limits).
pub fn rlimits() -> &'static [(nix::sys::resource::Resource, &'static str, u64, &'static str)] {
    use nix::sys::resource::Resource;
    &[
        (Resource::RLIMIT_CORE, "CORE", 0, "no core files: a dump of the agent holds its session token, and dumps would land in the workspace"),
        (Resource::RLIMIT_RTPRIO, "RTPRIO", 0, "no real-time scheduling, which would starve the host's CPUs whatever the cgroup's cpu limit says"),
        (Resource::RLIMIT_NICE, "NICE", 0, "no priority raises above the one the sandbox started with"),
        (Resource::RLIMIT_NPROC, "NPROC", NPROC_MAX, "a backstop against fork bombs where no pids cgroup holds: tasks (threads too) of the sandbox's user in its user namespace"),
    ]
}

/// RLIMIT_NPROC in the sandbox; the pids cgroup is the real bound.
pub const NPROC_MAX: u64 = 16384;

fn rlimit_summary() -> String {
    let parts: Vec<String> = rlimits().iter().map(|(_, name, v, _)| format!("{} {v}", name.to_lowercase())).collect();
    parts.join(", ")
}

fn apply_rlimits(nproc_max: Option<u64>) -> Result<Layer, ConfineError> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    for (res, name, limit, _) in rlimits() {
        let limit = match (res, nproc_max) {
            (Resource::RLIMIT_NPROC, Some(n)) => n.min(*limit),
            _ => *limit,
        };
        let (soft, hard) = getrlimit(*res).map_err(|source| ConfineError::Rlimit { name, source })?;
        setrlimit(*res, soft.min(limit), hard.min(limit)).map_err(|source| ConfineError::Rlimit { name, source })?;
    }
    let mut summary = rlimit_summary();
    if let Some(n) = nproc_max {
        summary
            .push_str(&format!("; nproc lowered to {}, the pids limit, as no pids cgroup holds it", n.min(NPROC_MAX)));
    }
    Ok(Layer { name: LAYER_RLIMITS.into(), enforced: true, detail: summary })
}

mod landlock {
    //! Read and execute everywhere, write only beneath the writable paths.

    use super::{Layer, LAYER_LANDLOCK};
    use landlock::{
        Access, AccessFs, BitFlags, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus,
        Scope, ABI,
    };
    use std::path::{Path, PathBuf};

    /// The ABI whose rights are asked for: the newest one tested (this is
    /// the development hosts' kernel). Older kernels get what they support.
    const TARGET: ABI = ABI::V7;
    /// The first ABI that also denies truncate(2) outside the writable
    /// paths; below it, writes by truncation go through, so the layer does
    /// not count as enforced.
    const MIN_ENFORCED: i32 = 3;

    /// The rights granted beneath `path`.
    pub(super) fn rights_for(path: &Path) -> BitFlags<AccessFs> {
        if path == Path::new("/dev") {
            AccessFs::from_read(TARGET) | AccessFs::WriteFile | AccessFs::IoctlDev
        } else {
            AccessFs::from_all(TARGET)
        }
    }

    /// The kernel's Landlock ABI, or why there is none.
    pub(super) fn kernel_abi() -> Result<i32, &'static str> {
        const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
        // SAFETY: with a null attr, size 0 and the VERSION flag the call only
        // returns a number; it creates nothing.
        let v = unsafe {
            libc::syscall(
                libc::SYS_landlock_create_ruleset,
                std::ptr::null::<libc::c_void>(),
                0usize,
                LANDLOCK_CREATE_RULESET_VERSION,
            )
        };
        if v >= 1 {
            return Ok(v as i32);
        }
        match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::EOPNOTSUPP) => {
                Err("the kernel has Landlock but it is not enabled (add landlock to the lsm= boot parameter)")
            }
            _ => Err("the kernel has no Landlock (CONFIG_SECURITY_LANDLOCK, Linux 5.13+)"),
        }
    }

    fn missing(abi: i32) -> Vec<&'static str> {
        let mut m = Vec::new();
        if abi < 2 {
            m.push("file renames across directories are always denied (ABI 2)");
        }
        if abi < 3 {
            m.push("truncate(2) is not restricted (ABI 3)");
        }
        if abi < 5 {
            m.push("device ioctls are not restricted (ABI 5)");
        }
        if abi < 6 {
            m.push("signals and abstract unix sockets are not scoped (ABI 6)");
        }
        m
    }

    pub(super) fn probe() -> Layer {
        match kernel_abi() {
            Ok(abi) => {
                let gaps = missing(abi);
                let detail = if gaps.is_empty() {
                    format!("ABI {abi}: writes only beneath the workspace, /tmp, /run and /dev's devices")
                } else {
                    format!("ABI {abi}, partial: {}", gaps.join("; "))
                };
                Layer::new(LAYER_LANDLOCK, abi >= MIN_ENFORCED, detail)
            }
            Err(why) => Layer::new(LAYER_LANDLOCK, false, why),
        }
    }

    pub(super) fn apply(writable: &[PathBuf]) -> Layer {
        let abi = match kernel_abi() {
            Ok(abi) => abi,
            Err(why) => return Layer::new(LAYER_LANDLOCK, false, why),
        };
        let root = match PathFd::new("/") {
            Ok(fd) => fd,
            Err(e) => return Layer::new(LAYER_LANDLOCK, false, format!("ABI {abi}: opening / failed: {e}")),
        };
        let mut skipped = Vec::new();
        let mut granted = Vec::new();
        let status = (|| -> Result<RulesetStatus, landlock::RulesetError> {
            let mut rs = Ruleset::default()
                .handle_access(AccessFs::from_all(TARGET))?
                .scope(Scope::from_all(TARGET))?
                .create()?
                .add_rule(PathBeneath::new(root, AccessFs::from_read(TARGET)))?;
            for p in writable {
                match PathFd::new(p) {
                    Ok(fd) => {
                        rs = rs.add_rule(PathBeneath::new(fd, rights_for(p)))?;
                        granted.push(p.display().to_string());
                    }
                    Err(_) => skipped.push(p.display().to_string()),
                }
            }
            Ok(rs.restrict_self()?.ruleset)
        })();
        let mut detail = format!("ABI {abi}: writes only beneath {}", granted.join(", "));
        if !skipped.is_empty() {
            detail.push_str(&format!(" (missing, skipped: {})", skipped.join(", ")));
        }
        match status {
            Ok(RulesetStatus::FullyEnforced) => Layer::new(LAYER_LANDLOCK, true, detail),
            Ok(RulesetStatus::PartiallyEnforced) => {
                detail.push_str(&format!("; partial: {}", missing(abi).join("; ")));
                Layer::new(LAYER_LANDLOCK, abi >= MIN_ENFORCED, detail)
            }
            Ok(RulesetStatus::NotEnforced) => {
                Layer::new(LAYER_LANDLOCK, false, format!("ABI {abi}: the kernel enforced none of the rules"))
            }
            Err(e) => Layer::new(LAYER_LANDLOCK, false, format!("ABI {abi}: restricting failed: {e}")),
        }
    }
}

mod caps {
    //! Every capability gone, and no way back through exec as root.

    use super::{ConfineError, Layer, LAYER_CAPABILITIES};
    use std::io::Error;

    // linux/securebits.h
    const SECBIT_NOROOT: libc::c_ulong = 1 << 0;
    const SECBIT_NOROOT_LOCKED: libc::c_ulong = 1 << 1;
    const SECBIT_KEEP_CAPS_LOCKED: libc::c_ulong = 1 << 5;
    const SECBIT_NO_CAP_AMBIENT_RAISE: libc::c_ulong = 1 << 6;
    const SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED: libc::c_ulong = 1 << 7;
    const CAP_VERSION_3: u32 = 0x2008_0522;

    #[repr(C)]
    struct CapHeader {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    struct CapData {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }

    /// Highest capability number this kernel knows.
    fn last_cap() -> u32 {
        std::fs::read_to_string("/proc/sys/kernel/cap_last_cap").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(63)
    }

    fn prctl(op: libc::c_int, a: libc::c_ulong, b: libc::c_ulong) -> Result<(), Error> {
        // SAFETY: the prctl operations used here take integer arguments only.
        if unsafe { libc::prctl(op, a, b, 0 as libc::c_ulong, 0 as libc::c_ulong) } < 0 {
            return Err(Error::last_os_error());
        }
        Ok(())
    }

    fn capget() -> Result<[CapData; 2], Error> {
        let mut hdr = CapHeader { version: CAP_VERSION_3, pid: 0 };
        let mut data = [CapData::default(); 2];
        // SAFETY: a v3 header and room for the two data structs v3 fills.
        if unsafe { libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) } < 0 {
            return Err(Error::last_os_error());
        }
        Ok(data)
    }

    pub(super) fn drop_all() -> Result<Layer, ConfineError> {
        // Root in the sandbox gains nothing from exec; locked, so no step can
        // undo it. Needs CAP_SETPCAP, hence first.
        let bits = SECBIT_NOROOT
            | SECBIT_NOROOT_LOCKED
            | SECBIT_KEEP_CAPS_LOCKED
            | SECBIT_NO_CAP_AMBIENT_RAISE
            | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED;
        prctl(libc::PR_SET_SECUREBITS, bits, 0).map_err(ConfineError::Securebits)?;
        let last = last_cap();
        for cap in 0..=last {
            match prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0) {
                Ok(()) => {}
                // A capability newer than /proc said (or than this kernel has).
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) && cap > 0 => break,
                Err(source) => return Err(ConfineError::BoundingSet { cap, source }),
            }
        }
        match prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0) {
            Ok(()) => {}
            // Before Linux 4.3 there is no ambient set to clear.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => return Err(ConfineError::Ambient(e)),
        }
        let hdr = CapHeader { version: CAP_VERSION_3, pid: 0 };
        let data = [CapData::default(); 2];
        // SAFETY: a v3 header and the two (zeroed) data structs v3 reads.
        if unsafe { libc::syscall(libc::SYS_capset, &hdr, data.as_ptr()) } < 0 {
            return Err(ConfineError::Capset(Error::last_os_error()));
        }
        // Checked, not assumed: a step must start with nothing.
        let now = capget().map_err(ConfineError::Capset)?;
        if now.iter().any(|d| d.effective | d.permitted | d.inheritable != 0) {
            return Err(ConfineError::CapsRemain("effective, permitted or inheritable".into()));
        }
        // SAFETY: PR_CAPBSET_READ takes an integer and returns 0 or 1.
        if (0..=last).any(|c| unsafe { libc::prctl(libc::PR_CAPBSET_READ, c as libc::c_ulong, 0, 0, 0) } == 1) {
            return Err(ConfineError::CapsRemain("bounding set".into()));
        }
        Ok(Layer::new(
            LAYER_CAPABILITIES,
            true,
            "all dropped (bounding, ambient, inheritable, effective, permitted); securebits noroot, locked",
        ))
    }
}

mod seccomp;

#[cfg(test)]
mod tests;
