//! The link-layer chatter the guest has with passt itself, not with the
//! world: ARP for the gateway, NDP, DHCP and DHCPv6. passt answers these
//! on its own, so the gate lets them through without a flow, but only in
//! their well-formed shape and cut to their exact length: passt never sees
//! a malformed or padded variant of them from the guest. Pure.

use super::packet::{self, Ip, ETHERTYPE_ARP, ETH_HLEN, L4};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Ethernet + ARP for IPv4 over Ethernet.
pub const ARP_FRAME_LEN: usize = ETH_HLEN + 28;

const ICMP6_RS: u8 = 133;
const ICMP6_NS: u8 = 135;
const ICMP6_NA: u8 = 136;

fn is_multicast_mac(m: &[u8]) -> bool {
    m.first().is_some_and(|b| b & 1 != 0)
}

/// How many bytes of an ARP `frame` to forward: an Ethernet/IPv4 request
/// or reply whose sender hardware address is the frame's own source, asking
/// about (or answering) one of `targets`. None: drop it.
pub fn arp(frame: &[u8], targets: &[Ipv4Addr]) -> Option<usize> {
    let a = frame.get(ETH_HLEN..ARP_FRAME_LEN)?;
    if frame.get(12..14)? != ETHERTYPE_ARP.to_be_bytes() {
        return None;
    }
    // htype Ethernet, ptype IPv4, hlen 6, plen 4, op request (1) or reply (2).
    if a[0..6] != [0, 1, 0x08, 0x00, 6, 4] || !matches!(a[6..8], [0, 1] | [0, 2]) {
        return None;
    }
    let (sha, spa, tpa) =
        (&a[8..14], Ipv4Addr::new(a[14], a[15], a[16], a[17]), Ipv4Addr::new(a[24], a[25], a[26], a[27]));
    if sha != &frame[6..12] || is_multicast_mac(sha) || spa == tpa || !targets.contains(&tpa) {
        return None;
    }
    Some(ARP_FRAME_LEN)
}

/// How many bytes of an NDP packet to forward: a router solicitation,
/// neighbor solicitation or neighbor advertisement as RFC 4861 wants it
/// (hop limit 255, code 0, long enough, sound options, correct checksum, a
/// unicast target), sent on the link (link-scope multicast, link-local, or
/// one of `gateways`). None: drop it.
pub fn ndp(frame: &[u8], ip: &Ip, gateways: &[IpAddr]) -> Option<usize> {
    let (IpAddr::V6(dst), L4::Icmp { kind, .. }) = (ip.dst, &ip.l4) else { return None };
    let min = match *kind {
        ICMP6_RS => 8,
        ICMP6_NS | ICMP6_NA => 24,
        _ => return None,
    };
    let msg = frame.get(ip.l4_off..ip.end)?;
    if ip.opaque || ip.hop_limit != 255 || msg.len() < min || msg[1] != 0 {
        return None;
    }
    let on_link = dst.segments()[0] == 0xff02 || (dst.segments()[0] & 0xffc0) == 0xfe80 || gateways.contains(&ip.dst);
    if !on_link || !packet::l4_checksum_ok(frame, ip) {
        return None;
    }
    if min == 24 {
        let target = Ipv6Addr::from(<[u8; 16]>::try_from(&msg[8..24]).ok()?);
        if target.is_multicast() {
            return None;
        }
    }
    // Options: type, length in units of 8 bytes (never 0), filling the rest exactly.
    let mut o = min;
    while o < msg.len() {
        let units = usize::from(*msg.get(o + 1)?);
        if units == 0 || o + units * 8 > msg.len() {
            return None;
        }
        o += units * 8;
    }
    Some(ip.end)
}

/// How many bytes of a DHCP or DHCPv6 request to forward: a BOOTREQUEST
/// from port 68 to 67 (broadcast or the gateway) with the DHCP magic
/// cookie, or a DHCPv6 message from 546 to 547 at All_DHCP_Relay_Agents_and_Servers.
/// None: not a DHCP request the gate passes.
pub fn dhcp(frame: &[u8], ip: &Ip, gateway_v4: Ipv4Addr) -> Option<usize> {
    let L4::Udp { sport, dport, ref payload } = ip.l4 else { return None };
    if ip.opaque {
        return None;
    }
    let body = frame.get(payload.clone())?;
    match (ip.dst, sport, dport) {
        (IpAddr::V4(d), 68, 67) if d == Ipv4Addr::BROADCAST || d == gateway_v4 => {
            // op BOOTREQUEST, htype Ethernet, hlen 6; magic cookie at 236.
            let ok = body.len() >= 240
                && body[0..3] == [1, 1, 6]
                && body[236..240] == [0x63, 0x82, 0x53, 0x63]
                && packet::l4_checksum_ok(frame, ip);
            ok.then_some(ip.end)
        }
        (IpAddr::V6(d), 546, 547) if d == Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2) => {
            (body.len() >= 4 && packet::l4_checksum_ok(frame, ip)).then_some(ip.end)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netfilter::packet::{parse, Packet};

    const GW: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    fn arp_frame(op: u8, spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&MAC);
        f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, op]);
        f.extend_from_slice(&MAC);
        f.extend_from_slice(&spa);
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&tpa);
        f
    }

    #[test]
    fn test_arp_table() {
        let good = arp_frame(1, [10, 0, 2, 15], [10, 0, 2, 2]);
        assert_eq!(arp(&good, &[GW]), Some(42));
        let mut padded = good.clone();
        padded.extend_from_slice(&[0xaa; 18]);
        assert_eq!(arp(&padded, &[GW]), Some(42), "padding is cut, not forwarded");
        assert_eq!(arp(&arp_frame(2, [10, 0, 2, 15], [10, 0, 2, 2]), &[GW]), Some(42), "a reply");
        assert_eq!(arp(&good[..41], &[GW]), None, "short");
        assert_eq!(arp(&arp_frame(3, [10, 0, 2, 15], [10, 0, 2, 2]), &[GW]), None, "RARP op");
        assert_eq!(arp(&arp_frame(1, [10, 0, 2, 15], [10, 0, 2, 9]), &[GW]), None, "not the gateway");
        assert_eq!(arp(&arp_frame(1, [10, 0, 2, 2], [10, 0, 2, 2]), &[GW]), None, "announcement");
        let mut spoof = good.clone();
        spoof[22] ^= 2;
        assert_eq!(arp(&spoof, &[GW]), None, "sender MAC differs from the frame's");
        let mut plen = good.clone();
        plen[19] = 16;
        assert_eq!(arp(&plen, &[GW]), None, "not IPv4 over Ethernet");
    }

    /// An Ethernet+IPv6+ICMPv6 frame with a correct checksum.
    fn icmp6(dst: &str, hop: u8, msg: &[u8]) -> Vec<u8> {
        let (s, d): (Ipv6Addr, Ipv6Addr) = ("fe80::15".parse().unwrap(), dst.parse().unwrap());
        let mut f = vec![0x33, 0x33, 0, 0, 0, 2];
        f.extend_from_slice(&MAC);
        f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
        f.extend_from_slice(&(msg.len() as u16).to_be_bytes());
        f.extend_from_slice(&[58, hop]);
        f.extend_from_slice(&s.octets());
        f.extend_from_slice(&d.octets());
        let mut m = msg.to_vec();
        let mut acc: u32 = 0;
        for c in s.octets().chunks(2).chain(d.octets().chunks(2)).chain(m.chunks(2)) {
            acc += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
        acc += m.len() as u32 + 58;
        while acc >> 16 != 0 {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        m[2..4].copy_from_slice(&(!(acc as u16)).to_be_bytes());
        f.extend_from_slice(&m);
        f
    }

    fn judge(f: &[u8]) -> Option<usize> {
        let Some(Packet::Ip(ip)) = parse(f) else { return None };
        ndp(f, &ip, &["fd00:c0de::2".parse().unwrap()])
    }

    #[test]
    fn test_ndp_table() {
        let rs = [133, 0, 0, 0, 0, 0, 0, 0];
        let mut ns = vec![135, 0, 0, 0, 0, 0, 0, 0];
        ns.extend_from_slice(&"fd00:c0de::2".parse::<Ipv6Addr>().unwrap().octets());
        let mut ns_opt = ns.clone();
        ns_opt.extend_from_slice(&[1, 1, 0x52, 0x54, 0, 0x12, 0x34, 0x56]); // source link-layer address
        let good = icmp6("ff02::2", 255, &rs);
        assert_eq!(judge(&good), Some(good.len()));
        let f = icmp6("ff02::1:ff00:2", 255, &ns_opt);
        assert_eq!(judge(&f), Some(f.len()));
        let f = icmp6("fd00:c0de::2", 255, &ns);
        assert_eq!(judge(&f), Some(f.len()), "unicast NS to the gateway");
        let mut padded = good.clone();
        padded.extend_from_slice(&[0; 10]);
        assert_eq!(judge(&padded), Some(good.len()), "trailing bytes are cut");
        assert_eq!(judge(&icmp6("ff02::2", 64, &rs)), None, "hop limit must be 255");
        assert_eq!(judge(&icmp6("ff02::2", 255, &[133, 1, 0, 0, 0, 0, 0, 0])), None, "code must be 0");
        assert_eq!(judge(&icmp6("ff02::2", 255, &[134, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])), None, "RA");
        assert_eq!(judge(&icmp6("ff02::2", 255, &[137; 40])), None, "redirect");
        assert_eq!(judge(&icmp6("ff02::1:ff00:2", 255, &ns[..20])), None, "NS too short");
        let mut bad_opt = ns.clone();
        bad_opt.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(judge(&icmp6("ff02::1:ff00:2", 255, &bad_opt)), None, "option of length 0");
        let mut mc_target = ns.clone();
        mc_target[8] = 0xff;
        assert_eq!(judge(&icmp6("ff02::1:ff00:2", 255, &mc_target)), None, "multicast target");
        assert_eq!(judge(&icmp6("2001:db8::1", 255, &ns)), None, "off link");
        let mut bad_sum = good.clone();
        let n = bad_sum.len();
        bad_sum[n - 1] ^= 1;
        assert_eq!(judge(&bad_sum), None, "bad checksum");
    }

    fn udp(src: &str, dst: &str, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        packet::UdpPeer {
            mac: [0xff; 6],
            our_mac: MAC,
            addr: dst.parse().unwrap(),
            port: dport,
            our_addr: src.parse().unwrap(),
            our_port: sport,
        }
        .reply(payload)
    }

    #[test]
    fn test_dhcp_table() {
        let judge = |f: &[u8]| {
            let Some(Packet::Ip(ip)) = parse(f) else { return None };
            dhcp(f, &ip, GW)
        };
        let mut discover = vec![0u8; 244];
        discover[0..3].copy_from_slice(&[1, 1, 6]);
        discover[236..240].copy_from_slice(&[0x63, 0x82, 0x53, 0x63]);
        discover[240..244].copy_from_slice(&[53, 1, 1, 255]);
        let f = udp("0.0.0.0", "255.255.255.255", 68, 67, &discover);
        assert_eq!(judge(&f), Some(f.len()));
        let f = udp("10.0.2.15", "10.0.2.2", 68, 67, &discover);
        assert_eq!(judge(&f), Some(f.len()), "renewal to the gateway");
        assert_eq!(judge(&udp("0.0.0.0", "255.255.255.255", 68, 68, &discover)), None, "wrong port");
        assert_eq!(judge(&udp("0.0.0.0", "203.0.113.5", 68, 67, &discover)), None, "elsewhere");
        assert_eq!(judge(&udp("0.0.0.0", "255.255.255.255", 68, 67, &discover[..239])), None, "short");
        let mut reply = discover.clone();
        reply[0] = 2;
        assert_eq!(judge(&udp("0.0.0.0", "255.255.255.255", 68, 67, &reply)), None, "BOOTREPLY from the guest");
        let f = udp("fe80::15", "ff02::1:2", 546, 547, &[1, 0, 0, 1, 0, 1, 0, 0]);
        assert_eq!(judge(&f), Some(f.len()));
        assert_eq!(judge(&udp("fe80::15", "ff02::1", 546, 547, &[1, 0, 0, 1])), None);
    }
}
