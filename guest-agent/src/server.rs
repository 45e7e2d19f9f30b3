//! One control connection: push Ready, check Hello (version and token) and
//! claim the agent's one session (see [`Slot`]), then
//! dispatch frames to execs and transfers until Shutdown or the connection is
//! lost. Bad input from the peer gets an Error reply on its stream; only a
//! broken framing layer ends the connection. Losing the connection kills
//! every exec it started.

use bytes::Bytes;
use cordon_protocol::{
    negotiate, Channel, ErrorCode, Frame, FrameReader, FrameWriter, Kind, Message, Ready, Window, CONNECTION_STREAM,
    INITIAL_WINDOW, VERSION_MAX, VERSION_MIN,
};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};

use crate::exec::{ExecControl, ExecCtx, ExecIo, StdinEvent};
use crate::outbox::Outbox;
use crate::transfer::{self, PutEvent};

/// How long execs get to die after their connection ends (grace periods included).
const EXEC_TEARDOWN: Duration = Duration::from_secs(30);

/// How long a new connection has to send Hello.
const HELLO_DEADLINE: Duration = Duration::from_secs(30);

pub struct Agent {
    pub exec: Arc<ExecCtx>,
    /// The per-sandbox token; an empty one authenticates nobody.
    pub token: String,
    /// Taken by the first connection that authenticates.
    pub slot: Slot,
    pub ready: Ready,
    pub spool_dir: PathBuf,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The runner asked for Shutdown.
    Shutdown,
    /// The authenticated connection ended without Shutdown.
    Lost,
    /// The connection never authenticated (bad token or version, no Hello,
    /// or the session was already taken); the slot is untouched by it.
    Refused,
}

/// The agent serves exactly one runner: the first connection whose Hello
/// carries the token (and a common version) claims the slot for good;
/// connections that fail the handshake leave it free, and every later one
/// is refused, so a leaked token is worth nothing once the runner is in.
pub struct Slot {
    taken: watch::Sender<bool>,
}

impl Default for Slot {
    fn default() -> Slot {
        Slot { taken: watch::channel(false).0 }
    }
}

impl Slot {
    /// Takes the slot; false when it was already taken.
    pub fn claim(&self) -> bool {
        self.taken.send_if_modified(|t| !std::mem::replace(t, true))
    }

    /// Resolves once the slot is taken.
    pub async fn claimed(&self) {
        let mut rx = self.taken.subscribe();
        let _ = rx.wait_for(|t| *t).await;
    }
}

/// Inbound data accounting for one receiving channel: bytes received and not
/// yet credited back. The peer may have at most INITIAL_WINDOW outstanding.
pub type Inflight = Arc<AtomicU64>;

enum Entry {
    Exec {
        stdin: mpsc::UnboundedSender<StdinEvent>,
        stdin_eof: bool,
        stdin_inflight: Inflight,
        stdout: Window,
        stderr: Window,
        signals: mpsc::UnboundedSender<ExecControl>,
    },
    Put {
        data: mpsc::UnboundedSender<PutEvent>,
        ended: bool,
        inflight: Inflight,
    },
    Get {
        win: Window,
    },
}

type Streams = Arc<Mutex<HashMap<u32, Entry>>>;

pub async fn serve<S>(agent: Arc<Agent>, conn: S) -> Outcome
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (r, w) = tokio::io::split(conn);
    let mut reader = FrameReader::new(r);
    let (tx, mut rx) = mpsc::channel::<Frame>(64);
    let writer = tokio::spawn(async move {
        let mut w = FrameWriter::new(w);
        while let Some(f) = rx.recv().await {
            if let Err(e) = w.write_frame(&f).await {
                tracing::warn!(error = %e, "writing to the runner failed");
                break;
            }
        }
        let _ = w.flush().await;
    });
    let out = Outbox::new(tx);
    let (closed_tx, closed_rx) = watch::channel(false);
    let streams: Streams = Arc::new(Mutex::new(HashMap::new()));
    let outcome = run_connection(&agent, &mut reader, &out, &streams, closed_rx).await;
    // Kills every exec this connection started (they watch `closed`), and
    // waits until their trees are gone: the agent may exit right after.
    let _ = closed_tx.send(true);
    streams.lock().expect("streams lock").retain(|_, e| {
        if let Entry::Get { win } = e {
            win.close();
        }
        matches!(e, Entry::Exec { .. })
    });
    let drained = async {
        while !streams.lock().expect("streams lock").is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    if tokio::time::timeout(EXEC_TEARDOWN, drained).await.is_err() {
        tracing::error!("execs still running {EXEC_TEARDOWN:?} after the connection ended");
    }
    drop(out);
    // Flush what is queued (the ShutdownAck, or the error that explains why
    // the connection ends), but never wait long on a peer that stopped reading.
    let mut writer = writer;
    if tokio::time::timeout(Duration::from_secs(2), &mut writer).await.is_err() {
        writer.abort();
    }
    outcome
}

async fn run_connection<R: AsyncRead + Unpin>(
    agent: &Arc<Agent>,
    reader: &mut FrameReader<R>,
    out: &Outbox,
    streams: &Streams,
    closed: watch::Receiver<bool>,
) -> Outcome {
    out.msg(CONNECTION_STREAM, &Message::Ready(agent.ready.clone())).await;
    match tokio::time::timeout(HELLO_DEADLINE, handshake(agent, reader, out)).await {
        Ok(true) => {}
        Ok(false) => return Outcome::Refused,
        Err(_) => {
            out.error(CONNECTION_STREAM, ErrorCode::Unexpected, "no hello within the deadline").await;
            return Outcome::Refused;
        }
    }
    loop {
        let frame = match reader.read_frame().await {
            Ok(Some(f)) => f,
            Ok(None) => return Outcome::Lost,
            Err(e) => {
                tracing::warn!(error = %e, "control connection failed");
                out.error(CONNECTION_STREAM, ErrorCode::BadMessage, e.to_string()).await;
                return Outcome::Lost;
            }
        };
        match frame.kind {
            Kind::CONTROL => {
                let msg = match Message::from_bytes(&frame.body) {
                    Ok(m) => m,
                    Err(e) => {
                        out.error(frame.stream, ErrorCode::BadMessage, format!("undecodable control message: {e}"))
                            .await;
                        continue;
                    }
                };
                if let Some(o) = control(agent, out, streams, &closed, frame.stream, msg).await {
                    return o;
                }
            }
            Kind::STDIN | Kind::ARCHIVE => {
                data(out, streams, frame).await;
            }
            k if !k.is_known() => {
                out.error(frame.stream, ErrorCode::UnknownKind, format!("unknown frame kind {}", k.0)).await;
            }
            k => {
                out.error(
                    frame.stream,
                    ErrorCode::Unexpected,
                    format!("frame kind {} is not accepted by the agent", k.0),
                )
                .await;
            }
        }
    }
}

async fn handshake<R: AsyncRead + Unpin>(agent: &Agent, reader: &mut FrameReader<R>, out: &Outbox) -> bool {
    let f = match reader.read_frame().await {
        Ok(Some(f)) => f,
        _ => return false,
    };
    let hello = match (f.kind, Message::from_bytes(&f.body)) {
        (Kind::CONTROL, Ok(Message::Hello(h))) if f.stream == CONNECTION_STREAM => h,
        _ => {
            out.error(CONNECTION_STREAM, ErrorCode::Unexpected, "the first frame must be hello on stream 0").await;
            return false;
        }
    };
    if agent.token.is_empty() || !constant_time_eq(hello.token.as_bytes(), agent.token.as_bytes()) {
        out.error(CONNECTION_STREAM, ErrorCode::BadToken, "the sandbox token does not match").await;
        return false;
    }
    match negotiate((VERSION_MIN, VERSION_MAX), (hello.version_min, hello.version_max)) {
        Some(_) if !agent.slot.claim() => {
            out.error(CONNECTION_STREAM, ErrorCode::Unexpected, "the agent already serves its runner").await;
            false
        }
        Some(version) => {
            // The slot is this connection's now, even if Welcome cannot be
            // written: it ends as the session (Lost), never as Refused.
            out.msg(CONNECTION_STREAM, &Message::Welcome { version }).await;
            true
        }
        None => {
            out.error(
                CONNECTION_STREAM,
                ErrorCode::NoCommonVersion,
                format!(
                    "agent speaks {VERSION_MIN}..={VERSION_MAX}, runner {}..={}",
                    hello.version_min, hello.version_max
                ),
            )
            .await;
            false
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether `stream` may open a new request; answers BadStream when not.
async fn claimable(out: &Outbox, streams: &Streams, stream: u32) -> bool {
    let taken = streams.lock().expect("streams lock").contains_key(&stream);
    let ok = stream != CONNECTION_STREAM && !taken;
    if !ok {
        out.error(stream, ErrorCode::BadStream, format!("stream {stream} is reserved or in use")).await;
    }
    ok
}

async fn control(
    agent: &Arc<Agent>,
    out: &Outbox,
    streams: &Streams,
    closed: &watch::Receiver<bool>,
    stream: u32,
    msg: Message,
) -> Option<Outcome> {
    match msg {
        Message::Exec(req) => {
            if !claimable(out, streams, stream).await {
                return None;
            }
            let (stdin_tx, stdin_rx) = mpsc::unbounded_channel();
            let (sig_tx, sig_rx) = mpsc::unbounded_channel();
            let (stdout, stderr) = (Window::new(), Window::new());
            if !req.stdin {
                let _ = stdin_tx.send(StdinEvent::Eof);
            }
            let stdin_inflight = Inflight::default();
            streams.lock().expect("streams lock").insert(
                stream,
                Entry::Exec {
                    stdin: stdin_tx,
                    stdin_eof: !req.stdin,
                    stdin_inflight: stdin_inflight.clone(),
                    stdout: stdout.clone(),
                    stderr: stderr.clone(),
                    signals: sig_tx,
                },
            );
            let io = ExecIo {
                out: out.clone(),
                stream,
                stdout_win: stdout,
                stderr_win: stderr,
                stdin: stdin_rx,
                stdin_inflight,
                signals: sig_rx,
                closed: closed.clone(),
            };
            let (ctx, streams) = (agent.exec.clone(), streams.clone());
            tokio::spawn(async move {
                crate::exec::run(ctx, req, io).await;
                streams.lock().expect("streams lock").remove(&stream);
            });
        }
        Message::PutArchive { dest } => {
            if !claimable(out, streams, stream).await {
                return None;
            }
            let (tx, rx) = mpsc::unbounded_channel();
            let inflight = Inflight::default();
            streams
                .lock()
                .expect("streams lock")
                .insert(stream, Entry::Put { data: tx, ended: false, inflight: inflight.clone() });
            let (out, streams, spool) = (out.clone(), streams.clone(), agent.spool_dir.clone());
            tokio::spawn(async move {
                transfer::put(out, stream, dest, spool, rx, inflight).await;
                streams.lock().expect("streams lock").remove(&stream);
            });
        }
        Message::GetArchive { path } => {
            if !claimable(out, streams, stream).await {
                return None;
            }
            let win = Window::new();
            streams.lock().expect("streams lock").insert(stream, Entry::Get { win: win.clone() });
            let (out, streams) = (out.clone(), streams.clone());
            tokio::spawn(async move {
                transfer::get(out, stream, path, win).await;
                streams.lock().expect("streams lock").remove(&stream);
            });
        }
        Message::ArchiveEnd { size, sha256 } => {
            let accepted = match streams.lock().expect("streams lock").get_mut(&stream) {
                Some(Entry::Put { data, ended, .. }) if !*ended => {
                    *ended = true;
                    let _ = data.send(PutEvent::End { size, sha256 });
                    true
                }
                _ => false,
            };
            if !accepted {
                out.error(stream, ErrorCode::Unexpected, "archive_end without an open put_archive").await;
            }
        }
        Message::Signal { signal } => {
            let ok = match streams.lock().expect("streams lock").get(&stream) {
                Some(Entry::Exec { signals, .. }) if (1..=64).contains(&signal) => {
                    signals.send(ExecControl::Signal(signal)).is_ok()
                }
                _ => false,
            };
            if !ok {
                out.error(stream, ErrorCode::Unexpected, format!("cannot send signal {signal} on stream {stream}"))
                    .await;
            }
        }
        Message::Resize(size) => {
            let ok = match streams.lock().expect("streams lock").get(&stream) {
                Some(Entry::Exec { signals, .. }) if size.rows > 0 && size.cols > 0 => {
                    signals.send(ExecControl::Resize(size)).is_ok()
                }
                _ => false,
            };
            if !ok {
                out.error(stream, ErrorCode::Unexpected, format!("cannot resize stream {stream}")).await;
            }
        }
        Message::Credit { channel, bytes } => {
            let res = match (streams.lock().expect("streams lock").get(&stream), channel) {
                (Some(Entry::Exec { stdout, .. }), Channel::Stdout) => Some(stdout.give(bytes)),
                (Some(Entry::Exec { stderr, .. }), Channel::Stderr) => Some(stderr.give(bytes)),
                (Some(Entry::Get { win }), Channel::Archive) => Some(win.give(bytes)),
                // Credit for a stream that just ended is normal; ignore it.
                (None, _) => Some(Ok(())),
                _ => None,
            };
            match res {
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    out.error(stream, ErrorCode::FlowControl, e.to_string()).await;
                }
                None => {
                    out.error(stream, ErrorCode::Unexpected, format!("credit for {channel:?} on stream {stream}"))
                        .await;
                }
            }
        }
        Message::Shutdown => {
            if stream != CONNECTION_STREAM {
                out.error(stream, ErrorCode::BadStream, "shutdown belongs on stream 0").await;
                return None;
            }
            out.msg(CONNECTION_STREAM, &Message::ShutdownAck).await;
            return Some(Outcome::Shutdown);
        }
        Message::Hello(_) => {
            out.error(stream, ErrorCode::Unexpected, "hello was already exchanged").await;
        }
        other => {
            let name = serde_json::to_value(&other)
                .ok()
                .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_owned))
                .unwrap_or_default();
            out.error(stream, ErrorCode::Unexpected, format!("{name} is not a request the agent accepts")).await;
        }
    }
    None
}

async fn data(out: &Outbox, streams: &Streams, f: Frame) {
    let len = f.body.len() as u64;
    let eof = f.is_eof();
    let stream = f.stream;
    let body: Bytes = f.body;
    let err = {
        let mut s = streams.lock().expect("streams lock");
        match (s.get_mut(&stream), f.kind) {
            (Some(Entry::Exec { stdin, stdin_eof, stdin_inflight, .. }), Kind::STDIN) if !*stdin_eof => {
                if !take_inflight(stdin_inflight, len) {
                    Some((ErrorCode::FlowControl, "stdin data beyond the granted window".to_string()))
                } else {
                    if len > 0 {
                        let _ = stdin.send(StdinEvent::Data(body));
                    }
                    if eof {
                        *stdin_eof = true;
                        let _ = stdin.send(StdinEvent::Eof);
                    }
                    None
                }
            }
            (Some(Entry::Put { data, ended, inflight }), Kind::ARCHIVE) if !*ended => {
                if !take_inflight(inflight, len) {
                    Some((ErrorCode::FlowControl, "archive data beyond the granted window".to_string()))
                } else {
                    if len > 0 {
                        let _ = data.send(PutEvent::Data(body));
                    }
                    None
                }
            }
            _ => Some((ErrorCode::Unexpected, format!("no open stream {stream} accepts kind {} data", f.kind.0))),
        }
    };
    if let Some((code, msg)) = err {
        out.error(stream, code, msg).await;
    }
}

/// Accounts `len` received bytes; false when the sender overran its window.
fn take_inflight(ctr: &Inflight, len: u64) -> bool {
    let now = ctr.fetch_add(len, Ordering::AcqRel) + len;
    if now > INITIAL_WINDOW as u64 {
        ctr.fetch_sub(len, Ordering::AcqRel);
        return false;
    }
    true
}
