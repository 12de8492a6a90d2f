//! [`GeminiCachedModel`]: a Gemini model over an explicit context cache
//! (`cachedContents`), with the cache's whole lifecycle handled.
//!
//! - `prepare` adopts a live cache whose tags and content fingerprint match
//!   (caches of other models, untagged caches and caches about to expire are
//!   skipped) or creates one. It runs once, under a lock: however many
//!   workers share the instance, none sees a half-prepared model.
//! - `generate` renews the cache when it is within the renewal buffer of
//!   expiry (one TTL update under the lock; if that fails, find-or-create),
//!   replaces it if it has expired, and when the provider says the cached
//!   content is gone (403/404 naming it) creates one replacement, shared by
//!   every call that saw the failure, and retries once.
//! - `cleanup` leaves the cache alive for the next run; [`delete_cache`]
//!   deletes it (one provider call however many callers).
//!
//! [`delete_cache`]: GeminiCachedModel::delete_cache

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::GeminiModel;
use crate::attachment::PartPolicy;
use crate::error::{CallError, Error, ErrorCategory};
use crate::fingerprint::sha256_hex;
use crate::item::Role;
use crate::model::{LlmRequest, LlmResponse, Model};
use crate::providers::http::parse_body;
use crate::providers::wire::with_parts;
use crate::schema::SchemaDialect;

/// The prefix of the display name that carries a cache's tags.
pub const TAG_PREFIX: &str = "abl-tags:";
/// The reserved tag holding the content fingerprint.
pub const CONTENT_TAG: &str = "abl-content";
const MAX_DISPLAY_NAME: usize = 128;

/// What is cached: a system instruction and leading turns shared by every
/// call (a document, few-shot examples, …).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CachedContent {
    /// System instruction stored in the cache (calls may not add their own).
    pub system_instruction: Option<String>,
    /// Gemini `Content` objects (`{"role": "user", "parts": [{"text": …}]}`).
    pub contents: Vec<Value>,
}

impl CachedContent {
    /// Nothing cached yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the system instruction.
    #[must_use]
    pub fn with_system(mut self, system: impl Into<String>) -> Self {
        self.system_instruction = Some(system.into());
        self
    }

    /// Adds one text turn.
    #[must_use]
    pub fn with_text(mut self, role: Role, text: impl Into<String>) -> Self {
        let role = if role == Role::Assistant {
            "model"
        } else {
            "user"
        };
        self.contents
            .push(json!({"role": role, "parts": [{"text": text.into()}]}));
        self
    }

    /// Adds a raw Gemini `Content` object.
    #[must_use]
    pub fn with_content(mut self, content: Value) -> Self {
        self.contents.push(content);
        self
    }
}

/// Lifecycle settings of a [`GeminiCachedModel`] (the seed's defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct CacheOptions {
    /// Time to live of a created or renewed cache (3600 s).
    pub ttl: Duration,
    /// Renew (or replace) a cache this long before it expires (300 s).
    pub renewal_buffer: Duration,
    /// Renew the TTL from `generate` when inside the buffer (on).
    pub auto_renew: bool,
    /// Tags that a reused cache must carry (kept in its display name).
    pub tags: BTreeMap<String, String>,
}

impl Default for CacheOptions {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(3600),
            renewal_buffer: Duration::from_secs(300),
            auto_renew: true,
            tags: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone)]
struct Live {
    name: String,
    expires: Instant,
    generation: u64,
}

#[derive(Debug, Default)]
struct State {
    live: Option<Live>,
    generation: u64,
}

/// A Gemini model whose calls use a shared context cache. Share one instance
/// (e.g. behind an `Arc` or inside one strategy) across all items.
pub struct GeminiCachedModel {
    inner: GeminiModel,
    content: CachedContent,
    options: CacheOptions,
    display_name: String,
    /// The tags in the display name, content fingerprint included.
    tags: BTreeMap<String, String>,
    state: Mutex<State>,
}

impl std::fmt::Debug for GeminiCachedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeminiCachedModel")
            .field("model", &self.inner)
            .field("options", &self.options)
            .field("display_name", &self.display_name)
            .finish_non_exhaustive()
    }
}

/// JSON with object keys sorted at every level, whatever the map type.
fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String((*k).clone()).to_string());
                out.push(':');
                if let Some(x) = m.get(*k) {
                    canonical(x, out);
                }
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn model_path(model: &str) -> String {
    if model.starts_with("models/") {
        model.to_owned()
    } else {
        format!("models/{model}")
    }
}

/// The first 32 hex digits of SHA-256 over the canonical model + content.
pub fn content_fingerprint(model: &str, content: &CachedContent) -> String {
    let doc = json!({
        "model": model_path(model),
        "system": content.system_instruction,
        "contents": content.contents,
    });
    let mut text = String::new();
    canonical(&doc, &mut text);
    let mut hex = sha256_hex(&[text.as_bytes()]);
    hex.truncate(32);
    hex
}

/// The time left until an RFC 3339 expiry (zero if past).
fn parse_expiry(text: &str) -> Option<Duration> {
    crate::time::parse_rfc3339(text).map(|at| crate::time::until(at, std::time::SystemTime::now()))
}

/// The status Gemini answers for a cache that is not there: 404, or 403
/// ("CachedContent not found (or permission denied)"), which is also its
/// answer to other permission problems.
fn may_be_gone(e: &CallError) -> bool {
    matches!(e.status(), Some(403 | 404))
}

impl GeminiCachedModel {
    /// A cached model over `model` (which must have no system instruction:
    /// put it in `content`). Errors: a renewal buffer not below the TTL, a
    /// system instruction on `model`, tags too long for a display name.
    /// Warns when the TTL or the buffer is under 60 s.
    pub fn new(
        model: GeminiModel,
        content: CachedContent,
        options: CacheOptions,
    ) -> Result<Self, Error> {
        if options.renewal_buffer >= options.ttl {
            return Err(Error::config(format!(
                "the cache renewal buffer ({:?}) must be shorter than its TTL ({:?})",
                options.renewal_buffer, options.ttl
            )));
        }
        if options.ttl < Duration::from_secs(1) {
            return Err(Error::config("the cache TTL must be at least 1 s"));
        }
        if model.config().system_instruction.is_some() {
            return Err(Error::config(
                "a cached Gemini model takes its system instruction from the cached content, not from the model",
            ));
        }
        if options.tags.contains_key(CONTENT_TAG) {
            return Err(Error::config(format!(
                "the cache tag '{CONTENT_TAG}' is reserved"
            )));
        }
        if options.ttl < Duration::from_secs(60) {
            tracing::warn!(ttl = ?options.ttl, "a Gemini cache TTL under 60 s expires between calls; caching may cost more than it saves");
        }
        if options.renewal_buffer < Duration::from_secs(60) {
            tracing::warn!(buffer = ?options.renewal_buffer, "a Gemini cache renewal buffer under 60 s risks calls against an expired cache");
        }
        let mut tags: BTreeMap<String, String> = options.tags.clone();
        tags.insert(
            CONTENT_TAG.into(),
            content_fingerprint(&model.config().model, &content),
        );
        let display_name = format!("{TAG_PREFIX}{}", json!(tags));
        if display_name.chars().count() > MAX_DISPLAY_NAME {
            return Err(Error::config(format!(
                "cache tags are too long: the display name would have {} characters (at most {MAX_DISPLAY_NAME})",
                display_name.chars().count()
            )));
        }
        Ok(Self {
            inner: model,
            content,
            options,
            display_name,
            tags,
            state: Mutex::new(State::default()),
        })
    }

    /// The display name that tags this model's caches.
    pub fn display_name(&self) -> &str {
        &self.display_name
    }

    /// The cache in use (`cachedContents/…`), if prepared.
    pub async fn cache_name(&self) -> Option<String> {
        self.state
            .lock()
            .await
            .live
            .as_ref()
            .map(|l| l.name.clone())
    }

    /// The underlying model.
    pub fn model(&self) -> &GeminiModel {
        &self.inner
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, CallError> {
        let (status, h, bytes) = self
            .inner
            .endpoint()
            .request(method, &format!("v1beta/{path}"), body)
            .await?;
        parse_body(status, &h, &bytes)
    }

    /// Does `c` (a listed cache) belong to this model and content, with
    /// every tag we ask for?
    fn matches(&self, c: &Value) -> bool {
        let model_ok = c.get("model").and_then(Value::as_str)
            == Some(model_path(&self.inner.config().model).as_str());
        let Some(tags) = c
            .get("displayName")
            .and_then(Value::as_str)
            .and_then(|d| d.strip_prefix(TAG_PREFIX))
            .and_then(|t| serde_json::from_str::<BTreeMap<String, Value>>(t).ok())
        else {
            return false;
        };
        model_ok
            && self
                .tags
                .iter()
                .all(|(k, v)| tags.get(k).and_then(Value::as_str) == Some(v.as_str()))
    }

    /// Adopts a matching live cache that is not about to expire, or creates
    /// one. Runs under the state lock.
    async fn find_or_create(&self, st: &mut State, skip: Option<&str>) -> Result<(), CallError> {
        let mut best: Option<(String, Duration)> = None;
        let mut page: Option<String> = None;
        for _ in 0..100 {
            let path = match &page {
                Some(t) => format!("cachedContents?pageSize=100&pageToken={t}"),
                None => "cachedContents?pageSize=100".to_owned(),
            };
            let listed = self.call(reqwest::Method::GET, &path, None).await?;
            for c in listed
                .get("cachedContents")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let Some(name) = c.get("name").and_then(Value::as_str) else {
                    continue;
                };
                if Some(name) == skip || !self.matches(c) {
                    continue;
                }
                // Unknown expiry counts as expiring now.
                let left = c
                    .get("expireTime")
                    .and_then(Value::as_str)
                    .and_then(parse_expiry)
                    .unwrap_or(Duration::ZERO);
                if left > self.options.renewal_buffer && best.as_ref().is_none_or(|b| left > b.1) {
                    best = Some((name.to_owned(), left));
                }
            }
            page = listed
                .get("nextPageToken")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
                .map(str::to_owned);
            if page.is_none() {
                break;
            }
        }
        let (name, left) = match best {
            Some(found) => {
                tracing::debug!(cache = %found.0, "adopting an existing Gemini cache");
                found
            }
            None => self.create().await?,
        };
        st.generation += 1;
        st.live = Some(Live {
            name,
            expires: Instant::now() + left,
            generation: st.generation,
        });
        Ok(())
    }

    async fn create(&self) -> Result<(String, Duration), CallError> {
        let started = Instant::now();
        let mut body = json!({
            "model": model_path(&self.inner.config().model),
            "contents": self.content.contents,
            "ttl": format!("{}s", self.options.ttl.as_secs()),
            "displayName": self.display_name,
        });
        if let Some(s) = &self.content.system_instruction {
            body["systemInstruction"] = json!({"parts": [{"text": s}]});
        }
        let made = self
            .call(reqwest::Method::POST, "cachedContents", Some(&body))
            .await?;
        let name = made
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                CallError::new(
                    ErrorCategory::ProviderResponseError,
                    "the created cache has no 'name'",
                )
            })?
            .to_owned();
        tracing::info!(cache = %name, ttl = ?self.options.ttl, "created a Gemini context cache");
        Ok((name, self.expiry_left(&made, started)))
    }

    /// Time left on a cache the provider just returned: its `expireTime`,
    /// but never more than the TTL from when we asked.
    fn expiry_left(&self, resource: &Value, asked: Instant) -> Duration {
        let by_ttl = self.options.ttl.saturating_sub(asked.elapsed());
        resource
            .get("expireTime")
            .and_then(Value::as_str)
            .and_then(parse_expiry)
            .map_or(by_ttl, |d| d.min(by_ttl))
    }

    /// The cache to use now: prepared, renewed or replaced as needed.
    async fn current(&self) -> Result<Live, CallError> {
        let mut st = self.state.lock().await;
        let Some(live) = st.live.clone() else {
            self.find_or_create(&mut st, None).await?;
            return live_of(&st);
        };
        let left = live.expires.saturating_duration_since(Instant::now());
        if left.is_zero() {
            tracing::info!(cache = %live.name, "the Gemini cache expired; replacing it");
            self.find_or_create(&mut st, Some(&live.name)).await?;
        } else if self.options.auto_renew && left <= self.options.renewal_buffer {
            let asked = Instant::now();
            let body = json!({"ttl": format!("{}s", self.options.ttl.as_secs())});
            let path = format!("{}?updateMask=ttl", live.name);
            match self.call(reqwest::Method::PATCH, &path, Some(&body)).await {
                Ok(updated) => {
                    let left = self.expiry_left(&updated, asked);
                    if let Some(l) = st.live.as_mut() {
                        l.expires = Instant::now() + left;
                    }
                }
                Err(e) => {
                    tracing::warn!(cache = %live.name, error = %e, "renewing the Gemini cache failed; finding or creating another");
                    self.find_or_create(&mut st, Some(&live.name)).await?;
                }
            }
        }
        live_of(&st)
    }

    /// One replacement for a cache the provider says is gone; callers that
    /// saw the same failure share it.
    async fn replace(&self, failed: &Live) -> Result<Live, CallError> {
        let mut st = self.state.lock().await;
        if st.live.as_ref().map(|l| l.generation) == Some(failed.generation) {
            tracing::warn!(cache = %failed.name, "the Gemini cache is gone; creating a replacement");
            self.find_or_create(&mut st, Some(&failed.name)).await?;
        }
        live_of(&st)
    }

    /// Whether the cache `name` is gone, asked of the provider: a 403 or
    /// 404 to a call naming a cache may be a missing cache or a plain
    /// permission problem, and only a lookup tells them apart.
    async fn is_gone(&self, name: &str) -> bool {
        match self.call(reqwest::Method::GET, name, None).await {
            Ok(_) => false,
            Err(e) => may_be_gone(&e),
        }
    }

    /// Deletes the cache in use. Safe to call concurrently: one provider
    /// delete; later calls find nothing to delete. A later `generate`
    /// prepares a new cache.
    pub async fn delete_cache(&self) -> Result<(), CallError> {
        let mut st = self.state.lock().await;
        let Some(live) = st.live.take() else {
            return Ok(());
        };
        st.generation += 1;
        match self.call(reqwest::Method::DELETE, &live.name, None).await {
            Ok(_) => Ok(()),
            Err(e) if may_be_gone(&e) && self.is_gone(&live.name).await => Ok(()),
            Err(e) => {
                st.live = Some(live);
                Err(e)
            }
        }
    }
}

fn live_of(st: &State) -> Result<Live, CallError> {
    st.live.clone().ok_or_else(|| {
        CallError::new(
            ErrorCategory::LogicError,
            "the Gemini cache was deleted while calls were running",
        )
    })
}

impl Model for GeminiCachedModel {
    async fn generate(&self, request: &LlmRequest) -> Result<LlmResponse, CallError> {
        let per_call_system = request.system.is_some()
            || request
                .prompt
                .as_ref()
                .is_some_and(|p| p.system().is_some());
        if per_call_system {
            return Err(CallError::new(
                ErrorCategory::LogicError,
                "a cached Gemini model cannot take a per-call system instruction: put it in the cached content",
            )
            .with_retryable(false));
        }
        let staged = with_parts(request, self.inner.parts())?;
        let mut live = self.current().await?;
        let mut retried = false;
        loop {
            let body = staged
                .body(&self.inner.request_body(&staged.request, Some(&live.name))?)
                .await?;
            match self.inner.send(body, request).await {
                Err(e) if !retried && may_be_gone(&e) && self.is_gone(&live.name).await => {
                    live = self.replace(&live).await?;
                    retried = true;
                }
                other => return other,
            }
        }
    }

    async fn prepare(&self) -> Result<(), CallError> {
        let mut st = self.state.lock().await;
        if st.live.is_none() {
            self.find_or_create(&mut st, None).await?;
        }
        Ok(())
    }

    /// Leaves the cache alive for the next run (see
    /// [`delete_cache`](GeminiCachedModel::delete_cache)).
    async fn cleanup(&self) {}

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn quota_scope(&self) -> Option<String> {
        self.inner.quota_scope()
    }

    fn schema_dialect(&self) -> SchemaDialect {
        SchemaDialect::Gemini
    }

    fn part_policy(&self) -> &PartPolicy {
        self.inner.parts()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_ignore_key_order() {
        let a =
            CachedContent::new().with_content(json!({"role": "user", "parts": [{"text": "x"}]}));
        let b =
            CachedContent::new().with_content(json!({"parts": [{"text": "x"}], "role": "user"}));
        assert_eq!(
            content_fingerprint("gemini-2.0-flash", &a),
            content_fingerprint("models/gemini-2.0-flash", &b)
        );
        let c = CachedContent::new().with_text(Role::User, "y");
        assert_ne!(content_fingerprint("m", &a), content_fingerprint("m", &c));
        assert_eq!(content_fingerprint("m", &a).len(), 32);
    }

    #[test]
    fn expiry_times_parse() {
        assert_eq!(parse_expiry("2001-01-01T00:00:00Z"), Some(Duration::ZERO));
        let far = parse_expiry("2999-01-01T00:00:00.5Z").unwrap();
        assert!(far > Duration::from_secs(900 * 365 * 86_400));
        assert_eq!(parse_expiry("soon"), None);
    }
}
