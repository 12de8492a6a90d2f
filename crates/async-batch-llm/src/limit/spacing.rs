//! Sends spread over the round trip while nothing is known of the quota.
//!
//! A closed loop of `C` calls whose replies take about the same time sends
//! in bursts: `C` calls within a few milliseconds, then nothing until their
//! replies come back, and the same again every round trip. A provider that
//! states no limits shows its wall only by refusing, and a wall met in the
//! middle of a burst refuses every call of the burst behind it (up to `C`)
//! before the first refusal can stop anything: measured on a hidden
//! 60,000-token minute at `C = 64`, 1 to 33 refusals at the first wall,
//! depending on where in the burst it fell.
//!
//! A refusal comes back at once (the provider generates nothing), so with
//! the sends spread out the first one arrives while only a few more have
//! gone, and the cooldown it starts holds the rest. So while the scope has
//! no limit in force, two sends are at least `round trip / (window ×
//! SPREAD)` apart: twice the rate the loop reaches on average anyway (its
//! window per round trip), so only a burst waits, and a run with no quota
//! loses at most half a round trip, once, at its start. The round trip is
//! a moving average of the scope's successful calls; until one succeeded,
//! or when it is too short for a timer to tell apart ([`MIN_GAP`]), sends
//! are not spaced at all.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How much faster than the loop's average rate spaced sends may go.
const SPREAD: u32 = 2;

/// Gaps shorter than this are not kept (a timer cannot wait them, and a
/// loop that fast has no burst worth spreading).
const MIN_GAP: Duration = Duration::from_micros(100);

/// Weight of the newest round trip in the moving average (1 / 8).
const NEWEST: u32 = 8;

#[derive(Debug, Default)]
struct State {
    /// Moving average of a successful call's round trip (`None` before the
    /// first).
    round_trip: Option<Duration>,
    /// The earliest the next send may go.
    next: Option<Instant>,
}

/// The spacing of one scope's sends.
#[derive(Debug, Default)]
pub struct Spacing {
    state: Mutex<State>,
}

impl Spacing {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A call succeeded after `round_trip`.
    pub fn succeeded(&self, round_trip: Duration) {
        let mut st = self.lock();
        st.round_trip = Some(match st.round_trip {
            None => round_trip,
            Some(avg) => (avg * (NEWEST - 1) + round_trip) / NEWEST,
        });
    }

    /// The least time between two sends of a window of `window` calls.
    fn gap(st: &State, window: usize) -> Option<Duration> {
        let window = u32::try_from(window.max(1)).unwrap_or(u32::MAX);
        let gap = st.round_trip? / window.saturating_mul(SPREAD);
        (gap >= MIN_GAP).then_some(gap)
    }

    /// Takes the next send's place: the instant it may go, at the earliest
    /// `now` (`None`: at once).
    fn take(&self, window: usize, now: Instant) -> Option<Instant> {
        let mut st = self.lock();
        let gap = Self::gap(&st, window)?;
        let at = st.next.map_or(now, |n| n.max(now));
        // An instant past the clock's range: the next send goes unspaced.
        st.next = at.checked_add(gap);
        (at > now).then_some(at)
    }

    /// Waits for the next send's place in a window of `window` calls.
    pub async fn wait(&self, window: usize) {
        if let Some(at) = self.take(window, Instant::now()) {
            tokio::time::sleep_until(at).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn sends_are_spread_at_twice_the_window_per_round_trip() {
        let s = Spacing::default();
        let t0 = Instant::now();
        // Nothing known yet: a whole window goes at once.
        for _ in 0..64 {
            s.wait(64).await;
        }
        assert_eq!(t0.elapsed(), Duration::ZERO);
        // A 64 ms round trip: 64 sends take half of it, 0.5 ms apart (the
        // timer wakes on whole milliseconds; the places do not drift).
        s.succeeded(Duration::from_millis(64));
        let t1 = Instant::now();
        for _ in 0..64 {
            s.wait(64).await;
        }
        let last = Duration::from_micros(63 * 500);
        assert!((last..=last + Duration::from_millis(1)).contains(&t1.elapsed()));
        // A smaller window spaces its sends further apart.
        tokio::time::advance(Duration::from_secs(1)).await;
        let t2 = Instant::now();
        for _ in 0..5 {
            s.wait(8).await;
        }
        assert_eq!(t2.elapsed(), Duration::from_millis(4 * 4));
    }

    #[tokio::test(start_paused = true)]
    async fn the_round_trip_is_a_moving_average_and_short_ones_are_not_spaced() {
        let s = Spacing::default();
        s.succeeded(Duration::from_millis(80));
        s.succeeded(Duration::from_millis(0));
        // 80 × 7/8 = 70 ms.
        assert_eq!(s.lock().round_trip, Some(Duration::from_millis(70)));
        // A loop of microsecond calls is not spaced.
        let fast = Spacing::default();
        fast.succeeded(Duration::from_micros(50));
        let t0 = Instant::now();
        for _ in 0..1000 {
            fast.wait(1).await;
        }
        assert_eq!(t0.elapsed(), Duration::ZERO);
        assert!(fast.lock().next.is_none());
    }
}
