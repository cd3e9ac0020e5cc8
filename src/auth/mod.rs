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

use http::{HeaderMap, HeaderName, Request, Response};
use tower_layer::Layer;
use tower_service::Service;

#[cfg(test)]
pub(crate) use extract::all_graphic;
pub use extract::parse_bearer;
pub use future::ResponseFuture;
pub(crate) use future::polled_after_completion;

use crate::clock::Clock;
use crate::key::{KeyFormats, KeyHash};
use crate::principal::Principal;
use crate::reject::{InvalidKey, Rejection, Responder, ResponseBody};
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

pub(crate) struct Shared<St> {
    pub(crate) store: St,
    pub(crate) formats: KeyFormats,
    pub(crate) header: Option<HeaderName>,
    pub(crate) clock: Clock,
    pub(crate) responder: Responder,
    pub(crate) timeout: Duration,
    pub(crate) retry_after: u64,
}

impl<St> Shared<St> {
    /// Turn a lookup result into a principal or a rejection, logging the decision.
    pub(crate) fn decide(
        &self,
        result: LookupResult,
        hash: &KeyHash,
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
        let now = self.clock.now();
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
        let mut shared = match Arc::try_unwrap(self.shared) {
            Ok(s) => s,
            Err(arc) => Shared {
                store: arc.store.clone(),
                formats: arc.formats.clone(),
                header: arc.header.clone(),
                clock: arc.clock.clone(),
                responder: arc.responder.clone(),
                timeout: arc.timeout,
                retry_after: arc.retry_after,
            },
        };
        f(&mut shared);
        Self {
            shared: Arc::new(shared),
        }
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
        if extract::key_in_query(req.uri(), &shared.formats) {
            tracing::debug!(reason = "key_in_query", "api key refused");
            return self.reject(&Rejection::KeyInQuery, std::mem::take(req.headers_mut()));
        }
        let key = match extract::credential(req.headers(), shared.header.as_ref()) {
            Credential::Key(k) => k,
            Credential::Missing => {
                tracing::debug!(reason = "missing", "api key refused");
                return self.reject(&Rejection::MissingKey, std::mem::take(req.headers_mut()));
            }
            Credential::Bad => {
                let rejection = shared.invalid(InvalidKey::BadHeader, None);
                return self.reject(&rejection, std::mem::take(req.headers_mut()));
            }
        };
        if let Err(e) = shared.formats.check(key) {
            let rejection = shared.invalid(InvalidKey::Malformed(e), None);
            return self.reject(&rejection, std::mem::take(req.headers_mut()));
        }
        let hash = KeyHash::of(key);
        let mut lookup = shared.store.find_by_hash(&hash);

        // Fast path: a lookup that is ready at once is decided here. Lookups are `Unpin`, so
        // polling one in place and moving it afterwards is sound.
        let mut noop = Context::from_waker(Waker::noop());
        match Pin::new(&mut lookup).poll(&mut noop) {
            Poll::Ready(result) => match shared.decide(result, &hash) {
                Ok(principal) => {
                    req.extensions_mut().insert(principal);
                    ResponseFuture::inner(self.inner.call(req))
                }
                Err(rejection) => self.reject(&rejection, std::mem::take(req.headers_mut())),
            },
            Poll::Pending => {
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
        request_headers: HeaderMap,
    ) -> ResponseFuture<S, St, ReqBody>
    where
        S: Service<Request<ReqBody>>,
        St: KeyStore,
    {
        ResponseFuture::rejected(self.shared.responder.respond_in(rejection, request_headers))
    }
}
