//! Moving a staged artifact into the artifacts dir, and the artifacts dir
//! itself. Below the trusted anchor nothing is followed through a symlink;
//! an artifact replaces what an earlier run left at its place.
//!
//! A job file's artifacts dir must be one cordon made: cordon writes a
//! marker into every artifacts directory it creates, and a directory a job
//! file names is used only when it does not exist yet or holds that marker.
//! Otherwise `artifacts_dir = "src"` with `artifacts = ["main.rs"]` in an
//! untrusted checkout would replace the checkout's own files, and the
//! user's files beside them, with whatever the sandbox made. The marker
//! names the directory's inode number, so a marker shipped inside the
//! checkout (a clone or an unpacked archive gets inode numbers nobody could
//! predict) does not make a directory cordon's. Command-line directories
//! are the user's own choice and are not checked.

use nix::errno::Errno;
use nix::fcntl::{openat, renameat, renameat2, OFlag, RenameFlags};
use nix::sys::stat::{fchmod, fstat, futimens, mkdirat, utimensat, Mode, SFlag, UtimensatFlags};
use nix::unistd::{symlinkat, unlinkat, UnlinkatFlags};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use super::{child_dir, errno, file_type, open_dir, stat_at, ts, walk, ArtifactError, Cancel, CHUNK, DIR_FLAGS};

/// The file cordon writes into an artifacts directory it creates.
pub const MARKER: &str = ".cordon-artifacts";

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

    /// The path of `below`'s first `n` components under the anchor.
    fn prefix(&self, n: usize) -> String {
        let mut p = self.anchor.clone();
        p.extend(&self.below[..n]);
        p.display().to_string()
    }
}

fn marker_text(ino: u64) -> String {
    format!("cordon artifacts directory\ninode {ino}\n")
}

/// Whether the open directory `dir` holds cordon's marker for itself.
fn marked(dir: &OwnedFd) -> bool {
    let Ok(st) = fstat(dir.as_fd()) else { return false };
    // O_NONBLOCK: a fifo of that name must not hang the check.
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
    let Ok(fd) = openat(dir.as_fd(), MARKER, flags, Mode::empty()) else { return false };
    let f = File::from(fd);
    if !f.metadata().is_ok_and(|m| m.is_file()) {
        return false;
    }
    let mut text = String::new();
    f.take(256).read_to_string(&mut text).is_ok() && text == marker_text(st.st_ino)
}

/// Walks `dir.below` beneath the anchor without following a symlink or
/// creating anything: the deepest directory, or `None` when a component
/// does not exist (yet).
fn existing(dir: &Destination) -> Result<Option<OwnedFd>, ArtifactError> {
    let install_err = |source: io::Error| ArtifactError::Install { path: dir.path().display().to_string(), source };
    let mut cur = match open_dir(&dir.anchor) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(install_err(e)),
    };
    for (i, c) in dir.below.iter().enumerate() {
        cur = match child_dir(&cur, c, false) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(Errno::ELOOP | Errno::ENOTDIR) => return Err(ArtifactError::NotADirectory { path: dir.prefix(i + 1) }),
            Err(e) => return Err(install_err(errno(e))),
        };
    }
    Ok(Some(cur))
}

/// Whether a job file may use the artifacts directory `dir`: it does not
/// exist yet, or cordon made it (the marker). Reads only.
pub fn check_dir(dir: &Destination) -> Result<(), ArtifactError> {
    match existing(dir)? {
        Some(fd) if !dir.below.is_empty() && !marked(&fd) => {
            Err(ArtifactError::NotCordons { path: dir.path().display().to_string() })
        }
        _ => Ok(()),
    }
}

/// Makes the artifacts directory `dir` (the anchor as a plain path, `below`
/// without following a symlink), marking it when this call creates it; with
/// `job_named`, an existing one must carry the marker (`check_dir`).
pub fn prepare_dir(dir: &Destination, job_named: bool) -> Result<(), ArtifactError> {
    let install_err = |source: io::Error| ArtifactError::Install { path: dir.path().display().to_string(), source };
    std::fs::create_dir_all(&dir.anchor).map_err(install_err)?;
    let mut cur = open_dir(&dir.anchor).map_err(install_err)?;
    let mut created = false;
    for (i, c) in dir.below.iter().enumerate() {
        created = false;
        cur = match openat(cur.as_fd(), c.as_os_str(), DIR_FLAGS, Mode::empty()) {
            Err(Errno::ENOENT) => {
                match mkdirat(cur.as_fd(), c.as_os_str(), Mode::from_bits_truncate(0o700)) {
                    Ok(()) => created = true,
                    Err(Errno::EEXIST) => {}
                    Err(e) => return Err(install_err(errno(e))),
                }
                openat(cur.as_fd(), c.as_os_str(), DIR_FLAGS, Mode::empty())
            }
            r => r,
        }
        .map_err(|e| match e {
            Errno::ELOOP | Errno::ENOTDIR => ArtifactError::NotADirectory { path: dir.prefix(i + 1) },
            e => install_err(errno(e)),
        })?;
    }
    if created {
        let ino = fstat(cur.as_fd()).map_err(|e| install_err(errno(e)))?.st_ino;
        let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd =
            openat(cur.as_fd(), MARKER, flags, Mode::from_bits_truncate(0o600)).map_err(|e| install_err(errno(e)))?;
        std::io::Write::write_all(&mut File::from(fd), marker_text(ino).as_bytes()).map_err(install_err)?;
    } else if job_named && !dir.below.is_empty() && !marked(&cur) {
        return Err(ArtifactError::NotCordons { path: dir.path().display().to_string() });
    }
    Ok(())
}

/// Moves the staged `src` (a file, symlink or directory) to `dest`,
/// replacing what is there. Returns whether something was replaced. Once
/// `cancel` is set nothing is put in place, and what was half copied goes.
pub fn install(src: &Path, dest: &Destination, cancel: &Cancel) -> Result<bool, ArtifactError> {
    cancel.check()?;
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
    let exists = match stat_at(&parent, leaf) {
        Ok(_) => true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(err(e)),
    };
    // Put the new tree beside the destination under a private name first.
    let tmp = OsString::from(format!(".cordon-new-{}-{}", std::process::id(), unique()));
    match renameat(src_parent.as_fd(), src_name, parent.as_fd(), tmp.as_os_str()) {
        Ok(()) => {}
        Err(Errno::EXDEV) => match copy_tree(&src_parent, src_name, &parent, &tmp, cancel) {
            Ok(()) => {}
            Err(e) => {
                let _ = remove_at(&parent, &tmp);
                return Err(match e {
                    Copy::Cancelled => ArtifactError::Cancelled,
                    Copy::Io(e) => err(e),
                });
            }
        },
        Err(e) => return Err(err(errno(e))),
    }
    let put = cancel.commit(|| {
        if exists {
            renameat2(parent.as_fd(), &*tmp, parent.as_fd(), leaf.as_os_str(), RenameFlags::RENAME_EXCHANGE)
        } else {
            renameat(parent.as_fd(), &*tmp, parent.as_fd(), leaf.as_os_str())
        }
    });
    match put {
        Ok(Ok(())) if exists => {
            // `tmp` now holds what the earlier run left; remove it without following links.
            remove_at(&parent, &tmp).map_err(err)?;
            Ok(true)
        }
        Ok(Ok(())) => Ok(false),
        Ok(Err(e)) => {
            let _ = remove_at(&parent, &tmp);
            Err(err(errno(e)))
        }
        Err(cancelled) => {
            let _ = remove_at(&parent, &tmp);
            Err(cancelled)
        }
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
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
    let mut d = nix::dir::Dir::from_fd(dir.try_clone()?).map_err(errno)?;
    let mut names = Vec::new();
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

/// Why copying a tree stopped.
enum Copy {
    Cancelled,
    Io(io::Error),
}

impl From<io::Error> for Copy {
    fn from(e: io::Error) -> Copy {
        Copy::Io(e)
    }
}

impl From<Errno> for Copy {
    fn from(e: Errno) -> Copy {
        Copy::Io(errno(e))
    }
}

/// Copies the staged tree `sname` in `sdir` to `dname` in `ddir` (across
/// file systems), keeping modes, mtimes and symlinks; staging only holds
/// files, directories and symlinks this module made.
fn copy_tree(sdir: &OwnedFd, sname: &OsStr, ddir: &OwnedFd, dname: &OsStr, cancel: &Cancel) -> Result<(), Copy> {
    if cancel.is_cancelled() {
        return Err(Copy::Cancelled);
    }
    let st = stat_at(sdir, sname)?;
    let mtime = ts(st.st_mtime.max(0) as u64);
    let mode = Mode::from_bits_truncate(st.st_mode & 0o777);
    match file_type(&st) {
        SFlag::S_IFDIR => {
            mkdirat(ddir.as_fd(), dname, Mode::from_bits_truncate(0o700))?;
            let s = child_dir(sdir, sname, false)?;
            let d = child_dir(ddir, dname, false)?;
            for n in list_dir(&s)? {
                copy_tree(&s, &n, &d, &n, cancel)?;
            }
            fchmod(d.as_fd(), mode)?;
            Ok(futimens(d.as_fd(), &mtime, &mtime)?)
        }
        SFlag::S_IFREG => {
            let rd = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            let mut s = File::from(openat(sdir.as_fd(), sname, rd, Mode::empty())?);
            let wr = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            let mut d = File::from(openat(ddir.as_fd(), dname, wr, Mode::from_bits_truncate(0o600))?);
            let mut buf = vec![0u8; CHUNK];
            loop {
                if cancel.is_cancelled() {
                    return Err(Copy::Cancelled);
                }
                match s.read(&mut buf)? {
                    0 => break,
                    n => std::io::Write::write_all(&mut d, &buf[..n])?,
                }
            }
            fchmod(d.as_fd(), mode)?;
            Ok(futimens(d.as_fd(), &mtime, &mtime)?)
        }
        SFlag::S_IFLNK => {
            let target = nix::fcntl::readlinkat(sdir.as_fd(), sname)?;
            symlinkat(target.as_os_str(), ddir.as_fd(), dname)?;
            let _ = utimensat(ddir.as_fd(), dname, &mtime, &mtime, UtimensatFlags::NoFollowSymlink);
            Ok(())
        }
        _ => Err(Copy::Io(io::Error::other("unexpected file type in staging"))),
    }
}
