//! The one settings layer: raw [`RunArgs`] (flags, environment, TOML) →
//! a typed, validated [`RunPlan`]. Pure: it reads no file and opens no
//! connection, so every rule is unit-tested here. Every number is checked
//! (finite, in range, durations capped at the documented maxima) and a bad
//! value is a [`UsageError`] naming the flag, whichever of the three
//! sources it came from.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_batch_llm::providers::ModelSpec;
use async_batch_llm::store::ResumePolicy;
use async_batch_llm::{
    BatchConfig, Budget, CooldownPolicy, ErrorCategory, Prices, RateLimits, RetryPolicy, StopMode,
};

use crate::cli::{EstimatorArg, RateHeadersArg, ResumeArg, RunArgs, StopModeArg};
use crate::exit::UsageError;
use crate::input::{Format, Mapping, Template};

/// One day, in seconds.
const DAY: f64 = 86_400.0;

/// Where items come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputSource {
    /// Standard input (JSONL unless `--format` says otherwise).
    Stdin,
    /// A file.
    File(PathBuf),
}

/// The mock provider's settings, for `--model mock:MODE`.
#[derive(Debug, Clone)]
pub struct MockPlan {
    /// `echo`, `upper` or `fixed`.
    pub mode: String,
    /// The server's configuration.
    pub config: abl_mock::MockConfig,
}

/// Which model answers.
#[derive(Debug, Clone)]
pub enum ModelChoice {
    /// The built-in mock over loopback HTTP.
    Mock(Box<MockPlan>),
    /// A real provider.
    Provider {
        /// `provider:model`.
        spec: ModelSpec,
        /// `--base-url`.
        base_url: Option<String>,
        /// `--api-key-file`.
        api_key_file: Option<PathBuf>,
    },
}

/// The checkpoint settings.
#[derive(Debug, Clone)]
pub struct CheckpointPlan {
    /// The file.
    pub path: PathBuf,
    /// What a rerun reuses.
    pub resume: ResumePolicy,
    /// Store prompts and contexts too.
    pub store_inputs: bool,
    /// Durable against power loss.
    pub fsync: bool,
}

/// What the user asked the model for: the parts of the run's identity
/// besides the model.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Request {
    /// `--system`.
    pub system: Option<String>,
    /// `--temperature`.
    pub temperature: Option<f32>,
    /// `--max-output-tokens`.
    pub max_output_tokens: Option<u32>,
    /// `--schema` (read and checked by the run, not here).
    pub schema: Option<PathBuf>,
    /// `--prompt-version`.
    pub prompt_version: String,
    /// `--app-version`.
    pub app_version: String,
}

impl Request {
    /// What every call carries (the schema is added by the structured
    /// strategy).
    pub fn defaults(&self) -> async_batch_llm::RequestDefaults {
        async_batch_llm::RequestDefaults {
            system: self.system.clone(),
            temperature: self.temperature,
            max_output_tokens: self.max_output_tokens,
            ..async_batch_llm::RequestDefaults::default()
        }
    }
}

/// Engine settings, validated.
#[derive(Debug, Clone)]
pub struct EnginePlan {
    /// Workers.
    pub concurrency: usize,
    /// Retry budgets and backoff.
    pub retry: RetryPolicy,
    /// Cooldowns.
    pub cooldown: CooldownPolicy,
    /// Attempt timeout.
    pub attempt_timeout: Duration,
    /// Item deadline.
    pub item_deadline: Option<Duration>,
    /// Batch deadline.
    pub batch_deadline: Option<Duration>,
    /// Input-order output.
    pub preserve_order: bool,
    /// Provider concurrency gate.
    pub provider_concurrency: Option<usize>,
    /// Dry run.
    pub dry_run: bool,
    /// RPM / TPM.
    pub limits: RateLimits,
    /// Adaptive concurrency while no limit is known.
    pub adaptive: bool,
    /// Token estimator.
    pub estimator: EstimatorArg,
    /// Output tokens expected per call.
    pub expected_output_tokens: u64,
    /// Token and cost budgets.
    pub budget: Budget,
    /// Fail-fast categories.
    pub fail_fast: Vec<ErrorCategory>,
    /// Drain or cancel on a stop.
    pub stop_mode: StopMode,
}

impl EnginePlan {
    /// The library configuration (with a scope registry of its own).
    pub fn batch_config(&self) -> BatchConfig {
        BatchConfig {
            concurrency: self.concurrency,
            retry: self.retry,
            cooldown: self.cooldown,
            attempt_timeout: self.attempt_timeout,
            item_deadline: self.item_deadline,
            batch_deadline: self.batch_deadline,
            reorder_window: self
                .preserve_order
                .then_some(self.concurrency.saturating_mul(16).max(1024)),
            scope_max_concurrency: self.provider_concurrency,
            dry_run: self.dry_run,
            limits: self.limits,
            adaptive: self.adaptive,
            budget: self.budget.clone(),
            fail_fast: self.fail_fast.clone(),
            stop_mode: self.stop_mode,
            ..BatchConfig::default()
        }
    }
}

/// How `--via batch-api` runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchApiPlan {
    /// The first wait between status checks.
    pub poll: Duration,
    /// Most requests in one job.
    pub job_items: usize,
    /// Requests a job could not run finish online (else one more job).
    pub fallback_online: bool,
}

/// Everything `abl run` will do, validated.
#[derive(Debug, Clone)]
pub struct RunPlan {
    /// The input.
    pub input: InputSource,
    /// `--via batch-api`: the provider's batch API instead of online calls.
    pub batch_api: Option<BatchApiPlan>,
    /// Its format.
    pub format: Format,
    /// How records become items.
    pub mapping: Mapping,
    /// The output file; `None` is stdout.
    pub output: Option<PathBuf>,
    /// The model.
    pub model: ModelChoice,
    /// The `provider:model` text as given (for the identity).
    pub model_text: String,
    /// What is asked of the model.
    pub request: Request,
    /// Engine settings.
    pub engine: EnginePlan,
    /// Prices for the cost shown.
    pub prices: Option<Prices>,
    /// Where they came from.
    pub price_source: PriceSource,
    /// The checkpoint.
    pub checkpoint: Option<CheckpointPlan>,
    /// `--shard`: the part of the input this run takes.
    pub shard: Option<async_batch_llm::Shard>,
    /// `--shared-limits`: the Redis URL.
    pub shared_limits: Option<String>,
    /// `--shared-limits-fallback`.
    pub shared_fallback: async_batch_llm::SharedFallback,
    /// `--summary-json`.
    pub summary_json: Option<PathBuf>,
    /// `--config`.
    pub config_file: Option<PathBuf>,
    /// Never draw a bar.
    pub no_progress: bool,
    /// Plain progress line interval.
    pub progress_interval: Duration,
}

type Result<T> = std::result::Result<T, UsageError>;

fn err(msg: impl Into<String>) -> UsageError {
    UsageError(msg.into())
}

/// A number of seconds in `[0.001, max]` (or `[0, max]` when `zero_ok`).
fn seconds(flag: &str, v: Option<f64>, max: f64, zero_ok: bool) -> Result<Option<Duration>> {
    let Some(s) = v else { return Ok(None) };
    let low = if zero_ok { 0.0 } else { 0.001 };
    if !(s.is_finite() && s >= low && s <= max) {
        return Err(err(format!(
            "--{flag} must be a number of seconds from {low} to {max}, got {s}"
        )));
    }
    Ok(async_batch_llm::secs_f64(s))
}

/// An integer in `[min, max]`.
fn within<T: Copy + PartialOrd + std::fmt::Display>(
    flag: &str,
    v: Option<T>,
    min: T,
    max: T,
) -> Result<Option<T>> {
    match v {
        Some(n) if n < min || n > max => Err(err(format!(
            "--{flag} must be from {min} to {max}, got {n}"
        ))),
        other => Ok(other),
    }
}

/// A finite number in `[min, max]`.
fn number(flag: &str, v: Option<f64>, min: f64, max: f64) -> Result<Option<f64>> {
    match v {
        Some(n) if !(n.is_finite() && (min..=max).contains(&n)) => Err(err(format!(
            "--{flag} must be a number from {min} to {max}, got {n}"
        ))),
        other => Ok(other),
    }
}

/// `--shared-limits-fallback pause|local:N`.
fn shared_fallback(a: &RunArgs) -> Result<async_batch_llm::SharedFallback> {
    use async_batch_llm::SharedFallback;
    let Some(text) = a.shared_limits_fallback.as_deref().map(str::trim) else {
        return Ok(SharedFallback::Pause);
    };
    if a.shared_limits.is_none() {
        return Err(err("--shared-limits-fallback needs --shared-limits"));
    }
    if text == "pause" {
        return Ok(SharedFallback::Pause);
    }
    match text.strip_prefix("local:").map(str::parse::<u32>) {
        Some(Ok(n)) if (1..=100_000).contains(&n) => Ok(SharedFallback::LocalShare(n)),
        _ => Err(err(format!(
            "--shared-limits-fallback is pause or local:N (N processes expected, 1 to 100000), not {text:?}"
        ))),
    }
}

fn mapping(a: &RunArgs, input: &InputSource) -> Result<Mapping> {
    let attach = a.attach.clone().unwrap_or_default();
    // With attachments, one fixed question for every file is the point.
    let parse = if attach.is_empty() {
        Template::parse
    } else {
        Template::parse_fixed
    };
    let template = match &a.template {
        Some(t) => Some(parse(t).map_err(|e| err(format!("--template: {e}")))?),
        None => None,
    };
    for (flag, v) in [("id-field", &a.id_field), ("prompt-field", &a.prompt_field)] {
        if v.as_deref().is_some_and(|f| f.trim().is_empty()) {
            return Err(err(format!("--{flag} must not be empty")));
        }
    }
    if attach.iter().any(|f| f.trim().is_empty()) {
        return Err(err("--attach names a field and must not be empty"));
    }
    let base_dir = match input {
        InputSource::File(p) => p.parent().map(Path::to_path_buf),
        InputSource::Stdin => None,
    };
    Ok(Mapping {
        id_field: a.id_field.clone().unwrap_or_else(|| "id".into()),
        id_field_required: a.id_field.is_some(),
        prompt_field: a.prompt_field.clone().unwrap_or_else(|| "prompt".into()),
        template,
        attach,
        base_dir,
    })
}

/// `--via` and the batch-API flags, checked against the rest.
fn batch_api(
    a: &RunArgs,
    checkpoint: Option<&CheckpointPlan>,
    model: &ModelChoice,
) -> Result<Option<BatchApiPlan>> {
    if a.via != Some(crate::cli::ViaArg::BatchApi) {
        for (flag, given) in [
            ("batch-poll-secs", a.batch_poll_secs.is_some()),
            ("batch-job-items", a.batch_job_items.is_some()),
            ("batch-fallback", a.batch_fallback.is_some()),
        ] {
            if given {
                return Err(err(format!("--{flag} needs --via batch-api")));
            }
        }
        return Ok(None);
    }
    let sqlite = checkpoint.is_some_and(|c| {
        c.path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("sqlite") || e.eq_ignore_ascii_case("db"))
    });
    if !sqlite {
        return Err(err(
            "--via batch-api needs --checkpoint FILE.sqlite: the jobs submitted are recorded there, so a run that stops can reattach to them instead of paying twice",
        ));
    }
    let provider = match model {
        // The mock serves OpenAI's batch API.
        ModelChoice::Mock(_) => async_batch_llm::batch_api::BatchProvider::OpenAi,
        ModelChoice::Provider { spec, .. } => async_batch_llm::batch_api::BatchProvider::of(
            spec.provider,
        )
        .ok_or_else(|| {
            err(format!(
                "--via batch-api: {}: has no batch API (openai:, anthropic: and gemini: have one)",
                spec.provider.prefix()
            ))
        })?,
    };
    if a.dry_run == Some(true) {
        return Err(err(
            "--via batch-api and --dry-run: a dry run calls nothing either way; drop --via",
        ));
    }
    let poll = a.batch_poll_secs.unwrap_or(30.0);
    if !(poll.is_finite() && (0.05..=3600.0).contains(&poll)) {
        return Err(err(format!(
            "--batch-poll-secs must be from 0.05 to 3600, got {poll}"
        )));
    }
    let most = provider.limits().max_requests;
    let job_items = a.batch_job_items.unwrap_or(most);
    if !(1..=most).contains(&job_items) {
        return Err(err(format!(
            "--batch-job-items must be from 1 to {most} ({}'s limit), got {job_items}",
            provider.name()
        )));
    }
    Ok(Some(BatchApiPlan {
        poll: Duration::from_secs_f64(poll),
        job_items,
        fallback_online: a.batch_fallback == Some(crate::cli::BatchFallbackArg::Online),
    }))
}

fn mock(a: &RunArgs, mode: &str) -> Result<MockPlan> {
    let reply = match mode {
        "echo" => abl_mock::ReplyMode::Echo,
        "upper" => abl_mock::ReplyMode::Upper,
        "fixed" => abl_mock::ReplyMode::Fixed,
        other => {
            return Err(err(format!(
                "--model mock:{other}: unknown mock mode (echo, upper, fixed)"
            )));
        }
    };
    let hint = match &a.mock_hint_429 {
        Some(h) => h
            .parse()
            .map_err(|e: String| err(format!("--mock-hint-429: {e}")))?,
        None => abl_mock::Hint::RetryAfter(Duration::from_secs(1)),
    };
    let rate = |flag: &str, v| number(flag, v, 0.0, 1.0).map(Option::unwrap_or_default);
    let ms = |flag: &str, v| within(flag, v, 0, 3_600_000).map(Option::unwrap_or_default);
    let config = abl_mock::MockConfig {
        reply,
        latency_ms: ms("mock-latency-ms", a.mock_latency_ms)?,
        jitter_ms: ms("mock-jitter-ms", a.mock_jitter_ms)?,
        fault_429: rate("mock-fault-429", a.mock_fault_429)?,
        hint_429: hint,
        fault_500: rate("mock-fault-500", a.mock_fault_500)?,
        fault_503: rate("mock-fault-503", a.mock_fault_503)?,
        seed: a.mock_seed.unwrap_or(0),
        rpm: number("mock-rpm", a.mock_rpm, 1e-3, 1e9)?,
        tpm: within("mock-tpm", a.mock_tpm, 1, 1_000_000_000_000)?,
        quota_window_secs: number(
            "mock-quota-window-secs",
            a.mock_quota_window_secs,
            1e-3,
            DAY,
        )?,
        rate_headers: match a.mock_rate_headers {
            Some(RateHeadersArg::Remaining) => abl_mock::RateHeaders::Remaining,
            Some(RateHeadersArg::None) => abl_mock::RateHeaders::None,
            Some(RateHeadersArg::Full) | None => abl_mock::RateHeaders::Full,
        },
        ..abl_mock::MockConfig::default()
    };
    config
        .validate()
        .map_err(|e| err(format!("--mock-fault-*: {e}")))?;
    Ok(MockPlan {
        mode: mode.to_owned(),
        config,
    })
}

fn model(a: &RunArgs) -> Result<(ModelChoice, String)> {
    let text = a.model.clone().ok_or_else(|| {
        err("--model is required, e.g. --model openai:gpt-4o-mini or --model mock:echo")
    })?;
    if let Some(mode) = text.strip_prefix("mock:") {
        return Ok((ModelChoice::Mock(Box::new(mock(a, mode)?)), text));
    }
    let spec: ModelSpec = text.parse().map_err(|e| err(format!("--model: {e}")))?;
    Ok((
        ModelChoice::Provider {
            spec,
            base_url: a.base_url.clone(),
            api_key_file: a.api_key_file.clone(),
        },
        text,
    ))
}

/// Where a run's prices come from.
#[derive(Debug, Clone, PartialEq)]
pub enum PriceSource {
    /// `--price-*`.
    Flags,
    /// The built-in list, as of a day.
    List {
        /// The listed model name.
        model: String,
        /// The day of the list.
        as_of: String,
    },
    /// A real model the list does not know: no cost is shown.
    Unknown(String),
    /// The mock: nothing is paid.
    Mock,
}

impl PriceSource {
    /// The line the summary prints about prices, if any.
    pub fn note(&self) -> Option<String> {
        match self {
            Self::Flags | Self::Mock => None,
            Self::List { model, as_of } => Some(format!(
                "Prices: list prices of {model} as of {as_of}; pass --price-input/--price-output to override"
            )),
            Self::Unknown(model) => Some(format!(
                "Cost: not shown, no list price for {model}; pass --price-input/--price-output"
            )),
        }
    }
}

/// The built-in list price of a provider's model.
fn list_price(model: &ModelChoice) -> (Option<Prices>, PriceSource) {
    let ModelChoice::Provider { spec, .. } = model else {
        return (None, PriceSource::Mock);
    };
    let list = async_batch_llm::PriceList::builtin();
    match list.lookup(spec.provider.prefix(), &spec.model) {
        Some(p) => (
            Some(p.prices),
            PriceSource::List {
                model: p.model.clone(),
                as_of: list.as_of.clone(),
            },
        ),
        None => (None, PriceSource::Unknown(spec.model.clone())),
    }
}

fn prices(a: &RunArgs) -> Result<Option<Prices>> {
    let price = |flag, v| number(flag, v, 0.0, 1e6);
    let input = price("price-input", a.price_input)?;
    let output = price("price-output", a.price_output)?;
    let cached = price("price-cached-input", a.price_cached_input)?;
    Ok(match (input, output) {
        (None, None) if cached.is_none() => None,
        (input, output) => {
            let p = Prices::new(input.unwrap_or(0.0), output.unwrap_or(0.0));
            Some(match cached {
                Some(c) => p.with_cached_input(c),
                None => p,
            })
        }
    })
}

fn fail_fast(a: &RunArgs) -> Result<Vec<ErrorCategory>> {
    a.fail_fast
        .iter()
        .flatten()
        .map(|c| {
            c.trim().parse::<ErrorCategory>().map_err(|_| {
                let known: Vec<&str> = ErrorCategory::ALL.iter().map(|c| c.as_str()).collect();
                err(format!(
                    "--fail-fast: unknown category {c:?} (known: {})",
                    known.join(", ")
                ))
            })
        })
        .collect()
}

#[allow(clippy::too_many_lines)]
fn engine(a: &RunArgs, prices: Option<Prices>) -> Result<EnginePlan> {
    let d = BatchConfig::default();
    let concurrency = within("concurrency", a.concurrency, 1, 100_000)?.unwrap_or(64);
    let cooldown = CooldownPolicy {
        default: seconds("cooldown", a.cooldown, 3600.0, false)?.unwrap_or(d.cooldown.default),
        max: seconds("cooldown-max", a.cooldown_max, DAY, false)?.unwrap_or(d.cooldown.max),
        ..d.cooldown
    };
    let retry = RetryPolicy {
        max_attempts: within("max-attempts", a.max_attempts, 1, 100)?
            .unwrap_or(d.retry.max_attempts),
        max_rate_limit_retries: within(
            "max-rate-limit-retries",
            a.max_rate_limit_retries,
            0,
            10_000,
        )?
        .unwrap_or(d.retry.max_rate_limit_retries),
        initial_backoff: seconds("initial-backoff", a.initial_backoff, 3600.0, false)?
            .unwrap_or(d.retry.initial_backoff),
        ..d.retry
    };
    let limits = RateLimits {
        rpm: number(
            "rpm",
            a.rpm,
            async_batch_llm::MIN_RPM,
            async_batch_llm::MAX_RPM,
        )?,
        tpm: within("tpm", a.tpm, 1, 1_000_000_000_000)?,
        margin: seconds("rate-margin", a.rate_margin, 60.0, true)?
            .unwrap_or(Duration::from_millis(500)),
    };
    let max_cost = number("max-cost", a.max_cost, 0.0, 1e12)?;
    if max_cost.is_some() && prices.is_none() {
        return Err(err(
            "--max-cost needs prices: this model has no list price, pass --price-input and --price-output",
        ));
    }
    Ok(EnginePlan {
        concurrency,
        retry,
        cooldown,
        attempt_timeout: seconds("attempt-timeout", a.attempt_timeout, DAY, false)?
            .unwrap_or(d.attempt_timeout),
        item_deadline: seconds("item-deadline", a.item_deadline, 30.0 * DAY, false)?,
        batch_deadline: seconds("batch-deadline", a.batch_deadline, 366.0 * DAY, false)?,
        preserve_order: a.preserve_order.unwrap_or(false),
        provider_concurrency: within("provider-concurrency", a.provider_concurrency, 1, 100_000)?,
        dry_run: a.dry_run.unwrap_or(false),
        limits,
        adaptive: !a.no_adaptive.unwrap_or(false),
        estimator: a.token_estimator.unwrap_or(EstimatorArg::Chars),
        // Without --expected-output-tokens, a call is expected to use the
        // output it is allowed (--max-output-tokens), else 256.
        expected_output_tokens: within(
            "expected-output-tokens",
            a.expected_output_tokens,
            0,
            10_000_000,
        )?
        .or(a.max_output_tokens.map(u64::from))
        .unwrap_or(256),
        budget: Budget {
            max_tokens: within("max-tokens", a.max_tokens, 1, u64::MAX)?,
            max_cost,
            prices,
        },
        fail_fast: fail_fast(a)?,
        stop_mode: match a.stop_mode {
            Some(StopModeArg::Cancel) => StopMode::Cancel,
            Some(StopModeArg::Drain) | None => StopMode::Drain,
        },
    })
}

impl RunPlan {
    /// Validates every setting of `args` (already layered: flags over
    /// environment over the TOML file).
    pub fn new(a: &RunArgs) -> Result<Self> {
        let input_text = a
            .input
            .clone()
            .ok_or_else(|| err("an INPUT file is required (or - for stdin)"))?;
        let input = if input_text == "-" {
            InputSource::Stdin
        } else {
            InputSource::File(PathBuf::from(&input_text))
        };
        let format = a.format.unwrap_or_else(|| Format::detect(&input_text));
        let (model, model_text) = model(a)?;
        let (prices, price_source) = match prices(a)? {
            Some(p) => (Some(p), PriceSource::Flags),
            None => list_price(&model),
        };
        let engine = engine(a, prices)?;
        let temperature = match a.temperature {
            Some(t) if !(t.is_finite() && (0.0..=2.0).contains(&t)) => {
                return Err(err(format!(
                    "--temperature must be a number from 0 to 2, got {t}"
                )));
            }
            t => t,
        };
        let request = Request {
            system: a.system.clone().filter(|s| !s.trim().is_empty()),
            temperature,
            max_output_tokens: within("max-output-tokens", a.max_output_tokens, 1, u32::MAX)?,
            schema: a.schema.clone(),
            prompt_version: a.prompt_version.clone().unwrap_or_default(),
            app_version: a.app_version.clone().unwrap_or_default(),
        };
        let checkpoint = a.checkpoint.clone().map(|path| CheckpointPlan {
            path,
            resume: match a.resume {
                Some(ResumeArg::None) => ResumePolicy::None,
                Some(ResumeArg::All) => ResumePolicy::All,
                Some(ResumeArg::Successes) | None => ResumePolicy::Successes,
            },
            store_inputs: a.store_inputs.unwrap_or(false),
            fsync: a.checkpoint_fsync.unwrap_or(false),
        });
        if checkpoint.is_none() {
            for (flag, given) in [
                ("resume", a.resume.is_some()),
                ("store-inputs", a.store_inputs.is_some()),
                ("checkpoint-fsync", a.checkpoint_fsync.is_some()),
            ] {
                if given {
                    return Err(err(format!("--{flag} needs --checkpoint")));
                }
            }
        }
        let mapping = mapping(a, &input)?;
        let batch_api = batch_api(a, checkpoint.as_ref(), &model)?;
        Ok(Self {
            input,
            batch_api,
            format,
            mapping,
            output: a.output.as_deref().filter(|o| *o != "-").map(PathBuf::from),
            model,
            model_text,
            request,
            engine,
            prices,
            price_source,
            checkpoint,
            shard: a
                .shard
                .as_deref()
                .map(|s| async_batch_llm::Shard::parse(s).map_err(|e| err(format!("--shard: {e}"))))
                .transpose()?,
            shared_limits: match a.shared_limits.as_deref().map(str::trim) {
                None => None,
                Some(u) if u.starts_with("redis://") || u.starts_with("rediss://") => {
                    Some(u.to_owned())
                }
                Some(_) => {
                    return Err(err(
                        "--shared-limits takes a Redis URL: redis://HOST:PORT/DB (or rediss:// for TLS)",
                    ));
                }
            },
            shared_fallback: shared_fallback(a)?,
            summary_json: a.summary_json.clone(),
            config_file: a.config.clone(),
            no_progress: a.no_progress.unwrap_or(false),
            progress_interval: seconds("progress-interval", a.progress_interval, DAY, false)?
                .unwrap_or(Duration::from_secs(5)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> RunArgs {
        use clap::Parser as _;
        let mut argv = vec!["abl", "run", "in.jsonl", "--model", "mock:echo"];
        argv.extend_from_slice(extra);
        match crate::cli::Cli::try_parse_from(argv).map(|c| c.command) {
            Ok(crate::cli::Command::Run(a)) => *a,
            other => panic!("{other:?}"),
        }
    }

    fn plan(extra: &[&str]) -> Result<RunPlan> {
        RunPlan::new(&args(extra))
    }

    #[test]
    fn absurd_numbers_are_usage_errors_naming_the_flag() {
        for (flag, value) in [
            ("--attempt-timeout", "1e308"),
            ("--cooldown", "1e308"),
            ("--item-deadline", "1e308"),
            ("--batch-deadline", "1e308"),
            ("--initial-backoff", "1e308"),
            ("--cooldown-max", "inf"),
            ("--cooldown-max", "-1"),
            ("--rpm", "1e-300"),
            ("--rpm", "NaN"),
            ("--concurrency", "18446744073709551615"),
            ("--concurrency", "0"),
            ("--temperature", "nan"),
            ("--temperature", "5"),
            ("--max-output-tokens", "0"),
            ("--max-attempts", "0"),
            ("--price-input", "-1"),
            ("--progress-interval", "0"),
            ("--mock-fault-429", "1.5"),
        ] {
            let e = plan(&[&format!("{flag}={value}")]).unwrap_err().0;
            assert!(e.contains(flag), "{flag} {value}: {e}");
        }
        let p = plan(&["--attempt-timeout", "30", "--rpm", "0.5", "--no-adaptive"]).unwrap();
        assert_eq!(p.engine.attempt_timeout, Duration::from_secs(30));
        assert_eq!(p.engine.limits.rpm, Some(0.5));
        assert!(!p.engine.adaptive);
        assert!(plan(&[]).unwrap().engine.adaptive);
        assert!(p.engine.batch_config().validate().is_ok());
    }

    #[test]
    fn checkpoint_options_without_a_checkpoint_and_max_cost_without_prices_are_refused() {
        assert!(
            plan(&["--resume", "all"])
                .unwrap_err()
                .0
                .contains("--checkpoint")
        );
        assert!(
            plan(&["--max-cost", "1"])
                .unwrap_err()
                .0
                .contains("--price-input")
        );
        assert!(
            plan(&["--fail-fast", "nope"])
                .unwrap_err()
                .0
                .contains("nope")
        );
        assert!(
            plan(&["--id-field", " "])
                .unwrap_err()
                .0
                .contains("--id-field")
        );
        let p = plan(&["--id-field", "key", "-o", "-"]).unwrap();
        assert!(p.mapping.id_field_required);
        assert_eq!(p.output, None);
    }

    proptest::proptest! {
        /// Any number, finite or not, given to any numeric flag: a plan
        /// whose engine configuration is valid, or a usage error naming the
        /// flag. Never a panic.
        #[test]
        fn every_numeric_flag_takes_any_number_without_panicking(
            which in 0usize..17,
            value in proptest::prop_oneof![
                proptest::num::f64::ANY,
                proptest::num::f64::POSITIVE | proptest::num::f64::SUBNORMAL,
                (0.0f64..1e6),
                proptest::strategy::Just(f64::INFINITY),
                proptest::strategy::Just(f64::NAN),
                proptest::strategy::Just(1e308),
                proptest::strategy::Just(1e-300),
            ],
        ) {
            let flags = [
                "--attempt-timeout", "--item-deadline", "--batch-deadline", "--initial-backoff",
                "--cooldown", "--cooldown-max", "--rate-margin", "--rpm", "--rate-margin",
                "--max-cost", "--price-input", "--price-output", "--price-cached-input",
                "--progress-interval", "--temperature", "--mock-fault-429", "--mock-rpm",
            ];
            let flag = flags[which];
            let text = format!("{flag}={value}");
            let mut extra = vec![text.as_str()];
            if flag == "--max-cost" {
                extra.extend(["--price-input", "1"]);
            }
            match plan(&extra) {
                Ok(p) => proptest::prop_assert!(
                    p.engine.batch_config().validate().is_ok()
                ),
                Err(e) => proptest::prop_assert!(e.0.contains(flag), "{}", e.0),
            }
        }

        /// Any integer for the integer flags: valid or a usage error.
        #[test]
        fn every_integer_flag_takes_any_integer_without_panicking(
            which in 0usize..8,
            value in proptest::num::u64::ANY,
        ) {
            let flags = [
                "--concurrency", "--max-attempts", "--max-rate-limit-retries", "--tpm",
                "--expected-output-tokens", "--max-tokens", "--provider-concurrency",
                "--max-output-tokens",
            ];
            let flag = flags[which];
            let text = format!("{flag}={value}");
            let parsed = {
                use clap::Parser as _;
                crate::cli::Cli::try_parse_from(["abl", "run", "x", "--model", "mock:echo", &text])
            };
            // Too large for the flag's type: clap's own usage error.
            let Ok(crate::cli::Cli { command: crate::cli::Command::Run(a), .. }) = parsed else {
                return Ok(());
            };
            match RunPlan::new(&a) {
                Ok(p) => proptest::prop_assert!(
                    p.engine.batch_config().validate().is_ok()
                ),
                Err(e) => proptest::prop_assert!(e.0.contains(flag), "{}", e.0),
            }
        }
    }
}
