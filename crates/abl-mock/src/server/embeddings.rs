//! OpenAI's embeddings route (`POST /v1/embeddings`): many inputs per
//! request, answered with deterministic unit vectors computed from each
//! input's text, so a test can check every vector it gets back.
//!
//! The limits are OpenAI's: at most [`MAX_INPUTS`] inputs and
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

fn invalid(s: &Shared, label: &str, message: &str) -> Response {
    s.stats.outcome("embeddings", label, 0);
    json_response(
        400,
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
    let arrived = Instant::now();
    let _in_flight = s.stats.arrive(
        arrived,
        Duration::from_millis(s.config.cooldown_grace_ms),
        None,
    );
    if !s.config.no_auth && api_key(Format::Chat, &headers, &q).is_none() {
        s.stats.outcome("embeddings", "401", 0);
        return json_response(
            401,
            &[],
            &json!({"error": {"message": "Missing API key.", "type": "invalid_request_error", "code": "invalid_api_key"}}),
        );
    }
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return invalid(
            &s,
            "400",
            "We could not parse the JSON body of your request.",
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
                return invalid(
                    &s,
                    "400",
                    "'$.input' must be a string or an array of strings",
                );
            }
        },
        _ => return invalid(&s, "400", "'input' is a required property"),
    };
    if inputs.is_empty() || inputs.len() > MAX_INPUTS {
        return invalid(
            &s,
            "400_inputs",
            &format!(
                "'$.input' is invalid: it must hold 1 to {MAX_INPUTS} inputs, not {}",
                inputs.len()
            ),
        );
    }
    if inputs.iter().any(String::is_empty) {
        return invalid(&s, "400", "'$.input' is invalid: an input is empty");
    }
    let counts: Vec<u64> = inputs.iter().map(|t| tokens(t.chars().count())).collect();
    let total: u64 = counts.iter().sum();
    if total > MAX_REQUEST_TOKENS {
        return invalid(
            &s,
            "400_tokens",
            &format!("Requested {total} tokens, max {MAX_REQUEST_TOKENS} tokens per request"),
        );
    }
    if inputs.iter().any(|t| t.contains("POISON")) {
        return invalid(
            &s,
            "400_too_long",
            "This model's maximum context length is 8192 tokens, however you requested more tokens in the input.",
        );
    }
    let dimensions = req
        .get("dimensions")
        .and_then(Value::as_u64)
        .and_then(|d| usize::try_from(d).ok())
        .filter(|d| (1..=4096).contains(d))
        .unwrap_or(DEFAULT_DIMENSIONS);
    let latency = Duration::from_millis(s.config.latency_ms);
    if !latency.is_zero() {
        crate::timer::sleep_until(arrived + latency).await;
    }
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(
            |(i, t)| json!({"object": "embedding", "index": i, "embedding": vector(t, dimensions)}),
        )
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
