//! The rate-limit headers real providers send on every reply, 429s
//! included, computed from the mock's quota: OpenAI's
//! `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` (resets as Go
//! durations such as `6m0s` or `20ms`) on the OpenAI routes, Anthropic's
//! `anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}` (resets as
//! RFC 3339 instants). Gemini sends none.

use std::time::{Duration, SystemTime};

use crate::config::RateHeaders;
use crate::quota::Standing;
use crate::wire::Format;

/// The headers of a reply for a quota standing `standing` now; `which`
/// leaves out the limit, or every header.
pub fn headers(format: Format, standing: &Standing, which: RateHeaders) -> Vec<(String, String)> {
    let mut h = Vec::new();
    if which == RateHeaders::None {
        return h;
    }
    let with_limit = which == RateHeaders::Full;
    let limits = [
        (
            "requests",
            Some(standing.limit_requests),
            standing.remaining_requests,
        ),
        ("tokens", standing.limit_tokens, standing.remaining_tokens),
    ];
    for (kind, limit, remaining) in limits {
        // A limit the mock was not given is not reported.
        let Some(limit) = limit.filter(|l| *l != u64::MAX) else {
            continue;
        };
        match format {
            Format::Responses | Format::Chat => {
                if with_limit {
                    h.push((format!("x-ratelimit-limit-{kind}"), limit.to_string()));
                }
                h.push((
                    format!("x-ratelimit-remaining-{kind}"),
                    remaining.to_string(),
                ));
                h.push((
                    format!("x-ratelimit-reset-{kind}"),
                    go_duration(standing.reset),
                ));
            }
            Format::Anthropic => {
                let reset = crate::rfc3339::format(SystemTime::now() + standing.reset);
                if with_limit {
                    h.push((
                        format!("anthropic-ratelimit-{kind}-limit"),
                        limit.to_string(),
                    ));
                }
                h.push((
                    format!("anthropic-ratelimit-{kind}-remaining"),
                    remaining.to_string(),
                ));
                h.push((format!("anthropic-ratelimit-{kind}-reset"), reset));
            }
            Format::Gemini => {}
        }
    }
    h
}

/// A duration as OpenAI writes it: `20ms` below a second, `1.5s` below a
/// minute, `6m0s` above.
fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = |ms: u128| {
        let text = format!("{}.{:03}", ms / 1000, ms % 1000);
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    };
    if ms < 60_000 {
        return format!("{}s", secs(ms));
    }
    let (m, rest) = (ms / 60_000, ms % 60_000);
    format!("{m}m{}s", secs(rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_durations() {
        assert_eq!(go_duration(Duration::from_millis(20)), "20ms");
        assert_eq!(go_duration(Duration::ZERO), "0ms");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_millis(2189)), "2.189s");
        assert_eq!(go_duration(Duration::from_secs(360)), "6m0s");
        assert_eq!(go_duration(Duration::from_millis(61_250)), "1m1.25s");
    }

    #[test]
    fn each_route_its_names() {
        let s = Standing {
            limit_requests: 500,
            remaining_requests: 499,
            limit_tokens: Some(30_000),
            remaining_tokens: 29_000,
            reset: Duration::from_millis(120),
        };
        let openai = headers(Format::Chat, &s, RateHeaders::Full);
        assert!(openai.contains(&("x-ratelimit-remaining-tokens".into(), "29000".into())));
        assert!(openai.contains(&("x-ratelimit-reset-requests".into(), "120ms".into())));
        assert_eq!(openai.len(), 6);
        let anthropic = headers(Format::Anthropic, &s, RateHeaders::Full);
        assert!(anthropic.contains(&("anthropic-ratelimit-requests-limit".into(), "500".into())));
        assert!(
            anthropic
                .iter()
                .any(|(k, v)| k == "anthropic-ratelimit-tokens-reset" && v.ends_with('Z'))
        );
        assert!(headers(Format::Gemini, &s, RateHeaders::Full).is_empty());
        let no_tpm = Standing {
            limit_tokens: None,
            ..s
        };
        assert_eq!(
            headers(Format::Responses, &no_tpm, RateHeaders::Full).len(),
            3
        );
        let remaining = headers(Format::Responses, &s, RateHeaders::Remaining);
        assert_eq!(remaining.len(), 4);
        assert!(
            remaining
                .iter()
                .all(|(k, _)| !k.starts_with("x-ratelimit-limit"))
        );
        assert!(headers(Format::Chat, &s, RateHeaders::None).is_empty());
    }
}
