//! Where the per-sandbox token comes from. Never argv or the kernel command
//! line: QEMU's argv is visible to every local user of the host through ps.
//! As PID 1 it is QEMU's fw_cfg item `opt/cordon/token`, which the runner
//! fills from a 0600 file in its 0700 temp dir; as a plain process it is the
//! environment variable CORDON_AGENT_TOKEN (/proc/PID/environ is private to
//! its owner), removed once read so steps do not inherit it. Its original
//! copy stays in /proc/PID/environ: in the namespace sandbox, whose steps
//! share the agent's uid, the agent makes itself non-dumpable so they cannot
//! read it; and the agent serves exactly one session, claimed before any
//! step runs, so a token learned later opens nothing.

use std::time::{Duration, Instant};

/// Where the guest sees the fw_cfg item `boot::TOKEN_FW_CFG`.
pub fn fw_cfg_path() -> String {
    format!("/sys/firmware/qemu_fw_cfg/by_name/{}/raw", cordon_protocol::boot::TOKEN_FW_CFG)
}

/// The environment variable the runner's local backend sets.
pub const ENV_TOKEN: &str = cordon_protocol::boot::TOKEN_ENV;

/// The token from fw_cfg, waiting briefly for the driver (loaded with the
/// other modules just before) to populate sysfs. None when it never does.
pub fn from_fw_cfg() -> Option<String> {
    let until = Instant::now() + Duration::from_secs(2);
    loop {
        let path = fw_cfg_path();
        match std::fs::read(&path) {
            Ok(b) => return parse(&b),
            Err(_) if Instant::now() < until => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => {
                eprintln!("cordon-agent: no token in fw_cfg ({path}: {e}); no runner can connect");
                return None;
            }
        }
    }
}

/// The token from the environment, which is cleared of it. Call before any
/// thread starts (the environment is process-global).
pub fn from_env() -> Option<String> {
    let t = std::env::var_os(ENV_TOKEN)?;
    std::env::remove_var(ENV_TOKEN);
    parse(t.as_encoded_bytes())
}

/// A token is one line of printable ASCII; anything else authenticates nobody.
fn parse(b: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(b).ok()?.trim_end_matches(['\n', '\r']);
    (!s.is_empty() && s.bytes().all(|c| c.is_ascii_graphic())).then(|| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_table() {
        let table: [(&[u8], Option<&str>); 6] = [
            (b"0123abcd", Some("0123abcd")),
            (b"0123abcd\n", Some("0123abcd")),
            (b"", None),
            (b"\n", None),
            (b"with space", None),
            (b"\xff\xfe", None),
        ];
        for (raw, want) in table {
            assert_eq!(parse(raw).as_deref(), want, "{raw:?}");
        }
    }
}
