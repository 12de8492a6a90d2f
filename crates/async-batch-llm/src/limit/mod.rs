//! Limits shared by every call in a quota scope: the coordinated cooldown and
//! a concurrency gate. A scope is a name, not an object: two strategies whose
//! models resolve to the same provider, base URL, key and model share one.

mod admission;
mod cooldown;
mod estimate;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use crate::fingerprint::key_fingerprint;
pub use admission::{Admission, AdmissionError, AdmissionStats, RateLimits, Reservation};
pub use cooldown::{Cooldown, CooldownOutcome, CooldownPolicy};
#[cfg(feature = "tiktoken")]
pub use estimate::TiktokenEstimator;
pub use estimate::{CharEstimator, TokenEstimator};

/// The default quota scope name: provider, base URL (without a trailing
/// slash), key fingerprint and model. Two clients on the same key and model
/// get the same name and so share one cooldown and one set of limits.
pub fn default_scope_name(provider: &str, base_url: &str, api_key: &str, model: &str) -> String {
    format!(
        "{provider}|{}|key:{}|{model}",
        base_url.trim_end_matches('/'),
        key_fingerprint(api_key)
    )
}

/// Settings of a scope, fixed when the scope is first used.
#[derive(Debug, Clone, Default)]
pub struct ScopeSettings {
    /// Cooldown lengths.
    pub cooldown: CooldownPolicy,
    /// Most calls in flight at once in this scope (a provider's concurrency
    /// limit, separate from the worker count). `None` means no gate.
    pub max_concurrency: Option<usize>,
    /// Requests and tokens per minute.
    pub limits: RateLimits,
}

/// The shared state of one quota scope.
#[derive(Debug)]
pub struct Scope {
    name: String,
    cooldown: Cooldown,
    gate: Option<Arc<Semaphore>>,
    admission: Option<Admission>,
}

impl Scope {
    /// A fresh scope.
    pub fn new(name: impl Into<String>, settings: &ScopeSettings) -> Self {
        Self {
            name: name.into(),
            cooldown: Cooldown::new(settings.cooldown),
            gate: settings
                .max_concurrency
                .map(|n| Arc::new(Semaphore::new(n.max(1)))),
            admission: Admission::new(settings.limits),
        }
    }

    /// The scope's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The scope's cooldown.
    pub fn cooldown(&self) -> &Cooldown {
        &self.cooldown
    }

    /// The scope's RPM/TPM admission, when it has limits.
    pub fn admission(&self) -> Option<&Admission> {
        self.admission.as_ref()
    }

    /// Takes a concurrency slot (immediately when the scope has no gate).
    pub(crate) async fn acquire_slot(&self) -> Option<OwnedSemaphorePermit> {
        match &self.gate {
            None => None,
            Some(g) => Arc::clone(g).acquire_owned().await.ok(),
        }
    }
}

/// Scopes by name. Runs that share a registry share cooldowns and limits;
/// [`ScopeRegistry::global`] is the process-wide default.
#[derive(Debug, Clone, Default)]
pub struct ScopeRegistry {
    scopes: Arc<Mutex<HashMap<String, Arc<Scope>>>>,
}

impl ScopeRegistry {
    /// An empty registry, isolated from every other.
    pub fn new() -> Self {
        Self::default()
    }

    /// The process-wide registry.
    pub fn global() -> Self {
        static GLOBAL: OnceLock<ScopeRegistry> = OnceLock::new();
        GLOBAL.get_or_init(ScopeRegistry::new).clone()
    }

    /// The scope named `name`, created with `settings` if new.
    pub fn scope(&self, name: &str, settings: &ScopeSettings) -> Arc<Scope> {
        let mut map = self
            .scopes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(s) = map.get(name) {
            return Arc::clone(s);
        }
        let s = Arc::new(Scope::new(name, settings));
        map.insert(name.to_owned(), Arc::clone(&s));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_names_share_by_key_and_model_and_hide_the_key() {
        let a = default_scope_name(
            "openai",
            "https://api.openai.com/v1/",
            "sk-secret-1",
            "gpt-4o-mini",
        );
        let b = default_scope_name(
            "openai",
            "https://api.openai.com/v1",
            "sk-secret-1",
            "gpt-4o-mini",
        );
        let c = default_scope_name(
            "openai",
            "https://api.openai.com/v1",
            "sk-secret-2",
            "gpt-4o-mini",
        );
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(!a.contains("secret"));
        let reg = ScopeRegistry::new();
        let s1 = reg.scope(&a, &ScopeSettings::default());
        let s2 = reg.scope(&b, &ScopeSettings::default());
        assert!(Arc::ptr_eq(&s1, &s2));
    }
}
