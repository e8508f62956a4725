//! Target E1 of docs/targets.md in the bench harness: `Runtime::execute` of the example login pipeline
//! (3 nodes) against its three scripts run on a held engine with the same events, feeding each
//! node's `context` to the next as the executor does; both record through the runtime's own
//! recorder. Alternating rounds, per-round ratios (see `harness/`). Run: `cargo bench --bench
//! e2e` (`LUAMETRICS_BENCH_ROUNDS=N` sets the rounds). `luametrics bench e2e` measures the
//! other end-to-end targets (HTTP, traces) as well.

use luametrics::engine::{Engine, MetricsSink, Script};
use luametrics::{Config, Runtime};
use serde_json::Value as Json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

mod harness;
use harness::*;
#[path = "../src/cli/bench/held.rs"]
mod held;
use held::held_per_event;

/// The allocator the `luametrics` binary ships with, so both measure the same thing.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TRIGGER: &str = "user.login";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn login_events(n: usize) -> Vec<(String, Json)> {
    let text = std::fs::read_to_string(repo().join("lua/events.jsonl")).unwrap();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Json>(l).ok())
        .filter(|v| v["trigger"] == TRIGGER)
        .map(|v| {
            (
                v["tenant"].as_str().unwrap().to_string(),
                v["event"].clone(),
            )
        })
        .take(n)
        .collect()
}

fn main() {
    luametrics::prepare_process();
    let args = Args::parse();
    if !args.wants("e2e") {
        return;
    }
    let rounds = args.rounds(9);
    let events = login_events(if args.quick { 50 } else { 2_000 });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::load(Some(&repo().join("luametrics.toml"))).unwrap();
    config.database.url = dir.path().join("e2e.db").display().to_string();
    config.pipelines.file = repo().join("lua/pipelines.toml");
    config.pipelines.reload_interval_ms = 0;
    // Every event of one tenant's share must run: no budget in the way of the measurement.
    config.pool.tenant_engine_ms_per_s = 0.0;
    let runtime = rt.block_on(Runtime::start(config.clone())).unwrap();
    let pipelines = runtime.pipelines();
    let p = pipelines.for_trigger(TRIGGER).unwrap();
    let nodes: Vec<(Script, Option<u64>)> = p
        .layers
        .iter()
        .flatten()
        .map(|&i| (p.nodes[i].script.clone(), p.nodes[i].timeout_ms))
        .collect();
    let sink: Arc<dyn MetricsSink> = Arc::new(runtime.metrics().clone());
    let mut engine = Engine::new(Arc::new(config.engine.clone()), sink).unwrap();
    // Warm both sides (compile caches, engines built).
    held_per_event(&mut engine, &nodes, &events, events.len());
    rt.block_on(async {
        for (tenant, event) in &events {
            runtime
                .execute(TRIGGER, tenant, event.clone())
                .await
                .unwrap();
        }
    });
    let mut held = || held_per_event(&mut engine, &nodes, &events, events.len());
    // One `block_on` per round: entering the runtime per event is not the library's cost.
    let mut library = || {
        rt.block_on(async {
            let t = Instant::now();
            for (tenant, event) in &events {
                runtime
                    .execute(TRIGGER, tenant, event.clone())
                    .await
                    .unwrap();
            }
            t.elapsed().as_secs_f64() * 1e6 / events.len() as f64
        })
    };
    let samples = alternate(rounds, &mut [&mut held, &mut library]);
    compare(
        "E1: Runtime::execute of the 3-node login pipeline vs its 3 scripts on a held engine",
        Side {
            name: "3 scripts on a held engine",
            unit: "us/event",
            samples: &samples[0],
        },
        Side {
            name: "Runtime::execute, one caller",
            unit: "us/event",
            samples: &samples[1],
        },
        |b, s| s / b,
        Goal::AtMost(2.0),
    );
    rt.block_on(runtime.shutdown()).unwrap();
}
