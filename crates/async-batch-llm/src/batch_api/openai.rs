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

use super::job::count;
use super::{BatchJob, BatchLine, BatchResults, JobCounts, JobStatus};
use crate::error::{CallError, Error, ErrorCategory};
use crate::model::{LlmRequest, Model as _};
use crate::providers::http::{Endpoint, shape_error};
use crate::providers::{OpenAiConfig, OpenAiModel};

/// The metadata key that carries the caller's job key.
const JOB_KEY: &str = "abl_job";

fn status(s: &str) -> JobStatus {
    match s {
        "completed" => JobStatus::Completed,
        "expired" => JobStatus::Expired,
        "cancelled" => JobStatus::Cancelled,
        "failed" => JobStatus::Failed,
        // validating, in_progress, finalizing, cancelling
        _ => JobStatus::Running,
    }
}

/// A batch object.
fn job(v: &Value) -> Result<BatchJob, CallError> {
    let id = v
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| shape_error("a batch without 'id'"))?;
    let status_text = v
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or("in_progress");
    let n = |k: &str| count(v.pointer(&format!("/request_counts/{k}")));
    let (completed, failed) = (n("completed"), n("failed"));
    let results = ["output_file_id", "error_file_id"]
        .iter()
        .filter_map(|k| v.get(*k).and_then(Value::as_str))
        .map(|f| format!("files/{f}/content"))
        .collect();
    Ok(BatchJob {
        id: id.to_owned(),
        status: status(status_text),
        status_text: status_text.to_owned(),
        counts: JobCounts {
            total: n("total"),
            done: completed.saturating_add(failed),
            failed,
        },
        key: v
            .pointer(&format!("/metadata/{JOB_KEY}"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        created_at: v.get("created_at").and_then(Value::as_u64),
        expires_at: v.get("expires_at").and_then(Value::as_u64),
        results,
        inline_results: None,
    })
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
    /// A client for `config` (its model is the one every line asks for).
    pub fn new(config: OpenAiConfig) -> Result<Self, Error> {
        Ok(Self {
            endpoint: config.endpoint("openai")?,
            model: OpenAiModel::new(config)?,
        })
    }

    /// The request line for `request`: the same body the online route
    /// (`/v1/responses`) sends, attachments included.
    pub async fn line(&self, custom_id: &str, request: &LlmRequest) -> Result<Vec<u8>, CallError> {
        super::line_bytes(request, self.model.part_policy(), |r| {
            Ok(json!({
                "custom_id": custom_id,
                "method": "POST",
                "url": "/v1/responses",
                "body": self.model.request_body(r)?,
            }))
        })
        .await
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

    /// Uploads the job file at `path` and makes a job of it labelled
    /// with the caller's `key`.
    pub async fn submit(&self, path: &std::path::Path, key: &str) -> Result<BatchJob, CallError> {
        let file_id = self.upload(path).await?;
        self.create(&file_id, key).await
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
        job(&reply.body)
    }

    /// The job `id` as it stands.
    pub async fn get(&self, id: &str) -> Result<BatchJob, CallError> {
        job(&self.endpoint.get_json(&format!("batches/{id}")).await?)
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
            let page = self.endpoint.get_json(&path).await?;
            let data = page
                .get("data")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for j in &data {
                let found = job(j)?;
                if found.key.as_deref() == Some(key) {
                    return Ok(Some(found));
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
        job(&reply.body)
    }

    /// The results of `job` (its output file, then its error file), read
    /// as they download.
    pub fn results(&self, job: &BatchJob) -> BatchResults<'static> {
        BatchResults::of_files(self.endpoint.clone(), read_line, job)
    }
}

/// One line of an output or error file.
fn read_line(v: &Value, _: Option<&str>) -> Result<BatchLine, CallError> {
    let custom_id = super::results::custom_id_of(v)?;
    let result = if let Some(r) = v.get("response").filter(|r| !r.is_null()) {
        let status = r
            .get("status_code")
            .and_then(Value::as_u64)
            .and_then(|s| u16::try_from(s).ok())
            .unwrap_or(0);
        let body = r.get("body").unwrap_or(&Value::Null);
        let request_id = r
            .get("request_id")
            .and_then(Value::as_str)
            .map(str::to_owned);
        super::classify(status, body).and_then(|b| OpenAiModel::parse_response(&b, request_id))
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

    fn read(line: &[u8]) -> Result<BatchLine, CallError> {
        let v: Value = serde_json::from_slice(line).map_err(|e| shape_error(&e.to_string()))?;
        read_line(&v, None)
    }

    #[test]
    fn result_lines_become_answers_or_categorized_errors() {
        let ok = br#"{"id":"r1","custom_id":"a","response":{"status_code":200,"request_id":"req_1","body":{"id":"resp_1","model":"gpt-4o-mini","output":[{"type":"message","role":"assistant","content":[{"type":"output_text","text":"hi"}]}],"usage":{"input_tokens":5,"output_tokens":2,"total_tokens":7}}},"error":null}"#;
        let l = read(ok).unwrap();
        assert_eq!(l.custom_id, "a");
        let r = l.result.unwrap();
        assert_eq!(
            (r.text.as_str(), r.input_tokens, r.output_tokens),
            ("hi", Some(5), Some(2))
        );
        let server = br#"{"custom_id":"b","response":{"status_code":500,"body":{"error":{"message":"boom","type":"server_error"}}},"error":null}"#;
        let e = read(server).unwrap().result.unwrap_err();
        assert_eq!(e.category(), ErrorCategory::ServerError);
        assert!(e.is_retryable());
        let expired = br#"{"custom_id":"c","response":null,"error":{"code":"batch_expired","message":"late"}}"#;
        let e = read(expired).unwrap().result.unwrap_err();
        assert_eq!(e.category(), ErrorCategory::BatchExpired);
        assert!(e.is_retryable());
        assert!(read(b"not json").is_err());
    }
}
