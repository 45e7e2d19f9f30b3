//! Ethernet/IPv4/IPv6/TCP/UDP/ICMP parsing and the few packets the gate
//! synthesizes (TCP RST, ICMP administratively prohibited, DNS replies).
//! Every parser takes untrusted bytes and returns None rather than panicking.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const ETH_HLEN: usize = 14;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
        seq: u32,
        ack: u32,
        payload_len: usize,
    },
    Udp {
        sport: u16,
        dport: u16,
        payload: std::ops::Range<usize>,
    },
    /// ICMP or ICMPv6 with its type and (for echo) identifier.
    Icmp {
        kind: u8,
        ident: u16,
    },
    Other(u8),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ip {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// A fragment, or an IPv4 packet with options, or an IPv6 packet with
    /// extension headers: the gate does not look inside those.
    pub opaque: bool,
    pub l4: L4,
    /// Offset of the IP header in the frame and of the L4 header.
    pub ip_off: usize,
    pub l4_off: usize,
    /// Where the IP packet ends: bytes after it (padding, or anything a
    /// hostile guest appends) are never forwarded.
    pub end: usize,
    /// IPv4 TTL or IPv6 hop limit.
    pub hop_limit: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Arp {
        op: u16,
        sender_ip: Ipv4Addr,
        target_ip: Ipv4Addr,
    },
    Ip(Ip),
    /// VLAN-tagged or of an EtherType the gate does not pass.
    Other(u16),
}

fn be16(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(o)?, *b.get(o + 1)?]))
}

pub fn parse(frame: &[u8]) -> Option<Packet> {
    let ethertype = be16(frame, 12)?;
    match ethertype {
        ETHERTYPE_ARP => {
            let a = frame.get(ETH_HLEN..ETH_HLEN + 28)?;
            // Ethernet + IPv4 only.
            if be16(a, 0)? != 1 || be16(a, 2)? != 0x0800 || a[4] != 6 || a[5] != 4 {
                return Some(Packet::Other(ethertype));
            }
            let ip = |o: usize| Ipv4Addr::new(a[o], a[o + 1], a[o + 2], a[o + 3]);
            Some(Packet::Arp { op: be16(a, 6)?, sender_ip: ip(14), target_ip: ip(24) })
        }
        ETHERTYPE_IPV4 => parse_v4(frame, ETH_HLEN).map(Packet::Ip),
        ETHERTYPE_IPV6 => parse_v6(frame, ETH_HLEN).map(Packet::Ip),
        other => Some(Packet::Other(other)),
    }
}

fn parse_v4(f: &[u8], off: usize) -> Option<Ip> {
    let h: &[u8; 20] = f.get(off..off + 20)?.try_into().ok()?;
    if h[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(h[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
    if ihl < 20 || total < ihl || f.len() < off + total {
        return None;
    }
    let frag = u16::from_be_bytes([h[6], h[7]]);
    let fragmented = frag & 0x2000 != 0 || frag & 0x1fff != 0;
    let src = IpAddr::V4(Ipv4Addr::new(h[12], h[13], h[14], h[15]));
    let dst = IpAddr::V4(Ipv4Addr::new(h[16], h[17], h[18], h[19]));
    let opaque = fragmented || ihl != 20;
    let l4_off = off + ihl;
    let end = off + total;
    let l4 = if opaque { L4::Other(h[9]) } else { parse_l4(f, h[9], l4_off, end, PROTO_ICMP)? };
    Some(Ip { src, dst, opaque, l4, ip_off: off, l4_off, end, hop_limit: h[8] })
}

fn parse_v6(f: &[u8], off: usize) -> Option<Ip> {
    let h = f.get(off..off + 40)?;
    if h[0] >> 4 != 6 {
        return None;
    }
    let plen = usize::from(be16(h, 4)?);
    let end = off + 40 + plen;
    if f.len() < end {
        return None;
    }
    let nh = h[6];
    let a = |o: usize| -> Ipv6Addr { <[u8; 16]>::try_from(&h[o..o + 16]).expect("16 bytes").into() };
    let (src, dst) = (IpAddr::V6(a(8)), IpAddr::V6(a(24)));
    let l4_off = off + 40;
    let opaque = !matches!(nh, PROTO_TCP | PROTO_UDP | PROTO_ICMPV6);
    let l4 = if opaque { L4::Other(nh) } else { parse_l4(f, nh, l4_off, end, PROTO_ICMPV6)? };
    Some(Ip { src, dst, opaque, l4, ip_off: off, l4_off, end, hop_limit: h[7] })
}

fn parse_l4(f: &[u8], proto: u8, o: usize, end: usize, icmp: u8) -> Option<L4> {
    let seg = f.get(o..end)?;
    Some(match proto {
        PROTO_TCP => {
            let t: &[u8; 20] = seg.get(..20)?.try_into().ok()?;
            let doff = usize::from(t[12] >> 4) * 4;
            if doff < 20 || doff > seg.len() {
                return None;
            }
            let be32 = |o: usize| u32::from_be_bytes([t[o], t[o + 1], t[o + 2], t[o + 3]]);
            L4::Tcp {
                sport: u16::from_be_bytes([t[0], t[1]]),
                dport: u16::from_be_bytes([t[2], t[3]]),
                seq: be32(4),
                ack: be32(8),
                flags: t[13],
                payload_len: seg.len() - doff,
            }
        }
        PROTO_UDP => {
            let ulen = usize::from(be16(seg, 4)?);
            if ulen < 8 || ulen > seg.len() {
                return None;
            }
            L4::Udp { sport: be16(seg, 0)?, dport: be16(seg, 2)?, payload: o + 8..o + ulen }
        }
        p if p == icmp => L4::Icmp { kind: *seg.first()?, ident: be16(seg, 4).unwrap_or(0) },
        p => L4::Other(p),
    })
}

fn sum16(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

fn pseudo(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u32 {
    let mut acc = 0;
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            acc = sum16(&s.octets(), acc);
            acc = sum16(&d.octets(), acc);
            acc += u32::from(proto) + len as u32;
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            acc = sum16(&s.octets(), acc);
            acc = sum16(&d.octets(), acc);
            acc += len as u32 + u32::from(proto);
        }
        _ => {}
    }
    acc
}

/// Builds Ethernet + IP headers around an L4 segment whose checksum field
/// sits at `csum_at` (or none for ICMPv4's own checksum at 2).
fn build(
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    mut l4: Vec<u8>,
    csum_at: usize,
) -> Vec<u8> {
    l4[csum_at] = 0;
    l4[csum_at + 1] = 0;
    let csum =
        if proto == PROTO_ICMP { fold(sum16(&l4, 0)) } else { fold(sum16(&l4, pseudo(src, dst, proto, l4.len()))) };
    let csum = if proto == PROTO_UDP && csum == 0 { 0xffff } else { csum };
    l4[csum_at..csum_at + 2].copy_from_slice(&csum.to_be_bytes());
    let mut f = Vec::with_capacity(ETH_HLEN + 40 + l4.len());
    f.extend_from_slice(&eth_dst);
    f.extend_from_slice(&eth_src);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
            let mut h = [0u8; 20];
            h[0] = 0x45;
            h[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
            h[6] = 0x40; // don't fragment
            h[8] = 64;
            h[9] = proto;
            h[12..16].copy_from_slice(&s.octets());
            h[16..20].copy_from_slice(&d.octets());
            let c = fold(sum16(&h, 0));
            h[10..12].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&h);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            f.extend_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
            let mut h = [0u8; 40];
            h[0] = 0x60;
            h[4..6].copy_from_slice(&(l4.len() as u16).to_be_bytes());
            h[6] = proto;
            h[7] = 64;
            h[8..24].copy_from_slice(&s.octets());
            h[24..40].copy_from_slice(&d.octets());
            f.extend_from_slice(&h);
        }
        _ => unreachable!("callers pass addresses of one family"),
    }
    f.extend_from_slice(&l4);
    f
}

fn macs(frame: &[u8]) -> ([u8; 6], [u8; 6]) {
    let d: [u8; 6] = frame[0..6].try_into().expect("parsed frames have an Ethernet header");
    let s: [u8; 6] = frame[6..12].try_into().expect("parsed frames have an Ethernet header");
    (d, s)
}

/// A RST answering the TCP segment `ip` in `frame` (RFC 793 reset generation).
pub fn tcp_rst(frame: &[u8], ip: &Ip) -> Option<Vec<u8>> {
    let L4::Tcp { sport, dport, flags, seq, ack, payload_len } = ip.l4 else { return None };
    if flags & TCP_RST != 0 {
        return None;
    }
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&dport.to_be_bytes());
    t[2..4].copy_from_slice(&sport.to_be_bytes());
    let seg_len = payload_len as u32 + u32::from(flags & TCP_SYN != 0) + u32::from(flags & TCP_FIN != 0);
    if flags & TCP_ACK != 0 {
        t[4..8].copy_from_slice(&ack.to_be_bytes());
        t[13] = TCP_RST;
    } else {
        t[8..12].copy_from_slice(&seq.wrapping_add(seg_len).to_be_bytes());
        t[13] = TCP_RST | TCP_ACK;
    }
    t[12] = 5 << 4;
    let (d, s) = macs(frame);
    Some(build(s, d, ip.dst, ip.src, PROTO_TCP, t, 16))
}

/// ICMP "administratively prohibited" for the packet `ip` in `frame`.
pub fn icmp_prohibited(frame: &[u8], ip: &Ip) -> Vec<u8> {
    let (d, s) = macs(frame);
    let orig = &frame[ip.ip_off..];
    match ip.src {
        IpAddr::V4(_) => {
            let quote = &orig[..orig.len().min(ip.l4_off - ip.ip_off + 8)];
            let mut m = vec![3, 13, 0, 0, 0, 0, 0, 0];
            m.extend_from_slice(quote);
            build(s, d, ip.dst, ip.src, PROTO_ICMP, m, 2)
        }
        IpAddr::V6(_) => {
            let quote = &orig[..orig.len().min(1280 - 48)];
            let mut m = vec![1, 1, 0, 0, 0, 0, 0, 0];
            m.extend_from_slice(quote);
            build(s, d, ip.dst, ip.src, PROTO_ICMPV6, m, 2)
        }
    }
}

/// A UDP reply to the datagram `ip` in `frame`, carrying `payload`.
pub fn udp_reply(frame: &[u8], ip: &Ip, payload: &[u8]) -> Option<Vec<u8>> {
    Some(UdpPeer::of(frame, ip)?.reply(payload))
}

/// Who sent a UDP datagram and to whom: all a reply needs, so that a
/// pending answer keeps these few bytes rather than the guest's frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpPeer {
    pub mac: [u8; 6],
    pub our_mac: [u8; 6],
    pub addr: IpAddr,
    pub port: u16,
    pub our_addr: IpAddr,
    pub our_port: u16,
}

impl UdpPeer {
    /// The sender of the datagram `ip` in `frame`.
    pub fn of(frame: &[u8], ip: &Ip) -> Option<UdpPeer> {
        let L4::Udp { sport, dport, .. } = ip.l4 else { return None };
        let (d, s) = macs(frame);
        Some(UdpPeer { mac: s, our_mac: d, addr: ip.src, port: sport, our_addr: ip.dst, our_port: dport })
    }

    /// A datagram back to the sender carrying `payload`.
    pub fn reply(&self, payload: &[u8]) -> Vec<u8> {
        let mut u = vec![0u8; 8];
        u[0..2].copy_from_slice(&self.our_port.to_be_bytes());
        u[2..4].copy_from_slice(&self.port.to_be_bytes());
        u[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        u.extend_from_slice(payload);
        build(self.mac, self.our_mac, self.our_addr, self.addr, PROTO_UDP, u, 6)
    }
}

/// Whether the L4 checksum of the packet `ip` in `frame` is right (TCP,
/// UDP, ICMPv6 with the pseudo-header; ICMPv4 without).
pub fn l4_checksum_ok(frame: &[u8], ip: &Ip) -> bool {
    let Some(seg) = frame.get(ip.l4_off..ip.end) else { return false };
    let proto = match ip.l4 {
        L4::Tcp { .. } => PROTO_TCP,
        L4::Udp { .. } => PROTO_UDP,
        L4::Icmp { .. } if ip.src.is_ipv6() => PROTO_ICMPV6,
        L4::Icmp { .. } => return fold(sum16(seg, 0)) == 0,
        L4::Other(_) => return false,
    };
    fold(sum16(seg, pseudo(ip.src, ip.dst, proto, seg.len()))) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn tcp_syn(src: &str, dst: &str, sport: u16, dport: u16) -> Vec<u8> {
        let mut t = vec![0u8; 20];
        t[0..2].copy_from_slice(&sport.to_be_bytes());
        t[2..4].copy_from_slice(&dport.to_be_bytes());
        t[4..8].copy_from_slice(&1000u32.to_be_bytes());
        t[12] = 5 << 4;
        t[13] = TCP_SYN;
        build([2; 6], [4; 6], src.parse().unwrap(), dst.parse().unwrap(), PROTO_TCP, t, 16)
    }

    fn verify_l4(f: &[u8], ip: &Ip, proto: u8) {
        let seg = &f[ip.l4_off..];
        let acc =
            if proto == PROTO_ICMP { sum16(seg, 0) } else { sum16(seg, pseudo(ip.src, ip.dst, proto, seg.len())) };
        assert_eq!(fold(acc), 0, "bad L4 checksum");
    }

    #[test]
    fn test_parse_syn_and_rst_round_trip() {
        for (s, d) in [("10.0.2.15", "203.0.113.5"), ("fd00::15", "2001:db8::5")] {
            let f = tcp_syn(s, d, 40000, 443);
            let Some(Packet::Ip(ip)) = parse(&f) else { panic!("not ip") };
            assert_eq!(ip.dst, d.parse::<IpAddr>().unwrap());
            assert!(matches!(ip.l4, L4::Tcp { sport: 40000, dport: 443, flags: TCP_SYN, .. }));
            verify_l4(&f, &ip, PROTO_TCP);
            let rst = tcp_rst(&f, &ip).unwrap();
            let Some(Packet::Ip(r)) = parse(&rst) else { panic!("rst not ip") };
            assert_eq!((r.src, r.dst), (ip.dst, ip.src));
            assert!(
                matches!(r.l4, L4::Tcp { sport: 443, dport: 40000, flags, ack: 1001, .. } if flags == TCP_RST | TCP_ACK)
            );
            verify_l4(&rst, &r, PROTO_TCP);
            assert_eq!(&rst[0..6], &[4; 6], "reply goes back to the sender's MAC");
        }
    }

    #[test]
    fn test_icmp_prohibited_v4_v6() {
        for (s, d, proto) in [("10.0.2.15", "203.0.113.5", PROTO_ICMP), ("fd00::15", "2001:db8::5", PROTO_ICMPV6)] {
            let f = tcp_syn(s, d, 1, 2);
            let Some(Packet::Ip(ip)) = parse(&f) else { panic!() };
            let r = icmp_prohibited(&f, &ip);
            let Some(Packet::Ip(rip)) = parse(&r) else { panic!() };
            assert!(matches!(rip.l4, L4::Icmp { kind: 3 | 1, .. }));
            verify_l4(&r, &rip, proto);
        }
    }

    #[test]
    fn test_parse_hostile_frames_never_panic() {
        let good = tcp_syn("10.0.2.15", "203.0.113.5", 1, 2);
        let mut x: u64 = 0x853c49e6748fea9b;
        for i in 0..20_000 {
            let mut f = good.clone();
            let n = (i % 7) + 1;
            for _ in 0..n {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let pos = (x as usize) % f.len();
                f[pos] = (x >> 32) as u8;
            }
            f.truncate((x as usize >> 8) % (f.len() + 1));
            if let Some(Packet::Ip(ip)) = parse(&f) {
                let _ = tcp_rst(&f, &ip);
                let _ = icmp_prohibited(&f, &ip);
                let _ = udp_reply(&f, &ip, b"x");
            }
        }
    }

    #[test]
    fn test_fragments_and_options_are_opaque() {
        let mut f = tcp_syn("10.0.2.15", "203.0.113.5", 1, 2);
        f[ETH_HLEN + 6] |= 0x20; // more fragments
        let Some(Packet::Ip(ip)) = parse(&f) else { panic!() };
        assert!(ip.opaque);
        let mut vlan = tcp_syn("10.0.2.15", "203.0.113.5", 1, 2);
        vlan[12..14].copy_from_slice(&0x8100u16.to_be_bytes());
        assert_eq!(parse(&vlan), Some(Packet::Other(0x8100)));
    }
}
