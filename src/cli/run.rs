//! `luametrics run`: the main job. Runs the pipelines over an events file with bounded
//! concurrency, shows progress, and prints a summary that matches what the database holds.

use super::CliError;
use luametrics::{Config, Runtime};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    trigger: String,
    tenant: String,
    #[serde(default)]
    event: serde_json::Value,
}

#[derive(Default)]
struct Collected {
    by_status: BTreeMap<String, u64>,
    by_decision: BTreeMap<String, u64>,
    unknown_trigger: u64,
    not_started: BTreeMap<String, u64>,
    total: Vec<f64>,
    script: Vec<f64>,
    overhead: Vec<f64>,
    wait: Vec<f64>,
    user_points_by_tenant: BTreeMap<String, u64>,
    throttled: u64,
}

/// Percentiles of one timing, in ms.
#[derive(Serialize)]
struct Percentiles {
    p50: f64,
    p95: f64,
    p99: f64,
}

fn percentiles(v: &mut [f64]) -> Percentiles {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| {
        if v.is_empty() {
            0.0
        } else {
            v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]
        }
    };
    Percentiles {
        p50: at(0.50),
        p95: at(0.95),
        p99: at(0.99),
    }
}

/// What `run` prints (as text or JSON).
#[derive(Serialize)]
struct Summary {
    events: u64,
    malformed_lines: u64,
    unknown_trigger: u64,
    /// Events whose execution could not start for another reason, by error code (an empty
    /// tenant, say).
    not_started: BTreeMap<String, u64>,
    /// Executions refused for their tenant's engine-time budget, then retried after the wait
    /// the refusal named.
    throttled_retries: u64,
    executions_by_status: BTreeMap<String, u64>,
    executions_by_decision: BTreeMap<String, u64>,
    elapsed_ms: f64,
    executions_per_second: f64,
    total_ms: Percentiles,
    script_ms: Percentiles,
    overhead_ms: Percentiles,
    wait_ms: Percentiles,
    pool_max_size: usize,
    pool_peak_waiting: i64,
    pool_exhausted: u64,
    engines_created: u64,
    engines_discarded: BTreeMap<String, u64>,
    user_metrics_accepted: u64,
    user_metrics_rejected: BTreeMap<String, u64>,
    user_metrics_dropped: BTreeMap<String, u64>,
    user_points_by_tenant: BTreeMap<String, u64>,
    metric_rows_written: u64,
    traces_written: u64,
    /// Accepted points the shutdown deadline left unwritten (counted as lost; exit status 3).
    points_unwritten: u64,
    /// Of which user points.
    user_points_unwritten: u64,
    /// Traces the shutdown deadline left unwritten.
    traces_unwritten: u64,
    database: String,
}

/// Largest events file `run` reads into memory (split bigger replays into several files).
const MAX_EVENTS_BYTES: u64 = 256 * 1024 * 1024;

pub(crate) async fn run(
    events: PathBuf,
    config: Option<PathBuf>,
    concurrency: usize,
    json: bool,
) -> Result<ExitCode, CliError> {
    // Bytes, not text: its lines are checked one by one, so one line that is not UTF-8 costs
    // that line only.
    let text =
        luametrics::engine::read_bytes_bounded(&events, MAX_EVENTS_BYTES).map_err(|source| {
            CliError::Read {
                path: events.display().to_string(),
                source,
            }
        })?;
    let config = Config::load(config.as_deref())?;
    let database = config.database.url.clone();
    // A line is an event as the HTTP API would take it: at most `server.max_body_bytes`.
    let max_line = config.server.max_body_bytes;
    let runtime = Arc::new(Runtime::start(config).await?);

    // Lines are parsed by the workers as they take them, so what a replay holds parsed is a
    // few events, not the file (a 20 MiB file of small objects held 2.7 GB parsed at once).
    // A malformed line (bad JSON, not UTF-8, too long) is reported with its number and
    // skipped.
    // A byte order mark is not part of the first event.
    let body = text
        .strip_prefix(b"\xEF\xBB\xBF".as_slice())
        .unwrap_or(&text);
    let blank = |raw: &[u8]| raw.iter().all(u8::is_ascii_whitespace);
    let n = body.split(|&b| b == b'\n').filter(|l| !blank(l)).count() as u64;
    let skip = text.len() - body.len();
    let text = Arc::new(text);
    // Workers take lines from one cursor (offset, line number): no index of the lines, which
    // for a file of tiny lines was ~30x the file (adversary round 10).
    let lines = {
        let text = text.clone();
        let cursor = Arc::new(parking_lot::Mutex::new((skip, 0usize)));
        move || -> Option<(usize, std::ops::Range<usize>)> {
            let mut cursor = cursor.lock();
            loop {
                let (at, line) = *cursor;
                if at > text.len() || (at == text.len() && line > 0) {
                    return None;
                }
                let end = text[at..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(text.len(), |p| at + p);
                *cursor = (end + 1, line + 1);
                if !blank(&text[at..end]) {
                    return Some((line + 1, at..end));
                }
            }
        }
    };
    let malformed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let parse = {
        let (text, malformed, path) = (text.clone(), malformed.clone(), events.clone());
        move |line: usize, range: std::ops::Range<usize>| -> Option<Line> {
            let raw = &text[range];
            let parsed = if raw.len() > max_line {
                Err(format!(
                    "{} bytes, longer than server.max_body_bytes ({max_line})",
                    raw.len()
                ))
            } else {
                serde_json::from_slice::<Line>(raw).map_err(|e| e.to_string())
            };
            parsed
                .map_err(|e| {
                    malformed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    eprintln!("{}:{line}: skipped: {e}", path.display());
                })
                .ok()
        }
    };
    let bar = if std::io::stderr().is_terminal() && !json {
        let pb = indicatif::ProgressBar::new(n);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} events ({per_sec}, eta {eta})",
        ) {
            pb.set_style(style);
        }
        Some(pb)
    } else {
        None
    };

    let start = Instant::now();
    let queue = Arc::new(lines);
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut workers = Vec::new();
    // More workers than events would only wait for nothing (and a huge --concurrency would
    // spawn tasks until memory ran out).
    for _ in 0..concurrency.clamp(1, (n as usize).max(1)) {
        let (runtime, queue, done, bar, parse) = (
            runtime.clone(),
            queue.clone(),
            done.clone(),
            bar.clone(),
            parse.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut c = Collected::default();
            while let Some((line, range)) = queue() {
                let Some(job) = parse(line, range) else {
                    let d = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                    if let Some(pb) = &bar {
                        pb.set_position(d);
                    }
                    continue;
                };
                // A tenant over its engine-time budget waits its turn: a replay loses nothing.
                let result = loop {
                    match runtime
                        .execute(&job.trigger, &job.tenant, job.event.clone())
                        .await
                    {
                        Err(luametrics::Error::Execute(
                            luametrics::pipeline::ExecuteError::TenantBudget {
                                retry_after_ms, ..
                            },
                        )) => {
                            c.throttled += 1;
                            tokio::time::sleep(std::time::Duration::from_millis(retry_after_ms))
                                .await;
                        }
                        other => break other,
                    }
                };
                match result {
                    Ok(o) => {
                        *c.by_status
                            .entry(o.decision.status().to_string())
                            .or_default() += 1;
                        let decision = o.decision.as_str();
                        *c.by_decision.entry(decision.to_string()).or_default() += 1;
                        c.total.push(o.timings.total_ms);
                        c.script.push(o.timings.script_ms);
                        c.overhead.push(o.timings.overhead_ms);
                        c.wait.push(o.timings.wait_ms);
                        let points: u64 = o.nodes.iter().map(|n| n.accepted).sum();
                        *c.user_points_by_tenant
                            .entry(job.tenant.clone())
                            .or_default() += points;
                    }
                    Err(luametrics::Error::Execute(
                        luametrics::pipeline::ExecuteError::UnknownTrigger(_),
                    )) => c.unknown_trigger += 1,
                    Err(luametrics::Error::Execute(e)) => {
                        *c.not_started.entry(e.code().to_string()).or_default() += 1
                    }
                    Err(e) => {
                        *c.not_started
                            .entry(format!("{:?}", e.kind()).to_lowercase())
                            .or_default() += 1
                    }
                }
                let d = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                match &bar {
                    Some(pb) => pb.set_position(d),
                    None if !json && n >= 10 && d % (n / 10).max(1) == 0 => {
                        eprintln!(
                            "progress: {d}/{n} events ({:.0}%)",
                            d as f64 * 100.0 / n as f64
                        )
                    }
                    None => {}
                }
            }
            c
        }));
    }
    let mut all = Collected::default();
    for w in workers {
        let c = w.await.map_err(|e| CliError::Arg {
            arg: "events",
            problem: format!("a worker failed: {e}"),
        })?;
        for (k, v) in c.by_status {
            *all.by_status.entry(k).or_default() += v;
        }
        for (k, v) in c.by_decision {
            *all.by_decision.entry(k).or_default() += v;
        }
        for (k, v) in c.user_points_by_tenant {
            *all.user_points_by_tenant.entry(k).or_default() += v;
        }
        all.unknown_trigger += c.unknown_trigger;
        for (k, v) in c.not_started {
            *all.not_started.entry(k).or_default() += v;
        }
        all.throttled += c.throttled;
        all.total.extend(c.total);
        all.script.extend(c.script);
        all.overhead.extend(c.overhead);
        all.wait.extend(c.wait);
    }
    if let Some(pb) = &bar {
        pb.finish_and_clear();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let pool = runtime.pool_status();
    // Points left unwritten at the deadline are an error (exit status 3), after the summary:
    // without it nothing said what the run executed and accepted (adversary round 24).
    let (shutdown, unwritten) = match runtime.shutdown().await {
        Ok(s) => (s, None),
        Err(luametrics::Error::Unwritten { summary, cause }) => (
            (*summary).clone(),
            Some(luametrics::Error::Unwritten { summary, cause }),
        ),
        Err(e) => return Err(e.into()),
    };
    let accounting = runtime.accounting();
    // What the flusher says it wrote, not a count of the table: tests hold one against the
    // other.
    let rows_written = runtime.metrics().rows_written();
    let malformed = malformed.load(std::sync::atomic::Ordering::Relaxed);
    let n = n - malformed;
    let summary = Summary {
        events: n,
        malformed_lines: malformed,
        unknown_trigger: all.unknown_trigger,
        not_started: all.not_started,
        throttled_retries: all.throttled,
        executions_by_status: all.by_status,
        executions_by_decision: all.by_decision,
        elapsed_ms: elapsed * 1000.0,
        executions_per_second: n as f64 / elapsed.max(1e-9),
        total_ms: percentiles(&mut all.total),
        script_ms: percentiles(&mut all.script),
        overhead_ms: percentiles(&mut all.overhead),
        wait_ms: percentiles(&mut all.wait),
        pool_max_size: pool.max_size,
        pool_peak_waiting: pool.peak_waiting,
        pool_exhausted: pool.exhausted,
        engines_created: pool.created,
        engines_discarded: pool.discarded,
        user_metrics_accepted: accounting.user.accepted,
        user_metrics_rejected: accounting.user.rejected,
        user_metrics_dropped: accounting.user.dropped,
        user_points_by_tenant: all.user_points_by_tenant,
        metric_rows_written: rows_written,
        traces_written: shutdown.traces_written,
        points_unwritten: shutdown.points_unwritten,
        user_points_unwritten: shutdown.user_points_unwritten,
        traces_unwritten: shutdown.traces_unwritten,
        database,
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&summary).unwrap_or_default()
        );
    } else {
        print_summary(&summary);
    }
    match unwritten {
        Some(e) => Err(e.into()),
        None => Ok(ExitCode::SUCCESS),
    }
}

fn print_summary(s: &Summary) {
    let map = |m: &BTreeMap<String, u64>| {
        if m.is_empty() {
            "none".to_string()
        } else {
            m.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    println!(
        "luametrics run: {} events in {:.2} s ({:.0}/s) into {}",
        s.events,
        s.elapsed_ms / 1000.0,
        s.executions_per_second,
        s.database
    );
    println!("  executions     {}", map(&s.executions_by_status));
    println!("  decisions      {}", map(&s.executions_by_decision));
    if s.malformed_lines > 0 || s.unknown_trigger > 0 || !s.not_started.is_empty() {
        println!(
            "  skipped        malformed lines={}, unknown trigger={}, not started: {}",
            s.malformed_lines,
            s.unknown_trigger,
            map(&s.not_started)
        );
    }
    if s.throttled_retries > 0 {
        println!(
            "  throttled      {} executions waited for their tenant's engine-time budget (pool.tenant_engine_ms_per_s)",
            s.throttled_retries
        );
    }
    println!("  latency ms     {:>10} {:>10} {:>10}", "p50", "p95", "p99");
    for (name, p) in [
        ("total", &s.total_ms),
        ("script", &s.script_ms),
        ("overhead", &s.overhead_ms),
        ("wait", &s.wait_ms),
    ] {
        println!(
            "    {name:<12} {:>10.3} {:>10.3} {:>10.3}",
            p.p50, p.p95, p.p99
        );
    }
    println!(
        "  pool           max size {}, peak waiting {}, exhausted {}, engines created {}, discarded {}",
        s.pool_max_size, s.pool_peak_waiting, s.pool_exhausted, s.engines_created, map(&s.engines_discarded)
    );
    println!(
        "  user metrics   accepted {}, rejected {}, dropped {}",
        s.user_metrics_accepted,
        map(&s.user_metrics_rejected),
        map(&s.user_metrics_dropped)
    );
    println!("  per tenant     {}", map(&s.user_points_by_tenant));
    println!(
        "  written        {} metric rows, {} traces",
        s.metric_rows_written, s.traces_written
    );
    if s.points_unwritten > 0 || s.traces_unwritten > 0 {
        println!(
            "  NOT written    {} points ({} user points) and {} traces: the shutdown deadline passed",
            s.points_unwritten, s.user_points_unwritten, s.traces_unwritten
        );
    }
}
