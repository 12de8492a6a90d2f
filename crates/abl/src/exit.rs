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

/// A usage or input error: exit code 2, one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}
