//! The pool of sandboxed engines, and where executions run.
//!
//! Lua never runs on an async worker. [`EnginePool::run`] hands an execution to one of the
//! pool's runner threads (`runner.rs`: threads meant to block) and awaits the answer. With an
//! engine free, the execution goes to a runner at once; with every engine busy it waits in the
//! pool's queue (`queue.rs`: one line per tenant, served by engine time used, each bounded), and the
//! runner that finishes an execution takes the next waiting one itself, with the engine it
//! holds: under load engines never leave their threads, and no async task sits between two
//! executions. A script stuck in a C function past its time limit blocks only its runner; past
//! the limit plus a grace period the caller stops waiting for it: it gets a typed timeout, the
//! engine is written off (dropped by its runner whenever the call returns) and its place in
//! the pool goes to the next waiting work (`lua.engine.abandoned.count`).
//!
//! The pool is ours rather than deadpool's because writing off an engine that is still
//! running, handing a freed place straight to the next waiter, serving tenants in turn and
//! counting exactly which checkouts queued need control of the permits deadpool keeps private.
//!
//! Why one file of ~1,000 lines: a place in the pool (held, waiting, abandoned, passed on) is
//! one state machine, and its invariant (places held + places free = max size, whatever
//! abandons, panics and timeouts happen) spans checkout, hand-off, abandonment and return.
//! The parts that stand alone live apart: runner threads (`runner.rs`), the fair queue
//! (`queue.rs`), tenant budgets (`budget.rs`), the watchdog (`watchdog.rs`).

use crate::budget::{Admission, BudgetSpent, Budgets, TenantEngineUsage};
use crate::queue::FairQueue;
use crate::runner;
use crate::watchdog::Slot;
use crate::{
    DiscardReason, Engine, EngineSettings, Execution, MetricsSink, PoolError, PoolSettings, Script,
};
use luametrics_model::{Kind, Tags};
use luametrics_sketch::Summary;
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
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
    /// Executions refused because their tenant's line was full.
    queue_full: AtomicU64,
    created: AtomicU64,
    discarded: [AtomicU64; DiscardReason::ALL.len()],
    /// Executions given up on (past their limit and grace).
    abandoned: AtomicU64,
    /// Abandoned executions whose thread is still running.
    abandoned_running: AtomicI64,
    wait: Mutex<Option<Summary>>,
    /// Async callers in `run_with` now (waiting, running or collecting their answer).
    callers: AtomicI64,
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

/// What a runner does with the engine it got (or why it got none) and the time the work
/// waited (ms); returns the delivery of the result to the caller, made once the place is
/// passed on.
type Work = Box<dyn FnOnce(Result<&mut Engine, PoolError>, f64) -> Deliver + Send>;
/// Sends a finished piece of work's result to its caller.
type Deliver = Box<dyn FnOnce() + Send>;
/// Engine ms a tenant's execution used, and what the fair queue charged it provisionally:
/// settled with the queue when the place is passed on (under the lock taken for that anyway).
type Charge = (Arc<str>, f64, f64);

/// Work waiting for a place, in the pool's fair queue.
enum Pending {
    /// An execution: runs on a runner thread with the place it is given.
    Run(Box<RunJob>),
    /// A checkout: the place goes to the waiting caller (with the time it waited, in ms).
    Checkout(oneshot::Sender<(Place, f64)>, Instant),
}

/// A place on its way to a waiting checkout. If the checkout never takes it (its caller gave
/// up as it was sent, or went away), dropping it gives the place back to the pool.
struct Place {
    grant: Option<Grant>,
    inner: Arc<Inner>,
}

impl Place {
    fn take(mut self) -> Grant {
        self.grant.take().flatten()
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        if let Some(grant) = self.grant.take() {
            self.inner.give_back(grant);
        }
    }
}

/// An execution on its way to a runner, with what its caller shares with it.
struct RunJob {
    work: Work,
    /// Who is charged for the engine time.
    tenant: Arc<str>,
    ticket: Arc<Ticket>,
    enqueued: Instant,
    /// Whether it waited in the queue (its checkout is counted when it starts).
    queued: bool,
    /// Engine ms the fair queue charged its tenant for it when it was handed an engine.
    provisional_ms: f64,
}

#[derive(Default)]
struct State {
    idle: Vec<Engine>,
    /// Places taken: engines idle or checked out, and places granted for an engine being
    /// built. Abandoned engines no longer count.
    live: usize,
    /// Executions and checkouts waiting for a place, per tenant, served in turn.
    queue: FairQueue<Pending>,
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
    /// What `RunJob::started` counts from.
    epoch: Instant,
    /// Per-tenant engine-time budgets.
    budgets: Arc<Budgets>,
}

impl Inner {
    fn build(&self) -> Result<Engine, PoolError> {
        let engine = Engine::new(self.engine.clone(), self.sink.clone())
            .map_err(|e| PoolError::Create(e.to_string()))?;
        self.stats.created.fetch_add(1, Relaxed);
        Ok(engine)
    }

    /// Runners allowed: one per place, plus one per abandoned execution still holding its
    /// thread, up to `max_abandoned` of them: past it an abandoned execution keeps its place
    /// until its C call returns, so stuck threads (and the Lua heaps they hold) stay bounded
    /// (adversary round 13: one abandoned execution a second grew the process by 10 MiB a
    /// second, 25 threads in 25 s); `/readyz` reports not ready meanwhile.
    fn max_threads(&self) -> usize {
        let abandoned = self.stats.abandoned_running.load(Relaxed).max(0) as usize;
        self.settings.max_size.max(1) + abandoned.min(self.settings.max_abandoned)
    }

    fn note_queue(&self, state: &State) {
        let now = state.queue.len() as i64;
        self.stats.waiting.store(now, Relaxed);
        self.stats.peak_waiting_sample.fetch_max(now, Relaxed);
        self.stats.peak_waiting.fetch_max(now, Relaxed);
    }

    /// Passes a place on: a healthy engine (or the right to build one) goes to the next
    /// waiting work in the tenants' turn, else back to the idle list (or the place is freed).
    /// A waiting checkout is served here, on this thread; a waiting execution is returned for
    /// the caller to run on a runner thread.
    fn pass_on(
        self: &Arc<Self>,
        engine: Grant,
        mut charge: Option<Charge>,
    ) -> Option<(Grant, Box<RunJob>)> {
        let mut grant = engine.and_then(|mut e| match e.health() {
            None => Some(e),
            Some(reason) => {
                self.stats.discard(reason);
                None
            }
        });
        loop {
            let mut state = self.state.lock();
            if let Some((tenant, used_ms, provisional_ms)) = charge.take() {
                state.queue.charge(&tenant, used_ms, provisional_ms);
            }
            let next = state.queue.pop().map(|(item, provisional_ms)| match item {
                Pending::Run(mut job) => {
                    job.provisional_ms = provisional_ms;
                    Pending::Run(job)
                }
                checkout => checkout,
            });
            if next.is_some() {
                self.note_queue(&state);
            }
            match next {
                None => {
                    match grant {
                        Some(e) => state.idle.push(e),
                        None => state.live = state.live.saturating_sub(1),
                    }
                    return None;
                }
                Some(Pending::Run(job)) => return Some((grant, job)),
                Some(Pending::Checkout(tx, enqueued)) => {
                    drop(state);
                    let waited = enqueued.elapsed().as_secs_f64() * 1000.0;
                    let place = Place {
                        grant: Some(grant),
                        inner: self.clone(),
                    };
                    match tx.send((place, waited)) {
                        Ok(()) => return None,
                        // That waiter gave up (timed out, or its caller went away): next one.
                        Err((back, _)) => grant = back.take(),
                    }
                }
            }
        }
    }

    /// Gives a place back from any thread: waiting work gets it, an execution on a runner.
    fn give_back(self: &Arc<Self>, engine: Grant) {
        if let Some((grant, job)) = self.pass_on(engine, None) {
            self.spawn_serve(grant, job);
        }
    }

    /// Starts serving on a runner thread: `job` with `grant`, then whatever waits next.
    /// Returns whether an awake runner took it at once.
    fn spawn_serve(self: &Arc<Self>, grant: Grant, job: Box<RunJob>) -> bool {
        let me = self.clone();
        self.runners
            .run(self.max_threads(), Box::new(move || me.serve(grant, job)))
    }

    /// Runs `job` with `grant` on this (runner) thread, then keeps the engine and runs the
    /// next waiting execution with it, until nothing waits: back-to-back executions pay no
    /// hand-off. Each answer is sent after the place is passed on, so a caller that submits
    /// its next execution at once finds the engine where it expects it.
    // Jobs come boxed from the queue and go on boxed; unboxing here would only move them.
    #[allow(clippy::boxed_local)]
    fn serve(self: &Arc<Self>, mut grant: Grant, mut job: Box<RunJob>) {
        loop {
            let (place, deliver, charge) = self.run_one(grant, *job);
            let next = place.and_then(|g| self.pass_on(g, charge));
            if next.is_none() {
                self.runners.will_idle();
            }
            if let Some(deliver) = deliver {
                deliver();
            }
            match next {
                Some((g, j)) => (grant, job) = (g, j),
                None => return,
            }
        }
    }

    /// Runs one piece of work with the place given. Returns the place to pass on (`None` when
    /// the waiting side already did: abandoned work) and the delivery of its result.
    fn run_one(
        self: &Arc<Self>,
        grant: Grant,
        job: RunJob,
    ) -> (Option<Grant>, Option<Deliver>, Option<Charge>) {
        let RunJob {
            work,
            tenant,
            ticket,
            enqueued,
            queued,
            provisional_ms,
        } = job;
        if ticket.released.load(Relaxed) {
            // Given up on before it started: the waiting side passed the place on already,
            // or left it to this work (see `write_off`), which gives it on now.
            if ticket.keep.fetch_or(RUNNER_DONE, SeqCst) & KEEPS_PLACE != 0 {
                return (Some(grant), None, None);
            }
            return (None, None, None);
        }
        if ticket.gone.load(Relaxed) {
            // Its caller went away while it waited: nothing to run.
            return (Some(grant), None, None);
        }
        let wait_ms = if queued {
            enqueued.elapsed().as_secs_f64() * 1000.0
        } else {
            0.0
        };
        // Counted here, where it surely runs, and uncounted by whoever gives the place back.
        checked_out(&self.stats, wait_ms);
        ticket.counted.store(true, Relaxed);
        ticket.mark_started(self.epoch);
        let held = RunnerHeld(Held(ticket));
        let mut engine = match grant {
            Some(e) => e,
            None => match self.build() {
                Ok(e) => e,
                Err(err) => {
                    let deliver = work(Err(err), wait_ms);
                    let place = held.take().then_some(None);
                    return (place, Some(deliver), None);
                }
            },
        };
        let busy = engine.busy_ns();
        *(held.0).0.running_on.lock() = Some((runner::current_tid(), engine.slot().clone()));
        let deliver = work(Ok(&mut engine), wait_ms);
        *(held.0).0.running_on.lock() = None;
        let used_ms = engine.busy_ns().saturating_sub(busy) as f64 / 1e6;
        self.budgets.charge(&tenant, used_ms);
        // The fair queue's clock matters only while work waits (a tenant that starts waiting
        // joins at the queue's time): nothing to settle when nothing does.
        let charge = (queued || self.stats.waiting.load(Relaxed) > 0).then_some((
            tenant,
            used_ms,
            provisional_ms,
        ));
        if !held.take() {
            // Abandoned meanwhile: the engine is written off, and this thread, demoted, ends.
            // Its place went on without it, or (past `max_abandoned`) waited for this call to
            // return: then `held` gives it on as it drops.
            runner::retire_current();
            return (None, None, None);
        }
        (Some(Some(engine)), Some(deliver), charge)
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

/// How work given to [`EnginePool::run_with`] ended.
#[derive(Debug)]
pub enum Ran<R> {
    /// It returned this.
    Done(R),
    /// It had not returned by its limit plus the grace period: given up on, its engine
    /// written off (`lua.engine.abandoned.count`).
    Abandoned {
        /// Time it waited for an engine (ms).
        wait_ms: f64,
        /// Time from the call until it was given up on (ms).
        total_ms: f64,
    },
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

/// What an execution's caller and its runner share: who gave the place back, whether the
/// caller gave up on it, when it started.
struct Ticket {
    inner: Arc<Inner>,
    /// Set by whichever side gives the place back first (see [`Held`]).
    released: AtomicBool,
    /// Set when the caller gives up on the execution (it is still running).
    abandoned: AtomicBool,
    /// Nanoseconds since the pool's epoch when it started, plus one; 0 before.
    started: AtomicU64,
    /// Set when the caller stops waiting (its future dropped): work not started is skipped.
    gone: AtomicBool,
    /// Set when a runner started it and counted its checkout (`active`).
    counted: AtomicBool,
    /// The thread running it and its engine's state, while it runs: what writing it off
    /// demotes and starves. Cleared by the runner, under this lock, before its thread may end.
    running_on: Mutex<Option<(i32, Arc<Slot>)>>,
    /// Past `max_abandoned`, written-off work keeps its place until its call returns: the
    /// caller sets [`KEEPS_PLACE`], the runner [`RUNNER_DONE`] when the call returns, and
    /// whichever comes second gives the place back.
    keep: std::sync::atomic::AtomicU8,
}

/// The caller wrote the work off and left it its place (see `Ticket::keep`).
const KEEPS_PLACE: u8 = 1;
/// The runner's call returned after the work was written off (see `Ticket::keep`).
const RUNNER_DONE: u8 = 2;

/// Writes off work still running past its caller's patience, with its place claimed by the
/// caller (`held`): the place goes on to the next work now, unless more than `max_abandoned`
/// stuck executions are running, when it stays with the stuck one until its call returns
/// (adversary round 13: passed on every time, each stuck execution got a new thread and kept
/// its Lua heap, and past the bound on threads new work waited in the runners' unbounded
/// queue and was reported as a script timeout).
fn write_off(ticket: &Arc<Ticket>, held: Held) {
    abandon(ticket);
    let inner = &ticket.inner;
    if inner.stats.abandoned_running.load(Relaxed) <= inner.settings.max_abandoned as i64 {
        held.pass();
        return;
    }
    if ticket.keep.fetch_or(KEEPS_PLACE, SeqCst) & RUNNER_DONE != 0 {
        // Its call returned meanwhile: the place goes on now after all.
        held.pass();
    }
    // Claimed already: dropping `held` gives nothing back.
}

/// Marks the ticket's caller gone when its future ends, however it ends. A caller that goes
/// away while its work runs (a request timeout, a client gone) leaves a task in its place that
/// writes the work off at the same deadline the caller would have, so a stuck execution
/// frees its place either way.
struct CallerGuard {
    ticket: Arc<Ticket>,
    patience: Duration,
}

impl Drop for CallerGuard {
    fn drop(&mut self) {
        let ticket = &self.ticket;
        ticket.gone.store(true, Relaxed);
        let epoch = ticket.inner.epoch;
        let Some(started) = ticket.started_at(epoch) else {
            // Not started: the runner that takes it skips it.
            return;
        };
        if ticket.released.load(Relaxed) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (ticket, deadline) = (ticket.clone(), started + self.patience);
        runtime.spawn(async move {
            tokio::time::sleep_until(deadline.into()).await;
            let held = Held(ticket.clone());
            if held.claim() {
                write_off(&ticket, held);
            }
        });
    }
}

/// Counts work given up on while it still runs; its place is passed on by the caller. Its
/// thread, stuck in a C call no hook can interrupt, is moved to the idle scheduling class and
/// its engine refused every allocation from now on: it takes no CPU others want, and a C loop
/// that allocates ends at its next allocation.
fn abandon(ticket: &Ticket) {
    if let Some((tid, slot)) = &*ticket.running_on.lock() {
        slot.starve();
        runner::demote(*tid);
    }
    let stats = &ticket.inner.stats;
    ticket.abandoned.store(true, Relaxed);
    stats.abandoned.fetch_add(1, Relaxed);
    stats.abandoned_running.fetch_add(1, Relaxed);
    stats.discard(DiscardReason::Abandoned);
}

impl Ticket {
    fn mark_started(&self, epoch: Instant) {
        self.started
            .store(epoch.elapsed().as_nanos() as u64 + 1, Relaxed);
    }

    fn started_at(&self, epoch: Instant) -> Option<Instant> {
        match self.started.load(Relaxed) {
            0 => None,
            ns => Some(epoch + Duration::from_nanos(ns - 1)),
        }
    }
}

impl Drop for Ticket {
    /// Dropped by the last of caller and runner: after an abandoned execution's call returned.
    fn drop(&mut self) {
        if self.abandoned.load(Relaxed) {
            self.inner.stats.abandoned_running.fetch_sub(1, Relaxed);
        }
    }
}

/// A place held by an execution. Given back once: by the runner with the engine when the
/// execution returns, by the waiting side at once when it abandons the execution, or on drop
/// (the runner unwound), whichever comes first.
struct Held(Arc<Ticket>);

impl Held {
    /// Claims the right to pass the place on (uncounting its checkout, if it was counted);
    /// `false` if the other side did already.
    fn claim(&self) -> bool {
        let mine = !self.0.released.swap(true, Relaxed);
        if mine && self.0.counted.load(Relaxed) {
            self.0.inner.stats.active.fetch_sub(1, Relaxed);
        }
        mine
    }

    /// The runner's claim, when its work is done.
    fn take(&self) -> bool {
        self.claim()
    }

    /// Passes a claimed place on without its engine (written off, or never built).
    fn pass(self) {
        self.0.inner.give_back(None);
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.claim() {
            self.0.inner.give_back(None);
        }
    }
}

/// The runner's hold on a place: however the runner's part ends (answered, the engine not
/// built, unwinding), a place the caller left to this work when it wrote it off (see
/// `write_off`) is given on, once.
struct RunnerHeld(Held);

impl RunnerHeld {
    fn take(&self) -> bool {
        self.0.take()
    }
}

impl Drop for RunnerHeld {
    fn drop(&mut self) {
        let ticket = &(self.0).0;
        // Claimed here (unwinding before the work was done), or left to this work by the
        // caller that wrote it off: either way this side gives the place on.
        if self.0.claim() || ticket.keep.fetch_or(RUNNER_DONE, SeqCst) & KEEPS_PLACE != 0 {
            ticket.inner.give_back(None);
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
        let (rate, burst) = (pool.tenant_engine_ms_per_s, pool.tenant_engine_burst_ms);
        if !(rate.is_finite() && burst.is_finite() && rate >= 0.0 && burst >= 0.0)
            || (rate > 0.0 && burst <= 0.0)
        {
            return Err(PoolError::Settings(format!(
                "pool.tenant_engine_ms_per_s ({rate}) and tenant_engine_burst_ms ({burst}) must be \
                 finite and not negative, and a budget needs a burst above 0 (a bucket of 0 ms \
                 admits nothing)"
            )));
        }
        // Before a tenant's first execution was measured, one is assumed to cost its time
        // limit, but never so much that a fresh tenant could not fill the pool's engines once.
        let first_estimate = (engine.time_limit_ms as f64).min(burst / pool.max_size.max(1) as f64);
        let budgets = Arc::new(Budgets::new(rate, burst, first_estimate, pool.max_size));
        Ok(Self {
            inner: Arc::new(Inner {
                runners: Arc::default(),
                settings: pool,
                engine: Arc::new(engine),
                sink,
                state: Mutex::new(State::default()),
                stats: Stats::default(),
                epoch: Instant::now(),
                budgets,
            }),
        })
    }

    /// The pool settings.
    pub fn settings(&self) -> &PoolSettings {
        &self.inner.settings
    }

    /// The settings its engines are built with (their default time limit, for callers that
    /// bound several executions at once).
    pub fn engine_settings(&self) -> &EngineSettings {
        &self.inner.engine
    }

    /// Takes a place at once (an idle engine, or the right to build one) if there is one.
    fn take_place(state: &mut State, max_size: usize) -> Option<Grant> {
        if let Some(e) = state.idle.pop() {
            return Some(Some(e));
        }
        if state.live < max_size.max(1) {
            state.live += 1;
            return Some(None);
        }
        None
    }

    /// Queues `item` for `tenant` if the tenant's line has room; counts the exhaustion.
    fn enqueue(
        &self,
        state: &mut State,
        tenant: &Arc<str>,
        item: Pending,
    ) -> Result<u64, PoolError> {
        let inner = &self.inner;
        let limit = inner.settings.max_queued_per_tenant;
        if state.queue.len_of(tenant) >= limit {
            inner.stats.queue_full.fetch_add(1, Relaxed);
            return Err(PoolError::QueueFull {
                tenant: tenant.to_string(),
                limit,
            });
        }
        inner.stats.exhausted.fetch_add(1, Relaxed);
        let id = state.next_waiter;
        state.next_waiter += 1;
        state.queue.push(tenant, id, item);
        inner.note_queue(state);
        Ok(id)
    }

    /// Takes `id` out of the queue if it still waits there (its waiter gave up).
    fn dequeue(&self, tenant: &str, id: u64) -> Option<Pending> {
        let mut state = self.inner.state.lock();
        let item = state.queue.remove(tenant, id);
        if item.is_some() {
            self.inner.note_queue(&state);
        }
        item
    }

    fn timed_out(&self, waited: Duration) -> PoolError {
        self.inner.stats.timeouts.fetch_add(1, Relaxed);
        PoolError::Timeout {
            waited_ms: waited.as_millis() as u64,
            max_size: self.inner.settings.max_size,
        }
    }

    /// Checks out an engine for a caller that runs it itself, on a thread meant to block
    /// (building one if the pool has room), waiting up to the configured timeout. Waiting
    /// checkouts take their turn as the host's (tenant `""`) in the fair queue.
    pub async fn checkout(&self) -> Result<PooledEngine, PoolError> {
        let inner = &self.inner;
        let start = Instant::now();
        let host: Arc<str> = Arc::from("");
        let (id, mut rx) = {
            let mut state = inner.state.lock();
            match Self::take_place(&mut state, inner.settings.max_size) {
                Some(grant) => {
                    drop(state);
                    checked_out(&inner.stats, 0.0);
                    return self.with_engine(grant, 0.0, false);
                }
                None => {
                    let (tx, rx) = oneshot::channel();
                    let id = self.enqueue(&mut state, &host, Pending::Checkout(tx, start))?;
                    (id, rx)
                }
            }
        };
        let timeout = Duration::from_millis(inner.settings.wait_timeout_ms);
        let got = match tokio::time::timeout(timeout, &mut rx).await {
            Ok(r) => r.ok(),
            Err(_) => match self.dequeue(&host, id) {
                Some(_) => None,
                // Taken from the queue as the timer fired: the place is being sent now.
                None => rx.await.ok(),
            },
        };
        match got {
            Some((place, waited)) => {
                checked_out(&inner.stats, waited);
                self.with_engine(place.take(), waited, true)
            }
            None => Err(self.timed_out(start.elapsed())),
        }
    }

    /// Wraps a checked-out place, building its engine if it has none.
    fn with_engine(
        &self,
        grant: Grant,
        wait_ms: f64,
        queued: bool,
    ) -> Result<PooledEngine, PoolError> {
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

    /// Refuses `tenant` when it has used its engine-time budget
    /// ([`PoolError::TenantBudget`], with when to retry). [`EnginePool::run`] asks before
    /// every execution; a caller of [`EnginePool::run_with`] asks once for its work and holds
    /// the [`Admission`] until the work is done (it counts in flight against the budget).
    pub fn admit(&self, tenant: &str) -> Result<Admission, BudgetSpent> {
        self.inner
            .budgets
            .admit(tenant)
            .map_err(|retry_after_ms| BudgetSpent {
                tenant: tenant.to_string(),
                retry_after_ms,
            })
    }

    /// `tenant`'s engine-time budget and use.
    pub fn tenant_usage(&self, tenant: &str) -> TenantEngineUsage {
        self.inner.budgets.usage(tenant)
    }

    /// Runs one execution on a runner thread with an engine of the pool. With an engine free
    /// it goes to a runner at once; otherwise it waits in its tenant's line (bounded:
    /// [`PoolError::QueueFull`]) for a runner that finishes an execution to take it with the
    /// engine it holds, up to the wait timeout. The timings include the wait. An execution
    /// that has not returned by its time limit plus the grace period is abandoned: a typed
    /// timeout, and its engine written off.
    pub async fn run(&self, job: Job) -> Result<Execution, PoolError> {
        let admitted = self.admit(&job.tenant)?;
        self.run_admitted(job, &admitted).await
    }

    /// Like [`EnginePool::run`] for a caller that holds its tenant's [`Admission`] already
    /// (a pipeline admitted once for all its nodes), so the budget is not asked twice.
    pub async fn run_admitted(
        &self,
        job: Job,
        _admitted: &Admission,
    ) -> Result<Execution, PoolError> {
        let limit_ms = job.time_limit_ms.unwrap_or(self.inner.engine.time_limit_ms);
        let script = job.script.clone();
        let tenant = job.tenant.clone();
        let ran = self
            .run_with(tenant, limit_ms, move |engine, wait_ms| {
                let mut execution = engine.execute_limited(
                    &job.script,
                    &job.tenant,
                    &job.event,
                    &job.context,
                    job.time_limit_ms,
                );
                execution.timings.wait_ms = wait_ms;
                execution.timings.total_ms += wait_ms;
                execution
            })
            .await?;
        Ok(match ran {
            Ran::Done(execution) => execution,
            Ran::Abandoned { wait_ms, total_ms } => {
                Execution::abandoned(&script, limit_ms, wait_ms, total_ms)
            }
        })
    }

    /// Runs `work` on a runner thread with an engine of the pool, for `tenant`, as
    /// [`EnginePool::run`] runs one execution: at once or in the tenant's line, with the time
    /// it waited (ms), the engine time it used charged to the tenant (the budget is not
    /// asked: see [`EnginePool::admit`]). `work` is given `limit_ms` plus the grace period to return before it
    /// is abandoned and its engine written off; it should run only what that bounds (engine
    /// executions with their own limits, and plain host code). Several executions of one
    /// caller (a pipeline's nodes) in one `work` pay one hand-off instead of one each.
    pub async fn run_with<R: Send + 'static>(
        &self,
        tenant: Arc<str>,
        limit_ms: u64,
        work: impl FnOnce(&mut Engine, f64) -> R + Send + 'static,
    ) -> Result<Ran<R>, PoolError> {
        let inner = &self.inner;
        inner.stats.callers.fetch_add(1, Relaxed);
        let _in_flight = InFlight(&inner.stats.callers);
        let patience =
            Duration::from_millis(limit_ms.saturating_add(inner.engine.abandon_grace_ms));
        let (tx, mut rx) = oneshot::channel::<Result<R, PoolError>>();
        let ticket = Arc::new(Ticket {
            inner: inner.clone(),
            released: AtomicBool::new(false),
            abandoned: AtomicBool::new(false),
            started: AtomicU64::new(0),
            gone: AtomicBool::new(false),
            counted: AtomicBool::new(false),
            running_on: Mutex::new(None),
            keep: Default::default(),
        });
        let _caller = CallerGuard {
            ticket: ticket.clone(),
            patience,
        };
        let enqueued = Instant::now();
        let work: Work = Box::new(move |engine, wait_ms| {
            let out = engine.map(|e| work(e, wait_ms));
            Box::new(move || {
                // A caller that went away no longer wants it.
                let _ = tx.send(out);
            })
        });
        let mut run_job = Box::new(RunJob {
            work,
            tenant: tenant.clone(),
            ticket: ticket.clone(),
            enqueued,
            queued: false,
            provisional_ms: 0.0,
        });
        let (queued_id, hot) = {
            let mut state = inner.state.lock();
            match Self::take_place(&mut state, inner.settings.max_size) {
                Some(grant) => {
                    drop(state);
                    // Not queued: its patience runs from now.
                    ticket.mark_started(inner.epoch);
                    (None, inner.spawn_serve(grant, run_job))
                }
                None => {
                    run_job.queued = true;
                    (
                        Some(self.enqueue(&mut state, &tenant, Pending::Run(run_job))?),
                        false,
                    )
                }
            }
        };
        // An awake runner took the job at once: spin briefly for the answer, so a short
        // execution comes back without parking and waking this worker (the costly part of the
        // hand-off). Bounded: past SPIN_BACK the task parks like any other.
        // Only for a caller alone in the pool (no other call in flight, running or not):
        // under load the spin would take a core from the runners (measured: a third of the
        // CPU of a 64-way `luametrics run`), and its yields would hold the other tasks of
        // this worker back for a scheduler slice (measured: the p99 of 64 callers tripled).
        let alone = inner.stats.callers.load(Relaxed) <= 1;
        let early = if hot && alone {
            spin_for(&mut rx)
        } else {
            None
        };
        let wait_timeout = Duration::from_millis(inner.settings.wait_timeout_ms);
        let back = match early {
            Some(done) => Some(done),
            None => {
                // When a runner took it from the queue just as its wait ran out (its start
                // not yet marked): treated as started then.
                let mut taken_at = None;
                loop {
                    let now = Instant::now();
                    let started_at = ticket.started_at(inner.epoch).or(taken_at);
                    let deadline = match started_at {
                        Some(s) => s + patience,
                        None => (enqueued + wait_timeout).min(now + patience),
                    };
                    match tokio::time::timeout_at(deadline.into(), &mut rx).await {
                        Ok(answer) => break Some(answer),
                        Err(_)
                            if ticket.started_at(inner.epoch).is_some() && started_at.is_none() => {
                        }
                        Err(_) if started_at.is_some() => break None,
                        Err(_) if enqueued.elapsed() < wait_timeout => {}
                        Err(_) => match queued_id.and_then(|id| self.dequeue(&tenant, id)) {
                            Some(_) => return Err(self.timed_out(enqueued.elapsed())),
                            None => taken_at = Some(Instant::now()),
                        },
                    }
                }
            }
        };
        match back {
            Some(Ok(answer)) => answer.map(Ran::Done),
            Some(Err(_)) => Err(PoolError::Create(
                "the execution's runner ended without an answer".into(),
            )),
            None => {
                // Past its patience. Claim the place first: if the runner claimed it already,
                // the work is done and its answer is on its way (being sent after the place
                // was passed on): take that, nothing is abandoned.
                let held = Held(ticket.clone());
                if !held.claim() {
                    drop(held);
                    return match rx.await {
                        Ok(answer) => answer.map(Ran::Done),
                        Err(_) => Err(PoolError::Create(
                            "the execution's runner ended without an answer".into(),
                        )),
                    };
                }
                // Still running (stuck in a C function): write it off. Its runner drops the
                // engine when the call returns; its place goes to the next waiter now (after
                // the count that lets a new runner start).
                let wait_ms = ticket.started_at(inner.epoch).map_or(0.0, |s| {
                    s.saturating_duration_since(enqueued).as_secs_f64() * 1000.0
                });
                write_off(&ticket, held);
                Ok(Ran::Abandoned {
                    wait_ms,
                    total_ms: enqueued.elapsed().as_secs_f64() * 1000.0,
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

/// Counts a checkout served after `wait_ms` of waiting.
fn checked_out(stats: &Stats, wait_ms: f64) {
    let now_active = stats.active.fetch_add(1, Relaxed) + 1;
    stats.peak_active.fetch_max(now_active, Relaxed);
    stats.checkouts.fetch_add(1, Relaxed);
    stats
        .wait
        .lock()
        .get_or_insert_with(|| Summary::new(true))
        .observe(wait_ms, 0);
}

/// Counts an async caller out of `run_with` however it leaves (answer, error, or dropped).
struct InFlight<'a>(&'a AtomicI64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// Longest an async caller spins for an execution an awake runner took at once. Short next to
/// a worker's usual slice of work; long enough for the small scripts pipelines are made of.
const SPIN_BACK: Duration = Duration::from_micros(40);

/// Polls `rx` without parking for up to [`SPIN_BACK`]; `None` if the answer is not there yet
/// (the caller then awaits it normally).
fn spin_for<T>(rx: &mut oneshot::Receiver<T>) -> Option<Result<T, oneshot::error::RecvError>> {
    let start = Instant::now();
    let until = start + SPIN_BACK;
    let calm = start + SPIN_BACK / 4;
    loop {
        for _ in 0..32 {
            match rx.try_recv() {
                Ok(v) => return Some(Ok(v)),
                Err(oneshot::error::TryRecvError::Empty) => std::hint::spin_loop(),
                // Closed: let the await path report the lost answer.
                Err(oneshot::error::TryRecvError::Closed) => return None,
            }
        }
        let now = Instant::now();
        if now >= until {
            return None;
        }
        // Past the time a short execution takes, gives the core to the runner in case the
        // scheduler put it on this one (else returns at once): spinning over it would only
        // delay the answer until the spin gives up.
        if now >= calm {
            std::thread::yield_now();
        }
    }
}
