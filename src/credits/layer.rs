//! [`SpendCredits`]: every request spends its cost in credits before it reaches the service.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{Method, Request, Response, Uri};
use tower_layer::Layer;
use tower_service::Service;

use super::{CreditBackend, CreditError, Credits, MemoryCredits};
use crate::future::{Next, Wait, already_decided, inner_accessors, take_ready};
use crate::headers::{LimitHeaders, Refund};
use crate::ids::{KeyId, OrgId};
use crate::principal::Principal;
use crate::reject::{Rejection, Responder, ResponseBody, missing_principal};

/// How many credits a request costs, as a request extension set by a layer outside
/// [`SpendCredits`]; it wins over the layer's [cost function](SpendCreditsLayer::cost).
/// `CreditCost(0)` makes a request free.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CreditCost(pub u64);

type CostFn = dyn Fn(&Method, &Uri) -> u64 + Send + Sync;

struct Shared<B> {
    credits: Credits<B>,
    cost: Option<Arc<CostFn>>,
    responder: Responder,
    refund: bool,
}

/// Layer of [`SpendCredits`]: `SpendCredits::layer(credits)`. Cheap to clone.
pub struct SpendCreditsLayer<B = MemoryCredits> {
    shared: Arc<Shared<B>>,
}

impl<B> Clone for SpendCreditsLayer<B> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<B: fmt::Debug> fmt::Debug for SpendCreditsLayer<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpendCreditsLayer")
            .field("credits", &self.shared.credits)
            .finish_non_exhaustive()
    }
}

/// Spends each request's cost in credits (the key's balance, else its organization's; see
/// [`Credits`]) before calling the service: a request whose balance is short is refused with
/// `429 credits_exhausted` and a `Retry-After` until the refill; one with no balance anywhere
/// passes unmetered. Put it after [`ApiKeyAuth`](crate::ApiKeyAuth) (and after the rate limit,
/// so a request refused by the rate spends no credits).
///
/// Why a layer beside the [`Credits`] handle: when the cost is known from the route (as
/// [`Cost`](crate::Cost) is for rates), no handler has to remember to spend. Every request it
/// meters waits for the backend once (a boxed future; the memory backend answers at once).
///
/// ```
/// use http::Method;
/// use tower_api_key::credits::{Credits, SpendCredits};
///
/// let credits = Credits::new();
/// // Creating a browser costs 10 credits, everything else 1.
/// let layer = SpendCredits::layer(credits)
///     .cost(|m, uri| if m == Method::POST && uri.path() == "/v1/browsers" { 10 } else { 1 });
/// # let _ = layer;
/// ```
pub struct SpendCredits<S, B = MemoryCredits> {
    inner: S,
    shared: Arc<Shared<B>>,
}

impl<S: Clone, B> Clone for SpendCredits<S, B> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, B> fmt::Debug for SpendCredits<S, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpendCredits")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl SpendCredits<(), ()> {
    /// The layer spending from `credits`, 1 credit per request unless told otherwise.
    pub fn layer<B: CreditBackend>(credits: Credits<B>) -> SpendCreditsLayer<B> {
        SpendCreditsLayer {
            shared: Arc::new(Shared {
                credits,
                cost: None,
                responder: Responder::default(),
                refund: false,
            }),
        }
    }
}

impl<B: CreditBackend> SpendCreditsLayer<B> {
    fn map(self, f: impl FnOnce(&mut Shared<B>)) -> Self {
        let mut shared = Arc::try_unwrap(self.shared).unwrap_or_else(|shared| Shared {
            credits: shared.credits.clone(),
            cost: shared.cost.clone(),
            responder: shared.responder.clone(),
            refund: shared.refund,
        });
        f(&mut shared);
        Self {
            shared: Arc::new(shared),
        }
    }

    /// A request's cost in credits by method and URI, when no [`CreditCost`] extension is set
    /// (default: 1).
    pub fn cost(self, cost: impl Fn(&Method, &Uri) -> u64 + Send + Sync + 'static) -> Self {
        let cost: Arc<CostFn> = Arc::new(cost);
        self.map(|s| s.cost = Some(cost))
    }

    /// Give a request's credits back when the service answers with a server error (`5xx`), so
    /// failed calls cost nothing (default: off). Sent in the background on the current tokio
    /// runtime once the response arrives.
    pub fn refund_server_errors(self, on: bool) -> Self {
        self.map(|s| s.refund = on)
    }

    /// How refusals are rendered (default: problem+json / gRPC).
    pub fn responder(self, responder: Responder) -> Self {
        self.map(|s| s.responder = responder)
    }
}

impl<S, B> Layer<S> for SpendCreditsLayer<B> {
    type Service = SpendCredits<S, B>;

    fn layer(&self, inner: S) -> Self::Service {
        SpendCredits {
            inner,
            shared: self.shared.clone(),
        }
    }
}

inner_accessors!(SpendCredits<S, B>);

/// Response future of [`SpendCredits`].
pub type ResponseFuture<S, B, ReqBody> = crate::future::ResponseFuture<
    <S as Service<Request<ReqBody>>>::Future,
    Spending<S, B, ReqBody>,
>;

type SpendFuture = Pin<Box<dyn Future<Output = Result<Option<u64>, CreditError>> + Send>>;

/// A request waiting for its credits to be spent.
pub struct Spending<S, B, ReqBody> {
    spend: SpendFuture,
    /// What the spend took, and from whom, to give it back after a server error.
    paid: (OrgId, KeyId, u64),
    shared: Arc<Shared<B>>,
    /// The request and the inner service made ready for it; taken once the spend answers.
    call: Option<(Request<ReqBody>, S)>,
}

impl<S, B, ReqBody> Wait<S::Future> for Spending<S, B, ReqBody>
where
    S: Service<Request<ReqBody>>,
    B: CreditBackend,
{
    fn poll_wait(&mut self, cx: &mut Context<'_>) -> Poll<Next<S::Future, Self>> {
        let result = ready!(self.spend.as_mut().poll(cx));
        let Some((req, mut inner)) = self.call.take() else {
            return Poll::Ready(Next::Refuse(already_decided()));
        };
        Poll::Ready(match result {
            Ok(Some(_)) if self.shared.refund => {
                let credits = self.shared.credits.clone();
                let (org, key, cost) = self.paid.clone();
                let refund = Refund(Box::new(move || {
                    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                        return;
                    };
                    runtime.spawn(async move {
                        let now = credits.clock.now();
                        if let Err(e) = credits.backend().refund(&org, &key, cost, now).await {
                            tracing::warn!(error = %e, "credits of a failed call not refunded");
                        }
                    });
                }));
                Next::Call(inner.call(req), Some(LimitHeaders::refund_only(refund)))
            }
            Ok(_) => Next::Call(inner.call(req), None),
            Err(error) => {
                let rejection = error
                    .rejection()
                    .unwrap_or(Rejection::StoreUnavailable { retry_after: 1 });
                if let CreditError::Unavailable(e) = &error {
                    tracing::warn!(error = %e, "credit backend failed; answering 503");
                }
                Next::Refuse(self.shared.responder.respond(&rejection, req.headers()))
            }
        })
    }
}

impl<S, B, ReqBody, ResBody> Service<Request<ReqBody>> for SpendCredits<S, B>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    B: CreditBackend,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, B, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let shared = &self.shared;
        let Some(principal) = req.extensions().get::<Principal>() else {
            let headers = std::mem::take(req.headers_mut());
            return ResponseFuture::refused(missing_principal(
                "SpendCredits",
                &shared.responder,
                headers,
            ));
        };
        let cost = match req.extensions().get::<CreditCost>() {
            Some(c) => c.0,
            None => shared
                .cost
                .as_ref()
                .map_or(1, |f| f(req.method(), req.uri())),
        };
        if cost == 0 {
            return ResponseFuture::inner(self.inner.call(req), None);
        }
        let credits = shared.credits.clone();
        let (org, key) = (principal.org_id().clone(), principal.key_id().clone());
        let paid = (org.clone(), key.clone(), cost);
        let spend: SpendFuture = Box::pin(async move { credits.spend_for(&org, &key, cost).await });
        ResponseFuture::waiting(Spending {
            spend,
            paid,
            shared: shared.clone(),
            call: Some((req, take_ready(&mut self.inner))),
        })
    }
}
