//! The Observability dashboard: six panels rendered on the server as HTML with
//! inline SVG charts. No script and no external resource, so it works on a machine with no
//! internet. Behind the admin token (bearer header, `luametrics_token` cookie set by the login
//! form, or a `token` query parameter for scripts).

use crate::chart::{esc, lines, stacked};
use crate::{AppState, Who};
use axum::extract::{Form, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use luametrics_model::{Kind, MetricType, Tags};
use luametrics_store::{Agg, AggregateQuery, FindQuery, NameInfo};
use parking_lot::Mutex;
use serde::Deserialize;
use std::fmt::Write;

const RANGES: &[(&str, i64)] = &[
    ("15m", 900_000),
    ("1h", 3_600_000),
    ("6h", 21_600_000),
    ("24h", 86_400_000),
    ("7d", 604_800_000),
    ("30d", 2_592_000_000),
];
const STEPS: &[i64] = &[
    10_000, 30_000, 60_000, 300_000, 900_000, 3_600_000, 21_600_000, 43_200_000, 86_400_000,
];

/// Query parameters of `GET /`.
#[derive(Deserialize, Default)]
pub(crate) struct Params {
    range: Option<String>,
    tenant: Option<String>,
    metric: Option<String>,
    refresh: Option<u32>,
    token: Option<String>,
}

fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix("luametrics_token="))
        .map(str::to_string)
        .next()
}

/// Who the request's token (bearer header, login cookie or `token` parameter) belongs to.
fn signed_in(state: &AppState, headers: &HeaderMap, query_token: Option<&str>) -> Option<Who> {
    [
        crate::bearer(headers).map(str::to_string),
        cookie_token(headers),
        query_token.map(str::to_string),
    ]
    .into_iter()
    .flatten()
    .find_map(|t| crate::who(state, &t))
    .filter(|w| *w != Who::Execute)
}

const STYLE: &str = "body{font-family:sans-serif;margin:0;background:#f6f7f9;color:#222}header{background:#243447;color:#fff;padding:10px 18px}header form{display:inline;margin-left:24px}main{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:14px;padding:14px}section.panel{background:#fff;border:1px solid #dde;border-radius:6px;padding:10px}section.panel h2{font-size:16px;margin:0 0 8px}.chart .title{font-size:12px;font-weight:bold}.chart .tick,.chart .legend{font-size:10px}.chart .grid{stroke:#eee}.chart .axis{stroke:#999}.hint{background:#fff8e1;border:1px solid #f0d98c;padding:8px;font-size:13px}.hint code{background:#f3f3f3}a.json{font-size:11px}.stat{display:inline-block;margin:4px 14px 4px 0;font-size:13px}.badge{padding:2px 8px;border-radius:10px;color:#fff}.green{background:#2e7d32}.amber{background:#f9a825}.red{background:#c62828}.grey{background:#888}table{border-collapse:collapse;font-size:12px}td,th{padding:2px 8px;border-bottom:1px solid #eee;text-align:left}";

fn login_page(message: &str) -> Response {
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>luametrics: sign in</title><style>{STYLE}</style></head><body><header>luametrics Observability</header><main><section class=\"panel\" id=\"login\"><h2>Token required</h2><p>{}</p><form method=\"post\" action=\"/login\"><input type=\"password\" name=\"token\" placeholder=\"admin or tenant token\" autofocus> <button type=\"submit\">Sign in</button></form></section></main></body></html>",
        esc(message)
    );
    (StatusCode::UNAUTHORIZED, Html(html)).into_response()
}

/// Form of `POST /login`.
#[derive(Deserialize)]
pub(crate) struct Login {
    token: String,
}

pub(crate) async fn login(State(state): State<AppState>, Form(form): Form<Login>) -> Response {
    if !matches!(
        crate::who(&state, &form.token),
        Some(Who::Admin | Who::Tenant(_))
    ) {
        return login_page("That token is neither the admin token nor a tenant's read token.");
    }
    let cookie = format!(
        "luametrics_token={}; HttpOnly; SameSite=Strict; Path=/",
        form.token
    );
    ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
}

struct Ctx<'a> {
    state: &'a AppState,
    from: i64,
    to: i64,
    step: i64,
    /// The first database error a panel met: the page shows it, so an empty chart is never
    /// mistaken for "no data".
    failure: &'a Mutex<Option<String>>,
}

impl Ctx<'_> {
    async fn series(
        &self,
        name: &str,
        agg: Agg,
        group_by: Option<&str>,
        tenant: Option<&str>,
        filters: &[(&str, &str)],
    ) -> Vec<(Option<String>, Vec<(i64, f64)>)> {
        let q = AggregateQuery {
            find: FindQuery {
                name: name.to_string(),
                from_ms: self.from,
                to_ms: self.to,
                tenant: tenant.map(str::to_string),
                metric_type: None,
                filters: filters
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<Tags>(),
            },
            agg,
            step_ms: self.step,
            group_by: group_by.map(str::to_string),
        };
        match self.state.runtime.query(&q).await {
            Ok((s, _)) => s
                .into_iter()
                .filter(|s| !s.points.is_empty())
                .map(|s| (s.group, s.points))
                .collect(),
            Err(e) => {
                self.failed(&e);
                Vec::new()
            }
        }
    }

    /// Notes a database error (the first one is shown on the page).
    fn failed(&self, e: &dyn std::fmt::Display) {
        self.failure.lock().get_or_insert_with(|| e.to_string());
    }

    /// One number over the whole range: the same query with a single bucket.
    async fn total(&self, name: &str, agg: Agg, filters: &[(&str, &str)]) -> Option<f64> {
        let whole = Ctx {
            step: (self.to - self.from).max(1),
            ..*self
        };
        whole
            .series(name, agg, None, None, filters)
            .await
            .into_iter()
            .flat_map(|(_, points)| points)
            .map(|p| p.1)
            .reduce(|a, b| match agg {
                Agg::Last => b,
                _ => a + b,
            })
    }

    fn json_link(&self, name: &str, agg: &str, group_by: Option<&str>, extra: &str) -> String {
        format!(
            "<a class=\"json\" href=\"/v1/metrics/query?name={}&amp;agg={agg}&amp;from={}&amp;to={}&amp;step={}{}{}\">JSON</a>",
            esc(name),
            self.from,
            self.to,
            self.step,
            group_by.map(|g| format!("&amp;group_by={}", esc(g))).unwrap_or_default(),
            extra
        )
    }
}

struct Chart {
    html: String,
    has_data: bool,
}

/// A line chart of one or more (metric, agg, group_by, label) queries.
async fn chart(
    ctx: &Ctx<'_>,
    title: &str,
    unit: &str,
    queries: &[(&str, Agg, &str, Option<&str>, &str)],
    scale: f64,
) -> Chart {
    let mut all = Vec::new();
    let mut links = String::new();
    for (name, agg, agg_s, group_by, label) in queries {
        for (group, points) in ctx.series(name, *agg, *group_by, None, &[]).await {
            let series_label = match (group, label.is_empty()) {
                (Some(g), true) => g,
                (Some(g), false) => format!("{label} {g}"),
                (None, false) => label.to_string(),
                (None, true) => name.to_string(),
            };
            all.push((
                series_label,
                points.into_iter().map(|(t, v)| (t, v * scale)).collect(),
            ));
        }
        links.push_str(&ctx.json_link(name, agg_s, *group_by, ""));
        links.push(' ');
    }
    let has_data = !all.is_empty();
    let html = if has_data {
        format!(
            "<figure>{}<figcaption>{links}</figcaption></figure>",
            lines(title, unit, ctx.from, ctx.to, &all)
        )
    } else {
        String::new()
    };
    Chart { html, has_data }
}

fn hint(names: &[&str]) -> String {
    let list = names
        .iter()
        .map(|n| format!("<code>{}</code>", esc(n)))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "<div class=\"hint\" data-hint=\"no-data\">No data in this range. This panel is fed by {list}. Record them from the host with <code>runtime.metrics().counter(\"name\", &amp;[(\"tag\", \"value\")]).increment(1)</code> (or <code>gauge</code>/<code>histogram</code>), or over HTTP with <code>POST /v1/metrics</code> <code>{{\"points\": [{{\"name\": \"...\", \"kind\": \"counter\", \"value\": 1}}]}}</code>.</div>"
    )
}

fn panel(id: &str, title: &str, charts: Vec<Chart>, extra: String, names: &[&str]) -> String {
    let has_data = charts.iter().any(|c| c.has_data) || !extra.is_empty();
    let body = if has_data {
        format!(
            "{extra}{}",
            charts.into_iter().map(|c| c.html).collect::<String>()
        )
    } else {
        hint(names)
    };
    format!("<section class=\"panel\" id=\"panel-{id}\" data-panel=\"{id}\"><h2>{}</h2>{body}</section>", esc(title))
}

async fn system_panel(ctx: &Ctx<'_>) -> String {
    let latency = chart(
        ctx,
        "API latency",
        "ms",
        &[
            ("http.request.duration_ms", Agg::P95, "p95", None, "p95"),
            ("http.request.duration_ms", Agg::P99, "p99", None, "p99"),
        ],
        1.0,
    )
    .await;
    let pool = chart(
        ctx,
        "Lua pool",
        "engines",
        &[
            ("lua.pool.active", Agg::Max, "max", None, "active"),
            ("lua.pool.waiting", Agg::Max, "max", None, "waiting"),
            ("lua.pool.exhausted", Agg::Sum, "sum", None, "exhausted"),
        ],
        1.0,
    )
    .await;
    let queue = chart(
        ctx,
        "Queue health",
        "errors",
        &[
            (
                "qstash.signature.verify.fail.count",
                Agg::Sum,
                "sum",
                None,
                "verify failures",
            ),
            (
                "qstash.publish.error.count",
                Agg::Sum,
                "sum",
                None,
                "publish errors",
            ),
        ],
        1.0,
    )
    .await;
    let mut stats = String::new();
    if let Some(age) = ctx.total("jwks.active_key.age_ms", Agg::Last, &[]).await {
        let hours = age / 3_600_000.0;
        let class = if hours < 24.0 {
            "green"
        } else if hours <= 48.0 {
            "amber"
        } else {
            "red"
        };
        let _ = write!(stats, "<span class=\"stat\" data-stat=\"jwks-age\">JWKS key age <span class=\"badge {class}\">{hours:.1} h</span></span>");
    }
    let ok = ctx.total("email.send.success", Agg::Sum, &[]).await;
    let err = ctx.total("email.send.error", Agg::Sum, &[]).await;
    if ok.is_some() || err.is_some() {
        let (ok, err) = (ok.unwrap_or(0.0), err.unwrap_or(0.0));
        let _ = write!(stats, "<span class=\"stat\" data-stat=\"email-success\">E-mail success <b>{:.1}%</b> of {}</span>", 100.0 * ok / (ok + err).max(1.0), ok + err);
    }
    panel(
        "system",
        "System health",
        vec![latency, pool, queue],
        stats,
        &[
            "http.request.duration_ms",
            "lua.pool.active",
            "lua.pool.waiting",
            "lua.pool.exhausted",
            "jwks.active_key.age_ms",
            "qstash.signature.verify.fail.count",
            "email.send.success",
            "email.send.error",
        ],
    )
}

async fn pipeline_panel(ctx: &Ctx<'_>) -> String {
    let per_min = 60_000.0 / ctx.step as f64;
    let throughput = chart(
        ctx,
        "Executions per minute by trigger",
        "exec/min",
        &[(
            "pipeline.exec.duration",
            Agg::Count,
            "count",
            Some("trigger_event"),
            "",
        )],
        per_min,
    )
    .await;
    let mut extra = String::new();
    // Overhead vs script time, per script (metrics) and per pipeline (traces).
    let whole = Ctx {
        step: (ctx.to - ctx.from).max(1),
        ..*ctx
    };
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
    if let Err(e) = &per_pipeline {
        ctx.failed(e);
    }
    if let Ok(per_pipeline) = per_pipeline {
        let rows: Vec<(String, Vec<f64>)> = per_pipeline
            .into_iter()
            .map(|(p, _, t)| (p, vec![t[3], t[1], t[0] + t[2]]))
            .collect();
        if !rows.is_empty() {
            let _ = write!(extra, "<figure>{}<figcaption><a class=\"json\" href=\"/v1/traces\">JSON (traces)</a></figcaption></figure>", stacked("Engine overhead vs script time, per pipeline", "ms", &["overhead", "script", "wait + helpers"], &rows));
        }
    }
    let p95 = whole
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
        extra.push_str("<table data-table=\"slowest-scripts\"><tr><th>slowest scripts</th><th>p95 script ms</th></tr>");
        for (s, v) in slow.iter().take(5) {
            let _ = write!(extra, "<tr><td>{}</td><td>{v:.3}</td></tr>", esc(s));
        }
        extra.push_str("</table>");
    }
    panel(
        "pipelines",
        "Pipeline performance",
        vec![throughput],
        extra,
        &[
            "pipeline.exec.duration",
            "pipeline.node.overhead",
            "script.exec.duration_ms",
        ],
    )
}

async fn security_panel(ctx: &Ctx<'_>) -> String {
    let charts = vec![
        chart(
            ctx,
            "ReBAC traversal depth",
            "avg depth",
            &[(
                "authz.rebac.traversal_depth",
                Agg::Avg,
                "avg",
                None,
                "avg depth",
            )],
            1.0,
        )
        .await,
        chart(
            ctx,
            "API keys requiring ABAC",
            "per s",
            &[(
                "apikey.abac.required",
                Agg::Rate,
                "rate",
                None,
                "abac required",
            )],
            1.0,
        )
        .await,
        {
            let s = ctx
                .series(
                    "auth.login.attempt",
                    Agg::Sum,
                    Some("method"),
                    None,
                    &[("status", "fail")],
                )
                .await;
            let has = !s.is_empty();
            let named: Vec<(String, Vec<(i64, f64)>)> = s
                .into_iter()
                .map(|(g, p)| (format!("fail {}", g.unwrap_or_default()), p))
                .collect();
            Chart {
                html: if has {
                    format!(
                        "<figure>{}<figcaption>{}</figcaption></figure>",
                        lines("Login failures", "attempts", ctx.from, ctx.to, &named),
                        ctx.json_link(
                            "auth.login.attempt",
                            "sum",
                            Some("method"),
                            "&amp;filter=status:fail"
                        )
                    )
                } else {
                    String::new()
                },
                has_data: has,
            }
        },
        chart(
            ctx,
            "OIDC requests by result",
            "requests",
            &[
                (
                    "oidc.authorize.request.count",
                    Agg::Sum,
                    "sum",
                    Some("result"),
                    "authorize",
                ),
                (
                    "oidc.token.request.count",
                    Agg::Sum,
                    "sum",
                    Some("result"),
                    "token",
                ),
                (
                    "oidc.authorize.access_denied.count",
                    Agg::Sum,
                    "sum",
                    Some("reason"),
                    "denied",
                ),
            ],
            1.0,
        )
        .await,
        chart(
            ctx,
            "Authorization decisions and errors",
            "count",
            &[
                (
                    "authz.decision.count",
                    Agg::Sum,
                    "sum",
                    Some("result"),
                    "decision",
                ),
                ("authz.error.count", Agg::Sum, "sum", Some("stage"), "error"),
            ],
            1.0,
        )
        .await,
    ];
    panel(
        "security",
        "Security & identity",
        charts,
        String::new(),
        &[
            "authz.rebac.traversal_depth",
            "apikey.abac.required",
            "auth.login.attempt",
            "oidc.authorize.request.count",
            "oidc.token.request.count",
            "authz.decision.count",
            "authz.error.count",
        ],
    )
}

async fn user_panel(
    ctx: &Ctx<'_>,
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
        let _ = write!(extra, "<option{sel}>{}</option>", esc(t));
    }
    extra.push_str("</select></label> <label>metric <select name=\"metric\">");
    for n in &user {
        let sel = if Some(n.name.as_str()) == chosen.map(|c| c.name.as_str()) {
            " selected"
        } else {
            ""
        };
        let _ = write!(extra, "<option{sel}>{}</option>", esc(&n.name));
    }
    extra.push_str("</select></label> <button type=\"submit\">show</button></form>");
    let mut charts = Vec::new();
    if let Some(m) = chosen {
        let (agg, agg_s) = match m.kind {
            Kind::Counter => (Agg::Sum, "sum"),
            Kind::Gauge => (Agg::Last, "last"),
            Kind::Histogram => (Agg::P95, "p95"),
        };
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
            .map(|t| format!("&amp;tenant={}", esc(t)))
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
    charts.push(
        chart(
            ctx,
            "Rejected points by reason",
            "points",
            &[(
                "helpers.metrics.rejected.count",
                Agg::Sum,
                "sum",
                Some("reason"),
                "",
            )],
            1.0,
        )
        .await,
    );
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
    panel(
        "user",
        "User logic (per tenant)",
        charts,
        extra,
        &[
            "user metrics recorded by scripts through helpers.metrics",
            "helpers.metrics.rejected.count",
        ],
    )
}

async fn webhook_panel(ctx: &Ctx<'_>) -> String {
    let mut extra = String::new();
    let ok = ctx
        .total("webhook.emit.count", Agg::Sum, &[("result", "success")])
        .await;
    let all = ctx.total("webhook.emit.count", Agg::Sum, &[]).await;
    if let Some(all) = all {
        let _ = write!(extra, "<span class=\"stat\" data-stat=\"webhook-success\">Delivery success <b>{:.1}%</b> of {all}</span>", 100.0 * ok.unwrap_or(0.0) / all.max(1.0));
    }
    let charts = vec![
        chart(
            ctx,
            "Delivery latency",
            "ms",
            &[
                ("webhook.delivery.duration_ms", Agg::P50, "p50", None, "p50"),
                ("webhook.delivery.duration_ms", Agg::P95, "p95", None, "p95"),
            ],
            1.0,
        )
        .await,
        chart(
            ctx,
            "Retries",
            "retries",
            &[(
                "webhook.delivery.retry.count",
                Agg::Sum,
                "sum",
                Some("attempt_bucket"),
                "",
            )],
            1.0,
        )
        .await,
    ];
    panel(
        "webhooks",
        "Webhook reliability",
        charts,
        extra,
        &[
            "webhook.emit.count",
            "webhook.delivery.duration_ms",
            "webhook.delivery.retry.count",
        ],
    )
}

async fn admin_panel(ctx: &Ctx<'_>) -> String {
    let charts = vec![
        chart(
            ctx,
            "Interventions and policy changes",
            "actions",
            &[
                (
                    "admin.session.revoke",
                    Agg::Sum,
                    "sum",
                    None,
                    "session revokes",
                ),
                (
                    "admin.policy.change.count",
                    Agg::Sum,
                    "sum",
                    Some("action"),
                    "policy",
                ),
                (
                    "admin.permission_request.approve.count",
                    Agg::Sum,
                    "sum",
                    None,
                    "approvals",
                ),
                (
                    "admin.permission_request.reject.count",
                    Agg::Sum,
                    "sum",
                    None,
                    "rejections",
                ),
                ("admin.stats.view", Agg::Sum, "sum", None, "stats views"),
            ],
            1.0,
        )
        .await,
    ];
    panel(
        "admin",
        "Admin audit",
        charts,
        String::new(),
        &[
            "admin.session.revoke",
            "admin.policy.change.count",
            "admin.permission_request.approve.count",
            "admin.permission_request.reject.count",
            "admin.stats.view",
        ],
    )
}

/// Renders the whole page for a range and filters (also used by the benchmark).
pub async fn render(
    state: &AppState,
    range: &str,
    tenant: Option<&str>,
    metric: Option<&str>,
    refresh: Option<u32>,
    token: Option<&str>,
) -> String {
    let failure = Mutex::new(None);
    let (ctx, range) = context(state, range, &failure);
    let names = state
        .runtime
        .store()
        .metric_names()
        .await
        .unwrap_or_else(|e| {
            ctx.failed(&e);
            Vec::new()
        });
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
    let (system, pipelines, security, user, webhooks, admin) = tokio::join!(
        system_panel(&ctx),
        pipeline_panel(&ctx),
        security_panel(&ctx),
        user_panel(&ctx, &names, tenant, metric, &hidden),
        webhook_panel(&ctx),
        admin_panel(&ctx),
    );
    page_html(
        refresh,
        &picker(range, refresh, token),
        &format!(
            "{}{system}{pipelines}{security}{user}{webhooks}{admin}",
            failure_banner(&failure)
        ),
    )
}

/// The page's first database error, shown above the panels: a panel that looks empty may only
/// be missing what the database did not return.
fn failure_banner(failure: &Mutex<Option<String>>) -> String {
    match &*failure.lock() {
        None => String::new(),
        Some(e) => format!(
            "<section class=\"panel\" id=\"error\" data-error=\"database\"><h2>The database did not answer</h2><p>{}</p><p>Panels below may be incomplete: a chart that shows no data may have data the database did not return.</p></section>",
            esc(e)
        ),
    }
}

/// The time frame of a page for a range name (an unknown name is 1h), and the range shown.
fn context<'a>(
    state: &'a AppState,
    range: &str,
    failure: &'a Mutex<Option<String>>,
) -> (Ctx<'a>, &'static str) {
    let (name, span) = RANGES
        .iter()
        .find(|r| r.0 == range)
        .copied()
        .unwrap_or(("1h", 3_600_000));
    let to = state.runtime.metrics().now_ms();
    let from = to - span;
    let step = STEPS
        .iter()
        .copied()
        .find(|s| *s >= span / 90)
        .unwrap_or(86_400_000);
    let to = to.div_euclid(step) * step + step;
    let from = from.div_euclid(step) * step;
    (
        Ctx {
            state,
            from,
            to,
            step,
            failure,
        },
        name,
    )
}

/// The range and auto-refresh form of the header.
fn picker(range: &str, refresh: Option<u32>, token: Option<&str>) -> String {
    let mut picker = String::from("<form method=\"get\" action=\"/\" id=\"range-picker\"><label>range <select name=\"range\">");
    for (r, _) in RANGES {
        let sel = if *r == range { " selected" } else { "" };
        let _ = write!(picker, "<option{sel}>{r}</option>");
    }
    picker.push_str("</select></label> <label>auto-refresh <select name=\"refresh\">");
    for (v, label) in [(0, "off"), (10, "10 s"), (30, "30 s"), (60, "1 min")] {
        let sel = if refresh.unwrap_or(0) == v {
            " selected"
        } else {
            ""
        };
        let _ = write!(picker, "<option value=\"{v}\"{sel}>{label}</option>");
    }
    picker.push_str("</select></label>");
    if let Some(t) = token {
        let _ = write!(
            picker,
            "<input type=\"hidden\" name=\"token\" value=\"{}\">",
            esc(t)
        );
    }
    picker.push_str(" <button type=\"submit\">apply</button></form>");
    picker
}

/// The whole document around the panels.
fn page_html(refresh: Option<u32>, picker: &str, panels: &str) -> String {
    let meta = match refresh {
        Some(s) if s > 0 => format!("<meta http-equiv=\"refresh\" content=\"{s}\">"),
        _ => String::new(),
    };
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\">{meta}<title>luametrics Observability</title><style>{STYLE}</style></head><body><header><b>luametrics Observability</b>{picker}</header><main>{panels}</main></body></html>"
    )
}

pub(crate) async fn page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(p): Query<Params>,
) -> Response {
    let Some(who) = signed_in(&state, &headers, p.token.as_deref()) else {
        return login_page(
            "Sign in with the admin token or a tenant's read token (or pass ?token=... for scripts).",
        );
    };
    let range = p.range.as_deref().unwrap_or("1h");
    let html = match who {
        Who::Tenant(t) => {
            render_tenant(
                &state,
                &t,
                range,
                p.metric.as_deref(),
                p.refresh,
                p.token.as_deref(),
            )
            .await
        }
        _ => {
            let tenant = p.tenant.as_deref().filter(|t| !t.is_empty());
            render(
                &state,
                range,
                tenant,
                p.metric.as_deref(),
                p.refresh,
                p.token.as_deref(),
            )
            .await
        }
    };
    Html(html).into_response()
}

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
    for n in &shown {
        let sel = if Some(&n.name) == chosen.map(|c| &c.name) {
            " selected"
        } else {
            ""
        };
        let _ = write!(extra, "<option{sel}>{}</option>", esc(&n.name));
    }
    extra.push_str("</select></label> <button type=\"submit\">show</button></form>");
    let mut charts = Vec::new();
    if let Some(m) = chosen {
        let (agg, agg_s) = match m.kind {
            Kind::Counter => (Agg::Sum, "sum"),
            Kind::Gauge => (Agg::Last, "last"),
            Kind::Histogram => (Agg::P95, "p95"),
        };
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
