use crate::{
    DiscardReason, Engine, EngineSettings, Execution, MetricsSink, PoolError, PoolSettings, Script,
};
use deadpool::managed::{self, Metrics, Object, Pool, RecycleError, RecycleResult};
use luametrics_model::{Kind, Tags};
use luametrics_sketch::Summary;
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Stats {
    active: AtomicI64,
    peak_active: AtomicI64,
    waiting: AtomicI64,
    /// Highest `waiting` since the last sample (a gauge sampled each second would miss queues).
    peak_waiting_sample: AtomicI64,
    /// Highest `waiting` since the pool was built.
    peak_waiting: AtomicI64,
    checkouts: AtomicU64,
    exhausted: AtomicU64,
    timeouts: AtomicU64,
    created: AtomicU64,
    discarded: [AtomicU64; DiscardReason::ALL.len()],
    wait: Mutex<Option<Summary>>,
    /// Counter values already recorded, to record deltas.
    reported: Mutex<Reported>,
}

#[derive(Default)]
struct Reported {
    exhausted: u64,
    timeouts: u64,
    created: u64,
    discarded: [u64; DiscardReason::ALL.len()],
}

impl Stats {
    fn discard(&self, reason: DiscardReason) {
        self.discarded[reason as usize].fetch_add(1, Relaxed);
    }
}

struct Manager {
    settings: Arc<EngineSettings>,
    sink: Arc<dyn MetricsSink>,
    stats: Arc<Stats>,
}

impl managed::Manager for Manager {
    type Type = Engine;
    type Error = String;

    async fn create(&self) -> Result<Engine, String> {
        let engine =
            Engine::new(self.settings.clone(), self.sink.clone()).map_err(|e| e.to_string())?;
        self.stats.created.fetch_add(1, Relaxed);
        Ok(engine)
    }

    async fn recycle(&self, engine: &mut Engine, _: &Metrics) -> RecycleResult<String> {
        match engine.health() {
            None => Ok(()),
            Some(reason) => {
                self.stats.discard(reason);
                Err(RecycleError::message(reason.as_str()))
            }
        }
    }
}

/// A snapshot of the pool for operators (`GET /v1/pool`, `luametrics bench pool`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PoolStatus {
    /// Configured maximum.
    pub max_size: usize,
    /// Engines alive.
    pub size: usize,
    /// Engines idle.
    pub available: usize,
    /// Engines checked out now.
    pub active: i64,
    /// Highest number of engines checked out at once since the pool was built.
    pub peak_active: i64,
    /// Checkouts waiting now.
    pub waiting: i64,
    /// Highest number of waiting checkouts since the pool was built.
    pub peak_waiting: i64,
    /// Checkouts served.
    pub checkouts: u64,
    /// Checkouts that found no idle engine with the pool at max size.
    pub exhausted: u64,
    /// Checkouts that timed out.
    pub timeouts: u64,
    /// Engines created.
    pub created: u64,
    /// Engines discarded, by reason.
    pub discarded: BTreeMap<String, u64>,
}

/// The deadpool pool of sandboxed engines, with its gauges and counters (SPEC §6.3).
pub struct EnginePool {
    pool: Pool<Manager>,
    stats: Arc<Stats>,
    settings: PoolSettings,
    sink: Arc<dyn MetricsSink>,
}

/// An engine checked out of the pool; returns to it on drop (or is discarded if a limit
/// poisoned it).
pub struct PooledEngine {
    object: Option<Object<Manager>>,
    stats: Arc<Stats>,
    /// Time the checkout waited (ms).
    pub wait_ms: f64,
    /// Whether the checkout found the pool exhausted (at max size, no idle engine) and queued:
    /// what `lua.pool.exhausted` counts.
    pub queued: bool,
}

impl std::fmt::Debug for PooledEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledEngine")
            .field("wait_ms", &self.wait_ms)
            .field("queued", &self.queued)
            .finish()
    }
}

impl std::ops::Deref for PooledEngine {
    type Target = Engine;
    fn deref(&self) -> &Engine {
        // Present until drop.
        self.object.as_deref().expect("engine present until drop")
    }
}

impl std::ops::DerefMut for PooledEngine {
    fn deref_mut(&mut self) -> &mut Engine {
        self.object
            .as_deref_mut()
            .expect("engine present until drop")
    }
}

impl Drop for PooledEngine {
    fn drop(&mut self) {
        self.stats.active.fetch_sub(1, Relaxed);
        if let Some(object) = self.object.take() {
            if let Some(reason) = object.poisoned() {
                self.stats.discard(reason);
                // Out of the pool for good: the next checkout builds a fresh engine.
                drop(Object::take(object));
            }
        }
    }
}

impl EnginePool {
    /// A pool of at most `pool.max_size` engines built with `engine` settings, recording
    /// through `sink`. Engines are created lazily. Must be called inside a tokio runtime.
    pub fn new(
        engine: EngineSettings,
        pool: PoolSettings,
        sink: Arc<dyn MetricsSink>,
    ) -> Result<Self, PoolError> {
        let stats = Arc::new(Stats::default());
        let manager = Manager {
            settings: Arc::new(engine),
            sink: sink.clone(),
            stats: stats.clone(),
        };
        let inner = Pool::builder(manager)
            .max_size(pool.max_size.max(1))
            .wait_timeout(Some(Duration::from_millis(pool.wait_timeout_ms)))
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .map_err(|e| PoolError::Create(e.to_string()))?;
        Ok(Self {
            pool: inner,
            stats,
            settings: pool,
            sink,
        })
    }

    /// The pool settings.
    pub fn settings(&self) -> &PoolSettings {
        &self.settings
    }

    /// Checks out an engine, waiting up to the configured timeout.
    pub async fn checkout(&self) -> Result<PooledEngine, PoolError> {
        let stats = &self.stats;
        let start = Instant::now();
        // First without waiting: no timer to arm, and a refusal is exactly "exhausted" (every
        // permit is out: the pool is at max size with no idle engine).
        let mut timeouts = self.pool.timeouts();
        timeouts.wait = Some(Duration::ZERO);
        let mut queued = false;
        let got = match self.pool.timeout_get(&timeouts).await {
            Err(managed::PoolError::Timeout(managed::TimeoutType::Wait)) => {
                queued = true;
                stats.exhausted.fetch_add(1, Relaxed);
                let now_waiting = stats.waiting.fetch_add(1, Relaxed) + 1;
                stats.peak_waiting_sample.fetch_max(now_waiting, Relaxed);
                stats.peak_waiting.fetch_max(now_waiting, Relaxed);
                let got = self.pool.get().await;
                stats.waiting.fetch_sub(1, Relaxed);
                got
            }
            other => other,
        };
        let wait_ms = start.elapsed().as_secs_f64() * 1000.0;
        match got {
            Ok(object) => {
                let now_active = stats.active.fetch_add(1, Relaxed) + 1;
                stats.peak_active.fetch_max(now_active, Relaxed);
                stats.checkouts.fetch_add(1, Relaxed);
                stats
                    .wait
                    .lock()
                    .get_or_insert_with(|| Summary::new(true))
                    .observe(wait_ms, 0);
                Ok(PooledEngine {
                    object: Some(object),
                    stats: stats.clone(),
                    wait_ms,
                    queued,
                })
            }
            Err(managed::PoolError::Timeout(_)) => {
                stats.timeouts.fetch_add(1, Relaxed);
                Err(PoolError::Timeout {
                    waited_ms: wait_ms as u64,
                    max_size: self.settings.max_size,
                })
            }
            Err(managed::PoolError::Closed) => Err(PoolError::Closed),
            Err(other) => Err(PoolError::Create(other.to_string())),
        }
    }

    /// Checks out an engine, runs the script, returns the engine; the timings include the wait.
    pub async fn execute(
        &self,
        script: &Script,
        tenant: &str,
        event: &Json,
        context: &Json,
    ) -> Result<Execution, PoolError> {
        self.execute_limited(script, tenant, event, context, None)
            .await
    }

    /// Like [`EnginePool::execute`] with a time limit for this execution (a node's timeout).
    pub async fn execute_limited(
        &self,
        script: &Script,
        tenant: &str,
        event: &Json,
        context: &Json,
        time_limit_ms: Option<u64>,
    ) -> Result<Execution, PoolError> {
        let mut engine = self.checkout().await?;
        let mut execution = engine.execute_limited(script, tenant, event, context, time_limit_ms);
        execution.timings.wait_ms = engine.wait_ms;
        execution.timings.total_ms += engine.wait_ms;
        Ok(execution)
    }

    /// Current gauges and counters.
    pub fn status(&self) -> PoolStatus {
        let s = self.pool.status();
        let st = &self.stats;
        PoolStatus {
            max_size: s.max_size,
            size: s.size,
            available: s.available,
            active: st.active.load(Relaxed),
            peak_active: st.peak_active.load(Relaxed),
            waiting: st.waiting.load(Relaxed),
            peak_waiting: st.peak_waiting.load(Relaxed),
            checkouts: st.checkouts.load(Relaxed),
            exhausted: st.exhausted.load(Relaxed),
            timeouts: st.timeouts.load(Relaxed),
            created: st.created.load(Relaxed),
            discarded: DiscardReason::ALL
                .iter()
                .filter_map(|r| {
                    let n = st.discarded[*r as usize].load(Relaxed);
                    (n > 0).then(|| (r.as_str().to_string(), n))
                })
                .collect(),
        }
    }

    /// Records the pool's system metrics once: gauges (`lua.pool.waiting` is the peak since
    /// the previous sample), counter deltas and the wait histogram.
    pub fn record_metrics(&self) {
        let st = &self.stats;
        let s = self.pool.status();
        let sink = &self.sink;
        let none = Tags::new;
        sink.record_system(
            "lua.pool.active",
            Kind::Gauge,
            st.active.load(Relaxed) as f64,
            none(),
        );
        let now_waiting = st.waiting.load(Relaxed);
        let peak = st
            .peak_waiting_sample
            .swap(now_waiting, Relaxed)
            .max(now_waiting);
        sink.record_system("lua.pool.waiting", Kind::Gauge, peak as f64, none());
        sink.record_system("lua.pool.size", Kind::Gauge, s.size as f64, none());
        let mut rep = st.reported.lock();
        let delta = |name: &str, cur: u64, prev: &mut u64, tags: Tags| {
            if cur > *prev {
                sink.record_system(name, Kind::Counter, (cur - *prev) as f64, tags);
                *prev = cur;
            }
        };
        delta(
            "lua.pool.exhausted",
            st.exhausted.load(Relaxed),
            &mut rep.exhausted,
            none(),
        );
        delta(
            "lua.pool.timeout.count",
            st.timeouts.load(Relaxed),
            &mut rep.timeouts,
            none(),
        );
        delta(
            "lua.engine.created.count",
            st.created.load(Relaxed),
            &mut rep.created,
            none(),
        );
        for r in DiscardReason::ALL {
            let cur = st.discarded[r as usize].load(Relaxed);
            delta(
                "lua.engine.discarded.count",
                cur,
                &mut rep.discarded[r as usize],
                Tags::from([("reason".to_string(), r.as_str().to_string())]),
            );
        }
        drop(rep);
        if let Some(wait) = st.wait.lock().take() {
            sink.record_system_summary("lua.pool.wait_ms", Kind::Histogram, none(), wait);
        }
    }

    /// Records the pool's metrics every `sample_interval_ms` until the pool is dropped.
    pub fn start_sampler(self: &Arc<Self>) {
        let weak: Weak<Self> = Arc::downgrade(self);
        let every = Duration::from_millis(self.settings.sample_interval_ms.max(10));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match weak.upgrade() {
                    Some(pool) => pool.record_metrics(),
                    None => return,
                }
            }
        });
    }
}
