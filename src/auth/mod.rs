//! [`ApiKeyAuth`]: who is calling.
//!
//! For each request, in order:
//!
//! 1. a key-looking value in the URL query string → `400 api_key_in_query` (never authenticates);
//! 2. `Authorization: Bearer <key>` (scheme case-insensitive), else the optional custom header
//!    (e.g. `X-API-Key`) → `401 missing_api_key` if neither;
//! 3. format check (prefix, length, alphabet, checksum) → `401 invalid_api_key`, before hashing;
//! 4. SHA-256 → [`KeyStore::find_by_hash`] → constant-time compare of the stored hash;
//!    unknown → 401; store error or timeout → `503 auth_unavailable` (never 401);
//! 5. revoked → 401; expired → 401;
//! 6. a [`Principal`] is inserted into the request's extensions and the inner service called.
//!
//! # Design note: a synchronous fast path
//!
//! A store whose lookup is ready at once (the in-memory store, a cache hit) is resolved inside
//! `call`: the lookup future is polled once with a no-op waker, and on `Ready` the inner service
//! that `poll_ready` prepared is called directly. No clone of the inner service, no `Arc` clone of
//! the configuration, no boxed future. Only a lookup that is still pending takes the general path:
//! the ready inner service is swapped out with `std::mem::replace`, and a timeout is armed lazily
//! (a tokio `Sleep`, allocated only for such lookups).

mod extract;
mod future;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, Request, Response};
use tower_layer::Layer;
use tower_service::Service;

#[cfg(test)]
pub(crate) use extract::all_graphic;
pub use extract::parse_bearer;
pub use future::ResponseFuture;
pub(crate) use future::{LookupWait, polled_after_completion};

use crate::clock::{Clock, Timestamp};
use crate::key::{KeyFormats, KeyHash};
use crate::last_used::LastUsedRecorderLayer;
use crate::principal::Principal;
use crate::rate_limit::{OrgRateLimitLayer, RateLimitBackend};
use crate::reject::{Fixed, InvalidKey, Rejection, Responder, ResponseBody, StaticRefusal};
use crate::scope::ScopeGuardLayer;
use crate::stack::ApiKeyStackLayer;
use crate::store::{KeyStore, LookupResult};
use extract::Credential;

/// Authenticates requests by API key. See the [module docs](self) for the exact order of checks.
///
/// `ApiKeyAuth::new(store)` builds the layer ([`ApiKeyAuthLayer`]); the layer wraps services in
/// `ApiKeyAuth<S, St>`.
///
/// ```
/// use axum::{Router, routing::get};
/// use tower_api_key::{ApiKeyAuth, MemoryStore, Principal};
///
/// let store = MemoryStore::new();
/// let app: Router = Router::new()
///     .route("/v1/whoami", get(|p: Principal| async move { p.org_id().to_string() }))
///     .layer(ApiKeyAuth::new(store));
/// ```
#[derive(Clone)]
pub struct ApiKeyAuth<S, St> {
    inner: S,
    shared: Arc<Shared<St>>,
}

impl<S: fmt::Debug, St> fmt::Debug for ApiKeyAuth<S, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyAuth")
            .field("inner", &self.inner)
            .field("formats", &self.shared.formats)
            .field("header", &self.shared.header)
            .finish_non_exhaustive()
    }
}

impl ApiKeyAuth<(), ()> {
    /// The layer for `store`, with the defaults: `br_live_` keys, `Authorization: Bearer` only,
    /// coarse clock, 3 s store timeout, problem+json rejections. Same as
    /// [`ApiKeyAuthLayer::new`].
    #[allow(clippy::new_ret_no_self)]
    pub fn new<St: KeyStore>(store: St) -> ApiKeyAuthLayer<St> {
        ApiKeyAuthLayer::new(store)
    }
}

#[derive(Clone)]
pub(crate) struct Shared<St> {
    pub(crate) store: St,
    pub(crate) formats: KeyFormats,
    pub(crate) header: Option<HeaderName>,
    pub(crate) clock: Clock,
    pub(crate) responder: Responder,
    pub(crate) timeout: Duration,
    pub(crate) retry_after: u64,
}

/// How a request's authentication starts: refused before any lookup, decided by a lookup that
/// was ready at once, or waiting for one.
pub(crate) enum Begin<L> {
    Refuse(Early),
    Decided(LookupResult, KeyHash),
    Pending(L, KeyHash),
}

/// A refusal decided before any lookup (steps 1–3 of the module docs). Two bytes and `Copy`,
/// so the fast refusals pass it in registers. A [`Rejection`] (40 bytes, some variants owning
/// a `String`) went through memory at each step, and each copy read back a value just written
/// in smaller pieces: a store-forwarding stall, on which `perf` put ~7 ns of one refusal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Early {
    MissingKey,
    Invalid(InvalidKey),
    KeyInQuery,
}

impl Early {
    /// The rejection this is.
    pub(crate) fn rejection(self) -> Rejection {
        match self {
            Early::MissingKey => Rejection::MissingKey,
            Early::Invalid(reason) => Rejection::InvalidKey(reason),
            Early::KeyInQuery => Rejection::KeyInQuery,
        }
    }

    /// Which of the default renderer's fixed refusals it is.
    #[inline]
    pub(crate) fn fixed(self) -> Fixed {
        match self {
            Early::MissingKey => Fixed::MissingKey,
            Early::Invalid(_) => Fixed::InvalidKey,
            Early::KeyInQuery => Fixed::KeyInQuery,
        }
    }
}

/// Log a refusal for `reason` before any lookup; returns it.
#[inline(never)]
fn log_invalid(reason: InvalidKey) -> InvalidKey {
    tracing::debug!(reason = reason.as_str(), "api key refused");
    reason
}

impl<St: KeyStore> Shared<St> {
    /// Steps 1–4 of the module docs up to the store's answer: the query-string check, the
    /// credential, its format, its hash, and the lookup, polled once in place. Shared by
    /// [`ApiKeyAuth`] and [`ApiKeyStack`](crate::stack::ApiKeyStack); always inlined into
    /// their `call`.
    #[inline(always)]
    pub(crate) fn begin<B>(&self, req: &Request<B>) -> Begin<St::Lookup> {
        if extract::key_in_query(req.uri(), &self.formats) {
            tracing::debug!(reason = "key_in_query", "api key refused");
            return Begin::Refuse(Early::KeyInQuery);
        }
        let key = match extract::credential(req.headers(), self.header.as_ref()) {
            Credential::Key(k) => k,
            Credential::Missing => {
                tracing::debug!(reason = "missing", "api key refused");
                return Begin::Refuse(Early::MissingKey);
            }
            Credential::Bad => {
                return Begin::Refuse(Early::Invalid(log_invalid(InvalidKey::BadHeader)));
            }
        };
        if let Err(e) = self.formats.check(key) {
            return Begin::Refuse(Early::Invalid(log_invalid(InvalidKey::Malformed(e))));
        }
        let hash = KeyHash::of(key);
        let mut lookup = self.store.find_by_hash(&hash);
        // A lookup that is ready at once is decided by the caller. Lookups are `Unpin`, so
        // polling one in place and moving it afterwards is sound.
        let mut noop = Context::from_waker(Waker::noop());
        match Pin::new(&mut lookup).poll(&mut noop) {
            Poll::Ready(result) => Begin::Decided(result, hash),
            Poll::Pending => Begin::Pending(lookup, hash),
        }
    }
}

impl<St> Shared<St> {
    /// Turn a lookup result into a principal or a rejection, logging the decision.
    pub(crate) fn decide(
        &self,
        result: LookupResult,
        hash: &KeyHash,
    ) -> Result<Principal, Rejection> {
        self.decide_at(result, hash, self.clock.now())
    }

    /// [`decide`](Self::decide) at `now`, read from this layer's clock by the caller.
    #[inline]
    pub(crate) fn decide_at(
        &self,
        result: LookupResult,
        hash: &KeyHash,
        now: Timestamp,
    ) -> Result<Principal, Rejection> {
        let stored = match result {
            Ok(Some(stored)) if stored.record.hash.ct_eq(hash) => stored,
            Ok(_) => return Err(self.invalid(InvalidKey::Unknown, None)),
            Err(error) => {
                tracing::warn!(%error, "api key store failed; answering 503");
                return Err(Rejection::StoreUnavailable {
                    retry_after: self.retry_after,
                });
            }
        };
        let record = &stored.record;
        if record.is_revoked(now) {
            return Err(self.invalid(InvalidKey::Revoked, Some(record)));
        }
        if record.is_expired(now) {
            return Err(self.invalid(InvalidKey::Expired, Some(record)));
        }
        tracing::trace!(key_id = %record.id, org_id = %record.org_id, "api key accepted");
        Ok(Principal::new(stored.record, stored.plan))
    }

    fn invalid(&self, reason: InvalidKey, record: Option<&crate::store::KeyRecord>) -> Rejection {
        match record {
            Some(r) => tracing::debug!(
                key_id = %r.id, org_id = %r.org_id, reason = reason.as_str(),
                "api key refused"
            ),
            None => tracing::debug!(reason = reason.as_str(), "api key refused"),
        }
        Rejection::InvalidKey(reason)
    }
}

/// Layer that adds [`ApiKeyAuth`]. Cheap to clone; all clones share one configuration.
///
/// ```
/// use std::time::Duration;
/// use http::HeaderName;
/// use tower_api_key::{ApiKeyAuthLayer, KeyFormat, KeyFormats, MemoryStore};
///
/// let layer = ApiKeyAuthLayer::new(MemoryStore::new())
///     .formats(KeyFormats::new([KeyFormat::live(), KeyFormat::test()]))
///     .header(HeaderName::from_static("x-api-key"))
///     .store_timeout(Duration::from_millis(500));
/// ```
pub struct ApiKeyAuthLayer<St> {
    shared: Arc<Shared<St>>,
}

impl<St> Clone for ApiKeyAuthLayer<St> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<St> fmt::Debug for ApiKeyAuthLayer<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyAuthLayer")
            .field("formats", &self.shared.formats)
            .field("header", &self.shared.header)
            .field("clock", &self.shared.clock)
            .field("timeout", &self.shared.timeout)
            .finish_non_exhaustive()
    }
}

impl<St: KeyStore> ApiKeyAuthLayer<St> {
    /// The layer with the defaults (see [`ApiKeyAuth::new`]).
    pub fn new(store: St) -> Self {
        Self {
            shared: Arc::new(Shared {
                store,
                formats: KeyFormats::default(),
                header: None,
                clock: Clock::default(),
                responder: Responder::default(),
                timeout: Duration::from_secs(3),
                retry_after: 5,
            }),
        }
    }

    fn map(self, f: impl FnOnce(&mut Shared<St>)) -> Self {
        let mut shared = Arc::unwrap_or_clone(self.shared);
        f(&mut shared);
        Self {
            shared: Arc::new(shared),
        }
    }

    /// The configuration, for [`ApiKeyStackLayer`].
    pub(crate) fn into_shared(self) -> Shared<St> {
        Arc::unwrap_or_clone(self.shared)
    }

    /// Run this rate limit inside the same service, right after a key is accepted: the whole
    /// stack in one service ([`ApiKeyStack`](crate::ApiKeyStack)). The same decisions,
    /// headers and refusals as `layer` placed directly behind `ApiKeyAuth`, with its own
    /// configuration (backend, policy, cost, failure policy, responder).
    ///
    /// ```
    /// use tower_api_key::{ApiKeyAuth, LastUsedRecorder, MemoryStore, OrgRateLimit};
    ///
    /// let store = MemoryStore::new();
    /// let recorder = LastUsedRecorder::new(store.clone());
    /// let layer = ApiKeyAuth::new(store)
    ///     .rate_limit(OrgRateLimit::new())
    ///     .record_last_used(recorder.clone());
    /// # let _ = layer;
    /// ```
    pub fn rate_limit<B: RateLimitBackend>(
        self,
        layer: OrgRateLimitLayer<B>,
    ) -> ApiKeyStackLayer<St, B> {
        ApiKeyStackLayer::from_auth(self).rate_limit(layer)
    }

    /// Mark keys as used inside the same service: see [`ApiKeyStackLayer::record_last_used`].
    pub fn record_last_used<St2: KeyStore>(
        self,
        layer: LastUsedRecorderLayer<St2>,
    ) -> ApiKeyStackLayer<St> {
        ApiKeyStackLayer::from_auth(self).record_last_used(layer)
    }

    /// Check scopes inside the same service: see [`ApiKeyStackLayer::scope_guard`].
    pub fn scope_guard(self, layer: ScopeGuardLayer) -> ApiKeyStackLayer<St> {
        ApiKeyStackLayer::from_auth(self).scope_guard(layer)
    }

    /// The key formats to accept (default: `br_live_` only).
    pub fn formats(self, formats: impl Into<KeyFormats>) -> Self {
        let formats = formats.into();
        self.map(|s| s.formats = formats)
    }

    /// Also accept the key in this header (e.g. `X-API-Key`) when there is no
    /// `Authorization: Bearer`.
    pub fn header(self, name: HeaderName) -> Self {
        self.map(|s| s.header = Some(name))
    }

    /// The clock used for expiry (default: [`Clock::coarse`]).
    pub fn clock(self, clock: Clock) -> Self {
        self.map(|s| s.clock = clock)
    }

    /// How rejections are rendered (default: problem+json / gRPC).
    pub fn responder(self, responder: Responder) -> Self {
        self.map(|s| s.responder = responder)
    }

    /// How long a pending store lookup may take before the request gets 503 (default 3 s).
    pub fn store_timeout(self, timeout: Duration) -> Self {
        self.map(|s| s.timeout = timeout)
    }

    /// The `Retry-After` of a 503 when the store fails (default 5 s).
    pub fn unavailable_retry_after(self, secs: u64) -> Self {
        self.map(|s| s.retry_after = secs.max(1))
    }

    /// The store.
    pub fn store(&self) -> &St {
        &self.shared.store
    }
}

impl<S, St> Layer<S> for ApiKeyAuthLayer<St> {
    type Service = ApiKeyAuth<S, St>;

    fn layer(&self, inner: S) -> Self::Service {
        ApiKeyAuth {
            inner,
            shared: self.shared.clone(),
        }
    }
}

impl<S, St> ApiKeyAuth<S, St> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwrap the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, St, ReqBody, ResBody> Service<Request<ReqBody>> for ApiKeyAuth<S, St>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    St: KeyStore,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, St, ReqBody>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let shared = &*self.shared;
        match shared.begin(&req) {
            Begin::Decided(result, hash) => match shared.decide(result, &hash) {
                Ok(principal) => {
                    req.extensions_mut().insert(principal);
                    ResponseFuture::inner(self.inner.call(req))
                }
                Err(rejection) => self.reject(&rejection, req.headers_mut()),
            },
            Begin::Refuse(early) => {
                ResponseFuture::refused(refuse_early(&shared.responder, early, req.headers_mut()))
            }
            Begin::Pending(lookup, hash) => {
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::lookup(lookup, hash, req, inner, self.shared.clone())
            }
        }
    }
}

impl<S, St> ApiKeyAuth<S, St> {
    /// Refuse a request, given its header map: emptied, it becomes the response's (no
    /// allocation; taking the map rather than the request avoids moving the whole request).
    #[inline]
    fn reject<ReqBody>(
        &self,
        rejection: &Rejection,
        request_headers: &mut HeaderMap,
    ) -> ResponseFuture<S, St, ReqBody>
    where
        S: Service<Request<ReqBody>>,
        St: KeyStore,
    {
        ResponseFuture::refused(refuse(&self.shared.responder, rejection, request_headers))
    }
}

/// A refusal as a response future holds it: one of the process-wide default refusals with the
/// refused request's header map, built only when polled (straight into the response type,
/// without carrying a finished response through two moves), or a rendered response.
pub(crate) enum Refused {
    Fixed(StaticRefusal, HeaderMap),
    Rendered(Response<Bytes>),
}

impl Refused {
    /// The response, with the body type of the layer's responses.
    #[inline]
    pub(crate) fn into_response<B>(self) -> Response<ResponseBody<B>> {
        match self {
            Refused::Fixed(refusal, headers) => refusal.respond_in(headers, ResponseBody::full),
            Refused::Rendered(res) => res.map(ResponseBody::full),
        }
    }
}

/// Refuse a request before any lookup, given its header map (taken: emptied, it becomes the
/// response's).
#[inline(always)]
pub(crate) fn refuse_early(
    responder: &Responder,
    early: Early,
    request_headers: &mut HeaderMap,
) -> Refused {
    match responder.fixed_refusal(early.fixed(), request_headers) {
        Some(refusal) => Refused::Fixed(refusal, std::mem::take(request_headers)),
        // Another responder: rendered as any rejection.
        None => refuse(responder, &early.rejection(), request_headers),
    }
}

/// Refuse a request, given its header map (taken: emptied, it becomes the response's).
#[inline(always)]
pub(crate) fn refuse(
    responder: &Responder,
    rejection: &Rejection,
    request_headers: &mut HeaderMap,
) -> Refused {
    let headers = std::mem::take(request_headers);
    match responder.static_refusal(rejection, &headers) {
        Some(refusal) => Refused::Fixed(refusal, headers),
        None => Refused::Rendered(responder.respond_in(rejection, headers)),
    }
}
