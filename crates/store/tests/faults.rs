//! Storage faults at the store level, deterministic and root-free: a lock held by a second
//! connection must not block the async workers, a deleted or replaced file is noticed and
//! recreated (never silently written into, never recreated by a reader), open errors name the
//! path and the likely cause.

use luametrics_model::{Kind, MetricType};
use luametrics_sketch::Summary;
use luametrics_store::*;
use std::time::Duration;

fn row(i: i64) -> WindowRow {
    let mut summary = Summary::new(false);
    summary.observe(1.0, 1_700_000_000_000 + i);
    WindowRow {
        name: "shop.sales".into(),
        tenant: Some("acme".into()),
        metric_type: MetricType::User,
        kind: Kind::Counter,
        tags: [("n".to_string(), i.to_string())].into_iter().collect(),
        source: None,
        timestamp_ms: 1_700_000_000_000,
        window_ms: 10_000,
        summary,
    }
}

/// A second, independent connection to the same file (another process would do the same).
async fn second_connection(path: &std::path::Path) -> libsql::Connection {
    let db = libsql::Builder::new_local(path).build().await.unwrap();
    db.connect().unwrap()
}

/// With one async worker and a writer stuck in SQLite's busy wait (a 60 s busy timeout against
/// a lock held by another connection), other tasks still run: the store's call left the worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_lock_wait_never_blocks_the_async_workers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.db");
    let store = std::sync::Arc::new(
        Store::open_with(Location::File(path.clone()), Duration::from_secs(60))
            .await
            .unwrap(),
    );
    let other = second_connection(&path).await;
    other.execute("BEGIN EXCLUSIVE", ()).await.unwrap();
    let writer = {
        let store = store.clone();
        tokio::spawn(async move { store.create_batch(&[row(1), row(2)]).await })
    };
    // Give the writer task the worker first, so it is inside its busy wait.
    tokio::task::yield_now().await;
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _ = tx.send("pong");
    });
    // A hang detector only: with the busy wait on the worker this would wait ~60 s.
    let pong = tokio::time::timeout(Duration::from_secs(30), rx).await;
    assert_eq!(pong.ok().and_then(Result::ok), Some("pong"));
    other.execute("COMMIT", ()).await.unwrap();
    assert_eq!(writer.await.unwrap().unwrap(), 2);
    assert_eq!(store.count_rows().await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_file_is_refused_then_recreated_and_never_recreated_by_readers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.db");
    let store = Store::open(Location::File(path.clone())).await.unwrap();
    store.create_batch(&[row(1)]).await.unwrap();
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    assert_eq!(store.file_fault(), Some(FileFault::Deleted));
    let err = store.create_batch(&[row(2)]).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Gone {
                fault: FileFault::Deleted,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.is_transient());
    // Readers (readiness checks, queries) get an error, and leave no file behind.
    assert!(store.count_rows().await.is_err());
    assert!(store.check_file().await.is_err());
    assert!(!path.exists(), "a reader created a file at the path");
    assert!(store.reopen().await.unwrap(), "recreated");
    assert_eq!(store.file_fault(), None);
    assert_eq!(store.create_batch(&[row(3), row(4)]).await.unwrap(), 2);
    assert_eq!(store.count_rows().await.unwrap(), 2);
    // What another process sees at the path is the recreated database.
    let other = Store::open(Location::File(path.clone())).await.unwrap();
    assert_eq!(other.count_rows().await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_file_is_noticed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.db");
    let store = Store::open(Location::File(path.clone())).await.unwrap();
    store.create_batch(&[row(1)]).await.unwrap();
    // An empty log, so SQLite cannot replay the old file's pages into the new one.
    assert!(store.checkpoint().await.unwrap());
    let elsewhere = dir.path().join("other.db");
    drop(
        Store::open(Location::File(elsewhere.clone()))
            .await
            .unwrap(),
    );
    std::fs::rename(&elsewhere, &path).unwrap();
    assert_eq!(store.file_fault(), Some(FileFault::Replaced));
    let err = store.create_batch(&[row(2)]).await.unwrap_err();
    assert!(err.to_string().contains("replaced"), "{err}");
    assert!(store.reopen().await.unwrap(), "recreated");
    store.create_batch(&[row(3)]).await.unwrap();
    assert_eq!(store.count_rows().await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capped_file_fails_like_a_full_disk_and_recovers_when_lifted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.db");
    let store = Store::open(Location::File(path.clone())).await.unwrap();
    store.create_batch(&[row(0)]).await.unwrap();
    assert!(store.checkpoint().await.unwrap());
    // Cap at the current size: any growth fails as SQLITE_FULL does on a full volume.
    store.set_max_pages(Some(1)).await.unwrap();
    let rows: Vec<WindowRow> = (1..5_000).map(row).collect();
    let err = store.create_batch(&rows).await.unwrap_err();
    assert!(err.to_string().contains("full"), "{err}");
    assert!(err.is_transient());
    assert_eq!(store.count_rows().await.unwrap(), 1, "all or nothing");
    store.set_max_pages(None).await.unwrap();
    assert_eq!(store.create_batch(&rows).await.unwrap(), 4_999);
    assert!(store.checkpoint().await.unwrap());
    let wal = std::fs::metadata(format!("{}-wal", path.display()))
        .map(|m| m.len())
        .unwrap_or(0);
    assert_eq!(wal, 0, "a TRUNCATE checkpoint empties the write-ahead log");
}

#[tokio::test]
async fn open_errors_name_the_path_and_the_likely_cause() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("not-a-db.db");
    std::fs::write(&path, vec![b'x'; 8192]).unwrap();
    let err = Store::open(Location::File(path.clone())).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains("not a libSQL/SQLite database"), "{text}");
}
