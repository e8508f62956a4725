//! The recorder's settings (window, memory bound, shards, shutdown deadline...) and the clock
//! it reads, replaceable in tests so windows and eviction are deterministic.

use luametrics_model::{Catalog, TagPolicy};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Milliseconds since the Unix epoch; injectable so tests control windows.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    })
}

/// Recorder settings (the `[recorder]` table of `luametrics.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecorderSettings {
    /// Flush window in ms: one row per active series per window. 0 writes every point (raw mode).
    pub window_ms: u64,
    /// Upper bound of memory held by accumulators and unwritten rows, in bytes.
    pub max_memory_bytes: usize,
    /// Series idle this long are evicted from memory (their history stays stored).
    pub idle_eviction_ms: u64,
    /// Number of accumulator shards (lock striping).
    pub shards: usize,
    /// First retry delay after a failed flush.
    pub retry_initial_ms: u64,
    /// Longest retry delay.
    pub retry_max_ms: u64,
    /// Rows per flush transaction.
    pub max_rows_per_transaction: usize,
    /// The whole shutdown's deadline (drain, traces, final flush): past it, what is unwritten
    /// is counted as lost (reason `shutdown`) and reported.
    pub shutdown_timeout_ms: u64,
    /// Every this many ms the flusher checkpoints the write-ahead log into the database file
    /// and truncates it (0: only after writes recover from errors).
    pub checkpoint_interval_ms: u64,
    /// Share of `max_memory_bytes` held by accumulators and unwritten rows past which
    /// `/readyz` reports not ready.
    pub ready_memory_share: f64,
    /// Share of `max_memory_bytes` kept in reserve for tenants holding little, so one tenant,
    /// or a few tenant ids together, cannot crowd out the rest: once less than this share is
    /// free, a tenant holding more than its part of the reserve (an eighth of it) is refused
    /// (`memory_bound`). 1 lets one tenant take the whole bound.
    pub tenant_memory_share: f64,
    /// Keeps each tenant's ledger of accepted, overflowed, rejected and dropped points (what
    /// `/v1/tenant/usage` and the tenant dashboard read, recorded each window as
    /// `luametrics.tenant.points.count`); off, tenants see no point usage.
    pub tenant_usage: bool,
}

impl Default for RecorderSettings {
    fn default() -> Self {
        Self {
            window_ms: 10_000,
            max_memory_bytes: 64 * 1024 * 1024,
            idle_eviction_ms: 3_600_000,
            shards: 16,
            retry_initial_ms: 100,
            retry_max_ms: 5_000,
            max_rows_per_transaction: 20_000,
            shutdown_timeout_ms: 10_000,
            checkpoint_interval_ms: 60_000,
            ready_memory_share: 0.8,
            tenant_memory_share: 0.25,
            tenant_usage: true,
        }
    }
}

/// A [`RecorderSettings`] value out of its range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("recorder.{key} = {value}: expected {expected}")]
pub struct InvalidSetting {
    /// The setting (its key in the `[recorder]` table).
    pub key: &'static str,
    /// The value given.
    pub value: String,
    /// What it must be.
    pub expected: &'static str,
}

impl RecorderSettings {
    /// Checks what the types cannot say, so settings built in code meet the rules a
    /// configuration file does: `ready_memory_share = NaN` made `/readyz` answer 503 for good
    /// (NaN compares false with everything), and a negative share means nothing.
    /// [`crate::MetricsService::try_start`] and the runtime's configuration call it.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let shares = [
            (
                "ready_memory_share",
                self.ready_memory_share,
                (f64::MIN_POSITIVE, 1.0),
                "a share of the memory bound above 0 and at most 1",
            ),
            (
                "tenant_memory_share",
                self.tenant_memory_share,
                (0.0, f64::MAX),
                "a share of the memory bound from 0 (1 or more: no reserve)",
            ),
        ];
        for (key, value, (low, high), expected) in shares {
            if !(value >= low && value <= high) {
                return Err(InvalidSetting {
                    key,
                    value: value.to_string(),
                    expected,
                });
            }
        }
        if self.max_memory_bytes == 0 {
            return Err(InvalidSetting {
                key: "max_memory_bytes",
                value: "0".into(),
                expected: "a bound above 0 bytes (every point would be dropped)",
            });
        }
        Ok(())
    }
}

/// Everything a [`crate::MetricsService`] needs besides its store.
#[derive(Clone)]
pub struct RecorderConfig {
    /// Tunables.
    pub settings: RecorderSettings,
    /// Tag rules and per-tenant limits.
    pub policy: TagPolicy,
    /// Declared system metrics.
    pub catalog: Catalog,
    /// Time source.
    pub clock: Clock,
}

impl Default for RecorderConfig {
    fn default() -> Self {
        Self {
            settings: RecorderSettings::default(),
            policy: TagPolicy::default(),
            catalog: Catalog::builtin().clone(),
            clock: system_clock(),
        }
    }
}

impl std::fmt::Debug for RecorderConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecorderConfig")
            .field("settings", &self.settings)
            .field("limits", &self.policy.limits)
            .field("catalog_entries", &self.catalog.len())
            .finish()
    }
}
