//! The gated link, for either backend: passt on one socketpair, the gate
//! between it and the sandbox's side, which speaks QEMU's `-netdev stream`
//! framing. The VM hands that side to QEMU; the namespace backend pumps a
//! tap device into it (`tap.rs`). Either way every frame is judged by the
//! same gate before passt turns it into host sockets.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::{gate, relay, DNS_V4, GATEWAY_V4, GATEWAY_V6, GUEST_MTU, GUEST_V4, GUEST_V6};
use crate::janitor::Janitor;
use crate::policy::Policy;

#[derive(Debug, thiserror::Error)]
#[error("starting {what} failed")]
pub struct LinkError {
    pub what: &'static str,
    #[source]
    pub source: std::io::Error,
}

fn err(what: &'static str) -> impl Fn(std::io::Error) -> LinkError {
    move |source| LinkError { what, source }
}

/// How to build the link.
pub struct LinkConfig<'a> {
    pub policy: Policy,
    /// The passt binary (checked for its version by the caller).
    pub passt: &'a Path,
    /// Where passt's log goes (the sandbox's private temp dir).
    pub dir: &'a Path,
    pub janitor: Option<&'a Janitor>,
    pub net_log: Option<PathBuf>,
    /// Benchmarks only: the sandbox talks to passt directly, unjudged.
    pub passthrough: bool,
}

/// passt and the relay; dropping it writes the audit log's end and stops passt.
pub struct GatedLink {
    relay: Option<relay::Relay>,
    passt: Option<tokio::process::Child>,
}

impl Drop for GatedLink {
    fn drop(&mut self) {
        drop(self.relay.take());
        if let Some(mut p) = self.passt.take() {
            let _ = p.start_kill();
            crate::procs::wait_exit(&mut p, std::time::Duration::from_secs(2));
        }
    }
}

impl GatedLink {
    /// Starts passt and the gate; returns the link and the sandbox's end of
    /// the frame socket.
    pub fn start(cfg: LinkConfig<'_>) -> Result<(GatedLink, UnixStream), LinkError> {
        let (sandbox_ours, sandbox_theirs) = UnixStream::pair().map_err(err("socketpair"))?;
        let (passt_ours, passt_theirs) = UnixStream::pair().map_err(err("socketpair"))?;
        let mut cmd = std::process::Command::new(cfg.passt);
        cmd.args(["-f", "-q", "--fd", "3"])
            .args(["-a", &GUEST_V4.to_string(), "-n", "24", "-g", &GATEWAY_V4.to_string()])
            .args(["-a", &GUEST_V6.to_string(), "-g", &GATEWAY_V6.to_string()])
            .args(["-D", &DNS_V4.to_string(), "--no-dhcp-search"])
            .args(["-m", &GUEST_MTU.to_string()])
            .stdin(Stdio::null());
        // No `--no-icmp`, even when no rule allows ICMP: the gate judges echo
        // requests like any flow, and passt's `--no-icmp` also switches off its
        // NDP, which leaves the guest no IPv6 neighbor for the gateway.
        let log = std::fs::File::create(cfg.dir.join("passt.log")).map_err(err("passt.log"))?;
        cmd.stdout(log.try_clone().map_err(err("passt.log"))?).stderr(log);
        crate::procs::pass_fd(&mut cmd, passt_theirs.as_raw_fd(), 3);
        crate::procs::die_with_parent(&mut cmd);
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.kill_on_drop(true);
        let passt = cmd.spawn().map_err(err("passt"))?;
        drop(passt_theirs);
        if let (Some(j), Some(pid)) = (cfg.janitor, passt.id()) {
            j.track(pid, "passt");
        }
        let mut link = GatedLink { relay: None, passt: Some(passt) };
        if cfg.passthrough {
            drop((sandbox_ours, sandbox_theirs));
            return Ok((link, passt_ours));
        }
        let env = crate::policy::Env {
            gateways: vec![GATEWAY_V4.into(), GATEWAY_V6.into()],
            host_addrs: super::host_addresses(),
        };
        for note in cfg.policy.host_address_notes(&env) {
            crate::term::say(&note);
        }
        let g = gate::Gate::new(gate::Config {
            policy: cfg.policy,
            env,
            dns_addrs: vec![DNS_V4.into()],
            gateway_v4: GATEWAY_V4,
            mtu: GUEST_MTU,
            dns_upstream: super::dns::upstream(),
        });
        let tok = |s: UnixStream| {
            s.set_nonblocking(true).and_then(|_| tokio::net::UnixStream::from_std(s)).map_err(err("gate socket"))
        };
        let r =
            relay::Relay::start(g, tok(sandbox_ours)?, tok(passt_ours)?, cfg.net_log).map_err(err("egress gate"))?;
        link.relay = Some(r);
        Ok((link, sandbox_theirs))
    }
}
