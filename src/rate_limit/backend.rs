//! Where the per-organization limiter state lives: the [`RateLimitBackend`] trait.

use std::future::Future;

use crate::breaker::Refused;
use crate::clock::Timestamp;
use crate::ids::OrgId;
use crate::store::BoxError;

use super::gcra::{Decision, Gcra};

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
}
