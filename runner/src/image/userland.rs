//! Userland images: a real root filesystem for the steps (Debian made by
//! mmdebstrap from Debian's archive, or an imported rootfs or OCI image),
//! beside the boot image that still carries the kernel and the agent.
//!
//! Each lives in `<cache>/userlands/<id>/`:
//! - `tree/`: the unpacked rootfs, which the namespace backend binds
//!   read-only as `/`;
//! - `rootfs.erofs`: the same tree as a read-only erofs filesystem, which
//!   the VM attaches as a read-only virtio-blk disk under an overlay;
//! - `userland.json`: what it is and what it was built from;
//! - `used`: touched by each run, for `cordon image prune`.
//!
//! Why erofs and not ext4 (`mke2fs -d`): it is read-only by construction
//! (the guest cannot change the shared file even if it were attached
//! writable), it is made in about 2 s for a 600 MB tree, and with `-T0`
//! and a fixed UUID the same tree gives the same bytes. Uncompressed,
//! because decompression costs guest CPU (slow under TCG) and disk is cheap.
//!
//! Debian images are content-addressed: the id hashes the suite, the
//! mirror and the sorted package set, so a job's `packages` list names a
//! derived image that is built once and then reused. Builds take a per-id
//! lock (a second cordon waits and then finds the image) and land by an
//! atomic rename; downloaded .debs are kept in `<cache>/debs/<suite>` so a
//! derived image downloads only what the base lacked.

use sha2::{Digest, Sha256};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::progress::Progress;
use super::{cache, io, ImageError};

const FORMAT: &str = "cordon-userland-v2";
pub const DEFAULT_SUITE: &str = "bookworm";
/// Debian's archive (the host's apt sources name the same).
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
/// What `debian` has: enough to build C and Python projects (wheels from
/// sdists included) and to fetch over TLS when a policy allows it.
pub const DEFAULT_PACKAGES: &[&str] = &[
    "build-essential",
    "git",
    "python3",
    "python3-dev",
    "python3-pip",
    "python3-venv",
    "python3-setuptools",
    "ca-certificates",
    "curl",
    "pkg-config",
];
/// The most packages one image may add (a typo'd list should not become
/// a thousand-package build).
pub const MAX_PACKAGES: usize = 200;
/// Staging dirs of imports older than this are from imports that died.
const STALE_IMPORT_SECS: u64 = 24 * 3600;
/// A fixed filesystem UUID: the same tree gives the same erofs bytes.
const EROFS_UUID: &str = "c0d0c0d0-0000-4000-8000-00000000c0d0";

/// What a run (or `cordon image build`) asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSpec {
    /// The boot image alone: busybox and the agent in the initramfs.
    Default,
    /// Debian `suite` with the default package set plus `packages`.
    Debian { suite: String, packages: Vec<String> },
    /// An image from `cordon image ls`, by name or id (an import).
    Named(String),
}

impl ImageSpec {
    /// `default`, `debian`, or another image's name or id.
    pub fn from_name(name: &str) -> ImageSpec {
        match name {
            "default" => ImageSpec::Default,
            "debian" => ImageSpec::Debian { suite: DEFAULT_SUITE.into(), packages: vec![] },
            other => ImageSpec::Named(other.to_string()),
        }
    }

    /// Adds packages to a Debian spec (sorted, without duplicates); other
    /// images cannot take packages.
    pub fn with_packages(self, extra: &[String]) -> Result<ImageSpec, String> {
        if extra.is_empty() {
            return Ok(self);
        }
        for p in extra {
            check_package(p)?;
        }
        match self {
            ImageSpec::Debian { suite, mut packages } => {
                packages.extend(extra.iter().cloned());
                packages.sort();
                packages.dedup();
                packages.retain(|p| !DEFAULT_PACKAGES.contains(&p.as_str()));
                Ok(ImageSpec::Debian { suite, packages })
            }
            ImageSpec::Default => {
                Err("packages need a Debian image: add `--image debian` (or `image = \"debian\"`)".into())
            }
            ImageSpec::Named(n) => Err(format!(
                "packages can only be added to a Debian image, not to {n:?} (import an image that has them)"
            )),
        }
    }

    /// The name the image gets in `cordon image ls`.
    pub fn display_name(&self) -> String {
        match self {
            ImageSpec::Default => "default".into(),
            ImageSpec::Named(n) => n.clone(),
            ImageSpec::Debian { suite, packages } => {
                let mut n = if suite == DEFAULT_SUITE { "debian".to_string() } else { format!("debian-{suite}") };
                if !packages.is_empty() {
                    n.push('+');
                    n.push_str(&packages.join(","));
                }
                n
            }
        }
    }

    /// The command that builds this image (for `--no-build`'s error).
    pub fn build_command(&self) -> String {
        match self {
            ImageSpec::Debian { suite, packages } => {
                let mut c = "cordon image build debian".to_string();
                if suite != DEFAULT_SUITE {
                    c.push_str(&format!(" --suite {suite}"));
                }
                if !packages.is_empty() {
                    c.push_str(&format!(" --packages {}", packages.join(",")));
                }
                c
            }
            ImageSpec::Named(_) => "cordon image import PATH --name NAME".into(),
            ImageSpec::Default => "cordon image build".into(),
        }
    }
}

/// A Debian package name as the archive spells them; nothing that a tool
/// could read as an option or a list.
pub fn check_package(p: &str) -> Result<(), String> {
    let ok = p.len() >= 2
        && p.len() <= 100
        && p.as_bytes()[0].is_ascii_alphanumeric()
        && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!("{p:?} is not a Debian package name (lowercase letters, digits, + - .)"))
    }
}

pub fn check_suite(s: &str) -> Result<(), String> {
    let ok = s.len() <= 32
        && s.as_bytes().first().is_some_and(u8::is_ascii_lowercase)
        && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!("{s:?} is not a Debian suite name (e.g. bookworm, trixie)"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    /// mmdebstrap of `suite` from `mirror` with `packages` (the whole set).
    Debian { suite: String, mirror: String, packages: Vec<String> },
    /// `cordon image import` of `path`; `what` says what it held.
    Import { path: String, what: String },
}

impl Source {
    pub fn describe(&self) -> String {
        match self {
            Source::Debian { suite, packages, .. } => {
                let extra: Vec<&str> =
                    packages.iter().map(String::as_str).filter(|p| !DEFAULT_PACKAGES.contains(p)).collect();
                if extra.is_empty() {
                    format!("mmdebstrap {suite} ({} packages)", packages.len())
                } else {
                    format!("mmdebstrap {suite} + {}", extra.join(","))
                }
            }
            Source::Import { path, what } => format!("import {what} from {path}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UserlandMeta {
    pub id: String,
    pub name: String,
    pub source: Source,
    /// The filesystem of `rootfs.erofs` (always "erofs" today).
    pub fs: String,
    pub created_unix: u64,
}

#[derive(Debug, Clone)]
pub struct Userland {
    pub meta: UserlandMeta,
    pub dir: PathBuf,
}

impl Userland {
    pub fn erofs(&self) -> PathBuf {
        self.dir.join("rootfs.erofs")
    }

    pub fn tree(&self) -> PathBuf {
        self.dir.join("tree")
    }

    /// Bytes on disk (the erofs file; the tree is about the same again).
    pub fn size(&self) -> u64 {
        std::fs::metadata(self.erofs()).map(|m| m.len()).unwrap_or(0)
    }

    /// Seconds since the last run used it (or since it was made).
    pub fn idle_secs(&self) -> u64 {
        let t = std::fs::metadata(self.dir.join("used"))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
            .unwrap_or(self.meta.created_unix);
        now().saturating_sub(t)
    }

    fn touch_used(&self) {
        let _ = std::fs::write(self.dir.join("used"), b"");
    }

    /// Marks the image in use until the returned guard drops (a shared
    /// flock): `image rm`, `prune` and a re-import of its name leave an
    /// image in use alone.
    pub fn hold(&self) -> Result<InUse, ImageError> {
        let p = self.dir.join("lock");
        let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&p).map_err(io(&p))?;
        // SAFETY: flock on an fd this function owns.
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_SH) } != 0 {
            return Err(io(&p)(std::io::Error::last_os_error()));
        }
        // Removed between resolving and holding: say so rather than run on
        // a tree that is going away.
        if load(&self.dir).is_err() {
            return Err(ImageError::NotFound(self.meta.name.clone()));
        }
        Ok(InUse(f))
    }

    /// Whether a run holds it (an exclusive try-lock fails).
    fn in_use(&self) -> bool {
        let Ok(f) = std::fs::OpenOptions::new().write(true).open(self.dir.join("lock")) else { return false };
        // SAFETY: flock on an fd this function owns; released when `f` drops.
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX | libc::LOCK_NB) != 0 }
    }

    /// Takes it out of the cache: renamed out of sight first (a removal cut
    /// short never leaves a listed, half-deleted image), then deleted.
    fn discard(&self) -> Result<(), ImageError> {
        let trash = self.dir.with_file_name(format!(".trash-{}", self.meta.id));
        let _ = std::fs::remove_dir_all(&trash);
        std::fs::rename(&self.dir, &trash).map_err(io(&self.dir))?;
        std::fs::remove_dir_all(&trash).map_err(io(&trash))
    }
}

/// A run's hold on an image (see [`Userland::hold`]).
#[derive(Debug)]
pub struct InUse(#[allow(dead_code)] std::fs::File);

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs()
}

pub fn userlands_dir() -> PathBuf {
    super::cache_dir().join("userlands")
}

/// `userlands/`, made private (0700): image trees hold setuid-root files
/// and world-writable directories that no other local user may reach. A
/// cache directory another user owns or may write is refused: root writing
/// there could be led through their symlinks.
fn private_userlands_dir() -> Result<PathBuf, ImageError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let cache = super::cache_dir();
    std::fs::create_dir_all(&cache).map_err(io(&cache))?;
    let me = nix::unistd::geteuid().as_raw();
    for dir in [cache.parent().unwrap_or(&cache), &cache] {
        let m = std::fs::metadata(dir).map_err(io(dir))?;
        let sticky_shared = m.mode() & 0o1000 != 0 && dir != cache;
        if (m.uid() != me && m.uid() != 0) || (m.mode() & 0o022 != 0 && !sticky_shared) {
            return Err(ImageError::UnsafeCache(dir.to_path_buf()));
        }
    }
    let root = userlands_dir();
    match std::fs::create_dir(&root) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io(&root)(e)),
    }
    let m = std::fs::symlink_metadata(&root).map_err(io(&root))?;
    if !m.is_dir() || m.uid() != me {
        return Err(ImageError::UnsafeCache(root));
    }
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700)).map_err(io(&root))?;
    Ok(root)
}

fn load(dir: &Path) -> Result<Userland, ImageError> {
    let p = dir.join("userland.json");
    let b = std::fs::read(&p).map_err(io(&p))?;
    let meta = serde_json::from_slice(&b).map_err(|source| ImageError::BadMeta { path: p.clone(), source })?;
    Ok(Userland { meta, dir: dir.to_path_buf() })
}

/// Every complete userland image, newest first.
pub fn list() -> Vec<Userland> {
    let Ok(rd) = std::fs::read_dir(userlands_dir()) else { return vec![] };
    let mut out: Vec<Userland> = rd
        .flatten()
        .filter_map(|e| load(&e.path()).ok())
        .filter(|u| u.dir.file_name().is_some_and(|n| *n == *u.meta.id))
        .collect();
    out.sort_by_key(|u| std::cmp::Reverse(u.meta.created_unix));
    out
}

/// The Debian image id: the suite, the mirror and the package set.
pub fn debian_id(suite: &str, mirror: &str, packages: &[String]) -> String {
    let mut h = Sha256::new();
    for part in [FORMAT, "debian", super::debian_arch(), suite, mirror] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    for p in packages {
        h.update(p.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())[..16].to_string()
}

/// The full package list of a Debian spec: the default set plus extras, sorted.
pub fn debian_packages(extra: &[String]) -> Vec<String> {
    let mut all: Vec<String> = DEFAULT_PACKAGES.iter().map(|s| s.to_string()).chain(extra.iter().cloned()).collect();
    all.sort();
    all.dedup();
    all
}

/// The userland for `spec`: `None` for the default image; a cached image;
/// or, unless `no_build` says why not, one built now (progress shown).
pub fn resolve(spec: &ImageSpec, no_build: Option<&str>, progress: &Progress) -> Result<Option<Userland>, ImageError> {
    match spec {
        ImageSpec::Default => Ok(None),
        ImageSpec::Named(n) => {
            let found = list().into_iter().find(|u| u.meta.name == *n || u.meta.id == *n);
            let u = found.ok_or_else(|| ImageError::NotFound(n.clone()))?;
            u.touch_used();
            Ok(Some(u))
        }
        ImageSpec::Debian { suite, packages } => {
            let all = debian_packages(packages);
            let id = debian_id(suite, DEFAULT_MIRROR, &all);
            let dir = userlands_dir().join(&id);
            if let Ok(u) = load(&dir) {
                u.touch_used();
                return Ok(Some(u));
            }
            if let Some(why) = no_build {
                return Err(ImageError::NotBuilt {
                    name: spec.display_name(),
                    why: why.to_string(),
                    command: spec.build_command(),
                });
            }
            if packages.len() > MAX_PACKAGES {
                return Err(ImageError::BadSpec(format!("at most {MAX_PACKAGES} extra packages per image")));
            }
            let u = build_debian(suite, &all, &spec.display_name(), progress)?;
            u.touch_used();
            Ok(Some(u))
        }
    }
}

/// Builds a Debian image again from the archive as it is today (security
/// updates): the old one is taken out first, unless a run uses it.
pub fn refresh(spec: &ImageSpec, progress: &Progress) -> Result<Option<Userland>, ImageError> {
    if let ImageSpec::Debian { suite, packages } = spec {
        let id = debian_id(suite, DEFAULT_MIRROR, &debian_packages(packages));
        if let Ok(old) = load(&userlands_dir().join(&id)) {
            let _lock = cache::CacheLock::acquire(&super::cache_dir(), &|m| progress.stage(m))?;
            if old.in_use() {
                return Err(ImageError::InUse(format!("{} ({})", old.meta.name, old.meta.id)));
            }
            progress.stage(&format!("removing {} ({}) to build it again", old.meta.name, old.meta.id));
            old.discard()?;
        }
    }
    resolve(spec, None, progress)
}

/// Builds a Debian image (or finds it built by another cordon meanwhile).
pub fn build_debian(suite: &str, packages: &[String], name: &str, progress: &Progress) -> Result<Userland, ImageError> {
    check_suite(suite).map_err(ImageError::BadSpec)?;
    for p in packages {
        check_package(p).map_err(ImageError::BadSpec)?;
    }
    if !nix::unistd::geteuid().is_root() {
        return Err(ImageError::NeedsRoot);
    }
    for tool in ["mmdebstrap", "mkfs.erofs"] {
        if which(tool).is_none() {
            return Err(ImageError::Tool {
                cmd: tool.into(),
                detail: "not installed: run scripts/setup.sh (apt-get install mmdebstrap erofs-utils)".into(),
            });
        }
    }
    let root = private_userlands_dir()?;
    let id = debian_id(suite, DEFAULT_MIRROR, packages);
    let dir = root.join(&id);
    // One Debian build at a time: they share the .deb cache, and a second
    // build of the same image waits here and then finds it done.
    let _lock = cache::CacheLock::acquire_at(&super::cache_dir().join("debian.lock"), &|m| progress.stage(m))?;
    if let Ok(u) = load(&dir) {
        return Ok(u);
    }
    // Holding the lock, no build is under way: a staging dir left here is
    // from a build that died.
    remove_stale(&root, ".build-", progress);
    let debs = super::cache_dir().join("debs").join(format!("{suite}-{}", super::debian_arch()));
    std::fs::create_dir_all(&debs).map_err(io(&debs))?;
    std::fs::create_dir_all(&root).map_err(io(&root))?;
    let tmp = tempfile::Builder::new().prefix(".build-").tempdir_in(&root).map_err(io(&root))?;
    let tree = tmp.path().join("tree");
    let t0 = std::time::Instant::now();
    progress.stage(&format!("building image {name} ({id}): mmdebstrap {suite}, {} packages", packages.len()));
    let mut cmd = Command::new("mmdebstrap");
    // unshare mode as root: the chroot's mounts live in a private mount
    // namespace and the package scripts in a private PID namespace, so a
    // build that dies (Ctrl-C, a SIGKILLed cordon) leaves no mount behind
    // on the host and no process running.
    cmd.args(["--mode=unshare", "--variant=apt", "--format=directory"])
        .arg(format!("--include={}", packages.join(",")))
        .arg(format!("--architectures={}", super::debian_arch()))
        // Keep the downloaded .debs for the next build (derived images).
        .arg("--skip=download/empty")
        .arg("--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives/")
        .arg(format!("--setup-hook=sync-in {} /var/cache/apt/archives/", debs.display()))
        .arg(format!("--customize-hook=sync-out /var/cache/apt/archives {}", debs.display()))
        .arg("--customize-hook=rm -f \"$1\"/var/cache/apt/archives/*.deb")
        .arg(suite)
        .arg(&tree)
        .arg(DEFAULT_MIRROR);
    crate::procs::die_with_parent(&mut cmd);
    run_tool(cmd, "mmdebstrap", progress)?;
    // apt reads a name it does not know as a pattern: make sure each asked
    // for package is what got installed, by that exact name.
    let status = std::fs::read_to_string(tree.join("var/lib/dpkg/status")).unwrap_or_default();
    let installed: std::collections::HashSet<&str> = status
        .split("\n\n")
        .filter(|st| st.lines().any(|l| l.starts_with("Status: install ok installed")))
        .filter_map(|st| st.lines().find_map(|l| l.strip_prefix("Package: ")))
        .collect();
    let missing: Vec<&str> = packages.iter().map(String::as_str).filter(|p| !installed.contains(p)).collect();
    if !missing.is_empty() {
        return Err(ImageError::BadSpec(format!(
            "no package named exactly {} was installed (apt may have read the name as a pattern)",
            missing.join(", ")
        )));
    }
    finish_tree(&tree)?;
    progress.stage(&format!("packing {name} into erofs"));
    make_erofs(&tree, &tmp.path().join("rootfs.erofs"), false)?;
    let meta = UserlandMeta {
        id: id.clone(),
        name: name.to_string(),
        source: Source::Debian { suite: suite.into(), mirror: DEFAULT_MIRROR.into(), packages: packages.to_vec() },
        fs: "erofs".into(),
        created_unix: now(),
    };
    let u = install(tmp, &dir, &meta)?;
    progress.stage(&format!("built image {name} in {:.1}s", t0.elapsed().as_secs_f64()));
    Ok(u)
}

/// Removes the staging dirs `prefix`* under `root` of builds that died,
/// unless something is mounted below one (then it is left, and said).
fn remove_stale(root: &Path, prefix: &str, progress: &Progress) {
    let Ok(rd) = std::fs::read_dir(root) else { return };
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for e in rd.flatten() {
        if !e.file_name().to_string_lossy().starts_with(prefix) {
            continue;
        }
        let p = e.path();
        let below = format!("{}/", p.display());
        if mounts.lines().any(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(&below))) {
            progress.stage(&format!("leaving {}: something is mounted below it", p.display()));
            continue;
        }
        let _ = std::fs::remove_dir_all(&p);
    }
}

/// Turns an unpacked tree (in `tmp`/tree) into a cached image named `name`,
/// replacing an earlier image of that name.
pub fn register_import(
    tmp: tempfile::TempDir,
    name: &str,
    source: Source,
    progress: &Progress,
) -> Result<Userland, ImageError> {
    let tree = tmp.path().join("tree");
    finish_tree(&tree)?;
    progress.stage(&format!("packing {name} into erofs"));
    // A normal user could not keep the image's owners: make them root's,
    // as they were in the image.
    make_erofs(&tree, &tmp.path().join("rootfs.erofs"), !nix::unistd::geteuid().is_root())?;
    let mut h = Sha256::new();
    h.update(FORMAT.as_bytes());
    h.update(name.as_bytes());
    h.update(now().to_le_bytes());
    h.update(tmp.path().as_os_str().as_encoded_bytes());
    let id = hex::encode(h.finalize())[..16].to_string();
    let meta = UserlandMeta { id: id.clone(), name: name.into(), source, fs: "erofs".into(), created_unix: now() };
    let root = private_userlands_dir()?;
    let _lock = cache::CacheLock::acquire(&super::cache_dir(), &|m| progress.stage(m))?;
    let older: Vec<Userland> = list().into_iter().filter(|u| u.meta.name == name).collect();
    if let Some(busy) = older.iter().find(|o| o.in_use()) {
        return Err(ImageError::InUse(format!("{name} ({})", busy.meta.id)));
    }
    let u = install(tmp, &root.join(&id), &meta)?;
    for o in older {
        progress.stage(&format!("replacing the earlier image {name} ({})", o.meta.id));
        let _ = o.discard();
    }
    Ok(u)
}

/// A fresh staging directory for an import (its `tree/` is created empty).
pub fn staging() -> Result<tempfile::TempDir, ImageError> {
    let root = private_userlands_dir()?;
    // Imports that died (SIGKILL) left their staging behind.
    if let Ok(rd) = std::fs::read_dir(&root) {
        for e in rd.flatten().filter(|e| e.file_name().to_string_lossy().starts_with(".import-")) {
            let age = e.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
            if age.is_some_and(|a| a.as_secs() > STALE_IMPORT_SECS) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let tmp = tempfile::Builder::new().prefix(".import-").tempdir_in(&root).map_err(io(&root))?;
    std::fs::create_dir(tmp.path().join("tree")).map_err(io(tmp.path()))?;
    Ok(tmp)
}

fn install(tmp: tempfile::TempDir, dir: &Path, meta: &UserlandMeta) -> Result<Userland, ImageError> {
    let json = serde_json::to_vec_pretty(meta).expect("userland meta serializes");
    std::fs::write(tmp.path().join("userland.json"), json).map_err(io(tmp.path()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).map_err(io(tmp.path()))?;
    // A directory without a valid marker is a removal cut short: it
    // would block the rename forever.
    if dir.exists() && load(dir).is_err() {
        let trash = dir.with_file_name(format!(".trash-{}", meta.id));
        let _ = std::fs::remove_dir_all(&trash);
        let _ = std::fs::rename(dir, &trash);
        let _ = std::fs::remove_dir_all(&trash);
    }
    let staged = tmp.keep();
    if let Err(e) = std::fs::rename(&staged, dir) {
        let _ = std::fs::remove_dir_all(&staged);
        if load(dir).is_err() {
            return Err(io(dir)(e));
        }
    }
    load(dir)
}

/// What every userland tree needs for both backends: the mount points the
/// sandbox binds over (never followed if the image made them links), and
/// cordon's own /etc/hostname, /etc/hosts and an empty /etc/resolv.conf
/// (mmdebstrap leaves the build host's there).
pub fn finish_tree(tree: &Path) -> Result<(), ImageError> {
    use std::os::unix::fs::PermissionsExt;
    let plain_dir = |p: &Path, mode: u32| -> Result<(), ImageError> {
        match std::fs::symlink_metadata(p) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                std::fs::remove_file(p).map_err(io(p))?;
                std::fs::create_dir(p).map_err(io(p))?;
            }
            Err(_) => std::fs::create_dir(p).map_err(io(p))?,
        }
        if mode != 0 {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).map_err(io(p))?;
        }
        Ok(())
    };
    let plain_file = |p: &Path, data: &[u8]| -> Result<(), ImageError> {
        if let Ok(m) = std::fs::symlink_metadata(p) {
            if m.is_dir() {
                std::fs::remove_dir_all(p).map_err(io(p))?;
            } else {
                std::fs::remove_file(p).map_err(io(p))?;
            }
        }
        std::fs::write(p, data).map_err(io(p))?;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).map_err(io(p))
    };
    std::fs::set_permissions(tree, std::fs::Permissions::from_mode(0o755)).map_err(io(tree))?;
    for (d, mode) in [
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
        ("run", 0o755),
        ("workspace", 0o755),
        (".cordon-spool", 0o755),
    ] {
        plain_dir(&tree.join(d), mode)?;
    }
    plain_dir(&tree.join("tmp"), 0o1777)?;
    // Both backends mount their own /dev: the image's nodes (mmdebstrap
    // leaves host device nodes there) are of no use and only a risk.
    if let Ok(rd) = std::fs::read_dir(tree.join("dev")) {
        for e in rd.flatten() {
            let p = e.path();
            let r = if e.file_type().is_ok_and(|t| t.is_dir()) {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            r.map_err(io(&p))?;
        }
    }
    plain_dir(&tree.join("etc"), 0)?;
    plain_dir(&tree.join("root"), 0)?;
    plain_file(&tree.join("etc/hostname"), b"cordon\n")?;
    plain_file(&tree.join("etc/hosts"), b"127.0.0.1 localhost cordon\n::1 localhost ip6-localhost ip6-loopback\n")?;
    plain_file(&tree.join("etc/resolv.conf"), b"")?;
    // The namespace backend binds the agent here.
    plain_file(&tree.join(".cordon-agent"), b"")?;
    Ok(())
}

/// A sparse ext4 scratch disk of `bytes` for one run (the overlay's upper
/// layer, the workspace, /tmp): no journal (nothing outlives the run) and
/// lazy inode tables, which the guest mounts with `noinit_itable` so
/// nothing zeroes them in the background.
pub fn make_scratch(path: &Path, bytes: u64) -> Result<(), ImageError> {
    let f = std::fs::OpenOptions::new().write(true).create_new(true).open(path).map_err(io(path))?;
    f.set_len(bytes).map_err(io(path))?;
    drop(f);
    let mut cmd = Command::new("mke2fs");
    cmd.args(["-q", "-F", "-t", "ext4", "-O", "^has_journal", "-m", "0", "-E", "lazy_itable_init=1,nodiscard"])
        .arg(path);
    super::run(&mut cmd).map(drop)
}

fn make_erofs(tree: &Path, out: &Path, all_root: bool) -> Result<(), ImageError> {
    let mut cmd = Command::new("mkfs.erofs");
    cmd.arg("--quiet").arg("-T0").arg(format!("-U{EROFS_UUID}"));
    if all_root {
        cmd.arg("--all-root");
    }
    cmd.arg(out).arg(tree);
    super::run(&mut cmd).map(drop)
}

/// Runs a build tool with its stderr on the spinner; on failure the error
/// carries its last lines.
fn run_tool(mut cmd: Command, name: &str, progress: &Progress) -> Result<(), ImageError> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| ImageError::Tool { cmd: name.into(), detail: e.to_string() })?;
    let mut tail: std::collections::VecDeque<String> = Default::default();
    if let Some(err) = child.stderr.take() {
        for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            progress.detail(&line);
            if tail.len() == 20 {
                tail.pop_front();
            }
            tail.push_back(line);
        }
    }
    let st = child.wait().map_err(|e| ImageError::Tool { cmd: name.into(), detail: e.to_string() })?;
    if !st.success() {
        let lines: Vec<String> = tail.into_iter().collect();
        return Err(ImageError::Tool { cmd: name.into(), detail: format!("{st}:\n{}", lines.join("\n")) });
    }
    Ok(())
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path).chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")]).find_map(|d| {
        let p = d.join(tool);
        p.is_file().then_some(p)
    })
}

/// A name for an imported image: letters, digits, `.`, `_`, `-`; not one
/// of the names cordon builds itself.
pub fn check_image_name(n: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&n.len())
        && n.as_bytes()[0].is_ascii_alphanumeric()
        && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !ok {
        return Err(format!("{n:?} is not an image name (1-64 of letters, digits, . _ -; give one with --name)"));
    }
    if n == "default" || n.starts_with("debian") {
        return Err(format!("{n:?} is reserved for the images cordon builds; choose another --name"));
    }
    Ok(())
}

/// Removes every userland image whose name or id is `which`; returns how many.
pub fn remove(which: &str) -> Result<usize, ImageError> {
    let _lock = cache::CacheLock::acquire(&super::cache_dir(), &|_| {})?;
    let mut n = 0;
    for u in list() {
        if u.meta.id == which || u.meta.name == which {
            if u.in_use() {
                return Err(ImageError::InUse(format!("{} ({})", u.meta.name, u.meta.id)));
            }
            u.discard()?;
            n += 1;
        }
    }
    Ok(n)
}

/// Removes Debian-derived images (those with packages beyond the default
/// set) that no run has used for `idle_secs`; returns what was removed.
pub fn prune(idle_secs: u64, all_derived_too: bool) -> Result<Vec<Userland>, ImageError> {
    let _lock = cache::CacheLock::acquire(&super::cache_dir(), &|_| {})?;
    let mut gone = vec![];
    for u in list() {
        let derived = match &u.meta.source {
            Source::Debian { packages, .. } => {
                all_derived_too || packages.iter().any(|p| !DEFAULT_PACKAGES.contains(&p.as_str()))
            }
            Source::Import { .. } => false,
        };
        if derived && u.idle_secs() >= idle_secs && !u.in_use() {
            u.discard()?;
            gone.push(u);
        }
    }
    Ok(gone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_package_names_table() {
        for ok in ["libssl-dev", "g++", "python3.11", "0ad"] {
            assert!(check_package(ok).is_ok(), "{ok}");
        }
        for bad in ["-oAPT::x", "a,b", "Foo", "x", "a b", "a=1.0", "../x", ""] {
            assert!(check_package(bad).is_err(), "{bad}");
        }
        assert!(check_suite("bookworm").is_ok());
        assert!(check_suite("--help").is_err());
        assert!(check_suite("bookworm/updates").is_err());
        assert!(check_suite("").is_err());
    }

    #[test]
    fn test_import_names_table() {
        for ok in ["alpine", "my-img_1.0", "A"] {
            assert!(check_image_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".x", "a/b", "default", "debian", "debian-x", "a b", &"x".repeat(65)] {
            assert!(check_image_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn test_spec_packages_and_names() {
        let d = ImageSpec::from_name("debian");
        assert_eq!(d.display_name(), "debian");
        let p = d.clone().with_packages(&["zlib1g-dev".into(), "libssl-dev".into(), "zlib1g-dev".into()]).unwrap();
        assert_eq!(p.display_name(), "debian+libssl-dev,zlib1g-dev");
        assert_eq!(p.build_command(), "cordon image build debian --packages libssl-dev,zlib1g-dev");
        // A package the default set has adds nothing: the same image.
        assert_eq!(d.clone().with_packages(&["git".into()]).unwrap(), d);
        assert!(ImageSpec::Default.with_packages(&["git".into()]).is_err());
        assert!(ImageSpec::from_name("mine").with_packages(&["git".into()]).is_err());
        assert!(d.with_packages(&["-oDebug".into()]).is_err());
    }

    #[test]
    fn test_debian_id_depends_on_the_package_set_not_its_order() {
        let a = debian_packages(&["b".into(), "a".into()]);
        let b = debian_packages(&["a".into(), "b".into(), "a".into()]);
        assert_eq!(debian_id("bookworm", DEFAULT_MIRROR, &a), debian_id("bookworm", DEFAULT_MIRROR, &b));
        let base = debian_packages(&[]);
        assert_ne!(debian_id("bookworm", DEFAULT_MIRROR, &a), debian_id("bookworm", DEFAULT_MIRROR, &base));
        assert_ne!(debian_id("bookworm", DEFAULT_MIRROR, &base), debian_id("trixie", DEFAULT_MIRROR, &base));
    }

    #[test]
    fn test_finish_tree_replaces_planted_links_without_following_them() {
        let outside = tempfile::tempdir().unwrap();
        let t = tempfile::tempdir().unwrap();
        let tree = t.path();
        std::fs::create_dir(tree.join("etc")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("victim"), tree.join("etc/resolv.conf")).unwrap();
        std::os::unix::fs::symlink(outside.path(), tree.join("tmp")).unwrap();
        std::os::unix::fs::symlink(outside.path(), tree.join("workspace")).unwrap();
        finish_tree(tree).unwrap();
        assert!(!outside.path().join("victim").exists(), "wrote through a planted link");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        assert!(std::fs::symlink_metadata(tree.join("tmp")).unwrap().is_dir());
        assert!(std::fs::symlink_metadata(tree.join("workspace")).unwrap().is_dir());
        assert_eq!(std::fs::read(tree.join("etc/resolv.conf")).unwrap(), b"");
        assert_eq!(std::fs::read(tree.join("etc/hostname")).unwrap(), b"cordon\n");
        // A planted /etc link is replaced by a real directory too.
        let t2 = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), t2.path().join("etc")).unwrap();
        finish_tree(t2.path()).unwrap();
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }
}
