//! E1's baseline, shared by `luametrics bench e2e` and `benches/e2e.rs` (which includes this
//! file by path): a pipeline's scripts run one after another on a held engine, each node's
//! `context` fed to the next as the executor does, so both benches compare against the same
//! work.

use luametrics::engine::{Engine, Script};
use serde_json::{Map, Value as Json};
use std::time::Instant;

/// E1's baseline: µs per event of the scripts alone on one held engine.
pub(crate) fn held_per_event(
    engine: &mut Engine,
    nodes: &[(Script, Option<u64>)],
    events: &[(String, Json)],
    n: usize,
) -> f64 {
    let t = Instant::now();
    for (tenant, event) in events.iter().cycle().take(n) {
        let mut context = Map::new();
        for (script, limit) in nodes {
            let ex = engine.execute_limited(
                script,
                tenant,
                event,
                &Json::Object(context.clone()),
                *limit,
            );
            if let Ok(Json::Object(mut m)) = ex.result {
                if m.get("allow") == Some(&Json::Bool(false)) {
                    break;
                }
                if let Some(Json::Object(c)) = m.remove("context") {
                    context.extend(c);
                }
            }
        }
    }
    t.elapsed().as_secs_f64() * 1e6 / n as f64
}
