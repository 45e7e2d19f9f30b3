//! The sending half of a connection: every task that talks to the runner sends
//! frames through one bounded queue drained by a single writer task, and data
//! frames wait for flow-control credit before they are queued.

use bytes::Bytes;
use cordon_protocol::{Channel, ErrorCode, Frame, Kind, Message, Window, DATA_CHUNK, FLAG_EOF};
use tokio::sync::mpsc;

#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Frame>,
}

impl Outbox {
    pub fn new(tx: mpsc::Sender<Frame>) -> Outbox {
        Outbox { tx }
    }

    /// Queues a control message; false when the connection is gone.
    pub async fn msg(&self, stream: u32, m: &Message) -> bool {
        self.tx.send(Frame::new(stream, Kind::CONTROL, 0, m.to_bytes())).await.is_ok()
    }

    pub async fn error(&self, stream: u32, code: ErrorCode, message: impl Into<String>) -> bool {
        self.msg(stream, &Message::Error { code, message: message.into() }).await
    }

    pub async fn credit(&self, stream: u32, channel: Channel, bytes: u32) -> bool {
        self.msg(stream, &Message::Credit { channel, bytes }).await
    }

    /// Sends `data` as data frames, waiting for credit on `win` for each chunk.
    pub async fn data(&self, stream: u32, kind: Kind, win: &Window, data: &[u8]) -> bool {
        for chunk in data.chunks(DATA_CHUNK) {
            if !win.take(chunk.len()).await {
                return false;
            }
            let f = Frame::new(stream, kind, 0, Bytes::copy_from_slice(chunk));
            if self.tx.send(f).await.is_err() {
                return false;
            }
        }
        true
    }

    pub async fn eof(&self, stream: u32, kind: Kind) -> bool {
        self.tx.send(Frame::new(stream, kind, FLAG_EOF, Bytes::new())).await.is_ok()
    }
}
