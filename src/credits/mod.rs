//! Credits: a balance that calls spend and that is topped up per interval ([`Credits`]).
//!
//! A rate limit says how fast; credits say how much. Spend them per request with the
//! [`SpendCredits`] layer (a cost per route, as [`Cost`](crate::Cost) for rates), or from a
//! handler with [`Credits::spend`] when the cost is known only there. An account (an organization, or one key)
//! holds a balance; a call spends its cost from it (the key's balance if the key has one,
//! else its organization's; with neither the call is unmetered); a call costing more than
//! what is left is refused with `429 credits_exhausted` and a `Retry-After` of the time until
//! the next refill. A refill *tops the balance up* to its amount (it never adds on top of an
//! unspent balance), daily at 00:00 UTC or monthly on a given day (1 to 28) at 00:00 UTC; it
//! is applied lazily, by the first operation after the boundary.
//!
//! Every backend is atomic per account: a spend reads, checks and writes the balance as one
//! step (a lock in memory, one Lua script in Redis), so the balance never goes below zero
//! under any interleaving, and `start − admitted × cost` is exactly what is left.
//!
//! ```
//! use tower_api_key::credits::{Account, CreditError, Credits, Refill};
//! use tower_api_key::{KeyId, OrgId};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let credits = Credits::new();
//! let org = OrgId::from("org_1");
//! // 1,000 credits, topped up to 1,000 on the 1st of every month.
//! credits.set(Account::Org(&org), 1_000, Refill::Monthly { day: 1 }).await?;
//! let key = KeyId::from("key_1");
//! assert_eq!(credits.spend_for(&org, &key, 400).await?, Some(600));
//! assert_eq!(credits.spend_for(&org, &key, 600).await?, Some(0));
//! assert!(matches!(
//!     credits.spend_for(&org, &key, 1).await,
//!     Err(CreditError::Exhausted { balance: 0, .. })
//! ));
//! # Ok::<(), CreditError>(()) }).unwrap();
//! ```

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use crate::clock::{Clock, Timestamp};
use crate::ids::{KeyId, OrgId};
use crate::principal::Principal;
use crate::reject::Rejection;
use crate::store::BoxError;

mod layer;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod sql;
pub use layer::{CreditCost, ResponseFuture, SpendCredits, SpendCreditsLayer, Spending};
#[cfg(feature = "redis")]
pub use redis::RedisCredits;
#[cfg(feature = "postgres")]
pub use sql::PgCredits;
#[cfg(feature = "sqlite")]
pub use sql::SqliteCredits;

const SECS_PER_DAY: u64 = 86_400;

/// When a balance is topped up to its amount.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refill {
    /// Never: the balance only goes down (and up by refunds or a new [`Credits::set`]).
    Never,
    /// Every day at 00:00 UTC.
    Daily,
    /// Every month on `day` (1 to 28, so every month has it) at 00:00 UTC.
    Monthly {
        /// The day of the month, 1 to 28.
        day: u8,
    },
}

impl Refill {
    /// The index of the refill period `now` is in: a balance last refilled in an earlier
    /// period is topped up. `None` for [`Refill::Never`].
    pub fn period(&self, now: Timestamp) -> Option<u64> {
        let secs = now.as_unix_secs();
        let days = secs / SECS_PER_DAY;
        match *self {
            Refill::Never => None,
            Refill::Daily => Some(days),
            Refill::Monthly { day } => {
                let (y, m, d) = civil_from_days(days);
                let months = y * 12 + (m - 1);
                Some(if d < u64::from(day) {
                    months - 1
                } else {
                    months
                })
            }
        }
    }

    /// Whole seconds from `now` to the next refill, at least 1; `None` for [`Refill::Never`].
    pub fn secs_to_next(&self, now: Timestamp) -> Option<u64> {
        let secs = now.as_unix_secs();
        let days = secs / SECS_PER_DAY;
        let next_day = match *self {
            Refill::Never => return None,
            Refill::Daily => days + 1,
            Refill::Monthly { day } => {
                let (y, m, d) = civil_from_days(days);
                let (y, m) = if d < u64::from(day) {
                    (y, m)
                } else if m == 12 {
                    (y + 1, 1)
                } else {
                    (y, m + 1)
                };
                days_from_civil(y, m, u64::from(day))
            }
        };
        Some((next_day * SECS_PER_DAY).saturating_sub(secs).max(1))
    }

    fn check(&self) -> Result<(), CreditError> {
        match self {
            Refill::Monthly { day } if !(1..=28).contains(day) => {
                Err(CreditError::InvalidRefillDay(*day))
            }
            _ => Ok(()),
        }
    }
}

/// (year, month 1-12, day 1-31) of a count of days since 1970-01-01 (H. Hinnant's algorithm,
/// for days >= 0).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// Days since 1970-01-01 of a date (the inverse of [`civil_from_days`]).
fn days_from_civil(y: u64, m: u64, d: u64) -> u64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Whose balance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Account<'a> {
    /// An organization's: spent by its keys that have no balance of their own.
    Org(&'a OrgId),
    /// One key's (of organization `org`).
    Key {
        /// The key's organization.
        org: &'a OrgId,
        /// The key.
        key: &'a KeyId,
    },
}

impl Account<'_> {
    /// The account's name in a map: `org:<id>` or `key:<org>:<id>` (ids have no control
    /// characters and never a secret).
    pub(crate) fn name(&self) -> String {
        match self {
            Account::Org(org) => format!("org:{org}"),
            Account::Key { org, key } => format!("key:{org}:{key}"),
        }
    }
}

/// Why a credit operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CreditError {
    /// The balance is less than the call's cost: nothing was spent.
    #[error("credits exhausted: {balance} left")]
    Exhausted {
        /// What is left (less than the cost).
        balance: u64,
        /// Whole seconds until the next refill, if the balance is ever refilled.
        retry_after: Option<u64>,
    },
    /// A monthly refill day outside 1 to 28.
    #[error("refill day {0} is not 1 to 28")]
    InvalidRefillDay(u8),
    /// The backend failed.
    #[error("credit backend unavailable: {0}")]
    Unavailable(#[source] BoxError),
}

impl CreditError {
    /// Wrap a driver error as [`CreditError::Unavailable`].
    pub fn unavailable(e: impl Into<BoxError>) -> Self {
        Self::Unavailable(e.into())
    }

    /// The client-facing rejection: `429 credits_exhausted` (with `Retry-After` until the next
    /// refill), `503` for a backend failure; `None` for a configuration error (the caller's).
    pub fn rejection(&self) -> Option<Rejection> {
        match self {
            CreditError::Exhausted {
                balance,
                retry_after,
            } => Some(Rejection::CreditsExhausted {
                balance: *balance,
                retry_after: *retry_after,
            }),
            CreditError::InvalidRefillDay(_) => None,
            CreditError::Unavailable(_) => Some(Rejection::StoreUnavailable { retry_after: 1 }),
        }
    }
}

#[cfg(feature = "axum")]
impl axum_core::response::IntoResponse for CreditError {
    /// `429 credits_exhausted` problem+json, `503` for a backend failure, `500` otherwise.
    fn into_response(self) -> axum_core::response::Response {
        use axum_core::body::Body;
        let rejection = self.rejection().unwrap_or(Rejection::MissingPrincipal {
            layer: "Credits (invalid configuration)",
        });
        if let CreditError::Unavailable(e) = &self {
            tracing::warn!(error = %e, "credit backend failed; answering 503");
        }
        rejection.problem_response("api").map(Body::from)
    }
}

/// One account's state as a backend stores it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Balance {
    /// What is left.
    pub balance: u64,
    /// What a refill tops the balance up to.
    pub amount: u64,
    /// When it is refilled.
    pub refill: Refill,
}

/// Where balances live. Implementations are atomic per account: a spend never takes the
/// balance below zero, whatever runs beside it.
pub trait CreditBackend: Clone + Send + Sync + 'static {
    /// Give `account` a balance of `amount`, topped up to `amount` by `refill`.
    fn set(
        &self,
        account: Account<'_>,
        amount: u64,
        refill: Refill,
        now: Timestamp,
    ) -> impl Future<Output = Result<(), CreditError>> + Send;

    /// Spend `cost` from the key's balance if it has one, else from its organization's: the
    /// balance left (`None`: neither has a balance, the call is unmetered), or
    /// [`CreditError::Exhausted`] with nothing spent. Refills first if a period has passed.
    fn spend(
        &self,
        org: &OrgId,
        key: &KeyId,
        cost: u64,
        now: Timestamp,
    ) -> impl Future<Output = Result<Option<u64>, CreditError>> + Send;

    /// Give `amount` back to the balance `spend` took it from (a call that failed).
    fn refund(
        &self,
        org: &OrgId,
        key: &KeyId,
        amount: u64,
        now: Timestamp,
    ) -> impl Future<Output = Result<(), CreditError>> + Send;

    /// An account's balance after any refill due at `now`, spending nothing (`None`: no
    /// balance).
    fn peek(
        &self,
        account: Account<'_>,
        now: Timestamp,
    ) -> impl Future<Output = Result<Option<Balance>, CreditError>> + Send;
}

/// The state of one account in [`MemoryCredits`].
#[derive(Clone, Copy, Debug)]
struct State {
    balance: Balance,
    /// The refill period the balance was last topped up in.
    period: Option<u64>,
}

impl State {
    /// Apply a refill due at `now`.
    fn refilled(&mut self, now: Timestamp) {
        let period = self.balance.refill.period(now);
        if period > self.period {
            self.balance.balance = self.balance.balance.max(self.balance.amount);
            self.period = period;
        }
    }
}

/// The in-process [`CreditBackend`]: one map of accounts, each behind its own lock (held for
/// a few integer operations). Clones share the balances.
#[derive(Clone, Default)]
pub struct MemoryCredits {
    accounts: Arc<papaya::HashMap<String, Mutex<State>>>,
}

impl fmt::Debug for MemoryCredits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryCredits")
            .field("accounts", &self.accounts.len())
            .finish()
    }
}

impl MemoryCredits {
    /// No balances.
    pub fn new() -> Self {
        Self::default()
    }

    /// Run `f` on the account's state, refilled at `now`; `None` if it has no balance.
    fn with<T>(&self, name: &str, now: Timestamp, f: impl FnOnce(&mut State) -> T) -> Option<T> {
        let accounts = self.accounts.pin();
        let cell = accounts.get(name)?;
        // The state is integers written in one step: a poisoned lock still holds a whole one.
        let mut state = cell.lock().unwrap_or_else(PoisonError::into_inner);
        state.refilled(now);
        Some(f(&mut state))
    }

    /// The account `spend` and `refund` use: the key's if it has a balance, else the org's.
    fn payer(&self, org: &OrgId, key: &KeyId) -> Option<String> {
        let accounts = self.accounts.pin();
        let by_key = Account::Key { org, key }.name();
        if accounts.contains_key(&by_key) {
            return Some(by_key);
        }
        let by_org = Account::Org(org).name();
        accounts.contains_key(&by_org).then_some(by_org)
    }
}

impl CreditBackend for MemoryCredits {
    async fn set(
        &self,
        account: Account<'_>,
        amount: u64,
        refill: Refill,
        now: Timestamp,
    ) -> Result<(), CreditError> {
        refill.check()?;
        let state = State {
            balance: Balance {
                balance: amount,
                amount,
                refill,
            },
            period: refill.period(now),
        };
        self.accounts
            .pin()
            .insert(account.name(), Mutex::new(state));
        Ok(())
    }

    async fn spend(
        &self,
        org: &OrgId,
        key: &KeyId,
        cost: u64,
        now: Timestamp,
    ) -> Result<Option<u64>, CreditError> {
        let Some(name) = self.payer(org, key) else {
            return Ok(None);
        };
        let spent = self.with(&name, now, |s| {
            if s.balance.balance >= cost {
                s.balance.balance -= cost;
                Ok(s.balance.balance)
            } else {
                Err(CreditError::Exhausted {
                    balance: s.balance.balance,
                    retry_after: s.balance.refill.secs_to_next(now),
                })
            }
        });
        spent.transpose()
    }

    async fn refund(
        &self,
        org: &OrgId,
        key: &KeyId,
        amount: u64,
        now: Timestamp,
    ) -> Result<(), CreditError> {
        if let Some(name) = self.payer(org, key) {
            self.with(&name, now, |s| {
                s.balance.balance = s.balance.balance.saturating_add(amount);
            });
        }
        Ok(())
    }

    async fn peek(
        &self,
        account: Account<'_>,
        now: Timestamp,
    ) -> Result<Option<Balance>, CreditError> {
        Ok(self.with(&account.name(), now, |s| s.balance))
    }
}

/// The credits handle handlers use (like [`SessionQuota`](crate::SessionQuota)): cheap to
/// clone, clones share the balances.
///
/// Why a handle: what a call costs in credits is often known only inside the handler (tokens
/// generated, bytes processed), and a call that fails should get its credits back; the
/// handler spends with [`spend`](Self::spend) and answers the error (an `IntoResponse` with
/// the `axum` feature) when the balance is spent.
#[derive(Clone, Debug)]
pub struct Credits<B = MemoryCredits> {
    backend: B,
    clock: Clock,
}

impl Default for Credits<MemoryCredits> {
    fn default() -> Self {
        Self::new()
    }
}

impl Credits<MemoryCredits> {
    /// In-memory balances, coarse clock.
    pub fn new() -> Self {
        Self::with_backend(MemoryCredits::new())
    }
}

impl<B: CreditBackend> Credits<B> {
    /// Balances in another backend (e.g. Redis, shared by replicas).
    pub fn with_backend(backend: B) -> Self {
        Self {
            backend,
            clock: Clock::default(),
        }
    }

    /// The clock refills are measured with (default: [`Clock::coarse`]).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Give `account` `amount` credits, topped up to `amount` by `refill`.
    pub async fn set(
        &self,
        account: Account<'_>,
        amount: u64,
        refill: Refill,
    ) -> Result<(), CreditError> {
        self.backend
            .set(account, amount, refill, self.clock.now())
            .await
    }

    /// Spend `cost` credits for a call by `principal`: from its key's balance, else its
    /// organization's. `Ok(None)`: neither has one (unmetered).
    pub async fn spend(
        &self,
        principal: &Principal,
        cost: u64,
    ) -> Result<Option<u64>, CreditError> {
        self.spend_for(principal.org_id(), principal.key_id(), cost)
            .await
    }

    /// [`spend`](Self::spend) by ids.
    pub async fn spend_for(
        &self,
        org: &OrgId,
        key: &KeyId,
        cost: u64,
    ) -> Result<Option<u64>, CreditError> {
        self.backend.spend(org, key, cost, self.clock.now()).await
    }

    /// Give back `amount` credits a call by `principal` spent (it failed).
    pub async fn refund(&self, principal: &Principal, amount: u64) -> Result<(), CreditError> {
        self.backend
            .refund(
                principal.org_id(),
                principal.key_id(),
                amount,
                self.clock.now(),
            )
            .await
    }

    /// An account's balance now (refill applied), spending nothing.
    pub async fn peek(&self, account: Account<'_>) -> Result<Option<Balance>, CreditError> {
        self.backend.peek(account, self.clock.now()).await
    }

    /// The time by this handle's clock: with [`Refill::secs_to_next`], when a balance is
    /// next topped up (the admin API and dashboard show it).
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(y: u64, m: u64, d: u64, secs: u64) -> Timestamp {
        Timestamp::from_unix_secs(days_from_civil(y, m, d) * SECS_PER_DAY + secs)
    }

    #[test]
    fn calendar_round_trips() {
        for days in [0, 59, 60, 365, 10_957, 19_723, 20_000, 40_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }

    #[test]
    fn refill_periods_and_waits() {
        let monthly = Refill::Monthly { day: 15 };
        let before = at(2026, 3, 14, 86_399);
        let on = at(2026, 3, 15, 0);
        assert_eq!(
            monthly.period(on),
            Some(monthly.period(before).unwrap() + 1)
        );
        assert_eq!(monthly.secs_to_next(before), Some(1));
        // From the 15th of December to the 15th of January: 31 days.
        assert_eq!(
            monthly.secs_to_next(at(2026, 12, 15, 0)),
            Some(31 * SECS_PER_DAY)
        );
        assert_eq!(
            Refill::Daily.secs_to_next(at(2026, 1, 1, 3_600)),
            Some(82_800)
        );
        assert_eq!(Refill::Never.secs_to_next(on), None);
        assert!(matches!(
            Refill::Monthly { day: 29 }.check(),
            Err(CreditError::InvalidRefillDay(29))
        ));
    }

    #[tokio::test]
    async fn key_balance_first_then_org_refill_tops_up() {
        let (clock, manual) = Clock::manual(at(2026, 1, 31, 0));
        let credits = Credits::new().clock(clock);
        let (org, key, other) = (
            OrgId::from("org"),
            KeyId::from("key_a"),
            KeyId::from("key_b"),
        );
        assert_eq!(credits.spend_for(&org, &key, 5).await.unwrap(), None);
        credits
            .set(Account::Org(&org), 10, Refill::Daily)
            .await
            .unwrap();
        credits
            .set(
                Account::Key {
                    org: &org,
                    key: &key,
                },
                3,
                Refill::Never,
            )
            .await
            .unwrap();
        assert_eq!(credits.spend_for(&org, &key, 3).await.unwrap(), Some(0));
        let err = credits.spend_for(&org, &key, 1).await.unwrap_err();
        assert!(matches!(
            err,
            CreditError::Exhausted {
                balance: 0,
                retry_after: None
            }
        ));
        assert_eq!(credits.spend_for(&org, &other, 4).await.unwrap(), Some(6));
        let now = credits.clock.now();
        credits
            .backend()
            .refund(&org, &other, 2, now)
            .await
            .unwrap();
        assert_eq!(credits.spend_for(&org, &other, 8).await.unwrap(), Some(0));
        let err = credits.spend_for(&org, &other, 1).await.unwrap_err();
        assert!(matches!(
            err,
            CreditError::Exhausted {
                balance: 0,
                retry_after: Some(86_400)
            }
        ));
        assert_eq!(err.rejection().unwrap().code(), "credits_exhausted");
        // The next day: topped up to 10, not 10 more.
        manual.advance(std::time::Duration::from_secs(86_400));
        let b = credits.peek(Account::Org(&org)).await.unwrap().unwrap();
        assert_eq!(b.balance, 10);
    }
}
