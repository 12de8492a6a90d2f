//! Run settings.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{DefaultClassifier, Error, ErrorCategory, ErrorClassifier};
use crate::limit::{
    CharEstimator, CooldownPolicy, RateLimits, ScopeRegistry, ScopeSettings, TokenEstimator,
};
use crate::time::MAX_DURATION;
use crate::usage::Prices;

/// What happens to calls in flight when a budget or fail-fast stops a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StopMode {
    /// They finish and their results count (default).
    #[default]
    Drain,
    /// They are cancelled and recorded as `aborted`.
    Cancel,
}

/// A gentle start: begin with `initial` workers and add `step` every
/// `interval` until the configured concurrency is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartupRamp {
    /// Workers at the start.
    pub initial: usize,
    /// Workers added each interval.
    pub step: usize,
    /// Time between additions.
    pub interval: Duration,
}

/// Spending limits of a run. Overshoot is bounded by the calls in flight.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Budget {
    /// Most tokens (billed, failed attempts included) the run may use.
    pub max_tokens: Option<u64>,
    /// Most money the run may spend at `prices`.
    pub max_cost: Option<f64>,
    /// Prices for the cost budget.
    pub prices: Option<Prices>,
}

/// How failed attempts are retried.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Logical attempts per item for errors other than rate limits (3).
    pub max_attempts: u32,
    /// Rate-limited tries of the same attempt before the item fails with
    /// `rate_limit_retries_exceeded` (20).
    pub max_rate_limit_retries: u32,
    /// Backoff after the first failed attempt (1 s).
    pub initial_backoff: Duration,
    /// Growth per attempt (2).
    pub backoff_multiplier: f64,
    /// Cap of the backoff before jitter (60 s).
    pub max_backoff: Duration,
    /// Scale each backoff by a uniform factor in [0.5, 1] (on).
    pub jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            max_rate_limit_retries: 20,
            initial_backoff: Duration::from_secs(1),
            backoff_multiplier: 2.0,
            max_backoff: Duration::from_secs(60),
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// The backoff before the attempt after attempt `failed` (1-based):
    /// `min(initial × multiplier^(failed−1), max)`, times jitter.
    pub fn backoff(&self, failed: u32) -> Duration {
        let exp = i32::try_from(failed.saturating_sub(1)).unwrap_or(i32::MAX);
        let secs = self.initial_backoff.as_secs_f64() * self.backoff_multiplier.max(1.0).powi(exp);
        let base = crate::time::secs_f64(secs.min(self.max_backoff.as_secs_f64()))
            .unwrap_or(self.max_backoff);
        if self.jitter {
            base.mul_f64(0.5 + 0.5 * crate::rand::unit())
        } else {
            base
        }
    }
}

/// Most workers (and calls in flight) a run may have.
pub const MAX_CONCURRENCY: usize = 1_000_000;
/// The smallest requests-per-minute limit: one request a week.
pub const MIN_RPM: f64 = 1.0 / (7.0 * 24.0 * 60.0);
/// The largest requests-per-minute limit.
pub const MAX_RPM: f64 = 1e9;

/// Everything a run needs to know. Build it with struct update syntax:
///
/// ```
/// use std::time::Duration;
/// use async_batch_llm::BatchConfig;
///
/// let config = BatchConfig {
///     concurrency: 128,
///     attempt_timeout: Duration::from_secs(30),
///     ..BatchConfig::default()
/// };
/// assert!(config.validate().is_ok());
/// ```
#[derive(Clone)]
pub struct BatchConfig {
    /// Items processed at once (workers) (32).
    pub concurrency: usize,
    /// Retry budgets and backoff.
    pub retry: RetryPolicy,
    /// Cooldown lengths for the quota scope.
    pub cooldown: CooldownPolicy,
    /// Time limit of one attempt; a timeout is retryable (120 s).
    pub attempt_timeout: Duration,
    /// Time limit of one item including every wait.
    pub item_deadline: Option<Duration>,
    /// Time limit of the whole run.
    pub batch_deadline: Option<Duration>,
    /// Collect mode: return results in input order instead of completion order.
    pub preserve_order: bool,
    /// Streaming: emit results in input order, holding at most this many
    /// items between the oldest unfinished one and the newest started one.
    pub reorder_window: Option<usize>,
    /// Results that may wait for the consumer (0 means `concurrency`).
    pub result_buffer: usize,
    /// Quota scope name; by default the strategy's, else `"default"`.
    pub quota_scope: Option<String>,
    /// Most calls in flight at once in the scope (a provider limit).
    pub scope_max_concurrency: Option<usize>,
    /// Where the run's quota scopes live. Each default config has its own
    /// registry; give several runs (or pools) one registry, or
    /// [`ScopeRegistry::global`], to share cooldowns and limits between them.
    pub scopes: ScopeRegistry,
    /// Retry decisions.
    pub classifier: Arc<dyn ErrorClassifier>,
    /// Call `Strategy::dry_run` instead of `execute`.
    pub dry_run: bool,
    /// Requests and tokens per minute for the quota scope. Left unset, the
    /// limits a provider's headers report are used, and without those the
    /// limits a quota wall teaches.
    pub limits: RateLimits,
    /// Adaptive concurrency while no limit is known: the scope's window of
    /// calls in flight shrinks when the provider's quota or overload shows
    /// and grows back on clean successes (on).
    pub adaptive: bool,
    /// Token estimates for TPM admission (default: characters / 4 + 256).
    pub estimator: Option<Arc<dyn TokenEstimator>>,
    /// Token and cost budgets.
    pub budget: Budget,
    /// Stop the run once an item fails for good with one of these.
    pub fail_fast: Vec<ErrorCategory>,
    /// Drain or cancel calls in flight when a budget or fail-fast stops the run.
    pub stop_mode: StopMode,
    /// Observers of the run's events (they cannot change decisions).
    pub observers: Vec<Arc<dyn crate::observe::Observer>>,
    /// Events queued for slow observers before new ones are dropped (65,536).
    pub event_queue: usize,
    /// Start with fewer workers and add more over time.
    pub startup_ramp: Option<StartupRamp>,
    /// Cooldowns and RPM/TPM windows shared with other processes on the
    /// same quota (a [`RedisLimits`](crate::RedisLimits) with the `redis`
    /// feature). `None` (the default): this process counts alone.
    pub shared_limits: Option<Arc<dyn crate::limit::SharedLimits>>,
    /// What admission does while the shared store cannot be reached: pause
    /// (the default) or go on within a share of the limits.
    pub shared_fallback: crate::limit::SharedFallback,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            concurrency: 32,
            retry: RetryPolicy::default(),
            cooldown: CooldownPolicy::default(),
            attempt_timeout: Duration::from_secs(120),
            item_deadline: None,
            batch_deadline: None,
            preserve_order: false,
            reorder_window: None,
            result_buffer: 0,
            quota_scope: None,
            scope_max_concurrency: None,
            scopes: ScopeRegistry::new(),
            classifier: Arc::new(DefaultClassifier),
            dry_run: false,
            limits: RateLimits::default(),
            adaptive: true,
            estimator: Some(Arc::new(CharEstimator::default())),
            budget: Budget::default(),
            fail_fast: Vec::new(),
            stop_mode: StopMode::Drain,
            observers: Vec::new(),
            event_queue: 65_536,
            startup_ramp: None,
            shared_limits: None,
            shared_fallback: crate::limit::SharedFallback::Pause,
        }
    }
}

impl std::fmt::Debug for BatchConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchConfig")
            .field("concurrency", &self.concurrency)
            .field("retry", &self.retry)
            .field("cooldown", &self.cooldown)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("item_deadline", &self.item_deadline)
            .field("batch_deadline", &self.batch_deadline)
            .field("preserve_order", &self.preserve_order)
            .field("reorder_window", &self.reorder_window)
            .field("result_buffer", &self.result_buffer)
            .field("quota_scope", &self.quota_scope)
            .field("scope_max_concurrency", &self.scope_max_concurrency)
            .field("dry_run", &self.dry_run)
            .field("limits", &self.limits)
            .field("adaptive", &self.adaptive)
            .field("budget", &self.budget)
            .field("fail_fast", &self.fail_fast)
            .field("stop_mode", &self.stop_mode)
            .field("observers", &self.observers.len())
            .finish_non_exhaustive()
    }
}

impl BatchConfig {
    /// Checks ranges and consistency.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: &str| Err(Error::config(m.to_owned()));
        if self.concurrency == 0 {
            return bad("concurrency must be at least 1");
        }
        if self.concurrency > MAX_CONCURRENCY
            || self
                .scope_max_concurrency
                .is_some_and(|n| n > MAX_CONCURRENCY)
            || self
                .startup_ramp
                .is_some_and(|r| r.initial > MAX_CONCURRENCY)
        {
            return Err(Error::config(format!(
                "concurrency is at most {MAX_CONCURRENCY} (workers, scope gate and startup ramp)"
            )));
        }
        let durations = [
            ("attempt_timeout", Some(self.attempt_timeout)),
            ("item_deadline", self.item_deadline),
            ("batch_deadline", self.batch_deadline),
            ("retry.initial_backoff", Some(self.retry.initial_backoff)),
            ("retry.max_backoff", Some(self.retry.max_backoff)),
            ("cooldown.default", Some(self.cooldown.default)),
            ("cooldown.max", Some(self.cooldown.max)),
            ("cooldown.max_hint", Some(self.cooldown.max_hint)),
            ("limits.margin", Some(self.limits.margin)),
            (
                "startup_ramp.interval",
                self.startup_ramp.map(|r| r.interval),
            ),
        ];
        if let Some((name, _)) = durations
            .iter()
            .find(|(_, d)| d.is_some_and(|d| d > MAX_DURATION))
        {
            return Err(Error::config(format!(
                "{name} is longer than the longest duration allowed ({} s)",
                MAX_DURATION.as_secs()
            )));
        }
        if self.retry.max_attempts == 0 {
            return bad("retry.max_attempts must be at least 1");
        }
        if self.attempt_timeout.is_zero() {
            return bad("attempt_timeout must be positive");
        }
        if !(self.retry.backoff_multiplier.is_finite() && self.retry.backoff_multiplier >= 1.0) {
            return bad("retry.backoff_multiplier must be a finite number >= 1");
        }
        if !(self.cooldown.multiplier.is_finite() && self.cooldown.multiplier >= 1.0) {
            return bad("cooldown.multiplier must be a finite number >= 1");
        }
        if self.reorder_window == Some(0) {
            return bad("reorder_window must be at least 1");
        }
        if self.scope_max_concurrency == Some(0) {
            return bad("scope_max_concurrency must be at least 1");
        }
        if self.item_deadline.is_some_and(|d| d.is_zero()) {
            return bad("item_deadline must be positive");
        }
        if self
            .limits
            .rpm
            .is_some_and(|r| !(r.is_finite() && (MIN_RPM..=MAX_RPM).contains(&r)))
        {
            return Err(Error::config(format!(
                "limits.rpm must be a number from {MIN_RPM} to {MAX_RPM}"
            )));
        }
        if self.limits.tpm == Some(0) {
            return bad("limits.tpm must be at least 1");
        }
        if let Some(r) = self.startup_ramp
            && (r.initial == 0 || r.step == 0 || r.interval.is_zero())
        {
            return bad("startup_ramp needs initial >= 1, step >= 1 and a positive interval");
        }
        if self
            .budget
            .max_cost
            .is_some_and(|c| !(c.is_finite() && c >= 0.0))
        {
            return bad("budget.max_cost must be a finite number >= 0");
        }
        if self.budget.max_cost.is_some() && self.budget.prices.is_none() {
            return bad("budget.max_cost needs budget.prices");
        }
        Ok(())
    }

    /// The settings a quota scope is created with (cooldown, concurrency
    /// gate, rate limits), e.g. to look a scope up in [`ScopeRegistry`].
    pub fn scope_settings(&self) -> ScopeSettings {
        ScopeSettings {
            cooldown: self.cooldown,
            max_concurrency: self.scope_max_concurrency,
            limits: self.limits,
            adaptive: self.adaptive,
            shared: self
                .shared_limits
                .clone()
                .map(crate::limit::SharedLimitsHandle),
            shared_fallback: self.shared_fallback,
        }
    }

    /// The quota scope of a run of `strategy`: the configured name, else
    /// the strategy's (its model's provider, base URL, key fingerprint and
    /// model), else `"default"`.
    pub fn scope_name<S: crate::strategy::Strategy>(&self, strategy: &S) -> String {
        self.quota_scope
            .clone()
            .or_else(|| strategy.quota_scope())
            .unwrap_or_else(|| "default".to_owned())
    }

    pub(crate) fn effective_result_buffer(&self) -> usize {
        if self.result_buffer == 0 {
            self.concurrency
        } else {
            self.result_buffer
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let p = RetryPolicy {
            jitter: false,
            ..RetryPolicy::default()
        };
        let secs: Vec<f64> = (1..=8).map(|n| p.backoff(n).as_secs_f64()).collect();
        assert_eq!(secs, vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]);
        let j = RetryPolicy::default();
        for _ in 0..1000 {
            let b = j.backoff(3).as_secs_f64();
            assert!((2.0..=4.0).contains(&b), "{b}");
        }
    }

    #[test]
    fn validation_names_the_setting() {
        let c = BatchConfig {
            concurrency: 0,
            ..BatchConfig::default()
        };
        assert!(
            c.validate()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
                .contains("concurrency")
        );
        assert!(BatchConfig::default().validate().is_ok());
    }
}
