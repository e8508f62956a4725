//! The pool of sandboxed engines, and where executions run.
//!
//! Lua never runs on an async worker: [`EnginePool::run`] checks an engine out on the async
//! side (waiting costs no thread), then hands the execution to one of the pool's runner
//! threads (`runner.rs`: threads meant to block, awake between back-to-back executions) and
//! awaits it. A script stuck in a C function past its time
//! limit therefore blocks only that thread; past the limit plus a grace period the pool stops
//! waiting for it: the caller gets a typed timeout, the engine is written off (dropped by its
//! thread whenever the call returns) and its place in the pool is freed for a new engine
//! (`lua.engine.abandoned.count`).
//!
//! The pool is ours rather than deadpool's because writing off an engine that is still
//! running, handing a freed place straight to the next waiter, and counting exactly which
//! checkouts queued need control of the permits deadpool keeps private. Waiters are served in
//! arrival order; an engine returned healthy goes to the first waiter, a discarded one leaves
//! its place to the first waiter (who builds a new engine).

use crate::{
    DiscardReason, Engine, EngineSettings, Execution, MetricsSink, PoolError, PoolSettings, Script,
    ScriptError, Timings,
};
use luametrics_model::{Kind, Tags};
use luametrics_sketch::Summary;
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::Value as Json;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

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
    /// Executions given up on (past their limit and grace).
    abandoned: AtomicU64,
    /// Abandoned executions whose thread is still running.
    abandoned_running: AtomicI64,
    wait: Mutex<Option<Summary>>,
    /// Counter values already recorded, to record deltas.
    reported: Mutex<Reported>,
}

#[derive(Default)]
struct Reported {
    exhausted: u64,
    timeouts: u64,
    created: u64,
    abandoned: u64,
    discarded: [u64; DiscardReason::ALL.len()],
}

impl Stats {
    fn discard(&self, reason: DiscardReason) {
        self.discarded[reason as usize].fetch_add(1, Relaxed);
    }
}

/// A place in the pool: an idle engine, or the right to build one.
type Grant = Option<Engine>;

struct Waiter {
    id: u64,
    tx: oneshot::Sender<Grant>,
}

#[derive(Default)]
struct State {
    idle: Vec<Engine>,
    /// Places taken: engines idle or checked out, and places granted for an engine being
    /// built. Abandoned engines no longer count.
    live: usize,
    waiters: VecDeque<Waiter>,
    next_waiter: u64,
}

struct Inner {
    /// The threads executions run on.
    runners: Arc<crate::runner::Runners>,
    settings: PoolSettings,
    engine: Arc<EngineSettings>,
    sink: Arc<dyn MetricsSink>,
    state: Mutex<State>,
    stats: Stats,
}

impl Inner {
    fn build(&self) -> Result<Engine, PoolError> {
        let engine = Engine::new(self.engine.clone(), self.sink.clone())
            .map_err(|e| PoolError::Create(e.to_string()))?;
        self.stats.created.fetch_add(1, Relaxed);
        Ok(engine)
    }

    /// Takes a place back: a healthy engine returns to the first waiter or to the idle list; a
    /// discarded engine (or a place whose engine was never built, or was abandoned) goes to
    /// the first waiter as the right to build one, or frees the place.
    fn give_back(&self, engine: Grant) {
        let mut grant = engine.and_then(|mut e| match e.health() {
            None => Some(e),
            Some(reason) => {
                self.stats.discard(reason);
                None
            }
        });
        let mut state = self.state.lock();
        while let Some(w) = state.waiters.pop_front() {
            self.stats.waiting.fetch_sub(1, Relaxed);
            match w.tx.send(grant) {
                Ok(()) => return,
                // That waiter gave up (timed out, or its caller went away): next one.
                Err(back) => grant = back,
            }
        }
        match grant {
            Some(e) => state.idle.push(e),
            None => state.live = state.live.saturating_sub(1),
        }
    }
}

/// A snapshot of the pool for operators (`GET /v1/pool`, `luametrics bench pool`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PoolStatus {
    /// Configured maximum.
    pub max_size: usize,
    /// Engines alive (idle, checked out or being built), abandoned ones excluded.
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
    /// Checkouts that found no idle engine with the pool at max size (and queued).
    pub exhausted: u64,
    /// Checkouts that timed out.
    pub timeouts: u64,
    /// Engines created.
    pub created: u64,
    /// Engines discarded, by reason.
    pub discarded: BTreeMap<String, u64>,
    /// Executions given up on past their time limit and grace (their engines written off).
    pub abandoned: u64,
    /// Abandoned executions still running on their threads (stuck in C): what `/readyz`
    /// bounds.
    pub abandoned_running: i64,
}

/// One execution for [`EnginePool::run`]: everything it needs, owned, so it can move to the
/// thread that runs it.
#[derive(Debug, Clone)]
pub struct Job {
    /// The script.
    pub script: Script,
    /// The tenant the script runs for.
    pub tenant: Arc<str>,
    /// The trigger payload (`event` in Lua).
    pub event: Arc<Json>,
    /// What earlier nodes added (`context` in Lua).
    pub context: Arc<Json>,
    /// A time limit for this execution instead of the engine's default.
    pub time_limit_ms: Option<u64>,
}

/// The pool of sandboxed engines, with its gauges and counters.
pub struct EnginePool {
    inner: Arc<Inner>,
}

/// An engine checked out of the pool for a caller that runs it on its own (blocking) thread;
/// returns to the pool on drop, or is discarded if a limit poisoned it.
pub struct PooledEngine {
    engine: Option<Engine>,
    inner: Arc<Inner>,
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
        // Present from checkout until drop.
        self.engine.as_ref().expect("engine present until drop")
    }
}

impl std::ops::DerefMut for PooledEngine {
    fn deref_mut(&mut self) -> &mut Engine {
        self.engine.as_mut().expect("engine present until drop")
    }
}

impl Drop for PooledEngine {
    fn drop(&mut self) {
        self.inner.stats.active.fetch_sub(1, Relaxed);
        self.inner.give_back(self.engine.take());
    }
}

/// A place held by an execution's thread. Given back once: with the engine when the
/// execution returns, by the waiting side at once when it abandons the execution, or on drop
/// (the thread ended with nobody waiting for it: a cancelled caller), whichever comes first.
struct Held {
    inner: Arc<Inner>,
    released: Arc<AtomicBool>,
}

impl Held {
    fn release(&self, engine: Grant) {
        if !self.released.swap(true, Relaxed) {
            self.inner.stats.active.fetch_sub(1, Relaxed);
            self.inner.give_back(engine);
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.release(None);
    }
}

/// Decrements the count of abandoned executions still running when the thread of one ends.
struct AbandonWatch {
    abandoned: AtomicBool,
    inner: Arc<Inner>,
}

impl Drop for AbandonWatch {
    fn drop(&mut self) {
        if self.abandoned.load(Relaxed) {
            self.inner.stats.abandoned_running.fetch_sub(1, Relaxed);
        }
    }
}

impl EnginePool {
    /// A pool of at most `pool.max_size` engines built with `engine` settings, recording
    /// through `sink`. Engines are created lazily.
    pub fn new(
        engine: EngineSettings,
        pool: PoolSettings,
        sink: Arc<dyn MetricsSink>,
    ) -> Result<Self, PoolError> {
        Ok(Self {
            inner: Arc::new(Inner {
                runners: Arc::default(),
                settings: pool,
                engine: Arc::new(engine),
                sink,
                state: Mutex::new(State::default()),
                stats: Stats::default(),
            }),
        })
    }

    /// The pool settings.
    pub fn settings(&self) -> &PoolSettings {
        &self.inner.settings
    }

    /// Takes a place: an idle engine, the right to build one, or a wait in line for either
    /// (up to the configured timeout). Returns the place, the wait in ms and whether it queued.
    async fn acquire(&self) -> Result<(Grant, f64, bool), PoolError> {
        let inner = &self.inner;
        let stats = &inner.stats;
        let start = Instant::now();
        let (id, mut rx) = {
            let mut state = inner.state.lock();
            if let Some(e) = state.idle.pop() {
                drop(state);
                return Ok((Some(e), self.checked_out(0.0), false));
            }
            if state.live < inner.settings.max_size.max(1) {
                state.live += 1;
                drop(state);
                return Ok((None, self.checked_out(0.0), false));
            }
            // Exhausted: in line.
            stats.exhausted.fetch_add(1, Relaxed);
            let now_waiting = stats.waiting.fetch_add(1, Relaxed) + 1;
            stats.peak_waiting_sample.fetch_max(now_waiting, Relaxed);
            stats.peak_waiting.fetch_max(now_waiting, Relaxed);
            let (tx, rx) = oneshot::channel();
            let id = state.next_waiter;
            state.next_waiter += 1;
            state.waiters.push_back(Waiter { id, tx });
            (id, rx)
        };
        let timeout = Duration::from_millis(inner.settings.wait_timeout_ms);
        let got = match tokio::time::timeout(timeout, &mut rx).await {
            Ok(r) => r.ok(),
            Err(_) => {
                let mut state = inner.state.lock();
                if let Some(pos) = state.waiters.iter().position(|w| w.id == id) {
                    state.waiters.remove(pos);
                    stats.waiting.fetch_sub(1, Relaxed);
                    None
                } else {
                    // Granted while the timer fired: the grant is in the channel already.
                    drop(state);
                    rx.try_recv().ok()
                }
            }
        };
        let wait_ms = start.elapsed().as_secs_f64() * 1000.0;
        match got {
            Some(grant) => Ok((grant, self.checked_out(wait_ms), true)),
            None => {
                stats.timeouts.fetch_add(1, Relaxed);
                Err(PoolError::Timeout {
                    waited_ms: wait_ms as u64,
                    max_size: inner.settings.max_size,
                })
            }
        }
    }

    fn checked_out(&self, wait_ms: f64) -> f64 {
        let stats = &self.inner.stats;
        let now_active = stats.active.fetch_add(1, Relaxed) + 1;
        stats.peak_active.fetch_max(now_active, Relaxed);
        stats.checkouts.fetch_add(1, Relaxed);
        stats
            .wait
            .lock()
            .get_or_insert_with(|| Summary::new(true))
            .observe(wait_ms, 0);
        wait_ms
    }

    /// Checks out an engine for a caller that runs it itself, on a thread meant to block
    /// (building one if the pool has room), waiting up to the configured timeout.
    pub async fn checkout(&self) -> Result<PooledEngine, PoolError> {
        let (grant, wait_ms, queued) = self.acquire().await?;
        let engine = match grant {
            Some(e) => e,
            None => match self.inner.build() {
                Ok(e) => e,
                Err(err) => {
                    self.inner.stats.active.fetch_sub(1, Relaxed);
                    self.inner.give_back(None);
                    return Err(err);
                }
            },
        };
        Ok(PooledEngine {
            engine: Some(engine),
            inner: self.inner.clone(),
            wait_ms,
            queued,
        })
    }

    /// Runs one execution: checks out an engine, runs the script on a blocking thread, returns
    /// the engine. The timings include the wait. An execution that has not returned by its
    /// time limit plus the grace period is abandoned: a typed timeout, and its engine written
    /// off.
    pub async fn run(&self, job: Job) -> Result<Execution, PoolError> {
        let (grant, wait_ms, _) = self.acquire().await?;
        let released = Arc::new(AtomicBool::new(false));
        let held = Held {
            inner: self.inner.clone(),
            released: released.clone(),
        };
        let limit_ms = job.time_limit_ms.unwrap_or(self.inner.engine.time_limit_ms);
        let watch = Arc::new(AbandonWatch {
            abandoned: AtomicBool::new(false),
            inner: self.inner.clone(),
        });
        let inner = self.inner.clone();
        let job_watch = watch.clone();
        let script_id = job.script.id().to_string();
        // Runners: one per place, plus one per abandoned execution still holding its thread.
        let max_threads = self.inner.settings.max_size.max(1)
            + self.inner.stats.abandoned_running.load(Relaxed).max(0) as usize;
        let (mut task, hot) = self.inner.runners.run(max_threads, move || {
            let _watch = job_watch;
            let mut engine = match grant {
                Some(e) => e,
                None => inner.build()?,
            };
            let execution = engine.execute_limited(
                &job.script,
                &job.tenant,
                &job.event,
                &job.context,
                job.time_limit_ms,
            );
            Ok::<_, PoolError>((engine, execution, held))
        });
        let patience =
            Duration::from_millis(limit_ms.saturating_add(self.inner.engine.abandon_grace_ms));
        // An awake runner took the job at once: spin briefly for the answer, so a short
        // execution comes back without parking and waking this worker (the costly part of the
        // hand-off). Bounded: past SPIN_BACK the task parks like any other.
        // Only when nothing else runs: under load the spin would take a core from the
        // runners (measured: a third of the CPU of a 64-way `luametrics run`).
        let alone = self.inner.stats.active.load(Relaxed) <= 1;
        let early = if hot && alone {
            spin_for(&mut task)
        } else {
            None
        };
        let back = match early {
            Some(done) => Ok(done),
            None => tokio::time::timeout(patience, task).await,
        };
        match back {
            Ok(Ok(Ok(Ok((engine, mut execution, held))))) => {
                held.release(Some(engine));
                execution.timings.wait_ms = wait_ms;
                execution.timings.total_ms += wait_ms;
                Ok(execution)
            }
            // The place was given back when the job's `Held` dropped.
            Ok(Ok(Ok(Err(e)))) => Err(e),
            Ok(Ok(Err(panicked))) => {
                // Engine::execute catches panics itself; this is a panic outside it.
                self.inner.stats.discard(DiscardReason::Panic);
                Err(PoolError::Create(format!(
                    "the execution's thread failed: {}",
                    panicked.0
                )))
            }
            Ok(Err(_)) => Err(PoolError::Create(
                "the execution's thread ended without an answer".into(),
            )),
            Err(_) => {
                // Still running (stuck in a C function): write it off. Its thread drops the
                // engine when the call returns; its place goes to the next waiter now.
                let stats = &self.inner.stats;
                watch.abandoned.store(true, Relaxed);
                stats.abandoned.fetch_add(1, Relaxed);
                stats.abandoned_running.fetch_add(1, Relaxed);
                stats.discard(DiscardReason::Abandoned);
                Held {
                    inner: self.inner.clone(),
                    released,
                }
                .release(None);
                let total_ms = wait_ms + patience.as_secs_f64() * 1000.0;
                Ok(Execution {
                    result: Err(ScriptError::Timeout {
                        script: script_id,
                        limit_ms,
                    }),
                    warnings: Vec::new(),
                    log: Vec::new(),
                    metrics: Default::default(),
                    timings: Timings {
                        wait_ms,
                        overhead_ms: total_ms - wait_ms,
                        total_ms,
                        ..Timings::default()
                    },
                })
            }
        }
    }

    /// Checks out an engine, runs the script on a runner thread, returns the engine; the
    /// timings include the wait.
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
        self.run(Job {
            script: script.clone(),
            tenant: Arc::from(tenant),
            event: Arc::new(event.clone()),
            context: Arc::new(context.clone()),
            time_limit_ms,
        })
        .await
    }

    /// Current gauges and counters.
    pub fn status(&self) -> PoolStatus {
        let st = &self.inner.stats;
        let (size, available) = {
            let s = self.inner.state.lock();
            (s.live, s.idle.len())
        };
        PoolStatus {
            max_size: self.inner.settings.max_size,
            size,
            available,
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
            abandoned: st.abandoned.load(Relaxed),
            abandoned_running: st.abandoned_running.load(Relaxed),
        }
    }

    /// Records the pool's system metrics once: gauges (`lua.pool.waiting` is the peak since
    /// the previous sample), counter deltas and the wait histogram.
    pub fn record_metrics(&self) {
        let st = &self.inner.stats;
        let size = self.inner.state.lock().live;
        let sink = &self.inner.sink;
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
        sink.record_system("lua.pool.size", Kind::Gauge, size as f64, none());
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
        delta(
            "lua.engine.abandoned.count",
            st.abandoned.load(Relaxed),
            &mut rep.abandoned,
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
        let every = Duration::from_millis(self.inner.settings.sample_interval_ms.max(10));
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

/// Longest an async caller spins for an execution an awake runner took at once. Short next to
/// a worker's usual slice of work; long enough for the small scripts pipelines are made of.
const SPIN_BACK: Duration = Duration::from_micros(40);

/// Polls `rx` without parking for up to [`SPIN_BACK`]; `None` if the answer is not there yet
/// (the caller then awaits it normally).
fn spin_for<T>(rx: &mut oneshot::Receiver<T>) -> Option<Result<T, oneshot::error::RecvError>> {
    let until = Instant::now() + SPIN_BACK;
    loop {
        for _ in 0..32 {
            match rx.try_recv() {
                Ok(v) => return Some(Ok(v)),
                Err(oneshot::error::TryRecvError::Empty) => std::hint::spin_loop(),
                // Closed: let the await path report the lost answer.
                Err(oneshot::error::TryRecvError::Closed) => return None,
            }
        }
        if Instant::now() >= until {
            return None;
        }
    }
}
