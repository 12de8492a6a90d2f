//! The coordinated cooldown of one quota scope.
//!
//! The first rate limit in a scope starts one cooldown; no new attempt in the
//! scope starts until it ends, and calls in flight finish. Every hint is
//! honoured: a 429 that arrives while a cooldown runs (from a call that was
//! in flight when it began) extends it to its own `t + hint` when that is
//! later, so no item is retried before its hint. Only the escalation of
//! cooldowns without a hint (10 s, then ×1.5) counts fresh 429s alone. A
//! cooldown may end early when the calls in flight with the 429 show it was
//! noise ([`Cooldown::end_hintless`]), but never before the latest hint its
//! 429s brought. What comes after a cooldown, a slow start driven by completions, is
//! the scope's [`Window`](super::Window).

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
}

impl Default for CooldownPolicy {
    fn default() -> Self {
        Self {
            default: Duration::from_secs(10),
            multiplier: 1.5,
            max: Duration::from_secs(300),
            max_hint: Duration::from_secs(600),
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
    /// The latest `t + hint` of the 429s of this cooldown: it never ends
    /// before that.
    hinted_until: Option<Instant>,
    /// When the latest cooldown began.
    began: Option<Instant>,
    /// The earlier cooldowns: their total length and the longest.
    past_total: Duration,
    past_longest: Duration,
}

/// The time a scope spent in cooldowns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CooldownTime {
    /// All cooldowns together.
    pub total: Duration,
    /// The longest one.
    pub longest: Duration,
}

/// What [`Cooldown::report_rate_limit`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CooldownOutcome {
    /// A new cooldown of this length began.
    Started(Duration),
    /// The running cooldown now ends this long after the 429 (its hint).
    Extended(Duration),
    /// A cooldown is running and already ends after this 429's hint (or
    /// the 429 had none).
    Joined,
}

/// The cooldown of one scope. Cheap to query; all waiting is done by callers.
#[derive(Debug)]
pub struct Cooldown {
    policy: CooldownPolicy,
    state: Mutex<State>,
    /// Wakes the waiters when a cooldown ends early.
    shortened: tokio::sync::Notify,
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
            shortened: tokio::sync::Notify::new(),
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

    /// The latest end a provider's hint gave, if it is after `now`.
    pub fn hinted_until(&self, now: Instant) -> Option<Instant> {
        self.lock().hinted_until.filter(|u| *u > now)
    }

    /// How long after `now` the latest hint still holds the scope (zero
    /// when none does).
    pub fn hinted_wait(&self, now: Instant) -> Duration {
        self.hinted_until(now)
            .map_or(Duration::ZERO, |u| u.saturating_duration_since(now))
    }

    /// The time spent in cooldowns up to `now` (a running one up to now).
    pub fn time_spent(&self, now: Instant) -> CooldownTime {
        let st = self.lock();
        let current = match (st.began, st.until) {
            (Some(began), Some(until)) => until.min(now).saturating_duration_since(began),
            _ => Duration::ZERO,
        };
        CooldownTime {
            total: st.past_total + current,
            longest: st.past_longest.max(current),
        }
    }

    /// How many cooldowns this scope has started.
    pub fn started_count(&self) -> u64 {
        self.started_count.load(Ordering::Relaxed)
    }

    /// Reports a rate limit received at `now`. Starts a cooldown unless one
    /// is running; a running one is extended to `now + hint` when that is
    /// later (late 429s included: every hint is honoured). A 429 without a
    /// hint during a cooldown joins it and does not escalate; one that
    /// arrives after the cooldown ended is the provider's fresh word and
    /// starts a new (consecutive) one.
    pub fn report_rate_limit(&self, hint: Option<Duration>, now: Instant) -> CooldownOutcome {
        let mut st = self.lock();
        let hint = hint.map(|h| h.min(self.policy.max_hint));
        let hint_end = hint.and_then(|h| crate::time::after(now, h));
        if st.until.is_some_and(|u| u > now) {
            st.hinted_until = st.hinted_until.max(hint_end);
            if let (Some(h), Some(end)) = (hint, hint_end)
                && st.until.is_some_and(|u| end > u)
            {
                st.until = Some(end);
                return CooldownOutcome::Extended(h);
            }
            return CooldownOutcome::Joined;
        }
        let consecutive = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        let length = self
            .policy
            .length(consecutive, hint)
            .min(crate::time::MAX_DURATION);
        // The cooldown before this one is over: it counts as it ended.
        if let (Some(began), Some(until)) = (st.began, st.until) {
            let length = until.saturating_duration_since(began);
            st.past_total += length;
            st.past_longest = st.past_longest.max(length);
        }
        st.began = Some(now);
        st.until = Some(now + length);
        st.hinted_until = hint_end;
        self.started_count.fetch_add(1, Ordering::Relaxed);
        drop(st);
        tracing::info!(
            cooldown_s = length.as_secs_f64(),
            consecutive,
            "rate limited: cooldown started"
        );
        CooldownOutcome::Started(length)
    }

    /// Ends a running cooldown early, at `now` but never before the latest
    /// hint of its 429s: the calls in flight with its 429 came back mostly
    /// successful, so the 429 was noise and waiting out the default length
    /// would only cost time. False (and nothing changes) when none runs or
    /// the hints already set its end.
    pub fn end_hintless(&self, now: Instant) -> bool {
        let mut st = self.lock();
        let Some(until) = st.until.filter(|u| *u > now) else {
            return false;
        };
        let end = st.hinted_until.map_or(now, |h| h.max(now));
        if end >= until {
            return false;
        }
        st.until = Some(end);
        drop(st);
        self.shortened.notify_waiters();
        tracing::info!("the 429 was noise: cooldown ended early");
        true
    }

    /// Completes when a running cooldown is shortened (a waiter then looks
    /// at [`Cooldown::active_until`] again).
    pub fn shortened(&self) -> tokio::sync::futures::Notified<'_> {
        self.shortened.notified()
    }

    /// True exactly once per cooldown, for the first attempt that goes ahead
    /// after it ended (to report its end and release the window).
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
    async fn late_429s_extend_to_their_hints_and_success_resets() {
        let c = Cooldown::new(CooldownPolicy::default());
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        assert_eq!(
            c.report_rate_limit(None, t0 + s),
            CooldownOutcome::Started(Duration::from_secs(10))
        );
        // A call in flight when it began reports during it with a longer
        // hint: the cooldown now ends at its t + hint.
        assert_eq!(
            c.report_rate_limit(Some(100 * s), t0 + 2 * s),
            CooldownOutcome::Extended(100 * s)
        );
        assert_eq!(c.active_until(t0 + 2 * s), Some(t0 + 102 * s));
        // A shorter hint, or none, joins it.
        assert_eq!(
            c.report_rate_limit(Some(s), t0 + 3 * s),
            CooldownOutcome::Joined
        );
        assert_eq!(
            c.report_rate_limit(None, t0 + 3 * s),
            CooldownOutcome::Joined
        );
        assert_eq!(c.active_until(t0 + 102 * s), None);
        // A 429 after it ended: a second, consecutive one (the hintless
        // escalation counts fresh 429s only: 15 s, not 22.5 s).
        assert_eq!(
            c.report_rate_limit(None, t0 + 103 * s),
            CooldownOutcome::Started(Duration::from_secs(15))
        );
        c.record_success();
        assert_eq!(
            c.report_rate_limit(None, t0 + 131 * s),
            CooldownOutcome::Started(Duration::from_secs(10))
        );
        assert_eq!(c.started_count(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn only_a_cooldown_without_a_hint_ends_early() {
        let c = Cooldown::new(CooldownPolicy::default());
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        c.report_rate_limit(None, t0);
        assert!(c.end_hintless(t0 + s));
        assert_eq!(c.active_until(t0 + s), None);
        assert!(!c.end_hintless(t0 + s), "none is running");
        c.report_rate_limit(Some(5 * s), t0 + 2 * s);
        assert!(!c.end_hintless(t0 + 3 * s), "a hint is honoured");
        assert_eq!(c.active_until(t0 + 3 * s), Some(t0 + 7 * s));
        // A hintless cooldown (the third in a row: 22.5 s) ends early, but
        // never before a hint one of its 429s brought.
        c.report_rate_limit(None, t0 + 10 * s);
        c.report_rate_limit(Some(4 * s), t0 + 11 * s);
        assert!(c.end_hintless(t0 + 12 * s));
        assert_eq!(c.active_until(t0 + 12 * s), Some(t0 + 15 * s));
    }
}
