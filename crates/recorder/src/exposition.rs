//! Cumulative state of every series for scrapes (`/metrics`): counters since start, gauges'
//! last value, histograms' merged sketch. Folded in by the flusher when windows seal, so the
//! recording hot path never touches it, and read shard by shard so a scrape of 100k series
//! never holds a lock that recording needs.

use crate::series::{owner, Memory, SeriesKey};
use luametrics_model::{Kind, MetricType, Tags};
use luametrics_sketch::{Sketch, Summary};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// One series as a scrape sees it.
#[derive(Debug, Clone)]
pub struct ExposedSeries {
    /// System or user.
    pub metric_type: MetricType,
    /// Counter, gauge or histogram.
    pub kind: Kind,
    /// Tenant (user metrics, or per-tenant system metrics).
    pub tenant: Option<String>,
    /// Metric name.
    pub name: String,
    /// Tags.
    pub tags: Tags,
    /// Counter total since start, or the gauge's last value, or the histogram's sum.
    pub value: f64,
    /// Number of points since start.
    pub count: u64,
    /// The histogram's distribution since start.
    pub sketch: Option<Sketch>,
}

struct Cumulative {
    summary: Summary,
    updated_ms: i64,
}

/// A shared series key that compares by pointer first: the accumulators hand the same `Arc`
/// window after window, so the steady-state lookup never compares key contents.
#[derive(Clone)]
struct Shared(Arc<SeriesKey>);

impl PartialEq for Shared {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || *self.0 == *other.0
    }
}

impl Eq for Shared {}

impl std::hash::Hash for Shared {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state)
    }
}

type Map = HashMap<Shared, Cumulative, ahash::RandomState>;

pub(crate) struct Exposition {
    shards: Vec<Mutex<Map>>,
    hasher: ahash::RandomState,
}

/// What an exposition entry costs besides its sketch: its map slot, and the key it keeps alive
/// unless the key carries its own charge.
fn entry_cost(key: &SeriesKey) -> usize {
    crate::series::map_slot::<(Shared, Cumulative)>() + key.uncharged_bytes()
}

impl Exposition {
    pub fn new(shards: usize) -> Self {
        Self {
            shards: (0..shards.max(1))
                .map(|_| Mutex::new(Map::default()))
                .collect(),
            hasher: ahash::RandomState::new(),
        }
    }

    fn shard(&self, key: &SeriesKey) -> &Mutex<Map> {
        &self.shards[(self.hasher.hash_one(key) as usize) % self.shards.len()]
    }

    /// Folds a sealed window of `key` in (the key is shared, never copied). Returns the
    /// bytes it grew by, which count against the recorder's memory bound: a new entry (its key
    /// outlives the window's accumulator here) and its histogram sketch's growth (a sketch may
    /// hold 64 KiB), kept until the series is idle for the eviction time.
    pub fn fold(&self, key: &Arc<SeriesKey>, summary: &Summary, now_ms: i64) -> usize {
        let mut shard = self.shard(key).lock();
        let key = Shared(key.clone());
        if let Some(c) = shard.get_mut(&key) {
            let before = c.summary.heap_bytes();
            // Same accuracy everywhere: merging cannot fail.
            let _ = c.summary.merge(summary);
            c.updated_ms = now_ms;
            return c.summary.heap_bytes().saturating_sub(before);
        }
        let mut c = Cumulative {
            summary: Summary::new(key.0.kind == Kind::Histogram),
            updated_ms: now_ms,
        };
        let _ = c.summary.merge(summary);
        let grown = c.summary.heap_bytes() + entry_cost(&key.0);
        shard.insert(key, c);
        grown
    }

    /// Makes room for up to `series` series spread over the shards (no-op when the maps already
    /// hold that many: reserving beyond the length would rehash them).
    pub fn reserve(&self, series: usize) {
        let per_shard = series / self.shards.len();
        for shard in &self.shards {
            let mut map = shard.lock();
            let missing = per_shard.saturating_sub(map.len());
            map.reserve(missing);
        }
    }

    pub fn snapshot(&self) -> Vec<ExposedSeries> {
        let mut out = Vec::new();
        for shard in &self.shards {
            // Copy under the shard lock, encode later without it.
            let shard = shard.lock();
            out.reserve(shard.len());
            for (Shared(k), c) in shard.iter() {
                out.push(ExposedSeries {
                    metric_type: k.metric_type,
                    kind: k.kind,
                    tenant: k.tenant.as_ref().map(|t| t.to_string()),
                    name: k.name.clone(),
                    tags: k.tags.clone(),
                    value: match k.kind {
                        Kind::Gauge => c.summary.last,
                        _ => c.summary.sum,
                    },
                    count: c.summary.samples,
                    sketch: c.summary.sketch.clone(),
                });
            }
        }
        out
    }

    /// Lets go of series not updated since `cutoff_ms`, giving back to `memory` what `fold`
    /// charged for them.
    pub fn evict_idle(&self, cutoff_ms: i64, memory: &Memory) {
        for shard in &self.shards {
            shard.lock().retain(|k, c| {
                let keep = c.updated_ms >= cutoff_ms;
                if !keep {
                    memory.release_for(owner(&k.0), c.summary.heap_bytes() + entry_cost(&k.0));
                }
                keep
            });
            crate::service::shrink_map(&mut shard.lock());
        }
    }

    /// Under memory pressure: lets go of series not updated since `before_ms` until `memory`
    /// is at most `low`: first those of tenants past their share of the bound (`first`), then
    /// the rest, least recently updated first. Their rows are written; a scrape shows a series
    /// again, from zero, when it is next recorded (a counter reset to Prometheus). Gives back
    /// what `fold` charged for each (a key's own charge comes back when its last holder lets
    /// it go) and returns the series evicted.
    pub fn evict_oldest(
        &self,
        before_ms: i64,
        memory: &Memory,
        low: usize,
        first: impl Fn(&SeriesKey) -> bool,
    ) -> usize {
        let mut candidates: Vec<(bool, i64, usize, Shared)> = Vec::new();
        for (i, shard) in self.shards.iter().enumerate() {
            let shard = shard.lock();
            candidates.extend(
                shard
                    .iter()
                    .filter(|(_, c)| c.updated_ms < before_ms)
                    .map(|(k, c)| (!first(&k.0), c.updated_ms, i, k.clone())),
            );
        }
        candidates.sort_unstable_by_key(|(later, updated, _, _)| (*later, *updated));
        let mut evicted = 0;
        for (_, _, i, key) in candidates.drain(..) {
            if memory.load(Relaxed) <= low {
                break;
            }
            let mut shard = self.shards[i].lock();
            if shard.get(&key).is_some_and(|c| c.updated_ms < before_ms) {
                if let Some(c) = shard.remove(&key) {
                    memory.release_for(owner(&key.0), c.summary.heap_bytes() + entry_cost(&key.0));
                    evicted += 1;
                }
            }
            // `key` goes here: the last holder of a key gives its charge back.
        }
        // The candidates not reached go back to their holders.
        drop(candidates);
        for shard in &self.shards {
            crate::service::shrink_map(&mut shard.lock());
        }
        evicted
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// Tenants with a series held here.
    pub fn tenants_held(&self) -> std::collections::HashSet<Arc<str>> {
        let mut out = std::collections::HashSet::new();
        for shard in &self.shards {
            out.extend(shard.lock().keys().filter_map(|k| k.0.tenant.clone()));
        }
        out
    }
}
