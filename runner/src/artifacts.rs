//! Artifacts out of the sandbox, written on the host as if every byte of the
//! archive were hostile. An archive is unpacked into a fresh staging
//! directory (inside the run's private temp dir) with every path resolved
//! beneath it without following a symlink (`openat` with `O_NOFOLLOW`, one
//! component at a time), then moved into place under the artifacts dir
//! (`install.rs`), again without following a symlink below the trusted
//! anchor, replacing what an earlier run left there instead of merging.
//!
//! Invariants: nothing is created outside the staging dir or the artifact's
//! own destination; no setuid/setgid/sticky bit, no permission the user's
//! umask withholds, device node, fifo, socket or hard link is ever created;
//! a symlink survives only when it is relative and resolves inside its
//! artifact; a skipped entry is named in a warning (the first
//! `MAX_SKIPPED_LINES`, then counted).
//!
//! Costs are bounded by the archive's depth, not its size: the unpacker
//! holds only the open directories from the staging root to the current
//! entry (at most `MAX_DEPTH`), reusing them while consecutive entries share
//! a parent. A directory's mtime is restored when the walk leaves it, and
//! read back from the directory when the walk comes back, so no per-entry
//! list is kept. A run brings out at most `MAX_ENTRIES` entries; every entry
//! costs at least its 512-byte header of the run's size limit, which counts
//! every archive byte received. `Cancel` stops unpacking and installing
//! between entries and between 64 KiB chunks.

mod install;

pub use install::{check_dir, install, prepare_dir, Destination, MARKER};

use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fchmod, fstat, fstatat, futimens, mkdirat, utimensat, FileStat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{symlinkat, unlinkat, UnlinkatFlags};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("the archive from the sandbox is malformed")]
    Archive(#[source] io::Error),
    #[error("writing {path} in the staging directory failed")]
    Stage {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a directory (a symlink or file is in the way); remove it to copy this artifact")]
    NotADirectory { path: String },
    #[error(
        "{path} exists and was not created by cordon (it has no valid {MARKER} marker); a job file may only \
         name an artifacts directory cordon makes: remove or rename it, or name a directory with --artifacts-dir"
    )]
    NotCordons { path: String },
    #[error("the sandbox sent no usable {0}")]
    Missing(String),
    #[error("the run's artifacts hold more than {MAX_ENTRIES} entries in all; the rest are not copied")]
    TooManyEntries,
    #[error("copying was cancelled")]
    Cancelled,
    #[error("moving the artifact into {path} failed")]
    Install {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// What unpacking one archive did.
#[derive(Debug, Default)]
pub struct Staged {
    pub entries: u64,
    /// One line per entry that was not created, saying why: the first
    /// `MAX_SKIPPED_LINES` of them.
    pub skipped: Vec<String>,
    /// Entries skipped beyond those lines.
    pub skipped_more: u64,
}

/// Deepest path an artifact may hold: far beyond real build trees, and it
/// bounds the open directories of the unpacker and the recursion of copying
/// and removing.
pub const MAX_DEPTH: usize = 256;

/// Most entries one run may bring out, all artifacts together: ten times a
/// large source tree with its build output (a Linux kernel build has about
/// 100,000), yet a bound on the inodes and the time an archive of tiny
/// entries (8 million fit in the default 4G) would cost the host.
pub const MAX_ENTRIES: u64 = 1_000_000;

/// Most warning lines about skipped entries per artifact; the rest are counted.
pub const MAX_SKIPPED_LINES: usize = 50;

/// Bytes copied between two looks at the cancel flag.
const CHUNK: usize = 64 << 10;

fn errno(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// Stops unpacking and installing from another thread. Checked between
/// entries and chunks; once `cancel` has returned, no install completes
/// (an install's final renames hold the same lock).
#[derive(Debug, Clone, Default)]
pub struct Cancel {
    flag: Arc<AtomicBool>,
    commit: Arc<Mutex<()>>,
}

impl Cancel {
    pub fn cancel(&self) {
        let _commit = self.commit.lock().unwrap_or_else(|e| e.into_inner());
        self.flag.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    fn check(&self) -> Result<(), ArtifactError> {
        if self.is_cancelled() {
            Err(ArtifactError::Cancelled)
        } else {
            Ok(())
        }
    }

    /// Runs `f` unless cancelled, with `cancel` waiting for it.
    fn commit<T>(&self, f: impl FnOnce() -> T) -> Result<T, ArtifactError> {
        let _commit = self.commit.lock().unwrap_or_else(|e| e.into_inner());
        self.check()?;
        Ok(f())
    }
}

/// How one archive is unpacked.
#[derive(Debug, Clone)]
pub struct StageOptions {
    /// The artifact is one file: any symlink is refused (it could only
    /// point at a sibling outside the artifact).
    pub single_file: bool,
    /// Permission bits never given on the host: the user's umask
    /// (`process_umask`), on top of the 0o777 mask.
    pub umask: u32,
    /// Most entries this archive may hold: what is left of `MAX_ENTRIES`.
    pub max_entries: u64,
    pub cancel: Cancel,
}

impl Default for StageOptions {
    fn default() -> StageOptions {
        StageOptions { single_file: false, umask: 0o022, max_entries: MAX_ENTRIES, cancel: Cancel::default() }
    }
}

/// This process's umask, from the `Umask:` line of /proc/self/status:
/// umask(2) cannot read it without setting it, process-wide, racing every
/// thread that creates a file meanwhile. 0o022 where /proc does not say.
pub fn process_umask() -> u32 {
    parse_umask(&std::fs::read_to_string("/proc/self/status").unwrap_or_default()).unwrap_or(0o022)
}

fn parse_umask(status: &str) -> Option<u32> {
    let v = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(v.trim(), 8).ok().map(|m| m & 0o777)
}

const DIR_FLAGS: OFlag = OFlag::O_DIRECTORY.union(OFlag::O_NOFOLLOW).union(OFlag::O_CLOEXEC).union(OFlag::O_RDONLY);

/// Opens `dir` itself (the caller's trusted path) as a directory fd.
pub fn open_dir(dir: &Path) -> io::Result<OwnedFd> {
    nix::fcntl::open(dir, OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_RDONLY, Mode::empty()).map_err(errno)
}

/// Opens the directory `name` beneath `parent` without following a symlink;
/// with `create`, makes it (mode 0700) when missing.
fn child_dir(parent: &OwnedFd, name: &OsStr, create: bool) -> Result<OwnedFd, Errno> {
    match openat(parent.as_fd(), name, DIR_FLAGS, Mode::empty()) {
        Err(Errno::ENOENT) if create => {
            match mkdirat(parent.as_fd(), name, Mode::from_bits_truncate(0o700)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(e),
            }
            openat(parent.as_fd(), name, DIR_FLAGS, Mode::empty())
        }
        r => r,
    }
}

/// Walks `comps` beneath `root`, one component at a time, never through a
/// symlink. `ELOOP`/`ENOTDIR` mean something other than a directory is there.
fn walk(root: &OwnedFd, comps: &[OsString], create: bool) -> Result<OwnedFd, Errno> {
    let mut cur = root.try_clone().map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
    for c in comps {
        cur = child_dir(&cur, c, create)?;
    }
    Ok(cur)
}

/// The normal components of an archive path, or `None` when it has a root,
/// a prefix or `..` (it would leave the staging directory).
fn normal_components(p: &Path) -> Option<Vec<OsString>> {
    let mut out = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n.to_os_string()),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(out)
}

/// Whether a symlink at depth `depth` (components of its parent below the
/// artifact's root) pointing at `target` stays inside the artifact. Only
/// targets of the form `../..`-prefix then plain names are accepted, and the
/// prefix may not climb above the root: then every `..` walks up real
/// directories this unpacker made, and every name walks down, so the link
/// resolves inside even through other accepted links.
pub fn symlink_stays_inside(depth: usize, target: &Path) -> bool {
    if target.as_os_str().is_empty() {
        return false;
    }
    let mut ups = 0usize;
    let mut seen_name = false;
    for c in target.components() {
        match c {
            Component::ParentDir if !seen_name => ups += 1,
            Component::Normal(_) => seen_name = true,
            Component::CurDir => {}
            _ => return false,
        }
    }
    ups <= depth
}

fn ts(secs: u64) -> TimeSpec {
    TimeSpec::new(secs.min(i64::MAX as u64) as i64, 0)
}

fn stat_at(dir: &OwnedFd, name: &OsStr) -> io::Result<FileStat> {
    fstatat(dir.as_fd(), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW).map_err(errno)
}

fn file_type(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

/// Removes a non-directory `name` in `dir` if there is one (a duplicate
/// entry). `EISDIR`: a directory of that name is there (it stays).
fn clear_leaf(dir: &OwnedFd, name: &OsStr) -> Result<(), Errno> {
    match unlinkat(dir.as_fd(), name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        // POSIX lets unlink(2) of a directory fail with EPERM.
        Err(Errno::EPERM) if stat_at(dir, name).is_ok_and(|st| file_type(&st) == SFlag::S_IFDIR) => Err(Errno::EISDIR),
        Err(e) => Err(e),
    }
}

/// One open directory on the path from the staging root to where the
/// unpacker is.
struct Level {
    /// Empty for the root.
    name: OsString,
    fd: OwnedFd,
    /// The mtime it must end with: its archive entry's, or what it had when
    /// first changed since it was entered (restored when it was last left).
    mtime: Option<TimeSpec>,
    /// Something was created or removed in it since it was entered, or its
    /// archive entry set `mtime`: restore `mtime` when leaving.
    changed: bool,
}

/// The open directories from the staging root to the current one.
struct Dirs {
    levels: Vec<Level>,
}

impl Dirs {
    fn new(root: OwnedFd) -> Dirs {
        Dirs { levels: vec![Level { name: OsString::new(), fd: root, mtime: None, changed: false }] }
    }

    fn top(&self) -> &Level {
        self.levels.last().expect("the root is never left before finish")
    }

    /// Leaves every directory above the first `keep`, restoring mtimes.
    fn leave_to(&mut self, keep: usize) {
        while self.levels.len() > keep {
            let l = self.levels.pop().expect("non-empty");
            if let (true, Some(t)) = (l.changed, l.mtime) {
                let _ = futimens(l.fd.as_fd(), &t, &t);
            }
        }
    }

    /// Records the current directory's mtime before something in it changes.
    fn changing(&mut self) {
        let top = self.levels.last_mut().expect("the root is never left before finish");
        if !top.changed {
            if top.mtime.is_none() {
                top.mtime = fstat(top.fd.as_fd()).ok().map(|st| TimeSpec::new(st.st_mtime, st.st_mtime_nsec));
            }
            top.changed = true;
        }
    }

    /// [`Dirs::go`] to an entry's parents: `false` when a non-directory is
    /// in the way (the entry is skipped), other errors as they are.
    fn enter_parents(&mut self, parents: &[OsString]) -> Result<bool, Errno> {
        match self.go(parents) {
            Ok(()) => Ok(true),
            Err(Errno::ELOOP | Errno::ENOTDIR) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Makes `comps` (below the root) the current directory, creating what
    /// is missing, never through a symlink: `ELOOP`/`ENOTDIR` when a
    /// non-directory is in the way.
    fn go(&mut self, comps: &[OsString]) -> Result<(), Errno> {
        let same = self.levels[1..].iter().zip(comps).take_while(|(l, c)| l.name == **c).count();
        self.leave_to(same + 1);
        for c in &comps[same..] {
            let fd = match openat(self.top().fd.as_fd(), c.as_os_str(), DIR_FLAGS, Mode::empty()) {
                Err(Errno::ENOENT) => {
                    self.changing();
                    match mkdirat(self.top().fd.as_fd(), c.as_os_str(), Mode::from_bits_truncate(0o700)) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(e),
                    }
                    openat(self.top().fd.as_fd(), c.as_os_str(), DIR_FLAGS, Mode::empty())?
                }
                r => r?,
            };
            self.levels.push(Level { name: c.clone(), fd, mtime: None, changed: false });
        }
        Ok(())
    }

    /// The current directory gets its archive entry's mode and mtime.
    fn set_current(&mut self, mode: u32, mtime: u64) {
        let top = self.levels.last_mut().expect("the root is never left before finish");
        let _ = fchmod(top.fd.as_fd(), Mode::from_bits_truncate(mode));
        top.mtime = Some(ts(mtime));
        top.changed = true;
    }

    fn finish(mut self) {
        self.leave_to(0);
    }
}

/// Copies the entry's data into `f`, looking at `cancel` between chunks.
fn copy_data(
    r: &mut impl Read,
    f: &mut File,
    buf: &mut [u8],
    cancel: &Cancel,
    shown: &str,
) -> Result<(), ArtifactError> {
    loop {
        cancel.check()?;
        let n = match r.read(buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ArtifactError::Archive(e)),
        };
        f.write_all(&buf[..n]).map_err(|source| ArtifactError::Stage { path: shown.to_string(), source })?;
    }
}

/// Unpacks the tar stream `r` into `root`, a fresh empty directory.
pub fn stage<R: Read>(r: R, root: &Path, opts: &StageOptions) -> Result<Staged, ArtifactError> {
    let stage_err = |path: &str, source: io::Error| ArtifactError::Stage { path: path.to_string(), source };
    let root_fd = nix::fcntl::open(root, DIR_FLAGS, Mode::empty())
        .map_err(|e| stage_err(&root.display().to_string(), errno(e)))?;
    let mut dirs = Dirs::new(root_fd);
    let mut ar = tar::Archive::new(r);
    let mut out = Staged::default();
    let mut buf = vec![0u8; CHUNK];
    let file_mask = 0o777 & !opts.umask;
    for entry in ar.entries().map_err(ArtifactError::Archive)? {
        opts.cancel.check()?;
        let mut entry = entry.map_err(ArtifactError::Archive)?;
        out.entries += 1;
        if out.entries > opts.max_entries {
            return Err(ArtifactError::TooManyEntries);
        }
        let raw = entry.path().map_err(ArtifactError::Archive)?.into_owned();
        let shown = raw.display().to_string();
        let mut skip = |why: &str| {
            if out.skipped.len() < MAX_SKIPPED_LINES {
                out.skipped.push(format!("{shown}: {why}"));
            } else {
                out.skipped_more += 1;
            }
        };
        let Some(comps) = normal_components(&raw) else {
            skip("absolute or `..` path, skipped");
            continue;
        };
        if comps.len() > MAX_DEPTH {
            skip(&format!("deeper than {MAX_DEPTH} directories, skipped"));
            continue;
        }
        // A `.git` directory on the host is code: a git-aware shell prompt
        // that enters it runs its core.fsmonitor. Never bring one out.
        if comps.iter().any(|c| c.to_string_lossy().eq_ignore_ascii_case(".git")) {
            skip("a .git path (git would run its hooks and config on the host), skipped");
            continue;
        }
        let h = entry.header();
        let kind = h.entry_type();
        let mode = h.mode().unwrap_or(0o644) & file_mask;
        let mtime = h.mtime().unwrap_or(0);
        if kind.is_dir() {
            let parents = &comps[..comps.len().saturating_sub(1)];
            if !dirs.enter_parents(parents).map_err(|e| stage_err(&shown, errno(e)))? {
                skip("a parent is not a directory, skipped");
                continue;
            }
            match dirs.go(&comps) {
                // Owner rwx stays, so the next run can replace the tree.
                Ok(()) => dirs.set_current(mode | 0o700, mtime),
                Err(Errno::ELOOP | Errno::ENOTDIR) => skip("a non-directory of that name exists, skipped"),
                Err(e) => return Err(stage_err(&shown, errno(e))),
            }
            continue;
        }
        let Some((name, parents)) = comps.split_last() else {
            skip("an entry without a name, skipped");
            continue;
        };
        let what = match kind {
            k if k.is_file() || k == tar::EntryType::Continuous => None,
            k if k.is_symlink() => None,
            tar::EntryType::Link => Some("a hard link"),
            tar::EntryType::Char => Some("a character device"),
            tar::EntryType::Block => Some("a block device"),
            tar::EntryType::Fifo => Some("a fifo"),
            tar::EntryType::GNUSparse => Some("a sparse file"),
            _ => Some("an unsupported entry type"),
        };
        if let Some(what) = what {
            skip(&format!("{what}, skipped"));
            continue;
        }
        let target = if kind.is_symlink() {
            match entry.link_name() {
                Ok(Some(t)) if !opts.single_file && symlink_stays_inside(parents.len(), &t) => Some(t.into_owned()),
                Ok(Some(t)) => {
                    skip(&format!("symlink to {} points outside the artifact, skipped", t.display()));
                    continue;
                }
                _ => {
                    skip("a symlink without a target, skipped");
                    continue;
                }
            }
        } else {
            None
        };
        if !dirs.enter_parents(parents).map_err(|e| stage_err(&shown, errno(e)))? {
            skip("a parent is not a directory, skipped");
            continue;
        }
        dirs.changing();
        let parent = &dirs.top().fd;
        match clear_leaf(parent, name) {
            Ok(()) => {}
            Err(Errno::EISDIR) => {
                skip("a directory of that name exists, skipped");
                continue;
            }
            Err(e) => return Err(stage_err(&shown, errno(e))),
        }
        if let Some(target) = target {
            symlinkat(target.as_os_str(), parent.as_fd(), name.as_os_str()).map_err(|e| stage_err(&shown, errno(e)))?;
            let _ =
                utimensat(parent.as_fd(), name.as_os_str(), &ts(mtime), &ts(mtime), UtimensatFlags::NoFollowSymlink);
            continue;
        }
        let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = openat(parent.as_fd(), name.as_os_str(), flags, Mode::from_bits_truncate(0o600))
            .map_err(|e| stage_err(&shown, errno(e)))?;
        let mut f = File::from(fd);
        copy_data(&mut entry, &mut f, &mut buf, &opts.cancel, &shown)?;
        fchmod(f.as_fd(), Mode::from_bits_truncate(mode)).map_err(|e| stage_err(&shown, errno(e)))?;
        futimens(f.as_fd(), &ts(mtime), &ts(mtime)).map_err(|e| stage_err(&shown, errno(e)))?;
    }
    dirs.finish();
    Ok(out)
}

#[cfg(test)]
mod tests;
