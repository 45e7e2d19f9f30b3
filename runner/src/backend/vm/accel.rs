//! Which accelerator to use. KVM only when /dev/kvm opens *and* the CPU
//! shows vmx/svm: a nested, paravirtual /dev/kvm (as on cordon's own CI
//! machines) opens fine yet cannot boot a normal guest. HVF on macOS. TCG
//! only when asked for.

use super::args::Accel;

pub use crate::plan::AccelChoice;

/// Whether KVM is usable, and if not, why.
pub fn kvm_status() -> Result<(), String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    kvm_status_from(std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").map(|_| ()), &cpuinfo)
}

fn kvm_status_from(open: std::io::Result<()>, cpuinfo: &str) -> Result<(), String> {
    if let Err(e) = open {
        return Err(format!("/dev/kvm cannot be opened ({e})"));
    }
    let flags = cpuinfo.lines().find(|l| l.starts_with("flags")).unwrap_or_default();
    let has = flags.split_whitespace().any(|f| f == "vmx" || f == "svm");
    // aarch64 has no such flag; an openable /dev/kvm there is taken as usable.
    if has || std::env::consts::ARCH == "aarch64" {
        Ok(())
    } else {
        Err("/dev/kvm opens but the CPU shows no vmx/svm (nested or paravirtual KVM cannot boot a normal guest)".into())
    }
}

pub fn hvf_status() -> Result<(), String> {
    if cfg!(target_os = "macos") {
        Ok(())
    } else {
        Err("HVF exists only on macOS".into())
    }
}

/// Resolves the user's choice; `Err` says why the VM backend cannot run.
pub fn resolve(choice: AccelChoice) -> Result<Accel, String> {
    match choice {
        AccelChoice::Tcg => Ok(Accel::Tcg),
        AccelChoice::Kvm => kvm_status().map(|_| Accel::Kvm),
        AccelChoice::Hvf => hvf_status().map(|_| Accel::Hvf),
        AccelChoice::Auto => {
            if cfg!(target_os = "macos") {
                return Ok(Accel::Hvf);
            }
            kvm_status().map(|_| Accel::Kvm).map_err(|why| {
                format!("no hardware accelerator: {why}; use --accel tcg to run the VM under emulation (slow)")
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_kvm_status_needs_open_and_flags() {
        let ok = Ok(());
        assert!(kvm_status_from(Ok(()), "flags\t: fpu vme vmx sse").is_ok());
        assert!(kvm_status_from(Ok(()), "flags\t: fpu svm").is_ok());
        if std::env::consts::ARCH == "x86_64" {
            let e = kvm_status_from(ok, "flags\t: fpu hypervisor").unwrap_err();
            assert!(e.contains("no vmx/svm"), "{e}");
        }
        let e = kvm_status_from(Err(std::io::Error::from_raw_os_error(libc::ENOENT)), "flags: vmx").unwrap_err();
        assert!(e.contains("cannot be opened"));
    }

    #[test]
    fn test_resolve_tcg_always() {
        assert_eq!(resolve(AccelChoice::Tcg), Ok(Accel::Tcg));
        if !cfg!(target_os = "macos") {
            assert!(resolve(AccelChoice::Hvf).is_err());
        }
    }
}
