//! The guest's static network from a `cordon.net` spec, set with ioctls on
//! datagram sockets: MTU, link up, IPv4 address and default route, and the
//! IPv6 address and default route when the spec has them. The same settings
//! busybox `ip` made before, without spawning it six times before the agent
//! listens (each spawn costs tens of milliseconds under TCG).

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use cordon_protocol::boot::NetSpec;

/// The addresses of a spec, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addrs {
    pub addr4: Ipv4Addr,
    pub prefix4: u8,
    pub gateway4: Ipv4Addr,
    /// Address, prefix length and gateway.
    pub v6: Option<(Ipv6Addr, u8, Ipv6Addr)>,
    pub mtu: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum NetconfError {
    #[error("bad address {0:?} in the network spec")]
    BadAddress(String),
    #[error("interface name {0:?} is too long")]
    BadName(String),
    #[error("{op} on {dev} failed")]
    Ioctl {
        op: &'static str,
        dev: String,
        #[source]
        source: io::Error,
    },
}

/// `ADDR/LEN` with a prefix no longer than `max`.
fn parse_cidr<A: std::str::FromStr>(s: &str, max: u8) -> Result<(A, u8), NetconfError> {
    let bad = || NetconfError::BadAddress(s.to_string());
    let (a, len) = s.split_once('/').ok_or_else(bad)?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    if len > max {
        return Err(bad());
    }
    Ok((a.parse().map_err(|_| bad())?, len))
}

impl Addrs {
    pub fn from_spec(spec: &NetSpec) -> Result<Addrs, NetconfError> {
        let (addr4, prefix4) = parse_cidr::<Ipv4Addr>(&spec.addr4, 32)?;
        let gateway4 = spec.gateway4.parse().map_err(|_| NetconfError::BadAddress(spec.gateway4.clone()))?;
        let v6 = match &spec.v6 {
            Some((a, g)) => {
                let (addr, len) = parse_cidr::<Ipv6Addr>(a, 128)?;
                Some((addr, len, g.parse().map_err(|_| NetconfError::BadAddress(g.clone()))?))
            }
            None => None,
        };
        Ok(Addrs { addr4, prefix4, gateway4, v6, mtu: spec.mtu })
    }
}

/// The IPv4 netmask of a prefix length (at most 32).
fn netmask4(prefix: u8) -> Ipv4Addr {
    Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0))
}

fn socket(family: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; a non-negative result is a fresh fd we own.
    let fd = unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: see above.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ifreq(dev: &str) -> Result<libc::ifreq, NetconfError> {
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    if dev.len() >= ifr.ifr_name.len() || dev.contains('\0') {
        return Err(NetconfError::BadName(dev.to_string()));
    }
    for (i, b) in dev.bytes().enumerate() {
        ifr.ifr_name[i] = b as libc::c_char;
    }
    Ok(ifr)
}

fn sockaddr4(a: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from(a).to_be() },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr are both 16 bytes of plain data; the
    // kernel reads a sockaddr of family AF_INET as a sockaddr_in.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// Linux's `struct rtentry` (net/route.h), which the libc crate exposes on musl only.
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

/// Linux's `struct in6_rtmsg` (linux/ipv6_route.h); the libc crate's has private fields.
#[repr(C)]
struct In6RtMsg {
    rtmsg_dst: libc::in6_addr,
    rtmsg_src: libc::in6_addr,
    rtmsg_gateway: libc::in6_addr,
    rtmsg_type: u32,
    rtmsg_dst_len: u16,
    rtmsg_src_len: u16,
    rtmsg_metric: u32,
    rtmsg_info: libc::c_ulong,
    rtmsg_flags: u32,
    rtmsg_ifindex: libc::c_int,
}

const RTF_UP: u16 = 0x0001;
const RTF_GATEWAY: u16 = 0x0002;

/// One ioctl whose argument is `arg`, named `op` in the error.
fn ioctl<T>(fd: &OwnedFd, req: libc::c_ulong, arg: &mut T, op: &'static str, dev: &str) -> Result<(), NetconfError> {
    // SAFETY: every caller passes the request's own argument type, owned here.
    if unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg as *mut T) } < 0 {
        return Err(NetconfError::Ioctl { op, dev: dev.to_string(), source: io::Error::last_os_error() });
    }
    Ok(())
}

/// Configures `dev`: MTU, up, addresses, default routes. Stops at the first
/// failure (what came before stays set).
pub fn configure(dev: &str, a: &Addrs) -> Result<(), NetconfError> {
    let sock_err = |source| NetconfError::Ioctl { op: "socket", dev: dev.to_string(), source };
    let s4 = socket(libc::AF_INET).map_err(sock_err)?;
    if let Some(mtu) = a.mtu {
        let mut ifr = ifreq(dev)?;
        ifr.ifr_ifru.ifru_mtu = mtu as libc::c_int;
        ioctl(&s4, libc::SIOCSIFMTU, &mut ifr, "setting the MTU", dev)?;
    }
    let mut ifr = ifreq(dev)?;
    ioctl(&s4, libc::SIOCGIFFLAGS, &mut ifr, "reading the flags", dev)?;
    // SAFETY: SIOCGIFFLAGS filled ifru_flags.
    unsafe { ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    ioctl(&s4, libc::SIOCSIFFLAGS, &mut ifr, "bringing it up", dev)?;

    let mut ifr = ifreq(dev)?;
    ifr.ifr_ifru.ifru_addr = sockaddr4(a.addr4);
    ioctl(&s4, libc::SIOCSIFADDR, &mut ifr, "setting the IPv4 address", dev)?;
    let mut ifr = ifreq(dev)?;
    ifr.ifr_ifru.ifru_netmask = sockaddr4(netmask4(a.prefix4));
    ioctl(&s4, libc::SIOCSIFNETMASK, &mut ifr, "setting the IPv4 netmask", dev)?;
    let mut name = ifreq(dev)?.ifr_name;
    let mut rt = RtEntry {
        rt_pad1: 0,
        rt_dst: sockaddr4(Ipv4Addr::UNSPECIFIED),
        rt_gateway: sockaddr4(a.gateway4),
        rt_genmask: sockaddr4(Ipv4Addr::UNSPECIFIED),
        rt_flags: RTF_UP | RTF_GATEWAY,
        rt_pad2: 0,
        rt_pad3: 0,
        rt_pad4: std::ptr::null_mut(),
        rt_metric: 0,
        rt_dev: name.as_mut_ptr(),
        rt_mtu: 0,
        rt_window: 0,
        rt_irtt: 0,
    };
    ioctl(&s4, libc::SIOCADDRT, &mut rt, "adding the IPv4 default route", dev)?;

    if let Some((addr, prefix, gateway)) = a.v6 {
        let s6 = socket(libc::AF_INET6).map_err(sock_err)?;
        let mut ifr = ifreq(dev)?;
        ioctl(&s6, libc::SIOCGIFINDEX, &mut ifr, "reading the interface index", dev)?;
        // SAFETY: SIOCGIFINDEX filled ifru_ifindex.
        let index = unsafe { ifr.ifr_ifru.ifru_ifindex };
        let mut req = libc::in6_ifreq { ifr6_addr: in6(addr), ifr6_prefixlen: u32::from(prefix), ifr6_ifindex: index };
        ioctl(&s6, libc::SIOCSIFADDR, &mut req, "setting the IPv6 address", dev)?;
        let mut rt = In6RtMsg {
            rtmsg_dst: in6(Ipv6Addr::UNSPECIFIED),
            rtmsg_src: in6(Ipv6Addr::UNSPECIFIED),
            rtmsg_gateway: in6(gateway),
            rtmsg_type: 0,
            rtmsg_dst_len: 0,
            rtmsg_src_len: 0,
            // What `ip -6 route add` uses when no metric is given.
            rtmsg_metric: 1024,
            rtmsg_info: 0,
            rtmsg_flags: u32::from(RTF_UP | RTF_GATEWAY),
            rtmsg_ifindex: index,
        };
        ioctl(&s6, libc::SIOCADDRT, &mut rt, "adding the IPv6 default route", dev)?;
    }
    Ok(())
}

fn in6(a: Ipv6Addr) -> libc::in6_addr {
    libc::in6_addr { s6_addr: a.octets() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> NetSpec {
        s.parse().unwrap()
    }

    #[test]
    fn test_addrs_from_spec_table() {
        let a =
            Addrs::from_spec(&spec("10.0.2.15/24,10.0.2.2,10.0.2.3,fd00:c0de::15/64,fd00:c0de::2,mtu=1500")).unwrap();
        assert_eq!(a.addr4, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!((a.prefix4, a.gateway4), (24, Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(a.v6, Some(("fd00:c0de::15".parse().unwrap(), 64, "fd00:c0de::2".parse().unwrap())));
        assert_eq!(a.mtu, Some(1500));
        let plain = Addrs::from_spec(&spec("10.0.2.15/24,10.0.2.2,10.0.2.3")).unwrap();
        assert_eq!((plain.v6, plain.mtu), (None, None));
        for bad in [
            "10.0.2.15,10.0.2.2,10.0.2.3",
            "10.0.2.15/33,10.0.2.2,10.0.2.3",
            "10.0.2.999/24,10.0.2.2,10.0.2.3",
            "10.0.2.15/24,gw,10.0.2.3",
            "10.0.2.15/24,10.0.2.2,10.0.2.3,fd00::15/129,fd00::2",
            "10.0.2.15/24,10.0.2.2,10.0.2.3,fd00::15/64,10.0.2.2",
        ] {
            assert!(Addrs::from_spec(&spec(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn test_netmask4_table() {
        for (len, mask) in
            [(0, "0.0.0.0"), (8, "255.0.0.0"), (24, "255.255.255.0"), (31, "255.255.255.254"), (32, "255.255.255.255")]
        {
            assert_eq!(netmask4(len), mask.parse::<Ipv4Addr>().unwrap(), "/{len}");
        }
    }

    #[test]
    fn test_ifreq_refuses_long_names() {
        assert!(ifreq("eth0").is_ok());
        assert!(matches!(ifreq("a-name-far-too-long-for-ifreq"), Err(NetconfError::BadName(_))));
    }
}
