//! The privileged calls that build the sandbox's root, behind a small trait
//! (youki's `syscall/` is the model): `setup_root` decides what to mount
//! where, in which order, and is unit-tested with a recording fake; `Real`
//! makes the calls with `nix`.

use nix::mount::MsFlags;
use std::path::{Path, PathBuf};

/// The calls `setup_root` needs; paths are absolute in the current mount
/// namespace.
pub trait Sys {
    fn mount(
        &mut self,
        src: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()>;
    /// Remounts the bind mount at `target` read-only (keeping the flags the
    /// kernel locks in a user namespace: nosuid, nodev, noexec, atime).
    fn remount_ro(&mut self, target: &Path) -> nix::Result<()>;
    fn mkdir(&mut self, p: &Path) -> nix::Result<()>;
    /// An empty regular file (a mount point for a bound file).
    fn touch(&mut self, p: &Path) -> nix::Result<()>;
    fn symlink(&mut self, target: &Path, link: &Path) -> nix::Result<()>;
    /// Whether `p` exists (without following a final symlink), and is a
    /// symlink, a directory or something else.
    fn kind(&mut self, p: &Path) -> Option<Kind>;
    fn read_link(&mut self, p: &Path) -> Option<PathBuf>;
    /// Makes `new_root` the root (pivot_root(".", ".") in it, then the old
    /// root detached).
    fn pivot_root(&mut self, new_root: &Path) -> nix::Result<()>;
    fn sethostname(&mut self, name: &str) -> nix::Result<()>;
    fn chdir(&mut self, p: &Path) -> nix::Result<()>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    Symlink,
    Other,
}

/// What the sandbox's root is made of (host paths).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootPlan {
    /// The image's rootfs (bound read-only as `/`), or `None` for the
    /// host's own /usr, /bin, /lib*, /etc (`--rootfs host`).
    pub image_root: Option<PathBuf>,
    /// The host directory bound read-write at /workspace.
    pub workspace: PathBuf,
    /// The host directory bound read-write at /.cordon-spool, if any.
    pub spool: Option<PathBuf>,
    /// A file bound over /etc/resolv.conf (the gate's DNS address).
    pub resolv: Option<PathBuf>,
    pub hostname: String,
    /// An empty directory of cordon's (in its private temp dir) where this
    /// mount namespace assembles the new root on a tmpfs nobody else sees.
    pub stage: PathBuf,
    /// Bytes each of /tmp and /dev/shm may hold (the step's memory: tmpfs
    /// pages are memory, and a normal user's sandbox may have no memory
    /// cgroup to charge them to); /run gets a sixteenth of it.
    pub tmpfs_bytes: u64,
}

/// Host paths never visible with `--rootfs host`, even under /etc.
pub const HIDDEN_HOST_FILES: &[&str] = &["etc/shadow", "etc/gshadow", "etc/shadow-", "etc/gshadow-", "etc/sudoers"];
/// The host directories `--rootfs host` shows (read-only); /root, /home,
/// /var, /srv, /opt and everything else stay out.
pub const HOST_DIRS: &[&str] = &["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc"];
/// Device nodes bound from the host's /dev.
pub const DEV_NODES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// Phase one, in a fresh mount namespace: everything bound from the host
/// (the root read-only, /dev's nodes, the workspace, resolv.conf). As root
/// this runs before the user namespace exists, with the host's root's
/// privileges (the sandbox's mapped root could not even walk the host's
/// 0700 directories); as a normal user, inside the user namespace.
pub fn prepare_root(sys: &mut impl Sys, plan: &RootPlan) -> nix::Result<()> {
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let r = plan.stage.join("root");
    let at = |p: &str| r.join(p);
    // Nothing mounted here may propagate back to the host.
    sys.mount(None, Path::new("/"), None, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None)?;
    sys.mount(Some(Path::new("tmpfs")), &plan.stage, Some("tmpfs"), nosuid_nodev, Some("mode=0755,size=4m"))?;
    sys.mkdir(&r)?;
    match &plan.image_root {
        Some(img) => {
            sys.mount(Some(img), &r, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)?;
            sys.remount_ro(&r)?;
        }
        None => {
            sys.mount(Some(Path::new("tmpfs")), &r, Some("tmpfs"), nosuid_nodev, Some("mode=0755,size=1m"))?;
            for d in HOST_DIRS {
                let host = Path::new("/").join(d);
                match sys.kind(&host) {
                    // Merged /usr: /bin -> usr/bin and the like stay links.
                    Some(Kind::Symlink) => {
                        if let Some(t) = sys.read_link(&host) {
                            sys.symlink(&t, &at(d))?;
                        }
                    }
                    Some(Kind::Dir) => {
                        sys.mkdir(&at(d))?;
                        sys.mount(Some(&host), &at(d), None, MsFlags::MS_BIND | MsFlags::MS_REC, None)?;
                        sys.remount_ro(&at(d))?;
                    }
                    _ => {}
                }
            }
            for f in HIDDEN_HOST_FILES {
                if sys.kind(&at(f)).is_some() {
                    sys.mount(Some(Path::new("/dev/null")), &at(f), None, MsFlags::MS_BIND, None)?;
                }
            }
            for d in ["proc", "dev", "tmp", "run", "workspace", ".cordon-spool"] {
                sys.mkdir(&at(d))?;
            }
            // The tmpfs root itself read-only too, now that its mount points exist.
            sys.mount(None, &r, None, MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | nosuid_nodev, None)?;
        }
    }
    // A minimal /dev: a few host nodes bound in; pts and shm come in phase two.
    sys.mount(
        Some(Path::new("tmpfs")),
        &at("dev"),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0755,size=64k"),
    )?;
    for n in DEV_NODES {
        let p = at("dev").join(n);
        sys.touch(&p)?;
        sys.mount(Some(&Path::new("/dev").join(n)), &p, None, MsFlags::MS_BIND, None)?;
    }
    sys.mkdir(&at("dev/pts"))?;
    sys.mkdir(&at("dev/shm"))?;
    sys.symlink(Path::new("pts/ptmx"), &at("dev/ptmx"))?;
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        sys.symlink(Path::new(target), &at("dev").join(name))?;
    }
    if let Some(spool) = &plan.spool {
        sys.mount(Some(spool), &at(".cordon-spool"), None, MsFlags::MS_BIND, None)?;
        sys.mount(None, &at(".cordon-spool"), None, MsFlags::MS_REMOUNT | MsFlags::MS_BIND | nosuid_nodev, None)?;
    }
    sys.mount(Some(&plan.workspace), &at("workspace"), None, MsFlags::MS_BIND, None)?;
    // A plain bind ignores nosuid/nodev; only a remount of the bind sets them.
    sys.mount(None, &at("workspace"), None, MsFlags::MS_REMOUNT | MsFlags::MS_BIND | nosuid_nodev, None)?;
    if let Some(resolv) = &plan.resolv {
        if sys.kind(&at("etc/resolv.conf")).is_some() {
            sys.mount(Some(resolv), &at("etc/resolv.conf"), None, MsFlags::MS_BIND, None)?;
            sys.remount_ro(&at("etc/resolv.conf"))?;
        }
    }
    Ok(())
}

/// The new root's path, once `prepare_root` has built it.
pub fn new_root(plan: &RootPlan) -> PathBuf {
    plan.stage.join("root")
}

/// Phase two, in PID 1 of the new PID namespace as the user namespace's
/// root: what must belong to the sandbox (proc of its PID namespace, its
/// own devpts, tmpfs it can write), then the pivot into the new root.
/// Paths are relative to the working directory, which the caller set to the
/// new root while it could still walk there (the mapped root cannot pass
/// cordon's 0700 temp dir).
pub fn finish_root(sys: &mut impl Sys, plan: &RootPlan) -> nix::Result<()> {
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let noexec = nosuid_nodev | MsFlags::MS_NOEXEC;
    let r = PathBuf::from(".");
    let at = |p: &str| r.join(p);
    // The root was bound before the user namespace, so in this namespace's
    // copy it is locked, and pivot_root refuses a locked mount: bind it onto
    // itself (a new bind's top is never locked) and step into the new mount.
    sys.mount(Some(&r), &r, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)?;
    sys.chdir(Path::new(".."))?;
    sys.chdir(Path::new("root"))?;
    sys.mount(Some(Path::new("proc")), &at("proc"), Some("proc"), noexec, None)?;
    sys.mount(
        Some(Path::new("devpts")),
        &at("dev/pts"),
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    let (big, small) = (plan.tmpfs_bytes.max(1 << 20), (plan.tmpfs_bytes / 16).max(1 << 20));
    let opts = |mode: &str, size: u64| format!("mode={mode},size={size},nr_inodes={}", (size / 4096).max(1024));
    sys.mount(Some(Path::new("tmpfs")), &at("dev/shm"), Some("tmpfs"), noexec, Some(&opts("1777", big)))?;
    sys.mount(Some(Path::new("tmpfs")), &at("tmp"), Some("tmpfs"), nosuid_nodev, Some(&opts("1777", big)))?;
    sys.mount(Some(Path::new("tmpfs")), &at("run"), Some("tmpfs"), nosuid_nodev, Some(&opts("0755", small)))?;
    sys.mkdir(&at("run/cordon"))?;
    sys.pivot_root(&r)?;
    sys.sethostname(&plan.hostname)
}

/// The real calls.
pub struct Real;

impl Sys for Real {
    fn mount(
        &mut self,
        src: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()> {
        nix::mount::mount(src, target, fstype, flags, data).inspect_err(|e| {
            eprintln!("cordon __ns-init: mount {src:?} on {} ({fstype:?}, {flags:?}): {e}", target.display())
        })
    }

    fn remount_ro(&mut self, target: &Path) -> nix::Result<()> {
        use nix::sys::statvfs::{statvfs, FsFlags};
        let have = statvfs(target)?.flags();
        let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY;
        for (fs, ms) in [
            (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
            (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
            (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
            (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
            (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
        ] {
            if have.contains(fs) {
                flags |= ms;
            }
        }
        nix::mount::mount(
            None::<&Path>,
            target,
            None::<&str>,
            flags | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            None::<&str>,
        )
        .inspect_err(|e| eprintln!("cordon __ns-init: read-only remount of {}: {e}", target.display()))
    }

    fn mkdir(&mut self, p: &Path) -> nix::Result<()> {
        match nix::unistd::mkdir(p, nix::sys::stat::Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn touch(&mut self, p: &Path) -> nix::Result<()> {
        use nix::fcntl::OFlag;
        let fd = nix::fcntl::open(
            p,
            OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )?;
        drop(fd);
        Ok(())
    }

    fn symlink(&mut self, target: &Path, link: &Path) -> nix::Result<()> {
        nix::unistd::symlinkat(target, nix::fcntl::AT_FDCWD, link)
    }

    fn kind(&mut self, p: &Path) -> Option<Kind> {
        let m = std::fs::symlink_metadata(p).ok()?;
        Some(if m.file_type().is_symlink() {
            Kind::Symlink
        } else if m.is_dir() {
            Kind::Dir
        } else {
            Kind::Other
        })
    }

    fn read_link(&mut self, p: &Path) -> Option<PathBuf> {
        std::fs::read_link(p).ok()
    }

    fn pivot_root(&mut self, new_root: &Path) -> nix::Result<()> {
        let r = (|| {
            nix::unistd::chdir(new_root)?;
            nix::unistd::pivot_root(".", ".")?;
            nix::mount::umount2(".", nix::mount::MntFlags::MNT_DETACH)?;
            nix::unistd::chdir("/")
        })();
        r.inspect_err(|e| eprintln!("cordon __ns-init: pivot_root into {}: {e}", new_root.display()))
    }

    fn sethostname(&mut self, name: &str) -> nix::Result<()> {
        nix::unistd::sethostname(name)
    }

    fn chdir(&mut self, p: &Path) -> nix::Result<()> {
        nix::unistd::chdir(p)
    }
}

#[cfg(test)]
mod tests;
