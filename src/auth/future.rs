//! The response future of [`ApiKeyAuth`](super::ApiKeyAuth).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower_service::Service;

use super::{Refused, Shared, refuse};
use crate::key::KeyHash;
use crate::reject::ResponseBody;
use crate::store::{KeyStore, LookupResult, StoreError};

pin_project! {
    /// Response future of [`ApiKeyAuth`](super::ApiKeyAuth): a pending store lookup, the inner
    /// service's future, or a rejection. Never boxed.
    pub struct ResponseFuture<S, St, ReqBody>
    where
        S: Service<Request<ReqBody>>,
        St: KeyStore,
    {
        #[pin]
        state: State<S, St, ReqBody>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, St, ReqBody>
    where
        S: Service<Request<ReqBody>>,
        St: KeyStore,
    {
        // Boxed: only lookups that are really pending (remote stores) get here, where the
        // round trip dwarfs the allocation, while inline it would make every response future
        // carry a whole request, moved at each step of an accepted request.
        Lookup {
            waiting: Box<Waiting<S, St, ReqBody>>,
        },
        Inner {
            #[pin]
            fut: S::Future,
        },
        // A refusal; the process-wide default ones are built when polled, in the refused
        // request's header map (no allocation, and one move less than a finished response).
        Refused {
            refused: Option<Refused>,
        },
    }
}

struct Waiting<S, St: KeyStore, ReqBody> {
    wait: LookupWait<St::Lookup>,
    pending: Option<Pending<S, St, ReqBody>>,
}
/// A store lookup that is waiting, with a timeout armed the first time it waits: only lookups
/// that really wait (remote stores) pay for a timer, and only inside a tokio runtime (outside
/// one, `sleep` would panic). Shared by `ApiKeyAuth` and `ApiKeyStack`.
pub(crate) struct LookupWait<L> {
    lookup: L,
    deadline: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl<L: Future<Output = LookupResult> + Unpin> LookupWait<L> {
    pub(crate) fn new(lookup: L) -> Self {
        Self {
            lookup,
            deadline: None,
            armed: false,
        }
    }

    /// The lookup's result, or `StoreError::Timeout` once `timeout` has passed since it first
    /// waited.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>, timeout: Duration) -> Poll<LookupResult> {
        if let Poll::Ready(r) = Pin::new(&mut self.lookup).poll(cx) {
            return Poll::Ready(r);
        }
        if !self.armed {
            self.armed = true;
            if tokio::runtime::Handle::try_current().is_ok() {
                self.deadline = Some(Box::pin(tokio::time::sleep(timeout)));
            }
        }
        match self.deadline.as_mut() {
            Some(d) => d.as_mut().poll(cx).map(|()| Err(StoreError::Timeout)),
            None => Poll::Pending,
        }
    }
}

struct Pending<S, St, ReqBody> {
    hash: KeyHash,
    req: Request<ReqBody>,
    inner: S,
    shared: Arc<Shared<St>>,
}

impl<S, St, ReqBody> ResponseFuture<S, St, ReqBody>
where
    S: Service<Request<ReqBody>>,
    St: KeyStore,
{
    pub(super) fn inner(fut: S::Future) -> Self {
        Self {
            state: State::Inner { fut },
        }
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
        shared: Arc<Shared<St>>,
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
}

impl<S, St, ReqBody, ResBody> Future for ResponseFuture<S, St, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    St: KeyStore,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

    /// The hot states (the inner service's future, a refusal) are handled inline; a lookup
    /// still pending is driven by `poll_lookup`, kept out of line so that this function stays
    /// small enough to inline into the enclosing stack.
    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Inner { fut } => {
                    return fut.poll(cx).map_ok(|res| res.map(ResponseBody::inner));
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
            }
        }
    }
}

impl<S, St, ReqBody, ResBody> ResponseFuture<S, St, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    St: KeyStore,
{
    /// Drive a pending lookup. `None`: the state moved on (to the inner future or a refusal);
    /// poll again.
    #[inline(never)]
    #[allow(clippy::type_complexity)]
    fn poll_lookup(
        mut state: Pin<&mut State<S, St, ReqBody>>,
        cx: &mut Context<'_>,
    ) -> Option<Poll<Result<Response<ResponseBody<ResBody>>, S::Error>>> {
        let StateProj::Lookup { waiting } = state.as_mut().project() else {
            return None;
        };
        let Waiting { wait, pending } = &mut **waiting;
        let timeout = pending
            .as_ref()
            .map_or(Duration::ZERO, |p| p.shared.timeout);
        let result = match wait.poll(cx, timeout) {
            Poll::Ready(r) => r,
            Poll::Pending => return Some(Poll::Pending),
        };
        // `pending` is `Some` until this point: it is taken only here, and the state changes
        // below before the next poll.
        let Some(Pending {
            hash,
            mut req,
            mut inner,
            shared,
        }) = pending.take()
        else {
            return Some(Poll::Ready(Ok(polled_after_completion())));
        };
        match shared.decide(result, &hash) {
            Ok(principal) => {
                req.extensions_mut().insert(principal);
                let fut = inner.call(req);
                state.set(State::Inner { fut });
            }
            Err(rejection) => {
                let refused = refuse(&shared.responder, &rejection, req.headers_mut());
                state.set(State::Refused {
                    refused: Some(refused),
                });
            }
        }
        None
    }
}

/// What a future polled again after completion yields, instead of panicking.
pub(crate) fn polled_after_completion<B>() -> Response<ResponseBody<B>> {
    tracing::error!("tower-api-key response future polled after completion");
    let mut res = Response::new(ResponseBody::full(Bytes::new()));
    *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    res
}
