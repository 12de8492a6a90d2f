//! The summary of a run: latency percentiles, [`SummaryCollector`] (totals
//! of a stream of results in constant memory per item) and [`RunSummary`]
//! with its human text.

use std::fmt::Write as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::estimate::DryRunEstimate;
use super::item::ItemResult;
use super::stats::BatchStats;
use super::termination::{Termination, TerminationReason};
use crate::time::{duration_ms, micros};
use crate::usage::Prices;

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

    pub(super) fn add_timing<T>(&mut self, r: &ItemResult<T>) {
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
            estimate: DryRunEstimate::of(&self.stats),
            not_started: 0,
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
    /// A dry run's projection (none for a real run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimate: Option<DryRunEstimate>,
    /// Input items never started because the run stopped first (known
    /// only to a host that counted its input; they have no record).
    #[serde(default)]
    pub not_started: u64,
}

impl RunSummary {
    /// The human summary: a headline, then an aligned table of the run's
    /// figures in words (no enum names), then failures by category.
    pub fn render(&self, prices: Option<&Prices>) -> String {
        self.render_styled(prices, false)
    }

    /// [`render`](Self::render), with bold labels when `colour` (for a
    /// terminal).
    pub fn render_styled(&self, prices: Option<&Prices>, colour: bool) -> String {
        let s = &self.stats;
        let mut out = String::new();
        if s.dry_run {
            let _ = writeln!(
                out,
                "DRY RUN: no provider was called; tokens and cost below are projections"
            );
        }
        if let Some(e) = &self.estimate {
            let _ = writeln!(out, "{}", e.render());
        }
        let _ = writeln!(out, "{}", self.headline());
        if let (Some(id), Some(cat)) = (&self.termination.item_id, self.termination.category) {
            let _ = writeln!(out, "Stopped by item {id} ({})", words(cat.as_str()));
        }
        if let Some(m) = &self.termination.message {
            let _ = writeln!(out, "Stop: {m}");
        }
        let mut table = Table::default();
        self.rows(&mut table, prices);
        table.render(&mut out, colour);
        out
    }

    /// The rows of the summary table, for a host that lays them out itself
    /// (the HTML report): the same facts as [`render`](Self::render).
    pub fn table(&self, prices: Option<&Prices>) -> Vec<SummaryRow> {
        let mut table = Table::default();
        self.rows(&mut table, prices);
        table.rows
    }

    /// `Batch completed: 3 items, 2 succeeded, 1 failed` (or `Batch
    /// stopped (budget exceeded): …`).
    pub fn headline(&self) -> String {
        let s = &self.stats;
        let how = match self.termination.reason {
            TerminationReason::Completed => "completed".to_owned(),
            r => format!("stopped ({})", words(r.as_str())),
        };
        let replayed = if s.replayed > 0 {
            format!(", {} replayed", s.replayed)
        } else {
            String::new()
        };
        format!(
            "Batch {how}: {} items, {} succeeded, {} failed{replayed}",
            s.items, s.succeeded, s.failed
        )
    }

    fn rows(&self, t: &mut Table, prices: Option<&Prices>) {
        let s = &self.stats;
        let pct = |n: u64| {
            if s.items == 0 {
                String::new()
            } else {
                format!(" ({:.1} %)", 100.0 * n as f64 / s.items as f64)
            }
        };
        let mut items = format!(
            "{} succeeded{}, {} failed{}",
            s.succeeded,
            pct(s.succeeded),
            s.failed,
            pct(s.failed)
        );
        if s.replayed > 0 {
            let _ = write!(items, ", {} replayed", s.replayed);
        }
        if self.not_started > 0 {
            let _ = write!(
                items,
                "; {} not started (no record: the run stopped first)",
                self.not_started
            );
        }
        t.row("Items", s.items.to_string(), items);
        let secs = self.wall_time.as_secs_f64();
        if secs > 0.0 {
            let live = (s.items - s.replayed) as f64 / secs;
            let rate = if s.replayed == 0 {
                format!("{live:.1} items/s")
            } else {
                format!(
                    "{live:.1} items/s processed, {:.1} items/s replayed",
                    s.replayed as f64 / secs
                )
            };
            t.row("Wall time", format!("{secs:.2} s"), rate);
        }
        t.row(
            "Calls",
            s.tries.to_string(),
            format!(
                "{} retries after errors, {} after rate limits",
                s.other_retries, s.rate_limit_retries
            ),
        );
        if s.cooldowns > 0 {
            t.row(
                "Cooldowns",
                s.cooldowns.to_string(),
                format!(
                    "{} in all, the longest {}",
                    seconds(s.cooldown_time),
                    seconds(s.longest_cooldown)
                ),
            );
        }
        self.usage_rows(t, prices);
        self.control_rows(t);
    }

    /// Tokens, cost and latency.
    fn usage_rows(&self, t: &mut Table, prices: Option<&Prices>) {
        let s = &self.stats;
        let usage = &s.usage;
        let mut tokens = format!(
            "{} input ({} cached), {} output ({} reasoning)",
            usage.input, usage.cached_input, usage.output, usage.reasoning
        );
        if usage.cache_write_input > 0 {
            let _ = write!(tokens, ", {} written to a cache", usage.cache_write_input);
        }
        if s.replayed > 0 {
            let _ = write!(
                tokens,
                "; {} replayed (not spent in this run)",
                s.replayed_usage.total
            );
        }
        t.row("Tokens", usage.total.to_string(), tokens);
        if let Some(p) = prices {
            t.row("Cost", format!("{:.4}", p.cost(&s.usage)), String::new());
        }
        let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
        let (exec, wait) = (&self.execution, &self.admission_wait);
        t.row(
            "Latency",
            String::new(),
            format!(
                "p50 {}, p95 {}, p99 {} per item; waiting p50 {}, p95 {}",
                ms(exec.p50),
                ms(exec.p95),
                ms(exec.p99),
                ms(wait.p50),
                ms(wait.p95)
            ),
        );
    }

    /// Limits, admission and failures.
    fn control_rows(&self, t: &mut Table) {
        let s = &self.stats;
        if let Some(limits) = self.limits_text() {
            t.row("Limits", String::new(), limits);
        }
        let adm = &s.admission;
        if adm.reserved > 0 {
            t.row(
                "Admission",
                adm.reserved.to_string(),
                format!(
                    "reservations; {} tokens estimated: {} refunded, {} debt, {} kept (usage unknown), {} given back",
                    adm.reserved_tokens,
                    adm.refunded_tokens,
                    adm.debt_tokens,
                    adm.retained,
                    adm.cancelled
                ),
            );
        }
        for (i, (cat, c)) in s.failures.iter().enumerate() {
            t.row(
                if i == 0 { "Failures" } else { "" },
                c.count.to_string(),
                format!(
                    "{} (e.g. {})",
                    words(cat.as_str()),
                    c.example_ids.join(", ")
                ),
            );
        }
    }

    /// Which limits were in force and where they came from.
    fn limits_text(&self) -> Option<String> {
        let limits = &self.stats.limits;
        if !limits.is_worth_showing() {
            return None;
        }
        let mut text = limits.to_string();
        if limits.decreases > 0 {
            let _ = write!(text, "; {} adaptive decreases", limits.decreases);
        }
        if limits.foreign_requests > 0 {
            let _ = write!(
                text,
                "; {} requests of another process in the window",
                limits.foreign_requests
            );
        }
        Some(text)
    }
}

/// `budget_exceeded` as words: `budget exceeded`.
fn words(name: &str) -> String {
    name.replace('_', " ")
}

/// A duration in seconds, one decimal.
fn seconds(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// One row of the summary table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SummaryRow {
    /// What the row is about (`Items`, `Calls`); empty on a row that
    /// continues the one above (a second failure category).
    pub label: &'static str,
    /// The row's number, as printed (`200`, `0.03 s`); may be empty.
    pub figure: String,
    /// The words after it.
    pub detail: String,
}

/// Rows of label, figure and detail, printed aligned.
#[derive(Default)]
struct Table {
    rows: Vec<SummaryRow>,
}

impl Table {
    fn row(&mut self, label: &'static str, figure: String, detail: String) {
        self.rows.push(SummaryRow {
            label,
            figure,
            detail,
        });
    }

    fn render(&self, out: &mut String, colour: bool) {
        let label_w = self.rows.iter().map(|r| r.label.len()).max().unwrap_or(0);
        let figure_w = self.rows.iter().map(|r| r.figure.len()).max().unwrap_or(0);
        for SummaryRow {
            label,
            figure,
            detail,
        } in &self.rows
        {
            let label = format!("{label:<label_w$}");
            let label = if colour {
                format!("\x1b[1m{label}\x1b[0m")
            } else {
                label
            };
            let line = format!("  {label}  {figure:>figure_w$}  {detail}");
            let _ = writeln!(out, "{}", line.trim_end());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::batch;
    use super::*;
    use crate::usage::TokenUsage;

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
        // Aligned: labels to the widest (Wall time), figures to the widest
        // (20.0000), then the words.
        for line in [
            "  Items            3  2 succeeded (66.7 %), 1 failed (33.3 %), 1 replayed",
            "  Wall time   1.50 s  1.3 items/s processed, 0.7 items/s replayed",
            "  Cost       20.0000",
            "  Failures         1  item deadline (e.g. a)",
        ] {
            assert!(s.lines().any(|l| l == line), "{line:?} in\n{s}");
        }
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
