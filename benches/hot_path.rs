//! SPEC §12 targets 1, 2, 3 and 6 for the engine: each subject next to its baseline, measured
//! in the same run. Run: `cargo bench --bench hot_path`.
//!
//! - hot_path: `helpers.metrics.{count,gauge,histogram}(name, v, {a=x, b=y})` in a Lua loop vs
//!   the pure-Lua aggregation loop `agg[k] = (agg[k] or 0) + 1` on the same engine (target 1.5x).
//! - pool: the 20-line script through the pool vs on a held engine (target 1.3x) vs a fresh
//!   sandboxed state per execution (target: pool at least 10x faster).
//! - contention: 64 concurrent executions on a pool of 2 (2 worker threads) vs 2 threads each
//!   owning an engine (target: at least 85% of the throughput).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use luametrics_engine::{
    CollectingSink, Engine, EnginePool, EngineSettings, MetricsSink, PoolSettings, Script,
};
use luametrics_model::{Limits, TagPolicy};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

const N: usize = 10_000;

fn sink() -> Arc<dyn MetricsSink> {
    Arc::new(CollectingSink::new(TagPolicy::new(
        luametrics_model::DEFAULT_DENIED_KEYS
            .iter()
            .map(|s| s.to_string()),
        Limits {
            max_points_per_execution: u32::MAX,
            ..Limits::default()
        },
    )))
}

fn settings() -> EngineSettings {
    EngineSettings {
        time_limit_ms: 60_000,
        ..EngineSettings::default()
    }
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

fn hot_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let pool = EnginePool::new(
        settings(),
        PoolSettings {
            max_size: 1,
            ..Default::default()
        },
        sink(),
    )
    .unwrap();
    let mut engine = rt.block_on(pool.checkout()).unwrap();
    let cases = [
        ("baseline_pure_lua", "local tags = { a = x, b = 'y' } local k = 'invoice.processed_count' .. '|' .. tags.a .. '|' .. tags.b agg[k] = (agg[k] or 0) + 1"),
        ("count", "m.count('invoice.processed_count', 1, { a = x, b = 'y' })"),
        ("gauge", "m.gauge('queue.depth', i, { a = x, b = 'y' })"),
        ("histogram", "m.histogram('invoice.amount', i, { a = x, b = 'y' })"),
    ];
    let mut group = c.benchmark_group("hot_path");
    group.throughput(Throughput::Elements(N as u64));
    for (name, body) in cases {
        let script = loop_script(body);
        // Histograms keep every value of an execution for the sketch: a bounded execution
        // (250 points by default) holds at most that.
        let ev = json!({});
        group.bench_function(name, |b| {
            b.iter(|| {
                let ex = engine.execute(&script, "acme", &ev, &ev);
                assert!(ex.result.is_ok(), "{:?}", ex.result);
            })
        });
    }
    group.finish();
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

fn pool_vs_held(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let script = twenty_lines();
    let ev = event();
    let cx = json!({"seen": 1});
    // Each subject gets its own sink: a collecting sink grows with every execution, and a
    // shared one would make whichever subject runs later pay for the earlier one's points.
    let mut group = c.benchmark_group("pool");
    {
        let pool = EnginePool::new(
            settings(),
            PoolSettings {
                max_size: 1,
                ..Default::default()
            },
            sink(),
        )
        .unwrap();
        let mut held = rt.block_on(pool.checkout()).unwrap();
        group.bench_function("held_engine", |b| {
            b.iter(|| held.execute(&script, "acme", &ev, &cx))
        });
    }
    {
        let pool = EnginePool::new(
            settings(),
            PoolSettings {
                max_size: 1,
                ..Default::default()
            },
            sink(),
        )
        .unwrap();
        // The loop runs inside one `block_on`: entering the runtime per iteration would add
        // its own cost, which is not the pool's (the held engine pays nothing like it).
        group.bench_function("pooled", |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let t = Instant::now();
                    for _ in 0..iters {
                        pool.execute(&script, "acme", &ev, &cx).await.unwrap();
                    }
                    t.elapsed()
                })
            })
        });
    }
    {
        let settings = Arc::new(settings());
        let sink = sink();
        group.bench_function("fresh_state", |b| {
            b.iter(|| {
                let mut e = Engine::new(settings.clone(), sink.clone()).unwrap();
                e.execute(&script, "acme", &ev, &cx)
            })
        });
    }
    group.finish();
}

/// Executions per second: `tasks` concurrent tasks on a pool of 2, 2 worker threads.
fn pooled_throughput(total: usize, tasks: usize) -> Duration {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let pool = {
        let _g = rt.enter();
        Arc::new(
            EnginePool::new(
                settings(),
                PoolSettings {
                    max_size: 2,
                    ..Default::default()
                },
                sink(),
            )
            .unwrap(),
        )
    };
    let script = twenty_lines();
    // Warm both engines.
    rt.block_on(async {
        let a = pool.checkout().await.unwrap();
        let b = pool.checkout().await.unwrap();
        drop((a, b));
    });
    let start = Instant::now();
    rt.block_on(async {
        let mut handles = Vec::new();
        for _ in 0..tasks {
            let pool = pool.clone();
            let script = script.clone();
            handles.push(tokio::spawn(async move {
                let ev = event();
                let cx = json!({});
                for _ in 0..total / tasks {
                    pool.execute(&script, "acme", &ev, &cx).await.unwrap();
                }
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
    });
    start.elapsed()
}

fn owned_throughput(total: usize) -> Duration {
    let script = twenty_lines();
    // One sink for both engines, as the pool's engines share theirs.
    let sink = sink();
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..2 {
            let (script, sink) = (script.clone(), sink.clone());
            s.spawn(move || {
                let mut e = Engine::new(Arc::new(settings()), sink).unwrap();
                let ev = event();
                let cx = json!({});
                for _ in 0..total / 2 {
                    e.execute(&script, "acme", &ev, &cx);
                }
            });
        }
    });
    start.elapsed()
}

fn contention(c: &mut Criterion) {
    let mut group = c.benchmark_group("contention");
    let total = 6_400;
    group.throughput(Throughput::Elements(total as u64));
    group.sample_size(10);
    group.bench_function(BenchmarkId::new("owned_2_threads", total), |b| {
        b.iter_custom(|iters| (0..iters).map(|_| owned_throughput(total)).sum())
    });
    group.bench_function(BenchmarkId::new("pool_2_x_64_tasks", total), |b| {
        b.iter_custom(|iters| (0..iters).map(|_| pooled_throughput(total, 64)).sum())
    });
    group.finish();
}

fn idle_heap(_c: &mut Criterion) {
    let e = Engine::new(Arc::new(settings()), sink()).unwrap();
    println!(
        "idle_engine_heap: {} bytes (target <= 65536)",
        e.used_memory()
    );
}

criterion_group!(benches, hot_path, pool_vs_held, contention, idle_heap);
criterion_main!(benches);
