//! Turning a provider's status, headers and body into a [`CallError`] with
//! the right category (SPEC.md §4), whatever the provider's error shape.

use reqwest::header::HeaderMap;
use serde_json::Value;

use super::error_body::{error_object, gemini_details, in_body_error};
use super::hints::{message_hint, retry_hint};
use crate::error::{CallError, ErrorCategory};

/// True when a Gemini error names a per-day quota among its violations:
/// it will not refill soon. A `RetryInfo` next to it (47 s in
/// googleapis/python-genai#2044) does not change that: a retry after the
/// delay meets the same per-day limit.
fn gemini_daily_quota(body: &Value) -> bool {
    gemini_details(body)
        .filter(|d| {
            d.get("@type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.ends_with("QuotaFailure"))
        })
        .flat_map(|d| {
            d.get("violations")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .any(|v| {
            ["quotaId", "quotaMetric"].iter().any(|k| {
                v.get(*k)
                    .and_then(Value::as_str)
                    .is_some_and(|s| s.contains("PerDay") || s.contains("per_day"))
            })
        })
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The error message, type and code an error body carries, in any of the
/// four providers' shapes.
fn error_fields(body: Option<&Value>) -> (Option<String>, String, String) {
    let Some(b) = body else {
        return (None, String::new(), String::new());
    };
    let e = error_object(b);
    let s = |v: Option<&Value>| match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    };
    let msg = e.get("message").and_then(Value::as_str).map(str::to_owned);
    let kind = s(e.get("type"));
    let inner = e.pointer("/innererror/code");
    let code = [s(e.get("code")), s(e.get("status")), s(inner)].join(" ");
    (msg, kind, code)
}

/// A safety block sent as an error: Azure's `content_filter` code (with or
/// without `innererror: ResponsibleAIPolicyViolation`), Anthropic's
/// "Output blocked by content filtering policy".
fn is_content_filter(text: &str) -> bool {
    text.contains("content_filter")
        || text.contains("responsibleaipolicyviolation")
        || text.contains("output blocked by content filtering policy")
}

/// A request no wait can admit: HTTP 413, Anthropic's `request_too_large`,
/// or OpenAI's 429 "Request too large for … Limit 30000, Requested 30601".
fn is_request_too_large(status: u16, kind: &str, text: &str) -> bool {
    status == 413
        || kind == "request_too_large"
        || (status == 429 && text.contains("request too large"))
}

/// Classifies a non-success response (or an error inside a 200 body, with
/// `status` taken from the body's code when it has one).
pub(crate) fn classify_error(status: u16, headers: &HeaderMap, body: Option<&Value>) -> CallError {
    let (msg, kind, code) = error_fields(body);
    let text = format!("{kind} {code} {}", msg.as_deref().unwrap_or_default()).to_ascii_lowercase();
    let message = match &msg {
        Some(m) => format!("HTTP {status}: {}", truncate(m, 500)),
        None => format!("HTTP {status}"),
    };
    let category =
        if status == 402 || text.contains("insufficient_quota") || kind == "billing_error" {
            ErrorCategory::InsufficientBalance
        } else if is_request_too_large(status, &kind, &text) {
            ErrorCategory::RequestTooLarge
        } else if status == 429 && body.is_some_and(gemini_daily_quota) {
            ErrorCategory::QuotaExhausted
        } else if status == 429 {
            ErrorCategory::RateLimit
        } else if status == 401 {
            ErrorCategory::Authentication
        } else if status == 403 {
            ErrorCategory::PermissionDenied
        } else if status == 408 {
            ErrorCategory::ApiTimeout
        } else if status == 529 || kind == "overloaded_error" {
            ErrorCategory::ServerOverload
        } else if matches!(status, 500..=599 | 425) {
            ErrorCategory::ServerError
        } else if is_content_filter(&text) {
            ErrorCategory::ContentFilter
        } else if text.contains("context_length_exceeded")
            || text.contains("maximum context length")
            || text.contains("prompt is too long")
            || text.contains("exceeds the maximum number of tokens")
        {
            ErrorCategory::ContextLengthExceeded
        } else if text.contains("invalid_json_schema")
            || text.contains("invalid schema")
            || text.contains("response_schema")
        {
            ErrorCategory::StructuredOutputSchemaRejected
        } else {
            ErrorCategory::ClientError
        };
    let mut err = CallError::new(category, message).with_status(status);
    if let Some(c) = code.split_whitespace().rev().find(|c| !c.is_empty()) {
        err = err.with_provider_code(c);
    }
    if category == ErrorCategory::RateLimit {
        let hint = retry_hint(headers, body).or_else(|| msg.as_deref().and_then(message_hint));
        err = err.with_retry_after(hint);
    }
    err
}

/// Parses a 2xx body, or classifies a non-2xx response. An error object
/// inside a 200 body (OpenRouter style) is an error.
pub fn parse_body(status: u16, headers: &HeaderMap, bytes: &[u8]) -> Result<Value, CallError> {
    let parsed: Result<Value, _> = serde_json::from_slice(bytes);
    if !(200..300).contains(&status) {
        return Err(classify_error(status, headers, parsed.as_ref().ok()));
    }
    let body = parsed.map_err(|e| {
        CallError::new(
            ErrorCategory::ProviderResponseError,
            format!(
                "HTTP {status} body is not valid JSON ({e}); {} bytes",
                bytes.len()
            ),
        )
        .with_status(status)
    })?;
    if let Some(err) = in_body_error(&body) {
        let code = err
            .get("code")
            .and_then(|c| {
                c.as_u64()
                    .or_else(|| c.as_str().and_then(|s| s.parse().ok()))
            })
            .and_then(|c| u16::try_from(c).ok())
            .filter(|c| (400..600).contains(c))
            .unwrap_or(502);
        let mut e = classify_error(code, headers, Some(&body));
        e = CallError::new(
            e.category(),
            format!("error inside a {status} body: {}", e.message()),
        )
        .with_retryable(e.is_retryable())
        .with_retry_after(e.retry_after())
        .with_status(status);
        return Err(e);
    }
    Ok(body)
}

/// A provider response that lacks what the format promises.
pub(crate) fn shape_error(what: &str) -> CallError {
    CallError::new(
        ErrorCategory::ProviderResponseError,
        format!("unexpected response shape: {what}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn classification() {
        let none = HeaderMap::new();
        let c = |s, b: Value| classify_error(s, &none, Some(&b)).category();
        assert_eq!(
            c(429, json!({"error": {"code": "rate_limit_exceeded"}})),
            ErrorCategory::RateLimit
        );
        assert_eq!(
            c(
                429,
                json!({"error": {"code": "insufficient_quota", "type": "insufficient_quota"}})
            ),
            ErrorCategory::InsufficientBalance
        );
        assert_eq!(c(402, json!({})), ErrorCategory::InsufficientBalance);
        let day = json!({"error": {"code": 429, "details": [{"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{"quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier"}]}]}});
        assert_eq!(c(429, day), ErrorCategory::QuotaExhausted);
        assert_eq!(c(401, json!({})), ErrorCategory::Authentication);
        assert_eq!(c(403, json!({})), ErrorCategory::PermissionDenied);
        assert_eq!(
            c(
                529,
                json!({"type": "error", "error": {"type": "overloaded_error"}})
            ),
            ErrorCategory::ServerOverload
        );
        assert_eq!(
            c(503, json!({"error": {"status": "UNAVAILABLE"}})),
            ErrorCategory::ServerError
        );
        assert_eq!(
            c(400, json!({"error": {"code": "context_length_exceeded"}})),
            ErrorCategory::ContextLengthExceeded
        );
        assert_eq!(
            c(400, json!({"error": {"code": "invalid_json_schema"}})),
            ErrorCategory::StructuredOutputSchemaRejected
        );
        assert_eq!(c(404, json!({})), ErrorCategory::ClientError);
        assert_eq!(c(408, json!({})), ErrorCategory::ApiTimeout);
        assert!(classify_error(503, &none, None).is_retryable());
        assert!(!classify_error(400, &none, None).is_retryable());
    }

    #[test]
    fn what_real_providers_taught_us() {
        let none = HeaderMap::new();
        let c = |s, b: Value| {
            let e = classify_error(s, &none, Some(&b));
            (e.category(), e.is_retryable())
        };
        let azure = json!({"error": {"code": "content_filter", "status": 400, "innererror": {"code": "ResponsibleAIPolicyViolation"}}});
        assert_eq!(c(400, azure), (ErrorCategory::ContentFilter, false));
        let blocked = json!({"type": "error", "error": {"type": "invalid_request_error", "message": "Output blocked by content filtering policy"}});
        assert_eq!(c(400, blocked), (ErrorCategory::ContentFilter, false));
        assert_eq!(c(413, json!({})), (ErrorCategory::RequestTooLarge, false));
        let too_large = json!({"error": {"message": "Request too large for gpt-4o on tokens per min (TPM): Limit 30000, Requested 30601.", "code": "rate_limit_exceeded"}});
        assert_eq!(c(429, too_large), (ErrorCategory::RequestTooLarge, false));
        // An array body keeps its message and so its category.
        let arr = json!([{"error": {"code": 400, "message": "This model's maximum context length is 8192 tokens", "status": "INVALID_ARGUMENT"}}]);
        let e = classify_error(400, &none, Some(&arr));
        assert_eq!(e.category(), ErrorCategory::ContextLengthExceeded);
        assert!(
            e.message().contains("maximum context length"),
            "{}",
            e.message()
        );
        // A per-day quota stays exhausted whatever RetryInfo comes with it;
        // a per-minute one with a RetryInfo is a wait.
        let violation = |id: &str| json!({"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{"quotaId": id}]});
        let retry =
            json!({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "47s"});
        let day = json!({"error": {"code": 429, "details": [violation("GenerateRequestsPerDayPerProjectPerModel"), retry]}});
        assert_eq!(c(429, day), (ErrorCategory::QuotaExhausted, false));
        let minute = json!({"error": {"code": 429, "details": [violation("GenerateRequestsPerMinutePerProjectPerModel"), retry]}});
        let e = classify_error(429, &none, Some(&minute));
        assert_eq!(e.category(), ErrorCategory::RateLimit);
        assert_eq!(e.retry_after(), Some(std::time::Duration::from_secs(47)));
        // A wait only in the message.
        let tpm = json!({"error": {"message": "Rate limit reached. Please try again in 9.816s.", "code": "rate_limit_exceeded"}});
        let e = classify_error(429, &none, Some(&tpm));
        assert_eq!(
            e.retry_after(),
            Some(std::time::Duration::from_millis(9816))
        );
    }

    #[test]
    fn bodies() {
        let none = HeaderMap::new();
        let e = parse_body(200, &none, b"<html>").unwrap_err();
        assert_eq!(
            (e.category(), e.is_retryable()),
            (ErrorCategory::ProviderResponseError, true)
        );
        let e = parse_body(
            200,
            &none,
            br#"{"error":{"code":502,"message":"upstream"}}"#,
        )
        .unwrap_err();
        assert_eq!(e.category(), ErrorCategory::ServerError);
        assert!(e.message().contains("inside a 200 body"));
        assert!(parse_body(200, &none, br#"{"error":null,"ok":1}"#).is_ok());
        let e =
            parse_body(200, &none, br#"[{"error":{"code":429,"message":"busy"}}]"#).unwrap_err();
        assert_eq!(e.category(), ErrorCategory::RateLimit);
    }
}
