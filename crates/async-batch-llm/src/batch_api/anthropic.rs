//! Anthropic's Message Batches: up to 100,000 requests (256 MB) sent as
//! one `POST /v1/messages/batches` body `{"requests": [{"custom_id",
//! "params"}, …]}`, polled at `/v1/messages/batches/{id}`, results as one
//! JSONL at `…/{id}/results` once the batch has ended, in any order, each
//! line `{"custom_id", "result": {"type": "succeeded" | "errored" |
//! "canceled" | "expired", …}}`.
//!
//! A batch carries no label of the caller's. A caller killed between "the
//! provider accepted the batch" and "its id was saved" finds it again with
//! [`AnthropicBatches::find`]: among the account's batches, the one created
//! closest after the caller recorded the job, with exactly its number of
//! requests, that is not one of the caller's other jobs. Results are only
//! ever matched to items by `custom_id`, so a wrong match cannot put one
//! item's answer on another; its items would find no line and be sent
//! again.

use serde_json::{Value, json};

use super::job::{count, unix_secs};
use super::{BatchJob, BatchLine, BatchResults, JobCounts, JobHint, JobStatus};
use crate::error::{CallError, Error, ErrorCategory};
use crate::model::{LlmRequest, Model as _};
use crate::providers::http::{Endpoint, parse_body, shape_error};
use crate::providers::{AnthropicConfig, AnthropicModel};

/// The Message Batches client of one Anthropic account (any base URL).
pub struct AnthropicBatches {
    endpoint: Endpoint,
    model: AnthropicModel,
}

impl std::fmt::Debug for AnthropicBatches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnthropicBatches")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// How long after its record a job may have reached the provider (a
/// 256 MB body on a slow link), and how far the two clocks may differ.
const SUBMIT_WINDOW_SECS: u64 = 3_600;
const CLOCK_SLACK_SECS: u64 = 300;

impl AnthropicBatches {
    /// A client for `config` (its model is the one every request asks for).
    pub fn new(config: AnthropicConfig) -> Result<Self, Error> {
        let model = AnthropicModel::new(config)?;
        Ok(Self {
            endpoint: model.endpoint().clone(),
            model,
        })
    }

    /// The `custom_id` of an item: Anthropic takes 1–64 of
    /// `[a-zA-Z0-9_-]`; any other id is hashed.
    pub fn custom_id(id: &str) -> String {
        super::custom_id_with(id, |c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    }

    /// The request line for `request`: the same body the online route
    /// (`/v1/messages`) sends, as `params`, attachments included.
    pub async fn line(&self, custom_id: &str, request: &LlmRequest) -> Result<Vec<u8>, CallError> {
        super::line_bytes(request, self.model.part_policy(), |r| {
            Ok(json!({"custom_id": custom_id, "params": self.model.request_body(r)?}))
        })
        .await
    }

    /// Sends the job file at `path` (one request line per line) as one
    /// batch, streamed from disk.
    pub async fn submit(&self, path: &std::path::Path) -> Result<BatchJob, CallError> {
        let (stream, len) =
            super::body::json_array(path, "{\"requests\":[".into(), "]}".into()).await?;
        let (status, headers, bytes) = self
            .endpoint
            .send_stream(
                reqwest::Method::POST,
                "v1/messages/batches",
                &[],
                Some((reqwest::Body::wrap_stream(stream), len, "application/json")),
                std::time::Duration::from_secs(3_600),
            )
            .await?;
        job(&parse_body(status, &headers, &bytes)?)
    }

    /// The batch `id` as it stands.
    pub async fn get(&self, id: &str) -> Result<BatchJob, CallError> {
        job(&self
            .endpoint
            .get_json(&format!("v1/messages/batches/{id}"))
            .await?)
    }

    /// The batch a caller recorded as `hint` and may have submitted:
    /// looked for among the newest `pages` pages of 100 batches.
    pub async fn find(&self, hint: &JobHint, pages: usize) -> Result<Option<BatchJob>, CallError> {
        let earliest = hint.recorded_at.saturating_sub(CLOCK_SLACK_SECS);
        let latest = hint.recorded_at.saturating_add(SUBMIT_WINDOW_SECS);
        let mut best: Option<BatchJob> = None;
        let mut after: Option<String> = None;
        'pages: for _ in 0..pages.max(1) {
            let path = match &after {
                Some(a) => format!("v1/messages/batches?limit=100&after_id={a}"),
                None => "v1/messages/batches?limit=100".to_owned(),
            };
            let page = self.endpoint.get_json(&path).await?;
            let data = page.get("data").and_then(Value::as_array);
            for b in data.into_iter().flatten() {
                let found = job(b)?;
                let Some(at) = found.created_at else { continue };
                if at < earliest {
                    // Newest first: every later one is older still.
                    break 'pages;
                }
                let fits = at <= latest
                    && found.counts.total == hint.requests
                    && !hint.claimed.contains(&found.id);
                // The one created closest after the record.
                if fits && best.as_ref().is_none_or(|b| b.created_at > Some(at)) {
                    best = Some(found);
                }
            }
            if page.get("has_more").and_then(Value::as_bool) != Some(true) {
                break;
            }
            after = page
                .get("last_id")
                .and_then(Value::as_str)
                .map(str::to_owned);
            if after.is_none() {
                break;
            }
        }
        Ok(best)
    }

    /// Asks the provider to cancel batch `id`.
    pub async fn cancel(&self, id: &str) -> Result<BatchJob, CallError> {
        let reply = self
            .endpoint
            .post_json(
                &format!("v1/messages/batches/{id}/cancel"),
                &json!({}),
                &[],
                None,
            )
            .await?;
        job(&reply.body)
    }

    /// The results of `job`, read as they download.
    pub fn results(&self, job: &BatchJob) -> BatchResults<'static> {
        BatchResults::of_files(self.endpoint.clone(), read_line, job)
    }
}

/// A message batch object.
fn job(v: &Value) -> Result<BatchJob, CallError> {
    let id = v
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| shape_error("a message batch without 'id'"))?;
    let status_text = v
        .get("processing_status")
        .and_then(Value::as_str)
        .unwrap_or("in_progress");
    let n = |k: &str| count(v.pointer(&format!("/request_counts/{k}")));
    let (processing, succeeded, errored, canceled, expired) = (
        n("processing"),
        n("succeeded"),
        n("errored"),
        n("canceled"),
        n("expired"),
    );
    let status = match status_text {
        "ended" if v.get("cancel_initiated_at").is_some_and(|c| !c.is_null()) => {
            JobStatus::Cancelled
        }
        "ended" if expired > 0 => JobStatus::Expired,
        "ended" => JobStatus::Completed,
        // in_progress, canceling
        _ => JobStatus::Running,
    };
    let ended = status != JobStatus::Running;
    Ok(BatchJob {
        id: id.to_owned(),
        status,
        status_text: status_text.to_owned(),
        counts: JobCounts {
            total: processing + succeeded + errored + canceled + expired,
            done: succeeded + errored,
            failed: errored,
        },
        key: None,
        created_at: unix_secs(v.get("created_at")),
        expires_at: unix_secs(v.get("expires_at")),
        // The results URL is on the provider's own host; it is read through
        // the base URL so the key never goes anywhere else.
        results: if ended && v.get("results_url").is_some_and(|u| !u.is_null()) {
            vec![format!("v1/messages/batches/{id}/results")]
        } else {
            Vec::new()
        },
        inline_results: None,
    })
}

/// The HTTP status the online route answers with for an error type.
fn status_of(error_type: &str) -> u16 {
    match error_type {
        "invalid_request_error" => 400,
        "authentication_error" => 401,
        "billing_error" => 402,
        "permission_error" => 403,
        "not_found_error" => 404,
        "request_too_large" => 413,
        "rate_limit_error" => 429,
        "overloaded_error" => 529,
        "timeout_error" => 504,
        _ => 500,
    }
}

/// One line of the results JSONL.
fn read_line(v: &Value, _: Option<&str>) -> Result<BatchLine, CallError> {
    let custom_id = super::results::custom_id_of(v)?;
    let r = v.get("result").unwrap_or(&Value::Null);
    let result = match r.get("type").and_then(Value::as_str) {
        Some("succeeded") => r
            .get("message")
            .ok_or_else(|| shape_error("a succeeded result without 'message'"))
            .and_then(|m| AnthropicModel::parse_response(m, None)),
        Some("errored") => {
            let body = r.get("error").unwrap_or(&Value::Null);
            let t = body
                .pointer("/error/type")
                .and_then(Value::as_str)
                .unwrap_or("api_error");
            match super::classify(status_of(t), body) {
                Err(e) => Err(e),
                Ok(_) => Err(shape_error("an errored result that reads as a success")),
            }
        }
        Some(t @ ("canceled" | "expired")) => Err(CallError::new(
            ErrorCategory::BatchExpired,
            format!("the batch ended ({t}) before this request ran"),
        )
        .with_retryable(true)),
        other => Err(shape_error(&format!(
            "a result of unknown type {}",
            other.unwrap_or("(none)")
        ))),
    };
    Ok(BatchLine { custom_id, result })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines_become_answers_or_categorized_errors() {
        let ok = json!({"custom_id": "a", "result": {"type": "succeeded", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-3-5-haiku",
            "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn",
            "usage": {"input_tokens": 5, "output_tokens": 2}}}});
        let l = read_line(&ok, None).expect("a line");
        assert_eq!(l.custom_id, "a");
        let r = l.result.expect("an answer");
        assert_eq!(
            (r.text.as_str(), r.input_tokens, r.output_tokens),
            ("hi", Some(5), Some(2))
        );
        let bad = json!({"custom_id": "b", "result": {"type": "errored", "error": {"type": "error",
            "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"}}}});
        let e = read_line(&bad, None)
            .expect("a line")
            .result
            .expect_err("an error");
        assert_eq!(e.category(), ErrorCategory::ClientError);
        assert!(!e.is_retryable());
        let busy = json!({"custom_id": "c", "result": {"type": "errored", "error": {"type": "error",
            "error": {"type": "overloaded_error", "message": "Overloaded"}}}});
        let e = read_line(&busy, None)
            .expect("a line")
            .result
            .expect_err("an error");
        assert!(e.is_retryable(), "{e:?}");
        for t in ["canceled", "expired"] {
            let l = json!({"custom_id": "d", "result": {"type": t}});
            let e = read_line(&l, None)
                .expect("a line")
                .result
                .expect_err("an error");
            assert_eq!(e.category(), ErrorCategory::BatchExpired);
            assert!(e.is_retryable());
        }
        assert!(read_line(&json!({"result": {"type": "expired"}}), None).is_err());
    }

    #[test]
    fn batch_objects_say_where_the_batch_is() {
        let running = json!({"id": "msgbatch_1", "type": "message_batch", "processing_status": "in_progress",
            "request_counts": {"processing": 3, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0},
            "created_at": "2024-09-24T18:37:24.100435Z", "expires_at": "2024-09-25T18:37:24.100435Z",
            "results_url": null, "cancel_initiated_at": null, "ended_at": null});
        let j = job(&running).expect("a job");
        assert_eq!(j.status, JobStatus::Running);
        assert_eq!(j.counts.total, 3);
        assert!(j.results.is_empty());
        let mut ended = running.clone();
        ended["processing_status"] = json!("ended");
        ended["request_counts"] =
            json!({"processing": 0, "succeeded": 1, "errored": 1, "canceled": 0, "expired": 1});
        ended["results_url"] =
            json!("https://api.anthropic.com/v1/messages/batches/msgbatch_1/results");
        let j = job(&ended).expect("a job");
        assert_eq!(j.status, JobStatus::Expired);
        assert_eq!((j.counts.total, j.counts.done, j.counts.failed), (3, 2, 1));
        assert_eq!(j.results, vec!["v1/messages/batches/msgbatch_1/results"]);
        ended["cancel_initiated_at"] = json!("2024-09-24T19:00:00Z");
        assert_eq!(job(&ended).expect("a job").status, JobStatus::Cancelled);
        assert!(job(&json!({})).is_err());
    }

    #[test]
    fn custom_ids_follow_anthropics_pattern() {
        assert_eq!(AnthropicBatches::custom_id("row_17-b"), "row_17-b");
        let h = AnthropicBatches::custom_id("row 17/b");
        assert!(
            h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
            "{h}"
        );
    }
}
