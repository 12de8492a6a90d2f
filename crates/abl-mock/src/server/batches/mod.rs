//! The providers' batch APIs: OpenAI's Files + Batches ([`openai`]),
//! Anthropic's Message Batches ([`anthropic`]) and Gemini's Batch Mode
//! with its resumable Files upload ([`gemini`]). A job ends
//! `--batch-processing-ms` after it was made; then each of its requests
//! is answered as the online route would answer it ([`run`]: the same
//! deterministic replies, markers and faults), and `[[mock:expire]]` in a
//! request leaves it unexecuted, as a job whose window passed. `/stats`
//! counts jobs, submitted requests and executions per custom id, so a
//! test can prove no job was submitted twice and no request ran twice.

pub(super) mod anthropic;
pub(super) mod gemini;
pub(super) mod openai;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use super::Shared;
use super::generate::{compose, pick_fault};
use crate::config::Fault;
use crate::wire::{self, Ending, Format};

/// Files and jobs of the three batch APIs.
#[derive(Debug, Default)]
pub(crate) struct BatchStore {
    inner: Mutex<Inner>,
    /// Job-route requests answered so far (for `--batch-api-errors`).
    calls: std::sync::atomic::AtomicU64,
}

/// Whether this job-route request is one of the first
/// `--batch-api-errors` N, answered 500.
fn failing(s: &Shared) -> bool {
    let n = s
        .batches
        .calls
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    n < s.config.batch_api_errors
}

#[derive(Debug, Default)]
struct Inner {
    files: HashMap<String, StoredFile>,
    openai: BTreeMap<String, openai::Job>,
    anthropic: BTreeMap<String, anthropic::Job>,
    gemini: BTreeMap<String, gemini::Job>,
    /// Gemini uploads started and not yet sent: upload id → display name.
    uploads: HashMap<String, String>,
    next: u64,
}

impl Inner {
    /// A new id, unique across every kind of object.
    fn next_id(&mut self) -> u64 {
        self.next += 1;
        self.next
    }
}

/// An uploaded or produced file.
#[derive(Debug)]
struct StoredFile {
    filename: String,
    purpose: String,
    bytes: Arc<Vec<u8>>,
    created_at: u64,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// When a job made now is due.
fn due(s: &Shared) -> Instant {
    Instant::now() + Duration::from_millis(s.config.batch_processing_ms)
}

/// The 500 of a failing job-route request, in `format`'s error shape.
fn server_error(format: Format) -> axum::response::Response {
    let (status, headers, body) = wire::error(
        format,
        Fault::ServerError,
        "The server had an error while processing your request.",
    );
    super::json_response(status, &headers, &body)
}

/// The non-blank lines of a JSONL.
fn lines(b: &[u8]) -> impl Iterator<Item = &[u8]> {
    b.split(|c| *c == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
}

/// What became of one request of a job.
enum Ran {
    /// Answered: the online route's success body.
    Answer(Value),
    /// Failed as the online route fails: its status and error body.
    Failed(u16, Value),
    /// Not run: the job's window passed first (`[[mock:expire]]`).
    Expired,
    /// Not a request the route takes.
    Invalid(String),
}

/// Runs one request `body` of `format` (whose model is `model` when the
/// route names it) as the online route would, counting it under
/// `custom_id`.
fn run(s: &Shared, format: Format, body: &Value, model: Option<&str>, custom_id: &str) -> Ran {
    let parsed = match wire::parse(format, body, model) {
        Ok(p) => p,
        Err(e) => return Ran::Invalid(e),
    };
    if parsed.user_text.contains("[[mock:expire]]") {
        return Ran::Expired;
    }
    let seq = s.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    s.stats.batch_item_executed(custom_id);
    let (fault, marks) = pick_fault(s, &parsed, seq);
    match fault {
        None
        | Some(
            Fault::Empty | Fault::Safety | Fault::Refusal | Fault::InvalidOutput | Fault::Hang,
        ) => {
            let (content, usage) = compose(s, format, &parsed, fault, &marks, 0);
            let ending = match fault {
                Some(Fault::Empty) => Ending::Empty,
                Some(Fault::Safety) => Ending::Safety,
                Some(Fault::Refusal) => Ending::Refusal,
                _ => Ending::Normal,
            };
            Ran::Answer(wire::success(format, &parsed, &content, usage, ending, seq))
        }
        Some(f) => {
            let (status, _, b) = wire::error(
                format,
                f,
                "The server had an error while processing your request.",
            );
            Ran::Failed(status, b)
        }
    }
}
