//! HTTP throughput scenarios against `abl-mock` over loopback.
//!
//! `cargo bench -p async-batch-llm --bench http` prints:
//! - the mock's own capacity: raw requests/s at zero latency from 256
//!   concurrent clients (it must never be a benchmark's bottleneck);
//! - the engine through the OpenAI Responses provider at 50 ms latency and
//!   concurrency 64, 256 and 1024, against the limit concurrency / latency.
//!
//! `ABL_BENCH_SECS` scales the runs (default 10 s of work per scenario);
//! `ABL_BENCH_CONCURRENCY=16,256` picks the concurrency levels and
//! `ABL_BENCH_LATENCY_MS` the mock's latency (50).

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
    let mock = MockServer::start_dedicated(MockConfig::default(), 2).unwrap();
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
    let mock = MockServer::start_dedicated(
        MockConfig {
            latency_ms,
            ..MockConfig::default()
        },
        2,
    )
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
    let limit = concurrency as f64 / (latency_ms.max(1) as f64 / 1000.0);
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
    let mut execution = Vec::with_capacity(n as usize);
    let mut total = Vec::with_capacity(n as usize);
    let ok = stream
        .fold(0u64, |ok, r| {
            execution.push(r.timing.execution);
            total.push(r.timing.total);
            std::future::ready(ok + u64::from(r.is_ok()))
        })
        .await;
    let rate = n as f64 / t.elapsed().as_secs_f64();
    let e = async_batch_llm::Percentiles::of(&mut execution);
    let tt = async_batch_llm::Percentiles::of(&mut total);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "  concurrency {concurrency}: execution p50/p99 {:.1}/{:.1} ms, item total p50/p99 {:.1}/{:.1} ms",
        ms(e.p50),
        ms(e.p99),
        ms(tt.p50),
        ms(tt.p99)
    );
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
        let levels: Vec<usize> = std::env::var("ABL_BENCH_CONCURRENCY").ok().map_or_else(
            || vec![64, 256, 1024],
            |v| v.split(',').filter_map(|c| c.trim().parse().ok()).collect(),
        );
        let latency_ms: u64 = std::env::var("ABL_BENCH_LATENCY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(50);
        for c in levels {
            let (ok, rate, peak) = engine_throughput(c, latency_ms).await;
            let limit = c as f64 / (latency_ms.max(1) as f64 / 1000.0);
            println!(
                "engine via OpenAI Responses, latency {latency_ms} ms, concurrency {c}: {rate:.0} items/s = {:.1} % of {limit:.0} ({ok} ok, mock peak in flight {peak})",
                100.0 * rate / limit
            );
        }
    });
}
