//! Command-line structs only; validation into a Plan lives in plan.rs.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

use crate::plan::{AccelChoice, ControlChoice, NetMode};

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
    Run(Box<RunArgs>),
    /// Report what this machine supports and which backend `auto` would pick
    Doctor,
    /// Build, list and remove guest images
    #[command(subcommand)]
    Image(ImageCommand),
}

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Build an image: `default` (the boot image every VM run boots: the
    /// kernel `--kernel` picks, busybox, the agent) or `debian` (a Debian userland made with
    /// mmdebstrap from Debian's archive; needs root)
    Build {
        /// default or debian
        #[arg(default_value = "default")]
        name: String,
        /// Debian suite (debian only)
        #[arg(long, default_value = crate::image::userland::DEFAULT_SUITE)]
        suite: String,
        /// Debian packages beyond the default set (debian only; repeatable
        /// or comma-separated)
        #[arg(long = "packages", alias = "package", value_name = "PKG,...", value_delimiter = ',')]
        packages: Vec<String>,
        /// The kernel of the default image: auto (cordon's when built, else
        /// Debian's), debian, or cordon (runs kernel-config/build.sh when it
        /// is not built yet and cordon's source tree is at hand)
        #[arg(long, value_enum, default_value_t = crate::image::KernelChoice::Auto)]
        kernel: crate::image::KernelChoice,
        /// default: download the kernel package again even when one is
        /// cached; debian: build the image again from today's archive
        #[arg(long)]
        refresh: bool,
        /// No progress spinner
        #[arg(long)]
        quiet: bool,
        /// The static guest agent to put in the image
        #[arg(long, env = "CORDON_AGENT", hide = true)]
        agent: Option<PathBuf>,
    },
    /// Import a root filesystem as an image: a rootfs tarball or directory
    /// (what `docker export` writes; plain, gzip or zstd), or an OCI image
    /// layout directory or its tarball (apko, skopeo, `docker save`)
    Import {
        /// The tarball, directory or OCI layout
        path: PathBuf,
        /// The image's name (default: the file name without extensions);
        /// an earlier image of that name is replaced
        #[arg(long)]
        name: Option<String>,
        /// No progress bar
        #[arg(long)]
        quiet: bool,
    },
    /// List cached images: name, size, age and what each was built from
    Ls,
    /// Remove images by name or id
    Rm {
        /// Name or id
        which: String,
    },
    /// Remove Debian images with extra packages that no run used lately
    Prune {
        /// Remove those no run used for this long (e.g. 24h; default a
        /// week); 0 removes every one
        #[arg(long, value_name = "DURATION", default_value = "168h")]
        unused_for: String,
    },
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// A job file (cordon.toml) with steps, workspace and artifacts
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Where to run: auto (the VM when a hardware accelerator is usable or
    /// --accel names one, else namespaces), vm, namespace, or local-agent
    /// (development only: NO ISOLATION, the command runs as a host process)
    #[arg(long, value_enum, default_value_t = Isolation::Auto)]
    pub isolation: Isolation,
    /// VM accelerator: auto (KVM when /dev/kvm opens and the CPU shows
    /// vmx/svm, HVF on macOS), kvm, hvf, or tcg (emulation, slow but works anywhere)
    #[arg(long, value_enum, default_value_t = AccelChoice::Auto)]
    pub accel: AccelChoice,
    /// Control channel to the guest agent: auto (vsock when available, else
    /// virtio-serial), vsock, serial. Never the guest network.
    #[arg(long, value_enum, default_value_t = ControlChoice::Auto)]
    pub control: ControlChoice,
    /// Guest network: none (default: a NIC with no egress), off (no NIC), or
    /// full (everything through cordon's egress gate, except the cloud
    /// metadata endpoints, the host's own addresses and its loopback services)
    #[arg(long, value_enum)]
    pub net: Option<NetMode>,
    /// Allow traffic matching RULE (repeatable; any allow rule makes the
    /// default deny). RULE: CIDR, CIDR:PORT, CIDR:LOW-HIGH, [v6]:PORT,
    /// tcp/..., udp/..., icmp/..., example.org, *.example.org (optional
    /// :PORT), host:PORT (a loopback service of the host), private, metadata.
    /// The most specific matching rule wins; deny wins a tie.
    #[arg(long, value_name = "RULE")]
    pub allow: Vec<String>,
    /// Deny traffic matching RULE (repeatable; same syntax as --allow)
    #[arg(long, value_name = "RULE")]
    pub deny: Vec<String>,
    /// Write one JSON line per network flow (and a summary) to FILE
    #[arg(long, value_name = "FILE")]
    pub net_log: Option<PathBuf>,
    /// The sandbox's userland: `default` (busybox and the agent), `debian`
    /// (build-essential, git, python3 with dev/pip/venv/setuptools,
    /// ca-certificates, curl, pkg-config; built with mmdebstrap on first
    /// use), or an image from `cordon image ls` (e.g. one imported)
    #[arg(long)]
    pub image: Option<String>,
    /// Debian packages to add to the image (repeatable or comma-separated):
    /// a derived image is built once and reused by every run that asks
    /// for the same set
    #[arg(long = "package", value_name = "PKG,...", value_delimiter = ',')]
    pub packages: Vec<String>,
    /// The VM's kernel: cordon (its own minimal kernel, everything built in;
    /// kernel-config/build.sh builds it), debian (Debian's cloud kernel with
    /// modules), or auto (cordon's when built, else Debian's; the default)
    #[arg(long, value_enum)]
    pub kernel: Option<crate::image::KernelChoice>,
    /// Never build a missing image: fail naming the command that builds it
    #[arg(long)]
    pub no_build: bool,
    /// Size of the scratch disk under a userland image (the workspace,
    /// /tmp and all the steps write), e.g. 20G (default 8G; sparse)
    #[arg(long, value_name = "SIZE")]
    pub disk: Option<String>,
    /// Namespace layers that must be in force, else nothing runs (exit 121):
    /// filesystem, pid, network, uid-map, no-new-privs, rlimits, landlock,
    /// capabilities, seccomp, cgroup-pids, cgroup-memory, cgroup-cpu, or
    /// cgroup (all three). The VM's boundary is the hypervisor; it ignores this
    #[arg(long, value_name = "LAYER,...")]
    pub require: Vec<String>,
    /// Require every namespace layer (as --require all)
    #[arg(long)]
    pub strict: bool,
    /// Root filesystem of a namespace sandbox: image (the image's rootfs) or
    /// host (the host's /usr, /bin, /lib*, /etc read-only, without
    /// /etc/shadow, /root, /home or your credentials)
    #[arg(long, value_enum, default_value_t = crate::plan::RootfsChoice::Image)]
    pub rootfs: crate::plan::RootfsChoice,
    /// vCPUs (default: what this process's cgroup allows, at most 2)
    #[arg(long)]
    pub cpus: Option<u32>,
    /// Guest memory, e.g. 512M or 2G (default: a quarter of what is
    /// available); each step may use it less a reserve of an eighth (at
    /// least 96M) for the guest kernel and agent, beyond which it is OOM-killed
    #[arg(long)]
    pub memory: Option<String>,
    /// Most processes and threads each step may hold at once (default 4096)
    #[arg(long, value_name = "N")]
    pub pids: Option<u64>,
    /// Kill the step's whole process tree after this long (500ms, 30s, 5m, 2h)
    #[arg(long)]
    pub timeout: Option<String>,
    /// Give up on the whole job after this long (steps, copies, everything)
    #[arg(long)]
    pub job_timeout: Option<String>,
    /// Give up if the sandbox is not ready after this long (default 20s, 90s under tcg)
    #[arg(long)]
    pub boot_timeout: Option<String>,
    /// Set an environment variable for the steps (repeatable)
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory of the step inside the sandbox (default /workspace
    /// with a workspace, else /)
    #[arg(long)]
    pub cwd: Option<String>,
    /// Host directory copied into the sandbox at /workspace before the steps
    #[arg(long)]
    pub workspace: Option<PathBuf>,
    /// A sandbox path (relative to /workspace, or absolute) copied out after
    /// the steps (repeatable)
    #[arg(long = "artifact", value_name = "PATH")]
    pub artifacts: Vec<String>,
    /// Where artifacts land on the host (default ./cordon-artifacts)
    #[arg(long)]
    pub artifacts_dir: Option<PathBuf>,
    /// Most bytes the run may copy out as artifacts, e.g. 500M or 10G
    /// (default 4G); an artifact past the limit is not copied
    #[arg(long, value_name = "SIZE")]
    pub max_artifacts_size: Option<String>,
    /// Give up copying the artifacts out after this long in all (default
    /// 10m): the run ends with 124 and the rest are not copied
    #[arg(long, value_name = "DURATION")]
    pub artifacts_timeout: Option<String>,
    /// Trust the job file (-f): its network rules may open guarded
    /// destinations (host:PORT, private, metadata, the host's own addresses,
    /// link-local, loopback, multicast) and its memory, cpus, pids,
    /// max_artifacts_size and artifacts_timeout may exceed what this host
    /// has and the defaults. Without it such a job file is refused (exit 120)
    #[arg(long)]
    pub trust_job: bool,
    /// Do not forward cordon's stdin to the step (it gets /dev/null)
    #[arg(long)]
    pub no_stdin: bool,
    /// Give the step a pseudo-terminal (interactive shells, colours); the
    /// local terminal is put in raw mode while the step runs
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Emit one JSON event per line on stdout instead of the raw output
    #[arg(long)]
    pub json: bool,
    /// Prefix every output line with `[step] `
    #[arg(long)]
    pub prefix: bool,
    /// The guest agent binary (default: the static build beside cordon)
    #[arg(long, env = "CORDON_AGENT", hide = true)]
    pub agent: Option<PathBuf>,
    /// The command and its arguments
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

pub use crate::plan::Isolation;
