//! Tar streams into the tree: a rootfs tarball, or one OCI layer (with
//! whiteouts). Paths with `..` or a root are refused, not rewritten. The
//! tar crate reads a member's long name or PAX extensions into memory, so
//! the stream is read through `Guard`, which bounds what is read between
//! two entries outside their data.

use std::cell::Cell;
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use super::tree::{Meta, Tree, CHUNK};
use super::{decoder, oci, Compression, ImportError, SourceKind, MAX_DEPTH};

/// Most bytes of headers, long names and PAX extensions before one entry.
pub(super) const MAX_TAR_META: u64 = 4 << 20;

/// Whether a 512-byte block is a tar header: the ustar magic, or (old tar)
/// a checksum that adds up.
pub(super) fn looks_like_tar(head: &[u8]) -> bool {
    if head.len() < 512 {
        return false;
    }
    if &head[257..262] == b"ustar" {
        return true;
    }
    let field = String::from_utf8_lossy(&head[148..156]);
    let Ok(want) = u32::from_str_radix(field.trim_matches(|c: char| c == '\0' || c == ' '), 8) else { return false };
    let sum: u32 =
        head[..512].iter().enumerate().map(|(i, b)| if (148..156).contains(&i) { 32 } else { *b as u32 }).sum();
    sum == want
}

#[derive(Default)]
pub(super) struct GuardState {
    /// Bytes read since the last entry, outside entry data.
    meta: Cell<u64>,
    /// The unpacker is reading an entry's data.
    data: Cell<bool>,
    tripped: Cell<bool>,
}

/// Counts what the tar crate reads on its own (headers and extensions).
pub(super) struct Guard<R> {
    inner: R,
    state: Rc<GuardState>,
}

impl<R> Guard<R> {
    pub fn new(inner: R) -> (Guard<R>, Rc<GuardState>) {
        let state = Rc::new(GuardState::default());
        (Guard { inner, state: state.clone() }, state)
    }
}

impl<R: Read> Read for Guard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if !self.state.data.get() {
            let m = self.state.meta.get() + n as u64;
            self.state.meta.set(m);
            if m > MAX_TAR_META {
                self.state.tripped.set(true);
                return Err(io::Error::other("tar metadata too large"));
            }
        }
        Ok(n)
    }
}

impl<R: Seek> Seek for Guard<R> {
    fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
        self.inner.seek(pos)
    }
}

impl GuardState {
    pub fn next_entry(&self) {
        self.meta.set(0);
    }

    pub fn error(&self, what: &str, source: io::Error) -> ImportError {
        if self.tripped.get() {
            ImportError::TarMetadataTooLarge { what: what.to_string(), limit: MAX_TAR_META }
        } else {
            ImportError::Archive { what: what.to_string(), source }
        }
    }
}

/// The components of an entry path; `..` and absolute paths are refused.
pub(super) fn components(p: &Path, shown: &str) -> Result<Vec<OsString>, ImportError> {
    let mut out = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n.to_os_string()),
            Component::CurDir => {}
            Component::ParentDir => return Err(ImportError::Escapes { entry: shown.to_string(), why: "a `..` path" }),
            Component::RootDir | Component::Prefix(_) => {
                return Err(ImportError::Escapes { entry: shown.to_string(), why: "an absolute path" })
            }
        }
    }
    if out.len() > MAX_DEPTH {
        return Err(ImportError::TooDeep { entry: shown.to_string(), limit: MAX_DEPTH });
    }
    Ok(out)
}

/// Imports the tar file `file` (maybe compressed): a rootfs tarball, or a
/// tar of an OCI layout.
pub(super) fn import_file(
    file: File,
    path: &Path,
    dest: &Path,
    compression: Compression,
    tree: &mut Tree,
    log: &dyn Fn(&str),
) -> Result<SourceKind, ImportError> {
    let what = path.display().to_string();
    let open_err = |source| ImportError::Open { path: path.to_path_buf(), source };
    if compression == Compression::None {
        if let Some(store) = oci::TarStore::scan(&file, path)? {
            return oci::unpack(&store, tree, log);
        }
    } else if oci::sniff_stream(decoder(BufReader::new(&file), compression).map_err(open_err)?, &what, tree)? {
        log("the archive holds an OCI layout: decompressing it to a temporary file first");
        let mut tmp =
            tempfile::tempfile_in(dest).map_err(|source| ImportError::Write { path: what.clone(), source })?;
        (&file).rewind().map_err(open_err)?;
        let mut r = decoder(BufReader::new(&file), compression).map_err(open_err)?;
        let limit = tree.max_bytes();
        let (mut buf, mut n) = (vec![0u8; CHUNK], 0u64);
        loop {
            tree.check_cancel()?;
            let k = match super::read_some(&mut r, &mut buf) {
                Ok(0) => break,
                Ok(k) => k,
                Err(source) => return Err(ImportError::Archive { what, source }),
            };
            n += k as u64;
            if n > limit {
                return Err(ImportError::TooLarge { limit });
            }
            tmp.write_all(&buf[..k]).map_err(|source| ImportError::Write { path: what.clone(), source })?;
        }
        tmp.rewind().map_err(open_err)?;
        if let Some(store) = oci::TarStore::scan(&tmp, path)? {
            return oci::unpack(&store, tree, log);
        }
        // Layout names first, then others: a rootfs after all.
        tmp.rewind().map_err(open_err)?;
        apply(tree, BufReader::new(&tmp), &what, false)?;
        return Ok(SourceKind::Tarball { compression });
    }
    (&file).rewind().map_err(open_err)?;
    let r = decoder(BufReader::new(&file), compression).map_err(open_err)?;
    apply(tree, r, &what, false)?;
    Ok(SourceKind::Tarball { compression })
}

/// Applies the tar stream `r` to the tree; `layer`: an OCI layer, whose
/// `.wh.` entries are whiteouts.
pub(super) fn apply(tree: &mut Tree, r: impl Read, what: &str, layer: bool) -> Result<(), ImportError> {
    let (guard, state) = Guard::new(r);
    let mut ar = tar::Archive::new(guard);
    if layer {
        tree.begin_layer();
    }
    for entry in ar.entries().map_err(|e| state.error(what, e))? {
        let mut entry = entry.map_err(|e| state.error(what, e))?;
        state.next_entry();
        tree.entry()?;
        let raw = entry.path().map_err(|e| state.error(what, e))?.into_owned();
        let shown = raw.display().to_string();
        let comps = components(&raw, &shown)?;
        let (meta, caps) = meta(&mut entry);
        let kind = entry.header().entry_type();
        let name = comps.last().map(|n| n.as_bytes()).unwrap_or_default();
        if layer && name.starts_with(b".wh.") {
            let parent = &comps[..comps.len() - 1];
            if name == b".wh..wh..opq" {
                tree.opaque(parent, &shown)?;
            } else if !name.starts_with(b".wh..wh.") && !matches!(&name[4..], b"" | b"." | b"..") {
                let mut target = parent.to_vec();
                target.push(std::ffi::OsStr::from_bytes(&name[4..]).to_os_string());
                tree.whiteout(&target, &shown)?;
            }
        } else if kind.is_dir() {
            tree.dir(&comps, &shown, meta)?;
        } else if kind.is_file() || kind.is_contiguous() || kind.is_gnu_sparse() {
            state.data.set(true);
            let read_err = |source| ImportError::Archive { what: what.to_string(), source };
            let r = tree.file(&comps, &shown, meta, caps.as_deref(), &mut entry, &read_err);
            state.data.set(false);
            r?;
        } else if kind.is_symlink() || kind.is_hard_link() {
            let target = match entry.link_name() {
                Ok(Some(t)) => t.into_owned(),
                Ok(None) => PathBuf::new(),
                Err(e) => return Err(state.error(what, e)),
            };
            if kind.is_symlink() {
                tree.symlink(&comps, &shown, meta, target.as_os_str())?;
            } else {
                let tshown = target.display().to_string();
                let tcomps = components(&target, &tshown).map_err(|_| ImportError::Escapes {
                    entry: shown.clone(),
                    why: "a hard link to outside the image",
                })?;
                tree.hard_link(&comps, &shown, &tcomps, &tshown)?;
            }
        } else if kind.is_fifo() {
            tree.fifo(&comps, &shown, meta)?;
        } else if kind.is_character_special() || kind.is_block_special() {
            tree.device();
        }
        // PAX global headers, volume labels and the like carry no file.
        drain(tree, &mut entry, &state, what)?;
    }
    if layer {
        tree.end_layer();
    }
    Ok(())
}

/// Reads what is left of an entry's data, so the guard only counts headers.
pub(super) fn drain(tree: &Tree, r: &mut impl Read, state: &GuardState, what: &str) -> Result<(), ImportError> {
    let mut buf = [0u8; 8192];
    state.data.set(true);
    let mut res = Ok(());
    loop {
        if let Err(e) = tree.check_cancel() {
            res = Err(e);
            break;
        }
        match super::read_some(r, &mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                res = Err(ImportError::Archive { what: what.to_string(), source: e });
                break;
            }
        }
    }
    state.data.set(false);
    res
}

/// Mode, owner and mtime from the header, PAX `uid`, `gid` and `mtime`
/// first; and the file capabilities a PAX xattr record carries.
fn meta<R: Read>(entry: &mut tar::Entry<R>) -> (Meta, Option<Vec<u8>>) {
    let h = entry.header();
    let mut m = Meta {
        mode: h.mode().unwrap_or(0o644),
        uid: h.uid().unwrap_or(0),
        gid: h.gid().unwrap_or(0),
        mtime: h.mtime().map(|t| t.min(i64::MAX as u64) as i64).unwrap_or(0),
    };
    let mut caps = None;
    if let Ok(Some(pax)) = entry.pax_extensions() {
        for ext in pax.flatten() {
            let num = || ext.value().ok().and_then(|v| v.split('.').next()?.parse::<i64>().ok());
            match ext.key() {
                Ok("uid") => m.uid = num().and_then(|n| u64::try_from(n).ok()).unwrap_or(m.uid),
                Ok("gid") => m.gid = num().and_then(|n| u64::try_from(n).ok()).unwrap_or(m.gid),
                Ok("mtime") => m.mtime = num().unwrap_or(m.mtime),
                Ok("SCHILY.xattr.security.capability") => caps = Some(ext.value_bytes().to_vec()),
                _ => {}
            }
        }
    }
    (m, caps)
}
