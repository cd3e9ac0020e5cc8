//! [`DashboardError`]: why a dashboard page refused, rendered as a readable HTML page.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::manage::ManageError;

/// Why a dashboard request failed. Each variant becomes an HTML page with a status and a
/// sentence a person can act on (never raw JSON); [`SignInRequired`](Self::SignInRequired)
/// becomes a redirect to the sign-in page.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DashboardError {
    /// Nobody is signed in, or the key signed in with was revoked, expired or lost
    /// `api_keys:manage`. `303` to the sign-in page.
    #[error("sign in to manage API keys")]
    SignInRequired,
    /// A form came without this session's CSRF token, or with a wrong one. `403`; nothing changed.
    #[error("this form did not carry this session's security token, so nothing was changed")]
    Csrf,
    /// A create or rotate form was submitted a second time (reload, back button). `409`.
    #[error("this form was already submitted")]
    AlreadySubmitted,
    /// No dashboard page at this path. `404`.
    #[error("there is no such page in the dashboard")]
    PageNotFound,
    /// The form is malformed; the message says what is wrong. `400`.
    #[error("{0}")]
    BadRequest(String),
    /// The key manager refused or failed (no such key, escalation, revoked, store down…).
    #[error(transparent)]
    Manage(#[from] ManageError),
    /// The session store failed. `503`.
    #[error("the session store failed: {0}")]
    Session(#[from] tower_sessions::session::Error),
    /// The operating system's random number generator failed. `500`.
    #[error("random number generator failed: {0}")]
    Rng(getrandom::Error),
    /// The request has no session: the dashboard's router was taken apart. `500`.
    #[error("no session layer in front of the dashboard")]
    NoSessionLayer,
    /// The credit backend failed. `503`.
    #[error("the credit backend failed: {0}")]
    Credits(#[from] crate::credits::CreditError),
}

impl From<crate::store::StoreError> for DashboardError {
    fn from(e: crate::store::StoreError) -> Self {
        DashboardError::Manage(ManageError::Store(e))
    }
}

/// What the page of an error says: a heading and a sentence.
#[derive(Clone, Debug)]
pub(super) struct Problem {
    pub status: StatusCode,
    pub title: &'static str,
    pub message: String,
}

/// Marks a response to become a redirect to the sign-in page (which needs the mount prefix,
/// known to the middleware that renders it).
#[derive(Clone, Copy, Debug)]
pub(super) struct ToSignIn;

impl DashboardError {
    /// The HTTP status of the page.
    pub fn status(&self) -> StatusCode {
        match self {
            DashboardError::SignInRequired => StatusCode::SEE_OTHER,
            DashboardError::Csrf => StatusCode::FORBIDDEN,
            DashboardError::AlreadySubmitted => StatusCode::CONFLICT,
            DashboardError::PageNotFound => StatusCode::NOT_FOUND,
            DashboardError::BadRequest(_) => StatusCode::BAD_REQUEST,
            DashboardError::Manage(e) => e.status(),
            DashboardError::Session(_) | DashboardError::Credits(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            DashboardError::Rng(_) | DashboardError::NoSessionLayer => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// The heading and sentence of the error page. Failures of the store, the session store
    /// and the RNG are logged here and kept out of the page.
    pub(super) fn problem(&self) -> Problem {
        let (title, message): (&'static str, String) = match self {
            DashboardError::SignInRequired => ("Sign in", self.to_string()),
            DashboardError::Csrf => (
                "Form expired",
                "This form did not carry this session's security token (CSRF), so nothing was \
                 changed. Go back, reload the page and try again."
                    .into(),
            ),
            DashboardError::AlreadySubmitted => (
                "Already submitted",
                "This form was already submitted, so nothing was changed. A new key's secret is \
                 only shown once, right after it is created, and cannot be shown again."
                    .into(),
            ),
            DashboardError::PageNotFound => {
                ("Page not found", "There is no such page here.".into())
            }
            DashboardError::BadRequest(m) => ("Invalid request", m.clone()),
            DashboardError::Manage(e) => manage_problem(e),
            DashboardError::Session(e) => {
                tracing::warn!(error = %e, "dashboard: session store failed");
                (
                    "Temporarily unavailable",
                    "Sessions are temporarily unavailable; retry in a moment.".into(),
                )
            }
            DashboardError::Rng(e) => {
                tracing::error!(error = %e, "dashboard: random number generator failed");
                ("Internal error", "Something went wrong on our side.".into())
            }
            DashboardError::NoSessionLayer => {
                tracing::error!("dashboard: request without a session");
                ("Internal error", "Something went wrong on our side.".into())
            }
            DashboardError::Credits(e) => {
                tracing::warn!(error = %e, "dashboard: credit backend failed");
                (
                    "Temporarily unavailable",
                    "Credit balances are temporarily unavailable; retry in a moment.".into(),
                )
            }
        };
        Problem {
            status: self.status(),
            title,
            message,
        }
    }
}

/// A manager error as a person reads it.
pub(super) fn manage_problem(e: &ManageError) -> (&'static str, String) {
    match e {
        ManageError::NotFound => (
            "No such API key",
            "There is no API key with this id in your organization.".into(),
        ),
        ManageError::ScopeEscalation => (
            "Permission denied",
            "You can only grant permissions that the key you signed in with holds itself.".into(),
        ),
        ManageError::Revoked => (
            "Key revoked",
            "This API key is revoked; a revoked key cannot be rotated or reinstated.".into(),
        ),
        ManageError::InvalidName => (
            "Invalid name",
            "Key names must be 1 to 128 characters.".into(),
        ),
        ManageError::ExpiryInPast => (
            "Invalid expiration",
            "The expiration must be in the future.".into(),
        ),
        ManageError::LifetimeTooLong { .. } => ("Expiration too far", format!("{e}.")),
        ManageError::Limit(limit) => ("Too large", format!("{limit}.")),
        ManageError::UnknownEnvironment(env) => (
            "Invalid environment",
            format!("No key format issues keys for the environment {env:?}."),
        ),
        ManageError::Store(err) => {
            tracing::warn!(error = %err, "dashboard: key store failed");
            (
                "Temporarily unavailable",
                "The key store is temporarily unavailable; retry in a moment.".into(),
            )
        }
        other => {
            tracing::error!(error = %other, "dashboard: key management failed");
            ("Internal error", "Something went wrong on our side.".into())
        }
    }
}

impl IntoResponse for DashboardError {
    fn into_response(self) -> Response {
        let mut res = self.status().into_response();
        if let DashboardError::SignInRequired = self {
            res.extensions_mut().insert(ToSignIn);
        } else {
            res.extensions_mut().insert(self.problem());
        }
        res
    }
}
