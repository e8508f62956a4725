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

/// Most (tenant, pipeline) pairs kept; past it the cache starts over (handles are cheap to
/// make again, and the bound keeps a stream of one-off tenants from growing it forever). A
/// handle's key keeps its charge against the recorder's memory bound while it is held (~0.8
/// KB, 2 x nodes + 1 in use per pair): 1,024 pairs of 3-node pipelines pin ~6 MB of it.
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

/// Handles by (tenant, pipeline address).
#[derive(Default)]
pub(crate) struct SeriesCache {
    map: Mutex<HashMap<Key, Arc<PipelineSeries>>>,
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
            return s.clone();
        }
        // Made outside the lock (the checks take a while); a racing caller's copy is equal.
        let made = Arc::new(PipelineSeries::new(metrics, tenant, pipeline));
        let mut map = self.map.lock();
        // Pipelines replaced by a reload are held by nothing but their entries (the registry
        // and executions in flight hold the current ones): forget them, and their scripts.
        map.retain(|_, s| Arc::strong_count(&s.pipeline) > 1);
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
        map.entry(key).or_insert(made).clone()
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

    fn load(dir: &std::path::Path) -> Pipelines {
        Pipelines::load(&dir.join("pipelines.toml")).unwrap()
    }

    // A reload makes new pipelines; the entries of the old ones, held by nothing else, go (with
    // their scripts) the next time an entry is made, instead of staying until the bound.
    #[test]
    fn pipelines_replaced_by_a_reload_leave_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("pipelines.toml"),
            "[[pipeline]]\nid = \"p\"\ntrigger = \"t\"\n[[pipeline.node]]\nid = \"a\"\nscript = \"a.lua\"\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("a.lua"), "return {}").unwrap();
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
}
