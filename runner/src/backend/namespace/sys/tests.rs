use super::*;
use std::collections::BTreeMap;

/// Records every call; `host` says what exists on the "host".
#[derive(Default)]
struct Fake {
    calls: Vec<String>,
    host: BTreeMap<PathBuf, Kind>,
    links: BTreeMap<PathBuf, PathBuf>,
}

impl Sys for Fake {
    fn mount(
        &mut self,
        src: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()> {
        let src = src.map(|s| s.display().to_string()).unwrap_or_default();
        let fl: Vec<&str> = [
            (MsFlags::MS_BIND, "bind"),
            (MsFlags::MS_REC, "rec"),
            (MsFlags::MS_PRIVATE, "private"),
            (MsFlags::MS_REMOUNT, "remount"),
            (MsFlags::MS_RDONLY, "ro"),
            (MsFlags::MS_NOSUID, "nosuid"),
            (MsFlags::MS_NODEV, "nodev"),
            (MsFlags::MS_NOEXEC, "noexec"),
        ]
        .iter()
        .filter(|(f, _)| flags.contains(*f))
        .map(|(_, n)| *n)
        .collect();
        self.calls.push(format!(
            "mount {src} {} {} [{}] {}",
            target.display(),
            fstype.unwrap_or("-"),
            fl.join(","),
            data.unwrap_or("")
        ));
        if flags.contains(MsFlags::MS_BIND) {
            if let Some(k) = self.host.get(Path::new(&src)).copied() {
                self.host.insert(target.to_path_buf(), k);
            }
        }
        Ok(())
    }
    fn remount_ro(&mut self, target: &Path) -> nix::Result<()> {
        self.calls.push(format!("ro {}", target.display()));
        Ok(())
    }
    fn mkdir(&mut self, p: &Path) -> nix::Result<()> {
        self.calls.push(format!("mkdir {}", p.display()));
        Ok(())
    }
    fn touch(&mut self, p: &Path) -> nix::Result<()> {
        self.calls.push(format!("touch {}", p.display()));
        Ok(())
    }
    fn symlink(&mut self, target: &Path, link: &Path) -> nix::Result<()> {
        self.calls.push(format!("symlink {} -> {}", link.display(), target.display()));
        Ok(())
    }
    fn kind(&mut self, p: &Path) -> Option<Kind> {
        self.host.get(p).copied()
    }
    fn read_link(&mut self, p: &Path) -> Option<PathBuf> {
        self.links.get(p).cloned()
    }
    fn pivot_root(&mut self, new_root: &Path) -> nix::Result<()> {
        self.calls.push(format!("pivot {}", new_root.display()));
        Ok(())
    }
    fn sethostname(&mut self, name: &str) -> nix::Result<()> {
        self.calls.push(format!("hostname {name}"));
        Ok(())
    }
    fn chdir(&mut self, p: &Path) -> nix::Result<()> {
        self.calls.push(format!("chdir {}", p.display()));
        Ok(())
    }
}

fn plan(image: Option<&str>) -> RootPlan {
    RootPlan {
        image_root: image.map(PathBuf::from),
        workspace: PathBuf::from("/scratch/ws"),
        spool: Some(PathBuf::from("/scratch/spool")),
        resolv: Some(PathBuf::from("/scratch/resolv.conf")),
        hostname: "cordon".into(),
        stage: PathBuf::from("/tmp"),
        tmpfs_bytes: 64 << 20,
    }
}

fn setup_root(f: &mut Fake, p: &RootPlan) -> nix::Result<()> {
    prepare_root(f, p)?;
    f.calls.push("--- phase two".into());
    finish_root(f, p)
}

fn pos(calls: &[String], prefix: &str) -> usize {
    calls.iter().position(|c| c.starts_with(prefix)).unwrap_or_else(|| panic!("no call {prefix:?} in {calls:#?}"))
}

#[test]
fn test_setup_root_image_order_and_flags() {
    let mut f = Fake::default();
    f.host.insert("/tmp/root/etc/resolv.conf".into(), Kind::Other);
    setup_root(&mut f, &plan(Some("/cache/rootfs"))).unwrap();
    let c = &f.calls;
    // Private first: nothing propagates to the host.
    assert_eq!(c[0], "mount  / - [rec,private] ");
    assert_eq!(c[1], "mount tmpfs /tmp tmpfs [nosuid,nodev] mode=0755,size=4m");
    assert!(c.contains(&"mount /cache/rootfs /tmp/root - [bind,rec] ".to_string()), "{c:#?}");
    // The root is read-only before anything is mounted into it.
    assert!(pos(c, "ro /tmp/root") < pos(c, "mount proc ./proc"));
    // The workspace: a bind, then a remount of it that really sets nosuid,nodev.
    let ws = pos(c, "mount /scratch/ws /tmp/root/workspace - [bind] ");
    assert_eq!(c[ws + 1], "mount  /tmp/root/workspace - [bind,remount,nosuid,nodev] ", "{c:#?}");
    // The sandbox's tmpfs are sized.
    assert!(c.iter().any(|x| x.starts_with("mount tmpfs ./tmp tmpfs") && x.contains("size=67108864")), "{c:#?}");
    // What the sandbox must own (its proc, pts, writable tmpfs) comes in phase two.
    let two = pos(c, "--- phase two");
    for m in ["mount proc ./proc", "mount devpts ./dev/pts", "mount tmpfs ./tmp ", "mount tmpfs ./run "] {
        assert!(pos(c, m) > two, "{m} belongs to phase two");
    }
    assert!(pos(c, "mount /scratch/ws ") < two);
    assert!(c.contains(&"mount proc ./proc proc [nosuid,nodev,noexec] ".to_string()), "{c:#?}");
    assert!(c.iter().any(|x| x.starts_with("mount devpts ./dev/pts devpts") && x.contains("newinstance")));
    for n in DEV_NODES {
        assert!(c.contains(&format!("mount /dev/{n} /tmp/root/dev/{n} - [bind] ")), "{n}");
    }
    // No host device beyond the list: not kvm, not net/tun.
    assert!(!c.iter().any(|x| x.contains("/dev/kvm") || x.contains("/dev/net")));
    assert!(pos(c, "mount /scratch/resolv.conf /tmp/root/etc/resolv.conf") < pos(c, "pivot"));
    assert_eq!(c[c.len() - 2], "pivot .");
    assert_eq!(c[c.len() - 1], "hostname cordon");
}

#[test]
fn test_setup_root_host_rootfs_shows_only_system_dirs_and_hides_secrets() {
    let mut f = Fake::default();
    for d in ["/usr", "/etc", "/lib64"] {
        f.host.insert(d.into(), Kind::Dir);
    }
    for l in ["/bin", "/sbin", "/lib"] {
        f.host.insert(l.into(), Kind::Symlink);
        f.links.insert(l.into(), PathBuf::from(format!("usr{l}")));
    }
    f.host.insert("/etc/shadow".into(), Kind::Other);
    // After /etc is bound, its shadow file exists under the new root too.
    f.host.insert("/tmp/root/etc/shadow".into(), Kind::Other);
    setup_root(&mut f, &plan(None)).unwrap();
    let c = &f.calls;
    assert!(c.contains(&"mount /usr /tmp/root/usr - [bind,rec] ".to_string()));
    assert!(c.contains(&"ro /tmp/root/usr".to_string()));
    assert!(c.contains(&"ro /tmp/root/etc".to_string()));
    assert!(c.contains(&"symlink /tmp/root/bin -> usr/bin".to_string()));
    assert!(c.contains(&"mount /dev/null /tmp/root/etc/shadow - [bind] ".to_string()), "{c:#?}");
    for never in ["/root", "/home", "/var", "/srv", "/opt", "/mnt"] {
        assert!(!c.iter().any(|x| x.starts_with(&format!("mount {never} "))), "{never} must not be visible");
    }
    // The agent runs in PID 1 itself (cordon's own code): no binary of it
    // is bound in.
    assert!(!c.iter().any(|x| x.contains(".cordon-agent")), "{c:#?}");
    assert!(pos(c, "mount  /tmp/root - [remount,ro,nosuid,nodev]") < pos(c, "pivot"));
}

#[test]
fn test_spool_bound_only_when_given() {
    // A run that uploads no workspace gets no spool: nothing bound at
    // /.cordon-spool (it stays the image's read-only, empty directory).
    let spool = |p: &RootPlan| {
        let mut f = Fake::default();
        setup_root(&mut f, p).unwrap();
        f.calls.iter().filter(|c| c.contains(".cordon-spool")).cloned().collect::<Vec<_>>()
    };
    let with = spool(&plan(Some("/cache/rootfs")));
    assert_eq!(
        with,
        [
            "mount /scratch/spool /tmp/root/.cordon-spool - [bind] ",
            "mount  /tmp/root/.cordon-spool - [bind,remount,nosuid,nodev] "
        ]
    );
    let without = spool(&RootPlan { spool: None, ..plan(Some("/cache/rootfs")) });
    assert!(without.is_empty(), "{without:?}");
}
