//! Credits in the admin API: `GET /org/credits` shows the balances, `PUT /org/credits` and
//! `PUT /api-keys/{id}/credits` set them, for credit operators only.

use std::fmt;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Acting, AdminError, Caller, Shared, body};
use crate::audit::AuditAction;
use crate::clock::Timestamp;
use crate::credits::{Account, Balance, CreditBackend, CreditError, Credits, Refill};
use crate::ids::KeyId;
use crate::principal::Principal;
use crate::store::{BoxFuture, KeyStore};

/// A [`Credits`] handle with its backend type erased, so that the admin API and the dashboard
/// take any backend without a type parameter.
pub(crate) trait CreditsHandle: Send + Sync + 'static {
    /// [`Credits::peek`].
    fn peek<'a>(
        &'a self,
        account: Account<'a>,
    ) -> BoxFuture<'a, Result<Option<Balance>, CreditError>>;
    /// [`Credits::set`].
    fn set<'a>(
        &'a self,
        account: Account<'a>,
        amount: u64,
        refill: Refill,
    ) -> BoxFuture<'a, Result<(), CreditError>>;
    /// [`Credits::now`].
    fn now(&self) -> Timestamp;
}

impl<B: CreditBackend> CreditsHandle for Credits<B> {
    fn peek<'a>(
        &'a self,
        account: Account<'a>,
    ) -> BoxFuture<'a, Result<Option<Balance>, CreditError>> {
        Box::pin(Credits::peek(self, account))
    }
    fn set<'a>(
        &'a self,
        account: Account<'a>,
        amount: u64,
        refill: Refill,
    ) -> BoxFuture<'a, Result<(), CreditError>> {
        Box::pin(Credits::set(self, account, amount, refill))
    }
    fn now(&self) -> Timestamp {
        Credits::now(self)
    }
}

/// Shared, type-erased credits.
pub(crate) type SharedCredits = Arc<dyn CreditsHandle>;

/// Who may set credits.
pub(crate) type OperatorFn = Arc<dyn Fn(&Principal) -> bool + Send + Sync>;

/// The admin API's credit configuration: the balances (none: the routes answer `404`) and
/// who may set them (default: nobody).
#[derive(Clone)]
pub(crate) struct CreditSettings {
    pub(crate) credits: Option<SharedCredits>,
    pub(crate) operator: OperatorFn,
}

impl Default for CreditSettings {
    fn default() -> Self {
        Self {
            credits: None,
            operator: Arc::new(|_| false),
        }
    }
}

impl fmt::Debug for CreditSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreditSettings")
            .field("credits", &self.credits.is_some())
            .finish_non_exhaustive()
    }
}

/// When a balance is topped up, as the API shows and takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefillView {
    /// `never`, `day` (00:00 UTC) or `month` (on `day` at 00:00 UTC).
    pub every: Every,
    /// With `month`: the day of the month, 1 to 28.
    pub day: Option<u8>,
}

/// The refill interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Every {
    /// Never refilled.
    Never,
    /// Daily.
    Day,
    /// Monthly.
    Month,
}

impl RefillView {
    /// The view of a [`Refill`].
    pub fn of(refill: Refill) -> Self {
        match refill {
            Refill::Never => Self {
                every: Every::Never,
                day: None,
            },
            Refill::Daily => Self {
                every: Every::Day,
                day: None,
            },
            Refill::Monthly { day } => Self {
                every: Every::Month,
                day: Some(day),
            },
        }
    }

    /// The [`Refill`] asked for, or a `400 invalid_refill` that says what is wrong.
    pub fn refill(&self) -> Result<Refill, AdminError> {
        match (self.every, self.day) {
            (Every::Never, None) => Ok(Refill::Never),
            (Every::Day, None) => Ok(Refill::Daily),
            (Every::Month, Some(day @ 1..=28)) => Ok(Refill::Monthly { day }),
            (Every::Month, _) => Err(AdminError::InvalidRefill(
                "a monthly refill needs \"day\", 1 to 28".into(),
            )),
            (_, Some(_)) => Err(AdminError::InvalidRefill(
                "\"day\" goes with \"every\": \"month\" only".into(),
            )),
        }
    }
}

/// One account's credits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreditBalance {
    /// What is left now (any refill due applied).
    pub balance: u64,
    /// What a refill tops the balance up to.
    pub refill_amount: u64,
    /// When it is topped up.
    pub refill: RefillView,
    /// Unix seconds of the next refill; `null` if never.
    pub next_refill_at: Option<u64>,
}

impl CreditBalance {
    /// The view of `balance` at `now`.
    pub fn of(balance: &Balance, now: Timestamp) -> Self {
        Self {
            balance: balance.balance,
            refill_amount: balance.amount,
            refill: RefillView::of(balance.refill),
            next_refill_at: balance
                .refill
                .secs_to_next(now)
                .map(|s| now.as_unix_secs().saturating_add(s)),
        }
    }
}

/// One key's own balance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct KeyCredits {
    /// The key's id.
    pub key_id: String,
    /// The key's name.
    pub name: String,
    /// Its balance (spent before the organization's).
    pub credits: CreditBalance,
}

/// The answer of `GET /org/credits`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OrgCredits {
    /// The organization.
    pub org_id: String,
    /// The organization's balance; `null` if it has none.
    pub org: Option<CreditBalance>,
    /// The keys with a balance of their own, newest first.
    pub keys: Vec<KeyCredits>,
}

/// The body of `PUT /org/credits` and `PUT /api-keys/{id}/credits`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetCredits {
    /// The new balance, also what each refill tops it up to.
    pub balance: u64,
    /// When it is topped up; omitted: never.
    pub refill: Option<RefillView>,
}

fn unavailable(e: CreditError) -> AdminError {
    match e {
        CreditError::InvalidRefillDay(day) => {
            AdminError::InvalidRefill(format!("refill day {day} is not 1 to 28"))
        }
        other => AdminError::CreditsUnavailable(other),
    }
}

fn configured<St, C>(api: &super::AdminApi<St, C>) -> Result<&SharedCredits, AdminError> {
    api.credit_settings
        .credits
        .as_ref()
        .ok_or(AdminError::CreditsNotConfigured)
}

pub(super) async fn show<St: KeyStore, C: Caller>(
    State(api): Shared<St, C>,
    Acting(caller): Acting,
) -> Result<Json<OrgCredits>, AdminError> {
    let credits = configured(&api)?;
    let org = caller.org_id();
    let now = credits.now();
    let org_balance = credits.peek(Account::Org(org)).await.map_err(unavailable)?;
    let mut keys = Vec::new();
    for record in api.manager.list(org).await? {
        let account = Account::Key {
            org,
            key: &record.id,
        };
        if let Some(b) = credits.peek(account).await.map_err(unavailable)? {
            keys.push(KeyCredits {
                key_id: record.id.to_string(),
                name: record.name().to_owned(),
                credits: CreditBalance::of(&b, now),
            });
        }
    }
    Ok(Json(OrgCredits {
        org_id: org.to_string(),
        org: org_balance.map(|b| CreditBalance::of(&b, now)),
        keys,
    }))
}

/// The checks every credit write makes, in order: configured, an operator, a valid body.
fn writable<'a, St, C>(
    api: &'a super::AdminApi<St, C>,
    caller: &Principal,
    json: Result<Json<SetCredits>, JsonRejection>,
) -> Result<(&'a SharedCredits, u64, Refill), AdminError> {
    let credits = configured(api)?;
    if !(api.credit_settings.operator)(caller) {
        return Err(AdminError::OperatorRequired);
    }
    let req = body(json)?;
    let refill = req.refill.map_or(Ok(Refill::Never), |r| r.refill())?;
    Ok((credits, req.balance, refill))
}

async fn set_and_show(
    credits: &SharedCredits,
    account: Account<'_>,
    amount: u64,
    refill: Refill,
) -> Result<Json<CreditBalance>, AdminError> {
    credits
        .set(account, amount, refill)
        .await
        .map_err(unavailable)?;
    let now = credits.now();
    let balance = credits
        .peek(account)
        .await
        .map_err(unavailable)?
        .unwrap_or(Balance {
            balance: amount,
            amount,
            refill,
        });
    Ok(Json(CreditBalance::of(&balance, now)))
}

pub(super) async fn set_org<St: KeyStore, C: Caller>(
    State(api): Shared<St, C>,
    Acting(caller): Acting,
    json: Result<Json<SetCredits>, JsonRejection>,
) -> Result<Json<CreditBalance>, AdminError> {
    let (credits, amount, refill) = writable(&api, &caller, json)?;
    let org = caller.org_id();
    let shown = set_and_show(credits, Account::Org(org), amount, refill).await?;
    audit_set(&api, &caller, None, amount, refill).await;
    Ok(shown)
}

pub(super) async fn set_key<St: KeyStore, C: Caller>(
    State(api): Shared<St, C>,
    Acting(caller): Acting,
    Path(id): Path<String>,
    json: Result<Json<SetCredits>, JsonRejection>,
) -> Result<Json<CreditBalance>, AdminError> {
    let (credits, amount, refill) = writable(&api, &caller, json)?;
    let org = caller.org_id();
    let record = api.manager.get(org, &KeyId::from(id)).await?;
    let account = Account::Key {
        org,
        key: &record.id,
    };
    let shown = set_and_show(credits, account, amount, refill).await?;
    audit_set(&api, &caller, Some(&record.id), amount, refill).await;
    Ok(shown)
}

/// Audit a credit change as the calling key (after it succeeded, as every change).
async fn audit_set<St: KeyStore, C>(
    api: &super::AdminApi<St, C>,
    caller: &Principal,
    key: Option<&KeyId>,
    amount: u64,
    refill: Refill,
) {
    api.acting_as(caller)
        .record_audit(
            caller.org_id(),
            AuditAction::CreditsSet,
            key,
            serde_json::json!({ "balance": amount, "refill": RefillView::of(refill) }),
        )
        .await;
}
