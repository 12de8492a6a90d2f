//! The mock's HTTP server: shared state, the router, and helpers every
//! route uses. The model routes are in [`generate`], Gemini caches in
//! [`caches`], OpenAI embeddings in [`embeddings`], the three batch APIs
//! in [`batches`].

mod batches;
mod caches;
pub mod embeddings;
mod generate;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::cache::CacheStore;
use crate::config::{Fault, MockConfig};
use crate::quota::Quota;
use crate::stats::Recorder;
use crate::wire::Format;
use batches::{anthropic as anthropic_batches, gemini as gemini_batches, openai as openai_batches};
use caches::{cache_create, cache_delete, cache_get, cache_list, cache_patch};
use generate::{anthropic, chat, gemini, responses};

/// Shared state of a running mock.
pub struct Shared {
    pub(crate) config: MockConfig,
    faults: Vec<(Fault, f64)>,
    seq: AtomicU64,
    marker_counts: Mutex<HashMap<String, u32>>,
    prefixes: Mutex<HashSet<u64>>,
    pub(crate) stats: Recorder,
    quota: Option<Quota>,
    pub(crate) cache: CacheStore,
    pub(crate) batches: batches::BatchStore,
}

impl Shared {
    pub(crate) fn new(config: MockConfig) -> Self {
        Self {
            faults: config.fault_rates(),
            quota: Quota::new(
                config.rpm,
                config.tpm,
                config
                    .quota_window_secs
                    .map(std::time::Duration::from_secs_f64),
            ),
            config,
            seq: AtomicU64::new(0),
            marker_counts: Mutex::new(HashMap::new()),
            prefixes: Mutex::new(HashSet::new()),
            stats: Recorder::default(),
            cache: CacheStore::default(),
            batches: batches::BatchStore::default(),
        }
    }

    pub(crate) fn reset(&self) {
        self.stats.reset();
        self.stats.clear_recent();
        self.cache.clear();
        lock(&self.marker_counts).clear();
        lock(&self.prefixes).clear();
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(super) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub(super) fn unit(bits: u64) -> f64 {
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

pub(super) fn hash_str(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Tokens of a text: a quarter of its characters, rounded up.
pub fn tokens(chars: usize) -> u64 {
    (chars as u64).div_ceil(4)
}

/// Largest request body (Gemini's inline limit, with base64's growth).
const BODY_LIMIT: usize = 140 << 20;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let service = Router::new()
        .route("/stats", get(stats))
        .route("/stats/prompts", get(prompt_stats))
        .route("/requests", get(recent))
        .route("/reset", post(reset))
        .route("/health", get(|| async { "ok" }));
    if shared.config.replay.is_some() {
        return service.fallback(replay).with_state(shared);
    }
    service
        .route("/v1/responses", post(responses))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/v1/files", post(openai_batches::upload))
        .route("/v1/files/{id}/content", get(openai_batches::content))
        .route(
            "/v1/batches",
            post(openai_batches::create).get(openai_batches::list),
        )
        .route("/v1/batches/{id}", get(openai_batches::get))
        .route("/v1/batches/{id}/cancel", post(openai_batches::cancel))
        .route(
            "/v1/messages/batches",
            post(anthropic_batches::create).get(anthropic_batches::list),
        )
        .route("/v1/messages/batches/{id}", get(anthropic_batches::get))
        .route(
            "/v1/messages/batches/{id}/cancel",
            post(anthropic_batches::cancel),
        )
        .route(
            "/v1/messages/batches/{id}/results",
            get(anthropic_batches::results),
        )
        .route("/v1beta/batches", get(gemini_batches::list))
        .route(
            "/v1beta/batches/{id}",
            get(gemini_batches::get).post(gemini_batches::cancel),
        )
        .route("/upload/v1beta/files", post(gemini_batches::upload))
        .route("/v1beta/files/{id}", get(gemini_batches::download))
        .route("/download/v1beta/files/{id}", get(gemini_batches::download))
        .route("/v1/messages", post(anthropic))
        .route("/v1beta/models/{*rest}", post(gemini))
        .route("/v1beta/cachedContents", post(cache_create).get(cache_list))
        .route(
            "/v1beta/cachedContents/{id}",
            get(cache_get).patch(cache_patch).delete(cache_delete),
        )
        // Bodies with inline images and PDFs: providers take up to 100 MB.
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(shared)
}

/// Every request of a replaying mock: the recorded response.
async fn replay(State(s): State<Arc<Shared>>) -> Response {
    let Some(r) = &s.config.replay else {
        return json_response(404, &[], &json!({"error": "not replaying"}));
    };
    let _in_flight = s
        .stats
        .arrive(std::time::Instant::now(), std::time::Duration::ZERO, None);
    s.stats.outcome("replay", "replayed", 0);
    let mut response = (
        StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [("content-type", "application/json")],
        r.body.clone(),
    )
        .into_response();
    add_headers(&mut response, &r.headers);
    response
}

pub(super) fn json_response(status: u16, headers: &[(String, String)], body: &Value) -> Response {
    let mut r = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response();
    add_headers(&mut r, headers);
    r
}

/// Adds `headers` to a response (names or values that are not valid HTTP
/// are skipped).
pub(super) fn add_headers(r: &mut Response, headers: &[(String, String)]) {
    for (k, v) in headers {
        if let (Ok(name), Ok(value)) = (
            axum::http::HeaderName::try_from(k.as_str()),
            HeaderValue::from_str(v),
        ) {
            r.headers_mut().insert(name, value);
        }
    }
}

pub(super) fn raw_response(body: String) -> Response {
    (StatusCode::OK, [("content-type", "application/json")], body).into_response()
}

/// OpenAI's wording for a refused key: its first characters, a mask, and
/// its last four.
pub(super) fn refused_key_message(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    let head: String = chars
        .iter()
        .take(chars.len().saturating_sub(4).min(16))
        .collect();
    let tail: String = chars.iter().skip(chars.len().saturating_sub(4)).collect();
    format!(
        "Incorrect API key provided: {head}{}{tail}. You can find your API key at https://platform.openai.com/account/api-keys.",
        "*".repeat(chars.len().saturating_sub(head.chars().count() + 4))
    )
}

pub(super) fn api_key(
    format: Format,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Option<String> {
    let h = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let bearer = || h("authorization").and_then(|v| v.strip_prefix("Bearer ").map(str::to_owned));
    match format {
        Format::Responses | Format::Chat => bearer(),
        Format::Gemini => h("x-goog-api-key").or_else(|| query.get("key").cloned()),
        // The API takes `x-api-key`; the official SDKs send
        // `Authorization: Bearer` by default.
        Format::Anthropic => h("x-api-key").or_else(bearer),
    }
    .filter(|k| !k.is_empty())
}

async fn stats(State(s): State<Arc<Shared>>) -> Response {
    json_response(200, &[], &json!(s.stats.snapshot()))
}

async fn prompt_stats(State(s): State<Arc<Shared>>) -> Response {
    json_response(200, &[], &json!(s.stats.prompts()))
}

async fn recent(State(s): State<Arc<Shared>>) -> Response {
    json_response(200, &[], &json!(s.stats.recent()))
}

async fn reset(State(s): State<Arc<Shared>>) -> Response {
    s.reset();
    json_response(200, &[], &json!({"reset": true}))
}
