//! `GeminiCachedModel` against `abl-mock`'s `cachedContents` (real TTLs):
//! one cache per content however many workers, renewal by one TTL update,
//! one shared replacement when the cache is gone, one delete.
//!
//! The mock expires caches on its wall clock, so the expiry tests use TTLs
//! of a few seconds and wait on the real clock for them to pass.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use abl_mock::MockServer;
use async_batch_llm::providers::{
    ApiKey, CacheOptions, CachedContent, GeminiCachedModel, GeminiConfig, GeminiModel, HttpOptions,
};
use async_batch_llm::{
    BatchConfig, CallError, Completion, ErrorCategory, Item, LlmRequest, Model, ModelStrategy,
    Prompt, RetryState, Role, Strategy, process_prompts,
};
use serde_json::Value;

async fn mock() -> MockServer {
    MockServer::start_recording().await.unwrap()
}

fn gemini(m: &MockServer) -> GeminiModel {
    GeminiModel::new(GeminiConfig {
        model: "gemini-2.0-flash".into(),
        base_url: m.base_url().to_owned(),
        api_key: ApiKey::new("test-key"),
        safety_settings: None,
        system_instruction: None,
        generation_config: None,
        http: HttpOptions::default(),
    })
    .unwrap()
}

fn content() -> CachedContent {
    CachedContent::new()
        .with_system("You answer questions about the handbook.")
        .with_text(Role::User, "The handbook: ".repeat(200))
}

fn cached(m: &MockServer, options: CacheOptions) -> Arc<GeminiCachedModel> {
    Arc::new(GeminiCachedModel::new(gemini(m), content(), options).unwrap())
}

fn short(ttl: u64, buffer_ms: u64, auto_renew: bool) -> CacheOptions {
    CacheOptions {
        ttl: Duration::from_secs(ttl),
        renewal_buffer: Duration::from_millis(buffer_ms),
        auto_renew,
        tags: BTreeMap::from([("app".into(), "tests".into())]),
    }
}

fn generate_calls(m: &MockServer) -> u64 {
    m.stats()
        .by_route
        .get("gemini")
        .map_or(0, |o| o.values().sum())
}

fn cache_of(body: &Value) -> Option<String> {
    body.get("cachedContent")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// Items `late*` wait until the first cache has expired before calling.
struct Gate {
    inner: ModelStrategy<Arc<GeminiCachedModel>>,
    late_from: tokio::time::Instant,
}

impl Strategy for Gate {
    type Output = String;
    async fn prepare(&self) -> Result<(), CallError> {
        self.inner.prepare().await
    }
    async fn execute(
        &self,
        prompt: &Prompt,
        attempt: u32,
        timeout: Duration,
        state: &mut RetryState,
    ) -> Result<Completion<String>, CallError> {
        if prompt.text().starts_with("late") {
            tokio::time::sleep_until(self.late_from).await;
        }
        self.inner.execute(prompt, attempt, timeout, state).await
    }
}

#[tokio::test]
async fn a_cache_expiring_mid_run_is_replaced_once_and_used_by_every_later_call() {
    let m = mock().await;
    let model = cached(&m, short(2, 1000, false));
    let strategy = Gate {
        inner: ModelStrategy::text(Arc::clone(&model)),
        late_from: tokio::time::Instant::now() + Duration::from_millis(2300),
    };
    let items = (0..10).map(|i| {
        let prefix = if i < 5 { "early" } else { "late" };
        Item::new(format!("i{i}"), format!("{prefix} question {i}"))
    });
    let config = BatchConfig {
        concurrency: 5,
        preserve_order: true,
        ..BatchConfig::default()
    };
    let batch = process_prompts(strategy, items, &config).await.unwrap();
    assert_eq!(batch.stats.succeeded, 10, "{}", batch.summary());
    let ops = m.stats().cache;
    assert_eq!(ops.created, 2, "one cache at prepare, one after expiry");
    assert_eq!(ops.updated, 0);
    let requests = m.recent_requests();
    let names: Vec<String> = requests.iter().filter_map(|r| cache_of(&r.body)).collect();
    assert_eq!(names.len(), 10);
    let (first, second) = (names[0].clone(), names[9].clone());
    assert_ne!(first, second);
    for r in &requests {
        let early = r.body.to_string().contains("early question");
        let want = if early { &first } else { &second };
        assert_eq!(cache_of(&r.body).as_ref(), Some(want));
    }
    assert_eq!(model.cache_name().await, Some(second));
    // Nothing was sent as a per-call system instruction (the cache has it).
    assert!(
        requests
            .iter()
            .all(|r| r.body.get("systemInstruction").is_none())
    );
}

#[tokio::test]
async fn renewal_is_one_ttl_update_and_then_nothing() {
    let m = mock().await;
    // TTL 3 s, renew in the last 2.5 s: due 0.5 s after creation.
    let model = cached(&m, short(3, 2500, true));
    model.prepare().await.unwrap();
    model.generate(&LlmRequest::new("q0")).await.unwrap();
    assert_eq!(m.stats().cache.updated, 0, "fresh cache: no renewal");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let calls = (0..5).map(|i| {
        let model = Arc::clone(&model);
        async move { model.generate(&LlmRequest::new(format!("q{i}"))).await }
    });
    for r in futures::future::join_all(calls).await {
        r.unwrap();
    }
    let ops = m.stats().cache;
    assert_eq!((ops.updated, ops.created, ops.listed), (1, 1, 1));
    for i in 0..5 {
        model
            .generate(&LlmRequest::new(format!("again {i}")))
            .await
            .unwrap();
    }
    let ops = m.stats().cache;
    assert_eq!((ops.updated, ops.created, ops.listed), (1, 1, 1));
}

#[tokio::test]
async fn a_403_naming_the_cache_gives_one_shared_replacement_and_a_retry() {
    let m = mock().await;
    let model = cached(&m, CacheOptions::default());
    model.prepare().await.unwrap();
    let old = model.cache_name().await.unwrap();
    // The cache disappears behind the model's back.
    let url = format!("{}/v1beta/{old}", m.base_url());
    let status = reqwest::Client::new()
        .delete(url)
        .header("x-goog-api-key", "k")
        .send()
        .await
        .unwrap()
        .status();
    assert!(status.is_success());
    let calls = (0..5).map(|i| {
        let model = Arc::clone(&model);
        async move { model.generate(&LlmRequest::new(format!("q{i}"))).await }
    });
    for r in futures::future::join_all(calls).await {
        assert_eq!(r.unwrap().cached_input_tokens.map(|n| n > 0), Some(true));
    }
    let ops = m.stats().cache;
    assert_eq!(ops.created, 2, "one replacement for five failures");
    assert_eq!(
        generate_calls(&m),
        10,
        "each call failed once and retried once"
    );
    assert_ne!(model.cache_name().await.unwrap(), old);
}

#[tokio::test]
async fn other_403s_and_500s_do_not_touch_the_cache() {
    let m = mock().await;
    let model = cached(&m, CacheOptions::default());
    model.prepare().await.unwrap();
    for (marker, category) in [
        ("[[mock:403]]", ErrorCategory::PermissionDenied),
        ("[[mock:500]]", ErrorCategory::ServerError),
    ] {
        let before = generate_calls(&m);
        let err = model.generate(&LlmRequest::new(marker)).await.unwrap_err();
        assert_eq!(err.category(), category, "{err}");
        assert_eq!(generate_calls(&m) - before, 1, "{marker}: no retry inside");
    }
    let ops = m.stats().cache;
    assert_eq!((ops.created, ops.listed, ops.updated), (1, 1, 0));
}

#[tokio::test]
async fn concurrent_deletes_make_one_provider_delete() {
    let m = mock().await;
    let model = cached(&m, CacheOptions::default());
    model.prepare().await.unwrap();
    let deletes = (0..8).map(|_| {
        let model = Arc::clone(&model);
        async move { model.delete_cache().await }
    });
    for r in futures::future::join_all(deletes).await {
        r.unwrap();
    }
    assert_eq!(m.stats().cache.deleted, 1);
    assert_eq!(model.cache_name().await, None);
    // Cleanup never deletes; a later call prepares a new cache.
    model.cleanup().await;
    model.generate(&LlmRequest::new("after")).await.unwrap();
    assert_eq!(m.stats().cache.created, 2);
}

#[tokio::test]
async fn twenty_workers_share_one_prepare() {
    let m = mock().await;
    let model = cached(&m, CacheOptions::default());
    let strategy = ModelStrategy::text(Arc::clone(&model));
    let items = (0..100).map(|i| Item::new(format!("i{i}"), format!("question {i}")));
    let config = BatchConfig {
        concurrency: 20,
        ..BatchConfig::default()
    };
    let batch = process_prompts(strategy, items, &config).await.unwrap();
    assert_eq!(batch.stats.succeeded, 100);
    let ops = m.stats().cache;
    assert_eq!((ops.created, ops.listed, ops.updated), (1, 1, 0));
    let name = model.cache_name().await.unwrap();
    let requests = m.recent_requests();
    assert!(!requests.is_empty());
    assert!(
        requests
            .iter()
            .all(|r| cache_of(&r.body) == Some(name.clone()))
    );
    assert!(
        batch.stats.usage.cached_input > 0,
        "cached tokens are reported"
    );
}

#[tokio::test]
async fn a_second_run_adopts_the_cache_and_skips_foreign_ones() {
    let m = mock().await;
    // A foreign cache (no tags) and a cache of other content.
    let foreign = serde_json::json!({"model": "models/gemini-2.0-flash", "displayName": "someone else", "contents": [], "ttl": "3600s"});
    reqwest::Client::new()
        .post(format!("{}/v1beta/cachedContents", m.base_url()))
        .header("x-goog-api-key", "k")
        .json(&foreign)
        .send()
        .await
        .unwrap();
    let other = GeminiCachedModel::new(
        gemini(&m),
        CachedContent::new().with_text(Role::User, "another document"),
        CacheOptions::default(),
    )
    .unwrap();
    other.prepare().await.unwrap();
    let first = cached(&m, CacheOptions::default());
    first.prepare().await.unwrap();
    assert_eq!(m.stats().cache.created, 3);
    // Same content and tags, fresh instance (a new run): adopted.
    let second = cached(&m, CacheOptions::default());
    second.prepare().await.unwrap();
    assert_eq!(m.stats().cache.created, 3);
    assert_eq!(second.cache_name().await, first.cache_name().await);
    // Different tags: a cache of its own.
    let mut tags = CacheOptions::default();
    tags.tags.insert("tenant".into(), "b".into());
    let third = cached(&m, tags);
    third.prepare().await.unwrap();
    assert_eq!(m.stats().cache.created, 4);
    assert_ne!(third.cache_name().await, first.cache_name().await);
}

#[tokio::test]
async fn misuse_is_an_error() {
    let m = mock().await;
    let bad = CacheOptions {
        ttl: Duration::from_secs(300),
        renewal_buffer: Duration::from_secs(300),
        ..CacheOptions::default()
    };
    let err = GeminiCachedModel::new(gemini(&m), content(), bad).unwrap_err();
    assert!(err.to_string().contains("shorter than its TTL"), "{err}");
    let model = cached(&m, CacheOptions::default());
    let mut req = LlmRequest::new("q");
    req.system = Some("per call".into());
    let err = model.generate(&req).await.unwrap_err();
    assert_eq!(err.category(), ErrorCategory::LogicError);
    assert!(!err.is_retryable());
    assert_eq!(generate_calls(&m), 0);
}
