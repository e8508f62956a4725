//! The service's own metrics (accounting counters, per-tenant point counts, flush and series
//! gauges), recorded as system points outside the accounting, in room reserved above the
//! memory bound so a full recorder still reports on itself.

use super::*;

impl Inner {
    /// Records the service's own counters as system metrics (outside the accounting). A
    /// counter's delta is marked reported only once its point was taken in; the points have
    /// reserved room above the memory bound, so a full recorder delays them at worst.
    pub(super) fn record_self_metrics(&self, now: i64) {
        let snap = self.counters.snapshot();
        let mut last = self.last_reported.lock();
        for (name, mt, reason, cur) in accounting_counters(&snap) {
            let slot = last
                .entry((name, mt, reason.unwrap_or("").to_string()))
                .or_insert(0);
            if cur <= *slot {
                continue;
            }
            let tags = counter_tags(mt, reason);
            if self.ingest_self(name, Kind::Counter, (cur - *slot) as f64, tags, now) {
                *slot = cur;
            }
        }
        drop(last);
        self.tenants.report(|tenant, result, reason, n| {
            let mut tags = Tags::from([("result".to_string(), result.to_string())]);
            if !reason.is_empty() {
                tags.insert("reason".to_string(), reason.to_string());
            }
            let key = SeriesKey::new(
                MetricType::System,
                Kind::Counter,
                Some(Arc::from(tenant)),
                "luametrics.tenant.points.count".to_string(),
                tags,
            );
            let mut s = Summary::new(false);
            s.observe(n as f64, now);
            self.ingest_inner(key, s, now, None, true).is_ok()
        });
        for (name, counter) in [
            ("luametrics.flush.rows.count", &self.flushed_rows),
            ("luametrics.flush.errors.count", &self.flush_errors),
        ] {
            let n = counter.swap(0, Relaxed);
            if n > 0 && !self.ingest_self(name, Kind::Counter, n as f64, Tags::new(), now) {
                counter.fetch_add(n, Relaxed);
            }
        }
        self.ingest_self(
            "luametrics.series.active",
            Kind::Gauge,
            self.registry.len() as f64,
            Tags::new(),
            now,
        );
        self.ingest_self(
            "luametrics.flush.backlog_rows",
            Kind::Gauge,
            self.backlog_rows.load(Relaxed) as f64,
            Tags::new(),
            now,
        );
    }

    /// One point of the service's own metrics; whether it was taken in.
    pub(super) fn ingest_self(
        &self,
        name: &'static str,
        kind: Kind,
        value: f64,
        tags: Tags,
        now: i64,
    ) -> bool {
        let key = SeriesKey::new(MetricType::System, kind, None, name.to_string(), tags);
        let mut s = Summary::new(kind == Kind::Histogram);
        s.observe(value, now);
        self.ingest_inner(key, s, now, None, true).is_ok()
    }
}

/// Every accounting counter as (metric name, type, reason tag, cumulative value): the one list
/// both the stored copies and the live exposition are made from.
pub(super) fn accounting_counters(
    acc: &Accounting,
) -> Vec<(&'static str, MetricType, Option<&str>, u64)> {
    let mut out = Vec::new();
    for (mt, a) in [
        (MetricType::System, &acc.system),
        (MetricType::User, &acc.user),
    ] {
        out.push(("luametrics.points.offered.count", mt, None, a.offered));
        out.push(("luametrics.points.accepted.count", mt, None, a.accepted));
        for (name, map) in [
            ("luametrics.points.rejected.count", &a.rejected),
            ("luametrics.points.dropped.count", &a.dropped),
            ("luametrics.points.lost.count", &a.lost),
        ] {
            for (reason, n) in map {
                out.push((name, mt, Some(reason.as_str()), *n));
            }
        }
    }
    out
}

/// Tags of an accounting counter's series.
pub(super) fn counter_tags(mt: MetricType, reason: Option<&str>) -> Tags {
    let mut tags = Tags::from([("metric_type".to_string(), mt.as_str().to_string())]);
    if let Some(r) = reason {
        tags.insert("reason".to_string(), r.to_string());
    }
    tags
}
