//! Anthropic Messages over HTTP.

use serde_json::{Value, json};

use super::http::{Endpoint, HttpOptions, shape_error};
use super::key::ApiKey;
use super::wire::{
    PartData, check_output, merge, part_data, system_text, turns, u64_at, with_parts,
};
use crate::attachment::{PartKind, PartPolicy};
use crate::error::{CallError, Error};
use crate::item::{Message, Role};
use crate::limit::default_scope_name;
use crate::model::{LlmRequest, LlmResponse, Model, ResponseMetadata};
use crate::schema::SchemaDialect;

/// The `anthropic-version` header sent with every request.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// The name of the forced tool that carries structured output.
pub const OUTPUT_TOOL: &str = "output";

/// Settings of an [`AnthropicModel`].
#[derive(Debug, Clone)]
pub struct AnthropicConfig {
    /// The model name.
    pub model: String,
    /// Base URL without the version (`https://api.anthropic.com`).
    pub base_url: String,
    /// The key (`ANTHROPIC_API_KEY`).
    pub api_key: ApiKey,
    /// `max_tokens` when a request sets none (required by the API; 1024).
    pub default_max_tokens: u32,
    /// Which shared prefix to mark with `cache_control` (none by default).
    pub prompt_cache: PromptCache,
    /// HTTP settings.
    pub http: HttpOptions,
}

/// Anthropic prompt caching: which shared prefix of every request gets a
/// `cache_control: {"type": "ephemeral"}` breakpoint. Reads then cost a
/// tenth of the input price and show as cached input tokens; the first
/// write shows as cache-write tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PromptCache {
    /// Mark the system text.
    pub system: bool,
    /// Mark the first N conversation turns (a shared document or few-shot
    /// examples placed before the item's own question); 0 for none.
    pub leading_turns: usize,
}

/// An Anthropic model over HTTP.
pub struct AnthropicModel {
    cfg: AnthropicConfig,
    endpoint: Endpoint,
    parts: PartPolicy,
}

impl std::fmt::Debug for AnthropicModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnthropicModel")
            .field("config", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl AnthropicModel {
    /// A model with `config`.
    pub fn new(config: AnthropicConfig) -> Result<Self, Error> {
        let scope = default_scope_name(
            "anthropic",
            &config.base_url,
            config.api_key.expose(),
            &config.model,
        );
        let headers = vec![
            ("x-api-key", config.api_key.expose().to_owned()),
            ("anthropic-version", ANTHROPIC_VERSION.to_owned()),
        ];
        Ok(Self {
            endpoint: Endpoint::new(&config.http, &config.base_url, headers, scope)?,
            cfg: config,
            parts: PartPolicy::anthropic(),
        })
    }

    /// The way to the provider (shared with its batch client).
    #[cfg_attr(not(feature = "anthropic"), allow(dead_code))]
    pub(crate) fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// A turn's content: its text, or `image` / `document` blocks then a
    /// `text` block; `cache` marks the last block as a cache breakpoint.
    fn content(m: &Message, cache: bool) -> Result<Value, CallError> {
        let ephemeral = || json!({"type": "ephemeral"});
        if m.attachments.is_empty() && !cache {
            return Ok(json!(m.content));
        }
        let mut blocks = Vec::with_capacity(m.attachments.len() + 1);
        for a in &m.attachments {
            let (kind, data) = part_data(a)?;
            let source = match data {
                PartData::Url(u) => json!({"type": "url", "url": u}),
                PartData::Inline(b, media) => {
                    json!({"type": "base64", "media_type": media.as_str(), "data": b})
                }
            };
            let typ = if kind == PartKind::Image {
                "image"
            } else {
                "document"
            };
            blocks.push(json!({"type": typ, "source": source}));
        }
        if !m.content.is_empty() || blocks.is_empty() {
            blocks.push(json!({"type": "text", "text": m.content}));
        }
        if cache && let Some(Value::Object(last)) = blocks.last_mut() {
            last.insert("cache_control".into(), ephemeral());
        }
        Ok(Value::Array(blocks))
    }

    /// The JSON body for `req`.
    pub fn request_body(&self, req: &LlmRequest) -> Result<Value, CallError> {
        let cache = self.cfg.prompt_cache;
        let ephemeral = || json!({"type": "ephemeral"});
        let messages: Vec<Value> = turns(req)
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let role = if m.role == Role::Assistant {
                    "assistant"
                } else {
                    "user"
                };
                // One breakpoint, on the last turn of the shared prefix.
                let breakpoint = cache.leading_turns > 0 && i + 1 == cache.leading_turns;
                Ok(json!({"role": role, "content": Self::content(m, breakpoint)?}))
            })
            .collect::<Result<_, CallError>>()?;
        let mut body = json!({
            "model": self.cfg.model,
            "max_tokens": req.max_output_tokens.unwrap_or(self.cfg.default_max_tokens),
            "messages": messages,
        });
        if let Some(s) = system_text(req) {
            body["system"] = if cache.system {
                json!([{"type": "text", "text": s, "cache_control": ephemeral()}])
            } else {
                json!(s)
            };
        }
        if let Some(t) = req.temperature {
            body["temperature"] = json!(t);
        }
        if let Some(schema) = &req.response_schema {
            let input = schema.for_dialect(SchemaDialect::AnthropicTool)?;
            body["tools"] = json!([{"name": OUTPUT_TOOL, "description": "Record the answer in the required structure.", "input_schema": input}]);
            body["tool_choice"] = json!({"type": "tool", "name": OUTPUT_TOOL});
        }
        merge(&mut body, req.provider_options.as_ref());
        Ok(body)
    }

    /// Reads a Messages body. The input of a forced `output` tool call
    /// becomes the text (as JSON).
    pub fn parse_response(
        body: &Value,
        request_id: Option<String>,
    ) -> Result<LlmResponse, CallError> {
        let blocks = body
            .get("content")
            .and_then(Value::as_array)
            .ok_or_else(|| shape_error("no 'content' array"))?;
        let mut text = String::new();
        let mut meta = ResponseMetadata {
            finish_reason: body
                .get("stop_reason")
                .and_then(Value::as_str)
                .map(str::to_owned),
            model: body.get("model").and_then(Value::as_str).map(str::to_owned),
            request_id: request_id
                .or_else(|| body.get("id").and_then(Value::as_str).map(str::to_owned)),
            ..ResponseMetadata::default()
        };
        for b in blocks {
            match b.get("type").and_then(Value::as_str) {
                Some("text") => {
                    text.push_str(b.get("text").and_then(Value::as_str).unwrap_or_default());
                }
                Some("tool_use") => {
                    if b.get("name").and_then(Value::as_str) == Some(OUTPUT_TOOL)
                        && let Some(input) = b.get("input")
                    {
                        text = input.to_string();
                    }
                    meta.tool_calls.push(b.clone());
                }
                _ => {}
            }
        }
        let refused = meta.finish_reason.as_deref() == Some("refusal");
        if refused {
            meta.refusal = Some("the model refused (stop_reason: refusal)".into());
        }
        let usage = body.get("usage");
        let uncached = usage.and_then(|u| u64_at(u, "/input_tokens"));
        let read = usage.and_then(|u| u64_at(u, "/cache_read_input_tokens"));
        let created = usage.and_then(|u| u64_at(u, "/cache_creation_input_tokens"));
        let input = uncached.map(|n| {
            n.saturating_add(read.unwrap_or(0))
                .saturating_add(created.unwrap_or(0))
        });
        let output = usage.and_then(|u| u64_at(u, "/output_tokens"));
        let resp = LlmResponse {
            text,
            input_tokens: input,
            output_tokens: output,
            total_tokens: input.zip(output).map(|(i, o)| i.saturating_add(o)),
            cached_input_tokens: read,
            reasoning_tokens: None,
            cache_write_input_tokens: created,
            metadata: meta,
            raw: None,
        };
        check_output(resp, refused)
    }
}

impl Model for AnthropicModel {
    async fn generate(&self, request: &LlmRequest) -> Result<LlmResponse, CallError> {
        let staged = with_parts(request, &self.parts)?;
        let body = staged.body(&self.request_body(&staged.request)?).await?;
        let reply = self
            .endpoint
            .post_body("v1/messages", body, &[], request.timeout)
            .await?;
        self.endpoint.finish(reply, Self::parse_response)
    }

    fn name(&self) -> &str {
        &self.cfg.model
    }

    fn quota_scope(&self) -> Option<String> {
        Some(self.endpoint.scope().to_owned())
    }

    fn schema_dialect(&self) -> SchemaDialect {
        SchemaDialect::AnthropicTool
    }

    fn part_policy(&self) -> &PartPolicy {
        &self.parts
    }
}
