//! One item's result: its output or error, usage, attempts and timing,
//! and the JSON record it is written as.

use std::time::{Duration, SystemTime};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::ErrorCategory;
use crate::time::duration_ms;
use crate::usage::TokenUsage;

/// Why an item failed for good.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemError {
    /// The category.
    pub category: ErrorCategory,
    /// A message free of secrets.
    pub message: String,
    /// For deadlines and exhausted budgets: the attempt error before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<Box<ItemError>>,
}

impl ItemError {
    /// An error without a previous one.
    pub fn new(category: ErrorCategory, message: impl Into<String>) -> Self {
        Self {
            category,
            message: crate::secret::redacted(message.into()),
            last_error: None,
        }
    }
}

impl std::fmt::Display for ItemError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.category, self.message)?;
        if let Some(last) = &self.last_error {
            write!(f, " (last error: {last})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ItemError {}

/// Timing of one physical try.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TryTiming {
    /// The logical attempt number the try belonged to.
    pub attempt: u32,
    /// Wall time when the try began waiting (cooldown, then admission, then
    /// the call); absent in older records.
    #[serde(
        default,
        with = "crate::time::option_rfc3339",
        skip_serializing_if = "Option::is_none"
    )]
    pub started_at: Option<SystemTime>,
    /// Time spent waiting for the scope's cooldown before it.
    #[serde(with = "duration_ms", rename = "cooldown_wait_ms")]
    pub cooldown_wait: Duration,
    /// Time spent waiting for admission (rate limits, concurrency gate).
    #[serde(with = "duration_ms", rename = "admission_wait_ms")]
    pub admission_wait: Duration,
    /// Time the call itself took.
    #[serde(with = "duration_ms", rename = "execution_ms")]
    pub execution: Duration,
    /// The error category, or `None` if the try succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorCategory>,
}

/// Timing of one item.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemTiming {
    /// Wall time when processing began; absent for items that never began
    /// (and in older records).
    #[serde(
        default,
        with = "crate::time::option_rfc3339",
        skip_serializing_if = "Option::is_none"
    )]
    pub started_at: Option<SystemTime>,
    /// From start of processing to the result.
    #[serde(with = "duration_ms", rename = "total_ms")]
    pub total: Duration,
    /// Sum of cooldown waits.
    #[serde(with = "duration_ms", rename = "cooldown_wait_ms")]
    pub cooldown_wait: Duration,
    /// Sum of admission waits.
    #[serde(with = "duration_ms", rename = "admission_wait_ms")]
    pub admission_wait: Duration,
    /// Sum of execution times.
    #[serde(with = "duration_ms", rename = "execution_ms")]
    pub execution: Duration,
    /// Sum of backoff sleeps.
    #[serde(with = "duration_ms", rename = "backoff_ms")]
    pub backoff: Duration,
    /// Each physical try.
    #[serde(default)]
    pub tries: Vec<TryTiming>,
}

/// The one terminal result of an item.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemResult<T> {
    /// The item's id.
    pub id: String,
    /// Position in the input (0-based), for input-order output.
    pub index: u64,
    /// The output, or why there is none.
    pub outcome: Result<T, ItemError>,
    /// Usage summed over every billed try, failed ones included.
    pub usage: TokenUsage,
    /// Logical attempts (rate-limit retries repeat an attempt).
    pub attempts: u32,
    /// Physical calls made.
    pub tries: u32,
    /// Timing.
    pub timing: ItemTiming,
    /// The item's context, carried through.
    pub context: Option<serde_json::Value>,
    /// True when the result was replayed from a checkpoint, not computed now.
    pub replayed: bool,
}

impl<T> ItemResult<T> {
    /// True on success.
    pub fn is_ok(&self) -> bool {
        self.outcome.is_ok()
    }

    /// The output, if any.
    pub fn output(&self) -> Option<&T> {
        self.outcome.as_ref().ok()
    }

    /// The error, if any.
    pub fn error(&self) -> Option<&ItemError> {
        self.outcome.as_ref().err()
    }

    /// Tries beyond the first.
    pub fn retries(&self) -> u32 {
        self.tries.saturating_sub(1)
    }
}

/// The serialized form of an [`ItemResult`]: one JSON object per item.
#[derive(Serialize, Deserialize)]
struct ItemRecord<T> {
    id: String,
    index: u64,
    ok: bool,
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    output: Option<T>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<ItemError>,
    usage: TokenUsage,
    attempts: u32,
    tries: u32,
    timing: ItemTiming,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    context: Option<serde_json::Value>,
    #[serde(default)]
    replayed: bool,
}

fn none<T>() -> Option<T> {
    None
}

impl<T: Serialize + Clone> Serialize for ItemResult<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ItemRecord {
            id: self.id.clone(),
            index: self.index,
            ok: self.outcome.is_ok(),
            output: self.outcome.as_ref().ok().cloned(),
            error: self.outcome.as_ref().err().cloned(),
            usage: self.usage,
            attempts: self.attempts,
            tries: self.tries,
            timing: self.timing.clone(),
            context: self.context.clone(),
            replayed: self.replayed,
        }
        .serialize(s)
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for ItemResult<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = ItemRecord::<T>::deserialize(d)?;
        let outcome = match (r.ok, r.output, r.error) {
            (true, Some(out), None) => Ok(out),
            (false, None, Some(err)) => Err(err),
            (true, None, _) => {
                return Err(serde::de::Error::custom("ok is true but output is missing"));
            }
            (true, Some(_), Some(_)) => {
                return Err(serde::de::Error::custom(
                    "ok is true but an error is present",
                ));
            }
            (false, _, None) => {
                return Err(serde::de::Error::custom("ok is false but error is missing"));
            }
            (false, Some(_), Some(_)) => {
                return Err(serde::de::Error::custom(
                    "ok is false but an output is present",
                ));
            }
        };
        Ok(ItemResult {
            id: r.id,
            index: r.index,
            outcome,
            usage: r.usage,
            attempts: r.attempts,
            tries: r.tries,
            timing: r.timing,
            context: r.context,
            replayed: r.replayed,
        })
    }
}
