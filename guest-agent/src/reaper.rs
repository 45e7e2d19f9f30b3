//! The one place that calls wait: reaps every child (exec leaders, and as PID 1
//! or subreaper every orphan) and hands exit statuses to whoever registered the
//! pid. Registration happens under the same lock as reaping, and spawning
//! happens inside that lock, so an exit is never reaped before its owner listens.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;

#[derive(Debug, Clone, Copy)]
pub struct Reaped {
    /// Raw wait status.
    pub status: i32,
    pub maxrss_kb: u64,
}

#[derive(Default)]
pub struct Reaper {
    waiting: Mutex<HashMap<i32, oneshot::Sender<Reaped>>>,
}

impl Reaper {
    /// Starts the reaper task; call once, inside the runtime.
    pub fn start() -> Arc<Reaper> {
        let r = Arc::new(Reaper::default());
        let r2 = r.clone();
        let mut sig = signal(SignalKind::child()).expect("installing a SIGCHLD handler cannot fail in a fresh runtime");
        tokio::spawn(async move {
            loop {
                // The periodic sweep covers a SIGCHLD that raced the handler setup.
                let _ = tokio::time::timeout(std::time::Duration::from_secs(1), sig.recv()).await;
                r2.reap_all();
            }
        });
        r
    }

    /// Runs `spawn` with the reaper locked and registers the pid it returns.
    pub fn spawn_registered<T, E>(
        &self,
        spawn: impl FnOnce() -> Result<(i32, T), E>,
    ) -> Result<(T, oneshot::Receiver<Reaped>), E> {
        let mut w = self.waiting.lock().expect("reaper lock poisoned");
        let (pid, t) = spawn()?;
        let (tx, rx) = oneshot::channel();
        w.insert(pid, tx);
        Ok((t, rx))
    }

    fn reap_all(&self) {
        let mut w = self.waiting.lock().expect("reaper lock poisoned");
        loop {
            let mut status = 0;
            // SAFETY: zeroed rusage is a valid out-parameter for wait4.
            let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: valid pointers to locals.
            let pid = unsafe { libc::wait4(-1, &mut status, libc::WNOHANG, &mut ru) };
            if pid <= 0 {
                break;
            }
            if let Some(tx) = w.remove(&pid) {
                let _ = tx.send(Reaped { status, maxrss_kb: ru.ru_maxrss.max(0) as u64 });
            }
        }
    }
}

/// Splits a wait status into (exit code, signal).
pub fn decode_status(status: i32) -> (Option<i32>, Option<i32>) {
    if libc::WIFEXITED(status) {
        (Some(libc::WEXITSTATUS(status)), None)
    } else if libc::WIFSIGNALED(status) {
        (None, Some(libc::WTERMSIG(status)))
    } else {
        (None, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_decode_status_exit_and_signal() {
        assert_eq!(decode_status(42 << 8), (Some(42), None));
        assert_eq!(decode_status(0), (Some(0), None));
        assert_eq!(decode_status(9), (None, Some(9)));
    }
}
