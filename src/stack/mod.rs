//! [`ApiKeyStack`]: [`ApiKeyAuth`](crate::ApiKeyAuth), [`OrgRateLimit`](crate::OrgRateLimit),
//! [`LastUsedRecorder`](crate::LastUsedRecorder) and a [`ScopeGuard`](crate::ScopeGuard) in one
//! service.
//!
//! Build it from an [`ApiKeyAuthLayer`] with [`rate_limit`](ApiKeyAuthLayer::rate_limit),
//! [`record_last_used`](ApiKeyAuthLayer::record_last_used) and
//! [`scope_guard`](ApiKeyAuthLayer::scope_guard), each optional:
//!
//! ```
//! use std::time::Duration;
//! use axum::{Router, routing::post};
//! use http::Method;
//! use tower_api_key::{
//!     ApiKeyAuth, LastUsedRecorder, MemoryStore, OrgRateLimit, Principal, ScopeGuard, ScopeRules,
//! };
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let store = MemoryStore::new();
//! let recorder = LastUsedRecorder::new(store.clone());
//! let flusher = recorder.spawn_flusher(Duration::from_secs(5));
//! let stack = ApiKeyAuth::new(store)
//!     .rate_limit(OrgRateLimit::new())
//!     .record_last_used(recorder)
//!     .scope_guard(ScopeGuard::rules(
//!         ScopeRules::new().route(Method::POST, "/v1/browsers", "browser_sessions:create"),
//!     ));
//! let app: Router = Router::new()
//!     .route("/v1/browsers", post(|p: Principal| async move { p.org_id().to_string() }))
//!     .layer(stack);
//! # let _ = (app, flusher);
//! # }
//! ```
//!
//! A request gets exactly what
//! `ServiceBuilder::new().layer(auth).layer(rate_limit).layer(recorder).layer(guard)` gives it:
//! the same checks in the same order (401 or 503 from authentication, then 429 or 503 from the
//! rate limit, then 403), the same `X-RateLimit-*` headers on every response after
//! authentication (403s included), and the same [`Principal`] in the request's extensions for
//! the handler. Each piece keeps its own configuration (the rate limit's backend, policy, cost
//! and failure policy; the recorder's granularity and flusher; the guard's rules and responder).
//!
//! One service instead of four saves, per request, a service clone and a response future per
//! layer, and finds the [`Principal`] without extension look-ups; the separate layers remain,
//! each useful alone and for stacks that need something between them.

mod future;

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;

pub use future::ResponseFuture;

use crate::auth::{ApiKeyAuthLayer, Authenticator, Begin};
use crate::clock::{Clock, Timestamp};
use crate::future::{Next, inner_accessors, poll_now, take_ready};
use crate::headers::LimitHeaders;
use crate::last_used::{LastUsedRecorderLayer, Recorder};
use crate::principal::Principal;
use crate::rate_limit::{
    CheckArgs, DraftSpec, LimitCheck, Limiter, MemoryRateLimiter, OrgRateLimitLayer, Outcome,
    RateLimitBackend,
};
use crate::reject::{Rejection, ResponseBody};
use crate::scope::{Guard, ScopeGuardLayer};
use crate::store::KeyStore;

/// Authentication, rate limit, last-used marks and scope checks in one service. See the
/// [module docs](self).
pub struct ApiKeyStack<S, St, B = MemoryRateLimiter> {
    inner: S,
    shared: Arc<Stages<St, B>>,
}

impl<S: Clone, St, B> Clone for ApiKeyStack<S, St, B> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, St, B> fmt::Debug for ApiKeyStack<S, St, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyStack")
            .field("inner", &self.inner)
            .field("stages", &self.shared.stages())
            .finish_non_exhaustive()
    }
}

/// The stack's configuration: authentication, then the stages run after a key is accepted, in
/// this order (each optional).
#[derive(Clone)]
pub(crate) struct Stages<St, B> {
    pub(crate) auth: Authenticator<St>,
    pub(crate) limit: Option<Limiter<B>>,
    pub(crate) recorder: Option<Recorder>,
    pub(crate) guard: Option<Arc<Guard>>,
}

impl<St, B> Stages<St, B> {
    /// The instant a stage reading `clock` sees: the authentication's `now` when the clocks
    /// are the same (the request is one instant), else its own clock's.
    #[inline]
    fn instant(&self, clock: &Clock, now: Timestamp) -> Timestamp {
        if clock.same_as(&self.auth.clock) {
            now
        } else {
            clock.now()
        }
    }

    /// The rate limit counts its refusals with the recorder's usage meter (unless it was given
    /// one of its own): in one service, metering needs no wiring.
    fn wire_meter(&mut self) {
        if let (Some(limit), Some(recorder)) = (&mut self.limit, &self.recorder) {
            limit.set_meter_if_off(recorder.meter());
        }
        if let (Some(limit), Some(observe)) = (&mut self.limit, &self.auth.observe) {
            limit.set_observe_if_off(observe);
        }
    }

    fn stages(&self) -> Vec<&'static str> {
        let mut v = vec!["api_key_auth"];
        if self.limit.is_some() {
            v.push("rate_limit");
        }
        if self.recorder.is_some() {
            v.push("record_last_used");
        }
        if self.guard.is_some() {
            v.push("scope_guard");
        }
        v
    }
}

/// Layer that adds [`ApiKeyStack`]. Cheap to clone; all clones share one configuration (and
/// the rate limit's state and the recorder's marks). Built from a configured
/// [`ApiKeyAuthLayer`] by adding stages; see the [module docs](self).
pub struct ApiKeyStackLayer<St, B = MemoryRateLimiter> {
    shared: Arc<Stages<St, B>>,
}

impl<St, B> Clone for ApiKeyStackLayer<St, B> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<St, B> fmt::Debug for ApiKeyStackLayer<St, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyStackLayer")
            .field("formats", &self.shared.auth.formats)
            .field("clock", &self.shared.auth.clock)
            .field("stages", &self.shared.stages())
            .finish_non_exhaustive()
    }
}

impl<St: KeyStore> ApiKeyAuthLayer<St> {
    /// Run this rate limit inside the same service, right after a key is accepted: the whole
    /// stack in one service ([`ApiKeyStack`]). The same decisions, headers and refusals as
    /// `layer` placed directly behind `ApiKeyAuth`, with its own configuration.
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
}

impl<St: KeyStore> ApiKeyStackLayer<St> {
    fn from_auth(auth: ApiKeyAuthLayer<St>) -> Self {
        Self {
            shared: Arc::new(Stages {
                auth: auth.into_shared(),
                limit: None,
                recorder: None,
                guard: None,
            }),
        }
    }
}

impl<St: KeyStore, B: RateLimitBackend> ApiKeyStackLayer<St, B> {
    fn map(self, f: impl FnOnce(&mut Stages<St, B>)) -> Self {
        let mut shared = Arc::unwrap_or_clone(self.shared);
        f(&mut shared);
        shared.wire_meter();
        Self {
            shared: Arc::new(shared),
        }
    }

    /// Run this rate limit after authentication (replacing one set before): as
    /// [`ApiKeyAuthLayer::rate_limit`].
    pub fn rate_limit<B2: RateLimitBackend>(
        self,
        layer: OrgRateLimitLayer<B2>,
    ) -> ApiKeyStackLayer<St, B2> {
        let s = Arc::unwrap_or_clone(self.shared);
        let mut stages = Stages {
            auth: s.auth,
            limit: Some(layer.limiter().clone()),
            recorder: s.recorder,
            guard: s.guard,
        };
        stages.wire_meter();
        ApiKeyStackLayer {
            shared: Arc::new(stages),
        }
    }

    /// Mark keys as used after the rate limit admitted the request, as `layer` does as a layer
    /// of its own (its granularity and clock). `layer` keeps the flusher: start it with
    /// [`LastUsedRecorderLayer::spawn_flusher`] on the same layer or a clone (clones share
    /// their marks).
    pub fn record_last_used<St2: KeyStore>(self, layer: LastUsedRecorderLayer<St2>) -> Self {
        let recorder = layer.recorder().clone();
        self.map(|s| s.recorder = Some(recorder))
    }

    /// Check scopes last, before the inner service is called, as `layer` does as a layer of
    /// its own: a [`ScopeRules`](crate::ScopeRules) table over a whole router, or one
    /// requirement for every request. A refusal (403) carries the rate limit's headers.
    pub fn scope_guard(self, layer: ScopeGuardLayer) -> Self {
        let guard = layer.guard().clone();
        self.map(|s| s.guard = Some(guard))
    }

    /// Block addresses sending too many invalid keys: as
    /// [`ApiKeyAuthLayer::invalid_key_limit`].
    pub fn invalid_key_limit(self, attempts: u32, per: std::time::Duration) -> Self {
        let guard = Arc::new(crate::auth::InvalidKeyGuard::new(attempts, per));
        self.map(|s| s.auth.guard = Some(guard))
    }

    /// Tell `observe` about dead keys and guessing bursts (as [`ApiKeyAuthLayer::observe`])
    /// and about the rate limit's usage levels (as
    /// [`OrgRateLimitLayer::observe`](crate::OrgRateLimitLayer::observe)), unless the rate
    /// limit was given an observer of its own.
    pub fn observe(self, observe: impl Into<crate::observe::Observe>) -> Self {
        let observe = observe.into();
        self.map(|s| s.auth.observe = Some(observe))
    }

    /// The store.
    pub fn store(&self) -> &St {
        &self.shared.auth.store
    }

    /// The authentication's and the rate limit's counters, for telemetry.
    #[allow(dead_code)] // read by `Telemetry` (feature `metrics`)
    pub(crate) fn counts(
        &self,
    ) -> (
        &Arc<crate::auth::counts::AuthCounts>,
        Option<&Arc<crate::rate_limit::LimitCounts>>,
    ) {
        (
            &self.shared.auth.counts,
            self.shared.limit.as_ref().map(|l| l.counts()),
        )
    }
}

impl<S, St, B> Layer<S> for ApiKeyStackLayer<St, B> {
    type Service = ApiKeyStack<S, St, B>;

    fn layer(&self, inner: S) -> Self::Service {
        ApiKeyStack {
            inner,
            shared: self.shared.clone(),
        }
    }
}

inner_accessors!(ApiKeyStack<S, St, B>);

impl<S, St, B, ReqBody, ResBody> Service<Request<ReqBody>> for ApiKeyStack<S, St, B>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    St: KeyStore,
    B: RateLimitBackend,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, St, ReqBody, B>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let auth = &self.shared.auth;
        let rejection = match auth.begin(&req) {
            Begin::Decided(result, hash) => {
                let now = auth.clock.now();
                match auth.decide_at(result, &hash, now, &req) {
                    Ok(principal) => {
                        let decided = stages(&self.shared, &mut req, &principal, now);
                        let next =
                            proceed(&self.shared, &mut self.inner, req, principal, now, decided);
                        return ResponseFuture::next(next);
                    }
                    Err(rejection) => rejection,
                }
            }
            Begin::Refuse(rejection) => rejection,
            Begin::Pending(lookup, hash) => {
                let inner = take_ready(&mut self.inner);
                let waiting =
                    future::Waiting::lookup(lookup, hash, req, inner, self.shared.clone());
                return ResponseFuture::waiting(waiting);
            }
        };
        let headers = std::mem::take(req.headers_mut());
        ResponseFuture::refused(auth.responder.refuse(&rejection, headers))
    }
}

/// What the stages after authentication (rate limit, last-used mark, scope check) decided for
/// an accepted request.
pub(crate) enum Decided<C> {
    /// Call the inner service; these rate-limit headers go on its response.
    Call(Option<LimitHeaders>),
    /// Refused by the rate limit or the scope guard.
    Refuse(Response<Bytes>),
    /// The rate limit's check is still pending.
    Check(C, CheckArgs, Option<DraftSpec>),
}

/// Run the stages of an accepted request, up to the call. The request is borrowed, so that it
/// moves once, into the inner service or a waiting state.
#[inline]
pub(crate) fn stages<St, B, ReqBody>(
    shared: &Stages<St, B>,
    req: &mut Request<ReqBody>,
    principal: &Principal,
    now: Timestamp,
) -> Decided<LimitCheck<B::Check>>
where
    B: RateLimitBackend,
{
    let Some(limit) = &shared.limit else {
        return after_limit(shared, req, principal, now, None);
    };
    let at = shared.instant(limit.clock(), now);
    let (mut check, args, draft) = limit.begin(principal, req, at);
    match poll_now(&mut check) {
        Poll::Ready(result) => {
            match limit.outcome(result, Some(principal), &args, draft, req.headers()) {
                Outcome::Admit(headers) => after_limit(shared, req, principal, now, headers),
                Outcome::Refuse(res) => Decided::Refuse(res),
            }
        }
        Poll::Pending => Decided::Check(check, args, draft),
    }
}

/// The stages after the rate limit: mark the key, check scopes.
#[inline]
pub(crate) fn after_limit<St, B, ReqBody>(
    shared: &Stages<St, B>,
    req: &mut Request<ReqBody>,
    principal: &Principal,
    now: Timestamp,
    headers: Option<LimitHeaders>,
) -> Decided<LimitCheck<B::Check>>
where
    B: RateLimitBackend,
{
    if let Some(recorder) = &shared.recorder {
        recorder.mark_at(principal, shared.instant(recorder.clock(), now));
    }
    if let Some(guard) = &shared.guard {
        if let Err(rejection) = guard.check(principal, req.method(), req.uri()) {
            return Decided::Refuse(refuse_after_limit(guard, &rejection, req, headers));
        }
    }
    Decided::Call(headers)
}

/// A scope refusal, with the rate limit's headers as the separate layers give it.
#[cold]
fn refuse_after_limit<ReqBody>(
    guard: &Guard,
    rejection: &Rejection,
    req: &mut Request<ReqBody>,
    headers: Option<LimitHeaders>,
) -> Response<Bytes> {
    let mut res = guard.refuse(rejection, std::mem::take(req.headers_mut()));
    if let Some(h) = &headers {
        h.write(res.headers_mut());
    }
    res
}

/// Act on the stages' decision: call the service made ready, refuse, or wait for the check.
/// `inner` is the ready service (`self.inner` in `call`, the waiting state's own later).
#[inline]
pub(crate) fn proceed<S, St, B, ReqBody>(
    shared: &Arc<Stages<St, B>>,
    inner: &mut S,
    mut req: Request<ReqBody>,
    principal: Principal,
    now: Timestamp,
    decided: Decided<LimitCheck<B::Check>>,
) -> Next<S::Future, future::Waiting<S, St, ReqBody, B>>
where
    S: Service<Request<ReqBody>> + Clone,
    St: KeyStore,
    B: RateLimitBackend,
{
    match decided {
        Decided::Call(headers) => {
            req.extensions_mut().insert(principal);
            Next::Call(inner.call(req), headers)
        }
        Decided::Refuse(res) => Next::Refuse(res),
        Decided::Check(check, args, draft) => Next::Wait(future::Waiting::check(
            check,
            args,
            draft,
            req,
            principal,
            now,
            take_ready(inner),
            shared.clone(),
        )),
    }
}
