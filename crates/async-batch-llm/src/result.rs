//! Results: one [`ItemResult`] per accepted item, and a [`BatchResult`] with
//! totals, the termination reason and a human summary.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorCategory};
use crate::usage::{Prices, TokenUsage};

/// Name of the serialized batch format.
pub const BATCH_SCHEMA: &str = "async-batch-llm/batch";
/// Version of the serialized batch format.
pub const BATCH_SCHEMA_VERSION: u32 = 1;

/// Durations as milliseconds with microsecond precision (`12.345`).
pub mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes a duration as fractional milliseconds.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_micros() as f64 / 1000.0)
    }

    /// Reads fractional milliseconds, rounded to the microsecond.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let ms = f64::deserialize(d)?;
        if !ms.is_finite() || ms < 0.0 {
            return Err(serde::de::Error::custom(format!(
                "duration must be a finite, non-negative number of ms, got {ms}"
            )));
        }
        Ok(Duration::from_micros((ms * 1000.0).round() as u64))
    }
}

/// A duration truncated to whole microseconds, as results store them.
pub(crate) fn micros(d: Duration) -> Duration {
    Duration::from_micros(d.as_micros().min(u128::from(u64::MAX)) as u64)
}

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
            message: message.into(),
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

/// Why a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TerminationReason {
    /// Every accepted item was processed.
    Completed,
    /// The batch deadline passed.
    BatchDeadline,
    /// A token or cost budget was spent.
    BudgetExceeded,
    /// An item failed for good with a fail-fast category.
    FailFast,
    /// The run was stopped by its caller (or the result stream was dropped).
    Aborted,
    /// A checkpoint write failed; what was recorded before it is kept.
    CheckpointFailed,
}

impl TerminationReason {
    /// The stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::BatchDeadline => "batch_deadline",
            Self::BudgetExceeded => "budget_exceeded",
            Self::FailFast => "fail_fast",
            Self::Aborted => "aborted",
            Self::CheckpointFailed => "checkpoint_failed",
        }
    }

    /// The category given to items the stop prevented from finishing.
    pub fn item_category(self) -> ErrorCategory {
        match self {
            Self::BatchDeadline => ErrorCategory::BatchDeadline,
            Self::BudgetExceeded => ErrorCategory::BudgetExceeded,
            Self::Completed | Self::FailFast | Self::Aborted | Self::CheckpointFailed => {
                ErrorCategory::Aborted
            }
        }
    }
}

impl std::fmt::Display for TerminationReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a run ended, with the item and category that triggered a stop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Termination {
    /// Why.
    pub reason: TerminationReason,
    /// The item that triggered the stop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item_id: Option<String>,
    /// The category that triggered the stop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<ErrorCategory>,
    /// More detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Termination {
    /// A termination with only a reason.
    pub fn new(reason: TerminationReason) -> Self {
        Self {
            reason,
            item_id: None,
            category: None,
            message: None,
        }
    }

    /// The normal end.
    pub fn completed() -> Self {
        Self::new(TerminationReason::Completed)
    }
}

/// Failures of one category.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CategoryStats {
    /// How many items failed with it.
    pub count: u64,
    /// Up to three example item ids.
    pub example_ids: Vec<String>,
}

/// Totals over a set of results. Fed one result at a time, so a streaming
/// consumer can keep it without holding the results.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BatchStats {
    /// Results seen.
    pub items: u64,
    /// Successes.
    pub succeeded: u64,
    /// Failures.
    pub failed: u64,
    /// Results replayed from a checkpoint.
    pub replayed: u64,
    /// Physical calls.
    pub tries: u64,
    /// Logical attempts.
    pub attempts: u64,
    /// Tries that repeated an attempt after a rate limit.
    pub rate_limit_retries: u64,
    /// Attempts beyond each item's first.
    pub other_retries: u64,
    /// Usage of the current run (billed failures included).
    pub usage: TokenUsage,
    /// Usage of replayed results, reported apart.
    pub replayed_usage: TokenUsage,
    /// Failures by category.
    pub failures: BTreeMap<ErrorCategory, CategoryStats>,
    /// Cooldowns started in the run's scope while it ran.
    pub cooldowns: u64,
    /// True for a dry run: usage and cost are projections, no call was made.
    pub dry_run: bool,
    /// RPM/TPM admission in the run's scope while it ran.
    pub admission: crate::limit::AdmissionStats,
}

impl BatchStats {
    /// Adds one result.
    pub fn add<T>(&mut self, r: &ItemResult<T>) {
        self.items += 1;
        if r.replayed {
            // Calls made by an earlier run: not this run's.
            self.replayed += 1;
            self.replayed_usage += r.usage;
        } else {
            self.usage += r.usage;
            self.tries += u64::from(r.tries);
            self.attempts += u64::from(r.attempts);
            self.rate_limit_retries += u64::from(r.tries.saturating_sub(r.attempts));
            self.other_retries += u64::from(r.attempts.saturating_sub(1));
        }
        match &r.outcome {
            Ok(_) => self.succeeded += 1,
            Err(e) => {
                self.failed += 1;
                let c = self.failures.entry(e.category).or_default();
                c.count += 1;
                if c.example_ids.len() < 3 {
                    c.example_ids.push(r.id.clone());
                }
            }
        }
    }
}

/// Nearest-rank percentile `p` (0–100) of sorted values.
pub fn nearest_rank(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// p50, p95 and p99 of a set of durations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Median.
    #[serde(with = "duration_ms", rename = "p50_ms")]
    pub p50: Duration,
    /// 95th percentile.
    #[serde(with = "duration_ms", rename = "p95_ms")]
    pub p95: Duration,
    /// 99th percentile.
    #[serde(with = "duration_ms", rename = "p99_ms")]
    pub p99: Duration,
}

impl Percentiles {
    /// Nearest-rank percentiles of `values` (sorted in place).
    pub fn of(values: &mut [Duration]) -> Self {
        values.sort_unstable();
        Self {
            p50: nearest_rank(values, 50.0).unwrap_or_default(),
            p95: nearest_rank(values, 95.0).unwrap_or_default(),
            p99: nearest_rank(values, 99.0).unwrap_or_default(),
        }
    }
}

/// Every result of a run, its totals and how it ended.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchResult<T> {
    /// The results, in completion order unless input order was asked for.
    pub results: Vec<ItemResult<T>>,
    /// Totals.
    pub stats: BatchStats,
    /// How the run ended.
    pub termination: Termination,
    /// Wall time of the run.
    pub wall_time: Duration,
}

#[derive(Serialize, Deserialize)]
struct BatchHeader {
    schema: String,
    version: u32,
    termination: Termination,
    #[serde(with = "duration_ms", rename = "wall_time_ms")]
    wall_time: Duration,
    stats: BatchStats,
}

#[derive(Serialize, Deserialize)]
struct BatchDocument<R> {
    #[serde(flatten)]
    header: BatchHeader,
    results: R,
}

impl<T> BatchResult<T> {
    /// Builds a batch result from results, computing the totals.
    pub fn new(results: Vec<ItemResult<T>>, termination: Termination, wall_time: Duration) -> Self {
        let mut stats = BatchStats::default();
        for r in &results {
            stats.add(r);
        }
        Self {
            results,
            stats,
            termination,
            wall_time: micros(wall_time),
        }
    }

    /// The results sorted by input position.
    #[must_use]
    pub fn in_input_order(mut self) -> Self {
        self.results.sort_by_key(|r| r.index);
        self
    }

    /// Successes.
    pub fn succeeded(&self) -> impl Iterator<Item = &ItemResult<T>> {
        self.results.iter().filter(|r| r.is_ok())
    }

    /// Failures.
    pub fn failed(&self) -> impl Iterator<Item = &ItemResult<T>> {
        self.results.iter().filter(|r| !r.is_ok())
    }

    /// Percentiles of admission wait (cooldown plus admission) per item.
    pub fn admission_wait_percentiles(&self) -> Percentiles {
        self.percentiles_of(|t| t.cooldown_wait + t.admission_wait)
    }

    /// Percentiles of execution time per item.
    pub fn execution_percentiles(&self) -> Percentiles {
        self.percentiles_of(|t| t.execution)
    }

    /// Percentiles of one timing over the results of this run (replayed ones
    /// excluded).
    fn percentiles_of(&self, f: impl Fn(&ItemTiming) -> Duration) -> Percentiles {
        let mut v: Vec<Duration> = self
            .results
            .iter()
            .filter(|r| !r.replayed)
            .map(|r| f(&r.timing))
            .collect();
        Percentiles::of(&mut v)
    }

    /// The cost of the run's usage (replayed results excluded) at `prices`.
    pub fn estimated_cost(&self, prices: &Prices) -> f64 {
        prices.cost(&self.stats.usage)
    }

    /// Totals, termination and latency percentiles, for reports.
    pub fn run_summary(&self) -> RunSummary {
        let mut c = SummaryCollector::default();
        for r in &self.results {
            c.add_timing(r);
        }
        c.stats = self.stats.clone();
        c.finish(self.termination.clone(), self.wall_time)
    }

    /// A human summary: items, stop reason, retries, tokens, wall time,
    /// latency percentiles and failures by category with example ids.
    pub fn summary(&self) -> String {
        self.summary_with_prices(None)
    }

    /// [`summary`](Self::summary) with a cost line.
    pub fn summary_with_prices(&self, prices: Option<&Prices>) -> String {
        self.run_summary().render(prices)
    }
}

/// Accumulates a [`RunSummary`] from results one at a time, keeping only
/// totals and two compact latency samples per item (8 bytes), so a stream
/// of millions can be summarized.
#[derive(Debug, Clone, Default)]
pub struct SummaryCollector {
    /// Totals so far.
    pub stats: BatchStats,
    waits_us: Vec<u32>,
    exec_us: Vec<u32>,
}

fn us32(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

fn percentiles_us(v: &mut [u32]) -> Percentiles {
    let mut d: Vec<Duration> = v
        .iter()
        .map(|u| Duration::from_micros(u64::from(*u)))
        .collect();
    Percentiles::of(&mut d)
}

impl SummaryCollector {
    /// Adds one result.
    pub fn add<T>(&mut self, r: &ItemResult<T>) {
        self.stats.add(r);
        self.add_timing(r);
    }

    fn add_timing<T>(&mut self, r: &ItemResult<T>) {
        if !r.replayed {
            self.waits_us
                .push(us32(r.timing.cooldown_wait + r.timing.admission_wait));
            self.exec_us.push(us32(r.timing.execution));
        }
    }

    /// The summary of what was added.
    pub fn finish(mut self, termination: Termination, wall_time: Duration) -> RunSummary {
        RunSummary {
            admission_wait: percentiles_us(&mut self.waits_us),
            execution: percentiles_us(&mut self.exec_us),
            stats: self.stats,
            termination,
            wall_time: micros(wall_time),
        }
    }
}

/// What a report needs of a run: totals, how it ended, wall time and
/// latency percentiles. Serializes for `--summary-json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// Totals.
    pub stats: BatchStats,
    /// How the run ended.
    pub termination: Termination,
    /// Wall time (zero when unknown, e.g. summarizing a file).
    #[serde(with = "duration_ms", rename = "wall_time_ms")]
    pub wall_time: Duration,
    /// Cooldown plus admission wait per item.
    pub admission_wait: Percentiles,
    /// Execution time per item.
    pub execution: Percentiles,
}

impl RunSummary {
    /// The wall time and the rates (replays apart from processed items).
    fn render_wall_time(&self, out: &mut String) {
        let (s, secs) = (&self.stats, self.wall_time.as_secs_f64());
        if secs <= 0.0 {
            return;
        }
        let live = s.items - s.replayed;
        let _ = if s.replayed == 0 {
            writeln!(
                out,
                "Wall time {secs:.2} s ({:.1} items/s)",
                live as f64 / secs
            )
        } else {
            writeln!(
                out,
                "Wall time {secs:.2} s ({:.1} items/s processed, {:.1} items/s replayed)",
                live as f64 / secs,
                s.replayed as f64 / secs
            )
        };
    }

    /// The human summary text.
    pub fn render(&self, prices: Option<&Prices>) -> String {
        let s = &self.stats;
        let mut out = String::new();
        if s.dry_run {
            let _ = writeln!(
                out,
                "DRY RUN: no provider was called; tokens and cost below are projections"
            );
        }
        let _ = writeln!(
            out,
            "Batch {}: {} items, {} succeeded, {} failed{}",
            self.termination.reason,
            s.items,
            s.succeeded,
            s.failed,
            if s.replayed > 0 {
                format!(", {} replayed", s.replayed)
            } else {
                String::new()
            }
        );
        if let (Some(id), Some(cat)) = (&self.termination.item_id, self.termination.category) {
            let _ = writeln!(out, "Stopped by item {id} ({cat})");
        }
        if let Some(m) = &self.termination.message {
            let _ = writeln!(out, "Stop: {m}");
        }
        self.render_wall_time(&mut out);
        let _ = writeln!(
            out,
            "Calls {} (rate-limit retries {}, other retries {}, cooldowns {})",
            s.tries, s.rate_limit_retries, s.other_retries, s.cooldowns
        );
        let u = &s.usage;
        let _ = writeln!(
            out,
            "Tokens {} in ({} cached), {} out, {} total",
            u.input, u.cached_input, u.output, u.total
        );
        if s.replayed > 0 {
            let _ = writeln!(
                out,
                "Replayed tokens {} total (not spent in this run)",
                s.replayed_usage.total
            );
        }
        if let Some(p) = prices {
            let _ = writeln!(out, "Cost {:.4}", p.cost(&s.usage));
        }
        let adm = &s.admission;
        if adm.reserved > 0 {
            let _ = writeln!(
                out,
                "Admission {} reservations, {} tokens estimated: {} refunded, {} debt, {} kept (usage unknown), {} given back",
                adm.reserved,
                adm.reserved_tokens,
                adm.refunded_tokens,
                adm.debt_tokens,
                adm.retained,
                adm.cancelled
            );
        }
        let (a, e) = (&self.admission_wait, &self.execution);
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let _ = writeln!(
            out,
            "Wait p50/p95/p99 {:.1}/{:.1}/{:.1} ms; execution p50/p95/p99 {:.1}/{:.1}/{:.1} ms",
            ms(a.p50),
            ms(a.p95),
            ms(a.p99),
            ms(e.p50),
            ms(e.p95),
            ms(e.p99)
        );
        if !s.failures.is_empty() {
            let _ = writeln!(out, "Failures by category:");
            for (cat, c) in &s.failures {
                let _ = writeln!(
                    out,
                    "  {cat}: {} (e.g. {})",
                    c.count,
                    c.example_ids.join(", ")
                );
            }
        }
        out
    }
}

impl<T: Serialize + Clone> BatchResult<T> {
    fn header(&self) -> BatchHeader {
        BatchHeader {
            schema: BATCH_SCHEMA.to_owned(),
            version: BATCH_SCHEMA_VERSION,
            termination: self.termination.clone(),
            wall_time: self.wall_time,
            stats: self.stats.clone(),
        }
    }

    /// The batch as one JSON document with a schema name and version.
    pub fn to_json(&self) -> Result<String, Error> {
        let doc = BatchDocument {
            header: self.header(),
            results: &self.results,
        };
        serde_json::to_string(&doc).map_err(|e| Error::Format {
            place: "batch".into(),
            message: e.to_string(),
        })
    }

    /// The batch as JSONL: a header line, then one line per result.
    pub fn to_jsonl(&self) -> Result<String, Error> {
        let fmt_err = |e: serde_json::Error| Error::Format {
            place: "batch".into(),
            message: e.to_string(),
        };
        let mut out = serde_json::to_string(&self.header()).map_err(fmt_err)?;
        out.push('\n');
        for r in &self.results {
            out.push_str(&serde_json::to_string(r).map_err(fmt_err)?);
            out.push('\n');
        }
        Ok(out)
    }
}

fn check_header(h: &BatchHeader, place: &str) -> Result<(), Error> {
    if h.schema != BATCH_SCHEMA {
        return Err(Error::Format {
            place: place.into(),
            message: format!("schema is {:?}, expected {BATCH_SCHEMA:?}", h.schema),
        });
    }
    if h.version == 0 || h.version > BATCH_SCHEMA_VERSION {
        return Err(Error::Format {
            place: place.into(),
            message: format!(
                "unsupported schema version {} (this build reads 1..={BATCH_SCHEMA_VERSION})",
                h.version
            ),
        });
    }
    Ok(())
}

impl<T: DeserializeOwned> BatchResult<T> {
    /// Reads what [`to_json`](BatchResult::to_json) wrote.
    pub fn from_json(s: &str) -> Result<Self, Error> {
        let doc: BatchDocument<Vec<ItemResult<T>>> =
            serde_json::from_str(s).map_err(|e| Error::Format {
                place: format!("batch JSON line {} column {}", e.line(), e.column()),
                message: e.to_string(),
            })?;
        check_header(&doc.header, "batch JSON")?;
        Ok(Self {
            results: doc.results,
            stats: doc.header.stats,
            termination: doc.header.termination,
            wall_time: doc.header.wall_time,
        })
    }

    /// Reads what [`to_jsonl`](BatchResult::to_jsonl) wrote.
    pub fn from_jsonl(s: &str) -> Result<Self, Error> {
        let mut lines = s.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
        let Some((_, first)) = lines.next() else {
            return Err(Error::Format {
                place: "batch JSONL line 1".into(),
                message: "empty input: expected a header line".into(),
            });
        };
        let header: BatchHeader = serde_json::from_str(first).map_err(|e| Error::Format {
            place: "batch JSONL line 1".into(),
            message: e.to_string(),
        })?;
        check_header(&header, "batch JSONL line 1")?;
        let mut results = Vec::new();
        for (n, line) in lines {
            let r = serde_json::from_str(line).map_err(|e| Error::Format {
                place: format!("batch JSONL line {}", n + 1),
                message: e.to_string(),
            })?;
            results.push(r);
        }
        Ok(Self {
            results,
            stats: header.stats,
            termination: header.termination,
            wall_time: header.wall_time,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(id: &str, index: u64, outcome: Result<String, ItemError>) -> ItemResult<String> {
        ItemResult {
            id: id.into(),
            index,
            outcome,
            usage: TokenUsage::new(10, 5).with_cached_input(2),
            attempts: 2,
            tries: 3,
            timing: ItemTiming {
                total: Duration::from_micros(12_345),
                cooldown_wait: Duration::from_micros(1),
                admission_wait: Duration::from_micros(999_999),
                execution: Duration::from_micros(7_000_001),
                backoff: Duration::ZERO,
                tries: vec![TryTiming {
                    attempt: 1,
                    cooldown_wait: Duration::from_micros(3),
                    admission_wait: Duration::ZERO,
                    execution: Duration::from_micros(123_456_789),
                    error: Some(ErrorCategory::RateLimit),
                }],
            },
            context: Some(serde_json::json!({"row": index})),
            replayed: index == 2,
        }
    }

    fn batch() -> BatchResult<String> {
        let mut deadline = ItemError::new(ErrorCategory::ItemDeadline, "deadline");
        deadline.last_error = Some(Box::new(ItemError::new(ErrorCategory::ServerError, "500")));
        BatchResult::new(
            vec![
                result("b", 1, Ok("B".into())),
                result("a", 0, Err(deadline)),
                result("c", 2, Ok("C".into())),
            ],
            Termination::completed(),
            Duration::from_millis(1500),
        )
    }

    #[test]
    fn json_and_jsonl_round_trip() {
        let b = batch();
        let json = b.to_json().unwrap_or_default();
        assert!(json.contains("\"schema\":\"async-batch-llm/batch\""));
        assert_eq!(
            BatchResult::<String>::from_json(&json).ok(),
            Some(b.clone())
        );
        let jsonl = b.to_jsonl().unwrap_or_default();
        assert_eq!(jsonl.lines().count(), 4);
        assert_eq!(BatchResult::<String>::from_jsonl(&jsonl).ok(), Some(b));
    }

    #[test]
    fn bad_documents_are_typed_errors() {
        assert!(BatchResult::<String>::from_jsonl("").is_err());
        let wrong = r#"{"schema":"other","version":1,"termination":{"reason":"completed"},"wall_time_ms":1,"stats":{}}"#;
        let e = BatchResult::<String>::from_jsonl(wrong)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("schema is \"other\""), "{e}");
        let b = batch()
            .to_jsonl()
            .unwrap_or_default()
            .replace("\"ok\":true", "\"ok\":false");
        let e = BatchResult::<String>::from_jsonl(&b)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn stats_and_summary() {
        let b = batch();
        assert_eq!(b.stats.items, 3);
        assert_eq!(b.stats.succeeded, 2);
        assert_eq!(b.stats.replayed, 1);
        assert_eq!(b.stats.usage, TokenUsage::new(20, 10).with_cached_input(4));
        assert_eq!(b.stats.replayed_usage.total, 15);
        // The replayed result's calls were an earlier run's.
        assert_eq!(b.stats.rate_limit_retries, 2);
        assert_eq!(b.stats.other_retries, 2);
        let s = b.summary_with_prices(Some(&Prices::new(1_000_000.0, 0.0)));
        assert!(
            s.contains("Batch completed: 3 items, 2 succeeded, 1 failed, 1 replayed"),
            "{s}"
        );
        assert!(s.contains("item_deadline: 1 (e.g. a)"), "{s}");
        assert!(s.contains("Cost 20.0000"), "{s}");
        // 2 processed and 1 replayed in 1.5 s.
        assert!(
            s.contains("Wall time 1.50 s (1.3 items/s processed, 0.7 items/s replayed)"),
            "{s}"
        );
        let ordered: Vec<u64> = b.in_input_order().results.iter().map(|r| r.index).collect();
        assert_eq!(ordered, vec![0, 1, 2]);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        let p = Percentiles::of(&mut v);
        assert_eq!(p.p50, Duration::from_millis(50));
        assert_eq!(p.p95, Duration::from_millis(95));
        assert_eq!(p.p99, Duration::from_millis(99));
        assert_eq!(nearest_rank(&[], 50.0), None);
        let one = [Duration::from_millis(7)];
        assert_eq!(nearest_rank(&one, 1.0), Some(Duration::from_millis(7)));
    }
}
