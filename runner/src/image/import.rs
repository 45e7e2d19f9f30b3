//! `cordon image import PATH`, the unpacking half: a rootfs tarball (plain,
//! gzip or zstd), a rootfs directory, or an OCI image layout (a directory or
//! a tar of one) becomes a root filesystem tree in a directory cordon made.
//! The kind is judged by content, never by file name.
//!
//! Every byte of the source is hostile. Invariants: nothing is written
//! outside DEST (paths are resolved beneath it one component at a time with
//! `O_NOFOLLOW`, a symlink in the tree is data and never followed while
//! writing; `..`, absolute paths and hard links out of the tree are refused);
//! an OCI blob is used only after its size and sha256 match its descriptor;
//! at most `MAX_ENTRIES` entries and `MAX_BYTES` bytes are written, and
//! `cancel` is looked at between entries and 64 KiB chunks. Device nodes are
//! skipped. Ownership and setuid/setgid bits are kept only when running as
//! root: then DEST holds setuid-root files, so its parent must stay private.

mod dir;
mod oci;
mod tarball;
mod tree;

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

/// Most entries one import writes, all layers together: several times a
/// large distribution image (a full Debian with compilers has about 300,000).
pub const MAX_ENTRIES: u64 = 4_000_000;

/// Most file data one import writes, all layers together.
pub const MAX_BYTES: u64 = 64 << 30;

/// Deepest path an entry may have, in components.
pub const MAX_DEPTH: usize = 256;

/// Largest JSON document (index, manifest, config) read from a layout.
pub const MAX_JSON: u64 = 4 << 20;

/// Compression of a tarball (or of an OCI layer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// By magic number: gzip `1f 8b`, zstd `28 b5 2f fd`, anything else none.
    fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    fn name(self) -> &'static str {
        match self {
            Compression::None => "plain",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

/// What an import's source was.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum SourceKind {
    /// A rootfs tarball (what `docker export` writes).
    Tarball { compression: Compression },
    /// A rootfs directory, copied.
    Directory,
    /// An OCI image layout, as a directory or a tar of one.
    OciLayout {
        /// The chosen image manifest's digest, `sha256:<hex>`.
        manifest_digest: String,
        /// `os/arch[/variant]` of the chosen manifest.
        platform: String,
        layers: usize,
    },
}

/// What `unpack` made.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImportInfo {
    pub source: SourceKind,
    /// Entries written (layers together, whiteouts included).
    pub entries: u64,
    /// File data bytes written.
    pub bytes: u64,
}

impl ImportInfo {
    /// One short line for `image ls`, e.g. `oci linux/amd64 sha256:0123456789ab, 3 layers`.
    pub fn describe(&self) -> String {
        match &self.source {
            SourceKind::Tarball { compression } => format!("{} tarball", compression.name()),
            SourceKind::Directory => "directory".to_string(),
            SourceKind::OciLayout { manifest_digest, platform, layers } => {
                let short = manifest_digest.get(..19).unwrap_or(manifest_digest);
                let s = if *layers == 1 { "" } else { "s" };
                format!("oci {platform} {short}, {layers} layer{s}")
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("reading {path} failed")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is neither a directory nor a tar archive (plain, gzip or zstd)")]
    NotRecognized { path: PathBuf },
    #[error("the archive {what} is malformed")]
    Archive {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("a tar header in {what} carries more than {limit} bytes of names and extensions")]
    TarMetadataTooLarge { what: String, limit: u64 },
    #[error("writing {path} into the image tree failed")]
    Write {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("entry {entry} would land outside the image tree ({why})")]
    Escapes { entry: String, why: &'static str },
    #[error("entry {entry} is deeper than {limit} directories")]
    TooDeep { entry: String, limit: usize },
    #[error("hard link {entry} points at {target}, which is not in the image tree")]
    HardLinkMissing { entry: String, target: String },
    #[error("the image has more than {limit} entries")]
    TooManyEntries { limit: u64 },
    #[error("the image holds more than {limit} bytes of file data")]
    TooLarge { limit: u64 },
    #[error("the import was cancelled")]
    Cancelled,
    #[error("{path} is not a usable OCI image layout: {why}")]
    BadLayout { path: String, why: String },
    #[error("{what} in the OCI layout is not valid JSON of its kind")]
    Json {
        what: String,
        #[source]
        source: oci_spec::OciSpecError,
    },
    #[error("blob {digest} is not in the OCI layout")]
    BlobMissing { digest: String },
    #[error("blob {digest} has sha256:{actual}: it was altered or corrupted")]
    BlobDigest { digest: String, actual: String },
    #[error("blob {digest} is {actual} bytes, its descriptor says {expected}")]
    BlobSize { digest: String, expected: u64, actual: u64 },
    #[error("blob {digest} is {size} bytes, more than the {limit} a JSON document may have")]
    JsonTooLarge { digest: String, size: u64, limit: u64 },
    #[error("blob {digest} uses an unsupported digest algorithm (only sha256 is)")]
    UnsupportedDigest { digest: String },
    #[error("layer {digest} has the unsupported media type {media_type}")]
    UnsupportedLayer { digest: String, media_type: String },
    #[error("the image has no manifest for {want}; it has: {found}")]
    NoPlatform { want: String, found: String },
    #[error("the image has several manifests for {want}: {found}")]
    AmbiguousPlatform { want: String, found: String },
    #[error("the image index nests more than {limit} levels or lists more than {max} manifests", max = oci::MAX_MANIFESTS)]
    IndexTooDeep { limit: usize },
}

/// Bounds and switches of one import; `Default` is what `unpack` uses.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub max_entries: u64,
    pub max_bytes: u64,
    /// Keep ownership and setuid/setgid bits: only root can.
    pub keep_owners: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options { max_entries: MAX_ENTRIES, max_bytes: MAX_BYTES, keep_owners: nix::unistd::geteuid().is_root() }
    }
}

/// Turns `src` into a root filesystem tree in `dest`, an existing empty
/// directory. On error `dest` holds a partial tree the caller removes.
pub fn unpack(src: &Path, dest: &Path, cancel: &AtomicBool, log: &dyn Fn(&str)) -> Result<ImportInfo, ImportError> {
    unpack_with(src, dest, cancel, log, &Options::default())
}

pub(crate) fn unpack_with(
    src: &Path,
    dest: &Path,
    cancel: &AtomicBool,
    log: &dyn Fn(&str),
    opts: &Options,
) -> Result<ImportInfo, ImportError> {
    let open_err = |source| ImportError::Open { path: src.to_path_buf(), source };
    let meta = std::fs::metadata(src).map_err(open_err)?;
    let mut tree = tree::Tree::open(dest, opts, cancel)?;
    if !opts.keep_owners {
        log("not running as root: file ownership and setuid/setgid bits in the image are not kept");
    }
    let source = if meta.is_dir() {
        let root = dir::open_source(src)?;
        if oci::is_layout_dir(&root) {
            let store = oci::DirStore::new(root, src);
            oci::unpack(&store, &mut tree, log)?
        } else {
            dir::copy(&root, src, &mut tree)?;
            SourceKind::Directory
        }
    } else {
        let mut file = std::fs::File::open(src).map_err(open_err)?;
        let mut head = [0u8; 512];
        let n = read_head(&mut file, &mut head).map_err(open_err)?;
        let compression = Compression::sniff(&head[..n]);
        if compression == Compression::None && !tarball::looks_like_tar(&head[..n]) {
            return Err(ImportError::NotRecognized { path: src.to_path_buf() });
        }
        tarball::import_file(file, src, dest, compression, &mut tree, log)?
    };
    let (entries, bytes) = tree.finish(log);
    Ok(ImportInfo { source, entries, bytes })
}

/// One `read`, retried when a signal interrupts it (0 at the end).
fn read_some<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match r.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Reads up to `buf.len()` bytes from the start of `f`, then rewinds it.
fn read_head(f: &mut std::fs::File, buf: &mut [u8]) -> io::Result<usize> {
    use std::io::Seek;
    let mut n = 0;
    while n < buf.len() {
        match read_some(f, &mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    f.rewind()?;
    Ok(n)
}

/// A reader that decompresses what `compression` says.
fn decoder<'a, R: io::BufRead + 'a>(r: R, compression: Compression) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match compression {
        Compression::None => Box::new(r),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(r)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(r)?),
    })
}

#[cfg(test)]
mod tests;
