//! The egress gate: the one enforcement point of the network policy. It
//! sees every Ethernet frame the sandbox sends (from QEMU's `-netdev stream`
//! in the VM; from a tap device in the namespace backend) and passes to
//! passt only what the policy allows.

pub mod audit;
pub mod dns;
mod fastpath;
pub mod flowhash;
pub mod frames;
pub mod gate;
pub mod gated;
mod gatedns;
pub mod link;
pub mod names;
pub mod packet;
pub mod passt;
pub mod relay;
pub mod tap;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The guest's side of the gated network (fixed; passt NATs it).
pub const GUEST_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
pub const DNS_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);
pub const GUEST_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xc0de, 0, 0, 0, 0, 0, 0x15);
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xc0de, 0, 0, 0, 0, 0, 0x2);
/// The guest's MTU, set explicitly in the guest and given to passt: the gate
/// refuses larger frames, and whole frames up to this size fit in one
/// write to passt (see relay.rs).
pub const GUEST_MTU: usize = 1500;

/// The gated guest network as the agent's `cordon.net` spec: address, gateway,
/// DNS, IPv6 address and gateway, MTU. The VM passes it on the kernel
/// command line; the namespace backend configures its tap with it.
pub fn guest_net_spec() -> cordon_protocol::boot::NetSpec {
    cordon_protocol::boot::NetSpec {
        addr4: format!("{GUEST_V4}/24"),
        gateway4: GATEWAY_V4.to_string(),
        dns: DNS_V4.to_string(),
        v6: Some((format!("{GUEST_V6}/64"), GATEWAY_V6.to_string())),
        mtu: Some(GUEST_MTU as u32),
    }
}

/// Addresses that reach the host itself: every interface's own address and,
/// where it has one, its broadcast address. From getifaddrs.
pub fn host_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut ifa: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list we free below; we only read it, and
    // read ifa_ifu as the broadcast address only when IFF_BROADCAST says so.
    unsafe {
        if libc::getifaddrs(&mut ifa) != 0 {
            return out;
        }
        let mut cur = ifa;
        while !cur.is_null() {
            out.extend(sockaddr_ip((*cur).ifa_addr));
            if (*cur).ifa_flags & libc::IFF_BROADCAST as u32 != 0 {
                out.extend(sockaddr_ip((*cur).ifa_ifu).filter(|a| !a.is_unspecified()));
            }
            cur = (*cur).ifa_next;
        }
        libc::freeifaddrs(ifa);
    }
    out.sort();
    out.dedup();
    out
}

/// The IP address in a sockaddr, if it holds one.
///
/// # Safety
/// `a` is null or points to a valid sockaddr of the size its family implies.
unsafe fn sockaddr_ip(a: *const libc::sockaddr) -> Option<IpAddr> {
    if a.is_null() {
        return None;
    }
    // SAFETY: the caller vouches for `a`; the family says which struct it is.
    unsafe {
        match i32::from((*a).sa_family) {
            libc::AF_INET => {
                let sin = &*(a as *const libc::sockaddr_in);
                Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))))
            }
            libc::AF_INET6 => {
                let sin6 = &*(a as *const libc::sockaddr_in6);
                Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_host_addresses_include_loopback_and_broadcast() {
        let a = host_addresses();
        assert!(a.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)), "{a:?}");
        // Every IPv4 interface with a prefix shorter than /31 has a broadcast address.
        let out = std::process::Command::new("ip").args(["-4", "-o", "addr"]).output().unwrap();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(b) = line.split_whitespace().skip_while(|w| *w != "brd").nth(1) {
                assert!(a.contains(&b.parse().unwrap()), "broadcast {b} missing from {a:?}");
            }
        }
    }
}
