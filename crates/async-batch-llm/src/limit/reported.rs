//! What a provider says about its own limits in the headers of each reply
//! (OpenAI-style `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`,
//! Anthropic's `anthropic-ratelimit-*`), as the engine uses it: the limits
//! become a scope's RPM/TPM when the user set none, and what remains
//! corrects the scope's window for use the run cannot see (another process
//! on the same key).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One limit as a reply reports it. Every field is optional: providers
/// send some of them, and some servers none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportedLimit {
    /// The limit per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// What is left of it now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining: Option<u64>,
    /// Until the limit is whole again, from when the reply was received.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::time::option_duration_ms",
        rename = "reset_ms"
    )]
    pub reset: Option<Duration>,
}

impl ReportedLimit {
    /// True when the reply said nothing about this limit.
    pub fn is_empty(&self) -> bool {
        self.limit.is_none() && self.remaining.is_none() && self.reset.is_none()
    }
}

/// The rate-limit headers of one reply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportedLimits {
    /// Requests per minute.
    #[serde(default, skip_serializing_if = "ReportedLimit::is_empty")]
    pub requests: ReportedLimit,
    /// Tokens per minute.
    #[serde(default, skip_serializing_if = "ReportedLimit::is_empty")]
    pub tokens: ReportedLimit,
}

impl ReportedLimits {
    /// True when the reply had no rate-limit headers.
    pub fn is_empty(&self) -> bool {
        self.requests.is_empty() && self.tokens.is_empty()
    }
}
