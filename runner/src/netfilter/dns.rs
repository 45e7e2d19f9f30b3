//! The gate's DNS: parse the guest's query, answer NXDOMAIN for names no rule
//! allows (without asking anyone), resolve allowed names upstream, drop
//! answers in the private set (DNS rebinding), and build the reply. Pure
//! message handling plus one async upstream exchange.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

pub const TYPE_A: u16 = 1;
pub const TYPE_AAAA: u16 = 28;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    pub name: String,
    pub qtype: u16,
    /// The question section as sent, echoed in the reply.
    pub question: Vec<u8>,
    pub rd: bool,
}

/// Parses a standard query with exactly one question.
pub fn parse_query(b: &[u8]) -> Option<Query> {
    if b.len() < 12 || b[2] & 0x80 != 0 || (b[2] >> 3) & 0x0f != 0 {
        return None;
    }
    let qd = u16::from_be_bytes([b[4], b[5]]);
    if qd != 1 {
        return None;
    }
    let (name, end) = read_name(b, 12, 0)?;
    let qtype = u16::from_be_bytes([*b.get(end)?, *b.get(end + 1)?]);
    let _class = u16::from_be_bytes([*b.get(end + 2)?, *b.get(end + 3)?]);
    Some(Query {
        id: u16::from_be_bytes([b[0], b[1]]),
        name,
        qtype,
        question: b[12..end + 4].to_vec(),
        rd: b[2] & 1 != 0,
    })
}

/// Reads a (possibly compressed) name at `o`; returns it and the offset after it.
fn read_name(b: &[u8], mut o: usize, depth: u8) -> Option<(String, usize)> {
    if depth > 8 {
        return None;
    }
    let mut labels: Vec<String> = Vec::new();
    let mut total = 0;
    loop {
        let len = *b.get(o)? as usize;
        if len == 0 {
            o += 1;
            break;
        }
        if len & 0xc0 == 0xc0 {
            let ptr = (usize::from(b[o] & 0x3f) << 8) | usize::from(*b.get(o + 1)?);
            if ptr >= o {
                return None;
            }
            let (rest, _) = read_name(b, ptr, depth + 1)?;
            if !rest.is_empty() {
                labels.push(rest);
            }
            o += 2;
            break;
        }
        if len > 63 {
            return None;
        }
        let l = b.get(o + 1..o + 1 + len)?;
        total += len + 1;
        if total > 255 {
            return None;
        }
        labels.push(String::from_utf8_lossy(l).to_ascii_lowercase());
        o += 1 + len;
    }
    Some((labels.join("."), o))
}

/// A reply to `q` with `rcode` and the given records.
pub fn reply(q: &Query, rcode: u8, answers: &[(IpAddr, u32)]) -> Vec<u8> {
    let mut r = Vec::with_capacity(64);
    r.extend_from_slice(&q.id.to_be_bytes());
    r.push(0x80 | u8::from(q.rd)); // QR, RD echoed
    r.push(0x80 | (rcode & 0x0f)); // RA
    r.extend_from_slice(&1u16.to_be_bytes());
    r.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]);
    r.extend_from_slice(&q.question);
    for (ip, ttl) in answers {
        r.extend_from_slice(&[0xc0, 12]); // pointer to the question name
        let (t, data): (u16, Vec<u8>) = match ip {
            IpAddr::V4(a) => (TYPE_A, a.octets().to_vec()),
            IpAddr::V6(a) => (TYPE_AAAA, a.octets().to_vec()),
        };
        r.extend_from_slice(&t.to_be_bytes());
        r.extend_from_slice(&1u16.to_be_bytes());
        r.extend_from_slice(&ttl.to_be_bytes());
        r.extend_from_slice(&(data.len() as u16).to_be_bytes());
        r.extend_from_slice(&data);
    }
    r
}

/// Builds a fresh query for `name`/`qtype` with `id`.
pub fn build_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(32 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for l in name.split('.').filter(|l| !l.is_empty()) {
        q.push(l.len() as u8);
        q.extend_from_slice(l.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    q
}

/// The rcode and A/AAAA records of a response to query `id`.
pub fn parse_answers(b: &[u8], id: u16) -> Option<(u8, Vec<(IpAddr, u32)>)> {
    if b.len() < 12 || u16::from_be_bytes([b[0], b[1]]) != id || b[2] & 0x80 == 0 {
        return None;
    }
    let rcode = b[3] & 0x0f;
    let qd = u16::from_be_bytes([b[4], b[5]]);
    let an = u16::from_be_bytes([b[6], b[7]]);
    let mut o = 12;
    for _ in 0..qd {
        o = read_name(b, o, 0)?.1 + 4;
    }
    let mut out = Vec::new();
    for _ in 0..an {
        o = read_name(b, o, 0)?.1;
        let t = u16::from_be_bytes([*b.get(o)?, *b.get(o + 1)?]);
        let ttl = u32::from_be_bytes(b.get(o + 4..o + 8)?.try_into().ok()?);
        let len = usize::from(u16::from_be_bytes([*b.get(o + 8)?, *b.get(o + 9)?]));
        let data = b.get(o + 10..o + 10 + len)?;
        match (t, len) {
            (TYPE_A, 4) => out.push((IpAddr::from(<[u8; 4]>::try_from(data).ok()?), ttl)),
            (TYPE_AAAA, 16) => out.push((IpAddr::from(<[u8; 16]>::try_from(data).ok()?), ttl)),
            _ => {}
        }
        o += 10 + len;
    }
    Some((rcode, out))
}

/// The upstream resolver: `CORDON_DNS_UPSTREAM` (ip:port), else the first
/// nameserver in /etc/resolv.conf.
pub fn upstream() -> Option<SocketAddr> {
    if let Some(s) = std::env::var_os("CORDON_DNS_UPSTREAM") {
        return s.to_str()?.parse().ok();
    }
    let conf = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    conf.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .next()
}

/// Asks `server` for `name`/`qtype` once (with one retry).
pub async fn resolve(server: SocketAddr, name: &str, qtype: u16) -> Option<(u8, Vec<(IpAddr, u32)>)> {
    let bind: SocketAddr = if server.is_ipv4() { "0.0.0.0:0".parse().ok()? } else { "[::]:0".parse().ok()? };
    let sock = tokio::net::UdpSocket::bind(bind).await.ok()?;
    sock.connect(server).await.ok()?;
    let mut idb = [0u8; 2];
    // SAFETY: idb is a valid 2-byte buffer.
    unsafe { libc::getrandom(idb.as_mut_ptr().cast(), 2, 0) };
    let id = u16::from_be_bytes(idb);
    let q = build_query(id, name, qtype);
    let mut buf = vec![0u8; 4096];
    for _ in 0..2 {
        sock.send(&q).await.ok()?;
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(2), sock.recv(&mut buf)).await {
            if let Some(r) = parse_answers(&buf[..n], id) {
                return Some(r);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_query_round_trip_and_reply() {
        let q = build_query(0x1234, "Pkg.Example.org", TYPE_A);
        let p = parse_query(&q).unwrap();
        assert_eq!((p.id, p.name.as_str(), p.qtype), (0x1234, "pkg.example.org", TYPE_A));
        let r = reply(&p, 0, &[("203.0.113.5".parse().unwrap(), 60)]);
        let (rcode, ans) = parse_answers(&r, 0x1234).unwrap();
        assert_eq!(rcode, 0);
        assert_eq!(ans, vec![("203.0.113.5".parse().unwrap(), 60)]);
        let nx = reply(&p, 3, &[]);
        assert_eq!(parse_answers(&nx, 0x1234).unwrap(), (3, vec![]));
        assert!(parse_answers(&nx, 0x9999).is_none(), "wrong id");
    }

    #[test]
    fn test_parse_rejects_garbage_and_loops() {
        assert!(parse_query(b"").is_none());
        assert!(parse_query(&[0u8; 12]).is_none(), "no question");
        // A compression pointer pointing at itself.
        let mut q = build_query(1, "a.org", TYPE_A);
        q[12] = 0xc0;
        q[13] = 12;
        assert!(parse_query(&q).is_none());
        let mut x: u64 = 0x1234_5678_9abc_def1;
        for i in 0..20_000 {
            let mut b = build_query(7, "www.example.org", TYPE_AAAA);
            let mut r = reply(&parse_query(&b).unwrap(), 0, &[("2001:db8::1".parse().unwrap(), 5)]);
            for buf in [&mut b, &mut r] {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let p = (x as usize) % buf.len();
                buf[p] = (x >> 40) as u8;
                buf.truncate((x as usize >> 16) % (buf.len() + 1).max(1) + i % 2);
            }
            let _ = parse_query(&b);
            let _ = parse_answers(&r, 7);
        }
    }
}
