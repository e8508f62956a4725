//! Sandboxed Lua 5.4 engines and their pool (SPEC §6).
//!
//! Tenants' scripts run on a deadpool pool of [`Engine`]s. Each engine is a Lua state whose
//! globals are wiped after a prelude (`lua/prelude.lua`) has built a read-only base
//! environment; every execution gets a fresh environment table on top of it, so nothing a
//! script sets survives it. Limits (time via an instruction hook on every coroutine, memory via
//! the allocator, pattern complexity) end an execution with a typed [`ScriptError`], and an
//! engine that hit one is discarded, never reused.
//!
//! `helpers.metrics` validates each distinct name/tag set once per engine (asking Rust, then
//! caching the verdict in a Lua tree) and pre-aggregates per execution: its three functions are
//! Lua C closures that walk the tree and add into Rust-side aggregates without an mlua
//! crossing or an allocation; the host drains them once at the end and hands them to a
//! [`MetricsSink`]. The engine knows nothing of SQL.

mod clock;
mod config;
mod convert;
mod engine;
mod error;
mod hot;
mod pool;
mod script;
mod sink;

pub use clock::Clock;
pub use config::{EngineSettings, PoolSettings};
pub use engine::{Engine, Execution, MetricsReport, Timings};
pub use error::{DiscardReason, PoolError, ScriptError};
pub use pool::{EnginePool, PoolStatus, PooledEngine};
pub use script::Script;
pub use sink::{CollectingSink, MetricsSink};

/// The Lua side of the sandbox and of `helpers.metrics`.
pub const PRELUDE: &str = include_str!("../../../lua/prelude.lua");
