//! Command-line structs only; validation into a Plan lives in plan.rs.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "cordon",
    version,
    about = "Run build and test steps of untrusted code in a QEMU microVM with a policed network",
    long_about = "cordon runs build and test steps inside a QEMU microVM (or, without a usable \
                  accelerator, Linux namespaces applying the same policy). The guest network is \
                  policed outside the guest. Exit codes: the failing step's own code; 119-127 are \
                  reserved for cordon's own failures (see README.md)."
)]
pub struct Cli {
    /// Log verbosity for cordon's own messages (stderr): error, warn, info, debug, trace
    #[arg(long, global = true, default_value = "warn", env = "CORDON_LOG")]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a command (after --) in a sandbox
    Run(RunArgs),
    /// Report what this machine supports and which backend `auto` would pick
    Doctor,
    /// Build, list and remove guest images
    #[command(subcommand)]
    Image(ImageCommand),
}

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Build an image (only `default` exists: Debian's cloud kernel, busybox, the agent)
    Build {
        /// Image name
        #[arg(default_value = "default")]
        name: String,
        /// Download the kernel package again even when one is cached
        #[arg(long)]
        refresh: bool,
        /// The static guest agent to put in the image
        #[arg(long, env = "CORDON_AGENT", hide = true)]
        agent: Option<PathBuf>,
    },
    /// List cached images
    Ls,
    /// Remove images by name or id
    Rm {
        /// Name or id
        which: String,
    },
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Where to run: auto (VM with an accelerator, else namespaces), vm,
    /// namespace, or local-agent (development only: NO ISOLATION, the command
    /// runs as a plain host process)
    #[arg(long, value_enum, default_value_t = Isolation::Auto)]
    pub isolation: Isolation,
    /// Kill the step's whole process tree after this long (500ms, 30s, 5m, 2h)
    #[arg(long)]
    pub timeout: Option<String>,
    /// Set an environment variable for the step (repeatable)
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory of the step inside the sandbox
    #[arg(long)]
    pub cwd: Option<String>,
    /// Do not forward cordon's stdin to the step (it gets /dev/null)
    #[arg(long)]
    pub no_stdin: bool,
    /// Emit one JSON event per line on stdout instead of the raw output
    #[arg(long)]
    pub json: bool,
    /// The guest agent binary (default: next to cordon, then the static build)
    #[arg(long, env = "CORDON_AGENT", hide = true)]
    pub agent: Option<PathBuf>,
    /// The command and its arguments
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    Auto,
    Vm,
    Namespace,
    LocalAgent,
}
