//! The streaming and collecting hosts: [`process_stream`] and
//! [`process_prompts`], the [`ResultStream`] they return (with input-order
//! reordering), and the [`StopHandle`] that stops a run from outside.
//! The work itself is the driver's (`driver.rs`).

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt as _};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::config::BatchConfig;
use super::driver::{Control, Driver};
use super::pipeline::Run;
use super::publish::Msg;
use crate::error::Error;
use crate::item::Item;
use crate::observe::Middleware;
use crate::result::{BatchResult, ItemResult, Termination, TerminationReason};
use crate::store::Checkpoint;
use crate::strategy::Strategy;

/// Middleware for the items of one run.
pub type MiddlewareList<T> = Vec<Arc<dyn Middleware<T>>>;

/// Parts of a run that depend on its output type.
pub struct RunExtras<T> {
    /// Middleware, applied in order.
    pub middleware: MiddlewareList<T>,
    /// A checkpoint: replay matching records, record every result before
    /// it is published.
    pub checkpoint: Option<Arc<Checkpoint<T>>>,
}

impl<T> Default for RunExtras<T> {
    fn default() -> Self {
        Self {
            middleware: Vec::new(),
            checkpoint: None,
        }
    }
}

impl<T> std::fmt::Debug for RunExtras<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunExtras")
            .field("middleware", &self.middleware.len())
            .field("checkpoint", &self.checkpoint.is_some())
            .finish()
    }
}

/// Stops a run from outside: [`stop`](StopHandle::stop) lets calls in flight
/// finish, [`cancel`](StopHandle::cancel) cancels them. Either way every
/// accepted item still gets its one result (`aborted` for those cut short).
#[derive(Clone)]
pub struct StopHandle {
    stop: Arc<dyn Fn(bool) + Send + Sync>,
}

impl std::fmt::Debug for StopHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StopHandle")
    }
}

impl StopHandle {
    /// Stops admitting work; calls in flight finish.
    pub fn stop(&self) {
        (self.stop)(false);
    }

    /// Stops admitting work and cancels calls in flight.
    pub fn cancel(&self) {
        (self.stop)(true);
    }
}

/// The results of a run as a [`Stream`], in completion order (or input order
/// with [`BatchConfig::reorder_window`]). Dropping it stops the run: calls in
/// flight are cancelled, `cleanup` runs, and no task outlives it for long.
pub struct ResultStream<T> {
    rx: mpsc::Receiver<Msg<T>>,
    /// The rest of a group being handed out.
    group: Option<std::vec::IntoIter<Box<ItemResult<T>>>>,
    reorder: Option<BTreeMap<u64, ItemResult<T>>>,
    next_index: u64,
    control: Arc<Control>,
    stop: StopHandle,
}

impl<T> Drop for ResultStream<T> {
    fn drop(&mut self) {
        // The consumer is gone: stop the run and cancel calls in flight. The
        // driver still runs `cleanup`. A no-op once the run has ended.
        if self.control.termination.get().is_none() {
            self.stop.cancel();
        }
    }
}

impl<T> std::fmt::Debug for ResultStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultStream")
            .field("next_index", &self.next_index)
            .finish_non_exhaustive()
    }
}

impl<T> ResultStream<T> {
    /// How the run ended; `None` until the stream has ended.
    pub fn termination(&self) -> Option<Termination> {
        self.control.termination.get().cloned()
    }

    /// Cooldowns started in the run's scope during the run (final once the
    /// stream has ended).
    pub fn cooldowns(&self) -> u64 {
        if self.control.termination.get().is_some() {
            return self.control.cooldowns.load(Ordering::Relaxed);
        }
        let now = self.control.scope.cooldown().started_count();
        now.saturating_sub(self.control.cooldowns_before)
    }

    /// Time the run's scope spent in cooldowns during the run, and the
    /// longest (a running cooldown counts up to now).
    pub fn cooldown_time(&self) -> crate::limit::CooldownTime {
        let now = self.control.scope.cooldown().time_spent(Instant::now());
        let total = now
            .total
            .saturating_sub(self.control.cooldown_time_before.total);
        crate::limit::CooldownTime {
            total,
            longest: now.longest.min(total),
        }
    }

    /// RPM/TPM admission in the run's scope during the run (final once the
    /// stream has ended).
    pub fn admission_stats(&self) -> crate::limit::AdmissionStats {
        self.control
            .admission
            .lock()
            .map(|a| *a)
            .unwrap_or_default()
    }

    /// Time left of the cooldown running in the run's scope now (`None`:
    /// no cooldown), for a progress display.
    pub fn cooldown_remaining(&self) -> Option<std::time::Duration> {
        let now = Instant::now();
        self.control
            .scope
            .cooldown()
            .active_until(now)
            .map(|until| until - now)
    }

    /// The limits the run's scope runs under now, and where they came from.
    pub fn limits_in_force(&self) -> crate::limit::LimitsInForce {
        self.control.scope.limits_in_force()
    }

    /// Results finished but held back to hand them out in input order
    /// (`preserve_order`), for a progress display that counts work done.
    pub fn held_back(&self) -> usize {
        self.reorder.as_ref().map_or(0, BTreeMap::len)
    }

    /// Puts the figures of the whole run that no single result carries
    /// (cooldowns and their time, admission, the limits in force) into
    /// `stats`, which a consumer built from the results.
    pub fn add_run_figures(&self, stats: &mut crate::result::BatchStats) {
        stats.cooldowns = self.cooldowns();
        let time = self.cooldown_time();
        stats.cooldown_time = time.total;
        stats.longest_cooldown = time.longest;
        stats.admission = self.admission_stats();
        stats.limits = self.limits_in_force();
    }

    /// A handle to stop the run.
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// The next result in arrival order.
    fn recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<ItemResult<T>>> {
        loop {
            if let Some(r) = self.group.as_mut().and_then(Iterator::next) {
                return Poll::Ready(Some(*r));
            }
            self.group = None;
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(Msg::One(r))) => return Poll::Ready(Some(r)),
                Poll::Ready(Some(Msg::Group(g))) => self.group = Some(g),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn release(&mut self, r: ItemResult<T>) -> Poll<Option<ItemResult<T>>> {
        self.next_index = r.index + 1;
        self.control
            .emitted
            .store(self.next_index, Ordering::Release);
        self.control.notify.notify_waiters();
        Poll::Ready(Some(r))
    }
}

// No field is pinned: the stream moves its results by value.
impl<T> Unpin for ResultStream<T> {}

impl<T> Stream for ResultStream<T> {
    type Item = ItemResult<T>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.reorder.is_none() {
            return this.recv(cx);
        }
        loop {
            let next = this.next_index;
            if let Some(buf) = this.reorder.as_mut()
                && let Some(r) = buf.remove(&next)
            {
                return this.release(r);
            }
            match this.recv(cx) {
                Poll::Ready(Some(r)) => {
                    if let Some(buf) = this.reorder.as_mut() {
                        buf.insert(r.index, r);
                    }
                }
                Poll::Ready(None) => {
                    // The run ended early: flush what is left, in order.
                    let first = this.reorder.as_mut().and_then(BTreeMap::pop_first);
                    return match first {
                        Some((_, r)) => this.release(r),
                        None => Poll::Ready(None),
                    };
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Processes a stream of items, yielding each result as it completes.
///
/// Input is pulled only when a worker is free (backpressure), and at most
/// [`BatchConfig::result_buffer`] results wait for the consumer. Items pulled
/// from `items` are accepted and each gets exactly one result; once the run
/// stops (deadline, [`StopHandle`]), no further item is pulled.
///
/// Must be called inside a tokio runtime.
pub fn process_stream<S, I>(
    strategy: impl Into<Arc<S>>,
    items: I,
    config: &BatchConfig,
) -> Result<ResultStream<S::Output>, Error>
where
    S: Strategy,
    I: Stream<Item = Item> + Send + 'static,
{
    start(strategy.into(), items, config, false, RunExtras::default())
}

/// [`process_stream`] with middleware and a checkpoint. Middleware
/// `before` may rewrite or filter each item as it is read (a filtered item
/// is not accepted and has no result), `after` may rewrite each output,
/// `on_error` sees each failure. With a checkpoint, matching records are
/// replayed and every new result is committed before it is yielded.
pub fn process_stream_with<S, I>(
    strategy: impl Into<Arc<S>>,
    items: I,
    config: &BatchConfig,
    extras: RunExtras<S::Output>,
) -> Result<ResultStream<S::Output>, Error>
where
    S: Strategy,
    I: Stream<Item = Item> + Send + 'static,
{
    start(strategy.into(), items, config, false, extras)
}

/// Processes every item and collects the results into a [`BatchResult`]
/// (completion order, or input order with [`BatchConfig::preserve_order`]).
/// A stopped run still returns one result for every item.
pub async fn process_prompts<S, I>(
    strategy: impl Into<Arc<S>>,
    items: I,
    config: &BatchConfig,
) -> Result<BatchResult<S::Output>, Error>
where
    S: Strategy,
    I: IntoIterator<Item = Item>,
{
    process_prompts_with(strategy, items, config, RunExtras::default()).await
}

/// [`process_prompts`] with middleware and a checkpoint (see
/// [`process_stream_with`]).
pub async fn process_prompts_with<S, I>(
    strategy: impl Into<Arc<S>>,
    items: I,
    config: &BatchConfig,
    extras: RunExtras<S::Output>,
) -> Result<BatchResult<S::Output>, Error>
where
    S: Strategy,
    I: IntoIterator<Item = Item>,
{
    let started = Instant::now();
    let items: Vec<Item> = items.into_iter().collect();
    let n = items.len();
    let mut stream = start(
        strategy.into(),
        futures::stream::iter(items),
        config,
        true,
        extras,
    )?;
    let mut results = Vec::with_capacity(n);
    while let Some(r) = stream.next().await {
        results.push(r);
    }
    let termination = stream.termination().unwrap_or_else(Termination::completed);
    let mut batch = BatchResult::new(results, termination, started.elapsed());
    stream.add_run_figures(&mut batch.stats);
    batch.stats.dry_run = config.dry_run;
    Ok(if config.preserve_order {
        batch.in_input_order()
    } else {
        batch
    })
}

fn start<S, I>(
    strategy: Arc<S>,
    items: I,
    config: &BatchConfig,
    record_unstarted: bool,
    extras: RunExtras<S::Output>,
) -> Result<ResultStream<S::Output>, Error>
where
    S: Strategy,
    I: Stream<Item = Item> + Send + 'static,
{
    config.validate()?;
    let run = Arc::new(Run::new(strategy, config)?);
    let (tx, rx) = mpsc::channel(config.effective_result_buffer());
    let stop_run = Arc::clone(&run);
    let stop = StopHandle {
        stop: Arc::new(move |cancel| {
            stop_run
                .stop
                .trigger(Termination::new(TerminationReason::Aborted), cancel);
        }),
    };
    let (driver, control) = Driver::new(
        run,
        tx,
        config,
        record_unstarted,
        extras.middleware,
        extras.checkpoint,
    );
    tokio::spawn(driver.drive(items));
    Ok(ResultStream {
        rx,
        group: None,
        reorder: config.reorder_window.map(|_| BTreeMap::new()),
        next_index: 0,
        control,
        stop,
    })
}
