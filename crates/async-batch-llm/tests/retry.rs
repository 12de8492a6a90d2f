//! Retry budgets, backoff and deadlines, on tokio's paused clock.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::unchecked_time_subtraction
)]

use std::time::Duration;

use async_batch_llm::testing::{FakeStep, FakeStrategy};
use async_batch_llm::{
    BatchConfig, ErrorCategory, Item, RetryPolicy, ScopeRegistry, TerminationReason, TokenUsage,
    call_result, process_prompts,
};
use tokio::time::Instant;

fn config() -> BatchConfig {
    BatchConfig {
        scopes: ScopeRegistry::new(),
        ..BatchConfig::default()
    }
}

fn rl(hint: Option<u64>) -> FakeStep {
    FakeStep::RateLimit(hint.map(Duration::from_secs))
}

#[tokio::test(start_paused = true)]
async fn five_rate_limits_then_success_keep_attempt_one() {
    let fake = FakeStrategy::echo()
        .with_schedule(vec![
            rl(Some(1)),
            rl(Some(1)),
            rl(None),
            rl(Some(2)),
            rl(Some(1)),
        ])
        .recording();
    let r = call_result(fake.clone(), Item::new("a", "a"), &config())
        .await
        .unwrap();
    assert_eq!(r.outcome.as_deref(), Ok("a"));
    assert_eq!(fake.item_log("a").execute_attempts, vec![1; 6]);
    assert_eq!(fake.item_log("a").on_error_attempts, vec![1; 5]);
    assert_eq!((r.attempts, r.tries), (1, 6));
}

#[tokio::test(start_paused = true)]
async fn rate_limits_and_validation_use_separate_budgets() {
    let fake = FakeStrategy::echo()
        .with_schedule(vec![rl(Some(1)), FakeStep::Validation, rl(Some(1))])
        .recording();
    let r = call_result(fake.clone(), Item::new("a", "a"), &config())
        .await
        .unwrap();
    assert!(r.is_ok());
    let log = fake.item_log("a");
    assert_eq!(log.execute_attempts, vec![1, 1, 2, 2]);
    assert_eq!(log.on_error_attempts, vec![1, 1, 2]);
    assert_eq!((r.attempts, r.tries), (2, 4));
}

#[tokio::test(start_paused = true)]
async fn endless_429_exhausts_the_rate_limit_budget_and_sums_usage() {
    let billed = TokenUsage::new(7, 0);
    let fake = FakeStrategy::echo().with_schedule(vec![
        FakeStep::BilledError(
            ErrorCategory::RateLimit,
            billed
        );
        100
    ]);
    let cfg = BatchConfig {
        retry: RetryPolicy {
            max_rate_limit_retries: 2,
            ..RetryPolicy::default()
        },
        ..config()
    };
    let r = call_result(fake.clone(), Item::new("a", "a"), &cfg)
        .await
        .unwrap();
    assert_eq!(fake.calls(), 3);
    let err = r.error().unwrap();
    assert_eq!(err.category, ErrorCategory::RateLimitRetriesExceeded);
    assert_eq!(
        err.last_error.as_ref().map(|e| e.category),
        Some(ErrorCategory::RateLimit)
    );
    assert_eq!(r.usage, TokenUsage::new(21, 0));
    assert_eq!(r.tries, 3);
}

#[tokio::test(start_paused = true)]
async fn backoff_without_jitter_is_exact() {
    let fake = FakeStrategy::echo()
        .with_schedule(vec![FakeStep::Transient, FakeStep::Transient])
        .recording();
    let cfg = BatchConfig {
        retry: RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            backoff_multiplier: 2.0,
            jitter: false,
            ..RetryPolicy::default()
        },
        ..config()
    };
    let r = call_result(fake.clone(), Item::new("a", "a"), &cfg)
        .await
        .unwrap();
    assert!(r.is_ok());
    let starts: Vec<Instant> = fake.call_starts().into_iter().map(|s| s.1).collect();
    assert_eq!(starts[1] - starts[0], Duration::from_millis(100));
    assert_eq!(starts[2] - starts[1], Duration::from_millis(200));
    assert_eq!(r.timing.backoff, Duration::from_millis(300));
    assert_eq!(fake.item_log("a").execute_attempts, vec![1, 2, 3]);
}

#[tokio::test(start_paused = true)]
async fn backoff_with_jitter_lies_in_half_to_full() {
    let ids: Vec<String> = (0..200).map(|i| format!("i{i}")).collect();
    let fake = FakeStrategy::echo()
        .with_schedule(vec![FakeStep::Transient])
        .recording();
    let cfg = BatchConfig {
        concurrency: 200,
        retry: RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            ..RetryPolicy::default()
        },
        ..config()
    };
    let items = ids.iter().map(|i| Item::new(i.clone(), i.clone()));
    let batch = process_prompts(fake.clone(), items, &cfg).await.unwrap();
    assert_eq!(batch.stats.succeeded, 200);
    let starts = fake.call_starts();
    let mut gaps = Vec::new();
    for id in &ids {
        let t: Vec<Instant> = starts.iter().filter(|s| &s.0 == id).map(|s| s.1).collect();
        let gap = t[1] - t[0];
        assert!(
            gap >= Duration::from_millis(50) && gap <= Duration::from_millis(100),
            "{gap:?}"
        );
        gaps.push(gap);
    }
    // Jitter really varies.
    gaps.sort();
    assert!(gaps[190].saturating_sub(gaps[10]) > Duration::from_millis(30));
}

#[tokio::test(start_paused = true)]
async fn item_deadline_shorter_than_backoff_fails_at_once_with_last_error() {
    let fake = FakeStrategy::echo().with_schedule(vec![FakeStep::Transient]);
    let cfg = BatchConfig {
        item_deadline: Some(Duration::from_millis(500)),
        ..config()
    };
    let t0 = Instant::now();
    let r = call_result(fake.clone(), Item::new("a", "a"), &cfg)
        .await
        .unwrap();
    assert_eq!(Instant::now(), t0, "failed without sleeping");
    let err = r.error().unwrap();
    assert_eq!(err.category, ErrorCategory::ItemDeadline);
    assert_eq!(
        err.last_error.as_ref().map(|e| e.category),
        Some(ErrorCategory::ServerError)
    );
    assert_eq!(fake.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn attempt_timeout_is_retryable_and_item_deadline_cuts_a_hanging_call() {
    let fake = FakeStrategy::echo().with_schedule(vec![FakeStep::Hang]);
    let cfg = BatchConfig {
        attempt_timeout: Duration::from_secs(2),
        retry: RetryPolicy {
            jitter: false,
            ..RetryPolicy::default()
        },
        ..config()
    };
    let t0 = Instant::now();
    let r = call_result(fake.clone(), Item::new("a", "a"), &cfg)
        .await
        .unwrap();
    assert!(r.is_ok());
    assert_eq!(
        r.timing.tries[0].error,
        Some(ErrorCategory::FrameworkTimeout)
    );
    assert_eq!(
        Instant::now() - t0,
        Duration::from_secs(3),
        "2 s timeout + 1 s backoff"
    );

    let hang = FakeStrategy::echo().with_schedule(vec![FakeStep::Hang]);
    let cfg = BatchConfig {
        item_deadline: Some(Duration::from_millis(700)),
        ..cfg
    };
    let r = call_result(hang, Item::new("b", "b"), &cfg).await.unwrap();
    assert_eq!(
        r.error().map(|e| e.category),
        Some(ErrorCategory::ItemDeadline)
    );
}

#[tokio::test(start_paused = true)]
async fn permanent_errors_do_not_retry_and_other_budget_is_three() {
    let fake = FakeStrategy::echo()
        .with_item_schedule("p", vec![FakeStep::Permanent])
        .with_item_schedule("t", vec![FakeStep::Transient; 5]);
    let batch = process_prompts(
        fake.clone(),
        [Item::new("p", "p"), Item::new("t", "t")],
        &config(),
    )
    .await
    .unwrap()
    .in_input_order();
    let p = &batch.results[0];
    assert_eq!(
        (p.error().map(|e| e.category), p.tries),
        (Some(ErrorCategory::ClientError), 1)
    );
    let t = &batch.results[1];
    assert_eq!(
        (t.error().map(|e| e.category), t.tries, t.attempts),
        (Some(ErrorCategory::ServerError), 3, 3)
    );
    assert_eq!(batch.termination.reason, TerminationReason::Completed);
}
