//! [`SqliteStore`]: the embedded durable store (one process, one file).
//!
//! [`SqliteStore::migrate`] applies the migrations shipped in the crate
//! (`migrations/sqlite/*.sql`), each once, in a transaction. Tables: `api_keys` (hash `BLOB`
//! unique-indexed, org indexed, times as unix-nanosecond integers, scopes space-separated) and
//! `api_key_org_plans`; bookkeeping in `tower_api_key_migrations`. Files are opened in WAL mode.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use tower_api_key::{KeyManager, NewKey, OrgId};
//! use tower_api_key::store::SqliteStore;
//!
//! let store = SqliteStore::memory().await?; // or SqliteStore::connect("sqlite://keys.db")
//! store.migrate().await?;
//! let manager = KeyManager::new(store);
//! manager.create(&OrgId::from("org_1"), NewKey::new("ci")).await?;
//! # Ok::<(), Box<dyn std::error::Error>>(()) }).unwrap();
//! ```

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};

use crate::audit::{AuditEntry, AuditQuery};
use crate::clock::Timestamp;
use crate::ids::{KeyId, OrgId};
use crate::key::KeyHash;
use crate::plan::Plan;

use super::sql::{
    AuditRow, KeyRow, Migration, audit_limit, key_columns, map_err, metadata_to_db,
    networks_from_db, networks_to_db, opt_ts_to_db, plan_from_db, plan_to_db, scopes_from_db,
    ts_from_db, ts_to_db,
};
use super::{
    BoxFuture, Granularity, IpNet, KeyChanges, KeyRecord, KeyStore, LookupResult, StoreError,
    StoredKey, UsageCounts, UsageDelta, UsageRow, limits,
};

/// Allowed networks as one column: CIDRs separated by spaces (`''` = anywhere).
fn networks_column(networks: &[IpNet]) -> String {
    networks_to_db(networks).join(" ")
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "keys_and_plans",
        sql: include_str!("../../migrations/sqlite/0001_keys_and_plans.sql"),
    },
    Migration {
        version: 2,
        name: "key_policies",
        sql: include_str!("../../migrations/sqlite/0002_key_policies.sql"),
    },
    Migration {
        version: 3,
        name: "credits",
        sql: include_str!("../../migrations/sqlite/0003_credits.sql"),
    },
    Migration {
        version: 4,
        name: "usage",
        sql: include_str!("../../migrations/sqlite/0004_usage.sql"),
    },
    Migration {
        version: 5,
        name: "audit",
        sql: include_str!("../../migrations/sqlite/0005_audit.sql"),
    },
];

/// The SQLite URL could not be parsed.
#[derive(Debug, thiserror::Error)]
#[error("invalid SQLite store URL: {0}")]
pub struct SqliteConfigError(String);

/// Key records and plans in SQLite. Cheap to clone (a pool handle).
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    default_plan: Plan,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("default_plan", &self.default_plan)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Open `url`: `sqlite://keys.db` (created if missing), `sqlite::memory:`. Run
    /// [`migrate`](Self::migrate) before first use.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::unavailable(SqliteConfigError(e.to_string())))?;
        if url.contains(":memory:") || url.contains("mode=memory") {
            Self::open_memory(options).await
        } else {
            Self::open_file(options).await
        }
    }

    /// Open (or create) the database file at `path`.
    pub async fn open(path: impl AsRef<std::path::Path>) -> Result<Self, StoreError> {
        Self::open_file(SqliteConnectOptions::new().filename(path)).await
    }

    /// A private in-memory database, gone when the store is dropped (tests, demos).
    pub async fn memory() -> Result<Self, StoreError> {
        Self::connect("sqlite::memory:").await
    }

    async fn open_file(options: SqliteConnectOptions) -> Result<Self, StoreError> {
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await
            .map_err(map_err)?;
        Ok(Self::from_pool(pool))
    }

    async fn open_memory(options: SqliteConnectOptions) -> Result<Self, StoreError> {
        // One connection that never closes: an in-memory database lives as long as it does.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await
            .map_err(map_err)?;
        Ok(Self::from_pool(pool))
    }

    /// Use an existing pool.
    pub fn from_pool(pool: SqlitePool) -> Self {
        Self {
            pool,
            default_plan: Plan::Free,
        }
    }

    /// Organizations without a plan are on `plan` (default [`Plan::Free`]).
    pub fn with_default_plan(mut self, plan: Plan) -> Self {
        self.default_plan = plan;
        self
    }

    /// The pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Create or upgrade the schema: applies the shipped migrations not yet applied, in one
    /// transaction. Safe to call at every start.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS tower_api_key_migrations (\
                version INTEGER PRIMARY KEY NOT NULL, name TEXT NOT NULL, \
                applied_at INTEGER NOT NULL)",
        )
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM tower_api_key_migrations")
            .fetch_all(&mut *tx)
            .await
            .map_err(map_err)?;
        for m in MIGRATIONS.iter().filter(|m| !applied.contains(&m.version)) {
            sqlx::raw_sql(m.sql)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
            sqlx::query(
                "INSERT INTO tower_api_key_migrations (version, name, applied_at) \
                 VALUES (?1, ?2, ?3)",
            )
            .bind(m.version)
            .bind(m.name)
            .bind(ts_to_db(Timestamp::now()))
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
            tracing::info!(
                version = m.version,
                name = m.name,
                "key store migration applied"
            );
        }
        tx.commit().await.map_err(map_err)
    }

    /// Whether every migration shipped with this version of the crate has been applied, without
    /// changing anything: for tools that must refuse to work on a store nobody migrated (the
    /// `tower-api-key` CLI), where [`migrate`](Self::migrate) would silently create the schema.
    pub async fn is_migrated(&self) -> Result<bool, StoreError> {
        let tables: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sqlite_master \
             WHERE type = 'table' AND name = 'tower_api_key_migrations'",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(map_err)?;
        if tables == 0 {
            return Ok(false);
        }
        let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM tower_api_key_migrations")
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(MIGRATIONS.iter().all(|m| applied.contains(&m.version)))
    }
}

fn record(row: &SqliteRow) -> Result<KeyRecord, StoreError> {
    let scopes: String = row.try_get("scopes").map_err(map_err)?;
    let networks: String = row.try_get("allowed_networks").map_err(map_err)?;
    KeyRow {
        id: row.try_get("id").map_err(map_err)?,
        org_id: row.try_get("org_id").map_err(map_err)?,
        name: row.try_get("name").map_err(map_err)?,
        hash: row.try_get("hash").map_err(map_err)?,
        hint: row.try_get("hint").map_err(map_err)?,
        scopes: scopes_from_db(scopes.split_ascii_whitespace())?,
        environment: row.try_get("environment").map_err(map_err)?,
        created_at: row.try_get("created_at").map_err(map_err)?,
        expires_at: row.try_get("expires_at").map_err(map_err)?,
        revoked_at: row.try_get("revoked_at").map_err(map_err)?,
        last_used_at: row.try_get("last_used_at").map_err(map_err)?,
        rotated_from: row.try_get("rotated_from").map_err(map_err)?,
        disabled: row.try_get("disabled").map_err(map_err)?,
        metadata: row.try_get("metadata").map_err(map_err)?,
        allowed_networks: networks_from_db(networks.split_ascii_whitespace())?,
        expiry_reminded_at: row.try_get("expiry_reminded_at").map_err(map_err)?,
    }
    .into_record()
}

fn plan(row: &SqliteRow, default: Plan) -> Result<Plan, StoreError> {
    let name: Option<String> = row.try_get("plan").map_err(map_err)?;
    plan_from_db(
        name.as_deref(),
        row.try_get("quota_requests").map_err(map_err)?,
        row.try_get("quota_period_nanos").map_err(map_err)?,
        row.try_get("quota_sessions").map_err(map_err)?,
        default,
    )
}

impl KeyStore for SqliteStore {
    type Lookup = BoxFuture<'static, LookupResult>;

    fn find_by_hash(&self, hash: &KeyHash) -> Self::Lookup {
        let pool = self.pool.clone();
        let hash = *hash;
        let default = self.default_plan;
        Box::pin(async move {
            let row = sqlx::query(concat!(
                "SELECT ",
                key_columns!(k),
                ", p.plan, p.quota_requests, p.quota_period_nanos, p.quota_sessions \
                 FROM api_keys k LEFT JOIN api_key_org_plans p ON p.org_id = k.org_id \
                 WHERE k.hash = ?1"
            ))
            .bind(&hash.as_bytes()[..])
            .fetch_optional(&pool)
            .await
            .map_err(map_err)?;
            match row {
                None => Ok(None),
                Some(row) => Ok(Some(StoredKey {
                    record: Arc::new(record(&row)?),
                    plan: plan(&row, default)?,
                })),
            }
        })
    }

    async fn insert(&self, r: KeyRecord) -> Result<(), StoreError> {
        limits::check_record(&r)?;
        let scopes = r
            .scopes
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        sqlx::query(concat!(
            "INSERT INTO api_keys (",
            key_columns!(),
            ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"
        ))
        .bind(r.id.as_str())
        .bind(r.org_id.as_str())
        .bind(r.name())
        .bind(&r.hash.as_bytes()[..])
        .bind(r.hint())
        .bind(scopes)
        .bind(&*r.environment)
        .bind(ts_to_db(r.created_at))
        .bind(opt_ts_to_db(r.expires_at))
        .bind(opt_ts_to_db(r.revoked_at))
        .bind(opt_ts_to_db(r.last_used_at))
        .bind(r.rotated_from().map(KeyId::as_str))
        .bind(r.is_disabled())
        .bind(metadata_to_db(r.metadata()))
        .bind(networks_column(r.allowed_networks()))
        .bind(opt_ts_to_db(r.expiry_reminded_at()))
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            key_columns!(),
            " FROM api_keys WHERE id = ?1"
        ))
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        row.as_ref().map(record).transpose()
    }

    async fn list(&self, org: &OrgId) -> Result<Vec<KeyRecord>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            key_columns!(),
            " FROM api_keys WHERE org_id = ?1 ORDER BY created_at DESC, id DESC"
        ))
        .bind(org.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter().map(record).collect()
    }

    async fn revoke(&self, id: &KeyId, at: Timestamp) -> Result<Option<KeyRecord>, StoreError> {
        // Earliest revocation wins.
        let row = sqlx::query(concat!(
            "UPDATE api_keys SET revoked_at = MIN(COALESCE(revoked_at, ?2), ?2) \
             WHERE id = ?1 RETURNING ",
            key_columns!()
        ))
        .bind(id.as_str())
        .bind(ts_to_db(at))
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        row.as_ref().map(record).transpose()
    }

    async fn update(
        &self,
        id: &KeyId,
        changes: &KeyChanges,
    ) -> Result<Option<KeyRecord>, StoreError> {
        limits::check_changes(changes)?;
        let scopes = changes
            .scopes
            .as_ref()
            .map(|s| s.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" "));
        let metadata = changes
            .metadata
            .as_ref()
            .map(|m| m.as_ref().filter(|m| !m.is_empty()));
        let row = sqlx::query(concat!(
            "UPDATE api_keys SET name = COALESCE(?2, name), scopes = COALESCE(?3, scopes), \
                 disabled = COALESCE(?4, disabled), \
                 metadata = CASE WHEN ?5 THEN ?6 ELSE metadata END, \
                 allowed_networks = COALESCE(?7, allowed_networks) \
             WHERE id = ?1 RETURNING ",
            key_columns!()
        ))
        .bind(id.as_str())
        .bind(changes.name.as_deref())
        .bind(scopes)
        .bind(changes.disabled)
        .bind(metadata.is_some())
        .bind(metadata_to_db(metadata.flatten()))
        .bind(changes.allowed_networks.as_deref().map(networks_column))
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        row.as_ref().map(record).transpose()
    }

    async fn touch_last_used(&self, batch: &[(KeyId, Timestamp)]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        // One statement per flush: the batch travels as one JSON array of [id, time] pairs.
        let pairs: Vec<(&str, i64)> = batch
            .iter()
            .map(|(id, t)| (id.as_str(), ts_to_db(*t)))
            .collect();
        let json = serde_json::to_string(&pairs).map_err(StoreError::unavailable)?;
        sqlx::query(
            "UPDATE api_keys SET last_used_at = v.t \
             FROM (SELECT json_extract(value, '$[0]') AS id, MAX(json_extract(value, '$[1]')) AS t \
                   FROM json_each(?1) GROUP BY 1) AS v \
             WHERE api_keys.id = v.id \
               AND (api_keys.last_used_at IS NULL OR api_keys.last_used_at < v.t)",
        )
        .bind(json)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn record_usage(&self, batch: &[UsageDelta]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        // One statement per flush: the batch travels as one JSON array, each delta added to
        // its minute, hour and day buckets.
        let json = serde_json::to_string(&usage_json(batch)).map_err(StoreError::unavailable)?;
        sqlx::query(
            "INSERT INTO api_key_usage (org_id, key_id, granularity, bucket, accepted, \
                 rate_limited, scope, session_quota) \
             SELECT d.org_id, d.key_id, g.name, d.minute - d.minute % g.len, SUM(d.a), \
                 SUM(d.r), SUM(d.s), SUM(d.q) \
             FROM (SELECT json_extract(value, '$[0]') AS org_id, \
                          json_extract(value, '$[1]') AS key_id, \
                          json_extract(value, '$[2]') AS minute, \
                          json_extract(value, '$[3]') AS a, json_extract(value, '$[4]') AS r, \
                          json_extract(value, '$[5]') AS s, json_extract(value, '$[6]') AS q \
                   FROM json_each(?1)) AS d \
             CROSS JOIN (SELECT 'minute' AS name, 60000000000 AS len \
                         UNION ALL SELECT 'hour', 3600000000000 \
                         UNION ALL SELECT 'day', 86400000000000) AS g \
             WHERE true \
             GROUP BY 1, 2, 3, 4 \
             ON CONFLICT (org_id, granularity, bucket, key_id) DO UPDATE SET \
                 accepted = accepted + excluded.accepted, \
                 rate_limited = rate_limited + excluded.rate_limited, \
                 scope = scope + excluded.scope, \
                 session_quota = session_quota + excluded.session_quota",
        )
        .bind(json)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn usage(
        &self,
        org: &OrgId,
        from: Timestamp,
        to: Timestamp,
        granularity: Granularity,
    ) -> Result<Vec<UsageRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT key_id, bucket, accepted, rate_limited, scope, session_quota \
             FROM api_key_usage \
             WHERE org_id = ?1 AND granularity = ?2 AND bucket >= ?3 AND bucket < ?4 \
             ORDER BY bucket, key_id",
        )
        .bind(org.as_str())
        .bind(granularity.as_str())
        .bind(ts_to_db(from))
        .bind(ts_to_db(to))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter().map(usage_row).collect()
    }

    async fn prune_usage(
        &self,
        granularity: Granularity,
        before: Timestamp,
    ) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM api_key_usage WHERE granularity = ?1 AND bucket < ?2")
            .bind(granularity.as_str())
            .bind(ts_to_db(before))
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(done.rows_affected())
    }

    async fn set_plan(&self, org: &OrgId, plan: Plan) -> Result<(), StoreError> {
        let row = plan_to_db(plan);
        sqlx::query(
            "INSERT INTO api_key_org_plans \
                 (org_id, plan, quota_requests, quota_period_nanos, quota_sessions, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
             ON CONFLICT (org_id) DO UPDATE SET plan = excluded.plan, \
                 quota_requests = excluded.quota_requests, \
                 quota_period_nanos = excluded.quota_period_nanos, \
                 quota_sessions = excluded.quota_sessions, updated_at = excluded.updated_at",
        )
        .bind(org.as_str())
        .bind(row.name)
        .bind(row.requests)
        .bind(row.period_nanos)
        .bind(row.sessions)
        .bind(ts_to_db(Timestamp::now()))
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn plan(&self, org: &OrgId) -> Result<Plan, StoreError> {
        let row = sqlx::query(
            "SELECT plan, quota_requests, quota_period_nanos, quota_sessions \
             FROM api_key_org_plans WHERE org_id = ?1",
        )
        .bind(org.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        match row {
            None => Ok(self.default_plan),
            Some(row) => plan(&row, self.default_plan),
        }
    }

    async fn claim_expiry_reminders(
        &self,
        now: Timestamp,
        until: Timestamp,
        limit: usize,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        // One statement: a key is claimed by whoever's UPDATE marks it first.
        let rows = sqlx::query(concat!(
            "UPDATE api_keys SET expiry_reminded_at = ?1 WHERE id IN (\
                 SELECT id FROM api_keys WHERE expiry_reminded_at IS NULL \
                 AND revoked_at IS NULL AND expires_at > ?1 AND expires_at <= ?2 LIMIT ?3) \
             RETURNING ",
            key_columns!()
        ))
        .bind(ts_to_db(now))
        .bind(ts_to_db(until))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter().map(record).collect()
    }

    async fn append_audit(&self, entry: AuditEntry) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO api_key_audit_log \
                 (id, org_id, at, actor_type, actor_id, action, key_id, detail) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .bind(entry.id.as_str())
        .bind(entry.org_id.as_str())
        .bind(ts_to_db(entry.at))
        .bind(entry.actor.kind())
        .bind(entry.actor.id())
        .bind(entry.action.as_str())
        .bind(entry.key_id.as_ref().map(KeyId::as_str))
        .bind(entry.detail.to_string())
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn audit_log(
        &self,
        org: &OrgId,
        query: &AuditQuery,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, org_id, at, actor_type, actor_id, action, key_id, detail \
             FROM api_key_audit_log \
             WHERE org_id = ?1 AND (?2 IS NULL OR id < ?2) \
             ORDER BY id DESC LIMIT ?3",
        )
        .bind(org.as_str())
        .bind(query.before.as_deref())
        .bind(audit_limit(query))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter().map(audit_entry).collect()
    }
}

fn audit_entry(row: &SqliteRow) -> Result<AuditEntry, StoreError> {
    AuditRow {
        id: row.try_get("id").map_err(map_err)?,
        org_id: row.try_get("org_id").map_err(map_err)?,
        at: row.try_get("at").map_err(map_err)?,
        actor_type: row.try_get("actor_type").map_err(map_err)?,
        actor_id: row.try_get("actor_id").map_err(map_err)?,
        action: row.try_get("action").map_err(map_err)?,
        key_id: row.try_get("key_id").map_err(map_err)?,
        detail: row.try_get("detail").map_err(map_err)?,
    }
    .into_entry()
}

/// A usage batch as the JSON array `record_usage` reads:
/// `[org, key, minute, accepted, rate_limited, scope, session_quota]` per delta.
fn usage_json(batch: &[UsageDelta]) -> Vec<(&str, &str, i64, i64, i64, i64, i64)> {
    batch
        .iter()
        .map(|d| {
            let c = &d.counts;
            (
                d.org_id.as_str(),
                d.key_id.as_str(),
                ts_to_db(d.minute),
                c.accepted,
                c.rate_limited,
                c.scope,
                c.session_quota,
            )
        })
        .collect()
}

fn usage_row(row: &SqliteRow) -> Result<UsageRow, StoreError> {
    let key_id: String = row.try_get("key_id").map_err(map_err)?;
    let bucket: i64 = row.try_get("bucket").map_err(map_err)?;
    let get = |c: &str| row.try_get::<i64, _>(c).map_err(map_err);
    Ok(UsageRow {
        key_id: KeyId::from(key_id),
        bucket: ts_from_db(bucket),
        counts: UsageCounts {
            accepted: get("accepted")?,
            rate_limited: get("rate_limited")?,
            scope: get("scope")?,
            session_quota: get("session_quota")?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn is_migrated_says_whether_migrate_ran_and_changes_nothing() {
        let store = SqliteStore::memory().await.unwrap();
        assert!(!store.is_migrated().await.unwrap());
        assert!(
            !store.is_migrated().await.unwrap(),
            "asking does not migrate"
        );
        store.migrate().await.unwrap();
        assert!(store.is_migrated().await.unwrap());
    }
}
