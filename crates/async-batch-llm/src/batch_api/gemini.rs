//! Gemini's Batch Mode: `POST v1beta/models/{m}:batchGenerateContent`
//! with the requests inline (`inputConfig.requests`, up to 20 MB) or as a
//! JSONL uploaded through the Files API (`inputConfig.fileName`, up to
//! 2 GB); the job is a long-running operation `batches/{id}` whose
//! `metadata.state` moves from `BATCH_STATE_PENDING` to `…_SUCCEEDED`
//! (or failed, cancelled, expired), with the responses inline in the job
//! or in a results file (`responsesFile`) read at
//! `v1beta/files/{id}:download?alt=media`.
//!
//! Each job's `displayName` is the caller's key, so a caller killed
//! between "the job was created" and "its name was saved" finds it with
//! [`GeminiBatches::find`].
//!
//! Inline jobs return their responses inside the job object, read whole;
//! abl therefore sends a job inline only when its request lines are small
//! ([`GeminiBatches::INLINE_MAX_BYTES`]) and uploads a file above that, so
//! results of any size are read line by line.

use serde_json::{Value, json};

use super::job::{count, unix_secs};
use super::{BatchJob, BatchLine, BatchResults, JobCounts, JobStatus};
use crate::error::{CallError, Error, ErrorCategory};
use crate::model::{LlmRequest, Model as _};
use crate::providers::http::{Endpoint, parse_body, shape_error};
use crate::providers::{GeminiConfig, GeminiModel};

/// The Batch Mode client of one Gemini key (any base URL).
pub struct GeminiBatches {
    endpoint: Endpoint,
    model: GeminiModel,
}

impl std::fmt::Debug for GeminiBatches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeminiBatches")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl GeminiBatches {
    /// Jobs whose request lines total at most this go inline (Gemini takes
    /// 20 MB inline; inline responses come back in one body).
    pub const INLINE_MAX_BYTES: u64 = 2_000_000;

    /// A client for `config` (its model is the one the jobs run on).
    pub fn new(config: GeminiConfig) -> Result<Self, Error> {
        let model = GeminiModel::new(config)?;
        Ok(Self {
            endpoint: model.endpoint().clone(),
            model,
        })
    }

    /// The request line for `request`: the same body the online route
    /// (`generateContent`) sends, under the caller's key, attachments
    /// included.
    pub async fn line(&self, custom_id: &str, request: &LlmRequest) -> Result<Vec<u8>, CallError> {
        super::line_bytes(request, self.model.part_policy(), |r| {
            Ok(json!({"key": custom_id, "request": self.model.request_body(r, None)?}))
        })
        .await
    }

    /// Sends the job file at `path` as one job named `key`: inline when it
    /// is small, else uploaded (streamed from disk) and named by file.
    pub async fn submit(&self, path: &std::path::Path, key: &str) -> Result<BatchJob, CallError> {
        let len = tokio::fs::metadata(path)
            .await
            .map_err(|e| super::body::unreadable(path, &e))?
            .len();
        let input = if len <= Self::INLINE_MAX_BYTES {
            json!({"requests": {"requests": inline_requests(path).await?}})
        } else {
            json!({"fileName": self.upload(path, key, len).await?})
        };
        let body = json!({"batch": {"displayName": key, "inputConfig": input}});
        let reply = self
            .endpoint
            .post_json(
                &format!(
                    "v1beta/models/{}:batchGenerateContent",
                    self.model.config().model
                ),
                &body,
                &[],
                Some(std::time::Duration::from_secs(600)),
            )
            .await?;
        job(&reply.body)
    }

    /// Uploads a JSONL through the Files API's resumable protocol: a start
    /// request names it and gets an upload URL, one request sends the
    /// bytes and finalizes. Its file name (`files/…`).
    async fn upload(
        &self,
        path: &std::path::Path,
        key: &str,
        len: u64,
    ) -> Result<String, CallError> {
        let len_text = len.to_string();
        let start = json!({"file": {"displayName": key}}).to_string();
        let start_len = start.len() as u64;
        let (status, headers, bytes) = self
            .endpoint
            .send_stream(
                reqwest::Method::POST,
                "upload/v1beta/files",
                &[
                    ("x-goog-upload-protocol", "resumable"),
                    ("x-goog-upload-command", "start"),
                    ("x-goog-upload-header-content-length", &len_text),
                    ("x-goog-upload-header-content-type", "application/jsonl"),
                ],
                Some((start.into(), start_len, "application/json")),
                std::time::Duration::from_secs(120),
            )
            .await?;
        parse_body(status, &headers, &bytes)?;
        let url = headers
            .get("x-goog-upload-url")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| shape_error("the upload start named no x-goog-upload-url"))?
            .to_owned();
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| super::body::unreadable(path, &e))?;
        let (status, headers, bytes) = self
            .endpoint
            .send_stream(
                reqwest::Method::POST,
                &url,
                &[
                    ("x-goog-upload-command", "upload, finalize"),
                    ("x-goog-upload-offset", "0"),
                ],
                Some((reqwest::Body::from(file), len, "application/jsonl")),
                std::time::Duration::from_secs(3_600),
            )
            .await?;
        let reply = parse_body(status, &headers, &bytes)?;
        if headers
            .get("x-goog-upload-status")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|s| s != "final")
        {
            return Err(shape_error("the upload did not finalize"));
        }
        reply
            .pointer("/file/name")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| shape_error("an uploaded file without 'file.name'"))
    }

    /// The job `id` (`batches/…`) as it stands.
    pub async fn get(&self, id: &str) -> Result<BatchJob, CallError> {
        job(&self.endpoint.get_json(&format!("v1beta/{id}")).await?)
    }

    /// The newest job named `key`, looking through the newest `pages`
    /// pages of 100 jobs.
    pub async fn find(&self, key: &str, pages: usize) -> Result<Option<BatchJob>, CallError> {
        let mut token: Option<String> = None;
        for _ in 0..pages.max(1) {
            let path = match &token {
                Some(t) => format!("v1beta/batches?pageSize=100&pageToken={t}"),
                None => "v1beta/batches?pageSize=100".to_owned(),
            };
            let page = self.endpoint.get_json(&path).await?;
            for op in page
                .get("operations")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let found = job(op)?;
                if found.key.as_deref() == Some(key) {
                    return Ok(Some(found));
                }
            }
            token = page
                .get("nextPageToken")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
                .map(str::to_owned);
            if token.is_none() {
                return Ok(None);
            }
        }
        Ok(None)
    }

    /// Asks the provider to cancel job `id`; the job as it then stands.
    pub async fn cancel(&self, id: &str) -> Result<BatchJob, CallError> {
        self.endpoint
            .post_json(&format!("v1beta/{id}:cancel"), &json!({}), &[], None)
            .await?;
        self.get(id).await
    }

    /// The results of `job`: its results file read as it downloads, or
    /// its inline responses. `order` is the job's custom ids in the order
    /// submitted (a response that names no key is matched by position).
    pub fn results<'a>(&self, job: &BatchJob, order: &'a [String]) -> BatchResults<'a> {
        BatchResults::new(
            self.endpoint.clone(),
            read_line,
            job.results.clone(),
            job.inline_results.clone().unwrap_or_default(),
            order,
        )
    }
}

/// The lines of a small job file as inline requests.
async fn inline_requests(path: &std::path::Path) -> Result<Vec<Value>, CallError> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| super::body::unreadable(path, &e))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).map_err(|e| {
                CallError::new(
                    ErrorCategory::LogicError,
                    format!("{}: a job line is not JSON: {e}", path.display()),
                )
            })?;
            let key = v.get("key").cloned().unwrap_or(Value::Null);
            let request = v.get_mut("request").map_or(Value::Null, Value::take);
            Ok(json!({"request": request, "metadata": {"key": key}}))
        })
        .collect()
}

/// Where a job's output is: `response` once done (the REST shape), or
/// `metadata.output` (what the SDK reads).
fn output(op: &Value) -> Option<&Value> {
    op.get("response")
        .filter(|r| r.get("responsesFile").is_some() || r.get("inlinedResponses").is_some())
        .or_else(|| op.pointer("/metadata/output"))
}

/// A batch operation.
fn job(op: &Value) -> Result<BatchJob, CallError> {
    let id = op
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| shape_error("a batch without 'name'"))?;
    let meta = op.get("metadata").unwrap_or(&Value::Null);
    let state = meta
        .get("state")
        .and_then(Value::as_str)
        .unwrap_or("BATCH_STATE_PENDING");
    let word = state
        .strip_prefix("BATCH_STATE_")
        .or_else(|| state.strip_prefix("JOB_STATE_"))
        .unwrap_or(state);
    let status = match word {
        "SUCCEEDED" => JobStatus::Completed,
        "FAILED" => JobStatus::Failed,
        "CANCELLED" => JobStatus::Cancelled,
        "EXPIRED" => JobStatus::Expired,
        // PENDING, RUNNING, UNSPECIFIED
        _ => JobStatus::Running,
    };
    let tally = meta.get("batchStats").unwrap_or(&Value::Null);
    let (ok, failed) = (
        count(tally.get("successfulRequestCount")),
        count(tally.get("failedRequestCount")),
    );
    let out = output(op);
    let file = out
        .and_then(|o| o.get("responsesFile"))
        .and_then(Value::as_str);
    Ok(BatchJob {
        id: id.to_owned(),
        status,
        status_text: state.to_owned(),
        counts: JobCounts {
            total: count(tally.get("requestCount")),
            done: ok.saturating_add(failed),
            failed,
        },
        key: meta
            .get("displayName")
            .and_then(Value::as_str)
            .map(str::to_owned),
        created_at: unix_secs(meta.get("createTime")),
        expires_at: None,
        results: file
            .map(|f| vec![format!("v1beta/{f}:download?alt=media")])
            .unwrap_or_default(),
        inline_results: out.and_then(|o| o.get("inlinedResponses")).map(|r| {
            r.get("inlinedResponses")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        }),
    })
}

/// The HTTP status of a `google.rpc.Status` code (a batch reports gRPC
/// codes; a code of 100 or more is taken as HTTP already).
fn http_status(code: u64) -> u16 {
    match code {
        100.. => u16::try_from(code).unwrap_or(500),
        3 | 9 | 11 => 400,
        16 => 401,
        7 => 403,
        5 => 404,
        6 | 10 => 409,
        8 => 429,
        1 => 499,
        4 => 504,
        14 => 503,
        _ => 500,
    }
}

/// One response, from the results file or inline.
fn read_line(v: &Value, at: Option<&str>) -> Result<BatchLine, CallError> {
    let custom_id = v
        .get("key")
        .or_else(|| v.pointer("/metadata/key"))
        .and_then(Value::as_str)
        .or(at)
        .ok_or_else(|| shape_error("a response without a key, past the job's last request"))?
        .to_owned();
    let result = if let Some(r) = v.get("response") {
        GeminiModel::parse_response(r, None)
    } else if let Some(e) = v.get("error") {
        let code = e.get("code").and_then(Value::as_u64).unwrap_or(13);
        if code == 1 {
            Err(CallError::new(
                ErrorCategory::BatchExpired,
                "the job was cancelled before this request ran",
            )
            .with_retryable(true))
        } else {
            match super::classify(http_status(code), &json!({"error": e})) {
                Err(e) => Err(e),
                Ok(_) => Err(shape_error("an error response that reads as a success")),
            }
        }
    } else {
        Err(shape_error(
            "a response with neither 'response' nor 'error'",
        ))
    };
    Ok(BatchLine { custom_id, result })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_become_answers_or_categorized_errors() {
        let ok = json!({"key": "a", "response": {"candidates": [{"content": {"role": "model",
            "parts": [{"text": "hi"}]}, "finishReason": "STOP"}],
            "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 2, "totalTokenCount": 7}}});
        let l = read_line(&ok, None).expect("a line");
        assert_eq!(l.custom_id, "a");
        let r = l.result.expect("an answer");
        assert_eq!(
            (r.text.as_str(), r.input_tokens, r.output_tokens),
            ("hi", Some(5), Some(2))
        );
        // Inline responses carry the key in metadata; one without a key
        // takes the id of its position.
        let inline = json!({"metadata": {"key": "b"}, "error": {"code": 3, "message": "bad", "status": "INVALID_ARGUMENT"}});
        let l = read_line(&inline, Some("zzz")).expect("a line");
        assert_eq!(l.custom_id, "b");
        let e = l.result.expect_err("an error");
        assert_eq!(e.category(), ErrorCategory::ClientError);
        assert!(!e.is_retryable());
        let keyless = json!({"error": {"code": 13, "message": "internal", "status": "INTERNAL"}});
        let l = read_line(&keyless, Some("c")).expect("a line");
        assert_eq!(l.custom_id, "c");
        assert!(l.result.expect_err("an error").is_retryable());
        assert!(read_line(&keyless, None).is_err(), "no key, no position");
    }

    #[test]
    fn operations_say_where_the_job_is_and_where_its_results_are() {
        let pending = json!({"name": "batches/123", "metadata": {"@type": "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch",
            "model": "models/gemini-2.5-flash", "displayName": "abl-1-0001", "state": "BATCH_STATE_PENDING",
            "createTime": "2025-07-01T10:00:00Z", "batchStats": {"requestCount": "3", "pendingRequestCount": "3"}}});
        let j = job(&pending).expect("a job");
        assert_eq!(j.status, JobStatus::Running);
        assert_eq!(j.key.as_deref(), Some("abl-1-0001"));
        assert_eq!(j.counts.total, 3);
        let mut done = pending.clone();
        done["metadata"]["state"] = json!("BATCH_STATE_SUCCEEDED");
        done["metadata"]["batchStats"] =
            json!({"requestCount": "3", "successfulRequestCount": "2", "failedRequestCount": "1"});
        done["done"] = json!(true);
        done["response"] = json!({"@type": "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatchOutput",
            "responsesFile": "files/batch-123-out"});
        let j = job(&done).expect("a job");
        assert_eq!(j.status, JobStatus::Completed);
        assert_eq!((j.counts.done, j.counts.failed), (3, 1));
        assert_eq!(
            j.results,
            vec!["v1beta/files/batch-123-out:download?alt=media"]
        );
        assert!(j.inline_results.is_none());
        // The SDK's reading: the output under metadata, inline.
        let mut inline = pending;
        inline["metadata"]["state"] = json!("JOB_STATE_SUCCEEDED");
        inline["metadata"]["output"] = json!({"inlinedResponses": {"inlinedResponses": []}});
        let j = job(&inline).expect("a job");
        assert_eq!(j.status, JobStatus::Completed);
        assert_eq!(j.inline_results, Some(Vec::new()));
        assert!(j.results.is_empty());
        assert!(job(&json!({"metadata": {}})).is_err());
    }

    #[test]
    fn rpc_codes_map_to_the_online_statuses() {
        assert_eq!(http_status(8), 429);
        assert_eq!(http_status(14), 503);
        assert_eq!(http_status(3), 400);
        assert_eq!(http_status(404), 404);
        assert_eq!(http_status(u64::MAX), 500);
    }
}
