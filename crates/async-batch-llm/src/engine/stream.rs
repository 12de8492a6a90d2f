//! Streaming and collecting hosts: `process_stream` and `process_prompts`.

use std::collections::{BTreeMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use futures::{FutureExt as _, Stream, StreamExt as _};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::config::BatchConfig;
use super::pipeline::{Run, process_item};
use crate::error::Error;
use crate::item::Item;
use crate::observe::Middleware;
use crate::result::{BatchResult, ItemResult, Termination, TerminationReason};
use crate::store::{Checkpoint, Decision, item_fingerprint};
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

/// State the driver and the consumer share.
struct Control {
    /// Results handed to the consumer in order (ordered streaming only).
    emitted: AtomicU64,
    notify: Notify,
    termination: OnceLock<Termination>,
    cooldowns: AtomicU64,
    admission: std::sync::Mutex<crate::limit::AdmissionStats>,
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
        self.control.cooldowns.load(Ordering::Relaxed)
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
    batch.stats.cooldowns = stream.cooldowns();
    batch.stats.admission = stream.admission_stats();
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
    let run = Arc::new(Run::new(strategy, config));
    let (tx, rx) = mpsc::channel(config.effective_result_buffer());
    let control = Arc::new(Control {
        emitted: AtomicU64::new(0),
        notify: Notify::new(),
        termination: OnceLock::new(),
        cooldowns: AtomicU64::new(0),
        admission: std::sync::Mutex::default(),
    });
    let stop_run = Arc::clone(&run);
    let stop = StopHandle {
        stop: Arc::new(move |cancel| {
            stop_run
                .stop
                .trigger(Termination::new(TerminationReason::Aborted), cancel);
        }),
    };
    let driver = Driver {
        run,
        tx,
        control: Arc::clone(&control),
        concurrency: config.concurrency,
        startup_ramp: config.startup_ramp,
        window: config.reorder_window,
        batch_deadline: config.batch_deadline.map(|d| Instant::now() + d),
        record_unstarted,
        middleware: extras.middleware.into(),
        checkpoint: extras.checkpoint,
    };
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

/// Stops the run because the checkpoint failed.
fn checkpoint_failed<S: Strategy>(run: &Run<S>, message: String) {
    run.stop.trigger(
        Termination {
            message: Some(message),
            ..Termination::new(TerminationReason::CheckpointFailed)
        },
        false,
    );
}

/// One item with a checkpoint that the staging step chose to run: process
/// it and hand its result to the checkpoint writer, which publishes it once
/// committed (the worker is free as soon as the record is queued). Stops
/// are not recorded (those items run again on resume).
async fn checkpointed<S: Strategy>(
    run: &Arc<Run<S>>,
    cp: &Checkpoint<S::Output>,
    middleware: &[Arc<dyn Middleware<S::Output>>],
    (item, fp): (Item, String),
    index: u64,
    publish: Publish<S::Output>,
) {
    let prompt = cp.stores_inputs().then(|| item.prompt.clone());
    let result = after_middleware(middleware, process_item(run, item, index, None).await);
    if result.error().is_some_and(|e| e.category.is_stop()) {
        return publish.now(run, result).await;
    }
    match cp.encode_record(&result, fp, prompt) {
        Ok(rec) => {
            let run = Arc::clone(run);
            cp.commit_then(
                &rec,
                Box::new(move |committed| {
                    if let Err(e) = committed {
                        checkpoint_failed(&run, e);
                    }
                    publish.blocking(&run, result);
                }),
            )
            .await;
        }
        Err(e) => {
            checkpoint_failed(run, e.to_string());
            publish.now(run, result).await;
        }
    }
}

/// An input item after middleware and, with a checkpoint, after the resume
/// decision.
enum Staged<T> {
    /// Process it (with its fingerprint when there is a checkpoint).
    Run(Item, Option<String>),
    /// Publish this stored result.
    Replay(Box<ItemResult<T>>),
    /// The checkpoint could not be read: the run stops; the item is not
    /// started.
    Failed(Item, String),
}

/// Input items decided per chunk on the blocking pool.
const STAGE_CHUNK: usize = 1024;
/// Chunks being decided while the driver dispatches the current one. A
/// chunk's store lookup is serialized (one read-ahead), its parsing is not:
/// with three in flight one held the lookup, one waited for it and only
/// one parsed, leaving a core idle (1.5 of 2 cores busy, 390–440k replays/s);
/// with eight, 1.7 cores and 640–730k/s.
const STAGE_AHEAD: usize = 8;
/// Most prompt text in one chunk: with large prompts a chunk holds fewer
/// items, so what a resume reads ahead stays near STAGE_AHEAD × this.
const STAGE_CHUNK_BYTES: usize = 4 << 20;
/// Most replayed results in one message to the consumer.
const REPLAY_GROUP: usize = 64;

/// The driver's input: items after `before` middleware and, when the
/// checkpoint may replay, after the resume decision. Without replays an
/// item is read only when the driver asks (so only when a worker is free).
/// With replays, chunks of items that are ready are read and decided on
/// the blocking pool (one store round trip per chunk) ahead of the driver.
/// Items read are accepted: [`Feed::drain_taken`] returns those not yet
/// dispatched when the run stops.
struct Feed<T> {
    items: Pin<Box<dyn Stream<Item = Item> + Send>>,
    middleware: Arc<[Arc<dyn Middleware<T>>]>,
    replay: Option<Arc<Checkpoint<T>>>,
    pending: VecDeque<Staged<T>>,
    deciding: VecDeque<tokio::task::JoinHandle<Vec<Staged<T>>>>,
    input_done: bool,
}

impl<T: Send + 'static> Feed<T> {
    fn new(
        items: Pin<Box<dyn Stream<Item = Item> + Send>>,
        middleware: Arc<[Arc<dyn Middleware<T>>]>,
        checkpoint: Option<&Arc<Checkpoint<T>>>,
    ) -> Self {
        Self {
            items,
            middleware,
            replay: checkpoint.filter(|cp| cp.may_replay()).cloned(),
            pending: VecDeque::new(),
            deciding: VecDeque::new(),
            input_done: false,
        }
    }

    fn before(&self, item: Item) -> Option<Item> {
        self.middleware.iter().try_fold(item, |it, m| m.before(it))
    }

    /// Whether items are decided ahead (the checkpoint may replay).
    fn stages(&self) -> bool {
        self.replay.is_some()
    }

    /// With replays: waits until something is staged (or the input ends).
    async fn fill(&mut self) {
        if self.replay.is_none() {
            return;
        }
        while self.pending.is_empty() {
            if let Some(h) = self.deciding.front_mut() {
                // Awaited in place: if the driver stops waiting (a stop), the
                // chunk stays queued for `drain_taken`. `decide_chunk`
                // contains panics, so this fails only when the runtime shuts
                // down, and with it the run.
                let decided = h.await.unwrap_or_default();
                self.deciding.pop_front();
                self.pending = decided.into();
            } else if self.input_done {
                return;
            } else {
                let Some(first) = self.items.next().await else {
                    self.input_done = true;
                    return;
                };
                self.start_chunk(Some(first));
            }
        }
        self.top_up();
    }

    /// Whether the next staged item is a replay (it needs no worker).
    fn replay_next(&self) -> bool {
        matches!(self.pending.front(), Some(Staged::Replay(_)))
    }

    /// The next item; `None` at the end of the input.
    async fn next(&mut self) -> Option<Staged<T>> {
        if self.replay.is_some() {
            self.fill().await;
            return self.pending.pop_front();
        }
        loop {
            let item = self.items.next().await?;
            if let Some(item) = self.before(item) {
                return Some(Staged::Run(item, None));
            }
        }
    }

    /// Up to `max` replays from the front.
    fn take_replays(&mut self, max: usize) -> Vec<Box<ItemResult<T>>> {
        let mut out = Vec::with_capacity(max.min(self.pending.len()));
        while out.len() < max {
            match self.pending.pop_front() {
                Some(Staged::Replay(r)) => out.push(r),
                Some(other) => {
                    self.pending.push_front(other);
                    break;
                }
                None => break,
            }
        }
        out
    }

    /// Starts deciding the items that are ready now, `first` included.
    fn start_chunk(&mut self, first: Option<Item>) -> bool {
        let Some(cp) = &self.replay else { return false };
        let mut chunk: Vec<Item> = first.and_then(|i| self.before(i)).into_iter().collect();
        let mut bytes: usize = chunk.iter().map(|i| i.prompt.text_bytes()).sum();
        while chunk.len() < STAGE_CHUNK && bytes < STAGE_CHUNK_BYTES {
            match self.items.next().now_or_never() {
                Some(Some(item)) => {
                    if let Some(item) = self.before(item) {
                        bytes += item.prompt.text_bytes();
                        chunk.push(item);
                    }
                }
                Some(None) => {
                    self.input_done = true;
                    break;
                }
                None => break,
            }
        }
        if chunk.is_empty() {
            return false;
        }
        let cp = Arc::clone(cp);
        self.deciding
            .push_back(tokio::task::spawn_blocking(move || {
                decide_chunk(&cp, chunk)
            }));
        true
    }

    /// Keeps [`STAGE_AHEAD`] chunks being decided while input is ready.
    fn top_up(&mut self) {
        while self.deciding.len() < STAGE_AHEAD && !self.input_done && self.start_chunk(None) {}
    }

    /// Items read from the input but not dispatched, in order.
    async fn drain_taken(&mut self) -> Vec<Staged<T>> {
        while let Some(h) = self.deciding.pop_front() {
            self.pending.extend(h.await.unwrap_or_default());
        }
        self.pending.drain(..).collect()
    }
}

/// The resume decisions of one chunk; a panic in the store becomes a
/// failure of each item, so none is lost.
fn decide_chunk<T>(cp: &Checkpoint<T>, chunk: Vec<Item>) -> Vec<Staged<T>> {
    let decided = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cp.stage(&chunk)));
    match decided {
        Ok(decisions) => chunk
            .into_iter()
            .zip(decisions)
            .map(|(item, d)| match d {
                Decision::Replay(mut r) => {
                    r.id = item.id;
                    r.context = item.context;
                    Staged::Replay(r)
                }
                Decision::Run(fp) => Staged::Run(item, Some(fp)),
                Decision::Failed(message) => Staged::Failed(item, message),
            })
            .collect(),
        Err(_) => chunk
            .into_iter()
            .map(|item| Staged::Failed(item, "the checkpoint lookup panicked".into()))
            .collect(),
    }
}

/// Hands one result to the consumer; holds the item's place in the run
/// (the driver ends the stream only when every place is given back).
struct Publish<T> {
    tx: mpsc::Sender<Msg<T>>,
    _place: tokio_util::task::task_tracker::TaskTrackerToken,
}

impl<T: Send + 'static> Publish<T> {
    async fn now<S: Strategy<Output = T>>(self, run: &Run<S>, result: ItemResult<T>) {
        run.emit_terminal(&result);
        let _ = self.tx.send(Msg::One(result)).await;
    }

    /// From a thread outside the runtime (the checkpoint writer).
    fn blocking<S: Strategy<Output = T>>(self, run: &Run<S>, result: ItemResult<T>) {
        run.emit_terminal(&result);
        let _ = self.tx.blocking_send(Msg::One(result));
    }
}

/// What the driver and the workers send the consumer: one result, or a
/// group of replayed ones (one channel operation for many).
#[allow(clippy::large_enum_variant)] // `One` is the common case; boxing it would allocate per result
enum Msg<T> {
    One(ItemResult<T>),
    Group(std::vec::IntoIter<Box<ItemResult<T>>>),
}

/// Applies `after` to a success and `on_error` to a failure.
fn after_middleware<T>(
    middleware: &[Arc<dyn Middleware<T>>],
    mut result: ItemResult<T>,
) -> ItemResult<T> {
    if middleware.is_empty() {
        return result;
    }
    result.outcome = match result.outcome {
        Ok(out) => Ok(middleware.iter().fold(out, |o, m| m.after(&result.id, o))),
        Err(e) => {
            for m in middleware {
                m.on_error(&result.id, &e);
            }
            Err(e)
        }
    };
    result
}

struct Driver<S: Strategy> {
    run: Arc<Run<S>>,
    tx: mpsc::Sender<Msg<S::Output>>,
    control: Arc<Control>,
    concurrency: usize,
    startup_ramp: Option<super::config::StartupRamp>,
    window: Option<usize>,
    batch_deadline: Option<Instant>,
    record_unstarted: bool,
    middleware: Arc<[Arc<dyn Middleware<S::Output>>]>,
    checkpoint: Option<Arc<Checkpoint<S::Output>>>,
}

impl<S: Strategy> Driver<S> {
    /// Adds workers per the startup ramp until the full concurrency.
    fn spawn_ramp(&self, workers: &Arc<Semaphore>, finished: &CancellationToken) {
        let Some(ramp) = self.startup_ramp else {
            return;
        };
        let (workers, finished) = (Arc::clone(workers), finished.clone());
        let mut have = ramp.initial.min(self.concurrency);
        let full = self.concurrency;
        tokio::spawn(async move {
            while have < full {
                tokio::select! {
                    () = finished.cancelled() => return,
                    () = tokio::time::sleep(ramp.interval) => {}
                }
                let add = ramp.step.min(full - have);
                workers.add_permits(add);
                have += add;
            }
        });
    }

    /// Stops the run at the batch deadline unless `finished` fires first.
    fn spawn_deadline_timer(&self, finished: &CancellationToken) {
        if let Some(deadline) = self.batch_deadline {
            let run = Arc::clone(&self.run);
            let finished = finished.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = finished.cancelled() => {}
                    () = tokio::time::sleep_until(deadline) => {
                        run.stop.trigger(Termination::new(TerminationReason::BatchDeadline), true);
                    }
                }
            });
        }
    }

    /// The task that processes one item and publishes its result; it
    /// holds a worker until the result is published or handed to the
    /// checkpoint writer.
    fn item_task(
        &self,
        item: Item,
        fp: Option<String>,
        i: u64,
        place: tokio_util::task::task_tracker::TaskTrackerToken,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        let run = Arc::clone(&self.run);
        let publish = Publish {
            tx: self.tx.clone(),
            _place: place,
        };
        let middleware = Arc::clone(&self.middleware);
        let checkpoint = self.checkpoint.clone();
        // Boxed: the item's state machine is kilobytes, and a box is
        // cheaper than moving it through the spawn layers.
        Box::pin(async move {
            if let Some(cp) = checkpoint {
                let fp = fp.unwrap_or_else(|| item_fingerprint(&item));
                checkpointed(&run, &cp, &middleware, (item, fp), i, publish).await;
            } else {
                let result = after_middleware(&middleware, process_item(&run, item, i, None).await);
                publish.now(&run, result).await;
            }
            drop(permit);
        })
    }

    /// How many more items the reorder window lets start now (waiting
    /// while it is full); `None` once the run stops.
    async fn window_room(&self, index: u64) -> Option<usize> {
        let Some(w) = self.window else {
            return Some(usize::MAX);
        };
        loop {
            let notified = self.control.notify.notified();
            let limit = self.control.emitted.load(Ordering::Acquire) + w as u64;
            if index < limit {
                return Some(usize::try_from(limit - index).unwrap_or(usize::MAX));
            }
            tokio::select! {
                biased;
                () = self.run.stop.stopping.cancelled() => return None,
                () = notified => {}
            }
        }
    }

    /// Publishes replayed results as one message; returns the next index.
    async fn publish_replays(
        &self,
        mut group: Vec<Box<ItemResult<S::Output>>>,
        mut index: u64,
    ) -> u64 {
        for r in &mut group {
            r.index = index;
            index += 1;
            self.run.emit_terminal(r);
        }
        if !group.is_empty() {
            let _ = self.tx.send(Msg::Group(group.into_iter())).await;
        }
        index
    }

    /// Publishes an item that takes no worker: a replay, an item whose
    /// checkpoint could not be read (this stops the run), or one read but
    /// not started after a stop. Returns the next index.
    async fn publish_without_worker(&self, staged: Staged<S::Output>, index: u64) -> u64 {
        let r = match staged {
            Staged::Replay(mut r) => {
                r.index = index;
                self.run.emit_terminal(&r);
                *r
            }
            Staged::Failed(item, message) => {
                // The first stop reason wins: after a stop this changes nothing.
                checkpoint_failed(&self.run, message);
                self.run.unstarted(item, index)
            }
            Staged::Run(item, _) => self.run.unstarted(item, index),
        };
        let _ = self.tx.send(Msg::One(r)).await;
        index + 1
    }

    async fn drive<I: Stream<Item = Item> + Send + 'static>(self, items: I) {
        let run = &self.run;
        run.events.emit(|| crate::observe::Event::BatchStarted);
        let cooldowns_before = run.scope.cooldown().started_count();
        let admission_before = run
            .scope
            .admission()
            .map(crate::limit::Admission::stats)
            .unwrap_or_default();
        let workers = Arc::new(Semaphore::new(
            self.startup_ramp
                .map_or(self.concurrency, |r| r.initial.min(self.concurrency)),
        ));
        let tracker = TaskTracker::new();
        let finished = CancellationToken::new();
        self.spawn_deadline_timer(&finished);
        self.spawn_ramp(&workers, &finished);
        let _end_timer = finished.drop_guard();
        let mut feed = Feed::new(
            Box::pin(items),
            Arc::clone(&self.middleware),
            self.checkpoint.as_ref(),
        );
        let mut index = 0u64;
        loop {
            if feed.stages() {
                tokio::select! {
                    biased;
                    () = run.stop.stopping.cancelled() => break,
                    () = feed.fill() => {}
                }
            }
            // A replay needs no worker.
            let permit = if feed.replay_next() {
                None
            } else {
                tokio::select! {
                    biased;
                    () = run.stop.stopping.cancelled() => break,
                    p = Arc::clone(&workers).acquire_owned() => match p {
                        Ok(p) => Some(p),
                        Err(_) => break,
                    },
                }
            };
            let Some(room) = self.window_room(index).await else {
                break;
            };
            if permit.is_none() {
                let group = feed.take_replays(room.min(REPLAY_GROUP));
                index = self.publish_replays(group, index).await;
                continue;
            }
            let next = tokio::select! {
                biased;
                () = run.stop.stopping.cancelled() => break,
                next = feed.next() => next,
            };
            let (Some(next), Some(permit)) = (next, permit) else {
                break;
            };
            let i = index;
            index += 1;
            match next {
                Staged::Run(item, fp) => {
                    let place = tracker.token();
                    tracker.spawn(self.item_task(item, fp, i, place, permit));
                }
                other => {
                    drop(permit);
                    self.publish_without_worker(other, i).await;
                }
            }
        }
        // Items already read were accepted: each gets its result.
        for staged in feed.drain_taken().await {
            index = self.publish_without_worker(staged, index).await;
        }
        if self.record_unstarted && run.stop.stopping.is_cancelled() {
            while let Some(staged) = feed.next().await {
                index = self.publish_without_worker(staged, index).await;
            }
        }
        tracker.close();
        tracker.wait().await;
        if let Some(cp) = &self.checkpoint {
            let cp = Arc::clone(cp);
            // Every record is committed; leave them in the main file, so the
            // file alone is complete once the stream has ended.
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || cp.settle()).await {
                tracing::warn!("checkpoint: {e}");
            }
        }
        self.finish(cooldowns_before, admission_before).await;
    }

    /// Cleanup, the run's figures and its termination, then the end event.
    async fn finish(&self, cooldowns_before: u64, admission_before: crate::limit::AdmissionStats) {
        let run = &self.run;
        let termination = run
            .stop
            .termination()
            .unwrap_or_else(Termination::completed);
        run.cleanup().await;
        self.control.cooldowns.store(
            run.scope.cooldown().started_count() - cooldowns_before,
            Ordering::Relaxed,
        );
        if let Some(adm) = run.scope.admission()
            && let Ok(mut a) = self.control.admission.lock()
        {
            *a = adm.stats().since(&admission_before);
        }
        run.events.emit(|| {
            let termination = termination.clone();
            if termination.reason == TerminationReason::Completed {
                crate::observe::Event::BatchCompleted { termination }
            } else {
                crate::observe::Event::BatchAborted { termination }
            }
        });
        let _ = self.control.termination.set(termination);
    }
}
