//! Checkpoint figures with FakeStrategy (zero latency) streaming 1M items:
//! append throughput to SQLite through the engine, peak RSS of that run,
//! reopen time of the 1M-record store, and the rate at which a resume skips
//! finished items. `cargo bench -p async-batch-llm --bench checkpoint`
//! (`ABL_CP_ITEMS`, `ABL_CP_CONCURRENCY` scale it; `ABL_CP_APPEND_ONLY` stops
//! after the append pass, `ABL_CP_PROFILE` adds per-row costs, `ABL_CP_STORE`
//! keeps the store so a second run only resumes).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Instant;

use async_batch_llm::store::{
    Checkpoint, CheckpointOptions, CheckpointStore, Durability, Identity, SqliteStore,
};
use async_batch_llm::testing::FakeStrategy;
use async_batch_llm::{BatchConfig, Item, RunExtras, ScopeRegistry, process_stream_with};
use futures::StreamExt as _;

/// CPU seconds this process has used (user + system).
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime is the
    // 12th, stime the 13th, in clock ticks of 1/100 s.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    (f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0)) / 100.0
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<f64>().ok())
        .map_or(0.0, |k| k / 1024.0)
}

/// The identity the benchmark's records are written under.
fn identity() -> Identity {
    Identity {
        provider: "fake".into(),
        model: "echo".into(),
        ..Identity::default()
    }
}

async fn pass(path: &std::path::Path, n: u64, concurrency: usize) -> (f64, u64) {
    let id = identity();
    let store: Arc<dyn CheckpointStore> =
        Arc::new(SqliteStore::open(path, &id, Durability::Normal).unwrap());
    let cp = Checkpoint::new(store, &id, CheckpointOptions::default()).unwrap();
    let config = BatchConfig {
        concurrency,
        scopes: ScopeRegistry::new(),
        ..BatchConfig::default()
    };
    let items =
        futures::stream::iter((0..n).map(|i| Item::new(i.to_string(), format!("ticket {i}"))));
    let (t, cpu) = (Instant::now(), cpu_secs());
    let extras = RunExtras {
        checkpoint: Some(Arc::new(cp)),
        ..RunExtras::default()
    };
    let stream = process_stream_with(FakeStrategy::echo(), items, &config, extras).unwrap();
    let replayed = stream
        .fold(0u64, |n, r| std::future::ready(n + u64::from(r.replayed)))
        .await;
    let rate = n as f64 / t.elapsed().as_secs_f64();
    if replayed > 0 {
        println!(
            "  {:.2} us of CPU per item over {} cores",
            (cpu_secs() - cpu) * 1e6 / n as f64,
            std::thread::available_parallelism().map_or(1, usize::from)
        );
    }
    (rate, replayed)
}

/// Per-row costs of the store alone (`ABL_CP_PROFILE`).
fn profile(path: &std::path::Path, dir: &std::path::Path, n: u64) {
    let fp = identity().fingerprint();
    let store = SqliteStore::open(path, &identity(), Durability::Normal).unwrap();
    let t = Instant::now();
    for i in 0..100_000u64 {
        store.lookup(&fp, &i.to_string()).unwrap();
    }
    println!(
        "  lookup + parse: {:.2} us each",
        t.elapsed().as_secs_f64() * 1e6 / 1e5
    );
    drop(store);
    let store = SqliteStore::open(path, &identity(), Durability::Normal).unwrap();
    let ids: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    let t = Instant::now();
    for chunk in ids.chunks(1024) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        store.lookup_raw(&fp, &refs).unwrap();
    }
    println!(
        "  lookup_raw in input order, chunks of 1024: {:.2} us each",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    let body = serde_json::to_string(&store.lookup(&fp, "7").unwrap().unwrap()).unwrap();
    let t = Instant::now();
    for _ in 0..100_000 {
        let _ = async_batch_llm::store::Record::from_json(&body).unwrap();
    }
    println!(
        "  parse alone: {:.2} us each ({} bytes)",
        t.elapsed().as_secs_f64() * 1e6 / 1e5,
        body.len()
    );
    let rec = store.lookup(&fp, "7").unwrap().unwrap();
    let fresh = SqliteStore::open(
        dir.join("raw.sqlite"),
        &Identity::default(),
        Durability::Normal,
    )
    .unwrap();
    let batch: Vec<_> = (0..1000)
        .map(|i| {
            let mut r = rec.clone();
            r.id = format!("raw{i}");
            async_batch_llm::store::EncodedRecord::new(&r).unwrap()
        })
        .collect();
    let t = Instant::now();
    for k in 0..100 {
        let b: Vec<_> = batch
            .iter()
            .map(|r| async_batch_llm::store::EncodedRecord {
                id: format!("{k}-{}", r.id),
                ..r.clone()
            })
            .collect();
        fresh.write_batch(&b).unwrap();
    }
    println!(
        "  raw SQLite insert (1000-row commits): {:.2} us per row",
        t.elapsed().as_secs_f64() * 1e6 / 1e5
    );
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let n: u64 = std::env::var("ABL_CP_ITEMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let concurrency: usize = std::env::var("ABL_CP_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let dir = tempfile::tempdir().unwrap();
    // `ABL_CP_STORE=path` keeps the store: a second run with the same path
    // skips the append pass and only resumes (for profiling the resume).
    let kept = std::env::var_os("ABL_CP_STORE").map(std::path::PathBuf::from);
    let path = kept
        .clone()
        .unwrap_or_else(|| dir.path().join("bench.sqlite"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if kept.is_some() && path.exists() {
        let (rate, replayed) = rt.block_on(pass(&path, n, concurrency));
        println!(
            "resume skipping finished items: {rate:.0} items/s ({replayed} replayed); peak RSS {:.1} MiB",
            peak_rss_mib()
        );
        return;
    }
    let (rate, _) = rt.block_on(pass(&path, n, concurrency));
    println!(
        "append through the engine to SQLite: {rate:.0} items/s ({n} items, concurrency {concurrency}); peak RSS {:.1} MiB",
        peak_rss_mib()
    );
    let t = Instant::now();
    let store = SqliteStore::open(&path, &identity(), Durability::Normal).unwrap();
    let reopen = t.elapsed();
    let records = store.len().unwrap();
    drop(store);
    println!(
        "reopen a {records}-record store: {:.4} s",
        reopen.as_secs_f64()
    );
    if std::env::var("ABL_CP_PROFILE").is_ok() {
        profile(&path, dir.path(), n);
    }
    if std::env::var("ABL_CP_APPEND_ONLY").is_ok() {
        return;
    }
    let (rate, replayed) = rt.block_on(pass(&path, n, concurrency));
    println!("resume skipping finished items: {rate:.0} items/s ({replayed} replayed)");
}
