//! The response future of [`OrgRateLimit`](super::OrgRateLimit), and its waiting state.

use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::Request;
use tower_service::Service;

use super::{CheckArgs, DraftSpec, LimitCheck, Limiter, Outcome, RateLimitBackend};
use std::future::Future as _;

use crate::future::{Next, Wait, already_decided};
use crate::principal::Principal;

/// Response future of [`OrgRateLimit`](super::OrgRateLimit).
pub type ResponseFuture<S, B, ReqBody> =
    crate::future::ResponseFuture<<S as Service<Request<ReqBody>>>::Future, Check<S, B, ReqBody>>;

/// A request waiting for a remote rate-limit backend's answer.
pub struct Check<S, B: RateLimitBackend, ReqBody> {
    check: LimitCheck<B::Check>,
    limiter: Arc<Limiter<B>>,
    args: CheckArgs,
    draft: Option<DraftSpec>,
    /// The request and the inner service made ready for it; taken once the check answers.
    call: Option<(Request<ReqBody>, S)>,
}

impl<S, B: RateLimitBackend, ReqBody> Check<S, B, ReqBody> {
    pub(crate) fn new(
        check: LimitCheck<B::Check>,
        req: Request<ReqBody>,
        inner: S,
        limiter: Arc<Limiter<B>>,
        args: CheckArgs,
        draft: Option<DraftSpec>,
    ) -> Self {
        Self {
            check,
            limiter,
            args,
            draft,
            call: Some((req, inner)),
        }
    }
}

impl<S, B, ReqBody> Wait<S::Future> for Check<S, B, ReqBody>
where
    S: Service<Request<ReqBody>>,
    B: RateLimitBackend,
{
    fn poll_wait(&mut self, cx: &mut Context<'_>) -> Poll<Next<S::Future, Self>> {
        let result = ready!(std::pin::Pin::new(&mut self.check).poll(cx));
        let Some((req, mut inner)) = self.call.take() else {
            return Poll::Ready(Next::Refuse(already_decided()));
        };
        let principal = req.extensions().get::<Principal>();
        let outcome =
            self.limiter
                .outcome(result, principal, &self.args, self.draft, req.headers());
        Poll::Ready(match outcome {
            Outcome::Admit(headers) => Next::Call(inner.call(req), headers),
            Outcome::Refuse(res) => Next::Refuse(res),
        })
    }
}
