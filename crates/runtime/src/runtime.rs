//! `Runtime`, the embedding API: one handle over the store, the recorder, the engine pool, the
//! pipelines and the trace writer, open from `start` until `shutdown`, and its one `Error`.

use crate::Config;
use luametrics_engine::{EnginePool, PoolError, PoolStatus};
use luametrics_model::{Catalog, TagPolicy, DEFAULT_DENIED_KEYS};
use luametrics_pipeline::{
    ExecuteError, Executor, Outcome, PipelineError, Pipelines, Registry, TraceWriter,
};
use luametrics_recorder::{Accounting, MetricsService, RecorderConfig, RecorderError};
use luametrics_store::{AggregateQuery, RetentionReport, Series, Store, StoreError, Tier};
use serde_json::Value as Json;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Every error of the embedding API, one type: a host matches on [`Error::kind`] (stable, and
/// `#[non_exhaustive]` so new kinds do not break it) instead of following each crate's error;
/// the variants keep the cause for those who want it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
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
    /// An execution could not start (unknown trigger, empty tenant, spent budget).
    #[error(transparent)]
    Execute(#[from] ExecuteError),
    /// The runtime was shut down: it runs nothing more (its points could not be written).
    #[error("the runtime is shut down; it runs no more executions")]
    Closed,
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

/// What kind of error an [`Error`] is, for a host deciding what to do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The configuration is unusable (fix it and start again).
    Config,
    /// The database could not be opened, read or written.
    Database,
    /// The pipelines file or a script is invalid.
    Pipelines,
    /// The engine pool could not be built.
    Pool,
    /// The recorder could not write what it held.
    Recorder,
    /// No pipeline handles the trigger.
    UnknownTrigger,
    /// The tenant is empty.
    InvalidTenant,
    /// The tenant spent its engine-time budget; retry later.
    TenantBudget,
    /// An execution could not start for another reason (see the error's message).
    Execute,
    /// The runtime is shut down.
    Closed,
    /// The shutdown deadline passed with points or traces unwritten.
    Unwritten,
}

impl Error {
    /// What kind of error this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Config(_) => ErrorKind::Config,
            Error::Store(_) => ErrorKind::Database,
            Error::Pipelines(_) => ErrorKind::Pipelines,
            Error::Pool(_) => ErrorKind::Pool,
            Error::Recorder(_) => ErrorKind::Recorder,
            Error::Execute(ExecuteError::UnknownTrigger(_)) => ErrorKind::UnknownTrigger,
            Error::Execute(ExecuteError::EmptyTenant | ExecuteError::InvalidTenant(_)) => {
                ErrorKind::InvalidTenant
            }
            Error::Execute(ExecuteError::TenantBudget { .. }) => ErrorKind::TenantBudget,
            Error::Execute(_) => ErrorKind::Execute,
            Error::Closed => ErrorKind::Closed,
            Error::Unwritten { .. } => ErrorKind::Unwritten,
        }
    }
}

/// What a clean shutdown wrote.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
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

/// The embedding API: a cheap handle (clone it into every task that needs it; clones share
/// one runtime). It is open from [`Runtime::start`] until [`Runtime::shutdown`], which writes
/// what it accepted; after that, [`Runtime::execute`] returns [`Error::Closed`]. A runtime
/// whose last handle is dropped without a shutdown says, through `tracing`, how many accepted
/// points it had not written.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    store: Arc<Store>,
    metrics: MetricsService,
    pool: Arc<EnginePool>,
    registry: Arc<Registry>,
    executor: Executor,
    traces: Arc<TraceWriter>,
    watcher: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Set when shutdown starts: nothing more runs.
    closed: AtomicBool,
    /// Executions past the closed check and not finished: shutdown waits for them before it
    /// stops the trace writer and the recorder, so their points and traces are written.
    in_flight: AtomicUsize,
    /// Set when a shutdown ran to its end (a cancelled one leaves it unset: `Drop` warns).
    shut_down: AtomicBool,
}

/// Counts an execution in flight until it ends (or is cancelled).
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(w) = self.watcher.lock().take() {
            w.abort();
        }
        if self.shut_down.load(SeqCst) {
            return;
        }
        let unwritten = self.metrics.unwritten_points();
        let traces = self.traces.queued();
        if unwritten > 0 || traces > 0 {
            tracing::warn!(
                unwritten_points = unwritten,
                queued_traces = traces,
                "luametrics runtime dropped without a completed shutdown: {unwritten} accepted \
                 points and {traces} traces not written yet; they are lost if the process ends \
                 before the background flush runs (call Runtime::shutdown before exiting)"
            );
        }
    }
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

    /// The database in a local libSQL file (created and migrated when missing).
    pub fn database_path(mut self, path: impl AsRef<std::path::Path>) -> Self {
        self.config.database.url = path.as_ref().display().to_string();
        self.config.database.auth_token = None;
        self
    }

    /// The database on a libSQL server (`libsql://`, `http(s)://`: sqld, Turso), with the auth
    /// token it requires, if any.
    pub fn database_remote(mut self, url: impl Into<String>, auth_token: Option<String>) -> Self {
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

    /// Per-execution time limit (rounded down to milliseconds, at least 1 ms).
    pub fn time_limit(mut self, limit: Duration) -> Self {
        self.config.engine.time_limit_ms = (limit.as_millis() as u64).max(1);
        self
    }

    /// Flush window: points are aggregated per series over it (zero: every point is a row).
    pub fn window(mut self, window: Duration) -> Self {
        self.config.recorder.window_ms = window.as_millis() as u64;
        self
    }

    /// Starts the runtime.
    pub async fn start(self) -> Result<Runtime, Error> {
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
    pub async fn start(config: Config) -> Result<Self, Error> {
        config.validate("the settings given to Runtime::start")?;
        let store = Arc::new(config.database.open_store().await?);
        let registry = Arc::new(Registry::load(&config.pipelines.file)?);
        if registry.current().is_empty() && !config.pipelines.allow_empty {
            return Err(Error::Pipelines(PipelineError::Invalid {
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
                    // Reading and compiling the scripts blocks (compiling a large script can
                    // take seconds): on a thread meant to block, never an async worker.
                    let registry = registry.clone();
                    let reloaded =
                        tokio::task::spawn_blocking(move || registry.reload_if_changed()).await;
                    let reloaded = match reloaded {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::error!(error = %e, "pipelines reload failed (panicked)");
                            continue;
                        }
                    };
                    if let Err(e) = reloaded {
                        tracing::warn!(
                            error = %e,
                            "pipelines not reloaded, previous definitions stay in force"
                        );
                    }
                }
            })
        });
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                store,
                metrics,
                pool,
                registry,
                executor,
                traces,
                watcher: parking_lot::Mutex::new(watcher),
                closed: AtomicBool::new(false),
                in_flight: AtomicUsize::new(0),
                shut_down: AtomicBool::new(false),
            }),
        })
    }

    /// Runs the pipeline of `trigger` for `tenant` on `event`.
    pub async fn execute(
        &self,
        trigger: &str,
        tenant: &str,
        event: Json,
    ) -> Result<Outcome, Error> {
        let inner = &self.inner;
        // Counted before the check: a shutdown that saw no execution in flight after closing
        // is sure none starts.
        inner.in_flight.fetch_add(1, SeqCst);
        let _counted = InFlight(&inner.in_flight);
        if inner.closed.load(SeqCst) {
            return Err(Error::Closed);
        }
        let pipelines = inner.registry.current();
        Ok(inner
            .executor
            .execute(&pipelines, trigger, tenant, event)
            .await?)
    }

    /// Whether [`Runtime::shutdown`] has started: the runtime runs nothing more.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(SeqCst)
    }

    /// `tenant`'s engine-time budget and use (`pool.tenant_engine_ms_per_s`).
    pub fn tenant_engine_usage(&self, tenant: &str) -> luametrics_engine::TenantEngineUsage {
        self.inner.pool.tenant_usage(tenant)
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The store, for queries.
    pub fn store(&self) -> &Arc<Store> {
        &self.inner.store
    }

    /// The recorder, for host metrics: handles that never fail at the call site
    /// (`counter`, `gauge`, `histogram`), the checked `try_*` calls, `measure`.
    pub fn metrics(&self) -> &MetricsService {
        &self.inner.metrics
    }

    /// Point accounting since start.
    pub fn accounting(&self) -> Accounting {
        self.inner.metrics.accounting()
    }

    /// Pool gauges and counters.
    pub fn pool_status(&self) -> PoolStatus {
        self.inner.pool.status()
    }

    /// The pipelines in force.
    pub fn pipelines(&self) -> Arc<Pipelines> {
        self.inner.registry.current()
    }

    /// Re-reads the pipelines file and scripts now.
    pub fn reload(&self) -> Result<Arc<Pipelines>, Error> {
        Ok(self.inner.registry.reload()?)
    }

    /// An aggregate query over stored metrics.
    pub async fn query(&self, q: &AggregateQuery) -> Result<(Vec<Series>, Tier), Error> {
        Ok(self.inner.store.aggregate(q).await?)
    }

    /// Rollups, then retention, now.
    pub async fn retention(&self) -> Result<RetentionReport, Error> {
        let now = self.inner.metrics.now_ms();
        Ok(self
            .inner
            .store
            .retention(&self.inner.config.retention, now)
            .await?)
    }

    /// Stops the watcher, writes queued traces and the pool's last sample, then flushes every
    /// accepted point, all within `recorder.shutdown_timeout_ms` from now.
    pub async fn shutdown(&self) -> Result<ShutdownSummary, Error> {
        let timeout = Duration::from_millis(self.inner.config.recorder.shutdown_timeout_ms);
        self.shutdown_by(Instant::now() + timeout).await
    }

    /// Like [`Runtime::shutdown`] with an explicit deadline (a server starts it when the
    /// signal arrives, so draining requests counts too). Whatever the database does, this
    /// returns by the deadline plus at most one short lock wait: traces get the first half of
    /// the time left, the final flush the rest. Anything unwritten at the deadline is counted
    /// (reason `shutdown`) and returned as [`Error::Unwritten`]. From its start the runtime is
    /// closed: [`Runtime::execute`] returns [`Error::Closed`].
    pub async fn shutdown_by(&self, deadline: Instant) -> Result<ShutdownSummary, Error> {
        self.inner.closed.store(true, SeqCst);
        if let Some(w) = self.inner.watcher.lock().take() {
            w.abort();
        }
        let now = Instant::now();
        let traces_deadline = now + deadline.saturating_duration_since(now) / 2;
        // Executions already running finish first (each ends within its limits), so what they
        // record is written; never past the traces' share of the deadline.
        while self.inner.in_flight.load(SeqCst) > 0 && Instant::now() < traces_deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        self.inner.traces.shutdown_by(traces_deadline).await;
        self.inner.pool.record_metrics();
        let result = self.inner.metrics.shutdown_by(deadline).await;
        // It ran to its end: whatever it could not write is counted and reported in its
        // result, so dropping the runtime has nothing more to say.
        self.inner.shut_down.store(true, SeqCst);
        let mut summary = ShutdownSummary {
            final_rows: 0,
            traces_written: self.inner.traces.written(),
            traces_dropped: self.inner.traces.dropped(),
            traces_unwritten: self.inner.traces.dropped_at_shutdown(),
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
            return Err(Error::Unwritten {
                summary: Box::new(summary),
                cause,
            });
        }
        Ok(summary)
    }
}
