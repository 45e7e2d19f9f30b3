//! The egress gate: the one enforcement point of the network policy. It
//! sees every Ethernet frame the sandbox sends (from QEMU's `-netdev stream`
//! in the VM; from a tap device in the namespace backend) and passes to
//! passt only what the policy allows.

pub mod dns;
pub mod gate;
pub mod packet;
pub mod relay;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The guest's side of the gated network (fixed; passt NATs it).
pub const GUEST_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
pub const DNS_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);
pub const GUEST_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xc0de, 0, 0, 0, 0, 0, 0x15);
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xc0de, 0, 0, 0, 0, 0, 0x2);

/// The host's own addresses (every interface), from getifaddrs.
pub fn host_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut ifa: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list we free below; we only read it.
    unsafe {
        if libc::getifaddrs(&mut ifa) != 0 {
            return out;
        }
        let mut cur = ifa;
        while !cur.is_null() {
            let a = (*cur).ifa_addr;
            if !a.is_null() {
                match i32::from((*a).sa_family) {
                    libc::AF_INET => {
                        let sin = &*(a as *const libc::sockaddr_in);
                        out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(a as *const libc::sockaddr_in6);
                        out.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
                    }
                    _ => {}
                }
            }
            cur = (*cur).ifa_next;
        }
        libc::freeifaddrs(ifa);
    }
    out
}
