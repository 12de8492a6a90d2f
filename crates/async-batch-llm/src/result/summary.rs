//! The summary of a run: latency percentiles, [`SummaryCollector`] (totals
//! of a stream of results in constant memory per item) and [`RunSummary`]
//! with its human text.

use std::fmt::Write as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::item::ItemResult;
use super::stats::BatchStats;
use super::termination::Termination;
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

    /// The limits line: which are in force and where they came from.
    fn render_limits(&self, out: &mut String) {
        let limits = &self.stats.limits;
        if limits.rpm.is_none() && limits.tpm.is_none() && limits.decreases == 0 {
            return;
        }
        let _ = write!(out, "Limits {limits}");
        if limits.decreases > 0 {
            let _ = write!(out, "; {} adaptive decreases", limits.decreases);
        }
        if limits.foreign_requests > 0 {
            let _ = write!(
                out,
                "; {} requests of another process in the window",
                limits.foreign_requests
            );
        }
        let _ = writeln!(out);
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
        self.render_limits(&mut out);
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
