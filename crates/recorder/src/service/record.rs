//! Recording: the checked calls for system points (catalog, value and PII checks in that
//! order), user points one by one (every tag rule, the tenant's rate limit, series limits), and
//! the batch path the engine's sink uses (series its policy checked, a quota lease).

use super::*;

impl MetricsService {
    /// Adds to a system counter (validated against the catalog) and says whether it was kept;
    /// hosts that record the same series often use a [`crate::Counter`] handle instead.
    pub fn try_count(
        &self,
        name: &str,
        value: f64,
        tags: &[(&str, &str)],
    ) -> Result<Accepted, Rejected> {
        self.record_system(name, Kind::Counter, value, tags_from(tags), None, None)
    }

    /// Sets a system gauge and says whether it was kept (see [`MetricsService::try_count`]).
    pub fn try_gauge(
        &self,
        name: &str,
        value: f64,
        tags: &[(&str, &str)],
    ) -> Result<Accepted, Rejected> {
        self.record_system(name, Kind::Gauge, value, tags_from(tags), None, None)
    }

    /// Observes a value of a system histogram and says whether it was kept (see
    /// [`MetricsService::try_count`]).
    pub fn try_histogram(
        &self,
        name: &str,
        value: f64,
        tags: &[(&str, &str)],
    ) -> Result<Accepted, Rejected> {
        self.record_system(name, Kind::Histogram, value, tags_from(tags), None, None)
    }

    /// Times a future and records its duration (ms) in a histogram; returns the future's output.
    pub async fn measure<F: std::future::Future>(
        &self,
        name: &str,
        tags: &[(&str, &str)],
        fut: F,
    ) -> F::Output {
        let start = Instant::now();
        let out = fut.await;
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        // A refused timing is counted in the accounting; it never fails the timed work.
        let _ = self.try_histogram(name, ms, tags);
        out
    }

    /// Records many observations of a system metric at once (callers that pre-aggregate,
    /// like the engine pool's wait histogram). Catalog and PII checks apply once.
    pub fn record_system_summary(
        &self,
        name: &str,
        kind: Kind,
        tags: Tags,
        summary: Summary,
    ) -> Result<Accepted, Rejected> {
        let now = self.now_ms();
        self.ingest_system(name, kind, tags, None, None, summary, now, Ok(()))
    }

    /// Records a system point with every option: catalog and PII checks apply; `tenant` is the
    /// host's (for per-tenant system metrics); `source` like `service:api`.
    pub fn record_system(
        &self,
        name: &str,
        kind: Kind,
        value: f64,
        tags: Tags,
        tenant: Option<&str>,
        source: Option<&str>,
    ) -> Result<Accepted, Rejected> {
        let now = self.now_ms();
        self.record_system_at(name, kind, value, tags, tenant, source, now)
    }

    /// Like [`MetricsService::record_system`] with an explicit timestamp (ms).
    #[allow(clippy::too_many_arguments)]
    pub fn record_system_at(
        &self,
        name: &str,
        kind: Kind,
        value: f64,
        tags: Tags,
        tenant: Option<&str>,
        source: Option<&str>,
        ts: i64,
    ) -> Result<Accepted, Rejected> {
        let mut summary = Summary::new(kind == Kind::Histogram);
        summary.observe(value, ts);
        let value_ok = luametrics_model::TagPolicy::check_value(kind, value);
        self.ingest_system(name, kind, tags, tenant, source, summary, ts, value_ok)
    }

    /// The one path for system points: catalog, value and PII checks (in that order), the
    /// host's tenant as the series' tenant, then the accumulators.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn ingest_system(
        &self,
        name: &str,
        kind: Kind,
        mut tags: Tags,
        tenant: Option<&str>,
        source: Option<&str>,
        summary: Summary,
        ts: i64,
        value_ok: Result<(), RejectReason>,
    ) -> Result<Accepted, Rejected> {
        let inner = &self.inner;
        let check = inner
            .config
            .catalog
            .check(name, kind, &tags)
            .and(value_ok)
            .and_then(|_| check_origin(tenant, source, ts, self.latest_timestamp()))
            .and_then(|_| tenant_tag(&tags, tenant))
            .and_then(|_| inner.config.policy.check_system_tags(&tags))
            // Hosts may record names outside the catalog: their exported names are claimed
            // like a user metric's, so no two metrics (system or user) print one family.
            .and_then(|_| self.claim_system_name(name, kind, tenant, true));
        if let Err(reason) = check {
            inner
                .counters
                .reject(MetricType::System, reason, summary.samples.max(1));
            return Err(Rejected::Invalid(reason));
        }
        if summary.samples == 0 {
            return Ok(Accepted::Stored);
        }
        tags.remove("tenant");
        let key = SeriesKey::new(
            MetricType::System,
            kind,
            tenant.map(Arc::from),
            name.to_string(),
            tags,
        );
        inner.ingest(key, summary, ts, source.map(str::to_string))
    }

    /// Counts `n` refused system points (a handle's checks) and returns the refusal.
    pub(crate) fn reject_system(&self, reason: RejectReason, n: u64) -> Rejected {
        self.inner.counters.reject(MetricType::System, reason, n);
        Rejected::Invalid(reason)
    }

    /// Folds a checked system point of a handle's series (its key built once).
    pub(crate) fn ingest_series(
        &self,
        key: Arc<SeriesKey>,
        summary: Summary,
        ts: i64,
    ) -> Result<Accepted, Rejected> {
        self.inner.ingest(key, summary, ts, None)
    }

    /// Records one user metric for a tenant: every tag rule, the tenant's rate limit, and the
    /// series limits apply. Arguments in the order of [`MetricsService::record_system`]: name,
    /// kind, value, tags (the tenant, which owns the point, first).
    pub fn record_user_metric(
        &self,
        tenant: &str,
        name: &str,
        kind: Kind,
        value: f64,
        tags: &Tags,
    ) -> Result<Accepted, Rejected> {
        let inner = &self.inner;
        if let Err(reason) = inner
            .config
            .policy
            .check_user_point(name, kind, value, tags)
        {
            inner.counters.reject(MetricType::User, reason, 1);
            return Err(Rejected::Invalid(reason));
        }
        if let Err(reason) = self.claim_user_name(tenant, name, kind) {
            inner.counters.reject(MetricType::User, reason, 1);
            if reason == RejectReason::MemoryBound {
                return Err(Rejected::Dropped(DropReason::MemoryBound));
            }
            return Err(Rejected::Invalid(reason));
        }
        let tenant: Arc<str> = Arc::from(tenant);
        if inner.quota.take(&tenant, 1) == 0 {
            inner
                .counters
                .reject(MetricType::User, RejectReason::RateLimited, 1);
            return Err(Rejected::Invalid(RejectReason::RateLimited));
        }
        let now = self.now_ms();
        let key = SeriesKey::new(
            MetricType::User,
            kind,
            Some(tenant),
            name.to_string(),
            tags.clone(),
        );
        let mut summary = Summary::new(kind == Kind::Histogram);
        summary.observe(value, now);
        inner.ingest(key, summary, now, None)
    }

    /// Leases up to `want` points of a tenant's rate quota to one script execution.
    pub(crate) fn reserve_points(&self, tenant: &str, want: u32) -> u32 {
        self.inner.quota.lease(&Arc::from(tenant), want)
    }

    /// Returns the unused part of a lease from [`MetricsService::reserve_points`] (never more
    /// than the tenant has leased).
    pub(crate) fn release_points(&self, tenant: &str, unused: u32) {
        self.inner.quota.end_lease(&Arc::from(tenant), unused)
    }

    /// Counts user points a caller rejected itself (the Lua helpers validate on their side).
    pub(crate) fn count_user_rejections(&self, rejected: &[(RejectReason, u64)]) {
        for &(reason, n) in rejected {
            if n > 0 {
                self.inner.counters.reject(MetricType::User, reason, n);
            }
        }
    }

    /// Ingests points a script execution pre-aggregated. Each series must have been checked by
    /// this service's policy (a series another policy checked is refused and counted as
    /// `invalid_tags`), and the points are covered by the tenant's leases, or else by its
    /// quota now (a point past both is refused as `rate_limited`): the batch path skips
    /// neither the rules nor the rate limit.
    pub(crate) fn ingest_user_batch(&self, tenant: &str, points: Vec<BatchPoint>) -> BatchReport {
        let inner = &self.inner;
        let tenant: Arc<str> = Arc::from(tenant);
        let now = self.now_ms();
        let mut report = BatchReport::default();
        let policy = &inner.config.policy;
        let wanted: u64 = points
            .iter()
            .filter(|p| policy.vouches_for(&p.series))
            .map(|p| p.summary.samples)
            .sum();
        let mut covered = inner.quota.cover(&tenant, wanted);
        for p in points {
            let samples = p.summary.samples;
            if samples == 0 {
                continue;
            }
            if !inner.config.policy.vouches_for(&p.series) {
                inner
                    .counters
                    .reject(MetricType::User, RejectReason::InvalidTags, samples);
                report.dropped += samples;
                inner
                    .tenants
                    .count(&tenant, "rejected", "invalid_tags", samples);
                continue;
            }
            if samples > covered {
                inner
                    .counters
                    .reject(MetricType::User, RejectReason::RateLimited, samples);
                report.dropped += samples;
                inner
                    .tenants
                    .count(&tenant, "rejected", "rate_limited", samples);
                continue;
            }
            // The engine's verdict cache remembers a series for as long as it lives; the name
            // claim behind it goes when the tenant has been idle past `idle_eviction_ms`
            // (adversary round 25: the tenant's metric then vanished from `/metrics`, and its
            // cached names no longer counted against `max_names_per_tenant`). Claimed again
            // here (a lookup when held), and refused as a first sight would be.
            if let Err(reason) = self.claim_user_name(&tenant, p.series.name(), p.series.kind()) {
                inner.counters.reject(MetricType::User, reason, samples);
                report.dropped += samples;
                let what = if reason == RejectReason::MemoryBound {
                    "dropped"
                } else {
                    "rejected"
                };
                inner.tenants.count(&tenant, what, reason.as_str(), samples);
                inner
                    .tenants
                    .trouble(&tenant, p.series.name(), reason.as_str(), samples);
                continue;
            }
            covered -= samples;
            // The engine aggregates without a clock (its points carry time 0): the batch's last
            // value is the series' latest as of now. At time 0, a gauge's hourly and daily
            // rollups kept the first value they saw (ties go to the stored row; adversary
            // round 25).
            let mut summary = p.summary;
            summary.last_ts = summary.last_ts.max(now);
            let (name, kind, tags) = p.series.into_parts();
            let key = SeriesKey::new(MetricType::User, kind, Some(tenant.clone()), name, tags);
            let name = key.name.clone();
            match inner.ingest(key, summary, now, None) {
                Ok(a) => {
                    report.accepted += samples;
                    if a == Accepted::Overflow {
                        report.overflowed += samples;
                        inner.tenants.trouble(&tenant, &name, "overflow", samples);
                    }
                }
                Err(e) => {
                    report.dropped += samples;
                    let reason = match e {
                        Rejected::Dropped(r) => r.as_str(),
                        Rejected::Invalid(r) => r.as_str(),
                    };
                    inner.tenants.count(&tenant, "dropped", reason, samples);
                }
            }
        }
        // Covered but not used (a later point did not fit): back to the tenant.
        if covered > 0 {
            inner
                .quota
                .give_back(&tenant, covered.min(u64::from(u32::MAX)) as u32);
        }
        inner
            .tenants
            .count(&tenant, "accepted", "", report.accepted);
        inner
            .tenants
            .count(&tenant, "overflowed", "", report.overflowed);
        report
    }

    /// Counts a tenant's points the helpers rejected, by reason, and which metric names were
    /// involved (`by_metric`: `(metric, reason, points)`), for the tenant's own usage view.
    pub(crate) fn count_tenant_rejections<'a>(
        &self,
        tenant: &str,
        rejected: &[(RejectReason, u64)],
        by_metric: impl IntoIterator<Item = (&'a str, &'a str, u64)>,
    ) {
        let ledger = &self.inner.tenants;
        for &(reason, n) in rejected {
            // Counted as the service counts it (`Counters::reject`).
            let what = if reason == RejectReason::MemoryBound {
                "dropped"
            } else {
                "rejected"
            };
            ledger.count(tenant, what, reason.as_str(), n);
        }
        for (metric, reason, n) in by_metric {
            ledger.trouble(tenant, metric, reason, n);
        }
    }

    /// `tenant`'s points since the process started: accepted, overflowed, rejected and dropped
    /// by reason, and the metric names involved.
    pub fn tenant_points(&self, tenant: &str) -> crate::TenantPoints {
        self.inner.tenants.points(tenant)
    }
}

/// Latest timestamp a host may give a point: the end of year 9999 (ms since the epoch).
const MAX_TIMESTAMP_MS: i64 = 253_402_300_799_999;
/// How far ahead of the service's clock a host's point may be, at least (two windows when
/// they are longer): a clock a little ahead is fine, a point years ahead held its window
/// (and its share of the memory bound) until shutdown.
const MAX_AHEAD_MS: i64 = 60_000;

impl MetricsService {
    /// The latest timestamp a host's point may carry now (see [`MAX_AHEAD_MS`]): adversary
    /// round 13 filled an 8 MiB bound, reserve included, with ~11k points dated year 9892,
    /// whose windows never sealed: every new tenant's first point was dropped and `/readyz`
    /// was not ready until shutdown.
    pub(crate) fn latest_timestamp(&self) -> i64 {
        let window = self
            .inner
            .config
            .settings
            .window_ms
            .min(i64::MAX as u64 / 4) as i64;
        let ahead = MAX_AHEAD_MS.max(2 * window);
        (self.inner.config.clock)()
            .saturating_add(ahead)
            .min(MAX_TIMESTAMP_MS)
    }
}

/// The host-given parts of a system point that no catalog checks: its tenant (the same rule as
/// executions and read tokens), its source (a short printable label) and its timestamp (a
/// calendar date, at most `latest`: a far-future window would not expire, an extreme one
/// overflowed the window arithmetic).
fn check_origin(
    tenant: Option<&str>,
    source: Option<&str>,
    ts: i64,
    latest: i64,
) -> Result<(), RejectReason> {
    if let Some(t) = tenant {
        luametrics_model::check_tenant(t).map_err(|_| RejectReason::InvalidTenant)?;
    }
    if let Some(s) = source {
        if s.len() > luametrics_model::MAX_TENANT_BYTES || s.chars().any(char::is_control) {
            return Err(RejectReason::InvalidTags);
        }
    }
    if !(0..=latest).contains(&ts) {
        return Err(RejectReason::InvalidTimestamp);
    }
    Ok(())
}

/// A system point's `tenant` tag names its tenant, which is a column of its own: one that
/// is not the point's tenant is refused (`reserved_tag`), not dropped (adversary round 12:
/// points tagged `tenant=x`, `tenant=y` and untagged were merged into one series).
pub(crate) fn tenant_tag(tags: &Tags, tenant: Option<&str>) -> Result<(), RejectReason> {
    match tags.get("tenant") {
        Some(t) if Some(t.as_str()) != tenant => Err(RejectReason::ReservedTag),
        _ => Ok(()),
    }
}
