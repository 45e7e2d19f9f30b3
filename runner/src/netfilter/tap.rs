//! Frames between a tap device (one Ethernet frame per read and write) and
//! the gate's guest side, which speaks QEMU's `-netdev stream` framing (a
//! 4-byte big-endian length, then the frame). The namespace backend's tap
//! thus reaches the same gate, judged by the same code, as the VM's NIC.

use std::os::fd::OwnedFd;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The largest frame either side may carry (an MTU-sized Ethernet frame with
/// room for a VLAN tag; the gate refuses anything above the MTU anyway).
const MAX_FRAME: usize = super::GUEST_MTU + 18;

/// Starts copying frames both ways until either side closes.
pub fn pump(tap: OwnedFd, gate: std::os::unix::net::UnixStream) -> std::io::Result<tokio::task::JoinHandle<()>> {
    nix::fcntl::fcntl(&tap, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK))
        .map_err(std::io::Error::from)?;
    gate.set_nonblocking(true)?;
    // SAFETY: `tap` is an owned, open descriptor; the AsyncFd that owns it
    // deregisters it before closing it on drop.
    let tap = std::sync::Arc::new(unsafe { AsyncFd::register(tap) }?);
    let (mut rd, mut wr) = tokio::net::UnixStream::from_std(gate)?.into_split();
    let tap_in = tap.clone();
    Ok(tokio::spawn(async move {
        let to_gate = async move {
            let mut buf = vec![0u8; 65536];
            loop {
                let n = match tap_in.readable().await {
                    Ok(mut g) => match g.try_io(|fd| nix::unistd::read(fd, &mut buf).map_err(std::io::Error::from)) {
                        Ok(Ok(n)) => n,
                        Ok(Err(_)) => return,
                        Err(_would_block) => continue,
                    },
                    Err(_) => return,
                };
                if n == 0 || n > MAX_FRAME {
                    // An oversized frame never goes on: the gate would refuse it.
                    if n == 0 {
                        return;
                    }
                    continue;
                }
                let mut msg = Vec::with_capacity(4 + n);
                msg.extend_from_slice(&(n as u32).to_be_bytes());
                msg.extend_from_slice(&buf[..n]);
                if wr.write_all(&msg).await.is_err() {
                    return;
                }
            }
        };
        let from_gate = async move {
            // passt's side is trusted; its frames fit the tap's 64 KiB limit.
            let mut frame = vec![0u8; 65536];
            loop {
                let mut len = [0u8; 4];
                if rd.read_exact(&mut len).await.is_err() {
                    return;
                }
                let n = u32::from_be_bytes(len) as usize;
                if n > frame.len() {
                    return;
                }
                if rd.read_exact(&mut frame[..n]).await.is_err() {
                    return;
                }
                // One frame per write; a full queue drops it, as a NIC would.
                loop {
                    match tap.writable().await {
                        Ok(mut g) => {
                            match g.try_io(|fd| nix::unistd::write(fd, &frame[..n]).map_err(std::io::Error::from)) {
                                Ok(_) => break,
                                Err(_would_block) => continue,
                            }
                        }
                        Err(_) => return,
                    }
                }
            }
        };
        tokio::select! {
            _ = to_gate => {}
            _ = from_gate => {}
        }
    }))
}
