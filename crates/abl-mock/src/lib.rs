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
//! - Or one recorded response for every request ([`Replay`]), to see what a
//!   client makes of a body a real provider sent.
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
mod format;
pub mod markers;
pub mod parts;
mod quota;
mod rate_headers;
mod replay;
mod rfc3339;
pub mod schema;
mod server;
mod stats;
mod timer;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;

pub use config::{Fault, Hint, MockConfig, RateHeaders, ReplyMode};
pub use replay::Replay;
pub use server::embeddings::{
    DEFAULT_DIMENSIONS, MAX_INPUTS, MAX_REQUEST_TOKENS, vector as embedding_of,
};
pub use server::tokens;
pub use stats::{CacheOps, Recorded, Stats};

/// A running mock server. Dropping it stops the server.
pub struct MockServer {
    addr: SocketAddr,
    base_url: String,
    shared: Arc<server::Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for MockServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockServer")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl MockServer {
    /// Starts a server with default settings that records every request
    /// (what tests that check request bodies need).
    pub async fn start_recording() -> std::io::Result<Self> {
        Self::start(MockConfig {
            record_requests: true,
            ..MockConfig::default()
        })
        .await
    }

    /// Starts the server on `127.0.0.1:{config.port}` (0: a free port) as a
    /// task of the current tokio runtime.
    pub async fn start(config: MockConfig) -> std::io::Result<Self> {
        let (listener, shared) = Self::bind(config).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(Self::serve(listener, Arc::clone(&shared), rx));
        Ok(Self {
            addr,
            base_url: format!("http://{addr}"),
            shared,
            shutdown: Some(tx),
            task: Some(task),
            thread: None,
        })
    }

    /// Starts the server on its own runtime with `threads` worker threads,
    /// so that it does not share a scheduler with the client under test (as
    /// a real provider would not). Needs no ambient runtime.
    pub fn start_dedicated(config: MockConfig, threads: usize) -> std::io::Result<Self> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("abl-mock-main".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(threads.max(1))
                    .thread_name("abl-mock")
                    .enable_all()
                    .build();
                let rt = match rt {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                rt.block_on(async move {
                    match Self::bind(config).await {
                        Ok((listener, shared)) => {
                            let addr = listener.local_addr();
                            let _ = ready_tx.send(addr.map(|a| (a, Arc::clone(&shared))));
                            Self::serve(listener, shared, rx).await;
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                });
            })?;
        let (addr, shared) = ready_rx.recv().map_err(|_| {
            std::io::Error::other("the mock server thread ended before it started")
        })??;
        Ok(Self {
            addr,
            base_url: format!("http://{addr}"),
            shared,
            shutdown: Some(tx),
            task: None,
            thread: Some(thread),
        })
    }

    async fn bind(
        config: MockConfig,
    ) -> std::io::Result<(tokio::net::TcpListener, Arc<server::Shared>)> {
        config
            .validate()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", config.port)).await?;
        Ok((listener, Arc::new(server::Shared::new(config))))
    }

    async fn serve(
        listener: tokio::net::TcpListener,
        shared: Arc<server::Shared>,
        stop: tokio::sync::oneshot::Receiver<()>,
    ) {
        use axum::serve::ListenerExt as _;
        // Small request/response exchanges must not wait on Nagle's algorithm.
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::warn!("mock server: cannot set TCP_NODELAY: {e}");
            }
        });
        let served = axum::serve(listener, server::router(shared))
            .with_graceful_shutdown(async {
                let _ = stop.await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!("mock server stopped: {e}");
        }
    }

    /// `http://127.0.0.1:PORT` (append `/v1` for OpenAI-style clients).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The base URL a client of `spec` (`provider:model`) should use:
    /// Gemini and Anthropic clients add their own version path, the
    /// OpenAI-style ones expect `/v1` in it.
    pub fn base_url_for(&self, spec: &str) -> String {
        if spec.starts_with("gemini") || spec.starts_with("anthropic") {
            self.base_url.clone()
        } else {
            format!("{}/v1", self.base_url)
        }
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
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
        // A dedicated runtime stops when its graceful shutdown ends; requests
        // still hanging would hold it, so it is left to end on its own.
        drop(self.thread.take());
    }
}
