//! Guest images: Debian's cloud kernel plus an initramfs cordon writes itself
//! (static agent as /init, static busybox, exactly the modules needed, in load
//! order). Cached under `$XDG_CACHE_HOME/cordon`, content-addressed: the image
//! id hashes the kernel package, the agent, busybox and the module list.
//! Building and pruning happen under the cache lock (see cache.rs).

pub mod cache;
pub mod cpio;
pub mod import;
pub mod modinfo;
pub mod progress;
pub mod rootfs;
pub mod userland;
pub use rootfs::rootfs;

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Bumped when the initramfs layout changes, so old cache entries are not reused.
const FORMAT: &str = "cordon-image-v3";

/// Modules the guest needs; their dependencies are added automatically.
/// `qemu_fw_cfg` carries the agent's token (kept out of QEMU's argv and the
/// kernel command line).
pub const WANTED_MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_pci",
    "virtio_console",
    "vmw_vsock_virtio_transport",
    "virtio_net",
    "virtio_rng",
    "qemu_fw_cfg",
];

/// Modules for a userland disk (virtio-blk, the read-only erofs, the
/// overlay; ext4 for the scratch disk), loaded only on runs that have one
/// (`/etc/cordon/modules.root`), so the default image's boot pays nothing.
pub const ROOT_MODULES: &[&str] = &["virtio_blk", "erofs", "overlay", "ext4"];

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("running {cmd} failed: {detail}")]
    Tool { cmd: String, detail: String },
    #[error("{path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the kernel package has no {0}")]
    BadKernelPackage(String),
    #[error("{0} is not a static binary: install busybox-static (scripts/setup.sh)")]
    NotStatic(PathBuf),
    #[error(
        "the guest agent {0} is dynamically linked: the VM needs the static build, which \
         scripts/build-agent.sh writes to target/agent/{triple}/release/cordon-agent \
         (or point CORDON_AGENT at a static cordon-agent)",
        triple = crate::AGENT_TRIPLE
    )]
    AgentNotStatic(PathBuf),
    #[error("locking the image cache")]
    Lock(#[from] cache::LockError),
    #[error("resolving kernel modules")]
    Modules(#[from] modinfo::ModError),
    #[error("no image named or with id {0:?}; `cordon image ls` lists them")]
    NotFound(String),
    #[error("image {name} is not built and {why}: build it with `{command}`")]
    NotBuilt { name: String, why: String, command: String },
    #[error("{0}")]
    BadSpec(String),
    #[error("image {0} is in use by a run; try again when it ends")]
    InUse(String),
    #[error(
        "refusing the image cache at {0}: another user owns it or may write to it (set XDG_CACHE_HOME \
         to a directory of your own)"
    )]
    UnsafeCache(PathBuf),
    #[error(
        "building a Debian image needs root (mmdebstrap runs the packages' scripts as root in a chroot): \
         run `cordon image build debian` as root (each user has their own image cache), or import \
         a rootfs with `cordon image import`"
    )]
    NeedsRoot,
    #[error(
        "cordon's kernel is not built: run `kernel-config/build.sh {arch}` from cordon's source tree \
         (or `cordon image build --kernel cordon` there), or pass --kernel debian",
        arch = std::env::consts::ARCH
    )]
    NoCordonKernel,
    #[error("image metadata {path} is unreadable")]
    BadMeta {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

fn io(path: impl AsRef<Path>) -> impl FnOnce(std::io::Error) -> ImageError {
    let path = path.as_ref().display().to_string();
    move |source| ImageError::Io { path, source }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ImageMeta {
    pub id: String,
    pub name: String,
    pub kernel_package: String,
    pub kernel_release: String,
    pub modules: Vec<String>,
    /// Loaded only when the run has a userland disk.
    #[serde(default)]
    pub root_modules: Vec<String>,
    /// The kernel's CONFIG_HZ (for `lpj=` under TCG), when its config says.
    #[serde(default)]
    pub kernel_hz: Option<u64>,
    pub created_unix: u64,
}

#[derive(Debug, Clone)]
pub struct Image {
    pub meta: ImageMeta,
    pub dir: PathBuf,
}

impl Image {
    pub fn kernel(&self) -> PathBuf {
        self.dir.join("vmlinuz")
    }

    pub fn initramfs(&self) -> PathBuf {
        self.dir.join("initramfs.cpio")
    }
}

/// `$XDG_CACHE_HOME/cordon`, else `~/.cache/cordon`.
pub fn cache_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("cordon");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".cache").join("cordon")
}

pub fn debian_arch() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "amd64",
    }
}

fn run(cmd: &mut Command) -> Result<String, ImageError> {
    let name = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| ImageError::Tool { cmd: name.clone(), detail: e.to_string() })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let hint = if name.contains("apt-get") { " (is the package list current? try `apt-get update`)" } else { "" };
        return Err(ImageError::Tool { cmd: name, detail: format!("{}{hint}", err.trim()) });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Which guest kernel a VM boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KernelChoice {
    /// cordon's own kernel when one is built (kernel-config/build.sh), else Debian's.
    Auto,
    /// Debian's linux-image-cloud kernel, with its modules in the initramfs.
    Debian,
    /// cordon's minimal kernel (everything built in), built by kernel-config/build.sh.
    Cordon,
}

/// A kernel to boot: Debian's unpacked package (modules under `root`), or
/// cordon's own (no modules).
struct Kernel {
    /// What identifies it: the .deb's name, or cordon's cache entry and hash.
    package: String,
    /// Its build configuration (CONFIG_HZ is read from it).
    config: PathBuf,
    release: String,
    /// The unpacked package (Debian's), whose lib/modules the initramfs draws on.
    root: Option<PathBuf>,
    vmlinuz: PathBuf,
}

/// The newest complete build of cordon's kernel for this architecture in
/// `<cache>/cordon-kernels/` (kernel-config/build.sh writes them).
fn cordon_kernel(cache: &Path) -> Option<Kernel> {
    let dir = cache.join("cordon-kernels");
    let arch = std::env::consts::ARCH;
    let file = if arch == "aarch64" { "Image" } else { "bzImage" };
    let mut found: Vec<(std::time::SystemTime, PathBuf, String)> = std::fs::read_dir(&dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let complete = std::fs::read_to_string(e.path().join("complete")).ok()?;
            complete.lines().any(|l| l == format!("arch={arch}")).then_some(())?;
            let when = std::fs::metadata(e.path().join("complete")).and_then(|m| m.modified()).ok()?;
            Some((when, e.path(), complete))
        })
        .filter(|(_, p, _)| p.join(file).is_file())
        .collect();
    found.sort();
    let (_, path, complete) = found.pop()?;
    let sha = complete.lines().find_map(|l| l.strip_prefix("sha256=")).unwrap_or_default().to_string();
    // "# Linux/x86_64 6.1.192 Kernel Configuration"; build.sh sets LOCALVERSION=-cordon.
    let config = std::fs::read_to_string(path.join("config")).unwrap_or_default();
    let version = config.lines().find_map(|l| l.strip_prefix("# Linux/")?.split_whitespace().nth(1)).unwrap_or("?");
    Some(Kernel {
        package: format!("cordon-kernel {} {}", path.file_name()?.to_string_lossy(), sha),
        release: format!("{version}-cordon"),
        config: path.join("config"),
        root: None,
        vmlinuz: path.join(file),
    })
}

/// The kernel `choice` names (Debian's is downloaded on first use).
fn pick_kernel(cache: &Path, choice: KernelChoice, refresh: bool, log: &dyn Fn(&str)) -> Result<Kernel, ImageError> {
    match choice {
        KernelChoice::Cordon => cordon_kernel(cache).ok_or(ImageError::NoCordonKernel),
        KernelChoice::Auto => match cordon_kernel(cache) {
            Some(k) => Ok(k),
            None => fetch_kernel(cache, refresh, log),
        },
        KernelChoice::Debian => fetch_kernel(cache, refresh, log),
    }
}

/// Downloads and unpacks `linux-image-cloud-<arch>`'s current kernel once;
/// later calls reuse it unless `refresh`.
fn fetch_kernel(cache: &Path, refresh: bool, log: &dyn Fn(&str)) -> Result<Kernel, ImageError> {
    let kernels = cache.join("kernels");
    std::fs::create_dir_all(&kernels).map_err(io(&kernels))?;
    if !refresh {
        let done: Vec<PathBuf> = std::fs::read_dir(&kernels)
            .map_err(io(&kernels))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join("complete").exists())
            .collect();
        if let Some(dir) = cache::newest_kernel(done) {
            return kernel_at(&dir);
        }
    }
    let meta = format!("linux-image-cloud-{}", debian_arch());
    log(&format!("downloading {meta} with apt-get"));
    let tmp = tempfile::tempdir_in(&kernels).map_err(io(&kernels))?;
    run(Command::new("apt-get").arg("download").arg(&meta).current_dir(tmp.path()))?;
    let meta_deb = find_deb(tmp.path(), &meta)?;
    let depends = run(Command::new("dpkg-deb").arg("-f").arg(&meta_deb).arg("Depends"))?;
    let pkg = depends
        .split(',')
        .map(|d| d.trim().split(' ').next().unwrap_or_default().to_string())
        .find(|d| d.starts_with("linux-image-"))
        .ok_or_else(|| ImageError::BadKernelPackage(format!("linux-image dependency in {meta}")))?;
    run(Command::new("apt-get").arg("download").arg(&pkg).current_dir(tmp.path()))?;
    let deb = find_deb(tmp.path(), &format!("{pkg}_"))?;
    let name = deb.file_stem().and_then(|s| s.to_str()).unwrap_or(&pkg).to_string();
    let dest = kernels.join(&name);
    let staging = tmp.path().join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&staging))?;
    let _ = std::fs::remove_dir_all(&dest);
    std::fs::rename(&staging, &dest).map_err(io(&dest))?;
    std::fs::write(dest.join("complete"), &name).map_err(io(&dest))?;
    kernel_at(&dest)
}

fn find_deb(dir: &Path, prefix: &str) -> Result<PathBuf, ImageError> {
    std::fs::read_dir(dir)
        .map_err(io(dir))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            let f = p.file_name().and_then(|f| f.to_str()).unwrap_or_default();
            f.starts_with(prefix) && f.ends_with(".deb")
        })
        .ok_or_else(|| ImageError::BadKernelPackage(format!("{prefix}*.deb after download")))
}

fn kernel_at(dir: &Path) -> Result<Kernel, ImageError> {
    let modules = dir.join("lib/modules");
    let release = std::fs::read_dir(&modules)
        .map_err(io(&modules))?
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .next()
        .ok_or_else(|| ImageError::BadKernelPackage("lib/modules/<release>".into()))?;
    let package = std::fs::read_to_string(dir.join("complete")).unwrap_or_default();
    let vmlinuz = dir.join("boot").join(format!("vmlinuz-{release}"));
    let config = dir.join("boot").join(format!("config-{release}"));
    Ok(Kernel { package, release, config, root: Some(dir.to_path_buf()), vmlinuz })
}

/// CONFIG_HZ from a kernel's .config.
pub fn config_hz(config: &str) -> Option<u64> {
    config.lines().find_map(|l| l.strip_prefix("CONFIG_HZ=")?.trim().parse().ok())
}

/// Whether an ELF file asks for a dynamic loader.
pub fn has_interpreter(bytes: &[u8]) -> bool {
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 {
        return true;
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(bytes[0x20..0x28].try_into().expect("8 bytes")) as usize;
    let (entsize, num) = (u16_at(0x36), u16_at(0x38));
    (0..num).any(|i| {
        let o = i.checked_mul(entsize).and_then(|x| x.checked_add(phoff));
        o.and_then(|o| bytes.get(o..o.checked_add(4)?))
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) == 3)
            .unwrap_or(true)
    })
}

/// The host's static busybox, the image's userland.
const BUSYBOX: &str = "/bin/busybox";

/// Builds (or finds in the cache) the boot image for `agent` and the
/// kernel `choice` names: "default" with Debian's kernel, "default-cordon"
/// with cordon's.
pub fn build_default(
    agent: &Path,
    choice: KernelChoice,
    refresh: bool,
    log: &dyn Fn(&str),
) -> Result<Image, ImageError> {
    let cache = cache_dir();
    // Held until the image is built (or found) and old ones are pruned: a
    // concurrent first run waits here and then finds the finished image.
    let _lock = cache::CacheLock::acquire(&cache, log)?;
    let kernel = pick_kernel(&cache, choice, refresh, log)?;
    let name = if kernel.root.is_some() { "default" } else { "default-cordon" };
    let busybox = PathBuf::from(BUSYBOX);
    // Every run asks for the image: skip hashing the agent and busybox and
    // resolving modules when none of the inputs changed since last time.
    let memo = inputs_fingerprint(&kernel.package, agent, &busybox).map(|fp| cache.join("image-inputs").join(fp));
    if let Some(id) = memo.as_ref().and_then(|m| std::fs::read_to_string(m).ok()) {
        let dir = cache.join("images").join(id.trim());
        if !id.trim().is_empty() && !id.contains('/') && dir.join("image.json").exists() {
            return load(&dir);
        }
    }
    let bb = std::fs::read(&busybox).map_err(io(&busybox))?;
    if has_interpreter(&bb) {
        return Err(ImageError::NotStatic(busybox));
    }
    let agent_bytes = std::fs::read(agent).map_err(io(agent))?;
    if has_interpreter(&agent_bytes) {
        return Err(ImageError::AgentNotStatic(agent.to_path_buf()));
    }
    // cordon's kernel has everything built in: no modules at all.
    let moddir = kernel.root.as_ref().map(|r| r.join("lib/modules").join(&kernel.release)).unwrap_or_default();
    let (order, root_order) = match &kernel.root {
        None => (vec![], vec![]),
        Some(_) => {
            let builtin =
                modinfo::parse_builtin(&std::fs::read_to_string(moddir.join("modules.builtin")).unwrap_or_default());
            let index = modinfo::index(&moddir.join("kernel"));
            let order = modinfo::resolve(WANTED_MODULES, &index, &builtin)?;
            let all: Vec<&str> = WANTED_MODULES.iter().chain(ROOT_MODULES).copied().collect();
            let root_order: Vec<PathBuf> =
                modinfo::resolve(&all, &index, &builtin)?.into_iter().filter(|p| !order.contains(p)).collect();
            (order, root_order)
        }
    };
    let strip = |v: &[PathBuf]| -> Vec<String> {
        v.iter().map(|p| p.strip_prefix(&moddir).unwrap_or(p).to_string_lossy().into_owned()).collect()
    };
    let (rel, root_rel) = (strip(&order), strip(&root_order));

    let mut h = Sha256::new();
    for part in [FORMAT, &kernel.package, &hex::encode(Sha256::digest(&agent_bytes)), &hex::encode(Sha256::digest(&bb))]
    {
        h.update(part.as_bytes());
        h.update([0]);
    }
    for m in rel.iter().chain([&String::new()]).chain(&root_rel) {
        h.update(m.as_bytes());
        h.update([0]);
    }
    let id = hex::encode(h.finalize())[..16].to_string();
    let images = cache.join("images");
    let dir = images.join(&id);
    let remember = |id: &str| {
        if let Some(m) = &memo {
            let _ = m.parent().map(std::fs::create_dir_all);
            let _ = std::fs::write(m, id);
        }
    };
    if dir.join("image.json").exists() {
        remember(&id);
        return load(&dir);
    }
    log(&format!("building image {id} (kernel {})", kernel.release));
    std::fs::create_dir_all(&images).map_err(io(&images))?;
    let tmp = tempfile::tempdir_in(&images).map_err(io(&images))?;
    std::fs::copy(&kernel.vmlinuz, tmp.path().join("vmlinuz")).map_err(io(&kernel.vmlinuz))?;
    let applets = run(Command::new(&busybox).arg("--list-full"))?;
    let cpio_path = tmp.path().join("initramfs.cpio");
    let f = std::fs::File::create(&cpio_path).map_err(io(&cpio_path))?;
    let mut w = cpio::CpioWriter::new(std::io::BufWriter::new(f));
    let mods = Modules { release: &kernel.release, dir: &moddir, always: &rel, root: &root_rel };
    write_initramfs(&mut w, &agent_bytes, &bb, &applets, &mods).map_err(io(&cpio_path))?;
    use std::io::Write;
    w.finish().and_then(|mut b| b.flush()).map_err(io(&cpio_path))?;
    let meta = ImageMeta {
        id: id.clone(),
        name: name.into(),
        kernel_package: kernel.package.clone(),
        kernel_release: kernel.release.clone(),
        modules: rel,
        root_modules: root_rel,
        kernel_hz: std::fs::read_to_string(&kernel.config).ok().as_deref().and_then(config_hz),
        created_unix: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs(),
    };
    let json = serde_json::to_vec_pretty(&meta).expect("image meta serializes");
    std::fs::write(tmp.path().join("image.json"), json).map_err(io(tmp.path()))?;
    prune_old_defaults(&images, name, 2);
    let staged = tmp.keep();
    if let Err(e) = std::fs::rename(&staged, &dir) {
        // Another cordon built the same image (an older one, without the
        // cache lock); theirs is as good.
        let _ = std::fs::remove_dir_all(&staged);
        if !dir.join("image.json").exists() {
            return Err(io(&dir)(e));
        }
    }
    remember(&id);
    load(&dir)
}

/// The unpacked rootfs of the boot image for `agent` (busybox and the agent
/// as /init): all the namespace backend uses of it. The rootfs is the same
/// whichever kernel the image was built for (it leaves the modules out), so
/// a memo keyed by the agent's and busybox's identity names it: a run whose
/// inputs did not change looks at no kernel and takes no lock. Otherwise
/// the image is found or built (`build_default`) and unpacked.
pub fn default_rootfs(agent: &Path, log: &dyn Fn(&str)) -> Result<PathBuf, ImageError> {
    let cache = cache_dir();
    let memo = inputs_fingerprint("rootfs", agent, Path::new(BUSYBOX)).map(|fp| cache.join("rootfs-inputs").join(fp));
    let remembered = memo.as_ref().and_then(|m| std::fs::read_to_string(m).ok());
    if let Some(dir) = remembered.and_then(|id| unpacked_rootfs(&cache, &id)) {
        return Ok(dir);
    }
    let image = build_default(agent, KernelChoice::Auto, false, log)?;
    let dir = rootfs::rootfs(&image)?;
    if let Some(m) = &memo {
        let _ = m.parent().map(std::fs::create_dir_all);
        let _ = std::fs::write(m, &image.meta.id);
    }
    Ok(dir)
}

/// The rootfs of cached image `id`, when it is fully unpacked (rootfs.rs
/// marks that with a file). `id` comes from a memo file: one path component.
fn unpacked_rootfs(cache: &Path, id: &str) -> Option<PathBuf> {
    let id = id.trim();
    if id.is_empty() || id.contains('/') || id == "." || id == ".." {
        return None;
    }
    let dir = cache.join("images").join(id).join("rootfs");
    dir.join("etc/cordon/rootfs-complete").exists().then_some(dir)
}

/// What identifies the image's inputs without reading them: the kernel
/// package and, for the agent and busybox, path, device, inode, size and
/// modification time (as make and cargo judge freshness).
fn inputs_fingerprint(kernel_package: &str, agent: &Path, busybox: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let mut h = Sha256::new();
    h.update(FORMAT.as_bytes());
    h.update(kernel_package.as_bytes());
    for p in [agent, busybox] {
        let m = std::fs::metadata(p).ok()?;
        h.update(p.as_os_str().as_encoded_bytes());
        for n in [m.dev(), m.ino(), m.size(), m.mtime() as u64, m.mtime_nsec() as u64] {
            h.update(n.to_le_bytes());
        }
    }
    Some(hex::encode(h.finalize())[..24].to_string())
}

/// The kernel modules an initramfs carries: `always` loaded at boot, `root`
/// only on runs with a userland disk (paths relative to `dir`).
struct Modules<'a> {
    release: &'a str,
    dir: &'a Path,
    always: &'a [String],
    root: &'a [String],
}

fn write_initramfs<W: std::io::Write>(
    w: &mut cpio::CpioWriter<W>,
    agent: &[u8],
    busybox: &[u8],
    applets: &str,
    mods: &Modules,
) -> std::io::Result<()> {
    let (release, moddir, modules, root_modules) = (mods.release, mods.dir, mods.always, mods.root);
    let mut dirs: BTreeMap<String, ()> = BTreeMap::new();
    for d in [
        "bin",
        "sbin",
        "usr",
        "usr/bin",
        "usr/sbin",
        "etc",
        "etc/cordon",
        "dev",
        "proc",
        "sys",
        "tmp",
        "run",
        "root",
        "workspace",
        "lib",
        "lib/modules",
    ] {
        dirs.insert(d.to_string(), ());
    }
    let mod_paths: Vec<String> =
        modules.iter().chain(root_modules).map(|m| format!("lib/modules/{release}/{m}")).collect();
    for p in &mod_paths {
        let mut cur = String::new();
        for comp in Path::new(p).parent().into_iter().flat_map(|p| p.iter()) {
            if !cur.is_empty() {
                cur.push('/');
            }
            cur.push_str(&comp.to_string_lossy());
            dirs.insert(cur.clone(), ());
        }
    }
    // BTreeMap order puts parents before children.
    for d in dirs.keys() {
        let perm = if d == "tmp" {
            0o1777
        } else if d == "root" {
            0o700
        } else {
            0o755
        };
        w.dir(d, perm)?;
    }
    w.char_dev("dev/console", 0o600, 5, 1)?;
    w.char_dev("dev/null", 0o666, 1, 3)?;
    w.file("init", 0o755, agent)?;
    w.file("bin/busybox", 0o755, busybox)?;
    for a in applets.lines().map(str::trim).filter(|a| !a.is_empty() && *a != "bin/busybox") {
        if a.contains("..") || a.starts_with('/') {
            continue;
        }
        w.symlink(a, "/bin/busybox")?;
    }
    w.file(
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    w.file("etc/group", 0o644, b"root:x:0:\nnogroup:x:65534:\n")?;
    w.file("etc/hostname", 0o644, b"cordon\n")?;
    let (mut list, mut root_list) = (String::new(), String::new());
    for (i, (p, rel)) in mod_paths.iter().zip(modules.iter().chain(root_modules)).enumerate() {
        let data = std::fs::read(moddir.join(rel))?;
        w.file(p, 0o644, &data)?;
        let l = if i < modules.len() { &mut list } else { &mut root_list };
        l.push('/');
        l.push_str(p);
        l.push('\n');
    }
    w.file("etc/cordon/modules", 0o644, list.as_bytes())?;
    w.file(cordon_protocol::boot::ROOT_MODULES_FILE.trim_start_matches('/'), 0o644, root_list.as_bytes())?;
    Ok(())
}

/// Keeps only the `keep` newest images named `name` (each new agent build
/// makes a new one); in-use images are safe: QEMU holds its files open.
fn prune_old_defaults(images: &Path, name: &str, keep: usize) {
    let Ok(rd) = std::fs::read_dir(images) else { return };
    let mut defaults: Vec<Image> =
        rd.flatten().filter_map(|e| load(&e.path()).ok()).filter(|i| i.meta.name == name).collect();
    defaults.sort_by_key(|i| std::cmp::Reverse(i.meta.created_unix));
    for old in defaults.into_iter().skip(keep) {
        let _ = std::fs::remove_dir_all(&old.dir);
    }
}

fn load(dir: &Path) -> Result<Image, ImageError> {
    let p = dir.join("image.json");
    let b = std::fs::read(&p).map_err(io(&p))?;
    let meta = serde_json::from_slice(&b).map_err(|source| ImageError::BadMeta { path: p.clone(), source })?;
    Ok(Image { meta, dir: dir.to_path_buf() })
}

pub fn list() -> Result<Vec<Image>, ImageError> {
    let images = cache_dir().join("images");
    let Ok(rd) = std::fs::read_dir(&images) else { return Ok(vec![]) };
    let mut out: Vec<Image> = rd
        .flatten()
        .filter(|e| e.path().join("image.json").exists())
        .filter_map(|e| load(&e.path()).ok())
        .filter(|i| i.dir.file_name().is_some_and(|n| *n == *i.meta.id))
        .collect();
    out.sort_by_key(|i| std::cmp::Reverse(i.meta.created_unix));
    Ok(out)
}

/// Removes every image whose name or id is `which`; returns how many.
pub fn remove(which: &str) -> Result<usize, ImageError> {
    let _lock = cache::CacheLock::acquire(&cache_dir(), &|_| {})?;
    let mut n = 0;
    for img in list()? {
        if img.meta.id == which || img.meta.name == which {
            std::fs::remove_dir_all(&img.dir).map_err(io(&img.dir))?;
            n += 1;
        }
    }
    if n == 0 {
        return Err(ImageError::NotFound(which.to_string()));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_unpacked_rootfs_only_complete_and_one_component() {
        let cache = tempfile::tempdir().unwrap();
        let done = cache.path().join("images/abc/rootfs/etc/cordon");
        std::fs::create_dir_all(&done).unwrap();
        std::fs::write(done.join("rootfs-complete"), b"").unwrap();
        std::fs::create_dir_all(cache.path().join("images/half/rootfs/etc")).unwrap();
        let want = cache.path().join("images/abc/rootfs");
        assert_eq!(unpacked_rootfs(cache.path(), "abc"), Some(want.clone()));
        assert_eq!(unpacked_rootfs(cache.path(), "abc\n"), Some(want));
        for bad in ["", "half", "missing", "..", ".", "../images/abc", "abc/../abc"] {
            assert_eq!(unpacked_rootfs(cache.path(), bad), None, "{bad:?}");
        }
    }

    #[test]
    fn test_has_interpreter_detects_dynamic_binaries() {
        let sh = std::fs::read("/bin/sh").unwrap();
        assert!(has_interpreter(&sh), "/bin/sh on Debian is dynamic");
        assert!(has_interpreter(b"not an elf"));
        let mut hostile = std::fs::read("/bin/busybox").unwrap();
        hostile[0x20..0x28].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(has_interpreter(&hostile), "an unreadable header must count as dynamic");
    }

    #[test]
    fn test_config_hz() {
        assert_eq!(config_hz("# CONFIG_HZ_1000 is not set\nCONFIG_HZ_250=y\nCONFIG_HZ=250\n"), Some(250));
        assert_eq!(config_hz("CONFIG_HZ_100=y\n"), None);
        assert_eq!(config_hz("CONFIG_HZ=x"), None);
    }

    #[test]
    fn test_cache_dir_honours_xdg() {
        // Read-only check of the pure path logic via a subprocess-free path.
        let p = cache_dir();
        assert!(p.ends_with("cordon"));
    }
}
