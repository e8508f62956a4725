//! Sandboxed Lua 5.4 engines and their pool (SPEC §6).
//!
//! Tenants' scripts run on a deadpool pool of [`Engine`]s. Each engine is a Lua state whose
//! globals are wiped after a prelude (`lua/prelude.lua`) has built a read-only base
//! environment; every execution gets a fresh environment table on top of it, so nothing a
//! script sets survives it. Limits (time via an instruction hook on every coroutine, memory via
//! the allocator, pattern complexity) end an execution with a typed [`ScriptError`], and an
//! engine that hit one is discarded, never reused.
//!
//! `helpers.metrics` is pure Lua on the hot path: it validates each distinct name/tag set once
//! per engine (asking Rust, then caching the verdict) and pre-aggregates per execution; the
//! host drains the buffer once at the end and hands it to a [`MetricsSink`]. The engine knows
//! nothing of SQL.

mod config;
mod convert;
mod engine;
mod error;
mod pool;
mod script;
mod sink;

pub use config::{EngineSettings, PoolSettings};
pub use engine::{Engine, Execution, MetricsReport, Timings};
pub use error::{DiscardReason, PoolError, ScriptError};
pub use pool::{EnginePool, PoolStatus, PooledEngine};
pub use script::Script;
pub use sink::{CollectingSink, MetricsSink};

/// The Lua side of the sandbox and of `helpers.metrics`.
pub const PRELUDE: &str = include_str!("../../../lua/prelude.lua");
