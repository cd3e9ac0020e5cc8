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
//! # Design note: why one service
//!
//! Measured on the full stack (`BENCHMARKS.md`), composing the four layers adds 60–100 ns per
//! request to their work (against the same work composed by hand), from these items, each per
//! request:
//!
//! - hyper and axum clone the service for every request: one `Arc` here, against one per
//!   layer (two atomic operations each, on memory other cores share);
//! - one response future and one body wrapper, instead of one per layer, each moving the
//!   request (224 bytes) on the way in and the response (~150 bytes) on the way out;
//! - the [`Principal`] is in hand: no extension look-ups to find it again;
//! - one clock read, shared by every stage whose clock is the same as the authentication's (the
//!   request is one instant);
//! - in axum, a scope check by rule table here avoids `route_layer`, which boxes and clones a
//!   service and boxes a future per request (0–4 % of a hello world's throughput end to end).
//!
//! The separate layers remain, each useful alone and for stacks that need something between
//! them.

mod future;

use std::fmt;
use std::future::Future as _;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, Request, Response};
use tower_layer::Layer;
use tower_service::Service;

pub use future::ResponseFuture;

use crate::auth::{ApiKeyAuthLayer, Begin, Shared as Auth, refuse, refuse_early};
use crate::clock::{Clock, Timestamp};
use crate::key::KeyFormats;
use crate::last_used::{Core as Recorder, LastUsedRecorderLayer};
use crate::principal::Principal;
use crate::rate_limit::{
    CheckArgs, Draft, Figures, MemoryRateLimiter, OrgRateLimitLayer, Outcome, RateLimitBackend,
    Shared as RateLimit,
};
use crate::reject::{Responder, ResponseBody};
use crate::scope::{ScopeGuardLayer, Shared as Guard, Verdict};
use crate::store::KeyStore;

/// Authentication, rate limit, last-used marks and scope checks in one service. See the
/// [module docs](self).
pub struct ApiKeyStack<S, St, B = MemoryRateLimiter> {
    inner: S,
    shared: Arc<Shared<St, B>>,
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

#[derive(Clone)]
pub(crate) struct Shared<St, B> {
    pub(crate) auth: Auth<St>,
    /// The stages run after a key is accepted, in this order (each optional).
    pub(crate) limit: Option<RateLimit<B>>,
    pub(crate) recorder: Option<Recorder>,
    pub(crate) guard: Option<Arc<Guard>>,
}

impl<St, B> Shared<St, B> {
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
/// the rate limit's state and the recorder's marks). Built from an [`ApiKeyAuthLayer`]; see
/// the [module docs](self).
pub struct ApiKeyStackLayer<St, B = MemoryRateLimiter> {
    shared: Arc<Shared<St, B>>,
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

impl<St: KeyStore> ApiKeyStackLayer<St> {
    /// The stack of `auth` alone; add stages with the methods below.
    pub fn from_auth(auth: ApiKeyAuthLayer<St>) -> Self {
        Self {
            shared: Arc::new(Shared {
                auth: auth.into_shared(),
                limit: None,
                recorder: None,
                guard: None,
            }),
        }
    }
}

impl<St: KeyStore, B: RateLimitBackend> ApiKeyStackLayer<St, B> {
    fn map(self, f: impl FnOnce(&mut Shared<St, B>)) -> Self {
        let mut shared = Arc::unwrap_or_clone(self.shared);
        f(&mut shared);
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
        ApiKeyStackLayer {
            shared: Arc::new(Shared {
                auth: s.auth,
                limit: Some(layer.shared().clone()),
                recorder: s.recorder,
                guard: s.guard,
            }),
        }
    }

    /// Mark keys as used after the rate limit admitted the request, as `layer` does as a layer
    /// of its own (its granularity and clock). `layer` keeps the flusher: start it with
    /// [`LastUsedRecorderLayer::spawn_flusher`] on the same layer or a clone (clones share
    /// their marks).
    pub fn record_last_used<St2: KeyStore>(self, layer: LastUsedRecorderLayer<St2>) -> Self {
        let core = layer.core().clone();
        self.map(|s| s.recorder = Some(core))
    }

    /// Check scopes last, before the inner service is called, as `layer` does as a layer of
    /// its own: a [`ScopeRules`](crate::ScopeRules) table over a whole router, or one
    /// requirement for every request. A refusal (403) carries the rate limit's headers.
    pub fn scope_guard(self, layer: ScopeGuardLayer) -> Self {
        let guard = layer.shared().clone();
        self.map(|s| s.guard = Some(guard))
    }

    /// As [`ApiKeyAuthLayer::formats`].
    pub fn formats(self, formats: impl Into<KeyFormats>) -> Self {
        let formats = formats.into();
        self.map(|s| s.auth.formats = formats)
    }

    /// As [`ApiKeyAuthLayer::header`].
    pub fn header(self, name: HeaderName) -> Self {
        self.map(|s| s.auth.header = Some(name))
    }

    /// As [`ApiKeyAuthLayer::clock`]. Stages whose clock is the same read the request's
    /// instant once.
    pub fn clock(self, clock: Clock) -> Self {
        self.map(|s| s.auth.clock = clock)
    }

    /// As [`ApiKeyAuthLayer::responder`] (the authentication's refusals; the rate limit and
    /// the guard keep their own).
    pub fn responder(self, responder: Responder) -> Self {
        self.map(|s| s.auth.responder = responder)
    }

    /// As [`ApiKeyAuthLayer::store_timeout`].
    pub fn store_timeout(self, timeout: Duration) -> Self {
        self.map(|s| s.auth.timeout = timeout)
    }

    /// As [`ApiKeyAuthLayer::unavailable_retry_after`].
    pub fn unavailable_retry_after(self, secs: u64) -> Self {
        self.map(|s| s.auth.retry_after = secs.max(1))
    }

    /// The store.
    pub fn store(&self) -> &St {
        &self.shared.auth.store
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

impl<S, St, B> ApiKeyStack<S, St, B> {
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
        match auth.begin(&req) {
            Begin::Decided(result, hash) => {
                let now = auth.clock.now();
                match auth.decide_at(result, &hash, now) {
                    Ok(principal) => match stages(&self.shared, &mut req, &principal, now) {
                        Stages::Call(figures) => {
                            req.extensions_mut().insert(principal);
                            ResponseFuture::inner(self.inner.call(req), figures)
                        }
                        Stages::Refuse(res) => ResponseFuture::rejected(res),
                        Stages::Check(check, args, draft) => {
                            // The service made ready is the one called: taken out, a clone
                            // left in its place.
                            let clone = self.inner.clone();
                            let inner = std::mem::replace(&mut self.inner, clone);
                            let checked = future::Checked {
                                req,
                                principal,
                                now,
                                inner,
                                shared: self.shared.clone(),
                                args,
                                draft,
                            };
                            ResponseFuture::checking(check, checked)
                        }
                    },
                    Err(rejection) => ResponseFuture::refused(refuse(
                        &auth.responder,
                        &rejection,
                        req.headers_mut(),
                    )),
                }
            }
            Begin::Refuse(early) => {
                ResponseFuture::refused(refuse_early(&auth.responder, early, req.headers_mut()))
            }
            Begin::Pending(lookup, hash) => {
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::lookup(lookup, hash, req, inner, self.shared.clone())
            }
        }
    }
}

/// What the stages after authentication (rate limit, last-used mark, scope check) decided for
/// an accepted request.
pub(crate) enum Stages<C> {
    /// Call the inner service; these rate-limit figures go on its response.
    Call(Option<Figures>),
    /// Refused by the rate limit or the scope guard.
    Refuse(Response<Bytes>),
    /// The rate limit's check is still pending.
    Check(C, CheckArgs, Option<Draft>),
}

/// Run the stages of an accepted request, up to the call. The request is borrowed: it moves
/// once, in the caller, into the inner service or a waiting state. (Passed by value through
/// the stages, each inlined step copied all 224 bytes of it: four copies per accepted request,
/// each a `memcpy` call, seen in the disassembly and in callgrind's call counts.)
#[inline(always)]
pub(crate) fn stages<St, B, ReqBody>(
    shared: &Shared<St, B>,
    req: &mut Request<ReqBody>,
    principal: &Principal,
    now: Timestamp,
) -> Stages<B::Check>
where
    B: RateLimitBackend,
{
    let Some(limit) = &shared.limit else {
        return after_limit(shared, req, principal, now, None);
    };
    let at = shared.instant(limit.clock(), now);
    let (mut check, args, draft) = limit.begin(principal, req, at);
    // A check that is ready at once (the in-memory backend) is decided here. Checks are
    // `Unpin`, so polling one in place and moving it afterwards is sound.
    let mut noop = Context::from_waker(std::task::Waker::noop());
    match std::pin::Pin::new(&mut check).poll(&mut noop) {
        Poll::Ready(result) => {
            match limit.outcome(result, Some(principal), &args, draft, req.headers()) {
                Outcome::Admit(figures) => after_limit(shared, req, principal, now, figures),
                Outcome::Refuse(res) => Stages::Refuse(res),
            }
        }
        Poll::Pending => Stages::Check(check, args, draft),
    }
}

/// The stages after the rate limit: mark the key, check scopes.
#[inline(always)]
pub(crate) fn after_limit<St, B, ReqBody>(
    shared: &Shared<St, B>,
    req: &mut Request<ReqBody>,
    principal: &Principal,
    now: Timestamp,
    figures: Option<Figures>,
) -> Stages<B::Check>
where
    B: RateLimitBackend,
{
    if let Some(recorder) = &shared.recorder {
        recorder.mark_at(principal, shared.instant(recorder.clock(), now));
    }
    if let Some(guard) = &shared.guard {
        if let Verdict::Refuse(reason) = guard.check_parts(principal, req.method(), req.uri()) {
            let mut res = guard.refusal(reason, std::mem::take(req.headers_mut()));
            if let Some(f) = &figures {
                f.write(res.headers_mut());
            }
            return Stages::Refuse(res);
        }
    }
    Stages::Call(figures)
}

/// Act on the stages' decision for a request taken out of a waiting state (a pending lookup or
/// check): the slow paths, where the moves of the request do not matter. `ApiKeyStack::call`
/// does the same inline.
pub(crate) fn proceed<S, St, B, ReqBody>(
    shared: Arc<Shared<St, B>>,
    mut inner: S,
    mut req: Request<ReqBody>,
    principal: Principal,
    now: Timestamp,
    stages: Stages<B::Check>,
) -> ResponseFuture<S, St, ReqBody, B>
where
    S: Service<Request<ReqBody>> + Clone,
    St: KeyStore,
    B: RateLimitBackend,
{
    match stages {
        Stages::Call(figures) => {
            req.extensions_mut().insert(principal);
            ResponseFuture::inner(inner.call(req), figures)
        }
        Stages::Refuse(res) => ResponseFuture::rejected(res),
        Stages::Check(check, args, draft) => ResponseFuture::checking(
            check,
            future::Checked {
                req,
                principal,
                now,
                inner,
                shared,
                args,
                draft,
            },
        ),
    }
}
