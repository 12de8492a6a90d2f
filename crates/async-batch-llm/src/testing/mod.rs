//! Test doubles for pipelines: [`FakeStrategy`] answers without a network,
//! with scripted or seeded failures, latency and usage, and records what the
//! engine asked of it; with the `redis` feature, a throwaway
//! [`RedisServer`] for tests of shared limits.

#[cfg(feature = "redis")]
mod redis_server;
#[cfg(feature = "redis")]
pub use redis_server::RedisServer;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{CallError, ErrorCategory};
use crate::item::Prompt;
use crate::strategy::{Completion, RetryState, Strategy, dry_run_placeholder};
use crate::usage::TokenUsage;

/// What one physical call of a [`FakeStrategy`] does.
#[derive(Debug, Clone, PartialEq)]
pub enum FakeStep {
    /// Succeed.
    Ok,
    /// HTTP 429, with or without a retry-after hint.
    RateLimit(Option<Duration>),
    /// A retryable server error (`server_error`).
    Transient,
    /// A provider-side timeout (`api_timeout`, retryable).
    Timeout,
    /// Never answer: the engine's attempt timeout must end the call.
    Hang,
    /// A permanent client error (`client_error`).
    Permanent,
    /// Output that fails validation (`validation_error`, retried at once).
    Validation,
    /// A billed failure: a reply that failed to parse, with its usage.
    BilledFailure(TokenUsage),
    /// Fail with any category.
    Error(ErrorCategory),
    /// Fail with any category, billed with this usage.
    BilledError(ErrorCategory, TokenUsage),
}

impl FakeStep {
    /// The usage this step bills when the strategy's success usage is `ok`.
    pub fn billed(&self, ok: TokenUsage) -> TokenUsage {
        match self {
            FakeStep::Ok => ok,
            FakeStep::BilledFailure(u) | FakeStep::BilledError(_, u) => *u,
            _ => TokenUsage::default(),
        }
    }

    fn error(&self) -> Option<CallError> {
        Some(match self {
            FakeStep::Ok | FakeStep::Hang => return None,
            FakeStep::RateLimit(hint) => CallError::rate_limit("fake 429", *hint).with_status(429),
            FakeStep::Transient => CallError::transient("fake 500").with_status(500),
            FakeStep::Timeout => {
                CallError::new(ErrorCategory::ApiTimeout, "fake 408").with_status(408)
            }
            FakeStep::Permanent => CallError::permanent("fake 400").with_status(400),
            FakeStep::Validation => CallError::validation("fake invalid output"),
            FakeStep::BilledFailure(u) => {
                CallError::validation("fake unparsable reply").with_usage(*u)
            }
            FakeStep::Error(c) => CallError::new(*c, format!("fake {c}")),
            FakeStep::BilledError(c, u) => {
                CallError::new(*c, format!("fake billed {c}")).with_usage(*u)
            }
        })
    }
}

/// Counts a call out of flight when dropped, even if the call is cancelled.
struct Leave<'a>(&'a AtomicUsize);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

type Respond = dyn Fn(&Prompt) -> String + Send + Sync;

/// What the fake saw of one item.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeItemLog {
    /// The `attempt` argument of each `execute` call.
    pub execute_attempts: Vec<u32>,
    /// The `attempt` argument of each `on_error` call.
    pub on_error_attempts: Vec<u32>,
}

#[derive(Default)]
struct Recorder {
    calls: AtomicU64,
    prepares: AtomicU64,
    cleanups: AtomicU64,
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
    log: Mutex<HashMap<String, FakeItemLog>>,
    starts: Mutex<Vec<(String, Instant)>>,
}

/// A strategy that answers without a network.
///
/// Items are told apart by their prompt text (a strategy never sees item
/// ids), so give each test item a distinct prompt; schedules and logs are
/// keyed by it.
///
/// The output is a function of the prompt (echo by default). Each physical
/// call of an item takes the next step of that item's schedule (or of the
/// default schedule), then succeeds once the schedule is spent; a seeded
/// failure rate adds transient failures decided per item and try, so runs
/// are reproducible. With [`recording`](FakeStrategy::recording) it logs
/// every `execute`/`on_error` attempt and call start per item.
#[derive(Clone)]
pub struct FakeStrategy {
    respond: Arc<Respond>,
    latency: Duration,
    usage: TokenUsage,
    schedule: Arc<Vec<FakeStep>>,
    per_item: Arc<HashMap<String, Vec<FakeStep>>>,
    item_latency: Arc<HashMap<String, Duration>>,
    failure_rate: f64,
    seed: u64,
    prepare_error: Option<CallError>,
    prepare_latency: Duration,
    recording: bool,
    scope: Option<String>,
    unknown_usage: bool,
    rec: Arc<Recorder>,
}

impl std::fmt::Debug for FakeStrategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeStrategy")
            .field("latency", &self.latency)
            .field("usage", &self.usage)
            .field("schedule", &self.schedule)
            .field("failure_rate", &self.failure_rate)
            .finish_non_exhaustive()
    }
}

impl Default for FakeStrategy {
    fn default() -> Self {
        Self::echo()
    }
}

const TRY_KEY: &str = "fake.try";
const ID_KEY: &str = "fake.id";

impl FakeStrategy {
    /// Echoes the prompt text, instantly, with usage 10 in / 5 out.
    pub fn echo() -> Self {
        Self::new(|p: &Prompt| p.text().into_owned())
    }

    /// Answers with `respond(prompt)`.
    pub fn new(respond: impl Fn(&Prompt) -> String + Send + Sync + 'static) -> Self {
        Self {
            respond: Arc::new(respond),
            latency: Duration::ZERO,
            usage: TokenUsage::new(10, 5),
            schedule: Arc::new(Vec::new()),
            per_item: Arc::new(HashMap::new()),
            item_latency: Arc::new(HashMap::new()),
            failure_rate: 0.0,
            seed: 0,
            prepare_error: None,
            prepare_latency: Duration::ZERO,
            recording: false,
            scope: None,
            unknown_usage: false,
            rec: Arc::new(Recorder::default()),
        }
    }

    /// Calls for item `id` take `latency` instead of the strategy's (a
    /// provider answers a refusal faster than a completion).
    #[must_use]
    pub fn with_item_latency(mut self, id: impl Into<String>, latency: Duration) -> Self {
        Arc::make_mut(&mut self.item_latency).insert(id.into(), latency);
        self
    }

    /// Each call takes `latency` (on tokio's clock).
    #[must_use]
    pub fn with_latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// The usage a successful call bills.
    #[must_use]
    pub fn with_usage(mut self, usage: TokenUsage) -> Self {
        self.usage = usage;
        self
    }

    /// Successful calls report no usage (as a provider that omits it).
    #[must_use]
    pub fn with_unknown_usage(mut self) -> Self {
        self.unknown_usage = true;
        self
    }

    /// The steps of every item's first calls.
    #[must_use]
    pub fn with_schedule(mut self, steps: Vec<FakeStep>) -> Self {
        self.schedule = Arc::new(steps);
        self
    }

    /// The steps of one item's first calls (overrides the default schedule).
    #[must_use]
    pub fn with_item_schedule(mut self, id: impl Into<String>, steps: Vec<FakeStep>) -> Self {
        Arc::make_mut(&mut self.per_item).insert(id.into(), steps);
        self
    }

    /// After the schedule, each call fails with a transient error with
    /// probability `rate`, decided by `seed`, the item's prompt and the try.
    #[must_use]
    pub fn with_failure_rate(mut self, rate: f64, seed: u64) -> Self {
        self.failure_rate = rate;
        self.seed = seed;
        self
    }

    /// `prepare` fails with `error` (each time it is run).
    #[must_use]
    pub fn with_prepare_error(mut self, error: CallError) -> Self {
        self.prepare_error = Some(error);
        self
    }

    /// `prepare` takes `latency`.
    #[must_use]
    pub fn with_prepare_latency(mut self, latency: Duration) -> Self {
        self.prepare_latency = latency;
        self
    }

    /// Log attempts and call starts per item (costs a lock per call).
    #[must_use]
    pub fn recording(mut self) -> Self {
        self.recording = true;
        self
    }

    /// Report this quota scope.
    #[must_use]
    pub fn with_scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }

    /// The usage of a successful call.
    pub fn success_usage(&self) -> TokenUsage {
        self.usage
    }

    /// Physical `execute` calls so far.
    pub fn calls(&self) -> u64 {
        self.rec.calls.load(Ordering::Relaxed)
    }

    /// `prepare` runs so far.
    pub fn prepares(&self) -> u64 {
        self.rec.prepares.load(Ordering::Relaxed)
    }

    /// `cleanup` runs so far.
    pub fn cleanups(&self) -> u64 {
        self.rec.cleanups.load(Ordering::Relaxed)
    }

    /// Most calls in flight at once.
    pub fn peak_in_flight(&self) -> usize {
        self.rec.peak_in_flight.load(Ordering::Relaxed)
    }

    /// What the fake saw of item `id` (needs [`recording`](Self::recording)).
    pub fn item_log(&self, id: &str) -> FakeItemLog {
        self.rec
            .log
            .lock()
            .map(|l| l.get(id).cloned().unwrap_or_default())
            .unwrap_or_default()
    }

    /// Every call start as (item id, instant), in order (needs recording).
    pub fn call_starts(&self) -> Vec<(String, Instant)> {
        self.rec
            .starts
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// The step of try `try_no` (1-based) for an item.
    pub fn step_for(&self, id: &str, prompt: &str, try_no: u32) -> FakeStep {
        let schedule = self.per_item.get(id).unwrap_or(&self.schedule);
        if let Some(step) = schedule.get((try_no as usize).saturating_sub(1)) {
            return step.clone();
        }
        if self.failure_rate > 0.0 {
            let mut key = prompt.as_bytes().to_vec();
            key.extend_from_slice(&try_no.to_le_bytes());
            if crate::rand::unit_from(crate::rand::hash_bytes(self.seed, &key)) < self.failure_rate
            {
                return FakeStep::Transient;
            }
        }
        FakeStep::Ok
    }

    fn id_of(prompt: &Prompt) -> String {
        prompt.text().into_owned()
    }
}

impl Strategy for FakeStrategy {
    type Output = String;

    async fn prepare(&self) -> Result<(), CallError> {
        self.rec.prepares.fetch_add(1, Ordering::Relaxed);
        if !self.prepare_latency.is_zero() {
            tokio::time::sleep(self.prepare_latency).await;
        }
        match &self.prepare_error {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    async fn execute(
        &self,
        prompt: &Prompt,
        attempt: u32,
        _timeout: Duration,
        state: &mut RetryState,
    ) -> Result<Completion<String>, CallError> {
        self.rec.calls.fetch_add(1, Ordering::Relaxed);
        let try_no = state.increment(TRY_KEY);
        let id = Self::id_of(prompt);
        if self.recording {
            if !state.contains(ID_KEY) {
                state.set(ID_KEY, id.clone());
            }
            if let Ok(mut log) = self.rec.log.lock() {
                log.entry(id.clone())
                    .or_default()
                    .execute_attempts
                    .push(attempt);
            }
            if let Ok(mut starts) = self.rec.starts.lock() {
                starts.push((id.clone(), Instant::now()));
            }
        }
        let now = self.rec.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        self.rec.peak_in_flight.fetch_max(now, Ordering::AcqRel);
        let _leave = Leave(&self.rec.in_flight);
        let latency = self.item_latency.get(&id).copied().unwrap_or(self.latency);
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let step = self.step_for(&id, &id, try_no);
        if step == FakeStep::Hang {
            std::future::pending::<()>().await;
        }
        match step.error() {
            Some(e) => Err(e),
            None => Ok((
                (self.respond)(prompt),
                (!self.unknown_usage).then_some(self.usage),
            )),
        }
    }

    async fn on_error(&self, _error: &CallError, attempt: u32, state: &mut RetryState) {
        if self.recording
            && let Some(id) = state.get::<String>(ID_KEY)
            && let Ok(mut log) = self.rec.log.lock()
        {
            log.entry(id.clone())
                .or_default()
                .on_error_attempts
                .push(attempt);
        }
    }

    async fn cleanup(&self) {
        self.rec.cleanups.fetch_add(1, Ordering::Relaxed);
    }

    async fn dry_run(&self, prompt: &Prompt) -> Result<Completion<String>, CallError> {
        Ok(dry_run_placeholder(prompt))
    }

    fn quota_scope(&self) -> Option<String> {
        self.scope.clone()
    }
}
