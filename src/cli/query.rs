//! `luametrics query`, `names` and `retention`: read and maintain the store.

use super::CliError;
use luametrics::store::{Agg, AggregateQuery, FindQuery, Store};
use luametrics::Config;
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `luametrics query`.
#[derive(clap::Args)]
pub(crate) struct QueryArgs {
    /// Metric name.
    name: String,
    /// Start: `now`, a relative time like `-1h`, `-30m`, `-7d`, or epoch milliseconds.
    #[arg(long, default_value = "-1h", allow_hyphen_values = true)]
    from: String,
    /// End (same forms as --from).
    #[arg(long, default_value = "now", allow_hyphen_values = true)]
    to: String,
    /// Bucket size: `10s`, `1m`, `1h`, `1d`, or milliseconds.
    #[arg(long, default_value = "1m")]
    step: String,
    /// sum, count, avg, min, max, last, rate, p50, p90, p95 or p99.
    #[arg(long, default_value = "sum")]
    agg: String,
    /// Split by this tag (or `tenant`).
    #[arg(long)]
    group_by: Option<String>,
    /// Only this tenant.
    #[arg(long)]
    tenant: Option<String>,
    /// Only `user` or `system` metrics.
    #[arg(long = "type")]
    metric_type: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

use luametrics::server::time::{parse_duration_ms as duration_ms, parse_time_ms as time_ms};

async fn open_store(config: Option<PathBuf>) -> Result<(Config, Store), CliError> {
    let config = Config::load(config.as_deref())?;
    let store = config.database.open_store().await?;
    Ok((config, store))
}

pub(crate) async fn query(a: QueryArgs) -> Result<ExitCode, CliError> {
    let now = now_ms();
    let bad = |arg: &'static str, v: &str| CliError::Arg {
        arg,
        problem: format!("`{v}` is not a time (now, -1h, -30m, -7d or epoch ms)"),
    };
    let from = time_ms(&a.from, now).ok_or_else(|| bad("--from", &a.from))?;
    let to = time_ms(&a.to, now).ok_or_else(|| bad("--to", &a.to))?;
    let step = duration_ms(&a.step)
        .filter(|s| *s > 0)
        .ok_or_else(|| CliError::Arg {
            arg: "--step",
            problem: format!("`{}` is not a duration (10s, 1m, 1h, 1d or ms)", a.step),
        })?;
    let agg: Agg = a.agg.parse()?;
    let metric_type = match a.metric_type.as_deref() {
        None => None,
        Some(t) => Some(t.parse().map_err(|problem| CliError::Arg {
            arg: "--type",
            problem,
        })?),
    };
    let (_, store) = open_store(a.config).await?;
    let q = AggregateQuery {
        find: FindQuery {
            name: a.name.clone(),
            // Include the bucket that holds `to`.
            from_ms: from,
            to_ms: to.saturating_add(1),
            tenant: a.tenant,
            metric_type,
            filters: Default::default(),
        },
        agg,
        step_ms: step,
        group_by: a.group_by,
    };
    let (series, tier) = store.aggregate(&q).await?;
    if a.json {
        let out = serde_json::json!({"name": a.name, "agg": a.agg, "step_ms": step, "tier": tier, "series": series});
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        println!("{} {} per {} ({:?} tier)", a.name, a.agg, a.step, tier);
        // Series can come back without points (a percentile of a metric without sketches).
        if series.iter().all(|s| s.points.is_empty()) {
            println!("(no data in range)");
        }
        for s in series {
            let group = s.group.unwrap_or_else(|| "-".into());
            for (t, v) in s.points {
                println!("{t:>14}  {group:<24} {v:.4}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn names(config: Option<PathBuf>) -> Result<ExitCode, CliError> {
    let (_, store) = open_store(config).await?;
    for n in store.metric_names().await? {
        println!(
            "{:<48} {:<7} {:<10} rows={:<8} last={}",
            n.name,
            n.metric_type.as_str(),
            n.kind.as_str(),
            n.rows,
            n.last_ms
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn retention(config: Option<PathBuf>) -> Result<ExitCode, CliError> {
    let (config, store) = open_store(config).await?;
    let r = store.retention(&config.retention, now_ms()).await?;
    println!(
        "rolled up {} raw rows into {} rollup rows (watermark {}); deleted raw {}, hourly {}, daily {}, traces {}",
        r.rollup.raw_rows, r.rollup.rollup_rows, r.rollup.watermark, r.raw_deleted, r.hourly_deleted, r.daily_deleted, r.traces_deleted
    );
    if let Some(e) = r.rollup_error {
        eprintln!("error: the rollup failed (deletions went on without it): {e}");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
