//! API errors and their HTTP statuses, in one place.

use crate::engine::EngineError;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

/// An error answered as JSON `{"error": "...", "error_type": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub error_type: &'static str,
    pub message: String,
}

impl ApiError {
    /// 422: an invalid parameter value; the message names the parameter and the allowed range.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            error_type: "invalid_parameter",
            message: message.into(),
        }
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            error_type: "not_found",
            message: message.into(),
        }
    }
    pub fn overloaded(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            error_type: "overloaded",
            message: message.into(),
        }
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            error_type: "unavailable",
            message: message.into(),
        }
    }
}

impl From<crate::params::ParamError> for ApiError {
    fn from(e: crate::params::ParamError) -> Self {
        Self::invalid(e.0)
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::QueueFull(_) => Self::overloaded(e.to_string()),
            EngineError::ShuttingDown => Self::unavailable(e.to_string()),
            EngineError::Backend(_) => Self {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                error_type: "backend",
                message: e.to_string(),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(serde_json::json!({"error": self.message, "error_type": self.error_type}));
        let mut resp = (self.status, body).into_response();
        if matches!(
            self.status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}
