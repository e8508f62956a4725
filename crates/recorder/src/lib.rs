//! The recording service (SPEC §5): validated points go into sharded in-memory accumulators,
//! one aggregate per series per flush window, and a background task writes them to the store.
//!
//! The hot path never waits for the database: it validates, takes a shard lock for a hash-map
//! update and returns. Memory is bounded; past the bound points are dropped and counted.
//! Accounting is exact: offered = accepted + rejected (by reason) + dropped (by reason).
//!
//! Invariants:
//! - A point counted as accepted is written by a later flush, or reported by `shutdown` as
//!   unwritten; a failed flush keeps its rows and retries with backoff.
//! - The tenant of a user point comes from the host's call, never from tags.

mod accounting;
mod bridge;
mod config;
mod exposition;
mod quota;
mod series;
mod service;

pub use accounting::{Accounting, DropReason, TypeAccounting};
pub use bridge::MetricsBridge;
pub use config::{system_clock, Clock, RecorderConfig, RecorderSettings};
pub use exposition::ExposedSeries;
pub use service::{
    Accepted, BatchPoint, BatchReport, MetricsService, RecorderError, Rejected, ShutdownReport,
};
