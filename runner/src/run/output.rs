//! Where step output and cordon's reports go: raw to stdout/stderr
//! (optionally prefixed per line) or JSON events on stdout. The writing
//! happens on a thread of its own behind a bounded queue, so a reader that
//! stops reading (a paused pager, a stalled CI log) never blocks the
//! runner's loop: its deadlines, Ctrl-C and the network gate keep running,
//! and the step meets backpressure instead. A reader that goes away
//! (`cordon run ... | head`) is not an error: stdout is marked closed and
//! the caller tells the step, as a shell pipeline would.

use bytes::Bytes;
use serde_json::json;
use std::io::Write;
use tokio::sync::{mpsc, watch};

use super::{RunError, StepEnd};
use crate::plan::Step;
use crate::term::say;

/// Bytes for stdout (0) or stderr (1), ready to write.
pub struct Chunk(usize, Bytes);

/// Chunks queued for the writer thread: at most this many (each at most a
/// protocol data chunk) before the step meets backpressure.
const QUEUE: usize = 32;

pub struct Output {
    pub json: bool,
    pub prefix: bool,
    at_line_start: [bool; 2],
    tx: Option<mpsc::Sender<Chunk>>,
    stdout_closed: watch::Receiver<bool>,
    writer: Option<std::thread::JoinHandle<()>>,
}

fn is_epipe(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::BrokenPipe
}

/// The writer thread: blocking writes, one chunk at a time; after EPIPE on
/// a stream, its chunks are dropped (and a closed stdout is announced).
fn writer(mut rx: mpsc::Receiver<Chunk>, closed_tx: watch::Sender<bool>) {
    let mut closed = [false, false];
    while let Some(Chunk(which, b)) = rx.blocking_recv() {
        if closed[which] {
            continue;
        }
        let res = if which == 0 {
            let mut o = std::io::stdout().lock();
            o.write_all(&b).and_then(|_| o.flush())
        } else {
            let mut e = std::io::stderr().lock();
            e.write_all(&b).and_then(|_| e.flush())
        };
        match res {
            Ok(()) => {}
            Err(e) if is_epipe(&e) => {
                closed[which] = true;
                if which == 0 {
                    let _ = closed_tx.send(true);
                }
            }
            Err(e) => {
                // Nothing sensible is left to do with this stream.
                closed[which] = true;
                say(&format!("writing the step's {} failed: {e}", if which == 0 { "stdout" } else { "stderr" }));
            }
        }
    }
}

impl Output {
    pub fn new(json: bool, prefix: bool) -> Result<Output, RunError> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (closed_tx, closed_rx) = watch::channel(false);
        let writer = std::thread::Builder::new()
            .name("output".into())
            .spawn(move || writer(rx, closed_tx))
            .map_err(RunError::Output)?;
        Ok(Output {
            json,
            prefix,
            at_line_start: [true, true],
            tx: Some(tx),
            stdout_closed: closed_rx,
            writer: Some(writer),
        })
    }

    /// The queue's sender, for a caller that reserves room before it takes
    /// more output from the step (see `run_step`).
    pub fn sender(&self) -> mpsc::Sender<Chunk> {
        self.tx.clone().expect("the output queue lives as long as Output")
    }

    /// Resolves when stdout's reader goes away (once).
    pub async fn stdout_closed(&mut self) {
        let _ = self.stdout_closed.wait_for(|c| *c).await;
    }

    /// A chunk of the step's stdout (`which` 0) or stderr (1), formatted
    /// (JSON event, or with line prefixes) for the writer.
    pub fn format(&mut self, step: &str, which: usize, b: &[u8]) -> Chunk {
        if self.json {
            let stream = if which == 0 { "stdout" } else { "stderr" };
            let ev = match std::str::from_utf8(b) {
                Ok(s) => json!({"event": "output", "step": step, "stream": stream, "data": s}),
                Err(_) => json!({"event": "output", "step": step, "stream": stream, "data_hex": hex::encode(b)}),
            };
            return Chunk(0, Bytes::from(event_line(&ev)));
        }
        if self.prefix {
            let p = prefix_lines(b, &format!("[{step}] "), &mut self.at_line_start[which]);
            return Chunk(which, Bytes::from(p));
        }
        Chunk(which, Bytes::copy_from_slice(b))
    }

    async fn send(&self, c: Chunk) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(c).await;
        }
    }

    /// One JSON event line on stdout.
    pub async fn event(&mut self, v: serde_json::Value) -> Result<(), RunError> {
        self.send(Chunk(0, Bytes::from(event_line(&v)))).await;
        Ok(())
    }

    /// Lets the writer drain: until it is done, or for at most `limit` (a
    /// reader that never reads again must not keep a cancelled run alive).
    pub fn finish(mut self, limit: Option<std::time::Duration>) {
        drop(self.tx.take());
        let Some(w) = self.writer.take() else { return };
        match limit {
            None => {
                let _ = w.join();
            }
            Some(limit) => {
                let until = std::time::Instant::now() + limit;
                while !w.is_finished() && std::time::Instant::now() < until {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            }
        }
    }

    /// Reports how a step ended (a JSON event, or a line on stderr).
    pub async fn step_end(&mut self, step: &Step, end: &StepEnd, code: u8) -> Result<(), RunError> {
        let name = &step.name;
        match end {
            StepEnd::Exited(st) | StepEnd::Stopped(_, Some(st)) => {
                let stop = match end {
                    StepEnd::Stopped(s, _) => Some(*s),
                    _ => None,
                };
                let cancelled = matches!(stop, Some(super::Stop::Signal(_)));
                let job_timed_out = stop == Some(super::Stop::JobTimeout);
                let timed_out = st.timed_out || matches!(stop, Some(super::Stop::StepTimeout)) || job_timed_out;
                if self.json {
                    self.event(json!({"event": "step_exited", "step": name, "exit_code": st.code, "signal": st.signal,
                        "timed_out": timed_out, "job_timed_out": job_timed_out, "oom_killed": st.oom_killed,
                        "cancelled": cancelled, "wall_ms": st.wall_ms, "peak_rss_kb": st.peak_rss_kb,
                        "output_cut": st.output_cut, "cordon_exit_code": code}))
                        .await?;
                    return Ok(());
                }
                if st.output_cut {
                    say(&format!(
                        "step {name:?}: output was cut: a process outside the step's tree kept its stdout/stderr open"
                    ));
                }
                if job_timed_out {
                    say(&format!("the job timed out during step {name:?}; its process tree was killed"));
                } else if timed_out {
                    say(&format!("step {name:?} timed out after {} ms; its process tree was killed", st.wall_ms));
                } else if cancelled {
                    say(&format!("step {name:?} cancelled"));
                } else if st.oom_killed {
                    say(&format!("step {name:?} was killed by the out-of-memory killer"));
                } else if let Some(sig) = st.signal {
                    say(&format!("step {name:?} was killed by signal {sig}"));
                }
            }
            StepEnd::Stopped(stop, None) => {
                let why = match stop {
                    super::Stop::Signal(s) => format!("cancelled by signal {s}"),
                    super::Stop::JobTimeout => "stopped by the job timeout".into(),
                    super::Stop::StepTimeout => "timed out".into(),
                };
                if self.json {
                    self.event(json!({"event": "step_exited", "step": name, "exit_code": null, "signal": null,
                        "timed_out": !matches!(stop, super::Stop::Signal(_)),
                        "job_timed_out": *stop == super::Stop::JobTimeout,
                        "cancelled": matches!(stop, super::Stop::Signal(_)), "sandbox_torn_down": true,
                        "cordon_exit_code": code}))
                        .await?;
                } else {
                    say(&format!(
                        "step {name:?} {why}, and the sandbox did not confirm its end in time: \
                         cordon tore the sandbox down"
                    ));
                }
            }
            StepEnd::StartFailed(reason, message) => {
                if self.json {
                    self.event(json!({"event": "step_failed_to_start", "step": name, "reason": reason,
                        "message": message, "cordon_exit_code": code}))
                        .await?;
                } else {
                    say(&format!("step {name:?} could not start: {message}"));
                }
            }
        }
        Ok(())
    }
}

fn event_line(v: &serde_json::Value) -> Vec<u8> {
    let mut line = serde_json::to_vec(v).expect("JSON values serialize");
    line.push(b'\n');
    line
}

/// Inserts `prefix` at the start of every line; `at_start` carries line
/// state across chunks.
pub fn prefix_lines(b: &[u8], prefix: &str, at_start: &mut bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len() + prefix.len() * 4);
    for &c in b {
        if *at_start {
            out.extend_from_slice(prefix.as_bytes());
            *at_start = false;
        }
        out.push(c);
        if c == b'\n' {
            *at_start = true;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_prefix_lines_across_chunks() {
        let mut s = true;
        let mut out = prefix_lines(b"a\nb", "[x] ", &mut s);
        out.extend(prefix_lines(b"c\n\nd", "[x] ", &mut s));
        assert_eq!(String::from_utf8(out).unwrap(), "[x] a\n[x] bc\n[x] \n[x] d");
    }
}
