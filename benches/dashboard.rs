//! The dashboard's server time for 30 days of data answered from rollups (target: under
//! 300 ms), next to the same page over the last hour. Run: `cargo bench --bench dashboard`.

use criterion::{criterion_group, criterion_main, Criterion};
use luametrics::model::{Kind, MetricType, Tags};
use luametrics::server::{dashboard, AppState, Tokens};
use luametrics::sketch::Summary;
use luametrics::store::WindowRow;
use luametrics::{Config, Runtime};
use std::sync::Arc;

/// The allocator the `luametrics` binary ships with, so both measure the same thing.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const HOUR: i64 = 3_600_000;

fn rows(now: i64) -> Vec<WindowRow> {
    let mut out = Vec::new();
    let series: Vec<(&str, Kind, MetricType, Option<String>, Tags)> = {
        let mut v = Vec::new();
        for route in 0..10 {
            let tags = Tags::from([
                ("route_id".to_string(), format!("/v1/r{route}")),
                ("method".to_string(), "GET".to_string()),
                ("status_class".to_string(), "2xx".to_string()),
            ]);
            v.push((
                "http.request.duration_ms",
                Kind::Histogram,
                MetricType::System,
                None,
                tags,
            ));
        }
        for script in ["a.lua", "b.lua", "c.lua", "d.lua", "e.lua"] {
            let t = Tags::from([("script_id".to_string(), script.to_string())]);
            v.push((
                "pipeline.node.overhead",
                Kind::Histogram,
                MetricType::System,
                None,
                t.clone(),
            ));
            v.push((
                "script.exec.duration_ms",
                Kind::Histogram,
                MetricType::System,
                None,
                t,
            ));
        }
        for trigger in ["user.login", "token.issue", "invoice.created"] {
            let t = Tags::from([
                ("pipeline_id".to_string(), format!("p_{trigger}")),
                ("status".to_string(), "ok".to_string()),
                ("trigger_event".to_string(), trigger.to_string()),
            ]);
            v.push((
                "pipeline.exec.duration",
                Kind::Histogram,
                MetricType::System,
                None,
                t,
            ));
        }
        for g in ["lua.pool.active", "lua.pool.waiting"] {
            v.push((g, Kind::Gauge, MetricType::System, None, Tags::new()));
        }
        for tenant in 0..5 {
            for plan in ["free", "pro"] {
                let t = Tags::from([("plan".to_string(), plan.to_string())]);
                v.push((
                    "logins.by_plan_count",
                    Kind::Counter,
                    MetricType::User,
                    Some(format!("tenant-{tenant}")),
                    t,
                ));
            }
        }
        v
    };
    for h in 0..(30 * 24) {
        for (i, (name, kind, mt, tenant, tags)) in series.iter().enumerate() {
            let mut s = Summary::new(*kind == Kind::Histogram);
            for k in 0..10 {
                s.observe(1.0 + ((h as usize * 7 + i * 13 + k * 31) % 200) as f64, 0);
            }
            out.push(WindowRow {
                name: name.to_string(),
                tenant: tenant.clone(),
                metric_type: *mt,
                kind: *kind,
                tags: tags.clone(),
                source: None,
                timestamp_ms: now - 30 * 24 * HOUR + h * HOUR,
                window_ms: HOUR,
                summary: s,
            });
        }
    }
    out
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = rt.block_on(async {
        let mut config = Config::default();
        config.database.url = dir.path().join("d.db").display().to_string();
        config.pipelines.file = concat!(env!("CARGO_MANIFEST_DIR"), "/lua/pipelines.toml").into();
        config.pipelines.reload_interval_ms = 0;
        let runtime = Arc::new(Runtime::start(config.clone()).await.unwrap());
        let now = runtime.metrics().now_ms();
        let rows = rows(now);
        runtime.store().create_batch(&rows).await.unwrap();
        runtime.store().rollup().await.unwrap();
        AppState::new(
            runtime,
            Tokens::from_settings(&config.server),
            config.server,
        )
    });
    let mut group = c.benchmark_group("dashboard");
    group.sample_size(10);
    for range in ["1h", "30d"] {
        group.bench_function(format!("render_{range}"), |b| {
            b.iter(|| {
                let html = rt.block_on(dashboard::render(&state, range, None, None, None, None));
                assert!(html.contains("data-panel=\"admin\""));
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
