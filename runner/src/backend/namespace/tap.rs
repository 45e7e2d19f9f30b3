//! The sandbox's network device: a tap created inside the sandbox's network
//! namespace by ns-init (still the host's root there, so the sandbox's own
//! root cannot reconfigure it), configured like the VM's NIC, its fd handed
//! to cordon for the gate. And loopback for `--net none`/`off`.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

/// Opens /dev/net/tun and creates tap `name` (IFF_TAP | IFF_NO_PI: one
/// Ethernet frame per read and write) in the current network namespace.
pub fn create(name: &str) -> io::Result<OwnedFd> {
    use nix::fcntl::OFlag;
    let fd = nix::fcntl::open("/dev/net/tun", OFlag::O_RDWR | OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())
        .map_err(io::Error::from)?;
    let mut ifr = ifreq(name)?;
    ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads one ifreq we own; fd is the open tun device.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &ifr) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= ifr.ifr_name.len() {
        return Err(io::Error::other("interface name too long"));
    }
    for (i, b) in name.bytes().enumerate() {
        ifr.ifr_name[i] = b as libc::c_char;
    }
    Ok(ifr)
}

/// Sets IFF_UP on `lo` in the current network namespace.
pub fn loopback_up() {
    let Ok(mut ifr) = ifreq("lo") else { return };
    // SAFETY: a plain datagram socket and SIOC[GS]IFFLAGS on our own ifreq.
    unsafe {
        let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if s < 0 {
            return;
        }
        if libc::ioctl(s, libc::SIOCGIFFLAGS, &mut ifr) == 0 {
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(s, libc::SIOCSIFFLAGS, &ifr);
        }
        libc::close(s);
    }
}

/// The `ip` commands that give `dev` the guest's addresses, routes and MTU
/// from a `cordon.net` spec (`ADDR4/LEN,GW4,DNS[,ADDR6/LEN,GW6][,mtu=N]`).
pub fn ip_commands(dev: &str, spec: &str) -> io::Result<Vec<Vec<String>>> {
    let n: cordon_protocol::boot::NetSpec = spec.parse().map_err(io::Error::other)?;
    let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut out = Vec::new();
    if let Some(m) = n.mtu {
        out.push(v(&["link", "set", dev, "mtu", &m.to_string()]));
    }
    out.push(v(&["link", "set", dev, "up"]));
    out.push(v(&["addr", "add", &n.addr4, "dev", dev]));
    out.push(v(&["route", "add", "default", "via", &n.gateway4]));
    if let Some((addr6, gw6)) = &n.v6 {
        out.push(v(&["-6", "addr", "add", addr6, "dev", dev]));
        out.push(v(&["-6", "route", "add", "default", "via", gw6]));
    }
    Ok(out)
}

/// Configures `dev` with busybox's `ip` (static, from the image), as the
/// agent does in the VM; loopback comes up too.
pub fn configure(busybox: &Path, dev: &str, spec: &str) -> io::Result<()> {
    loopback_up();
    // Fixed addresses, the gate the only way out: no DAD delay, no RAs.
    for (k, v) in [("accept_dad", "0"), ("accept_ra", "0"), ("autoconf", "0")] {
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{dev}/{k}"), v);
    }
    for args in ip_commands(dev, spec)? {
        let st = std::process::Command::new(busybox).arg("ip").args(&args).env_clear().status()?;
        if !st.success() {
            return Err(io::Error::other(format!("ip {} failed ({st})", args.join(" "))));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_ip_commands_table() {
        let cmds =
            ip_commands("tap0", "10.0.2.15/24,10.0.2.2,10.0.2.3,fd00:c0de::15/64,fd00:c0de::2,mtu=1500").unwrap();
        let flat: Vec<String> = cmds.iter().map(|c| c.join(" ")).collect();
        assert_eq!(
            flat,
            [
                "link set tap0 mtu 1500",
                "link set tap0 up",
                "addr add 10.0.2.15/24 dev tap0",
                "route add default via 10.0.2.2",
                "-6 addr add fd00:c0de::15/64 dev tap0",
                "-6 route add default via fd00:c0de::2",
            ]
        );
        assert!(ip_commands("tap0", "10.0.2.15/24").is_err());
        assert_eq!(ip_commands("tap0", "a,b,c").unwrap().len(), 3);
    }
}
