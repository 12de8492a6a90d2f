//! The rate-limit headers of a reply, read into [`ReportedLimits`]:
//! OpenAI and the servers that copy it send
//! `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` (resets as Go
//! durations: `1s`, `6m0s`, `20ms`); Anthropic sends
//! `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-
//! {limit,remaining,reset}` (resets as RFC 3339 instants). For Anthropic the
//! `tokens` limit is the most restrictive one in force; when a reply has
//! only the input and output limits, the input one stands for it (batch
//! prompts are mostly input). Malformed values are no value.

use reqwest::header::HeaderMap;

use super::hints::{anthropic_reset_of, header, parse_go_duration};
use crate::limit::{ReportedLimit, ReportedLimits};

fn number(headers: &HeaderMap, name: &str) -> Option<u64> {
    header(headers, name).and_then(|v| v.parse::<u64>().ok())
}

fn openai(headers: &HeaderMap, kind: &str) -> ReportedLimit {
    ReportedLimit {
        limit: number(headers, &format!("x-ratelimit-limit-{kind}")),
        remaining: number(headers, &format!("x-ratelimit-remaining-{kind}")),
        reset: header(headers, &format!("x-ratelimit-reset-{kind}")).and_then(parse_go_duration),
    }
}

fn anthropic(headers: &HeaderMap, kind: &str) -> ReportedLimit {
    ReportedLimit {
        limit: number(headers, &format!("anthropic-ratelimit-{kind}-limit")),
        remaining: number(headers, &format!("anthropic-ratelimit-{kind}-remaining")),
        reset: anthropic_reset_of(headers, kind),
    }
}

/// The limits a reply's headers report, `None` when it has none.
pub(crate) fn reported_limits(headers: &HeaderMap) -> Option<ReportedLimits> {
    let mut r = ReportedLimits {
        requests: openai(headers, "requests"),
        tokens: openai(headers, "tokens"),
    };
    if r.requests.is_empty() {
        r.requests = anthropic(headers, "requests");
    }
    if r.tokens.is_empty() {
        r.tokens = anthropic(headers, "tokens");
    }
    if r.tokens.is_empty() {
        r.tokens = anthropic(headers, "input-tokens");
    }
    (!r.is_empty()).then_some(r)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    use super::super::test_headers as headers;

    #[test]
    fn openai_headers() {
        // As OpenAI documents them.
        let h = headers(&[
            ("x-ratelimit-limit-requests", "60"),
            ("x-ratelimit-limit-tokens", "150000"),
            ("x-ratelimit-remaining-requests", "59"),
            ("x-ratelimit-remaining-tokens", "149984"),
            ("x-ratelimit-reset-requests", "1s"),
            ("x-ratelimit-reset-tokens", "6m0s"),
        ]);
        let r = reported_limits(&h).unwrap();
        assert_eq!(
            r.requests,
            ReportedLimit {
                limit: Some(60),
                remaining: Some(59),
                reset: Some(Duration::from_secs(1))
            }
        );
        assert_eq!(r.tokens.limit, Some(150_000));
        assert_eq!(r.tokens.reset, Some(Duration::from_secs(360)));
    }

    #[test]
    fn anthropic_headers_from_the_servers_clock() {
        let h = headers(&[
            ("date", "Tue, 01 Dec 2026 10:00:00 GMT"),
            ("anthropic-ratelimit-requests-limit", "4000"),
            ("anthropic-ratelimit-requests-remaining", "3999"),
            ("anthropic-ratelimit-requests-reset", "2026-12-01T10:00:01Z"),
            ("anthropic-ratelimit-input-tokens-limit", "400000"),
            ("anthropic-ratelimit-input-tokens-remaining", "399000"),
            (
                "anthropic-ratelimit-input-tokens-reset",
                "2026-12-01T10:00:02Z",
            ),
        ]);
        let r = reported_limits(&h).unwrap();
        assert_eq!(r.requests.limit, Some(4000));
        assert_eq!(r.requests.reset, Some(Duration::from_secs(1)));
        // Without a `tokens` limit, the input one stands for it.
        assert_eq!(r.tokens.remaining, Some(399_000));
        assert_eq!(r.tokens.reset, Some(Duration::from_secs(2)));
    }

    #[test]
    fn nonsense_is_no_value_and_no_headers_is_none() {
        assert_eq!(reported_limits(&HeaderMap::new()), None);
        let h = headers(&[
            ("x-ratelimit-limit-requests", "-5"),
            ("x-ratelimit-remaining-requests", "lots"),
            ("x-ratelimit-reset-requests", "soon"),
            ("x-ratelimit-remaining-tokens", "99999999999999999999999"),
        ]);
        assert_eq!(reported_limits(&h), None);
        let h = headers(&[("x-ratelimit-remaining-requests", "7")]);
        assert_eq!(reported_limits(&h).unwrap().requests.remaining, Some(7));
    }
}
