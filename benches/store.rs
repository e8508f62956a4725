//! Target 4 of docs/targets.md, the recorder's Rust-side cost, target 5 and target 6's memory bound.
//! Run: `cargo bench --bench store [-- FILTER]` (FILTER: `flush`, `recorder`, `query`,
//! `memory`; `LUAMETRICS_BENCH_ROUNDS=N` sets the rounds of the hand-rolled comparisons).
//!
//! - flush (target 4): writing N aggregated rows through the recorder's flush vs a bare libSQL
//!   prepared INSERT OR FAIL of the same N rows (32 per statement, as the store binds them) in one
//!   transaction into the same table (target: at
//!   least 0.7x the speed). Two pairs: a first window of new series against an empty table, and
//!   the steady state (the same series' next window) against a bare insert into a table holding
//!   one window already. Both sides write through a connection with the store's settings (WAL,
//!   `synchronous=NORMAL`, the same busy timeout), do all their set-up before the clock, and
//!   run in alternating rounds (hand-rolled harness below); a ratio is taken per round.
//! - recorder (criterion): ns per point of `record_user_metric` with 2 tags, validated,
//!   rate-limited, aggregated (a reference figure, no target).
//! - query_30d_100_series (criterion, target 5): p95 at a 1-hour step over 30 days x 100
//!   series from rollups (under 50 ms), next to `count` over the same rows.
//! - memory (target 6): 1M series offered to a recorder bounded at 64 MiB; the figure judged
//!   is the growth of the process's resident memory (`VmRSS` in /proc/self/status), measured
//!   in a child process of its own so nothing measured before skews it, not the recorder's
//!   own estimate (which is what enforces the bound and so always fits it).

use criterion::{criterion_group, Criterion, Throughput};
use luametrics_engine::{BatchPoint, MetricsSink};
use luametrics_model::{Kind, Limits, TagPolicy, Tags};
use luametrics_recorder::{MetricsService, RecorderConfig, RecorderSettings};
use luametrics_sketch::Summary;
use luametrics_store::{Location, Store};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod harness;
use harness::*;

/// The allocator the `luametrics` binary ships with, so both measure the same thing.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const N: usize = 10_000;

fn limits() -> Limits {
    Limits {
        points_per_minute: u32::MAX,
        burst: u32::MAX,
        max_series_per_name: usize::MAX,
        max_series_per_tenant: usize::MAX,
        ..Limits::default()
    }
}

fn config() -> RecorderConfig {
    RecorderConfig {
        settings: RecorderSettings {
            window_ms: 3_600_000,
            ..Default::default()
        },
        policy: TagPolicy::new(
            luametrics_model::DEFAULT_DENIED_KEYS
                .iter()
                .map(|s| s.to_string()),
            limits(),
        ),
        // A fixed clock: every point lands in one window, flushed only when asked.
        clock: Arc::new(|| 1_700_000_000_000),
        ..RecorderConfig::default()
    }
}

async fn fresh_store(dir: &tempfile::TempDir, i: u64) -> Arc<Store> {
    Arc::new(
        Store::open(Location::File(dir.path().join(format!("b{i}.db"))))
            .await
            .unwrap(),
    )
}

/// A second connection to a store's file, set up as the store sets up its own
/// (`Store::connect_db` in crates/store/src/lib.rs): busy timeout, WAL, `synchronous=NORMAL`.
/// Without the last one SQLite's default `FULL` would make the baseline alone sync the WAL on
/// every commit. Both settings are read back.
async fn bare_connection(path: &std::path::Path) -> (libsql::Database, libsql::Connection) {
    let db = libsql::Builder::new_local(path).build().await.unwrap();
    let conn = db.connect().unwrap();
    conn.busy_timeout(Duration::from_millis(2_000)).unwrap();
    let pragma = |sql: &'static str| {
        let conn = conn.clone();
        async move {
            let mut rows = conn.query(sql, ()).await.unwrap();
            let row = rows.next().await.unwrap().unwrap();
            row.get_value(0).unwrap()
        }
    };
    assert_eq!(
        pragma("PRAGMA journal_mode=WAL").await,
        libsql::Value::Text("wal".into())
    );
    conn.execute("PRAGMA synchronous=NORMAL", ()).await.unwrap();
    // 1 = NORMAL (2 = FULL, SQLite's default).
    assert_eq!(
        pragma("PRAGMA synchronous").await,
        libsql::Value::Integer(1)
    );
    // Load the schema before the clock, as the store's connection has (it ran the migrations).
    pragma("SELECT COUNT(*) FROM metrics").await;
    (db, conn)
}

/// One bare transaction: the flush's insert with every column it writes, each row's values
/// bound as the store binds them (32 rows per statement), nothing around it.
async fn bare_insert(conn: &libsql::Connection) -> Duration {
    let row = |i: usize| {
        use libsql::Value::*;
        vec![
            Text("shop.orders_count".into()),
            Real(i as f64),
            Text(format!("{{\"shop\":\"s{i}\"}}")),
            Text("user".into()),
            Integer(1_700_000_000_000),
            Null,
            Null,
            Null,
            Null,
            Text("acme".into()),
            Text("counter".into()),
            Null,
            Integer(3_600_000),
            Integer(1),
            Real(i as f64),
            Real(i as f64),
            Real(i as f64),
            Real(i as f64),
            Integer(0),
            Null,
            // `instance`: the flush writes it too (NULL here: the bench names no instance).
            Null,
        ]
    };
    // As the store writes: up to 32 rows per prepared statement, `INSERT OR FAIL` (no
    // statement journal; crates/store/src/batch.rs), so the ratio measures the recorder around
    // the insert, not a way of inserting.
    const PER: usize = 32;
    let statement = |rows: usize| {
        let mut sql = String::from(
            "INSERT OR FAIL INTO metrics (name, value, tags, metric_type, timestamp, service, route_id,
             client_id, status, tenant_id, kind, source, window_ms, samples, sum, min, max, last,
             last_ts, sketch, instance) VALUES ",
        );
        for r in 0..rows {
            sql.push_str(if r > 0 { ",(" } else { "(" });
            for c in 0..21 {
                sql.push_str(&format!(
                    "{}?{}",
                    if c > 0 { "," } else { "" },
                    r * 21 + c + 1
                ));
            }
            sql.push(')');
        }
        sql
    };
    let start = Instant::now();
    let tx = conn.transaction().await.unwrap();
    let full = tx.prepare(&statement(PER)).await.unwrap();
    let mut i = 0;
    while i < N {
        let n = PER.min(N - i);
        let values: Vec<libsql::Value> = (i..i + n).flat_map(row).collect();
        if n == PER {
            full.execute(values).await.unwrap();
            full.reset();
        } else {
            let rest = tx.prepare(&statement(n)).await.unwrap();
            rest.execute(values).await.unwrap();
        }
        i += n;
    }
    tx.commit().await.unwrap();
    start.elapsed()
}

/// The baseline side: a fresh database (migrations run), a bare connection set up as the
/// store's, and with `prefill` one window inserted first; then one timed transaction.
async fn bare_side(dir: &tempfile::TempDir, n: u64, prefill: bool) -> Duration {
    let store = fresh_store(dir, n).await;
    let (_db, conn) = bare_connection(&dir.path().join(format!("b{n}.db"))).await;
    if prefill {
        bare_insert(&conn).await;
    }
    let elapsed = bare_insert(&conn).await;
    assert_eq!(
        store.count_rows().await.unwrap(),
        (N * (1 + usize::from(prefill))) as u64
    );
    elapsed
}

fn ingest_window(svc: &MetricsService) {
    for i in 0..N {
        let mut s = Summary::new(false);
        s.observe(i as f64, 0);
        svc.ingest_user_batch(
            "acme",
            vec![BatchPoint {
                series: svc
                    .config()
                    .policy
                    .check_series(
                        "shop.orders_count",
                        Kind::Counter,
                        vec![("shop".to_string(), format!("s{i}"))],
                    )
                    .expect("a valid series"),
                summary: s,
            }],
        );
    }
}

/// The subject side: a fresh database and recorder, with `steady` one window of the same
/// series flushed first (the usual case, window after window), the next window ingested;
/// then one timed flush.
async fn recorder_side(dir: &tempfile::TempDir, n: u64, steady: bool) -> Duration {
    let store = fresh_store(dir, n).await;
    let svc = MetricsService::start(store.clone(), config());
    if steady {
        ingest_window(&svc);
        svc.flush().await.unwrap();
    }
    ingest_window(&svc);
    let start = Instant::now();
    let rows = svc.flush().await.unwrap();
    let elapsed = start.elapsed();
    assert!(rows >= N);
    // Stop its flusher so finished rounds do not tick in the background of later ones.
    svc.shutdown().await.unwrap();
    // The N series' rows of each window are in the table (plus the recorder's own metrics).
    let user_rows = store
        .find_metrics(&luametrics_store::FindQuery {
            name: "shop.orders_count".into(),
            from_ms: i64::MIN,
            to_ms: i64::MAX,
            ..Default::default()
        })
        .await
        .unwrap()
        .len();
    assert_eq!(user_rows, N * (1 + usize::from(steady)));
    elapsed
}

/// Target 4: the recorder's flush against a bare insert of the same rows, alternating rounds.
fn flush(args: &Args) {
    let rounds = args.rounds(15);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let n = std::cell::Cell::new(0u64);
    let next = || {
        n.set(n.get() + 1);
        n.get()
    };
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    for (label, later) in [
        ("first window of new series, empty table", false),
        (
            "steady state: the same series' next window, one window already stored",
            true,
        ),
    ] {
        let mut bare = || ms(rt.block_on(bare_side(&dir, next(), later)));
        let mut recorder = || ms(rt.block_on(recorder_side(&dir, next(), later)));
        let s = alternate(rounds, &mut [&mut bare, &mut recorder]);
        compare(
            &format!("target 4, flush: {N} rows, {label}"),
            Side {
                name: if later {
                    "bare_libsql_insert_second_window"
                } else {
                    "bare_libsql_insert"
                },
                unit: "ms",
                samples: &s[0],
            },
            Side {
                name: if later {
                    "recorder_flush_steady_series"
                } else {
                    "recorder_flush_new_series"
                },
                unit: "ms",
                samples: &s[1],
            },
            // Speed relative to the bare insert: its time over the flush's.
            |b, s| b / s,
            Goal::AtLeast(0.7),
        );
    }
}

fn record(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let svc = rt.block_on(async { MetricsService::start(fresh_store(&dir, 0).await, config()) });
    let tags: Vec<Tags> = (0..4)
        .map(|i| {
            Tags::from([
                ("plan".to_string(), format!("p{i}")),
                ("region".to_string(), "eu".to_string()),
            ])
        })
        .collect();
    let mut group = c.benchmark_group("recorder");
    group.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    group.bench_function("record_user_metric_2_tags", |b| {
        b.iter(|| {
            i += 1;
            svc.record_user_metric(
                "acme",
                "invoice.processed_count",
                Kind::Counter,
                1.0,
                &tags[i % 4],
            )
            .unwrap()
        })
    });
    group.finish();
}

/// Target 5: p95 of a histogram at a 1-hour step over 30 days x 100 series, answered from
/// rollups (target: under 50 ms), next to `count` over the same rows (no sketch merging).
fn query(c: &mut Criterion) {
    use luametrics_store::{Agg, AggregateQuery, FindQuery, WindowRow};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let now = 1_800_000_000_000i64;
    let hour = 3_600_000i64;
    let store = rt.block_on(async {
        let store = fresh_store(&dir, 999).await;
        let mut rows = Vec::new();
        for h in 0..(30 * 24) {
            for series in 0..100 {
                let mut s = Summary::new(true);
                for k in 0..20 {
                    s.observe(1.0 + ((h * 7 + series * 13 + k * 31) % 500) as f64, 0);
                }
                rows.push(WindowRow {
                    name: "checkout.latency_ms".into(),
                    tenant: Some(format!("tenant-{}", series % 5)),
                    metric_type: luametrics_model::MetricType::User,
                    kind: Kind::Histogram,
                    tags: Tags::from([("shop".to_string(), format!("s{series}"))]),
                    source: None,
                    timestamp_ms: now - 30 * 24 * hour + h * hour,
                    window_ms: hour,
                    summary: s,
                });
            }
        }
        store.create_batch(&rows).await.unwrap();
        store.rollup().await.unwrap();
        store
    });
    let q = |agg| AggregateQuery {
        find: FindQuery {
            name: "checkout.latency_ms".into(),
            from_ms: now - 30 * 24 * hour,
            to_ms: now,
            ..Default::default()
        },
        agg,
        step_ms: hour,
        group_by: None,
    };
    let mut group = c.benchmark_group("query_30d_100_series");
    group.sample_size(10);
    group.bench_function("count_1h_step_from_rollups", |b| {
        b.iter(|| rt.block_on(store.aggregate(&q(Agg::Count))).unwrap())
    });
    group.bench_function("p95_1h_step_from_rollups", |b| {
        b.iter(|| {
            let (series, tier) = rt.block_on(store.aggregate(&q(Agg::P95))).unwrap();
            assert_eq!(tier, luametrics_store::Tier::Hour);
            assert_eq!(series[0].points.len(), 30 * 24);
        })
    });
    group.finish();
}

/// Set in the child process that measures target 6's memory; its value is the series count.
const MEMORY_CHILD: &str = "LUAMETRICS_BENCH_MEMORY_CHILD";
const BOUND: usize = 64 * 1024 * 1024;

/// A field of /proc/self/status in bytes (`VmRSS`, `VmHWM`), if this system has one.
fn proc_status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The child: a recorder bounded at 64 MiB is offered `series` distinct series (one point
/// each); prints one `memory:` line with the resident memory before and after.
fn memory_child(series: u64) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let svc = rt.block_on(async {
        let mut config = config();
        config.settings.max_memory_bytes = BOUND;
        MetricsService::start(fresh_store(&dir, 0).await, config)
    });
    let rss_before = proc_status_bytes("VmRSS:").unwrap();
    let start = Instant::now();
    for i in 0..series {
        let mut s = Summary::new(false);
        s.observe(1.0, 0);
        svc.ingest_user_batch(
            "acme",
            vec![BatchPoint {
                series: svc
                    .config()
                    .policy
                    .check_series(
                        "shop.orders_count",
                        Kind::Counter,
                        vec![("shop".to_string(), format!("s{i}"))],
                    )
                    .expect("a valid series"),
                summary: s,
            }],
        );
    }
    let offer_s = start.elapsed().as_secs_f64();
    let rss_after = proc_status_bytes("VmRSS:").unwrap();
    let hwm_after = proc_status_bytes("VmHWM:").unwrap();
    let estimate = svc.memory_used();
    let tracked = svc.series_tracked();
    let _ = rt.block_on(svc.shutdown());
    let acc = svc.accounting();
    assert!(acc.user.balances());
    assert_eq!(acc.user.offered, series);
    println!(
        "memory: rss_before={rss_before} rss_after={rss_after} hwm_after={hwm_after} \
         estimate={estimate} tracked={tracked} accepted={} dropped={} offer_s={offer_s:.3}",
        acc.user.accepted,
        acc.user.dropped_total()
    );
}

/// Target 6 (recorder half): the resident memory a recorder bounded at 64 MiB grows by when
/// 1M series are offered, each run in a fresh child process.
fn memory(args: &Args) {
    if proc_status_bytes("VmRSS:").is_none() {
        println!("target 6, memory: skipped (no /proc/self/status on this system)");
        return;
    }
    let rounds = args.rounds(3);
    let series: u64 = if args.quick { 20_000 } else { 1_000_000 };
    let exe = std::env::current_exe().unwrap();
    let mib = |b: f64| b / 1048576.0;
    let (mut growth, mut peak, mut estimate) = (Vec::new(), Vec::new(), Vec::new());
    let mut last = String::new();
    for _ in 0..rounds {
        let out = std::process::Command::new(&exe)
            .env(MEMORY_CHILD, series.to_string())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = stdout
            .lines()
            .find(|l| l.starts_with("memory: "))
            .unwrap_or_else(|| panic!("no memory line in {stdout}"))
            .to_string();
        let field = |k: &str| -> f64 {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {k} in {line}"))
        };
        growth.push(mib(field("rss_after") - field("rss_before")));
        peak.push(mib(field("hwm_after") - field("rss_before")));
        estimate.push(mib(field("estimate")));
        last = line;
    }
    let g = spread(&growth);
    println!("target 6, memory: {series} series offered to a recorder bounded at 64 MiB ({rounds} child processes)");
    println!("  resident memory growth (VmRSS after - before)  {g:.1} MiB");
    println!(
        "  peak growth (VmHWM after - VmRSS before)       {:.1} MiB",
        spread(&peak)
    );
    println!(
        "  the recorder's own estimate (the bound it enforces) {:.1} MiB",
        spread(&estimate)
    );
    println!("  last child: {last}");
    println!(
        "  target: growth <= 64 MiB: {} ({}/{} runs meet)",
        if g.median <= 64.0 { "meets" } else { "MISSES" },
        growth.iter().filter(|x| **x <= 64.0).count(),
        growth.len()
    );
}

criterion_group!(benches, record, query);

fn main() {
    luametrics::prepare_process();
    if let Ok(series) = std::env::var(MEMORY_CHILD) {
        memory_child(series.parse().unwrap());
        return;
    }
    let args = Args::parse();
    if args.wants("flush") {
        flush(&args);
    }
    benches();
    if args.wants("memory") {
        memory(&args);
    }
    Criterion::default().configure_from_args().final_summary();
}
