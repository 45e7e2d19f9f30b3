//! The network policy, decided in one place for both backends. Pure: the
//! gate hands it a destination and gets a verdict and the rule that decided.
//!
//! Order of judgement:
//! 1. An IPv6 destination embedding an IPv4 one (IPv4-mapped, -compatible,
//!    NAT64 64:ff9b::/96 and the local-use 64:ff9b:1::/48 by their last 32
//!    bits, 6to4 2002::/16) is judged as that IPv4 address.
//! 2. The gateway address (which passt maps to the host's loopback) is
//!    reachable only through a matching `host:PORT` rule.
//! 3. Guarded addresses (`guard.rs`: the host's own addresses, link-local
//!    and cloud metadata, loopback, multicast, broadcast) are denied unless
//!    an allow rule names them: a CIDR lying wholly inside the guarded range
//!    (for the host's own addresses: the exact address), or the `metadata`
//!    or `private` token. `--net full` and wide CIDRs never unlock them.
//! 4. Otherwise the most specific matching rule wins (longest prefix, then
//!    narrowest port range, then a named protocol); on a tie, deny wins.
//! 5. No matching rule: allow with `--net full` or with only deny rules,
//!    deny as soon as any allow rule exists.

pub mod guard;
pub mod rule;

use rule::{Action, Cidr, Proto, Rule, Target};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use guard::{guard, host_address_notes, is_metadata, names_guarded, Guard};
pub use rule::RuleError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Deny,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    /// The rule text, or a built-in reason such as "metadata endpoint".
    pub by: String,
}

impl Decision {
    fn new(verdict: Verdict, by: impl Into<String>) -> Decision {
        Decision { verdict, by: by.into() }
    }
}

/// What the gate knows about the sandbox's network.
#[derive(Debug, Clone)]
pub struct Env {
    /// The gateway address passt maps to the host's loopback.
    pub gateways: Vec<IpAddr>,
    /// The host's own addresses.
    pub host_addrs: Vec<IpAddr>,
}

#[derive(Debug, Clone)]
pub struct Policy {
    pub rules: Vec<Rule>,
    /// `--net full`: no allow rule is needed.
    pub full: bool,
}

fn cidr(s: &str, p: u8) -> Cidr {
    Cidr::new(s.parse().expect("static CIDR"), p)
}

/// The `private` set, without the host's own addresses (added per Env).
pub fn private_ranges() -> &'static [Cidr] {
    static RANGES: std::sync::LazyLock<Vec<Cidr>> = std::sync::LazyLock::new(private_ranges_list);
    &RANGES
}

fn private_ranges_list() -> Vec<Cidr> {
    vec![
        cidr("10.0.0.0", 8),
        cidr("172.16.0.0", 12),
        cidr("192.168.0.0", 16),
        cidr("127.0.0.0", 8),
        cidr("169.254.0.0", 16),
        cidr("100.64.0.0", 10),
        cidr("198.18.0.0", 15),
        cidr("224.0.0.0", 4),
        cidr("0.0.0.0", 8),
        cidr("255.255.255.255", 32),
        cidr("fc00::", 7),
        cidr("fe80::", 10),
        cidr("ff00::", 8),
        cidr("::1", 128),
        cidr("::", 128),
    ]
}

/// The IPv4 address an IPv6 address carries, if it is of a kind that
/// reaches IPv4 hosts.
pub fn embedded_v4(a: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = a.segments();
    let o = a.octets();
    let tail = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    if s[..5] == [0, 0, 0, 0, 0] && s[5] == 0xffff {
        return Some(tail); // ::ffff:a.b.c.d
    }
    if s[..6] == [0, 0, 0, 0, 0, 0] && u32::from(tail) > 1 {
        return Some(tail); // ::a.b.c.d (deprecated compatible), not :: or ::1
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(tail); // NAT64 well-known prefix 64:ff9b::/96
    }
    if s[..3] == [0x64, 0xff9b, 1] {
        // NAT64 local-use prefix 64:ff9b:1::/48 (RFC 8215): the operator
        // picks the prefix length inside it; judged like the well-known
        // prefix, by the last 32 bits (the /96 layout).
        return Some(tail);
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(o[2], o[3], o[4], o[5])); // 6to4
    }
    None
}

/// The address the policy judges: the embedded IPv4 one when there is one.
pub fn effective(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => embedded_v4(v6).map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// A flow's destination as the gate sees it.
#[derive(Debug, Clone)]
pub struct Dest<'a> {
    pub ip: IpAddr,
    pub proto: Proto,
    /// 0 for ICMP.
    pub port: u16,
    /// DNS names the gate resolved to this address (for domain rules).
    pub names: &'a [String],
}

fn domain_matches(rule: &str, wildcard: bool, name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if wildcard {
        name.len() > rule.len() + 1 && name.ends_with(rule) && name.as_bytes()[name.len() - rule.len() - 1] == b'.'
    } else {
        name == rule
    }
}

/// Specificity of a match: higher wins.
type Score = (u8, u32, u8);

impl Policy {
    pub fn new(rules: Vec<Rule>, full: bool) -> Policy {
        Policy { rules, full }
    }

    pub fn has_allow(&self) -> bool {
        self.rules.iter().any(|r| r.action == Action::Allow)
    }

    /// Whether any rule allows ICMP (passt then keeps its ICMP handler).
    pub fn allows_icmp(&self) -> bool {
        self.full || self.rules.iter().any(|r| r.action == Action::Allow && matches!(r.proto, None | Some(Proto::Icmp)))
    }

    /// Whether a DNS name may be resolved at all: some allow rule names it.
    pub fn name_allowed(&self, name: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| {
            r.action == Action::Allow
                && matches!(&r.target, Target::Domain { name: n, wildcard } if domain_matches(n, *wildcard, name))
        })
    }

    fn in_private(ip: IpAddr, env: &Env) -> bool {
        private_ranges().iter().any(|c| c.contains(ip)) || env.host_addrs.iter().any(|h| effective(*h) == ip)
    }

    /// Score of `rule` against `d`, or None when it does not match.
    fn matches(rule: &Rule, d: &Dest, ip: IpAddr, env: &Env) -> Option<Score> {
        if let Some(p) = rule.proto {
            if p != d.proto {
                return None;
            }
        }
        let port_width = match rule.ports {
            Some((lo, hi)) => {
                if d.proto == Proto::Icmp || d.port < lo || d.port > hi {
                    return None;
                }
                u32::from(hi - lo)
            }
            None => 1 << 16,
        };
        let prefix = match &rule.target {
            Target::Cidr(c) => {
                if !c.contains(ip) {
                    return None;
                }
                // Compare IPv6 prefixes on the IPv4 scale.
                if c.addr.is_ipv4() {
                    c.prefix
                } else {
                    c.prefix / 4
                }
            }
            Target::Domain { name, wildcard } => {
                if !d.names.iter().any(|n| domain_matches(name, *wildcard, n)) {
                    return None;
                }
                if *wildcard {
                    31
                } else {
                    32
                }
            }
            Target::Metadata => {
                if !is_metadata(ip) {
                    return None;
                }
                32
            }
            Target::Private => {
                if !Self::in_private(ip, env) {
                    return None;
                }
                8
            }
            // Only meaningful for the gateway address, handled before.
            Target::Host => return None,
        };
        // An IPv6 address judged as IPv4 must not match IPv6 rules and vice versa:
        // Cidr::contains already refuses mixed families.
        Some((prefix, u32::MAX - port_width, u8::from(rule.proto.is_some())))
    }

    /// Warnings for `cordon run`: allow rules that contain one of the host's
    /// own addresses without naming it (it stays blocked).
    pub fn host_address_notes(&self, env: &Env) -> Vec<String> {
        host_address_notes(&self.rules, env)
    }

    pub fn decide(&self, d: &Dest, env: &Env) -> Decision {
        let ip = effective(d.ip);
        let embedded = ip != d.ip;
        let via = |s: &str| if embedded { format!("{s} (IPv4 embedded in {})", d.ip) } else { s.to_string() };

        if env.gateways.iter().any(|g| effective(*g) == ip) {
            let allowed = self.rules.iter().find(|r| {
                r.action == Action::Allow
                    && r.may_open_guarded
                    && r.target == Target::Host
                    && r.proto.is_none_or(|p| p == d.proto)
                    && r.ports.is_some_and(|(lo, hi)| d.proto != Proto::Icmp && (lo..=hi).contains(&d.port))
            });
            return match allowed {
                Some(r) => Decision::new(Verdict::Allow, r.text.clone()),
                None => Decision::new(Verdict::Deny, via("host loopback via the gateway address (needs host:PORT)")),
            };
        }

        let guarded = guard(ip, env);

        let mut best: Option<(Score, &Rule)> = None;
        for r in &self.rules {
            let Some(score) = Self::matches(r, d, ip, env) else { continue };
            if guarded.as_ref().is_some_and(|g| r.action == Action::Allow && !guard::opens(r, g)) {
                continue;
            }
            best = match best {
                None => Some((score, r)),
                Some((s, b)) if score > s || (score == s && r.action == Action::Deny && b.action == Action::Allow) => {
                    Some((score, r))
                }
                keep => keep,
            };
        }
        match (best, guarded) {
            (Some((_, r)), _) => {
                Decision::new(if r.action == Action::Allow { Verdict::Allow } else { Verdict::Deny }, via(&r.text))
            }
            (None, Some(g)) => Decision::new(Verdict::Deny, via(g.why)),
            (None, None) if self.full || !self.has_allow() => Decision::new(Verdict::Allow, "default allow"),
            (None, None) => Decision::new(Verdict::Deny, "default deny (allow rules exist)"),
        }
    }
}

/// Parses `--allow` and `--deny` lists.
pub fn parse_rules(allow: &[String], deny: &[String]) -> Result<Vec<Rule>, RuleError> {
    let mut v = Vec::new();
    for a in allow {
        v.push(rule::parse(a, Action::Allow)?);
    }
    for d in deny {
        v.push(rule::parse(d, Action::Deny)?);
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Env {
        Env {
            gateways: vec!["10.0.2.2".parse().unwrap()],
            host_addrs: vec!["192.0.2.2".parse().unwrap(), "fd00::2".parse().unwrap()],
        }
    }

    fn pol(allow: &[&str], deny: &[&str], full: bool) -> Policy {
        let a: Vec<String> = allow.iter().map(|s| s.to_string()).collect();
        let d: Vec<String> = deny.iter().map(|s| s.to_string()).collect();
        Policy::new(parse_rules(&a, &d).unwrap(), full)
    }

    fn decide(p: &Policy, ip: &str, proto: Proto, port: u16) -> Decision {
        p.decide(&Dest { ip: ip.parse().unwrap(), proto, port, names: &[] }, &env())
    }

    fn v(p: &Policy, ip: &str, port: u16) -> Verdict {
        decide(p, ip, Proto::Tcp, port).verdict
    }

    #[test]
    fn test_embedded_v4_table() {
        let cases = [
            ("::ffff:1.2.3.4", Some("1.2.3.4")),
            ("::1.2.3.4", Some("1.2.3.4")),
            ("64:ff9b::1.2.3.4", Some("1.2.3.4")),
            ("2002:0102:0304::1", Some("1.2.3.4")),
            // RFC 8215 local-use NAT64: whatever the operator's prefix
            // length inside the /48, judged by the last 32 bits.
            ("64:ff9b:1::1.2.3.4", Some("1.2.3.4")),
            ("64:ff9b:1:abcd:ef01:2345:a9fe:a9fe", Some("169.254.169.254")),
            ("64:ff9b:1:ffff:ffff:ffff:7f00:1", Some("127.0.0.1")),
            ("64:ff9b:2::1.2.3.4", None),
            ("64:ff9b:0:1::1.2.3.4", None),
            ("::1", None),
            ("::", None),
            ("2001:db8::1", None),
        ];
        for (a, want) in cases {
            assert_eq!(embedded_v4(a.parse().unwrap()), want.map(|w| w.parse().unwrap()), "{a}");
        }
    }

    #[test]
    fn test_default_modes() {
        assert_eq!(v(&pol(&[], &[], true), "203.0.113.9", 80), Verdict::Allow);
        assert_eq!(v(&pol(&[], &["203.0.113.0/24"], false), "198.51.100.1", 80), Verdict::Allow);
        assert_eq!(v(&pol(&["203.0.113.0/24"], &[], false), "198.51.100.1", 80), Verdict::Deny);
        assert_eq!(v(&pol(&["203.0.113.0/24"], &[], false), "203.0.113.7", 80), Verdict::Allow);
    }

    #[test]
    fn test_most_specific_wins_and_deny_on_tie() {
        let p = pol(&["203.0.113.0/24"], &["203.0.113.7"], false);
        assert_eq!(v(&p, "203.0.113.7", 80), Verdict::Deny);
        assert_eq!(v(&p, "203.0.113.8", 80), Verdict::Allow);
        let p = pol(&["203.0.113.7:443"], &["203.0.113.0/24"], false);
        assert_eq!(v(&p, "203.0.113.7", 443), Verdict::Allow);
        assert_eq!(v(&p, "203.0.113.7", 80), Verdict::Deny);
        let p = pol(&["203.0.113.0/24:80"], &["203.0.113.0/24:80"], false);
        let d = decide(&p, "203.0.113.1", Proto::Tcp, 80);
        assert_eq!(d.verdict, Verdict::Deny, "a tie goes to deny");
        let p = pol(&["203.0.113.0/24:1-1000"], &["203.0.113.0/24:80"], false);
        assert_eq!(v(&p, "203.0.113.1", 80), Verdict::Deny, "narrower port range wins");
        assert_eq!(v(&p, "203.0.113.1", 81), Verdict::Allow);
        let p = pol(&["udp/203.0.113.0/24:53"], &[], false);
        assert_eq!(decide(&p, "203.0.113.1", Proto::Udp, 53).verdict, Verdict::Allow);
        assert_eq!(decide(&p, "203.0.113.1", Proto::Tcp, 53).verdict, Verdict::Deny);
    }

    #[test]
    fn test_metadata_host_and_loopback_guarded_even_with_full() {
        let full = pol(&[], &[], true);
        for ip in [
            "169.254.169.254",
            "fd00:ec2::254",
            "100.100.100.200",
            "192.0.2.2",
            "fd00::2",
            "127.0.0.1",
            "::1",
            "::ffff:169.254.169.254",
            "64:ff9b:1::169.254.169.254",
            "64:ff9b:1:1:2:3:7f00:1",
        ] {
            assert_eq!(v(&full, ip, 80), Verdict::Deny, "{ip}");
        }
        let wide = pol(&["0.0.0.0/0", "::/0", "169.0.0.0/8"], &[], false);
        assert_eq!(v(&wide, "169.254.169.254", 80), Verdict::Deny);
        assert_eq!(v(&wide, "192.0.2.2", 22), Verdict::Deny);
        assert_eq!(v(&pol(&["metadata"], &[], false), "169.254.169.254", 80), Verdict::Allow);
        assert_eq!(v(&pol(&["169.254.169.254"], &[], false), "169.254.169.254", 80), Verdict::Allow);
        assert_eq!(v(&pol(&["private"], &[], false), "192.0.2.2", 80), Verdict::Allow);
    }

    #[test]
    fn test_multicast_broadcast_link_local_guarded_under_full() {
        let full = pol(&[], &[], true);
        let wide = pol(&["0.0.0.0/0", "::/0"], &[], true);
        for ip in [
            "224.0.0.1",
            "239.255.255.250",
            "ff02::1",
            "ff05::1:3",
            "255.255.255.255",
            "169.254.170.2",
            "169.254.170.23",
            "fe80::1",
            "fd00:ec2::23",
            "168.63.129.16",
            "::ffff:224.0.0.1",
            "0.1.2.3",
        ] {
            for p in [&full, &wide] {
                let d = decide(p, ip, Proto::Udp, 9999);
                assert_eq!(d.verdict, Verdict::Deny, "{ip} {d:?}");
            }
        }
        // Positive controls: a rule that names them opens them.
        assert_eq!(
            decide(&pol(&["udp/224.0.0.1:9999"], &[], true), "224.0.0.1", Proto::Udp, 9999).verdict,
            Verdict::Allow
        );
        assert_eq!(v(&pol(&["169.254.0.0/16"], &[], false), "169.254.170.2", 80), Verdict::Allow);
        assert_eq!(v(&pol(&["[fe80::/10]:22"], &[], false), "fe80::1", 22), Verdict::Allow);
        for ip in ["169.254.170.2", "fd00:ec2::23", "168.63.129.16", "fe80::1"] {
            assert_eq!(v(&pol(&["metadata"], &[], false), ip, 80), Verdict::Allow, "{ip}");
        }
        assert_eq!(v(&pol(&["metadata"], &[], false), "224.0.0.1", 80), Verdict::Deny, "metadata names no multicast");
        assert_eq!(v(&pol(&["private"], &[], false), "ff02::1", 80), Verdict::Allow);
        assert_eq!(v(&full, "198.51.100.2", 80), Verdict::Allow, "ordinary addresses stay open");
    }

    #[test]
    fn test_host_address_opens_only_by_exact_name_or_private() {
        for rule in ["192.0.2.0/24", "192.0.0.0/16", "192.0.2.2/31", "[fd00::/64]", "0.0.0.0/0"] {
            let p = pol(&[rule], &[], true);
            assert_eq!(v(&p, "192.0.2.2", 22), Verdict::Deny, "{rule}");
            assert_eq!(v(&p, "fd00::2", 22), Verdict::Deny, "{rule}");
            assert_eq!(p.host_address_notes(&env()).len(), 1, "cordon run says so for {rule}");
        }
        assert_eq!(
            v(&pol(&["192.0.2.0/24"], &[], false), "192.0.2.3", 22),
            Verdict::Allow,
            "the rest of the CIDR opens"
        );
        assert_eq!(v(&pol(&["192.0.2.2"], &[], false), "192.0.2.2", 22), Verdict::Allow);
        assert_eq!(v(&pol(&["tcp/192.0.2.2:22"], &[], false), "192.0.2.2", 22), Verdict::Allow);
        assert_eq!(v(&pol(&["[fd00::2]"], &[], false), "fd00::2", 22), Verdict::Allow);
        assert_eq!(v(&pol(&["private"], &[], false), "fd00::2", 22), Verdict::Allow);
        assert!(pol(&["192.0.2.2"], &[], false).host_address_notes(&env()).is_empty());
    }

    #[test]
    fn test_untrusted_rules_open_only_ordinary_destinations() {
        let untrusted = |allow: &[&str]| {
            let p = pol(allow, &[], false);
            Policy::new(p.rules.into_iter().map(Rule::untrusted).collect(), false)
        };
        for (rule, ip, port) in [
            ("host:8080", "10.0.2.2", 8080),
            ("192.0.2.2", "192.0.2.2", 22),
            ("private", "192.0.2.2", 22),
            ("metadata", "169.254.169.254", 80),
            ("169.254.169.254", "169.254.169.254", 80),
            ("[fd00::2]", "fd00::2", 22),
        ] {
            assert_eq!(v(&pol(&[rule], &[], false), ip, port), Verdict::Allow, "positive control: {rule}");
            assert_eq!(v(&untrusted(&[rule]), ip, port), Verdict::Deny, "untrusted {rule} opened {ip}");
        }
        assert_eq!(v(&untrusted(&["203.0.113.0/24"]), "203.0.113.7", 80), Verdict::Allow);
        assert_eq!(v(&untrusted(&["private"]), "10.1.2.3", 80), Verdict::Allow, "private's ordinary ranges");
    }

    #[test]
    fn test_gateway_only_through_host_port() {
        let p = pol(&["host:8080"], &[], false);
        assert_eq!(v(&p, "10.0.2.2", 8080), Verdict::Allow);
        assert_eq!(v(&p, "10.0.2.2", 8081), Verdict::Deny);
        assert_eq!(v(&pol(&[], &[], true), "10.0.2.2", 8080), Verdict::Deny);
        assert_eq!(
            v(&pol(&["10.0.2.2"], &[], false), "10.0.2.2", 8080),
            Verdict::Deny,
            "a CIDR never opens host loopback"
        );
        assert_eq!(v(&p, "::ffff:10.0.2.2", 8081), Verdict::Deny);
    }

    #[test]
    fn test_embedded_v4_cannot_bypass_v4_deny() {
        let p = pol(&["::/0"], &["203.0.113.0/24"], true);
        for ip in [
            "::ffff:203.0.113.5",
            "64:ff9b::203.0.113.5",
            "64:ff9b:1::203.0.113.5",
            "64:ff9b:1:42::cb00:7105",
            "2002:cb00:7105::1",
            "::203.0.113.5",
        ] {
            let d = decide(&p, ip, Proto::Tcp, 80);
            assert_eq!(d.verdict, Verdict::Deny, "{ip} {d:?}");
            assert!(d.by.contains("embedded"), "{d:?}");
        }
        assert_eq!(v(&p, "2001:db8::5", 80), Verdict::Allow);
    }

    #[test]
    fn test_domain_rules() {
        let p = pol(&["example.org:443", "*.pkg.test"], &[], false);
        let names = vec!["example.org".to_string()];
        let d = Dest { ip: "203.0.113.9".parse().unwrap(), proto: Proto::Tcp, port: 443, names: &names };
        assert_eq!(p.decide(&d, &env()).verdict, Verdict::Allow);
        let d = Dest { port: 80, ..d };
        assert_eq!(p.decide(&d, &env()).verdict, Verdict::Deny);
        assert!(p.name_allowed("example.org").is_some());
        assert!(p.name_allowed("EXAMPLE.org.").is_some());
        assert!(p.name_allowed("a.pkg.test").is_some());
        assert!(p.name_allowed("pkg.test").is_none(), "*. means strict subdomains");
        assert!(p.name_allowed("evilpkg.test").is_none());
        assert!(p.name_allowed("example.org.evil.test").is_none());
    }

    #[test]
    fn test_icmp_allowed_only_by_rule() {
        assert!(!pol(&["tcp/203.0.113.0/24"], &[], false).allows_icmp());
        assert!(pol(&["icmp/203.0.113.0/24"], &[], false).allows_icmp());
        assert!(pol(&[], &[], true).allows_icmp());
    }
}
