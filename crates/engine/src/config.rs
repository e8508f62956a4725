//! The engine's and the pool's settings, with defaults that hold on a fresh machine: the limits
//! every execution runs under (docs/limits.md) and how many engines a process keeps.

use crate::Clock;
use serde::{Deserialize, Serialize};

/// Per-engine limits and behaviour (the `[engine]` table of `luametrics.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineSettings {
    /// Wall-time limit of one execution.
    pub time_limit_ms: u64,
    /// Lua heap one execution may allocate above what its engine holds when it starts (at
    /// most `recycle_memory_bytes` after a collection), so what other tenants left cached on
    /// the engine never shrinks an execution's allowance.
    pub memory_limit_bytes: usize,
    /// The time limit is checked every this many VM instructions.
    pub hook_instructions: u32,
    /// Rejected metric points raise Lua errors instead of returning `false, reason`.
    pub strict: bool,
    /// Values (tables, strings, numbers...) a script's result may hold.
    pub max_result_nodes: usize,
    /// Bytes of text (strings and keys) a script's result may hold once copied out.
    pub max_result_bytes: usize,
    /// Nesting depth of a script's result and of an event.
    pub max_depth: usize,
    /// `print` lines kept per execution.
    pub max_log_lines: usize,
    /// Compiled scripts kept per engine.
    pub compile_cache_size: usize,
    /// Worst-case steps a pattern match may take (start positions x pattern length x subject
    /// length per quantifier or back-reference), so a match in C costs a fraction of the time
    /// limit.
    pub pattern_budget: f64,
    /// Largest string `string.rep` may build, and most repetitions it may run (an empty string
    /// repeated still costs a step each).
    pub max_string_bytes: usize,
    /// Most elements one C table function (`table.insert`/`remove` shifts, `move`, `concat`,
    /// `unpack`) may touch: each runs in C, where the time limit cannot interrupt it.
    pub max_table_elements: usize,
    /// Most elements `table.sort` may sort (n log n comparisons in C).
    pub max_sort_elements: usize,
    /// How long past its time limit an execution that does not return (stuck in a C function)
    /// is waited for before the pool writes its engine off and answers `timeout`.
    pub abandon_grace_ms: u64,
    /// Distinct metric name/tag sets whose verdict an engine caches per tenant (the engine
    /// holds at most twice this for all its tenants).
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
            max_result_bytes: 1024 * 1024,
            max_depth: 32,
            max_log_lines: 64,
            compile_cache_size: 256,
            pattern_budget: 2e7,
            max_string_bytes: 4 * 1024 * 1024,
            max_table_elements: 100_000,
            max_sort_elements: 20_000,
            abandon_grace_ms: 1_000,
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
    /// Abandoned executions still stuck on their threads that get a thread in their place
    /// (each holds a thread and a Lua state until its C call returns); past it `/readyz`
    /// reports the service not ready and further stuck executions keep their places, so the
    /// pool shrinks instead of the process growing.
    pub max_abandoned: usize,
    /// Executions one tenant may have waiting for an engine; past it the next is refused
    /// (`queue_full`) instead of lengthening everyone's wait.
    pub max_queued_per_tenant: usize,
    /// Engine milliseconds (script + helpers time) one tenant may use per second; past it
    /// the tenant's executions are refused (`tenant_budget`) until the budget refills.
    /// 0: no budget, and no per-tenant engine-time accounting (usage reports none).
    pub tenant_engine_ms_per_s: f64,
    /// Engine milliseconds one tenant may use at once after idling (the bucket's size).
    pub tenant_engine_burst_ms: f64,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_size: 4,
            wait_timeout_ms: 5_000,
            sample_interval_ms: 1_000,
            max_abandoned: 2,
            max_queued_per_tenant: 1_024,
            tenant_engine_ms_per_s: 1_000.0,
            tenant_engine_burst_ms: 2_000.0,
        }
    }
}
