//! A tower `Layer` recording the HTTP metrics of docs/policy.md for any service: `http.request.count`,
//! `http.request.duration_ms`, `http.request.size_bytes` and `http.response.size_bytes`, tagged
//! with `route_id` (the matched route template, never the raw path), `method` and
//! `status_class`.

use axum::extract::MatchedPath;
use axum::http::{Request, Response};
use http_body::Body;
use luametrics_model::{Kind, Tags};
use luametrics_sink::{SeriesHandle, SystemMetrics};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tower::{Layer, Service};

/// The route template of a request, for hosts that do not route with axum: insert it as a
/// request extension before this layer runs. Requests with neither this nor axum's matched path
/// are recorded as `route_id="unmatched"`.
#[derive(Debug, Clone)]
pub struct RouteId(pub String);

/// Most (route, method, status class) combinations whose handles are kept; past it the cache
/// starts over (a host's route ids or clients' method names must not grow it without bound).
const MAX_HANDLES: usize = 1_024;

/// The four series of one (route, method, status class), made once: a request records its
/// points without building tag maps or running the catalog and PII checks.
struct HttpSeries {
    count: Arc<dyn SeriesHandle>,
    duration: Arc<dyn SeriesHandle>,
    request_size: Arc<dyn SeriesHandle>,
    response_size: Arc<dyn SeriesHandle>,
}

type HandleKey = (String, &'static str, &'static str);

/// The `method` label: one of HTTP's standard methods, or `other`. A client may send any token
/// as its method (before authentication, too), and each new label value would be new series
/// held until idle: an open door to the memory bound (adversary round 7).
fn method_label(method: &axum::http::Method) -> &'static str {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
    ];
    KNOWN
        .into_iter()
        .find(|m| *m == method.as_str())
        .unwrap_or("other")
}

/// Handles shared by every clone of a layer and its services.
struct Handles {
    metrics: Arc<dyn SystemMetrics>,
    map: Mutex<HashMap<HandleKey, Arc<HttpSeries>>>,
}

impl Handles {
    fn get(&self, key: HandleKey) -> Arc<HttpSeries> {
        if let Some(s) = self.map.lock().get(&key) {
            return s.clone();
        }
        let (route, method, class) = (&key.0, &key.1, key.2);
        let tags = |with_status: bool| {
            let mut t = Tags::from([
                ("route_id".to_string(), route.clone()),
                ("method".to_string(), method.to_string()),
            ]);
            if with_status {
                t.insert("status_class".to_string(), class.to_string());
            }
            t
        };
        let m = &self.metrics;
        let made = Arc::new(HttpSeries {
            count: m.series("http.request.count", Kind::Counter, tags(true), None),
            duration: m.series(
                "http.request.duration_ms",
                Kind::Histogram,
                tags(true),
                None,
            ),
            request_size: m.series(
                "http.request.size_bytes",
                Kind::Histogram,
                tags(false),
                None,
            ),
            response_size: m.series(
                "http.response.size_bytes",
                Kind::Histogram,
                tags(true),
                None,
            ),
        });
        let mut map = self.map.lock();
        if map.len() >= MAX_HANDLES {
            map.clear();
        }
        map.entry(key).or_insert(made).clone()
    }
}

/// Records HTTP metrics through the engine-recorder contract ([`SystemMetrics`], which the
/// recorder's `MetricsService` implements); never fails a request.
#[derive(Clone)]
pub struct HttpMetricsLayer {
    handles: Arc<Handles>,
}

impl HttpMetricsLayer {
    /// A layer recording into `metrics` (a `MetricsService`, or any other recorder).
    pub fn new(metrics: impl SystemMetrics) -> Self {
        Self {
            handles: Arc::new(Handles {
                metrics: Arc::new(metrics),
                map: Mutex::new(HashMap::new()),
            }),
        }
    }
}

impl<S> Layer<S> for HttpMetricsLayer {
    type Service = HttpMetrics<S>;
    fn layer(&self, inner: S) -> Self::Service {
        HttpMetrics {
            inner,
            handles: self.handles.clone(),
        }
    }
}

/// The service [`HttpMetricsLayer`] wraps around another.
#[derive(Clone)]
pub struct HttpMetrics<S> {
    inner: S,
    handles: Arc<Handles>,
}

fn status_class(code: u16) -> &'static str {
    match code {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

impl<S, B, R> Service<Request<B>> for HttpMetrics<S>
where
    S: Service<Request<B>, Response = Response<R>> + Send + 'static,
    S::Future: Send + 'static,
    R: Body,
    B: Body,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let start = Instant::now();
        let route = req
            .extensions()
            .get::<RouteId>()
            .map(|r| r.0.clone())
            .or_else(|| {
                req.extensions()
                    .get::<MatchedPath>()
                    .map(|m| m.as_str().to_string())
            })
            .unwrap_or_else(|| "unmatched".to_string());
        let method = method_label(req.method());
        let request_size = req.body().size_hint().exact().or_else(|| {
            req.headers()
                .get(axum::http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
        });
        let handles = self.handles.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await?;
            let class = status_class(res.status().as_u16());
            let ms = start.elapsed().as_secs_f64() * 1000.0;
            let response_size = res.body().size_hint().exact().or_else(|| {
                res.headers()
                    .get(axum::http::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
            });
            let series = handles.get((route, method, class));
            // Refused points are counted by the service; they never fail the request.
            series.count.record(1.0);
            series.duration.record(ms);
            if let Some(n) = request_size {
                series.request_size.record(n as f64);
            }
            if let Some(n) = response_size {
                series.response_size.record(n as f64);
            }
            Ok(res)
        })
    }
}
