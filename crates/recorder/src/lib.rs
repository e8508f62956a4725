//! The recording service: validated points go into sharded in-memory accumulators,
//! one aggregate per series per flush window, and a background task writes them to the store.
//!
//! The hot path never waits for the database: it validates, takes a shard lock for a hash-map
//! update and returns. Memory is bounded; past the bound points are dropped and counted.
//! Accounting is exact: offered = accepted + rejected (by reason) + dropped (by reason).
//!
//! Invariants:
//! - A point counted as accepted is written by a later flush, or counted as lost with its
//!   reason (`shutdown` past the deadline, `database_gone` when the file it was written to was
//!   deleted or replaced): accepted = stored + lost, exactly. A failed flush keeps its rows and
//!   retries with backoff.
//! - The accounting exported on `/metrics` is read from the counters themselves, not from
//!   stored points; the stored copies are recorded with reserved room under the memory bound
//!   and a counter's delta is marked reported only once it was taken in.
//! - Every database call runs off the async workers (the store sees to it), so recording and
//!   requests never wait for a flush, a lock or a full disk.
//! - The tenant of a user point comes from the host's call, never from tags.

#![deny(missing_docs)]

mod accounting;
mod bridge;
mod config;
mod exposition;
mod handle;
mod health;
mod quota;
mod series;
mod service;
mod sink;
mod tenants;

pub use accounting::{Accounting, DropReason, LostReason, TypeAccounting};
pub use bridge::MetricsBridge;
pub use config::{system_clock, Clock, InvalidSetting, RecorderConfig, RecorderSettings};
pub use exposition::ExposedSeries;
pub use handle::{Counter, Gauge, Histogram, SystemSeries};
pub use health::Health;
pub use service::{
    Accepted, MetricsService, RecorderError, Rejected, ShutdownReport, MAX_HOST_NAMES,
};
pub use tenants::{MetricTrouble, TenantPoints, MAX_NAMES as MAX_TENANT_TROUBLE_NAMES};
