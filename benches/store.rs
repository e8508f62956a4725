//! SPEC §12 target 4 and the recorder's Rust-side cost. Run: `cargo bench --bench store`.
//!
//! - flush: writing N aggregated rows through the recorder's flush vs a bare libSQL prepared
//!   INSERT of N rows in one transaction into the same table (target: at least 0.7x the speed).
//!   Two pairs: a first window of new series against an empty table, and the steady state (the
//!   same series' next window) against a bare insert into a table holding one window already.
//! - record_user_metric: ns per point with 2 tags, validated, rate-limited, aggregated.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use luametrics_model::{Kind, Limits, TagPolicy, Tags};
use luametrics_recorder::{BatchPoint, MetricsService, RecorderConfig, RecorderSettings};
use luametrics_sketch::Summary;
use luametrics_store::{Location, Store};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// `prefill`: insert one window of rows first (untimed), like the steady-state flush whose
/// table already holds the previous window.
async fn bare_insert(db_path: &std::path::Path, prefill: bool) -> Duration {
    // A second connection to the same file inserting the same rows (every column the flush
    // writes), binding each row's values as any insert loop does, with nothing around it.
    let db = libsql::Builder::new_local(db_path).build().await.unwrap();
    let conn = db.connect().unwrap();
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
        ]
    };
    let mut elapsed = Duration::ZERO;
    for round in 0..(1 + usize::from(prefill)) {
        let start = Instant::now();
        let tx = conn.transaction().await.unwrap();
        let stmt = tx
        .prepare(
            "INSERT INTO metrics (name, value, tags, metric_type, timestamp, service, route_id,
             client_id, status, tenant_id, kind, source, window_ms, samples, sum, min, max, last,
             last_ts, sketch)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)",
        )
        .await
        .unwrap();
        for i in 0..N {
            stmt.execute(row(i)).await.unwrap();
            stmt.reset();
        }
        tx.commit().await.unwrap();
        if round == usize::from(prefill) {
            elapsed = start.elapsed();
        }
    }
    elapsed
}

fn ingest_window(svc: &MetricsService) {
    for i in 0..N {
        let mut s = Summary::new(false);
        s.observe(i as f64, 0);
        svc.ingest_user_batch(
            "acme",
            vec![BatchPoint {
                name: "shop.orders_count".into(),
                kind: Kind::Counter,
                tags: Tags::from([("shop".to_string(), format!("s{i}"))]),
                summary: s,
            }],
        );
    }
}

/// `steady`: the series were already flushed once (the usual case: the same series window
/// after window); otherwise every series is new to the recorder.
async fn recorder_flush(store: Arc<Store>, steady: bool) -> Duration {
    let svc = MetricsService::start(store, config());
    if steady {
        ingest_window(&svc);
        svc.flush().await.unwrap();
    }
    ingest_window(&svc);
    let start = Instant::now();
    let rows = svc.flush().await.unwrap();
    let elapsed = start.elapsed();
    assert!(rows >= N);
    // Stop its flusher so finished iterations do not tick in the background of later ones.
    svc.shutdown().await.unwrap();
    elapsed
}

fn flush(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("flush");
    group.throughput(Throughput::Elements(N as u64));
    group.sample_size(10);
    let mut n = 0u64;
    for (name, prefill) in [
        ("bare_libsql_insert", false),
        ("bare_libsql_insert_second_window", true),
    ] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    n += 1;
                    total += rt.block_on(async {
                        // Same schema (migrations ran), then a bare insert on its own connection.
                        let _store = fresh_store(&dir, n).await;
                        bare_insert(&dir.path().join(format!("b{n}.db")), prefill).await
                    });
                }
                total
            })
        });
    }
    for (name, steady) in [
        ("recorder_flush_new_series", false),
        ("recorder_flush_steady_series", true),
    ] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    n += 1;
                    total += rt.block_on(async {
                        recorder_flush(fresh_store(&dir, n).await, steady).await
                    });
                }
                total
            })
        });
    }
    group.finish();
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
                1.0,
                Kind::Counter,
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

/// Target 6: the accumulators stay under their bound (default 64 MiB) with 1M series offered.
fn memory(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("memory");
    group.sample_size(10);
    group.throughput(Throughput::Elements(1_000_000));
    let mut n = 10_000u64;
    group.bench_function("offer_1m_series_64mib_bound", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                n += 1;
                let svc = rt.block_on(async {
                    let mut config = config();
                    config.settings.max_memory_bytes = 64 * 1024 * 1024;
                    MetricsService::start(fresh_store(&dir, n).await, config)
                });
                let start = Instant::now();
                for i in 0..1_000_000u64 {
                    let mut s = Summary::new(false);
                    s.observe(1.0, 0);
                    svc.ingest_user_batch(
                        "acme",
                        vec![BatchPoint {
                            name: "shop.orders_count".into(),
                            kind: Kind::Counter,
                            tags: Tags::from([("shop".to_string(), format!("s{i}"))]),
                            summary: s,
                        }],
                    );
                }
                total += start.elapsed();
                let used = svc.memory_used();
                let _ = rt.block_on(svc.shutdown());
                let acc = svc.accounting();
                assert!(used <= 64 * 1024 * 1024, "{used} bytes held");
                assert!(acc.user.balances());
                println!(
                    "accumulators: {:.1} MiB held (bound 64 MiB), accepted {}, dropped {}",
                    used as f64 / 1048576.0,
                    acc.user.accepted,
                    acc.user.dropped_total()
                );
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, flush, record, query, memory);
criterion_main!(benches);
