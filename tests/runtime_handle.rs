//! The embedding handle: clones share one runtime, a shut-down runtime runs nothing more and
//! says so with a typed error, a runtime dropped without shutdown warns (through `tracing`) of
//! the points it had not written, and every error of the API is one type with a kind.

use luametrics::{Error, ErrorKind, Runtime};
use serde_json::json;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

async fn start(dir: &tempfile::TempDir) -> Runtime {
    let root = env!("CARGO_MANIFEST_DIR");
    Runtime::builder()
        .database_path(dir.path().join("rt.db"))
        .pipelines(format!("{root}/lua/pipelines.toml"))
        .pool_size(1)
        .time_limit(Duration::from_millis(200))
        .window(Duration::from_secs(3_600))
        .start()
        .await
        .expect("the runtime starts")
}

fn login() -> serde_json::Value {
    json!({ "email": "ann@example.com", "plan": "pro", "method": "passkey", "roles": ["dev"] })
}

#[tokio::test]
async fn a_shut_down_runtime_runs_nothing_more_through_any_clone() {
    let dir = tempfile::tempdir().unwrap();
    let rt = start(&dir).await;
    assert_eq!(rt.config().engine.time_limit_ms, 200);
    assert_eq!(rt.config().recorder.window_ms, 3_600_000);
    let other = rt.clone();
    let outcome = other.execute("user.login", "acme", login()).await.unwrap();
    assert_eq!(outcome.decision.status(), "ok");
    let accepted = rt.accounting().user.accepted;
    assert!(accepted > 0, "the login pipeline records user points");
    assert!(!other.is_closed());
    rt.shutdown().await.unwrap();
    assert!(other.is_closed());
    let refused = other.execute("user.login", "acme", login()).await;
    assert!(matches!(refused, Err(Error::Closed)), "{refused:?}");
    assert_eq!(refused.unwrap_err().kind(), ErrorKind::Closed);
    // Nothing ran: no point was offered after the shutdown.
    assert_eq!(rt.accounting().user.accepted, accepted);
    assert_eq!(rt.accounting().user.offered, accepted);
}

#[tokio::test]
async fn every_error_of_the_api_is_one_type_with_a_kind() {
    let dir = tempfile::tempdir().unwrap();
    let rt = start(&dir).await;
    let unknown = rt.execute("no.such.trigger", "acme", json!({})).await;
    assert_eq!(unknown.unwrap_err().kind(), ErrorKind::UnknownTrigger);
    let empty = rt.execute("user.login", " ", login()).await;
    assert_eq!(empty.unwrap_err().kind(), ErrorKind::InvalidTenant);
    // A tenant id keys per-tenant state and is stored in every trace: bounded like the read
    // tokens that name it, and printable (adversary round 5).
    for tenant in ["t".repeat(257), "a\u{0}b".to_string(), "a\nb".to_string()] {
        let e = rt
            .execute("user.login", &tenant, login())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidTenant, "{tenant:?}");
    }
    assert!(rt
        .execute("user.login", &"t".repeat(256), login())
        .await
        .is_ok());
    let bad_db = Runtime::builder()
        .database_path(dir.path().join("no-such-dir").join("x").join("rt.db"))
        .pipelines(format!("{}/lua/pipelines.toml", env!("CARGO_MANIFEST_DIR")))
        .start()
        .await;
    assert_eq!(bad_db.err().map(|e| e.kind()), Some(ErrorKind::Database));
    let bad_pipelines = Runtime::builder()
        .database_path(dir.path().join("other.db"))
        .pipelines(dir.path().join("missing.toml"))
        .start()
        .await;
    assert_eq!(
        bad_pipelines.err().map(|e| e.kind()),
        Some(ErrorKind::Pipelines)
    );
    rt.shutdown().await.unwrap();
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// A capturing subscriber as this thread's default, while the guard lives.
    fn install() -> (Self, tracing::subscriber::DefaultGuard) {
        let log = Captured::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        (log, tracing::subscriber::set_default(subscriber))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

// A current-thread runtime: the last handle is dropped on this thread, where the capturing
// subscriber is the default.
#[tokio::test(flavor = "current_thread")]
async fn a_runtime_dropped_without_shutdown_warns_of_its_unwritten_points() {
    let (log, _guard) = Captured::install();

    let dir = tempfile::tempdir().unwrap();
    // Shut down, then dropped: nothing to say.
    let rt = start(&dir).await;
    rt.execute("user.login", "acme", login()).await.unwrap();
    rt.shutdown().await.unwrap();
    drop(rt);
    assert!(
        !log.text().contains("without a completed shutdown"),
        "{}",
        log.text()
    );

    let dir = tempfile::tempdir().unwrap();
    let rt = start(&dir).await;
    let clone = rt.clone();
    for _ in 0..3 {
        rt.execute("user.login", "acme", login()).await.unwrap();
    }
    let unwritten = rt.metrics().unwritten_points();
    assert!(
        unwritten >= 3,
        "{unwritten} points held in the hour's window"
    );
    drop(rt);
    // A clone still holds the runtime: no warning yet.
    assert!(!log.text().contains("without a completed shutdown"));
    drop(clone);
    let text = log.text();
    assert!(
        text.contains("dropped without a completed shutdown"),
        "{text}"
    );
    assert!(
        text.contains(&format!("unwritten_points={unwritten}")),
        "{text}"
    );
}

// An execution already running when shutdown starts finishes first, and what it recorded is
// written (it used to be dropped as `shutting_down` while its caller got `Ok`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_executions_in_flight_and_writes_their_points() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("pipelines.toml"),
        "[[pipeline]]\nid = \"slow\"\ntrigger = \"t.slow\"\n[[pipeline.node]]\nid = \"a\"\nscript = \"slow.lua\"\n",
    )
    .unwrap();
    // Busy for a while (CPU time, which runs faster when other threads are busy too), then
    // records one point: the point comes late in the execution.
    std::fs::write(
        dir.path().join("slow.lua"),
        "local t = os.clock() while os.clock() - t < 0.05 do end helpers.metrics.count('slow.done_count', 1) return {}",
    )
    .unwrap();
    let rt = Runtime::builder()
        .database_path(dir.path().join("rt.db"))
        .pipelines(dir.path().join("pipelines.toml"))
        .time_limit(Duration::from_secs(5))
        .start()
        .await
        .unwrap();
    let running = {
        let rt = rt.clone();
        tokio::spawn(async move { rt.execute("t.slow", "acme", json!({})).await })
    };
    // Until the execution holds an engine (a hang detector's bound, not a timing check).
    for _ in 0..5_000 {
        if rt.pool_status().active > 0 || running.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    rt.shutdown().await.unwrap();
    let outcome = running.await.unwrap().unwrap();
    assert_eq!(outcome.decision.status(), "ok");
    let acc = rt.accounting();
    assert_eq!(acc.user.accepted, 1, "{acc:?}");
    assert_eq!(
        acc.user.dropped_total() + acc.user.lost_total(),
        0,
        "{acc:?}"
    );
    let rows = rt
        .store()
        .find_metrics(&luametrics::store::FindQuery {
            name: "slow.done_count".into(),
            from_ms: i64::MIN,
            to_ms: i64::MAX,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(rows.iter().map(|r| r.summary.samples).sum::<u64>(), 1);
}

// A shutdown that was cancelled before it finished leaves the runtime closed but not shut
// down: dropping it still warns.
#[tokio::test(flavor = "current_thread")]
async fn a_cancelled_shutdown_still_warns_when_the_runtime_is_dropped() {
    let (log, _guard) = Captured::install();
    let dir = tempfile::tempdir().unwrap();
    let rt = start(&dir).await;
    rt.execute("user.login", "acme", login()).await.unwrap();
    // Polled once, then dropped: the shutdown started (the runtime is closed) and never ended.
    {
        let shutdown = rt.shutdown();
        tokio::pin!(shutdown);
        let _ = futures_poll_once(shutdown.as_mut()).await;
    }
    assert!(rt.is_closed());
    drop(rt);
    assert!(
        log.text().contains("without a completed shutdown"),
        "{}",
        log.text()
    );
}

/// Polls a future once (whatever it returns), so a test can start work and abandon it.
async fn futures_poll_once<F: std::future::Future + Unpin>(mut f: F) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match std::pin::Pin::new(&mut f).poll(cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        })
    })
    .await
}
