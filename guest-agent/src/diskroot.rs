//! Switching PID 1 from the initramfs into an image's userland: the
//! read-only userland disk (erofs) under an overlay whose upper layer lives
//! on the scratch disk, so the image is never changed and everything a step
//! writes (the workspace, /tmp, installed packages) is on disk, not in RAM.
//!
//! The disks are found by their virtio-blk serial, never by probe order.
//! The mounts the initramfs made (/dev, /proc, /sys with its cgroup2, /run)
//! move into the new root; /tmp is the overlay's own, on disk. Then the new
//! root is moved over `/` and entered with chroot (the initramfs is rootfs,
//! which pivot_root cannot leave), as switch_root does.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cordon_protocol::boot::{RootFs, ROOT_DISK_SERIAL, SCRATCH_DISK_SERIAL};

/// Where the pieces are assembled (in the initramfs, gone after the switch).
const STAGE: &str = "/.cordon";
/// How long the block devices may take to appear after their modules load.
const DISK_WAIT: Duration = Duration::from_secs(10);

fn c(p: &Path) -> std::io::Result<CString> {
    CString::new(p.as_os_str().as_encoded_bytes()).map_err(std::io::Error::other)
}

fn mount(src: &Path, target: &Path, fstype: Option<&str>, flags: libc::c_ulong, data: &str) -> std::io::Result<()> {
    let (s, t, d) = (c(src)?, c(target)?, CString::new(data).map_err(std::io::Error::other)?);
    let f = fstype.map(|f| CString::new(f).map_err(std::io::Error::other)).transpose()?;
    let fp = f.as_ref().map_or(std::ptr::null(), |f| f.as_ptr());
    // SAFETY: valid NUL-terminated strings (or null for the type).
    let rc = unsafe { libc::mount(s.as_ptr(), t.as_ptr(), fp, flags, d.as_ptr().cast()) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        return Err(std::io::Error::new(e.kind(), format!("mounting {} on {}: {e}", src.display(), target.display())));
    }
    Ok(())
}

/// The /dev node of the virtio-blk disk whose serial is `serial`.
fn find_disk(serial: &str) -> Option<PathBuf> {
    let rd = std::fs::read_dir("/sys/block").ok()?;
    rd.flatten().find_map(|e| {
        let s = std::fs::read_to_string(e.path().join("serial")).ok()?;
        (s.trim() == serial).then(|| Path::new("/dev").join(e.file_name()))
    })
}

fn wait_disk(serial: &str) -> std::io::Result<PathBuf> {
    let until = Instant::now() + DISK_WAIT;
    loop {
        if let Some(d) = find_disk(serial).filter(|d| d.exists()) {
            return Ok(d);
        }
        if Instant::now() > until {
            return Err(std::io::Error::other(format!("no disk with serial {serial} appeared within {DISK_WAIT:?}")));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Builds the overlay root and enters it. On error nothing is half-entered
/// that matters: PID 1 powers off with the message on the console.
pub fn enter(fs: RootFs) -> std::io::Result<()> {
    let lower_dev = wait_disk(ROOT_DISK_SERIAL)?;
    let scratch_dev = wait_disk(SCRATCH_DISK_SERIAL)?;
    let stage = Path::new(STAGE);
    let (lower, scratch, root) = (stage.join("lower"), stage.join("scratch"), stage.join("root"));
    for d in [&lower, &scratch, &root] {
        std::fs::create_dir_all(d)?;
    }
    mount(&lower_dev, &lower, Some(fs.as_str()), libc::MS_RDONLY, "")?;
    // The host made it with lazy inode tables: do not zero them now.
    mount(&scratch_dev, &scratch, Some("ext4"), 0, "noinit_itable")?;
    let (upper, work) = (scratch.join("upper"), scratch.join("work"));
    for d in [&upper, &work] {
        std::fs::create_dir_all(d)?;
    }
    let opts = format!("lowerdir={},upperdir={},workdir={}", lower.display(), upper.display(), work.display());
    mount(Path::new("overlay"), &root, Some("overlay"), 0, &opts)?;
    // The initramfs's /tmp tmpfs is empty now; the new root's /tmp is on disk.
    let tmp = CString::new("/tmp").expect("no NUL");
    // SAFETY: a valid path; failure leaves an unused tmpfs behind, harmlessly.
    unsafe { libc::umount2(tmp.as_ptr(), libc::MNT_DETACH) };
    for d in ["dev", "proc", "sys", "run"] {
        let target = root.join(d);
        std::fs::create_dir_all(&target)?;
        mount(&Path::new("/").join(d), &target, None, libc::MS_MOVE, "")?;
    }
    for d in ["tmp", "workspace"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    std::env::set_current_dir(&root)?;
    mount(Path::new("."), Path::new("/"), None, libc::MS_MOVE, "")?;
    let dot = CString::new(".").expect("no NUL");
    // SAFETY: a valid path.
    if unsafe { libc::chroot(dot.as_ptr()) } != 0 {
        return Err(std::io::Error::other(format!("chroot into the new root: {}", std::io::Error::last_os_error())));
    }
    std::env::set_current_dir("/")?;
    Ok(())
}
