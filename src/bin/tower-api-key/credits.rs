//! `credits`: show and set an organization's or a key's credit balance (the SQL credit backend,
//! in the store's own database).

use tower_api_key::credits::{
    Account, Balance, CreditBackend, CreditError, Credits, PgCredits, Refill, SqliteCredits,
};

use super::*;

#[derive(Clone, Copy, ValueEnum)]
pub(super) enum EveryArg {
    Day,
    Month,
}

pub(super) async fn credits(cmd: CreditsCommand, store: Option<String>) -> Outcome {
    let store = migrated(store).await?;
    match store {
        Store::Sqlite(s) => {
            let credits = Credits::with_backend(SqliteCredits::new(s.pool().clone()));
            run_credits(cmd, credits, BoxedStore::new(s)).await
        }
        Store::Postgres(s) => {
            let credits = Credits::with_backend(PgCredits::new(s.pool().clone()));
            run_credits(cmd, credits, BoxedStore::new(s)).await
        }
    }
}

fn credit_failure(e: CreditError) -> Failure {
    match e {
        CreditError::InvalidRefillDay(d) => {
            Failure::usage(format!("--day {d} is not 1 to 28 (every month has those)"))
        }
        other => Failure::new(
            UNREACHABLE,
            format!("the credit backend failed: {other}; check that the database is up and retry"),
        ),
    }
}

/// The key named by `--key`, checked to be `org`'s.
async fn key_of(
    store: &BoxedStore,
    org: &OrgId,
    key: Option<&str>,
) -> Result<Option<KeyId>, Failure> {
    let Some(key) = key else { return Ok(None) };
    let manager = manager_for(store.clone());
    manager
        .get(org, &KeyId::from(key))
        .await
        .map_err(|e| manage_failure(e, Some(key)))?;
    Ok(Some(KeyId::from(key)))
}

fn refill_of(
    refill: Option<u64>,
    balance: u64,
    every: Option<EveryArg>,
    day: Option<u8>,
) -> Result<Refill, Failure> {
    if refill.is_some_and(|r| r != balance) {
        return Err(Failure::usage(
            "--refill must equal --balance: a refill tops the balance up to the amount it was set to",
        ));
    }
    match (every, day) {
        (None, None) if refill.is_none() => Ok(Refill::Never),
        (None, _) => Err(Failure::usage("--refill and --day need --every day|month")),
        (Some(EveryArg::Day), None) => Ok(Refill::Daily),
        (Some(EveryArg::Day), Some(_)) => Err(Failure::usage("--day goes with --every month only")),
        (Some(EveryArg::Month), Some(day)) => Ok(Refill::Monthly { day }),
        (Some(EveryArg::Month), None) => {
            Err(Failure::usage("--every month needs --day D (1 to 28)"))
        }
    }
}

fn refill_text(b: &Balance) -> String {
    match b.refill {
        Refill::Never => "never".to_owned(),
        Refill::Daily => format!("to {} every day at 00:00 UTC", b.amount),
        Refill::Monthly { day } => format!("to {} every month on day {day} at 00:00 UTC", b.amount),
    }
}

fn every_json(refill: Refill) -> Value {
    match refill {
        Refill::Daily => json!({"every": "day", "day": null}),
        Refill::Monthly { day } => json!({"every": "month", "day": day}),
        Refill::Never => json!({"every": "never", "day": null}),
    }
}

async fn run_credits<B: CreditBackend>(
    cmd: CreditsCommand,
    credits: Credits<B>,
    store: BoxedStore,
) -> Outcome {
    match cmd {
        CreditsCommand::Set {
            org,
            key,
            balance,
            refill,
            every,
            day,
        } => {
            let refill = refill_of(refill, balance, every, day)?;
            let org_id = OrgId::from(org.as_str());
            let key_id = key_of(&store, &org_id, key.as_deref()).await?;
            let account = match &key_id {
                Some(key) => Account::Key { org: &org_id, key },
                None => Account::Org(&org_id),
            };
            credits
                .set(account, balance, refill)
                .await
                .map_err(credit_failure)?;
            let refill_json = match refill {
                Refill::Never => json!({"every": "never"}),
                Refill::Daily => json!({"every": "day"}),
                Refill::Monthly { day } => json!({"every": "month", "day": day}),
            };
            manager_for(store.clone())
                .record_audit(
                    &org_id,
                    tower_api_key::AuditAction::CreditsSet,
                    key_id.as_ref(),
                    json!({ "balance": balance, "refill": refill_json }),
                )
                .await;
            let whose = match &key_id {
                Some(k) => format!("the key {k} of {org}"),
                None => org.clone(),
            };
            eprintln!(
                "{whose} now has {balance} credits, refilled {}",
                refill_text(&Balance {
                    balance,
                    amount: balance,
                    refill
                })
            );
            Ok(())
        }
        CreditsCommand::Show { org, key, json } => {
            let org_id = OrgId::from(org.as_str());
            let key_id = key_of(&store, &org_id, key.as_deref()).await?;
            let account = match &key_id {
                Some(key) => Account::Key { org: &org_id, key },
                None => Account::Org(&org_id),
            };
            let balance = credits.peek(account).await.map_err(credit_failure)?;
            let now = credits.now();
            let next = balance
                .as_ref()
                .and_then(|b| b.refill.secs_to_next(now))
                .map(|s| now.as_unix_secs().saturating_add(s));
            if json {
                let value = match &balance {
                    Some(b) => json!({
                        "org_id": org,
                        "key_id": key,
                        "balance": b.balance,
                        "refill_amount": b.amount,
                        "refill": every_json(b.refill),
                        "next_refill_at": next,
                    }),
                    None => json!({"org_id": org, "key_id": key, "balance": null}),
                };
                return print_stdout(&value.to_string());
            }
            let mut text = format!("org:          {org}\n");
            if let Some(k) = &key {
                text.push_str(&format!("key:          {k}\n"));
            }
            match &balance {
                Some(b) => text.push_str(&format!(
                    "balance:      {}\nrefill:       {}\nnext refill:  {}",
                    b.balance,
                    refill_text(b),
                    when(next.map(Timestamp::from_unix_secs))
                )),
                None => text.push_str("balance:      none (calls are not metered in credits)"),
            }
            print_stdout(&text)
        }
    }
}
