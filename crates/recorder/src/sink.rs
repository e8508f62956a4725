//! The recorder as the engine's sink: [`MetricsService`] implements the engine-recorder
//! contract of `luametrics-sink`, so the engine depends on the contract and never on the
//! recorder, the store or libSQL. The batch path lives only here: a host cannot reach it
//! except through the trait, whose points carry series checked by this service's policy.

use crate::service::MetricsService;
use crate::SystemSeries;
use luametrics_model::{Kind, RejectReason, TagPolicy, Tags};
use luametrics_sink::{BatchPoint, BatchReport, MetricsSink, SeriesHandle, SystemMetrics, Warning};
use luametrics_sketch::Summary;
use std::sync::Arc;

impl SeriesHandle for SystemSeries {
    fn record(&self, value: f64) {
        // A refused point is counted by the service; it never fails the caller.
        let _ = SystemSeries::record(self, value);
    }
    fn keepable(&self) -> bool {
        SystemSeries::held(self)
    }
}

impl SystemMetrics for MetricsService {
    fn now_ms(&self) -> i64 {
        MetricsService::now_ms(self)
    }
    fn series(
        &self,
        name: &str,
        kind: Kind,
        tags: Tags,
        tenant: Option<&str>,
    ) -> Arc<dyn SeriesHandle> {
        Arc::new(self.system_series(name, kind, tags, tenant))
    }
    fn record(&self, name: &str, kind: Kind, value: f64, tags: Tags, tenant: Option<&str>) {
        // One point: the checked call, without making a handle.
        let _ = self.record_system(name, kind, value, tags, tenant, None);
    }
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
        warnings: &[Warning],
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
    fn claim_name(&self, tenant: &str, name: &str, kind: Kind) -> Result<(), RejectReason> {
        MetricsService::claim_user_name(self, tenant, name, kind)
    }
}
