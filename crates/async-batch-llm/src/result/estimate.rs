//! What a dry run projects: the calls and tokens a real run would make (from
//! the token estimator, not a flat placeholder) and the least time the
//! RPM/TPM limits in force allow for them.

use std::fmt::Write as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::stats::BatchStats;

/// A dry run's projection. Every number is an estimate: no provider was
/// called.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DryRunEstimate {
    /// Calls a real run makes when every item succeeds at once.
    pub calls: u64,
    /// Input tokens, by the run's token estimator.
    pub input_tokens: u64,
    /// Output tokens: the expected output per call.
    pub output_tokens: u64,
    /// The least wall time the RPM/TPM limits allow (none without limits:
    /// then the provider's latency and the concurrency decide).
    #[serde(
        default,
        with = "crate::time::option_duration_ms",
        rename = "least_time_ms",
        skip_serializing_if = "Option::is_none"
    )]
    pub least_time: Option<Duration>,
    /// The limit that sets `least_time`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound_by: Option<EstimateBound>,
}

/// Which limit bounds a dry run's projected time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EstimateBound {
    /// Requests per minute.
    Rpm,
    /// Tokens per minute.
    Tpm,
}

impl std::fmt::Display for EstimateBound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Rpm => "rpm",
            Self::Tpm => "tpm",
        })
    }
}

impl DryRunEstimate {
    /// The projection of a dry run's `stats` (none for a real run).
    pub fn of(stats: &BatchStats) -> Option<Self> {
        if !stats.dry_run {
            return None;
        }
        let calls = stats.items - stats.replayed;
        let tokens = stats.usage.input + stats.usage.output;
        let minutes = |n: f64, per_minute: f64| (per_minute > 0.0).then(|| n / per_minute);
        let requests_bound = stats
            .limits
            .rpm
            .and_then(|(r, _)| minutes(calls as f64, r))
            .map(|m| (m, EstimateBound::Rpm));
        let tokens_bound = stats
            .limits
            .tpm
            .and_then(|(t, _)| minutes(tokens as f64, t as f64))
            .map(|m| (m, EstimateBound::Tpm));
        let bound = match (requests_bound, tokens_bound) {
            (Some(a), Some(b)) => Some(if b.0 > a.0 { b } else { a }),
            (a, b) => a.or(b),
        };
        Some(Self {
            calls,
            input_tokens: stats.usage.input,
            output_tokens: stats.usage.output,
            least_time: bound.and_then(|(m, _)| crate::time::secs_f64(m * 60.0)),
            bound_by: bound.map(|(_, what)| what),
        })
    }

    /// The summary line.
    pub fn render(&self) -> String {
        let mut line = format!(
            "Estimate (no call made): {} calls, {} input + {} output tokens",
            self.calls, self.input_tokens, self.output_tokens
        );
        match (self.least_time, self.bound_by) {
            (Some(t), Some(by)) => {
                let _ = write!(
                    line,
                    "; at least {} at the {by} limit",
                    crate::time::human(t)
                );
            }
            _ => line.push_str("; no RPM/TPM limit set, so the time depends on the provider"),
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limit::{LimitSource, LimitsInForce};
    use crate::usage::TokenUsage;

    #[test]
    fn the_binding_limit_sets_the_least_time() {
        let mut stats = BatchStats {
            items: 600,
            dry_run: true,
            usage: TokenUsage::new(90_000, 30_000),
            ..BatchStats::default()
        };
        stats.limits = LimitsInForce {
            rpm: Some((600.0, LimitSource::Flag)),
            tpm: Some((60_000, LimitSource::Flag)),
            ..LimitsInForce::default()
        };
        let e = DryRunEstimate::of(&stats).unwrap();
        // 600 calls at 600/min is one minute; 120,000 tokens at 60,000/min two.
        assert_eq!(e.least_time, Some(Duration::from_secs(120)));
        assert_eq!(e.bound_by, Some(EstimateBound::Tpm));
        assert!(
            e.render().contains("at least 2m00s at the tpm limit"),
            "{}",
            e.render()
        );
        stats.dry_run = false;
        assert_eq!(DryRunEstimate::of(&stats), None);
    }
}
