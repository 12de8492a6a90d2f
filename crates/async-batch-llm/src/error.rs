//! Errors, their stable categories, and how the engine decides to retry.
//!
//! A [`Strategy`](crate::Strategy) reports a failed attempt as a [`CallError`]:
//! a category, a message, whether it may be retried, an optional retry-after
//! hint from the provider, and the usage of the attempt if it was billed.
//! An [`ErrorClassifier`] turns that into a [`RetryDecision`]; the default
//! classifier follows SPEC.md §4.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::usage::TokenUsage;

macro_rules! categories {
    ($($(#[$doc:meta])* $variant:ident => $name:literal),+ $(,)?) => {
        /// Why an attempt or an item failed. The string names are stable: they
        /// appear in results, checkpoints, metrics and CLI output.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        #[non_exhaustive]
        pub enum ErrorCategory {
            $($(#[$doc])* $variant,)+
        }

        impl ErrorCategory {
            /// Every category, in declaration order.
            pub const ALL: &'static [ErrorCategory] = &[$(ErrorCategory::$variant,)+];

            /// The stable snake_case name.
            pub const fn as_str(self) -> &'static str {
                match self { $(ErrorCategory::$variant => $name,)+ }
            }
        }

        impl FromStr for ErrorCategory {
            type Err = UnknownCategory;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($name => Ok(ErrorCategory::$variant),)+
                    _ => Err(UnknownCategory(s.to_owned())),
                }
            }
        }
    };
}

categories! {
    /// The provider said 429: too many requests for now.
    RateLimit => "rate_limit",
    /// Rate limits persisted past the rate-limit retry budget.
    RateLimitRetriesExceeded => "rate_limit_retries_exceeded",
    /// A quota that does not refill soon (e.g. a per-day quota).
    QuotaExhausted => "quota_exhausted",
    /// The account has no credit (HTTP 402, `insufficient_quota`).
    InsufficientBalance => "insufficient_balance",
    /// The key is missing or invalid (HTTP 401).
    Authentication => "authentication",
    /// The key may not use this resource (HTTP 403).
    PermissionDenied => "permission_denied",
    /// The request is wrong (HTTP 400, 404, 422, …).
    ClientError => "client_error",
    /// The prompt does not fit the model's context window.
    ContextLengthExceeded => "context_length_exceeded",
    /// The request alone is larger than the provider takes: HTTP 413, or a
    /// 429 saying the one request exceeds the whole per-minute limit. No
    /// wait can fix it, so it is not retried.
    RequestTooLarge => "request_too_large",
    /// A safety block or a refusal.
    ContentFilter => "content_filter",
    /// The provider failed (HTTP 500, 502, 503, 504).
    ServerError => "server_error",
    /// The provider is overloaded (Anthropic 529).
    ServerOverload => "server_overload",
    /// The provider reported a timeout (HTTP 408).
    ApiTimeout => "api_timeout",
    /// The attempt ran past its attempt timeout.
    FrameworkTimeout => "framework_timeout",
    /// The item ran past its deadline.
    ItemDeadline => "item_deadline",
    /// The batch ran past its deadline.
    BatchDeadline => "batch_deadline",
    /// A provider batch-API job ended (its window passed, or it was
    /// cancelled) before it ran this request.
    BatchExpired => "batch_expired",
    /// A token or cost budget was spent.
    BudgetExceeded => "budget_exceeded",
    /// The run was stopped before this item finished.
    Aborted => "aborted",
    /// Connection refused, reset, DNS, TLS.
    NetworkError => "network_error",
    /// The provider returned no output and gave no reason.
    EmptyResponse => "empty_response",
    /// The output did not parse or validate.
    ValidationError => "validation_error",
    /// The provider rejected the structured-output schema.
    StructuredOutputSchemaRejected => "structured_output_schema_rejected",
    /// The body was not valid JSON, was cut short, or lacked expected fields.
    ProviderResponseError => "provider_response_error",
    /// A bug or misuse in the program (a panic, a wrong configuration).
    LogicError => "logic_error",
    /// Admission refused the item before any call: its token estimate exceeds
    /// the per-minute limit, or it could not be estimated.
    AdmissionError => "admission_error",
    /// The input item itself is wrong (a duplicate id read from a stream
    /// that cannot be checked ahead); no call was made.
    InputError => "input_error",
    /// Anything else.
    Unknown => "unknown",
}

impl ErrorCategory {
    /// Whether an error of this category is worth retrying by default.
    pub const fn is_retryable_by_default(self) -> bool {
        matches!(
            self,
            Self::RateLimit
                | Self::ServerError
                | Self::ServerOverload
                | Self::ApiTimeout
                | Self::FrameworkTimeout
                | Self::NetworkError
                | Self::EmptyResponse
                | Self::ValidationError
                | Self::ProviderResponseError
                | Self::Unknown
        )
    }

    /// Categories that mean the run stopped the item rather than the item
    /// failing on its own; such items always rerun on resume.
    pub const fn is_stop(self) -> bool {
        matches!(
            self,
            Self::ItemDeadline | Self::BatchDeadline | Self::BudgetExceeded | Self::Aborted
        )
    }
}

impl fmt::Display for ErrorCategory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A category name that is not one of [`ErrorCategory::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown error category {0:?}")]
pub struct UnknownCategory(pub String);

/// One failed attempt, as a strategy or model reports it.
#[derive(Clone)]
pub struct CallError {
    category: ErrorCategory,
    message: String,
    retryable: bool,
    retry_after: Option<Duration>,
    /// Boxed: it is rare, and keeps the error small (it travels in every
    /// `Result` of a call).
    usage: Option<Box<TokenUsage>>,
    status: Option<u16>,
    provider_code: Option<Box<str>>,
    /// The rate-limit headers of the reply (boxed, like usage).
    reported_limits: Option<Box<crate::limit::reported::ReportedLimits>>,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl CallError {
    /// An error of `category`; retryable as the category is by default.
    pub fn new(category: ErrorCategory, message: impl Into<String>) -> Self {
        Self {
            category,
            message: crate::secret::redacted(message.into()),
            retryable: category.is_retryable_by_default(),
            retry_after: None,
            usage: None,
            status: None,
            provider_code: None,
            reported_limits: None,
            source: None,
        }
    }

    /// A 429-style rate limit, with the provider's retry-after hint if any.
    pub fn rate_limit(message: impl Into<String>, retry_after: Option<Duration>) -> Self {
        Self::new(ErrorCategory::RateLimit, message).with_retry_after(retry_after)
    }

    /// A transient failure worth retrying with backoff (`server_error`).
    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(ErrorCategory::ServerError, message)
    }

    /// A failure that retrying cannot fix (`client_error`).
    pub fn permanent(message: impl Into<String>) -> Self {
        Self::new(ErrorCategory::ClientError, message)
    }

    /// The output failed to parse or validate; retried at once.
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(ErrorCategory::ValidationError, message)
    }

    /// The category.
    pub fn category(&self) -> ErrorCategory {
        self.category
    }

    /// The message, free of secrets (registered keys are redacted when the
    /// error is made).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether this error may be retried.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// The provider's retry-after hint.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The usage of the billed attempt that failed, if it was billed.
    pub fn usage(&self) -> Option<TokenUsage> {
        self.usage.as_deref().copied()
    }

    /// The HTTP status, when the error came from a response.
    pub fn status(&self) -> Option<u16> {
        self.status
    }

    /// The provider's own name for the error, as its body gave it
    /// (`rate_limit_exceeded`, `PERMISSION_DENIED`, `overloaded_error`…).
    pub fn provider_code(&self) -> Option<&str> {
        self.provider_code.as_deref()
    }

    /// What the reply's rate-limit headers said, when it had them.
    pub fn reported_limits(&self) -> Option<&crate::limit::reported::ReportedLimits> {
        self.reported_limits.as_deref()
    }

    /// Attaches the reply's rate-limit headers (`None` leaves the error as is).
    #[must_use]
    pub fn with_reported_limits(
        mut self,
        limits: Option<crate::limit::reported::ReportedLimits>,
    ) -> Self {
        if let Some(l) = limits {
            self.reported_limits = Some(Box::new(l));
        }
        self
    }

    /// Sets the provider's name for the error.
    #[must_use]
    pub fn with_provider_code(mut self, code: impl Into<String>) -> Self {
        self.provider_code = Some(code.into().into_boxed_str());
        self
    }

    /// Overrides retryability.
    #[must_use]
    pub fn with_retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }

    /// Sets the retry-after hint.
    #[must_use]
    pub fn with_retry_after(mut self, retry_after: Option<Duration>) -> Self {
        self.retry_after = retry_after;
        self
    }

    /// Attaches the usage of the billed attempt (e.g. a reply that failed to parse).
    #[must_use]
    pub fn with_usage(mut self, usage: TokenUsage) -> Self {
        self.usage = Some(Box::new(usage));
        self
    }

    /// Attaches the usage when there is one (`None` leaves the error as is).
    #[must_use]
    pub fn with_usage_if(mut self, usage: Option<TokenUsage>) -> Self {
        if let Some(u) = usage {
            self.usage = Some(Box::new(u));
        }
        self
    }

    /// Attaches the HTTP status.
    #[must_use]
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    /// Attaches an underlying error.
    #[must_use]
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// Changes the category, keeping everything else.
    #[must_use]
    pub fn with_category(mut self, category: ErrorCategory) -> Self {
        self.category = category;
        self
    }
}

impl fmt::Debug for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallError")
            .field("category", &self.category)
            .field("message", &self.message)
            .field("retryable", &self.retryable)
            .field("retry_after", &self.retry_after)
            .field("usage", &self.usage)
            .field("status", &self.status)
            .field("provider_code", &self.provider_code)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.category, self.message)
    }
}

impl std::error::Error for CallError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// What the engine does after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// A rate limit: start (or join) the scope's cooldown and retry the same
    /// logical attempt, spending the rate-limit budget.
    RateLimited {
        /// The provider's hint for the cooldown length.
        retry_after: Option<Duration>,
    },
    /// Retry at once with the next attempt number (validation failures).
    Immediately,
    /// Retry with the next attempt number after exponential backoff.
    Backoff,
    /// Give up on the item.
    Fail,
}

/// Decides how a failed attempt is retried.
///
/// Implement it to treat some categories differently (say, never retry
/// `server_error` for an idempotency-sensitive call).
pub trait ErrorClassifier: Send + Sync {
    /// The decision for `error`.
    fn classify(&self, error: &CallError) -> RetryDecision;
}

/// The classifier of SPEC.md §4: rate limits cool down, validation failures
/// retry at once, other retryable errors back off, the rest fail.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultClassifier;

impl ErrorClassifier for DefaultClassifier {
    fn classify(&self, error: &CallError) -> RetryDecision {
        if !error.is_retryable() {
            return RetryDecision::Fail;
        }
        match error.category() {
            ErrorCategory::RateLimit => RetryDecision::RateLimited {
                retry_after: error.retry_after(),
            },
            ErrorCategory::ValidationError => RetryDecision::Immediately,
            _ => RetryDecision::Backoff,
        }
    }
}

/// An error of the library itself (a setting, a file, a checkpoint), not
/// of a call: calls fail with a [`CallError`] inside their item's result.
///
/// Opaque, like `reqwest::Error`: ask it what it is with the predicates,
/// and show it with `Display`, which names the place (file, line, setting).
///
/// ```
/// use async_batch_llm::{BatchConfig, Error};
/// let e: Error = BatchConfig { concurrency: 0, ..BatchConfig::default() }
///     .validate()
///     .unwrap_err();
/// assert!(e.is_config());
/// assert!(e.to_string().contains("concurrency"));
/// ```
pub struct Error(Box<Kind>);

#[derive(Debug, thiserror::Error)]
enum Kind {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is in use by another run ({holder}); wait for it to end or stop it")]
    InUse { path: String, holder: String },
    #[error("{place}: {message}")]
    Format { place: String, message: String },
}

impl Error {
    /// A setting is out of range or inconsistent (for your own models,
    /// strategies and stores as much as for the library).
    pub fn config(message: impl Into<String>) -> Self {
        Self(Box::new(Kind::Config(crate::secret::redacted(
            message.into(),
        ))))
    }

    /// Reading or writing `path` failed.
    pub fn io(path: impl Into<String>, source: std::io::Error) -> Self {
        Self(Box::new(Kind::Io {
            path: path.into(),
            source,
        }))
    }

    /// A checkpoint is held by another run.
    pub(crate) fn in_use(path: impl Into<String>, holder: impl Into<String>) -> Self {
        Self(Box::new(Kind::InUse {
            path: path.into(),
            holder: holder.into(),
        }))
    }

    /// Something read (a record, a batch, a checkpoint) is not what it
    /// should be, at `place` (a file and line, or a field).
    pub fn format(place: impl Into<String>, message: impl Into<String>) -> Self {
        Self(Box::new(Kind::Format {
            place: place.into(),
            message: crate::secret::redacted(message.into()),
        }))
    }

    /// True for a setting that is out of range or inconsistent.
    pub fn is_config(&self) -> bool {
        matches!(*self.0, Kind::Config(_))
    }

    /// True when reading or writing a file failed; see [`Error::io_error`].
    pub fn is_io(&self) -> bool {
        matches!(*self.0, Kind::Io { .. })
    }

    /// True when a checkpoint is locked by another run.
    pub fn is_in_use(&self) -> bool {
        matches!(*self.0, Kind::InUse { .. })
    }

    /// True when something read is malformed, or is not ours (a file given
    /// as a checkpoint that is not one).
    pub fn is_format(&self) -> bool {
        matches!(*self.0, Kind::Format { .. })
    }

    /// The I/O error, for an I/O failure.
    pub fn io_error(&self) -> Option<&std::io::Error> {
        match &*self.0 {
            Kind::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&*self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for c in ErrorCategory::ALL {
            assert_eq!(c.as_str().parse::<ErrorCategory>().ok(), Some(*c));
            let json = serde_json::to_string(c).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", c.as_str()));
        }
        assert_eq!(ErrorCategory::ALL.len(), 28);
        assert!("nope".parse::<ErrorCategory>().is_err());
    }

    #[test]
    fn default_classifier() {
        let c = DefaultClassifier;
        let hint = Some(Duration::from_secs(3));
        assert_eq!(
            c.classify(&CallError::rate_limit("429", hint)),
            RetryDecision::RateLimited { retry_after: hint }
        );
        assert_eq!(
            c.classify(&CallError::validation("bad")),
            RetryDecision::Immediately
        );
        assert_eq!(
            c.classify(&CallError::transient("500")),
            RetryDecision::Backoff
        );
        assert_eq!(
            c.classify(&CallError::permanent("400")),
            RetryDecision::Fail
        );
        assert_eq!(
            c.classify(&CallError::transient("500").with_retryable(false)),
            RetryDecision::Fail
        );
        assert_eq!(
            c.classify(&CallError::new(ErrorCategory::QuotaExhausted, "day")),
            RetryDecision::Fail
        );
    }
}
