//! cordon: the host runner. The binary in main.rs is a thin shell over this
//! library so integration tests and benchmarks can drive the same code.

pub mod agent;
pub mod artifacts;
pub mod backend;
pub mod cli;
pub mod doctor;
pub mod duration;
pub mod exit;
pub mod image;
pub mod janitor;
pub mod job;
pub mod netfilter;
pub mod plan;
pub mod policy;
pub mod prefork;
pub mod procs;
pub mod resources;
pub mod run;
pub mod term;

/// Target triple of the static guest agent build (scripts/build-agent.sh).
#[cfg(target_arch = "aarch64")]
pub const AGENT_TRIPLE: &str = "aarch64-unknown-linux-gnu";
#[cfg(not(target_arch = "aarch64"))]
pub const AGENT_TRIPLE: &str = "x86_64-unknown-linux-gnu";
