//! Redis backends (feature `redis`): [`RedisRateLimiter`], one request rate per organization
//! shared by every replica, and [`RedisSessions`](crate::RedisSessions), one concurrent-session count.
//!
//! With the in-memory backends each replica limits on its own, so three replicas let a Free
//! organization send 300 requests a minute. Over Redis they share one state: the 101st request
//! of the minute is refused whichever replica it reaches.
//!
//! # Use
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use tower_api_key::rate_limit::OnBackendError;
//! use tower_api_key::{RedisRateLimiter, RedisSessions};
//! use tower_api_key::{ApiKeyAuth, MemoryStore, OrgRateLimit, SessionQuota};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let store = MemoryStore::new();
//! // One multiplexed connection per replica; it reconnects by itself.
//! let limiter = RedisRateLimiter::connect("redis://127.0.0.1:6379").await?;
//! let sessions = SessionQuota::with_backend(RedisSessions::new(limiter.connection().clone()));
//!
//! let app: Router = Router::new()
//!     .route("/v1/browsers", get(|| async { "ok" }))
//!     .layer(
//!         OrgRateLimit::with_backend(limiter.clone())
//!             // Redis down or slow: limit each replica locally instead of answering 503.
//!             .on_backend_error(OnBackendError::FailOpen),
//!     )
//!     .layer(ApiKeyAuth::new(store));
//! # let _ = (app, sessions);
//! // Later: how often Redis failed and the local limiter stood in.
//! let stats = limiter.stats();
//! println!("{} errors, {} timeouts, {} local decisions", stats.errors, stats.timeouts, stats.fallbacks);
//! # Ok(()) }
//! ```
//!
//! # The algorithm: one Lua script, one round trip
//!
//! A check is one `EVALSHA` of a Lua script (loaded with `SCRIPT LOAD` on first use, or again
//! after a Redis restart, by [`redis::Script`]) that runs
//! [`Gcra::decide`](super::Gcra::decide) atomically on the organization's state: the same
//! integer arithmetic, so the Redis and memory backends give the same decisions and the same
//! `X-RateLimit-*` figures on the same trace (a test checks this on random traces). Lua numbers
//! are doubles: every quantity the script handles is an integer below 2^52, exact. Times are
//! nanoseconds for every quota whose period is shorter than about 52 days (2^52 ns of
//! capacity); longer periods are computed in microseconds, milliseconds or seconds, rounding
//! the emission interval up and the current time down, so the coarser figures are only ever
//! stricter. Quotas are never striped (one key is serialized by Redis anyway), so every quota
//! is exact to the cell, very large ones included. Time ends where it does in the memory
//! backend (a TAT is held at 2^63 − 1 ns, in 2262; see
//! [the GCRA at the extremes](super::gcra#at-the-extremes)), so a quota reaching past it is
//! held alike in both.
//!
//! A refusal writes nothing. An admission writes the new TAT and the quota it was decided
//! under, and sets the key to expire when the bucket is full again plus a grace period
//! ([`idle_grace`](RedisRateLimiter::idle_grace), 60 s by default): an idle organization leaves
//! nothing behind.
//!
//! **Plan changes** are handled as the memory backend does: the state remembers its quota, and
//! a request under another quota carries the *cells in use* over (a Free organization with 100
//! requests spent that upgrades to Paid has 900 left). The conversion is the memory backend's
//! own integer code, run in Rust: the script answers "this state was written under quota Q",
//! and the check sends it again with the converted state, which the script installs only if
//! the state is still the one converted (a compare-and-set). So the first request after a
//! plan change costs a second round trip; every other request costs one.
//!
//! A check costs one round trip and a short script; `benches/redis.rs` measures it beside a bare
//! `PING`.
//!
//! # Key layout (Redis Cluster)
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{tak:<org_id>}:rl` | hash `s`, `f`, `q` | the organization's TAT (seconds, fraction) and quota |
//! | `{tak:<org_id>}:rlp` | hash `q`, `n`, `s1`, `f1`, … | the same under several policies ([`Policies`]) |
//! | `{tak:<org_id>}:cr`, `…:cr:<key_id>` | hash | credit balances ([`RedisCredits`](crate::credits::RedisCredits)) |
//! | `{tak:<org_id>}:sess` | sorted set | session ids scored by lease expiry (Unix µs) |
//!
//! Keys are named by organization id only, never by an API key or its hash. The braces are a
//! [hash tag](https://redis.io/docs/latest/operate/oss_and_stack/reference/cluster-spec/#hash-tags):
//! every key of an organization lives in one slot, each script touches only its keys, and
//! organizations spread over the cluster's slots. `tak` is the default
//! [`prefix`](RedisRateLimiter::prefix); give each application (or test) its own.
//!
//! Both backends take any [`RedisConnection`]: a [`ConnectionManager`] for one Redis (the
//! default, and what `connect` builds), or, with the `redis` crate's `cluster-async` feature,
//! a `redis::cluster_async::ClusterConnection`, which routes each script to the node owning
//! its key (the tests run both backends on a three-node cluster).
//!
//! # Time: the caller's clock, not Redis's
//!
//! The layer passes the time it read from its [`Clock`](crate::Clock), and the script decides
//! at that time; Redis's `TIME` is not used. This keeps the backend deterministic (tests drive
//! it with a [`ManualClock`](crate::ManualClock), and it agrees with the memory backend
//! exactly), and costs nothing per check. The trade-off is clock skew between replicas: a
//! replica whose clock runs `δ` ahead sees `δ` more refill than the others (at most `δ / T`
//! extra cells, e.g. one Free request per 600 ms of skew), and one running behind is
//! correspondingly stricter. With NTP-synchronized hosts (skew of a few milliseconds) this is
//! far below one cell for every plan of the default table. Key expiry uses Redis's clock, which
//! is why it includes the [grace period](RedisRateLimiter::idle_grace): keep it above any
//! plausible skew.
//!
//! # When Redis is down or slow
//!
//! Each check is bounded by a [`timeout`](RedisRateLimiter::timeout) (50 ms by default). A
//! check that fails or times out returns an error, and the layer's
//! [`OnBackendError`](super::OnBackendError) policy decides:
//!
//! - [`FailClosed`](super::OnBackendError::FailClosed) (the layer's default): `503` with
//!   `Retry-After` (`auth_unavailable`; gRPC 14).
//! - [`FailOpen`](super::OnBackendError::FailOpen): the request is decided by a local
//!   [`MemoryRateLimiter`] inside this backend
//!   ([`RateLimitBackend::fallback`]), so each replica keeps limiting on its own (an
//!   organization may then get its quota once per replica) and admitted requests keep their
//!   headers.
//!
//! Either way the layer logs a warning (at most one line per second, with the count held
//! back) and the backend counts the failure ([`stats`](RedisRateLimiter::stats)). Checks go
//! through a [`Breaker`] ([`breaker`](RedisRateLimiter::breaker)): by default,
//! after one failure, checks skip Redis for a [`cooldown`](RedisRateLimiter::cooldown) (1 s on
//! the layer's clock) and fail at once, so an outage does not add the timeout to every request;
//! then one check probes Redis (the others still skip it), and the connection, which reconnects
//! by itself, is used again as soon as the probe is answered. A check that timed out may still
//! have been applied by Redis: the request then counts against the quota without having been
//! served by it, which errs on the strict side.
//!
//! Sessions have no fallback: [`RedisSessions`](crate::RedisSessions) answers [`SessionError::Unavailable`]
//! (`503`) when Redis fails, since a per-replica session count would silently multiply the
//! quota for as long as the sessions live.
//!
//! [`SessionError::Unavailable`]: crate::SessionError::Unavailable

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Duration;

use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, RedisError, Script, Value};

use crate::breaker::{Breaker, BreakerConfig, BreakerStats};
use crate::clock::{self, Timestamp};
use crate::headers::RateLimitInfo;
use crate::ids::OrgId;

use super::backend::{CheckResult, PoliciesCheck, RateLimitBackend, RateLimitError, Spend};
use super::gcra::{Decision, Decisions, Gcra, MAX_TAT};
use super::memory::{MemoryRateLimiter, carry_over, carry_over_many};
use super::policies::Policies;

/// The default key prefix: keys are `{tak:<org_id>}:rl` and `{tak:<org_id>}:sess`.
pub const DEFAULT_PREFIX: &str = "tak";

/// The default bound on one rate-limit check: 50 ms.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);

/// The default time checks skip Redis after it failed: one second.
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(1);

/// The default number of consecutive failures after which checks skip Redis: one. A check sits
/// on every request with a 50 ms budget and a local fallback, so one failure is enough to switch.
pub const DEFAULT_FAILURES: u32 = 1;

/// The default time a key outlives its content: 60 s.
pub const DEFAULT_IDLE_GRACE: Duration = Duration::from_secs(60);

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// How many times a check carries a state over to a new quota before giving up (another
/// replica converting it at the same time, or under yet another quota).
const MAX_CARRY: usize = 3;

static GCRA_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("gcra.lua")));
static REFUND_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("refund.lua")));
static GCRA_MANY_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("gcra_many.lua")));

/// Why a Redis backend call failed (the source of [`RateLimitError::Unavailable`] and
/// [`SessionError::Unavailable`](crate::SessionError::Unavailable)).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisBackendError {
    /// The driver failed: connection refused or lost, server error.
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
    /// A script answered something it never answers: another program wrote the key?
    #[error("unexpected reply from a Redis script")]
    BadReply,
    /// The stored rate-limit state is not in this crate's format.
    #[error("unreadable rate-limit state in Redis")]
    BadState,
    /// The state kept changing while being carried over to a new quota.
    #[error("rate-limit state kept changing quota while being carried over")]
    Contended,
}

/// Connect a [`ConnectionManager`] to `url` (`redis://host:port/db`), as the backends'
/// `connect` do: one multiplexed connection, reconnecting by itself (three attempts per
/// round, backing off exponentially from 100 ms; a request after a failed round starts
/// another). Fails if Redis cannot be reached now (within about a second).
pub async fn connect(url: &str) -> Result<ConnectionManager, RedisError> {
    let client = Client::open(url)?;
    let config = ConnectionManagerConfig::new()
        .set_number_of_retries(3)
        .set_max_delay(Duration::from_secs(1));
    ConnectionManager::new_with_config(client, config).await
}

/// `{<prefix>:<org>}:<suffix>`: one hash slot per organization.
pub(crate) fn org_key(prefix: &str, org: &OrgId, suffix: &str) -> String {
    let org = org.as_str();
    let mut key = String::with_capacity(prefix.len() + org.len() + suffix.len() + 4);
    key.push('{');
    key.push_str(prefix);
    key.push(':');
    key.push_str(org);
    key.push_str("}:");
    key.push_str(suffix);
    key
}

/// Counters of a [`RedisRateLimiter`], since it was built. See [`RedisRateLimiter::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisStats {
    /// Checks asked of the backend.
    pub checks: u64,
    /// Checks that failed with a Redis error (connection refused or lost, server error).
    pub errors: u64,
    /// Checks that took longer than the [timeout](RedisRateLimiter::timeout).
    pub timeouts: u64,
    /// Checks that did not try Redis because its breaker was open (it failed less than the
    /// [cooldown](RedisRateLimiter::cooldown) ago, or another check was probing it).
    pub skipped: u64,
    /// Decisions made by the local limiter instead (the layer failing open).
    pub fallbacks: u64,
    /// The breaker in front of Redis: its state, and how often it opened, refused and probed.
    pub breaker: BreakerStats,
}

#[derive(Default)]
struct Counters {
    checks: AtomicU64,
    errors: AtomicU64,
    timeouts: AtomicU64,
    skipped: AtomicU64,
    fallbacks: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

#[derive(Clone, Debug)]
struct Config {
    prefix: Arc<str>,
    timeout: Duration,
    breaker: BreakerConfig,
    grace_ms: u64,
}

/// What the backends need of a connection: any async `redis` connection that can be cloned
/// cheaply and shared, e.g. [`ConnectionManager`] (the default) or, with the `redis` crate's
/// `cluster-async` feature, `redis::cluster_async::ClusterConnection`.
pub trait RedisConnection: ConnectionLike + Clone + Send + Sync + 'static {}

impl<C: ConnectionLike + Clone + Send + Sync + 'static> RedisConnection for C {}

struct Inner<C> {
    conn: C,
    config: Config,
    local: MemoryRateLimiter,
    counters: Counters,
    /// Decides when checks skip Redis. Always given the layer's time (`*_at`); its own clock is
    /// read only for `stats`.
    breaker: Breaker,
}

impl<C> Inner<C> {
    fn new(conn: C, config: Config, local: MemoryRateLimiter) -> Self {
        let breaker = Self::breaker(&config);
        Self {
            conn,
            config,
            local,
            counters: Counters::default(),
            breaker,
        }
    }

    fn breaker(config: &Config) -> Breaker {
        Breaker::new(
            "redis rate limiter",
            config.breaker,
            clock::Clock::default(),
        )
    }
}

/// A [`RateLimitBackend`] on Redis: one GCRA state per organization shared by every replica,
/// decided by one Lua script in one round trip. See the [module docs](self).
///
/// Cheap to clone; clones share the connection, the counters and the local fallback limiter.
/// Configure it before cloning it (each setter called on a shared instance makes a new one
/// with fresh counters).
///
/// The [`Decision`]s it returns carry the organization's state after the decision as their
/// `tat`, never earlier than `now` (an idle state reads as `now`).
///
/// The connection is a [`ConnectionManager`] by default; any [`RedisConnection`] works, e.g. a
/// Redis Cluster connection (every script touches one key, routed by its hash tag).
pub struct RedisRateLimiter<C = ConnectionManager> {
    inner: Arc<Inner<C>>,
}

impl<C> Clone for RedisRateLimiter<C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<C: RedisConnection> fmt::Debug for RedisRateLimiter<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRateLimiter")
            .field("prefix", &self.inner.config.prefix)
            .field("timeout", &self.inner.config.timeout)
            .field("breaker", &self.inner.config.breaker)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl RedisRateLimiter<ConnectionManager> {
    /// Connect to `url` (`redis://host:port/db`) with [`connect`]. Fails if Redis cannot be
    /// reached now; once connected, the connection reconnects by itself.
    pub async fn connect(url: &str) -> Result<Self, RedisError> {
        Ok(Self::new(connect(url).await?))
    }
}

impl<C: RedisConnection> RedisRateLimiter<C> {
    /// A limiter over an existing connection (e.g. one shared with [`RedisSessions`](crate::RedisSessions) or the
    /// rest of the application), with the defaults: prefix `tak`, 50 ms timeout, 1 s cooldown,
    /// 60 s idle grace.
    pub fn new(conn: C) -> Self {
        let config = Config {
            prefix: Arc::from(DEFAULT_PREFIX),
            timeout: DEFAULT_TIMEOUT,
            breaker: BreakerConfig::default()
                .failures(DEFAULT_FAILURES)
                .cool_down(DEFAULT_COOLDOWN),
            grace_ms: millis(DEFAULT_IDLE_GRACE),
        };
        Self {
            inner: Arc::new(Inner::new(conn, config, MemoryRateLimiter::new())),
        }
    }

    fn map(mut self, f: impl FnOnce(&mut Config)) -> Self {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => {
                f(&mut inner.config);
                inner.breaker = Inner::<C>::breaker(&inner.config);
            }
            None => {
                let mut config = self.inner.config.clone();
                f(&mut config);
                self.inner = Arc::new(Inner::new(
                    self.inner.conn.clone(),
                    config,
                    self.inner.local.clone(),
                ));
            }
        }
        self
    }

    /// The key prefix (default `tak`): keys are `{<prefix>:<org_id>}:rl`. Applications sharing
    /// one Redis keep apart by their prefixes.
    pub fn prefix(self, prefix: &str) -> Self {
        let prefix = Arc::from(prefix);
        self.map(|c| c.prefix = prefix)
    }

    /// The bound on one check, round trip included (default 50 ms). Past it the check fails
    /// with [`RateLimitError::Timeout`] and the layer's policy applies.
    pub fn timeout(self, timeout: Duration) -> Self {
        self.map(|c| c.timeout = timeout)
    }

    /// How long, on the layer's clock, checks skip Redis once its [breaker](Self::breaker) has
    /// opened (default 1 s; zero tries Redis on every check). Sets the breaker's
    /// [cool-down](BreakerConfig::cool_down).
    pub fn cooldown(self, cooldown: Duration) -> Self {
        self.map(|c| c.breaker = c.breaker.cool_down(cooldown))
    }

    /// When checks skip Redis: after [`failures`](BreakerConfig::failures) consecutive failed
    /// or timed-out checks (default 1), for [`cool_down`](BreakerConfig::cool_down) on the
    /// layer's clock (default 1 s, as [`cooldown`](Self::cooldown)); then one check probes
    /// Redis while the others keep skipping it.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), redis::RedisError> {
    /// use std::time::Duration;
    /// use tower_api_key::{BreakerConfig, RedisRateLimiter};
    ///
    /// // Tolerate two blips in a row; then skip Redis for 2 s.
    /// let limiter = RedisRateLimiter::connect("redis://127.0.0.1:6379")
    ///     .await?
    ///     .breaker(BreakerConfig::default().failures(3).cool_down(Duration::from_secs(2)));
    /// # let _ = limiter; Ok(()) }
    /// ```
    pub fn breaker(self, breaker: BreakerConfig) -> Self {
        self.map(|c| c.breaker = breaker)
    }

    /// How long a key outlives its content (default 60 s): an organization's key expires this
    /// long after its bucket is full again. It absorbs clock skew between the replicas and
    /// Redis (expiry uses Redis's clock); keep it well above any plausible skew.
    pub fn idle_grace(self, grace: Duration) -> Self {
        self.map(|c| c.grace_ms = millis(grace))
    }

    /// The connection (clone it to share it with [`RedisSessions::new`](crate::RedisSessions::new)).
    pub fn connection(&self) -> &C {
        &self.inner.conn
    }

    /// The local limiter deciding while Redis is unavailable and the layer fails open.
    pub fn local(&self) -> &MemoryRateLimiter {
        &self.inner.local
    }

    /// The counters since this limiter was built (shared by its clones).
    pub fn stats(&self) -> RedisStats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RedisStats {
            checks: get(&c.checks),
            errors: get(&c.errors),
            timeouts: get(&c.timeouts),
            skipped: get(&c.skipped),
            fallbacks: get(&c.fallbacks),
            breaker: self.inner.breaker.stats(),
        }
    }

    /// The Redis key holding `org`'s state: `{<prefix>:<org_id>}:rl`.
    pub fn key(&self, org: &OrgId) -> String {
        org_key(&self.inner.config.prefix, org, "rl")
    }
}

impl<C: RedisConnection> RedisRateLimiter<C> {
    /// Run `call` on Redis through the breaker, bounded by the timeout, counted.
    fn guarded<T, F, Fut>(
        &self,
        now: Timestamp,
        call: F,
    ) -> Result<impl Future<Output = Result<T, RateLimitError>> + Send + 'static, RateLimitError>
    where
        T: Send + 'static,
        F: FnOnce(C) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, RedisBackendError>> + Send,
    {
        let inner = &*self.inner;
        bump(&inner.counters.checks);
        let permit = match inner.breaker.try_acquire_at(now) {
            // A check has a timeout of its own; dropped, it was cancelled by its request.
            Ok(permit) => permit.neutral_if_dropped(),
            Err(refused) => {
                bump(&inner.counters.skipped);
                return Err(RateLimitError::CircuitOpen(refused));
            }
        };
        let inner = self.inner.clone();
        Ok(async move {
            let conn = inner.conn.clone();
            match tokio::time::timeout(inner.config.timeout, call(conn)).await {
                Ok(Ok(decision)) => {
                    permit.success();
                    Ok(decision)
                }
                Ok(Err(error)) => {
                    if let RedisBackendError::Redis(_) = error {
                        bump(&inner.counters.errors);
                        permit.failure_at(now);
                    } else {
                        // Redis answered (with something unexpected): it is up.
                        permit.success();
                    }
                    Err(RateLimitError::unavailable(error))
                }
                Err(_) => {
                    bump(&inner.counters.timeouts);
                    permit.failure_at(now);
                    Err(RateLimitError::Timeout)
                }
            }
        })
    }

    /// Give back `cost` cells of each of `gcras` (the policies a request of `org` was admitted
    /// under) at `now`, now: what [`RateLimitBackend::refund`] sends in the background. Nothing
    /// changes if the state was since written under other policies.
    pub async fn refund_now(
        &self,
        org: &OrgId,
        gcras: &[Gcra],
        cost: u32,
        now: Timestamp,
    ) -> Result<(), RedisBackendError> {
        let (key, mode, q) = match gcras {
            [one] => (self.key(org), "one", quota_id(one)),
            _ => (self.policies_key(org), "many", set_id(gcras)),
        };
        let mut invocation = REFUND_SCRIPT.prepare_invoke();
        invocation.key(key).arg(mode).arg(q);
        for g in gcras {
            let c = Call::new(String::new(), g, cost, now, 0);
            let back = u64::from(cost)
                .saturating_mul(c.units.interval)
                .min(c.need_max);
            invocation
                .arg(c.units.per_sec())
                .arg(back)
                .arg(c.now_s)
                .arg(c.now_f)
                .arg(c.room);
        }
        let mut conn = self.inner.conn.clone();
        let _: i64 = invocation.invoke_async(&mut conn).await?;
        Ok(())
    }

    /// The Redis key holding `org`'s state under several policies: `{<prefix>:<org_id>}:rlp`.
    pub fn policies_key(&self, org: &OrgId) -> String {
        org_key(&self.inner.config.prefix, org, "rlp")
    }
}

impl<C: RedisConnection> RateLimitBackend for RedisRateLimiter<C> {
    type Check = RedisCheck;

    fn check(&self, org: &OrgId, gcra: &Gcra, cost: u32, now: Timestamp) -> RedisCheck {
        let mut call = Call::new(self.key(org), gcra, cost, now, self.inner.config.grace_ms);
        call.set_key = Some(self.policies_key(org));
        match self.guarded(
            now,
            move |mut conn| async move { call.run(&mut conn).await },
        ) {
            Ok(fut) => RedisCheck::pending(Box::pin(fut)),
            Err(e) => RedisCheck::ready(Err(e)),
        }
    }

    /// One `EVALSHA` of a second script over the organization's keys (one hash slot): every
    /// policy decided, and spent only if all admit the request.
    fn check_policies(
        &self,
        org: &OrgId,
        policies: &Arc<Policies>,
        cost: u32,
        now: Timestamp,
        spend: Spend,
    ) -> PoliciesCheck {
        let call = ManyCall::new(
            [self.policies_key(org), self.key(org)],
            policies,
            cost,
            now,
            spend,
            self.inner.config.grace_ms,
        );
        match self.guarded(
            now,
            move |mut conn| async move { call.run(&mut conn).await },
        ) {
            Ok(fut) => PoliciesCheck::pending(fut),
            Err(e) => PoliciesCheck::ready(Err(e)),
        }
    }

    /// One `EVALSHA` sent in the background (on the current tokio runtime; none, nothing is
    /// sent): each policy's TAT moves back by the request's cells, if its state is still
    /// written under the same policies. A failure is logged and otherwise ignored: the refund
    /// is a courtesy, the limit itself never depends on it.
    fn refund(&self, org: &OrgId, gcras: &[Gcra], cost: u32, now: Timestamp) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let this = self.clone();
        let (org, gcras) = (org.clone(), gcras.to_vec());
        runtime.spawn(async move {
            let timeout = this.inner.config.timeout;
            match tokio::time::timeout(timeout, this.refund_now(&org, &gcras, cost, now)).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::debug!(%error, "rate-limit refund not applied"),
                Err(_) => tracing::debug!("rate-limit refund timed out"),
            }
        });
    }

    /// Decide with the local [`MemoryRateLimiter`], counted in [`RedisStats::fallbacks`].
    fn fallback_policies(
        &self,
        org: &OrgId,
        policies: &Arc<Policies>,
        cost: u32,
        now: Timestamp,
        spend: Spend,
    ) -> Option<Decisions> {
        bump(&self.inner.counters.fallbacks);
        Some(
            self.inner
                .local
                .decide_policies(org, policies, cost, now, spend),
        )
    }

    /// Decide with the local [`MemoryRateLimiter`], counted in [`RedisStats::fallbacks`].
    fn fallback(&self, org: &OrgId, gcra: &Gcra, cost: u32, now: Timestamp) -> Option<Decision> {
        bump(&self.inner.counters.fallbacks);
        Some(self.inner.local.decide(org, gcra, cost, now))
    }
}

/// The future of [`RedisRateLimiter::check`]: ready at once while Redis is skipped, else the
/// boxed round trip (the allocation is noise next to the network).
pub struct RedisCheck(CheckState);

enum CheckState {
    Ready(Option<CheckResult>),
    Pending(Pin<Box<dyn Future<Output = CheckResult> + Send>>),
}

impl RedisCheck {
    fn ready(result: CheckResult) -> Self {
        Self(CheckState::Ready(Some(result)))
    }

    fn pending(fut: Pin<Box<dyn Future<Output = CheckResult> + Send>>) -> Self {
        Self(CheckState::Pending(fut))
    }
}

impl fmt::Debug for RedisCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            CheckState::Ready(_) => "RedisCheck::Ready",
            CheckState::Pending(_) => "RedisCheck::Pending",
        })
    }
}

impl Future for RedisCheck {
    type Output = CheckResult;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<CheckResult> {
        match &mut self.get_mut().0 {
            CheckState::Ready(result) => Poll::Ready(result.take().unwrap_or(Err(
                RateLimitError::unavailable("RedisCheck polled after completion"),
            ))),
            CheckState::Pending(fut) => fut.as_mut().poll(cx),
        }
    }
}

/// The units the script computes a quota in: nanoseconds unless its capacity would reach 2^52
/// of them (beyond which doubles are no longer exact).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Units {
    /// Nanoseconds per unit: 1, 1e3, 1e6 or 1e9 (so a second is a whole number of units).
    unit_ns: u64,
    /// The emission interval, in units, rounded up.
    interval: u64,
    /// `limit · interval`, in units.
    capacity: u64,
}

const EXACT_BELOW: u64 = 1 << 52;

impl Units {
    fn of(gcra: &Gcra) -> Self {
        let mut units = Self {
            unit_ns: 1,
            interval: 0,
            capacity: 0,
        };
        // In seconds every quota fits: the capacity is held at u64::MAX ns, as the memory
        // backend's, so it stays below 2^64 ns / 1e9 < 2^35 units.
        for unit_ns in [1, 1_000, 1_000_000, NANOS_PER_SEC] {
            let interval = gcra.interval_nanos().div_ceil(unit_ns);
            units = Self {
                unit_ns,
                interval,
                capacity: interval
                    .saturating_mul(gcra.limit())
                    .min(u64::MAX.div_ceil(unit_ns)),
            };
            if units.capacity < EXACT_BELOW {
                break;
            }
        }
        units
    }

    fn per_sec(&self) -> u64 {
        NANOS_PER_SEC / self.unit_ns
    }

    /// The end of time ([`MAX_TAT`]) as (whole seconds, units), rounded down.
    fn end(&self) -> (u64, u64) {
        self.split(MAX_TAT, false)
    }

    /// A time as (whole seconds, units) counted in units: below 2^64 for times up to
    /// [`MAX_TAT`].
    fn count(&self, (s, f): (u64, u64)) -> u64 {
        s * self.per_sec() + f
    }

    /// A time as (whole seconds, units of the second); the fraction rounded `up` or down.
    fn split(&self, t: u64, up: bool) -> (u64, u64) {
        let (s, frac) = (t / NANOS_PER_SEC, t % NANOS_PER_SEC);
        let f = if up {
            frac.div_ceil(self.unit_ns)
        } else {
            frac / self.unit_ns
        };
        if f == self.per_sec() {
            (s + 1, 0)
        } else {
            (s, f)
        }
    }
}

/// The `q` field: what identifies a quota (equal iff the `Gcra`s are equal).
fn quota_id(gcra: &Gcra) -> String {
    format!("{}:{}", gcra.limit(), gcra.period().as_nanos())
}

fn parse_quota_id(q: &str) -> Option<Gcra> {
    let (limit, period) = q.split_once(':')?;
    // Nanoseconds as u128: periods up to `Duration::MAX` are written exactly.
    let nanos: u128 = period.parse().ok()?;
    let secs = u64::try_from(nanos / u128::from(NANOS_PER_SEC)).ok()?;
    let period = Duration::new(secs, (nanos % u128::from(NANOS_PER_SEC)) as u32);
    Some(Gcra::new(limit.parse().ok()?, period))
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// One check's arguments, computed before the round trip.
struct Call {
    key: String,
    /// The organization's several-policy key, read when its one-policy state is absent.
    set_key: Option<String>,
    q: String,
    gcra: Gcra,
    units: Units,
    cost: u32,
    now: u64,
    now_s: u64,
    now_f: u64,
    /// Units from now to the end of time ([`MAX_TAT`]), capped at 2^52.
    room: u64,
    /// What a cost in units is held at: `u64::MAX` ns, as in the memory backend (capped at
    /// 2^52, which is above any capacity the script sees).
    need_max: u64,
    grace_ms: u64,
}

enum Reply {
    Decided {
        info: RateLimitInfo,
        allowed: bool,
        debt: u64,
    },
    WrittenUnder {
        s: String,
        f: String,
        q: String,
    },
    /// The organization's state is under several policies: the set's reply, as
    /// `gcra_many.lua` answers it (`q`, `k`, the 2k fields).
    WrittenUnderSet(Vec<Value>),
}

impl Call {
    fn new(key: String, gcra: &Gcra, cost: u32, now: Timestamp, grace_ms: u64) -> Self {
        let units = Units::of(gcra);
        // Readings past the end of time count as it, as in the memory backend.
        let now = now.as_unix_nanos().min(MAX_TAT);
        let (now_s, now_f) = units.split(now, false);
        let room = units
            .count(units.end())
            .saturating_sub(units.count((now_s, now_f)));
        Self {
            key,
            set_key: None,
            q: quota_id(gcra),
            gcra: *gcra,
            units,
            cost,
            now,
            now_s,
            now_f,
            room: room.min(EXACT_BELOW),
            need_max: u64::MAX.div_ceil(units.unit_ns).min(EXACT_BELOW),
            grace_ms,
        }
    }

    async fn run(&self, conn: &mut impl ConnectionLike) -> Result<Decision, RedisBackendError> {
        let mut carry: Option<Vec<String>> = None;
        for _ in 0..MAX_CARRY {
            let mut invocation = GCRA_SCRIPT.prepare_invoke();
            invocation.key(&self.key);
            if let Some(set_key) = &self.set_key {
                invocation.key(set_key);
            }
            invocation
                .arg(&self.q)
                .arg(self.units.per_sec())
                .arg(self.gcra.limit())
                .arg(self.units.interval)
                .arg(self.units.capacity)
                .arg(self.gcra.never_secs())
                .arg(self.cost)
                .arg(self.now_s)
                .arg(self.now_f)
                .arg(self.grace_ms)
                .arg(self.room)
                .arg(self.need_max);
            if let Some(carry) = &carry {
                invocation.arg(&carry[..]);
            }
            let reply: Vec<Value> = invocation.invoke_async(conn).await?;
            match parse_reply(reply)? {
                Reply::Decided {
                    info,
                    allowed,
                    debt,
                } => {
                    let start = self.now_s * NANOS_PER_SEC + self.now_f * self.units.unit_ns;
                    let tat = start.saturating_add(debt.saturating_mul(self.units.unit_ns));
                    return Ok(Decision {
                        allowed,
                        tat: Timestamp::from_unix_nanos(tat),
                        info: RateLimitInfo {
                            limit: self.gcra.limit(),
                            ..info
                        },
                    });
                }
                Reply::WrittenUnder { s, f, q } => {
                    carry = Some(self.carry(s, f, q)?.to_vec());
                }
                Reply::WrittenUnderSet(state) => {
                    let set = SetState::read(state)?;
                    let tat = carry_over_many(&set.from, &set.tats, self.now, &[self.gcra]);
                    let tat = tat.first().copied().unwrap_or(0);
                    let (new_s, new_f) = self.units.split(tat, true);
                    let mut args = vec!["set".to_owned()];
                    args.extend(set.expected);
                    args.push(new_s.to_string());
                    args.push(new_f.to_string());
                    carry = Some(args);
                }
            }
        }
        Err(RedisBackendError::Contended)
    }

    /// The carry arguments: the state as read, and the same cells in use under this quota.
    fn carry(&self, s: String, f: String, q: String) -> Result<[String; 5], RedisBackendError> {
        let from = parse_quota_id(&q).ok_or(RedisBackendError::BadState)?;
        let secs: u64 = s.parse().map_err(|_| RedisBackendError::BadState)?;
        let frac: u64 = f.parse().map_err(|_| RedisBackendError::BadState)?;
        let from_units = Units::of(&from);
        // A TAT held at the end of time reads as held, whatever the unit rounded it to.
        let tat = if (secs, frac) >= from_units.end() {
            MAX_TAT
        } else {
            secs.saturating_mul(NANOS_PER_SEC)
                .saturating_add(frac.saturating_mul(from_units.unit_ns))
        };
        let carried = carry_over(tat, self.now, &from, &self.gcra);
        // Rounded up: the carried state is never looser than the memory backend's.
        let (new_s, new_f) = self.units.split(carried, true);
        Ok([s, f, q, new_s.to_string(), new_f.to_string()])
    }
}

/// One several-policy check's arguments, computed before the round trip.
struct ManyCall {
    keys: [String; 2],
    q: String,
    gcras: Vec<Gcra>,
    calls: Vec<Call>,
    cost: u32,
    now: u64,
    commit: bool,
    grace_ms: u64,
}

/// `q` of a set: the quota ids of its policies, in order.
fn set_id(gcras: &[Gcra]) -> String {
    gcras.iter().map(quota_id).collect::<Vec<_>>().join(",")
}

impl ManyCall {
    fn new(
        keys: [String; 2],
        policies: &Policies,
        cost: u32,
        now: Timestamp,
        spend: Spend,
        grace_ms: u64,
    ) -> Self {
        let gcras: Vec<Gcra> = policies.rates().iter().map(|r| *r.gcra()).collect();
        let calls = gcras
            .iter()
            .map(|g| Call::new(String::new(), g, cost, now, grace_ms))
            .collect();
        Self {
            keys,
            q: set_id(&gcras),
            gcras,
            calls,
            cost,
            now: now.as_unix_nanos().min(MAX_TAT),
            commit: spend == Spend::Commit,
            grace_ms,
        }
    }

    async fn run(&self, conn: &mut impl ConnectionLike) -> Result<Decisions, RedisBackendError> {
        let mut carry: Option<Vec<String>> = None;
        for _ in 0..MAX_CARRY {
            let mut invocation = GCRA_MANY_SCRIPT.prepare_invoke();
            invocation
                .key(&self.keys[0])
                .key(&self.keys[1])
                .arg(&self.q)
                .arg(self.calls.len())
                .arg(self.cost)
                .arg(self.grace_ms)
                .arg(u8::from(self.commit));
            for c in &self.calls {
                invocation
                    .arg(c.units.per_sec())
                    .arg(c.gcra.limit())
                    .arg(c.units.interval)
                    .arg(c.units.capacity)
                    .arg(c.gcra.never_secs())
                    .arg(c.now_s)
                    .arg(c.now_f)
                    .arg(c.room)
                    .arg(c.need_max);
            }
            if let Some(carry) = &carry {
                invocation.arg(&carry[..]);
            }
            let reply: Vec<Value> = invocation.invoke_async(conn).await?;
            let tag = reply
                .first()
                .and_then(int)
                .ok_or(RedisBackendError::BadReply)?;
            if tag == 2 {
                carry = Some(self.carry(reply)?);
                continue;
            }
            return self.decisions(tag == 1, &reply[1..]);
        }
        Err(RedisBackendError::Contended)
    }

    fn decisions(&self, allowed: bool, rest: &[Value]) -> Result<Decisions, RedisBackendError> {
        if rest.len() != 5 * self.calls.len() {
            return Err(RedisBackendError::BadReply);
        }
        let mut each = smallvec::SmallVec::new();
        for (c, chunk) in self.calls.iter().zip(rest.chunks(5)) {
            let n: Vec<u64> = chunk
                .iter()
                .map(int)
                .collect::<Option<_>>()
                .ok_or(RedisBackendError::BadReply)?;
            let start = c.now_s * NANOS_PER_SEC + c.now_f * c.units.unit_ns;
            let tat = start.saturating_add(n[4].saturating_mul(c.units.unit_ns));
            each.push(Decision {
                allowed: n[0] == 1,
                tat: Timestamp::from_unix_nanos(tat),
                info: RateLimitInfo {
                    limit: c.gcra.limit(),
                    remaining: n[1],
                    reset: n[2],
                    retry_after: n[3],
                },
            });
        }
        Ok(Decisions::from_parts(allowed, each))
    }

    /// The carry arguments: the state as read, and the cells in use carried to these
    /// policies exactly as the memory backend carries them.
    fn carry(&self, reply: Vec<Value>) -> Result<Vec<String>, RedisBackendError> {
        let set = SetState::read(reply.into_iter().skip(1).collect())?;
        let carried = carry_over_many(&set.from, &set.tats, self.now, &self.gcras);
        let mut args = set.expected;
        for (c, tat) in self.calls.iter().zip(carried) {
            // Rounded up: never looser than the memory backend's.
            let (s, f) = c.units.split(tat, true);
            args.push(s.to_string());
            args.push(f.to_string());
        }
        Ok(args)
    }
}

/// A several-policy state as a script answers it: `q`, `k`, then `s`, `f` of each policy.
struct SetState {
    from: Vec<Gcra>,
    /// The TATs in nanoseconds.
    tats: Vec<u64>,
    /// `q`, `k` and the fields as read: what the carry compares before installing.
    expected: Vec<String>,
}

impl SetState {
    fn read(reply: Vec<Value>) -> Result<Self, RedisBackendError> {
        let mut it = reply.into_iter();
        let mut next = || {
            it.next()
                .and_then(string_or_int)
                .ok_or(RedisBackendError::BadState)
        };
        let q = next()?;
        let k: usize = next()?.parse().map_err(|_| RedisBackendError::BadState)?;
        let from: Vec<Gcra> = q
            .split(',')
            .map(parse_quota_id)
            .collect::<Option<_>>()
            .ok_or(RedisBackendError::BadState)?;
        if from.len() != k {
            return Err(RedisBackendError::BadState);
        }
        let mut expected = vec![q, k.to_string()];
        let mut tats = Vec::with_capacity(k);
        for g in &from {
            let (s, f) = (next()?, next()?);
            let secs: u64 = s.parse().map_err(|_| RedisBackendError::BadState)?;
            let frac: u64 = f.parse().map_err(|_| RedisBackendError::BadState)?;
            let units = Units::of(g);
            tats.push(if (secs, frac) >= units.end() {
                MAX_TAT
            } else {
                secs.saturating_mul(NANOS_PER_SEC)
                    .saturating_add(frac.saturating_mul(units.unit_ns))
            });
            expected.push(s);
            expected.push(f);
        }
        Ok(Self {
            from,
            tats,
            expected,
        })
    }
}

fn string_or_int(v: Value) -> Option<String> {
    match v {
        Value::Int(i) => Some(i.to_string()),
        other => string(other),
    }
}

fn int(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        _ => None,
    }
}

fn string(v: Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

fn parse_reply(reply: Vec<Value>) -> Result<Reply, RedisBackendError> {
    let bad = RedisBackendError::BadReply;
    let mut it = reply.into_iter();
    let tag = it.next().as_ref().and_then(int).ok_or(bad)?;
    if tag == 3 {
        return Ok(Reply::WrittenUnderSet(it.collect()));
    }
    if tag == 2 {
        let mut next = || {
            it.next()
                .and_then(string)
                .ok_or(RedisBackendError::BadState)
        };
        let (s, f, q) = (next()?, next()?, next()?);
        return Ok(Reply::WrittenUnder { s, f, q });
    }
    let rest: Vec<u64> = it
        .map(|v| int(&v))
        .collect::<Option<_>>()
        .ok_or(RedisBackendError::BadReply)?;
    match rest[..] {
        [remaining, reset, retry_after, debt] if tag <= 1 => Ok(Reply::Decided {
            allowed: tag == 1,
            debt,
            info: RateLimitInfo {
                limit: 0,
                remaining,
                reset,
                retry_after,
            },
        }),
        _ => Err(RedisBackendError::BadReply),
    }
}
