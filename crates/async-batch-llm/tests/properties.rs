//! Property: whatever the failure schedule and concurrency, every item has
//! exactly one result, its attempt and try counts follow the schedule, and
//! the token totals equal the sum of billed usage.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::unchecked_time_subtraction
)]

use std::time::Duration;

use async_batch_llm::testing::{FakeStep, FakeStrategy};
use async_batch_llm::{
    BatchConfig, CooldownPolicy, ErrorCategory, Item, RetryPolicy, ScopeRegistry, TokenUsage,
    process_prompts,
};
use proptest::prelude::*;

const MAX_ATTEMPTS: u32 = 3;
const MAX_RL: u32 = 4;

fn step() -> impl Strategy<Value = FakeStep> {
    prop_oneof![
        4 => Just(FakeStep::Ok),
        2 => prop::option::of(0u64..3).prop_map(|h| FakeStep::RateLimit(h.map(Duration::from_secs))),
        2 => Just(FakeStep::Transient),
        1 => Just(FakeStep::Timeout),
        1 => Just(FakeStep::Permanent),
        1 => Just(FakeStep::Validation),
        1 => (1u64..50, 0u64..20).prop_map(|(i, o)| FakeStep::BilledFailure(TokenUsage::new(i, o))),
        1 => Just(FakeStep::Hang),
    ]
}

/// What the engine must do with one item's schedule: an independent model of
/// SPEC.md §4's two budgets. Returns (ok or final category, attempts, tries, usage).
fn expected(
    schedule: &[FakeStep],
    ok_usage: TokenUsage,
) -> (Result<(), ErrorCategory>, u32, u32, TokenUsage) {
    let (mut attempt, mut rate_limited, mut tries) = (1u32, 0u32, 0u32);
    let mut usage = TokenUsage::default();
    let mut steps = schedule
        .iter()
        .cloned()
        .chain(std::iter::repeat(FakeStep::Ok));
    loop {
        let s = steps.next().unwrap_or(FakeStep::Ok);
        tries += 1;
        usage += s.billed(ok_usage);
        let other = |category| {
            if attempt >= MAX_ATTEMPTS {
                Some(Err(category))
            } else {
                None
            }
        };
        let end = match s {
            FakeStep::Ok => Some(Ok(())),
            FakeStep::RateLimit(_) => {
                rate_limited += 1;
                (rate_limited > MAX_RL).then_some(Err(ErrorCategory::RateLimitRetriesExceeded))
            }
            FakeStep::Permanent => Some(Err(ErrorCategory::ClientError)),
            FakeStep::Transient => other(ErrorCategory::ServerError),
            FakeStep::Timeout => other(ErrorCategory::ApiTimeout),
            FakeStep::Hang => other(ErrorCategory::FrameworkTimeout),
            FakeStep::Validation | FakeStep::BilledFailure(_) => {
                other(ErrorCategory::ValidationError)
            }
            FakeStep::Error(c) | FakeStep::BilledError(c, _) => Some(Err(c)),
        };
        if let Some(end) = end {
            return (end, attempt, tries, usage);
        }
        if !matches!(s, FakeStep::RateLimit(_)) {
            attempt += 1;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn every_item_has_one_result_matching_its_schedule(
        schedules in prop::collection::vec(prop::collection::vec(step(), 0..6), 1000),
        concurrency in 1usize..96,
    ) {
        let ok_usage = TokenUsage::new(11, 3).with_cached_input(2);
        let mut fake = FakeStrategy::echo().with_usage(ok_usage).with_latency(Duration::from_millis(10));
        for (i, s) in schedules.iter().enumerate() {
            fake = fake.with_item_schedule(format!("p{i}"), s.clone());
        }
        let config = BatchConfig {
            concurrency,
            scopes: ScopeRegistry::new(),
            attempt_timeout: Duration::from_secs(5),
            retry: RetryPolicy { max_attempts: MAX_ATTEMPTS, max_rate_limit_retries: MAX_RL, ..RetryPolicy::default() },
            cooldown: CooldownPolicy { default: Duration::from_secs(1), ..CooldownPolicy::default() },
            ..BatchConfig::default()
        };
        let items: Vec<Item> = (0..schedules.len()).map(|i| Item::new(format!("p{i}"), format!("p{i}"))).collect();
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        let batch = rt.block_on(process_prompts(fake.clone(), items, &config)).unwrap().in_input_order();

        prop_assert_eq!(batch.results.len(), schedules.len());
        let mut total = TokenUsage::default();
        for (i, (r, s)) in batch.results.iter().zip(&schedules).enumerate() {
            prop_assert_eq!(r.index, i as u64);
            let (outcome, attempts, tries, usage) = expected(s, ok_usage);
            prop_assert_eq!(r.outcome.as_ref().map(|_| ()).map_err(|e| e.category), outcome, "item {} schedule {:?}", i, s);
            prop_assert_eq!((r.attempts, r.tries), (attempts, tries), "item {} schedule {:?}", i, s);
            prop_assert_eq!(r.usage, usage);
            total += usage;
        }
        prop_assert_eq!(batch.stats.usage, total);
        prop_assert_eq!(batch.stats.tries, fake.calls());
        prop_assert_eq!(fake.cleanups(), 1);
    }
}
