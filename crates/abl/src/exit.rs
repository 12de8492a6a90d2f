//! How `abl` ends: its exit codes, and the usage error (exit code 2)
//! every check before a run returns.

// Exit codes.
/// Every item succeeded.
pub const OK: i32 = 0;
/// Some items failed.
pub const SOME_FAILED: i32 = 1;
/// Bad usage or input.
pub const USAGE: i32 = 2;
/// Stopped by a guardrail (deadline, budget, fail-fast).
pub const GUARDRAIL: i32 = 3;
/// Interrupted (Ctrl-C).
pub const INTERRUPTED: i32 = 130;
/// The reader of stdout went away (`abl run … | head`): the run
/// stopped, as a program killed by SIGPIPE would.
pub const PIPE: i32 = 141;

/// The exit code of a run that ended with `reason`, `failed` items, and
/// whether Ctrl-C stopped it.
pub fn of_run(reason: async_batch_llm::TerminationReason, failed: u64, interrupted: bool) -> i32 {
    use async_batch_llm::TerminationReason as R;
    match reason {
        _ if interrupted => INTERRUPTED,
        R::Completed if failed == 0 => OK,
        R::Completed => SOME_FAILED,
        R::Aborted => INTERRUPTED,
        _ => GUARDRAIL,
    }
}

/// A usage or input error: exit code 2, one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

#[cfg(test)]
mod tests {
    use super::*;
    use async_batch_llm::TerminationReason as R;

    #[test]
    fn exit_codes_of_runs() {
        assert_eq!(of_run(R::Completed, 0, false), OK);
        assert_eq!(of_run(R::Completed, 3, false), SOME_FAILED);
        assert_eq!(of_run(R::Completed, 0, true), INTERRUPTED);
        assert_eq!(of_run(R::Aborted, 0, false), INTERRUPTED);
        assert_eq!(of_run(R::BudgetExceeded, 0, false), GUARDRAIL);
        assert_eq!(of_run(R::FailFast, 1, false), GUARDRAIL);
    }
}
