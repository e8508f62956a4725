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
}

impl ApiError {
    /// An error with its status and code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400 with a code.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
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
