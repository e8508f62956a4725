//! What happened to each tenant's points: the ledger a tenant reads its own usage from.
//!
//! The service's accounting is global (operators balance it); a tenant needs its own view:
//! how many of its points were accepted, rejected (by reason), dropped (by reason) or folded
//! into an overflow series, and which of its metric names were involved, so a limit that bites
//! is visible to whoever caused it. Counts are kept per tenant since the process started, and
//! their deltas are recorded each window as `luametrics.tenant.points.count{result, reason}`
//! under the tenant, so a range can be read back from the store. Metric names are kept for at
//! most [`MAX_NAMES`] per tenant (the rest count under `other`).

use dashmap::DashMap;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Distinct metric names kept per tenant for rejections and overflow.
pub const MAX_NAMES: usize = 32;

/// One metric name's trouble: points of it rejected or folded into overflow, by reason.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricTrouble {
    /// The metric name as the script gave it (printable), or `other` past [`MAX_NAMES`].
    pub metric: String,
    /// `overflow`, `rate_limited`, or another rejection reason.
    pub reason: String,
    /// Points.
    pub points: u64,
}

/// A tenant's points since the process started.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TenantPoints {
    /// Points accepted (overflowed ones included).
    pub accepted: u64,
    /// Of the accepted, points folded into an overflow series (a series limit was reached).
    pub overflowed: u64,
    /// Points rejected, by reason.
    pub rejected: BTreeMap<String, u64>,
    /// Points dropped after validation, by reason.
    pub dropped: BTreeMap<String, u64>,
    /// Which metric names were rejected or overflowed, and why.
    pub metrics: Vec<MetricTrouble>,
}

#[derive(Default)]
struct Entry {
    /// `(result, reason)` -> points.
    counts: BTreeMap<(&'static str, String), u64>,
    /// What was recorded to the store already, per key of `counts`.
    reported: BTreeMap<(&'static str, String), u64>,
    /// `(metric, reason)` -> points.
    troubles: BTreeMap<(String, String), u64>,
    /// Counted since the last eviction pass.
    touched: bool,
}

/// Per-tenant point counts.
#[derive(Default)]
pub(crate) struct TenantLedger {
    tenants: DashMap<Arc<str>, Entry>,
    /// Off (`recorder.tenant_usage = false`): nothing is counted.
    off: bool,
}

impl TenantLedger {
    /// A ledger that counts (`on`) or ignores every call.
    pub(crate) fn new(on: bool) -> Self {
        Self {
            tenants: DashMap::new(),
            off: !on,
        }
    }

    fn with(&self, tenant: &str, f: impl FnOnce(&mut Entry)) {
        if self.off {
            return;
        }
        if let Some(mut e) = self.tenants.get_mut(tenant) {
            e.touched = true;
            f(&mut e);
            return;
        }
        let mut e = self.tenants.entry(Arc::from(tenant)).or_default();
        e.touched = true;
        f(&mut e);
    }

    /// Counts `n` points of `tenant` with `result` (`accepted`, `overflowed`, `rejected`,
    /// `dropped`) and `reason` (empty for accepted).
    pub(crate) fn count(&self, tenant: &str, result: &'static str, reason: &str, n: u64) {
        if n == 0 {
            return;
        }
        self.with(tenant, |e| {
            *e.counts.entry((result, reason.to_string())).or_default() += n;
        });
    }

    /// Notes `n` points of `metric` rejected or overflowed for `reason`.
    pub(crate) fn trouble(&self, tenant: &str, metric: &str, reason: &str, n: u64) {
        if n == 0 {
            return;
        }
        self.with(tenant, |e| {
            let key = (metric.to_string(), reason.to_string());
            let names_full = e.troubles.len() >= MAX_NAMES && !e.troubles.contains_key(&key);
            let key = if names_full {
                ("other".to_string(), reason.to_string())
            } else {
                key
            };
            *e.troubles.entry(key).or_default() += n;
        });
    }

    /// The counts not yet recorded: `(tenant, result, reason, delta)`. Each is marked recorded
    /// only when `recorded` says it was taken in.
    pub(crate) fn report(&self, mut recorded: impl FnMut(&str, &'static str, &str, u64) -> bool) {
        for mut t in self.tenants.iter_mut() {
            let tenant = t.key().clone();
            let e = t.value_mut();
            for (key, &cur) in &e.counts {
                let done = e.reported.get(key).copied().unwrap_or(0);
                if cur > done && recorded(&tenant, key.0, &key.1, cur - done) {
                    e.reported.insert(key.clone(), cur);
                }
            }
        }
    }

    /// Forgets tenants that hold nothing (`holding` says who still does), whose counts are
    /// all recorded to the store, and that were not counted since the last pass: a process
    /// serving tenants that come and go keeps only the ones around. A forgotten tenant's
    /// counts start again from zero if it comes back (its history is in the store).
    pub(crate) fn forget_idle(&self, holding: impl Fn(&str) -> bool) {
        self.tenants.retain(|tenant, e| {
            let keep = e.touched
                || holding(tenant)
                || e.counts.iter().any(|(k, n)| e.reported.get(k) != Some(n));
            e.touched = false;
            keep
        });
        if self.tenants.capacity() > 4 * self.tenants.len() + 64 {
            self.tenants.shrink_to_fit();
        }
    }

    /// Whether `tenant` has a ledger entry.
    pub(crate) fn has(&self, tenant: &str) -> bool {
        self.tenants.contains_key(tenant)
    }

    /// Tenants with a ledger entry.
    pub(crate) fn len(&self) -> usize {
        self.tenants.len()
    }

    /// `tenant`'s points since the process started (or since it was last forgotten).
    pub(crate) fn points(&self, tenant: &str) -> TenantPoints {
        let mut out = TenantPoints::default();
        let Some(e) = self.tenants.get(tenant) else {
            return out;
        };
        for ((result, reason), &n) in &e.counts {
            match *result {
                "accepted" => out.accepted += n,
                "overflowed" => out.overflowed += n,
                "rejected" => *out.rejected.entry(reason.clone()).or_default() += n,
                _ => *out.dropped.entry(reason.clone()).or_default() += n,
            }
        }
        out.metrics = e
            .troubles
            .iter()
            .map(|((metric, reason), &points)| MetricTrouble {
                metric: metric.clone(),
                reason: reason.clone(),
                points,
            })
            .collect();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_past_the_bound_count_as_other_and_tenants_stay_apart() {
        let l = TenantLedger::default();
        for i in 0..40 {
            l.trouble("a", &format!("m{i}"), "overflow", 1);
        }
        l.trouble("a", "m0", "overflow", 2);
        l.count("a", "accepted", "", 5);
        l.count("a", "rejected", "rate_limited", 3);
        let p = l.points("a");
        assert_eq!(p.metrics.len(), MAX_NAMES + 1);
        let other = p.metrics.iter().find(|m| m.metric == "other").unwrap();
        assert_eq!(other.points, 40 - MAX_NAMES as u64);
        let m0 = p.metrics.iter().find(|m| m.metric == "m0").unwrap();
        assert_eq!(m0.points, 3);
        assert_eq!((p.accepted, p.rejected["rate_limited"]), (5, 3));
        assert_eq!(l.points("b"), TenantPoints::default());
    }

    #[test]
    fn deltas_are_reported_once_and_retried_when_not_taken() {
        let l = TenantLedger::default();
        l.count("a", "accepted", "", 5);
        let mut seen = Vec::new();
        l.report(|t, r, _, n| {
            seen.push((t.to_string(), r, n));
            false
        });
        l.report(|t, r, _, n| {
            seen.push((t.to_string(), r, n));
            true
        });
        l.report(|t, r, _, n| {
            seen.push((t.to_string(), r, n));
            true
        });
        assert_eq!(
            seen,
            [("a".into(), "accepted", 5), ("a".into(), "accepted", 5)]
        );
    }

    #[test]
    fn a_ledger_turned_off_counts_nothing() {
        let l = TenantLedger::new(false);
        l.count("a", "accepted", "", 5);
        l.trouble("a", "m", "overflow", 1);
        assert_eq!(l.points("a"), TenantPoints::default());
        let mut seen = 0;
        l.report(|_, _, _, _| {
            seen += 1;
            true
        });
        assert_eq!(seen, 0);
        assert_eq!(TenantLedger::new(true).off, TenantLedger::default().off);
    }
}
