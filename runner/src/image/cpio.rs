//! A newc ("070701") cpio writer for the initramfs. Entries are written in
//! the order given; parents must precede children (the kernel creates no
//! directories on its own).

use std::io::{self, Write};

pub struct CpioWriter<W: Write> {
    w: W,
    ino: u32,
    written: u64,
}

impl<W: Write> CpioWriter<W> {
    pub fn new(w: W) -> Self {
        CpioWriter { w, ino: 1, written: 0 }
    }

    fn header(&mut self, name: &str, mode: u32, size: usize, rdev: (u32, u32)) -> io::Result<()> {
        let name = name.trim_start_matches('/');
        let namesize = name.len() + 1;
        let fields = [self.ino, mode, 0, 0, 1, 0, size as u32, 0, 0, rdev.0, rdev.1, namesize as u32, 0];
        self.ino += 1;
        let mut h = String::with_capacity(110);
        h.push_str("070701");
        for f in fields {
            h.push_str(&format!("{f:08x}"));
        }
        self.put(h.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.w.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0u8; 3][..n])
    }

    pub fn dir(&mut self, name: &str, perm: u32) -> io::Result<()> {
        self.header(name, 0o040000 | perm, 0, (0, 0))
    }

    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.header(name, 0o100000 | perm, data.len(), (0, 0))?;
        self.put(data)?;
        self.pad()
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> io::Result<()> {
        self.header(name, 0o120777, target.len(), (0, 0))?;
        self.put(target.as_bytes())?;
        self.pad()
    }

    pub fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.header(name, 0o020000 | perm, 0, (major, minor))
    }

    pub fn finish(mut self) -> io::Result<W> {
        self.header("TRAILER!!!", 0, 0, (0, 0))?;
        Ok(self.w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_cpio_layout_and_alignment() {
        let mut c = CpioWriter::new(Vec::new());
        c.dir("/etc", 0o755).unwrap();
        c.file("etc/hostname", 0o644, b"cordon\n").unwrap();
        c.symlink("sh", "busybox").unwrap();
        c.char_dev("dev/console", 0o600, 5, 1).unwrap();
        let buf = c.finish().unwrap();
        assert_eq!(&buf[..6], b"070701");
        assert_eq!(buf.len() % 4, 0);
        let s = String::from_utf8_lossy(&buf);
        assert!(s.contains("etc/hostname\0"));
        assert!(s.contains("cordon\n"));
        assert!(s.contains("TRAILER!!!"));
        // Second header starts 4-aligned right after "etc\0" + padding.
        let second = buf.windows(6).skip(1).position(|w| w == b"070701").unwrap() + 1;
        assert_eq!(second % 4, 0);
        // The char device carries rdev 5:1.
        let dev = s.find("dev/console").unwrap() - 110;
        assert_eq!(&s[dev + 6 + 9 * 8..dev + 6 + 10 * 8], "00000005");
        assert_eq!(&s[dev + 6 + 10 * 8..dev + 6 + 11 * 8], "00000001");
    }

    #[test]
    fn test_cpio_unpacks_with_system_cpio() {
        if std::process::Command::new("cpio").arg("--version").output().is_err() {
            panic!("cpio not installed: scripts/setup.sh installs it");
        }
        let mut c = CpioWriter::new(Vec::new());
        c.dir("d", 0o755).unwrap();
        c.file("d/f", 0o640, b"abc").unwrap();
        c.symlink("d/l", "f").unwrap();
        let buf = c.finish().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("cpio")
            .args(["-idm", "--quiet"])
            .current_dir(dir.path())
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&buf).unwrap();
        assert!(child.wait().unwrap().success());
        assert_eq!(std::fs::read(dir.path().join("d/f")).unwrap(), b"abc");
        assert_eq!(std::fs::read_link(dir.path().join("d/l")).unwrap().to_str(), Some("f"));
    }
}
