//! Gemini `cachedContents` with real TTL expiry.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

/// One cached content.
#[derive(Debug, Clone)]
pub struct Cached {
    /// `cachedContents/…`.
    pub name: String,
    /// `models/…`.
    pub model: String,
    /// Free text; clients keep tags here.
    pub display_name: String,
    /// Tokens of the cached content.
    pub tokens: u64,
    created: SystemTime,
    updated: SystemTime,
    expires: SystemTime,
}

/// Parses a protobuf duration such as `"3600s"` or `"1.5s"`.
pub fn parse_ttl(s: &str) -> Option<Duration> {
    let n: f64 = s.strip_suffix('s')?.parse().ok()?;
    (n.is_finite() && n >= 0.0).then(|| Duration::from_secs_f64(n))
}

impl Cached {
    /// The resource as the API returns it.
    pub fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "model": self.model,
            "displayName": self.display_name,
            "createTime": crate::rfc3339::format(self.created),
            "updateTime": crate::rfc3339::format(self.updated),
            "expireTime": crate::rfc3339::format(self.expires),
            "usageMetadata": {"totalTokenCount": self.tokens},
        })
    }
}

/// The store.
#[derive(Default)]
pub struct CacheStore {
    items: Mutex<BTreeMap<String, Cached>>,
    next: Mutex<u64>,
}

impl CacheStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Cached>> {
        let mut items = self
            .items
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = SystemTime::now();
        items.retain(|_, c| c.expires > now);
        items
    }

    /// Creates a cache.
    pub fn create(&self, model: &str, display_name: &str, tokens: u64, ttl: Duration) -> Cached {
        let id = {
            let mut n = self
                .next
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *n += 1;
            *n
        };
        let now = SystemTime::now();
        let model = if model.starts_with("models/") {
            model.to_owned()
        } else {
            format!("models/{model}")
        };
        let c = Cached {
            name: format!("cachedContents/mock{id:06}"),
            model,
            display_name: display_name.to_owned(),
            tokens,
            created: now,
            updated: now,
            expires: now + ttl,
        };
        self.lock().insert(c.name.clone(), c.clone());
        c
    }

    /// A live cache by name.
    pub fn get(&self, name: &str) -> Option<Cached> {
        self.lock().get(name).cloned()
    }

    /// Every live cache.
    pub fn list(&self) -> Vec<Cached> {
        self.lock().values().cloned().collect()
    }

    /// Sets a new TTL from now.
    pub fn update_ttl(&self, name: &str, ttl: Duration) -> Option<Cached> {
        let mut items = self.lock();
        let c = items.get_mut(name)?;
        let now = SystemTime::now();
        c.updated = now;
        c.expires = now + ttl;
        Some(c.clone())
    }

    /// Deletes a cache; true if it was there.
    pub fn delete(&self, name: &str) -> bool {
        self.lock().remove(name).is_some()
    }

    /// Forgets everything.
    pub fn clear(&self) {
        self.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("3600s"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_ttl("3600"), None);
    }

    #[test]
    fn expiry_removes_caches() {
        let s = CacheStore::default();
        let c = s.create("gemini-2.0-flash", "tags", 100, Duration::from_millis(30));
        assert!(s.get(&c.name).is_some());
        std::thread::sleep(Duration::from_millis(40));
        assert!(s.get(&c.name).is_none());
        assert!(s.list().is_empty());
    }
}
