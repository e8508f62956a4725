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
/// make again, and the bound keeps a stream of one-off tenants from growing it forever).
const MAX_ENTRIES: usize = 4_096;

/// The handles of one pipeline for one tenant.
pub(crate) struct PipelineSeries {
    /// Keeps the pipeline alive, so the address the cache is keyed by is never reused while
    /// the entry exists (a reloaded pipeline is a new `Arc`, a new entry).
    _pipeline: Arc<Pipeline>,
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
            _pipeline: pipeline.clone(),
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
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
        map.entry(key).or_insert(made).clone()
    }
}
