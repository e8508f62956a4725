//! The recording service against real libSQL files: accounting, windows, quotas, faults.

use luametrics_model::{Kind, Limits, MetricType, RejectReason, TagPolicy, Tags};
use luametrics_recorder::*;
use luametrics_sink::{BatchPoint, MetricsSink};
use luametrics_store::{FindQuery, Location, Store};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

struct Harness {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    store: Arc<Store>,
    service: MetricsService,
    clock: Arc<AtomicI64>,
}

async fn harness(settings: RecorderSettings, limits: Limits) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.db");
    let store = Arc::new(
        Store::open_with(Location::File(path.clone()), Duration::from_millis(50))
            .await
            .unwrap(),
    );
    let clock = Arc::new(AtomicI64::new(1_700_000_000_000));
    let c = clock.clone();
    let config = RecorderConfig {
        settings,
        policy: TagPolicy::new(
            luametrics_model::DEFAULT_DENIED_KEYS
                .iter()
                .map(|s| s.to_string()),
            limits,
        ),
        clock: Arc::new(move || c.load(Ordering::SeqCst)),
        ..RecorderConfig::default()
    };
    let service = MetricsService::start(store.clone(), config);
    Harness {
        _dir: dir,
        path,
        store,
        service,
        clock,
    }
}

/// A batch point of `h`'s policy: `name` with one tag `s`, one value (at time 0, as an engine
/// hands them over).
fn batch_point(h: &Harness, name: &str, kind: Kind, s: &str, value: f64) -> BatchPoint {
    BatchPoint {
        series: h
            .service
            .config()
            .policy
            .check_series(name, kind, vec![("s".to_string(), s.to_string())])
            .unwrap(),
        summary: {
            let mut summary = luametrics_sketch::Summary::new(false);
            summary.observe(value, 0);
            summary
        },
    }
}

fn big_limits() -> Limits {
    Limits {
        points_per_minute: 100_000_000,
        burst: 10_000_000,
        ..Limits::default()
    }
}

fn tags(pairs: &[(&str, &str)]) -> Tags {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Sum of stored `samples` and `sum` for a user metric, per tenant.
async fn stored(store: &Store, name: &str, tenant: Option<&str>) -> (u64, f64) {
    let rows = store
        .find_metrics(&FindQuery {
            name: name.into(),
            from_ms: i64::MIN,
            to_ms: i64::MAX,
            tenant: tenant.map(str::to_string),
            ..Default::default()
        })
        .await
        .unwrap();
    (
        rows.iter().map(|r| r.summary.samples).sum(),
        rows.iter().map(|r| r.summary.sum).sum(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounting_is_exact_across_tasks_tenants_and_shutdown() {
    let h = harness(RecorderSettings::default(), big_limits()).await;
    let tenants = ["acme", "globex", "initech"];
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let svc = h.service.clone();
        tasks.push(tokio::spawn(async move {
            let mut accepted = [0f64; 3];
            let clock_step = 997;
            for i in 0..100_000u64 {
                let ti = ((i + t) % 3) as usize;
                let plan = ["free", "pro", "enterprise"][(i % 3) as usize];
                // Every 500th point carries an e-mail address and must be rejected.
                let value = if i % 500 == 0 {
                    "bob@example.com"
                } else {
                    plan
                };
                let v = (i % 7) as f64;
                let r = svc.record_user_metric(
                    tenants[ti],
                    "invoice.processed_count",
                    Kind::Counter,
                    v,
                    &tags(&[("plan", value)]),
                );
                if r.is_ok() {
                    accepted[ti] += v;
                } else {
                    assert_eq!(r, Err(Rejected::Invalid(RejectReason::PiiTag)));
                }
                if i % clock_step == 0 {
                    tokio::task::yield_now().await;
                }
            }
            accepted
        }));
    }
    let mut want = [0f64; 3];
    for task in tasks {
        let a = task.await.unwrap();
        for i in 0..3 {
            want[i] += a[i];
        }
    }
    // Windows move on while the flusher runs in the background.
    h.clock.fetch_add(25_000, Ordering::SeqCst);
    h.service.shutdown().await.unwrap();
    let acc = h.service.accounting();
    assert_eq!(acc.user.offered, 800_000);
    assert_eq!(acc.user.rejected.get("pii_tag"), Some(&1_600));
    assert!(acc.user.balances(), "{acc:?}");
    let mut samples = 0;
    for (i, t) in tenants.iter().enumerate() {
        let (n, sum) = stored(&h.store, "invoice.processed_count", Some(t)).await;
        assert_eq!(sum, want[i], "tenant {t}");
        samples += n;
    }
    assert_eq!(samples, acc.user.accepted);
    // The service's own accounting landed as system metrics too.
    let (_, offered) = stored(&h.store, "luametrics.points.offered.count", None).await;
    assert_eq!(offered, 800_000.0);
}

#[tokio::test]
async fn a_million_points_over_100_series_in_one_window_write_at_most_100_rows() {
    let h = harness(
        RecorderSettings {
            window_ms: 3_600_000,
            ..Default::default()
        },
        Limits {
            points_per_minute: u32::MAX,
            burst: u32::MAX,
            ..Limits::default()
        },
    )
    .await;
    let series: Vec<_> = (0..100)
        .map(|i| {
            h.service
                .config()
                .policy
                .check_series(
                    "shop.orders_count",
                    Kind::Counter,
                    vec![("shop".to_string(), format!("s{i}"))],
                )
                .unwrap()
        })
        .collect();
    for i in 0..1_000_000usize {
        h.service.ingest_user_batch(
            "acme",
            vec![BatchPoint {
                series: series[i % 100].clone(),
                summary: {
                    let mut s = luametrics_sketch::Summary::new(false);
                    s.observe(1.0, 0);
                    s
                },
            }],
        );
    }
    h.service.flush().await.unwrap();
    let rows = h
        .store
        .find_metrics(&FindQuery {
            name: "shop.orders_count".into(),
            from_ms: i64::MIN,
            to_ms: i64::MAX,
            metric_type: Some(MetricType::User),
            ..Default::default()
        })
        .await
        .unwrap();
    // One row per series per window: exactly the 100 series, however many points.
    assert_eq!(rows.len(), 100, "{} rows", rows.len());
    assert_eq!(rows.iter().map(|r| r.summary.sum).sum::<f64>(), 1_000_000.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_database_loses_nothing_once_it_is_writable_again() {
    let h = harness(RecorderSettings::default(), big_limits()).await;
    for i in 0..1_000 {
        h.service
            .record_user_metric(
                "acme",
                "shop.sales",
                Kind::Histogram,
                i as f64,
                &tags(&[("plan", "pro")]),
            )
            .unwrap();
    }
    // Another connection holds a write transaction.
    let other = libsql::Builder::new_local(&h.path).build().await.unwrap();
    let conn = other.connect().unwrap();
    conn.execute("BEGIN IMMEDIATE", ()).await.unwrap();
    conn.execute("INSERT INTO rollup_state (key, value) VALUES ('x', 1)", ())
        .await
        .unwrap();
    let err = h.service.flush().await.unwrap_err();
    assert!(matches!(err, RecorderError::Flush { .. }), "{err}");
    assert!(
        err.to_string().contains("locked") || err.to_string().contains("busy"),
        "{err}"
    );
    // Points keep arriving while the database is locked.
    for i in 1_000..2_000 {
        h.service
            .record_user_metric(
                "acme",
                "shop.sales",
                Kind::Histogram,
                i as f64,
                &tags(&[("plan", "pro")]),
            )
            .unwrap();
    }
    conn.execute("COMMIT", ()).await.unwrap();
    h.service.flush().await.unwrap();
    let (n, sum) = stored(&h.store, "shop.sales", Some("acme")).await;
    assert_eq!(n, 2_000);
    assert_eq!(sum, (0..2_000).sum::<i32>() as f64);
    assert!(h.service.accounting().user.balances());
}

#[tokio::test]
async fn a_read_only_database_loses_nothing_and_shutdown_retries() {
    let h = harness(
        RecorderSettings {
            shutdown_timeout_ms: 300,
            retry_initial_ms: 10,
            ..Default::default()
        },
        big_limits(),
    )
    .await;
    h.store.set_query_only(true).await.unwrap();
    for i in 0..100 {
        h.service
            .record_user_metric("acme", "shop.sales", Kind::Gauge, i as f64, &Tags::new())
            .unwrap();
    }
    let err = h.service.flush().await.unwrap_err();
    assert!(
        err.to_string().contains("readonly") || err.to_string().contains("read"),
        "{err}"
    );
    // Shutdown against a database that stays read-only gives up and says what is unwritten.
    let err = h.service.shutdown().await.unwrap_err();
    match &err {
        RecorderError::Unflushed { rows, points, .. } => {
            assert!(*rows >= 1);
            assert!(*points >= 100);
        }
        other => panic!("unexpected {other}"),
    }
    // After shutdown, points are dropped and counted, never silently lost.
    assert_eq!(
        h.service
            .record_user_metric("acme", "shop.sales", Kind::Gauge, 1.0, &Tags::new()),
        Err(Rejected::Dropped(DropReason::ShuttingDown))
    );
    // What was unwritten at the deadline is counted as lost (reason shutdown) and let go:
    // a later flush cannot store it as well, so accepted = stored + lost exactly.
    let acc = h.service.accounting();
    assert_eq!(acc.user.accepted, 100);
    assert_eq!(acc.user.lost.get("shutdown"), Some(&100));
    assert_eq!(acc.user.dropped.get("shutting_down"), Some(&1));
    assert!(acc.user.balances());
    h.store.set_query_only(false).await.unwrap();
    h.service.flush().await.unwrap();
    let (n, _) = stored(&h.store, "shop.sales", Some("acme")).await;
    assert_eq!(n, 0);
}

#[tokio::test]
async fn past_the_memory_bound_points_are_dropped_and_counted() {
    let h = harness(
        RecorderSettings {
            max_memory_bytes: 64 * 1024,
            ..Default::default()
        },
        Limits {
            max_series_per_name: 1_000_000,
            max_series_per_tenant: 1_000_000,
            ..big_limits()
        },
    )
    .await;
    let mut accepted_sum = 0.0;
    for i in 0..5_000 {
        let shop = format!("shop{i}");
        if h.service
            .record_user_metric(
                "acme",
                "shop.orders_count",
                Kind::Counter,
                1.0,
                &tags(&[("shop", &shop)]),
            )
            .is_ok()
        {
            accepted_sum += 1.0;
        }
    }
    assert!(h.service.memory_used() <= 64 * 1024);
    let acc = h.service.accounting();
    let dropped = *acc.user.dropped.get("memory_bound").unwrap();
    assert!(dropped > 0 && dropped < 5_000, "{dropped}");
    assert!(acc.user.balances());
    // A series the bound refused is not held either: it neither counts against the tenant's
    // series limit nor stays in the registry until it is idle.
    assert_eq!(h.service.tenant_series("acme") as f64, accepted_sum);
    assert_eq!(h.service.series_tracked() as f64, accepted_sum);
    // The first flush writes the rows; series keys stay one more flush (charged) so their next
    // window reuses them; the second flush lets the accumulators go.
    h.service.flush().await.unwrap();
    h.service.flush().await.unwrap();
    // The `/metrics` exposition keeps each written series (its key and cumulative value) until
    // the series is idle, charged against the bound (adversary round 6: uncharged, 10,000
    // tenants' system series took 120 MB past a 64 MiB bound); each key holds at least a
    // B-tree node of tags (over 500 bytes), charged once for all its holders.
    let exposed = h.service.exposed_series();
    assert!(exposed > 0);
    assert!(
        h.service.memory_used() >= exposed * 500,
        "{} for {exposed} series",
        h.service.memory_used()
    );
    // Idle series leave the exposition and give their memory back.
    let before = h.service.memory_used();
    h.clock.fetch_add(
        RecorderSettings::default().idle_eviction_ms as i64 + 1,
        Ordering::SeqCst,
    );
    h.service.evict_idle();
    assert_eq!(h.service.exposed_series(), 0);
    assert!(
        h.service.memory_used() < before / 4,
        "{} of {before}",
        h.service.memory_used()
    );
    let (_, sum) = stored(&h.store, "shop.orders_count", Some("acme")).await;
    assert_eq!(sum, accepted_sum);
}

#[tokio::test]
async fn series_limits_fold_into_the_overflow_series_and_totals_stay_exact() {
    let h = harness(
        RecorderSettings::default(),
        Limits {
            max_series_per_name: 3,
            max_series_per_tenant: 5,
            ..big_limits()
        },
    )
    .await;
    let mut overflowed = 0;
    for i in 0..10 {
        let shop = format!("s{i}");
        let r = h
            .service
            .record_user_metric(
                "acme",
                "a.orders_count",
                Kind::Counter,
                1.0,
                &tags(&[("shop", &shop)]),
            )
            .unwrap();
        overflowed += (r == Accepted::Overflow) as i32;
    }
    assert_eq!(overflowed, 7);
    // The per-tenant limit (5) applies across names: 3 used, 2 left for another name.
    for i in 0..4 {
        let shop = format!("s{i}");
        h.service
            .record_user_metric(
                "acme",
                "b.orders_count",
                Kind::Counter,
                1.0,
                &tags(&[("shop", &shop)]),
            )
            .unwrap();
    }
    assert_eq!(h.service.tenant_series("acme"), 5);
    // Another tenant has its own budget.
    assert_eq!(
        h.service.record_user_metric(
            "globex",
            "a.orders_count",
            Kind::Counter,
            1.0,
            &tags(&[("shop", "s9")])
        ),
        Ok(Accepted::Stored)
    );
    h.service.flush().await.unwrap();
    let rows = h
        .store
        .find_metrics(&FindQuery {
            name: "a.orders_count".into(),
            from_ms: i64::MIN,
            to_ms: i64::MAX,
            tenant: Some("acme".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let overflow: f64 = rows
        .iter()
        .filter(|r| r.tags.get("overflow").map(String::as_str) == Some("true"))
        .map(|r| r.summary.sum)
        .sum();
    assert_eq!(overflow, 7.0);
    assert_eq!(rows.iter().map(|r| r.summary.sum).sum::<f64>(), 10.0);
    let (_, b) = stored(&h.store, "b.orders_count", Some("acme")).await;
    assert_eq!(b, 4.0);
}

#[tokio::test]
async fn the_tenant_rate_limit_rejects_past_the_burst() {
    let h = harness(
        RecorderSettings::default(),
        Limits {
            points_per_minute: 1,
            burst: 10,
            ..Limits::default()
        },
    )
    .await;
    let results: Vec<_> = (0..25)
        .map(|_| {
            h.service
                .record_user_metric("acme", "a.b", Kind::Gauge, 1.0, &Tags::new())
        })
        .collect();
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 10);
    assert!(results[10..]
        .iter()
        .all(|r| *r == Err(Rejected::Invalid(RejectReason::RateLimited))));
    // Another tenant is not affected.
    assert!(h
        .service
        .record_user_metric("globex", "a.b", Kind::Gauge, 1.0, &Tags::new())
        .is_ok());
    // Leases: unused points come back for the next execution of the same tenant.
    assert_eq!(h.service.reserve_points("initech", 8), 8);
    h.service.release_points("initech", 5);
    assert_eq!(h.service.reserve_points("initech", 7), 7);
    assert_eq!(h.service.reserve_points("initech", 1), 0);
    assert_eq!(
        h.service.accounting().user.rejected.get("rate_limited"),
        Some(&15)
    );
}

// The batch path cannot skip the rate limit: points no lease covers are charged to the quota
// when they arrive, and refused past it; a caller cannot give back what it never leased.
#[tokio::test]
async fn a_batch_is_covered_by_leases_or_by_the_quota_and_never_past_it() {
    let h = harness(
        RecorderSettings::default(),
        Limits {
            points_per_minute: 1,
            burst: 10,
            ..Limits::default()
        },
    )
    .await;
    let points = |n: usize| -> Vec<BatchPoint> {
        (0..n)
            .map(|i| BatchPoint {
                series: h
                    .service
                    .config()
                    .policy
                    .check_series(
                        "shop.orders_count",
                        Kind::Counter,
                        vec![("shop".to_string(), format!("s{i}"))],
                    )
                    .unwrap(),
                summary: {
                    let mut s = luametrics_sketch::Summary::new(false);
                    s.observe(1.0, 0);
                    s
                },
            })
            .collect()
    };
    // Giving back what was never leased mints nothing.
    h.service.release_points("acme", 1_000);
    // No lease: the quota (burst 10) covers 10 of 25 points, the rest is refused.
    let r = h.service.ingest_user_batch("acme", points(25));
    assert_eq!((r.accepted, r.dropped), (10, 15));
    assert_eq!(
        h.service.accounting().user.rejected.get("rate_limited"),
        Some(&15)
    );
    // A lease covers its points without asking the quota again.
    assert_eq!(h.service.reserve_points("globex", 6), 6);
    let r = h.service.ingest_user_batch("globex", points(6));
    assert_eq!((r.accepted, r.dropped), (6, 0));
    // 4 of globex's burst are left: a batch of 5 without a lease gets 4.
    let r = h.service.ingest_user_batch("globex", points(5));
    assert_eq!((r.accepted, r.dropped), (4, 1));
    let acc = h.service.accounting();
    assert_eq!(acc.user.accepted, 20);
    assert!(acc.user.balances());
}

#[tokio::test]
async fn idle_series_are_evicted_and_limiter_state_pruned() {
    let h = harness(
        RecorderSettings {
            idle_eviction_ms: 60_000,
            ..Default::default()
        },
        Limits {
            max_series_per_name: 2,
            ..big_limits()
        },
    )
    .await;
    for s in ["a", "b", "c"] {
        h.service
            .record_user_metric("acme", "x.y", Kind::Gauge, 1.0, &tags(&[("s", s)]))
            .unwrap();
    }
    assert_eq!(h.service.tenant_series("acme"), 2);
    assert_eq!(h.service.series_tracked(), 3); // two series and the overflow series
    h.clock.fetch_add(61_000, Ordering::SeqCst);
    assert_eq!(h.service.evict_idle(), 3);
    assert_eq!(h.service.series_tracked(), 0);
    assert_eq!(h.service.tenant_series("acme"), 0);
    // Room again for new series.
    assert_eq!(
        h.service
            .record_user_metric("acme", "x.y", Kind::Gauge, 1.0, &tags(&[("s", "d")])),
        Ok(Accepted::Stored)
    );
    // Stored history stays.
    h.service.flush().await.unwrap();
    let (n, _) = stored(&h.store, "x.y", Some("acme")).await;
    assert_eq!(n, 4);
}

// Tenants come and go: the bookkeeping of a tenant that holds nothing any more (its point
// ledger, once reported; its metric names) is forgotten, so a process serving an unbounded
// stream of tenants does not grow with them (adversary round 7: ~5.5 KB per tenant ever seen).
#[tokio::test]
async fn tenants_that_left_leave_nothing_behind() {
    let h = harness(
        RecorderSettings {
            idle_eviction_ms: 60_000,
            ..Default::default()
        },
        Limits {
            max_names_per_tenant: 2,
            ..big_limits()
        },
    )
    .await;
    let record = |tenant: &str, name: &str, kind| {
        h.service
            .record_user_metric(tenant, name, kind, 1.0, &tags(&[("s", "a")]))
    };
    for t in 0..200 {
        record(&format!("t{t}"), &format!("m{t}.x"), Kind::Counter).unwrap();
    }
    // One name per kind is held by a tenant that stays.
    record("stays", "shared.h", Kind::Histogram).unwrap();
    record("t0", "other.count", Kind::Counter).unwrap();
    assert_eq!(
        record("t0", "third.count", Kind::Counter),
        Err(Rejected::Invalid(RejectReason::NameLimit))
    );
    assert!(h.service.tenants_tracked() >= 201);
    // Written, reported, then idle past the eviction time: two passes (a ledger counted since
    // the last pass is kept one more).
    h.service.flush().await.unwrap();
    h.service.flush().await.unwrap();
    h.clock.fetch_add(61_000, Ordering::SeqCst);
    record("stays", "shared.h", Kind::Histogram).unwrap();
    h.service.flush().await.unwrap();
    h.service.evict_idle();
    h.service.flush().await.unwrap();
    h.service.evict_idle();
    assert_eq!(
        h.service.tenants_tracked(),
        1,
        "only the tenant still holding a series"
    );
    assert_eq!(h.service.tenant_points("t0").accepted, 0);
    // A tenant that comes back starts its bound of names again; the names others used are
    // free for it (nobody holds them now), and the stayer's are still the stayer's to print.
    record("t0", "third.count", Kind::Counter).unwrap();
    record("t0", "m1.x", Kind::Gauge).unwrap();
    assert_eq!(
        record("newcomer", "shared.h", Kind::Gauge),
        Ok(Accepted::Stored)
    );
    let exposed_kinds: Vec<Kind> = {
        h.service.flush().await.unwrap();
        h.clock.fetch_add(11_000, Ordering::SeqCst);
        h.service.flush().await.unwrap();
        h.service
            .exposition()
            .into_iter()
            .filter(|s| s.name == "shared.h")
            .map(|s| s.kind)
            .collect()
    };
    assert_eq!(
        exposed_kinds,
        vec![Kind::Histogram],
        "the newcomer's gauge is withheld"
    );
    // Nothing written was lost on the way.
    let (_, sum) = stored(&h.store, "m7.x", Some("t7")).await;
    assert_eq!(sum, 1.0);
}

#[tokio::test]
async fn system_metrics_follow_the_catalog_and_the_metrics_facade_lands_in_the_store() {
    let h = harness(RecorderSettings::default(), big_limits()).await;
    assert_eq!(
        h.service.try_count(
            "auth.login.attempt",
            1.0,
            &[("method", "password"), ("status", "ok")]
        ),
        Ok(Accepted::Stored)
    );
    assert_eq!(
        h.service.try_count(
            "auth.login.attempt",
            1.0,
            &[("method", "password"), ("user_id", "42")]
        ),
        Err(Rejected::Invalid(RejectReason::UndeclaredTag))
    );
    assert_eq!(
        h.service.try_gauge("lua.pool.exhausted", 1.0, &[]),
        Err(Rejected::Invalid(RejectReason::KindMismatch))
    );
    assert_eq!(
        h.service.try_gauge("host.cache.entries", f64::NAN, &[]),
        Err(Rejected::Invalid(RejectReason::InvalidValue))
    );
    assert_eq!(
        h.service
            .try_histogram("host.cache.latency_ms", 1.0, &[("client", "10.1.2.3")]),
        Err(Rejected::Invalid(RejectReason::PiiTag))
    );
    let out = h
        .service
        .measure("host.job.duration_ms", &[("job", "sync")], async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            7
        })
        .await;
    assert_eq!(out, 7);
    let bridge = h.service.metrics_recorder();
    metrics::with_local_recorder(&bridge, || {
        metrics::counter!("auth.login.attempt", "method" => "passkey", "status" => "ok")
            .increment(3);
        metrics::counter!("auth.login.attempt", "country" => "fr").increment(1);
        metrics::gauge!("jwks.active_key.age_ms").set(1_000.0);
        metrics::gauge!("jwks.active_key.age_ms").increment(500.0);
        metrics::histogram!("email.send.duration_ms", "type" => "verify").record(12.5);
    });
    h.service.flush().await.unwrap();
    let (n, sum) = stored(&h.store, "auth.login.attempt", None).await;
    assert_eq!((n, sum), (2, 4.0));
    let age = h
        .store
        .find_metrics(&FindQuery {
            name: "jwks.active_key.age_ms".into(),
            from_ms: i64::MIN,
            to_ms: i64::MAX,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(age[0].value, 1_500.0);
    let (n, _) = stored(&h.store, "host.job.duration_ms", None).await;
    assert_eq!(n, 1);
    let (n, _) = stored(&h.store, "email.send.duration_ms", None).await;
    assert_eq!(n, 1);
    let acc = h.service.accounting();
    assert_eq!(acc.system.rejected.get("undeclared_tag"), Some(&2));
    assert!(acc.system.balances());
}

#[tokio::test]
async fn handles_check_once_never_fail_the_caller_and_count_every_refused_point() {
    let h = harness(RecorderSettings::default(), big_limits()).await;
    let attempts = h.service.counter(
        "auth.login.attempt",
        &[("method", "password"), ("status", "ok")],
    );
    assert_eq!(attempts.series().refused(), None);
    for _ in 0..1_000 {
        attempts.increment(1);
    }
    attempts.add(0.5);
    // The same series through a handle and through the checked call fold together.
    h.service
        .try_count(
            "auth.login.attempt",
            2.0,
            &[("method", "password"), ("status", "ok")],
        )
        .unwrap();
    // Refused when made (a tag the catalog does not declare, the wrong kind, PII, unknown
    // name): never fails the caller, counts each point it is given.
    let undeclared = h
        .service
        .counter("auth.login.attempt", &[("user_id", "42")]);
    assert_eq!(
        undeclared.series().refused(),
        Some(RejectReason::UndeclaredTag)
    );
    let wrong_kind = h.service.gauge("lua.pool.exhausted", &[]);
    assert_eq!(
        wrong_kind.series().refused(),
        Some(RejectReason::KindMismatch)
    );
    let pii = h
        .service
        .histogram("host.cache.latency_ms", &[("client", "10.1.2.3")]);
    assert_eq!(pii.series().refused(), Some(RejectReason::PiiTag));
    for _ in 0..3 {
        undeclared.increment(1);
        wrong_kind.set(1.0);
        pii.record(1.0);
    }
    assert_eq!(
        pii.try_record(4.0),
        Err(Rejected::Invalid(RejectReason::PiiTag))
    );
    // A good handle still checks each value.
    assert_eq!(
        attempts.try_add(-1.0),
        Err(Rejected::Invalid(RejectReason::NegativeCounter))
    );
    let entries = h.service.gauge("host.cache.entries", &[]);
    entries.set(10.0);
    entries.set(f64::INFINITY);
    entries.set(7.0);
    // A host's series of one tenant: the tenant is a column, never a tag (a tag naming
    // another tenant is refused).
    let spoofed = h.service.system_series(
        "host.cache.latency_ms",
        Kind::Histogram,
        tags(&[("tenant", "spoofed")]),
        Some("acme"),
    );
    assert_eq!(spoofed.refused(), Some(RejectReason::ReservedTag));
    let per_tenant = h.service.system_series(
        "host.cache.latency_ms",
        Kind::Histogram,
        tags(&[("tenant", "acme")]),
        Some("acme"),
    );
    per_tenant.record(3.0).unwrap();
    per_tenant.record(5.0).unwrap();
    // A host's time through a handle meets the same bounds as a host's point.
    let now = h.service.now_ms();
    for ts in [-1, now + 10 * 60_000, i64::MAX] {
        assert_eq!(
            per_tenant.record_at(1.0, ts),
            Err(Rejected::Invalid(RejectReason::InvalidTimestamp)),
            "{ts}"
        );
    }
    h.service.flush().await.unwrap();
    let (n, sum) = stored(&h.store, "auth.login.attempt", None).await;
    assert_eq!((n, sum), (1_002, 1_002.5));
    let rows = h
        .store
        .find_metrics(&FindQuery {
            name: "host.cache.entries".into(),
            from_ms: i64::MIN,
            to_ms: i64::MAX,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].value, 7.0);
    let rows = h
        .store
        .find_metrics(&FindQuery {
            name: "host.cache.latency_ms".into(),
            from_ms: i64::MIN,
            to_ms: i64::MAX,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].tenant.as_deref(), Some("acme"));
    assert!(rows[0].tags.is_empty(), "{:?}", rows[0].tags);
    let acc = h.service.accounting();
    assert_eq!(acc.system.rejected.get("undeclared_tag"), Some(&3));
    assert_eq!(acc.system.rejected.get("kind_mismatch"), Some(&3));
    assert_eq!(acc.system.rejected.get("pii_tag"), Some(&4));
    assert_eq!(acc.system.rejected.get("negative_counter"), Some(&1));
    assert_eq!(acc.system.rejected.get("invalid_value"), Some(&1));
    assert!(acc.system.balances());
}

// The batch path takes only series this service's policy checked: a host that checks its
// points with a laxer policy of its own cannot use it to skip the PII and tag rules.
#[tokio::test]
async fn a_batch_of_series_another_policy_checked_is_refused_and_counted() {
    let h = harness(RecorderSettings::default(), big_limits()).await;
    let lax = TagPolicy::new(Vec::<String>::new(), big_limits());
    let point = |policy: &TagPolicy| BatchPoint {
        series: policy
            .check_series(
                "shop.orders_count",
                Kind::Counter,
                vec![("email".to_string(), "x".to_string())],
            )
            .unwrap(),
        summary: {
            let mut s = luametrics_sketch::Summary::new(false);
            s.observe(1.0, 0);
            s.observe(1.0, 0);
            s
        },
    };
    assert_eq!(
        h.service.config().policy.check_series(
            "shop.orders_count",
            Kind::Counter,
            vec![("email".to_string(), "x".to_string())]
        ),
        Err(RejectReason::PiiTag)
    );
    let report = h.service.ingest_user_batch("acme", vec![point(&lax)]);
    assert_eq!((report.accepted, report.dropped), (0, 2));
    h.service.flush().await.unwrap();
    assert_eq!(
        stored(&h.store, "shop.orders_count", Some("acme")).await.0,
        0
    );
    let acc = h.service.accounting();
    assert_eq!(acc.user.rejected.get("invalid_tags"), Some(&2));
    assert!(acc.user.balances());
}

#[tokio::test]
async fn raw_mode_writes_every_point() {
    let h = harness(
        RecorderSettings {
            window_ms: 0,
            ..Default::default()
        },
        big_limits(),
    )
    .await;
    for i in 0..50 {
        h.service
            .record_user_metric("acme", "a.b", Kind::Gauge, i as f64, &Tags::new())
            .unwrap();
    }
    h.service.flush().await.unwrap();
    let rows = h
        .store
        .find_metrics(&FindQuery {
            name: "a.b".into(),
            from_ms: i64::MIN,
            to_ms: i64::MAX,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(rows.len(), 50);
    assert!(rows
        .iter()
        .all(|r| r.window_ms == 0 && r.summary.samples == 1));
}

// A histogram's sketch grows with the range of its values, up to 64 KiB; it is charged what
// it holds, in the open windows and in the exposition that keeps it after the flush, so the
// bound holds when every series spans the extremes (each was charged a fixed 2 KiB before:
// 100 such series held 6 MB under a bound of 1 MiB and nothing was dropped).
#[tokio::test]
async fn sketches_spanning_the_extremes_stay_within_the_memory_bound() {
    let bound = 1024 * 1024;
    let h = harness(
        RecorderSettings {
            max_memory_bytes: bound,
            ..Default::default()
        },
        Limits {
            max_series_per_name: 1_000_000,
            max_series_per_tenant: 1_000_000,
            ..big_limits()
        },
    )
    .await;
    let (mut accepted, mut dropped) = (0, 0);
    for i in 0..100 {
        let shop = format!("shop{i}");
        for v in [2e-8, 1e300, -2e-8, -1e300] {
            match h.service.record_user_metric(
                "acme",
                "shop.wide",
                Kind::Histogram,
                v,
                &tags(&[("shop", &shop)]),
            ) {
                Ok(_) => accepted += 1,
                Err(_) => dropped += 1,
            }
        }
        // Within the bound, give or take the service's own reserved room.
        assert!(
            h.service.memory_used() <= bound + 256 * 1024,
            "{}",
            h.service.memory_used()
        );
    }
    assert!(
        dropped > 0 && accepted > 0,
        "{accepted} accepted, {dropped} dropped"
    );
    let acc = h.service.accounting();
    assert!(acc.user.balances());
    // Flushed, the sketches go on in the exposition as far as the bound has room for them
    // (charged before they grow; a series with none leaves it), and recording goes on within
    // the bound.
    h.service.flush().await.unwrap();
    assert!(h.service.memory_used() <= bound + 256 * 1024);
    assert!(h.service.exposed_series() > 0);
    for i in 0..20 {
        let shop = format!("later{i}");
        for v in [2e-8, 1e300, -2e-8, -1e300] {
            let _ = h.service.record_user_metric(
                "acme",
                "shop.wide",
                Kind::Histogram,
                v,
                &tags(&[("shop", &shop)]),
            );
        }
    }
    assert!(h.service.memory_used() <= bound + 256 * 1024);
    h.service.flush().await.unwrap();
    assert!(h.service.memory_used() <= bound + 256 * 1024);
}

// A host's own metric names (outside the catalog) recorded for a tenant count against that
// tenant's bound of names, as a script's do; the catalog's, and the host's own without a
// tenant, do not.
#[tokio::test]
async fn host_names_for_a_tenant_count_against_its_bound() {
    let h = harness(
        RecorderSettings::default(),
        Limits {
            max_names_per_tenant: 3,
            ..big_limits()
        },
    )
    .await;
    let record = |name: &str, tenant: Option<&str>| {
        h.service
            .record_system(name, Kind::Gauge, 1.0, Tags::new(), tenant, None)
            .map(|_| ())
    };
    for i in 0..3 {
        assert!(record(&format!("host.t{i}"), Some("hx")).is_ok());
    }
    assert_eq!(
        record("host.t3", Some("hx")),
        Err(Rejected::Invalid(RejectReason::NameLimit))
    );
    assert!(
        record("host.t0", Some("hx")).is_ok(),
        "a name it holds stays its own"
    );
    assert!(record("jwks.active_key.age_ms", Some("hx")).is_ok());
    assert!(record("host.t3", None).is_ok());
    assert!(record("host.t4", Some("other")).is_ok());
    // The host's own names outside the catalog are bounded as well (each holds its exported
    // names for good), and outlive any eviction.
    for i in 4..MAX_HOST_NAMES + 3 {
        assert!(record(&format!("host.t{i}"), None).is_ok(), "{i}");
    }
    assert_eq!(
        record("host.one_more", None),
        Err(Rejected::Invalid(RejectReason::NameLimit))
    );
    assert!(
        record("jwks.active_key.age_ms", None).is_ok(),
        "the catalog's are not counted"
    );
    h.clock.fetch_add(7_200_000, Ordering::SeqCst);
    h.service.evict_idle();
    h.service.evict_idle();
    assert_eq!(
        record("host.one_more", None),
        Err(Rejected::Invalid(RejectReason::NameLimit))
    );
}

// Adversary round 6: one execution each for 10,000 tenants made 10,000 x 3 per-tenant system
// series that the `/metrics` exposition kept, uncharged, for an hour (120 MB past a 64 MiB
// bound). The exposition is charged: past the bound new series are dropped and counted.
#[tokio::test]
async fn many_tenants_cannot_grow_the_exposition_past_the_memory_bound() {
    let bound = 256 * 1024;
    let h = harness(
        RecorderSettings {
            max_memory_bytes: bound,
            ..Default::default()
        },
        big_limits(),
    )
    .await;
    let ok = tags(&[("method", "password"), ("status", "ok")]);
    let mut accepted = 0u64;
    for i in 0..20_000 {
        let tenant = format!("tenant-{i}");
        let r = h.service.record_system(
            "auth.login.attempt",
            Kind::Counter,
            1.0,
            ok.clone(),
            Some(&tenant),
            None,
        );
        accepted += u64::from(r.is_ok());
        if i % 1_000 == 999 {
            h.service.flush().await.unwrap();
        }
    }
    h.service.flush().await.unwrap();
    let acc = h.service.accounting();
    assert!(acc.system.balances());
    assert!(acc.system.dropped.get("memory_bound").copied().unwrap_or(0) > 0);
    assert!(accepted < 20_000);
    // What stays exposed fits the bound (with one flush's worth of accepted series above it).
    assert!(
        h.service.exposed_series() * 160 <= 2 * bound,
        "{} series exposed",
        h.service.exposed_series()
    );
    assert!(
        h.service.memory_used() <= 2 * bound,
        "{}",
        h.service.memory_used()
    );
}

// Tenants that come once and go (a host with many customers) leave per-tenant system series in
// the `/metrics` exposition, which is charged against the memory bound. Once they fill it, the
// exposition gives way, least recently updated first, rather than every later point (another
// tenant's included) being dropped until the series are idle for the eviction time (an hour).
// What was written stays written; evicted series are counted.
#[tokio::test]
async fn under_memory_pressure_the_exposition_gives_way_to_new_points() {
    let bound = 256 * 1024;
    let h = harness(
        RecorderSettings {
            max_memory_bytes: bound,
            // The newcomer's 20 series are more than an eighth of a 64 KiB reserve: with one,
            // it would be refused past three quarters of the bound, where the eviction stops.
            // What this test is about is the exposition giving way, not the reserve.
            tenant_memory_share: 1.0,
            ..Default::default()
        },
        big_limits(),
    )
    .await;
    let window = RecorderSettings::default().window_ms as i64;
    let ok = tags(&[("method", "password"), ("status", "ok")]);
    let mut accepted = 0u64;
    for i in 0..6_000 {
        let tenant = format!("tenant-{i}");
        let r = h.service.record_system(
            "auth.login.attempt",
            Kind::Counter,
            1.0,
            ok.clone(),
            Some(&tenant),
            None,
        );
        accepted += u64::from(r.is_ok());
        // Once the exposition gives way, every departed tenant's room comes back each flush.
        assert!(i < 1_000 || r.is_ok(), "{i}: {r:?}");
        if i % 25 == 24 {
            // Each batch of tenants in a window of its own, then gone.
            h.clock.fetch_add(window, Ordering::SeqCst);
            h.service.flush().await.unwrap();
        }
    }
    h.clock.fetch_add(window, Ordering::SeqCst);
    h.service.flush().await.unwrap();
    h.service.flush().await.unwrap();
    let evicted = h
        .service
        .exposition()
        .iter()
        .find(|s| s.name == "luametrics.exposition.evicted.count")
        .map(|s| s.value)
        .expect("the evicted counter is exposed");
    assert!(evicted > 0.0, "nothing was evicted");
    assert!(
        h.service.memory_used() <= bound,
        "{}",
        h.service.memory_used()
    );
    // A new tenant's points are taken, though the departed tenants' series are hours from idle.
    for shop in 0..20 {
        h.service
            .record_user_metric(
                "newcomer",
                "shop.orders_count",
                Kind::Counter,
                1.0,
                &tags(&[("shop", &format!("s{shop}"))]),
            )
            .expect("a new tenant's point was refused under the bound");
    }
    // The most recently updated series are the ones kept.
    let exposed: Vec<_> = h
        .service
        .exposition()
        .into_iter()
        .filter(|s| s.name == "auth.login.attempt")
        .collect();
    assert!(!exposed.is_empty());
    assert!(exposed
        .iter()
        .any(|s| s.tenant.as_deref() == Some("tenant-5999")));
    assert!(!exposed
        .iter()
        .any(|s| s.tenant.as_deref() == Some("tenant-0")));
    // Every accepted point was written: eviction forgets the scrape's copy only.
    h.service.flush().await.unwrap();
    let acc = h.service.accounting();
    assert!(acc.system.balances());
    let (n, _) = stored(&h.store, "auth.login.attempt", None).await;
    assert_eq!(n, accepted);
}

// A tenant's new metric names are charged against the memory bound: past it they are refused
// (dropped, `memory_bound`, as a point whose series finds no room), the bound holds, readiness
// sees the drop, and once room comes back a name already held is taken again.
#[tokio::test]
async fn new_metric_names_are_refused_past_the_memory_bound() {
    let bound = 256 * 1024;
    let h = harness(
        RecorderSettings {
            max_memory_bytes: bound,
            // One tenant: the bound, not its share of it, is what it meets.
            tenant_memory_share: 1.0,
            ..Default::default()
        },
        Limits {
            max_names_per_tenant: 100_000,
            ..big_limits()
        },
    )
    .await;
    let long = "x".repeat(100);
    let name = |i: usize| format!("h{long}.amount_{i:04}");
    let mut accepted = 0;
    for i in 0..1_000 {
        match h
            .service
            .record_user_metric("acme", &name(i), Kind::Histogram, 1.0, &Tags::new())
        {
            Ok(_) => accepted += 1,
            Err(Rejected::Dropped(DropReason::MemoryBound)) => break,
            Err(e) => panic!("{i}: {e:?}"),
        }
    }
    // Each name holds kilobytes: far fewer than 1,000 fit in 256 KiB.
    assert!((10..200).contains(&accepted), "{accepted}");
    assert!(h.service.memory_used() <= bound);
    let acc = h.service.accounting();
    assert_eq!(acc.user.dropped.get("memory_bound"), Some(&1));
    assert_eq!(
        acc.user.rejected.get("memory_bound").copied().unwrap_or(0),
        0
    );
    assert!(acc.user.balances());
    assert!(h.service.health().last_memory_drop_ms.is_some());
    // Written, the accumulators give their room back: a held name costs nothing more.
    h.clock.fetch_add(
        RecorderSettings::default().window_ms as i64,
        Ordering::SeqCst,
    );
    h.service.flush().await.unwrap();
    h.service.flush().await.unwrap();
    h.service
        .record_user_metric("acme", &name(0), Kind::Histogram, 2.0, &Tags::new())
        .expect("a held name was refused with room to spare");
}

/// Floods a 4 MiB bound from `attackers` tenant ids, each recording `per_round` histogram
/// points a window over `series` series with values spanning many orders of magnitude (each
/// id within its series limits), while another tenant records 20 counter series a window:
/// the flood meets the bound and every one of the other tenant's points is taken and exposed.
async fn flood_beside_a_small_tenant(attackers: usize, per_round: usize, series: usize) {
    let bound = 4 * 1024 * 1024;
    let h = harness(
        RecorderSettings {
            max_memory_bytes: bound,
            ..Default::default()
        },
        big_limits(),
    )
    .await;
    let window = RecorderSettings::default().window_ms as i64;
    let mut victim_sent = 0u64;
    for round in 0..6 {
        for attacker in 0..attackers {
            let tenant = format!("mallory-{attacker}");
            for i in 0..per_round {
                // At most 1,000 series per metric name (the limit), so several names.
                let n = (round * per_round + i) % series;
                let _ = h.service.record_user_metric(
                    &tenant,
                    &format!("m{}.latency", n % series.div_ceil(1_000)),
                    Kind::Histogram,
                    10f64.powi(i as i32 % 12) * (1.0 + i as f64 / 7.0),
                    &tags(&[("series", &format!("s{n}"))]),
                );
            }
        }
        for s in 0..20 {
            h.service
                .record_user_metric(
                    "victim",
                    "v.orders_count",
                    Kind::Counter,
                    1.0,
                    &tags(&[("shop", &format!("shop{s}"))]),
                )
                .unwrap_or_else(|e| panic!("round {round}: the victim's point was refused: {e:?}"));
            victim_sent += 1;
        }
        h.clock.fetch_add(window, Ordering::SeqCst);
        h.service.flush().await.unwrap();
    }
    let acc = h.service.accounting();
    assert!(acc.user.balances());
    // The flood met the bound.
    assert!(acc.user.dropped.get("memory_bound").copied().unwrap_or(0) > 0);
    assert!(
        h.service.memory_used() <= bound * 5 / 4,
        "{}",
        h.service.memory_used()
    );
    // The victim's series are all on `/metrics`, with every point.
    let exposed: f64 = h
        .service
        .exposition()
        .iter()
        .filter(|s| s.tenant.as_deref() == Some("victim"))
        .map(|s| s.value)
        .sum();
    assert_eq!(exposed, victim_sent as f64);
    let victim = h.service.tenant_points("victim");
    assert!(victim.dropped.is_empty(), "{:?}", victim.dropped);
}

// Adversary round 9: one tenant within its own series limits could fill the whole memory
// bound (10,000 histogram series with spread values hold far more than 64 MiB): another
// tenant's points were then dropped (73%) and its series vanished from `/metrics`. A tenant
// past its part of the reserve (`tenant_memory_share`) is now refused near the bound.
#[tokio::test]
async fn one_tenant_cannot_crowd_the_others_out_of_the_memory_bound() {
    flood_beside_a_small_tenant(1, 6_000, 8_000).await;
}

// A tenant past its part of the reserve is refused while the total is past it. Its idle
// series (exposition entries, registry keys) used to hold the total there until idle eviction
// (an hour): once other tenants took the total past the reserve, it stayed refused whether it
// recorded or not. Past the reserve they now go once idle for two windows (their rows are
// written), and the tenant is admitted again.
#[tokio::test]
async fn a_tenant_past_its_part_is_admitted_again_once_its_series_idle() {
    let bound = 40 * 1024 * 1024;
    let h = harness(
        RecorderSettings {
            max_memory_bytes: bound,
            // Half the bound in reserve: a wide band between it and 7/8 of the bound, where
            // the exposition gives way for everyone.
            tenant_memory_share: 0.5,
            ..Default::default()
        },
        big_limits(),
    )
    .await;
    let window = RecorderSettings::default().window_ms as i64;
    let record = |tenant: &str, series: usize| {
        h.service.record_user_metric(
            tenant,
            &format!("m{}.orders_count", series % 10),
            Kind::Counter,
            1.0,
            &tags(&[("series", &format!("s{series}"))]),
        )
    };
    // One tenant records 10,000 series once, all taken: under half the bound.
    for i in 0..10_000 {
        record("mallory", i).unwrap_or_else(|e| panic!("{i}: {e:?}"));
    }
    h.clock.fetch_add(window, Ordering::SeqCst);
    h.service.flush().await.unwrap();
    // Eight others, each within its part, keep recording and take the total past the reserve.
    for round in 0..5 {
        for t in 0..8 {
            for i in 0..1_000 {
                record(&format!("shop-{t}"), i)
                    .unwrap_or_else(|e| panic!("round {round}, shop-{t}, {i}: {e:?}"));
            }
        }
        h.clock.fetch_add(window, Ordering::SeqCst);
        h.service.flush().await.unwrap();
    }
    assert_eq!(h.service.tenant_series("shop-0"), 1_000);
    // The idle tenant's series are forgotten; what it recorded is written.
    assert_eq!(h.service.tenant_series("mallory"), 0);
    let (n, _) = stored(&h.store, "m0.orders_count", Some("mallory")).await;
    assert_eq!(n, 1_000);
    for i in 0..100 {
        record("mallory", 20_000 + i).unwrap_or_else(|e| panic!("{i}: refused once idle: {e:?}"));
    }
    h.service.flush().await.unwrap();
    assert!(h.service.accounting().user.balances());
}

// Adversary round 10 (F2): five tenant ids, each within its share of the bound, filled it
// together and another tenant kept 2 of its 178 points (the first alone could reach three
// quarters, the next took the reserve). The reserve is split among at least 8 tenants, so the
// five are refused near the bound whatever their order, and the other tenant keeps room.
#[tokio::test]
async fn several_tenant_ids_cannot_crowd_another_tenant_out_together() {
    flood_beside_a_small_tenant(5, 1_500, 4_000).await;
}

// Adversary round 11: a host's point (`POST /v1/metrics`) named outside the catalog but printing
// as one of the service's own families (`luametrics.points_accepted.count` prints as
// `luametrics_points_accepted_count_total`) was added into the live accounting counters, or
// replaced the flush-backlog gauge. Every catalog family is the service's from the start.
#[tokio::test]
async fn no_point_prints_as_one_of_the_services_own_families() {
    let h = harness(RecorderSettings::default(), big_limits()).await;
    for (name, kind, tenant) in [
        ("luametrics.points_accepted.count", Kind::Counter, None),
        ("luametrics_points.dropped_count", Kind::Counter, None),
        ("luametrics.exposition_evicted.count", Kind::Counter, None),
        ("luametrics.flush.backlog.rows", Kind::Counter, None),
        ("luametrics.flush.backlog.rows", Kind::Gauge, Some("acme")),
    ] {
        let r = h
            .service
            .record_system(name, kind, 5_000.0, Tags::new(), tenant, None);
        assert_eq!(
            r,
            Err(Rejected::Invalid(RejectReason::NameConflict)),
            "{name}"
        );
    }
    assert_eq!(
        h.service.record_user_metric(
            "acme",
            "luametrics.points.accepted.count",
            Kind::Counter,
            5_000.0,
            &Tags::new()
        ),
        Err(Rejected::Invalid(RejectReason::ReservedPrefix))
    );
    // The catalog's own names print as they did, and nothing was offered.
    h.service
        .record_system(
            "luametrics.flush.rows.count",
            Kind::Counter,
            1.0,
            Tags::new(),
            None,
            None,
        )
        .unwrap();
    h.service.flush().await.unwrap();
    let exposed = h.service.exposition();
    let accepted: f64 = exposed
        .iter()
        .filter(|s| s.name == "luametrics.points.accepted.count")
        .map(|s| s.value)
        .sum();
    // The one system point above, none of the forged 5,000s.
    assert_eq!(accepted, 1.0);
    assert!(exposed
        .iter()
        .any(|s| s.name == "luametrics.flush.backlog_rows" && s.kind == Kind::Gauge));
}

// Adversary round 12: a host's `tenant` tag was dropped (points tagged `tenant=x`, `tenant=y` and
// untagged merged into one series), and a host's metric named `user.*` printed as a tenant's
// family (`user_app_c_count_total{tenant="acme"}`), withholding the tenant's own metric.
#[tokio::test]
async fn host_points_neither_pass_for_a_tenant_nor_drop_its_tag() {
    let h = harness(RecorderSettings::default(), big_limits()).await;
    let record = |name: &str, tags: &[(&str, &str)], tenant: Option<&str>| {
        h.service
            .record_system(name, Kind::Counter, 1.0, self::tags(tags), tenant, None)
    };
    let reserved = Err(Rejected::Invalid(RejectReason::ReservedTag));
    assert_eq!(record("host.dup_count", &[("tenant", "x")], None), reserved);
    assert_eq!(
        record("host.dup_count", &[("tenant", "x")], Some("acme")),
        reserved
    );
    // The same tenant in both places is the tenant, once.
    assert!(record("host.dup_count", &[("tenant", "acme")], Some("acme")).is_ok());
    for name in ["user.app.c.count", "user_app.c_count"] {
        assert_eq!(
            record(name, &[], Some("acme")),
            Err(Rejected::Invalid(RejectReason::ReservedPrefix)),
            "{name}"
        );
    }
    // The handles' path checks the same.
    assert_eq!(
        h.service
            .counter("host.dup_count", &[("tenant", "y")])
            .series()
            .refused(),
        Some(RejectReason::ReservedTag)
    );
}

// A host's point naming a metric outside the catalog claims its names for the point's tenant:
// cycling tenant ids (each may hold 1,000 names) could push the names' charge past the bound
// if a point's claim were never refused. Past the bound it is dropped (`memory_bound`).
#[tokio::test]
async fn host_points_cannot_push_names_past_the_memory_bound() {
    let bound = 256 * 1024;
    let h = harness(
        RecorderSettings {
            max_memory_bytes: bound,
            ..Default::default()
        },
        big_limits(),
    )
    .await;
    let long = "q".repeat(100);
    for t in 0..2_000 {
        let _ = h.service.record_system(
            &format!("host{long}.depth"),
            Kind::Gauge,
            1.0,
            Tags::new(),
            Some(&format!("tenant-{t}")),
            None,
        );
    }
    assert!(
        h.service.memory_used() <= bound,
        "{}",
        h.service.memory_used()
    );
    let acc = h.service.accounting();
    assert!(acc.system.dropped.get("memory_bound").copied().unwrap_or(0) > 0);
    assert!(acc.system.balances());
}

// A tenant's metric names count in its share of the memory bound too: one tenant claiming
// thousands of long names stops at its share, and another tenant's new metrics still fit.
#[tokio::test]
async fn one_tenant_cannot_take_the_bound_with_names() {
    let bound = 4 * 1024 * 1024;
    let h = harness(
        RecorderSettings {
            max_memory_bytes: bound,
            ..Default::default()
        },
        Limits {
            max_names_per_tenant: 100_000,
            ..big_limits()
        },
    )
    .await;
    let long = "n".repeat(100);
    let mut refused = 0;
    for i in 0..8_000 {
        let name = format!("a{long}.c_{i:04}_count");
        if h.service
            .record_user_metric("namer", &name, Kind::Counter, 1.0, &Tags::new())
            .is_err()
        {
            refused += 1;
        }
    }
    assert!(refused > 0, "8,000 long names fit a 4 MiB bound");
    assert!(h.service.memory_used() <= bound);
    for i in 0..20 {
        h.service
            .record_user_metric(
                "victim",
                &format!("v.metric_{i}_count"),
                Kind::Counter,
                1.0,
                &Tags::new(),
            )
            .unwrap_or_else(|e| panic!("{i}: the victim's new metric was refused: {e:?}"));
    }
}

// Adversary round 10: a window holding one bin at 1e300 merged into a series' running total
// holding 1.0 fills that total's sketch (64 KiB); the exposition charged it whatever the bound,
// so one tenant grew the process to 35x the bound and every tenant's points were dropped for
// the 20 s nothing could be evicted. The exposition's growth now meets the bound and the
// tenant's share: a series with no room leaves `/metrics` instead (its rows are written).
#[tokio::test]
async fn wide_histograms_cannot_grow_the_exposition_past_the_bound() {
    let bound = 2 * 1024 * 1024;
    let h = harness(
        RecorderSettings {
            max_memory_bytes: bound,
            ..Default::default()
        },
        big_limits(),
    )
    .await;
    let window = RecorderSettings::default().window_ms as i64;
    let record = |values: &[f64]| {
        for s in 0..400 {
            for v in values {
                let _ = h.service.record_user_metric(
                    "mallory",
                    "m.wide",
                    Kind::Histogram,
                    *v,
                    &tags(&[("series", &format!("s{s}"))]),
                );
            }
        }
    };
    record(&[1.0, -1.0]);
    h.clock.fetch_add(window, Ordering::SeqCst);
    h.service.flush().await.unwrap();
    record(&[1e300, -1e300]);
    h.clock.fetch_add(window, Ordering::SeqCst);
    h.service.flush().await.unwrap();
    assert!(
        h.service.memory_used() <= bound + 256 * 1024,
        "{} charged against a bound of {bound}",
        h.service.memory_used()
    );
    // Another tenant's points are taken at once.
    for s in 0..20 {
        h.service
            .record_user_metric(
                "victim",
                "v.orders_count",
                Kind::Counter,
                1.0,
                &tags(&[("shop", &format!("shop{s}"))]),
            )
            .unwrap_or_else(|e| panic!("the victim's point was refused: {e:?}"));
    }
    let acc = h.service.accounting();
    assert!(acc.user.balances());
    // Everything accepted was written.
    h.clock.fetch_add(window, Ordering::SeqCst);
    h.service.flush().await.unwrap();
    let (n, _) = stored(&h.store, "m.wide", Some("mallory")).await;
    assert_eq!(n, acc.user.accepted - 20);
}

// A host that embeds the recorder alone (no runtime, no configuration file) had no check of
// its settings: a NaN share left `/readyz` unready for good. `try_start` refuses them, typed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_out_of_range_are_refused_with_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        Store::open_with(
            Location::File(dir.path().join("m.db")),
            Duration::from_millis(50),
        )
        .await
        .unwrap(),
    );
    type Spoil = fn(&mut RecorderSettings);
    let cases: [(&str, Spoil); 4] = [
        ("ready_memory_share", |s| s.ready_memory_share = f64::NAN),
        ("ready_memory_share", |s| s.ready_memory_share = 0.0),
        ("tenant_memory_share", |s| s.tenant_memory_share = -1.0),
        ("max_memory_bytes", |s| s.max_memory_bytes = 0),
    ];
    for (key, spoil) in cases {
        let mut config = RecorderConfig::default();
        spoil(&mut config.settings);
        match MetricsService::try_start(store.clone(), config) {
            Err(e) => {
                assert_eq!(e.key, key);
                assert!(
                    e.to_string().starts_with(&format!("recorder.{key} = ")),
                    "{e}"
                );
            }
            Ok(_) => panic!("{key}: started"),
        }
    }
    let service = MetricsService::try_start(store.clone(), RecorderConfig::default()).unwrap();
    service.shutdown().await.unwrap();
}

// Adversary round 25: an engine's verdict cache keeps a tenant's series for as long as the
// engine lives, and its points come back as a batch without asking for the name again; the
// recorder forgets the tenant's name claims once it has been idle. The metric then vanished
// from `/metrics` (withheld, as if another tenant held the name) and the cached names no
// longer counted against `max_names_per_tenant`. A batch claims its names again.
#[tokio::test]
async fn a_batch_claims_its_names_again_after_the_tenant_was_forgotten() {
    let h = harness(
        RecorderSettings {
            idle_eviction_ms: 60_000,
            ..Default::default()
        },
        Limits {
            max_names_per_tenant: 2,
            ..big_limits()
        },
    )
    .await;
    let point = |name: &str| batch_point(&h, name, Kind::Counter, "a", 1.0);
    // First sights claim the names (as the engine's slow path does), then the batch.
    for name in ["n.a1_count", "n.a2_count"] {
        h.service
            .claim_user_name("acme", name, Kind::Counter)
            .unwrap();
    }
    let r = h
        .service
        .ingest_user_batch("acme", vec![point("n.a1_count"), point("n.a2_count")]);
    assert_eq!((r.accepted, r.dropped), (2, 0));
    // Written, reported, idle past the eviction time: the tenant is forgotten.
    for _ in 0..2 {
        h.service.flush().await.unwrap();
        h.service.flush().await.unwrap();
        h.clock.fetch_add(61_000, Ordering::SeqCst);
        h.service.flush().await.unwrap();
        h.service.evict_idle();
    }
    assert_eq!(h.service.tenants_tracked(), 0);
    // A name first seen now, then the cached two: the bound of two names holds.
    h.service
        .claim_user_name("acme", "n.zz_count", Kind::Counter)
        .unwrap();
    let r = h.service.ingest_user_batch(
        "acme",
        vec![
            point("n.zz_count"),
            point("n.a1_count"),
            point("n.a2_count"),
        ],
    );
    assert_eq!((r.accepted, r.dropped), (2, 1), "{r:?}");
    assert_eq!(
        h.service.tenant_points("acme").rejected.get("name_limit"),
        Some(&1)
    );
    // And what is accepted is printed: its name is claimed again.
    h.service.flush().await.unwrap();
    h.clock.fetch_add(11_000, Ordering::SeqCst);
    h.service.flush().await.unwrap();
    let mut exposed: Vec<String> = h
        .service
        .exposition()
        .into_iter()
        .filter(|s| s.name.starts_with("n."))
        .map(|s| s.name.clone())
        .collect();
    exposed.sort();
    exposed.dedup();
    assert_eq!(exposed, ["n.a1_count", "n.zz_count"]);
}

// Adversary round 25: an engine's points carry time 0 (it aggregates without a clock), so
// every stored row of a script's gauge had `last_ts = 0`, and a merge of two rows kept
// whichever it met last: the hourly and daily rollups kept the first value they rolled up.
// A batch's last value is stamped with the time it is taken in.
#[tokio::test]
async fn a_batchs_last_value_is_as_of_the_batch() {
    let h = harness(RecorderSettings::default(), big_limits()).await;
    let gauge = |v: f64| batch_point(&h, "shop.queue_depth", Kind::Gauge, "a", v);
    for v in [5.0, 7.0] {
        h.service
            .claim_user_name("acme", "shop.queue_depth", Kind::Gauge)
            .unwrap();
        assert_eq!(
            h.service.ingest_user_batch("acme", vec![gauge(v)]).accepted,
            1
        );
        h.clock.fetch_add(3_600_000, Ordering::SeqCst);
        h.service.flush().await.unwrap();
    }
    let rows = h
        .store
        .find_metrics(&FindQuery {
            name: "shop.queue_depth".into(),
            from_ms: i64::MIN,
            to_ms: i64::MAX,
            tenant: Some("acme".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.summary.last_ts > 0), "{rows:?}");
    // Merged in either order, the later value is the last.
    for order in [[0, 1], [1, 0]] {
        let mut merged = luametrics_sketch::Summary::new(false);
        for i in order {
            merged.merge(&rows[i].summary).unwrap();
        }
        assert_eq!(merged.last, 7.0);
    }
}
