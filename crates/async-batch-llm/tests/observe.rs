//! Events, observers, metrics and middleware.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_batch_llm::testing::{FakeStep, FakeStrategy};
use async_batch_llm::{
    BatchConfig, ErrorCategory, Event, Item, ItemError, MetricsObserver, Middleware, Observer,
    ScopeRegistry, process_prompts, process_prompts_with,
};

#[derive(Default)]
struct Recorder(Mutex<Vec<Event>>);

impl Observer for Recorder {
    fn on_event(&self, e: &Event) {
        self.0.lock().unwrap().push(e.clone());
    }
}

impl Recorder {
    /// Waits (real time, bounded) for the observer thread to see the end.
    fn finished(&self) -> Vec<Event> {
        for _ in 0..500 {
            let events = self.0.lock().unwrap().clone();
            if events
                .iter()
                .any(|e| matches!(e, Event::BatchCompleted { .. } | Event::BatchAborted { .. }))
            {
                return events;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        panic!("the observer never saw the end of the batch");
    }
}

fn items(n: usize) -> Vec<Item> {
    (0..n)
        .map(|i| Item::new(format!("i{i}"), format!("i{i}")))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn every_item_has_a_well_formed_event_sequence() {
    let rec = Arc::new(Recorder::default());
    let fake = FakeStrategy::echo()
        .with_latency(Duration::from_millis(5))
        .with_item_schedule(
            "i3",
            vec![FakeStep::RateLimit(Some(Duration::from_secs(1)))],
        )
        .with_item_schedule("i7", vec![FakeStep::Permanent]);
    let cfg = BatchConfig {
        concurrency: 4,
        scopes: ScopeRegistry::new(),
        observers: vec![rec.clone()],
        ..BatchConfig::default()
    };
    process_prompts(fake, items(50), &cfg).await.unwrap();
    let events = rec.finished();
    assert_eq!(events.first(), Some(&Event::BatchStarted));
    assert!(matches!(events.last(), Some(Event::BatchCompleted { .. })));
    let mut per_item: HashMap<&str, Vec<&Event>> = HashMap::new();
    for e in &events {
        if let Some(id) = e.item_id() {
            per_item.entry(id).or_default().push(e);
        }
    }
    assert_eq!(per_item.len(), 50);
    for (id, seq) in &per_item {
        assert!(matches!(seq[0], Event::ItemStarted { .. }), "{id}: {seq:?}");
        assert_eq!(
            seq.iter().filter(|e| e.is_terminal()).count(),
            1,
            "{id}: {seq:?}"
        );
        assert!(
            seq.last().unwrap().is_terminal(),
            "{id}: terminal last: {seq:?}"
        );
    }
    assert!(matches!(
        per_item["i7"].last(),
        Some(Event::ItemFailed {
            category: ErrorCategory::ClientError,
            ..
        })
    ));
    assert_eq!(
        per_item["i3"]
            .iter()
            .filter(|e| matches!(e, Event::ItemAdmitted { .. }))
            .count(),
        2
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Event::CooldownStarted { .. }))
            .count(),
        1
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Event::CooldownEnded { .. }))
            .count(),
        1
    );
}

struct Slow;

impl Observer for Slow {
    fn on_event(&self, _: &Event) {
        std::thread::sleep(Duration::from_secs(5));
    }
}

#[tokio::test(start_paused = true)]
async fn a_five_second_observer_does_not_slow_the_run() {
    let fake = FakeStrategy::echo().with_latency(Duration::from_millis(10));
    let cfg = BatchConfig {
        concurrency: 50,
        scopes: ScopeRegistry::new(),
        observers: vec![Arc::new(Slow)],
        event_queue: 16,
        ..BatchConfig::default()
    };
    let unobserved = {
        let cfg = BatchConfig {
            scopes: ScopeRegistry::new(),
            observers: Vec::new(),
            ..cfg.clone()
        };
        let virt = tokio::time::Instant::now();
        process_prompts(fake.clone(), items(1_000), &cfg)
            .await
            .unwrap();
        virt.elapsed()
    };
    let wall = std::time::Instant::now();
    let virt = tokio::time::Instant::now();
    let batch = process_prompts(fake, items(1_000), &cfg).await.unwrap();
    assert_eq!(batch.stats.succeeded, 1_000);
    // 1,000 calls of 10 ms, 50 at a time, take as long on the run's clock as
    // without observers (20 waves, a few ms more with sends spread); a
    // blocking delivery would have cost 5 s of real time per event.
    assert!(unobserved >= Duration::from_millis(200), "{unobserved:?}");
    assert_eq!(virt.elapsed(), unobserved);
    assert!(
        wall.elapsed() < Duration::from_secs(5),
        "{:?}",
        wall.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn the_metrics_observer_exports_prometheus_text() {
    let metrics = Arc::new(MetricsObserver::new());
    let rec = Arc::new(Recorder::default());
    let fake = FakeStrategy::echo()
        .with_item_schedule(
            "i1",
            vec![FakeStep::RateLimit(Some(Duration::from_secs(1)))],
        )
        .with_item_schedule("i2", vec![FakeStep::Permanent]);
    let cfg = BatchConfig {
        scopes: ScopeRegistry::new(),
        observers: vec![metrics.clone(), rec.clone()],
        ..BatchConfig::default()
    };
    process_prompts(fake, items(10), &cfg).await.unwrap();
    rec.finished();
    // Same thread, in order: the metrics observer has seen everything too.
    assert_eq!(metrics.items("completed"), 9);
    assert_eq!(metrics.items("client_error"), 1);
    assert_eq!(metrics.rate_limits(), 1);
    let text = metrics.to_prometheus();
    assert!(
        text.contains("abl_items_total{outcome=\"completed\"} 9"),
        "{text}"
    );
    assert!(text.contains("abl_rate_limits_total 1"), "{text}");
    assert!(text.contains("abl_cooldowns_total 1"), "{text}");
    assert!(
        text.contains("abl_tokens_total{kind=\"input\"} 90"),
        "{text}"
    );
    assert!(
        text.contains("abl_admission_wait_seconds_count 11"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE abl_item_execution_seconds histogram"),
        "{text}"
    );
}

struct Shout {
    errors: Mutex<Vec<String>>,
}

impl Middleware<String> for Shout {
    fn before(&self, item: Item) -> Option<Item> {
        if item.id == "i4" {
            return None;
        }
        Some(Item {
            prompt: format!("{} [[seen]]", item.prompt.text()).into(),
            ..item
        })
    }
    fn after(&self, _: &str, output: String) -> String {
        output.to_uppercase()
    }
    fn on_error(&self, id: &str, e: &ItemError) {
        self.errors
            .lock()
            .unwrap()
            .push(format!("{id}: {}", e.category));
    }
}

#[tokio::test(start_paused = true)]
async fn middleware_rewrites_filters_and_sees_errors() {
    let mw = Arc::new(Shout {
        errors: Mutex::default(),
    });
    let fake = FakeStrategy::echo().with_item_schedule("i2 [[seen]]", vec![FakeStep::Permanent]);
    let cfg = BatchConfig {
        scopes: ScopeRegistry::new(),
        preserve_order: true,
        ..BatchConfig::default()
    };
    let extras = async_batch_llm::RunExtras {
        middleware: vec![mw.clone()],
        ..Default::default()
    };
    let batch = process_prompts_with(fake, items(6), &cfg, extras)
        .await
        .unwrap();
    let ids: Vec<&str> = batch.results.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["i0", "i1", "i2", "i3", "i5"], "i4 was filtered out");
    assert_eq!(
        batch.results[0].output().map(String::as_str),
        Some("I0 [[SEEN]]")
    );
    assert_eq!(
        *mw.errors.lock().unwrap(),
        vec!["i2: client_error".to_owned()]
    );
}
