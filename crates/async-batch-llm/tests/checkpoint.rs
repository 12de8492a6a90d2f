//! Checkpoints: records before publication, resume policies, identity and
//! fingerprints, torn-line repair, both stores.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::sync::Arc;

use async_batch_llm::store::{
    CheckpointOptions, CheckpointStore, Durability, Identity, JsonlStore, Record, ResumePolicy,
    SqliteStore,
};
use async_batch_llm::testing::{FakeStep, FakeStrategy};
use async_batch_llm::{
    BatchConfig, Error, Item, RunExtras, ScopeRegistry, TerminationReason, process_prompts_with,
    store::Checkpoint,
};

fn identity(model: &str, prompt_version: &str) -> Identity {
    Identity {
        provider: "fake".into(),
        model: model.into(),
        prompt_version: prompt_version.into(),
        ..Identity::default()
    }
}

fn items(n: usize) -> Vec<Item> {
    (0..n)
        .map(|i| Item::new(format!("i{i}"), format!("i{i}")))
        .collect()
}

fn config() -> BatchConfig {
    BatchConfig {
        concurrency: 8,
        scopes: ScopeRegistry::new(),
        ..BatchConfig::default()
    }
}

/// Run extras with a checkpoint on `store`.
fn with_checkpoint(
    store: Arc<dyn CheckpointStore>,
    id: &Identity,
    resume: ResumePolicy,
) -> RunExtras<String> {
    let cp = Checkpoint::new(
        store,
        id,
        CheckpointOptions {
            resume,
            ..CheckpointOptions::default()
        },
    )
    .unwrap();
    RunExtras {
        checkpoint: Some(Arc::new(cp)),
        ..RunExtras::default()
    }
}

async fn run(
    store: Arc<dyn CheckpointStore>,
    id: &Identity,
    resume: ResumePolicy,
    fake: &FakeStrategy,
    items: Vec<Item>,
) -> async_batch_llm::BatchResult<String> {
    let extras = with_checkpoint(store, id, resume);
    process_prompts_with(fake.clone(), items, &config(), extras)
        .await
        .unwrap()
}

#[derive(Clone, Copy)]
enum Kind {
    Jsonl,
    Sqlite,
}

fn open(kind: Kind, dir: &std::path::Path, id: &Identity) -> Arc<dyn CheckpointStore> {
    match kind {
        Kind::Jsonl => Arc::new(JsonlStore::open(dir.join("run.jsonl"), id, false).unwrap()),
        Kind::Sqlite => {
            Arc::new(SqliteStore::open(dir.join("run.sqlite"), id, Durability::Normal).unwrap())
        }
    }
}

/// A new directory whose SQLite checkpoint holds `n` echoed items.
async fn sqlite_holding(n: usize) -> (tempfile::TempDir, Identity) {
    let dir = tempfile::tempdir().unwrap();
    let id = identity("m", "v1");
    run(
        open(Kind::Sqlite, dir.path(), &id),
        &id,
        ResumePolicy::Successes,
        &FakeStrategy::echo(),
        items(n),
    )
    .await;
    (dir, id)
}

/// `input`, and a count of the items read from it so far.
fn counted(
    input: impl futures::Stream<Item = Item> + Send + 'static,
) -> (
    impl futures::Stream<Item = Item> + Send + 'static,
    Arc<std::sync::atomic::AtomicU64>,
) {
    use futures::StreamExt as _;
    let read = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = Arc::clone(&read);
    let input = input.inspect(move |_| {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    });
    (input, read)
}

#[tokio::test]
async fn resume_reuses_successes_and_reruns_failures_in_both_stores() {
    for kind in [Kind::Jsonl, Kind::Sqlite] {
        let dir = tempfile::tempdir().unwrap();
        let id = identity("m", "v1");
        let first = FakeStrategy::echo().with_item_schedule("i3", vec![FakeStep::Permanent]);
        let b1 = run(
            open(kind, dir.path(), &id),
            &id,
            ResumePolicy::Successes,
            &first,
            items(20),
        )
        .await;
        assert_eq!((b1.stats.succeeded, b1.stats.failed), (19, 1));
        assert_eq!(first.calls(), 20);

        // Reopen: successes replay without a call; the failure runs again.
        let second = FakeStrategy::echo();
        let b2 = run(
            open(kind, dir.path(), &id),
            &id,
            ResumePolicy::Successes,
            &second,
            items(20),
        )
        .await;
        assert_eq!(second.calls(), 1);
        assert_eq!((b2.stats.succeeded, b2.stats.replayed), (20, 19));
        assert_eq!(
            b2.stats.usage.total, 15,
            "only the rerun's tokens count as this run's"
        );
        assert_eq!(b2.stats.replayed_usage.total, 19 * 15);
        let r = b2.results.iter().find(|r| r.id == "i5").unwrap();
        assert!(r.replayed);
        assert_eq!(r.output().map(String::as_str), Some("i5"));

        // Resume "all" also reuses failures (not stops or configuration errors).
        let third = FakeStrategy::echo();
        run(
            open(kind, dir.path(), &id),
            &id,
            ResumePolicy::All,
            &third,
            items(20),
        )
        .await;
        assert_eq!(third.calls(), 0);
        // "none" reuses nothing.
        let fourth = FakeStrategy::echo();
        run(
            open(kind, dir.path(), &id),
            &id,
            ResumePolicy::None,
            &fourth,
            items(20),
        )
        .await;
        assert_eq!(fourth.calls(), 20);
    }
}

/// With large prompts a resume reads ahead a bounded amount of text, not
/// eight chunks of 1,024 items: 512 KiB prompts, and the first result
/// arrives with fewer than 100 of 150 items read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_reads_ahead_a_bounded_amount_of_prompt_text() {
    use futures::StreamExt as _;
    // One record, so the resume reads ahead at all.
    let (dir, id) = sqlite_holding(1).await;
    let (input, read) = counted(futures::stream::iter(
        (0..150).map(|i| Item::new(format!("big{i}"), "x".repeat(512 << 10))),
    ));
    let slow =
        FakeStrategy::new(|_| "ok".into()).with_latency(std::time::Duration::from_millis(50));
    let extras = with_checkpoint(
        open(Kind::Sqlite, dir.path(), &id),
        &id,
        ResumePolicy::Successes,
    );
    let mut stream = async_batch_llm::process_stream_with(slow, input, &config(), extras).unwrap();
    let first = stream.next().await.unwrap();
    assert!(first.is_ok());
    let at_first = read.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        at_first < 100,
        "{at_first} items read before the first result"
    );
    let mut n = 1;
    while stream.next().await.is_some() {
        n += 1;
    }
    assert_eq!(n, 150);
}

/// A JSONL checkpoint written by the first release (record version 1,
/// every field) resumes in this build: its successes replay with their
/// outputs, usage and timing, and the new records are version 2.
#[tokio::test]
async fn a_version_1_checkpoint_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let id = identity("m", "v1");
    let path = dir.path().join("old.jsonl");
    let mut text = format!(
        "{{\"schema\":\"async-batch-llm/checkpoint\",\"version\":1,\"tool_version\":\"async-batch-llm 0.1.0\",\"identity\":{}}}\n",
        serde_json::to_string(&id).unwrap()
    );
    let all = items(10);
    for item in &all[..6] {
        writeln!(
            text,
            "{{\"v\":1,\"id\":\"{i}\",\"item_fp\":\"{fp}\",\"identity_fp\":\"{idf}\",\"result\":{{\"id\":\"{i}\",\"index\":3,\"ok\":true,\"output\":\"old {i}\",\"usage\":{{\"input\":20,\"output\":20,\"total\":40,\"cached_input\":0,\"reasoning\":0}},\"attempts\":1,\"tries\":1,\"timing\":{{\"total_ms\":5.691,\"cooldown_wait_ms\":0.0,\"admission_wait_ms\":0.0,\"execution_ms\":5.686,\"backoff_ms\":0.0,\"tries\":[{{\"attempt\":1,\"cooldown_wait_ms\":0.0,\"admission_wait_ms\":0.0,\"execution_ms\":5.686}}]}},\"replayed\":false}}}}",
            i = item.id,
            fp = async_batch_llm::store::item_fingerprint(item),
            idf = id.fingerprint(),
        )
        .unwrap();
    }
    std::fs::write(&path, text).unwrap();
    let fake = FakeStrategy::echo();
    let store: Arc<dyn CheckpointStore> = Arc::new(JsonlStore::open(&path, &id, false).unwrap());
    let b = run(store, &id, ResumePolicy::Successes, &fake, all).await;
    assert_eq!(fake.calls(), 4);
    assert_eq!(b.stats.replayed, 6);
    assert_eq!(b.stats.replayed_usage.total, 6 * 40);
    let r = b.results.iter().find(|r| r.id == "i2").unwrap();
    assert!(r.replayed);
    assert_eq!(r.output().map(String::as_str), Some("old i2"));
    assert_eq!(r.timing.execution, std::time::Duration::from_micros(5686));
    assert_eq!(r.timing.tries.len(), 1);
    let written: Vec<u64> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["v"]
                .as_u64()
                .unwrap()
        })
        .collect();
    // The old records stay as they were; new ones are in the current version.
    let now = u64::from(async_batch_llm::store::RECORD_VERSION);
    assert_eq!(written, [1, 1, 1, 1, 1, 1, now, now, now, now]);
}

#[tokio::test]
async fn a_changed_identity_reuses_nothing_and_a_changed_prompt_reruns_only_that_id() {
    for kind in [Kind::Jsonl, Kind::Sqlite] {
        let dir = tempfile::tempdir().unwrap();
        let id = identity("m", "v1");
        run(
            open(kind, dir.path(), &id),
            &id,
            ResumePolicy::Successes,
            &FakeStrategy::echo(),
            items(10),
        )
        .await;
        for other in [identity("other-model", "v1"), identity("m", "v2")] {
            let fake = FakeStrategy::echo();
            let b = run(
                open(kind, dir.path(), &other),
                &other,
                ResumePolicy::Successes,
                &fake,
                items(10),
            )
            .await;
            assert_eq!(
                (fake.calls(), b.stats.replayed),
                (10, 0),
                "identity change reruns all"
            );
            // Write the original identity's records again for the next check.
            run(
                open(kind, dir.path(), &id),
                &id,
                ResumePolicy::None,
                &FakeStrategy::echo(),
                items(10),
            )
            .await;
        }
        let mut changed = items(10);
        changed[4] = Item::new("i4", "a new prompt for i4");
        let fake = FakeStrategy::echo().recording();
        let b = run(
            open(kind, dir.path(), &id),
            &id,
            ResumePolicy::Successes,
            &fake,
            changed,
        )
        .await;
        assert_eq!(fake.calls(), 1);
        assert_eq!(
            fake.item_log("a new prompt for i4").execute_attempts,
            vec![1]
        );
        assert_eq!(b.stats.replayed, 9);
    }
}

#[tokio::test]
async fn a_torn_last_jsonl_line_is_repaired_and_that_item_reruns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.jsonl");
    let id = identity("m", "v1");
    let store: Arc<dyn CheckpointStore> = Arc::new(JsonlStore::open(&path, &id, true).unwrap());
    run(
        store,
        &id,
        ResumePolicy::Successes,
        &FakeStrategy::echo(),
        items(5),
    )
    .await;
    // Simulate a crash mid-write: cut the last record in half.
    let text = std::fs::read_to_string(&path).unwrap();
    let last_start = text.trim_end().rfind('\n').unwrap() + 1;
    let last: Record = serde_json::from_str(text[last_start..].trim_end()).unwrap();
    std::fs::write(&path, &text[..last_start + (text.len() - last_start) / 2]).unwrap();
    let store = JsonlStore::open(&path, &id, true).unwrap();
    assert_eq!(store.repaired_line(), Some(6));
    assert!(std::fs::read_to_string(&path).unwrap().ends_with('\n'));
    let fake = FakeStrategy::echo().recording();
    let b = run(
        Arc::new(store),
        &id,
        ResumePolicy::Successes,
        &fake,
        items(5),
    )
    .await;
    assert_eq!(fake.calls(), 1);
    assert_eq!(
        fake.item_log(&last.id).execute_attempts,
        vec![1],
        "the torn item ran again"
    );
    assert_eq!(b.stats.replayed, 4);
    // A bad line in the middle is not a torn write: a clear error.
    let mut lines: Vec<String> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    lines[2] = "{not json".into();
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let err = JsonlStore::open(&path, &id, false).unwrap_err().to_string();
    assert!(err.contains("run.jsonl:3"), "{err}");
}

struct Broken;

impl CheckpointStore for Broken {
    fn lookup(&self, _: &str, _: &str) -> Result<Option<Record>, Error> {
        Ok(None)
    }
    fn identities(&self) -> Vec<async_batch_llm::store::KnownIdentity> {
        Vec::new()
    }
    fn write_batch(&self, _: &[async_batch_llm::store::EncodedRecord]) -> Result<(), Error> {
        Err(Error::io(
            "/full/disk",
            std::io::Error::other("No space left on device"),
        ))
    }
    fn for_each(&self, _: &mut dyn FnMut(Record) -> Result<(), Error>) -> Result<(), Error> {
        Ok(())
    }
    fn manifest(&self) -> Option<async_batch_llm::store::Manifest> {
        None
    }
}

#[tokio::test]
async fn a_write_failure_stops_the_run_with_its_own_reason() {
    let id = identity("m", "v1");
    let b = run(
        Arc::new(Broken),
        &id,
        ResumePolicy::Successes,
        &FakeStrategy::echo(),
        items(100),
    )
    .await;
    assert_eq!(b.termination.reason, TerminationReason::CheckpointFailed);
    assert!(
        b.termination
            .message
            .as_deref()
            .unwrap()
            .contains("No space left on device")
    );
    assert_eq!(b.results.len(), 100, "every item still has a result");
}

#[tokio::test]
async fn sqlite_reopens_read_only_and_keeps_the_manifest() {
    let (dir, id) = sqlite_holding(30).await;
    let ro = SqliteStore::open_read_only(dir.path().join("run.sqlite")).unwrap();
    assert_eq!(ro.len().unwrap(), 30);
    assert_eq!(ro.manifest().unwrap().identity, id);
    let mut n = 0;
    ro.for_each(&mut |r| {
        assert!(
            r.prompt.is_none() && r.result.context.is_none(),
            "inputs are not stored unless asked"
        );
        n += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(n, 30);
    assert!(ro.write_batch(&[]).is_err());
}

/// When the result stream ends, the SQLite file alone holds every record:
/// the WAL has been copied in and emptied although the store is still open
/// (a user may copy the file right after the run).
#[tokio::test]
async fn when_a_run_ends_the_sqlite_file_alone_holds_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let id = identity("m", "v1");
    let store = open(Kind::Sqlite, dir.path(), &id);
    let b = run(
        Arc::clone(&store),
        &id,
        ResumePolicy::Successes,
        &FakeStrategy::echo(),
        items(300),
    )
    .await;
    assert_eq!(b.results.len(), 300);
    let wal = std::fs::metadata(dir.path().join("run.sqlite-wal")).map_or(0, |m| m.len());
    assert_eq!(wal, 0, "the WAL still holds records");
    let copy = dir.path().join("copy.sqlite");
    std::fs::copy(dir.path().join("run.sqlite"), &copy).unwrap();
    assert_eq!(
        SqliteStore::open_read_only(&copy).unwrap().len().unwrap(),
        300
    );
    drop(store);
}

/// A resume reads stored records ahead in the order they were written; ids
/// out of that order, new ids, and stored ids missing from the input must
/// still get the right answer. 30,000 records (more than the read-ahead
/// keeps), then a resume whose input is shuffled in blocks, drops every
/// 7th stored id and adds 500 new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_in_another_order_with_new_and_missing_items_replays_exactly_the_stored_ones() {
    for kind in [Kind::Sqlite, Kind::Jsonl] {
        let dir = tempfile::tempdir().unwrap();
        let id = identity("m", "v1");
        let n = 30_000;
        let first = FakeStrategy::echo();
        let b = run(
            open(kind, dir.path(), &id),
            &id,
            ResumePolicy::Successes,
            &first,
            items(n),
        )
        .await;
        assert_eq!(b.stats.succeeded, n as u64);

        // Reverse blocks of 5,000 (far out of write order within a block),
        // drop every 7th id, and put new items between the blocks.
        let mut input: Vec<Item> = Vec::new();
        let mut expected_replays = 0u64;
        for block in (0..n).collect::<Vec<_>>().chunks(5_000) {
            for &i in block.iter().rev() {
                if i % 7 != 0 {
                    input.push(Item::new(format!("i{i}"), format!("i{i}")));
                    expected_replays += 1;
                }
            }
            for k in 0..100 {
                input.push(Item::new(format!("new{}-{k}", block[0]), "fresh"));
            }
        }
        let total = input.len() as u64;
        let second = FakeStrategy::echo();
        let b = run(
            open(kind, dir.path(), &id),
            &id,
            ResumePolicy::Successes,
            &second,
            input,
        )
        .await;
        assert_eq!(b.stats.items, total);
        assert_eq!(b.stats.replayed, expected_replays, "{}", kind_name(kind));
        assert_eq!(
            second.calls(),
            total - expected_replays,
            "only the new items are called"
        );
        for r in &b.results {
            assert!(r.is_ok());
            let want = if r.id.starts_with("new") {
                "fresh"
            } else {
                r.id.as_str()
            };
            assert_eq!(r.output().map(String::as_str), Some(want));
            assert_eq!(r.replayed, !r.id.starts_with("new"));
        }
    }
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Jsonl => "jsonl",
        Kind::Sqlite => "sqlite",
    }
}

/// Counts what a store has committed, so a consumer can check that every
/// result it receives was committed first.
struct Witness {
    inner: Arc<dyn CheckpointStore>,
    committed: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl CheckpointStore for Witness {
    fn lookup(&self, identity_fp: &str, id: &str) -> Result<Option<Record>, Error> {
        self.inner.lookup(identity_fp, id)
    }
    fn identities(&self) -> Vec<async_batch_llm::store::KnownIdentity> {
        self.inner.identities()
    }
    fn write_batch(&self, records: &[async_batch_llm::store::EncodedRecord]) -> Result<(), Error> {
        self.inner.write_batch(records)?;
        let mut c = self.committed.lock().unwrap();
        c.extend(records.iter().map(|r| r.id.clone()));
        Ok(())
    }
    fn for_each(&self, f: &mut dyn FnMut(Record) -> Result<(), Error>) -> Result<(), Error> {
        self.inner.for_each(f)
    }
    fn manifest(&self) -> Option<async_batch_llm::store::Manifest> {
        self.inner.manifest()
    }
    fn had_records_at_open(&self, identity_fp: &str) -> bool {
        self.inner.had_records_at_open(identity_fp)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_streamed_result_is_committed_before_the_consumer_sees_it() {
    use futures::StreamExt as _;
    let dir = tempfile::tempdir().unwrap();
    let id = identity("m", "v1");
    let witness = Arc::new(Witness {
        inner: open(Kind::Sqlite, dir.path(), &id),
        committed: std::sync::Mutex::default(),
    });
    let extras = with_checkpoint(
        Arc::clone(&witness) as Arc<dyn CheckpointStore>,
        &id,
        ResumePolicy::Successes,
    );
    let fake = FakeStrategy::echo().with_item_schedule("i5", vec![FakeStep::Permanent]);
    let config = BatchConfig {
        concurrency: 64,
        scopes: ScopeRegistry::new(),
        ..BatchConfig::default()
    };
    let mut stream = async_batch_llm::process_stream_with(
        fake,
        futures::stream::iter(items(5_000)),
        &config,
        extras,
    )
    .unwrap();
    let mut seen = std::collections::HashSet::new();
    while let Some(r) = stream.next().await {
        assert!(
            witness.committed.lock().unwrap().contains(&r.id),
            "{} was published before its record was committed",
            r.id
        );
        assert!(seen.insert(r.id.clone()), "{} published twice", r.id);
    }
    assert_eq!(seen.len(), 5_000);
    assert_eq!(
        stream.termination().unwrap().reason,
        TerminationReason::Completed
    );
}

/// A resume reads input ahead in chunks to decide them; when the run is
/// stopped, every item it read still gets exactly one result (replayed or
/// not started), and none it did not read does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_resume_gives_every_item_it_read_one_result() {
    use futures::StreamExt as _;
    let (dir, id) = sqlite_holding(3_000).await;
    let extras = with_checkpoint(
        open(Kind::Sqlite, dir.path(), &id),
        &id,
        ResumePolicy::Successes,
    );
    // Old items interleaved with new ones, which are slow; more than the
    // engine reads ahead (8 chunks of 1,024).
    let (input, read) = counted(futures::stream::iter((0..20_000).map(|i| {
        if i % 2 == 0 {
            Item::new(format!("i{}", i / 2), format!("i{}", i / 2))
        } else {
            Item::new(format!("new{i}"), "fresh")
        }
    })));
    let fake = FakeStrategy::echo().with_latency(std::time::Duration::from_millis(20));
    let mut stream =
        async_batch_llm::process_stream_with(fake.clone(), input, &config(), extras).unwrap();
    let stop = stream.stop_handle();
    let mut seen = std::collections::HashSet::new();
    let mut replayed = 0;
    while let Some(r) = stream.next().await {
        assert!(seen.insert(r.id.clone()), "{} twice", r.id);
        replayed += u64::from(r.replayed);
        if seen.len() == 100 {
            stop.stop();
        }
    }
    let read = read.load(std::sync::atomic::Ordering::SeqCst);
    assert!(read < 20_000, "the stop came before the end of the input");
    assert_eq!(seen.len() as u64, read, "one result per item read");
    assert!(replayed > 0);
    assert_eq!(
        stream.termination().unwrap().reason,
        TerminationReason::Aborted
    );
}
