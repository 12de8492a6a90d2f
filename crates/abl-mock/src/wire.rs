//! The four wire formats: reading requests and writing replies and errors.

use serde_json::{Value, json};

use crate::config::{Fault, Hint};
use crate::parts::parts_of;

pub use crate::format::Format;

/// A requested structured output.
#[derive(Debug, Clone, PartialEq)]
pub struct SchemaRequest {
    /// The JSON schema.
    pub schema: Value,
    /// OpenAI strict mode.
    pub strict: bool,
    /// Anthropic: the forced tool's name.
    pub tool: Option<String>,
    /// OpenAI: the schema's `name`, which the reply echoes.
    pub name: Option<String>,
}

/// What the mock needs of a request, in any format.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MockRequest {
    /// The model asked for.
    pub model: String,
    /// System instructions, joined.
    pub system: String,
    /// The last user message (what echo replies with).
    pub user_text: String,
    /// The first user message holding a fault marker: markers apply to the
    /// whole conversation, so a retry that adds turns (structured output's
    /// feedback) still carries them, counted once per conversation.
    pub marker_text: Option<String>,
    /// Characters of every message, system included.
    pub chars: usize,
    /// A structured-output request.
    pub schema: Option<SchemaRequest>,
    /// Gemini: the cached content referenced.
    pub cached_content: Option<String>,
    /// Gemini: whether a system instruction was set.
    pub has_system_field: bool,
    /// Anthropic: the text up to the last `cache_control` breakpoint.
    pub cache_prefix: Option<String>,
    /// Images, documents and audio of the messages, in order.
    pub parts: Vec<crate::parts::PartSeen>,
}

/// Text of a content that is a string or a list of parts with `text`.
pub fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        Value::Object(o) => o
            .get("parts")
            .map(text_of)
            .or_else(|| o.get("text").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_default(),
        _ => String::new(),
    }
}

fn str_field(body: &Value, key: &str) -> Result<String, String> {
    body.get(key)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| format!("missing required field '{key}'"))
}

/// Reads a request body.
#[allow(clippy::too_many_lines)]
pub fn parse(format: Format, body: &Value, model: Option<&str>) -> Result<MockRequest, String> {
    let mut r = MockRequest {
        model: match model {
            Some(m) => m.to_owned(),
            None => str_field(body, "model")?,
        },
        ..MockRequest::default()
    };
    let push = |role: &str, text: String, r: &mut MockRequest| {
        r.chars += text.chars().count();
        match role {
            "system" | "developer" => {
                if !r.system.is_empty() {
                    r.system.push('\n');
                }
                r.system.push_str(&text);
            }
            "user" => {
                if r.marker_text.is_none() && text.contains(crate::markers::PREFIX) {
                    r.marker_text = Some(text.clone());
                }
                r.user_text = text;
            }
            _ => {}
        }
    };
    match format {
        Format::Responses => {
            if let Some(i) = body.get("instructions").and_then(Value::as_str) {
                push("system", i.to_owned(), &mut r);
            }
            match body.get("input") {
                Some(Value::String(s)) => push("user", s.clone(), &mut r),
                Some(Value::Array(items)) => {
                    for it in items {
                        if let Some(c) = it.get("content") {
                            r.parts.extend(parts_of(format, c)?);
                        }
                        let role = it.get("role").and_then(Value::as_str).unwrap_or("user");
                        push(
                            role,
                            it.get("content").map(text_of).unwrap_or_default(),
                            &mut r,
                        );
                    }
                }
                _ => return Err("missing required field 'input'".into()),
            }
            if let Some(f) = body.pointer("/text/format")
                && f.get("type").and_then(Value::as_str) == Some("json_schema")
            {
                r.schema = Some(SchemaRequest {
                    schema: f
                        .get("schema")
                        .cloned()
                        .ok_or("text.format.schema is required for json_schema")?,
                    strict: f.get("strict").and_then(Value::as_bool).unwrap_or(false),
                    tool: None,
                    name: f.get("name").and_then(Value::as_str).map(str::to_owned),
                });
            }
        }
        Format::Chat => {
            let msgs = body
                .get("messages")
                .and_then(Value::as_array)
                .ok_or("missing required field 'messages'")?;
            for m in msgs {
                if let Some(c) = m.get("content") {
                    r.parts.extend(parts_of(format, c)?);
                }
                let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
                push(
                    role,
                    m.get("content").map(text_of).unwrap_or_default(),
                    &mut r,
                );
            }
            if let Some(f) = body.get("response_format") {
                match f.get("type").and_then(Value::as_str) {
                    Some("json_schema") => {
                        let js = f
                            .get("json_schema")
                            .ok_or("response_format.json_schema is required")?;
                        r.schema = Some(SchemaRequest {
                            schema: js
                                .get("schema")
                                .cloned()
                                .ok_or("response_format.json_schema.schema is required")?,
                            strict: js.get("strict").and_then(Value::as_bool).unwrap_or(false),
                            tool: None,
                            name: js.get("name").and_then(Value::as_str).map(str::to_owned),
                        });
                    }
                    Some("json_object") => {
                        r.schema = Some(SchemaRequest {
                            schema: json!({"type": "object"}),
                            strict: false,
                            tool: None,
                            name: None,
                        });
                    }
                    _ => {}
                }
            }
        }
        Format::Gemini => {
            if let Some(si) = body
                .get("systemInstruction")
                .or_else(|| body.get("system_instruction"))
            {
                r.has_system_field = true;
                push("system", text_of(si), &mut r);
            }
            let contents = body
                .get("contents")
                .and_then(Value::as_array)
                .ok_or("missing required field 'contents'")?;
            for c in contents {
                if let Some(p) = c.get("parts") {
                    r.parts.extend(parts_of(format, p)?);
                }
                let role = c.get("role").and_then(Value::as_str).unwrap_or("user");
                push(
                    role,
                    c.get("parts").map(text_of).unwrap_or_default(),
                    &mut r,
                );
            }
            let gc = body
                .get("generationConfig")
                .or_else(|| body.get("generation_config"));
            if let Some(s) = gc.and_then(|g| {
                g.get("responseSchema")
                    .or_else(|| g.get("responseJsonSchema"))
            }) {
                r.schema = Some(SchemaRequest {
                    schema: s.clone(),
                    strict: false,
                    tool: None,
                    name: None,
                });
            }
            r.cached_content = body
                .get("cachedContent")
                .and_then(Value::as_str)
                .map(str::to_owned);
        }
        Format::Anthropic => {
            if body.get("max_tokens").and_then(Value::as_u64).is_none() {
                return Err("max_tokens: Field required".into());
            }
            let marked = |v: &Value| {
                v.as_array()
                    .is_some_and(|bs| bs.iter().any(|b| b.get("cache_control").is_some()))
            };
            let mut prefix = String::new();
            if let Some(s) = body.get("system") {
                prefix.push_str(&text_of(s));
                if marked(s) {
                    r.cache_prefix = Some(prefix.clone());
                }
                push("system", text_of(s), &mut r);
            }
            let msgs = body
                .get("messages")
                .and_then(Value::as_array)
                .ok_or("messages: Field required")?;
            for m in msgs {
                if let Some(c) = m.get("content") {
                    r.parts.extend(parts_of(format, c)?);
                }
                let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
                let content = m.get("content").map(text_of).unwrap_or_default();
                prefix.push_str(&content);
                if m.get("content").is_some_and(marked) {
                    r.cache_prefix = Some(prefix.clone());
                }
                push(role, content, &mut r);
            }
            if let Some(name) = body.pointer("/tool_choice/name").and_then(Value::as_str) {
                let tool = body
                    .get("tools")
                    .and_then(Value::as_array)
                    .and_then(|ts| {
                        ts.iter()
                            .find(|t| t.get("name").and_then(Value::as_str) == Some(name))
                    })
                    .ok_or_else(|| {
                        format!("tool_choice names tool '{name}' which is not in tools")
                    })?;
                r.schema = Some(SchemaRequest {
                    schema: tool
                        .get("input_schema")
                        .cloned()
                        .unwrap_or(json!({"type": "object"})),
                    strict: false,
                    tool: Some(name.to_owned()),
                    name: None,
                });
            }
        }
    }
    Ok(r)
}

/// Token usage of a reply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Input tokens, cached ones included.
    pub input: u64,
    /// Output tokens, reasoning included.
    pub output: u64,
    /// Cached input tokens.
    pub cached: u64,
    /// Reasoning tokens.
    pub reasoning: u64,
    /// Input tokens written to a prompt cache (Anthropic).
    pub cache_write: u64,
}

/// The reply content: text, or a JSON value for a schema request.
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// A structured value (Anthropic answers it as a tool call).
    Json(Value),
}

impl Content {
    /// The text form.
    pub fn text(&self) -> String {
        match self {
            Content::Text(t) => t.clone(),
            Content::Json(v) => v.to_string(),
        }
    }
}

/// How a successful-looking reply ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// A normal answer.
    Normal,
    /// An empty answer with no reason.
    Empty,
    /// A safety block / content filter.
    Safety,
    /// A refusal.
    Refusal,
}

/// A 200 reply body.
#[allow(clippy::too_many_lines)]
pub fn success(
    format: Format,
    req: &MockRequest,
    content: &Content,
    usage: Usage,
    ending: Ending,
    seq: u64,
) -> Value {
    let text = match ending {
        Ending::Normal => content.text(),
        _ => String::new(),
    };
    let refusal = "I'm sorry, but I can't help with that.";
    match format {
        Format::Responses => {
            let (status, incomplete, parts) = match ending {
                Ending::Safety => ("incomplete", json!({"reason": "content_filter"}), json!([])),
                Ending::Refusal => (
                    "completed",
                    Value::Null,
                    json!([{"type": "refusal", "refusal": refusal}]),
                ),
                _ => (
                    "completed",
                    Value::Null,
                    json!([{"type": "output_text", "text": text, "annotations": []}]),
                ),
            };
            // Every field a real body has that the SDK's `Response` type
            // requires (`parallel_tool_calls`, `tool_choice`, `tools`…).
            json!({
                "id": format!("resp_mock{seq:08}"),
                "object": "response",
                "created_at": 1_700_000_000u64,
                "status": status,
                "error": null,
                "incomplete_details": incomplete,
                "instructions": null,
                "metadata": {},
                "model": req.model,
                "output": [{"type": "message", "id": format!("msg_mock{seq:08}"), "status": "completed", "role": "assistant", "content": parts}],
                "parallel_tool_calls": true,
                "background": false,
                "max_output_tokens": null,
                "max_tool_calls": null,
                "previous_response_id": null,
                "prompt_cache_key": null,
                "reasoning": {"effort": null, "summary": null},
                "safety_identifier": null,
                "service_tier": "default",
                "store": true,
                "temperature": 1.0,
                "text": {"format": text_format(req.schema.as_ref()), "verbosity": "medium"},
                "tool_choice": "auto",
                "tools": [],
                "top_logprobs": 0,
                "top_p": 1.0,
                "truncation": "disabled",
                "user": null,
                "usage": {
                    "input_tokens": usage.input,
                    "input_tokens_details": {"cached_tokens": usage.cached, "cache_write_tokens": 0},
                    "output_tokens": usage.output,
                    "output_tokens_details": {"reasoning_tokens": usage.reasoning},
                    "total_tokens": usage.input + usage.output,
                }
            })
        }
        Format::Chat => {
            let (content_v, refusal_v, finish) = match ending {
                Ending::Safety => (Value::Null, Value::Null, "content_filter"),
                Ending::Refusal => (Value::Null, json!(refusal), "stop"),
                _ => (json!(text), Value::Null, "stop"),
            };
            json!({
                "id": format!("chatcmpl-mock{seq:08}"),
                "object": "chat.completion",
                "created": 1_700_000_000u64,
                "model": req.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content_v, "refusal": refusal_v, "annotations": []}, "logprobs": null, "finish_reason": finish}],
                "service_tier": "default",
                "system_fingerprint": "fp_mock",
                "usage": {
                    "prompt_tokens": usage.input,
                    "completion_tokens": usage.output,
                    "total_tokens": usage.input + usage.output,
                    "prompt_tokens_details": {"cached_tokens": usage.cached, "audio_tokens": 0},
                    "completion_tokens_details": {
                        "reasoning_tokens": usage.reasoning,
                        "audio_tokens": 0,
                        "accepted_prediction_tokens": 0,
                        "rejected_prediction_tokens": 0,
                    },
                    "prompt_cache_hit_tokens": usage.cached,
                    "prompt_cache_miss_tokens": usage.input - usage.cached,
                }
            })
        }
        Format::Gemini => {
            let ratings = json!([
                {"category": "HARM_CATEGORY_HARASSMENT", "probability": if ending == Ending::Safety { "HIGH" } else { "NEGLIGIBLE" }},
                {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "NEGLIGIBLE"}
            ]);
            let mut usage_v = json!({
                "promptTokenCount": usage.input,
                "promptTokensDetails": [{"modality": "TEXT", "tokenCount": usage.input}],
                "candidatesTokenCount": usage.output - usage.reasoning,
                "totalTokenCount": usage.input + usage.output,
            });
            if usage.cached > 0 {
                usage_v["cachedContentTokenCount"] = json!(usage.cached);
            }
            if usage.reasoning > 0 {
                usage_v["thoughtsTokenCount"] = json!(usage.reasoning);
            }
            match ending {
                Ending::Safety | Ending::Refusal => json!({
                    "promptFeedback": {"blockReason": "SAFETY", "safetyRatings": ratings},
                    "usageMetadata": {"promptTokenCount": usage.input, "totalTokenCount": usage.input},
                    "modelVersion": req.model,
                    "responseId": format!("mock{seq:08}"),
                }),
                _ => json!({
                    "candidates": [{
                        "content": {"role": "model", "parts": [{"text": text}]},
                        "finishReason": "STOP",
                        "index": 0,
                        "safetyRatings": ratings,
                    }],
                    "usageMetadata": usage_v,
                    "modelVersion": req.model,
                    "responseId": format!("mock{seq:08}"),
                }),
            }
        }
        Format::Anthropic => {
            let (blocks, stop) = match (ending, content, &req.schema) {
                (Ending::Safety | Ending::Refusal, _, _) => (json!([]), "refusal"),
                (
                    Ending::Normal,
                    Content::Json(v),
                    Some(SchemaRequest {
                        tool: Some(name), ..
                    }),
                ) => (
                    json!([{"type": "tool_use", "id": format!("toolu_mock{seq:08}"), "name": name, "input": v}]),
                    "tool_use",
                ),
                _ => (json!([{"type": "text", "text": text}]), "end_turn"),
            };
            json!({
                "id": format!("msg_mock{seq:08}"),
                "type": "message",
                "role": "assistant",
                "model": req.model,
                "content": blocks,
                "stop_reason": stop,
                "stop_sequence": null,
                "usage": {
                    "input_tokens": usage.input - usage.cached - usage.cache_write,
                    "cache_creation_input_tokens": usage.cache_write,
                    "cache_read_input_tokens": usage.cached,
                    "cache_creation": {"ephemeral_5m_input_tokens": usage.cache_write, "ephemeral_1h_input_tokens": 0},
                    "output_tokens": usage.output,
                    "service_tier": "standard",
                }
            })
        }
    }
}

/// The `text.format` a Responses reply echoes: the requested JSON schema,
/// or plain text.
fn text_format(schema: Option<&SchemaRequest>) -> Value {
    match schema {
        Some(sr) => json!({
            "type": "json_schema",
            "name": sr.name.as_deref().unwrap_or("output"),
            "schema": sr.schema,
            "strict": sr.strict,
            "description": null,
        }),
        None => json!({"type": "text"}),
    }
}

/// Status, extra headers and body of an error reply.
#[allow(clippy::too_many_lines)]
pub fn error(format: Format, fault: Fault, message: &str) -> (u16, Vec<(String, String)>, Value) {
    let mut headers = Vec::new();
    let (status, oa_type, oa_code, g_status, a_type) = match fault {
        Fault::RateLimit(hint) => {
            match hint {
                Hint::RetryAfter(d) => {
                    headers.push(("retry-after".into(), d.as_secs_f64().ceil().to_string()));
                }
                Hint::RetryAfterMs(d) => {
                    headers.push(("retry-after-ms".into(), d.as_millis().to_string()));
                    headers.push(("retry-after".into(), d.as_secs_f64().ceil().to_string()));
                }
                Hint::Reset(d) => headers.push((
                    "x-ratelimit-reset-requests".into(),
                    format!("{}s", d.as_secs_f64()),
                )),
                Hint::Gemini(_) | Hint::None => {}
            }
            (
                429,
                "requests",
                "rate_limit_exceeded",
                "RESOURCE_EXHAUSTED",
                "rate_limit_error",
            )
        }
        Fault::QuotaPerDay => (
            429,
            "requests",
            "rate_limit_exceeded",
            "RESOURCE_EXHAUSTED",
            "rate_limit_error",
        ),
        Fault::InsufficientQuota => (
            429,
            "insufficient_quota",
            "insufficient_quota",
            "RESOURCE_EXHAUSTED",
            "billing_error",
        ),
        Fault::PaymentRequired => (
            402,
            "insufficient_quota",
            "insufficient_quota",
            "FAILED_PRECONDITION",
            "billing_error",
        ),
        Fault::ServerError => (500, "server_error", "server_error", "INTERNAL", "api_error"),
        Fault::Unavailable => (
            503,
            "server_error",
            "service_unavailable",
            "UNAVAILABLE",
            "api_error",
        ),
        Fault::Overloaded => (
            529,
            "server_error",
            "overloaded",
            "UNAVAILABLE",
            "overloaded_error",
        ),
        Fault::Unauthorized => (
            401,
            "invalid_request_error",
            "invalid_api_key",
            "UNAUTHENTICATED",
            "authentication_error",
        ),
        Fault::Forbidden => (
            403,
            "invalid_request_error",
            "permission_denied",
            "PERMISSION_DENIED",
            "permission_error",
        ),
        Fault::ContextLength => (
            400,
            "invalid_request_error",
            "context_length_exceeded",
            "INVALID_ARGUMENT",
            "invalid_request_error",
        ),
        _ => (
            400,
            "invalid_request_error",
            "invalid_request",
            "INVALID_ARGUMENT",
            "invalid_request_error",
        ),
    };
    let body = match format {
        Format::Responses | Format::Chat => {
            json!({"error": {"message": message, "type": oa_type, "param": null, "code": oa_code}})
        }
        Format::Gemini => {
            let mut details = Vec::new();
            if let Fault::RateLimit(Hint::Gemini(d)) = fault {
                details.push(json!({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": format!("{}s", d.as_secs())}));
            }
            if fault == Fault::QuotaPerDay {
                details.push(json!({"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
                    "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                    "quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
                    "quotaDimensions": {"model": "gemini-2.0-flash", "location": "global"},
                    "quotaValue": "200"
                }]}));
                details.push(json!({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "43s"}));
            }
            json!({"error": {"code": status, "message": message, "status": g_status, "details": details}})
        }
        Format::Anthropic => {
            json!({"type": "error", "error": {"type": a_type, "message": message}, "request_id": "req_mock"})
        }
    };
    (status, headers, body)
}
