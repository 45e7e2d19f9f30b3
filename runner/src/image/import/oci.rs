//! OCI image layouts, as a directory or a tar of one (`docker save` of
//! Docker 25+, skopeo `oci-archive:`, apko): pick the manifest for
//! linux/<host arch> (following nested indexes), check every blob's size and
//! sha256 against its descriptor before using it, then apply the layers in
//! order. Files of a layout directory are opened beneath it without
//! following a symlink; a tar's blobs are read in place at their offsets.

use oci_spec::image::{
    Descriptor, DigestAlgorithm, ImageConfiguration, ImageIndex, ImageManifest, MediaType, OciLayout,
};
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::Mode;

use super::tarball::{self, components, Guard};
use super::tree::{errno, Tree, CHUNK};
use super::{decoder, Compression, ImportError, SourceKind, MAX_JSON};

/// Most manifests an index (with the indexes it nests) may list.
pub(super) const MAX_MANIFESTS: usize = 256;
/// Deepest nesting of indexes.
const MAX_NESTING: usize = 4;
/// Most files a tar of a layout may hold.
const MAX_LAYOUT_FILES: usize = 65536;

const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LAYERS: &[&str] = &[
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
];

/// An open file of a layout, and its size.
pub(super) type Opened<'a> = (Box<dyn Read + 'a>, u64);

/// `(os, arch, variant)`.
type Platform = (String, String, Option<String>);

/// Where a layout's files are.
pub(super) trait Store {
    /// The layout's path, for messages.
    fn name(&self) -> String;
    /// A regular file of the layout and its size; `None` when it is missing.
    fn open(&self, path: &[&str]) -> Result<Option<Opened<'_>>, ImportError>;
}

/// Whether the directory holds an `oci-layout` file (of any kind: a symlink
/// there is refused later rather than taken for a rootfs).
pub(super) fn is_layout_dir(root: &OwnedFd) -> bool {
    nix::sys::stat::fstatat(root.as_fd(), "oci-layout", AtFlags::AT_SYMLINK_NOFOLLOW).is_ok()
}

pub(super) struct DirStore {
    root: OwnedFd,
    path: PathBuf,
}

impl DirStore {
    pub fn new(root: OwnedFd, path: &Path) -> DirStore {
        DirStore { root, path: path.to_path_buf() }
    }
}

impl Store for DirStore {
    fn name(&self) -> String {
        self.path.display().to_string()
    }

    fn open(&self, path: &[&str]) -> Result<Option<Opened<'_>>, ImportError> {
        let shown = self.path.join(path.join("/"));
        let open_err = |e: Errno| ImportError::Open { path: shown.clone(), source: errno(e) };
        let not_regular = || ImportError::BadLayout {
            path: self.name(),
            why: format!("{} is a symlink or not a regular file", path.join("/")),
        };
        let Some((leaf, dirs)) = path.split_last() else { return Ok(None) };
        let mut cur: Option<OwnedFd> = None;
        let dir_flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_RDONLY;
        for d in dirs {
            let at = cur.as_ref().unwrap_or(&self.root);
            cur = Some(match openat(at.as_fd(), *d, dir_flags, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => return Ok(None),
                Err(Errno::ELOOP | Errno::ENOTDIR) => return Err(not_regular()),
                Err(e) => return Err(open_err(e)),
            });
        }
        let at = cur.as_ref().unwrap_or(&self.root);
        // O_NONBLOCK: a fifo in the layout must not hang the import.
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        let f = match openat(at.as_fd(), *leaf, flags, Mode::empty()) {
            Ok(fd) => File::from(fd),
            Err(Errno::ENOENT) => return Ok(None),
            Err(Errno::ELOOP | Errno::ENOTDIR) => return Err(not_regular()),
            Err(e) => return Err(open_err(e)),
        };
        let meta = f.metadata().map_err(|source| ImportError::Open { path: shown.clone(), source })?;
        if !meta.is_file() {
            return Err(not_regular());
        }
        Ok(Some((Box::new(f), meta.len())))
    }
}

/// A tar of a layout: where each regular file's data lies in it.
pub(super) struct TarStore<'f> {
    file: &'f File,
    path: PathBuf,
    index: HashMap<String, (u64, u64)>,
}

/// Whether a path (components joined by `/`) belongs in a layout tar.
fn layout_name(p: &str) -> bool {
    let parts: Vec<&str> = p.split('/').collect();
    match parts[..] {
        [""] | ["oci-layout"] | ["index.json"] | ["manifest.json"] | ["repositories"] | ["blobs"] => true,
        ["blobs", a] | ["blobs", a, _] => !a.is_empty(),
        _ => false,
    }
}

fn joined(p: &Path, shown: &str) -> Option<String> {
    let comps = components(p, shown).ok()?;
    let strs: Option<Vec<&str>> = comps.iter().map(|c| c.to_str()).collect();
    Some(strs?.join("/"))
}

impl<'f> TarStore<'f> {
    /// Indexes `file` (a plain tar) when it holds an OCI layout: only layout
    /// names, `oci-layout` and `index.json` among them. Stops at the first
    /// other name, so a rootfs tarball costs a header or two.
    pub fn scan(file: &'f File, path: &Path) -> Result<Option<TarStore<'f>>, ImportError> {
        let what = path.display().to_string();
        let (guard, state) = Guard::new(file);
        let mut ar = tar::Archive::new(guard);
        let mut index = HashMap::new();
        for entry in ar.entries_with_seek().map_err(|e| state.error(&what, e))? {
            let entry = entry.map_err(|e| state.error(&what, e))?;
            state.next_entry();
            let p = entry.path().map_err(|e| state.error(&what, e))?;
            let Some(name) = joined(&p, &p.display().to_string()).filter(|n| layout_name(n)) else { return Ok(None) };
            if entry.header().entry_type().is_file() {
                index.insert(name, (entry.raw_file_position(), entry.size()));
                if index.len() > MAX_LAYOUT_FILES {
                    let why = format!("it holds more than {MAX_LAYOUT_FILES} files");
                    return Err(ImportError::BadLayout { path: what, why });
                }
            }
        }
        if !index.contains_key("oci-layout") || !index.contains_key("index.json") {
            return Ok(None);
        }
        Ok(Some(TarStore { file, path: path.to_path_buf(), index }))
    }
}

/// Whether the (decompressed) tar stream `r` starts like an OCI layout: only
/// layout names until both `oci-layout` and `index.json` were seen.
pub(super) fn sniff_stream(r: impl Read, what: &str, tree: &Tree) -> Result<bool, ImportError> {
    let (guard, state) = Guard::new(r);
    let mut ar = tar::Archive::new(guard);
    let (mut layout, mut index) = (false, false);
    for entry in ar.entries().map_err(|e| state.error(what, e))? {
        let mut entry = entry.map_err(|e| state.error(what, e))?;
        state.next_entry();
        let p = entry.path().map_err(|e| state.error(what, e))?.into_owned();
        match joined(&p, &p.display().to_string()) {
            Some(n) if layout_name(&n) => {
                layout |= n == "oci-layout";
                index |= n == "index.json";
            }
            _ => return Ok(false),
        }
        if layout && index {
            return Ok(true);
        }
        tarball::drain(tree, &mut entry, &state, what)?;
    }
    Ok(false)
}

impl Store for TarStore<'_> {
    fn name(&self) -> String {
        self.path.display().to_string()
    }

    fn open(&self, path: &[&str]) -> Result<Option<Opened<'_>>, ImportError> {
        Ok(self.index.get(&path.join("/")).map(|&(pos, size)| {
            let r: Box<dyn Read + '_> = Box::new(At { file: self.file, pos, end: pos.saturating_add(size) });
            (r, size)
        }))
    }
}

/// A window of a file, read with `pread` (no shared offset).
struct At<'f> {
    file: &'f File,
    pos: u64,
    end: u64,
}

impl Read for At<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min(usize::try_from(self.end - self.pos).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// `blobs/sha256/<hex>` for a descriptor; only sha256 is supported.
fn blob_path(desc: &Descriptor) -> Result<[String; 3], ImportError> {
    let d = desc.digest();
    let hex = d.digest();
    let ok = *d.algorithm() == DigestAlgorithm::Sha256
        && hex.len() == 64
        && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !ok {
        return Err(ImportError::UnsupportedDigest { digest: d.to_string() });
    }
    Ok(["blobs".into(), "sha256".into(), hex.to_string()])
}

/// Reads a blob through `sink`, checking its size and digest; `Ok` only if
/// both match the descriptor.
fn check_blob(
    store: &dyn Store,
    desc: &Descriptor,
    tree: &Tree,
    mut sink: impl FnMut(&[u8]),
) -> Result<(), ImportError> {
    let path = blob_path(desc)?;
    let digest = desc.digest().to_string();
    let parts: Vec<&str> = path.iter().map(String::as_str).collect();
    let (r, _) = store.open(&parts)?.ok_or_else(|| ImportError::BlobMissing { digest: digest.clone() })?;
    let mut r = r.take(desc.size().saturating_add(1));
    let mut h = Sha256::new();
    let mut n = 0u64;
    let mut buf = vec![0u8; CHUNK];
    loop {
        tree.check_cancel()?;
        let k = match super::read_some(&mut r, &mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(source) => return Err(ImportError::Open { path: PathBuf::from(store.name()).join(&path[2]), source }),
        };
        h.update(&buf[..k]);
        sink(&buf[..k]);
        n += k as u64;
    }
    if n != desc.size() {
        return Err(ImportError::BlobSize { digest, expected: desc.size(), actual: n });
    }
    let actual = hex::encode(h.finalize());
    if actual != desc.digest().digest() {
        return Err(ImportError::BlobDigest { digest, actual });
    }
    Ok(())
}

/// A verified JSON blob's bytes.
fn json_blob(store: &dyn Store, desc: &Descriptor, tree: &Tree) -> Result<Vec<u8>, ImportError> {
    if desc.size() > MAX_JSON {
        let digest = desc.digest().to_string();
        return Err(ImportError::JsonTooLarge { digest, size: desc.size(), limit: MAX_JSON });
    }
    let mut out = Vec::new();
    check_blob(store, desc, tree, |b| out.extend_from_slice(b))?;
    Ok(out)
}

/// A small file at the layout's top (`oci-layout`, `index.json`).
fn top_file(store: &dyn Store, name: &str) -> Result<Vec<u8>, ImportError> {
    let bad = |why: String| ImportError::BadLayout { path: store.name(), why };
    let (r, _) = store.open(&[name])?.ok_or_else(|| bad(format!("it has no {name}")))?;
    let mut out = Vec::new();
    r.take(MAX_JSON + 1)
        .read_to_end(&mut out)
        .map_err(|source| ImportError::Open { path: PathBuf::from(store.name()).join(name), source })?;
    if out.len() as u64 > MAX_JSON {
        return Err(bad(format!("its {name} is larger than {MAX_JSON} bytes")));
    }
    Ok(out)
}

fn json<T>(what: &str, r: oci_spec::Result<T>) -> Result<T, ImportError> {
    r.map_err(|source| ImportError::Json { what: what.to_string(), source })
}

fn is_index(mt: &MediaType) -> bool {
    matches!(mt, MediaType::ImageIndex) || matches!(mt, MediaType::Other(s) if s == DOCKER_LIST)
}

fn is_manifest(mt: &MediaType) -> bool {
    matches!(mt, MediaType::ImageManifest) || matches!(mt, MediaType::Other(s) if s == DOCKER_MANIFEST)
}

fn is_layer(mt: &MediaType) -> bool {
    #[allow(deprecated)]
    let oci = matches!(
        mt,
        MediaType::ImageLayer
            | MediaType::ImageLayerGzip
            | MediaType::ImageLayerZstd
            | MediaType::ImageLayerNonDistributable
            | MediaType::ImageLayerNonDistributableGzip
            | MediaType::ImageLayerNonDistributableZstd
    );
    oci || matches!(mt, MediaType::Other(s) if DOCKER_LAYERS.contains(&s.as_str()))
}

/// The architecture name OCI uses for this host.
pub(super) fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    }
}

/// An image manifest an index lists.
struct Candidate {
    desc: Descriptor,
    platform: Option<Platform>,
}

impl Candidate {
    fn platform_str(&self) -> String {
        match &self.platform {
            Some((os, arch, Some(v))) => format!("{os}/{arch}/{v}"),
            Some((os, arch, None)) => format!("{os}/{arch}"),
            None => "unknown".to_string(),
        }
    }
}

/// Gathers the image manifests of `index`, following nested indexes.
fn collect(
    store: &dyn Store,
    index: &ImageIndex,
    depth: usize,
    out: &mut Vec<Candidate>,
    tree: &Tree,
) -> Result<(), ImportError> {
    if depth > MAX_NESTING {
        return Err(ImportError::IndexTooDeep { limit: MAX_NESTING });
    }
    for desc in index.manifests() {
        if out.len() >= MAX_MANIFESTS {
            return Err(ImportError::IndexTooDeep { limit: MAX_NESTING });
        }
        if is_index(desc.media_type()) {
            let nested = json_blob(store, desc, tree)?;
            let nested = json(&format!("index {}", desc.digest()), ImageIndex::from_reader(&nested[..]))?;
            collect(store, &nested, depth + 1, out, tree)?;
        } else if is_manifest(desc.media_type()) && !out.iter().any(|c| c.desc.digest() == desc.digest()) {
            let platform = desc
                .platform()
                .as_ref()
                .map(|p| (p.os().to_string(), p.architecture().to_string(), p.variant().clone()));
            out.push(Candidate { desc: desc.clone(), platform });
        }
    }
    Ok(())
}

/// The platform of a manifest its index does not describe: its config's.
fn config_platform(store: &dyn Store, desc: &Descriptor, tree: &Tree) -> Result<Option<Platform>, ImportError> {
    // Writers keep only the chosen platform's blobs: a missing one is another's.
    let m = match json_blob(store, desc, tree) {
        Err(ImportError::BlobMissing { .. }) => return Ok(None),
        r => r?,
    };
    let m = json(&format!("manifest {}", desc.digest()), ImageManifest::from_reader(&m[..]))?;
    let c = match json_blob(store, m.config(), tree) {
        Err(ImportError::BlobMissing { .. }) => return Ok(None),
        r => r?,
    };
    // An artifact's config is no image config: then it has no platform.
    Ok(ImageConfiguration::from_reader(&c[..])
        .ok()
        .map(|c| (c.os().to_string(), c.architecture().to_string(), c.variant().clone())))
}

/// Picks the one manifest for linux/<host arch>.
fn choose(store: &dyn Store, index: &ImageIndex, tree: &Tree) -> Result<Candidate, ImportError> {
    let mut cands = Vec::new();
    collect(store, index, 0, &mut cands, tree)?;
    for c in &mut cands {
        if c.platform.is_none() {
            c.platform = config_platform(store, &c.desc, tree)?;
        }
    }
    let want = format!("linux/{}", host_arch());
    let found = |cs: &[&Candidate]| {
        let list: Vec<String> = cs
            .iter()
            .map(|c| {
                let d = c.desc.digest().to_string();
                format!("{} ({})", c.platform_str(), d.get(..19).unwrap_or(&d))
            })
            .collect();
        if list.is_empty() {
            "no image manifests".to_string()
        } else {
            list.join(", ")
        }
    };
    let all: Vec<&Candidate> = cands.iter().collect();
    let matching: Vec<&Candidate> = all
        .iter()
        .copied()
        .filter(|c| matches!(&c.platform, Some((os, arch, _)) if os == "linux" && *arch == host_arch()))
        .collect();
    match matching.len() {
        1 => {}
        0 => return Err(ImportError::NoPlatform { want, found: found(&all) }),
        _ => return Err(ImportError::AmbiguousPlatform { want, found: found(&matching) }),
    }
    let i = cands.iter().position(|c| std::ptr::eq(c, matching[0])).expect("the match is one of the candidates");
    Ok(cands.swap_remove(i))
}

/// Unpacks the layout's linux/<host arch> image into the tree.
pub(super) fn unpack(store: &dyn Store, tree: &mut Tree, log: &dyn Fn(&str)) -> Result<SourceKind, ImportError> {
    let layout = json("oci-layout", OciLayout::from_reader(&top_file(store, "oci-layout")?[..]))?;
    if !layout.image_layout_version().starts_with("1.") {
        let why = format!("its image layout version {} is not 1.x", layout.image_layout_version());
        return Err(ImportError::BadLayout { path: store.name(), why });
    }
    let index = json("index.json", ImageIndex::from_reader(&top_file(store, "index.json")?[..]))?;
    let chosen = choose(store, &index, tree)?;
    let digest = chosen.desc.digest().to_string();
    let manifest = json_blob(store, &chosen.desc, tree)?;
    let manifest = json(&format!("manifest {digest}"), ImageManifest::from_reader(&manifest[..]))?;
    let layers = manifest.layers();
    let platform = chosen.platform_str();
    log(&format!("OCI image {platform}, manifest {digest}, {} layers", layers.len()));
    for layer in layers {
        if !is_layer(layer.media_type()) {
            let media_type = layer.media_type().to_string();
            return Err(ImportError::UnsupportedLayer { digest: layer.digest().to_string(), media_type });
        }
        check_blob(store, layer, tree, |_| {})?;
        let path = blob_path(layer)?;
        let parts: Vec<&str> = path.iter().map(String::as_str).collect();
        let missing = || ImportError::BlobMissing { digest: layer.digest().to_string() };
        let (r, _) = store.open(&parts)?.ok_or_else(missing)?;
        let what = format!("layer {}", layer.digest());
        let mut br = BufReader::with_capacity(CHUNK, r.take(layer.size()));
        // By magic rather than media type: some writers label plain layers gzip.
        let head = br.fill_buf().map_err(|source| ImportError::Archive { what: what.clone(), source })?;
        let compression = Compression::sniff(head);
        let r = decoder(br, compression).map_err(|source| ImportError::Archive { what: what.clone(), source })?;
        tarball::apply(tree, r, &what, true)?;
    }
    Ok(SourceKind::OciLayout { manifest_digest: digest, platform, layers: layers.len() })
}
