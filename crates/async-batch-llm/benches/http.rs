//! HTTP throughput scenarios against `abl-mock` over loopback.
//!
//! `cargo bench -p async-batch-llm --bench http` prints:
//! - the mock's own capacity: raw requests/s at zero latency from 256
//!   concurrent clients (it must never be a benchmark's bottleneck);
//! - the engine through the OpenAI Responses provider at 50 ms latency and
//!   concurrency 64, 256 and 1024, against the limit concurrency / latency.
//!
//! `ABL_BENCH_SECS` scales the runs (default 10 s of work per scenario).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use abl_mock::{MockConfig, MockServer};
use async_batch_llm::providers::{ApiKey, HttpOptions, ModelOptions, llm_with};
use async_batch_llm::{BatchConfig, Item, ModelStrategy, ScopeRegistry, process_stream};
use futures::StreamExt as _;

fn secs() -> f64 {
    std::env::var("ABL_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10.0)
}

async fn mock_capacity(clients: usize) -> f64 {
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let url = format!("{}/v1/responses", mock.base_url());
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()
        .unwrap();
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(secs());
    let body = serde_json::json!({"model": "m", "input": "capacity probe"});
    let t = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (client, url, body, done) =
                (client.clone(), url.clone(), body.clone(), Arc::clone(&done));
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let r = client
                        .post(&url)
                        .bearer_auth("k")
                        .json(&body)
                        .send()
                        .await
                        .unwrap();
                    assert!(r.status().is_success());
                    r.bytes().await.unwrap();
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64()
}

async fn engine_throughput(concurrency: usize, latency_ms: u64) -> (u64, f64, u64) {
    let mock = MockServer::start(MockConfig {
        latency_ms,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let model = llm_with(
        "openai:gpt-4o-mini",
        ModelOptions {
            api_key: Some(ApiKey::new("k")),
            base_url: Some(format!("{}/v1", mock.base_url())),
            http: HttpOptions {
                max_connections: concurrency,
                ..HttpOptions::default()
            },
            ..ModelOptions::default()
        },
    )
    .unwrap();
    let limit = concurrency as f64 / (latency_ms as f64 / 1000.0);
    let n = (limit * secs()) as u64;
    let config = BatchConfig {
        concurrency,
        scopes: ScopeRegistry::new(),
        ..BatchConfig::default()
    };
    let items =
        futures::stream::iter((0..n).map(|i| Item::new(i.to_string(), format!("item {i}"))));
    let t = Instant::now();
    let stream = process_stream(ModelStrategy::text(model), items, &config).unwrap();
    let ok = stream
        .filter(|r| std::future::ready(r.is_ok()))
        .count()
        .await as u64;
    let rate = n as f64 / t.elapsed().as_secs_f64();
    (ok, rate, mock.stats().peak_in_flight)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing
    // and must not spend minutes here.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cap = mock_capacity(256).await;
        println!("mock capacity: {cap:.0} requests/s (zero latency, 256 concurrent clients, Responses route)");
        for c in [64usize, 256, 1024] {
            let (ok, rate, peak) = engine_throughput(c, 50).await;
            let limit = c as f64 / 0.05;
            println!(
                "engine via OpenAI Responses, latency 50 ms, concurrency {c}: {rate:.0} items/s = {:.1} % of {limit:.0} ({ok} ok, mock peak in flight {peak})",
                100.0 * rate / limit
            );
        }
    });
}
