//! Every refusal a client can see, and how it is rendered.
//!
//! | rejection | HTTP | `code` | gRPC status |
//! |---|---|---|---|
//! | no key sent | 401 | `missing_api_key` | 16 `UNAUTHENTICATED` |
//! | malformed, unknown, revoked or expired key | 401 | `invalid_api_key` | 16 `UNAUTHENTICATED` |
//! | key in the URL query string | 400 | `api_key_in_query` | 3 `INVALID_ARGUMENT` |
//! | key lacks the route's scope | 403 | `insufficient_scope` | 7 `PERMISSION_DENIED` |
//! | key store down or slow | 503 + `Retry-After` | `auth_unavailable` | 14 `UNAVAILABLE` |
//! | organization over its request rate | 429 + `Retry-After` | `rate_limited` | 8 `RESOURCE_EXHAUSTED` |
//! | organization at its concurrent-session quota | 429 + `Retry-After` | `session_limit_exceeded` | 8 `RESOURCE_EXHAUSTED` |
//! | a layer found no `Principal` (misconfigured stack) | 500 | `auth_layer_missing` | 13 `INTERNAL` |
//!
//! HTTP bodies are `application/problem+json` (RFC 9457) with a stable `code` member:
//!
//! ```json
//! {"type":"about:blank","title":"Invalid or missing API key","status":401,"code":"invalid_api_key"}
//! ```
//!
//! 401s carry `WWW-Authenticate: Bearer realm="api"`, with `error="invalid_token"` when a key was
//! sent (RFC 6750); 403s carry `error="insufficient_scope", scope="…"`. Requests whose
//! `content-type` starts with `application/grpc` get a trailers-only gRPC response instead: HTTP
//! 200 with `grpc-status` and `grpc-message` headers.
//!
//! All four causes of an invalid key get the same answer, so a client cannot probe which keys
//! exist; the precise reason is in the `tracing` event. Replace the rendering with
//! [`Responder::new`].

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

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
        }
    }
}

/// The rate-limit figures of one decision, as sent in `X-RateLimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitInfo {
    /// Requests allowed per window (`X-RateLimit-Limit`).
    pub limit: u64,
    /// Requests left now (`X-RateLimit-Remaining`).
    pub remaining: u64,
    /// Unix time, in seconds, at which the allowance is whole again (`X-RateLimit-Reset`).
    pub reset: u64,
    /// Whole seconds to wait before retrying, never 0 on a refusal (`Retry-After`).
    pub retry_after: u64,
}

impl RateLimitInfo {
    /// Write `X-RateLimit-Limit`, `-Remaining` and `-Reset` (values up to 9,999 come from a
    /// static table and the reset time is cached per thread: no allocation per value).
    #[inline]
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        crate::rate_limit::write_info(self, headers);
    }
}

/// `x-ratelimit-limit`.
pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// `x-ratelimit-remaining`.
pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// `x-ratelimit-reset`.
pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// A refusal by one of the layers.
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
    /// The key store failed or timed out.
    StoreUnavailable {
        /// Seconds the client should wait.
        retry_after: u64,
    },
    /// The organization exceeded its request rate.
    RateLimited(RateLimitInfo),
    /// The organization holds as many sessions as its plan allows.
    SessionLimit {
        /// Sessions allowed at once.
        limit: u64,
        /// Seconds after which a slot may be free (lease expiry).
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
            Rejection::InsufficientScope { .. } => StatusCode::FORBIDDEN,
            Rejection::StoreUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Rejection::RateLimited(_) | Rejection::SessionLimit { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
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
            Rejection::StoreUnavailable { .. } => "auth_unavailable",
            Rejection::RateLimited(_) => "rate_limited",
            Rejection::SessionLimit { .. } => "session_limit_exceeded",
            Rejection::MissingPrincipal { .. } => "auth_layer_missing",
        }
    }

    /// The gRPC status code (as the integer sent in `grpc-status`).
    pub fn grpc_status(&self) -> u8 {
        match self {
            Rejection::MissingKey | Rejection::InvalidKey(_) => 16,
            Rejection::KeyInQuery => 3,
            Rejection::InsufficientScope { .. } => 7,
            Rejection::StoreUnavailable { .. } => 14,
            Rejection::RateLimited(_) | Rejection::SessionLimit { .. } => 8,
            Rejection::MissingPrincipal { .. } => 13,
        }
    }

    /// The human-readable message (the problem's `title`, the gRPC `grpc-message`).
    pub fn message(&self) -> String {
        match self {
            Rejection::MissingKey | Rejection::InvalidKey(_) => {
                "Invalid or missing API key".to_owned()
            }
            Rejection::KeyInQuery => {
                "API keys must not be sent in the URL; use the Authorization: Bearer header"
                    .to_owned()
            }
            Rejection::InsufficientScope { required } => {
                format!("This API key lacks the permission required: {required}")
            }
            Rejection::StoreUnavailable { .. } => {
                "Authentication is temporarily unavailable; retry later".to_owned()
            }
            Rejection::RateLimited(info) => format!(
                "Rate limit of {} requests exceeded; retry after {} seconds",
                info.limit, info.retry_after
            ),
            Rejection::SessionLimit { limit, .. } => {
                format!("Concurrent session limit of {limit} reached; end a session first")
            }
            Rejection::MissingPrincipal { layer } => format!(
                "Server misconfiguration: {layer} found no authenticated principal (is ApiKeyAuth in front of it?)"
            ),
        }
    }

    /// The default rendering for a request with these headers: gRPC trailers-only when the
    /// request's `content-type` is `application/grpc*`, problem+json otherwise.
    pub fn default_response(&self, request_headers: &HeaderMap, realm: &str) -> Response<Bytes> {
        if is_grpc(request_headers) {
            self.grpc_response()
        } else {
            self.problem_response(realm)
        }
    }

    /// The `application/problem+json` response.
    pub fn problem_response(&self, realm: &str) -> Response<Bytes> {
        let status = self.status();
        let mut body = serde_json::json!({
            "type": "about:blank",
            "title": self.message(),
            "status": status.as_u16(),
            "code": self.code(),
        });
        match self {
            Rejection::InsufficientScope { required } => {
                body["required_scope"] = required.as_str().into();
            }
            Rejection::RateLimited(info) => {
                body["retry_after"] = info.retry_after.into();
                body["limit"] = info.limit.into();
            }
            Rejection::SessionLimit { limit, retry_after } => {
                body["retry_after"] = (*retry_after).into();
                body["limit"] = (*limit).into();
            }
            Rejection::StoreUnavailable { retry_after } => {
                body["retry_after"] = (*retry_after).into();
            }
            _ => {}
        }
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let mut res = Response::new(Bytes::from(bytes));
        *res.status_mut() = status;
        let h = res.headers_mut();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(v) = self.www_authenticate(realm) {
            h.insert(WWW_AUTHENTICATE, v);
        }
        self.write_retry_headers(h);
        res
    }

    /// The gRPC trailers-only response: HTTP 200, `grpc-status`, `grpc-message`, and for rate
    /// limits the `x-ratelimit-*` and `retry-after` figures as metadata.
    pub fn grpc_response(&self) -> Response<Bytes> {
        let mut res = Response::new(Bytes::new());
        let h = res.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert(
            "grpc-status",
            HeaderValue::from(u16::from(self.grpc_status())),
        );
        if let Ok(v) = HeaderValue::from_str(&percent_encode(&self.message())) {
            h.insert("grpc-message", v);
        }
        self.write_retry_headers(h);
        res
    }

    fn write_retry_headers(&self, h: &mut HeaderMap) {
        match self {
            Rejection::RateLimited(info) => {
                info.write_headers(h);
                h.insert(RETRY_AFTER, HeaderValue::from(info.retry_after.max(1)));
            }
            Rejection::SessionLimit { retry_after, .. }
            | Rejection::StoreUnavailable { retry_after } => {
                h.insert(RETRY_AFTER, HeaderValue::from((*retry_after).max(1)));
            }
            _ => {}
        }
    }

    /// The `WWW-Authenticate` challenge (RFC 6750), if this rejection has one.
    pub fn www_authenticate(&self, realm: &str) -> Option<HeaderValue> {
        let v = match self {
            Rejection::MissingKey => format!("Bearer realm=\"{realm}\""),
            Rejection::InvalidKey(_) => format!(
                "Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"Invalid or missing API key\""
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

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message(), self.code())
    }
}

/// Whether a request is gRPC (`content-type: application/grpc…`).
#[inline]
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Renders rejections into responses.
///
/// Implemented for closures `Fn(&Rejection, &HeaderMap) -> Response<Bytes>`, which receive the
/// request's headers (for content negotiation).
pub trait RenderRejection: Send + Sync + 'static {
    /// The response for `rejection` to a request with `request_headers`.
    fn render(&self, rejection: &Rejection, request_headers: &HeaderMap) -> Response<Bytes>;
}

impl<F> RenderRejection for F
where
    F: Fn(&Rejection, &HeaderMap) -> Response<Bytes> + Send + Sync + 'static,
{
    fn render(&self, rejection: &Rejection, request_headers: &HeaderMap) -> Response<Bytes> {
        self(rejection, request_headers)
    }
}

/// The default renderer: problem+json, or gRPC trailers-only, with a `realm`.
///
/// The responses that never vary (missing key, invalid key, key in the query string) are
/// rendered once, at construction; refusing a request then costs a copy of their headers, not a
/// JSON serialization.
#[derive(Debug, Clone)]
pub struct DefaultRender {
    realm: Arc<str>,
    fixed: Arc<[Prerendered; 6]>,
}

#[derive(Debug)]
struct Prerendered {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Prerendered {
    fn of(res: Response<Bytes>) -> Self {
        let (parts, body) = res.into_parts();
        Self {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    fn response(&self) -> Response<Bytes> {
        let mut res = Response::new(self.body.clone());
        *res.status_mut() = self.status;
        *res.headers_mut() = self.headers.clone();
        res
    }
}

impl DefaultRender {
    /// The default renderer with `realm` in its `WWW-Authenticate` challenges.
    pub fn new(realm: &str) -> Self {
        let fixed = [
            Rejection::MissingKey,
            Rejection::InvalidKey(InvalidKey::Unknown),
            Rejection::KeyInQuery,
        ];
        let render = |i: usize| {
            let r = &fixed[i % 3];
            Prerendered::of(if i < 3 {
                r.problem_response(realm)
            } else {
                r.grpc_response()
            })
        };
        Self {
            realm: Arc::from(realm),
            fixed: Arc::new([
                render(0),
                render(1),
                render(2),
                render(3),
                render(4),
                render(5),
            ]),
        }
    }
}

impl Default for DefaultRender {
    fn default() -> Self {
        Self::new("api")
    }
}

impl RenderRejection for DefaultRender {
    fn render(&self, rejection: &Rejection, request_headers: &HeaderMap) -> Response<Bytes> {
        let slot = match rejection {
            Rejection::MissingKey => Some(0),
            Rejection::InvalidKey(_) => Some(1),
            Rejection::KeyInQuery => Some(2),
            _ => None,
        };
        match slot {
            Some(i) if is_grpc(request_headers) => self.fixed[i + 3].response(),
            Some(i) => self.fixed[i].response(),
            None => rejection.default_response(request_headers, &self.realm),
        }
    }
}

/// How a layer turns a [`Rejection`] into a response. Cheap to clone.
///
/// ```
/// use bytes::Bytes;
/// use http::{HeaderMap, Response, StatusCode};
/// use tower_api_key::{Rejection, Responder};
///
/// // Plain-text bodies, keeping the default status codes.
/// let responder = Responder::new(|r: &Rejection, _: &HeaderMap| {
///     let mut res = Response::new(Bytes::from(r.message()));
///     *res.status_mut() = r.status();
///     res
/// });
/// let res = responder.respond(&Rejection::MissingKey, &HeaderMap::new());
/// assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
/// assert_eq!(res.body(), "Invalid or missing API key");
/// ```
#[derive(Clone)]
pub struct Responder(Arc<dyn RenderRejection>);

impl Default for Responder {
    fn default() -> Self {
        Self(Arc::new(DefaultRender::default()))
    }
}

impl fmt::Debug for Responder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Responder(..)")
    }
}

impl Responder {
    /// A custom renderer.
    pub fn new(render: impl RenderRejection) -> Self {
        Self(Arc::new(render))
    }

    /// The default renderer with another `WWW-Authenticate` realm than `api`.
    pub fn with_realm(realm: &str) -> Self {
        Self(Arc::new(DefaultRender::new(realm)))
    }

    /// Render a rejection.
    pub fn respond(&self, rejection: &Rejection, request_headers: &HeaderMap) -> Response<Bytes> {
        self.0.render(rejection, request_headers)
    }
}

pin_project! {
    /// The response body of every layer: the inner service's body, or a rejection's bytes.
    ///
    /// Its `Data` is `Bytes` and its error is the inner body's, so it works with axum, hyper and
    /// tonic alike.
    pub struct ResponseBody<B> {
        #[pin]
        kind: BodyKind<B>,
    }
}

pin_project! {
    #[project = BodyKindProj]
    enum BodyKind<B> {
        Inner { #[pin] body: B },
        Full { data: Option<Bytes> },
    }
}

impl<B> ResponseBody<B> {
    /// Wrap the inner service's body.
    pub fn inner(body: B) -> Self {
        Self {
            kind: BodyKind::Inner { body },
        }
    }

    /// A complete body.
    pub fn full(data: Bytes) -> Self {
        Self {
            kind: BodyKind::Full {
                data: if data.is_empty() { None } else { Some(data) },
            },
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project().kind.project() {
            BodyKindProj::Inner { body } => body.poll_frame(cx),
            BodyKindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            BodyKind::Inner { body } => body.is_end_stream(),
            BodyKind::Full { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            BodyKind::Inner { body } => body.size_hint(),
            BodyKind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_key_problem_body() {
        let r = Rejection::InvalidKey(InvalidKey::Unknown);
        let res = r.problem_response("api");
        assert_eq!(res.status(), 401);
        assert_eq!(res.headers()[CONTENT_TYPE], "application/problem+json");
        assert_eq!(
            res.headers()[WWW_AUTHENTICATE],
            "Bearer realm=\"api\", error=\"invalid_token\", error_description=\"Invalid or missing API key\""
        );
        let v: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
        assert_eq!(v["title"], "Invalid or missing API key");
        assert_eq!(v["code"], "invalid_api_key");
        assert_eq!(v["status"], 401);
    }

    #[test]
    fn missing_key_challenge_has_no_error() {
        let res = Rejection::MissingKey.problem_response("banata");
        assert_eq!(res.headers()[WWW_AUTHENTICATE], "Bearer realm=\"banata\"");
    }

    #[test]
    fn grpc_rendering() {
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        let res = Rejection::InsufficientScope {
            required: "a:b".into(),
        }
        .default_response(&h, "api");
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["grpc-status"], "7");
        assert!(res.body().is_empty());
    }

    #[test]
    fn retry_after_is_never_zero() {
        let r = Rejection::RateLimited(RateLimitInfo {
            limit: 100,
            remaining: 0,
            reset: 10,
            retry_after: 0,
        });
        assert_eq!(r.problem_response("api").headers()[RETRY_AFTER], "1");
    }

    #[test]
    fn prerendered_responses_equal_fresh_ones() {
        let render = DefaultRender::new("r");
        let mut grpc = HeaderMap::new();
        grpc.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        for r in [
            Rejection::MissingKey,
            Rejection::InvalidKey(InvalidKey::Expired),
            Rejection::KeyInQuery,
        ] {
            for headers in [HeaderMap::new(), grpc.clone()] {
                let cached = render.render(&r, &headers);
                let fresh = r.default_response(&headers, "r");
                assert_eq!(cached.status(), fresh.status());
                assert_eq!(cached.headers(), fresh.headers());
                assert_eq!(cached.body(), fresh.body());
            }
        }
    }

    #[test]
    fn percent_encoding_of_grpc_message() {
        assert_eq!(percent_encode("a%b\n"), "a%25b%0A");
    }
}
