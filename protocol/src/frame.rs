//! Framing shared by every transport: `[len u32 BE][stream u32 BE][kind u8][flags u8]`
//! then `len` bytes of body. The length is checked against [`MAX_BODY`] before
//! anything is allocated, so a hostile peer cannot make either side allocate
//! more than one maximal frame.

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Size of the fixed header in bytes.
pub const HEADER_LEN: usize = 10;

/// Largest body either side accepts or sends (1 MiB).
pub const MAX_BODY: u32 = 1 << 20;

/// Largest data chunk the senders in this crate put in one frame (256 KiB).
pub const DATA_CHUNK: usize = 256 * 1024;

/// Frame kind byte. Unknown values are carried through so the connection layer
/// can answer them with an error instead of dropping the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Kind(pub u8);

impl Kind {
    /// A serde-encoded [`crate::Message`].
    pub const CONTROL: Kind = Kind(1);
    /// Raw bytes for an exec's stdin (runner to agent).
    pub const STDIN: Kind = Kind(2);
    /// Raw bytes of an exec's stdout (agent to runner).
    pub const STDOUT: Kind = Kind(3);
    /// Raw bytes of an exec's stderr (agent to runner).
    pub const STDERR: Kind = Kind(4);
    /// Raw bytes of a tar stream (either direction).
    pub const ARCHIVE: Kind = Kind(5);

    /// Whether this build of the protocol knows the kind.
    pub fn is_known(self) -> bool {
        (1..=5).contains(&self.0)
    }
}

/// Flag bit: the data stream of this kind on this stream id ends with this frame.
pub const FLAG_EOF: u8 = 0x01;

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub stream: u32,
    pub kind: Kind,
    pub flags: u8,
    pub body: Bytes,
}

impl Frame {
    pub fn new(stream: u32, kind: Kind, flags: u8, body: impl Into<Bytes>) -> Frame {
        Frame { stream, kind, flags, body: body.into() }
    }

    /// Whether the EOF flag is set.
    pub fn is_eof(&self) -> bool {
        self.flags & FLAG_EOF != 0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame body of {len} bytes exceeds the maximum of {max}")]
    Oversize { len: u32, max: u32 },
    #[error("connection closed in the middle of a frame ({got} of {want} bytes)")]
    Truncated { got: usize, want: usize },
    #[error("transport i/o failed")]
    Io(#[source] std::io::Error),
}

/// Decodes the fixed header. Pure, so it can be fuzzed and unit-tested alone.
pub fn parse_header(h: &[u8; HEADER_LEN]) -> Result<(u32, u32, Kind, u8), FrameError> {
    let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
    let stream = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
    if len > MAX_BODY {
        return Err(FrameError::Oversize { len, max: MAX_BODY });
    }
    Ok((len, stream, Kind(h[8]), h[9]))
}

/// Encodes a frame into one buffer (header + body).
pub fn encode(frame: &Frame) -> Result<Vec<u8>, FrameError> {
    let len = u32::try_from(frame.body.len()).unwrap_or(u32::MAX);
    if len > MAX_BODY {
        return Err(FrameError::Oversize { len, max: MAX_BODY });
    }
    let mut out = Vec::with_capacity(HEADER_LEN + frame.body.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&frame.stream.to_be_bytes());
    out.push(frame.kind.0);
    out.push(frame.flags);
    out.extend_from_slice(&frame.body);
    Ok(out)
}

/// Decodes every complete frame at the start of `buf`; returns them and how
/// many bytes they used. Stops at the first incomplete frame. Used by the fuzz
/// test; the async reader below is the production path.
pub fn decode_all(mut buf: &[u8]) -> Result<(Vec<Frame>, usize), FrameError> {
    let mut frames = Vec::new();
    let mut used = 0;
    while buf.len() >= HEADER_LEN {
        let header: &[u8; HEADER_LEN] = buf[..HEADER_LEN].try_into().expect("slice is HEADER_LEN long");
        let (len, stream, kind, flags) = parse_header(header)?;
        let total = HEADER_LEN + len as usize;
        if buf.len() < total {
            break;
        }
        frames.push(Frame::new(stream, kind, flags, Bytes::copy_from_slice(&buf[HEADER_LEN..total])));
        buf = &buf[total..];
        used += total;
    }
    Ok((frames, used))
}

/// Reads frames from any byte stream.
pub struct FrameReader<R> {
    inner: R,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        FrameReader { inner }
    }

    /// Reads the next frame; `Ok(None)` on a clean end of stream between frames.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let mut header = [0u8; HEADER_LEN];
        let got = read_full(&mut self.inner, &mut header).await?;
        if got == 0 {
            return Ok(None);
        }
        if got < HEADER_LEN {
            return Err(FrameError::Truncated { got, want: HEADER_LEN });
        }
        let (len, stream, kind, flags) = parse_header(&header)?;
        // Safe to allocate: len <= MAX_BODY was checked above.
        let mut body = vec![0u8; len as usize];
        let got = read_full(&mut self.inner, &mut body).await?;
        if got < body.len() {
            return Err(FrameError::Truncated { got: HEADER_LEN + got, want: HEADER_LEN + body.len() });
        }
        Ok(Some(Frame::new(stream, kind, flags, body)))
    }
}

async fn read_full<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> Result<usize, FrameError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]).await {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    Ok(got)
}

/// Writes frames to any byte stream.
pub struct FrameWriter<W> {
    inner: W,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub fn new(inner: W) -> Self {
        FrameWriter { inner }
    }

    pub async fn write_frame(&mut self, frame: &Frame) -> Result<(), FrameError> {
        let buf = encode(frame)?;
        self.inner.write_all(&buf).await.map_err(FrameError::Io)?;
        Ok(())
    }

    pub async fn flush(&mut self) -> Result<(), FrameError> {
        self.inner.flush().await.map_err(FrameError::Io)
    }

    pub async fn shutdown(&mut self) -> Result<(), FrameError> {
        self.inner.shutdown().await.map_err(FrameError::Io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    #[test]
    fn test_encode_decode_round_trip() {
        let f = Frame::new(7, Kind::STDOUT, FLAG_EOF, &b"hello"[..]);
        let buf = encode(&f).unwrap();
        assert_eq!(&buf[..4], &5u32.to_be_bytes());
        assert_eq!(&buf[4..8], &7u32.to_be_bytes());
        assert_eq!(buf[8], 3);
        assert_eq!(buf[9], FLAG_EOF);
        let (frames, used) = decode_all(&buf).unwrap();
        assert_eq!(used, buf.len());
        assert_eq!(frames, vec![f]);
    }

    #[test]
    fn test_read_frame_oversize_rejected_before_allocation() {
        let mut buf = Vec::new();
        buf.extend_from_slice(&u32::MAX.to_be_bytes());
        buf.extend_from_slice(&[0, 0, 0, 1, 1, 0]);
        let mut r = FrameReader::new(&buf[..]);
        let err = rt().block_on(r.read_frame()).unwrap_err();
        assert!(matches!(err, FrameError::Oversize { len: u32::MAX, .. }), "{err}");
    }

    #[test]
    fn test_read_frame_truncated_header_and_body() {
        let full = encode(&Frame::new(1, Kind::CONTROL, 0, &b"abcdef"[..])).unwrap();
        for cut in 1..full.len() {
            let mut r = FrameReader::new(&full[..cut]);
            let err = rt().block_on(r.read_frame()).unwrap_err();
            assert!(matches!(err, FrameError::Truncated { .. }), "cut {cut}: {err}");
        }
        let mut r = FrameReader::new(&full[..0]);
        assert!(rt().block_on(r.read_frame()).unwrap().is_none());
    }

    #[test]
    fn test_read_frame_unknown_kind_is_carried() {
        let buf = encode(&Frame::new(1, Kind(200), 0, &b""[..])).unwrap();
        let mut r = FrameReader::new(&buf[..]);
        let f = rt().block_on(r.read_frame()).unwrap().unwrap();
        assert_eq!(f.kind, Kind(200));
        assert!(!f.kind.is_known());
    }

    #[test]
    fn test_decode_all_random_bytes_never_panics() {
        // Deterministic xorshift so failures reproduce.
        let mut s: u64 = 0x9e3779b97f4a7c15;
        for round in 0..20_000 {
            let n = (round % 97) + 1;
            let mut buf = Vec::with_capacity(n);
            for _ in 0..n {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                buf.push(s as u8);
            }
            // Make small lengths common so bodies are exercised, not only oversize.
            if round % 2 == 0 && buf.len() >= 4 {
                buf[0] = 0;
                buf[1] = 0;
                buf[2] = 0;
            }
            match decode_all(&buf) {
                Ok((frames, used)) => {
                    assert!(used <= buf.len());
                    for f in frames {
                        assert!(f.body.len() as u32 <= MAX_BODY);
                    }
                }
                Err(FrameError::Oversize { len, .. }) => assert!(len > MAX_BODY),
                Err(e) => panic!("unexpected error {e}"),
            }
        }
    }
}
