//! `abl run … --via batch-api`: the same input, records, checkpoint and
//! summary as an online run, through the provider's batch API (OpenAI,
//! Anthropic, Gemini) at half the price.
//!
//! The library's [`BatchHost`] does the work — jobs recorded in the
//! checkpoint before they are submitted, reattached by the rerun of a
//! stopped run, results recorded before they are written, what could not
//! run resubmitted once. This file reads the input into it, writes its
//! results, prints its progress and the summary, finishes online what it
//! hands back (`--batch-fallback online`), and serves `abl batch status`
//! and `abl batch cancel`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_batch_llm::batch_api::{
    BatchClient, BatchEvent, BatchHost, BatchProvider, BatchRunConfig, Ending, Fallback, JobRecord,
    JobState, PollStatus, jobs_dir, parse_jobs,
};
use async_batch_llm::providers::{HttpOptions, ModelOptions};
use async_batch_llm::store::Checkpoint;
use async_batch_llm::{
    CallError, ErrorCategory, Item, ItemError, ItemResult, SummaryCollector, Termination,
    TerminationReason, Validator,
};
use serde_json::Value;

use crate::exit::{self, UsageError};
use crate::input::{IdSet, Reader};
use crate::output::Results;
use crate::progress::{eprintln_safe, print_safe};
use crate::settings::{InputSource, RunPlan};

fn usage(msg: impl Into<String>) -> UsageError {
    UsageError(msg.into())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The client, and the mock serving it for `mock:` runs (OpenAI's
/// batch API).
fn client(plan: &RunPlan) -> Result<(BatchClient, Option<crate::model::Mock>), UsageError> {
    let (spec, options, mock) = crate::model::target(&plan.model, HttpOptions::default(), false)?;
    let c = BatchClient::new(&spec, options).map_err(|e| usage(e.to_string()))?;
    Ok((c, mock))
}

/// What the results go to: the output file and the summary's tally.
struct Written {
    out: Results,
    collector: SummaryCollector,
    /// Why the output stopped taking results, if it did.
    error: Option<anyhow::Error>,
}

fn lock(w: &Mutex<Written>) -> std::sync::MutexGuard<'_, Written> {
    w.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[allow(clippy::needless_pass_by_value)] // used as `.map_err(call)`
fn call(e: CallError) -> anyhow::Error {
    anyhow::anyhow!("batch API: {} ({})", e.message(), e.category())
}

/// The online pipeline, for `--batch-fallback online`.
pub struct Online {
    /// The model online calls go to.
    pub model: Arc<dyn async_batch_llm::DynModel>,
    /// The run's engine settings.
    pub config: async_batch_llm::BatchConfig,
}

/// The output of a response: its text, or its JSON checked against the
/// schema.
fn parser(validator: Option<Arc<Validator<Value>>>) -> async_batch_llm::batch_api::Parse<Value> {
    Arc::new(move |r| match &validator {
        None => Ok(Value::String(r.text.clone())),
        Some(v) => v
            .parse(&r.text)
            .map_err(|e| ItemError::new(ErrorCategory::ValidationError, e)),
    })
}

/// A line on stderr for each step of the run.
fn tell(e: &BatchEvent) {
    let line = match e {
        BatchEvent::Reattached { jobs } => {
            format!("abl: batch-api: reattached to {jobs} job(s) submitted earlier")
        }
        BatchEvent::Submitted { key, requests } => {
            format!("abl: batch-api: job {key} submitted ({requests} requests)")
        }
        BatchEvent::Resubmitting { requests } => format!(
            "abl: batch-api: {requests} request(s) the provider could not run go into one more job"
        ),
        BatchEvent::Polled(p) => poll_line(p),
        BatchEvent::Retrying { what, error } => {
            format!("abl: batch-api: {what} failed: {error}; trying again")
        }
        _ => return,
    };
    eprintln_safe(&line);
}

fn poll_line(p: &PollStatus) -> String {
    format!(
        "abl: batch-api: jobs {} submitted, {} running · requests done at the provider {} of {} · items recorded {}, waiting {} · {}{} · next check in {}",
        p.jobs,
        p.running,
        p.done_at_provider,
        p.total_at_provider,
        p.recorded,
        p.waiting,
        p.expected_finish.map_or_else(
            || "expected finish: not known yet".to_owned(),
            |d| format!("expected finish in ~{}", short(d))
        ),
        p.deadline.map_or_else(String::new, |d| format!(
            " (the provider's deadline in {})",
            short(d)
        )),
        short(p.next_check),
    )
}

/// A wait as people say it: seconds with a tenth below a minute.
fn short(d: Duration) -> String {
    if d < Duration::from_secs(60) {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        async_batch_llm::human_duration(d)
    }
}

/// Ctrl-C while jobs are submitted or waited for: the first detaches once
/// the step under way (a submission, a results file) is recorded; the
/// second at once. Either way every job is in the checkpoint and keeps
/// running at the provider; the rerun reattaches.
fn watch_ctrl_c() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_err() {
            return;
        }
        eprintln_safe(
            "abl: detaching: the jobs keep running at the provider; rerun the same command to reattach and collect their results, or `abl batch cancel CHECKPOINT` to cancel them (Ctrl-C again detaches at once)",
        );
        let _ = tx.send(true);
        if tokio::signal::ctrl_c().await.is_ok() {
            // What is recorded is safe; a submission cut short is found
            // by its key on the rerun.
            eprintln_safe("abl: detached at once");
            std::process::exit(exit::INTERRUPTED);
        }
    });
    rx
}

/// Runs `plan` through the batch API; the exit code.
pub async fn run(
    plan: RunPlan,
    output: Option<PathBuf>,
    checkpoint_path: PathBuf,
    checkpoint: Arc<Checkpoint<Value>>,
    validator: Option<Arc<Validator<Value>>>,
    online: Online,
) -> anyhow::Result<i32> {
    let Some(settings) = plan.batch_api else {
        anyhow::bail!("not a batch-API run");
    };
    let (client, _mock) = client(&plan)?;
    let started = Instant::now();
    let written = Arc::new(Mutex::new(Written {
        out: Results::create(output.as_deref())?,
        collector: SummaryCollector::default(),
        error: None,
    }));
    let sink_to = Arc::clone(&written);
    let sink = Box::new(move |r: &ItemResult<Value>| {
        let mut w = lock(&sink_to);
        w.collector.add(r);
        match w.out.write(r) {
            Ok(more) => more,
            Err(e) => {
                w.error = Some(e);
                false
            }
        }
    });
    let config = BatchRunConfig {
        poll: settings.poll,
        job_items: settings.job_items,
        fallback: if settings.fallback_online {
            Fallback::Online
        } else {
            Fallback::Resubmit
        },
        jobs_dir: jobs_dir(&checkpoint_path),
        // With --schema the request asks for it, as the online path's
        // StructuredStrategy does.
        defaults: async_batch_llm::RequestDefaults {
            response_schema: validator.as_ref().map(|v| Arc::clone(v.schema())),
            ..plan.request.defaults()
        },
    };
    let mut host = BatchHost::open(
        client,
        checkpoint,
        config,
        parser(validator.clone()),
        sink,
        Box::new(tell),
        watch_ctrl_c(),
    )
    .await?;
    read_input(&plan, &mut host).await?;
    let ending = if host.detached() {
        Ending::Detached
    } else {
        host.wait().await?
    };
    if ending == Ending::Finished {
        if !host.for_online().is_empty() {
            finish_online(&plan, &mut host, online, validator).await?;
        }
        host.finish().await?;
    }
    drop(host);
    let Written {
        out,
        collector,
        error,
    } = Arc::try_unwrap(written)
        .map_err(|_| anyhow::anyhow!("the results are still in use"))?
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(e) = error {
        return Err(e.context("cannot write the output"));
    }
    match out.finish()? {
        // A closed stdout: the results are recorded; stop as `head` expects.
        Some(crate::output::WriteFailure::Pipe) => {
            eprintln_safe("abl: the output pipe was closed; the run stopped");
            return Ok(exit::PIPE);
        }
        Some(crate::output::WriteFailure::Io(e)) => {
            anyhow::bail!("cannot write the output: {e}")
        }
        None => {}
    }
    Ok(report(&plan, collector, ending, started))
}

/// Prints the summary (priced at the batch rate); the exit code.
fn report(plan: &RunPlan, collector: SummaryCollector, ending: Ending, started: Instant) -> i32 {
    let detached = ending == Ending::Detached;
    let termination = if detached {
        Termination {
            message: Some("detached: the jobs keep running at the provider".into()),
            ..Termination::new(TerminationReason::Aborted)
        }
    } else {
        Termination::completed()
    };
    let summary = collector.finish(termination, started.elapsed());
    // Batch requests cost half the list price.
    let prices = plan.prices.map(|p| async_batch_llm::Prices {
        input_per_million: p.input_per_million / 2.0,
        output_per_million: p.output_per_million / 2.0,
        cached_input_per_million: p.cached_input_per_million.map(|c| c / 2.0),
        cache_write_input_per_million: p.cache_write_input_per_million.map(|c| c / 2.0),
    });
    crate::summary::print_end(&summary, prices.as_ref());
    if prices.is_some() {
        eprintln_safe("Prices: batch-API rate (half the list price)");
    }
    if detached {
        return exit::INTERRUPTED;
    }
    exit::of_run(summary.termination.reason, summary.stats.failed, false)
}

/// Reads the input into the host, item by item (a duplicate id is an
/// input error), then ends it.
async fn read_input(plan: &RunPlan, host: &mut BatchHost<Value>) -> anyhow::Result<()> {
    let path = match &plan.input {
        InputSource::Stdin => "-".to_owned(),
        InputSource::File(p) => p.display().to_string(),
    };
    let mut reader =
        Reader::open(&path, plan.format, plan.mapping.clone()).map_err(|e| usage(e.to_string()))?;
    let mut ids = IdSet::default();
    let mut index = 0u64;
    while let Some(next) = tokio::task::block_in_place(|| reader.next_item()) {
        let item: Item = next.map_err(|e| usage(e.to_string()))?;
        if plan.shard.is_some_and(|s| !s.contains(&item.id)) {
            continue;
        }
        if !ids.insert(&item.id) {
            return Err(usage(format!("{path}: id {:?} is used twice", item.id)).into());
        }
        index += 1;
        if !host.add(item, index - 1).await? {
            // Detaching, or the output is closed: the rest is read again
            // by the next run.
            return Ok(());
        }
    }
    host.end_input().await?;
    Ok(())
}

/// `--batch-fallback online`: the requests no job could run go through
/// the online pipeline (read again from the input), recorded and written.
async fn finish_online(
    plan: &RunPlan,
    host: &mut BatchHost<Value>,
    online: Online,
    validator: Option<Arc<Validator<Value>>>,
) -> anyhow::Result<()> {
    let path = match &plan.input {
        InputSource::Stdin => {
            anyhow::bail!("--batch-fallback online needs an input file, not stdin")
        }
        InputSource::File(p) => p.display().to_string(),
    };
    let mut reader =
        Reader::open(&path, plan.format, plan.mapping.clone()).map_err(|e| usage(e.to_string()))?;
    let mut items = Vec::with_capacity(host.for_online().len());
    while let Some(next) = tokio::task::block_in_place(|| reader.next_item()) {
        let item = next.map_err(|e| usage(e.to_string()))?;
        if host.for_online().contains_key(&host.custom_id(&item.id)) {
            items.push(item);
        }
    }
    eprintln_safe(&format!(
        "abl: batch-api: finishing {} request(s) online that no job could run",
        items.len()
    ));
    let defaults = plan.request.defaults();
    let batch = if let Some(v) = validator {
        let s = async_batch_llm::StructuredStrategy::with_validator(online.model, v)
            .with_defaults(defaults);
        async_batch_llm::process_prompts(s, items, &online.config).await?
    } else {
        let text: crate::model::TextOut = crate::model::text_out;
        let s = async_batch_llm::ModelStrategy::new(online.model, text).with_defaults(defaults);
        async_batch_llm::process_prompts(s, items, &online.config).await?
    };
    for r in batch.results {
        if !host.record_online(r).await? {
            break;
        }
    }
    Ok(())
}

/// `abl batch status CHECKPOINT`: every job recorded, with its state at
/// the provider when a key is at hand.
pub async fn status(checkpoint: &Path, base_url: Option<&str>) -> anyhow::Result<i32> {
    let (store, jobs) = recorded(checkpoint)?;
    drop(store);
    if jobs.is_empty() {
        print_safe(&format!("no batch-API jobs in {}\n", checkpoint.display()));
        return Ok(exit::OK);
    }
    let mut clients = Clients::new(base_url);
    let mut table = format!(
        "{:<34} {:<10} {:>8} {:<28} {:<24} {:>8}\n",
        "job", "state", "requests", "provider id", "at provider", "age"
    );
    let mut unreachable: Vec<String> = Vec::new();
    for j in jobs {
        let live = match &j.batch_id {
            Some(id) if j.state != JobState::Done => match clients.get(&j.provider) {
                Ok(c) => match c.get(id).await {
                    Ok(b) => format!(
                        "{} {}/{}",
                        word(&b.status_text),
                        b.counts.done,
                        b.counts.total
                    ),
                    Err(e) => format!("? ({})", e.category()),
                },
                Err(e) => {
                    let note = format!("{}: {e}", j.provider);
                    if !unreachable.contains(&note) {
                        unreachable.push(note);
                    }
                    "? (no client)".into()
                }
            },
            _ => "-".into(),
        };
        let age = short(Duration::from_secs(unix_now().saturating_sub(j.created_at)));
        let _ = writeln!(
            table,
            "{:<34} {:<10} {:>8} {:<28} {:<24} {:>8}",
            j.key,
            format!("{:?}", j.state).to_lowercase(),
            j.items.len(),
            j.batch_id.as_deref().unwrap_or("-"),
            live,
            age
        );
    }
    print_safe(&table);
    for note in unreachable {
        eprintln_safe(&format!(
            "abl: the provider's state is not shown for {note}"
        ));
    }
    Ok(exit::OK)
}

/// `abl batch cancel CHECKPOINT`: asks the provider to cancel every job
/// not done.
pub async fn cancel(checkpoint: &Path, base_url: Option<&str>) -> anyhow::Result<i32> {
    let (_store, jobs) = recorded(checkpoint)?;
    let mut clients = Clients::new(base_url);
    let mut n = 0;
    for j in jobs.into_iter().filter(|j| j.state != JobState::Done) {
        let Some(id) = j.batch_id else { continue };
        let client = clients
            .get(&j.provider)
            .map_err(|e| usage(format!("cannot cancel job {}: {e}", j.key)))?;
        let b = client.cancel(&id).await.map_err(call)?;
        print_safe(&format!("{} ({id}): {}\n", j.key, word(&b.status_text)));
        n += 1;
    }
    print_safe(&format!(
        "{n} job(s) asked to cancel; rerun the run's command to collect what they finished\n"
    ));
    Ok(exit::OK)
}

/// A provider's status word as people read it (`BATCH_STATE_RUNNING` is
/// `running`; OpenAI's and Anthropic's words are already so).
fn word(status: &str) -> String {
    status
        .trim_start_matches("BATCH_STATE_")
        .trim_start_matches("JOB_STATE_")
        .to_lowercase()
}

fn recorded(
    checkpoint: &Path,
) -> Result<
    (
        Box<dyn async_batch_llm::store::CheckpointStore>,
        Vec<JobRecord>,
    ),
    UsageError,
> {
    let store = crate::checkpoint::open_read_only(checkpoint)?;
    let jobs = parse_jobs(store.jobs())
        .map_err(|e| usage(e.to_string()))?
        .into_values()
        .collect();
    Ok((store, jobs))
}

/// The batch clients of `abl batch status|cancel`, one per provider the
/// checkpoint's jobs name, each with its key from the environment.
struct Clients<'a> {
    base_url: Option<&'a str>,
    made: HashMap<String, Result<BatchClient, String>>,
}

impl<'a> Clients<'a> {
    fn new(base_url: Option<&'a str>) -> Self {
        Self {
            base_url,
            made: HashMap::new(),
        }
    }

    /// The client of a recorded provider name, or why there is none.
    fn get(&mut self, provider: &str) -> Result<&BatchClient, &str> {
        let base_url = self.base_url;
        self.made
            .entry(provider.to_owned())
            .or_insert_with(|| {
                let p = BatchProvider::from_name(provider)
                    .ok_or_else(|| format!("unknown provider {provider:?}"))?;
                BatchClient::new(
                    &format!("{}:batch-status", p.name()),
                    ModelOptions {
                        base_url: base_url.map(str::to_owned),
                        ..ModelOptions::default()
                    },
                )
                .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(String::as_str)
    }
}
