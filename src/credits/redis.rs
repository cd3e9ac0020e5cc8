//! [`RedisCredits`]: balances shared by replicas, one Lua script per operation.

use std::fmt;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use ::redis::aio::ConnectionManager;
use ::redis::{RedisError, Script, Value};

use super::{Account, Balance, CreditBackend, CreditError, Refill, SECS_PER_DAY, civil_from_days};
use crate::clock::Timestamp;
use crate::ids::{KeyId, OrgId};
use crate::rate_limit::redis::{
    DEFAULT_PREFIX, RedisBackendError, RedisConnection, connect, org_key,
};

static CREDITS: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("credits.lua")));
static SET: LazyLock<Script> = LazyLock::new(|| {
    Script::new("redis.call('DEL', KEYS[1]) return redis.call('HSET', KEYS[1], unpack(ARGV))")
});

/// The largest balance stored: 2^53 − 1, the largest integer a Lua double holds exactly.
pub const MAX_BALANCE: u64 = (1 << 53) - 1;

/// The default bound on one credit operation: 250 ms.
pub const DEFAULT_CREDIT_TIMEOUT: Duration = Duration::from_millis(250);

/// A [`CreditBackend`] on Redis: each account is a hash, `{<prefix>:<org_id>}:cr` for an
/// organization and `{<prefix>:<org_id>}:cr:<key_id>` for a key, so both accounts of a call
/// share one hash slot and one script reads, refills and spends atomically (one round trip):
/// the balance never goes below zero, whatever replicas spend at once. Balances are held at
/// [`MAX_BALANCE`]. Time is the caller's, as for the rate limiter. Accounts never expire.
///
/// ```no_run
/// use tower_api_key::credits::{Account, Credits, RedisCredits, Refill};
/// use tower_api_key::OrgId;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let credits = Credits::with_backend(RedisCredits::connect("redis://127.0.0.1:6379").await?);
/// credits.set(Account::Org(&OrgId::from("org_1")), 10_000, Refill::Daily).await?;
/// # Ok(()) }
/// ```
pub struct RedisCredits<C = ConnectionManager> {
    conn: C,
    prefix: Arc<str>,
    timeout: Duration,
}

impl<C: Clone> Clone for RedisCredits<C> {
    fn clone(&self) -> Self {
        Self {
            conn: self.conn.clone(),
            prefix: self.prefix.clone(),
            timeout: self.timeout,
        }
    }
}

impl<C> fmt::Debug for RedisCredits<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCredits")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisCredits<ConnectionManager> {
    /// Connect to `url` (`redis://host:port/db`).
    pub async fn connect(url: &str) -> Result<Self, RedisError> {
        Ok(Self::new(connect(url).await?))
    }
}

impl<C: RedisConnection> RedisCredits<C> {
    /// Balances over an existing connection, prefix `tak`, 250 ms timeout.
    pub fn new(conn: C) -> Self {
        Self {
            conn,
            prefix: Arc::from(DEFAULT_PREFIX),
            timeout: DEFAULT_CREDIT_TIMEOUT,
        }
    }

    /// The key prefix (default `tak`).
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.prefix = Arc::from(prefix);
        self
    }

    /// The bound on one operation (default 250 ms); past it, [`CreditError::Unavailable`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The Redis key of an account.
    pub fn key(&self, account: Account<'_>) -> String {
        match account {
            Account::Org(org) => org_key(&self.prefix, org, "cr"),
            Account::Key { org, key } => org_key(&self.prefix, org, &format!("cr:{key}")),
        }
    }

    async fn run(
        &self,
        keys: [String; 2],
        op: &str,
        n: u64,
        now: Timestamp,
    ) -> Result<Option<(bool, Balance)>, CreditError> {
        let days = now.as_unix_secs() / SECS_PER_DAY;
        let (y, m, d) = civil_from_days(days);
        let mut invocation = CREDITS.prepare_invoke();
        invocation
            .key(&keys[0])
            .key(&keys[1])
            .arg(op)
            .arg(n.min(MAX_BALANCE))
            .arg(days)
            .arg(y * 12 + m - 1)
            .arg(d);
        let mut conn = self.conn.clone();
        let reply: Vec<Value> =
            match tokio::time::timeout(self.timeout, invocation.invoke_async(&mut conn)).await {
                Ok(r) => r.map_err(|e| CreditError::unavailable(RedisBackendError::Redis(e)))?,
                Err(_) => return Err(CreditError::unavailable("credit operation timed out")),
            };
        parse(&reply).map_err(CreditError::unavailable)
    }
}

fn parse(reply: &[Value]) -> Result<Option<(bool, Balance)>, RedisBackendError> {
    let int = |v: &Value| match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        _ => None,
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok().map(str::to_owned),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    match reply {
        [Value::Int(-1)] => Ok(None),
        [ok, b, a, r, d] => {
            let refill = match text(r).as_deref() {
                Some("never") => Refill::Never,
                Some("daily") => Refill::Daily,
                Some("monthly") => Refill::Monthly {
                    day: int(d)
                        .and_then(|d| u8::try_from(d).ok())
                        .ok_or(RedisBackendError::BadState)?,
                },
                _ => return Err(RedisBackendError::BadState),
            };
            let balance = Balance {
                balance: int(b).ok_or(RedisBackendError::BadReply)?,
                amount: int(a).ok_or(RedisBackendError::BadReply)?,
                refill,
            };
            Ok(Some((int(ok) == Some(1), balance)))
        }
        _ => Err(RedisBackendError::BadReply),
    }
}

impl<C: RedisConnection> CreditBackend for RedisCredits<C> {
    async fn set(
        &self,
        account: Account<'_>,
        amount: u64,
        refill: Refill,
        now: Timestamp,
    ) -> Result<(), CreditError> {
        refill.check()?;
        let amount = amount.min(MAX_BALANCE).to_string();
        let (r, d) = match refill {
            Refill::Never => ("never", 0),
            Refill::Daily => ("daily", 0),
            Refill::Monthly { day } => ("monthly", day),
        };
        let period = refill
            .period(now)
            .map_or_else(|| "-".to_owned(), |p| p.to_string());
        let mut invocation = SET.prepare_invoke();
        invocation.key(self.key(account)).arg(&[
            "b",
            &amount,
            "a",
            &amount,
            "r",
            r,
            "d",
            &d.to_string(),
            "p",
            &period,
        ]);
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.timeout, invocation.invoke_async::<i64>(&mut conn)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(CreditError::unavailable(RedisBackendError::Redis(e))),
            Err(_) => Err(CreditError::unavailable("credit operation timed out")),
        }
    }

    async fn spend(
        &self,
        org: &OrgId,
        key: &KeyId,
        cost: u64,
        now: Timestamp,
    ) -> Result<Option<u64>, CreditError> {
        let keys = [
            self.key(Account::Key { org, key }),
            self.key(Account::Org(org)),
        ];
        match self.run(keys, "spend", cost, now).await? {
            None => Ok(None),
            Some((true, b)) => Ok(Some(b.balance)),
            Some((false, b)) => Err(CreditError::Exhausted {
                balance: b.balance,
                retry_after: b.refill.secs_to_next(now),
            }),
        }
    }

    async fn refund(
        &self,
        org: &OrgId,
        key: &KeyId,
        amount: u64,
        now: Timestamp,
    ) -> Result<(), CreditError> {
        let keys = [
            self.key(Account::Key { org, key }),
            self.key(Account::Org(org)),
        ];
        self.run(keys, "refund", amount, now).await.map(|_| ())
    }

    async fn peek(
        &self,
        account: Account<'_>,
        now: Timestamp,
    ) -> Result<Option<Balance>, CreditError> {
        let key = self.key(account);
        Ok(self
            .run([key.clone(), key], "peek", 0, now)
            .await?
            .map(|(_, b)| b))
    }
}
