//! Every refusal a client can see, and how it is rendered.
//!
//! | rejection | HTTP | `code` | gRPC status |
//! |---|---|---|---|
//! | no key sent | 401 | `missing_api_key` | 16 `UNAUTHENTICATED` |
//! | malformed, unknown, revoked or expired key | 401 | `invalid_api_key` | 16 `UNAUTHENTICATED` |
//! | key in the URL query string | 400 | `api_key_in_query` | 3 `INVALID_ARGUMENT` |
//! | key lacks the route's scope | 403 | `insufficient_scope` | 7 `PERMISSION_DENIED` |
//! | a rule table has no rule for the route | 403 | `no_route_rule` | 7 `PERMISSION_DENIED` |
//! | key store down or slow | 503 + `Retry-After` | `auth_unavailable` | 14 `UNAVAILABLE` |
//! | organization over one of its request policies | 429 + `Retry-After` | `rate_limited` | 8 `RESOURCE_EXHAUSTED` |
//! | key's or organization's credits less than the call's cost | 429 (+ `Retry-After` until the refill) | `credits_exhausted` | 8 `RESOURCE_EXHAUSTED` |
//! | organization at its concurrent-session quota | 429 + `Retry-After` | `session_limit_exceeded` | 8 `RESOURCE_EXHAUSTED` |
//! | too many invalid keys from one client address ([`invalid_key_limit`](crate::ApiKeyAuthLayer::invalid_key_limit)); while it lasts, valid keys from there too | 429 + `Retry-After` | `too_many_invalid_keys` | 8 `RESOURCE_EXHAUSTED` |
//! | a layer found no `Principal` (misconfigured stack) | 500 | `auth_layer_missing` | 13 `INTERNAL` |
//!
//! HTTP bodies are `application/problem+json` (RFC 9457) with a stable `code` member:
//!
//! ```json
//! {"type":"about:blank","title":"Invalid or missing API key","status":401,"code":"invalid_api_key"}
//! ```
//!
//! A rate-limit refusal uses the IETF problem type
//! `https://iana.org/assignments/http-problem-types#quota-exceeded`
//! (draft-ietf-httpapi-ratelimit-headers-12) and names the policies that refused it:
//!
//! ```json
//! {"type":"https://iana.org/assignments/http-problem-types#quota-exceeded",
//!  "title":"Rate limit of 10 requests exceeded; retry after 1 seconds","status":429,
//!  "code":"rate_limited","retry_after":1,"limit":10,"violated-policies":["burst"]}
//! ```
//!
//! 401s carry `WWW-Authenticate: Bearer realm="api"`, with `error="invalid_token"` when a key was
//! sent (RFC 6750); 403s for a missing scope carry `error="insufficient_scope", scope="…"`.
//! Requests whose `content-type` starts with `application/grpc` get a trailers-only gRPC
//! response instead: HTTP 200 with `grpc-status` and `grpc-message` headers.
//!
//! All four causes of an invalid key get the same answer, so a client cannot probe which keys
//! exist; the precise reason is in the `tracing` event. Replace the rendering with
//! [`Responder::new`].

mod body;
mod rejection;
mod render;
mod responder;

pub use body::ResponseBody;
pub use rejection::{InvalidKey, Rejection};
pub use responder::{RenderRejection, Responder};

use bytes::Bytes;
use http::{HeaderMap, Response};

/// The fail-closed answer of a layer that needs a [`Principal`](crate::Principal) and found none:
/// an error log naming the missing `ApiKeyAuth`, and a `500 auth_layer_missing`.
#[cold]
pub(crate) fn missing_principal(
    layer: &'static str,
    responder: &Responder,
    request_headers: HeaderMap,
) -> Response<Bytes> {
    tracing::error!("{layer} found no Principal in the request: add ApiKeyAuth in front of it");
    responder.refuse(&Rejection::MissingPrincipal { layer }, request_headers)
}
