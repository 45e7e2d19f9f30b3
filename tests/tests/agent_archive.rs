//! PutArchive/GetArchive through a real agent: fidelity and verification.

mod common;

use common::*;
use cordon::agent::AgentError;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;

fn set_mtime(p: &Path, secs: i64) {
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    let ts = [libc::timespec { tv_sec: secs, tv_nsec: 0 }, libc::timespec { tv_sec: secs, tv_nsec: 0 }];
    // SAFETY: valid path and two timespecs.
    assert_eq!(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW,) }, 0);
}

#[tokio::test]
async fn test_archive_put_get_round_trip_keeps_metadata() {
    let a = spawn_agent().await;
    let src = tempfile::tempdir().unwrap();
    let s = src.path();
    std::fs::create_dir_all(s.join("src/empty")).unwrap();
    std::fs::write(s.join("src/build.sh"), "#!/bin/sh\necho built\n").unwrap();
    std::fs::set_permissions(s.join("src/build.sh"), std::fs::Permissions::from_mode(0o750)).unwrap();
    std::fs::write(s.join("secret.txt"), "x").unwrap();
    std::fs::set_permissions(s.join("secret.txt"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let big: Vec<u8> = (0..5_000_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(s.join("big.bin"), &big).unwrap();
    symlink("src/build.sh", s.join("run")).unwrap();
    set_mtime(&s.join("src/build.sh"), 1_234_567_890);
    set_mtime(&s.join("src/empty"), 1_111_111_111);

    let sandbox = tempfile::tempdir().unwrap();
    let dest = sandbox.path().join("ws");
    let n = a.client.put_archive(s, dest.to_str().unwrap()).await.unwrap();
    assert!(n >= 6, "{n} entries");
    // The agent sees the files where it was told to put them.
    let r = run(&a.client, exec(&["sh", "-c", &format!("cd {} && ./run", dest.display())])).await;
    assert_eq!(r.stdout, b"built\n");

    let back = tempfile::tempdir().unwrap();
    a.client.get_archive(dest.to_str().unwrap(), back.path()).await.unwrap();
    let b = back.path();
    assert_eq!(std::fs::read(b.join("big.bin")).unwrap(), big);
    assert_eq!(std::fs::metadata(b.join("src/build.sh")).unwrap().permissions().mode() & 0o7777, 0o750);
    assert_eq!(std::fs::metadata(b.join("secret.txt")).unwrap().permissions().mode() & 0o7777, 0o600);
    assert_eq!(std::fs::metadata(b.join("src/build.sh")).unwrap().mtime(), 1_234_567_890);
    assert_eq!(std::fs::read_link(b.join("run")).unwrap(), Path::new("src/build.sh"));
    let empty = std::fs::metadata(b.join("src/empty")).unwrap();
    assert!(empty.is_dir());
    assert_eq!(empty.mtime(), 1_111_111_111);
    assert_eq!(std::fs::read_dir(b.join("src/empty")).unwrap().count(), 0);

    // A single file comes back under its own name.
    let one = tempfile::tempdir().unwrap();
    a.client.get_archive(dest.join("secret.txt").to_str().unwrap(), one.path()).await.unwrap();
    assert_eq!(std::fs::read(one.path().join("secret.txt")).unwrap(), b"x");
}

#[tokio::test]
async fn test_archive_wrong_checksum_detected_and_nothing_unpacked() {
    let a = spawn_agent().await;
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("f"), "payload").unwrap();
    let mut tar = Vec::new();
    cordon_protocol::archive::pack(src.path(), &mut tar).unwrap();
    let sandbox = tempfile::tempdir().unwrap();
    let dest = sandbox.path().join("ws");
    let bad = "0".repeat(64);
    let err = a.client.put_archive_raw(&tar, dest.to_str().unwrap(), tar.len() as u64, &bad).await.unwrap_err();
    assert!(matches!(err, AgentError::ChecksumMismatch(_)), "{err}");
    assert!(!dest.exists(), "a corrupt archive must not be unpacked");
    // Wrong size with the right hash is caught too.
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&tar));
    let err = a.client.put_archive_raw(&tar, dest.to_str().unwrap(), tar.len() as u64 + 1, &sha).await.unwrap_err();
    assert!(matches!(err, AgentError::ChecksumMismatch(_)), "{err}");
    // And the honest claim works.
    a.client.put_archive_raw(&tar, dest.to_str().unwrap(), tar.len() as u64, &sha).await.unwrap();
    assert_eq!(std::fs::read(dest.join("f")).unwrap(), b"payload");
}

#[tokio::test]
async fn test_archive_get_missing_path_is_an_error() {
    let a = spawn_agent().await;
    let out = tempfile::tempdir().unwrap();
    let err = a.client.get_archive("/no/such/path", out.path()).await.unwrap_err();
    assert!(matches!(err, AgentError::Remote { .. }), "{err}");
    assert_eq!(run(&a.client, exec(&["true"])).await.status.code, Some(0));
}
