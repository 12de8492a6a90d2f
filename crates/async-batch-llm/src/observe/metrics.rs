//! A metrics observer: counters and histograms with Prometheus text export.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use super::{Event, Observer};

const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

#[derive(Debug, Clone, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if s <= *b {
                self.counts[i] += 1;
            }
        }
        self.count += 1;
        self.sum += s;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {}", self.counts[i]);
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}",
            self.count, self.sum, self.count
        );
    }
}

#[derive(Debug, Clone, Default)]
struct State {
    items: BTreeMap<String, u64>,
    admitted: u64,
    rate_limits: u64,
    cooldowns: u64,
    tokens: BTreeMap<&'static str, u64>,
    quota_reserved_tokens: u64,
    quota_settled: u64,
    wait: Histogram,
    execution: Histogram,
}

/// Counts what it sees; [`to_prometheus`](MetricsObserver::to_prometheus)
/// renders the Prometheus text format.
#[derive(Debug, Default)]
pub struct MetricsObserver {
    state: Mutex<State>,
}

impl MetricsObserver {
    /// An empty observer.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Items ended with `outcome` (`completed`, `replayed` or a category).
    pub fn items(&self, outcome: &str) -> u64 {
        self.lock().items.get(outcome).copied().unwrap_or(0)
    }

    /// Rate limits seen.
    pub fn rate_limits(&self) -> u64 {
        self.lock().rate_limits
    }

    /// The Prometheus text exposition of every metric.
    pub fn to_prometheus(&self) -> String {
        let s = self.lock().clone();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP abl_items_total Items ended, by outcome.\n# TYPE abl_items_total counter"
        );
        for (k, v) in &s.items {
            let _ = writeln!(out, "abl_items_total{{outcome=\"{k}\"}} {v}");
        }
        let counters = [
            (
                "abl_attempts_admitted_total",
                "Attempts admitted.",
                s.admitted,
            ),
            (
                "abl_rate_limits_total",
                "Calls answered with a rate limit.",
                s.rate_limits,
            ),
            ("abl_cooldowns_total", "Cooldowns started.", s.cooldowns),
            (
                "abl_quota_reserved_tokens_total",
                "Tokens reserved by estimate.",
                s.quota_reserved_tokens,
            ),
            (
                "abl_quota_settlements_total",
                "Reservations settled.",
                s.quota_settled,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP abl_tokens_total Billed tokens, by kind.\n# TYPE abl_tokens_total counter"
        );
        for (k, v) in &s.tokens {
            let _ = writeln!(out, "abl_tokens_total{{kind=\"{k}\"}} {v}");
        }
        s.wait.render(
            &mut out,
            "abl_admission_wait_seconds",
            "Wait before each admitted attempt.",
        );
        s.execution.render(
            &mut out,
            "abl_item_execution_seconds",
            "Execution time per item, every try.",
        );
        out
    }
}

impl Observer for MetricsObserver {
    fn on_event(&self, event: &Event) {
        let mut s = self.lock();
        let mut tokens = |u: &crate::usage::TokenUsage| {
            *s.tokens.entry("input").or_default() += u.input;
            *s.tokens.entry("output").or_default() += u.output;
            *s.tokens.entry("cached_input").or_default() += u.cached_input;
        };
        match event {
            Event::ItemCompleted {
                usage, execution, ..
            } => {
                tokens(usage);
                *s.items.entry("completed".into()).or_default() += 1;
                s.execution.observe(*execution);
            }
            Event::ItemFailed {
                category, usage, ..
            } => {
                tokens(usage);
                *s.items.entry(category.as_str().into()).or_default() += 1;
            }
            Event::ItemReplayed { .. } => *s.items.entry("replayed".into()).or_default() += 1,
            Event::ItemAdmitted { waited, .. } => {
                s.admitted += 1;
                s.wait.observe(*waited);
            }
            Event::RateLimitHit { .. } => s.rate_limits += 1,
            Event::CooldownStarted { .. } => s.cooldowns += 1,
            Event::QuotaReserved { tokens, .. } => s.quota_reserved_tokens += tokens,
            Event::QuotaSettled { .. } => s.quota_settled += 1,
            _ => {}
        }
    }
}
