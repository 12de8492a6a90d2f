//! [`BatchHost`]: a whole batch through a provider's batch API.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::record::{JobRecord, JobState, parse_jobs};
use super::{BatchClient, BatchJob, BatchLine, JobHint};
use crate::error::{CallError, Error, ErrorCategory};
use crate::item::Item;
use crate::model::{LlmResponse, RequestDefaults};
use crate::result::{ItemError, ItemResult, ItemTiming};
use crate::store::{Checkpoint, item_fingerprint};
use crate::usage::TokenUsage;

/// What becomes of requests a job could not run (expired, cancelled, a
/// retryable error).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Fallback {
    /// One more job; after that they fail with their category.
    #[default]
    Resubmit,
    /// Handed back ([`BatchHost::for_online`]) to be finished online.
    Online,
}

/// Settings of a batch-API run.
#[derive(Debug, Clone)]
pub struct BatchRunConfig {
    /// The first wait between status checks (then ×1.5 while nothing
    /// changes, up to 10 minutes).
    pub poll: Duration,
    /// Most requests in one job (capped at the provider's limit).
    pub job_items: usize,
    /// What becomes of requests a job could not run.
    pub fallback: Fallback,
    /// Where job files are written (see [`jobs_dir`](super::jobs_dir)).
    pub jobs_dir: PathBuf,
    /// System text, schema, temperature and token limit of every request.
    pub defaults: RequestDefaults,
}

/// What a run tells as it goes, for a progress display.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum BatchEvent {
    /// Jobs a stopped run left were taken up again.
    Reattached {
        /// How many.
        jobs: usize,
    },
    /// A job was accepted by the provider.
    Submitted {
        /// Its key.
        key: String,
        /// Its requests.
        requests: usize,
    },
    /// Requests no job could run go into one more.
    Resubmitting {
        /// How many.
        requests: usize,
    },
    /// A round of status checks.
    Polled(PollStatus),
    /// A request to the provider failed in a way worth another try: it is
    /// made again (a status check or a results download at the next
    /// round, a submission after looking for the job first).
    Retrying {
        /// What failed (`checking job …`, `submitting job …`).
        what: String,
        /// The error, in the online path's words.
        error: String,
    },
}

/// Where a run stands after a round of status checks.
#[derive(Debug, Clone, PartialEq)]
pub struct PollStatus {
    /// Jobs submitted by this run or reattached.
    pub jobs: usize,
    /// Of those, the ones still running.
    pub running: usize,
    /// Requests of the running jobs done at the provider.
    pub done_at_provider: u64,
    /// Requests in the running jobs.
    pub total_at_provider: u64,
    /// Results handed to the sink so far (replayed ones included).
    pub recorded: u64,
    /// Items waiting for a result.
    pub waiting: usize,
    /// When the rest should be done at the pace so far, once known.
    pub expected_finish: Option<Duration>,
    /// The provider's earliest deadline for a running job, where it says.
    pub deadline: Option<Duration>,
    /// The wait until the next check.
    pub next_check: Duration,
}

/// How [`BatchHost::wait`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Every job ended and its results are recorded.
    Finished,
    /// The detach signal came: the jobs keep running at the provider.
    Detached,
    /// The sink refused a result (its output is closed).
    SinkClosed,
}

/// Turns an answer into an item's output (text, or JSON checked against
/// a schema).
pub type Parse<T> = Arc<dyn Fn(&LlmResponse) -> Result<T, ItemError> + Send + Sync>;

/// Takes each result after it is recorded; false when it cannot take more.
pub type Sink<T> = Box<dyn FnMut(&ItemResult<T>) -> bool + Send>;

/// An item waiting for its result, kept small (100,000 of them wait while
/// a job runs): its context as JSON text.
struct Waiting {
    id: Box<str>,
    index: u64,
    fp: Box<str>,
    context: Option<Box<str>>,
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

/// The batch-API host of one run: items in, one recorded [`ItemResult`]
/// out per item, through a provider's batch API instead of the online
/// pipeline.
///
/// It reuses what the online hosts use — items and prompts, the request
/// builder ([`RequestDefaults`]), the providers' bodies and parsers,
/// usage, results and the [`Checkpoint`] — and none of the per-attempt
/// machinery: a batch job has no admission, no cooldown and no retry
/// loop of ours. What it adds is the job's life:
///
/// 1. [`add`](Self::add) replays an item the checkpoint holds, or writes
///    its request line into the job being filled (a JSONL beside the
///    checkpoint); a full job (the provider's request and size limits, or
///    [`BatchRunConfig::job_items`]) is submitted at once, so a
///    2-million-line input never sits in memory;
/// 2. every job is **recorded in the checkpoint before it is submitted**
///    and again once the provider named it; [`open`](Self::open) reattaches
///    to the jobs a stopped run left, finding one whose id was never saved
///    by its label (or, at Anthropic, its time and size) rather than
///    submitting it twice;
/// 3. [`wait`](Self::wait) polls with backoff (×1.5 while nothing changes,
///    up to 10 minutes), reads results as they download, records each in
///    the checkpoint, then hands it to the sink; requests the provider
///    could not run (expired, cancelled, a retryable error) go into one
///    more job ([`Fallback::Resubmit`]) or are handed back to be finished
///    online ([`Fallback::Online`]);
/// 4. a Ctrl-C (the `detach` signal) stops it between steps: the jobs keep
///    running at the provider and the next run collects them.
pub struct BatchHost<T> {
    client: BatchClient,
    checkpoint: Arc<Checkpoint<T>>,
    config: BatchRunConfig,
    parse: Parse<T>,
    sink: Sink<T>,
    events: Box<dyn FnMut(&BatchEvent) + Send>,
    detach: tokio::sync::watch::Receiver<bool>,
    jobs: BTreeMap<String, JobRecord>,
    /// Custom ids already in a job a stopped run submitted.
    in_jobs: HashSet<String>,
    waiting: HashMap<String, Waiting>,
    filling: Option<Filling>,
    /// Custom ids to finish online, with the job attempts they had.
    online: HashMap<String, u32>,
    next_key: u64,
    tag: String,
    recorded: u64,
    sink_closed: bool,
}

impl<T> std::fmt::Debug for BatchHost<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchHost")
            .field("client", &self.client)
            .field("jobs", &self.jobs.len())
            .field("waiting", &self.waiting.len())
            .finish_non_exhaustive()
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::io(path.display().to_string(), e)
}

#[allow(clippy::needless_pass_by_value)] // used as `.map_err(call)`
fn call(e: CallError) -> Error {
    Error::config(format!("batch API: {} ({})", e.message(), e.category()))
}

impl<T: Send + Sync + 'static> BatchHost<T> {
    /// A host on `checkpoint`: its jobs recorded by a stopped run are read
    /// and reattached (a job whose submission may not have reached the
    /// provider is looked for there first, then submitted from its file).
    /// `detach` turning true stops the run between steps.
    pub async fn open(
        client: BatchClient,
        checkpoint: Arc<Checkpoint<T>>,
        config: BatchRunConfig,
        parse: Parse<T>,
        sink: Sink<T>,
        events: Box<dyn FnMut(&BatchEvent) + Send>,
        detach: tokio::sync::watch::Receiver<bool>,
    ) -> Result<Self, Error> {
        let recorded = parse_jobs(checkpoint.jobs())?;
        let config = BatchRunConfig {
            job_items: config.job_items.clamp(1, client.limits().max_requests),
            ..config
        };
        let mut host = Self {
            client,
            checkpoint,
            config,
            parse,
            sink,
            events,
            detach,
            jobs: BTreeMap::new(),
            in_jobs: HashSet::new(),
            waiting: HashMap::new(),
            filling: None,
            online: HashMap::new(),
            next_key: 0,
            // Unique to this run: two runs on one checkpoint never name a
            // job alike.
            tag: format!(
                "abl-{}-{}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis()),
                std::process::id()
            ),
            recorded: 0,
            sink_closed: false,
        };
        for (_, job) in recorded {
            let job = match job.state {
                JobState::Done => continue,
                JobState::Preparing => match host.reattach(job).await? {
                    Some(j) => j,
                    None => continue,
                },
                JobState::Submitted => job,
            };
            host.in_jobs.extend(job.items.iter().cloned());
            host.jobs.insert(job.key.clone(), job);
        }
        if !host.jobs.is_empty() {
            let jobs = host.jobs.len();
            (host.events)(&BatchEvent::Reattached { jobs });
        }
        host.remove_stale_files();
        Ok(host)
    }

    /// Whether the detach signal came.
    pub fn detached(&self) -> bool {
        *self.detach.borrow()
    }

    /// The custom id of an item id at this provider.
    pub fn custom_id(&self, id: &str) -> String {
        self.client.custom_id(id)
    }

    /// Takes one item (at input position `index`): replayed from the
    /// checkpoint, waited for in a job a stopped run submitted, or written
    /// into the job being filled (submitted when full). False when the
    /// sink is closed or the run is detaching (stop adding; items not in a
    /// job are read again by the next run).
    pub async fn add(&mut self, item: Item, index: u64) -> Result<bool, Error> {
        let fp = item_fingerprint(&item);
        if let Some(r) = self.checkpoint.replay(&item, &fp, index)? {
            return Ok(self.hand_over(&r));
        }
        let cid = self.client.custom_id(&item.id);
        self.waiting.insert(
            cid.clone(),
            Waiting {
                id: item.id.into(),
                index,
                fp: fp.into(),
                context: item.context.map(|c| c.to_string().into()),
            },
        );
        if self.in_jobs.contains(&cid) {
            return Ok(true);
        }
        let request = self
            .config
            .defaults
            .request(item.prompt, Duration::from_secs(86_400));
        let line = match self.client.line(&cid, &request).await {
            Ok(l) => l,
            Err(e) => {
                let id = self.waiting.get(&cid).map_or("", |w| &w.id);
                let e = ItemError::new(e.category(), format!("item {id}, {}", e.message()));
                return self.finish_item(&cid, Err(e), 0).await;
            }
        };
        let limit = self.client.limits().max_bytes;
        let full = self.filling.as_ref().is_some_and(|f| {
            f.items.len() >= self.config.job_items || f.bytes + line.len() as u64 + 1 > limit
        });
        if full && let Some(f) = self.filling.take() {
            self.submit(f).await?;
            if self.detached() {
                return Ok(false);
            }
        }
        let f = match self.filling.take() {
            Some(f) => f,
            None => self.start_job(1)?,
        };
        let f = self.filling.insert(f);
        let write = |out: &mut std::io::BufWriter<std::fs::File>| {
            out.write_all(&line)?;
            out.write_all(b"\n")
        };
        write(&mut f.out).map_err(io(&f.file))?;
        f.bytes += line.len() as u64 + 1;
        f.items.push(cid);
        Ok(!self.sink_closed)
    }

    /// Submits the job being filled (the input has ended).
    pub async fn end_input(&mut self) -> Result<(), Error> {
        if let Some(f) = self.filling.take() {
            self.submit(f).await?;
        }
        Ok(())
    }

    /// Polls every job until all have ended and their results are
    /// recorded, the detach signal comes, or the sink closes.
    pub async fn wait(&mut self) -> Result<Ending, Error> {
        let mut wait = self.config.poll;
        let most = Duration::from_secs(600);
        let mut pace = Pace::default();
        loop {
            if self.sink_closed {
                return Ok(Ending::SinkClosed);
            }
            if self.detached() {
                return Ok(Ending::Detached);
            }
            let open: Vec<String> = self
                .jobs
                .values()
                .filter(|j| j.state == JobState::Submitted)
                .map(|j| j.key.clone())
                .collect();
            if open.is_empty() {
                return Ok(Ending::Finished);
            }
            let mut changed = false;
            let mut retry: Vec<String> = Vec::new();
            let mut round = Round::default();
            for key in open {
                let Some(id) = self.jobs.get(&key).and_then(|j| j.batch_id.clone()) else {
                    continue;
                };
                let status = match self.client.get(&id).await {
                    Ok(s) => s,
                    Err(e) if e.is_retryable() => {
                        self.tell_retry(format!("checking job {key}"), &e);
                        round.hint = round.hint.max(e.retry_after());
                        continue;
                    }
                    Err(e) => return Err(call(e)),
                };
                if status.status.is_running() {
                    round.add(&status);
                    continue;
                }
                changed = true;
                // Out of the map while its results are read (100,000 ids
                // are not copied).
                let Some(job) = self.jobs.remove(&key) else {
                    continue;
                };
                match self.collect(&job, &status).await {
                    Ok(r) => retry.extend(r),
                    Err(Collect::Again(e)) => {
                        // What was recorded stays; the rest is read again.
                        self.tell_retry(format!("reading the results of job {key}"), &e);
                        self.jobs.insert(key, job);
                        continue;
                    }
                    Err(Collect::Fatal(e)) => return Err(e),
                }
                let mut done = job;
                done.state = JobState::Done;
                self.save(&done)?;
                let _ = std::fs::remove_file(&done.file);
                self.jobs.insert(key, done);
                if self.sink_closed || self.detached() {
                    break;
                }
            }
            if !retry.is_empty() && !self.sink_closed {
                self.resubmit(&retry).await?;
            }
            let running = self
                .jobs
                .values()
                .filter(|j| j.state == JobState::Submitted)
                .count();
            if running == 0 || self.sink_closed {
                continue;
            }
            wait = if changed {
                self.config.poll
            } else {
                wait.mul_f64(1.5).min(most)
            };
            // Never sooner than the provider asked (a 429 on a status check).
            wait = wait.max(round.hint.unwrap_or_default().min(most));
            let status = self.poll_status(&round, running, wait, &mut pace);
            (self.events)(&BatchEvent::Polled(status));
            let mut detach = self.detach.clone();
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = detach.changed() => {}
            }
        }
    }

    /// Where the run stands after a round of checks.
    fn poll_status(
        &self,
        round: &Round,
        running: usize,
        next_check: Duration,
        pace: &mut Pace,
    ) -> PollStatus {
        let finished = self.recorded + round.done;
        let left = (self.waiting.len() as u64).saturating_sub(round.done);
        PollStatus {
            jobs: self.jobs.len(),
            running,
            done_at_provider: round.done,
            total_at_provider: round.total,
            recorded: self.recorded,
            waiting: self.waiting.len(),
            expected_finish: pace.expected(finished, left),
            deadline: round
                .deadline
                .map(|at| Duration::from_secs(at.saturating_sub(unix_now()))),
            next_check,
        }
    }

    /// The custom ids to finish online ([`Fallback::Online`]), with the
    /// job attempts each had.
    pub fn for_online(&self) -> &HashMap<String, u32> {
        &self.online
    }

    /// Records a result made online for an item [`for_online`](Self::for_online)
    /// named (its attempts count the jobs it was in).
    pub async fn record_online(&mut self, r: ItemResult<T>) -> Result<bool, Error> {
        let cid = self.client.custom_id(&r.id);
        let before = self.online.remove(&cid).unwrap_or(0);
        let outcome = r.outcome.map(|v| (v, Some(r.usage)));
        self.finish_item(&cid, outcome, before + r.attempts).await
    }

    /// Ends the run: every item still waiting (no job answered for it — a
    /// bug, or a provider that lost it) fails with a message, so each item
    /// taken has exactly one result. How many were recorded in all.
    pub async fn finish(&mut self) -> Result<u64, Error> {
        let lost: Vec<String> = self.waiting.keys().cloned().collect();
        for cid in lost {
            let e = ItemError::new(
                ErrorCategory::ProviderResponseError,
                "no job returned a result for this request",
            );
            self.finish_item(&cid, Err(e), 1).await?;
        }
        Ok(self.recorded)
    }

    fn save(&self, job: &JobRecord) -> Result<(), Error> {
        let json = serde_json::to_string(job)
            .map_err(|e| Error::config(format!("a job record cannot be written: {e}")))?;
        self.checkpoint.note_job(&job.key, &json)
    }

    fn start_job(&mut self, attempt: u32) -> Result<Filling, Error> {
        self.next_key += 1;
        let key = format!("{}-{:04}", self.tag, self.next_key);
        let dir = &self.config.jobs_dir;
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let file = dir.join(format!("{key}.jsonl"));
        let out = std::io::BufWriter::new(std::fs::File::create(&file).map_err(io(&file))?);
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
    async fn submit(&mut self, f: Filling) -> Result<(), Error> {
        let Filling {
            key,
            file,
            mut out,
            items,
            attempt,
            ..
        } = f;
        out.flush().map_err(io(&file))?;
        out.into_inner()
            .map_err(std::io::IntoInnerError::into_error)
            .and_then(|f| f.sync_all())
            .map_err(io(&file))?;
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
        job.batch_id = Some(self.send(&job).await?);
        job.state = JobState::Submitted;
        self.save(&job)?;
        (self.events)(&BatchEvent::Submitted {
            key: job.key.clone(),
            requests: job.items.len(),
        });
        self.jobs.insert(job.key.clone(), job);
        Ok(())
    }

    /// Submits a recorded job; its provider id. A failure worth another
    /// try (a 500, a timeout, a connection cut) may have come after the
    /// provider accepted the job, so the job is looked for before it is
    /// sent again: four tries, 1 s, 2 s, 4 s apart (or as the provider's
    /// hint says).
    async fn send(&mut self, job: &JobRecord) -> Result<String, Error> {
        const TRIES: u32 = 4;
        let mut pause = Duration::from_secs(1);
        for attempt in 1..=TRIES {
            let e = match self.client.submit(&job.file, &job.key).await {
                Ok(created) => return Ok(created.id),
                Err(e) if e.is_retryable() && attempt < TRIES => e,
                Err(e) => return Err(call(e)),
            };
            self.tell_retry(format!("submitting job {}", job.key), &e);
            tokio::time::sleep(e.retry_after().unwrap_or(pause)).await;
            pause *= 2;
            if let Ok(Some(found)) = self.client.find(&job.key, &self.hint(job)).await {
                return Ok(found.id);
            }
        }
        Err(Error::config(format!(
            "batch API: job {} was not submitted",
            job.key
        )))
    }

    /// What finds `job` at a provider that keeps no label.
    fn hint(&self, job: &JobRecord) -> JobHint {
        JobHint {
            recorded_at: job.created_at,
            requests: job.items.len() as u64,
            claimed: self
                .jobs
                .values()
                .filter(|j| j.key != job.key)
                .filter_map(|j| j.batch_id.clone())
                .collect(),
        }
    }

    fn tell_retry(&mut self, what: String, e: &CallError) {
        let error = format!("{} ({})", e.message(), e.category());
        (self.events)(&BatchEvent::Retrying { what, error });
    }

    /// A recorded job whose submission may not have reached the provider:
    /// found there, or submitted now from its file.
    async fn reattach(&mut self, mut job: JobRecord) -> Result<Option<JobRecord>, Error> {
        let hint = self.hint(&job);
        if let Some(found) = self.client.find(&job.key, &hint).await.map_err(call)? {
            job.batch_id = Some(found.id);
        } else if job.file.exists() {
            job.batch_id = Some(self.send(&job).await?);
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

    /// Hands a result to the sink; false once the sink is closed.
    fn hand_over(&mut self, r: &ItemResult<T>) -> bool {
        if self.sink_closed {
            return false;
        }
        self.recorded += 1;
        if !(self.sink)(r) {
            self.sink_closed = true;
        }
        !self.sink_closed
    }

    /// Records the result of a waiting item, then hands it over.
    async fn finish_item(
        &mut self,
        cid: &str,
        outcome: Result<(T, Option<TokenUsage>), ItemError>,
        attempts: u32,
    ) -> Result<bool, Error> {
        let Some(w) = self.waiting.remove(cid) else {
            return Ok(!self.sink_closed);
        };
        let (outcome, usage) = match outcome {
            Ok((v, u)) => (Ok(v), u.unwrap_or_default()),
            Err(e) => (Err(e), TokenUsage::default()),
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
        Ok(self.hand_over(&r))
    }

    /// Reads an ended job's results; the custom ids to submit once more.
    async fn collect(
        &mut self,
        job: &JobRecord,
        status: &BatchJob,
    ) -> Result<Vec<String>, Collect> {
        let mut retry = Vec::new();
        let mut seen = HashSet::new();
        let mut lines = self.client.results(status, &job.items);
        while let Some(l) = lines.next().await {
            let l = l.map_err(Collect::from)?;
            if !self.take_line(job, l, &mut seen, &mut retry).await? {
                return Ok(retry);
            }
        }
        // A request the provider left without a result did not run.
        for cid in &job.items {
            if seen.contains(cid) || !self.waiting.contains_key(cid) {
                continue;
            }
            if self.config.fallback == Fallback::Online {
                self.online.insert(cid.clone(), job.attempt);
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
                self.finish_item(cid, Err(e), job.attempt).await?;
            }
        }
        if !retry.is_empty() {
            // Keep the lines to send again before the job's file goes.
            let to = self
                .config
                .jobs_dir
                .join(format!("{}-retry.jsonl", job.key));
            copy_lines(&job.file, &retry, &to)?;
        }
        Ok(retry)
    }

    /// One result: recorded and handed over, or kept to send once more.
    async fn take_line(
        &mut self,
        job: &JobRecord,
        l: BatchLine,
        seen: &mut HashSet<String>,
        retry: &mut Vec<String>,
    ) -> Result<bool, Error> {
        seen.insert(l.custom_id.clone());
        let outcome = match &l.result {
            Ok(r) => (self.parse)(r).map(|v| (v, r.token_usage())),
            Err(e) if e.is_retryable() && self.config.fallback == Fallback::Online => {
                self.online.insert(l.custom_id, job.attempt);
                return Ok(true);
            }
            Err(e) if e.is_retryable() && job.attempt < 2 => {
                retry.push(l.custom_id);
                return Ok(true);
            }
            Err(e) => Err(ItemError::new(e.category(), e.message())),
        };
        self.finish_item(&l.custom_id, outcome, job.attempt).await
    }

    /// Submits the requests of `ids` once more, in one new job (attempt 2);
    /// one whose line was not kept fails now instead.
    async fn resubmit(&mut self, ids: &[String]) -> Result<(), Error> {
        use std::io::BufRead as _;
        let mut f = self.start_job(2)?;
        let dir = &self.config.jobs_dir;
        let retry_files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io(dir))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().ends_with("-retry.jsonl"))
            .collect();
        let want: HashSet<&str> = ids.iter().map(String::as_str).collect();
        let mut added: HashSet<String> = HashSet::new();
        for p in &retry_files {
            let file = std::fs::File::open(p).map_err(io(p))?;
            for line in std::io::BufReader::new(file).lines() {
                let line = line.map_err(io(p))?;
                let cid = line_custom_id(&line);
                if let Some(c) = cid.filter(|c| want.contains(c.as_str()) && !added.contains(c)) {
                    added.insert(c.clone());
                    f.out
                        .write_all(line.as_bytes())
                        .and_then(|()| f.out.write_all(b"\n"))
                        .map_err(io(&f.file))?;
                    f.bytes += line.len() as u64 + 1;
                    f.items.push(c);
                }
            }
        }
        (self.events)(&BatchEvent::Resubmitting {
            requests: f.items.len(),
        });
        self.submit(f).await?;
        for p in retry_files {
            let _ = std::fs::remove_file(p);
        }
        for cid in ids.iter().filter(|c| !added.contains(*c)) {
            let e = ItemError::new(
                ErrorCategory::LogicError,
                "its request line was not kept for the resubmission",
            );
            self.finish_item(cid, Err(e), 1).await?;
        }
        Ok(())
    }

    /// Job files no open job needs (a run stopped while filling one):
    /// removed. Lines kept for a resubmission stay until it is made.
    fn remove_stale_files(&self) {
        let Ok(entries) = std::fs::read_dir(&self.config.jobs_dir) else {
            return;
        };
        let needed: HashSet<&Path> = self.jobs.values().map(|j| j.file.as_path()).collect();
        for p in entries.filter_map(Result::ok).map(|e| e.path()) {
            let retry = p.to_string_lossy().ends_with("-retry.jsonl");
            if !retry && !needed.contains(p.as_path()) {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
}

/// Why the results of a job were not all read.
enum Collect {
    /// A failure worth another try: read them again at the next round.
    Again(CallError),
    /// Anything else: the run stops.
    Fatal(Error),
}

impl From<CallError> for Collect {
    fn from(e: CallError) -> Self {
        if e.is_retryable() {
            Collect::Again(e)
        } else {
            Collect::Fatal(call(e))
        }
    }
}

impl From<Error> for Collect {
    fn from(e: Error) -> Self {
        Collect::Fatal(e)
    }
}

/// What a round of status checks found of the running jobs.
#[derive(Default)]
struct Round {
    done: u64,
    total: u64,
    deadline: Option<u64>,
    /// The longest wait a refused status check asked for.
    hint: Option<Duration>,
}

impl Round {
    fn add(&mut self, job: &BatchJob) {
        self.done += job.counts.done;
        self.total += job.counts.total;
        self.deadline = match (self.deadline, job.expires_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
}

/// How fast requests finish, measured from the first poll: the expected
/// time to finish the rest at that pace.
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

/// The custom id of a request line (`custom_id` for OpenAI and Anthropic,
/// `key` for Gemini).
fn line_custom_id(line: &str) -> Option<String> {
    let v = serde_json::from_str::<serde_json::Value>(line).ok()?;
    v.get("custom_id")
        .or_else(|| v.get("key"))?
        .as_str()
        .map(str::to_owned)
}

/// Copies the lines of `ids` from `from` into `to`.
fn copy_lines(from: &Path, ids: &[String], to: &Path) -> Result<(), Error> {
    use std::io::BufRead as _;
    let want: HashSet<&str> = ids.iter().map(String::as_str).collect();
    let mut out = std::io::BufWriter::new(std::fs::File::create(to).map_err(io(to))?);
    let input = std::fs::File::open(from).map_err(io(from))?;
    for line in std::io::BufReader::new(input).lines() {
        let line = line.map_err(io(from))?;
        if line_custom_id(&line).is_some_and(|c| want.contains(c.as_str())) {
            out.write_all(line.as_bytes())
                .and_then(|()| out.write_all(b"\n"))
                .map_err(io(to))?;
        }
    }
    out.flush().map_err(io(to))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_ids_are_read_from_each_providers_field() {
        assert_eq!(
            line_custom_id(r#"{"custom_id":"a","params":{}}"#).as_deref(),
            Some("a")
        );
        assert_eq!(
            line_custom_id(r#"{"key":"b","request":{}}"#).as_deref(),
            Some("b")
        );
        assert_eq!(line_custom_id("not json"), None);
    }

    #[test]
    fn the_pace_is_unknown_until_something_finished() {
        let mut p = Pace::default();
        assert_eq!(p.expected(10, 90), None, "the first poll sets the start");
        assert_eq!(p.expected(10, 90), None, "nothing finished since");
        assert!(p.expected(20, 80).is_some());
    }
}
