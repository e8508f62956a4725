//! The `luametrics` command line: lint and run scripts under the sandbox.

use clap::{Parser, Subcommand};
use luametrics_engine::{CollectingSink, EnginePool, EngineSettings, PoolSettings, Script};
use luametrics_model::{Limits, TagPolicy};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "luametrics",
    version,
    about = "Lua-embedded user-metrics runtime"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Compile and run a script under the sandbox and its limits; print its result, log,
    /// warnings and the metrics it recorded. Exits 1 when the script fails.
    Check {
        /// The Lua script.
        script: PathBuf,
        /// A JSON file with the event the script receives.
        #[arg(long)]
        event: Option<PathBuf>,
        /// A JSON file with the context the script receives.
        #[arg(long)]
        context: Option<PathBuf>,
        /// Tenant to run as.
        #[arg(long, default_value = "check")]
        tenant: String,
        /// Raise Lua errors for rejected metrics instead of returning false, reason.
        #[arg(long)]
        strict: bool,
        /// Time limit in ms.
        #[arg(long, default_value_t = EngineSettings::default().time_limit_ms)]
        time_limit_ms: u64,
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Errors the CLI reports before exiting with status 2.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not valid JSON: {source}")]
    Json {
        path: String,
        source: serde_json::Error,
    },
    #[error("{0}")]
    Pool(#[from] luametrics_engine::PoolError),
}

fn read_json(path: &Option<PathBuf>) -> Result<serde_json::Value, CliError> {
    let Some(path) = path else {
        return Ok(serde_json::json!({}));
    };
    let text = std::fs::read_to_string(path).map_err(|source| CliError::Read {
        path: path.display().to_string(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| CliError::Json {
        path: path.display().to_string(),
        source,
    })
}

#[allow(clippy::too_many_arguments)]
async fn check(
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
    let ex = pool.execute(&source, &tenant, &event, &context).await?;
    let points: Vec<serde_json::Value> = sink
        .points
        .lock()
        .iter()
        .map(|(_, p)| {
            serde_json::json!({
                "name": p.name, "kind": p.kind, "tags": p.tags,
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
            println!("rejected: {w}");
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("luametrics: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Check {
                script,
                event,
                context,
                tenant,
                strict,
                time_limit_ms,
                json,
            } => check(script, event, context, tenant, strict, time_limit_ms, json).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("luametrics: {e}");
            ExitCode::from(2)
        }
    }
}
