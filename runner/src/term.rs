//! The user's terminal: cordon's own lines free of terminal escapes (they
//! may quote guest-supplied text), stdin read on a thread that never holds
//! up exit, raw mode and the window size for `-t`.

use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};

/// `s` with every control character other than newline and tab replaced by
/// a visible `\xNN` (C0, DEL, and C1 as U+0080..U+009F), so a hostile guest
/// cannot move the cursor, retitle the window or hide text in cordon's lines.
pub fn sanitize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' | '\t' => out.push(c),
            c if c.is_control() => {
                let _ = std::fmt::Write::write_fmt(&mut out, format_args!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out
}

/// `s` as one line: `sanitize`, and newlines shown as `\n` too, so text from
/// the guest (a file name, an error message) cannot forge a line of
/// cordon's own.
pub fn sanitize_line(s: &str) -> String {
    sanitize(s).replace('\n', "\\n").replace('\t', "\\t")
}

/// Writes one of cordon's own lines to stderr, as one sanitized line; a
/// closed stderr is not worth dying for.
pub fn say(msg: &str) {
    let mut e = std::io::stderr().lock();
    let _ = writeln!(e, "cordon: {}", sanitize_line(msg));
}

/// The key that stops a `-t` step from the local terminal (raw mode sends
/// every other key, Ctrl-C included, to the step): Ctrl-].
pub const ESCAPE: u8 = 0x1d;
pub const ESCAPE_NAME: &str = "Ctrl-]";

/// Reads stdin on a detached thread and hands chunks over a channel; `None`
/// is end of input (or an error). The thread blocks in read(2) and is never
/// joined, so a step that ends while the user types nothing ends the run.
pub fn stdin_chunks() -> tokio::sync::mpsc::Receiver<Option<Vec<u8>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let spawned = std::thread::Builder::new().name("stdin".into()).spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut input = std::io::stdin().lock();
        loop {
            match input.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if tx.blocking_send(Some(buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        let _ = tx.blocking_send(None);
    });
    if spawned.is_err() {
        tracing::warn!("could not start the stdin reader; the step gets end of input");
    }
    rx
}

fn stdin_fd() -> BorrowedFd<'static> {
    // SAFETY: fd 0 stays open for the life of the process.
    unsafe { BorrowedFd::borrow_raw(0) }
}

pub fn stdin_is_tty() -> bool {
    nix::unistd::isatty(stdin_fd()).unwrap_or(false)
}

/// The terminal's size as (rows, cols), from stdin or stdout; 24x80 when
/// neither is a terminal.
pub fn window_size() -> (u16, u16) {
    for fd in [0, 1] {
        let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCGWINSZ writes one winsize into the struct we own.
        let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
        if rc == 0 && ws.ws_row > 0 && ws.ws_col > 0 {
            return (ws.ws_row, ws.ws_col);
        }
    }
    (24, 80)
}

/// The terminal in raw mode until dropped (then restored, also on error
/// paths), so keys (Ctrl-C included) go to the step's pty in the sandbox.
pub struct RawMode {
    saved: nix::sys::termios::Termios,
}

impl RawMode {
    /// `None` when stdin is not a terminal.
    pub fn enter() -> Option<RawMode> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let fd = stdin_fd();
        let saved = tcgetattr(fd).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(fd, SetArg::TCSADRAIN, &raw).ok()?;
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(stdin_fd().as_fd(), nix::sys::termios::SetArg::TCSADRAIN, &self.saved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_sanitize_table() {
        let cases = [
            ("plain text", "plain text"),
            ("two\nlines\tand tab", "two\nlines\tand tab"),
            ("\x1b]0;pwned\x07title", "\\x1b]0;pwned\\x07title"),
            ("\x1b[2J\x1b[Hclear", "\\x1b[2J\\x1b[Hclear"),
            ("cr\rover", "cr\\x0dover"),
            ("c1 \u{9b}31m csi", "c1 \\x9b31m csi"),
            ("del\x7f", "del\\x7f"),
            ("ünïcode ✓", "ünïcode ✓"),
        ];
        for (input, want) in cases {
            assert_eq!(sanitize(input), want, "{input:?}");
        }
        assert_eq!(
            sanitize_line("x\ncordon: artifact out: signature OK\x1b[0m"),
            "x\\ncordon: artifact out: signature OK\\x1b[0m"
        );
    }
}
