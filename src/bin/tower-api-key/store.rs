//! Opening the store: SQLite or PostgreSQL, never migrated behind the operator's back.

use super::*;

pub(super) fn store_url(store: Option<String>) -> Result<String, Failure> {
    store.filter(|s| !s.is_empty()).ok_or_else(|| {
        Failure::usage("no key store given: pass --store URL or set TOWER_API_KEY_STORE")
    })
}

pub(super) async fn migrated_store(store: Option<String>) -> Result<BoxedStore, Failure> {
    Ok(migrated(store).await?.boxed())
}

/// The store, opened and checked to be migrated.
pub(super) async fn migrated(store: Option<String>) -> Result<Store, Failure> {
    let url = store_url(store)?;
    let store = Store::open(&url, false).await?;
    if !store
        .is_migrated()
        .await
        .map_err(|e| unreachable(&url, &e))?
    {
        return Err(not_migrated(&url));
    }
    Ok(store)
}

pub(super) fn not_migrated(url: &str) -> Failure {
    Failure::new(
        NOT_MIGRATED,
        format!(
            "the key store at {} is not migrated: run `tower-api-key migrate` with the same store first",
            redact(url)
        ),
    )
}

pub(super) fn unreachable(url: &str, e: &StoreError) -> Failure {
    Failure::new(
        UNREACHABLE,
        format!(
            "cannot use the key store at {}: {e}; check the URL (--store or TOWER_API_KEY_STORE) and that the database is up",
            redact(url)
        ),
    )
}

/// The URL without its password, for messages.
pub(super) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            let hidden = if userinfo.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{hidden}@{host}{tail}")
        }
        None => url.to_owned(),
    }
}

/// The stores the CLI works on, opened without migrating them.
pub(super) enum Store {
    Sqlite(SqliteStore),
    Postgres(PostgresStore),
}

impl Store {
    /// Open the store at `url`. Unless `create`, a SQLite file that does not exist is not
    /// created: it is reported as not migrated.
    pub(super) async fn open(url: &str, create: bool) -> Result<Self, Failure> {
        let scheme = url.split(':').next().unwrap_or_default();
        match scheme {
            "sqlite" => {
                if !create {
                    if let Some(path) = sqlite_file(url) {
                        let parent_exists = path
                            .parent()
                            .is_none_or(|p| p.as_os_str().is_empty() || p.is_dir());
                        if !path.exists() && parent_exists {
                            return Err(not_migrated(url));
                        }
                    }
                }
                SqliteStore::connect(url)
                    .await
                    .map(Store::Sqlite)
                    .map_err(|e| unreachable(url, &e))
            }
            "postgres" | "postgresql" => PostgresStore::builder(url)
                .max_connections(2)
                .connect()
                .await
                .map(Store::Postgres)
                .map_err(|e| unreachable(url, &e)),
            _ => Err(Failure::usage(format!(
                "unsupported key store URL scheme {scheme:?}: use sqlite://FILE or postgres://USER@HOST/DB"
            ))),
        }
    }

    pub(super) async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.migrate().await,
            Store::Postgres(s) => s.migrate().await,
        }
    }

    pub(super) async fn is_migrated(&self) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(s) => s.is_migrated().await,
            Store::Postgres(s) => s.is_migrated().await,
        }
    }

    fn boxed(self) -> BoxedStore {
        match self {
            Store::Sqlite(s) => BoxedStore::new(s),
            Store::Postgres(s) => BoxedStore::new(s),
        }
    }
}

/// The file of a `sqlite://FILE` or `sqlite:FILE` URL; `None` for in-memory databases.
pub(super) fn sqlite_file(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() || path.contains(":memory:") || url.contains("mode=memory") {
        return None;
    }
    Some(PathBuf::from(path))
}
