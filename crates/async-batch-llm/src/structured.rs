//! [`StructuredStrategy`]: typed, validated output from any model — the
//! counterpart of the seed's `PydanticAIStrategy`.
//!
//! The schema is derived once from the output type with `schemars`, sent to
//! each provider in its own dialect (see `schema.rs`), and every reply
//! is validated against it before it is deserialized. A reply that fails is a
//! retryable `validation_error`; the next attempt shows the model its reply
//! and what was wrong with it. Usage of every billed attempt is counted.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{CallError, Error, ErrorCategory};
use crate::item::{Message, Prompt, Role};
use crate::model::{LlmRequest, LlmResponse, Model, RequestDefaults};
use crate::schema::{ResponseSchema, example_value};
use crate::strategy::{Completion, RetryState, Strategy, dry_run_placeholder};

/// The [`RetryState`] key under which a failed reply and its error are kept
/// for the next attempt (a [`Feedback`]).
pub const FEEDBACK_KEY: &str = "abl.structured.feedback";

/// A reply that failed validation, kept for the next attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feedback {
    /// The reply as the model sent it (cut to 4,000 characters).
    pub reply: String,
    /// What was wrong with it.
    pub error: String,
}

const MAX_REPLY_ECHO: usize = 4000;
const MAX_ERRORS: usize = 5;

/// Checks replies against a schema and turns them into `T`.
pub struct Validator<T> {
    schema: Arc<ResponseSchema>,
    compiled: jsonschema::Validator,
    _out: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for Validator<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validator")
            .field("schema", &self.schema.name())
            .finish_non_exhaustive()
    }
}

impl<T: DeserializeOwned + JsonSchema> Validator<T> {
    /// A validator for the schema derived from `T`.
    pub fn new() -> Result<Self, Error> {
        Self::with_schema(ResponseSchema::of::<T>())
    }
}

impl<T: DeserializeOwned> Validator<T> {
    /// A validator for an explicit schema.
    pub fn with_schema(schema: ResponseSchema) -> Result<Self, Error> {
        let compiled = jsonschema::validator_for(schema.source()).map_err(|e| {
            Error::config(format!(
                "schema '{}' is not a valid JSON schema: {e}",
                schema.name()
            ))
        })?;
        Ok(Self {
            schema: Arc::new(schema),
            compiled,
            _out: PhantomData,
        })
    }

    /// The schema.
    pub fn schema(&self) -> &Arc<ResponseSchema> {
        &self.schema
    }

    /// Parses a reply: JSON (a surrounding Markdown code fence is removed),
    /// valid against the schema, then deserialized. The error says what was
    /// wrong and where, for the model to fix.
    pub fn parse(&self, reply: &str) -> Result<T, String> {
        let text = strip_fence(reply);
        let value: Value =
            serde_json::from_str(text).map_err(|e| format!("the reply is not valid JSON ({e})"))?;
        self.check(value)
    }

    /// Validates and deserializes a JSON value.
    pub fn check(&self, value: Value) -> Result<T, String> {
        let problems: Vec<String> = self
            .compiled
            .iter_errors(&value)
            .take(MAX_ERRORS + 1)
            .map(|e| {
                let path = e.instance_path().to_string();
                let at = if path.is_empty() {
                    "/".to_owned()
                } else {
                    path
                };
                format!("at {at}: {e}")
            })
            .collect();
        if !problems.is_empty() {
            let more = if problems.len() > MAX_ERRORS {
                "; and more"
            } else {
                ""
            };
            let shown: Vec<&str> = problems
                .iter()
                .take(MAX_ERRORS)
                .map(String::as_str)
                .collect();
            return Err(format!(
                "the reply does not match the schema: {}{more}",
                shown.join("; ")
            ));
        }
        serde_json::from_value(value)
            .map_err(|e| format!("the reply matches the schema but not the type: {e}"))
    }
}

/// Removes one Markdown code fence around `text` (```` ```json … ``` ````).
fn strip_fence(text: &str) -> &str {
    let t = text.trim();
    let Some(rest) = t.strip_prefix("```") else {
        return t;
    };
    let Some(body) = rest.strip_suffix("```") else {
        return t;
    };
    // Drop the info string (`json`) on the opening line.
    match body.find('\n') {
        Some(nl) if !body[..nl].contains(['{', '[']) => body[nl + 1..].trim(),
        _ => body.trim(),
    }
}

/// Typed structured output from any [`Model`]: the schema of `T` in the
/// provider's dialect, each reply validated and deserialized, validation
/// failures retried with the error fed back. Build it with
/// [`StructuredStrategy::new`]. The schema is derived once from `T`
/// (`schemars`), sent to each provider in its own dialect, and every reply
/// is validated before it is deserialized; a reply that fails is retried
/// with the model shown its reply and what was wrong.
///
/// ```no_run
/// use async_batch_llm::providers::llm;
/// use async_batch_llm::{BatchConfig, Item, StructuredStrategy, process_prompts};
/// use schemars::JsonSchema;
/// use serde::Deserialize;
///
/// #[derive(Debug, Deserialize, JsonSchema)]
/// struct Ticket {
///     title: String,
///     priority: Priority,
///     assignee: Option<String>,
///     tags: Vec<String>,
/// }
///
/// #[derive(Debug, Deserialize, JsonSchema)]
/// #[serde(rename_all = "lowercase")]
/// enum Priority { Low, High }
///
/// # async fn run() -> Result<(), async_batch_llm::Error> {
/// let strategy = StructuredStrategy::<Ticket, _>::new(llm("openai:gpt-4o-mini")?)?
///     .with_system("Turn the message into a ticket.");
/// let items = [Item::new("t1", "The printer on floor 2 is on fire, Bob is on it")];
/// let batch = process_prompts(strategy, items, &BatchConfig::default()).await?;
/// let ticket: &Ticket = batch.results[0].output().unwrap();
/// # Ok(()) }
/// ```
pub struct StructuredStrategy<T, M> {
    model: M,
    validator: Arc<Validator<T>>,
    /// Every request setting; its schema is always the validator's.
    defaults: RequestDefaults,
    feedback: bool,
}

impl<T, M: std::fmt::Debug> std::fmt::Debug for StructuredStrategy<T, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StructuredStrategy")
            .field("model", &self.model)
            .field("schema", &self.validator.schema.name())
            .field("feedback", &self.feedback)
            .finish_non_exhaustive()
    }
}

impl<T, M: Clone> Clone for StructuredStrategy<T, M> {
    fn clone(&self) -> Self {
        Self {
            model: self.model.clone(),
            validator: Arc::clone(&self.validator),
            defaults: self.defaults.clone(),
            feedback: self.feedback,
        }
    }
}

impl<T, M> StructuredStrategy<T, M>
where
    T: DeserializeOwned + JsonSchema + Send + 'static,
    M: Model,
{
    /// A strategy for `T` over `model`; the schema is derived here, once.
    pub fn new(model: M) -> Result<Self, Error> {
        Ok(Self::with_validator(model, Arc::new(Validator::new()?)))
    }
}

impl<T, M> StructuredStrategy<T, M>
where
    T: DeserializeOwned + Send + 'static,
    M: Model,
{
    /// A strategy sharing an existing validator (e.g. one per model when
    /// escalating between models).
    pub fn with_validator(model: M, validator: Arc<Validator<T>>) -> Self {
        let defaults = RequestDefaults {
            response_schema: Some(Arc::clone(&validator.schema)),
            ..RequestDefaults::default()
        };
        Self {
            model,
            validator,
            defaults,
            feedback: true,
        }
    }

    /// Sets a system instruction for every request.
    #[must_use]
    pub fn with_system(mut self, system: impl Into<String>) -> Self {
        self.defaults.system = Some(system.into());
        self
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

    /// Replaces every request setting at once, except the schema, which
    /// stays the validator's.
    #[must_use]
    pub fn with_defaults(mut self, defaults: RequestDefaults) -> Self {
        self.defaults = RequestDefaults {
            response_schema: Some(Arc::clone(&self.validator.schema)),
            ..defaults
        };
        self
    }

    /// Whether a retry after a validation failure shows the model its reply
    /// and the error (default on).
    #[must_use]
    pub fn with_feedback(mut self, on: bool) -> Self {
        self.feedback = on;
        self
    }

    /// The model.
    pub fn model(&self) -> &M {
        &self.model
    }

    /// The validator (and through it the schema).
    pub fn validator(&self) -> &Arc<Validator<T>> {
        &self.validator
    }

    /// The request for `prompt`, with the feedback of a failed reply when
    /// there is one.
    pub fn request(&self, prompt: &Prompt, timeout: Duration, state: &RetryState) -> LlmRequest {
        let prompt = match state
            .get::<Feedback>(FEEDBACK_KEY)
            .filter(|_| self.feedback)
        {
            Some(fb) => with_feedback(prompt, fb),
            None => prompt.clone(),
        };
        self.defaults.request(prompt, timeout)
    }

    /// Parses a response; a failure keeps the billed usage and leaves
    /// feedback for the next attempt.
    pub fn parse_response(
        &self,
        response: &LlmResponse,
        state: &mut RetryState,
    ) -> Result<Completion<T>, CallError> {
        let usage = response.token_usage();
        match self.validator.parse(&response.text) {
            Ok(out) => {
                state.remove(FEEDBACK_KEY);
                Ok((out, usage))
            }
            Err(msg) => {
                let reply: String = response.text.chars().take(MAX_REPLY_ECHO).collect();
                state.set(
                    FEEDBACK_KEY,
                    Feedback {
                        reply,
                        error: msg.clone(),
                    },
                );
                Err(CallError::validation(msg).with_usage_if(usage))
            }
        }
    }
}

/// The prompt of a retry: the original turns, the failed reply, and a user
/// turn saying what was wrong.
fn with_feedback(prompt: &Prompt, fb: &Feedback) -> Prompt {
    let mut turns = match prompt {
        Prompt::Text(t) => vec![Message::new(Role::User, t.clone())],
        Prompt::Messages(m) => m.clone(),
    };
    turns.push(Message::new(Role::Assistant, fb.reply.clone()));
    turns.push(Message::new(
        Role::User,
        format!(
            "Your previous reply was rejected: {}. Reply again with only a JSON value that matches the required schema.",
            fb.error
        ),
    ));
    Prompt::Messages(turns)
}

impl<T, M> Strategy for StructuredStrategy<T, M>
where
    T: DeserializeOwned + Send + 'static,
    M: Model,
{
    type Output = T;

    async fn prepare(&self) -> Result<(), CallError> {
        self.model.prepare().await
    }

    async fn execute(
        &self,
        prompt: &Prompt,
        _attempt: u32,
        timeout: Duration,
        state: &mut RetryState,
    ) -> Result<Completion<T>, CallError> {
        let request = self.request(prompt, timeout, state);
        let response = self.model.generate(&request).await?;
        state.report_limits(response.metadata.rate_limits);
        self.parse_response(&response, state)
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

    async fn dry_run(&self, prompt: &Prompt) -> Result<Completion<T>, CallError> {
        let (_, usage) = dry_run_placeholder(prompt);
        let value = example_value(self.validator.schema.source());
        let out = self.validator.check(value).map_err(|e| {
            CallError::new(
                ErrorCategory::LogicError,
                format!("no dry-run placeholder fits the schema: {e}"),
            )
        })?;
        Ok((out, usage))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, JsonSchema, PartialEq)]
    struct Ticket {
        title: String,
        priority: Priority,
        assignee: Option<Person>,
        tags: Vec<String>,
    }

    #[derive(Debug, Deserialize, JsonSchema, PartialEq)]
    #[serde(rename_all = "lowercase")]
    enum Priority {
        Low,
        High,
    }

    #[derive(Debug, Deserialize, JsonSchema, PartialEq)]
    struct Person {
        name: String,
    }

    #[test]
    fn parses_valid_replies_and_explains_invalid_ones() {
        let v = Validator::<Ticket>::new().unwrap();
        let ok = v
            .parse("```json\n{\"title\": \"t\", \"priority\": \"high\", \"assignee\": null, \"tags\": [\"a\"]}\n```")
            .unwrap();
        assert_eq!(ok.priority, Priority::High);
        let err = v
            .parse(r#"{"title": 3, "priority": "urgent", "tags": []}"#)
            .unwrap_err();
        assert!(err.contains("at /title"), "{err}");
        assert!(err.contains("at /priority"), "{err}");
        assert!(v.parse("not json").unwrap_err().contains("not valid JSON"));
        assert_eq!(strip_fence("```\n[1]\n```"), "[1]");
        assert_eq!(strip_fence("```{\"a\":1}```"), "{\"a\":1}");
    }

    #[test]
    fn feedback_becomes_the_next_turns() {
        let fb = Feedback {
            reply: "{}".into(),
            error: "missing title".into(),
        };
        let Prompt::Messages(m) = with_feedback(&Prompt::from("make a ticket"), &fb) else {
            panic!("messages expected");
        };
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].role, Role::Assistant);
        assert!(m[2].content.contains("missing title"));
    }
}
