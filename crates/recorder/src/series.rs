//! Series identity, the per-tenant series limits with the overflow series, and idle eviction.

use dashmap::DashMap;
use luametrics_model::{Kind, Limits, MetricType, Tags};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::sync::Arc;

/// The identity of a series (the window is not part of it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct SeriesKey {
    pub metric_type: MetricType,
    pub kind: Kind,
    pub tenant: Option<Arc<str>>,
    pub name: String,
    pub tags: Tags,
}

impl SeriesKey {
    pub fn heap_bytes(&self) -> usize {
        // BTreeMap nodes and String headers, roughly; precise enough for a memory bound.
        self.name.len()
            + self.tenant.as_ref().map_or(0, |t| t.len())
            + self
                .tags
                .iter()
                .map(|(k, v)| k.len() + v.len() + 64)
                .sum::<usize>()
    }

    /// The overflow series of the same name (OpenTelemetry's rule), so totals stay exact.
    pub fn into_overflow(mut self) -> Self {
        self.tags = Tags::from([("overflow".to_string(), "true".to_string())]);
        self
    }
}

/// A series key as a recording brings it: built for this point, or shared by a handle that
/// built it once (so a point through a handle allocates no key).
pub(crate) enum KeyIn {
    Owned(SeriesKey),
    Shared(Arc<SeriesKey>),
}

impl KeyIn {
    pub fn get(&self) -> &SeriesKey {
        match self {
            KeyIn::Owned(k) => k,
            KeyIn::Shared(k) => k,
        }
    }

    pub fn into_arc(self) -> Arc<SeriesKey> {
        match self {
            KeyIn::Owned(k) => Arc::new(k),
            KeyIn::Shared(k) => k,
        }
    }
}

impl From<SeriesKey> for KeyIn {
    fn from(k: SeriesKey) -> Self {
        KeyIn::Owned(k)
    }
}

impl From<Arc<SeriesKey>> for KeyIn {
    fn from(k: Arc<SeriesKey>) -> Self {
        KeyIn::Shared(k)
    }
}

#[derive(Default)]
struct Counts {
    per_name: HashMap<(Arc<str>, String), usize>,
    per_tenant: HashMap<Arc<str>, usize>,
}

/// Known user series with their last use; decides whether a new series fits the limits.
#[derive(Default)]
pub(crate) struct Registry {
    seen: DashMap<SeriesKey, AtomicI64, ahash::RandomState>,
    /// Taken only when a series is new or evicted, so the limits are exact under concurrency.
    counts: Mutex<Counts>,
}

impl Registry {
    /// Returns the key to record under: the series itself, or its overflow series when a new
    /// series would pass a limit. The flag says whether it overflowed.
    pub fn admit(&self, key: SeriesKey, now: i64, limits: &Limits) -> (SeriesKey, bool) {
        let Some(tenant) = key.tenant.clone() else {
            return (key, false);
        };
        if key.metric_type != MetricType::User {
            return (key, false);
        }
        if let Some(seen) = self.seen.get(&key) {
            seen.store(now, Relaxed);
            return (key, false);
        }
        let mut counts = self.counts.lock();
        if let Some(seen) = self.seen.get(&key) {
            seen.store(now, Relaxed);
            return (key, false);
        }
        let name_key = (tenant.clone(), key.name.clone());
        let per_name = counts.per_name.get(&name_key).copied().unwrap_or(0);
        let per_tenant = counts.per_tenant.get(&tenant).copied().unwrap_or(0);
        if per_name >= limits.max_series_per_name || per_tenant >= limits.max_series_per_tenant {
            drop(counts);
            let overflow = key.into_overflow();
            // The overflow series is tracked for eviction but not counted against the limits.
            self.seen
                .entry(overflow.clone())
                .or_insert_with(|| AtomicI64::new(now))
                .store(now, Relaxed);
            return (overflow, true);
        }
        *counts.per_name.entry(name_key).or_insert(0) += 1;
        *counts.per_tenant.entry(tenant).or_insert(0) += 1;
        self.seen.insert(key.clone(), AtomicI64::new(now));
        (key, false)
    }

    /// Forgets series unused since `cutoff`; returns how many were evicted.
    pub fn evict_idle(&self, cutoff: i64) -> usize {
        let mut counts = self.counts.lock();
        let mut evicted = 0;
        self.seen.retain(|key, last| {
            if last.load(Relaxed) >= cutoff {
                return true;
            }
            evicted += 1;
            let is_overflow =
                key.tags.len() == 1 && key.tags.get("overflow").map(String::as_str) == Some("true");
            if let (Some(tenant), false) = (&key.tenant, is_overflow) {
                let name_key = (tenant.clone(), key.name.clone());
                if let Some(n) = counts.per_name.get_mut(&name_key) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        counts.per_name.remove(&name_key);
                    }
                }
                if let Some(n) = counts.per_tenant.get_mut(tenant) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        counts.per_tenant.remove(tenant);
                    }
                }
            }
            false
        });
        evicted
    }

    /// Series currently tracked.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Every tenant with the series it holds, most first.
    pub fn tenants(&self) -> Vec<(String, usize)> {
        let mut v: Vec<(String, usize)> = self
            .counts
            .lock()
            .per_tenant
            .iter()
            .map(|(t, n)| (t.to_string(), *n))
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    }

    /// Series a tenant holds against its limit.
    pub fn tenant_series(&self, tenant: &str) -> usize {
        self.counts
            .lock()
            .per_tenant
            .get(tenant)
            .copied()
            .unwrap_or(0)
    }
}
