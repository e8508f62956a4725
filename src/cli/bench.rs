//! `luametrics bench pool`, `bench hot-path` and `bench e2e`: performance on the operator's own
//! machine, always as ratios to a baseline measured in the same run.
//!
//! `bench hot-path` runs each target's baseline and subject in alternating rounds (the first
//! side rotating), with the same engine settings and sink on every side and all set-up before
//! the clock; it prints medians with their range and exits 1 naming every target the median
//! ratio missed (2 on errors).

use super::CliError;

mod e2e;
mod fairness;
mod held;
mod remote;
pub(crate) use e2e::{e2e, E2eArgs};
pub(crate) use fairness::{fairness, FairnessArgs};
use luametrics::engine::{
    BatchPoint, BatchReport, Engine, EnginePool, EngineSettings, MetricsSink, PoolSettings, Script,
};
use luametrics::model::{Kind, Limits, RejectReason, TagPolicy, Tags, DEFAULT_DENIED_KEYS};
use luametrics::recorder::{MetricsService, RecorderConfig};
use luametrics::sketch::Summary;
use luametrics::store::{Location, Store};
pub(crate) use remote::{remote, RemoteArgs};
use serde::Serialize;
use serde_json::json;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The reference script of docs/targets.md (target 2).
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
    /// Executions that ran to completion (throughput and latencies count these).
    executions: u64,
    /// Executions that ended with a script error (a time limit on a loaded machine, say):
    /// reported, not counted as throughput.
    failed: u64,
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
            // One tenant saturates the pool on purpose: no engine-time budget.
            tenant_engine_ms_per_s: 0.0,
            max_size: size,
            wait_timeout_ms: 60_000,
            sample_interval_ms: 1_000,
            ..PoolSettings::default()
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
            let mut failed = 0u64;
            while !stop.load(Relaxed) {
                match pool.execute(&script, "bench", &ev, &cx).await {
                    Ok(ex) if ex.result.is_ok() => samples.push((
                        ex.timings.total_ms,
                        ex.timings.wait_ms,
                        ex.timings.overhead_ms,
                        ex.timings.script_ms,
                    )),
                    Ok(_) => failed += 1,
                    Err(_) => break,
                }
                tokio::task::yield_now().await;
            }
            (samples, failed)
        }));
    }
    tokio::time::sleep(cell).await;
    stop.store(true, Relaxed);
    let mut all = Vec::new();
    let mut failed = 0;
    for t in tasks {
        let (samples, f) = t.await.unwrap_or_default();
        all.extend(samples);
        failed += f;
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
        failed,
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

/// Median and range of samples.
#[derive(Debug, Clone, Copy)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

fn spread(xs: &[f64]) -> Spread {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    };
    Spread {
        median,
        min: v.first().copied().unwrap_or(f64::NAN),
        max: v.last().copied().unwrap_or(f64::NAN),
    }
}

impl std::fmt::Display for Spread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = f.precision().unwrap_or(2);
        // Written as is: callers format it into a string before aligning it (`pad` would
        // read the precision as a truncation).
        write!(
            f,
            "{:.p$} [{:.p$}-{:.p$}]",
            self.median,
            self.min,
            self.max,
            p = p
        )
    }
}

/// A target: the ratio at most or at least a bound.
#[derive(Debug, Clone, Copy)]
enum Goal {
    AtMost(f64),
    AtLeast(f64),
    /// Within `[lo, hi]`.
    Between(f64, f64),
}

impl Goal {
    fn met(self, ratio: f64) -> bool {
        match self {
            Goal::AtMost(t) => ratio <= t,
            Goal::Between(lo, hi) => (lo..=hi).contains(&ratio),
            Goal::AtLeast(t) => ratio >= t,
        }
    }
}

impl std::fmt::Display for Goal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Goal::AtMost(t) => format!("<= {t}x"),
            Goal::AtLeast(t) => format!(">= {t}x"),
            Goal::Between(lo, hi) => format!("{lo}-{hi}x"),
        };
        f.pad(&s)
    }
}

/// One line of `bench hot-path`: both sides' samples (one per round, in round order) and the
/// ratio `subject / baseline` taken round by round (the two ran back to back).
struct Row {
    name: String,
    baseline: Vec<f64>,
    subject: Vec<f64>,
    goal: Goal,
}

impl Row {
    fn ratios(&self) -> Vec<f64> {
        self.baseline
            .iter()
            .zip(&self.subject)
            .map(|(b, s)| s / b)
            .collect()
    }

    /// The verdict: the median of the per-round ratios against the target.
    fn meets(&self) -> bool {
        self.goal.met(spread(&self.ratios()).median)
    }
}

/// The lines naming every missed target, if any missed.
fn missed(rows: &[Row]) -> Option<String> {
    let lines: Vec<String> = rows
        .iter()
        .filter(|r| !r.meets())
        .map(|r| {
            format!(
                "{}: ratio {:.2}x, target {}",
                r.name,
                spread(&r.ratios()).median,
                r.goal
            )
        })
        .collect();
    (!lines.is_empty()).then(|| lines.join("\n  "))
}

fn loop_script(body: &str, n: usize) -> Script {
    Script::new(
        "loop.lua",
        format!("local xs = {{ 'x0', 'x1', 'x2', 'x3' }}\nlocal agg = {{}}\nlocal m = helpers.metrics\nfor i = 1, {n} do\n  local x = xs[i % 4 + 1]\n  {body}\nend\nreturn 1"),
    )
}

/// Accepts and counts every point, keeps none: the same cost on every side, and no growth
/// that would make a later side pay for an earlier one's points.
struct CountingSink {
    policy: TagPolicy,
    accepted: AtomicU64,
}

impl MetricsSink for CountingSink {
    fn policy(&self) -> &TagPolicy {
        &self.policy
    }
    fn reserve_points(&self, _tenant: &str, want: u32) -> u32 {
        want
    }
    fn release_points(&self, _tenant: &str, _unused: u32) {}
    fn ingest_user_batch(&self, _tenant: &str, points: Vec<BatchPoint>) -> BatchReport {
        let accepted = points.iter().map(|p| p.summary.samples).sum();
        self.accepted.fetch_add(accepted, Relaxed);
        BatchReport {
            accepted,
            ..Default::default()
        }
    }
    fn count_user_rejections(&self, _rejected: &[(RejectReason, u64)]) {}
    fn record_system(&self, _name: &str, _kind: Kind, _value: f64, _tags: Tags) {}
    fn record_system_summary(&self, _name: &str, _kind: Kind, _tags: Tags, _summary: Summary) {}
    fn claim_name(&self, _name: &str, _kind: Kind) -> Result<(), RejectReason> {
        Ok(())
    }
}

fn counting_sink() -> Arc<CountingSink> {
    Arc::new(CountingSink {
        policy: unlimited(),
        accepted: AtomicU64::new(0),
    })
}

/// The one engine configuration of every side (held, pooled, fresh, owned).
fn bench_settings() -> EngineSettings {
    EngineSettings {
        time_limit_ms: 60_000,
        ..EngineSettings::default()
    }
}

fn engine(sink: &Arc<CountingSink>) -> Engine {
    Engine::new(Arc::new(bench_settings()), sink.clone()).expect("engine starts")
}

/// Fails the command when the executions measured did not all record their points: a side
/// that silently did nothing must not pass as fast.
fn check_points(what: &str, sink: &CountingSink, expected: u64) -> Result<(), CliError> {
    let got = sink.accepted.load(Relaxed);
    if got == expected && expected > 0 {
        return Ok(());
    }
    Err(CliError::Arg {
        arg: "bench hot-path",
        problem: format!("{what}: the executions recorded {got} points, expected {expected}"),
    })
}

/// Executions per second of 2 threads each owning an engine: engines built and warmed, and
/// both threads started and parked on a barrier, before the clock starts.
fn owned_throughput(script: &Script, total: usize) -> Result<f64, CliError> {
    let sink = counting_sink();
    let engines: Vec<Engine> = (0..2)
        .map(|_| {
            let mut e = engine(&sink);
            e.execute(script, "bench", &event(), &json!({}));
            e
        })
        .collect();
    let start = std::sync::Barrier::new(3);
    let ok = AtomicU64::new(0);
    let t = std::thread::scope(|s| {
        for mut e in engines {
            let (start, ok) = (&start, &ok);
            s.spawn(move || {
                let (ev, cx) = (event(), json!({}));
                start.wait();
                let mut n = 0;
                for _ in 0..total / 2 {
                    n += u64::from(e.execute(script, "bench", &ev, &cx).result.is_ok());
                }
                ok.fetch_add(n, Relaxed);
            });
        }
        start.wait();
        // Leaving the scope joins both threads.
        Instant::now()
    });
    let elapsed = t.elapsed().as_secs_f64();
    check_points("3. owned engines", &sink, 2 + ok.load(Relaxed))?;
    Ok(ok.load(Relaxed) as f64 / elapsed)
}

/// Executions per second of 64 tasks on a pool of 2 with 2 worker threads: runtime and pool
/// built, both engines warmed, and the 64 tasks spawned and parked on a barrier, before the
/// clock starts. On a thread of its own: a runtime cannot be dropped inside another one.
fn pooled_throughput(script: &Script, total: usize) -> Result<f64, CliError> {
    let script = script.clone();
    std::thread::spawn(move || -> Result<f64, CliError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| CliError::Arg {
                arg: "bench hot-path",
                problem: format!("cannot start a 2-worker runtime: {e}"),
            })?;
        let sink = counting_sink();
        let pool_sink: Arc<dyn MetricsSink> = sink.clone();
        let ok = rt.block_on(async move {
            let pool = Arc::new(EnginePool::new(
                bench_settings(),
                PoolSettings {
                    // One tenant saturates the pool on purpose: no engine-time budget.
                    tenant_engine_ms_per_s: 0.0,
                    max_size: 2,
                    ..PoolSettings::default()
                },
                pool_sink,
            )?);
            {
                let (mut a, mut b) = (pool.checkout().await?, pool.checkout().await?);
                a.execute(&script, "bench", &event(), &json!({}));
                b.execute(&script, "bench", &event(), &json!({}));
            }
            let tasks = 64;
            let start = Arc::new(tokio::sync::Barrier::new(tasks + 1));
            let mut hs = Vec::new();
            for _ in 0..tasks {
                let (pool, script, start) = (pool.clone(), script.clone(), start.clone());
                // Each task counts its own executions: a shared counter would be contended,
                // which the owned side's is not.
                hs.push(tokio::spawn(async move {
                    let (ev, cx) = (event(), json!({}));
                    start.wait().await;
                    let mut n = 0u64;
                    for _ in 0..total / tasks {
                        if let Ok(ex) = pool.execute(&script, "bench", &ev, &cx).await {
                            n += u64::from(ex.result.is_ok());
                        }
                    }
                    n
                }));
            }
            start.wait().await;
            let t = Instant::now();
            let mut ok = 0;
            for h in hs {
                ok += h.await.unwrap_or(0);
            }
            Ok::<_, CliError>((ok, t.elapsed().as_secs_f64()))
        })?;
        check_points("3. pooled engines", &sink, 2 + ok.0)?;
        Ok(ok.0 as f64 / ok.1)
    })
    .join()
    .map_err(|_| CliError::Arg {
        arg: "bench hot-path",
        problem: "the pooled side's thread panicked".into(),
    })?
}

pub(crate) async fn hot_path(rounds: usize) -> Result<ExitCode, CliError> {
    if rounds == 0 {
        return Err(CliError::Arg {
            arg: "--rounds",
            problem: "at least 1".into(),
        });
    }
    // Preflight: if an engine cannot be built here, say so instead of measuring; the
    // measurement loops below then build engines with `expect` on a path known to work.
    let preflight: Arc<dyn MetricsSink> = counting_sink();
    Engine::new(Arc::new(bench_settings()), preflight).map_err(|e| CliError::Arg {
        arg: "bench hot-path",
        problem: format!("cannot build a Lua engine: {e}"),
    })?;
    let mut rows: Vec<Row> = Vec::new();

    // Target 1: helpers.metrics vs the pure-Lua aggregation loop on one engine; each round
    // runs the four scripts once, the first one rotating.
    let n = 10_000;
    let reps = 5;
    let sink = counting_sink();
    let mut e = engine(&sink);
    let ev = json!({});
    let cases = [
        ("baseline", "local tags = { a = x, b = 'y' } local k = 'invoice.processed_count' .. '|' .. tags.a .. '|' .. tags.b agg[k] = (agg[k] or 0) + 1"),
        ("count", "m.count('invoice.processed_count', 1, { a = x, b = 'y' })"),
        ("gauge", "m.gauge('queue.depth', i, { a = x, b = 'y' })"),
        ("histogram", "m.histogram('invoice.amount', i, { a = x, b = 'y' })"),
    ];
    let scripts: Vec<Script> = cases.iter().map(|(_, b)| loop_script(b, n)).collect();
    for s in &scripts {
        e.execute(s, "bench", &ev, &ev);
    }
    let mut ns: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    for r in 0..rounds {
        for k in 0..cases.len() {
            let i = (r + k) % cases.len();
            let t = Instant::now();
            for _ in 0..reps {
                e.execute(&scripts[i], "bench", &ev, &ev);
            }
            ns[i].push(t.elapsed().as_nanos() as f64 / (reps * n) as f64);
        }
    }
    // Every helper call of every execution (warm-up included) landed in the sink.
    check_points(
        "1. helpers.metrics",
        &sink,
        (3 * n * (1 + reps * rounds)) as u64,
    )?;
    for (i, (name, _)) in cases.iter().enumerate().skip(1) {
        rows.push(Row {
            name: format!("1. helpers.metrics.{name} in a loop (ns/call)"),
            baseline: ns[0].clone(),
            subject: ns[i].clone(),
            goal: Goal::AtMost(1.5),
        });
    }

    // Target 2: held engine, pool of 1, fresh sandboxed state per execution; each round runs
    // the three once, the first one rotating.
    let script = Script::new("twenty_lines.lua", TWENTY_LINES);
    let ev = event();
    let cx = json!({});
    let (reps, fresh_reps) = (2_000, 200);
    let (held_sink, pool_sink, fresh_sink) = (counting_sink(), counting_sink(), counting_sink());
    let mut held = engine(&held_sink);
    held.execute(&script, "bench", &ev, &cx);
    let pool = EnginePool::new(
        bench_settings(),
        PoolSettings {
            // One tenant saturates the pool on purpose: no engine-time budget.
            tenant_engine_ms_per_s: 0.0,
            max_size: 1,
            ..PoolSettings::default()
        },
        pool_sink.clone(),
    )?;
    pool.execute(&script, "bench", &ev, &cx).await?;
    let fresh_settings = Arc::new(bench_settings());
    let fresh_dyn: Arc<dyn MetricsSink> = fresh_sink.clone();
    let mut us: [Vec<f64>; 3] = Default::default();
    for r in 0..rounds {
        for k in 0..3 {
            let i = (r + k) % 3;
            let t = Instant::now();
            let count = match i {
                0 => {
                    for _ in 0..reps {
                        held.execute(&script, "bench", &ev, &cx);
                    }
                    reps
                }
                1 => {
                    for _ in 0..reps {
                        pool.execute(&script, "bench", &ev, &cx).await?;
                    }
                    reps
                }
                _ => {
                    for _ in 0..fresh_reps {
                        let mut e = Engine::new(fresh_settings.clone(), fresh_dyn.clone())
                            .expect("engine starts");
                        e.execute(&script, "bench", &ev, &cx);
                    }
                    fresh_reps
                }
            };
            us[i].push(t.elapsed().as_secs_f64() * 1e6 / count as f64);
        }
    }
    check_points("2. held engine", &held_sink, (1 + reps * rounds) as u64)?;
    check_points("2. pooled engine", &pool_sink, (1 + reps * rounds) as u64)?;
    check_points("2. fresh states", &fresh_sink, (fresh_reps * rounds) as u64)?;
    let [held_us, pooled_us, fresh_us] = us;
    rows.push(Row {
        name: "2a. pooled 20-line execution vs held engine (us)".into(),
        baseline: held_us,
        subject: pooled_us.clone(),
        goal: Goal::AtMost(1.3),
    });
    rows.push(Row {
        name: "2b. fresh sandboxed state per execution vs pooled (us)".into(),
        baseline: pooled_us,
        subject: fresh_us,
        goal: Goal::AtLeast(10.0),
    });

    // Target 3: 64 tasks on a pool of 2 (2 workers) vs 2 threads owning an engine, in
    // alternating order from round to round.
    let total = 32_000;
    let (mut owned, mut pooled) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        if r % 2 == 0 {
            owned.push(owned_throughput(&script, total)?);
            pooled.push(pooled_throughput(&script, total)?);
        } else {
            pooled.push(pooled_throughput(&script, total)?);
            owned.push(owned_throughput(&script, total)?);
        }
    }
    rows.push(Row {
        name: "3. 64 tasks on a pool of 2 vs 2 owned engines (exec/s)".into(),
        baseline: owned,
        subject: pooled,
        goal: Goal::AtLeast(0.85),
    });

    // Target 6: an idle engine's Lua heap against 64 KiB (one measurement per round; it
    // varies little).
    let idle: Vec<f64> = (0..rounds)
        .map(|_| engine(&counting_sink()).used_memory() as f64)
        .collect();
    rows.push(Row {
        name: "6. idle engine Lua heap (bytes vs 64 KiB)".into(),
        baseline: vec![65_536.0; rounds],
        subject: idle,
        goal: Goal::AtMost(1.0),
    });

    Ok(report(
        "target (docs/targets.md)",
        "bench hot-path",
        &rows,
        rounds,
    ))
}

/// Prints the rows with their verdicts; the exit code names whether every target was met
/// (1 otherwise, with each miss on stderr).
fn report(title: &str, command: &str, rows: &[Row], rounds: usize) -> ExitCode {
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(0).max(56);
    println!(
        "{:<width$} {:>26} {:>26} {:>20} {:>8} {:>7}  verdict",
        title, "baseline", "subject", "ratio", "target", "rounds"
    );
    for row in rows {
        let ratios = row.ratios();
        let met = ratios.iter().filter(|r| row.goal.met(**r)).count();
        println!(
            "{:<width$} {:>26} {:>26} {:>20} {:>8} {:>7}  {}",
            row.name,
            format!("{:.2}", spread(&row.baseline)),
            format!("{:.2}", spread(&row.subject)),
            {
                let r = spread(&ratios);
                format!("{:.2}x [{:.2}-{:.2}]", r.median, r.min, r.max)
            },
            row.goal,
            format!("{met}/{}", ratios.len()),
            if row.meets() { "meets" } else { "MISSES" }
        );
    }
    println!(
        "(median [min-max] of {rounds} alternating rounds on this machine; ratio = subject / baseline \
         per round; a verdict judges the median ratio; rounds: how many rounds met the target)"
    );
    match missed(rows) {
        None => ExitCode::SUCCESS,
        Some(lines) => {
            eprintln!("luametrics {command}: targets missed on this machine:\n  {lines}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, baseline: &[f64], subject: &[f64], goal: Goal) -> Row {
        Row {
            name: name.into(),
            baseline: baseline.to_vec(),
            subject: subject.to_vec(),
            goal,
        }
    }

    #[test]
    fn spread_is_the_median_and_range() {
        let s = spread(&[3.0, 1.0, 2.0, 10.0]);
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 10.0));
        let s = spread(&[5.0, 1.0, 4.0]);
        assert_eq!((s.median, s.min, s.max), (4.0, 1.0, 5.0));
        assert!(spread(&[]).median.is_nan());
    }

    #[test]
    fn verdicts_judge_the_median_of_per_round_ratios() {
        // Ratios 1.2, 2.0, 1.4: median 1.4 meets <= 1.5 though one round did not.
        let r = row(
            "1. x",
            &[1.0, 1.0, 1.0],
            &[1.2, 2.0, 1.4],
            Goal::AtMost(1.5),
        );
        assert!(r.meets());
        // Ratios 0.8, 0.9, 0.84: median 0.84 misses >= 0.85.
        let r = row(
            "3. y",
            &[100.0, 100.0, 100.0],
            &[80.0, 90.0, 84.0],
            Goal::AtLeast(0.85),
        );
        assert!(!r.meets());
        // A side that measured nothing cannot meet anything.
        let r = row("z", &[0.0], &[0.0], Goal::AtMost(1.5));
        assert!(!r.meets());
    }

    #[test]
    fn a_missed_target_is_named_and_met_ones_are_not() {
        let rows = [
            row("1. count", &[1.0], &[1.1], Goal::AtMost(1.5)),
            row("3. pool", &[100.0], &[84.0], Goal::AtLeast(0.85)),
        ];
        let msg = missed(&rows).expect("one target missed");
        assert!(
            msg.contains("3. pool: ratio 0.84x, target >= 0.85x"),
            "{msg}"
        );
        assert!(!msg.contains("1. count"), "{msg}");
        assert!(missed(&rows[..1]).is_none());
    }
}
