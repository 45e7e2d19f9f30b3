//! The control messages: the only host-guest interface. They travel as JSON in
//! `Kind::CONTROL` frames. Stream 0 is the connection itself; every exec and
//! every archive transfer uses its own stream id chosen by the runner.

use serde::{Deserialize, Serialize};

/// Protocol versions this build speaks (inclusive).
pub const VERSION_MIN: u32 = 1;
pub const VERSION_MAX: u32 = 1;

/// Bytes each receiver lets a sender have in flight per data channel before
/// it must wait for [`Message::Credit`].
pub const INITIAL_WINDOW: u32 = 1 << 20;

/// Stream id reserved for connection-level messages.
pub const CONNECTION_STREAM: u32 = 0;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Message {
    /// Agent to runner, stream 0, first frame on every connection, unprompted.
    Ready(Ready),
    /// Runner to agent, stream 0, the first frame the runner sends. The agent
    /// answers [`Message::Welcome`] or an [`Message::Error`] and closes.
    Hello(Hello),
    /// Agent to runner, stream 0: the negotiated version; requests may follow.
    Welcome { version: u32 },
    /// Runner to agent on a fresh stream id: start a process.
    Exec(Exec),
    /// Agent to runner on an exec's stream: the process started.
    Started { pid: u32 },
    /// Agent to runner on an exec's stream: the exec could not start.
    ExecFailed { reason: ExecFailure, message: String },
    /// Agent to runner on an exec's stream, after all of its output: the end.
    Exit(ExitStatus),
    /// Runner to agent on a running exec's stream: signal its whole tree.
    Signal { signal: i32 },
    /// Runner to agent on a running exec's stream: the runner's terminal
    /// changed size; the agent resizes the exec's pty (ignored without one).
    Resize(PtySize),
    /// Either way on a stream: the receiver consumed `bytes` of `channel`, the
    /// sender may send that many more.
    Credit { channel: Channel, bytes: u32 },
    /// Runner to agent on a fresh stream id: a tar stream follows in
    /// `Kind::ARCHIVE` frames; unpack it into `dest` (created if missing).
    PutArchive { dest: String },
    /// Runner to agent on a fresh stream id: send `path` (a directory or file)
    /// as a tar stream in `Kind::ARCHIVE` frames.
    GetArchive { path: String },
    /// Agent to runner, first on a GetArchive stream: whether the path is a
    /// directory (its contents follow) or a single file (it follows by name).
    ArchiveInfo { is_dir: bool },
    /// Either way, after the last `Kind::ARCHIVE` frame: what was sent.
    ArchiveEnd { size: u64, sha256: String },
    /// Agent to runner: a PutArchive was verified and unpacked.
    ArchiveDone { files: u64 },
    /// Runner to agent, stream 0: stop everything; as PID 1, sync and power off.
    Shutdown,
    /// Agent to runner, stream 0: Shutdown accepted; the agent is going away.
    ShutdownAck,
    /// Either way: a request on `stream` (0 for the connection) failed.
    Error { code: ErrorCode, message: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ready {
    pub agent_version: String,
    pub version_min: u32,
    pub version_max: u32,
    pub capabilities: Vec<String>,
    /// Milliseconds from kernel start to the agent's first instruction (from
    /// /proc/uptime), when the agent is PID 1.
    pub kernel_boot_ms: Option<u64>,
    /// Milliseconds the agent spent on init work before it was ready.
    pub agent_start_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    pub version_min: u32,
    pub version_max: u32,
    pub runner_version: String,
    /// The per-sandbox secret the runner gave the agent at start.
    pub token: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exec {
    pub argv: Vec<String>,
    /// Variables set for the process; with `clear_env`, the only ones.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    #[serde(default)]
    pub clear_env: bool,
    pub cwd: Option<String>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Kill the whole tree after this many milliseconds.
    pub timeout_ms: Option<u64>,
    /// Wait this long between SIGTERM and SIGKILL when killing the tree.
    /// Default [`DEFAULT_GRACE_MS`].
    pub grace_ms: Option<u64>,
    /// Whether the runner will send stdin; otherwise stdin is /dev/null.
    #[serde(default)]
    pub stdin: bool,
    /// Run on a pseudo-terminal of this size; output then arrives on stdout only.
    pub pty: Option<PtySize>,
    /// Most tasks (processes and threads) the tree may hold at once (cgroup
    /// `pids.max`): a fork beyond it fails with EAGAIN. None: no limit. An
    /// agent that advertises [`CAP_LIMITS`] enforces it; others ignore it.
    #[serde(default)]
    pub pids_max: Option<u64>,
    /// Most memory in bytes the tree may use, without swap (cgroup
    /// `memory.max`): above it the kernel's OOM killer ends the whole tree and
    /// [`ExitStatus::oom_killed`] says so. None: no limit. Enforced by agents
    /// that advertise [`CAP_LIMITS`], like `pids_max`.
    #[serde(default)]
    pub memory_max: Option<u64>,
}

/// The [`Ready::capabilities`] entry of an agent that enforces
/// [`Exec::pids_max`] and [`Exec::memory_max`] (a cgroup v2 hierarchy with
/// the pids and memory controllers).
pub const CAP_LIMITS: &str = "limits";

/// Default grace period between SIGTERM and SIGKILL.
pub const DEFAULT_GRACE_MS: u64 = 2_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PtySize {
    pub rows: u16,
    pub cols: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecFailure {
    NotFound,
    PermissionDenied,
    BadCwd,
    BadUser,
    BadRequest,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExitStatus {
    /// The exit code when the process exited normally.
    pub code: Option<i32>,
    /// The signal that ended it otherwise.
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub oom_killed: bool,
    pub wall_ms: u64,
    /// Peak resident set size of the process and its waited-for children.
    pub peak_rss_kb: u64,
    /// Output was cut: a process outside the step's tree (one that escaped
    /// it where no cgroup exists) still held stdout/stderr open after the
    /// tree was gone, and the agent stopped reading. Never set silently.
    #[serde(default)]
    pub output_cut: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Stdin,
    Stdout,
    Stderr,
    Archive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame kind byte is not one this side knows.
    UnknownKind,
    /// The control body did not decode (unknown message type or bad fields).
    BadMessage,
    /// The message is known but not allowed here (wrong direction, wrong state).
    Unexpected,
    NoCommonVersion,
    BadToken,
    /// A stream id that is in use, or 0 where a request needs its own stream.
    BadStream,
    ChecksumMismatch,
    /// Archive packing or unpacking failed.
    Archive,
    /// A sender exceeded its flow-control window.
    FlowControl,
    Internal,
}

/// Picks the highest version both ranges contain.
pub fn negotiate(a: (u32, u32), b: (u32, u32)) -> Option<u32> {
    let hi = a.1.min(b.1);
    let lo = a.0.max(b.0);
    (lo <= hi).then_some(hi)
}

impl Message {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("protocol messages always serialize")
    }

    pub fn from_bytes(b: &[u8]) -> Result<Message, serde_json::Error> {
        serde_json::from_slice(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_negotiate_table() {
        let cases = [
            ((1, 1), (1, 1), Some(1)),
            ((1, 3), (2, 5), Some(3)),
            ((2, 5), (1, 3), Some(3)),
            ((1, 1), (2, 2), None),
            ((4, 9), (1, 6), Some(6)),
        ];
        for (a, b, want) in cases {
            assert_eq!(negotiate(a, b), want, "{a:?} {b:?}");
        }
    }

    #[test]
    fn test_message_round_trip() {
        let msgs = vec![
            Message::Exec(Exec { argv: vec!["echo".into(), "hi".into()], stdin: true, ..Default::default() }),
            Message::Exec(Exec {
                argv: vec!["make".into()],
                pids_max: Some(4096),
                memory_max: Some(448 << 20),
                ..Default::default()
            }),
            Message::Exit(ExitStatus { code: Some(42), ..Default::default() }),
            Message::Credit { channel: Channel::Stdout, bytes: 4096 },
            Message::Shutdown,
            Message::Resize(PtySize { rows: 40, cols: 132 }),
            Message::Ready(Ready {
                agent_version: "0.1.0".into(),
                version_min: 1,
                version_max: 1,
                capabilities: vec!["exec".into()],
                kernel_boot_ms: Some(480),
                agent_start_ms: 3,
            }),
            Message::Hello(Hello { version_min: 1, version_max: 2, runner_version: "x".into(), token: "t".into() }),
        ];
        for m in msgs {
            assert_eq!(Message::from_bytes(&m.to_bytes()).unwrap(), m);
        }
    }

    #[test]
    fn test_exec_limits_default_to_none() {
        // A runner that predates the limits sends Exec without them.
        let m = Message::from_bytes(
            br#"{"type":"exec","argv":["true"],"cwd":null,"uid":null,"gid":null,
            "timeout_ms":null,"grace_ms":null,"pty":null}"#,
        )
        .unwrap();
        let Message::Exec(e) = m else { panic!("not an exec: {m:?}") };
        assert_eq!((e.pids_max, e.memory_max), (None, None));
    }

    #[test]
    fn test_from_bytes_rejects_unknown_type_and_fields() {
        assert!(Message::from_bytes(br#"{"type":"teleport"}"#).is_err());
        assert!(Message::from_bytes(br#"{"type":"signal","signal":9,"extra":1}"#).is_err());
        assert!(Message::from_bytes(b"\xff\x00garbage").is_err());
    }
}
