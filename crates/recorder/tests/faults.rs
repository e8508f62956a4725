//! The recorder under storage faults, deterministic and root-free: for each fault, every
//! accepted point is stored or counted as lost with its reason, exactly; health says what is
//! wrong while it lasts; shutdown keeps its deadline whatever the database does.

use luametrics_model::{Kind, Limits, MetricType, TagPolicy, Tags};
use luametrics_recorder::*;
use luametrics_store::{FindQuery, Location, Store};
use std::sync::Arc;
use std::time::Duration;

struct Harness {
    dir: tempfile::TempDir,
    path: std::path::PathBuf,
    store: Arc<Store>,
    service: MetricsService,
}

async fn harness(settings: RecorderSettings, busy: Duration) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.db");
    let store = Arc::new(
        Store::open_with(Location::File(path.clone()), busy)
            .await
            .unwrap(),
    );
    let config = RecorderConfig {
        settings,
        policy: TagPolicy::new(
            luametrics_model::DEFAULT_DENIED_KEYS
                .iter()
                .map(|s| s.to_string()),
            Limits {
                points_per_minute: 100_000_000,
                burst: 10_000_000,
                ..Limits::default()
            },
        ),
        ..RecorderConfig::default()
    };
    let service = MetricsService::start(store.clone(), config);
    Harness {
        dir,
        path,
        store,
        service,
    }
}

/// Records `n` user points over `series` series; returns how many were accepted.
fn record(h: &Harness, n: usize, series: usize, offset: usize) -> u64 {
    let mut accepted = 0;
    for i in 0..n {
        let tags: Tags = [("k".to_string(), ((i + offset) % series).to_string())]
            .into_iter()
            .collect();
        if h.service
            .record_user_metric("acme", "shop.sales", Kind::Counter, 1.0, &tags)
            .is_ok()
        {
            accepted += 1;
        }
    }
    accepted
}

async fn stored_points(store: &Store, name: &str, metric_type: MetricType) -> u64 {
    store
        .find_metrics(&FindQuery {
            name: name.into(),
            from_ms: i64::MIN,
            to_ms: i64::MAX,
            metric_type: Some(metric_type),
            ..Default::default()
        })
        .await
        .unwrap()
        .iter()
        .map(|r| r.summary.samples)
        .sum()
}

/// Sum of the stored copies of a self-metric counter for user points.
async fn stored_counter(store: &Store, name: &str, reason: Option<&str>) -> u64 {
    store
        .find_metrics(&FindQuery {
            name: name.into(),
            from_ms: i64::MIN,
            to_ms: i64::MAX,
            ..Default::default()
        })
        .await
        .unwrap()
        .iter()
        .filter(|r| r.tags.get("metric_type").map(String::as_str) == Some("user"))
        .filter(|r| reason.is_none() || r.tags.get("reason").map(String::as_str) == reason)
        .map(|r| r.summary.sum)
        .sum::<f64>() as u64
}

async fn lock(path: &std::path::Path) -> libsql::Connection {
    let db = libsql::Builder::new_local(path).build().await.unwrap();
    let conn = db.connect().unwrap();
    conn.execute("BEGIN EXCLUSIVE", ()).await.unwrap();
    conn
}

fn codes(h: &Harness) -> Vec<&'static str> {
    h.service
        .health()
        .problems()
        .into_iter()
        .map(|(c, _)| c)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_fails_flushes_visibly_and_loses_nothing() {
    let h = harness(RecorderSettings::default(), Duration::from_millis(50)).await;
    let mut accepted = record(&h, 500, 50, 0);
    h.service.flush().await.unwrap();
    assert!(h.service.health().ready());
    let other = lock(&h.path).await;
    accepted += record(&h, 500, 80, 0);
    let err = h.service.flush().await.unwrap_err();
    assert!(err.to_string().contains("locked"), "{err}");
    assert!(codes(&h).contains(&"flush_failing"), "{:?}", codes(&h));
    let health = h.service.health();
    assert!(health.backlog_rows >= 80, "{health:?}");
    assert!(health.last_error.is_some());
    other.execute("COMMIT", ()).await.unwrap();
    h.service.flush().await.unwrap();
    assert!(h.service.health().ready(), "{:?}", h.service.health());
    assert_eq!(h.service.health().backlog_rows, 0);
    assert_eq!(accepted, 1_000);
    assert_eq!(
        stored_points(&h.store, "shop.sales", MetricType::User).await,
        h.service.accounting().user.accepted
    );
    assert_eq!(h.service.accounting().user.accepted, accepted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_database_is_recreated_and_what_it_held_is_counted_lost() {
    let h = harness(RecorderSettings::default(), Duration::from_millis(50)).await;
    let before = record(&h, 300, 30, 0);
    h.service.flush().await.unwrap();
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", h.path.display()));
    }
    let after = record(&h, 200, 20, 0);
    h.service.flush().await.unwrap();
    let acc = h.service.accounting();
    assert_eq!(acc.user.accepted, before + after);
    assert_eq!(acc.user.lost.get("database_gone"), Some(&before));
    // A new database at the path holds what was written after the deletion.
    let fresh = Store::open(Location::File(h.path.clone())).await.unwrap();
    assert_eq!(
        stored_points(&fresh, "shop.sales", MetricType::User).await,
        after
    );
    assert_eq!(
        stored_points(&fresh, "shop.sales", MetricType::User).await + acc.user.lost_total(),
        acc.user.accepted
    );
    assert!(h.service.health().ready());
    let _ = &h.dir;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_recovers_once_space_is_freed() {
    let h = harness(RecorderSettings::default(), Duration::from_millis(50)).await;
    let mut accepted = record(&h, 100, 10, 0);
    h.service.flush().await.unwrap();
    h.store.checkpoint().await.unwrap();
    h.store.set_max_pages(Some(1)).await.unwrap();
    accepted += record(&h, 5_000, 5_000, 1_000);
    let err = h.service.flush().await.unwrap_err();
    assert!(err.to_string().contains("full"), "{err}");
    assert!(codes(&h).contains(&"flush_failing"));
    h.store.set_max_pages(None).await.unwrap();
    h.service.flush().await.unwrap();
    assert!(h.service.health().ready());
    assert_eq!(
        stored_points(&h.store, "shop.sales", MetricType::User).await,
        accepted
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_writes_recover_without_loss() {
    let h = harness(RecorderSettings::default(), Duration::from_millis(50)).await;
    h.store.set_query_only(true).await.unwrap();
    let accepted = record(&h, 400, 40, 0);
    assert!(h.service.flush().await.is_err());
    assert!(codes(&h).contains(&"flush_failing"));
    h.store.set_query_only(false).await.unwrap();
    h.service.flush().await.unwrap();
    assert!(h.service.health().ready());
    assert_eq!(
        stored_points(&h.store, "shop.sales", MetricType::User).await,
        accepted
    );
}

/// Under the memory bound, with the database locked, the exported accounting and its stored
/// copies both equal the service's own counters: nothing is marked reported that was dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounting_under_the_memory_bound_is_exact_in_the_exposition_and_the_store() {
    let h = harness(
        RecorderSettings {
            max_memory_bytes: 300_000,
            ..Default::default()
        },
        Duration::from_millis(50),
    )
    .await;
    let other = lock(&h.path).await;
    for round in 0..5 {
        record(&h, 2_000, 2_000, round * 2_000);
        let _ = h.service.flush().await;
    }
    let acc = h.service.accounting();
    assert!(
        acc.user.dropped.get("memory_bound").copied().unwrap_or(0) > 0,
        "{acc:?}"
    );
    assert!(codes(&h).contains(&"memory_drops"), "{:?}", codes(&h));
    // The exposition reads the counters, whatever the bound did to stored points.
    let exposed = |name: &str, reason: Option<&str>| -> f64 {
        h.service
            .exposition()
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| s.tags.get("metric_type").map(String::as_str) == Some("user"))
            .filter(|s| reason.is_none() || s.tags.get("reason").map(String::as_str) == reason)
            .map(|s| s.value)
            .sum()
    };
    assert_eq!(
        exposed("luametrics.points.offered.count", None),
        acc.user.offered as f64
    );
    assert_eq!(
        exposed("luametrics.points.accepted.count", None),
        acc.user.accepted as f64
    );
    assert_eq!(
        exposed("luametrics.points.dropped.count", Some("memory_bound")),
        acc.user.dropped["memory_bound"] as f64
    );
    other.execute("COMMIT", ()).await.unwrap();
    // Writable again: the backlog drains (it may take a few flushes as room frees up), and the
    // stored copies of the counters add up to the counters.
    for _ in 0..10 {
        if h.service.flush().await.is_ok() {
            break;
        }
    }
    h.service.flush().await.unwrap();
    let acc = h.service.accounting();
    assert_eq!(
        stored_points(&h.store, "shop.sales", MetricType::User).await,
        acc.user.accepted
    );
    assert_eq!(
        stored_counter(&h.store, "luametrics.points.offered.count", None).await,
        acc.user.offered
    );
    assert_eq!(
        stored_counter(&h.store, "luametrics.points.accepted.count", None).await,
        acc.user.accepted
    );
    assert_eq!(
        stored_counter(
            &h.store,
            "luametrics.points.dropped.count",
            Some("memory_bound")
        )
        .await,
        acc.user.dropped["memory_bound"]
    );
    assert!(acc.user.balances());
}

/// Shutdown during a lock keeps its deadline even with a 60 s busy timeout, and counts what it
/// could not write. The cap below is a hang detector (the busy wait alone would take 60 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_during_a_lock_keeps_its_deadline_and_counts_the_rest() {
    let h = harness(
        RecorderSettings {
            shutdown_timeout_ms: 500,
            retry_initial_ms: 10,
            ..Default::default()
        },
        Duration::from_secs(60),
    )
    .await;
    let mut accepted = record(&h, 100, 10, 0);
    h.service.flush().await.unwrap();
    // The file is recreated first: the new writer must keep the short lock wait too.
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", h.path.display()));
    }
    accepted += record(&h, 50, 5, 0);
    h.service.flush().await.unwrap();
    let gone = h.service.accounting().user.lost["database_gone"];
    assert_eq!(gone, 100);
    let other = lock(&h.path).await;
    accepted += record(&h, 300, 30, 0);
    // On its own task, so the hang detector's timer can fire while shutdown blocks.
    let svc = h.service.clone();
    let shutdown = tokio::spawn(async move { svc.shutdown().await });
    let result = tokio::time::timeout(Duration::from_secs(30), shutdown)
        .await
        .expect("shutdown hung past its deadline")
        .unwrap();
    match result {
        Err(RecorderError::Unflushed { points, .. }) => assert!(points >= 300),
        other => panic!("expected Unflushed, got {other:?}"),
    }
    other.execute("COMMIT", ()).await.unwrap();
    let acc = h.service.accounting();
    let lost = acc.user.lost.get("shutdown").copied().unwrap_or(0);
    assert_eq!(lost, 300);
    assert_eq!(
        stored_points(&h.store, "shop.sales", MetricType::User).await + lost + gone,
        accepted
    );
}

/// A directory renamed away and back: the file that returns is the one written to, so nothing
/// is counted lost (and nothing stored is counted twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_renamed_away_and_back_loses_nothing() {
    let h = harness(RecorderSettings::default(), Duration::from_millis(50)).await;
    let mut accepted = record(&h, 200, 20, 0);
    h.service.flush().await.unwrap();
    let dir = h.dir.path().to_path_buf();
    let moved = dir.with_extension("moved");
    std::fs::rename(&dir, &moved).unwrap();
    accepted += record(&h, 100, 10, 0);
    assert!(h.service.flush().await.is_err(), "the directory is gone");
    assert!(codes(&h).contains(&"database_gone"), "{:?}", codes(&h));
    std::fs::rename(&moved, &dir).unwrap();
    h.service.flush().await.unwrap();
    let acc = h.service.accounting();
    assert_eq!(acc.user.lost_total(), 0, "{acc:?}");
    assert!(h.service.health().ready(), "{:?}", h.service.health());
    assert_eq!(
        stored_points(&h.store, "shop.sales", MetricType::User).await,
        accepted
    );
}

/// The file deleted for good while shutdown runs: what was written to it is counted lost at the
/// deadline, with what was never written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_never_comes_back_is_counted_at_shutdown() {
    let h = harness(
        RecorderSettings {
            shutdown_timeout_ms: 300,
            retry_initial_ms: 10,
            ..Default::default()
        },
        Duration::from_millis(50),
    )
    .await;
    let first = record(&h, 120, 12, 0);
    h.service.flush().await.unwrap();
    let dir = h.dir.path().to_path_buf();
    let moved = dir.with_extension("gone");
    std::fs::rename(&dir, &moved).unwrap();
    let second = record(&h, 80, 8, 0);
    let err = h.service.shutdown().await.unwrap_err();
    assert!(matches!(err, RecorderError::Unflushed { .. }), "{err}");
    let acc = h.service.accounting();
    assert_eq!(acc.user.lost.get("database_gone"), Some(&first), "{acc:?}");
    assert_eq!(acc.user.lost.get("shutdown"), Some(&second), "{acc:?}");
    assert_eq!(acc.user.accepted, first + second);
    std::fs::rename(&moved, &dir).unwrap();
}
