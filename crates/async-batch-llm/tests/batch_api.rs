//! [`BatchHost`] over loopback HTTP against the mock's batch APIs of
//! OpenAI, Anthropic and Gemini: every item one result (recorded in the
//! checkpoint before the sink sees it), a rerun on the same checkpoint
//! replays everything and submits nothing, a host dropped after
//! submitting is reattached by the next one without a second job, and
//! what a job could not run is resubmitted once, then fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use abl_mock::{MockConfig, MockServer};
use async_batch_llm::batch_api::{
    BatchClient, BatchEvent, BatchHost, BatchRunConfig, Ending, Fallback, Parse, jobs_dir,
};
use async_batch_llm::providers::{ApiKey, ModelOptions};
use async_batch_llm::store::{
    Checkpoint, CheckpointOptions, CheckpointStore, Durability, Identity, ResumePolicy, SqliteStore,
};
use async_batch_llm::{ErrorCategory, Item, ItemResult, RequestDefaults};

/// `(provider:model, base-URL path after the mock's address)`.
const PROVIDERS: [(&str, &str); 3] = [
    ("openai:gpt-4o-mini", "/v1"),
    ("anthropic:claude-3-5-haiku-latest", ""),
    ("gemini:gemini-2.5-flash", ""),
];

fn client(mock: &MockServer, spec: &str, path: &str) -> BatchClient {
    BatchClient::new(
        spec,
        ModelOptions {
            api_key: Some(ApiKey::new("test-key-0123456789")),
            base_url: Some(format!("{}{path}", mock.base_url())),
            ..ModelOptions::default()
        },
    )
    .unwrap()
}

fn checkpoint(dir: &std::path::Path) -> Arc<Checkpoint<String>> {
    let id = Identity {
        provider: "batch".into(),
        model: "m".into(),
        ..Identity::default()
    };
    let store: Arc<dyn CheckpointStore> =
        Arc::new(SqliteStore::open(dir.join("run.sqlite"), &id, Durability::Normal).unwrap());
    Arc::new(
        Checkpoint::new(
            store,
            &id,
            CheckpointOptions {
                resume: ResumePolicy::All,
                ..CheckpointOptions::default()
            },
        )
        .unwrap(),
    )
}

/// What a host handed to its sink and told its events.
#[derive(Default)]
struct Seen {
    results: Vec<ItemResult<String>>,
    submitted: usize,
}

async fn host(
    client: BatchClient,
    dir: &std::path::Path,
    job_items: usize,
    seen: &Arc<Mutex<Seen>>,
) -> BatchHost<String> {
    let parse: Parse<String> = Arc::new(|r| Ok(r.text.clone()));
    let to = Arc::clone(seen);
    let events = Arc::clone(seen);
    let (_tx, detach) = tokio::sync::watch::channel(false);
    BatchHost::open(
        client,
        checkpoint(dir),
        BatchRunConfig {
            poll: Duration::from_millis(20),
            job_items,
            fallback: Fallback::Resubmit,
            jobs_dir: jobs_dir(&dir.join("run.sqlite")),
            defaults: RequestDefaults::default(),
        },
        parse,
        Box::new(move |r| {
            to.lock().unwrap().results.push(r.clone());
            true
        }),
        Box::new(move |e| {
            if matches!(e, BatchEvent::Submitted { .. }) {
                events.lock().unwrap().submitted += 1;
            }
        }),
        detach,
    )
    .await
    .unwrap()
}

fn items(n: usize, marked: &[(usize, &str)]) -> Vec<Item> {
    (0..n)
        .map(|i| {
            let mark = marked.iter().find(|(k, _)| *k == i).map_or("", |(_, m)| *m);
            Item::new(format!("it-{i:03}"), format!("question {i}{mark}"))
        })
        .collect()
}

async fn feed(host: &mut BatchHost<String>, items: Vec<Item>) {
    for (i, item) in items.into_iter().enumerate() {
        assert!(host.add(item, i as u64).await.unwrap());
    }
    host.end_input().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_item_one_result_and_a_rerun_replays_without_submitting() {
    for (spec, path) in PROVIDERS {
        let mock = MockServer::start(MockConfig::default()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let mut h = host(client(&mock, spec, path), dir.path(), 25, &seen).await;
        feed(
            &mut h,
            items(60, &[(3, " [[mock:500]]"), (4, " [[mock:400]]")]),
        )
        .await;
        assert_eq!(h.wait().await.unwrap(), Ending::Finished, "{spec}");
        assert_eq!(h.finish().await.unwrap(), 60);
        drop(h);
        let got = std::mem::take(&mut *seen.lock().unwrap());
        assert_eq!(got.results.len(), 60, "{spec}");
        assert_eq!(got.submitted, 4, "{spec}: 3 jobs of ≤ 25, one resubmission");
        let by = |id: &str| got.results.iter().find(|r| r.id == id).unwrap();
        assert_eq!(
            by("it-007").output().map(String::as_str),
            Some("question 7")
        );
        let server = by("it-003").outcome.as_ref().unwrap_err();
        assert_eq!(server.category, ErrorCategory::ServerError, "{spec}");
        assert_eq!(by("it-003").attempts, 2, "{spec}: resubmitted once");
        let client_err = by("it-004").outcome.as_ref().unwrap_err();
        assert_eq!(client_err.category, ErrorCategory::ClientError, "{spec}");
        assert_eq!(by("it-004").attempts, 1, "{spec}: not resubmitted");
        let stats = mock.stats();
        assert_eq!(stats.batch_items_executed, 61, "{spec}: the 500 ran twice");
        assert_eq!(stats.batches_created, 4, "{spec}");
        // The same items on the same checkpoint: all replayed, none sent.
        let mut again = host(client(&mock, spec, path), dir.path(), 25, &seen).await;
        feed(
            &mut again,
            items(60, &[(3, " [[mock:500]]"), (4, " [[mock:400]]")]),
        )
        .await;
        assert_eq!(again.wait().await.unwrap(), Ending::Finished);
        assert_eq!(again.finish().await.unwrap(), 60);
        let replayed = seen.lock().unwrap().results.iter().all(|r| r.replayed);
        assert!(replayed, "{spec}");
        assert_eq!(mock.stats().batches_created, 4, "{spec}: nothing submitted");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_dropped_after_submitting_is_reattached_without_a_second_job() {
    for (spec, path) in PROVIDERS {
        let mock = MockServer::start(MockConfig {
            batch_processing_ms: 300,
            ..MockConfig::default()
        })
        .await
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let mut first = host(client(&mock, spec, path), dir.path(), 10, &seen).await;
        feed(&mut first, items(30, &[])).await;
        // Stopped before any result: three jobs at the provider.
        drop(first);
        assert_eq!(mock.stats().batches_created, 3, "{spec}");
        let mut second = host(client(&mock, spec, path), dir.path(), 10, &seen).await;
        feed(&mut second, items(30, &[])).await;
        assert_eq!(second.wait().await.unwrap(), Ending::Finished, "{spec}");
        assert_eq!(second.finish().await.unwrap(), 30);
        let results = &seen.lock().unwrap().results;
        assert_eq!(results.len(), 30, "{spec}");
        assert!(results.iter().all(ItemResult::is_ok), "{spec}");
        let stats = mock.stats();
        assert_eq!(stats.batches_created, 3, "{spec}: reattached, none again");
        assert_eq!(stats.batch_items_executed, 30, "{spec}");
        assert_eq!(stats.batch_items_repeated, 0, "{spec}");
    }
}
