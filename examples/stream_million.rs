//! Streams one million items through the engine (fake provider, zero
//! latency, concurrency 64) without holding them, and reports throughput and
//! peak resident memory (Linux).
//!
//! `cargo run --release -p async-batch-llm --example stream_million [ITEMS]`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use async_batch_llm::testing::FakeStrategy;
use async_batch_llm::{BatchConfig, BatchStats, Item, process_stream};
use futures::StreamExt as _;

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::main]
async fn main() -> Result<(), async_batch_llm::Error> {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let config = BatchConfig {
        concurrency: 64,
        ..BatchConfig::default()
    };
    let items =
        futures::stream::iter((0..n).map(|i| Item::new(i.to_string(), format!("prompt {i}"))));
    let start = std::time::Instant::now();
    let mut stream = process_stream(FakeStrategy::echo(), items, &config)?;
    let mut stats = BatchStats::default();
    while let Some(r) = stream.next().await {
        stats.add(&r);
        if stats.items == n / 10 {
            println!(
                "after {} items: peak RSS {} KiB",
                stats.items,
                peak_rss_kib().unwrap_or(0)
            );
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{} items ({} ok) in {secs:.2} s = {:.0} items/s; peak RSS {} KiB",
        stats.items,
        stats.succeeded,
        stats.items as f64 / secs,
        peak_rss_kib().unwrap_or(0)
    );
    Ok(())
}
