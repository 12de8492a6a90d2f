//! What a report says about a run, gathered in one pass over its records
//! (a checkpoint or an output file, finished or still being written).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_batch_llm::store::{Identity, StoreLock};
use async_batch_llm::{
    ErrorCategory, ItemResult, PriceList, Prices, RunSummary, SummaryCollector, Termination,
    TokenUsage,
};
use serde_json::Value;

use super::timeline::Timeline;
use crate::checkpoint::open_read_only;
use crate::exit::UsageError;

/// Example failures kept per category.
const EXAMPLES: usize = 5;

/// What the records came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A checkpoint (SQLite or JSONL).
    Checkpoint,
    /// An output file of `abl run` (or its `.abl-partial` while it runs).
    Output,
}

/// A distribution of durations in fixed, round buckets.
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    counts: [u64; EDGES_MS.len() + 1],
}

/// Upper bucket edges, in milliseconds.
const EDGES_MS: [u64; 17] = [
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 60_000, 120_000,
    300_000,
];

fn edge_label(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{} s", ms / 1000)
    }
}

impl Histogram {
    fn add(&mut self, d: Duration) {
        let ms = d.as_secs_f64() * 1000.0;
        let i = EDGES_MS
            .iter()
            .position(|e| ms <= *e as f64)
            .unwrap_or(EDGES_MS.len());
        self.counts[i] += 1;
    }

    /// Buckets from the first to the last that holds anything, each
    /// labelled by its upper edge (`≤ 50 ms`).
    pub fn buckets(&self) -> Vec<(String, u64)> {
        let Some(first) = self.counts.iter().position(|c| *c > 0) else {
            return Vec::new();
        };
        let last = self.counts.iter().rposition(|c| *c > 0).unwrap_or(first);
        (first..=last)
            .map(|i| {
                let label = EDGES_MS.get(i).map_or_else(
                    || format!("> {}", edge_label(EDGES_MS[EDGES_MS.len() - 1])),
                    |e| format!("≤ {}", edge_label(*e)),
                );
                (label, self.counts[i])
            })
            .collect()
    }

    /// How many durations were added.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// Items and tokens of one model and one outcome.
#[derive(Debug, Clone, Default)]
pub struct Group {
    /// Items.
    pub items: u64,
    /// Tokens they used (every billed try).
    pub usage: TokenUsage,
}

/// What is known of one identity of the records.
#[derive(Debug, Clone)]
pub struct Model {
    /// `provider:model`, or words saying it is not known.
    pub label: String,
    /// The identity, when the source names it.
    pub identity: Option<Identity>,
    /// List prices, when the built-in list knows the model.
    pub prices: Option<(Prices, String)>,
}

/// Everything the report shows.
pub struct Facts {
    /// The file read.
    pub path: PathBuf,
    /// What kind of file it is.
    pub source: Source,
    /// Who is still writing it, when a run holds its lock.
    pub live: Option<String>,
    /// The tool that made the checkpoint.
    pub made_by: Option<String>,
    /// The summary, as `abl summary` prints it.
    pub summary: RunSummary,
    /// The records on a time axis.
    pub timeline: Timeline,
    /// Item latency (first wait to result).
    pub latency: Histogram,
    /// Time of each call.
    pub calls: Histogram,
    /// Time each item waited (cooldowns and admission).
    pub waits: Histogram,
    /// Models, by identity fingerprint (an output file has one, unnamed).
    pub models: BTreeMap<String, Model>,
    /// Items and tokens by model fingerprint and outcome (`succeeded` or a
    /// failure category).
    pub groups: BTreeMap<(String, String), Group>,
    /// Failures by category: count and the first examples (id, message).
    pub failures: BTreeMap<ErrorCategory, (u64, Vec<(String, String)>)>,
    /// A last line still being written, left out.
    pub torn_tail: bool,
    /// The settings of the runs that wrote the checkpoint, oldest first
    /// (SQLite checkpoints keep them).
    pub runs: Vec<serde_json::Map<String, Value>>,
}

fn usage(msg: impl Into<String>) -> UsageError {
    UsageError(msg.into())
}

/// Prices of `identity`'s model from the built-in list, with the day.
fn listed(identity: &Identity) -> Option<(Prices, String)> {
    let list = PriceList::builtin();
    list.lookup(&identity.provider, &identity.model)
        .map(|l| (l.prices, list.as_of.clone()))
}

impl Facts {
    fn new(path: &Path, source: Source) -> Self {
        Self {
            path: path.to_path_buf(),
            source,
            live: None,
            made_by: None,
            summary: SummaryCollector::default().finish(Termination::completed(), Duration::ZERO),
            timeline: Timeline::default(),
            latency: Histogram::default(),
            calls: Histogram::default(),
            waits: Histogram::default(),
            models: BTreeMap::new(),
            groups: BTreeMap::new(),
            failures: BTreeMap::new(),
            torn_tail: false,
            runs: Vec::new(),
        }
    }

    /// Reads every record of a checkpoint.
    pub fn of_checkpoint(path: &Path) -> Result<Self, UsageError> {
        let store = open_read_only(path)?;
        let mut facts = Self::new(path, Source::Checkpoint);
        facts.live = StoreLock::holder(path);
        facts.made_by = store.manifest().map(|m| m.tool_version);
        facts.runs = store
            .runs()
            .iter()
            .filter_map(|r| serde_json::from_str(r).ok())
            .collect();
        for known in store.identities() {
            let label = known.identity.as_ref().map_or_else(
                || "model not named (an older checkpoint)".to_owned(),
                crate::summary::describe,
            );
            let prices = known.identity.as_ref().and_then(listed);
            facts.models.insert(
                known.fingerprint.clone(),
                Model {
                    label,
                    identity: known.identity,
                    prices,
                },
            );
        }
        let mut collector = SummaryCollector::default();
        store
            .for_each(&mut |r| {
                collector.add(&r.result);
                facts.add(&r.identity_fp, &r.result);
                Ok(())
            })
            .map_err(|e| usage(e.to_string()))?;
        facts.finish(collector);
        Ok(facts)
    }

    /// Reads every result of an output file. A last line without its
    /// newline is one still being written: it is left out.
    pub fn of_output(path: &Path) -> Result<Self, UsageError> {
        let mut facts = Self::new(path, Source::Output);
        facts.models.insert(
            String::new(),
            Model {
                label: "model not recorded in an output file (report on the checkpoint to see it)"
                    .to_owned(),
                identity: None,
                prices: None,
            },
        );
        let mut collector = SummaryCollector::default();
        let tail = crate::output::read_results(path, |_, _, r| {
            collector.add(&r);
            facts.add("", &r);
            Ok(())
        })?;
        facts.torn_tail = tail == crate::output::Tail::Torn;
        facts.finish(collector);
        Ok(facts)
    }

    fn add(&mut self, model: &str, r: &ItemResult<Value>) {
        self.timeline.add(r);
        if !r.replayed {
            if r.timing.started_at.is_some() {
                self.latency.add(r.timing.total);
                self.waits
                    .add(r.timing.cooldown_wait + r.timing.admission_wait);
            }
            for t in &r.timing.tries {
                self.calls.add(t.execution);
            }
        }
        let outcome = match &r.outcome {
            Ok(_) => "succeeded".to_owned(),
            Err(e) => {
                let (count, examples) = self.failures.entry(e.category).or_default();
                *count += 1;
                if examples.len() < EXAMPLES {
                    let message: String = e.message.chars().take(240).collect();
                    examples.push((r.id.clone(), message));
                }
                e.category.as_str().replace('_', " ")
            }
        };
        let g = self.groups.entry((model.to_owned(), outcome)).or_default();
        g.items += 1;
        g.usage += r.usage;
    }

    fn finish(&mut self, mut collector: SummaryCollector) {
        let (count, total, longest) = self.timeline.cooldown_totals();
        collector.stats.cooldowns = count;
        collector.stats.cooldown_time = total;
        collector.stats.longest_cooldown = longest;
        let wall = self
            .timeline
            .span()
            .and_then(|(a, b)| b.duration_since(a).ok())
            .unwrap_or_default();
        self.summary = collector.finish(Termination::completed(), wall);
    }

    /// Whether the file is the partial output of a run (`OUT.abl-partial`).
    pub fn is_partial(&self) -> bool {
        self.source == Source::Output
            && self
                .path
                .to_str()
                .is_some_and(|p| p.ends_with(crate::paths::PARTIAL))
    }

    /// The prices the summary table uses: those of the one model when the
    /// records have one and the list knows it.
    pub fn single_prices(&self) -> Option<&Prices> {
        match self.models.values().collect::<Vec<_>>().as_slice() {
            [only] => only.prices.as_ref().map(|(p, _)| p),
            _ => None,
        }
    }
}
