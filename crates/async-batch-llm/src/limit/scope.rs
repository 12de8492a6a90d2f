//! One quota scope: everything the calls on one provider account share, and
//! the rules that tie its parts together.
//!
//! - **Limits from three places.** The user's `rpm`/`tpm` (flag) always
//!   win. Without them, the limits a provider's headers report come into
//!   force (header), paced over the provider's window when its resets
//!   show one shorter than a minute; without those, a quota wall teaches
//!   them: what the provider accepted over the window the wall's hint
//!   showed (learned), lowered by 10 % by a later wall and raised by 10 %
//!   after five minutes without one, to follow a quota that grows (a 429
//!   within two windows of a raise undoes it, and is not a wall that
//!   lowers them). A provider that reports a lower limit than the user's
//!   is warned about, once.
//! - **What remains** of the provider's quota, as each reply reports it,
//!   corrects the window for use this process cannot see
//!   ([`Admission::observe`]).
//! - **Adaptive concurrency** ([`Window`]) is on while no limit is known and
//!   off once one is; the window's slow start after a cooldown always runs.
//! - **Signals are judged** ([`Signals`]): a quota wall shrinks an adaptive
//!   window and teaches the limits; noise ends a hintless cooldown at once.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::recent::Recent;
use super::settle::Settle;
use super::shared::{SharedQuota, SharedScope};
use super::spacing::Spacing;

const MINUTE: Duration = Duration::from_secs(60);
/// How long learned limits hold without a wall before they are raised.
const PROBE_AFTER: Duration = Duration::from_secs(300);
use super::{
    Admission, Cooldown, CooldownOutcome, Outcome, ReportedLimits, ScopeSettings, Signals, Verdict,
    Window, WindowPermit, WindowView,
};

/// Where a limit in force came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitSource {
    /// The user set it (`--rpm`, `--tpm`, [`RateLimits`](super::RateLimits)).
    Flag,
    /// The provider's rate-limit headers reported it.
    Header,
    /// A quota wall taught it: what the provider accepted in the minute
    /// before.
    Learned,
}

impl std::fmt::Display for LimitSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Flag => "flag",
            Self::Header => "header",
            Self::Learned => "learned",
        })
    }
}

/// The limits a scope runs under now, and where each came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LimitsInForce {
    /// Requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<(f64, LimitSource)>,
    /// Tokens per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<(u64, LimitSource)>,
    /// The concurrency window now.
    pub window: usize,
    /// Whether adaptive concurrency is moving it.
    pub adaptive: bool,
    /// Its multiplicative decreases so far.
    pub decreases: u64,
    /// Foreign requests in the RPM window now (another process's use the
    /// provider reported).
    #[serde(default)]
    pub foreign_requests: u64,
    /// Limits shared with other processes, and whether their store is
    /// reachable now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared: Option<SharedStatus>,
}

/// The state of a scope's shared limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedStatus {
    /// The store answered the last exchange.
    pub reachable: bool,
    /// Times it went away.
    pub outages: u64,
}

impl LimitsInForce {
    /// True when a limit is known or adaptive concurrency moved: there is
    /// something to tell (the progress line and the summary show it then).
    pub fn is_worth_showing(&self) -> bool {
        self.rpm.is_some() || self.tpm.is_some() || self.decreases > 0 || self.shared.is_some()
    }
}

impl std::fmt::Display for LimitsInForce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some((r, s)) = self.rpm {
            parts.push(format!("rpm {r} ({s})"));
        }
        if let Some((t, s)) = self.tpm {
            parts.push(format!("tpm {t} ({s})"));
        }
        parts.push(if self.adaptive {
            format!("concurrency {} (adaptive)", self.window)
        } else {
            format!("concurrency {}", self.window)
        });
        match self.shared {
            Some(SharedStatus {
                reachable: true,
                outages,
            }) => parts.push(if outages > 0 {
                format!(
                    "shared with other processes (the store went away {outages} time{})",
                    if outages == 1 { "" } else { "s" }
                )
            } else {
                "shared with other processes".to_owned()
            }),
            Some(SharedStatus {
                reachable: false, ..
            }) => parts.push("SHARED LIMITS UNREACHABLE: calls paused".to_owned()),
            None => {}
        }
        f.write_str(&parts.join(", "))
    }
}

/// What changed in a scope at the end of an attempt, for events.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ScopeChange {
    /// The limits in force changed.
    pub limits: bool,
    /// A provider reported a lower limit than the user's: (what, theirs, ours).
    pub lower_than_flag: Option<(&'static str, f64, f64)>,
    /// The judgement of an episode that ended.
    pub verdict: Option<Verdict>,
    /// A cooldown without a hint ended early.
    pub cooldown_ended_early: bool,
}

/// How an attempt ended, for [`Scope::end_attempt`].
#[derive(Debug, Clone, Copy)]
pub struct AttemptEnd<'a> {
    /// Success, signal, other failure, or no call made.
    pub outcome: Outcome,
    /// The reply's rate-limit headers.
    pub reported: Option<&'a ReportedLimits>,
    /// Tokens the call used.
    pub tokens: u64,
}

#[derive(Debug, Default)]
struct Sources {
    rpm: Option<(f64, LimitSource)>,
    tpm: Option<(u64, LimitSource)>,
    learned_at: Option<Instant>,
    /// The last raise of learned limits.
    raised: Option<Raise>,
    /// When a wall last undid a raise.
    undone_at: Option<Instant>,
    /// The provider's window, when shorter than a minute: the longest
    /// reset its headers gave, or what a quota wall showed.
    span: Option<Duration>,
}

/// A raise of learned limits: when, and the limits before it.
#[derive(Debug, Clone, Copy)]
struct Raise {
    at: Instant,
    rpm: Option<(f64, LimitSource)>,
    tpm: Option<(u64, LimitSource)>,
}

impl Sources {
    /// The window the limits are enforced over: a minute when the user set
    /// one (flags mean "in any rolling minute"), else the provider's.
    fn span(&self) -> Duration {
        self.known_span().unwrap_or(MINUTE)
    }

    /// [`span`](Self::span) when it is known: not the default minute.
    fn known_span(&self) -> Option<Duration> {
        let flag = |src: Option<LimitSource>| src == Some(LimitSource::Flag);
        if flag(self.rpm.map(|r| r.1)) || flag(self.tpm.map(|t| t.1)) {
            return Some(MINUTE);
        }
        self.span
    }
}

/// A window in whole seconds, from one second to a minute, rounded down:
/// a shorter window, with its limit scaled down with it, allows the same
/// rate in smaller bursts, so it is the safe side.
fn whole_seconds(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs().clamp(1, 60))
}

/// The shared state of one quota scope.
#[derive(Debug)]
pub struct Scope {
    name: String,
    settings: ScopeSettings,
    cooldown: Cooldown,
    gate: Option<std::sync::Arc<Semaphore>>,
    admission: Admission,
    window: Window,
    signals: Signals,
    recent: Recent,
    sources: Mutex<Sources>,
    next_seq: AtomicU64,
    /// Attempts numbered and not ended: the calls out. (The window's count
    /// also holds places still waiting for their turn to send.)
    out: AtomicUsize,
    successes: AtomicU64,
    successes_at_cooldown: AtomicU64,
    warned: AtomicBool,
    settle: Settle,
    spacing: Spacing,
    shared: Option<std::sync::Arc<SharedScope>>,
}

/// An attempt's place in its scope: its window permit and its numbers.
/// [`Attempt::end`] says how it ended; dropped without that (the run
/// stopped, admission refused it), it ended without a call.
#[derive(Debug)]
#[must_use = "end the attempt with how it went"]
pub struct Attempt<'a> {
    scope: &'a Scope,
    permit: Option<WindowPermit<'a>>,
    seq: u64,
    from: u64,
    sent: Instant,
}

impl Attempt<'_> {
    /// Notes the reservation it was admitted with (for observations).
    pub fn admitted_with(&mut self, reservation: u64) {
        self.from = reservation;
        self.sent = Instant::now();
    }

    /// Closes the attempt: see [`Scope::end_attempt`].
    pub fn end(mut self, end: AttemptEnd<'_>) -> ScopeChange {
        let change = self.scope.end_attempt(self.seq, self.from, self.sent, end);
        self.permit = None;
        change
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if self.permit.is_some() {
            let end = AttemptEnd {
                outcome: Outcome::NotCalled,
                reported: None,
                tokens: 0,
            };
            self.scope.end_attempt(self.seq, self.from, self.sent, end);
        }
    }
}

impl Scope {
    /// A fresh scope.
    pub fn new(name: impl Into<String>, settings: &ScopeSettings) -> Self {
        let name: String = name.into();
        let l = settings.limits;
        let sources = Sources {
            rpm: l.rpm.map(|r| (r, LimitSource::Flag)),
            tpm: l.tpm.map(|t| (t, LimitSource::Flag)),
            learned_at: None,
            raised: None,
            undone_at: None,
            span: None,
        };
        let adaptive = settings.adaptive && l.is_empty();
        let shared = settings.shared.as_ref().map(|h| {
            std::sync::Arc::new(SharedScope::with_fallback(
                std::sync::Arc::clone(&h.0),
                &name,
                settings.shared_fallback,
            ))
        });
        Self {
            name,
            settings: settings.clone(),
            cooldown: Cooldown::new(settings.cooldown),
            gate: settings
                .max_concurrency
                .map(|n| std::sync::Arc::new(Semaphore::new(n.max(1)))),
            admission: Admission::new(l),
            window: Window::new(1, adaptive),
            signals: Signals::default(),
            recent: Recent::new(),
            sources: Mutex::new(sources),
            next_seq: AtomicU64::new(0),
            out: AtomicUsize::new(0),
            successes: AtomicU64::new(0),
            successes_at_cooldown: AtomicU64::new(0),
            warned: AtomicBool::new(false),
            settle: Settle::default(),
            spacing: Spacing::default(),
            shared,
        }
    }

    /// The limits this scope brings to the limits shared with other
    /// processes: those the user set or the provider's headers reported,
    /// and their window when known. A limit learned at a wall is left out:
    /// it is what got through to this process alone, a share of the quota,
    /// not the quota every process shares.
    pub fn shared_quota(&self) -> SharedQuota {
        let s = self.lock();
        let told = |src: LimitSource| src != LimitSource::Learned;
        SharedQuota {
            rpm: s.rpm.filter(|r| told(r.1)).map(|r| r.0),
            tpm: s.tpm.filter(|t| told(t.1)).map(|t| t.0),
            span: s.known_span(),
            margin: self.settings.limits.margin,
        }
    }

    /// Follows the adaptive decreases other processes on the shared quota
    /// made since the last time: the window drops as if this scope had
    /// judged the wall itself.
    pub fn follow_shared_decreases(&self) {
        let Some(s) = &self.shared else { return };
        if s.take_decreases_to_follow() > 0 && self.window.view().adaptive {
            let in_flight = self.out().max(1);
            self.window.decrease(in_flight);
        }
    }

    /// The limits shared with other processes, when the scope has them.
    pub fn shared(&self) -> Option<&std::sync::Arc<SharedScope>> {
        self.shared.as_ref()
    }

    /// The scope's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The settings it was created with.
    pub fn settings(&self) -> &ScopeSettings {
        &self.settings
    }

    /// The scope's cooldown.
    pub fn cooldown(&self) -> &Cooldown {
        &self.cooldown
    }

    /// The scope's RPM/TPM admission, when a limit or a provider's budget
    /// holds admissions back now.
    pub fn admission(&self) -> Option<&Admission> {
        self.admission.is_limited().then_some(&self.admission)
    }

    /// The concurrency window.
    pub fn window(&self) -> &Window {
        &self.window
    }

    /// Successful calls so far.
    pub fn successes(&self) -> u64 {
        self.successes.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sources> {
        self.sources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The limits in force now.
    pub fn limits_in_force(&self) -> LimitsInForce {
        let s = self.lock();
        let WindowView {
            limit,
            adaptive,
            decreases,
            ..
        } = self.window.view();
        LimitsInForce {
            rpm: s.rpm,
            tpm: s.tpm,
            window: limit,
            adaptive,
            decreases,
            foreign_requests: self.admission.foreign().0,
            shared: self.shared.as_ref().map(|s| SharedStatus {
                reachable: s.is_reachable(),
                outages: s.outages(),
            }),
        }
    }

    /// Takes a concurrency slot (immediately when the scope has no gate).
    pub(crate) async fn acquire_slot(&self) -> Option<OwnedSemaphorePermit> {
        match &self.gate {
            None => None,
            Some(g) => std::sync::Arc::clone(g).acquire_owned().await.ok(),
        }
    }

    /// Reports a 429 received at `now` to the cooldown.
    pub fn report_rate_limit(&self, hint: Option<Duration>, now: Instant) -> CooldownOutcome {
        let outcome = self.cooldown.report_rate_limit(hint, now);
        if matches!(outcome, CooldownOutcome::Started(_)) {
            self.successes_at_cooldown
                .store(self.successes(), Ordering::Relaxed);
        }
        outcome
    }

    /// True exactly once per cooldown, for the first attempt that goes ahead
    /// after it ended: the window reopens at the calls that succeeded while
    /// it ran and slow-starts from there.
    pub fn take_cooldown_end(&self, now: Instant) -> bool {
        if self.cooldown.active_until(now).is_some() || !self.cooldown.take_ended() {
            return false;
        }
        let since = self.successes() - self.successes_at_cooldown.load(Ordering::Relaxed);
        self.window.release(since);
        true
    }

    /// Opens an attempt: waits for a place in the window (raised to `cap`,
    /// the run's concurrency) and numbers it.
    pub async fn begin_attempt(&self, cap: usize) -> Attempt<'_> {
        self.window.raise_cap(cap);
        let permit = self.window.acquire().await;
        // Known limits pace admission themselves; without them, a burst is
        // spread over the round trip so a hidden wall refuses few.
        if !self.admission.is_limited() {
            self.spacing.wait(self.window.view().limit).await;
        }
        self.settle.wait().await;
        self.out.fetch_add(1, Ordering::Relaxed);
        Attempt {
            scope: self,
            permit: Some(permit),
            seq: self.next_seq.fetch_add(1, Ordering::Relaxed),
            from: self.admission.newest(),
            sent: Instant::now(),
        }
    }

    /// Closes attempt `seq` (admitted after reservation `from`, sent at
    /// `sent`): counts its
    /// outcome, takes in what its reply said of the provider's limits, and
    /// judges an episode it ends. Its window permit is still held.
    fn end_attempt(&self, seq: u64, from: u64, sent: Instant, end: AttemptEnd<'_>) -> ScopeChange {
        let now = Instant::now();
        let mut change = ScopeChange::default();
        match end.outcome {
            Outcome::Success => {
                self.successes.fetch_add(1, Ordering::Relaxed);
                self.spacing.succeeded(now.saturating_duration_since(sent));
                self.cooldown.record_success();
                change.limits |= self.window.success();
                self.recent.accepted(now, end.tokens);
                change.limits |= self.probe_learned(now);
            }
            Outcome::RateLimited | Outcome::Overloaded | Outcome::Failure | Outcome::NotCalled => {}
        }
        if let Some(r) = end.reported {
            let (changed, lower) = self.adopt_reported(r, now);
            change.limits |= changed;
            change.lower_than_flag = lower;
            // With shared limits every process's calls are in the shared
            // window already: what remains of the provider's quota is no
            // news about other processes.
            if self.shared.is_none()
                && (self.admission.is_limited()
                    || r.requests.remaining.is_some()
                    || r.tokens.remaining.is_some())
            {
                self.admission.observe(from, sent, r, now);
            }
        }
        if matches!(end.outcome, Outcome::RateLimited | Outcome::Overloaded) {
            self.window.hold();
        }
        if end.outcome == Outcome::RateLimited {
            change.limits |= self.undo_raise(now);
        }
        let in_flight = self.out().saturating_sub(1);
        let next = self.next_seq.load(Ordering::Relaxed);
        let wait = self.cooldown.hinted_wait(now);
        change.verdict = self.signals.ended(seq, end.outcome, next, in_flight, wait);
        match change.verdict {
            Some(Verdict::Quota { in_flight, rate }) => {
                self.window.decrease(in_flight);
                if let Some(s) = &self.shared {
                    s.note_decrease();
                }
                change.limits = true;
                if rate {
                    change.limits |= self.learn(now);
                }
            }
            Some(Verdict::Noise) => {
                self.window.unhold();
                change.cooldown_ended_early = self.cooldown.end_hintless(now);
            }
            Some(Verdict::Undecided) => self.window.unhold(),
            None => {}
        }
        self.settle.ended(seq);
        self.out.fetch_sub(1, Ordering::Relaxed);
        change
    }

    /// Calls out now (the one ending included, while it ends).
    fn out(&self) -> usize {
        self.out.load(Ordering::Relaxed)
    }

    /// The limits a reply reports come into force where the user set none.
    fn adopt_reported(
        &self,
        r: &ReportedLimits,
        now: Instant,
    ) -> (bool, Option<(&'static str, f64, f64)>) {
        let mut s = self.lock();
        let mut changed = false;
        let mut lower = None;
        // A provider that enforces its per-minute limits over a shorter
        // window (and resets within it) is paced over that window.
        let reset = r.requests.reset.max(r.tokens.reset);
        if let Some(reset) =
            reset.filter(|_| r.requests.limit.is_some() || r.tokens.limit.is_some())
        {
            let span = whole_seconds(reset).max(s.span.unwrap_or_default());
            if s.span != Some(span) {
                s.span = Some(span);
                changed |= s.rpm.is_some() || s.tpm.is_some();
            }
        }
        if let Some(l) = r.requests.limit.filter(|l| *l > 0) {
            let l = l as f64;
            match s.rpm {
                Some((ours, LimitSource::Flag)) if l < ours => lower = Some(("rpm", l, ours)),
                Some((_, LimitSource::Flag)) => {}
                Some((v, LimitSource::Header)) if (v - l).abs() < 0.5 => {}
                _ => {
                    s.rpm = Some((l, LimitSource::Header));
                    changed = true;
                }
            }
        }
        if let Some(l) = r.tokens.limit.filter(|l| *l > 0) {
            match s.tpm {
                Some((ours, LimitSource::Flag)) if l < ours => {
                    lower = lower.or(Some(("tpm", l as f64, ours as f64)));
                }
                Some((_, LimitSource::Flag)) => {}
                Some((v, LimitSource::Header)) if v == l => {}
                _ => {
                    s.tpm = Some((l, LimitSource::Header));
                    changed = true;
                }
            }
        }
        if changed {
            // When limits first come into force, the window starts with this
            // run's own calls, sent before any limit was known (those the
            // provider accepted, and those still in flight), and never with
            // less than the provider already counts: the reply is often the
            // first one's, counted before the calls in flight arrived, and
            // another process's calls may be in it.
            let scale = s.span().as_secs_f64() / MINUTE.as_secs_f64();
            let used = |l: &super::ReportedLimit| match (l.limit, l.remaining) {
                (Some(limit), Some(remaining)) => {
                    ((limit as f64 * scale).round() as u64).saturating_sub(remaining)
                }
                _ => 0,
            };
            let (used_requests, used_tokens) = (used(&r.requests), used(&r.tokens));
            let accepted = self.recent.minute(now);
            let own = accepted.accepted + self.out().saturating_sub(1) as u64;
            let requests = used_requests.max(own);
            // Tokens at the provider's average per request.
            let tokens = match used_requests {
                0 => accepted.tokens,
                n => (used_tokens.saturating_mul(requests) / n).max(accepted.tokens),
            };
            let seed = [(now, requests, tokens)];
            if !self.admission.is_limited() {
                self.settle
                    .begin(self.next_seq.load(Ordering::Relaxed), self.out());
            }
            self.put_in_force(&s, &seed);
        }
        drop(s);
        // Warned once per scope.
        let lower = lower.filter(|_| !self.warned.swap(true, Ordering::Relaxed));
        if let Some((what, theirs, ours)) = lower {
            tracing::warn!(
                scope = %self.name,
                "the provider reports {what} {theirs}, lower than the {ours} set: 429s are likely"
            );
        }
        (changed, lower)
    }

    /// A quota wall without stated limits. The first teaches the limits:
    /// what the provider accepted over the window it showed. A wall while
    /// learned limits pace the run means they are too high: they drop by
    /// 10 % (and grow by 10 % after five clean minutes, [`Self::probe_learned`]).
    fn learn(&self, now: Instant) -> bool {
        let mut s = self.lock();
        let known =
            |src: Option<LimitSource>| matches!(src, Some(LimitSource::Flag | LimitSource::Header));
        if known(s.rpm.map(|r| r.1)) || known(s.tpm.map(|t| t.1)) {
            return false;
        }
        if s.learned_at.is_some() {
            // The wall of a raise, judged when its episode ends (after its
            // cooldown): the limits went back already, and are not lowered
            // below what held before the raise.
            let span = s.span();
            if s.undone_at
                .is_some_and(|u| now.saturating_duration_since(u) <= 2 * span)
            {
                return false;
            }
            s.rpm = s.rpm.map(|(r, src)| ((r * 0.9).floor().max(1.0), src));
            s.tpm = s.tpm.map(|(t, src)| ((t - t / 10).max(1), src));
            s.learned_at = Some(now);
            tracing::info!(scope = %self.name, rpm = ?s.rpm, tpm = ?s.tpm, "quota wall: learned limits lowered");
            self.put_in_force(&s, &[]);
            return true;
        }
        let m = self.recent.minute(now);
        let Some(since) = m.since else {
            return false;
        };
        // The provider's window: what was accepted since the first success
        // of the last minute, and the hint's wait until it has room again.
        // For a rolling minute hit early that is a minute; for a quota of
        // 500 per 10 s, 10 s, and the limit per minute is six times 500.
        let wait = self.cooldown.hinted_wait(now);
        // In whole seconds, rounded: a rolling minute hit 0.1 s in is 60 s,
        // not 59 (a window shorter than the provider's lets a burst at its
        // start and one at its end into the same provider window).
        let window = now.saturating_duration_since(since) + wait;
        let window = Duration::from_secs(window.as_secs_f64().round().clamp(1.0, 60.0) as u64);
        let per_minute = MINUTE.as_secs_f64() / window.as_secs_f64();
        let rpm = (m.accepted as f64 * per_minute).floor().max(1.0);
        let tpm = (m.tokens as f64 * per_minute).floor() as u64;
        s.rpm = Some((rpm, LimitSource::Learned));
        s.tpm = (tpm > 0).then_some((tpm, LimitSource::Learned));
        s.learned_at = Some(now);
        // The limits are paced over the provider's window when the hint
        // showed one (the time until its oldest request leaves).
        if !wait.is_zero() {
            s.span = Some(window.max(s.span.unwrap_or_default()));
        }
        tracing::info!(
            scope = %self.name,
            rpm,
            tpm,
            window_secs = window.as_secs_f64(),
            "quota wall: limits learned from what the provider accepted"
        );
        // The window starts with what the provider accepted and what is
        // still in flight (sent, so counted there, but not yet answered).
        let mut seed = self.recent.seed(now);
        seed.push((now, self.out() as u64, 0));
        self.put_in_force(&s, &seed);
        true
    }

    /// Learned limits grow by 10 % after five clean minutes: a quota that
    /// grew is found within minutes, and a raise past an unchanged quota
    /// costs one wall per five minutes, not one a minute.
    fn probe_learned(&self, now: Instant) -> bool {
        let mut s = self.lock();
        let due = s
            .learned_at
            .is_some_and(|at| now.saturating_duration_since(at) >= PROBE_AFTER);
        if !due {
            return false;
        }
        s.learned_at = Some(now);
        s.raised = Some(Raise {
            at: now,
            rpm: s.rpm,
            tpm: s.tpm,
        });
        if let Some((r, LimitSource::Learned)) = s.rpm {
            s.rpm = Some(((r * 1.1).ceil(), LimitSource::Learned));
        }
        if let Some((t, LimitSource::Learned)) = s.tpm {
            s.tpm = Some((t + t.div_ceil(10), LimitSource::Learned));
        }
        self.put_in_force(&s, &[]);
        true
    }

    /// A rate limit within two windows of a raise of learned limits: the
    /// quota did not grow, and the limits go back to what they were. Paced
    /// admissions meet a wall one call at a time (the cooldown holds the
    /// rest), which the episode judges noise, so without this a raise past
    /// the quota would stand and cost a 429 every window.
    fn undo_raise(&self, now: Instant) -> bool {
        let mut s = self.lock();
        let Some(Raise { at, rpm, tpm }) = s.raised.take() else {
            return false;
        };
        if now.saturating_duration_since(at) > 2 * s.span() {
            return false;
        }
        s.rpm = rpm;
        s.tpm = tpm;
        s.learned_at = Some(now);
        s.undone_at = Some(now);
        tracing::info!(scope = %self.name, rpm = ?s.rpm, tpm = ?s.tpm, "quota wall after a raise: learned limits back");
        self.put_in_force(&s, &[]);
        true
    }

    /// Puts the limits of `s` into the admission, the window starting with
    /// `seed` (when, requests, tokens) when it had no limits before; a known
    /// limit turns adaptive concurrency off.
    fn put_in_force(&self, s: &Sources, seed: &[(Instant, u64, u64)]) {
        self.admission
            .set_limits(s.rpm.map(|r| r.0), s.tpm.map(|t| t.0), s.span(), seed);
        let told = |src: Option<LimitSource>| src.is_none_or(|s| s == LimitSource::Flag);
        self.admission
            .pace(!(told(s.rpm.map(|r| r.1)) && told(s.tpm.map(|t| t.1))));
        let known = s.rpm.is_some() || s.tpm.is_some();
        self.window.set_adaptive(self.settings.adaptive && !known);
    }
}
