//! [`Checkpoint`]: a store bound to one run. It decides, per input item,
//! whether a stored record is replayed (same identity, same fingerprint, a
//! [`ResumePolicy`] that allows it) and records every new result before it
//! is published.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::identity::item_fingerprint_digits;
use super::record::{self, TypedRecord};
use super::writer::{self, Writer};
use super::{
    CheckpointStore, EncodedRecord, Identity, RECORD_VERSION, Record, StoredLine, item_fingerprint,
};
use crate::error::{Error, ErrorCategory};
use crate::fingerprint::{Hex, hex_str};
use crate::item::{Item, Prompt};
use crate::result::ItemResult;

/// What a resume does with one input item.
pub(crate) enum Decision<T> {
    /// Publish the stored result. Its id is empty and its context `None`:
    /// the caller moves them from the item (which it owns), and sets `index`.
    Replay(Box<ItemResult<T>>),
    /// Process the item; its fingerprint.
    Run(String),
    /// The store could not be read: the run stops with this message.
    Failed(String),
}
/// Which stored results a new run reuses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResumePolicy {
    /// Reuse nothing (records are still written).
    None,
    /// Reuse successes; failed items run again (default).
    #[default]
    Successes,
    /// Reuse successes and failures, except stops and configuration
    /// failures, which always run again.
    All,
}

impl std::str::FromStr for ResumePolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Self::None),
            "successes" => Ok(Self::Successes),
            "all" => Ok(Self::All),
            other => Err(format!(
                "resume policy {other:?}: expected none, successes or all"
            )),
        }
    }
}

/// Failures that say nothing about the item: they always run again.
pub fn always_reruns(category: ErrorCategory) -> bool {
    category.is_stop()
        || matches!(
            category,
            ErrorCategory::LogicError
                | ErrorCategory::AdmissionError
                | ErrorCategory::Authentication
                | ErrorCategory::PermissionDenied
                | ErrorCategory::InsufficientBalance
                | ErrorCategory::QuotaExhausted
                | ErrorCategory::RateLimitRetriesExceeded
                | ErrorCategory::InputError
        )
}

/// Settings of a [`Checkpoint`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointOptions {
    /// What to reuse.
    pub resume: ResumePolicy,
    /// Also store prompts and contexts (off: outputs only).
    pub store_inputs: bool,
    /// Most records in one commit (4,096).
    pub batch_rows: usize,
    /// Longest the writer waits for more records before a commit (0: group
    /// commit, writing whatever is queued at once; records that arrive
    /// during a commit form the next one).
    pub batch_delay: std::time::Duration,
}

impl Default for CheckpointOptions {
    fn default() -> Self {
        Self {
            resume: ResumePolicy::Successes,
            store_inputs: false,
            batch_rows: 4096,
            batch_delay: std::time::Duration::ZERO,
        }
    }
}

/// Most results that wait for the checkpoint writer at once: enough for
/// large commits, small enough to keep a streamed run's memory flat
/// (4,096 measured 72k appends/s at 47 MiB peak, 1,024 81–85k at 20 MiB).
const WRITER_QUEUE: usize = 1024;

type Parse<T> = for<'a> fn(&'a str) -> Result<TypedRecord<'a, T>, String>;
type Encode<T> = fn(&T) -> Result<Value, String>;

/// A store bound to a run: replays matching records, and records every new
/// result before it is published.
pub struct Checkpoint<T> {
    store: Arc<dyn CheckpointStore>,
    fresh: bool,
    writer: Writer,
    identity_fp: String,
    options: CheckpointOptions,
    encode: Encode<T>,
    parse: Parse<T>,
}

impl<T> std::fmt::Debug for Checkpoint<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("identity_fp", &self.identity_fp)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<T: Serialize + DeserializeOwned> Checkpoint<T> {
    /// Binds `store` to a run of `identity`.
    pub fn new(
        store: Arc<dyn CheckpointStore>,
        identity: &Identity,
        options: CheckpointOptions,
    ) -> Result<Self, Error> {
        Ok(Self {
            writer: Writer::start(
                Arc::clone(&store),
                options.batch_rows,
                options.batch_delay,
                WRITER_QUEUE,
            )?,
            fresh: !store.had_records_at_open(&identity.fingerprint()),
            store,
            identity_fp: identity.fingerprint(),
            options,
            encode: |t| serde_json::to_value(t).map_err(|e| e.to_string()),
            parse: |line| serde_json::from_str(line).map_err(|e| e.to_string()),
        })
    }
}

impl<T> Checkpoint<T> {
    /// The stored result of `item` if this run may reuse it, marked replayed.
    pub fn replay(
        &self,
        item: &Item,
        fingerprint: &str,
        index: u64,
    ) -> Result<Option<ItemResult<T>>, Error> {
        if !self.may_replay() {
            return Ok(None);
        }
        let line = self
            .store
            .lookup_raw(&self.identity_fp, &[item.id.as_str()])?
            .pop()
            .flatten();
        match self.decide(
            item,
            Some(fingerprint),
            line.as_ref().map(StoredLine::as_str),
        ) {
            Decision::Replay(mut r) => {
                r.id.clone_from(&item.id);
                r.context.clone_from(&item.context);
                r.index = index;
                Ok(Some(*r))
            }
            Decision::Run(_) => Ok(None),
            Decision::Failed(message) => Err(Error::format(
                format!("checkpoint, item {}", item.id),
                message,
            )),
        }
    }

    /// Notes the settings of this run in the store (JSON free of secrets),
    /// for reports; stores that cannot keep them ignore it.
    pub fn note_run(&self, settings: &str) -> Result<(), Error> {
        self.store.note_run(settings)
    }

    /// Saves the record of batch-API job `key` (see
    /// [`CheckpointStore::note_job`]).
    pub fn note_job(&self, key: &str, record: &str) -> Result<(), Error> {
        self.store.note_job(key, record)
    }

    /// Every batch-API job record, by key.
    pub fn jobs(&self) -> Vec<(String, String)> {
        self.store.jobs()
    }

    /// Whether this run can reuse anything (a resume policy and a store
    /// that held records when it was opened).
    pub(crate) fn may_replay(&self) -> bool {
        self.options.resume != ResumePolicy::None && !self.fresh
    }

    /// Decides a chunk of input items with one store round trip: replay,
    /// run (with its fingerprint), or fail. Called off the async threads.
    pub(crate) fn stage(&self, items: &[Item]) -> Vec<Decision<T>> {
        if !self.may_replay() {
            return items
                .iter()
                .map(|item| Decision::Run(item_fingerprint(item)))
                .collect();
        }
        let ids: Vec<&str> = items.iter().map(|i| i.id.as_str()).collect();
        match self.store.lookup_raw(&self.identity_fp, &ids) {
            Ok(lines) => items
                .iter()
                .zip(lines)
                .map(|(item, line)| self.decide(item, None, line.as_ref().map(StoredLine::as_str)))
                .collect(),
            Err(e) => {
                let message = e.to_string();
                items
                    .iter()
                    .map(|_| Decision::Failed(message.clone()))
                    .collect()
            }
        }
    }

    /// What to do with `item` given its stored line, if any. `fp` is the
    /// item's fingerprint when the caller has it.
    fn decide(&self, item: &Item, fp: Option<&str>, line: Option<&str>) -> Decision<T> {
        let computed: Hex;
        let fp = if let Some(fp) = fp {
            fp
        } else {
            computed = item_fingerprint_digits(item);
            hex_str(&computed)
        };
        let run = || Decision::Run(fp.to_owned());
        let Some(line) = line else {
            return run();
        };
        let rec = match (self.parse)(line) {
            Ok(rec) => rec,
            // A sound record whose output this build cannot read: run the
            // item again. A record that is not sound stops the run.
            Err(typed) => {
                return match Record::from_json(line) {
                    Ok(_) => run(),
                    Err(e) => {
                        Decision::Failed(format!("record of item {}: {e} ({typed})", item.id))
                    }
                };
            }
        };
        if let Err(e) = record::check_version(rec.v).and_then(|()| rec.result.check()) {
            return Decision::Failed(format!("record of item {}: {e}", item.id));
        }
        if rec.identity_fp != self.identity_fp || rec.item_fp != fp {
            return run();
        }
        let reuse = match rec.result.failure() {
            None => true,
            Some(category) => self.options.resume == ResumePolicy::All && !always_reruns(category),
        };
        if !reuse {
            return run();
        }
        // Boxed: a replay is moved a dozen times on its way to the consumer.
        let mut r = Box::new(rec.result.into_result(String::new(), None));
        r.context = None;
        r.replayed = true;
        Decision::Replay(r)
    }

    /// Writes `result` durably; returns once it is committed.
    pub async fn record(
        &self,
        result: &ItemResult<T>,
        fingerprint: String,
        prompt: Option<Prompt>,
    ) -> Result<(), Error>
    where
        T: Sync,
    {
        let rec = self.encode_record(result, fingerprint, prompt)?;
        self.commit(rec).await
    }

    /// Commits a record made by [`encode_record`](Self::encode_record).
    pub async fn commit(&self, record: Record) -> Result<(), Error> {
        // Serialized here, on the caller's thread, so the one writer thread
        // only writes.
        self.writer.write(EncodedRecord::new(&record)?).await
    }

    /// Queues a record made by [`encode_record`](Self::encode_record);
    /// `then` runs on the writer thread once it is committed (or with the
    /// error). Waits only while the writer's queue is full.
    pub(crate) async fn commit_then(&self, record: &Record, then: writer::Then) {
        match EncodedRecord::new(record) {
            Ok(encoded) => self.writer.write_then(encoded, then).await,
            Err(e) => {
                let message = e.to_string();
                let _ = tokio::task::spawn_blocking(move || then(Err(message))).await;
            }
        }
    }

    /// The record of `result` (output encoded as JSON).
    pub fn encode_record(
        &self,
        result: &ItemResult<T>,
        fingerprint: String,
        prompt: Option<Prompt>,
    ) -> Result<Record, Error> {
        let outcome = match &result.outcome {
            Ok(t) => Ok(
                (self.encode)(t).map_err(|e| Error::format(format!("item {}", result.id), e))?
            ),
            Err(e) => Err(e.clone()),
        };
        let rec = Record {
            v: RECORD_VERSION,
            id: result.id.clone(),
            item_fp: fingerprint,
            identity_fp: self.identity_fp.clone(),
            result: ItemResult {
                id: result.id.clone(),
                index: result.index,
                outcome,
                usage: result.usage,
                attempts: result.attempts,
                tries: result.tries,
                timing: result.timing.clone(),
                context: if self.options.store_inputs {
                    result.context.clone()
                } else {
                    None
                },
                replayed: false,
            },
            prompt: if self.options.store_inputs {
                prompt
            } else {
                None
            },
        };
        Ok(rec)
    }

    /// Settles the store once a run has ended (see
    /// [`CheckpointStore::settle`]); the engine calls it before the result
    /// stream ends.
    pub fn settle(&self) -> Result<(), Error> {
        self.store.settle()
    }

    /// Whether prompts are stored (the host keeps a copy for them).
    pub fn stores_inputs(&self) -> bool {
        self.options.store_inputs
    }
}
