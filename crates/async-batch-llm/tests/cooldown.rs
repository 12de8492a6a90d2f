//! Coordinated cooldown per quota scope, on tokio's paused clock.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::unchecked_time_subtraction
)]

use std::time::Duration;

use async_batch_llm::testing::{FakeStep, FakeStrategy};
use async_batch_llm::{BatchConfig, Item, ScopeRegistry, process_prompts};
use tokio::time::Instant;

fn config(scopes: &ScopeRegistry, concurrency: usize) -> BatchConfig {
    BatchConfig {
        concurrency,
        scopes: scopes.clone(),
        ..BatchConfig::default()
    }
}

fn items(prefix: &str, n: usize) -> Vec<Item> {
    (0..n)
        .map(|i| Item::new(format!("{prefix}{i}"), format!("{prefix}{i}")))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_hinted_429_pauses_the_scope_and_in_flight_calls_finish() {
    let t0 = Instant::now();
    let fake = FakeStrategy::echo()
        .with_latency(Duration::from_secs(1))
        .with_item_schedule(
            "i0",
            vec![FakeStep::RateLimit(Some(Duration::from_secs(7)))],
        )
        .recording();
    let batch = process_prompts(
        fake.clone(),
        items("i", 12),
        &config(&ScopeRegistry::new(), 3),
    )
    .await
    .unwrap();
    assert_eq!(batch.stats.succeeded, 12);
    assert_eq!(batch.stats.cooldowns, 1);
    let starts = fake.call_starts();
    // i0, i1, i2 start at t=0; i0's 429 arrives at t=1 and starts a 7 s cooldown.
    let first: Vec<&str> = starts[..3].iter().map(|s| s.0.as_str()).collect();
    assert_eq!(first, ["i0", "i1", "i2"]);
    assert!(starts[..3].iter().all(|s| s.1 == t0));
    let later: Vec<Duration> = starts[3..].iter().map(|s| s.1 - t0).collect();
    assert!(
        later.iter().all(|d| *d >= Duration::from_secs(8)),
        "{later:?}"
    );
    // The calls in flight at t=1 (i1, i2) finished with one try each.
    for id in ["i1", "i2"] {
        let r = batch.results.iter().find(|r| r.id == id).unwrap();
        assert_eq!((r.tries, r.is_ok()), (1, true));
        assert!(r.timing.cooldown_wait.is_zero());
    }
    let i0 = batch.results.iter().find(|r| r.id == "i0").unwrap();
    assert_eq!(i0.tries, 2);
    assert_eq!(i0.timing.cooldown_wait, Duration::from_secs(7));
}

#[tokio::test(start_paused = true)]
async fn without_a_hint_10_s_then_15_s_for_a_consecutive_cooldown() {
    let t0 = Instant::now();
    let fake = FakeStrategy::echo()
        .with_schedule(vec![FakeStep::RateLimit(None), FakeStep::RateLimit(None)])
        .recording();
    let batch = process_prompts(
        fake.clone(),
        items("a", 1),
        &config(&ScopeRegistry::new(), 1),
    )
    .await
    .unwrap();
    assert_eq!(batch.stats.succeeded, 1);
    let at: Vec<Duration> = fake.call_starts().iter().map(|s| s.1 - t0).collect();
    assert_eq!(
        at,
        [
            Duration::ZERO,
            Duration::from_secs(10),
            Duration::from_secs(25)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn strategies_on_one_scope_share_the_cooldown_and_others_do_not() {
    let scopes = ScopeRegistry::new();
    let t0 = Instant::now();
    let lat = Duration::from_millis(500);
    let a = FakeStrategy::echo()
        .with_latency(lat)
        .with_scope("openai|https://api|key:ab12|gpt-4o-mini")
        .with_item_schedule(
            "a0",
            vec![FakeStep::RateLimit(Some(Duration::from_secs(5)))],
        )
        .recording();
    let b = FakeStrategy::echo()
        .with_latency(lat)
        .with_scope("openai|https://api|key:ab12|gpt-4o-mini")
        .recording();
    let c = FakeStrategy::echo()
        .with_latency(lat)
        .with_scope("gemini|other")
        .recording();
    let (one, two) = (config(&scopes, 1), config(&scopes, 2));
    let (ra, rb, rc) = tokio::join!(
        process_prompts(a.clone(), items("a", 4), &one),
        process_prompts(b.clone(), items("b", 20), &two),
        process_prompts(c.clone(), items("c", 20), &two),
    );
    for r in [ra.unwrap(), rb.unwrap(), rc.unwrap()] {
        assert_eq!(r.stats.failed, 0);
    }
    // a0's 429 arrives at t=0.5 s: the shared scope pauses until t=5.5 s.
    let (from, to) = (t0 + lat, t0 + lat + Duration::from_secs(5));
    let paused = |s: &FakeStrategy| {
        s.call_starts()
            .iter()
            .filter(|x| x.1 > from && x.1 < to)
            .count()
    };
    assert_eq!(paused(&a), 0);
    assert_eq!(paused(&b), 0);
    // The other scope keeps going: two calls per 0.5 s round trip, 16 in
    // those 5 s when they go in pairs, a few more at its edges once its
    // sends are spread over the round trip (0.5, 0.625, 1.0, 1.125, … s).
    let c_paused = paused(&c);
    assert!((16..=19).contains(&c_paused), "{c_paused}");
}

#[tokio::test(start_paused = true)]
async fn late_429s_extend_the_cooldown_to_their_hints() {
    // Three calls in flight all get 429 at t=1, hints 4 s, 9 s and 9 s: one
    // cooldown, which ends at t=10 so that no item retries before its hint.
    let t0 = Instant::now();
    let fake = FakeStrategy::echo()
        .with_latency(Duration::from_secs(1))
        .with_item_schedule(
            "x0",
            vec![FakeStep::RateLimit(Some(Duration::from_secs(4)))],
        )
        .with_item_schedule(
            "x1",
            vec![FakeStep::RateLimit(Some(Duration::from_secs(9)))],
        )
        .with_item_schedule(
            "x2",
            vec![FakeStep::RateLimit(Some(Duration::from_secs(9)))],
        )
        .recording();
    let batch = process_prompts(
        fake.clone(),
        items("x", 3),
        &config(&ScopeRegistry::new(), 3),
    )
    .await
    .unwrap();
    assert_eq!(batch.stats.succeeded, 3);
    assert_eq!(batch.stats.cooldowns, 1);
    let retries: Vec<Duration> = fake.call_starts()[3..].iter().map(|s| s.1 - t0).collect();
    // All three were refused, a wall: the scope comes back by slow start,
    // one call at t=10, then the two others when it has succeeded, spread
    // over the 1 s round trip (a window of two: 0.25 s apart).
    assert_eq!(
        retries,
        [10_000, 11_000, 11_250].map(Duration::from_millis),
        "no retry before t=10"
    );
}

#[tokio::test(start_paused = true)]
async fn a_slot_taken_during_a_new_cooldown_is_given_back_without_spending_budget() {
    // One scope slot. "w" waits for the slot held by "h"; while it waits, h's
    // 429 starts a cooldown. w must give the slot back and wait it out.
    let t0 = Instant::now();
    let fake = FakeStrategy::echo()
        .with_latency(Duration::from_secs(1))
        .with_item_schedule("h", vec![FakeStep::RateLimit(Some(Duration::from_secs(3)))])
        .recording();
    let cfg = BatchConfig {
        scope_max_concurrency: Some(1),
        ..config(&ScopeRegistry::new(), 2)
    };
    let batch = process_prompts(
        fake.clone(),
        [Item::new("h", "h"), Item::new("w", "w")],
        &cfg,
    )
    .await
    .unwrap();
    assert_eq!(batch.stats.succeeded, 2);
    let w = batch.results.iter().find(|r| r.id == "w").unwrap();
    assert_eq!((w.tries, w.attempts), (1, 1), "no budget spent");
    let w_start = fake
        .call_starts()
        .iter()
        .find(|s| s.0 == "w")
        .map(|s| s.1 - t0);
    assert!(w_start >= Some(Duration::from_secs(4)), "{w_start:?}");
}

/// Calls started in each second after `from`, for `secs` seconds.
fn per_second(fake: &FakeStrategy, from: Instant, secs: u64) -> Vec<usize> {
    let starts = fake.call_starts();
    (0..secs)
        .map(|s| {
            let lo = from + Duration::from_secs(s);
            let hi = lo + Duration::from_secs(1);
            starts.iter().filter(|x| x.1 >= lo && x.1 < hi).count()
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn after_a_quota_wall_the_scope_comes_back_one_call_then_doubling() {
    // All 16 calls in flight are refused at t=1 (hint 2 s): nothing
    // succeeded during the cooldown, so at t=3 one call goes, then two, four…
    let t0 = Instant::now();
    let mut fake = FakeStrategy::echo().with_latency(Duration::from_secs(1));
    for i in 0..16 {
        fake = fake.with_item_schedule(
            format!("w{i}"),
            vec![FakeStep::RateLimit(Some(Duration::from_secs(2)))],
        );
    }
    let fake = fake.recording();
    // Without adaptive concurrency, slow start grows back to the cap.
    let fixed = BatchConfig {
        adaptive: false,
        ..config(&ScopeRegistry::new(), 16)
    };
    let batch = process_prompts(fake.clone(), items("w", 100), &fixed)
        .await
        .unwrap();
    assert_eq!(batch.stats.succeeded, 100);
    assert_eq!(batch.stats.cooldowns, 1);
    assert_eq!(
        per_second(&fake, t0 + Duration::from_secs(3), 5),
        [1, 2, 4, 8, 16]
    );
    // With it (the default), the wall also cut the target to 70 % of the
    // 16 calls in flight: slow start stops at 11, then grows by one per
    // window of successes.
    let fake = fake.recording();
    let t1 = Instant::now();
    let batch = process_prompts(
        fake.clone(),
        items("w", 100),
        &config(&ScopeRegistry::new(), 16),
    )
    .await
    .unwrap();
    assert_eq!(batch.stats.succeeded, 100);
    let after: Vec<usize> = per_second(&fake, t1 + Duration::from_secs(3), 6);
    assert_eq!(after[..5], [1, 2, 4, 8, 11]);
    assert_eq!(after[5], 12);
}

#[tokio::test(start_paused = true)]
async fn after_a_random_429_the_scope_reopens_at_the_calls_that_succeeded() {
    // One of 16 calls in flight gets a 429 (hint 2 s); the 15 others
    // succeed while the cooldown runs, so at t=3 fifteen calls go at once
    // (and the window is whole again one round trip later).
    let t0 = Instant::now();
    let fake = FakeStrategy::echo()
        .with_latency(Duration::from_secs(1))
        .with_item_schedule(
            "n0",
            vec![FakeStep::RateLimit(Some(Duration::from_secs(2)))],
        )
        .recording();
    let batch = process_prompts(
        fake.clone(),
        items("n", 100),
        &config(&ScopeRegistry::new(), 16),
    )
    .await
    .unwrap();
    assert_eq!(batch.stats.succeeded, 100);
    assert_eq!(per_second(&fake, t0 + Duration::from_secs(3), 2), [15, 16]);
    // Nothing started during the signalled cooldown.
    assert_eq!(per_second(&fake, t0 + Duration::from_secs(1), 2), [0, 0]);
}

#[tokio::test(start_paused = true)]
async fn a_hintless_429_among_successes_costs_one_round_trip_not_10_s() {
    let t0 = Instant::now();
    // h0's 429 comes back fast (at 0.1 s), with the 15 others in flight.
    let fake = FakeStrategy::echo()
        .with_latency(Duration::from_secs(1))
        .with_item_schedule("h0", vec![FakeStep::RateLimit(None)])
        .with_item_latency("h0", Duration::from_millis(100))
        .recording();
    let batch = process_prompts(
        fake.clone(),
        items("h", 64),
        &config(&ScopeRegistry::new(), 16),
    )
    .await
    .unwrap();
    assert_eq!(batch.stats.succeeded, 64);
    // The 15 calls in flight with h0's 429 succeeded: noise, the default
    // 10 s cooldown ended at once. 64 items of 1 s at 16 wide: 4 s plus
    // h0's retry.
    let wall = fake.call_starts().iter().map(|s| s.1).max().unwrap() - t0;
    assert!(wall <= Duration::from_secs(5), "{wall:?}");
}

#[tokio::test(start_paused = true)]
async fn cancelling_the_caller_that_hit_the_429_does_not_end_the_cooldown() {
    let scopes = ScopeRegistry::new();
    let cfg = config(&scopes, 1);
    let hit =
        FakeStrategy::echo().with_schedule(vec![FakeStep::RateLimit(Some(Duration::from_secs(6)))]);
    let t0 = Instant::now();
    // The caller gets its 429 at once, then is cancelled while cooling down.
    let cancelled = tokio::time::timeout(
        Duration::from_secs(1),
        async_batch_llm::call_result(hit, Item::new("h", "h"), &cfg),
    )
    .await;
    assert!(cancelled.is_err());
    let other = FakeStrategy::echo().recording();
    let r = async_batch_llm::call_result(other.clone(), Item::new("o", "o"), &cfg)
        .await
        .unwrap();
    assert!(r.is_ok());
    assert_eq!(other.call_starts()[0].1 - t0, Duration::from_secs(6));
}
