//! The image tree being written, beneath DEST's directory fd. Every path is
//! resolved one component at a time with `O_NOFOLLOW`: a symlink (or file)
//! where a directory is needed blocks the entry, which is skipped and
//! counted, so nothing is ever written through a link the image planted.
//! A leaf that is in the way is removed first (never written through).
//!
//! Directories are made owner-accessible while the tree is built; their own
//! mode, owner and mtime are applied in `finish`, deepest first, so a
//! read-only directory in a lower layer does not stop a later one.

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fchmod, fstat, fstatat, futimens, mkdirat, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, mkfifoat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};
use std::collections::{BTreeMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{ImportError, Options, MAX_DEPTH};

const DIR_FLAGS: OFlag = OFlag::O_DIRECTORY.union(OFlag::O_NOFOLLOW).union(OFlag::O_CLOEXEC).union(OFlag::O_RDONLY);

/// Bytes copied between two looks at the cancel flag.
pub(super) const CHUNK: usize = 64 << 10;

pub(super) fn errno(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// An entry's ownership, permission bits and mtime, as the source says.
#[derive(Debug, Clone, Copy)]
pub(super) struct Meta {
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: i64,
}

/// Where a walk to a directory ended.
enum Walk {
    Dir(Rc<OwnedFd>),
    /// A component does not exist (and was not to be created).
    Missing,
    /// A component is a symlink or a non-directory.
    Blocked,
}

pub(super) struct Tree<'a> {
    root: Rc<OwnedFd>,
    opts: Options,
    cancel: &'a AtomicBool,
    entries: u64,
    bytes: u64,
    devices: u64,
    blocked: u64,
    first_blocked: Option<String>,
    /// Directory metadata applied in `finish`, keyed by path.
    dirs: BTreeMap<Vec<OsString>, Meta>,
    /// The last directory walked to; reused when the next entry is below it.
    cached: Option<(Vec<OsString>, Rc<OwnedFd>)>,
    /// Inside an OCI layer: every path (and its parents) the layer wrote, which
    /// an opaque whiteout keeps.
    layer: Option<HashSet<Vec<OsString>>>,
    buf: Vec<u8>,
}

impl<'a> Tree<'a> {
    pub fn open(dest: &Path, opts: &Options, cancel: &'a AtomicBool) -> Result<Tree<'a>, ImportError> {
        let fd = nix::fcntl::open(dest, OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_RDONLY, Mode::empty())
            .map_err(|e| ImportError::Write { path: dest.display().to_string(), source: errno(e) })?;
        Ok(Tree {
            root: Rc::new(fd),
            opts: opts.clone(),
            cancel,
            entries: 0,
            bytes: 0,
            devices: 0,
            blocked: 0,
            first_blocked: None,
            dirs: BTreeMap::new(),
            cached: None,
            layer: None,
            buf: vec![0u8; CHUNK],
        })
    }

    /// Device and inode of DEST, so a directory copy can leave it out.
    pub fn root_id(&self) -> Option<(u64, u64)> {
        fstat(self.root.as_fd()).ok().map(|st| (st.st_dev, st.st_ino))
    }

    pub fn max_bytes(&self) -> u64 {
        self.opts.max_bytes
    }

    pub fn check_cancel(&self) -> Result<(), ImportError> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(ImportError::Cancelled);
        }
        Ok(())
    }

    /// Counts one source entry against the cap, and looks at `cancel`.
    pub fn entry(&mut self) -> Result<(), ImportError> {
        self.check_cancel()?;
        self.entries += 1;
        if self.entries > self.opts.max_entries {
            return Err(ImportError::TooManyEntries { limit: self.opts.max_entries });
        }
        Ok(())
    }

    pub fn begin_layer(&mut self) {
        self.layer = Some(HashSet::new());
    }

    pub fn end_layer(&mut self) {
        self.layer = None;
    }

    /// A device node (or socket) the source holds: not created, counted.
    pub fn device(&mut self) {
        self.devices += 1;
    }

    fn touched(&mut self, comps: &[OsString]) {
        if let Some(set) = &mut self.layer {
            for n in 1..=comps.len() {
                if !set.contains(&comps[..n]) {
                    set.insert(comps[..n].to_vec());
                }
            }
        }
    }

    fn note_blocked(&mut self, shown: &str) {
        self.blocked += 1;
        if self.first_blocked.is_none() {
            self.first_blocked = Some(shown.to_string());
        }
    }

    /// Opens `comps` below the root as a directory, never through a symlink;
    /// with `create`, makes what is missing.
    fn walk(&mut self, comps: &[OsString], create: bool) -> Result<Walk, Errno> {
        let (mut cur, start) = match &self.cached {
            Some((k, fd)) if comps.starts_with(k) => (fd.clone(), k.len()),
            _ => (self.root.clone(), 0),
        };
        for c in &comps[start..] {
            let fd = match openat(cur.as_fd(), c.as_os_str(), DIR_FLAGS, Mode::empty()) {
                Err(Errno::ENOENT) if create => {
                    match mkdirat(cur.as_fd(), c.as_os_str(), Mode::from_bits_truncate(0o755)) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(e),
                    }
                    openat(cur.as_fd(), c.as_os_str(), DIR_FLAGS, Mode::empty())
                }
                r => r,
            };
            cur = match fd {
                Ok(fd) => Rc::new(fd),
                Err(Errno::ENOENT) => return Ok(Walk::Missing),
                Err(Errno::ELOOP | Errno::ENOTDIR) => return Ok(Walk::Blocked),
                Err(e) => return Err(e),
            };
        }
        self.cached = Some((comps.to_vec(), cur.clone()));
        Ok(Walk::Dir(cur))
    }

    /// The directory that will hold `comps`' last component, created as
    /// needed; `None` when the entry is blocked (counted).
    fn parent(&mut self, comps: &[OsString], shown: &str) -> Result<Option<Rc<OwnedFd>>, ImportError> {
        let parents = &comps[..comps.len().saturating_sub(1)];
        match self.walk(parents, true).map_err(write_err(shown))? {
            Walk::Dir(fd) => Ok(Some(fd)),
            Walk::Missing | Walk::Blocked => {
                self.note_blocked(shown);
                Ok(None)
            }
        }
    }

    /// Removes whatever is at `name` in `dir` (at path `comps`), a directory
    /// with all it holds, never following a symlink.
    fn remove(&mut self, dir: &OwnedFd, comps: &[OsString]) -> Result<(), Errno> {
        let Some(name) = comps.last() else { return Ok(()) };
        let st = match fstatat(dir.as_fd(), name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(e),
        };
        if !is_dir(st.st_mode) {
            return unlinkat(dir.as_fd(), name.as_os_str(), UnlinkatFlags::NoRemoveDir);
        }
        // The cached fd may be this directory or below it.
        self.cached = None;
        let stale: Vec<_> =
            self.dirs.range(comps.to_vec()..).map(|(k, _)| k).take_while(|k| k.starts_with(comps)).cloned().collect();
        for k in stale {
            self.dirs.remove(&k);
        }
        remove_tree(dir, name, 0)
    }

    pub fn dir(&mut self, comps: &[OsString], shown: &str, meta: Meta) -> Result<(), ImportError> {
        if !comps.is_empty() {
            let Some(parent) = self.parent(comps, shown)? else { return Ok(()) };
            let name = comps[comps.len() - 1].as_os_str();
            match fstatat(parent.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) if is_dir(st.st_mode) => {}
                Ok(_) => {
                    unlinkat(parent.as_fd(), name, UnlinkatFlags::NoRemoveDir).map_err(write_err(shown))?;
                    mkdirat(parent.as_fd(), name, Mode::from_bits_truncate(0o700)).map_err(write_err(shown))?;
                }
                Err(Errno::ENOENT) => {
                    mkdirat(parent.as_fd(), name, Mode::from_bits_truncate(0o700)).map_err(write_err(shown))?
                }
                Err(e) => return Err(write_err(shown)(e)),
            }
        }
        self.touched(comps);
        self.dirs.insert(comps.to_vec(), meta);
        Ok(())
    }

    /// Makes room for a non-directory at `comps`: its parent, with nothing
    /// left at the name.
    fn leaf(&mut self, comps: &[OsString], shown: &str) -> Result<Option<Rc<OwnedFd>>, ImportError> {
        if comps.is_empty() {
            self.note_blocked(shown);
            return Ok(None);
        }
        let Some(parent) = self.parent(comps, shown)? else { return Ok(None) };
        self.remove(&parent, comps).map_err(write_err(shown))?;
        self.touched(comps);
        Ok(Some(parent))
    }

    /// A regular file with `r`'s bytes; a read error becomes `read_err`'s.
    /// `caps`: its `security.capability` (file capabilities, as `ping`
    /// has), set when owners are kept.
    pub fn file(
        &mut self,
        comps: &[OsString],
        shown: &str,
        meta: Meta,
        caps: Option<&[u8]>,
        r: &mut dyn Read,
        read_err: &dyn Fn(io::Error) -> ImportError,
    ) -> Result<(), ImportError> {
        let Some(parent) = self.leaf(comps, shown)? else { return Ok(()) };
        let name = comps[comps.len() - 1].as_os_str();
        let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = openat(parent.as_fd(), name, flags, Mode::from_bits_truncate(0o600)).map_err(write_err(shown))?;
        let mut f = File::from(fd);
        loop {
            self.check_cancel()?;
            let n = match super::read_some(r, &mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => return Err(read_err(e)),
            };
            self.bytes += n as u64;
            if self.bytes > self.opts.max_bytes {
                return Err(ImportError::TooLarge { limit: self.opts.max_bytes });
            }
            f.write_all(&self.buf[..n]).map_err(|source| ImportError::Write { path: shown.to_string(), source })?;
        }
        self.set_meta(&f, meta, false).map_err(write_err(shown))?;
        match caps {
            // After chown, which drops capabilities.
            Some(v) if self.opts.keep_owners => set_caps(&f, v).map_err(write_err(shown)),
            _ => Ok(()),
        }
    }

    pub fn symlink(&mut self, comps: &[OsString], shown: &str, meta: Meta, target: &OsStr) -> Result<(), ImportError> {
        let Some(parent) = self.leaf(comps, shown)? else { return Ok(()) };
        let name = comps[comps.len() - 1].as_os_str();
        symlinkat(target, parent.as_fd(), name).map_err(write_err(shown))?;
        if self.opts.keep_owners {
            let (u, g) = ids(meta);
            fchownat(parent.as_fd(), name, Some(u), Some(g), AtFlags::AT_SYMLINK_NOFOLLOW).map_err(write_err(shown))?;
        }
        let t = ts(meta.mtime);
        let _ = utimensat(parent.as_fd(), name, &t, &t, UtimensatFlags::NoFollowSymlink);
        Ok(())
    }

    /// A hard link at `comps` to `target`, which must already be in the tree.
    pub fn hard_link(
        &mut self,
        comps: &[OsString],
        shown: &str,
        target: &[OsString],
        target_shown: &str,
    ) -> Result<(), ImportError> {
        let missing = || ImportError::HardLinkMissing { entry: shown.to_string(), target: target_shown.to_string() };
        let Some((tname, tparents)) = target.split_last() else { return Err(missing()) };
        let tdir = match self.walk(tparents, false).map_err(write_err(shown))? {
            Walk::Dir(fd) => fd,
            Walk::Missing | Walk::Blocked => return Err(missing()),
        };
        match fstatat(tdir.as_fd(), tname.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if !is_dir(st.st_mode) => {}
            _ => return Err(missing()),
        }
        if comps == target {
            return Ok(());
        }
        let Some(parent) = self.leaf(comps, shown)? else { return Ok(()) };
        let name = comps[comps.len() - 1].as_os_str();
        // No AT_SYMLINK_FOLLOW: a link to a symlink links the symlink itself.
        linkat(tdir.as_fd(), tname.as_os_str(), parent.as_fd(), name, AtFlags::empty()).map_err(|e| match e {
            Errno::ENOENT => missing(),
            e => write_err(shown)(e),
        })
    }

    pub fn fifo(&mut self, comps: &[OsString], shown: &str, meta: Meta) -> Result<(), ImportError> {
        let Some(parent) = self.leaf(comps, shown)? else { return Ok(()) };
        let name = comps[comps.len() - 1].as_os_str();
        mkfifoat(parent.as_fd(), name, Mode::from_bits_truncate(0o600)).map_err(write_err(shown))?;
        // O_NONBLOCK: opening a fifo for reading does not wait for a writer.
        let flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = openat(parent.as_fd(), name, flags, Mode::empty()).map_err(write_err(shown))?;
        self.set_meta(&fd, meta, false).map_err(write_err(shown))
    }

    /// `.wh.NAME`: removes `comps` (NAME in its directory) if it is there.
    pub fn whiteout(&mut self, comps: &[OsString], shown: &str) -> Result<(), ImportError> {
        let parents = &comps[..comps.len().saturating_sub(1)];
        if let Walk::Dir(parent) = self.walk(parents, false).map_err(write_err(shown))? {
            self.remove(&parent, comps).map_err(write_err(shown))?;
        }
        Ok(())
    }

    /// `.wh..wh..opq`: empties the directory `comps` of all this layer did not write.
    pub fn opaque(&mut self, comps: &[OsString], shown: &str) -> Result<(), ImportError> {
        let dir = match self.walk(comps, true).map_err(write_err(shown))? {
            Walk::Dir(fd) => fd,
            Walk::Missing | Walk::Blocked => {
                self.note_blocked(shown);
                return Ok(());
            }
        };
        self.touched(comps);
        let mut path = comps.to_vec();
        for name in list_dir(&dir).map_err(write_err(shown))? {
            path.push(name);
            if !self.layer.as_ref().is_some_and(|l| l.contains(&path)) {
                self.remove(&dir, &path).map_err(write_err(shown))?;
            }
            path.pop();
        }
        Ok(())
    }

    fn set_meta(&self, fd: &impl AsFd, meta: Meta, dir: bool) -> Result<(), Errno> {
        let mode = if self.opts.keep_owners {
            let (u, g) = ids(meta);
            // Before chmod: chown clears setuid/setgid.
            fchown(fd.as_fd(), Some(u), Some(g))?;
            meta.mode & 0o7777
        } else if dir {
            (meta.mode & 0o1777) | 0o700
        } else {
            (meta.mode & 0o1777) | 0o400
        };
        fchmod(fd.as_fd(), Mode::from_bits_truncate(mode))?;
        let t = ts(meta.mtime);
        futimens(fd.as_fd(), &t, &t)
    }

    /// Applies directory metadata (deepest first) and reports what was left
    /// out; returns (entries, bytes).
    pub fn finish(mut self, log: &dyn Fn(&str)) -> (u64, u64) {
        self.cached = None;
        let mut dirs: Vec<_> = std::mem::take(&mut self.dirs).into_iter().collect();
        dirs.sort_by_key(|(k, _)| std::cmp::Reverse(k.len()));
        for (comps, meta) in dirs {
            if let Ok(Walk::Dir(fd)) = self.walk(&comps, false) {
                let _ = self.set_meta(&*fd, meta, true);
            }
        }
        if self.devices > 0 {
            log(&format!("skipped {} device nodes and sockets (the guest's /dev is its own)", self.devices));
        }
        if let Some(first) = &self.first_blocked {
            log(&format!(
                "skipped {} entries whose directory is a symlink or file in the image, first {first} \
                 (cordon never writes through a link)",
                self.blocked
            ));
        }
        (self.entries, self.bytes)
    }
}

fn write_err(shown: &str) -> impl Fn(Errno) -> ImportError + '_ {
    move |e| ImportError::Write { path: shown.to_string(), source: errno(e) }
}

fn is_dir(mode: u32) -> bool {
    SFlag::from_bits_truncate(mode & SFlag::S_IFMT.bits()) == SFlag::S_IFDIR
}

fn ids(meta: Meta) -> (Uid, Gid) {
    // Out-of-range ids become nobody's.
    let u = u32::try_from(meta.uid).unwrap_or(65534);
    let g = u32::try_from(meta.gid).unwrap_or(65534);
    (Uid::from_raw(u), Gid::from_raw(g))
}

const CAPS_XATTR: &std::ffi::CStr = c"security.capability";

/// Sets `security.capability`; a file system without xattrs goes without.
fn set_caps(f: &File, value: &[u8]) -> Result<(), Errno> {
    use std::os::fd::AsRawFd;
    // SAFETY: the name is a NUL-terminated constant, and `value` is a live
    // slice whose pointer and length go together; the fd is open.
    let r = unsafe { libc::fsetxattr(f.as_raw_fd(), CAPS_XATTR.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    match Errno::result(r) {
        Ok(_) | Err(Errno::EOPNOTSUPP) => Ok(()),
        Err(e) => Err(e),
    }
}

/// A file's `security.capability`, if it has one.
pub(super) fn get_caps(f: &File) -> Option<Vec<u8>> {
    use std::os::fd::AsRawFd;
    let mut buf = [0u8; 256];
    // SAFETY: as in `set_caps`; the kernel writes at most `buf.len()` bytes.
    let n = unsafe { libc::fgetxattr(f.as_raw_fd(), CAPS_XATTR.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    usize::try_from(n).ok().map(|n| buf[..n].to_vec())
}

fn ts(secs: i64) -> TimeSpec {
    TimeSpec::new(secs, 0)
}

pub(super) fn list_dir(dir: &OwnedFd) -> Result<Vec<OsString>, Errno> {
    use std::os::unix::ffi::OsStrExt;
    let mut d = nix::dir::Dir::from_fd(dir.try_clone().map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)))?)?;
    let mut names = Vec::new();
    for e in d.iter() {
        let n = e?.file_name().to_bytes().to_vec();
        if n != b"." && n != b".." {
            names.push(OsStr::from_bytes(&n).to_os_string());
        }
    }
    names.sort();
    Ok(names)
}

/// Removes the directory `name` in `dir` and all below it without following
/// a symlink. The tree is no deeper than the entries that made it.
fn remove_tree(dir: &OwnedFd, name: &OsStr, depth: usize) -> Result<(), Errno> {
    if depth > MAX_DEPTH + 1 {
        return Err(Errno::ELOOP);
    }
    let sub = openat(dir.as_fd(), name, DIR_FLAGS, Mode::empty())?;
    for n in list_dir(&sub)? {
        match fstatat(sub.as_fd(), n.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if is_dir(st.st_mode) => remove_tree(&sub, &n, depth + 1)?,
            Ok(_) => unlinkat(sub.as_fd(), n.as_os_str(), UnlinkatFlags::NoRemoveDir)?,
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(e),
        }
    }
    unlinkat(dir.as_fd(), name, UnlinkatFlags::RemoveDir)
}
