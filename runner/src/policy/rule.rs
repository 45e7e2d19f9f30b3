//! Network rules as users write them, parsed into a typed form. Pure.
//!
//! Grammar: `[tcp/|udp/|icmp/]TARGET[:PORT|:LOW-HIGH]` where TARGET is an
//! IPv4 address or CIDR, `[IPv6]` or `[IPv6/len]` (brackets needed with a
//! port; a bare IPv6 address or CIDR without port is accepted too), a domain
//! `example.org` or `*.example.org`, `host` (the host's own loopback
//! services, through the gateway address), or the tokens `private` and
//! `metadata`.

use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn new(addr: IpAddr, prefix: u8) -> Cidr {
        Cidr { addr: mask(addr, prefix), prefix }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => mask(ip, self.prefix) == self.addr,
            _ => false,
        }
    }

    pub fn max_prefix(&self) -> u8 {
        if self.addr.is_ipv4() {
            32
        } else {
            128
        }
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let m = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix.min(32)) };
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let m = if prefix == 0 { 0 } else { u128::MAX << (128 - prefix.min(128)) };
            IpAddr::V6((bits & m).into())
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Cidr(Cidr),
    /// A DNS name; `wildcard` matches strict subdomains (`*.example.org`).
    Domain {
        name: String,
        wildcard: bool,
    },
    /// The host's own loopback services, reached through the gateway address.
    Host,
    Private,
    Metadata,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// As the user wrote it, for the audit log and errors.
    pub text: String,
    pub action: Action,
    pub proto: Option<Proto>,
    pub target: Target,
    pub ports: Option<(u16, u16)>,
    /// Whether the rule may open guarded destinations (`guard.rs`) at all:
    /// false for a rule from a job file the user did not trust
    /// (`--trust-job`). Such a rule only ever opens ordinary destinations,
    /// even when the host later gains the address it names.
    pub may_open_guarded: bool,
}

impl Rule {
    /// The same rule, never opening a guarded destination.
    pub fn untrusted(self) -> Rule {
        Rule { may_open_guarded: false, ..self }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid network rule {rule:?}: {why}")]
pub struct RuleError {
    pub rule: String,
    pub why: String,
}

fn parse_ports(s: &str) -> Result<(u16, u16), String> {
    let one = |p: &str| -> Result<u16, String> {
        match p.parse::<u16>() {
            Ok(0) | Err(_) => Err(format!("{p:?} is not a port (1-65535)")),
            Ok(n) => Ok(n),
        }
    };
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (one(a)?, one(b)?);
            if a > b {
                return Err(format!("port range {a}-{b} is backwards"));
            }
            Ok((a, b))
        }
        None => one(s).map(|p| (p, p)),
    }
}

fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let (a, p) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let addr: IpAddr = a.parse().map_err(|_| format!("{a:?} is not an IP address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match p {
        Some(p) => p.parse::<u8>().ok().filter(|&n| n <= max).ok_or_else(|| format!("bad prefix length /{p}"))?,
        None => max,
    };
    Ok(Cidr::new(addr, prefix))
}

fn valid_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.contains('.')
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
        && !d.split('.').next_back().is_some_and(|tld| tld.chars().all(|c| c.is_ascii_digit()))
}

pub fn parse(text: &str, action: Action) -> Result<Rule, RuleError> {
    let err = |why: String| RuleError { rule: text.to_string(), why };
    let s = text.trim();
    if s.is_empty() {
        return Err(err("empty rule".into()));
    }
    let (proto, rest) = match s.split_once('/') {
        Some(("tcp", r)) => (Some(Proto::Tcp), r),
        Some(("udp", r)) => (Some(Proto::Udp), r),
        Some(("icmp", r)) => (Some(Proto::Icmp), r),
        _ => (None, s),
    };
    // Split TARGET and PORT.
    let (target_s, port_s) = if let Some(inner) = rest.strip_prefix('[') {
        let (addr, after) = inner.split_once(']').ok_or_else(|| err("missing ] after IPv6 address".into()))?;
        match after {
            "" => (addr, None),
            a => (addr, Some(a.strip_prefix(':').ok_or_else(|| err(format!("unexpected {a:?} after ]")))?)),
        }
    } else if rest.matches(':').count() > 1 {
        // A bare IPv6 address or CIDR cannot carry a port.
        (rest, None)
    } else {
        match rest.split_once(':') {
            Some((t, p)) => (t, Some(p)),
            None => (rest, None),
        }
    };
    let ports = port_s.map(parse_ports).transpose().map_err(err)?;
    let lower = target_s.to_ascii_lowercase();
    let target = match lower.as_str() {
        "" => return Err(err("no target before the port".into())),
        "host" => {
            if ports.is_none() {
                return Err(err("host needs a port: host:PORT names one loopback service of the host".into()));
            }
            Target::Host
        }
        "private" => Target::Private,
        "metadata" => Target::Metadata,
        t if t.parse::<IpAddr>().is_ok() || t.contains('/') => Target::Cidr(parse_cidr(t).map_err(err)?),
        t => {
            let (wildcard, name) = match t.strip_prefix("*.") {
                Some(n) => (true, n),
                None => (false, t),
            };
            let name = name.trim_end_matches('.');
            if !valid_domain(name) {
                return Err(err(format!("{target_s:?} is neither an address, a CIDR, a domain nor a token")));
            }
            Target::Domain { name: name.to_string(), wildcard }
        }
    };
    if proto == Some(Proto::Icmp) && ports.is_some() {
        return Err(err("icmp has no ports".into()));
    }
    Ok(Rule { text: text.to_string(), action, proto, target, ports, may_open_guarded: true })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Rule {
        parse(s, Action::Allow).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn test_parse_good_rules() {
        let r = ok("10.0.0.0/8");
        assert_eq!(r.target, Target::Cidr(Cidr::new("10.0.0.0".parse().unwrap(), 8)));
        assert_eq!((r.proto, r.ports), (None, None));
        assert_eq!(ok("203.0.113.5:443").ports, Some((443, 443)));
        assert_eq!(ok("203.0.113.0/24:8000-8100").ports, Some((8000, 8100)));
        let r = ok("[2001:db8::1]:53");
        assert_eq!(r.target, Target::Cidr(Cidr::new("2001:db8::1".parse().unwrap(), 128)));
        assert_eq!(r.ports, Some((53, 53)));
        assert_eq!(ok("[2001:db8::/32]").target, Target::Cidr(Cidr::new("2001:db8::".parse().unwrap(), 32)));
        assert_eq!(ok("2001:db8::/32").ports, None);
        let r = ok("tcp/203.0.113.0/24:22");
        assert_eq!((r.proto, r.ports), (Some(Proto::Tcp), Some((22, 22))));
        assert_eq!(ok("udp/8.8.8.8:53").proto, Some(Proto::Udp));
        assert_eq!(ok("example.org").target, Target::Domain { name: "example.org".into(), wildcard: false });
        let r = ok("*.Example.org:443");
        assert_eq!(r.target, Target::Domain { name: "example.org".into(), wildcard: true });
        assert_eq!(r.ports, Some((443, 443)));
        assert_eq!(ok("host:8080").target, Target::Host);
        assert_eq!(ok("private").target, Target::Private);
        assert_eq!(ok("metadata").target, Target::Metadata);
        assert_eq!(ok("icmp/0.0.0.0/0").proto, Some(Proto::Icmp));
        // Host bits are masked off.
        assert_eq!(ok("10.1.2.3/8").target, Target::Cidr(Cidr::new("10.0.0.0".parse().unwrap(), 8)));
    }

    #[test]
    fn test_parse_bad_rules_name_the_rule() {
        for bad in [
            "",
            "10.0.0.0/33",
            "[2001:db8::]/200",
            "10.0.0.1:0",
            "10.0.0.1:70000",
            "10.0.0.1:90-80",
            "host",
            "[2001:db8::1",
            "[::1]x",
            "sctp/1.2.3.4",
            "not_a_domain",
            "-bad-.org",
            "1.2.3",
            ":80",
            "icmp/1.2.3.4:80",
            "a..b.org",
        ] {
            let e = parse(bad, Action::Deny).unwrap_err();
            assert_eq!(e.rule, bad);
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn test_cidr_contains() {
        let c = Cidr::new("10.0.0.0".parse().unwrap(), 8);
        assert!(c.contains("10.255.1.1".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(!c.contains("::ffff:10.0.0.1".parse().unwrap()), "families never mix");
        assert!(Cidr::new("0.0.0.0".parse().unwrap(), 0).contains("1.2.3.4".parse().unwrap()));
        assert!(Cidr::new("2001:db8::".parse().unwrap(), 32).contains("2001:db8:1::5".parse().unwrap()));
    }
}
