//! OpenAI's Batch API: the same requests as the online routes, sold at
//! half the price for results within 24 hours. A JSONL of request lines is
//! uploaded (`POST /v1/files`, purpose `batch`), a job is made of it
//! (`POST /v1/batches`), polled, and its output and error files are read
//! back line by line; each line names its request by `custom_id`.
//!
//! Every job carries the caller's key in its metadata (`abl_job`), so a
//! caller killed between "the job was created" and "its id was saved" finds
//! it again with [`OpenAiBatches::find`] instead of paying twice.

use serde_json::{Value, json};

use super::{OpenAiConfig, OpenAiModel};
use crate::error::{CallError, Error, ErrorCategory};
use crate::model::{LlmRequest, LlmResponse};
use crate::providers::http::{Endpoint, parse_body, shape_error};

/// The metadata key that carries the caller's job key.
const JOB_KEY: &str = "abl_job";

/// Where a job is at the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    /// Validating, in progress or finalizing: results to come.
    Running,
    /// Every request ran; results are in the files.
    Completed,
    /// The window passed: what ran is in the files, the rest expired.
    Expired,
    /// Cancelled (or cancelling): what ran is in the files.
    Cancelled,
    /// The input was refused as a whole (`failed`).
    Failed,
}

impl JobStatus {
    fn parse(s: &str) -> Self {
        match s {
            "completed" => JobStatus::Completed,
            "expired" => JobStatus::Expired,
            "cancelled" => JobStatus::Cancelled,
            "failed" => JobStatus::Failed,
            // validating, in_progress, finalizing, cancelling
            _ => JobStatus::Running,
        }
    }

    /// Whether results will still come.
    pub fn is_running(self) -> bool {
        self == JobStatus::Running
    }
}

/// A job as the provider reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchJob {
    /// The provider's id (`batch_…`).
    pub id: String,
    /// Its state.
    pub status: JobStatus,
    /// The status word as sent.
    pub status_text: String,
    /// Requests in it, done, failed.
    pub counts: (u64, u64, u64),
    /// The file of successful results.
    pub output_file_id: Option<String>,
    /// The file of failed requests.
    pub error_file_id: Option<String>,
    /// The caller's key from its metadata.
    pub key: Option<String>,
    /// When it was created (Unix seconds).
    pub created_at: Option<u64>,
}

impl BatchJob {
    fn from_json(v: &Value) -> Result<Self, CallError> {
        let id = v
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| shape_error("a batch without 'id'"))?;
        let status = v
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("in_progress");
        let count = |k: &str| {
            v.pointer(&format!("/request_counts/{k}"))
                .and_then(Value::as_u64)
                .unwrap_or(0)
        };
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        Ok(Self {
            id: id.to_owned(),
            status: JobStatus::parse(status),
            status_text: status.to_owned(),
            counts: (count("total"), count("completed"), count("failed")),
            output_file_id: s("output_file_id"),
            error_file_id: s("error_file_id"),
            key: v
                .pointer(&format!("/metadata/{JOB_KEY}"))
                .and_then(Value::as_str)
                .map(str::to_owned),
            created_at: v.get("created_at").and_then(Value::as_u64),
        })
    }
}

/// One result line: the request's `custom_id` and its answer or error,
/// classified as the online route classifies it.
#[derive(Debug)]
pub struct BatchLine {
    /// The request's `custom_id`.
    pub custom_id: String,
    /// The answer, or the error in the online path's categories.
    pub result: Result<LlmResponse, CallError>,
}

/// The Batch API client of one OpenAI account (any base URL).
pub struct OpenAiBatches {
    endpoint: Endpoint,
    model: OpenAiModel,
}

impl std::fmt::Debug for OpenAiBatches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiBatches")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl OpenAiBatches {
    /// Requests per input file OpenAI takes.
    pub const MAX_REQUESTS: usize = 50_000;

    /// Bytes per input file OpenAI takes (200 MB).
    pub const MAX_FILE_BYTES: u64 = 200 * 1_000_000;

    /// A client for `config` (its model is the one every line asks for).
    pub fn new(config: OpenAiConfig) -> Result<Self, Error> {
        Ok(Self {
            endpoint: config.endpoint("openai")?,
            model: OpenAiModel::new(config)?,
        })
    }

    /// The request line for `request`: the same body the online route
    /// (`/v1/responses`) sends.
    pub fn line(&self, custom_id: &str, request: &LlmRequest) -> Result<Value, CallError> {
        if request
            .prompt
            .as_ref()
            .is_some_and(crate::item::Prompt::has_attachments)
        {
            return Err(CallError::new(
                ErrorCategory::ClientError,
                "attachments are not sent through the batch API yet; run this item online",
            )
            .with_retryable(false));
        }
        Ok(json!({
            "custom_id": custom_id,
            "method": "POST",
            "url": "/v1/responses",
            "body": self.model.request_body(request)?,
        }))
    }

    /// Uploads a JSONL of request lines (streamed from disk); its file id.
    pub async fn upload(&self, path: &std::path::Path) -> Result<String, CallError> {
        let v = self
            .endpoint
            .upload("files", &[("purpose", "batch")], path)
            .await?;
        v.get("id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| shape_error("an uploaded file without 'id'"))
    }

    /// Makes a job of an uploaded file, labelled with the caller's `key`.
    pub async fn create(&self, input_file_id: &str, key: &str) -> Result<BatchJob, CallError> {
        let body = json!({
            "input_file_id": input_file_id,
            "endpoint": "/v1/responses",
            "completion_window": "24h",
            "metadata": {JOB_KEY: key},
        });
        let reply = self.endpoint.post_json("batches", &body, &[], None).await?;
        BatchJob::from_json(&reply.body)
    }

    /// The job `id` as it stands.
    pub async fn get(&self, id: &str) -> Result<BatchJob, CallError> {
        let (status, headers, bytes) = self.endpoint.get_raw(&format!("batches/{id}")).await?;
        BatchJob::from_json(&parse_body(status, &headers, &bytes)?)
    }

    /// The newest job labelled `key`, looking through the newest `pages`
    /// pages of 100 jobs.
    pub async fn find(&self, key: &str, pages: usize) -> Result<Option<BatchJob>, CallError> {
        let mut after: Option<String> = None;
        for _ in 0..pages.max(1) {
            let path = match &after {
                Some(a) => format!("batches?limit=100&after={a}"),
                None => "batches?limit=100".to_owned(),
            };
            let (status, headers, bytes) = self.endpoint.get_raw(&path).await?;
            let page = parse_body(status, &headers, &bytes)?;
            let data = page
                .get("data")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for j in &data {
                let job = BatchJob::from_json(j)?;
                if job.key.as_deref() == Some(key) {
                    return Ok(Some(job));
                }
            }
            if page.get("has_more").and_then(Value::as_bool) != Some(true) {
                return Ok(None);
            }
            after = page
                .get("last_id")
                .and_then(Value::as_str)
                .map(str::to_owned);
            if after.is_none() {
                return Ok(None);
            }
        }
        Ok(None)
    }

    /// Asks the provider to cancel job `id`.
    pub async fn cancel(&self, id: &str) -> Result<BatchJob, CallError> {
        let reply = self
            .endpoint
            .post_json(&format!("batches/{id}/cancel"), &json!({}), &[], None)
            .await?;
        BatchJob::from_json(&reply.body)
    }

    /// A results file (output or errors), read line by line as it
    /// downloads.
    pub async fn results(&self, file_id: &str) -> Result<BatchResults, CallError> {
        Ok(BatchResults {
            lines: self
                .endpoint
                .get_lines(&format!("files/{file_id}/content"))
                .await?,
        })
    }
}

/// The lines of a results file, read as they download.
pub struct BatchResults {
    lines: crate::providers::http::Lines,
}

impl std::fmt::Debug for BatchResults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchResults").finish_non_exhaustive()
    }
}

impl BatchResults {
    /// The next result line, or `None` at the end of the file.
    pub async fn next(&mut self) -> Option<Result<BatchLine, CallError>> {
        let line = self.lines.next().await?;
        Some(line.and_then(|l| read_line(&l)))
    }
}

/// One line of an output or error file.
fn read_line(l: &[u8]) -> Result<BatchLine, CallError> {
    let v: Value = serde_json::from_slice(l)
        .map_err(|e| shape_error(&format!("a results line is not JSON: {e}")))?;
    let custom_id = v
        .get("custom_id")
        .and_then(Value::as_str)
        .ok_or_else(|| shape_error("a results line without 'custom_id'"))?
        .to_owned();
    let result = if let Some(r) = v.get("response").filter(|r| !r.is_null()) {
        let status = r
            .get("status_code")
            .and_then(Value::as_u64)
            .and_then(|s| u16::try_from(s).ok())
            .unwrap_or(0);
        let body = r.get("body").cloned().unwrap_or(Value::Null);
        let request_id = r
            .get("request_id")
            .and_then(Value::as_str)
            .map(str::to_owned);
        match parse_body(
            status,
            &reqwest::header::HeaderMap::new(),
            body.to_string().as_bytes(),
        ) {
            Ok(b) => OpenAiModel::parse_response(&b, request_id),
            Err(e) => Err(e),
        }
    } else {
        let code = v
            .pointer("/error/code")
            .and_then(Value::as_str)
            .unwrap_or("unknown");
        let message = v
            .pointer("/error/message")
            .and_then(Value::as_str)
            .unwrap_or("the batch API reported an error without a message");
        let category = match code {
            "batch_expired" | "batch_cancelled" => ErrorCategory::BatchExpired,
            _ => ErrorCategory::ClientError,
        };
        Err(CallError::new(category, format!("{code}: {message}"))
            .with_retryable(category == ErrorCategory::BatchExpired))
    };
    Ok(BatchLine { custom_id, result })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines_become_answers_or_categorized_errors() {
        let ok = br#"{"id":"r1","custom_id":"a","response":{"status_code":200,"request_id":"req_1","body":{"id":"resp_1","model":"gpt-4o-mini","output":[{"type":"message","role":"assistant","content":[{"type":"output_text","text":"hi"}]}],"usage":{"input_tokens":5,"output_tokens":2,"total_tokens":7}}},"error":null}"#;
        let l = read_line(ok).unwrap();
        assert_eq!(l.custom_id, "a");
        let r = l.result.unwrap();
        assert_eq!(
            (r.text.as_str(), r.input_tokens, r.output_tokens),
            ("hi", Some(5), Some(2))
        );
        let server = br#"{"custom_id":"b","response":{"status_code":500,"body":{"error":{"message":"boom","type":"server_error"}}},"error":null}"#;
        let e = read_line(server).unwrap().result.unwrap_err();
        assert_eq!(e.category(), ErrorCategory::ServerError);
        assert!(e.is_retryable());
        let expired = br#"{"custom_id":"c","response":null,"error":{"code":"batch_expired","message":"late"}}"#;
        let e = read_line(expired).unwrap().result.unwrap_err();
        assert_eq!(e.category(), ErrorCategory::BatchExpired);
        assert!(e.is_retryable());
        assert!(read_line(b"not json").is_err());
    }
}
