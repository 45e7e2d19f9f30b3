//! PutArchive and GetArchive on the agent side. An incoming archive is spooled
//! and verified (size and SHA-256) before anything is unpacked, so a corrupt
//! transfer changes nothing; an outgoing one is packed on a blocking thread and
//! streamed under flow control.

use bytes::Bytes;
use cordon_protocol::archive::{pack_to_channel, unpack, StreamDigest};
use cordon_protocol::{Channel, ErrorCode, Kind, Message, Window};
use std::path::PathBuf;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::outbox::Outbox;

pub enum PutEvent {
    Data(Bytes),
    End { size: u64, sha256: String },
}

pub async fn put(
    out: Outbox,
    stream: u32,
    dest: String,
    spool_dir: PathBuf,
    mut rx: mpsc::UnboundedReceiver<PutEvent>,
    inflight: crate::server::Inflight,
) {
    let spool = match tempfile::NamedTempFile::new_in(&spool_dir) {
        Ok(f) => f,
        Err(e) => {
            out.error(stream, ErrorCode::Archive, format!("creating a spool file in {}: {e}", spool_dir.display()))
                .await;
            return;
        }
    };
    let mut file = match spool.reopen() {
        Ok(f) => tokio::fs::File::from_std(f),
        Err(e) => {
            out.error(stream, ErrorCode::Archive, format!("opening the spool file: {e}")).await;
            return;
        }
    };
    let mut digest = StreamDigest::default();
    let mut failed: Option<String> = None;
    let (size, sha256) = loop {
        match rx.recv().await {
            Some(PutEvent::Data(b)) => {
                if failed.is_none() {
                    digest.update(&b);
                    if let Err(e) = file.write_all(&b).await {
                        failed = Some(format!("writing the spool file: {e}"));
                    }
                }
                inflight.fetch_sub(b.len() as u64, std::sync::atomic::Ordering::AcqRel);
                out.credit(stream, Channel::Archive, b.len() as u32).await;
            }
            Some(PutEvent::End { size, sha256 }) => break (size, sha256),
            None => return,
        }
    };
    if let Some(msg) = failed {
        out.error(stream, ErrorCode::Archive, msg).await;
        return;
    }
    if let Err(e) = file.flush().await {
        out.error(stream, ErrorCode::Archive, format!("flushing the spool file: {e}")).await;
        return;
    }
    let (got_size, got_sha) = digest.finish();
    if got_size != size || got_sha != sha256 {
        out.error(
            stream,
            ErrorCode::ChecksumMismatch,
            format!("archive received {got_size} bytes sha256 {got_sha}, sender said {size} bytes sha256 {sha256}"),
        )
        .await;
        return;
    }
    let res = tokio::task::spawn_blocking(move || {
        let f = std::fs::File::open(spool.path())?;
        unpack(std::io::BufReader::new(f), std::path::Path::new(&dest))
    })
    .await;
    match res {
        Ok(Ok(files)) => {
            out.msg(stream, &Message::ArchiveDone { files }).await;
        }
        Ok(Err(e)) => {
            out.error(stream, ErrorCode::Archive, format!("unpacking failed: {e}")).await;
        }
        Err(e) => {
            out.error(stream, ErrorCode::Internal, format!("unpack task failed: {e}")).await;
        }
    }
}

pub async fn get(out: Outbox, stream: u32, path: String, win: Window) {
    match std::fs::symlink_metadata(&path) {
        Ok(m) => {
            out.msg(stream, &Message::ArchiveInfo { is_dir: m.is_dir() }).await;
        }
        Err(e) => {
            out.error(stream, ErrorCode::Archive, format!("{path}: {e}")).await;
            return;
        }
    }
    let (mut rx, packer) = pack_to_channel(PathBuf::from(path));
    while let Some(chunk) = rx.recv().await {
        if !out.data(stream, Kind::ARCHIVE, &win, &chunk).await {
            return;
        }
    }
    match packer.await {
        Ok(Ok((size, sha256))) => {
            out.eof(stream, Kind::ARCHIVE).await;
            out.msg(stream, &Message::ArchiveEnd { size, sha256 }).await;
        }
        Ok(Err(e)) => {
            out.error(stream, ErrorCode::Archive, format!("packing failed: {e}")).await;
        }
        Err(e) => {
            out.error(stream, ErrorCode::Internal, format!("pack task failed: {e}")).await;
        }
    }
}
