//! The store against real libSQL files in temporary directories.

use luametrics_model::{Kind, MetricType, Tags};
use luametrics_sketch::Summary;
use luametrics_store::*;
use rand::{Rng, SeedableRng};

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

async fn open(dir: &tempfile::TempDir) -> Store {
    Store::open(Location::File(dir.path().join("m.db")))
        .await
        .unwrap()
}

fn row(name: &str, kind: Kind, tags: &[(&str, &str)], ts: i64, values: &[f64]) -> WindowRow {
    let mut summary = Summary::new(kind == Kind::Histogram);
    for (i, v) in values.iter().enumerate() {
        summary.observe(*v, ts + i as i64);
    }
    WindowRow {
        name: name.into(),
        tenant: Some("acme".into()),
        metric_type: MetricType::User,
        kind,
        tags: tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        source: Some("service:api".into()),
        timestamp_ms: ts,
        window_ms: 10_000,
        summary,
    }
}

/// An allowed trace of `acme` without spans, started at `t`.
fn trace(id: &str, t: i64) -> TraceRecord {
    TraceRecord {
        id: id.into(),
        pipeline_id: "p".into(),
        trigger_event: "user.login".into(),
        tenant: "acme".into(),
        status: "ok".into(),
        decision: "allow".into(),
        reason: None,
        started_at_ms: t,
        total_ms: 1.0,
        wait_ms: 0.0,
        script_ms: 1.0,
        helpers_ms: 0.0,
        overhead_ms: 0.0,
        error: None,
        warnings: vec![],
        spans: vec![],
    }
}

fn find(name: &str, from: i64, to: i64) -> FindQuery {
    FindQuery {
        name: name.into(),
        from_ms: from,
        to_ms: to,
        ..Default::default()
    }
}

#[tokio::test]
async fn batch_insert_stores_distinct_rows_and_reads_them_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let rows: Vec<WindowRow> = (0..500)
        .map(|i| {
            let plan = format!("p{}", i % 7);
            row(
                "shop.sales",
                Kind::Counter,
                &[("plan", &plan)],
                i * 10_000,
                &[i as f64],
            )
        })
        .collect();
    assert_eq!(store.create_batch(&rows).await.unwrap(), 500);
    let back = store
        .find_metrics(&find("shop.sales", 0, i64::MAX))
        .await
        .unwrap();
    assert_eq!(back.len(), 500);
    for (i, r) in back.iter().enumerate() {
        // A prepared statement that is not reset re-inserts row 0: every value must differ.
        assert_eq!(r.value, i as f64);
        assert_eq!(r.timestamp_ms, i as i64 * 10_000);
        assert_eq!(r.tags.get("plan").unwrap(), &format!("p{}", i % 7));
        assert_eq!(r.tenant.as_deref(), Some("acme"));
    }
    // Filters on tags, tenant and type.
    let mut q = find("shop.sales", 0, i64::MAX);
    q.filters.insert("plan".into(), "p3".into());
    q.tenant = Some("acme".into());
    q.metric_type = Some(MetricType::User);
    assert_eq!(store.find_metrics(&q).await.unwrap().len(), 71);
    q.tenant = Some("other".into());
    assert!(store.find_metrics(&q).await.unwrap().is_empty());
    // A tag key is checked the same way on raw rows as on rollups: it is written into the SQL.
    let mut bad = find("shop.sales", 0, i64::MAX);
    bad.filters.insert("plan') OR 1=1 --".into(), "x".into());
    assert!(matches!(
        store.find_metrics(&bad).await,
        Err(StoreError::InvalidQuery(_))
    ));
    // A filter on a tag the rows lack matches none of them.
    let mut absent = find("shop.sales", 0, i64::MAX);
    absent.filters.insert("region".into(), "eu".into());
    assert!(store.find_metrics(&absent).await.unwrap().is_empty());
    let id = store
        .create(&row("shop.sales", Kind::Counter, &[], 1, &[2.0]))
        .await
        .unwrap();
    assert_eq!(id, 501);
    let names = store.metric_names().await.unwrap();
    assert_eq!(names.len(), 1);
    assert_eq!(names[0].rows, 501);
}

#[tokio::test]
async fn reopening_keeps_data_and_does_not_rerun_migrations() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(&dir).await;
        store
            .create(&row("a.b", Kind::Gauge, &[], 0, &[1.0]))
            .await
            .unwrap();
    }
    let store = open(&dir).await;
    assert_eq!(store.count_rows().await.unwrap(), 1);
}

fn lognormal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
    let u2: f64 = rng.gen();
    let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
    (4.0 + 0.9 * z).exp()
}

#[tokio::test]
async fn percentiles_from_stored_sketches_are_within_one_percent() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let values: Vec<f64> = (0..100_000).map(|_| lognormal(&mut rng)).collect();
    // 100 windows of 1,000 samples each, as the flusher would write them.
    let rows: Vec<WindowRow> = values
        .chunks(1_000)
        .enumerate()
        .map(|(i, c)| {
            row(
                "checkout.latency_ms",
                Kind::Histogram,
                &[],
                i as i64 * 10_000,
                c,
            )
        })
        .collect();
    store.create_batch(&rows).await.unwrap();
    let mut sorted = values.clone();
    sorted.sort_by(f64::total_cmp);
    for (agg, q) in [
        (Agg::P50, 0.5),
        (Agg::P90, 0.9),
        (Agg::P95, 0.95),
        (Agg::P99, 0.99),
    ] {
        let query = AggregateQuery {
            find: find("checkout.latency_ms", 0, 2_000_000),
            agg,
            step_ms: 2_000_000,
            group_by: None,
        };
        let (series, tier) = store.aggregate(&query).await.unwrap();
        assert_eq!(tier, Tier::Raw);
        let got = series[0].points[0].1;
        let want = sorted[(q * (sorted.len() - 1) as f64).floor() as usize];
        assert!(
            ((got - want) / want).abs() <= 0.01,
            "{agg:?}: {got} vs {want}"
        );
    }
}

#[tokio::test]
async fn rollups_match_the_raw_windows_and_take_late_rows() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut rows = Vec::new();
    // Three days of 10-minute windows, two series, a counter and a histogram.
    for w in 0..(3 * 24 * 6) {
        let ts = 1_700_000_000_000 / DAY * DAY + w * 600_000;
        for plan in ["pro", "free"] {
            let n = rng.gen_range(1..5);
            let vals: Vec<f64> = (0..n).map(|_| rng.gen_range(1.0..100.0)).collect();
            rows.push(row(
                "shop.orders_count",
                Kind::Counter,
                &[("plan", plan)],
                ts,
                &vals,
            ));
            rows.push(row(
                "shop.basket",
                Kind::Histogram,
                &[("plan", plan)],
                ts,
                &vals,
            ));
        }
    }
    store.create_batch(&rows).await.unwrap();
    let report = store.rollup().await.unwrap();
    assert_eq!(report.raw_rows, rows.len() as u64);
    // Running again folds nothing twice.
    assert_eq!(store.rollup().await.unwrap().raw_rows, 0);

    let start = rows[0].timestamp_ms;
    let end = start + 3 * DAY;
    for (name, step) in [("shop.orders_count", HOUR), ("shop.basket", DAY)] {
        for agg in [Agg::Sum, Agg::Count, Agg::Min, Agg::Max] {
            let q = AggregateQuery {
                find: find(name, start, end),
                agg,
                step_ms: step,
                group_by: Some("plan".into()),
            };
            let (rolled, tier) = store.aggregate(&q).await.unwrap();
            assert_ne!(tier, Tier::Raw);
            // The same buckets computed from raw rows directly.
            let raw = store.find_metrics(&q.find).await.unwrap();
            for s in &rolled {
                for (t, v) in &s.points {
                    let mut want = Summary::new(false);
                    for r in raw.iter().filter(|r| {
                        r.timestamp_ms / step * step == *t && r.tags.get("plan") == s.group.as_ref()
                    }) {
                        want.merge(&r.summary).unwrap();
                    }
                    let want = match agg {
                        Agg::Sum => want.sum,
                        Agg::Count => want.samples as f64,
                        Agg::Min => want.min,
                        _ => want.max,
                    };
                    assert!(
                        (v - want).abs() < 1e-6,
                        "{name} {agg:?} at {t}: {v} vs {want}"
                    );
                }
            }
            let buckets: usize = rolled.iter().map(|s| s.points.len()).sum();
            assert_eq!(buckets as i64, 2 * (3 * DAY / step));
        }
    }
    // Wider queries read the per-tenant and per-name rollups; they agree with the raw rows.
    for (group_by, tenant) in [(None, None), (Some("tenant"), None), (None, Some("acme"))] {
        for agg in [Agg::Sum, Agg::Count, Agg::Max, Agg::P95] {
            let mut find = find("shop.basket", start, end);
            find.tenant = tenant.map(str::to_string);
            let q = AggregateQuery {
                find,
                agg,
                step_ms: DAY,
                group_by: group_by.map(str::to_string),
            };
            let (rolled, tier) = store.aggregate(&q).await.unwrap();
            assert_eq!(tier, Tier::Day);
            let raw = store.find_metrics(&q.find).await.unwrap();
            for (t, v) in &rolled[0].points {
                let mut want = Summary::new(true);
                for r in raw.iter().filter(|r| r.timestamp_ms / DAY * DAY == *t) {
                    want.merge(&r.summary).unwrap();
                }
                let want = match agg {
                    Agg::Sum => want.sum,
                    Agg::Count => want.samples as f64,
                    Agg::Max => want.max,
                    _ => want.sketch.as_ref().unwrap().quantile(0.95).unwrap(),
                };
                assert!(
                    (v - want).abs() < 1e-6,
                    "{group_by:?} {tenant:?} {agg:?}: {v} vs {want}"
                );
            }
        }
    }
    // A late row (a retried flush) for an already rolled-up hour is counted once: fresh before
    // the next rollup (read raw above the watermark), and still once after it.
    let late = row(
        "shop.orders_count",
        Kind::Counter,
        &[("plan", "pro")],
        start + 60_000,
        &[1000.0],
    );
    store.create(&late).await.unwrap();
    let q = AggregateQuery {
        find: find("shop.orders_count", start, start + HOUR),
        agg: Agg::Sum,
        step_ms: HOUR,
        group_by: Some("plan".into()),
    };
    let before = store.aggregate(&q).await.unwrap().0;
    store.rollup().await.unwrap();
    let after = store.aggregate(&q).await.unwrap().0;
    assert_eq!(before, after);
    let raw_sum: f64 = store
        .find_metrics(&{
            let mut f = q.find.clone();
            f.filters.insert("plan".into(), "pro".into());
            f
        })
        .await
        .unwrap()
        .iter()
        .map(|r| r.summary.sum)
        .sum();
    let pro = after
        .iter()
        .find(|s| s.group.as_deref() == Some("pro"))
        .unwrap();
    assert!((pro.points[0].1 - raw_sum).abs() < 1e-6);
}

#[tokio::test]
async fn retention_deletes_exactly_what_is_past_the_horizon() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let now = 1_800_000_000_000i64;
    let policy = Retention {
        raw_days: 7,
        hourly_days: 30,
        daily_days: 60,
        trace_days: 7,
        batch: 7,
    };
    // One row per 6 hours for 90 days back, including rows right at the horizons.
    let mut rows = Vec::new();
    for i in 0..(90 * 4) {
        rows.push(row("a.b", Kind::Counter, &[], now - i * 6 * HOUR, &[1.0]));
    }
    rows.push(row("a.b", Kind::Counter, &[], now - 7 * DAY, &[1.0]));
    rows.push(row("a.b", Kind::Counter, &[], now - 7 * DAY - 1, &[1.0]));
    store.create_batch(&rows).await.unwrap();
    let raw_old = rows
        .iter()
        .filter(|r| r.timestamp_ms < now - 7 * DAY)
        .count() as u64;
    let traces: Vec<TraceRecord> = [now - 8 * DAY, now - 7 * DAY, now - DAY]
        .into_iter()
        .enumerate()
        .map(|(i, t)| TraceRecord {
            spans: vec![SpanRecord {
                node_id: "n".into(),
                script_id: "s".into(),
                status: "ok".into(),
                started_at_ms: t,
                total_ms: 1.0,
                wait_ms: 0.0,
                script_ms: 1.0,
                helpers_ms: 0.0,
                overhead_ms: 0.0,
                error: None,
            }],
            ..trace(&format!("t{i}"), t)
        })
        .collect();
    store.insert_traces(&traces).await.unwrap();

    let report = store.retention(&policy, now).await.unwrap();
    assert_eq!(report.raw_deleted, raw_old);
    let left = store
        .find_metrics(&find("a.b", i64::MIN, i64::MAX))
        .await
        .unwrap();
    assert_eq!(left.len() as u64, rows.len() as u64 - raw_old);
    assert!(left.iter().all(|r| r.timestamp_ms >= now - 7 * DAY));
    assert_eq!(report.traces_deleted, 1);
    assert_eq!(store.count_traces().await.unwrap(), 2);
    // Hourly rollups older than 30 days and daily ones older than 60 are gone; newer stay.
    let hourly = store
        .aggregate(&AggregateQuery {
            find: find("a.b", now - 100 * DAY, now + DAY),
            agg: Agg::Count,
            step_ms: HOUR,
            group_by: None,
        })
        .await
        .unwrap()
        .0;
    let first = hourly[0].points.first().unwrap().0;
    assert!(first >= now - 30 * DAY, "oldest hourly bucket {first}");
    let hourly_total: f64 = hourly[0].points.iter().map(|p| p.1).sum();
    let expected = rows
        .iter()
        .filter(|r| r.timestamp_ms / HOUR * HOUR >= now - 30 * DAY)
        .count() as f64;
    assert_eq!(hourly_total, expected);
    let daily = store
        .aggregate(&AggregateQuery {
            find: find("a.b", now - 100 * DAY, now + DAY),
            agg: Agg::Count,
            step_ms: DAY,
            group_by: None,
        })
        .await
        .unwrap()
        .0;
    assert!(daily[0].points.first().unwrap().0 >= now - 60 * DAY);
    let bad = Retention {
        raw_days: 3,
        ..Retention::default()
    };
    let e = store.retention(&bad, now).await.unwrap_err();
    assert!(e.to_string().contains("raw_days"), "{e}");
}

#[tokio::test]
async fn bad_locations_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let under_file = file.join("m.db");
    let e = Store::open(Location::File(under_file.clone()))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Unwritable { .. }));
    assert!(
        e.to_string().contains(&under_file.display().to_string()),
        "{e}"
    );
    let e = Store::open(Location::File(dir.path().to_path_buf()))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("directory"), "{e}");
    let missing = dir.path().join("no/such/dir/m.db");
    let e = Store::open(Location::File(missing)).await.unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");
    let e = Location::parse("mysql://h/db", Some("t")).unwrap_err();
    assert!(matches!(e, StoreError::UnknownScheme(_)) && e.to_string().contains("mysql://h/db"));
    // A server that does not answer fails the open, naming the URL.
    let url = "http://127.0.0.1:1";
    let e = Store::open(Location::parse(url, None).unwrap())
        .await
        .unwrap_err();
    assert!(e.to_string().contains(url), "{e}");
}

#[tokio::test]
async fn invalid_queries_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let mut q = AggregateQuery {
        find: find("a.b", 0, 10),
        agg: Agg::Sum,
        step_ms: 0,
        group_by: None,
    };
    assert!(matches!(
        store.aggregate(&q).await,
        Err(StoreError::InvalidQuery(_))
    ));
    q.step_ms = 1;
    q.find.to_ms = 10_000_000;
    assert!(matches!(
        store.aggregate(&q).await,
        Err(StoreError::InvalidQuery(_))
    ));
    // A range whose length does not fit an i64 is still too many buckets (it wrapped to a
    // small count before, adversary round 5).
    q.find.from_ms = i64::MIN + 1;
    q.find.to_ms = i64::MAX;
    assert!(matches!(
        store.aggregate(&q).await,
        Err(StoreError::InvalidQuery(_))
    ));
    assert!("median".parse::<Agg>().is_err());
    let _ = Tags::new();
}

/// A batch of traces, each with several spans, reads back value for value: the prepared
/// statements are reset between rows (libsql 0.10 re-inserts the first row's values otherwise).
#[tokio::test]
async fn a_trace_batch_reads_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let traces: Vec<TraceRecord> = (0..50)
        .map(|i| TraceRecord {
            id: format!("trace-{i}"),
            pipeline_id: format!("p{}", i % 3),
            trigger_event: "t.x".into(),
            tenant: format!("tenant-{i}"),
            status: if i % 5 == 0 { "error" } else { "ok" }.into(),
            decision: "allow".into(),
            reason: (i % 7 == 0).then(|| format!("reason {i}")),
            started_at_ms: 1_700_000_000_000 + i,
            total_ms: i as f64,
            wait_ms: 0.5,
            script_ms: i as f64 / 2.0,
            helpers_ms: 0.25,
            overhead_ms: 0.125,
            error: (i % 5 == 0).then(|| format!("boom {i}")),
            warnings: vec![format!("w{i}")],
            spans: (0..3)
                .map(|n| SpanRecord {
                    node_id: format!("node-{i}-{n}"),
                    script_id: format!("s{n}"),
                    status: "ok".into(),
                    started_at_ms: 1_700_000_000_000 + i * 10 + n,
                    total_ms: (i * 10 + n) as f64,
                    wait_ms: 0.0,
                    script_ms: n as f64,
                    helpers_ms: 0.0,
                    overhead_ms: 0.0,
                    error: None,
                })
                .collect(),
        })
        .collect();
    store.insert_traces(&traces).await.unwrap();
    assert_eq!(store.count_traces().await.unwrap(), 50);
    for t in &traces {
        let mut back = store.get_trace(&t.id).await.unwrap().expect("stored");
        if back.spans.is_empty() {
            back.spans = store.trace_spans(&t.id).await.unwrap();
        }
        back.spans.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        assert_eq!(&back, t);
        // A tenant reads its own traces only.
        let own = store.trace_for(&t.id, Some(&t.tenant)).await.unwrap();
        assert_eq!(own.map(|o| o.id), Some(t.id.clone()));
        let other = format!("not-{}", t.tenant);
        assert_eq!(store.trace_for(&t.id, Some(&other)).await.unwrap(), None);
    }
}

/// Spans live in their trace's row since schema version 5; a trace written before keeps its
/// spans in `pipeline_spans` and still reads back with them, and spans that no longer parse
/// are a typed error naming the trace, not an empty list.
#[tokio::test]
async fn spans_of_traces_written_before_version_5_and_corrupt_spans() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let conn = libsql::Builder::new_local(dir.path().join("m.db"))
        .build()
        .await
        .unwrap()
        .connect()
        .unwrap();
    conn.execute_batch(
        "INSERT INTO pipeline_traces (id, pipeline_id, trigger_event, tenant_id, status, decision,
             started_at, total_ms, wait_ms, script_ms, helpers_ms, overhead_ms)
         VALUES ('old-1', 'p', 't.x', 'acme', 'ok', 'allow', 1, 3.0, 0.0, 2.0, 0.5, 0.5);
         INSERT INTO pipeline_spans (trace_id, node_id, script_id, status, started_at, total_ms,
             wait_ms, script_ms, helpers_ms, overhead_ms)
         VALUES ('old-1', 'first', 's1', 'ok', 1, 1.0, 0.0, 1.0, 0.0, 0.0),
                ('old-1', 'second', 's2', 'ok', 2, 2.0, 0.0, 1.0, 0.5, 0.5);
         INSERT INTO pipeline_traces (id, pipeline_id, trigger_event, tenant_id, status, decision,
             started_at, total_ms, wait_ms, script_ms, helpers_ms, overhead_ms, spans)
         VALUES ('bad-1', 'p', 't.x', 'acme', 'ok', 'allow', 1, 3.0, 0.0, 2.0, 0.5, 0.5, '[{');",
    )
    .await
    .unwrap();
    let old = store.get_trace("old-1").await.unwrap().expect("stored");
    let nodes: Vec<&str> = old.spans.iter().map(|s| s.node_id.as_str()).collect();
    assert_eq!(nodes, ["first", "second"]);
    assert_eq!(old.spans[1].helpers_ms, 0.5);
    match store.trace_spans("bad-1").await {
        Err(StoreError::Corrupt { problem, .. }) => assert!(problem.contains("bad-1"), "{problem}"),
        other => panic!("corrupt spans must be a typed error, got {other:?}"),
    }
    // A trace written now has no rows in the old table.
    let now = TraceRecord {
        id: "new-1".into(),
        spans: old.spans.clone(),
        ..old.clone()
    };
    store
        .insert_traces(std::slice::from_ref(&now))
        .await
        .unwrap();
    assert_eq!(store.get_trace("new-1").await.unwrap(), Some(now));
    let mut rows = conn
        .query(
            "SELECT COUNT(*) FROM pipeline_spans WHERE trace_id = 'new-1'",
            (),
        )
        .await
        .unwrap();
    let n: i64 = rows.next().await.unwrap().unwrap().get(0).unwrap();
    assert_eq!(n, 0);
}

#[tokio::test]
async fn a_batch_retried_under_its_id_is_written_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let rows: Vec<WindowRow> = (0..10)
        .map(|i| row("shop.sales", Kind::Counter, &[], i * 10_000, &[1.0]))
        .collect();
    assert_eq!(
        store.create_batch_once("b-1", &rows).await.unwrap(),
        BatchWrite::Written(10)
    );
    // The same rows again under the same id (as after a lost answer): found written.
    assert_eq!(
        store.create_batch_once("b-1", &rows).await.unwrap(),
        BatchWrite::AlreadyWritten
    );
    assert!(store.batch_written("b-1").await.unwrap());
    assert!(!store.batch_written("b-2").await.unwrap());
    assert_eq!(
        store.create_batch_once("b-2", &rows).await.unwrap(),
        BatchWrite::Written(10)
    );
    assert_eq!(store.count_rows().await.unwrap(), 20);
}

// Reads hosts and clients ask for are bounded: one running past the read timeout is
// interrupted with a typed error (not left holding a thread), and with one read allowed at
// once, many at once all take their turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_stopped_past_their_timeout_and_take_turns() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(open(&dir).await);
    for chunk in 0..12 {
        let rows: Vec<WindowRow> = (0..5_000)
            .map(|i| {
                let n = chunk * 5_000 + i;
                row(
                    "big.h",
                    Kind::Histogram,
                    &[("k", &format!("v{}", n % 50))],
                    n * 10,
                    &[n as f64, 1.0, 2.0],
                )
            })
            .collect();
        store.create_batch(&rows).await.unwrap();
    }
    let all = find("big.h", 0, i64::MAX);
    assert_eq!(store.find_metrics(&all).await.unwrap().len(), 60_000);
    // Reading back 60,000 rows with their sketches takes far more than 1 ms on any machine.
    store.set_read_limits(1, std::time::Duration::from_millis(1));
    match store.find_metrics(&all).await {
        Err(e @ StoreError::ReadTimeout { after_ms: 1 }) => {
            assert!(e.to_string().contains("stopped"), "{e}")
        }
        other => panic!("{:?}", other.map(|r| r.len())),
    }
    let q = AggregateQuery {
        find: find("big.h", 0, 600_000),
        step_ms: 1_000,
        agg: Agg::P99,
        group_by: None,
    };
    assert!(matches!(
        store.aggregate(&q).await,
        Err(StoreError::ReadTimeout { .. })
    ));
    // A caller's deadline comes first when it is nearer than the read timeout: a read runs on
    // its caller's thread, where a timeout around the caller (an HTTP request's) cannot stop it.
    store.set_read_limits(1, std::time::Duration::from_secs(3_600));
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(1);
    match luametrics_store::with_deadline(deadline, store.find_metrics(&all)).await {
        Err(StoreError::ReadTimeout { after_ms: 1 }) => {}
        other => panic!("{:?}", other.map(|r| r.len())),
    }
    // One at a time, 20 at once: every one is served, and a caller that stops waiting
    // gives its turn back.
    store.set_read_limits(1, std::time::Duration::from_secs(60));
    let few = find("big.h", 0, 1_000);
    let waiting = {
        let store = store.clone();
        let few = few.clone();
        tokio::spawn(async move { store.find_metrics(&few).await })
    };
    waiting.abort();
    let reads: Vec<_> = (0..20)
        .map(|_| {
            let (store, few) = (store.clone(), few.clone());
            tokio::spawn(async move { store.find_metrics(&few).await.map(|r| r.len()) })
        })
        .collect();
    for r in reads {
        assert_eq!(r.await.unwrap().unwrap(), 100);
    }
    // Ten of one tenant's long reads queued behind its one place are all served (that
    // another tenant's read passes them is tested exactly by the store's unit tests).
    store.set_read_limits(2, std::time::Duration::from_secs(60));
    let heavy = FindQuery {
        tenant: Some("acme".into()),
        ..find("big.h", 0, 200_000)
    };
    let long: Vec<_> = (0..10)
        .map(|_| {
            let (store, heavy) = (store.clone(), heavy.clone());
            tokio::spawn(async move { store.find_metrics(&heavy).await.unwrap().len() })
        })
        .collect();
    let other = FindQuery {
        tenant: Some("globex".into()),
        ..few.clone()
    };
    assert!(store.find_metrics(&other).await.unwrap().is_empty());
    for r in long {
        assert_eq!(r.await.unwrap(), 20_000);
    }
    // A tenant's reads wait in a bounded line (tested exactly by the store's unit tests):
    // asked for 60 long reads at once, each is either served in full or refused at once as
    // busy past its place and 32 waiting, and at least that many are served. How many are
    // refused depends on how fast the machine answers while they are asked for.
    let many: Vec<_> = (0..60)
        .map(|_| {
            let (store, heavy) = (store.clone(), heavy.clone());
            tokio::spawn(async move { store.find_metrics(&heavy).await.map(|r| r.len()) })
        })
        .collect();
    let mut served = 0;
    for r in many {
        match r.await.unwrap() {
            Ok(n) => {
                assert_eq!(n, 20_000);
                served += 1;
            }
            Err(StoreError::ReadBusy { in_line }) => {
                assert!(in_line > luametrics_store::MAX_TENANT_READS_WAITING);
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(
        served > luametrics_store::MAX_TENANT_READS_WAITING,
        "{served} served"
    );
    // Answered, the line is empty again.
    assert_eq!(store.find_metrics(&heavy).await.unwrap().len(), 20_000);
}

/// Runs SQL straight on the store's file (rows as an older version, or a fault, left them).
async fn raw_sql(dir: &tempfile::TempDir, sql: &str) {
    let db = libsql::Builder::new_local(dir.path().join("m.db"))
        .build()
        .await
        .unwrap();
    db.connect().unwrap().execute_batch(sql).await.unwrap();
}

fn sum_query(from: i64, to: i64, agg: Agg, step_ms: i64) -> AggregateQuery {
    AggregateQuery {
        find: find("poison.g", from, to),
        agg,
        step_ms,
        group_by: None,
    }
}

// A tenant's values overflowing a sum one way in one window and the other way in another used
// to make NaN (stored as NULL: every later flush failed on NOT NULL), infinite sums in rollups
// (NaN again: every retention failed), and SQL sums that read back as corrupt rows.
#[tokio::test]
async fn overflowing_sums_never_stop_a_flush_a_rollup_or_a_query() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let up = row("poison.g", Kind::Gauge, &[], 0, &[1e308, 1e308]);
    let down = row("poison.g", Kind::Gauge, &[], 10_000, &[-1e308, -1e308]);
    assert_eq!((up.summary.sum, down.summary.sum), (f64::MAX, -f64::MAX));
    // Values that escaped the summaries' saturation are still written as numbers.
    let mut nan = row("poison.g", Kind::Gauge, &[], 20_000, &[1.0]);
    nan.summary.sum = f64::NAN;
    let mut inf = row("poison.g", Kind::Gauge, &[], 30_000, &[1.0]);
    inf.summary.sum = f64::INFINITY;
    store.create_batch(&[up, down, nan, inf]).await.unwrap();
    let sums: Vec<f64> = store
        .find_metrics(&find("poison.g", 0, 40_000))
        .await
        .unwrap()
        .iter()
        .map(|r| r.summary.sum)
        .collect();
    assert!(sums.iter().all(|s| s.is_finite()), "{sums:?}");

    // Rows an older version wrote with infinite sums of both signs.
    raw_sql(
        &dir,
        "UPDATE metrics SET sum = 9e999 WHERE timestamp = 0;
         UPDATE metrics SET sum = -9e999 WHERE timestamp = 10000;",
    )
    .await;
    for (agg, step) in [
        (Agg::Sum, 60_000),
        (Agg::Avg, 60_000),
        (Agg::Max, 60_000),
        (Agg::Count, 60_000),
        // A rate over less than a second multiplies a saturated sum (adversary round 6).
        (Agg::Rate, 500),
    ] {
        let (series, _) = store
            .aggregate(&sum_query(0, 40_000, agg, step))
            .await
            .unwrap();
        assert!(
            series
                .iter()
                .flat_map(|s| &s.points)
                .all(|p| p.1.is_finite()),
            "{agg:?}: {series:?}"
        );
    }
    let report = store
        .retention(&Retention::default(), 86_400_000)
        .await
        .unwrap();
    assert_eq!(report.rollup_error, None);
    assert_eq!(report.rollup.raw_rows, 4);
    // Hourly rollups now hold the folded rows; their sums are numbers.
    let (series, tier) = store
        .aggregate(&sum_query(0, HOUR, Agg::Sum, HOUR))
        .await
        .unwrap();
    assert_eq!(tier, Tier::Hour);
    let points: Vec<f64> = series.iter().flat_map(|s| &s.points).map(|p| p.1).collect();
    assert_eq!(points.len(), 1);
    assert!(points[0].is_finite(), "{points:?}");
}

// A rollup that cannot finish (a damaged row) must not stop retention: old traces and rollups
// still go, raw rows only up to the watermark (so nothing unfolded is deleted), and the report
// says why the rollup failed.
#[tokio::test]
async fn retention_goes_on_without_a_failed_rollup_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let now = 1_800_000_000_000i64;
    let old = now - 40 * DAY;
    store
        .create_batch(&[row("a.b", Kind::Histogram, &[], old, &[1.0])])
        .await
        .unwrap();
    store.rollup().await.unwrap();
    // A newer raw row whose sketch is damaged: the rollup cannot fold it.
    store
        .create_batch(&[row("a.b", Kind::Histogram, &[], old + HOUR, &[2.0])])
        .await
        .unwrap();
    raw_sql(
        &dir,
        &format!(
            "UPDATE metrics SET sketch = x'ff00' WHERE timestamp = {}",
            old + HOUR
        ),
    )
    .await;
    let trace = trace("t-old", now - 8 * DAY);
    store.insert_traces(&[trace]).await.unwrap();
    let report = store.retention(&Retention::default(), now).await.unwrap();
    let why = report.rollup_error.expect("the rollup failed");
    assert!(why.contains("corrupt"), "{why}");
    assert_eq!(report.traces_deleted, 1);
    // The folded row went; the unfolded one stays for a rollup that can read it.
    assert_eq!(report.raw_deleted, 1);
    assert_eq!(store.count_rows().await.unwrap(), 1);
}

// Adversary round 13: listing a tenant's traces walked every tenant's (no index had the
// tenant), and a status no trace has walked them all to find nothing: 3 million traces of
// one tenant made another's list take seconds and told it how many the others had.
#[tokio::test]
async fn a_tenants_trace_list_reads_its_own_traces_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let mut traces: Vec<TraceRecord> = (0..300)
        .map(|i| TraceRecord {
            tenant: if i % 3 == 0 { "small" } else { "big" }.into(),
            ..trace(&format!("t{i}"), 1_700_000_000_000 + i)
        })
        .collect();
    traces[0].status = "error".into();
    store.insert_traces(&traces).await.unwrap();
    let small = store
        .list_traces(1_000, None, None, Some("small"))
        .await
        .unwrap();
    assert_eq!(small.len(), 100);
    assert!(small.iter().all(|t| t.tenant == "small"));
    let errors = store
        .list_traces(10, Some("error"), None, Some("small"))
        .await
        .unwrap();
    assert_eq!(errors.len(), 1);
    match store
        .list_traces(10, Some("none"), None, Some("small"))
        .await
    {
        Err(StoreError::InvalidQuery(m)) => assert!(m.contains("none"), "{m}"),
        other => panic!("{:?}", other.map(|t| t.len())),
    }
    // The plan of a tenant's list goes through the tenant's index.
    let db = libsql::Builder::new_local(dir.path().join("m.db"))
        .build()
        .await
        .unwrap();
    let conn = db.connect().unwrap();
    let mut rows = conn
        .query(
            "EXPLAIN QUERY PLAN SELECT id FROM pipeline_traces WHERE 1 = 1 AND tenant_id = ?1
              ORDER BY started_at DESC, id DESC LIMIT ?2",
            libsql::params!["small", 50],
        )
        .await
        .unwrap();
    let mut plan = String::new();
    while let Some(r) = rows.next().await.unwrap() {
        plan.push_str(&r.get::<String>(3).unwrap());
        plan.push('\n');
    }
    assert!(plan.contains("idx_traces_tenant"), "{plan}");
}
