//! `MetricsService`: checks points, folds them into sharded per-series window accumulators
//! under a memory bound, and flushes sealed windows to the store in the background, with exact
//! accounting, retries, health and a shutdown that keeps its deadline.
//!
//! This module holds the shared state (`Inner`: shards of open windows, the pending queue, the
//! counters, health) and the service's handle; its parts live in submodules, one concern each:
//! `record` (the recording API and its checks), `accumulate` (the fold into windows under the
//! memory bound), `flush` (sealing, writing, retrying, the flusher task, shutdown) and
//! `self_metrics` (the service's own metrics). Invariants they share: memory charged equals
//! what is held; every offered point is accounted exactly once; a row is written once.
//! Series limits live in `series.rs`, quotas in `quota.rs`, handles in `handle.rs`.

mod accumulate;
mod flush;
mod record;
mod self_metrics;

use flush::flusher;
pub(crate) use flush::shrink_map;
pub(crate) use record::tenant_tag;
use self_metrics::{accounting_counters, counter_tags};

use crate::accounting::{Counters, DropReason, LostReason};
use crate::config::{InvalidSetting, RecorderConfig};
use crate::quota::TenantQuota;
use crate::series::{map_slot, owner, KeyIn, Memory, Registry, SeriesKey, ALLOC_OVERHEAD};
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

/// Distinct metric names (per kind) a host may record outside the catalog without a tenant:
/// each holds its exported names for the life of the process (`name_limit` past it).
pub const MAX_HOST_NAMES: usize = 10_000;
/// Who the host's own names are counted under (not a valid tenant id: never a tenant's).
const HOST_CLAIMANT: &str = "";

/// Bytes an accumulator entry costs besides its key and sketch: its map slot, its window (a
/// `Vec` of one), and the row it becomes while it waits to be written (in a queue that
/// doubles as it grows).
pub(crate) const ENTRY_OVERHEAD: usize = map_slot::<(Arc<SeriesKey>, Open)>()
    + std::mem::size_of::<(i64, Entry)>()
    + ALLOC_OVERHEAD
    + 2 * std::mem::size_of::<(Sealed, usize)>();
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
    memory: Memory,
    pending: tokio::sync::Mutex<VecDeque<(Sealed, usize)>>,
    /// Self-metric counters not yet recorded.
    flushed_rows: AtomicU64,
    /// Metric rows the store confirmed written, over the service's life.
    rows_written_total: AtomicU64,
    /// Exported names held by user metrics.
    names: luametrics_model::ExportedNames,
    /// Series the exposition let go of under memory pressure (`relieve_pressure`).
    exposition_evicted: AtomicU64,
    /// Bytes tenants' handles hold (`tenant_handle_key`).
    tenant_handles: Arc<AtomicUsize>,
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

/// The part of the memory bound tenants' handles (the pipeline's per-tenant series, kept in
/// its cache) may hold together: a sixteenth.
pub const TENANT_HANDLES_SHARE: usize = 16;

/// Owned tags from a host's `(key, value)` pairs.
pub(crate) fn tags_from(pairs: &[(&str, &str)]) -> Tags {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl MetricsService {
    /// Like [`MetricsService::start`], after checking the settings
    /// ([`crate::RecorderSettings::validate`]): for settings that come from outside the program.
    pub fn try_start(store: Arc<Store>, config: RecorderConfig) -> Result<Self, InvalidSetting> {
        config.settings.validate()?;
        Ok(Self::start(store, config))
    }

    /// Starts the service and its background flusher, with settings the program built (the
    /// runtime validates its configuration first; see [`MetricsService::try_start`]). Must be
    /// called inside a tokio runtime.
    pub fn start(store: Arc<Store>, config: RecorderConfig) -> Self {
        let tenant_usage = config.settings.tenant_usage;
        // A share of 1 (or more) is no share: one tenant may take the whole bound.
        let share = match config.settings.tenant_memory_share {
            s if s > 0.0 && s < 1.0 => (config.settings.max_memory_bytes as f64 * s) as usize,
            _ => 0,
        };
        let shards = (0..config.settings.shards.max(1))
            .map(|_| Mutex::new(Shard::default()))
            .collect();
        let memory = Memory::with_share(share);
        let tenants = crate::tenants::TenantLedger::new(
            tenant_usage,
            memory.clone(),
            config.settings.max_memory_bytes,
        );
        let inner = Arc::new(Inner {
            quota: TenantQuota::new(&config.policy.limits),
            config,
            store,
            shards,
            hasher: ahash::RandomState::new(),
            registry: Registry::default(),
            exposition: crate::exposition::Exposition::new(16),
            counters: Counters::default(),
            memory,
            pending: tokio::sync::Mutex::new(VecDeque::new()),
            flushed_rows: AtomicU64::new(0),
            rows_written_total: AtomicU64::new(0),
            names: Default::default(),
            exposition_evicted: AtomicU64::new(0),
            tenant_handles: Arc::new(AtomicUsize::new(0)),
            flush_errors: AtomicU64::new(0),
            in_doubt: parking_lot::Mutex::new(None),
            last_reported: Mutex::new(HashMap::new()),
            tenants,
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
        // The catalog's families are the service's before anyone records: its own counters
        // and gauges print from live state at scrape time (`exposition`), never through a
        // claim, and a host's or tenant's name printing as one of them (`luametrics.points_
        // accepted.count`) was merged into it or took its place (adversary round 11). Fixed
        // by the catalog, like the catalog itself, they are not charged against the bound.
        for entry in inner.config.catalog.entries() {
            let claimed = inner.names.claim(
                MetricType::System,
                &entry.name,
                entry.kind,
                entry.unit,
                None,
                &mut |_| true,
            );
            if let Err(e) = claimed {
                tracing::warn!(metric = %entry.name, "luametrics: a catalog metric's names are another's: {e:?}");
            }
        }
        let service = Self { inner };
        tokio::spawn(flusher(service.inner.clone()));
        service
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

    /// Claims the exported Prometheus names of a system metric (hosts may record names outside
    /// the catalog), so no two metrics, system or user, print one family. A name outside the
    /// catalog recorded for a tenant counts against that tenant's bound of names (`name_limit`),
    /// as a script's would: the catalog's own are fixed and few.
    ///
    /// The names are charged against the memory bound. A point's claim (`refusable`) is
    /// refused when the bound has no room (`memory_bound`, counted as dropped), so cycling
    /// tenant ids through `POST /v1/metrics` cannot push the charge past the bound; a
    /// handle's is charged and never refused (it would refuse its points for good), and the
    /// handles a host makes are few and fixed.
    pub fn claim_system_name(
        &self,
        name: &str,
        kind: Kind,
        tenant: Option<&str>,
        refusable: bool,
    ) -> Result<(), RejectReason> {
        let entry = self.inner.config.catalog.get(name);
        let unit = entry.map_or_else(|| luametrics_model::infer_unit(name), |e| e.unit);
        // Tenants' metrics print as `user_*`: a host's printing there would pass for a
        // tenant's own (with its `tenant` label) and withhold the tenant's metric of that
        // name (adversary round 12).
        if luametrics_model::exported_names(MetricType::System, name, kind, unit)
            .iter()
            .any(|n| n.starts_with("user_"))
        {
            return Err(RejectReason::ReservedPrefix);
        }
        let claimant = match (entry, tenant) {
            (None, Some(tenant)) => Some(luametrics_model::Claimant {
                tenant,
                max_names: self.inner.config.policy.limits.max_names_per_tenant,
            }),
            // The host's own names outside the catalog are bounded too (each holds its
            // exported names for good), counted under the host's pseudo-tenant `""`, which no
            // tenant id can be and which is never forgotten.
            (None, None) => Some(luametrics_model::Claimant {
                tenant: HOST_CLAIMANT,
                max_names: MAX_HOST_NAMES,
            }),
            _ => None,
        };
        let inner = &self.inner;
        let who = claimant.map(|c| c.tenant);
        let result = inner.names.claim(
            MetricType::System,
            name,
            kind,
            unit,
            claimant,
            &mut |cost| inner.charge_claim(who, cost, refusable),
        );
        if result == Err(RejectReason::MemoryBound) {
            inner
                .last_memory_drop_ms
                .store((inner.config.clock)(), Relaxed);
        }
        result
    }

    /// A handle's key, charged against the memory bound while anything holds it (a cache of
    /// handles pins what it keeps), never refused.
    pub(crate) fn handle_key(&self, key: SeriesKey) -> Arc<SeriesKey> {
        key.charged_always(&self.inner.memory)
    }

    /// A tenant's handle's key (the pipeline's per-tenant series), charged against the bound
    /// within the tenants' handles' part of it ([`TENANT_HANDLES_SHARE`]); `false` with the
    /// key uncharged when there is no room: the handle works, each point charging what it
    /// holds, and is not to be kept (adversary round 12: one-off tenant ids filled a cache of
    /// handles charged whatever the bound to twice a 4 MiB bound, and every tenant was
    /// refused until restart).
    pub(crate) fn tenant_handle_key(&self, key: SeriesKey) -> (Arc<SeriesKey>, bool) {
        let max = self.inner.config.settings.max_memory_bytes;
        match key.charged_within(
            &self.inner.memory,
            max,
            &self.inner.tenant_handles,
            max / TENANT_HANDLES_SHARE,
        ) {
            Ok(k) => (k, true),
            Err(k) => (Arc::new(k), false),
        }
    }

    /// Claims the exported Prometheus names of `tenant`'s user metric: refused
    /// (`name_conflict`) when another metric already holds one of them, so `/metrics` stays
    /// valid for any input, and (`name_limit`) past the tenant's bound of distinct metrics, so
    /// no tenant makes the process hold any number of them. The names are charged against the
    /// memory bound (`memory_bound` when it has no room).
    pub fn claim_user_name(
        &self,
        tenant: &str,
        name: &str,
        kind: Kind,
    ) -> Result<(), RejectReason> {
        let result = self.inner.names.claim(
            MetricType::User,
            name,
            kind,
            luametrics_model::infer_unit(name),
            Some(luametrics_model::Claimant {
                tenant,
                max_names: self.inner.config.policy.limits.max_names_per_tenant,
            }),
            &mut |cost| self.inner.charge_claim(Some(tenant), cost, true),
        );
        if result == Err(RejectReason::MemoryBound) {
            let now = (self.inner.config.clock)();
            self.inner.last_memory_drop_ms.store(now, Relaxed);
        }
        result
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

    /// A `metrics` crate recorder that lands `metrics::counter!` and friends in this service.
    pub fn metrics_recorder(&self) -> crate::MetricsBridge {
        crate::MetricsBridge::new(self.clone())
    }
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
        let before = series.len();
        let names = &self.inner.names;
        series.retain(|s| {
            s.metric_type == MetricType::System || names.is_exported(s.metric_type, &s.name, s.kind)
        });
        let withheld = before - series.len();
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
            "luametrics.exposition.withheld",
            Kind::Gauge,
            withheld as f64,
            Tags::new(),
        ));
        series.push(live(
            "luametrics.exposition.evicted.count",
            Kind::Counter,
            self.inner.exposition_evicted.load(Relaxed) as f64,
            Tags::new(),
        ));
        series.push(live(
            "luametrics.tenant.usage.unattributed.count",
            Kind::Counter,
            self.inner.tenants.unattributed() as f64,
            Tags::new(),
        ));
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
        self.inner
            .evict_idle(now - self.inner.config.settings.idle_eviction_ms as i64)
    }

    /// Tenants with bookkeeping kept (their point ledger or their metric names).
    pub fn tenants_tracked(&self) -> usize {
        self.inner.tenants.len().max(self.inner.names.tenants())
    }
}

impl Inner {
    /// Forgets what has been idle since `cutoff`: series (registry, exposition), limiter
    /// state, and the bookkeeping of tenants that hold nothing any more (their point ledger
    /// once fully reported and untouched for a pass, their metric names), so tenants coming
    /// and going do not grow the process. Returns the series evicted.
    pub(super) fn evict_idle(&self, cutoff: i64) -> usize {
        let n = self.registry.evict_idle(cutoff, |_| true);
        self.exposition.evict_idle(cutoff, &self.memory, |_| true);
        self.quota.prune();
        let mut holding: std::collections::HashSet<Arc<str>> = self.registry.tenants_held();
        holding.extend(self.exposition.tenants_held());
        for shard in &self.shards {
            let shard = shard.lock();
            holding.extend(shard.windows.keys().filter_map(|k| k.tenant.clone()));
            holding.extend(shard.raw.iter().filter_map(|(r, _)| r.key.tenant.clone()));
        }
        {
            // Rows waiting to be written hold their tenants too (a try: never waits on a
            // flush; a busy queue keeps everyone this pass).
            match self.pending.try_lock() {
                Ok(pending) => {
                    holding.extend(pending.iter().filter_map(|(r, _)| r.key.tenant.clone()))
                }
                Err(_) => return n,
            }
        }
        self.tenants.forget_idle(|t| holding.contains(t));
        let settled = self
            .names
            .forget_tenants(|t| t == HOST_CLAIMANT || holding.contains(t) || self.tenants.has(t));
        self.memory.fetch_add(settled.taken, Relaxed);
        self.memory.fetch_sub(settled.freed, Relaxed);
        for (tenant, bytes) in settled.tenants {
            self.memory.release_for(Some(&Arc::from(tenant)), bytes);
        }
        n
    }

    /// Charges what a name claim newly holds: the claimant tenant's own record against its
    /// share of the bound (`charge_for`), what printing the metric holds against the bound.
    /// Unless `refusable`, charged whatever the bound (a handle's names).
    fn charge_claim(
        &self,
        tenant: Option<&str>,
        cost: luametrics_model::ClaimCost,
        refusable: bool,
    ) -> bool {
        let max = self.config.settings.max_memory_bytes;
        let tenant: Option<Arc<str>> = tenant.filter(|_| cost.tenant > 0).map(Arc::from);
        if !refusable {
            self.memory.add_for(tenant.as_ref(), cost.tenant);
            self.memory.fetch_add(cost.shared, Relaxed);
            return true;
        }
        if !self.memory.charge_for(tenant.as_ref(), cost.tenant, max) {
            return false;
        }
        if !self.memory.charge(cost.shared, max) {
            self.memory.release_for(tenant.as_ref(), cost.tenant);
            return false;
        }
        true
    }
}
