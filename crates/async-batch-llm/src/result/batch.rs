//! A whole run: [`BatchResult`] (every result, totals, how it ended),
//! [`BatchStats`] (totals fed one result at a time), and the batch's JSON
//! and JSONL documents.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::item::{ItemResult, ItemTiming};
use super::stats::BatchStats;
use super::summary::{Percentiles, RunSummary, SummaryCollector};
use super::termination::Termination;
use crate::error::Error;
use crate::time::{duration_ms, micros};
use crate::usage::Prices;

/// Name of the serialized batch format.
pub const BATCH_SCHEMA: &str = "async-batch-llm/batch";
/// Version of the serialized batch format.
pub const BATCH_SCHEMA_VERSION: u32 = 1;
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
        serde_json::to_string(&doc).map_err(|e| Error::format("batch", e.to_string()))
    }

    /// The batch as JSONL: a header line, then one line per result.
    pub fn to_jsonl(&self) -> Result<String, Error> {
        let fmt_err = |e: serde_json::Error| Error::format("batch", e.to_string());
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
        return Err(Error::format(
            place,
            format!("schema is {:?}, expected {BATCH_SCHEMA:?}", h.schema),
        ));
    }
    if h.version == 0 || h.version > BATCH_SCHEMA_VERSION {
        return Err(Error::format(
            place,
            format!(
                "unsupported schema version {} (this build reads 1..={BATCH_SCHEMA_VERSION})",
                h.version
            ),
        ));
    }
    Ok(())
}

impl<T: DeserializeOwned> BatchResult<T> {
    /// Reads what [`to_json`](BatchResult::to_json) wrote.
    pub fn from_json(s: &str) -> Result<Self, Error> {
        let doc: BatchDocument<Vec<ItemResult<T>>> = serde_json::from_str(s).map_err(|e| {
            Error::format(
                format!("batch JSON line {} column {}", e.line(), e.column()),
                e.to_string(),
            )
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
            return Err(Error::format(
                "batch JSONL line 1",
                "empty input: expected a header line",
            ));
        };
        let header: BatchHeader = serde_json::from_str(first)
            .map_err(|e| Error::format("batch JSONL line 1", e.to_string()))?;
        check_header(&header, "batch JSONL line 1")?;
        let mut results = Vec::new();
        for (n, line) in lines {
            let r = serde_json::from_str(line)
                .map_err(|e| Error::format(format!("batch JSONL line {}", n + 1), e.to_string()))?;
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
    use super::super::test_support::batch;
    use super::*;

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
}
