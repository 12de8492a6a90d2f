//! A metrics observer: counters and histograms with Prometheus text export.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use super::{Event, Observer};
use crate::limit::LimitsInForce;

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
    quota_walls: u64,
    /// The limits each scope runs under, as last reported.
    scopes: BTreeMap<String, LimitsInForce>,
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

    /// The concurrency window of `scope`, as last reported (adaptive
    /// concurrency moves it).
    pub fn scope_concurrency(&self, scope: &str) -> Option<usize> {
        self.lock().scopes.get(scope).map(|l| l.window)
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
                "abl_quota_walls_total",
                "Rate limits judged to be the provider's quota (not noise).",
                s.quota_walls,
            ),
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
        render_scopes(&mut out, &s.scopes);
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

/// Per-scope gauges: the window, and each limit with where it came from.
fn render_scopes(out: &mut String, scopes: &BTreeMap<String, LimitsInForce>) {
    if scopes.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "# HELP abl_scope_concurrency Calls a scope may have in flight now.\n\
         # TYPE abl_scope_concurrency gauge"
    );
    for (name, l) in scopes {
        let adaptive = if l.adaptive { "true" } else { "false" };
        let _ = writeln!(
            out,
            "abl_scope_concurrency{{scope=\"{}\",adaptive=\"{adaptive}\"}} {}",
            label(name),
            l.window
        );
    }
    let _ = writeln!(
        out,
        "# HELP abl_scope_window_decreases_total Adaptive decreases of a scope's window.\n\
         # TYPE abl_scope_window_decreases_total counter"
    );
    for (name, l) in scopes {
        let _ = writeln!(
            out,
            "abl_scope_window_decreases_total{{scope=\"{}\"}} {}",
            label(name),
            l.decreases
        );
    }
    let limits = [
        ("abl_scope_rpm_limit", "Requests per minute in force."),
        ("abl_scope_tpm_limit", "Tokens per minute in force."),
    ];
    for (i, (metric, help)) in limits.into_iter().enumerate() {
        let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} gauge");
        for (name, l) in scopes {
            let value = if i == 0 {
                l.rpm
            } else {
                l.tpm.map(|(v, src)| (v as f64, src))
            };
            if let Some((v, source)) = value {
                let _ = writeln!(
                    out,
                    "{metric}{{scope=\"{}\",source=\"{source}\"}} {v}",
                    label(name)
                );
            }
        }
    }
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
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
            Event::QuotaWall { .. } => s.quota_walls += 1,
            Event::LimitsChanged { scope, limits } => {
                s.scopes.insert(scope.clone(), *limits);
            }
            _ => {}
        }
    }
}
