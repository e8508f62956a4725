//! `luametrics check`: run one script under the sandbox and report everything it did.

use super::CliError;
use luametrics::engine::{CollectingSink, EnginePool, EngineSettings, PoolSettings, Script};
use luametrics::model::{Limits, TagPolicy};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// Largest event or context file `check` reads: twice what the HTTP API takes by default
/// (`server.max_body_bytes`, 1 MiB). It bounds what an endless file such as `/dev/zero`
/// costs, and what parsing holds (adversary round 9: 8 MiB of small objects held 1.6 GB
/// parsed, each object a ~650-byte map node).
const MAX_JSON_BYTES: u64 = 2 * 1024 * 1024;

pub(crate) fn read_json(path: &Option<PathBuf>) -> Result<serde_json::Value, CliError> {
    let Some(path) = path else {
        return Ok(serde_json::json!({}));
    };
    let text = luametrics::engine::read_text_bounded(path, MAX_JSON_BYTES).map_err(|source| {
        CliError::Read {
            path: path.display().to_string(),
            source,
        }
    })?;
    serde_json::from_str(&text).map_err(|source| CliError::Json {
        path: path.display().to_string(),
        source,
    })
}
#[allow(clippy::too_many_arguments)]
pub(crate) async fn check(
    script: PathBuf,
    event: Option<PathBuf>,
    context: Option<PathBuf>,
    tenant: String,
    strict: bool,
    time_limit_ms: u64,
    json: bool,
) -> Result<ExitCode, CliError> {
    let source = Script::from_file(&script).map_err(|source| CliError::Read {
        path: script.display().to_string(),
        source,
    })?;
    let event = read_json(&event)?;
    let context = read_json(&context)?;
    let sink = Arc::new(CollectingSink::new(TagPolicy::new(
        luametrics_model::DEFAULT_DENIED_KEYS
            .iter()
            .map(|s| s.to_string()),
        Limits::default(),
    )));
    let pool = EnginePool::new(
        EngineSettings {
            strict,
            time_limit_ms,
            ..EngineSettings::default()
        },
        PoolSettings {
            max_size: 1,
            ..PoolSettings::default()
        },
        sink.clone(),
    )?;
    // Compiled before it runs, as a pipeline's scripts are when loaded: a script that takes
    // long to compile (Lua's compiler is quadratic on some inputs) then costs its time here,
    // once, not inside the execution, past its limit. A syntax error is reported by the run.
    let _ = source.check_syntax();
    let ex = pool.execute(&source, &tenant, &event, &context).await?;
    let points: Vec<serde_json::Value> = sink
        .points
        .lock()
        .iter()
        .map(|(_, p)| {
            serde_json::json!({
                "name": p.series.name(), "kind": p.series.kind(), "tags": p.series.tags(),
                "samples": p.summary.samples, "sum": p.summary.sum,
            })
        })
        .collect();
    if json {
        let out = serde_json::json!({
            "script": source.id(),
            "ok": ex.result.is_ok(),
            "result": ex.result.as_ref().ok(),
            "error": ex.result.as_ref().err().map(|e| serde_json::json!({"code": e.code(), "message": e.to_string(), "detail": e})),
            "log": ex.log, "warnings": ex.warnings, "metrics": points,
            "rejected": ex.metrics.rejected, "timings": ex.timings,
        });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        for line in &ex.log {
            println!("log: {line}");
        }
        for p in &points {
            println!("metric: {p}");
        }
        for w in &ex.warnings {
            println!("rejected: {}: {} (x{})", w.metric, w.reason, w.count);
        }
        let t = ex.timings;
        println!(
            "time: total {:.3} ms (wait {:.3}, script {:.3}, helpers {:.3}, overhead {:.3})",
            t.total_ms, t.wait_ms, t.script_ms, t.helpers_ms, t.overhead_ms
        );
        match &ex.result {
            Ok(v) => println!("ok: {v}"),
            Err(e) => eprintln!("error [{}]: {e}", e.code()),
        }
    }
    Ok(if ex.result.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
