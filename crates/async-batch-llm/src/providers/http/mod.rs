//! What every HTTP provider shares: the client and [`Endpoint`]
//! ([`client`]), the retry hints of a response ([`hints`]), and turning a
//! status and body into a categorized error ([`classify`]).

mod classify;
mod client;
mod hints;

pub use classify::parse_body;
pub(crate) use classify::shape_error;
pub(crate) use client::Endpoint;
pub use client::HttpOptions;
pub use hints::retry_hint;
