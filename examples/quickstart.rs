//! A first batch: 10,000 items through the full pipeline with a fake
//! provider that rate-limits and fails now and then, then the summary.
//!
//! `cargo run --release -p async-batch-llm --example quickstart`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use async_batch_llm::testing::{FakeStep, FakeStrategy};
use async_batch_llm::{BatchConfig, Item, Prices, RetryPolicy, process_prompts};

#[tokio::main]
async fn main() -> Result<(), async_batch_llm::Error> {
    // 2 % transient failures (seeded), one item rate-limited with a 1 s hint,
    // one that fails for good; 20 ms per call.
    let provider = FakeStrategy::new(|p| p.text().to_uppercase())
        .with_latency(Duration::from_millis(20))
        .with_failure_rate(0.02, 42)
        .with_item_schedule(
            "ticket 17",
            vec![FakeStep::RateLimit(Some(Duration::from_secs(1)))],
        )
        .with_item_schedule("ticket 4242", vec![FakeStep::Permanent]);
    let items = (0..10_000).map(|i| Item::new(format!("t{i}"), format!("ticket {i}")));
    let config = BatchConfig {
        concurrency: 256,
        retry: RetryPolicy {
            initial_backoff: Duration::from_millis(200),
            ..RetryPolicy::default()
        },
        preserve_order: true,
        ..BatchConfig::default()
    };
    let batch = process_prompts(provider, items, &config).await?;
    println!("first result: {:?}", batch.results[0].output());
    print!(
        "{}",
        batch.summary_with_prices(Some(&Prices::new(0.15, 0.60)))
    );
    Ok(())
}
