//! Containment under `luametrics serve`: tenants' scripts that never end, on a pool of two
//! engines, cannot wedge the service. Scripts run on blocking threads, never on the async
//! workers, so health checks and other requests keep answering; the watchdog ends each
//! execution at its limit (its `__close` handlers and `pcall`-protected loops included); and
//! SIGTERM still drains and flushes every accepted point.

mod common;

use common::*;
use luametrics::store::{Location, Store};
use serde_json::{json, Value};
use std::time::Duration;

/// One request with a client timeout that only catches a wedged server (a hang detector, not
/// a performance assertion).
fn post_with_hang_cap(s: &Server, path: &str, body: Value) -> (u16, Value) {
    let r = ureq::post(&s.url(path))
        .set("Authorization", &format!("Bearer {EXEC}"))
        .timeout(Duration::from_secs(60));
    call(r, Some(body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_endless_scripts_on_two_engines_leave_the_service_answering() {
    let s = Server::start(&[
        ("LUAMETRICS_POOL_MAX_SIZE", "2"),
        ("LUAMETRICS_ENGINE_TIME_LIMIT_MS", "3000"),
        ("LUAMETRICS_POOL_WAIT_TIMEOUT_MS", "60000"),
        ("LUAMETRICS_SERVER_REQUEST_TIMEOUT_MS", "120000"),
        ("LUAMETRICS_RECORDER_WINDOW_MS", "60000"),
    ]);
    let base = s.base.clone();
    let spinners: Vec<_> = (0..10)
        .map(|i| {
            let base = base.clone();
            std::thread::spawn(move || {
                let r = ureq::post(&format!("{base}/v1/pipelines/t.spin/execute"))
                    .set("Authorization", &format!("Bearer {EXEC}"))
                    .timeout(Duration::from_secs(120))
                    .send_json(json!({"tenant": format!("mallory{i}"), "event": {}}));
                let o: Value = r.unwrap().into_json().unwrap();
                o
            })
        })
        .collect();
    // Wait until both engines are taken by spinners.
    poll("both engines busy with spinners", || {
        let (_, p) = get(&s, "/v1/pool", Some(ADMIN));
        (p["active"].as_i64() == Some(2)).then_some(())
    });
    // Every engine is stuck in a tenant's loop: health, readiness, metrics and queries answer,
    // while the same two spinners still hold the engines (no checkout happened meanwhile).
    let checkouts = |s: &Server| get(s, "/v1/pool", Some(ADMIN)).1["checkouts"].as_u64();
    let before = checkouts(&s);
    for _ in 0..5 {
        let r = ureq::get(&s.url("/healthz"))
            .timeout(Duration::from_secs(10))
            .call();
        assert_eq!(r.map(|r| r.status()).ok(), Some(200), "/healthz answers");
        let (st, _) = get(&s, "/readyz", None);
        assert_eq!(st, 200);
        let (st, _) = get(&s, "/v1/metrics/names", Some(ADMIN));
        assert_eq!(st, 200);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        checkouts(&s),
        before,
        "answered while both engines were busy"
    );
    // A normal execution queued behind them is served when an engine frees up.
    let (st, o) = post_with_hang_cap(
        &s,
        "/v1/pipelines/user.login/execute",
        json!({"tenant": "acme", "event": {"email": "a@example.com", "plan": "pro"}}),
    );
    assert_eq!(st, 200, "{o}");
    assert_eq!(o["decision"]["decision"], "allow", "{o}");
    let accepted: u64 = o["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["accepted"].as_u64().unwrap())
        .sum();
    assert!(accepted > 0);
    // Each spinner ended with a typed timeout.
    for h in spinners {
        let o = h.join().unwrap();
        assert_eq!(o["decision"]["decision"], "error", "{o}");
        assert_eq!(o["decision"]["code"], "timeout", "{o}");
    }
    let (_, pool) = get(&s, "/v1/pool", Some(ADMIN));
    assert_eq!(pool["discarded"]["timeout"], 10, "{pool}");
    assert_eq!(pool["abandoned"], 0, "the watchdog ended them all: {pool}");

    // SIGTERM while two spinners run: the process drains them and flushes what was accepted.
    let late: Vec<_> = (0..2)
        .map(|_| {
            let base = base.clone();
            std::thread::spawn(move || {
                let _ = ureq::post(&format!("{base}/v1/pipelines/t.spin/execute"))
                    .set("Authorization", &format!("Bearer {EXEC}"))
                    .timeout(Duration::from_secs(120))
                    .send_json(json!({"tenant": "mallory", "event": {}}));
            })
        })
        .collect();
    poll("the late spinners running", || {
        let (_, p) = get(&s, "/v1/pool", Some(ADMIN));
        (p["active"].as_i64() == Some(2)).then_some(())
    });
    let dir = s.stop();
    for h in late {
        h.join().unwrap();
    }
    let store = Store::open(Location::File(dir.path().join("m.db")))
        .await
        .unwrap();
    let stored: u64 = store
        .user_samples_by_tenant()
        .await
        .unwrap()
        .get("acme")
        .copied()
        .unwrap_or(0);
    assert_eq!(stored, accepted);
}
