//! Using a provider's quota without being told it, on tokio's paused clock:
//! limits from the provider's headers, limits learned at a quota wall,
//! foreign use reported by what remains, adaptive concurrency, noise that
//! moves nothing, and one item's 429s that do not hold the others up.
//!
//! The providers here are in-process doubles that enforce a quota the way
//! real ones do (a rolling minute of requests, or a number of calls in
//! flight) and answer like them (429 with `Retry-After`, 529, and the
//! rate-limit headers on every reply when they send them).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::unchecked_time_subtraction
)]

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_batch_llm::testing::{FakeStep, FakeStrategy};
use async_batch_llm::{
    BatchConfig, CallError, Completion, ErrorCategory, Item, LimitSource, Prompt, RateLimits,
    ReportedLimit, ReportedLimits, RetryState, ScopeRegistry, Strategy, TokenUsage,
    process_prompts,
};
use tokio::time::Instant;

const MINUTE: Duration = Duration::from_secs(60);

/// A provider enforcing `rpm` requests over a rolling minute (optionally
/// shared with other "processes"), answering 429 with `Retry-After`, and
/// reporting limit, remaining and reset on every reply when `headers`.
#[derive(Clone)]
struct RollingQuota {
    /// Requests per `span`.
    rpm: u64,
    span: Duration,
    headers: bool,
    latency: Duration,
    /// How long a refusal takes to come back.
    refusal: Duration,
    /// A 429 hints the time until the window is empty (the whole quota
    /// back, as a reset states it), not until its oldest request leaves.
    hint_until_empty: bool,
    window: Arc<Mutex<VecDeque<Instant>>>,
    refused: Arc<AtomicU64>,
    served: Arc<AtomicU64>,
}

impl RollingQuota {
    fn new(rpm: u64, headers: bool, latency: Duration) -> Self {
        Self::sliding(rpm, MINUTE, headers, latency)
    }

    /// `n` requests in any `span`; the headers state the limit per minute,
    /// as OpenAI states limits it enforces over shorter periods.
    fn sliding(n: u64, span: Duration, headers: bool, latency: Duration) -> Self {
        Self {
            rpm: n,
            span,
            headers,
            latency,
            refusal: latency / 10,
            hint_until_empty: false,
            window: Arc::default(),
            refused: Arc::default(),
            served: Arc::default(),
        }
    }

    /// Admits a request arriving now: the headers of the reply, or the
    /// 429's hint and headers.
    fn arrive(&self) -> Result<Option<ReportedLimits>, (Duration, Option<ReportedLimits>)> {
        let now = Instant::now();
        let mut w = self.window.lock().unwrap();
        let span = self.span;
        while w.front().is_some_and(|t| *t + span <= now) {
            w.pop_front();
        }
        let full = w.len() as u64 >= self.rpm;
        if !full {
            w.push_back(now);
        }
        let per_minute = (self.rpm as f64 * MINUTE.as_secs_f64() / span.as_secs_f64()) as u64;
        let reported = self.headers.then(|| ReportedLimits {
            requests: ReportedLimit {
                limit: Some(per_minute),
                remaining: Some(self.rpm - w.len() as u64),
                reset: Some(w.back().map_or(Duration::ZERO, |t| *t + span - now)),
            },
            tokens: ReportedLimit::default(),
        });
        if full {
            let oldest = if self.hint_until_empty {
                w.back()
            } else {
                w.front()
            };
            let hint = *oldest.unwrap() + span - now;
            Err((hint, reported))
        } else {
            Ok(reported)
        }
    }
}

impl Strategy for RollingQuota {
    type Output = String;

    async fn execute(
        &self,
        prompt: &Prompt,
        _attempt: u32,
        _timeout: Duration,
        state: &mut RetryState,
    ) -> Result<Completion<String>, CallError> {
        match self.arrive() {
            Ok(reported) => {
                tokio::time::sleep(self.latency).await;
                self.served.fetch_add(1, Ordering::Relaxed);
                state.report_limits(reported);
                Ok((prompt.text().into_owned(), Some(TokenUsage::new(10, 5))))
            }
            Err((hint, reported)) => {
                // A refusal comes back fast.
                tokio::time::sleep(self.refusal).await;
                self.refused.fetch_add(1, Ordering::Relaxed);
                Err(CallError::rate_limit("quota", Some(hint)).with_reported_limits(reported))
            }
        }
    }
}

fn items(n: usize) -> Vec<Item> {
    (0..n)
        .map(|i| Item::new(format!("i{i}"), format!("i{i}")))
        .collect()
}

fn config(concurrency: usize) -> BatchConfig {
    BatchConfig {
        concurrency,
        scopes: ScopeRegistry::new(),
        ..BatchConfig::default()
    }
}

/// Runs `n` items on `p` under `cfg`; every one succeeds. How long it took.
async fn all_succeed(p: &RollingQuota, n: usize, cfg: &BatchConfig) -> Duration {
    let t0 = Instant::now();
    let batch = process_prompts(p.clone(), items(n), cfg).await.unwrap();
    assert_eq!(batch.stats.succeeded, n as u64);
    t0.elapsed()
}

fn limits_of(config: &BatchConfig) -> async_batch_llm::LimitsInForce {
    config
        .scopes
        .scope("default", &config.scope_settings())
        .unwrap()
        .limits_in_force()
}

#[tokio::test(start_paused = true)]
async fn limits_from_headers_pace_the_run_without_being_told() {
    // RPM 600, 64 workers, 100 ms calls: unpaced, 640 requests a second.
    let p = RollingQuota::new(600, true, Duration::from_millis(100));
    let cfg = config(64);
    let wall = all_succeed(&p, 1500, &cfg).await;
    let calls = p.served.load(Ordering::Relaxed) + p.refused.load(Ordering::Relaxed);
    let refused = p.refused.load(Ordering::Relaxed);
    assert!(refused * 200 <= calls, "{refused} of {calls} calls refused");
    // 1500 at 600 a minute: the third minute, not later.
    assert!(wall <= Duration::from_secs(125), "{wall:?}");
    let l = limits_of(&cfg);
    assert_eq!(l.rpm, Some((600.0, LimitSource::Header)));
    assert!(!l.adaptive, "a known limit turns adaptive concurrency off");
}

#[tokio::test(start_paused = true)]
async fn a_quota_wall_without_headers_teaches_the_limit() {
    let p = RollingQuota::new(600, false, Duration::from_millis(100));
    let cfg = config(64);
    all_succeed(&p, 1500, &cfg).await;
    let refused = p.refused.load(Ordering::Relaxed);
    // Sends are spread over the round trip (at twice the loop's rate: 0.8 ms
    // apart for 64 calls of 100 ms), so the wall costs the calls sent in the 10 ms
    // its first refusal takes to come back, and little after: 10 (40 when
    // a whole window went in one burst).
    assert!(refused <= 16, "{refused} refused");
    let l = limits_of(&cfg);
    let (rpm, source) = l.rpm.unwrap();
    assert_eq!(source, LimitSource::Learned);
    // Learned at the wall, then raised by 10 % after each clean minute.
    assert!((540.0..=800.0).contains(&rpm), "learned {rpm}");
}

#[tokio::test(start_paused = true)]
async fn learned_limits_use_the_quota_when_calls_use_fewer_tokens_than_estimated() {
    // A quota of 40 a minute, calls of 15 tokens against an estimate of
    // 257 (the default 256 output tokens): the learned TPM is 600, and a
    // reservation of the estimate needs the room of seventeen calls.
    let p = RollingQuota::new(40, false, Duration::from_millis(100));
    let cfg = config(16);
    let wall = all_succeed(&p, 200, &cfg).await;
    // 40 in the first minute, then 40 a minute, paced at 16 times the
    // rate: done some 244 s in (261 s now; 439 s when every call reserved
    // its estimate).
    assert!(wall <= Duration::from_secs(270), "{wall:?}");
}

#[tokio::test(start_paused = true)]
async fn a_wall_with_one_call_behind_its_refusal_is_known_by_its_hint() {
    // The refusal comes back within a gap of the spread sends (0.8 ms):
    // at most one call went behind it, and the calls before it succeed, so
    // by the calls alone it is noise. Its hint, most of a minute, says the
    // window is full: learned at the first wall, not met again each minute.
    let mut p = RollingQuota::new(600, false, Duration::from_millis(100));
    p.refusal = Duration::from_micros(500);
    let cfg = config(64);
    all_succeed(&p, 1500, &cfg).await;
    let refused = p.refused.load(Ordering::Relaxed);
    assert!(refused <= 4, "{refused} refused");
    let l = limits_of(&cfg);
    assert_eq!(l.rpm.map(|r| r.1), Some(LimitSource::Learned), "{l:?}");
}

#[tokio::test(start_paused = true)]
async fn a_raise_past_an_unchanged_quota_is_undone_at_its_first_429() {
    let p = RollingQuota::new(600, false, Duration::from_millis(100));
    let rpm = raises_past_an_unchanged_quota(&p).await;
    assert!(rpm <= 600.0, "learned {rpm}");
}

#[tokio::test(start_paused = true)]
async fn the_wall_of_a_raise_does_not_lower_the_limits_it_restored() {
    // The raise's 429 hints a long wait (until the whole window is back),
    // so its episode is a wall too: it undoes the raise, and does not then
    // lower the limits below what held before it (534 before this rule).
    let mut p = RollingQuota::new(600, false, Duration::from_millis(100));
    p.hint_until_empty = true;
    let rpm = raises_past_an_unchanged_quota(&p).await;
    assert!((590.0..=600.0).contains(&rpm), "learned {rpm}");
}

/// Fifteen minutes on the rolling minute of 600 `p`, which states nothing:
/// after the first wall the learned limits are raised every five clean
/// minutes, and each raise meets the quota again. Every item succeeds, the
/// raises cost a 429 or two each; the learned RPM at the end.
async fn raises_past_an_unchanged_quota(p: &RollingQuota) -> f64 {
    let cfg = config(64);
    let after_first_minute = {
        let p = p.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(61)).await;
            p.refused.load(Ordering::Relaxed)
        })
    };
    all_succeed(p, 9000, &cfg).await;
    let later = p.refused.load(Ordering::Relaxed) - after_first_minute.await.unwrap();
    // A few 429s for each of the two raises (a raise that stood would cost
    // one every minute after it: 50 before this rule). 4 when calls
    // reserved their estimates, 17 times what they use, which kept the run
    // a little under the quota; 5 since they reserve what they use.
    assert!(later <= 6, "{later} refused after the first minute");
    limits_of(&cfg).rpm.unwrap().0
}

/// Two processes (two registries) of `concurrency` on the quota `p`, each
/// with `n` items, started together: every item succeeds; how long it took.
async fn two_runs(p: &RollingQuota, concurrency: usize, n: usize) -> Duration {
    let (a, b) = (config(concurrency), config(concurrency));
    let t0 = Instant::now();
    let (ra, rb) = tokio::join!(
        process_prompts(p.clone(), items(n), &a),
        process_prompts(p.clone(), items(n), &b),
    );
    assert_eq!(
        ra.unwrap().stats.succeeded + rb.unwrap().stats.succeeded,
        2 * n as u64
    );
    t0.elapsed()
}

#[tokio::test(start_paused = true)]
async fn two_runs_on_one_quota_respect_what_the_other_uses() {
    // Two processes (two registries) on one key: each sees the other's use
    // in what remains.
    let p = RollingQuota::new(600, true, Duration::from_millis(100));
    let wall = two_runs(&p, 32, 900).await;
    let calls = p.served.load(Ordering::Relaxed) + p.refused.load(Ordering::Relaxed);
    let refused = p.refused.load(Ordering::Relaxed);
    // (15 of 1,815 before admissions were paced.)
    assert!(refused * 200 <= calls, "{refused} of {calls} calls refused");
    // And they still use the quota: 1,800 at 600 a minute, paced evenly
    // between them, is three minutes (97 % of the quota at 185 s).
    assert!(wall <= Duration::from_secs(185), "{wall:?}");
}

#[tokio::test(start_paused = true)]
async fn two_runs_started_together_do_not_race_for_each_window() {
    // Two processes at 64 calls in flight each start at the same instant
    // on a quota of 150 a minute: each first burst fits, then every minute
    // both runs' calls of the minute before leave the window together.
    // Unpaced, both refill all of it at once and the provider refuses what
    // arrives second.
    let p = RollingQuota::new(150, true, Duration::from_millis(50));
    let wall = two_runs(&p, 64, 400).await;
    let refused = p.refused.load(Ordering::Relaxed);
    assert!(refused <= 4, "{refused} refused");
    // 800 at 150 a minute: 150 in each of five minutes, the last 50 in
    // the sixth (at 5 s a call for the two of them, paced: 10 s).
    assert!(wall <= Duration::from_secs(320), "{wall:?}");
}

/// 3,000 items on a quota of 500 in any 10 s, with or without headers:
/// the wall time, the calls refused and the run's config.
async fn five_hundred_per_ten_seconds(headers: bool) -> (Duration, u64, BatchConfig) {
    let p = RollingQuota::sliding(
        500,
        Duration::from_secs(10),
        headers,
        Duration::from_millis(50),
    );
    let cfg = config(64);
    let t0 = Instant::now();
    process_prompts(p.clone(), items(3000), &cfg).await.unwrap();
    (t0.elapsed(), p.refused.load(Ordering::Relaxed), cfg)
}

#[tokio::test(start_paused = true)]
async fn a_per_minute_limit_enforced_over_ten_seconds_is_paced_over_ten_seconds() {
    // 500 in any 10 s, stated as 3,000 a minute: 3,000 items take five
    // windows after the first, 50 s, and nothing is refused.
    let (wall, refused, cfg) = five_hundred_per_ten_seconds(true).await;
    assert!(refused <= 5, "{refused} refused");
    assert!(wall <= Duration::from_millis(52_500), "{wall:?}");
    assert_eq!(limits_of(&cfg).rpm, Some((3000.0, LimitSource::Header)));
}

#[tokio::test(start_paused = true)]
async fn a_wall_with_a_hint_teaches_the_window_it_came_from() {
    // The same quota, saying nothing: the first wall comes after 500
    // requests in well under a second, with a hint of nearly 10 s: the
    // limit is 500 per 10 s, 3,000 a minute, not 500 a minute.
    let (wall, refused, cfg) = five_hundred_per_ten_seconds(false).await;
    let l = limits_of(&cfg);
    let (rpm, source) = l.rpm.expect("learned");
    assert_eq!(source, LimitSource::Learned);
    // Learned from the window the hint showed (500 a minute, from the
    // requests alone, would be six times too slow), and lowered by 10 % at
    // most twice by later walls.
    assert!((2400.0..=3300.0).contains(&rpm), "{l:?}");
    // The first wall (a burst's worth behind it), little after: 84 before
    // a wall met mid-burst was told from noise and learned windows were
    // rounded down a second.
    assert!(refused <= 30, "{refused} refused");
    // Weak: 50 s is the ideal; later walls cost it about a third.
    assert!(wall <= Duration::from_secs(70), "{wall:?}");
}

#[tokio::test(start_paused = true)]
async fn a_provider_limit_below_the_users_is_reported_and_the_user_wins() {
    let p = RollingQuota::new(100, true, Duration::from_millis(100));
    let cfg = BatchConfig {
        limits: RateLimits {
            rpm: Some(200.0),
            ..RateLimits::default()
        },
        ..config(8)
    };
    process_prompts(p.clone(), items(20), &cfg).await.unwrap();
    let l = limits_of(&cfg);
    assert_eq!(l.rpm, Some((200.0, LimitSource::Flag)));
}

/// A provider that overloads (529) beyond `capacity` calls in flight.
#[derive(Clone)]
struct Capacity {
    most: usize,
    in_flight: Arc<AtomicUsize>,
    overloaded: Arc<AtomicU64>,
    calls: Arc<AtomicU64>,
}

impl Strategy for Capacity {
    type Output = String;

    async fn execute(
        &self,
        prompt: &Prompt,
        _attempt: u32,
        _timeout: Duration,
        _state: &mut RetryState,
    ) -> Result<Completion<String>, CallError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        let r = if now > self.most {
            tokio::time::sleep(Duration::from_millis(10)).await;
            self.overloaded.fetch_add(1, Ordering::Relaxed);
            Err(CallError::new(ErrorCategory::ServerOverload, "Overloaded").with_status(529))
        } else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Ok((prompt.text().into_owned(), None))
        };
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        r
    }
}

#[tokio::test(start_paused = true)]
async fn adaptive_concurrency_finds_a_providers_capacity() {
    let provider = Capacity {
        most: 10,
        in_flight: Arc::default(),
        overloaded: Arc::default(),
        calls: Arc::default(),
    };
    let metrics = Arc::new(async_batch_llm::MetricsObserver::new());
    let cfg = BatchConfig {
        retry: async_batch_llm::RetryPolicy {
            max_attempts: 20,
            ..async_batch_llm::RetryPolicy::default()
        },
        observers: vec![metrics.clone()],
        ..config(64)
    };
    let batch = process_prompts(provider.clone(), items(3000), &cfg)
        .await
        .unwrap();
    assert_eq!(batch.stats.succeeded, 3000);
    let limits = limits_of(&cfg);
    assert!(limits.adaptive && limits.decreases >= 1, "{limits:?}");
    // The metrics follow the window. Observers run on their own thread:
    // wait (real time, bounded) until it has seen every item.
    for _ in 0..500 {
        if metrics.items("completed") == 3000 {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let text = metrics.to_prometheus();
    assert_eq!(
        metrics.scope_concurrency("default"),
        Some(limits.window),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "abl_scope_window_decreases_total{{scope=\"default\"}} {}",
            limits.decreases
        )),
        "{text}"
    );
    // The window counts calls refused fast and waiting out their backoff
    // too; what matters is how few calls are refused.
    assert!((6..=32).contains(&limits.window), "{limits:?}");
    let (overloaded, calls) = (
        provider.overloaded.load(Ordering::Relaxed),
        provider.calls.load(Ordering::Relaxed),
    );
    assert!(
        overloaded * 10 <= calls,
        "{overloaded} of {calls} overloaded"
    );
    // Without it, the window stays at 64 and most calls are refused.
    let fixed = BatchConfig {
        adaptive: false,
        ..cfg.clone()
    };
    let fixed = BatchConfig {
        scopes: ScopeRegistry::new(),
        ..fixed
    };
    let again = Capacity {
        overloaded: Arc::default(),
        calls: Arc::default(),
        ..provider
    };
    process_prompts(again.clone(), items(300), &fixed)
        .await
        .unwrap();
    assert_eq!(limits_of(&fixed).window, 64);
    let (o, c) = (
        again.overloaded.load(Ordering::Relaxed),
        again.calls.load(Ordering::Relaxed),
    );
    assert!(o * 4 > c, "{o} of {c} overloaded at a fixed 64");
}

#[tokio::test(start_paused = true)]
async fn noise_never_moves_the_window() {
    // 2 % of calls fail with a 503 or a 529 at random: not a quota.
    let fake = FakeStrategy::echo()
        .with_latency(Duration::from_millis(50))
        .with_failure_rate(0.02, 7);
    let mut fake = fake;
    for i in (0..2000).step_by(97) {
        fake = fake.with_item_schedule(
            format!("i{i}"),
            vec![FakeStep::Error(ErrorCategory::ServerOverload)],
        );
    }
    let cfg = config(64);
    let batch = process_prompts(fake, items(2000), &cfg).await.unwrap();
    assert_eq!(batch.stats.succeeded + batch.stats.failed, 2000);
    let l = limits_of(&cfg);
    assert_eq!((l.decreases, l.window), (0, 64), "{l:?}");
}

#[tokio::test(start_paused = true)]
async fn one_items_429s_do_not_hold_up_the_others() {
    // i5 is answered 429 without a hint on every call (a request that alone
    // exceeds a limit, or a broken proxy); the 1,999 others go on.
    let lat = Duration::from_millis(50);
    let baseline = {
        let fake = FakeStrategy::echo().with_latency(lat).recording();
        let t0 = Instant::now();
        process_prompts(fake, items(2000), &config(64))
            .await
            .unwrap();
        t0.elapsed()
    };
    let fake = FakeStrategy::echo()
        .with_latency(lat)
        .with_item_schedule("i5", vec![FakeStep::RateLimit(None); 30])
        .recording();
    let t0 = Instant::now();
    let batch = process_prompts(fake.clone(), items(2000), &config(64))
        .await
        .unwrap();
    assert_eq!(batch.stats.succeeded, 1999);
    let i5 = batch.results.iter().find(|r| r.id == "i5").unwrap();
    assert_eq!(
        i5.outcome.as_ref().err().map(|e| e.category),
        Some(ErrorCategory::RateLimitRetriesExceeded)
    );
    let others_done = fake
        .call_starts()
        .iter()
        .filter(|s| s.0 != "i5")
        .map(|s| s.1)
        .max()
        .unwrap()
        + lat
        - t0;
    assert!(
        others_done <= baseline * 2,
        "the others took {others_done:?}, {baseline:?} without i5"
    );
    // The scope paused once at most for i5 (its first 429); its later 429s
    // were its own.
    assert!(
        batch.stats.cooldowns <= 1,
        "{} cooldowns",
        batch.stats.cooldowns
    );
}
