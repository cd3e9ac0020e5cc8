//! What the layers share as tower services: one response future, one waiting state for a
//! pending store lookup or limiter check, and the small helpers every `call` uses.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use pin_project_lite::pin_project;
use tokio::time::Sleep;

use crate::headers::LimitHeaders;
use crate::reject::ResponseBody;

pin_project! {
    /// The response future of every layer in this crate: the inner service's future (its
    /// response gets the rate-limit headers, if any), a refusal, or a request waiting for a
    /// store lookup or a rate-limit check. Never boxed; only a waiting request is.
    pub struct ResponseFuture<F, W = Never> {
        #[pin]
        state: State<F, W>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, W> {
        Inner {
            #[pin]
            fut: F,
            headers: Option<LimitHeaders>,
        },
        Refused {
            res: Option<Response<Bytes>>,
        },
        // Boxed: only requests that really wait (remote stores and limiters) get here, where
        // the round trip dwarfs the allocation; inline, every future would carry a request.
        Waiting {
            waiting: Box<W>,
        },
    }
}

/// A request waiting for something (a store lookup, a rate-limit check), and what it does once
/// that answers. Implemented by each layer's waiting state.
pub trait Wait<F>: Sized {
    /// Poll what the request waits for; once it answers, decide what comes next (`F` is the
    /// inner service's future).
    fn poll_wait(&mut self, cx: &mut Context<'_>) -> Poll<Next<F, Self>>;
}

/// What a waiting request does next.
pub enum Next<F, W> {
    /// The inner service was called; these headers go on its response.
    Call(F, Option<LimitHeaders>),
    /// The request is refused with this response.
    Refuse(Response<Bytes>),
    /// It waits again (e.g. for the rate limit after the key lookup).
    Wait(W),
}

/// The waiting state of layers that never wait.
#[derive(Debug)]
pub enum Never {}

impl<F> Wait<F> for Never {
    fn poll_wait(&mut self, _: &mut Context<'_>) -> Poll<Next<F, Self>> {
        match *self {}
    }
}

impl<F, W> ResponseFuture<F, W> {
    /// The inner service's future; `headers` go on its response.
    #[inline]
    pub(crate) fn inner(fut: F, headers: Option<LimitHeaders>) -> Self {
        Self {
            state: State::Inner { fut, headers },
        }
    }

    /// A refusal.
    #[inline]
    pub(crate) fn refused(res: Response<Bytes>) -> Self {
        Self {
            state: State::Refused { res: Some(res) },
        }
    }

    /// A request waiting for a lookup or a check.
    pub(crate) fn waiting(waiting: W) -> Self {
        Self {
            state: State::Waiting {
                waiting: Box::new(waiting),
            },
        }
    }

    /// Where a waiting request goes next.
    pub(crate) fn next(next: Next<F, W>) -> Self {
        match next {
            Next::Call(fut, headers) => Self::inner(fut, headers),
            Next::Refuse(res) => Self::refused(res),
            Next::Wait(w) => Self::waiting(w),
        }
    }
}

impl<F, W, B, E> Future for ResponseFuture<F, W>
where
    F: Future<Output = Result<Response<B>, E>>,
    W: Wait<F>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Inner { fut, headers } => {
                    let mut res = ready!(fut.poll(cx))?;
                    if let Some(h) = headers {
                        h.write(res.headers_mut());
                        h.answered(res.status());
                    }
                    return Poll::Ready(Ok(res.map(ResponseBody::inner)));
                }
                StateProj::Refused { res } => {
                    return Poll::Ready(Ok(match res.take() {
                        Some(res) => res.map(ResponseBody::full),
                        None => polled_after_completion(),
                    }));
                }
                StateProj::Waiting { waiting } => match ready!(waiting.poll_wait(cx)) {
                    Next::Wait(w) => **waiting = w,
                    next => state.set(Self::next(next).state),
                },
            }
        }
    }
}

/// What a future polled again after completion yields, instead of panicking.
#[cold]
fn polled_after_completion<B>() -> Response<ResponseBody<B>> {
    tracing::error!("tower-api-key response future polled after completion");
    let mut res = Response::new(ResponseBody::full(Bytes::new()));
    *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    res
}

/// The answer of a waiting state polled again after it decided (a bug): a 500, not a panic.
#[cold]
pub(crate) fn already_decided() -> Response<Bytes> {
    tracing::error!("tower-api-key waiting state polled after it decided");
    let mut res = Response::new(Bytes::new());
    *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    res
}

/// Poll a future once, without a waker: a store lookup or limiter check that is ready at once
/// (in memory, a cache hit) is decided inside `call`, with no waiting state.
#[inline]
pub(crate) fn poll_now<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
    Pin::new(fut).poll(&mut Context::from_waker(Waker::noop()))
}

/// Take the inner service that `poll_ready` prepared, leaving a clone in its place: the service
/// made ready is the one called.
#[inline]
pub(crate) fn take_ready<S: Clone>(inner: &mut S) -> S {
    let clone = inner.clone();
    std::mem::replace(inner, clone)
}

/// A future bounded by a timeout armed the first time it waits: only futures that really wait
/// pay for a timer, and only inside a tokio runtime (outside one, `sleep` would panic).
pub(crate) struct Timed<F> {
    fut: F,
    deadline: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl<F: Future + Unpin> Timed<F> {
    pub(crate) fn new(fut: F) -> Self {
        Self {
            fut,
            deadline: None,
            armed: false,
        }
    }

    /// The output, or `None` once `timeout` has passed since the future first waited.
    pub(crate) fn poll(
        &mut self,
        cx: &mut Context<'_>,
        timeout: Duration,
    ) -> Poll<Option<F::Output>> {
        if let Poll::Ready(out) = Pin::new(&mut self.fut).poll(cx) {
            return Poll::Ready(Some(out));
        }
        if !self.armed {
            self.armed = true;
            if tokio::runtime::Handle::try_current().is_ok() {
                self.deadline = Some(Box::pin(tokio::time::sleep(timeout)));
            }
        }
        match self.deadline.as_mut() {
            Some(d) => d.as_mut().poll(cx).map(|()| None),
            None => Poll::Pending,
        }
    }
}

/// `get_ref`, `get_mut` and `into_inner` for a layer's service whose inner service is `inner`.
macro_rules! inner_accessors {
    ($service:ident < $($param:ident),+ >) => {
        impl<$($param),+> $service<$($param),+> {
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
    };
}
pub(crate) use inner_accessors;
