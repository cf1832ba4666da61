//! API errors: one [`ErrorType`] per kind of failure, mapped to its HTTP status in one place,
//! answered as JSON `{"error": "...", "error_type": "..."}`; and a path extractor whose
//! rejection (bad path encoding) answers in the same format instead of axum's plain text.

use crate::engine::EngineError;
use axum::extract::{FromRequestParts, Path};
use axum::http::{header, request::Parts, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;

/// What went wrong, as reported in `error_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    /// A parameter or body value outside what is allowed (the message names it).
    InvalidParameter,
    /// A missing or unknown API key (`--api-keys`).
    Unauthorized,
    NotFound,
    MethodNotAllowed,
    PayloadTooLarge,
    /// The request body did not arrive in time (`--body-timeout-s`).
    Timeout,
    /// The queue or the stream slots are full: retry after `Retry-After`.
    Overloaded,
    /// Warming up or shutting down.
    Unavailable,
    /// The generator failed.
    Backend,
}

impl ErrorType {
    pub const ALL: [ErrorType; 9] = [
        ErrorType::InvalidParameter,
        ErrorType::Unauthorized,
        ErrorType::NotFound,
        ErrorType::MethodNotAllowed,
        ErrorType::PayloadTooLarge,
        ErrorType::Timeout,
        ErrorType::Overloaded,
        ErrorType::Unavailable,
        ErrorType::Backend,
    ];

    pub fn status(self) -> StatusCode {
        match self {
            ErrorType::InvalidParameter => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorType::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorType::NotFound => StatusCode::NOT_FOUND,
            ErrorType::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorType::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorType::Timeout => StatusCode::REQUEST_TIMEOUT,
            ErrorType::Overloaded => StatusCode::TOO_MANY_REQUESTS,
            ErrorType::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorType::Backend => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::InvalidParameter => "invalid_parameter",
            ErrorType::Unauthorized => "unauthorized",
            ErrorType::NotFound => "not_found",
            ErrorType::MethodNotAllowed => "method_not_allowed",
            ErrorType::PayloadTooLarge => "payload_too_large",
            ErrorType::Timeout => "timeout",
            ErrorType::Overloaded => "overloaded",
            ErrorType::Unavailable => "unavailable",
            ErrorType::Backend => "backend",
        }
    }

    /// The type of a rejection axum reports only by status.
    fn of_status(s: StatusCode) -> Self {
        match s {
            StatusCode::NOT_FOUND => ErrorType::NotFound,
            StatusCode::PAYLOAD_TOO_LARGE => ErrorType::PayloadTooLarge,
            StatusCode::REQUEST_TIMEOUT => ErrorType::Timeout,
            StatusCode::SERVICE_UNAVAILABLE => ErrorType::Unavailable,
            s if s.is_server_error() => ErrorType::Backend,
            _ => ErrorType::InvalidParameter,
        }
    }
}

/// An error answered as JSON with the status of its [`ErrorType`].
#[derive(Debug)]
pub struct ApiError {
    pub error_type: ErrorType,
    pub message: String,
    /// Seconds a client should wait before retrying (`Retry-After`; 1 when not set for
    /// overloaded and unavailable answers).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(error_type: ErrorType, message: impl Into<String>) -> Self {
        Self {
            error_type,
            message: message.into(),
            retry_after: None,
        }
    }
    /// Sets `Retry-After` to `seconds`, rounded up (at least 1).
    pub fn retry_after(mut self, seconds: f64) -> Self {
        let s = if seconds.is_finite() {
            seconds.ceil().max(1.0)
        } else {
            1.0
        };
        self.retry_after = Some(s.min(86_400.0) as u64);
        self
    }
    /// 422: an invalid parameter value; the message names the parameter and the allowed range.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorType::InvalidParameter, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorType::NotFound, message)
    }
    pub fn overloaded(message: impl Into<String>) -> Self {
        Self::new(ErrorType::Overloaded, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorType::Unavailable, message)
    }
    pub fn status(&self) -> StatusCode {
        self.error_type.status()
    }
}

impl From<crate::params::ParamError> for ApiError {
    fn from(e: crate::params::ParamError) -> Self {
        Self::invalid(e.0)
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let t = match e {
            EngineError::QueueFull(_) | EngineError::ConsumerShareFull { .. } => {
                ErrorType::Overloaded
            }
            EngineError::ShuttingDown | EngineError::WarmUp(_) => ErrorType::Unavailable,
            EngineError::Backend(_) | EngineError::Internal(_) => ErrorType::Backend,
        };
        Self::new(t, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // What went wrong inside (candle, a task, the encoder) is for the operator: it is logged
        // once with an id, and the client gets the id to quote.
        let message = if self.error_type == ErrorType::Backend {
            let id = error_id();
            tracing::error!(error_id = %id, "internal error: {}", self.message);
            format!("internal server error (id {id}; the server log has the details)")
        } else {
            self.message
        };
        let body =
            Json(serde_json::json!({"error": message, "error_type": self.error_type.as_str()}));
        let mut resp = (self.error_type.status(), body).into_response();
        if matches!(
            self.error_type,
            ErrorType::Overloaded | ErrorType::Unavailable
        ) {
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(self.retry_after.unwrap_or(1)),
            );
        }
        if self.error_type == ErrorType::Unauthorized {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, www_authenticate());
        }
        resp
    }
}

/// The `WWW-Authenticate` challenge of a 401: a bearer token for this server.
pub fn www_authenticate() -> HeaderValue {
    HeaderValue::from_static("Bearer realm=\"genrep\"")
}

/// A short id for an internal error: the process's count of them and a per-process random
/// part, so ids from replicas do not collide in a shared log.
fn error_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static SALT: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let salt = SALT.get_or_init(rand::random::<u32>);
    format!("{salt:08x}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// `Path<T>` whose rejection is an [`ApiError`].
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(ApiPath(v)),
            Err(r) => Err(ApiError::new(
                ErrorType::of_status(r.status()),
                r.body_text(),
            )),
        }
    }
}
