//! The [`Strategy`] trait (how one item is called) and [`RetryState`].

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use crate::error::{CallError, ErrorCategory};
use crate::item::Prompt;
use crate::limit::ReportedLimits;
use crate::usage::TokenUsage;

/// A successful attempt: the output and the usage it was billed for
/// (`None` when the provider did not say).
pub type Completion<T> = (T, Option<TokenUsage>);

/// How to call an LLM for one item. The engine owns retries, cooldowns,
/// timeouts and accounting; a strategy only makes one attempt at a time.
///
/// - [`prepare`](Strategy::prepare) runs once per run before the first call,
///   however many workers share the instance;
/// - [`execute`](Strategy::execute) makes one attempt;
/// - [`on_error`](Strategy::on_error) sees every failed attempt before the
///   engine decides to retry, and may leave notes in the [`RetryState`];
/// - [`cleanup`](Strategy::cleanup) runs once after the run, also on error and
///   on cancellation;
/// - [`dry_run`](Strategy::dry_run) stands in for `execute` in dry-run mode.
///
/// ```
/// use std::time::Duration;
/// use async_batch_llm::{CallError, Completion, Prompt, RetryState, Strategy, TokenUsage};
///
/// struct Shout;
///
/// impl Strategy for Shout {
///     type Output = String;
///     async fn execute(
///         &self,
///         prompt: &Prompt,
///         _attempt: u32,
///         _timeout: Duration,
///         _state: &mut RetryState,
///     ) -> Result<Completion<String>, CallError> {
///         Ok((prompt.text().to_uppercase(), Some(TokenUsage::new(3, 3))))
///     }
/// }
/// ```
pub trait Strategy: Send + Sync + 'static {
    /// What a successful call produces.
    type Output: Send + 'static;

    /// Sets up shared resources (caches, clients) before the first call.
    /// Concurrent callers wait for one run of it; a failure is reported to
    /// those waiters, and the next item tries again.
    fn prepare(&self) -> impl Future<Output = Result<(), CallError>> + Send {
        async { Ok(()) }
    }

    /// Makes attempt `attempt` (1, 2, …) with at most `timeout` to spend.
    /// Rate-limited retries repeat the same attempt number.
    fn execute(
        &self,
        prompt: &Prompt,
        attempt: u32,
        timeout: Duration,
        state: &mut RetryState,
    ) -> impl Future<Output = Result<Completion<Self::Output>, CallError>> + Send;

    /// Sees a failed attempt before the retry decision.
    fn on_error(
        &self,
        error: &CallError,
        attempt: u32,
        state: &mut RetryState,
    ) -> impl Future<Output = ()> + Send {
        let _ = (error, attempt, state);
        async {}
    }

    /// The quota scope this strategy's calls count against (see
    /// [`Model::quota_scope`](crate::Model::quota_scope)); `None` uses the
    /// run's configured scope or `"default"`.
    fn quota_scope(&self) -> Option<String> {
        None
    }

    /// What the model behind this strategy takes in content parts (see
    /// [`Model::part_policy`](crate::Model::part_policy)): the engine checks
    /// every item's attachments against it before the first attempt, and
    /// adds their tokens to the TPM estimate.
    fn part_policy(&self) -> &crate::attachment::PartPolicy {
        crate::attachment::PartPolicy::any()
    }

    /// Releases what `prepare` set up. Do not delete caches meant for reuse.
    fn cleanup(&self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Output for dry-run mode, without calling a provider. The default fails
    /// the item with `logic_error`: a generic output cannot be invented, so
    /// strategies whose output is text return [`dry_run_placeholder`].
    fn dry_run(
        &self,
        prompt: &Prompt,
    ) -> impl Future<Output = Result<Completion<Self::Output>, CallError>> + Send {
        let _ = prompt;
        async {
            Err(CallError::new(
                ErrorCategory::LogicError,
                "this strategy does not implement Strategy::dry_run",
            ))
        }
    }
}

/// The placeholder dry-run output of the seed API: a marker text and usage
/// 100 input, 50 output, 150 total.
pub fn dry_run_placeholder(prompt: &Prompt) -> Completion<String> {
    let text = prompt.text();
    let head: String = text.chars().take(50).collect();
    (
        format!("[DRY-RUN] Mock output for prompt: {head}..."),
        Some(TokenUsage::new(100, 50)),
    )
}

/// Notes one item keeps across its attempts, shared by
/// [`Strategy::execute`] and [`Strategy::on_error`]. Values are typed: a
/// `get::<T>` finds only a value stored as `T`.
///
/// It also carries one engine-bound note: a strategy that calls a provider
/// hands the rate-limit headers of a successful reply to
/// [`RetryState::report_limits`] (the built-in strategies do), and the engine
/// feeds them to the quota scope after the attempt: the limits a provider
/// reports then pace the run without the user naming them. (Errors carry
/// theirs in [`CallError::reported_limits`](crate::CallError::reported_limits).)
#[derive(Default)]
pub struct RetryState {
    values: HashMap<String, Box<dyn Any + Send + Sync>>,
    reported: Option<ReportedLimits>,
}

impl RetryState {
    /// Notes the rate-limit headers of this attempt's reply for the engine.
    pub fn report_limits(&mut self, limits: Option<ReportedLimits>) {
        if limits.is_some() {
            self.reported = limits;
        }
    }

    /// Takes the limits noted by the attempt that just ended.
    pub(crate) fn take_reported_limits(&mut self) -> Option<ReportedLimits> {
        self.reported.take()
    }

    /// An empty state.
    pub fn new() -> Self {
        Self::default()
    }

    /// The value under `key`, if it is a `T`.
    pub fn get<T: Any>(&self, key: &str) -> Option<&T> {
        self.values.get(key).and_then(|v| v.downcast_ref())
    }

    /// A mutable reference to the value under `key`, if it is a `T`.
    pub fn get_mut<T: Any>(&mut self, key: &str) -> Option<&mut T> {
        self.values.get_mut(key).and_then(|v| v.downcast_mut())
    }

    /// Stores `value` under `key`, replacing what was there.
    pub fn set<T: Any + Send + Sync>(&mut self, key: impl Into<String>, value: T) {
        self.values.insert(key.into(), Box::new(value));
    }

    /// Removes `key`; true if it was there.
    pub fn remove(&mut self, key: &str) -> bool {
        self.values.remove(key).is_some()
    }

    /// True if `key` holds a value of any type.
    pub fn contains(&self, key: &str) -> bool {
        self.values.contains_key(key)
    }

    /// Adds one to the `u32` counter under `key` and returns the new count.
    pub fn increment(&mut self, key: &str) -> u32 {
        if let Some(n) = self.get_mut::<u32>(key) {
            *n += 1;
            *n
        } else {
            self.set(key, 1u32);
            1
        }
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

impl std::fmt::Debug for RetryState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut keys: Vec<&String> = self.values.keys().collect();
        keys.sort();
        f.debug_struct("RetryState")
            .field("keys", &keys)
            .field("reported", &self.reported)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_values() {
        let mut s = RetryState::new();
        s.set("model", String::from("big"));
        assert_eq!(s.get::<String>("model").map(String::as_str), Some("big"));
        assert_eq!(s.get::<u32>("model"), None);
        assert_eq!(s.increment("n"), 1);
        assert_eq!(s.increment("n"), 2);
        assert!(s.remove("model"));
        assert!(!s.contains("model"));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn placeholder_matches_seed() {
        let (text, usage) = dry_run_placeholder(&Prompt::from("hello"));
        assert_eq!(text, "[DRY-RUN] Mock output for prompt: hello...");
        assert_eq!(usage, Some(TokenUsage::new(100, 50)));
        assert_eq!(usage.map(|u| u.total), Some(150));
    }
}
