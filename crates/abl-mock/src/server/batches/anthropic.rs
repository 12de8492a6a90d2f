//! Anthropic's Message Batches: `POST /v1/messages/batches` with every
//! request in one body, `GET …/{id}`, `GET /v1/messages/batches` (newest
//! first, `after_id` / `before_id`), `POST …/{id}/cancel`, and the results
//! JSONL at `…/{id}/results` once the batch has ended.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse as _, Response};
use serde_json::{Value, json};

use super::{Ran, StoredFile, due, run, unix_now};
use crate::server::{Shared, api_key, json_response, lock};
use crate::wire::Format;

/// A message batch.
#[derive(Debug, Clone)]
pub(super) struct Job {
    id: String,
    created: SystemTime,
    ready_at: Instant,
    /// Its requests: custom id and params.
    requests: Arc<Vec<(String, Value)>>,
    status: &'static str,
    /// processing, succeeded, errored, canceled, expired.
    counts: [u64; 5],
    cancel_initiated: Option<SystemTime>,
    ended: Option<SystemTime>,
    /// The file of its results, once ended.
    results: Option<String>,
    /// Its requests are being run (by the request that found it due).
    claimed: bool,
}

impl Job {
    fn json(&self, base: &str) -> Value {
        let t = |t: Option<SystemTime>| t.map(crate::rfc3339::format);
        let [processing, succeeded, errored, canceled, expired] = self.counts;
        json!({
            "id": self.id,
            "type": "message_batch",
            "processing_status": self.status,
            "request_counts": {"processing": processing, "succeeded": succeeded,
                "errored": errored, "canceled": canceled, "expired": expired},
            "created_at": crate::rfc3339::format(self.created),
            "expires_at": crate::rfc3339::format(self.created + std::time::Duration::from_secs(86_400)),
            "ended_at": t(self.ended),
            "cancel_initiated_at": t(self.cancel_initiated),
            "archived_at": null,
            "results_url": self.results.as_ref().map(|_| format!("{base}/v1/messages/batches/{}/results", self.id)),
        })
    }
}

fn error(status: u16, kind: &str, message: &str) -> Response {
    json_response(
        status,
        &[],
        &json!({"type": "error", "error": {"type": kind, "message": message}}),
    )
}

/// The key check of every route: 401 without `x-api-key`.
fn refuse_unauthenticated(headers: &HeaderMap) -> Option<Response> {
    api_key(Format::Anthropic, headers, &HashMap::new())
        .is_none()
        .then(|| error(401, "authentication_error", "x-api-key header is required"))
}

/// The mock's own address as clients reach it (for `results_url`).
fn base(headers: &HeaderMap) -> String {
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    format!("http://{host}")
}

fn valid_custom_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// `POST /v1/messages/batches`.
pub(in crate::server) async fn create(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // A failing create makes the job and loses the answer: the client
    // must find it rather than submit it again.
    let answer_lost = super::failing(&s);
    if let Some(r) = refuse_unauthenticated(&headers) {
        return r;
    }
    let Ok(mut req) = serde_json::from_slice::<Value>(&body) else {
        return error(400, "invalid_request_error", "the body is not JSON");
    };
    let Some(Value::Array(list)) = req.get_mut("requests").map(Value::take) else {
        return error(400, "invalid_request_error", "requests: Field required");
    };
    if list.is_empty() || list.len() > 100_000 {
        return error(
            400,
            "invalid_request_error",
            "requests: a batch holds 1 to 100,000 requests",
        );
    }
    let mut seen = HashSet::new();
    let mut requests = Vec::with_capacity(list.len());
    for (i, mut r) in list.into_iter().enumerate() {
        let cid = r
            .get("custom_id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if !valid_custom_id(&cid) {
            return error(
                400,
                "invalid_request_error",
                &format!(
                    "requests.{i}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"
                ),
            );
        }
        if !seen.insert(cid.clone()) {
            return error(
                400,
                "invalid_request_error",
                &format!("requests.{i}.custom_id: Duplicate custom_id: {cid}"),
            );
        }
        let Some(params) = r
            .get_mut("params")
            .map(Value::take)
            .filter(Value::is_object)
        else {
            return error(
                400,
                "invalid_request_error",
                &format!("requests.{i}.params: Field required"),
            );
        };
        requests.push((cid, params));
    }
    let n = requests.len() as u64;
    let mut g = lock(&s.batches.inner);
    let job = Job {
        id: format!("msgbatch_mock{:08}", g.next_id()),
        created: SystemTime::now(),
        ready_at: due(&s),
        requests: Arc::new(requests),
        status: "in_progress",
        counts: [n, 0, 0, 0, 0],
        cancel_initiated: None,
        ended: None,
        results: None,
        claimed: false,
    };
    let reply = job.json(&base(&headers));
    g.anthropic.insert(job.id.clone(), job);
    drop(g);
    s.stats.batch_created(n);
    if answer_lost {
        return super::server_error(Format::Anthropic);
    }
    json_response(200, &[], &reply)
}

/// `GET /v1/messages/batches/{id}`.
pub(in crate::server) async fn get(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if super::failing(&s) {
        return super::server_error(Format::Anthropic);
    }
    if let Some(r) = refuse_unauthenticated(&headers) {
        return r;
    }
    match advance(&s, &id) {
        Some(j) => json_response(200, &[], &j.json(&base(&headers))),
        None => error(404, "not_found_error", &format!("No such batch: {id}")),
    }
}

/// `GET /v1/messages/batches?limit=N&after_id=ID&before_id=ID`: newest first.
pub(in crate::server) async fn list(
    State(s): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = refuse_unauthenticated(&headers) {
        return r;
    }
    let limit = q
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(20)
        .clamp(1, 1000);
    let ids: Vec<String> = lock(&s.batches.inner)
        .anthropic
        .keys()
        .rev()
        .cloned()
        .collect();
    let at = |key: &str| q.get(key).and_then(|a| ids.iter().position(|i| i == a));
    let (start, end) = match (at("after_id"), at("before_id")) {
        (Some(a), _) => (a + 1, ids.len()),
        (None, Some(b)) => (b.saturating_sub(limit), b),
        (None, None) => (0, ids.len()),
    };
    let base = base(&headers);
    let page: Vec<Value> = ids[start.min(end)..end]
        .iter()
        .take(limit)
        .filter_map(|id| advance(&s, id).map(|j| j.json(&base)))
        .collect();
    let has_more = start + page.len() < end;
    json_response(
        200,
        &[],
        &json!({"data": page, "has_more": has_more,
            "first_id": page.first().map(|j| j["id"].clone()),
            "last_id": page.last().map(|j| j["id"].clone())}),
    )
}

/// `POST /v1/messages/batches/{id}/cancel`: a batch not ended ends with
/// its requests canceled.
pub(in crate::server) async fn cancel(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = refuse_unauthenticated(&headers) {
        return r;
    }
    let mut g = lock(&s.batches.inner);
    let Some(job) = g.anthropic.get(&id).cloned() else {
        return error(404, "not_found_error", &format!("No such batch: {id}"));
    };
    if job.status != "in_progress" || Instant::now() >= job.ready_at || job.claimed {
        drop(g);
        return match advance(&s, &id) {
            Some(j) => json_response(200, &[], &j.json(&base(&headers))),
            None => error(404, "not_found_error", &format!("No such batch: {id}")),
        };
    }
    let out: Vec<u8> = job
        .requests
        .iter()
        .flat_map(|(cid, _)| {
            let mut l = json!({"custom_id": cid, "result": {"type": "canceled"}})
                .to_string()
                .into_bytes();
            l.push(b'\n');
            l
        })
        .collect();
    let fid = store_results(&mut g, &id, out);
    let Some(j) = g.anthropic.get_mut(&id) else {
        return error(404, "not_found_error", &format!("No such batch: {id}"));
    };
    let now = SystemTime::now();
    j.status = "ended";
    j.counts = [0, 0, 0, j.requests.len() as u64, 0];
    j.cancel_initiated = Some(now);
    j.ended = Some(now);
    j.results = Some(fid);
    let reply = j.json(&base(&headers));
    drop(g);
    json_response(200, &[], &reply)
}

/// `GET /v1/messages/batches/{id}/results`: the results JSONL.
pub(in crate::server) async fn results(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if super::failing(&s) {
        return super::server_error(Format::Anthropic);
    }
    if let Some(r) = refuse_unauthenticated(&headers) {
        return r;
    }
    let g = lock(&s.batches.inner);
    let file = g
        .anthropic
        .get(&id)
        .and_then(|j| j.results.as_ref())
        .and_then(|f| g.files.get(f))
        .map(|f| Arc::clone(&f.bytes));
    drop(g);
    match file {
        Some(b) => (
            [("content-type", "application/binary")],
            Bytes::from(b.as_ref().clone()),
        )
            .into_response(),
        None => error(
            404,
            "not_found_error",
            &format!("batch {id} has no results yet"),
        ),
    }
}

fn store_results(g: &mut super::Inner, id: &str, bytes: Vec<u8>) -> String {
    let fid = format!("file-mock{:08}", g.next_id());
    g.files.insert(
        fid.clone(),
        StoredFile {
            filename: format!("{id}_results.jsonl"),
            purpose: "batch_output".into(),
            bytes: Arc::new(bytes),
            created_at: unix_now(),
        },
    );
    fid
}

/// The batch `id`, run to its end first if it is due.
fn advance(s: &Shared, id: &str) -> Option<Job> {
    let job = {
        let mut g = lock(&s.batches.inner);
        let job = g.anthropic.get_mut(id)?;
        if job.status != "in_progress" || Instant::now() < job.ready_at || job.claimed {
            return Some(job.clone());
        }
        // Run once: a poll arriving meanwhile sees it still in progress.
        job.claimed = true;
        job.clone()
    };
    let mut counts = [0u64; 5];
    let mut out = Vec::new();
    for (cid, params) in job.requests.iter() {
        let (slot, result) = match run(s, Format::Anthropic, params, None, cid) {
            Ran::Answer(m) => (1, json!({"type": "succeeded", "message": m})),
            Ran::Failed(_, e) => (2, json!({"type": "errored", "error": e})),
            Ran::Invalid(m) => (
                2,
                json!({"type": "errored", "error": {"type": "error",
                    "error": {"type": "invalid_request_error", "message": m}}}),
            ),
            Ran::Expired => (4, json!({"type": "expired"})),
        };
        counts[slot] += 1;
        out.extend_from_slice(
            json!({"custom_id": cid, "result": result})
                .to_string()
                .as_bytes(),
        );
        out.push(b'\n');
    }
    let mut g = lock(&s.batches.inner);
    let fid = store_results(&mut g, id, out);
    let j = g.anthropic.get_mut(id)?;
    j.status = "ended";
    j.counts = counts;
    j.ended = Some(SystemTime::now());
    j.results = Some(fid);
    Some(j.clone())
}
