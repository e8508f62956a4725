//! Recording throughput while `/metrics` is scraped in a loop with 100k series, against the
//! same without scraping (target: at least 0.8x). Run: `cargo bench --bench scrape`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use luametrics_model::{Catalog, Kind, Limits, TagPolicy, Tags};
use luametrics_recorder::{BatchPoint, MetricsService, RecorderConfig, RecorderSettings};
use luametrics_server::prometheus;
use luametrics_sketch::Summary;
use luametrics_store::{Location, Store};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SERIES: usize = 100_000;
const BATCH: usize = 10_000;

fn service(rt: &tokio::runtime::Runtime, dir: &tempfile::TempDir) -> MetricsService {
    rt.block_on(async {
        let store = Arc::new(
            Store::open(Location::File(dir.path().join("s.db")))
                .await
                .unwrap(),
        );
        let svc = MetricsService::start(
            store,
            RecorderConfig {
                settings: RecorderSettings {
                    window_ms: 3_600_000,
                    max_memory_bytes: 1 << 30,
                    ..Default::default()
                },
                policy: TagPolicy::new(
                    luametrics_model::DEFAULT_DENIED_KEYS
                        .iter()
                        .map(|s| s.to_string()),
                    Limits {
                        points_per_minute: u32::MAX,
                        burst: u32::MAX,
                        max_series_per_name: usize::MAX,
                        max_series_per_tenant: usize::MAX,
                        ..Limits::default()
                    },
                ),
                ..RecorderConfig::default()
            },
        );
        // 100k series in the exposition.
        for i in 0..SERIES {
            let mut s = Summary::new(false);
            s.observe(1.0, 0);
            svc.ingest_user_batch(
                &format!("tenant-{}", i % 10),
                vec![BatchPoint {
                    name: "shop.orders_count".into(),
                    kind: Kind::Counter,
                    tags: Tags::from([("shop".to_string(), format!("s{i}"))]),
                    summary: s,
                }],
            );
        }
        svc.flush().await.unwrap();
        svc
    })
}

fn record_batch(svc: &MetricsService, tags: &[Tags]) -> Duration {
    let start = Instant::now();
    for i in 0..BATCH {
        svc.record_user_metric(
            "tenant-1",
            "invoice.processed_count",
            1.0,
            Kind::Counter,
            &tags[i % tags.len()],
        )
        .unwrap();
    }
    start.elapsed()
}

fn scrape(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let svc = service(&rt, &dir);
    assert!(svc.exposed_series() >= SERIES);
    let tags: Vec<Tags> = (0..8)
        .map(|i| Tags::from([("plan".to_string(), format!("p{i}"))]))
        .collect();
    let mut group = c.benchmark_group("scrape");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(20);
    group.bench_function("record_without_scrape", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| record_batch(&svc, &tags)).sum())
    });
    let stop = Arc::new(AtomicBool::new(false));
    let scraper = {
        let svc = svc.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut scrapes = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let text = prometheus::encode(&svc.exposition(), Catalog::builtin(), false);
                assert!(text.len() > SERIES * 20);
                scrapes += 1;
            }
            scrapes
        })
    };
    group.bench_function("record_while_scraping_100k_series", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| record_batch(&svc, &tags)).sum())
    });
    stop.store(true, Ordering::Relaxed);
    let scrapes = scraper.join().unwrap();
    println!("scrapes of {SERIES} series completed during the run: {scrapes}");
    group.finish();
}

criterion_group!(benches, scrape);
criterion_main!(benches);
