//! Moves frames between the sandbox's end (QEMU's `-netdev stream`, or a tap
//! device relayed the same way) and passt, through the Gate. Both sides
//! speak 4-byte big-endian length + Ethernet frame. Writes the audit log.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use super::dns;
use super::gate::{Gate, Outbound};

/// Larger than any frame passt or QEMU sends (MTU 65520 + Ethernet header).
pub const MAX_FRAME: usize = 65_600;

type Reader = tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>;

async fn read_frame(r: &mut Reader, buf: &mut Vec<u8>) -> std::io::Result<bool> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(e) => return Err(e),
    }
    let n = u32::from_be_bytes(len) as usize;
    if !(14..=MAX_FRAME).contains(&n) {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("frame of {n} bytes")));
    }
    buf.resize(n, 0);
    r.read_exact(buf).await?;
    Ok(true)
}

/// Writes queued frames, batching whatever is queued into one write.
fn writer(w: tokio::net::unix::OwnedWriteHalf) -> (mpsc::Sender<Vec<u8>>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(512);
    let task = tokio::spawn(async move {
        let mut w = tokio::io::BufWriter::with_capacity(256 * 1024, w);
        while let Some(mut f) = rx.recv().await {
            loop {
                if w.write_all(&(f.len() as u32).to_be_bytes()).await.is_err() || w.write_all(&f).await.is_err() {
                    return;
                }
                match rx.try_recv() {
                    Ok(next) => f = next,
                    Err(_) => break,
                }
            }
            if w.flush().await.is_err() {
                return;
            }
        }
    });
    (tx, task)
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
        let log = match log {
            Some(p) => Some(Arc::new(Mutex::new(std::fs::OpenOptions::new().create(true).append(true).open(p)?))),
            None => None,
        };
        let gate = Arc::new(Mutex::new(gate));
        let (g_r, g_w) = guest.into_split();
        let (p_r, p_w) = passt.into_split();
        let mut g_r = tokio::io::BufReader::with_capacity(256 * 1024, g_r);
        let mut p_r = tokio::io::BufReader::with_capacity(256 * 1024, p_r);
        let (to_guest, wg) = writer(g_w);
        let (to_passt, wp) = writer(p_w);
        let upstream = dns::upstream();
        // Debugging aid: one stderr line per frame.
        let trace = std::env::var_os("CORDON_GATE_TRACE").is_some();

        let (g2, tg, tp) = (gate.clone(), to_guest.clone(), to_passt.clone());
        let outbound = tokio::spawn(async move {
            let mut buf = Vec::with_capacity(MAX_FRAME);
            loop {
                match read_frame(&mut g_r, &mut buf).await {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "guest network stream failed");
                        break;
                    }
                }
                let action = g2.lock().expect("gate lock").outbound(&buf);
                if trace {
                    eprintln!("gate out {:?} -> {:?}", super::packet::parse(&buf), matches!(action, Outbound::Forward));
                }
                match action {
                    Outbound::Forward => {
                        let frame = std::mem::replace(&mut buf, Vec::with_capacity(2048));
                        if tp.send(frame).await.is_err() {
                            break;
                        }
                    }
                    Outbound::Drop => {}
                    Outbound::Reply(frames) => {
                        for f in frames {
                            let _ = tg.send(f).await;
                        }
                    }
                    Outbound::Resolve(job) => {
                        let (g3, tg3) = (g2.clone(), tg.clone());
                        tokio::spawn(async move {
                            let answers = match upstream {
                                Some(server) => dns::resolve(server, &job.query.name, job.query.qtype).await,
                                None => None,
                            };
                            let reply = g3.lock().expect("gate lock").dns_answer(&job, answers);
                            if let Some(r) = reply {
                                let _ = tg3.send(r).await;
                            }
                        });
                    }
                }
            }
        });
        let (g2, tg) = (gate.clone(), to_guest);
        let inbound = tokio::spawn(async move {
            let mut buf = Vec::with_capacity(MAX_FRAME);
            while let Ok(true) = read_frame(&mut p_r, &mut buf).await {
                let pass = g2.lock().expect("gate lock").inbound(&buf);
                if trace {
                    eprintln!("gate in {:?} -> {pass}", super::packet::parse(&buf));
                }
                if pass {
                    let frame = std::mem::replace(&mut buf, Vec::with_capacity(2048));
                    if tg.send(frame).await.is_err() {
                        break;
                    }
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
        drop(to_passt);
        Ok(Relay { gate, log, tasks: vec![outbound, inbound, sweeper, wg, wp], started: Instant::now() })
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        let (allowed, denied) = {
            let mut g = self.gate.lock().expect("gate lock");
            g.close_all();
            (g.allowed, g.denied)
        };
        flush_log(&self.gate, &self.log);
        if let Some(log) = &self.log {
            let summary = serde_json::json!({
                "summary": true,
                "flows_allowed": allowed,
                "flows_denied": denied,
                "seconds": self.started.elapsed().as_secs_f64(),
            });
            let _ = writeln!(log.lock().expect("log lock"), "{summary}");
        }
    }
}
