//! # async-batch-llm
//!
//! Run thousands to millions of LLM calls concurrently, unattended: every
//! call the provider's limits allow stays in flight, a 429 pauses the whole
//! quota scope once (honouring `Retry-After`), other failures retry with
//! jittered backoff, and every accepted item ends with exactly one result
//! carrying its exact token usage.
//!
//! ## A first batch
//!
//! A [`Strategy`] makes one attempt for one item; the engine does the rest.
//! [`testing::FakeStrategy`] stands in for a provider here:
//!
//! ```
//! use async_batch_llm::{BatchConfig, Item, process_prompts, testing::FakeStrategy};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), async_batch_llm::Error> {
//! let items = (0..100).map(|i| Item::new(format!("q{i}"), format!("question {i}")));
//! let config = BatchConfig { concurrency: 16, preserve_order: true, ..BatchConfig::default() };
//! let batch = process_prompts(FakeStrategy::echo(), items, &config).await?;
//!
//! assert_eq!(batch.stats.succeeded, 100);
//! assert_eq!(batch.results[7].output().map(String::as_str), Some("question 7"));
//! println!("{}", batch.summary());
//! # Ok(())
//! # }
//! ```
//!
//! ## Your own strategy
//!
//! Implement [`Strategy::execute`]; return a [`CallError`] with the right
//! [`ErrorCategory`] and the engine retries it the right way: rate limits
//! cool the scope down and retry the same attempt, validation failures retry
//! at once, transient errors back off, the rest fail. [`RetryState`] keeps
//! notes across an item's attempts, e.g. to switch to a stronger model after
//! a validation failure:
//!
//! ```
//! use std::time::Duration;
//! use async_batch_llm::{CallError, Completion, ErrorCategory, Prompt, RetryState, Strategy, TokenUsage};
//!
//! struct Escalating;
//!
//! impl Strategy for Escalating {
//!     type Output = String;
//!
//!     async fn execute(&self, prompt: &Prompt, attempt: u32, _timeout: Duration, state: &mut RetryState)
//!         -> Result<Completion<String>, CallError>
//!     {
//!         let model = if state.contains("escalate") { "big" } else { "small" };
//!         Ok((format!("{model}: {}", prompt.text()), Some(TokenUsage::new(12, 4))))
//!     }
//!
//!     async fn on_error(&self, error: &CallError, _attempt: u32, state: &mut RetryState) {
//!         if error.category() == ErrorCategory::ValidationError {
//!             state.set("escalate", true);
//!         }
//!     }
//! }
//! ```
//!
//! Any [`Model`] plus a parser is a strategy already: [`ModelStrategy`].
//! A strategy that wraps others (like the escalation above, with a real model
//! per tier) is best written generic over `M: Model`, so it works with every
//! provider and with `Arc<dyn DynModel>` from [`providers::llm`]; see
//! `examples/escalation.rs`.
//!
//! ## Typed output and caches
//!
//! - [`StructuredStrategy<T>`](StructuredStrategy) derives a JSON schema from
//!   `T` (`schemars`), sends it in each provider's dialect ([`SchemaDialect`]),
//!   validates every reply and deserializes it; an invalid reply is retried
//!   with the error shown to the model.
//! - [`providers::GeminiCachedModel`] keeps a Gemini context cache alive for
//!   the run (found or created once, renewed, replaced if it vanishes).
//! - [`providers::PromptCache`] marks Anthropic's shared prefix for caching;
//!   cached and cache-write tokens are counted in [`TokenUsage`] and priced by
//!   [`Prices`].
//!
//! ## Images, documents and audio
//!
//! A [`Message`] carries [`Attachment`]s: a local path (read only when the
//! item's call is made, so a 300,000-file job streams), a URL the provider
//! fetches, or inline bytes. Each provider gets them in its own format, and
//! a part it cannot take (audio for Anthropic, a PDF by URL for Chat
//! Completions, a file over its size limit) fails the item as
//! `client_error` before any call. Checkpoints know a file by the SHA-256
//! of its bytes. Here the mock stands in for Anthropic and answers with the
//! hash of what arrived:
//!
//! ```
//! use async_batch_llm::providers::{ApiKey, ModelOptions, llm_with};
//! use async_batch_llm::{Attachment, BatchConfig, Item, Message, ModelStrategy, Prompt, Role, call_result};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let mock = abl_mock::MockServer::start_recording().await?;
//! # let base_url = Some(mock.base_url_for("anthropic:"));
//! let model = llm_with("anthropic:claude-3-5-haiku", ModelOptions {
//!     api_key: Some(ApiKey::new("sk-ant-example")),
//!     base_url, // the mock's
//!     ..ModelOptions::default()
//! })?;
//! let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x02\0\0\0";
//! let ask = Message::new(Role::User, "What is in this picture?")
//!     .with_attachment(Attachment::bytes(png));
//! let item = Item::new("pic-1", Prompt::Messages(vec![ask]));
//! let result = call_result(ModelStrategy::text(model), item, &BatchConfig::default()).await?;
//! assert!(result.output().is_some_and(|t| t.contains("[parts: image/png sha256:")));
//! # Ok(()) }
//! ```
//!
//! ## Hosts
//!
//! - [`process_prompts`]: collect a [`BatchResult`] (totals, termination
//!   reason, [`BatchResult::summary`], JSON/JSONL).
//! - [`process_stream`]: a `Stream` of results with bounded memory, for
//!   millions of items; input order on request with a bounded window.
//! - [`call`] / [`call_result`]: one resilient call.
//! - [`CallPool`]: a long-lived shared executor for services.
//! - `batch_api::BatchHost`: the same items through a provider's batch API
//!   (OpenAI, Anthropic, Gemini) at half the price, every job recorded in
//!   the checkpoint before it is submitted so a stopped run reattaches
//!   instead of paying twice.
//!
//! ## Many processes, one quota; embeddings
//!
//! Processes on one API key share its cooldown and RPM/TPM window through
//! Redis when their configs carry the same store (feature `redis`):
//!
//! ```no_run
//! # async fn f() -> Result<(), async_batch_llm::SharedError> {
//! # #[cfg(feature = "redis")] {
//! use std::sync::Arc;
//! let shared = async_batch_llm::RedisLimits::connect("redis://127.0.0.1:6379/0").await?;
//! let config = async_batch_llm::BatchConfig {
//!     shared_limits: Some(Arc::new(shared)),
//!     ..async_batch_llm::BatchConfig::default()
//! };
//! # let _ = config;
//! # }
//! # Ok(()) }
//! ```
//!
//! A job splits between processes by id with [`Shard`]. Embeddings pack
//! many items per request ([`embed`]).
//!
//! ## Cargo features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `openai` | yes | OpenAI Responses, Chat Completions, OpenRouter, DeepSeek, any OpenAI-compatible server |
//! | `gemini` | yes | Gemini `generateContent` and `providers::GeminiCachedModel` |
//! | `anthropic` | yes | Anthropic Messages and prompt caching |
//! | `sqlite` | yes | `store::SqliteStore` (SQLite, built from source) |
//! | `tiktoken` | no | `TiktokenEstimator`: OpenAI's tokenizer for TPM estimates |
//! | `redis` | no | `RedisLimits`: cooldowns and RPM/TPM windows shared by processes |
//!
//! A `provider:model` spec of a family that is not built in is a
//! configuration error naming the feature. With
//! `default-features = false` the engine, the JSONL store and your own
//! [`Model`]s and [`Strategy`]s remain.
//!
//! ## What is where
//!
//! Everything a program names is at the crate root, except six groups
//! that keep their own module: [`providers`] (the HTTP models and the
//! `provider:model` factory), `batch_api` (provider batch APIs), [`store`]
//! (checkpoints), [`embed`] (embeddings), [`testing`] (fakes for your own
//! tests) and [`secret`] (keeping keys out of messages).
//!
//! Quota scopes are names ([`default_scope_name`]): runs whose strategies
//! resolve to the same provider, key and model share one cooldown when they
//! share a [`ScopeRegistry`].

pub mod attachment;
#[cfg(any(feature = "openai", feature = "anthropic", feature = "gemini"))]
pub mod batch_api;
pub mod embed;
mod engine;
mod error;
mod fingerprint;
mod item;
mod limit;
mod model;
mod observe;
mod price_list;
pub mod providers;
mod rand;
mod result;
mod schema;
pub mod secret;
mod shard;
pub mod store;
mod strategy;
mod structured;
pub mod testing;
mod time;
mod usage;

pub use attachment::{Attachment, MediaType, PartKind, PartPolicy, PartTokens};
pub use engine::{
    BatchConfig, Budget, CallPool, MAX_CONCURRENCY, MAX_RPM, MIN_RPM, MiddlewareList, PoolError,
    PoolSettings, ResultStream, RetryPolicy, RunExtras, StartupRamp, StopHandle, StopMode, call,
    call_result, process_prompts, process_prompts_with, process_stream, process_stream_with,
};
pub use error::{
    CallError, DefaultClassifier, Error, ErrorCategory, ErrorClassifier, RetryDecision,
    UnknownCategory,
};
pub use item::{Item, Message, Prompt, Role};
#[cfg(feature = "redis")]
pub use limit::RedisLimits;
#[cfg(feature = "tiktoken")]
pub use limit::TiktokenEstimator;
pub use limit::{
    AdmissionStats, CharEstimator, CooldownPolicy, EstimateError, LimitSource, LimitsInForce,
    RateLimits, ReportedLimit, ReportedLimits, ScopeRegistry, ScopeSettings, TokenEstimator,
    default_scope_name, key_fingerprint,
};
pub use limit::{
    Grant, RETRY_UNREACHABLE, Reserved, SharedError, SharedFallback, SharedLimits,
    SharedLimitsHandle, SharedQuota, SharedScope, SharedStatus, SharedTicket, SharedWait,
};
pub use model::{
    DynModel, LlmRequest, LlmResponse, Model, ModelStrategy, RequestDefaults, ResponseMetadata,
    ResponseParser, TextParser,
};
pub use observe::{Event, MetricsObserver, Middleware, Observer};
pub use price_list::{ListedPrice, PriceList};
pub use result::{
    BATCH_SCHEMA, BATCH_SCHEMA_VERSION, BatchResult, BatchStats, CategoryStats, DryRunEstimate,
    EstimateBound, ItemError, ItemResult, ItemTiming, Percentiles, RunSummary, SummaryCollector,
    SummaryRow, Termination, TerminationReason, TryTiming,
};
pub use schema::{ResponseSchema, SchemaDialect, example_value};
pub use shard::{MAX_SHARDS, Shard};
pub use strategy::{Completion, RetryState, Strategy, dry_run_placeholder};
pub use structured::{FEEDBACK_KEY, Feedback, StructuredStrategy, Validator};
pub use time::{MAX_DURATION, format_rfc3339, human as human_duration, secs_f64};
pub use usage::{Prices, TokenUsage};
