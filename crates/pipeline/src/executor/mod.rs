//! The executor: runs a trigger's pipeline for a tenant, layer by layer (a chain of single
//! nodes in one hand-off to an engine), merges contexts, applies blocks and `on_error`, records
//! the execution's metrics and hands a trace to the writer. Returns an `Outcome` with the time
//! split of every node.
//!
//! Why ~600 lines: half of it is the public outcome types (`Decision`, `NodeStatus`,
//! `NodeReport`, `Outcome`...) with their docs; the run itself is in three steps (`run_chain`,
//! `run_layers`, `finish`), and settling each node's result lives in `progress.rs`.

mod progress;

use crate::series::{PipelineSeries, SeriesCache};
use crate::{OnError, Pipeline, Pipelines, TraceSampler, TraceWriter};
use luametrics_engine::{
    printable, Admission, BudgetSpent, Engine, EnginePool, Execution, Job, PoolError, Ran,
    ScriptError, Timings, Warning as EngineWarning,
};
use luametrics_model::{Kind, Tags};
use luametrics_sink::SystemMetrics;
use luametrics_store::{SpanRecord, TraceRecord};
use progress::Progress;
use serde::Serialize;
use serde_json::{Map, Value as Json};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

/// What the host should do.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "decision", rename_all = "lowercase")]
#[non_exhaustive]
pub enum Decision {
    /// Go ahead.
    Allow,
    /// A script refused (`{ allow = false, reason = ... }`).
    Block {
        /// The script's reason.
        reason: String,
        /// The node that blocked.
        node: String,
    },
    /// A node with `on_error = "fail"` failed.
    Error {
        /// The failing node.
        node: String,
        /// Stable error code (`runtime_error`, `timeout`, ...).
        code: String,
        /// The message.
        message: String,
    },
}

impl Decision {
    /// `allow`, `block` or `error`: the decision's name in traces and reports.
    pub fn as_str(&self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Block { .. } => "block",
            Decision::Error { .. } => "error",
        }
    }

    /// `ok`, `blocked` or `error`: the `status` of traces and `pipeline.exec.duration`.
    pub fn status(&self) -> &'static str {
        match self {
            Decision::Allow => "ok",
            Decision::Block { .. } => "blocked",
            Decision::Error { .. } => "error",
        }
    }
}

/// What became of one node of an execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum NodeStatus {
    /// It ran and let the pipeline go on.
    Ok,
    /// It ran and returned `{ allow = false }`.
    Blocked,
    /// It failed (a script error, or no engine could be had).
    Error,
    /// It ran past its time limit.
    Timeout,
    /// It never ran (an earlier node blocked or failed the pipeline).
    Skipped,
}

impl NodeStatus {
    /// The stable text of traces, spans and the HTTP API.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Ok => "ok",
            NodeStatus::Blocked => "blocked",
            NodeStatus::Error => "error",
            NodeStatus::Timeout => "timeout",
            NodeStatus::Skipped => "skipped",
        }
    }
}

impl std::fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One node's part of an outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct NodeReport {
    /// Node id.
    pub node: String,
    /// Script id.
    pub script: String,
    /// What became of it.
    pub status: NodeStatus,
    /// The error, when it failed.
    pub error: Option<String>,
    /// Its time split.
    pub timings: Timings,
    /// Metric points accepted.
    pub accepted: u64,
    /// Metric points the helpers took but the recorder dropped (its memory bound, a
    /// shutdown): counted by reason in the tenant's usage; here so a caller sees them at once
    /// (adversary round 12: they were in neither `accepted` nor `rejected`).
    pub dropped: u64,
    /// Metric points rejected, by reason.
    pub rejected: BTreeMap<String, u64>,
    /// What it printed.
    pub log: Vec<String>,
    /// Its rejected metrics, as data.
    pub warnings: Vec<EngineWarning>,
}

/// Something an execution did not do as asked, as data: a rejected metric, a node that failed
/// and was skipped (`on_error = "continue"`), a result that was ignored.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Warning {
    /// The node it concerns.
    pub node: String,
    /// `metric_rejected`, `node_failed` or `result_ignored`.
    pub code: String,
    /// The rejected metric's name (for `metric_rejected`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    /// The reason code: a `helpers.metrics` reason, or the failed node's error code.
    pub reason: String,
    /// How many times it happened in the execution.
    pub count: u64,
    /// The same, as one line of text.
    pub message: String,
}

/// Where a pipeline execution's time went. `total_ms` is wall time; the other parts are sums
/// over nodes plus the executor's own work in `overhead_ms`. When nodes ran concurrently, the
/// node parts can add up to more than the wall time; the spans hold each node's exact split.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct PipelineTimings {
    /// Wall time.
    pub total_ms: f64,
    /// Pool checkouts.
    pub wait_ms: f64,
    /// Lua VM time.
    pub script_ms: f64,
    /// Host helper calls.
    pub helpers_ms: f64,
    /// Everything else.
    pub overhead_ms: f64,
}

/// The result of `execute(trigger, tenant, event)`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Outcome {
    /// The pipeline that ran.
    pub pipeline_id: String,
    /// Id of its trace (written when sampled).
    pub trace_id: String,
    /// Allow, block or error.
    pub decision: Decision,
    /// The merged context after the last node.
    pub context: Json,
    /// Time split.
    pub timings: PipelineTimings,
    /// Rejected metrics, skipped nodes and ignored results, as data.
    pub warnings: Vec<Warning>,
    /// Per node.
    pub nodes: Vec<NodeReport>,
}

/// Why an execution could not start.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ExecuteError {
    /// No pipeline handles the trigger.
    #[error("no pipeline handles trigger `{0}`")]
    UnknownTrigger(String),
    /// The tenant is empty.
    #[error("the tenant must not be empty")]
    EmptyTenant,
    /// The tenant id breaks `luametrics_model::check_tenant` (too long, control or invisible
    /// characters, whitespace at an end): it keys per-tenant state and is stored in every trace.
    #[error("the tenant id {0}")]
    InvalidTenant(&'static str),
    /// The tenant used its engine-time budget (`pool.tenant_engine_ms_per_s`); nothing ran.
    #[error("tenant `{tenant}` used its engine-time budget; retry in {retry_after_ms} ms")]
    TenantBudget {
        /// The tenant refused.
        tenant: String,
        /// When its budget has room again.
        retry_after_ms: u64,
    },
}

impl ExecuteError {
    /// The stable code the HTTP API and `luametrics run` report it with.
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnknownTrigger(_) => "unknown_trigger",
            Self::EmptyTenant | Self::InvalidTenant(_) => "invalid_tenant",
            Self::TenantBudget { .. } => "tenant_budget",
        }
    }
}

/// Runs pipelines on the engine pool and reports what happened.
pub struct Executor {
    pool: Arc<EnginePool>,
    metrics: Arc<dyn SystemMetrics>,
    traces: Arc<TraceWriter>,
    sampler: TraceSampler,
    sequence: AtomicU64,
    started: u64,
    /// Random bits in every trace id of this executor.
    salt: u32,
    /// The system series every execution records, as handles per tenant and pipeline.
    series: SeriesCache,
}

enum NodeResult {
    Ran(Box<Execution>),
    PoolFailed(PoolError, f64),
}

/// When and as what an execution started: what its outcome and trace are stamped with.
struct Started {
    at: Instant,
    at_ms: i64,
    trace_id: String,
}

impl Executor {
    /// An executor keeping `trace_sample_rate` of successful traces.
    pub fn new(
        pool: Arc<EnginePool>,
        metrics: impl SystemMetrics,
        traces: Arc<TraceWriter>,
        trace_sample_rate: f64,
    ) -> Self {
        let metrics: Arc<dyn SystemMetrics> = Arc::new(metrics);
        Self {
            pool,
            started: metrics.now_ms() as u64,
            // Random per executor (the std hasher's keys are), so instances of a fleet that
            // start in the same millisecond never mint the same trace id.
            salt: {
                use std::hash::{BuildHasher, Hasher};
                let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                h.write_u32(std::process::id());
                h.finish() as u32
            },
            metrics,
            traces,
            sampler: TraceSampler::new(trace_sample_rate),
            sequence: AtomicU64::new(0),
            series: SeriesCache::default(),
        }
    }

    fn trace_id(&self) -> String {
        let n = self.sequence.fetch_add(1, Relaxed);
        format!("{:012x}-{:08x}-{:08x}", self.started, self.salt, n)
    }

    /// Runs the pipeline of `trigger` for `tenant` on `event`.
    pub async fn execute(
        &self,
        pipelines: &Pipelines,
        trigger: &str,
        tenant: &str,
        event: Json,
    ) -> Result<Outcome, ExecuteError> {
        if tenant.trim().is_empty() {
            return Err(ExecuteError::EmptyTenant);
        }
        luametrics_model::check_tenant(tenant).map_err(ExecuteError::InvalidTenant)?;
        let pipeline = pipelines
            .for_trigger(trigger)
            .ok_or_else(|| ExecuteError::UnknownTrigger(trigger.to_string()))?
            .clone();
        // Held until the pipeline is done: in flight, it counts against the tenant's budget.
        let admitted = match self.pool.admit(tenant) {
            Ok(a) => a,
            Err(BudgetSpent {
                tenant,
                retry_after_ms,
            }) => {
                self.metrics.record(
                    "lua.tenant.throttled.count",
                    Kind::Counter,
                    1.0,
                    Tags::new(),
                    Some(&tenant),
                );
                return Err(ExecuteError::TenantBudget {
                    tenant,
                    retry_after_ms,
                });
            }
        };
        Ok(self
            .run(&pipeline, tenant, Arc::new(event), Arc::new(admitted))
            .await)
    }

    async fn run(
        &self,
        pipeline: &Arc<Pipeline>,
        tenant: &str,
        event: Arc<Json>,
        admitted: Arc<Admission>,
    ) -> Outcome {
        let start = Instant::now();
        let started_at = self.metrics.now_ms();
        let trace_id = self.trace_id();
        let tenant: Arc<str> = Arc::from(tenant);
        let series = self.series.get(self.metrics.as_ref(), &tenant, pipeline);
        let mut first = 0;
        let mut progress = Progress::new(pipeline.nodes.len());
        // A pipeline of one node per layer runs on one engine in one hand-off; layers of
        // several nodes run each node on its own engine, at once.
        if pipeline.layers.iter().all(|l| l.len() == 1) {
            (progress, first) = self
                .run_chain(pipeline, &tenant, &series, &event, progress)
                .await;
        }
        let progress = self
            .run_layers(
                pipeline,
                (&tenant, &series, &event, &admitted),
                &pipeline.layers[first.min(pipeline.layers.len())..],
                progress,
            )
            .await;
        self.finish(
            pipeline,
            &series,
            &tenant,
            Started {
                at: start,
                at_ms: started_at,
                trace_id,
            },
            progress,
        )
    }

    /// Runs `layers` in order, each node of a layer on its own engine at once (one task per
    /// node; a layer of one node runs in place), settling results in node order; stops after
    /// a layer that blocked or failed the pipeline.
    async fn run_layers(
        &self,
        pipeline: &Pipeline,
        (tenant, series, event, admitted): (
            &Arc<str>,
            &Arc<PipelineSeries>,
            &Arc<Json>,
            &Arc<Admission>,
        ),
        layers: &[Vec<usize>],
        mut progress: Progress,
    ) -> Progress {
        for layer in layers {
            if progress.decision != Decision::Allow {
                break;
            }
            let ctx = Arc::new(Json::Object(progress.context.clone()));
            let node_start = self.metrics.now_ms();
            // One task per node, so independent nodes run on separate engines at once.
            let mut handles = Vec::with_capacity(layer.len());
            for &i in layer {
                let node = &pipeline.nodes[i];
                let pool = self.pool.clone();
                let script = node.script.clone();
                let (tenant, event, ctx) = (tenant.clone(), event.clone(), ctx.clone());
                let admitted = admitted.clone();
                let limit = node.timeout_ms;
                let run = async move {
                    let t = Instant::now();
                    let job = Job {
                        script,
                        tenant,
                        event,
                        context: ctx,
                        time_limit_ms: limit,
                    };
                    match pool.run_admitted(job, &admitted).await {
                        Ok(ex) => NodeResult::Ran(Box::new(ex)),
                        Err(e) => NodeResult::PoolFailed(e, t.elapsed().as_secs_f64() * 1000.0),
                    }
                };
                if layer.len() == 1 {
                    handles.push((i, None, Some(run.await)));
                } else {
                    handles.push((i, Some(tokio::spawn(run)), None));
                }
            }
            for (i, handle, ready) in handles {
                let result = match (handle, ready) {
                    (_, Some(r)) => r,
                    (Some(h), None) => match h.await {
                        Ok(r) => r,
                        Err(e) => NodeResult::PoolFailed(
                            PoolError::Create(format!("node task failed: {e}")),
                            0.0,
                        ),
                    },
                    (None, None) => continue,
                };
                progress.settle(series, pipeline, i, node_start, result);
            }
        }
        progress
    }

    /// Ends an execution: reports the nodes never reached as skipped, sums the time split,
    /// records `pipeline.exec.duration`, hands a sampled trace to the writer, and builds the
    /// outcome.
    fn finish(
        &self,
        pipeline: &Pipeline,
        series: &PipelineSeries,
        tenant: &str,
        started: Started,
        progress: Progress,
    ) -> Outcome {
        let Started {
            at: start,
            at_ms: started_at,
            trace_id,
        } = started;
        let Progress {
            context,
            decision,
            warnings,
            mut reports,
            spans,
            ..
        } = progress;
        // Nodes never reached (after a block or a failure) are reported as skipped.
        for (i, node) in pipeline.nodes.iter().enumerate() {
            if reports[i].is_none() {
                reports[i] = Some(NodeReport {
                    node: node.id.clone(),
                    script: node.script.id().to_string(),
                    status: NodeStatus::Skipped,
                    error: None,
                    timings: Timings::default(),
                    accepted: 0,
                    dropped: 0,
                    rejected: BTreeMap::new(),
                    log: Vec::new(),
                    warnings: Vec::new(),
                });
            }
        }
        let nodes: Vec<NodeReport> = reports.into_iter().flatten().collect();
        let total_ms = start.elapsed().as_secs_f64() * 1000.0;
        let sum = |f: fn(&Timings) -> f64| nodes.iter().map(|n| f(&n.timings)).sum::<f64>();
        let (wait_ms, script_ms, helpers_ms) = (
            sum(|t| t.wait_ms),
            sum(|t| t.script_ms),
            sum(|t| t.helpers_ms),
        );
        let timings = PipelineTimings {
            total_ms,
            wait_ms,
            script_ms,
            helpers_ms,
            overhead_ms: (total_ms - wait_ms - script_ms - helpers_ms).max(0.0),
        };
        let status = decision.status();
        // A refused point is counted by the service; it never fails the execution.
        series.exec(status).record(total_ms);
        if self.sampler.keep(status) {
            let (reason, error) = match &decision {
                Decision::Allow => (None, None),
                Decision::Block { reason, .. } => (Some(reason.clone()), None),
                Decision::Error {
                    code,
                    message,
                    node,
                } => (Some(code.clone()), Some(format!("{node}: {message}"))),
            };
            self.traces.submit(TraceRecord {
                id: trace_id.clone(),
                pipeline_id: pipeline.id.clone(),
                trigger_event: pipeline.trigger.clone(),
                tenant: tenant.to_string(),
                status: status.to_string(),
                decision: decision.as_str().to_string(),
                reason,
                started_at_ms: started_at,
                total_ms,
                wait_ms,
                script_ms,
                helpers_ms,
                overhead_ms: timings.overhead_ms,
                error,
                warnings: warnings.iter().map(|w| w.message.clone()).collect(),
                spans: spans.into_iter().flatten().collect(),
            });
        }
        Outcome {
            pipeline_id: pipeline.id.clone(),
            trace_id,
            decision,
            context: Json::Object(context),
            timings,
            warnings,
            nodes,
        }
    }

    /// Runs the nodes of a pipeline of one node per layer in one piece of work on one
    /// engine, each node with its own time limit, settling each result on the runner as it
    /// comes. Returns the progress and the first layer still to run: past the end when the
    /// chain finished or stopped; after the stuck node when it was abandoned (that node is a
    /// `timeout`, later nodes run as usual); 0 when no engine was had (nothing ran).
    async fn run_chain(
        &self,
        pipeline: &Arc<Pipeline>,
        tenant: &Arc<str>,
        series: &Arc<PipelineSeries>,
        event: &Arc<Json>,
        progress: Progress,
    ) -> (Progress, usize) {
        let default_limit = self.pool.engine_settings().time_limit_ms;
        let limit_of = |i: usize| pipeline.nodes[i].timeout_ms.unwrap_or(default_limit);
        let budget: u64 = pipeline.layers.iter().flatten().map(|&i| limit_of(i)).sum();
        let shared = Arc::new(parking_lot::Mutex::new(Some(progress)));
        let work = {
            let shared = shared.clone();
            let (pipeline, tenant, event) = (pipeline.clone(), tenant.clone(), event.clone());
            let (metrics, series) = (self.metrics.clone(), series.clone());
            move |engine: &mut Engine, mut wait_ms: f64| {
                for (li, layer) in pipeline.layers.iter().enumerate() {
                    let i = layer[0];
                    // The layer about to run is marked under the same lock the caller takes
                    // the progress with, so a caller giving up knows which node was running.
                    let ctx = match shared.lock().as_mut() {
                        Some(p) if p.decision == Decision::Allow => {
                            p.running = Some(li);
                            Json::Object(p.context.clone())
                        }
                        _ => return,
                    };
                    let node = &pipeline.nodes[i];
                    let node_start = metrics.now_ms();
                    let mut ex = engine.execute_limited(
                        &node.script,
                        &tenant,
                        &event,
                        &ctx,
                        node.timeout_ms,
                    );
                    ex.timings.wait_ms = wait_ms;
                    ex.timings.total_ms += wait_ms;
                    wait_ms = 0.0;
                    match shared.lock().as_mut() {
                        Some(p) => {
                            p.running = None;
                            p.settle(
                                &series,
                                &pipeline,
                                i,
                                node_start,
                                NodeResult::Ran(Box::new(ex)),
                            )
                        }
                        // Given up on while this node ran: the caller settled it.
                        None => return,
                    }
                }
            }
        };
        let t = Instant::now();
        let node_start = self.metrics.now_ms();
        let ran = self.pool.run_with(tenant.clone(), budget, work).await;
        let mut progress = match shared.lock().take() {
            Some(p) => p,
            // Unreachable: only this function takes it, once.
            None => Progress::new(pipeline.nodes.len()),
        };
        // The first layer whose node has not been settled: where the layer loop goes on.
        let unsettled = |p: &Progress| {
            pipeline
                .layers
                .iter()
                .position(|l| p.reports[l[0]].is_none())
                .unwrap_or(pipeline.layers.len())
        };
        match ran {
            Ok(Ran::Done(())) => (progress, pipeline.layers.len()),
            Ok(Ran::Abandoned { wait_ms, total_ms }) => {
                // Given up on between two nodes: nothing was running, the rest runs as usual.
                let Some(li) = progress.running.take() else {
                    let next = unsettled(&progress);
                    return (progress, next);
                };
                let i = pipeline.layers[li][0];
                let node = &pipeline.nodes[i];
                let timed_out = Execution::abandoned(&node.script, limit_of(i), wait_ms, total_ms);
                progress.settle(
                    series,
                    pipeline,
                    i,
                    node_start,
                    NodeResult::Ran(Box::new(timed_out)),
                );
                (progress, li + 1)
            }
            Err(e) => {
                // Nothing ran (no engine), or the runner failed part-way: the first node not
                // settled carries the failure, and the layer loop goes on after it.
                let li = unsettled(&progress);
                if li >= pipeline.layers.len() {
                    return (progress, li);
                }
                progress.running = None;
                let i = pipeline.layers[li][0];
                let waited = t.elapsed().as_secs_f64() * 1000.0;
                progress.settle(
                    series,
                    pipeline,
                    i,
                    node_start,
                    NodeResult::PoolFailed(e, waited),
                );
                (progress, li + 1)
            }
        }
    }
}
