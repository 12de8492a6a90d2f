//! OpenAI's Files and Batches APIs: a JSONL of requests uploaded, a job
//! made of it, its results in an output and an error file.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Multipart, Path, Query, State};
use axum::response::{IntoResponse as _, Response};
use serde_json::{Value, json};

use super::{Inner, Ran, StoredFile, due, lines, run, unix_now};
use crate::server::{Shared, json_response, lock};
use crate::wire::Format;

#[derive(Debug, Clone)]
pub(super) struct Job {
    id: String,
    input_file_id: String,
    endpoint: String,
    window: String,
    metadata: Value,
    created_at: u64,
    ready_at: Instant,
    status: &'static str,
    total: u64,
    completed: u64,
    failed: u64,
    output_file_id: Option<String>,
    error_file_id: Option<String>,
    ended_at: Option<u64>,
}

impl Job {
    fn json(&self) -> Value {
        let ended = |s: &str| (self.status == s).then_some(self.ended_at).flatten();
        json!({
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "errors": null,
            "input_file_id": self.input_file_id,
            "completion_window": self.window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "in_progress_at": self.created_at,
            "expires_at": self.created_at + 86_400,
            "completed_at": ended("completed"),
            "expired_at": ended("expired"),
            "cancelled_at": ended("cancelled"),
            "request_counts": {"total": self.total, "completed": self.completed, "failed": self.failed},
            "metadata": self.metadata,
        })
    }
}

fn error(status: u16, message: &str) -> Response {
    json_response(
        status,
        &[],
        &json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": null}}),
    )
}

/// `POST /v1/files`: a multipart upload (`purpose`, `file`).
pub(in crate::server) async fn upload(
    State(s): State<Arc<Shared>>,
    mut form: Multipart,
) -> Response {
    let (mut purpose, mut file) = (None, None);
    loop {
        match form.next_field().await {
            Ok(Some(field)) => {
                let name = field.name().unwrap_or_default().to_owned();
                let filename = field.file_name().map(str::to_owned);
                let Ok(data) = field.bytes().await else {
                    return error(400, "the upload was cut short");
                };
                match name.as_str() {
                    "purpose" => purpose = Some(String::from_utf8_lossy(&data).into_owned()),
                    "file" => {
                        file = Some((filename.unwrap_or_else(|| "upload.jsonl".into()), data));
                    }
                    _ => {}
                }
            }
            Ok(None) => break,
            Err(e) => return error(400, &format!("invalid multipart body: {e}")),
        }
    }
    let (Some(purpose), Some((filename, data))) = (purpose, file) else {
        return error(400, "'purpose' and 'file' are required");
    };
    let mut g = lock(&s.batches.inner);
    let id = format!("file-mock{:08}", g.next_id());
    let f = StoredFile {
        filename,
        purpose,
        bytes: Arc::new(data.to_vec()),
        created_at: unix_now(),
    };
    let body = file_json(&id, &f);
    g.files.insert(id, f);
    s.stats.batch_file_uploaded();
    json_response(200, &[], &body)
}

fn file_json(id: &str, f: &StoredFile) -> Value {
    json!({"id": id, "object": "file", "bytes": f.bytes.len(), "created_at": f.created_at,
           "filename": f.filename, "purpose": f.purpose, "status": "processed"})
}

/// `GET /v1/files/{id}/content`.
pub(in crate::server) async fn content(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Response {
    if super::failing(&s) {
        return super::server_error(Format::Responses);
    }
    let bytes = lock(&s.batches.inner)
        .files
        .get(&id)
        .map(|f| Arc::clone(&f.bytes));
    match bytes {
        Some(b) => (
            [("content-type", "application/jsonl")],
            Bytes::from(b.as_ref().clone()),
        )
            .into_response(),
        None => error(404, &format!("No such File object: {id}")),
    }
}

/// `POST /v1/batches`.
pub(in crate::server) async fn create(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    // A failing create makes the job and loses the answer: the client
    // must find it rather than submit it again.
    let answer_lost = super::failing(&s);
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return error(400, "the body is not JSON");
    };
    let field = |k: &str| req.get(k).and_then(Value::as_str).map(str::to_owned);
    let (Some(input), Some(endpoint)) = (field("input_file_id"), field("endpoint")) else {
        return error(400, "'input_file_id' and 'endpoint' are required");
    };
    if !matches!(endpoint.as_str(), "/v1/responses" | "/v1/chat/completions") {
        return error(400, &format!("endpoint {endpoint} is not supported"));
    }
    let mut g = lock(&s.batches.inner);
    let Some(n) = g.files.get(&input).map(|f| lines(&f.bytes).count() as u64) else {
        return error(404, &format!("No such File object: {input}"));
    };
    let job = Job {
        id: format!("batch_mock{:08}", g.next_id()),
        input_file_id: input,
        endpoint,
        window: field("completion_window").unwrap_or_else(|| "24h".into()),
        metadata: req.get("metadata").cloned().unwrap_or(Value::Null),
        created_at: unix_now(),
        ready_at: due(&s),
        status: "in_progress",
        total: n,
        completed: 0,
        failed: 0,
        output_file_id: None,
        error_file_id: None,
        ended_at: None,
    };
    let body = job.json();
    g.openai.insert(job.id.clone(), job);
    s.stats.batch_created(n);
    if answer_lost {
        return super::server_error(Format::Responses);
    }
    json_response(200, &[], &body)
}

/// `GET /v1/batches/{id}`: the job, its results made once it is due.
pub(in crate::server) async fn get(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Response {
    if super::failing(&s) {
        return super::server_error(Format::Responses);
    }
    match advance(&s, &id) {
        Some(j) => json_response(200, &[], &j.json()),
        None => error(404, &format!("No such Batch object: {id}")),
    }
}

/// `GET /v1/batches?limit=N&after=ID`: newest first.
pub(in crate::server) async fn list(
    State(s): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let limit = q
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(20)
        .clamp(1, 100);
    let ids: Vec<String> = lock(&s.batches.inner)
        .openai
        .keys()
        .rev()
        .cloned()
        .collect();
    let start = q
        .get("after")
        .and_then(|a| ids.iter().position(|i| i == a).map(|p| p + 1))
        .unwrap_or(0);
    let page: Vec<Value> = ids
        .iter()
        .skip(start)
        .take(limit)
        .filter_map(|id| advance(&s, id).map(|j| j.json()))
        .collect();
    let has_more = start + page.len() < ids.len();
    json_response(
        200,
        &[],
        &json!({"object": "list", "data": page, "first_id": page.first().map(|j| j["id"].clone()),
                "last_id": page.last().map(|j| j["id"].clone()), "has_more": has_more}),
    )
}

/// `POST /v1/batches/{id}/cancel`: a job not finished ends cancelled with
/// nothing executed.
pub(in crate::server) async fn cancel(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Response {
    let mut g = lock(&s.batches.inner);
    let Some(job) = g.openai.get_mut(&id) else {
        return error(404, &format!("No such Batch object: {id}"));
    };
    if job.status == "in_progress" && Instant::now() < job.ready_at {
        job.status = "cancelled";
        job.ended_at = Some(unix_now());
    }
    let body = job.json();
    drop(g);
    json_response(200, &[], &body)
}

/// The job `id`, run to its end first if it is due.
fn advance(s: &Shared, id: &str) -> Option<Job> {
    let (job, input) = {
        let mut g = lock(&s.batches.inner);
        let job = g.openai.get(id)?.clone();
        if job.status != "in_progress" || Instant::now() < job.ready_at {
            return Some(job);
        }
        let input = Arc::clone(&g.files.get(&job.input_file_id)?.bytes);
        // Run once: a poll arriving meanwhile sees it finalizing.
        g.openai.get_mut(id)?.status = "finalizing";
        (job, input)
    };
    let format = if job.endpoint == "/v1/responses" {
        Format::Responses
    } else {
        Format::Chat
    };
    let (mut out, mut errs, mut completed, mut failed, mut expired) =
        (Vec::new(), Vec::new(), 0, 0, false);
    for line in lines(&input) {
        let (ok, record) = execute(s, format, line, &mut expired);
        let target = if ok { &mut out } else { &mut errs };
        target.extend_from_slice(record.to_string().as_bytes());
        target.push(b'\n');
        if ok {
            completed += 1;
        } else {
            failed += 1;
        }
    }
    let mut g = lock(&s.batches.inner);
    let store = |bytes: Vec<u8>, g: &mut Inner| {
        let fid = format!("file-mock{:08}", g.next_id());
        g.files.insert(
            fid.clone(),
            StoredFile {
                filename: format!("{id}_output.jsonl"),
                purpose: "batch_output".into(),
                bytes: Arc::new(bytes),
                created_at: unix_now(),
            },
        );
        fid
    };
    let output_file_id = (!out.is_empty()).then(|| store(out, &mut g));
    let error_file_id = (!errs.is_empty()).then(|| store(errs, &mut g));
    let job = g.openai.get_mut(id)?;
    job.status = if expired { "expired" } else { "completed" };
    job.completed = completed;
    job.failed = failed;
    job.output_file_id = output_file_id;
    job.error_file_id = error_file_id;
    job.ended_at = Some(unix_now());
    Some(job.clone())
}

/// One line of a job: whether it succeeded, and its result line.
fn execute(s: &Shared, format: Format, line: &[u8], expired: &mut bool) -> (bool, Value) {
    let Ok(req) = serde_json::from_slice::<Value>(line) else {
        return (
            false,
            json!({"id": null, "custom_id": null, "response": null,
            "error": {"code": "invalid_json_line", "message": "This line is not parseable as valid JSON."}}),
        );
    };
    let custom_id = req.get("custom_id").cloned().unwrap_or(Value::Null);
    let fail = |code: &str, message: String| json!({"id": null, "custom_id": custom_id, "response": null, "error": {"code": code, "message": message}});
    let Some(body) = req.get("body") else {
        return (
            false,
            fail("missing_required_parameter", "'body' is required".into()),
        );
    };
    let seq = s.seq.load(std::sync::atomic::Ordering::Relaxed);
    let reply = |status: u16, b: Value| {
        json!({"id": format!("batch_req_{seq:08}"), "custom_id": custom_id,
        "response": {"status_code": status, "request_id": format!("req_mock{seq:08}"), "body": b}, "error": null})
    };
    match run(
        s,
        format,
        body,
        None,
        custom_id.as_str().unwrap_or_default(),
    ) {
        Ran::Answer(b) => (true, reply(200, b)),
        Ran::Failed(status, b) => (false, reply(status, b)),
        Ran::Expired => {
            *expired = true;
            (
                false,
                fail(
                    "batch_expired",
                    "This request could not be executed before the completion window expired."
                        .into(),
                ),
            )
        }
        Ran::Invalid(e) => (false, fail("invalid_request", e)),
    }
}
