//! Tests of `unpack`: every input is built here (tar, gzip, zstd, OCI
//! layouts); each hostile case sits beside a positive control that shows the
//! same entry lands when it is harmless.

use super::*;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use tar::EntryType;

static NEVER: AtomicBool = AtomicBool::new(false);

/// One tar entry; names are written raw, so `..` and `/` paths can be made.
enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
    Mode(&'a str, &'a [u8], u32),
    Sym(&'a str, &'a str),
    Hard(&'a str, &'a str),
    Char(&'a str),
}

fn header(path: &str, kind: EntryType, size: u64, mode: u32, link: &str) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(1_600_000_000);
    h.set_uid(0);
    h.set_gid(0);
    let old = h.as_old_mut();
    old.name[..path.len()].copy_from_slice(path.as_bytes());
    old.linkname[..link.len()].copy_from_slice(link.as_bytes());
    h.set_cksum();
    h
}

fn tar_of(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let (h, data): (_, &[u8]) = match e {
            E::Dir(p) => (header(p, EntryType::Directory, 0, 0o755, ""), b""),
            E::File(p, d) => (header(p, EntryType::Regular, d.len() as u64, 0o644, ""), d),
            E::Mode(p, d, m) => (header(p, EntryType::Regular, d.len() as u64, *m, ""), d),
            E::Sym(p, t) => (header(p, EntryType::Symlink, 0, 0o777, t), b""),
            E::Hard(p, t) => (header(p, EntryType::Link, 0, 0o644, t), b""),
            E::Char(p) => (header(p, EntryType::Char, 0, 0o666, ""), b""),
        };
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::stream::encode_all(data, 3).unwrap()
}

/// A scratch dir with `dest/` (the tree) and `outside/` (must stay untouched).
struct Scratch {
    tmp: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("dest")).unwrap();
        fs::create_dir(tmp.path().join("outside")).unwrap();
        fs::write(tmp.path().join("outside/secret"), b"host secret").unwrap();
        Scratch { tmp }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.tmp.path().join(p)
    }

    fn dest(&self) -> PathBuf {
        self.path("dest")
    }

    fn outside(&self) -> String {
        self.path("outside").display().to_string()
    }

    /// Names under `outside/` other than the planted secret.
    fn outside_changed(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.path("outside"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "secret")
            .collect();
        if fs::read(self.path("outside/secret")).unwrap() != b"host secret" {
            v.push("secret (rewritten)".into());
        }
        v
    }

    fn write(&self, name: &str, data: &[u8]) -> PathBuf {
        let p = self.path(name);
        fs::write(&p, data).unwrap();
        p
    }

    fn unpack(&self, src: &Path) -> Result<ImportInfo, ImportError> {
        self.unpack_with(src, &Options::default())
    }

    fn unpack_with(&self, src: &Path, opts: &Options) -> Result<ImportInfo, ImportError> {
        unpack_with(src, &self.dest(), &NEVER, &|_| {}, opts)
    }

    fn read(&self, p: &str) -> Option<Vec<u8>> {
        fs::read(self.dest().join(p)).ok()
    }

    fn exists(&self, p: &str) -> bool {
        fs::symlink_metadata(self.dest().join(p)).is_ok()
    }
}

fn rootfs_entries() -> Vec<E<'static>> {
    vec![
        E::Dir("./"),
        E::Dir("./bin/"),
        E::Mode("./bin/su", b"su binary", 0o4755),
        E::Dir("./etc/"),
        E::File("./etc/hostname", b"image\n"),
        E::Hard("./etc/hostname.bak", "./etc/hostname"),
        E::Sym("./etc/localtime", "/usr/share/zoneinfo/UTC"),
        E::Dir("./dev/"),
        E::Char("./dev/null"),
    ]
}

fn assert_rootfs(s: &Scratch, info: &ImportInfo) {
    assert_eq!(s.read("etc/hostname").as_deref(), Some(&b"image\n"[..]));
    assert_eq!(fs::read_link(s.dest().join("etc/localtime")).unwrap(), Path::new("/usr/share/zoneinfo/UTC"));
    let a = fs::metadata(s.dest().join("etc/hostname")).unwrap();
    let b = fs::metadata(s.dest().join("etc/hostname.bak")).unwrap();
    assert_eq!(a.ino(), b.ino(), "the hard link shares the inode");
    assert!(!s.exists("dev/null"), "device nodes are skipped");
    let su = fs::metadata(s.dest().join("bin/su")).unwrap();
    if nix::unistd::geteuid().is_root() {
        assert_eq!(su.permissions().mode() & 0o7777, 0o4755, "setuid kept as root");
        assert_eq!(su.uid(), 0);
    }
    assert_eq!(info.entries, 9);
    assert_eq!(info.bytes, 9 + 6);
}

#[test]
fn test_unpack_plain_tarball() {
    let s = Scratch::new();
    let src = s.write("rootfs.tar", &tar_of(&rootfs_entries()));
    let info = s.unpack(&src).unwrap();
    assert_eq!(info.source, SourceKind::Tarball { compression: Compression::None });
    assert_eq!(info.describe(), "plain tarball");
    assert_rootfs(&s, &info);
}

#[test]
fn test_unpack_compressed_tarballs_by_content() {
    for (name, data, c) in [
        ("rootfs.tar", gzip(&tar_of(&rootfs_entries())), Compression::Gzip),
        ("rootfs.tar.gz", zstd(&tar_of(&rootfs_entries())), Compression::Zstd),
    ] {
        let s = Scratch::new();
        // The name says nothing (the zstd one is called .tar.gz on purpose).
        let info = s.unpack(&s.write(name, &data)).unwrap();
        assert_eq!(info.source, SourceKind::Tarball { compression: c });
        assert_rootfs(&s, &info);
    }
}

#[test]
fn test_unpack_not_recognized() {
    let s = Scratch::new();
    let err = s.unpack(&s.write("notes.txt", &[b'x'; 2000])).unwrap_err();
    assert!(matches!(err, ImportError::NotRecognized { .. }), "{err}");
    let err = s.unpack(&s.path("missing")).unwrap_err();
    assert!(matches!(err, ImportError::Open { .. }), "{err}");
}

#[test]
fn test_unpack_malformed_compressed_stream_is_an_error() {
    let s = Scratch::new();
    let mut gz = gzip(&tar_of(&rootfs_entries()));
    gz.truncate(gz.len() / 2);
    let err = s.unpack(&s.write("cut.tar.gz", &gz)).unwrap_err();
    assert!(matches!(err, ImportError::Archive { .. }), "{err}");
}

#[test]
fn test_unpack_refuses_parent_dir_path() {
    let s = Scratch::new();
    let ok = s.unpack(&s.write("ok.tar", &tar_of(&[E::File("escape", b"x")]))).unwrap();
    assert_eq!(ok.entries, 1);
    assert!(s.exists("escape"), "control: the plain name lands");
    let s = Scratch::new();
    let src = s.write("bad.tar", &tar_of(&[E::File("../outside/escape", b"x"), E::File("../escape", b"x")]));
    let err = s.unpack(&src).unwrap_err();
    assert!(matches!(err, ImportError::Escapes { .. }), "{err}");
    assert!(s.outside_changed().is_empty());
    assert!(!s.path("escape").exists());
}

#[test]
fn test_unpack_refuses_absolute_path() {
    let s = Scratch::new();
    let abs = format!("{}/abs", s.outside());
    let err = s.unpack(&s.write("bad.tar", &tar_of(&[E::File(&abs, b"x")]))).unwrap_err();
    assert!(matches!(err, ImportError::Escapes { .. }), "{err}");
    assert!(s.outside_changed().is_empty());
}

#[test]
fn test_unpack_never_writes_through_a_symlink() {
    let s = Scratch::new();
    let out = s.outside();
    let src = s.write(
        "evil.tar",
        &tar_of(&[
            E::Sym("abs", &out),
            E::File("abs/pwned", b"x"),
            E::Sym("rel", "../outside"),
            E::File("rel/pwned", b"x"),
            E::Dir("good/"),
            E::File("good/pwned", b"x"),
            // A file entry replaces a symlink at its name, never writes through it.
            E::Sym("leaf", &format!("{out}/secret")),
            E::File("leaf", b"replaced"),
        ]),
    );
    s.unpack(&src).unwrap();
    assert!(s.outside_changed().is_empty(), "{:?}", s.outside_changed());
    assert_eq!(s.read("good/pwned").as_deref(), Some(&b"x"[..]), "control: without the symlink it lands");
    assert!(fs::symlink_metadata(s.dest().join("abs")).unwrap().file_type().is_symlink());
    assert!(fs::symlink_metadata(s.dest().join("rel")).unwrap().file_type().is_symlink());
    assert!(fs::symlink_metadata(s.dest().join("leaf")).unwrap().file_type().is_file());
    assert_eq!(s.read("leaf").as_deref(), Some(&b"replaced"[..]));
}

#[test]
fn test_unpack_hard_links_stay_inside() {
    let s = Scratch::new();
    let abs = format!("{}/secret", s.outside());
    for (target, escapes) in [("../outside/secret", true), (abs.as_str(), true), ("missing", false)] {
        let s = Scratch::new();
        let err = s.unpack(&s.write("bad.tar", &tar_of(&[E::Hard("link", target)]))).unwrap_err();
        if escapes {
            assert!(matches!(err, ImportError::Escapes { .. }), "{target}: {err}");
        } else {
            assert!(matches!(err, ImportError::HardLinkMissing { .. }), "{target}: {err}");
        }
        assert!(!s.exists("link"));
    }
    // Through a symlinked directory the target is not found either.
    let src = s.write("sym.tar", &tar_of(&[E::Sym("d", &s.outside()), E::Hard("link", "d/secret")]));
    let err = s.unpack(&src).unwrap_err();
    assert!(matches!(err, ImportError::HardLinkMissing { .. }), "{err}");
    // Control: a link to a file already in the tree.
    let s = Scratch::new();
    s.unpack(&s.write("ok.tar", &tar_of(&[E::File("f", b"data"), E::Hard("link", "f")]))).unwrap();
    assert_eq!(s.read("link").as_deref(), Some(&b"data"[..]));
}

#[test]
fn test_unpack_entry_cap() {
    let names: Vec<String> = (0..50).map(|i| format!("f{i}")).collect();
    let entries: Vec<E> = names.iter().map(|n| E::File(n, b"")).collect();
    let data = tar_of(&entries);
    let s = Scratch::new();
    let opts = Options { max_entries: 10, ..Options::default() };
    let err = s.unpack_with(&s.write("bomb.tar", &data), &opts).unwrap_err();
    assert!(matches!(err, ImportError::TooManyEntries { limit: 10 }), "{err}");
    let s = Scratch::new();
    let opts = Options { max_entries: 50, ..Options::default() };
    assert_eq!(s.unpack_with(&s.write("ok.tar", &data), &opts).unwrap().entries, 50, "control: at the cap");
}

#[test]
fn test_unpack_byte_cap() {
    let data = tar_of(&[E::File("big", &[0u8; 5000])]);
    let s = Scratch::new();
    let opts = Options { max_bytes: 4096, ..Options::default() };
    let err = s.unpack_with(&s.write("big.tar", &gzip(&data)), &opts).unwrap_err();
    assert!(matches!(err, ImportError::TooLarge { limit: 4096 }), "{err}");
    let opts = Options { max_bytes: 5000, ..Options::default() };
    let s = Scratch::new();
    assert_eq!(s.unpack_with(&s.write("big.tar", &data), &opts).unwrap().bytes, 5000);
}

#[test]
fn test_unpack_cancelled() {
    let s = Scratch::new();
    let cancel = AtomicBool::new(true);
    let src = s.write("rootfs.tar", &tar_of(&rootfs_entries()));
    let err = unpack(&src, &s.dest(), &cancel, &|_| {}).unwrap_err();
    assert!(matches!(err, ImportError::Cancelled), "{err}");
}

#[test]
fn test_unpack_without_owners_drops_setuid() {
    let s = Scratch::new();
    let logged = std::cell::RefCell::new(Vec::new());
    let opts = Options { keep_owners: false, ..Options::default() };
    let src = s.write("rootfs.tar", &tar_of(&[E::Mode("su", b"x", 0o4755), E::Mode("sticky", b"", 0o1777)]));
    unpack_with(&src, &s.dest(), &NEVER, &|m| logged.borrow_mut().push(m.to_string()), &opts).unwrap();
    assert_eq!(fs::metadata(s.dest().join("su")).unwrap().permissions().mode() & 0o7777, 0o755);
    assert_eq!(fs::metadata(s.dest().join("sticky")).unwrap().permissions().mode() & 0o7777, 0o1777);
    assert!(logged.borrow().iter().any(|m| m.contains("ownership")), "{:?}", logged.borrow());
}

#[test]
fn test_unpack_directory_copies_links_as_links() {
    let s = Scratch::new();
    let src = s.path("src");
    fs::create_dir_all(src.join("etc/sub")).unwrap();
    fs::write(src.join("etc/a"), b"a").unwrap();
    fs::hard_link(src.join("etc/a"), src.join("etc/sub/a2")).unwrap();
    std::os::unix::fs::symlink(s.outside(), src.join("escape")).unwrap();
    std::os::unix::fs::symlink("../../outside", src.join("etc/rel")).unwrap();
    fs::set_permissions(src.join("etc/sub"), fs::Permissions::from_mode(0o750)).unwrap();
    let info = s.unpack(&src).unwrap();
    assert_eq!(info.source, SourceKind::Directory);
    assert_eq!(info.describe(), "directory");
    assert_eq!(info.entries, 6);
    assert_eq!(s.read("etc/a").as_deref(), Some(&b"a"[..]));
    let a = fs::metadata(s.dest().join("etc/a")).unwrap();
    assert_eq!(a.ino(), fs::metadata(s.dest().join("etc/sub/a2")).unwrap().ino());
    assert_eq!(fs::read_link(s.dest().join("escape")).unwrap(), s.path("outside"));
    assert!(!s.exists("escape/secret") || fs::symlink_metadata(s.dest().join("escape")).unwrap().is_symlink());
    assert_eq!(fs::metadata(s.dest().join("etc/sub")).unwrap().permissions().mode() & 0o7777, 0o750);
    assert!(s.outside_changed().is_empty());
}

#[test]
fn test_unpack_directory_leaves_out_dest_inside_it() {
    let s = Scratch::new();
    fs::write(s.dest().join("marker"), b"").unwrap();
    // The scratch dir holds dest itself.
    let info = s.unpack(s.tmp.path()).unwrap();
    assert!(!s.exists("dest"));
    assert!(s.exists("outside/secret"));
    assert_eq!(info.source, SourceKind::Directory);
}

/// Builds OCI layouts: blobs under `root/blobs/sha256`.
struct Oci {
    root: PathBuf,
}

impl Oci {
    fn new(root: PathBuf) -> Oci {
        fs::create_dir_all(root.join("blobs/sha256")).unwrap();
        fs::write(root.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Oci { root }
    }

    fn blob(&self, media: &str, data: &[u8]) -> Value {
        let hex = hex::encode(Sha256::digest(data));
        fs::write(self.root.join("blobs/sha256").join(&hex), data).unwrap();
        json!({"mediaType": media, "digest": format!("sha256:{hex}"), "size": data.len()})
    }

    fn json_blob(&self, media: &str, v: &Value) -> Value {
        self.blob(media, &serde_json::to_vec(v).unwrap())
    }

    /// An image manifest for `arch` with `layers` ((media type, bytes)).
    fn image(&self, arch: &str, layers: &[(&str, Vec<u8>)]) -> Value {
        let config = json!({"architecture": arch, "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}});
        let config = self.json_blob("application/vnd.oci.image.config.v1+json", &config);
        let layers: Vec<Value> = layers.iter().map(|(m, d)| self.blob(m, d)).collect();
        let m = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config,
            "layers": layers,
        });
        self.json_blob("application/vnd.oci.image.manifest.v1+json", &m)
    }

    fn index(manifests: Vec<Value>) -> Value {
        json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests})
    }

    fn top_index(&self, manifests: Vec<Value>) {
        fs::write(self.root.join("index.json"), serde_json::to_vec(&Oci::index(manifests)).unwrap()).unwrap();
    }
}

fn with_platform(mut desc: Value, arch: &str) -> Value {
    desc["platform"] = json!({"architecture": arch, "os": "linux"});
    desc
}

/// Layer 1 (gzip) lays out etc/ and opt/; layer 2 (zstd) whites out etc/a,
/// makes opt/ opaque (keeping its own opt/new) and adds etc/c.
fn two_layers() -> Vec<(&'static str, Vec<u8>)> {
    let l1 = tar_of(&[
        E::Dir("etc/"),
        E::File("etc/a", b"a"),
        E::File("etc/b", b"b"),
        E::Dir("opt/"),
        E::File("opt/old", b"old"),
        E::Dir("opt/sub/"),
        E::File("opt/sub/x", b"x"),
    ]);
    let l2 = tar_of(&[
        E::File("etc/.wh.a", b""),
        E::File("etc/c", b"c"),
        E::File("opt/new", b"new"),
        E::File("opt/.wh..wh..opq", b""),
    ]);
    vec![
        ("application/vnd.oci.image.layer.v1.tar+gzip", gzip(&l1)),
        ("application/vnd.oci.image.layer.v1.tar+zstd", zstd(&l2)),
    ]
}

fn assert_two_layers(s: &Scratch) {
    assert!(!s.exists("etc/a"), "whited out");
    assert_eq!(s.read("etc/b").as_deref(), Some(&b"b"[..]));
    assert_eq!(s.read("etc/c").as_deref(), Some(&b"c"[..]));
    assert!(!s.exists("opt/old") && !s.exists("opt/sub"), "hidden by the opaque marker");
    assert_eq!(s.read("opt/new").as_deref(), Some(&b"new"[..]), "the layer's own entry stays");
    assert!(!s.exists("etc/.wh.a") && !s.exists("opt/.wh..wh..opq"));
}

/// A layout whose index nests an index listing this host's image and another arch's.
fn nested_layout(root: PathBuf) -> (Oci, String) {
    let oci = Oci::new(root);
    let ours = oci.image(oci::host_arch(), &two_layers());
    let theirs = oci.image("s390x", &[("application/vnd.oci.image.layer.v1.tar", tar_of(&[E::File("wrong", b"")]))]);
    let digest = ours["digest"].as_str().unwrap().to_string();
    let nested = Oci::index(vec![with_platform(ours, oci::host_arch()), with_platform(theirs, "s390x")]);
    let nested = oci.json_blob("application/vnd.oci.image.index.v1+json", &nested);
    oci.top_index(vec![nested]);
    (oci, digest)
}

#[test]
fn test_unpack_oci_layout_dir_with_nested_index_and_whiteouts() {
    let s = Scratch::new();
    let (oci, digest) = nested_layout(s.path("layout"));
    let info = s.unpack(&oci.root).unwrap();
    let platform = format!("linux/{}", oci::host_arch());
    assert_eq!(
        info.source,
        SourceKind::OciLayout { manifest_digest: digest.clone(), platform: platform.clone(), layers: 2 }
    );
    assert_eq!(info.describe(), format!("oci {platform} {}, 2 layers", &digest[..19]));
    assert_two_layers(&s);
    assert!(!s.exists("wrong"));
}

/// `dir` packed as a plain tar, names relative to it (as `tar -C dir .`).
fn tar_dir(dir: &Path) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    b.append_dir_all(".", dir).unwrap();
    b.into_inner().unwrap()
}

#[test]
fn test_unpack_oci_archive_plain_and_compressed() {
    let s = Scratch::new();
    // Docker-style: the index gives no platform; the config says it.
    let oci = Oci::new(s.path("layout"));
    let desc = oci.image(oci::host_arch(), &two_layers());
    oci.top_index(vec![desc.clone()]);
    let tar = tar_dir(&oci.root);
    for (name, data) in [("image.tar", tar.clone()), ("image.tar.zst", zstd(&tar))] {
        let s = Scratch::new();
        let info = s.unpack(&s.write(name, &data)).unwrap();
        assert!(
            matches!(&info.source, SourceKind::OciLayout { manifest_digest, layers: 2, .. }
            if manifest_digest == desc["digest"].as_str().unwrap()),
            "{name}: {info:?}"
        );
        assert_two_layers(&s);
    }
}

#[test]
fn test_unpack_oci_layers_never_write_through_a_symlink() {
    let s = Scratch::new();
    let oci = Oci::new(s.path("layout"));
    let out = s.outside();
    let l1 = tar_of(&[E::Sym("etc", &out), E::Dir("usr/")]);
    let l2 = tar_of(&[E::File("etc/pwned", b"x"), E::File("etc/.wh.secret", b""), E::File("usr/ok", b"x")]);
    let media = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    let desc = oci.image(oci::host_arch(), &[(media, gzip(&l1)), (media, l2)]);
    oci.top_index(vec![desc]);
    s.unpack(&oci.root).unwrap();
    assert!(s.outside_changed().is_empty(), "{:?}", s.outside_changed());
    assert!(s.path("outside/secret").exists(), "a whiteout does not reach through the link");
    assert_eq!(s.read("usr/ok").as_deref(), Some(&b"x"[..]), "control");
}

#[test]
fn test_unpack_oci_wrong_blob_digest_or_size() {
    for (size_delta, flip) in [(0i64, true), (1, false)] {
        let s = Scratch::new();
        let oci = Oci::new(s.path("layout"));
        let layer = tar_of(&[E::File("f", b"data")]);
        let mut desc = oci.blob("application/vnd.oci.image.layer.v1.tar", &layer);
        let hex = desc["digest"].as_str().unwrap()["sha256:".len()..].to_string();
        let path = oci.root.join("blobs/sha256").join(&hex);
        if flip {
            let mut bytes = layer.clone();
            bytes[600] ^= 0xff;
            fs::write(&path, bytes).unwrap();
        }
        desc["size"] = json!(layer.len() as i64 + size_delta);
        let config = oci.json_blob(
            "application/vnd.oci.image.config.v1+json",
            &json!({"architecture": oci::host_arch(), "os": "linux"}),
        );
        let m = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config, "layers": [desc]});
        let m = oci.json_blob("application/vnd.oci.image.manifest.v1+json", &m);
        oci.top_index(vec![with_platform(m, oci::host_arch())]);
        let err = s.unpack(&oci.root).unwrap_err();
        if flip {
            assert!(matches!(err, ImportError::BlobDigest { .. }), "{err}");
        } else {
            assert!(matches!(err, ImportError::BlobSize { .. }), "{err}");
        }
        assert!(!s.exists("f"), "nothing of a bad layer is used");
    }
}

#[test]
fn test_unpack_oci_platform_none_or_several() {
    let s = Scratch::new();
    let oci = Oci::new(s.path("layout"));
    let a = oci.image("s390x", &[]);
    let b = oci.image("riscv64", &[]);
    oci.top_index(vec![with_platform(a.clone(), "s390x"), b.clone()]);
    let err = s.unpack(&oci.root).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ImportError::NoPlatform { .. }), "{msg}");
    assert!(msg.contains("linux/s390x") && msg.contains("linux/riscv64"), "{msg}");
    let c = oci.image(oci::host_arch(), &[]);
    let d = oci.image(oci::host_arch(), &[("application/vnd.oci.image.layer.v1.tar", tar_of(&[]))]);
    oci.top_index(vec![c, d]);
    let err = s.unpack(&oci.root).unwrap_err();
    assert!(matches!(err, ImportError::AmbiguousPlatform { .. }), "{err}");
}

#[test]
fn test_unpack_oci_blob_symlink_refused() {
    let s = Scratch::new();
    let oci = Oci::new(s.path("layout"));
    let desc = oci.image(oci::host_arch(), &[]);
    oci.top_index(vec![desc.clone()]);
    let hex = &desc["digest"].as_str().unwrap()["sha256:".len()..];
    let blob = oci.root.join("blobs/sha256").join(hex);
    fs::rename(&blob, s.path("outside/manifest")).unwrap();
    std::os::unix::fs::symlink(s.path("outside/manifest"), &blob).unwrap();
    let err = s.unpack(&oci.root).unwrap_err();
    assert!(matches!(err, ImportError::BadLayout { .. }), "{err}");
}

#[test]
fn test_unpack_oversized_tar_metadata_is_refused() {
    // A GNU long name bigger than the guard allows: refused before the tar
    // crate holds it all in memory.
    let name = vec![b'a'; tarball::MAX_TAR_META as usize + 4096];
    let mut b = tar::Builder::new(Vec::new());
    let h = header("././@LongLink", EntryType::GNULongName, name.len() as u64, 0o644, "");
    b.append(&h, &name[..]).unwrap();
    b.append(&header("x", EntryType::Regular, 0, 0o644, ""), &b""[..]).unwrap();
    let s = Scratch::new();
    let err = s.unpack(&s.write("long.tar", &b.into_inner().unwrap())).unwrap_err();
    assert!(matches!(err, ImportError::TarMetadataTooLarge { .. }), "{err}");
    // Control: a long name within bounds lands.
    let mut b = tar::Builder::new(Vec::new());
    let long = format!("{}/f", "d".repeat(200));
    let h = header("././@LongLink", EntryType::GNULongName, long.len() as u64, 0o644, "");
    b.append(&h, long.as_bytes()).unwrap();
    b.append(&header("x", EntryType::Regular, 1, 0o644, ""), &b"y"[..]).unwrap();
    let s = Scratch::new();
    s.unpack(&s.write("ok.tar", &b.into_inner().unwrap())).unwrap();
    assert_eq!(s.read(&long).as_deref(), Some(&b"y"[..]));
}

#[test]
fn test_unpack_file_capabilities_and_pax_owner() {
    // vfs_cap_data v2, effective, permitted CAP_NET_RAW.
    let cap: [u8; 20] = [1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([("SCHILY.xattr.security.capability", &cap[..]), ("uid", &b"4242"[..])]).unwrap();
    b.append(&header("ping", EntryType::Regular, 1, 0o755, ""), &b"p"[..]).unwrap();
    let s = Scratch::new();
    let root = nix::unistd::geteuid().is_root();
    let opts = Options { keep_owners: root, ..Options::default() };
    s.unpack_with(&s.write("caps.tar", &b.into_inner().unwrap()), &opts).unwrap();
    let f = fs::File::open(s.dest().join("ping")).unwrap();
    if root {
        assert_eq!(f.metadata().unwrap().uid(), 4242, "the PAX uid wins over the header's");
        assert_eq!(tree::get_caps(&f).as_deref(), Some(&cap[..]));
    } else {
        assert_eq!(tree::get_caps(&f), None, "only root can keep capabilities");
    }
}
