//! The hosts: lifecycle, streaming, ordering, stops, the pool, dry run.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::unchecked_time_subtraction
)]

use std::sync::Arc;
use std::time::Duration;

use async_batch_llm::testing::{FakeStep, FakeStrategy};
use async_batch_llm::{
    BatchConfig, CallError, CallPool, ErrorCategory, Item, PoolError, PoolSettings, ScopeRegistry,
    TerminationReason, TokenUsage, call, process_prompts, process_stream,
};
use futures::StreamExt as _;

fn config(concurrency: usize) -> BatchConfig {
    BatchConfig {
        concurrency,
        scopes: ScopeRegistry::new(),
        ..BatchConfig::default()
    }
}

fn items(n: usize) -> Vec<Item> {
    (0..n)
        .map(|i| Item::new(format!("i{i}"), format!("i{i}")))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn prepare_and_cleanup_run_once_for_64_workers_and_10k_items() {
    let fake = FakeStrategy::echo()
        .with_prepare_latency(Duration::from_millis(50))
        .with_latency(Duration::from_millis(1));
    let batch = process_prompts(fake.clone(), items(10_000), &config(64))
        .await
        .unwrap();
    assert_eq!(batch.stats.succeeded, 10_000);
    assert_eq!((fake.prepares(), fake.cleanups()), (1, 1));
    assert_eq!(fake.peak_in_flight(), 64);
}

#[tokio::test(start_paused = true)]
async fn a_failed_prepare_is_shared_by_its_waiters_then_retried() {
    let fake = FakeStrategy::echo()
        .with_prepare_latency(Duration::from_millis(10))
        .with_prepare_error(CallError::permanent("no cache"));
    let batch = process_prompts(fake.clone(), items(40), &config(8))
        .await
        .unwrap();
    assert_eq!(batch.stats.failed, 40);
    assert_eq!(batch.stats.failures[&ErrorCategory::ClientError].count, 40);
    assert_eq!(fake.calls(), 0);
    // Each wave of eight workers shares one failed prepare; the next wave
    // tries again: 40 items / 8 workers = 5 runs of prepare.
    assert_eq!(fake.prepares(), 5);
    assert_eq!(fake.cleanups(), 1);
}

#[tokio::test]
async fn dropping_the_stream_halfway_stops_the_run_and_leaks_no_task() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let fake = FakeStrategy::echo().with_latency(Duration::from_millis(1));
    let mut stream = process_stream(
        fake.clone(),
        futures::stream::iter(items(10_000)),
        &config(64),
    )
    .unwrap();
    let mut got = 0;
    while got < 5_000 {
        stream.next().await.unwrap();
        got += 1;
    }
    drop(stream);
    for _ in 0..500 {
        if fake.cleanups() == 1 && metrics.num_alive_tasks() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(fake.cleanups(), 1);
    assert_eq!(metrics.num_alive_tasks(), 0);
    assert!(
        fake.calls() < 5_200,
        "the producer stopped: {} calls",
        fake.calls()
    );
}

#[tokio::test(start_paused = true)]
async fn stream_backpressure_bounds_calls_ahead_of_the_consumer() {
    let fake = FakeStrategy::echo();
    let cfg = BatchConfig {
        result_buffer: 8,
        ..config(4)
    };
    let mut stream =
        process_stream(fake.clone(), futures::stream::iter(items(1_000)), &cfg).unwrap();
    stream.next().await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // One consumed, eight buffered, four workers holding finished results.
    assert!(fake.calls() <= 1 + 8 + 4, "{}", fake.calls());
    let rest = stream.count().await;
    assert_eq!(rest, 999);
}

#[tokio::test(start_paused = true)]
async fn ordered_streaming_keeps_input_order_within_a_bounded_window() {
    // Latency falls with the index, so completion order is reversed in waves.
    let fake = FakeStrategy::echo();
    let lat = |i: usize| Duration::from_millis(100 - (i as u64 % 10) * 10);
    let slow: Arc<Vec<Duration>> = Arc::new((0..300).map(lat).collect());
    let strategy = SlowFake {
        inner: fake.clone(),
        latency: slow,
    };
    let cfg = BatchConfig {
        reorder_window: Some(16),
        ..config(8)
    };
    let stream = process_stream(strategy, futures::stream::iter(items(300)), &cfg).unwrap();
    let idx: Vec<u64> = stream.map(|r| r.index).collect().await;
    assert_eq!(idx, (0..300).collect::<Vec<u64>>());
}

/// A fake whose latency depends on the item number in its prompt.
struct SlowFake {
    inner: FakeStrategy,
    latency: Arc<Vec<Duration>>,
}

impl async_batch_llm::Strategy for SlowFake {
    type Output = String;
    async fn execute(
        &self,
        prompt: &async_batch_llm::Prompt,
        attempt: u32,
        timeout: Duration,
        state: &mut async_batch_llm::RetryState,
    ) -> Result<async_batch_llm::Completion<String>, CallError> {
        let n: usize = prompt.text()[1..].parse().unwrap_or(0);
        tokio::time::sleep(self.latency[n]).await;
        self.inner.execute(prompt, attempt, timeout, state).await
    }
}

#[tokio::test(start_paused = true)]
async fn collect_mode_can_return_input_order() {
    let strategy = SlowFake {
        inner: FakeStrategy::echo(),
        latency: Arc::new((0..50).map(|i| Duration::from_millis(50 - i)).collect()),
    };
    let cfg = BatchConfig {
        preserve_order: true,
        ..config(50)
    };
    let batch = process_prompts(strategy, items(50), &cfg).await.unwrap();
    let ids: Vec<&str> = batch.results.iter().map(|r| r.id.as_str()).collect();
    let want: Vec<String> = (0..50).map(|i| format!("i{i}")).collect();
    assert_eq!(ids, want);
}

#[tokio::test(start_paused = true)]
async fn a_batch_deadline_gives_every_item_one_result() {
    let fake = FakeStrategy::echo().with_latency(Duration::from_secs(1));
    let cfg = BatchConfig {
        batch_deadline: Some(Duration::from_millis(3_500)),
        ..config(10)
    };
    let batch = process_prompts(fake.clone(), items(100), &cfg)
        .await
        .unwrap();
    assert_eq!(batch.termination.reason, TerminationReason::BatchDeadline);
    assert_eq!(batch.results.len(), 100);
    let mut ids: Vec<&str> = batch.results.iter().map(|r| r.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 100);
    assert_eq!(batch.stats.succeeded, 30);
    assert_eq!(
        batch.stats.failures[&ErrorCategory::BatchDeadline].count,
        70
    );
    assert_eq!(fake.cleanups(), 1);
}

/// How many of `results` succeeded and how many were aborted; nothing else.
fn ok_and_aborted(results: &[async_batch_llm::ItemResult<String>]) -> (usize, usize) {
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let aborted = results
        .iter()
        .filter(|r| r.error().map(|e| e.category) == Some(ErrorCategory::Aborted))
        .count();
    assert_eq!(ok + aborted, results.len());
    (ok, aborted)
}

#[tokio::test(start_paused = true)]
async fn a_stop_handle_drains_or_cancels() {
    let fake = FakeStrategy::echo().with_latency(Duration::from_secs(1));
    let mut stream =
        process_stream(fake.clone(), futures::stream::iter(items(100)), &config(10)).unwrap();
    let first = stream.next().await.unwrap();
    assert!(first.is_ok());
    // Drain at t=1 s: the calls in flight (the 9 others of the first wave,
    // and those of the next that went at once) finish; the items still
    // waiting for their turn to send (spread over the round trip) are
    // recorded as aborted and never called.
    let calls_at_stop = fake.calls();
    stream.stop_handle().stop();
    let rest: Vec<_> = stream.by_ref().collect().await;
    assert_eq!(
        stream.termination().map(|t| t.reason),
        Some(TerminationReason::Aborted)
    );
    let (ok, _aborted) = ok_and_aborted(&rest);
    assert_eq!(
        1 + ok,
        usize::try_from(calls_at_stop).unwrap(),
        "drain lets every call in flight finish"
    );
    assert!(ok >= 9, "{ok}");
    assert_eq!(fake.calls(), calls_at_stop, "nothing new is called");

    let fake = FakeStrategy::echo().with_latency(Duration::from_secs(1));
    let mut stream =
        process_stream(fake.clone(), futures::stream::iter(items(100)), &config(10)).unwrap();
    stream.next().await.unwrap();
    let calls_at_cancel = fake.calls();
    stream.stop_handle().cancel();
    let rest: Vec<_> = stream.collect().await;
    // Results finished before the cancel are successes; every call in
    // flight at the cancel, and every item waiting for its turn to send, is
    // recorded as aborted; nothing new starts.
    let (ok, aborted) = ok_and_aborted(&rest);
    assert!(ok <= 9 && aborted >= 1, "ok {ok}, aborted {aborted}");
    let calls = usize::try_from(calls_at_cancel).unwrap();
    assert!(
        (1 + ok..=1 + ok + aborted).contains(&calls),
        "{calls} calls"
    );
    assert_eq!(fake.calls(), calls_at_cancel);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_strategy_is_a_logic_error_not_a_lost_item() {
    struct Panics;
    impl async_batch_llm::Strategy for Panics {
        type Output = String;
        async fn execute(
            &self,
            prompt: &async_batch_llm::Prompt,
            _: u32,
            _: Duration,
            _: &mut async_batch_llm::RetryState,
        ) -> Result<async_batch_llm::Completion<String>, CallError> {
            assert!(prompt.text() != "i3", "boom");
            Ok((prompt.text().into_owned(), None))
        }
    }
    let batch = process_prompts(Panics, items(5), &config(2)).await.unwrap();
    assert_eq!(batch.results.len(), 5);
    let bad = batch.failed().next().unwrap();
    assert_eq!(bad.id, "i3");
    assert_eq!(
        bad.error().map(|e| e.category),
        Some(ErrorCategory::LogicError)
    );
    assert!(bad.error().unwrap().message.contains("boom"));
}

#[tokio::test(start_paused = true)]
async fn pool_saturates_times_out_and_drains_on_close() {
    let fake = FakeStrategy::echo().with_latency(Duration::from_millis(500));
    let pool = Arc::new(
        CallPool::new(
            fake.clone(),
            &config(1),
            PoolSettings {
                max_pending: 0,
                submit_timeout: None,
            },
        )
        .unwrap(),
    );
    let first = tokio::spawn({
        let pool = Arc::clone(&pool);
        async move { pool.submit(Item::new("a", "a")).await }
    });
    tokio::task::yield_now().await;
    let t = tokio::time::Instant::now();
    assert_eq!(
        pool.submit(Item::new("b", "b")).await.err(),
        Some(PoolError::Saturated)
    );
    assert_eq!(t.elapsed(), Duration::ZERO, "refused at once");
    // Close waits for the call in flight, which completes.
    pool.close().await;
    assert_eq!(first.await.unwrap().unwrap().outcome.as_deref(), Ok("a"));
    assert_eq!(fake.cleanups(), 1);
    assert_eq!(
        pool.submit(Item::new("c", "c")).await.err(),
        Some(PoolError::Closed)
    );

    let timed = CallPool::new(
        FakeStrategy::echo().with_latency(Duration::from_millis(500)),
        &config(4),
        PoolSettings {
            max_pending: 8,
            submit_timeout: Some(Duration::from_millis(50)),
        },
    )
    .unwrap();
    let r = timed.submit(Item::new("slow", "slow")).await.unwrap();
    assert_eq!(
        r.error().map(|e| e.category),
        Some(ErrorCategory::ItemDeadline)
    );
    assert_eq!(r.timing.total, Duration::from_millis(50));
    timed.close().await;
}

#[tokio::test(start_paused = true)]
async fn pool_shares_one_prepare_across_concurrent_submits() {
    let fake = FakeStrategy::echo()
        .with_prepare_latency(Duration::from_millis(20))
        .with_latency(Duration::from_millis(5));
    let pool = Arc::new(CallPool::new(fake.clone(), &config(16), PoolSettings::default()).unwrap());
    let handles: Vec<_> = (0..200)
        .map(|i| {
            let pool = Arc::clone(&pool);
            tokio::spawn(
                async move { pool.submit(Item::new(format!("{i}"), format!("{i}"))).await },
            )
        })
        .collect();
    for h in handles {
        assert!(h.await.unwrap().unwrap().is_ok());
    }
    pool.close().await;
    assert_eq!((fake.prepares(), fake.cleanups()), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn dry_run_uses_the_placeholder_and_makes_no_call() {
    let fake = FakeStrategy::echo().with_schedule(vec![FakeStep::Permanent]);
    let cfg = BatchConfig {
        dry_run: true,
        ..config(4)
    };
    let batch = process_prompts(fake.clone(), items(10), &cfg)
        .await
        .unwrap();
    assert_eq!(fake.calls(), 0);
    assert_eq!(batch.stats.succeeded, 10);
    // The usage the estimator projects: "i0".."i9" are one token each
    // (characters / 4, rounded up), and 256 output tokens are expected.
    assert_eq!(batch.stats.usage, TokenUsage::new(10, 2_560));
    assert!(batch.results[0].output().unwrap().starts_with("[DRY-RUN]"));
    assert!(
        batch.summary().starts_with("DRY RUN"),
        "{}",
        batch.summary()
    );
}

#[tokio::test(start_paused = true)]
async fn context_is_carried_and_call_returns_the_output() {
    let item = Item::new("x", "hello").with_context(serde_json::json!({"row": 7}));
    let batch = process_prompts(FakeStrategy::echo(), [item], &config(1))
        .await
        .unwrap();
    assert_eq!(
        batch.results[0].context,
        Some(serde_json::json!({"row": 7}))
    );
    let out = call(FakeStrategy::echo(), "ping", &config(1)).await;
    assert_eq!(out.as_deref(), Ok("ping"));
    let bad = call(FakeStrategy::echo(), "ping", &config(0)).await;
    assert_eq!(
        bad.err().map(|e| e.category),
        Some(ErrorCategory::LogicError)
    );
}

#[tokio::test(start_paused = true)]
async fn a_startup_ramp_adds_workers_step_by_step() {
    let fake = FakeStrategy::echo()
        .with_latency(Duration::from_secs(10))
        .recording();
    let cfg = BatchConfig {
        startup_ramp: Some(async_batch_llm::StartupRamp {
            initial: 2,
            step: 3,
            interval: Duration::from_secs(1),
        }),
        ..config(10)
    };
    let t0 = tokio::time::Instant::now();
    let batch = process_prompts(fake.clone(), items(40), &cfg)
        .await
        .unwrap();
    assert_eq!(batch.stats.succeeded, 40);
    let starts: Vec<Duration> = fake.call_starts().iter().map(|s| s.1 - t0).collect();
    let at = |secs: u64| {
        starts
            .iter()
            .filter(|d| **d == Duration::from_secs(secs))
            .count()
    };
    // 2 at once, then 3 more each second until 10 are busy.
    assert_eq!((at(0), at(1), at(2), at(3)), (2, 3, 3, 2));
    assert_eq!(fake.peak_in_flight(), 10);
}

/// Two runs in one process with default configs use their own scope
/// settings: the second run, without limits, is not held to the first
/// run's one request a minute. A registry shared on purpose refuses a scope
/// asked for with other settings.
#[tokio::test(start_paused = true)]
async fn each_run_has_its_own_scopes_unless_it_shares_a_registry() {
    use async_batch_llm::RateLimits;
    let strategy = || FakeStrategy::echo().with_scope("one-key");
    let limited = BatchConfig {
        limits: RateLimits {
            rpm: Some(1.0),
            ..RateLimits::default()
        },
        ..BatchConfig::default()
    };
    let t = tokio::time::Instant::now();
    process_prompts(strategy(), items(2), &limited)
        .await
        .unwrap();
    assert!(t.elapsed() >= Duration::from_secs(60), "{:?}", t.elapsed());
    let t = tokio::time::Instant::now();
    let b = process_prompts(strategy(), items(2), &BatchConfig::default())
        .await
        .unwrap();
    assert_eq!(b.stats.succeeded, 2);
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());

    let shared = ScopeRegistry::new();
    let first = BatchConfig {
        scopes: shared.clone(),
        ..limited.clone()
    };
    process_prompts(strategy(), items(1), &first).await.unwrap();
    let other = BatchConfig {
        scopes: shared,
        ..BatchConfig::default()
    };
    let e = process_prompts(strategy(), items(1), &other)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("\"one-key\"") && e.contains("other settings"),
        "{e}"
    );
}
