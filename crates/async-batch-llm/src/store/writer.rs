//! One writer thread per checkpoint: records are batched into commits
//! (bounded by rows and by time) and each item waits for its commit.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{CheckpointStore, EncodedRecord};
use crate::error::Error;

type Job = (EncodedRecord, oneshot::Sender<Result<(), String>>);

pub(super) struct Writer {
    tx: Sender<Job>,
}

impl Writer {
    pub(super) fn start(
        store: Arc<dyn CheckpointStore>,
        rows: usize,
        delay: Duration,
    ) -> Result<Self, Error> {
        let (tx, rx) = channel::<Job>();
        std::thread::Builder::new()
            .name("abl-checkpoint".into())
            .spawn(move || run(&*store, &rx, rows.max(1), delay))
            .map_err(|e| Error::Config(format!("cannot start the checkpoint writer: {e}")))?;
        Ok(Self { tx })
    }

    pub(super) async fn write(&self, record: EncodedRecord) -> Result<(), Error> {
        let (ack, done) = oneshot::channel();
        let id = record.id.clone();
        let gone = || Error::Format {
            place: format!("checkpoint, item {id}"),
            message: "the checkpoint writer has stopped".into(),
        };
        self.tx.send((record, ack)).map_err(|_| gone())?;
        match done.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(Error::Format {
                place: format!("checkpoint, item {id}"),
                message,
            }),
            Err(_) => Err(gone()),
        }
    }
}

fn run(store: &dyn CheckpointStore, rx: &Receiver<Job>, rows: usize, delay: Duration) {
    let mut records: Vec<EncodedRecord> = Vec::with_capacity(rows);
    let mut acks: Vec<oneshot::Sender<Result<(), String>>> = Vec::with_capacity(rows);
    while let Ok((first, ack)) = rx.recv() {
        records.push(first);
        acks.push(ack);
        let until = Instant::now() + delay;
        while records.len() < rows {
            let next = if delay.is_zero() {
                rx.try_recv().ok()
            } else {
                rx.recv_timeout(until.saturating_duration_since(Instant::now()))
                    .ok()
            };
            let Some((r, ack)) = next else { break };
            records.push(r);
            acks.push(ack);
        }
        let outcome = store.write_batch(&records).map_err(|e| e.to_string());
        records.clear();
        for ack in acks.drain(..) {
            let _ = ack.send(outcome.clone());
        }
    }
}
