//! Run `Strategy::prepare` once per run, however many workers ask at once.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

use crate::error::CallError;
use crate::strategy::Strategy;

type Outcome = Option<Result<(), CallError>>;

enum State {
    Idle,
    Running(watch::Receiver<Outcome>),
    Done,
}

/// Once-per-run preparation. Concurrent callers wait for the one running
/// `prepare` and share its outcome; after a failure the next caller tries
/// again; if the caller running it is cancelled, a waiter takes over.
pub(crate) struct PrepareOnce {
    done: AtomicBool,
    state: Mutex<State>,
}

struct ResetOnDrop<'a>(Option<&'a PrepareOnce>);

impl Drop for ResetOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.0 {
            *p.lock() = State::Idle;
        }
    }
}

impl PrepareOnce {
    pub(crate) fn new() -> Self {
        Self {
            done: AtomicBool::new(false),
            state: Mutex::new(State::Idle),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// True once `prepare` has succeeded.
    pub(crate) fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    async fn run<S: Strategy>(
        &self,
        strategy: &S,
        tx: watch::Sender<Outcome>,
    ) -> Result<(), CallError> {
        let mut reset = ResetOnDrop(Some(self));
        let outcome = strategy.prepare().await;
        reset.0 = None;
        if outcome.is_ok() {
            *self.lock() = State::Done;
            self.done.store(true, Ordering::Release);
        } else {
            *self.lock() = State::Idle;
        }
        let _ = tx.send(Some(outcome.clone()));
        outcome
    }

    pub(crate) async fn ensure<S: Strategy>(&self, strategy: &S) -> Result<(), CallError> {
        if self.is_done() {
            return Ok(());
        }
        loop {
            let waiting = {
                let mut st = self.lock();
                match &*st {
                    State::Done => return Ok(()),
                    State::Running(rx) => Err(rx.clone()),
                    State::Idle => {
                        let (tx, rx) = watch::channel(None);
                        *st = State::Running(rx);
                        Ok(tx)
                    }
                }
            };
            let mut rx = match waiting {
                // Our turn to run it.
                Ok(tx) => return self.run(strategy, tx).await,
                Err(rx) => rx,
            };
            let shared = match rx.wait_for(Option::is_some).await {
                Ok(v) => v.clone(),
                // The preparing caller was cancelled: try again ourselves.
                Err(_) => continue,
            };
            if let Some(outcome) = shared {
                return outcome;
            }
        }
    }
}
