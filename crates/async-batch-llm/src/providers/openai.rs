//! OpenAI Responses, OpenAI Chat Completions, and OpenAI-compatible servers
//! (OpenRouter, DeepSeek, vLLM, Ollama, LiteLLM…).

use serde_json::{Value, json};

use super::common::{check_output, merge, system_text, turns, u64_at};
use super::http::{ApiKey, Http, HttpOptions, parse_body, request_id, shape_error};
use crate::error::{CallError, Error};
use crate::item::Role;
use crate::limit::default_scope_name;
use crate::model::{LlmRequest, LlmResponse, Model, ResponseMetadata};
use crate::schema::SchemaDialect;

fn role(r: Role) -> &'static str {
    match r {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
    }
}

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

struct Client {
    cfg: OpenAiConfig,
    http: Http,
    scope: String,
    auth: Option<String>,
}

impl Client {
    fn new(cfg: OpenAiConfig, provider: &str) -> Result<Self, Error> {
        let http = Http::new(&cfg.http)?;
        let key = cfg.api_key.as_ref().map_or("", ApiKey::expose);
        Ok(Self {
            scope: default_scope_name(provider, &cfg.base_url, key, &cfg.model),
            auth: cfg
                .api_key
                .as_ref()
                .map(|k| format!("Bearer {}", k.expose())),
            http,
            cfg,
        })
    }

    async fn post(
        &self,
        path: &str,
        body: &Value,
        req: &LlmRequest,
        extra: &[(&str, &str)],
    ) -> Result<(Value, Option<String>), CallError> {
        let url = format!("{}/{path}", self.cfg.base_url.trim_end_matches('/'));
        let mut headers: Vec<(&str, &str)> = extra.to_vec();
        if let Some(a) = &self.auth {
            headers.push(("authorization", a));
        }
        let (status, h, bytes) = self.http.post(&url, &headers, body, req.timeout).await?;
        let v = parse_body(status, &h, &bytes)?;
        Ok((v, request_id(&h)))
    }
}

/// OpenAI's Responses API (`POST /v1/responses`): the default for `openai:`.
pub struct OpenAiModel {
    client: Client,
}

impl std::fmt::Debug for OpenAiModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiModel")
            .field("config", &self.client.cfg)
            .finish_non_exhaustive()
    }
}

impl OpenAiModel {
    /// A Responses model.
    pub fn new(config: OpenAiConfig) -> Result<Self, Error> {
        Ok(Self {
            client: Client::new(config, "openai")?,
        })
    }

    /// The JSON body for `req`.
    pub fn request_body(&self, req: &LlmRequest) -> Result<Value, CallError> {
        let turns = turns(req);
        let input = match turns.as_slice() {
            [only] if only.role == Role::User => json!(only.content),
            _ => Value::Array(
                turns
                    .iter()
                    .map(|m| json!({"role": role(m.role), "content": m.content}))
                    .collect(),
            ),
        };
        let mut body = json!({"model": self.client.cfg.model, "input": input, "store": false});
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
                                meta.refusal = part
                                    .get("refusal")
                                    .and_then(Value::as_str)
                                    .map(str::to_owned);
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
            cache_write_input_tokens: None,
            metadata: meta,
            raw: None,
        };
        check_output(resp, reason == Some("content_filter"))
    }
}

impl Model for OpenAiModel {
    async fn generate(&self, request: &LlmRequest) -> Result<LlmResponse, CallError> {
        let body = self.request_body(request)?;
        let (v, id) = self.client.post("responses", &body, request, &[]).await?;
        Self::parse_response(&v, id)
    }

    fn name(&self) -> &str {
        &self.client.cfg.model
    }

    fn quota_scope(&self) -> Option<String> {
        Some(self.client.scope.clone())
    }

    fn schema_dialect(&self) -> SchemaDialect {
        SchemaDialect::OpenAiStrict
    }
}

/// OpenAI Chat Completions (`POST /v1/chat/completions`), for `openai-chat:`
/// and every OpenAI-compatible server.
pub struct ChatModel {
    client: Client,
    flavor: ChatFlavor,
}

impl std::fmt::Debug for ChatModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatModel")
            .field("config", &self.client.cfg)
            .field("flavor", &self.flavor)
            .finish_non_exhaustive()
    }
}

impl ChatModel {
    /// A Chat Completions model of `flavor`.
    pub fn new(config: OpenAiConfig, flavor: ChatFlavor) -> Result<Self, Error> {
        Ok(Self {
            client: Client::new(config, flavor.name())?,
            flavor,
        })
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
        messages.extend(
            turns(req)
                .iter()
                .map(|m| json!({"role": role(m.role), "content": m.content})),
        );
        let mut body = json!({"model": self.client.cfg.model, "messages": messages});
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
            text: message
                .get("content")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
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
                refusal: message
                    .get("refusal")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                safety_ratings: None,
                tool_calls: message
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default(),
            },
            raw: None,
        };
        check_output(resp, finish.as_deref() == Some("content_filter"))
    }
}

impl Model for ChatModel {
    async fn generate(&self, request: &LlmRequest) -> Result<LlmResponse, CallError> {
        let body = self.request_body(request)?;
        let mut extra: Vec<(&str, &str)> = Vec::new();
        if let ChatFlavor::OpenRouter { referer, title, .. } = &self.flavor {
            if let Some(r) = referer {
                extra.push(("http-referer", r));
            }
            if let Some(t) = title {
                extra.push(("x-title", t));
            }
        }
        let (v, id) = self
            .client
            .post("chat/completions", &body, request, &extra)
            .await?;
        Self::parse_response(&v, id)
    }

    fn name(&self) -> &str {
        &self.client.cfg.model
    }

    fn quota_scope(&self) -> Option<String> {
        Some(self.client.scope.clone())
    }

    fn schema_dialect(&self) -> SchemaDialect {
        SchemaDialect::OpenAiStrict
    }
}
