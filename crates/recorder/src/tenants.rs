//! What happened to each tenant's points: the ledger a tenant reads its own usage from.
//!
//! The service's accounting is global (operators balance it); a tenant needs its own view:
//! how many of its points were accepted, rejected (by reason), dropped (by reason) or folded
//! into an overflow series, and which of its metric names were involved, so a limit that bites
//! is visible to whoever caused it. Counts are kept per tenant since the process started, and
//! their deltas are recorded each window as `luametrics.tenant.points.count{result, reason}`
//! under the tenant, so a range can be read back from the store. Metric names are kept for at
//! most [`MAX_NAMES`] per tenant (the rest count under `other`).
//!
//! The ledger's memory is charged against the recorder's bound and held to an eighth of it
//! ([`LEDGER_SHARE`]): adversary round 11 cycled tenant ids whose executions each rejected 32
//! long names and grew the process to 75x an 8 MiB bound (about 10 KB per id, uncharged, kept
//! an hour). Past its room a tenant gets no new entry nor a new reason: its points are counted
//! as unattributed (`luametrics.tenant.usage.unattributed.count`) instead (a new metric name
//! with no room is only left out of its list, or counted under `other`); the service's own
//! accounting stays exact either way.

use crate::series::{map_slot, Memory, ALLOC_OVERHEAD};
use dashmap::DashMap;
use serde::Serialize;
use std::collections::BTreeMap;
use std::mem::size_of;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

/// The ledger's part of the memory bound: it is a view for tenants, and must not take the
/// room their points need.
pub const LEDGER_SHARE: usize = 8;

type CountKey = (&'static str, String);
type TroubleKey = (String, String);

/// What a B-tree map's entry of `K` and `V` costs: nodes are at least half full, so each
/// entry pays for up to two slots.
const fn tree_entry<K, V>() -> usize {
    2 * (size_of::<K>() + size_of::<V>())
}

/// A B-tree map's first node: eleven slots and the allocator's overhead.
const fn tree_leaf<K, V>() -> usize {
    11 * (size_of::<K>() + size_of::<V>()) + 16 + ALLOC_OVERHEAD
}

/// A string's heap, as the allocator hands it out.
fn text_bytes(s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        s.len() + ALLOC_OVERHEAD
    }
}

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
    counts: BTreeMap<CountKey, u64>,
    /// What was recorded to the store already, per key of `counts`.
    reported: BTreeMap<CountKey, u64>,
    /// `(metric, reason)` -> points.
    troubles: BTreeMap<TroubleKey, u64>,
    /// Counted since the last eviction pass.
    touched: bool,
    /// Counted since the last pass under memory pressure.
    recent: bool,
    /// Bytes charged for the entry.
    bytes: usize,
}

/// Per-tenant point counts.
pub(crate) struct TenantLedger {
    tenants: DashMap<Arc<str>, Entry>,
    /// Off (`recorder.tenant_usage = false`): nothing is counted.
    off: bool,
    /// The recorder's memory and its bound, which the entries are charged against.
    memory: Memory,
    max: usize,
    /// Bytes the entries hold (at most `max / LEDGER_SHARE`).
    held: AtomicUsize,
    /// Points no tenant's entry had room for.
    unattributed: AtomicU64,
}

impl Default for TenantLedger {
    /// A ledger that counts, with no bound.
    fn default() -> Self {
        Self::new(true, Memory::default(), usize::MAX)
    }
}

impl TenantLedger {
    /// A ledger that counts (`on`) or ignores every call, charging its entries to `memory`
    /// within `max`.
    pub(crate) fn new(on: bool, memory: Memory, max: usize) -> Self {
        Self {
            tenants: DashMap::new(),
            off: !on,
            memory,
            max,
            held: AtomicUsize::new(0),
            unattributed: AtomicU64::new(0),
        }
    }

    /// Charges `bytes` if the ledger and the bound have room; whether they did.
    fn charge(&self, bytes: usize) -> bool {
        let room = self.max / LEDGER_SHARE;
        let mut cur = self.held.load(Relaxed);
        loop {
            if cur.saturating_add(bytes) > room {
                return false;
            }
            match self
                .held
                .compare_exchange_weak(cur, cur + bytes, Relaxed, Relaxed)
            {
                Ok(_) => break,
                Err(actual) => cur = actual,
            }
        }
        if self.memory.charge(bytes, self.max) {
            return true;
        }
        self.held.fetch_sub(bytes, Relaxed);
        false
    }

    fn release(&self, bytes: usize) {
        self.held.fetch_sub(bytes, Relaxed);
        self.memory.fetch_sub(bytes, Relaxed);
    }

    /// Runs `f` on `tenant`'s entry, made (and charged) if there is room; `false` when there
    /// is none.
    fn with(&self, tenant: &str, f: impl FnOnce(&Self, &mut Entry)) -> bool {
        if let Some(mut e) = self.tenants.get_mut(tenant) {
            e.touched = true;
            e.recent = true;
            f(self, &mut e);
            return true;
        }
        let base = map_slot::<(Arc<str>, Entry)>()
            + 2 * size_of::<usize>()
            + tenant.len()
            + ALLOC_OVERHEAD
            + 2 * tree_leaf::<CountKey, u64>()
            + tree_leaf::<TroubleKey, u64>();
        if !self.charge(base) {
            return false;
        }
        let mut e = self.tenants.entry(Arc::from(tenant)).or_default();
        if e.bytes > 0 {
            // Made by another thread meanwhile.
            self.release(base);
        } else {
            e.bytes = base;
        }
        e.touched = true;
        e.recent = true;
        f(self, &mut e);
        true
    }

    /// Counts `n` points of `tenant` with `result` (`accepted`, `overflowed`, `rejected`,
    /// `dropped`) and `reason` (empty for accepted); unattributed when there is no room.
    pub(crate) fn count(&self, tenant: &str, result: &'static str, reason: &str, n: u64) {
        if n == 0 || self.off {
            return;
        }
        let mut counted = false;
        let made = self.with(tenant, |ledger, e| {
            if let Some(c) = e.counts.get_mut(&(result, reason.to_string())) {
                *c += n;
                counted = true;
                return;
            }
            // In `counts` and, once reported, in `reported`.
            let cost = 2 * (tree_entry::<CountKey, u64>() + text_bytes(reason));
            if ledger.charge(cost) {
                e.bytes += cost;
                e.counts.insert((result, reason.to_string()), n);
                counted = true;
            }
        });
        if !(made && counted) {
            self.unattributed.fetch_add(n, Relaxed);
        }
    }

    /// Notes `n` points of `metric` rejected or overflowed for `reason` (past [`MAX_NAMES`]
    /// or the ledger's room, under `other`; with no room for that either, not at all).
    pub(crate) fn trouble(&self, tenant: &str, metric: &str, reason: &str, n: u64) {
        if n == 0 || self.off {
            return;
        }
        self.with(tenant, |ledger, e| {
            let key = (metric.to_string(), reason.to_string());
            if let Some(c) = e.troubles.get_mut(&key) {
                *c += n;
                return;
            }
            let cost =
                |m: &str| tree_entry::<TroubleKey, u64>() + text_bytes(m) + text_bytes(reason);
            if e.troubles.len() < MAX_NAMES && ledger.charge(cost(metric)) {
                e.bytes += cost(metric);
                e.troubles.insert(key, n);
                return;
            }
            let other = ("other".to_string(), reason.to_string());
            if let Some(c) = e.troubles.get_mut(&other) {
                *c += n;
            } else if ledger.charge(cost("other")) {
                e.bytes += cost("other");
                e.troubles.insert(other, n);
            }
        });
    }

    /// Points no tenant's entry had room for, since the process started.
    pub(crate) fn unattributed(&self) -> u64 {
        self.unattributed.load(Relaxed)
    }

    /// Bytes the entries hold.
    pub(crate) fn held(&self) -> usize {
        self.held.load(Relaxed)
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
            let keep = e.touched || holding(tenant) || !e.all_reported();
            e.touched = false;
            if !keep {
                self.release(e.bytes);
            }
            keep
        });
        if self.tenants.capacity() > 4 * self.tenants.len() + 64 {
            self.tenants.shrink_to_fit();
        }
    }

    /// Under memory pressure: forgets the tenants not counted since the last such pass whose
    /// counts are all recorded to the store, whatever they hold (a tenant's series keep it
    /// for an hour). Their history is in the store; `since_start` starts again from zero.
    pub(crate) fn forget_quiet(&self) {
        self.tenants.retain(|_, e| {
            let keep = e.recent || !e.all_reported();
            e.recent = false;
            if !keep {
                self.release(e.bytes);
            }
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

impl Entry {
    /// Whether every count is recorded to the store.
    fn all_reported(&self) -> bool {
        self.counts
            .iter()
            .all(|(k, n)| self.reported.get(k) == Some(n))
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
        let l = TenantLedger::new(false, Memory::default(), usize::MAX);
        l.count("a", "accepted", "", 5);
        l.trouble("a", "m", "overflow", 1);
        assert_eq!(l.points("a"), TenantPoints::default());
        let mut seen = 0;
        l.report(|_, _, _, _| {
            seen += 1;
            true
        });
        assert_eq!(seen, 0);
        assert!(!TenantLedger::default().off);
    }
}
