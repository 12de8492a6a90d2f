//! Strict provider quota: `abl-mock` enforces RPM 600 and TPM 60,000 over a
//! rolling minute; the engine runs with the same limits for 3 minutes.
//! Reports the share of calls answered 429 and the share of the binding
//! limit used. `cargo bench -p async-batch-llm --bench quota`
//! (`ABL_QUOTA_SECS` shortens the run).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use abl_mock::{MockConfig, MockServer};
use async_batch_llm::providers::{ApiKey, HttpOptions, ModelOptions, llm_with};
use async_batch_llm::{
    BatchConfig, CharEstimator, Item, ModelStrategy, RateLimits, ScopeRegistry, process_stream,
};
use futures::StreamExt as _;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let secs: u64 = std::env::var("ABL_QUOTA_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(180);
    let (rpm, tpm) = (600.0, 60_000u64);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mock = MockServer::start_dedicated(
            MockConfig { latency_ms: 50, rpm: Some(rpm), tpm: Some(tpm), ..MockConfig::default() },
            2,
        )
        .unwrap();
        let model = llm_with(
            "openai:gpt-4o-mini",
            ModelOptions {
                api_key: Some(ApiKey::new("k")),
                base_url: Some(format!("{}/v1", mock.base_url())),
                http: HttpOptions { max_connections: 64, ..HttpOptions::default() },
                ..ModelOptions::default()
            },
        )
        .unwrap();
        // 400-character prompts echoed back: 100 + 100 tokens a call, so
        // TPM binds at 300 calls a minute (RPM would allow 600).
        let prompt = |i: u64| format!("{i:08} {}", "x".repeat(391));
        let config = BatchConfig {
            concurrency: 64,
            scopes: ScopeRegistry::new(),
            limits: RateLimits { rpm: Some(rpm), tpm: Some(tpm), margin: Duration::from_millis(500) },
            estimator: Some(Arc::new(CharEstimator { expected_output: 100 })),
            batch_deadline: Some(Duration::from_secs(secs)),
            ..BatchConfig::default()
        };
        let items = futures::stream::iter((0..100_000u64).map(move |i| Item::new(i.to_string(), prompt(i))));
        let t = Instant::now();
        let stream = process_stream(ModelStrategy::text(model), items, &config).unwrap();
        let ok = stream.filter(|r| std::future::ready(r.is_ok())).count().await as u64;
        let elapsed = t.elapsed().as_secs_f64();
        let s = mock.stats();
        let sent = s.requests;
        let refused = s.rate_limited;
        let limit_tokens = tpm as f64 * elapsed / 60.0;
        println!(
            "strict quota RPM {rpm} / TPM {tpm}, {elapsed:.0} s: {ok} calls succeeded, {sent} sent, {refused} answered 429 ({:.2} %); tokens {} = {:.1} % of the binding TPM limit",
            100.0 * refused as f64 / sent.max(1) as f64,
            s.tokens,
            100.0 * s.tokens as f64 / limit_tokens
        );
    });
}
