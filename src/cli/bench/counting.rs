//! The sink every side of a hot-path ratio records into, shared by `luametrics bench hot-path`
//! and `benches/hot_path.rs` (which includes this file by path), so both measure against the
//! same sink.

use luametrics::engine::{BatchPoint, BatchReport, MetricsSink};
use luametrics::model::{Kind, Limits, RejectReason, TagPolicy, Tags, DEFAULT_DENIED_KEYS};
use luametrics::sketch::Summary;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// Accepts and counts every point, keeps none: the same cost on every side, and no growth
/// that would make a later side pay for an earlier one's points.
pub(crate) struct CountingSink {
    policy: TagPolicy,
    /// Points accepted so far (a side that silently recorded nothing must not pass as fast).
    pub(crate) accepted: AtomicU64,
}

impl MetricsSink for CountingSink {
    fn policy(&self) -> &TagPolicy {
        &self.policy
    }
    fn reserve_points(&self, _tenant: &str, want: u32) -> u32 {
        want
    }
    fn release_points(&self, _tenant: &str, _unused: u32) {}
    fn ingest_user_batch(&self, _tenant: &str, points: Vec<BatchPoint>) -> BatchReport {
        let accepted = points.iter().map(|p| p.summary.samples).sum();
        self.accepted.fetch_add(accepted, Relaxed);
        BatchReport {
            accepted,
            ..Default::default()
        }
    }
    fn count_user_rejections(&self, _rejected: &[(RejectReason, u64)]) {}
    fn record_system(&self, _name: &str, _kind: Kind, _value: f64, _tags: Tags) {}
    fn record_system_summary(&self, _name: &str, _kind: Kind, _tags: Tags, _summary: Summary) {}
    fn claim_name(&self, _tenant: &str, _name: &str, _kind: Kind) -> Result<(), RejectReason> {
        Ok(())
    }
}

/// A counting sink whose policy never limits the rate or the points per execution.
pub(crate) fn counting_sink() -> Arc<CountingSink> {
    Arc::new(CountingSink {
        policy: TagPolicy::new(
            DEFAULT_DENIED_KEYS.iter().map(|s| s.to_string()),
            Limits {
                points_per_minute: u32::MAX,
                burst: u32::MAX,
                max_points_per_execution: u32::MAX,
                ..Limits::default()
            },
        ),
        accepted: AtomicU64::new(0),
    })
}
