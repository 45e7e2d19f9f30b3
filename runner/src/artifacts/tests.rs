use super::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;

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
    let got = stage(&tar[..], &root, &StageOptions { umask: 0, ..Default::default() }).unwrap();
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
    let got = stage(&tar[..], &root, &StageOptions::default()).unwrap();
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
    let got = stage(&tar[..], &root, &StageOptions { single_file: true, ..Default::default() }).unwrap();
    assert!(std::fs::symlink_metadata(root.join("app")).is_err());
    assert_eq!(got.skipped.len(), 1);
}

#[test]
fn test_stage_truncated_archive_is_an_error() {
    let (_t, root) = staging();
    let mut tar = Tar::new().file("big", 0o644, &[7u8; 4096]).bytes();
    tar.truncate(1024);
    assert!(matches!(stage(&tar[..], &root, &StageOptions::default()), Err(ArtifactError::Archive(_))));
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
    assert!(install(&new, &dest(&arts, "out"), &Cancel::default()).unwrap(), "replaced");
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
    let e = install(&new, &dest(&arts, "out/d/f"), &Cancel::default()).unwrap_err();
    assert!(matches!(e, ArtifactError::NotADirectory { .. }), "{e}");
    assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 0, "nothing written through the link");
    // The link itself as the destination is replaced, not followed.
    assert!(install(&new, &dest(&arts, "out"), &Cancel::default()).unwrap());
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
    assert!(!install(&src, &dest(t.path(), "x/tree"), &Cancel::default()).unwrap());
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
    let got = stage(&b.into_inner().unwrap()[..], &root, &StageOptions::default()).unwrap();
    assert_eq!(got.skipped.len(), 1, "{:?}", got.skipped);
    assert_eq!(std::fs::read(root.join(&ok)).unwrap(), b"ok");
}

#[test]
fn test_stage_skips_a_leaf_where_a_directory_exists() {
    let (_t, root) = staging();
    let tar = Tar::new()
        .entry(tar::EntryType::Directory, "d", 0o755, b"", None)
        .file("d/inner", 0o644, b"kept")
        .file("d", 0o644, b"file over a directory")
        .entry(tar::EntryType::Symlink, "d", 0o777, b"", Some("inner"))
        .file("after", 0o644, b"still unpacked")
        .bytes();
    let got = stage(&tar[..], &root, &StageOptions::default()).unwrap();
    assert!(std::fs::symlink_metadata(root.join("d")).unwrap().is_dir());
    assert_eq!(std::fs::read(root.join("d/inner")).unwrap(), b"kept");
    assert_eq!(std::fs::read(root.join("after")).unwrap(), b"still unpacked");
    assert_eq!(got.skipped.len(), 2, "{:?}", got.skipped);
    assert!(got.skipped.iter().all(|s| s.starts_with("d: a directory of that name exists")), "{:?}", got.skipped);
}

#[test]
fn test_stage_applies_the_umask() {
    let tar = Tar::new()
        .file("f", 0o777, b"x")
        .file("suid", 0o4777, b"x")
        .file("ro", 0o444, b"x")
        .entry(tar::EntryType::Directory, "d", 0o777, b"", None)
        .entry(tar::EntryType::Directory, "s", 0o1777, b"", None)
        .entry(tar::EntryType::Directory, "locked", 0o000, b"", None)
        .bytes();
    // (umask, f and suid, ro, d and s, locked): directories keep owner rwx.
    for (umask, file, ro, dir, locked) in
        [(0o022, 0o755, 0o444, 0o755, 0o700), (0o077, 0o700, 0o400, 0o700, 0o700), (0o002, 0o775, 0o444, 0o775, 0o700)]
    {
        let (_t, root) = staging();
        stage(&tar[..], &root, &StageOptions { umask, ..Default::default() }).unwrap();
        let mode = |n: &str| std::fs::symlink_metadata(root.join(n)).unwrap().permissions().mode() & 0o7777;
        assert_eq!((mode("f"), mode("suid"), mode("ro")), (file, file, ro), "umask {umask:o}");
        assert_eq!((mode("d"), mode("s"), mode("locked")), (dir, dir, locked), "umask {umask:o}");
    }
}

#[test]
fn test_parse_umask_table() {
    assert_eq!(parse_umask("Name:\tcordon\nUmask:\t0022\nState:\tR\n"), Some(0o022));
    assert_eq!(parse_umask("Umask:\t0077\n"), Some(0o077));
    assert_eq!(parse_umask("Umask:\t7777\n"), Some(0o777));
    assert_eq!(parse_umask("Name:\tcordon\n"), None);
    assert_eq!(parse_umask("Umask:\tbogus\n"), None);
    // This process's own, read without umask(2).
    assert_eq!(process_umask() & !0o777, 0);
}

/// A tar stream that sets `cancel` once `after` bytes were read from it.
struct CancelAfter<'a> {
    data: &'a [u8],
    read: usize,
    after: usize,
    cancel: Cancel,
}

impl Read for CancelAfter<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.data.len() - self.read).min(512);
        buf[..n].copy_from_slice(&self.data[self.read..self.read + n]);
        self.read += n;
        if self.read >= self.after {
            self.cancel.cancel();
        }
        Ok(n)
    }
}

#[test]
fn test_stage_stops_when_cancelled() {
    let mut t = Tar::new();
    for i in 0..100 {
        t = t.file(&format!("f{i}"), 0o644, b"data");
    }
    let big = vec![7u8; 1 << 20];
    let tar = t.file("big", 0o644, &big).file("after", 0o644, b"x").bytes();
    // Cancelled between entries: the rest is never unpacked.
    let (_t, root) = staging();
    let cancel = Cancel::default();
    let r = CancelAfter { data: &tar, read: 0, after: 10 * 1024, cancel: cancel.clone() };
    let e = stage(r, &root, &StageOptions { cancel, ..Default::default() }).unwrap_err();
    assert!(matches!(e, ArtifactError::Cancelled), "{e}");
    let made = std::fs::read_dir(&root).unwrap().count();
    assert!((1..100).contains(&made), "unpacking stopped after some of the entries: {made}");
    // Cancelled inside a large file: it stops within a chunk.
    let (_t, root) = staging();
    let cancel = Cancel::default();
    let r = CancelAfter { data: &tar, read: 0, after: tar.len() - big.len() / 2, cancel: cancel.clone() };
    let e = stage(r, &root, &StageOptions { cancel, ..Default::default() }).unwrap_err();
    assert!(matches!(e, ArtifactError::Cancelled), "{e}");
    assert!(std::fs::metadata(root.join("big")).unwrap().len() < big.len() as u64);
    assert!(!root.join("after").exists());
    // Positive control: uncancelled, everything is there.
    let (_t, root) = staging();
    let got = stage(&tar[..], &root, &StageOptions::default()).unwrap();
    assert_eq!((got.entries, std::fs::read_dir(&root).unwrap().count()), (102, 102));
}

#[test]
fn test_install_never_happens_after_cancel() {
    let t = tempfile::tempdir().unwrap();
    let arts = t.path().join("arts");
    std::fs::create_dir_all(arts.join("out")).unwrap();
    std::fs::write(arts.join("out/old"), b"earlier run").unwrap();
    let new = t.path().join("stage/out");
    std::fs::create_dir_all(&new).unwrap();
    std::fs::write(new.join("f"), b"new").unwrap();
    let cancel = Cancel::default();
    cancel.cancel();
    assert!(matches!(install(&new, &dest(&arts, "out"), &cancel), Err(ArtifactError::Cancelled)));
    assert_eq!(std::fs::read(arts.join("out/old")).unwrap(), b"earlier run", "the earlier tree stays");
    let names: Vec<_> = std::fs::read_dir(&arts).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![OsString::from("out")], "no temp names left behind");
    // Across file systems the copy itself stops, and its half is removed.
    if let Ok(shm) = tempfile::tempdir_in("/dev/shm") {
        let src = shm.path().join("tree");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("f"), b"x").unwrap();
        assert!(matches!(install(&src, &dest(&arts, "tree"), &cancel), Err(ArtifactError::Cancelled)));
        assert!(!arts.join("tree").exists());
    }
    // Positive control: the same install, not cancelled.
    assert!(install(&new, &dest(&arts, "out"), &Cancel::default()).unwrap());
    assert_eq!(std::fs::read(arts.join("out/f")).unwrap(), b"new");
}

#[test]
fn test_stage_caps_entries() {
    let mut t = Tar::new();
    for i in 0..10 {
        t = t.file(&format!("f{i}"), 0o644, b"");
    }
    let tar = t.bytes();
    let (_t, root) = staging();
    let e = stage(&tar[..], &root, &StageOptions { max_entries: 9, ..Default::default() }).unwrap_err();
    assert!(matches!(e, ArtifactError::TooManyEntries), "{e}");
    let (_t, root) = staging();
    assert_eq!(stage(&tar[..], &root, &StageOptions { max_entries: 10, ..Default::default() }).unwrap().entries, 10);
}

#[test]
fn test_stage_directory_mtimes_survive_any_entry_order() {
    // Entries come back into directories the walk has left, after their
    // own entry set their mtime: the mtimes must still be the archive's.
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |kind: tar::EntryType, path: &str, mtime: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(if kind.is_dir() { 0o750 } else { 0o640 });
        h.set_mtime(mtime);
        h.set_size(0);
        // Raw name bytes, so the root `./` can be written.
        let name = &mut h.as_gnu_mut().expect("gnu header").name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        b.append(&h, std::io::empty()).unwrap();
    };
    add(tar::EntryType::Directory, "a", 1_000);
    add(tar::EntryType::Directory, "a/b", 2_000);
    add(tar::EntryType::Regular, "a/b/f", 5);
    add(tar::EntryType::Regular, "c/g", 5);
    add(tar::EntryType::Regular, "a/h", 5);
    add(tar::EntryType::Regular, "a/b/i", 5);
    add(tar::EntryType::Directory, "c", 3_000);
    add(tar::EntryType::Directory, "./", 4_000);
    add(tar::EntryType::Regular, "j", 5);
    // A duplicate directory entry: the later one wins.
    add(tar::EntryType::Directory, "a/b", 2_500);
    let tar = b.into_inner().unwrap();
    let (_t, root) = staging();
    let got = stage(&tar[..], &root, &StageOptions::default()).unwrap();
    assert!(got.skipped.is_empty(), "{:?}", got.skipped);
    let mtime = |p: &str| std::fs::symlink_metadata(root.join(p)).unwrap().mtime();
    assert_eq!((mtime("a"), mtime("a/b"), mtime("c"), mtime(".")), (1_000, 2_500, 3_000, 4_000));
    let mode = |p: &str| std::fs::symlink_metadata(root.join(p)).unwrap().permissions().mode() & 0o7777;
    assert_eq!((mode("a"), mode("a/b"), mode("a/b/i")), (0o750, 0o750, 0o640));
    for f in ["a/b/f", "c/g", "a/h", "a/b/i", "j"] {
        assert!(root.join(f).is_file(), "{f}");
    }
}

fn job_dir(anchor: &Path, below: &str) -> Destination {
    dest(anchor, below)
}

#[test]
fn test_prepare_dir_marks_what_it_creates_and_checks_job_dirs() {
    let t = tempfile::tempdir().unwrap();
    // A directory cordon creates gets the marker, and is then cordon's.
    let made = job_dir(t.path(), "build/out");
    assert!(check_dir(&made).is_ok(), "not there yet: fine");
    prepare_dir(&made, true).unwrap();
    assert!(t.path().join("build/out").join(MARKER).is_file());
    assert!(check_dir(&made).is_ok());
    prepare_dir(&made, true).unwrap();
    // An existing directory without the marker, or with a forged one, is not.
    std::fs::create_dir(t.path().join("src")).unwrap();
    let src = job_dir(t.path(), "src");
    assert!(matches!(check_dir(&src), Err(ArtifactError::NotCordons { .. })));
    assert!(matches!(prepare_dir(&src, true), Err(ArtifactError::NotCordons { .. })));
    let ino = std::fs::metadata(t.path().join("src")).unwrap().ino();
    std::fs::write(t.path().join("src").join(MARKER), format!("cordon artifacts directory\ninode {}\n", ino + 1))
        .unwrap();
    assert!(matches!(check_dir(&src), Err(ArtifactError::NotCordons { .. })), "a marker for another inode");
    std::fs::remove_file(t.path().join("src").join(MARKER)).unwrap();
    nix::unistd::mkfifo(&t.path().join("src").join(MARKER), Mode::from_bits_truncate(0o600)).unwrap();
    assert!(matches!(check_dir(&src), Err(ArtifactError::NotCordons { .. })), "a fifo marker, without hanging");
    // The command line's directories are the user's: no marker needed.
    prepare_dir(&src, false).unwrap();
    // A symlink in the way is never followed.
    std::os::unix::fs::symlink(t.path().join("build"), t.path().join("link")).unwrap();
    let link = job_dir(t.path(), "link/out");
    assert!(matches!(check_dir(&link), Err(ArtifactError::NotADirectory { .. })));
    assert!(matches!(prepare_dir(&link, true), Err(ArtifactError::NotADirectory { .. })));
}

#[test]
fn test_stage_never_brings_out_a_git_directory() {
    let (_t, root) = staging();
    let tar =
        Tar::new().file("src/.GIT/config", 0o644, b"[core]\nfsmonitor = evil\n").file("src/ok", 0o644, b"ok").bytes();
    let got = stage(&tar[..], &root, &StageOptions::default()).unwrap();
    assert!(!root.join("src/.GIT").exists());
    assert_eq!(std::fs::read(root.join("src/ok")).unwrap(), b"ok");
    assert_eq!(got.skipped.len(), 1, "{:?}", got.skipped);
}
