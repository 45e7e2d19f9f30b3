//! The agent's token never shows in QEMU's argv (ps shows argv to every
//! local user): QEMU gets it as a fw_cfg file from cordon's private temp
//! dir, and the guest's kernel command line does not carry it either.

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The argv of the QEMU that `cordon_pid` started, once it is up.
fn qemu_argv_of(cordon_pid: u32) -> Option<Vec<String>> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid = stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().nth(1)).and_then(|p| p.parse().ok());
        if ppid != Some(cordon_pid) {
            continue;
        }
        let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let argv: Vec<String> =
            raw.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if argv.first().is_some_and(|a| a.contains("qemu-system")) {
            return Some(argv);
        }
    }
    None
}

#[tokio::test]
async fn test_vm_token_not_in_argv_nor_cmdline_and_temp_dir_private() {
    let child = Command::new(cordon_bin())
        .env("CORDON_AGENT", static_agent_bin())
        .args(["run", "--accel", "tcg", "--", "sh", "-c", "cat /proc/cmdline; sleep 3"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut argv = None;
    assert!(
        eventually(Duration::from_secs(60), || {
            argv = qemu_argv_of(pid);
            argv.is_some()
        })
        .await,
        "no QEMU under cordon"
    );
    let argv = argv.unwrap();
    let fw = argv.windows(2).find(|w| w[0] == "-fw_cfg").map(|w| w[1].clone()).expect("-fw_cfg in argv");
    let file = fw.strip_prefix("name=opt/cordon/token,file=").expect("the token's fw_cfg item").to_string();
    let dir = std::path::Path::new(&file).parent().unwrap().to_path_buf();
    let mode = std::fs::metadata(&dir).map(|m| m.permissions().mode() & 0o777);
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");

    assert!(!argv.iter().any(|a| a.contains("token=")), "{argv:?}");
    assert_eq!(mode.ok(), Some(0o700), "{} must be private to its owner", dir.display());
    assert!(stdout.contains("cordon.listen=") && !stdout.contains("token"), "guest /proc/cmdline: {stdout}");
    assert!(!dir.exists(), "cordon removes its temp dir");
}
