//! Artifacts out of the sandbox, written on the host as if every byte of the
//! archive were hostile. An archive is unpacked into a fresh staging
//! directory (inside the run's private temp dir) with every path resolved
//! beneath it without following a symlink (`openat` with `O_NOFOLLOW`, one
//! component at a time), then moved into place under the artifacts dir,
//! again without following a symlink below the trusted anchor, replacing
//! what an earlier run left there instead of merging into it.
//!
//! Invariants: nothing is created outside the staging dir or the artifact's
//! own destination; no setuid/setgid/sticky bit, device node, fifo, socket or
//! hard link is ever created; a symlink survives only when it is relative and
//! resolves inside its artifact; a skipped entry is named in a warning.

use nix::errno::Errno;
use nix::fcntl::{openat, renameat, renameat2, OFlag, RenameFlags};
use nix::sys::stat::{fchmod, fstatat, futimens, mkdirat, utimensat, FileStat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{symlinkat, unlinkat, UnlinkatFlags};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

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
    #[error("the sandbox sent no usable {0}")]
    Missing(String),
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
    /// One line per entry that was not created, saying why.
    pub skipped: Vec<String>,
}

/// Deepest path an artifact may hold: far beyond real build trees, and it
/// bounds the per-entry walk and the recursion of copying and removing.
pub const MAX_DEPTH: usize = 256;

fn errno(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
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

/// Removes a non-directory `name` in `dir` if there is one (a duplicate entry).
fn clear_leaf(dir: &OwnedFd, name: &OsStr) -> Result<(), Errno> {
    match unlinkat(dir.as_fd(), name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Unpacks the tar stream `r` into `root`, a fresh empty directory. With
/// `single_file`, the artifact is one file and any symlink is refused (it
/// could only point at a sibling outside the artifact).
pub fn stage<R: Read>(r: R, root: &Path, single_file: bool) -> Result<Staged, ArtifactError> {
    let stage_err = |path: &Path, source: io::Error| ArtifactError::Stage { path: path.display().to_string(), source };
    let root_fd = nix::fcntl::open(root, DIR_FLAGS, Mode::empty()).map_err(|e| stage_err(root, errno(e)))?;
    let mut ar = tar::Archive::new(r);
    let mut out = Staged::default();
    let mut dirs: Vec<(Vec<OsString>, u32, u64)> = Vec::new();
    for entry in ar.entries().map_err(ArtifactError::Archive)? {
        let mut entry = entry.map_err(ArtifactError::Archive)?;
        out.entries += 1;
        let raw = entry.path().map_err(ArtifactError::Archive)?.into_owned();
        let shown = raw.display().to_string();
        let mut skip = |why: &str| out.skipped.push(format!("{shown}: {why}"));
        let Some(comps) = normal_components(&raw) else {
            skip("absolute or `..` path, skipped");
            continue;
        };
        if comps.len() > MAX_DEPTH {
            skip(&format!("deeper than {MAX_DEPTH} directories, skipped"));
            continue;
        }
        let h = entry.header();
        let kind = h.entry_type();
        let mode = h.mode().unwrap_or(0o644) & 0o777;
        let mtime = h.mtime().unwrap_or(0);
        if comps.is_empty() {
            if kind.is_dir() {
                dirs.push((comps, mode, mtime));
            } else {
                skip("an entry without a name, skipped");
            }
            continue;
        }
        let (name, parents) = comps.split_last().expect("comps is non-empty");
        let parent = match walk(&root_fd, parents, true) {
            Ok(fd) => fd,
            Err(Errno::ELOOP | Errno::ENOTDIR) => {
                skip("a parent is not a directory, skipped");
                continue;
            }
            Err(e) => return Err(stage_err(&raw, errno(e))),
        };
        if kind.is_dir() {
            match child_dir(&parent, name, true) {
                Ok(_) => dirs.push((comps.clone(), mode, mtime)),
                Err(Errno::ELOOP | Errno::ENOTDIR) => skip("a non-directory of that name exists, skipped"),
                Err(e) => return Err(stage_err(&raw, errno(e))),
            }
        } else if kind.is_file() || kind == tar::EntryType::Continuous {
            clear_leaf(&parent, name).map_err(|e| stage_err(&raw, errno(e)))?;
            let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            let fd = openat(parent.as_fd(), name.as_os_str(), flags, Mode::from_bits_truncate(0o600))
                .map_err(|e| stage_err(&raw, errno(e)))?;
            let mut f = File::from(fd);
            io::copy(&mut entry, &mut f).map_err(ArtifactError::Archive)?;
            fchmod(f.as_fd(), Mode::from_bits_truncate(mode)).map_err(|e| stage_err(&raw, errno(e)))?;
            futimens(f.as_fd(), &ts(mtime), &ts(mtime)).map_err(|e| stage_err(&raw, errno(e)))?;
        } else if kind.is_symlink() {
            let target = match entry.link_name() {
                Ok(Some(t)) => t.into_owned(),
                _ => {
                    skip("a symlink without a target, skipped");
                    continue;
                }
            };
            if single_file || !symlink_stays_inside(parents.len(), &target) {
                skip(&format!("symlink to {} points outside the artifact, skipped", target.display()));
                continue;
            }
            clear_leaf(&parent, name).map_err(|e| stage_err(&raw, errno(e)))?;
            symlinkat(target.as_os_str(), parent.as_fd(), name.as_os_str()).map_err(|e| stage_err(&raw, errno(e)))?;
            let _ =
                utimensat(parent.as_fd(), name.as_os_str(), &ts(mtime), &ts(mtime), UtimensatFlags::NoFollowSymlink);
        } else {
            let what = match kind {
                tar::EntryType::Link => "a hard link",
                tar::EntryType::Char => "a character device",
                tar::EntryType::Block => "a block device",
                tar::EntryType::Fifo => "a fifo",
                tar::EntryType::GNUSparse => "a sparse file",
                _ => "an unsupported entry type",
            };
            skip(&format!("{what}, skipped"));
        }
    }
    // Deepest first, so a parent's mtime is set after its children changed it.
    dirs.sort_by_key(|(c, ..)| std::cmp::Reverse(c.len()));
    for (comps, mode, mtime) in dirs {
        if let Ok(fd) = walk(&root_fd, &comps, false) {
            // Owner rwx stays, so the next run can replace the tree.
            let _ = fchmod(fd.as_fd(), Mode::from_bits_truncate(mode | 0o700));
            let _ = futimens(fd.as_fd(), &ts(mtime), &ts(mtime));
        }
    }
    Ok(out)
}

/// Where an artifact goes: `anchor` is trusted (symlinks in it are the
/// user's own); every component of `below` is resolved without following a
/// symlink, and the last one is replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub anchor: PathBuf,
    pub below: Vec<OsString>,
}

impl Destination {
    pub fn path(&self) -> PathBuf {
        let mut p = self.anchor.clone();
        p.extend(&self.below);
        p
    }
}

/// Moves the staged `src` (a file, symlink or directory) to `dest`,
/// replacing what is there. Returns whether something was replaced.
pub fn install(src: &Path, dest: &Destination) -> Result<bool, ArtifactError> {
    let shown = dest.path().display().to_string();
    let err = |source: io::Error| ArtifactError::Install { path: shown.clone(), source };
    let (leaf, parents) = dest.below.split_last().ok_or_else(|| err(io::Error::other("empty destination")))?;
    std::fs::create_dir_all(&dest.anchor).map_err(err)?;
    let anchor = open_dir(&dest.anchor).map_err(err)?;
    let parent = match walk(&anchor, parents, true) {
        Ok(fd) => fd,
        Err(Errno::ELOOP | Errno::ENOTDIR) => {
            // Name the first component that is in the way.
            let mut p = dest.anchor.clone();
            for c in parents {
                p.push(c);
                if !std::fs::symlink_metadata(&p).map(|m| m.is_dir()).unwrap_or(false) {
                    break;
                }
            }
            return Err(ArtifactError::NotADirectory { path: p.display().to_string() });
        }
        Err(e) => return Err(err(errno(e))),
    };
    let src_parent = open_dir(src.parent().unwrap_or(Path::new("/"))).map_err(err)?;
    let src_name = src.file_name().ok_or_else(|| err(io::Error::other("staged path has no name")))?;
    let exists = match fstatat(parent.as_fd(), leaf.as_os_str(), nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(_) => true,
        Err(Errno::ENOENT) => false,
        Err(e) => return Err(err(errno(e))),
    };
    // Put the new tree beside the destination under a private name first.
    let tmp = OsString::from(format!(".cordon-new-{}-{}", std::process::id(), unique()));
    match renameat(src_parent.as_fd(), src_name, parent.as_fd(), tmp.as_os_str()) {
        Ok(()) => {}
        Err(Errno::EXDEV) => copy_tree(&src_parent, src_name, &parent, &tmp).map_err(err)?,
        Err(e) => return Err(err(errno(e))),
    }
    if !exists {
        return renameat(parent.as_fd(), tmp.as_os_str(), parent.as_fd(), leaf.as_os_str())
            .map(|()| false)
            .map_err(|e| err(errno(e)));
    }
    renameat2(parent.as_fd(), tmp.as_os_str(), parent.as_fd(), leaf.as_os_str(), RenameFlags::RENAME_EXCHANGE)
        .map_err(|e| err(errno(e)))?;
    // `tmp` now holds what the earlier run left; remove it without following links.
    remove_at(&parent, &tmp).map_err(err)?;
    Ok(true)
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn stat_at(dir: &OwnedFd, name: &OsStr) -> io::Result<FileStat> {
    fstatat(dir.as_fd(), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW).map_err(errno)
}

fn file_type(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

/// Removes `name` in `dir` and everything below it, never following a symlink.
fn remove_at(dir: &OwnedFd, name: &OsStr) -> io::Result<()> {
    let st = stat_at(dir, name)?;
    if file_type(&st) != SFlag::S_IFDIR {
        return unlinkat(dir.as_fd(), name, UnlinkatFlags::NoRemoveDir).map_err(errno);
    }
    let sub = child_dir(dir, name, false).map_err(errno)?;
    for n in list_dir(&sub)? {
        remove_at(&sub, &n)?;
    }
    unlinkat(dir.as_fd(), name, UnlinkatFlags::RemoveDir).map_err(errno)
}

fn list_dir(dir: &OwnedFd) -> io::Result<Vec<OsString>> {
    let d = nix::dir::Dir::from_fd(dir.try_clone()?).map_err(errno)?;
    let mut names = Vec::new();
    let mut d = d;
    for e in d.iter() {
        let e = e.map_err(errno)?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            use std::os::unix::ffi::OsStrExt;
            names.push(OsStr::from_bytes(n).to_os_string());
        }
    }
    Ok(names)
}

/// Copies the staged tree `sname` in `sdir` to `dname` in `ddir` (across
/// file systems), keeping modes, mtimes and symlinks; staging only holds
/// files, directories and symlinks this module made.
fn copy_tree(sdir: &OwnedFd, sname: &OsStr, ddir: &OwnedFd, dname: &OsStr) -> io::Result<()> {
    let st = stat_at(sdir, sname)?;
    let mtime = ts(st.st_mtime.max(0) as u64);
    let mode = Mode::from_bits_truncate(st.st_mode & 0o777);
    match file_type(&st) {
        SFlag::S_IFDIR => {
            mkdirat(ddir.as_fd(), dname, Mode::from_bits_truncate(0o700)).map_err(errno)?;
            let s = child_dir(sdir, sname, false).map_err(errno)?;
            let d = child_dir(ddir, dname, false).map_err(errno)?;
            for n in list_dir(&s)? {
                copy_tree(&s, &n, &d, &n)?;
            }
            fchmod(d.as_fd(), mode).map_err(errno)?;
            futimens(d.as_fd(), &mtime, &mtime).map_err(errno)
        }
        SFlag::S_IFREG => {
            let rd = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            let mut s = File::from(openat(sdir.as_fd(), sname, rd, Mode::empty()).map_err(errno)?);
            let wr = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            let mut d = File::from(openat(ddir.as_fd(), dname, wr, Mode::from_bits_truncate(0o600)).map_err(errno)?);
            io::copy(&mut s, &mut d)?;
            fchmod(d.as_fd(), mode).map_err(errno)?;
            futimens(d.as_fd(), &mtime, &mtime).map_err(errno)
        }
        SFlag::S_IFLNK => {
            let target = nix::fcntl::readlinkat(sdir.as_fd(), sname).map_err(errno)?;
            symlinkat(target.as_os_str(), ddir.as_fd(), dname).map_err(errno)?;
            let _ = utimensat(ddir.as_fd(), dname, &mtime, &mtime, UtimensatFlags::NoFollowSymlink);
            Ok(())
        }
        _ => Err(io::Error::other("unexpected file type in staging")),
    }
}

#[cfg(test)]
mod tests;
