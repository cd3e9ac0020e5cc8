//! PostgreSQL for tests: `DATABASE_URL`, one fresh schema per test, dropped afterwards.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tower_api_key::store::PostgresStore;

/// The database URL, or `None` (with the reason printed) when the tests should skip.
pub fn database_url(test: &str) -> Option<String> {
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("skipping {test}: DATABASE_URL is not set");
            None
        }
    }
}

/// A schema name no other test (or concurrent run) uses.
pub fn unique_schema() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "tak_test_{}_{}_{}",
        std::process::id(),
        nanos % 1_000_000_000_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Drops its schema (and everything in it) when dropped, even if the test failed.
pub struct SchemaGuard {
    url: String,
    schema: String,
}

impl SchemaGuard {
    pub fn schema(&self) -> &str {
        &self.schema
    }
}

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        let url = self.url.clone();
        let sql = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.schema);
        // Drop may run inside a tokio runtime: do the async work on a thread of its own.
        let joined = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                use sqlx::Connection;
                let mut conn = sqlx::PgConnection::connect(&url).await?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(&mut conn)
                    .await?;
                conn.close().await
            })
        })
        .join();
        if !matches!(joined, Ok(Ok(()))) {
            eprintln!("could not drop test schema {}", self.schema);
        }
    }
}

/// A migrated store in a fresh schema. Panics (fails the test) if `DATABASE_URL` is set but the
/// database cannot be used.
pub async fn store(url: &str) -> (PostgresStore, SchemaGuard) {
    let schema = unique_schema();
    let guard = SchemaGuard {
        url: url.to_owned(),
        schema: schema.clone(),
    };
    let store = PostgresStore::builder(url)
        .schema(schema)
        .max_connections(4)
        .connect()
        .await
        .expect("DATABASE_URL is set but PostgreSQL is unreachable");
    store.migrate().await.expect("migrate");
    (store, guard)
}

/// A second store on the same schema (another replica).
pub async fn replica(url: &str, guard: &SchemaGuard) -> PostgresStore {
    PostgresStore::builder(url)
        .schema(guard.schema())
        .max_connections(4)
        .connect()
        .await
        .expect("DATABASE_URL is set but PostgreSQL is unreachable")
}

/// An empty schema, not migrated (dropped with the guard), for tools that migrate themselves.
pub async fn empty_schema(url: &str) -> SchemaGuard {
    use sqlx::Connection;
    let schema = unique_schema();
    let guard = SchemaGuard {
        url: url.to_owned(),
        schema: schema.clone(),
    };
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .expect("DATABASE_URL is set but PostgreSQL is unreachable");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA \"{schema}\"")))
        .execute(&mut conn)
        .await
        .expect("create schema");
    conn.close().await.expect("close");
    guard
}

/// `url` with its connections' `search_path` set to `schema`, for whatever takes only a URL
/// (the example server, the CLI).
pub fn url_in_schema(url: &str, schema: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options[search_path]={schema}")
}
