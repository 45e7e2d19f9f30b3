use super::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

/// A tar stream built entry by entry, including entries tar's Builder would
/// refuse to write from a real file system.
struct Tar(tar::Builder<Vec<u8>>);

impl Tar {
    fn new() -> Tar {
        Tar(tar::Builder::new(Vec::new()))
    }

    fn entry(mut self, kind: tar::EntryType, path: &str, mode: u32, data: &[u8], link: Option<&str>) -> Tar {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_mtime(1_000_000_000);
        h.set_size(data.len() as u64);
        // Raw name bytes, so `../x` and `/x` can be written.
        let name = &mut h.as_gnu_mut().expect("gnu header").name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        if let Some(l) = link {
            h.set_link_name(l).unwrap();
        }
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }

    fn file(self, path: &str, mode: u32, data: &[u8]) -> Tar {
        self.entry(tar::EntryType::Regular, path, mode, data, None)
    }

    fn bytes(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

fn staging() -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("s");
    std::fs::create_dir(&root).unwrap();
    (t, root)
}

#[test]
fn test_symlink_stays_inside_table() {
    let cases = [
        (0, "x", true),
        (0, "./x/y", true),
        (0, "../x", false),
        (1, "../x", true),
        (1, "../../x", false),
        (2, "../../x/y", true),
        (3, "a/../../b", false),
        (3, "a/..", false),
        (0, "/etc/passwd", false),
        (5, "/etc", false),
        (0, "", false),
        (0, "..", false),
        (1, "..", true),
    ];
    for (depth, target, want) in cases {
        assert_eq!(symlink_stays_inside(depth, Path::new(target)), want, "{depth} {target}");
    }
}

#[test]
fn test_stage_masks_modes_and_skips_special_entries() {
    let (_t, root) = staging();
    let tar = Tar::new()
        .file("suid", 0o4755, b"x")
        .file("sgid", 0o2775, b"y")
        .entry(tar::EntryType::Directory, "sticky", 0o1777, b"", None)
        .entry(tar::EntryType::Char, "null", 0o666, b"", None)
        .entry(tar::EntryType::Block, "disk", 0o660, b"", None)
        .entry(tar::EntryType::Fifo, "pipe", 0o644, b"", None)
        .entry(tar::EntryType::Link, "hard", 0o644, b"", Some("suid"))
        .bytes();
    let got = stage(&tar[..], &root, false).unwrap();
    let mode = |n: &str| std::fs::symlink_metadata(root.join(n)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode("suid"), 0o755);
    assert_eq!(mode("sgid"), 0o775);
    assert_eq!(mode("sticky"), 0o777);
    assert_eq!(std::fs::symlink_metadata(root.join("suid")).unwrap().mtime(), 1_000_000_000);
    for n in ["null", "disk", "pipe", "hard"] {
        assert!(std::fs::symlink_metadata(root.join(n)).is_err(), "{n} must not be created");
    }
    assert_eq!(got.skipped.len(), 4, "{:?}", got.skipped);
    assert!(got.skipped.iter().any(|s| s.starts_with("null: a character device")), "{:?}", got.skipped);
}

#[test]
fn test_stage_never_writes_through_a_symlink() {
    let (t, root) = staging();
    let outside = t.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let tar = Tar::new()
        // Absolute and escaping links are refused outright...
        .entry(tar::EntryType::Symlink, "abs", 0o777, b"", Some(outside.to_str().unwrap()))
        .entry(tar::EntryType::Symlink, "up", 0o777, b"", Some("../outside"))
        // ...and even a link that stays inside is never a parent of a later entry.
        .entry(tar::EntryType::Directory, "sub", 0o755, b"", None)
        .entry(tar::EntryType::Symlink, "in", 0o777, b"", Some("sub"))
        .file("in/f", 0o644, b"through")
        .file("abs/f", 0o644, b"through")
        .file("../escape", 0o644, b"escape")
        .file("/etc-like", 0o644, b"abs")
        .bytes();
    let got = stage(&tar[..], &root, false).unwrap();
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "nothing lands outside");
    assert!(!t.path().join("escape").exists());
    assert!(!root.join("sub/f").exists(), "no write through an inside link either");
    assert_eq!(std::fs::read_link(root.join("in")).unwrap(), Path::new("sub"));
    // The refused link's name later became a real directory of the artifact.
    assert!(std::fs::symlink_metadata(root.join("abs")).unwrap().is_dir());
    assert_eq!(std::fs::read(root.join("abs/f")).unwrap(), b"through");
    assert!(std::fs::symlink_metadata(root.join("up")).is_err());
    assert_eq!(got.skipped.len(), 5, "{:?}", got.skipped);
}

#[test]
fn test_stage_single_file_refuses_symlink() {
    let (_t, root) = staging();
    let tar = Tar::new().entry(tar::EntryType::Symlink, "app", 0o777, b"", Some("sibling")).bytes();
    let got = stage(&tar[..], &root, true).unwrap();
    assert!(std::fs::symlink_metadata(root.join("app")).is_err());
    assert_eq!(got.skipped.len(), 1);
}

#[test]
fn test_stage_truncated_archive_is_an_error() {
    let (_t, root) = staging();
    let mut tar = Tar::new().file("big", 0o644, &[7u8; 4096]).bytes();
    tar.truncate(1024);
    assert!(matches!(stage(&tar[..], &root, false), Err(ArtifactError::Archive(_))));
}

fn dest(anchor: &Path, below: &str) -> Destination {
    Destination { anchor: anchor.to_path_buf(), below: below.split('/').map(OsString::from).collect() }
}

#[test]
fn test_install_replaces_instead_of_merging() {
    let t = tempfile::tempdir().unwrap();
    let arts = t.path().join("arts");
    std::fs::create_dir_all(arts.join("out/old")).unwrap();
    std::fs::write(arts.join("out/old/stale"), b"stale").unwrap();
    let new = t.path().join("stage/out");
    std::fs::create_dir_all(new.join("d")).unwrap();
    std::fs::write(new.join("d/f"), b"new").unwrap();
    assert!(install(&new, &dest(&arts, "out")).unwrap(), "replaced");
    assert_eq!(std::fs::read(arts.join("out/d/f")).unwrap(), b"new");
    assert!(!arts.join("out/old").exists(), "the earlier run's tree is gone, not merged");
    let names: Vec<_> = std::fs::read_dir(&arts).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![OsString::from("out")], "no temp names left behind");
}

#[test]
fn test_install_refuses_a_symlink_in_the_way() {
    let t = tempfile::tempdir().unwrap();
    let arts = t.path().join("arts");
    let victim = t.path().join("victim");
    std::fs::create_dir_all(&arts).unwrap();
    std::fs::create_dir_all(&victim).unwrap();
    std::os::unix::fs::symlink(&victim, arts.join("out")).unwrap();
    let new = t.path().join("stage/f");
    std::fs::create_dir_all(new.parent().unwrap()).unwrap();
    std::fs::write(&new, b"x").unwrap();
    let e = install(&new, &dest(&arts, "out/d/f")).unwrap_err();
    assert!(matches!(e, ArtifactError::NotADirectory { .. }), "{e}");
    assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 0, "nothing written through the link");
    // The link itself as the destination is replaced, not followed.
    assert!(install(&new, &dest(&arts, "out")).unwrap());
    assert_eq!(std::fs::read(arts.join("out")).unwrap(), b"x");
    assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 0);
}

#[test]
fn test_install_copies_across_file_systems() {
    // /dev/shm is a tmpfs on Linux; the destination is on the disk.
    let Ok(shm) = tempfile::tempdir_in("/dev/shm") else { return };
    let t = tempfile::tempdir().unwrap();
    let src = shm.path().join("tree");
    std::fs::create_dir_all(src.join("a")).unwrap();
    std::fs::write(src.join("a/f"), b"data").unwrap();
    std::fs::set_permissions(src.join("a/f"), std::fs::Permissions::from_mode(0o751)).unwrap();
    std::os::unix::fs::symlink("a/f", src.join("l")).unwrap();
    assert!(!install(&src, &dest(t.path(), "x/tree")).unwrap());
    let got = t.path().join("x/tree");
    assert_eq!(std::fs::read(got.join("a/f")).unwrap(), b"data");
    assert_eq!(std::fs::metadata(got.join("a/f")).unwrap().permissions().mode() & 0o777, 0o751);
    assert_eq!(std::fs::read_link(got.join("l")).unwrap(), Path::new("a/f"));
}

#[test]
fn test_stage_skips_absurdly_deep_paths() {
    let (_t, root) = staging();
    let deep = vec!["d"; MAX_DEPTH + 1].join("/");
    let ok = vec!["d"; MAX_DEPTH].join("/");
    let mut b = tar::Builder::new(Vec::new());
    for (p, data) in [(&deep, &b"deep"[..]), (&ok, &b"ok"[..])] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, p, data).unwrap();
    }
    let got = stage(&b.into_inner().unwrap()[..], &root, false).unwrap();
    assert_eq!(got.skipped.len(), 1, "{:?}", got.skipped);
    assert_eq!(std::fs::read(root.join(&ok)).unwrap(), b"ok");
}
