//! The coordinated cooldown of one quota scope.
//!
//! The first rate limit in a scope starts one cooldown; no new attempt in the
//! scope starts until it ends, calls in flight finish, and 429s from calls that
//! started before the cooldown neither extend it nor start another. After it
//! ends, waiting attempts are released spread over a ramp window.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// How long cooldowns last.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CooldownPolicy {
    /// Length of a cooldown when the provider gives no hint (10 s).
    #[serde(with = "crate::time::duration_ms")]
    pub default: Duration,
    /// Growth per consecutive cooldown without a success in between (1.5).
    pub multiplier: f64,
    /// Cap for cooldowns without a hint (300 s).
    #[serde(with = "crate::time::duration_ms")]
    pub max: Duration,
    /// Cap for a provider's hint (600 s).
    #[serde(with = "crate::time::duration_ms")]
    pub max_hint: Duration,
    /// Window over which waiting attempts are released after a cooldown
    /// (5 s). Never longer than the cooldown itself: a provider that asks
    /// for 1 s gets its traffic back within 1 s more, not 5.
    #[serde(with = "crate::time::duration_ms")]
    pub ramp: Duration,
}

impl Default for CooldownPolicy {
    fn default() -> Self {
        Self {
            default: Duration::from_secs(10),
            multiplier: 1.5,
            max: Duration::from_secs(300),
            max_hint: Duration::from_secs(600),
            ramp: Duration::from_secs(5),
        }
    }
}

impl CooldownPolicy {
    /// Length of the cooldown number `consecutive` (1-based), given a hint.
    pub fn length(&self, consecutive: u32, hint: Option<Duration>) -> Duration {
        if let Some(h) = hint {
            return h.min(self.max_hint);
        }
        let exp = i32::try_from(consecutive.saturating_sub(1)).unwrap_or(i32::MAX);
        let secs = self.default.as_secs_f64() * self.multiplier.max(1.0).powi(exp);
        crate::time::secs_f64(secs.min(self.max.as_secs_f64())).unwrap_or(self.max)
    }
}

#[derive(Debug, Default)]
struct State {
    /// End of the latest cooldown.
    until: Option<Instant>,
    /// Release window after it.
    ramp: Duration,
}

/// What [`Cooldown::report_rate_limit`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CooldownOutcome {
    /// A new cooldown of this length began.
    Started(Duration),
    /// A cooldown is already running: this 429 is ignored.
    Ignored,
}

/// The cooldown of one scope. Cheap to query; all waiting is done by callers.
#[derive(Debug)]
pub struct Cooldown {
    policy: CooldownPolicy,
    state: Mutex<State>,
    consecutive: AtomicU32,
    started_count: AtomicU64,
    ended_reported: AtomicU64,
}

impl Cooldown {
    /// A cooldown with no history.
    pub fn new(policy: CooldownPolicy) -> Self {
        Self {
            policy,
            state: Mutex::new(State::default()),
            consecutive: AtomicU32::new(0),
            started_count: AtomicU64::new(0),
            ended_reported: AtomicU64::new(0),
        }
    }

    /// The policy.
    pub fn policy(&self) -> &CooldownPolicy {
        &self.policy
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The end of the running cooldown, if one is running at `now`.
    pub fn active_until(&self, now: Instant) -> Option<Instant> {
        self.lock().until.filter(|u| *u > now)
    }

    /// How many cooldowns this scope has started.
    pub fn started_count(&self) -> u64 {
        self.started_count.load(Ordering::Relaxed)
    }

    /// When an attempt may start: `None` now, or the instant to sleep until.
    /// An attempt blocked by a cooldown is released at a random point of the
    /// ramp window after it; one arriving inside the window is spread too.
    pub fn ready_at(&self, now: Instant) -> Option<Instant> {
        let (until, ramp) = {
            let st = self.lock();
            (st.until?, st.ramp)
        };
        let ramp_end = until + ramp;
        if now >= ramp_end {
            return None;
        }
        let target = until + ramp.mul_f64(crate::rand::unit());
        (target > now).then_some(target)
    }

    /// Reports a rate limit received at `now`. Starts a cooldown unless one
    /// is running: 429s from calls that were in flight when it began arrive
    /// during it and neither extend it nor start another. A 429 that arrives
    /// after the cooldown ended is the provider's fresh word and starts a new
    /// (consecutive) one.
    pub fn report_rate_limit(&self, hint: Option<Duration>, now: Instant) -> CooldownOutcome {
        let mut st = self.lock();
        if st.until.is_some_and(|u| u > now) {
            return CooldownOutcome::Ignored;
        }
        let consecutive = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        let length = self
            .policy
            .length(consecutive, hint)
            .min(crate::time::MAX_DURATION);
        st.until = Some(now + length);
        st.ramp = self.policy.ramp.min(length);
        self.started_count.fetch_add(1, Ordering::Relaxed);
        drop(st);
        tracing::warn!(
            cooldown_s = length.as_secs_f64(),
            consecutive,
            "rate limited: cooldown started"
        );
        CooldownOutcome::Started(length)
    }

    /// True exactly once per cooldown, for the first attempt that goes ahead
    /// after it ended (to report its end).
    pub fn take_ended(&self) -> bool {
        let started = self.started_count.load(Ordering::Relaxed);
        started > 0 && self.ended_reported.fetch_max(started, Ordering::AcqRel) < started
    }

    /// A call in this scope succeeded: the next cooldown is a first one again.
    pub fn record_success(&self) {
        if self.consecutive.load(Ordering::Relaxed) != 0 {
            self.consecutive.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> CooldownPolicy {
        CooldownPolicy {
            ramp: Duration::ZERO,
            ..CooldownPolicy::default()
        }
    }

    #[test]
    fn lengths() {
        let p = CooldownPolicy::default();
        assert_eq!(p.length(1, None), Duration::from_secs(10));
        assert_eq!(p.length(2, None), Duration::from_secs(15));
        assert_eq!(p.length(3, None), Duration::from_secs_f64(22.5));
        assert_eq!(p.length(40, None), Duration::from_secs(300));
        assert_eq!(
            p.length(1, Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
        assert_eq!(
            p.length(1, Some(Duration::from_secs(7200))),
            Duration::from_secs(600)
        );
        assert_eq!(p.length(1, Some(Duration::ZERO)), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn late_429_is_ignored_and_success_resets() {
        let c = Cooldown::new(policy());
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        assert_eq!(
            c.report_rate_limit(None, t0 + s),
            CooldownOutcome::Started(Duration::from_secs(10))
        );
        // A call in flight when it began reports during it: ignored, even
        // with a longer hint.
        assert_eq!(
            c.report_rate_limit(Some(100 * s), t0 + 2 * s),
            CooldownOutcome::Ignored
        );
        assert_eq!(c.active_until(t0 + 2 * s), Some(t0 + 11 * s));
        assert_eq!(c.ready_at(t0 + 2 * s), Some(t0 + 11 * s));
        assert_eq!(c.ready_at(t0 + 11 * s), None);
        // A 429 after it ended: a second, consecutive one.
        assert_eq!(
            c.report_rate_limit(None, t0 + 13 * s),
            CooldownOutcome::Started(Duration::from_secs(15))
        );
        c.record_success();
        assert_eq!(
            c.report_rate_limit(None, t0 + 31 * s),
            CooldownOutcome::Started(Duration::from_secs(10))
        );
        assert_eq!(c.started_count(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn ramp_spreads_release() {
        let c = Cooldown::new(CooldownPolicy::default());
        let t0 = Instant::now();
        c.report_rate_limit(Some(Duration::from_secs(20)), t0);
        let until = t0 + Duration::from_secs(20);
        let mut targets: Vec<Instant> = (0..200).filter_map(|_| c.ready_at(t0)).collect();
        assert_eq!(targets.len(), 200);
        targets.sort();
        assert!(targets[0] >= until);
        assert!(targets[199] < until + Duration::from_secs(5));
        // Spread: the middle one is well inside the window.
        let mid = targets[100] - until;
        assert!(
            mid > Duration::from_secs(1) && mid < Duration::from_secs(4),
            "{mid:?}"
        );
        assert_eq!(c.ready_at(until + Duration::from_secs(5)), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_cooldown_ramps_no_longer_than_itself() {
        let c = Cooldown::new(CooldownPolicy::default());
        let t0 = Instant::now();
        c.report_rate_limit(Some(Duration::from_secs(1)), t0);
        let until = t0 + Duration::from_secs(1);
        let targets: Vec<Instant> = (0..200).filter_map(|_| c.ready_at(t0)).collect();
        assert_eq!(targets.len(), 200);
        assert!(
            targets
                .iter()
                .all(|t| *t >= until && *t < until + Duration::from_secs(1))
        );
        assert!(
            targets
                .iter()
                .any(|t| *t - until > Duration::from_millis(500))
        );
        assert_eq!(c.ready_at(until + Duration::from_secs(1)), None);
    }
}
