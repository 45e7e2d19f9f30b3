//! AgentClient: the runner's side of the protocol over any byte stream. One
//! reader task routes frames to per-stream queues (bounded by the credit the
//! client grants as it consumes), one writer task owns the transport. A lost
//! connection wakes every waiter with `AgentError::Lost`.

use bytes::Bytes;
use cordon_protocol::archive::{pack_to_channel, unpack, StreamDigest};
use cordon_protocol::{
    Channel, ErrorCode, Exec, ExecFailure, ExitStatus, Frame, FrameReader, FrameWriter, Hello, Kind, Message, Ready,
    Window, CONNECTION_STREAM, DATA_CHUNK, FLAG_EOF, INITIAL_WINDOW, VERSION_MAX, VERSION_MIN,
};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the agent connection was lost{}", .0.as_deref().map(|s| format!(": {s}")).unwrap_or_default())]
    Lost(Option<String>),
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, &'static str),
    #[error("the agent refused the connection ({code:?}): {message}")]
    Refused { code: ErrorCode, message: String },
    #[error("the agent sent {0} where the protocol does not allow it")]
    Protocol(String),
    #[error("the agent reported {code:?}: {message}")]
    Remote { code: ErrorCode, message: String },
    #[error("archive checksum mismatch: {0}")]
    ChecksumMismatch(String),
    #[error("the archive is larger than the {0} bytes left of this run's artifact limit (--max-artifacts-size)")]
    TooLarge(u64),
    #[error("local archive i/o failed")]
    Io(#[source] std::io::Error),
}

enum Inbound {
    Msg(Message),
    Data { kind: Kind, body: Bytes },
}

struct Slot {
    tx: mpsc::UnboundedSender<Inbound>,
    /// Windows for what this client sends on the stream (stdin, archive).
    send_win: Option<(Channel, Window)>,
    /// What is queued here and not yet consumed: a hostile agent that
    /// ignores flow control is cut off instead of growing the queue.
    queued: Arc<Queued>,
}

#[derive(Default)]
struct Queued {
    bytes: std::sync::atomic::AtomicU64,
    msgs: AtomicU32,
}

/// Data an agent may have queued on one stream: every data channel's window.
const MAX_QUEUED_BYTES: u64 = 3 * INITIAL_WINDOW as u64;
/// Control messages an agent may have queued on one stream.
const MAX_QUEUED_MSGS: u32 = 256;

/// The receiving end of one stream, keeping the queue accounting.
struct StreamRx {
    rx: mpsc::UnboundedReceiver<Inbound>,
    queued: Arc<Queued>,
}

impl StreamRx {
    async fn recv(&mut self) -> Option<Inbound> {
        let m = self.rx.recv().await;
        match &m {
            Some(Inbound::Data { body, .. }) => {
                self.queued.bytes.fetch_sub(body.len() as u64, Ordering::AcqRel);
            }
            Some(Inbound::Msg(_)) => {
                self.queued.msgs.fetch_sub(1, Ordering::AcqRel);
            }
            None => {}
        }
        m
    }
}

struct Shared {
    out: mpsc::Sender<Frame>,
    /// When the client started, and milliseconds after it that the last
    /// frame arrived: a watchdog's view of a starved or silent agent.
    born: std::time::Instant,
    heard_ms: std::sync::atomic::AtomicU64,
    streams: Mutex<HashMap<u32, Slot>>,
    lost: Mutex<Option<String>>,
}

impl Shared {
    async fn send(&self, f: Frame) -> Result<(), AgentError> {
        self.out.send(f).await.map_err(|_| self.lost_error())
    }

    async fn msg(&self, stream: u32, m: &Message) -> Result<(), AgentError> {
        self.send(Frame::new(stream, Kind::CONTROL, 0, m.to_bytes())).await
    }

    fn lost_error(&self) -> AgentError {
        AgentError::Lost(self.lost.lock().expect("lost lock").clone())
    }

    fn register(&self, stream: u32, send_win: Option<(Channel, Window)>) -> StreamRx {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(Queued::default());
        self.streams.lock().expect("streams lock").insert(stream, Slot { tx, send_win, queued: queued.clone() });
        StreamRx { rx, queued }
    }

    fn unregister(&self, stream: u32) {
        if let Some(slot) = self.streams.lock().expect("streams lock").remove(&stream) {
            if let Some((_, w)) = slot.send_win {
                w.close();
            }
        }
    }
}

pub struct AgentClient {
    shared: Arc<Shared>,
    conn_rx: tokio::sync::Mutex<StreamRx>,
    next_stream: AtomicU32,
    pub ready: Ready,
    pub version: u32,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for AgentClient {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl AgentClient {
    /// Waits for Ready, sends Hello with `token`, waits for Welcome.
    pub async fn connect<S>(io: S, token: &str, deadline: Duration) -> Result<AgentClient, AgentError>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        Self::connect_with(io, token, deadline, false).await
    }

    /// As `connect`; with `eager`, Hello is sent before Ready arrives,
    /// saving a round trip. Only for a channel that holds what is written
    /// before its peer reads (a socketpair whose other end only the agent
    /// holds, as in the namespace backend), never one that may drop it or
    /// reach someone else first.
    pub async fn connect_with<S>(io: S, token: &str, deadline: Duration, eager: bool) -> Result<AgentClient, AgentError>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (r, w) = tokio::io::split(io);
        let (out_tx, mut out_rx) = mpsc::channel::<Frame>(64);
        let shared = Arc::new(Shared {
            out: out_tx,
            born: std::time::Instant::now(),
            heard_ms: std::sync::atomic::AtomicU64::new(0),
            streams: Mutex::new(HashMap::new()),
            lost: Mutex::new(None),
        });
        let writer = tokio::spawn(async move {
            let mut w = FrameWriter::new(w);
            while let Some(f) = out_rx.recv().await {
                if w.write_frame(&f).await.is_err() {
                    break;
                }
            }
            let _ = w.shutdown().await;
        });
        let conn_rx = shared.register(CONNECTION_STREAM, None);
        let reader = tokio::spawn(read_loop(shared.clone(), FrameReader::new(r)));
        let mut client = AgentClient {
            shared,
            conn_rx: tokio::sync::Mutex::new(conn_rx),
            next_stream: AtomicU32::new(1),
            ready: Ready {
                agent_version: String::new(),
                version_min: 0,
                version_max: 0,
                capabilities: vec![],
                kernel_boot_ms: None,
                agent_start_ms: 0,
            },
            version: 0,
            tasks: vec![reader, writer],
        };
        tokio::time::timeout(deadline, client.handshake(token, eager))
            .await
            .map_err(|_| AgentError::Timeout(deadline, "the agent's ready and welcome"))??;
        Ok(client)
    }

    async fn handshake(&mut self, token: &str, eager: bool) -> Result<(), AgentError> {
        let hello = Message::Hello(Hello {
            version_min: VERSION_MIN,
            version_max: VERSION_MAX,
            runner_version: env!("CARGO_PKG_VERSION").to_string(),
            token: token.to_string(),
        });
        if eager {
            self.shared.msg(CONNECTION_STREAM, &hello).await?;
        }
        match self.next_conn_msg().await? {
            Message::Ready(r) => self.ready = r,
            other => return Err(AgentError::Protocol(format!("{other:?} before ready"))),
        }
        if !eager {
            self.shared.msg(CONNECTION_STREAM, &hello).await?;
        }
        match self.next_conn_msg().await? {
            Message::Welcome { version } => self.version = version,
            Message::Error { code, message } => return Err(AgentError::Refused { code, message }),
            other => return Err(AgentError::Protocol(format!("{other:?} instead of welcome"))),
        }
        Ok(())
    }

    async fn next_conn_msg(&self) -> Result<Message, AgentError> {
        match self.conn_rx.lock().await.recv().await {
            Some(Inbound::Msg(m)) => Ok(m),
            Some(Inbound::Data { kind, .. }) => {
                Err(AgentError::Protocol(format!("data of kind {} on stream 0", kind.0)))
            }
            None => Err(self.shared.lost_error()),
        }
    }

    /// How long since the agent last sent anything (a frame of any kind).
    pub fn silent_for(&self) -> Duration {
        let heard = Duration::from_millis(self.shared.heard_ms.load(Ordering::Relaxed));
        self.shared.born.elapsed().saturating_sub(heard)
    }

    fn alloc_stream(&self) -> u32 {
        self.next_stream.fetch_add(1, Ordering::Relaxed)
    }

    /// Starts a process; `ExecHandle::started` says whether it ran.
    pub async fn exec(&self, req: Exec) -> Result<ExecHandle, AgentError> {
        let stream = self.alloc_stream();
        let stdin_win = Window::new();
        let rx = self.shared.register(stream, Some((Channel::Stdin, stdin_win.clone())));
        self.shared.msg(stream, &Message::Exec(req)).await?;
        Ok(ExecHandle { shared: self.shared.clone(), stream, rx, stdin_win, done: false, owed: None })
    }

    /// Copies `local` (a directory's contents or a file) into `dest` in the sandbox.
    pub async fn put_archive(&self, local: &Path, dest: &str) -> Result<u64, AgentError> {
        let stream = self.alloc_stream();
        let win = Window::new();
        let mut rx = self.shared.register(stream, Some((Channel::Archive, win.clone())));
        let res = async {
            self.shared.msg(stream, &Message::PutArchive { dest: dest.to_string() }).await?;
            let (mut chunks, packer) = pack_to_channel(local.to_path_buf());
            while let Some(c) = chunks.recv().await {
                self.send_data(stream, Kind::ARCHIVE, &win, c, &mut rx).await?;
            }
            let (size, sha256) =
                packer.await.map_err(|e| AgentError::Io(std::io::Error::other(e)))?.map_err(AgentError::Io)?;
            self.finish_put(stream, size, sha256, &mut rx).await
        }
        .await;
        self.shared.unregister(stream);
        res
    }

    /// Sends `data` as an archive claiming `size` and `sha256`, for tests of
    /// the agent's verification.
    pub async fn put_archive_raw(&self, data: &[u8], dest: &str, size: u64, sha256: &str) -> Result<u64, AgentError> {
        let stream = self.alloc_stream();
        let win = Window::new();
        let mut rx = self.shared.register(stream, Some((Channel::Archive, win.clone())));
        let res = async {
            self.shared.msg(stream, &Message::PutArchive { dest: dest.to_string() }).await?;
            for c in data.chunks(DATA_CHUNK) {
                self.send_data(stream, Kind::ARCHIVE, &win, Bytes::copy_from_slice(c), &mut rx).await?;
            }
            self.finish_put(stream, size, sha256.to_string(), &mut rx).await
        }
        .await;
        self.shared.unregister(stream);
        res
    }

    async fn send_data(
        &self,
        stream: u32,
        kind: Kind,
        win: &Window,
        c: Bytes,
        rx: &mut StreamRx,
    ) -> Result<(), AgentError> {
        // An early error reply (bad dest, say) must not leave us waiting for credit.
        tokio::select! {
            ok = win.take(c.len()) => if !ok { return Err(self.shared.lost_error()) },
            m = rx.recv() => return Err(unexpected_reply(m, &self.shared)),
        }
        self.shared.send(Frame::new(stream, kind, 0, c)).await
    }

    async fn finish_put(&self, stream: u32, size: u64, sha256: String, rx: &mut StreamRx) -> Result<u64, AgentError> {
        self.shared.send(Frame::new(stream, Kind::ARCHIVE, FLAG_EOF, Bytes::new())).await?;
        self.shared.msg(stream, &Message::ArchiveEnd { size, sha256 }).await?;
        match rx.recv().await {
            Some(Inbound::Msg(Message::ArchiveDone { files })) => Ok(files),
            m => Err(unexpected_reply(m, &self.shared)),
        }
    }

    /// Copies `path` from the sandbox into the local directory `dest`,
    /// verified: a directory's contents land in `dest`, a file as
    /// `dest/<name>`. For trusted agents (tests); the runner stages hostile
    /// archives with `receive_archive` and `crate::artifacts` instead.
    pub async fn get_archive(&self, path: &str, dest: &Path) -> Result<u64, AgentError> {
        let spool = tempfile::NamedTempFile::new().map_err(AgentError::Io)?;
        let mut file = tokio::fs::File::from_std(spool.reopen().map_err(AgentError::Io)?);
        self.receive_archive(path, &mut file, u64::MAX, Duration::from_secs(60)).await?;
        let dest = dest.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let f = std::fs::File::open(spool.path())?;
            unpack(std::io::BufReader::new(f), &dest)
        })
        .await
        .map_err(|e| AgentError::Io(std::io::Error::other(e)))?
        .map_err(AgentError::Io)
    }

    /// Receives `path` from the sandbox as a tar stream into `spool`, at most
    /// `limit` bytes, failing when the agent sends nothing for `idle`.
    /// Returns whether `path` is a directory and the stream's size, after
    /// checking the size and SHA-256 the agent claims.
    pub async fn receive_archive(
        &self,
        path: &str,
        spool: &mut tokio::fs::File,
        limit: u64,
        idle: Duration,
    ) -> Result<(bool, u64), AgentError> {
        let stream = self.alloc_stream();
        let mut rx = self.shared.register(stream, None);
        let res = async {
            self.shared.msg(stream, &Message::GetArchive { path: path.to_string() }).await?;
            let is_dir = match recv_within(&mut rx, idle).await? {
                Some(Inbound::Msg(Message::ArchiveInfo { is_dir })) => is_dir,
                m => return Err(unexpected_reply(m, &self.shared)),
            };
            let mut digest = StreamDigest::default();
            let (size, sha256) = loop {
                match recv_within(&mut rx, idle).await? {
                    Some(Inbound::Data { kind: Kind::ARCHIVE, body, .. }) => {
                        if digest.size() + body.len() as u64 > limit {
                            return Err(AgentError::TooLarge(limit));
                        }
                        digest.update(&body);
                        spool.write_all(&body).await.map_err(AgentError::Io)?;
                        if !body.is_empty() {
                            let credit = Message::Credit { channel: Channel::Archive, bytes: body.len() as u32 };
                            self.shared.msg(stream, &credit).await?;
                        }
                    }
                    Some(Inbound::Msg(Message::ArchiveEnd { size, sha256 })) => break (size, sha256),
                    m => return Err(unexpected_reply(m, &self.shared)),
                }
            };
            spool.flush().await.map_err(AgentError::Io)?;
            let (got_size, got_sha) = digest.finish();
            if (got_size, &got_sha) != (size, &sha256) {
                return Err(AgentError::ChecksumMismatch(format!(
                    "received {got_size} bytes sha256 {got_sha}, agent said {size} bytes sha256 {sha256}"
                )));
            }
            Ok((is_dir, size))
        }
        .await;
        self.shared.unregister(stream);
        res
    }

    /// Asks the agent to stop (as PID 1 it powers the VM off) and waits for its ack.
    pub async fn shutdown(&self, deadline: Duration) -> Result<(), AgentError> {
        self.shared.msg(CONNECTION_STREAM, &Message::Shutdown).await?;
        let wait = async {
            loop {
                match self.next_conn_msg().await? {
                    Message::ShutdownAck => return Ok(()),
                    Message::Error { code, message } => return Err(AgentError::Remote { code, message }),
                    _ => continue,
                }
            }
        };
        tokio::time::timeout(deadline, wait).await.map_err(|_| AgentError::Timeout(deadline, "shutdown ack"))?
    }

    /// Sends a raw frame, for tests of the agent's handling of bad input.
    pub async fn send_raw(&self, f: Frame) -> Result<(), AgentError> {
        self.shared.send(f).await
    }

    /// Next connection-level message (errors for raw frames land here).
    pub async fn next_connection_message(&self) -> Result<Message, AgentError> {
        self.next_conn_msg().await
    }

    /// Opens a stream id for raw frames and returns its message queue.
    pub fn raw_stream(&self) -> (u32, RawStream) {
        let stream = self.alloc_stream();
        let rx = self.shared.register(stream, None);
        (stream, RawStream { rx, shared: self.shared.clone() })
    }
}

/// Messages arriving on a stream opened with `raw_stream`.
pub struct RawStream {
    rx: StreamRx,
    shared: Arc<Shared>,
}

impl RawStream {
    pub async fn next_message(&mut self) -> Result<Message, AgentError> {
        loop {
            match self.rx.recv().await {
                Some(Inbound::Msg(m)) => return Ok(m),
                Some(Inbound::Data { .. }) => continue,
                None => return Err(self.shared.lost_error()),
            }
        }
    }
}

async fn recv_within(rx: &mut StreamRx, idle: Duration) -> Result<Option<Inbound>, AgentError> {
    tokio::time::timeout(idle, rx.recv()).await.map_err(|_| AgentError::Timeout(idle, "archive data"))
}

fn unexpected_reply(m: Option<Inbound>, shared: &Shared) -> AgentError {
    match m {
        Some(Inbound::Msg(Message::Error { code: ErrorCode::ChecksumMismatch, message })) => {
            AgentError::ChecksumMismatch(crate::term::sanitize_line(&message))
        }
        Some(Inbound::Msg(Message::Error { code, message })) => {
            AgentError::Remote { code, message: crate::term::sanitize_line(&message) }
        }
        Some(Inbound::Msg(m)) => AgentError::Protocol(format!("{m:?}")),
        Some(Inbound::Data { kind, .. }) => AgentError::Protocol(format!("data of kind {}", kind.0)),
        None => shared.lost_error(),
    }
}

/// Undecodable control messages tolerated before the agent is cut off.
const MAX_UNDECODABLE: u32 = 16;

async fn read_loop<R: AsyncRead + Unpin>(shared: Arc<Shared>, mut reader: FrameReader<R>) {
    let mut undecodable = 0u32;
    let why = loop {
        let f = match reader.read_frame().await {
            Ok(Some(f)) => f,
            Ok(None) => break None,
            Err(e) => break Some(e.to_string()),
        };
        shared.heard_ms.store(shared.born.elapsed().as_millis() as u64, Ordering::Relaxed);
        let inbound = if f.kind == Kind::CONTROL {
            match Message::from_bytes(&f.body) {
                Ok(Message::Credit { channel, bytes }) => {
                    let streams = shared.streams.lock().expect("streams lock");
                    if let Some(Slot { send_win: Some((ch, w)), .. }) = streams.get(&f.stream) {
                        if *ch == channel && w.give(bytes).is_err() {
                            tracing::warn!(stream = f.stream, "agent granted credit beyond the window");
                        }
                    }
                    continue;
                }
                Ok(m) => Inbound::Msg(m),
                Err(e) => {
                    // A few are worth a warning; a stream of them is a hostile
                    // agent flooding cordon's stderr, and the end of it.
                    undecodable += 1;
                    if undecodable > MAX_UNDECODABLE {
                        break Some(format!("the agent sent {undecodable} undecodable messages"));
                    }
                    tracing::warn!(error = %e, "undecodable message from the agent");
                    continue;
                }
            }
        } else {
            if f.body.is_empty() {
                // End-of-stream markers carry nothing the client waits for.
                continue;
            }
            Inbound::Data { kind: f.kind, body: f.body }
        };
        let streams = shared.streams.lock().expect("streams lock");
        if let Some(slot) = streams.get(&f.stream) {
            match &inbound {
                Inbound::Data { body, .. } => {
                    let now = slot.queued.bytes.fetch_add(body.len() as u64, Ordering::AcqRel) + body.len() as u64;
                    if now > MAX_QUEUED_BYTES {
                        break Some(format!("the agent sent stream {} data beyond its flow-control window", f.stream));
                    }
                }
                Inbound::Msg(_) => {
                    if slot.queued.msgs.fetch_add(1, Ordering::AcqRel) >= MAX_QUEUED_MSGS {
                        break Some(format!("the agent flooded stream {} with control messages", f.stream));
                    }
                }
            }
            let _ = slot.tx.send(inbound);
        }
    };
    *shared.lost.lock().expect("lost lock") = why;
    // Dropping every sender wakes every waiter with "lost".
    let mut streams = shared.streams.lock().expect("streams lock");
    for (_, slot) in streams.drain() {
        if let Some((_, w)) = slot.send_win {
            w.close();
        }
    }
}

/// What an exec produces, in order: output chunks, then one Exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    Stdout(Bytes),
    Stderr(Bytes),
    Exit(ExitStatus),
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{message}")]
    Failed { reason: ExecFailure, message: String },
    #[error(transparent)]
    Agent(#[from] AgentError),
}

pub struct ExecHandle {
    shared: Arc<Shared>,
    stream: u32,
    rx: StreamRx,
    stdin_win: Window,
    done: bool,
    /// Credit owed to the agent for data already returned; sent at the start
    /// of the next call, so a caller that drops `next_event` mid-way (a
    /// `select!` arm that lost) never loses a chunk it was handed.
    owed: Option<(Channel, u32)>,
}

impl Drop for ExecHandle {
    fn drop(&mut self) {
        self.shared.unregister(self.stream);
    }
}

impl ExecHandle {
    /// Waits for Started (the pid) or ExecFailed.
    pub async fn started(&mut self) -> Result<u32, StartError> {
        match self.rx.recv().await {
            Some(Inbound::Msg(Message::Started { pid })) => Ok(pid),
            Some(Inbound::Msg(Message::ExecFailed { reason, message })) => {
                self.done = true;
                Err(StartError::Failed { reason, message })
            }
            m => Err(unexpected_reply(m, &self.shared).into()),
        }
    }

    /// The next output chunk or the exit. Grants credit for the data it
    /// returned last time (cancel-safe: a dropped call loses nothing).
    pub async fn next_event(&mut self) -> Result<ExecEvent, AgentError> {
        if let Some((channel, bytes)) = self.owed {
            self.shared.msg(self.stream, &Message::Credit { channel, bytes }).await?;
            self.owed = None;
        }
        loop {
            if self.done {
                return Err(AgentError::Protocol("next_event after exit".into()));
            }
            match self.rx.recv().await {
                Some(Inbound::Data { kind, body, .. }) if kind == Kind::STDOUT || kind == Kind::STDERR => {
                    if body.is_empty() {
                        continue;
                    }
                    let channel = if kind == Kind::STDOUT { Channel::Stdout } else { Channel::Stderr };
                    self.owed = Some((channel, body.len() as u32));
                    return Ok(if kind == Kind::STDOUT { ExecEvent::Stdout(body) } else { ExecEvent::Stderr(body) });
                }
                Some(Inbound::Msg(Message::Exit(st))) => {
                    self.done = true;
                    return Ok(ExecEvent::Exit(st));
                }
                m => return Err(unexpected_reply(m, &self.shared)),
            }
        }
    }

    /// A cloneable writer for the exec's stdin.
    pub fn stdin(&self) -> StdinWriter {
        StdinWriter { shared: self.shared.clone(), stream: self.stream, win: self.stdin_win.clone() }
    }

    /// Signals the exec's whole process tree.
    pub async fn signal(&self, signal: i32) -> Result<(), AgentError> {
        self.shared.msg(self.stream, &Message::Signal { signal }).await
    }

    /// Tells the exec's pty the new window size.
    pub async fn resize(&self, rows: u16, cols: u16) -> Result<(), AgentError> {
        self.shared.msg(self.stream, &Message::Resize(cordon_protocol::PtySize { rows, cols })).await
    }

    pub fn stream_id(&self) -> u32 {
        self.stream
    }
}

#[derive(Clone)]
pub struct StdinWriter {
    shared: Arc<Shared>,
    stream: u32,
    win: Window,
}

impl StdinWriter {
    pub async fn write(&self, data: &[u8]) -> Result<(), AgentError> {
        for c in data.chunks(DATA_CHUNK) {
            if !self.win.take(c.len()).await {
                return Err(self.shared.lost_error());
            }
            self.shared.send(Frame::new(self.stream, Kind::STDIN, 0, Bytes::copy_from_slice(c))).await?;
        }
        Ok(())
    }

    pub async fn close(&self) -> Result<(), AgentError> {
        self.shared.send(Frame::new(self.stream, Kind::STDIN, FLAG_EOF, Bytes::new())).await
    }
}
