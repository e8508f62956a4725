//! The HTTP handlers: execute, ingest, queries, traces, tenant usage, pool status, token
//! minting, `/metrics`, health and readiness; each turns its input into one runtime call.
//!
//! Why one file of ~540 lines: every handler is short (parse, one call, map the error); kept
//! together they show the whole API next to `ROUTES` and `openapi.json`.

use crate::{prometheus, time, ApiError, AppState, Who};
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use luametrics_model::{Kind, MetricType, Tags};
use luametrics_pipeline::ExecuteError;
use luametrics_recorder::Rejected;
use luametrics_store::{Agg, AggregateQuery, FindQuery};
use serde::Deserialize;
use serde_json::{json, Value};

/// `Json<T>` whose rejections are our JSON errors (400 malformed/invalid body, 413 too large,
/// 415 wrong content type).
pub(crate) struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => {
                let message = rejection.body_text();
                Err(match rejection {
                    JsonRejection::JsonDataError(_) => {
                        ApiError::bad_request("invalid_body", message)
                    }
                    JsonRejection::JsonSyntaxError(_) => {
                        ApiError::bad_request("malformed_json", message)
                    }
                    JsonRejection::MissingJsonContentType(_) => ApiError::new(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "unsupported_media_type",
                        message,
                    ),
                    other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
                    }
                    other => ApiError::new(other.status(), "invalid_request", message),
                })
            }
        }
    }
}

/// `Path<T>` whose rejection (a segment that is not valid UTF-8 once decoded, or not of type
/// `T`) is our JSON error (400 `invalid_path`), not axum's plain text.
pub(crate) struct ApiPath<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for ApiPath<T>
where
    Path<T>:
        axum::extract::FromRequestParts<S, Rejection = axum::extract::rejection::PathRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| ApiPath(v))
            .map_err(|r| ApiError::bad_request("invalid_path", r.body_text()))
    }
}

/// `Query<T>` whose rejection is our JSON error (400 `invalid_query`).
pub(crate) struct ApiQuery<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for ApiQuery<T>
where
    Query<T>:
        axum::extract::FromRequestParts<S, Rejection = axum::extract::rejection::QueryRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| ApiQuery(v))
            .map_err(|r| ApiError::bad_request("invalid_query", r.body_text()))
    }
}

/// `Form<T>` whose rejection is our JSON error (415 `unsupported_media_type` for another
/// content type, 400 `invalid_body` for a form without the fields).
pub(crate) struct ApiForm<T>(pub T);

impl<S, T> FromRequest<S> for ApiForm<T>
where
    axum::Form<T>: FromRequest<S, Rejection = axum::extract::rejection::FormRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        axum::Form::<T>::from_request(req, state)
            .await
            .map(|axum::Form(v)| ApiForm(v))
            .map_err(|r| {
                let message = r.body_text();
                if r.status() == StatusCode::UNSUPPORTED_MEDIA_TYPE {
                    ApiError::new(r.status(), "unsupported_media_type", message)
                } else if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(r.status(), "payload_too_large", message)
                } else {
                    ApiError::bad_request("invalid_body", message)
                }
            })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExecuteBody {
    tenant: String,
    #[serde(default)]
    event: Value,
}

pub(crate) async fn execute(
    State(s): State<AppState>,
    ApiPath(trigger): ApiPath<String>,
    ApiJson(body): ApiJson<ExecuteBody>,
) -> Result<Response, ApiError> {
    match s.runtime.execute(&trigger, &body.tenant, body.event).await {
        Ok(outcome) => match &outcome.decision {
            // The tenant's line was full: a 429 like a spent budget, not a 200 to retry blindly.
            luametrics_pipeline::Decision::Error {
                code,
                message,
                node,
            } if code == "queue_full" => {
                Err(
                    ApiError::new(StatusCode::TOO_MANY_REQUESTS, "queue_full", message.clone())
                        .with_details(json!({"node": node, "trace_id": outcome.trace_id}))
                        .with_retry_after(1_000),
                )
            }
            // Serialized once, straight into the response body.
            _ => Ok(Json(outcome).into_response()),
        },
        Err(luametrics_runtime::Error::Execute(e)) => Err(execute_error(e)),
        Err(other) => Err(other.into()),
    }
}

/// The HTTP answer to an execution that could not start.
fn execute_error(e: ExecuteError) -> ApiError {
    match e {
        e @ ExecuteError::UnknownTrigger(_) => {
            ApiError::new(StatusCode::NOT_FOUND, "unknown_trigger", e.to_string())
        }
        e @ (ExecuteError::EmptyTenant | ExecuteError::InvalidTenant(_)) => {
            ApiError::bad_request("invalid_tenant", e.to_string())
        }
        ref e @ ExecuteError::TenantBudget {
            ref tenant,
            retry_after_ms,
        } => ApiError::new(StatusCode::TOO_MANY_REQUESTS, e.code(), e.to_string())
            .with_details(serde_json::json!({
                "tenant": tenant,
                "retry_after_ms": retry_after_ms,
            }))
            .with_retry_after(retry_after_ms),
        other => ApiError::bad_request(other.code(), other.to_string()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct IngestPoint {
    name: String,
    kind: Kind,
    value: f64,
    #[serde(default)]
    tags: Tags,
    tenant: Option<String>,
    source: Option<String>,
    timestamp_ms: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct IngestBody {
    points: Vec<IngestPoint>,
}

/// Most points in one `POST /v1/metrics`.
const MAX_POINTS: usize = 10_000;

pub(crate) async fn ingest(
    State(s): State<AppState>,
    ApiJson(body): ApiJson<IngestBody>,
) -> Result<Json<Value>, ApiError> {
    if body.points.len() > MAX_POINTS {
        return Err(ApiError::bad_request(
            "too_many_points",
            format!(
                "{} points; at most {MAX_POINTS} per request",
                body.points.len()
            ),
        ));
    }
    let metrics = s.runtime.metrics();
    let now = metrics.now_ms();
    let mut accepted = 0u64;
    let mut rejected = Vec::new();
    for (i, p) in body.points.into_iter().enumerate() {
        let r = metrics.record_system_at(
            &p.name,
            p.kind,
            p.value,
            p.tags,
            p.tenant.as_deref(),
            p.source.as_deref(),
            p.timestamp_ms.unwrap_or(now),
        );
        match r {
            Ok(_) => accepted += 1,
            Err(Rejected::Invalid(reason)) => {
                rejected.push(json!({"index": i, "name": p.name, "reason": reason.as_str()}))
            }
            Err(Rejected::Dropped(reason)) => {
                rejected.push(json!({"index": i, "name": p.name, "reason": reason.as_str()}))
            }
        }
    }
    Ok(Json(json!({"accepted": accepted, "rejected": rejected})))
}

pub(crate) async fn names(
    State(s): State<AppState>,
    Extension(who): Extension<Who>,
) -> Result<Json<Value>, ApiError> {
    let names = match &who {
        Who::Tenant(t) => s.runtime.store().tenant_metric_names(t).await?,
        _ => s.runtime.store().metric_names().await?,
    };
    Ok(Json(json!({ "names": names })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct QueryParams {
    name: String,
    from: Option<String>,
    to: Option<String>,
    step: Option<String>,
    agg: Option<String>,
    group_by: Option<String>,
    tenant: Option<String>,
    #[serde(rename = "type")]
    metric_type: Option<String>,
    /// Tag filters `key:value`, comma separated.
    filter: Option<String>,
}

/// The `from`/`to` parameters of a range query (ms), `from` defaulting to `default_from` and
/// `to` to now.
fn time_range(
    from: Option<&str>,
    to: Option<&str>,
    default_from: &str,
    now: i64,
) -> Result<(i64, i64), ApiError> {
    let parse = |key: &str, text: &str| {
        time::parse_time_ms(text, now).ok_or_else(|| {
            ApiError::bad_request("invalid_query", format!("`{key}`: `{text}` is not a time"))
        })
    };
    Ok((
        parse("from", from.unwrap_or(default_from))?,
        parse("to", to.unwrap_or("now"))?,
    ))
}

/// The tenant a request may read: a tenant token reads its own (asking for another is
/// forbidden); the admin reads whichever it names, or all.
fn scoped_tenant(who: &Who, asked: Option<String>) -> Result<Option<String>, ApiError> {
    match who {
        Who::Tenant(t) => match asked {
            Some(a) if a != **t => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "a tenant token can only read its own tenant's data",
            )),
            _ => Ok(Some(t.to_string())),
        },
        _ => Ok(asked),
    }
}

pub(crate) async fn query(
    State(s): State<AppState>,
    Extension(who): Extension<Who>,
    params: Result<Query<QueryParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(mut p) = params.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    p.tenant = scoped_tenant(&who, p.tenant.take())?;
    let now = s.runtime.metrics().now_ms();
    let (from, to) = time_range(p.from.as_deref(), p.to.as_deref(), "-1h", now)?;
    let step_s = p.step.as_deref().unwrap_or("1m");
    let step = time::parse_duration_ms(step_s)
        .filter(|v| *v > 0)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_query",
                format!("`step`: `{step_s}` is not a duration"),
            )
        })?;
    let agg: Agg = p.agg.as_deref().unwrap_or("sum").parse()?;
    let metric_type: Option<MetricType> = match p.metric_type.as_deref() {
        None => None,
        Some(t) => Some(
            t.parse()
                .map_err(|m: String| ApiError::bad_request("invalid_query", m))?,
        ),
    };
    let q = AggregateQuery {
        find: FindQuery {
            name: p.name.clone(),
            from_ms: from,
            to_ms: to.saturating_add(1),
            tenant: p.tenant,
            metric_type,
            filters: parse_filters(p.filter.as_deref())?,
        },
        agg,
        step_ms: step,
        group_by: p.group_by,
    };
    let (series, tier) = s.runtime.query(&q).await?;
    Ok(Json(
        json!({"name": p.name, "from": from, "to": to, "step_ms": step, "agg": agg, "tier": tier, "series": series}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TraceParams {
    limit: Option<u32>,
    status: Option<String>,
    pipeline_id: Option<String>,
    tenant: Option<String>,
}

pub(crate) async fn traces(
    State(s): State<AppState>,
    Extension(who): Extension<Who>,
    params: Result<Query<TraceParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(p) = params.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let tenant = scoped_tenant(&who, p.tenant)?;
    let traces = s
        .runtime
        .store()
        .list_traces(
            p.limit.unwrap_or(50),
            p.status.as_deref(),
            p.pipeline_id.as_deref(),
            tenant.as_deref(),
        )
        .await?;
    Ok(Json(json!({ "traces": traces })))
}

pub(crate) async fn trace(
    State(s): State<AppState>,
    Extension(who): Extension<Who>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    // Another tenant's trace is as unknown to a tenant token as one that never existed; a
    // tenant's read takes one of its own places among the reads.
    let tenant = match &who {
        Who::Tenant(mine) => Some(&**mine),
        _ => None,
    };
    let found = s.runtime.store().trace_for(&id, tenant).await?;
    match found {
        Some(t) => Ok(Json(serde_json::to_value(t).unwrap_or(Value::Null))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_trace",
            format!(
                "no trace `{}` (not sampled, expired or never existed)",
                // An id is a short hex string: a long one is not echoed whole.
                truncate_for_message(&id, 64)
            ),
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UsageParams {
    tenant: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

/// A tenant's usage: its points by result and reason over a range (from the store), since the
/// process started (with the metric names involved), its series against the limits, and its
/// engine time against its budget.
pub(crate) async fn tenant_usage(
    State(s): State<AppState>,
    Extension(who): Extension<Who>,
    params: Result<Query<UsageParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(p) = params.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let Some(tenant) = scoped_tenant(&who, p.tenant)? else {
        return Err(ApiError::bad_request(
            "invalid_query",
            "`tenant` is required with the admin token",
        ));
    };
    let now = s.runtime.metrics().now_ms();
    let (from, to) = time_range(p.from.as_deref(), p.to.as_deref(), "-24h", now)?;
    let mut range = json!({});
    for result in ["accepted", "overflowed", "rejected", "dropped"] {
        let q = AggregateQuery {
            find: FindQuery {
                name: "luametrics.tenant.points.count".into(),
                from_ms: from,
                to_ms: to.saturating_add(1),
                tenant: Some(tenant.clone()),
                metric_type: Some(MetricType::System),
                filters: [("result".to_string(), result.to_string())].into(),
            },
            agg: Agg::Sum,
            step_ms: to.saturating_sub(from).max(1).saturating_add(1),
            group_by: Some("reason".into()),
        };
        let (series, _) = s.runtime.query(&q).await?;
        let total = |points: &[(i64, f64)]| points.iter().map(|(_, v)| v).sum::<f64>() as u64;
        range[result] = match result {
            "accepted" | "overflowed" => {
                json!(series.iter().map(|x| total(&x.points)).sum::<u64>())
            }
            _ => Value::Object(
                series
                    .iter()
                    .map(|x| (x.group.clone().unwrap_or_default(), json!(total(&x.points))))
                    .collect(),
            ),
        };
    }
    let limits = &s.runtime.config().limits;
    Ok(Json(json!({
        "tenant": tenant,
        "range": {"from": from, "to": to, "points": range,
                  "note": "points of windows already flushed to the database"},
        "since_start": s.runtime.metrics().tenant_points(&tenant),
        "series": {
            "active": s.runtime.metrics().tenant_series(&tenant),
            "max_per_tenant": limits.max_series_per_tenant,
            "max_per_name": limits.max_series_per_name,
        },
        "rate": {"points_per_minute": limits.points_per_minute, "burst": limits.burst},
        "engine": s.runtime.tenant_engine_usage(&tenant),
    })))
}

/// Mints a read token for a tenant (admin only); the token is shown once.
pub(crate) async fn mint_tenant_token(
    State(s): State<AppState>,
    ApiPath(tenant): ApiPath<String>,
) -> Result<Response, ApiError> {
    if let Err(why) = luametrics_model::check_tenant(&tenant) {
        return Err(ApiError::bad_request(
            "invalid_tenant",
            format!("the tenant id {why}"),
        ));
    }
    let token = s.tokens.tenants.mint(s.runtime.store(), &tenant).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"tenant": tenant, "token": token})),
    )
        .into_response())
}

/// Revokes every minted token of a tenant (admin only).
pub(crate) async fn revoke_tenant_tokens(
    State(s): State<AppState>,
    ApiPath(tenant): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let revoked = s.tokens.tenants.revoke(s.runtime.store(), &tenant).await?;
    Ok(Json(json!({"tenant": tenant, "revoked": revoked})))
}

pub(crate) async fn pool(State(s): State<AppState>) -> Json<Value> {
    Json(serde_json::to_value(s.runtime.pool_status()).unwrap_or(Value::Null))
}

pub(crate) async fn prometheus(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    let openmetrics = wants_openmetrics(&openmetrics);
    let metrics = s.runtime.metrics().clone();
    // Snapshot shard by shard, then encode off the async workers: recording never waits. One
    // encoding per format at a time, shared by the scrapes waiting for it (`scrape.rs`).
    let encode = move || {
        let series = metrics.exposition();
        prometheus::encode(&series, &metrics.config().catalog, openmetrics)
    };
    let Some(body) = s.scrapes.body(openmetrics, encode).await else {
        return ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "exposition_failed",
            "encoding the exposition failed".to_string(),
        )
        .into_response();
    };
    let ct = if openmetrics {
        prometheus::OPENMETRICS_CONTENT_TYPE
    } else {
        prometheus::TEXT_CONTENT_TYPE
    };
    ([(header::CONTENT_TYPE, ct)], body).into_response()
}

/// Whether a scraper's `Accept` prefers OpenMetrics to the text format: its best quality for
/// `application/openmetrics-text` is above zero and at least that of `text/plain` (or of a
/// wildcard standing for it), so `q=0` refuses it as RFC 9110 says.
fn wants_openmetrics(accept: &str) -> bool {
    let (mut om, mut text) = (0.0f32, 0.0f32);
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
            .map_or(1.0, |(_, v)| v.trim().parse::<f32>().unwrap_or(0.0))
            .clamp(0.0, 1.0);
        match media.as_str() {
            "application/openmetrics-text" => om = om.max(q),
            "text/plain" | "text/*" | "*/*" => text = text.max(q),
            _ => {}
        }
    }
    om > 0.0 && om >= text
}

pub(crate) async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub(crate) async fn readyz(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    // Engines stuck in C past their limit hold a thread and a Lua state each: past the
    // configured bound the service stops taking traffic until they return.
    let pool = s.runtime.pool_status();
    let bound = s.runtime.config().pool.max_abandoned as i64;
    if pool.abandoned_running > bound {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "engines_abandoned",
            format!(
                "{} abandoned executions are still running (bound {bound})",
                pool.abandoned_running
            ),
        ));
    }
    // The recorder's own view: no database call here, so a lock or a deleted file cannot make
    // readiness hang, and no connection can create an empty file at the path.
    let mut problems: Vec<(&'static str, String)> = Vec::new();
    if let Some(fault) = s.runtime.store().file_fault() {
        problems.push((
            "database_gone",
            format!("the database file was {fault} while open"),
        ));
    }
    let health = s.runtime.metrics().health();
    for (code, message) in health.problems() {
        if !problems.iter().any(|(c, _)| *c == code) {
            problems.push((code, message));
        }
    }
    if let Some(&(code, _)) = problems.first() {
        let message = problems
            .iter()
            .map(|(_, m)| m.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        let list: Vec<Value> = problems
            .iter()
            .map(|(c, m)| json!({"code": c, "message": m}))
            .collect();
        return Err(
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
                .with_details(json!({"problems": list, "health": health})),
        );
    }
    Ok(Json(json!({
        "status": "ready",
        "pipelines": s.runtime.pipelines().len(),
        "backlog_rows": health.backlog_rows,
    })))
}

pub(crate) async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], crate::OPENAPI).into_response()
}

/// At most `max` characters of `s`, marked when cut: what an error message repeats of an input.
fn truncate_for_message(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}...", &s[..at]),
        None => s.to_string(),
    }
}

pub(crate) async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this endpoint",
    )
}

/// `key:value,key2:value2` into tag filters.
pub(crate) fn parse_filters(text: Option<&str>) -> Result<Tags, ApiError> {
    let mut tags = Tags::new();
    for part in text.unwrap_or("").split(',').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once(':').ok_or_else(|| {
            ApiError::bad_request(
                "invalid_query",
                format!("`filter`: `{part}` is not key:value"),
            )
        })?;
        tags.insert(k.to_string(), v.to_string());
    }
    Ok(tags)
}

#[cfg(test)]
mod tests {
    use super::{truncate_for_message, wants_openmetrics};

    #[test]
    fn messages_repeat_at_most_a_bounded_part_of_an_input() {
        assert_eq!(truncate_for_message("abc", 64), "abc");
        let long = "€".repeat(60_000);
        let shown = truncate_for_message(&long, 64);
        assert_eq!(shown.chars().count(), 67);
        assert!(shown.ends_with("..."));
    }

    #[test]
    fn openmetrics_is_served_only_when_preferred() {
        // What Prometheus sends: OpenMetrics first.
        assert!(wants_openmetrics(
            "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
        ));
        assert!(wants_openmetrics(
            "application/openmetrics-text; version=1.0.0"
        ));
        assert!(wants_openmetrics("Application/OpenMetrics-Text"));
        // Refused, or preferred less than the text format.
        assert!(!wants_openmetrics("application/openmetrics-text;q=0"));
        assert!(!wants_openmetrics(
            "application/openmetrics-text;q=0.0, */*"
        ));
        assert!(!wants_openmetrics(
            "text/plain;q=0.9, application/openmetrics-text;q=0.5"
        ));
        assert!(!wants_openmetrics("application/openmetrics-text;q=junk"));
        assert!(!wants_openmetrics(""));
        assert!(!wants_openmetrics("*/*"));
        assert!(!wants_openmetrics("application/json"));
    }
}
