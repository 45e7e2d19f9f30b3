//! A rootfs directory, copied into the tree. The source is walked with
//! directory fds and `O_NOFOLLOW`: a symlink in it is copied as a symlink,
//! never entered, so nothing outside the source is read. Hard links between
//! its files stay hard links; DEST itself is left out should it lie inside.

use nix::errno::Errno;
use nix::fcntl::{openat, readlinkat, AtFlags, OFlag};
use nix::sys::stat::{fstatat, FileStat, Mode, SFlag};
use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use super::tree::{errno, get_caps, list_dir, Meta, Tree};
use super::{ImportError, MAX_DEPTH};

const DIR_FLAGS: OFlag = OFlag::O_DIRECTORY.union(OFlag::O_NOFOLLOW).union(OFlag::O_CLOEXEC).union(OFlag::O_RDONLY);

/// Opens the user's directory (the path itself may go through symlinks: it
/// is the user's own).
pub(super) fn open_source(src: &Path) -> Result<OwnedFd, ImportError> {
    nix::fcntl::open(src, OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_RDONLY, Mode::empty())
        .map_err(|e| ImportError::Open { path: src.to_path_buf(), source: errno(e) })
}

struct Copy<'s, 't, 'a> {
    src: &'s Path,
    tree: &'t mut Tree<'a>,
    /// First path of each multiply-linked file seen, by (device, inode).
    links: HashMap<(u64, u64), Vec<OsString>>,
    dest: Option<(u64, u64)>,
}

/// Copies the directory `root` (at `src`) into the tree.
pub(super) fn copy(root: &OwnedFd, src: &Path, tree: &mut Tree) -> Result<(), ImportError> {
    let st = nix::sys::stat::fstat(root.as_fd())
        .map_err(|e| ImportError::Open { path: src.to_path_buf(), source: errno(e) })?;
    tree.dir(&[], "/", meta(&st))?;
    let dest = tree.root_id();
    let mut c = Copy { src, tree, links: HashMap::new(), dest };
    c.dir(root, &mut Vec::new())
}

fn meta(st: &FileStat) -> Meta {
    Meta { mode: st.st_mode & 0o7777, uid: st.st_uid.into(), gid: st.st_gid.into(), mtime: st.st_mtime }
}

fn kind(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

impl Copy<'_, '_, '_> {
    fn path(&self, comps: &[OsString]) -> PathBuf {
        let mut p = self.src.to_path_buf();
        p.extend(comps);
        p
    }

    fn read_err(&self, comps: &[OsString]) -> impl Fn(Errno) -> ImportError {
        let path = self.path(comps);
        move |e| ImportError::Open { path: path.clone(), source: errno(e) }
    }

    fn dir(&mut self, fd: &OwnedFd, comps: &mut Vec<OsString>) -> Result<(), ImportError> {
        for name in list_dir(fd).map_err(self.read_err(comps))? {
            self.tree.entry()?;
            comps.push(name);
            self.entry(fd, comps)?;
            comps.pop();
        }
        Ok(())
    }

    fn entry(&mut self, fd: &OwnedFd, comps: &mut Vec<OsString>) -> Result<(), ImportError> {
        let name = comps.last().expect("the caller pushed the name").clone();
        let st = match fstatat(fd.as_fd(), name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            // Gone since it was listed.
            Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(self.read_err(comps)(e)),
        };
        let shown = Path::new("/").join(comps.iter().collect::<PathBuf>()).display().to_string();
        if comps.len() > MAX_DEPTH {
            return Err(ImportError::TooDeep { entry: shown, limit: MAX_DEPTH });
        }
        match kind(&st) {
            SFlag::S_IFDIR => {
                if self.dest == Some((st.st_dev, st.st_ino)) {
                    return Ok(());
                }
                let sub =
                    openat(fd.as_fd(), name.as_os_str(), DIR_FLAGS, Mode::empty()).map_err(self.read_err(comps))?;
                self.tree.dir(comps, &shown, meta(&st))?;
                self.dir(&sub, comps)
            }
            SFlag::S_IFREG => {
                if st.st_nlink > 1 {
                    if let Some(first) = self.links.get(&(st.st_dev, st.st_ino)) {
                        let first = first.clone();
                        let fshown = Path::new("/").join(first.iter().collect::<PathBuf>()).display().to_string();
                        return self.tree.hard_link(comps, &shown, &first, &fshown);
                    }
                    self.links.insert((st.st_dev, st.st_ino), comps.clone());
                }
                // O_NONBLOCK: should it have become a fifo since, opening does not hang.
                let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
                let f = File::from(
                    openat(fd.as_fd(), name.as_os_str(), flags, Mode::empty()).map_err(self.read_err(comps))?,
                );
                let path = self.path(comps);
                if !f.metadata().is_ok_and(|m| m.is_file()) {
                    return Err(ImportError::Open {
                        path,
                        source: std::io::Error::other("it changed while being copied"),
                    });
                }
                let read_err = |source| ImportError::Open { path: path.clone(), source };
                let caps = get_caps(&f);
                self.tree.file(comps, &shown, meta(&st), caps.as_deref(), &mut &f, &read_err)
            }
            SFlag::S_IFLNK => {
                let target = readlinkat(fd.as_fd(), name.as_os_str()).map_err(self.read_err(comps))?;
                self.tree.symlink(comps, &shown, meta(&st), target.as_os_str())
            }
            SFlag::S_IFIFO => self.tree.fifo(comps, &shown, meta(&st)),
            _ => {
                self.tree.device();
                Ok(())
            }
        }
    }
}
