//! Gemini `generateContent` over HTTP ([`GeminiModel`]) and explicit
//! context caches ([`GeminiCachedModel`]).

mod cache;
mod embeddings;

pub use cache::{
    CONTENT_TAG, CacheOptions, CachedContent, GeminiCachedModel, TAG_PREFIX, content_fingerprint,
};
pub use embeddings::{GEMINI_MAX_EMBED_INPUTS, GeminiEmbeddings};

use serde_json::{Value, json};

use super::http::{Endpoint, HttpOptions, shape_error};
use super::key::ApiKey;
use super::wire::{
    PartData, check_output, merge, part_data, system_text, turns, u64_at, with_parts,
};
use crate::attachment::PartPolicy;
use crate::error::{CallError, Error, ErrorCategory};
use crate::item::{Message, Role};
use crate::limit::default_scope_name;
use crate::model::{LlmRequest, LlmResponse, Model, ResponseMetadata};
use crate::schema::SchemaDialect;

/// Settings of a [`GeminiModel`] (the seed's `GeminiModel(model, client,
/// safety_settings, system_instruction)`).
#[derive(Debug, Clone)]
pub struct GeminiConfig {
    /// The model name (`gemini-2.0-flash`).
    pub model: String,
    /// Base URL without the version (`https://generativelanguage.googleapis.com`).
    pub base_url: String,
    /// The key (`GEMINI_API_KEY` or `GOOGLE_API_KEY`).
    pub api_key: ApiKey,
    /// Safety settings, sent as is (`[{"category": …, "threshold": …}]`).
    pub safety_settings: Option<Value>,
    /// A system instruction for every call.
    pub system_instruction: Option<String>,
    /// Generation config merged into every call (`topK`, `candidateCount`…).
    pub generation_config: Option<Value>,
    /// HTTP settings.
    pub http: HttpOptions,
}

/// A Gemini model over HTTP.
pub struct GeminiModel {
    cfg: GeminiConfig,
    endpoint: Endpoint,
    parts: PartPolicy,
}

impl std::fmt::Debug for GeminiModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeminiModel")
            .field("config", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl GeminiModel {
    /// A model with `config`.
    pub fn new(config: GeminiConfig) -> Result<Self, Error> {
        let scope = default_scope_name(
            "gemini",
            &config.base_url,
            config.api_key.expose(),
            &config.model,
        );
        let headers = vec![("x-goog-api-key", config.api_key.expose().to_owned())];
        Ok(Self {
            endpoint: Endpoint::new(&config.http, &config.base_url, headers, scope)?,
            cfg: config,
            parts: PartPolicy::gemini(),
        })
    }

    /// What this model takes in content parts.
    pub(crate) fn parts(&self) -> &PartPolicy {
        &self.parts
    }

    /// A turn's parts: `inlineData` / `fileData` for attachments, then the
    /// text.
    fn parts_of(m: &Message) -> Result<Vec<Value>, CallError> {
        let mut parts = Vec::with_capacity(m.attachments.len() + 1);
        for a in &m.attachments {
            let (_, data) = part_data(a)?;
            parts.push(match data {
                PartData::Inline(b, media) => {
                    json!({"inlineData": {"mimeType": media.as_str(), "data": b}})
                }
                PartData::Url(u) => {
                    // fileData must state its type; an unknown one was
                    // refused by the check, unless the body is built alone.
                    let Some(media) = a.media_type() else {
                        return Err(CallError::new(
                            ErrorCategory::ClientError,
                            format!("Gemini needs the media type of {}", a.describe()),
                        )
                        .with_retryable(false));
                    };
                    json!({"fileData": {"mimeType": media.as_str(), "fileUri": u}})
                }
            });
        }
        if !m.content.is_empty() || parts.is_empty() {
            parts.push(json!({"text": m.content}));
        }
        Ok(parts)
    }

    /// The configuration.
    pub fn config(&self) -> &GeminiConfig {
        &self.cfg
    }

    pub(crate) fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The JSON body for `req`; `cached_content` names a context cache.
    pub fn request_body(
        &self,
        req: &LlmRequest,
        cached_content: Option<&str>,
    ) -> Result<Value, CallError> {
        let contents: Vec<Value> = turns(req)
            .iter()
            .map(|m| {
                let role = if m.role == Role::Assistant {
                    "model"
                } else {
                    "user"
                };
                Ok(json!({"role": role, "parts": Self::parts_of(m)?}))
            })
            .collect::<Result<_, CallError>>()?;
        let mut body = json!({"contents": contents});
        let system = match (&self.cfg.system_instruction, system_text(req)) {
            (Some(a), Some(b)) => Some(format!("{a}\n\n{b}")),
            (a, b) => a.clone().or(b),
        };
        if let Some(s) = system {
            body["systemInstruction"] = json!({"parts": [{"text": s}]});
        }
        let mut gc = self
            .cfg
            .generation_config
            .clone()
            .unwrap_or_else(|| json!({}));
        if let Some(t) = req.temperature {
            gc["temperature"] = json!(t);
        }
        if let Some(m) = req.max_output_tokens {
            gc["maxOutputTokens"] = json!(m);
        }
        if let Some(schema) = &req.response_schema {
            gc["responseMimeType"] = json!("application/json");
            gc["responseSchema"] = schema.for_dialect(SchemaDialect::Gemini)?.clone();
        }
        if gc.as_object().is_some_and(|o| !o.is_empty()) {
            body["generationConfig"] = gc;
        }
        if let Some(s) = &self.cfg.safety_settings {
            body["safetySettings"] = s.clone();
        }
        if let Some(c) = cached_content {
            body["cachedContent"] = json!(c);
        }
        merge(&mut body, req.provider_options.as_ref());
        Ok(body)
    }

    /// Sends `body` to `generateContent`.
    pub(crate) async fn send(
        &self,
        body: Vec<u8>,
        req: &LlmRequest,
    ) -> Result<LlmResponse, CallError> {
        let path = format!("v1beta/models/{}:generateContent", self.cfg.model);
        let reply = self
            .endpoint
            .post_body(&path, body, &[], req.timeout)
            .await?;
        self.endpoint.finish(reply, Self::parse_response)
    }

    /// Reads a `generateContent` body.
    pub fn parse_response(
        body: &Value,
        request_id: Option<String>,
    ) -> Result<LlmResponse, CallError> {
        let usage = body.get("usageMetadata");
        let candidates = usage.and_then(|u| u64_at(u, "/candidatesTokenCount"));
        let thoughts = usage.and_then(|u| u64_at(u, "/thoughtsTokenCount"));
        let output = match (candidates, thoughts) {
            (None, None) => None,
            (c, t) => Some(c.unwrap_or(0).saturating_add(t.unwrap_or(0))),
        };
        let mut meta = ResponseMetadata {
            model: body
                .get("modelVersion")
                .and_then(Value::as_str)
                .map(str::to_owned),
            request_id: request_id.or_else(|| {
                body.get("responseId")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            }),
            ..ResponseMetadata::default()
        };
        let block = body
            .pointer("/promptFeedback/blockReason")
            .and_then(Value::as_str);
        let candidate = body
            .get("candidates")
            .and_then(Value::as_array)
            .and_then(|c| c.first());
        let mut text = String::new();
        if let Some(c) = candidate {
            meta.finish_reason = c
                .get("finishReason")
                .and_then(Value::as_str)
                .map(str::to_owned);
            meta.safety_ratings = c.get("safetyRatings").cloned();
            for part in c
                .pointer("/content/parts")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if part.get("thought").and_then(Value::as_bool) == Some(true) {
                    continue;
                }
                if let Some(t) = part.get("text").and_then(Value::as_str) {
                    text.push_str(t);
                }
                if let Some(fc) = part.get("functionCall") {
                    meta.tool_calls.push(fc.clone());
                }
            }
        } else if block.is_none() {
            return Err(shape_error(
                "no 'candidates' and no 'promptFeedback.blockReason'",
            ));
        } else {
            meta.finish_reason = block.map(str::to_owned);
            meta.safety_ratings = body.pointer("/promptFeedback/safetyRatings").cloned();
        }
        let filtered = block.is_some()
            || meta.finish_reason.as_deref().is_some_and(|r| {
                matches!(
                    r,
                    "SAFETY"
                        | "RECITATION"
                        | "PROHIBITED_CONTENT"
                        | "BLOCKLIST"
                        | "SPII"
                        | "IMAGE_SAFETY"
                        | "IMAGE_PROHIBITED_CONTENT"
                        | "MODEL_ARMOR"
                )
            });
        let resp = LlmResponse {
            text,
            input_tokens: usage.and_then(|u| u64_at(u, "/promptTokenCount")),
            output_tokens: output,
            total_tokens: usage.and_then(|u| u64_at(u, "/totalTokenCount")),
            cached_input_tokens: usage.and_then(|u| u64_at(u, "/cachedContentTokenCount")),
            reasoning_tokens: thoughts,
            cache_write_input_tokens: None,
            metadata: meta,
            raw: None,
        };
        check_output(resp, filtered)
    }
}

impl Model for GeminiModel {
    async fn generate(&self, request: &LlmRequest) -> Result<LlmResponse, CallError> {
        let staged = with_parts(request, &self.parts)?;
        let body = staged
            .body(&self.request_body(&staged.request, None)?)
            .await?;
        self.send(body, request).await
    }

    fn name(&self) -> &str {
        &self.cfg.model
    }

    fn quota_scope(&self) -> Option<String> {
        Some(self.endpoint.scope().to_owned())
    }

    fn schema_dialect(&self) -> SchemaDialect {
        SchemaDialect::Gemini
    }

    fn part_policy(&self) -> &PartPolicy {
        &self.parts
    }
}
