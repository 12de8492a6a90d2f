//! The engine: one per-item pipeline (`pipeline.rs`) and the hosts that drive
//! it: [`process_prompts`], [`process_stream`], [`call`]/[`call_result`] and
//! [`CallPool`].

mod admitted;
mod call;
mod config;
mod driver;
mod pipeline;
mod pool;
mod prepare;
mod publish;
mod resume;
mod stream;

pub use call::{call, call_result};
pub use config::{
    BatchConfig, Budget, MAX_CONCURRENCY, MAX_RPM, MIN_RPM, RetryPolicy, StartupRamp, StopMode,
};
pub use pool::{CallPool, PoolError, PoolSettings};
pub use stream::{
    MiddlewareList, ResultStream, RunExtras, StopHandle, process_prompts, process_prompts_with,
    process_stream, process_stream_with,
};
