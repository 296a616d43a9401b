//! The HTTP API's errors, mapped to a status and a JSON body `{"error": "..."}` in one place.
//! Every message says what went wrong and what to do.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::hub::HubError;

/// An API error.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No or bad credentials (401).
    #[error("{0}")]
    Unauthorized(String),
    /// Authenticated but not allowed (403).
    #[error("{0}")]
    Forbidden(String),
    /// Unknown thing (404).
    #[error("{0}")]
    NotFound(String),
    /// Bad request (400).
    #[error("{0}")]
    BadRequest(String),
    /// Conflict with the current state (409).
    #[error("{0}")]
    Conflict(String),
    /// Gone (410): used, expired.
    #[error("{0}")]
    Gone(String),
    /// The request body is too large (413).
    #[error("{0}")]
    PayloadTooLarge(String),
    /// Too many attempts or connections from one address (429).
    #[error("{0}")]
    TooManyRequests(String),
    /// The server cannot take more (503).
    #[error("{0}")]
    Unavailable(String),
    /// Storage or another internal failure (500).
    #[error("{0}")]
    Internal(String),
}

impl From<tally_store::StoreError> for ApiError {
    fn from(e: tally_store::StoreError) -> Self {
        use tally_store::StoreError as E;
        match e {
            E::InviteUnknown | E::InviteExpired | E::InviteUsed => ApiError::Gone(e.to_string()),
            E::NotFound(_) => ApiError::NotFound(e.to_string()),
            E::ReplaceRefused(tally_store::ReplaceRefusal::UnknownDevice(_)) => {
                ApiError::BadRequest(e.to_string())
            }
            E::ReplaceRefused(_) => ApiError::Forbidden(e.to_string()),
            E::Full(_) | E::ReadOnly(_) | E::Unavailable { .. } => {
                ApiError::Unavailable(e.to_string())
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<HubError> for ApiError {
    fn from(e: HubError) -> Self {
        match e {
            HubError::Rejected(r) => ApiError::BadRequest(format!("refused: {r}")),
            HubError::Unavailable => ApiError::NotFound("no such document".into()),
            HubError::Store(s) => s.into(),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Gone(_) => StatusCode::GONE,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        (
            status,
            Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response()
    }
}
