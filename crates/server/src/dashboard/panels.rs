//! The panels of `catalog/dashboard.toml` drawn from data (charts of catalog metrics), the
//! widgets they name (parts that are more than a chart: stats with thresholds, tables,
//! breakdowns from traces) and the custom user-metrics panel.

use super::{agg_of, chart, esc, hint_names, lines, metric_options, panel, q, stacked, Chart, Ctx};
use luametrics_model::{ChartSpec, MetricType, PanelSpec, SeriesSpec};
use luametrics_store::{Agg, NameInfo};
use std::fmt::Write;

/// One panel of the dashboard file: its widgets, then its charts.
pub(super) async fn spec_panel(ctx: &Ctx<'_>, spec: &PanelSpec) -> String {
    let mut extra = String::new();
    for w in &spec.widgets {
        extra.push_str(&widget(ctx, w).await);
    }
    let mut charts = Vec::with_capacity(spec.chart.len());
    for c in &spec.chart {
        charts.push(chart(ctx, c).await);
    }
    panel(&spec.id, &spec.title, charts, extra, &hint_names(spec))
}

/// A widget by the name the dashboard file gives it; an unknown name draws nothing (the
/// file is checked by a test against this list).
async fn widget(ctx: &Ctx<'_>, name: &str) -> String {
    match name {
        "jwks_age" => jwks_age(ctx).await,
        "email_success" => email_success(ctx).await,
        "overhead_split" => overhead_split(ctx).await,
        "slowest_scripts" => slowest_scripts(ctx).await,
        "webhook_success" => webhook_success(ctx).await,
        _ => String::new(),
    }
}

/// Widgets the server draws, for the test that checks the dashboard file names only these.
#[cfg(test)]
const WIDGETS: &[&str] = &[
    "jwks_age",
    "email_success",
    "overhead_split",
    "slowest_scripts",
    "webhook_success",
];

/// The signing key's age as a badge: green under a day, amber up to two, red past.
async fn jwks_age(ctx: &Ctx<'_>) -> String {
    let mut out = String::new();
    if let Some(age) = ctx.total("jwks.active_key.age_ms", Agg::Last, &[]).await {
        let hours = age / 3_600_000.0;
        let class = if hours < 24.0 {
            "green"
        } else if hours <= 48.0 {
            "amber"
        } else {
            "red"
        };
        let _ = write!(out, "<span class=\"stat\" data-stat=\"jwks-age\">JWKS key age <span class=\"badge {class}\">{hours:.1} h</span></span>");
    }
    out
}

/// The share of e-mails sent without error.
async fn email_success(ctx: &Ctx<'_>) -> String {
    let mut out = String::new();
    let ok = ctx.total("email.send.success", Agg::Sum, &[]).await;
    let err = ctx.total("email.send.error", Agg::Sum, &[]).await;
    if ok.is_some() || err.is_some() {
        let (ok, err) = (ok.unwrap_or(0.0), err.unwrap_or(0.0));
        let _ = write!(out, "<span class=\"stat\" data-stat=\"email-success\">E-mail success <b>{:.1}%</b> of {}</span>", 100.0 * ok / (ok + err).max(1.0), ok + err);
    }
    out
}

/// The share of webhook deliveries that succeeded.
async fn webhook_success(ctx: &Ctx<'_>) -> String {
    let mut out = String::new();
    let ok = ctx
        .total("webhook.emit.count", Agg::Sum, &[("result", "success")])
        .await;
    let all = ctx.total("webhook.emit.count", Agg::Sum, &[]).await;
    if let Some(all) = all {
        let _ = write!(out, "<span class=\"stat\" data-stat=\"webhook-success\">Delivery success <b>{:.1}%</b> of {all}</span>", 100.0 * ok.unwrap_or(0.0) / all.max(1.0));
    }
    out
}

/// Engine overhead against script time, per script (metrics) and per pipeline (traces).
async fn overhead_split(ctx: &Ctx<'_>) -> String {
    let mut extra = String::new();
    let whole = ctx.whole();
    let over = whole
        .series(
            "pipeline.node.overhead",
            Agg::Sum,
            Some("script_id"),
            None,
            &[],
        )
        .await;
    let script = whole
        .series(
            "script.exec.duration_ms",
            Agg::Sum,
            Some("script_id"),
            None,
            &[],
        )
        .await;
    let mut rows: Vec<(String, Vec<f64>)> = Vec::new();
    for (g, p) in &script {
        let name = g.clone().unwrap_or_default();
        let s: f64 = p.iter().map(|x| x.1).sum();
        let o: f64 = over
            .iter()
            .find(|(og, _)| og == g)
            .map_or(0.0, |(_, p)| p.iter().map(|x| x.1).sum());
        rows.push((name, vec![o, s]));
    }
    if !rows.is_empty() {
        let _ = write!(
            extra,
            "<figure>{}<figcaption>{} {}</figcaption></figure>",
            stacked(
                "Engine overhead vs script time, per script",
                "ms",
                &["overhead", "script"],
                &rows
            ),
            ctx.json_link("pipeline.node.overhead", "sum", Some("script_id"), ""),
            ctx.json_link("script.exec.duration_ms", "sum", Some("script_id"), "")
        );
    }
    let per_pipeline = ctx
        .state
        .runtime
        .store()
        .trace_split_by_pipeline(ctx.from, ctx.to)
        .await;
    match per_pipeline {
        Err(e) => ctx.failed(&e),
        Ok(per_pipeline) => {
            let rows: Vec<(String, Vec<f64>)> = per_pipeline
                .into_iter()
                .map(|(p, _, t)| (p, vec![t[3], t[1], t[0] + t[2]]))
                .collect();
            if !rows.is_empty() {
                let _ = write!(extra, "<figure>{}<figcaption><a class=\"json\" href=\"/v1/traces\">JSON (traces)</a></figcaption></figure>", stacked("Engine overhead vs script time, per pipeline", "ms", &["overhead", "script", "wait + helpers"], &rows));
            }
        }
    }
    extra
}

/// The five scripts with the highest p95 script time.
async fn slowest_scripts(ctx: &Ctx<'_>) -> String {
    let mut out = String::new();
    let p95 = ctx
        .whole()
        .series(
            "script.exec.duration_ms",
            Agg::P95,
            Some("script_id"),
            None,
            &[],
        )
        .await;
    if !p95.is_empty() {
        let mut slow: Vec<(String, f64)> = p95
            .into_iter()
            .map(|(g, p)| {
                (
                    g.unwrap_or_default(),
                    p.iter().map(|x| x.1).fold(0.0, f64::max),
                )
            })
            .collect();
        slow.sort_by(|a, b| b.1.total_cmp(&a.1));
        out.push_str("<table data-table=\"slowest-scripts\"><tr><th>slowest scripts</th><th>p95 script ms</th></tr>");
        for (s, v) in slow.iter().take(5) {
            let _ = write!(out, "<tr><td>{}</td><td>{v:.3}</td></tr>", esc(s));
        }
        out.push_str("</table>");
    }
    out
}

/// The user-metrics panel: a tenant and metric picker, the chosen metric per tenant, rejected
/// points by reason, and each tenant's series against its limit.
pub(super) async fn user_panel(
    ctx: &Ctx<'_>,
    spec: &PanelSpec,
    names: &[NameInfo],
    tenant: Option<&str>,
    metric: Option<&str>,
    hidden: &str,
) -> String {
    let user: Vec<&NameInfo> = names
        .iter()
        .filter(|n| n.metric_type == MetricType::User)
        .collect();
    let tenants = ctx.state.runtime.metrics().tenants_series();
    let mut extra = String::new();
    let chosen = metric
        .and_then(|m| user.iter().find(|n| n.name == m))
        .or(user.first())
        .copied();
    let _ = write!(extra, "<form method=\"get\" action=\"/\" class=\"pickers\">{hidden}<label>tenant <select name=\"tenant\"><option value=\"\">all</option>");
    for (t, _) in &tenants {
        let sel = if Some(t.as_str()) == tenant {
            " selected"
        } else {
            ""
        };
        // The value exactly: a browser would collapse the blanks of an option's text.
        let _ = write!(
            extra,
            "<option value=\"{}\"{sel}>{}</option>",
            esc(t),
            esc(t)
        );
    }
    extra.push_str("</select></label> <label>metric <select name=\"metric\">");
    extra.push_str(&metric_options(&user, chosen));
    let mut charts = Vec::new();
    if let Some(m) = chosen {
        let (agg, agg_s) = agg_of(m.kind);
        let group = if tenant.is_some() {
            None
        } else {
            Some("tenant")
        };
        let s = ctx.series(&m.name, agg, group, tenant, &[]).await;
        let has = !s.is_empty();
        let named: Vec<(String, Vec<(i64, f64)>)> = s
            .into_iter()
            .map(|(g, p)| (g.unwrap_or_else(|| tenant.unwrap_or("all").to_string()), p))
            .collect();
        let tenant_q = tenant
            .map(|t| format!("&amp;tenant={}", q(t)))
            .unwrap_or_default();
        charts.push(Chart {
            html: if has {
                format!(
                    "<figure data-metric=\"{}\">{}<figcaption>{}</figcaption></figure>",
                    esc(&m.name),
                    lines(
                        &format!("{} ({agg_s}) per tenant", m.name),
                        "value",
                        ctx.from,
                        ctx.to,
                        &named
                    ),
                    ctx.json_link(&m.name, agg_s, group, &tenant_q)
                )
            } else {
                String::new()
            },
            has_data: has,
        });
    }
    let rejected = ChartSpec {
        title: "Rejected points by reason".into(),
        unit: "points".into(),
        per_minute: false,
        series: vec![SeriesSpec {
            metric: "helpers.metrics.rejected.count".into(),
            agg: "sum".into(),
            group_by: Some("reason".into()),
            filter: Default::default(),
            label: String::new(),
        }],
    };
    charts.push(chart(ctx, &rejected).await);
    let limit = ctx
        .state
        .runtime
        .config()
        .limits
        .max_series_per_tenant
        .max(1);
    if !tenants.is_empty() {
        extra.push_str("<table data-table=\"quotas\"><tr><th>tenant</th><th>series held</th><th>of limit</th></tr>");
        for (t, n) in tenants.iter().take(10) {
            let share = 100.0 * *n as f64 / limit as f64;
            let class = if share >= 90.0 {
                "red"
            } else if share >= 70.0 {
                "amber"
            } else {
                "green"
            };
            let _ = write!(extra, "<tr><td>{}</td><td>{n}</td><td><span class=\"badge {class}\">{share:.1}%</span></td></tr>", esc(t));
        }
        extra.push_str("</table>");
    }
    if user.is_empty() && tenants.is_empty() {
        extra.clear();
    }
    panel(&spec.id, &spec.title, charts, extra, &hint_names(spec))
}

#[cfg(test)]
mod tests {
    use super::*;
    use luametrics_model::Dashboard;

    // A widget the file names but the server does not draw would silently show nothing.
    #[test]
    fn every_widget_the_dashboard_file_names_is_drawn_here() {
        for p in &Dashboard::builtin().panel {
            for w in &p.widgets {
                assert!(WIDGETS.contains(&w.as_str()), "panel {}: widget {w}", p.id);
            }
        }
    }
}
