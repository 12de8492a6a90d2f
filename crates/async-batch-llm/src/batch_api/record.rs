//! What a checkpoint keeps of each batch-API job: written **before** the
//! job is submitted (its key, provider, items and file) and again once the
//! provider named it, so a run that stops at any point can be resumed
//! without paying twice for anything.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Where a recorded job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Recorded; the submission may or may not have reached the provider.
    Preparing,
    /// The provider accepted it under `batch_id`.
    Submitted,
    /// Its results are recorded.
    Done,
}

/// A job as the checkpoint keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    /// The caller's key (unique per run and job; the label the provider
    /// keeps where it keeps one).
    pub key: String,
    /// The provider's name (`openai`, `anthropic`, `gemini`).
    pub provider: String,
    /// Where it is.
    pub state: JobState,
    /// The provider's id, once it named one.
    #[serde(default)]
    pub batch_id: Option<String>,
    /// The custom ids of its requests, in the order submitted.
    pub items: Vec<String>,
    /// 1 for a first submission, 2 for the resubmission of what could not run.
    pub attempt: u32,
    /// Its request lines, kept until its results are in.
    pub file: PathBuf,
    /// When it was recorded (Unix seconds).
    pub created_at: u64,
}

/// The job records of a checkpoint's `(key, JSON)` pairs, by key.
pub fn parse_jobs(pairs: Vec<(String, String)>) -> Result<BTreeMap<String, JobRecord>, Error> {
    pairs
        .into_iter()
        .map(
            |(key, json)| match serde_json::from_str::<JobRecord>(&json) {
                Ok(j) => Ok((key, j)),
                Err(e) => Err(Error::format(
                    format!("checkpoint, job {key}"),
                    format!("the record cannot be read: {e}"),
                )),
            },
        )
        .collect()
}

/// The folder of job files beside a checkpoint: `CHECKPOINT.jobs`.
pub fn jobs_dir(checkpoint: &Path) -> PathBuf {
    let mut name = checkpoint.file_name().unwrap_or_default().to_os_string();
    name.push(".jobs");
    checkpoint.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_a_bad_one_is_named() {
        let r = JobRecord {
            key: "abl-1-0001".into(),
            provider: "anthropic".into(),
            state: JobState::Preparing,
            batch_id: None,
            items: vec!["a".into(), "b".into()],
            attempt: 1,
            file: "/tmp/x.jsonl".into(),
            created_at: 7,
        };
        let json = serde_json::to_string(&r).expect("serializes");
        assert!(json.contains("\"state\":\"preparing\""), "{json}");
        let back = parse_jobs(vec![("abl-1-0001".into(), json)]).expect("reads");
        assert_eq!(back["abl-1-0001"].items, ["a", "b"]);
        let e = parse_jobs(vec![("k".into(), "{".into())]).expect_err("refused");
        assert!(e.to_string().contains("job k"), "{e}");
        assert_eq!(
            jobs_dir(Path::new("/d/run.sqlite")),
            Path::new("/d/run.sqlite.jobs")
        );
    }
}
