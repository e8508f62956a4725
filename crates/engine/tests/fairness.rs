//! The pool's queue: engines go to waiting tenants in turn, a tenant's line is bounded, and
//! an execution whose caller gave up never runs.

use luametrics_engine::*;
use luametrics_model::TagPolicy;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

fn pool(sink: Arc<CollectingSink>, max_queued_per_tenant: usize) -> Arc<EnginePool> {
    Arc::new(
        EnginePool::new(
            EngineSettings::default(),
            PoolSettings {
                max_size: 1,
                wait_timeout_ms: 60_000,
                max_queued_per_tenant,
                ..PoolSettings::default()
            },
            sink,
        )
        .unwrap(),
    )
}

/// Each execution leaves one point, so the sink's order is the order they ran in.
fn marker() -> Script {
    Script::new(
        "mark.lua",
        "helpers.metrics.count('test.ran', 1, { n = event.n }) return event.n",
    )
}

/// Bounded polling until `n` executions wait (a hang detector, not a timing assertion).
async fn until_waiting(pool: &EnginePool, n: i64) {
    for _ in 0..4_000 {
        if pool.status().waiting == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("never {n} waiting: {:?}", pool.status());
}

fn spawn_run(
    pool: &Arc<EnginePool>,
    tenant: &str,
    n: u64,
) -> tokio::task::JoinHandle<Result<Execution, PoolError>> {
    let pool = pool.clone();
    let tenant = tenant.to_string();
    tokio::spawn(async move {
        pool.execute(&marker(), &tenant, &json!({ "n": n }), &json!({}))
            .await
    })
}

/// Tenants in the order their executions ran.
fn ran(sink: &CollectingSink) -> Vec<String> {
    sink.points.lock().iter().map(|(t, _)| t.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_tenant_waits_behind_its_own_work_not_in_front_of_others() {
    let sink = Arc::new(CollectingSink::new(TagPolicy::default()));
    let pool = pool(sink.clone(), 64);
    let held = pool.checkout().await.unwrap();
    let mut calls = Vec::new();
    for n in 0..6 {
        calls.push(spawn_run(&pool, "flood", n));
        until_waiting(&pool, n as i64 + 1).await;
    }
    calls.push(spawn_run(&pool, "calm", 100));
    until_waiting(&pool, 7).await;
    drop(held);
    for c in calls {
        let ex = c.await.unwrap().unwrap();
        assert!(ex.result.is_ok(), "{:?}", ex.result);
        assert!(
            ex.timings.wait_ms > 0.0,
            "a queued execution reports its wait"
        );
    }
    // Arrival order would run `calm` last; in turn it runs second.
    assert_eq!(
        ran(&sink),
        ["flood", "calm", "flood", "flood", "flood", "flood", "flood"]
    );
    let s = pool.status();
    assert_eq!((s.waiting, s.active, s.exhausted), (0, 0, 7), "{s:?}");
    assert_eq!(s.peak_waiting, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_line_refuses_that_tenant_only() {
    let sink = Arc::new(CollectingSink::new(TagPolicy::default()));
    let pool = pool(sink.clone(), 2);
    let held = pool.checkout().await.unwrap();
    let a1 = spawn_run(&pool, "flood", 1);
    let a2 = spawn_run(&pool, "flood", 2);
    until_waiting(&pool, 2).await;
    let refused = pool
        .execute(&marker(), "flood", &json!({ "n": 3 }), &json!({}))
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, PoolError::QueueFull { tenant, limit: 2 } if tenant == "flood"),
        "{refused}"
    );
    assert!(refused.to_string().contains("flood"), "{refused}");
    let b = spawn_run(&pool, "calm", 4);
    until_waiting(&pool, 3).await;
    drop(held);
    for c in [a1, a2, b] {
        assert!(c.await.unwrap().unwrap().result.is_ok());
    }
    assert_eq!(ran(&sink).len(), 3, "the refused execution never ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execution_whose_caller_went_away_never_runs() {
    let sink = Arc::new(CollectingSink::new(TagPolicy::default()));
    let pool = pool(sink.clone(), 64);
    let held = pool.checkout().await.unwrap();
    let gone = spawn_run(&pool, "a", 1);
    until_waiting(&pool, 1).await;
    let stays = spawn_run(&pool, "b", 2);
    until_waiting(&pool, 2).await;
    gone.abort();
    assert!(gone.await.unwrap_err().is_cancelled());
    drop(held);
    assert_eq!(stays.await.unwrap().unwrap().result.unwrap(), json!(2));
    assert_eq!(ran(&sink), ["b"]);
    // Its place went on: the pool is whole again.
    let s = pool.status();
    assert_eq!((s.active, s.size, s.available), (0, 1, 1), "{s:?}");
    let ex = pool
        .execute(&marker(), "a", &json!({ "n": 3 }), &json!({}))
        .await
        .unwrap();
    assert_eq!(ex.result.unwrap(), json!(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_execution_times_out_with_the_pool_wait() {
    let sink = Arc::new(CollectingSink::new(TagPolicy::default()));
    let pool = Arc::new(
        EnginePool::new(
            EngineSettings::default(),
            PoolSettings {
                max_size: 1,
                wait_timeout_ms: 50,
                ..PoolSettings::default()
            },
            sink.clone(),
        )
        .unwrap(),
    );
    let held = pool.checkout().await.unwrap();
    let err = pool
        .execute(&marker(), "a", &json!({ "n": 1 }), &json!({}))
        .await
        .unwrap_err();
    assert!(matches!(err, PoolError::Timeout { .. }), "{err}");
    drop(held);
    let s = pool.status();
    assert_eq!((s.timeouts, s.waiting, s.active), (1, 0, 0), "{s:?}");
    assert!(ran(&sink).is_empty(), "a timed-out execution never runs");
}

// Engine time is charged as each execution measured it (a ticking clock makes it exact here);
// once a tenant's bucket is spent its executions are refused before they take an engine, and
// other tenants are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_engine_time_budget_refuses_that_tenant_before_checkout() {
    let sink = Arc::new(CollectingSink::new(TagPolicy::default()));
    let pool = EnginePool::new(
        EngineSettings {
            clock: Clock::ticking(Duration::from_millis(1)),
            ..EngineSettings::default()
        },
        PoolSettings {
            max_size: 1,
            // 1 µs per second: no refill within the test; 2 ms at once.
            tenant_engine_ms_per_s: 0.001,
            tenant_engine_burst_ms: 2.0,
            ..PoolSettings::default()
        },
        sink.clone(),
    )
    .unwrap();
    let mut ran = 0;
    let refused = loop {
        match pool
            .execute(&marker(), "greedy", &json!({ "n": ran }), &json!({}))
            .await
        {
            Ok(ex) => {
                assert!(ex.result.is_ok(), "{:?}", ex.result);
                ran += 1;
                assert!(
                    ran < 100,
                    "never refused: {:?}",
                    pool.tenant_usage("greedy")
                );
            }
            Err(e) => break e,
        }
    };
    // Each execution measures at least a tick (1 ms) of script time: the 2 ms last at most
    // two executions.
    assert!((1..=2).contains(&ran), "{ran}");
    match &refused {
        PoolError::TenantBudget {
            tenant,
            retry_after_ms,
        } => {
            assert_eq!(tenant, "greedy");
            assert!(*retry_after_ms > 1_000, "{retry_after_ms}");
        }
        other => panic!("{other}"),
    }
    assert_eq!(refused.code(), "tenant_budget");
    let usage = pool.tenant_usage("greedy");
    assert_eq!(usage.throttled, 1, "{usage:?}");
    assert!(
        usage.used_ms >= 2.0 && usage.available_ms <= 0.0,
        "{usage:?}"
    );
    assert_eq!(pool.status().checkouts, ran, "a refusal takes no engine");
    // What was charged is all the time the executions held the engine, overhead included
    // (adversary round 8: converting a 1 MB event was charged to nobody): on the ticking
    // clock, the executions' total time exactly.
    let other = pool
        .execute(&marker(), "measured", &json!({ "n": 0 }), &json!({}))
        .await
        .unwrap();
    let charged = pool.tenant_usage("measured").used_ms;
    assert_eq!(charged, other.timings.total_ms, "{:?}", other.timings);
    assert!(charged > other.timings.script_ms + other.timings.helpers_ms);
    let other = pool
        .execute(&marker(), "modest", &json!({ "n": 1 }), &json!({}))
        .await
        .unwrap();
    assert!(other.result.is_ok());
    assert_eq!(pool.tenant_usage("modest").throttled, 0);
}

#[test]
fn a_budget_that_could_admit_nothing_is_refused_at_start() {
    for (rate, burst) in [
        (100.0, 0.0),
        (-1.0, 10.0),
        (f64::NAN, 10.0),
        (10.0, f64::INFINITY),
    ] {
        let err = EnginePool::new(
            EngineSettings::default(),
            PoolSettings {
                tenant_engine_ms_per_s: rate,
                tenant_engine_burst_ms: burst,
                ..PoolSettings::default()
            },
            Arc::new(CollectingSink::new(TagPolicy::default())),
        )
        .err()
        .unwrap_or_else(|| panic!("({rate}, {burst}) accepted"));
        assert!(matches!(err, PoolError::Settings(_)), "{err}");
        assert!(err.to_string().contains("tenant_engine_burst_ms"), "{err}");
    }
    // No budget at all is fine.
    assert!(EnginePool::new(
        EngineSettings::default(),
        PoolSettings {
            tenant_engine_ms_per_s: 0.0,
            tenant_engine_burst_ms: 0.0,
            ..PoolSettings::default()
        },
        Arc::new(CollectingSink::new(TagPolicy::default())),
    )
    .is_ok());
}
