//! [`ApiKeyAuth`]: who is calling.
//!
//! For each request, in order:
//!
//! 1. a key in the URL query string (see [`key_in_query`]) → `400 api_key_in_query` (never
//!    authenticates);
//! 2. `Authorization: Bearer <key>` (scheme case-insensitive), else the optional custom header
//!    (e.g. `X-API-Key`) → `401 missing_api_key` if neither;
//! 3. format check (prefix, length, alphabet, checksum) → `401 invalid_api_key`, before hashing;
//! 4. SHA-256 → [`KeyStore::find_by_hash`] → constant-time compare of the stored hash;
//!    unknown → 401; store error or timeout → `503 auth_unavailable` (never 401), with
//!    `Retry-After` = [`unavailable_retry_after`](ApiKeyAuthLayer::unavailable_retry_after), or
//!    what is left of the cool-down when a [`CachedStore`](crate::CachedStore)'s breaker is open;
//! 5. revoked → 401; expired → 401; disabled → 401 (one uniform 401; the reason is logged);
//! 6. when the key lists allowed client networks: the client address, from the layer's
//!    [`ClientAddr`](ApiKeyAuthLayer::client_addr), outside them (or unknown) →
//!    `403 client_not_allowed`. Only such keys read the address;
//! 7. a [`Principal`] is inserted into the request's extensions and the inner service called.
//!
//! A store whose lookup is ready at once (the in-memory store, a cache hit) is decided inside
//! `call`; only a lookup that really waits takes a waiting state, bounded by the store timeout.

pub(crate) mod counts;
pub(crate) mod extract;
mod future;
mod guard;

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderName, Request, Response};
use tower_layer::Layer;
use tower_service::Service;

pub use extract::key_in_query;
pub(crate) use future::Lookup;
pub use future::ResponseFuture;

use crate::client_addr::ClientAddr;
use crate::clock::{Clock, Timestamp};
use crate::future::{inner_accessors, poll_now, take_ready};
use crate::key::{KeyFormats, KeyHash};
use crate::observe::{DeadKey, Observe};
use crate::principal::Principal;
use crate::reject::{InvalidKey, Rejection, Responder, ResponseBody};
use crate::store::{KeyRecord, KeyStore, LookupResult, StoreError};
use counts::AuthCounts;
use extract::Credential;
use guard::Attempt;
pub(crate) use guard::InvalidKeyGuard;

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
    shared: Arc<Authenticator<St>>,
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
    /// coarse clock, 3 s store timeout, problem+json rejections.
    #[allow(clippy::new_ret_no_self)]
    pub fn new<St: KeyStore>(store: St) -> ApiKeyAuthLayer<St> {
        ApiKeyAuthLayer::new(store)
    }
}

#[derive(Clone)]
pub(crate) struct Authenticator<St> {
    pub(crate) store: St,
    pub(crate) formats: KeyFormats,
    pub(crate) header: Option<HeaderName>,
    pub(crate) clock: Clock,
    pub(crate) responder: Responder,
    pub(crate) timeout: Duration,
    pub(crate) retry_after: u64,
    pub(crate) client_addr: ClientAddr,
    /// The brute-force guard, if [`invalid_key_limit`](ApiKeyAuthLayer::invalid_key_limit) set one.
    pub(crate) guard: Option<Arc<InvalidKeyGuard>>,
    /// Told about dead keys and guessing bursts.
    pub(crate) observe: Option<Observe>,
    /// Decisions and waited lookups, for telemetry.
    pub(crate) counts: Arc<AuthCounts>,
}

/// How a request's authentication starts: refused before any lookup, decided by a lookup that
/// was ready at once, or waiting for one.
pub(crate) enum Begin<L> {
    Refuse(Rejection),
    Decided(LookupResult, KeyHash),
    Pending(L, KeyHash),
}

/// Log a refusal for `reason` before any lookup; returns it.
#[inline(never)]
fn log_invalid(reason: InvalidKey) -> Rejection {
    tracing::debug!(reason = reason.as_str(), "api key refused");
    Rejection::InvalidKey(reason)
}

impl<St: KeyStore> Authenticator<St> {
    /// Steps 1–4 of the module docs up to the store's answer: the query-string check, the
    /// credential, its format, its hash, and the lookup, polled once. Shared by [`ApiKeyAuth`]
    /// and [`ApiKeyStack`](crate::ApiKeyStack).
    #[inline]
    pub(crate) fn begin<B>(&self, req: &Request<B>) -> Begin<St::Lookup> {
        if key_in_query(req.uri(), &self.formats) {
            tracing::debug!(reason = "key_in_query", "api key refused");
            return Begin::Refuse(self.counted(Rejection::KeyInQuery));
        }
        let key = match extract::credential(req.headers(), self.header.as_ref()) {
            Credential::Key(k) => k,
            Credential::Missing => {
                tracing::debug!(reason = "missing", "api key refused");
                return Begin::Refuse(self.counted(Rejection::MissingKey));
            }
            Credential::Bad => {
                let rejection = self.guarded(log_invalid(InvalidKey::BadHeader), req, None);
                return Begin::Refuse(self.counted(rejection));
            }
        };
        if let Err(e) = self.formats.check(key) {
            let rejection = self.guarded(log_invalid(InvalidKey::Malformed(e)), req, None);
            return Begin::Refuse(self.counted(rejection));
        }
        let hash = KeyHash::of(key);
        let mut lookup = self.store.find_by_hash(&hash);
        match poll_now(&mut lookup) {
            Poll::Ready(result) => Begin::Decided(result, hash),
            Poll::Pending => Begin::Pending(lookup, hash),
        }
    }
}

impl<St> Authenticator<St> {
    /// Count a refusal made before any lookup; returns it.
    fn counted(&self, rejection: Rejection) -> Rejection {
        self.counts.refused(&rejection);
        rejection
    }

    /// Turn a lookup result for `req` into a principal or a rejection, logging the decision.
    pub(crate) fn decide<B>(
        &self,
        result: LookupResult,
        hash: &KeyHash,
        req: &Request<B>,
    ) -> Result<Principal, Rejection> {
        self.decide_at(result, hash, self.clock.now(), req)
    }

    /// [`decide`](Self::decide) at `now`, read from this layer's clock by the caller.
    #[inline]
    pub(crate) fn decide_at<B>(
        &self,
        result: LookupResult,
        hash: &KeyHash,
        now: Timestamp,
        req: &Request<B>,
    ) -> Result<Principal, Rejection> {
        let decision = self.decide_uncounted(result, hash, now, req);
        match &decision {
            Ok(_) => self.counts.accepted(),
            Err(rejection) => self.counts.refused(rejection),
        }
        decision
    }

    /// A lookup that waited for the store since `started` answered `result`.
    pub(crate) fn waited(&self, started: std::time::Instant, result: &LookupResult) {
        self.counts.waited(started.elapsed(), result);
    }

    #[inline]
    fn decide_uncounted<B>(
        &self,
        result: LookupResult,
        hash: &KeyHash,
        now: Timestamp,
        req: &Request<B>,
    ) -> Result<Principal, Rejection> {
        if let Err(error) = &result {
            self.counts.lookup_error(error);
        }
        let stored = match result {
            Ok(Some(stored)) if stored.record.hash.ct_eq(hash) => stored,
            Ok(_) => {
                let rejection = self.invalid(InvalidKey::Unknown, None);
                return Err(self.guarded(rejection, req, Some(now)));
            }
            Err(StoreError::CircuitOpen(refused)) => {
                // The breaker logged when it opened; one line per refused request would flood.
                tracing::debug!("api key store breaker open; answering 503 at once");
                return Err(Rejection::StoreUnavailable {
                    retry_after: refused.retry_after_secs(),
                });
            }
            Err(error) => {
                tracing::warn!(%error, "api key store failed; answering 503");
                return Err(Rejection::StoreUnavailable {
                    retry_after: self.retry_after,
                });
            }
        };
        let record = &stored.record;
        if record.is_revoked(now) {
            return Err(self.dead(DeadKey::Revoked, record, req, now));
        }
        if record.is_expired(now) {
            return Err(self.dead(DeadKey::Expired, record, req, now));
        }
        // One null check for a typical key: the policy fields sit behind one pointer.
        if record.has_extras() {
            self.check_policy(record, req)?;
        }
        if let Some(guard) = &self.guard {
            if let Some(retry_after) = guard.blocked(|| self.client_addr.client_ip(req), now) {
                tracing::debug!(
                    key_id = %record.id, org_id = %record.org_id,
                    "api key refused: client address blocked for invalid keys"
                );
                return Err(Rejection::TooManyInvalidKeys { retry_after });
            }
        }
        tracing::trace!(key_id = %record.id, org_id = %record.org_id, "api key accepted");
        Ok(Principal::new(stored.record, stored.plan))
    }

    /// The rarely set policy of a key: disabled, allowed client networks.
    #[inline(never)]
    fn check_policy<B>(&self, record: &KeyRecord, req: &Request<B>) -> Result<(), Rejection> {
        if record.is_disabled() {
            return Err(self.invalid(InvalidKey::Disabled, Some(record)));
        }
        let allowed = record.allowed_networks();
        if allowed.is_empty() {
            return Ok(());
        }
        match self.client_addr.client_ip(req) {
            Some(ip) if allowed.iter().any(|net| net.contains(&ip)) => Ok(()),
            ip => {
                tracing::debug!(
                    key_id = %record.id, org_id = %record.org_id, client_ip = ?ip,
                    "api key refused: client address not allowed"
                );
                Err(Rejection::ClientNotAllowed)
            }
        }
    }

    /// A revoked or expired key: logged, told to the observer, counted by the guard.
    #[cold]
    #[inline(never)]
    fn dead<B>(
        &self,
        status: DeadKey,
        record: &KeyRecord,
        req: &Request<B>,
        now: Timestamp,
    ) -> Rejection {
        let reason = match status {
            DeadKey::Revoked => InvalidKey::Revoked,
            DeadKey::Expired => InvalidKey::Expired,
        };
        let rejection = self.invalid(reason, Some(record));
        if let Some(observe) = &self.observe {
            observe
                .observer()
                .dead_key_presented(&record.org_id, &record.id, status);
        }
        self.guarded(rejection, req, Some(now))
    }

    /// An invalid-key refusal, counted by the guard (if any) against the client address: the
    /// same refusal, or `429 too_many_invalid_keys` once the address is over its limit.
    #[inline]
    fn guarded<B>(
        &self,
        rejection: Rejection,
        req: &Request<B>,
        now: Option<Timestamp>,
    ) -> Rejection {
        match &self.guard {
            None => rejection,
            Some(guard) => self.guard_attempt(guard, rejection, req, now),
        }
    }

    #[cold]
    #[inline(never)]
    fn guard_attempt<B>(
        &self,
        guard: &InvalidKeyGuard,
        rejection: Rejection,
        req: &Request<B>,
        now: Option<Timestamp>,
    ) -> Rejection {
        let Some(ip) = self.client_addr.client_ip(req) else {
            return rejection;
        };
        let now = now.unwrap_or_else(|| self.clock.now());
        match guard.attempt(ip, now) {
            Attempt::Counted => rejection,
            Attempt::Blocked {
                retry_after,
                new_block,
            } => {
                if new_block {
                    let attempts = guard.limit() + 1;
                    tracing::warn!(client_ip = %ip, attempts, retry_after, "too many invalid api keys; address blocked");
                    if let Some(observe) = &self.observe {
                        observe.observer().invalid_key_burst(ip, attempts);
                    }
                }
                Rejection::TooManyInvalidKeys { retry_after }
            }
        }
    }

    fn invalid(&self, reason: InvalidKey, record: Option<&KeyRecord>) -> Rejection {
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
/// use tower_api_key::{ApiKeyAuth, KeyFormat, KeyFormats, MemoryStore};
///
/// let layer = ApiKeyAuth::new(MemoryStore::new())
///     .formats(KeyFormats::new([KeyFormat::live(), KeyFormat::test()]))
///     .header(HeaderName::from_static("x-api-key"))
///     .store_timeout(Duration::from_millis(500));
/// ```
pub struct ApiKeyAuthLayer<St> {
    shared: Arc<Authenticator<St>>,
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
    pub(crate) fn new(store: St) -> Self {
        Self {
            shared: Arc::new(Authenticator {
                store,
                formats: KeyFormats::default(),
                header: None,
                clock: Clock::default(),
                responder: Responder::default(),
                timeout: Duration::from_secs(3),
                retry_after: 5,
                client_addr: ClientAddr::default(),
                guard: None,
                observe: None,
                counts: Arc::default(),
            }),
        }
    }

    fn map(self, f: impl FnOnce(&mut Authenticator<St>)) -> Self {
        let mut shared = Arc::unwrap_or_clone(self.shared);
        f(&mut shared);
        Self {
            shared: Arc::new(shared),
        }
    }

    /// The configuration, for [`ApiKeyStackLayer`](crate::ApiKeyStackLayer).
    pub(crate) fn into_shared(self) -> Authenticator<St> {
        Arc::unwrap_or_clone(self.shared)
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

    /// How to find the client address, for keys restricted to client networks (default:
    /// [`ClientAddr::peer`], the TCP peer; behind a reverse proxy,
    /// [`ClientAddr::trusted_proxies`] — read its spoofing note). Only keys that list allowed
    /// networks read it.
    ///
    /// ```
    /// use tower_api_key::{ApiKeyAuth, MemoryStore};
    /// use tower_api_key::client_addr::ClientAddr;
    /// let layer = ApiKeyAuth::new(MemoryStore::new())
    ///     .client_addr(ClientAddr::trusted_proxies(["10.0.0.0/8".parse()?]));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn client_addr(self, client_addr: ClientAddr) -> Self {
        self.map(|s| s.client_addr = client_addr)
    }

    /// Block client addresses that send more than `attempts` invalid keys per `per`: the
    /// attempt past the limit, and every request from that address until its allowance
    /// refills one attempt (valid keys included, or guessing would go on), get
    /// `429 too_many_invalid_keys` with `Retry-After`. Invalid means malformed, unknown,
    /// revoked or expired (not a missing key, not a disabled one).
    ///
    /// Why: a 401 costs an attacker nothing, so without a limit nothing slows a key search.
    /// The client address comes from [`client_addr`](Self::client_addr) (trusted proxies'
    /// `Forwarded` / `X-Forwarded-For`); a request without a known address is not counted.
    /// Counted with the crate's GCRA (a burst of `attempts`, then an even refill), IPv6 per
    /// `/64`, in a table of at most 100,000 addresses whose idle entries are swept; an accepted
    /// key costs one atomic load while no address is blocked.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_api_key::{ApiKeyAuth, MemoryStore};
    /// let layer = ApiKeyAuth::new(MemoryStore::new())
    ///     .invalid_key_limit(20, Duration::from_secs(60));
    /// # let _ = layer;
    /// ```
    pub fn invalid_key_limit(self, attempts: u32, per: Duration) -> Self {
        let guard = Arc::new(InvalidKeyGuard::new(attempts, per));
        self.map(|s| s.guard = Some(guard))
    }

    /// Tell `observe` about revoked and expired keys presented and about addresses the
    /// [invalid-key guard](Self::invalid_key_limit) starts blocking (see
    /// [`observe`](crate::observe); with feature `events`,
    /// [`Events::signals`](crate::events::Events::signals)).
    pub fn observe(self, observe: impl Into<Observe>) -> Self {
        let observe = observe.into();
        self.map(|s| s.observe = Some(observe))
    }

    /// The store.
    pub fn store(&self) -> &St {
        &self.shared.store
    }

    /// The decision counters, for telemetry.
    #[allow(dead_code)] // read by `Telemetry` (feature `metrics`)
    pub(crate) fn counts(&self) -> &Arc<AuthCounts> {
        &self.shared.counts
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

inner_accessors!(ApiKeyAuth<S, St>);

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
        let rejection = match shared.begin(&req) {
            Begin::Decided(result, hash) => match shared.decide(result, &hash, &req) {
                Ok(principal) => {
                    req.extensions_mut().insert(principal);
                    return ResponseFuture::inner(self.inner.call(req), None);
                }
                Err(rejection) => rejection,
            },
            Begin::Refuse(rejection) => rejection,
            Begin::Pending(lookup, hash) => {
                let inner = take_ready(&mut self.inner);
                return ResponseFuture::waiting(Lookup::new(
                    lookup,
                    hash,
                    req,
                    inner,
                    self.shared.clone(),
                ));
            }
        };
        let headers = std::mem::take(req.headers_mut());
        ResponseFuture::refused(shared.responder.refuse(&rejection, headers))
    }
}
