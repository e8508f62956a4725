//! The HTTP sidecar (SPEC §9): hosts in any language execute pipelines, record system
//! metrics and query the store; Prometheus scrapes `/metrics`.
//!
//! Every error is JSON with a stable code ([`ApiError`]). Request bodies are size-limited and
//! requests time out. Execute endpoints take the execute (or admin) bearer token; query,
//! traces and pool endpoints take the admin token; `/metrics` optionally. The server records
//! its own traffic through [`HttpMetricsLayer`], which hosts can use on their own services.

mod chart;
pub mod dashboard;
mod error;
mod handlers;
mod layer;
pub mod prometheus;
pub mod time;

pub use error::ApiError;
pub use layer::{HttpMetrics, HttpMetricsLayer, RouteId};

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use luametrics_runtime::{Runtime, ServerSettings};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// The OpenAPI document of this API (kept true by a test that walks the router).
pub const OPENAPI: &str = include_str!("../openapi.json");

/// Tokens in force (generated when the configuration leaves them unset).
#[derive(Debug, Clone)]
pub struct Tokens {
    /// For execute and metric ingestion.
    pub execute: String,
    /// For queries, traces, pool status and the dashboard.
    pub admin: String,
}

impl Tokens {
    /// The configured tokens, or fresh random ones.
    pub fn from_settings(s: &ServerSettings) -> Self {
        Self {
            execute: s.execute_token.clone().unwrap_or_else(random_token),
            admin: s.admin_token.clone().unwrap_or_else(random_token),
        }
    }
}

/// Compares a presented token with a configured one in time that does not depend on where
/// they differ (nor, beyond its length, on the presented token), so response timing tells an
/// attacker nothing about the token.
pub(crate) fn token_eq(presented: &str, expected: &str) -> bool {
    let (a, b) = (presented.as_bytes(), expected.as_bytes());
    let mut diff = (a.len() != b.len()) as u8;
    for (i, &e) in b.iter().enumerate() {
        let p = a.get(i).copied().unwrap_or(0);
        diff |= p ^ e;
    }
    std::hint::black_box(diff) == 0 && !expected.is_empty()
}

fn random_token() -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut out = String::new();
    for i in 0..4u64 {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(i);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The runtime behind the API.
    pub runtime: Arc<Runtime>,
    /// Tokens in force.
    pub tokens: Tokens,
    /// Server settings.
    pub settings: ServerSettings,
}

#[derive(Clone, Copy, PartialEq)]
enum Access {
    Execute,
    Admin,
}

fn bearer(req: &Request) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
}

fn check(state: &AppState, req: &Request, need: Access) -> Result<(), ApiError> {
    let Some(token) = bearer(req) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing_token",
            "this endpoint needs `Authorization: Bearer <token>`",
        ));
    };
    let is_admin = token_eq(token, &state.tokens.admin);
    let is_execute = token_eq(token, &state.tokens.execute);
    match (need, is_admin, is_execute) {
        (_, true, _) => Ok(()),
        (Access::Execute, _, true) => Ok(()),
        (Access::Admin, _, true) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the execute token cannot use admin endpoints",
        )),
        _ => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "unknown bearer token",
        )),
    }
}

async fn require_execute(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    check(&state, &req, Access::Execute)?;
    Ok(next.run(req).await)
}

async fn require_admin(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    check(&state, &req, Access::Admin)?;
    Ok(next.run(req).await)
}

async fn require_metrics_token(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if state.settings.metrics_requires_token {
        check(&state, &req, Access::Admin)?;
    }
    Ok(next.run(req).await)
}

async fn timeout(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let limit = Duration::from_millis(state.settings.request_timeout_ms.max(1));
    tokio::time::timeout(limit, next.run(req))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                format!("the request took longer than {} ms", limit.as_millis()),
            )
        })
}

/// Every route as `(method, path template)`; the OpenAPI document must list exactly these.
pub const ROUTES: &[(&str, &str)] = &[
    ("post", "/v1/pipelines/{trigger}/execute"),
    ("post", "/v1/metrics"),
    ("get", "/v1/metrics/names"),
    ("get", "/v1/metrics/query"),
    ("get", "/v1/traces"),
    ("get", "/v1/traces/{id}"),
    ("get", "/v1/pool"),
    ("get", "/metrics"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/v1/openapi.json"),
    ("get", "/"),
    ("post", "/login"),
];

/// The router with every route, its auth, limits and the HTTP metrics layer.
pub fn router(runtime: Arc<Runtime>, settings: ServerSettings, tokens: Tokens) -> Router {
    let state = AppState {
        runtime: runtime.clone(),
        tokens,
        settings: settings.clone(),
    };
    let execute = Router::new()
        .route("/v1/pipelines/{trigger}/execute", post(handlers::execute))
        .route("/v1/metrics", post(handlers::ingest))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_execute,
        ));
    let admin = Router::new()
        .route("/v1/metrics/names", get(handlers::names))
        .route("/v1/metrics/query", get(handlers::query))
        .route("/v1/traces", get(handlers::traces))
        .route("/v1/traces/{id}", get(handlers::trace))
        .route("/v1/pool", get(handlers::pool))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));
    let scrape = Router::new()
        .route("/metrics", get(handlers::prometheus))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_metrics_token,
        ));
    let open = Router::new()
        .route("/", get(dashboard::page))
        .route("/login", post(dashboard::login))
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/v1/openapi.json", get(handlers::openapi));
    Router::new()
        .merge(execute)
        .merge(admin)
        .merge(scrape)
        .merge(open)
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), timeout))
        .layer(axum::extract::DefaultBodyLimit::max(
            settings.max_body_bytes,
        ))
        .layer(HttpMetricsLayer::new(runtime.metrics().clone()))
        .with_state(state)
}

/// Serves until `shutdown` resolves, then drains in-flight requests. The caller flushes the
/// runtime afterwards (`Runtime::shutdown`).
pub async fn serve(
    listener: tokio::net::TcpListener,
    runtime: Arc<Runtime>,
    settings: ServerSettings,
    tokens: Tokens,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(runtime, settings, tokens);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

#[cfg(test)]
mod token_tests {
    use super::token_eq;

    #[test]
    fn tokens_compare_exactly() {
        assert!(token_eq("s3cret-token", "s3cret-token"));
        for other in [
            "",
            "s3cret-toke",
            "s3cret-tokenX",
            "S3cret-token",
            "s3cret-tokeN",
        ] {
            assert!(!token_eq(other, "s3cret-token"), "{other:?}");
        }
        // An empty configured token never matches, even an empty presented one.
        assert!(!token_eq("", ""));
    }
}
