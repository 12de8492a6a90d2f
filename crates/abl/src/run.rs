//! `abl run`: settings → validated config → library calls → JSONL out.

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use async_batch_llm::providers::{ApiKey, HttpOptions, ModelOptions, llm_with};
use async_batch_llm::{
    BatchConfig, Budget, CharEstimator, CooldownPolicy, DynModel, ErrorCategory, Item, LlmResponse,
    ModelStrategy, Prices, RateLimits, ResponseParser, ResponseSchema, RetryPolicy, ScopeRegistry,
    StopMode, SummaryCollector, Termination, TerminationReason,
};
use futures::StreamExt as _;
use serde_json::Value;

use crate::cli::RunArgs;
use crate::input::{Format, InputError, Mapping, Reader, Template};
use crate::progress::{Counters, Progress, eprintln_safe};

/// Exit codes.
pub mod exit {
    /// Every item succeeded.
    pub const OK: i32 = 0;
    /// Some items failed.
    pub const SOME_FAILED: i32 = 1;
    /// Bad usage or input.
    pub const USAGE: i32 = 2;
    /// Stopped by a guardrail (deadline, budget, fail-fast).
    pub const GUARDRAIL: i32 = 3;
    /// Interrupted (Ctrl-C).
    pub const INTERRUPTED: i32 = 130;
}

/// A usage or input error: exit code 2, one line.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn usage(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(msg.into()))
}

/// Output as text, or, with `--schema`, as JSON checked against the
/// schema (a reply that does not match is a validation error, retried like
/// one). A dry run's placeholder is text.
struct CliParser {
    schema: Option<async_batch_llm::structured::Validator<Value>>,
}

impl ResponseParser for CliParser {
    type Output = Value;
    fn parse(&self, r: &LlmResponse) -> Result<Value, String> {
        match &self.schema {
            Some(v) => v.parse(&r.text),
            None => Ok(Value::String(r.text.clone())),
        }
    }
}

fn secs(v: Option<f64>, name: &str) -> anyhow::Result<Option<Duration>> {
    match v {
        None => Ok(None),
        Some(s) if s.is_finite() && s > 0.0 => Ok(Some(Duration::from_secs_f64(s))),
        Some(s) => Err(usage(format!(
            "--{name} must be a positive number of seconds, got {s}"
        ))),
    }
}

/// Reads `--config` and layers flags and environment over it.
pub fn resolve(args: RunArgs) -> anyhow::Result<RunArgs> {
    let Some(path) = args.config.clone() else {
        return Ok(args);
    };
    let text = std::fs::read_to_string(&path).map_err(|e| {
        usage(format!(
            "{}: cannot read the config file: {e}",
            path.display()
        ))
    })?;
    let file: RunArgs = toml::from_str(&text).map_err(|e| {
        usage(format!(
            "{}: {}",
            path.display(),
            e.to_string().replace('\n', " ")
        ))
    })?;
    Ok(args.or(file))
}

struct Mock {
    _server: abl_mock::MockServer,
}

fn build_model(
    a: &RunArgs,
    concurrency: usize,
) -> anyhow::Result<(Arc<dyn DynModel>, Option<Mock>)> {
    let spec = a.model.clone().ok_or_else(|| {
        usage("--model is required, e.g. --model openai:gpt-4o-mini or --model mock:echo")
    })?;
    let http = HttpOptions {
        max_connections: concurrency,
        ..HttpOptions::default()
    };
    if let Some(mode) = spec.strip_prefix("mock:") {
        let reply = match mode {
            "echo" => abl_mock::ReplyMode::Echo,
            "upper" => abl_mock::ReplyMode::Upper,
            "fixed" => abl_mock::ReplyMode::Fixed,
            other => {
                return Err(usage(format!(
                    "--model mock:{other}: unknown mock mode (echo, upper, fixed)"
                )));
            }
        };
        let hint = match &a.mock_hint_429 {
            Some(h) => h
                .parse()
                .map_err(|e: String| usage(format!("--mock-hint-429: {e}")))?,
            None => abl_mock::Hint::RetryAfter(Duration::from_secs(1)),
        };
        let cfg = abl_mock::MockConfig {
            reply,
            latency_ms: a.mock_latency_ms.unwrap_or(0),
            jitter_ms: a.mock_jitter_ms.unwrap_or(0),
            fault_429: a.mock_fault_429.unwrap_or(0.0),
            hint_429: hint,
            fault_500: a.mock_fault_500.unwrap_or(0.0),
            fault_503: a.mock_fault_503.unwrap_or(0.0),
            seed: a.mock_seed.unwrap_or(0),
            rpm: a.mock_rpm,
            tpm: a.mock_tpm,
            ..abl_mock::MockConfig::default()
        };
        for (name, rate) in [
            ("429", cfg.fault_429),
            ("500", cfg.fault_500),
            ("503", cfg.fault_503),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(usage(format!(
                    "--mock-fault-{name} must lie in [0, 1], got {rate}"
                )));
            }
        }
        let server = abl_mock::MockServer::start_dedicated(cfg, 1)
            .map_err(|e| usage(format!("cannot start the mock provider: {e}")))?;
        let model = llm_with(
            &format!("openai:mock-{mode}"),
            ModelOptions {
                api_key: Some(ApiKey::new("mock-key")),
                base_url: Some(format!("{}/v1", server.base_url())),
                http,
                ..ModelOptions::default()
            },
        )?;
        return Ok((model, Some(Mock { _server: server })));
    }
    let api_key = match &a.api_key_file {
        Some(p) => Some(ApiKey::from_file(p).map_err(|e| usage(e.to_string()))?),
        None => None,
    };
    let model = llm_with(
        &spec,
        ModelOptions {
            api_key,
            base_url: a.base_url.clone(),
            http,
            ..ModelOptions::default()
        },
    )
    .map_err(|e| usage(e.to_string()))?;
    Ok((model, None))
}

fn mapping(a: &RunArgs) -> anyhow::Result<Mapping> {
    let template = match &a.template {
        Some(t) => Some(Template::parse(t).map_err(|e| usage(format!("--template: {e}")))?),
        None => None,
    };
    Ok(Mapping {
        id_field: a.id_field.clone().unwrap_or_else(|| "id".into()),
        prompt_field: a.prompt_field.clone().unwrap_or_else(|| "prompt".into()),
        template,
    })
}

fn prices(a: &RunArgs) -> Option<Prices> {
    match (a.price_input, a.price_output) {
        (None, None) => None,
        (input, output) => {
            let p = Prices::new(input.unwrap_or(0.0), output.unwrap_or(0.0));
            Some(match a.price_cached_input {
                Some(cached) => p.with_cached_input(cached),
                None => p,
            })
        }
    }
}

fn estimator(a: &RunArgs) -> anyhow::Result<Arc<dyn async_batch_llm::TokenEstimator>> {
    let expected_output = a.expected_output_tokens.unwrap_or(256);
    Ok(match a.token_estimator.as_deref() {
        Some("tiktoken") => {
            let model = a
                .model
                .as_deref()
                .and_then(|m| m.split_once(':'))
                .map_or("gpt-4o", |(_, m)| m);
            Arc::new(
                async_batch_llm::limit::TiktokenEstimator::for_model(model, expected_output)
                    .map_err(|e| usage(e.to_string()))?,
            )
        }
        _ => Arc::new(CharEstimator { expected_output }),
    })
}

fn is_sqlite(path: &Path) -> bool {
    matches!(
        path.extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("sqlite" | "sqlite3" | "db")
    )
}

/// The run's identity: what must match for a record to be reused.
fn identity(a: &RunArgs, schema: Option<&str>) -> async_batch_llm::store::Identity {
    let spec = a.model.clone().unwrap_or_default();
    let (provider, model) = spec
        .split_once(':')
        .map_or((spec.clone(), String::new()), |(p, m)| {
            (p.to_owned(), m.to_owned())
        });
    let mut extra = std::collections::BTreeMap::new();
    if let Some(s) = &a.system {
        extra.insert("system".to_owned(), s.clone());
    }
    if let Some(t) = a.temperature {
        extra.insert("temperature".to_owned(), t.to_string());
    }
    if let Some(m) = a.max_output_tokens {
        extra.insert("max_output_tokens".to_owned(), m.to_string());
    }
    async_batch_llm::store::Identity {
        provider,
        model,
        prompt_version: a.prompt_version.clone().unwrap_or_default(),
        parser_version: schema
            .map(async_batch_llm::key_fingerprint)
            .unwrap_or_default(),
        app_version: a.app_version.clone().unwrap_or_default(),
        extra,
    }
}

fn open_checkpoint(
    a: &RunArgs,
    path: &Path,
    schema: Option<&str>,
) -> anyhow::Result<async_batch_llm::store::Checkpoint<Value>> {
    use async_batch_llm::store::{
        Checkpoint, CheckpointOptions, CheckpointStore, Durability, JsonlStore, SqliteStore,
    };
    let id = identity(a, schema);
    let fsync = a.checkpoint_fsync.unwrap_or(false);
    let store: Arc<dyn CheckpointStore> = if is_sqlite(path) {
        let durability = if fsync {
            Durability::Full
        } else {
            Durability::Normal
        };
        Arc::new(SqliteStore::open(path, &id, durability).map_err(|e| usage(e.to_string()))?)
    } else {
        let s = JsonlStore::open(path, &id, fsync).map_err(|e| usage(e.to_string()))?;
        if let Some(line) = s.repaired_line() {
            eprintln_safe(&format!(
                "abl: {}:{line}: cut off a torn last line (a crash mid-write); that item runs again",
                path.display()
            ));
        }
        Arc::new(s)
    };
    let resume = a
        .resume
        .as_deref()
        .unwrap_or("successes")
        .parse()
        .map_err(|e: String| usage(format!("--resume: {e}")))?;
    let options = CheckpointOptions {
        resume,
        store_inputs: a.store_inputs.unwrap_or(false),
        ..CheckpointOptions::default()
    };
    Checkpoint::new(store, &id, options).map_err(|e| usage(e.to_string()))
}

/// `abl checkpoint import`: copies a JSONL checkpoint into SQLite.
pub fn import(from: &Path, to: &Path) -> anyhow::Result<i32> {
    use async_batch_llm::store::{CheckpointStore, Durability, JsonlStore, SqliteStore};
    if !from.exists() {
        return Err(usage(format!("{}: no such checkpoint", from.display())));
    }
    let src = JsonlStore::open(from, &async_batch_llm::store::Identity::default(), false)
        .map_err(|e| usage(e.to_string()))?;
    let identity = src.manifest().map(|m| m.identity).unwrap_or_default();
    let dst =
        SqliteStore::open(to, &identity, Durability::Normal).map_err(|e| usage(e.to_string()))?;
    let mut batch = Vec::with_capacity(4096);
    let mut n = 0u64;
    src.for_each(&mut |r| {
        batch.push(async_batch_llm::store::EncodedRecord::new(&r)?);
        n += 1;
        if batch.len() == 4096 {
            dst.write_batch(&batch)?;
            batch.clear();
        }
        Ok(())
    })
    .map_err(|e| usage(e.to_string()))?;
    dst.write_batch(&batch).map_err(|e| usage(e.to_string()))?;
    eprintln!(
        "abl: imported {n} records from {} into {}",
        from.display(),
        to.display()
    );
    Ok(exit::OK)
}

/// Checks every line of a file before any call is spent; returns the count.
fn prescan(path: &str, format: Format, mapping: &Mapping) -> Result<u64, InputError> {
    let mut r = Reader::open(path, format, mapping.clone())?;
    let mut n = 0;
    while let Some(item) = r.next_item() {
        item?;
        n += 1;
    }
    Ok(n)
}

/// Runs `abl run`; returns the exit code.
#[allow(clippy::too_many_lines)]
pub async fn run(args: RunArgs) -> anyhow::Result<i32> {
    let a = resolve(args)?;
    let input = a
        .input
        .clone()
        .ok_or_else(|| usage("an INPUT file is required (or - for stdin)"))?;
    let format = a.format.unwrap_or_else(|| Format::detect(&input));
    let mapping = mapping(&a)?;
    let concurrency = a.concurrency.unwrap_or(64);
    if concurrency == 0 {
        return Err(usage("--concurrency must be at least 1"));
    }
    let total = if input == "-" {
        None
    } else {
        let path = input.clone();
        let m = mapping.clone();
        Some(
            tokio::task::spawn_blocking(move || prescan(&path, format, &m))
                .await?
                .map_err(|e| usage(e.to_string()))?,
        )
    };
    let mut schema_text = None;
    let schema = match &a.schema {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| usage(format!("{}: cannot read the schema: {e}", p.display())))?;
            schema_text = Some(text.clone());
            let v: Value = serde_json::from_str(&text)
                .map_err(|e| usage(format!("{}: not valid JSON: {e}", p.display())))?;
            if !v.is_object() {
                return Err(usage(format!(
                    "{}: a JSON schema must be an object",
                    p.display()
                )));
            }
            Some(v)
        }
        None => None,
    };
    let (model, _mock) = build_model(&a, concurrency)?;
    let scope_name =
        async_batch_llm::Model::quota_scope(&model).unwrap_or_else(|| "default".into());
    let validator = match schema.as_ref().filter(|_| !a.dry_run.unwrap_or(false)) {
        Some(s) => Some(
            async_batch_llm::structured::Validator::with_schema(ResponseSchema::new(
                "output",
                s.clone(),
            ))
            .map_err(|e| usage(format!("--schema: {e}")))?,
        ),
        None => None,
    };
    let mut strategy = ModelStrategy::new(model, CliParser { schema: validator });
    if let Some(s) = &a.system {
        strategy = strategy.with_system(s.clone());
    }
    if let Some(t) = a.temperature {
        strategy = strategy.with_temperature(t);
    }
    if let Some(m) = a.max_output_tokens {
        strategy = strategy.with_max_output_tokens(m);
    }
    if let Some(s) = schema {
        strategy = strategy.with_response_schema(s);
    }
    let defaults = BatchConfig::default();
    let cooldown = CooldownPolicy {
        default: secs(a.cooldown, "cooldown")?.unwrap_or(defaults.cooldown.default),
        max: secs(a.cooldown_max, "cooldown-max")?.unwrap_or(defaults.cooldown.max),
        ramp: match a.cooldown_ramp {
            Some(0.0) => Duration::ZERO,
            r => secs(r, "cooldown-ramp")?.unwrap_or(defaults.cooldown.ramp),
        },
        ..defaults.cooldown
    };
    let scopes = ScopeRegistry::new();
    let config = BatchConfig {
        concurrency,
        retry: RetryPolicy {
            max_attempts: a.max_attempts.unwrap_or(defaults.retry.max_attempts),
            max_rate_limit_retries: a
                .max_rate_limit_retries
                .unwrap_or(defaults.retry.max_rate_limit_retries),
            initial_backoff: secs(a.initial_backoff, "initial-backoff")?
                .unwrap_or(defaults.retry.initial_backoff),
            ..defaults.retry
        },
        cooldown,
        attempt_timeout: secs(a.attempt_timeout, "attempt-timeout")?
            .unwrap_or(defaults.attempt_timeout),
        item_deadline: secs(a.item_deadline, "item-deadline")?,
        batch_deadline: secs(a.batch_deadline, "batch-deadline")?,
        reorder_window: a
            .preserve_order
            .unwrap_or(false)
            .then_some(concurrency.saturating_mul(16).max(1024)),
        scope_max_concurrency: a.provider_concurrency,
        scopes: scopes.clone(),
        dry_run: a.dry_run.unwrap_or(false),
        ..defaults
    };
    let prices = prices(&a);
    let fail_fast = a
        .fail_fast
        .iter()
        .flatten()
        .map(|c| {
            c.trim().parse::<ErrorCategory>().map_err(|_| {
                let known: Vec<&str> = ErrorCategory::ALL.iter().map(|c| c.as_str()).collect();
                usage(format!(
                    "--fail-fast: unknown category {c:?} (known: {})",
                    known.join(", ")
                ))
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if a.max_cost.is_some() && prices.is_none() {
        return Err(usage("--max-cost needs --price-input and --price-output"));
    }
    let config = BatchConfig {
        limits: RateLimits {
            rpm: a.rpm,
            tpm: a.tpm,
            margin: secs(a.rate_margin, "rate-margin")?.unwrap_or(Duration::from_millis(500)),
        },
        estimator: Some(estimator(&a)?),
        budget: Budget {
            max_tokens: a.max_tokens,
            max_cost: a.max_cost,
            prices,
        },
        fail_fast,
        stop_mode: if a.stop_mode.as_deref() == Some("cancel") {
            StopMode::Cancel
        } else {
            StopMode::Drain
        },
        ..config
    };
    config.validate().map_err(|e| usage(e.to_string()))?;
    let scope = scopes.scope(&scope_name, &config.scope_settings());

    // Output before any call: an unwritable path is a usage error.
    let mut out: Box<dyn std::io::Write + Send> = match a.output.as_deref() {
        None | Some("-") => Box::new(std::io::BufWriter::new(std::io::stdout())),
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(Path::new(p))
                .map_err(|e| usage(format!("{p}: cannot create the output file: {e}")))?,
        )),
    };

    // Input: a reader thread feeds a bounded channel.
    let (tx, rx) = tokio::sync::mpsc::channel::<Item>(concurrency.max(64));
    let input_error: Arc<std::sync::Mutex<Option<InputError>>> = Arc::default();
    {
        let input_error = Arc::clone(&input_error);
        let path = input.clone();
        let mapping = mapping.clone();
        std::thread::Builder::new()
            .name("abl-input".into())
            .spawn(move || {
                let mut reader = match Reader::open(&path, format, mapping) {
                    Ok(r) => r,
                    Err(e) => {
                        *input_error
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e);
                        return;
                    }
                };
                while let Some(next) = reader.next_item() {
                    match next {
                        Ok(item) => {
                            if tx.blocking_send(item).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            *input_error
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e);
                            return;
                        }
                    }
                }
            })?;
    }
    let items =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|i| (i, rx)) });

    let started = Instant::now();
    let checkpoint = match &a.checkpoint {
        Some(path) => Some(Arc::new(open_checkpoint(&a, path, schema_text.as_deref())?)),
        None => None,
    };
    let extras = async_batch_llm::RunExtras {
        checkpoint,
        ..async_batch_llm::RunExtras::default()
    };
    let mut stream = async_batch_llm::process_stream_with(strategy, items, &config, extras)?;
    let stop = stream.stop_handle();
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let interrupted = Arc::clone(&interrupted);
        let stop = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                interrupted.store(true, Ordering::SeqCst);
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
    }

    let counters = Arc::new(Counters::default());
    let progress = Progress::new(
        Arc::clone(&counters),
        total,
        prices,
        a.no_progress.unwrap_or(false),
        secs(a.progress_interval, "progress-interval")?.unwrap_or(Duration::from_secs(5)),
    );
    let mut collector = SummaryCollector::default();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_line = Instant::now();
    let mut last_flush = Instant::now();
    let mut write_error: Option<std::io::Error> = None;
    loop {
        tokio::select! {
            next = stream.next() => {
                let Some(r) = next else { break };
                counters.add(r.is_ok(), r.usage);
                collector.add(&r);
                if write_error.is_none() {
                    let line = serde_json::to_string(&r).context("serializing a result")?;
                    if let Err(e) = writeln!(out, "{line}") {
                        // Keep draining so every call ends cleanly, then fail.
                        write_error = Some(e);
                        stop.stop();
                    }
                }
                if last_flush.elapsed() >= Duration::from_secs(1) {
                    let _ = out.flush();
                    last_flush = Instant::now();
                }
            }
            _ = tick.tick() => {
                let now = tokio::time::Instant::now();
                let left = scope.cooldown().active_until(now).map_or(0, |u| (u - now).as_millis() as u64);
                counters.cooldown_ms.store(left, Ordering::Relaxed);
                progress.tick(&mut last_line);
            }
        }
    }
    progress.finish();
    out.flush().context("flushing the output")?;
    if let Some(e) = write_error {
        bail!("cannot write the output: {e}");
    }
    let mut termination = stream.termination().unwrap_or_else(Termination::completed);
    let input_error = input_error.lock().map_or(None, |e| e.clone());
    if let Some(e) = &input_error {
        termination = Termination {
            reason: TerminationReason::Aborted,
            message: Some(format!("input error: {e}")),
            ..Termination::new(TerminationReason::Aborted)
        };
    }
    let mut collected = collector;
    collected.stats.cooldowns = stream.cooldowns();
    collected.stats.admission = stream.admission_stats();
    collected.stats.dry_run = config.dry_run;
    let summary = collected.finish(termination.clone(), started.elapsed());
    eprint!("{}", summary.render(prices.as_ref()));
    if let Some(total) = total
        && summary.stats.items < total
        && input_error.is_none()
    {
        eprintln!(
            "Not started: {} of {total} input items (the run stopped before reading them; they have no record)",
            total - summary.stats.items
        );
    }
    if let Some(p) = &a.summary_json {
        let json = serde_json::to_string_pretty(&summary)?;
        std::fs::write(p, json)
            .with_context(|| format!("{}: cannot write the summary", p.display()))?;
    }
    if let Some(e) = input_error {
        eprintln!("abl: error: {e}");
        eprintln!(
            "abl: stopped reading there; the {} items before it have their results",
            summary.stats.items
        );
        return Ok(exit::USAGE);
    }
    if interrupted.load(Ordering::SeqCst) {
        return Ok(exit::INTERRUPTED);
    }
    Ok(match termination.reason {
        TerminationReason::Completed if summary.stats.failed == 0 => exit::OK,
        TerminationReason::Completed => exit::SOME_FAILED,
        TerminationReason::Aborted => exit::INTERRUPTED,
        _ => exit::GUARDRAIL,
    })
}

/// `abl summary FILE`: the summary of an output file or a checkpoint.
pub fn summary(file: &Path, summary_json: Option<&Path>) -> anyhow::Result<i32> {
    use async_batch_llm::store::{CheckpointStore, JsonlStore, SqliteStore};
    use std::io::BufRead as _;
    let mut c = SummaryCollector::default();
    let first_line = if is_sqlite(file) {
        None
    } else {
        let f = std::fs::File::open(file)
            .map_err(|e| usage(format!("{}: cannot open: {e}", file.display())))?;
        let mut first = String::new();
        std::io::BufReader::new(f)
            .read_line(&mut first)
            .map_err(|e| usage(format!("{}:1: cannot read: {e}", file.display())))?;
        Some(first)
    };
    let is_jsonl_checkpoint = first_line
        .as_deref()
        .is_some_and(|l| l.contains(async_batch_llm::store::CHECKPOINT_SCHEMA));
    if is_sqlite(file) || is_jsonl_checkpoint {
        let store: Box<dyn CheckpointStore> = if is_sqlite(file) {
            Box::new(SqliteStore::open_read_only(file).map_err(|e| usage(e.to_string()))?)
        } else {
            Box::new(
                JsonlStore::open(file, &async_batch_llm::store::Identity::default(), false)
                    .map_err(|e| usage(e.to_string()))?,
            )
        };
        store
            .for_each(&mut |r| {
                c.add(&r.result);
                Ok(())
            })
            .map_err(|e| usage(e.to_string()))?;
        if let Some(m) = store.manifest() {
            println!(
                "Checkpoint of {}:{} (prompt version {:?}), made by {}",
                m.identity.provider, m.identity.model, m.identity.prompt_version, m.tool_version
            );
        }
    } else {
        let f = std::fs::File::open(file)
            .map_err(|e| usage(format!("{}: cannot open: {e}", file.display())))?;
        for (n, line) in std::io::BufReader::new(f).lines().enumerate() {
            let line =
                line.map_err(|e| usage(format!("{}:{}: cannot read: {e}", file.display(), n + 1)))?;
            if line.trim().is_empty() {
                continue;
            }
            let r: async_batch_llm::ItemResult<Value> =
                serde_json::from_str(&line).map_err(|e| {
                    usage(format!(
                        "{}:{}: not a result record: {e}",
                        file.display(),
                        n + 1
                    ))
                })?;
            c.add(&r);
        }
    }
    let s = c.finish(Termination::completed(), Duration::ZERO);
    print!("{}", s.render(None));
    if let Some(p) = summary_json {
        std::fs::write(p, serde_json::to_string_pretty(&s)?)
            .with_context(|| format!("{}: cannot write", p.display()))?;
    }
    Ok(if s.stats.failed > 0 {
        exit::SOME_FAILED
    } else {
        exit::OK
    })
}
