//! The one per-item pipeline every host shares (SPEC.md §4):
//!
//! wait for the scope's cooldown → admission → concurrency slot → re-check
//! the cooldown (preempted: give back, requeue, no budget used) → execute
//! under the attempt timeout → account usage → classify → done, retry or fail.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::FutureExt as _;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use super::admitted::Admitted;
use super::config::{BatchConfig, Budget, RetryPolicy, StopMode};
use super::prepare::PrepareOnce;
use crate::error::{CallError, ErrorCategory, ErrorClassifier, RetryDecision};
use crate::item::{Item, Prompt};
use crate::limit::{
    Attempt, AttemptEnd, CooldownOutcome, Outcome, Scope, ScopeChange, SharedScope, SharedTicket,
    SharedWait, TokenEstimator, Verdict,
};
use crate::observe::{Event, EventSink};
use crate::result::{ItemError, ItemResult, ItemTiming, Termination, TerminationReason, TryTiming};
use crate::strategy::{RetryState, Strategy};
use crate::time::{WallClock, after as micros_after, micros};
use crate::usage::TokenUsage;

/// Stop signals of a run: `stopping` ends admission and every wait;
/// `cancel` also ends calls in flight.
#[derive(Debug, Default)]
pub(crate) struct Stop {
    pub(crate) stopping: CancellationToken,
    pub(crate) cancel: CancellationToken,
    reason: OnceLock<Termination>,
}

impl Stop {
    /// Stops the run; the first reason wins.
    pub(crate) fn trigger(&self, termination: Termination, cancel_in_flight: bool) {
        let _ = self.reason.set(termination);
        self.stopping.cancel();
        if cancel_in_flight {
            self.cancel.cancel();
        }
    }

    pub(crate) fn termination(&self) -> Option<Termination> {
        self.reason.get().cloned()
    }

    /// The error of an item the stop prevented from finishing. A call in
    /// flight that was cancelled is `aborted` (a deadline keeps its own
    /// category).
    pub(crate) fn item_error(&self, last: Option<ItemError>, cancelled: bool) -> ItemError {
        let reason = self
            .reason
            .get()
            .map_or(TerminationReason::Aborted, |t| t.reason);
        let category = if cancelled && reason != TerminationReason::BatchDeadline {
            ErrorCategory::Aborted
        } else {
            reason.item_category()
        };
        ItemError {
            category,
            message: format!("run stopped ({reason}) before this item finished"),
            last_error: last.map(Box::new),
        }
    }
}

/// What every item of a run shares.
pub(crate) struct Run<S: Strategy> {
    pub(crate) strategy: Arc<S>,
    pub(crate) scope: Arc<Scope>,
    pub(crate) prepare: PrepareOnce,
    pub(crate) stop: Stop,
    retry: RetryPolicy,
    concurrency: usize,
    attempt_timeout: Duration,
    item_deadline: Option<Duration>,
    classifier: Arc<dyn ErrorClassifier>,
    dry_run_mode: bool,
    estimator: Option<Arc<dyn TokenEstimator>>,
    budget: Budget,
    spent: std::sync::Mutex<TokenUsage>,
    fail_fast: Vec<ErrorCategory>,
    stop_mode: StopMode,
    pub(crate) events: EventSink,
    /// Stamps results with wall times.
    clock: WallClock,
}

impl<S: Strategy> Run<S> {
    pub(crate) fn new(strategy: Arc<S>, config: &BatchConfig) -> Result<Self, crate::error::Error> {
        let name = config.scope_name(&*strategy);
        let scope = config.scopes.scope(&name, &config.scope_settings())?;
        Ok(Self {
            strategy,
            scope,
            prepare: PrepareOnce::new(),
            stop: Stop::default(),
            retry: config.retry,
            concurrency: config.concurrency,
            attempt_timeout: config.attempt_timeout,
            item_deadline: config.item_deadline,
            classifier: Arc::clone(&config.classifier),
            dry_run_mode: config.dry_run,
            estimator: config.estimator.clone(),
            budget: config.budget.clone(),
            spent: std::sync::Mutex::new(TokenUsage::default()),
            fail_fast: config.fail_fast.clone(),
            stop_mode: config.stop_mode,
            events: EventSink::new(config.observers.clone(), config.event_queue),
            clock: WallClock::start(),
        })
    }

    /// Reports an item's end to observers: once per item, after its
    /// checkpoint when there is one.
    pub(crate) fn emit_terminal(&self, r: &ItemResult<S::Output>) {
        if !self.events.is_active() {
            return;
        }
        let (id, usage, tries) = (r.id.clone(), r.usage, r.tries);
        self.events.emit(|| match (&r.outcome, r.replayed) {
            (_, true) => Event::ItemReplayed { id },
            (Ok(_), false) => Event::ItemCompleted {
                id,
                usage,
                tries,
                execution: r.timing.execution,
            },
            (Err(e), false) => Event::ItemFailed {
                id,
                category: e.category,
                usage,
                tries,
            },
        });
    }

    /// Counts billed usage against the budget; stops the run when spent.
    fn charge(&self, usage: TokenUsage, id: &str) {
        let b = &self.budget;
        if b.max_tokens.is_none() && b.max_cost.is_none() {
            return;
        }
        let total = {
            let mut spent = self
                .spent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *spent += usage;
            *spent
        };
        let why = if let Some(max) = b.max_tokens.filter(|m| total.total >= *m) {
            Some(format!(
                "token budget of {max} reached ({} used)",
                total.total
            ))
        } else if let (Some(max), Some(p)) = (b.max_cost, b.prices) {
            let cost = p.cost(&total);
            (cost >= max).then(|| format!("cost budget of {max} reached ({cost:.4} spent)"))
        } else {
            None
        };
        if let Some(message) = why {
            self.stop.trigger(
                Termination {
                    reason: TerminationReason::BudgetExceeded,
                    item_id: Some(id.to_owned()),
                    category: None,
                    message: Some(message),
                },
                self.stop_mode == StopMode::Cancel,
            );
        }
    }

    /// Runs `cleanup`, containing a panic in it.
    pub(crate) async fn cleanup(&self) {
        if AssertUnwindSafe(self.strategy.cleanup())
            .catch_unwind()
            .await
            .is_err()
        {
            tracing::error!("Strategy::cleanup panicked");
        }
    }

    /// The result for an item the run never started.
    pub(crate) fn unstarted(&self, item: Item, index: u64) -> ItemResult<S::Output> {
        finish(
            item,
            index,
            Err(self.stop.item_error(None, false)),
            Acct::default(),
            Duration::ZERO,
        )
    }
}

#[derive(Default)]
struct Acct {
    usage: TokenUsage,
    attempts: u32,
    tries: u32,
    timing: ItemTiming,
    last_error: Option<ItemError>,
}

enum Fail {
    Item(ItemError),
    /// The run stopped before or between attempts.
    Stopped,
    /// A call in flight was cancelled.
    Cancelled,
}

fn to_item_error(e: &CallError) -> ItemError {
    ItemError::new(e.category(), e.message())
}

fn with_last(category: ErrorCategory, message: String, last: Option<&ItemError>) -> Fail {
    Fail::Item(ItemError {
        category,
        message,
        last_error: last.cloned().map(Box::new),
    })
}

fn finish<T>(
    item: Item,
    index: u64,
    outcome: Result<T, ItemError>,
    acct: Acct,
    total: Duration,
) -> ItemResult<T> {
    let mut timing = acct.timing;
    timing.total = micros(total);
    ItemResult {
        id: item.id,
        index,
        outcome,
        usage: acct.usage,
        attempts: acct.attempts,
        tries: acct.tries,
        timing,
        context: item.context,
        replayed: false,
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

/// Processes one item to its one terminal result. `deadline` tightens the
/// configured item deadline (pool submit timeouts, one-off calls).
pub(crate) async fn process_item<S: Strategy>(
    run: &Run<S>,
    item: Item,
    index: u64,
    deadline: Option<Instant>,
) -> ItemResult<S::Output> {
    let start = Instant::now();
    let deadline = match (
        run.item_deadline.and_then(|d| micros_after(start, d)),
        deadline,
    ) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let mut acct = Acct::default();
    acct.timing.started_at = Some(run.clock.at(start));
    let mut state = RetryState::new();
    run.events.emit(|| Event::ItemStarted {
        id: item.id.clone(),
    });
    let span = tracing::debug_span!("item", id = %item.id, index);
    let outcome = {
        let attempts = AssertUnwindSafe(tracing::Instrument::instrument(
            attempts(run, &item.id, &item.prompt, deadline, &mut acct, &mut state),
            span,
        ))
        .catch_unwind();
        tokio::select! {
            biased;
            () = run.stop.cancel.cancelled() => Err(Fail::Cancelled),
            r = attempts => r.unwrap_or_else(|p| Err(Fail::Item(ItemError::new(
                ErrorCategory::LogicError,
                format!("strategy panicked: {}", panic_message(&*p)),
            )))),
        }
    };
    let outcome = outcome.map_err(|f| match f {
        Fail::Item(e) => e,
        Fail::Stopped => run.stop.item_error(acct.last_error.take(), false),
        Fail::Cancelled => run.stop.item_error(acct.last_error.take(), true),
    });
    if let Err(e) = &outcome
        && run.fail_fast.contains(&e.category)
    {
        run.stop.trigger(
            Termination {
                reason: TerminationReason::FailFast,
                item_id: Some(item.id.clone()),
                category: Some(e.category),
                message: Some(format!(
                    "item {} failed with {}: {}",
                    item.id, e.category, e.message
                )),
            },
            run.stop_mode == StopMode::Cancel,
        );
    }
    finish(item, index, outcome, acct, start.elapsed())
}

/// Sleeps until `t`, ending early if the run stops.
async fn sleep_or_stop(t: Instant, stop: &Stop) -> Result<(), Fail> {
    tokio::select! {
        biased;
        () = stop.stopping.cancelled() => Err(Fail::Stopped),
        () = sleep_until(t) => Ok(()),
    }
}

fn deadline_fail(what: &str, acct: &Acct) -> Fail {
    with_last(
        ErrorCategory::ItemDeadline,
        format!("item deadline would pass during {what}"),
        acct.last_error.as_ref(),
    )
}

/// Waits out the scope's cooldown, and the item's own rate-limit wait
/// (`not_before`). Returns the time waited.
async fn wait_cooldown(
    scope: &Scope,
    stop: &Stop,
    not_before: Option<Instant>,
    deadline: Option<Instant>,
    acct: &Acct,
) -> Result<Duration, Fail> {
    let t0 = Instant::now();
    loop {
        let shortened = scope.cooldown().shortened();
        let now = Instant::now();
        let scope_until = scope.cooldown().active_until(now);
        let target = match (scope_until, not_before.filter(|t| *t > now)) {
            (Some(a), Some(b)) => a.max(b),
            (a, b) => match a.or(b) {
                Some(t) => t,
                None => break,
            },
        };
        if deadline.is_some_and(|d| target > d) {
            return Err(deadline_fail("a rate-limit cooldown", acct));
        }
        tokio::select! {
            biased;
            () = stop.stopping.cancelled() => return Err(Fail::Stopped),
            () = sleep_until(target) => {}
            () = shortened => {}
        }
    }
    Ok(t0.elapsed())
}

/// Admission of one attempt: one request and the estimated tokens reserved
/// in the scope's RPM/TPM admission, then in the limits shared with other
/// processes (when the scope has them), then a concurrency slot, in a guard
/// that gives them back on every path. `Stopped` if the run stops while
/// waiting. Also returns the time spent in a shared cooldown (another
/// process's 429).
async fn admit<'r, S: Strategy>(
    run: &'r Run<S>,
    prompt: &Prompt,
    part_tokens: u64,
    deadline: Option<Instant>,
    acct: &Acct,
) -> Result<(Attempt<'r>, Admitted<'r>, Duration), Fail> {
    let mut attempt = tokio::select! {
        biased;
        () = run.stop.stopping.cancelled() => return Err(Fail::Stopped),
        a = run.scope.begin_attempt(run.concurrency) => a,
    };
    let from_flag = run.scope.settings().limits.tpm.is_some();
    let (mut estimated, mut reserved) = (0, 0);
    // A dry run calls nothing: the limits do not pace it (its summary says
    // how long they would take).
    let admission = run.scope.admission().filter(|_| !run.dry_run_mode);
    let reservation = match admission {
        None => None,
        Some(adm) => {
            let refuse = |message: String| {
                Fail::Item(ItemError::new(ErrorCategory::AdmissionError, message))
            };
            let estimate = match (adm.tpm(), &run.estimator) {
                (None, _) => 0,
                // A limit the provider reported or a wall taught: the
                // settlement turns the real usage into debt.
                (Some(_), None) if !from_flag => 0,
                (Some(_), None) => {
                    return Err(refuse(
                        "tokens per minute are limited but no token estimator is set".into(),
                    ));
                }
                (Some(tpm), Some(e)) => {
                    let estimate = e
                        .estimate(prompt)
                        .map_err(|m| {
                            refuse(format!("cannot estimate the tokens of this item: {m}"))
                        })?
                        .saturating_add(part_tokens);
                    estimated = estimate;
                    // Only the user's limit refuses an estimate larger than
                    // itself, and is reserved the estimate whole; a reported
                    // or learned one is not that sure, and its window is
                    // filled by what calls used: reserved at what calls
                    // typically use of their estimates.
                    if from_flag {
                        estimate
                    } else {
                        adm.typical(estimate).min(tpm)
                    }
                }
            };
            reserved = estimate;
            Some(tokio::select! {
                biased;
                () = run.stop.stopping.cancelled() => return Err(Fail::Stopped),
                r = adm.reserve(estimate) => r.map_err(|e| refuse(e.to_string()))?,
            })
        }
    };
    let reservation_id = reservation.as_ref().map(crate::limit::Reservation::id);
    let admitted = Admitted::new(&run.scope, &run.events, reservation, estimated);
    let (ticket, shared_cooldown) = match run.scope.shared().filter(|_| !run.dry_run_mode) {
        None => (None, Duration::ZERO),
        Some(shared) => {
            let (t, waited) = shared_admit(run, shared, reserved, deadline, acct).await?;
            (Some(t), waited)
        }
    };
    if let Some(id) = reservation_id {
        attempt.admitted_with(id);
    }
    let admitted = admitted.with_shared(ticket);
    let slot = tokio::select! {
        biased;
        () = run.stop.stopping.cancelled() => return Err(Fail::Stopped),
        s = run.scope.acquire_slot() => s,
    };
    Ok((attempt, admitted.with_slot(slot), shared_cooldown))
}

/// [`admit`], its waits added to the item's timing: the time in a shared
/// cooldown counts as cooldown (with the local `cooldown_wait` before it),
/// the rest as admission. Returns both.
async fn admit_timed<'r, S: Strategy>(
    run: &'r Run<S>,
    ask: Ask<'_>,
    deadline: Option<Instant>,
    acct: &mut Acct,
    cooldown_wait: Duration,
) -> Result<(Attempt<'r>, Admitted<'r>, Duration, Duration), Fail> {
    let t1 = Instant::now();
    let (place, admitted, shared_cooldown) =
        admit(run, ask.prompt, ask.part_tokens, deadline, acct).await?;
    let shared_cooldown = micros(shared_cooldown);
    let admission_wait = micros(t1.elapsed().saturating_sub(shared_cooldown));
    acct.timing.admission_wait += admission_wait;
    acct.timing.cooldown_wait += shared_cooldown;
    Ok((
        place,
        admitted,
        cooldown_wait + shared_cooldown,
        admission_wait,
    ))
}

/// A place in the limits shared with other processes: waits while their
/// window is full or their cooldown runs, and while the store is away
/// (never sending at local speed instead). Returns the ticket and the time
/// spent in shared cooldowns.
async fn shared_admit<S: Strategy>(
    run: &Run<S>,
    shared: &Arc<SharedScope>,
    tokens: u64,
    deadline: Option<Instant>,
    acct: &Acct,
) -> Result<(SharedTicket, Duration), Fail> {
    let quota = run.scope.shared_quota();
    let mut in_cooldown = Duration::ZERO;
    loop {
        let (wait, cooldown) = match shared.admit(quota, tokens).await {
            Ok(ticket) => {
                run.scope.follow_shared_decreases();
                return Ok((ticket, in_cooldown));
            }
            Err(SharedWait::Window(d)) => (d, false),
            Err(SharedWait::Cooldown(d)) => (d, true),
        };
        // Processes woken by the same free place spread out a little.
        let wait = wait + Duration::from_millis(20).mul_f64(crate::rand::unit());
        let until = Instant::now() + wait;
        if cooldown && deadline.is_some_and(|d| until > d) {
            return Err(deadline_fail("a rate-limit cooldown", acct));
        }
        sleep_or_stop(until, &run.stop).await?;
        if cooldown {
            in_cooldown += wait;
        }
    }
}

/// One call under the attempt timeout (or the dry run's stand-in). The
/// error is `Err` only when the item's deadline ended the call.
async fn call<S: Strategy>(
    run: &Run<S>,
    ask: Ask<'_>,
    attempt: u32,
    deadline: Option<Instant>,
    state: &mut RetryState,
) -> Result<Result<crate::strategy::Completion<S::Output>, CallError>, ()> {
    let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
    let timeout = remaining.map_or(run.attempt_timeout, |r| r.min(run.attempt_timeout));
    let prompt = ask.prompt;
    if run.dry_run_mode {
        // The strategy's placeholder output, with the usage the run's token
        // estimator projects for this prompt and its parts (not a flat
        // placeholder).
        let r = run.strategy.dry_run(prompt).await;
        return Ok(match (r, &run.estimator) {
            (Ok((out, usage)), Some(e)) => {
                let projected = e.estimate_usage(prompt).ok().map(|u| {
                    let parts = TokenUsage::new(ask.part_tokens, 0);
                    u + parts
                });
                Ok((out, projected.or(usage)))
            }
            (r, _) => r,
        });
    }
    let call = tracing::Instrument::instrument(
        run.strategy.execute(prompt, attempt, timeout, state),
        tracing::debug_span!("attempt", attempt),
    );
    match tokio::time::timeout(timeout, call).await {
        Ok(r) => Ok(r),
        Err(_) if remaining.is_some_and(|r| r <= run.attempt_timeout) => Err(()),
        Err(_) => Ok(Err(CallError::new(
            ErrorCategory::FrameworkTimeout,
            format!(
                "attempt {attempt} timed out after {:.3} s",
                timeout.as_secs_f64()
            ),
        ))),
    }
}

/// An item's rate limits so far: how many, the scope's success count at
/// the last one, the end of its own hint, and whether they are its own.
#[derive(Debug, Default)]
struct ItemLimits {
    count: u32,
    successes_at_last: Option<u64>,
    not_before: Option<Instant>,
    /// 429s in a row with other calls of the scope succeeding in between.
    despite_others: u32,
    /// Found to be the item's own problem; it stays so.
    own: bool,
}

impl ItemLimits {
    /// Judges a 429 this item just got. One it keeps getting while other
    /// calls in the scope succeed is its own problem (a request that alone
    /// exceeds a limit, a broken proxy): it no longer pauses the scope, then
    /// or later. Twice in a row suffices without a hint; with one it takes
    /// three, since a random 429 with a hint now and then is the provider's
    /// word for the whole key (at 5 % of calls, some items meet two).
    fn judge(&mut self, scope: &Scope, hinted: bool) -> bool {
        let others_succeeded = self
            .successes_at_last
            .is_some_and(|at| scope.successes() > at);
        self.despite_others = if others_succeeded {
            self.despite_others + 1
        } else {
            0
        };
        self.own |= self.despite_others >= if hinted { 2 } else { 1 };
        self.own
    }
}

/// How an attempt's result counts in its scope.
fn outcome_of<T>(result: &Result<T, CallError>) -> Outcome {
    match result {
        Ok(_) => Outcome::Success,
        Err(e) => match e.category() {
            ErrorCategory::RateLimit => Outcome::RateLimited,
            ErrorCategory::ServerOverload => Outcome::Overloaded,
            ErrorCategory::ServerError if e.status() == Some(503) => Outcome::Overloaded,
            _ => Outcome::Failure,
        },
    }
}

/// What an attempt asks for: the prompt, and the estimated tokens of its
/// attachments (by the model's rules, known once they were probed).
#[derive(Clone, Copy)]
struct Ask<'p> {
    prompt: &'p Prompt,
    part_tokens: u64,
}

/// Before the first attempt of an item with attachments: reads each once
/// (off the async threads) and checks it against what the model takes. A
/// part that is missing, unreadable or refused fails the item as
/// `client_error` without a call. Returns what attempts ask for, with the
/// parts' estimated tokens.
async fn check_parts<'p, S: Strategy>(
    run: &Run<S>,
    id: &str,
    prompt: &'p Prompt,
) -> Result<Ask<'p>, Fail> {
    if !prompt.has_attachments() {
        return Ok(Ask {
            prompt,
            part_tokens: 0,
        });
    }
    let refuse = |message: String| {
        Fail::Item(ItemError::new(
            ErrorCategory::ClientError,
            format!("item {id}, {message}"),
        ))
    };
    crate::attachment::probe_all(prompt).await.map_err(refuse)?;
    let part_tokens = run
        .strategy
        .part_policy()
        .check(prompt)
        .map_err(|e| refuse(e.message().to_owned()))?;
    Ok(Ask {
        prompt,
        part_tokens,
    })
}

/// The pipeline of SPEC.md §4 for one item: wait for the scope's cooldown
/// (and the item's own hint) → a place in the scope's window → admission
/// (reservation and slot) → re-check the cooldown (one began: give back,
/// queue again, no budget spent) → call under the attempt timeout → settle
/// → tell the scope → classify → done, retry or fail.
async fn attempts<S: Strategy>(
    run: &Run<S>,
    id: &str,
    prompt: &Prompt,
    deadline: Option<Instant>,
    acct: &mut Acct,
    state: &mut RetryState,
) -> Result<S::Output, Fail> {
    let mut attempt = 1u32;
    let mut limits = ItemLimits::default();
    acct.attempts = 1;
    let ask = check_parts(run, id, prompt).await?;
    loop {
        if run.stop.stopping.is_cancelled() {
            return Err(Fail::Stopped);
        }
        let try_start = Instant::now();
        let cooldown_wait =
            wait_cooldown(&run.scope, &run.stop, limits.not_before, deadline, acct).await?;
        acct.timing.cooldown_wait += micros(cooldown_wait);
        if run.scope.take_cooldown_end(Instant::now()) {
            run.events.emit(|| Event::CooldownEnded {
                scope: run.scope.name().to_owned(),
            });
        }
        let (place, admitted, cooldown_wait, admission_wait) =
            admit_timed(run, ask, deadline, acct, cooldown_wait).await?;
        run.events.emit(|| Event::ItemAdmitted {
            id: id.to_owned(),
            attempt,
            waited: cooldown_wait + admission_wait,
        });
        if run.scope.cooldown().active_until(Instant::now()).is_some() {
            // A cooldown began while we waited: the guards give back the
            // place, the slot and the reservation; queue again, spending
            // no budget.
            continue;
        }
        let result = if let Err(e) = run.prepare.ensure(&*run.strategy).await {
            // No call was made: the failure is the preparation's.
            drop(admitted);
            drop(place);
            Err(e)
        } else {
            let exec_start = Instant::now();
            acct.tries += 1;
            let Ok(result) = call(run, ask, attempt, deadline, state).await else {
                admitted.settle(None);
                return Err(with_last(
                    ErrorCategory::ItemDeadline,
                    format!("item deadline passed during attempt {attempt}"),
                    acct.last_error.as_ref(),
                ));
            };
            let used = match &result {
                Ok((_, usage)) => usage.map(|u| u.total),
                Err(e) => e.usage().map(|u| u.total),
            };
            admitted.settle(used);
            let execution = micros(exec_start.elapsed());
            acct.timing.execution += execution;
            acct.timing.tries.push(TryTiming {
                attempt,
                started_at: Some(run.clock.at(try_start)),
                cooldown_wait: micros(cooldown_wait),
                admission_wait,
                execution,
                error: result.as_ref().err().map(CallError::category),
            });
            // A rate limit that is the scope's (not this item's own) pauses
            // it before the scope hears how the attempt ended, so that a
            // verdict of noise can end a hintless cooldown.
            let mut outcome = outcome_of(&result);
            if let Err(e) = &result
                && let RetryDecision::RateLimited { retry_after } = run.classifier.classify(e)
            {
                if limits.judge(&run.scope, retry_after.is_some()) {
                    outcome = Outcome::Failure;
                } else {
                    report_rate_limit(run, retry_after);
                }
            }
            let reported = match &result {
                Ok(_) => state.take_reported_limits(),
                Err(e) => e.reported_limits().copied(),
            };
            let change = place.end(AttemptEnd {
                outcome,
                reported: reported.as_ref(),
                tokens: used.unwrap_or(0),
            });
            report_change(run, change);
            result
        };
        let error = match result {
            Ok((output, usage)) => {
                let usage = usage.unwrap_or_default();
                acct.usage += usage;
                run.charge(usage, id);
                return Ok(output);
            }
            Err(e) => e,
        };
        if let Some(u) = error.usage() {
            acct.usage += u;
            run.charge(u, id);
        }
        acct.last_error = Some(to_item_error(&error));
        run.strategy.on_error(&error, attempt, state).await;
        retry_or_fail(run, id, &error, &mut attempt, &mut limits, deadline, acct).await?;
    }
}

/// After a failed attempt: returns to try again (the attempt number moved
/// on unless it was a rate limit, a backoff slept), or the item's failure.
async fn retry_or_fail<S: Strategy>(
    run: &Run<S>,
    id: &str,
    error: &CallError,
    attempt: &mut u32,
    limits: &mut ItemLimits,
    deadline: Option<Instant>,
    acct: &mut Acct,
) -> Result<(), Fail> {
    match run.classifier.classify(error) {
        RetryDecision::RateLimited { retry_after } => {
            let own = limits.own;
            limits.count += 1;
            limits.successes_at_last = Some(run.scope.successes());
            run.events.emit(|| Event::RateLimitHit {
                id: id.to_owned(),
                retry_after,
            });
            if limits.count > run.retry.max_rate_limit_retries {
                return Err(with_last(
                    ErrorCategory::RateLimitRetriesExceeded,
                    format!(
                        "rate limited {} times; the budget is {} retries",
                        limits.count, run.retry.max_rate_limit_retries
                    ),
                    acct.last_error.as_ref(),
                ));
            }
            // Never before its own hint; when the 429 is the item's own,
            // also after its own backoff, the scope going on meanwhile.
            let hint = retry_after
                .map(|h| h.min(run.scope.cooldown().policy().max_hint))
                .unwrap_or_default();
            let wait = if own {
                hint.max(run.retry.backoff(limits.count))
            } else {
                hint
            };
            limits.not_before = micros_after(Instant::now(), micros(wait));
        }
        RetryDecision::Immediately | RetryDecision::Backoff
            if *attempt >= run.retry.max_attempts =>
        {
            return Err(Fail::Item(to_item_error(error)));
        }
        RetryDecision::Immediately => {
            *attempt += 1;
        }
        RetryDecision::Backoff => {
            let delay = micros(run.retry.backoff(*attempt));
            let wake = micros_after(Instant::now(), delay);
            let Some(wake) = wake.filter(|w| deadline.is_none_or(|d| *w <= d)) else {
                return Err(deadline_fail("the backoff before the next attempt", acct));
            };
            sleep_or_stop(wake, &run.stop).await?;
            acct.timing.backoff += delay;
            *attempt += 1;
        }
        RetryDecision::Fail => return Err(Fail::Item(to_item_error(error))),
    }
    acct.attempts = *attempt;
    Ok(())
}

/// A 429 that is the scope's: its cooldown starts (or is extended to this
/// hint) and the events say so.
fn report_rate_limit<S: Strategy>(run: &Run<S>, retry_after: Option<Duration>) {
    let outcome = run.scope.report_rate_limit(retry_after, Instant::now());
    if let Some(shared) = run.scope.shared() {
        // Every process on the quota pauses as long as this one does.
        let length = match outcome {
            CooldownOutcome::Started(l) | CooldownOutcome::Extended(l) => Some(l),
            CooldownOutcome::Joined => retry_after,
        };
        if let Some(l) = length {
            shared.extend_cooldown(l);
        }
    }
    if let CooldownOutcome::Started(length) = outcome {
        run.events.emit(|| Event::CooldownStarted {
            scope: run.scope.name().to_owned(),
            length,
        });
    }
}

/// Events of what changed in the scope when an attempt ended.
fn report_change<S: Strategy>(run: &Run<S>, change: ScopeChange) {
    if !run.events.is_active() {
        return;
    }
    let scope = || run.scope.name().to_owned();
    if let Some((what, reported, set)) = change.lower_than_flag {
        run.events.emit(|| Event::LimitBelowSetting {
            scope: scope(),
            what,
            reported,
            set,
        });
    }
    if let Some(Verdict::Quota { .. }) = change.verdict {
        run.events.emit(|| Event::QuotaWall {
            scope: scope(),
            window: run.scope.window().view().limit,
        });
    }
    if change.limits {
        run.events.emit(|| Event::LimitsChanged {
            scope: scope(),
            limits: run.scope.limits_in_force(),
        });
    }
}
