//! SPEC §12 target 4 and the recorder's Rust-side cost. Run: `cargo bench --bench store`.
//!
//! - flush: writing N aggregated rows through the recorder's flush vs a bare libSQL prepared
//!   INSERT of N rows in one transaction into the same table (target: at least 0.7x the speed).
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

async fn bare_insert(db_path: &std::path::Path) -> Duration {
    // A second connection to the same file, doing what the flush does with nothing around it.
    let db = libsql::Builder::new_local(db_path).build().await.unwrap();
    let conn = db.connect().unwrap();
    let start = Instant::now();
    let tx = conn.transaction().await.unwrap();
    let stmt = tx
        .prepare(
            "INSERT INTO metrics (name, value, tags, metric_type, timestamp, tenant_id, kind,
             window_ms, samples, sum, min, max, last, last_ts)
             VALUES (?1, ?2, ?3, 'user', ?4, 'acme', 'counter', 3600000, 1, ?2, ?2, ?2, ?2, ?4)",
        )
        .await
        .unwrap();
    for i in 0..N {
        stmt.execute(libsql::params![
            "shop.orders_count",
            i as f64,
            format!("{{\"shop\":\"s{i}\"}}"),
            1_700_000_000_000i64
        ])
        .await
        .unwrap();
        stmt.reset();
    }
    tx.commit().await.unwrap();
    start.elapsed()
}

async fn recorder_flush(store: Arc<Store>) -> Duration {
    let svc = MetricsService::start(store, config());
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
    let start = Instant::now();
    let rows = svc.flush().await.unwrap();
    let elapsed = start.elapsed();
    assert!(rows >= N);
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
    group.bench_function("bare_libsql_insert", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                n += 1;
                total += rt.block_on(async {
                    // Same schema (migrations ran), then a bare insert on its own connection.
                    let _store = fresh_store(&dir, n).await;
                    bare_insert(&dir.path().join(format!("b{n}.db"))).await
                });
            }
            total
        })
    });
    group.bench_function("recorder_flush", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                n += 1;
                total += rt.block_on(async { recorder_flush(fresh_store(&dir, n).await).await });
            }
            total
        })
    });
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

criterion_group!(benches, flush, record);
criterion_main!(benches);
