//! `luametrics serve` under storage faults, as an operator's worst day would have them, with
//! exact accounting: what clients were told was accepted = what is stored + what the process
//! reported as lost. Deterministic and root-free; the only time caps are hang detectors.

mod common;

use common::*;
use luametrics::store::{Location, Store};
use std::process::Command;
use std::time::Duration;

async fn stored(path: &std::path::Path) -> u64 {
    let store = Store::open(Location::File(path.to_path_buf()))
        .await
        .unwrap();
    store.user_samples_by_tenant().await.unwrap().values().sum()
}

fn logins(s: &Server, n: usize) {
    for i in 0..n {
        let (status, body) = login(s, &format!("t{}", i % 3), "pro");
        assert_eq!(status, 200, "{body}");
    }
}

/// Waits for the process to exit (a hang detector, not a timing assertion).
fn wait_exit(s: &mut Server) -> std::process::ExitStatus {
    for _ in 0..600 {
        if let Some(status) = s.child.try_wait().unwrap() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("serve did not exit within 60 s of SIGTERM");
}

fn term(s: &Server) {
    let pid = s.child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_lock_keeps_the_deadline_and_reports_what_it_could_not_write() {
    let mut s = Server::start_capturing(&[
        ("LUAMETRICS_RECORDER_SHUTDOWN_TIMEOUT_MS", "2000"),
        // Long enough that a shutdown waiting in SQLite's busy wait would blow the deadline.
        ("LUAMETRICS_DATABASE_BUSY_TIMEOUT_MS", "120000"),
    ]);
    let db = s.dir.path().join("m.db");
    logins(&s, 20);
    let first = accepted(&s);
    assert!(first > 0);
    poll("the first points stored", || {
        let n = futures_block(stored(&db));
        (n == first).then_some(())
    });
    let conn = libsql::Builder::new_local(&db)
        .build()
        .await
        .unwrap()
        .connect()
        .unwrap();
    conn.execute("BEGIN EXCLUSIVE", ()).await.unwrap();
    logins(&s, 20);
    // Writes fail: readiness says so, liveness still answers.
    let (_, body) = poll("/readyz reporting the failing flush", || {
        let (status, body) = get(&s, "/readyz", None);
        (status == 503 && body["error"]["code"] == "flush_failing").then_some((status, body))
    });
    assert!(
        body["error"]["details"]["health"]["backlog_rows"]
            .as_u64()
            .unwrap()
            > 0,
        "{body}"
    );
    assert_eq!(get(&s, "/healthz", None).0, 200);
    let total = accepted(&s);
    term(&s);
    let status = wait_exit(&mut s);
    assert_eq!(
        status.code(),
        Some(3),
        "unwritten data must give a non-zero exit"
    );
    let err = s.stderr.lock().unwrap().clone();
    assert!(err.contains("writes to the database are failing"), "{err}");
    let line = err
        .lines()
        .find(|l| l.contains("shutdown deadline passed:"))
        .unwrap_or_else(|| panic!("no shutdown report in {err}"));
    let user_lost: u64 = line
        .split(" user points")
        .next()
        .and_then(|l| l.rsplit('(').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("cannot read the user points in {line:?}"));
    conn.execute("COMMIT", ()).await.unwrap();
    assert!(user_lost > 0, "{line}");
    assert_eq!(stored(&db).await + user_lost, total, "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_database_is_recreated_and_the_loss_is_reported() {
    let s = Server::start_capturing(&[]);
    let db = s.dir.path().join("m.db");
    logins(&s, 15);
    let before = accepted(&s);
    poll("the first points stored", || {
        (futures_block(stored(&db)) == before).then_some(())
    });
    // Every execution's trace is in the file too (sampling 1.0).
    poll("the first traces stored", || {
        let n = futures_block(async {
            Store::open(Location::File(db.clone()))
                .await
                .unwrap()
                .count_traces()
                .await
                .unwrap()
        });
        (n == 15).then_some(())
    });
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    poll("the loss reported", || {
        (user_counter(
            &s,
            "luametrics_points_lost_count_total",
            Some("database_gone"),
        ) == before)
            .then_some(())
    });
    poll("the lost traces counted", || {
        let text = ureq::get(&s.url("/metrics"))
            .set("Authorization", &format!("Bearer {ADMIN}"))
            .call()
            .ok()?
            .into_string()
            .ok()?;
        text.lines()
            .any(|l| l == "luametrics_traces_dropped_count_total{reason=\"database_gone\"} 15")
            .then_some(())
    });
    logins(&s, 15);
    let total = accepted(&s);
    poll("the later points stored in the recreated file", || {
        (db.exists() && futures_block(stored(&db)) == total - before).then_some(())
    });
    assert_eq!(get(&s, "/readyz", None).0, 200);
    let err = s.stderr.lock().unwrap().clone();
    assert!(err.contains("was deleted while open"), "{err}");
    assert!(err.contains("recreated the database"), "{err}");
    let dir = s.stop();
    let db = dir.path().join("m.db");
    assert_eq!(stored(&db).await + before, total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_then_restart_keeps_a_sound_file_and_every_flushed_point() {
    let mut s = Server::start(&[]);
    let db = s.dir.path().join("m.db");
    logins(&s, 30);
    let total = accepted(&s);
    poll("every point stored", || {
        (futures_block(stored(&db)) == total).then_some(())
    });
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    let dir = std::mem::replace(&mut s.dir, tempfile::tempdir().unwrap());
    drop(s);
    let conn = libsql::Builder::new_local(dir.path().join("m.db"))
        .build()
        .await
        .unwrap()
        .connect()
        .unwrap();
    // The first connection after a crash recovers the write-ahead log under a lock; a reader
    // arriving meanwhile waits for it instead of failing with `database is locked`.
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .unwrap();
    let mut rows = conn.query("PRAGMA integrity_check", ()).await.unwrap();
    let row = rows.next().await.unwrap().unwrap();
    assert_eq!(row.get::<String>(0).unwrap(), "ok");
    drop(rows);
    drop(conn);
    let s = Server::start_in(dir, &[], false);
    assert_eq!(get(&s, "/readyz", None).0, 200);
    logins(&s, 3);
    let db = s.dir.path().join("m.db");
    assert_eq!(futures_block(stored(&db)), total);
    let dir = s.stop();
    assert!(stored(&dir.path().join("m.db")).await > total);
}

/// Runs a store future from synchronous polling code inside the test's runtime.
fn futures_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}
