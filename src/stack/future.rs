//! The response future of [`ApiKeyStack`](super::ApiKeyStack), and its waiting state.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::Request;
use tower_service::Service;

use super::{Decided, Stages, after_limit, proceed, stages};
use crate::clock::Timestamp;
use crate::future::{Next, Timed, Wait, already_decided};
use crate::key::KeyHash;
use crate::principal::Principal;
use crate::rate_limit::{CheckArgs, MemoryRateLimiter, Outcome, RateLimitBackend};
use crate::rate_limit::{DraftSpec, LimitCheck};
use crate::store::{KeyStore, StoreError};

/// Response future of [`ApiKeyStack`](super::ApiKeyStack).
pub type ResponseFuture<S, St, ReqBody, B = MemoryRateLimiter> = crate::future::ResponseFuture<
    <S as Service<Request<ReqBody>>>::Future,
    Waiting<S, St, ReqBody, B>,
>;

/// A request waiting for its key's store lookup, or for the rate limit's remote check.
pub struct Waiting<S, St: KeyStore, ReqBody, B: RateLimitBackend> {
    shared: Arc<Stages<St, B>>,
    state: State<S, St, ReqBody, B>,
}

// A `Waiting` is boxed once per request that really waits (a remote store or limiter), and
// moves from one state to the other in place: boxing the check's state again would add an
// allocation to every such request to save a few dozen bytes.
#[allow(clippy::large_enum_variant)]
enum State<S, St: KeyStore, ReqBody, B: RateLimitBackend> {
    Lookup {
        wait: Timed<St::Lookup>,
        hash: KeyHash,
        /// Taken once the lookup answers.
        call: Option<(Request<ReqBody>, S)>,
        /// When the lookup started waiting, for the lookup-duration metric.
        started: std::time::Instant,
    },
    Check {
        check: LimitCheck<B::Check>,
        args: CheckArgs,
        draft: Option<DraftSpec>,
        /// Taken once the check answers.
        call: Option<(Request<ReqBody>, Principal, Timestamp, S)>,
    },
}

impl<S, St: KeyStore, ReqBody, B: RateLimitBackend> Waiting<S, St, ReqBody, B> {
    pub(crate) fn lookup(
        lookup: St::Lookup,
        hash: KeyHash,
        req: Request<ReqBody>,
        inner: S,
        shared: Arc<Stages<St, B>>,
    ) -> Self {
        Self {
            shared,
            state: State::Lookup {
                wait: Timed::new(lookup),
                hash,
                call: Some((req, inner)),
                started: std::time::Instant::now(),
            },
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn check(
        check: LimitCheck<B::Check>,
        args: CheckArgs,
        draft: Option<DraftSpec>,
        req: Request<ReqBody>,
        principal: Principal,
        now: Timestamp,
        inner: S,
        shared: Arc<Stages<St, B>>,
    ) -> Self {
        Self {
            shared,
            state: State::Check {
                check,
                args,
                draft,
                call: Some((req, principal, now, inner)),
            },
        }
    }
}

impl<S, St, ReqBody, B> Wait<S::Future> for Waiting<S, St, ReqBody, B>
where
    S: Service<Request<ReqBody>> + Clone,
    St: KeyStore,
    B: RateLimitBackend,
{
    fn poll_wait(&mut self, cx: &mut Context<'_>) -> Poll<Next<S::Future, Self>> {
        let shared = &self.shared;
        match &mut self.state {
            State::Lookup {
                wait,
                hash,
                call,
                started,
            } => {
                let result =
                    ready!(wait.poll(cx, shared.auth.timeout)).unwrap_or(Err(StoreError::Timeout));
                shared.auth.waited(*started, &result);
                let Some((mut req, mut inner)) = call.take() else {
                    return Poll::Ready(Next::Refuse(already_decided()));
                };
                let now = shared.auth.clock.now();
                Poll::Ready(match shared.auth.decide_at(result, hash, now, &req) {
                    Ok(principal) => {
                        let decided = stages(shared, &mut req, &principal, now);
                        proceed(shared, &mut inner, req, principal, now, decided)
                    }
                    Err(rejection) => {
                        let headers = std::mem::take(req.headers_mut());
                        Next::Refuse(shared.auth.responder.refuse(&rejection, headers))
                    }
                })
            }
            State::Check {
                check,
                args,
                draft,
                call,
            } => {
                let result = ready!(Pin::new(check).poll(cx));
                let Some((mut req, principal, now, mut inner)) = call.take() else {
                    return Poll::Ready(Next::Refuse(already_decided()));
                };
                // Only a configured rate limit starts a check.
                let decided = match shared.limit.as_ref() {
                    Some(limit) => {
                        match limit.outcome(result, Some(&principal), args, *draft, req.headers()) {
                            Outcome::Admit(headers) => {
                                after_limit(shared, &mut req, &principal, now, headers)
                            }
                            Outcome::Refuse(res) => Decided::Refuse(res),
                        }
                    }
                    None => after_limit(shared, &mut req, &principal, now, None),
                };
                Poll::Ready(proceed(shared, &mut inner, req, principal, now, decided))
            }
        }
    }
}
