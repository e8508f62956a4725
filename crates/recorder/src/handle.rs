//! Handles to system series: the catalog, kind and PII checks run once when a handle is made,
//! and the series key is built once, so recording through a handle costs one value check and
//! one accumulator fold. This is what the per-execution metrics of the pipeline and the HTTP
//! layer use (several points per request), and what hosts use for their own system metrics
//! (metrics-rs style: a handle never fails at the call site; a refused one counts every point
//! it is given as rejected, and says why once, through `tracing`).

use crate::series::SeriesKey;
use crate::service::{tags_from, Accepted, MetricsService, Rejected};
use luametrics_model::{Kind, MetricType, RejectReason, Tags};
use luametrics_sketch::Summary;
use std::sync::Arc;

/// One system series, checked once. Cheap to clone (an `Arc` and the service handle).
#[derive(Clone)]
pub struct SystemSeries {
    service: MetricsService,
    key: Result<Arc<SeriesKey>, RejectReason>,
    /// Whether the key is charged (a tenant's handle may not be, when the tenants' handles
    /// have no room): an uncharged handle is for one use, not to be kept.
    held: bool,
}

impl std::fmt::Debug for SystemSeries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.key {
            Ok(k) => f
                .debug_struct("SystemSeries")
                .field("name", &k.name)
                .field("kind", &k.kind)
                .field("tenant", &k.tenant)
                .field("tags", &k.tags)
                .finish(),
            Err(r) => f.debug_tuple("SystemSeries::Refused").field(r).finish(),
        }
    }
}

impl SystemSeries {
    pub(crate) fn new(
        service: MetricsService,
        name: &str,
        kind: Kind,
        mut tags: Tags,
        tenant: Option<&str>,
    ) -> Self {
        let config = service.config();
        let check = config
            .catalog
            .check(name, kind, &tags)
            .and_then(|_| crate::service::tenant_tag(&tags, tenant))
            .and_then(|_| config.policy.check_system_tags(&tags))
            // A handle's names are never refused for memory: it would refuse its points
            // for good.
            .and_then(|_| service.claim_system_name(name, kind, tenant, false));
        let mut held = true;
        let key = check.map(|_| {
            // The tenant is the host's, a column of its own, never a tag.
            tags.remove("tenant");
            let key = SeriesKey::new(
                MetricType::System,
                kind,
                tenant.map(Arc::from),
                name.to_string(),
                tags,
            );
            if tenant.is_some() {
                let (key, charged) = service.tenant_handle_key(key);
                held = charged;
                key
            } else {
                service.handle_key(key)
            }
        });
        Self { service, key, held }
    }

    /// Whether the handle may be kept: its key is charged against the memory bound.
    pub fn held(&self) -> bool {
        self.held
    }

    /// Why the series was refused when it was made, if it was: then every point it is given is
    /// counted as rejected for this reason.
    pub fn refused(&self) -> Option<RejectReason> {
        self.key.as_ref().err().copied()
    }

    /// Records one value now: the value is checked (finite, and not negative for a counter),
    /// then folded into the series' window.
    pub fn record(&self, value: f64) -> Result<Accepted, Rejected> {
        self.record_when(value, self.service.now_ms())
    }

    /// Records one value at `ts` (ms): a time from 1970 up to a minute (two windows, when
    /// longer) ahead of the service's clock, as for any host point (`invalid_timestamp`).
    pub fn record_at(&self, value: f64, ts: i64) -> Result<Accepted, Rejected> {
        if !(0..=self.service.latest_timestamp()).contains(&ts) {
            return Err(self
                .service
                .reject_system(RejectReason::InvalidTimestamp, 1));
        }
        self.record_when(value, ts)
    }

    /// Records one value at a time known to be valid.
    fn record_when(&self, value: f64, ts: i64) -> Result<Accepted, Rejected> {
        let key = match &self.key {
            Ok(k) => k,
            Err(reason) => return Err(self.service.reject_system(*reason, 1)),
        };
        if let Err(reason) = luametrics_model::TagPolicy::check_value(key.kind, value) {
            return Err(self.service.reject_system(reason, 1));
        }
        let mut summary = Summary::new(key.kind == Kind::Histogram);
        summary.observe(value, ts);
        self.service.ingest_series(key.clone(), summary, ts)
    }

    /// Records many pre-aggregated observations at once (a caller that folds its own values).
    pub fn record_summary(&self, summary: Summary) -> Result<Accepted, Rejected> {
        let key = match &self.key {
            Ok(k) => k,
            Err(reason) => {
                return Err(self.service.reject_system(*reason, summary.samples.max(1)));
            }
        };
        if summary.samples == 0 {
            return Ok(Accepted::Stored);
        }
        let ts = self.service.now_ms();
        self.service.ingest_series(key.clone(), summary, ts)
    }
}

/// Logs a refused handle once, when it is made (its points are counted, not logged).
fn warn_refused(series: &SystemSeries, name: &str) {
    if let Some(reason) = series.refused() {
        tracing::warn!(
            metric = name,
            reason = reason.as_str(),
            "system metric handle refused: every point recorded through it is counted as rejected"
        );
    }
}

/// A system counter a host increments; see [`MetricsService::counter`].
#[derive(Clone, Debug)]
pub struct Counter(SystemSeries);

impl Counter {
    /// Adds `n`. A refused point is counted in the accounting; it never fails the caller.
    pub fn increment(&self, n: u64) {
        let _ = self.0.record(n as f64);
    }

    /// Adds a fractional amount (a counter of seconds, bytes as f64...).
    pub fn add(&self, value: f64) {
        let _ = self.0.record(value);
    }

    /// The checked result of adding `value`, for callers that want to see a refusal.
    pub fn try_add(&self, value: f64) -> Result<Accepted, Rejected> {
        self.0.record(value)
    }

    /// The series behind the handle.
    pub fn series(&self) -> &SystemSeries {
        &self.0
    }
}

/// A system gauge a host sets; see [`MetricsService::gauge`].
#[derive(Clone, Debug)]
pub struct Gauge(SystemSeries);

impl Gauge {
    /// Sets the gauge (the window keeps the last value set). Never fails the caller.
    pub fn set(&self, value: f64) {
        let _ = self.0.record(value);
    }

    /// The checked result of setting `value`.
    pub fn try_set(&self, value: f64) -> Result<Accepted, Rejected> {
        self.0.record(value)
    }

    /// The series behind the handle.
    pub fn series(&self) -> &SystemSeries {
        &self.0
    }
}

/// A system histogram a host observes values into; see [`MetricsService::histogram`].
#[derive(Clone, Debug)]
pub struct Histogram(SystemSeries);

impl Histogram {
    /// Observes one value. Never fails the caller.
    pub fn record(&self, value: f64) {
        let _ = self.0.record(value);
    }

    /// The checked result of observing `value`.
    pub fn try_record(&self, value: f64) -> Result<Accepted, Rejected> {
        self.0.record(value)
    }

    /// The series behind the handle.
    pub fn series(&self) -> &SystemSeries {
        &self.0
    }
}

impl MetricsService {
    /// A handle to one system series (catalog, kind and PII checked now, once), for a caller
    /// that records the same series many times; `tenant` is the host's tenant of the series.
    pub fn system_series(
        &self,
        name: &str,
        kind: Kind,
        tags: Tags,
        tenant: Option<&str>,
    ) -> SystemSeries {
        SystemSeries::new(self.clone(), name, kind, tags, tenant)
    }

    /// A counter handle of a catalog metric: `let c = metrics.counter("auth.login.attempt",
    /// &[("method", "password")]); c.increment(1);`. A refused handle (unknown name, wrong
    /// kind, a tag the catalog does not allow, PII) is logged once here and counts each point.
    pub fn counter(&self, name: &str, tags: &[(&str, &str)]) -> Counter {
        let s = self.system_series(name, Kind::Counter, tags_from(tags), None);
        warn_refused(&s, name);
        Counter(s)
    }

    /// A gauge handle of a catalog metric (see [`MetricsService::counter`]).
    pub fn gauge(&self, name: &str, tags: &[(&str, &str)]) -> Gauge {
        let s = self.system_series(name, Kind::Gauge, tags_from(tags), None);
        warn_refused(&s, name);
        Gauge(s)
    }

    /// A histogram handle of a catalog metric (see [`MetricsService::counter`]).
    pub fn histogram(&self, name: &str, tags: &[(&str, &str)]) -> Histogram {
        let s = self.system_series(name, Kind::Histogram, tags_from(tags), None);
        warn_refused(&s, name);
        Histogram(s)
    }
}
