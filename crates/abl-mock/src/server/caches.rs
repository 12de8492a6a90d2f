//! Gemini `cachedContents`: create, list, get, update (TTL) and delete,
//! over the mock's [`CacheStore`](crate::cache::CacheStore).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{Value, json};

use super::{Shared, api_key, json_response, tokens};
use crate::cache::parse_ttl;
use crate::wire::{self, Format};

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

pub(super) async fn cache_create(
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

pub(super) async fn cache_list(
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

pub(super) async fn cache_get(
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

pub(super) async fn cache_patch(
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

pub(super) async fn cache_delete(
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
