//! Faults on demand: a marker in the prompt scripts one item.
//!
//! `[[mock:KIND]]` applies to every request whose prompt carries it;
//! `[[mock:KIND*N]]` only to the first N such requests (then the prompt is
//! answered normally). Kinds with an argument take it after a colon:
//! `[[mock:429:2*1]]` is one 429 with `Retry-After: 2`.
//!
//! | kind | effect |
//! |---|---|
//! | `429[:SECS]` | 429 with `Retry-After` (default 1 s) |
//! | `429-ms:MS` | 429 with `retry-after-ms` |
//! | `429-reset:SECS` | 429 with `x-ratelimit-reset-requests` |
//! | `429-gemini:SECS` | 429 with a Gemini `RetryInfo` |
//! | `429-nohint` | 429 without a hint |
//! | `quota-day` | Gemini per-day `QuotaFailure` |
//! | `402`, `insufficient-quota` | no credit |
//! | `500`, `503`, `529`, `401`, `403`, `400`, `context-length` | that error |
//! | `hang`, `malformed`, `truncated`, `empty`, `error200`, `safety`, `refusal` | that fault |
//! | `invalid-output` | a schema reply that does not satisfy the schema |
//! | `cached:N`, `reasoning:N` | report N cached input / reasoning tokens |

/// How every marker begins.
pub const PREFIX: &str = "[[mock:";

use std::time::Duration;

use crate::config::{Fault, Hint};

/// What the markers of one prompt ask for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Markers {
    /// A fault with its `*N` limit (`None`: every time).
    pub fault: Option<(Fault, Option<u32>)>,
    /// Cached input tokens to report.
    pub cached: Option<u64>,
    /// Reasoning tokens to report.
    pub reasoning: Option<u64>,
}

fn secs(arg: Option<&str>, default: f64) -> Duration {
    let n = arg
        .and_then(|a| a.parse::<f64>().ok())
        .filter(|n| n.is_finite() && *n >= 0.0);
    Duration::from_secs_f64(n.unwrap_or(default))
}

/// Finds the markers in a prompt. Unknown kinds are ignored.
pub fn parse(prompt: &str) -> Markers {
    let mut m = Markers::default();
    let mut rest = prompt;
    while let Some(start) = rest.find(PREFIX) {
        let after = &rest[start + 7..];
        let Some(end) = after.find("]]") else { break };
        let body = &after[..end];
        rest = &after[end + 2..];
        let (spec, times) = match body.rsplit_once('*') {
            Some((s, n)) => (s, n.parse::<u32>().ok()),
            None => (body, None),
        };
        let (kind, arg) = match spec.split_once(':') {
            Some((k, a)) => (k, Some(a)),
            None => (spec, None),
        };
        let fault = match kind {
            "429" => Fault::RateLimit(Hint::RetryAfter(secs(arg, 1.0))),
            "429-ms" => Fault::RateLimit(Hint::RetryAfterMs(secs(arg, 1000.0) / 1000)),
            "429-reset" => Fault::RateLimit(Hint::Reset(secs(arg, 1.0))),
            "429-gemini" => Fault::RateLimit(Hint::Gemini(secs(arg, 1.0))),
            "429-nohint" => Fault::RateLimit(Hint::None),
            "quota-day" => Fault::QuotaPerDay,
            "402" => Fault::PaymentRequired,
            "insufficient-quota" => Fault::InsufficientQuota,
            "500" => Fault::ServerError,
            "503" => Fault::Unavailable,
            "529" => Fault::Overloaded,
            "401" => Fault::Unauthorized,
            "403" => Fault::Forbidden,
            "400" => Fault::BadRequest,
            "context-length" => Fault::ContextLength,
            "hang" => Fault::Hang,
            "malformed" => Fault::Malformed,
            "truncated" => Fault::Truncated,
            "empty" => Fault::Empty,
            "error200" => Fault::ErrorIn200,
            "safety" => Fault::Safety,
            "refusal" => Fault::Refusal,
            "invalid-output" => Fault::InvalidOutput,
            "cached" => {
                m.cached = arg.and_then(|a| a.parse().ok());
                continue;
            }
            "reasoning" => {
                m.reasoning = arg.and_then(|a| a.parse().ok());
                continue;
            }
            _ => continue,
        };
        m.fault = Some((fault, times));
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kinds_args_and_limits() {
        let m = parse("x [[mock:429:2*1]] y [[mock:cached:5]][[mock:reasoning:7]]");
        assert_eq!(
            m.fault,
            Some((
                Fault::RateLimit(Hint::RetryAfter(Duration::from_secs(2))),
                Some(1)
            ))
        );
        assert_eq!((m.cached, m.reasoning), (Some(5), Some(7)));
        assert_eq!(
            parse("[[mock:429-ms:250]]").fault,
            Some((
                Fault::RateLimit(Hint::RetryAfterMs(Duration::from_millis(250))),
                None
            ))
        );
        assert_eq!(parse("[[mock:nope]] [[mock:500").fault, None);
        assert_eq!(parse("plain").fault, None);
    }
}
