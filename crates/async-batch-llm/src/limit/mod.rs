//! Limits shared by every call in a quota scope: the coordinated cooldown
//! ([`cooldown`]), RPM/TPM admission ([`admission`]), the concurrency window
//! with its slow start and adaptive concurrency ([`window`]), sends spread
//! over the round trip while no limit is known ([`spacing`]), the judgement
//! of 429s as quota or noise ([`signal`]), the limits providers report
//! ([`reported`]) and the last minute of traffic ([`recent`]), tied
//! together by the [`Scope`] ([`scope`]). Processes on one quota share a
//! scope's cooldown and window through a store ([`shared`]; Redis in
//! [`redis`]). A scope is a name, not an object:
//! two strategies whose models resolve to the same provider, base URL, key
//! and model share one.

mod admission;
mod cooldown;
mod estimate;
mod recent;
#[cfg(feature = "redis")]
mod redis;
pub(crate) mod reported;
mod scope;
mod settle;
mod shared;
mod signal;
mod spacing;
mod window;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

pub use crate::fingerprint::key_fingerprint;
pub use admission::{Admission, AdmissionStats, RateLimits, Reservation};
pub use cooldown::{Cooldown, CooldownOutcome, CooldownPolicy, CooldownTime};
#[cfg(feature = "tiktoken")]
pub use estimate::TiktokenEstimator;
pub use estimate::{CharEstimator, EstimateError, TokenEstimator};

#[cfg(feature = "redis")]
pub use redis::RedisLimits;
pub use reported::{ReportedLimit, ReportedLimits};
pub use scope::{
    Attempt, AttemptEnd, LimitSource, LimitsInForce, Scope, ScopeChange, SharedStatus,
};
pub use shared::{
    Grant, RETRY_UNREACHABLE, Reserved, SharedError, SharedFallback, SharedLimits,
    SharedLimitsHandle, SharedQuota, SharedScope, SharedTicket, SharedWait,
};
pub use signal::{Outcome, Signals, Verdict};
pub use window::{Window, WindowPermit, WindowView};

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
#[derive(Debug, Clone, PartialEq)]
pub struct ScopeSettings {
    /// Cooldown lengths.
    pub cooldown: CooldownPolicy,
    /// Most calls in flight at once in this scope (a provider's concurrency
    /// limit, separate from the worker count). `None` means no gate.
    pub max_concurrency: Option<usize>,
    /// Requests and tokens per minute.
    pub limits: RateLimits,
    /// Adaptive concurrency while no limit is known (on by default).
    pub adaptive: bool,
    /// Limits shared with other processes (`None`: this process alone).
    pub shared: Option<SharedLimitsHandle>,
    /// What admission does while the shared store is away.
    pub shared_fallback: SharedFallback,
}

impl Default for ScopeSettings {
    fn default() -> Self {
        Self {
            cooldown: CooldownPolicy::default(),
            max_concurrency: None,
            limits: RateLimits::default(),
            adaptive: true,
            shared: None,
            shared_fallback: SharedFallback::Pause,
        }
    }
}

/// Scopes by name. Runs that share a registry share cooldowns and limits.
///
/// Every [`BatchConfig`](crate::BatchConfig) gets a registry of its own by
/// default, so a run never inherits another's scopes by accident. Sharing
/// is a choice: give two runs or pools the same registry (a clone shares
/// it), or use [`ScopeRegistry::global`]. In a shared registry a scope keeps
/// the settings it was created with; asking for it with other settings is an
/// error, never a silent mismatch.
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

    /// The scope named `name`, created with `settings` if new. An error
    /// when the scope exists with other settings (another run's rate
    /// limits or cooldown would silently apply to this one).
    pub fn scope(
        &self,
        name: &str,
        settings: &ScopeSettings,
    ) -> Result<Arc<Scope>, crate::error::Error> {
        let mut map = self
            .scopes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(s) = map.get(name) {
            if s.settings() != settings {
                return Err(crate::error::Error::config(format!(
                    "quota scope {name:?} is already in use with other settings ({:?}; asked for {:?}): give this run its own ScopeRegistry, or the same settings",
                    s.settings(),
                    settings
                )));
            }
            return Ok(Arc::clone(s));
        }
        let s = Arc::new(Scope::new(name, settings));
        map.insert(name.to_owned(), Arc::clone(&s));
        Ok(s)
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
        let s1 = reg.scope(&a, &ScopeSettings::default()).unwrap();
        let s2 = reg.scope(&b, &ScopeSettings::default()).unwrap();
        assert!(Arc::ptr_eq(&s1, &s2));
        // The same scope asked for with other settings: an error.
        let other = ScopeSettings {
            limits: RateLimits {
                rpm: Some(60.0),
                ..RateLimits::default()
            },
            ..ScopeSettings::default()
        };
        let e = reg.scope(&a, &other).unwrap_err().to_string();
        assert!(e.contains("other settings"), "{e}");
    }
}
