//! The gate's fast path: a frame of an established, allowed flow is judged
//! from a few header fields read straight from its bytes, without building
//! a `Packet`. It takes only frames the full path (gate.rs) would forward
//! unchanged (or cut to the packet), with exactly the same changes to the
//! flow table; for anything else it answers "not mine" before touching any
//! state, and the full path judges the frame.
//!
//! What it takes, from the guest: at most the MTU, a unicast source MAC,
//! IPv4 with a 20-byte header (no options) neither a fragment nor the first
//! of several, or IPv6 whose next header is TCP or UDP (no extension
//! headers); lengths that `packet::parse` accepts; TCP without FIN or RST,
//! or UDP not to the DHCP ports; not to one of the gate's DNS addresses; of
//! a flow already in the table, allowed and not closed both ways. From
//! passt: the same shape, not DHCP, of a known allowed flow. SYN needs no
//! exclusion: with its flow present the full path forwards it like any
//! other segment, and without it the fast path never gets that far.

use std::time::Instant;

use super::flowhash::FlowKey;
use super::gate::Gate;
use super::packet::{ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETH_HLEN, PROTO_TCP, PROTO_UDP, TCP_FIN, TCP_RST};
use crate::policy::Verdict;

/// The fields of a plain TCP or UDP packet that the fast path judges by.
#[derive(Debug, PartialEq, Eq)]
struct Plain {
    proto: u8,
    /// Source and destination, and whether they are IPv6 (else IPv4, in the
    /// low 32 bits).
    src: u128,
    dst: u128,
    v6: bool,
    sport: u16,
    dport: u16,
    /// TCP flags; 0 for UDP.
    flags: u8,
    /// Where the IP packet ends in the frame, as `packet::Ip::end`.
    end: usize,
}

impl Plain {
    /// The flow key as the guest's side sees it (`outbound`: source is the
    /// guest) or reversed (`inbound`: the frame comes from the world).
    fn key(&self, outbound: bool) -> FlowKey {
        let (src, sport, dst, dport) = if outbound {
            (self.src, self.sport, self.dst, self.dport)
        } else {
            (self.dst, self.dport, self.src, self.sport)
        };
        if self.v6 {
            FlowKey::v6(self.proto, src, sport, dst, dport)
        } else {
            FlowKey::v4(self.proto, src as u32, sport, dst as u32, dport)
        }
    }

    fn dst_addr(&self) -> std::net::IpAddr {
        if self.v6 {
            std::net::Ipv6Addr::from(self.dst).into()
        } else {
            std::net::Ipv4Addr::from(self.dst as u32).into()
        }
    }
}

fn be16(b: &[u8], o: usize) -> u16 {
    u16::from_be_bytes([b[o], b[o + 1]])
}

/// Reads `frame` if it is Ethernet + plain IPv4 (20-byte header, not a
/// fragment) or IPv6 (TCP or UDP next) + TCP or UDP whose lengths
/// `packet::parse` would accept; None for anything else.
#[inline(always)]
fn plain(frame: &[u8]) -> Option<Plain> {
    let eth: &[u8; ETH_HLEN] = frame.get(..ETH_HLEN)?.try_into().ok()?;
    let (proto, src, dst, v6, l4_off, end) = match be16(eth, 12) {
        ETHERTYPE_IPV4 => {
            let h: &[u8; 20] = frame.get(ETH_HLEN..ETH_HLEN + 20)?.try_into().ok()?;
            // Version 4, IHL 5; neither more-fragments (0x2000) nor an
            // offset (0x1fff): what parse_v4 calls not opaque.
            if h[0] != 0x45 || be16(h, 6) & 0x3fff != 0 {
                return None;
            }
            let total = usize::from(be16(h, 2));
            if total < 20 {
                return None;
            }
            let a = |o: usize| u128::from(u32::from_be_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]));
            (h[9], a(12), a(16), false, ETH_HLEN + 20, ETH_HLEN + total)
        }
        ETHERTYPE_IPV6 => {
            let h: &[u8; 40] = frame.get(ETH_HLEN..ETH_HLEN + 40)?.try_into().ok()?;
            if h[0] >> 4 != 6 {
                return None;
            }
            let a = |o: usize| u128::from_be_bytes(h[o..o + 16].try_into().expect("16 bytes"));
            (h[6], a(8), a(24), true, ETH_HLEN + 40, ETH_HLEN + 40 + usize::from(be16(h, 4)))
        }
        _ => return None,
    };
    // Also what says the frame holds the whole packet.
    let seg = frame.get(l4_off..end)?;
    let (sport, dport, flags) = match proto {
        PROTO_TCP => {
            let t: &[u8; 20] = seg.get(..20)?.try_into().ok()?;
            let doff = usize::from(t[12] >> 4) * 4;
            if doff < 20 || doff > seg.len() {
                return None;
            }
            (be16(t, 0), be16(t, 2), t[13])
        }
        PROTO_UDP => {
            let u: &[u8; 8] = seg.get(..8)?.try_into().ok()?;
            let ulen = usize::from(be16(u, 4));
            if ulen < 8 || ulen > seg.len() {
                return None;
            }
            (be16(u, 0), be16(u, 2), 0)
        }
        _ => return None,
    };
    Some(Plain { proto, src, dst, v6, sport, dport, flags, end })
}

impl Gate {
    /// Judges `frame` from the guest if it is an ordinary packet of an
    /// allowed flow: Some(where the packet ends), the flow's idle time and
    /// byte count updated as the full path would. None, with nothing
    /// changed, for the full path to judge.
    #[inline]
    pub(super) fn outbound_fast(&mut self, frame: &[u8], now: Instant) -> Option<usize> {
        if frame.len() > self.cfg.mtu + ETH_HLEN || frame.get(6)? & 1 != 0 {
            return None;
        }
        let p = plain(frame)?;
        if p.flags & (TCP_FIN | TCP_RST) != 0 || (p.proto == PROTO_UDP && matches!(p.dport, 67 | 547)) {
            return None;
        }
        if self.cfg.dns_addrs.contains(&p.dst_addr()) {
            return None;
        }
        let f = self.flows.get_mut(&p.key(true))?;
        if f.verdict != Verdict::Allow || (f.fin_out && f.fin_in) {
            return None;
        }
        f.last = now;
        f.bytes_out += p.end as u64;
        Some(p.end)
    }

    /// Passes `frame` from passt if it is an ordinary packet of a known
    /// allowed flow, updating the flow as the full path would: true. False,
    /// with nothing changed, for the full path to judge.
    #[inline]
    pub(super) fn inbound_fast(&mut self, frame: &[u8], now: Instant) -> bool {
        let Some(p) = plain(frame) else { return false };
        if p.flags & (TCP_FIN | TCP_RST) != 0
            || (p.proto == PROTO_UDP && matches!((p.sport, p.dport), (67, 68) | (547, 546)))
        {
            return false;
        }
        let Some(f) = self.flows.get_mut(&p.key(false)) else { return false };
        if f.verdict != Verdict::Allow || (f.fin_out && f.fin_in) {
            return false;
        }
        f.last = now;
        f.bytes_in += frame.len() as u64;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netfilter::gate::{Config, Outbound};
    use crate::netfilter::packet::{PROTO_ICMP, PROTO_ICMPV6, TCP_ACK, TCP_SYN};
    use crate::policy::{parse_rules, Env, Policy};
    use std::collections::HashMap;
    use std::net::IpAddr;
    use std::time::Duration;

    fn gate() -> Gate {
        let allow = ["203.0.113.0/25", "[2001:db8::/33]", "udp/198.51.100.0/24", "*.allowed.test"];
        let rules = parse_rules(&allow.map(String::from), &[]).unwrap();
        Gate::new(Config {
            policy: Policy::new(rules, false),
            env: Env {
                gateways: vec!["10.0.2.2".parse().unwrap(), "fd00:c0de::2".parse().unwrap()],
                host_addrs: vec!["192.0.2.2".parse().unwrap()],
            },
            dns_addrs: vec!["10.0.2.3".parse().unwrap(), "fd00:c0de::3".parse().unwrap()],
            gateway_v4: "10.0.2.2".parse().unwrap(),
            mtu: 1500,
            dns_upstream: None,
        })
    }

    /// An Ethernet + IP + TCP/UDP/ICMP frame between the guest and `world`,
    /// from the guest when `out`; for ICMP `wport` is the echo ident.
    fn frame(out: bool, world: IpAddr, proto: u8, gport: u16, wport: u16, flags: u8, payload: usize) -> Vec<u8> {
        let guest: IpAddr =
            if world.is_ipv4() { "10.0.2.15".parse().unwrap() } else { "fd00:c0de::15".parse().unwrap() };
        let (src, dst, sport, dport) = if out { (guest, world, gport, wport) } else { (world, guest, wport, gport) };
        let mut l4 = match proto {
            PROTO_TCP => {
                let mut t = vec![0u8; 20];
                t[12] = 5 << 4;
                t[13] = flags;
                t
            }
            PROTO_UDP => {
                let mut u = vec![0u8; 8];
                u[4..6].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
                u
            }
            _ => {
                let kind = match (out, world.is_ipv4()) {
                    (true, true) => 8,
                    (false, true) => 0,
                    (true, false) => 128,
                    (false, false) => 129,
                };
                vec![kind, 0, 0, 0, (wport >> 8) as u8, wport as u8, 0, 1]
            }
        };
        if proto == PROTO_TCP || proto == PROTO_UDP {
            l4[0..2].copy_from_slice(&sport.to_be_bytes());
            l4[2..4].copy_from_slice(&dport.to_be_bytes());
        }
        l4.extend((0..payload).map(|i| i as u8));
        let mut f =
            if out { vec![2, 2, 2, 2, 2, 2, 4, 4, 4, 4, 4, 4] } else { vec![4, 4, 4, 4, 4, 4, 2, 2, 2, 2, 2, 2] };
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                f.extend_from_slice(&[8, 0, 0x45, 0]);
                f.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
                f.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0]);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
                f.extend_from_slice(&(l4.len() as u16).to_be_bytes());
                f.extend_from_slice(&[if proto == PROTO_ICMP { PROTO_ICMPV6 } else { proto }, 64]);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
            }
            _ => unreachable!(),
        }
        f.extend_from_slice(&l4);
        f
    }

    /// What the flow table holds, all but the start time (the wall clock).
    fn flows(g: &Gate) -> HashMap<FlowKey, (Verdict, u64, u64, bool, bool, Instant)> {
        g.flows.iter().map(|(k, f)| (*k, (f.verdict, f.bytes_out, f.bytes_in, f.fin_out, f.fin_in, f.last))).collect()
    }

    fn closed(g: &Gate) -> Vec<String> {
        let mut v: Vec<String> = g
            .closed
            .iter()
            .map(|r| {
                format!(
                    "{} {} {} {:?} {} {} {:?}",
                    r.proto, r.dst, r.port, r.verdict, r.bytes_out, r.bytes_in, r.repeats
                )
            })
            .collect();
        v.sort();
        v
    }

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// `f` changed the way a hostile guest (or a broken peer) might: header
    /// bytes, lengths, options, fragments, flags, trailers, truncation.
    fn mutate(f: &mut Vec<u8>, r: &mut Rng) {
        let v4 = f.get(12..14) == Some(&[8, 0]);
        let ip = ETH_HLEN;
        let l4 = if v4 { ip + 20 } else { ip + 40 };
        match r.below(16) {
            0 => {
                let at = r.below(f.len().min(80));
                f[at] = r.next() as u8;
            }
            1 => {
                for _ in 0..4 {
                    let at = r.below(f.len());
                    f[at] = r.next() as u8;
                }
            }
            2 => f.truncate(r.below(f.len() + 1)),
            3 => f.extend((0..1 + r.below(40)).map(|_| r.next() as u8)),
            4 if v4 => {
                // Four bytes of options (NOPs), lengths kept right.
                f[ip] = 0x46;
                let total = u16::from_be_bytes([f[ip + 2], f[ip + 3]]) + 4;
                f[ip + 2..ip + 4].copy_from_slice(&total.to_be_bytes());
                f.splice(ip + 20..ip + 20, [1, 1, 1, 1]);
            }
            5 if v4 => f[ip + 6] |= 0x20,
            6 if v4 => f[ip + 7] = 1 + r.below(255) as u8,
            7 if v4 => f[ip + 6] |= 0x80,
            8 => {
                // The IP length one way or the other.
                let at = if v4 { ip + 2 } else { ip + 4 };
                let n = u16::from_be_bytes([f[at], f[at + 1]]);
                let n = n.wrapping_add(r.below(9) as u16).wrapping_sub(4);
                f[at..at + 2].copy_from_slice(&n.to_be_bytes());
            }
            9 if f.len() > l4 + 13 => f[l4 + 12] = (r.below(16) as u8) << 4,
            10 if f.len() > l4 + 13 => f[l4 + 13] = r.next() as u8,
            11 if f.len() > l4 + 5 => {
                let n = u16::from_be_bytes([f[l4 + 4], f[l4 + 5]]).wrapping_add(r.below(5) as u16).wrapping_sub(2);
                f[l4 + 4..l4 + 6].copy_from_slice(&n.to_be_bytes());
            }
            12 => f[6] |= 1,
            13 => f[12..14].copy_from_slice(&[0x81, 0]),
            14 if !v4 => f[ip + 6] = [0, 43, 44, 60, 59][r.below(5)],
            15 => f.resize(1514 + r.below(3), 0),
            _ => {}
        }
    }

    /// The differential test: the same frames, unchanged and mutated, both
    /// ways, through a gate judging with the full path only, one with the
    /// fast path first as the relay does, and `outbound_at`/`inbound_at`
    /// themselves. Verdicts, counters, the flow table and the records must
    /// agree at every step; the counts show both paths were exercised.
    #[test]
    fn test_fast_path_agrees_with_full_path() {
        let (mut full, mut fast, mut both) = (gate(), gate(), gate());
        let worlds: Vec<IpAddr> = [
            "203.0.113.5",
            "203.0.113.9",
            "203.0.113.200",
            "2001:db8::5",
            "2001:db8:8000::5",
            "198.51.100.7",
            "10.0.2.3",
            "fd00:c0de::3",
            "10.0.2.2",
            "224.0.0.1",
            "255.255.255.255",
            "ff02::1",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        let flag_sets = [TCP_SYN, TCP_ACK, TCP_ACK | 0x08, TCP_ACK | TCP_FIN, TCP_RST, TCP_SYN | TCP_ACK, 0, 0xff];
        let mut r = Rng(0x9e37_79b9_7f4a_7c15);
        let mut now = Instant::now();
        let (mut fast_out, mut fast_in, mut forwarded, mut cut, mut passed) = (0, 0, 0, 0, 0);
        for i in 0..200_000 {
            if r.below(50) == 0 {
                now += Duration::from_secs(r.below(40) as u64);
            }
            // Half the frames on a few flows, so that they are established.
            let common = r.below(2) == 0;
            let world = worlds[if common { r.below(6) } else { r.below(worlds.len()) }];
            let proto = [PROTO_TCP, PROTO_TCP, PROTO_TCP, PROTO_UDP, PROTO_UDP, PROTO_ICMP][r.below(6)];
            let wport = if common { 443 } else { [443, 80, 53, 67, 547, 68, 546, 9999][r.below(8)] };
            let gport = if common { 40000 } else { [40000, 40001, 68, 546, 53][r.below(5)] };
            // Mostly established traffic, so flows live long enough to matter.
            let flags = if r.below(3) == 0 { flag_sets[r.below(flag_sets.len())] } else { TCP_ACK };
            let payload = [0, 1, 64, 1000, 1440, 1460][r.below(6)];
            let out = r.below(3) != 0;
            let mut f = frame(out, world, proto, gport, wport, flags, payload);
            if r.below(2) == 0 {
                mutate(&mut f, &mut r);
            }
            if out {
                let want = full.outbound_full(&f, now);
                let got = match fast.outbound_fast(&f, now) {
                    Some(end) => {
                        fast_out += 1;
                        Gate::forward(&f, end)
                    }
                    None => fast.outbound_full(&f, now),
                };
                assert_eq!(got, want, "frame {i}: {f:02x?}");
                assert_eq!(both.outbound_at(&f, now), want, "frame {i}: {f:02x?}");
                forwarded += usize::from(want == Outbound::Forward);
                cut += usize::from(matches!(want, Outbound::ForwardFirst(_)));
                if let Outbound::Resolve(job) = want {
                    let answer = Some((0, vec![("203.0.113.7".parse().unwrap(), 60)]));
                    for g in [&mut full, &mut fast, &mut both] {
                        let _ = g.dns_answer(&job, answer.clone());
                    }
                }
            } else {
                let want = full.inbound_full(&f, now);
                let got = if fast.inbound_fast(&f, now) {
                    fast_in += 1;
                    true
                } else {
                    fast.inbound_full(&f, now)
                };
                assert_eq!(got, want, "frame {i}: {f:02x?}");
                assert_eq!(both.inbound_at(&f, now), want, "frame {i}: {f:02x?}");
                passed += usize::from(want);
            }
            assert_eq!(fast.counters, full.counters, "frame {i}");
            assert_eq!(both.counters, full.counters, "frame {i}");
            if i % 101 == 0 {
                assert_eq!(flows(&fast), flows(&full), "frame {i}");
                assert_eq!(flows(&both), flows(&full), "frame {i}");
            }
            if i % 1009 == 0 {
                for g in [&mut full, &mut fast, &mut both] {
                    g.expire(now);
                }
                assert_eq!(closed(&fast), closed(&full), "frame {i}");
                assert_eq!(closed(&both), closed(&full), "frame {i}");
            }
        }
        assert_eq!(flows(&fast), flows(&full));
        for g in [&mut full, &mut fast, &mut both] {
            g.close_all();
        }
        assert_eq!(closed(&fast), closed(&full));
        assert_eq!(closed(&both), closed(&full));
        // Positive controls: both paths taken, both ways, and plenty the
        // full path forwarded that the fast path left to it.
        assert!(fast_out > 5_000 && fast_in > 2_000, "fast path out {fast_out}, in {fast_in}");
        assert!(forwarded + cut > fast_out + 2_000, "forwarded {forwarded}, of which fast {fast_out}");
        assert!(cut > 200 && passed > fast_in + 500, "cut {cut}, passed {passed}");
        assert!(full.counters.flows_allowed > 100 && full.counters.flows_denied > 100, "{:?}", full.counters);
        assert!(full.counters.frames_dropped > 1_000, "{:?}", full.counters);
    }

    /// Every frame looks its flow up: the entry (key and flow) must stay
    /// small enough for few cache lines.
    #[test]
    fn test_flow_table_entry_is_small() {
        assert!(std::mem::size_of::<(FlowKey, crate::netfilter::gate::Flow)>() <= 96);
    }

    /// Frames of an allowed, established flow that the fast path must leave
    /// to the full path, beside the ones it takes.
    #[test]
    fn test_fast_path_takes_only_plain_packets_of_allowed_flows() {
        let mut g = gate();
        let now = Instant::now();
        let w4: IpAddr = "203.0.113.5".parse().unwrap();
        let w6: IpAddr = "2001:db8::5".parse().unwrap();
        for w in [w4, w6] {
            assert_eq!(g.outbound_at(&frame(true, w, PROTO_TCP, 40000, 443, TCP_SYN, 0), now), Outbound::Forward);
            assert!(g.inbound_at(&frame(false, w, PROTO_TCP, 40000, 443, TCP_SYN | TCP_ACK, 0), now));
            assert_eq!(g.outbound_at(&frame(true, w, PROTO_UDP, 40000, 443, 0, 10), now), Outbound::Forward);
        }
        let data = frame(true, w4, PROTO_TCP, 40000, 443, TCP_ACK, 64);
        assert_eq!(g.outbound_fast(&data, now), Some(data.len()), "positive control");
        let data6 = frame(true, w6, PROTO_TCP, 40000, 443, TCP_ACK, 64);
        assert_eq!(g.outbound_fast(&data6, now), Some(data6.len()), "positive control, IPv6");
        assert_eq!(g.outbound_fast(&frame(true, w4, PROTO_UDP, 40000, 443, 0, 10), now), Some(14 + 20 + 18));
        assert!(g.inbound_fast(&frame(false, w4, PROTO_TCP, 40000, 443, TCP_ACK, 0), now));
        assert!(g.inbound_fast(&frame(false, w6, PROTO_UDP, 40000, 443, 0, 3), now));
        let mut trailer = data.clone();
        trailer.extend_from_slice(&[0; 6]);
        assert_eq!(g.outbound_fast(&trailer, now), Some(data.len()), "cut to the packet");

        let with = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut f = data.clone();
            edit(&mut f);
            f
        };
        let declined = [
            ("FIN", frame(true, w4, PROTO_TCP, 40000, 443, TCP_ACK | TCP_FIN, 0)),
            ("RST", frame(true, w4, PROTO_TCP, 40000, 443, TCP_RST, 0)),
            ("no flow", frame(true, w4, PROTO_TCP, 40001, 443, TCP_ACK, 0)),
            ("denied", frame(true, "203.0.113.200".parse().unwrap(), PROTO_TCP, 40000, 443, TCP_ACK, 0)),
            ("DNS address", frame(true, "10.0.2.3".parse().unwrap(), PROTO_UDP, 40000, 53, 0, 20)),
            ("DHCP", frame(true, "255.255.255.255".parse().unwrap(), PROTO_UDP, 68, 67, 0, 300)),
            ("ICMP", frame(true, w4, PROTO_ICMP, 0, 7, 0, 8)),
            ("over the MTU", with(&|f| f.resize(1515, 0))),
            ("multicast source", with(&|f| f[6] |= 1)),
            ("VLAN", with(&|f| f[12..14].copy_from_slice(&[0x81, 0]))),
            ("options", with(&|f| f[14] = 0x46)),
            ("more fragments", with(&|f| f[14 + 6] |= 0x20)),
            ("fragment offset", with(&|f| f[14 + 7] = 8)),
            ("longer than the frame", with(&|f| f[14 + 3] += 1)),
            ("shorter than its headers", with(&|f| f[14 + 2..14 + 4].copy_from_slice(&[0, 39]))),
            ("truncated", with(&|f| f.truncate(14 + 20 + 19))),
            ("data offset past the end", {
                let mut f = frame(true, w4, PROTO_TCP, 40000, 443, TCP_ACK, 39);
                f[14 + 20 + 12] = 15 << 4;
                f
            }),
            ("data offset too small", with(&|f| f[14 + 20 + 12] = 4 << 4)),
            ("version 6 in an IPv4 frame", with(&|f| f[14] = 0x65)),
        ];
        for (why, f) in &declined {
            let before = flows(&g);
            assert_eq!(g.outbound_fast(f, now + Duration::from_secs(1)), None, "{why}");
            assert_eq!(flows(&g), before, "{why}: nothing changed");
        }
        let mut ext = data6.clone();
        ext[14 + 6] = 0; // hop-by-hop options
        assert_eq!(g.outbound_fast(&ext, now), None, "IPv6 extension header");
        let dhcp = frame(false, "10.0.2.2".parse().unwrap(), PROTO_UDP, 68, 67, 0, 300);
        assert!(!g.inbound_fast(&dhcp, now), "DHCP from passt: the full path's");
        assert!(!g.inbound_fast(&frame(false, w4, PROTO_TCP, 40000, 443, TCP_ACK | TCP_FIN, 0), now));
        assert!(!g.inbound_fast(&frame(false, w4, PROTO_TCP, 40009, 443, TCP_ACK, 0), now), "unknown flow");
    }
}
