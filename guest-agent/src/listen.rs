//! Where the agent serves: AF_VSOCK, a named virtio-serial port, a Unix
//! socket, or an inherited connected fd (namespace mode and tests). Whatever
//! the transport, the agent serves one authenticated session and no other.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;

use crate::fdio::FdIo;
use crate::server::{serve, Agent, Outcome};

/// Printed on the console once the vsock listener is up.
pub use cordon_protocol::boot::LISTENING_MARKER;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Vsock(u32),
    Serial(String),
    Unix(PathBuf),
    Fd(i32),
}

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("bad listen address {0:?}: expected vsock:PORT, serial:NAME, unix:PATH or fd:N")]
    Parse(String),
    #[error("binding {what} failed")]
    Bind {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("virtio-serial port named {0:?} not found under /sys/class/virtio-ports")]
    NoSerialPort(String),
    #[error("opening {path} failed")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl std::str::FromStr for Listen {
    type Err = ListenError;

    fn from_str(s: &str) -> Result<Listen, ListenError> {
        let bad = || ListenError::Parse(s.to_string());
        let (kind, rest) = s.split_once(':').ok_or_else(bad)?;
        match kind {
            "vsock" => rest.parse().map(Listen::Vsock).map_err(|_| bad()),
            "serial" if !rest.is_empty() && !rest.contains('/') => Ok(Listen::Serial(rest.to_string())),
            "unix" if !rest.is_empty() => Ok(Listen::Unix(PathBuf::from(rest))),
            "fd" => match rest.parse::<i32>() {
                Ok(n) if n >= 0 => Ok(Listen::Fd(n)),
                _ => Err(bad()),
            },
            _ => Err(bad()),
        }
    }
}

/// How many connections may be in their handshake at once; more are closed
/// at once (the runner's own connection is one of the first).
const MAX_HANDSHAKES: usize = 16;

/// Serves the one runner (see `server::Slot`) and returns how its session
/// ended. Connections that fail the handshake do not count; once one is
/// authenticated the listener is closed, so later ones are refused.
pub async fn run(listen: Listen, agent: Arc<Agent>) -> Result<Outcome, ListenError> {
    match listen {
        Listen::Fd(n) => {
            // SAFETY: the parent handed us fd n for exclusive use.
            let fd = unsafe { OwnedFd::from_raw_fd(n) };
            let std = std::os::unix::net::UnixStream::from(fd);
            std.set_nonblocking(true).map_err(|source| ListenError::Open { path: format!("fd:{n}"), source })?;
            let s = tokio::net::UnixStream::from_std(std)
                .map_err(|source| ListenError::Open { path: format!("fd:{n}"), source })?;
            Ok(serve(agent, s).await)
        }
        Listen::Unix(path) => {
            let _ = std::fs::remove_file(&path);
            let l = tokio::net::UnixListener::bind(&path)
                .map_err(|source| ListenError::Bind { what: path.display().to_string(), source })?;
            let (tx, rx) = mpsc::channel(1);
            let acceptor = tokio::spawn(async move {
                loop {
                    match l.accept().await {
                        Ok((s, _)) => {
                            if tx.send(s).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "unix accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            });
            Ok(serve_first(agent, rx, acceptor).await)
        }
        Listen::Vsock(port) => {
            let addr = tokio_vsock::VsockAddr::new(tokio_vsock::VMADDR_CID_ANY, port);
            let l = tokio_vsock::VsockListener::bind(addr)
                .map_err(|source| ListenError::Bind { what: format!("vsock port {port}"), source })?;
            // The runner waits for this console line before dialing in: a
            // hybrid-vsock CONNECT that arrives before the guest's vrings
            // are live can wedge vhost-device-vsock.
            eprintln!("{LISTENING_MARKER} vsock:{port}");
            let (tx, rx) = mpsc::channel(1);
            let acceptor = tokio::spawn(async move {
                loop {
                    match l.accept().await {
                        Ok((s, peer)) => {
                            tracing::debug!(?peer, "accepted");
                            if tx.send(s).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "vsock accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            });
            Ok(serve_first(agent, rx, acceptor).await)
        }
        Listen::Serial(name) => {
            let dev = find_serial_port(&name).await?;
            loop {
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&dev)
                    .map_err(|source| ListenError::Open { path: dev.display().to_string(), source })?;
                let io = FdIo::new(OwnedFd::from(f))
                    .map_err(|source| ListenError::Open { path: dev.display().to_string(), source })?;
                match serve(agent.clone(), io).await {
                    // The host side went away before authenticating; wait
                    // for it to come back.
                    Outcome::Refused => tokio::time::sleep(Duration::from_millis(100)).await,
                    done => return Ok(done),
                }
            }
        }
    }
}

/// Runs the handshakes of accepted connections concurrently (a peer that
/// connects and stays silent cannot keep the runner out) until one claims
/// the slot, then stops the acceptor, which closes the listener, and
/// returns how that session ended.
async fn serve_first<S>(agent: Arc<Agent>, mut conns: mpsc::Receiver<S>, acceptor: JoinHandle<()>) -> Outcome
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (done_tx, mut done_rx) = mpsc::channel::<Outcome>(1);
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        tokio::select! {
            _ = agent.slot.claimed() => break,
            conn = conns.recv() => {
                let Some(conn) = conn else { break };
                let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                    tracing::warn!("too many connections in their handshake; closing a new one");
                    continue;
                };
                let (agent, done_tx) = (agent.clone(), done_tx.clone());
                tokio::spawn(async move {
                    let outcome = serve(agent, conn).await;
                    drop(permit);
                    if outcome != Outcome::Refused {
                        let _ = done_tx.send(outcome).await;
                    }
                });
            }
        }
    }
    acceptor.abort();
    drop((conns, done_tx));
    // The claiming connection's task holds a sender until its session ends.
    done_rx.recv().await.unwrap_or(Outcome::Lost)
}

/// Finds /dev/vportNpM whose sysfs name is `name`, waiting briefly for the
/// driver to create it.
async fn find_serial_port(name: &str) -> Result<PathBuf, ListenError> {
    for _ in 0..100 {
        if let Ok(dir) = std::fs::read_dir("/sys/class/virtio-ports") {
            for e in dir.flatten() {
                let n = std::fs::read_to_string(e.path().join("name")).unwrap_or_default();
                if n.trim() == name {
                    return Ok(PathBuf::from("/dev").join(e.file_name()));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(ListenError::NoSerialPort(name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_listen_parse_table() {
        let good = [
            ("vsock:1024", Listen::Vsock(1024)),
            ("serial:org.cordon.agent", Listen::Serial("org.cordon.agent".into())),
            ("unix:/run/a.sock", Listen::Unix("/run/a.sock".into())),
            ("fd:3", Listen::Fd(3)),
        ];
        for (s, want) in good {
            assert_eq!(s.parse::<Listen>().unwrap(), want, "{s}");
        }
        for bad in ["", "vsock", "vsock:x", "vsock:-1", "fd:-3", "serial:", "serial:a/b", "tcp:1", "unix:"] {
            assert!(bad.parse::<Listen>().is_err(), "{bad}");
        }
    }
}
