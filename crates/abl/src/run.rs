//! `abl run`: settings → checks → library calls → JSONL out.
//!
//! Everything that can be wrong is found before the first call and before
//! any file is opened for writing, in this order: the settings
//! ([`RunPlan`]), the paths ([`PathPlan`]), the model and its key, the
//! schema, every input line (with duplicate ids), the checkpoint (ours,
//! locked). Only then are the output's partial files created and the calls
//! made; the outputs replace the earlier files when the run ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_batch_llm::{
    BatchConfig, CharEstimator, ErrorCategory, Item, ItemError, ItemResult, ModelStrategy,
    RunExtras, Shard, StopHandle, Strategy, StructuredStrategy, SummaryCollector, Termination,
    TerminationReason, TokenEstimator,
};
use futures::StreamExt as _;
use serde_json::Value;

use crate::cli::{EstimatorArg, RunArgs};
use crate::input::{Format, IdSet, InputError, Mapping, Reader, first_line_of};
use crate::output::{Results, WriteFailure};
use crate::paths::{PathPlan, Replacement};
use crate::progress::{Counters, Progress, eprintln_safe};
use crate::settings::{InputSource, ModelChoice, RunPlan};

use crate::exit::{self, UsageError};

fn usage(msg: impl Into<String>) -> UsageError {
    UsageError(msg.into())
}

/// Reads `--config` and layers flags and environment over it.
pub fn resolve(args: RunArgs) -> Result<RunArgs, UsageError> {
    let Some(path) = args.config.clone() else {
        return Ok(args);
    };
    let text = std::fs::read_to_string(&path).map_err(|e| {
        usage(format!(
            "--config {}: cannot read the config file: {e}",
            path.display()
        ))
    })?;
    let file: RunArgs = toml::from_str(&text).map_err(|e| {
        usage(format!(
            "--config {}: {}",
            path.display(),
            e.to_string().replace('\n', " ")
        ))
    })?;
    Ok(args.or(file))
}

/// Checks every line of a file before any call is spent (bad lines, empty
/// prompts, duplicate ids: in the whole file, whatever the shard); returns
/// the count of items this run takes (announced when it is a shard's).
fn prescan(
    path: &str,
    format: Format,
    mapping: &Mapping,
    shard: Option<Shard>,
) -> Result<u64, InputError> {
    let mut r = Reader::open(path, format, mapping.clone())?;
    let mut ids = IdSet::default();
    let (mut n, mut all) = (0, 0u64);
    while let Some(item) = r.next_item() {
        let item = item?;
        if !ids.insert(&item.id) {
            let line = r.line();
            let first = first_line_of(path, format, mapping, &item.id)
                .map_or_else(String::new, |l| format!(" on line {l}"));
            return Err(InputError {
                place: format!("{path}:{line}"),
                field: Some(mapping.id_field.clone()),
                message: format!(
                    "id {:?} is used twice (first{first}); every item needs its own id",
                    item.id
                ),
            });
        }
        if shard.is_none_or(|s| s.contains(&item.id)) {
            n += 1;
        }
        all += 1;
    }
    if let Some(s) = shard {
        eprintln_safe(&format!("abl: shard {s}: {n} of the {all} items of {path}"));
    }
    Ok(n)
}

fn estimator(plan: &RunPlan) -> Result<Arc<dyn TokenEstimator>, UsageError> {
    let expected_output = plan.engine.expected_output_tokens;
    Ok(match plan.engine.estimator {
        EstimatorArg::Tiktoken => {
            let model = match &plan.model {
                ModelChoice::Provider { spec, .. } => spec.model.as_str(),
                ModelChoice::Mock(_) => "gpt-4o",
            };
            Arc::new(
                async_batch_llm::TiktokenEstimator::for_model(model, expected_output)
                    .map_err(|e| usage(format!("--token-estimator: {e}")))?,
            )
        }
        EstimatorArg::Chars => Arc::new(CharEstimator { expected_output }),
    })
}

/// What the result loop needs besides the strategy.
struct Ready {
    plan: RunPlan,
    paths: PathPlan,
    config: BatchConfig,
    total: Option<u64>,
    checkpoint: Option<Arc<async_batch_llm::store::Checkpoint<Value>>>,
}

/// Runs `abl run`; returns the exit code.
pub async fn run(args: RunArgs) -> anyhow::Result<i32> {
    let plan = RunPlan::new(&resolve(args)?)?;
    let paths = PathPlan::check(&plan)?;
    let (model, _mock) =
        crate::model::build(&plan.model, plan.engine.concurrency, plan.engine.dry_run)?;
    let schema = match &plan.request.schema {
        Some(p) => Some(crate::model::read_schema(p, &model)?),
        None => None,
    };
    let (validator, schema_text) = match schema {
        Some((v, text)) => (Some(Arc::new(v)), Some(text)),
        None => (None, None),
    };
    let total = match &plan.input {
        InputSource::Stdin => None,
        InputSource::File(p) => {
            let path = p.display().to_string();
            let (format, mapping, shard) = (plan.format, plan.mapping.clone(), plan.shard);
            Some(
                tokio::task::spawn_blocking(move || prescan(&path, format, &mapping, shard))
                    .await?
                    .map_err(|e| usage(e.to_string()))?,
            )
        }
    };
    let shared_limits = match &plan.shared_limits {
        None => None,
        Some(url) => Some(Arc::new(
            async_batch_llm::RedisLimits::connect(url)
                .await
                .map_err(|e| usage(format!("--shared-limits: {e}")))?,
        ) as Arc<dyn async_batch_llm::SharedLimits>),
    };
    let config = BatchConfig {
        estimator: Some(estimator(&plan)?),
        shared_limits,
        shared_fallback: plan.shared_fallback,
        ..plan.engine.batch_config()
    };
    config.validate().map_err(|e| usage(e.to_string()))?;
    let identity = crate::checkpoint::identity(&plan, schema_text.as_deref());
    let checkpoint = match (&plan.checkpoint, &paths.checkpoint) {
        (Some(cp), Some(path)) => {
            let c = crate::checkpoint::open(cp, path, &identity)?;
            if let Err(e) = c.note_run(&crate::checkpoint::run_settings(&plan)) {
                eprintln_safe(&format!(
                    "abl: warning: the run's settings were not noted in the checkpoint: {e}"
                ));
            }
            Some(Arc::new(c))
        }
        _ => None,
    };
    if plan.batch_api.is_some() {
        let (Some(cp), Some(path)) = (checkpoint, paths.checkpoint.clone()) else {
            return Err(usage("--via batch-api needs --checkpoint").into());
        };
        let online = crate::batch::Online { model, config };
        return crate::batch::run(plan, paths.output.clone(), path, cp, validator, online).await;
    }
    let ready = Ready {
        plan,
        paths,
        config,
        total,
        checkpoint,
    };
    let defaults = ready.plan.request.defaults();
    if let Some(v) = validator {
        let s = StructuredStrategy::with_validator(model, v).with_defaults(defaults);
        drive(s, ready).await
    } else {
        let text: crate::model::TextOut = crate::model::text_out;
        drive(
            ModelStrategy::new(model, text).with_defaults(defaults),
            ready,
        )
        .await
    }
}

/// A failure record for an item that was never processed.
fn rejected(item: Item, index: u64, error: ItemError) -> ItemResult<Value> {
    ItemResult {
        id: item.id,
        index,
        outcome: Err(error),
        usage: async_batch_llm::TokenUsage::default(),
        attempts: 0,
        tries: 0,
        timing: async_batch_llm::ItemTiming::default(),
        context: item.context,
        replayed: false,
    }
}

/// Reads the input on its own thread into the run's channel. On stdin, a
/// duplicate id goes to `rejected` as a failure record (no call is made for
/// it); files were checked for duplicates before the run.
fn spawn_reader(
    plan: &RunPlan,
    tx: tokio::sync::mpsc::Sender<Item>,
    rejected_tx: tokio::sync::mpsc::Sender<ItemResult<Value>>,
) -> anyhow::Result<Arc<std::sync::Mutex<Option<InputError>>>> {
    let input_error: Arc<std::sync::Mutex<Option<InputError>>> = Arc::default();
    let failed = Arc::clone(&input_error);
    let path = match &plan.input {
        InputSource::Stdin => "-".to_owned(),
        InputSource::File(p) => p.display().to_string(),
    };
    let check_ids = plan.input == InputSource::Stdin;
    let (format, mapping, shard) = (plan.format, plan.mapping.clone(), plan.shard);
    std::thread::Builder::new()
        .name("abl-input".into())
        .spawn(move || {
            let fail = |e| {
                *failed
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e);
            };
            let mut reader = match Reader::open(&path, format, mapping) {
                Ok(r) => r,
                Err(e) => return fail(e),
            };
            let mut ids = IdSet::default();
            let mut read = 0u64;
            while let Some(next) = reader.next_item() {
                let item = match next {
                    Ok(item) => item,
                    Err(e) => return fail(e),
                };
                if shard.is_some_and(|s| !s.contains(&item.id)) {
                    continue;
                }
                read += 1;
                if check_ids && !ids.insert(&item.id) {
                    let error = ItemError::new(
                        ErrorCategory::InputError,
                        format!(
                            "{}:{}: id {:?} was already used by an earlier line; this one was not called",
                            "<stdin>",
                            reader.line(),
                            item.id
                        ),
                    );
                    if rejected_tx
                        .blocking_send(rejected(item, read - 1, error))
                        .is_err()
                    {
                        return;
                    }
                    continue;
                }
                if tx.blocking_send(item).is_err() {
                    return;
                }
            }
        })?;
    Ok(input_error)
}

/// On Ctrl-C: no new calls (a second Ctrl-C cancels those in flight).
/// The flag says whether it happened.
fn on_ctrl_c(stop: StopHandle) -> Arc<AtomicBool> {
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&interrupted);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            flag.store(true, Ordering::SeqCst);
            eprintln_safe(
                "abl: interrupted: no new calls; finishing the calls in flight (Ctrl-C again cancels them)",
            );
            stop.stop();
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln_safe("abl: cancelling the calls in flight");
                stop.cancel();
            }
        }
    });
    interrupted
}

/// Runs the batch: results written as they come, the progress line, the
/// summary, the exit code.
async fn drive<S>(strategy: S, ready: Ready) -> anyhow::Result<i32>
where
    S: Strategy<Output = Value>,
{
    let Ready {
        plan,
        paths,
        config,
        total,
        checkpoint,
    } = ready;
    // Every check has passed: now the outputs are created, as partial files.
    let mut out = Results::create(paths.output.as_deref())?;
    let summary_out = match &paths.summary_json {
        Some(p) => Some(Replacement::create(p)?),
        None => None,
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Item>(plan.engine.concurrency.max(64));
    let (rejected_tx, mut rejected_rx) = tokio::sync::mpsc::channel(64);
    let input_error = spawn_reader(&plan, tx, rejected_tx)?;
    let items =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|i| (i, rx)) });

    let started = Instant::now();
    let extras = RunExtras {
        checkpoint,
        ..RunExtras::default()
    };
    let mut stream = async_batch_llm::process_stream_with(strategy, items, &config, extras)?;
    let stop = stream.stop_handle();
    let interrupted = on_ctrl_c(stop.clone());
    let counters = Arc::new(Counters::default());
    let progress = Progress::new(
        Arc::clone(&counters),
        total,
        plan.prices,
        plan.no_progress,
        plan.progress_interval,
        out.partial().as_deref(),
    );
    let mut collector = SummaryCollector::default();
    let mut record = |r: &ItemResult<Value>, out: &mut Results| {
        counters.add(r.is_ok(), r.usage);
        collector.add(r);
        out.write(r)
    };
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_line = Instant::now();
    let mut rejected_open = true;
    loop {
        let next = tokio::select! {
            next = stream.next() => match next {
                Some(r) => r,
                None => break,
            },
            r = rejected_rx.recv(), if rejected_open => {
                let Some(r) = r else {
                    rejected_open = false;
                    continue;
                };
                r
            }
            _ = tick.tick() => {
                counters.follow(&stream);
                progress.tick(&mut last_line);
                continue;
            }
        };
        // A failed write stops the run; the calls in flight still end.
        if !record(&next, &mut out)? {
            stop.stop();
        }
    }
    // Rejected items that arrived after the stream ended.
    while let Ok(r) = rejected_rx.try_recv() {
        record(&r, &mut out)?;
    }
    progress.finish();
    let write_failure = out.finish()?;
    let input_error = input_error.lock().map_or(None, |e| e.clone());
    let termination = match &input_error {
        Some(e) => Termination {
            message: Some(format!("input error: {e}")),
            ..Termination::new(TerminationReason::Aborted)
        },
        None => stream.termination().unwrap_or_else(Termination::completed),
    };
    stream.add_run_figures(&mut collector.stats);
    collector.stats.dry_run = config.dry_run;
    let mut summary = collector.finish(termination, started.elapsed());
    summary.not_started = crate::summary::not_started(&summary, total, input_error.is_some());
    drop(stream);
    crate::summary::print_end(&summary, plan.prices.as_ref());
    if let Some(note) = plan.price_source.note() {
        crate::progress::eprintln_safe(&note);
    }
    if let Some(s) = summary_out {
        crate::summary::commit_json(s, &summary)?;
    }
    exit_code(
        write_failure,
        input_error,
        &summary,
        interrupted.load(Ordering::SeqCst),
    )
}

/// The exit code once the results and the summary are out, saying on
/// stderr why a run that could not finish stopped.
fn exit_code(
    write_failure: Option<WriteFailure>,
    input_error: Option<InputError>,
    summary: &async_batch_llm::RunSummary,
    interrupted: bool,
) -> anyhow::Result<i32> {
    match write_failure {
        Some(WriteFailure::Pipe) => {
            eprintln_safe("abl: the output pipe was closed; the run stopped");
            return Ok(exit::PIPE);
        }
        Some(WriteFailure::Io(e)) => anyhow::bail!("cannot write the output: {e}"),
        None => {}
    }
    if let Some(e) = input_error {
        eprintln_safe(&format!("abl: error: {e}"));
        eprintln_safe(&format!(
            "abl: stopped reading there; the {} items before it have their results",
            summary.stats.items
        ));
        return Ok(exit::USAGE);
    }
    Ok(exit::of_run(
        summary.termination.reason,
        summary.stats.failed,
        interrupted,
    ))
}
