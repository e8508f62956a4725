//! `luametrics bench remote`: the same writes into a local file and into a real libSQL server.
//!
//! Starts `sqld` (the libSQL server behind Turso; `--sqld`, `$LUAMETRICS_SQLD`, or
//! `../shared/sqld/bin/sqld`, or `sqld` on the PATH) on a free port of 127.0.0.1 without auth,
//! then, in alternating rounds:
//! - one flush of `--rows` window rows (one `create_batch`) into a fresh local file and into the
//!   server: remote rows/s against local rows/s (target >= 0.5x);
//! - `luametrics run` of the example events (this binary, as a user runs it) into a fresh local
//!   file and into the server: remote wall time against local (target <= 3x).
//!
//! Both sides share the machine and the run; the server adds a loopback HTTP round trip per
//! flush and per trace batch, which is what the ratios measure.

use super::{report, CliError, Goal, Row};
use luametrics::model::{Kind, MetricType};
use luametrics::sketch::Summary;
use luametrics::store::{Location, Store, WindowRow};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// Arguments of `luametrics bench remote`.
#[derive(clap::Args, Debug)]
pub(crate) struct RemoteArgs {
    /// The sqld binary (default: $LUAMETRICS_SQLD, ../shared/sqld/bin/sqld, or sqld on PATH).
    #[arg(long, env = "LUAMETRICS_SQLD")]
    sqld: Option<PathBuf>,
    /// Rows in the measured flush.
    #[arg(long, default_value_t = 10_000)]
    rows: usize,
    /// Events file for the `luametrics run` comparison.
    #[arg(long, default_value = "lua/events.jsonl")]
    events: PathBuf,
    /// Alternating rounds (medians are reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

/// A sqld child that is killed when dropped.
struct Server {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_sqld(given: Option<PathBuf>) -> Result<PathBuf, CliError> {
    let runs = |p: &Path| {
        Command::new(p)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let candidates: Vec<PathBuf> = match given {
        Some(p) => vec![p],
        None => vec!["../shared/sqld/bin/sqld".into(), "sqld".into()],
    };
    candidates
        .into_iter()
        .find(|p| runs(p))
        .ok_or_else(|| CliError::Arg {
            arg: "--sqld",
            problem: "no runnable sqld (pass --sqld PATH or set LUAMETRICS_SQLD)".into(),
        })
}

fn start_sqld(bin: &Path) -> Result<Server, CliError> {
    let io = |source| CliError::Write {
        path: bin.display().to_string(),
        source,
    };
    let dir = tempfile::tempdir().map_err(io)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(io)?
        .port();
    let child = Command::new(bin)
        .arg("--db-path")
        .arg(dir.path().join("data.sqld"))
        .args([
            "--http-listen-addr",
            &format!("127.0.0.1:{port}"),
            "--no-welcome",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(io)?;
    let server = Server {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    };
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(server);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(CliError::Arg {
        arg: "--sqld",
        problem: format!(
            "{} did not listen on port {port} within 10 s",
            bin.display()
        ),
    })
}

/// Rows shaped like a flush: 50 tenants x 20 names x plans, histograms with sketches.
fn rows(n: usize, round: usize) -> Vec<WindowRow> {
    (0..n)
        .map(|i| {
            let mut summary = Summary::new(i % 3 == 0);
            for k in 0..4 {
                summary.observe((i * 7 + k) as f64, k as i64);
            }
            WindowRow {
                name: format!("bench.metric_{}", i % 20),
                tenant: Some(format!("tenant-{}", i % 50)),
                metric_type: MetricType::User,
                kind: if i % 3 == 0 {
                    Kind::Histogram
                } else {
                    Kind::Counter
                },
                tags: [("plan".to_string(), format!("p{}", i % 13))]
                    .into_iter()
                    .collect(),
                source: Some("service:bench".into()),
                timestamp_ms: (round * n + i) as i64 * 1_000,
                window_ms: 10_000,
                summary,
            }
        })
        .collect()
}

async fn flush_rate(location: Location, rows: &[WindowRow]) -> Result<f64, CliError> {
    let store = Store::open(location).await?;
    let t = Instant::now();
    store.create_batch(rows).await?;
    Ok(rows.len() as f64 / t.elapsed().as_secs_f64())
}

fn run_seconds(events: &Path, database: &str, scratch: &Path) -> Result<f64, CliError> {
    let exe = std::env::current_exe().map_err(|source| CliError::Read {
        path: "the luametrics binary".into(),
        source,
    })?;
    let t = Instant::now();
    let out = Command::new(exe)
        .arg("run")
        .arg(events)
        .env("LUAMETRICS_DATABASE_URL", database)
        .env_remove("LUAMETRICS_DATABASE_AUTH_TOKEN")
        .current_dir(std::env::current_dir().unwrap_or_else(|_| scratch.to_path_buf()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|source| CliError::Read {
            path: "luametrics run".into(),
            source,
        })?;
    let secs = t.elapsed().as_secs_f64();
    if !out.status.success() {
        return Err(CliError::Arg {
            arg: "--events",
            problem: format!(
                "luametrics run into {database} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(secs)
}

pub(crate) async fn remote(a: RemoteArgs) -> Result<ExitCode, CliError> {
    if a.rows == 0 || a.rounds == 0 {
        return Err(CliError::Arg {
            arg: "--rows/--rounds",
            problem: "positive numbers".into(),
        });
    }
    let bin = find_sqld(a.sqld)?;
    let server = start_sqld(&bin)?;
    let scratch = tempfile::tempdir().map_err(|source| CliError::Write {
        path: "a temporary directory".into(),
        source,
    })?;
    let mut local_flush = Vec::new();
    let mut remote_flush = Vec::new();
    let mut local_run = Vec::new();
    let mut remote_run = Vec::new();
    for round in 0..a.rounds {
        eprintln!("round {}/{}", round + 1, a.rounds);
        let batch = rows(a.rows, round);
        let file = scratch.path().join(format!("flush-{round}.db"));
        let remote = Location::parse(&server.url, None)?;
        // Alternate which side goes first, so drift on the machine falls on both.
        if round % 2 == 0 {
            local_flush.push(flush_rate(Location::File(file), &batch).await?);
            remote_flush.push(flush_rate(remote, &batch).await?);
        } else {
            remote_flush.push(flush_rate(remote, &batch).await?);
            local_flush.push(flush_rate(Location::File(file), &batch).await?);
        }
        let file = scratch.path().join(format!("run-{round}.db"));
        let file = file.display().to_string();
        if round % 2 == 0 {
            local_run.push(run_seconds(&a.events, &file, scratch.path())?);
            remote_run.push(run_seconds(&a.events, &server.url, scratch.path())?);
        } else {
            remote_run.push(run_seconds(&a.events, &server.url, scratch.path())?);
            local_run.push(run_seconds(&a.events, &file, scratch.path())?);
        }
    }
    drop(server);
    let rows = [
        Row {
            name: format!("R1 flush of {} rows, rows/s: sqld vs local file", a.rows),
            baseline: local_flush,
            subject: remote_flush,
            goal: Goal::AtLeast(0.5),
        },
        Row {
            name: format!(
                "R2 luametrics run {}, s: sqld vs local file",
                a.events.display()
            ),
            baseline: local_run,
            subject: remote_run,
            goal: Goal::AtMost(3.0),
        },
    ];
    Ok(report(
        &format!("remote vs local ({})", bin.display()),
        "bench remote",
        &rows,
        a.rounds,
    ))
}
