//! Gate benchmark: frames/s and MiB/s through the egress gate's relay alone
//! (`netfilter::relay::Relay` with a real `Gate` judging every frame, as in
//! a run), beside a plain length-prefixed relay that copies frames unjudged,
//! in one run with the two interleaved. No QEMU, no passt: socketpairs, the
//! guest's end fed TCP segments in QEMU's `-netdev stream` framing (4-byte
//! big-endian length + Ethernet frame), passt's end answering with ACKs.
//! Prints JSON: medians over the rounds. Never asserts on timings.

use clap::Parser;
use cordon::netfilter::gate::{self, Gate, Outbound};
use cordon::netfilter::relay::{Relay, MAX_FRAME, WRITE_BATCH};
use cordon::netfilter::{DNS_V4, GATEWAY_V4, GATEWAY_V6, GUEST_MTU, GUEST_V4};
use cordon::policy::{Env, Policy};
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser)]
struct Args {
    /// Interleaved rounds of every case; medians are reported
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Numbers of concurrent TCP flows, one case each
    #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
    flows: Vec<usize>,
    /// TCP payload bytes per segment, one case each (1460 fills the 1500-byte MTU)
    #[arg(long, value_delimiter = ',', default_value = "1460,64")]
    payloads: Vec<usize>,
    /// MiB of frames per round and relay
    #[arg(long, default_value_t = 64)]
    mib: usize,
    /// At most this many frames per round and relay
    #[arg(long, default_value_t = 300_000)]
    max_frames: usize,
    /// passt's end answers one ACK per this many segments (0: none)
    #[arg(long, default_value_t = 2)]
    ack_every: usize,
    /// Allow rules for the gate's policy (default: `--net full`)
    #[arg(long)]
    allow: Vec<String>,
    /// The throughput target for MTU-size frames, Gbit/s ("several")
    #[arg(long, default_value_t = 3.0)]
    target_gbit: f64,
    /// The target ratio of gate to plain relay
    #[arg(long, default_value_t = 0.9)]
    target_ratio: f64,
    /// Profiling: run only the gate relay, the plain relay or the judge-only loop
    #[arg(long, value_parser = ["gate", "plain", "judge"])]
    only: Option<String>,
}

const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
const PASST_MAC: [u8; 6] = [0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55];

/// The Internet checksum over `parts`, each of even length but the last.
fn csum(parts: &[&[u8]]) -> u16 {
    let mut acc: u32 = 0;
    for p in parts {
        for c in p.chunks(2) {
            acc += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
    }
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// One TCP flow: the guest's port and the world's address.
#[derive(Clone, Copy)]
struct Flow {
    sport: u16,
    dst: Ipv4Addr,
}

fn flow(i: usize) -> Flow {
    Flow { sport: 40_000 + i as u16, dst: Ipv4Addr::new(203, 0, 113, 1 + (i % 250) as u8) }
}

/// A valid Ethernet+IPv4+TCP frame, checksums included.
fn tcp_frame(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, flags: u8, seq: u32, payload: usize) -> Vec<u8> {
    let towards_world = src == GUEST_V4;
    let (dmac, smac) = if towards_world { (PASST_MAC, GUEST_MAC) } else { (GUEST_MAC, PASST_MAC) };
    let mut f = Vec::with_capacity(54 + payload);
    f.extend_from_slice(&dmac);
    f.extend_from_slice(&smac);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (40 + payload) as u16;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = csum(&[&ip]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    let mut t = vec![0u8; 20 + payload];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&1u32.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&65_535u16.to_be_bytes());
    for (i, b) in t[20..].iter_mut().enumerate() {
        *b = i as u8;
    }
    let pseudo = [&src.octets()[..], &dst.octets()[..], &[0, 6], &((20 + payload) as u16).to_be_bytes()].concat();
    let c = csum(&[&pseudo, &t]);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&t);
    f
}

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const PSH: u8 = 0x08;

fn guest_segment(fl: Flow, flags: u8, seq: u32, payload: usize) -> Vec<u8> {
    tcp_frame(GUEST_V4, fl.dst, fl.sport, 443, flags, seq, payload)
}

fn world_segment(fl: Flow, flags: u8) -> Vec<u8> {
    tcp_frame(fl.dst, GUEST_V4, 443, fl.sport, flags, 1, 0)
}

fn framed(frames: impl IntoIterator<Item = Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        out.extend_from_slice(&(f.len() as u32).to_be_bytes());
        out.extend_from_slice(&f);
    }
    out
}

/// One case's traffic, built once: the guest's data frames round-robin over
/// the flows, passt's ACKs likewise, each as a cycle written again and again.
struct Case {
    flows: usize,
    payload: usize,
    frame_len: usize,
    /// Data frames per round (a whole number of cycles).
    frames: usize,
    cycle_frames: usize,
    data_cycle: Vec<u8>,
    ack_cycle: Vec<u8>,
    ack_cycle_frames: usize,
    syns: Vec<u8>,
    synacks: Vec<u8>,
}

impl Case {
    fn new(flows: usize, payload: usize, a: &Args) -> Case {
        let frame_len = 54 + payload;
        // A cycle of about 1 MiB, a whole number of rounds over the flows.
        let per = (1 << 20) / (frame_len + 4) / flows;
        let cycle_frames = per.max(1) * flows;
        let data_cycle = framed((0..cycle_frames).map(|i| {
            let seq = 1 + (i / flows * payload) as u32;
            guest_segment(flow(i % flows), ACK | PSH, seq, payload)
        }));
        let ack_cycle_frames = flows * (4096 / flows).max(1);
        let ack_cycle = framed((0..ack_cycle_frames).map(|i| world_segment(flow(i % flows), ACK)));
        let want = (a.mib << 20) / frame_len;
        let cycles = want.min(a.max_frames).div_ceil(cycle_frames).max(1);
        Case {
            flows,
            payload,
            frame_len,
            frames: cycles * cycle_frames,
            cycle_frames,
            data_cycle,
            ack_cycle,
            ack_cycle_frames,
            syns: framed((0..flows).map(|i| guest_segment(flow(i), SYN, 0, 0))),
            synacks: framed((0..flows).map(|i| world_segment(flow(i), SYN | ACK))),
        }
    }

    fn name(&self) -> String {
        format!("tcp_{}flows_{}B", self.flows, self.frame_len)
    }
}

/// Counts length-prefixed frames across reads that cut them anywhere.
#[derive(Default)]
struct Counter {
    hdr: [u8; 4],
    hdr_have: usize,
    body_left: usize,
    frames: usize,
    bytes: usize,
    /// Frames whose length was not the expected one (a frame cut by the gate).
    odd: usize,
}

impl Counter {
    fn feed(&mut self, mut b: &[u8], want_len: usize) {
        while !b.is_empty() {
            if self.body_left > 0 {
                let take = self.body_left.min(b.len());
                self.body_left -= take;
                b = &b[take..];
                if self.body_left == 0 {
                    self.frames += 1;
                }
                continue;
            }
            let take = (4 - self.hdr_have).min(b.len());
            self.hdr[self.hdr_have..self.hdr_have + take].copy_from_slice(&b[..take]);
            self.hdr_have += take;
            b = &b[take..];
            if self.hdr_have == 4 {
                self.hdr_have = 0;
                let n = u32::from_be_bytes(self.hdr) as usize;
                self.odd += usize::from(n != want_len);
                self.bytes += n;
                self.body_left = n;
                if n == 0 {
                    self.frames += 1;
                }
            }
        }
    }
}

/// Reads `n` frames from `s` (untimed setup).
fn read_frames(s: &mut UnixStream, n: usize) {
    let mut c = Counter::default();
    let mut buf = vec![0u8; 64 * 1024];
    while c.frames < n {
        let k = s.read(&mut buf).expect("setup read");
        assert!(k > 0, "relay closed during setup");
        c.feed(&buf[..k], 0);
    }
}

/// Which relay sits between the two socketpairs.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    Gate,
    Plain,
}

/// True when `b` begins with a whole length-prefixed frame.
fn whole_frame_at(b: &[u8]) -> bool {
    b.len() >= 4 && b.len() - 4 >= u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
}

/// The baseline: one direction of a relay that copies length-prefixed
/// frames without judging them, with the gate relay's constraints (whole
/// frames per write, at most WRITE_BATCH bytes of them) and the same
/// 256 KiB read buffer, in the same runtime.
async fn plain_pipe(r: tokio::net::unix::OwnedReadHalf, mut w: tokio::net::unix::OwnedWriteHalf) {
    let mut r = tokio::io::BufReader::with_capacity(256 * 1024, r);
    let mut batch: Vec<u8> = Vec::with_capacity(WRITE_BATCH + MAX_FRAME + 4);
    loop {
        let mut len = [0u8; 4];
        if r.read_exact(&mut len).await.is_err() {
            return;
        }
        let n = u32::from_be_bytes(len) as usize;
        if !(14..=MAX_FRAME).contains(&n) {
            return;
        }
        if !batch.is_empty() && batch.len() + 4 + n > WRITE_BATCH {
            if w.write_all(&batch).await.is_err() {
                return;
            }
            batch.clear();
        }
        batch.extend_from_slice(&len);
        let at = batch.len();
        batch.resize(at + n, 0);
        if r.read_exact(&mut batch[at..]).await.is_err() {
            return;
        }
        // Nothing more to add without waiting: write what we have.
        if !whole_frame_at(r.buffer()) {
            if w.write_all(&batch).await.is_err() {
                return;
            }
            batch.clear();
        }
    }
}

/// CPU time this thread has used: unlike wall time, barely moved by other
/// load on the machine.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid timespec for clock_gettime to fill.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime: {}", std::io::Error::last_os_error());
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn gate_for(a: &Args) -> Gate {
    let rules = cordon::policy::parse_rules(&a.allow, &[]).expect("--allow rules");
    Gate::new(gate::Config {
        policy: Policy::new(rules, a.allow.is_empty()),
        env: Env {
            gateways: vec![GATEWAY_V4.into(), GATEWAY_V6.into()],
            host_addrs: cordon::netfilter::host_addresses(),
        },
        dns_addrs: vec![DNS_V4.into()],
        gateway_v4: GATEWAY_V4,
        mtu: GUEST_MTU,
        dns_upstream: None,
    })
}

/// Runs `kind` on its own thread, in a current-thread runtime as in a run,
/// until `stop` fires; returns the gate's counters (None for plain) and the
/// CPU time the relay's thread used.
fn spawn_relay(
    kind: Kind,
    gate: Gate,
    guest: UnixStream,
    passt: UnixStream,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> std::thread::JoinHandle<(Option<gate::Counters>, Duration)> {
    std::thread::spawn(move || {
        let cpu0 = thread_cpu();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let counters = rt.block_on(async move {
            let tok = |s: UnixStream| {
                s.set_nonblocking(true).expect("nonblocking");
                tokio::net::UnixStream::from_std(s).expect("tokio socket")
            };
            let (guest, passt) = (tok(guest), tok(passt));
            match kind {
                Kind::Gate => {
                    let relay = Relay::start(gate, guest, passt, None).expect("relay");
                    let _ = stop.await;
                    let c = relay.counters();
                    drop(relay);
                    Some(c)
                }
                Kind::Plain => {
                    let (g_r, g_w) = guest.into_split();
                    let (p_r, p_w) = passt.into_split();
                    let out = tokio::spawn(plain_pipe(g_r, p_w));
                    let inb = tokio::spawn(plain_pipe(p_r, g_w));
                    let _ = stop.await;
                    out.abort();
                    inb.abort();
                    None
                }
            }
        });
        (counters, thread_cpu() - cpu0)
    })
}

/// One round of one case through one relay: seconds from the first data
/// byte written to the last data frame read on passt's side, and the CPU
/// seconds the relay's thread used.
fn round(kind: Kind, case: &Case, a: &Args) -> (f64, f64) {
    let (mut guest, guest_relay) = UnixStream::pair().expect("socketpair");
    let (mut passt, passt_relay) = UnixStream::pair().expect("socketpair");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let relay = spawn_relay(kind, gate_for(a), guest_relay, passt_relay, stop_rx);
    // Open every flow as a connection does (SYN out, SYN-ACK back), untimed.
    guest.write_all(&case.syns).expect("syn");
    read_frames(&mut passt, case.flows);
    passt.write_all(&case.synacks).expect("syn-ack");
    read_frames(&mut guest, case.flows);

    let acks = case.frames.checked_div(a.ack_every).unwrap_or(0);
    let mut guest_r = guest.try_clone().expect("clone");
    guest_r.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let ack_reader = std::thread::spawn(move || {
        let mut c = Counter::default();
        let mut buf = vec![0u8; 256 * 1024];
        while c.frames < acks {
            match guest_r.read(&mut buf) {
                Ok(k) if k > 0 => c.feed(&buf[..k], 54),
                r => panic!("guest side: {} of {acks} ACKs, then {r:?}", c.frames),
            }
        }
        c
    });
    let (frames, frame_len, ack_every) = (case.frames, case.frame_len, a.ack_every);
    let (ack_cycle, ack_cycle_frames) = (case.ack_cycle.clone(), case.ack_cycle_frames);
    passt.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let passt_side = std::thread::spawn(move || {
        let mut c = Counter::default();
        let mut buf = vec![0u8; 1 << 20];
        let mut acked = 0usize;
        let ack_len = ack_cycle.len() / ack_cycle_frames.max(1);
        while c.frames < frames {
            match passt.read(&mut buf) {
                Ok(k) if k > 0 => c.feed(&buf[..k], frame_len),
                r => panic!("passt side: {} of {frames} frames, then {r:?}", c.frames),
            }
            // As passt would: ACK the segments received so far.
            let due = c.frames.checked_div(ack_every).unwrap_or(0);
            while acked < due {
                let at = acked % ack_cycle_frames;
                let n = (due - acked).min(ack_cycle_frames - at);
                passt.write_all(&ack_cycle[at * ack_len..(at + n) * ack_len]).expect("ack write");
                acked += n;
            }
        }
        (Instant::now(), c)
    });
    let cycles = case.frames / case.cycle_frames;
    let t0 = Instant::now();
    for _ in 0..cycles {
        guest.write_all(&case.data_cycle).expect("guest write");
    }
    let (t1, got) = passt_side.join().expect("passt side");
    let acked = ack_reader.join().expect("ack reader");
    let _ = stop_tx.send(());
    let (counters, cpu) = relay.join().expect("relay");
    assert_eq!((got.frames, got.odd), (case.frames, 0), "{kind:?} {}: frames lost or cut", case.name());
    assert_eq!((acked.frames, acked.odd), (acks, 0), "{}: ACKs lost or cut", case.name());
    if let Some(c) = counters {
        // The gate judged and allowed exactly these flows and dropped nothing.
        assert_eq!((c.flows_allowed, c.flows_denied, c.frames_dropped), (case.flows as u64, 0, 0), "{c:?}");
    }
    ((t1 - t0).as_secs_f64(), cpu.as_secs_f64())
}

/// The gate's judgement alone, no I/O: nanoseconds per data frame plus its
/// share of ACKs, one thread.
fn judge_only(case: &Case, a: &Args) -> f64 {
    let mut g = gate_for(a);
    let split = |b: &[u8]| {
        let mut out = Vec::new();
        let mut o = 0;
        while o < b.len() {
            let n = u32::from_be_bytes(b[o..o + 4].try_into().expect("4 bytes")) as usize;
            out.push(b[o + 4..o + 4 + n].to_vec());
            o += 4 + n;
        }
        out
    };
    for s in split(&case.syns) {
        assert_eq!(g.outbound(&s), Outbound::Forward);
    }
    let data = split(&case.data_cycle);
    let acks = split(&case.ack_cycle);
    let (t, cpu0) = (Instant::now(), thread_cpu());
    let mut n = 0usize;
    let mut ai = 0usize;
    while t.elapsed() < Duration::from_millis(300) {
        // The relay reads the clock once per batch of frames it judges.
        let mut now = Instant::now();
        for (i, f) in data.iter().enumerate() {
            if i % 64 == 0 {
                now = Instant::now();
            }
            assert_eq!(g.outbound_at(f, now), Outbound::Forward);
            if a.ack_every != 0 && i % a.ack_every == 0 {
                assert!(g.inbound_at(&acks[ai % acks.len()], now));
                ai += 1;
            }
        }
        n += data.len();
    }
    (thread_cpu() - cpu0).as_secs_f64() * 1e9 / n as f64
}

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn main() {
    let a = Args::parse();
    let cases: Vec<Case> = a
        .payloads
        .iter()
        .flat_map(|&p| a.flows.iter().map(move |&n| (n, p)))
        .map(|(n, p)| Case::new(n, p, &a))
        .collect();
    for c in &cases {
        assert!(c.frame_len <= GUEST_MTU + 14, "payload {} exceeds the MTU", c.payload);
    }
    // secs[case][0 gate, 1 plain], judge-only ns per frame.
    let mut secs = vec![[Vec::new(), Vec::new()]; cases.len()];
    let mut judge = vec![Vec::new(); cases.len()];
    for r in 0..a.rounds {
        for (i, c) in cases.iter().enumerate() {
            // Alternate which goes first, so drift and noise hit both.
            let order = if r % 2 == 0 { [Kind::Gate, Kind::Plain] } else { [Kind::Plain, Kind::Gate] };
            let only = a.only.as_deref();
            for k in order {
                if only.is_none_or(|o| o == format!("{k:?}").to_lowercase()) {
                    secs[i][usize::from(k == Kind::Plain)].push(round(k, c, &a));
                }
            }
            if only.is_none_or(|o| o == "judge") {
                judge[i].push(judge_only(c, &a));
            }
        }
        eprintln!("bench-gate: round {} of {} done", r + 1, a.rounds);
    }
    let mut out = serde_json::Map::new();
    let mut ratios = Vec::new();
    let mut mtu_gbit = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let col = |k: usize, f: fn(&(f64, f64)) -> f64| secs[i][k].iter().map(f).collect::<Vec<f64>>();
        let fig = |k: usize| {
            let s = median(&col(k, |r| r.0));
            let fps = c.frames as f64 / s;
            let bytes = fps * c.frame_len as f64;
            let cpu_ns = median(&col(k, |r| r.1)) * 1e9 / c.frames as f64;
            (fps, bytes / f64::from(1 << 20), bytes * 8.0 / 1e9, cpu_ns)
        };
        let (g, p) = (fig(0), fig(1));
        let ratio = g.0 / p.0;
        // Per-round ratios, to show the spread the median hides.
        let per_round: Vec<f64> = secs[i][1].iter().zip(&secs[i][0]).map(|(p, g)| round2(p.0 / g.0)).collect();
        ratios.push(ratio);
        if c.payload + 54 >= GUEST_MTU {
            mtu_gbit.push(g.2);
        }
        let side = |(fps, mibs, gbit, cpu_ns): (f64, f64, f64, f64)| {
            serde_json::json!({
                "frames_per_s": fps.round(),
                "mib_per_s": round2(mibs),
                "gbit_per_s": round2(gbit),
                "relay_cpu_ns_per_frame": round2(cpu_ns),
            })
        };
        out.insert(
            c.name(),
            serde_json::json!({
                "flows": c.flows,
                "frame_bytes": c.frame_len,
                "frames_per_round": c.frames,
                "gate": side(g),
                "plain": side(p),
                "ratio_gate_over_plain": round2(ratio),
                "ratio_per_round": per_round,
                // What a relay with a core to itself would give: plain's CPU
                // cost per frame over the gate's.
                "cpu_ratio_gate_over_plain": round2(p.3 / g.3),
                "judge_only_cpu_ns_per_frame": round2(median(&judge[i])),
            }),
        );
    }
    let min_ratio = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let min_gbit = mtu_gbit.iter().copied().fold(f64::INFINITY, f64::min);
    let report = serde_json::json!({
        "bench": "gate",
        "rounds": a.rounds,
        "policy": if a.allow.is_empty() { "full".to_string() } else { a.allow.join(" ") },
        "ack_every": a.ack_every,
        "cases": out,
        "targets": {
            "ratio_min": a.target_ratio,
            "ratio_worst_case": round2(min_ratio),
            "ratio_met": min_ratio >= a.target_ratio,
            "mtu_gbit_min": a.target_gbit,
            "mtu_gbit_worst_case": if mtu_gbit.is_empty() { serde_json::Value::Null } else { round2(min_gbit).into() },
            "gbit_met": !mtu_gbit.is_empty() && min_gbit >= a.target_gbit,
        },
    });
    println!("{}", serde_json::to_string_pretty(&report).expect("json"));
}
