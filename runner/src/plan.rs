//! The validated form of a job. Code that takes a Plan never re-checks it.

use std::path::PathBuf;
use std::time::Duration;

use crate::cli::{Isolation, RunArgs};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub name: String,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub isolation: Isolation,
    pub steps: Vec<Step>,
    /// Forward cordon's stdin to the (single) step.
    pub stdin: bool,
    pub json: bool,
    pub agent: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("no command given: use `cordon run [OPTIONS] -- CMD [ARGS...]`")]
    NoCommand,
    #[error("invalid --env {0:?}: expected KEY=VALUE with a non-empty KEY")]
    BadEnv(String),
    #[error("invalid --timeout: {0}")]
    BadTimeout(String),
}

pub fn parse_env(s: &str) -> Result<(String, String), PlanError> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !k.contains('\0') && !v.contains('\0') => Ok((k.to_string(), v.to_string())),
        _ => Err(PlanError::BadEnv(s.to_string())),
    }
}

impl Plan {
    pub fn from_args(a: &RunArgs) -> Result<Plan, PlanError> {
        if a.command.is_empty() {
            return Err(PlanError::NoCommand);
        }
        let env = a.env.iter().map(|e| parse_env(e)).collect::<Result<Vec<_>, _>>()?;
        let timeout = a.timeout.as_deref().map(crate::duration::parse).transpose().map_err(PlanError::BadTimeout)?;
        Ok(Plan {
            isolation: a.isolation,
            steps: vec![Step { name: "command".into(), argv: a.command.clone(), env, cwd: a.cwd.clone(), timeout }],
            stdin: !a.no_stdin,
            json: a.json,
            agent: a.agent.clone(),
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
            crate::cli::Command::Run(r) => r,
            _ => unreachable!("run subcommand parsed"),
        }
    }

    #[test]
    fn test_from_args_valid() {
        let p = Plan::from_args(&args(&["--timeout", "5s", "-e", "A=b=c", "--", "echo", "hi"])).unwrap();
        assert_eq!(p.steps[0].argv, vec!["echo", "hi"]);
        assert_eq!(p.steps[0].env, vec![("A".to_string(), "b=c".to_string())]);
        assert_eq!(p.steps[0].timeout, Some(Duration::from_secs(5)));
        assert!(p.stdin);
    }

    #[test]
    fn test_from_args_errors() {
        assert_eq!(Plan::from_args(&args(&[])), Err(PlanError::NoCommand));
        assert_eq!(Plan::from_args(&args(&["-e", "=x", "--", "true"])), Err(PlanError::BadEnv("=x".into())));
        assert!(matches!(Plan::from_args(&args(&["--timeout", "soon", "--", "true"])), Err(PlanError::BadTimeout(_))));
    }
}
