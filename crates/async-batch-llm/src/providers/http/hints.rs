//! When to come back: the retry hints providers send with a 429 (and
//! sometimes a 503), read from headers and bodies that nobody vetted.
//! Every value is parsed with checked arithmetic; a hint too large to
//! mean anything is clamped (the cooldown policy caps it again), and a
//! malformed one is no hint.

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;
use serde_json::Value;

use super::error_body::gemini_details;
use crate::time::{parse_http_date, parse_rfc3339, secs_f64, until};

/// Parses a duration such as `1s`, `6m0s`, `20ms`, `1.5s`, `2h3m`, or a
/// plain number of seconds. `None` for anything else (negative numbers,
/// unknown units, `NaN`); values past [`crate::time::MAX_DURATION`] are
/// clamped to it.
pub(crate) fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        return secs_f64(secs);
    }
    let mut total = 0.0f64;
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
            "ns" => 0.000_000_001,
            _ => return None,
        };
        total += n * scale;
        rest = &rest[unit_end..];
    }
    secs_f64(total)
}

/// A header's value as trimmed text, if present and printable.
pub(crate) fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// `Retry-After`: seconds (fractions accepted) or an HTTP date.
fn retry_after(value: &str) -> Option<Duration> {
    match value.parse::<f64>() {
        Ok(secs) => secs_f64(secs),
        Err(_) => parse_http_date(value).map(|at| until(at, SystemTime::now())),
    }
}

/// The retry hint of a response: `retry-after-ms` first, then
/// `Retry-After` (seconds or HTTP date), then `x-ratelimit-reset-requests`
/// / `-tokens` (the longer), then a Gemini `RetryInfo.retryDelay` in the body.
pub fn retry_hint(headers: &HeaderMap, body: Option<&Value>) -> Option<Duration> {
    if let Some(d) = header(headers, "retry-after-ms")
        .and_then(|v| v.parse::<f64>().ok())
        .and_then(|ms| secs_f64(ms / 1000.0))
    {
        return Some(d);
    }
    if let Some(d) = header(headers, "retry-after").and_then(retry_after) {
        return Some(d);
    }
    let resets = ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"]
        .iter()
        .filter_map(|n| header(headers, n).and_then(parse_go_duration))
        .max();
    if resets.is_some() {
        return resets;
    }
    if let Some(d) = anthropic_reset(headers) {
        return Some(d);
    }
    gemini_retry_delay(body?)
}

/// Anthropic's `anthropic-ratelimit-{requests,tokens,input-tokens,
/// output-tokens}-reset` (RFC 3339 instants), for the 429s that come
/// without `retry-after`. The resets of the limits whose `-remaining` is
/// `0` are the ones that matter; when none says so, the latest of all.
fn anthropic_reset(headers: &HeaderMap) -> Option<Duration> {
    const LIMITS: [&str; 4] = ["requests", "tokens", "input-tokens", "output-tokens"];
    let reset = |limit: &str| anthropic_reset_of(headers, limit);
    let exhausted = LIMITS
        .iter()
        .filter(|l| header(headers, &format!("anthropic-ratelimit-{l}-remaining")) == Some("0"))
        .filter_map(|l| reset(l))
        .max();
    exhausted.or_else(|| LIMITS.iter().filter_map(|l| reset(l)).max())
}

/// Until `anthropic-ratelimit-{limit}-reset` (an RFC 3339 instant), counted
/// from the reply's `Date` (the server's clock, so a skewed local clock
/// does not stretch it), else from now.
pub(crate) fn anthropic_reset_of(headers: &HeaderMap, limit: &str) -> Option<Duration> {
    let at =
        header(headers, &format!("anthropic-ratelimit-{limit}-reset")).and_then(parse_rfc3339)?;
    let now = header(headers, "date")
        .and_then(parse_http_date)
        .unwrap_or_else(SystemTime::now);
    Some(until(at, now))
}

/// A wait spelled out in an error message, for the providers that put it
/// only there: OpenAI's "Please try again in 9.816s" / "in 20ms" / "in
/// 1m30s", Gemini's "Please retry in 26.6s".
pub(crate) fn message_hint(message: &str) -> Option<Duration> {
    let lower = message.to_ascii_lowercase();
    ["try again in ", "retry in "].iter().find_map(|marker| {
        let start = lower.find(marker)? + marker.len();
        let rest = &lower[start..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.'))
            .unwrap_or(rest.len());
        parse_go_duration(rest[..end].trim_end_matches('.'))
            .filter(|_| rest[..end].contains(|c: char| c.is_ascii_alphabetic()))
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::MAX_DURATION;
    use serde_json::json;

    use super::super::test_headers as headers;

    #[test]
    fn durations() {
        assert_eq!(parse_go_duration("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_go_duration("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(parse_go_duration("20ms"), Some(Duration::from_millis(20)));
        assert_eq!(parse_go_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_go_duration("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_go_duration("x"), None);
        assert_eq!(parse_go_duration("-1"), None);
        assert_eq!(parse_go_duration("1e300"), Some(MAX_DURATION));
        assert_eq!(
            parse_go_duration("99999999999999999999h"),
            Some(MAX_DURATION)
        );
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
    fn anthropic_resets_count_from_the_servers_clock() {
        let h = headers(&[
            ("date", "Mon, 01 Dec 2026 10:00:00 GMT"),
            ("anthropic-ratelimit-requests-remaining", "12"),
            ("anthropic-ratelimit-requests-reset", "2026-12-01T10:00:30Z"),
            ("anthropic-ratelimit-tokens-remaining", "0"),
            ("anthropic-ratelimit-tokens-reset", "2026-12-01T10:00:04Z"),
        ]);
        assert_eq!(retry_hint(&h, None), Some(Duration::from_secs(4)));
        let none_exhausted = headers(&[
            ("date", "Mon, 01 Dec 2026 10:00:00 GMT"),
            ("anthropic-ratelimit-requests-reset", "2026-12-01T10:00:30Z"),
            ("anthropic-ratelimit-tokens-reset", "2026-12-01T10:00:04Z"),
        ]);
        assert_eq!(
            retry_hint(&none_exhausted, None),
            Some(Duration::from_secs(30))
        );
        let with_retry_after = headers(&[
            ("retry-after", "2"),
            ("anthropic-ratelimit-tokens-reset", "2026-12-01T10:00:04Z"),
        ]);
        assert_eq!(
            retry_hint(&with_retry_after, None),
            Some(Duration::from_secs(2))
        );
    }

    #[test]
    fn waits_written_in_messages() {
        let m = "Rate limit reached for gpt-4o on tokens per min (TPM): Limit 30000, Used 29000, Requested 1500. Please try again in 9.816s. Visit https://platform.openai.com/account/rate-limits";
        assert_eq!(message_hint(m), Some(Duration::from_millis(9816)));
        assert_eq!(
            message_hint("Please try again in 20ms."),
            Some(Duration::from_millis(20))
        );
        assert_eq!(
            message_hint("Please try again in 1m30s."),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            message_hint("Quota exceeded. Please retry in 26.6s."),
            Some(Duration::from_millis(26_600))
        );
        assert_eq!(message_hint("Please try again in a few minutes."), None);
        assert_eq!(message_hint("Please try again in 5 minutes"), None);
        assert_eq!(message_hint("try again later"), None);
    }

    #[test]
    fn absurd_hints_are_clamped_not_panics() {
        for v in [
            "1e300",
            "18446744073709551616",
            "99999999999999999999",
            "inf",
            "Fri, 31 Dec 9999 23:59:59 GMT",
        ] {
            let got = retry_hint(&headers(&[("retry-after", v)]), None);
            assert!(got.is_some_and(|d| d <= MAX_DURATION), "{v}: {got:?}");
        }
        for v in ["1e300", "-5", "NaN"] {
            let got = retry_hint(&headers(&[("retry-after-ms", v)]), None);
            assert!(got.is_none_or(|d| d <= MAX_DURATION), "{v}: {got:?}");
        }
    }

    use proptest::prelude::*;

    proptest::proptest! {
        /// Any value in any hint header, numbers of any size or none at
        /// all: a hint no longer than the maximum, or none. Never a panic,
        /// also through the classification of a 429 or 503.
        #[test]
        fn any_hint_header_is_parsed_without_panicking(
            which in 0usize..6,
            value in prop_oneof![
                any::<f64>().prop_map(|f| f.to_string()),
                any::<u64>().prop_map(|n| n.to_string()),
                any::<i64>().prop_map(|n| format!("{n}ms")),
                "[0-9]{1,30}(\\.[0-9]{0,12})?(h|m|s|ms|us|ns)?".prop_map(String::from),
                "(Mon|Fri), [0-9]{1,3} (Jan|Dec|Foo) [0-9]{1,12} [0-9]{1,3}:[0-9]{1,3}:[0-9]{1,3} GMT".prop_map(String::from),
                "\\PC{0,40}".prop_map(String::from),
            ],
        ) {
            let names = [
                "retry-after", "retry-after-ms", "x-ratelimit-reset-requests",
                "x-ratelimit-reset-tokens", "anthropic-ratelimit-requests-reset",
                "anthropic-ratelimit-tokens-reset",
            ];
            let Ok(v) = reqwest::header::HeaderValue::from_str(&value) else { return Ok(()) };
            let mut h = HeaderMap::new();
            h.insert(names[which], v);
            let got = retry_hint(&h, None);
            prop_assert!(got.is_none_or(|d| d <= MAX_DURATION));
            let body = json!({"error": {"details": [{"@type": "google.rpc.RetryInfo", "retryDelay": value}]}});
            let got = retry_hint(&HeaderMap::new(), Some(&body));
            prop_assert!(got.is_none_or(|d| d <= MAX_DURATION));
            for status in [429u16, 503] {
                let e = super::super::classify::classify_error(status, &h, Some(&body));
                prop_assert!(e.retry_after().is_none_or(|d| d <= MAX_DURATION));
            }
        }
    }
}
