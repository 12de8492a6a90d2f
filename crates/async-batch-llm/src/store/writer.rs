//! One writer thread per checkpoint: records are batched into commits
//! (bounded by rows and by time), then each record's continuation runs.
//!
//! Two ways to wait for a commit: [`Writer::write`] awaits it, and
//! [`Writer::write_then`] hands the record over with a continuation that
//! the writer thread runs after the commit (the engine publishes results
//! that way, so an item frees its worker as soon as its record is queued
//! and commits are large). The queue is bounded: a full queue makes the
//! sender wait, so memory stays bounded when the disk is slow.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::{CheckpointStore, EncodedRecord};
use crate::error::Error;

/// Runs on the writer thread once the record is committed (or failed):
/// outside any async context, so it may block (e.g. `blocking_send`).
pub(crate) type Then = Box<dyn FnOnce(Result<(), String>) + Send>;

enum Ack {
    Wait(oneshot::Sender<Result<(), String>>),
    Then(Then),
}

type Job = (EncodedRecord, Ack);

pub(super) struct Writer {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Writer {
    /// Ends the thread once what is queued is written, and waits for it,
    /// so the store is released when the writer is.
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take()
            && t.thread().id() != std::thread::current().id()
        {
            let _ = t.join();
        }
    }
}

fn gone(id: &str) -> Error {
    Error::format(
        format!("checkpoint, item {id}"),
        "the checkpoint writer has stopped",
    )
}

impl Writer {
    /// Starts the thread; at most `queue` records wait for it.
    pub(super) fn start(
        store: Arc<dyn CheckpointStore>,
        rows: usize,
        delay: Duration,
        queue: usize,
    ) -> Result<Self, Error> {
        let (tx, rx) = mpsc::channel::<Job>(queue.max(1));
        let thread = std::thread::Builder::new()
            .name("abl-checkpoint".into())
            .spawn(move || run(&*store, rx, rows.max(1), delay))
            .map_err(|e| Error::config(format!("cannot start the checkpoint writer: {e}")))?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Writes `record` and returns once it is committed.
    pub(super) async fn write(&self, record: EncodedRecord) -> Result<(), Error> {
        let (ack, done) = oneshot::channel();
        let id = record.id.clone();
        let tx = self.tx.as_ref().ok_or_else(|| gone(&id))?;
        tx.send((record, Ack::Wait(ack)))
            .await
            .map_err(|_| gone(&id))?;
        match done.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(Error::format(format!("checkpoint, item {id}"), message)),
            Err(_) => Err(gone(&id)),
        }
    }

    /// Queues `record`; `then` runs on the writer thread after its commit.
    /// Waits only while the queue is full. When the writer has stopped,
    /// `then` runs on a blocking thread with the error.
    pub(super) async fn write_then(&self, record: EncodedRecord, then: Then) {
        let id = record.id.clone();
        let sent = match &self.tx {
            Some(tx) => tx.send((record, Ack::Then(then))).await,
            None => Err(mpsc::error::SendError((record, Ack::Then(then)))),
        };
        if let Err(mpsc::error::SendError((_, ack))) = sent
            && let Ack::Then(then) = ack
        {
            let message = gone(&id).to_string();
            // `then` may block, so it must not run on this async thread.
            let _ = tokio::task::spawn_blocking(move || then(Err(message))).await;
        }
    }
}

fn run(store: &dyn CheckpointStore, mut rx: mpsc::Receiver<Job>, rows: usize, delay: Duration) {
    let mut records: Vec<EncodedRecord> = Vec::with_capacity(rows);
    let mut acks: Vec<Ack> = Vec::with_capacity(rows);
    while let Some((first, ack)) = rx.blocking_recv() {
        records.push(first);
        acks.push(ack);
        let until = Instant::now() + delay;
        while records.len() < rows {
            match rx.try_recv() {
                Ok((r, ack)) => {
                    records.push(r);
                    acks.push(ack);
                }
                Err(mpsc::error::TryRecvError::Empty) if Instant::now() < until => {
                    std::thread::sleep(Duration::from_micros(100).min(until - Instant::now()));
                }
                Err(_) => break,
            }
        }
        let outcome = store.write_batch(&records).map_err(|e| e.to_string());
        records.clear();
        for ack in acks.drain(..) {
            match ack {
                Ack::Wait(tx) => {
                    let _ = tx.send(outcome.clone());
                }
                Ack::Then(then) => then(outcome.clone()),
            }
        }
    }
}
