//! How a result reaches the consumer: one at a time or replays in groups
//! ([`Msg`]), after the `after`/`on_error` middleware, and, with a
//! checkpoint, only once its record is committed.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::pipeline::{Run, process_item};
use crate::item::Item;
use crate::observe::Middleware;
use crate::result::{ItemResult, Termination, TerminationReason};
use crate::store::Checkpoint;
use crate::strategy::Strategy;

/// Stops the run because the checkpoint failed.
pub(super) fn checkpoint_failed<S: Strategy>(run: &Run<S>, message: String) {
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
pub(super) async fn checkpointed<S: Strategy>(
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
/// Hands one result to the consumer; holds the item's place in the run
/// (the driver ends the stream only when every place is given back).
pub(super) struct Publish<T> {
    pub(super) tx: mpsc::Sender<Msg<T>>,
    pub(super) _place: tokio_util::task::task_tracker::TaskTrackerToken,
}

impl<T: Send + 'static> Publish<T> {
    pub(super) async fn now<S: Strategy<Output = T>>(self, run: &Run<S>, result: ItemResult<T>) {
        run.emit_terminal(&result);
        let _ = self.tx.send(Msg::One(result)).await;
    }

    /// From a thread outside the runtime (the checkpoint writer).
    pub(super) fn blocking<S: Strategy<Output = T>>(self, run: &Run<S>, result: ItemResult<T>) {
        run.emit_terminal(&result);
        let _ = self.tx.blocking_send(Msg::One(result));
    }
}

/// What the driver and the workers send the consumer: one result, or a
/// group of replayed ones (one channel operation for many).
#[allow(clippy::large_enum_variant)] // `One` is the common case; boxing it would allocate per result
pub(super) enum Msg<T> {
    One(ItemResult<T>),
    Group(std::vec::IntoIter<Box<ItemResult<T>>>),
}

/// Applies `after` to a success and `on_error` to a failure.
pub(super) fn after_middleware<T>(
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
