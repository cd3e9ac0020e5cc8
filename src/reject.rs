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
use std::sync::{Arc, OnceLock};
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
        let mut out = String::new();
        self.write_message(&mut out);
        out
    }

    /// Append [`message`](Self::message) to `out`, without the formatting machinery.
    fn write_message(&self, out: &mut String) {
        match self {
            Rejection::MissingKey | Rejection::InvalidKey(_) => {
                out.push_str("Invalid or missing API key");
            }
            Rejection::KeyInQuery => out.push_str(
                "API keys must not be sent in the URL; use the Authorization: Bearer header",
            ),
            Rejection::InsufficientScope { required } => {
                out.push_str("This API key lacks the permission required: ");
                out.push_str(required);
            }
            Rejection::StoreUnavailable { .. } => {
                out.push_str("Authentication is temporarily unavailable; retry later");
            }
            Rejection::RateLimited(info) => {
                out.push_str("Rate limit of ");
                push_u64(out, info.limit);
                out.push_str(" requests exceeded; retry after ");
                push_u64(out, info.retry_after);
                out.push_str(" seconds");
            }
            Rejection::SessionLimit { limit, .. } => {
                out.push_str("Concurrent session limit of ");
                push_u64(out, *limit);
                out.push_str(" reached; end a session first");
            }
            Rejection::MissingPrincipal { layer } => {
                out.push_str("Server misconfiguration: ");
                out.push_str(layer);
                out.push_str(" found no authenticated principal (is ApiKeyAuth in front of it?)");
            }
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
    ///
    /// The body is written directly (no JSON value tree): `type`, `title`, `status`, `code`,
    /// then the members of the rejection (`required_scope`, `retry_after`, `limit`).
    pub fn problem_response(&self, realm: &str) -> Response<Bytes> {
        let status = self.status();
        let mut body = String::with_capacity(192);
        body.push_str("{\"type\":\"about:blank\",\"title\":\"");
        let title_start = body.len();
        self.write_message(&mut body);
        if let Rejection::InsufficientScope { .. } | Rejection::MissingPrincipal { .. } = self {
            // The only messages with text from outside the message table (scopes, a name).
            escape_json_tail(&mut body, title_start);
        }
        body.push_str("\",\"status\":");
        push_u64(&mut body, u64::from(status.as_u16()));
        body.push_str(",\"code\":\"");
        body.push_str(self.code());
        body.push('"');
        let number = |body: &mut String, name: &str, n: u64| {
            body.push_str(",\"");
            body.push_str(name);
            body.push_str("\":");
            push_u64(body, n);
        };
        match self {
            Rejection::InsufficientScope { required } => {
                body.push_str(",\"required_scope\":\"");
                let at = body.len();
                body.push_str(required);
                escape_json_tail(&mut body, at);
                body.push('"');
            }
            Rejection::RateLimited(info) => {
                number(&mut body, "retry_after", info.retry_after);
                number(&mut body, "limit", info.limit);
            }
            Rejection::SessionLimit { limit, retry_after } => {
                number(&mut body, "retry_after", *retry_after);
                number(&mut body, "limit", *limit);
            }
            Rejection::StoreUnavailable { retry_after } => {
                number(&mut body, "retry_after", *retry_after);
            }
            _ => {}
        }
        body.push('}');
        let mut res = Response::new(Bytes::from(body));
        *res.status_mut() = status;
        *res.headers_mut() = HeaderMap::with_capacity(2 + ROOM);
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
            GRPC_STATUS,
            HeaderValue::from(u16::from(self.grpc_status())),
        );
        if let Ok(v) = HeaderValue::from_str(&percent_encode(&self.message())) {
            h.insert(GRPC_MESSAGE, v);
        }
        self.write_retry_headers(h);
        res
    }

    fn write_retry_headers(&self, h: &mut HeaderMap) {
        match self {
            Rejection::RateLimited(info) => {
                info.write_headers(h);
                h.insert(
                    RETRY_AFTER,
                    crate::rate_limit::int_value(info.retry_after.max(1)),
                );
            }
            Rejection::SessionLimit { retry_after, .. }
            | Rejection::StoreUnavailable { retry_after } => {
                h.insert(
                    RETRY_AFTER,
                    crate::rate_limit::int_value((*retry_after).max(1)),
                );
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

/// The fail-closed answer of a layer that needs a [`Principal`](crate::Principal) and found none:
/// an error log naming the missing `ApiKeyAuth`, and a `500 auth_layer_missing`.
#[cold]
pub(crate) fn missing_principal(
    layer: &'static str,
    responder: &Responder,
    request_headers: &HeaderMap,
) -> Response<Bytes> {
    tracing::error!("{layer} found no Principal in the request: add ApiKeyAuth in front of it");
    responder.respond(&Rejection::MissingPrincipal { layer }, request_headers)
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

/// Append `n` in decimal.
fn push_u64(out: &mut String, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    out.push_str(std::str::from_utf8(&buf[at..]).unwrap_or_default());
}

/// Escape, as a JSON string's content, what was appended to `out` from byte `from` on.
fn escape_json_tail(out: &mut String, from: usize) {
    let tail = out.get(from..).unwrap_or_default();
    if !tail.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        return;
    }
    let tail = out.split_off(from);
    for c in tail.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                out.push_str("\\u00");
                out.push(char::from(
                    b"0123456789abcdef"[(u32::from(c) >> 4) as usize],
                ));
                out.push(char::from(
                    b"0123456789abcdef"[(u32::from(c) & 15) as usize],
                ));
            }
            c => out.push(c),
        }
    }
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
/// JSON serialization. The default [`Responder`] (realm `api`, one per process) does not even
/// copy those: it writes the same responses from compile-time constants.
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

/// `grpc-status`.
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// `grpc-message`.
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// Room left in a refusal's header map for what outer layers add (`X-RateLimit-*`,
/// `Retry-After`), so that adding them never reallocates it.
const ROOM: usize = 4;

impl Prerendered {
    fn of(res: Response<Bytes>) -> Self {
        let (parts, body) = res.into_parts();
        Self {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// A fresh response whose header map is a copy of the stored one: the cheapest, for
    /// refusals nothing is added to (those of `ApiKeyAuth`, the outermost layer).
    #[inline]
    fn response(&self) -> Response<Bytes> {
        let mut res = Response::new(self.body.clone());
        *res.status_mut() = self.status;
        *res.headers_mut() = self.headers.clone();
        res
    }

    /// The response, built in `headers`: the refused request's own map, emptied, so that the
    /// refusal allocates nothing (the request's map was allocated already and would be freed
    /// now; the response keeps it instead). `room` more entries are reserved for what outer
    /// layers add, which only allocates if the request's map is smaller than that.
    #[inline]
    fn response_in(&self, headers: HeaderMap, room: usize) -> Response<Bytes> {
        self.response_in_with(headers, room, |b| b)
    }

    /// [`response_in`](Self::response_in) with the body wrapped by `wrap`.
    #[inline]
    fn response_in_with<T>(
        &self,
        mut headers: HeaderMap,
        room: usize,
        wrap: impl FnOnce(Bytes) -> T,
    ) -> Response<T> {
        headers.clear();
        if room > 0 {
            headers.reserve(self.headers.len() + room);
        }
        for (name, value) in self.headers.iter() {
            headers.append(name.clone(), value.clone());
        }
        let mut res = Response::new(wrap(self.body.clone()));
        *res.status_mut() = self.status;
        *res.headers_mut() = headers;
        res
    }
}

/// The refusals whose response never varies, in the order of [`DefaultRender`]'s table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fixed {
    MissingKey = 0,
    InvalidKey = 1,
    KeyInQuery = 2,
}

impl Fixed {
    /// The fixed refusal `rejection` is, if it is one.
    #[inline]
    fn of(rejection: &Rejection) -> Option<Fixed> {
        match rejection {
            Rejection::MissingKey => Some(Fixed::MissingKey),
            Rejection::InvalidKey(_) => Some(Fixed::InvalidKey),
            Rejection::KeyInQuery => Some(Fixed::KeyInQuery),
            _ => None,
        }
    }
}

/// A refusal rendered once for a layer (e.g. a [`ScopeGuard`](crate::ScopeGuard)'s fixed
/// requirement): its HTTP and its gRPC form.
#[derive(Debug)]
pub(crate) struct FixedRefusal {
    http: Prerendered,
    grpc: Prerendered,
}

impl FixedRefusal {
    /// The refusal of a request with these headers, built in the request's own header map
    /// (see [`Responder::respond_in`]).
    #[inline]
    pub(crate) fn respond_in(&self, request_headers: HeaderMap) -> Response<Bytes> {
        // Inner layers' refusals get the rate-limit headers added on their way out.
        if is_grpc(&request_headers) {
            self.grpc.response_in(request_headers, ROOM)
        } else {
            self.http.response_in(request_headers, ROOM)
        }
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

    /// Render `rejection` once, as this renderer would, for a layer to copy on each refusal.
    pub(crate) fn prerender(&self, rejection: &Rejection) -> FixedRefusal {
        FixedRefusal {
            http: Prerendered::of(rejection.problem_response(&self.realm)),
            grpc: Prerendered::of(rejection.grpc_response()),
        }
    }

    /// The pre-rendered response of `rejection` for a request with these headers, if it has one.
    #[inline]
    fn fixed_for(
        &self,
        rejection: &Rejection,
        request_headers: &HeaderMap,
    ) -> Option<&Prerendered> {
        Some(self.fixed(Fixed::of(rejection)?, request_headers))
    }

    /// The pre-rendered response of a fixed refusal for a request with these headers.
    #[inline]
    fn fixed(&self, fixed: Fixed, request_headers: &HeaderMap) -> &Prerendered {
        let slot = fixed as usize;
        if is_grpc(request_headers) {
            &self.fixed[slot + 3]
        } else {
            &self.fixed[slot]
        }
    }

    #[inline]
    fn render_default(
        &self,
        rejection: &Rejection,
        request_headers: &HeaderMap,
    ) -> Response<Bytes> {
        match self.fixed_for(rejection, request_headers) {
            Some(fixed) => fixed.response(),
            None => rejection.default_response(request_headers, &self.realm),
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
        self.render_default(rejection, request_headers)
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
pub struct Responder(RenderKind);

/// The default renderer is called directly (no dynamic call), and layers may pre-render their
/// own fixed refusals with it.
#[derive(Clone)]
enum RenderKind {
    /// The process-wide default renderer, realm `api`: no reference count to touch, and its
    /// fixed refusals are constants, built when a response future is polled (see
    /// [`StaticRefusal`]).
    Process(&'static DefaultRender),
    Default(Arc<DefaultRender>),
    Custom(Arc<dyn RenderRejection>),
}

impl Default for Responder {
    /// The default renderer, realm `api`: one per process, shared by every layer.
    fn default() -> Self {
        static DEFAULT: OnceLock<DefaultRender> = OnceLock::new();
        Self(RenderKind::Process(
            DEFAULT.get_or_init(|| DefaultRender::new("api")),
        ))
    }
}

/// One of the process-wide default renderer's fixed refusals (realm `api`): which one, and
/// whether in its gRPC form. Two bytes: a response future holds it with the refused request's
/// header map and builds the response only when polled, straight into its final type.
///
/// Its headers and body are compile-time constants (the default realm is fixed), so building
/// the response writes constant values into the map: no iteration over a stored header map,
/// no reference-count or vtable call per value, and the body is a `'static` slice. A test
/// checks each of the six against what [`Rejection::default_response`] renders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StaticRefusal {
    fixed: Fixed,
    grpc: bool,
}

/// `WWW-Authenticate` of the fixed refusals, realm `api` (see [`Rejection::www_authenticate`]).
const WWW_MISSING: HeaderValue = HeaderValue::from_static(r#"Bearer realm="api""#);
const WWW_INVALID: HeaderValue = HeaderValue::from_static(
    r#"Bearer realm="api", error="invalid_token", error_description="Invalid or missing API key""#,
);
const WWW_IN_QUERY: HeaderValue = HeaderValue::from_static(
    r#"Bearer realm="api", error="invalid_request", error_description="Send the API key in the Authorization header""#,
);
const PROBLEM_JSON: HeaderValue = HeaderValue::from_static("application/problem+json");
const APPLICATION_GRPC: HeaderValue = HeaderValue::from_static("application/grpc");
const INVALID_MESSAGE: HeaderValue = HeaderValue::from_static("Invalid or missing API key");
const IN_QUERY_MESSAGE: HeaderValue = HeaderValue::from_static(
    "API keys must not be sent in the URL; use the Authorization: Bearer header",
);

impl StaticRefusal {
    /// The refusal, built in `request_headers` (emptied), with its body wrapped by `wrap`.
    /// Inlined into the response future's `poll` (out of line: a call and ~20 instructions
    /// more per refusal, by callgrind).
    #[inline(always)]
    pub(crate) fn respond_in<T>(
        self,
        mut headers: HeaderMap,
        wrap: impl FnOnce(Bytes) -> T,
    ) -> Response<T> {
        headers.clear();
        let (status, body): (StatusCode, &'static [u8]) = if self.grpc {
            let (code, message) = match self.fixed {
                Fixed::MissingKey | Fixed::InvalidKey => ("16", INVALID_MESSAGE),
                Fixed::KeyInQuery => ("3", IN_QUERY_MESSAGE),
            };
            headers.append(CONTENT_TYPE, APPLICATION_GRPC);
            headers.append(GRPC_STATUS, HeaderValue::from_static(code));
            headers.append(GRPC_MESSAGE, message);
            (StatusCode::OK, b"")
        } else {
            let (status, www, body): (_, _, &'static [u8]) = match self.fixed {
                Fixed::MissingKey => (
                    StatusCode::UNAUTHORIZED,
                    WWW_MISSING,
                    br#"{"type":"about:blank","title":"Invalid or missing API key","status":401,"code":"missing_api_key"}"#,
                ),
                Fixed::InvalidKey => (
                    StatusCode::UNAUTHORIZED,
                    WWW_INVALID,
                    br#"{"type":"about:blank","title":"Invalid or missing API key","status":401,"code":"invalid_api_key"}"#,
                ),
                Fixed::KeyInQuery => (
                    StatusCode::BAD_REQUEST,
                    WWW_IN_QUERY,
                    br#"{"type":"about:blank","title":"API keys must not be sent in the URL; use the Authorization: Bearer header","status":400,"code":"api_key_in_query"}"#,
                ),
            };
            headers.append(CONTENT_TYPE, PROBLEM_JSON);
            headers.append(WWW_AUTHENTICATE, www);
            (status, body)
        };
        let mut res = Response::new(wrap(Bytes::from_static(body)));
        *res.status_mut() = status;
        *res.headers_mut() = headers;
        res
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
        Self(RenderKind::Custom(Arc::new(render)))
    }

    /// The default renderer with another `WWW-Authenticate` realm than `api`.
    pub fn with_realm(realm: &str) -> Self {
        Self(RenderKind::Default(Arc::new(DefaultRender::new(realm))))
    }

    /// Render a rejection.
    #[inline]
    pub fn respond(&self, rejection: &Rejection, request_headers: &HeaderMap) -> Response<Bytes> {
        match &self.0 {
            RenderKind::Process(d) => match self.static_refusal(rejection, request_headers) {
                Some(fixed) => fixed.respond_in(HeaderMap::with_capacity(3 + ROOM), |b| b),
                None => rejection.default_response(request_headers, &d.realm),
            },
            RenderKind::Default(d) => d.render_default(rejection, request_headers),
            RenderKind::Custom(c) => c.render(rejection, request_headers),
        }
    }

    /// The process-wide default renderer's fixed refusal of `rejection` for a request with
    /// these headers, if this responder is that renderer and the refusal is a fixed one
    /// (missing key, invalid key, key in the query string).
    #[inline]
    pub(crate) fn static_refusal(
        &self,
        rejection: &Rejection,
        request_headers: &HeaderMap,
    ) -> Option<StaticRefusal> {
        self.fixed_refusal(Fixed::of(rejection)?, request_headers)
    }

    /// [`static_refusal`](Self::static_refusal) for a refusal known to be a fixed one.
    #[inline]
    pub(crate) fn fixed_refusal(
        &self,
        fixed: Fixed,
        request_headers: &HeaderMap,
    ) -> Option<StaticRefusal> {
        match &self.0 {
            RenderKind::Process(_) => Some(StaticRefusal {
                fixed,
                grpc: is_grpc(request_headers),
            }),
            _ => None,
        }
    }

    /// Render a rejection of a request whose header map the caller gives up: the default
    /// renderer's fixed refusals (missing, invalid key, key in the query) are built in that
    /// map, emptied, instead of a new one, so refusing allocates nothing. Other rejections and
    /// custom renderers get the map by reference, as in [`respond`](Self::respond).
    #[inline]
    pub(crate) fn respond_in(
        &self,
        rejection: &Rejection,
        request_headers: HeaderMap,
    ) -> Response<Bytes> {
        let d: &DefaultRender = match &self.0 {
            RenderKind::Process(d) => match self.static_refusal(rejection, &request_headers) {
                Some(fixed) => return fixed.respond_in(request_headers, |b| b),
                None => d,
            },
            RenderKind::Default(d) => d,
            RenderKind::Custom(c) => return c.render(rejection, &request_headers),
        };
        match d.fixed_for(rejection, &request_headers) {
            Some(fixed) => fixed.response_in(request_headers, 0),
            None => rejection.default_response(&request_headers, &d.realm),
        }
    }

    /// The default renderer, if this is one (so a layer may pre-render its fixed refusals).
    pub(crate) fn default_render(&self) -> Option<&DefaultRender> {
        match &self.0 {
            RenderKind::Process(d) => Some(d),
            RenderKind::Default(d) => Some(d),
            RenderKind::Custom(_) => None,
        }
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
    fn constant_refusals_are_what_the_renderer_renders() {
        let responder = Responder::default();
        for rejection in [
            Rejection::MissingKey,
            Rejection::InvalidKey(InvalidKey::Unknown),
            Rejection::InvalidKey(InvalidKey::BadHeader),
            Rejection::KeyInQuery,
        ] {
            for grpc in [false, true] {
                let mut request = HeaderMap::new();
                request.insert("x-request-only", HeaderValue::from_static("1"));
                if grpc {
                    request.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
                }
                let expected = rejection.default_response(&request, "api");
                let Some(fixed) = responder.static_refusal(&rejection, &request) else {
                    panic!("{rejection:?} has a constant refusal");
                };
                let got = fixed.respond_in(request.clone(), |b| b);
                let what = format!("{rejection:?}, grpc {grpc}");
                assert_eq!(got.status(), expected.status(), "{what}");
                assert_eq!(got.headers(), expected.headers(), "{what}");
                assert_eq!(got.body(), expected.body(), "{what}");
            }
        }
        let other = Rejection::StoreUnavailable { retry_after: 5 };
        assert!(
            responder
                .static_refusal(&other, &HeaderMap::new())
                .is_none()
        );
        let custom_realm = Responder::with_realm("other");
        let missing = Rejection::MissingKey;
        assert!(
            custom_realm
                .static_refusal(&missing, &HeaderMap::new())
                .is_none()
        );
    }

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
    fn problem_bodies_are_json_with_their_members() {
        let info = RateLimitInfo {
            limit: 100,
            remaining: 0,
            reset: 1_700_000_060,
            retry_after: 7,
        };
        let cases = [
            Rejection::MissingKey,
            Rejection::InvalidKey(InvalidKey::Revoked),
            Rejection::KeyInQuery,
            Rejection::InsufficientScope {
                required: "a:b \"quoted\" \\ \n".into(),
            },
            Rejection::StoreUnavailable { retry_after: 5 },
            Rejection::RateLimited(info),
            Rejection::SessionLimit {
                limit: 10,
                retry_after: 30,
            },
            Rejection::MissingPrincipal {
                layer: "ScopeGuard",
            },
        ];
        for r in cases {
            let res = r.problem_response("api");
            let v: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
            assert_eq!(v["type"], "about:blank");
            assert_eq!(v["title"], r.message());
            assert_eq!(v["status"], r.status().as_u16());
            assert_eq!(v["code"], r.code());
            match &r {
                Rejection::InsufficientScope { required } => {
                    assert_eq!(v["required_scope"], required.as_str())
                }
                Rejection::RateLimited(i) => {
                    assert_eq!(v["retry_after"], i.retry_after);
                    assert_eq!(v["limit"], i.limit);
                    assert_eq!(res.headers()[RETRY_AFTER], "7");
                    assert_eq!(res.headers()[X_RATELIMIT_RESET], "1700000060");
                }
                Rejection::SessionLimit { limit, retry_after } => {
                    assert_eq!(v["retry_after"], *retry_after);
                    assert_eq!(v["limit"], *limit);
                }
                Rejection::StoreUnavailable { retry_after } => {
                    assert_eq!(v["retry_after"], *retry_after)
                }
                _ => assert_eq!(v.as_object().unwrap().len(), 4),
            }
        }
        assert_eq!(
            Rejection::RateLimited(info).message(),
            "Rate limit of 100 requests exceeded; retry after 7 seconds"
        );
    }

    /// A request map full of headers, among them the credential: what refusals reuse.
    fn busy_request_headers(grpc: bool) -> HeaderMap {
        let mut h = HeaderMap::new();
        if grpc {
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        }
        h.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_static("Bearer br_live_not_a_real_key_at_all_00000"),
        );
        h.insert(http::header::COOKIE, HeaderValue::from_static("session=1"));
        for i in 0..20 {
            let name = HeaderName::try_from(format!("x-request-{i}")).unwrap();
            h.append(name, HeaderValue::from_static("v"));
        }
        h
    }

    #[test]
    fn refusals_built_in_the_request_map_carry_none_of_its_headers() {
        let responders = [
            Responder::default(),
            Responder::with_realm("other"),
            Responder::new(DefaultRender::new("custom")),
        ];
        let rejections = [
            Rejection::MissingKey,
            Rejection::InvalidKey(InvalidKey::Unknown),
            Rejection::InvalidKey(InvalidKey::Revoked),
            Rejection::KeyInQuery,
            Rejection::StoreUnavailable { retry_after: 5 },
        ];
        for responder in &responders {
            for grpc in [false, true] {
                for r in &rejections {
                    let request = busy_request_headers(grpc);
                    let fresh = responder.respond(r, &request);
                    let reused = responder.respond_in(r, request);
                    assert_eq!(reused.status(), fresh.status(), "{r:?}");
                    assert_eq!(reused.headers(), fresh.headers(), "{r:?} grpc={grpc}");
                    assert_eq!(reused.body(), fresh.body());
                    assert!(!reused.headers().contains_key(http::header::AUTHORIZATION));
                }
            }
        }
        // Scope refusals pre-rendered by a layer: the same, with room for outer headers.
        let scope = Rejection::InsufficientScope {
            required: "org:billing".into(),
        };
        let fixed = responders[0]
            .default_render()
            .map(|d| d.prerender(&scope))
            .unwrap();
        for grpc in [false, true] {
            let request = busy_request_headers(grpc);
            let fresh = responders[0].respond(&scope, &request);
            let reused = fixed.respond_in(request);
            assert_eq!(reused.headers(), fresh.headers());
            assert_eq!(reused.body(), fresh.body());
        }
    }

    #[test]
    fn the_default_responder_is_shared_and_prerenders_for_layers() {
        let a = Responder::default();
        let b = Responder::default();
        let (Some(da), Some(db)) = (a.default_render(), b.default_render()) else {
            panic!("default responders render by default");
        };
        assert!(std::ptr::eq(da, db));
        assert!(
            Responder::new(DefaultRender::new("x"))
                .default_render()
                .is_none()
        );
        let r = Rejection::InsufficientScope {
            required: "org:billing".into(),
        };
        let fixed = da.prerender(&r);
        let mut grpc = HeaderMap::new();
        grpc.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        for headers in [HeaderMap::new(), grpc] {
            let cached = fixed.respond_in(headers.clone());
            let fresh = a.respond(&r, &headers);
            assert_eq!(cached.status(), fresh.status());
            assert_eq!(cached.headers(), fresh.headers());
            assert_eq!(cached.body(), fresh.body());
        }
    }

    #[test]
    fn percent_encoding_of_grpc_message() {
        assert_eq!(percent_encode("a%b\n"), "a%25b%0A");
    }
}
