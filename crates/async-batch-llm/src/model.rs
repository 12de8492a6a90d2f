//! The [`Model`] trait, its request and response, and [`ModelStrategy`]:
//! any model plus a parser is a [`Strategy`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::attachment::PartPolicy;
use crate::error::CallError;
use crate::item::Prompt;
use crate::schema::{ResponseSchema, SchemaDialect};
use crate::strategy::{Completion, RetryState, Strategy, dry_run_placeholder};
use crate::usage::TokenUsage;

/// What a [`Model`] is asked to do.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LlmRequest {
    /// The prompt.
    pub prompt: Option<Prompt>,
    /// System instruction, in addition to any system message in the prompt.
    pub system: Option<String>,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Maximum output tokens.
    pub max_output_tokens: Option<u32>,
    /// A JSON schema the reply must follow (provider-native structured
    /// output); each provider sends it in its own dialect.
    pub response_schema: Option<Arc<ResponseSchema>>,
    /// How long the call may take; providers use it as the HTTP timeout.
    pub timeout: Option<Duration>,
    /// Provider-specific fields merged into the request body (e.g. Gemini
    /// `generationConfig` overrides, OpenRouter `provider` routing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_options: Option<serde_json::Value>,
}

impl LlmRequest {
    /// A request for `prompt` with nothing else set.
    pub fn new(prompt: impl Into<Prompt>) -> Self {
        Self {
            prompt: Some(prompt.into()),
            ..Self::default()
        }
    }
}

/// What every request of a strategy carries besides its prompt: system
/// instruction, sampling settings, an output schema, provider options.
/// [`ModelStrategy`] and [`StructuredStrategy`](crate::StructuredStrategy)
/// both build their requests from one, so a setting means the same in both.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestDefaults {
    /// System instruction.
    pub system: Option<String>,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Maximum output tokens.
    pub max_output_tokens: Option<u32>,
    /// A JSON schema the reply must follow.
    pub response_schema: Option<Arc<ResponseSchema>>,
    /// Provider-specific fields merged into each request body.
    pub provider_options: Option<serde_json::Value>,
}

impl RequestDefaults {
    /// The request for `prompt` with at most `timeout` to spend.
    pub fn request(&self, prompt: Prompt, timeout: Duration) -> LlmRequest {
        LlmRequest {
            prompt: Some(prompt),
            system: self.system.clone(),
            temperature: self.temperature,
            max_output_tokens: self.max_output_tokens,
            response_schema: self.response_schema.clone(),
            timeout: Some(timeout),
            provider_options: self.provider_options.clone(),
        }
    }
}

/// Provider details kept with a response.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResponseMetadata {
    /// Why generation stopped (`stop`, `length`, `STOP`, `end_turn`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
    /// The model that answered, as the provider names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The provider's request id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// A refusal text, when the model refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
    /// Safety ratings as the provider sent them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safety_ratings: Option<serde_json::Value>,
    /// Tool calls as the provider sent them (kept, never executed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<serde_json::Value>,
    /// What the reply's rate-limit headers said about the provider's limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<crate::limit::ReportedLimits>,
}

/// A normalized model response.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LlmResponse {
    /// The output text.
    pub text: String,
    /// Input tokens, if reported.
    pub input_tokens: Option<u64>,
    /// Output tokens, if reported.
    pub output_tokens: Option<u64>,
    /// Total tokens, if reported.
    pub total_tokens: Option<u64>,
    /// Cached input tokens, if reported.
    pub cached_input_tokens: Option<u64>,
    /// Reasoning tokens, if reported.
    pub reasoning_tokens: Option<u64>,
    /// Input tokens written to a prompt cache, if reported (Anthropic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_input_tokens: Option<u64>,
    /// Provider details.
    pub metadata: ResponseMetadata,
    /// The provider's JSON body, when [`HttpOptions::keep_raw`] asks for it.
    ///
    /// [`HttpOptions::keep_raw`]: crate::providers::HttpOptions::keep_raw
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<serde_json::Value>,
}

impl LlmResponse {
    /// A response with text and usage.
    pub fn new(text: impl Into<String>, usage: TokenUsage) -> Self {
        Self {
            text: text.into(),
            input_tokens: Some(usage.input),
            output_tokens: Some(usage.output),
            total_tokens: Some(usage.total),
            cached_input_tokens: Some(usage.cached_input),
            reasoning_tokens: Some(usage.reasoning),
            cache_write_input_tokens: Some(usage.cache_write_input),
            ..Self::default()
        }
    }

    /// The usage, or `None` when the provider reported none.
    pub fn token_usage(&self) -> Option<TokenUsage> {
        if self.input_tokens.is_none()
            && self.output_tokens.is_none()
            && self.total_tokens.is_none()
        {
            return None;
        }
        let input = self.input_tokens.unwrap_or(0);
        let output = self.output_tokens.unwrap_or(0);
        Some(TokenUsage {
            input,
            output,
            total: self.total_tokens.unwrap_or(input.saturating_add(output)),
            cached_input: self.cached_input_tokens.unwrap_or(0),
            reasoning: self.reasoning_tokens.unwrap_or(0),
            cache_write_input: self.cache_write_input_tokens.unwrap_or(0),
        })
    }
}

/// An LLM that answers one request at a time. Providers implement it; the
/// engine calls it through a [`Strategy`] such as [`ModelStrategy`].
pub trait Model: Send + Sync + 'static {
    /// Answers one request. Errors carry a category and, when the call was
    /// billed, its usage. Must not retry on its own: the engine retries.
    fn generate(
        &self,
        request: &LlmRequest,
    ) -> impl Future<Output = Result<LlmResponse, CallError>> + Send;

    /// Sets up provider resources (e.g. a context cache). Idempotent.
    fn prepare(&self) -> impl Future<Output = Result<(), CallError>> + Send {
        async { Ok(()) }
    }

    /// Releases what `prepare` made. Idempotent.
    fn cleanup(&self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// The model's name, for identity and reports.
    fn name(&self) -> &str;

    /// The quota scope this model's calls count against: by default provider,
    /// base URL, key fingerprint and model, so that two instances on one key
    /// share cooldowns and limits. `None` uses the run's default scope.
    fn quota_scope(&self) -> Option<String> {
        None
    }

    /// The schema dialect this model sends for structured output.
    fn schema_dialect(&self) -> SchemaDialect {
        SchemaDialect::JsonSchema
    }

    /// What this model takes in content parts (images, documents, audio)
    /// and how it counts their tokens; checked before any call. By default
    /// every part, counted at the largest of the providers' rates.
    fn part_policy(&self) -> &PartPolicy {
        PartPolicy::any()
    }
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The object-safe form of [`Model`], for choosing a provider at run time.
/// Every `Model` is a `DynModel`; `Arc<dyn DynModel>` is a `Model` again.
pub trait DynModel: Send + Sync + 'static {
    /// See [`Model::generate`].
    fn generate_boxed<'a>(
        &'a self,
        request: &'a LlmRequest,
    ) -> BoxFuture<'a, Result<LlmResponse, CallError>>;
    /// See [`Model::prepare`].
    fn prepare_boxed(&self) -> BoxFuture<'_, Result<(), CallError>>;
    /// See [`Model::cleanup`].
    fn cleanup_boxed(&self) -> BoxFuture<'_, ()>;
    /// See [`Model::name`].
    fn dyn_name(&self) -> &str;
    /// See [`Model::quota_scope`].
    fn dyn_quota_scope(&self) -> Option<String>;
    /// See [`Model::schema_dialect`].
    fn dyn_schema_dialect(&self) -> SchemaDialect;
    /// See [`Model::part_policy`].
    fn dyn_part_policy(&self) -> &PartPolicy;
}

impl<M: Model> DynModel for M {
    fn generate_boxed<'a>(
        &'a self,
        request: &'a LlmRequest,
    ) -> BoxFuture<'a, Result<LlmResponse, CallError>> {
        Box::pin(self.generate(request))
    }
    fn prepare_boxed(&self) -> BoxFuture<'_, Result<(), CallError>> {
        Box::pin(self.prepare())
    }
    fn cleanup_boxed(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.cleanup())
    }
    fn dyn_name(&self) -> &str {
        self.name()
    }
    fn dyn_quota_scope(&self) -> Option<String> {
        self.quota_scope()
    }
    fn dyn_schema_dialect(&self) -> SchemaDialect {
        self.schema_dialect()
    }
    fn dyn_part_policy(&self) -> &PartPolicy {
        self.part_policy()
    }
}

impl Model for Arc<dyn DynModel> {
    async fn generate(&self, request: &LlmRequest) -> Result<LlmResponse, CallError> {
        self.as_ref().generate_boxed(request).await
    }
    async fn prepare(&self) -> Result<(), CallError> {
        self.as_ref().prepare_boxed().await
    }
    async fn cleanup(&self) {
        self.as_ref().cleanup_boxed().await;
    }
    fn name(&self) -> &str {
        self.as_ref().dyn_name()
    }
    fn quota_scope(&self) -> Option<String> {
        self.as_ref().dyn_quota_scope()
    }
    fn schema_dialect(&self) -> SchemaDialect {
        self.as_ref().dyn_schema_dialect()
    }
    fn part_policy(&self) -> &PartPolicy {
        self.as_ref().dyn_part_policy()
    }
}

/// A shared model is a model: one instance (say, a context cache) can
/// serve several strategies.
impl<M: Model> Model for Arc<M> {
    fn generate(
        &self,
        request: &LlmRequest,
    ) -> impl Future<Output = Result<LlmResponse, CallError>> + Send {
        self.as_ref().generate(request)
    }
    fn prepare(&self) -> impl Future<Output = Result<(), CallError>> + Send {
        self.as_ref().prepare()
    }
    fn cleanup(&self) -> impl Future<Output = ()> + Send {
        self.as_ref().cleanup()
    }
    fn name(&self) -> &str {
        self.as_ref().name()
    }
    fn quota_scope(&self) -> Option<String> {
        self.as_ref().quota_scope()
    }
    fn schema_dialect(&self) -> SchemaDialect {
        self.as_ref().schema_dialect()
    }
    fn part_policy(&self) -> &PartPolicy {
        self.as_ref().part_policy()
    }
}

/// Turns a response into an output. A failure is a retryable
/// `validation_error` (its `Display` is the message) that keeps the
/// response's billed usage.
pub trait ResponseParser: Send + Sync + 'static {
    /// The parsed output.
    type Output: Send + 'static;
    /// Why a response does not parse.
    type Error: std::fmt::Display;
    /// Parses one response.
    fn parse(&self, response: &LlmResponse) -> Result<Self::Output, Self::Error>;
}

impl<T, E, F> ResponseParser for F
where
    F: Fn(&LlmResponse) -> Result<T, E> + Send + Sync + 'static,
    T: Send + 'static,
    E: std::fmt::Display,
{
    type Output = T;
    type Error = E;
    fn parse(&self, response: &LlmResponse) -> Result<T, E> {
        self(response)
    }
}

/// The parser that keeps the response text as it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct TextParser;

impl ResponseParser for TextParser {
    type Output = String;
    type Error = std::convert::Infallible;
    fn parse(&self, response: &LlmResponse) -> Result<String, Self::Error> {
        Ok(response.text.clone())
    }
}

/// A [`Model`] plus a [`ResponseParser`]: the Rust counterpart of the seed's
/// `GeminiStrategy(model, response_parser, temperature)`, for any model.
///
/// `prepare` and `cleanup` delegate to the model, so a managed model (say, a
/// context cache) is set up once per run.
#[derive(Debug, Clone)]
pub struct ModelStrategy<M, P = TextParser> {
    model: M,
    parser: P,
    defaults: RequestDefaults,
}

impl<M: Model> ModelStrategy<M, TextParser> {
    /// A strategy whose output is the response text.
    pub fn text(model: M) -> Self {
        Self::new(model, TextParser)
    }
}

impl<M: Model, P: ResponseParser> ModelStrategy<M, P> {
    /// A strategy that parses each response with `parser`.
    pub fn new(model: M, parser: P) -> Self {
        Self {
            model,
            parser,
            defaults: RequestDefaults::default(),
        }
    }

    /// Sets the temperature of every request.
    #[must_use]
    pub fn with_temperature(mut self, temperature: f32) -> Self {
        self.defaults.temperature = Some(temperature);
        self
    }

    /// Sets the output token limit of every request.
    #[must_use]
    pub fn with_max_output_tokens(mut self, max: u32) -> Self {
        self.defaults.max_output_tokens = Some(max);
        self
    }

    /// Sets a system instruction for every request.
    #[must_use]
    pub fn with_system(mut self, system: impl Into<String>) -> Self {
        self.defaults.system = Some(system.into());
        self
    }

    /// Replaces every request setting at once.
    #[must_use]
    pub fn with_defaults(mut self, defaults: RequestDefaults) -> Self {
        self.defaults = defaults;
        self
    }

    /// Asks for provider-native JSON output following `schema` (translated
    /// to each provider's dialect; the reply text is the JSON). For typed,
    /// validated output use [`StructuredStrategy`](crate::StructuredStrategy).
    #[must_use]
    pub fn with_response_schema(mut self, schema: serde_json::Value) -> Self {
        self.defaults.response_schema = Some(Arc::new(ResponseSchema::new("output", schema)));
        self
    }

    /// The model.
    pub fn model(&self) -> &M {
        &self.model
    }

    fn parse(&self, response: &LlmResponse) -> Result<Completion<P::Output>, CallError> {
        let usage = response.token_usage();
        match self.parser.parse(response) {
            Ok(out) => Ok((out, usage)),
            Err(e) => Err(CallError::validation(e.to_string()).with_usage_if(usage)),
        }
    }
}

impl<M: Model, P: ResponseParser> Strategy for ModelStrategy<M, P> {
    type Output = P::Output;

    async fn prepare(&self) -> Result<(), CallError> {
        self.model.prepare().await
    }

    async fn execute(
        &self,
        prompt: &Prompt,
        _attempt: u32,
        timeout: Duration,
        state: &mut RetryState,
    ) -> Result<Completion<P::Output>, CallError> {
        let request = self.defaults.request(prompt.clone(), timeout);
        let response = self.model.generate(&request).await?;
        state.report_limits(response.metadata.rate_limits);
        self.parse(&response)
    }

    async fn cleanup(&self) {
        self.model.cleanup().await;
    }

    fn quota_scope(&self) -> Option<String> {
        self.model.quota_scope()
    }

    fn part_policy(&self) -> &crate::attachment::PartPolicy {
        self.model.part_policy()
    }

    async fn dry_run(&self, prompt: &Prompt) -> Result<Completion<P::Output>, CallError> {
        let (text, usage) = dry_run_placeholder(prompt);
        self.parse(&LlmResponse::new(text, usage.unwrap_or_default()))
    }
}
