//! `luametrics bench fairness`: one tenant flooding the pool against another's modest load.
//!
//! A pool of `--engines` runs a script of a fixed cost (a Lua loop, ~0.3 ms here). First the
//! pool's capacity is measured (executions/s with every engine busy). Then, each round, tenant
//! B sends executions open-loop at `--b-share` of that capacity for `--seconds`, alone
//! (baseline) and while tenant A floods open-loop at `--flood` times the capacity (subject),
//! in alternating order. A has an engine-time budget of `--a-budget` of one engine; B's
//! budget is unlimited. Reported:
//! - B's p99 latency (wait + execution) with A flooding against B alone: fair turns mean B
//!   waits for at most one execution per engine, not for A's queue. Latency is judged rather
//!   than the wait alone because B alone barely waits (a ratio to ~0 says nothing);
//! - B's executions completed against sent while A floods (B loses none);
//! - the engine time granted to A during the flood against its budget over that time plus its
//!   burst (within 10%);
//! - A's throttled and queue-full refusals.

use super::{report, spread, CliError, Goal, Row};
use luametrics::engine::CollectingSink;
use luametrics::engine::{
    EnginePool, EngineSettings, Job, MetricsSink, PoolError, PoolSettings, Script,
};
use luametrics::model::TagPolicy;
use serde_json::json;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Arguments of `luametrics bench fairness`.
#[derive(clap::Args, Debug)]
pub(crate) struct FairnessArgs {
    /// Engines in the pool.
    #[arg(long, default_value_t = 2)]
    engines: usize,
    /// Alternating rounds (medians are reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds each load runs.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Tenant A's offered rate, as a multiple of the pool's capacity.
    #[arg(long, default_value_t = 5.0)]
    flood: f64,
    /// Tenant B's offered rate, as a share of the pool's capacity.
    #[arg(long, default_value_t = 0.1)]
    b_share: f64,
    /// Tenant A's engine-time budget, as a share of one engine (ms per second / 1000).
    #[arg(long, default_value_t = 0.5)]
    a_budget: f64,
}

/// A script of a fixed cost (a loop), and one metric point; built once (the load generator
/// shares the machine with the engines, so it does as little as it can per execution).
fn work() -> Script {
    static WORK: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
    WORK.get_or_init(|| {
        Script::new(
            "fair.lua",
            "local x = 0 for i = 1, 30000 do x = x + i % 7 end helpers.metrics.count('bench.fair_count', 1) return x",
        )
    })
    .clone()
}

fn pool(
    engines: usize,
    a_budget_ms_per_s: f64,
    burst_ms: f64,
) -> Result<Arc<EnginePool>, CliError> {
    let sink: Arc<dyn MetricsSink> = Arc::new(CollectingSink::new(TagPolicy::default()));
    Ok(Arc::new(EnginePool::new(
        EngineSettings {
            time_limit_ms: 5_000,
            ..EngineSettings::default()
        },
        PoolSettings {
            max_size: engines,
            wait_timeout_ms: 60_000,
            tenant_engine_ms_per_s: a_budget_ms_per_s,
            tenant_engine_burst_ms: burst_ms,
            ..PoolSettings::default()
        },
        sink,
    )?))
}

/// Executions/s of the pool with every engine busy (closed loop, 4 callers per engine).
async fn capacity(engines: usize, seconds: f64) -> Result<f64, CliError> {
    let pool = pool(engines, 0.0, 0.0)?;
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let tasks: Vec<_> = (0..engines * 4)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < until {
                    if pool
                        .execute(&work(), "cap", &json!({}), &json!({}))
                        .await
                        .is_ok()
                    {
                        n += 1;
                    }
                }
                n
            })
        })
        .collect();
    let mut n = 0;
    for t in tasks {
        n += t.await.unwrap_or(0);
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// What one tenant's open-loop load got.
#[derive(Default)]
struct Got {
    sent: u64,
    latencies_ms: Vec<f64>,
    waits_ms: Vec<f64>,
    budget_refused: u64,
    queue_refused: u64,
    other_failed: u64,
}

/// Sends `rate` executions/s for `tenant` for `seconds`, each admitted first (as the executor
/// does before it takes an engine) and run in its own task, and waits for them all. A refused
/// admission costs no task: the load generator shares the cores with what it measures.
async fn open_loop(pool: Arc<EnginePool>, tenant: &'static str, rate: f64, seconds: f64) -> Got {
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds);
    let mut sent = 0u64;
    let mut refused = 0u64;
    let mut tasks = Vec::new();
    let empty = Arc::new(json!({}));
    while Instant::now() < end {
        let due = (start.elapsed().as_secs_f64() * rate) as u64;
        while sent < due {
            sent += 1;
            let t = Instant::now();
            let Ok(admitted) = pool.admit(tenant) else {
                refused += 1;
                continue;
            };
            let pool = pool.clone();
            let (script, empty) = (work(), empty.clone());
            tasks.push(tokio::spawn(async move {
                let r = pool
                    .run_admitted(
                        Job {
                            script,
                            tenant: Arc::from(tenant),
                            event: empty.clone(),
                            context: empty,
                            time_limit_ms: None,
                        },
                        &admitted,
                    )
                    .await;
                drop(admitted);
                (r, t.elapsed().as_secs_f64() * 1000.0)
            }));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut got = Got {
        sent,
        budget_refused: refused,
        ..Got::default()
    };
    for t in tasks {
        match t.await {
            Ok((Ok(ex), ms)) if ex.result.is_ok() => {
                got.latencies_ms.push(ms);
                got.waits_ms.push(ex.timings.wait_ms);
            }
            Ok((Err(PoolError::TenantBudget { .. }), _)) => got.budget_refused += 1,
            Ok((Err(PoolError::QueueFull { .. }), _)) => got.queue_refused += 1,
            _ => got.other_failed += 1,
        }
    }
    got
}

fn p99(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(((v.len() as f64 * 0.99) as usize).min(v.len().saturating_sub(1)))
        .copied()
        .unwrap_or(f64::NAN)
}

struct Round {
    alone: Got,
    flooded: Got,
    flood: Got,
    a_granted_ms: f64,
    a_allowed_ms: f64,
}

async fn round(a: &FairnessArgs, cap: f64, alone_first: bool) -> Result<Round, CliError> {
    let budget = a.a_budget * 1000.0;
    // A small burst, so the flood's grant is about its rate (the burst is counted anyway).
    let burst = budget * 0.1;
    let b_rate = cap * a.b_share;
    let alone = |()| async {
        // B alone: the same pool settings, no A.
        let pool = pool(a.engines, budget, burst)?;
        Ok::<_, CliError>(open_loop(pool, "b", b_rate, a.seconds).await)
    };
    let flooded = |()| async {
        let pool = pool(a.engines, budget, burst)?;
        let flood = tokio::spawn(open_loop(pool.clone(), "a", cap * a.flood, a.seconds));
        let b = open_loop(pool.clone(), "b", b_rate, a.seconds).await;
        let flood = flood.await.unwrap_or_default();
        let granted = pool.tenant_usage("a").used_ms;
        Ok::<_, CliError>((b, flood, granted))
    };
    let (alone, (flooded, flood, granted)) = if alone_first {
        let x = alone(()).await?;
        (x, flooded(()).await?)
    } else {
        let y = flooded(()).await?;
        (alone(()).await?, y)
    };
    Ok(Round {
        alone,
        flooded,
        flood,
        a_granted_ms: granted,
        a_allowed_ms: budget * a.seconds + burst,
    })
}

pub(crate) async fn fairness(a: FairnessArgs) -> Result<ExitCode, CliError> {
    if a.rounds == 0 || a.engines == 0 || a.seconds.is_nan() || a.seconds <= 0.0 {
        return Err(CliError::Arg {
            arg: "--rounds/--engines/--seconds",
            problem: "each must be above 0".into(),
        });
    }
    let cap = capacity(a.engines, a.seconds.min(2.0)).await?;
    let mut rounds = Vec::new();
    for r in 0..a.rounds {
        rounds.push(round(&a, cap, r % 2 == 0).await?);
    }
    let col = |f: &dyn Fn(&Round) -> f64| rounds.iter().map(f).collect::<Vec<f64>>();
    let rows = vec![
        Row {
            name: "B's p99 latency, A flooding vs B alone (ms)".into(),
            baseline: col(&|r| p99(&r.alone.latencies_ms)),
            subject: col(&|r| p99(&r.flooded.latencies_ms)),
            goal: Goal::AtMost(2.0),
        },
        Row {
            name: "B's executions completed vs sent, A flooding".into(),
            baseline: col(&|r| r.flooded.sent as f64),
            subject: col(&|r| r.flooded.latencies_ms.len() as f64),
            goal: Goal::AtLeast(1.0),
        },
        Row {
            name: "engine time granted to A vs its budget (ms)".into(),
            baseline: col(&|r| r.a_allowed_ms),
            subject: col(&|r| r.a_granted_ms),
            goal: Goal::Between(0.9, 1.1),
        },
    ];
    let waits = (
        spread(&col(&|r| p99(&r.alone.waits_ms))),
        spread(&col(&|r| p99(&r.flooded.waits_ms))),
    );
    println!(
        "pool of {} engines: capacity {:.0} exec/s; A offered {:.0}/s with a budget of {:.0} engine-ms/s, \
         B offered {:.0}/s; per round (median): A throttled {:.0}, A refused queue_full {:.0}, A ran {:.0}; \
         B failed {:.0}; B's p99 wait {:.3} ms alone, {:.3} ms with A",
        a.engines,
        cap,
        cap * a.flood,
        a.a_budget * 1000.0,
        cap * a.b_share,
        spread(&col(&|r| r.flood.budget_refused as f64)).median,
        spread(&col(&|r| r.flood.queue_refused as f64)).median,
        spread(&col(&|r| r.flood.latencies_ms.len() as f64)).median,
        spread(&col(&|r| (r.flooded.other_failed + r.flooded.budget_refused + r.flooded.queue_refused) as f64)).median,
        waits.0.median,
        waits.1.median,
    );
    Ok(report("fairness target", "bench fairness", &rows, a.rounds))
}
