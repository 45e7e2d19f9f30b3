//! The audit log's records, and the limiter that keeps a flood of refused
//! packets (or of DNS questions) from becoming a flood of log lines: the
//! first of a kind is logged at once, the repeats within a second are
//! counted and logged as one line, and only so many kinds are tracked at a
//! time (what falls past that is counted for the summary). Pure.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use crate::policy::Verdict;

/// At most one line per key in this window.
pub const WINDOW: Duration = Duration::from_secs(1);
/// Keys tracked at once; a record for another key beyond these is only counted.
pub const MAX_KEYS: usize = 1024;

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
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
    /// This line stands for that many more events like the previous line
    /// with the same proto, dst, port, name and verdict, seen since it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repeats: Option<u64>,
}

pub fn now_secs(t: SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    proto: &'static str,
    dst: IpAddr,
    port: u16,
    name: Option<String>,
    verdict: Verdict,
}

impl Key {
    fn of(r: &FlowRecord) -> Key {
        Key { proto: r.proto, dst: r.dst, port: r.port, name: r.dns_name.clone(), verdict: r.verdict }
    }
}

#[derive(Debug)]
struct Slot {
    since: Instant,
    repeats: u64,
    last: FlowRecord,
}

#[derive(Debug, Default)]
pub struct Limiter {
    slots: HashMap<Key, Slot>,
    /// Records dropped because MAX_KEYS other keys were being tracked.
    pub unlogged: u64,
}

impl Limiter {
    /// Takes one event; returns the line to log now, if any.
    pub fn admit(&mut self, rec: FlowRecord, now: Instant) -> Option<FlowRecord> {
        let key = Key::of(&rec);
        if let Some(s) = self.slots.get_mut(&key) {
            s.repeats += 1;
            s.last = rec;
            if now.duration_since(s.since) < WINDOW {
                return None;
            }
            return Some(Self::emit(s, now));
        }
        if self.slots.len() >= MAX_KEYS {
            self.unlogged += 1;
            return None;
        }
        self.slots.insert(key, Slot { since: now, repeats: 0, last: rec.clone() });
        Some(rec)
    }

    fn emit(s: &mut Slot, now: Instant) -> FlowRecord {
        let mut r = s.last.clone();
        r.time = now_secs(SystemTime::now());
        r.repeats = Some(s.repeats);
        s.repeats = 0;
        s.since = now;
        r
    }

    /// Lines for keys whose window ended with repeats; forgets quiet keys.
    pub fn sweep(&mut self, now: Instant, out: &mut Vec<FlowRecord>) {
        self.slots.retain(|_, s| {
            if now.duration_since(s.since) < WINDOW {
                return true;
            }
            if s.repeats == 0 {
                return false;
            }
            out.push(Self::emit(s, now));
            true
        });
    }

    /// Every pending repeat count, at the end of a run.
    pub fn drain(&mut self, out: &mut Vec<FlowRecord>) {
        let now = Instant::now();
        for (_, mut s) in self.slots.drain() {
            if s.repeats > 0 {
                out.push(Self::emit(&mut s, now));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(port: u16) -> FlowRecord {
        FlowRecord {
            time: 0.0,
            proto: "udp",
            dst: "203.0.113.5".parse().unwrap(),
            port,
            dns_name: None,
            verdict: Verdict::Deny,
            rule: "x".into(),
            bytes_out: 0,
            bytes_in: 0,
            repeats: None,
        }
    }

    #[test]
    fn test_limiter_one_line_per_key_per_window_with_repeat_count() {
        let mut l = Limiter::default();
        let t0 = Instant::now();
        let mut lines: Vec<FlowRecord> = Vec::new();
        for i in 0..10_000u32 {
            let now = t0 + Duration::from_micros(u64::from(i) * 50); // 0.5 s of a flood
            lines.extend(l.admit(rec(9), now));
        }
        assert_eq!(lines.len(), 1, "the first is logged at once, the rest counted");
        assert_eq!(lines[0].repeats, None);
        l.sweep(t0 + Duration::from_millis(900), &mut lines);
        assert_eq!(lines.len(), 1, "window not over yet");
        l.sweep(t0 + Duration::from_millis(1100), &mut lines);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1].repeats, Some(9_999));
        l.sweep(t0 + Duration::from_millis(2200), &mut lines);
        assert_eq!(lines.len(), 2, "quiet window: nothing, and the key is forgotten");
        lines.extend(l.admit(rec(9), t0 + Duration::from_millis(2300)));
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[2].repeats, None, "a forgotten key starts over");
        // A different key is its own line.
        lines.extend(l.admit(rec(10), t0 + Duration::from_millis(2300)));
        assert_eq!(lines.len(), 4);
        lines.extend(l.admit(rec(10), t0 + Duration::from_millis(2400)));
        l.drain(&mut lines);
        assert_eq!(lines.last().unwrap().repeats, Some(1), "pending counts are written at the end");
    }

    #[test]
    fn test_limiter_tracks_a_bounded_number_of_keys() {
        let mut l = Limiter::default();
        let now = Instant::now();
        let n = (0..MAX_KEYS as u32 + 500).filter(|i| l.admit(rec(*i as u16), now).is_some()).count();
        assert_eq!(n, MAX_KEYS);
        assert_eq!(l.unlogged, 500);
        let json = serde_json::to_string(&rec(1)).unwrap();
        assert!(!json.contains("repeats"), "{json}");
    }
}
