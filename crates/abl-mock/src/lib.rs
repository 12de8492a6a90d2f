//! # abl-mock
//!
//! A mock LLM provider on loopback for tests, benchmarks and the keyless
//! demo of async-batch-llm. It speaks OpenAI Responses
//! (`POST /v1/responses`), OpenAI Chat Completions
//! (`POST /v1/chat/completions`), Gemini (`POST
//! /v1beta/models/{model}:generateContent` and `cachedContents`) and
//! Anthropic Messages (`POST /v1/messages`) with their real response shapes.
//!
//! - Deterministic replies: echo, upper case or a fixed text; a JSON value
//!   satisfying the schema when one is requested.
//! - Latency: fixed plus uniform jitter.
//! - Faults at seeded rates ([`MockConfig`]) or on demand by a marker in the
//!   prompt ([`markers`]).
//! - Strict RPM/TPM quotas over a rolling window, answering 429 with the
//!   usual headers.
//! - `GET /stats` ([`Stats`]), `GET /stats/prompts`, `POST /reset`.
//!
//! Token counts are a quarter of the characters, rounded up.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let mock = abl_mock::MockServer::start(abl_mock::MockConfig::default()).await?;
//! println!("OpenAI-compatible base URL: {}/v1", mock.base_url());
//! # Ok(()) }
//! ```

mod cache;
pub mod config;
pub mod markers;
mod quota;
pub mod schema;
mod server;
mod stats;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;

pub use config::{Fault, Hint, MockConfig, ReplyMode};
pub use server::tokens;
pub use stats::{CacheOps, Recorded, Stats};

/// A running mock server. Dropping it stops the server.
pub struct MockServer {
    addr: SocketAddr,
    base_url: String,
    shared: Arc<server::Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for MockServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockServer")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl MockServer {
    /// Starts the server on `127.0.0.1:{config.port}` (0: a free port).
    pub async fn start(config: MockConfig) -> std::io::Result<Self> {
        config
            .validate()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", config.port)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(server::Shared::new(config));
        let app = server::router(Arc::clone(&shared));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
            if let Err(e) = served {
                tracing::error!("mock server stopped: {e}");
            }
        });
        Ok(Self {
            addr,
            base_url: format!("http://{addr}"),
            shared,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    /// `http://127.0.0.1:PORT` (append `/v1` for OpenAI-style clients).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The counters now.
    pub fn stats(&self) -> Stats {
        self.shared.stats.snapshot()
    }

    /// Requests per prompt (needs `track_prompts`).
    pub fn prompt_counts(&self) -> std::collections::HashMap<String, u64> {
        self.shared.stats.prompts()
    }

    /// The last 64 model requests (with `record_requests`), oldest first.
    pub fn recent_requests(&self) -> Vec<Recorded> {
        self.shared.stats.recent()
    }

    /// Clears counters, caches and marker counts.
    pub fn reset(&self) {
        self.shared.reset();
    }

    /// The configuration.
    pub fn config(&self) -> &MockConfig {
        &self.shared.config
    }

    /// Stops accepting connections and waits for the server to end
    /// (requests still hanging are dropped).
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
