//! The guest's serial console. QEMU writes it to one end of a socketpair; a
//! reader thread keeps only its last [`RING_BYTES`] in memory and notes the
//! boot markers as they pass. Nothing of it reaches the disk, so a guest that
//! floods its console costs a bounded amount of memory and no temp space,
//! and only the tail is ever read.

use std::collections::VecDeque;
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// How much of the console is kept: the boot log and the last screens.
pub const RING_BYTES: usize = 256 * 1024;

/// Must match the agent's `listen::LISTENING_MARKER`.
pub use cordon_protocol::boot::LISTENING_MARKER as AGENT_LISTENING;

/// Console lines that mean the guest is gone for good.
pub const PANIC_MARKERS: &[&str] = &["Kernel panic", "end Kernel panic", "cordon-agent: panic as PID 1"];

/// The longest marker, less one: what a chunk boundary can split.
const CARRY: usize = 64;

#[derive(Debug)]
pub struct Console {
    ring: Mutex<VecDeque<u8>>,
    cap: usize,
    /// Bytes seen in all, kept or not.
    total: AtomicU64,
    listening: AtomicBool,
    /// Wakes [`Console::wait_listening`] when the marker passes.
    listening_wake: tokio::sync::Notify,
    panic: OnceLock<&'static str>,
    /// The tail of the previous chunk, so a marker split across reads is found.
    carry: Mutex<Vec<u8>>,
}

impl Console {
    pub fn new(cap: usize) -> Console {
        Console {
            ring: Mutex::new(VecDeque::with_capacity(cap.min(64 * 1024))),
            cap,
            total: AtomicU64::new(0),
            listening: AtomicBool::new(false),
            listening_wake: tokio::sync::Notify::new(),
            panic: OnceLock::new(),
            carry: Mutex::new(Vec::new()),
        }
    }

    /// Starts a thread that reads `sock` into a fresh console until EOF (QEMU
    /// gone). A thread, not a task: the runtime is single-threaded and blocks
    /// while it waits for QEMU to exit, and QEMU must never stall on a full
    /// console socket meanwhile.
    pub fn spawn_reader(sock: UnixStream) -> std::io::Result<Arc<Console>> {
        let c = Arc::new(Console::new(RING_BYTES));
        let c2 = c.clone();
        std::thread::Builder::new().name("console".into()).spawn(move || {
            let mut sock = sock;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match sock.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => c2.push(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
        })?;
        Ok(c)
    }

    /// Takes one chunk of console output.
    pub fn push(&self, b: &[u8]) {
        self.total.fetch_add(b.len() as u64, Ordering::Relaxed);
        {
            let mut carry = self.carry.lock().expect("console lock poisoned");
            carry.extend_from_slice(b);
            let text = String::from_utf8_lossy(&carry);
            if text.contains(AGENT_LISTENING) && !self.listening.swap(true, Ordering::AcqRel) {
                self.listening_wake.notify_waiters();
            }
            if let Some(m) = PANIC_MARKERS.iter().find(|m| text.contains(**m)) {
                let _ = self.panic.set(m);
            }
            let keep = carry.len().min(CARRY);
            let cut = carry.len() - keep;
            carry.drain(..cut);
        }
        let mut ring = self.ring.lock().expect("console lock poisoned");
        let b = if b.len() > self.cap { &b[b.len() - self.cap..] } else { b };
        let over = (ring.len() + b.len()).saturating_sub(self.cap);
        ring.drain(..over);
        ring.extend(b);
    }

    /// Whether the agent said its listener is up.
    pub fn listening(&self) -> bool {
        self.listening.load(Ordering::Acquire)
    }

    /// Resolves once the agent said its listener is up (at once if it has).
    pub async fn wait_listening(&self) {
        loop {
            let woken = self.listening_wake.notified();
            tokio::pin!(woken);
            // Registered before the check, so a marker between the two still wakes it.
            woken.as_mut().enable();
            if self.listening() {
                return;
            }
            woken.await;
        }
    }

    /// The panic marker the guest printed, if any.
    pub fn panicked(&self) -> Option<&'static str> {
        self.panic.get().copied()
    }

    /// Bytes the guest wrote to its console in all.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// The last `n` lines kept, for error reports; when the guest panicked,
    /// `n` lines from a little before the panic message instead, so the reason
    /// is not lost under the stack trace. Control characters (terminal
    /// escapes from a hostile guest) are replaced: this is cordon's output.
    pub fn tail(&self, n: usize) -> String {
        let bytes: Vec<u8> = self.ring.lock().expect("console lock poisoned").iter().copied().collect();
        let wrapped = self.total() > bytes.len() as u64;
        tail_lines(&String::from_utf8_lossy(&bytes), n, wrapped)
    }
}

/// The last `n` lines of `text` (or from just before a panic marker), with
/// control characters replaced; `partial_first` drops a first line that the
/// ring cut in the middle.
fn tail_lines(text: &str, n: usize, partial_first: bool) -> String {
    let mut lines: Vec<&str> = text.lines().collect();
    if partial_first && !lines.is_empty() {
        lines.remove(0);
    }
    let start = match lines.iter().position(|l| PANIC_MARKERS.iter().any(|m| l.contains(m))) {
        Some(p) => p.saturating_sub(10),
        None => lines.len().saturating_sub(n),
    };
    let picked = &lines[start..(start + n).min(lines.len())];
    picked.iter().map(|l| sanitize(l)).collect::<Vec<_>>().join("\n")
}

fn sanitize(line: &str) -> String {
    line.chars().map(|c| if c.is_control() && c != '\t' { '\u{fffd}' } else { c }).collect()
}

/// The last `n` lines of a helper's log file, reading at most its last
/// 64 KiB: the file is small, but only its tail is of interest.
pub fn file_tail(path: &std::path::Path, n: usize) -> String {
    match std::fs::File::open(path) {
        Ok(f) => open_file_tail(&f, n),
        Err(_) => String::new(),
    }
}

/// As `file_tail`, for a file already open (read from its start, whatever
/// its offset).
pub fn open_file_tail(f: &std::fs::File, n: usize) -> String {
    let (text, cut) = read_end(f);
    tail_lines(&text, n, cut)
}

/// The whole of an open file's text, up to its last 64 KiB.
pub fn open_file_all(f: &std::fs::File) -> String {
    read_end(f).0
}

/// The last 64 KiB of `f` (by positioned reads: the shared offset of a
/// file another process writes is left alone), and whether it was cut.
fn read_end(f: &std::fs::File) -> (String, bool) {
    use std::os::unix::fs::FileExt;
    const MAX: u64 = 64 * 1024;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let from = len.saturating_sub(MAX);
    let mut b = vec![0u8; (len - from) as usize];
    let mut got = 0;
    while got < b.len() {
        match f.read_at(&mut b[got..], from + got as u64) {
            Ok(0) | Err(_) => break,
            Ok(k) => got += k,
        }
    }
    b.truncate(got);
    (String::from_utf8_lossy(&b).into_owned(), from > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_push_keeps_only_the_last_cap_bytes() {
        let c = Console::new(10);
        c.push(b"0123456789abc");
        c.push(b"de");
        assert_eq!(c.ring.lock().unwrap().iter().copied().collect::<Vec<u8>>(), b"56789abcde");
        c.push(&[b'x'; 100]);
        assert_eq!(c.ring.lock().unwrap().len(), 10);
        assert_eq!(c.total(), 115);
    }

    #[test]
    fn test_push_finds_markers_split_across_chunks() {
        let c = Console::new(1024);
        c.push(b"boot...\ncordon-agent: liste");
        assert!(!c.listening());
        c.push(b"ning on vsock:1024\n");
        assert!(c.listening());
        assert_eq!(c.panicked(), None);
        c.push(b"[ 1.0] Kernel pa");
        c.push(b"nic - not syncing\n");
        assert_eq!(c.panicked(), Some("Kernel panic"));
    }

    #[tokio::test]
    async fn test_wait_listening_wakes_on_the_marker() {
        let c = std::sync::Arc::new(Console::new(1024));
        let waiter = tokio::spawn({
            let c = c.clone();
            async move { c.wait_listening().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        let c2 = c.clone();
        std::thread::spawn(move || c2.push(b"cordon-agent: listening on vsock:1024\n")).join().unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await.unwrap().unwrap();
        c.wait_listening().await;
    }

    #[test]
    fn test_markers_found_after_a_flood_wrapped_the_ring() {
        let c = Console::new(64);
        for _ in 0..1000 {
            c.push(&[b'y'; 1000]);
        }
        c.push(b"\ncordon-agent: panic as PID 1: boom\n");
        assert_eq!(c.panicked(), Some("cordon-agent: panic as PID 1"));
        assert!(c.tail(5).contains("panic as PID 1: boom"), "{:?}", c.tail(5));
        assert_eq!(c.total(), 1_000_000 + 36);
    }

    #[test]
    fn test_tail_lines_table() {
        let text = "a\nb\nc\nd\n";
        assert_eq!(tail_lines(text, 2, false), "c\nd");
        assert_eq!(tail_lines(text, 10, false), "a\nb\nc\nd");
        assert_eq!(tail_lines(text, 10, true), "b\nc\nd", "a cut first line is dropped");
        let panic: String = (0..40).map(|i| format!("l{i}\n")).collect::<String>() + "Kernel panic - x\n" + "trace\n";
        let t = tail_lines(&panic, 3, false);
        assert_eq!(t, "l30\nl31\nl32", "starts 10 lines before the panic");
        assert_eq!(tail_lines("ok\x1b]0;pwned\x07\r\n", 5, false), "ok\u{fffd}]0;pwned\u{fffd}");
    }

    #[test]
    fn test_file_tail_reads_only_the_end() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("log");
        let mut big = "x".repeat(200 * 1024);
        big.push_str("\nsecond to last\nlast\n");
        std::fs::write(&p, big).unwrap();
        assert_eq!(file_tail(&p, 2), "second to last\nlast");
        assert_eq!(file_tail(&d.path().join("missing"), 2), "");
    }
}
