//! Sandboxed Lua 5.4 engines and their pool, under the limits of docs/limits.md.
//!
//! Tenants' scripts run on a pool of [`Engine`]s, each execution on a blocking thread that
//! owns its engine while it runs (never on an async worker). Each engine is a Lua state whose
//! globals are wiped after a prelude (`lua/prelude.lua`) has built a read-only base
//! environment; every execution gets a fresh environment table on top of it, so nothing a
//! script sets survives it. Limits end an execution with a typed [`ScriptError`] and cannot be
//! caught by the script: time by a watchdog thread that interrupts the running state at its
//! deadline, memory by the engine's allocator, stack overflows by a probe in the guarded
//! `pcall`/`xpcall`/`coroutine.resume`; C library functions are bounded before they run. An
//! engine that hit a limit is discarded, never reused; one stuck past its limit and a grace
//! period is abandoned and replaced.
//!
//! `helpers.metrics` validates each distinct name/tag set once per engine (asking Rust, then
//! caching the verdict in a Lua tree) and pre-aggregates per execution: its three functions are
//! Lua C closures that walk the tree and add into Rust-side aggregates without an mlua
//! crossing or an allocation; the host drains them once at the end and hands them to a
//! [`MetricsSink`]. The engine knows nothing of SQL.

#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

mod budget;
mod clock;
mod config;
mod convert;
mod engine;
mod error;
mod guard;
mod host;
mod hot;
mod pool;
mod queue;
mod runner;
mod script;
mod watchdog;

pub use budget::{Admission, BudgetSpent, TenantEngineUsage};
pub use clock::Clock;
pub use config::{EngineSettings, PoolSettings};
pub use engine::{
    canonical_number, printable, CacheStats, Engine, Execution, MetricsReport, Timings,
};
pub use error::{DiscardReason, PoolError, ScriptError};
pub use luametrics_sink::{BatchPoint, BatchReport, CollectingSink, MetricsSink, Warning};
pub use pool::{EnginePool, Job, PoolStatus, PooledEngine, Ran};
pub use script::{read_bytes_bounded, read_text_bounded, Script, MAX_SCRIPT_BYTES};

/// The Lua side of the sandbox and of `helpers.metrics`.
pub const PRELUDE: &str = include_str!("../../../lua/prelude.lua");
