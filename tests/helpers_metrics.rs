//! helpers.metrics end to end: every reason, strict mode, quotas, and accepted points in a real
//! libSQL store; the pool under random failures; the time split.

use luametrics_engine::*;
use luametrics_model::{Limits, TagPolicy};
use luametrics_recorder::{MetricsService, RecorderConfig};
use luametrics_store::{FindQuery, Location, Store};
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::sync::Arc;

async fn service(limits: Limits) -> (tempfile::TempDir, Arc<Store>, MetricsService) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        Store::open(Location::File(dir.path().join("m.db")))
            .await
            .unwrap(),
    );
    let config = RecorderConfig {
        policy: TagPolicy::new(
            luametrics_model::DEFAULT_DENIED_KEYS
                .iter()
                .map(|s| s.to_string()),
            limits,
        ),
        ..RecorderConfig::default()
    };
    let svc = MetricsService::start(store.clone(), config);
    (dir, store, svc)
}

fn pool(sink: Arc<dyn MetricsSink>, engine: EngineSettings, size: usize) -> EnginePool {
    EnginePool::new(
        engine,
        PoolSettings {
            // One tenant saturates the pool on purpose: no engine-time budget.
            tenant_engine_ms_per_s: 0.0,
            max_size: size,
            wait_timeout_ms: 30_000,
            sample_interval_ms: 1_000,
            ..PoolSettings::default()
        },
        sink,
    )
    .unwrap()
}

/// A pool of one engine whose helpers raise instead of returning `false, reason`.
fn strict_pool(sink: Arc<dyn MetricsSink>) -> EnginePool {
    pool(
        sink,
        EngineSettings {
            strict: true,
            ..EngineSettings::default()
        },
        1,
    )
}

/// The line and message of an execution's runtime error.
fn runtime_error(ex: &Execution) -> (Option<u32>, &str) {
    match &ex.result {
        Err(ScriptError::Runtime { line, message, .. }) => (*line, message.as_str()),
        other => panic!("{other:?}"),
    }
}

/// Runs `script` for `tenant` with an empty event and context.
async fn run(pool: &EnginePool, script: &Script, tenant: &str) -> Execution {
    pool.execute(script, tenant, &json!({}), &json!({}))
        .await
        .unwrap()
}

const REASONS: &str = r#"
local m = helpers.metrics
local function r(ok, reason) return ok and "ok" or reason end
local nine = {}
for i = 1, 9 do nine["k" .. i] = "v" end
return {
  ok_count = r(m.count("invoice.processed_count", 2, { plan = "pro", region = "eu" })),
  ok_default = r(m.count("invoice.processed_count")),
  ok_gauge = r(m.gauge("queue.depth", -3, { queue = "mail", urgent = true })),
  ok_hist = r(m.histogram("invoice.amount", 99.5, { currency = "EUR", n = 3 })),
  invalid_name = r(m.count("Bad Name", 1)),
  invalid_name_type = r(m.count(42, 1)),
  invalid_value_nan = r(m.gauge("queue.depth", 0/0)),
  invalid_value_inf = r(m.gauge("queue.depth", math.huge)),
  invalid_value_str = r(m.histogram("invoice.amount", "12")),
  invalid_tags_type = r(m.count("a.b", 1, "plan=pro")),
  invalid_tags_nested = r(m.count("a.b", 1, { plan = { "pro" } })),
  invalid_tags_key = r(m.count("a.b", 1, { [1] = "x" })),
  invalid_tags_tenant = r(m.count("a.b", 1, { tenant = "other" })),
  invalid_tags_utf8 = r(m.count("a.b", 1, { plan = "\xff\xfe" })),
  negative_counter = r(m.count("a.b", -1)),
  reserved_prefix = r(m.count("auth.login.attempt", 1)),
  too_many_tags = r(m.count("a.b", 1, nine)),
  tag_key_too_long = r(m.count("a.b", 1, { [string.rep("k", 41)] = "v" })),
  tag_value_too_long = r(m.count("a.b", 1, { plan = string.rep("v", 65) })),
  pii_key = r(m.count("a.b", 1, { email = "x" })),
  pii_value = r(m.count("a.b", 1, { who = "jane@example.com" })),
  kind_mismatch = r(m.gauge("queue.size.count", 1)),
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reason_and_accepted_points_reach_the_store() {
    let (_dir, store, svc) = service(Limits::default()).await;
    let pool = pool(Arc::new(svc.clone()), EngineSettings::default(), 2);
    let s = Script::new("reasons.lua", REASONS);
    let ex = run(&pool, &s, "acme").await;
    let want = json!({
        "ok_count": "ok", "ok_default": "ok", "ok_gauge": "ok", "ok_hist": "ok",
        "invalid_name": "invalid_name", "invalid_name_type": "invalid_name",
        "invalid_value_nan": "invalid_value", "invalid_value_inf": "invalid_value",
        "invalid_value_str": "invalid_value",
        "invalid_tags_type": "invalid_tags", "invalid_tags_nested": "invalid_tags",
        "invalid_tags_key": "invalid_tags", "invalid_tags_tenant": "invalid_tags",
        "invalid_tags_utf8": "invalid_tags",
        "negative_counter": "negative_counter", "reserved_prefix": "reserved_prefix",
        "too_many_tags": "too_many_tags", "tag_key_too_long": "tag_key_too_long",
        "tag_value_too_long": "tag_value_too_long", "pii_key": "pii_tag", "pii_value": "pii_tag",
        "kind_mismatch": "kind_mismatch",
    });
    assert_eq!(ex.result, Ok(want));
    assert_eq!(ex.metrics.accepted, 4);
    assert_eq!(ex.metrics.rejected.values().sum::<u64>(), 18);
    assert!(
        ex.warnings.iter().any(|w| w.metric == "auth.login.attempt"
            && w.reason == "reserved_prefix"
            && w.count == 1),
        "{:?}",
        ex.warnings
    );

    // The execution limit: the 251st point in one execution is refused.
    let s = Script::new(
        "many.lua",
        r#"
        local ok, last
        for i = 1, 300 do
          local a, b = helpers.metrics.count("loop.iterations_count", 1, { i = i % 3 })
          if a then ok = (ok or 0) + 1 else last = b end
        end
        return { ok = ok, last = last }
        "#,
    );
    let ex = run(&pool, &s, "acme").await;
    assert_eq!(ex.result, Ok(json!({"ok": 250, "last": "execution_limit"})));

    svc.flush().await.unwrap();
    let rows = |name: &str| {
        let store = store.clone();
        let name = name.to_string();
        async move {
            store
                .find_metrics(&FindQuery {
                    name,
                    from_ms: i64::MIN,
                    to_ms: i64::MAX,
                    tenant: Some("acme".into()),
                    ..Default::default()
                })
                .await
                .unwrap()
        }
    };
    let invoices = rows("invoice.processed_count").await;
    assert_eq!(invoices.iter().map(|r| r.summary.sum).sum::<f64>(), 3.0);
    let tagged = invoices
        .iter()
        .find(|r| r.tags.get("plan").map(String::as_str) == Some("pro"))
        .unwrap();
    assert_eq!(tagged.tags.get("region").map(String::as_str), Some("eu"));
    let gauge = &rows("queue.depth").await[0];
    assert_eq!(gauge.value, -3.0);
    assert_eq!(gauge.tags.get("urgent").map(String::as_str), Some("true"));
    let hist = &rows("invoice.amount").await[0];
    assert_eq!(hist.summary.samples, 1);
    assert_eq!(hist.tags.get("n").map(String::as_str), Some("3"));
    assert_eq!(
        rows("loop.iterations_count")
            .await
            .iter()
            .map(|r| r.summary.sum)
            .sum::<f64>(),
        250.0
    );
    // Rejections are counted as a system metric and in the accounting.
    let rejected = store
        .find_metrics(&FindQuery {
            name: "helpers.metrics.rejected.count".into(),
            from_ms: i64::MIN,
            to_ms: i64::MAX,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        rejected.iter().map(|r| r.summary.sum).sum::<f64>(),
        18.0 + 50.0
    );
    let acc = svc.accounting();
    assert_eq!(acc.user.accepted, 254);
    assert_eq!(acc.user.rejected_total(), 68);
    assert!(acc.user.balances());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_apply_per_tenant_and_strict_mode_raises() {
    let (_dir, _store, svc) = service(Limits {
        points_per_minute: 1,
        burst: 20,
        ..Limits::default()
    })
    .await;
    let sink: Arc<dyn MetricsSink> = Arc::new(svc.clone());
    let p = pool(sink.clone(), EngineSettings::default(), 1);
    let s = Script::new(
        "burst.lua",
        r#"
        local ok, reason = 0, nil
        for i = 1, 30 do
          local a, b = helpers.metrics.count("burst.events_count", 1)
          if a then ok = ok + 1 else reason = b end
        end
        return { ok = ok, reason = reason }
        "#,
    );
    let ex = run(&p, &s, "acme").await;
    assert_eq!(ex.result, Ok(json!({"ok": 20, "reason": "rate_limited"})));
    // Spent: the next execution of the same tenant is limited; another tenant is not.
    let ex = run(&p, &s, "acme").await;
    assert_eq!(ex.result, Ok(json!({"ok": 0, "reason": "rate_limited"})));
    let ex = run(&p, &s, "globex").await;
    assert_eq!(ex.result, Ok(json!({"ok": 20, "reason": "rate_limited"})));

    let strict = strict_pool(sink);
    let s = Script::new(
        "strict.lua",
        "helpers.metrics.count('fine.events_count')\nhelpers.metrics.count('auth.x', 1)\n",
    );
    let ex = run(&strict, &s, "initech").await;
    let (line, message) = runtime_error(&ex);
    assert_eq!(line, Some(2));
    assert!(message.contains("reserved_prefix"), "{message}");
    // What was accepted before the error stays accepted.
    assert_eq!(ex.metrics.accepted, 1);
}

// Four workers for eight tasks on two engines: an execution holds its worker while it runs,
// so with two workers no checkout would ever find both engines out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_executions_with_random_failures_on_a_pool_of_two() {
    let (_dir, _store, svc) = service(Limits {
        points_per_minute: u32::MAX,
        burst: u32::MAX,
        ..Limits::default()
    })
    .await;
    let pool = Arc::new(pool(
        Arc::new(svc.clone()),
        EngineSettings {
            // Far above what the ordinary scripts need on any machine: only the endless
            // script is given a short limit, below.
            time_limit_ms: 60_000,
            memory_limit_bytes: 2 * 1024 * 1024,
            ..EngineSettings::default()
        },
        2,
    ));
    let scripts = [
        Script::new("ok.lua", "assert(dirty == nil, 'dirty engine') dirty = true helpers.metrics.count('runs.ok_count') return event.i"),
        Script::new("error.lua", "dirty = true error('boom')"),
        Script::new("timeout.lua", "dirty = true while true do end"),
        Script::new("memory.lua", "dirty = true local t = {} for i = 1, 100 do t[i] = ('m'):rep(1e6) .. i end"),
    ];
    let mut tasks = Vec::new();
    for worker in 0..8u64 {
        let pool = pool.clone();
        let scripts = scripts.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(worker);
            let mut counts = [0u64; 4];
            let mut queued = 0u64;
            for i in 0..1_250u64 {
                let roll = rng.gen_range(0..1000);
                let pick = if roll < 940 {
                    0
                } else if roll < 980 {
                    1
                } else if roll < 992 {
                    2
                } else {
                    3
                };
                let mut engine = pool.checkout().await.unwrap();
                queued += engine.queued as u64;
                let limit = (pick == 2).then_some(10);
                let ex = engine.execute_limited(
                    &scripts[pick],
                    &format!("t{}", i % 5),
                    &json!({"i": i}),
                    &json!({}),
                    limit,
                );
                let status = pool.status();
                assert!(status.size <= 2 && status.active <= 2, "{status:?}");
                match (pick, &ex.result) {
                    (0, Ok(v)) => assert_eq!(v, &json!(i)),
                    (1, Err(ScriptError::Runtime { .. })) => {}
                    (2, Err(ScriptError::Timeout { limit_ms: 10, .. })) => {}
                    (3, Err(ScriptError::Memory { .. })) => {}
                    other => panic!("unexpected {other:?}"),
                }
                drop(engine);
                counts[pick] += 1;
            }
            (counts, queued)
        }));
    }
    let mut counts = [0u64; 4];
    let mut queued = 0;
    for t in tasks {
        let (c, q) = t.await.unwrap();
        for i in 0..4 {
            counts[i] += c[i];
        }
        queued += q;
    }
    let status = pool.status();
    assert_eq!(counts.iter().sum::<u64>(), 10_000);
    assert_eq!(status.active, 0);
    assert_eq!(status.waiting, 0);
    assert_eq!(status.timeouts, 0);
    assert_eq!(status.checkouts, 10_000);
    // Whether checkouts queued here depends on scheduling: the exact count is checked by
    // `exhaustion_counts_exactly_the_checkouts_that_queued`. Here: never more waiting than
    // runners, and each queued checkout was counted.
    assert!(status.peak_waiting <= 8, "{status:?}");
    assert!(status.exhausted >= queued, "{status:?}");
    // Every limit hit discarded its engine; errors did not.
    let discarded = |r: &str| status.discarded.get(r).copied().unwrap_or(0);
    assert_eq!(discarded("timeout"), counts[2]);
    assert_eq!(discarded("memory"), counts[3]);
    assert_eq!(status.created, status.size as u64 + counts[2] + counts[3]);
    // The pool's metrics land in the recorder.
    pool.record_metrics();
    svc.flush().await.unwrap();
    let acc = svc.accounting();
    assert_eq!(acc.user.accepted, counts[0]);
}

// The test makes exactly `QUEUED` checkouts queue (both engines held), so what the pool counts
// is checked against what happened, not against its own copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhaustion_counts_exactly_the_checkouts_that_queued() {
    const QUEUED: usize = 5;
    let sink = Arc::new(CollectingSink::new(TagPolicy::default()));
    let pool = Arc::new(pool(sink.clone(), EngineSettings::default(), 2));
    let a = pool.checkout().await.unwrap();
    let b = pool.checkout().await.unwrap();
    assert!(!a.queued && !b.queued);
    let mut waiters = Vec::new();
    for _ in 0..QUEUED {
        let pool = pool.clone();
        waiters.push(tokio::spawn(async move {
            let e = pool.checkout().await.unwrap();
            e.queued
        }));
    }
    // Bounded polling until every waiter is in the queue (not a timing assertion).
    let mut seen = 0;
    for _ in 0..2_000 {
        seen = pool.status().waiting;
        if seen == QUEUED as i64 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(seen, QUEUED as i64, "{:?}", pool.status());
    drop((a, b));
    for w in waiters {
        assert!(w.await.unwrap(), "a checkout made to wait says it queued");
    }
    let s = pool.status();
    assert_eq!(s.exhausted, QUEUED as u64, "{s:?}");
    assert_eq!(s.peak_waiting, QUEUED as i64, "{s:?}");
    assert_eq!(
        (s.waiting, s.active, s.checkouts),
        (0, 0, 2 + QUEUED as u64)
    );
    pool.record_metrics();
    let system = sink.system.lock();
    let find = |n: &str| {
        system
            .iter()
            .find(|(name, ..)| name == n)
            .map(|(_, _, v, _)| *v)
    };
    assert_eq!(find("lua.pool.exhausted"), Some(QUEUED as f64));
    assert_eq!(find("lua.pool.waiting"), Some(QUEUED as f64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_wait_timeouts_and_exhaustion_are_counted() {
    let sink = Arc::new(CollectingSink::new(TagPolicy::default()));
    let pool = EnginePool::new(
        EngineSettings::default(),
        PoolSettings {
            // One tenant saturates the pool on purpose: no engine-time budget.
            tenant_engine_ms_per_s: 0.0,
            max_size: 1,
            wait_timeout_ms: 50,
            sample_interval_ms: 1_000,
            ..PoolSettings::default()
        },
        sink.clone(),
    )
    .unwrap();
    let held = pool.checkout().await.unwrap();
    let err = pool.checkout().await.unwrap_err();
    assert!(
        matches!(err, PoolError::Timeout { max_size: 1, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("no Lua engine"));
    drop(held);
    let s = pool.status();
    assert_eq!((s.timeouts, s.exhausted, s.active, s.waiting), (1, 1, 0, 0));
    pool.record_metrics();
    let system = sink.system.lock();
    let find = |n: &str| {
        system
            .iter()
            .find(|(name, ..)| name == n)
            .map(|(_, _, v, _)| *v)
    };
    assert_eq!(find("lua.pool.timeout.count"), Some(1.0));
    assert_eq!(find("lua.pool.exhausted"), Some(1.0));
    assert_eq!(find("lua.pool.waiting"), Some(1.0)); // the peak since the last sample
    assert_eq!(find("lua.pool.size"), Some(1.0));
    assert_eq!(find("lua.engine.created.count"), Some(1.0));
}

/// The engine's part of the total: the pool's wait is real time, added to it.
fn engine_total(t: &Timings) -> f64 {
    ((t.total_ms - t.wait_ms) * 1e6).round() / 1e6
}

// The split is checked on a ticking clock (each reading is one millisecond later than the
// last), so an interval is worth exactly the readings taken inside it: scripts with a known
// number of host calls have a known split, whatever the machine's speed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_time_split_lands_where_the_work_is() {
    let (_dir, _store, svc) = service(Limits {
        points_per_minute: u32::MAX,
        burst: u32::MAX,
        max_points_per_execution: 100_000,
        ..Limits::default()
    })
    .await;
    let pool = pool(
        Arc::new(svc.clone()),
        EngineSettings {
            time_limit_ms: 60_000,
            clock: Clock::ticking(std::time::Duration::from_millis(1)),
            ..EngineSettings::default()
        },
        1,
    );
    // Readings: start, call, return, hand-off start and end, end. No host call inside the
    // script: the call is one tick of script time, the (empty) hand-off one tick of helper
    // time, and overhead the three ticks around them, however long the loop really ran.
    let cpu = Script::new(
        "cpu.lua",
        "local x = 0 for i = 1, 3e5 do x = x + i % 7 end return x",
    );
    let ex = run(&pool, &cpu, "t").await;
    assert!(ex.result.is_ok(), "{ex:?}");
    let t = ex.timings;
    assert_eq!(
        (
            t.script_ms,
            t.helpers_ms,
            t.overhead_ms,
            t.total_ms - t.wait_ms
        ),
        (1.0, 1.0, 3.0, 5.0),
        "{t:?}"
    );

    // K first sights: each crosses into Rust twice (validate, take), two readings each, all
    // inside the call. Helper time is one tick per crossing plus the hand-off; script time is
    // what is left of the call: K crossings' worth of gaps plus the return.
    const K: f64 = 3000.0;
    let helpers = Script::new(
        "helpers.lua",
        "for i = 1, 3000 do helpers.metrics.count('distinct.series_count', 1, { k = 'v' .. i }) end",
    );
    let ex = run(&pool, &helpers, "t").await;
    assert!(ex.result.is_ok(), "{ex:?}");
    assert_eq!(ex.metrics.accepted, 3000);
    let t = ex.timings;
    assert_eq!(t.helpers_ms, 2.0 * K + 1.0, "{t:?}");
    assert_eq!(t.script_ms, 2.0 * K + 1.0, "{t:?}");
    assert_eq!(t.overhead_ms, 3.0, "{t:?}");
    assert_eq!(engine_total(&t), 4.0 * K + 5.0, "{t:?}");

    // The same series again: cached verdicts on the C fast path, which crosses into Rust only
    // to refill its quota lease (the lease doubles: a handful of crossings for 3000 points).
    let ex = run(&pool, &helpers, "t").await;
    assert_eq!(ex.metrics.accepted, 3000);
    let t = ex.timings;
    assert_eq!(t.script_ms, t.helpers_ms, "{t:?}");
    assert!(t.helpers_ms >= 2.0 && t.helpers_ms <= 16.0, "{t:?}");

    // A print is a host call: one tick of helper time inside the call.
    let print = Script::new("print.lua", "print('a') print('b') return 1");
    let t = run(&pool, &print, "t").await.timings;
    assert_eq!((t.script_ms, t.helpers_ms), (3.0, 3.0), "{t:?}");

    // A syntax error never calls the script: everything is overhead but the hand-off.
    let bad = Script::new("bad.lua", "return +");
    let ex = run(&pool, &bad, "t").await;
    assert!(
        matches!(ex.result, Err(ScriptError::Syntax { .. })),
        "{ex:?}"
    );
    let t = ex.timings;
    assert_eq!(
        (t.script_ms, t.helpers_ms, t.overhead_ms),
        (0.0, 1.0, 2.0),
        "{t:?}"
    );

    // The pool's wait is measured on its own and added: total = wait + the engine's parts.
    let ex = run(&pool, &cpu, "t").await;
    let t = ex.timings;
    assert!(t.wait_ms >= 0.0 && t.wait_ms.is_finite(), "{t:?}");
    assert_eq!(engine_total(&t), 5.0, "{t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_verdict_cache_resets_past_its_bound_without_losing_points() {
    let sink = Arc::new(CollectingSink::new(TagPolicy::default()));
    let pool = pool(
        sink.clone(),
        EngineSettings {
            max_verdicts: 8,
            ..EngineSettings::default()
        },
        1,
    );
    let s = Script::new(
        "many.lua",
        "local ok = 0 for i = 1, 50 do if helpers.metrics.count('shop.orders_count', 1, { shop = 's' .. i % 25 }) then ok = ok + 1 end end return ok",
    );
    for _ in 0..3 {
        let ex = run(&pool, &s, "acme").await;
        assert_eq!(ex.result, Ok(json!(50)));
        assert_eq!(ex.metrics.accepted, 50);
    }
    let points = sink.points.lock();
    let total: u64 = points.iter().map(|(_, p)| p.summary.samples).sum();
    assert_eq!(total, 150);
    let sum: f64 = points.iter().map(|(_, p)| p.summary.sum).sum();
    assert_eq!(sum, 150.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_verdicts_give_the_same_answers_as_first_sights() {
    // One engine: the second and third runs meet every name/tag set in the verdict cache, so
    // the C fast path and the slow path it hands rejections to answer them.
    let (_dir, _store, svc) = service(Limits::default()).await;
    let pool = pool(Arc::new(svc.clone()), EngineSettings::default(), 1);
    let s = Script::new("reasons.lua", REASONS);
    let first = run(&pool, &s, "acme").await;
    for _ in 0..2 {
        let again = run(&pool, &s, "acme").await;
        assert_eq!(again.result, first.result);
        assert_eq!(again.metrics, first.metrics);
        assert_eq!(again.warnings, first.warnings);
    }
    // Rejections belong to their execution: a clean one after them reports none.
    let clean = Script::new(
        "clean.lua",
        "return helpers.metrics.count('invoice.processed_count')",
    );
    let ex = run(&pool, &clean, "acme").await;
    assert_eq!(ex.result, Ok(json!(true)));
    assert!(ex.metrics.rejected.is_empty(), "{:?}", ex.metrics);
    assert!(ex.warnings.is_empty(), "{:?}", ex.warnings);
    let again = run(&pool, &s, "acme").await;
    assert_eq!(again.metrics, first.metrics);
}

fn collecting() -> Arc<CollectingSink> {
    Arc::new(CollectingSink::new(TagPolicy::default()))
}

/// A point as the tests compare it: `(name, tags, samples, sum)`.
type Seen = (String, Vec<(String, String)>, u64, f64);

/// Points the sink got, sorted.
fn collected(sink: &CollectingSink) -> Vec<Seen> {
    let mut out: Vec<_> = sink
        .points
        .lock()
        .iter()
        .map(|(_, p)| {
            (
                p.series.name().to_string(),
                p.series.tags().clone().into_iter().collect::<Vec<_>>(),
                p.summary.samples,
                p.summary.sum,
            )
        })
        .collect();
    out.sort_by(|a, b| a.partial_cmp(b).unwrap());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_tables_built_in_any_order_are_one_series() {
    let sink = collecting();
    let pool = pool(sink.clone(), EngineSettings::default(), 1);
    // Built in different orders, and with a number where another call has its string: the
    // tables may iterate differently, but their tags are the same.
    let s = Script::new(
        "orders.lua",
        r#"
        local m = helpers.metrics
        for i = 1, 20 do
          m.count("shop.orders_count", 1, { a = "1", b = "2", c = "3" })
          local t = {} t.c = "3" t.b = "2" t.a = "1"
          m.count("shop.orders_count", 1, t)
          m.count("shop.orders_count", 1, { c = 3, a = 1, b = 2 })
        end
        return true
        "#,
    );
    for _ in 0..2 {
        let ex = run(&pool, &s, "acme").await;
        assert_eq!(ex.result, Ok(json!(true)));
        assert_eq!(ex.metrics.accepted, 60);
    }
    let tags = vec![
        ("a".to_string(), "1".to_string()),
        ("b".to_string(), "2".to_string()),
        ("c".to_string(), "3".to_string()),
    ];
    // One point per execution, not one per table layout.
    assert_eq!(
        collected(&sink),
        vec![
            ("shop.orders_count".to_string(), tags.clone(), 60, 60.0),
            ("shop.orders_count".to_string(), tags, 60, 60.0),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_misses_of_a_cached_series_are_told_apart() {
    let sink = collecting();
    let pool = pool(sink.clone(), EngineSettings::default(), 1);
    // Every call after the first of each line meets a cached prefix of its path: a tag more,
    // a tag less, no tags, another value, or an argument the cached series would not accept.
    let s = Script::new(
        "near.lua",
        r#"
        local m = helpers.metrics
        local function r(ok, reason) return ok and "ok" or reason end
        local out = {}
        for i = 1, 3 do
          m.count("n.hits_count", 1, { a = "x", b = "y" })
          m.count("n.hits_count", 1, { a = "x" })
          m.count("n.hits_count", 1, { a = "x", b = "y", c = "z" })
          m.count("n.hits_count", 2)
          m.count("n.hits_count", 1, { a = "x", b = "w" })
          m.gauge("n.level", i, { a = "x", b = "y" })
          m.histogram("n.size", i * 10, { a = "x", b = "y" })
          out = {
            extra_bad_key = r(m.count("n.hits_count", 1, { a = "x", b = "y", [1] = "z" })),
            nan_tag = r(m.count("n.hits_count", 1, { a = "x", b = 0/0 })),
            string_value = r(m.count("n.hits_count", "1", { a = "x", b = "y" })),
            negative = r(m.count("n.hits_count", -1, { a = "x", b = "y" })),
            infinite_gauge = r(m.gauge("n.level", -math.huge, { a = "x", b = "y" })),
            tags_not_table = r(m.count("n.hits_count", 1, "a=x")),
            default_value = r(m.count("n.hits_count", nil, { a = "x", b = "y" })),
            in_coroutine = r(coroutine.wrap(function()
              return m.count("n.hits_count", 1, { a = "x", b = "y" })
            end)()),
            through_pcall = select(2, pcall(m.count, "n.hits_count", 1, { a = "x", b = "y" })),
          }
        end
        return out
        "#,
    );
    let ex = run(&pool, &s, "acme").await;
    assert_eq!(
        ex.result,
        Ok(json!({
            "extra_bad_key": "invalid_tags", "nan_tag": "invalid_tags",
            "string_value": "invalid_value", "negative": "negative_counter",
            "infinite_gauge": "invalid_value", "tags_not_table": "invalid_tags",
            "default_value": "ok", "in_coroutine": "ok", "through_pcall": true,
        }))
    );
    let s2 = |k: &str, v: &str| (k.to_string(), v.to_string());
    assert_eq!(
        collected(&sink),
        vec![
            ("n.hits_count".into(), vec![], 3, 6.0),
            ("n.hits_count".into(), vec![s2("a", "x")], 3, 3.0),
            (
                "n.hits_count".into(),
                vec![s2("a", "x"), s2("b", "w")],
                3,
                3.0
            ),
            // 3 plain calls, and per iteration the default value, the coroutine and pcall.
            (
                "n.hits_count".into(),
                vec![s2("a", "x"), s2("b", "y")],
                12,
                12.0
            ),
            (
                "n.hits_count".into(),
                vec![s2("a", "x"), s2("b", "y"), s2("c", "z")],
                3,
                3.0
            ),
            ("n.level".into(), vec![s2("a", "x"), s2("b", "y")], 3, 6.0),
            ("n.size".into(), vec![s2("a", "x"), s2("b", "y")], 3, 60.0),
        ]
    );
    assert_eq!(ex.metrics.rejected.values().sum::<u64>(), 18);
    // A histogram's values reach its sketch: 10, 20, 30.
    let points = sink.points.lock();
    let size = &points
        .iter()
        .find(|(_, p)| p.series.name() == "n.size")
        .unwrap()
        .1;
    let sketch = size.summary.sketch.as_ref().unwrap();
    assert_eq!(sketch.count(), 3);
    let median = sketch.quantile(0.5).unwrap();
    assert!((median - 20.0).abs() <= 0.2, "{median}");
    assert_eq!((size.summary.min, size.summary.max), (10.0, 30.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mode_blames_the_script_line_for_a_cached_rejection() {
    let pool = strict_pool(collecting());
    let s = Script::new(
        "strict.lua",
        "local ok = pcall(helpers.metrics.count, 'auth.x', 1)\n\nhelpers.metrics.count('auth.x', 1)\n",
    );
    let ex = run(&pool, &s, "acme").await;
    let (line, message) = runtime_error(&ex);
    assert_eq!(line, Some(3));
    assert!(message.contains("auth.x: reserved_prefix"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_hold_inside_the_helpers_and_huge_tag_tables_are_refused() {
    let sink = collecting();
    // A limit far above the work: 250 first sights, a 100,000-entry table and its refusal fit
    // in it on any machine; only the endless loop reaches it.
    let pool = pool(
        sink.clone(),
        EngineSettings {
            time_limit_ms: 5_000,
            ..EngineSettings::default()
        },
        1,
    );
    // Endless first sights: the time limit ends it inside the slow path.
    let endless = Script::new(
        "endless.lua",
        "local i = 0 while true do i = i + 1 helpers.metrics.count('x.y_count', 1, { k = 'v' .. i }) end",
    );
    let ex = run(&pool, &endless, "acme").await;
    assert!(
        matches!(ex.result, Err(ScriptError::Timeout { .. })),
        "{:?}",
        ex.result
    );
    // What was accepted before the limit is kept (within the execution's 250 points).
    assert_eq!(ex.metrics.accepted, 250);

    // A tags table of 100,000 entries is refused without walking it into the cache.
    let huge = Script::new(
        "huge.lua",
        r#"
        local t = {}
        for i = 1, 100000 do t["k" .. i] = "v" end
        local a, b = helpers.metrics.count("x.y_count", 1, t)
        local c, d = helpers.metrics.count("x.y_count", 1, t)
        return { b, d }
        "#,
    );
    let ex = run(&pool, &huge, "globex").await;
    assert_eq!(ex.result, Ok(json!(["too_many_tags", "too_many_tags"])));
    let ok = Script::new(
        "ok.lua",
        "return helpers.metrics.count('x.y_count', 1, { k = 'v' })",
    );
    let ex = run(&pool, &ok, "initech").await;
    assert_eq!(ex.result, Ok(json!(true)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_arguments_never_break_the_helpers_and_accounting_is_exact() {
    let sink = Arc::new(CollectingSink::new(TagPolicy::new(
        Vec::<String>::new(),
        Limits {
            max_points_per_execution: u32::MAX,
            ..Limits::default()
        },
    )));
    let pool = pool(
        sink.clone(),
        EngineSettings {
            time_limit_ms: 20_000,
            ..EngineSettings::default()
        },
        1,
    );
    // Arguments drawn from every Lua type, odd numbers, odd tables (metatables, sequences,
    // nested, the helpers themselves), across all three helpers; each call must return true or
    // false plus a reason, and the host must count exactly the points the script saw accepted.
    let s = Script::new(
        "fuzz.lua",
        r#"
        local m = helpers.metrics
        local fns = { m.count, m.gauge, m.histogram }
        local seed = event.seed
        local function rnd(n) seed = (seed * 1103515245 + 12345) % 2147483648 return seed % n + 1 end
        local names = { "fz.a_count", "fz.b", "fz.c.total", "Bad Name", "", 42, true, {}, nil, "auth.x" }
        local values = { 1, 0, -1, 2.5, 1e308, 0/0, math.huge, -math.huge, "1", true, {}, nil,
                         math.maxinteger, math.mininteger, -0.0 }
        local proxy = setmetatable({}, { __index = function() return "x" end,
                                        __pairs = function() error("no") end })
        local function tags()
          local k = rnd(12)
          if k == 1 then return nil end
          if k == 2 then return { a = "x" } end
          if k == 3 then return { b = "y", a = "x" } end
          if k == 4 then return { a = "x", b = rnd(3) } end
          if k == 5 then return { a = rnd(2) == 1 } end
          if k == 6 then return { "seq", "uence" } end
          if k == 7 then return { a = { nested = "x" } } end
          if k == 8 then return proxy end
          if k == 9 then return helpers end
          if k == 10 then return "a=x" end
          if k == 11 then return { [{}] = "x" } end
          return { a = "x", b = "y", c = "z" .. rnd(4) }
        end
        local accepted, rejected = 0, 0
        for i = 1, 20000 do
          local f = fns[rnd(3)]
          local nargs = rnd(5) - 1
          local a, b = f(table.unpack({ names[rnd(10)], values[rnd(15)], tags(), "extra" }, 1, nargs))
          if a == true and b == nil then accepted = accepted + 1
          elseif a == false and type(b) == "string" then rejected = rejected + 1
          else error("unexpected result " .. tostring(a) .. " " .. tostring(b)) end
        end
        return { accepted = accepted, rejected = rejected }
        "#,
    );
    let mut points = 0;
    for seed in 1..=4 {
        let ex = pool
            .execute(&s, "acme", &json!({"seed": seed}), &json!({}))
            .await
            .unwrap();
        let Ok(result) = &ex.result else {
            panic!("{ex:?}")
        };
        let accepted = result["accepted"].as_u64().unwrap();
        let rejected = result["rejected"].as_u64().unwrap();
        assert_eq!(accepted + rejected, 20_000);
        // Names reused with other kinds are refused (name_conflict): fewer accepted, all told.
        assert!(accepted > 100 && rejected > 1000, "{result}");
        assert_eq!(ex.metrics.accepted, accepted);
        assert_eq!(ex.metrics.rejected.values().sum::<u64>(), rejected);
        points += accepted;
    }
    let total: u64 = sink
        .points
        .lock()
        .iter()
        .map(|(_, p)| p.summary.samples)
        .sum();
    assert_eq!(total, points);
}

// Found by an adversary: a gauge at 1e308 twice in one execution and at -1e308 twice in the
// next made the window's sum +inf + -inf = NaN, stored as NULL: the flush failed on NOT NULL and
// was retried for good, holding every tenant's points back. Sums saturate instead; every flush,
// rollup and query goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_at_the_edge_of_f64_never_stop_the_flush() {
    let (_dir, store, svc) = service(Limits::default()).await;
    let pool = pool(Arc::new(svc.clone()), EngineSettings::default(), 1);
    let edge = |sign: &str| {
        Script::new(
            "edge.lua",
            format!(
                r#"local m = helpers.metrics
                for _ = 1, 2 do
                  assert(m.gauge("poison.g", {sign}1e308))
                  assert(m.histogram("poison.h", {sign}1e308))
                end
                assert(m.count("poison.c", 1e308))
                assert(m.count("poison.c", 1e308))
                return true"#
            ),
        )
    };
    for sign in ["", "-", "", "-"] {
        let ex = run(&pool, &edge(sign), "acme").await;
        assert_eq!(ex.result, Ok(json!(true)));
    }
    // A point of another tenant after them is written too.
    let calm = Script::new("calm.lua", r#"return helpers.metrics.count("calm.c", 1)"#);
    run(&pool, &calm, "calm").await;
    svc.flush().await.unwrap();
    let stored = |name: &'static str| {
        let store = store.clone();
        async move {
            store
                .find_metrics(&FindQuery {
                    name: name.into(),
                    from_ms: i64::MIN,
                    to_ms: i64::MAX,
                    ..Default::default()
                })
                .await
                .unwrap()
        }
    };
    for name in ["poison.g", "poison.h", "poison.c"] {
        let rows = stored(name).await;
        assert!(!rows.is_empty(), "{name}");
        assert!(rows.iter().all(|r| r.summary.sum.is_finite()), "{name}");
    }
    assert_eq!(stored("calm.c").await.len(), 1);
    let report = store
        .retention(&luametrics_store::Retention::default(), svc.now_ms())
        .await
        .unwrap();
    assert_eq!(report.rollup_error, None);
}
