//! The namespace backend's view of an image: its initramfs unpacked into a
//! directory beside it (`rootfs/`), once, and then bound read-only as the
//! sandbox's root. Kernel modules and device nodes are left out (the
//! sandbox gets a minimal /dev of its own); an empty /etc/resolv.conf is a
//! mount point for the gate's DNS address.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use super::{io, Image, ImageError};

/// The image's rootfs directory, unpacked from its initramfs on first use.
pub fn rootfs(image: &Image) -> Result<PathBuf, ImageError> {
    let dir = image.dir.join("rootfs");
    if dir.join("etc/cordon/rootfs-complete").exists() {
        return Ok(dir);
    }
    let tmp = tempfile::tempdir_in(&image.dir).map_err(io(&image.dir))?;
    let f = std::fs::File::open(image.initramfs()).map_err(io(image.initramfs()))?;
    unpack_newc(std::io::BufReader::new(f), tmp.path()).map_err(io(image.initramfs()))?;
    for d in ["etc/cordon", "dev", "proc", "tmp", "run", "workspace", ".cordon-spool"] {
        std::fs::create_dir_all(tmp.path().join(d)).map_err(io(tmp.path()))?;
    }
    std::fs::write(tmp.path().join("etc/resolv.conf"), b"").map_err(io(tmp.path()))?;
    std::fs::write(tmp.path().join("etc/cordon/rootfs-complete"), b"").map_err(io(tmp.path()))?;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).map_err(io(tmp.path()))?;
    let staged = tmp.keep();
    if std::fs::rename(&staged, &dir).is_err() {
        // Another cordon unpacked it first; theirs is the same.
        let _ = std::fs::remove_dir_all(&staged);
    }
    Ok(dir)
}

fn hex_field(h: &[u8], i: usize) -> std::io::Result<u32> {
    let s = std::str::from_utf8(&h[6 + i * 8..6 + (i + 1) * 8]).map_err(std::io::Error::other)?;
    u32::from_str_radix(s, 16).map_err(std::io::Error::other)
}

fn skip_pad<R: Read>(r: &mut R, n: usize) -> std::io::Result<()> {
    let pad = (4 - n % 4) % 4;
    let mut b = [0u8; 3];
    r.read_exact(&mut b[..pad])
}

/// Unpacks a newc cpio archive (cordon's own initramfs) into `dest`:
/// directories, regular files and symlinks, without kernel modules.
pub fn unpack_newc<R: Read>(mut r: R, dest: &Path) -> std::io::Result<()> {
    loop {
        let mut h = [0u8; 110];
        r.read_exact(&mut h)?;
        if &h[..6] != b"070701" {
            return Err(std::io::Error::other("not a newc cpio archive"));
        }
        let mode = hex_field(&h, 1)?;
        let size = hex_field(&h, 6)? as usize;
        let namesize = hex_field(&h, 11)? as usize;
        let mut name = vec![0u8; namesize];
        r.read_exact(&mut name)?;
        skip_pad(&mut r, 110 + namesize)?;
        let name = String::from_utf8_lossy(&name[..namesize.saturating_sub(1)]).into_owned();
        let mut data = vec![0u8; size];
        r.read_exact(&mut data)?;
        skip_pad(&mut r, size)?;
        if name == "TRAILER!!!" {
            return Ok(());
        }
        let rel = Path::new(&name);
        if rel.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
            || rel.starts_with("lib/modules")
        {
            continue;
        }
        let p = dest.join(rel);
        let perm = std::fs::Permissions::from_mode(mode & 0o7777);
        match mode & 0o170000 {
            0o040000 => {
                std::fs::create_dir_all(&p)?;
                std::fs::set_permissions(&p, perm)?;
            }
            0o100000 => {
                std::fs::write(&p, &data)?;
                std::fs::set_permissions(&p, perm)?;
            }
            0o120000 => std::os::unix::fs::symlink(String::from_utf8_lossy(&data).as_ref(), &p)?,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_unpack_newc_round_trip_skips_modules_and_devices() {
        let mut buf = Vec::new();
        {
            let mut w = super::super::cpio::CpioWriter::new(&mut buf);
            w.dir("bin", 0o755).unwrap();
            w.file("bin/busybox", 0o755, b"\x7fELF...").unwrap();
            w.symlink("bin/sh", "/bin/busybox").unwrap();
            w.char_dev("dev/null", 0o666, 1, 3).unwrap();
            w.dir("lib", 0o755).unwrap();
            w.dir("lib/modules", 0o755).unwrap();
            w.file("lib/modules/x.ko", 0o644, b"ko").unwrap();
            w.finish().unwrap();
        }
        let t = tempfile::tempdir().unwrap();
        unpack_newc(&buf[..], t.path()).unwrap();
        assert_eq!(std::fs::read(t.path().join("bin/busybox")).unwrap(), b"\x7fELF...");
        assert_eq!(std::fs::metadata(t.path().join("bin/busybox")).unwrap().permissions().mode() & 0o777, 0o755);
        assert_eq!(std::fs::read_link(t.path().join("bin/sh")).unwrap(), Path::new("/bin/busybox"));
        assert!(!t.path().join("dev/null").exists());
        assert!(!t.path().join("lib/modules/x.ko").exists());
    }
}
