//! OpenAI's embeddings route (`POST /v1/embeddings`) and Gemini's
//! (`models/{m}:batchEmbedContents`): many inputs per request, answered
//! with deterministic unit vectors computed from each input's text, so a
//! test can check every vector it gets back.
//!
//! The limits are OpenAI's (Gemini's: [`GEMINI_MAX_INPUTS`] texts): at most [`MAX_INPUTS`] inputs and
//! [`MAX_REQUEST_TOKENS`] tokens per request, no empty input; an input
//! holding `POISON` stands for one too long for the model, and, as at
//! OpenAI, it fails the whole request (400).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{Value, json};

use super::{Shared, api_key, hash_str, json_response, mix, tokens, unit};
use crate::wire::Format;

/// Most inputs in one request.
pub const MAX_INPUTS: usize = 2048;
/// Most tokens (all inputs) in one request.
pub const MAX_REQUEST_TOKENS: u64 = 300_000;
/// Dimensions when the request asks for none.
pub const DEFAULT_DIMENSIONS: usize = 8;

/// The vector the mock gives `text`: `dimensions` numbers from a hash of
/// the text, scaled to length 1.
pub fn vector(text: &str, dimensions: usize) -> Vec<f32> {
    let seed = hash_str(text);
    let raw: Vec<f64> = (0..dimensions as u64)
        .map(|j| unit(mix(seed ^ mix(j))) * 2.0 - 1.0)
        .collect();
    let norm = raw.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
    raw.iter().map(|x| (x / norm) as f32).collect()
}

/// Most texts in one Gemini `batchEmbedContents` request.
pub const GEMINI_MAX_INPUTS: usize = 100;

/// Why a request is refused: the `/stats` label and the message.
type Refusal = (&'static str, String);

/// The checks both routes make; the request's tokens when it passes.
fn check(inputs: &[String], max_inputs: usize) -> Result<u64, Refusal> {
    if inputs.is_empty() || inputs.len() > max_inputs {
        return Err((
            "400_inputs",
            format!(
                "'$.input' is invalid: it must hold 1 to {max_inputs} inputs, not {}",
                inputs.len()
            ),
        ));
    }
    if inputs.iter().any(String::is_empty) {
        return Err(("400", "'$.input' is invalid: an input is empty".to_owned()));
    }
    let total: u64 = inputs.iter().map(|t| tokens(t.chars().count())).sum();
    if total > MAX_REQUEST_TOKENS {
        return Err((
            "400_tokens",
            format!("Requested {total} tokens, max {MAX_REQUEST_TOKENS} tokens per request"),
        ));
    }
    if inputs.iter().any(|t| t.contains("POISON")) {
        return Err((
            "400_too_long",
            "This model's maximum context length is 8192 tokens, however you requested more tokens in the input.".to_owned(),
        ));
    }
    Ok(total)
}

/// The requested dimensions, or the default.
fn dimensions(v: Option<&Value>) -> usize {
    v.and_then(Value::as_u64)
        .and_then(|d| usize::try_from(d).ok())
        .filter(|d| (1..=4096).contains(d))
        .unwrap_or(DEFAULT_DIMENSIONS)
}

/// Counts the request, checks the key; `Err` is the 401.
fn arrive<'a>(
    s: &'a Shared,
    format: Format,
    headers: &HeaderMap,
    q: &HashMap<String, String>,
) -> (crate::stats::InFlight<'a>, Instant, bool) {
    let arrived = Instant::now();
    let guard = s.stats.arrive(
        arrived,
        Duration::from_millis(s.config.cooldown_grace_ms),
        None,
    );
    let authorized = s.config.no_auth || api_key(format, headers, q).is_some();
    (guard, arrived, authorized)
}

async fn latency(s: &Shared, arrived: Instant) {
    let latency = Duration::from_millis(s.config.latency_ms);
    if !latency.is_zero() {
        crate::timer::sleep_until(arrived + latency).await;
    }
}

fn openai_error(s: &Shared, status: u16, (label, message): Refusal) -> Response {
    s.stats.outcome("embeddings", label, 0);
    json_response(
        status,
        &[],
        &json!({"error": {"message": message, "type": "invalid_request_error", "param": "input", "code": null}}),
    )
}

pub(super) async fn embeddings(
    State(s): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (_in_flight, arrived, authorized) = arrive(&s, Format::Chat, &headers, &q);
    if !authorized {
        return openai_error(&s, 401, ("401", "Missing API key.".to_owned()));
    }
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return openai_error(
            &s,
            400,
            (
                "400",
                "We could not parse the JSON body of your request.".to_owned(),
            ),
        );
    };
    let inputs: Vec<String> = match req.get("input") {
        Some(Value::String(one)) => vec![one.clone()],
        Some(Value::Array(many)) => match many
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
        {
            Some(v) => v,
            None => {
                return openai_error(
                    &s,
                    400,
                    (
                        "400",
                        "'$.input' must be a string or an array of strings".to_owned(),
                    ),
                );
            }
        },
        _ => {
            return openai_error(
                &s,
                400,
                ("400", "'input' is a required property".to_owned()),
            );
        }
    };
    let total = match check(&inputs, MAX_INPUTS) {
        Ok(t) => t,
        Err(r) => return openai_error(&s, 400, r),
    };
    let dims = dimensions(req.get("dimensions"));
    latency(&s, arrived).await;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"object": "embedding", "index": i, "embedding": vector(t, dims)}))
        .collect();
    s.stats.outcome("embeddings", "ok", total);
    s.stats.embedded(inputs.len() as u64);
    json_response(
        200,
        &[],
        &json!({
            "object": "list",
            "data": data,
            "model": req.get("model").cloned().unwrap_or(Value::Null),
            "usage": {"prompt_tokens": total, "total_tokens": total},
        }),
    )
}

fn gemini_error(s: &Shared, status: u16, (label, message): Refusal) -> Response {
    s.stats.outcome("gemini_embeddings", label, 0);
    let code = if status == 401 {
        "UNAUTHENTICATED"
    } else {
        "INVALID_ARGUMENT"
    };
    json_response(
        status,
        &[],
        &json!({"error": {"code": status, "message": message, "status": code}}),
    )
}

/// Gemini's `models/{model}:batchEmbedContents`: the text of each request
/// (its parts joined), the same vectors as OpenAI's route.
pub(super) async fn gemini_batch(
    s: &Shared,
    headers: &HeaderMap,
    q: &HashMap<String, String>,
    body: &Bytes,
) -> Response {
    let (_in_flight, arrived, authorized) = arrive(s, Format::Gemini, headers, q);
    if !authorized {
        return gemini_error(
            s,
            401,
            (
                "401",
                "API key not valid. Please pass a valid API key.".to_owned(),
            ),
        );
    }
    let Ok(req) = serde_json::from_slice::<Value>(body) else {
        return gemini_error(s, 400, ("400", "Invalid JSON payload received.".to_owned()));
    };
    let Some(requests) = req.get("requests").and_then(Value::as_array) else {
        return gemini_error(
            s,
            400,
            (
                "400",
                "* BatchEmbedContentsRequest.requests: must not be empty".to_owned(),
            ),
        );
    };
    let mut inputs = Vec::with_capacity(requests.len());
    let mut dims = DEFAULT_DIMENSIONS;
    for r in requests {
        let text: Option<Vec<&str>> =
            r.pointer("/content/parts")
                .and_then(Value::as_array)
                .map(|parts| {
                    parts
                        .iter()
                        .filter_map(|p| p.get("text").and_then(Value::as_str))
                        .collect()
                });
        match text {
            Some(t) if !t.is_empty() => inputs.push(t.join("")),
            _ => {
                return gemini_error(
                    s,
                    400,
                    ("400", "* content: must hold text parts".to_owned()),
                );
            }
        }
        dims = dimensions(r.get("outputDimensionality"));
    }
    if let Err(r) = check(&inputs, GEMINI_MAX_INPUTS) {
        return gemini_error(s, 400, r);
    }
    latency(s, arrived).await;
    let embeddings: Vec<Value> = inputs
        .iter()
        .map(|t| json!({"values": vector(t, dims)}))
        .collect();
    s.stats.outcome("gemini_embeddings", "ok", 0);
    s.stats.embedded(inputs.len() as u64);
    json_response(200, &[], &json!({ "embeddings": embeddings }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_are_unit_length_deterministic_and_differ_by_text() {
        let a = vector("hello", 8);
        assert_eq!(a, vector("hello", 8));
        assert_ne!(a, vector("hellp", 8));
        let len: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((len - 1.0).abs() < 1e-5, "{len}");
        assert_eq!(vector("x", 3).len(), 3);
    }
}
