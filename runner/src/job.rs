//! The cordon.toml schema. Parsed strictly (unknown keys are errors) and
//! turned into a Plan by plan.rs; nothing here is trusted downstream. A job
//! file may come from an untrusted checkout: plan.rs keeps its paths inside
//! its directory, and without `--trust-job` its network rules away from
//! guarded destinations and its limits within the host's and the defaults.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A job file. Every field is optional except `steps`.
#[derive(Debug, Deserialize, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct JobFile {
    /// The image: "default" (busybox), "debian", a name from `cordon image
    /// ls`, or a table `{ base = "debian", packages = [...], suite = "..." }`.
    pub image: Option<ImageField>,
    /// The VM's kernel: "auto" (default), "cordon" or "debian".
    pub kernel: Option<crate::image::KernelChoice>,
    /// Size of the scratch disk under a userland image's overlay (the
    /// workspace, /tmp and everything the steps write), e.g. "20G"; default "8G".
    pub disk: Option<String>,
    /// vCPUs; default from the host's cgroup limits, at most 2.
    pub cpus: Option<u32>,
    /// Guest memory, e.g. "1G"; default a quarter of what is available.
    /// Each step may use it less a reserve for the guest kernel and agent.
    pub memory: Option<String>,
    /// Most processes and threads each step may hold at once; default 4096.
    pub pids: Option<u64>,
    /// Timeout of the whole job (all steps), e.g. "30m".
    pub timeout: Option<String>,
    /// Host directory copied to /workspace before the first step (relative
    /// to the job file's directory).
    pub workspace: Option<PathBuf>,
    /// Paths in the guest (relative to /workspace, or absolute) copied out
    /// after the steps.
    #[serde(default)]
    pub artifacts: Vec<String>,
    /// Host directory the artifacts land in; default "cordon-artifacts"
    /// beside the job file.
    pub artifacts_dir: Option<PathBuf>,
    /// Most bytes of archives the run may bring out, e.g. "500M"; default "4G".
    pub max_artifacts_size: Option<String>,
    /// Most time copying the artifacts out may take in all, e.g. "2m";
    /// default "10m".
    pub artifacts_timeout: Option<String>,
    /// Environment for every step.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub network: NetworkSection,
    /// Steps, run in order; the first failure stops the job.
    #[serde(default)]
    pub steps: Vec<StepFile>,
}

/// `image = "name"` or `image = { base = "debian", packages = [...] }`.
#[derive(Debug, Deserialize, PartialEq, Eq, Clone)]
#[serde(untagged)]
pub enum ImageField {
    Name(String),
    Table(ImageTable),
}

#[derive(Debug, Deserialize, PartialEq, Eq, Clone)]
#[serde(deny_unknown_fields)]
pub struct ImageTable {
    /// "debian" (the only base that takes packages).
    pub base: String,
    /// Debian suite; default bookworm.
    pub suite: Option<String>,
    /// Debian packages beyond the default set.
    #[serde(default)]
    pub packages: Vec<String>,
}

#[derive(Debug, Deserialize, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NetworkSection {
    /// "none" (default without rules: a NIC without egress), "off" (no NIC)
    /// or "full" (everything but metadata and the host, through the gate).
    pub mode: Option<String>,
    /// Allow rules (see `cordon run --help`); any of them means default deny.
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
}

#[derive(Debug, Deserialize, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StepFile {
    pub name: Option<String>,
    /// A shell command line, run with `/bin/sh -c`.
    pub run: Option<String>,
    /// Or the exact argv.
    pub argv: Option<Vec<String>>,
    pub timeout: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory in the guest; default /workspace.
    pub cwd: Option<String>,
}

pub fn parse(text: &str) -> Result<JobFile, toml::de::Error> {
    toml::from_str(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_full_job() {
        let j = parse(
            r#"
            cpus = 2
            memory = "1G"
            pids = 100
            timeout = "10m"
            workspace = "src"
            artifacts = ["out/app"]
            [env]
            CI = "1"
            [network]
            mode = "off"
            [[steps]]
            name = "build"
            run = "make"
            timeout = "5m"
            [[steps]]
            argv = ["./out/app", "--test"]
            "#,
        )
        .unwrap();
        assert_eq!(j.cpus, Some(2));
        assert_eq!(j.pids, Some(100));
        assert_eq!(j.steps.len(), 2);
        assert_eq!(j.steps[0].run.as_deref(), Some("make"));
        assert_eq!(j.network.mode.as_deref(), Some("off"));
    }

    #[test]
    fn test_parse_rejects_unknown_keys_and_types() {
        assert!(parse("cpu = 2").is_err());
        assert!(parse("[[steps]]\nrun = 'x'\nshell = 'bash'").is_err());
        assert!(parse("cpus = 'two'").is_err());
        assert!(parse("steps = 3").is_err());
    }
}
