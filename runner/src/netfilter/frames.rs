//! Length-prefixed frame streams (4-byte big-endian length + Ethernet
//! frame) for the relay: a reader whose buffered frames are judged in place,
//! and the output of whole frames pending a write. Frames forwarded
//! unchanged are written straight from the read buffer, runs of them in one
//! write; only a frame cut by the gate, or one after a dropped frame, is
//! copied. Every write holds whole frames only, at most WRITE_BATCH bytes
//! of them unless a lone frame is larger (see relay.rs for why).

use std::ops::Range;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::relay::{MAX_FRAME, WRITE_BATCH};

/// Reads a frame stream into one buffer, which holds whole frames for
/// judging and writing in place, plus the start of the next one.
pub struct FrameReader<R> {
    r: R,
    buf: Vec<u8>,
    /// The bytes read and not yet consumed.
    start: usize,
    end: usize,
}

/// What a frame stream held at some offset.
pub enum Next {
    /// A whole frame: its length prefix at the offset, its bytes after.
    Frame(usize),
    /// Not all of the next frame has been read yet.
    Partial,
    /// A length no peer sends: the stream is out of sync.
    Bad(usize),
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// `capacity` must be above 4 + MAX_FRAME, so any frame fits whole.
    pub fn new(r: R, capacity: usize) -> FrameReader<R> {
        assert!(capacity > 4 + MAX_FRAME, "a read buffer of {capacity} bytes cannot hold every frame");
        FrameReader { r, buf: vec![0; capacity], start: 0, end: 0 }
    }

    /// The buffer, in which the offsets `next` and `consume` speak of lie.
    pub fn buf(&self) -> &[u8] {
        &self.buf
    }

    /// Where the unconsumed bytes begin.
    pub fn start(&self) -> usize {
        self.start
    }

    /// What is at `at` (an offset at or after `start`, at a frame boundary).
    pub fn next(&self, at: usize) -> Next {
        let Some(len) = self.buf.get(at..at + 4).filter(|_| at + 4 <= self.end) else { return Next::Partial };
        let n = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
        if !(14..=MAX_FRAME).contains(&n) {
            Next::Bad(n)
        } else if self.end - at - 4 >= n {
            Next::Frame(n)
        } else {
            Next::Partial
        }
    }

    /// Marks everything before `at` as done with.
    pub fn consume(&mut self, at: usize) {
        debug_assert!((self.start..=self.end).contains(&at));
        self.start = at;
    }

    /// Reads more; call it once every whole frame is consumed. What is left
    /// (the start of a frame) moves to the front first when the space
    /// behind it could not hold the largest frame. Offsets into the buffer
    /// are void afterwards. Ok(false) at the end of the stream; an error if
    /// it ends inside a frame.
    pub async fn fill(&mut self) -> std::io::Result<bool> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.buf.len() - self.start < 4 + MAX_FRAME {
            self.buf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        let n = self.r.read(&mut self.buf[self.end..]).await?;
        if n == 0 {
            if self.start != self.end {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            return Ok(false);
        }
        self.end += n;
        Ok(true)
    }
}

/// Frames to be written, gathered while more are already buffered to be
/// read: a run of whole frames that lie back to back in the read buffer, or
/// frames copied out of it. At most WRITE_BATCH bytes, or one frame.
#[derive(Default)]
pub struct Pending {
    run: Range<usize>,
    copied: Vec<u8>,
}

impl Pending {
    fn len(&self) -> usize {
        self.run.len() + self.copied.len()
    }

    /// Makes room for `n` more bytes, writing what is pending if they would
    /// take it above WRITE_BATCH; false when the sink is gone.
    async fn room<W: AsyncWrite + Unpin>(&mut self, n: usize, buf: &[u8], w: &mut W) -> bool {
        self.len() == 0 || self.len() + n <= WRITE_BATCH || self.flush(buf, w).await
    }

    /// Adds the frame whose length prefix is at `at` in `buf`, unchanged.
    pub async fn frame<W: AsyncWrite + Unpin>(&mut self, buf: &[u8], at: usize, n: usize, w: &mut W) -> bool {
        if !self.room(4 + n, buf, w).await {
            return false;
        }
        if self.copied.is_empty() && (self.run.is_empty() || self.run.end == at) {
            let from = if self.run.is_empty() { at } else { self.run.start };
            self.run = from..at + 4 + n;
        } else {
            self.spill(buf);
            self.copied.extend_from_slice(&buf[at..at + 4 + n]);
        }
        true
    }

    /// Adds the whole frames in `run` of `buf`, unchanged, as `frame` would
    /// one by one: as many as fit behind the pending run join it at once,
    /// and a write is made wherever `frame` would make one.
    pub async fn frames<W: AsyncWrite + Unpin>(&mut self, buf: &[u8], run: Range<usize>, w: &mut W) -> bool {
        let len_at = |at: usize| u32::from_be_bytes(buf[at..at + 4].try_into().expect("4 bytes")) as usize;
        let mut at = run.start;
        while at < run.end {
            if self.copied.is_empty() && (self.run.is_empty() || self.run.end == at) {
                let room = WRITE_BATCH.saturating_sub(self.run.len());
                let mut to = at;
                if run.end - at <= room {
                    to = run.end;
                } else {
                    while to < run.end && to + 4 + len_at(to) - at <= room {
                        to += 4 + len_at(to);
                    }
                }
                if to > at {
                    self.run = if self.run.is_empty() { at..to } else { self.run.start..to };
                    at = to;
                    continue;
                }
            }
            // The next frame does not fit (or cannot join the run): as
            // `frame` does, write what is pending first.
            let n = len_at(at);
            if !self.frame(buf, at, n, w).await {
                return false;
            }
            at += 4 + n;
        }
        true
    }

    /// Adds `f`, a frame that is not in the read buffer as it stands.
    pub async fn copy<W: AsyncWrite + Unpin>(&mut self, buf: &[u8], f: &[u8], w: &mut W) -> bool {
        if !self.room(4 + f.len(), buf, w).await {
            return false;
        }
        self.spill(buf);
        self.copied.extend_from_slice(&(f.len() as u32).to_be_bytes());
        self.copied.extend_from_slice(f);
        true
    }

    /// Moves the run into `copied`, for frames that do not follow it.
    fn spill(&mut self, buf: &[u8]) {
        if !self.run.is_empty() {
            if self.copied.capacity() == 0 {
                self.copied.reserve(WRITE_BATCH);
            }
            self.copied.extend_from_slice(&buf[std::mem::take(&mut self.run)]);
        }
    }

    /// Writes what is pending, if anything; false when the sink is gone.
    /// Must be called before the read buffer is filled again.
    pub async fn flush<W: AsyncWrite + Unpin>(&mut self, buf: &[u8], w: &mut W) -> bool {
        // A short write can only happen for a lone frame above WRITE_BATCH
        // or a tiny send buffer; the rest follows at once.
        let ok = match (self.len(), self.copied.is_empty()) {
            (0, _) => true,
            (_, true) => w.write_all(&buf[self.run.clone()]).await.is_ok(),
            (_, false) => w.write_all(&self.copied).await.is_ok(),
        };
        self.run = 0..0;
        self.copied.clear();
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(sizes: &[usize]) -> Vec<u8> {
        let mut v = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            v.extend_from_slice(&(n as u32).to_be_bytes());
            v.extend(std::iter::repeat_n(i as u8, n));
        }
        v
    }

    /// Frames come back whole however the stream is cut into reads,
    /// including frames larger than what is left behind the last one.
    #[tokio::test]
    async fn test_frame_reader_whole_frames_across_reads() {
        let sizes: Vec<usize> = (0..200).map(|i| 14 + (i * 7919) % (MAX_FRAME - 13)).collect();
        let bytes = framed(&sizes);
        let (mut w, r) = tokio::io::duplex(3000);
        let feed = tokio::spawn(async move {
            w.write_all(&bytes).await.unwrap();
        });
        let mut fr = FrameReader::new(r, 4 + MAX_FRAME + 1000);
        let mut got = Vec::new();
        loop {
            let mut at = fr.start();
            while let Next::Frame(n) = fr.next(at) {
                assert!(fr.buf()[at + 4..at + 4 + n].iter().all(|&b| b == got.len() as u8));
                got.push(n);
                at += 4 + n;
            }
            fr.consume(at);
            if !fr.fill().await.unwrap() {
                break;
            }
        }
        feed.await.unwrap();
        assert_eq!(got, sizes);
    }

    #[tokio::test]
    async fn test_frame_reader_bad_length_and_cut_end() {
        let (mut w, r) = tokio::io::duplex(1000);
        w.write_all(&[0, 0, 0, 3]).await.unwrap();
        let mut bad = FrameReader::new(r, 4 + MAX_FRAME + 1);
        assert!(bad.fill().await.unwrap());
        assert!(matches!(bad.next(0), Next::Bad(3)));

        let (mut w, r) = tokio::io::duplex(1000);
        w.write_all(&framed(&[20])[..10]).await.unwrap();
        drop(w);
        let mut cut = FrameReader::new(r, 4 + MAX_FRAME + 1);
        assert!(cut.fill().await.unwrap());
        assert!(matches!(cut.next(0), Next::Partial));
        let e = cut.fill().await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
    }

    /// Records each write as it was made.
    #[derive(Default)]
    struct Writes(Vec<Vec<u8>>);

    impl AsyncWrite for Writes {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            b: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.get_mut().0.push(b.to_vec());
            std::task::Poll::Ready(Ok(b.len()))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    /// `frames` over each run of back-to-back frames makes the same writes
    /// as `frame` for each frame alone, over gaps, cut frames, flushes and
    /// full batches, lone frames above WRITE_BATCH included.
    #[tokio::test]
    async fn test_pending_frames_write_as_frame_does() {
        let sizes: Vec<usize> =
            (0..3000).map(|i| if i % 500 == 7 { WRITE_BATCH + 100 } else { 14 + (i * 7919) % 1500 }).collect();
        let buf = framed(&sizes);
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let (mut a, mut c) = (Writes::default(), Writes::default());
        let (mut pa, mut pc) = (Pending::default(), Pending::default());
        let (mut at, mut runs, mut longest) = (0, 0, 0);
        let mut run = 0..0;
        for &n in &sizes {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let op = x % 40;
            if (op < 3 || run.end != at) && !run.is_empty() {
                // What is not the next frame of the run ends it.
                longest = longest.max(run.len());
                assert!(pc.frames(&buf, std::mem::take(&mut run), &mut c).await);
                runs += 1;
            }
            match op {
                0 => {}
                1 => {
                    assert!(pa.copy(&buf, &buf[at + 4..at + 10], &mut a).await);
                    assert!(pc.copy(&buf, &buf[at + 4..at + 10], &mut c).await);
                }
                2 => {
                    assert!(pa.flush(&buf, &mut a).await);
                    assert!(pc.flush(&buf, &mut c).await);
                }
                _ => {
                    assert!(pa.frame(&buf, at, n, &mut a).await);
                    run = if run.is_empty() { at..at + 4 + n } else { run.start..at + 4 + n };
                }
            }
            at += 4 + n;
        }
        if !run.is_empty() {
            assert!(pc.frames(&buf, run, &mut c).await);
        }
        assert!(pa.flush(&buf, &mut a).await);
        assert!(pc.flush(&buf, &mut c).await);
        assert_eq!(a.0.len(), c.0.len());
        assert!(a.0 == c.0, "different writes");
        assert!(runs > 100 && longest > 2 * WRITE_BATCH && a.0.len() > 100, "{runs} runs, longest {longest}");
    }

    /// Runs of unchanged frames go out as one write without a copy into
    /// `copied`; a cut frame or a gap makes the rest copied; no write holds
    /// more than WRITE_BATCH bytes unless it is one frame.
    #[tokio::test]
    async fn test_pending_writes_hold_whole_frames_in_order() {
        let buf = framed(&[100, 200, 300, 400, WRITE_BATCH, 50]);
        let offs: Vec<usize> = [0, 104, 308, 612, 1016, 1020 + WRITE_BATCH].into();
        let mut w = Writes::default();
        let mut p = Pending::default();
        assert!(p.frame(&buf, offs[0], 100, &mut w).await);
        assert!(p.frame(&buf, offs[1], 200, &mut w).await);
        assert_eq!((p.run.clone(), p.copied.len()), (0..308, 0), "back to back: one run");
        // Frame 2 dropped: frame 3 does not follow the run.
        assert!(p.frame(&buf, offs[3], 400, &mut w).await);
        assert!(p.copy(&buf, &[9; 30], &mut w).await);
        assert!(p.frame(&buf, offs[4], WRITE_BATCH, &mut w).await);
        assert!(p.frame(&buf, offs[5], 50, &mut w).await);
        assert!(p.flush(&buf, &mut w).await);
        let writes = w.0;
        let mut want1 = buf[..308].to_vec();
        want1.extend_from_slice(&buf[offs[3]..offs[4]]);
        want1.extend_from_slice(&[0, 0, 0, 30]);
        want1.extend_from_slice(&[9; 30]);
        assert_eq!(writes, vec![want1, buf[offs[4]..offs[5]].to_vec(), buf[offs[5]..].to_vec()]);
    }
}
