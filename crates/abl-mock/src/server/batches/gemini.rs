//! Gemini's Batch Mode: `models/{m}:batchGenerateContent` with inline
//! requests or an uploaded JSONL, the job as a long-running operation at
//! `v1beta/batches/{id}` (list, get, `:cancel`), the Files API's resumable
//! upload (`upload/v1beta/files`: a start request, then the bytes) and
//! download (`v1beta/files/{id}:download?alt=media`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse as _, Response};
use serde_json::{Value, json};

use super::{Ran, StoredFile, due, lines, run, unix_now};
use crate::server::{Shared, add_headers, api_key, json_response, lock};
use crate::wire::Format;

const BATCH_TYPE: &str =
    "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch";
const OUTPUT_TYPE: &str =
    "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatchOutput";

/// Where a job's requests are.
#[derive(Debug, Clone)]
enum Source {
    /// Inline: each request with its metadata.
    Inline(Arc<Vec<(Value, Value)>>),
    /// An uploaded file (`files/…`).
    File(String),
}

/// A batch job.
#[derive(Debug, Clone)]
pub(super) struct Job {
    id: String,
    model: String,
    display_name: String,
    created: SystemTime,
    ready_at: Instant,
    source: Source,
    state: &'static str,
    /// requests, succeeded, failed.
    stats: [u64; 3],
    output: Option<Value>,
    ended: Option<SystemTime>,
    claimed: bool,
}

impl Job {
    fn json(&self) -> Value {
        let [total, ok, failed] = self.stats;
        let done = self.ended.is_some();
        let mut meta = json!({
            "@type": BATCH_TYPE,
            "model": format!("models/{}", self.model),
            "displayName": self.display_name,
            "state": self.state,
            "createTime": crate::rfc3339::format(self.created),
            "updateTime": crate::rfc3339::format(self.ended.unwrap_or(self.created)),
            "batchStats": {
                "requestCount": total.to_string(),
                "successfulRequestCount": ok.to_string(),
                "failedRequestCount": failed.to_string(),
                "pendingRequestCount": total.saturating_sub(ok + failed).to_string(),
            },
            "name": self.id,
        });
        if let Some(e) = self.ended {
            meta["endTime"] = json!(crate::rfc3339::format(e));
        }
        let mut op = json!({"name": self.id, "metadata": meta, "done": done});
        if let Some(o) = &self.output {
            op["metadata"]["output"] = o.clone();
            let mut r = o.clone();
            r["@type"] = json!(OUTPUT_TYPE);
            op["response"] = r;
        }
        op
    }
}

fn error(status: u16, word: &str, message: &str) -> Response {
    json_response(
        status,
        &[],
        &json!({"error": {"code": status, "message": message, "status": word}}),
    )
}

fn refuse_unauthenticated(headers: &HeaderMap, q: &HashMap<String, String>) -> Option<Response> {
    api_key(Format::Gemini, headers, q).is_none().then(|| {
        error(
            401,
            "UNAUTHENTICATED",
            "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.",
        )
    })
}

/// `POST v1beta/models/{model}:batchGenerateContent`.
pub(in crate::server) fn create(
    s: &Shared,
    model: &str,
    headers: &HeaderMap,
    q: &HashMap<String, String>,
    body: &Bytes,
) -> Response {
    // A failing create makes the job and loses the answer: the client
    // must find it rather than submit it again.
    let answer_lost = super::failing(s);
    if let Some(r) = refuse_unauthenticated(headers, q) {
        return r;
    }
    let Ok(mut req) = serde_json::from_slice::<Value>(body) else {
        return error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.");
    };
    let batch = req.get_mut("batch").map_or(Value::Null, Value::take);
    let display_name = batch
        .get("displayName")
        .or_else(|| batch.get("display_name"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let input = batch
        .get("inputConfig")
        .or_else(|| batch.get("input_config"))
        .unwrap_or(&Value::Null);
    let mut g = lock(&s.batches.inner);
    let (source, n) = if let Some(f) = input
        .get("fileName")
        .or_else(|| input.get("file_name"))
        .and_then(Value::as_str)
    {
        let Some(file) = g.files.get(f) else {
            return error(404, "NOT_FOUND", &format!("File {f} not found."));
        };
        (
            Source::File(f.to_owned()),
            lines(&file.bytes).count() as u64,
        )
    } else if let Some(list) = input
        .pointer("/requests/requests")
        .and_then(Value::as_array)
    {
        let reqs: Vec<(Value, Value)> = list
            .iter()
            .map(|r| {
                (
                    r.get("request").cloned().unwrap_or(Value::Null),
                    r.get("metadata").cloned().unwrap_or(Value::Null),
                )
            })
            .collect();
        let n = reqs.len() as u64;
        (Source::Inline(Arc::new(reqs)), n)
    } else {
        return error(
            400,
            "INVALID_ARGUMENT",
            "batch.input_config: one of file_name or requests is required",
        );
    };
    if n == 0 {
        return error(400, "INVALID_ARGUMENT", "The batch holds no requests.");
    }
    let job = Job {
        id: format!("batches/mock{:08}", g.next_id()),
        model: model.to_owned(),
        display_name,
        created: SystemTime::now(),
        ready_at: due(s),
        source,
        state: "BATCH_STATE_PENDING",
        stats: [n, 0, 0],
        output: None,
        ended: None,
        claimed: false,
    };
    let reply = job.json();
    g.gemini.insert(job.id.clone(), job);
    drop(g);
    s.stats.batch_created(n);
    if answer_lost {
        return super::server_error(Format::Gemini);
    }
    json_response(200, &[], &reply)
}

/// `GET v1beta/batches?pageSize=N&pageToken=T`: newest first.
pub(in crate::server) async fn list(
    State(s): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = refuse_unauthenticated(&headers, &q) {
        return r;
    }
    let size = q
        .get("pageSize")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(50)
        .clamp(1, 1000);
    let start = q
        .get("pageToken")
        .and_then(|t| t.parse::<usize>().ok())
        .unwrap_or(0);
    let ids: Vec<String> = lock(&s.batches.inner)
        .gemini
        .keys()
        .rev()
        .cloned()
        .collect();
    let page: Vec<Value> = ids
        .iter()
        .skip(start)
        .take(size)
        .filter_map(|id| advance(&s, id).map(|j| j.json()))
        .collect();
    let mut body = json!({"operations": page});
    if start + size < ids.len() {
        body["nextPageToken"] = json!((start + size).to_string());
    }
    json_response(200, &[], &body)
}

/// `GET v1beta/batches/{id}`.
pub(in crate::server) async fn get(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if super::failing(&s) {
        return super::server_error(Format::Gemini);
    }
    if let Some(r) = refuse_unauthenticated(&headers, &q) {
        return r;
    }
    match advance(&s, &format!("batches/{id}")) {
        Some(j) => json_response(200, &[], &j.json()),
        None => error(404, "NOT_FOUND", &format!("Batch batches/{id} not found.")),
    }
}

/// `POST v1beta/batches/{id}:cancel`: a job not finished ends cancelled
/// with nothing run.
pub(in crate::server) async fn cancel(
    State(s): State<Arc<Shared>>,
    Path(action): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = refuse_unauthenticated(&headers, &q) {
        return r;
    }
    let Some(id) = action.strip_suffix(":cancel") else {
        return error(404, "NOT_FOUND", &format!("no method {action}"));
    };
    let id = format!("batches/{id}");
    let mut g = lock(&s.batches.inner);
    let Some(j) = g.gemini.get_mut(&id) else {
        return error(404, "NOT_FOUND", &format!("Batch {id} not found."));
    };
    if j.ended.is_none() && !j.claimed && Instant::now() < j.ready_at {
        j.state = "BATCH_STATE_CANCELLED";
        j.ended = Some(SystemTime::now());
    }
    drop(g);
    json_response(200, &[], &json!({}))
}

/// `POST upload/v1beta/files`: `x-goog-upload-command: start` names the
/// file and answers with an upload URL; `upload, finalize` to that URL
/// sends the bytes.
pub(in crate::server) async fn upload(
    State(s): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or("");
    let command = header("x-goog-upload-command").to_ascii_lowercase();
    let mut g = lock(&s.batches.inner);
    if command == "start" {
        // The start needs the key; the upload URL it hands out carries its
        // own upload id (the SDK sends no key there).
        if let Some(r) = refuse_unauthenticated(&headers, &q) {
            return r;
        }
        if header("x-goog-upload-protocol") != "resumable" {
            return error(
                400,
                "INVALID_ARGUMENT",
                "x-goog-upload-protocol: resumable is required",
            );
        }
        let name = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| {
                v.pointer("/file/displayName")
                    .or_else(|| v.pointer("/file/display_name"))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        let upload_id = format!("mock-upload-{}", g.next_id());
        g.uploads.insert(upload_id.clone(), name);
        drop(g);
        let host = header("host");
        let url = format!("http://{host}/upload/v1beta/files?upload_id={upload_id}");
        let mut r = json_response(200, &[], &json!({}));
        add_headers(
            &mut r,
            &[
                ("x-goog-upload-url".into(), url),
                ("x-goog-upload-status".into(), "active".into()),
            ],
        );
        return r;
    }
    if !command.contains("upload") || !command.contains("finalize") {
        return error(
            400,
            "INVALID_ARGUMENT",
            "x-goog-upload-command must be start, or upload, finalize",
        );
    }
    let Some(name) = q.get("upload_id").and_then(|u| g.uploads.remove(u)) else {
        return error(404, "NOT_FOUND", "no such upload");
    };
    let fid = format!("files/mock{:08}", g.next_id());
    let file = stored(name, "batch", body.to_vec());
    let reply = json!({"file": file_json(&fid, &file)});
    g.files.insert(fid, file);
    drop(g);
    s.stats.batch_file_uploaded();
    let mut r = json_response(200, &[], &reply);
    add_headers(&mut r, &[("x-goog-upload-status".into(), "final".into())]);
    r
}

fn stored(name: String, purpose: &str, bytes: Vec<u8>) -> StoredFile {
    StoredFile {
        filename: name,
        purpose: purpose.into(),
        bytes: Arc::new(bytes),
        created_at: unix_now(),
    }
}

fn file_json(id: &str, f: &StoredFile) -> Value {
    json!({"name": id, "displayName": f.filename, "mimeType": "application/jsonl",
        "sizeBytes": f.bytes.len().to_string(), "state": "ACTIVE", "source": if f.purpose == "batch" { "UPLOADED" } else { "GENERATED" },
        "uri": format!("https://generativelanguage.googleapis.com/v1beta/{id}")})
}

/// `GET v1beta/files/{id}:download?alt=media` (also under `download/`).
pub(in crate::server) async fn download(
    State(s): State<Arc<Shared>>,
    Path(action): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if super::failing(&s) {
        return super::server_error(Format::Gemini);
    }
    if let Some(r) = refuse_unauthenticated(&headers, &q) {
        return r;
    }
    let Some(id) = action.strip_suffix(":download") else {
        return error(404, "NOT_FOUND", &format!("no method {action}"));
    };
    let bytes = lock(&s.batches.inner)
        .files
        .get(&format!("files/{id}"))
        .map(|f| Arc::clone(&f.bytes));
    match bytes {
        Some(b) => (
            [("content-type", "application/octet-stream")],
            Bytes::from(b.as_ref().clone()),
        )
            .into_response(),
        None => error(404, "NOT_FOUND", &format!("File files/{id} not found.")),
    }
}

/// A `google.rpc.Status` for an online error body (gRPC codes, as batch
/// results report them).
fn status_of(http: u16, body: &Value) -> Value {
    let code = match http {
        400 => 3,
        401 => 16,
        403 => 7,
        404 => 5,
        429 => 8,
        503 | 529 => 14,
        504 => 4,
        _ => 13,
    };
    json!({"code": code,
        "message": body.pointer("/error/message").cloned().unwrap_or_else(|| json!("error")),
        "status": body.pointer("/error/status").cloned().unwrap_or_else(|| json!("INTERNAL"))})
}

/// The job `id`, run to its end first if it is due.
fn advance(s: &Shared, id: &str) -> Option<Job> {
    let (job, file) = {
        let mut g = lock(&s.batches.inner);
        let job = g.gemini.get(id)?.clone();
        if job.ended.is_some() || Instant::now() < job.ready_at || job.claimed {
            return Some(job);
        }
        let file = match &job.source {
            Source::File(f) => Some(Arc::clone(&g.files.get(f)?.bytes)),
            Source::Inline(_) => None,
        };
        let j = g.gemini.get_mut(id)?;
        j.claimed = true;
        j.state = "BATCH_STATE_RUNNING";
        (job, file)
    };
    // Each request with its key: from the file's lines, or inline.
    let requests: Vec<(Value, Value)> = match (&job.source, &file) {
        (Source::Inline(r), _) => r.as_ref().clone(),
        (Source::File(_), Some(bytes)) => lines(bytes)
            .map(|l| {
                let v: Value = serde_json::from_slice(l).unwrap_or(Value::Null);
                (
                    v.get("request").cloned().unwrap_or(Value::Null),
                    v.get("key").cloned().unwrap_or(Value::Null),
                )
            })
            .collect(),
        (Source::File(_), None) => Vec::new(),
    };
    let inline = matches!(job.source, Source::Inline(_));
    let (mut ok, mut failed, mut expired) = (0u64, 0u64, false);
    let mut results = Vec::with_capacity(requests.len());
    for (request, tag) in &requests {
        // Inline requests carry `metadata`; file lines a `key`.
        let key = if inline {
            tag.get("key").and_then(Value::as_str).unwrap_or_default()
        } else {
            tag.as_str().unwrap_or_default()
        };
        let outcome = match run(s, Format::Gemini, request, Some(&job.model), key) {
            Ran::Answer(b) => {
                ok += 1;
                json!({"response": b})
            }
            Ran::Failed(status, b) => {
                failed += 1;
                json!({"error": status_of(status, &b)})
            }
            Ran::Invalid(m) => {
                failed += 1;
                json!({"error": {"code": 3, "message": m, "status": "INVALID_ARGUMENT"}})
            }
            Ran::Expired => {
                expired = true;
                continue;
            }
        };
        let mut line = outcome;
        if inline {
            line["metadata"] = tag.clone();
        } else {
            line["key"] = json!(key);
        }
        results.push(line);
    }
    let mut g = lock(&s.batches.inner);
    let output = if inline {
        json!({"inlinedResponses": {"inlinedResponses": results}})
    } else {
        let mut bytes = Vec::new();
        for r in &results {
            bytes.extend_from_slice(r.to_string().as_bytes());
            bytes.push(b'\n');
        }
        let fid = format!("files/mock{:08}", g.next_id());
        g.files.insert(
            fid.clone(),
            stored(format!("{id}-output"), "batch_output", bytes),
        );
        json!({"responsesFile": fid})
    };
    let j = g.gemini.get_mut(id)?;
    j.state = if expired {
        "BATCH_STATE_EXPIRED"
    } else {
        "BATCH_STATE_SUCCEEDED"
    };
    j.stats = [job.stats[0], ok, failed];
    j.output = Some(output);
    j.ended = Some(SystemTime::now());
    Some(j.clone())
}
