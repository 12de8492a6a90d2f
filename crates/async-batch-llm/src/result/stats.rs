//! [`BatchStats`]: the totals of a run, fed one result at a time, so a
//! streaming consumer can keep them without holding the results.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::item::ItemResult;
use crate::error::ErrorCategory;
use crate::usage::TokenUsage;

/// Failures of one category.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CategoryStats {
    /// How many items failed with it.
    pub count: u64,
    /// Up to three example item ids.
    pub example_ids: Vec<String>,
}

/// Totals over a set of results. Fed one result at a time, so a streaming
/// consumer can keep it without holding the results.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BatchStats {
    /// Results seen.
    pub items: u64,
    /// Successes.
    pub succeeded: u64,
    /// Failures.
    pub failed: u64,
    /// Results replayed from a checkpoint.
    pub replayed: u64,
    /// Physical calls.
    pub tries: u64,
    /// Logical attempts.
    pub attempts: u64,
    /// Tries that repeated an attempt after a rate limit.
    pub rate_limit_retries: u64,
    /// Attempts beyond each item's first.
    pub other_retries: u64,
    /// Usage of the current run (billed failures included).
    pub usage: TokenUsage,
    /// Usage of replayed results, reported apart.
    pub replayed_usage: TokenUsage,
    /// Failures by category.
    pub failures: BTreeMap<ErrorCategory, CategoryStats>,
    /// Cooldowns started in the run's scope while it ran.
    pub cooldowns: u64,
    /// The time those cooldowns lasted, together.
    #[serde(with = "crate::time::duration_ms", rename = "cooldown_time_ms")]
    pub cooldown_time: std::time::Duration,
    /// The longest of them.
    #[serde(with = "crate::time::duration_ms", rename = "longest_cooldown_ms")]
    pub longest_cooldown: std::time::Duration,
    /// True for a dry run: usage and cost are projections, no call was made.
    pub dry_run: bool,
    /// RPM/TPM admission in the run's scope while it ran.
    pub admission: crate::limit::AdmissionStats,
    /// The limits the run's scope ran under at the end, and where they came
    /// from (flag, header, learned).
    pub limits: crate::limit::LimitsInForce,
}

impl BatchStats {
    /// Adds one result.
    pub fn add<T>(&mut self, r: &ItemResult<T>) {
        self.items += 1;
        if r.replayed {
            // Calls made by an earlier run: not this run's.
            self.replayed += 1;
            self.replayed_usage += r.usage;
        } else {
            self.usage += r.usage;
            self.tries += u64::from(r.tries);
            self.attempts += u64::from(r.attempts);
            self.rate_limit_retries += u64::from(r.tries.saturating_sub(r.attempts));
            self.other_retries += u64::from(r.attempts.saturating_sub(1));
        }
        match &r.outcome {
            Ok(_) => self.succeeded += 1,
            Err(e) => {
                self.failed += 1;
                let c = self.failures.entry(e.category).or_default();
                c.count += 1;
                if c.example_ids.len() < 3 {
                    c.example_ids.push(r.id.clone());
                }
            }
        }
    }
}
