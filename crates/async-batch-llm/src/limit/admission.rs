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
//!
//! The limits may change while a run goes: a provider's headers or a
//! learned quota set them ([`Admission::set_limits`]), and what a reply says
//! remains of the provider's quota corrects the window
//! ([`Admission::observe`]): use the run cannot see (another process on the
//! same key) is counted as *foreign* entries that leave the window over the
//! reported reset. When a provider reports what remains but not the limit,
//! that remainder is a budget until the reset.
//!
//! **Pacing.** Limits a provider reported or a wall taught
//! ([`Admission::pace`]) are also paced: admissions are spread at sixteen
//! times the limit's rate, and at the limit's rate itself while another
//! process's use shows in the replies. A window that frees at once (a
//! rolling minute whose first burst leaves) would otherwise be refilled in
//! one instant by every process on the quota, each believing the room its
//! own, and the provider refuses all but the first to arrive: a reply tells
//! what another took only a round trip later. Spread out, the processes
//! take the room a call at a time and each reply corrects the next
//! admission; at sixteen times the rate a lone run loses a sixteenth of a
//! window at most.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::time::Instant;

const MINUTE: Duration = Duration::from_secs(60);

/// Foreign tokens are counted in this many shares, each leaving the
/// window at its own time.
const SHARES: u64 = 16;

/// Reservations remembered for a provider's token budget (far more than
/// are ever in flight at once).
const RECENT: usize = 4096;

/// How much faster than the limit's rate paced admissions go while no other
/// process shows on the quota.
const PACE_ALONE: f64 = 16.0;

/// How long this scope's entries are remembered after they leave the
/// window: a reply counts the provider's window as it stood when the
/// request arrived, up to a round trip before the reply is read, and
/// entries that left since were still in it.
const LINGER: Duration = Duration::from_secs(30);

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
    /// Its number: reservations are numbered in the order they are made.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The reserved token estimate.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }
}

/// The limits in force, as window sizes.
#[derive(Debug, Clone, Copy)]
struct Limits {
    per_window: u64,
    window: Duration,
    token_window: Duration,
    /// Tokens per minute, as set.
    tpm: Option<u64>,
    /// Tokens per `token_window`.
    tokens_per_window: Option<u64>,
    /// The window's share of a minute: what a provider's per-minute limit
    /// is worth in it.
    scale: f64,
}

impl Limits {
    /// Per-minute `limits` enforced over windows of `span` (a minute, or
    /// less for a provider that enforces its per-minute limits over shorter
    /// periods): R requests per minute as n per window of 60·n/R s, with
    /// n = R·span/60, exact for integers and for fractions (0.5 per minute:
    /// 1 per 120 s); T tokens per minute as T·span/60 per span.
    fn new(limits: RateLimits, span: Duration) -> Self {
        let span = span.clamp(Duration::from_secs(1), MINUTE);
        let scale = span.as_secs_f64() / MINUTE.as_secs_f64();
        let (per_window, window) = match limits.rpm {
            Some(r) if r.is_finite() && r > 0.0 => {
                // (3000 × 10/60 is 499.99… in floating point.)
                let n = (r * scale + 1e-9).floor().max(1.0);
                (
                    n as u64,
                    crate::time::secs_f64(60.0 * n / r).unwrap_or(crate::time::MAX_DURATION),
                )
            }
            _ => (u64::MAX, span),
        };
        // The margin is for a minute; a shorter window gets its share.
        let margin = limits.margin.mul_f64(scale);
        Self {
            per_window,
            window: window.saturating_add(margin),
            token_window: span.saturating_add(margin),
            tpm: limits.tpm,
            tokens_per_window: limits
                .tpm
                .map(|t| ((t as f64 * scale + 1e-9).floor() as u64).max(1)),
            scale,
        }
    }

    /// A provider's per-minute `limit` as a limit per window.
    fn scaled(&self, limit: u64) -> u64 {
        ((limit as f64 * self.scale).round() as u64).max(1)
    }
}

/// A provider's remainder without its limit: a budget until `until`.
#[derive(Debug, Clone, Copy)]
struct Budget {
    left: i128,
    until: Instant,
}

#[derive(Default)]
struct State {
    limits: Option<Limits>,
    requests: VecDeque<(u64, Instant)>,
    tokens: VecDeque<(u64, Instant, u64)>,
    token_sum: u64,
    /// Entries that left the window in the last [`LINGER`], as
    /// (number, when reserved, tokens).
    gone: VecDeque<(u64, Instant, u64)>,
    /// Admissions are paced ([`Admission::pace`]); the last one was at
    /// `last_admitted`, and another process's use showed until
    /// `foreign_until`.
    pace: bool,
    last_admitted: Option<Instant>,
    foreign_until: Option<Instant>,
    /// Foreign use: when each foreign request leaves the window.
    foreign_requests: VecDeque<Instant>,
    /// Foreign tokens: when each share leaves, and how many.
    foreign_tokens: VecDeque<(Instant, u64)>,
    foreign_token_sum: u64,
    request_budget: Option<Budget>,
    token_budget: Option<Budget>,
    /// Reservations numbered below this seeded the window: calls sent
    /// before any limit was known, which every reply counts as arrived.
    seeded_through: u64,
    /// The newest reservation an observation came from (older replies are
    /// stale and ignored).
    observed_from: Option<u64>,
    /// The last reservations (number, tokens), for the tokens admitted
    /// after an observed one.
    recent: VecDeque<(u64, u64)>,
    /// How fast foreign use grows: the last measurement (when the observed
    /// request was sent, foreign requests, foreign tokens) and the rates
    /// per second (smoothed).
    foreign_trend: Option<(Instant, u64, u64)>,
    foreign_rate: (f64, f64),
    /// What settled calls estimated and used, each sum decayed by 1/8 per
    /// call ([`Admission::typical`]).
    usage: (f64, f64),
    queue: VecDeque<u64>,
    next_ticket: u64,
    next_id: u64,
    stats: AdmissionStats,
}

/// The limiter of one scope.
pub struct Admission {
    margin: Duration,
    state: Mutex<State>,
    notify: Notify,
    waiting: AtomicU64,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.lock();
        f.debug_struct("Admission")
            .field("limits", &st.limits)
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

/// What to count as others' in a window of `limit`, when the provider says
/// `remaining` are left and it counted `ours` of this scope's: what the provider
/// counts beyond ours; what the others sent since the request the reply
/// answers (`ahead`, predicted from their rate); and the others' share of
/// what remains, in proportion to their use, so that two processes racing
/// for the last of a quota each take their part instead of all of it.
/// Alone on a quota (the provider counts nothing beyond ours) it is zero.
fn foreign_share(limit: u64, remaining: u64, ours: u64, ahead: u64) -> u64 {
    let used = limit.saturating_sub(remaining).saturating_sub(ours);
    if used == 0 {
        return 0;
    }
    let used = used.saturating_add(ahead);
    let left = limit.saturating_sub(ours).saturating_sub(used);
    let share = u128::from(left) * u128::from(used) / (u128::from(ours) + u128::from(used));
    used.saturating_add(u64::try_from(share).unwrap_or(u64::MAX))
        .min(limit)
}

/// When `n` foreign entries leave the window: as this scope's own entries
/// do (`own`, ascending), on the guess that another process on the same
/// quota sends like this one; with no entries of its own to go by, spread
/// evenly over the provider's `reset`.
fn expiries(
    own: &[Instant],
    n: u64,
    now: Instant,
    reset: Duration,
) -> impl Iterator<Item = Instant> {
    let reset = reset.max(Duration::from_millis(1));
    (0..n).map(move |i| {
        if own.is_empty() {
            now + reset.mul_f64((i + 1) as f64 / n as f64)
        } else {
            let k = usize::try_from(i * own.len() as u64 / n.max(1)).unwrap_or(0);
            own[k.min(own.len() - 1)]
        }
    })
}

/// Two sequences ascending by `at`, merged into one.
fn merged<T>(
    first: impl Iterator<Item = T>,
    second: impl Iterator<Item = T>,
    at: impl Fn(&T) -> Instant,
) -> impl Iterator<Item = T> {
    let (mut first, mut second) = (first.peekable(), second.peekable());
    std::iter::from_fn(move || match (first.peek(), second.peek()) {
        (Some(x), Some(y)) if at(x) <= at(y) => first.next(),
        (Some(_) | None, Some(_)) => second.next(),
        (Some(_), None) => first.next(),
        (None, None) => None,
    })
}

impl State {
    /// The request and token windows in force (a minute without limits).
    fn windows(&self) -> (Duration, Duration) {
        self.limits
            .map_or((MINUTE, MINUTE), |l| (l.window, l.token_window))
    }
}

impl Admission {
    /// A limiter for `limits` (none set: it admits everything until
    /// [`Admission::set_limits`] or an observation gives it some).
    pub fn new(limits: RateLimits) -> Self {
        Self {
            margin: limits.margin,
            state: Mutex::new(State {
                limits: (!limits.is_empty()).then(|| Limits::new(limits, MINUTE)),
                ..State::default()
            }),
            notify: Notify::new(),
            waiting: AtomicU64::new(0),
        }
    }

    /// True when a limit or a provider's budget holds admissions back.
    pub fn is_limited(&self) -> bool {
        let st = self.lock();
        st.limits.is_some() || st.request_budget.is_some() || st.token_budget.is_some()
    }

    /// The token limit per minute in force.
    pub fn tpm(&self) -> Option<u64> {
        self.lock().limits.and_then(|l| l.tpm)
    }

    /// Puts new per-minute limits in force, enforced over windows of
    /// `span` (at most a minute; the window keeps what it holds). `seed` are
    /// earlier requests of this scope not in the window (sent while it had
    /// no limits), as (when, requests, tokens).
    pub fn set_limits(
        &self,
        rpm: Option<f64>,
        tpm: Option<u64>,
        span: Duration,
        seed: &[(Instant, u64, u64)],
    ) {
        let limits = RateLimits {
            rpm,
            tpm,
            margin: self.margin,
        };
        let mut st = self.lock();
        let was_limited = st.limits.is_some();
        st.limits = (!limits.is_empty()).then(|| Limits::new(limits, span));
        if !was_limited {
            st.seeded_through = st.next_id + seed.iter().map(|s| s.1).sum::<u64>();
            for &(at, requests, tokens) in seed {
                for i in 0..requests {
                    let id = st.next_id;
                    st.next_id += 1;
                    st.requests.push_back((id, at));
                    let share = if i == 0 { tokens } else { 0 };
                    st.tokens.push_back((id, at, share));
                    st.token_sum += share;
                }
            }
        }
        drop(st);
        self.notify.notify_waiters();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn prune(st: &mut State, now: Instant) {
        let Some(l) = st.limits else {
            st.requests.clear();
            st.tokens.clear();
            st.gone.clear();
            st.token_sum = 0;
            return;
        };
        while st.requests.front().is_some_and(|r| r.1 + l.window <= now) {
            st.requests.pop_front();
        }
        while let Some(&(id, at, n)) = st.tokens.front() {
            if at + l.token_window > now {
                break;
            }
            st.tokens.pop_front();
            st.token_sum -= n;
            st.gone.push_back((id, at, n));
        }
        let last = l.window.max(l.token_window) + LINGER;
        while st
            .gone
            .front()
            .is_some_and(|g| g.1 + last <= now || st.gone.len() > RECENT)
        {
            st.gone.pop_front();
        }
        while st.foreign_requests.front().is_some_and(|e| *e <= now) {
            st.foreign_requests.pop_front();
        }
        while let Some(&(e, n)) = st.foreign_tokens.front() {
            if e > now {
                break;
            }
            st.foreign_tokens.pop_front();
            st.foreign_token_sum -= n;
        }
        for b in [&mut st.request_budget, &mut st.token_budget] {
            if b.is_some_and(|b| b.until <= now) {
                *b = None;
            }
        }
    }

    /// The least time between two paced admissions, the second of `tokens`.
    fn pace_gap(st: &State, l: &Limits, tokens: u64, now: Instant) -> Duration {
        let alone = st.foreign_until.is_none_or(|t| t <= now);
        let speed = if alone { PACE_ALONE } else { 1.0 };
        let requests = if l.per_window == u64::MAX {
            Duration::ZERO
        } else {
            l.window.div_f64(l.per_window as f64 * speed)
        };
        let tokens = l.tokens_per_window.map_or(Duration::ZERO, |max| {
            // At most one window, whatever the numbers.
            l.token_window
                .mul_f64((tokens as f64 / (max as f64 * speed)).min(1.0))
        });
        requests.max(tokens)
    }

    /// When a reservation of `tokens` fits, `None` if it fits now.
    fn fits_at(st: &State, tokens: u64, now: Instant) -> Option<Instant> {
        let mut at = now;
        if let Some(l) = st.limits {
            if st.pace
                && let Some(last) = st.last_admitted
            {
                let next = last.checked_add(Self::pace_gap(st, &l, tokens, now));
                at = at.max(next.unwrap_or(at));
            }
            let count = (st.requests.len() + st.foreign_requests.len()) as u64;
            if count + 1 > l.per_window {
                let k = usize::try_from(count - l.per_window).unwrap_or(usize::MAX);
                let own = st.requests.iter().map(|r| r.1 + l.window);
                let foreign = st.foreign_requests.iter().copied();
                if let Some(t) = merged(own, foreign, |t| *t).nth(k) {
                    at = at.max(t);
                }
            }
            let used = st.token_sum + st.foreign_token_sum;
            if let Some(max) = l.tokens_per_window
                && used + tokens > max
            {
                let mut need = used + tokens - max;
                let own = st.tokens.iter().map(|&(_, t, n)| (t + l.token_window, n));
                let foreign = st.foreign_tokens.iter().copied();
                for (t, n) in merged(own, foreign, |e| e.0) {
                    at = at.max(t);
                    if n >= need {
                        break;
                    }
                    need -= n;
                }
            }
        }
        if let Some(b) = st.request_budget
            && b.left <= 0
        {
            at = at.max(b.until);
        }
        if let Some(b) = st.token_budget
            && b.left < i128::from(tokens)
        {
            at = at.max(b.until);
        }
        (at > now).then_some(at)
    }

    /// The requests and tokens of this scope a reply to reservation `from`,
    /// sent at `sent`, counted at the provider: the reservations up to this
    /// reply's (and the seeded ones), in the window when the request was
    /// sent; those admitted after it had not arrived, so what the provider
    /// counts beyond these is another's.
    fn counted(st: &State, from: u64, sent: Instant, now: Instant) -> (u64, u64) {
        let through = (from + 1).max(st.seeded_through);
        let requests = st.requests.partition_point(|e| e.0 < through) as u64;
        // Entries are in reservation order: the uncounted ones are the few
        // at the back (the calls in flight), not the whole window.
        let uncounted_tokens: u64 = st
            .tokens
            .iter()
            .rev()
            .take_while(|e| e.0 >= through)
            .map(|e| e.2)
            .sum();
        let tokens = st.token_sum.saturating_sub(uncounted_tokens);
        // And those that left this window since the request was sent: the
        // provider still counted them when it arrived.
        let (window, token_window) = st.windows();
        let left_since = |w: Duration| {
            let first = st.gone.partition_point(|g| g.1 + w <= sent);
            st.gone
                .range(first..)
                .take_while(move |g| g.1 + w <= now)
                .filter(move |g| g.0 < through)
        };
        (
            requests + left_since(window).count() as u64,
            tokens + left_since(token_window).map(|g| g.2).sum::<u64>(),
        )
    }

    /// What a reply to the attempt of reservation `from` (the newest
    /// reservation when it was admitted) says of the provider's quota, at
    /// `now`: with the limit, whatever it counts beyond this scope's own
    /// entries is foreign use, spread to leave over the reported reset;
    /// without it, the remainder is a budget until the reset. Replies older
    /// than one already observed are ignored.
    pub fn observe(
        &self,
        from: u64,
        sent: Instant,
        reported: &crate::limit::ReportedLimits,
        now: Instant,
    ) {
        let mut st = self.lock();
        if st.observed_from.is_some_and(|o| from < o) {
            return;
        }
        st.observed_from = Some(from);
        Self::prune(&mut st, now);
        // The reply tells the provider's count when the request arrived;
        // the others kept sending since. Their rate, from the last two
        // replies, predicts how much.
        // A provider's limits are per minute; the window may be shorter.
        let in_force = st.limits;
        let scaled = move |limit: u64| in_force.map_or(limit, |l| l.scaled(limit));
        let measured = |l: &crate::limit::ReportedLimit, ours: u64| match (l.limit, l.remaining) {
            (Some(limit), Some(remaining)) => {
                scaled(limit).saturating_sub(remaining).saturating_sub(ours)
            }
            _ => 0,
        };
        let (counted, counted_tokens) = Self::counted(&st, from, sent, now);
        let (window, token_window) = st.windows();
        let fr = measured(&reported.requests, counted);
        let ft = measured(&reported.tokens, counted_tokens);
        // Another process's use: more than a call's worth beyond ours.
        let big = st
            .limits
            .and_then(|l| l.tokens_per_window)
            .unwrap_or(u64::MAX)
            / 50;
        if fr >= 2 || ft > big {
            st.foreign_until = now.checked_add(window.max(token_window));
        }
        if let Some((t, r0, t0)) = st.foreign_trend {
            let dt = sent.saturating_duration_since(t).as_secs_f64();
            if dt > 0.0 {
                let rate = |a: u64, b: u64| (a.saturating_sub(b)) as f64 / dt;
                let (rr, rt) = st.foreign_rate;
                // A jump between two close replies is not a rate: nobody
                // is predicted to send a minute's limit faster than in 10 s.
                let most = |l: Option<u64>| l.map_or(f64::INFINITY, |l| l as f64 / 6.0);
                st.foreign_rate = (
                    (0.5 * rr + 0.5 * rate(fr, r0)).min(most(reported.requests.limit)),
                    (0.5 * rt + 0.5 * rate(ft, t0)).min(most(reported.tokens.limit)),
                );
            }
        }
        if st.foreign_trend.is_none_or(|(t, _, _)| sent > t) {
            st.foreign_trend = Some((sent, fr, ft));
        }
        let age = now.saturating_duration_since(sent).as_secs_f64();
        let ahead = |rate: f64| (rate * age).ceil().min(u64::MAX as f64) as u64;
        let (ahead_requests, ahead_tokens) = (ahead(st.foreign_rate.0), ahead(st.foreign_rate.1));
        let admitted_after = |st: &State| st.next_id.saturating_sub(from + 1);
        let r = reported.requests;
        if let (Some(limit), Some(remaining)) = (r.limit, r.remaining) {
            let limit = scaled(limit);
            let foreign = foreign_share(limit, remaining, counted, ahead_requests);
            let reset = r.reset.unwrap_or(MINUTE);
            let own: Vec<Instant> = st.requests.iter().map(|e| e.1 + window).collect();
            st.foreign_requests = expiries(&own, foreign, now, reset).collect();
            st.request_budget = None;
        } else if let Some(remaining) = r.remaining {
            let left = i128::from(remaining) - i128::from(admitted_after(&st));
            let until = now + r.reset.unwrap_or(Duration::from_secs(1));
            st.request_budget = Some(Budget { left, until });
        }
        let t = reported.tokens;
        if let (Some(limit), Some(remaining)) = (t.limit, t.remaining) {
            let limit = scaled(limit);
            let foreign = foreign_share(limit, remaining, counted_tokens, ahead_tokens);
            let reset = t.reset.unwrap_or(MINUTE);
            let own: Vec<Instant> = st.tokens.iter().map(|e| e.1 + token_window).collect();
            st.foreign_tokens = expiries(&own, SHARES, now, reset)
                .zip(1..=SHARES)
                .filter_map(|(at, i)| {
                    let n = foreign * i / SHARES - foreign * (i - 1) / SHARES;
                    (n > 0).then_some((at, n))
                })
                .collect();
            st.foreign_token_sum = st.foreign_tokens.iter().map(|f| f.1).sum();
            st.token_budget = None;
        } else if let Some(remaining) = t.remaining {
            let after: u64 = st.recent.iter().filter(|e| e.0 > from).map(|e| e.1).sum();
            let left = i128::from(remaining) - i128::from(after);
            let until = now + t.reset.unwrap_or(Duration::from_secs(1));
            st.token_budget = Some(Budget { left, until });
        }
        drop(st);
        self.notify.notify_waiters();
    }

    /// Paces admissions (see the module docs): for limits a provider
    /// reported or a wall taught, not for limits a user set, which are
    /// admitted the moment they have room.
    pub fn pace(&self, on: bool) {
        self.lock().pace = on;
        self.notify.notify_waiters();
    }

    /// The newest reservation number so far (an attempt notes it when it is
    /// admitted, for [`Admission::observe`]).
    pub fn newest(&self) -> u64 {
        self.lock().next_id.saturating_sub(1)
    }

    /// Foreign requests and tokens in the window now.
    pub fn foreign(&self) -> (u64, u64) {
        let mut st = self.lock();
        Self::prune(&mut st, Instant::now());
        (st.foreign_requests.len() as u64, st.foreign_token_sum)
    }

    /// Waits for room and reserves one request and `tokens` tokens.
    pub async fn reserve(&self, tokens: u64) -> Result<Reservation, AdmissionError> {
        if let Some(limit) = self.tpm()
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
                Self::prune(&mut st, now);
                if st.queue.front() == Some(&ticket.id) {
                    match Self::fits_at(&st, tokens, now) {
                        None => {
                            st.queue.pop_front();
                            let id = st.next_id;
                            st.next_id += 1;
                            if st.limits.is_some() {
                                st.requests.push_back((id, now));
                                st.tokens.push_back((id, now, tokens));
                                st.token_sum += tokens;
                                st.last_admitted = Some(now);
                            }
                            if st.recent.len() == RECENT {
                                st.recent.pop_front();
                            }
                            st.recent.push_back((id, tokens));
                            if let Some(b) = st.request_budget.as_mut() {
                                b.left -= 1;
                            }
                            if let Some(b) = st.token_budget.as_mut() {
                                b.left -= i128::from(tokens);
                            }
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

    /// A call estimated at `estimate` tokens used `used`.
    pub fn note_usage(&self, estimate: u64, used: u64) {
        if estimate == 0 {
            return;
        }
        let mut st = self.lock();
        let (e, u) = st.usage;
        st.usage = (e * 7.0 / 8.0 + estimate as f64, u * 7.0 / 8.0 + used as f64);
    }

    /// The tokens a call estimated at `estimate` will likely use: the
    /// estimate scaled by what settled calls used against theirs (the
    /// estimate itself until one settled). A reservation of the estimate
    /// under a limit a provider reported or a wall taught would otherwise
    /// wait for room the call never uses: the default 256 output tokens
    /// against replies of 2 need the room of a hundred calls, and a
    /// learned limit of 40 calls a minute admitted 22.
    pub fn typical(&self, estimate: u64) -> u64 {
        let (e, u) = self.lock().usage;
        if e <= 0.0 || estimate == 0 {
            return estimate;
        }
        // A float-to-integer cast saturates: no overflow for any ratio.
        ((estimate as f64 * u / e).ceil() as u64).max(1)
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

    #[test]
    fn reservations_follow_what_calls_used_of_their_estimates() {
        let a = Admission::new(RateLimits::default());
        assert_eq!(a.typical(257), 257, "nothing settled yet: the estimate");
        a.note_usage(257, 3);
        assert_eq!(a.typical(257), 3);
        assert_eq!(a.typical(514), 6);
        // Later calls weigh more: replies that grew are followed.
        for _ in 0..16 {
            a.note_usage(257, 300);
        }
        let t = a.typical(257);
        assert!((280..=300).contains(&t), "{t}");
        // Never zero for a call that estimated some, and no overflow.
        a.note_usage(u64::MAX, 0);
        assert_eq!(a.typical(1), 1);
        assert_eq!(a.typical(0), 0);
        a.note_usage(1, u64::MAX);
        assert!(a.typical(u64::MAX) > 0);
    }

    #[tokio::test(start_paused = true)]
    async fn settlement_refunds_debts_and_retains() {
        let a = Admission::new(RateLimits {
            rpm: None,
            tpm: Some(1_000),
            ..RateLimits::default()
        });
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
        });
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
        });
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

    /// A reply stating `remaining` of `limit` requests per minute.
    fn reply(limit: u64, remaining: u64) -> crate::limit::ReportedLimits {
        crate::limit::ReportedLimits {
            requests: crate::limit::ReportedLimit {
                limit: Some(limit),
                remaining: Some(remaining),
                reset: Some(MINUTE),
            },
            ..crate::limit::ReportedLimits::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_reply_counts_what_left_this_window_since_its_request_was_sent() {
        // Ten calls at 0; one more just before they leave the window. Its
        // reply, read after they left, counts all eleven at the provider:
        // they are this run's, not another process's.
        let a = Admission::new(RateLimits {
            rpm: Some(20.0),
            ..RateLimits::default()
        });
        for _ in 0..10 {
            let r = a.reserve(0).await.unwrap();
            a.settle(r, Some(0));
        }
        tokio::time::advance(Duration::from_millis(59_990)).await;
        let sent = Instant::now();
        let r = a.reserve(0).await.unwrap();
        let from = r.id();
        tokio::time::advance(Duration::from_millis(60)).await;
        a.observe(from, sent, &reply(20, 9), Instant::now());
        assert_eq!(a.foreign().0, 0, "the ten that just left are ours");
        assert!(a.lock().foreign_until.is_none());
        // Another process's four calls in the same count are foreign (with
        // their share of what remains).
        let sent = Instant::now();
        let r2 = a.reserve(0).await.unwrap();
        a.observe(r2.id(), sent, &reply(20, 14), Instant::now());
        assert!(a.foreign().0 >= 4, "{:?}", a.foreign());
        assert!(a.lock().foreign_until.is_some());
        a.settle(r, Some(0));
        a.settle(r2, Some(0));
    }

    #[tokio::test(start_paused = true)]
    async fn paced_admissions_go_at_sixteen_times_the_rate_and_at_the_rate_when_shared() {
        let a = Admission::new(RateLimits::default());
        a.set_limits(Some(60.0), None, MINUTE, &[]);
        a.pace(true);
        let t0 = Instant::now();
        for _ in 0..17 {
            let r = a.reserve(0).await.unwrap();
            a.settle(r, Some(0));
        }
        // Tokio's timer rounds each wait up to the next millisecond.
        let about = |d: Duration, secs: f64| (d.as_secs_f64() - secs).abs() < 0.02;
        // One a second is the limit's rate: sixteen gaps of 1/16 s.
        assert!(about(t0.elapsed(), 1.0), "{:?}", t0.elapsed());
        // Another process shows in a reply: one a second from now on.
        let sent = Instant::now();
        let r = a.reserve(0).await.unwrap();
        a.observe(r.id(), sent, &reply(60, 30), Instant::now());
        a.settle(r, Some(0));
        let t1 = Instant::now();
        let _ = a.reserve(0).await.unwrap();
        assert!(about(t1.elapsed(), 1.0), "{:?}", t1.elapsed());
        // Limits a user set are not paced.
        let b = Admission::new(RateLimits {
            rpm: Some(60.0),
            ..RateLimits::default()
        });
        let t2 = Instant::now();
        for _ in 0..30 {
            let _ = b.reserve(0).await.unwrap();
        }
        assert_eq!(t2.elapsed(), Duration::ZERO);
    }
}
