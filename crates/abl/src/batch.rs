//! `abl run … --via batch-api`: the same input, records, checkpoint and
//! summary as an online run, through OpenAI's Batch API at half the price.
//!
//! The input is read once, streaming: recorded items are replayed, the
//! rest are written as request lines into job files of at most
//! `--batch-job-items` requests (and 200 MB) beside the checkpoint. Each
//! job is **recorded in the checkpoint before it is submitted** (its key,
//! its items, its file) and again once the provider named it; it carries
//! its key in its metadata. A run that stops — Ctrl-C, a crash, SIGKILL —
//! is resumed by the same command: it reattaches to every job recorded,
//! finds a job whose id was never recorded by its key, and submits nothing
//! twice. Results are recorded in the checkpoint before they are written
//! out. Requests the provider could not run (the window passed, a server
//! error) go into one more job; after that they fail with their category.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_batch_llm::batch_api::{BatchClient, BatchJob, BatchLine, BatchProvider, JobHint};
use async_batch_llm::providers::{ApiKey, ModelOptions};
use async_batch_llm::store::{Checkpoint, item_fingerprint};
use async_batch_llm::{
    CallError, ErrorCategory, Item, ItemError, ItemResult, ItemTiming, LlmResponse,
    RequestDefaults, SummaryCollector, Termination, TerminationReason, Validator,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::exit::{self, UsageError};
use crate::input::{IdSet, Reader};
use crate::output::Results;
use crate::progress::eprintln_safe;
use crate::settings::{BatchApiPlan, InputSource, ModelChoice, RunPlan};

fn usage(msg: impl Into<String>) -> UsageError {
    UsageError(msg.into())
}

/// Where a recorded job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum JobState {
    /// Recorded; the submission may or may not have reached the provider.
    Preparing,
    /// The provider accepted it under `batch_id`.
    Submitted,
    /// Its results are recorded.
    Done,
}

/// A job as the checkpoint keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct JobRecord {
    key: String,
    provider: String,
    state: JobState,
    #[serde(default)]
    batch_id: Option<String>,
    /// The custom ids of its requests.
    items: Vec<String>,
    /// 1 for a first submission, 2 for the resubmission of what could not run.
    attempt: u32,
    /// Its request lines, kept until its results are in.
    file: PathBuf,
    created_at: u64,
}

/// An item waiting for its result, kept small (100,000 of them wait
/// while a job runs): its context as JSON text.
struct Waiting {
    id: Box<str>,
    index: u64,
    fp: Box<str>,
    context: Option<Box<str>>,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The client, and the mock serving it for `mock:` runs (OpenAI's
/// batch API).
fn client(plan: &RunPlan) -> Result<(BatchClient, Option<abl_mock::MockServer>), UsageError> {
    let (spec, options, mock) = match &plan.model {
        ModelChoice::Mock(m) => {
            let server = abl_mock::MockServer::start_dedicated(m.config.clone(), 1)
                .map_err(|e| usage(format!("cannot start the mock provider: {e}")))?;
            let options = ModelOptions {
                api_key: Some(ApiKey::new("mock-key")),
                base_url: Some(format!("{}/v1", server.base_url())),
                ..ModelOptions::default()
            };
            (format!("openai:mock-{}", m.mode), options, Some(server))
        }
        ModelChoice::Provider {
            spec,
            base_url,
            api_key_file,
        } => {
            let api_key = match api_key_file {
                Some(p) => Some(ApiKey::from_file(p).map_err(|e| usage(e.to_string()))?),
                None => None,
            };
            let options = ModelOptions {
                api_key,
                base_url: base_url.clone(),
                ..ModelOptions::default()
            };
            (
                format!("{}:{}", spec.provider.prefix(), spec.model),
                options,
                None,
            )
        }
    };
    let c = BatchClient::new(&spec, options).map_err(|e| usage(e.to_string()))?;
    Ok((c, mock))
}

/// The folder of job files beside the checkpoint.
fn jobs_dir(checkpoint: &Path) -> PathBuf {
    let mut name = checkpoint.file_name().unwrap_or_default().to_os_string();
    name.push(".jobs");
    checkpoint.with_file_name(name)
}

/// A job being filled with request lines.
struct Filling {
    key: String,
    file: PathBuf,
    out: std::io::BufWriter<std::fs::File>,
    items: Vec<String>,
    bytes: u64,
    attempt: u32,
}

/// What the run carries.
struct Run {
    client: BatchClient,
    /// Turns true on Ctrl-C: stop submitting and waiting, detach.
    detach: tokio::sync::watch::Receiver<bool>,
    checkpoint: Arc<Checkpoint<Value>>,
    defaults: RequestDefaults,
    validator: Option<Arc<Validator<Value>>>,
    settings: BatchApiPlan,
    dir: PathBuf,
    jobs: BTreeMap<String, JobRecord>,
    waiting: HashMap<String, Waiting>,
    out: Results,
    collector: SummaryCollector,
    next_key: u64,
    tag: String,
    /// Custom ids to finish online (`--batch-fallback online`), with the
    /// job attempts they had.
    online: HashMap<String, u32>,
    /// Items written out so far (replayed or recorded).
    recorded: u64,
}

impl Run {
    fn save(&self, job: &JobRecord) -> anyhow::Result<()> {
        let json = serde_json::to_string(job)?;
        self.checkpoint.note_job(&job.key, &json)?;
        Ok(())
    }

    fn start_job(&mut self, attempt: u32) -> anyhow::Result<Filling> {
        self.next_key += 1;
        let key = format!("{}-{:04}", self.tag, self.next_key);
        std::fs::create_dir_all(&self.dir)?;
        let file = self.dir.join(format!("{key}.jsonl"));
        let out = std::io::BufWriter::new(std::fs::File::create(&file)?);
        Ok(Filling {
            key,
            file,
            out,
            items: Vec::new(),
            bytes: 0,
            attempt,
        })
    }

    /// Records the job, then submits it, then records its id.
    async fn submit(&mut self, f: Filling) -> anyhow::Result<()> {
        let Filling {
            key,
            file,
            mut out,
            items,
            attempt,
            ..
        } = f;
        out.flush()?;
        out.into_inner()
            .map_err(std::io::IntoInnerError::into_error)?
            .sync_all()?;
        if items.is_empty() {
            let _ = std::fs::remove_file(&file);
            return Ok(());
        }
        let mut job = JobRecord {
            key,
            provider: self.client.provider().name().into(),
            state: JobState::Preparing,
            batch_id: None,
            items,
            attempt,
            file,
            created_at: unix_now(),
        };
        self.save(&job)?;
        let id = self.upload_and_create(&job).await?;
        job.batch_id = Some(id);
        job.state = JobState::Submitted;
        self.save(&job)?;
        eprintln_safe(&format!(
            "abl: batch-api: job {} submitted ({} requests)",
            job.key,
            job.items.len()
        ));
        self.jobs.insert(job.key.clone(), job);
        Ok(())
    }

    async fn upload_and_create(&self, job: &JobRecord) -> anyhow::Result<String> {
        let created = self
            .client
            .submit(&job.file, &job.key)
            .await
            .map_err(call)?;
        Ok(created.id)
    }

    /// A recorded job whose submission may not have reached the provider:
    /// found by its key, or submitted now from its file.
    async fn reattach(&mut self, mut job: JobRecord) -> anyhow::Result<Option<JobRecord>> {
        let hint = JobHint {
            recorded_at: job.created_at,
            requests: job.items.len() as u64,
            claimed: self
                .jobs
                .values()
                .filter_map(|j| j.batch_id.clone())
                .collect(),
        };
        if let Some(found) = self.client.find(&job.key, &hint).await.map_err(call)? {
            job.batch_id = Some(found.id);
        } else if job.file.exists() {
            job.batch_id = Some(self.upload_and_create(&job).await?);
        } else {
            // Never submitted and its lines are gone: its items go into new jobs.
            job.state = JobState::Done;
            self.save(&job)?;
            return Ok(None);
        }
        job.state = JobState::Submitted;
        self.save(&job)?;
        Ok(Some(job))
    }

    /// Writes a result out after recording it.
    async fn finish_item(
        &mut self,
        cid: &str,
        outcome: Result<(Value, Option<async_batch_llm::TokenUsage>), ItemError>,
        attempts: u32,
    ) -> anyhow::Result<bool> {
        let Some(w) = self.waiting.remove(cid) else {
            return Ok(true);
        };
        let (outcome, usage) = match outcome {
            Ok((v, u)) => (Ok(v), u.unwrap_or_default()),
            Err(e) => (Err(e), async_batch_llm::TokenUsage::default()),
        };
        let r = ItemResult {
            id: w.id.into(),
            index: w.index,
            outcome,
            usage,
            attempts,
            tries: attempts,
            timing: ItemTiming::default(),
            context: w.context.and_then(|c| serde_json::from_str(&c).ok()),
            replayed: false,
        };
        self.checkpoint.record(&r, w.fp.into(), None).await?;
        self.collector.add(&r);
        self.recorded += 1;
        self.out.write(&r)
    }

    /// Every item accepted ends with one record: one no job answered for
    /// (a bug, or a provider that lost it) fails with a message rather
    /// than vanishing from the output.
    async fn fail_unanswered(&mut self) -> anyhow::Result<()> {
        let lost: Vec<String> = self.waiting.keys().cloned().collect();
        for cid in lost {
            let e = ItemError::new(
                ErrorCategory::ProviderResponseError,
                "no job returned a result for this request",
            );
            if !self.finish_item(&cid, Err(e), 1).await? {
                anyhow::bail!("the output could not be written");
            }
        }
        Ok(())
    }

    /// The output of a response: its text, or its JSON checked against the
    /// schema.
    fn output(&self, r: &LlmResponse) -> Result<Value, ItemError> {
        match &self.validator {
            None => Ok(Value::String(r.text.clone())),
            Some(v) => serde_json::from_str::<Value>(&r.text)
                .map_err(|e| e.to_string())
                .and_then(|value| v.check(value))
                .map_err(|e| ItemError::new(ErrorCategory::ValidationError, e)),
        }
    }
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
    let settings = BatchApiPlan {
        job_items: settings.job_items.min(client.limits().max_requests),
        ..settings
    };
    let jobs = parse_jobs(checkpoint.jobs())?;
    let started = Instant::now();
    let mut run = Run {
        client,
        checkpoint,
        defaults: plan.request.defaults(),
        validator,
        settings,
        dir: jobs_dir(&checkpoint_path),
        jobs: BTreeMap::new(),
        waiting: HashMap::new(),
        out: Results::create(output.as_deref())?,
        collector: SummaryCollector::default(),
        next_key: 0,
        online: HashMap::new(),
        recorded: 0,
        detach: watch_ctrl_c(),
        // Unique to this run: two runs started in the same second on one
        // checkpoint must never name a job alike.
        tag: format!(
            "abl-{}-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis()),
            std::process::id()
        ),
    };
    // Jobs a stopped run left: reattached first, so their items are not
    // put in new jobs.
    let mut in_jobs: HashSet<String> = HashSet::new();
    for (_, job) in jobs {
        let job = match job.state {
            JobState::Done => continue,
            JobState::Preparing => match run.reattach(job).await? {
                Some(j) => j,
                None => continue,
            },
            JobState::Submitted => job,
        };
        in_jobs.extend(job.items.iter().cloned());
        run.jobs.insert(job.key.clone(), job);
    }
    if !run.jobs.is_empty() {
        eprintln_safe(&format!(
            "abl: batch-api: reattached to {} job(s) submitted earlier",
            run.jobs.len()
        ));
    }
    remove_stale_files(&run);
    read_input(&plan, &mut run, &in_jobs).await?;
    let interrupted = *run.detach.borrow() || wait_for_jobs(&mut run).await?;
    if !interrupted && !run.online.is_empty() {
        finish_online(&plan, &mut run, online).await?;
    }
    if !interrupted {
        run.fail_unanswered().await?;
    }
    let write_failure = run.out.finish()?;
    if let Some(crate::output::WriteFailure::Io(e)) = write_failure {
        anyhow::bail!("cannot write the output: {e}");
    }
    let termination = if interrupted {
        Termination {
            message: Some("detached: the jobs keep running at the provider".into()),
            ..Termination::new(TerminationReason::Aborted)
        }
    } else {
        Termination::completed()
    };
    let summary = run.collector.finish(termination, started.elapsed());
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
    if interrupted {
        return Ok(exit::INTERRUPTED);
    }
    Ok(exit::of_run(
        summary.termination.reason,
        summary.stats.failed,
        false,
    ))
}

/// Reads the input: replays what is recorded, keeps the rest waiting, and
/// puts each item not already in a job into a new one.
async fn read_input(
    plan: &RunPlan,
    run: &mut Run,
    in_jobs: &HashSet<String>,
) -> anyhow::Result<()> {
    let path = match &plan.input {
        InputSource::Stdin => "-".to_owned(),
        InputSource::File(p) => p.display().to_string(),
    };
    let mut reader =
        Reader::open(&path, plan.format, plan.mapping.clone()).map_err(|e| usage(e.to_string()))?;
    let mut ids = IdSet::default();
    let mut filling: Option<Filling> = None;
    let mut index = 0u64;
    while let Some(next) = tokio::task::block_in_place(|| reader.next_item()) {
        let item: Item = next.map_err(|e| usage(e.to_string()))?;
        if plan.shard.is_some_and(|s| !s.contains(&item.id)) {
            continue;
        }
        if !ids.insert(&item.id) {
            return Err(usage(format!("{path}: id {:?} is used twice", item.id)).into());
        }
        let at = index;
        index += 1;
        let fp = item_fingerprint(&item);
        if let Some(r) = run
            .checkpoint
            .replay(&item, &fp, at)
            .map_err(|e| usage(e.to_string()))?
        {
            run.collector.add(&r);
            run.recorded += 1;
            run.out.write(&r)?;
            continue;
        }
        let cid = run.client.custom_id(&item.id);
        run.waiting.insert(
            cid.clone(),
            Waiting {
                id: item.id.into(),
                index: at,
                fp: fp.into(),
                context: item.context.map(|c| c.to_string().into()),
            },
        );
        // Already in a job a stopped run submitted: no line to build.
        if in_jobs.contains(&cid) {
            continue;
        }
        let request = run
            .defaults
            .request(item.prompt, Duration::from_secs(86_400));
        let line = run.client.line(&cid, &request);
        let line = match line {
            Ok(l) => l.to_string(),
            Err(e) => {
                run.finish_item(&cid, Err(ItemError::new(e.category(), e.message())), 0)
                    .await?;
                continue;
            }
        };
        let full = filling.as_ref().is_some_and(|f| {
            f.items.len() >= run.settings.job_items
                || f.bytes + line.len() as u64 + 1 > run.client.limits().max_bytes
        });
        if full && let Some(f) = filling.take() {
            run.submit(f).await?;
            if *run.detach.borrow() {
                // Items not in a job yet are read again by the rerun.
                return Ok(());
            }
        }
        if filling.is_none() {
            filling = Some(run.start_job(1)?);
        }
        if let Some(f) = filling.as_mut() {
            f.out.write_all(line.as_bytes())?;
            f.out.write_all(b"\n")?;
            f.bytes += line.len() as u64 + 1;
            f.items.push(cid);
        }
    }
    if let Some(f) = filling.take() {
        run.submit(f).await?;
    }
    Ok(())
}

/// Polls every job until all are done (or Ctrl-C detaches); true when
/// interrupted.
async fn wait_for_jobs(run: &mut Run) -> anyhow::Result<bool> {
    let mut wait = run.settings.poll;
    let most = Duration::from_secs(600);
    let mut pace = Pace::default();
    loop {
        let open: Vec<String> = run
            .jobs
            .values()
            .filter(|j| j.state == JobState::Submitted)
            .map(|j| j.key.clone())
            .collect();
        if open.is_empty() {
            return Ok(false);
        }
        let mut changed = false;
        let mut retry: Vec<String> = Vec::new();
        // What the provider says of the jobs still running: requests done,
        // in all, and the earliest deadline.
        let mut progress = (0u64, 0u64);
        let mut deadline: Option<u64> = None;
        for key in open {
            let Some(id) = run.jobs.get(&key).and_then(|j| j.batch_id.clone()) else {
                continue;
            };
            let status = run.client.get(&id).await.map_err(call)?;
            if status.status.is_running() {
                progress.0 += status.counts.done;
                progress.1 += status.counts.total;
                deadline = match (deadline, status.expires_at) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                continue;
            }
            changed = true;
            // Out of the map while its results are read (100,000 ids are
            // not copied).
            let Some(job) = run.jobs.remove(&key) else {
                continue;
            };
            retry.extend(collect(run, &job, &status).await?);
            let mut done = job;
            done.state = JobState::Done;
            run.save(&done)?;
            let _ = std::fs::remove_file(&done.file);
            run.jobs.insert(key, done);
        }
        if !retry.is_empty() {
            resubmit(run, &retry).await?;
        }
        let running = run
            .jobs
            .values()
            .filter(|j| j.state == JobState::Submitted)
            .count();
        if running == 0 {
            return Ok(false);
        }
        wait = if changed {
            run.settings.poll
        } else {
            (wait.mul_f64(1.5)).min(most)
        };
        let finished = run.recorded + progress.0;
        let left = (run.waiting.len() as u64).saturating_sub(progress.0);
        let eta = pace.expected(finished, left);
        let submitted = run.jobs.len();
        eprintln_safe(&format!(
            "abl: batch-api: jobs {submitted} submitted, {running} running · requests done at the provider {} of {} · items recorded {}, waiting {} · {}{} · next check in {}",
            progress.0,
            progress.1,
            run.recorded,
            run.waiting.len(),
            eta.map_or_else(
                || "expected finish: not known yet".to_owned(),
                |d| format!("expected finish in ~{}", short(d))
            ),
            deadline.map_or_else(String::new, |at| format!(
                " (the provider's deadline in {})",
                short(Duration::from_secs(at.saturating_sub(unix_now())))
            )),
            short(wait),
        ));
        if *run.detach.borrow() {
            return Ok(true);
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = run.detach.changed() => return Ok(true),
        }
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

/// A wait as people say it: seconds with a tenth below a minute.
fn short(d: Duration) -> String {
    if d < Duration::from_secs(60) {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        async_batch_llm::human_duration(d)
    }
}

/// How fast requests finish at the provider, measured from the first
/// poll: the expected time to finish the rest at that pace.
#[derive(Default)]
struct Pace {
    first: Option<(Instant, u64)>,
}

impl Pace {
    /// With `finished` requests done so far and `left` to go.
    fn expected(&mut self, finished: u64, left: u64) -> Option<Duration> {
        let (t0, n0) = *self.first.get_or_insert((Instant::now(), finished));
        let done = finished.checked_sub(n0).filter(|d| *d > 0)?;
        let per = t0.elapsed().as_secs_f64() / done as f64;
        Some(Duration::from_secs_f64(
            (per * left as f64).min(86_400.0 * 7.0),
        ))
    }
}

/// Reads a finished job's output and error files; returns the custom ids to
/// submit once more.
async fn collect(run: &mut Run, job: &JobRecord, status: &BatchJob) -> anyhow::Result<Vec<String>> {
    let mut retry = Vec::new();
    let mut seen = HashSet::new();
    let mut lines = run.client.results(status, &job.items).await.map_err(call)?;
    while let Some(l) = lines.next().await {
        let l = l.map_err(call)?;
        if !handle_line(run, job, l, &mut seen, &mut retry).await? {
            anyhow::bail!("the output could not be written");
        }
    }
    // A request the provider left out of both files did not run.
    for cid in &job.items {
        if !seen.contains(cid) && run.waiting.contains_key(cid) {
            if run.settings.fallback_online {
                run.online.insert(cid.clone(), job.attempt);
            } else if job.attempt < 2 {
                retry.push(cid.clone());
            } else {
                let e = ItemError::new(
                    ErrorCategory::BatchExpired,
                    format!(
                        "job {} ended ({}) without running this request",
                        job.key, status.status_text
                    ),
                );
                run.finish_item(cid, Err(e), job.attempt).await?;
            }
        }
    }
    if !retry.is_empty() {
        // Keep the lines to send again before the job's file goes.
        copy_lines(
            &job.file,
            &retry,
            &run.dir.join(format!("{}-retry.jsonl", job.key)),
        )?;
    }
    Ok(retry)
}

/// `--batch-fallback online`: the requests no job could run go through
/// the online pipeline (read again from the input), recorded and written.
async fn finish_online(plan: &RunPlan, run: &mut Run, online: Online) -> anyhow::Result<()> {
    let path = match &plan.input {
        InputSource::Stdin => {
            anyhow::bail!("--batch-fallback online needs an input file, not stdin")
        }
        InputSource::File(p) => p.display().to_string(),
    };
    let mut reader =
        Reader::open(&path, plan.format, plan.mapping.clone()).map_err(|e| usage(e.to_string()))?;
    let mut items = Vec::with_capacity(run.online.len());
    while let Some(next) = tokio::task::block_in_place(|| reader.next_item()) {
        let item = next.map_err(|e| usage(e.to_string()))?;
        if run.online.contains_key(&run.client.custom_id(&item.id)) {
            items.push(item);
        }
    }
    eprintln_safe(&format!(
        "abl: batch-api: finishing {} request(s) online that no job could run",
        items.len()
    ));
    let defaults = run.defaults.clone();
    let batch = if let Some(v) = &run.validator {
        let s = async_batch_llm::StructuredStrategy::with_validator(online.model, Arc::clone(v))
            .with_defaults(defaults);
        async_batch_llm::process_prompts(s, items, &online.config).await?
    } else {
        let text: crate::run::TextOut = |r| Ok(Value::String(r.text.clone()));
        let s = async_batch_llm::ModelStrategy::new(online.model, text).with_defaults(defaults);
        async_batch_llm::process_prompts(s, items, &online.config).await?
    };
    for r in batch.results {
        let cid = run.client.custom_id(&r.id);
        let before = run.online.remove(&cid).unwrap_or(0);
        let outcome = r.outcome.map(|v| (v, Some(r.usage)));
        if !run.finish_item(&cid, outcome, before + r.attempts).await? {
            anyhow::bail!("the output could not be written");
        }
    }
    Ok(())
}

/// One result line: recorded and written, or kept to send once more.
/// False when the output could not be written.
async fn handle_line(
    run: &mut Run,
    job: &JobRecord,
    l: BatchLine,
    seen: &mut HashSet<String>,
    retry: &mut Vec<String>,
) -> anyhow::Result<bool> {
    seen.insert(l.custom_id.clone());
    let outcome = match &l.result {
        Ok(r) => run.output(r).map(|v| (v, r.token_usage())),
        Err(e) if e.is_retryable() && run.settings.fallback_online => {
            run.online.insert(l.custom_id, job.attempt);
            return Ok(true);
        }
        Err(e) if e.is_retryable() && job.attempt < 2 => {
            retry.push(l.custom_id);
            return Ok(true);
        }
        Err(e) => Err(ItemError::new(e.category(), e.message())),
    };
    run.finish_item(&l.custom_id, outcome, job.attempt).await
}

/// Job files no open job needs (a run stopped while filling one): removed.
/// Lines kept for a resubmission stay until it is made.
fn remove_stale_files(run: &Run) {
    let Ok(entries) = std::fs::read_dir(&run.dir) else {
        return;
    };
    let needed: HashSet<&Path> = run.jobs.values().map(|j| j.file.as_path()).collect();
    for p in entries.filter_map(Result::ok).map(|e| e.path()) {
        let retry = p.to_string_lossy().ends_with("-retry.jsonl");
        if !retry && !needed.contains(p.as_path()) {
            let _ = std::fs::remove_file(&p);
        }
    }
}

/// The `custom_id` of a request line.
/// (`custom_id` for OpenAI and Anthropic, `key` for Gemini).
fn line_custom_id(line: &str) -> Option<String> {
    let v = serde_json::from_str::<Value>(line).ok()?;
    v.get("custom_id")
        .or_else(|| v.get("key"))?
        .as_str()
        .map(str::to_owned)
}

/// Copies the lines of `ids` from `from` into `to`.
fn copy_lines(from: &Path, ids: &[String], to: &Path) -> anyhow::Result<()> {
    use std::io::BufRead as _;
    let want: HashSet<&str> = ids.iter().map(String::as_str).collect();
    let mut out = std::io::BufWriter::new(std::fs::File::create(to)?);
    for line in std::io::BufReader::new(std::fs::File::open(from)?).lines() {
        let line = line?;
        if line_custom_id(&line).is_some_and(|c| want.contains(c.as_str())) {
            out.write_all(line.as_bytes())?;
            out.write_all(b"\n")?;
        }
    }
    out.flush()?;
    Ok(())
}

/// Submits the requests of `ids` once more, in one new job (attempt 2).
async fn resubmit(run: &mut Run, ids: &[String]) -> anyhow::Result<()> {
    use std::io::BufRead as _;
    let mut f = run.start_job(2)?;
    let retry_files: Vec<PathBuf> = std::fs::read_dir(&run.dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with("-retry.jsonl"))
        .collect();
    let want: HashSet<&str> = ids.iter().map(String::as_str).collect();
    let mut added: HashSet<String> = HashSet::new();
    for p in &retry_files {
        for line in std::io::BufReader::new(std::fs::File::open(p)?).lines() {
            let line = line?;
            let cid = line_custom_id(&line);
            if let Some(c) = cid.filter(|c| want.contains(c.as_str()) && !added.contains(c)) {
                added.insert(c.clone());
                f.out.write_all(line.as_bytes())?;
                f.out.write_all(b"\n")?;
                f.bytes += line.len() as u64 + 1;
                f.items.push(c);
            }
        }
    }
    eprintln_safe(&format!(
        "abl: batch-api: {} request(s) the provider could not run go into one more job",
        f.items.len()
    ));
    run.submit(f).await?;
    // A request whose line was not kept cannot be sent again: it fails
    // now, with one record, instead of waiting for a job that has it.
    for cid in ids.iter().filter(|c| !added.contains(*c)) {
        let e = ItemError::new(
            ErrorCategory::LogicError,
            "its request line was not kept for the resubmission",
        );
        if !run.finish_item(cid, Err(e), 1).await? {
            anyhow::bail!("the output could not be written");
        }
    }
    for p in retry_files {
        let _ = std::fs::remove_file(p);
    }
    Ok(())
}

/// `abl batch status CHECKPOINT`: every job recorded, with its state at
/// the provider when a key is at hand.
pub async fn status(checkpoint: &Path, base_url: Option<&str>) -> anyhow::Result<i32> {
    let (store, jobs) = recorded(checkpoint)?;
    drop(store);
    if jobs.is_empty() {
        println!("no batch-API jobs in {}", checkpoint.display());
        return Ok(exit::OK);
    }
    let mut clients = Clients::new(base_url);
    println!(
        "{:<34} {:<10} {:>8} {:<28} {:<20} {:>8}",
        "job", "state", "requests", "provider id", "at provider", "age"
    );
    for j in jobs {
        let live = match &j.batch_id {
            Some(id) if j.state != JobState::Done => match clients.get(&j.provider) {
                Ok(c) => match c.get(id).await {
                    Ok(b) => format!("{} {}/{}", b.status_text, b.counts.done, b.counts.total),
                    Err(e) => format!("? ({})", e.category()),
                },
                Err(e) => format!("? ({e})"),
            },
            _ => "-".into(),
        };
        let age = unix_now().saturating_sub(j.created_at);
        println!(
            "{:<34} {:<10} {:>8} {:<28} {:<20} {:>7}s",
            j.key,
            format!("{:?}", j.state).to_lowercase(),
            j.items.len(),
            j.batch_id.as_deref().unwrap_or("-"),
            live,
            age
        );
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
        println!("{} ({id}): {}", j.key, b.status_text);
        n += 1;
    }
    println!("{n} job(s) asked to cancel; rerun the run's command to collect what they finished");
    Ok(exit::OK)
}

/// The job records of a checkpoint, by key.
fn parse_jobs(pairs: Vec<(String, String)>) -> anyhow::Result<BTreeMap<String, JobRecord>> {
    pairs
        .into_iter()
        .map(
            |(key, json)| match serde_json::from_str::<JobRecord>(&json) {
                Ok(j) => Ok((key, j)),
                Err(e) => Err(anyhow::anyhow!(
                    "the checkpoint's record of job {key} cannot be read: {e}"
                )),
            },
        )
        .collect()
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
