//! The model routes of the four wire formats and the pipeline every model
//! request goes through: auth, parsing, schema checks, caches, faults,
//! quota, latency, then the reply.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{Value, json};

use super::{
    Shared, api_key, hash_str, json_response, lock, mix, raw_response, refused_key_message, tokens,
    unit,
};
use crate::config::{Fault, Hint, ReplyMode};
use crate::markers;
use crate::schema;
use crate::wire::{self, Content, Ending, Format, MockRequest, Usage};

pub(super) async fn responses(
    State(s): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(&s, Format::Responses, None, &headers, &q, &body).await
}

pub(super) async fn chat(
    State(s): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(&s, Format::Chat, None, &headers, &q, &body).await
}

pub(super) async fn anthropic(
    State(s): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(&s, Format::Anthropic, None, &headers, &q, &body).await
}

pub(super) async fn gemini(
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
        Some((model, "batchGenerateContent")) => {
            super::batches::gemini::create(&s, model, &headers, &q, &body)
        }
        Some((_, "batchEmbedContents")) => {
            super::embeddings::gemini_batch(&s, &headers, &q, &body).await
        }
        _ => json_response(
            404,
            &[],
            &json!({"error": {"code": 404, "message": format!("no method {rest}"), "status": "NOT_FOUND"}}),
        ),
    }
}

pub(super) fn pick_fault(
    s: &Shared,
    req: &MockRequest,
    seq: u64,
) -> (Option<Fault>, markers::Markers) {
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
    let mut text = match s.config.reply {
        ReplyMode::Echo => req.user_text.clone(),
        ReplyMode::Upper => req.user_text.to_uppercase(),
        ReplyMode::Fixed => s.config.fixed_text.clone(),
    };
    // What arrived of the images, documents and audio, checkable by hash.
    if !req.parts.is_empty() {
        text.push('\n');
        text.push_str(&crate::parts::parts_line(&req.parts));
    }
    Content::Text(text)
}

/// The reply's content and usage for a parsed request (the same for the
/// online routes and the batch APIs).
pub(super) fn compose(
    s: &Shared,
    format: Format,
    req: &MockRequest,
    fault: Option<Fault>,
    marks: &markers::Markers,
    cached_tokens: u64,
) -> (Content, Usage) {
    let content = reply_content(s, req, fault == Some(Fault::InvalidOutput));
    let output_chars = content.text().chars().count();
    let mut input =
        tokens(req.chars) + cached_tokens + crate::parts::PART_TOKENS * req.parts.len() as u64;
    s.stats.parts_seen(&req.parts);
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
    (content, usage)
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
    let (content, usage) = compose(s, format, &req, fault, &marks, cached_tokens);
    // The quota's standing goes out on every reply from here on, as real
    // providers send their rate-limit headers on every response.
    let mut rate = Vec::new();
    if let Some(q) = &s.quota {
        match q.admit(usage.input + usage.output, arrived) {
            Ok(standing) => {
                rate = crate::rate_headers::headers(format, &standing, s.config.rate_headers);
            }
            Err(rej) => {
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
                h.extend(crate::rate_headers::headers(
                    format,
                    &rej.standing,
                    s.config.rate_headers,
                ));
                s.stats.outcome(route, "429_quota", 0);
                return json_response(status, &h, &b);
            }
        }
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
    let mut response = match fault {
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
    };
    super::add_headers(&mut response, &rate);
    response
}
