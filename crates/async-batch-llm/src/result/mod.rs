//! Results: one [`ItemResult`] per accepted item ([`item`]), how a run ended
//! ([`termination`]), a whole run with its totals ([`batch`]) and its
//! summary ([`summary`]).

mod batch;
mod estimate;
mod item;
mod stats;
mod summary;
mod termination;

pub use batch::{BATCH_SCHEMA, BATCH_SCHEMA_VERSION, BatchResult};
pub use estimate::{DryRunEstimate, EstimateBound};
pub use item::{ItemError, ItemResult, ItemTiming, TryTiming};
pub use stats::{BatchStats, CategoryStats};
pub use summary::{Percentiles, RunSummary, SummaryCollector, SummaryRow};
pub use termination::{Termination, TerminationReason};

#[cfg(test)]
mod test_support {
    use std::time::Duration;

    use super::*;
    use crate::error::ErrorCategory;
    use crate::usage::TokenUsage;

    pub(super) fn result(
        id: &str,
        index: u64,
        outcome: Result<String, ItemError>,
    ) -> ItemResult<String> {
        ItemResult {
            id: id.into(),
            index,
            outcome,
            usage: TokenUsage::new(10, 5).with_cached_input(2),
            attempts: 2,
            tries: 3,
            timing: ItemTiming {
                started_at: None,
                total: Duration::from_micros(12_345),
                cooldown_wait: Duration::from_micros(1),
                admission_wait: Duration::from_micros(999_999),
                execution: Duration::from_micros(7_000_001),
                backoff: Duration::ZERO,
                tries: vec![TryTiming {
                    attempt: 1,
                    started_at: None,
                    cooldown_wait: Duration::from_micros(3),
                    admission_wait: Duration::ZERO,
                    execution: Duration::from_micros(123_456_789),
                    error: Some(ErrorCategory::RateLimit),
                }],
            },
            context: Some(serde_json::json!({"row": index})),
            replayed: index == 2,
        }
    }

    pub(super) fn batch() -> BatchResult<String> {
        let mut deadline = ItemError::new(ErrorCategory::ItemDeadline, "deadline");
        deadline.last_error = Some(Box::new(ItemError::new(ErrorCategory::ServerError, "500")));
        BatchResult::new(
            vec![
                result("b", 1, Ok("B".into())),
                result("a", 0, Err(deadline)),
                result("c", 2, Ok("C".into())),
            ],
            Termination::completed(),
            Duration::from_millis(1500),
        )
    }
}
