//! `cordon doctor`: what this machine offers and which backend `auto` picks.

use std::path::Path;

pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

pub fn checks() -> Vec<Check> {
    let mut v = Vec::new();
    let agent = crate::backend::find_agent(None);
    v.push(Check {
        name: "guest agent",
        ok: agent.is_ok(),
        detail: match agent {
            Ok(p) => p.display().to_string(),
            Err(e) => e.to_string(),
        },
    });
    let kvm_open = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let virt_flags = cpuinfo.lines().any(|l| l.starts_with("flags") && (l.contains(" vmx") || l.contains(" svm")));
    v.push(Check {
        name: "kvm",
        ok: kvm_open && virt_flags,
        detail: match (kvm_open, virt_flags) {
            (true, true) => "/dev/kvm opens and the CPU shows vmx/svm".into(),
            (true, false) => "/dev/kvm opens but the CPU shows no vmx/svm (nested/paravirtual KVM): not used".into(),
            (false, _) => "/dev/kvm cannot be opened".into(),
        },
    });
    let cg = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    v.push(Check { name: "cgroup v2", ok: cg, detail: if cg { "mounted".into() } else { "not mounted".into() } });
    v
}

pub fn print() {
    println!("cordon {}", env!("CARGO_PKG_VERSION"));
    for c in checks() {
        println!("{:<4} {:<14} {}", if c.ok { "ok" } else { "--" }, c.name, c.detail);
    }
    println!("auto   no isolating backend in this build yet; only --isolation local-agent (no isolation) runs");
}
