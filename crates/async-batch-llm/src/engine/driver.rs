//! The driver of a streamed run: reads the feed, gives each item a worker
//! and a task, publishes replays without one, runs the startup ramp and the
//! batch deadline, and when the input ends (or the run stops) gives every
//! accepted item its result, settles the checkpoint and runs `cleanup`.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use futures::Stream;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::config::BatchConfig;
use super::pipeline::{Run, process_item};
use super::publish::{Msg, Publish, after_middleware, checkpoint_failed, checkpointed};
use super::resume::{Feed, REPLAY_GROUP, Staged};
use crate::item::Item;
use crate::observe::Middleware;
use crate::result::{ItemResult, Termination, TerminationReason};
use crate::store::{Checkpoint, item_fingerprint};
use crate::strategy::Strategy;

/// State the driver and the consumer share.
pub(super) struct Control {
    /// Results handed to the consumer in order (ordered streaming only).
    pub(super) emitted: AtomicU64,
    pub(super) notify: Notify,
    pub(super) termination: OnceLock<Termination>,
    pub(super) cooldowns: AtomicU64,
    /// The scope's cooldown count and time when the run began.
    pub(super) cooldowns_before: u64,
    pub(super) cooldown_time_before: crate::limit::CooldownTime,
    pub(super) admission: std::sync::Mutex<crate::limit::AdmissionStats>,
    /// The run's quota scope.
    pub(super) scope: Arc<crate::limit::Scope>,
}

pub(super) struct Driver<S: Strategy> {
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
    /// A driver for `run` sending results on `tx`; returns it with the
    /// state the consumer shares. `record_unstarted` (collect mode) gives
    /// items never read a result too when the run stops.
    pub(super) fn new(
        run: Arc<Run<S>>,
        tx: mpsc::Sender<Msg<S::Output>>,
        config: &BatchConfig,
        record_unstarted: bool,
        middleware: Vec<Arc<dyn Middleware<S::Output>>>,
        checkpoint: Option<Arc<Checkpoint<S::Output>>>,
    ) -> (Self, Arc<Control>) {
        let control = Arc::new(Control {
            emitted: AtomicU64::new(0),
            notify: Notify::new(),
            termination: OnceLock::new(),
            cooldowns: AtomicU64::new(0),
            cooldowns_before: run.scope.cooldown().started_count(),
            cooldown_time_before: run.scope.cooldown().time_spent(tokio::time::Instant::now()),
            admission: std::sync::Mutex::default(),
            scope: Arc::clone(&run.scope),
        });
        let driver = Self {
            run,
            tx,
            control: Arc::clone(&control),
            concurrency: config.concurrency,
            startup_ramp: config.startup_ramp,
            window: config.reorder_window,
            batch_deadline: config
                .batch_deadline
                .and_then(|d| crate::time::after(Instant::now(), d)),
            record_unstarted,
            middleware: middleware.into(),
            checkpoint,
        };
        (driver, control)
    }

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

    pub(super) async fn drive<I: Stream<Item = Item> + Send + 'static>(mut self, items: I) {
        let run = &self.run;
        run.events.emit(|| crate::observe::Event::BatchStarted);
        let cooldowns_before = self.control.cooldowns_before;
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
        drop(feed);
        if let Some(cp) = self.checkpoint.take() {
            // Every record is committed; leave them in the main file, so the
            // file alone is complete once the stream has ended. Then let the
            // run's hold on the checkpoint go (its writer thread, and with
            // the last holder its lock), so that the store can be opened
            // again as soon as the stream has ended.
            let settled = tokio::task::spawn_blocking(move || {
                let settled = cp.settle();
                drop(cp);
                settled
            })
            .await;
            if let Ok(Err(e)) = settled {
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
