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
    /// A credit route, but no [`Credits`](crate::credits::Credits) were given to the API
    /// ([`AdminApi::credits`](super::AdminApi::credits)). `404 credits_not_configured`.
    #[error("credits are not configured on this API")]
    CreditsNotConfigured,
    /// Setting credits, by a caller who is no credit operator
    /// ([`AdminApi::credit_operator`](super::AdminApi::credit_operator)). `403 operator_required`.
    #[error("setting credits is reserved to operators")]
    OperatorRequired,
    /// The refill asked for is invalid; the message says why. `400 invalid_refill`.
    #[error("{0}")]
    InvalidRefill(String),
    /// The credit backend failed. `503 credits_unavailable`.
    #[error("the credit backend is temporarily unavailable; retry later")]
    CreditsUnavailable(#[source] crate::credits::CreditError),
}

impl AdminError {
    /// The HTTP status of the response.
    pub fn status(&self) -> StatusCode {
        match self {
            AdminError::Unauthenticated => StatusCode::UNAUTHORIZED,
            AdminError::MissingScope => StatusCode::FORBIDDEN,
            AdminError::BadRequest(_) | AdminError::InvalidRefill(_) => StatusCode::BAD_REQUEST,
            AdminError::Manage(e) => e.status(),
            AdminError::CreditsNotConfigured => StatusCode::NOT_FOUND,
            AdminError::OperatorRequired => StatusCode::FORBIDDEN,
            AdminError::CreditsUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The stable `code` of the problem body.
    pub fn code(&self) -> &'static str {
        match self {
            AdminError::Unauthenticated => "unauthenticated",
            AdminError::MissingScope => "insufficient_scope",
            AdminError::BadRequest(_) => "invalid_request",
            AdminError::Manage(e) => e.code(),
            AdminError::CreditsNotConfigured => "credits_not_configured",
            AdminError::OperatorRequired => "operator_required",
            AdminError::InvalidRefill(_) => "invalid_refill",
            AdminError::CreditsUnavailable(_) => "credits_unavailable",
        }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        if let AdminError::Manage(e) = self {
            return e.into_response();
        }
        if let AdminError::CreditsUnavailable(e) = &self {
            tracing::warn!(error = %e, "admin API: credit backend failed");
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
