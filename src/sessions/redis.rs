//! [`RedisSessions`]: concurrent-session leases shared by replicas.

use std::fmt;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use ::redis::aio::ConnectionManager;
use ::redis::{FromRedisValue, RedisError, Script, ScriptInvocation};

use super::{SessionBackend, SessionError, SessionLease};
use crate::clock::Timestamp;
use crate::ids::OrgId;
use crate::rate_limit::redis::{
    DEFAULT_IDLE_GRACE, DEFAULT_PREFIX, RedisBackendError, RedisConnection, connect, millis,
    org_key,
};

/// The default bound on one session operation: 250 ms (sessions are created far less often
/// than requests are made, and a failure is a `503`, so this one is less tight).
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_millis(250);

static ACQUIRE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("session_acquire.lua")));
static RENEW: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("session_renew.lua")));
static RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("session_release.lua")));

const NANOS_PER_MICRO: u64 = 1_000;
const MICROS_PER_SEC: u64 = 1_000_000;

/// A [`SessionBackend`] on Redis: each organization's leases are one sorted set
/// (`{<prefix>:<org_id>}:sess`) of session ids scored by expiry, so every replica counts the
/// same sessions. Each operation is one Lua script, one round trip: acquiring removes the
/// expired leases, checks the count against the limit and adds the lease atomically, so the
/// limit holds however many replicas acquire at once.
///
/// Leases are measured to the microsecond (the scores are Unix microseconds, exact in a
/// double). The key expires when its last lease does, plus the
/// [idle grace](Self::idle_grace). Time is the caller's (the [`SessionQuota`]'s clock), as for
/// [`RedisRateLimiter`](crate::RedisRateLimiter): see the [module docs](crate::rate_limit::redis) for the
/// trade-off. A Redis failure or [timeout](Self::timeout) is [`SessionError::Unavailable`].
///
/// ```no_run
/// use std::time::Duration;
/// use tower_api_key::RedisSessions;
/// use tower_api_key::{OrgId, SessionQuota};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let sessions = SessionQuota::with_backend(RedisSessions::connect("redis://127.0.0.1:6379").await?);
/// let org = OrgId::from("org_1");
/// let lease = sessions.acquire_for(&org, 10, "sess_1", Duration::from_secs(300)).await?;
/// assert_eq!(lease.session_id(), "sess_1");
/// sessions.release(&org, "sess_1").await?;
/// # Ok(()) }
/// ```
///
/// The connection is a [`ConnectionManager`] by default; any [`RedisConnection`] works (e.g.
/// Redis Cluster).
///
/// [`SessionQuota`]: crate::SessionQuota
#[derive(Clone)]
pub struct RedisSessions<C = ConnectionManager> {
    conn: C,
    prefix: Arc<str>,
    timeout: Duration,
    grace_ms: u64,
}

impl<C> fmt::Debug for RedisSessions<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSessions")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("idle_grace", &Duration::from_millis(self.grace_ms))
            .finish_non_exhaustive()
    }
}

impl RedisSessions<ConnectionManager> {
    /// Connect to `url` with [`connect`]. Fails if Redis cannot be reached
    /// now; once connected, the connection reconnects by itself.
    pub async fn connect(url: &str) -> Result<Self, RedisError> {
        Ok(Self::new(connect(url).await?))
    }
}

impl<C: RedisConnection> RedisSessions<C> {
    /// Leases over an existing connection, with the defaults: prefix `tak`, 250 ms timeout,
    /// 60 s idle grace.
    pub fn new(conn: C) -> Self {
        Self {
            conn,
            prefix: Arc::from(DEFAULT_PREFIX),
            timeout: DEFAULT_SESSION_TIMEOUT,
            grace_ms: millis(DEFAULT_IDLE_GRACE),
        }
    }

    /// The key prefix (default `tak`): keys are `{<prefix>:<org_id>}:sess`.
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.prefix = Arc::from(prefix);
        self
    }

    /// The bound on one operation, round trip included (default 250 ms).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long an organization's key outlives its last lease (default 60 s).
    pub fn idle_grace(mut self, grace: Duration) -> Self {
        self.grace_ms = millis(grace);
        self
    }

    /// The Redis key holding `org`'s leases: `{<prefix>:<org_id>}:sess`.
    pub fn key(&self, org: &OrgId) -> String {
        org_key(&self.prefix, org, "sess")
    }

    async fn bounded<T>(
        &self,
        op: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, SessionError> {
        match tokio::time::timeout(self.timeout, op).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(SessionError::unavailable(RedisBackendError::Redis(e))),
            Err(_) => Err(SessionError::unavailable(
                "Redis session operation timed out",
            )),
        }
    }

    async fn invoke<T: FromRedisValue>(
        &self,
        invocation: ScriptInvocation<'static>,
    ) -> Result<T, SessionError> {
        let mut conn = self.conn.clone();
        self.bounded(async move { invocation.invoke_async(&mut conn).await })
            .await
    }
}

fn micros(t: Timestamp) -> u64 {
    t.as_unix_nanos() / NANOS_PER_MICRO
}

fn bad_reply() -> SessionError {
    SessionError::unavailable(RedisBackendError::BadReply)
}

fn count(n: i64) -> u32 {
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}

impl<C: RedisConnection> SessionBackend for RedisSessions<C> {
    async fn acquire(
        &self,
        org: &OrgId,
        session: &str,
        limit: u32,
        lease: Duration,
        now: Timestamp,
    ) -> Result<SessionLease, SessionError> {
        let expires_at = now.saturating_add(lease);
        let mut invocation = ACQUIRE.prepare_invoke();
        invocation
            .key(self.key(org))
            .arg(micros(now))
            .arg(micros(expires_at))
            .arg(limit)
            .arg(session)
            .arg(self.grace_ms);
        let reply: Vec<i64> = self.invoke(invocation).await?;
        match reply[..] {
            [1, active] => Ok(SessionLease::new(
                org.clone(),
                Arc::from(session),
                expires_at,
                count(active),
                limit,
            )),
            [0, _, wait_us] => Err(SessionError::LimitReached {
                limit: u64::from(limit),
                retry_after: u64::try_from(wait_us)
                    .unwrap_or(0)
                    .div_ceil(MICROS_PER_SEC)
                    .max(1),
            }),
            _ => Err(bad_reply()),
        }
    }

    async fn renew(
        &self,
        org: &OrgId,
        session: &str,
        lease: Duration,
        now: Timestamp,
    ) -> Result<SessionLease, SessionError> {
        let expires_at = now.saturating_add(lease);
        let mut invocation = RENEW.prepare_invoke();
        invocation
            .key(self.key(org))
            .arg(micros(now))
            .arg(micros(expires_at))
            .arg(session)
            .arg(self.grace_ms);
        let reply: Vec<i64> = self.invoke(invocation).await?;
        match reply[..] {
            [1, active] => Ok(SessionLease::new(
                org.clone(),
                Arc::from(session),
                expires_at,
                count(active),
                0,
            )),
            [0] => Err(SessionError::NotHeld),
            _ => Err(bad_reply()),
        }
    }

    async fn release(
        &self,
        org: &OrgId,
        session: &str,
        now: Timestamp,
    ) -> Result<bool, SessionError> {
        let mut invocation = RELEASE.prepare_invoke();
        invocation.key(self.key(org)).arg(micros(now)).arg(session);
        let removed: i64 = self.invoke(invocation).await?;
        Ok(removed > 0)
    }

    async fn active(&self, org: &OrgId, now: Timestamp) -> Result<u32, SessionError> {
        let mut conn = self.conn.clone();
        let key = self.key(org);
        // Live leases: expiry strictly after now. Read-only; expired ones go on the next write.
        let live: i64 = self
            .bounded(async move {
                ::redis::cmd("ZCOUNT")
                    .arg(key)
                    .arg(format!("({}", micros(now)))
                    .arg("+inf")
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(count(live))
    }
}
