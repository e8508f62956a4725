//! A host embedding luametrics: start a runtime on the example pipelines, execute a few
//! events as a login flow would, record host metrics, query, shut down cleanly.
//!
//! `cargo run --example embed -- [path/to/db]` (default: a temporary file)

use luametrics::pipeline::Decision;
use luametrics::store::{Agg, AggregateQuery, FindQuery};
use luametrics::{ErrorKind, Runtime};
use serde_json::json;
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let db = std::env::args()
        .nth(1)
        .unwrap_or_else(|| dir.path().join("embed.db").display().to_string());
    let root = env!("CARGO_MANIFEST_DIR");
    let runtime = Runtime::builder()
        .database_path(db)
        .pipelines(format!("{root}/lua/pipelines.toml"))
        .pool_size(2)
        .time_limit(Duration::from_millis(50))
        .start()
        .await?;

    for (email, plan) in [
        ("ann@example.com", "pro"),
        ("bot@mailinator.com", "free"),
        ("bo@corp.example", "enterprise"),
    ] {
        let event = json!({ "email": email, "plan": plan, "method": "passkey", "roles": ["dev"] });
        let outcome = runtime.execute("user.login", "acme", event).await?;
        match &outcome.decision {
            Decision::Allow => println!("{email}: allowed, context {}", outcome.context),
            Decision::Block { reason, node } => println!("{email}: blocked by {node}: {reason}"),
            Decision::Error { node, message, .. } => println!("{email}: {node} failed: {message}"),
            // More decisions may come (the enum is non-exhaustive).
            other => println!("{email}: {}", other.as_str()),
        }
        let t = outcome.timings;
        println!(
            "  {:.3} ms total = wait {:.3} + script {:.3} + helpers {:.3} + overhead {:.3}",
            t.total_ms, t.wait_ms, t.script_ms, t.helpers_ms, t.overhead_ms
        );
    }
    // One error type for the whole API; its kind says what to do about it.
    match runtime.execute("user.signup", "acme", json!({})).await {
        Err(e) if e.kind() == ErrorKind::UnknownTrigger => println!("no signup pipeline: {e}"),
        Err(e) if e.kind() == ErrorKind::TenantBudget => println!("acme must slow down: {e}"),
        Err(e) => return Err(e.into()),
        Ok(outcome) => println!("signup: {:?}", outcome.decision),
    }
    // Host instrumentation lands in the same store, validated against the catalog once, when
    // the handle is made; recording never fails the host's request path (a refused handle is
    // logged once and its points counted as rejected).
    let attempts = runtime.metrics().counter(
        "auth.login.attempt",
        &[("method", "passkey"), ("status", "ok")],
    );
    attempts.increment(1);
    let now = runtime.metrics().now_ms();
    runtime.metrics().flush().await?;
    let (series, _) = runtime
        .query(&AggregateQuery {
            find: FindQuery {
                name: "logins.by_plan_count".into(),
                from_ms: now - 3_600_000,
                to_ms: now + 60_000,
                tenant: Some("acme".into()),
                ..Default::default()
            },
            agg: Agg::Sum,
            step_ms: 3_600_000,
            group_by: Some("plan".into()),
        })
        .await?;
    for s in series {
        println!("logins.by_plan_count plan={:?}: {:?}", s.group, s.points);
    }
    let summary = runtime.shutdown().await?;
    println!(
        "shut down: {} rows in the final flush, {} traces written",
        summary.final_rows, summary.traces_written
    );
    Ok(())
}
