//! What was refused and why: [`Rejection`] and its status, code and message.

use std::borrow::Cow;
use std::fmt;

use http::{HeaderValue, StatusCode};

use crate::headers::RateLimitInfo;
use crate::key::MalformedKey;

/// Why a key was not accepted. Logged; never shown to the client, who sees one 401 for all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidKey {
    /// The header value was not a single well-formed credential.
    BadHeader,
    /// The key failed the format check.
    Malformed(MalformedKey),
    /// No key has this hash.
    Unknown,
    /// The key is revoked.
    Revoked,
    /// The key is past its expiry.
    Expired,
    /// The key is switched off ([`KeyManager::disable`](crate::KeyManager::disable)).
    Disabled,
}

impl InvalidKey {
    /// A short label for logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            InvalidKey::BadHeader => "bad_header",
            InvalidKey::Malformed(MalformedKey::Prefix) => "malformed_prefix",
            InvalidKey::Malformed(MalformedKey::Length) => "malformed_length",
            InvalidKey::Malformed(MalformedKey::Alphabet) => "malformed_alphabet",
            InvalidKey::Malformed(MalformedKey::Checksum) => "bad_checksum",
            InvalidKey::Unknown => "unknown",
            InvalidKey::Revoked => "revoked",
            InvalidKey::Expired => "expired",
            InvalidKey::Disabled => "disabled",
        }
    }
}

/// A refusal by one of the layers: the one word for "this request was not let through".
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejection {
    /// No API key in the request.
    MissingKey,
    /// A key was sent but is not valid.
    InvalidKey(InvalidKey),
    /// A key appeared in the URL query string.
    KeyInQuery,
    /// The key lacks the scope(s) the route requires; `required` is space-separated.
    InsufficientScope {
        /// The scopes the route asks for, space-separated (RFC 6750 `scope`).
        required: String,
    },
    /// The key may only be used from the client networks it lists, and the request comes from
    /// elsewhere (or from an unknown address): `403 client_not_allowed`, gRPC 7.
    ClientNotAllowed,
    /// A [`ScopeRules`](crate::ScopeRules) table has no rule for the request's route, so
    /// nothing says which permission it needs (fail closed).
    NoRouteRule,
    /// The key store failed or timed out.
    StoreUnavailable {
        /// Seconds the client should wait.
        retry_after: u64,
    },
    /// The organization exceeded one or more of its request policies. Rendered as the IETF
    /// `quota-exceeded` problem type with `violated-policies` (code `rate_limited`).
    RateLimited {
        /// The figures sent in `X-RateLimit-*`: the violated policy that admits last, whose
        /// `retry_after` is when every violated policy admits the request again.
        info: RateLimitInfo,
        /// The names of the policies that refused the request.
        violated: Vec<String>,
    },

    /// The key's or organization's credits are less than the call's cost
    /// ([`Credits`](crate::credits::Credits)): `429 credits_exhausted`, gRPC 8.
    CreditsExhausted {
        /// What is left.
        balance: u64,
        /// Seconds until the next refill (`Retry-After`), if the balance is refilled.
        retry_after: Option<u64>,
    },
    /// The organization holds as many sessions as its plan allows.
    SessionLimit {
        /// Sessions allowed at once.
        limit: u64,
        /// Seconds after which a slot may be free (lease expiry).
        retry_after: u64,
    },
    /// Too many invalid keys came from this client address
    /// ([`ApiKeyAuthLayer::invalid_key_limit`](crate::ApiKeyAuthLayer::invalid_key_limit)):
    /// `429 too_many_invalid_keys`, gRPC 8. While it lasts, even a valid key from the address
    /// is refused, so that guessing cannot go on.
    TooManyInvalidKeys {
        /// Seconds until the address may try again.
        retry_after: u64,
    },
    /// A layer that needs a [`Principal`](crate::Principal) found none: `ApiKeyAuth` is not in
    /// front of it. Fails closed.
    MissingPrincipal {
        /// The layer that found no principal.
        layer: &'static str,
    },
}

impl Rejection {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::MissingKey | Rejection::InvalidKey(_) => StatusCode::UNAUTHORIZED,
            Rejection::KeyInQuery => StatusCode::BAD_REQUEST,
            Rejection::InsufficientScope { .. }
            | Rejection::NoRouteRule
            | Rejection::ClientNotAllowed => StatusCode::FORBIDDEN,
            Rejection::StoreUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Rejection::RateLimited { .. }
            | Rejection::CreditsExhausted { .. }
            | Rejection::SessionLimit { .. }
            | Rejection::TooManyInvalidKeys { .. } => StatusCode::TOO_MANY_REQUESTS,
            Rejection::MissingPrincipal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code of the problem body.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::MissingKey => "missing_api_key",
            Rejection::InvalidKey(_) => "invalid_api_key",
            Rejection::KeyInQuery => "api_key_in_query",
            Rejection::InsufficientScope { .. } => "insufficient_scope",
            Rejection::NoRouteRule => "no_route_rule",
            Rejection::ClientNotAllowed => "client_not_allowed",
            Rejection::StoreUnavailable { .. } => "auth_unavailable",
            Rejection::RateLimited { .. } => "rate_limited",
            Rejection::CreditsExhausted { .. } => "credits_exhausted",
            Rejection::SessionLimit { .. } => "session_limit_exceeded",
            Rejection::TooManyInvalidKeys { .. } => "too_many_invalid_keys",
            Rejection::MissingPrincipal { .. } => "auth_layer_missing",
        }
    }

    /// The gRPC status code (as the integer sent in `grpc-status`).
    pub fn grpc_status(&self) -> u8 {
        match self {
            Rejection::MissingKey | Rejection::InvalidKey(_) => 16,
            Rejection::KeyInQuery => 3,
            Rejection::InsufficientScope { .. }
            | Rejection::NoRouteRule
            | Rejection::ClientNotAllowed => 7,
            Rejection::StoreUnavailable { .. } => 14,
            Rejection::RateLimited { .. }
            | Rejection::CreditsExhausted { .. }
            | Rejection::SessionLimit { .. }
            | Rejection::TooManyInvalidKeys { .. } => 8,
            Rejection::MissingPrincipal { .. } => 13,
        }
    }

    /// The human-readable message (the problem's `title`, the gRPC `grpc-message`).
    pub fn message(&self) -> Cow<'static, str> {
        match self {
            Rejection::MissingKey | Rejection::InvalidKey(_) => INVALID_OR_MISSING.into(),
            Rejection::KeyInQuery => KEY_IN_QUERY.into(),
            Rejection::InsufficientScope { required } => {
                format!("This API key lacks the permission required: {required}").into()
            }
            Rejection::NoRouteRule => "No permission rule for this route".into(),
            Rejection::ClientNotAllowed => {
                "This API key may not be used from this client address".into()
            }
            Rejection::StoreUnavailable { .. } => {
                "Authentication is temporarily unavailable; retry later".into()
            }
            Rejection::RateLimited { info, .. } => format!(
                "Rate limit of {} requests exceeded; retry after {} seconds",
                info.limit, info.retry_after
            )
            .into(),
            Rejection::CreditsExhausted { balance, .. } => {
                format!("Credits exhausted: {balance} left, less than this call costs").into()
            }
            Rejection::SessionLimit { limit, .. } => {
                format!("Concurrent session limit of {limit} reached; end a session first").into()
            }
            Rejection::TooManyInvalidKeys { retry_after } => format!(
                "Too many invalid API keys from this address; retry after {retry_after} seconds"
            )
            .into(),
            Rejection::MissingPrincipal { layer } => format!(
                "Server misconfiguration: {layer} found no authenticated principal \
                 (is ApiKeyAuth in front of it?)"
            )
            .into(),
        }
    }

    /// Seconds the client should wait before retrying (`Retry-After`, never 0), if any.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Rejection::RateLimited { info, .. } => Some(info.retry_after.max(1)),
            Rejection::CreditsExhausted { retry_after, .. } => retry_after.map(|s| s.max(1)),
            Rejection::SessionLimit { retry_after, .. }
            | Rejection::StoreUnavailable { retry_after }
            | Rejection::TooManyInvalidKeys { retry_after } => Some((*retry_after).max(1)),
            _ => None,
        }
    }

    /// The `WWW-Authenticate` challenge (RFC 6750), if this rejection has one.
    pub fn www_authenticate(&self, realm: &str) -> Option<HeaderValue> {
        let v = match self {
            Rejection::MissingKey => format!("Bearer realm=\"{realm}\""),
            Rejection::InvalidKey(_) => format!(
                "Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{INVALID_OR_MISSING}\""
            ),
            Rejection::KeyInQuery => format!(
                "Bearer realm=\"{realm}\", error=\"invalid_request\", error_description=\"Send the API key in the Authorization header\""
            ),
            Rejection::InsufficientScope { required } => format!(
                "Bearer realm=\"{realm}\", error=\"insufficient_scope\", scope=\"{required}\""
            ),
            _ => return None,
        };
        HeaderValue::from_str(&v).ok()
    }
}

/// The message of every 401.
pub(crate) const INVALID_OR_MISSING: &str = "Invalid or missing API key";
/// The message of a key sent in the URL.
pub(crate) const KEY_IN_QUERY: &str =
    "API keys must not be sent in the URL; use the Authorization: Bearer header";

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message(), self.code())
    }
}

impl std::error::Error for Rejection {}
