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
}

impl ApiError {
    /// An error with its status and code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: None,
        }
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
        (self.status, Json(body)).into_response()
    }
}

impl From<luametrics_store::StoreError> for ApiError {
    fn from(e: luametrics_store::StoreError) -> Self {
        match e {
            luametrics_store::StoreError::InvalidQuery(m) => Self::bad_request("invalid_query", m),
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
