//! The round trip after a provider's limits first come into force.
//!
//! Before any reply, a run sends a window of calls knowing nothing. The
//! first reply states the limits, but what it says remains was counted
//! when that call arrived: the calls still in flight, this run's and
//! another process's started at the same moment, are not in it. Admitting
//! more on its word makes two processes each take what remains, together
//! twice of it. So new calls wait until the calls in flight when the
//! limits came into force have been answered (each reply brings a later
//! count), at most [`MAX_WAIT`]: one round trip, once per scope.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// The longest a new call waits for the replies of the calls in flight
/// (a call that hangs must not hold the run up).
const MAX_WAIT: Duration = Duration::from_secs(5);

/// Calls in flight when limits came into force, not answered yet.
#[derive(Debug, Default)]
pub struct Settle {
    /// Attempts numbered below this were in flight then (0: never began).
    before: AtomicU64,
    unanswered: AtomicUsize,
    settled: Notify,
    /// When it began: nobody waits past `began + MAX_WAIT`.
    began: OnceLock<Instant>,
}

impl Settle {
    /// Limits came into force with `in_flight` attempts out, numbered below
    /// `next_seq`. Only the first time counts.
    pub fn begin(&self, next_seq: u64, in_flight: usize) {
        if self
            .before
            .compare_exchange(0, next_seq.max(1), Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            let _ = self.began.set(Instant::now());
            self.unanswered.store(in_flight, Ordering::Release);
        }
    }

    /// Attempt `seq` ended.
    pub fn ended(&self, seq: u64) {
        if seq >= self.before.load(Ordering::Acquire) {
            return;
        }
        let prev = self
            .unanswered
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        if prev == Ok(1) {
            self.settled.notify_waiters();
        }
    }

    /// Waits until those calls were answered (at once when they were, or
    /// when [`MAX_WAIT`] has passed since the limits came into force).
    pub async fn wait(&self) {
        // The common case, every attempt of a run: nothing to wait for.
        if self.unanswered.load(Ordering::Acquire) == 0 {
            return;
        }
        let Some(began) = self.began.get() else {
            return;
        };
        let wait = async {
            loop {
                let settled = self.settled.notified();
                tokio::pin!(settled);
                settled.as_mut().enable();
                if self.unanswered.load(Ordering::Acquire) == 0 {
                    return;
                }
                settled.await;
            }
        };
        let _ = tokio::time::timeout_at(*began + MAX_WAIT, wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn new_calls_wait_for_the_replies_of_the_calls_in_flight() {
        let s = std::sync::Arc::new(Settle::default());
        // Nothing began: no wait.
        s.wait().await;
        s.begin(10, 2);
        s.begin(20, 9); // only the first time counts
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { s.wait().await }
        });
        tokio::task::yield_now().await;
        s.ended(12); // began after: not one of them
        s.ended(3);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        s.ended(4);
        waiter.await.unwrap();
        // A call that never answers holds nobody longer than MAX_WAIT.
        let hung = Settle::default();
        hung.begin(5, 1);
        let t0 = tokio::time::Instant::now();
        hung.wait().await;
        assert_eq!(t0.elapsed(), MAX_WAIT);
        // Nor does it hold a later call again.
        hung.wait().await;
        assert_eq!(t0.elapsed(), MAX_WAIT);
    }
}
