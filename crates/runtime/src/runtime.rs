use crate::Config;
use luametrics_engine::{EnginePool, PoolError, PoolStatus};
use luametrics_model::{Catalog, TagPolicy, DEFAULT_DENIED_KEYS};
use luametrics_pipeline::{
    ExecuteError, Executor, Outcome, PipelineError, Pipelines, Registry, TraceWriter,
};
use luametrics_recorder::{Accounting, MetricsService, RecorderConfig, RecorderError};
use luametrics_store::{
    AggregateQuery, Location, RetentionReport, Series, Store, StoreError, Tier,
};
use serde_json::Value as Json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why the runtime could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] crate::ConfigError),
    /// The database could not be opened or migrated.
    #[error("database: {0}")]
    Store(#[from] StoreError),
    /// The pipelines file is invalid.
    #[error("pipelines: {0}")]
    Pipelines(#[from] PipelineError),
    /// The engine pool could not be built.
    #[error("engine pool: {0}")]
    Pool(#[from] PoolError),
    /// Shutdown could not write everything.
    #[error("recorder: {0}")]
    Recorder(#[from] RecorderError),
    /// The shutdown deadline passed with points or traces unwritten; they are counted as lost
    /// (points) and dropped (traces) with reason `shutdown`.
    #[error("shutdown deadline passed: {} points ({} user points, {} rows) and {} traces not written, counted with reason `shutdown`{}", .summary.points_unwritten, .summary.user_points_unwritten, .summary.rows_unwritten, .summary.traces_unwritten, .cause.as_deref().map(|c| format!(": {c}")).unwrap_or_default())]
    Unwritten {
        /// What the shutdown did write, and what it did not.
        summary: Box<ShutdownSummary>,
        /// The last database error, if the recorder gave up on one.
        cause: Option<String>,
    },
}

/// What a clean shutdown wrote.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ShutdownSummary {
    /// Metric rows written by the final flush.
    pub final_rows: usize,
    /// Traces written over the runtime's life.
    pub traces_written: u64,
    /// Traces dropped over the runtime's life (queue full, or unwritten at the deadline).
    pub traces_dropped: u64,
    /// Traces still unwritten at the shutdown deadline (part of `traces_dropped`).
    pub traces_unwritten: u64,
    /// Accepted points still unwritten at the shutdown deadline (counted as lost).
    pub points_unwritten: u64,
    /// Of which user points.
    pub user_points_unwritten: u64,
    /// Rows holding those points.
    pub rows_unwritten: usize,
}

/// The embedding API: one per process, shared by reference (`Arc<Runtime>`).
pub struct Runtime {
    config: Config,
    store: Arc<Store>,
    metrics: MetricsService,
    pool: Arc<EnginePool>,
    registry: Arc<Registry>,
    executor: Executor,
    traces: Arc<TraceWriter>,
    watcher: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Builds a [`Runtime`] from defaults, a config file or explicit settings.
#[derive(Debug, Clone, Default)]
pub struct RuntimeBuilder {
    config: Config,
}

impl RuntimeBuilder {
    /// Starts from a full configuration.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// The database: a path or a `libsql://` / `https://` URL.
    pub fn database(mut self, url: impl Into<String>, auth_token: Option<String>) -> Self {
        self.config.database.url = url.into();
        self.config.database.auth_token = auth_token;
        self
    }

    /// The pipelines file.
    pub fn pipelines(mut self, file: impl Into<PathBuf>) -> Self {
        self.config.pipelines.file = file.into();
        self
    }

    /// Most engines in the pool.
    pub fn pool_size(mut self, n: usize) -> Self {
        self.config.pool.max_size = n;
        self
    }

    /// Per-execution time limit.
    pub fn time_limit_ms(mut self, ms: u64) -> Self {
        self.config.engine.time_limit_ms = ms;
        self
    }

    /// Flush window (0: raw mode).
    pub fn window_ms(mut self, ms: u64) -> Self {
        self.config.recorder.window_ms = ms;
        self
    }

    /// Starts the runtime.
    pub async fn start(self) -> Result<Runtime, RuntimeError> {
        Runtime::start(self.config).await
    }
}

impl Runtime {
    /// A builder starting from defaults.
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder::default()
    }

    /// Opens the store, starts the recorder and the pool, loads the pipelines.
    /// Must be called inside a tokio runtime.
    pub async fn start(config: Config) -> Result<Self, RuntimeError> {
        let location =
            Location::parse(&config.database.url, config.database.auth_token.as_deref())?;
        let store = Arc::new(
            Store::open_with(
                location,
                Duration::from_millis(config.database.busy_timeout_ms),
            )
            .await?,
        );
        store.set_instance(config.database.instance_name());
        store.set_remote_timeout(Duration::from_millis(
            config.database.remote_timeout_ms.max(1),
        ));
        let registry = Arc::new(Registry::load(&config.pipelines.file)?);
        if registry.current().is_empty() && !config.pipelines.allow_empty {
            return Err(RuntimeError::Pipelines(PipelineError::Invalid {
                file: config.pipelines.file.display().to_string(),
                pipeline: "(none)".into(),
                node: None,
                field: "pipeline".into(),
                problem: "the file defines no pipeline (set pipelines.allow_empty = true to start anyway)"
                    .into(),
            }));
        }
        let metrics = MetricsService::start(
            store.clone(),
            RecorderConfig {
                settings: config.recorder.clone(),
                policy: TagPolicy::new(
                    DEFAULT_DENIED_KEYS.iter().map(|s| s.to_string()),
                    config.limits.clone(),
                ),
                catalog: Catalog::builtin().clone(),
                ..RecorderConfig::default()
            },
        );
        let pool = Arc::new(EnginePool::new(
            config.engine.clone(),
            config.pool.clone(),
            Arc::new(metrics.clone()),
        )?);
        pool.start_sampler();
        let traces = Arc::new(TraceWriter::start(
            store.clone(),
            metrics.clone(),
            config.pipelines.trace_queue,
        ));
        let executor = Executor::new(
            pool.clone(),
            metrics.clone(),
            traces.clone(),
            config.pipelines.trace_sample_rate,
        );
        let watcher = (config.pipelines.reload_interval_ms > 0).then(|| {
            let registry = registry.clone();
            let every = Duration::from_millis(config.pipelines.reload_interval_ms);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    if let Err(e) = registry.reload_if_changed() {
                        eprintln!("luametrics: pipelines not reloaded, previous definitions stay in force: {e}");
                    }
                }
            })
        });
        Ok(Self {
            config,
            store,
            metrics,
            pool,
            registry,
            executor,
            traces,
            watcher: parking_lot::Mutex::new(watcher),
        })
    }

    /// Runs the pipeline of `trigger` for `tenant` on `event`.
    pub async fn execute(
        &self,
        trigger: &str,
        tenant: &str,
        event: Json,
    ) -> Result<Outcome, ExecuteError> {
        let pipelines = self.registry.current();
        self.executor
            .execute(&pipelines, trigger, tenant, event)
            .await
    }

    /// `tenant`'s engine-time budget and use (`pool.tenant_engine_ms_per_s`).
    pub fn tenant_engine_usage(&self, tenant: &str) -> luametrics_engine::TenantEngineUsage {
        self.pool.tenant_usage(tenant)
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The store, for queries.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The recorder, for host metrics (`count`, `gauge`, `histogram`, `measure`).
    pub fn metrics(&self) -> &MetricsService {
        &self.metrics
    }

    /// Point accounting since start.
    pub fn accounting(&self) -> Accounting {
        self.metrics.accounting()
    }

    /// Pool gauges and counters.
    pub fn pool_status(&self) -> PoolStatus {
        self.pool.status()
    }

    /// The pipelines in force.
    pub fn pipelines(&self) -> Arc<Pipelines> {
        self.registry.current()
    }

    /// Re-reads the pipelines file and scripts now.
    pub fn reload(&self) -> Result<Arc<Pipelines>, PipelineError> {
        self.registry.reload()
    }

    /// An aggregate query over stored metrics.
    pub async fn query(&self, q: &AggregateQuery) -> Result<(Vec<Series>, Tier), StoreError> {
        self.store.aggregate(q).await
    }

    /// Rollups, then retention, now.
    pub async fn retention(&self) -> Result<RetentionReport, StoreError> {
        let now = self.metrics.now_ms();
        self.store.retention(&self.config.retention, now).await
    }

    /// Stops the watcher, writes queued traces and the pool's last sample, then flushes every
    /// accepted point, all within `recorder.shutdown_timeout_ms` from now.
    pub async fn shutdown(&self) -> Result<ShutdownSummary, RuntimeError> {
        let timeout = Duration::from_millis(self.config.recorder.shutdown_timeout_ms);
        self.shutdown_by(Instant::now() + timeout).await
    }

    /// Like [`Runtime::shutdown`] with an explicit deadline (a server starts it when the
    /// signal arrives, so draining requests counts too). Whatever the database does, this
    /// returns by the deadline plus at most one short lock wait: traces get the first half of
    /// the time left, the final flush the rest. Anything unwritten at the deadline is counted
    /// (reason `shutdown`) and returned as [`RuntimeError::Unwritten`].
    pub async fn shutdown_by(&self, deadline: Instant) -> Result<ShutdownSummary, RuntimeError> {
        if let Some(w) = self.watcher.lock().take() {
            w.abort();
        }
        let now = Instant::now();
        let traces_deadline = now + deadline.saturating_duration_since(now) / 2;
        self.traces.shutdown_by(traces_deadline).await;
        self.pool.record_metrics();
        let result = self.metrics.shutdown_by(deadline).await;
        let mut summary = ShutdownSummary {
            final_rows: 0,
            traces_written: self.traces.written(),
            traces_dropped: self.traces.dropped(),
            traces_unwritten: self.traces.dropped_at_shutdown(),
            points_unwritten: 0,
            user_points_unwritten: 0,
            rows_unwritten: 0,
        };
        let cause = match result {
            Ok(report) => {
                summary.final_rows = report.rows_written;
                None
            }
            Err(RecorderError::Unflushed {
                rows,
                points,
                user_points,
                cause,
                ..
            }) => {
                summary.points_unwritten = points;
                summary.user_points_unwritten = user_points;
                summary.rows_unwritten = rows;
                Some(cause)
            }
            Err(other) => return Err(other.into()),
        };
        if cause.is_some() || summary.traces_unwritten > 0 {
            return Err(RuntimeError::Unwritten {
                summary: Box::new(summary),
                cause,
            });
        }
        Ok(summary)
    }
}
