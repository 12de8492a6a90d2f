//! Resume staging: with a checkpoint that may replay, input items are read
//! in chunks and decided on the blocking pool (replay or run) ahead of the
//! driver, so a resume skips finished items at hundreds of thousands a
//! second while new items still start at once.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;

use futures::{FutureExt as _, Stream, StreamExt as _};

use crate::item::Item;
use crate::observe::Middleware;
use crate::result::ItemResult;
use crate::store::{Checkpoint, Decision};

/// An input item after middleware and, with a checkpoint, after the resume
/// decision.
pub(super) enum Staged<T> {
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
pub(super) const REPLAY_GROUP: usize = 64;

/// The driver's input: items after `before` middleware and, when the
/// checkpoint may replay, after the resume decision. Without replays an
/// item is read only when the driver asks (so only when a worker is free).
/// With replays, chunks of items that are ready are read and decided on
/// the blocking pool (one store round trip per chunk) ahead of the driver.
/// Items read are accepted: [`Feed::drain_taken`] returns those not yet
/// dispatched when the run stops.
pub(super) struct Feed<T> {
    items: Pin<Box<dyn Stream<Item = Item> + Send>>,
    middleware: Arc<[Arc<dyn Middleware<T>>]>,
    replay: Option<Arc<Checkpoint<T>>>,
    pending: VecDeque<Staged<T>>,
    deciding: VecDeque<tokio::task::JoinHandle<Vec<Staged<T>>>>,
    input_done: bool,
}

impl<T: Send + 'static> Feed<T> {
    pub(super) fn new(
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
    pub(super) fn stages(&self) -> bool {
        self.replay.is_some()
    }

    /// With replays: waits until something is staged (or the input ends).
    pub(super) async fn fill(&mut self) {
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
    pub(super) fn replay_next(&self) -> bool {
        matches!(self.pending.front(), Some(Staged::Replay(_)))
    }

    /// The next item; `None` at the end of the input.
    pub(super) async fn next(&mut self) -> Option<Staged<T>> {
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
    pub(super) fn take_replays(&mut self, max: usize) -> Vec<Box<ItemResult<T>>> {
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
    pub(super) async fn drain_taken(&mut self) -> Vec<Staged<T>> {
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
