//! The HTTP sidecar: hosts in any language execute pipelines, record system
//! metrics and query the store; Prometheus scrapes `/metrics`.
//!
//! Every error is JSON with a stable code ([`ApiError`]). Request bodies are size-limited and
//! requests time out. Execute endpoints take the execute (or admin) bearer token; query,
//! traces and pool endpoints take the admin token; `/metrics` optionally. The server records
//! its own traffic through [`HttpMetricsLayer`], which hosts can use on their own services.

#![deny(missing_docs)]

mod chart;
// Public for the dashboard bench only (`dashboard::render`); not part of the API.
#[doc(hidden)]
pub mod dashboard;
mod error;
mod handlers;
mod layer;
pub mod prometheus;
mod scrape;
pub mod time;

pub use error::ApiError;
pub use layer::{HttpMetrics, HttpMetricsLayer, RouteId};

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
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
    /// Tenants' read tokens, by digest: configured ones and those the admin API minted.
    pub tenants: Arc<TenantTokens>,
}

impl Tokens {
    /// Refuses tenant tokens that would be guessable or ambiguous: shorter than 16 bytes, equal
    /// to the admin or execute token or to another tenant's, or for an empty tenant.
    pub fn check(s: &ServerSettings) -> Result<(), String> {
        let mut seen = std::collections::HashMap::new();
        for (tenant, token) in &s.tenant_tokens {
            if tenant.trim().is_empty() {
                return Err("a tenant token is configured for an empty tenant".into());
            }
            if token.len() < 16 {
                return Err(format!(
                    "the token of tenant `{tenant}` is shorter than 16 bytes"
                ));
            }
            if Some(token) == s.admin_token.as_ref() || Some(token) == s.execute_token.as_ref() {
                return Err(format!(
                    "the token of tenant `{tenant}` is the admin or execute token"
                ));
            }
            if let Some(other) = seen.insert(token, tenant) {
                return Err(format!(
                    "tenants `{other}` and `{tenant}` have the same token"
                ));
            }
        }
        Ok(())
    }

    /// The configured tokens, or fresh random ones.
    pub fn from_settings(s: &ServerSettings) -> Self {
        let tenants = TenantTokens::default();
        // `check` refuses unusable ones; an empty one is never a key whatever the caller did.
        for (tenant, token) in s.tenant_tokens.iter().filter(|(_, t)| !t.is_empty()) {
            tenants.insert(&digest(token), tenant, true);
        }
        Self {
            execute: s.execute_token.clone().unwrap_or_else(random_token),
            admin: s.admin_token.clone().unwrap_or_else(random_token),
            tenants: Arc::new(tenants),
        }
    }
}

/// Tenants' read tokens, known by their SHA-256 digest (a lookup by digest reveals nothing
/// about a token through its timing).
#[derive(Debug, Default)]
pub struct TenantTokens {
    /// digest -> (tenant, configured)
    by_digest: parking_lot::RwLock<std::collections::HashMap<String, (Arc<str>, bool)>>,
}

impl TenantTokens {
    fn insert(&self, digest: &str, tenant: &str, configured: bool) {
        self.by_digest
            .write()
            .insert(digest.to_string(), (Arc::from(tenant), configured));
    }

    fn tenant_of(&self, token: &str) -> Option<Arc<str>> {
        self.by_digest
            .read()
            .get(&digest(token))
            .map(|(t, _)| t.clone())
    }

    /// Loads the tokens minted so far (kept in the database as digests), replacing the minted
    /// ones known before: tokens another instance minted or revoked take effect here too.
    pub async fn load_minted(
        &self,
        store: &luametrics_store::Store,
    ) -> Result<usize, luametrics_store::StoreError> {
        let minted = store.tenant_tokens().await?;
        let n = minted.len();
        let mut map = self.by_digest.write();
        map.retain(|_, (_, configured)| *configured);
        for (d, tenant) in minted {
            map.entry(d)
                .or_insert_with(|| (Arc::from(tenant.as_str()), false));
        }
        Ok(n)
    }

    /// Mints a token for `tenant`, keeps its digest in the database, and returns it.
    pub(crate) async fn mint(
        &self,
        store: &luametrics_store::Store,
        tenant: &str,
    ) -> Result<String, luametrics_store::StoreError> {
        let token = random_token();
        let d = digest(&token);
        store.add_tenant_token(&d, tenant).await?;
        self.insert(&d, tenant, false);
        Ok(token)
    }

    /// Revokes every minted token of `tenant` (configured ones stay until the configuration
    /// changes); returns how many were revoked.
    pub(crate) async fn revoke(
        &self,
        store: &luametrics_store::Store,
        tenant: &str,
    ) -> Result<u64, luametrics_store::StoreError> {
        let n = store.revoke_tenant_tokens(tenant).await?;
        self.by_digest
            .write()
            .retain(|_, (t, configured)| *configured || &**t != tenant);
        Ok(n)
    }
}

/// The hex SHA-256 of a token.
fn digest(token: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
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

/// 256 bits from the operating system's random source, as hex.
fn random_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
    /// `/metrics` scrapes in progress, sharing their encodings.
    scrapes: Arc<scrape::Scrapes>,
    /// Request body bytes still free under `max_inflight_body_bytes`.
    bodies: Arc<tokio::sync::Semaphore>,
    /// What `bodies` started with: the setting, raised to one full-size body's charge.
    bodies_budget: usize,
}

impl AppState {
    /// What the handlers of one server share.
    pub fn new(runtime: Arc<Runtime>, tokens: Tokens, settings: ServerSettings) -> Self {
        let budget = settings
            .max_inflight_body_bytes
            .max(body_charge(settings.max_body_bytes as u64))
            .min(tokio::sync::Semaphore::MAX_PERMITS);
        AppState {
            runtime,
            tokens,
            settings,
            scrapes: Arc::default(),
            bodies: Arc::new(tokio::sync::Semaphore::new(budget)),
            bodies_budget: budget,
        }
    }
}

/// Who a request's bearer token says it comes from.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Who {
    /// The admin token: everything.
    Admin,
    /// The execute token: executions and ingestion.
    Execute,
    /// A tenant's read token: that tenant's own metrics, traces and usage.
    Tenant(Arc<str>),
}

/// The bearer token of a request, if any (`Bearer`, either case; the one parser of the API
/// and the dashboard).
pub(crate) fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
}

/// Who `token` belongs to, if anyone.
pub(crate) fn who(state: &AppState, token: &str) -> Option<Who> {
    if token_eq(token, &state.tokens.admin) {
        Some(Who::Admin)
    } else if token_eq(token, &state.tokens.execute) {
        Some(Who::Execute)
    } else {
        state.tokens.tenants.tenant_of(token).map(Who::Tenant)
    }
}

fn identify(state: &AppState, req: &Request) -> Result<Who, ApiError> {
    let Some(token) = bearer(req.headers()) else {
        // A header that is there but not a bearer token in text (another scheme, bytes that
        // are not UTF-8) is a wrong token, not a missing one.
        if req.headers().contains_key(header::AUTHORIZATION) {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "the Authorization header is not `Bearer <token>` in text",
            ));
        }
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing_token",
            "this endpoint needs `Authorization: Bearer <token>`",
        ));
    };
    who(state, token).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "unknown bearer token",
        )
    })
}

fn forbidden(message: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

async fn require_execute(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    match identify(&state, &req)? {
        Who::Admin | Who::Execute => Ok(next.run(req).await),
        Who::Tenant(_) => Err(forbidden(
            "a tenant token can only read its own tenant's data",
        )),
    }
}

async fn require_admin(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    match identify(&state, &req)? {
        Who::Admin => Ok(next.run(req).await),
        Who::Execute => Err(forbidden("the execute token cannot use admin endpoints")),
        Who::Tenant(_) => Err(forbidden(
            "a tenant token can only read its own tenant's data",
        )),
    }
}

/// Admin or a tenant (scoped to its tenant by the handler, which reads [`Who`]).
async fn require_reader(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    match identify(&state, &req)? {
        Who::Execute => Err(forbidden("the execute token cannot read data")),
        who => {
            req.extensions_mut().insert(who);
            Ok(next.run(req).await)
        }
    }
}

async fn require_metrics_token(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if state.settings.metrics_requires_token {
        return require_admin(State(state), req, next).await;
    }
    Ok(next.run(req).await)
}

/// Refuses a body whose declared length is over `max_body_bytes` before any of it is read (a
/// client declaring 1 GB and sending nothing held its connection until the request timeout).
/// (The outermost of our middlewares: every answer from the router goes out through it, and
/// gets [`dashboard::api_headers`] here rather than through a layer of its own, which cost a
/// boxed service and future per request.)
async fn declared_size(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let response = match declared {
        Some(n) if n > state.settings.max_body_bytes as u64 => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "the body declares {n} bytes; at most {} are accepted",
                state.settings.max_body_bytes
            ),
        )
        .into_response(),
        _ => next.run(req).await,
    };
    dashboard::api_headers(response)
}

/// What a body of `declared` bytes may hold, raw and parsed, charged against
/// `max_inflight_body_bytes`: parsing, not the bytes, is what costs memory.
fn body_charge(declared: u64) -> usize {
    usize::try_from(declared)
        .unwrap_or(usize::MAX)
        .saturating_mul(luametrics_runtime::BODY_MEMORY_PER_BYTE)
}

/// Holds an authorized execute or ingest request's share of `max_inflight_body_bytes`
/// (`body_charge` of its declared length, or of `max_body_bytes` when it declares none but has
/// a body) while it is served, or answers `503 server_busy` at once when the bodies in flight
/// leave no room: a bound on what bodies hold once parsed, whatever the number of
/// connections. (The other routes read no body, or a small one: `/login`'s.)
async fn body_budget(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let headers = req.headers();
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let bytes = match declared {
        Some(n) => n.min(state.settings.max_body_bytes as u64),
        None if headers.contains_key(axum::http::header::TRANSFER_ENCODING) => {
            state.settings.max_body_bytes as u64
        }
        None => 0,
    };
    if bytes == 0 {
        return Ok(next.run(req).await);
    }
    let busy = |charge: usize| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_busy",
            format!(
                "request bodies in flight leave no room for one of {bytes} bytes, charged \
                 {charge} bytes once parsed (server.max_inflight_body_bytes = {}); retry shortly",
                state.bodies_budget
            ),
        )
        .with_retry_after(1000)
    };
    let permits = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    let Ok(_held) = state
        .bodies
        .clone()
        .try_acquire_many_owned(permits(body_charge(bytes)))
    else {
        return Err(busy(body_charge(bytes)));
    };
    // Read here (the server asks for the body only now), then charged what its objects and
    // arrays will hold beyond the bytes' share: a one-entry object is 7 bytes of text and a
    // ~650-byte map node parsed (adversary round 9: ~90x a body of them).
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, state.settings.max_body_bytes).await {
        Ok(body) => body,
        Err(e) if e.to_string().contains("length limit") => {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!(
                    "the body is larger than server.max_body_bytes = {}",
                    state.settings.max_body_bytes
                ),
            ))
        }
        Err(e) => {
            return Err(ApiError::bad_request(
                "invalid_request",
                format!("reading the request body failed: {e}"),
            ))
        }
    };
    let structure = containers_charge(&body);
    let total = body_charge(bytes).saturating_add(structure);
    if total > state.bodies_budget {
        // No wait makes room for it.
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "the body's objects and arrays would hold ~{total} bytes parsed, more than all \
                 request bodies in flight may (server.max_inflight_body_bytes = {})",
                state.bodies_budget
            ),
        ));
    }
    let _more = match structure {
        0 => None,
        n => match state.bodies.clone().try_acquire_many_owned(permits(n)) {
            Ok(p) => Some(p),
            Err(_) => return Err(busy(total)),
        },
    };
    Ok(next
        .run(Request::from_parts(parts, axum::body::Body::from(body)))
        .await)
}

/// What a JSON body's objects and arrays hold once parsed beyond `body_charge` of its bytes:
/// a map node (~650 bytes) per `{` and a vector's first room (~130 bytes) per `[` outside
/// strings. The scan follows JSON's strings and escapes as the parser does, so for any prefix
/// the parser accepts (it stops at the first error) the count is exact; braces inside strings
/// cost nothing (they got a false 413 before).
fn containers_charge(body: &[u8]) -> usize {
    let (mut objects, mut arrays) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in body {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => in_string = true,
                b'{' => objects += 1,
                b'[' => arrays += 1,
                _ => {}
            }
        }
    }
    objects
        .saturating_mul(OBJECT_BYTES)
        .saturating_add(arrays.saturating_mul(ARRAY_BYTES))
}

/// A parsed JSON object's map: one B-tree leaf of 11 `String` keys and 11 values, and the
/// allocator's overhead.
const OBJECT_BYTES: usize = 11 * 24 + 11 * 32 + 32;
/// A parsed JSON array's first allocation: room for four values.
const ARRAY_BYTES: usize = 4 * 32 + 16;

async fn timeout(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let limit = Duration::from_millis(state.settings.request_timeout_ms.max(1));
    // A local read blocks the thread it runs on, where this timeout cannot stop it: the store
    // interrupts it at the same deadline.
    let deadline = tokio::time::Instant::now() + limit;
    tokio::time::timeout_at(
        deadline,
        luametrics_store::with_deadline(deadline, next.run(req)),
    )
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
    ("get", "/v1/tenant/usage"),
    ("get", "/v1/pool"),
    ("post", "/v1/tenants/{tenant}/tokens"),
    ("delete", "/v1/tenants/{tenant}/tokens"),
    ("get", "/metrics"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/v1/openapi.json"),
    ("get", "/"),
    ("post", "/login"),
];

/// Largest body of `POST /login` (a form holding one token).
const LOGIN_BODY_BYTES: usize = 8 * 1024;

/// The router with every route, its auth, limits and the HTTP metrics layer.
pub fn router(runtime: Arc<Runtime>, settings: ServerSettings, tokens: Tokens) -> Router {
    let state = AppState::new(runtime.clone(), tokens, settings.clone());
    let execute = Router::new()
        .route("/v1/pipelines/{trigger}/execute", post(handlers::execute))
        .route("/v1/metrics", post(handlers::ingest))
        // Inside the auth check: a request without the token never holds any of the budget
        // (a body trickled to an open route could otherwise hold it for a whole timeout).
        .route_layer(middleware::from_fn_with_state(state.clone(), body_budget))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_execute,
        ));
    let read = Router::new()
        .route("/v1/metrics/names", get(handlers::names))
        .route("/v1/metrics/query", get(handlers::query))
        .route("/v1/traces", get(handlers::traces))
        .route("/v1/traces/{id}", get(handlers::trace))
        .route("/v1/tenant/usage", get(handlers::tenant_usage))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_reader,
        ));
    let admin = Router::new()
        .route("/v1/pool", get(handlers::pool))
        .route(
            "/v1/tenants/{tenant}/tokens",
            post(handlers::mint_tenant_token).delete(handlers::revoke_tenant_tokens),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));
    let scrape = Router::new()
        .route("/metrics", get(handlers::prometheus))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_metrics_token,
        ));
    let pages = Router::new()
        .route("/", get(dashboard::page))
        // A sign-in form is a token: anyone may post one, so its body is kept small.
        .route(
            "/login",
            post(dashboard::login).layer(axum::extract::DefaultBodyLimit::max(LOGIN_BODY_BYTES)),
        )
        .layer(middleware::map_response(dashboard::page_headers));
    let open = Router::new()
        .merge(pages)
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/v1/openapi.json", get(handlers::openapi));
    Router::new()
        .merge(execute)
        .merge(read)
        .merge(admin)
        .merge(scrape)
        .merge(open)
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), timeout))
        .layer(middleware::from_fn_with_state(state.clone(), declared_size))
        .layer(axum::extract::DefaultBodyLimit::max(
            settings.max_body_bytes,
        ))
        .layer(HttpMetricsLayer::new(runtime.metrics().clone()))
        .with_state(state)
}

/// How often each instance reloads the minted tenant tokens: what another instance minted or
/// revoked takes effect here within this long.
pub const TOKEN_REFRESH: Duration = Duration::from_secs(5);

/// Serves until `shutdown` resolves, then drains in-flight requests. The caller flushes the
/// runtime afterwards (`Runtime::shutdown`). Tenant tokens minted earlier are loaded first,
/// then again every [`TOKEN_REFRESH`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    runtime: Arc<Runtime>,
    settings: ServerSettings,
    tokens: Tokens,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    tokens
        .tenants
        .load_minted(runtime.store())
        .await
        .map_err(|e| std::io::Error::other(format!("cannot load the minted tenant tokens: {e}")))?;
    let refresh = {
        let (tenants, store) = (tokens.tenants.clone(), runtime.store().clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(TOKEN_REFRESH).await;
                if let Err(e) = tenants.load_minted(&store).await {
                    tracing::warn!("cannot reload the minted tenant tokens: {e}");
                }
            }
        })
    };
    let limits = ConnLimits {
        header_timeout: Duration::from_millis(settings.header_read_timeout_ms.max(1)),
        write_timeout: Duration::from_millis(settings.write_timeout_ms.max(1)),
        max_connections: settings.max_connections.max(1),
        per_peer: settings.max_connections_per_peer.max(1),
    };
    let app = router(runtime, settings, tokens);
    let served = accept_loop(listener, app, limits, shutdown).await;
    refresh.abort();
    served
}

/// The bounds on connections (`[server]`).
struct ConnLimits {
    header_timeout: Duration,
    write_timeout: Duration,
    max_connections: usize,
    per_peer: usize,
}

/// Which share a connection counts against: its IPv4 address, or its IPv6 /64 (what one
/// subscriber is handed: one machine may speak from any address in it).
fn peer_key(ip: std::net::IpAddr) -> std::net::IpAddr {
    use std::net::{IpAddr, Ipv6Addr};
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

/// One connection being served: its id, the handle that closes it (once its task runs), and
/// what it is doing.
type Conn = (u64, Option<tokio::task::AbortHandle>, Arc<Activity>);

/// What a connection is doing: requests in flight, and since when (ms on [`clock_ms`], plus
/// one; 0: not) its request has been receiving a body that has not all arrived.
#[derive(Default)]
struct Activity {
    busy: std::sync::atomic::AtomicUsize,
    receiving_since: std::sync::atomic::AtomicU64,
    /// The request in flight is safe to cut (GET, HEAD, OPTIONS: the client may ask again,
    /// nothing was done for it that asking again would do twice).
    safe: std::sync::atomic::AtomicBool,
    /// A write to the client is waiting for it to read (see [`WriteDeadline`]): an answer
    /// hyper took whole into its buffer is still on its way, not an idle connection.
    writing: std::sync::atomic::AtomicBool,
}

/// How long a request may have been receiving its body before its connection may be closed
/// to make room at the cap: a body trickled in (adversary round 11: 8 addresses x 128
/// connections each sending a `/login` body a byte a second held every place and `/healthz`
/// answered 1 probe in 60), not one on its way.
const SLOW_BODY: Duration = Duration::from_secs(1);

/// Milliseconds since the first call: the receiving clock.
fn clock_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

/// A body that holds `guard` until it has all been taken (its last frame, an error) or is
/// dropped: what marks a connection as receiving a request's body, or as sending an answer.
struct UntilEnd<B, G> {
    inner: B,
    guard: Option<G>,
}

impl<B, G> http_body::Body for UntilEnd<B, G>
where
    B: http_body::Body + Unpin,
    G: Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        use std::task::Poll;
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_))))
            || this.inner.is_end_stream()
        {
            this.guard = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Marks its connection as receiving a request's body while it lives.
struct Receiving(Arc<Activity>);

impl Receiving {
    /// `inner`, marking the connection as receiving until it has all arrived (or the request
    /// is dropped).
    fn body(
        inner: hyper::body::Incoming,
        activity: &Arc<Activity>,
    ) -> UntilEnd<hyper::body::Incoming, Receiving> {
        use http_body::Body as _;
        let guard = (!inner.is_end_stream()).then(|| {
            activity
                .receiving_since
                .store(clock_ms() + 1, std::sync::atomic::Ordering::Relaxed);
            Receiving(activity.clone())
        });
        UntilEnd { inner, guard }
    }
}

impl Drop for Receiving {
    fn drop(&mut self) {
        self.0
            .receiving_since
            .store(0, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The connections being served, per peer.
#[derive(Default)]
struct Table {
    total: usize,
    next_id: u64,
    peers: std::collections::HashMap<std::net::IpAddr, Vec<Conn>>,
}

/// Connections open per client (see [`peer_key`]); an entry goes when its last connection does.
#[derive(Clone, Default)]
struct Peers(Arc<parking_lot::Mutex<Table>>);

/// One connection's place in [`Peers`], given back on drop.
struct PeerPlace {
    peers: Peers,
    key: std::net::IpAddr,
    id: u64,
    /// What the connection is doing.
    activity: Arc<Activity>,
}

impl Peers {
    /// A place for a new connection from `ip`: none past `per_peer` of its own. At
    /// `max_total`, a client holding fewer connections than another takes the place of that
    /// client's oldest *idle* connection (no request in flight: an idle keep-alive one, or one
    /// still sending its headers), which is closed: a few addresses holding every place
    /// (adversary round 7: 9 addresses, `/healthz` answered 6 times in 80) cannot shut a new
    /// client out, and no request in flight is ever cut to make room (round 8). Only when no
    /// client holding more has an idle connection does a request receiving its body for
    /// longer than [`SLOW_BODY`] lose its connection instead, the longest receiving first
    /// (adversary round 11: bodies trickled a byte a second held every place), and else a
    /// safe request in flight (a read, which its client may ask again: adversary round 12,
    /// one tenant's pipelined reads kept every connection busy); an execution or an ingest
    /// whose body has arrived is never cut. Otherwise the new one is turned away.
    fn enter(&self, ip: std::net::IpAddr, per_peer: usize, max_total: usize) -> Option<PeerPlace> {
        use std::sync::atomic::Ordering::Relaxed;
        let key = peer_key(ip);
        let mut table = self.0.lock();
        let mine = table.peers.get(&key).map_or(0, Vec::len);
        if mine >= per_peer {
            return None;
        }
        if table.total >= max_total {
            let mut candidates: Vec<(std::net::IpAddr, usize)> = table
                .peers
                .iter()
                .filter(|(_, conns)| conns.len() > mine)
                .map(|(k, conns)| (*k, conns.len()))
                .collect();
            candidates.sort_by_key(|c| std::cmp::Reverse(c.1));
            let idle = candidates.iter().find_map(|(peer, _)| {
                let conns = table.peers.get(peer)?;
                let at = conns.iter().position(|(_, h, a)| {
                    h.is_some() && a.busy.load(Relaxed) == 0 && !a.writing.load(Relaxed)
                })?;
                Some((*peer, at))
            });
            let slow = || {
                let before = (clock_ms() + 1).checked_sub(SLOW_BODY.as_millis() as u64)?;
                candidates
                    .iter()
                    .filter_map(|(peer, _)| {
                        let conns = table.peers.get(peer)?;
                        conns
                            .iter()
                            .enumerate()
                            .filter(|(_, (_, h, _))| h.is_some())
                            .map(|(at, (_, _, a))| (at, a.receiving_since.load(Relaxed)))
                            .filter(|&(_, since)| since != 0 && since <= before)
                            .min_by_key(|&(_, since)| since)
                            .map(|(at, since)| (since, *peer, at))
                    })
                    .min()
                    .map(|(_, peer, at)| (peer, at))
            };
            let safe = || {
                candidates.iter().find_map(|(peer, _)| {
                    let conns = table.peers.get(peer)?;
                    let at = conns
                        .iter()
                        .position(|(_, h, a)| h.is_some() && a.safe.load(Relaxed))?;
                    Some((*peer, at))
                })
            };
            let (victim, at) = idle.or_else(slow).or_else(safe)?;
            let conns = table.peers.get_mut(&victim)?;
            let (_, handle, _) = conns.remove(at);
            if conns.is_empty() {
                table.peers.remove(&victim);
            }
            table.total -= 1;
            if let Some(handle) = handle {
                handle.abort();
            }
        }
        table.next_id += 1;
        let id = table.next_id;
        let activity = Arc::new(Activity::default());
        table
            .peers
            .entry(key)
            .or_default()
            .push((id, None, activity.clone()));
        table.total += 1;
        Some(PeerPlace {
            peers: self.clone(),
            key,
            id,
            activity,
        })
    }

    /// Gives a place (`key`, `id`) the handle that closes its connection.
    fn running(&self, key: std::net::IpAddr, id: u64, handle: tokio::task::AbortHandle) {
        let mut table = self.0.lock();
        if let Some(conn) = table
            .peers
            .get_mut(&key)
            .and_then(|conns| conns.iter_mut().find(|(i, _, _)| *i == id))
        {
            conn.1 = Some(handle);
        }
    }
}

/// Counts a request in flight on its connection until its answer has been handed to the
/// connection in full (see [`Sending`]).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn enter(activity: &Arc<Activity>) -> Self {
        activity
            .busy
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0
            .safe
            .store(false, std::sync::atomic::Ordering::Relaxed);
        self.0
            .busy
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// An answer's body that keeps its request in flight until its last byte has been taken to be
/// written (or the answer is dropped): an execution whose answer a slow client has not read
/// yet is still in flight, never an idle connection to close at the cap (before, the request
/// left the count when its answer was ready, and a finished execution's answer could be cut).
/// What hyper took into its buffer and the socket has not taken yet is `Activity::writing`
/// ([`WriteDeadline`]). A client that stops reading altogether meets the write timeout.
type Sending = UntilEnd<axum::body::Body, InFlight>;

/// Counts `answer`'s request in flight on its connection until the answer is sent
/// ([`Sending`]).
fn until_sent<E>(
    activity: &Arc<Activity>,
    answer: impl Future<Output = Result<axum::response::Response, E>>,
) -> impl Future<Output = Result<axum::response::Response, E>> {
    let in_flight = InFlight::enter(activity);
    async move {
        answer.await.map(|answer| {
            answer.map(|inner| {
                axum::body::Body::new(Sending {
                    inner,
                    guard: Some(in_flight),
                })
            })
        })
    }
}

impl Drop for PeerPlace {
    fn drop(&mut self) {
        let mut table = self.peers.0.lock();
        let Some(conns) = table.peers.get_mut(&self.key) else {
            return;
        };
        // Gone already when its place was given to another peer.
        let Some(at) = conns.iter().position(|(id, _, _)| *id == self.id) else {
            return;
        };
        conns.remove(at);
        if conns.is_empty() {
            table.peers.remove(&self.key);
        }
        table.total -= 1;
    }
}

/// A connection whose writes fail once the client has not read for `limit`: a client that
/// sends requests and never reads the answers otherwise holds its connection (and its place
/// under the cap) for good.
struct WriteDeadline {
    io: tokio::net::TcpStream,
    limit: Duration,
    stalled: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// What the connection is doing: `writing` while a write waits for the client.
    activity: Arc<Activity>,
}

impl WriteDeadline {
    fn wait<T>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        polled: std::task::Poll<std::io::Result<T>>,
    ) -> std::task::Poll<std::io::Result<T>> {
        use std::task::Poll;
        match polled {
            Poll::Ready(r) => {
                if self.stalled.take().is_some() {
                    self.activity
                        .writing
                        .store(false, std::sync::atomic::Ordering::Relaxed);
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                if self.stalled.is_none() {
                    self.activity
                        .writing
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                }
                let limit = self.limit;
                let timer = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the client stopped reading its answers",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl tokio::io::AsyncRead for WriteDeadline {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for WriteDeadline {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.io).poll_write(cx, buf);
        this.wait(cx, polled)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.wait(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.io).poll_flush(cx);
        this.wait(cx, polled)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Serves HTTP/1.1 connections until `shutdown`, then lets each finish its request in flight.
/// Bounds axum's own loop does not have: a connection's request headers must arrive within
/// the header timeout (so must the next request on an idle keep-alive connection), a client
/// must read its answers within the write timeout, and at most `connections` are served at
/// once, `per_peer` of them from one address (a connection past either is closed at once).
/// Without them, clients that stop half-way through their headers were kept forever, until
/// the process ran out of file descriptors and `/healthz`, `/metrics` and the database all
/// failed; and one client holding every place shut everyone else out.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let ConnLimits {
        header_timeout,
        write_timeout,
        max_connections,
        per_peer,
    } = limits;
    let peers = Peers::default();
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt;
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(e) => {
                    // Out of descriptors or a connection reset before it was accepted: the
                    // listener stays, and a moment later accepts again.
                    tracing::warn!("cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let Some(place) = peers.enter(peer.ip(), per_peer, max_connections) else {
            // This client holds its share already, or every place is taken by clients holding
            // no more than it does: closed at once, before anything is read.
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (activity, receiving) = (place.activity.clone(), place.activity.clone());
        let service = hyper_util::service::TowerToHyperService::new(
            app.clone()
                .map_request(move |req: axum::http::Request<hyper::body::Incoming>| {
                    use axum::http::Method;
                    let safe =
                        matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
                    receiving
                        .safe
                        .store(safe, std::sync::atomic::Ordering::Relaxed);
                    req.map(|body| axum::body::Body::new(Receiving::body(body, &receiving)))
                })
                .map_future(move |answer| until_sent(&activity, answer)),
        );
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout);
        let io = WriteDeadline {
            io: stream,
            limit: write_timeout,
            stalled: None,
            activity: place.activity.clone(),
        };
        let conn = builder.serve_connection(TokioIo::new(io), service);
        let conn = graceful.watch(conn);
        let (key, id) = (place.key, place.id);
        let task = tokio::spawn(async move {
            let _place = place;
            if let Err(e) = conn.await {
                tracing::trace!("connection ended: {e}");
            }
        });
        peers.running(key, id, task.abort_handle());
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
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

#[cfg(test)]
mod tenant_token_tests {
    use super::*;

    fn with(tokens: &[(&str, &str)]) -> ServerSettings {
        ServerSettings {
            admin_token: Some("admin-token-0123456789".into()),
            tenant_tokens: tokens
                .iter()
                .map(|(t, k)| (t.to_string(), k.to_string()))
                .collect(),
            ..ServerSettings::default()
        }
    }

    #[test]
    fn guessable_or_ambiguous_tenant_tokens_are_refused() {
        assert!(Tokens::check(&with(&[("acme", "0123456789abcdef")])).is_ok());
        for (tokens, needle) in [
            (vec![("acme", "")], "shorter than 16"),
            (vec![("acme", "short")], "shorter than 16"),
            (vec![(" ", "0123456789abcdef")], "empty tenant"),
            (vec![("acme", "admin-token-0123456789")], "admin or execute"),
            (
                vec![("acme", "0123456789abcdef"), ("globex", "0123456789abcdef")],
                "same token",
            ),
        ] {
            let e = Tokens::check(&with(&tokens)).unwrap_err();
            assert!(e.contains(needle), "{e}");
        }
        // Even unchecked, an empty token is never a key.
        let t = Tokens::from_settings(&with(&[("acme", "")]));
        assert!(t.tenants.tenant_of("").is_none());
    }

    #[test]
    fn generated_tokens_are_long_and_distinct() {
        let (a, b) = (random_token(), random_token());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_are_counted_outside_strings_only() {
        let both = OBJECT_BYTES + ARRAY_BYTES;
        assert_eq!(containers_charge(br#"{"a":[1,2]}"#), both);
        // Braces inside a string are text: the parser allocates no container for them.
        assert_eq!(containers_charge(br#"{"a":"{{{[[["}"#), OBJECT_BYTES);
        // An escaped quote does not end the string; an escaped backslash does not escape it.
        assert_eq!(containers_charge(br#"{"a":"\"{{"}"#), OBJECT_BYTES);
        assert_eq!(
            containers_charge(br#"{"a":"\\",  "b":{}}"#),
            2 * OBJECT_BYTES
        );
        // A body of nested containers is charged for each.
        let nested = "[{".repeat(1_000);
        assert_eq!(containers_charge(nested.as_bytes()), 1_000 * both);
    }
}

#[cfg(test)]
mod peers_tests {
    use super::*;
    use std::sync::atomic::Ordering::Relaxed;

    /// A connection from `ip` taking a place, served by a task that never ends.
    fn connect(peers: &Peers, ip: &str) -> Option<(PeerPlace, tokio::task::JoinHandle<()>)> {
        let place = peers.enter(ip.parse().unwrap(), 4, 4)?;
        let task = tokio::spawn(std::future::pending::<()>());
        peers.running(place.key, place.id, task.abort_handle());
        Some((place, task))
    }

    /// The connection's request in flight: `safe` (a read) or not.
    fn in_flight(place: &PeerPlace, safe: bool) {
        place.activity.busy.fetch_add(1, Relaxed);
        place.activity.safe.store(safe, Relaxed);
    }

    // At the cap with no idle connection and no body trickling in, a read in flight makes room
    // (adversary round 12: one tenant's pipelined reads kept every connection busy and no new
    // client got in); an execution or ingest in flight never does.
    #[tokio::test]
    async fn at_the_cap_a_read_in_flight_makes_room_and_a_write_never_does() {
        let peers = Peers::default();
        let (a_post, _t1) = connect(&peers, "127.0.0.2").unwrap();
        let (a_get, a_get_task) = connect(&peers, "127.0.0.2").unwrap();
        let (b1, _t3) = connect(&peers, "127.0.0.3").unwrap();
        let (b2, _t4) = connect(&peers, "127.0.0.3").unwrap();
        in_flight(&a_post, false);
        in_flight(&a_get, true);
        in_flight(&b1, false);
        in_flight(&b2, false);
        let (c, _t5) = connect(&peers, "127.0.0.4").expect("a read's place was not given");
        assert!(a_get_task.await.unwrap_err().is_cancelled());
        in_flight(&c, false);
        // Only writes in flight now: the next new client is turned away.
        assert!(connect(&peers, "127.0.0.5").is_none());
        // A body trickling in for over `SLOW_BODY` makes room too.
        b1.activity.receiving_since.store(1, Relaxed);
        tokio::time::sleep(SLOW_BODY + Duration::from_millis(50)).await;
        assert!(connect(&peers, "127.0.0.5").is_some());
        drop((a_post, b2));
    }

    // Reviewer finding: a request left the count when its answer was ready, before it was
    // written; a finished execution whose answer a slow client had not read was an idle
    // connection, closed to make room at the cap. It stays in flight until its body ends.
    #[tokio::test]
    async fn a_request_stays_in_flight_until_its_answer_is_taken() {
        use http_body::Body as _;
        let activity = Arc::new(Activity::default());
        let (tx, rx) =
            tokio::sync::mpsc::unbounded_channel::<Result<axum::body::Bytes, axum::Error>>();
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        let answer = async move {
            Ok::<_, std::convert::Infallible>(axum::response::Response::new(
                axum::body::Body::from_stream(stream),
            ))
        };
        let answer = until_sent(&activity, answer).await.unwrap();
        // The answer is ready; its body is not sent yet.
        assert_eq!(activity.busy.load(Relaxed), 1);
        let mut body = std::pin::pin!(answer.into_body());
        tx.send(Ok("part".into())).unwrap();
        let frame = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await;
        assert!(frame.is_some());
        assert_eq!(activity.busy.load(Relaxed), 1);
        drop(tx);
        let frame = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await;
        assert!(frame.is_none());
        assert_eq!(activity.busy.load(Relaxed), 0);
        // An answer dropped unsent (its connection closed) leaves the count too.
        let unsent = until_sent(&activity, async {
            Ok::<_, std::convert::Infallible>(axum::response::Response::new(
                axum::body::Body::from("unsent"),
            ))
        })
        .await
        .unwrap();
        assert_eq!(activity.busy.load(Relaxed), 1);
        drop(unsent);
        assert_eq!(activity.busy.load(Relaxed), 0);
    }

    // Reviewer finding: an answer hyper took whole into its buffer, still waiting for a client
    // that does not read, left the connection looking idle, so it was closed at the cap. A
    // write waiting for its client keeps the connection from being taken as idle.
    #[tokio::test]
    async fn a_connection_still_writing_is_not_idle() {
        let peers = Peers::default();
        let (a1, a1_task) = connect(&peers, "127.0.0.2").unwrap();
        let (a2, a2_task) = connect(&peers, "127.0.0.2").unwrap();
        let (b1, _t3) = connect(&peers, "127.0.0.3").unwrap();
        let (b2, _t4) = connect(&peers, "127.0.0.3").unwrap();
        in_flight(&b1, false);
        in_flight(&b2, false);
        a1.activity.writing.store(true, Relaxed);
        let (c, _t5) = connect(&peers, "127.0.0.4").expect("the idle connection's place");
        assert!(a2_task.await.unwrap_err().is_cancelled());
        in_flight(&c, false);
        // Only a connection still writing is left to take: the next new client is refused.
        assert!(connect(&peers, "127.0.0.5").is_none());
        assert!(!a1_task.is_finished());
        // Written, it is idle.
        a1.activity.writing.store(false, Relaxed);
        assert!(connect(&peers, "127.0.0.5").is_some());
        assert!(a1_task.await.unwrap_err().is_cancelled());
        drop((a2, b1, b2));
    }
}
