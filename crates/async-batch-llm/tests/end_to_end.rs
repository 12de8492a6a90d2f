//! End to end over loopback HTTP: the engine, the OpenAI Responses provider
//! and `abl-mock` with faults. `ABL_E2E_ITEMS` sets the item count (CI runs
//! the default; the acceptance figure in docs/benchmarks.md uses 10,000).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use abl_mock::{Hint, MockConfig, MockServer};
use async_batch_llm::providers::{ApiKey, HttpOptions, ModelOptions, llm_with};
use async_batch_llm::{BatchConfig, Item, ModelStrategy, ScopeRegistry, process_prompts};

fn items_from_env(default: usize) -> usize {
    std::env::var("ABL_E2E_ITEMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_server_errors_at_concurrency_64() {
    let n = items_from_env(300);
    let mock = MockServer::start(MockConfig {
        fault_429: 0.05,
        hint_429: Hint::RetryAfter(Duration::from_secs(1)),
        fault_500: 0.02,
        seed: 7,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let model = llm_with(
        "openai:gpt-4o-mini",
        ModelOptions {
            api_key: Some(ApiKey::new("test")),
            base_url: Some(format!("{}/v1", mock.base_url())),
            http: HttpOptions {
                max_connections: 64,
                ..HttpOptions::default()
            },
            ..ModelOptions::default()
        },
    )
    .unwrap();
    let config = BatchConfig {
        concurrency: 64,
        scopes: ScopeRegistry::new(),
        ..BatchConfig::default()
    };
    let items = (0..n).map(|i| Item::new(format!("{i}"), format!("prompt number {i}")));
    let t = std::time::Instant::now();
    let batch = process_prompts(ModelStrategy::text(model), items, &config)
        .await
        .unwrap();
    let secs = t.elapsed().as_secs_f64();
    let stats = mock.stats();
    eprintln!(
        "{n} items in {secs:.1} s; calls {}, 429s {}, cooldowns {}, peak in flight {}, arrivals during cooldown {}",
        batch.stats.tries,
        stats.rate_limited,
        batch.stats.cooldowns,
        stats.peak_in_flight,
        stats.during_cooldown
    );
    assert_eq!(batch.stats.succeeded, n as u64, "{}", batch.summary());
    for r in &batch.results {
        assert_eq!(
            r.output().map(String::as_str),
            Some(format!("prompt number {}", r.id).as_str())
        );
    }
    assert!(stats.peak_in_flight <= 64);
    assert!(stats.rate_limited > 0 && batch.stats.cooldowns > 0);
    assert_eq!(stats.during_cooldown, 0);
    assert_eq!(stats.requests, batch.stats.tries);
}
