//! The page a tenant's own read token sees: its user metrics and its usage against its limits,
//! nothing of other tenants and nothing of the host.

use super::{
    agg_of, context, esc, failure_banner, lines, metric_options, page_html, panel, picker, Chart,
    Ctx,
};
use crate::AppState;
use luametrics_model::MetricType;
use luametrics_store::Agg;
use parking_lot::Mutex;
use std::fmt::Write;

/// The page a tenant's token sees: its own user metrics and its usage (points by result, the
/// metric names its rejections and overflow came from, series and engine time against the
/// limits), nothing of other tenants and nothing of the host.
pub async fn render_tenant(
    state: &AppState,
    tenant: &str,
    range: &str,
    metric: Option<&str>,
    refresh: Option<u32>,
    token: Option<&str>,
) -> String {
    let failure = Mutex::new(None);
    let (ctx, range) = context(state, range, &failure);
    let shown = match state.runtime.store().tenant_metric_names(tenant).await {
        Ok(names) => names
            .into_iter()
            .filter(|n| n.metric_type == MetricType::User)
            .collect::<Vec<_>>(),
        Err(e) => {
            return page_html(
                refresh,
                &picker(range, refresh, token),
                &format!(
                    "<section class=\"panel\" id=\"error\" data-error=\"database\"><h2>The database did not answer</h2><p>{}</p></section>",
                    esc(&e.to_string())
                ),
            )
        }
    };
    let mut hidden = format!(
        "<input type=\"hidden\" name=\"range\" value=\"{}\">",
        esc(range)
    );
    if let Some(t) = token {
        let _ = write!(
            hidden,
            "<input type=\"hidden\" name=\"token\" value=\"{}\">",
            esc(t)
        );
    }
    let chosen = metric
        .and_then(|m| shown.iter().find(|n| n.name == m))
        .or(shown.first());
    let mut extra = format!("<form method=\"get\" action=\"/\" class=\"pickers\">{hidden}<label>metric <select name=\"metric\">");
    extra.push_str(&metric_options(&shown, chosen));
    let mut charts = Vec::new();
    if let Some(m) = chosen {
        let (agg, agg_s) = agg_of(m.kind);
        let s = ctx.series(&m.name, agg, None, Some(tenant), &[]).await;
        let has = !s.is_empty();
        let named: Vec<(String, Vec<(i64, f64)>)> = s
            .into_iter()
            .map(|(_, p)| (tenant.to_string(), p))
            .collect();
        charts.push(Chart {
            html: format!(
                "<figure data-metric=\"{}\">{}</figure>",
                esc(&m.name),
                lines(
                    &format!("{} ({agg_s})", m.name),
                    "value",
                    ctx.from,
                    ctx.to,
                    &named
                )
            ),
            has_data: has,
        });
    }
    let user = panel(
        "user",
        &format!("Your metrics ({})", tenant),
        charts,
        extra,
        &["user metrics recorded by your scripts through helpers.metrics"],
    );
    let usage = usage_panel(&ctx, tenant).await;
    page_html(
        refresh,
        &picker(range, refresh, token),
        &format!("{}{user}{usage}", failure_banner(&failure)),
    )
}

/// A tenant's usage: points by result over the range, and since start the metric names its
/// rejections and overflow came from, series and engine time against its limits.
async fn usage_panel(ctx: &Ctx<'_>, tenant: &str) -> String {
    let s = ctx
        .series(
            "luametrics.tenant.points.count",
            Agg::Sum,
            Some("result"),
            Some(tenant),
            &[],
        )
        .await;
    let has = !s.is_empty();
    let named: Vec<(String, Vec<(i64, f64)>)> = s
        .into_iter()
        .map(|(g, p)| (g.unwrap_or_else(|| "other".into()), p))
        .collect();
    let charts = vec![Chart {
        html: format!(
            "<figure data-metric=\"luametrics.tenant.points.count\">{}</figure>",
            lines("Your points by result", "points", ctx.from, ctx.to, &named)
        ),
        has_data: has,
    }];
    let runtime = &ctx.state.runtime;
    let points = runtime.metrics().tenant_points(tenant);
    let limits = &runtime.config().limits;
    let engine = runtime.tenant_engine_usage(tenant);
    let mut extra = String::from("<table data-table=\"usage\">");
    let row = |extra: &mut String, k: &str, v: String| {
        let _ = write!(extra, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(&v));
    };
    row(&mut extra, "points accepted", points.accepted.to_string());
    row(
        &mut extra,
        "of which folded into overflow series",
        points.overflowed.to_string(),
    );
    for (reason, n) in &points.rejected {
        row(
            &mut extra,
            &format!("points rejected: {reason}"),
            n.to_string(),
        );
    }
    for (reason, n) in &points.dropped {
        row(
            &mut extra,
            &format!("points dropped: {reason}"),
            n.to_string(),
        );
    }
    row(
        &mut extra,
        "series held",
        format!(
            "{} of {}",
            runtime.metrics().tenant_series(tenant),
            limits.max_series_per_tenant
        ),
    );
    row(
        &mut extra,
        "engine time used",
        if engine.budget_ms_per_s > 0.0 {
            format!(
                "{:.1} ms (budget {:.0} ms/s, {:.1} ms available now)",
                engine.used_ms, engine.budget_ms_per_s, engine.available_ms
            )
        } else {
            format!("{:.1} ms (no budget)", engine.used_ms)
        },
    );
    row(
        &mut extra,
        "executions throttled",
        engine.throttled.to_string(),
    );
    extra.push_str("</table>");
    if !points.metrics.is_empty() {
        extra.push_str(
            "<table data-table=\"troubles\"><tr><th>metric</th><th>why</th><th>points</th></tr>",
        );
        for m in &points.metrics {
            let _ = write!(
                extra,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&m.metric),
                esc(&m.reason),
                m.points
            );
        }
        extra.push_str("</table>");
    }
    panel(
        "usage",
        "Your usage and limits",
        charts,
        extra,
        &["luametrics.tenant.points.count"],
    )
}
