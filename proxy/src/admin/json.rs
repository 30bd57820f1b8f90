//! JSON in and out of the admin API: a body extractor with the 64 KiB limit and
//! one-line errors, and the error type every handler returns.

use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use switchyard_shared::ApiError;

/// Largest admin request body.
pub const MAX_BODY: usize = 64 * 1024;

/// A JSON body, parsed with our limits and messages.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = AdminError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, AdminError> {
        // Any content type: the seed's examples post JSON with `curl -d` (form type);
        // the JSON parse below is the real check.
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_BODY as u64) {
            return Err(too_large());
        }
        let bytes = axum::body::to_bytes(req.into_body(), MAX_BODY)
            .await
            .map_err(|_| too_large())?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| AdminError::bad_request(format!("invalid JSON body: {e}")))
    }
}

fn too_large() -> AdminError {
    AdminError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body over {} KiB", MAX_BODY / 1024),
    )
}

/// An admin failure: a status and a one-line message, as `{"error": "..."}`.
#[derive(Debug)]
pub struct AdminError {
    pub status: StatusCode,
    pub message: String,
}

impl AdminError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        let message: String = message.into();
        Self {
            status,
            // One line, whatever the source said.
            message: message.replace(['\n', '\r'], " "),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(ApiError {
                error: self.message,
            }),
        )
            .into_response()
    }
}
