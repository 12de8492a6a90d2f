//! The concurrency window of one quota scope: how many attempts may be in
//! flight in it now. Two rules move it, both driven by completions rather
//! than the clock:
//!
//! - **Slow start after a cooldown.** When a cooldown ends, the window
//!   reopens at the number of calls that succeeded while it ran (the calls
//!   that were in flight with the 429), at least one, and grows by one per
//!   success: it doubles per round trip while calls succeed, up to its
//!   target. A lone random 429 among many successful calls costs about one
//!   round trip; after a real quota wall (nothing succeeded) the scope
//!   comes back one call at a time instead of as a herd.
//! - **Adaptive concurrency (AIMD)**, for providers that say nothing of
//!   their limits: when the scope judges a signal to be the provider's
//!   quota or overload (see [`Signals`](super::Signals)), the target drops
//!   to 70 % of the calls in flight; after that it grows by one call per
//!   window of clean successes, up to the cap. Noise (a random 429 or 503 among successes) does not move it.
//!
//! The cap is the largest concurrency of the runs using the scope; the
//! window never exceeds it and never drops below one.

use std::sync::Mutex;

use tokio::sync::Notify;

/// Multiplicative decrease of the adaptive window on a quota or overload
/// signal.
const DECREASE: f64 = 0.7;

#[derive(Debug)]
struct State {
    cap: usize,
    /// The window now (at least one).
    window: usize,
    /// What slow start grows to; above it, growth is additive (adaptive)
    /// or the window is simply the cap.
    target: usize,
    /// Successes since the last additive increase.
    clean: usize,
    in_flight: usize,
    adaptive: bool,
    decreases: u64,
    /// The window before signals began to hold it (while their episode is
    /// judged).
    held_from: Option<usize>,
}

/// The window of one scope.
#[derive(Debug)]
pub struct Window {
    state: Mutex<State>,
    notify: Notify,
}

/// One attempt counted in the window; leaves it when dropped.
#[derive(Debug)]
#[must_use = "the permit is the attempt's place in the window"]
pub struct WindowPermit<'a> {
    window: &'a Window,
}

impl Drop for WindowPermit<'_> {
    fn drop(&mut self) {
        self.window.lock().in_flight -= 1;
        self.window.notify.notify_waiters();
    }
}

/// What the window is, for progress lines and summaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowView {
    /// Attempts allowed in flight now.
    pub limit: usize,
    /// Attempts in flight now.
    pub in_flight: usize,
    /// The most it may grow to.
    pub cap: usize,
    /// Whether adaptive concurrency is on.
    pub adaptive: bool,
    /// Multiplicative decreases so far.
    pub decreases: u64,
}

impl Window {
    /// An open window of `cap`, adaptive or not.
    pub fn new(cap: usize, adaptive: bool) -> Self {
        let cap = cap.max(1);
        Self {
            state: Mutex::new(State {
                cap,
                window: cap,
                target: cap,
                clean: 0,
                in_flight: 0,
                adaptive,
                decreases: 0,
                held_from: None,
            }),
            notify: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Raises the cap to `cap` (a run with more workers joined the scope);
    /// an open window opens with it.
    pub fn raise_cap(&self, cap: usize) {
        let mut st = self.lock();
        if cap > st.cap {
            let open = st.window >= st.cap;
            if st.target >= st.cap {
                st.target = cap;
            }
            st.cap = cap;
            if open {
                st.window = cap;
            }
            drop(st);
            self.notify.notify_waiters();
        }
    }

    /// Turns adaptive concurrency on or off (off: the target is the cap).
    pub fn set_adaptive(&self, adaptive: bool) {
        let mut st = self.lock();
        if st.adaptive != adaptive {
            st.adaptive = adaptive;
            if !adaptive {
                st.target = st.cap;
            }
        }
    }

    /// Waits for a place in the window.
    pub async fn acquire(&self) -> WindowPermit<'_> {
        loop {
            let notified = self.notify.notified();
            {
                let mut st = self.lock();
                if st.in_flight < st.window {
                    st.in_flight += 1;
                    return WindowPermit { window: self };
                }
            }
            notified.await;
        }
    }

    /// A call succeeded: slow start adds one; above the target, an adaptive
    /// window adds one per window of successes, a fixed one is the cap.
    /// True when the adaptive target grew (what the metrics show).
    pub fn success(&self) -> bool {
        let mut st = self.lock();
        let mut grew = false;
        if st.held_from.is_some() {
            // Held while a signal is judged: no growth until the verdict.
        } else if st.window < st.target {
            st.window += 1;
        } else if !st.adaptive {
            st.window = st.cap;
        } else if st.window < st.cap {
            st.clean += 1;
            if st.clean >= st.window {
                st.clean = 0;
                st.window += 1;
                st.target = st.window;
                grew = true;
            }
        }
        drop(st);
        self.notify.notify_waiters();
        grew
    }

    /// A signal (429, 529, 503) while the scope judges whether it is the
    /// provider's quota: an adaptive window does not refill the place of
    /// the failed call until the judgement, so calls refused fast do not
    /// churn through the provider meanwhile.
    pub fn hold(&self) {
        let mut st = self.lock();
        if !st.adaptive {
            return;
        }
        let w = st.window;
        st.held_from.get_or_insert(w);
        st.window = st.window.saturating_sub(1).max(1);
    }

    /// The judgement was not a quota: the window is what it was.
    pub fn unhold(&self) {
        let mut st = self.lock();
        if let Some(w) = st.held_from.take() {
            st.window = st.window.max(w);
            drop(st);
            self.notify.notify_waiters();
        }
    }

    /// The provider's quota or overload, with `in_flight` calls out when
    /// it was signalled: an adaptive window's target drops to 70 % of them.
    pub fn decrease(&self, in_flight: usize) {
        let mut st = self.lock();
        if !st.adaptive {
            return;
        }
        let to = ((in_flight as f64 * DECREASE).floor() as usize).max(1);
        st.held_from = None;
        st.target = to.min(st.target);
        st.window = st.window.min(st.target);
        st.clean = 0;
        st.decreases += 1;
        tracing::info!(window = st.window, "adaptive concurrency: decreased");
    }

    /// A cooldown ended after `succeeded` calls succeeded while it ran: the
    /// window reopens there (at least one) and slow-starts to its target.
    pub fn release(&self, succeeded: u64) {
        let mut st = self.lock();
        let from = usize::try_from(succeeded).unwrap_or(usize::MAX).max(1);
        st.window = from.min(st.target);
        drop(st);
        self.notify.notify_waiters();
    }

    /// What the window is now.
    pub fn view(&self) -> WindowView {
        let st = self.lock();
        WindowView {
            limit: st.window,
            in_flight: st.in_flight,
            cap: st.cap,
            adaptive: st.adaptive,
            decreases: st.decreases,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slow_start_doubles_per_round_trip_after_a_wall() {
        let w = Window::new(64, false);
        // A quota wall: nothing succeeded during the cooldown.
        w.release(0);
        let mut round = Vec::new();
        for _ in 0..7 {
            let limit = w.view().limit;
            round.push(limit);
            // One round trip: `limit` calls, all succeed.
            for _ in 0..limit {
                w.success();
            }
        }
        assert_eq!(round, [1, 2, 4, 8, 16, 32, 64]);
        // Not adaptive: it stays open at the cap.
        w.success();
        assert_eq!(w.view().limit, 64);
    }

    #[tokio::test]
    async fn after_noise_the_window_reopens_at_the_successes() {
        let w = Window::new(64, false);
        w.release(61);
        assert_eq!(w.view().limit, 61);
        for _ in 0..3 {
            w.success();
        }
        assert_eq!(w.view().limit, 64);
    }

    #[tokio::test]
    async fn aimd_decreases_to_70_percent_and_adds_one_per_window() {
        let w = Window::new(64, true);
        w.decrease(40);
        assert_eq!(w.view().limit, 28);
        assert_eq!(w.view().decreases, 1);
        // 28 successes: one window of clean successes adds one call.
        for _ in 0..28 {
            w.success();
        }
        assert_eq!(w.view().limit, 29);
        // Not adaptive: a decrease does nothing.
        let fixed = Window::new(64, false);
        fixed.decrease(40);
        assert_eq!(fixed.view().limit, 64);
    }

    #[tokio::test]
    async fn permits_wait_for_a_place_and_leave_on_drop() {
        let w = Window::new(2, true);
        w.decrease(1);
        let a = w.acquire().await;
        assert_eq!(w.view().in_flight, 1);
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(10), w.acquire());
        assert!(waiting.await.is_err(), "a window of one is full");
        drop(a);
        let _b = w.acquire().await;
        assert_eq!(w.view().in_flight, 1);
        w.raise_cap(8);
        assert_eq!(w.view().cap, 8);
    }
}
