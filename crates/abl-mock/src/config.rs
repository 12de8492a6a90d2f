//! What the mock does: replies, latency, faults, quotas.

use std::str::FromStr;
use std::time::Duration;

/// Which rate-limit headers a mock with a quota sends on every reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum RateHeaders {
    /// Limit, remaining and reset, as OpenAI and Anthropic send them.
    #[default]
    Full,
    /// Remaining and reset only (no limit), as some servers send.
    Remaining,
    /// None: a quota the client must find by itself.
    None,
}

/// How successful replies are made (a request for a JSON schema always gets
/// a JSON value that satisfies it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ReplyMode {
    /// The last user message, unchanged.
    #[default]
    Echo,
    /// The last user message in upper case.
    Upper,
    /// The `--fixed-text` text.
    Fixed,
}

/// How a 429 tells the client when to come back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Hint {
    /// `Retry-After: N` (whole seconds, rounded up).
    RetryAfter(Duration),
    /// `retry-after-ms: N` (and a rounded-up `Retry-After`, as OpenAI sends).
    RetryAfterMs(Duration),
    /// `x-ratelimit-reset-requests: 1.5s` (OpenAI's reset header).
    Reset(Duration),
    /// A Gemini `RetryInfo.retryDelay` in the error body.
    Gemini(Duration),
    /// No hint at all.
    None,
}

impl Hint {
    /// The delay it announces.
    pub fn delay(self) -> Option<Duration> {
        match self {
            Hint::RetryAfter(d) | Hint::RetryAfterMs(d) | Hint::Reset(d) | Hint::Gemini(d) => {
                Some(d)
            }
            Hint::None => None,
        }
    }
}

impl FromStr for Hint {
    type Err = String;
    /// `retry-after:SECS`, `retry-after-ms:MS`, `reset:SECS`, `gemini:SECS` or `none`.
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "none" {
            return Ok(Hint::None);
        }
        let (kind, n) = s
            .split_once(':')
            .ok_or_else(|| format!("hint {s:?}: expected KIND:NUMBER or none"))?;
        let n: f64 = n
            .parse()
            .map_err(|_| format!("hint {s:?}: {n:?} is not a number"))?;
        if !(n.is_finite() && n >= 0.0) {
            return Err(format!("hint {s:?}: must be a non-negative number"));
        }
        Ok(match kind {
            "retry-after" => Hint::RetryAfter(Duration::from_secs_f64(n)),
            "retry-after-ms" => Hint::RetryAfterMs(Duration::from_secs_f64(n / 1000.0)),
            "reset" => Hint::Reset(Duration::from_secs_f64(n)),
            "gemini" => Hint::Gemini(Duration::from_secs_f64(n)),
            other => {
                return Err(format!(
                    "hint kind {other:?}: expected retry-after, retry-after-ms, reset, gemini or none"
                ));
            }
        })
    }
}

/// A fault the mock can inject.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// 429 with a hint.
    RateLimit(Hint),
    /// Gemini per-day quota (429 with a `QuotaFailure` naming a per-day quota).
    QuotaPerDay,
    /// HTTP 402 (no credit).
    PaymentRequired,
    /// OpenAI's 429 `insufficient_quota`.
    InsufficientQuota,
    /// HTTP 500.
    ServerError,
    /// HTTP 503.
    Unavailable,
    /// HTTP 529 (Anthropic overloaded).
    Overloaded,
    /// HTTP 401.
    Unauthorized,
    /// HTTP 403.
    Forbidden,
    /// HTTP 400.
    BadRequest,
    /// HTTP 400 for a prompt over the context window.
    ContextLength,
    /// No answer for `hang_secs`.
    Hang,
    /// A 200 whose body is not JSON.
    Malformed,
    /// A 200 whose JSON body is cut in half.
    Truncated,
    /// A 200 with an empty output and no reason.
    Empty,
    /// A 200 whose body is an error (OpenRouter style).
    ErrorIn200,
    /// A safety block (Gemini) or content filter.
    Safety,
    /// A refusal (OpenAI, Anthropic).
    Refusal,
    /// A schema-requested reply that does not satisfy the schema.
    InvalidOutput,
}

impl Fault {
    /// The label used in stats.
    pub fn label(self) -> &'static str {
        match self {
            Fault::RateLimit(_) => "429",
            Fault::QuotaPerDay => "429_quota_day",
            Fault::PaymentRequired => "402",
            Fault::InsufficientQuota => "429_insufficient_quota",
            Fault::ServerError => "500",
            Fault::Unavailable => "503",
            Fault::Overloaded => "529",
            Fault::Unauthorized => "401",
            Fault::Forbidden => "403",
            Fault::BadRequest => "400",
            Fault::ContextLength => "400_context_length",
            Fault::Hang => "hang",
            Fault::Malformed => "malformed",
            Fault::Truncated => "truncated",
            Fault::Empty => "empty",
            Fault::ErrorIn200 => "error_in_200",
            Fault::Safety => "safety",
            Fault::Refusal => "refusal",
            Fault::InvalidOutput => "invalid_output",
        }
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let r: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if (0.0..=1.0).contains(&r) {
        Ok(r)
    } else {
        Err(format!("rate {r} must lie in [0, 1]"))
    }
}

fn parse_positive(s: &str) -> Result<f64, String> {
    let r: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if r.is_finite() && r > 0.0 {
        Ok(r)
    } else {
        Err(format!("{r} must be a positive number"))
    }
}

/// The mock's settings; also its command-line flags (`abl mock-server`).
#[derive(Debug, Clone, clap::Args)]
#[allow(clippy::struct_excessive_bools)]
pub struct MockConfig {
    /// Port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// How replies are made.
    #[arg(long, value_enum, default_value_t = ReplyMode::Echo)]
    pub reply: ReplyMode,
    /// The reply text for `--reply fixed`.
    #[arg(long, default_value = "OK")]
    pub fixed_text: String,
    /// Fixed latency per request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Extra latency drawn uniformly from [0, N] ms per request.
    #[arg(long, default_value_t = 0)]
    pub jitter_ms: u64,
    /// Seed of every random decision.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Share of requests answered 429.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub fault_429: f64,
    /// The hint of random 429s: retry-after:SECS, retry-after-ms:MS, reset:SECS, gemini:SECS, none.
    #[arg(long, default_value = "retry-after:1")]
    pub hint_429: Hint,
    /// Share of requests answered 500.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub fault_500: f64,
    /// Share of requests answered 503.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub fault_503: f64,
    /// Share of requests answered 529.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub fault_529: f64,
    /// Share of requests answered 402.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub fault_402: f64,
    /// Share of requests answered with a Gemini per-day quota 429.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub fault_quota_day: f64,
    /// Share of requests that hang.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub fault_hang: f64,
    /// Share of requests answered with a body that is not JSON.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub fault_malformed: f64,
    /// Share of requests answered with a JSON body cut short.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub fault_truncated: f64,
    /// Share of requests answered with an empty output.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub fault_empty: f64,
    /// Share of requests answered with an error inside a 200 body.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub fault_error_200: f64,
    /// Share of requests answered with a safety block.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub fault_safety: f64,
    /// Share of requests answered with a refusal.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub fault_refusal: f64,
    /// How long a hanging request waits before it answers, in seconds.
    #[arg(long, default_value_t = 600)]
    pub hang_secs: u64,
    /// How long a batch-API job takes from submission to its results, in
    /// milliseconds.
    #[arg(long, default_value_t = 0)]
    pub batch_processing_ms: u64,
    /// The first N requests to the batch-API job routes (create, get,
    /// results) answer 500, as a provider's bad minute does.
    #[arg(long, default_value_t = 0)]
    pub batch_api_errors: u64,
    /// Strict requests-per-minute quota over a rolling window (fractions allowed).
    #[arg(long, value_parser = parse_positive)]
    pub rpm: Option<f64>,
    /// Strict tokens-per-minute quota over a rolling window.
    #[arg(long)]
    pub tpm: Option<u64>,
    /// The quota's window in seconds (60): `--rpm 500 --quota-window-secs
    /// 10` allows 500 requests in any 10 s. The limit headers then report
    /// the per-minute equivalent (3000), as OpenAI reports a per-minute
    /// limit it enforces over shorter periods; remaining and reset are the
    /// window's.
    #[arg(long, value_parser = parse_positive)]
    pub quota_window_secs: Option<f64>,
    /// Which rate-limit headers replies carry when there is a quota.
    #[arg(long, value_enum, default_value_t = RateHeaders::Full)]
    pub rate_headers: RateHeaders,
    /// Count requests per prompt (see `GET /stats/prompts`).
    #[arg(long)]
    pub track_prompts: bool,
    /// Requests arriving this soon after a 429 opened a cooldown were sent
    /// before the client could know of it; they are not counted as arriving
    /// during the cooldown.
    #[arg(long, default_value_t = 100)]
    pub cooldown_grace_ms: u64,
    /// Accept requests without an API key (otherwise they get 401).
    #[arg(long)]
    pub no_auth: bool,
    /// Keep the last 64 model requests (body and non-secret headers) for
    /// `GET /requests`.
    #[arg(long)]
    pub record_requests: bool,
    /// Answer every model request with the response recorded in this JSON
    /// file (`{"status", "headers", "body"}`), e.g. one a real provider sent.
    #[arg(long, value_parser = crate::replay::Replay::boxed_from_file)]
    pub replay: Option<Box<crate::replay::Replay>>,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            port: 0,
            reply: ReplyMode::Echo,
            fixed_text: "OK".into(),
            latency_ms: 0,
            jitter_ms: 0,
            seed: 0,
            fault_429: 0.0,
            hint_429: Hint::RetryAfter(Duration::from_secs(1)),
            fault_500: 0.0,
            fault_503: 0.0,
            fault_529: 0.0,
            fault_402: 0.0,
            fault_quota_day: 0.0,
            fault_hang: 0.0,
            fault_malformed: 0.0,
            fault_truncated: 0.0,
            fault_empty: 0.0,
            fault_error_200: 0.0,
            fault_safety: 0.0,
            fault_refusal: 0.0,
            hang_secs: 600,
            batch_processing_ms: 0,
            batch_api_errors: 0,
            rpm: None,
            tpm: None,
            quota_window_secs: None,
            rate_headers: RateHeaders::Full,
            track_prompts: false,
            cooldown_grace_ms: 100,
            no_auth: false,
            record_requests: false,
            replay: None,
        }
    }
}

impl MockConfig {
    /// The random faults with their rates, in a fixed order.
    pub fn fault_rates(&self) -> Vec<(Fault, f64)> {
        [
            (Fault::RateLimit(self.hint_429), self.fault_429),
            (Fault::ServerError, self.fault_500),
            (Fault::Unavailable, self.fault_503),
            (Fault::Overloaded, self.fault_529),
            (Fault::PaymentRequired, self.fault_402),
            (Fault::QuotaPerDay, self.fault_quota_day),
            (Fault::Hang, self.fault_hang),
            (Fault::Malformed, self.fault_malformed),
            (Fault::Truncated, self.fault_truncated),
            (Fault::Empty, self.fault_empty),
            (Fault::ErrorIn200, self.fault_error_200),
            (Fault::Safety, self.fault_safety),
            (Fault::Refusal, self.fault_refusal),
        ]
        .into_iter()
        .filter(|(_, r)| *r > 0.0)
        .collect()
    }

    /// Checks that the fault rates add up to at most 1.
    pub fn validate(&self) -> Result<(), String> {
        let sum: f64 = self.fault_rates().iter().map(|(_, r)| r).sum();
        if sum > 1.0 + 1e-9 {
            return Err(format!("fault rates add up to {sum}, more than 1"));
        }
        Ok(())
    }
}
