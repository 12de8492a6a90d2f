//! OpenAI Responses ([`OpenAiModel`]), OpenAI Chat Completions
//! ([`ChatModel`]), and OpenAI-compatible servers (OpenRouter, DeepSeek,
//! vLLM, Ollama, LiteLLM…) through Chat Completions; embeddings
//! ([`OpenAiEmbeddings`]) on any of them that serves `/v1/embeddings`.

mod chat;
mod embeddings;
mod responses;

pub use chat::{ChatFlavor, ChatModel};
pub use embeddings::OpenAiEmbeddings;
pub use responses::OpenAiModel;

use super::http::{Endpoint, HttpOptions};
use super::key::ApiKey;
use crate::error::Error;
use crate::item::Role;
use crate::limit::default_scope_name;
use serde_json::Value;

/// A string field that says something: `refusal: ""` (which several
/// OpenAI-compatible servers send on every answer) is no refusal.
fn non_empty(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty())
        .map(str::to_owned)
}

fn role(r: Role) -> &'static str {
    match r {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
    }
}

/// Settings shared by the OpenAI-style models.
#[derive(Debug, Clone)]
pub struct OpenAiConfig {
    /// The model name.
    pub model: String,
    /// Base URL including the version path (`https://api.openai.com/v1`).
    pub base_url: String,
    /// The key; `None` sends no `Authorization` header (local servers).
    pub api_key: Option<ApiKey>,
    /// HTTP settings.
    pub http: HttpOptions,
}

impl OpenAiConfig {
    /// The endpoint of `provider` for this configuration: bearer auth when
    /// a key is given.
    pub(crate) fn endpoint(&self, provider: &str) -> Result<Endpoint, Error> {
        let key = self.api_key.as_ref().map_or("", ApiKey::expose);
        let headers = self
            .api_key
            .as_ref()
            .map(|k| ("authorization", format!("Bearer {}", k.expose())))
            .into_iter()
            .collect();
        Endpoint::new(
            &self.http,
            &self.base_url,
            headers,
            default_scope_name(provider, &self.base_url, key, &self.model),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_empty_refusal_is_no_refusal() {
        assert_eq!(non_empty(Some(&json!(""))), None);
        assert_eq!(non_empty(Some(&json!("  "))), None);
        assert_eq!(non_empty(Some(&Value::Null)), None);
        assert_eq!(non_empty(Some(&json!("I can't"))), Some("I can't".into()));
    }
}
