//! Targets 1, 2, 3 and 6 of docs/targets.md for the engine: each subject next to its baseline, measured
//! in the same run, in alternating rounds. Run: `cargo bench --bench hot_path [-- FILTER]`
//! (FILTER: `hot_path`, `pool`, `contention` or `idle_heap`; `LUAMETRICS_BENCH_ROUNDS=N` sets
//! the rounds).
//!
//! - hot_path: `helpers.metrics.{count,gauge,histogram}(name, v, {a=x, b=y})` in a Lua loop vs
//!   the pure-Lua aggregation loop `agg[k] = (agg[k] or 0) + 1` on the same engine (target 1.5x).
//! - pool: the 20-line script through the pool vs on a held engine (target 1.3x) vs a fresh
//!   sandboxed state per execution (target: pool at least 10x faster).
//! - contention: 64 concurrent executions on a pool of 2 (2 worker threads) vs 2 threads each
//!   owning an engine (target: at least 85% of the throughput).
//! - idle_heap: the Lua heap of an idle engine (target: at most 64 KiB).
//!
//! A hand-rolled harness instead of criterion's: criterion measures one function after the
//! other, so a slow phase of a shared machine lands on one side of a ratio only. Here every
//! round runs each side once, the starting side rotating; a ratio is taken per round (its two
//! sides ran back to back) and the report gives medians with their min-max over the rounds.
//! Every side gets the same engine settings, the same kind of sink, and builds and warms its
//! engines (and threads or tasks) before its clock starts.

use luametrics_engine::{
    Engine, EnginePool, EngineSettings, Job, MetricsSink, PoolSettings, Script,
};
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Barrier};
use std::time::Instant;

mod harness;
use harness::*;

/// The allocator the `luametrics` binary ships with, so both measure the same thing.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The pooled sides' execution: the held side's script, event and context, owned behind
/// `Arc`s (`EnginePool::execute` would deep-copy them for the runner thread; see
/// `src/cli/bench/hot_path.rs`).
fn shared_job(script: &Script) -> Job {
    Job {
        script: script.clone(),
        tenant: Arc::from("acme"),
        event: Arc::new(event()),
        context: Arc::new(json!({})),
        time_limit_ms: None,
    }
}

const N: usize = 10_000;

#[path = "../src/cli/bench/counting.rs"]
mod counting;
use counting::{counting_sink as sink, CountingSink};

/// The one engine configuration of every side.
fn settings() -> EngineSettings {
    EngineSettings {
        time_limit_ms: 60_000,
        ..EngineSettings::default()
    }
}

fn engine(sink: &Arc<CountingSink>) -> Engine {
    Engine::new(Arc::new(settings()), sink.clone()).unwrap()
}

fn pool(size: usize, sink: &Arc<CountingSink>) -> EnginePool {
    EnginePool::new(
        settings(),
        PoolSettings {
            // One tenant saturates the pool on purpose: no engine-time budget.
            tenant_engine_ms_per_s: 0.0,
            max_size: size,
            ..Default::default()
        },
        sink.clone(),
    )
    .unwrap()
}

fn loop_script(body: &str) -> Script {
    Script::new(
        "loop.lua",
        format!(
            "local xs = {{ 'x0', 'x1', 'x2', 'x3' }}\nlocal agg = {{}}\nlocal m = helpers.metrics\n\
             for i = 1, {N} do\n  local x = xs[i % 4 + 1]\n  {body}\nend\nreturn 1"
        ),
    )
}

fn twenty_lines() -> Script {
    Script::new(
        "twenty_lines.lua",
        include_str!("../lua/bench/twenty_lines.lua"),
    )
}

fn event() -> serde_json::Value {
    json!({"method": "passkey", "user": {"plan": "pro", "email": "jane@example.com", "roles": ["admin", "dev", "ops"]}})
}

/// Target 1: the helpers against the pure-Lua aggregation loop, all four on one engine, each
/// round running the four scripts in rotating order.
fn hot_path(args: &Args) {
    // Short samples, many rounds: the two sides of a ratio run close together in time.
    let rounds = args.rounds(41);
    let reps = if args.quick { 1 } else { 5 };
    let sink = sink();
    let mut engine = engine(&sink);
    let cases = [
        ("baseline_pure_lua", "local tags = { a = x, b = 'y' } local k = 'invoice.processed_count' .. '|' .. tags.a .. '|' .. tags.b agg[k] = (agg[k] or 0) + 1"),
        ("count", "m.count('invoice.processed_count', 1, { a = x, b = 'y' })"),
        ("gauge", "m.gauge('queue.depth', i, { a = x, b = 'y' })"),
        ("histogram", "m.histogram('invoice.amount', i, { a = x, b = 'y' })"),
    ];
    let scripts: Vec<Script> = cases.iter().map(|(_, body)| loop_script(body)).collect();
    let ev = json!({});
    // Compile each script once before any clock runs.
    for s in &scripts {
        assert!(engine.execute(s, "acme", &ev, &ev).result.is_ok());
    }
    let engine = std::cell::RefCell::new(engine);
    let ns_per_call = |s: &Script| {
        let mut e = engine.borrow_mut();
        let t = Instant::now();
        for _ in 0..reps {
            let ex = e.execute(s, "acme", &ev, &ev);
            assert!(ex.result.is_ok(), "{:?}", ex.result);
        }
        t.elapsed().as_nanos() as f64 / (reps * N) as f64
    };
    let before = sink.accepted.load(Relaxed);
    let (mut a, mut b, mut c, mut d) = (
        || ns_per_call(&scripts[0]),
        || ns_per_call(&scripts[1]),
        || ns_per_call(&scripts[2]),
        || ns_per_call(&scripts[3]),
    );
    let samples = alternate(rounds, &mut [&mut a, &mut b, &mut c, &mut d]);
    // Every helper call landed in the sink: 3 helpers x N calls x reps per round.
    assert_eq!(
        sink.accepted.load(Relaxed) - before,
        (3 * N * reps * rounds) as u64
    );
    for (i, (name, _)) in cases.iter().enumerate().skip(1) {
        compare(
            &format!("target 1, hot_path/{name}: helpers.metrics.{name} in a loop vs pure Lua"),
            Side {
                name: cases[0].0,
                unit: "ns/call",
                samples: &samples[0],
            },
            Side {
                name,
                unit: "ns/call",
                samples: &samples[i],
            },
            |b, s| s / b,
            Goal::AtMost(1.5),
        );
    }
}

/// Target 2: the 20-line script on a held engine, through a pool of 1, and on a fresh
/// sandboxed state per execution, in alternating rounds.
fn pool_vs_held(args: &Args) {
    let rounds = args.rounds(21);
    let (reps, fresh_reps) = if args.quick { (50, 5) } else { (2_000, 100) };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let script = twenty_lines();
    let ev = event();
    let cx = json!({"seen": 1});
    let (held_sink, pool_sink, fresh_sink) = (sink(), sink(), sink());
    let mut held = engine(&held_sink);
    assert!(held.execute(&script, "acme", &ev, &cx).result.is_ok());
    let pool = pool(1, &pool_sink);
    rt.block_on(async {
        let mut e = pool.checkout().await.unwrap();
        assert!(e.execute(&script, "acme", &ev, &cx).result.is_ok());
    });
    let fresh_settings = Arc::new(settings());
    let fresh_dyn: Arc<dyn MetricsSink> = fresh_sink.clone();
    let mut held_us = || {
        let t = Instant::now();
        for _ in 0..reps {
            held.execute(&script, "acme", &ev, &cx);
        }
        t.elapsed().as_secs_f64() * 1e6 / reps as f64
    };
    // The loop runs inside one `block_on`: entering the runtime per execution would add a
    // cost that is not the pool's.
    let job = shared_job(&script);
    let mut pooled_us = || {
        rt.block_on(async {
            let t = Instant::now();
            for _ in 0..reps {
                pool.run(job.clone()).await.unwrap();
            }
            t.elapsed().as_secs_f64() * 1e6 / reps as f64
        })
    };
    let mut fresh_us = || {
        let t = Instant::now();
        for _ in 0..fresh_reps {
            let mut e = Engine::new(fresh_settings.clone(), fresh_dyn.clone()).unwrap();
            e.execute(&script, "acme", &ev, &cx);
        }
        t.elapsed().as_secs_f64() * 1e6 / fresh_reps as f64
    };
    let s = alternate(rounds, &mut [&mut held_us, &mut pooled_us, &mut fresh_us]);
    // One point per execution on every side.
    assert_eq!(held_sink.accepted.load(Relaxed), (1 + reps * rounds) as u64);
    assert_eq!(pool_sink.accepted.load(Relaxed), (1 + reps * rounds) as u64);
    assert_eq!(
        fresh_sink.accepted.load(Relaxed),
        (fresh_reps * rounds) as u64
    );
    let side = |name, samples| Side {
        name,
        unit: "us/execution",
        samples,
    };
    compare(
        "target 2a, pool/pooled vs pool/held_engine: the 20-line script",
        side("held_engine", &s[0]),
        side("pooled", &s[1]),
        |b, s| s / b,
        Goal::AtMost(1.3),
    );
    compare(
        "target 2b, pool/fresh_state vs pool/pooled: how much faster the pool is",
        side("pooled", &s[1]),
        side("fresh_state", &s[2]),
        |b, s| s / b,
        Goal::AtLeast(10.0),
    );
}

/// Executions per second of 2 threads each owning an engine. Engines built and warmed, and
/// both threads started and parked on a barrier, before the clock starts.
fn owned_throughput(total: usize) -> f64 {
    let script = twenty_lines();
    // One sink for both engines, as the pool's engines share theirs.
    let sink = sink();
    let engines: Vec<Engine> = (0..2)
        .map(|_| {
            let mut e = engine(&sink);
            assert!(e
                .execute(&script, "acme", &event(), &json!({}))
                .result
                .is_ok());
            e
        })
        .collect();
    let start = Barrier::new(3);
    let done = AtomicU64::new(0);
    let elapsed = std::thread::scope(|s| {
        for mut e in engines {
            let (script, start, done) = (&script, &start, &done);
            s.spawn(move || {
                let (ev, cx) = (event(), json!({}));
                start.wait();
                let mut n = 0;
                for _ in 0..total / 2 {
                    n += u64::from(e.execute(script, "acme", &ev, &cx).result.is_ok());
                }
                done.fetch_add(n, Relaxed);
            });
        }
        start.wait();
        let t = Instant::now();
        // Leaving the scope joins both threads.
        t
    })
    .elapsed();
    assert_eq!(done.load(Relaxed), total as u64);
    assert_eq!(sink.accepted.load(Relaxed), 2 + total as u64);
    total as f64 / elapsed.as_secs_f64()
}

/// Executions per second of 64 tasks on a pool of 2 with 2 worker threads. Runtime and pool
/// built, both engines warmed, and all 64 tasks spawned and parked on a barrier, before the
/// clock starts.
fn pooled_throughput(total: usize, tasks: usize) -> f64 {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let sink = sink();
    let pool = {
        let _g = rt.enter();
        Arc::new(pool(2, &sink))
    };
    let script = twenty_lines();
    let rate = rt.block_on(async {
        {
            let (mut a, mut b) = (
                pool.checkout().await.unwrap(),
                pool.checkout().await.unwrap(),
            );
            for e in [&mut a, &mut b] {
                assert!(e
                    .execute(&script, "acme", &event(), &json!({}))
                    .result
                    .is_ok());
            }
        }
        let start = Arc::new(tokio::sync::Barrier::new(tasks + 1));
        let mut handles = Vec::new();
        for _ in 0..tasks {
            let (pool, script, start) = (pool.clone(), script.clone(), start.clone());
            handles.push(tokio::spawn(async move {
                let job = shared_job(&script);
                start.wait().await;
                let mut n = 0u64;
                for _ in 0..total / tasks {
                    let ex = pool.run(job.clone()).await.unwrap();
                    n += u64::from(ex.result.is_ok());
                }
                n
            }));
        }
        start.wait().await;
        let t = Instant::now();
        let mut done = 0;
        for h in handles {
            done += h.await.unwrap();
        }
        let elapsed = t.elapsed();
        assert_eq!(done, total as u64);
        total as f64 / elapsed.as_secs_f64()
    });
    assert_eq!(sink.accepted.load(Relaxed), 2 + total as u64);
    rate
}

/// Target 3: 64 concurrent executions on a pool of 2 vs 2 owned engines, alternating rounds.
fn contention(args: &Args) {
    let rounds = args.rounds(15);
    let total = if args.quick { 640 } else { 32_000 };
    let mut owned = || owned_throughput(total);
    let mut pooled = || pooled_throughput(total, 64);
    let s = alternate(rounds, &mut [&mut owned, &mut pooled]);
    let side = |name, samples| Side {
        name,
        unit: "executions/s",
        samples,
    };
    compare(
        &format!("target 3, contention: {total} executions, 64 tasks on a pool of 2 (2 workers) vs 2 owned engines"),
        side("owned_2_threads", &s[0]),
        side("pool_2_x_64_tasks", &s[1]),
        |b, s| s / b,
        Goal::AtLeast(0.85),
    );
}

/// Target 6 (engine half): the Lua heap of an idle engine.
fn idle_heap() {
    let used = engine(&sink()).used_memory();
    println!(
        "target 6, idle_heap: {used} bytes ({:.1} KiB); target <= 65536: {}",
        used as f64 / 1024.0,
        if used <= 65_536 { "meets" } else { "MISSES" }
    );
}

fn main() {
    luametrics::prepare_process();
    let args = Args::parse();
    if args.wants("hot_path") {
        hot_path(&args);
    }
    if args.wants("pool") {
        pool_vs_held(&args);
    }
    if args.wants("contention") {
        contention(&args);
    }
    if args.wants("idle_heap") {
        idle_heap();
    }
}
