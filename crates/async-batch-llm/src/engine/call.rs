//! One resilient call: the full pipeline for a single item.

use std::sync::Arc;

use tokio::time::Instant;

use super::config::BatchConfig;
use super::pipeline::{Run, process_item};
use crate::error::{Error, ErrorCategory};
use crate::item::{Item, Prompt};
use crate::result::{ItemError, ItemResult};
use crate::strategy::Strategy;

/// Runs `cleanup` if the call is dropped before it could.
struct CleanupOnDrop<S: Strategy>(Option<Arc<Run<S>>>);

impl<S: Strategy> Drop for CleanupOnDrop<S> {
    fn drop(&mut self) {
        if let Some(run) = self.0.take()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            handle.spawn(async move { run.cleanup().await });
        }
    }
}

/// Makes one call with every resilience of a batch run (retries, cooldown,
/// timeouts, deadlines) and returns its full [`ItemResult`]. `prepare` runs
/// before and `cleanup` after, also if the returned future is dropped.
/// The batch deadline, if set, acts as a deadline for this call.
pub async fn call_result<S: Strategy>(
    strategy: impl Into<Arc<S>>,
    item: Item,
    config: &BatchConfig,
) -> Result<ItemResult<S::Output>, Error> {
    config.validate()?;
    let run = Arc::new(Run::new(strategy.into(), config)?);
    let mut guard = CleanupOnDrop(Some(Arc::clone(&run)));
    let deadline = config
        .batch_deadline
        .and_then(|d| crate::time::after(Instant::now(), d));
    let result = process_item(&run, item, 0, deadline).await;
    run.emit_terminal(&result);
    guard.0 = None;
    run.cleanup().await;
    Ok(result)
}

/// Makes one resilient call and returns its output, or the error it ended
/// with (an invalid configuration is a `logic_error`).
///
/// ```
/// # use async_batch_llm::{BatchConfig, call, testing::FakeStrategy};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let out = call(FakeStrategy::echo(), "hello", &BatchConfig::default()).await;
/// assert_eq!(out.ok().as_deref(), Some("hello"));
/// # }
/// ```
pub async fn call<S: Strategy>(
    strategy: impl Into<Arc<S>>,
    prompt: impl Into<Prompt>,
    config: &BatchConfig,
) -> Result<S::Output, ItemError> {
    match call_result(strategy, Item::new("call", prompt), config).await {
        Ok(r) => r.outcome,
        Err(e) => Err(ItemError::new(ErrorCategory::LogicError, e.to_string())),
    }
}
