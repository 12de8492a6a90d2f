//! Routes and the request pipeline of the mock.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::cache::{CacheStore, parse_ttl};
use crate::config::{Fault, Hint, MockConfig, ReplyMode};
use crate::markers;
use crate::quota::Quota;
use crate::schema;
use crate::stats::Recorder;
use crate::wire::{self, Content, Ending, Format, MockRequest, Usage};

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
}

impl Shared {
    pub(crate) fn new(config: MockConfig) -> Self {
        Self {
            faults: config.fault_rates(),
            quota: Quota::new(config.rpm, config.tpm),
            config,
            seq: AtomicU64::new(0),
            marker_counts: Mutex::new(HashMap::new()),
            prefixes: Mutex::new(HashSet::new()),
            stats: Recorder::default(),
            cache: CacheStore::default(),
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn unit(bits: u64) -> f64 {
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

fn hash_str(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Tokens of a text: a quarter of its characters, rounded up.
pub fn tokens(chars: usize) -> u64 {
    (chars as u64).div_ceil(4)
}

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/responses", post(responses))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/messages", post(anthropic))
        .route("/v1beta/models/{*rest}", post(gemini))
        .route("/v1beta/cachedContents", post(cache_create).get(cache_list))
        .route(
            "/v1beta/cachedContents/{id}",
            get(cache_get).patch(cache_patch).delete(cache_delete),
        )
        .route("/stats", get(stats))
        .route("/stats/prompts", get(prompt_stats))
        .route("/requests", get(recent))
        .route("/reset", post(reset))
        .route("/health", get(|| async { "ok" }))
        .with_state(shared)
}

fn json_response(status: u16, headers: &[(String, String)], body: &Value) -> Response {
    let mut r = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response();
    for (k, v) in headers {
        if let (Ok(name), Ok(value)) = (
            axum::http::HeaderName::try_from(k.as_str()),
            HeaderValue::from_str(v),
        ) {
            r.headers_mut().insert(name, value);
        }
    }
    r
}

fn raw_response(body: String) -> Response {
    (StatusCode::OK, [("content-type", "application/json")], body).into_response()
}

/// OpenAI's wording for a refused key: its first characters, a mask, and
/// its last four.
fn refused_key_message(key: &str) -> String {
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

fn api_key(format: Format, headers: &HeaderMap, query: &HashMap<String, String>) -> Option<String> {
    let h = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    match format {
        Format::Responses | Format::Chat => {
            h("authorization").and_then(|v| v.strip_prefix("Bearer ").map(str::to_owned))
        }
        Format::Gemini => h("x-goog-api-key").or_else(|| query.get("key").cloned()),
        Format::Anthropic => h("x-api-key"),
    }
    .filter(|k| !k.is_empty())
}

async fn responses(
    State(s): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(&s, Format::Responses, None, &headers, &q, &body).await
}

async fn chat(
    State(s): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(&s, Format::Chat, None, &headers, &q, &body).await
}

async fn anthropic(
    State(s): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(&s, Format::Anthropic, None, &headers, &q, &body).await
}

async fn gemini(
    State(s): State<Arc<Shared>>,
    Path(rest): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match rest.split_once(':') {
        Some((model, "generateContent")) => {
            handle(&s, Format::Gemini, Some(model), &headers, &q, &body).await
        }
        _ => json_response(
            404,
            &[],
            &json!({"error": {"code": 404, "message": format!("no method {rest}"), "status": "NOT_FOUND"}}),
        ),
    }
}

fn pick_fault(s: &Shared, req: &MockRequest, seq: u64) -> (Option<Fault>, markers::Markers) {
    let marked = req.marker_text.as_deref().unwrap_or(&req.user_text);
    let m = markers::parse(marked);
    if let Some((fault, times)) = m.fault {
        let active = match times {
            None => true,
            Some(n) => {
                let mut counts = lock(&s.marker_counts);
                let c = counts.entry(marked.to_owned()).or_default();
                *c += 1;
                *c <= n
            }
        };
        return (active.then_some(fault), m);
    }
    if s.faults.is_empty() {
        return (None, m);
    }
    let u = unit(mix(s.config.seed ^ mix(seq)));
    let mut acc = 0.0;
    for (fault, rate) in &s.faults {
        acc += rate;
        if u < acc {
            return (Some(*fault), m);
        }
    }
    (None, m)
}

fn reply_content(s: &Shared, req: &MockRequest, invalid: bool) -> Content {
    if let Some(sr) = &req.schema {
        if invalid {
            return Content::Json(json!({"unexpected": "this does not satisfy the schema"}));
        }
        return Content::Json(schema::value_for(&sr.schema));
    }
    Content::Text(match s.config.reply {
        ReplyMode::Echo => req.user_text.clone(),
        ReplyMode::Upper => req.user_text.to_uppercase(),
        ReplyMode::Fixed => s.config.fixed_text.clone(),
    })
}

fn latency(s: &Shared, seq: u64) -> Duration {
    let jitter = if s.config.jitter_ms > 0 {
        Duration::from_millis(s.config.jitter_ms).mul_f64(unit(mix(seq ^ 0x5eed)))
    } else {
        Duration::ZERO
    };
    Duration::from_millis(s.config.latency_ms) + jitter
}

#[allow(clippy::too_many_lines)]
async fn handle(
    s: &Shared,
    format: Format,
    model: Option<&str>,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    body: &Bytes,
) -> Response {
    let arrived = Instant::now();
    let seq = s.seq.fetch_add(1, Ordering::Relaxed);
    let route = format.route();
    let parsed: Result<Value, _> = serde_json::from_slice(body);
    if s.config.record_requests {
        let secret = ["authorization", "x-api-key", "x-goog-api-key"];
        let headers = headers
            .iter()
            .map(|(k, v)| {
                let v = if secret.contains(&k.as_str()) {
                    "<present>".to_owned()
                } else {
                    v.to_str().unwrap_or_default().to_owned()
                };
                (k.as_str().to_owned(), v)
            })
            .collect();
        s.stats.record(crate::stats::Recorded {
            route: route.to_owned(),
            path: model.map_or_else(String::new, |m| format!("models/{m}")),
            headers,
            body: parsed.as_ref().map_or(Value::Null, Clone::clone),
        });
    }
    let prompt_key = if s.config.track_prompts {
        parsed
            .as_ref()
            .ok()
            .and_then(|b| wire::parse(format, b, model).ok())
            .map(|r| r.user_text)
    } else {
        None
    };
    let _in_flight = s.stats.arrive(
        arrived,
        Duration::from_millis(s.config.cooldown_grace_ms),
        prompt_key.as_deref(),
    );
    let fail = |fault: Fault, message: &str| {
        let (status, h, b) = wire::error(format, fault, message);
        s.stats.outcome(route, fault.label(), 0);
        json_response(status, &h, &b)
    };
    if !s.config.no_auth {
        match api_key(format, headers, query) {
            None => return fail(Fault::Unauthorized, "Missing API key."),
            // Like OpenAI, the 401 quotes the start and the end of the key
            // it refuses: clients must keep that text out of their records.
            Some(k) if k.starts_with("invalid") => {
                return fail(Fault::Unauthorized, &refused_key_message(&k));
            }
            Some(_) => {}
        }
    }
    if format == Format::Anthropic && headers.get("anthropic-version").is_none() {
        return fail(Fault::BadRequest, "anthropic-version: header is required");
    }
    let body = match parsed {
        Ok(b) => b,
        Err(e) => {
            return fail(
                Fault::BadRequest,
                &format!("We could not parse the JSON body of your request: {e}"),
            );
        }
    };
    let req = match wire::parse(format, &body, model) {
        Ok(r) => r,
        Err(e) => return fail(Fault::BadRequest, &e),
    };
    // Schemas the provider would refuse.
    if let Some(sr) = &req.schema {
        let problem = match format {
            Format::Responses | Format::Chat if sr.strict => {
                schema::openai_strict_problem(&sr.schema)
            }
            Format::Gemini => schema::gemini_problem(&sr.schema),
            _ => None,
        };
        if let Some(p) = problem {
            let (status, h, mut b) = wire::error(
                format,
                Fault::BadRequest,
                &format!("Invalid schema for response_format 'output': {p}"),
            );
            if let Some(e) = b.get_mut("error").and_then(Value::as_object_mut)
                && matches!(format, Format::Responses | Format::Chat)
            {
                e.insert("code".into(), json!("invalid_json_schema"));
                e.insert("param".into(), json!("response_format"));
            }
            s.stats.outcome(route, "400_schema", 0);
            return json_response(status, &h, &b);
        }
    }
    // Gemini context caches.
    let mut cached_tokens = 0;
    if let Some(name) = &req.cached_content {
        if req.has_system_field {
            return fail(
                Fault::BadRequest,
                "CachedContent can not be used with GenerateContent request setting system_instruction, tools or tool_config.\n\nProposed fix: move those values to CachedContent from GenerateContent request.",
            );
        }
        match s.cache.get(name) {
            Some(c) => cached_tokens = c.tokens,
            None => {
                return fail(
                    Fault::Forbidden,
                    "CachedContent not found (or permission denied)",
                );
            }
        }
    }
    let (fault, marks) = pick_fault(s, &req, seq);
    let content = reply_content(s, &req, fault == Some(Fault::InvalidOutput));
    let output_chars = content.text().chars().count();
    let mut input = tokens(req.chars) + cached_tokens;
    let mut cached = cached_tokens;
    let mut cache_write = 0;
    if format == Format::Anthropic {
        // Anthropic caches only what a `cache_control` breakpoint marks: the
        // first sight writes it, later ones read it.
        if let Some(p) = req.cache_prefix.as_ref().filter(|p| p.len() >= 1024) {
            let n = tokens(p.chars().count());
            if lock(&s.prefixes).insert(hash_str(p)) {
                cache_write = n;
            } else {
                cached += n;
            }
        }
    } else if req.system.len() >= 1024 {
        // Automatic prefix cache (OpenAI, DeepSeek): a long system prompt
        // seen before is served from cache.
        let h = hash_str(&req.system);
        if !lock(&s.prefixes).insert(h) {
            cached += tokens(req.system.chars().count());
        }
    }
    if let Some(c) = marks.cached {
        cached = c;
        input = input.max(c);
    }
    let reasoning = marks.reasoning.unwrap_or(0);
    let usage = Usage {
        input,
        output: tokens(output_chars).max(1) + reasoning,
        cached,
        reasoning,
        cache_write,
    };
    if let Some(q) = &s.quota
        && let Err(rej) = q.admit(usage.input + usage.output, arrived)
    {
        s.stats.rate_limited(arrived, Some(rej.retry_after));
        let (status, mut h, b) = wire::error(
            format,
            Fault::RateLimit(Hint::RetryAfter(rej.retry_after)),
            &format!(
                "Rate limit reached for {} per min. Please try again in {:.3}s.",
                rej.limit,
                rej.retry_after.as_secs_f64()
            ),
        );
        h.push((
            "x-ratelimit-limit-requests".into(),
            rej.limit_requests.to_string(),
        ));
        h.push((
            "x-ratelimit-remaining-requests".into(),
            rej.remaining_requests.to_string(),
        ));
        h.push((
            "x-ratelimit-limit-tokens".into(),
            rej.limit_tokens.to_string(),
        ));
        h.push((
            "x-ratelimit-remaining-tokens".into(),
            rej.remaining_tokens.to_string(),
        ));
        h.push((
            "x-ratelimit-reset-requests".into(),
            format!("{:.3}s", rej.retry_after.as_secs_f64()),
        ));
        s.stats.outcome(route, "429_quota", 0);
        return json_response(status, &h, &b);
    }
    if fault == Some(Fault::Hang) {
        tokio::time::sleep(Duration::from_secs(s.config.hang_secs)).await;
    } else {
        let wait = latency(s, seq);
        if !wait.is_zero() {
            // Latency counts from arrival, so parsing is not added on top.
            crate::timer::sleep_until(arrived + wait).await;
        }
    }
    let ending = match fault {
        Some(Fault::Empty) => Ending::Empty,
        Some(Fault::Safety) => Ending::Safety,
        Some(Fault::Refusal) => Ending::Refusal,
        _ => Ending::Normal,
    };
    match fault {
        None
        | Some(
            Fault::Hang | Fault::Empty | Fault::Safety | Fault::Refusal | Fault::InvalidOutput,
        ) => {
            let b = wire::success(format, &req, &content, usage, ending, seq);
            s.stats.outcome(
                route,
                fault.map_or("ok", Fault::label),
                usage.input + usage.output,
            );
            json_response(200, &[], &b)
        }
        Some(Fault::Malformed) => {
            s.stats.outcome(route, "malformed", 0);
            raw_response("<html><body>502 Bad Gateway</body></html>".into())
        }
        Some(Fault::Truncated) => {
            let full = wire::success(format, &req, &content, usage, ending, seq).to_string();
            let mut cut = full.len() / 2;
            while !full.is_char_boundary(cut) {
                cut -= 1;
            }
            s.stats.outcome(route, "truncated", 0);
            raw_response(full[..cut].to_owned())
        }
        Some(Fault::ErrorIn200) => {
            s.stats.outcome(route, "error_in_200", 0);
            json_response(
                200,
                &[],
                &json!({"error": {"code": 502, "message": "Upstream provider returned an error", "metadata": {"provider_name": "mock-upstream"}}}),
            )
        }
        Some(f @ Fault::RateLimit(hint)) => {
            s.stats.rate_limited(Instant::now(), hint.delay());
            let (status, h, b) =
                wire::error(format, f, "Rate limit reached. Please try again later.");
            s.stats.outcome(route, f.label(), 0);
            json_response(status, &h, &b)
        }
        Some(f) => {
            if matches!(f, Fault::QuotaPerDay | Fault::InsufficientQuota) {
                s.stats.rate_limited(Instant::now(), None);
            }
            let message = match f {
                Fault::QuotaPerDay => {
                    "You exceeded your current quota, please check your plan and billing details. Quota exceeded for metric: generativelanguage.googleapis.com/generate_content_free_tier_requests, limit: 200"
                }
                Fault::InsufficientQuota => {
                    "You exceeded your current quota, please check your plan and billing details."
                }
                Fault::PaymentRequired => {
                    "Insufficient credits. Add more using https://example.invalid/credits"
                }
                Fault::ContextLength => {
                    "This model's maximum context length is 128000 tokens. However, your messages resulted in 130000 tokens."
                }
                Fault::Overloaded => "Overloaded",
                _ => "The server had an error while processing your request.",
            };
            fail(f, message)
        }
    }
}

fn cache_tokens(body: &Value) -> u64 {
    let mut chars = body
        .get("contents")
        .and_then(Value::as_array)
        .map_or(0, |cs| {
            cs.iter()
                .map(|c| {
                    c.get("parts")
                        .map_or(0, |p| wire::text_of(p).chars().count())
                })
                .sum()
        });
    if let Some(si) = body.get("systemInstruction") {
        chars += wire::text_of(si).chars().count();
    }
    tokens(chars)
}

fn gemini_error(status: u16, message: &str, code: &str) -> Response {
    json_response(
        status,
        &[],
        &json!({"error": {"code": status, "message": message, "status": code}}),
    )
}

fn gemini_auth(s: &Shared, headers: &HeaderMap, q: &HashMap<String, String>) -> Option<Response> {
    if s.config.no_auth
        || api_key(Format::Gemini, headers, q).is_some_and(|k| !k.starts_with("invalid"))
    {
        None
    } else {
        Some(gemini_error(
            401,
            "API key not valid. Please pass a valid API key.",
            "UNAUTHENTICATED",
        ))
    }
}

async fn cache_create(
    State(s): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = gemini_auth(&s, &headers, &q) {
        return r;
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return gemini_error(400, "Invalid JSON payload received.", "INVALID_ARGUMENT");
    };
    let Some(model) = body.get("model").and_then(Value::as_str) else {
        return gemini_error(400, "model is required", "INVALID_ARGUMENT");
    };
    let ttl = match body.get("ttl").and_then(Value::as_str) {
        Some(t) => match parse_ttl(t) {
            Some(d) => d,
            None => {
                return gemini_error(
                    400,
                    &format!("Invalid value at 'cached_content.ttl' ({t})"),
                    "INVALID_ARGUMENT",
                );
            }
        },
        None => Duration::from_secs(3600),
    };
    let display = body
        .get("displayName")
        .and_then(Value::as_str)
        .unwrap_or_default();
    s.stats.cache_op(|c| c.created += 1);
    let c = s.cache.create(model, display, cache_tokens(&body), ttl);
    json_response(200, &[], &c.to_json())
}

async fn cache_list(
    State(s): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = gemini_auth(&s, &headers, &q) {
        return r;
    }
    s.stats.cache_op(|c| c.listed += 1);
    let page_size: usize = q
        .get("pageSize")
        .and_then(|p| p.parse().ok())
        .unwrap_or(100)
        .clamp(1, 1000);
    let start: usize = q.get("pageToken").and_then(|p| p.parse().ok()).unwrap_or(0);
    let all = s.cache.list();
    let page: Vec<Value> = all
        .iter()
        .skip(start)
        .take(page_size)
        .map(crate::cache::Cached::to_json)
        .collect();
    let mut body = json!({"cachedContents": page});
    if start + page_size < all.len() {
        body["nextPageToken"] = json!((start + page_size).to_string());
    }
    json_response(200, &[], &body)
}

fn not_found(id: &str) -> Response {
    gemini_error(
        403,
        &format!("CachedContent not found (or permission denied): cachedContents/{id}"),
        "PERMISSION_DENIED",
    )
}

async fn cache_get(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = gemini_auth(&s, &headers, &q) {
        return r;
    }
    s.stats.cache_op(|c| c.fetched += 1);
    match s.cache.get(&format!("cachedContents/{id}")) {
        Some(c) => json_response(200, &[], &c.to_json()),
        None => not_found(&id),
    }
}

async fn cache_patch(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = gemini_auth(&s, &headers, &q) {
        return r;
    }
    let ttl = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|b| b.get("ttl").and_then(Value::as_str).and_then(parse_ttl));
    let Some(ttl) = ttl else {
        return gemini_error(400, "ttl is required (e.g. \"3600s\")", "INVALID_ARGUMENT");
    };
    s.stats.cache_op(|c| c.updated += 1);
    match s.cache.update_ttl(&format!("cachedContents/{id}"), ttl) {
        Some(c) => json_response(200, &[], &c.to_json()),
        None => not_found(&id),
    }
}

async fn cache_delete(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = gemini_auth(&s, &headers, &q) {
        return r;
    }
    s.stats.cache_op(|c| c.deleted += 1);
    if s.cache.delete(&format!("cachedContents/{id}")) {
        json_response(200, &[], &json!({}))
    } else {
        not_found(&id)
    }
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
