//! Pieces the four wire formats share: the turns and system text of a
//! request, provider options merged into a body, usage numbers, and the
//! checks every parsed reply goes through (empty output, content filter).

use serde_json::{Map, Value};

use crate::error::{CallError, ErrorCategory};
use crate::item::{Message, Prompt, Role};
use crate::model::{LlmRequest, LlmResponse};

/// System text of a request: the request's own plus any system messages.
pub(crate) fn system_text(req: &LlmRequest) -> Option<String> {
    let from_prompt = req.prompt.as_ref().and_then(Prompt::system);
    match (req.system.clone(), from_prompt) {
        (Some(a), Some(b)) => Some(format!("{a}\n\n{b}")),
        (a, b) => a.or(b),
    }
}

/// The non-system turns of a request.
pub(crate) fn turns(req: &LlmRequest) -> Vec<Message> {
    match &req.prompt {
        None => Vec::new(),
        Some(Prompt::Text(t)) => vec![Message::new(Role::User, t.clone())],
        Some(Prompt::Messages(m)) => m
            .iter()
            .filter(|m| m.role != Role::System)
            .cloned()
            .collect(),
    }
}

/// Merges `extra` (provider options) into `body`, key by key.
pub(crate) fn merge(body: &mut Value, extra: Option<&Value>) {
    if let (Some(Value::Object(dst)), Some(Value::Object(src))) = (Some(&mut *body), extra) {
        merge_maps(dst, src);
    }
}

fn merge_maps(dst: &mut Map<String, Value>, src: &Map<String, Value>) {
    for (k, v) in src {
        match (dst.get_mut(k), v) {
            (Some(Value::Object(d)), Value::Object(s)) => merge_maps(d, s),
            _ => {
                dst.insert(k.clone(), v.clone());
            }
        }
    }
}

/// The unsigned integer at a JSON pointer, if it is one.
pub(crate) fn u64_at(v: &Value, pointer: &str) -> Option<u64> {
    v.pointer(pointer).and_then(Value::as_u64)
}

/// Checks a parsed response for an empty output or a content filter.
/// A filter or refusal is final; an empty output without a reason is retried.
pub(crate) fn check_output(resp: LlmResponse, filtered: bool) -> Result<LlmResponse, CallError> {
    let with_usage = |e: CallError| e.with_usage_if(resp.token_usage());
    if filtered || resp.metadata.refusal.is_some() {
        let why = resp
            .metadata
            .refusal
            .clone()
            .or_else(|| resp.metadata.finish_reason.clone())
            .unwrap_or_else(|| "content filter".into());
        return Err(with_usage(CallError::new(
            ErrorCategory::ContentFilter,
            format!("the provider blocked or refused the output: {why}"),
        )));
    }
    if resp.text.trim().is_empty() && resp.metadata.tool_calls.is_empty() {
        let length = resp.metadata.finish_reason.as_deref().is_some_and(|r| {
            matches!(
                r,
                "length" | "max_tokens" | "MAX_TOKENS" | "max_output_tokens"
            )
        });
        let err = if length {
            CallError::new(
                ErrorCategory::EmptyResponse,
                "empty output: the output token limit was reached first",
            )
            .with_retryable(false)
        } else {
            CallError::new(
                ErrorCategory::EmptyResponse,
                "empty output with no stated reason",
            )
        };
        return Err(with_usage(err));
    }
    Ok(resp)
}
