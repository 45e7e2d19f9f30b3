//! Progress of image builds and imports: a spinner (or a byte bar) on a
//! terminal, plain `cordon:` lines for the main stages otherwise, nothing
//! at all from the tools' chatter unless they fail.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::Duration;

pub struct Progress<'a> {
    interactive: bool,
    /// Made at the first stage, so a run that builds nothing draws nothing.
    bar: std::cell::OnceCell<ProgressBar>,
    log: &'a dyn Fn(&str),
}

impl<'a> Progress<'a> {
    /// A spinner when `interactive` (stderr is a terminal and no `--json`),
    /// else stage lines through `log`.
    pub fn new(interactive: bool, log: &'a dyn Fn(&str)) -> Progress<'a> {
        Progress { interactive, bar: std::cell::OnceCell::new(), log }
    }

    fn bar(&self) -> Option<&ProgressBar> {
        if !self.interactive {
            return None;
        }
        Some(self.bar.get_or_init(|| {
            let b = ProgressBar::new_spinner();
            b.set_style(ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}").expect("static template"));
            b.enable_steady_tick(Duration::from_millis(120));
            b
        }))
    }

    /// Interactive when stderr is a terminal.
    pub fn auto(quiet: bool, log: &'a dyn Fn(&str)) -> Progress<'a> {
        Progress::new(!quiet && std::io::stderr().is_terminal(), log)
    }

    /// A main stage: always said, on the spinner or as a line.
    pub fn stage(&self, msg: &str) {
        match self.bar() {
            Some(b) => {
                b.println(format!("cordon: {msg}"));
                b.set_message(msg.to_string());
            }
            None => (self.log)(msg),
        }
    }

    /// A tool's progress line: shown on the spinner only.
    pub fn detail(&self, msg: &str) {
        if let Some(b) = self.bar() {
            b.set_message(crate::term::sanitize_line(msg));
        }
    }

    /// Switches the spinner to a byte bar of `total` bytes.
    pub fn bytes(&self, total: u64) {
        if let Some(b) = self.bar() {
            b.set_length(total);
            b.set_position(0);
            b.set_style(
                ProgressStyle::with_template("{bar:30} {bytes}/{total_bytes} {bytes_per_sec} {msg}")
                    .expect("static template"),
            );
        }
    }

    pub fn inc(&self, n: u64) {
        if let Some(b) = self.bar.get() {
            b.inc(n);
        }
    }

    pub fn finish(&self) {
        if let Some(b) = self.bar.get() {
            b.finish_and_clear();
        }
    }
}

impl Drop for Progress<'_> {
    fn drop(&mut self) {
        self.finish();
    }
}
