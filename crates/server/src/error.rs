//! Every HTTP error as JSON with a stable code (`{"error": {"code", "message", ...}}`), and the
//! mapping from the store's and the runtime's errors to status codes.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// Every error the API returns: a status and a JSON body `{"error": {"code", "message"}}`
/// whose `code` is stable.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// Human-readable detail.
    pub message: String,
    /// Structured detail for clients that act on it (e.g. `/readyz`'s problems).
    pub details: Option<serde_json::Value>,
    /// Seconds a client should wait before retrying (`Retry-After`), for 429s.
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    /// An error with its status and code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: None,
            retry_after_s: None,
        }
    }

    /// The same error telling the client to retry in `ms` (rounded up to whole seconds, the
    /// unit of `Retry-After`).
    pub fn with_retry_after(mut self, ms: u64) -> Self {
        self.retry_after_s = Some(ms.div_ceil(1000).max(1));
        self
    }

    /// The same error with structured detail under `error.details`.
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }

    /// 400 with a code.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = serde_json::json!({"code": self.code, "message": self.message});
        if let Some(d) = self.details {
            error["details"] = d;
        }
        let body = serde_json::json!({ "error": error });
        let mut response = (self.status, Json(body)).into_response();
        if let Some(s) = self.retry_after_s {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, s.into());
        }
        response
    }
}

impl From<luametrics_store::StoreError> for ApiError {
    fn from(e: luametrics_store::StoreError) -> Self {
        match e {
            luametrics_store::StoreError::InvalidQuery(m) => Self::bad_request("invalid_query", m),
            e @ luametrics_store::StoreError::ReadTimeout { .. } => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "read_timeout",
                e.to_string(),
            ),
            e @ luametrics_store::StoreError::ReadBusy { .. } => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "read_busy", e.to_string())
                    .with_retry_after(1_000)
            }
            other if other.is_transient() => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "database_unavailable",
                other.to_string(),
            ),
            other => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "database_error",
                other.to_string(),
            ),
        }
    }
}

impl From<luametrics_runtime::Error> for ApiError {
    fn from(e: luametrics_runtime::Error) -> Self {
        match e {
            luametrics_runtime::Error::Store(e) => e.into(),
            luametrics_runtime::Error::Closed => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the server is shutting down",
            ),
            other => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                other.to_string(),
            ),
        }
    }
}
