//! [`LeakError`]: every refusal of the leaked-key routes, as `application/problem+json`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::scanning::SignatureError;
use crate::store::StoreError;

/// Why a leaked-key route refused. The response is `application/problem+json` with `type`,
/// `title`, `status` and a stable `code`; none of them says anything about which keys exist.
///
/// | variant | status | `code` |
/// |---|---|---|
/// | [`Signature`](Self::Signature) | 401 | `signature_missing`, `unknown_signing_key`, `signature_invalid` |
/// | [`BodyTooLarge`](Self::BodyTooLarge) | 413 | `body_too_large` |
/// | [`TooManyCredentials`](Self::TooManyCredentials) | 413 | `too_many_credentials` |
/// | [`InvalidBody`](Self::InvalidBody) | 400 | `invalid_request` |
/// | [`RateLimited`](Self::RateLimited) | 429 + `Retry-After` | `rate_limited` |
/// | [`NoClientAddress`](Self::NoClientAddress) | 500 | `client_address_unknown` |
/// | [`Store`](Self::Store) | 503 + `Retry-After` | `store_unavailable` |
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LeakError {
    /// A secret-scanning report is not signed by a key of the configured set.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// The body is larger than the route accepts.
    #[error("the request body is too large")]
    BodyTooLarge,
    /// More credentials than [`MAX_CREDENTIALS`](super::MAX_CREDENTIALS) in one request.
    #[error("at most {} credentials per request", super::MAX_CREDENTIALS)]
    TooManyCredentials,
    /// The body is not the JSON the route takes; the message says what is wrong.
    #[error("{0}")]
    InvalidBody(String),
    /// This client address sent too many requests; retry after the given time.
    #[error("too many requests from this address; retry later")]
    RateLimited {
        /// Whole seconds until the next request is admitted (`Retry-After`).
        retry_after: u64,
    },
    /// The route could not tell the client's address, so it cannot rate-limit it (fail closed).
    /// Serve the router with [`serve::Server`](crate::serve), which records the peer address,
    /// or insert a [`PeerAddr`](crate::client_addr::PeerAddr) yourself.
    #[error("internal error")]
    NoClientAddress,
    /// The key store failed; nothing is lost by retrying (revocation is idempotent).
    #[error("the key store is temporarily unavailable; retry later")]
    Store(#[from] StoreError),
}

impl LeakError {
    /// A body that `serde_json` could not read as `expected`. The message says what kind of
    /// problem and where, but never quotes the body: serde's own message may repeat a value
    /// from it, and a value sent to these routes may be a live key.
    pub(super) fn json(expected: &str, e: &serde_json::Error) -> Self {
        use serde_json::error::Category;
        let what = match e.classify() {
            Category::Syntax => "the body is not valid JSON",
            Category::Eof => "the body ends before the JSON does",
            Category::Data | Category::Io => "a value has the wrong type or is missing",
        };
        LeakError::InvalidBody(format!(
            "{what} (line {}, column {}): expected {expected}",
            e.line(),
            e.column()
        ))
    }

    /// The HTTP status of the response.
    pub fn status(&self) -> StatusCode {
        match self {
            LeakError::Signature(_) => StatusCode::UNAUTHORIZED,
            LeakError::BodyTooLarge | LeakError::TooManyCredentials => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            LeakError::InvalidBody(_) => StatusCode::BAD_REQUEST,
            LeakError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            LeakError::NoClientAddress => StatusCode::INTERNAL_SERVER_ERROR,
            LeakError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The stable `code` of the problem body.
    pub fn code(&self) -> &'static str {
        match self {
            LeakError::Signature(e) => e.code(),
            LeakError::BodyTooLarge => "body_too_large",
            LeakError::TooManyCredentials => "too_many_credentials",
            LeakError::InvalidBody(_) => "invalid_request",
            LeakError::RateLimited { .. } => "rate_limited",
            LeakError::NoClientAddress => "client_address_unknown",
            LeakError::Store(_) => "store_unavailable",
        }
    }
}

impl IntoResponse for LeakError {
    fn into_response(self) -> Response {
        match &self {
            LeakError::Store(e) => tracing::warn!(error = %e, "leaked keys: store failed"),
            LeakError::NoClientAddress => tracing::error!(
                "leaked keys: no client address in the request; serve with \
                 tower_api_key::serve::Server or insert a PeerAddr extension"
            ),
            _ => {}
        }
        let status = self.status();
        let body = serde_json::json!({
            "type": "about:blank",
            "title": self.to_string(),
            "status": status.as_u16(),
            "code": self.code(),
        });
        let mut res = (status, body.to_string()).into_response();
        let headers = res.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        let retry_after = match &self {
            LeakError::RateLimited { retry_after } => Some(*retry_after),
            LeakError::Store(_) => Some(5),
            _ => None,
        };
        if let Some(secs) = retry_after {
            // Never 0, as every Retry-After of the crate.
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if let LeakError::Signature(_) = self {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Signature realm=\"secret-scanning\""),
            );
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_never_zero() {
        for (wait, secs) in [(0, "1"), (1, "1"), (60, "60")] {
            let res = LeakError::RateLimited { retry_after: wait }.into_response();
            assert_eq!(res.status(), 429);
            assert_eq!(res.headers()[header::RETRY_AFTER], secs, "{wait:?}");
        }
    }
}
