//! cordon's wire protocol: framing, control messages, flow control and the
//! archive format, shared by the runner and the guest agent. Everything here
//! works over any `AsyncRead + AsyncWrite` (vsock, virtio-serial, Unix sockets).

pub mod archive;
pub mod boot;
pub mod frame;
pub mod message;
pub mod window;

pub use frame::{Frame, FrameError, FrameReader, FrameWriter, Kind, DATA_CHUNK, FLAG_EOF, MAX_BODY};
pub use message::*;
pub use window::Window;
