//! One quota shared by many processes: the scope's cooldown and its
//! RPM/TPM window kept in a store every process reaches ([`SharedLimits`];
//! Redis in [`RedisLimits`](super::RedisLimits)), on top of each
//! process's own limits.
//!
//! Each attempt, after the local cooldown and admission, asks the store
//! for a place ([`SharedScope::reserve`]): the store answers *go* (and
//! counts one request and the estimated tokens in the shared window),
//! *wait this long* (the window is full), or *cooldown this long* (some
//! process got a 429). After the call the reservation is settled with the
//! real usage, or given back when no call was made ([`SharedTicket`]).
//! A 429 any process gets extends the shared cooldown, so all of them
//! pause at once.
//!
//! A store that lost its state (Redis restarted without persistence) is
//! seen by its new epoch; each process then puts back what it admitted in
//! the last window, so the window is whole again before anyone sends more.
//!
//! When the store cannot be reached, admission in the scope pauses until
//! it can ([`SharedScope::is_reachable`] says so to the progress line): a
//! process never falls back to sending at its full local speed, which
//! would put N processes at N times the quota. [`SharedFallback::LocalShare`]
//! chooses instead to go on at a share of the limits (`limit / N` for N
//! processes expected) while the store is away.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::time::Instant;

use super::admission::{Admission, RateLimits, Reservation};

/// What a shared store answers to a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// Go ahead: the reservation's number, to settle it.
    Admitted(u64),
    /// The shared window is full: ask again after this long.
    Wait(Duration),
    /// A process got a 429: the scope's cooldown ends after this long.
    Cooldown(Duration),
}

/// A store's answer and the epoch of its state (a new epoch: the state
/// was lost and began again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reserved {
    /// The answer.
    pub grant: Grant,
    /// The epoch of the store's state for this scope.
    pub epoch: u64,
    /// Adaptive-concurrency decreases any process made in this epoch.
    pub decreases: u64,
}

/// Why an attempt must wait before it asks the shared limits again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedWait {
    /// The window is full, or the store is away: this long.
    Window(Duration),
    /// A process got a 429: the scope's cooldown ends after this long.
    Cooldown(Duration),
}

/// A failure to reach or use the shared store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("shared limits ({backend}): {message}")]
pub struct SharedError {
    /// The store (`redis`).
    pub backend: &'static str,
    /// What went wrong (never a password: URLs are shown without one).
    pub message: String,
}

/// The limits a reservation is checked against. `None` uses what the
/// store holds from other processes (a limit one process learned from the
/// provider's headers reaches the others this way).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SharedQuota {
    /// Requests per minute.
    pub rpm: Option<f64>,
    /// Tokens per minute.
    pub tpm: Option<u64>,
    /// The window the limits hold over: a minute, or the shorter one a
    /// provider resets within (the limits are scaled to it). `None` uses
    /// what the store holds from other processes, else a minute.
    pub span: Option<Duration>,
    /// Added to the window, as in [`RateLimits::margin`](super::RateLimits).
    pub margin: Duration,
}

/// A store of quota scopes shared by processes. Every method is one atomic
/// step in the store, timed by the store's clock (never the hosts').
pub trait SharedLimits: Send + Sync + std::fmt::Debug + 'static {
    /// The store's name, for messages (`redis`).
    fn backend(&self) -> &'static str;

    /// Asks for one request and `tokens` in `scope`'s window.
    fn reserve<'a>(
        &'a self,
        scope: &'a str,
        quota: SharedQuota,
        tokens: u64,
    ) -> BoxFuture<'a, Result<Reserved, SharedError>>;

    /// Puts back admissions made before the store lost its state: each is
    /// (how long ago, tokens), and leaves the window as if never lost.
    fn seed<'a>(
        &'a self,
        scope: &'a str,
        quota: SharedQuota,
        admitted: &'a [(Duration, u64)],
    ) -> BoxFuture<'a, Result<(), SharedError>>;

    /// Settles a reservation, named by (epoch, number): its tokens become
    /// `used` (unknown usage keeps the estimate). A reservation of an
    /// earlier epoch is left alone.
    fn settle<'a>(
        &'a self,
        scope: &'a str,
        ticket: (u64, u64),
        used: Option<u64>,
    ) -> BoxFuture<'a, Result<(), SharedError>>;

    /// Gives a reservation back, named by (epoch, number): no call was made.
    fn cancel<'a>(
        &'a self,
        scope: &'a str,
        ticket: (u64, u64),
    ) -> BoxFuture<'a, Result<(), SharedError>>;

    /// Counts one adaptive-concurrency decrease (a process judged a signal
    /// to be the provider's quota wall), for the others to follow.
    fn note_decrease<'a>(&'a self, scope: &'a str) -> BoxFuture<'a, Result<(), SharedError>>;

    /// Makes the scope's cooldown last at least `length` from now (it is
    /// only ever extended).
    fn extend_cooldown<'a>(
        &'a self,
        scope: &'a str,
        length: Duration,
    ) -> BoxFuture<'a, Result<(), SharedError>>;
}

/// A shared store as a scope setting: compared by identity, so two runs
/// sharing a registry agree only when they use the same store object.
#[derive(Debug, Clone)]
pub struct SharedLimitsHandle(pub Arc<dyn SharedLimits>);

impl PartialEq for SharedLimitsHandle {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// A scope's view of its shared store.
#[derive(Debug)]
pub struct SharedScope {
    store: Arc<dyn SharedLimits>,
    key: String,
    reachable: AtomicBool,
    outages: AtomicU64,
    /// The store's epoch last seen (0: none yet).
    epoch: AtomicU64,
    /// Adaptive decreases seen in the store (this process's included), and
    /// those of other processes not yet followed.
    decreases_seen: AtomicU64,
    decreases_to_follow: AtomicU64,
    /// This process's admissions of the last minute: (when, id, tokens).
    mine: Mutex<VecDeque<(Instant, u64, u64)>>,
    fallback: SharedFallback,
    /// While the store is away: when to ask it again, and the local share
    /// of the limits (with [`SharedFallback::LocalShare`]).
    away: Mutex<Away>,
}

#[derive(Debug, Default)]
struct Away {
    probe_after: Option<Instant>,
    share: Option<Arc<Admission>>,
}

/// How long this process remembers its admissions, for a store that lost
/// them: the longest window and a margin.
const REMEMBER: Duration = Duration::from_secs(62);

/// How long a reservation waits between tries while the store is away.
pub const RETRY_UNREACHABLE: Duration = Duration::from_millis(500);

/// What admission does while the shared store cannot be reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SharedFallback {
    /// Wait until it is back (the default): never over the quota.
    #[default]
    Pause,
    /// Go on within this process's share of the limits: the limits divided
    /// by this many processes (at least 1).
    LocalShare(u32),
}

impl SharedScope {
    /// The shared side of scope `name`, pausing while the store is away.
    pub fn new(store: Arc<dyn SharedLimits>, name: &str) -> Self {
        Self::with_fallback(store, name, SharedFallback::Pause)
    }

    /// The shared side of scope `name`, doing `fallback` while the store
    /// is away.
    pub fn with_fallback(
        store: Arc<dyn SharedLimits>,
        name: &str,
        fallback: SharedFallback,
    ) -> Self {
        Self {
            store,
            key: name.to_owned(),
            reachable: AtomicBool::new(true),
            outages: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            decreases_seen: AtomicU64::new(0),
            decreases_to_follow: AtomicU64::new(0),
            mine: Mutex::new(VecDeque::new()),
            fallback,
            away: Mutex::new(Away::default()),
        }
    }

    /// The store's name.
    pub fn backend(&self) -> &'static str {
        self.store.backend()
    }

    /// Whether the last exchange with the store succeeded.
    pub fn is_reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    /// How many times the store went away.
    pub fn outages(&self) -> u64 {
        self.outages.load(Ordering::Relaxed)
    }

    fn mark(&self, ok: bool) {
        let was = self.reachable.swap(ok, Ordering::Relaxed);
        if was && !ok {
            self.outages.fetch_add(1, Ordering::Relaxed);
        }
        if was != ok {
            if ok {
                tracing::warn!(backend = self.backend(), "shared limits reachable again");
            } else {
                tracing::warn!(
                    backend = self.backend(),
                    "shared limits unreachable: admission in this scope pauses until they are back"
                );
            }
        }
    }

    fn away(&self) -> std::sync::MutexGuard<'_, Away> {
        self.away
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A place for one attempt: a ticket, or how long to wait and whether
    /// that wait is a cooldown. While the store is away it is asked again
    /// every [`RETRY_UNREACHABLE`] (attempts in between do not wait for
    /// its timeout), and admission pauses or, with
    /// [`SharedFallback::LocalShare`], goes on within the local share.
    pub async fn admit(
        self: &Arc<Self>,
        quota: SharedQuota,
        tokens: u64,
    ) -> Result<SharedTicket, SharedWait> {
        let probe = self.away().probe_after.is_none_or(|t| Instant::now() >= t);
        if probe {
            match self.reserve(quota, tokens).await {
                Ok(Grant::Admitted(id)) => return Ok(self.ticket(id)),
                Ok(Grant::Wait(d)) => return Err(SharedWait::Window(d)),
                Ok(Grant::Cooldown(d)) => return Err(SharedWait::Cooldown(d)),
                Err(_) => {
                    self.away().probe_after = Some(Instant::now() + RETRY_UNREACHABLE);
                }
            }
        }
        // No share without a limit to divide: pause then too.
        let SharedFallback::LocalShare(n) = self.fallback else {
            return Err(SharedWait::Window(RETRY_UNREACHABLE));
        };
        if quota.rpm.is_none() && quota.tpm.is_none() {
            return Err(SharedWait::Window(RETRY_UNREACHABLE));
        }
        let share = Arc::clone(self.away().share.get_or_insert_with(|| {
            // This process's share, over the provider's window, counting
            // what it sent in the last one.
            let n = f64::from(n.max(1));
            let share = Admission::new(RateLimits {
                margin: quota.margin,
                ..RateLimits::default()
            });
            let sent: Vec<(Instant, u64, u64)> = self
                .remembered(Instant::now())
                .into_iter()
                .map(|(at, _, tokens)| (at, 1, tokens))
                .collect();
            share.set_limits(
                quota.rpm.map(|r| (r / n).max(crate::engine::MIN_RPM)),
                quota.tpm.map(|t| ((t as f64 / n) as u64).max(1)),
                quota.span.unwrap_or(Duration::from_secs(60)),
                &sent,
            );
            Arc::new(share)
        }));
        match share
            .reserve(tokens.min(share.tpm().unwrap_or(u64::MAX)))
            .await
        {
            Ok(r) => Ok(SharedTicket {
                scope: Arc::clone(self),
                held: Held::Local(Some(r), share),
                done: false,
            }),
            Err(_) => Err(SharedWait::Window(RETRY_UNREACHABLE)),
        }
    }

    /// One try at a reservation in the store. `Err` when it cannot be
    /// reached.
    pub async fn reserve(&self, quota: SharedQuota, tokens: u64) -> Result<Grant, SharedError> {
        let r = self.store.reserve(&self.key, quota, tokens).await;
        self.mark(r.is_ok());
        if r.is_ok() {
            *self.away() = Away::default();
        }
        let Reserved {
            grant,
            epoch,
            decreases,
        } = r?;
        let before = self.epoch.swap(epoch, Ordering::Relaxed);
        let now = Instant::now();
        if before == epoch {
            let seen = self.decreases_seen.fetch_max(decreases, Ordering::Relaxed);
            if decreases > seen {
                self.decreases_to_follow
                    .fetch_add(decreases - seen, Ordering::Relaxed);
            }
        } else {
            // A new state (or the first): its count is where we start.
            self.decreases_seen.store(decreases, Ordering::Relaxed);
        }
        if before != 0 && before != epoch {
            let admitted: Vec<(Duration, u64)> = self
                .remembered(now)
                .iter()
                .map(|(at, _, t)| (now.saturating_duration_since(*at), *t))
                .collect();
            tracing::warn!(
                backend = self.backend(),
                admitted = admitted.len(),
                "the shared store lost its state: putting back this process's admissions of the last window"
            );
            let r = self.store.seed(&self.key, quota, &admitted).await;
            self.mark(r.is_ok());
        }
        if let Grant::Admitted(id) = grant {
            self.remember(now, id, tokens);
        }
        Ok(grant)
    }

    fn mine(&self) -> std::sync::MutexGuard<'_, VecDeque<(Instant, u64, u64)>> {
        self.mine
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn remember(&self, now: Instant, id: u64, tokens: u64) {
        let mut m = self.mine();
        while m
            .front()
            .is_some_and(|(at, _, _)| now.saturating_duration_since(*at) > REMEMBER)
        {
            m.pop_front();
        }
        m.push_back((now, id, tokens));
    }

    /// This process's admissions of the last window.
    fn remembered(&self, now: Instant) -> Vec<(Instant, u64, u64)> {
        self.mine()
            .iter()
            .filter(|(at, _, _)| now.saturating_duration_since(*at) <= REMEMBER)
            .copied()
            .collect()
    }

    /// Settled: what this process remembers of it has the tokens used.
    fn settled(&self, id: u64, used: Option<u64>) {
        let mut m = self.mine();
        if let (Some(i), Some(used)) = (m.iter().rposition(|(_, x, _)| *x == id), used) {
            m[i].2 = used;
        }
    }

    /// Given back: no call was made, nothing to remember.
    fn forget(&self, id: u64) {
        let mut m = self.mine();
        if let Some(i) = m.iter().rposition(|(_, x, _)| *x == id) {
            m.remove(i);
        }
    }

    /// A ticket for granted reservation `id`, settled or given back on
    /// every path.
    pub fn ticket(self: &Arc<Self>, id: u64) -> SharedTicket {
        SharedTicket {
            scope: Arc::clone(self),
            held: Held::Store(self.epoch.load(Ordering::Relaxed), id),
            done: false,
        }
    }

    /// This process judged a quota wall and decreased its adaptive window:
    /// the others follow (in the background).
    pub fn note_decrease(self: &Arc<Self>) {
        self.decreases_seen.fetch_add(1, Ordering::Relaxed);
        let me = Arc::clone(self);
        spawn(async move {
            let r = me.store.note_decrease(&me.key).await;
            me.mark(r.is_ok());
        });
    }

    /// Decreases other processes made that this one has not followed yet
    /// (and now will).
    pub fn take_decreases_to_follow(&self) -> u64 {
        self.decreases_to_follow.swap(0, Ordering::Relaxed)
    }

    /// Extends the shared cooldown, in the background (the caller is an
    /// attempt that must not wait for the store).
    pub fn extend_cooldown(self: &Arc<Self>, length: Duration) {
        let me = Arc::clone(self);
        spawn(async move {
            let r = me.store.extend_cooldown(&me.key, length).await;
            me.mark(r.is_ok());
        });
    }
}

/// Runs `f` on the current runtime, if there is one (a ticket dropped
/// outside a runtime has nobody to tell; its reservation leaves the
/// window by age).
fn spawn(f: impl std::future::Future<Output = ()> + Send + 'static) {
    if let Ok(h) = tokio::runtime::Handle::try_current() {
        h.spawn(f);
    }
}

/// A reservation granted by the shared store. [`settle`](Self::settle)
/// it after the call; dropped unsettled, it is given back (no call was
/// made). Both happen in the background.
#[derive(Debug)]
#[must_use = "settle the reservation after the call"]
pub struct SharedTicket {
    scope: Arc<SharedScope>,
    held: Held,
    done: bool,
}

/// Where a ticket's reservation is.
#[derive(Debug)]
enum Held {
    /// In the store: (epoch, number).
    Store(u64, u64),
    /// In the local share, while the store was away.
    Local(Option<Reservation>, Arc<Admission>),
}

impl SharedTicket {
    /// The call was made: its tokens are `used`.
    pub fn settle(mut self, used: Option<u64>) {
        self.done = true;
        match &mut self.held {
            Held::Store(epoch, id) => {
                let (scope, ticket) = (Arc::clone(&self.scope), (*epoch, *id));
                scope.settled(ticket.1, used);
                spawn(async move {
                    let r = scope.store.settle(&scope.key, ticket, used).await;
                    scope.mark(r.is_ok());
                });
            }
            Held::Local(r, share) => {
                if let Some(r) = r.take() {
                    share.settle(r, used);
                }
            }
        }
    }
}

impl Drop for SharedTicket {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        match &mut self.held {
            Held::Store(epoch, id) => {
                let (scope, ticket) = (Arc::clone(&self.scope), (*epoch, *id));
                scope.forget(ticket.1);
                spawn(async move {
                    let r = scope.store.cancel(&scope.key, ticket).await;
                    scope.mark(r.is_ok());
                });
            }
            Held::Local(r, share) => {
                if let Some(r) = r.take() {
                    share.cancel(r);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store that is never there, counting how often it was asked.
    #[derive(Debug, Default)]
    struct Gone {
        asked: AtomicU64,
    }

    fn gone() -> SharedError {
        SharedError {
            backend: "test",
            message: "connection refused".into(),
        }
    }

    impl SharedLimits for Gone {
        fn backend(&self) -> &'static str {
            "test"
        }
        fn reserve<'a>(
            &'a self,
            _: &'a str,
            _: SharedQuota,
            _: u64,
        ) -> BoxFuture<'a, Result<Reserved, SharedError>> {
            self.asked.fetch_add(1, Ordering::Relaxed);
            Box::pin(async { Err(gone()) })
        }
        fn seed<'a>(
            &'a self,
            _: &'a str,
            _: SharedQuota,
            _: &'a [(Duration, u64)],
        ) -> BoxFuture<'a, Result<(), SharedError>> {
            Box::pin(async { Err(gone()) })
        }
        fn settle<'a>(
            &'a self,
            _: &'a str,
            _: (u64, u64),
            _: Option<u64>,
        ) -> BoxFuture<'a, Result<(), SharedError>> {
            Box::pin(async { Err(gone()) })
        }
        fn cancel<'a>(
            &'a self,
            _: &'a str,
            _: (u64, u64),
        ) -> BoxFuture<'a, Result<(), SharedError>> {
            Box::pin(async { Err(gone()) })
        }
        fn extend_cooldown<'a>(
            &'a self,
            _: &'a str,
            _: Duration,
        ) -> BoxFuture<'a, Result<(), SharedError>> {
            Box::pin(async { Err(gone()) })
        }
        fn note_decrease<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<(), SharedError>> {
            Box::pin(async { Err(gone()) })
        }
    }

    fn quota() -> SharedQuota {
        SharedQuota {
            rpm: Some(4.0),
            tpm: None,
            span: None,
            margin: Duration::ZERO,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_store_away_pauses_admission_and_is_asked_again_only_now_and_then() {
        let store = Arc::new(Gone::default());
        let scope = Arc::new(SharedScope::new(store.clone(), "s"));
        for _ in 0..10 {
            assert_eq!(
                scope.admit(quota(), 1).await.err(),
                Some(SharedWait::Window(RETRY_UNREACHABLE))
            );
        }
        assert_eq!(
            store.asked.load(Ordering::Relaxed),
            1,
            "asked on every attempt"
        );
        assert!(!scope.is_reachable());
        assert_eq!(scope.outages(), 1);
        tokio::time::advance(RETRY_UNREACHABLE).await;
        assert!(scope.admit(quota(), 1).await.is_err());
        assert_eq!(store.asked.load(Ordering::Relaxed), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_local_share_goes_on_at_its_part_of_the_limits() {
        let store = Arc::new(Gone::default());
        let scope = Arc::new(SharedScope::with_fallback(
            store,
            "s",
            SharedFallback::LocalShare(2),
        ));
        let start = Instant::now();
        // 4 a minute shared by 2: this process takes 2 a minute.
        let a = scope.admit(quota(), 1).await.unwrap();
        let b = scope.admit(quota(), 1).await.unwrap();
        a.settle(Some(1));
        b.settle(Some(1));
        assert_eq!(start.elapsed(), Duration::ZERO);
        let c = scope.admit(quota(), 1).await.unwrap();
        assert!(
            start.elapsed() >= Duration::from_secs(60),
            "{:?}",
            start.elapsed()
        );
        drop(c);
        // Without a limit to divide, it pauses.
        let unknown = SharedQuota {
            rpm: None,
            ..quota()
        };
        let fresh = Arc::new(SharedScope::with_fallback(
            Arc::new(Gone::default()),
            "t",
            SharedFallback::LocalShare(2),
        ));
        assert!(fresh.admit(unknown, 1).await.is_err());
    }
}
