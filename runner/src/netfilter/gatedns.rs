//! The gate's DNS: questions to its own address are answered here (names
//! the policy does not allow get NXDOMAIN without any upstream query), from
//! a cache or upstream with a bounded number in flight; answers teach the
//! gate which addresses a domain rule covers, less private and guarded
//! ones (DNS rebinding).

use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use super::audit::{now_secs, FlowRecord};
use super::dns;
use super::gate::{Gate, Outbound, MAX_DNS_IN_FLIGHT};
use super::packet::{Ip, UdpPeer};
use crate::policy::Verdict;

/// A question to ask upstream: the query and whom to answer, not the frame.
#[derive(Debug, PartialEq, Eq)]
pub struct DnsJob {
    pub query: super::dns::Query,
    pub peer: UdpPeer,
}

impl Gate {
    /// Remembers an allowed DNS answer for its TTL (at least a few seconds,
    /// so a connect right after the lookup is not refused by rounding).
    pub fn learn(&mut self, name: &str, ip: IpAddr, ttl: u32) {
        let now = Instant::now();
        let exp = now + Duration::from_secs(u64::from(ttl.clamp(5, 24 * 3600)));
        self.names.learn(name, ip, exp, now);
    }

    fn dns_record(&mut self, dst: IpAddr, name: &str, verdict: Verdict, rule: String) {
        self.log_limited(FlowRecord {
            time: now_secs(SystemTime::now()),
            proto: "dns",
            dst,
            port: 53,
            dns_name: Some(name.to_string()),
            verdict,
            rule,
            bytes_out: 0,
            bytes_in: 0,
            repeats: None,
        });
    }

    pub(super) fn dns(&mut self, frame: &[u8], ip: &Ip, payload: std::ops::Range<usize>) -> Outbound {
        let Some(q) = frame.get(payload).and_then(dns::parse_query) else { return self.drop_frame() };
        let Some(peer) = UdpPeer::of(frame, ip) else { return self.drop_frame() };
        let name_ok = self.cfg.policy.name_allowed(&q.name).is_some();
        if !(name_ok && matches!(q.qtype, dns::TYPE_A | dns::TYPE_AAAA)) {
            let rcode = if name_ok { 0 } else { 3 };
            let (verdict, why) = if name_ok {
                (Verdict::Allow, "no A/AAAA asked: empty answer")
            } else {
                (Verdict::Deny, "name not allowed: NXDOMAIN, not forwarded")
            };
            self.dns_record(ip.dst, &q.name, verdict, why.into());
            return Outbound::Reply(vec![peer.reply(&dns::reply(&q, rcode, &[]))]);
        }
        if let Some((rcode, recs)) = self.cache.get(&q.name, q.qtype, Instant::now()) {
            self.counters.dns_cached += 1;
            for (a, ttl) in &recs {
                self.learn(&q.name, *a, *ttl);
            }
            self.dns_record(ip.dst, &q.name, Verdict::Allow, format!("cached: {} address(es)", recs.len()));
            return Outbound::Reply(vec![peer.reply(&dns::reply(&q, rcode, &recs))]);
        }
        if self.dns_in_flight >= MAX_DNS_IN_FLIGHT {
            self.counters.dns_dropped += 1;
            return Outbound::Drop;
        }
        self.dns_in_flight += 1;
        Outbound::Resolve(Box::new(DnsJob { query: q, peer }))
    }

    /// Finishes a DNS job with upstream `answers`; private and guarded ones
    /// are dropped (DNS rebinding). Returns the reply frame for the guest.
    pub fn dns_answer(&mut self, job: &DnsJob, answers: Option<(u8, Vec<(IpAddr, u32)>)>) -> Vec<u8> {
        self.dns_in_flight = self.dns_in_flight.saturating_sub(1);
        let upstream_ok = answers.is_some();
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
        if upstream_ok {
            self.cache.put(&job.query.name, job.query.qtype, rcode, &recs, Instant::now());
        }
        let rule = match (upstream_ok, before - recs.len()) {
            (false, _) => "upstream did not answer: SERVFAIL".to_string(),
            (true, 0) => format!("resolved upstream: {} address(es)", recs.len()),
            (true, n) => {
                format!("resolved upstream: {} address(es), {n} private answer(s) dropped (rebinding)", recs.len())
            }
        };
        self.dns_record(job.peer.our_addr, &job.query.name, Verdict::Allow, rule);
        job.peer.reply(&dns::reply(&job.query, rcode, &recs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netfilter::gate::tests::{gate, tcp, udp};
    use crate::netfilter::packet::{self, Packet, L4, TCP_SYN};

    #[test]
    fn test_dns_flood_bounded_in_flight_and_cached() {
        use crate::netfilter::dns;
        let mut g = gate(&["*.allowed.test"], false);
        let q = |name: &str| udp("10.0.2.3", 53, &dns::build_query(7, name, dns::TYPE_A));
        let mut jobs = Vec::new();
        let mut dropped = 0;
        for i in 0..1000 {
            match g.outbound(&q(&format!("n{i}.allowed.test"))) {
                Outbound::Resolve(j) => jobs.push(j),
                Outbound::Drop => dropped += 1,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(jobs.len(), MAX_DNS_IN_FLIGHT);
        assert_eq!((dropped, g.counters.dns_dropped), (1000 - MAX_DNS_IN_FLIGHT, (1000 - MAX_DNS_IN_FLIGHT) as u64));
        // Denied names are answered at once whatever is in flight.
        assert!(matches!(g.outbound(&q("exfil.example.org")), Outbound::Reply(_)));
        // An answer frees a slot, and is cached: the same question is answered here.
        let job = jobs.remove(0);
        let reply = g.dns_answer(&job, Some((0, vec![("203.0.113.9".parse().unwrap(), 300)])));
        assert!(!reply.is_empty());
        assert_eq!(g.dns_in_flight(), MAX_DNS_IN_FLIGHT - 1);
        assert!(matches!(g.outbound(&q("n0.allowed.test")), Outbound::Reply(_)), "cached");
        assert_eq!(g.counters.dns_cached, 1);
        assert!(matches!(g.outbound(&q("fresh.allowed.test")), Outbound::Resolve(_)), "a freed slot is used");
        assert!(matches!(g.outbound(&q("fresh2.allowed.test")), Outbound::Drop));
        // The learned address opens the name's flows.
        assert_eq!(g.outbound(&tcp("10.0.2.15", "203.0.113.9", 5000, 443, TCP_SYN)), Outbound::Forward);
        // Upstream failures are answered SERVFAIL and not cached.
        let job = jobs.remove(0);
        let r = g.dns_answer(&job, None);
        let Some(Packet::Ip(ip)) = packet::parse(&r) else { panic!() };
        let L4::Udp { payload, .. } = ip.l4 else { panic!() };
        assert_eq!(r[payload][3] & 0x0f, 2);
        assert!(matches!(g.outbound(&q("n1.allowed.test")), Outbound::Resolve(_)));
    }
}
