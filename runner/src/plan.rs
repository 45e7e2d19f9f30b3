//! The validated form of a job: flags and cordon.toml merged (flags win),
//! every value checked once. Code that takes a Plan never re-checks it.
//!
//! A job file may come from an untrusted checkout. Unless the user passes
//! `--trust-job`, what it says is held to what cannot harm the host: its
//! paths stay below its own directory (the artifacts dir: no dot component,
//! one cordon made), its network rules open no guarded destination (and are
//! marked so the gate never lets them, whatever the host's addresses become),
//! its memory and cpus stay within what this host has and its pids,
//! max_artifacts_size and artifacts_timeout within the defaults. The same
//! values from the command line are the user's own.

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cli::RunArgs;
use crate::job::{JobFile, StepFile};
use crate::policy::rule::{Action, Rule};

/// Where the workspace lives in the guest.
pub const GUEST_WORKSPACE: &str = "/workspace";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub name: String,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NetMode {
    /// No network interface at all.
    Off,
    /// A network interface with no egress (the default without rules).
    None,
    /// Everything through the egress gate except metadata, the host's own
    /// addresses and its loopback services.
    Full,
}

/// Where a job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Isolation {
    /// The VM when a hardware accelerator is usable or `--accel` names one,
    /// else namespaces (`backend::select` holds the rule).
    Auto,
    Vm,
    Namespace,
    /// Development only: no isolation at all.
    LocalAgent,
}

/// The VM's accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AccelChoice {
    Auto,
    Kvm,
    Hvf,
    Tcg,
}

/// The VM's control channel to the agent (never the guest network).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ControlChoice {
    Auto,
    Vsock,
    Serial,
}

/// What the namespace backend uses as the sandbox's root filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RootfsChoice {
    /// The image's own rootfs (the default image: busybox and the agent).
    Image,
    /// The host's /usr, /bin, /lib*, /etc read-only (namespace only), with
    /// /etc/shadow, /root, /home and the caller's credentials never visible.
    Host,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub isolation: Isolation,
    pub accel: AccelChoice,
    pub control: ControlChoice,
    pub net: NetMode,
    /// --allow/--deny rules; non-empty (or `net == Full`) means the gate runs.
    pub rules: Vec<crate::policy::rule::Rule>,
    /// Where the gate writes one JSON line per flow.
    pub net_log: Option<PathBuf>,
    /// The userland: the default image, Debian (with extra packages), or a
    /// named image (an import).
    pub image: crate::image::userland::ImageSpec,
    /// The VM's kernel (`--kernel`, `kernel =`).
    pub kernel: crate::image::KernelChoice,
    /// Why a missing image may not be built now (`--no-build`, or an
    /// untrusted job file asking for packages): then it is an error naming
    /// the command that builds it.
    pub no_build: Option<String>,
    /// Bytes of the scratch disk under a userland image's overlay (sparse).
    pub disk_bytes: u64,
    pub rootfs: RootfsChoice,
    /// Namespace layers that must be in force (`--require`, `--strict`),
    /// canonical names; the sandbox refuses to run a step otherwise.
    pub required_layers: Vec<String>,
    pub cpus: u32,
    pub memory_mib: u64,
    /// Most tasks each step may hold at once (guest cgroup `pids.max`);
    /// `pids = N` or `--pids N`, default [`crate::resources::DEFAULT_PIDS`].
    pub pids_max: u64,
    /// Most memory in bytes each step may use (guest cgroup `memory.max`),
    /// from `memory_mib` by [`crate::resources::step_memory_max`].
    pub step_memory_max: u64,
    pub boot_timeout: Option<Duration>,
    pub job_timeout: Option<Duration>,
    pub workspace: Option<PathBuf>,
    /// Guest paths, absolute (relative ones were joined to /workspace).
    pub artifacts: Vec<String>,
    /// Where artifacts land: the anchor is trusted (a path the user gave on
    /// the command line, or the job file's own directory); the components
    /// below it are never followed through a symlink.
    pub artifacts_dir: crate::artifacts::Destination,
    /// The job file named the artifacts dir: cordon writes there only when
    /// it made that directory itself (`crate::artifacts::prepare_dir`).
    pub artifacts_dir_from_job: bool,
    /// Most bytes of archives one run may bring out of the sandbox.
    pub max_artifacts_size: u64,
    /// Most time copying the artifacts out may take in all.
    pub artifacts_timeout: Duration,
    /// The job file (`-f`), if any.
    pub job_file: Option<PathBuf>,
    /// The job file set the network mode or rules (`network_source`).
    pub network_from_job: bool,
    /// `--trust-job`: the job file's rules and limits were not bounded.
    pub trust_job: bool,
    pub steps: Vec<Step>,
    /// Forward cordon's stdin to the (single) step.
    pub stdin: bool,
    /// Run the (single) step on a pseudo-terminal (`-t`).
    pub tty: bool,
    pub json: bool,
    /// Prefix each output line with the step name.
    pub prefix: bool,
    pub agent: Option<PathBuf>,
    /// Benchmarks only (never set from flags or files): connect QEMU to
    /// passt directly, without the gate, to measure what the gate costs.
    pub bench_gate_passthrough: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("no command given: use `cordon run [OPTIONS] -- CMD [ARGS...]` or `cordon run -f cordon.toml`")]
    NoCommand,
    #[error("give either a job file (-f) or a command after --, not both")]
    FileAndCommand,
    #[error("reading job file {0}: {1}")]
    ReadFile(String, String),
    #[error("job file {0} is invalid: {1}")]
    BadFile(String, String),
    #[error("invalid environment variable {0:?}: expected KEY=VALUE with a non-empty KEY without '='")]
    BadEnv(String),
    #[error("invalid {what}: {why}")]
    BadValue { what: String, why: String },
    #[error("step {0}: give exactly one of `run` and `argv`, non-empty")]
    BadStep(String),
    #[error("artifact path {0:?} is invalid: it must be non-empty and must not contain `..`")]
    BadArtifact(String),
    #[error("artifact path {0:?} would land on cordon's marker file {marker} in the artifacts dir", marker = crate::artifacts::MARKER)]
    ReservedArtifact(String),
    #[error("workspace {0} is not a directory")]
    BadWorkspace(String),
    #[error("the job file's {what} {path} is outside the job file's directory {dir}; only a command-line flag may name such a path")]
    OutsideJobDir { what: &'static str, path: String, dir: String },
    #[error("job file {file}: artifacts_dir {path:?} {why}; only --artifacts-dir on the command line may name such a directory")]
    JobArtifactsDir { file: String, path: String, why: String },
    #[error("job file {file}: allow rule {rule:?} opens {what}; a job file may open guarded destinations only when you trust it: pass --trust-job, or give the rule yourself (--allow {rule:?})")]
    UntrustedRule { file: String, rule: String, what: String },
    #[error("job file {file}: {key} = {value:?} is more than {limit}; a job file may raise it only when you trust it: pass --trust-job, or set {flag} on the command line")]
    UntrustedLimit { file: String, key: &'static str, value: String, limit: String, flag: &'static str },
    #[error("-t/--tty needs a single command, not a job file")]
    TtyWithFile,
    #[error("--rootfs host is for the namespace backend only (pass --isolation namespace)")]
    HostRootfsInVm,
    #[error("image: {0}")]
    BadImage(String),
    #[error(transparent)]
    BadRule(#[from] crate::policy::RuleError),
    #[error("--allow/--deny rules need the egress gate: they cannot be combined with --net {0}")]
    RulesWithoutGate(&'static str),
}

impl Plan {
    /// Whether traffic goes through the egress gate (and passt).
    pub fn gated(&self) -> bool {
        self.net == NetMode::Full || !self.rules.is_empty()
    }

    /// The line `cordon run` prints first when the job file set the network
    /// mode or rules, so a checkout never changes the policy unseen.
    pub fn network_source(&self) -> Option<String> {
        let file = self.job_file.as_ref().filter(|_| self.network_from_job)?;
        let mode = match self.net {
            NetMode::Off => "off",
            NetMode::None => "none",
            NetMode::Full => "full",
        };
        let list = |action: Action| {
            self.rules.iter().filter(|r| r.action == action).map(|r| r.text.as_str()).collect::<Vec<_>>().join(", ")
        };
        let trusted = if self.trust_job { " (trusted: --trust-job)" } else { "" };
        Some(format!(
            "network policy from {}: mode {mode}, allow [{}], deny [{}]{trusted}",
            file.display(),
            list(Action::Allow),
            list(Action::Deny)
        ))
    }
}

/// What this host can give: the bounds of a job file not trusted with
/// `--trust-job`. Read only when such a job file is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// The host's own addresses: a job file may not name one exactly.
    pub addrs: Vec<IpAddr>,
    /// Memory available to this process (`resources::available_memory_mib`).
    pub memory_mib: u64,
    /// CPUs available to this process (`resources::available_cpus`).
    pub cpus: u32,
}

impl HostFacts {
    pub fn probe() -> HostFacts {
        HostFacts {
            addrs: crate::netfilter::host_addresses(),
            memory_mib: crate::resources::available_memory_mib(),
            cpus: crate::resources::available_cpus(),
        }
    }
}

pub fn parse_env(s: &str) -> Result<(String, String), PlanError> {
    match s.split_once('=') {
        Some((k, v)) => check_env(k, v),
        None => Err(PlanError::BadEnv(s.to_string())),
    }
}

fn check_env(k: &str, v: &str) -> Result<(String, String), PlanError> {
    if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
        return Err(PlanError::BadEnv(format!("{k}={v}")));
    }
    Ok((k.to_string(), v.to_string()))
}

fn duration(what: &str, s: &str) -> Result<Duration, PlanError> {
    crate::duration::parse(s).map_err(|why| PlanError::BadValue { what: what.into(), why })
}

/// What the command line overrides in every step of a job file.
struct StepOverrides<'a> {
    env: &'a [(String, String)],
    timeout: Option<Duration>,
    cwd: Option<&'a str>,
}

/// Later entries win; the result has each key once, in first-seen order.
fn merge_env(layers: &[&[(String, String)]]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (k, v) in layers.iter().flat_map(|l| l.iter()) {
        match out.iter_mut().find(|(ok, _)| ok == k) {
            Some(slot) => slot.1 = v.clone(),
            None => out.push((k.clone(), v.clone())),
        }
    }
    out
}

fn step_from_file(
    i: usize,
    s: &StepFile,
    job_env: &[(String, String)],
    default_cwd: Option<&str>,
    cli: &StepOverrides,
) -> Result<Step, PlanError> {
    let name = s.name.clone().unwrap_or_else(|| format!("step-{}", i + 1));
    let argv = match (&s.run, &s.argv) {
        (Some(run), None) if !run.trim().is_empty() => vec!["/bin/sh".into(), "-c".into(), run.clone()],
        (None, Some(argv)) if !argv.is_empty() && !argv[0].is_empty() => argv.clone(),
        _ => return Err(PlanError::BadStep(name)),
    };
    let mut step_env = Vec::new();
    for (k, v) in &s.env {
        step_env.push(check_env(k, v)?);
    }
    // The command line wins over the step, the step over the job's [env].
    let env = merge_env(&[job_env, &step_env, cli.env]);
    let timeout = s.timeout.as_deref().map(|t| duration(&format!("timeout of step {name}"), t)).transpose()?;
    let timeout = cli.timeout.or(timeout);
    let cwd = cli.cwd.map(str::to_string).or_else(|| s.cwd.clone()).or_else(|| default_cwd.map(str::to_string));
    Ok(Step { name, argv, env, cwd, timeout })
}

/// The default of `--max-artifacts-size`.
pub const DEFAULT_MAX_ARTIFACTS_SIZE: u64 = 4 << 30;

/// The default of `--artifacts-timeout`: minutes for gigabytes even under
/// TCG, and a bound on what a guest that stalls its agent can cost.
pub const DEFAULT_ARTIFACTS_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// Parses `1024`, `512K`, `100M`, `4G`, `1T` (bytes, binary units).
/// The scratch disk's default size (sparse: only what is written costs).
pub const DEFAULT_DISK: u64 = 8 << 30;
/// The most scratch disk an untrusted job file may ask for.
const DEFAULT_DISK_LIMIT: u64 = 16 << 30;

use crate::image::userland::ImageSpec;

/// `--image` and `--package` over the job file's `image`.
fn image_spec(a: &crate::cli::RunArgs, file: Option<&crate::job::ImageField>) -> Result<ImageSpec, PlanError> {
    use crate::job::ImageField;
    let bad = PlanError::BadImage;
    let (spec, mut packages) = match (&a.image, file) {
        (Some(name), _) => (ImageSpec::from_name(name), vec![]),
        (None, None) => (ImageSpec::Default, vec![]),
        (None, Some(ImageField::Name(n))) => (ImageSpec::from_name(n), vec![]),
        (None, Some(ImageField::Table(t))) => {
            if t.base != "debian" {
                return Err(bad(format!("base {:?}: only \"debian\" takes packages", t.base)));
            }
            let suite = t.suite.clone().unwrap_or_else(|| crate::image::userland::DEFAULT_SUITE.into());
            crate::image::userland::check_suite(&suite).map_err(bad)?;
            (ImageSpec::Debian { suite, packages: vec![] }, t.packages.clone())
        }
    };
    if let ImageSpec::Named(n) = &spec {
        if n.is_empty() || n.len() > 100 || n.contains(['/', '\0']) || n.starts_with('.') {
            return Err(bad(format!("{n:?} is not an image name")));
        }
    }
    packages.extend(a.packages.iter().map(|p| p.trim().to_string()).filter(|p| !p.is_empty()));
    spec.with_packages(&packages).map_err(bad)
}

fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, shift) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 10),
        Some('M') => (&t[..t.len() - 1], 20),
        Some('G') => (&t[..t.len() - 1], 30),
        Some('T') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let n: u64 = num.trim().parse().map_err(|_| format!("{s:?}: use e.g. 500M or 4G"))?;
    n.checked_mul(1u64 << shift).ok_or_else(|| format!("{s:?} is too large"))
}

/// An existing directory, with a symlink given as the path itself resolved
/// (so `--workspace link` uploads the directory the link names).
fn existing_dir(p: &Path) -> Result<PathBuf, PlanError> {
    match std::fs::canonicalize(p) {
        Ok(c) if c.is_dir() => Ok(c),
        _ => Err(PlanError::BadWorkspace(p.display().to_string())),
    }
}

/// A job file may come from an untrusted checkout: the paths it names must
/// resolve (symlinks followed) inside its own directory.
fn inside_job_dir(what: &'static str, resolved: &Path, base: &Path) -> Result<(), PlanError> {
    let b = if base.as_os_str().is_empty() { Path::new(".") } else { base };
    let dir = std::fs::canonicalize(b).unwrap_or_else(|_| b.to_path_buf());
    if resolved.starts_with(&dir) {
        Ok(())
    } else {
        Err(PlanError::OutsideJobDir { what, path: resolved.display().to_string(), dir: dir.display().to_string() })
    }
}

/// The names below the job file's directory that a job file's
/// `artifacts_dir` may use: `Err(None)` when it leaves that directory
/// (absolute, `..`), `Err(Some(why))` when it names the directory itself or
/// a dot path. Dot paths are where the host runs what it finds
/// (`.git/hooks/pre-commit` runs at the next `git commit`, `.envrc`,
/// `.vscode/tasks.json`, `.github/workflows`), so none is allowed at all.
fn job_artifacts_dir(p: &Path) -> Result<Vec<OsString>, Option<&'static str>> {
    use std::os::unix::ffi::OsStrExt;
    let mut out = Vec::new();
    for c in p.components() {
        match c {
            std::path::Component::Normal(n) => out.push(n.to_os_string()),
            std::path::Component::CurDir => {}
            _ => return Err(None),
        }
    }
    if out.is_empty() {
        return Err(Some("is the job file's own directory: its files are the checkout's"));
    }
    if out.iter().any(|n| n.as_bytes().starts_with(b".")) {
        return Err(Some("has a name starting with `.`, where the host may run what it finds (like .git/hooks)"));
    }
    Ok(out)
}

fn guest_artifact(a: &str) -> Result<String, PlanError> {
    let bad = || PlanError::BadArtifact(a.to_string());
    if a.trim().is_empty() || Path::new(a).components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        return Err(bad());
    }
    let g = if a.starts_with('/') { a.to_string() } else { format!("{GUEST_WORKSPACE}/{}", a.trim_end_matches('/')) };
    if crate::run::artifact_host_path(&g).split('/').next() == Some(crate::artifacts::MARKER) {
        return Err(PlanError::ReservedArtifact(a.to_string()));
    }
    Ok(g)
}

/// Refuses a job file's value above `limit` unless it is trusted.
fn bounded<T: PartialOrd>(
    file: &Option<String>,
    key: &'static str,
    flag: &'static str,
    (value, text): (T, &str),
    (limit, limit_text): (T, String),
) -> Result<(), PlanError> {
    match file {
        Some(file) if value > limit => {
            Err(PlanError::UntrustedLimit { file: file.clone(), key, value: text.to_string(), limit: limit_text, flag })
        }
        _ => Ok(()),
    }
}

impl Plan {
    pub fn from_args(a: &RunArgs) -> Result<Plan, PlanError> {
        Plan::from_args_with(a, HostFacts::probe)
    }

    /// As `from_args`, with what this host can give from `host` (called
    /// only for a job file not trusted with `--trust-job`).
    pub fn from_args_with(a: &RunArgs, host: impl FnOnce() -> HostFacts) -> Result<Plan, PlanError> {
        let (file, base) = match &a.file {
            Some(_) if !a.command.is_empty() => return Err(PlanError::FileAndCommand),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| PlanError::ReadFile(path.display().to_string(), e.to_string()))?;
                let job = crate::job::parse(&text)
                    .map_err(|e| PlanError::BadFile(path.display().to_string(), e.message().to_string()))?;
                let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
                (job, Some(base))
            }
            None if a.command.is_empty() => return Err(PlanError::NoCommand),
            None => (JobFile::default(), None),
        };
        let base = base.unwrap_or_default();
        let rel = |p: &Path| if p.is_absolute() { p.to_path_buf() } else { base.join(p) };
        // Some(the job file's name) when what it says must be bounded.
        let untrusted = a.file.as_ref().filter(|_| !a.trust_job).map(|f| f.display().to_string());
        let host = untrusted.as_ref().map(|_| host());

        let mut job_env = Vec::new();
        for (k, v) in &file.env {
            job_env.push(check_env(k, v)?);
        }
        let mut cli_env = Vec::new();
        for e in &a.env {
            cli_env.push(parse_env(e)?);
        }
        let workspace = match (&a.workspace, &file.workspace) {
            (Some(w), _) => Some(existing_dir(w)?),
            (None, Some(w)) => {
                let w = existing_dir(&rel(w))?;
                inside_job_dir("workspace", &w, &base)?;
                Some(w)
            }
            (None, None) => None,
        };
        let default_cwd = workspace.as_ref().map(|_| GUEST_WORKSPACE);
        let cli_timeout = a.timeout.as_deref().map(|t| duration("--timeout", t)).transpose()?;
        if a.tty && a.file.is_some() {
            return Err(PlanError::TtyWithFile);
        }
        if a.rootfs == RootfsChoice::Host && a.isolation != Isolation::Namespace {
            return Err(PlanError::HostRootfsInVm);
        }
        let mut required = a.require.clone();
        if a.strict {
            required.push("all".into());
        }
        let required_layers = crate::backend::namespace::layers::parse_required(&required)
            .map_err(|why| PlanError::BadValue { what: "--require".into(), why })?;
        let steps = if a.command.is_empty() {
            if file.steps.is_empty() {
                return Err(PlanError::NoCommand);
            }
            let cli = StepOverrides { env: &cli_env, timeout: cli_timeout, cwd: a.cwd.as_deref() };
            file.steps
                .iter()
                .enumerate()
                .map(|(i, s)| step_from_file(i, s, &job_env, default_cwd, &cli))
                .collect::<Result<_, _>>()?
        } else {
            let cwd = a.cwd.clone().or_else(|| default_cwd.map(str::to_string));
            let env = merge_env(&[&cli_env]);
            vec![Step { name: "command".into(), argv: a.command.clone(), env, cwd, timeout: cli_timeout }]
        };
        let image = image_spec(a, file.image.as_ref())?;
        if image != ImageSpec::Default && a.rootfs == RootfsChoice::Host {
            return Err(PlanError::BadImage("--rootfs host uses the host's userland, not an image's".into()));
        }
        // A job file from an untrusted checkout may use images that are
        // built, and the base Debian image, but may not make the host build
        // others (root runs the packages' scripts, with the host's network).
        let job_derived = a.image.is_none()
            && a.packages.is_empty()
            && matches!(&file.image, Some(crate::job::ImageField::Table(_)))
            && matches!(&image, ImageSpec::Debian { suite, packages }
                if !packages.is_empty() || suite != crate::image::userland::DEFAULT_SUITE);
        let no_build = if a.no_build {
            Some("--no-build was given".to_string())
        } else if job_derived && untrusted.is_some() {
            Some("a job file may only build the base image without --trust-job".to_string())
        } else {
            None
        };
        let disk_bytes = match a.disk.as_deref().or(file.disk.as_deref()) {
            Some(s) => match parse_size(s) {
                Ok(n) if n >= 64 << 20 => n,
                Ok(_) => return Err(PlanError::BadValue { what: "disk".into(), why: "at least 64M".into() }),
                Err(why) => return Err(PlanError::BadValue { what: "disk".into(), why }),
            },
            None => DEFAULT_DISK,
        };
        if let (None, Some(s)) = (&a.disk, &file.disk) {
            let limit = (DEFAULT_DISK_LIMIT, "16G".to_string());
            bounded(&untrusted, "disk", "--disk", (disk_bytes, s), limit)?;
        }
        if let (Some(h), None, Some(n)) = (&host, a.cpus, file.cpus) {
            bounded(
                &untrusted,
                "cpus",
                "--cpus",
                (n, &n.to_string()),
                (h.cpus, format!("the {} CPUs this host has", h.cpus)),
            )?;
        }
        let cpus = match a.cpus.or(file.cpus) {
            Some(0) => return Err(PlanError::BadValue { what: "cpus".into(), why: "must be at least 1".into() }),
            Some(n) if n > 64 => return Err(PlanError::BadValue { what: "cpus".into(), why: "at most 64".into() }),
            Some(n) => n,
            None => crate::resources::default_cpus(),
        };
        let memory_mib = match a.memory.as_deref().or(file.memory.as_deref()) {
            Some(m) => {
                crate::resources::parse_memory(m).map_err(|why| PlanError::BadValue { what: "memory".into(), why })?
            }
            None => crate::resources::default_memory_mib(),
        };
        if let (Some(h), None, Some(m)) = (&host, &a.memory, &file.memory) {
            let limit = format!("the {} MiB this host has available", h.memory_mib);
            bounded(&untrusted, "memory", "--memory", (memory_mib, m), (h.memory_mib, limit))?;
        }
        if let (None, Some(n)) = (a.pids, file.pids) {
            let limit = format!("the default {}", crate::resources::DEFAULT_PIDS);
            bounded(&untrusted, "pids", "--pids", (n, &n.to_string()), (crate::resources::DEFAULT_PIDS, limit))?;
        }
        let pids_max = match a.pids.or(file.pids) {
            Some(0) => return Err(PlanError::BadValue { what: "pids".into(), why: "must be at least 1".into() }),
            Some(n) => n,
            None => crate::resources::DEFAULT_PIDS,
        };
        let explicit = match (a.net, file.network.mode.as_deref()) {
            (Some(n), _) => Some(n),
            (None, None) => None,
            (None, Some("none")) => Some(NetMode::None),
            (None, Some("off")) => Some(NetMode::Off),
            (None, Some("full")) => Some(NetMode::Full),
            (None, Some(other)) => {
                return Err(PlanError::BadValue {
                    what: "network.mode".into(),
                    why: format!("{other:?}: use none, off or full"),
                })
            }
        };
        let mut rules = crate::policy::parse_rules(&a.allow, &a.deny)?;
        let file_rules = crate::policy::parse_rules(&file.network.allow, &file.network.deny)?;
        if let (Some(name), Some(h)) = (&untrusted, &host) {
            for r in &file_rules {
                if let Some(what) = crate::policy::names_guarded(r, &h.addrs) {
                    return Err(PlanError::UntrustedRule {
                        file: name.clone(),
                        rule: r.text.clone(),
                        what: what.into(),
                    });
                }
            }
            rules.extend(file_rules.into_iter().map(Rule::untrusted));
        } else {
            rules.extend(file_rules);
        }
        let network_from_job = a.file.is_some()
            && ((a.net.is_none() && file.network.mode.is_some())
                || !file.network.allow.is_empty()
                || !file.network.deny.is_empty());
        let net = match explicit {
            Some(NetMode::None) if !rules.is_empty() => return Err(PlanError::RulesWithoutGate("none")),
            Some(NetMode::Off) if !rules.is_empty() => return Err(PlanError::RulesWithoutGate("off")),
            Some(n) => n,
            None => NetMode::None,
        };
        let mut artifacts = Vec::new();
        for x in a.artifacts.iter().chain(file.artifacts.iter()) {
            artifacts.push(guest_artifact(x)?);
        }
        let anchor = if base.as_os_str().is_empty() { PathBuf::from(".") } else { base.clone() };
        let artifacts_dir_from_job = a.artifacts_dir.is_none() && file.artifacts_dir.is_some();
        let artifacts_dir = match (&a.artifacts_dir, &file.artifacts_dir) {
            (Some(d), _) => crate::artifacts::Destination { anchor: d.clone(), below: vec![] },
            (None, Some(d)) => {
                let job_err = |why: String| PlanError::JobArtifactsDir {
                    file: a.file.as_ref().map(|f| f.display().to_string()).unwrap_or_default(),
                    path: d.display().to_string(),
                    why,
                };
                let below = job_artifacts_dir(d).map_err(|why| match why {
                    Some(why) => job_err(why.into()),
                    None => PlanError::OutsideJobDir {
                        what: "artifacts_dir",
                        path: d.display().to_string(),
                        dir: anchor.display().to_string(),
                    },
                })?;
                let dest = crate::artifacts::Destination { anchor, below };
                crate::artifacts::check_dir(&dest).map_err(|e| match e {
                    crate::artifacts::ArtifactError::NotCordons { .. } => job_err(format!(
                        "exists and was not created by cordon (it holds no valid {} marker), so what is in it \
                         is the checkout's or yours (remove it to let cordon make it)",
                        crate::artifacts::MARKER
                    )),
                    e => job_err(format!("cannot be used: {e}")),
                })?;
                dest
            }
            (None, None) => crate::artifacts::Destination { anchor, below: vec!["cordon-artifacts".into()] },
        };
        let max_artifacts_size = match a.max_artifacts_size.as_deref().or(file.max_artifacts_size.as_deref()) {
            Some(s) => parse_size(s).map_err(|why| PlanError::BadValue { what: "max artifacts size".into(), why })?,
            None => DEFAULT_MAX_ARTIFACTS_SIZE,
        };
        if let (None, Some(s)) = (&a.max_artifacts_size, &file.max_artifacts_size) {
            let limit = (DEFAULT_MAX_ARTIFACTS_SIZE, "the default 4G".to_string());
            bounded(&untrusted, "max_artifacts_size", "--max-artifacts-size", (max_artifacts_size, s), limit)?;
        }
        let artifacts_timeout = match a.artifacts_timeout.as_deref().or(file.artifacts_timeout.as_deref()) {
            Some(t) => duration("artifacts timeout", t)?,
            None => DEFAULT_ARTIFACTS_TIMEOUT,
        };
        if let (None, Some(t)) = (&a.artifacts_timeout, &file.artifacts_timeout) {
            let limit = (DEFAULT_ARTIFACTS_TIMEOUT, "the default 10m".to_string());
            bounded(&untrusted, "artifacts_timeout", "--artifacts-timeout", (artifacts_timeout, t), limit)?;
        }
        Ok(Plan {
            isolation: a.isolation,
            accel: a.accel,
            control: a.control,
            net,
            rules,
            net_log: a.net_log.clone(),
            image,
            no_build,
            kernel: a.kernel.or(file.kernel).unwrap_or(crate::image::KernelChoice::Auto),
            disk_bytes,
            rootfs: a.rootfs,
            required_layers,
            cpus,
            memory_mib,
            pids_max,
            step_memory_max: crate::resources::step_memory_max(memory_mib),
            boot_timeout: a.boot_timeout.as_deref().map(|t| duration("--boot-timeout", t)).transpose()?,
            job_timeout: a
                .job_timeout
                .as_deref()
                .or(file.timeout.as_deref())
                .map(|t| duration("job timeout", t))
                .transpose()?,
            workspace,
            artifacts,
            artifacts_dir,
            artifacts_dir_from_job,
            max_artifacts_size,
            artifacts_timeout,
            job_file: a.file.clone(),
            network_from_job,
            trust_job: a.trust_job,
            stdin: !a.no_stdin && steps.len() == 1 && a.file.is_none(),
            tty: a.tty,
            steps,
            json: a.json,
            prefix: a.prefix,
            agent: a.agent.clone(),
            bench_gate_passthrough: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(v: &[&str]) -> RunArgs {
        let mut full = vec!["cordon", "run"];
        full.extend_from_slice(v);
        match crate::cli::Cli::try_parse_from(full).unwrap().command {
            crate::cli::Command::Run(r) => *r,
            _ => unreachable!("run subcommand parsed"),
        }
    }

    #[test]
    fn test_from_args_valid() {
        let p = Plan::from_args(&args(&[
            "--timeout",
            "5s",
            "-e",
            "A=b=c",
            "--cpus",
            "1",
            "--memory",
            "300M",
            "--",
            "echo",
            "hi",
        ]))
        .unwrap();
        assert_eq!(p.steps[0].argv, vec!["echo", "hi"]);
        assert_eq!(p.steps[0].env, vec![("A".to_string(), "b=c".to_string())]);
        assert_eq!(p.steps[0].timeout, Some(Duration::from_secs(5)));
        assert_eq!((p.cpus, p.memory_mib), (1, 300));
        assert_eq!((p.pids_max, p.step_memory_max), (crate::resources::DEFAULT_PIDS, 204 << 20));
        assert_eq!(p.net, NetMode::None);
        assert!(p.stdin);
    }

    #[test]
    fn test_from_args_errors() {
        assert_eq!(Plan::from_args(&args(&[])), Err(PlanError::NoCommand));
        assert_eq!(Plan::from_args(&args(&["-e", "=x", "--", "true"])), Err(PlanError::BadEnv("=x".into())));
        assert!(matches!(
            Plan::from_args(&args(&["--timeout", "soon", "--", "true"])),
            Err(PlanError::BadValue { .. })
        ));
        assert!(matches!(Plan::from_args(&args(&["--cpus", "0", "--", "true"])), Err(PlanError::BadValue { .. })));
        assert!(matches!(Plan::from_args(&args(&["--pids", "0", "--", "true"])), Err(PlanError::BadValue { .. })));
        assert!(matches!(Plan::from_args(&args(&["--memory", "1", "--", "true"])), Err(PlanError::BadValue { .. })));
        assert!(matches!(
            Plan::from_args(&args(&["--artifact", "../x", "--", "true"])),
            Err(PlanError::BadArtifact(_))
        ));
        assert!(matches!(
            Plan::from_args(&args(&["--package", "libssl-dev", "--", "true"])),
            Err(PlanError::BadImage(_))
        ));
        assert!(matches!(
            Plan::from_args(&args(&["--workspace", "/no/such", "--", "true"])),
            Err(PlanError::BadWorkspace(_))
        ));
    }

    #[test]
    fn test_from_job_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("src")).unwrap();
        let f = dir.path().join("cordon.toml");
        std::fs::write(
            &f,
            "workspace = 'src'\npids = 50\nartifacts = ['out/a', '/etc/hostname']\ntimeout = '1m'\n[env]\nX = '1'\n\
             [[steps]]\nname = 'one'\nrun = 'echo $X'\n[[steps]]\nargv = ['true']\ncwd = '/'\n",
        )
        .unwrap();
        let p = Plan::from_args(&args(&["-f", f.to_str().unwrap()])).unwrap();
        assert_eq!(p.workspace, Some(dir.path().join("src")));
        assert_eq!(p.artifacts, vec!["/workspace/out/a", "/etc/hostname"]);
        assert_eq!(p.artifacts_dir.path(), dir.path().join("cordon-artifacts"));
        assert_eq!(p.job_timeout, Some(Duration::from_secs(60)));
        assert_eq!(p.pids_max, 50);
        assert_eq!(Plan::from_args(&args(&["--pids", "7", "-f", f.to_str().unwrap()])).unwrap().pids_max, 7);
        assert_eq!(p.steps[0].argv, vec!["/bin/sh", "-c", "echo $X"]);
        assert_eq!(p.steps[0].cwd.as_deref(), Some("/workspace"));
        assert_eq!(p.steps[0].env, vec![("X".to_string(), "1".to_string())]);
        assert_eq!(p.steps[1].name, "step-2");
        assert_eq!(p.steps[1].cwd.as_deref(), Some("/"));
        assert!(!p.stdin);
        assert_eq!(Plan::from_args(&args(&["-f", f.to_str().unwrap(), "--", "x"])), Err(PlanError::FileAndCommand));
    }

    #[test]
    fn test_network_modes_and_rules() {
        let p = Plan::from_args(&args(&["--allow", "host:8080", "--deny", "203.0.113.0/24", "--", "true"])).unwrap();
        assert_eq!((p.net, p.rules.len(), p.gated()), (NetMode::None, 2, true));
        let p = Plan::from_args(&args(&["--net", "full", "--", "true"])).unwrap();
        assert!(p.gated() && p.rules.is_empty());
        assert!(!Plan::from_args(&args(&["--", "true"])).unwrap().gated(), "the default is none, without the gate");
        assert_eq!(
            Plan::from_args(&args(&["--net", "off", "--allow", "1.2.3.4", "--", "true"])),
            Err(PlanError::RulesWithoutGate("off"))
        );
        assert!(matches!(Plan::from_args(&args(&["--deny", "bogus rule", "--", "true"])), Err(PlanError::BadRule(_))));
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("cordon.toml");
        std::fs::write(&f, "[network]\nmode = 'full'\ndeny = ['metadata']\n[[steps]]\nrun = 'true'\n").unwrap();
        let p = Plan::from_args(&args(&["-f", f.to_str().unwrap()])).unwrap();
        assert_eq!((p.net, p.rules.len()), (NetMode::Full, 1));
        std::fs::write(&f, "[network]\nmode = 'open'\n[[steps]]\nrun = 'true'\n").unwrap();
        assert!(matches!(Plan::from_args(&args(&["-f", f.to_str().unwrap()])), Err(PlanError::BadValue { .. })));
    }

    #[test]
    fn test_job_file_paths_stay_inside_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let job = dir.path().join("checkout");
        std::fs::create_dir(&job).unwrap();
        std::os::unix::fs::symlink("/", job.join("root")).unwrap();
        let f = job.join("cordon.toml");
        let f_arg = f.to_str().unwrap().to_string();
        for (body, what) in [
            ("workspace = '/etc'\n", "workspace"),
            ("workspace = '..'\n", "workspace"),
            ("workspace = 'root'\n", "workspace"),
            ("artifacts_dir = '/root/.ssh'\n", "artifacts_dir"),
            ("artifacts_dir = '../out'\n", "artifacts_dir"),
        ] {
            std::fs::write(&f, format!("{body}[[steps]]\nrun = 'true'\n")).unwrap();
            match Plan::from_args(&args(&["-f", &f_arg])) {
                Err(PlanError::OutsideJobDir { what: w, .. }) => assert_eq!(w, what, "{body}"),
                other => panic!("{body}: {other:?}"),
            }
        }
        // The same paths from the command line are the user's own choice.
        std::fs::write(&f, "[[steps]]\nrun = 'true'\n").unwrap();
        let p = Plan::from_args(&args(&["-f", &f_arg, "--workspace", "/etc", "--artifacts-dir", "/tmp/x"])).unwrap();
        assert_eq!(p.workspace.as_deref(), Some(Path::new("/etc")));
        assert_eq!(p.artifacts_dir.path(), Path::new("/tmp/x"));
        // Inside is fine, and the default artifacts dir is below the job's directory.
        std::fs::create_dir(job.join("src")).unwrap();
        std::fs::write(&f, "workspace = 'src'\nartifacts_dir = 'out/arts'\n[[steps]]\nrun = 'true'\n").unwrap();
        let p = Plan::from_args(&args(&["-f", &f_arg])).unwrap();
        assert_eq!(p.artifacts_dir.anchor, job);
        assert_eq!(p.artifacts_dir.below, vec![std::ffi::OsString::from("out"), "arts".into()]);
    }

    fn facts() -> HostFacts {
        HostFacts { addrs: vec!["192.0.2.2".parse().unwrap()], memory_mib: 1000, cpus: 2 }
    }

    /// Plan of a job file `body` (plus one step) with `extra` flags, on a
    /// host of `facts()`.
    fn job_plan(dir: &Path, body: &str, extra: &[&str]) -> Result<Plan, PlanError> {
        let f = dir.join("cordon.toml");
        std::fs::write(&f, format!("{body}\n[[steps]]\nrun = 'true'\n")).unwrap();
        let mut v = vec!["-f", f.to_str().unwrap()];
        v.extend_from_slice(extra);
        Plan::from_args_with(&args(&v), facts)
    }

    #[test]
    fn test_job_file_rules_open_no_guarded_destination_untrusted() {
        let dir = tempfile::tempdir().unwrap();
        for rule in [
            "host:8765",
            "udp/host:53",
            "private",
            "metadata",
            "169.254.169.254",
            "169.254.0.0/16",
            "[fe80::1]:22",
            "[fd00:ec2::254]",
            "127.0.0.1:22",
            "224.0.0.251",
            "192.0.2.2",
            "tcp/192.0.2.2:22",
        ] {
            match job_plan(dir.path(), &format!("[network]\nallow = [{rule:?}]"), &[]) {
                Err(PlanError::UntrustedRule { rule: r, .. }) => assert_eq!(r, rule),
                other => panic!("{rule}: {other:?}"),
            }
            // Positive controls: trusted, or from the command line.
            let p = job_plan(dir.path(), &format!("[network]\nallow = [{rule:?}]"), &["--trust-job"]).unwrap();
            assert!(p.rules.iter().all(|r| r.may_open_guarded), "{rule}");
            let p = job_plan(dir.path(), "", &["--allow", rule]).unwrap();
            assert!(p.rules.iter().all(|r| r.may_open_guarded), "{rule}");
        }
        let e = job_plan(dir.path(), "[network]\nallow = ['host:8765']", &[]).unwrap_err().to_string();
        assert!(e.contains("\"host:8765\"") && e.contains("--trust-job") && e.contains("loopback"), "{e}");
        // Ordinary rules are fine, and marked so the gate never lets them open
        // an address the host only gains later; deny rules are harmless.
        let p = job_plan(
            dir.path(),
            "[network]\nallow = ['203.0.113.0/24:443', '192.0.2.0/24', '*.crates.io']\ndeny = ['metadata', 'private']",
            &["--allow", "198.51.100.1"],
        )
        .unwrap();
        let trust: Vec<(&str, bool)> = p.rules.iter().map(|r| (r.text.as_str(), r.may_open_guarded)).collect();
        assert_eq!(
            trust,
            vec![
                ("198.51.100.1", true),
                ("203.0.113.0/24:443", false),
                ("192.0.2.0/24", false),
                ("*.crates.io", false),
                ("metadata", false),
                ("private", false)
            ]
        );
    }

    #[test]
    fn test_image_from_job_file_and_flags() {
        use crate::image::userland::ImageSpec;
        let dir = tempfile::tempdir().unwrap();
        let deb = |p: &[&str]| ImageSpec::Debian {
            suite: "bookworm".into(),
            packages: p.iter().map(|s| s.to_string()).collect(),
        };
        assert_eq!(job_plan(dir.path(), "", &[]).unwrap().image, ImageSpec::Default);
        assert_eq!(job_plan(dir.path(), "image = 'debian'", &[]).unwrap().image, deb(&[]));
        assert_eq!(job_plan(dir.path(), "image = 'mine'", &[]).unwrap().image, ImageSpec::Named("mine".into()));
        let t = "image = { base = 'debian', packages = ['zlib1g-dev', 'libffi-dev'] }";
        assert_eq!(job_plan(dir.path(), t, &[]).unwrap().image, deb(&["libffi-dev", "zlib1g-dev"]));
        // --package adds to the file's list; --image replaces the file's image.
        assert_eq!(
            job_plan(dir.path(), t, &["--package", "jq"]).unwrap().image,
            deb(&["jq", "libffi-dev", "zlib1g-dev"])
        );
        assert_eq!(job_plan(dir.path(), t, &["--image", "default"]).unwrap().image, ImageSpec::Default);
        for bad in [
            "image = { base = 'debian', packages = ['-oAPT::Get=x'] }",
            "image = { base = 'debian', packages = ['a,b'] }",
            "image = { base = 'debian', suite = '--help' }",
            "image = { base = 'alpine', packages = ['x'] }",
            "image = { base = 'debian', extra = 1 }",
            "image = '../x'",
            "disk = '1M'",
            "disk = 'lots'",
        ] {
            assert!(job_plan(dir.path(), bad, &[]).is_err(), "{bad}");
        }
        let p = job_plan(dir.path(), "disk = '12G'", &[]).unwrap();
        assert_eq!(p.disk_bytes, 12 << 30);
        assert_eq!(job_plan(dir.path(), "", &[]).unwrap().disk_bytes, DEFAULT_DISK);
        assert!(job_plan(dir.path(), "", &[]).unwrap().no_build.is_none());
        assert!(job_plan(dir.path(), "", &["--no-build"]).unwrap().no_build.is_some());
        // An untrusted job file may not make the host build a derived image;
        // trusted, or with the packages on the command line, it may.
        assert!(job_plan(dir.path(), t, &[]).unwrap().no_build.unwrap().contains("--trust-job"));
        assert!(job_plan(dir.path(), t, &["--trust-job"]).unwrap().no_build.is_none());
        assert!(job_plan(dir.path(), "image = 'debian'", &[]).unwrap().no_build.is_none());
        let suite = "image = { base = 'debian', suite = 'trixie' }";
        assert!(job_plan(dir.path(), suite, &[]).unwrap().no_build.is_some());
    }

    #[test]
    fn test_job_file_limits_untrusted() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("memory = '2G'", "memory = '1000M'", "memory", "--memory"),
            ("cpus = 3", "cpus = 2", "cpus", "--cpus"),
            ("pids = 4097", "pids = 4096", "pids", "--pids"),
            ("max_artifacts_size = '5G'", "max_artifacts_size = '4G'", "max_artifacts_size", "--max-artifacts-size"),
            ("artifacts_timeout = '11m'", "artifacts_timeout = '10m'", "artifacts_timeout", "--artifacts-timeout"),
            ("disk = '17G'", "disk = '16G'", "disk", "--disk"),
        ];
        for (over, at, key, flag) in cases {
            match job_plan(dir.path(), over, &[]) {
                Err(PlanError::UntrustedLimit { key: k, flag: f, .. }) => assert_eq!((k, f), (key, flag)),
                other => panic!("{over}: {other:?}"),
            }
            assert!(job_plan(dir.path(), at, &[]).is_ok(), "{at} is within bounds");
            assert!(job_plan(dir.path(), over, &["--trust-job"]).is_ok(), "{over} trusted");
        }
        let e = job_plan(dir.path(), "memory = '2G'", &[]).unwrap_err().to_string();
        assert!(e.contains("1000 MiB") && e.contains("--trust-job") && e.contains("--memory"), "{e}");
        // The command line's own values are the user's, whatever the file says.
        let p = job_plan(dir.path(), "memory = '2G'\ncpus = 8", &["--memory", "4G", "--cpus", "8"]).unwrap();
        assert_eq!((p.memory_mib, p.cpus), (4096, 8));
        let p = Plan::from_args_with(&args(&["--memory", "4G", "--", "true"]), || unreachable!("no job file")).unwrap();
        assert_eq!(p.memory_mib, 4096);
    }

    #[test]
    fn test_job_file_artifacts_dir_no_dot_paths_nor_its_own_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(".git/hooks")).unwrap();
        for d in [".git/hooks", "./.git/hooks", ".git", "out/.cache", ".envrc", ".", "./"] {
            match job_plan(dir.path(), &format!("artifacts_dir = {d:?}"), &[]) {
                Err(PlanError::JobArtifactsDir { path, .. }) => assert_eq!(path, d),
                other => panic!("{d}: {other:?}"),
            }
            // Even trusted: only the command line may name such a directory.
            assert!(job_plan(dir.path(), &format!("artifacts_dir = {d:?}"), &["--trust-job"]).is_err(), "{d}");
        }
        // An existing directory cordon did not make is refused; one it will make is fine.
        std::fs::create_dir(dir.path().join("src")).unwrap();
        let e = job_plan(dir.path(), "artifacts_dir = 'src'", &[]).unwrap_err();
        assert!(e.to_string().contains("was not created by cordon"), "{e}");
        let p = job_plan(dir.path(), "artifacts_dir = 'src/out'", &[]).unwrap();
        assert!(p.artifacts_dir_from_job);
        let p = job_plan(dir.path(), "artifacts_dir = 'src'", &["--artifacts-dir", ".git/hooks"]).unwrap();
        assert!(!p.artifacts_dir_from_job, "the command line's directory is the user's");
        assert!(!job_plan(dir.path(), "", &[]).unwrap().artifacts_dir_from_job, "the default is cordon's own name");
    }

    #[test]
    fn test_artifact_may_not_land_on_the_marker() {
        for a in [".cordon-artifacts", "/workspace/.cordon-artifacts/x", "/.cordon-artifacts"] {
            assert!(
                matches!(Plan::from_args(&args(&["--artifact", a, "--", "true"])), Err(PlanError::ReservedArtifact(_))),
                "{a}"
            );
        }
        assert!(Plan::from_args(&args(&["--artifact", "out/.cordon-artifacts", "--", "true"])).is_ok());
    }

    #[test]
    fn test_network_source_line() {
        let dir = tempfile::tempdir().unwrap();
        let p =
            job_plan(dir.path(), "[network]\nmode = 'full'\ndeny = ['metadata']", &["--allow", "203.0.113.1"]).unwrap();
        let f = dir.path().join("cordon.toml");
        assert_eq!(
            p.network_source().unwrap(),
            format!("network policy from {}: mode full, allow [203.0.113.1], deny [metadata]", f.display())
        );
        let p = job_plan(dir.path(), "[network]\nallow = ['host:80']", &["--trust-job"]).unwrap();
        assert!(p.network_source().unwrap().ends_with("mode none, allow [host:80], deny [] (trusted: --trust-job)"));
        // Not from the file: no line.
        assert_eq!(job_plan(dir.path(), "", &["--allow", "203.0.113.1"]).unwrap().network_source(), None);
        assert_eq!(job_plan(dir.path(), "[network]\nmode = 'full'", &["--net", "off"]).unwrap().network_source(), None);
        assert_eq!(Plan::from_args(&args(&["--net", "full", "--", "true"])).unwrap().network_source(), None);
    }

    #[test]
    fn test_artifacts_timeout() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(job_plan(dir.path(), "", &[]).unwrap().artifacts_timeout, DEFAULT_ARTIFACTS_TIMEOUT);
        assert_eq!(job_plan(dir.path(), "artifacts_timeout = '2m'", &[]).unwrap().artifacts_timeout.as_secs(), 120);
        let p = job_plan(dir.path(), "artifacts_timeout = '2m'", &["--artifacts-timeout", "1h"]).unwrap();
        assert_eq!(p.artifacts_timeout.as_secs(), 3600);
        assert!(matches!(job_plan(dir.path(), "artifacts_timeout = 'soon'", &[]), Err(PlanError::BadValue { .. })));
    }

    #[test]
    fn test_command_line_overrides_job_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("cordon.toml");
        std::fs::write(
            &f,
            "[env]\nA = 'file'\nB = 'file'\n[[steps]]\nrun = 'true'\ntimeout = '1h'\ncwd = '/tmp'\n\
             [steps.env]\nB = 'step'\nC = 'step'\n[[steps]]\nrun = 'true'\n",
        )
        .unwrap();
        let f = f.to_str().unwrap();
        let p = Plan::from_args(&args(&["-f", f, "-e", "B=cli", "--timeout", "5s", "--cwd", "/srv"])).unwrap();
        let env = |i: usize| p.steps[i].env.clone();
        let kv = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert_eq!(env(0), vec![kv("A", "file"), kv("B", "cli"), kv("C", "step")]);
        assert_eq!(env(1), vec![kv("A", "file"), kv("B", "cli")]);
        for s in &p.steps {
            assert_eq!(s.timeout, Some(Duration::from_secs(5)));
            assert_eq!(s.cwd.as_deref(), Some("/srv"));
        }
        let p = Plan::from_args(&args(&["-f", f])).unwrap();
        assert_eq!(p.steps[0].env[1], kv("B", "step"));
        assert_eq!(p.steps[0].timeout, Some(Duration::from_secs(3600)));
        assert_eq!(p.steps[1].timeout, None);
        assert_eq!(Plan::from_args(&args(&["-f", f, "-t"])), Err(PlanError::TtyWithFile));
    }

    #[test]
    fn test_workspace_symlink_uploads_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        std::os::unix::fs::symlink("real", dir.path().join("link")).unwrap();
        let link = dir.path().join("link");
        let p = Plan::from_args(&args(&["--workspace", link.to_str().unwrap(), "--", "true"])).unwrap();
        assert_eq!(p.workspace, Some(std::fs::canonicalize(dir.path().join("real")).unwrap()));
    }

    #[test]
    fn test_parse_size_table() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("4g"), Ok(4 << 30));
        assert_eq!(parse_size(" 2T "), Ok(2 << 40));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999T").is_err());
        let p = Plan::from_args(&args(&["--max-artifacts-size", "10M", "--", "true"])).unwrap();
        assert_eq!(p.max_artifacts_size, 10 << 20);
        assert_eq!(Plan::from_args(&args(&["--", "true"])).unwrap().max_artifacts_size, DEFAULT_MAX_ARTIFACTS_SIZE);
    }

    #[test]
    fn test_from_job_file_bad_steps() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("cordon.toml");
        for body in ["[[steps]]\nname='x'\n", "[[steps]]\nrun='a'\nargv=['b']\n", "[[steps]]\nargv=[]\n", "bogus = 1\n"]
        {
            std::fs::write(&f, body).unwrap();
            assert!(Plan::from_args(&args(&["-f", f.to_str().unwrap()])).is_err(), "{body}");
        }
    }
}
