use crate::accounting::{Counters, DropReason, LostReason};
use crate::config::RecorderConfig;
use crate::quota::TenantQuota;
use crate::series::{KeyIn, Registry, SeriesKey};
use crate::Accounting;
use luametrics_model::{Kind, MetricType, RejectReason, Tags};
use luametrics_sink::{BatchPoint, BatchReport};
use luametrics_sketch::Summary;
use luametrics_store::{RowData, Store, StoreError};
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{
    AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst,
};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Bytes charged per accumulator entry besides its key (map slot, summary, bookkeeping).
const ENTRY_OVERHEAD: usize = 160;
/// Bytes reserved per histogram entry for its sketch's buckets.
const SKETCH_RESERVE: usize = 2_048;
/// Room above the memory bound kept for the service's own metrics (a few dozen series), so
/// the stored accounting is never dropped by the bound it reports on.
const SELF_RESERVE: usize = 256 * 1024;
/// Longest a flush waits on another connection's lock before it fails and retries: short, so
/// shutdown keeps its deadline during a lock (the flusher retries with backoff anyway).
const WRITE_WAIT: Duration = Duration::from_millis(500);
/// No timestamp yet.
const NEVER: i64 = i64::MIN;

/// What happened to an accepted point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Folded into its own series.
    Stored,
    /// Folded into the overflow series of its name (a series limit was reached).
    Overflow,
}

/// Why a point was not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// The point broke a rule or a quota.
    #[error("metric point rejected: {0}")]
    Invalid(RejectReason),
    /// The point was valid but could not be kept.
    #[error("metric point dropped: {}", .0.as_str())]
    Dropped(DropReason),
}

/// Why flushing or shutting down failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecorderError {
    /// A flush failed; its rows are kept and retried.
    #[error("flush failed, {rows} rows kept for retry: {source}")]
    Flush {
        /// Rows still waiting.
        rows: usize,
        /// The database error.
        #[source]
        source: StoreError,
    },
    /// Shutdown gave up on a database that stayed unwritable.
    #[error("shutdown gave up after {waited_ms} ms: {rows} rows ({points} points, {user_points} of them user points) not written, counted as lost: {cause}")]
    Unflushed {
        /// How long shutdown retried.
        waited_ms: u64,
        /// Rows not written.
        rows: usize,
        /// Accounted points in those rows.
        points: u64,
        /// Of which user points.
        user_points: u64,
        /// Why: the last database error, or the deadline itself.
        cause: String,
        /// The last database error, if one stopped the final flush.
        #[source]
        source: Option<Box<StoreError>>,
    },
    /// A flush stopped at the shutdown deadline with rows left to write.
    #[error("the shutdown deadline passed with {rows} rows unwritten")]
    DeadlinePassed {
        /// Rows still waiting.
        rows: usize,
    },
}

/// What a clean shutdown wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Rows written by the final flush.
    pub rows_written: usize,
}

/// Points of both types (system, user).
fn type_index(t: MetricType) -> usize {
    match t {
        MetricType::System => 0,
        MetricType::User => 1,
    }
}

const TYPES: [MetricType; 2] = [MetricType::System, MetricType::User];

struct Entry {
    summary: Summary,
    source: Option<String>,
    cost: usize,
    /// Counted in the accounting (false for the service's own metrics).
    accounted: bool,
}

#[derive(Default)]
struct Shard {
    /// Open windows per series (usually one, two around a window boundary). Keys are shared
    /// by `Arc` with the exposition and the sealed rows, so a flush copies no key. ahash: fast,
    /// and seeded per process so tenants cannot craft colliding tags.
    windows: HashMap<Arc<SeriesKey>, Open, ahash::RandomState>,
    /// Raw mode (window 0): every point is its own row.
    raw: Vec<(Sealed, usize)>,
}

/// The open windows of one series. A series stays here one flush after its last window sealed,
/// so its next window reuses the same key (and the exposition finds it by pointer).
#[derive(Default)]
struct Open {
    windows: Vec<(i64, Entry)>,
    idle_flushes: u8,
    /// Memory charged for the key while it waits idle (the bound covers kept keys too).
    idle_charge: usize,
}

/// A sealed window on its way to the store.
pub(crate) struct Sealed {
    key: Arc<SeriesKey>,
    window: i64,
    window_ms: i64,
    summary: Summary,
    source: Option<String>,
    accounted: bool,
}

impl Sealed {
    /// Points this row carries that the accounting counted as accepted.
    fn accounted_points(&self) -> u64 {
        if self.accounted {
            self.summary.samples
        } else {
            0
        }
    }
}

impl RowData for Sealed {
    fn name(&self) -> &str {
        &self.key.name
    }
    fn tenant(&self) -> Option<&str> {
        self.key.tenant.as_deref()
    }
    fn metric_type(&self) -> MetricType {
        self.key.metric_type
    }
    fn kind(&self) -> Kind {
        self.key.kind
    }
    fn tags(&self) -> &Tags {
        &self.key.tags
    }
    fn source(&self) -> Option<&str> {
        self.source.as_deref()
    }
    fn timestamp_ms(&self) -> i64 {
        self.window
    }
    fn window_ms(&self) -> i64 {
        self.window_ms
    }
    fn summary(&self) -> &Summary {
        &self.summary
    }
}

struct Inner {
    config: RecorderConfig,
    store: Arc<Store>,
    shards: Vec<Mutex<Shard>>,
    hasher: ahash::RandomState,
    registry: Registry,
    exposition: crate::exposition::Exposition,
    quota: TenantQuota,
    counters: Counters,
    /// Bytes held by accumulators and unwritten rows.
    memory: AtomicUsize,
    pending: tokio::sync::Mutex<VecDeque<(Sealed, usize)>>,
    /// Self-metric counters not yet recorded.
    flushed_rows: AtomicU64,
    /// Metric rows the store confirmed written, over the service's life.
    rows_written_total: AtomicU64,
    /// Exported names held by user metrics.
    names: luametrics_model::ExportedNames,
    flush_errors: AtomicU64,
    /// A chunk whose write failed without saying whether it committed: its batch id and row
    /// count. The next attempt writes exactly those rows under the same id (see
    /// `Store::create_batch_once`), so a lost answer never writes a row twice.
    in_doubt: parking_lot::Mutex<Option<(String, usize)>>,
    /// Per self-metric counter (name, type, reason): the value already taken into a stored
    /// point. Advanced only when the point was taken in, so nothing is marked reported that was
    /// not recorded.
    last_reported: Mutex<HashMap<(&'static str, MetricType, String), u64>>,
    /// What happened to each tenant's points (the tenant's own view).
    tenants: crate::tenants::TenantLedger,
    /// Rows in `pending`, and the accounted points they carry per type.
    backlog_rows: AtomicUsize,
    backlog_points: [AtomicU64; 2],
    /// Accounted points written into the database file now open, per type (lost with it if
    /// it is deleted), and its rows.
    file_points: [AtomicU64; 2],
    file_rows: AtomicU64,
    health: Mutex<crate::health::State>,
    last_memory_drop_ms: AtomicI64,
    /// A checkpoint is wanted (after writes recovered).
    checkpoint_due: AtomicBool,
    /// Shutdown's deadline, once shutdown started: flushes stop and lock waits end by it.
    deadline: Mutex<Option<Instant>>,
    closing: AtomicBool,
    inflight: AtomicUsize,
    wake: Notify,
    stopped: Notify,
    flusher_done: AtomicBool,
}

/// The recording service; cheap to clone (shared state behind an `Arc`).
#[derive(Clone)]
pub struct MetricsService {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MetricsService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsService")
            .field("config", &self.inner.config)
            .finish()
    }
}

fn tags_from(pairs: &[(&str, &str)]) -> Tags {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl MetricsService {
    /// Starts the service and its background flusher. Must be called inside a tokio runtime.
    pub fn start(store: Arc<Store>, config: RecorderConfig) -> Self {
        let tenant_usage = config.settings.tenant_usage;
        let shards = (0..config.settings.shards.max(1))
            .map(|_| Mutex::new(Shard::default()))
            .collect();
        let inner = Arc::new(Inner {
            quota: TenantQuota::new(&config.policy.limits),
            config,
            store,
            shards,
            hasher: ahash::RandomState::new(),
            registry: Registry::default(),
            exposition: crate::exposition::Exposition::new(16),
            counters: Counters::default(),
            memory: AtomicUsize::new(0),
            pending: tokio::sync::Mutex::new(VecDeque::new()),
            flushed_rows: AtomicU64::new(0),
            rows_written_total: AtomicU64::new(0),
            names: Default::default(),
            flush_errors: AtomicU64::new(0),
            in_doubt: parking_lot::Mutex::new(None),
            last_reported: Mutex::new(HashMap::new()),
            tenants: crate::tenants::TenantLedger::new(tenant_usage),
            backlog_rows: AtomicUsize::new(0),
            backlog_points: Default::default(),
            file_points: Default::default(),
            file_rows: AtomicU64::new(0),
            health: Mutex::new(Default::default()),
            last_memory_drop_ms: AtomicI64::new(NEVER),
            checkpoint_due: AtomicBool::new(false),
            deadline: Mutex::new(None),
            closing: AtomicBool::new(false),
            inflight: AtomicUsize::new(0),
            wake: Notify::new(),
            stopped: Notify::new(),
            flusher_done: AtomicBool::new(false),
        });
        tokio::spawn(flusher(inner.clone()));
        Self { inner }
    }

    /// The store this service writes to.
    pub fn store(&self) -> &Arc<Store> {
        &self.inner.store
    }

    /// The configuration in force.
    pub fn config(&self) -> &RecorderConfig {
        &self.inner.config
    }

    /// Current time by the service's clock (ms).
    pub fn now_ms(&self) -> i64 {
        (self.inner.config.clock)()
    }

    /// Exact point accounting since start.
    pub fn accounting(&self) -> Accounting {
        self.inner.counters.snapshot()
    }

    /// The database's health as the flusher sees it, and the backlog: what `/readyz` reports.
    pub fn health(&self) -> crate::Health {
        let inner = &self.inner;
        let state = inner.health.lock();
        let drop_at = inner.last_memory_drop_ms.load(Relaxed);
        crate::Health {
            failing_since_ms: state.failing_since_ms,
            last_error: state.last_error.clone(),
            backlog_rows: inner.backlog_rows.load(Relaxed),
            memory_used: inner.memory.load(Relaxed),
            memory_bound: inner.config.settings.max_memory_bytes,
            ready_memory_share: inner.config.settings.ready_memory_share,
            last_memory_drop_ms: (drop_at != NEVER).then_some(drop_at),
            database_file: state.file_fault.map(str::to_string),
            now_ms: (inner.config.clock)(),
        }
    }

    /// Claims the exported Prometheus names of a user metric: refused (`name_conflict`) when
    /// another metric already holds one of them, so `/metrics` stays valid for any input.
    pub fn claim_user_name(&self, name: &str, kind: Kind) -> Result<(), RejectReason> {
        self.inner.names.claim(
            MetricType::User,
            name,
            kind,
            luametrics_model::infer_unit(name),
        )
    }

    /// Metric rows the store confirmed written since the service started: the flusher's own
    /// count, to compare with what the database holds.
    pub fn rows_written(&self) -> u64 {
        self.inner.rows_written_total.load(Relaxed)
    }

    /// Accepted points not written yet (open windows, sealed rows waiting, raw points): what
    /// would be lost if the process ended now without a flush.
    pub fn unwritten_points(&self) -> u64 {
        let inner = &self.inner;
        let mut n: u64 = inner.backlog_points.iter().map(|p| p.load(Relaxed)).sum();
        for shard in &inner.shards {
            let shard = shard.lock();
            n += shard
                .windows
                .values()
                .flat_map(|open| open.windows.iter())
                .filter(|(_, e)| e.accounted)
                .map(|(_, e)| e.summary.samples)
                .sum::<u64>();
            n += shard
                .raw
                .iter()
                .map(|(row, _)| row.accounted_points())
                .sum::<u64>();
        }
        n
    }

    /// Bytes held by accumulators and unwritten rows.
    pub fn memory_used(&self) -> usize {
        self.inner.memory.load(Relaxed)
    }

    /// User series tracked in memory.
    pub fn series_tracked(&self) -> usize {
        self.inner.registry.len()
    }

    /// Series a tenant holds against its limit.
    pub fn tenant_series(&self, tenant: &str) -> usize {
        self.inner.registry.tenant_series(tenant)
    }

    /// Every tenant with the user series it holds against its limit, most first.
    pub fn tenants_series(&self) -> Vec<(String, usize)> {
        self.inner.registry.tenants()
    }

    /// Tenants with rate-limiter state.
    pub fn limiter_tenants(&self) -> usize {
        self.inner.quota.tracked_tenants()
    }

    /// Adds to a system counter (validated against the catalog) and says whether it was kept;
    /// hosts that record the same series often use a [`crate::Counter`] handle instead.
    pub fn try_count(
        &self,
        name: &str,
        value: f64,
        tags: &[(&str, &str)],
    ) -> Result<Accepted, Rejected> {
        self.record_system(name, Kind::Counter, value, tags_from(tags), None, None)
    }

    /// Sets a system gauge and says whether it was kept (see [`MetricsService::try_count`]).
    pub fn try_gauge(
        &self,
        name: &str,
        value: f64,
        tags: &[(&str, &str)],
    ) -> Result<Accepted, Rejected> {
        self.record_system(name, Kind::Gauge, value, tags_from(tags), None, None)
    }

    /// Observes a value of a system histogram and says whether it was kept (see
    /// [`MetricsService::try_count`]).
    pub fn try_histogram(
        &self,
        name: &str,
        value: f64,
        tags: &[(&str, &str)],
    ) -> Result<Accepted, Rejected> {
        self.record_system(name, Kind::Histogram, value, tags_from(tags), None, None)
    }

    /// Times a future and records its duration (ms) in a histogram; returns the future's output.
    pub async fn measure<F: std::future::Future>(
        &self,
        name: &str,
        tags: &[(&str, &str)],
        fut: F,
    ) -> F::Output {
        let start = Instant::now();
        let out = fut.await;
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        // A refused timing is counted in the accounting; it never fails the timed work.
        let _ = self.try_histogram(name, ms, tags);
        out
    }

    /// Records many observations of a system metric at once (callers that pre-aggregate,
    /// like the engine pool's wait histogram). Catalog and PII checks apply once.
    pub fn record_system_summary(
        &self,
        name: &str,
        kind: Kind,
        tags: Tags,
        summary: Summary,
    ) -> Result<Accepted, Rejected> {
        let now = self.now_ms();
        self.ingest_system(name, kind, tags, None, None, summary, now, Ok(()))
    }

    /// Records a system point with every option: catalog and PII checks apply; `tenant` is the
    /// host's (for per-tenant system metrics); `source` like `service:api`.
    pub fn record_system(
        &self,
        name: &str,
        kind: Kind,
        value: f64,
        tags: Tags,
        tenant: Option<&str>,
        source: Option<&str>,
    ) -> Result<Accepted, Rejected> {
        let now = self.now_ms();
        self.record_system_at(name, kind, value, tags, tenant, source, now)
    }

    /// Like [`MetricsService::record_system`] with an explicit timestamp (ms).
    #[allow(clippy::too_many_arguments)]
    pub fn record_system_at(
        &self,
        name: &str,
        kind: Kind,
        value: f64,
        tags: Tags,
        tenant: Option<&str>,
        source: Option<&str>,
        ts: i64,
    ) -> Result<Accepted, Rejected> {
        let mut summary = Summary::new(kind == Kind::Histogram);
        summary.observe(value, ts);
        let value_ok = luametrics_model::TagPolicy::check_value(kind, value);
        self.ingest_system(name, kind, tags, tenant, source, summary, ts, value_ok)
    }

    /// The one path for system points: catalog, value and PII checks (in that order), the
    /// host's tenant as the series' tenant, then the accumulators.
    #[allow(clippy::too_many_arguments)]
    fn ingest_system(
        &self,
        name: &str,
        kind: Kind,
        mut tags: Tags,
        tenant: Option<&str>,
        source: Option<&str>,
        summary: Summary,
        ts: i64,
        value_ok: Result<(), RejectReason>,
    ) -> Result<Accepted, Rejected> {
        let inner = &self.inner;
        let check = inner
            .config
            .catalog
            .check(name, kind, &tags)
            .and(value_ok)
            .and_then(|_| inner.config.policy.check_system_tags(&tags));
        if let Err(reason) = check {
            inner
                .counters
                .reject(MetricType::System, reason, summary.samples.max(1));
            return Err(Rejected::Invalid(reason));
        }
        if summary.samples == 0 {
            return Ok(Accepted::Stored);
        }
        tags.remove("tenant");
        let key = SeriesKey {
            metric_type: MetricType::System,
            kind,
            tenant: tenant.map(Arc::from),
            name: name.to_string(),
            tags,
        };
        inner.ingest(key, summary, ts, source.map(str::to_string), true)
    }

    /// Counts `n` refused system points (a handle's checks) and returns the refusal.
    pub(crate) fn reject_system(&self, reason: RejectReason, n: u64) -> Rejected {
        self.inner.counters.reject(MetricType::System, reason, n);
        Rejected::Invalid(reason)
    }

    /// Folds a checked system point of a handle's series (its key built once).
    pub(crate) fn ingest_series(
        &self,
        key: Arc<SeriesKey>,
        summary: Summary,
        ts: i64,
    ) -> Result<Accepted, Rejected> {
        self.inner.ingest(key, summary, ts, None, true)
    }

    /// Records one user metric for a tenant (seed §4.2 `recordUserMetric`): every tag rule,
    /// the tenant's rate limit, and the series limits apply.
    pub fn record_user_metric(
        &self,
        tenant: &str,
        name: &str,
        value: f64,
        kind: Kind,
        tags: &Tags,
    ) -> Result<Accepted, Rejected> {
        let inner = &self.inner;
        if let Err(reason) = inner
            .config
            .policy
            .check_user_point(name, kind, value, tags)
        {
            inner.counters.reject(MetricType::User, reason, 1);
            return Err(Rejected::Invalid(reason));
        }
        if let Err(reason) = self.claim_user_name(name, kind) {
            inner.counters.reject(MetricType::User, reason, 1);
            return Err(Rejected::Invalid(reason));
        }
        let tenant: Arc<str> = Arc::from(tenant);
        if inner.quota.take(&tenant, 1) == 0 {
            inner
                .counters
                .reject(MetricType::User, RejectReason::RateLimited, 1);
            return Err(Rejected::Invalid(RejectReason::RateLimited));
        }
        let now = self.now_ms();
        let key = SeriesKey {
            metric_type: MetricType::User,
            kind,
            tenant: Some(tenant),
            name: name.to_string(),
            tags: tags.clone(),
        };
        let mut summary = Summary::new(kind == Kind::Histogram);
        summary.observe(value, now);
        inner.ingest(key, summary, now, None, true)
    }

    /// Takes up to `want` points of a tenant's rate quota for one script execution.
    pub(crate) fn reserve_points(&self, tenant: &str, want: u32) -> u32 {
        self.inner.quota.take(&Arc::from(tenant), want)
    }

    /// Returns the unused part of a lease from [`MetricsService::reserve_points`].
    pub(crate) fn release_points(&self, tenant: &str, unused: u32) {
        self.inner.quota.give_back(&Arc::from(tenant), unused)
    }

    /// Counts user points a caller rejected itself (the Lua helpers validate on their side).
    pub(crate) fn count_user_rejections(&self, rejected: &[(RejectReason, u64)]) {
        for &(reason, n) in rejected {
            if n > 0 {
                self.inner.counters.reject(MetricType::User, reason, n);
            }
        }
    }

    /// Ingests points a script execution pre-aggregated, covered by its quota lease. Each
    /// series must have been checked by this service's policy (a series another policy
    /// checked is dropped and counted as `invalid_tags`: the batch path cannot skip the rules).
    pub(crate) fn ingest_user_batch(&self, tenant: &str, points: Vec<BatchPoint>) -> BatchReport {
        let inner = &self.inner;
        let tenant: Arc<str> = Arc::from(tenant);
        let now = self.now_ms();
        let mut report = BatchReport::default();
        for p in points {
            let samples = p.summary.samples;
            if samples == 0 {
                continue;
            }
            if !inner.config.policy.vouches_for(&p.series) {
                inner
                    .counters
                    .reject(MetricType::User, RejectReason::InvalidTags, samples);
                report.dropped += samples;
                inner
                    .tenants
                    .count(&tenant, "rejected", "invalid_tags", samples);
                continue;
            }
            let (name, kind, tags) = p.series.into_parts();
            let key = SeriesKey {
                metric_type: MetricType::User,
                kind,
                tenant: Some(tenant.clone()),
                name,
                tags,
            };
            let name = key.name.clone();
            match inner.ingest(key, p.summary, now, None, true) {
                Ok(a) => {
                    report.accepted += samples;
                    if a == Accepted::Overflow {
                        report.overflowed += samples;
                        inner.tenants.trouble(&tenant, &name, "overflow", samples);
                    }
                }
                Err(e) => {
                    report.dropped += samples;
                    let reason = match e {
                        Rejected::Dropped(r) => r.as_str(),
                        Rejected::Invalid(r) => r.as_str(),
                    };
                    inner.tenants.count(&tenant, "dropped", reason, samples);
                }
            }
        }
        inner
            .tenants
            .count(&tenant, "accepted", "", report.accepted);
        inner
            .tenants
            .count(&tenant, "overflowed", "", report.overflowed);
        report
    }

    /// Counts a tenant's points the helpers rejected, by reason, and which metric names were
    /// involved (`by_metric`: `(metric, reason, points)`), for the tenant's own usage view.
    pub(crate) fn count_tenant_rejections<'a>(
        &self,
        tenant: &str,
        rejected: &[(RejectReason, u64)],
        by_metric: impl IntoIterator<Item = (&'a str, &'a str, u64)>,
    ) {
        let ledger = &self.inner.tenants;
        for &(reason, n) in rejected {
            ledger.count(tenant, "rejected", reason.as_str(), n);
        }
        for (metric, reason, n) in by_metric {
            ledger.trouble(tenant, metric, reason, n);
        }
    }

    /// `tenant`'s points since the process started: accepted, overflowed, rejected and dropped
    /// by reason, and the metric names involved.
    pub fn tenant_points(&self, tenant: &str) -> crate::TenantPoints {
        self.inner.tenants.points(tenant)
    }

    /// Writes every accumulated point now, the current window included; returns rows written.
    pub async fn flush(&self) -> Result<usize, RecorderError> {
        self.inner.flush(true).await
    }

    /// Stops accepting points, then flushes everything, retrying a failing database until
    /// `shutdown_timeout_ms` from now. See [`MetricsService::shutdown_by`].
    pub async fn shutdown(&self) -> Result<ShutdownReport, RecorderError> {
        let timeout = Duration::from_millis(self.inner.config.settings.shutdown_timeout_ms);
        self.shutdown_by(Instant::now() + timeout).await
    }

    /// Stops accepting points, then flushes everything, retrying a failing database until
    /// `deadline`: no lock wait runs past it. What is still unwritten then is counted as lost
    /// (reason `shutdown`) and returned as [`RecorderError::Unflushed`].
    pub async fn shutdown_by(&self, deadline: Instant) -> Result<ShutdownReport, RecorderError> {
        let result = self.shutdown_inner(deadline).await;
        // The deadline bounds this shutdown only; a host's later explicit flush has none.
        *self.inner.deadline.lock() = None;
        result
    }

    async fn shutdown_inner(&self, deadline: Instant) -> Result<ShutdownReport, RecorderError> {
        let inner = &self.inner;
        let started = Instant::now();
        *inner.deadline.lock() = Some(deadline);
        inner.closing.store(true, SeqCst);
        // Points that passed the closing check before it was set land before the final flush.
        while inner.inflight.load(SeqCst) > 0 {
            tokio::task::yield_now().await;
        }
        // The flusher ends after its current attempt, whose lock wait is short (WRITE_WAIT).
        inner.wake.notify_one();
        while !inner.flusher_done.load(SeqCst) {
            let stopped = inner.stopped.notified();
            if inner.flusher_done.load(SeqCst) {
                break;
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), stopped).await;
            inner.wake.notify_one();
        }
        let mut delay = Duration::from_millis(inner.config.settings.retry_initial_ms.max(1));
        loop {
            // Each chunk of the final flush clips its lock wait to the time left (see flush).
            match inner.flush(true).await {
                Ok(n) => {
                    return Ok(ShutdownReport { rows_written: n });
                }
                Err(RecorderError::DeadlinePassed { .. }) => {
                    return Err(inner.give_up(started.elapsed(), None).await);
                }
                Err(RecorderError::Flush { source, .. }) => {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    if remaining.is_zero() {
                        return Err(inner.give_up(started.elapsed(), Some(source)).await);
                    }
                    tokio::time::sleep(delay.min(remaining)).await;
                    delay =
                        (delay * 2).min(Duration::from_millis(inner.config.settings.retry_max_ms));
                }
                Err(other) => return Err(other),
            }
        }
    }

    /// A `metrics` crate recorder that lands `metrics::counter!` and friends in this service.
    pub fn metrics_recorder(&self) -> crate::MetricsBridge {
        crate::MetricsBridge::new(self.clone())
    }
}

impl Inner {
    fn window_start(&self, ts: i64) -> i64 {
        let w = self.config.settings.window_ms as i64;
        if w == 0 {
            ts
        } else {
            ts.div_euclid(w) * w
        }
    }

    /// Folds a summary into its series' accumulator. `account` is false for self-metrics.
    fn ingest(
        &self,
        key: impl Into<KeyIn>,
        summary: Summary,
        ts: i64,
        source: Option<String>,
        account: bool,
    ) -> Result<Accepted, Rejected> {
        let key = key.into();
        let metric_type = key.get().metric_type;
        let samples = summary.samples;
        self.inflight.fetch_add(1, SeqCst);
        let result = self.ingest_inner(key, summary, ts, source, false);
        self.inflight.fetch_sub(1, SeqCst);
        if let Err(Rejected::Dropped(DropReason::MemoryBound)) = result {
            self.last_memory_drop_ms
                .store((self.config.clock)(), Relaxed);
        }
        if account {
            match result {
                Ok(_) => self.counters.accept(metric_type, samples),
                Err(Rejected::Dropped(r)) => self.counters.drop_points(metric_type, r, samples),
                Err(Rejected::Invalid(r)) => self.counters.reject(metric_type, r, samples),
            }
        }
        result
    }

    fn ingest_inner(
        &self,
        key: impl Into<KeyIn>,
        summary: Summary,
        ts: i64,
        source: Option<String>,
        internal: bool,
    ) -> Result<Accepted, Rejected> {
        if !internal && self.closing.load(SeqCst) {
            return Err(Rejected::Dropped(DropReason::ShuttingDown));
        }
        let (key, overflowed) = match key.into() {
            KeyIn::Owned(key) => {
                let now = (self.config.clock)();
                let (key, overflowed) = self.registry.admit(key, now, &self.config.policy.limits);
                (KeyIn::Owned(key), overflowed)
            }
            // Shared keys are system series (handles): no series limits apply to them.
            shared => (shared, false),
        };
        let accepted = if overflowed {
            Accepted::Overflow
        } else {
            Accepted::Stored
        };
        let window = self.window_start(ts);
        let k = key.get();
        let shard = &self.shards[(self.hasher.hash_one(k) as usize) % self.shards.len()];
        // The service's own metrics have reserved room above the bound.
        let max = self.config.settings.max_memory_bytes + if internal { SELF_RESERVE } else { 0 };
        let accounted = !internal;
        let cost = ENTRY_OVERHEAD
            + k.heap_bytes()
            + if k.kind == Kind::Histogram {
                SKETCH_RESERVE
            } else {
                0
            };
        let mut shard = shard.lock();
        if self.config.settings.window_ms == 0 {
            if !self.charge(cost, max) {
                return Err(Rejected::Dropped(DropReason::MemoryBound));
            }
            let row = Sealed {
                key: key.into_arc(),
                window,
                window_ms: 0,
                summary,
                source,
                accounted,
            };
            shard.raw.push((row, cost));
            return Ok(accepted);
        }
        if let Some(open) = shard.windows.get_mut(k) {
            open.idle_flushes = 0;
            if open.idle_charge > 0 {
                self.memory
                    .fetch_sub(std::mem::take(&mut open.idle_charge), Relaxed);
            }
            let windows = &mut open.windows;
            if let Some((_, entry)) = windows.iter_mut().find(|(w, _)| *w == window) {
                // Same accuracy everywhere, so a merge cannot fail.
                let _ = entry.summary.merge(&summary);
                return Ok(accepted);
            }
            if !self.charge(cost, max) {
                return Err(Rejected::Dropped(DropReason::MemoryBound));
            }
            windows.push((
                window,
                Entry {
                    summary,
                    source,
                    cost,
                    accounted,
                },
            ));
            return Ok(accepted);
        }
        if !self.charge(cost, max) {
            return Err(Rejected::Dropped(DropReason::MemoryBound));
        }
        shard.windows.insert(
            key.into_arc(),
            Open {
                windows: vec![(
                    window,
                    Entry {
                        summary,
                        source,
                        cost,
                        accounted,
                    },
                )],
                idle_flushes: 0,
                idle_charge: 0,
            },
        );
        Ok(accepted)
    }

    fn charge(&self, cost: usize, max: usize) -> bool {
        let mut cur = self.memory.load(Relaxed);
        loop {
            if cur + cost > max {
                return false;
            }
            match self
                .memory
                .compare_exchange_weak(cur, cur + cost, Relaxed, Relaxed)
            {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Records the service's own counters as system metrics (outside the accounting). A
    /// counter's delta is marked reported only once its point was taken in; the points have
    /// reserved room above the memory bound, so a full recorder delays them at worst.
    fn record_self_metrics(&self, now: i64) {
        let snap = self.counters.snapshot();
        let mut last = self.last_reported.lock();
        for (name, mt, reason, cur) in accounting_counters(&snap) {
            let slot = last
                .entry((name, mt, reason.unwrap_or("").to_string()))
                .or_insert(0);
            if cur <= *slot {
                continue;
            }
            let tags = counter_tags(mt, reason);
            if self.ingest_self(name, Kind::Counter, (cur - *slot) as f64, tags, now) {
                *slot = cur;
            }
        }
        drop(last);
        self.tenants.report(|tenant, result, reason, n| {
            let mut tags = Tags::from([("result".to_string(), result.to_string())]);
            if !reason.is_empty() {
                tags.insert("reason".to_string(), reason.to_string());
            }
            let key = SeriesKey {
                metric_type: MetricType::System,
                kind: Kind::Counter,
                tenant: Some(Arc::from(tenant)),
                name: "luametrics.tenant.points.count".to_string(),
                tags,
            };
            let mut s = Summary::new(false);
            s.observe(n as f64, now);
            self.ingest_inner(key, s, now, None, true).is_ok()
        });
        for (name, counter) in [
            ("luametrics.flush.rows.count", &self.flushed_rows),
            ("luametrics.flush.errors.count", &self.flush_errors),
        ] {
            let n = counter.swap(0, Relaxed);
            if n > 0 && !self.ingest_self(name, Kind::Counter, n as f64, Tags::new(), now) {
                counter.fetch_add(n, Relaxed);
            }
        }
        self.ingest_self(
            "luametrics.series.active",
            Kind::Gauge,
            self.registry.len() as f64,
            Tags::new(),
            now,
        );
        self.ingest_self(
            "luametrics.flush.backlog_rows",
            Kind::Gauge,
            self.backlog_rows.load(Relaxed) as f64,
            Tags::new(),
            now,
        );
    }

    /// One point of the service's own metrics; whether it was taken in.
    fn ingest_self(
        &self,
        name: &'static str,
        kind: Kind,
        value: f64,
        tags: Tags,
        now: i64,
    ) -> bool {
        let key = SeriesKey {
            metric_type: MetricType::System,
            kind,
            tenant: None,
            name: name.to_string(),
            tags,
        };
        let mut s = Summary::new(kind == Kind::Histogram);
        s.observe(value, now);
        self.ingest_inner(key, s, now, None, true).is_ok()
    }

    /// Moves sealed windows (all windows when `all`) to the pending queue, then writes pending.
    async fn flush(&self, all: bool) -> Result<usize, RecorderError> {
        let now = (self.config.clock)();
        self.record_self_metrics(now);
        let window_ms = self.config.settings.window_ms as i64;
        let mut sealed: Vec<(Sealed, usize)> = Vec::new();
        for (i, shard) in self.shards.iter().enumerate() {
            if i == 0 {
                // Size both collections once instead of growing them row by row.
                let open: usize = self.shards.iter().map(|s| s.lock().windows.len()).sum();
                sealed.reserve(open);
                self.exposition.reserve(open);
            }
            // Take the sealed windows under the shard lock; fold them into the exposition after
            // releasing it, so recording into this shard waits as little as possible.
            let start = sealed.len();
            {
                let mut shard = shard.lock();
                sealed.append(&mut shard.raw);
                shard.windows.retain(|key, open| {
                    let windows = &mut open.windows;
                    let mut i = 0;
                    while i < windows.len() {
                        if all || windows[i].0 + window_ms <= now {
                            let (window, e) = windows.swap_remove(i);
                            let row = Sealed {
                                key: key.clone(),
                                window,
                                window_ms,
                                summary: e.summary,
                                source: e.source,
                                accounted: e.accounted,
                            };
                            sealed.push((row, e.cost));
                        } else {
                            i += 1;
                        }
                    }
                    if !windows.is_empty() {
                        return true;
                    }
                    if open.idle_flushes == 0 {
                        // Keep the key one more flush, charged, if the bound allows.
                        let cost = ENTRY_OVERHEAD + key.heap_bytes();
                        if self.charge(cost, self.config.settings.max_memory_bytes) {
                            open.idle_charge = cost;
                            open.idle_flushes = 1;
                            return true;
                        }
                    }
                    self.memory
                        .fetch_sub(std::mem::take(&mut open.idle_charge), Relaxed);
                    false
                });
            }
            for (row, _) in &sealed[start..] {
                self.exposition.fold(&row.key, &row.summary, now);
            }
        }
        let mut pending = self.pending.lock().await;
        for (row, _) in &sealed {
            self.backlog_points[type_index(row.key.metric_type)]
                .fetch_add(row.accounted_points(), Relaxed);
        }
        pending.extend(sealed);
        self.backlog_rows.store(pending.len(), Relaxed);
        // A deleted or replaced file is noticed even when there is nothing to write.
        if let Err(e @ StoreError::Gone { .. }) = self.store.check_file().await {
            self.file_gone(&e, pending.len()).await?;
        }
        let mut written = 0;
        let mut recreated = false;
        let chunk = self.config.settings.max_rows_per_transaction.max(1);
        while !pending.is_empty() {
            // During shutdown no chunk starts past the deadline, and none waits on a lock
            // beyond it.
            let deadline = *self.deadline.lock();
            if let Some(deadline) = deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(RecorderError::DeadlinePassed {
                        rows: pending.len(),
                    });
                }
                let wait = self.store.busy_timeout().min(WRITE_WAIT).min(left);
                let _ = self
                    .store
                    .set_write_wait(wait.max(Duration::from_millis(1)))
                    .await;
            }
            let (batch_id, n) = match self.in_doubt.lock().take() {
                Some((id, m)) if m <= pending.len() => (id, m),
                _ => (self.next_batch_id(), chunk.min(pending.len())),
            };
            // In doubt until it is known written: a caller that drops this flush mid-write
            // leaves the chunk to be retried under the same id, never under a new one.
            *self.in_doubt.lock() = Some((batch_id.clone(), n));
            let started = Instant::now();
            let write = self
                .store
                .create_batch_once(&batch_id, pending.iter().take(n).map(row_of));
            let result = if self.store.location().is_local() {
                // Local waits are bounded by the lock wait set above.
                write.await
            } else {
                // A remote call is bounded by the store (`database.remote_timeout_ms`), and by
                // the shutdown deadline, even one set after the call started.
                tokio::select! {
                    // A write that finished as the deadline passed counts as written.
                    biased;
                    r = write => r,
                    () = self.deadline_passed() => Err(StoreError::TimedOut {
                        what: "a flush to the remote database at the shutdown deadline",
                        after_ms: started.elapsed().as_millis() as u64,
                    }),
                }
            };
            if result.is_ok() {
                self.in_doubt.lock().take();
            }
            match result {
                Ok(_) => {
                    let mut freed = 0;
                    let mut points = [0u64; 2];
                    for (row, cost) in pending.drain(..n) {
                        freed += cost;
                        points[type_index(row.key.metric_type)] += row.accounted_points();
                    }
                    for (i, p) in points.into_iter().enumerate() {
                        self.backlog_points[i].fetch_sub(p, Relaxed);
                        self.file_points[i].fetch_add(p, Relaxed);
                    }
                    self.file_rows.fetch_add(n as u64, Relaxed);
                    self.backlog_rows.store(pending.len(), Relaxed);
                    self.memory.fetch_sub(freed, Relaxed);
                    written += n;
                    self.flushed_rows.fetch_add(n as u64, Relaxed);
                    self.rows_written_total.fetch_add(n as u64, Relaxed);
                    if pending.is_empty() {
                        self.wrote(0);
                    }
                    let ms = started.elapsed().as_secs_f64() * 1000.0;
                    if !self.closing.load(SeqCst) {
                        self.ingest_self(
                            "luametrics.flush.duration_ms",
                            Kind::Histogram,
                            ms,
                            Tags::new(),
                            now,
                        );
                    }
                }
                // The file went away between the check and the write: recreate it once.
                Err(e @ StoreError::Gone { .. }) if !recreated => {
                    recreated = true;
                    self.file_gone(&e, pending.len()).await?;
                }
                Err(source) => {
                    self.flush_errors.fetch_add(1, Relaxed);
                    self.failed(&source, pending.len());
                    return Err(RecorderError::Flush {
                        rows: pending.len(),
                        source,
                    });
                }
            }
        }
        Ok(written)
    }

    /// Resolves once a shutdown deadline is set and has passed.
    async fn deadline_passed(&self) {
        loop {
            let deadline = *self.deadline.lock();
            match deadline {
                Some(d) => {
                    tokio::time::sleep_until(d.into()).await;
                    // A host's later flush clears the deadline; re-check it.
                    if self.deadline.lock().is_some_and(|d| d <= Instant::now()) {
                        return;
                    }
                }
                None => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// A batch id no other flush of any instance uses: process start, pid and a sequence
    /// shared by every service of the process (a runtime started again in the same process
    /// must not reuse an id its predecessor wrote).
    fn next_batch_id(&self) -> String {
        static BATCH_SEQ: AtomicU64 = AtomicU64::new(0);
        static START_NS: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
        let start = START_NS.get_or_init(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        });
        format!(
            "{}-{}-{start:x}-{}",
            self.store.instance().as_deref().unwrap_or("luametrics"),
            std::process::id(),
            BATCH_SEQ.fetch_add(1, Relaxed)
        )
    }

    /// A write failed: logged once when writes start failing, then kept in the health state.
    fn failed(&self, error: &StoreError, backlog_rows: usize) {
        let mut h = self.health.lock();
        h.failures += 1;
        h.last_error = Some(error.to_string());
        if h.failing_since_ms.is_none() {
            h.failing_since_ms = Some((self.config.clock)());
            tracing::error!(
                error = %error,
                backlog_rows,
                memory_used = self.memory.load(Relaxed),
                "luametrics: writes to the database are failing; rows are kept and retried"
            );
        }
    }

    /// A write succeeded: a recovery is logged once, and a checkpoint follows it.
    fn wrote(&self, backlog_rows: usize) {
        let mut h = self.health.lock();
        h.file_fault = None;
        if let Some(since) = h.failing_since_ms.take() {
            tracing::warn!(
                failed_for_ms = (self.config.clock)() - since,
                failed_attempts = h.failures,
                backlog_rows,
                "luametrics: writes to the database recovered"
            );
            h.failures = 0;
            h.last_error = None;
            self.checkpoint_due.store(true, Relaxed);
        }
    }

    /// The database file was deleted or replaced (`StoreError::Gone`): a new database is
    /// created and migrated at the path for the rows still held, and what this process wrote
    /// to the vanished file is counted lost (reason `database_gone`) and logged, once the loss
    /// is certain: when a new file replaced it, or at shutdown if it never came back. If the
    /// very same file comes back (a directory renamed away and back), nothing was lost.
    async fn file_gone(
        &self,
        error: &StoreError,
        backlog_rows: usize,
    ) -> Result<(), RecorderError> {
        if let StoreError::Gone { fault, .. } = error {
            let mut h = self.health.lock();
            if h.file_fault.is_none() {
                tracing::error!(
                    error = %error,
                    backlog_rows,
                    "luametrics: the database file was {} while open; recreating it at its path",
                    fault.as_str()
                );
            }
            h.file_fault = Some(fault.as_str());
        }
        match self.store.reopen().await {
            Ok(true) => {
                self.count_file_lost(backlog_rows);
                tracing::warn!(
                    backlog_rows,
                    "luametrics: recreated the database at its path; writing the rows still held"
                );
                Ok(())
            }
            // The file open is the one at the path again: nothing was lost.
            Ok(false) => {
                self.health.lock().file_fault = None;
                Ok(())
            }
            Err(source) => {
                self.flush_errors.fetch_add(1, Relaxed);
                self.failed(&source, backlog_rows);
                Err(RecorderError::Flush {
                    rows: backlog_rows,
                    source,
                })
            }
        }
    }

    /// Counts (and logs) the points, rows and traces this process wrote into a database file
    /// that is gone for good.
    fn count_file_lost(&self, backlog_rows: usize) {
        let rows = self.file_rows.swap(0, Relaxed);
        let mut lost = [0u64; 2];
        for (i, t) in TYPES.into_iter().enumerate() {
            lost[i] = self.file_points[i].swap(0, Relaxed);
            self.counters.lose(t, LostReason::DatabaseGone, lost[i]);
        }
        let traces = self.store.take_file_traces();
        if traces > 0 {
            let tags = Tags::from([("reason".to_string(), "database_gone".to_string())]);
            let _ = self.ingest_self(
                "luametrics.traces.dropped.count",
                Kind::Counter,
                traces as f64,
                tags,
                (self.config.clock)(),
            );
        }
        tracing::error!(
            lost_traces = traces,
            lost_rows = rows,
            lost_system_points = lost[0],
            lost_user_points = lost[1],
            backlog_rows,
            "luametrics: the rows and traces this process had written to the vanished database \
             file are lost with it, counted (reason database_gone)"
        );
    }

    /// Gives up on every row still unwritten at the shutdown deadline: counted as lost with
    /// reason `shutdown`, their memory released.
    async fn give_up(&self, waited: Duration, source: Option<StoreError>) -> RecorderError {
        if self.health.lock().file_fault.is_some() {
            // The database file never came back: what was written to it is lost too.
            self.count_file_lost(0);
        }
        let last_error = self.health.lock().last_error.clone();
        let mut pending = self.pending.lock().await;
        // The chunk in doubt goes with the rest: a later flush must not reuse its id for rows
        // that are not the same.
        self.in_doubt.lock().take();
        let rows = pending.len();
        let mut points = [0u64; 2];
        let mut freed = 0;
        for (row, cost) in pending.drain(..) {
            freed += cost;
            points[type_index(row.key.metric_type)] += row.accounted_points();
        }
        for (i, t) in TYPES.into_iter().enumerate() {
            self.counters.lose(t, LostReason::Shutdown, points[i]);
            self.backlog_points[i].fetch_sub(points[i], Relaxed);
        }
        self.backlog_rows.store(0, Relaxed);
        self.memory.fetch_sub(freed, Relaxed);
        tracing::error!(
            rows,
            system_points = points[0],
            user_points = points[1],
            error = source
                .as_ref()
                .map(|e| e.to_string())
                .or(last_error.clone())
                .unwrap_or_default(),
            "luametrics: shutdown deadline passed; unwritten rows counted as lost (reason shutdown)"
        );
        RecorderError::Unflushed {
            waited_ms: waited.as_millis() as u64,
            rows,
            points: points[0] + points[1],
            user_points: points[1],
            cause: match (&source, last_error) {
                (Some(e), _) => e.to_string(),
                (None, Some(last)) => format!("the deadline passed; last write error: {last}"),
                (None, None) => "the deadline passed".to_string(),
            },
            source: source.map(Box::new),
        }
    }
}

/// Every accounting counter as (metric name, type, reason tag, cumulative value): the one list
/// both the stored copies and the live exposition are made from.
fn accounting_counters(acc: &Accounting) -> Vec<(&'static str, MetricType, Option<&str>, u64)> {
    let mut out = Vec::new();
    for (mt, a) in [
        (MetricType::System, &acc.system),
        (MetricType::User, &acc.user),
    ] {
        out.push(("luametrics.points.offered.count", mt, None, a.offered));
        out.push(("luametrics.points.accepted.count", mt, None, a.accepted));
        for (name, map) in [
            ("luametrics.points.rejected.count", &a.rejected),
            ("luametrics.points.dropped.count", &a.dropped),
            ("luametrics.points.lost.count", &a.lost),
        ] {
            for (reason, n) in map {
                out.push((name, mt, Some(reason.as_str()), *n));
            }
        }
    }
    out
}

/// Tags of an accounting counter's series.
fn counter_tags(mt: MetricType, reason: Option<&str>) -> Tags {
    let mut tags = Tags::from([("metric_type".to_string(), mt.as_str().to_string())]);
    if let Some(r) = reason {
        tags.insert("reason".to_string(), r.to_string());
    }
    tags
}

/// A named fn (not a closure) keeps the flush future `Send` (higher-ranked lifetimes).
fn row_of(pending: &(Sealed, usize)) -> &Sealed {
    &pending.0
}

/// The background task: flushes sealed windows each tick, retries failures with backoff,
/// evicts idle series and prunes the limiter.
async fn flusher(inner: Arc<Inner>) {
    let s = &inner.config.settings;
    let tick = Duration::from_millis(if s.window_ms == 0 {
        200
    } else {
        s.window_ms.clamp(50, 1_000)
    });
    let mut delay = Duration::from_millis(s.retry_initial_ms.max(1));
    // A flush never waits long on another connection's lock: it fails and retries instead.
    let _ = inner
        .store
        .set_write_wait(inner.store.busy_timeout().min(WRITE_WAIT))
        .await;
    let mut last_evict = (inner.config.clock)();
    let mut last_checkpoint = Instant::now();
    let checkpoint_every = Duration::from_millis(s.checkpoint_interval_ms);
    let evict_every = (s.idle_eviction_ms as i64 / 10).clamp(1_000, 60_000);
    loop {
        let wait = tokio::time::timeout(tick, inner.wake.notified());
        let _ = wait.await;
        if inner.closing.load(SeqCst) {
            break;
        }
        match inner.flush(false).await {
            Ok(_) => delay = Duration::from_millis(s.retry_initial_ms.max(1)),
            Err(_) => {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = inner.wake.notified() => {}
                }
                delay = (delay * 2).min(Duration::from_millis(s.retry_max_ms.max(1)));
            }
        }
        // Checkpoints under the service's control: periodically, and once writes recover, so
        // the write-ahead log cannot fill a small volume and a full disk recovers once space
        // is freed.
        let periodic =
            s.checkpoint_interval_ms > 0 && last_checkpoint.elapsed() >= checkpoint_every;
        if periodic || inner.checkpoint_due.swap(false, Relaxed) {
            match inner.store.checkpoint().await {
                Ok(_) => last_checkpoint = Instant::now(),
                Err(e) => {
                    inner.checkpoint_due.store(true, Relaxed);
                    tracing::debug!(error = %e, "luametrics: checkpoint failed; retried later");
                }
            }
        }
        let now = (inner.config.clock)();
        if now - last_evict >= evict_every {
            inner.registry.evict_idle(now - s.idle_eviction_ms as i64);
            inner.exposition.evict_idle(now - s.idle_eviction_ms as i64);
            inner.quota.prune();
            last_evict = now;
        }
    }
    inner.flusher_done.store(true, SeqCst);
    inner.stopped.notify_waiters();
}

impl MetricsService {
    /// Every series' cumulative state as of the last flush, for `/metrics`. Reads the
    /// exposition shard by shard; recording never waits on it.
    ///
    /// The accounting counters (`luametrics.points.*`) and the flush backlog come from the
    /// service's own state at the time of the call, not from stored points: exact under the
    /// memory bound and while the database fails.
    pub fn exposition(&self) -> Vec<crate::ExposedSeries> {
        let mut series = self.inner.exposition.snapshot();
        series.retain(|s| {
            !(s.metric_type == MetricType::System
                && (s.name.starts_with("luametrics.points.")
                    || s.name == "luametrics.flush.backlog_rows"))
        });
        let live = |name: &str, kind: Kind, value: f64, tags: Tags| crate::ExposedSeries {
            metric_type: MetricType::System,
            kind,
            tenant: None,
            name: name.to_string(),
            tags,
            value,
            count: 1,
            sketch: None,
        };
        let acc = self.accounting();
        for (name, mt, reason, n) in accounting_counters(&acc) {
            series.push(live(
                name,
                Kind::Counter,
                n as f64,
                counter_tags(mt, reason),
            ));
        }
        series.push(live(
            "luametrics.flush.backlog_rows",
            Kind::Gauge,
            self.inner.backlog_rows.load(Relaxed) as f64,
            Tags::new(),
        ));
        series
    }

    /// Series held for scrapes.
    pub fn exposed_series(&self) -> usize {
        self.inner.exposition.len()
    }

    /// Evicts idle series and prunes limiter state now (the flusher also does it periodically).
    pub fn evict_idle(&self) -> usize {
        let now = self.now_ms();
        let cutoff = now - self.inner.config.settings.idle_eviction_ms as i64;
        let n = self.inner.registry.evict_idle(cutoff);
        self.inner.exposition.evict_idle(cutoff);
        self.inner.quota.prune();
        n
    }
}
