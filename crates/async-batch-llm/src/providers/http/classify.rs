//! Turning a provider's status, headers and body into a [`CallError`] with
//! the right category (SPEC.md §4), whatever the provider's error shape.

use reqwest::header::HeaderMap;
use serde_json::Value;

use super::hints::{gemini_details, retry_hint};
use crate::error::{CallError, ErrorCategory};

/// True when a Gemini error names a per-day quota: it will not refill soon.
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
    let e = b.get("error").unwrap_or(b);
    let s = |v: Option<&Value>| match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    };
    let msg = e.get("message").and_then(Value::as_str).map(str::to_owned);
    let kind = s(e.get("type"));
    let code = [s(e.get("code")), s(e.get("status"))].join(" ");
    (msg, kind, code)
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
        err = err.with_retry_after(retry_hint(headers, body));
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
    if let Some(err) = body.get("error").filter(|e| !e.is_null()) {
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
    }
}
