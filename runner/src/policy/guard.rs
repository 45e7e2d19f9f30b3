//! Guarded addresses: destinations that even `--net full` or `0.0.0.0/0`
//! never reach, because they lead to the host itself, to the cloud's
//! per-instance services (metadata, credentials), or to every machine on a
//! link at once. Only a rule that names them opens them (see `opens`).
//!
//! Invariant: a wide allow rule never opens a guarded address by accident.
//! A CIDR rule opens one only when the CIDR lies wholly inside the guarded
//! range (the host's own addresses: only that exact address), so
//! `169.254.0.0/16` or `224.0.0.1` open what they say, while `169.0.0.0/8`,
//! `0.0.0.0/0` or a LAN CIDR that happens to hold the host's address do not.

use super::rule::{Cidr, Rule, Target};
use super::{effective, Env};
use std::net::IpAddr;

/// Why a destination is guarded and the range that names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guard {
    pub why: &'static str,
    /// The guarded range the destination lies in (for the host's own
    /// addresses: the address itself).
    pub range: Cidr,
    /// Opened by the `metadata` token.
    pub metadata: bool,
    /// Multicast or broadcast: refused silently, with no ICMP error (RFC 1122
    /// 3.2.2, RFC 4443 2.4), and a source the guest would drop anyway.
    pub to_many: bool,
}

struct Range {
    cidr: (&'static str, u8),
    why: &'static str,
    metadata: bool,
    to_many: bool,
}

const fn range(addr: &'static str, prefix: u8, why: &'static str, metadata: bool, to_many: bool) -> Range {
    Range { cidr: (addr, prefix), why, metadata, to_many }
}

/// The guarded ranges; the ones with `metadata` are what the `metadata`
/// token names. Listed in the README.
const RANGES: &[Range] = &[
    // GCP/AWS/Azure/OCI IMDS 169.254.169.254, ECS task credentials
    // 169.254.170.2, EKS pod identity 169.254.170.23, link-local DNS and NTP.
    range("169.254.0.0", 16, "link-local (cloud metadata and credentials)", true, false),
    range("fe80::", 10, "IPv6 link-local", true, false),
    // AWS IMDS fd00:ec2::254, EKS pod identity fd00:ec2::23, DNS fd00:ec2::253.
    range("fd00:ec2::", 32, "AWS metadata (IPv6)", true, false),
    range("168.63.129.16", 32, "Azure wire server", true, false),
    range("100.100.100.200", 32, "Alibaba Cloud metadata", true, false),
    range("127.0.0.0", 8, "loopback", false, false),
    range("::1", 128, "loopback", false, false),
    range("0.0.0.0", 8, "unspecified address", false, false),
    range("::", 128, "unspecified address", false, false),
    range("224.0.0.0", 4, "multicast", false, true),
    range("ff00::", 8, "multicast", false, true),
    range("255.255.255.255", 32, "broadcast", false, true),
];

fn ranges() -> &'static [(Cidr, &'static Range)] {
    static R: std::sync::LazyLock<Vec<(Cidr, &'static Range)>> = std::sync::LazyLock::new(|| {
        RANGES.iter().map(|r| (Cidr::new(r.cidr.0.parse().expect("static CIDR"), r.cidr.1), r)).collect()
    });
    &R
}

/// Whether `ip` (already the effective address) is one the `metadata` token names.
pub fn is_metadata(ip: IpAddr) -> bool {
    ranges().iter().any(|(c, r)| r.metadata && c.contains(ip))
}

/// The guard on `ip` (already the effective address), if any. The host's own
/// addresses come first: they open only by exact address or `private`, even
/// when they also lie in a wider guarded range.
pub fn guard(ip: IpAddr, env: &Env) -> Option<Guard> {
    if env.host_addrs.iter().any(|h| effective(*h) == ip) {
        let host = Cidr::new(ip, if ip.is_ipv4() { 32 } else { 128 });
        return Some(Guard { why: "the host's own address", range: host, metadata: false, to_many: false });
    }
    ranges().iter().find(|(c, _)| c.contains(ip)).map(|(c, r)| Guard {
        why: r.why,
        range: *c,
        metadata: r.metadata,
        to_many: r.to_many,
    })
}

/// Whether the allow rule `rule`, which matches a guarded destination, names
/// it explicitly enough to open it (and may open guarded destinations at all).
pub fn opens(rule: &Rule, g: &Guard) -> bool {
    if !rule.may_open_guarded {
        return false;
    }
    match &rule.target {
        Target::Private => true,
        Target::Metadata => g.metadata,
        Target::Cidr(c) => c.prefix >= g.range.prefix && g.range.contains(c.addr),
        Target::Domain { .. } | Target::Host => false,
    }
}

/// What guarded destination the allow rule `rule` would open, if any: the
/// gateway's `host:PORT`, the `private` and `metadata` tokens, a CIDR lying
/// inside a guarded range, or exactly one of the host's addresses
/// `host_addrs` (as they are now). Used to refuse such rules from a job file
/// the user did not trust; `Rule::may_open_guarded` keeps the refusal true
/// when the host's addresses change later.
pub fn names_guarded(rule: &Rule, host_addrs: &[IpAddr]) -> Option<&'static str> {
    if rule.action != super::rule::Action::Allow {
        return None;
    }
    match &rule.target {
        Target::Host => Some("the host's loopback services"),
        Target::Private => Some("private addresses, the host's own among them"),
        Target::Metadata => Some("the cloud metadata endpoints"),
        Target::Domain { .. } => None,
        Target::Cidr(c) => {
            if c.prefix == c.max_prefix() && host_addrs.iter().any(|h| effective(*h) == c.addr) {
                return Some("the host's own address");
            }
            ranges().iter().find(|(r, _)| c.prefix >= r.prefix && r.contains(c.addr)).map(|(_, r)| r.why)
        }
    }
}

/// Warnings for allow rules whose CIDR contains one of the host's own
/// addresses without naming it: those addresses stay blocked, and the user
/// should hear so rather than find out from a refused connection.
pub fn host_address_notes(rules: &[Rule], env: &Env) -> Vec<String> {
    let mut notes = Vec::new();
    for r in rules.iter().filter(|r| r.action == super::rule::Action::Allow) {
        let Target::Cidr(c) = &r.target else { continue };
        if c.prefix == c.max_prefix() {
            continue;
        }
        let mut inside: Vec<IpAddr> =
            env.host_addrs.iter().map(|h| effective(*h)).filter(|h| c.contains(*h) && !h.is_loopback()).collect();
        inside.sort();
        inside.dedup();
        if inside.is_empty() {
            continue;
        }
        let list = inside.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ");
        let (s, verb) = if inside.len() == 1 { ("", "stays") } else { ("es", "stay") };
        notes.push(format!(
            "allow rule {:?} contains this host's own address{s} {list}, which {verb} blocked; \
             name an address exactly (e.g. --allow {}) or use `private` to open it",
            r.text, inside[0]
        ));
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::rule::{parse, Action};

    fn env() -> Env {
        Env {
            gateways: vec![],
            host_addrs: vec!["192.0.2.2".parse().unwrap(), "169.254.9.9".parse().unwrap(), "fd00::2".parse().unwrap()],
        }
    }

    fn g(ip: &str) -> Option<Guard> {
        guard(ip.parse().unwrap(), &env())
    }

    #[test]
    fn test_guard_table() {
        let cases = [
            ("169.254.169.254", Some("link-local (cloud metadata and credentials)")),
            ("169.254.170.2", Some("link-local (cloud metadata and credentials)")),
            ("fe80::1", Some("IPv6 link-local")),
            ("fd00:ec2::23", Some("AWS metadata (IPv6)")),
            ("168.63.129.16", Some("Azure wire server")),
            ("100.100.100.200", Some("Alibaba Cloud metadata")),
            ("224.0.0.1", Some("multicast")),
            ("239.255.255.250", Some("multicast")),
            ("ff02::1", Some("multicast")),
            ("255.255.255.255", Some("broadcast")),
            ("127.0.0.53", Some("loopback")),
            ("0.0.0.0", Some("unspecified address")),
            ("192.0.2.2", Some("the host's own address")),
            ("169.254.9.9", Some("the host's own address")),
            ("168.63.129.17", None),
            ("100.100.100.201", None),
            ("198.51.100.2", None),
            ("fd00:ec3::1", None),
        ];
        for (ip, want) in cases {
            assert_eq!(g(ip).map(|g| g.why), want, "{ip}");
        }
        assert!(g("224.0.0.1").unwrap().to_many && g("255.255.255.255").unwrap().to_many);
        assert!(!g("169.254.169.254").unwrap().to_many);
    }

    #[test]
    fn test_opens_only_rules_inside_the_guarded_range() {
        let allow = |s: &str| parse(s, Action::Allow).unwrap();
        let cases = [
            ("169.254.169.254", "169.254.169.254", true),
            ("169.254.169.254", "169.254.0.0/16", true),
            ("169.254.169.254", "169.254.169.0/24:80", true),
            ("169.254.169.254", "169.0.0.0/8", false),
            ("169.254.169.254", "0.0.0.0/0", false),
            ("169.254.169.254", "metadata", true),
            ("169.254.169.254", "private", true),
            ("fe80::1", "[fe80::/10]", true),
            ("fe80::1", "::/0", false),
            ("224.0.0.1", "udp/224.0.0.1", true),
            ("224.0.0.1", "224.0.0.0/4", true),
            ("224.0.0.1", "224.0.0.0/3", false),
            ("224.0.0.1", "metadata", false),
            ("192.0.2.2", "192.0.2.2", true),
            ("192.0.2.2", "192.0.2.0/24", false),
            ("192.0.2.2", "private", true),
            ("169.254.9.9", "169.254.0.0/16", false),
            ("169.254.9.9", "metadata", false),
            ("192.0.2.2", "*.example.org", false),
        ];
        for (ip, rule, want) in cases {
            assert_eq!(opens(&allow(rule), &g(ip).unwrap()), want, "{rule} opening {ip}");
        }
    }

    #[test]
    fn test_untrusted_rules_never_open_guarded() {
        let allow = |s: &str| parse(s, Action::Allow).unwrap();
        for (ip, rule) in [
            ("169.254.169.254", "169.254.169.254"),
            ("169.254.169.254", "metadata"),
            ("169.254.169.254", "private"),
            ("224.0.0.1", "udp/224.0.0.1"),
            ("192.0.2.2", "192.0.2.2"),
            ("192.0.2.2", "private"),
        ] {
            assert!(opens(&allow(rule), &g(ip).unwrap()), "positive control: {rule} opens {ip}");
            assert!(!opens(&allow(rule).untrusted(), &g(ip).unwrap()), "untrusted {rule} opening {ip}");
        }
    }

    #[test]
    fn test_names_guarded_table() {
        let hosts: Vec<IpAddr> = vec!["192.0.2.2".parse().unwrap(), "::ffff:198.51.100.7".parse().unwrap()];
        let cases = [
            ("host:8765", Some("the host's loopback services")),
            ("tcp/host:22", Some("the host's loopback services")),
            ("private", Some("private addresses, the host's own among them")),
            ("metadata", Some("the cloud metadata endpoints")),
            ("169.254.169.254", Some("link-local (cloud metadata and credentials)")),
            ("169.254.0.0/16:80", Some("link-local (cloud metadata and credentials)")),
            ("[fd00:ec2::254]:80", Some("AWS metadata (IPv6)")),
            ("[fe80::/64]", Some("IPv6 link-local")),
            ("udp/224.0.0.251:5353", Some("multicast")),
            ("255.255.255.255", Some("broadcast")),
            ("127.0.0.1:22", Some("loopback")),
            ("[::1]:22", Some("loopback")),
            ("168.63.129.16", Some("Azure wire server")),
            ("100.100.100.200", Some("Alibaba Cloud metadata")),
            ("0.1.2.3", Some("unspecified address")),
            ("192.0.2.2", Some("the host's own address")),
            ("tcp/192.0.2.2:22", Some("the host's own address")),
            ("198.51.100.7", Some("the host's own address")),
            // Wide CIDRs never open guarded destinations anyway.
            ("192.0.2.0/24", None),
            ("0.0.0.0/0", None),
            ("169.0.0.0/8", None),
            ("203.0.113.0/24:443", None),
            ("*.crates.io:443", None),
            ("168.63.129.17", None),
        ];
        for (rule, want) in cases {
            assert_eq!(names_guarded(&parse(rule, Action::Allow).unwrap(), &hosts), want, "{rule}");
        }
        assert_eq!(names_guarded(&parse("metadata", Action::Deny).unwrap(), &hosts), None, "deny opens nothing");
    }

    #[test]
    fn test_host_address_notes() {
        let rules: Vec<Rule> = ["192.0.2.0/24", "192.0.2.2", "198.51.100.0/24", "[fd00::/64]:443"]
            .iter()
            .map(|s| parse(s, Action::Allow).unwrap())
            .chain([parse("192.0.0.0/8", Action::Deny).unwrap()])
            .collect();
        let notes = host_address_notes(&rules, &env());
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].contains("\"192.0.2.0/24\"") && notes[0].contains("192.0.2.2, which stays blocked"));
        assert!(notes[1].contains("fd00::2"), "{notes:?}");
        let mut e = env();
        e.host_addrs.push("192.0.2.9".parse().unwrap());
        let notes = host_address_notes(&rules[..1], &e);
        assert!(notes[0].contains("addresses 192.0.2.2, 192.0.2.9, which stay blocked"), "{notes:?}");
    }
}
