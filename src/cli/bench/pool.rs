//! `luametrics bench pool`: pool sizes against concurrency, with a table, JSON, an SVG chart
//! and a recommended size for an operator.

use super::*;

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
