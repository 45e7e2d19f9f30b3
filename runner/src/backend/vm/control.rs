//! The control channel to the agent, never the guest network: kernel
//! vhost-vsock when /dev/vhost-vsock is usable, else vhost-user vsock through
//! `vhost-device-vsock` (hybrid `CONNECT <port>` protocol), else a named
//! virtio-serial port. All carry the same protocol.

use std::path::{Path, PathBuf};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The agent's vsock port.
pub use cordon_protocol::boot::AGENT_PORT;
/// The agent's virtio-serial port name.
pub use cordon_protocol::boot::SERIAL_NAME;

/// How long one hybrid-vsock CONNECT may wait for its answer.
const ATTEMPT_DEADLINE: std::time::Duration = std::time::Duration::from_millis(500);

pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

pub use crate::plan::ControlChoice;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlKind {
    KernelVsock,
    VhostUser { daemon: PathBuf },
    Serial,
}

impl ControlKind {
    pub fn describe(&self) -> &'static str {
        match self {
            ControlKind::KernelVsock => "vsock (kernel vhost-vsock)",
            ControlKind::VhostUser { .. } => "vsock (vhost-user, vhost-device-vsock)",
            ControlKind::Serial => "virtio-serial",
        }
    }
}

pub fn kernel_vsock_usable() -> bool {
    std::fs::OpenOptions::new().read(true).write(true).open("/dev/vhost-vsock").is_ok()
}

/// Picks the transport; `Err` when a forced one is unavailable.
pub fn choose(force: ControlChoice) -> Result<ControlKind, String> {
    let daemon = super::probe::which("vhost-device-vsock");
    let vsock = || {
        if kernel_vsock_usable() {
            Some(ControlKind::KernelVsock)
        } else {
            daemon.clone().map(|daemon| ControlKind::VhostUser { daemon })
        }
    };
    match force {
        ControlChoice::Serial => Ok(ControlKind::Serial),
        ControlChoice::Vsock => vsock().ok_or_else(|| {
            "no vsock: /dev/vhost-vsock is not usable and vhost-device-vsock is not installed \
             (cargo install vhost-device-vsock)"
                .to_string()
        }),
        ControlChoice::Auto => Ok(vsock().unwrap_or(ControlKind::Serial)),
    }
}

/// One attempt through vhost-device-vsock's hybrid socket: `Ok(None)` while
/// nothing in the guest listens yet.
pub async fn try_vhost_user(uds: &Path, port: u32) -> std::io::Result<Option<Box<dyn Io>>> {
    let mut s = match tokio::net::UnixStream::connect(uds).await {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    // The daemon hangs up at once while nothing listens in the guest.
    if s.write_all(format!("CONNECT {port}\n").as_bytes()).await.is_err() {
        return Ok(None);
    }
    // Byte by byte: the agent's first frame may follow the OK line at once.
    // A request sent before the guest's vsock device was live can be lost
    // without an answer, so each attempt has its own short deadline.
    let mut line = Vec::new();
    let read_line = async {
        loop {
            let mut b = [0u8; 1];
            match s.read(&mut b).await {
                Ok(0) | Err(_) => return Ok(false),
                Ok(_) if b[0] == b'\n' => return Ok(true),
                Ok(_) if line.len() < 64 => line.push(b[0]),
                Ok(_) => return Err(std::io::Error::other("vhost-device-vsock sent an overlong reply")),
            }
        }
    };
    match tokio::time::timeout(ATTEMPT_DEADLINE, read_line).await {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) | Err(_) => return Ok(None),
        Ok(Err(e)) => return Err(e),
    }
    if line.starts_with(b"OK") {
        Ok(Some(Box::new(s)))
    } else {
        Ok(None)
    }
}

/// One attempt over kernel vsock to `cid`.
pub async fn try_kernel_vsock(cid: u32, port: u32) -> std::io::Result<Option<Box<dyn Io>>> {
    match tokio_vsock::VsockStream::connect(tokio_vsock::VsockAddr::new(cid, port)).await {
        Ok(s) => Ok(Some(Box::new(s))),
        Err(e)
            if matches!(e.raw_os_error(), Some(libc::ECONNREFUSED) | Some(libc::ECONNRESET) | Some(libc::ENODEV)) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Connects to QEMU's end of the virtio-serial port (QEMU is the server).
pub async fn try_serial(socket: &Path) -> std::io::Result<Option<Box<dyn Io>>> {
    match tokio::net::UnixStream::connect(socket).await {
        Ok(s) => Ok(Some(Box::new(s))),
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn test_try_vhost_user_handshake_and_refusal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        assert!(try_vhost_user(&path, 1024).await.unwrap().is_none(), "missing socket means not ready");
        let l = tokio::net::UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            // First client: refused (daemon closes); second: accepted, with data right after OK.
            let (mut a, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 13];
            a.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"CONNECT 1024\n");
            drop(a);
            let (mut b, _) = l.accept().await.unwrap();
            b.read_exact(&mut buf).await.unwrap();
            b.write_all(b"OK 1073741824\nREADY").await.unwrap();
            b
        });
        assert!(try_vhost_user(&path, 1024).await.unwrap().is_none());
        let mut s = try_vhost_user(&path, 1024).await.unwrap().expect("connected");
        let mut rest = [0u8; 5];
        s.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"READY");
        drop(server.await.unwrap());
    }
}
