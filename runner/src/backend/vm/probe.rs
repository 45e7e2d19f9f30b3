//! What the installed QEMU can do (microvm, slirp, seccomp), probed once
//! per QEMU binary and cached beside the images so a run does not pay for it.

use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QemuCaps {
    pub version: String,
    pub microvm: bool,
    pub slirp: bool,
    pub seccomp: bool,
}

pub fn qemu_binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("CORDON_QEMU") {
        return Ok(PathBuf::from(p));
    }
    let name = match std::env::consts::ARCH {
        "aarch64" => "qemu-system-aarch64",
        _ => "qemu-system-x86_64",
    };
    which(name).ok_or_else(|| format!("{name} not found on PATH: install qemu-system (scripts/setup.sh)"))
}

pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

fn help(qemu: &Path, args: &[&str]) -> String {
    Command::new(qemu)
        .args(args)
        .output()
        .map(|o| format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
        .unwrap_or_default()
}

pub fn probe(qemu: &Path) -> QemuCaps {
    let meta = std::fs::metadata(qemu).ok();
    let key = format!(
        "{}-{}-{}",
        qemu.display(),
        meta.as_ref().map(|m| m.len()).unwrap_or(0),
        meta.as_ref()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
            .unwrap_or(0)
    );
    let cache = crate::image::cache_dir().join("qemu-caps.json");
    if let Ok(b) = std::fs::read(&cache) {
        if let Ok((k, caps)) = serde_json::from_slice::<(String, QemuCaps)>(&b) {
            if k == key {
                return caps;
            }
        }
    }
    let version = help(qemu, &["-version"]).lines().next().unwrap_or_default().to_string();
    let caps = QemuCaps {
        version,
        microvm: help(qemu, &["-machine", "help"]).lines().any(|l| l.starts_with("microvm")),
        slirp: help(qemu, &["-netdev", "help"]).lines().any(|l| l.trim() == "user"),
        seccomp: help(qemu, &["-help"]).contains("-sandbox"),
    };
    if let Some(dir) = cache.parent() {
        let _ = std::fs::create_dir_all(dir);
        let _ = std::fs::write(&cache, serde_json::to_vec(&(key, &caps)).unwrap_or_default());
    }
    caps
}
