use crate::Clock;
use serde::{Deserialize, Serialize};

/// Per-engine limits and behaviour (the `[engine]` table of `luametrics.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineSettings {
    /// Wall-time limit of one execution.
    pub time_limit_ms: u64,
    /// Lua heap limit of one engine.
    pub memory_limit_bytes: usize,
    /// The time limit is checked every this many VM instructions.
    pub hook_instructions: u32,
    /// Rejected metric points raise Lua errors instead of returning `false, reason`.
    pub strict: bool,
    /// Values (tables, strings, numbers...) a script's result may hold.
    pub max_result_nodes: usize,
    /// Nesting depth of a script's result and of an event.
    pub max_depth: usize,
    /// `print` lines kept per execution.
    pub max_log_lines: usize,
    /// Compiled scripts kept per engine.
    pub compile_cache_size: usize,
    /// Worst-case steps a pattern match may take (subject length ^ quantifiers).
    pub pattern_budget: f64,
    /// Distinct metric name/tag sets whose verdict an engine caches.
    pub max_verdicts: usize,
    /// An engine whose heap stays above this after a collection is discarded, not reused.
    pub recycle_memory_bytes: usize,
    /// What the time split is measured with: real time, or a ticking clock so tests of the
    /// split do not depend on the machine's speed. Not a setting of the file.
    #[serde(skip)]
    pub clock: Clock,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            time_limit_ms: 50,
            memory_limit_bytes: 16 * 1024 * 1024,
            hook_instructions: 1_000,
            strict: false,
            max_result_nodes: 10_000,
            max_depth: 32,
            max_log_lines: 64,
            compile_cache_size: 256,
            pattern_budget: 5e7,
            max_verdicts: 4_096,
            recycle_memory_bytes: 4 * 1024 * 1024,
            clock: Clock::real(),
        }
    }
}

/// Pool sizing (the `[pool]` table of `luametrics.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolSettings {
    /// Most engines alive at once.
    pub max_size: usize,
    /// How long a checkout waits for an engine before failing.
    pub wait_timeout_ms: u64,
    /// How often pool gauges and counters are recorded.
    pub sample_interval_ms: u64,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_size: 4,
            wait_timeout_ms: 5_000,
            sample_interval_ms: 1_000,
        }
    }
}
