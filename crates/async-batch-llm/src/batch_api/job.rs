//! A batch job as a provider reports it, in one shape for all three.

/// Where a job is at the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    /// Queued, validating, in progress or finalizing: results to come.
    Running,
    /// Every request ran; results are ready.
    Completed,
    /// The window passed: what ran has results, the rest expired.
    Expired,
    /// Cancelled (or cancelling, once it ended): what ran has results.
    Cancelled,
    /// The job was refused or failed as a whole.
    Failed,
}

impl JobStatus {
    /// Whether results will still come.
    pub fn is_running(self) -> bool {
        self == JobStatus::Running
    }
}

/// Requests of a job by where they are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobCounts {
    /// Requests in the job.
    pub total: u64,
    /// Requests that ran (answered or failed).
    pub done: u64,
    /// Of those, the ones that failed.
    pub failed: u64,
}

/// A job as the provider reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchJob {
    /// The provider's id (`batch_…`, `msgbatch_…`, `batches/…`).
    pub id: String,
    /// Its state.
    pub status: JobStatus,
    /// The status word as the provider sent it.
    pub status_text: String,
    /// Its requests by where they are (some providers only count at the end).
    pub counts: JobCounts,
    /// The caller's key from its label, where the provider keeps one.
    pub key: Option<String>,
    /// When it was created (Unix seconds).
    pub created_at: Option<u64>,
    /// When the provider gives up on it (Unix seconds), where it says.
    pub expires_at: Option<u64>,
    /// Where its results are: paths under the base URL, read in order.
    pub(crate) results: Vec<String>,
    /// Its results, when the job itself carries them (Gemini's inline
    /// jobs, once ended): read from the status check, not fetched again.
    pub(crate) inline_results: Option<Vec<serde_json::Value>>,
}

/// What a caller knows of a job it may have submitted, to find it again
/// at a provider that keeps no label (Anthropic): when the record was
/// made, how many requests it holds, and the jobs already accounted for.
#[derive(Debug, Clone, Default)]
pub struct JobHint {
    /// When the caller recorded the job, just before submitting it (Unix s).
    pub recorded_at: u64,
    /// Requests in it.
    pub requests: u64,
    /// Provider ids of the caller's other jobs (never a match).
    pub claimed: Vec<String>,
}

/// What one job may hold at a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobLimits {
    /// Requests in one job.
    pub max_requests: usize,
    /// Bytes of request lines in one job.
    pub max_bytes: u64,
}

/// A number the provider sends as a JSON number or as a string (Gemini's
/// int64 fields).
pub(crate) fn count(v: Option<&serde_json::Value>) -> u64 {
    match v {
        Some(serde_json::Value::Number(n)) => n.as_u64().unwrap_or(0),
        Some(serde_json::Value::String(s)) => s.parse().unwrap_or(0),
        _ => 0,
    }
}

/// An RFC 3339 time as Unix seconds.
#[cfg_attr(not(any(feature = "anthropic", feature = "gemini")), allow(dead_code))]
pub(crate) fn unix_secs(v: Option<&serde_json::Value>) -> Option<u64> {
    let t = crate::time::parse_rfc3339(v?.as_str()?)?;
    t.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn counts_and_times_read_numbers_strings_and_junk() {
        assert_eq!(count(Some(&json!(7))), 7);
        assert_eq!(count(Some(&json!("12"))), 12);
        assert_eq!(count(Some(&json!("-1"))), 0);
        assert_eq!(count(Some(&json!(null))), 0);
        assert_eq!(count(None), 0);
        assert_eq!(
            unix_secs(Some(&json!("2024-09-24T18:37:24.100435Z"))),
            Some(1_727_203_044)
        );
        assert_eq!(unix_secs(Some(&json!("yesterday"))), None);
    }
}
