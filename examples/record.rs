//! Records a few system and user metrics into a local libSQL file and queries them back.
//!
//! `cargo run --example record -- [path/to/db]` (default: ./luametrics.db)

use luametrics_model::{Kind, Tags};
use luametrics_recorder::{MetricsService, RecorderConfig};
use luametrics_store::{Agg, AggregateQuery, FindQuery, Location, Store};
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "luametrics.db".into());
    let store = Arc::new(Store::open(Location::parse(&path, None)?).await?);
    let service = MetricsService::start(store.clone(), RecorderConfig::default());

    service
        .counter(
            "auth.login.attempt",
            &[("method", "password"), ("status", "ok")],
        )
        .increment(1);
    for (i, plan) in ["free", "pro", "pro", "enterprise"].iter().enumerate() {
        let tags: Tags = [("plan".to_string(), plan.to_string())].into();
        service.record_user_metric(
            "acme",
            "invoice.amount",
            Kind::Histogram,
            10.0 * (i + 1) as f64,
            &tags,
        )?;
    }
    // A rejected point says why, and is counted.
    let pii: Tags = [("email".to_string(), "bob@example.com".to_string())].into();
    if let Err(e) = service.record_user_metric("acme", "invoice.amount", Kind::Histogram, 1.0, &pii)
    {
        println!("refused as expected: {e}");
    }
    service.shutdown().await?;

    let now = service.now_ms();
    let (series, tier) = store
        .aggregate(&AggregateQuery {
            find: FindQuery {
                name: "invoice.amount".into(),
                from_ms: now - 3_600_000,
                to_ms: now + 60_000,
                tenant: Some("acme".into()),
                ..Default::default()
            },
            agg: Agg::P95,
            step_ms: 3_600_000,
            group_by: Some("plan".into()),
        })
        .await?;
    println!("p95 of invoice.amount per plan over the last hour ({tier:?} tier):");
    for s in series {
        let plan = s.group.unwrap_or_default();
        for (t, v) in s.points {
            println!("  plan={plan:<12} bucket={t} p95={v:.2}");
        }
    }
    println!("accounting: {:?}", service.accounting().user);
    Ok(())
}
