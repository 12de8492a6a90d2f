//! `CallPool`: a long-lived executor that services share.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use super::config::BatchConfig;
use super::pipeline::{Run, process_item};
use crate::error::{Error, ErrorCategory};
use crate::item::Item;
use crate::result::{ItemError, ItemResult, ItemTiming, Termination, TerminationReason};
use crate::strategy::Strategy;
use crate::time::micros;

/// Why a pool refused a submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// Every worker is busy and the pending queue is full.
    #[error("call pool saturated: every worker is busy and the pending queue is full")]
    Saturated,
    /// The pool is closed.
    #[error("call pool is closed")]
    Closed,
}

/// Limits of a [`CallPool`] beyond its [`BatchConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    /// Submissions that may wait for a worker; beyond it a submit fails at
    /// once with [`PoolError::Saturated`] (1024).
    pub max_pending: usize,
    /// Time limit of one submit, waiting for a worker included; past it the
    /// result is an `item_deadline` failure.
    pub submit_timeout: Option<Duration>,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_pending: 1024,
            submit_timeout: None,
        }
    }
}

/// A shared executor for services: `concurrency` workers, a bounded pending
/// queue, per-submit timeouts, and a graceful [`close`](CallPool::close) that
/// drains calls in flight. Every submission runs the same pipeline as a batch.
///
/// ```
/// # use async_batch_llm::{BatchConfig, CallPool, Item, PoolSettings, testing::FakeStrategy};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let pool = CallPool::new(FakeStrategy::echo(), &BatchConfig::default(), PoolSettings::default()).unwrap();
/// let r = pool.submit(Item::new("a", "hi")).await.unwrap();
/// assert_eq!(r.output().map(String::as_str), Some("hi"));
/// pool.close().await;
/// # }
/// ```
pub struct CallPool<S: Strategy> {
    run: Arc<Run<S>>,
    workers: Arc<Semaphore>,
    pending: AtomicUsize,
    settings: PoolSettings,
    next_index: AtomicU64,
    tracker: TaskTracker,
    closed: AtomicBool,
    cleaned: AtomicBool,
}

impl<S: Strategy> std::fmt::Debug for CallPool<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallPool")
            .field("settings", &self.settings)
            .field("pending", &self.pending.load(Ordering::Relaxed))
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

struct PendingSlot<'a>(&'a AtomicUsize);

impl Drop for PendingSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<S: Strategy> CallPool<S> {
    /// A pool with `config.concurrency` workers.
    pub fn new(
        strategy: impl Into<Arc<S>>,
        config: &BatchConfig,
        settings: PoolSettings,
    ) -> Result<Self, Error> {
        config.validate()?;
        Ok(Self {
            run: Arc::new(Run::new(strategy.into(), config)?),
            workers: Arc::new(Semaphore::new(config.concurrency)),
            pending: AtomicUsize::new(0),
            settings,
            next_index: AtomicU64::new(0),
            tracker: TaskTracker::new(),
            closed: AtomicBool::new(false),
            cleaned: AtomicBool::new(false),
        })
    }

    /// Submissions waiting for a worker.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    async fn worker(
        &self,
        deadline: Option<Instant>,
    ) -> Result<Option<OwnedSemaphorePermit>, PoolError> {
        match Arc::clone(&self.workers).try_acquire_owned() {
            Ok(p) => return Ok(Some(p)),
            Err(TryAcquireError::Closed) => return Err(PoolError::Closed),
            Err(TryAcquireError::NoPermits) => {}
        }
        let before = self.pending.fetch_add(1, Ordering::AcqRel);
        let _slot = PendingSlot(&self.pending);
        if before >= self.settings.max_pending {
            return Err(PoolError::Saturated);
        }
        let acquire = Arc::clone(&self.workers).acquire_owned();
        let permit = match deadline {
            None => acquire.await,
            Some(d) => match tokio::time::timeout_at(d, acquire).await {
                Ok(p) => p,
                Err(_) => return Ok(None),
            },
        };
        permit.map(Some).map_err(|_| PoolError::Closed)
    }

    /// Runs one item through the pipeline and returns its result. Fails at
    /// once with [`PoolError::Saturated`] when the pending queue is full.
    pub async fn submit(&self, item: Item) -> Result<ItemResult<S::Output>, PoolError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(PoolError::Closed);
        }
        let _in_flight = self.tracker.token();
        let start = Instant::now();
        let deadline = self
            .settings
            .submit_timeout
            .and_then(|t| crate::time::after(start, t));
        let index = self.next_index.fetch_add(1, Ordering::Relaxed);
        let Some(permit) = self.worker(deadline).await? else {
            let waited = micros(start.elapsed());
            return Ok(ItemResult {
                id: item.id,
                index,
                outcome: Err(ItemError::new(
                    ErrorCategory::ItemDeadline,
                    format!(
                        "submit timed out after {:.3} s waiting for a worker",
                        waited.as_secs_f64()
                    ),
                )),
                usage: crate::TokenUsage::default(),
                attempts: 0,
                tries: 0,
                timing: ItemTiming {
                    total: waited,
                    admission_wait: waited,
                    ..ItemTiming::default()
                },
                context: item.context,
                replayed: false,
            });
        };
        let result = process_item(&self.run, item, index, deadline).await;
        self.run.emit_terminal(&result);
        drop(permit);
        Ok(result)
    }

    /// Stops accepting submissions, waits for those in flight, then runs
    /// `cleanup` once.
    pub async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.tracker.close();
        self.tracker.wait().await;
        if !self.cleaned.swap(true, Ordering::AcqRel) {
            self.run.cleanup().await;
        }
    }

    /// Like [`close`](Self::close), but cancels calls in flight; their
    /// results are `aborted` failures.
    pub async fn abort(&self) {
        self.closed.store(true, Ordering::Release);
        self.run
            .stop
            .trigger(Termination::new(TerminationReason::Aborted), true);
        self.close().await;
    }
}

impl<S: Strategy> Drop for CallPool<S> {
    fn drop(&mut self) {
        if !self.cleaned.swap(true, Ordering::AcqRel)
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            let run = Arc::clone(&self.run);
            handle.spawn(async move { run.cleanup().await });
        }
    }
}
