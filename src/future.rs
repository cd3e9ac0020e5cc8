//! A response future shared by the layers that decide synchronously.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use pin_project_lite::pin_project;

use crate::reject::ResponseBody;

pin_project! {
    /// The inner service's future, or a rejection decided before calling it. Never boxed.
    pub struct GuardFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Inner { #[pin] fut: F },
        Rejected { res: Option<Response<Bytes>> },
    }
}

impl<F> GuardFuture<F> {
    pub(crate) fn inner(fut: F) -> Self {
        Self {
            kind: Kind::Inner { fut },
        }
    }

    pub(crate) fn rejected(res: Response<Bytes>) -> Self {
        Self {
            kind: Kind::Rejected { res: Some(res) },
        }
    }
}

impl<F, B, E> Future for GuardFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { fut } => fut.poll(cx).map_ok(|res| res.map(ResponseBody::inner)),
            KindProj::Rejected { res } => Poll::Ready(Ok(match res.take() {
                Some(res) => res.map(ResponseBody::full),
                None => crate::auth::polled_after_completion(),
            })),
        }
    }
}
