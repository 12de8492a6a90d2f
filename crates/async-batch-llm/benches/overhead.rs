//! Framework overhead: FakeStrategy at zero latency, concurrency 64, items
//! streamed through `process_stream` and counted. Run with
//! `cargo bench -p async-batch-llm --bench overhead`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use async_batch_llm::testing::FakeStrategy;
use async_batch_llm::{BatchConfig, Item, ScopeRegistry, process_stream};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures::StreamExt as _;

const ITEMS: u64 = 1_000_000;

async fn run(n: u64, concurrency: usize) -> u64 {
    let config = BatchConfig {
        concurrency,
        scopes: ScopeRegistry::new(),
        ..BatchConfig::default()
    };
    let items =
        futures::stream::iter((0..n).map(|i| Item::new(i.to_string(), "classify this ticket")));
    let stream = process_stream(FakeStrategy::echo(), items, &config).expect("valid config");
    stream
        .fold(0u64, |n, r| async move { n + u64::from(r.is_ok()) })
        .await
}

fn overhead(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut g = c.benchmark_group("framework_overhead");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Elements(ITEMS));
    g.bench_function("stream_1m_items_concurrency_64", |b| {
        b.iter(|| {
            let ok = rt.block_on(run(ITEMS, 64));
            assert_eq!(ok, ITEMS);
        });
    });
    g.finish();
}

criterion_group!(benches, overhead);
criterion_main!(benches);
