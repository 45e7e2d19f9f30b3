//! The flow table's key and hash. Every frame, both ways, is looked up in
//! the flow table, so the hash is on the per-frame path: a keyed
//! multiply-fold hash (the wyhash/foldhash construction) over the key packed
//! into 64-bit words, one 128-bit multiply per pair of words, instead of
//! SipHash-1-3 over 39 bytes.
//!
//! Why a hash weaker than SipHash is acceptable here: the only party that
//! chooses the keys of new entries is the sandbox (flows are inserted on the
//! guest's first packet only; passt's frames never insert), and it does not
//! know the key: 256 bits drawn per gate from the OS's randomness (through
//! std's `RandomState`), never shown to the guest. Its only oracle is timing.
//! Even if it found colliding keys, the damage is bounded: the table holds at
//! most `MAX_FLOWS` entries, which expire when idle, and the cost lands on
//! the sandbox's own relay, whose frames it could spend anyway.

use std::hash::{BuildHasher, Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A flow's protocol, addresses and ports, packed into five 64-bit words:
/// compared as such and hashed without matching on address families. 40
/// bytes, so that a table entry (key and flow) stays within few cache lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowKey {
    /// proto << 48 | source family << 40 | destination family << 32 |
    /// sport << 16 | dport; a family is 4 or 6, which keeps an IPv4 address
    /// apart from its IPv4-mapped IPv6 form.
    meta: u64,
    /// IPv4: [source << 32 | destination, 0, 0, 0]; otherwise both
    /// addresses as 128 bits each, high half first.
    addrs: [u64; 4],
}

const FAMILIES: u64 = 0xffff << 32;
const V4V4: u64 = 4 << 40 | 4 << 32;

/// An address as 128 bits and its family tag.
fn addr_bits(a: IpAddr) -> (u64, u128) {
    match a {
        IpAddr::V4(v) => (4, u128::from(u32::from(v))),
        IpAddr::V6(v) => (6, u128::from(v)),
    }
}

fn addr_of(family: u64, bits: u128) -> IpAddr {
    if family == 4 {
        IpAddr::V4(Ipv4Addr::from(bits as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(bits))
    }
}

fn meta(proto: u8, sf: u64, sport: u16, df: u64, dport: u16) -> u64 {
    u64::from(proto) << 48 | sf << 40 | df << 32 | u64::from(sport) << 16 | u64::from(dport)
}

impl FlowKey {
    pub fn new(proto: u8, src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> FlowKey {
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => FlowKey::v4(proto, s.into(), sport, d.into(), dport),
            _ => {
                let ((sf, s), (df, d)) = (addr_bits(src), addr_bits(dst));
                let addrs = [(s >> 64) as u64, s as u64, (d >> 64) as u64, d as u64];
                FlowKey { meta: meta(proto, sf, sport, df, dport), addrs }
            }
        }
    }

    /// As `new` for two IPv4 addresses given as integers (as `u32::from`).
    pub fn v4(proto: u8, src: u32, sport: u16, dst: u32, dport: u16) -> FlowKey {
        let addrs = [u64::from(src) << 32 | u64::from(dst), 0, 0, 0];
        FlowKey { meta: meta(proto, 4, sport, 4, dport), addrs }
    }

    /// As `new` for two IPv6 addresses given as integers (as `u128::from`).
    pub fn v6(proto: u8, src: u128, sport: u16, dst: u128, dport: u16) -> FlowKey {
        let addrs = [(src >> 64) as u64, src as u64, (dst >> 64) as u64, dst as u64];
        FlowKey { meta: meta(proto, 6, sport, 6, dport), addrs }
    }

    fn is_v4(&self) -> bool {
        self.meta & FAMILIES == V4V4
    }

    pub fn proto(&self) -> u8 {
        (self.meta >> 48) as u8
    }

    pub fn src(&self) -> IpAddr {
        if self.is_v4() {
            return IpAddr::V4(Ipv4Addr::from((self.addrs[0] >> 32) as u32));
        }
        addr_of(self.meta >> 40 & 0xff, u128::from(self.addrs[0]) << 64 | u128::from(self.addrs[1]))
    }

    pub fn sport(&self) -> u16 {
        (self.meta >> 16) as u16
    }

    pub fn dst(&self) -> IpAddr {
        if self.is_v4() {
            return IpAddr::V4(Ipv4Addr::from(self.addrs[0] as u32));
        }
        addr_of(self.meta >> 32 & 0xff, u128::from(self.addrs[2]) << 64 | u128::from(self.addrs[3]))
    }

    pub fn dport(&self) -> u16 {
        self.meta as u16
    }
}

/// Written as whole 128-bit words (one multiply each with `FlowHasher`),
/// distinct keys as distinct word sequences.
impl Hash for FlowKey {
    fn hash<H: Hasher>(&self, h: &mut H) {
        if self.is_v4() {
            // The common case: the whole key in one word.
            h.write_u128(u128::from(self.meta) << 64 | u128::from(self.addrs[0]));
        } else {
            let a = |i: usize| u128::from(self.addrs[i]) << 64 | u128::from(self.addrs[i + 1]);
            h.write_u128(u128::from(self.meta));
            h.write_u128(a(0));
            h.write_u128(a(2));
        }
    }
}

/// The 128-bit product of `a` and `b`, its halves folded together.
fn fold_mul(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

/// Builds `FlowHasher`s with this table's secret key.
#[derive(Clone)]
pub struct FlowHashKey([u64; 4]);

impl FlowHashKey {
    /// A fresh random key. std's `RandomState` holds 128 bits from the OS's
    /// randomness; SipHash under that key turns four constants into four
    /// words nobody without the key can predict.
    pub fn random() -> FlowHashKey {
        let s = std::collections::hash_map::RandomState::new();
        FlowHashKey([0u64, 1, 2, 3].map(|i| s.hash_one(i)))
    }
}

impl BuildHasher for FlowHashKey {
    type Hasher = FlowHasher;

    fn build_hasher(&self) -> FlowHasher {
        FlowHasher { acc: self.0[0], k: [self.0[1], self.0[2], self.0[3]] }
    }
}

pub struct FlowHasher {
    acc: u64,
    k: [u64; 3],
}

impl Hasher for FlowHasher {
    fn write_u128(&mut self, x: u128) {
        // Key material on both operands, so no chosen word can zero either
        // without knowing the key; the accumulator chains the pairs.
        self.acc = fold_mul((x >> 64) as u64 ^ self.k[0] ^ self.acc, x as u64 ^ self.k[1]);
    }

    /// Any other input (not used by `FlowKey`): 16 bytes at a time, the
    /// last zero-padded, then its length.
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(16) {
            let mut b = [0u8; 16];
            b[..c.len()].copy_from_slice(c);
            self.write_u128(u128::from_le_bytes(b));
        }
        self.write_u128(bytes.len() as u128);
    }

    fn finish(&self) -> u64 {
        fold_mul(self.acc ^ self.k[2], self.k[0] | 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn key(proto: u8, src: &str, sport: u16, dst: &str, dport: u16) -> FlowKey {
        FlowKey::new(proto, src.parse().unwrap(), sport, dst.parse().unwrap(), dport)
    }

    #[test]
    fn test_flow_key_packs_and_unpacks() {
        assert_eq!(std::mem::size_of::<FlowKey>(), 40);
        for (src, dst) in [("10.0.2.15", "203.0.113.5"), ("fd00:c0de::15", "2001:db8::1"), ("10.0.2.15", "::1")] {
            let k = key(17, src, 5000, dst, 53);
            assert_eq!(
                (k.proto(), k.src(), k.sport(), k.dst(), k.dport()),
                (17, src.parse().unwrap(), 5000, dst.parse().unwrap(), 53)
            );
        }
        let (s, d) =
            ("10.0.2.15".parse::<std::net::Ipv4Addr>().unwrap(), "203.0.113.5".parse::<std::net::Ipv4Addr>().unwrap());
        assert_eq!(FlowKey::v4(6, s.into(), 1, d.into(), 2), key(6, "10.0.2.15", 1, "203.0.113.5", 2));
        let (s, d) =
            ("fd00::15".parse::<std::net::Ipv6Addr>().unwrap(), "2001:db8::1".parse::<std::net::Ipv6Addr>().unwrap());
        assert_eq!(FlowKey::v6(6, s.into(), 1, d.into(), 2), key(6, "fd00::15", 1, "2001:db8::1", 2));
        assert_ne!(key(6, "10.0.2.15", 1, "203.0.113.5", 2), key(6, "::ffff:10.0.2.15", 1, "::ffff:203.0.113.5", 2));
    }

    #[test]
    fn test_flow_hash_equal_keys_hash_equal_and_keys_differ() {
        let k = FlowHashKey::random();
        let a = key(6, "10.0.2.15", 5000, "203.0.113.5", 443);
        assert_eq!(k.hash_one(a), k.hash_one(a));
        let others = [
            key(17, "10.0.2.15", 5000, "203.0.113.5", 443),
            key(6, "10.0.2.15", 5001, "203.0.113.5", 443),
            key(6, "10.0.2.15", 5000, "203.0.113.6", 443),
            key(6, "10.0.2.15", 443, "203.0.113.5", 5000),
            key(6, "203.0.113.5", 5000, "10.0.2.15", 443),
            key(6, "::ffff:10.0.2.15", 5000, "::ffff:203.0.113.5", 443),
        ];
        for o in others {
            assert_ne!(k.hash_one(a), k.hash_one(o), "{o:?}");
        }
    }

    #[test]
    fn test_flow_hash_key_is_per_table() {
        let a = key(6, "fd00:c0de::15", 5000, "2001:db8::1", 443);
        let (k1, k2) = (FlowHashKey::random(), FlowHashKey::random());
        assert_ne!(k1.hash_one(a), k2.hash_one(a));
    }

    /// The bucket bits (low) and tag bits (top 7) hashbrown uses spread
    /// well over keys a guest might choose: sequential ports and addresses.
    #[test]
    fn test_flow_hash_spreads_sequential_keys() {
        let k = FlowHashKey::random();
        let mut low = HashSet::new();
        let mut top = HashSet::new();
        for i in 0..4096u32 {
            let dst = std::net::Ipv4Addr::from(0xcb00_7100 + (i >> 8)).to_string();
            let h = k.hash_one(key(6, "10.0.2.15", (i & 0xff) as u16, &dst, 443));
            low.insert(h & 0xfff);
            top.insert(h >> 57);
        }
        // 4096 random draws into 4096 buckets fill about 63% of them.
        assert!(low.len() > 2400, "{} of 4096 buckets", low.len());
        assert_eq!(top.len(), 128);
    }
}
