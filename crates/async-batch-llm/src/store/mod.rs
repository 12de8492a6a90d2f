//! Checkpoints: a run that is killed resumes where it stopped, calls no
//! finished item again, and publishes each item exactly once.
//!
//! Every result is written to a [`CheckpointStore`] before it is published
//! (a writer thread batches commits; the item waits for its commit). On the
//! next run with the same store, a [`Checkpoint`] replays the records whose
//! run identity and item fingerprint match, as the [`ResumePolicy`] allows.
//! Replayed results are marked `replayed` and their tokens are reported
//! apart from the current run's.
//!
//! Two stores share one record format: [`JsonlStore`] (append-only) and
//! [`SqliteStore`] (WAL, indexed). Both guard the user's data:
//!
//! - **A checkpoint is only a checkpoint.** Opening refuses a file that is
//!   not one of ours (a JSONL file whose first line is not our manifest, a
//!   SQLite database without our `application_id` or with other tables),
//!   before anything is written to it; a torn last line is repaired only in
//!   a file that is ours.
//! - **One writer.** Opening for writing takes an exclusive lock
//!   ([`StoreLock`]) for as long as the store is open; a second run fails at
//!   once naming the holder, and a killed holder leaves no lock behind.
//! - **Every identity is kept.** Records are keyed by run identity and item
//!   id: a run with another model, system prompt or prompt version writes
//!   its own records beside the earlier ones and replays only its own;
//!   [`CheckpointStore::identities`] lists every identity a store holds.

mod checkpoint;
mod identity;
mod jsonl;
mod lock;
mod record;
#[cfg(feature = "sqlite")]
mod sqlite;
mod writer;

use std::sync::Arc;

pub(crate) use checkpoint::Decision;
pub use checkpoint::{Checkpoint, CheckpointOptions, ResumePolicy, always_reruns};
pub use identity::{Identity, KnownIdentity, Manifest, item_fingerprint};
pub use jsonl::JsonlStore;
pub use lock::{StoreLock, lock_path};
pub use record::{RECORD_VERSION, Record};
#[cfg(feature = "sqlite")]
pub use sqlite::{Durability, SqliteStore};

use crate::error::Error;

/// Name of the checkpoint format.
pub const CHECKPOINT_SCHEMA: &str = "async-batch-llm/checkpoint";
/// A record serialized for a store, with the fields stores index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedRecord {
    /// Item id.
    pub id: String,
    /// Identity fingerprint (records are keyed by identity and id).
    pub identity_fp: String,
    /// Whether the item succeeded.
    pub ok: bool,
    /// The failure category, if any.
    pub category: Option<&'static str>,
    /// The whole record as one JSON line.
    pub body: String,
}

impl EncodedRecord {
    /// Serializes a record.
    pub fn new(r: &Record) -> Result<Self, Error> {
        Ok(Self {
            id: r.id.clone(),
            identity_fp: r.identity_fp.clone(),
            ok: r.result.outcome.is_ok(),
            category: r.result.outcome.as_ref().err().map(|e| e.category.as_str()),
            body: serde_json::to_string(r)
                .map_err(|e| Error::format(format!("record {}", r.id), e.to_string()))?,
        })
    }
}
/// One stored record line as a store hands it to a resume. Lines read
/// together may share one buffer (one allocation for many records).
#[derive(Debug, Clone)]
pub struct StoredLine {
    buf: Arc<String>,
    start: usize,
    end: usize,
}

impl StoredLine {
    /// The line `start..end` of a shared buffer (an empty line when the
    /// range is not in it).
    pub fn shared(buf: Arc<String>, range: std::ops::Range<usize>) -> Self {
        Self {
            buf,
            start: range.start,
            end: range.end,
        }
    }

    /// The text of the line.
    pub fn as_str(&self) -> &str {
        self.buf.get(self.start..self.end).unwrap_or_default()
    }
}

impl From<String> for StoredLine {
    fn from(line: String) -> Self {
        let end = line.len();
        Self::shared(Arc::new(line), 0..end)
    }
}

/// Where records live. Records are keyed by identity fingerprint and item
/// id: a store keeps the latest record of each item for every identity
/// that wrote to it.
pub trait CheckpointStore: Send + Sync + 'static {
    /// The latest record of `id` under `identity_fp`.
    fn lookup(&self, identity_fp: &str, id: &str) -> Result<Option<Record>, Error>;
    /// The latest stored line of each id under `identity_fp`, in the order
    /// asked (a resume asks for a chunk of input items at once). The
    /// default looks each up and serializes it again; stores keep their
    /// lines and return them.
    fn lookup_raw(
        &self,
        identity_fp: &str,
        ids: &[&str],
    ) -> Result<Vec<Option<StoredLine>>, Error> {
        ids.iter()
            .map(|id| {
                self.lookup(identity_fp, id)?
                    .map(|r| {
                        serde_json::to_string(&r)
                            .map(StoredLine::from)
                            .map_err(|e| Error::format(format!("record {id}"), e.to_string()))
                    })
                    .transpose()
            })
            .collect()
    }
    /// Writes records durably (as the store's durability setting says).
    /// Called from one writer thread.
    fn write_batch(&self, records: &[EncodedRecord]) -> Result<(), Error>;
    /// Visits every record: the latest per identity and id.
    fn for_each(&self, f: &mut dyn FnMut(Record) -> Result<(), Error>) -> Result<(), Error>;
    /// Called when a run has ended with every record committed: move them
    /// where the store keeps them for good (SQLite copies its WAL into the
    /// database file). The default does nothing.
    fn settle(&self) -> Result<(), Error> {
        Ok(())
    }
    /// The manifest: what created the store.
    fn manifest(&self) -> Option<Manifest>;
    /// Every identity the store holds records of, or was opened for, in
    /// the order they first appeared.
    fn identities(&self) -> Vec<KnownIdentity>;
    /// False when the store held no record of `identity_fp` when it was
    /// opened, so this run's items cannot be in it (lookups are skipped).
    fn had_records_at_open(&self, identity_fp: &str) -> bool {
        let _ = identity_fp;
        true
    }
    /// Notes the settings of a run that opened the store (JSON, free of
    /// secrets), for reports. Stores that cannot keep them ignore it.
    fn note_run(&self, settings: &str) -> Result<(), Error> {
        let _ = settings;
        Ok(())
    }
    /// The settings of the runs noted, oldest first (the last [`RUNS_KEPT`]).
    fn runs(&self) -> Vec<String> {
        Vec::new()
    }
    /// Saves (or replaces) the record of provider batch-API job `key`
    /// (JSON), durably, before the caller goes on: a job is recorded before
    /// it is submitted, and again once the provider named it. Stores that
    /// cannot keep jobs refuse.
    fn note_job(&self, key: &str, record: &str) -> Result<(), Error> {
        let _ = (key, record);
        Err(Error::config(
            "this checkpoint cannot keep batch-API jobs: use a SQLite checkpoint (.sqlite)",
        ))
    }
    /// Every job record saved, by key.
    fn jobs(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

/// How many runs' settings a store keeps.
pub const RUNS_KEPT: usize = 20;
