//! RPM/TPM admission, settlement, budgets and fail-fast on tokio's paused clock.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::unchecked_time_subtraction
)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_batch_llm::testing::{FakeStep, FakeStrategy};
use async_batch_llm::{
    BatchConfig, Budget, CallError, Completion, ErrorCategory, Item, Prompt, RateLimits,
    RetryState, ScopeRegistry, StopMode, Strategy, TerminationReason, TokenEstimator, TokenUsage,
    process_prompts,
};
use tokio::time::Instant;

fn config(concurrency: usize, limits: RateLimits) -> BatchConfig {
    BatchConfig {
        concurrency,
        limits,
        scopes: ScopeRegistry::new(),
        ..BatchConfig::default()
    }
}

fn items(n: usize) -> Vec<Item> {
    (0..n)
        .map(|i| Item::new(format!("i{i}"), format!("i{i}")))
        .collect()
}

/// The most admissions in any rolling window of `w` (call starts sorted).
fn max_in_window(starts: &[Instant], w: Duration) -> usize {
    let mut best = 0;
    let mut lo = 0;
    for hi in 0..starts.len() {
        while starts[hi] - starts[lo] >= w {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

struct Fixed(u64);

impl TokenEstimator for Fixed {
    fn estimate(&self, _: &Prompt) -> Result<u64, async_batch_llm::EstimateError> {
        Ok(self.0)
    }
}

#[tokio::test(start_paused = true)]
async fn rpm_60_never_exceeds_and_uses_the_limit() {
    let t0 = Instant::now();
    let fake = FakeStrategy::echo().recording();
    let cfg = BatchConfig {
        batch_deadline: Some(Duration::from_secs(600)),
        ..config(
            64,
            RateLimits {
                rpm: Some(60.0),
                tpm: None,
                ..RateLimits::default()
            },
        )
    };
    let batch = process_prompts(fake.clone(), items(1_000), &cfg)
        .await
        .unwrap();
    let mut starts: Vec<Instant> = fake.call_starts().into_iter().map(|s| s.1).collect();
    starts.sort();
    assert_eq!(max_in_window(&starts, Duration::from_secs(60)), 60);
    let first_ten_minutes = starts
        .iter()
        .filter(|s| **s - t0 < Duration::from_secs(600))
        .count();
    assert!(
        (594..=606).contains(&first_ten_minutes),
        "{first_ten_minutes}"
    );
    assert_eq!(batch.results.len(), 1_000, "every item has a result");
    assert_eq!(batch.termination.reason, TerminationReason::BatchDeadline);
}

#[tokio::test(start_paused = true)]
async fn tpm_with_a_fixed_estimate_never_exceeds_and_uses_the_limit() {
    let t0 = Instant::now();
    // 100 tokens per call, 6,000 per minute: 60 calls a minute. The fake
    // reports no usage, so every estimate is kept.
    let fake = FakeStrategy::echo().with_unknown_usage().recording();
    let cfg = BatchConfig {
        estimator: Some(Arc::new(Fixed(100))),
        batch_deadline: Some(Duration::from_secs(600)),
        ..config(
            64,
            RateLimits {
                rpm: None,
                tpm: Some(6_000),
                ..RateLimits::default()
            },
        )
    };
    process_prompts(fake.clone(), items(1_000), &cfg)
        .await
        .unwrap();
    let mut starts: Vec<Instant> = fake.call_starts().into_iter().map(|s| s.1).collect();
    starts.sort();
    assert_eq!(max_in_window(&starts, Duration::from_secs(60)), 60);
    let n = starts
        .iter()
        .filter(|s| **s - t0 < Duration::from_secs(600))
        .count();
    assert!((594..=606).contains(&n), "{n}");
}

/// Reports the usage its prompt names: "80", "130", "unknown", "0".
struct Reports;

impl Strategy for Reports {
    type Output = String;
    async fn execute(
        &self,
        prompt: &Prompt,
        _: u32,
        _: Duration,
        _: &mut RetryState,
    ) -> Result<Completion<String>, CallError> {
        let usage = prompt
            .text()
            .parse::<u64>()
            .ok()
            .map(|n| TokenUsage::new(n, 0));
        Ok((prompt.text().into_owned(), usage))
    }
}

#[tokio::test(start_paused = true)]
async fn settlement_figures_appear_in_the_batch_statistics() {
    let cfg = BatchConfig {
        estimator: Some(Arc::new(Fixed(100))),
        ..config(
            1,
            RateLimits {
                rpm: None,
                tpm: Some(10_000),
                ..RateLimits::default()
            },
        )
    };
    let items = ["80", "130", "unknown", "0"].map(|p| Item::new(p, p));
    let batch = process_prompts(Reports, items, &cfg).await.unwrap();
    let a = batch.stats.admission;
    assert_eq!((a.reserved, a.reserved_tokens), (4, 400));
    assert_eq!(
        (a.refunded_tokens, a.debt_tokens, a.retained),
        (20 + 100, 30, 1)
    );
    assert!(
        batch.summary().contains("120 refunded, 30 debt, 1 kept"),
        "{}",
        batch.summary()
    );
}

#[tokio::test(start_paused = true)]
async fn fractional_rpm_half_starts_the_second_call_at_120_s() {
    let t0 = Instant::now();
    let fake = FakeStrategy::echo().recording();
    process_prompts(
        fake.clone(),
        items(2),
        &config(
            2,
            RateLimits {
                rpm: Some(0.5),
                tpm: None,
                ..RateLimits::default()
            },
        ),
    )
    .await
    .unwrap();
    let at: Vec<Duration> = fake.call_starts().iter().map(|s| s.1 - t0).collect();
    assert_eq!(at, [Duration::ZERO, Duration::from_secs(120)]);
}

#[tokio::test(start_paused = true)]
async fn estimates_over_the_limit_or_missing_estimators_fail_before_any_call() {
    let fake = FakeStrategy::echo();
    let cfg = BatchConfig {
        estimator: Some(Arc::new(Fixed(5_000))),
        ..config(
            2,
            RateLimits {
                rpm: None,
                tpm: Some(1_000),
                ..RateLimits::default()
            },
        )
    };
    let batch = process_prompts(fake.clone(), items(3), &cfg).await.unwrap();
    assert_eq!(fake.calls(), 0);
    assert_eq!(
        batch.stats.failures[&ErrorCategory::AdmissionError].count,
        3
    );
    let msg = &batch.results[0].error().unwrap().message;
    assert!(
        msg.contains("exceeds the limit of 1000 tokens per minute"),
        "{msg}"
    );
    let cfg = BatchConfig {
        estimator: None,
        ..cfg
    };
    let batch = process_prompts(fake.clone(), items(1), &cfg).await.unwrap();
    assert_eq!(
        batch.results[0].error().map(|e| e.category),
        Some(ErrorCategory::AdmissionError)
    );
    assert_eq!(fake.calls(), 0);
}

/// 100 tokens per call; item n takes 100 + 7·(n mod 10) ms, so calls end
/// at different moments and some are in flight when the budget runs out.
struct Staggered;

impl Strategy for Staggered {
    type Output = String;
    async fn execute(
        &self,
        prompt: &Prompt,
        _: u32,
        _: Duration,
        _: &mut RetryState,
    ) -> Result<Completion<String>, CallError> {
        let n: u64 = prompt.text()[1..].parse().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(100 + 7 * (n % 10))).await;
        Ok((prompt.text().into_owned(), Some(TokenUsage::new(60, 40))))
    }
}

#[tokio::test(start_paused = true)]
async fn a_token_budget_stops_the_run_with_bounded_overshoot() {
    for mode in [StopMode::Drain, StopMode::Cancel] {
        let cfg = BatchConfig {
            budget: Budget {
                max_tokens: Some(1_000),
                ..Budget::default()
            },
            stop_mode: mode,
            ..config(10, RateLimits::default())
        };
        let batch = process_prompts(Staggered, items(200), &cfg).await.unwrap();
        assert_eq!(batch.termination.reason, TerminationReason::BudgetExceeded);
        assert!(
            batch
                .termination
                .message
                .as_deref()
                .unwrap()
                .contains("token budget of 1000")
        );
        assert_eq!(batch.results.len(), 200, "every item has a result");
        let over = batch.stats.usage.total.saturating_sub(1_000);
        assert!(over <= 10 * 100, "overshoot ≤ the calls in flight: {over}");
        let by = |c| batch.stats.failures.get(&c).map_or(0, |s| s.count);
        let (succeeded, aborted, unstarted) = (
            batch.stats.succeeded,
            by(ErrorCategory::Aborted),
            by(ErrorCategory::BudgetExceeded),
        );
        assert_eq!(succeeded + aborted + unstarted, 200);
        match mode {
            StopMode::Drain => assert_eq!(aborted, 0, "calls in flight finish"),
            StopMode::Cancel => {
                assert!(
                    (1..=9).contains(&aborted),
                    "calls in flight are aborted: {aborted}"
                );
                assert_eq!(
                    batch.stats.usage.total,
                    succeeded * 100,
                    "aborted calls billed nothing"
                );
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn fail_fast_on_authentication_stops_after_the_first_such_item() {
    let fake = FakeStrategy::echo()
        .with_latency(Duration::from_millis(10))
        .with_item_schedule("i5", vec![FakeStep::Error(ErrorCategory::Authentication)]);
    let cfg = BatchConfig {
        fail_fast: vec![ErrorCategory::Authentication],
        ..config(2, RateLimits::default())
    };
    let batch = process_prompts(fake.clone(), items(100), &cfg)
        .await
        .unwrap();
    assert_eq!(batch.termination.reason, TerminationReason::FailFast);
    assert_eq!(batch.termination.item_id.as_deref(), Some("i5"));
    assert_eq!(
        batch.termination.category,
        Some(ErrorCategory::Authentication)
    );
    assert_eq!(batch.results.len(), 100, "none is lost");
    let cats: HashMap<ErrorCategory, u64> = batch
        .stats
        .failures
        .iter()
        .map(|(c, s)| (*c, s.count))
        .collect();
    assert_eq!(cats[&ErrorCategory::Authentication], 1);
    assert!(cats[&ErrorCategory::Aborted] >= 90, "{cats:?}");
    assert!(fake.calls() <= 8, "{}", fake.calls());
}
