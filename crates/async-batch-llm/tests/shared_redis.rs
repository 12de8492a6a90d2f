//! Shared limits against a real `redis-server` (started here on a free
//! port, persistence off): the window, settlement, cooldowns, a store that
//! restarts empty, and a run of the engine through it.
//!
//! Without `redis-server` installed the tests say so and pass, unless
//! `ABL_TEST_REQUIRE_REDIS` is set (`.ci/run` sets it and installs Redis).

#![cfg(feature = "redis")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_batch_llm::{
    BatchConfig, Grant, Item, RateLimits, RedisLimits, SharedLimits, SharedQuota, SharedScope,
    testing::{FakeStrategy, RedisServer as Redis},
};

fn quota(rpm: f64, tpm: u64) -> SharedQuota {
    SharedQuota {
        rpm: Some(rpm),
        tpm: Some(tpm),
        span: Some(Duration::from_secs(60)),
        margin: Duration::ZERO,
    }
}

#[tokio::test]
async fn the_window_admits_to_the_limit_then_says_how_long_to_wait() {
    let Some(redis) = Redis::start() else { return };
    let store = RedisLimits::connect(&redis.url()).await.unwrap();
    let q = quota(3.0, 1000);
    let mut ids = Vec::new();
    for _ in 0..3 {
        match store.reserve("s", q, 10).await.unwrap().grant {
            Grant::Admitted(id) => ids.push(id),
            other => panic!("{other:?}"),
        }
    }
    // The fourth request of the minute waits about a minute.
    match store.reserve("s", q, 10).await.unwrap().grant {
        Grant::Wait(d) => assert!(
            d > Duration::from_secs(55) && d <= Duration::from_secs(61),
            "{d:?}"
        ),
        other => panic!("{other:?}"),
    }
    // A reservation given back (no call made) frees its place.
    let epoch = store.reserve("s", q, 10).await.unwrap().epoch;
    store.cancel("s", (epoch, ids[0])).await.unwrap();
    assert!(matches!(
        store.reserve("s", q, 10).await.unwrap().grant,
        Grant::Admitted(_)
    ));
    // Another scope is another window.
    assert!(matches!(
        store.reserve("other", q, 10).await.unwrap().grant,
        Grant::Admitted(_)
    ));
}

#[tokio::test]
async fn tokens_are_settled_to_what_was_used_and_a_stale_epoch_changes_nothing() {
    let Some(redis) = Redis::start() else { return };
    let store = RedisLimits::connect(&redis.url()).await.unwrap();
    let q = quota(100.0, 100);
    let r = store.reserve("t", q, 90).await.unwrap();
    let Grant::Admitted(id) = r.grant else {
        panic!("{r:?}")
    };
    // 90 of 100 reserved: 20 more do not fit.
    assert!(matches!(
        store.reserve("t", q, 20).await.unwrap().grant,
        Grant::Wait(_)
    ));
    // A settle naming another epoch is ignored...
    store
        .settle("t", (r.epoch + 1, id), Some(10))
        .await
        .unwrap();
    assert!(matches!(
        store.reserve("t", q, 20).await.unwrap().grant,
        Grant::Wait(_)
    ));
    // ...the right one refunds: the call used 10.
    store.settle("t", (r.epoch, id), Some(10)).await.unwrap();
    assert!(matches!(
        store.reserve("t", q, 20).await.unwrap().grant,
        Grant::Admitted(_)
    ));
}

#[tokio::test]
async fn a_cooldown_is_only_ever_extended_and_every_reservation_sees_it() {
    let Some(redis) = Redis::start() else { return };
    let store = RedisLimits::connect(&redis.url()).await.unwrap();
    let q = quota(1000.0, 1_000_000);
    store
        .extend_cooldown("c", Duration::from_secs(5))
        .await
        .unwrap();
    store
        .extend_cooldown("c", Duration::from_secs(1))
        .await
        .unwrap();
    match store.reserve("c", q, 1).await.unwrap().grant {
        Grant::Cooldown(d) => assert!(d > Duration::from_secs(4), "{d:?}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        store.reserve("c2", q, 1).await.unwrap().grant,
        Grant::Admitted(_)
    ));
}

#[tokio::test]
async fn a_store_that_restarts_empty_gets_the_recent_admissions_back() {
    let Some(redis) = Redis::start() else { return };
    let port = redis.port();
    let store: Arc<dyn SharedLimits> = Arc::new(RedisLimits::connect(&redis.url()).await.unwrap());
    let scope = Arc::new(SharedScope::new(Arc::clone(&store), "r"));
    let q = quota(5.0, 1_000_000);
    for _ in 0..5 {
        let Grant::Admitted(id) = scope.reserve(q, 1).await.unwrap() else {
            panic!()
        };
        scope.ticket(id).settle(Some(1));
    }
    assert!(matches!(scope.reserve(q, 1).await.unwrap(), Grant::Wait(_)));
    // Redis restarts with nothing.
    drop(redis);
    let started = Instant::now();
    let mut failed = 0;
    let _redis = loop {
        if let Some(r) = Redis::start_on(port) {
            break r;
        }
        failed += 1;
        assert!(started.elapsed() < Duration::from_secs(10) && failed < 100);
    };
    // The first answer after it may admit one more (the store did not know
    // better yet), and then the five put back fill the window again.
    let mut admitted = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match scope.reserve(q, 1).await {
            Ok(Grant::Admitted(_)) => admitted += 1,
            Ok(Grant::Wait(_)) => break,
            Ok(other) => panic!("{other:?}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
        assert!(Instant::now() < deadline, "redis never answered");
    }
    assert!(admitted <= 1, "{admitted} admitted past a full window");
    assert!(!scope.is_reachable() || scope.outages() <= 1);
}

#[tokio::test]
async fn runs_in_two_configs_share_one_window_through_redis() {
    let Some(redis) = Redis::start() else { return };
    let store: Arc<dyn SharedLimits> = Arc::new(RedisLimits::connect(&redis.url()).await.unwrap());
    // Two "processes" (two configs with their own scope registries) on one
    // quota of 20 requests a minute: together they get 20 calls at once,
    // then wait.
    let run = |store: Arc<dyn SharedLimits>| async move {
        let config = BatchConfig {
            concurrency: 8,
            limits: RateLimits {
                rpm: Some(20.0),
                ..RateLimits::default()
            },
            shared_limits: Some(store),
            batch_deadline: Some(Duration::from_secs(3)),
            ..BatchConfig::default()
        };
        let items: Vec<Item> = (0..15).map(|i| Item::new(format!("i{i}"), "hi")).collect();
        let b = async_batch_llm::process_prompts(FakeStrategy::echo(), items, &config)
            .await
            .unwrap();
        b.stats.succeeded
    };
    let (a, b) = tokio::join!(run(Arc::clone(&store)), run(store));
    assert_eq!(a + b, 20, "{a} + {b} calls in the first minute");
}

#[tokio::test]
async fn an_adaptive_decrease_one_process_makes_the_others_follow() {
    let Some(redis) = Redis::start() else { return };
    let store: Arc<dyn SharedLimits> = Arc::new(RedisLimits::connect(&redis.url()).await.unwrap());
    let a = Arc::new(SharedScope::new(Arc::clone(&store), "aimd"));
    let b = Arc::new(SharedScope::new(store, "aimd"));
    let q = SharedQuota::default();
    for s in [&a, &b] {
        assert!(matches!(s.reserve(q, 1).await.unwrap(), Grant::Admitted(_)));
    }
    a.note_decrease();
    // The note is sent in the background.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut followed = 0;
    while followed == 0 {
        assert!(Instant::now() < deadline, "b never heard of a's decrease");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(matches!(b.reserve(q, 1).await.unwrap(), Grant::Admitted(_)));
        followed = b.take_decreases_to_follow();
    }
    assert_eq!(followed, 1);
    assert!(matches!(a.reserve(q, 1).await.unwrap(), Grant::Admitted(_)));
    assert_eq!(
        a.take_decreases_to_follow(),
        0,
        "a follows its own decrease"
    );
}
