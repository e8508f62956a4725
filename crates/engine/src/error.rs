//! Typed outcomes of what can go wrong: a script's error (each with a stable code, and whether
//! it poisons its engine), why an engine was discarded, and why the pool could not serve.

use serde::Serialize;

/// Why a script execution failed. Script failures are data (an [`crate::Execution`] carries
/// them with its timings), not host errors.
#[derive(Debug, Clone, PartialEq, Serialize, thiserror::Error)]
#[serde(tag = "code", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ScriptError {
    /// The script does not compile (or is not text).
    #[error("{script}:{}: syntax error: {message}", line.map_or("?".to_string(), |l| l.to_string()))]
    Syntax {
        /// Script id.
        script: String,
        /// Line of the error.
        line: Option<u32>,
        /// Lua's message.
        message: String,
    },
    /// The script raised an error.
    #[error("{script}:{}: {message}", line.map_or("?".to_string(), |l| l.to_string()))]
    Runtime {
        /// Script id.
        script: String,
        /// Line of the error, when Lua reported one.
        line: Option<u32>,
        /// Lua's message (first line, without traceback).
        message: String,
    },
    /// The time limit ended the execution.
    #[error("{script}: time limit of {limit_ms} ms exceeded")]
    Timeout {
        /// Script id.
        script: String,
        /// The limit.
        limit_ms: u64,
    },
    /// The engine's memory limit ended the execution.
    #[error("{script}: memory limit of {limit_bytes} bytes exceeded")]
    Memory {
        /// Script id.
        script: String,
        /// The limit.
        limit_bytes: usize,
    },
    /// Recursion went past Lua's stack limit.
    #[error("{script}: stack overflow (call depth limit)")]
    StackOverflow {
        /// Script id.
        script: String,
    },
    /// The returned value cannot be handed to the host.
    #[error("{script}: invalid result: {problem}")]
    InvalidResult {
        /// Script id.
        script: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The event or context could not be given to the script.
    #[error("invalid event: {problem}")]
    InvalidEvent {
        /// What is wrong with it.
        problem: String,
    },
    /// The host failed while running the script (a panic in a host function): the engine is
    /// written off, nothing of the execution is kept.
    #[error("{script}: internal error: {message}")]
    Internal {
        /// Script id.
        script: String,
        /// What failed.
        message: String,
    },
}

impl ScriptError {
    /// Stable code for APIs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            ScriptError::Syntax { .. } => "syntax_error",
            ScriptError::Runtime { .. } => "runtime_error",
            ScriptError::Timeout { .. } => "timeout",
            ScriptError::Memory { .. } => "memory_limit",
            ScriptError::StackOverflow { .. } => "stack_overflow",
            ScriptError::InvalidResult { .. } => "invalid_result",
            ScriptError::InvalidEvent { .. } => "invalid_event",
            ScriptError::Internal { .. } => "internal_error",
        }
    }

    /// Whether the engine that ran it must be discarded.
    pub fn poisons_engine(&self) -> Option<DiscardReason> {
        match self {
            ScriptError::Timeout { .. } => Some(DiscardReason::Timeout),
            ScriptError::Memory { .. } => Some(DiscardReason::Memory),
            ScriptError::StackOverflow { .. } => Some(DiscardReason::StackOverflow),
            ScriptError::Internal { .. } => Some(DiscardReason::Panic),
            _ => None,
        }
    }
}

/// Why an engine left the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DiscardReason {
    /// An execution hit the time limit.
    Timeout,
    /// An execution hit the memory limit.
    Memory,
    /// An execution overflowed the stack.
    StackOverflow,
    /// The heap stayed large after a collection.
    HeapTooLarge,
    /// The engine's state could not be reset.
    Broken,
    /// A host function panicked during an execution.
    Panic,
    /// An execution did not return within its time limit and grace: the engine was written
    /// off while still running and replaced.
    Abandoned,
}

impl DiscardReason {
    /// Every reason, for reporting.
    pub const ALL: [DiscardReason; 7] = [
        DiscardReason::Timeout,
        DiscardReason::Memory,
        DiscardReason::StackOverflow,
        DiscardReason::HeapTooLarge,
        DiscardReason::Broken,
        DiscardReason::Panic,
        DiscardReason::Abandoned,
    ];

    /// Stable code (the `reason` tag of `lua.engine.discarded.count`).
    pub fn as_str(self) -> &'static str {
        match self {
            DiscardReason::Timeout => "timeout",
            DiscardReason::Memory => "memory",
            DiscardReason::StackOverflow => "stack_overflow",
            DiscardReason::HeapTooLarge => "heap_too_large",
            DiscardReason::Broken => "broken",
            DiscardReason::Panic => "panic",
            DiscardReason::Abandoned => "abandoned",
        }
    }
}

/// Why no engine could be had.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// Every engine stayed busy past the wait timeout.
    #[error("no Lua engine became free within {waited_ms} ms (pool max size {max_size})")]
    Timeout {
        /// How long the checkout waited.
        waited_ms: u64,
        /// The pool's size.
        max_size: usize,
    },
    /// The tenant already had its most executions waiting for an engine.
    #[error("tenant `{tenant}` already has {limit} executions waiting for an engine")]
    QueueFull {
        /// The tenant refused.
        tenant: String,
        /// `pool.max_queued_per_tenant`.
        limit: usize,
    },
    /// The tenant used its engine-time budget; it may retry after `retry_after_ms`.
    #[error("tenant `{tenant}` used its engine-time budget; retry in {retry_after_ms} ms")]
    TenantBudget {
        /// The tenant refused.
        tenant: String,
        /// When its budget has room again.
        retry_after_ms: u64,
    },
    /// The pool's settings cannot work.
    #[error("invalid pool settings: {0}")]
    Settings(String),
    /// A new engine could not be built.
    #[error("cannot create a Lua engine: {0}")]
    Create(String),
    /// The pool was closed.
    #[error("the engine pool is closed")]
    Closed,
}

impl PoolError {
    /// The stable code an outcome or an HTTP error carries for this failure.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Timeout { .. } => "pool_timeout",
            Self::QueueFull { .. } => "queue_full",
            Self::TenantBudget { .. } => "tenant_budget",
            Self::Create(_) | Self::Closed => "engine_unavailable",
            Self::Settings(_) => "invalid_settings",
        }
    }
}
