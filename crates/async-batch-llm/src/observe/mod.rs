//! Observability: events, observers, metrics, middleware.
//!
//! Observers see [`Event`]s and cannot change decisions. Events go through a
//! bounded queue to a dedicated thread, so a slow observer never stalls a
//! worker: when the queue is full, events are dropped and counted
//! ([`EventSink::dropped`]).

mod metrics;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::time::Duration;

pub use metrics::MetricsObserver;

use crate::error::ErrorCategory;
use crate::item::Item;
use crate::result::{ItemError, Termination};
use crate::usage::TokenUsage;

/// Something that happened in a run.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// A run began.
    BatchStarted,
    /// An item entered the pipeline.
    ItemStarted {
        /// Item id.
        id: String,
    },
    /// An attempt was admitted (cooldown, rate limits and slot passed).
    ItemAdmitted {
        /// Item id.
        id: String,
        /// Logical attempt number.
        attempt: u32,
        /// Time spent waiting for this admission.
        waited: Duration,
    },
    /// An item ended with an output (terminal).
    ItemCompleted {
        /// Item id.
        id: String,
        /// Billed usage over every try.
        usage: TokenUsage,
        /// Physical calls.
        tries: u32,
        /// Execution time over every try.
        execution: Duration,
    },
    /// An item ended without an output (terminal).
    ItemFailed {
        /// Item id.
        id: String,
        /// Why.
        category: ErrorCategory,
        /// Billed usage over every try.
        usage: TokenUsage,
        /// Physical calls.
        tries: u32,
    },
    /// An item's result was replayed from a checkpoint (terminal).
    ItemReplayed {
        /// Item id.
        id: String,
    },
    /// A call was answered with a rate limit.
    RateLimitHit {
        /// Item id.
        id: String,
        /// The provider's hint.
        retry_after: Option<Duration>,
    },
    /// A cooldown began in a scope.
    CooldownStarted {
        /// Scope name.
        scope: String,
        /// Its length.
        length: Duration,
    },
    /// The first attempt after a cooldown went ahead.
    CooldownEnded {
        /// Scope name.
        scope: String,
    },
    /// An attempt reserved a request and tokens.
    QuotaReserved {
        /// Scope name.
        scope: String,
        /// Estimated tokens.
        tokens: u64,
    },
    /// A reservation was settled.
    QuotaSettled {
        /// Scope name.
        scope: String,
        /// The estimate.
        estimate: u64,
        /// The usage (`None`: unknown, the estimate stands).
        used: Option<u64>,
    },
    /// The limits a scope runs under changed: a provider's headers
    /// reported them, a quota wall taught them, or a learned limit grew.
    LimitsChanged {
        /// Scope name.
        scope: String,
        /// What is in force now.
        limits: crate::limit::LimitsInForce,
    },
    /// A provider reported a lower limit than the one the user set.
    LimitBelowSetting {
        /// Scope name.
        scope: String,
        /// `rpm` or `tpm`.
        what: &'static str,
        /// The provider's.
        reported: f64,
        /// The user's.
        set: f64,
    },
    /// The calls in flight with a rate limit or overload showed it was the
    /// provider's quota: an adaptive window shrank (and limits may have
    /// been learned).
    QuotaWall {
        /// Scope name.
        scope: String,
        /// The window now.
        window: usize,
    },
    /// A run ended normally.
    BatchCompleted {
        /// How it ended.
        termination: Termination,
    },
    /// A run was stopped (deadline, budget, fail-fast, abort).
    BatchAborted {
        /// How it ended.
        termination: Termination,
    },
}

impl Event {
    /// The item the event is about, if any.
    pub fn item_id(&self) -> Option<&str> {
        match self {
            Event::ItemStarted { id }
            | Event::ItemAdmitted { id, .. }
            | Event::ItemCompleted { id, .. }
            | Event::ItemFailed { id, .. }
            | Event::ItemReplayed { id }
            | Event::RateLimitHit { id, .. } => Some(id),
            _ => None,
        }
    }

    /// True for the one event that ends an item.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Event::ItemCompleted { .. } | Event::ItemFailed { .. } | Event::ItemReplayed { .. }
        )
    }
}

/// Sees events. Runs on its own thread; it may block, but a slow observer
/// loses events rather than slowing the run.
pub trait Observer: Send + Sync {
    /// One event.
    fn on_event(&self, event: &Event);
}

/// Hooks around each item that may change it: `before` may rewrite an item
/// or filter it out (a filtered item is never accepted, so it has no
/// result), `after` may rewrite a successful output, `on_error` sees
/// failures.
pub trait Middleware<T>: Send + Sync {
    /// Before an item is processed; `None` filters it out.
    fn before(&self, item: Item) -> Option<Item> {
        Some(item)
    }
    /// After a success; returns the output to keep.
    fn after(&self, id: &str, output: T) -> T {
        let _ = id;
        output
    }
    /// After a failure.
    fn on_error(&self, id: &str, error: &ItemError) {
        let _ = (id, error);
    }
}

/// Delivers events to observers on a dedicated thread.
#[derive(Clone, Default)]
pub struct EventSink {
    tx: Option<SyncSender<Event>>,
    dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSink")
            .field("active", &self.tx.is_some())
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl EventSink {
    /// A sink for `observers` with a queue of `capacity` events; inactive
    /// (free) when there are none.
    pub fn new(observers: Vec<Arc<dyn Observer>>, capacity: usize) -> Self {
        if observers.is_empty() {
            return Self::default();
        }
        let (tx, rx) = sync_channel::<Event>(capacity.max(1));
        let spawned = std::thread::Builder::new()
            .name("abl-observers".into())
            .spawn(move || {
                for event in rx {
                    for o in &observers {
                        o.on_event(&event);
                    }
                }
            });
        match spawned {
            // The thread ends when the last sender (the run) is gone.
            Ok(_) => Self {
                tx: Some(tx),
                dropped: Arc::default(),
            },
            Err(e) => {
                tracing::error!("cannot start the observer thread: {e}; events are off");
                Self::default()
            }
        }
    }

    /// True when some observer listens.
    pub fn is_active(&self) -> bool {
        self.tx.is_some()
    }

    /// Sends an event without ever waiting.
    pub fn emit(&self, event: impl FnOnce() -> Event) {
        if let Some(tx) = &self.tx
            && let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = tx.try_send(event())
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Events lost because observers were too slow.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}
