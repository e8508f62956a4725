//! The Observability dashboard: six panels rendered on the server as HTML with
//! inline SVG charts. No script and no external resource, so it works on a machine with no
//! internet. Behind the admin token (bearer header, `luametrics_token` cookie set by the login
//! form, or a `token` query parameter for scripts).

use crate::chart::{esc, lines, q, stacked};
use crate::{AppState, Who};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use luametrics_model::{ChartSpec, Dashboard, Kind, PanelSpec, Tags};
use luametrics_store::{Agg, AggregateQuery, FindQuery, NameInfo};
use parking_lot::Mutex;
use serde::Deserialize;
use std::fmt::Write;

mod panels;
mod tenant;

pub use tenant::render_tenant;

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

/// What the dashboard's pages (HTML with secrets in their cookie) answer with: no script,
/// frame or outside resource may run them (`default-src 'none'`, styles and inline SVG
/// only), no one frames them, no one caches them, and their links leak no URL (a `token`
/// parameter).
pub(crate) async fn page_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::CACHE_CONTROL, "no-store"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        headers.insert(name, header::HeaderValue::from_static(value));
    }
    response
}

/// What every other answer carries (JSON, `/metrics`, the 404, 405 and 413 answers on any path,
/// a page's included): nothing a browser could sniff into a document and run, nothing framed.
/// A page's own policy, set first, is kept.
pub(crate) fn api_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; frame-ancestors 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ] {
        if !headers.contains_key(&name) {
            headers.insert(name, header::HeaderValue::from_static(value));
        }
    }
    response
}

/// Whether a sign-in comes from another site (a browser says so in `Origin` or
/// `Sec-Fetch-Site`): such a form could sign an admin in as an attacker's tenant (login CSRF).
fn cross_site(headers: &HeaderMap) -> bool {
    if headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("cross-site"))
    {
        return true;
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin_host = origin
        .split_once("://")
        .map_or(origin, |(_, rest)| rest)
        .trim_end_matches('/');
    host.is_none_or(|h| !h.eq_ignore_ascii_case(origin_host))
}

pub(crate) async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    crate::handlers::ApiForm(form): crate::handlers::ApiForm<Login>,
) -> Response {
    if cross_site(&headers) {
        let mut page = login_page("Sign in from this server's own page.");
        *page.status_mut() = StatusCode::FORBIDDEN;
        return page;
    }
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

    /// The same frame in one bucket: totals over the whole range.
    fn whole(&self) -> Self {
        Ctx {
            step: (self.to - self.from).max(1),
            ..*self
        }
    }

    /// One number over the whole range: the same query with a single bucket.
    async fn total(&self, name: &str, agg: Agg, filters: &[(&str, &str)]) -> Option<f64> {
        self.whole()
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
            q(name),
            self.from,
            self.to,
            self.step,
            group_by.map(|g| format!("&amp;group_by={}", q(g))).unwrap_or_default(),
            extra
        )
    }
}

struct Chart {
    html: String,
    has_data: bool,
}

/// A line chart as the dashboard file describes it: one line per series, or per value of a
/// series' `group_by`, each with a link to the JSON query behind it.
async fn chart(ctx: &Ctx<'_>, spec: &ChartSpec) -> Chart {
    let scale = if spec.per_minute {
        60_000.0 / ctx.step as f64
    } else {
        1.0
    };
    let mut all = Vec::new();
    let mut links = String::new();
    for s in &spec.series {
        // The file is checked against the aggregations the store knows (a unit test).
        let agg = match s.agg.parse::<Agg>() {
            Ok(a) => a,
            Err(e) => {
                ctx.failed(&e);
                continue;
            }
        };
        let filters: Vec<(&str, &str)> = s
            .filter
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let group_by = s.group_by.as_deref();
        for (group, points) in ctx.series(&s.metric, agg, group_by, None, &filters).await {
            let label = match (group, s.label.is_empty()) {
                (Some(g), true) => g,
                (Some(g), false) => format!("{} {g}", s.label),
                (None, false) => s.label.clone(),
                (None, true) => s.metric.clone(),
            };
            all.push((
                label,
                points.into_iter().map(|(t, v)| (t, v * scale)).collect(),
            ));
        }
        let filter_q: String = filters
            .iter()
            .map(|(k, v)| format!("&amp;filter={}", q(&format!("{k}:{v}"))))
            .collect();
        links.push_str(&ctx.json_link(&s.metric, &s.agg, group_by, &filter_q));
        links.push(' ');
    }
    let has_data = !all.is_empty();
    let html = if has_data {
        format!(
            "<figure>{}<figcaption>{links}</figcaption></figure>",
            lines(&spec.title, &spec.unit, ctx.from, ctx.to, &all)
        )
    } else {
        String::new()
    };
    Chart { html, has_data }
}

/// The metric picker's options (the chosen one selected) and the end of its form.
fn metric_options<N: std::borrow::Borrow<NameInfo>>(
    names: &[N],
    chosen: Option<&NameInfo>,
) -> String {
    let mut out = String::new();
    for n in names {
        let n = n.borrow();
        let sel = if Some(n.name.as_str()) == chosen.map(|c| c.name.as_str()) {
            " selected"
        } else {
            ""
        };
        let _ = write!(out, "<option{sel}>{}</option>", esc(&n.name));
    }
    out.push_str("</select></label> <button type=\"submit\">show</button></form>");
    out
}

/// How a user metric is drawn by default: counters summed, gauges' last value, histograms' p95.
fn agg_of(kind: Kind) -> (Agg, &'static str) {
    match kind {
        Kind::Counter => (Agg::Sum, "sum"),
        Kind::Gauge => (Agg::Last, "last"),
        Kind::Histogram => (Agg::P95, "p95"),
    }
}

/// What a panel without data asks the host to record.
fn hint_names(spec: &PanelSpec) -> Vec<&str> {
    spec.fed_by.iter().map(String::as_str).collect()
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
    // Every panel at once (each runs its own queries).
    let panels = futures::future::join_all(Dashboard::builtin().panel.iter().map(|spec| {
        let (ctx, names, hidden) = (&ctx, &names, &hidden);
        async move {
            if spec.custom {
                panels::user_panel(ctx, spec, names, tenant, metric, hidden).await
            } else {
                panels::spec_panel(ctx, spec).await
            }
        }
    }))
    .await;
    page_html(
        refresh,
        &picker(range, refresh, token),
        &format!("{}{}", failure_banner(&failure), panels.concat()),
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
    crate::handlers::ApiQuery(p): crate::handlers::ApiQuery<Params>,
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
