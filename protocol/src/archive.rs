//! The archive format for PutArchive/GetArchive: a plain ustar/GNU tar stream
//! that keeps modes, mtimes, symlinks (never followed) and empty directories,
//! plus a writer that measures size and SHA-256 as the stream passes. Packing
//! and unpacking are blocking; callers run them on a blocking thread.

use sha2::{Digest, Sha256};
use std::io::{self, Read, Write};
use std::path::Path;

/// Writes `path` (a directory's contents, or one file) as a tar stream.
pub fn pack<W: Write>(path: &Path, w: W) -> io::Result<W> {
    let meta = std::fs::symlink_metadata(path)?;
    let mut b = tar::Builder::new(w);
    b.follow_symlinks(false);
    if meta.is_dir() {
        b.append_dir_all(".", path)?;
    } else {
        let name =
            path.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
        b.append_path_with_name(path, name)?;
    }
    b.into_inner()
}

/// Unpacks a tar stream into `dest`, refusing entries that escape it. Returns
/// the number of entries. Directories are applied last so their modes and
/// mtimes survive the creation of their contents.
pub fn unpack<R: Read>(r: R, dest: &Path) -> io::Result<u64> {
    std::fs::create_dir_all(dest)?;
    let mut ar = tar::Archive::new(r);
    ar.set_preserve_permissions(true);
    ar.set_preserve_mtime(true);
    ar.set_overwrite(true);
    ar.set_unpack_xattrs(false);
    let mut dirs = Vec::new();
    let mut count = 0;
    for entry in ar.entries()? {
        let mut entry = entry?;
        count += 1;
        if entry.header().entry_type().is_dir() {
            // Create now (descendants need it), fix mode and mtime at the end.
            let path = entry.path()?.into_owned();
            if let Some(p) = safe_join(dest, &path) {
                std::fs::create_dir_all(&p)?;
            }
            dirs.push(entry_header_snapshot(&entry)?);
            continue;
        }
        entry.unpack_in(dest)?;
    }
    // Deepest first, so a parent's mtime is set after its children's.
    dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
    for (path, header) in dirs {
        if let Some(p) = safe_join(dest, &path) {
            if let Ok(mode) = header.mode() {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode & 0o7777))?;
            }
            if let Ok(mtime) = header.mtime() {
                set_mtime(&p, mtime as i64)?;
            }
        }
    }
    Ok(count)
}

fn entry_header_snapshot<R: Read>(entry: &tar::Entry<R>) -> io::Result<(std::path::PathBuf, tar::Header)> {
    Ok((entry.path()?.into_owned(), entry.header().clone()))
}

/// Joins an archive path under `dest`, or `None` when it would leave `dest`.
fn safe_join(dest: &Path, rel: &Path) -> Option<std::path::PathBuf> {
    use std::path::Component;
    let mut out = dest.to_path_buf();
    for c in rel.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(out)
}

fn set_mtime(p: &Path, secs: i64) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes())?;
    let ts = [libc::timespec { tv_sec: secs, tv_nsec: 0 }, libc::timespec { tv_sec: secs, tv_nsec: 0 }];
    // SAFETY: c is a valid NUL-terminated path and ts points at two timespecs.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Counts bytes and hashes them on their way to `inner`.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    size: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter { inner, hasher: Sha256::new(), size: 0 }
    }

    /// Returns the inner writer, the byte count and the hex SHA-256.
    pub fn finish(self) -> (W, u64, String) {
        (self.inner, self.size, hex::encode(self.hasher.finalize()))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Incremental hash of a stream received in pieces.
#[derive(Default)]
pub struct StreamDigest {
    hasher: Sha256,
    size: u64,
}

impl StreamDigest {
    pub fn update(&mut self, b: &[u8]) {
        self.hasher.update(b);
        self.size += b.len() as u64;
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn finish(self) -> (u64, String) {
        (self.size, hex::encode(self.hasher.finalize()))
    }
}

/// A `Write` that hands full chunks to the async side through a bounded channel.
struct ChunkSender {
    tx: tokio::sync::mpsc::Sender<bytes::Bytes>,
    buf: Vec<u8>,
}

impl Write for ChunkSender {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let room = crate::DATA_CHUNK - self.buf.len();
        let n = room.min(b.len());
        self.buf.extend_from_slice(&b[..n]);
        if self.buf.len() == crate::DATA_CHUNK {
            self.flush()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = bytes::Bytes::from(std::mem::take(&mut self.buf));
        self.tx
            .blocking_send(chunk)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "archive receiver went away"))
    }
}

/// Packs `path` on a blocking thread, yielding chunks of at most DATA_CHUNK
/// bytes; the task returns the stream's size and hex SHA-256.
#[allow(clippy::type_complexity)]
pub fn pack_to_channel(
    path: std::path::PathBuf,
) -> (tokio::sync::mpsc::Receiver<bytes::Bytes>, tokio::task::JoinHandle<io::Result<(u64, String)>>) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let task = tokio::task::spawn_blocking(move || {
        let w = HashingWriter::new(ChunkSender { tx, buf: Vec::with_capacity(crate::DATA_CHUNK) });
        let w = pack(&path, w)?;
        let (mut inner, size, sha) = w.finish();
        inner.flush()?;
        Ok((size, sha))
    });
    (rx, task)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

    #[test]
    fn test_pack_unpack_keeps_modes_symlinks_empty_dirs_mtimes() {
        let src = tempfile::tempdir().unwrap();
        let s = src.path();
        std::fs::create_dir_all(s.join("sub/empty")).unwrap();
        std::fs::write(s.join("sub/run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
        std::fs::set_permissions(s.join("sub/run.sh"), std::fs::Permissions::from_mode(0o751)).unwrap();
        symlink("sub/run.sh", s.join("link")).unwrap();
        symlink("/nonexistent/target", s.join("dangling")).unwrap();
        set_mtime(&s.join("sub/run.sh"), 1_000_000_000).unwrap();
        set_mtime(&s.join("sub/empty"), 1_100_000_000).unwrap();

        let mut buf = Vec::new();
        pack(s, HashingWriter::new(&mut buf)).unwrap();
        let dst = tempfile::tempdir().unwrap();
        let d = dst.path();
        unpack(&buf[..], d).unwrap();

        assert_eq!(std::fs::read(d.join("sub/run.sh")).unwrap(), b"#!/bin/sh\necho hi\n");
        let m = std::fs::metadata(d.join("sub/run.sh")).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o751);
        assert_eq!(m.mtime(), 1_000_000_000);
        assert!(std::fs::metadata(d.join("sub/empty")).unwrap().is_dir());
        assert_eq!(std::fs::metadata(d.join("sub/empty")).unwrap().mtime(), 1_100_000_000);
        assert_eq!(std::fs::read_link(d.join("link")).unwrap(), Path::new("sub/run.sh"));
        assert_eq!(std::fs::read_link(d.join("dangling")).unwrap(), Path::new("/nonexistent/target"));
    }

    #[test]
    fn test_unpack_refuses_escape() {
        // A hand-made header naming ../evil: tar's Builder refuses to write one.
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..7].copy_from_slice(b"../evil");
        h.set_size(3);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        let mut buf = h.as_bytes().to_vec();
        buf.extend_from_slice(b"bad");
        buf.resize(512 * 2, 0);
        buf.extend_from_slice(&[0u8; 1024]);
        let dst = tempfile::tempdir().unwrap();
        let inner = dst.path().join("in");
        let _ = unpack(&buf[..], &inner);
        assert!(!dst.path().join("evil").exists());
    }

    #[test]
    fn test_hashing_writer_matches_stream_digest() {
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(b"hello world").unwrap();
        let (inner, size, sum) = w.finish();
        let mut d = StreamDigest::default();
        d.update(&inner[..5]);
        d.update(&inner[5..]);
        assert_eq!(d.finish(), (size, sum.clone()));
        assert_eq!(sum, "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9");
    }
}
