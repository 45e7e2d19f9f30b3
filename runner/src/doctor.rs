//! `cordon doctor`: what this machine offers, which control channel and
//! accelerator cordon would use, and which backend `auto` picks, with why.

use crate::backend::vm::{accel, control, probe};
use crate::netfilter::passt;

pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

pub fn checks() -> Vec<Check> {
    let mut v = Vec::new();
    let agent = crate::backend::find_agent(None);
    let agent_static =
        agent.as_ref().ok().and_then(|p| std::fs::read(p).ok()).map(|b| !crate::image::has_interpreter(&b));
    v.push(Check {
        name: "guest agent",
        ok: agent.is_ok() && agent_static == Some(true),
        detail: match (agent, agent_static) {
            (Ok(p), Some(true)) => p.display().to_string(),
            (Ok(p), _) => format!(
                "{} is dynamically linked: the VM needs the static build (scripts/build-agent.sh writes \
                 target/agent/{}/release/cordon-agent)",
                p.display(),
                crate::AGENT_TRIPLE
            ),
            (Err(e), _) => e.to_string(),
        },
    });
    match probe::qemu_binary() {
        Ok(q) => {
            let caps = probe::probe(&q);
            v.push(Check { name: "qemu", ok: true, detail: format!("{} ({})", q.display(), caps.version) });
            v.push(Check {
                name: "microvm",
                ok: caps.microvm,
                detail: if caps.microvm { "available".into() } else { "missing: q35 is used instead".into() },
            });
            v.push(Check {
                name: "slirp",
                ok: caps.slirp,
                detail: if caps.slirp {
                    "available: --net none gets a NIC with restrict=on".into()
                } else {
                    "missing: --net none gets no NIC at all".into()
                },
            });
            v.push(Check {
                name: "qemu seccomp",
                ok: caps.seccomp,
                detail: if caps.seccomp { "-sandbox on is used".into() } else { "this QEMU has no -sandbox".into() },
            });
        }
        Err(e) => v.push(Check { name: "qemu", ok: false, detail: e }),
    }
    let kvm = accel::kvm_status();
    v.push(Check { name: "kvm", ok: kvm.is_ok(), detail: kvm.map(|_| "usable".to_string()).unwrap_or_else(|e| e) });
    let kv = control::kernel_vsock_usable();
    v.push(Check {
        name: "vhost-vsock",
        ok: kv,
        detail: if kv { "/dev/vhost-vsock is usable".into() } else { "/dev/vhost-vsock is not usable".into() },
    });
    let vdv = probe::which("vhost-device-vsock");
    v.push(Check {
        name: "vhost-device",
        ok: vdv.is_some(),
        detail: vdv
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "not installed (cargo install vhost-device-vsock)".into()),
    });
    v.push(match passt::find() {
        Ok(p) => Check {
            name: "passt",
            ok: true,
            detail: format!(
                "{} (version {}): --net full and --allow/--deny go through the egress gate",
                p.path.display(),
                p.version
            ),
        },
        Err(e) => Check {
            name: "passt",
            ok: false,
            detail: format!("{e}; until then --net full and rules cannot be enforced (exit 125)"),
        },
    });
    let ctl = control::choose(control::ControlChoice::Auto).map(|k| k.describe().to_string()).unwrap_or_else(|e| e);
    v.push(Check { name: "control", ok: true, detail: format!("{ctl} would be used") });
    v
}

pub fn print() {
    println!("cordon {}", env!("CARGO_PKG_VERSION"));
    for c in checks() {
        println!("{:<4} {:<14} {}", if c.ok { "ok" } else { "--" }, c.name, c.detail);
    }
    println!("namespace layers (what --isolation namespace enforces here; --require/--strict demand them):");
    let mem = crate::resources::step_memory_max(crate::resources::default_memory_mib());
    for l in crate::backend::namespace::probe_layers(mem) {
        let name = crate::backend::namespace::layers::canonical(&l.name);
        println!("{:<4} {:<14} {}", if l.enforced { "ok" } else { "--" }, name, l.detail);
    }
    match crate::backend::select(crate::plan::Isolation::Auto, crate::plan::AccelChoice::Auto) {
        (crate::backend::Kind::Vm, why) => println!("auto: the microVM backend ({})", why.unwrap_or_default()),
        (_, why) => println!("auto: the namespace backend, because {}", why.unwrap_or_default()),
    }
}
