//! `luametrics bench pool` and `luametrics bench hot-path`: performance on the operator's own
//! machine, always as ratios to a baseline measured in the same run.

use super::CliError;
use luametrics::engine::{
    CollectingSink, Engine, EnginePool, EngineSettings, MetricsSink, PoolSettings, Script,
};
use luametrics::model::{Limits, TagPolicy, DEFAULT_DENIED_KEYS};
use luametrics::recorder::{MetricsService, RecorderConfig};
use luametrics::store::{Location, Store};
use serde::Serialize;
use serde_json::json;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The SPEC §12 reference script.
pub(crate) const TWENTY_LINES: &str = include_str!("../../lua/bench/twenty_lines.lua");

fn event() -> serde_json::Value {
    json!({"method": "passkey", "user": {"plan": "pro", "email": "jane@example.com", "roles": ["admin", "dev", "ops"]}})
}

fn unlimited() -> TagPolicy {
    TagPolicy::new(
        DEFAULT_DENIED_KEYS.iter().map(|s| s.to_string()),
        Limits {
            points_per_minute: u32::MAX,
            burst: u32::MAX,
            max_points_per_execution: u32::MAX,
            ..Limits::default()
        },
    )
}

fn pct(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]
}

/// Options of `bench pool`.
#[derive(clap::Args)]
pub(crate) struct PoolArgs {
    /// A script to run (default: the 20-line reference script).
    #[arg(long)]
    script: Option<PathBuf>,
    /// Pool sizes to try.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    sizes: Vec<usize>,
    /// Concurrent executions to try.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64,256")]
    concurrency: Vec<usize>,
    /// Time per cell.
    #[arg(long, default_value_t = 2_000)]
    cell_ms: u64,
    /// p99 pool wait a recommended size must stay under.
    #[arg(long, default_value_t = 5.0)]
    max_wait_ms: f64,
    /// Write the results as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write an SVG chart (throughput and p99 latency against pool size, a line per concurrency).
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Database receiving the pool's own metrics (default: a file in the system temp dir).
    #[arg(long)]
    database: Option<String>,
}

/// One cell of the matrix.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Cell {
    pool_size: usize,
    concurrency: usize,
    executions: u64,
    throughput_per_s: f64,
    p50_total_ms: f64,
    p95_total_ms: f64,
    p99_total_ms: f64,
    p99_wait_ms: f64,
    peak_waiting: i64,
    exhausted: u64,
    overhead_share: f64,
}

async fn run_cell(
    script: &Script,
    size: usize,
    concurrency: usize,
    cell: Duration,
    sink: Arc<dyn MetricsSink>,
) -> Result<Cell, CliError> {
    let pool = Arc::new(EnginePool::new(
        EngineSettings::default(),
        PoolSettings {
            max_size: size,
            wait_timeout_ms: 60_000,
            sample_interval_ms: 1_000,
        },
        sink,
    )?);
    // Warm the engines so creation is not measured.
    {
        let mut held = Vec::new();
        for _ in 0..size {
            held.push(pool.checkout().await?);
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (pool, script, stop) = (pool.clone(), script.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let ev = event();
            let cx = json!({});
            let mut samples = Vec::new();
            while !stop.load(Relaxed) {
                match pool.execute(&script, "bench", &ev, &cx).await {
                    Ok(ex) => samples.push((
                        ex.timings.total_ms,
                        ex.timings.wait_ms,
                        ex.timings.overhead_ms,
                        ex.timings.script_ms,
                    )),
                    Err(_) => break,
                }
                tokio::task::yield_now().await;
            }
            samples
        }));
    }
    tokio::time::sleep(cell).await;
    stop.store(true, Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    let elapsed = start.elapsed().as_secs_f64();
    let status = pool.status();
    pool.record_metrics();
    let mut total: Vec<f64> = all.iter().map(|s| s.0).collect();
    let mut wait: Vec<f64> = all.iter().map(|s| s.1).collect();
    let overhead: f64 = all.iter().map(|s| s.2).sum();
    let script_ms: f64 = all.iter().map(|s| s.3).sum();
    Ok(Cell {
        pool_size: size,
        concurrency,
        executions: all.len() as u64,
        throughput_per_s: all.len() as f64 / elapsed,
        p50_total_ms: pct(&mut total, 0.50),
        p95_total_ms: pct(&mut total, 0.95),
        p99_total_ms: pct(&mut total, 0.99),
        p99_wait_ms: pct(&mut wait, 0.99),
        peak_waiting: status.peak_waiting,
        exhausted: status.exhausted,
        overhead_share: if overhead + script_ms > 0.0 {
            overhead / (overhead + script_ms)
        } else {
            0.0
        },
    })
}

/// The smallest size within 5% of the best throughput whose p99 wait stays under the bound,
/// judged at the highest concurrency tried; with the reason.
fn recommend(cells: &[Cell], max_wait_ms: f64) -> (usize, String) {
    let top = cells.iter().map(|c| c.concurrency).max().unwrap_or(1);
    let at_top: Vec<&Cell> = cells.iter().filter(|c| c.concurrency == top).collect();
    let best = at_top
        .iter()
        .map(|c| c.throughput_per_s)
        .fold(0.0, f64::max);
    let mut sizes: Vec<&&Cell> = at_top.iter().collect();
    sizes.sort_by_key(|c| c.pool_size);
    if let Some(c) = sizes
        .iter()
        .find(|c| c.throughput_per_s >= 0.95 * best && c.p99_wait_ms <= max_wait_ms)
    {
        return (
            c.pool_size,
            format!(
                "at concurrency {top}, size {} reaches {:.0}/s ({:.0}% of the best {:.0}/s) with p99 wait {:.2} ms <= {max_wait_ms} ms; larger pools add engines without throughput",
                c.pool_size,
                c.throughput_per_s,
                100.0 * c.throughput_per_s / best.max(1e-9),
                best,
                c.p99_wait_ms
            ),
        );
    }
    let fastest = sizes
        .iter()
        .max_by(|a, b| a.throughput_per_s.total_cmp(&b.throughput_per_s))
        .map_or(1, |c| c.pool_size);
    (
        fastest,
        format!("no size kept p99 wait under {max_wait_ms} ms at concurrency {top} within 5% of the best throughput; size {fastest} had the best throughput (queueing is bounded by CPU cores, not engines)"),
    )
}

/// A line chart by hand: two panels (throughput, p99 total latency) against pool size.
fn svg(cells: &[Cell]) -> String {
    let mut sizes: Vec<usize> = cells.iter().map(|c| c.pool_size).collect();
    sizes.sort();
    sizes.dedup();
    let mut conc: Vec<usize> = cells.iter().map(|c| c.concurrency).collect();
    conc.sort();
    conc.dedup();
    let colors = [
        "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    ];
    let (w, h, pad) = (560.0, 300.0, 50.0);
    let mut out = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"11\">\n", w * 2.0, h + 40.0);
    for (panel, (title, unit)) in [("throughput", "executions/s"), ("p99 total latency", "ms")]
        .iter()
        .enumerate()
    {
        let x0 = panel as f64 * w;
        let value = |c: &Cell| {
            if panel == 0 {
                c.throughput_per_s
            } else {
                c.p99_total_ms
            }
        };
        let max = cells.iter().map(value).fold(0.0f64, f64::max).max(1e-9) * 1.1;
        let px = |i: usize| {
            x0 + pad
                + (w - 2.0 * pad)
                    * if sizes.len() > 1 {
                        i as f64 / (sizes.len() - 1) as f64
                    } else {
                        0.5
                    }
        };
        let py = |v: f64| h - pad + 20.0 - (h - 2.0 * pad) * v / max;
        out.push_str(&format!(
            "<text x=\"{}\" y=\"16\" font-size=\"13\">{title} ({unit}) by pool size</text>\n",
            x0 + pad
        ));
        out.push_str(&format!(
            "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n",
            x0 + pad,
            py(0.0),
            x0 + w - pad,
            py(0.0)
        ));
        out.push_str(&format!(
            "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n",
            x0 + pad,
            py(0.0),
            x0 + pad,
            py(max)
        ));
        for t in 0..=4 {
            let v = max * t as f64 / 4.0;
            out.push_str(&format!(
                "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{:.1}</text>\n",
                x0 + pad - 4.0,
                py(v) + 4.0,
                v
            ));
        }
        for (i, s) in sizes.iter().enumerate() {
            out.push_str(&format!(
                "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{s}</text>\n",
                px(i),
                py(0.0) + 14.0
            ));
        }
        for (ci, c) in conc.iter().enumerate() {
            let color = colors[ci % colors.len()];
            let points: Vec<String> = sizes
                .iter()
                .enumerate()
                .filter_map(|(i, s)| {
                    cells
                        .iter()
                        .find(|x| x.pool_size == *s && x.concurrency == *c)
                        .map(|x| format!("{:.1},{:.1}", px(i), py(value(x))))
                })
                .collect();
            out.push_str(&format!(
                "<polyline class=\"series\" data-concurrency=\"{c}\" data-panel=\"{panel}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\n",
                points.join(" ")
            ));
            if panel == 0 {
                out.push_str(&format!(
                    "<text x=\"{}\" y=\"{}\" fill=\"{color}\">concurrency {c}</text>\n",
                    x0 + w - pad - 90.0,
                    34.0 + 14.0 * ci as f64
                ));
            }
        }
    }
    out.push_str("</svg>\n");
    out
}

pub(crate) async fn pool(a: PoolArgs) -> Result<ExitCode, CliError> {
    let script = match &a.script {
        Some(p) => Script::from_file(p).map_err(|source| CliError::Read {
            path: p.display().to_string(),
            source,
        })?,
        None => Script::new("twenty_lines.lua", TWENTY_LINES),
    };
    if a.sizes.is_empty()
        || a.concurrency.is_empty()
        || a.sizes.contains(&0)
        || a.concurrency.contains(&0)
    {
        return Err(CliError::Arg {
            arg: "--sizes/--concurrency",
            problem: "lists of positive numbers".into(),
        });
    }
    let db = a.database.clone().unwrap_or_else(|| {
        std::env::temp_dir()
            .join(format!("luametrics-bench-{}.db", std::process::id()))
            .display()
            .to_string()
    });
    let store = Arc::new(Store::open(Location::parse(&db, None)?).await?);
    let metrics = MetricsService::start(
        store.clone(),
        RecorderConfig {
            policy: unlimited(),
            ..RecorderConfig::default()
        },
    );
    let sink: Arc<dyn MetricsSink> = Arc::new(metrics.clone());
    let total = (a.sizes.len() * a.concurrency.len()) as u64;
    let bar = std::io::stderr()
        .is_terminal()
        .then(|| indicatif::ProgressBar::new(total));
    let mut cells = Vec::new();
    for &size in &a.sizes {
        for &c in &a.concurrency {
            if let Some(b) = &bar {
                b.set_message(format!("size {size} x concurrency {c}"));
            } else {
                eprintln!("cell: pool size {size}, concurrency {c}");
            }
            cells.push(
                run_cell(
                    &script,
                    size,
                    c,
                    Duration::from_millis(a.cell_ms),
                    sink.clone(),
                )
                .await?,
            );
            if let Some(b) = &bar {
                b.inc(1);
            }
        }
    }
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    metrics.shutdown().await?;
    println!(
        "{:>5} {:>6} {:>10} {:>9} {:>9} {:>9} {:>10} {:>8} {:>9} {:>9}",
        "size",
        "conc",
        "exec/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "p99 wait",
        "peak wt",
        "exhausted",
        "overhead"
    );
    for c in &cells {
        println!(
            "{:>5} {:>6} {:>10.0} {:>9.3} {:>9.3} {:>9.3} {:>10.3} {:>8} {:>9} {:>8.1}%",
            c.pool_size,
            c.concurrency,
            c.throughput_per_s,
            c.p50_total_ms,
            c.p95_total_ms,
            c.p99_total_ms,
            c.p99_wait_ms,
            c.peak_waiting,
            c.exhausted,
            100.0 * c.overhead_share
        );
    }
    let (size, why) = recommend(&cells, a.max_wait_ms);
    println!("recommended pool size: {size} ({why})");
    println!("pool metrics recorded in {db}");
    if let Some(path) = &a.json {
        let doc = json!({"script": script.id(), "cell_ms": a.cell_ms, "max_wait_ms": a.max_wait_ms, "cells": cells, "recommended_size": size, "reason": why, "database": db});
        std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap_or_default()).map_err(
            |source| CliError::Write {
                path: path.display().to_string(),
                source,
            },
        )?;
    }
    if let Some(path) = &a.svg {
        std::fs::write(path, svg(&cells)).map_err(|source| CliError::Write {
            path: path.display().to_string(),
            source,
        })?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Median of alternating A/B runs: the machine's noise hits both sides alike.
fn ab(rounds: usize, mut a: impl FnMut() -> f64, mut b: impl FnMut() -> f64) -> (f64, f64) {
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        xs.push(a());
        ys.push(b());
    }
    (pct(&mut xs, 0.5), pct(&mut ys, 0.5))
}

fn loop_script(body: &str, n: usize) -> Script {
    Script::new(
        "loop.lua",
        format!("local xs = {{ 'x0', 'x1', 'x2', 'x3' }}\nlocal agg = {{}}\nlocal m = helpers.metrics\nfor i = 1, {n} do\n  local x = xs[i % 4 + 1]\n  {body}\nend\nreturn 1"),
    )
}

fn engine(sink: &Arc<dyn MetricsSink>) -> Engine {
    Engine::new(
        Arc::new(EngineSettings {
            time_limit_ms: 60_000,
            ..EngineSettings::default()
        }),
        sink.clone(),
    )
    .expect("engine starts")
}

pub(crate) async fn hot_path(rounds: usize) -> Result<ExitCode, CliError> {
    let sink: Arc<dyn MetricsSink> = Arc::new(CollectingSink::new(unlimited()));
    // Preflight: if an engine or a runtime cannot be built here, say so instead of measuring;
    // the measurement loops below then build them with `expect` on a path known to work.
    Engine::new(Arc::new(EngineSettings::default()), sink.clone()).map_err(|e| CliError::Arg {
        arg: "bench hot-path",
        problem: format!("cannot build a Lua engine: {e}"),
    })?;
    // Built (and dropped) on a plain thread: a runtime cannot be dropped inside this one.
    std::thread::spawn(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map(drop)
    })
    .join()
    .map_err(|_| CliError::Arg {
        arg: "bench hot-path",
        problem: "the runtime preflight thread panicked".into(),
    })?
    .map_err(|e| CliError::Arg {
        arg: "bench hot-path",
        problem: format!("cannot start a 2-worker runtime: {e}"),
    })?;
    let mut rows: Vec<(String, f64, f64, f64, String, bool)> = Vec::new();
    // Target 1: helpers.metrics vs the pure-Lua aggregation loop, same engine.
    let n = 10_000;
    let mut e = engine(&sink);
    let ev = json!({});
    let mut ns_per_iter = |s: &Script| {
        let t = Instant::now();
        let ex = e.execute(s, "bench", &ev, &ev);
        assert!(ex.result.is_ok());
        t.elapsed().as_nanos() as f64 / n as f64
    };
    let base = loop_script("local tags = { a = x, b = 'y' } local k = 'invoice.processed_count' .. '|' .. tags.a .. '|' .. tags.b agg[k] = (agg[k] or 0) + 1", n);
    for (name, body) in [
        (
            "count",
            "m.count('invoice.processed_count', 1, { a = x, b = 'y' })",
        ),
        ("gauge", "m.gauge('queue.depth', i, { a = x, b = 'y' })"),
        (
            "histogram",
            "m.histogram('invoice.amount', i, { a = x, b = 'y' })",
        ),
    ] {
        let subject = loop_script(body, n);
        let cell = std::cell::RefCell::new(&mut ns_per_iter);
        let (b, s) = ab(
            rounds,
            || (cell.borrow_mut())(&base),
            || (cell.borrow_mut())(&subject),
        );
        rows.push((
            format!("1. helpers.metrics.{name} in a loop (ns/call)"),
            b,
            s,
            s / b,
            "<= 1.5x".into(),
            s / b <= 1.5,
        ));
    }
    // Target 2: pooled execution vs a held engine vs a fresh state per execution.
    let script = Script::new("twenty_lines.lua", TWENTY_LINES);
    let ev = event();
    let cx = json!({});
    let reps = 2_000;
    let pool = EnginePool::new(
        EngineSettings::default(),
        PoolSettings {
            max_size: 1,
            ..PoolSettings::default()
        },
        sink.clone(),
    )?;
    let mut held = engine(&sink);
    let mut pooled_us = Vec::new();
    let mut held_us = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        for _ in 0..reps {
            held.execute(&script, "bench", &ev, &cx);
        }
        held_us.push(t.elapsed().as_secs_f64() * 1e6 / reps as f64);
        let t = Instant::now();
        for _ in 0..reps {
            pool.execute(&script, "bench", &ev, &cx).await?;
        }
        pooled_us.push(t.elapsed().as_secs_f64() * 1e6 / reps as f64);
    }
    let (h, p) = (pct(&mut held_us, 0.5), pct(&mut pooled_us, 0.5));
    rows.push((
        "2a. pooled 20-line execution vs held engine (us)".into(),
        h,
        p,
        p / h,
        "<= 1.3x".into(),
        p / h <= 1.3,
    ));
    let settings = Arc::new(EngineSettings::default());
    let mut fresh_us = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        for _ in 0..200 {
            let mut e = Engine::new(settings.clone(), sink.clone()).expect("engine starts");
            e.execute(&script, "bench", &ev, &cx);
        }
        fresh_us.push(t.elapsed().as_secs_f64() * 1e6 / 200.0);
    }
    let f = pct(&mut fresh_us, 0.5);
    rows.push((
        "2b. fresh sandboxed state per execution vs pooled (us)".into(),
        p,
        f,
        f / p,
        ">= 10x".into(),
        f / p >= 10.0,
    ));
    // Target 3: 64 tasks on a pool of 2 (2 workers) vs 2 threads owning an engine.
    let total = 6_400;
    let (owned, pooled) = ab(
        rounds.min(5),
        || {
            let script = script.clone();
            // Built and warmed before the clock starts, like the pool's engines.
            let engines: Vec<Engine> = (0..2)
                .map(|_| {
                    let mut e = engine(&sink);
                    e.execute(&script, "bench", &event(), &json!({}));
                    e
                })
                .collect();
            let t = Instant::now();
            std::thread::scope(|s| {
                for mut e in engines {
                    let script = script.clone();
                    s.spawn(move || {
                        let (ev, cx) = (event(), json!({}));
                        for _ in 0..total / 2 {
                            e.execute(&script, "bench", &ev, &cx);
                        }
                    });
                }
            });
            total as f64 / t.elapsed().as_secs_f64()
        },
        || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            let script = script.clone();
            let sink = sink.clone();
            std::thread::spawn(move || {
                rt.block_on(async move {
                    let pool = Arc::new(
                        EnginePool::new(
                            EngineSettings::default(),
                            PoolSettings {
                                max_size: 2,
                                ..PoolSettings::default()
                            },
                            sink,
                        )
                        .expect("pool"),
                    );
                    // Both engines built and the script compiled on each before the clock
                    // starts, as the owned engines' are (each task counts its own executions:
                    // a shared counter would be contended, which the owned side is not).
                    let (a, b) = (pool.checkout().await, pool.checkout().await);
                    for mut e in [a, b].into_iter().flatten() {
                        e.execute(&script, "bench", &event(), &json!({}));
                    }
                    let t = Instant::now();
                    let mut hs = Vec::new();
                    for _ in 0..64 {
                        let (pool, script) = (pool.clone(), script.clone());
                        hs.push(tokio::spawn(async move {
                            let (ev, cx) = (event(), json!({}));
                            let mut done = 0u64;
                            for _ in 0..total / 64 {
                                if pool.execute(&script, "bench", &ev, &cx).await.is_ok() {
                                    done += 1;
                                }
                            }
                            done
                        }));
                    }
                    let mut done = 0;
                    for h in hs {
                        done += h.await.unwrap_or(0);
                    }
                    done as f64 / t.elapsed().as_secs_f64()
                })
            })
            .join()
            .unwrap_or(0.0)
        },
    );
    rows.push((
        "3. 64 tasks on a pool of 2 vs 2 owned engines (exec/s)".into(),
        owned,
        pooled,
        pooled / owned,
        ">= 0.85x".into(),
        pooled / owned >= 0.85,
    ));
    let idle = engine(&sink).used_memory() as f64;
    rows.push((
        "6. idle engine Lua heap (bytes vs 64 KiB)".into(),
        65_536.0,
        idle,
        idle / 65_536.0,
        "<= 1.0x".into(),
        idle <= 65_536.0,
    ));
    println!(
        "{:<58} {:>12} {:>12} {:>8} {:>9}  verdict",
        "SPEC §12 target", "baseline", "subject", "ratio", "target"
    );
    for (name, b, s, r, t, ok) in &rows {
        println!(
            "{name:<58} {b:>12.2} {s:>12.2} {r:>7.2}x {t:>9}  {}",
            if *ok { "meets" } else { "MISSES" }
        );
    }
    println!("(medians of {rounds} alternating rounds on this machine)");
    Ok(ExitCode::SUCCESS)
}
