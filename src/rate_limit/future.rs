//! The response future of [`OrgRateLimit`](super::OrgRateLimit).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::{CheckArgs, Draft, Figures, Outcome, RateLimitBackend, Shared};
use crate::auth::polled_after_completion;
use crate::principal::Principal;
use crate::reject::ResponseBody;

pin_project! {
    /// Response future of [`OrgRateLimit`](super::OrgRateLimit): a pending backend check, the
    /// inner service's future (whose response gets the rate-limit headers), or a refusal.
    /// Never boxed.
    pub struct ResponseFuture<S, B, ReqBody>
    where
        S: Service<Request<ReqBody>>,
        B: RateLimitBackend,
    {
        #[pin]
        state: State<S, B, ReqBody>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B, ReqBody>
    where
        S: Service<Request<ReqBody>>,
        B: RateLimitBackend,
    {
        Checking {
            check: B::Check,
            // Boxed: only remote backends get here, and the round trip dwarfs the allocation,
            // while an unboxed request would make every response future larger.
            pending: Option<Box<Pending<S, B, ReqBody>>>,
        },
        Inner {
            #[pin]
            fut: S::Future,
            figures: Option<Figures>,
        },
        Rejected {
            res: Option<Response<Bytes>>,
        },
    }
}

struct Pending<S, B, ReqBody> {
    req: Request<ReqBody>,
    inner: S,
    shared: Arc<Shared<B>>,
    args: CheckArgs,
    draft: Option<Draft>,
}

impl<S, B, ReqBody> ResponseFuture<S, B, ReqBody>
where
    S: Service<Request<ReqBody>>,
    B: RateLimitBackend,
{
    pub(super) fn inner(fut: S::Future, figures: Option<Figures>) -> Self {
        Self {
            state: State::Inner { fut, figures },
        }
    }

    pub(super) fn rejected(res: Response<Bytes>) -> Self {
        Self {
            state: State::Rejected { res: Some(res) },
        }
    }

    pub(super) fn checking(
        check: B::Check,
        req: Request<ReqBody>,
        inner: S,
        shared: Arc<Shared<B>>,
        args: CheckArgs,
        draft: Option<Draft>,
    ) -> Self {
        Self {
            state: State::Checking {
                check,
                pending: Some(Box::new(Pending {
                    req,
                    inner,
                    shared,
                    args,
                    draft,
                })),
            },
        }
    }
}

impl<S, B, ReqBody, ResBody> Future for ResponseFuture<S, B, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    B: RateLimitBackend,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

    /// The hot states are handled inline; a check still pending (a remote backend) is driven
    /// by `poll_checking`, kept out of line so that this function stays small enough to inline
    /// into the enclosing stack.
    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Inner { fut, figures } => {
                    let mut res = match fut.poll(cx) {
                        Poll::Ready(Ok(res)) => res,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => return Poll::Pending,
                    };
                    if let Some(f) = figures {
                        f.write(res.headers_mut());
                    }
                    return Poll::Ready(Ok(res.map(ResponseBody::inner)));
                }
                StateProj::Rejected { res } => {
                    return Poll::Ready(Ok(match res.take() {
                        Some(res) => res.map(ResponseBody::full),
                        None => polled_after_completion(),
                    }));
                }
                StateProj::Checking { .. } => {
                    if let Some(done) = Self::poll_checking(state.as_mut(), cx) {
                        return done;
                    }
                }
            }
        }
    }
}

impl<S, B, ReqBody, ResBody> ResponseFuture<S, B, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    B: RateLimitBackend,
{
    /// Drive a pending check. `None`: the state moved on (to the inner future or a refusal);
    /// poll again.
    #[inline(never)]
    #[allow(clippy::type_complexity)]
    fn poll_checking(
        mut state: Pin<&mut State<S, B, ReqBody>>,
        cx: &mut Context<'_>,
    ) -> Option<Poll<Result<Response<ResponseBody<ResBody>>, S::Error>>> {
        let StateProj::Checking { check, pending } = state.as_mut().project() else {
            return None;
        };
        let result = match Pin::new(check).poll(cx) {
            Poll::Ready(r) => r,
            Poll::Pending => return Some(Poll::Pending),
        };
        let Some(pending) = pending.take() else {
            return Some(Poll::Ready(Ok(polled_after_completion())));
        };
        let Pending {
            req,
            mut inner,
            shared,
            args,
            draft,
        } = *pending;
        let principal = req.extensions().get::<Principal>();
        match shared.outcome(result, principal, &args, draft, req.headers()) {
            Outcome::Admit(figures) => {
                let fut = inner.call(req);
                state.set(State::Inner { fut, figures });
            }
            Outcome::Refuse(res) => state.set(State::Rejected { res: Some(res) }),
        }
        None
    }
}
