//! The HTTP client every provider shares: one connection pool sized to the
//! run, no hidden retries (the engine is the only retry loop), and an
//! [`Endpoint`]: base URL, auth headers and quota scope of one model.

use std::time::Duration;

use reqwest::header::HeaderMap;
use serde_json::Value;

use super::classify::parse_body;
use super::rate_limits::reported_limits;
use crate::error::{CallError, Error, ErrorCategory};
use crate::limit::ReportedLimits;

/// HTTP settings of a provider client.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Idle connections kept per host: size it to the run's concurrency.
    pub max_connections: usize,
    /// Time to establish a connection (10 s).
    pub connect_timeout: Duration,
    /// Used when a request carries no timeout of its own (120 s).
    pub default_timeout: Duration,
    /// Keep each successful response's JSON body in [`LlmResponse::raw`]
    /// (off: a body can be large, and most runs never look at it).
    ///
    /// [`LlmResponse::raw`]: crate::LlmResponse::raw
    pub keep_raw: bool,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            max_connections: 64,
            connect_timeout: Duration::from_secs(10),
            default_timeout: Duration::from_secs(120),
            keep_raw: false,
        }
    }
}

/// The client of one provider model: one connection pool, no hidden retries.
#[derive(Clone)]
pub(crate) struct Http {
    client: reqwest::Client,
    default_timeout: Duration,
}

impl Http {
    pub(crate) fn new(options: &HttpOptions) -> Result<Self, Error> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(options.max_connections.max(1))
            .connect_timeout(options.connect_timeout)
            .tcp_nodelay(true)
            .user_agent(concat!("async-batch-llm/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::config(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            client,
            default_timeout: options.default_timeout,
        })
    }

    /// POSTs a JSON body; returns status, headers and the raw body.
    pub(crate) async fn post(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
        timeout: Option<Duration>,
    ) -> Result<(u16, HeaderMap, bytes::Bytes), CallError> {
        self.send(self.client.post(url), headers, Some(body), timeout)
            .await
    }

    /// Sends a request with any method (JSON body optional).
    #[cfg_attr(not(feature = "gemini"), allow(dead_code))]
    pub(crate) async fn request(
        &self,
        method: reqwest::Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<(u16, HeaderMap, bytes::Bytes), CallError> {
        let bytes = body.map(json_bytes).transpose()?;
        self.send(self.client.request(method, url), headers, bytes, None)
            .await
    }

    /// Sends any request.
    pub(crate) async fn send(
        &self,
        builder: reqwest::RequestBuilder,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
        timeout: Option<Duration>,
    ) -> Result<(u16, HeaderMap, bytes::Bytes), CallError> {
        let mut req = builder.timeout(timeout.unwrap_or(self.default_timeout));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(b);
        }
        let resp = req.send().await.map_err(transport_error)?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.map_err(transport_error)?;
        Ok((status, headers, bytes))
    }
}

/// A failure before a response was complete.
#[allow(clippy::needless_pass_by_value)] // used as map_err(transport_error)
fn transport_error(e: reqwest::Error) -> CallError {
    // reqwest's message names the URL, never a header: no key can leak.
    let msg = e.to_string();
    if e.is_timeout() {
        CallError::new(
            ErrorCategory::FrameworkTimeout,
            format!("request timed out: {msg}"),
        )
    } else if e.is_body() || e.is_decode() {
        CallError::new(
            ErrorCategory::ProviderResponseError,
            format!("response body was cut short: {msg}"),
        )
    } else {
        CallError::new(ErrorCategory::NetworkError, format!("network error: {msg}"))
    }
}

/// A request id from the usual headers.
pub(crate) fn request_id(headers: &HeaderMap) -> Option<String> {
    ["x-request-id", "request-id", "x-goog-request-id"]
        .iter()
        .find_map(|h| {
            headers
                .get(*h)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
}

/// One model's way to its provider: the shared [`Http`] client, the base
/// URL, the headers that authenticate (and version) every request, and the
/// quota scope the model's calls count against. Every provider family
/// holds one, so request plumbing is written once.
#[derive(Clone)]
pub(crate) struct Endpoint {
    http: Http,
    base_url: String,
    headers: Vec<(&'static str, String)>,
    scope: String,
    keep_raw: bool,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Header values hold the key: only their names are shown.
        let names: Vec<&str> = self.headers.iter().map(|(k, _)| *k).collect();
        f.debug_struct("Endpoint")
            .field("base_url", &self.base_url)
            .field("headers", &names)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// A parsed 2xx reply.
pub(crate) struct Reply {
    /// The JSON body.
    pub(crate) body: Value,
    /// The provider's request id.
    pub(crate) request_id: Option<String>,
    /// What its rate-limit headers said.
    pub(crate) limits: Option<ReportedLimits>,
}

impl Endpoint {
    /// An endpoint at `base_url` (a trailing slash is dropped) sending
    /// `headers` with every request, in quota scope `scope`.
    pub(crate) fn new(
        options: &HttpOptions,
        base_url: &str,
        headers: Vec<(&'static str, String)>,
        scope: String,
    ) -> Result<Self, Error> {
        Ok(Self {
            http: Http::new(options)?,
            base_url: base_url.trim_end_matches('/').to_owned(),
            headers,
            scope,
            keep_raw: options.keep_raw,
        })
    }

    /// Turns a reply into the model's answer: `parse` reads the body, the
    /// reply's rate-limit headers go with the answer or the error, and the
    /// body goes into `response.raw` when [`HttpOptions::keep_raw`] asks.
    pub(crate) fn finish(
        &self,
        reply: Reply,
        parse: impl FnOnce(&Value, Option<String>) -> Result<crate::model::LlmResponse, CallError>,
    ) -> Result<crate::model::LlmResponse, CallError> {
        let Reply {
            body,
            request_id,
            limits,
        } = reply;
        match parse(&body, request_id) {
            Ok(mut r) => {
                r.metadata.rate_limits = limits;
                if self.keep_raw {
                    r.raw = Some(body);
                }
                Ok(r)
            }
            Err(e) => Err(e.with_reported_limits(limits)),
        }
    }

    /// The quota scope name.
    pub(crate) fn scope(&self) -> &str {
        &self.scope
    }

    /// `base_url/path`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base_url, path.trim_start_matches('/'))
    }

    /// Uploads the file at `file` as multipart form data (`fields`, then
    /// the file as `file`), streamed from disk; returns the JSON reply.
    #[cfg(feature = "openai")]
    pub(crate) async fn upload(
        &self,
        path: &str,
        fields: &[(&str, &str)],
        file: &std::path::Path,
    ) -> Result<Value, CallError> {
        let local = |e: std::io::Error| {
            CallError::new(
                ErrorCategory::LogicError,
                format!("cannot read {}: {e}", file.display()),
            )
            .with_retryable(false)
        };
        let f = tokio::fs::File::open(file).await.map_err(local)?;
        let len = f.metadata().await.map_err(local)?.len();
        let name = file.file_name().map_or_else(
            || "input.jsonl".into(),
            |n| n.to_string_lossy().into_owned(),
        );
        let part = reqwest::multipart::Part::stream_with_length(reqwest::Body::from(f), len)
            .file_name(name);
        let mut form = reqwest::multipart::Form::new();
        for (k, v) in fields {
            form = form.text((*k).to_owned(), (*v).to_owned());
        }
        let mut req = self
            .http
            .client
            .post(self.url(path))
            .multipart(form.part("file", part));
        for (k, v) in self.headers_with(&[]) {
            req = req.header(k, v);
        }
        let resp = req.send().await.map_err(transport_error)?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.map_err(transport_error)?;
        parse_body(status, &headers, &bytes)
    }

    /// GETs `path` and parses the reply (a non-2xx status or an error in
    /// the body is a classified [`CallError`]).
    pub(crate) async fn get_json(&self, path: &str) -> Result<Value, CallError> {
        let (status, headers, bytes) = self
            .http
            .send(
                self.http.client.get(self.url(path)),
                &self.headers_with(&[]),
                None,
                None,
            )
            .await?;
        parse_body(status, &headers, &bytes)
    }

    /// GETs `path`; its body as lines, read as they arrive (a results
    /// file of any size is never held whole).
    pub(crate) async fn get_lines(&self, path: &str) -> Result<Lines, CallError> {
        let mut req = self.http.client.get(self.url(path));
        for (k, v) in self.headers_with(&[]) {
            req = req.header(k, v);
        }
        let resp = req.send().await.map_err(transport_error)?;
        let status = resp.status().as_u16();
        if !(200..300).contains(&status) {
            let headers = resp.headers().clone();
            let bytes = resp.bytes().await.map_err(transport_error)?;
            parse_body(status, &headers, &bytes)?;
            return Err(crate::providers::http::shape_error(&format!(
                "HTTP {status} with a body that reads as a success"
            )));
        }
        Ok(Lines {
            resp: Some(resp),
            pending: Vec::new(),
            start: 0,
        })
    }

    /// Sends `method` to `target` — a path under the base URL, or an
    /// absolute URL on the base URL's own origin (an upload URL the
    /// provider handed out; the key is never sent elsewhere) — with
    /// `extra` headers and a body streamed with its length and type.
    #[cfg_attr(not(any(feature = "anthropic", feature = "gemini")), allow(dead_code))]
    pub(crate) async fn send_stream(
        &self,
        method: reqwest::Method,
        target: &str,
        extra: &[(&str, &str)],
        body: Option<(reqwest::Body, u64, &str)>,
        timeout: Duration,
    ) -> Result<(u16, HeaderMap, bytes::Bytes), CallError> {
        let url = if target.starts_with("http://") || target.starts_with("https://") {
            if origin(target) != origin(&self.base_url) {
                return Err(CallError::new(
                    ErrorCategory::ProviderResponseError,
                    "the provider named a URL on another host; the key is not sent there",
                )
                .with_retryable(false));
            }
            target.to_owned()
        } else {
            self.url(target)
        };
        let mut req = self.http.client.request(method, url).timeout(timeout);
        for (k, v) in self.headers_with(extra) {
            req = req.header(k, v);
        }
        if let Some((b, len, content_type)) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .header(reqwest::header::CONTENT_LENGTH, len)
                .body(b);
        }
        let resp = req.send().await.map_err(transport_error)?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.map_err(transport_error)?;
        Ok((status, headers, bytes))
    }

    fn headers_with<'a>(&'a self, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut all: Vec<(&str, &str)> =
            self.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        all.extend_from_slice(extra);
        all
    }

    /// POSTs a JSON body to `path` and parses the reply (a non-2xx status
    /// or an error inside a 200 body is a classified [`CallError`], with
    /// the reply's rate-limit headers).
    #[cfg_attr(not(any(feature = "openai", feature = "gemini")), allow(dead_code))]
    pub(crate) async fn post_json(
        &self,
        path: &str,
        body: &Value,
        extra: &[(&str, &str)],
        timeout: Option<Duration>,
    ) -> Result<Reply, CallError> {
        self.post_body(path, json_bytes(body)?, extra, timeout)
            .await
    }

    /// [`post_json`](Self::post_json) with the body already serialized
    /// (the one copy of a body that carries files, freed once sent).
    pub(crate) async fn post_body(
        &self,
        path: &str,
        body: Vec<u8>,
        extra: &[(&str, &str)],
        timeout: Option<Duration>,
    ) -> Result<Reply, CallError> {
        let (status, h, bytes) = self
            .http
            .post(&self.url(path), &self.headers_with(extra), body, timeout)
            .await?;
        let limits = reported_limits(&h);
        let body = parse_body(status, &h, &bytes).map_err(|e| e.with_reported_limits(limits))?;
        Ok(Reply {
            body,
            request_id: request_id(&h),
            limits,
        })
    }

    /// Sends a request with any method to `path`; returns the raw reply.
    #[cfg_attr(not(feature = "gemini"), allow(dead_code))]
    pub(crate) async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, HeaderMap, bytes::Bytes), CallError> {
        self.http
            .request(method, &self.url(path), &self.headers_with(&[]), body)
            .await
    }
}

/// `scheme://host[:port]` of a URL.
#[cfg_attr(not(any(feature = "anthropic", feature = "gemini")), allow(dead_code))]
fn origin(url: &str) -> &str {
    let rest = url.find("://").map_or(0, |i| i + 3);
    let end = url[rest..].find('/').map_or(url.len(), |i| rest + i);
    &url[..end]
}

/// A JSON body as bytes (a body that cannot be serialized is the caller's
/// bug, reported as such).
fn json_bytes(body: &Value) -> Result<Vec<u8>, CallError> {
    serde_json::to_vec(body).map_err(|e| {
        CallError::new(
            crate::error::ErrorCategory::LogicError,
            format!("the request body cannot be serialized: {e}"),
        )
    })
}

/// The lines of a response body, read as they arrive.
pub(crate) struct Lines {
    resp: Option<reqwest::Response>,
    pending: Vec<u8>,
    start: usize,
}

impl Lines {
    /// The next line that is not blank, without its newline.
    pub(crate) async fn next(&mut self) -> Option<Result<Vec<u8>, CallError>> {
        loop {
            if let Some(nl) = self.pending[self.start..].iter().position(|b| *b == b'\n') {
                let line = self.pending[self.start..self.start + nl].to_vec();
                self.start += nl + 1;
                if !line.iter().all(u8::is_ascii_whitespace) {
                    return Some(Ok(line));
                }
                continue;
            }
            self.pending.drain(..self.start);
            self.start = 0;
            let Some(resp) = self.resp.as_mut() else {
                let rest = std::mem::take(&mut self.pending);
                return (!rest.iter().all(u8::is_ascii_whitespace)).then_some(Ok(rest));
            };
            match resp.chunk().await {
                Ok(Some(c)) => self.pending.extend_from_slice(&c),
                Ok(None) => self.resp = None,
                Err(e) => {
                    self.resp = None;
                    return Some(Err(transport_error(e)));
                }
            }
        }
    }
}
