//! The response future of [`ApiKeyStack`](super::ApiKeyStack).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::{Shared, Stages, after_limit, proceed, stages};
use crate::auth::{LookupWait, Refused, polled_after_completion, refuse};
use crate::clock::Timestamp;
use crate::key::KeyHash;
use crate::principal::Principal;
use crate::rate_limit::{CheckArgs, Draft, Figures, MemoryRateLimiter, Outcome, RateLimitBackend};
use crate::reject::ResponseBody;
use crate::store::KeyStore;

pin_project! {
    /// Response future of [`ApiKeyStack`](super::ApiKeyStack): a pending store lookup, a
    /// pending rate-limit check, the inner service's future (whose response gets the rate
    /// limit's headers), or a refusal. Never boxed.
    pub struct ResponseFuture<S, St, ReqBody, B = MemoryRateLimiter>
    where
        S: Service<Request<ReqBody>>,
        St: KeyStore,
        B: RateLimitBackend,
    {
        #[pin]
        state: State<S, St, ReqBody, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, St, ReqBody, B>
    where
        S: Service<Request<ReqBody>>,
        St: KeyStore,
        B: RateLimitBackend,
    {
        // Boxed: only lookups that are really pending (remote stores) get here, where the
        // round trip dwarfs the allocation, while inline it would make every response future
        // carry a whole request, moved at each step of an accepted request.
        Lookup {
            waiting: Box<Waiting<S, St, ReqBody, B>>,
        },
        // Boxed for the same reason: only remote rate-limit backends wait.
        Checking {
            checking: Box<Checking<S, St, ReqBody, B>>,
        },
        Inner {
            #[pin]
            fut: S::Future,
            figures: Option<Figures>,
        },
        // A refusal; the process-wide default ones are built when polled, in the refused
        // request's header map (no allocation, and one move less than a finished response).
        Refused {
            refused: Option<Refused>,
        },
    }
}

struct Waiting<S, St: KeyStore, ReqBody, B> {
    wait: LookupWait<St::Lookup>,
    pending: Option<Pending<S, St, ReqBody, B>>,
}

struct Pending<S, St, ReqBody, B> {
    hash: KeyHash,
    req: Request<ReqBody>,
    inner: S,
    shared: Arc<Shared<St, B>>,
}

struct Checking<S, St, ReqBody, B: RateLimitBackend> {
    check: B::Check,
    checked: Option<Checked<S, St, ReqBody, B>>,
}

/// An accepted request waiting for the rate limit's backend.
pub(crate) struct Checked<S, St, ReqBody, B> {
    pub(crate) req: Request<ReqBody>,
    pub(crate) principal: Principal,
    pub(crate) now: Timestamp,
    pub(crate) inner: S,
    pub(crate) shared: Arc<Shared<St, B>>,
    pub(crate) args: CheckArgs,
    pub(crate) draft: Option<Draft>,
}

impl<S, St, ReqBody, B> ResponseFuture<S, St, ReqBody, B>
where
    S: Service<Request<ReqBody>>,
    St: KeyStore,
    B: RateLimitBackend,
{
    pub(super) fn inner(fut: S::Future, figures: Option<Figures>) -> Self {
        Self {
            state: State::Inner { fut, figures },
        }
    }

    pub(super) fn rejected(res: Response<Bytes>) -> Self {
        Self::refused(Refused::Rendered(res))
    }

    pub(super) fn refused(refused: Refused) -> Self {
        Self {
            state: State::Refused {
                refused: Some(refused),
            },
        }
    }

    pub(super) fn lookup(
        lookup: St::Lookup,
        hash: KeyHash,
        req: Request<ReqBody>,
        inner: S,
        shared: Arc<Shared<St, B>>,
    ) -> Self {
        Self {
            state: State::Lookup {
                waiting: Box::new(Waiting {
                    wait: LookupWait::new(lookup),
                    pending: Some(Pending {
                        hash,
                        req,
                        inner,
                        shared,
                    }),
                }),
            },
        }
    }

    pub(super) fn checking(check: B::Check, checked: Checked<S, St, ReqBody, B>) -> Self {
        Self {
            state: State::Checking {
                checking: Box::new(Checking {
                    check,
                    checked: Some(checked),
                }),
            },
        }
    }
}

impl<S, St, ReqBody, ResBody, B> Future for ResponseFuture<S, St, ReqBody, B>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    St: KeyStore,
    B: RateLimitBackend,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

    /// The hot states (the inner service's future, a refusal) are handled inline; a lookup or
    /// check still pending is driven out of line, so that this function stays small enough to
    /// inline into the enclosing stack.
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
                StateProj::Refused { refused } => {
                    return Poll::Ready(Ok(match refused.take() {
                        Some(r) => r.into_response(),
                        None => polled_after_completion(),
                    }));
                }
                StateProj::Lookup { .. } => {
                    if let Some(done) = Self::poll_lookup(state.as_mut(), cx) {
                        return done;
                    }
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

impl<S, St, ReqBody, ResBody, B> ResponseFuture<S, St, ReqBody, B>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    St: KeyStore,
    B: RateLimitBackend,
{
    /// Drive a pending lookup. `None`: the state moved on (to a check, the inner future or a
    /// refusal); poll again.
    #[inline(never)]
    #[allow(clippy::type_complexity)]
    fn poll_lookup(
        mut state: Pin<&mut State<S, St, ReqBody, B>>,
        cx: &mut Context<'_>,
    ) -> Option<Poll<Result<Response<ResponseBody<ResBody>>, S::Error>>> {
        let StateProj::Lookup { waiting } = state.as_mut().project() else {
            return None;
        };
        let Waiting { wait, pending } = &mut **waiting;
        let timeout = pending
            .as_ref()
            .map_or(Duration::ZERO, |p| p.shared.auth.timeout);
        let result = match wait.poll(cx, timeout) {
            Poll::Ready(r) => r,
            Poll::Pending => return Some(Poll::Pending),
        };
        // `pending` is `Some` until this point: it is taken only here, and the state changes
        // below before the next poll.
        let Some(Pending {
            hash,
            mut req,
            inner,
            shared,
        }) = pending.take()
        else {
            return Some(Poll::Ready(Ok(polled_after_completion())));
        };
        let now = shared.auth.clock.now();
        let next = match shared.auth.decide_at(result, &hash, now) {
            Ok(principal) => {
                let decided = stages(&shared, &mut req, &principal, now);
                proceed(shared, inner, req, principal, now, decided)
            }
            Err(rejection) => Self::refused(refuse(
                &shared.auth.responder,
                &rejection,
                req.headers_mut(),
            )),
        };
        state.set(next.state);
        None
    }

    /// Drive a pending rate-limit check. `None`: the state moved on; poll again.
    #[inline(never)]
    #[allow(clippy::type_complexity)]
    fn poll_checking(
        mut state: Pin<&mut State<S, St, ReqBody, B>>,
        cx: &mut Context<'_>,
    ) -> Option<Poll<Result<Response<ResponseBody<ResBody>>, S::Error>>> {
        let StateProj::Checking { checking } = state.as_mut().project() else {
            return None;
        };
        let Checking { check, checked } = &mut **checking;
        let result = match Pin::new(check).poll(cx) {
            Poll::Ready(r) => r,
            Poll::Pending => return Some(Poll::Pending),
        };
        let Some(Checked {
            mut req,
            principal,
            now,
            inner,
            shared,
            args,
            draft,
        }) = checked.take()
        else {
            return Some(Poll::Ready(Ok(polled_after_completion())));
        };
        let decided = match shared.limit.as_ref() {
            Some(limit) => {
                match limit.outcome(result, Some(&principal), &args, draft, req.headers()) {
                    Outcome::Admit(figures) => {
                        after_limit(&shared, &mut req, &principal, now, figures)
                    }
                    Outcome::Refuse(res) => Stages::Refuse(res),
                }
            }
            // Only a configured rate limit starts a check.
            None => after_limit(&shared, &mut req, &principal, now, None),
        };
        let next = proceed(shared, inner, req, principal, now, decided);
        state.set(next.state);
        None
    }
}
