//! cordon's exit codes. A failing step's own code passes through; codes
//! 118-127 are reserved for cordon's own failures (documented in README.md).
//! A step that itself exits with one of these is indistinguishable on the
//! exit code alone; `--json` reports say which it was.

/// Every step passed, but an artifact was missing or could not be copied
/// (the others were copied).
pub const ARTIFACTS: u8 = 118;
/// cordon failed for an internal reason (i/o, spawning a helper).
pub const INTERNAL: u8 = 119;
/// The job file or flags are invalid.
pub const BAD_CONFIG: u8 = 120;
/// The requested isolation backend cannot run here (no accelerator, no QEMU...).
pub const BACKEND_UNAVAILABLE: u8 = 121;
/// The sandbox did not boot (guest panic, QEMU exit, boot deadline).
pub const BOOT_FAILED: u8 = 122;
/// The agent connection broke or spoke nonsense.
pub const AGENT_LOST: u8 = 123;
/// A step ran past its timeout (or the job past its own).
pub const TIMED_OUT: u8 = 124;
/// The network policy cannot be enforced here.
pub const POLICY_UNENFORCEABLE: u8 = 125;
/// The step's command exists but could not be executed.
pub const CANNOT_EXECUTE: u8 = 126;
/// The step's command was not found.
pub const NOT_FOUND: u8 = 127;

/// Exit code for a step killed by `signal` (the shell convention).
pub fn for_signal(signal: i32) -> u8 {
    (128 + signal.clamp(0, 127)) as u8
}
