//! `luametrics bench e2e`: what a host and an HTTP client pay around the scripts, as ratios
//! measured in one run on the example login pipeline (three nodes).
//!
//! Every round builds its runtimes afresh (a temporary database each) and runs, back to back:
//! - **E1** the pipeline's three scripts on a held engine, one event after another, feeding
//!   each node's `context` to the next as the executor does (baseline), against
//!   `Runtime::execute` of the same events from one caller (subject), both recording through
//!   the same kind of recorder;
//! - **E2** the library's throughput from `--connections` concurrent callers (baseline)
//!   against the same events POSTed over that many keep-alive HTTP connections to a server
//!   started on a free port (subject; the load generator shares the machine), and the HTTP
//!   p99 latency against its p50;
//! - **E3** p99 latency of concurrent callers with traces off and a 10 s flush window
//!   (baseline) against trace sampling 1.0 and a 100 ms window (subject);
//! - **E4** traces dropped against traces produced by the runtime that ran E1, E2 and E3 at
//!   sampling 1.0 (all at the executor's maximum rate), counted at its shutdown;
//! - **E5** E1's subject on a runtime without per-tenant engine-time budget and point ledger
//!   (`pool.tenant_engine_ms_per_s = 0`, `recorder.tenant_usage = false`; baseline) against
//!   the same runtime with both, as configured (subject): what fairness and tenant usage cost.

use super::held::held_per_event;
use super::{report, spread, CliError, Goal, Row};
use luametrics::engine::{Engine, MetricsSink, Script};
use luametrics::server::{self, Tokens};
use luametrics::{Config, Runtime};
use serde_json::Value as Json;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// Arguments of `luametrics bench e2e`.
#[derive(clap::Args, Debug)]
pub(crate) struct E2eArgs {
    /// Configuration file (its engine, pool and recorder settings are used; the database is
    /// a temporary file).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Events file (JSON lines); its `user.login` events are replayed.
    #[arg(long, default_value = "lua/events.jsonl")]
    events: PathBuf,
    /// Alternating rounds (medians are reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds each throughput and latency measurement runs.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Concurrent callers of the library and keep-alive HTTP connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
}

const TRIGGER: &str = "user.login";

/// `(tenant, event)` of the replayed events.
type Events = Arc<Vec<(String, Json)>>;

fn load_events(path: &PathBuf) -> Result<Events, CliError> {
    let text = std::fs::read_to_string(path).map_err(|source| CliError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Json = serde_json::from_str(line).map_err(|source| CliError::Json {
            path: path.display().to_string(),
            source,
        })?;
        if v["trigger"] == TRIGGER {
            let tenant = v["tenant"].as_str().unwrap_or("bench").to_string();
            out.push((tenant, v["event"].clone()));
        }
    }
    if out.is_empty() {
        return Err(CliError::Arg {
            arg: "--events",
            problem: format!("{} holds no `{TRIGGER}` event", path.display()),
        });
    }
    Ok(Arc::new(out))
}

/// A runtime on a fresh temporary database with these trace and window settings.
async fn runtime(
    base: &Config,
    dir: &tempfile::TempDir,
    name: &str,
    sample: f64,
    window_ms: u64,
) -> Result<Arc<Runtime>, CliError> {
    let mut config = base.clone();
    config.database.url = dir.path().join(name).display().to_string();
    config.database.auth_token = None;
    config.pipelines.reload_interval_ms = 0;
    config.pipelines.trace_sample_rate = sample;
    config.recorder.window_ms = window_ms;
    Ok(Arc::new(Runtime::start(config).await?))
}

/// The login pipeline's scripts in the order the executor runs them, with their limits.
fn login_nodes(rt: &Runtime) -> Result<Vec<(Script, Option<u64>)>, CliError> {
    let pipelines = rt.pipelines();
    let p = pipelines
        .for_trigger(TRIGGER)
        .ok_or_else(|| CliError::Arg {
            arg: "--config",
            problem: format!("its pipelines have no `{TRIGGER}` pipeline"),
        })?;
    Ok(p.layers
        .iter()
        .flatten()
        .map(|&i| (p.nodes[i].script.clone(), p.nodes[i].timeout_ms))
        .collect())
}

/// E1's subject: µs per event of `Runtime::execute` from one caller.
async fn runtime_per_event(rt: &Runtime, events: &[(String, Json)], n: usize) -> f64 {
    let t = Instant::now();
    for (tenant, event) in events.iter().cycle().take(n) {
        let _ = rt.execute(TRIGGER, tenant, event.clone()).await;
    }
    t.elapsed().as_secs_f64() * 1e6 / n as f64
}

/// Executions per second and latency percentiles (ms) of one load.
struct Load {
    per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn load_of(mut latencies: Vec<f64>, elapsed: Duration) -> Load {
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| {
        latencies
            .get(((q * latencies.len() as f64) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    Load {
        per_s: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: at(0.50),
        p99_ms: at(0.99),
    }
}

/// `callers` tasks calling `Runtime::execute` back to back for `seconds`.
async fn library_load(rt: &Arc<Runtime>, events: &Events, callers: usize, seconds: f64) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|c| {
            let (rt, events, stop) = (rt.clone(), events.clone(), stop.clone());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut i = c;
                while !stop.load(Relaxed) {
                    let (tenant, event) = &events[i % events.len()];
                    i += callers;
                    let t = Instant::now();
                    if rt.execute(TRIGGER, tenant, event.clone()).await.is_ok() {
                        lat.push(t.elapsed().as_secs_f64() * 1000.0);
                    }
                }
                lat
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    load_of(all, start.elapsed())
}

/// Reads one HTTP/1.1 response; returns its status.
async fn read_response(
    conn: &mut BufReader<tokio::net::TcpStream>,
    line: &mut String,
    body: &mut Vec<u8>,
) -> std::io::Result<u16> {
    line.clear();
    conn.read_line(line).await?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut length = 0usize;
    loop {
        line.clear();
        if conn.read_line(line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    body.resize(length, 0);
    conn.read_exact(body).await?;
    Ok(status)
}

/// `connections` keep-alive connections POSTing the events back to back for `seconds`.
async fn http_load(
    addr: std::net::SocketAddr,
    token: &str,
    events: &Events,
    connections: usize,
    seconds: f64,
) -> Result<Load, CliError> {
    let requests: Arc<Vec<Vec<u8>>> = Arc::new(
        events
            .iter()
            .map(|(tenant, event)| {
                let body = serde_json::json!({ "tenant": tenant, "event": event }).to_string();
                format!(
                    "POST /v1/pipelines/{TRIGGER}/execute HTTP/1.1\r\nHost: {addr}\r\n\
                     Authorization: Bearer {token}\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes()
            })
            .collect(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|c| {
            let (requests, stop) = (requests.clone(), stop.clone());
            tokio::spawn(async move {
                let stream = tokio::net::TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                let mut conn = BufReader::new(stream);
                let (mut line, mut body) = (String::new(), Vec::new());
                let mut lat = Vec::new();
                let mut i = c;
                while !stop.load(Relaxed) {
                    let t = Instant::now();
                    conn.get_mut()
                        .write_all(&requests[i % requests.len()])
                        .await?;
                    i += connections;
                    let status = read_response(&mut conn, &mut line, &mut body).await?;
                    if status != 200 {
                        return Err(std::io::Error::other(format!(
                            "HTTP {status}: {}",
                            String::from_utf8_lossy(&body)
                        )));
                    }
                    lat.push(t.elapsed().as_secs_f64() * 1000.0);
                }
                Ok::<_, std::io::Error>(lat)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        let lat = t
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
            .map_err(|source| CliError::Listen {
                addr: addr.to_string(),
                source,
            })?;
        all.extend(lat);
    }
    Ok(load_of(all, start.elapsed()))
}

/// Everything one round measured.
struct Round {
    held_us: f64,
    execute_us: f64,
    /// E1's subject again, on a runtime without the per-tenant engine-time budget and ledger.
    untracked_us: f64,
    /// E1's subject measured next to `untracked_us` (same order rules).
    tracked_us: f64,
    library: Load,
    http: Load,
    quiet_p99_ms: f64,
    produced: u64,
    dropped: u64,
}

async fn round(
    base: &Config,
    events: &Events,
    a: &E2eArgs,
    first_baseline: bool,
) -> Result<Round, CliError> {
    let dir = tempfile::tempdir().map_err(|source| CliError::Write {
        path: "a temporary directory".into(),
        source,
    })?;
    let traced = runtime(base, &dir, "traced.db", 1.0, 100).await?;
    let quiet = runtime(base, &dir, "quiet.db", 0.0, 10_000).await?;
    // E5: the same runtime as `traced` but with no engine-time budget (no admission, no
    // per-tenant engine-time accounting) and no per-tenant point ledger.
    let untracked = {
        let mut bare = base.clone();
        bare.pool.tenant_engine_ms_per_s = 0.0;
        bare.pool.tenant_engine_burst_ms = 0.0;
        bare.recorder.tenant_usage = false;
        runtime(&bare, &dir, "untracked.db", 1.0, 100).await?
    };
    let nodes = login_nodes(&traced)?;
    // The held engine records through the same kind of recorder as the runtime's engines.
    let sink: Arc<dyn MetricsSink> = Arc::new(traced.metrics().clone());
    let settings = Arc::new(base.engine.clone());
    let n = (a.seconds * 2_000.0).max(200.0) as usize;
    let held = {
        let (nodes, events) = (nodes.clone(), events.clone());
        move || -> Result<f64, CliError> {
            let mut engine = Engine::new(settings, sink).map_err(|e| CliError::Arg {
                arg: "bench e2e",
                problem: format!("cannot build an engine: {e}"),
            })?;
            held_per_event(&mut engine, &nodes, &events, n / 10);
            Ok(held_per_event(&mut engine, &nodes, &events, n))
        }
    };
    runtime_per_event(&traced, events, n / 10).await;
    let (held_us, execute_us) = if first_baseline {
        let h = tokio::task::spawn_blocking(held).await.map_err(join)??;
        (h, runtime_per_event(&traced, events, n).await)
    } else {
        let e = runtime_per_event(&traced, events, n).await;
        (tokio::task::spawn_blocking(held).await.map_err(join)??, e)
    };

    runtime_per_event(&untracked, events, n / 10).await;
    // A small difference on a noisy machine: the two sides take turns in 20 short slices
    // (alternating which goes first), so drift falls on both alike.
    let (mut untracked_us, mut tracked_us) = (0.0, 0.0);
    let slices = 20;
    for k in 0..slices {
        if (k % 2 == 0) == first_baseline {
            untracked_us += runtime_per_event(&untracked, events, n / slices).await;
            tracked_us += runtime_per_event(&traced, events, n / slices).await;
        } else {
            tracked_us += runtime_per_event(&traced, events, n / slices).await;
            untracked_us += runtime_per_event(&untracked, events, n / slices).await;
        }
    }
    let (untracked_us, tracked_us) = (untracked_us / slices as f64, tracked_us / slices as f64);
    untracked.shutdown().await?;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|source| CliError::Listen {
            addr: "127.0.0.1:0".into(),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| CliError::Listen {
        addr: "127.0.0.1:0".into(),
        source,
    })?;
    let mut settings = base.server.clone();
    settings.execute_token = Some("bench-e2e".into());
    let tokens = Tokens::from_settings(&settings);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server::serve(
        listener,
        traced.clone(),
        settings,
        tokens,
        async move {
            let _ = stop_rx.await;
        },
    ));
    let (library, http) = if first_baseline {
        let l = library_load(&traced, events, a.connections, a.seconds).await;
        (
            l,
            http_load(addr, "bench-e2e", events, a.connections, a.seconds).await?,
        )
    } else {
        let h = http_load(addr, "bench-e2e", events, a.connections, a.seconds).await?;
        (
            library_load(&traced, events, a.connections, a.seconds).await,
            h,
        )
    };
    let _ = stop_tx.send(());
    let _ = server.await;
    let quiet_load = library_load(&quiet, events, a.connections, a.seconds).await;
    let traced_summary = traced.shutdown().await?;
    quiet.shutdown().await?;
    Ok(Round {
        held_us,
        execute_us,
        untracked_us,
        tracked_us,
        library,
        http,
        quiet_p99_ms: quiet_load.p99_ms,
        produced: traced_summary.traces_written + traced_summary.traces_dropped,
        dropped: traced_summary.traces_dropped,
    })
}

fn join(e: tokio::task::JoinError) -> CliError {
    CliError::Arg {
        arg: "bench e2e",
        problem: format!("a measuring thread failed: {e}"),
    }
}

pub(crate) async fn e2e(a: E2eArgs) -> Result<ExitCode, CliError> {
    if a.rounds == 0 || a.seconds.is_nan() || a.seconds <= 0.0 || a.connections == 0 {
        return Err(CliError::Arg {
            arg: "--rounds/--seconds/--connections",
            problem: "each must be above 0".into(),
        });
    }
    let base = Config::load(a.config.as_deref())?;
    let events = load_events(&a.events)?;
    let mut rounds = Vec::new();
    for r in 0..a.rounds {
        rounds.push(round(&base, &events, &a, r % 2 == 0).await?);
    }
    let col = |f: &dyn Fn(&Round) -> f64| rounds.iter().map(f).collect::<Vec<f64>>();
    let rows = vec![
        Row {
            name: "E1. Runtime::execute vs its 3 scripts on a held engine (us/event)".into(),
            baseline: col(&|r| r.held_us),
            subject: col(&|r| r.execute_us),
            goal: Goal::AtMost(2.0),
        },
        Row {
            name: format!(
                "E2. HTTP vs library throughput, {} callers (exec/s)",
                a.connections
            ),
            baseline: col(&|r| r.library.per_s),
            subject: col(&|r| r.http.per_s),
            goal: Goal::AtLeast(0.5),
        },
        Row {
            name: "E2. HTTP p99 vs HTTP p50 latency (ms)".into(),
            baseline: col(&|r| r.http.p50_ms),
            subject: col(&|r| r.http.p99_ms),
            goal: Goal::AtMost(4.0),
        },
        Row {
            name: "E3. p99, traces 1.0 + 100 ms window vs off + 10 s (ms)".into(),
            baseline: col(&|r| r.quiet_p99_ms),
            subject: col(&|r| r.library.p99_ms),
            goal: Goal::AtMost(1.25),
        },
        Row {
            name: "E4. traces dropped vs produced at max rate".into(),
            baseline: col(&|r| r.produced as f64),
            subject: col(&|r| r.dropped as f64),
            goal: Goal::AtMost(0.0),
        },
        Row {
            name: "E5. Runtime::execute, tenant budget + usage vs none (us/event)".into(),
            baseline: col(&|r| r.untracked_us),
            subject: col(&|r| r.tracked_us),
            goal: Goal::AtMost(1.05),
        },
    ];
    let lib = spread(&col(&|r| r.library.per_s));
    let http_p = (
        spread(&col(&|r| r.http.p50_ms)),
        spread(&col(&|r| r.http.p99_ms)),
    );
    println!(
        "library: {:.0} exec/s [{:.0}-{:.0}], p50 {:.2} ms, p99 {:.2} ms; HTTP p50 {:.2} ms, p99 {:.2} ms ({} events of `{TRIGGER}`, {:.1} s per load)",
        lib.median,
        lib.min,
        lib.max,
        spread(&col(&|r| r.library.p50_ms)).median,
        spread(&col(&|r| r.library.p99_ms)).median,
        http_p.0.median,
        http_p.1.median,
        events.len(),
        a.seconds
    );
    Ok(report(
        "end-to-end target (docs/targets.md)",
        "bench e2e",
        &rows,
        a.rounds,
    ))
}
