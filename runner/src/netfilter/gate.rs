//! The egress gate's state: every frame the sandbox sends is judged here.
//! Flows are decided on their first packet (TCP SYN, first UDP datagram,
//! ICMP echo) and remembered in a bounded table; replies from passt pass
//! only for known, allowed flows. Denied TCP gets a RST, the rest ICMP
//! "administratively prohibited". DNS to the gate's address is answered
//! here. Independent of QEMU: the namespace backend feeds it the same way.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant, SystemTime};

use super::packet::{self, Ip, Packet, L4, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};
use crate::policy::rule::Proto;
use crate::policy::{Decision, Dest, Env, Policy, Verdict};

/// Flows beyond this are refused until old ones expire.
pub const MAX_FLOWS: usize = 16_384;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub proto: u8,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
}

#[derive(Debug, Clone)]
pub struct Flow {
    pub verdict: Verdict,
    pub by: String,
    pub name: Option<String>,
    pub started: SystemTime,
    pub last: Instant,
    pub bytes_out: u64,
    pub bytes_in: u64,
    fin_out: bool,
    fin_in: bool,
}

/// One line of the audit log.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FlowRecord {
    pub time: f64,
    pub proto: &'static str,
    pub dst: IpAddr,
    pub port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_name: Option<String>,
    pub verdict: Verdict,
    pub rule: String,
    pub bytes_out: u64,
    pub bytes_in: u64,
}

/// What to do with a frame from the guest.
#[derive(Debug, PartialEq, Eq)]
pub enum Outbound {
    Forward,
    Drop,
    /// Send these frames back to the guest instead.
    Reply(Vec<Vec<u8>>),
    /// A DNS query for an allowed name: resolve it and answer.
    Resolve(DnsJob),
}

#[derive(Debug, PartialEq, Eq)]
pub struct DnsJob {
    pub query: super::dns::Query,
    pub frame: Vec<u8>,
    pub ip: Ip,
}

pub struct Config {
    pub policy: Policy,
    pub env: Env,
    /// Addresses the gate answers DNS on.
    pub dns_addrs: Vec<IpAddr>,
    pub gateway_v4: Ipv4Addr,
}

pub struct Gate {
    pub cfg: Config,
    flows: HashMap<FlowKey, Flow>,
    /// Addresses learned from allowed DNS answers: ip -> (name, expiry).
    names: HashMap<IpAddr, Vec<(String, Instant)>>,
    pub closed: Vec<FlowRecord>,
    pub allowed: u64,
    pub denied: u64,
}

fn proto_name(p: u8) -> &'static str {
    match p {
        packet::PROTO_TCP => "tcp",
        packet::PROTO_UDP => "udp",
        _ => "icmp",
    }
}

fn now_secs(t: SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn idle_limit(proto: u8) -> Duration {
    match proto {
        packet::PROTO_TCP => Duration::from_secs(15 * 60),
        packet::PROTO_UDP => Duration::from_secs(60),
        _ => Duration::from_secs(30),
    }
}

impl Gate {
    pub fn new(cfg: Config) -> Gate {
        Gate { cfg, flows: HashMap::new(), names: HashMap::new(), closed: Vec::new(), allowed: 0, denied: 0 }
    }

    fn names_for(&self, ip: IpAddr) -> Vec<String> {
        let now = Instant::now();
        self.names
            .get(&ip)
            .map(|v| v.iter().filter(|(_, exp)| *exp > now).map(|(n, _)| n.clone()).collect())
            .unwrap_or_default()
    }

    /// Remembers an allowed DNS answer for its TTL (at least a few seconds,
    /// so a connect right after the lookup is not refused by rounding).
    pub fn learn(&mut self, name: &str, ip: IpAddr, ttl: u32) {
        let exp = Instant::now() + Duration::from_secs(u64::from(ttl.clamp(5, 24 * 3600)));
        let v = self.names.entry(ip).or_default();
        v.retain(|(n, _)| n != name);
        v.push((name.to_string(), exp));
    }

    fn record(&mut self, key: &FlowKey, f: &Flow) {
        self.closed.push(FlowRecord {
            time: now_secs(f.started),
            proto: proto_name(key.proto),
            dst: key.dst,
            port: key.dport,
            dns_name: f.name.clone(),
            verdict: f.verdict,
            rule: f.by.clone(),
            bytes_out: f.bytes_out,
            bytes_in: f.bytes_in,
        });
    }

    /// Judges a frame from the guest.
    pub fn outbound(&mut self, frame: &[u8]) -> Outbound {
        let Some(pkt) = packet::parse(frame) else { return Outbound::Drop };
        let ip = match pkt {
            // ARP only for the gateway and the DNS address.
            Packet::Arp { target_ip, .. } => {
                let ok = target_ip == self.cfg.gateway_v4 || self.cfg.dns_addrs.contains(&IpAddr::V4(target_ip));
                return if ok { Outbound::Forward } else { Outbound::Drop };
            }
            Packet::Other(_) => return Outbound::Drop,
            Packet::Ip(ip) => ip,
        };
        // NDP (router/neighbor solicitation and advertisement) stays on link.
        if let L4::Icmp { kind: 133..=137, .. } = ip.l4 {
            return if ip.src.is_ipv6() { Outbound::Forward } else { Outbound::Drop };
        }
        if ip.opaque {
            // Fragments, IP options, IPv6 extension headers: no ports to judge.
            return Outbound::Drop;
        }
        if self.cfg.dns_addrs.contains(&ip.dst) {
            if let L4::Udp { dport: 53, ref payload, .. } = ip.l4 {
                return self.dns(frame, &ip, payload.clone());
            }
            // Anything else to the DNS address (DNS over TCP included) would
            // reach passt's own resolver forwarding: never let it through.
            self.denied += 1;
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
            _ => return Outbound::Drop,
        };
        let key = FlowKey { proto, src: ip.src, sport, dst: ip.dst, dport };
        let len = frame.len() as u64;
        if let Some(f) = self.flows.get_mut(&key) {
            f.last = Instant::now();
            if f.verdict == Verdict::Allow {
                f.bytes_out += len;
                if let L4::Tcp { flags, .. } = ip.l4 {
                    f.fin_out |= flags & TCP_FIN != 0;
                    if flags & TCP_RST != 0 || (f.fin_out && f.fin_in) {
                        let f = self.flows.remove(&key).expect("present");
                        self.record(&key, &f);
                    }
                }
                return Outbound::Forward;
            }
            return self.refuse(frame, &ip);
        }
        if !first {
            // Mid-stream TCP without a flow (e.g. after expiry): reset it.
            return self.refuse(frame, &ip);
        }
        if self.flows.len() >= MAX_FLOWS {
            self.expire(Instant::now());
            if self.flows.len() >= MAX_FLOWS {
                self.denied += 1;
                return self.refuse(frame, &ip);
            }
        }
        let names = self.names_for(ip.dst);
        let p = match proto {
            packet::PROTO_TCP => Proto::Tcp,
            packet::PROTO_UDP => Proto::Udp,
            _ => Proto::Icmp,
        };
        let Decision { verdict, by } =
            self.cfg.policy.decide(&Dest { ip: ip.dst, proto: p, port: dport, names: &names }, &self.cfg.env);
        let flow = Flow {
            verdict,
            by,
            name: names.first().cloned(),
            started: SystemTime::now(),
            last: Instant::now(),
            bytes_out: if verdict == Verdict::Allow { len } else { 0 },
            bytes_in: 0,
            fin_out: false,
            fin_in: false,
        };
        match verdict {
            Verdict::Allow => {
                self.allowed += 1;
                self.flows.insert(key, flow);
                Outbound::Forward
            }
            Verdict::Deny => {
                self.denied += 1;
                self.record(&key, &flow);
                self.refuse(frame, &ip)
            }
        }
    }

    fn refuse(&self, frame: &[u8], ip: &Ip) -> Outbound {
        match ip.l4 {
            L4::Tcp { .. } => packet::tcp_rst(frame, ip).map(|r| Outbound::Reply(vec![r])).unwrap_or(Outbound::Drop),
            _ => Outbound::Reply(vec![packet::icmp_prohibited(frame, ip)]),
        }
    }

    fn dns(&mut self, frame: &[u8], ip: &Ip, payload: std::ops::Range<usize>) -> Outbound {
        let Some(q) = frame.get(payload).and_then(super::dns::parse_query) else { return Outbound::Drop };
        let name_ok = self.cfg.policy.name_allowed(&q.name).is_some();
        if !(name_ok && matches!(q.qtype, super::dns::TYPE_A | super::dns::TYPE_AAAA)) {
            let rcode = if name_ok { 0 } else { 3 };
            self.closed.push(FlowRecord {
                time: now_secs(SystemTime::now()),
                proto: "dns",
                dst: ip.dst,
                port: 53,
                dns_name: Some(q.name.clone()),
                verdict: if rcode == 0 { Verdict::Allow } else { Verdict::Deny },
                rule: if rcode == 0 {
                    "no A/AAAA asked: empty answer".into()
                } else {
                    "name not allowed: NXDOMAIN, not forwarded".into()
                },
                bytes_out: 0,
                bytes_in: 0,
            });
            let r = super::dns::reply(&q, rcode, &[]);
            return packet::udp_reply(frame, ip, &r).map(|f| Outbound::Reply(vec![f])).unwrap_or(Outbound::Drop);
        }
        Outbound::Resolve(DnsJob { query: q, frame: frame.to_vec(), ip: ip.clone() })
    }

    /// Finishes a DNS job with upstream `answers`; private ones are dropped.
    pub fn dns_answer(&mut self, job: &DnsJob, answers: Option<(u8, Vec<(IpAddr, u32)>)>) -> Option<Vec<u8>> {
        let (rcode, mut recs) = answers.unwrap_or((2, vec![]));
        let before = recs.len();
        recs.retain(|(ip, _)| {
            let eff = crate::policy::effective(*ip);
            !crate::policy::private_ranges().iter().any(|c| c.contains(eff))
                && crate::policy::guard(eff, &self.cfg.env).is_none()
        });
        for (ip, ttl) in &recs {
            self.learn(&job.query.name, *ip, *ttl);
        }
        self.closed.push(FlowRecord {
            time: now_secs(SystemTime::now()),
            proto: "dns",
            dst: job.ip.dst,
            port: 53,
            dns_name: Some(job.query.name.clone()),
            verdict: Verdict::Allow,
            rule: match before - recs.len() {
                0 => format!("resolved upstream: {} address(es)", recs.len()),
                n => {
                    format!("resolved upstream: {} address(es), {n} private answer(s) dropped (rebinding)", recs.len())
                }
            },
            bytes_out: 0,
            bytes_in: 0,
        });
        let r = super::dns::reply(&job.query, rcode, &recs);
        packet::udp_reply(&job.frame, &job.ip, &r)
    }

    /// Judges a frame from passt (the world) on its way to the guest.
    pub fn inbound(&mut self, frame: &[u8]) -> bool {
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
        let key = FlowKey { proto, src: ip.dst, sport: dport, dst: ip.src, dport: sport };
        let Some(f) = self.flows.get_mut(&key) else { return false };
        if f.verdict != Verdict::Allow {
            return false;
        }
        f.last = Instant::now();
        f.bytes_in += frame.len() as u64;
        f.fin_in |= flags & TCP_FIN != 0;
        if flags & TCP_RST != 0 || (f.fin_in && f.fin_out) {
            let f = self.flows.remove(&key).expect("present");
            self.record(&key, &f);
        }
        true
    }

    /// Drops idle flows, recording them.
    pub fn expire(&mut self, now: Instant) {
        let dead: Vec<FlowKey> = self
            .flows
            .iter()
            .filter(|(k, f)| now.duration_since(f.last) > idle_limit(k.proto))
            .map(|(k, _)| *k)
            .collect();
        for k in dead {
            if let Some(f) = self.flows.remove(&k) {
                self.record(&k, &f);
            }
        }
        let n = Instant::now();
        self.names.retain(|_, v| {
            v.retain(|(_, e)| *e > n);
            !v.is_empty()
        });
    }

    /// Records every open flow (at the end of a run).
    pub fn close_all(&mut self) {
        let all: Vec<(FlowKey, Flow)> = self.flows.drain().collect();
        for (k, f) in all {
            self.record(&k, &f);
        }
    }

    pub fn open_flows(&self) -> usize {
        self.flows.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::parse_rules;

    fn gate(allow: &[&str], full: bool) -> Gate {
        let rules = parse_rules(&allow.iter().map(|s| s.to_string()).collect::<Vec<_>>(), &[]).unwrap();
        Gate::new(Config {
            policy: Policy::new(rules, full),
            env: Env { gateways: vec!["10.0.2.2".parse().unwrap()], host_addrs: vec!["192.0.2.2".parse().unwrap()] },
            dns_addrs: vec!["10.0.2.3".parse().unwrap()],
            gateway_v4: "10.0.2.2".parse().unwrap(),
        })
    }

    /// A minimal Ethernet+IPv4+TCP frame with the given flags.
    fn tcp(src: &str, dst: &str, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
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
}
