//! PID 1 duties in the VM: mount the pseudo filesystems, load the kernel
//! modules the image lists (in the given order, which is dependency order),
//! set the hostname, bring up loopback, and power off. PID 1 never returns
//! and never exits: every failure ends in `power_off`.

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::path::Path;

/// File in the initramfs listing module paths to load, one per line.
pub const MODULES_FILE: &str = "/etc/cordon/modules";

pub use cordon_protocol::boot::BootParams;

fn mount(src: &str, target: &str, fstype: &str, flags: libc::c_ulong, data: &str) {
    let _ = std::fs::create_dir_all(target);
    let (s, t, f, d) = (cstr(src), cstr(target), cstr(fstype), cstr(data));
    // SAFETY: all pointers are valid NUL-terminated strings.
    let rc = unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), flags, d.as_ptr().cast()) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) {
            tracing::warn!(target, fstype, error = %e, "mount failed");
        }
    }
}

fn cstr(s: &str) -> CString {
    CString::new(s).expect("static mount strings have no NUL")
}

/// Exempts PID 1 from the OOM killer: the steps' memory limits keep them
/// below the guest's RAM, and if the kernel must still kill, it kills a step,
/// never the agent. Steps are reset to 0 when they start (exec.rs).
pub fn protect_from_oom() {
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", "-1000") {
        tracing::warn!(error = %e, "setting the agent's oom_score_adj failed");
    }
}

/// Mounts what a build step expects to find.
pub fn mount_all() {
    let nosuid_nodev = libc::MS_NOSUID | libc::MS_NODEV;
    mount("proc", "/proc", "proc", nosuid_nodev | libc::MS_NOEXEC, "");
    mount("sysfs", "/sys", "sysfs", nosuid_nodev | libc::MS_NOEXEC, "");
    mount("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, "mode=0755");
    mount("devpts", "/dev/pts", "devpts", libc::MS_NOSUID | libc::MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620");
    if !Path::new("/dev/ptmx").exists() {
        let _ = std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx");
    }
    mount("tmpfs", "/dev/shm", "tmpfs", nosuid_nodev, "mode=1777");
    mount("tmpfs", "/tmp", "tmpfs", nosuid_nodev, "mode=1777");
    mount("tmpfs", "/run", "tmpfs", nosuid_nodev, "mode=0755");
    mount("cgroup2", "/sys/fs/cgroup", "cgroup2", nosuid_nodev | libc::MS_NOEXEC, "");
    // Gives per-exec cgroups their limits and OOM reports (memory, pids) and
    // a CPU weight below the agent's (cpu). One write each: a controller this
    // kernel lacks must not cost the others. Without memory and pids the
    // agent does not advertise the limits capability.
    for c in ["+memory", "+pids", "+cpu"] {
        if let Err(e) = std::fs::write("/sys/fs/cgroup/cgroup.subtree_control", c) {
            tracing::warn!(controller = c, error = %e, "enabling a cgroup controller failed");
        }
    }
    for (src, dst) in [
        ("/proc/self/fd", "/dev/fd"),
        ("/proc/self/fd/0", "/dev/stdin"),
        ("/proc/self/fd/1", "/dev/stdout"),
        ("/proc/self/fd/2", "/dev/stderr"),
    ] {
        let _ = std::os::unix::fs::symlink(src, dst);
    }
}

/// Parameters for module `name` from the kernel command line (`name.key=v`),
/// as modprobe would pass them: the kernel applies those only to built-ins.
pub fn module_params(cmdline: &str, name: &str) -> String {
    let prefix = format!("{name}.");
    cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix(&prefix))
        .filter(|p| p.contains('='))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Loads modules in order; one that is already loaded or built in is fine.
pub fn load_modules(list: &[String], cmdline: &str) {
    for m in list {
        let path = if m.starts_with('/') { m.clone() } else { format!("/lib/modules/{}/{m}", kernel_release()) };
        let file = path.rsplit('/').next().unwrap_or(&path);
        let name = file.split(".ko").next().unwrap_or(file).replace('-', "_");
        match load_module(&path, &module_params(cmdline, &name)) {
            Ok(()) => tracing::debug!(module = %path, "loaded"),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => tracing::warn!(module = %path, error = %e, "loading module failed"),
        }
    }
}

fn load_module(path: &str, params: &str) -> std::io::Result<()> {
    let f = std::fs::File::open(path)?;
    let params = CString::new(params).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: finit_module with an open fd and a NUL-terminated parameter string.
    let rc = unsafe { libc::syscall(libc::SYS_finit_module, f.as_raw_fd(), params.as_ptr(), 0) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Module list from the command line, else from the initramfs file, plus
/// the disk modules when the run has a userland disk.
pub fn module_list(params: &BootParams) -> Vec<String> {
    let read = |f: &str| -> Vec<String> {
        std::fs::read_to_string(f)
            .map(|s| {
                s.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_string).collect()
            })
            .unwrap_or_default()
    };
    let mut list = if params.modules.is_empty() { read(MODULES_FILE) } else { params.modules.clone() };
    if params.root.is_some() {
        list.extend(read(cordon_protocol::boot::ROOT_MODULES_FILE));
    }
    list
}

fn kernel_release() -> String {
    // SAFETY: zeroed utsname is a valid out-parameter.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer.
    unsafe { libc::uname(&mut u) };
    // SAFETY: uname NUL-terminates release.
    unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) }.to_string_lossy().into_owned()
}

pub fn set_hostname(name: &str) {
    // SAFETY: valid buffer and length.
    if unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "sethostname failed");
    }
}

/// Sets IFF_UP on `lo`.
pub fn loopback_up() {
    // SAFETY: plain socket and ioctl calls on a local ifreq.
    unsafe {
        let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if s < 0 {
            tracing::warn!("no socket for loopback setup");
            return;
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo".iter().enumerate() {
            ifr.ifr_name[i] = *b as libc::c_char;
        }
        if libc::ioctl(s, libc::SIOCGIFFLAGS, &mut ifr) == 0 {
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            if libc::ioctl(s, libc::SIOCSIFFLAGS, &ifr) != 0 {
                tracing::warn!(error = %std::io::Error::last_os_error(), "bringing up lo failed");
            }
        }
        libc::close(s);
    }
}

/// Configures the first non-loopback interface from a `cordon.net` spec
/// (see netconf.rs), and writes /etc/resolv.conf.
pub fn configure_net(spec: &cordon_protocol::boot::NetSpec) {
    let addrs = match crate::netconf::Addrs::from_spec(spec) {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "cordon.net not applied");
            return;
        }
    };
    let mut dev = None;
    for _ in 0..200 {
        dev = std::fs::read_dir("/sys/class/net")
            .ok()
            .and_then(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).find(|n| n != "lo"));
        if dev.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let Some(dev) = dev else {
        tracing::warn!("cordon.net given but no network interface appeared");
        return;
    };
    // No duplicate address detection delay and no router advertisements:
    // the addresses are fixed and the gate is the only way out.
    for (k, v) in [("accept_dad", "0"), ("accept_ra", "0"), ("autoconf", "0")] {
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{dev}/{k}"), v);
    }
    // The MTU is explicit: the gate refuses larger frames, so the interface
    // must not send them (virtio-net's default is 1500 too, but the gate's
    // limit should not rest on a default).
    if let Err(e) = crate::netconf::configure(&dev, &addrs) {
        let mut msg = e.to_string();
        if let Some(s) = std::error::Error::source(&e) {
            msg.push_str(&format!(": {s}"));
        }
        tracing::warn!(error = %msg, "configuring the network failed");
    }
    write_resolv(spec);
}

/// Points the resolver at the gate's DNS address (again after a switch into
/// an image's userland, whose /etc is another).
pub fn write_resolv(spec: &cordon_protocol::boot::NetSpec) {
    let _ = std::fs::create_dir_all("/etc");
    // Never through whatever link an image ships there.
    let _ = std::fs::remove_file("/etc/resolv.conf");
    let _ = std::fs::write("/etc/resolv.conf", format!("nameserver {}\n", spec.dns));
}

/// Seconds since kernel start, from /proc/uptime.
pub fn uptime_ms() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/uptime").ok()?;
    let secs: f64 = s.split_whitespace().next()?.parse().ok()?;
    Some((secs * 1000.0) as u64)
}

/// Syncs and ends the VM. Never returns.
pub fn power_off(reboot: bool) -> ! {
    // SAFETY: sync and reboot take no pointers.
    unsafe {
        libc::sync();
        libc::kill(-1, libc::SIGKILL);
        libc::sync();
        libc::reboot(if reboot { libc::RB_AUTOBOOT } else { libc::RB_POWER_OFF });
    }
    // reboot failed (not PID 1 or no privilege): PID 1 must still not exit.
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_module_params() {
        let c = "console=ttyS0 virtio_mmio.device=512@0xfeb00000:12 virtio_mmio.device=512@0xfeb00200:13 \
                 virtio_mmiox.a=1 virtio_mmio.flag";
        assert_eq!(module_params(c, "virtio_mmio"), "device=512@0xfeb00000:12 device=512@0xfeb00200:13");
        assert_eq!(module_params(c, "vsock"), "");
    }
}
