//! Containment at the pool: an execution stuck in host code past its limit is abandoned and
//! its engine replaced; a panic in a host function poisons only its own engine.

use luametrics_engine::*;
use luametrics_engine::{BatchPoint, BatchReport};
use luametrics_model::{Kind, RejectReason, TagPolicy, Tags};
use luametrics_sketch::Summary;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// What the sink does when a script first asks for quota.
#[derive(Clone, Copy, PartialEq)]
enum OnQuota {
    /// Blocks until the test opens the gate: a host call no hook can interrupt.
    Block,
    /// Panics.
    Panic,
}

struct Hostile {
    inner: CollectingSink,
    on_quota: OnQuota,
    open: Mutex<bool>,
    opened: Condvar,
    entered: AtomicBool,
}

impl Hostile {
    fn new(on_quota: OnQuota) -> Arc<Self> {
        Arc::new(Self {
            inner: CollectingSink::new(TagPolicy::default()),
            on_quota,
            open: Mutex::new(false),
            opened: Condvar::new(),
            entered: AtomicBool::new(false),
        })
    }

    fn open_gate(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }
}

impl MetricsSink for Hostile {
    fn policy(&self) -> &TagPolicy {
        self.inner.policy()
    }
    fn reserve_points(&self, tenant: &str, want: u32) -> u32 {
        self.entered.store(true, SeqCst);
        match self.on_quota {
            OnQuota::Panic => panic!("the sink failed"),
            OnQuota::Block => {
                let mut open = self.open.lock().unwrap();
                while !*open {
                    // A cap that only keeps a broken test from hanging forever.
                    let (o, t) = self
                        .opened
                        .wait_timeout(open, Duration::from_secs(120))
                        .unwrap();
                    open = o;
                    assert!(!t.timed_out(), "the gate was never opened");
                }
            }
        }
        self.inner.reserve_points(tenant, want)
    }
    fn release_points(&self, tenant: &str, unused: u32) {
        self.inner.release_points(tenant, unused)
    }
    fn ingest_user_batch(&self, tenant: &str, points: Vec<BatchPoint>) -> BatchReport {
        self.inner.ingest_user_batch(tenant, points)
    }
    fn count_user_rejections(&self, rejected: &[(RejectReason, u64)]) {
        self.inner.count_user_rejections(rejected)
    }
    fn record_system(&self, name: &str, kind: Kind, value: f64, tags: Tags) {
        self.inner.record_system(name, kind, value, tags)
    }
    fn record_system_summary(&self, name: &str, kind: Kind, tags: Tags, summary: Summary) {
        self.inner.record_system_summary(name, kind, tags, summary)
    }
    fn claim_name(&self, tenant: &str, name: &str, kind: Kind) -> Result<(), RejectReason> {
        self.inner.claim_name(tenant, name, kind)
    }
}

fn pool(sink: Arc<Hostile>, time_limit_ms: u64) -> EnginePool {
    EnginePool::new(
        EngineSettings {
            time_limit_ms,
            abandon_grace_ms: 100,
            ..EngineSettings::default()
        },
        PoolSettings {
            max_size: 1,
            wait_timeout_ms: 60_000,
            ..PoolSettings::default()
        },
        sink,
    )
    .unwrap()
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    // Bounded polling (a hang detector, not a timing assertion).
    for _ in 0..6_000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("gave up waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execution_stuck_past_its_limit_is_abandoned_and_its_engine_replaced() {
    let sink = Hostile::new(OnQuota::Block);
    let pool = pool(sink.clone(), 50);
    let stuck = Script::new("stuck.lua", "helpers.metrics.count('x.y_count') return 1");
    let ex = pool
        .execute(&stuck, "mallory", &json!({}), &json!({}))
        .await
        .unwrap();
    assert!(sink.entered.load(SeqCst));
    assert!(
        matches!(ex.result, Err(ScriptError::Timeout { limit_ms: 50, .. })),
        "{:?}",
        ex.result
    );
    let s = pool.status();
    assert_eq!((s.abandoned, s.abandoned_running), (1, 1), "{s:?}");
    assert_eq!(s.discarded.get("abandoned"), Some(&1), "{s:?}");
    // The pool of one engine still serves: a new engine took the stuck one's place.
    let ok = Script::new("ok.lua", "print('victim') return event.n");
    let ex = pool
        .execute(&ok, "victim", &json!({"n": 7}), &json!({}))
        .await
        .unwrap();
    assert_eq!(ex.result, Ok(json!(7)));
    assert_eq!(ex.log, vec!["victim".to_string()]);
    let s = pool.status();
    assert_eq!((s.created, s.size, s.active), (2, 1, 0), "{s:?}");
    // When the host call returns, the stuck thread ends and drops its engine.
    sink.open_gate();
    wait_until("the abandoned thread to end", || {
        pool.status().abandoned_running == 0
    })
    .await;
    assert_eq!(pool.status().size, 1);
    pool.record_metrics();
    let system = sink.inner.system.lock();
    assert!(system
        .iter()
        .any(|(n, _, v, _)| n == "lua.engine.abandoned.count" && *v == 1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_host_function_poisons_only_its_engine() {
    let sink = Hostile::new(OnQuota::Panic);
    // A limit far above the work: printing the panic's backtrace must not reach it.
    let pool = pool(sink.clone(), 20_000);
    let s = Script::new(
        "panics.lua",
        "print('secret of mallory') helpers.metrics.count('x.y_count') return 1",
    );
    let ex = pool
        .execute(&s, "mallory", &json!({}), &json!({}))
        .await
        .unwrap();
    match &ex.result {
        Err(e @ ScriptError::Internal { message, .. }) => {
            assert_eq!(e.code(), "internal_error");
            assert!(message.contains("the sink failed"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        ex.log.is_empty(),
        "nothing of a failed execution is handed out"
    );
    let st = pool.status();
    assert_eq!(st.discarded.get("panic"), Some(&1), "{st:?}");
    // The next tenant gets a fresh engine and nothing of the one before.
    let ok = Script::new("ok.lua", "return 2");
    let ex = pool
        .execute(&ok, "victim", &json!({}), &json!({}))
        .await
        .unwrap();
    assert_eq!(ex.result, Ok(json!(2)));
    assert!(ex.log.is_empty() && ex.warnings.is_empty(), "{ex:?}");
    assert_eq!(pool.status().created, 2);
}

// A caller that stops waiting while its execution is stuck (a request timeout, a client gone)
// does not leave the engine's place stuck with it: the execution is written off at the
// deadline the caller would have used, and the pool serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execution_whose_caller_left_is_still_written_off_at_its_deadline() {
    let sink = Hostile::new(OnQuota::Block);
    let pool = pool(sink.clone(), 50);
    let stuck = Script::new("stuck.lua", "helpers.metrics.count('x.y_count') return 1");
    let pool = Arc::new(pool);
    let caller = {
        let (pool, stuck) = (pool.clone(), stuck.clone());
        tokio::spawn(async move {
            pool.execute(&stuck, "mallory", &json!({}), &json!({}))
                .await
        })
    };
    // The caller leaves once the execution is stuck in the host call, whatever the speed.
    wait_until("the execution stuck in the host", || {
        sink.entered.load(SeqCst)
    })
    .await;
    caller.abort();
    assert!(caller.await.unwrap_err().is_cancelled());
    wait_until("the execution written off", || pool.status().abandoned == 1).await;
    let s = pool.status();
    assert_eq!((s.abandoned_running, s.active), (1, 0), "{s:?}");
    let ok = Script::new("ok.lua", "return event.n");
    let ex = pool
        .execute(&ok, "victim", &json!({"n": 3}), &json!({}))
        .await
        .unwrap();
    assert_eq!(ex.result, Ok(json!(3)));
    sink.open_gate();
    wait_until("the abandoned thread to end", || {
        pool.status().abandoned_running == 0
    })
    .await;
    assert_eq!((pool.status().size, pool.status().active), (1, 0));
}

/// The kernel's id of the calling thread.
fn tid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

// An execution written off while it still runs (stuck in a call no hook interrupts) loses
// its claim on the machine: its thread moves to the idle scheduling class, its engine gets
// no more memory (a C loop that allocates ends at its next allocation), and the thread ends
// once the call returns instead of serving the pool demoted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_execution_is_demoted_and_starved() {
    let pool = pool(Hostile::new(OnQuota::Block), 50);
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let (out_tx, out_rx) = std::sync::mpsc::channel();
    let go = Arc::new(AtomicBool::new(false));
    let go_runner = go.clone();
    let ran = pool
        .run_with(Arc::from("mallory"), 50, move |engine, _| {
            tid_tx.send(tid()).unwrap();
            // Stuck past the limit and the grace: a cap that only keeps a broken test finite.
            let start = std::time::Instant::now();
            while !go_runner.load(SeqCst) && start.elapsed() < Duration::from_secs(120) {
                std::thread::sleep(Duration::from_millis(1));
            }
            // Then the engine runs something that allocates (20,000 strings): refused.
            let script = Script::new(
                "alloc.lua",
                "local t = {} for i = 1, 20000 do t[i] = string.rep('x', 64) .. i end return #t",
            );
            let ex =
                engine.execute_limited(&script, "mallory", &json!({}), &json!({}), Some(60_000));
            out_tx.send(ex.result).unwrap();
        })
        .await
        .unwrap();
    assert!(matches!(ran, Ran::Abandoned { .. }));
    let tid = tid_rx.recv().unwrap();
    // SAFETY: a plain query of a thread of this process (alive: it waits for `go`).
    let policy = unsafe { libc::sched_getscheduler(tid) };
    assert_eq!(
        policy,
        libc::SCHED_IDLE,
        "the abandoned thread keeps its priority"
    );
    go.store(true, SeqCst);
    let result = out_rx.recv_timeout(Duration::from_secs(120)).unwrap();
    assert!(
        matches!(result, Err(ScriptError::Memory { .. })),
        "a written-off engine still allocates: {result:?}"
    );
    wait_until("the abandoned thread to end", || {
        !std::path::Path::new(&format!("/proc/self/task/{tid}")).exists()
    })
    .await;
    assert_eq!(pool.status().abandoned_running, 0);
    // The pool serves on with a thread and engine of normal standing.
    let ok = Script::new("ok.lua", "return 5");
    let ex = pool
        .execute(&ok, "victim", &json!({}), &json!({}))
        .await
        .unwrap();
    assert_eq!(ex.result, Ok(json!(5)));
}

// Adversary round 13: one execution a second stuck in C (a quadratic table rehash) was
// abandoned each time and given a new thread each time: 25 threads and +256 MiB in 25 s. Past
// `max_abandoned`, a stuck execution keeps its place: the pool shrinks, the process does not
// grow, later work waits for a place in the fair queue (bounded, typed `pool_timeout`), and the
// place comes back when the C call returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_abandoned_stuck_executions_keep_their_places() {
    let sink = Hostile::new(OnQuota::Block);
    let pool = EnginePool::new(
        EngineSettings {
            time_limit_ms: 50,
            abandon_grace_ms: 100,
            ..EngineSettings::default()
        },
        PoolSettings {
            max_size: 1,
            max_abandoned: 1,
            wait_timeout_ms: 200,
            ..PoolSettings::default()
        },
        sink.clone(),
    )
    .unwrap();
    let stuck = Script::new("stuck.lua", "helpers.metrics.count('x.y_count') return 1");
    for n in 1..=2 {
        let ex = pool
            .execute(&stuck, "mallory", &json!({}), &json!({}))
            .await
            .unwrap();
        assert!(
            matches!(ex.result, Err(ScriptError::Timeout { .. })),
            "{:?}",
            ex.result
        );
        assert_eq!(pool.status().abandoned_running, n);
    }
    // The first stuck execution's place went on; the second's stays with it: a third
    // execution finds no place and is refused as such, having run nowhere.
    let ok = Script::new("ok.lua", "return event.n");
    match pool
        .execute(&ok, "victim", &json!({"n": 5}), &json!({}))
        .await
    {
        Err(e @ PoolError::Timeout { .. }) => assert_eq!(e.code(), "pool_timeout"),
        other => panic!("{other:?}"),
    }
    assert_eq!(pool.status().abandoned, 2, "nothing else was written off");
    // Once the stuck calls return, their threads end and the place comes back.
    sink.open_gate();
    wait_until("the abandoned threads to end", || {
        pool.status().abandoned_running == 0
    })
    .await;
    let ex = pool
        .execute(&ok, "victim", &json!({"n": 5}), &json!({}))
        .await
        .unwrap();
    assert_eq!(ex.result, Ok(json!(5)));
}
