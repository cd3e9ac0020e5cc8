//! [`PgCredits`]: balances in PostgreSQL, each operation one statement.

use std::fmt;

use sqlx::PgPool;

use super::{Account, Balance, CreditBackend, CreditError, Refill, SECS_PER_DAY, civil_from_days};
use crate::clock::Timestamp;
use crate::ids::{KeyId, OrgId};

/// The refill period of a row at the time bound as `$days`, `$months`, `$dom`: what
/// [`Refill::period`] computes, in SQL (NULL for `never`).
const PERIOD: &str = "(CASE refill WHEN 'daily' THEN $3::BIGINT \
     WHEN 'monthly' THEN $4::BIGINT - (CASE WHEN $5::BIGINT < refill_day THEN 1 ELSE 0 END) \
     ELSE NULL END)";

/// A [`CreditBackend`] on PostgreSQL (table `api_key_credits`, created by
/// [`PostgresStore::migrate`](crate::store::PostgresStore::migrate), migration 3).
///
/// A spend is one `UPDATE … WHERE balance >= cost RETURNING balance` on the paying account's
/// row (the key's if it has one, else the organization's), refill included: PostgreSQL locks
/// the row and re-checks the condition on the newest version under concurrent updates, so the
/// balance never goes below zero (a `CHECK` constraint guards it too) and replicas sharing the
/// database share the balance. Spends are not batched: each is its own decision, which a
/// batch could only delay. The balance shown in a refusal is read after the refused update.
///
/// ```no_run
/// use tower_api_key::credits::{Account, Credits, PgCredits, Refill};
/// use tower_api_key::{OrgId, store::PostgresStore};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let store = PostgresStore::connect("postgres://localhost/app").await?;
/// store.migrate().await?;
/// let credits = Credits::with_backend(PgCredits::new(store.pool().clone()));
/// credits.set(Account::Org(&OrgId::from("org_1")), 1_000, Refill::Monthly { day: 1 }).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PgCredits {
    pool: PgPool,
}

impl fmt::Debug for PgCredits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgCredits").finish_non_exhaustive()
    }
}

fn db_err(e: sqlx::Error) -> CreditError {
    CreditError::unavailable(e)
}

/// (days since 1970, months since year 0, day of the month) of `now`.
fn calendar(now: Timestamp) -> (i64, i64, i64) {
    let days = now.as_unix_secs() / SECS_PER_DAY;
    let (y, m, d) = civil_from_days(days);
    let i = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    (i(days), i(y * 12 + m - 1), i(d))
}

fn to_db(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn from_db(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn refill_of(kind: &str, day: i16) -> Result<Refill, CreditError> {
    match kind {
        "never" => Ok(Refill::Never),
        "daily" => Ok(Refill::Daily),
        "monthly" => Ok(Refill::Monthly {
            day: u8::try_from(day).map_err(|_| CreditError::InvalidRefillDay(0))?,
        }),
        _ => Err(CreditError::unavailable(
            "unknown refill kind in api_key_credits",
        )),
    }
}

impl PgCredits {
    /// Balances in the database of `pool` (migrated by `PostgresStore::migrate`).
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The paying account's row, refilled at `now` and changed by `change` (a SQL expression
    /// of `b`, the refilled balance, and `$6`), if `condition` (on `b`) holds. Returns the new
    /// balance, or `None` if no row matched.
    async fn update(
        &self,
        accounts: [String; 2],
        change: &str,
        condition: &str,
        n: u64,
        now: Timestamp,
    ) -> Result<Option<i64>, CreditError> {
        let (days, months, dom) = calendar(now);
        let due = format!("({PERIOD} IS NOT NULL AND (period IS NULL OR {PERIOD} > period))");
        let b = format!("(CASE WHEN {due} THEN GREATEST(balance, amount) ELSE balance END)");
        let sql = format!(
            "UPDATE api_key_credits SET \
               balance = {change_b}, \
               period = CASE WHEN {due} THEN {PERIOD} ELSE period END, \
               updated_at = $7 \
             WHERE account = (SELECT account FROM api_key_credits \
                              WHERE account IN ($1, $2) ORDER BY account = $1 DESC LIMIT 1) \
               AND {condition_b} \
             RETURNING balance",
            change_b = change.replace("{b}", &b),
            condition_b = condition.replace("{b}", &b),
        );
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(&accounts[0])
            .bind(&accounts[1])
            .bind(days)
            .bind(months)
            .bind(dom)
            .bind(to_db(n))
            .bind(to_db(now.as_unix_nanos()))
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)
    }

    /// The paying account's balance as a refill at `now` leaves it, without writing.
    async fn read(
        &self,
        accounts: [String; 2],
        now: Timestamp,
    ) -> Result<Option<Balance>, CreditError> {
        let (days, months, dom) = calendar(now);
        let sql = format!(
            "SELECT CASE WHEN {PERIOD} IS NOT NULL AND (period IS NULL OR {PERIOD} > period) \
                    THEN GREATEST(balance, amount) ELSE balance END, amount, refill, refill_day \
             FROM api_key_credits WHERE account IN ($1, $2) \
             ORDER BY account = $1 DESC LIMIT 1"
        );
        let row: Option<(i64, i64, String, i16)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(&accounts[0])
            .bind(&accounts[1])
            .bind(days)
            .bind(months)
            .bind(dom)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        row.map(|(balance, amount, kind, day)| {
            Ok(Balance {
                balance: from_db(balance),
                amount: from_db(amount),
                refill: refill_of(&kind, day)?,
            })
        })
        .transpose()
    }
}

fn payer(org: &OrgId, key: &KeyId) -> [String; 2] {
    [Account::Key { org, key }.name(), Account::Org(org).name()]
}

impl CreditBackend for PgCredits {
    async fn set(
        &self,
        account: Account<'_>,
        amount: u64,
        refill: Refill,
        now: Timestamp,
    ) -> Result<(), CreditError> {
        refill.check()?;
        let (kind, day) = match refill {
            Refill::Never => ("never", 0i16),
            Refill::Daily => ("daily", 0),
            Refill::Monthly { day } => ("monthly", i16::from(day)),
        };
        sqlx::query(
            "INSERT INTO api_key_credits \
               (account, balance, amount, refill, refill_day, period, updated_at) \
             VALUES ($1, $2, $2, $3, $4, $5, $6) \
             ON CONFLICT (account) DO UPDATE SET balance = $2, amount = $2, refill = $3, \
               refill_day = $4, period = $5, updated_at = $6",
        )
        .bind(account.name())
        .bind(to_db(amount))
        .bind(kind)
        .bind(day)
        .bind(refill.period(now).map(to_db))
        .bind(to_db(now.as_unix_nanos()))
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn spend(
        &self,
        org: &OrgId,
        key: &KeyId,
        cost: u64,
        now: Timestamp,
    ) -> Result<Option<u64>, CreditError> {
        if let Some(left) = self
            .update(payer(org, key), "{b} - $6", "{b} >= $6", cost, now)
            .await?
        {
            return Ok(Some(from_db(left)));
        }
        match self.read(payer(org, key), now).await? {
            None => Ok(None),
            Some(b) => Err(CreditError::Exhausted {
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
        self.update(payer(org, key), "{b} + $6", "TRUE", amount, now)
            .await
            .map(|_| ())
    }

    async fn peek(
        &self,
        account: Account<'_>,
        now: Timestamp,
    ) -> Result<Option<Balance>, CreditError> {
        let name = account.name();
        self.read([name.clone(), name], now).await
    }
}
