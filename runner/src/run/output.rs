//! Where step output and cordon's reports go: raw to stdout/stderr
//! (optionally prefixed per line) or JSON events on stdout. A reader that
//! goes away (`cordon run ... | head`) is not an error: output to it stops,
//! and the caller tells the step, as a shell pipeline would.

use serde_json::json;
use std::io::Write;

use super::{RunError, StepEnd};
use crate::plan::Step;
use crate::term::say;

/// What writing a chunk of step output did.
#[derive(Debug, PartialEq, Eq)]
pub enum Written {
    Ok,
    /// stdout just went away (EPIPE); later stdout output is dropped.
    StdoutClosed,
}

pub struct Output {
    pub json: bool,
    pub prefix: bool,
    at_line_start: [bool; 2],
    closed: [bool; 2],
}

fn is_epipe(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::BrokenPipe
}

impl Output {
    pub fn new(json: bool, prefix: bool) -> Output {
        Output { json, prefix, at_line_start: [true, true], closed: [false, false] }
    }

    /// Writes a chunk of the step's stdout (`which` 0) or stderr (1).
    pub fn data(&mut self, step: &str, which: usize, b: &[u8]) -> Result<Written, RunError> {
        let stream = if which == 0 { "stdout" } else { "stderr" };
        if self.json {
            let ev = match std::str::from_utf8(b) {
                Ok(s) => json!({"event": "output", "step": step, "stream": stream, "data": s}),
                Err(_) => json!({"event": "output", "step": step, "stream": stream, "data_hex": hex::encode(b)}),
            };
            return self.event(ev);
        }
        if self.closed[which] {
            return Ok(Written::Ok);
        }
        let buf;
        let bytes = if self.prefix {
            buf = prefix_lines(b, &format!("[{step}] "), &mut self.at_line_start[which]);
            &buf[..]
        } else {
            b
        };
        let res = if which == 0 {
            let mut o = std::io::stdout().lock();
            o.write_all(bytes).and_then(|_| o.flush())
        } else {
            let mut e = std::io::stderr().lock();
            e.write_all(bytes).and_then(|_| e.flush())
        };
        match res {
            Ok(()) => Ok(Written::Ok),
            Err(e) if is_epipe(&e) => {
                self.closed[which] = true;
                Ok(if which == 0 { Written::StdoutClosed } else { Written::Ok })
            }
            Err(e) => Err(RunError::Output(e)),
        }
    }

    /// One JSON event line on stdout.
    pub fn event(&mut self, v: serde_json::Value) -> Result<Written, RunError> {
        if self.closed[0] {
            return Ok(Written::Ok);
        }
        let mut o = std::io::stdout().lock();
        let res = serde_json::to_writer(&mut o, &v)
            .map_err(std::io::Error::from)
            .and_then(|_| o.write_all(b"\n"))
            .and_then(|_| o.flush());
        match res {
            Ok(()) => Ok(Written::Ok),
            Err(e) if is_epipe(&e) => {
                self.closed[0] = true;
                Ok(Written::StdoutClosed)
            }
            Err(e) => Err(RunError::Output(e)),
        }
    }

    /// Reports how a step ended (a JSON event, or a line on stderr).
    pub fn step_end(&mut self, step: &Step, end: &StepEnd, code: u8) -> Result<(), RunError> {
        let name = &step.name;
        match end {
            StepEnd::Exited(st) | StepEnd::Stopped(_, Some(st)) => {
                let stop = match end {
                    StepEnd::Stopped(s, _) => Some(*s),
                    _ => None,
                };
                let cancelled = matches!(stop, Some(super::Stop::Signal(_)));
                let job_timed_out = stop == Some(super::Stop::JobTimeout);
                let timed_out = st.timed_out || matches!(stop, Some(super::Stop::StepTimeout)) || job_timed_out;
                if self.json {
                    self.event(
                        json!({"event": "step_exited", "step": name, "exit_code": st.code, "signal": st.signal,
                        "timed_out": timed_out, "job_timed_out": job_timed_out, "oom_killed": st.oom_killed,
                        "cancelled": cancelled, "wall_ms": st.wall_ms, "peak_rss_kb": st.peak_rss_kb,
                        "output_cut": st.output_cut, "cordon_exit_code": code}),
                    )?;
                    return Ok(());
                }
                if st.output_cut {
                    say(&format!(
                        "step {name:?}: output was cut: a process outside the step's tree kept its stdout/stderr open"
                    ));
                }
                if job_timed_out {
                    say(&format!("the job timed out during step {name:?}; its process tree was killed"));
                } else if timed_out {
                    say(&format!("step {name:?} timed out after {} ms; its process tree was killed", st.wall_ms));
                } else if cancelled {
                    say(&format!("step {name:?} cancelled"));
                } else if st.oom_killed {
                    say(&format!("step {name:?} was killed by the out-of-memory killer"));
                } else if let Some(sig) = st.signal {
                    say(&format!("step {name:?} was killed by signal {sig}"));
                }
            }
            StepEnd::Stopped(stop, None) => {
                let why = match stop {
                    super::Stop::Signal(s) => format!("cancelled by signal {s}"),
                    super::Stop::JobTimeout => "stopped by the job timeout".into(),
                    super::Stop::StepTimeout => "timed out".into(),
                };
                if self.json {
                    self.event(json!({"event": "step_exited", "step": name, "exit_code": null, "signal": null,
                        "timed_out": !matches!(stop, super::Stop::Signal(_)),
                        "job_timed_out": *stop == super::Stop::JobTimeout,
                        "cancelled": matches!(stop, super::Stop::Signal(_)), "sandbox_torn_down": true,
                        "cordon_exit_code": code}))?;
                } else {
                    say(&format!(
                        "step {name:?} {why}, and the sandbox did not confirm its end in time: \
                         cordon tore the sandbox down"
                    ));
                }
            }
            StepEnd::StartFailed(reason, message) => {
                if self.json {
                    self.event(json!({"event": "step_failed_to_start", "step": name, "reason": reason,
                        "message": message, "cordon_exit_code": code}))?;
                } else {
                    say(&format!("step {name:?} could not start: {message}"));
                }
            }
        }
        Ok(())
    }
}

/// Inserts `prefix` at the start of every line; `at_start` carries line
/// state across chunks.
pub fn prefix_lines(b: &[u8], prefix: &str, at_start: &mut bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len() + prefix.len() * 4);
    for &c in b {
        if *at_start {
            out.extend_from_slice(prefix.as_bytes());
            *at_start = false;
        }
        out.push(c);
        if c == b'\n' {
            *at_start = true;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_prefix_lines_across_chunks() {
        let mut s = true;
        let mut out = prefix_lines(b"a\nb", "[x] ", &mut s);
        out.extend(prefix_lines(b"c\n\nd", "[x] ", &mut s));
        assert_eq!(String::from_utf8(out).unwrap(), "[x] a\n[x] bc\n[x] \n[x] d");
    }
}
