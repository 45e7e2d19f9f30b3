//! The egress gate's state: every frame the sandbox sends is judged here.
//! Flows are decided on their first packet (TCP SYN, first UDP datagram,
//! ICMP echo) and remembered in a bounded table; replies from passt pass
//! only for known, allowed flows. Denied TCP gets a RST, the rest ICMP
//! "administratively prohibited" (nothing for multicast and broadcast).
//! DNS to the gate's address is answered by the gate (gatedns.rs), with a
//! bounded number of upstream questions in flight. Frames above the guest
//! MTU are refused; what is forwarded is cut to the judged packet. Ordinary
//! packets of established flows take the fast path (fastpath.rs), which
//! reaches the same verdicts with fewer steps. Independent of QEMU: the
//! namespace backend feeds it the same way.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use super::audit::{now_secs, Limiter};
use super::names::{Cache, Names};
use super::packet::{self, Ip, Packet, ETH_HLEN, L4, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};
use crate::policy::rule::Proto;
use crate::policy::{Decision, Dest, Env, Policy, Verdict};

pub use super::audit::FlowRecord;
use super::flowhash::FlowHashKey;
pub use super::flowhash::FlowKey;
pub use super::gatedns::DnsJob;

/// Flows beyond this are refused until old ones expire.
pub const MAX_FLOWS: usize = 16_384;
/// Upstream DNS questions in flight at once; more are dropped (the guest's
/// resolver asks again), so a flood of names cannot become a flood upstream.
pub const MAX_DNS_IN_FLIGHT: usize = 32;

/// A flow in the table: what every frame of it updates, inline; what only
/// its audit record needs, boxed, so that an entry of the table (key and
/// flow) stays small and lookups touch few cache lines.
#[derive(Debug, Clone)]
pub struct Flow {
    pub last: Instant,
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub verdict: Verdict,
    pub(super) fin_out: bool,
    pub(super) fin_in: bool,
    pub about: Box<FlowAbout>,
}

#[derive(Debug, Clone)]
pub struct FlowAbout {
    /// The rule (or reason) that decided the flow.
    pub by: String,
    pub name: Option<String>,
    pub started: SystemTime,
}

/// What to do with a frame from the guest.
#[derive(Debug, PartialEq, Eq)]
pub enum Outbound {
    Forward,
    /// Forward only the first this many bytes (the packet without what
    /// trails it).
    ForwardFirst(usize),
    Drop,
    /// Send these frames back to the guest instead.
    Reply(Vec<Vec<u8>>),
    /// A DNS query for an allowed name: resolve it and answer. Boxed: the
    /// relay keeps a batch of these values, and the rest are small.
    Resolve(Box<DnsJob>),
}

pub struct Config {
    pub policy: Policy,
    pub env: Env,
    /// Addresses the gate answers DNS on.
    pub dns_addrs: Vec<IpAddr>,
    pub gateway_v4: Ipv4Addr,
    /// The guest's MTU: larger frames from the guest are refused.
    pub mtu: usize,
    /// Where allowed names are resolved.
    pub dns_upstream: Option<SocketAddr>,
}

/// Counters for the run's summary.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    pub flows_allowed: u64,
    pub flows_denied: u64,
    /// Frames above the MTU, malformed, or of a kind never forwarded.
    pub frames_dropped: u64,
    /// DNS questions dropped because MAX_DNS_IN_FLIGHT were pending.
    pub dns_dropped: u64,
    /// DNS questions answered from the cache.
    pub dns_cached: u64,
    /// Audit records not written because too many kinds were being logged.
    pub records_unlogged: u64,
}

pub struct Gate {
    pub cfg: Config,
    pub(super) flows: HashMap<FlowKey, Flow, FlowHashKey>,
    /// Addresses learned from allowed DNS answers, for domain rules.
    pub(super) names: Names,
    pub(super) cache: Cache,
    pub(super) dns_in_flight: usize,
    limiter: Limiter,
    pub closed: Vec<FlowRecord>,
    pub counters: Counters,
}

fn proto_name(p: u8) -> &'static str {
    match p {
        packet::PROTO_TCP => "tcp",
        packet::PROTO_UDP => "udp",
        _ => "icmp",
    }
}

fn idle_limit(proto: u8) -> Duration {
    match proto {
        packet::PROTO_TCP => Duration::from_secs(15 * 60),
        packet::PROTO_UDP => Duration::from_secs(60),
        _ => Duration::from_secs(30),
    }
}

/// Multicast or broadcast: such packets never get an ICMP error (RFC 1122
/// 3.2.2, RFC 4443 2.4), and their address is no source to send one from.
fn to_many(ip: IpAddr) -> bool {
    match crate::policy::effective(ip) {
        IpAddr::V4(a) => a.is_multicast() || a.is_broadcast(),
        IpAddr::V6(a) => a.is_multicast(),
    }
}

impl Gate {
    pub fn new(cfg: Config) -> Gate {
        Gate {
            cfg,
            flows: HashMap::with_hasher(FlowHashKey::random()),
            names: Names::default(),
            cache: Cache::default(),
            dns_in_flight: 0,
            limiter: Limiter::default(),
            closed: Vec::new(),
            counters: Counters::default(),
        }
    }

    /// Replaces the host's own addresses (they change while a run goes on).
    pub fn set_host_addrs(&mut self, addrs: Vec<IpAddr>) {
        self.cfg.env.host_addrs = addrs;
    }

    fn record(&mut self, key: &FlowKey, f: &Flow) {
        let rec = FlowRecord {
            time: now_secs(f.about.started),
            proto: proto_name(key.proto()),
            dst: key.dst(),
            port: key.dport(),
            dns_name: f.about.name.clone(),
            verdict: f.verdict,
            rule: f.about.by.clone(),
            bytes_out: f.bytes_out,
            bytes_in: f.bytes_in,
            repeats: None,
        };
        match f.verdict {
            // One line per allowed flow, when it ends.
            Verdict::Allow => self.closed.push(rec),
            Verdict::Deny => self.log_limited(rec),
        }
    }

    /// Refusals and DNS questions: at most one line per kind per second.
    pub(super) fn log_limited(&mut self, rec: FlowRecord) {
        if let Some(r) = self.limiter.admit(rec, Instant::now()) {
            self.closed.push(r);
        }
        self.counters.records_unlogged = self.limiter.unlogged;
    }

    pub(super) fn drop_frame(&mut self) -> Outbound {
        self.counters.frames_dropped += 1;
        Outbound::Drop
    }

    /// Forwards `ip`'s packet without whatever trails it in `frame`.
    pub(super) fn forward(frame: &[u8], end: usize) -> Outbound {
        if end < frame.len() {
            Outbound::ForwardFirst(end)
        } else {
            Outbound::Forward
        }
    }

    /// Judges a frame from the guest.
    pub fn outbound(&mut self, frame: &[u8]) -> Outbound {
        self.outbound_at(frame, Instant::now())
    }

    /// As `outbound`, with the time given: the relay reads the clock once
    /// per batch of frames it judges, not once per frame. `now` may lag the
    /// clock by the time a batch takes to judge (microseconds), which is
    /// how much earlier than its idle limit a flow may then expire.
    pub fn outbound_at(&mut self, frame: &[u8], now: Instant) -> Outbound {
        match self.outbound_fast(frame, now) {
            Some(end) => Self::forward(frame, end),
            None => self.outbound_full(frame, now),
        }
    }

    /// The whole order of judgement, for every frame the fast path
    /// (fastpath.rs) leaves alone.
    pub(super) fn outbound_full(&mut self, frame: &[u8], now: Instant) -> Outbound {
        if frame.len() > self.cfg.mtu + ETH_HLEN || frame.get(6).is_none_or(|b| b & 1 != 0) {
            // Above the MTU set in the guest, or from a multicast source MAC.
            return self.drop_frame();
        }
        let Some(pkt) = packet::parse(frame) else { return self.drop_frame() };
        let ip = match pkt {
            Packet::Arp { .. } => {
                let gw = self.cfg.gateway_v4;
                let targets: Vec<Ipv4Addr> = std::iter::once(gw)
                    .chain(self.cfg.dns_addrs.iter().filter_map(|a| match a {
                        IpAddr::V4(v) => Some(*v),
                        IpAddr::V6(_) => None,
                    }))
                    .collect();
                return match super::link::arp(frame, &targets) {
                    Some(n) => Self::forward(frame, n),
                    None => self.drop_frame(),
                };
            }
            Packet::Other(_) => return self.drop_frame(),
            Packet::Ip(ip) => ip,
        };
        // NDP with passt (router/neighbor solicitation, neighbor advertisement).
        if let (true, L4::Icmp { kind: 133..=137, .. }) = (ip.src.is_ipv6(), &ip.l4) {
            return match super::link::ndp(frame, &ip, &self.cfg.env.gateways) {
                Some(n) => Self::forward(frame, n),
                None => self.drop_frame(),
            };
        }
        if ip.opaque {
            // Fragments, IP options, IPv6 extension headers: no ports to judge.
            return self.drop_frame();
        }
        // DHCP and DHCPv6 with passt, which answers them itself and never
        // sends them on (passt takes every datagram to port 67 or 547).
        if let L4::Udp { dport: 67 | 547, .. } = ip.l4 {
            return match super::link::dhcp(frame, &ip, self.cfg.gateway_v4) {
                Some(n) => Self::forward(frame, n),
                None => self.drop_frame(),
            };
        }
        if self.cfg.dns_addrs.contains(&ip.dst) {
            if let L4::Udp { dport: 53, ref payload, .. } = ip.l4 {
                return self.dns(frame, &ip, payload.clone());
            }
            // Anything else to the DNS address (DNS over TCP included) would
            // reach passt's own resolver forwarding: never let it through.
            self.counters.flows_denied += 1;
            return self.refuse(frame, &ip);
        }
        let (proto, sport, dport, first) = match ip.l4 {
            L4::Tcp { sport, dport, flags, .. } => {
                (packet::PROTO_TCP, sport, dport, flags & TCP_SYN != 0 && flags & TCP_ACK == 0)
            }
            L4::Udp { sport, dport, .. } => (packet::PROTO_UDP, sport, dport, true),
            // Echo requests (8, 128) open flows; the ident acts as the port.
            L4::Icmp { kind: 8 | 128, ident } => {
                (if ip.src.is_ipv4() { packet::PROTO_ICMP } else { packet::PROTO_ICMPV6 }, ident, 0, true)
            }
            _ => return self.drop_frame(),
        };
        let key = FlowKey::new(proto, ip.src, sport, ip.dst, dport);
        let len = (ip.end) as u64;
        if let Some(f) = self.flows.get_mut(&key) {
            f.last = now;
            if f.verdict == Verdict::Allow {
                f.bytes_out += len;
                if let L4::Tcp { flags, .. } = ip.l4 {
                    f.fin_out |= flags & TCP_FIN != 0;
                    if flags & TCP_RST != 0 || (f.fin_out && f.fin_in) {
                        let f = self.flows.remove(&key).expect("present");
                        self.record(&key, &f);
                    }
                }
                return Self::forward(frame, ip.end);
            }
            return self.refuse(frame, &ip);
        }
        if !first {
            // Mid-stream TCP without a flow (e.g. after expiry): reset it.
            return self.refuse(frame, &ip);
        }
        if self.flows.len() >= MAX_FLOWS {
            self.expire(now);
            if self.flows.len() >= MAX_FLOWS {
                self.counters.flows_denied += 1;
                return self.refuse(frame, &ip);
            }
        }
        let names = self.names.get(ip.dst, now);
        let p = match proto {
            packet::PROTO_TCP => Proto::Tcp,
            packet::PROTO_UDP => Proto::Udp,
            _ => Proto::Icmp,
        };
        let Decision { verdict, by } =
            self.cfg.policy.decide(&Dest { ip: ip.dst, proto: p, port: dport, names: &names }, &self.cfg.env);
        let flow = Flow {
            verdict,
            about: Box::new(FlowAbout { by, name: names.first().cloned(), started: SystemTime::now() }),
            last: now,
            bytes_out: if verdict == Verdict::Allow { len } else { 0 },
            bytes_in: 0,
            fin_out: false,
            fin_in: false,
        };
        match verdict {
            Verdict::Allow => {
                self.counters.flows_allowed += 1;
                self.flows.insert(key, flow);
                Self::forward(frame, ip.end)
            }
            Verdict::Deny => {
                self.counters.flows_denied += 1;
                self.record(&key, &flow);
                self.refuse(frame, &ip)
            }
        }
    }

    fn refuse(&self, frame: &[u8], ip: &Ip) -> Outbound {
        if to_many(ip.dst) {
            return Outbound::Drop;
        }
        match ip.l4 {
            L4::Tcp { .. } => packet::tcp_rst(frame, ip).map(|r| Outbound::Reply(vec![r])).unwrap_or(Outbound::Drop),
            _ => Outbound::Reply(vec![packet::icmp_prohibited(frame, ip)]),
        }
    }

    /// Judges a frame from passt (the world) on its way to the guest.
    pub fn inbound(&mut self, frame: &[u8]) -> bool {
        self.inbound_at(frame, Instant::now())
    }

    /// As `inbound`, with the time given (see `outbound_at`).
    pub fn inbound_at(&mut self, frame: &[u8], now: Instant) -> bool {
        self.inbound_fast(frame, now) || self.inbound_full(frame, now)
    }

    /// The whole of `inbound_at`, for every frame the fast path leaves alone.
    pub(super) fn inbound_full(&mut self, frame: &[u8], now: Instant) -> bool {
        let Some(pkt) = packet::parse(frame) else { return false };
        let ip = match pkt {
            Packet::Arp { .. } => return true,
            Packet::Other(_) => return false,
            Packet::Ip(ip) => ip,
        };
        match ip.l4 {
            // DHCP replies and NDP/RA from passt itself.
            L4::Udp { sport: 67, dport: 68, .. } | L4::Udp { sport: 547, dport: 546, .. } => return true,
            L4::Icmp { kind: 133..=137, .. } => return ip.src.is_ipv6(),
            _ => {}
        }
        if ip.opaque {
            return false;
        }
        let (proto, sport, dport, flags) = match ip.l4 {
            L4::Tcp { sport, dport, flags, .. } => (packet::PROTO_TCP, sport, dport, flags),
            L4::Udp { sport, dport, .. } => (packet::PROTO_UDP, sport, dport, 0),
            L4::Icmp { kind: 0 | 129, ident } => {
                (if ip.src.is_ipv4() { packet::PROTO_ICMP } else { packet::PROTO_ICMPV6 }, 0, ident, 0)
            }
            _ => return false,
        };
        let key = FlowKey::new(proto, ip.dst, dport, ip.src, sport);
        let Some(f) = self.flows.get_mut(&key) else { return false };
        if f.verdict != Verdict::Allow {
            return false;
        }
        f.last = now;
        f.bytes_in += frame.len() as u64;
        f.fin_in |= flags & TCP_FIN != 0;
        if flags & TCP_RST != 0 || (f.fin_in && f.fin_out) {
            let f = self.flows.remove(&key).expect("present");
            self.record(&key, &f);
        }
        true
    }

    /// Drops idle flows, recording them; writes the repeat counts of
    /// refusals whose second is over; forgets expired names and answers.
    pub fn expire(&mut self, now: Instant) {
        let dead: Vec<FlowKey> = self
            .flows
            .iter()
            .filter(|(k, f)| now.duration_since(f.last) > idle_limit(k.proto()))
            .map(|(k, _)| *k)
            .collect();
        for k in dead {
            if let Some(f) = self.flows.remove(&k) {
                self.record(&k, &f);
            }
        }
        self.limiter.sweep(now, &mut self.closed);
        self.names.expire(now);
        self.cache.expire(now);
    }

    /// Records every open flow and pending repeat count (at the end of a run).
    pub fn close_all(&mut self) {
        let all: Vec<(FlowKey, Flow)> = self.flows.drain().collect();
        for (k, f) in all {
            self.record(&k, &f);
        }
        self.limiter.drain(&mut self.closed);
        self.counters.records_unlogged = self.limiter.unlogged;
    }

    pub fn open_flows(&self) -> usize {
        self.flows.len()
    }

    pub fn dns_in_flight(&self) -> usize {
        self.dns_in_flight
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::netfilter::packet::UdpPeer;
    use crate::policy::parse_rules;

    pub(in crate::netfilter) fn gate(allow: &[&str], full: bool) -> Gate {
        let rules = parse_rules(&allow.iter().map(|s| s.to_string()).collect::<Vec<_>>(), &[]).unwrap();
        Gate::new(Config {
            policy: Policy::new(rules, full),
            env: Env { gateways: vec!["10.0.2.2".parse().unwrap()], host_addrs: vec!["192.0.2.2".parse().unwrap()] },
            dns_addrs: vec!["10.0.2.3".parse().unwrap()],
            gateway_v4: "10.0.2.2".parse().unwrap(),
            mtu: 1500,
            dns_upstream: None,
        })
    }

    /// A minimal Ethernet+IPv4+TCP frame with the given flags.
    pub(in crate::netfilter) fn tcp(src: &str, dst: &str, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
        let (s, d): (std::net::Ipv4Addr, std::net::Ipv4Addr) = (src.parse().unwrap(), dst.parse().unwrap());
        let mut f = vec![2, 2, 2, 2, 2, 2, 4, 4, 4, 4, 4, 4, 0x08, 0x00];
        let mut h = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0];
        h.extend_from_slice(&s.octets());
        h.extend_from_slice(&d.octets());
        f.extend_from_slice(&h);
        let mut t = vec![0u8; 20];
        t[0..2].copy_from_slice(&sport.to_be_bytes());
        t[2..4].copy_from_slice(&dport.to_be_bytes());
        t[12] = 5 << 4;
        t[13] = flags;
        f.extend_from_slice(&t);
        f
    }

    #[test]
    fn test_flow_decided_on_syn_and_replies_follow() {
        let mut g = gate(&["203.0.113.0/24:443"], false);
        assert_eq!(g.outbound(&tcp("10.0.2.15", "203.0.113.5", 5000, 443, TCP_SYN)), Outbound::Forward);
        assert!(g.inbound(&tcp("203.0.113.5", "10.0.2.15", 443, 5000, TCP_SYN | TCP_ACK)));
        assert!(!g.inbound(&tcp("203.0.113.5", "10.0.2.15", 443, 5001, TCP_ACK)), "no flow, no entry");
        assert_eq!(g.open_flows(), 1);
        assert!(matches!(g.outbound(&tcp("10.0.2.15", "203.0.113.5", 5002, 80, TCP_SYN)), Outbound::Reply(_)));
        // Mid-stream segments without a flow are reset, not forwarded.
        assert!(matches!(g.outbound(&tcp("10.0.2.15", "203.0.113.5", 6000, 443, TCP_ACK)), Outbound::Reply(_)));
        // FIN both ways closes and records the flow.
        assert_eq!(g.outbound(&tcp("10.0.2.15", "203.0.113.5", 5000, 443, TCP_FIN | TCP_ACK)), Outbound::Forward);
        assert!(g.inbound(&tcp("203.0.113.5", "10.0.2.15", 443, 5000, TCP_FIN | TCP_ACK)));
        assert_eq!(g.open_flows(), 0);
        assert!(g.closed.iter().any(|r| r.port == 443 && r.verdict == Verdict::Allow && r.bytes_in > 0));
        assert!(g.closed.iter().any(|r| r.port == 80 && r.verdict == Verdict::Deny));
    }

    /// Idle time counts from the last frame either way, by the clock the
    /// relay hands in with each batch.
    #[test]
    fn test_flow_expires_when_idle_by_the_given_clock() {
        let mut g = gate(&[], true);
        let t0 = Instant::now();
        let out = udp("203.0.113.5", 9999, b"x");
        assert_eq!(g.outbound_at(&out, t0), Outbound::Forward);
        let back = UdpPeer {
            mac: [2; 6],
            our_mac: [4; 6],
            addr: "10.0.2.15".parse().unwrap(),
            port: 40000,
            our_addr: "203.0.113.5".parse().unwrap(),
            our_port: 9999,
        }
        .reply(b"y");
        let t1 = t0 + Duration::from_secs(50);
        assert!(g.inbound_at(&back, t1));
        g.expire(t1 + idle_limit(packet::PROTO_UDP));
        assert_eq!(g.open_flows(), 1, "idle exactly the limit: kept");
        g.expire(t1 + idle_limit(packet::PROTO_UDP) + Duration::from_millis(1));
        assert_eq!(g.open_flows(), 0, "idle past the limit: gone");
        assert!(!g.inbound_at(&back, t1 + Duration::from_secs(61)), "no flow, no entry");
        assert_eq!(g.closed.len(), 1);
    }

    #[test]
    fn test_dns_address_only_takes_udp_53() {
        let mut g = gate(&[], true);
        assert!(matches!(g.outbound(&tcp("10.0.2.15", "10.0.2.3", 5000, 53, TCP_SYN)), Outbound::Reply(_)));
    }

    #[test]
    fn test_flow_table_is_bounded() {
        let mut g = gate(&[], true);
        for i in 0..(MAX_FLOWS as u32 + 10) {
            let port = 1024 + (i % 60000) as u16;
            let dst = format!("203.0.{}.{}", 113 + i / 60000, 1);
            let _ = g.outbound(&tcp("10.0.2.15", &dst, port, 443, TCP_SYN));
        }
        assert!(g.open_flows() <= MAX_FLOWS);
    }

    /// A UDP datagram from the guest (10.0.2.15 or fd00:c0de::15).
    pub(in crate::netfilter) fn udp(dst: &str, dport: u16, payload: &[u8]) -> Vec<u8> {
        let dst: IpAddr = dst.parse().unwrap();
        let src: IpAddr = if dst.is_ipv4() { "10.0.2.15".parse().unwrap() } else { "fd00:c0de::15".parse().unwrap() };
        UdpPeer { mac: [4; 6], our_mac: [2; 6], addr: dst, port: dport, our_addr: src, our_port: 40000 }.reply(payload)
    }

    #[test]
    fn test_frames_above_the_mtu_are_refused_and_trailers_cut() {
        let mut g = gate(&[], true);
        let mut big = tcp("10.0.2.15", "203.0.113.5", 5000, 443, TCP_SYN);
        big.resize(1500 + 14 + 1, 0);
        assert_eq!(g.outbound(&big), Outbound::Drop);
        assert_eq!(g.counters.frames_dropped, 1);
        big.truncate(1514);
        assert_eq!(g.outbound(&big), Outbound::ForwardFirst(54), "at the MTU: forwarded, without the trailer");
        assert_eq!(g.outbound(&tcp("10.0.2.15", "203.0.113.5", 5001, 443, TCP_SYN)), Outbound::Forward);
    }

    #[test]
    fn test_multicast_and_broadcast_refused_silently_under_full() {
        let mut g = gate(&[], true);
        for dst in ["224.0.0.1", "239.255.255.250", "255.255.255.255", "ff02::1"] {
            assert_eq!(g.outbound(&udp(dst, 9999, b"x")), Outbound::Drop, "{dst}: no ICMP error for many receivers");
        }
        assert!(matches!(g.outbound(&udp("169.254.170.2", 80, b"x")), Outbound::Reply(_)), "link-local: refused");
        assert!(matches!(g.outbound(&udp("fe80::1", 80, b"x")), Outbound::Reply(_)));
        assert_eq!(g.counters.flows_denied, 6);
        assert_eq!(g.outbound(&udp("203.0.113.5", 9999, b"x")), Outbound::Forward, "an ordinary address is open");
        let mut named = gate(&["udp/224.0.0.1:9999", "169.254.170.2"], true);
        assert_eq!(named.outbound(&udp("224.0.0.1", 9999, b"x")), Outbound::Forward, "opened by a rule naming it");
        assert_eq!(named.outbound(&udp("169.254.170.2", 80, b"x")), Outbound::Forward);
    }

    #[test]
    fn test_denied_flood_logged_once_per_key_per_second() {
        let mut g = gate(&["203.0.113.0/24:443"], false);
        for i in 0..1000u16 {
            let _ = g.outbound(&tcp("10.0.2.15", "203.0.113.5", 10_000 + i, 80, TCP_SYN));
        }
        assert_eq!(g.counters.flows_denied, 1000);
        assert_eq!(g.closed.len(), 1, "one line, not one per packet: {:?}", g.closed.len());
        g.expire(Instant::now() + Duration::from_millis(1100));
        assert_eq!(g.closed.len(), 2);
        assert_eq!(g.closed[1].repeats, Some(999));
        assert_eq!((g.closed[1].port, g.closed[1].verdict), (80, Verdict::Deny));
    }

    #[test]
    fn test_host_addresses_can_change_mid_run() {
        let mut g = gate(&[], true);
        let syn = tcp("10.0.2.15", "198.51.100.7", 5000, 22, TCP_SYN);
        assert_eq!(g.outbound(&syn), Outbound::Forward);
        g.set_host_addrs(vec!["198.51.100.7".parse().unwrap()]);
        let syn = tcp("10.0.2.15", "198.51.100.7", 5001, 22, TCP_SYN);
        assert!(matches!(g.outbound(&syn), Outbound::Reply(_)), "a new host address is guarded at once");
    }

    #[test]
    fn test_hostile_frames_keep_the_gate_invariants() {
        use crate::netfilter::dns;
        let mut g = gate(&["*.allowed.test", "203.0.113.0/24"], false);
        let mut seeds = vec![
            tcp("10.0.2.15", "203.0.113.5", 5000, 443, TCP_SYN),
            udp("10.0.2.3", 53, &dns::build_query(7, "a.allowed.test", dns::TYPE_A)),
            udp("255.255.255.255", 67, &[1; 300]),
            udp("ff02::1:2", 547, &[1, 0, 0, 0]),
            udp("ff02::2", 9, b"x"),
        ];
        let mut arp = vec![0xff; 6];
        arp.extend_from_slice(&[4; 6]);
        arp.extend_from_slice(&[
            8, 6, 0, 1, 8, 0, 6, 4, 0, 1, 4, 4, 4, 4, 4, 4, 10, 0, 2, 15, 0, 0, 0, 0, 0, 0, 10, 0, 2, 2,
        ]);
        seeds.push(arp);
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for i in 0..50_000 {
            let mut f = seeds[i % seeds.len()].clone();
            for _ in 0..(i % 5) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let pos = (x as usize) % f.len();
                f[pos] = (x >> 32) as u8;
            }
            if i % 3 == 0 {
                f.truncate((x as usize >> 8) % (f.len() + 1));
            } else if i % 7 == 0 {
                f.resize(f.len() + (x as usize >> 20) % 2000, 0);
            }
            match g.outbound(&f) {
                Outbound::Forward => assert!(f.len() <= 1514),
                Outbound::ForwardFirst(n) => assert!(n < f.len() && n >= 42),
                Outbound::Resolve(job) => {
                    let _ = g.dns_answer(&job, Some((0, vec![("203.0.113.7".parse().unwrap(), 60)])));
                }
                Outbound::Reply(r) => assert!(r.iter().all(|r| packet::parse(r).is_some())),
                Outbound::Drop => {}
            }
            let _ = g.inbound(&f);
        }
        assert!(g.dns_in_flight() <= MAX_DNS_IN_FLIGHT);
        g.close_all();
    }
}
