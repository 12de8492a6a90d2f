//! Provider batch APIs: the same requests as the online routes, sold at
//! half the price for results within 24 hours.
//!
//! OpenAI (`/v1/files` + `/v1/batches`), Anthropic (`/v1/messages/batches`)
//! and Gemini (`models/{m}:batchGenerateContent`) differ in every detail —
//! how requests are sent (an uploaded file, one large JSON body, inline or
//! a file), how a job is labelled, how results come back — and agree on
//! the shape of the work. [`BatchClient`] is that shape, one value for
//! any of the three:
//!
//! 1. [`BatchClient::line`] turns an [`LlmRequest`](crate::LlmRequest) into the provider's
//!    request line (the same body the online route sends, so system
//!    text, schemas, temperature and token limits carry over), to be
//!    written into a JSONL job file;
//! 2. [`BatchClient::submit`] sends a job file (streamed from disk) labelled
//!    with the caller's key, and [`BatchClient::find`] finds a job by that
//!    key — the answer to a caller killed between "the provider accepted
//!    the job" and "its id was saved";
//! 3. [`BatchClient::get`] polls, [`BatchClient::cancel`] cancels;
//! 4. [`BatchClient::results`] reads the results as they download, each
//!    line mapped back to its `custom_id` and classified into the same
//!    [`ErrorCategory`] values as an online call.
//!
//! [`BatchHost`] runs a whole batch on it: items in, one recorded result
//! out per item, every job recorded in the [`Checkpoint`](crate::store::Checkpoint)
//! before it is submitted so a stopped run reattaches instead of paying
//! twice (the `abl` CLI's `--via batch-api` is a thin layer over it).

#[cfg(feature = "anthropic")]
mod anthropic;
#[cfg(any(feature = "anthropic", feature = "gemini"))]
mod body;
mod client;
#[cfg(feature = "gemini")]
mod gemini;
mod host;
mod job;
#[cfg(feature = "openai")]
mod openai;
mod record;
mod results;

#[cfg(feature = "anthropic")]
pub use anthropic::AnthropicBatches;
pub use client::{BatchClient, BatchProvider};
#[cfg(feature = "gemini")]
pub use gemini::GeminiBatches;
pub use host::{BatchEvent, BatchHost, BatchRunConfig, Ending, Fallback, Parse, PollStatus, Sink};
pub use job::{BatchJob, JobCounts, JobHint, JobLimits, JobStatus};
#[cfg(feature = "openai")]
pub use openai::OpenAiBatches;
pub use record::{JobRecord, JobState, jobs_dir, parse_jobs};
pub use results::{BatchLine, BatchResults};

use crate::error::{CallError, ErrorCategory};

/// A request line as the job file holds it: `build` makes the line from
/// the request, whose file attachments are probed and checked against the
/// provider's `policy` first (a refused part is a `client_error`, as
/// online) and whose bytes are encoded into the line straight from disk.
async fn line_bytes(
    request: &crate::model::LlmRequest,
    policy: &crate::attachment::PartPolicy,
    build: impl FnOnce(&crate::model::LlmRequest) -> Result<serde_json::Value, CallError>,
) -> Result<Vec<u8>, CallError> {
    if let Some(p) = request.prompt.as_ref().filter(|p| p.has_attachments()) {
        crate::attachment::probe_all(p)
            .await
            .map_err(|m| CallError::new(ErrorCategory::ClientError, m).with_retryable(false))?;
    }
    let staged = crate::providers::wire::with_parts(request, policy)?;
    let line = build(&staged.request)?;
    staged.body(&line).await
}

/// A result's status and body classified as the online route classifies
/// a reply: a 2xx body to read, or a categorized error.
fn classify(status: u16, body: &serde_json::Value) -> Result<serde_json::Value, CallError> {
    crate::providers::parse_body(
        status,
        &reqwest::header::HeaderMap::new(),
        body.to_string().as_bytes(),
    )
}

/// A `custom_id` for an item id: the id itself when `ok` accepts it and it
/// fits 64 characters, else a hash of it (`sha256-` and 32 hex digits).
fn custom_id_with(id: &str, ok: impl Fn(char) -> bool) -> String {
    use sha2::Digest as _;
    if !id.is_empty() && id.len() <= 64 && id.chars().all(ok) {
        return id.to_owned();
    }
    let d = sha2::Sha256::digest(id.as_bytes());
    let hex = d.iter().take(16).fold(String::new(), |mut h, b| {
        use std::fmt::Write as _;
        let _ = write!(h, "{b:02x}");
        h
    });
    format!("sha256-{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_ids_keep_ids_that_fit_and_hash_the_rest() {
        assert_eq!(custom_id_with("q-001", |_| true), "q-001");
        let long = "x".repeat(65);
        let h = custom_id_with(&long, |_| true);
        assert!(h.starts_with("sha256-") && h.len() == 39, "{h}");
        assert_eq!(h, custom_id_with(&long, |_| true), "stable");
        let strict = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
        assert_ne!(custom_id_with("a b", strict), "a b");
        assert!(custom_id_with("a b", strict).chars().all(strict));
        assert!(custom_id_with("", |_| true).starts_with("sha256-"));
    }
}
