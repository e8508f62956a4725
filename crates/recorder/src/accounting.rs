//! Exact point accounting: accepted + rejected (by reason) + dropped (by reason) = offered, per
//! metric type, and points lost after acceptance counted by reason, so every point is
//! explained.

use luametrics_model::{MetricType, RejectReason};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Why a valid point was not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// The accumulators were at their memory bound.
    MemoryBound,
    /// The service was shutting down.
    ShuttingDown,
}

impl DropReason {
    const ALL: [DropReason; 2] = [DropReason::MemoryBound, DropReason::ShuttingDown];

    /// Stable snake_case code (the `reason` tag of `luametrics.points.dropped.count`).
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::MemoryBound => "memory_bound",
            DropReason::ShuttingDown => "shutting_down",
        }
    }
}

/// Why accepted points never reached the database (they were counted as accepted first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LostReason {
    /// Still unwritten when the shutdown deadline passed.
    Shutdown,
    /// Written into a database file that was then deleted or replaced under the service.
    DatabaseGone,
}

impl LostReason {
    const ALL: [LostReason; 2] = [LostReason::Shutdown, LostReason::DatabaseGone];

    /// Stable snake_case code (the `reason` tag of `luametrics.points.lost.count`).
    pub fn as_str(self) -> &'static str {
        match self {
            LostReason::Shutdown => "shutdown",
            LostReason::DatabaseGone => "database_gone",
        }
    }
}

#[derive(Default)]
pub(crate) struct TypeCounters {
    pub offered: AtomicU64,
    pub accepted: AtomicU64,
    pub rejected: [AtomicU64; RejectReason::ALL.len()],
    pub dropped: [AtomicU64; 2],
    pub lost: [AtomicU64; 2],
}

/// Exact point accounting, per metric type: offered = accepted + rejected + dropped.
#[derive(Default)]
pub(crate) struct Counters {
    pub system: TypeCounters,
    pub user: TypeCounters,
}

impl Counters {
    pub fn of(&self, t: MetricType) -> &TypeCounters {
        match t {
            MetricType::System => &self.system,
            MetricType::User => &self.user,
        }
    }

    pub fn reject(&self, t: MetricType, reason: RejectReason, n: u64) {
        // A valid point whose metric's names found no room is dropped at the bound, like a
        // point whose series found none: one count for one cause.
        if reason == RejectReason::MemoryBound {
            return self.drop_points(t, DropReason::MemoryBound, n);
        }
        let c = self.of(t);
        c.offered.fetch_add(n, Relaxed);
        c.rejected[reason.index()].fetch_add(n, Relaxed);
    }

    pub fn accept(&self, t: MetricType, n: u64) {
        let c = self.of(t);
        c.offered.fetch_add(n, Relaxed);
        c.accepted.fetch_add(n, Relaxed);
    }

    pub fn drop_points(&self, t: MetricType, reason: DropReason, n: u64) {
        let c = self.of(t);
        c.offered.fetch_add(n, Relaxed);
        c.dropped[reason as usize].fetch_add(n, Relaxed);
    }

    pub fn lose(&self, t: MetricType, reason: LostReason, n: u64) {
        self.of(t).lost[reason as usize].fetch_add(n, Relaxed);
    }

    pub fn snapshot(&self) -> Accounting {
        Accounting {
            system: snap(&self.system),
            user: snap(&self.user),
        }
    }
}

fn snap(c: &TypeCounters) -> TypeAccounting {
    TypeAccounting {
        offered: c.offered.load(Relaxed),
        accepted: c.accepted.load(Relaxed),
        rejected: RejectReason::ALL
            .iter()
            .filter_map(|r| {
                let n = c.rejected[r.index()].load(Relaxed);
                (n > 0).then(|| (r.as_str().to_string(), n))
            })
            .collect(),
        dropped: DropReason::ALL
            .iter()
            .filter_map(|r| {
                let n = c.dropped[*r as usize].load(Relaxed);
                (n > 0).then(|| (r.as_str().to_string(), n))
            })
            .collect(),
        lost: LostReason::ALL
            .iter()
            .filter_map(|r| {
                let n = c.lost[*r as usize].load(Relaxed);
                (n > 0).then(|| (r.as_str().to_string(), n))
            })
            .collect(),
    }
}

/// Point counts for one metric type since the service started.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TypeAccounting {
    /// Points offered.
    pub offered: u64,
    /// Points accepted into the accumulators (and so, after a flush, stored).
    pub accepted: u64,
    /// Points refused, by reason code.
    pub rejected: BTreeMap<String, u64>,
    /// Valid points not kept, by reason code.
    pub dropped: BTreeMap<String, u64>,
    /// Accepted points that never reached the database, by reason code (`shutdown`,
    /// `database_gone`): a subset of `accepted`, so stored = accepted - lost once flushed.
    pub lost: BTreeMap<String, u64>,
}

impl TypeAccounting {
    /// Total rejected.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }

    /// Total dropped.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.values().sum()
    }

    /// Total lost after acceptance.
    pub fn lost_total(&self) -> u64 {
        self.lost.values().sum()
    }

    /// Whether offered = accepted + rejected + dropped.
    pub fn balances(&self) -> bool {
        self.offered == self.accepted + self.rejected_total() + self.dropped_total()
    }
}

/// Point accounting for system and user metrics.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Accounting {
    /// Host and luametrics metrics.
    pub system: TypeAccounting,
    /// Tenants' metrics.
    pub user: TypeAccounting,
}
