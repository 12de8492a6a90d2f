//! Embeddings: many inputs per request, one result per input.
//!
//! A provider embeds up to a few thousand texts in one request, so calling
//! it once per text would waste most of the quota's requests. The host
//! here packs items into requests within the model's limits
//! ([`PackLimits`]), runs the packs through the engine (cooldowns, RPM/TPM
//! admission, retries, deadlines as for completions), and gives each item
//! its own [`ItemResult`](crate::ItemResult) with its vector. A request the
//! provider refuses as a whole (one input too long) is split in halves and
//! the halves retried, down to the one input at fault, so one bad input
//! never fails its neighbours.
//!
//! ```no_run
//! # async fn f() -> Result<(), async_batch_llm::Error> {
//! use std::sync::Arc;
//! use async_batch_llm::embed::{PackLimits, embed_items};
//! use async_batch_llm::providers::{ApiKey, OpenAiConfig, OpenAiEmbeddings};
//! use async_batch_llm::{BatchConfig, Item};
//!
//! let model = OpenAiEmbeddings::new(
//!     OpenAiConfig {
//!         model: "text-embedding-3-small".into(),
//!         base_url: "https://api.openai.com/v1".into(),
//!         api_key: ApiKey::from_env(&["OPENAI_API_KEY"]),
//!         http: Default::default(),
//!     },
//!     None,
//! )?;
//! let items = vec![Item::new("a", "first passage"), Item::new("b", "second passage")];
//! let results = embed_items(Arc::new(model), items, &BatchConfig::default(), PackLimits::default()).await?;
//! for r in &results {
//!     println!("{}: {:?}", r.id, r.output().map(Vec::len));
//! }
//! # Ok(()) }
//! ```

mod host;
mod pack;

pub use host::{EmbedStrategy, embed_items};
pub use pack::{PackLimits, pack};

use futures::future::BoxFuture;

use crate::error::CallError;
use crate::usage::TokenUsage;

/// What one request returned: a vector per input, in input order, and the
/// request's usage.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    /// One vector per input.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens of the request (input only).
    pub usage: TokenUsage,
}

/// A model that embeds many texts in one request.
pub trait EmbeddingModel: Send + Sync + 'static {
    /// Embeds `inputs` in one request.
    fn embed<'a>(&'a self, inputs: &'a [String]) -> BoxFuture<'a, Result<Embeddings, CallError>>;

    /// The quota scope of its requests (provider, base URL, key
    /// fingerprint, model).
    fn quota_scope(&self) -> Option<String> {
        None
    }

    /// The provider's limits on one request.
    fn limits(&self) -> PackLimits {
        PackLimits::default()
    }
}
