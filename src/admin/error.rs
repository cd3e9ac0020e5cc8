//! [`AdminError`]: every refusal of the admin API, as `application/problem+json`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::manage::ManageError;

/// Why an admin route refused. The response is `application/problem+json` with `type`,
/// `title`, `status` and a stable `code`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// Nobody is signed in: the [`Caller`](super::Caller) found no principal. `401 unauthenticated`.
    #[error("sign in with an API key or a session that may manage API keys")]
    Unauthenticated,
    /// The caller lacks the `api_keys:manage` permission. `403 insufficient_scope`.
    #[error("managing API keys requires the api_keys:manage permission")]
    MissingScope,
    /// The request is malformed; the message says what is wrong. `400 invalid_request`.
    #[error("{0}")]
    BadRequest(String),
    /// The key manager refused or failed (not found, scope escalation, revoked, store down…).
    #[error(transparent)]
    Manage(#[from] ManageError),
}

impl AdminError {
    /// The HTTP status of the response.
    pub fn status(&self) -> StatusCode {
        match self {
            AdminError::Unauthenticated => StatusCode::UNAUTHORIZED,
            AdminError::MissingScope => StatusCode::FORBIDDEN,
            AdminError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AdminError::Manage(e) => e.status(),
        }
    }

    /// The stable `code` of the problem body.
    pub fn code(&self) -> &'static str {
        match self {
            AdminError::Unauthenticated => "unauthenticated",
            AdminError::MissingScope => "insufficient_scope",
            AdminError::BadRequest(_) => "invalid_request",
            AdminError::Manage(e) => e.code(),
        }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        if let AdminError::Manage(e) = self {
            return e.into_response();
        }
        let status = self.status();
        let mut body = serde_json::json!({
            "type": "about:blank",
            "title": self.to_string(),
            "status": status.as_u16(),
            "code": self.code(),
        });
        if let AdminError::MissingScope = self {
            body["required_scope"] = super::MANAGE_SCOPE.into();
        }
        let mut res = (status, body.to_string()).into_response();
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        res
    }
}
