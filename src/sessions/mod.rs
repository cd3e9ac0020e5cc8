//! Concurrent-session quotas: [`SessionQuota`].
//!
//! An organization may hold at most its plan's `concurrent_sessions` live sessions (Free 10,
//! Paid 100). A handler *acquires* a slot when it creates a session and *releases* it when the
//! session ends. Each slot is a **lease** with an expiry: a holder that crashes, or forgets to
//! release, loses the slot when its lease runs out, so no slot leaks forever. Long-lived
//! sessions [`renew`](SessionQuota::renew) their lease (or re-[`acquire`](SessionQuota::acquire)
//! with the same id, which is idempotent).
//!
//! A refusal is [`SessionError::LimitReached`]; its [`rejection`](SessionError::rejection) is
//! `429 session_limit_exceeded` with a `Retry-After` of the time until the earliest lease
//! expires (gRPC 8 `RESOURCE_EXHAUSTED`). With the `axum` feature, `SessionError` is an
//! `IntoResponse`.
//!
//! # Why a handle and not a layer
//!
//! The session id is minted by the handler that creates the session and the slot is freed by
//! another request (the delete), so the quota is an object handlers call, shared through
//! application state, rather than a middleware around one request.
//!
//! ```
//! use std::time::Duration;
//! use tower_api_key::{OrgId, SessionQuota};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let sessions = SessionQuota::new();
//! let org = OrgId::from("org_1");
//! let lease = Duration::from_secs(60);
//! sessions.acquire_for(&org, 2, "s1", lease).await?;
//! sessions.acquire_for(&org, 2, "s2", lease).await?;
//! assert!(matches!(
//!     sessions.acquire_for(&org, 2, "s3", lease).await,
//!     Err(tower_api_key::SessionError::LimitReached { limit: 2, .. })
//! ));
//! assert!(sessions.release(&org, "s1").await?);
//! sessions.acquire_for(&org, 2, "s3", lease).await?;
//! # Ok::<(), tower_api_key::SessionError>(()) }).unwrap();
//! ```

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::clock::{Clock, Timestamp};
use crate::ids::OrgId;
use crate::observe::{Observe, UsageUnit};
use crate::principal::Principal;
use crate::rate_limit::QuotaPolicy;
use crate::rate_limit::gcra::ceil_duration_secs;
use crate::reject::Rejection;
use crate::store::{BoxError, UsageOutcome};

#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "redis")]
pub use redis::RedisSessions;

/// A held session slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionLease {
    org_id: OrgId,
    session_id: Arc<str>,
    expires_at: Timestamp,
    active: u32,
    limit: u32,
}

impl SessionLease {
    /// Build a lease (for backend implementations).
    pub fn new(
        org_id: OrgId,
        session_id: Arc<str>,
        expires_at: Timestamp,
        active: u32,
        limit: u32,
    ) -> Self {
        Self {
            org_id,
            session_id,
            expires_at,
            active,
            limit,
        }
    }

    /// The organization holding the slot.
    pub fn org_id(&self) -> &OrgId {
        &self.org_id
    }

    /// The session's id.
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// When the slot is reclaimed unless renewed.
    pub fn expires_at(&self) -> Timestamp {
        self.expires_at
    }

    /// Live sessions of the organization, this one included, when the lease was granted.
    pub fn active(&self) -> u32 {
        self.active
    }

    /// The organization's limit when the lease was granted (0 on a lease returned by
    /// [`renew`](SessionQuota::renew), which does not consult the limit).
    pub fn limit(&self) -> u32 {
        self.limit
    }
}

/// Why a session operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The organization holds as many live sessions as its plan allows.
    #[error("concurrent session limit of {limit} reached; retry after {retry_after} s")]
    LimitReached {
        /// Sessions allowed at once.
        limit: u64,
        /// Whole seconds (at least 1) until the earliest lease expires.
        retry_after: u64,
    },
    /// [`renew`](SessionQuota::renew) of a session that holds no live lease (never acquired,
    /// released, or expired and reclaimed).
    #[error("no live session lease with this id")]
    NotHeld,
    /// The backend failed.
    #[error("session backend unavailable: {0}")]
    Unavailable(#[source] BoxError),
}

impl SessionError {
    /// Wrap a driver error as [`SessionError::Unavailable`].
    pub fn unavailable(e: impl Into<BoxError>) -> Self {
        Self::Unavailable(e.into())
    }

    /// The client-facing rejection: `429 session_limit_exceeded` for a full quota, `503` for a
    /// backend failure; `None` for [`NotHeld`](Self::NotHeld), which is the application's
    /// business (typically a 404).
    pub fn rejection(&self) -> Option<Rejection> {
        match self {
            SessionError::LimitReached { limit, retry_after } => Some(Rejection::SessionLimit {
                limit: *limit,
                retry_after: *retry_after,
            }),
            SessionError::NotHeld => None,
            SessionError::Unavailable(_) => Some(Rejection::StoreUnavailable { retry_after: 1 }),
        }
    }
}

#[cfg(feature = "axum")]
impl axum_core::response::IntoResponse for SessionError {
    /// `429` problem+json with `Retry-After` for [`LimitReached`](SessionError::LimitReached),
    /// `503` for a backend failure, `404 session_not_found` for [`NotHeld`](SessionError::NotHeld).
    fn into_response(self) -> axum_core::response::Response {
        use axum_core::body::Body;
        match self.rejection() {
            Some(r) => {
                if let SessionError::Unavailable(e) = &self {
                    tracing::warn!(error = %e, "session backend failed; answering 503");
                }
                r.problem_response("api").map(Body::from)
            }
            None => {
                let body = serde_json::json!({
                    "type": "about:blank",
                    "title": "No live session with this id",
                    "status": 404,
                    "code": "session_not_found",
                });
                let mut res = http::Response::new(Body::from(body.to_string()));
                *res.status_mut() = http::StatusCode::NOT_FOUND;
                res.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/problem+json"),
                );
                res
            }
        }
    }
}

/// Where session leases live. Implementations must be exact under concurrency: the number of
/// live (unexpired) leases of an organization never exceeds the `limit` passed to `acquire`.
pub trait SessionBackend: Clone + Send + Sync + 'static {
    /// Grant `session` a lease until `now + lease` if `org` holds fewer than `limit` live
    /// leases, or if `session` already holds one (then it is extended).
    fn acquire(
        &self,
        org: &OrgId,
        session: &str,
        limit: u32,
        lease: Duration,
        now: Timestamp,
    ) -> impl Future<Output = Result<SessionLease, SessionError>> + Send;

    /// Extend a live lease to `now + lease`; [`SessionError::NotHeld`] if there is none.
    fn renew(
        &self,
        org: &OrgId,
        session: &str,
        lease: Duration,
        now: Timestamp,
    ) -> impl Future<Output = Result<SessionLease, SessionError>> + Send;

    /// Free `session`'s slot. `true` if it held a live lease.
    fn release(
        &self,
        org: &OrgId,
        session: &str,
        now: Timestamp,
    ) -> impl Future<Output = Result<bool, SessionError>> + Send;

    /// Live leases of `org` at `now`.
    fn active(
        &self,
        org: &OrgId,
        now: Timestamp,
    ) -> impl Future<Output = Result<u32, SessionError>> + Send;
}

/// The dedup window of a session level: the lease's duration, at least a second.
fn lease_window(lease: &SessionLease, now: Timestamp) -> Duration {
    lease
        .expires_at()
        .saturating_duration_since(now)
        .max(Duration::from_secs(1))
}

/// The session-quota handle handlers use. Cheap to clone; clones share the leases.
///
/// The limit comes from the caller's plan through the same [`QuotaPolicy`] as the request rate
/// (`Quota::concurrent_sessions`), so an upgrade raises it at once.
#[derive(Clone)]
pub struct SessionQuota<B = MemorySessions> {
    backend: B,
    policy: QuotaPolicy,
    clock: Clock,
    observe: Option<Observe>,
    counts: Arc<SessionCounts>,
}

/// Session-quota decisions, counted for [`Telemetry`](crate::telemetry).
#[derive(Debug, Default)]
pub(crate) struct SessionCounts {
    pub(crate) accepted: AtomicU64,
    pub(crate) refused: AtomicU64,
}

impl<B: fmt::Debug> fmt::Debug for SessionQuota<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionQuota")
            .field("backend", &self.backend)
            .field("policy", &self.policy)
            .field("clock", &self.clock)
            .finish()
    }
}

impl Default for SessionQuota<MemorySessions> {
    fn default() -> Self {
        Self::new()
    }
}

impl SessionQuota<MemorySessions> {
    /// An in-memory session quota, limits by plan, coarse clock.
    pub fn new() -> Self {
        Self::with_backend(MemorySessions::new())
    }
}

impl<B: SessionBackend> SessionQuota<B> {
    /// A session quota over another backend (e.g. Redis, shared by replicas).
    pub fn with_backend(backend: B) -> Self {
        Self {
            backend,
            policy: QuotaPolicy::default(),
            clock: Clock::default(),
            observe: None,
            counts: Arc::default(),
        }
    }

    /// Tell `observe` when an organization's live sessions cross one of its levels (80, 90,
    /// 100 % of the limit by default), from the count the acquire returns (no extra lookup).
    /// A session quota has no window: [`Events::signals`](crate::events::Events::signals)
    /// reports each level at most once per lease duration.
    pub fn observe(mut self, observe: impl Into<Observe>) -> Self {
        self.observe = Some(observe.into());
        self
    }

    /// Acquires granted and refused (at the limit) so far.
    #[allow(dead_code)] // read by `Telemetry` (feature `metrics`)
    pub(crate) fn counts(&self) -> &Arc<SessionCounts> {
        &self.counts
    }

    /// Where each organization's limit comes from (default: its plan).
    pub fn policy(mut self, policy: QuotaPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The clock leases are measured with (default: [`Clock::coarse`]).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Take a slot for `session_id` in the caller's organization, for `lease`, within its
    /// plan's concurrent-session limit. Acquiring an id that already holds a live lease extends
    /// it and takes no second slot.
    ///
    /// With usage metering on ([`LastUsedRecorderLayer::meter_usage`](crate::LastUsedRecorderLayer::meter_usage)),
    /// a refusal moves the request's count from `accepted` to `session_quota`
    /// ([`acquire_for`](Self::acquire_for), which has no principal, counts nothing).
    pub async fn acquire(
        &self,
        principal: &Principal,
        session_id: &str,
        lease: Duration,
    ) -> Result<SessionLease, SessionError> {
        let limit = self.policy.quota(principal).concurrent_sessions;
        let result = self
            .acquire_for(principal.org_id(), limit, session_id, lease)
            .await;
        if let Err(SessionError::LimitReached { .. }) = &result {
            // Metered usage: this request counts as refused by the session quota.
            principal.refused_after_accept(UsageOutcome::SessionQuota);
        }
        result
    }

    /// [`acquire`](Self::acquire) with an explicit organization and limit.
    pub async fn acquire_for(
        &self,
        org: &OrgId,
        limit: u32,
        session_id: &str,
        lease: Duration,
    ) -> Result<SessionLease, SessionError> {
        let now = self.clock.now();
        let result = self
            .backend
            .acquire(org, session_id, limit, lease, now)
            .await;
        match &result {
            Ok(lease) => {
                self.counts.accepted.fetch_add(1, Ordering::Relaxed);
                if let Some(observe) = &self.observe {
                    let limit = u64::from(lease.limit());
                    let active = u64::from(lease.active()).min(limit);
                    observe.usage(
                        org,
                        "sessions",
                        UsageUnit::Sessions,
                        limit,
                        limit - active,
                        1,
                        lease_window(lease, now),
                        now,
                    );
                }
            }
            Err(SessionError::LimitReached { limit, retry_after }) => {
                self.counts.refused.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(org_id = %org, limit, retry_after, "concurrent session limit reached");
            }
            Err(_) => {}
        }
        result
    }

    /// Extend a live lease to `lease` from now.
    pub async fn renew(
        &self,
        org: &OrgId,
        session_id: &str,
        lease: Duration,
    ) -> Result<SessionLease, SessionError> {
        self.backend
            .renew(org, session_id, lease, self.clock.now())
            .await
    }

    /// Free a session's slot; `true` if it held a live lease.
    pub async fn release(&self, org: &OrgId, session_id: &str) -> Result<bool, SessionError> {
        self.backend
            .release(org, session_id, self.clock.now())
            .await
    }

    /// The organization's live sessions.
    pub async fn active(&self, org: &OrgId) -> Result<u32, SessionError> {
        self.backend.active(org, self.clock.now()).await
    }
}

/// Leases of one organization. `dead` once removed from the map: whoever locks a dead entry
/// looks the organization up again.
#[derive(Default)]
struct OrgLeases {
    dead: bool,
    leases: HashMap<Arc<str>, Timestamp>,
}

impl OrgLeases {
    fn purge(&mut self, now: Timestamp) {
        self.leases.retain(|_, exp| *exp > now);
    }
}

const DEFAULT_SWEEP_FLOOR: usize = 1024;

struct SessionsInner {
    orgs: papaya::HashMap<OrgId, Mutex<OrgLeases>, foldhash::fast::RandomState>,
    next_sweep: AtomicUsize,
    sweep_floor: usize,
}

/// The in-process [`SessionBackend`].
///
/// A lock-free map from organization to that organization's leases, each behind its own
/// mutex: session operations are rare next to requests and must check a count and an expiry
/// table together, so a short per-organization critical section is the simple exact answer;
/// organizations never contend with each other and there is no global lock. Expired leases are
/// purged whenever their organization is touched; organizations left with no lease are removed,
/// and a sweep (when the number of organizations doubles, or on [`sweep`](Self::sweep)) drops
/// those never touched again, so memory stays bounded by the live sessions.
#[derive(Clone)]
pub struct MemorySessions {
    inner: Arc<SessionsInner>,
}

impl fmt::Debug for MemorySessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemorySessions")
            .field("orgs", &self.inner.orgs.len())
            .finish()
    }
}

impl Default for MemorySessions {
    fn default() -> Self {
        Self::new()
    }
}

fn lock(m: &Mutex<OrgLeases>) -> MutexGuard<'_, OrgLeases> {
    // A panic inside the short critical sections below cannot leave the table inconsistent
    // (each is a single map operation), so a poisoned lock is recovered.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl MemorySessions {
    /// An empty backend.
    pub fn new() -> Self {
        Self::with_sweep_floor(DEFAULT_SWEEP_FLOOR)
    }

    /// An empty backend that sweeps once it holds `floor` organizations (then each time their
    /// number doubles).
    pub fn with_sweep_floor(floor: usize) -> Self {
        let floor = floor.max(1);
        Self {
            inner: Arc::new(SessionsInner {
                orgs: papaya::HashMap::builder()
                    .hasher(foldhash::fast::RandomState::default())
                    .build(),
                next_sweep: AtomicUsize::new(floor),
                sweep_floor: floor,
            }),
        }
    }

    /// Organizations with an entry (some may hold only expired leases until swept).
    pub fn orgs(&self) -> usize {
        self.inner.orgs.len()
    }

    /// Run `f` on `org`'s live leases; `create` says whether to create the entry if missing.
    /// Removes the entry if `f` leaves it empty.
    fn with_org<T>(
        &self,
        org: &OrgId,
        now: Timestamp,
        create: bool,
        f: impl Fn(&mut OrgLeases) -> T,
    ) -> Option<T> {
        let orgs = self.inner.orgs.pin();
        loop {
            let entry = match orgs.get(org.as_str()) {
                Some(e) => e,
                None if create => {
                    match orgs.try_insert(org.clone(), Mutex::new(OrgLeases::default())) {
                        Ok(e) => {
                            self.maybe_sweep(now);
                            e
                        }
                        Err(occupied) => occupied.current,
                    }
                }
                None => return None,
            };
            let mut leases = lock(entry);
            if leases.dead {
                continue;
            }
            leases.purge(now);
            let out = f(&mut leases);
            if leases.leases.is_empty() {
                leases.dead = true;
                let _ = orgs.remove_if(org.as_str(), |_, v| std::ptr::eq(v, entry));
            }
            return Some(out);
        }
    }

    fn maybe_sweep(&self, now: Timestamp) {
        let inner = &*self.inner;
        let threshold = inner.next_sweep.load(Ordering::Relaxed);
        if inner.orgs.len() < threshold
            || inner
                .next_sweep
                .compare_exchange(threshold, usize::MAX, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        self.sweep(now);
        let left = inner.orgs.len();
        inner.next_sweep.store(
            left.saturating_mul(2).max(inner.sweep_floor),
            Ordering::Release,
        );
    }

    /// Drop expired leases everywhere and the organizations left with none. Returns how many
    /// organizations were removed.
    pub fn sweep(&self, now: Timestamp) -> usize {
        let orgs = self.inner.orgs.pin();
        let mut removed = 0;
        for (org, entry) in orgs.iter() {
            let mut leases = lock(entry);
            if leases.dead {
                continue;
            }
            leases.purge(now);
            if leases.leases.is_empty() {
                leases.dead = true;
                if orgs
                    .remove_if(org.as_str(), |_, v| std::ptr::eq(v, entry))
                    .is_ok_and(|r| r.is_some())
                {
                    removed += 1;
                }
            }
        }
        removed
    }

    fn acquire_sync(
        &self,
        org: &OrgId,
        session: &str,
        limit: u32,
        lease: Duration,
        now: Timestamp,
    ) -> Result<SessionLease, SessionError> {
        let expires_at = now.saturating_add(lease);
        self.with_org(org, now, true, |leases| {
            let held = leases.leases.contains_key(session);
            if !held && leases.leases.len() >= limit as usize {
                let earliest = leases.leases.values().min().copied().unwrap_or(now);
                let wait = earliest.saturating_duration_since(now);
                return Err(SessionError::LimitReached {
                    limit: u64::from(limit),
                    retry_after: ceil_duration_secs(wait).max(1),
                });
            }
            if lease.is_zero() {
                // A zero lease would expire at once: grant nothing, hold nothing.
                leases.leases.remove(session);
            } else if let Some(exp) = leases.leases.get_mut(session) {
                *exp = (*exp).max(expires_at);
            } else {
                leases.leases.insert(Arc::from(session), expires_at);
            }
            Ok(SessionLease::new(
                org.clone(),
                Arc::from(session),
                expires_at,
                u32::try_from(leases.leases.len()).unwrap_or(u32::MAX),
                limit,
            ))
        })
        .unwrap_or(Err(SessionError::NotHeld))
    }

    fn renew_sync(
        &self,
        org: &OrgId,
        session: &str,
        lease: Duration,
        now: Timestamp,
    ) -> Result<SessionLease, SessionError> {
        let expires_at = now.saturating_add(lease);
        self.with_org(org, now, false, |leases| {
            let active = u32::try_from(leases.leases.len()).unwrap_or(u32::MAX);
            match leases.leases.get_mut(session) {
                Some(exp) => {
                    *exp = expires_at;
                    Ok(SessionLease::new(
                        org.clone(),
                        Arc::from(session),
                        expires_at,
                        active,
                        0,
                    ))
                }
                None => Err(SessionError::NotHeld),
            }
        })
        .unwrap_or(Err(SessionError::NotHeld))
    }

    fn release_sync(&self, org: &OrgId, session: &str, now: Timestamp) -> bool {
        self.with_org(org, now, false, |leases| {
            leases.leases.remove(session).is_some()
        })
        .unwrap_or(false)
    }

    fn active_sync(&self, org: &OrgId, now: Timestamp) -> u32 {
        self.with_org(org, now, false, |leases| {
            u32::try_from(leases.leases.len()).unwrap_or(u32::MAX)
        })
        .unwrap_or(0)
    }
}

impl SessionBackend for MemorySessions {
    async fn acquire(
        &self,
        org: &OrgId,
        session: &str,
        limit: u32,
        lease: Duration,
        now: Timestamp,
    ) -> Result<SessionLease, SessionError> {
        self.acquire_sync(org, session, limit, lease, now)
    }

    async fn renew(
        &self,
        org: &OrgId,
        session: &str,
        lease: Duration,
        now: Timestamp,
    ) -> Result<SessionLease, SessionError> {
        self.renew_sync(org, session, lease, now)
    }

    async fn release(
        &self,
        org: &OrgId,
        session: &str,
        now: Timestamp,
    ) -> Result<bool, SessionError> {
        Ok(self.release_sync(org, session, now))
    }

    async fn active(&self, org: &OrgId, now: Timestamp) -> Result<u32, SessionError> {
        Ok(self.active_sync(org, now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: u64) -> Timestamp {
        Timestamp::from_unix_secs(1_700_000_000 + secs)
    }

    const LEASE: Duration = Duration::from_secs(60);

    #[test]
    fn limit_release_and_idempotent_acquire() {
        let m = MemorySessions::new();
        let org = OrgId::from("org");
        for i in 0..3 {
            m.acquire_sync(&org, &format!("s{i}"), 3, LEASE, t(0))
                .unwrap();
        }
        // Re-acquiring a held id takes no second slot.
        let again = m.acquire_sync(&org, "s0", 3, LEASE, t(10)).unwrap();
        assert_eq!(again.active(), 3);
        assert_eq!(again.expires_at(), t(70));
        match m.acquire_sync(&org, "s3", 3, LEASE, t(10)) {
            Err(SessionError::LimitReached { limit, retry_after }) => {
                assert_eq!(limit, 3);
                assert_eq!(retry_after, 50); // s1 and s2 expire at t(60)
            }
            other => panic!("{other:?}"),
        }
        assert!(m.release_sync(&org, "s1", t(10)));
        assert!(!m.release_sync(&org, "s1", t(10)));
        m.acquire_sync(&org, "s3", 3, LEASE, t(10)).unwrap();
        assert_eq!(m.active_sync(&org, t(10)), 3);
    }

    #[test]
    fn expired_leases_are_reclaimed_and_cannot_be_renewed() {
        let m = MemorySessions::new();
        let org = OrgId::from("org");
        m.acquire_sync(&org, "a", 1, LEASE, t(0)).unwrap();
        assert!(m.acquire_sync(&org, "b", 1, LEASE, t(59)).is_err());
        m.renew_sync(&org, "a", LEASE, t(59)).unwrap();
        assert!(m.acquire_sync(&org, "b", 1, LEASE, t(118)).is_err());
        // a's renewed lease ran out at t(119).
        m.acquire_sync(&org, "b", 1, LEASE, t(119)).unwrap();
        assert!(matches!(
            m.renew_sync(&org, "a", LEASE, t(119)),
            Err(SessionError::NotHeld)
        ));
    }

    #[test]
    fn empty_orgs_are_removed_and_swept() {
        let m = MemorySessions::new();
        let a = OrgId::from("a");
        m.acquire_sync(&a, "s", 1, LEASE, t(0)).unwrap();
        assert!(m.release_sync(&a, "s", t(0)));
        assert_eq!(m.orgs(), 0);
        for i in 0..10 {
            let org = OrgId::from(format!("org_{i}"));
            m.acquire_sync(&org, "s", 1, LEASE, t(0)).unwrap();
        }
        assert_eq!(m.sweep(t(59)), 0);
        assert_eq!(m.sweep(t(60)), 10);
        assert_eq!(m.orgs(), 0);

        let m = MemorySessions::with_sweep_floor(16);
        let mut peak = 0;
        for i in 0..1000u64 {
            let org = OrgId::from(format!("org_{i}"));
            m.acquire_sync(&org, "s", 1, LEASE, t(i * 10)).unwrap();
            peak = peak.max(m.orgs());
        }
        assert!(peak <= 32, "peak {peak}");
    }

    #[test]
    fn concurrent_acquires_never_exceed_the_limit() {
        let m = MemorySessions::new();
        let org = OrgId::from("org");
        let granted = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for th in 0..4 {
                let (m, org, granted) = (&m, &org, &granted);
                s.spawn(move || {
                    for i in 0..200 {
                        let id = format!("{th}-{i}");
                        if m.acquire_sync(org, &id, 10, LEASE, t(0)).is_ok() {
                            granted.fetch_add(1, Ordering::Relaxed);
                            if i % 3 == 0 {
                                assert!(m.release_sync(org, &id, t(0)));
                                granted.fetch_sub(1, Ordering::Relaxed);
                            }
                        }
                    }
                });
            }
        });
        assert_eq!(granted.load(Ordering::Relaxed), 10);
        assert_eq!(m.active_sync(&org, t(0)), 10);
    }
}
