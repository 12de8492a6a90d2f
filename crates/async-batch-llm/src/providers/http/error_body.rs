//! Where an error sits in a provider's body. The four providers (and the
//! servers that copy them) disagree: `{"error": {…}}` (OpenAI, Gemini),
//! `{"type": "error", "error": {…}}` (Anthropic), a bare object, an array
//! of one (`[{"error": {…}}]`, Gemini's OpenAI-compatible endpoint), or an
//! error object inside a 200 answer (OpenRouter and other proxies).

use serde_json::Value;

/// The first element of an array body, else the body.
fn first(body: &Value) -> &Value {
    match body {
        Value::Array(items) => items.first().unwrap_or(body),
        other => other,
    }
}

/// The error object of an error body: its `error` member when that is an
/// object, else the body itself.
pub(crate) fn error_object(body: &Value) -> &Value {
    let b = first(body);
    b.get("error").filter(|e| e.is_object()).unwrap_or(b)
}

/// The error a 2xx body carries instead of an answer, if any: a non-null
/// `error` member of the body (or of its first element).
pub(crate) fn in_body_error(body: &Value) -> Option<&Value> {
    first(body).get("error").filter(|e| !e.is_null())
}

/// The `details` of a Google RPC error body.
pub(crate) fn gemini_details(body: &Value) -> impl Iterator<Item = &Value> {
    error_object(body)
        .get("details")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_shape_finds_its_error() {
        let inner = json!({"code": 429, "message": "m", "details": [{"@type": "x"}]});
        for body in [
            json!({"error": inner}),
            json!([{"error": inner}]),
            json!({"type": "error", "error": inner}),
            inner.clone(),
        ] {
            assert_eq!(error_object(&body), &inner, "{body}");
            assert_eq!(gemini_details(&body).count(), 1, "{body}");
        }
        assert_eq!(in_body_error(&json!({"error": inner})), Some(&inner));
        assert_eq!(in_body_error(&json!([{"error": inner}])), Some(&inner));
        assert_eq!(in_body_error(&json!({"error": null, "choices": []})), None);
        assert_eq!(in_body_error(&json!([])), None);
        assert_eq!(error_object(&json!([])), &json!([]));
    }
}
