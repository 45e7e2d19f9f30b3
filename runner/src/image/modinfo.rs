//! Kernel module dependencies without depmod: read each .ko's `.modinfo`
//! ELF section for `depends=`, and order a wanted set so that every module
//! comes after what it depends on.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ModError {
    #[error("reading module {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("module {0} is not an ELF64 object with a .modinfo section")]
    NotElf(PathBuf),
    #[error("module {0:?} is needed but neither built in nor present in the kernel package")]
    Missing(String),
}

/// `.modinfo` key=value strings of an ELF64 little-endian object.
pub fn modinfo(bytes: &[u8]) -> Option<Vec<(String, String)>> {
    let u16_at = |o: usize| bytes.get(o..o.checked_add(2)?).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u32_at =
        |o: usize| bytes.get(o..o.checked_add(4)?).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize);
    let u64_at =
        |o: usize| bytes.get(o..o.checked_add(8)?).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize);
    if bytes.get(..4)? != b"\x7fELF" || *bytes.get(4)? != 2 || *bytes.get(5)? != 1 {
        return None;
    }
    let shoff = u64_at(0x28)?;
    let shentsize = u16_at(0x3a)?;
    let shnum = u16_at(0x3c)?;
    let shstrndx = u16_at(0x3e)?;
    let sh = |i: usize| shoff.checked_add(i.checked_mul(shentsize)?);
    let strtab_off = u64_at(sh(shstrndx)?.checked_add(0x18)?)?;
    for i in 0..shnum {
        let base = sh(i)?;
        let name_off = u32_at(base)?;
        let name_start = strtab_off.checked_add(name_off)?;
        let name_end = name_start.checked_add(bytes.get(name_start..)?.iter().position(|&c| c == 0)?)?;
        if &bytes[name_start..name_end] != b".modinfo" {
            continue;
        }
        let off = u64_at(base.checked_add(0x18)?)?;
        let size = u64_at(base.checked_add(0x20)?)?;
        let data = bytes.get(off..off.checked_add(size)?)?;
        return Some(
            data.split(|&c| c == 0)
                .filter_map(|kv| std::str::from_utf8(kv).ok())
                .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
                .collect(),
        );
    }
    None
}

/// Module name as the kernel spells it: file stem with `-` as `_`.
pub fn module_name(path: &Path) -> String {
    let f = path.file_name().and_then(|f| f.to_str()).unwrap_or_default();
    f.split(".ko").next().unwrap_or(f).replace('-', "_")
}

/// Every `.ko` under `dir`, by module name.
pub fn index(dir: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().and_then(|f| f.to_str()).is_some_and(|f| f.ends_with(".ko")) {
                out.insert(module_name(&p), p);
            }
        }
    }
    out
}

/// Resolves `wanted` and their dependencies into load order. Built-in
/// modules (from modules.builtin) are skipped.
pub fn resolve(
    wanted: &[&str],
    available: &BTreeMap<String, PathBuf>,
    builtin: &HashSet<String>,
) -> Result<Vec<PathBuf>, ModError> {
    let mut order = Vec::new();
    let mut done = HashSet::new();
    let mut visiting = HashSet::new();
    for w in wanted {
        visit(&w.replace('-', "_"), available, builtin, &mut done, &mut visiting, &mut order)?;
    }
    Ok(order)
}

fn visit(
    name: &str,
    available: &BTreeMap<String, PathBuf>,
    builtin: &HashSet<String>,
    done: &mut HashSet<String>,
    visiting: &mut HashSet<String>,
    order: &mut Vec<PathBuf>,
) -> Result<(), ModError> {
    if done.contains(name) || builtin.contains(name) || !visiting.insert(name.to_string()) {
        return Ok(());
    }
    let path = available.get(name).ok_or_else(|| ModError::Missing(name.to_string()))?;
    let bytes = std::fs::read(path).map_err(|source| ModError::Read { path: path.clone(), source })?;
    let info = modinfo(&bytes).ok_or_else(|| ModError::NotElf(path.clone()))?;
    for (k, v) in &info {
        if k == "depends" {
            for dep in v.split(',').filter(|d| !d.is_empty()) {
                visit(dep, available, builtin, done, visiting, order)?;
            }
        }
    }
    visiting.remove(name);
    done.insert(name.to_string());
    order.push(path.clone());
    Ok(())
}

/// Module names from a modules.builtin file (`kernel/x/y/name.ko` lines).
pub fn parse_builtin(s: &str) -> HashSet<String> {
    s.lines().map(|l| module_name(Path::new(l.trim()))).filter(|n| !n.is_empty()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_module_name_table() {
        assert_eq!(module_name(Path::new("a/b/virtio-rng.ko")), "virtio_rng");
        assert_eq!(module_name(Path::new("virtio_net.ko.xz")), "virtio_net");
    }

    #[test]
    fn test_modinfo_rejects_garbage() {
        assert!(modinfo(b"").is_none());
        assert!(modinfo(b"\x7fELF\x02\x01garbage").is_none());
        let mut fake = vec![0u8; 64];
        fake[..6].copy_from_slice(b"\x7fELF\x02\x01");
        fake[0x28..0x30].copy_from_slice(&u64::MAX.to_le_bytes());
        fake[0x3c] = 5;
        assert!(modinfo(&fake).is_none());
    }

    #[test]
    fn test_modinfo_random_headers_never_panic() {
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for _ in 0..5000 {
            let mut b = vec![0u8; 128];
            for v in b.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *v = x as u8;
            }
            b[..6].copy_from_slice(b"\x7fELF\x02\x01");
            let _ = modinfo(&b);
        }
    }

    #[test]
    fn test_parse_builtin() {
        let b = parse_builtin("kernel/crypto/rng.ko\nkernel/drivers/char/hw_random/rng-core.ko\n");
        assert!(b.contains("rng_core") && b.contains("rng"));
    }
}
