//! [`PostgresStore`]: keys in PostgreSQL, shared by every replica; [`PgInvalidations`]: the
//! `LISTEN/NOTIFY` feed that keeps their [`CachedStore`](super::CachedStore)s fresh.
//!
//! # Schema
//!
//! [`PostgresStore::migrate`] applies the migrations shipped in the crate
//! (`migrations/postgres/*.sql`), each once, in a transaction, under an advisory lock (so replicas
//! starting together do not race). Tables: `api_keys` (hash `BYTEA` unique-indexed, org indexed,
//! times as unix-nanosecond `BIGINT`s) and `api_key_org_plans`; bookkeeping in
//! `tower_api_key_migrations`. Everything lives in the connection's schema: pick one with
//! [`PostgresStoreBuilder::schema`] to keep several deployments (or test runs) apart in one
//! database.
//!
//! # Notifications
//!
//! Triggers on both tables `NOTIFY` channel `tower_api_key` for every change a cache cares about
//! (revocation, rotation, scope or expiry change, creation, deletion, plan change: everything but
//! `last_used_at`), inside the transaction that makes the change, so a notification is sent if
//! and only if the change commits, whoever makes it (this crate, another service, an admin in
//! `psql`). [`PgInvalidations`] listens and turns them into [`Invalidation`]s.
//!
//! # How fast a revocation reaches every replica
//!
//! Measured by `tests/replicas.rs` (two `ApiKeyAuth` stacks, each over its own
//! `CachedStore<PostgresStore>`, on one database; PostgreSQL 15 on localhost, 2 cores): from the
//! revocation's commit on one replica to the first refusal on the other, 0.3–0.6 ms at best, a
//! median of 2–3 ms and at worst 14 ms (those two include the test's 1 ms polling). So: well
//! under a second, typically a few milliseconds plus the network's latency. If the listener's
//! connection drops, it reconnects and the whole cache is dropped (about 10 ms after the
//! connection was killed, in the same test); the cache TTL bounds only what is lost without the
//! listener noticing.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use tower_api_key::{ApiKeyAuth, KeyManager};
//! use tower_api_key::store::{CachedStore, PostgresStore};
//!
//! let store = PostgresStore::connect("postgres://app@db/app").await?;
//! store.migrate().await?;
//! let cached = CachedStore::new(store.clone());
//! cached.subscribe(store.invalidations().await?);
//! let manager = KeyManager::new(cached.clone());
//! let layer = ApiKeyAuth::new(cached);
//! # let _ = (manager, layer); Ok(()) }
//! ```

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, Row};

use crate::audit::{AuditEntry, AuditQuery};
use crate::clock::Timestamp;
use crate::ids::{KeyId, OrgId};
use crate::key::KeyHash;
use crate::plan::Plan;

use super::cached::{Invalidation, InvalidationSource};
use super::sql::{
    AuditRow, KeyRow, Migration, audit_limit, key_columns, map_err, metadata_to_db,
    networks_from_db, networks_to_db, opt_ts_to_db, plan_from_db, plan_to_db, scopes_from_db,
    ts_from_db, ts_to_db,
};
use super::{
    BoxFuture, Granularity, KeyChanges, KeyRecord, KeyStore, LookupResult, StoreError, StoredKey,
    UsageCounts, UsageDelta, UsageRow, limits,
};

/// The channel the triggers notify on.
pub const NOTIFY_CHANNEL: &str = "tower_api_key";

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "keys_and_plans",
        sql: include_str!("../../migrations/postgres/0001_keys_and_plans.sql"),
    },
    Migration {
        version: 2,
        name: "key_policies",
        sql: include_str!("../../migrations/postgres/0002_key_policies.sql"),
    },
    Migration {
        version: 3,
        name: "credits",
        sql: include_str!("../../migrations/postgres/0003_credits.sql"),
    },
    Migration {
        version: 4,
        name: "usage",
        sql: include_str!("../../migrations/postgres/0004_usage.sql"),
    },
    Migration {
        version: 5,
        name: "audit",
        sql: include_str!("../../migrations/postgres/0005_audit.sql"),
    },
];

/// Serializes migrations across processes (`pg_advisory_xact_lock`); an arbitrary constant.
const MIGRATION_LOCK: i64 = 0x7461_6b5f_6d69_6772;

/// The store was configured wrongly (e.g. an invalid schema name or URL).
#[derive(Debug, thiserror::Error)]
#[error("invalid PostgreSQL store configuration: {0}")]
pub struct PgConfigError(String);

/// Key records and plans in PostgreSQL. Cheap to clone (a pool handle).
///
/// Use it behind a [`CachedStore`](super::CachedStore): every lookup here is a round trip.
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    schema: Option<Arc<str>>,
    default_plan: Plan,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("schema", &self.schema)
            .field("default_plan", &self.default_plan)
            .field("pool_size", &self.pool.size())
            .finish()
    }
}

/// Options of a [`PostgresStore`]; from [`PostgresStore::builder`].
#[derive(Clone, Debug)]
pub struct PostgresStoreBuilder {
    url: String,
    schema: Option<String>,
    max_connections: u32,
    acquire_timeout: Duration,
    default_plan: Plan,
}

impl PostgresStoreBuilder {
    /// Keep the tables in this schema (created by [`PostgresStore::migrate`]); default: the
    /// connection's current schema (usually `public`). Lower-case letters, digits and `_`, not
    /// starting with a digit, at most 63 bytes.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }

    /// Pool size (default 10).
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// How long an operation waits for a pooled connection before failing with
    /// [`StoreError::Timeout`] (default 5 s).
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// The plan of organizations that have none set (default [`Plan::Free`]).
    pub fn default_plan(mut self, plan: Plan) -> Self {
        self.default_plan = plan;
        self
    }

    /// Open the pool (one connection is made now, to fail early).
    pub async fn connect(self) -> Result<PostgresStore, StoreError> {
        let mut options = PgConnectOptions::from_str(&self.url)
            .map_err(|e| StoreError::unavailable(PgConfigError(e.to_string())))?
            .application_name("tower-api-key");
        if let Some(schema) = &self.schema {
            if !valid_schema(schema) {
                return Err(StoreError::unavailable(PgConfigError(format!(
                    "schema {schema:?}: use [a-z_][a-z0-9_]*, at most 63 bytes"
                ))));
            }
            options = options.options([("search_path", schema.as_str())]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(self.max_connections)
            .acquire_timeout(self.acquire_timeout)
            .connect_with(options)
            .await
            .map_err(map_err)?;
        Ok(PostgresStore {
            pool,
            schema: self.schema.map(Arc::from),
            default_plan: self.default_plan,
        })
    }
}

fn valid_schema(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.as_bytes()[0].is_ascii_digit()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl PostgresStore {
    /// Connect with the defaults (see [`PostgresStoreBuilder`]). Run [`migrate`](Self::migrate)
    /// before first use.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::builder(url).connect().await
    }

    /// Options for a store at `url` (`postgres://user:password@host:port/database`).
    pub fn builder(url: impl Into<String>) -> PostgresStoreBuilder {
        PostgresStoreBuilder {
            url: url.into(),
            schema: None,
            max_connections: 10,
            acquire_timeout: Duration::from_secs(5),
            default_plan: Plan::Free,
        }
    }

    /// Use an existing pool (its connections' `search_path` decides the schema).
    pub fn from_pool(pool: PgPool) -> Self {
        Self {
            pool,
            schema: None,
            default_plan: Plan::Free,
        }
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Create or upgrade the schema: applies the shipped migrations not yet applied, in one
    /// transaction, under an advisory lock. Safe to call at every start, from every replica.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        if let Some(schema) = &self.schema {
            // `schema` was validated as [a-z_][a-z0-9_]* at connect.
            sqlx::raw_sql(AssertSqlSafe(format!(
                "CREATE SCHEMA IF NOT EXISTS \"{schema}\""
            )))
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        }
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS tower_api_key_migrations (\
                version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
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
                 VALUES ($1, $2, $3)",
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

    /// Whether every migration shipped with this version of the crate has been applied in this
    /// store's schema, without changing anything: for tools that must refuse to work on a store
    /// nobody migrated (the `tower-api-key` CLI), where [`migrate`](Self::migrate) would
    /// silently create the schema.
    pub async fn is_migrated(&self) -> Result<bool, StoreError> {
        // `to_regclass` resolves the name through the connection's `search_path`, as every
        // other query of the store does; NULL when there is no such table.
        let table: Option<String> =
            sqlx::query_scalar("SELECT to_regclass('tower_api_key_migrations')::text")
                .fetch_one(&self.pool)
                .await
                .map_err(map_err)?;
        if table.is_none() {
            return Ok(false);
        }
        let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM tower_api_key_migrations")
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(MIGRATIONS.iter().all(|m| applied.contains(&m.version)))
    }

    /// The schema this store's tables live in.
    async fn resolved_schema(&self) -> Result<Arc<str>, StoreError> {
        if let Some(s) = &self.schema {
            return Ok(s.clone());
        }
        let current: Option<String> = sqlx::query_scalar("SELECT current_schema()")
            .fetch_one(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(Arc::from(current.unwrap_or_else(|| "public".to_owned())))
    }

    /// A [`LISTEN`](https://www.postgresql.org/docs/current/sql-listen.html) feed of this
    /// store's changes, for [`CachedStore::subscribe`](super::CachedStore::subscribe). Returns once
    /// the listener is connected and listening, so no change committed afterwards is missed.
    ///
    /// It holds one dedicated connection (application name `tower-api-key-listener:SCHEMA`). It
    /// reconnects by itself, with backoff (100 ms doubling to 5 s); after any reconnection it
    /// yields [`Invalidation::All`], since notifications sent meanwhile are lost.
    pub async fn invalidations(&self) -> Result<PgInvalidations, StoreError> {
        let schema = self.resolved_schema().await?;
        let mut app = format!("tower-api-key-listener:{schema}");
        // application_name holds at most 63 bytes; the prefix is ASCII, so cut on a boundary.
        while app.len() > 63 {
            app.pop();
        }
        let options = PgConnectOptions::clone(&self.pool.connect_options()).application_name(&app);
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .max_lifetime(None)
            .idle_timeout(None)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(options);
        let listener = PgInvalidations::listen(&pool).await.map_err(map_err)?;
        Ok(PgInvalidations {
            pool,
            listener: Some(listener),
            schema,
            backoff: BACKOFF_MIN,
        })
    }
}

fn key_row(row: &PgRow) -> Result<KeyRow, StoreError> {
    Ok(KeyRow {
        id: row.try_get("id").map_err(map_err)?,
        org_id: row.try_get("org_id").map_err(map_err)?,
        name: row.try_get("name").map_err(map_err)?,
        hash: row.try_get("hash").map_err(map_err)?,
        hint: row.try_get("hint").map_err(map_err)?,
        scopes: scopes_from_db(row.try_get::<Vec<String>, _>("scopes").map_err(map_err)?)?,
        environment: row.try_get("environment").map_err(map_err)?,
        created_at: row.try_get("created_at").map_err(map_err)?,
        expires_at: row.try_get("expires_at").map_err(map_err)?,
        revoked_at: row.try_get("revoked_at").map_err(map_err)?,
        last_used_at: row.try_get("last_used_at").map_err(map_err)?,
        rotated_from: row.try_get("rotated_from").map_err(map_err)?,
        disabled: row.try_get("disabled").map_err(map_err)?,
        metadata: row.try_get("metadata").map_err(map_err)?,
        allowed_networks: networks_from_db(
            row.try_get::<Vec<String>, _>("allowed_networks")
                .map_err(map_err)?,
        )?,
        expiry_reminded_at: row.try_get("expiry_reminded_at").map_err(map_err)?,
    })
}

fn record(row: &PgRow) -> Result<KeyRecord, StoreError> {
    key_row(row)?.into_record()
}

fn plan(row: &PgRow, default: Plan) -> Result<Plan, StoreError> {
    let name: Option<String> = row.try_get("plan").map_err(map_err)?;
    plan_from_db(
        name.as_deref(),
        row.try_get("quota_requests").map_err(map_err)?,
        row.try_get("quota_period_nanos").map_err(map_err)?,
        row.try_get("quota_sessions").map_err(map_err)?,
        default,
    )
}

impl KeyStore for PostgresStore {
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
                 WHERE k.hash = $1"
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
        let scopes: Vec<&str> = r.scopes.iter().map(|s| s.as_str()).collect();
        sqlx::query(concat!(
            "INSERT INTO api_keys (",
            key_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
        ))
        .bind(r.id.as_str())
        .bind(r.org_id.as_str())
        .bind(r.name())
        .bind(&r.hash.as_bytes()[..])
        .bind(r.hint())
        .bind(&scopes[..])
        .bind(&*r.environment)
        .bind(ts_to_db(r.created_at))
        .bind(opt_ts_to_db(r.expires_at))
        .bind(opt_ts_to_db(r.revoked_at))
        .bind(opt_ts_to_db(r.last_used_at))
        .bind(r.rotated_from().map(KeyId::as_str))
        .bind(r.is_disabled())
        .bind(metadata_to_db(r.metadata()))
        .bind(networks_to_db(r.allowed_networks()))
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
            " FROM api_keys WHERE id = $1"
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
            " FROM api_keys WHERE org_id = $1 ORDER BY created_at DESC, id COLLATE \"C\" DESC"
        ))
        .bind(org.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter().map(record).collect()
    }

    async fn revoke(&self, id: &KeyId, at: Timestamp) -> Result<Option<KeyRecord>, StoreError> {
        // Earliest revocation wins; the trigger notifies only if the value changed.
        let row = sqlx::query(concat!(
            "UPDATE api_keys SET revoked_at = LEAST(COALESCE(revoked_at, $2), $2) \
             WHERE id = $1 RETURNING ",
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
        let scopes: Option<Vec<&str>> = changes
            .scopes
            .as_ref()
            .map(|s| s.iter().map(|s| s.as_str()).collect());
        let metadata = changes
            .metadata
            .as_ref()
            .map(|m| m.as_ref().filter(|m| !m.is_empty()));
        // The trigger notifies every replica's cache if any of these changed.
        let row = sqlx::query(concat!(
            "UPDATE api_keys SET name = COALESCE($2, name), scopes = COALESCE($3, scopes), \
                 disabled = COALESCE($4, disabled), \
                 metadata = CASE WHEN $5 THEN $6 ELSE metadata END, \
                 allowed_networks = COALESCE($7, allowed_networks) \
             WHERE id = $1 RETURNING ",
            key_columns!()
        ))
        .bind(id.as_str())
        .bind(changes.name.as_deref())
        .bind(scopes.as_deref())
        .bind(changes.disabled)
        .bind(metadata.is_some())
        .bind(metadata_to_db(metadata.flatten()))
        .bind(changes.allowed_networks.as_deref().map(networks_to_db))
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        row.as_ref().map(record).transpose()
    }

    async fn touch_last_used(&self, batch: &[(KeyId, Timestamp)]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = batch.iter().map(|(id, _)| id.as_str()).collect();
        let times: Vec<i64> = batch.iter().map(|(_, t)| ts_to_db(*t)).collect();
        // One statement per flush; forward-only; duplicates in the batch collapse to their
        // latest time; unknown ids match no row.
        sqlx::query(
            "UPDATE api_keys AS k SET last_used_at = v.t \
             FROM (SELECT id, MAX(t) AS t FROM UNNEST($1::text[], $2::bigint[]) AS u(id, t) \
                   GROUP BY id) AS v \
             WHERE k.id = v.id AND (k.last_used_at IS NULL OR k.last_used_at < v.t)",
        )
        .bind(&ids[..])
        .bind(&times[..])
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn record_usage(&self, batch: &[UsageDelta]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let col = |f: fn(&UsageDelta) -> i64| batch.iter().map(f).collect::<Vec<i64>>();
        let orgs: Vec<&str> = batch.iter().map(|d| d.org_id.as_str()).collect();
        let keys: Vec<&str> = batch.iter().map(|d| d.key_id.as_str()).collect();
        // One statement per flush: each delta added to its minute, hour and day buckets.
        // Grouped (a batch may hold two minutes of one hour) and sorted, so that replicas
        // flushing at once lock shared buckets in the same order.
        sqlx::query(
            "INSERT INTO api_key_usage AS u (org_id, key_id, granularity, bucket, accepted, \
                 rate_limited, scope, session_quota) \
             SELECT d.org_id, d.key_id, g.name, d.minute - d.minute % g.len, SUM(d.a), \
                 SUM(d.r), SUM(d.s), SUM(d.q) \
             FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[], \
                         $6::bigint[], $7::bigint[]) AS d(org_id, key_id, minute, a, r, s, q) \
             CROSS JOIN (VALUES ('minute', 60000000000::bigint), ('hour', 3600000000000::bigint), \
                                ('day', 86400000000000::bigint)) AS g(name, len) \
             GROUP BY 1, 2, 3, 4 \
             ORDER BY 1, 3, 4, 2 \
             ON CONFLICT (org_id, granularity, bucket, key_id) DO UPDATE SET \
                 accepted = u.accepted + EXCLUDED.accepted, \
                 rate_limited = u.rate_limited + EXCLUDED.rate_limited, \
                 scope = u.scope + EXCLUDED.scope, \
                 session_quota = u.session_quota + EXCLUDED.session_quota",
        )
        .bind(&orgs[..])
        .bind(&keys[..])
        .bind(col(|d| ts_to_db(d.minute)))
        .bind(col(|d| d.counts.accepted))
        .bind(col(|d| d.counts.rate_limited))
        .bind(col(|d| d.counts.scope))
        .bind(col(|d| d.counts.session_quota))
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
             WHERE org_id = $1 AND granularity = $2 AND bucket >= $3 AND bucket < $4 \
             ORDER BY bucket, key_id",
        )
        .bind(org.as_str())
        .bind(granularity.as_str())
        .bind(ts_to_db(from))
        .bind(ts_to_db(to))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(|row| {
                let get = |c: &str| row.try_get::<i64, _>(c).map_err(map_err);
                let key_id: String = row.try_get("key_id").map_err(map_err)?;
                Ok(UsageRow {
                    key_id: KeyId::from(key_id),
                    bucket: ts_from_db(get("bucket")?),
                    counts: UsageCounts {
                        accepted: get("accepted")?,
                        rate_limited: get("rate_limited")?,
                        scope: get("scope")?,
                        session_quota: get("session_quota")?,
                    },
                })
            })
            .collect()
    }

    async fn prune_usage(
        &self,
        granularity: Granularity,
        before: Timestamp,
    ) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM api_key_usage WHERE granularity = $1 AND bucket < $2")
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
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (org_id) DO UPDATE SET plan = EXCLUDED.plan, \
                 quota_requests = EXCLUDED.quota_requests, \
                 quota_period_nanos = EXCLUDED.quota_period_nanos, \
                 quota_sessions = EXCLUDED.quota_sessions, updated_at = EXCLUDED.updated_at",
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
             FROM api_key_org_plans WHERE org_id = $1",
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
        // SKIP LOCKED: replicas claiming at once split the due keys instead of waiting; the
        // re-check of `expiry_reminded_at` in the outer WHERE keeps each key claimed once.
        let rows = sqlx::query(concat!(
            "UPDATE api_keys SET expiry_reminded_at = $1 WHERE id IN (\
                 SELECT id FROM api_keys WHERE expiry_reminded_at IS NULL \
                 AND revoked_at IS NULL AND expires_at > $1 AND expires_at <= $2 \
                 LIMIT $3 FOR UPDATE SKIP LOCKED) AND expiry_reminded_at IS NULL \
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
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
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
             WHERE org_id = $1 AND ($2::text IS NULL OR id < $2) \
             ORDER BY id DESC LIMIT $3",
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

fn audit_entry(row: &PgRow) -> Result<AuditEntry, StoreError> {
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

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Invalidations of one [`PostgresStore`]'s schema, received by `LISTEN tower_api_key`.
///
/// From [`PostgresStore::invalidations`]; pass it to
/// [`CachedStore::subscribe`](super::CachedStore::subscribe). Notifications of other schemas on
/// the same database are skipped; a payload it cannot read yields [`Invalidation::All`] (safe
/// rather than stale).
pub struct PgInvalidations {
    pool: PgPool,
    listener: Option<PgListener>,
    schema: Arc<str>,
    backoff: Duration,
}

impl fmt::Debug for PgInvalidations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgInvalidations")
            .field("schema", &self.schema)
            .field("connected", &self.listener.is_some())
            .finish()
    }
}

#[derive(serde::Deserialize)]
struct Payload {
    s: String,
    #[serde(default)]
    h: Option<String>,
    #[serde(default)]
    o: Option<String>,
}

impl PgInvalidations {
    async fn listen(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(NOTIFY_CHANNEL).await?;
        Ok(listener)
    }

    /// `None` for another schema's notification.
    fn parse(&self, payload: &str) -> Option<Invalidation> {
        let Ok(p) = serde_json::from_str::<Payload>(payload) else {
            tracing::warn!("unreadable key store notification; dropping the whole cache");
            return Some(Invalidation::All);
        };
        if *p.s != *self.schema {
            return None;
        }
        match (p.h, p.o) {
            (Some(h), _) => match KeyHash::from_hex(&h) {
                Some(hash) => Some(Invalidation::Key(hash)),
                None => Some(Invalidation::All),
            },
            (None, Some(org)) => Some(Invalidation::Org(OrgId::from(org))),
            (None, None) => Some(Invalidation::All),
        }
    }
}

impl InvalidationSource for PgInvalidations {
    async fn next(&mut self) -> Option<Invalidation> {
        loop {
            let Some(listener) = self.listener.as_mut() else {
                match Self::listen(&self.pool).await {
                    Ok(listener) => {
                        tracing::info!("key store listener reconnected; dropping the cache");
                        self.listener = Some(listener);
                        self.backoff = BACKOFF_MIN;
                        return Some(Invalidation::All);
                    }
                    Err(error) => {
                        tracing::warn!(%error, retry_in = ?self.backoff, "key store listener cannot reconnect");
                        tokio::time::sleep(self.backoff).await;
                        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                        continue;
                    }
                }
            };
            match listener.try_recv().await {
                Ok(Some(notification)) => {
                    if let Some(inv) = self.parse(notification.payload()) {
                        return Some(inv);
                    }
                }
                Ok(None) => {
                    // sqlx reconnected (eagerly) and re-listened; what was sent meanwhile is lost.
                    tracing::warn!("key store listener lost its connection; dropping the cache");
                    return Some(Invalidation::All);
                }
                Err(error) => {
                    tracing::warn!(%error, "key store listener failed; reconnecting");
                    self.listener = None;
                }
            }
        }
    }
}
