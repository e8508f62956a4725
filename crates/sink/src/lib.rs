//! The contract between the Lua engine and whatever records its metrics.
//!
//! Why a crate of its own: the engine (and through it the pipeline and the HTTP layer) must
//! not depend on the recorder, the store or libSQL; they depend on this small contract, and
//! the recorder implements it. The engine builds without any SQL in its dependency tree.
//!
//! What the contract guarantees: a [`BatchPoint`] carries a [`CheckedSeries`], which only
//! [`luametrics_model::TagPolicy::check_series`] makes, and a sink can tell whether its own
//! policy made it ([`luametrics_model::TagPolicy::vouches_for`]); so a batch path cannot be
//! used to skip the PII and tag rules. Points of an execution are covered by a quota lease
//! taken with [`MetricsSink::reserve_points`] and its unused part given back with
//! [`MetricsSink::release_points`].

#![deny(missing_docs)]

use luametrics_model::{Kind, MetricType, RejectReason, TagPolicy, Tags};
use luametrics_sketch::Summary;
use parking_lot::Mutex;
use serde::Serialize;
use std::sync::Arc;

pub use luametrics_model::CheckedSeries;

/// A pre-aggregated user point of one execution: a checked series and its folded values.
#[derive(Debug, Clone)]
pub struct BatchPoint {
    /// The series, checked by the policy of the sink it is given to.
    pub series: CheckedSeries,
    /// The folded values (samples = points).
    pub summary: Summary,
}

/// What a batch ingestion did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Points accepted.
    pub accepted: u64,
    /// Of which folded into overflow series.
    pub overflowed: u64,
    /// Points not kept: dropped (memory bound, shutdown), or refused because another policy
    /// checked their series, no lease nor quota covered them, or their metric's name could not
    /// be claimed again (the recorder's accounting counts those as rejected: `invalid_tags`,
    /// `rate_limited`, `name_limit`, `name_conflict`).
    pub dropped: u64,
}

/// A metric point the helpers rejected: data, never a line of the print log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    /// The metric name as the script gave it (cut to 128 bytes, control characters escaped).
    pub metric: String,
    /// Why it was rejected (a `helpers.metrics` reason code).
    pub reason: String,
    /// How many points of this metric were rejected for this reason in the execution.
    pub count: u64,
}

/// Where an engine hands metric points: the recording trait between the Lua world and
/// storage. The recorder's `MetricsService` is the production sink; [`CollectingSink`] keeps
/// points in memory (for `luametrics check` and tests).
pub trait MetricsSink: Send + Sync + 'static {
    /// The rules points are validated against.
    fn policy(&self) -> &TagPolicy;
    /// Takes up to `want` points of the tenant's rate quota (a lease for one execution).
    fn reserve_points(&self, tenant: &str, want: u32) -> u32;
    /// Returns the unused part of a lease.
    fn release_points(&self, tenant: &str, unused: u32);
    /// Takes an execution's checked, pre-aggregated points, covered by its lease (a sink with a
    /// quota charges points no lease covers to the quota now, and refuses those past it). A
    /// point whose series this sink's policy did not check is refused and counted.
    fn ingest_user_batch(&self, tenant: &str, points: Vec<BatchPoint>) -> BatchReport;
    /// Counts points the helpers rejected.
    fn count_user_rejections(&self, rejected: &[(RejectReason, u64)]);
    /// Tells the tenant's own ledger what the helpers rejected for it: totals by reason, and
    /// the metric names involved (an execution's warnings). Sinks with no tenant view ignore it.
    fn count_tenant_rejections(
        &self,
        _tenant: &str,
        _rejected: &[(RejectReason, u64)],
        _warnings: &[Warning],
    ) {
    }
    /// Records a system metric (pool gauges, engine counters, rejection counters).
    fn record_system(&self, name: &str, kind: Kind, value: f64, tags: Tags);
    /// Records many observations of a system metric at once (the pool's wait histogram).
    fn record_system_summary(&self, name: &str, kind: Kind, tags: Tags, summary: Summary);
    /// Claims the exported (Prometheus) names of `tenant`'s user metric, or refuses one whose
    /// names another metric holds (`name_conflict`) or that would take the tenant past its
    /// bound of distinct metrics (`name_limit`): asked once per new name/kind and tenant by
    /// the helpers.
    fn claim_name(&self, tenant: &str, name: &str, kind: Kind) -> Result<(), RejectReason>;
}

/// One system series a component records many times: checked once when it was made (catalog,
/// kind, PII). Recording never fails the caller; a refused series counts every point it is
/// given as rejected.
pub trait SeriesHandle: Send + Sync {
    /// Records one value now.
    fn record(&self, value: f64);
    /// Whether a cache may keep the handle: a handle whose memory the recorder could not
    /// charge (its part of the bound was full) works, but is for one use.
    fn keepable(&self) -> bool {
        true
    }
}

/// What the runtime's own components (the pipeline executor, the trace writer, the HTTP
/// layer) record their system metrics through, so they depend on this contract and not on the
/// recorder; the recorder's `MetricsService` implements it.
pub trait SystemMetrics: Send + Sync + 'static {
    /// The current time by the recorder's clock (ms), so timestamps and windows agree.
    fn now_ms(&self) -> i64;
    /// A handle to one catalog system series; `tenant` is the host's tenant of the series.
    fn series(
        &self,
        name: &str,
        kind: Kind,
        tags: Tags,
        tenant: Option<&str>,
    ) -> Arc<dyn SeriesHandle>;
    /// Records one point of a series not recorded often enough to keep a handle for.
    fn record(&self, name: &str, kind: Kind, value: f64, tags: Tags, tenant: Option<&str>) {
        self.series(name, kind, tags, tenant).record(value)
    }
}

/// A sink that keeps everything in memory, with no quota: what a script would record.
#[derive(Default)]
pub struct CollectingSink {
    policy: TagPolicy,
    /// `(tenant, point)` in arrival order.
    pub points: Mutex<Vec<(String, BatchPoint)>>,
    /// Rejections by reason.
    pub rejected: Mutex<Vec<(RejectReason, u64)>>,
    /// System metrics as `(name, kind, value, tags)`.
    pub system: Mutex<Vec<(String, Kind, f64, Tags)>>,
    names: luametrics_model::ExportedNames,
}

impl CollectingSink {
    /// A collecting sink validating with `policy`.
    pub fn new(policy: TagPolicy) -> Self {
        Self {
            policy,
            ..Default::default()
        }
    }
}

impl MetricsSink for CollectingSink {
    fn policy(&self) -> &TagPolicy {
        &self.policy
    }
    fn reserve_points(&self, _tenant: &str, want: u32) -> u32 {
        want
    }
    fn release_points(&self, _tenant: &str, _unused: u32) {}
    fn ingest_user_batch(&self, tenant: &str, points: Vec<BatchPoint>) -> BatchReport {
        let mut report = BatchReport::default();
        let mut kept = self.points.lock();
        for p in points {
            if self.policy.vouches_for(&p.series) {
                report.accepted += p.summary.samples;
                kept.push((tenant.to_string(), p));
            } else {
                report.dropped += p.summary.samples;
            }
        }
        report
    }
    fn count_user_rejections(&self, rejected: &[(RejectReason, u64)]) {
        self.rejected.lock().extend_from_slice(rejected);
    }
    fn record_system(&self, name: &str, kind: Kind, value: f64, tags: Tags) {
        self.system
            .lock()
            .push((name.to_string(), kind, value, tags));
    }
    fn record_system_summary(&self, name: &str, kind: Kind, tags: Tags, summary: Summary) {
        self.system
            .lock()
            .push((name.to_string(), kind, summary.sum, tags));
    }
    fn claim_name(&self, tenant: &str, name: &str, kind: Kind) -> Result<(), RejectReason> {
        self.names.claim(
            MetricType::User,
            name,
            kind,
            luametrics_model::infer_unit(name),
            Some(luametrics_model::Claimant {
                tenant,
                max_names: self.policy.limits.max_names_per_tenant,
            }),
            &mut |_| true,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(policy: &TagPolicy) -> BatchPoint {
        let series = policy
            .check_series(
                "shop.orders_count",
                Kind::Counter,
                vec![("plan".into(), "pro".into())],
            )
            .expect("a valid series");
        let mut summary = Summary::new(false);
        summary.observe(2.0, 0);
        BatchPoint { series, summary }
    }

    #[test]
    fn a_series_checked_by_another_policy_is_dropped_not_kept() {
        let sink = CollectingSink::new(TagPolicy::default());
        let ours = point(sink.policy());
        let laxer = TagPolicy::new(Vec::<String>::new(), Default::default());
        let theirs = point(&laxer);
        // A clone of the sink's own policy (same stamp) with laxer tag limits.
        let mut lax_clone = sink.policy().clone();
        lax_clone.limits.max_tags = 1_000;
        let cloned = point(&lax_clone);
        let same = point(&sink.policy().clone());
        let r = sink.ingest_user_batch("acme", vec![ours, theirs, cloned, same]);
        assert_eq!((r.accepted, r.dropped), (2, 2));
        assert_eq!(sink.points.lock().len(), 2);
    }

    #[test]
    fn only_the_policy_makes_a_checked_series_and_it_runs_every_rule() {
        let p = TagPolicy::default();
        let check = |name: &str, tags: &[(&str, &str)]| {
            p.check_series(
                name,
                Kind::Counter,
                tags.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
            .map(|s| s.tags().len())
        };
        assert_eq!(check("shop.orders_count", &[("plan", "pro")]), Ok(1));
        assert_eq!(
            check("shop.orders_count", &[("email", "x")]),
            Err(RejectReason::PiiTag)
        );
        assert_eq!(
            check("shop.orders_count", &[("who", "jane@example.com")]),
            Err(RejectReason::PiiTag)
        );
        assert_eq!(
            check("auth.login_count", &[]),
            Err(RejectReason::ReservedPrefix)
        );
        assert_eq!(
            check("shop.orders_count", &[("a", "1"), ("a", "2")]),
            Err(RejectReason::InvalidTags)
        );
    }
}
