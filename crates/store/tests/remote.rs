//! The store against a real libSQL server (`sqld`): optional tokens, refused tokens named at
//! open, one-round-trip writes that read back exactly, and a fleet of stores migrating and
//! rolling up one database at once without counting a row twice.

#[path = "../../../tests/common/sqld.rs"]
mod sqld;

use luametrics_model::{Kind, MetricType};
use luametrics_sketch::Summary;
use luametrics_store::*;
use sqld::Sqld;

const HOUR: i64 = 3_600_000;

fn row(tenant: &str, plan: &str, ts: i64, value: f64) -> WindowRow {
    let mut summary = Summary::new(true);
    summary.observe(value, ts);
    WindowRow {
        name: "shop.sales".into(),
        tenant: Some(tenant.into()),
        metric_type: MetricType::User,
        kind: Kind::Histogram,
        tags: [("plan".to_string(), plan.to_string())]
            .into_iter()
            .collect(),
        source: Some("service:api".into()),
        timestamp_ms: ts,
        window_ms: 10_000,
        summary,
    }
}

async fn remote(url: &str, token: Option<&str>) -> Result<Store, StoreError> {
    Store::open(Location::parse(url, token)?).await
}

/// One integer from SQL run straight on the server (not through the store under test).
async fn sql_i64(url: &str, token: Option<&str>, sql: &str) -> i64 {
    match sqld::query_column(url, token, sql).await.first() {
        Some(libsql::Value::Integer(n)) => *n,
        other => panic!("{sql} returned {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_auth_needs_no_token_and_batches_read_back_exactly() {
    if !Sqld::available() {
        return;
    }
    let server = Sqld::start();
    let store = remote(&server.url, None).await.unwrap();
    store.set_instance("node-a");
    let rows: Vec<WindowRow> = (0..2_000)
        .map(|i| {
            row(
                &format!("t{}", i % 5),
                &format!("it's \u{20ac}{}", i % 7),
                i * 1_000,
                i as f64,
            )
        })
        .collect();
    assert_eq!(store.create_batch(&rows).await.unwrap(), 2_000);
    assert_eq!(store.count_rows().await.unwrap(), 2_000);
    let by_tenant = store.user_samples_by_tenant().await.unwrap();
    assert_eq!(by_tenant.values().sum::<u64>(), 2_000);
    assert_eq!(by_tenant.get("t3"), Some(&400));
    let sum = sql_i64(
        &server.url,
        None,
        "SELECT CAST(SUM(sum) AS INTEGER) FROM metrics",
    )
    .await;
    assert_eq!(sum, (0..2_000).sum::<i64>());
    let mine = sql_i64(
        &server.url,
        None,
        "SELECT COUNT(*) FROM metrics WHERE instance = 'node-a'",
    )
    .await;
    assert_eq!(mine, 2_000);
    let found = store
        .find_metrics(&FindQuery {
            name: "shop.sales".into(),
            from_ms: 0,
            to_ms: 2_000_000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(found.len(), 2_000);
    assert!(found
        .iter()
        .any(|r| r.tags.get("plan").map(String::as_str) == Some("it's \u{20ac}3")));

    let traces: Vec<TraceRecord> = (0..300)
        .map(|i| TraceRecord {
            id: format!("tr-{i}"),
            pipeline_id: "login".into(),
            trigger_event: "user.login".into(),
            tenant: "t1".into(),
            status: "ok".into(),
            decision: "allow".into(),
            reason: None,
            started_at_ms: i,
            total_ms: 1.5,
            wait_ms: 0.1,
            script_ms: 1.0,
            helpers_ms: 0.2,
            overhead_ms: 0.2,
            error: Some("quote ' and NUL \0 kept".into()),
            warnings: vec!["w".into()],
            spans: (0..3)
                .map(|n| SpanRecord {
                    node_id: format!("n{n}"),
                    script_id: "s".into(),
                    status: "ok".into(),
                    started_at_ms: i,
                    total_ms: 0.5,
                    wait_ms: 0.0,
                    script_ms: 0.3,
                    helpers_ms: 0.1,
                    overhead_ms: 0.1,
                    error: None,
                })
                .collect(),
        })
        .collect();
    store.insert_traces(&traces).await.unwrap();
    // A trace batch retried after its answer was lost is found written, not doubled.
    store.insert_traces(&traces).await.unwrap();
    assert_eq!(store.count_traces().await.unwrap(), 300);
    assert_eq!(
        sql_i64(
            &server.url,
            None,
            "SELECT SUM(json_array_length(spans)) FROM pipeline_traces"
        )
        .await,
        900
    );
    // Same for a flush batch under its id.
    let again: Vec<WindowRow> = rows[..10].to_vec();
    assert_eq!(
        store.create_batch_once("flush-1", &again).await.unwrap(),
        BatchWrite::Written(10)
    );
    assert_eq!(
        store.create_batch_once("flush-1", &again).await.unwrap(),
        BatchWrite::AlreadyWritten
    );
    assert_eq!(store.count_rows().await.unwrap(), 2_010);
    assert_eq!(store.trace_spans("tr-7").await.unwrap().len(), 3);
    let back = store.get_trace("tr-7").await.unwrap().unwrap();
    assert_eq!(back.warnings, vec!["w".to_string()]);
    // Values at the edges of their types read back as they were written.
    let mut edge = traces[0].clone();
    edge.id = "tr-edge".into();
    edge.reason = Some("it's \u{20ac}, \"quoted\", a\0NUL".into());
    edge.error = None;
    edge.started_at_ms = i64::MIN;
    edge.total_ms = f64::MAX;
    edge.wait_ms = f64::MIN_POSITIVE;
    edge.script_ms = -0.0;
    edge.helpers_ms = 123.456e-7;
    edge.spans.clear();
    store
        .insert_traces(std::slice::from_ref(&edge))
        .await
        .unwrap();
    let back = store.get_trace("tr-edge").await.unwrap().unwrap();
    assert_eq!(back.started_at_ms, i64::MIN);
    assert_eq!(back.total_ms, f64::MAX);
    assert_eq!(back.wait_ms, f64::MIN_POSITIVE);
    assert_eq!(back.script_ms, 0.0);
    assert_eq!(back.helpers_ms, 123.456e-7);
    let nul_len = sql_i64(
        &server.url,
        None,
        "SELECT length(CAST(reason AS BLOB)) FROM pipeline_traces WHERE id = 'tr-edge'",
    )
    .await;
    assert_eq!(nul_len, edge.reason.as_ref().unwrap().len() as i64);

    let report = store.rollup().await.unwrap();
    assert_eq!(report.raw_rows, 2_010);
    let hourly = sql_i64(
        &server.url,
        None,
        "SELECT SUM(samples) FROM metric_rollups WHERE resolution = 'hour' AND scope = 'series'",
    )
    .await;
    assert_eq!(hourly, 2_010);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_auth_refuses_missing_wrong_expired_and_read_only_tokens_by_name() {
    if !Sqld::available() {
        return;
    }
    let server = Sqld::start_with_auth();
    let other = Sqld::start_with_auth();
    let expired = server.token_with("rw", Some(1_000_000));
    let cases = [
        ("no token", None),
        ("a token of another server", Some(other.token())),
        ("an expired token", Some(expired)),
    ];
    for (what, token) in cases {
        let e = remote(&server.url, token.as_deref()).await.unwrap_err();
        let text = e.to_string();
        assert!(text.contains(&server.url), "{what}: {text}");
        assert!(text.contains("auth token"), "{what}: {text}");
    }
    // A read-only token cannot migrate: refused at open, with the reason.
    let e = remote(&server.url, Some(&server.token_with("ro", None)))
        .await
        .unwrap_err();
    assert!(e.to_string().contains(&server.url), "{e}");
    assert!(e.to_string().contains("read-write"), "{e}");
    let store = remote(&server.url, Some(&server.token())).await.unwrap();
    assert_eq!(
        store.create_batch(&[row("t", "p", 0, 1.0)]).await.unwrap(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_that_start_together_migrate_once_and_roll_up_without_double_counting() {
    if !Sqld::available() {
        return;
    }
    let server = Sqld::start();
    let url = server.url.clone();
    // Four instances open a fresh database at once: all start, each migration applied once.
    let opened = futures_join_all((0..4).map(|_| remote(&url, None))).await;
    let stores: Vec<Store> = opened.into_iter().map(|r| r.unwrap()).collect();
    for (i, s) in stores.iter().enumerate() {
        s.set_instance(format!("node-{i}"));
    }
    // (Each store opened, so none of them met a half-applied or doubly applied migration.)
    let latest = sql_i64(&url, None, "SELECT MAX(version) FROM schema_migrations").await;
    let applied = sql_i64(&url, None, "SELECT COUNT(*) FROM schema_migrations").await;
    assert_eq!((applied, latest), (7, 7));

    // Every instance writes and rolls up at once, several rounds; late rows land between.
    let mut written = 0i64;
    for round in 0..4 {
        let tasks = stores.iter().enumerate().map(|(i, s)| {
            let rows: Vec<WindowRow> = (0..300)
                .map(|j| row(&format!("t{i}"), "pro", round * HOUR + j * 7_000, 1.0))
                .collect();
            async move {
                s.create_batch(&rows).await.unwrap();
                s.rollup().await.unwrap()
            }
        });
        futures_join_all(tasks).await;
        written += 4 * 300;
    }
    futures_join_all(stores.iter().map(|s| s.rollup())).await;
    let raw = sql_i64(&url, None, "SELECT SUM(samples) FROM metrics").await;
    assert_eq!(raw, written);
    for res in ["hour", "day"] {
        for scope in ["series", "tenant", "name"] {
            let rolled = sql_i64(
                &url,
                None,
                &format!("SELECT SUM(samples) FROM metric_rollups WHERE resolution = '{res}' AND scope = '{scope}'"),
            )
            .await;
            assert_eq!(rolled, written, "{res}/{scope}");
        }
    }
    let writers = sql_i64(&url, None, "SELECT COUNT(DISTINCT instance) FROM metrics").await;
    assert_eq!(writers, 4);
}

/// Runs futures concurrently on this task (no extra dependency for `join_all`).
async fn futures_join_all<F: std::future::Future>(
    futs: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let handles: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = handles.iter().map(|_| None).collect();
    let mut handles: Vec<_> = handles.into_iter().map(Some).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (slot, h) in out.iter_mut().zip(handles.iter_mut()) {
            if let Some(f) = h {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        *slot = Some(v);
                        *h = None;
                    }
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|v| v.unwrap()).collect()
}
