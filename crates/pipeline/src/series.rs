//! The system series every execution records (`pipeline.exec.duration`, and per node
//! `pipeline.node.overhead` and `script.exec.duration_ms`) as handles made once per tenant and
//! pipeline: an execution records three points per node plus one without building a tag map
//! or running the catalog and PII checks for each (they ran when the handles were made).

use crate::definition::Pipeline;
use luametrics_model::{Kind, Tags};
use luametrics_sink::{SeriesHandle, SystemMetrics};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

/// Most (tenant, pipeline) pairs kept, so a stream of one-off tenants cannot grow the cache
/// forever: each handle's key is charged against the recorder's memory bound while it is held
/// (~0.8 KB; 2 x nodes + 3 handles per pair: 1,024 pairs of 3-node pipelines hold ~7 MB),
/// within the part of it tenants' handles may hold; handles it had no room for are not kept.
const MAX_ENTRIES: usize = 1_024;

/// The handles of one pipeline for one tenant.
pub(crate) struct PipelineSeries {
    /// Keeps the pipeline alive, so the address the cache is keyed by is never reused while
    /// the entry exists (a reloaded pipeline is a new `Arc`, a new entry).
    pipeline: Arc<Pipeline>,
    /// Per node (file order): `pipeline.node.overhead`.
    pub node_overhead: Vec<Arc<dyn SeriesHandle>>,
    /// Per node (file order): `script.exec.duration_ms`.
    pub node_duration: Vec<Arc<dyn SeriesHandle>>,
    /// `pipeline.exec.duration` per status: ok, blocked, error.
    exec: [Arc<dyn SeriesHandle>; 3],
}

impl PipelineSeries {
    fn new(metrics: &dyn SystemMetrics, tenant: &str, pipeline: &Arc<Pipeline>) -> Self {
        let node = |name: &str| {
            pipeline
                .nodes
                .iter()
                .map(|n| {
                    let tags = Tags::from([("script_id".to_string(), n.script.id().to_string())]);
                    metrics.series(name, Kind::Histogram, tags, Some(tenant))
                })
                .collect()
        };
        let exec = |status: &str| {
            let tags = Tags::from([
                ("pipeline_id".to_string(), pipeline.id.clone()),
                ("status".to_string(), status.to_string()),
                ("trigger_event".to_string(), pipeline.trigger.clone()),
            ]);
            metrics.series(
                "pipeline.exec.duration",
                Kind::Histogram,
                tags,
                Some(tenant),
            )
        };
        Self {
            pipeline: pipeline.clone(),
            node_overhead: node("pipeline.node.overhead"),
            node_duration: node("script.exec.duration_ms"),
            exec: [exec("ok"), exec("blocked"), exec("error")],
        }
    }

    /// Whether every handle may be kept (the recorder charged them all).
    fn keepable(&self) -> bool {
        self.node_overhead
            .iter()
            .chain(&self.node_duration)
            .chain(&self.exec)
            .all(|h| h.keepable())
    }

    /// The `pipeline.exec.duration` series of a status (`ok`, `blocked` or `error`).
    pub fn exec(&self, status: &str) -> &dyn SeriesHandle {
        match status {
            "ok" => self.exec[0].as_ref(),
            "blocked" => self.exec[1].as_ref(),
            _ => self.exec[2].as_ref(),
        }
    }
}

/// A tenant and the address of a pipeline (kept alive by its entry).
type Key = (Arc<str>, usize);

/// Handles by (tenant, pipeline address), in two generations: a pair used since the last
/// turn is in `young`; at `MAX_ENTRIES / 2` young pairs the old generation is dropped and the
/// young one becomes old, so the pairs in use stay (a hit in `old` moves back to `young`)
/// and the cache never empties at once under many tenants.
#[derive(Default)]
pub(crate) struct SeriesCache {
    map: Mutex<Generations>,
}

#[derive(Default)]
struct Generations {
    young: HashMap<Key, Arc<PipelineSeries>>,
    old: HashMap<Key, Arc<PipelineSeries>>,
}

impl Generations {
    /// The pair's handles if kept, moved to the young generation.
    fn get(&mut self, key: &Key) -> Option<Arc<PipelineSeries>> {
        if let Some(s) = self.young.get(key) {
            return Some(s.clone());
        }
        let s = self.old.remove(key)?;
        self.insert(key.clone(), s.clone());
        Some(s)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }

    #[cfg(test)]
    fn values(&self) -> impl Iterator<Item = &Arc<PipelineSeries>> {
        self.young.values().chain(self.old.values())
    }

    fn insert(&mut self, key: Key, s: Arc<PipelineSeries>) {
        if self.young.len() >= MAX_ENTRIES / 2 {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(key, s);
    }
}

impl SeriesCache {
    /// The handles of `pipeline` for `tenant`, made on first use.
    pub fn get(
        &self,
        metrics: &dyn SystemMetrics,
        tenant: &Arc<str>,
        pipeline: &Arc<Pipeline>,
    ) -> Arc<PipelineSeries> {
        let key = (tenant.clone(), Arc::as_ptr(pipeline) as usize);
        if let Some(s) = self.map.lock().get(&key) {
            return s;
        }
        // Made outside the lock (the checks take a while); a racing caller's copy is equal.
        let mut made = Arc::new(PipelineSeries::new(metrics, tenant, pipeline));
        if !made.keepable() {
            // The recorder had no room to charge them: tenants' handles hold their part of
            // the bound. The pairs not used since the last turn give theirs back and the
            // young generation turns old (a pair used again moves back), so the part is held
            // by pairs in use, not by tenants long gone; then the pair is made once more.
            // Without this nothing was ever inserted again, so nothing was ever let go.
            let stale = {
                let mut map = self.map.lock();
                let old = std::mem::take(&mut map.old);
                map.old = std::mem::take(&mut map.young);
                old
            };
            drop((stale, made));
            made = Arc::new(PipelineSeries::new(metrics, tenant, pipeline));
            if !made.keepable() {
                // Used for this execution only, never holding memory outside the bound.
                return made;
            }
        }
        let mut map = self.map.lock();
        if let Some(s) = map.get(&key) {
            return s;
        }
        // Pipelines replaced by a reload are held by nothing but their entries (the registry
        // and executions in flight hold the current ones): forget them, and their scripts.
        map.young.retain(|_, s| Arc::strong_count(&s.pipeline) > 1);
        map.old.retain(|_, s| Arc::strong_count(&s.pipeline) > 1);
        map.insert(key, made.clone());
        made
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Pipelines;

    struct Nothing;
    impl SeriesHandle for Nothing {
        fn record(&self, _: f64) {}
    }

    struct Fake;
    impl SystemMetrics for Fake {
        fn now_ms(&self) -> i64 {
            0
        }
        fn series(&self, _: &str, _: Kind, _: Tags, _: Option<&str>) -> Arc<dyn SeriesHandle> {
            Arc::new(Nothing)
        }
    }

    /// One pipeline `p` on trigger `t` with one node.
    fn write_one_node(dir: &std::path::Path) {
        std::fs::write(
            dir.join("pipelines.toml"),
            "[[pipeline]]\nid = \"p\"\ntrigger = \"t\"\n[[pipeline.node]]\nid = \"a\"\nscript = \"a.lua\"\n",
        )
        .unwrap();
        std::fs::write(dir.join("a.lua"), "return {}").unwrap();
    }

    fn load(dir: &std::path::Path) -> Pipelines {
        Pipelines::load(&dir.join("pipelines.toml")).unwrap()
    }

    // A reload makes new pipelines; the entries of the old ones, held by nothing else, go (with
    // their scripts) the next time an entry is made, instead of staying until the bound.
    #[test]
    fn pipelines_replaced_by_a_reload_leave_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        write_one_node(dir.path());
        let cache = SeriesCache::default();
        let tenant: Arc<str> = Arc::from("acme");
        let old = load(dir.path());
        let first = old.for_trigger("t").unwrap().clone();
        let a = cache.get(&Fake, &tenant, &first);
        assert!(Arc::ptr_eq(&a, &cache.get(&Fake, &tenant, &first)));
        let new = load(dir.path());
        let second = new.for_trigger("t").unwrap().clone();
        // Still in use (an execution holds it): kept.
        cache.get(&Fake, &tenant, &second);
        assert_eq!(cache.map.lock().len(), 2);
        drop((old, first, a));
        cache.get(&Fake, &Arc::from("globex"), &second);
        assert_eq!(cache.map.lock().len(), 2, "the old pipeline's entry went");
        assert!(cache
            .map
            .lock()
            .values()
            .all(|s| Arc::ptr_eq(&s.pipeline, &second)));
    }

    /// Handles that may be kept while fewer than `room` are alive (a recorder's budget).
    struct Budget {
        live: Arc<std::sync::atomic::AtomicUsize>,
        room: usize,
    }
    struct Counted(Arc<std::sync::atomic::AtomicUsize>, bool);
    impl SeriesHandle for Counted {
        fn record(&self, _: f64) {}
        fn keepable(&self) -> bool {
            self.1
        }
    }
    impl Drop for Counted {
        fn drop(&mut self) {
            if self.1 {
                self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    }
    impl SystemMetrics for Budget {
        fn now_ms(&self) -> i64 {
            0
        }
        fn series(&self, _: &str, _: Kind, _: Tags, _: Option<&str>) -> Arc<dyn SeriesHandle> {
            use std::sync::atomic::Ordering::SeqCst;
            let charged = self
                .live
                .fetch_update(SeqCst, SeqCst, |n| (n < self.room).then_some(n + 1))
                .is_ok();
            Arc::new(Counted(self.live.clone(), charged))
        }
    }

    // Review of round 12's fix: once tenants' handles filled their part of the bound, no pair
    // was inserted again, so none was let go, and a tenant arriving later was never cached.
    // Pairs not used since the last turn now give their room back when a pair finds none.
    #[test]
    fn a_full_handle_budget_is_given_back_by_pairs_gone_idle() {
        let dir = tempfile::tempdir().unwrap();
        write_one_node(dir.path());
        let pipelines = load(dir.path());
        let p = pipelines.for_trigger("t").unwrap().clone();
        let cache = SeriesCache::default();
        // Five handles a pair (one node): room for four pairs.
        let budget = Budget {
            live: Default::default(),
            room: 20,
        };
        for i in 0..100 {
            cache.get(&budget, &Arc::from(format!("once-{i}")), &p);
        }
        let steady: Arc<str> = Arc::from("steady");
        let first = cache.get(&budget, &steady, &p);
        assert!(first.keepable(), "a new tenant found no room for good");
        assert!(Arc::ptr_eq(&first, &cache.get(&budget, &steady, &p)));
    }

    // Under a stream of one-off tenants the cache stays within its bound, and a pair in use
    // all along keeps its handles (the cache never empties at once).
    #[test]
    fn many_tenants_stay_within_the_bound_and_pairs_in_use_stay() {
        let dir = tempfile::tempdir().unwrap();
        write_one_node(dir.path());
        let pipelines = load(dir.path());
        let p = pipelines.for_trigger("t").unwrap().clone();
        let cache = SeriesCache::default();
        let regular: Arc<str> = Arc::from("regular");
        let first = cache.get(&Fake, &regular, &p);
        for i in 0..10 * MAX_ENTRIES {
            cache.get(&Fake, &Arc::from(format!("once-{i}")), &p);
            assert!(cache.map.lock().len() <= MAX_ENTRIES);
            if i % 100 == 0 {
                assert!(Arc::ptr_eq(&first, &cache.get(&Fake, &regular, &p)));
            }
        }
    }
}
