//! The response future of [`ApiKeyAuth`](super::ApiKeyAuth), and its waiting state.

use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::Request;
use tower_service::Service;

use super::Authenticator;
use crate::future::{Next, Timed, Wait, already_decided};
use crate::key::KeyHash;
use crate::store::{KeyStore, StoreError};

/// Response future of [`ApiKeyAuth`](super::ApiKeyAuth).
pub type ResponseFuture<S, St, ReqBody> =
    crate::future::ResponseFuture<<S as Service<Request<ReqBody>>>::Future, Lookup<S, St, ReqBody>>;

/// A request waiting for its key's store lookup, bounded by the store timeout.
pub struct Lookup<S, St: KeyStore, ReqBody> {
    wait: Timed<St::Lookup>,
    hash: KeyHash,
    shared: Arc<Authenticator<St>>,
    /// The request and the inner service made ready for it; taken once the lookup answers.
    call: Option<(Request<ReqBody>, S)>,
    /// When the lookup started waiting, for the lookup-duration metric.
    started: std::time::Instant,
}

impl<S, St: KeyStore, ReqBody> Lookup<S, St, ReqBody> {
    pub(crate) fn new(
        lookup: St::Lookup,
        hash: KeyHash,
        req: Request<ReqBody>,
        inner: S,
        shared: Arc<Authenticator<St>>,
    ) -> Self {
        Self {
            wait: Timed::new(lookup),
            hash,
            shared,
            call: Some((req, inner)),
            started: std::time::Instant::now(),
        }
    }
}

impl<S, St, ReqBody> Wait<S::Future> for Lookup<S, St, ReqBody>
where
    S: Service<Request<ReqBody>>,
    St: KeyStore,
{
    fn poll_wait(&mut self, cx: &mut Context<'_>) -> Poll<Next<S::Future, Self>> {
        let result =
            ready!(self.wait.poll(cx, self.shared.timeout)).unwrap_or(Err(StoreError::Timeout));
        self.shared.waited(self.started, &result);
        let Some((mut req, mut inner)) = self.call.take() else {
            return Poll::Ready(Next::Refuse(already_decided()));
        };
        Poll::Ready(match self.shared.decide(result, &self.hash, &req) {
            Ok(principal) => {
                req.extensions_mut().insert(principal);
                Next::Call(inner.call(req), None)
            }
            Err(rejection) => {
                let headers = std::mem::take(req.headers_mut());
                Next::Refuse(self.shared.responder.refuse(&rejection, headers))
            }
        })
    }
}
