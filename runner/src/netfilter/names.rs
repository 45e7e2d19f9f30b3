//! What the gate remembers from DNS, bounded so that a guest asking for
//! endless names cannot grow it: the names each address was learned under
//! (for domain rules), and a small cache of recent answers (question and
//! records only). Pure.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Names remembered per address; the one expiring first makes room.
pub const MAX_NAMES_PER_ADDR: usize = 8;
/// Names remembered in all; the one expiring first makes room.
pub const MAX_NAMES: usize = 4096;
/// Answers cached; the one expiring first makes room.
pub const CACHE_ENTRIES: usize = 256;
/// The longest an answer is cached, whatever its TTL: small, so that the
/// cache only absorbs bursts (a build asking for the same name per file).
pub const CACHE_TTL_MAX: Duration = Duration::from_secs(30);
/// How long an answer without records (NXDOMAIN, NODATA) is cached.
pub const CACHE_NEGATIVE_TTL: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
pub struct Names {
    by_addr: HashMap<IpAddr, Vec<(String, Instant)>>,
    total: usize,
}

impl Names {
    /// Remembers `name` for `ip` until `exp`.
    pub fn learn(&mut self, name: &str, ip: IpAddr, exp: Instant, now: Instant) {
        if let Some(v) = self.by_addr.get_mut(&ip) {
            if let Some(e) = v.iter_mut().find(|(n, _)| n == name) {
                e.1 = e.1.max(exp);
                return;
            }
        }
        if self.total >= MAX_NAMES {
            self.expire(now);
        }
        if self.total >= MAX_NAMES {
            let oldest = self
                .by_addr
                .iter()
                .flat_map(|(ip, v)| v.iter().map(move |(_, e)| (*e, *ip)))
                .min()
                .map(|(_, ip)| ip)
                .expect("total > 0 means some entry");
            self.evict_first_expiring(oldest);
        }
        let v = self.by_addr.entry(ip).or_default();
        if v.len() >= MAX_NAMES_PER_ADDR {
            self.evict_first_expiring(ip);
        }
        self.by_addr.entry(ip).or_default().push((name.to_string(), exp));
        self.total += 1;
    }

    fn evict_first_expiring(&mut self, ip: IpAddr) {
        let Some(v) = self.by_addr.get_mut(&ip) else { return };
        if let Some(i) = (0..v.len()).min_by_key(|&i| v[i].1) {
            v.swap_remove(i);
            self.total -= 1;
        }
        if v.is_empty() {
            self.by_addr.remove(&ip);
        }
    }

    /// The live names for `ip`.
    pub fn get(&self, ip: IpAddr, now: Instant) -> Vec<String> {
        self.by_addr
            .get(&ip)
            .map(|v| v.iter().filter(|(_, exp)| *exp > now).map(|(n, _)| n.clone()).collect())
            .unwrap_or_default()
    }

    pub fn expire(&mut self, now: Instant) {
        let mut total = 0;
        self.by_addr.retain(|_, v| {
            v.retain(|(_, e)| *e > now);
            total += v.len();
            !v.is_empty()
        });
        self.total = total;
    }

    pub fn len(&self) -> usize {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }
}

#[derive(Debug, Clone)]
struct Entry {
    rcode: u8,
    records: Vec<(IpAddr, u32)>,
    expires: Instant,
}

/// Recent answers by (name, qtype).
#[derive(Debug, Default)]
pub struct Cache {
    entries: HashMap<(String, u16), Entry>,
}

impl Cache {
    /// The cached answer, with TTLs counted down to what is left (at least 1).
    pub fn get(&self, name: &str, qtype: u16, now: Instant) -> Option<(u8, Vec<(IpAddr, u32)>)> {
        let e = self.entries.get(&(name.to_string(), qtype)).filter(|e| e.expires > now)?;
        let left = e.expires.duration_since(now).as_secs().max(1);
        let records = e.records.iter().map(|(ip, ttl)| (*ip, (*ttl).min(left as u32).max(1))).collect();
        Some((e.rcode, records))
    }

    /// Caches an answer for its smallest TTL, at most CACHE_TTL_MAX; empty
    /// answers for CACHE_NEGATIVE_TTL.
    pub fn put(&mut self, name: &str, qtype: u16, rcode: u8, records: &[(IpAddr, u32)], now: Instant) {
        let ttl = match records.iter().map(|(_, t)| *t).min() {
            Some(0) => return,
            Some(t) => Duration::from_secs(u64::from(t)).min(CACHE_TTL_MAX),
            None => CACHE_NEGATIVE_TTL,
        };
        let key = (name.to_string(), qtype);
        if self.entries.len() >= CACHE_ENTRIES && !self.entries.contains_key(&key) {
            self.entries.retain(|_, e| e.expires > now);
            if self.entries.len() >= CACHE_ENTRIES {
                let first = self.entries.iter().min_by_key(|(_, e)| e.expires).map(|(k, _)| k.clone());
                if let Some(k) = first {
                    self.entries.remove(&k);
                }
            }
        }
        self.entries.insert(key, Entry { rcode, records: records.to_vec(), expires: now + ttl });
    }

    pub fn expire(&mut self, now: Instant) {
        self.entries.retain(|_, e| e.expires > now);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(i: u32) -> IpAddr {
        IpAddr::V4((0xcb00_7100 + i).into())
    }

    #[test]
    fn test_names_capped_per_address_and_in_total() {
        let mut n = Names::default();
        let now = Instant::now();
        for i in 0..100u64 {
            n.learn(&format!("n{i}.example.org"), ip(1), now + Duration::from_secs(10 + i), now);
        }
        let got = n.get(ip(1), now);
        assert_eq!(got.len(), MAX_NAMES_PER_ADDR);
        assert!(got.contains(&"n99.example.org".to_string()), "the newest stays: {got:?}");
        for i in 0..(MAX_NAMES as u32 * 2) {
            n.learn("a.example.org", ip(10 + i), now + Duration::from_secs(60), now);
        }
        assert_eq!(n.len(), MAX_NAMES);
        assert_eq!(n.get(ip(10 + MAX_NAMES as u32 * 2 - 1), now), vec!["a.example.org".to_string()]);
        n.expire(now + Duration::from_secs(1000));
        assert!(n.is_empty());
    }

    #[test]
    fn test_names_relearning_extends_not_duplicates() {
        let mut n = Names::default();
        let now = Instant::now();
        n.learn("a.org", ip(1), now + Duration::from_secs(5), now);
        n.learn("a.org", ip(1), now + Duration::from_secs(50), now);
        assert_eq!(n.len(), 1);
        assert_eq!(n.get(ip(1), now + Duration::from_secs(10)), vec!["a.org".to_string()]);
    }

    #[test]
    fn test_cache_ttl_bounds_and_size() {
        let mut c = Cache::default();
        let now = Instant::now();
        c.put("a.org", 1, 0, &[(ip(1), 3600)], now);
        let (rc, recs) = c.get("a.org", 1, now + Duration::from_secs(10)).unwrap();
        assert_eq!((rc, recs[0].1), (0, 20), "cached at most CACHE_TTL_MAX, TTL counted down");
        assert!(c.get("a.org", 1, now + CACHE_TTL_MAX + Duration::from_secs(1)).is_none());
        assert!(c.get("a.org", 28, now).is_none(), "per qtype");
        c.put("nx.org", 1, 3, &[], now);
        assert_eq!(c.get("nx.org", 1, now).unwrap().0, 3);
        assert!(c.get("nx.org", 1, now + CACHE_NEGATIVE_TTL).is_none());
        c.put("zero.org", 1, 0, &[(ip(1), 0)], now);
        assert!(c.get("zero.org", 1, now).is_none(), "TTL 0 is not cached");
        for i in 0..1000 {
            c.put(&format!("n{i}.org"), 1, 0, &[(ip(i), 10)], now);
        }
        assert_eq!(c.len(), CACHE_ENTRIES);
    }
}
