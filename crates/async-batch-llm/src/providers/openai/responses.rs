//! OpenAI's Responses API (`POST /v1/responses`).

use serde_json::{Value, json};

use super::{OpenAiConfig, non_empty, role};
use crate::attachment::{PartKind, PartPolicy};
use crate::error::{CallError, Error};
use crate::item::{Message, Role};
use crate::model::{LlmRequest, LlmResponse, Model, ResponseMetadata};
use crate::providers::http::{Endpoint, shape_error};
use crate::providers::wire::{
    PartData, check_output, merge, part_data, system_text, turns, u64_at, with_parts,
};
use crate::schema::SchemaDialect;

/// OpenAI's Responses API (`POST /v1/responses`): the default for `openai:`.
pub struct OpenAiModel {
    config: OpenAiConfig,
    endpoint: Endpoint,
    parts: PartPolicy,
}

impl std::fmt::Debug for OpenAiModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiModel")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl OpenAiModel {
    /// A Responses model.
    pub fn new(config: OpenAiConfig) -> Result<Self, Error> {
        Ok(Self {
            endpoint: config.endpoint("openai")?,
            config,
            parts: PartPolicy::openai_responses(),
        })
    }

    /// A message's content: its text, or `input_image` / `input_file`
    /// parts then `input_text` when it has attachments.
    fn content(m: &Message) -> Result<Value, CallError> {
        if m.attachments.is_empty() {
            return Ok(json!(m.content));
        }
        let mut parts = Vec::with_capacity(m.attachments.len() + 1);
        for a in &m.attachments {
            let (kind, data) = part_data(a)?;
            parts.push(match (kind, data) {
                (PartKind::Image, PartData::Url(u)) => json!({"type": "input_image", "image_url": u}),
                (PartKind::Image, PartData::Inline(..)) => {
                    json!({"type": "input_image", "image_url": a.data_url()})
                }
                (_, PartData::Url(u)) => json!({"type": "input_file", "file_url": u}),
                (_, PartData::Inline(..)) => {
                    json!({"type": "input_file", "filename": a.file_name(), "file_data": a.data_url()})
                }
            });
        }
        if !m.content.is_empty() {
            parts.push(json!({"type": "input_text", "text": m.content}));
        }
        Ok(Value::Array(parts))
    }

    /// The JSON body for `req`.
    pub fn request_body(&self, req: &LlmRequest) -> Result<Value, CallError> {
        let turns = turns(req);
        let input = match turns.as_slice() {
            [only] if only.role == Role::User && only.attachments.is_empty() => {
                json!(only.content)
            }
            _ => Value::Array(
                turns
                    .iter()
                    .map(|m| Ok(json!({"role": role(m.role), "content": Self::content(m)?})))
                    .collect::<Result<_, CallError>>()?,
            ),
        };
        let mut body = json!({"model": self.config.model, "input": input, "store": false});
        if let Some(s) = system_text(req) {
            body["instructions"] = json!(s);
        }
        if let Some(t) = req.temperature {
            body["temperature"] = json!(t);
        }
        if let Some(m) = req.max_output_tokens {
            body["max_output_tokens"] = json!(m);
        }
        if let Some(schema) = &req.response_schema {
            let strict = schema.for_dialect(SchemaDialect::OpenAiStrict)?;
            body["text"] = json!({"format": {"type": "json_schema", "name": schema.name(), "schema": strict, "strict": true}});
        }
        merge(&mut body, req.provider_options.as_ref());
        Ok(body)
    }

    /// Reads a Responses body.
    pub fn parse_response(
        body: &Value,
        request_id: Option<String>,
    ) -> Result<LlmResponse, CallError> {
        let output = body
            .get("output")
            .and_then(Value::as_array)
            .ok_or_else(|| shape_error("no 'output' array"))?;
        let mut text = String::new();
        let mut meta = ResponseMetadata {
            model: body.get("model").and_then(Value::as_str).map(str::to_owned),
            request_id: request_id
                .or_else(|| body.get("id").and_then(Value::as_str).map(str::to_owned)),
            ..ResponseMetadata::default()
        };
        for item in output {
            match item.get("type").and_then(Value::as_str) {
                Some("message") => {
                    for part in item
                        .get("content")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        match part.get("type").and_then(Value::as_str) {
                            Some("output_text") => text.push_str(
                                part.get("text").and_then(Value::as_str).unwrap_or_default(),
                            ),
                            Some("refusal") => {
                                meta.refusal = non_empty(part.get("refusal"));
                            }
                            _ => {}
                        }
                    }
                }
                Some("function_call" | "custom_tool_call") => meta.tool_calls.push(item.clone()),
                _ => {}
            }
        }
        let status = body.get("status").and_then(Value::as_str);
        let reason = body
            .pointer("/incomplete_details/reason")
            .and_then(Value::as_str);
        meta.finish_reason = Some(reason.or(status).unwrap_or("completed").to_owned());
        let usage = body.get("usage");
        let resp = LlmResponse {
            text,
            input_tokens: usage.and_then(|u| u64_at(u, "/input_tokens")),
            output_tokens: usage.and_then(|u| u64_at(u, "/output_tokens")),
            total_tokens: usage.and_then(|u| u64_at(u, "/total_tokens")),
            cached_input_tokens: usage
                .and_then(|u| u64_at(u, "/input_tokens_details/cached_tokens")),
            reasoning_tokens: usage
                .and_then(|u| u64_at(u, "/output_tokens_details/reasoning_tokens")),
            cache_write_input_tokens: usage
                .and_then(|u| u64_at(u, "/input_tokens_details/cache_write_tokens")),
            metadata: meta,
            raw: None,
        };
        check_output(resp, reason == Some("content_filter"))
    }
}

impl Model for OpenAiModel {
    async fn generate(&self, request: &LlmRequest) -> Result<LlmResponse, CallError> {
        let staged = with_parts(request, &self.parts)?;
        let body = staged.body(&self.request_body(&staged.request)?).await?;
        let reply = self
            .endpoint
            .post_body("responses", body, &[], request.timeout)
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
