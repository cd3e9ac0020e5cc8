//! [`ScopeGuard`]: what the caller may do.
//!
//! Put it on a route (axum `route_layer`) with [`ScopeGuard::require`], [`ScopeGuard::any_of`] or
//! [`ScopeGuard::all_of`], or in front of a whole hyper or tonic service with a
//! [`ScopeRules`] table. It reads the [`Principal`] that [`ApiKeyAuth`](crate::ApiKeyAuth)
//! inserted; without one it fails closed with `500 auth_layer_missing` and an error log naming the
//! missing layer. A key with no scopes has full access (the seeds' rule).
//!
//! Refusal: `403` with `WWW-Authenticate: Bearer error="insufficient_scope", scope="…"` and a
//! problem+json body, or gRPC status 7 `PERMISSION_DENIED`.

mod rules;

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;

pub use rules::{Requirement, RuleMatch, ScopeRules};

use crate::future::GuardFuture;
use crate::principal::Principal;
use crate::reject::{FixedRefusal, Rejection, Responder, ResponseBody, missing_principal};

/// The response future of [`ScopeGuard`].
pub type ResponseFuture<F> = GuardFuture<F>;

#[derive(Debug)]
enum Check {
    Fixed(Requirement),
    Rules(ScopeRules),
}

#[derive(Debug)]
pub(crate) struct Shared {
    check: Check,
    responder: Responder,
    /// The refusal of a fixed requirement, rendered once when the responder is the default one.
    refusal: Option<FixedRefusal>,
}

impl Shared {
    fn new(check: Check, responder: Responder) -> Self {
        let refusal = match (&check, responder.default_render()) {
            (Check::Fixed(r), Some(render)) => Some(render.prerender(&insufficient(r))),
            _ => None,
        };
        Self {
            check,
            responder,
            refusal,
        }
    }
}

fn insufficient(r: &Requirement) -> Rejection {
    Rejection::InsufficientScope {
        required: r.describe().to_owned(),
    }
}

/// Checks the caller's scopes. Build its layer with [`ScopeGuard::require`] and friends.
///
/// ```
/// use axum::{Router, routing::{delete, post}};
/// use tower_api_key::{ApiKeyAuth, MemoryStore, ScopeGuard};
///
/// let app: Router = Router::new()
///     .route("/v1/browsers", post(|| async { "created" })
///         .route_layer(ScopeGuard::require("browser_sessions:create")))
///     .route("/v1/browsers/{id}", delete(|| async { "ended" })
///         .route_layer(ScopeGuard::require("browser_sessions:delete")))
///     .layer(ApiKeyAuth::new(MemoryStore::new()));
/// ```
#[derive(Clone)]
pub struct ScopeGuard<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: fmt::Debug> fmt::Debug for ScopeGuard<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScopeGuard")
            .field("inner", &self.inner)
            .field("check", &self.shared.check)
            .finish()
    }
}

impl ScopeGuard<()> {
    /// Require one scope (a literal, or a [`Scope`](crate::Scope)).
    pub fn require(scope: impl Into<Requirement>) -> ScopeGuardLayer {
        ScopeGuardLayer::new(Check::Fixed(scope.into()))
    }

    /// Require at least one of these scopes.
    pub fn any_of<I>(scopes: I) -> ScopeGuardLayer
    where
        I: IntoIterator,
        I::Item: Into<crate::Scope>,
    {
        ScopeGuardLayer::new(Check::Fixed(Requirement::any_of(scopes)))
    }

    /// Require every one of these scopes.
    pub fn all_of<I>(scopes: I) -> ScopeGuardLayer
    where
        I: IntoIterator,
        I::Item: Into<crate::Scope>,
    {
        ScopeGuardLayer::new(Check::Fixed(Requirement::all_of(scopes)))
    }

    /// Check every request against a table of rules by method and path.
    pub fn rules(rules: ScopeRules) -> ScopeGuardLayer {
        ScopeGuardLayer::new(Check::Rules(rules))
    }
}

/// Layer that adds a [`ScopeGuard`].
#[derive(Clone, Debug)]
pub struct ScopeGuardLayer {
    shared: Arc<Shared>,
}

impl ScopeGuardLayer {
    /// The check, for [`ApiKeyAuthLayer::scope_guard`](crate::ApiKeyAuthLayer::scope_guard).
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    fn new(check: Check) -> Self {
        Self {
            shared: Arc::new(Shared::new(check, Responder::default())),
        }
    }

    /// How refusals are rendered.
    pub fn responder(self, responder: Responder) -> Self {
        let check = match Arc::try_unwrap(self.shared) {
            Ok(s) => s.check,
            Err(arc) => match &arc.check {
                Check::Fixed(r) => Check::Fixed(r.clone()),
                Check::Rules(r) => Check::Rules(r.clone()),
            },
        };
        Self {
            shared: Arc::new(Shared::new(check, responder)),
        }
    }
}

impl<S> Layer<S> for ScopeGuardLayer {
    type Service = ScopeGuard<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ScopeGuard {
            inner,
            shared: self.shared.clone(),
        }
    }
}

impl<S> ScopeGuard<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwrap the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ScopeGuard<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let shared = &*self.shared;
        let Some(principal) = req.extensions().get::<Principal>() else {
            let res = missing_principal("ScopeGuard", &shared.responder, req.headers());
            return GuardFuture::rejected(res);
        };
        match shared.check_parts(principal, req.method(), req.uri()) {
            Verdict::Pass => GuardFuture::inner(self.inner.call(req)),
            Verdict::Refuse(reason) => {
                GuardFuture::rejected(shared.refusal(reason, std::mem::take(req.headers_mut())))
            }
        }
    }
}

/// What a scope check decided.
pub(crate) enum Verdict<'a> {
    /// Let the request through.
    Pass,
    /// Refuse it for this reason.
    Refuse(Refusal<'a>),
}

/// Why a request is refused.
pub(crate) enum Refusal<'a> {
    /// No rule matches and unmatched requests are refused.
    Unmatched,
    /// The key does not meet this requirement.
    Lacks(&'a Requirement),
}

impl Shared {
    /// Decide a request by `principal` to `method` `uri` (logged when refused).
    #[inline]
    pub(crate) fn check_parts(
        &self,
        principal: &Principal,
        method: &http::Method,
        uri: &http::Uri,
    ) -> Verdict<'_> {
        let requirement = match &self.check {
            Check::Fixed(r) => r,
            Check::Rules(rules) => match rules.check(method, uri.path()) {
                RuleMatch::Requires(r) => r,
                RuleMatch::Authenticated => return Verdict::Pass,
                RuleMatch::Unmatched if rules.allows_unmatched() => return Verdict::Pass,
                RuleMatch::Unmatched => {
                    tracing::debug!(
                        key_id = %principal.key_id(), org_id = %principal.org_id(),
                        method = %method, path = uri.path(),
                        "no scope rule matches the request; refused"
                    );
                    return Verdict::Refuse(Refusal::Unmatched);
                }
            },
        };
        if requirement.is_met(principal.scopes()) {
            return Verdict::Pass;
        }
        tracing::debug!(
            key_id = %principal.key_id(), org_id = %principal.org_id(),
            required = requirement.describe(), "api key lacks scope"
        );
        Verdict::Refuse(Refusal::Lacks(requirement))
    }

    /// The refusal's response, built in the refused request's header map where it can be.
    #[cold]
    pub(crate) fn refusal(
        &self,
        reason: Refusal<'_>,
        request_headers: http::HeaderMap,
    ) -> Response<bytes::Bytes> {
        match reason {
            Refusal::Unmatched => {
                let rejection = Rejection::InsufficientScope {
                    required: String::new(),
                };
                self.responder.respond(&rejection, &request_headers)
            }
            Refusal::Lacks(r) => match &self.refusal {
                // Built in the refused request's header map: no allocation.
                Some(fixed) => fixed.respond_in(request_headers),
                None => self.responder.respond(&insufficient(r), &request_headers),
            },
        }
    }
}
