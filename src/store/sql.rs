//! What the SQL stores share: column encodings, error mapping, migrations.

use std::sync::Arc;
use std::time::Duration;

use crate::clock::Timestamp;
use crate::ids::{KeyId, OrgId};
use crate::key::KeyHash;
use crate::plan::{Plan, Quota};
use crate::scopes::Scopes;

use super::{IpNet, KeyRecord, Metadata, StoreError};

/// A row that does not decode into a record: the database was edited by hand or by a newer
/// version. Reported as [`StoreError::Unavailable`] (a 503, never a 401).
#[derive(Debug, thiserror::Error)]
#[error("corrupt row in the key store: {0}")]
pub(crate) struct CorruptRow(pub(crate) &'static str);

/// One migration shipped in the crate.
pub(crate) struct Migration {
    pub(crate) version: i64,
    pub(crate) name: &'static str,
    pub(crate) sql: &'static str,
}

/// Map a driver error: unique violations are duplicates, everything else makes the store
/// unavailable.
pub(crate) fn map_err(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Duplicate,
        sqlx::Error::PoolTimedOut => StoreError::Timeout,
        _ => StoreError::unavailable(e),
    }
}

/// Timestamps are stored as signed 64-bit unix nanoseconds (enough until 2262); later times are
/// clamped, which keeps their meaning ("far future").
pub(crate) fn ts_to_db(t: Timestamp) -> i64 {
    i64::try_from(t.as_unix_nanos()).unwrap_or(i64::MAX)
}

pub(crate) fn ts_from_db(v: i64) -> Timestamp {
    Timestamp::from_unix_nanos(u64::try_from(v).unwrap_or(0))
}

pub(crate) fn opt_ts_to_db(t: Option<Timestamp>) -> Option<i64> {
    t.map(ts_to_db)
}

pub(crate) fn opt_ts_from_db(v: Option<i64>) -> Option<Timestamp> {
    v.map(ts_from_db)
}

pub(crate) fn hash_from_db(bytes: &[u8]) -> Result<KeyHash, StoreError> {
    let arr: [u8; 32] = bytes
        .try_into()
        .map_err(|_| StoreError::unavailable(CorruptRow("hash is not 32 bytes")))?;
    Ok(KeyHash::from_bytes(arr))
}

pub(crate) fn scopes_from_db<I, T>(scopes: I) -> Result<Scopes, StoreError>
where
    I: IntoIterator<Item = T>,
    T: AsRef<str>,
{
    Scopes::parse(scopes).map_err(|_| StoreError::unavailable(CorruptRow("invalid scope")))
}

/// A plan as columns: name, and the quota for `enterprise`.
pub(crate) struct PlanRow {
    pub(crate) name: &'static str,
    pub(crate) requests: Option<i64>,
    pub(crate) period_nanos: Option<i64>,
    pub(crate) sessions: Option<i64>,
}

pub(crate) fn plan_to_db(plan: Plan) -> PlanRow {
    match plan {
        Plan::Enterprise(q) => PlanRow {
            name: plan.name(),
            requests: Some(i64::from(q.requests)),
            period_nanos: Some(i64::try_from(q.period.as_nanos()).unwrap_or(i64::MAX)),
            sessions: Some(i64::from(q.concurrent_sessions)),
        },
        _ => PlanRow {
            name: plan.name(),
            requests: None,
            period_nanos: None,
            sessions: None,
        },
    }
}

/// Decode plan columns; `None` (no row: the LEFT JOIN found nothing) is `default`.
pub(crate) fn plan_from_db(
    name: Option<&str>,
    requests: Option<i64>,
    period_nanos: Option<i64>,
    sessions: Option<i64>,
    default: Plan,
) -> Result<Plan, StoreError> {
    let corrupt = |what| StoreError::unavailable(CorruptRow(what));
    match name {
        None => Ok(default),
        Some("free") => Ok(Plan::Free),
        Some("paid") => Ok(Plan::Paid),
        Some("enterprise") => {
            let (Some(r), Some(p), Some(s)) = (requests, period_nanos, sessions) else {
                return Err(corrupt("enterprise plan without a quota"));
            };
            Ok(Plan::Enterprise(Quota {
                requests: u32::try_from(r).map_err(|_| corrupt("quota requests out of range"))?,
                period: Duration::from_nanos(
                    u64::try_from(p).map_err(|_| corrupt("quota period out of range"))?,
                ),
                concurrent_sessions: u32::try_from(s)
                    .map_err(|_| corrupt("quota sessions out of range"))?,
            }))
        }
        Some(_) => Err(corrupt("unknown plan")),
    }
}

/// The columns of a key row, decoded by each backend, assembled here.
pub(crate) struct KeyRow {
    pub(crate) id: String,
    pub(crate) org_id: String,
    pub(crate) name: String,
    pub(crate) hash: Vec<u8>,
    pub(crate) hint: String,
    pub(crate) scopes: Scopes,
    pub(crate) environment: String,
    pub(crate) created_at: i64,
    pub(crate) expires_at: Option<i64>,
    pub(crate) revoked_at: Option<i64>,
    pub(crate) last_used_at: Option<i64>,
    pub(crate) rotated_from: Option<String>,
    pub(crate) disabled: bool,
    pub(crate) metadata: Option<sqlx::types::Json<Metadata>>,
    pub(crate) allowed_networks: Vec<IpNet>,
    pub(crate) expiry_reminded_at: Option<i64>,
}

impl KeyRow {
    pub(crate) fn into_record(self) -> Result<KeyRecord, StoreError> {
        let mut r = KeyRecord::new(
            KeyId::from(self.id),
            OrgId::from(self.org_id),
            self.name,
            hash_from_db(&self.hash)?,
            self.hint,
            self.scopes,
            Arc::from(self.environment),
            ts_from_db(self.created_at),
        );
        r.expires_at = opt_ts_from_db(self.expires_at);
        r.revoked_at = opt_ts_from_db(self.revoked_at);
        r.last_used_at = opt_ts_from_db(self.last_used_at);
        r.set_rotated_from(self.rotated_from.map(KeyId::from));
        r.set_disabled(self.disabled);
        r.set_metadata(self.metadata.map(|m| m.0));
        r.set_allowed_networks(self.allowed_networks);
        r.set_expiry_reminded_at(opt_ts_from_db(self.expiry_reminded_at));
        Ok(r)
    }
}

/// Allowed client networks as stored (CIDR text); a value that does not parse is a corrupt row.
pub(crate) fn networks_from_db<I, T>(networks: I) -> Result<Vec<IpNet>, StoreError>
where
    I: IntoIterator<Item = T>,
    T: AsRef<str>,
{
    networks
        .into_iter()
        .map(|n| {
            n.as_ref()
                .parse()
                .map_err(|_| StoreError::unavailable(CorruptRow("invalid client network")))
        })
        .collect()
}

/// Allowed client networks as CIDR text, one per entry.
pub(crate) fn networks_to_db(networks: &[IpNet]) -> Vec<String> {
    networks.iter().map(ToString::to_string).collect()
}

/// Metadata as bound: JSON, `NULL` when unset.
pub(crate) fn metadata_to_db(metadata: Option<&Metadata>) -> Option<sqlx::types::Json<&Metadata>> {
    metadata.map(sqlx::types::Json)
}

/// The key columns, in the order every query selects them.
macro_rules! key_columns {
    () => {
        "id, org_id, name, hash, hint, scopes, environment, created_at, expires_at, revoked_at, \
         last_used_at, rotated_from, disabled, metadata, allowed_networks, expiry_reminded_at"
    };
    (k) => {
        "k.id, k.org_id, k.name, k.hash, k.hint, k.scopes, k.environment, k.created_at, \
         k.expires_at, k.revoked_at, k.last_used_at, k.rotated_from, k.disabled, k.metadata, \
         k.allowed_networks, k.expiry_reminded_at"
    };
}
pub(crate) use key_columns;

/// An audit row as both SQL stores read it back.
pub(crate) struct AuditRow {
    pub(crate) id: String,
    pub(crate) org_id: String,
    pub(crate) at: i64,
    pub(crate) actor_type: String,
    pub(crate) actor_id: Option<String>,
    pub(crate) action: String,
    pub(crate) key_id: Option<String>,
    pub(crate) detail: String,
}

impl AuditRow {
    pub(crate) fn into_entry(self) -> Result<crate::audit::AuditEntry, StoreError> {
        use crate::audit::{Actor, AuditAction, AuditEntry};
        let corrupt = |what| StoreError::unavailable(CorruptRow(what));
        let actor = Actor::from_parts(&self.actor_type, self.actor_id.as_deref())
            .ok_or_else(|| corrupt("unknown audit actor"))?;
        let action =
            AuditAction::parse(&self.action).ok_or_else(|| corrupt("unknown audit action"))?;
        let detail =
            serde_json::from_str(&self.detail).map_err(|_| corrupt("audit detail is not JSON"))?;
        Ok(AuditEntry::from_parts(
            self.id,
            ts_from_db(self.at),
            OrgId::from(self.org_id),
            actor,
            action,
            self.key_id.map(KeyId::from),
            detail,
        ))
    }
}

/// An audit page's `LIMIT`, as the database takes it.
pub(crate) fn audit_limit(query: &crate::audit::AuditQuery) -> i64 {
    i64::try_from(query.limit.min(crate::audit::AuditQuery::MAX_LIMIT)).unwrap_or(500)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_and_clamp() {
        let t = Timestamp::from_unix_nanos(1_700_000_000_123_456_789);
        assert_eq!(ts_from_db(ts_to_db(t)), t);
        assert_eq!(ts_to_db(Timestamp::from_unix_nanos(u64::MAX)), i64::MAX);
        assert_eq!(ts_from_db(-5), Timestamp::EPOCH);
    }

    #[test]
    fn plans_round_trip() {
        let q = Quota {
            requests: 5_000,
            period: Duration::from_millis(1500),
            concurrent_sessions: 42,
        };
        for plan in [Plan::Free, Plan::Paid, Plan::Enterprise(q)] {
            let row = plan_to_db(plan);
            let back = plan_from_db(
                Some(row.name),
                row.requests,
                row.period_nanos,
                row.sessions,
                Plan::Free,
            )
            .unwrap();
            assert_eq!(back, plan);
        }
        assert_eq!(
            plan_from_db(None, None, None, None, Plan::Paid).unwrap(),
            Plan::Paid
        );
        assert!(plan_from_db(Some("enterprise"), None, None, None, Plan::Free).is_err());
        assert!(plan_from_db(Some("gold"), None, None, None, Plan::Free).is_err());
    }

    #[test]
    fn bad_hash_is_corrupt_not_panic() {
        assert!(matches!(
            hash_from_db(&[1, 2, 3]),
            Err(StoreError::Unavailable(_))
        ));
    }
}
