//! Pieces the four wire formats share: the turns and system text of a
//! request, provider options merged into a body, usage numbers, and the
//! checks every parsed reply goes through (empty output, content filter).

use serde_json::{Map, Value};

use crate::attachment::{self, Attachment, MediaType, PartKind, PartPolicy, Source, Staged};
use crate::error::{CallError, ErrorCategory};
use crate::item::{Message, Prompt, Role};
use crate::model::{LlmRequest, LlmResponse};

/// `req` ready for a provider's body builder: its parts checked against
/// what the provider takes (before any call), its files standing as
/// markers that [`Staged::body`] fills in when the body is serialized.
pub(crate) fn with_parts<'r>(
    req: &'r LlmRequest,
    policy: &PartPolicy,
) -> Result<Staged<'r>, CallError> {
    if let Some(p) = &req.prompt {
        policy.check(p)?;
    }
    Ok(attachment::stage(req))
}

/// Where a part's bytes are, as a body builder needs them.
pub(crate) enum PartData<'a> {
    /// A URL the provider fetches.
    Url(&'a str),
    /// Base64 bytes of this media type.
    Inline(&'a str, MediaType),
}

/// A part's data, its kind and its media type. A file that was not loaded
/// (a body built without [`with_parts`]) is an error, not a silent drop.
pub(crate) fn part_data(a: &Attachment) -> Result<(PartKind, PartData<'_>), CallError> {
    let media = a.media_type();
    let kind = media.as_ref().map_or(PartKind::Other, MediaType::kind);
    match a.source() {
        Source::Url(u) => Ok((kind, PartData::Url(u))),
        Source::Base64(b) => Ok((
            kind,
            PartData::Inline(
                b,
                media.unwrap_or_else(|| MediaType::parse("application/octet-stream")),
            ),
        )),
        Source::Path(p) => Err(CallError::new(
            ErrorCategory::LogicError,
            format!(
                "attachment {} was not read: bodies with files are built by Model::generate",
                p.display()
            ),
        )
        .with_retryable(false)),
    }
}

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
