//! What every HTTP provider shares: the client and [`Endpoint`]
//! ([`client`]), where an error sits in a body ([`error_body`]), the retry
//! hints of a response ([`hints`]), the rate-limit headers of every reply
//! ([`rate_limits`]), and turning a status and body into a categorized
//! error ([`classify`]).

// Without a provider family built in, only the public helpers are used.
#![cfg_attr(
    not(any(feature = "openai", feature = "gemini", feature = "anthropic")),
    allow(dead_code, unused_imports)
)]

mod classify;
mod client;
mod error_body;
mod hints;
mod rate_limits;

pub use classify::parse_body;
pub(crate) use classify::shape_error;
pub(crate) use client::Endpoint;
pub use client::HttpOptions;
pub(crate) use client::Lines;
pub use hints::retry_hint;

/// A header map from pairs, for the tests of header parsing.
#[cfg(test)]
fn test_headers(pairs: &[(&'static str, &str)]) -> reqwest::header::HeaderMap {
    let mut h = reqwest::header::HeaderMap::new();
    for (k, v) in pairs {
        h.insert(
            *k,
            reqwest::header::HeaderValue::from_str(v).expect("a valid test header"),
        );
    }
    h
}
