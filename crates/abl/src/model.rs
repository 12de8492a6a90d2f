//! The model a run calls: a provider from `provider:model` with its key, or
//! the built-in mock started in-process on loopback; and the `--schema`
//! file, checked against that provider's dialect before any call.

use std::path::Path;
use std::sync::Arc;

use async_batch_llm::Validator;
use async_batch_llm::providers::{ApiKey, HttpOptions, ModelOptions, llm_with};
use async_batch_llm::{DynModel, Model as _, ResponseSchema};
use serde_json::Value;

use crate::exit::UsageError;
use crate::settings::ModelChoice;

/// The mock server of a `mock:` run; dropping it stops the server.
pub struct Mock {
    _server: abl_mock::MockServer,
}

fn usage(msg: impl Into<String>) -> UsageError {
    UsageError(msg.into())
}

/// The `provider:model` spec and options `choice` stands for, with the
/// mock started when it is one (`mock:` runs speak OpenAI's API on
/// loopback). The key comes from `--api-key-file` or, left unset, from the
/// provider's environment variables. A dry run calls nothing, so it needs
/// no key: without one it gets a placeholder that is never sent.
pub fn target(
    choice: &ModelChoice,
    http: HttpOptions,
    dry_run: bool,
) -> Result<(String, ModelOptions, Option<Mock>), UsageError> {
    match choice {
        ModelChoice::Mock(m) => {
            let server = abl_mock::MockServer::start_dedicated(m.config.clone(), 1)
                .map_err(|e| usage(format!("cannot start the mock provider: {e}")))?;
            let options = ModelOptions {
                api_key: Some(ApiKey::new("mock-key")),
                base_url: Some(format!("{}/v1", server.base_url())),
                http,
                ..ModelOptions::default()
            };
            Ok((
                format!("openai:mock-{}", m.mode),
                options,
                Some(Mock { _server: server }),
            ))
        }
        ModelChoice::Provider {
            spec,
            base_url,
            api_key_file,
        } => {
            let api_key = match api_key_file {
                Some(p) => Some(ApiKey::from_file(p).map_err(|e| usage(e.to_string()))?),
                None if dry_run && ApiKey::from_env(spec.provider.key_vars()).is_none() => {
                    Some(ApiKey::new("dry-run: never sent"))
                }
                None => None,
            };
            let options = ModelOptions {
                api_key,
                base_url: base_url.clone(),
                http,
                ..ModelOptions::default()
            };
            Ok((
                format!("{}:{}", spec.provider.prefix(), spec.model),
                options,
                None,
            ))
        }
    }
}

/// Builds the model of `choice` with a connection pool for `concurrency`.
pub fn build(
    choice: &ModelChoice,
    concurrency: usize,
    dry_run: bool,
) -> Result<(Arc<dyn DynModel>, Option<Mock>), UsageError> {
    let http = HttpOptions {
        max_connections: concurrency,
        ..HttpOptions::default()
    };
    let (spec, options, mock) = target(choice, http, dry_run)?;
    let model = llm_with(&spec, options).map_err(|e| usage(e.to_string()))?;
    Ok((model, mock))
}

/// Reads the `--schema` file: a JSON object that is a valid JSON schema and
/// that `model`'s provider can take. Returns its validator and its text
/// (the run's identity fingerprints the text).
pub fn read_schema(
    path: &Path,
    model: &Arc<dyn DynModel>,
) -> Result<(Validator<Value>, String), UsageError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| usage(format!("--schema {}: cannot read: {e}", path.display())))?;
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| usage(format!("--schema {}: not valid JSON: {e}", path.display())))?;
    if !value.is_object() {
        return Err(usage(format!(
            "--schema {}: a JSON schema must be an object",
            path.display()
        )));
    }
    let validator = Validator::<Value>::with_schema(ResponseSchema::new("output", value))
        .map_err(|e| usage(format!("--schema {}: {e}", path.display())))?;
    let schema = validator.schema();
    // Translated now, so a schema the provider refuses (an open `{}` in
    // OpenAI's strict mode, a recursive type for Gemini) stops the run here
    // instead of failing every item.
    schema.for_dialect(model.schema_dialect()).map_err(|e| {
        usage(format!(
            "--schema {}: {} cannot take this schema: {}",
            path.display(),
            model.name(),
            e.message()
        ))
    })?;
    Ok((validator, text))
}

/// The output of a run without a schema: the reply's text.
pub type TextOut = fn(&async_batch_llm::LlmResponse) -> Result<Value, std::convert::Infallible>;

/// The reply's text as an item's output.
#[allow(clippy::unnecessary_wraps)] // a ModelStrategy parser returns a Result
pub fn text_out(r: &async_batch_llm::LlmResponse) -> Result<Value, std::convert::Infallible> {
    Ok(Value::String(r.text.clone()))
}
