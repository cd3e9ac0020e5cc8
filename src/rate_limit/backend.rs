//! Where the per-organization limiter state lives: the [`RateLimitBackend`] trait.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::breaker::Refused;
use crate::clock::Timestamp;
use crate::ids::OrgId;
use crate::store::BoxError;

use super::gcra::{Decision, Decisions, Gcra};
use super::policies::Policies;

/// A rate-limit backend failed (e.g. Redis unreachable). What the layer does then is the
/// layer's [`on_backend_error`](super::OrgRateLimitLayer::on_backend_error) policy.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RateLimitError {
    /// The backend could not be reached or failed.
    #[error("rate-limit backend unavailable: {0}")]
    Unavailable(#[source] BoxError),
    /// The backend did not answer in time.
    #[error("rate-limit backend timed out")]
    Timeout,
    /// The backend's breaker is open after repeated failures: not tried. A fail-closed layer
    /// answers `Retry-After` with what is left of the cool-down.
    #[error("rate-limit backend not tried: {0}")]
    CircuitOpen(#[from] Refused),
}

impl RateLimitError {
    /// Wrap a driver error as [`RateLimitError::Unavailable`].
    pub fn unavailable(e: impl Into<BoxError>) -> Self {
        Self::Unavailable(e.into())
    }
}

/// The result of one backend check.
pub type CheckResult = Result<Decision, RateLimitError>;

/// The result of one check against several policies.
pub type PoliciesResult = Result<Decisions, RateLimitError>;

/// Spend the request's cells, or only say what would happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spend {
    /// Decide and, if admitted, spend the cells of every policy.
    Commit,
    /// Decide only: nothing is written (a check-only request, see
    /// [`check_only`](super::OrgRateLimitLayer::check_only)).
    DryRun,
}

/// The future of [`RateLimitBackend::check_policies`]: ready at once (memory), or a boxed
/// round trip (Redis).
pub struct PoliciesCheck(PoliciesState);

enum PoliciesState {
    Ready(Option<PoliciesResult>),
    Pending(Pin<Box<dyn Future<Output = PoliciesResult> + Send>>),
}

impl PoliciesCheck {
    /// A check decided already.
    pub fn ready(result: PoliciesResult) -> Self {
        Self(PoliciesState::Ready(Some(result)))
    }

    /// A check still under way.
    pub fn pending(fut: impl Future<Output = PoliciesResult> + Send + 'static) -> Self {
        Self(PoliciesState::Pending(Box::pin(fut)))
    }
}

impl fmt::Debug for PoliciesCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            PoliciesState::Ready(_) => "PoliciesCheck::Ready",
            PoliciesState::Pending(_) => "PoliciesCheck::Pending",
        })
    }
}

impl Future for PoliciesCheck {
    type Output = PoliciesResult;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<PoliciesResult> {
        match &mut self.get_mut().0 {
            PoliciesState::Ready(result) => Poll::Ready(result.take().unwrap_or(Err(
                RateLimitError::unavailable("PoliciesCheck polled after completion"),
            ))),
            PoliciesState::Pending(fut) => fut.as_mut().poll(cx),
        }
    }
}

/// Per-organization GCRA state, keyed by [`OrgId`] (never by a key or its hash).
///
/// A backend applies [`Gcra::decide`] atomically per organization: read the TAT, decide, store
/// the new TAT if admitted, with no admitted request lost to a race. When the quota passed
/// differs from the one the state was written under (a plan change), the state is carried
/// over with [`Gcra::convert`] first, so the change applies to this very request.
///
/// # A named, unboxed check future
///
/// Like [`KeyStore::Lookup`](crate::KeyStore::Lookup), the check future is an associated type
/// and `Unpin`: [`OrgRateLimit`](super::OrgRateLimit) polls it once in place and, if it is
/// ready (the in-memory backend always is: [`std::future::Ready`]), decides inside `call` with
/// no allocation. A remote backend (Redis: one Lua script, one round trip) returns a boxed
/// future and the layer waits for it.
pub trait RateLimitBackend: Clone + Send + Sync + 'static {
    /// The future of [`check`](Self::check).
    type Check: Future<Output = CheckResult> + Send + Unpin + 'static;

    /// Decide a request of `org` costing `cost` cells at `now` under `gcra`, and record it if
    /// admitted.
    fn check(&self, org: &OrgId, gcra: &Gcra, cost: u32, now: Timestamp) -> Self::Check;

    /// The decision to use instead when [`check`](Self::check) failed and the layer fails
    /// open ([`OnBackendError::FailOpen`](super::OnBackendError::FailOpen)): typically a
    /// local, per-replica limiter standing in for a shared one that is unreachable.
    ///
    /// The default, `None`, lets the request through without rate-limit headers. The Redis
    /// backend answers from an in-process [`MemoryRateLimiter`](super::MemoryRateLimiter).
    fn fallback(&self, org: &OrgId, gcra: &Gcra, cost: u32, now: Timestamp) -> Option<Decision> {
        let _ = (org, gcra, cost, now);
        None
    }

    /// Decide a request of `org` costing `cost` cells at `now` against every request policy of
    /// `policies` at once ([`decide_all`](super::gcra::decide_all)): admitted only if all admit
    /// it, and then (with [`Spend::Commit`]) all spend their cells atomically; a refusal spends
    /// nothing anywhere. Used for organizations with several policies and for check-only
    /// requests.
    ///
    /// When the state was written under other policies (a plan change), every new policy
    /// starts with the largest number of cells in use among the old ones (capped at its
    /// quota): never a second burst.
    ///
    /// The default fails ([`RateLimitError::Unavailable`]): a backend written for one policy
    /// per organization (before several existed) does not decide several, and the layer's
    /// [`OnBackendError`](super::OnBackendError) policy applies. The memory and Redis backends
    /// implement it.
    fn check_policies(
        &self,
        org: &OrgId,
        policies: &Arc<Policies>,
        cost: u32,
        now: Timestamp,
        spend: Spend,
    ) -> PoliciesCheck {
        let _ = (org, policies, cost, now, spend);
        PoliciesCheck::ready(Err(RateLimitError::unavailable(
            "this rate-limit backend decides one policy per organization only",
        )))
    }

    /// Give back the cells of a request admitted at about `now` under `gcras` (its one policy, or
    /// every policy of its set) whose inner service answered with a server error, when the
    /// layer [refunds them](super::OrgRateLimitLayer::refund_server_errors): each policy's state
    /// moves back by `cost` cells ([`Gcra::refund`]), never past a full bucket. Fire and
    /// forget: a remote backend sends it in the background. The default does nothing.
    fn refund(&self, org: &OrgId, gcras: &[Gcra], cost: u32, now: Timestamp) {
        let _ = (org, gcras, cost, now);
    }

    /// The [`fallback`](Self::fallback) of [`check_policies`](Self::check_policies).
    fn fallback_policies(
        &self,
        org: &OrgId,
        policies: &Arc<Policies>,
        cost: u32,
        now: Timestamp,
        spend: Spend,
    ) -> Option<Decisions> {
        let _ = (org, policies, cost, now, spend);
        None
    }
}
