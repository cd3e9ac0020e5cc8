//! [`ScopeGuard`]: what the caller may do.
//!
//! Put it on a route (axum `route_layer`) with [`ScopeGuard::require`], [`ScopeGuard::any_of`] or
//! [`ScopeGuard::all_of`], or in front of a whole hyper or tonic service with a
//! [`ScopeRules`] table. It reads the [`Principal`] that [`ApiKeyAuth`](crate::ApiKeyAuth)
//! inserted; without one it fails closed with `500 auth_layer_missing` and an error log naming the
//! missing layer. A key with no scopes has full access.
//!
//! Refusal: `403` with `WWW-Authenticate: Bearer error="insufficient_scope", scope="…"` and a
//! problem+json body, or gRPC status 7 `PERMISSION_DENIED`. A [`ScopeRules`] table that has no
//! rule for the request's route refuses it with `403 no_route_rule` (fail closed), unless the
//! table lets unmatched routes through.
//!
//! With usage metering on, a refusal moves the request's count from `accepted` (made when
//! [`LastUsedRecorder`](crate::LastUsedRecorder) marked it) to `scope`.

mod rules;

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, Uri};
use tower_layer::Layer;
use tower_service::Service;

pub use rules::{Requirement, RuleMatch, ScopeRules};

use crate::future::inner_accessors;
use crate::principal::Principal;
use crate::reject::{Rejection, Responder, ResponseBody, missing_principal};
use crate::store::UsageOutcome;

/// The response future of [`ScopeGuard`].
pub type ResponseFuture<F> = crate::future::ResponseFuture<F>;

#[derive(Debug)]
enum Check {
    Fixed(Requirement),
    Rules(ScopeRules),
}

/// A scope guard's configuration: what it checks and how it refuses.
#[derive(Debug)]
pub(crate) struct Guard {
    check: Check,
    responder: Responder,
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
    shared: Arc<Guard>,
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
    shared: Arc<Guard>,
}

impl ScopeGuardLayer {
    /// The check, for [`ApiKeyAuthLayer::scope_guard`](crate::ApiKeyAuthLayer::scope_guard).
    pub(crate) fn guard(&self) -> &Arc<Guard> {
        &self.shared
    }

    fn new(check: Check) -> Self {
        Self {
            shared: Arc::new(Guard {
                check,
                responder: Responder::default(),
            }),
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
            shared: Arc::new(Guard { check, responder }),
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

inner_accessors!(ScopeGuard<S>);

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
        let guard = &*self.shared;
        let Some(principal) = req.extensions().get::<Principal>() else {
            let headers = std::mem::take(req.headers_mut());
            return ResponseFuture::refused(missing_principal(
                "ScopeGuard",
                &guard.responder,
                headers,
            ));
        };
        match guard.check(principal, req.method(), req.uri()) {
            Ok(()) => ResponseFuture::inner(self.inner.call(req), None),
            Err(rejection) => {
                ResponseFuture::refused(guard.refuse(&rejection, std::mem::take(req.headers_mut())))
            }
        }
    }
}

impl Guard {
    /// Decide a request by `principal` to `method` `uri`; a refusal is logged.
    #[inline]
    pub(crate) fn check(
        &self,
        principal: &Principal,
        method: &Method,
        uri: &Uri,
    ) -> Result<(), Rejection> {
        let requirement = match &self.check {
            Check::Fixed(r) => r,
            Check::Rules(rules) => match rules.check(method, uri.path()) {
                RuleMatch::Requires(r) => r,
                RuleMatch::Authenticated => return Ok(()),
                RuleMatch::Unmatched if rules.allows_unmatched() => return Ok(()),
                RuleMatch::Unmatched => return Err(no_route_rule(principal, method, uri)),
            },
        };
        if requirement.is_met(principal.scopes()) {
            return Ok(());
        }
        Err(lacks(principal, requirement))
    }

    /// The response refusing a request, built in its header map.
    #[cold]
    pub(crate) fn refuse(
        &self,
        rejection: &Rejection,
        request_headers: HeaderMap,
    ) -> Response<Bytes> {
        self.responder.refuse(rejection, request_headers)
    }
}

#[cold]
fn no_route_rule(principal: &Principal, method: &Method, uri: &Uri) -> Rejection {
    principal.refused_after_accept(UsageOutcome::Scope);
    tracing::debug!(
        key_id = %principal.key_id(), org_id = %principal.org_id(),
        method = %method, path = uri.path(),
        "no scope rule matches the request; refused"
    );
    Rejection::NoRouteRule
}

#[cold]
fn lacks(principal: &Principal, requirement: &Requirement) -> Rejection {
    principal.refused_after_accept(UsageOutcome::Scope);
    tracing::debug!(
        key_id = %principal.key_id(), org_id = %principal.org_id(),
        required = requirement.describe(), "api key lacks scope"
    );
    Rejection::InsufficientScope {
        required: requirement.describe().to_owned(),
    }
}
