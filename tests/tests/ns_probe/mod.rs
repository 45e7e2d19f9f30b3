//! The isolation probe (`probe.c`, built with `gcc -static` per test) and its
//! verdicts: one line per check, `CHECK ok N` or `CHECK err ERRNO TEXT`. The
//! same binary runs inside the sandbox and on the host (the positive
//! control), so a denial inside is never the probe's own failure.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const SOURCE: &str = include_str!("probe.c");

/// What one check came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Succeeded; the number the check reports (bytes read, entries, ...).
    Ok(i64),
    /// Failed with this errno.
    Err(i32),
}

impl Verdict {
    pub fn is_ok(self) -> bool {
        matches!(self, Verdict::Ok(_))
    }
}

/// Writes the probe's source into `dir` and builds it there as `dir/probe`
/// (static: the image rootfs has no libc). gcc is a prerequisite of these
/// tests; its absence fails loudly.
pub fn build_into(dir: &Path) -> PathBuf {
    let src = dir.join("probe.c");
    std::fs::write(&src, SOURCE).expect("writing probe.c");
    let bin = dir.join("probe");
    let out = Command::new("gcc")
        .args(["-static", "-O1", "-Wall", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .expect("gcc is needed to build the isolation probe (apt-get install gcc libc6-dev)");
    assert!(
        out.status.success(),
        "gcc -static failed building the probe (is libc6-dev installed?):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_file(&src).expect("removing probe.c");
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod probe");
    bin
}

/// A workspace directory (mode 0755, so an unprivileged user can read it)
/// holding only the built probe; it appears in the sandbox as
/// /workspace/probe.
pub fn workspace() -> tempfile::TempDir {
    let ws = tempfile::Builder::new().prefix("cordon-nsprobe-").tempdir().expect("temp dir");
    std::fs::set_permissions(ws.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod workspace");
    build_into(ws.path());
    ws
}

/// The verdicts in the probe's output, by check (the argument as given).
pub fn parse(stdout: &str) -> BTreeMap<String, Verdict> {
    let mut m = BTreeMap::new();
    for line in stdout.lines() {
        let mut it = line.splitn(4, ' ');
        let (Some(check), Some(kind), Some(n)) = (it.next(), it.next(), it.next()) else { continue };
        let v = match (kind, n.parse::<i64>()) {
            ("ok", Ok(n)) => Verdict::Ok(n),
            ("err", Ok(e)) => Verdict::Err(e as i32),
            _ => continue,
        };
        m.insert(check.to_string(), v);
    }
    m
}

/// The probe's verdicts when run directly on the host, as the test's own
/// user: the positive control for every denial.
pub fn on_host(probe: &Path, checks: &[&str]) -> BTreeMap<String, Verdict> {
    let out = Command::new(probe).args(checks).output().expect("running the probe on the host");
    assert!(out.status.success(), "the probe failed on the host: {}", String::from_utf8_lossy(&out.stderr));
    parse(&String::from_utf8_lossy(&out.stdout))
}

/// The verdict for `check`, which must have run.
pub fn get(v: &BTreeMap<String, Verdict>, check: &str, context: &str) -> Verdict {
    *v.get(check).unwrap_or_else(|| panic!("the probe printed no line for {check:?}: {context}"))
}

pub fn errno_name(e: i32) -> String {
    std::io::Error::from_raw_os_error(e).to_string()
}
