//! How a run ended: [`TerminationReason`] and [`Termination`].

use serde::{Deserialize, Serialize};

use crate::error::ErrorCategory;

/// Why a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TerminationReason {
    /// Every accepted item was processed.
    Completed,
    /// The batch deadline passed.
    BatchDeadline,
    /// A token or cost budget was spent.
    BudgetExceeded,
    /// An item failed for good with a fail-fast category.
    FailFast,
    /// The run was stopped by its caller (or the result stream was dropped).
    Aborted,
    /// A checkpoint write failed; what was recorded before it is kept.
    CheckpointFailed,
}

impl TerminationReason {
    /// The stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::BatchDeadline => "batch_deadline",
            Self::BudgetExceeded => "budget_exceeded",
            Self::FailFast => "fail_fast",
            Self::Aborted => "aborted",
            Self::CheckpointFailed => "checkpoint_failed",
        }
    }

    /// The category given to items the stop prevented from finishing.
    pub fn item_category(self) -> ErrorCategory {
        match self {
            Self::BatchDeadline => ErrorCategory::BatchDeadline,
            Self::BudgetExceeded => ErrorCategory::BudgetExceeded,
            Self::Completed | Self::FailFast | Self::Aborted | Self::CheckpointFailed => {
                ErrorCategory::Aborted
            }
        }
    }
}

impl std::fmt::Display for TerminationReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a run ended, with the item and category that triggered a stop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Termination {
    /// Why.
    pub reason: TerminationReason,
    /// The item that triggered the stop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item_id: Option<String>,
    /// The category that triggered the stop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<ErrorCategory>,
    /// More detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Termination {
    /// A termination with only a reason.
    pub fn new(reason: TerminationReason) -> Self {
        Self {
            reason,
            item_id: None,
            category: None,
            message: None,
        }
    }

    /// The normal end.
    pub fn completed() -> Self {
        Self::new(TerminationReason::Completed)
    }
}
