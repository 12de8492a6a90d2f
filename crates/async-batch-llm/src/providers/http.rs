//! What every HTTP provider shares: the API key, the client, the one POST,
//! and turning a status, headers and body into a [`CallError`].

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::error::{CallError, Error, ErrorCategory};

/// An API key. Its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key.
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// The first set variable among `vars`.
    pub fn from_env(vars: &[&str]) -> Option<Self> {
        vars.iter()
            .find_map(|v| std::env::var(v).ok())
            .map(|k| Self(k.trim().to_owned()))
            .filter(|k| !k.0.is_empty())
    }

    /// Reads a key from a file (surrounding whitespace removed).
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
        let key = text.trim();
        if key.is_empty() {
            return Err(Error::Config(format!(
                "{}: the key file is empty",
                path.display()
            )));
        }
        Ok(Self(key.to_owned()))
    }

    /// The key itself, for a request header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl std::fmt::Display for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// HTTP settings of a provider client.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Idle connections kept per host: size it to the run's concurrency.
    pub max_connections: usize,
    /// Time to establish a connection (10 s).
    pub connect_timeout: Duration,
    /// Used when a request carries no timeout of its own (120 s).
    pub default_timeout: Duration,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            max_connections: 64,
            connect_timeout: Duration::from_secs(10),
            default_timeout: Duration::from_secs(120),
        }
    }
}

/// The client of one provider model: one connection pool, no hidden retries.
#[derive(Clone)]
pub(crate) struct Http {
    client: reqwest::Client,
    default_timeout: Duration,
}

impl Http {
    pub(crate) fn new(options: &HttpOptions) -> Result<Self, Error> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(options.max_connections.max(1))
            .connect_timeout(options.connect_timeout)
            .tcp_nodelay(true)
            .user_agent(concat!("async-batch-llm/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            client,
            default_timeout: options.default_timeout,
        })
    }

    /// POSTs a JSON body; returns status, headers and the raw body.
    pub(crate) async fn post(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        body: &Value,
        timeout: Option<Duration>,
    ) -> Result<(u16, HeaderMap, bytes::Bytes), CallError> {
        self.send(self.client.post(url), headers, Some(body), timeout)
            .await
    }

    /// Sends a request with any method (JSON body optional).
    pub(crate) async fn request(
        &self,
        method: reqwest::Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<(u16, HeaderMap, bytes::Bytes), CallError> {
        self.send(self.client.request(method, url), headers, body, None)
            .await
    }

    /// Sends any request.
    pub(crate) async fn send(
        &self,
        builder: reqwest::RequestBuilder,
        headers: &[(&str, &str)],
        body: Option<&Value>,
        timeout: Option<Duration>,
    ) -> Result<(u16, HeaderMap, bytes::Bytes), CallError> {
        let mut req = builder.timeout(timeout.unwrap_or(self.default_timeout));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(transport_error)?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.map_err(transport_error)?;
        Ok((status, headers, bytes))
    }
}

/// A failure before a response was complete.
#[allow(clippy::needless_pass_by_value)] // used as map_err(transport_error)
fn transport_error(e: reqwest::Error) -> CallError {
    // reqwest's message names the URL, never a header: no key can leak.
    let msg = e.to_string();
    if e.is_timeout() {
        CallError::new(
            ErrorCategory::FrameworkTimeout,
            format!("request timed out: {msg}"),
        )
    } else if e.is_body() || e.is_decode() {
        CallError::new(
            ErrorCategory::ProviderResponseError,
            format!("response body was cut short: {msg}"),
        )
    } else {
        CallError::new(ErrorCategory::NetworkError, format!("network error: {msg}"))
    }
}

/// Parses a duration such as `1s`, `6m0s`, `20ms`, `1.5s`, `2h3m`, or a
/// plain number of seconds.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let mut total = 0.0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        if num_end == 0 {
            return None;
        }
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "us" | "µs" => 0.000_001,
            _ => return None,
        };
        total += n * scale;
        rest = &rest[unit_end..];
    }
    (total.is_finite() && total >= 0.0).then(|| Duration::from_secs_f64(total))
}

/// Parses an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`) as a delay from now.
fn parse_http_date(s: &str) -> Option<Duration> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| m == month)
    .and_then(|p| i64::try_from(p).ok())?
        + 1;
    let (day, year): (i64, i64) = (day.parse().ok()?, year.parse().ok()?);
    let hms: Vec<i64> = time
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [h, mi, se] = hms.as_slice() else {
        return None;
    };
    delay_until(year, month, day, *h * 3600 + *mi * 60 + *se, 0)
}

/// Time from now until a UTC civil time (zero if it has passed).
pub(crate) fn delay_until(
    year: i64,
    month: i64,
    day: i64,
    second_of_day: i64,
    nanos: u32,
) -> Option<Duration> {
    // Days from civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = u64::try_from(days * 86_400 + second_of_day).ok()?;
    let at = SystemTime::UNIX_EPOCH + Duration::new(secs, nanos);
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// The retry hint of a response: `retry-after-ms` first, then
/// `Retry-After` (seconds or HTTP date), then `x-ratelimit-reset-requests`
/// / `-tokens` (the longer), then a Gemini `RetryInfo.retryDelay` in the body.
pub fn retry_hint(headers: &HeaderMap, body: Option<&Value>) -> Option<Duration> {
    let h = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(ms) = h("retry-after-ms").and_then(|v| v.parse::<f64>().ok())
        && ms.is_finite()
        && ms >= 0.0
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    if let Some(v) = h("retry-after") {
        if let Ok(secs) = v.parse::<f64>() {
            if secs.is_finite() && secs >= 0.0 {
                return Some(Duration::from_secs_f64(secs));
            }
        } else if let Some(d) = parse_http_date(v) {
            return Some(d);
        }
    }
    let resets: Vec<Duration> = ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"]
        .iter()
        .filter_map(|n| h(n).and_then(parse_go_duration))
        .collect();
    if let Some(max) = resets.into_iter().max() {
        return Some(max);
    }
    gemini_retry_delay(body?)
}

fn gemini_details(body: &Value) -> impl Iterator<Item = &Value> {
    body.pointer("/error/details")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

fn gemini_retry_delay(body: &Value) -> Option<Duration> {
    gemini_details(body)
        .filter(|d| {
            d.get("@type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.ends_with("RetryInfo"))
        })
        .find_map(|d| {
            d.get("retryDelay")
                .and_then(Value::as_str)
                .and_then(parse_go_duration)
        })
}

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
pub fn classify_error(status: u16, headers: &HeaderMap, body: Option<&Value>) -> CallError {
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

/// A request id from the usual headers.
pub(crate) fn request_id(headers: &HeaderMap) -> Option<String> {
    ["x-request-id", "request-id", "x-goog-request-id"]
        .iter()
        .find_map(|h| {
            headers
                .get(*h)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;
    use serde_json::json;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn key_is_redacted() {
        let k = ApiKey::new("sk-very-secret");
        assert_eq!(format!("{k:?} {k}"), "ApiKey(<redacted>) <redacted>");
        assert_eq!(k.expose(), "sk-very-secret");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_go_duration("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_go_duration("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(parse_go_duration("20ms"), Some(Duration::from_millis(20)));
        assert_eq!(parse_go_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_go_duration("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_go_duration("x"), None);
        assert_eq!(parse_go_duration("-1"), None);
    }

    #[test]
    fn hints_in_order_of_preference() {
        let h = headers(&[("retry-after", "3"), ("retry-after-ms", "250")]);
        assert_eq!(retry_hint(&h, None), Some(Duration::from_millis(250)));
        assert_eq!(
            retry_hint(&headers(&[("retry-after", "3")]), None),
            Some(Duration::from_secs(3))
        );
        let reset = headers(&[
            ("x-ratelimit-reset-requests", "1s"),
            ("x-ratelimit-reset-tokens", "6m0s"),
        ]);
        assert_eq!(retry_hint(&reset, None), Some(Duration::from_secs(360)));
        let g = json!({"error": {"details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"}]}});
        assert_eq!(
            retry_hint(&HeaderMap::new(), Some(&g)),
            Some(Duration::from_secs(7))
        );
        let past = headers(&[("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT")]);
        assert_eq!(retry_hint(&past, None), Some(Duration::ZERO));
        assert_eq!(retry_hint(&headers(&[("retry-after", "soon")]), None), None);
    }

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
