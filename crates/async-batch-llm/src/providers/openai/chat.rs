//! OpenAI Chat Completions (`POST /v1/chat/completions`) and the servers
//! that speak it.

use serde_json::{Value, json};

use super::{OpenAiConfig, non_empty, role};
use crate::attachment::{MediaType, PartKind, PartPolicy};
use crate::error::{CallError, Error, ErrorCategory};
use crate::item::Message;
use crate::model::{LlmRequest, LlmResponse, Model, ResponseMetadata};
use crate::providers::http::{Endpoint, parse_body, shape_error};
use crate::providers::wire::{
    PartData, check_output, merge, part_data, system_text, turns, u64_at, with_parts,
};
use crate::schema::SchemaDialect;

/// Which OpenAI-style server a Chat Completions model talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatFlavor {
    /// OpenAI itself (`max_completion_tokens`).
    OpenAi,
    /// OpenRouter: attribution headers and provider routing passthrough.
    OpenRouter {
        /// `HTTP-Referer` header (your site).
        referer: Option<String>,
        /// `X-Title` header (your app).
        title: Option<String>,
        /// The `provider` routing object, sent as is.
        provider: Option<Value>,
    },
    /// DeepSeek (`prompt_cache_hit_tokens`).
    DeepSeek,
    /// Any other compatible server (`max_tokens`).
    Compatible,
}

impl ChatFlavor {
    fn name(&self) -> &'static str {
        match self {
            ChatFlavor::OpenAi => "openai-chat",
            ChatFlavor::OpenRouter { .. } => "openrouter",
            ChatFlavor::DeepSeek => "deepseek",
            ChatFlavor::Compatible => "openai-compatible",
        }
    }
}
/// OpenAI Chat Completions (`POST /v1/chat/completions`), for `openai-chat:`
/// and every OpenAI-compatible server.
pub struct ChatModel {
    config: OpenAiConfig,
    endpoint: Endpoint,
    flavor: ChatFlavor,
    parts: PartPolicy,
}

impl std::fmt::Debug for ChatModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatModel")
            .field("config", &self.config)
            .field("flavor", &self.flavor)
            .finish_non_exhaustive()
    }
}

impl ChatModel {
    /// A Chat Completions model of `flavor`.
    pub fn new(config: OpenAiConfig, flavor: ChatFlavor) -> Result<Self, Error> {
        // DeepSeek's API reads text only.
        let parts = if flavor == ChatFlavor::DeepSeek {
            PartPolicy::text_only("DeepSeek")
        } else {
            PartPolicy::openai_chat()
        };
        Ok(Self {
            endpoint: config.endpoint(flavor.name())?,
            config,
            flavor,
            parts,
        })
    }

    /// A message's content: its text, or `image_url` / `file` /
    /// `input_audio` parts then a `text` part when it has attachments.
    fn content(m: &Message) -> Result<Value, CallError> {
        if m.attachments.is_empty() {
            return Ok(json!(m.content));
        }
        let mut parts = Vec::with_capacity(m.attachments.len() + 1);
        for a in &m.attachments {
            let (kind, data) = part_data(a)?;
            parts.push(match (kind, data) {
                (PartKind::Image, PartData::Url(u)) => {
                    json!({"type": "image_url", "image_url": {"url": u}})
                }
                (PartKind::Image, PartData::Inline(..)) => {
                    json!({"type": "image_url", "image_url": {"url": a.data_url()}})
                }
                (PartKind::Audio, PartData::Inline(b, media)) => {
                    let format = if media == MediaType::Mp3 { "mp3" } else { "wav" };
                    json!({"type": "input_audio", "input_audio": {"data": b, "format": format}})
                }
                (_, PartData::Inline(..)) => {
                    json!({"type": "file", "file": {"filename": a.file_name(), "file_data": a.data_url()}})
                }
                (_, PartData::Url(_)) => {
                    return Err(CallError::new(
                        ErrorCategory::ClientError,
                        format!("Chat Completions takes only images by URL, not {}", a.describe()),
                    )
                    .with_retryable(false));
                }
            });
        }
        if !m.content.is_empty() {
            parts.push(json!({"type": "text", "text": m.content}));
        }
        Ok(Value::Array(parts))
    }

    /// The JSON body for `req`.
    pub fn request_body(&self, req: &LlmRequest) -> Result<Value, CallError> {
        let mut messages: Vec<Value> = Vec::new();
        let mut system = system_text(req);
        // DeepSeek has JSON mode but no schema: the schema goes in the
        // system text and the reply is validated by the caller.
        if self.flavor == ChatFlavor::DeepSeek
            && let Some(schema) = &req.response_schema
        {
            let spec = schema.for_dialect(SchemaDialect::JsonSchema)?;
            let ask = format!("Reply with one JSON object that follows this JSON schema:\n{spec}");
            system = Some(match system {
                Some(s) => format!("{s}\n\n{ask}"),
                None => ask,
            });
        }
        if let Some(s) = system {
            messages.push(json!({"role": "system", "content": s}));
        }
        for m in &turns(req) {
            messages.push(json!({"role": role(m.role), "content": Self::content(m)?}));
        }
        let mut body = json!({"model": self.config.model, "messages": messages});
        if let Some(t) = req.temperature {
            body["temperature"] = json!(t);
        }
        if let Some(m) = req.max_output_tokens {
            let key = if self.flavor == ChatFlavor::OpenAi {
                "max_completion_tokens"
            } else {
                "max_tokens"
            };
            body[key] = json!(m);
        }
        if let Some(schema) = &req.response_schema {
            body["response_format"] = if self.flavor == ChatFlavor::DeepSeek {
                json!({"type": "json_object"})
            } else {
                let strict = schema.for_dialect(SchemaDialect::OpenAiStrict)?;
                json!({"type": "json_schema", "json_schema": {"name": schema.name(), "schema": strict, "strict": true}})
            };
        }
        if let ChatFlavor::OpenRouter {
            provider: Some(p), ..
        } = &self.flavor
        {
            body["provider"] = p.clone();
        }
        merge(&mut body, req.provider_options.as_ref());
        Ok(body)
    }

    /// Reads a Chat Completions body.
    pub fn parse_response(
        body: &Value,
        request_id: Option<String>,
    ) -> Result<LlmResponse, CallError> {
        let choice = body
            .get("choices")
            .and_then(Value::as_array)
            .and_then(|c| c.first())
            .ok_or_else(|| shape_error("no 'choices'"))?;
        if let Some(err) = choice.get("error").filter(|e| !e.is_null()) {
            let wrapped = json!({"error": err});
            return Err(parse_body(
                200,
                &reqwest::header::HeaderMap::new(),
                wrapped.to_string().as_bytes(),
            )
            .err()
            .unwrap_or_else(|| shape_error("error in choice")));
        }
        let message = choice
            .get("message")
            .ok_or_else(|| shape_error("no 'message' in the first choice"))?;
        let finish = choice
            .get("finish_reason")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let usage = body.get("usage");
        let cached = usage.and_then(|u| {
            u64_at(u, "/prompt_tokens_details/cached_tokens")
                .or_else(|| u64_at(u, "/prompt_cache_hit_tokens"))
        });
        let resp = LlmResponse {
            text: content_text(message.get("content")),
            input_tokens: usage.and_then(|u| u64_at(u, "/prompt_tokens")),
            output_tokens: usage.and_then(|u| u64_at(u, "/completion_tokens")),
            total_tokens: usage.and_then(|u| u64_at(u, "/total_tokens")),
            cached_input_tokens: cached,
            reasoning_tokens: usage
                .and_then(|u| u64_at(u, "/completion_tokens_details/reasoning_tokens")),
            cache_write_input_tokens: None,
            metadata: ResponseMetadata {
                finish_reason: finish.clone(),
                model: body.get("model").and_then(Value::as_str).map(str::to_owned),
                request_id: request_id
                    .or_else(|| body.get("id").and_then(Value::as_str).map(str::to_owned)),
                refusal: non_empty(message.get("refusal")),
                safety_ratings: None,
                tool_calls: message
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default(),
                rate_limits: None,
            },
            raw: None,
        };
        check_output(resp, finish.as_deref() == Some("content_filter"))
    }
}

impl Model for ChatModel {
    async fn generate(&self, request: &LlmRequest) -> Result<LlmResponse, CallError> {
        let staged = with_parts(request, &self.parts)?;
        let body = staged.body(&self.request_body(&staged.request)?).await?;
        let mut extra: Vec<(&str, &str)> = Vec::new();
        if let ChatFlavor::OpenRouter { referer, title, .. } = &self.flavor {
            if let Some(r) = referer {
                extra.push(("http-referer", r));
            }
            if let Some(t) = title {
                extra.push(("x-title", t));
            }
        }
        let reply = self
            .endpoint
            .post_body("chat/completions", body, &extra, request.timeout)
            .await?;
        self.endpoint.finish(reply, Self::parse_response)
    }

    fn name(&self) -> &str {
        &self.config.model
    }

    fn quota_scope(&self) -> Option<String> {
        Some(self.endpoint.scope().to_owned())
    }

    fn schema_dialect(&self) -> SchemaDialect {
        SchemaDialect::OpenAiStrict
    }

    fn part_policy(&self) -> &PartPolicy {
        &self.parts
    }
}

/// The answer text of a message's `content`: a string, or (Mistral's
/// reasoning models) an array of parts whose `text` parts are the answer and
/// whose `thinking` parts are not.
fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn content_is_a_string_or_text_parts() {
        assert_eq!(content_text(Some(&json!("Paris"))), "Paris");
        let mistral = json!([
            {"type": "thinking", "thinking": [{"type": "text", "text": "2+2 is 4"}]},
            {"type": "text", "text": "4"}
        ]);
        assert_eq!(content_text(Some(&mistral)), "4");
        assert_eq!(content_text(Some(&Value::Null)), "");
        assert_eq!(content_text(None), "");
    }
}
