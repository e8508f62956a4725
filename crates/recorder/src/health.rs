//! What the flusher knows about the database's health, for `/readyz`, logs and operators.
//!
//! Every change of state (writes start failing, recover, the file goes away) is logged once
//! through `tracing`, with the error and the backlog; the readiness check reads the same state.

use serde::Serialize;

/// The recorder's view of its database and backlog (see [`crate::MetricsService::health`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Health {
    /// When writes started failing (ms since the epoch); `None` while they succeed.
    pub failing_since_ms: Option<i64>,
    /// The last write error, while writes fail.
    pub last_error: Option<String>,
    /// Sealed rows waiting to be written.
    pub backlog_rows: usize,
    /// Bytes held by accumulators and unwritten rows.
    pub memory_used: usize,
    /// The configured memory bound.
    pub memory_bound: usize,
    /// Share of the bound past which the service reports itself not ready.
    pub ready_memory_share: f64,
    /// When points were last dropped at the memory bound (ms since the epoch).
    pub last_memory_drop_ms: Option<i64>,
    /// `deleted` or `replaced` while the database file is not the one the service opened.
    pub database_file: Option<String>,
    /// The service's clock when this was taken.
    pub now_ms: i64,
}

/// Points dropped at the memory bound this recently keep the service not ready.
pub const MEMORY_DROP_HOLD_MS: i64 = 10_000;

impl Health {
    /// Why the service should not take traffic now, as (code, message) pairs; empty when ready.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some(fault) = &self.database_file {
            out.push((
                "database_gone",
                format!("the database file was {fault} while open; recreating it"),
            ));
        }
        if let Some(since) = self.failing_since_ms {
            out.push((
                "flush_failing",
                format!(
                    "writes have failed for {} ms ({} rows waiting): {}",
                    (self.now_ms - since).max(0),
                    self.backlog_rows,
                    self.last_error.as_deref().unwrap_or("unknown error")
                ),
            ));
        }
        let limit = (self.memory_bound as f64 * self.ready_memory_share) as usize;
        if self.memory_used > limit {
            out.push((
                "memory_pressure",
                format!(
                    "{} of {} bytes held (ready below {limit})",
                    self.memory_used, self.memory_bound
                ),
            ));
        }
        if let Some(at) = self.last_memory_drop_ms {
            if self.now_ms - at < MEMORY_DROP_HOLD_MS {
                out.push((
                    "memory_drops",
                    format!(
                        "points were dropped at the memory bound {} ms ago",
                        (self.now_ms - at).max(0)
                    ),
                ));
            }
        }
        out
    }

    /// Whether the service can take traffic without losing what it accepts.
    pub fn ready(&self) -> bool {
        self.problems().is_empty()
    }
}

/// Mutable state behind [`Health`], owned by the flusher.
#[derive(Debug, Default)]
pub(crate) struct State {
    pub failing_since_ms: Option<i64>,
    pub last_error: Option<String>,
    pub failures: u64,
    pub file_fault: Option<&'static str>,
}
