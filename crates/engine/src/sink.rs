use luametrics_model::{Kind, MetricType, RejectReason, TagPolicy, Tags};
use luametrics_recorder::{BatchPoint, BatchReport, MetricsService};
use luametrics_sketch::Summary;
use parking_lot::Mutex;

/// Where an engine hands metric points: the recording trait between the Lua world and
/// storage. [`MetricsService`] is the production sink; [`CollectingSink`] keeps points in
/// memory (for `luametrics check` and tests).
pub trait MetricsSink: Send + Sync + 'static {
    /// The rules points are validated against.
    fn policy(&self) -> &TagPolicy;
    /// Takes up to `want` points of the tenant's rate quota.
    fn reserve_points(&self, tenant: &str, want: u32) -> u32;
    /// Returns the unused part of a lease.
    fn release_points(&self, tenant: &str, unused: u32);
    /// Takes an execution's validated, pre-aggregated points.
    fn ingest_user_batch(&self, tenant: &str, points: Vec<BatchPoint>) -> BatchReport;
    /// Counts points the helpers rejected.
    fn count_user_rejections(&self, rejected: &[(RejectReason, u64)]);
    /// Tells the tenant's own ledger what the helpers rejected for it: totals by reason, and
    /// the metric names involved (an execution's warnings). Sinks with no tenant view ignore it.
    fn count_tenant_rejections(
        &self,
        _tenant: &str,
        _rejected: &[(RejectReason, u64)],
        _warnings: &[crate::Warning],
    ) {
    }
    /// Records a system metric (pool gauges, engine counters, rejection counters).
    fn record_system(&self, name: &str, kind: Kind, value: f64, tags: Tags);
    /// Records many observations of a system metric at once (the pool's wait histogram).
    fn record_system_summary(&self, name: &str, kind: Kind, tags: Tags, summary: Summary);
    /// Claims the exported (Prometheus) names of a user metric, or refuses one whose names
    /// another metric holds (`name_conflict`): asked once per new name/kind by the helpers.
    fn claim_name(&self, name: &str, kind: Kind) -> Result<(), RejectReason>;
}

impl MetricsSink for MetricsService {
    fn policy(&self) -> &TagPolicy {
        &self.config().policy
    }
    fn reserve_points(&self, tenant: &str, want: u32) -> u32 {
        MetricsService::reserve_points(self, tenant, want)
    }
    fn release_points(&self, tenant: &str, unused: u32) {
        MetricsService::release_points(self, tenant, unused)
    }
    fn ingest_user_batch(&self, tenant: &str, points: Vec<BatchPoint>) -> BatchReport {
        MetricsService::ingest_user_batch(self, tenant, points)
    }
    fn count_user_rejections(&self, rejected: &[(RejectReason, u64)]) {
        MetricsService::count_user_rejections(self, rejected)
    }
    fn count_tenant_rejections(
        &self,
        tenant: &str,
        rejected: &[(RejectReason, u64)],
        warnings: &[crate::Warning],
    ) {
        MetricsService::count_tenant_rejections(
            self,
            tenant,
            rejected,
            warnings
                .iter()
                .map(|w| (w.metric.as_str(), w.reason.as_str(), w.count)),
        )
    }
    fn record_system(&self, name: &str, kind: Kind, value: f64, tags: Tags) {
        // A refused system point is counted by the service; it never fails an execution.
        let _ = MetricsService::record_system(self, name, kind, value, tags, None, None);
    }
    fn record_system_summary(&self, name: &str, kind: Kind, tags: Tags, summary: Summary) {
        let _ = MetricsService::record_system_summary(self, name, kind, tags, summary);
    }
    fn claim_name(&self, name: &str, kind: Kind) -> Result<(), RejectReason> {
        MetricsService::claim_user_name(self, name, kind)
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
        let accepted = points.iter().map(|p| p.summary.samples).sum();
        self.points
            .lock()
            .extend(points.into_iter().map(|p| (tenant.to_string(), p)));
        BatchReport {
            accepted,
            ..Default::default()
        }
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
    fn claim_name(&self, name: &str, kind: Kind) -> Result<(), RejectReason> {
        self.names.claim(
            MetricType::User,
            name,
            kind,
            luametrics_model::infer_unit(name),
        )
    }
}
