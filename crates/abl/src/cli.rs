//! Command-line arguments as the user typed them: raw values, checked only
//! for their syntax. Every `run` setting can also come from the environment
//! (`ABL_` and the flag's name in capitals, `-` as `_`) or a TOML file
//! (`--config`, the flags' long names as keys); flags win over the
//! environment, which wins over the file. [`crate::settings`] turns them
//! into one validated [`crate::settings::RunPlan`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

use crate::input::Format;

/// Run thousands to millions of LLM calls from a data file, unattended.
#[derive(Debug, Parser)]
#[command(name = "abl", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// More log output (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a batch: a data file in, one JSONL record per item out.
    Run(Box<RunArgs>),
    /// Checkpoint tools.
    #[command(subcommand)]
    Checkpoint(CheckpointCommand),
    /// Jobs of a `--via batch-api` run: their state, or cancel them.
    #[command(subcommand)]
    Batch(BatchCommand),
    /// Run the mock provider as a standalone server.
    MockServer(Box<abl_mock::MockConfig>),
    /// Print the summary of an output file or a checkpoint (every identity it holds).
    Summary {
        /// An output JSONL file written by `abl run`, or a checkpoint (.jsonl or .sqlite).
        file: PathBuf,
        /// Also write the summary as JSON to this file.
        #[arg(long)]
        summary_json: Option<PathBuf>,
    },
    /// Join the outputs of a job's shards (`abl run --shard K/N`) into one,
    /// checking that no id is in two of them and, with --input, that every
    /// input id is in exactly one. OUTPUT is left as it was when a check fails.
    Merge {
        /// The merged output file (replaced atomically).
        #[arg(short, long)]
        output: PathBuf,
        /// The job's input: every id in it must be in exactly one shard's output.
        #[arg(long)]
        input: Option<PathBuf>,
        /// The input's id field, as given to `abl run` (default: id).
        #[arg(long)]
        id_field: Option<String>,
        /// The shards' output files.
        #[arg(required = true, value_name = "SHARD_OUTPUT")]
        files: Vec<PathBuf>,
    },
    /// Embed every item: one vector per item, many items per request
    /// (packed to the provider's limits), with cooldowns, limits, retries
    /// and checkpoints as for `abl run`.
    Embed(Box<EmbedArgs>),
    /// Write a report of a run as one self-contained HTML page: the summary,
    /// throughput, calls in flight, cooldowns and 429s over time, latency and
    /// waiting, tokens and cost, failures. Works on a run still going.
    Report {
        /// A checkpoint (.sqlite or .jsonl; the fullest report) or an output
        /// JSONL file of `abl run` (or its .abl-partial while it runs).
        file: PathBuf,
        /// The HTML file to write (replaced atomically).
        #[arg(short, long, value_name = "REPORT.html")]
        output: PathBuf,
    },
}

/// Settings of `abl embed`.
#[derive(Debug, Clone, Args)]
pub struct EmbedArgs {
    /// Input file (JSONL, CSV with a header, or text), or - for stdin.
    #[arg(value_name = "INPUT")]
    pub input: String,
    /// Output JSONL file (default: stdout); `output` is the vector.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// openai:MODEL (any OpenAI-compatible server with --base-url),
    /// gemini:MODEL (gemini-embedding-001), or mock:embed (keyless,
    /// deterministic vectors).
    #[arg(short, long, default_value = "openai:text-embedding-3-small")]
    pub model: String,
    /// Base URL (default https://api.openai.com/v1, or Gemini's).
    #[arg(long)]
    pub base_url: Option<String>,
    /// Shorten the vectors to this many dimensions (text-embedding-3 models).
    #[arg(long)]
    pub dimensions: Option<u32>,
    /// Most inputs in one request (default and most: 2048).
    #[arg(long)]
    pub pack_inputs: Option<usize>,
    /// Most estimated tokens in one request (default and most: 300000).
    #[arg(long)]
    pub pack_tokens: Option<u64>,
    /// Requests in flight at once (default 8).
    #[arg(short, long)]
    pub concurrency: Option<usize>,
    /// Requests per minute.
    #[arg(long)]
    pub rpm: Option<f64>,
    /// Tokens per minute.
    #[arg(long)]
    pub tpm: Option<u64>,
    /// Checkpoint file (.sqlite or JSONL): a rerun embeds only what is not recorded.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Field with the item id (default: id, else the line number).
    #[arg(long)]
    pub id_field: Option<String>,
    /// Field with the text to embed (default: text).
    #[arg(long)]
    pub text_field: Option<String>,
    /// A template over the record's fields, e.g. "{title}: {body}".
    #[arg(long)]
    pub template: Option<String>,
}

/// Checkpoint tools.
#[derive(Debug, Subcommand)]
pub enum CheckpointCommand {
    /// Copy a JSONL checkpoint into a SQLite one.
    Import {
        /// The JSONL checkpoint.
        from: PathBuf,
        /// The SQLite checkpoint to create or add to.
        to: PathBuf,
    },
}

/// `abl batch …`.
#[derive(Debug, clap::Subcommand)]
pub enum BatchCommand {
    /// Every job the checkpoint recorded: state, requests, provider id,
    /// its state at the provider (with the provider's key in the
    /// environment: OPENAI_API_KEY, ANTHROPIC_API_KEY, GEMINI_API_KEY), age.
    Status {
        /// The run's SQLite checkpoint.
        checkpoint: PathBuf,
        /// The provider's base URL (default: the provider's own).
        #[arg(long)]
        base_url: Option<String>,
    },
    /// Ask the provider to cancel every job of the run not done yet.
    Cancel {
        /// The run's SQLite checkpoint.
        checkpoint: PathBuf,
        /// The provider's base URL (default: the provider's own).
        #[arg(long)]
        base_url: Option<String>,
    },
}

/// `--stop-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StopModeArg {
    /// Calls in flight finish.
    Drain,
    /// Calls in flight are cancelled.
    Cancel,
}

/// `--via`: how the calls are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ViaArg {
    /// One HTTP call per item, as it is read.
    Online,
    /// The provider's batch API: half the price, results within 24 h.
    BatchApi,
}

/// `--batch-fallback`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BatchFallbackArg {
    /// One more job, then the item fails with its category.
    Resubmit,
    /// The online pipeline (full price, with its retries).
    Online,
}

/// `--token-estimator`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EstimatorArg {
    /// Characters / 4.
    Chars,
    /// OpenAI's tokenizer for the model.
    Tiktoken,
}

/// `--mock-rate-headers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RateHeadersArg {
    /// Limit, remaining and reset (as OpenAI and Anthropic).
    Full,
    /// Remaining and reset only.
    Remaining,
    /// None: a hidden quota.
    None,
}

/// `--resume`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResumeArg {
    /// Reuse nothing.
    None,
    /// Reuse successes (default).
    Successes,
    /// Reuse successes and failures.
    All,
}

macro_rules! run_args {
    ($( $(#[$meta:meta])* $name:ident : $ty:ty ),+ $(,)?) => {
        /// Settings of `abl run`, as given (flags, environment, TOML file).
        #[derive(Debug, Clone, Default, Args, Deserialize)]
        #[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
        pub struct RunArgs {
            $( $(#[$meta])* pub $name: $ty, )+
        }

        impl RunArgs {
            /// Fills every setting not given here from `lower`.
            pub fn or(mut self, lower: RunArgs) -> RunArgs {
                $( if self.$name.is_none() { self.$name = lower.$name; } )+
                self
            }
        }
    };
}

const MOCK: &str = "Mock provider (--model mock:echo|upper|fixed)";

run_args! {
    /// Input file (JSONL, CSV with a header, or text), or - for stdin.
    #[arg(value_name = "INPUT")]
    input: Option<String>,
    /// Output JSONL file (default: stdout). Written as OUTPUT.abl-partial
    /// while the run goes and renamed into place when it ends.
    #[arg(short, long, env = "ABL_OUTPUT")]
    output: Option<String>,
    /// PROVIDER:MODEL, e.g. openai:gpt-4o-mini, gemini:gemini-2.0-flash, or mock:echo (keyless).
    #[arg(short, long, env = "ABL_MODEL")]
    model: Option<String>,
    /// A TOML file with any of these settings.
    #[arg(long, env = "ABL_CONFIG")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Input format (default: by extension; stdin is JSONL).
    #[arg(long, value_enum, env = "ABL_FORMAT")]
    format: Option<Format>,
    /// Field with the item id (default: id, and a record without one is
    /// numbered by its line; a field named here must be in every record).
    #[arg(long, env = "ABL_ID_FIELD")]
    id_field: Option<String>,
    /// Field with the prompt (default: prompt; or a "messages" array).
    #[arg(long, env = "ABL_PROMPT_FIELD")]
    prompt_field: Option<String>,
    /// Prompt template over the record's fields, e.g. "Classify: {text}".
    #[arg(long, env = "ABL_TEMPLATE")]
    template: Option<String>,
    /// Field holding a file to send with the prompt: a path (relative to
    /// the input file), a URL, or a data: URL; images, PDFs, audio.
    /// Repeatable.
    #[arg(long, value_name = "FIELD", env = "ABL_ATTACH", value_delimiter = ',')]
    attach: Option<Vec<String>>,
    /// System instruction for every call.
    #[arg(long, env = "ABL_SYSTEM")]
    system: Option<String>,
    /// Items processed at once (default 64, at most 100000).
    #[arg(short, long, env = "ABL_CONCURRENCY")]
    concurrency: Option<usize>,
    /// Time limit of one attempt in seconds (default 120, at most 86400).
    #[arg(long, env = "ABL_ATTEMPT_TIMEOUT")]
    attempt_timeout: Option<f64>,
    /// Time limit of one item, all retries and waits included, in seconds (at most 30 days).
    #[arg(long, env = "ABL_ITEM_DEADLINE")]
    item_deadline: Option<f64>,
    /// Time limit of the whole run in seconds (at most 366 days; exit code 3 when reached).
    #[arg(long, env = "ABL_BATCH_DEADLINE")]
    batch_deadline: Option<f64>,
    /// Attempts per item for errors other than rate limits (default 3, at most 100).
    #[arg(long, env = "ABL_MAX_ATTEMPTS")]
    max_attempts: Option<u32>,
    /// Rate-limit retries per item (default 20, at most 10000).
    #[arg(long, env = "ABL_MAX_RATE_LIMIT_RETRIES")]
    max_rate_limit_retries: Option<u32>,
    /// First backoff in seconds (default 1, at most 3600; doubles, capped at 60, with jitter).
    #[arg(long, env = "ABL_INITIAL_BACKOFF")]
    initial_backoff: Option<f64>,
    /// Cooldown after a 429 without a hint, in seconds (default 10, at most 3600; x1.5 when repeated).
    #[arg(long, env = "ABL_COOLDOWN")]
    cooldown: Option<f64>,
    /// Cap of cooldowns without a hint, in seconds (default 300, at most 86400).
    #[arg(long, env = "ABL_COOLDOWN_MAX")]
    cooldown_max: Option<f64>,
    /// Turn adaptive concurrency off: without it, when no limit is known
    /// (no --rpm/--tpm, none in the provider's headers), the calls in flight
    /// shrink when the provider's quota or overload shows and grow back on
    /// clean successes.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", env = "ABL_NO_ADAPTIVE")]
    no_adaptive: Option<bool>,
    /// Requests per minute allowed by the provider (fractions allowed); never exceeded.
    /// Without it, the limit the provider's headers report is used.
    #[arg(long, env = "ABL_RPM")]
    rpm: Option<f64>,
    /// Tokens per minute allowed by the provider; never exceeded (estimates are settled after each call).
    #[arg(long, env = "ABL_TPM")]
    tpm: Option<u64>,
    /// Seconds added to the rate windows, for the transit to the provider (default 0.5).
    #[arg(long, env = "ABL_RATE_MARGIN")]
    rate_margin: Option<f64>,
    /// How TPM estimates count input tokens: chars (characters / 4) or tiktoken (OpenAI's tokenizer for the model).
    #[arg(long, value_enum, env = "ABL_TOKEN_ESTIMATOR")]
    token_estimator: Option<EstimatorArg>,
    /// Output tokens expected per call, for TPM estimates and dry-run projections (default: --max-output-tokens, else 256).
    #[arg(long, env = "ABL_EXPECTED_OUTPUT_TOKENS")]
    expected_output_tokens: Option<u64>,
    /// Stop once this many tokens are used (exit code 3).
    #[arg(long, env = "ABL_MAX_TOKENS")]
    max_tokens: Option<u64>,
    /// Stop once this much is spent at --price-* (exit code 3).
    #[arg(long, env = "ABL_MAX_COST")]
    max_cost: Option<f64>,
    /// Stop the run when an item fails for good with one of these categories (comma-separated, e.g. authentication,insufficient_balance).
    #[arg(long, env = "ABL_FAIL_FAST", value_delimiter = ',')]
    fail_fast: Option<Vec<String>>,
    /// How calls are made: online (default), or batch-api (the provider's
    /// batch API at half the price — openai:, anthropic:, gemini: models;
    /// needs a SQLite --checkpoint).
    #[arg(long, value_enum, env = "ABL_VIA")]
    via: Option<ViaArg>,
    /// With --via batch-api: seconds between status checks of a job (30;
    /// grows 1.5x while nothing changes, up to 10 minutes).
    #[arg(long, env = "ABL_BATCH_POLL_SECS")]
    batch_poll_secs: Option<f64>,
    /// With --via batch-api: most requests in one job (the provider's
    /// limit: openai 50000, anthropic and gemini 100000; jobs are also kept
    /// under the provider's size limit).
    #[arg(long, env = "ABL_BATCH_JOB_ITEMS")]
    batch_job_items: Option<usize>,
    /// With --via batch-api: what becomes of requests a job could not run
    /// (expired, cancelled, a server error): resubmit once in a later job,
    /// then fail (resubmit, the default), or finish them online (online).
    #[arg(long, value_enum, env = "ABL_BATCH_FALLBACK")]
    batch_fallback: Option<BatchFallbackArg>,
    /// When a budget or fail-fast stops the run: let calls in flight finish (drain) or cancel them.
    #[arg(long, value_enum, env = "ABL_STOP_MODE")]
    stop_mode: Option<StopModeArg>,
    /// Most calls in flight at once for the provider (a provider limit, not the worker count).
    #[arg(long, env = "ABL_PROVIDER_CONCURRENCY")]
    provider_concurrency: Option<usize>,
    /// Sampling temperature (0 to 2).
    #[arg(long, env = "ABL_TEMPERATURE")]
    temperature: Option<f32>,
    /// Maximum output tokens per call (at least 1).
    #[arg(long, env = "ABL_MAX_OUTPUT_TOKENS")]
    max_output_tokens: Option<u32>,
    /// JSON schema file: the provider is asked for JSON following it, each
    /// reply is checked against it (one that does not match is retried with
    /// the error shown to the model), and the output is that JSON.
    #[arg(long, env = "ABL_SCHEMA")]
    schema: Option<PathBuf>,
    /// Run everything but the calls: projected tokens and cost.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", env = "ABL_DRY_RUN")]
    dry_run: Option<bool>,
    /// Write results in input order (a bounded reorder window) instead of completion order.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", env = "ABL_PRESERVE_ORDER")]
    preserve_order: Option<bool>,
    /// Provider base URL (e.g. a proxy or a local server).
    #[arg(long, env = "ABL_BASE_URL")]
    base_url: Option<String>,
    /// Read the API key from this file instead of the environment.
    #[arg(long, env = "ABL_API_KEY_FILE")]
    api_key_file: Option<PathBuf>,
    /// Price of a million input tokens (for the cost shown).
    #[arg(long, env = "ABL_PRICE_INPUT")]
    price_input: Option<f64>,
    /// Price of a million output tokens.
    #[arg(long, env = "ABL_PRICE_OUTPUT")]
    price_output: Option<f64>,
    /// Price of a million cached input tokens.
    #[arg(long, env = "ABL_PRICE_CACHED_INPUT")]
    price_cached_input: Option<f64>,
    /// Checkpoint file (.sqlite/.db for SQLite, else JSONL): every result is
    /// recorded before it is written out, and a rerun resumes. One run at a
    /// time; records of every model and prompt version are kept.
    #[arg(long, env = "ABL_CHECKPOINT")]
    checkpoint: Option<PathBuf>,
    /// Run only shard K of N (0 <= K < N): the items whose id hashes to K,
    /// the same on every machine. Give each shard its own output and
    /// checkpoint; `abl merge` joins their outputs.
    #[arg(long, value_name = "K/N", env = "ABL_SHARD")]
    shard: Option<String>,
    /// Share cooldowns and RPM/TPM limits with every process using the same
    /// Redis (redis://HOST:PORT/DB): a 429 one gets pauses all, and together
    /// they stay within one quota. Without Redis reachable, calls pause.
    #[arg(long, value_name = "REDIS_URL", env = "ABL_SHARED_LIMITS")]
    shared_limits: Option<String>,
    /// While Redis is away: pause (default; never over the quota) or
    /// local:N, go on at 1/N of the limits (for N processes expected).
    #[arg(long, value_name = "pause|local:N", env = "ABL_SHARED_LIMITS_FALLBACK")]
    shared_limits_fallback: Option<String>,
    /// What a rerun reuses from the checkpoint: none, successes (default) or all.
    #[arg(long, value_enum, env = "ABL_RESUME")]
    resume: Option<ResumeArg>,
    /// Version of your prompt; records of another version are not reused.
    #[arg(long, env = "ABL_PROMPT_VERSION")]
    prompt_version: Option<String>,
    /// Version of your application; records of another version are not reused.
    #[arg(long, env = "ABL_APP_VERSION")]
    app_version: Option<String>,
    /// Also store prompts and contexts in the checkpoint.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", env = "ABL_STORE_INPUTS")]
    store_inputs: Option<bool>,
    /// Make every checkpoint commit durable against power loss (fsync / synchronous=FULL).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", env = "ABL_CHECKPOINT_FSYNC")]
    checkpoint_fsync: Option<bool>,
    /// Write the summary as JSON to this file.
    #[arg(long, env = "ABL_SUMMARY_JSON")]
    summary_json: Option<PathBuf>,
    /// Never draw a progress bar (plain lines only).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", env = "ABL_NO_PROGRESS")]
    no_progress: Option<bool>,
    /// Seconds between plain progress lines when not on a terminal (default 5).
    #[arg(long, env = "ABL_PROGRESS_INTERVAL")]
    progress_interval: Option<f64>,
    /// mock: fixed latency per call in ms.
    #[arg(long, env = "ABL_MOCK_LATENCY_MS", help_heading = MOCK)]
    mock_latency_ms: Option<u64>,
    /// mock: extra random latency up to N ms.
    #[arg(long, env = "ABL_MOCK_JITTER_MS", help_heading = MOCK)]
    mock_jitter_ms: Option<u64>,
    /// mock: share of calls answered 429.
    #[arg(long, env = "ABL_MOCK_FAULT_429", help_heading = MOCK)]
    mock_fault_429: Option<f64>,
    /// mock: hint of those 429s (retry-after:SECS, retry-after-ms:MS, reset:SECS, none).
    #[arg(long, env = "ABL_MOCK_HINT_429", help_heading = MOCK)]
    mock_hint_429: Option<String>,
    /// mock: share of calls answered 500.
    #[arg(long, env = "ABL_MOCK_FAULT_500", help_heading = MOCK)]
    mock_fault_500: Option<f64>,
    /// mock: share of calls answered 503.
    #[arg(long, env = "ABL_MOCK_FAULT_503", help_heading = MOCK)]
    mock_fault_503: Option<f64>,
    /// mock: seed of the random faults.
    #[arg(long, env = "ABL_MOCK_SEED", help_heading = MOCK)]
    mock_seed: Option<u64>,
    /// mock: strict requests-per-minute quota.
    #[arg(long, env = "ABL_MOCK_RPM", help_heading = MOCK)]
    mock_rpm: Option<f64>,
    /// mock: strict tokens-per-minute quota.
    #[arg(long, env = "ABL_MOCK_TPM", help_heading = MOCK)]
    mock_tpm: Option<u64>,
    /// mock: the quota's window in seconds (default 60).
    #[arg(long, env = "ABL_MOCK_QUOTA_WINDOW_SECS", help_heading = MOCK)]
    mock_quota_window_secs: Option<f64>,
    /// mock: the rate-limit headers of its replies when it has a quota.
    #[arg(long, value_enum, env = "ABL_MOCK_RATE_HEADERS", help_heading = MOCK)]
    mock_rate_headers: Option<RateHeadersArg>,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    /// Every `run` option has the environment variable the README
    /// promises: `ABL_` and its long name in capitals.
    #[test]
    fn every_run_option_has_its_environment_variable() {
        let cli = super::Cli::command();
        let run = cli.find_subcommand("run").expect("run");
        let mut checked = 0;
        for arg in run.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if matches!(long, "help" | "version" | "verbose") {
                continue;
            }
            let want = format!("ABL_{}", long.to_uppercase().replace('-', "_"));
            let got = arg.get_env().and_then(|e| e.to_str());
            assert_eq!(got, Some(want.as_str()), "--{long}");
            checked += 1;
        }
        assert!(checked > 50, "{checked} options");
    }
}
