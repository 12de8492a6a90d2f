//! Requests-per-minute and tokens-per-minute admission for one quota scope.
//!
//! Each physical attempt reserves one request and an estimated token count
//! before it starts. In any rolling window the admitted requests and tokens
//! never exceed the limits; waiters are admitted strictly first come, first
//! served, each at the moment room frees, so a steady run uses the whole
//! binding limit. After the call the reservation is settled: an
//! over-estimate is refunded, an under-estimate becomes debt (it delays
//! later admissions), unknown usage keeps the estimate, known zero usage
//! refunds the tokens but spends the request, and an attempt that never
//! started gives both back.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::time::Instant;

const MINUTE: Duration = Duration::from_secs(60);

/// Per-minute limits of a scope.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RateLimits {
    /// Requests per minute; fractions work (0.5 is one request per 120 s).
    pub rpm: Option<f64>,
    /// Tokens per minute.
    pub tpm: Option<u64>,
    /// Added to every window: the provider counts a request when it arrives,
    /// a little after it is admitted here, so a margin keeps bursts from
    /// overlapping its window (0; the CLI uses 0.5 s).
    #[serde(default, with = "crate::time::duration_ms", rename = "margin_ms")]
    pub margin: Duration,
}

impl RateLimits {
    /// True when no limit is set.
    pub fn is_empty(&self) -> bool {
        self.rpm.is_none() && self.tpm.is_none()
    }
}

/// What admission did, for the batch statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AdmissionStats {
    /// Reservations made (one per physical attempt).
    pub reserved: u64,
    /// Tokens reserved by estimate.
    pub reserved_tokens: u64,
    /// Tokens given back after over-estimates.
    pub refunded_tokens: u64,
    /// Tokens added after under-estimates.
    pub debt_tokens: u64,
    /// Settlements that kept the estimate (usage unknown).
    pub retained: u64,
    /// Reservations given back whole (the attempt never started).
    pub cancelled: u64,
}

impl AdmissionStats {
    /// The change from `earlier` to `self`.
    #[must_use]
    pub fn since(&self, earlier: &AdmissionStats) -> AdmissionStats {
        AdmissionStats {
            reserved: self.reserved - earlier.reserved,
            reserved_tokens: self.reserved_tokens - earlier.reserved_tokens,
            refunded_tokens: self.refunded_tokens - earlier.refunded_tokens,
            debt_tokens: self.debt_tokens - earlier.debt_tokens,
            retained: self.retained - earlier.retained,
            cancelled: self.cancelled - earlier.cancelled,
        }
    }
}

/// Why a reservation cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionError {
    /// The estimate alone is larger than the per-minute token limit.
    #[error("the estimate of {estimate} tokens exceeds the limit of {limit} tokens per minute")]
    EstimateTooLarge {
        /// The estimate.
        estimate: u64,
        /// The limit.
        limit: u64,
    },
}

/// One admitted attempt, to be settled or cancelled.
#[derive(Debug)]
#[must_use = "settle or cancel a reservation"]
pub struct Reservation {
    id: u64,
    tokens: u64,
}

impl Reservation {
    /// The reserved token estimate.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }
}

#[derive(Default)]
struct State {
    requests: VecDeque<(u64, Instant)>,
    tokens: VecDeque<(u64, Instant, u64)>,
    token_sum: u64,
    queue: VecDeque<u64>,
    next_ticket: u64,
    next_id: u64,
    stats: AdmissionStats,
}

/// The limiter of one scope.
pub struct Admission {
    per_window: u64,
    window: Duration,
    token_window: Duration,
    tpm: Option<u64>,
    state: Mutex<State>,
    notify: Notify,
    waiting: AtomicU64,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("per_window", &self.per_window)
            .field("window", &self.window)
            .field("tpm", &self.tpm)
            .finish_non_exhaustive()
    }
}

/// Leaves the queue if a waiter is cancelled.
struct Ticket<'a> {
    adm: &'a Admission,
    id: u64,
    done: bool,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.adm.waiting.fetch_sub(1, Ordering::Relaxed);
        if !self.done {
            let mut st = self.adm.lock();
            st.queue.retain(|t| *t != self.id);
            drop(st);
            self.adm.notify.notify_waiters();
        }
    }
}

impl Admission {
    /// A limiter for `limits`; `None` when there are none.
    pub fn new(limits: RateLimits) -> Option<Self> {
        if limits.is_empty() {
            return None;
        }
        // R requests per minute as n per window of 60·n/R s: exact for
        // integers (n = R per 60 s) and for fractions (0.5: 1 per 120 s).
        let (per_window, window) = match limits.rpm {
            Some(r) if r.is_finite() && r > 0.0 => {
                let n = r.floor().max(1.0);
                (
                    n as u64,
                    crate::time::secs_f64(60.0 * n / r).unwrap_or(crate::time::MAX_DURATION),
                )
            }
            _ => (u64::MAX, MINUTE),
        };
        Some(Self {
            per_window,
            window: window.saturating_add(limits.margin),
            token_window: MINUTE.saturating_add(limits.margin),
            tpm: limits.tpm,
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            waiting: AtomicU64::new(0),
        })
    }

    /// The token limit per minute.
    pub fn tpm(&self) -> Option<u64> {
        self.tpm
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn prune(&self, st: &mut State, now: Instant) {
        while st
            .requests
            .front()
            .is_some_and(|r| r.1 + self.window <= now)
        {
            st.requests.pop_front();
        }
        while let Some(&(_, at, n)) = st.tokens.front() {
            if at + self.token_window > now {
                break;
            }
            st.tokens.pop_front();
            st.token_sum -= n;
        }
    }

    /// When a reservation of `tokens` fits, `None` if it fits now.
    fn fits_at(&self, st: &State, tokens: u64, now: Instant) -> Option<Instant> {
        let mut at = now;
        let count = st.requests.len() as u64;
        if count + 1 > self.per_window {
            let idx = (count + 1 - self.per_window - 1) as usize;
            at = at.max(st.requests[idx].1 + self.window);
        }
        if let Some(max) = self.tpm
            && st.token_sum + tokens > max
        {
            let mut need = st.token_sum + tokens - max;
            for &(_, t, n) in &st.tokens {
                at = at.max(t + self.token_window);
                if n >= need {
                    break;
                }
                need -= n;
            }
        }
        (at > now).then_some(at)
    }

    /// Waits for room and reserves one request and `tokens` tokens.
    pub async fn reserve(&self, tokens: u64) -> Result<Reservation, AdmissionError> {
        if let Some(limit) = self.tpm
            && tokens > limit
        {
            return Err(AdmissionError::EstimateTooLarge {
                estimate: tokens,
                limit,
            });
        }
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let mut ticket = {
            let mut st = self.lock();
            let id = st.next_ticket;
            st.next_ticket += 1;
            st.queue.push_back(id);
            Ticket {
                adm: self,
                id,
                done: false,
            }
        };
        loop {
            let notified = self.notify.notified();
            let wake = {
                let now = Instant::now();
                let mut st = self.lock();
                self.prune(&mut st, now);
                if st.queue.front() == Some(&ticket.id) {
                    match self.fits_at(&st, tokens, now) {
                        None => {
                            st.queue.pop_front();
                            let id = st.next_id;
                            st.next_id += 1;
                            st.requests.push_back((id, now));
                            st.tokens.push_back((id, now, tokens));
                            st.token_sum += tokens;
                            st.stats.reserved += 1;
                            st.stats.reserved_tokens += tokens;
                            drop(st);
                            ticket.done = true;
                            self.notify.notify_waiters();
                            return Ok(Reservation { id, tokens });
                        }
                        Some(at) => Some(at),
                    }
                } else {
                    None
                }
            };
            match wake {
                Some(at) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {}
                        () = notified => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Settles a reservation with the tokens the attempt really used
    /// (`None`: unknown, the estimate stands).
    #[allow(clippy::needless_pass_by_value)] // taken so it cannot be settled twice
    pub fn settle(&self, r: Reservation, used: Option<u64>) {
        let Reservation { id, tokens } = r;
        let mut st = self.lock();
        let Some(used) = used else {
            st.stats.retained += 1;
            return;
        };
        let refunded = used < tokens;
        if refunded {
            st.stats.refunded_tokens += tokens - used;
        } else {
            st.stats.debt_tokens += used - tokens;
        }
        if let Ok(i) = st.tokens.binary_search_by_key(&id, |e| e.0) {
            let old = st.tokens[i].2;
            st.tokens[i].2 = used;
            st.token_sum = st.token_sum - old + used;
        }
        drop(st);
        if refunded {
            self.notify.notify_waiters();
        }
    }

    /// Gives a reservation back whole: its attempt never started.
    #[allow(clippy::needless_pass_by_value)] // taken so it cannot be used again
    pub fn cancel(&self, r: Reservation) {
        let Reservation { id, tokens } = r;
        let mut st = self.lock();
        if let Ok(i) = st.requests.binary_search_by_key(&id, |e| e.0) {
            st.requests.remove(i);
        }
        if let Ok(i) = st.tokens.binary_search_by_key(&id, |e| e.0)
            && let Some((_, _, n)) = st.tokens.remove(i)
        {
            st.token_sum -= n;
        }
        st.stats.cancelled += 1;
        st.stats.reserved -= 1;
        st.stats.reserved_tokens -= tokens;
        drop(st);
        self.notify.notify_waiters();
    }

    /// Counters so far.
    pub fn stats(&self) -> AdmissionStats {
        self.lock().stats
    }

    /// Attempts waiting for admission now.
    pub fn waiting(&self) -> u64 {
        self.waiting.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn settlement_refunds_debts_and_retains() {
        let a = Admission::new(RateLimits {
            rpm: None,
            tpm: Some(1_000),
            ..RateLimits::default()
        })
        .unwrap();
        for used in [Some(80), Some(130), None, Some(0)] {
            let r = a.reserve(100).await.unwrap();
            a.settle(r, used);
        }
        let s = a.stats();
        assert_eq!(
            (
                s.reserved,
                s.reserved_tokens,
                s.refunded_tokens,
                s.debt_tokens,
                s.retained
            ),
            (4, 400, 120, 30, 1)
        );
        assert_eq!(a.lock().token_sum, 80 + 130 + 100);
        let r = a.reserve(10).await.unwrap();
        a.cancel(r);
        assert_eq!(a.lock().token_sum, 310);
        assert_eq!(a.stats().cancelled, 1);
        assert_eq!(
            a.reserve(1_001).await.unwrap_err(),
            AdmissionError::EstimateTooLarge {
                estimate: 1_001,
                limit: 1_000
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn fractional_rpm_half_admits_every_120_s() {
        let a = Admission::new(RateLimits {
            rpm: Some(0.5),
            tpm: None,
            ..RateLimits::default()
        })
        .unwrap();
        let t0 = Instant::now();
        let _ = a.reserve(0).await.unwrap();
        let _ = a.reserve(0).await.unwrap();
        assert_eq!(t0.elapsed(), Duration::from_secs(120));
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_wait_for_the_window_and_debt_delays() {
        let a = Admission::new(RateLimits {
            rpm: None,
            tpm: Some(100),
            ..RateLimits::default()
        })
        .unwrap();
        let t0 = Instant::now();
        let r = a.reserve(60).await.unwrap();
        a.settle(r, Some(90)); // 30 of debt
        let _ = a.reserve(10).await.unwrap();
        assert_eq!(t0.elapsed(), Duration::ZERO);
        let _ = a.reserve(10).await.unwrap();
        assert_eq!(
            t0.elapsed(),
            Duration::from_secs(60),
            "the debt filled the window"
        );
    }
}
