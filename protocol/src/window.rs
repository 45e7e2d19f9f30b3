//! Credit-based flow control for one data channel: the sender takes credit
//! before each data frame, the receiver gives it back as it consumes. This keeps
//! every buffered byte bounded by [`crate::INITIAL_WINDOW`] per channel while
//! one slow consumer never blocks the other streams of a connection.

use std::sync::Arc;
use tokio::sync::Semaphore;

use crate::INITIAL_WINDOW;

#[derive(Debug, Clone)]
pub struct Window {
    sem: Arc<Semaphore>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("peer granted credit beyond the window ({have} + {add} > {max})")]
pub struct CreditOverflow {
    pub have: usize,
    pub add: u32,
    pub max: u32,
}

impl Default for Window {
    fn default() -> Self {
        Window::new()
    }
}

impl Window {
    pub fn new() -> Window {
        Window { sem: Arc::new(Semaphore::new(INITIAL_WINDOW as usize)) }
    }

    /// Waits until `n` bytes of credit are available and takes them. Returns
    /// `false` when the window was closed (the stream is gone).
    pub async fn take(&self, n: usize) -> bool {
        let n = u32::try_from(n).expect("data chunks are far below u32::MAX");
        match self.sem.acquire_many(n).await {
            Ok(p) => {
                p.forget();
                true
            }
            Err(_) => false,
        }
    }

    /// Returns credit. A peer that returns more than it was ever given is
    /// misbehaving; the credit is refused rather than letting the window grow.
    pub fn give(&self, n: u32) -> Result<(), CreditOverflow> {
        let have = self.sem.available_permits();
        if have + n as usize > INITIAL_WINDOW as usize {
            return Err(CreditOverflow { have, add: n, max: INITIAL_WINDOW });
        }
        self.sem.add_permits(n as usize);
        Ok(())
    }

    /// Wakes every waiter with failure; later `take` calls fail at once.
    pub fn close(&self) {
        self.sem.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn test_window_take_blocks_until_give() {
        let w = Window::new();
        assert!(w.take(INITIAL_WINDOW as usize).await);
        let w2 = w.clone();
        let t = tokio::spawn(async move { w2.take(10).await });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!t.is_finished());
        w.give(10).unwrap();
        assert!(t.await.unwrap());
    }

    #[tokio::test]
    async fn test_window_give_overflow_refused() {
        let w = Window::new();
        assert!(w.give(1).is_err());
        assert!(w.take(100).await);
        assert!(w.give(100).is_ok());
        assert!(w.give(u32::MAX).is_err());
    }

    #[tokio::test]
    async fn test_window_close_fails_waiters() {
        let w = Window::new();
        assert!(w.take(INITIAL_WINDOW as usize).await);
        let w2 = w.clone();
        let t = tokio::spawn(async move { w2.take(1).await });
        w.close();
        assert!(!t.await.unwrap());
    }
}
