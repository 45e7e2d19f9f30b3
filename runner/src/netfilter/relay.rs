//! Moves frames between the sandbox's end (QEMU's `-netdev stream`, or a tap
//! device relayed the same way) and passt, through the Gate. Both sides
//! speak 4-byte big-endian length + Ethernet frame. Each direction reads
//! many frames at once, judges every whole frame buffered under one lock of
//! the gate, in order, then writes the forwarded ones (frames.rs). Writes
//! the audit log, and keeps the gate's view of the host's own addresses
//! current.

use std::io::Write;
use std::net::IpAddr;
use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use super::dns;
use super::frames::{FrameReader, Next, Pending};
use super::gate::{Gate, Outbound};

/// Larger than any frame passt or QEMU sends (MTU 65520 + Ethernet header):
/// a length above this means the stream is out of sync, not a big frame.
pub const MAX_FRAME: usize = 65_600;

/// The most bytes of whole frames put into one write. Each write holds
/// only whole length-prefixed frames, never part of one, and stays below
/// the size an AF_UNIX stream socket takes as a single skb (about 32 KiB
/// plus a page on Linux 4.x-6.x, when the send buffer allows it): the
/// kernel then accepts all of it or nothing (EAGAIN), so the reader never
/// sees a frame split across writes. passt before 2024 lost sync when a
/// read ended inside a frame. A lone frame above this (passt may send the
/// guest up to 64 KiB) is still written whole, in as many writes as the
/// kernel wants.
pub const WRITE_BATCH: usize = 16 * 1024;

/// How often the host's addresses are re-read when rtnetlink cannot tell us
/// of changes.
pub const HOST_ADDR_POLL: Duration = Duration::from_secs(2);

/// Bytes read from either side at once: many frames per read syscall.
const READ_BUFFER: usize = 256 * 1024;

/// The most frames judged under one lock of the gate (and one reading of
/// the clock): the lock is taken once per batch rather than once per frame,
/// and held for microseconds at most.
const JUDGE_BATCH: usize = 128;

/// Appends `f` as one length-prefixed frame.
fn put_frame(batch: &mut Vec<u8>, f: &[u8]) {
    batch.extend_from_slice(&(f.len() as u32).to_be_bytes());
    batch.extend_from_slice(f);
}

/// `f` as one length-prefixed frame, for the writer's queue.
fn framed(f: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + f.len());
    put_frame(&mut v, f);
    v
}

/// What the gate made of one buffered frame.
enum Judgement<A> {
    /// Forwarded unchanged.
    Pass,
    /// Dropped.
    Skip,
    /// Anything else, for the writer to act on.
    Act(A),
}

/// Judged frames in the read buffer, in order: runs of frames forwarded
/// unchanged (back to back, so a run is one range of whole frames), and the
/// frames that need more than forwarding. Dropped frames appear as gaps.
enum Judged<A> {
    Run(Range<usize>),
    /// The frame's offset, its length, what to do.
    One(usize, usize, A),
}

/// Judges the whole frames buffered in `rd` (at most JUDGE_BATCH) with
/// `judge`, under one lock of the gate, each frame once and in order; what
/// came of them goes to `judged`. Returns where judging stopped, and the
/// length read there if it is one no peer sends.
fn judge_buffered<R, A>(
    rd: &FrameReader<R>,
    gate: &Mutex<Gate>,
    judged: &mut Vec<Judged<A>>,
    mut judge: impl FnMut(&mut Gate, &[u8], Instant) -> Judgement<A>,
) -> (usize, Option<usize>)
where
    R: tokio::io::AsyncRead + Unpin,
{
    let mut at = rd.start();
    if !matches!(rd.next(at), Next::Frame(_) | Next::Bad(_)) {
        return (at, None);
    }
    let mut g = gate.lock().expect("gate lock");
    // Read once the lock is held, so no stamp goes back in time.
    let now = Instant::now();
    for _ in 0..JUDGE_BATCH {
        match rd.next(at) {
            Next::Frame(n) => {
                let end = at + 4 + n;
                match judge(&mut g, &rd.buf()[at + 4..end], now) {
                    Judgement::Pass => match judged.last_mut() {
                        Some(Judged::Run(r)) if r.end == at => r.end = end,
                        _ => judged.push(Judged::Run(at..end)),
                    },
                    Judgement::Skip => {}
                    Judgement::Act(a) => judged.push(Judged::One(at, n, a)),
                }
                at = end;
            }
            Next::Partial => break,
            Next::Bad(n) => return (at, Some(n)),
        }
    }
    (at, None)
}

/// A stream error for a length no peer sends.
fn bad_length(n: usize) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("frame of {n} bytes"))
}

/// A netlink socket told of every IPv4 and IPv6 address change on the host.
fn addr_change_socket() -> std::io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the fd is owned below.
    let fd = unsafe {
        libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, libc::NETLINK_ROUTE)
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_nl is plain data; all-zero is a valid value.
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    sa.nl_groups = (libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV6_IFADDR) as u32;
    // SAFETY: sa is a valid sockaddr_nl of the size passed.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

/// Keeps the gate's list of the host's own addresses current for the whole
/// run (an address added mid-run, by DHCP, a VPN or a container, must be as
/// guarded as one present at the start). Woken by rtnetlink address
/// notifications rather than polling: a poll leaves its whole period in
/// which a new address is open, the notification arrives as the address is
/// added. The addresses are read again after subscribing, so nothing falls
/// between the first read and the subscription; on a notification overrun
/// (ENOBUFS) they are read again too. Without rtnetlink, polls every
/// HOST_ADDR_POLL.
async fn watch_host_addrs(gate: Arc<Mutex<Gate>>, read: fn() -> Vec<IpAddr>) {
    let refresh = |gate: &Mutex<Gate>| {
        let addrs = read();
        gate.lock().expect("gate lock").set_host_addrs(addrs);
    };
    let sock = addr_change_socket().and_then(|fd| {
        // SAFETY: the AsyncFd owns the OwnedFd, which stays open and the same
        // socket for as long as the AsyncFd lives.
        unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(std::io::Error::from)
    });
    let sock = match sock {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(error = %e, "no rtnetlink address notifications; polling the host's addresses");
            loop {
                tokio::time::sleep(HOST_ADDR_POLL).await;
                refresh(&gate);
            }
        }
    };
    refresh(&gate);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let Ok(mut ready) = sock.readable().await else { return };
        // Drain every queued notification, then read the addresses once.
        loop {
            // SAFETY: buf is valid for buf.len() bytes.
            let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            if n >= 0 {
                continue;
            }
            match std::io::Error::last_os_error() {
                e if e.kind() == std::io::ErrorKind::WouldBlock => break,
                e if e.raw_os_error() == Some(libc::ENOBUFS) || e.kind() == std::io::ErrorKind::Interrupted => {}
                e => {
                    tracing::warn!(error = %e, "rtnetlink socket failed; polling the host's addresses");
                    loop {
                        refresh(&gate);
                        tokio::time::sleep(HOST_ADDR_POLL).await;
                    }
                }
            }
        }
        ready.clear_ready();
        refresh(&gate);
    }
}

pub struct Relay {
    gate: Arc<Mutex<Gate>>,
    log: Option<Arc<Mutex<std::fs::File>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    started: Instant,
}

fn flush_log(gate: &Mutex<Gate>, log: &Option<Arc<Mutex<std::fs::File>>>) {
    let recs = std::mem::take(&mut gate.lock().expect("gate lock").closed);
    if let Some(log) = log {
        let mut f = log.lock().expect("log lock");
        for r in recs {
            if let Ok(line) = serde_json::to_string(&r) {
                let _ = writeln!(f, "{line}");
            }
        }
        let _ = f.flush();
    }
}

impl Relay {
    /// Starts relaying between `guest` and `passt` through `gate`.
    pub fn start(gate: Gate, guest: UnixStream, passt: UnixStream, log: Option<PathBuf>) -> std::io::Result<Relay> {
        Self::start_with(gate, guest, passt, log, super::host_addresses)
    }

    /// As `start`, reading the host's addresses with `host_addrs` (tests).
    pub fn start_with(
        gate: Gate,
        guest: UnixStream,
        passt: UnixStream,
        log: Option<PathBuf>,
        host_addrs: fn() -> Vec<IpAddr>,
    ) -> std::io::Result<Relay> {
        let log = match log {
            Some(p) => Some(Arc::new(Mutex::new(std::fs::OpenOptions::new().create(true).append(true).open(p)?))),
            None => None,
        };
        let upstream = gate.cfg.dns_upstream;
        let gate = Arc::new(Mutex::new(gate));
        let (g_r, mut g_w) = guest.into_split();
        let (p_r, mut p_w) = passt.into_split();
        // Each end is written by one task, which writes whole frames only.
        // The gate's own frames for the guest (refusals, DNS answers) are
        // queued to the inbound task, which writes them with its own.
        let (to_guest, mut replies) = mpsc::channel::<Vec<u8>>(512);
        // Debugging aid: one stderr line per frame.
        let trace = std::env::var_os("CORDON_GATE_TRACE").is_some();

        let (g2, tg) = (gate.clone(), to_guest);
        let outbound = tokio::spawn(async move {
            let mut rd = FrameReader::new(g_r, READ_BUFFER);
            let mut out = Pending::default();
            let mut judged = Vec::with_capacity(JUDGE_BATCH);
            loop {
                let (at, bad) = judge_buffered(&rd, &g2, &mut judged, |g, f, now| {
                    let action = g.outbound_at(f, now);
                    if trace {
                        eprintln!("gate out {:?} -> {:?}", super::packet::parse(f), action);
                    }
                    match action {
                        Outbound::Forward => Judgement::Pass,
                        Outbound::Drop => Judgement::Skip,
                        other => Judgement::Act(other),
                    }
                });
                let buf = rd.buf();
                for j in judged.drain(..) {
                    let (at, n, action) = match j {
                        Judged::Run(r) => {
                            if !out.frames(buf, r, &mut p_w).await {
                                return;
                            }
                            continue;
                        }
                        Judged::One(at, n, action) => (at, n, action),
                    };
                    let open = match action {
                        Outbound::Forward => out.frame(buf, at, n, &mut p_w).await,
                        Outbound::ForwardFirst(k) => out.copy(buf, &buf[at + 4..at + 4 + k], &mut p_w).await,
                        Outbound::Drop => true,
                        Outbound::Reply(frames) => {
                            // Gathered frames never wait on the guest reading its replies.
                            let open = out.flush(buf, &mut p_w).await;
                            for f in frames {
                                let _ = tg.send(f).await;
                            }
                            open
                        }
                        Outbound::Resolve(job) => {
                            let (g3, tg3) = (g2.clone(), tg.clone());
                            tokio::spawn(async move {
                                let answers = match upstream {
                                    Some(server) => dns::resolve(server, &job.query.name, job.query.qtype).await,
                                    None => None,
                                };
                                let reply = g3.lock().expect("gate lock").dns_answer(&job, answers);
                                let _ = tg3.send(reply).await;
                            });
                            true
                        }
                    };
                    if !open {
                        return;
                    }
                }
                // More frames already buffered: judge them before writing.
                if bad.is_none() && matches!(rd.next(at), Next::Frame(_)) {
                    rd.consume(at);
                    continue;
                }
                if !out.flush(buf, &mut p_w).await {
                    return;
                }
                rd.consume(at);
                let read = match bad {
                    Some(n) => Err(bad_length(n)),
                    None => rd.fill().await,
                };
                match read {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "guest network stream failed");
                        break;
                    }
                }
            }
        });
        let g2 = gate.clone();
        let inbound = tokio::spawn(async move {
            let mut rd = FrameReader::new(p_r, READ_BUFFER);
            let mut out = Pending::default();
            let mut judged = Vec::with_capacity(JUDGE_BATCH);
            let mut reply: Option<Vec<u8>> = None;
            let mut replies_open = true;
            loop {
                let (at, bad) = judge_buffered(&rd, &g2, &mut judged, |g, f, now| {
                    let pass = g.inbound_at(f, now);
                    if trace {
                        eprintln!("gate in {:?} -> {pass}", super::packet::parse(f));
                    }
                    if pass {
                        Judgement::<()>::Pass
                    } else {
                        Judgement::Skip
                    }
                });
                let buf = rd.buf();
                for j in judged.drain(..) {
                    if let Judged::Run(r) = j {
                        if !out.frames(buf, r, &mut g_w).await {
                            return;
                        }
                    }
                }
                if bad.is_none() && matches!(rd.next(at), Next::Frame(_)) {
                    rd.consume(at);
                    continue;
                }
                // The gate's own frames go out with these, a bounded number
                // per pass so they cannot hold up passt's.
                for _ in 0..JUDGE_BATCH {
                    let Some(f) = reply.take().or_else(|| replies.try_recv().ok()) else { break };
                    if !out.copy(buf, &f, &mut g_w).await {
                        return;
                    }
                }
                if !out.flush(buf, &mut g_w).await {
                    return;
                }
                if bad.is_some() {
                    break;
                }
                rd.consume(at);
                // Both are cancel-safe: a read not yet done loses nothing.
                let event = tokio::select! {
                    r = rd.fill() => Ok(r),
                    f = replies.recv(), if replies_open => Err(f),
                };
                match event {
                    Ok(Ok(true)) => {}
                    Ok(_) => break,
                    Err(Some(f)) => reply = Some(f),
                    Err(None) => replies_open = false,
                }
            }
            // passt is gone; the gate's own frames still reach the guest.
            while let Some(f) = replies.recv().await {
                if g_w.write_all(&framed(&f)).await.is_err() {
                    return;
                }
            }
        });
        let (g2, l2) = (gate.clone(), log.clone());
        let sweeper = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                g2.lock().expect("gate lock").expire(Instant::now());
                flush_log(&g2, &l2);
            }
        });
        let watcher = tokio::spawn(watch_host_addrs(gate.clone(), host_addrs));
        Ok(Relay { gate, log, tasks: vec![outbound, inbound, sweeper, watcher], started: Instant::now() })
    }

    /// The gate's counters so far.
    pub fn counters(&self) -> super::gate::Counters {
        self.gate.lock().expect("gate lock").counters
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        let counters = {
            let mut g = self.gate.lock().expect("gate lock");
            g.close_all();
            g.counters
        };
        flush_log(&self.gate, &self.log);
        if let Some(log) = &self.log {
            let mut summary = serde_json::to_value(counters).unwrap_or_default();
            summary["summary"] = true.into();
            summary["seconds"] = self.started.elapsed().as_secs_f64().into();
            let _ = writeln!(log.lock().expect("log lock"), "{summary}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netfilter::gate::Config;
    use crate::netfilter::packet::UdpPeer;
    use crate::policy::{Env, Policy};

    fn seqpacket_pair() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: fds has room for the two descriptors socketpair writes.
        let rc =
            unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        // SAFETY: both are fresh descriptors owned by nobody else.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    /// Splits one write's bytes into frames; None if a frame is cut.
    fn whole_frames(mut rec: &[u8]) -> Option<Vec<usize>> {
        let mut sizes = Vec::new();
        while !rec.is_empty() {
            let n = u32::from_be_bytes(rec.get(..4)?.try_into().ok()?) as usize;
            rec.get(4..4 + n)?;
            sizes.push(n);
            rec = &rec[4 + n..];
        }
        Some(sizes)
    }

    /// passt's end is a SOCK_SEQPACKET socket here, so every write the relay
    /// makes arrives as one record and its boundaries can be checked.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn test_writes_to_passt_hold_whole_frames_only() {
        let gate = Gate::new(Config {
            policy: Policy::new(vec![], true),
            env: Env { gateways: vec!["10.0.2.2".parse().unwrap()], host_addrs: vec![] },
            dns_addrs: vec!["10.0.2.3".parse().unwrap()],
            gateway_v4: "10.0.2.2".parse().unwrap(),
            mtu: crate::netfilter::GUEST_MTU,
            dns_upstream: None,
        });
        let (mut guest, guest_theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let (passt, passt_theirs) = seqpacket_pair();
        let tok = |s: std::os::unix::net::UnixStream| {
            s.set_nonblocking(true).unwrap();
            UnixStream::from_std(s).unwrap()
        };
        let relay = Relay::start_with(gate, tok(guest_theirs), tok(passt_theirs.into()), None, Vec::new).unwrap();
        // Mostly frames of one flow, forwarded unchanged in runs; some with
        // bytes after the packet (forwarded cut), some from a multicast
        // source MAC (dropped), which break the runs.
        let mut frames = Vec::new();
        let mut want = Vec::new();
        for i in 0..3000 {
            let mut f = UdpPeer {
                mac: [2; 6],
                our_mac: [4; 6],
                addr: "203.0.113.5".parse().unwrap(),
                port: 9,
                our_addr: "10.0.2.15".parse().unwrap(),
                our_port: 4000,
            }
            // At most 1501 bytes: with the trailer still within the MTU.
            .reply(&vec![0x5a; 20 + (i * 397) % 1440]);
            match i % 11 {
                5 => f[6] |= 1,
                3 | 8 => {
                    want.push(f.len());
                    f.extend_from_slice(&[0xee; 6]);
                }
                _ => want.push(f.len()),
            }
            frames.push(f);
        }
        let expected = want.len();
        std::thread::spawn(move || {
            for f in frames {
                guest.write_all(&(f.len() as u32).to_be_bytes()).unwrap();
                guest.write_all(&f).unwrap();
            }
            guest
        });
        let got = tokio::task::spawn_blocking(move || {
            let passt = std::os::unix::net::UnixStream::from(passt);
            passt.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let mut got = Vec::new();
            let mut buf = vec![0u8; 256 * 1024];
            while got.len() < expected {
                // SAFETY: buf is valid for buf.len() bytes.
                let n = unsafe { libc::recv(passt.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                assert!(n > 0, "recv: {}", std::io::Error::last_os_error());
                let rec = &buf[..n as usize];
                let frames = whole_frames(rec).unwrap_or_else(|| panic!("a write of {n} bytes cut a frame"));
                assert!(rec.len() <= WRITE_BATCH || frames.len() == 1, "{n} bytes in one write");
                got.extend(frames);
            }
            got
        })
        .await
        .unwrap();
        assert_eq!(got, want, "every frame passed arrives, whole, cut to its packet, in order");
        drop(relay);
    }
}
