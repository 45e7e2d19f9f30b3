//! What the runner and the agent agree on before the protocol starts: the
//! kernel command-line keys the VM's agent reads, the console marker it
//! prints once it listens, the vsock port and virtio-serial name, the
//! fw_cfg name of the token, the environment a non-VM agent gets, and the
//! static guest network spec. One typed copy for both sides instead of
//! strings kept in sync by comments.

use std::fmt;
use std::str::FromStr;

/// The agent's vsock port.
pub const AGENT_PORT: u32 = 1024;
/// The virtio-serial port name the agent serves on without vsock.
pub const SERIAL_NAME: &str = "org.cordon.agent";
/// Printed on the console by the agent once it listens; the runner dials
/// only after seeing it (vhost-device-vsock wedges on an early CONNECT).
pub const LISTENING_MARKER: &str = "cordon-agent: listening on";
/// QEMU `-fw_cfg` name of the token file; the guest reads it under
/// /sys/firmware/qemu_fw_cfg/by_name/.
pub const TOKEN_FW_CFG: &str = "opt/cordon/token";
/// The token for an agent that is not PID 1 of a VM (scrubbed at start).
pub const TOKEN_ENV: &str = "CORDON_AGENT_TOKEN";
/// Set for an agent that is PID 1 of a namespace sandbox (not a VM's init).
pub const MODE_ENV: &str = "CORDON_AGENT_MODE";
pub const MODE_NAMESPACE: &str = "namespace";

/// Kernel command-line keys (`cordon.KEY=VALUE`).
pub const KEY_LISTEN: &str = "cordon.listen";
pub const KEY_MODULES: &str = "cordon.modules";
pub const KEY_HOSTNAME: &str = "cordon.hostname";
pub const KEY_HALT: &str = "cordon.halt";
pub const KEY_NET: &str = "cordon.net";
/// `cordon.root=erofs`: the image's userland is a read-only disk (virtio-blk
/// serial [`ROOT_DISK_SERIAL`]) that the agent overlays with a writable
/// scratch disk (serial [`SCRATCH_DISK_SERIAL`]) and switches into.
pub const KEY_ROOT: &str = "cordon.root";
/// The virtio-blk serial of the read-only userland disk.
pub const ROOT_DISK_SERIAL: &str = "cordon-root";
/// The virtio-blk serial of the scratch disk (ext4 made by the host; holds
/// the overlay's upper layer, the workspace and /tmp).
pub const SCRATCH_DISK_SERIAL: &str = "cordon-scratch";
/// Modules the initramfs loads only when a disk root is given (one path per
/// line, dependency order), so the default image pays nothing for them.
pub const ROOT_MODULES_FILE: &str = "/etc/cordon/modules.root";

/// The filesystem of the userland disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootFs {
    Erofs,
}

impl RootFs {
    pub fn as_str(self) -> &'static str {
        match self {
            RootFs::Erofs => "erofs",
        }
    }

    pub fn parse(s: &str) -> Option<RootFs> {
        match s {
            "erofs" => Some(RootFs::Erofs),
            _ => None,
        }
    }
}

/// Settings the VM's agent reads from the kernel command line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BootParams {
    pub listen: Option<String>,
    pub modules: Vec<String>,
    pub hostname: Option<String>,
    pub net: Option<NetSpec>,
    /// `cordon.halt=reboot`: end with a reboot (QEMU `-no-reboot` exits)
    /// rather than an ACPI power-off, for machines without ACPI.
    pub reboot_to_halt: bool,
    /// Switch to a userland disk (see [`KEY_ROOT`]).
    pub root: Option<RootFs>,
}

impl BootParams {
    /// Reads the `cordon.*` words of a kernel command line; others are ignored.
    pub fn parse(cmdline: &str) -> BootParams {
        let mut p = BootParams::default();
        for word in cmdline.split_whitespace() {
            let Some((k, v)) = word.split_once('=') else { continue };
            match k {
                KEY_LISTEN => p.listen = Some(v.to_string()),
                KEY_MODULES => p.modules = v.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect(),
                KEY_HOSTNAME => p.hostname = Some(v.to_string()),
                KEY_HALT => p.reboot_to_halt = v == "reboot",
                KEY_NET => p.net = v.parse().ok(),
                KEY_ROOT => p.root = RootFs::parse(v),
                _ => {}
            }
        }
        p
    }

    /// The `cordon.*` words, space-separated (no leading space).
    pub fn render(&self) -> String {
        let mut w = Vec::new();
        if let Some(l) = &self.listen {
            w.push(format!("{KEY_LISTEN}={l}"));
        }
        if !self.modules.is_empty() {
            w.push(format!("{KEY_MODULES}={}", self.modules.join(",")));
        }
        if let Some(h) = &self.hostname {
            w.push(format!("{KEY_HOSTNAME}={h}"));
        }
        if self.reboot_to_halt {
            w.push(format!("{KEY_HALT}=reboot"));
        }
        if let Some(n) = &self.net {
            w.push(format!("{KEY_NET}={n}"));
        }
        if let Some(r) = self.root {
            w.push(format!("{KEY_ROOT}={}", r.as_str()));
        }
        w.join(" ")
    }
}

/// The guest's static network: `ADDR4/LEN,GW4,DNS[,ADDR6/LEN,GW6][,mtu=N]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetSpec {
    pub addr4: String,
    pub gateway4: String,
    pub dns: String,
    pub v6: Option<(String, String)>,
    pub mtu: Option<u32>,
}

impl fmt::Display for NetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{},{}", self.addr4, self.gateway4, self.dns)?;
        if let Some((a, g)) = &self.v6 {
            write!(f, ",{a},{g}")?;
        }
        if let Some(m) = self.mtu {
            write!(f, ",mtu={m}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad network spec {0:?}: expected ADDR4/LEN,GW4,DNS[,ADDR6/LEN,GW6][,mtu=N]")]
pub struct BadNetSpec(pub String);

impl FromStr for NetSpec {
    type Err = BadNetSpec;

    fn from_str(s: &str) -> Result<NetSpec, BadNetSpec> {
        let bad = || BadNetSpec(s.to_string());
        let mut mtu = None;
        let mut parts = Vec::new();
        for p in s.split(',') {
            match p.strip_prefix("mtu=") {
                Some(m) => mtu = Some(m.parse().map_err(|_| bad())?),
                None => parts.push(p.to_string()),
            }
        }
        if parts.iter().any(|p| p.is_empty() || p.contains(char::is_whitespace)) {
            return Err(bad());
        }
        let v6 = match parts.len() {
            3 => None,
            5 => Some((parts[3].clone(), parts[4].clone())),
            _ => return Err(bad()),
        };
        Ok(NetSpec { addr4: parts[0].clone(), gateway4: parts[1].clone(), dns: parts[2].clone(), v6, mtu })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_boot_params_parse_table() {
        let p = BootParams::parse(
            "console=ttyS0 quiet cordon.listen=vsock:1024 cordon.token=abc cordon.modules=a.ko,b/c.ko, cordon.halt=reboot \
             cordon.net=10.0.2.15/24,10.0.2.2,10.0.2.3,mtu=1500",
        );
        assert_eq!(p.listen.as_deref(), Some("vsock:1024"));
        assert_eq!(p.modules, vec!["a.ko", "b/c.ko"]);
        assert!(p.reboot_to_halt);
        assert_eq!(p.net.as_ref().map(|n| n.mtu), Some(Some(1500)));
        assert_eq!(BootParams::parse("cordon.listen cordon.token=abc"), BootParams::default());
        assert_eq!(BootParams::parse("cordon.root=erofs").root, Some(RootFs::Erofs));
        assert_eq!(BootParams::parse("cordon.root=zfs").root, None, "an unknown root is no root");
    }

    #[test]
    fn test_boot_params_render_round_trips() {
        let p = BootParams {
            listen: Some("serial:org.cordon.agent".into()),
            modules: vec!["x.ko".into()],
            hostname: Some("cordon".into()),
            net: Some("10.0.2.15/24,10.0.2.2,10.0.2.3,fd00::15/64,fd00::2,mtu=1500".parse().unwrap()),
            reboot_to_halt: true,
            root: Some(RootFs::Erofs),
        };
        assert_eq!(BootParams::parse(&p.render()), p);
    }

    #[test]
    fn test_net_spec_table() {
        let ok = ["10.0.2.15/24,10.0.2.2,10.0.2.3", "a/1,b,c,d/2,e", "a/1,b,c,mtu=9000", "a/1,b,c,d/2,e,mtu=1500"];
        for s in ok {
            assert_eq!(s.parse::<NetSpec>().unwrap().to_string(), s);
        }
        for s in ["", "a,b", "a,b,c,d", "a,b,c,mtu=x", "a,,c", "a b,c,d"] {
            assert!(s.parse::<NetSpec>().is_err(), "{s}");
        }
    }
}
