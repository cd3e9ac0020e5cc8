//! [`KeyManager`]: create, list, get, revoke and rotate keys; set plans.
//!
//! Every operation is scoped to an organization: a key id from another organization is
//! [`ManageError::NotFound`], exactly as if it did not exist. The `*_for` variants act on behalf of
//! an authenticated [`Principal`] and enforce that a key never grants more than it holds.

use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};

use crate::clock::{Clock, Timestamp};
use crate::ids::{KeyId, OrgId};
use crate::key::{ApiKey, KeyFormat, KeyFormats, RngError};
use crate::plan::Plan;
use crate::principal::Principal;
use crate::scopes::Scopes;
use crate::store::{
    Granularity, KeyChanges, KeyRecord, KeyStore, StoreError, UsageCounts, UsageRow,
};

/// A key management operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManageError {
    /// No such key in this organization.
    #[error("no such API key")]
    NotFound,
    /// The acting key may not grant these scopes: they are not within its own.
    #[error("an API key can only grant scopes it holds itself")]
    ScopeEscalation,
    /// The key is revoked; revoked keys cannot be rotated or reinstated.
    #[error("the API key is revoked")]
    Revoked,
    /// The name is empty or longer than 128 characters.
    #[error("key names must be 1 to 128 characters")]
    InvalidName,
    /// No configured format issues keys for this environment.
    #[error("no key format for environment {0:?}")]
    UnknownEnvironment(String),
    /// The expiry is not in the future.
    #[error("expiry must be in the future")]
    ExpiryInPast,
    /// A usage query's range is empty, or holds more than
    /// [`KeyManager::MAX_USAGE_BUCKETS`] buckets of its granularity.
    #[error("usage range must be non-empty and span at most {max} buckets", max = KeyManager::<()>::MAX_USAGE_BUCKETS)]
    InvalidUsageRange,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The random number generator failed.
    #[error(transparent)]
    Rng(#[from] RngError),
}

impl ManageError {
    /// The HTTP status a key-management endpoint answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            ManageError::NotFound => StatusCode::NOT_FOUND,
            ManageError::ScopeEscalation => StatusCode::FORBIDDEN,
            ManageError::Revoked => StatusCode::CONFLICT,
            ManageError::InvalidName
            | ManageError::UnknownEnvironment(_)
            | ManageError::ExpiryInPast => StatusCode::UNPROCESSABLE_ENTITY,
            ManageError::InvalidUsageRange => StatusCode::BAD_REQUEST,
            ManageError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            ManageError::Rng(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code of the problem body.
    pub fn code(&self) -> &'static str {
        match self {
            ManageError::NotFound => "key_not_found",
            ManageError::ScopeEscalation => "scope_escalation",
            ManageError::Revoked => "key_revoked",
            ManageError::InvalidName => "invalid_name",
            ManageError::UnknownEnvironment(_) => "unknown_environment",
            ManageError::ExpiryInPast => "expiry_in_past",
            ManageError::InvalidUsageRange => "invalid_usage_range",
            ManageError::Store(_) => "store_unavailable",
            ManageError::Rng(_) => "internal_error",
        }
    }

    /// The `application/problem+json` response, as the layers' refusals are shaped:
    /// `type`, `title`, `status`, `code`. Store and RNG failures are logged, and their detail
    /// stays out of the body.
    pub fn problem_response(&self) -> Response<Bytes> {
        let title = match self {
            ManageError::Store(e) => {
                tracing::warn!(error = %e, "key management: store failed");
                "The key store is temporarily unavailable; retry later".to_owned()
            }
            ManageError::Rng(e) => {
                tracing::error!(error = %e, "key management: random number generator failed");
                "Internal error".to_owned()
            }
            other => other.to_string(),
        };
        let status = self.status();
        let body = serde_json::json!({
            "type": "about:blank",
            "title": title,
            "status": status.as_u16(),
            "code": self.code(),
        });
        let mut res = Response::new(Bytes::from(body.to_string()));
        *res.status_mut() = status;
        res.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/problem+json"),
        );
        if let ManageError::Store(_) = self {
            res.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("5"),
            );
        }
        res
    }
}

/// With the `axum` feature, handlers return `Result<_, ManageError>` and use `?`.
#[cfg(feature = "axum")]
impl axum_core::response::IntoResponse for ManageError {
    fn into_response(self) -> axum_core::response::Response {
        self.problem_response().map(axum_core::body::Body::from)
    }
}

/// The parameters of a new key.
///
/// ```
/// use std::time::Duration;
/// use tower_api_key::{NewKey, Scopes};
/// let spec = NewKey::new("ci-pipeline")
///     .scopes(Scopes::parse(["browser_sessions:create", "browser_sessions:read"])?)
///     .expires_in(Duration::from_secs(90 * 24 * 3600));
/// # Ok::<(), tower_api_key::InvalidScope>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct NewKey {
    name: String,
    scopes: Scopes,
    expiry: Option<Expiry>,
    environment: Option<String>,
}

#[derive(Clone, Copy, Debug)]
enum Expiry {
    At(Timestamp),
    In(Duration),
}

impl NewKey {
    /// A full-access key named `name`, never expiring, in the primary format.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    /// The key's scopes (empty = full access).
    pub fn scopes(mut self, scopes: Scopes) -> Self {
        self.scopes = scopes;
        self
    }

    /// Expire at a given time.
    pub fn expires_at(mut self, at: Timestamp) -> Self {
        self.expiry = Some(Expiry::At(at));
        self
    }

    /// Expire this long after creation.
    pub fn expires_in(mut self, d: Duration) -> Self {
        self.expiry = Some(Expiry::In(d));
        self
    }

    /// Issue the key in the format of this environment (e.g. `test` for `br_test_`).
    pub fn environment(mut self, env: impl Into<String>) -> Self {
        self.environment = Some(env.into());
        self
    }
}

/// A freshly created key: the secret, shown once, and its record.
#[derive(Debug)]
pub struct CreatedKey {
    /// The secret. Give it to the user once; it cannot be recovered.
    pub key: ApiKey,
    /// The stored record (no secret in it).
    pub record: KeyRecord,
}

/// Options of [`KeyManager::rotate`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Rotation {
    /// Keep the old key working this long after the rotation (default: revoke it at once).
    pub grace: Option<Duration>,
}

impl Rotation {
    /// Revoke the old key immediately.
    pub fn immediate() -> Self {
        Self::default()
    }

    /// Keep the old key working for `grace`, then it is revoked.
    pub fn with_grace(grace: Duration) -> Self {
        Self { grace: Some(grace) }
    }
}

/// Manages keys in a [`KeyStore`].
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use tower_api_key::{KeyManager, MemoryStore, NewKey, OrgId, Rotation};
///
/// let manager = KeyManager::new(MemoryStore::new());
/// let org = OrgId::from("org_acme");
/// let created = manager.create(&org, NewKey::new("web")).await?;
/// println!("your key (shown once): {}", created.key.expose_secret());
///
/// let rotated = manager.rotate(&org, &created.record.id, Rotation::immediate()).await?;
/// assert_eq!(rotated.record.name(), "web");
/// let old = manager.get(&org, &created.record.id).await?;
/// assert!(old.revoked_at.is_some());
/// # Ok::<(), Box<dyn std::error::Error>>(()) }).unwrap();
/// ```
#[derive(Clone, Debug)]
pub struct KeyManager<St> {
    store: St,
    formats: KeyFormats,
    clock: Clock,
}

impl<St: KeyStore> KeyManager<St> {
    /// A manager issuing `br_live_` keys, on the same default clock as the layers
    /// ([`Clock::coarse`]).
    pub fn new(store: St) -> Self {
        Self {
            store,
            formats: KeyFormats::default(),
            clock: Clock::default(),
        }
    }

    /// Issue keys in these formats (the first is the default; others by
    /// [`NewKey::environment`]).
    pub fn formats(mut self, formats: impl Into<KeyFormats>) -> Self {
        self.formats = formats.into();
        self
    }

    /// The clock for creation, expiry and revocation times.
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The store.
    pub fn store(&self) -> &St {
        &self.store
    }

    /// The accepted formats.
    pub fn key_formats(&self) -> &KeyFormats {
        &self.formats
    }

    /// The time by this manager's clock (which decides whether a key is expired or revoked).
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    fn format_for(&self, env: Option<&str>) -> Result<&KeyFormat, ManageError> {
        match env {
            None => Ok(self.formats.primary()),
            Some(env) => self
                .formats
                .for_environment(env)
                .ok_or_else(|| ManageError::UnknownEnvironment(env.to_owned())),
        }
    }

    /// Create a key for `org`. The secret is in the result and nowhere else.
    pub async fn create(&self, org: &OrgId, spec: NewKey) -> Result<CreatedKey, ManageError> {
        self.create_inner(org, spec, None).await
    }

    /// Create a key on behalf of `actor`, in the actor's organization. Fails with
    /// [`ManageError::ScopeEscalation`] unless the new key's scopes are within the actor's (a
    /// full-access key may only be minted by a full-access key).
    pub async fn create_for(
        &self,
        actor: &Principal,
        spec: NewKey,
    ) -> Result<CreatedKey, ManageError> {
        if !actor.scopes().covers(&spec.scopes) {
            return Err(ManageError::ScopeEscalation);
        }
        self.create_inner(actor.org_id(), spec, None).await
    }

    async fn create_inner(
        &self,
        org: &OrgId,
        spec: NewKey,
        rotated_from: Option<KeyId>,
    ) -> Result<CreatedKey, ManageError> {
        let name = valid_name(&spec.name)?;
        let format = self.format_for(spec.environment.as_deref())?;
        let now = self.clock.now();
        let expires_at = match spec.expiry {
            None => None,
            Some(Expiry::At(t)) => Some(t),
            Some(Expiry::In(d)) => Some(now.saturating_add(d)),
        };
        if expires_at.is_some_and(|t| t <= now) {
            return Err(ManageError::ExpiryInPast);
        }
        let key = format.generate()?;
        let mut record = KeyRecord::new(
            KeyId::generate()?,
            org.clone(),
            name.to_owned(),
            key.hash(),
            key.hint(format),
            spec.scopes,
            format.environment_arc().clone(),
            now,
        );
        record.expires_at = expires_at;
        record.set_rotated_from(rotated_from);
        self.store.insert(record.clone()).await?;
        tracing::info!(key_id = %record.id, org_id = %org, "api key created");
        Ok(CreatedKey { key, record })
    }

    /// The organization's keys, newest first (never secrets; with last-used times).
    pub async fn list(&self, org: &OrgId) -> Result<Vec<KeyRecord>, ManageError> {
        Ok(self.store.list(org).await?)
    }

    /// One key of the organization.
    pub async fn get(&self, org: &OrgId, id: &KeyId) -> Result<KeyRecord, ManageError> {
        match self.store.get(id).await? {
            Some(r) if &r.org_id == org => Ok(r),
            _ => Err(ManageError::NotFound),
        }
    }

    /// Revoke a key now. Immediate (the next request with it is refused), permanent, and
    /// idempotent: revoking a revoked key changes nothing.
    pub async fn revoke(&self, org: &OrgId, id: &KeyId) -> Result<KeyRecord, ManageError> {
        self.get(org, id).await?;
        let record = self
            .store
            .revoke(id, self.clock.now())
            .await?
            .ok_or(ManageError::NotFound)?;
        tracing::info!(key_id = %id, org_id = %org, "api key revoked");
        Ok(record)
    }

    /// Rename a key and/or change its scopes, on behalf of `actor`: only keys of the actor's
    /// organization whose scopes, old and new, are within the actor's
    /// ([`ManageError::ScopeEscalation`] otherwise); a revoked key does not change
    /// ([`ManageError::Revoked`]). Narrower scopes hold from the key's next request on.
    pub async fn update_for(
        &self,
        actor: &Principal,
        id: &KeyId,
        mut changes: KeyChanges,
    ) -> Result<KeyRecord, ManageError> {
        let current = self.get(actor.org_id(), id).await?;
        let scopes = actor.scopes();
        if !scopes.covers(&current.scopes)
            || changes.scopes.as_ref().is_some_and(|s| !scopes.covers(s))
        {
            return Err(ManageError::ScopeEscalation);
        }
        if current.revoked_at.is_some() {
            return Err(ManageError::Revoked);
        }
        if let Some(name) = &changes.name {
            changes.name = Some(valid_name(name)?.to_owned());
        }
        let record = self
            .store
            .update(id, &changes)
            .await?
            .ok_or(ManageError::NotFound)?;
        tracing::info!(
            key_id = %id, org_id = %actor.org_id(), renamed = changes.name.is_some(),
            scopes_changed = changes.scopes.is_some(), "api key updated"
        );
        Ok(record)
    }

    /// Replace a key: a new key with the same name, scopes, organization and environment; the old
    /// one revoked now, or when `rotation.grace` has passed.
    pub async fn rotate(
        &self,
        org: &OrgId,
        id: &KeyId,
        rotation: Rotation,
    ) -> Result<CreatedKey, ManageError> {
        let old = self.get(org, id).await?;
        self.rotate_record(old, rotation).await
    }

    /// [`rotate`](Self::rotate) on behalf of `actor`: only keys of the actor's organization whose
    /// scopes are within the actor's.
    pub async fn rotate_for(
        &self,
        actor: &Principal,
        id: &KeyId,
        rotation: Rotation,
    ) -> Result<CreatedKey, ManageError> {
        let old = self.get(actor.org_id(), id).await?;
        if !actor.scopes().covers(&old.scopes) {
            return Err(ManageError::ScopeEscalation);
        }
        self.rotate_record(old, rotation).await
    }

    async fn rotate_record(
        &self,
        old: KeyRecord,
        rotation: Rotation,
    ) -> Result<CreatedKey, ManageError> {
        let now = self.clock.now();
        if old.is_revoked(now) || old.revoked_at.is_some() {
            return Err(ManageError::Revoked);
        }
        let mut spec = NewKey::new(old.name())
            .scopes(old.scopes.clone())
            .environment(old.environment.to_string());
        if let Some(exp) = old.expires_at {
            spec = spec.expires_at(exp);
        }
        let created = self
            .create_inner(&old.org_id, spec, Some(old.id.clone()))
            .await?;
        let revoke_at = now.saturating_add(rotation.grace.unwrap_or_default());
        self.store.revoke(&old.id, revoke_at).await?;
        tracing::info!(
            key_id = %old.id, new_key_id = %created.record.id, org_id = %old.org_id,
            grace_secs = rotation.grace.map_or(0, |g| g.as_secs()), "api key rotated"
        );
        Ok(created)
    }

    /// Set an organization's plan; its next request is limited by it.
    pub async fn set_plan(&self, org: &OrgId, plan: Plan) -> Result<(), ManageError> {
        self.store.set_plan(org, plan).await?;
        tracing::info!(org_id = %org, plan = plan.name(), "plan changed");
        Ok(())
    }

    /// An organization's plan.
    pub async fn plan(&self, org: &OrgId) -> Result<Plan, ManageError> {
        Ok(self.store.plan(org).await?)
    }

    /// The organization's metered usage (see
    /// [`LastUsedRecorderLayer::meter_usage`](crate::LastUsedRecorderLayer::meter_usage)):
    /// requests by outcome, per key and in total, in the buckets of `granularity` starting in
    /// `range` (`from` included, `to` excluded). Only buckets with requests are listed; a
    /// chart fills the gaps with zeros.
    ///
    /// ```
    /// use tower_api_key::{Granularity, KeyManager, MemoryStore, OrgId, Timestamp};
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let manager = KeyManager::new(MemoryStore::new());
    /// let to = manager.now();
    /// let from = Timestamp::from_unix_secs(to.as_unix_secs() - 24 * 3600);
    /// let report = manager.usage(&OrgId::from("org_1"), from..to, Granularity::Hour).await?;
    /// assert_eq!(report.total.requests(), 0);
    /// # Ok::<(), tower_api_key::ManageError>(()) }).unwrap();
    /// ```
    ///
    /// Fails with [`ManageError::InvalidUsageRange`] for an empty range or one of more than
    /// [`MAX_USAGE_BUCKETS`](KeyManager::MAX_USAGE_BUCKETS) buckets.
    pub async fn usage(
        &self,
        org: &OrgId,
        range: std::ops::Range<Timestamp>,
        granularity: Granularity,
    ) -> Result<UsageReport, ManageError> {
        let (from, to) = (granularity.bucket(range.start), range.end);
        let span = to.as_unix_secs().saturating_sub(from.as_unix_secs());
        let buckets = span.div_ceil(granularity.duration().as_secs());
        if range.start >= range.end || buckets > KeyManager::<()>::MAX_USAGE_BUCKETS {
            return Err(ManageError::InvalidUsageRange);
        }
        let rows = self.store.usage(org, from, to, granularity).await?;
        Ok(UsageReport::from_rows(granularity, from, to, rows))
    }
}

impl KeyManager<()> {
    /// The most buckets one [`KeyManager::usage`] query spans (a year of hours, seven days of
    /// minutes): bounds what one request can make the store read.
    pub const MAX_USAGE_BUCKETS: u64 = 10_080;
}

/// One bucket of a usage series.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "admin", derive(utoipa::ToSchema))]
pub struct UsageBucket {
    /// The bucket's start (Unix seconds in JSON).
    #[cfg_attr(feature = "admin", schema(value_type = u64))]
    pub start: Timestamp,
    /// The requests counted in it.
    pub counts: UsageCounts,
}

/// One key's usage series in a [`UsageReport`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "admin", derive(utoipa::ToSchema))]
pub struct KeyUsage {
    /// The key.
    #[cfg_attr(feature = "admin", schema(value_type = String))]
    pub key_id: KeyId,
    /// Its requests over the whole range.
    pub total: UsageCounts,
    /// Its buckets with requests, oldest first.
    pub buckets: Vec<UsageBucket>,
}

/// What [`KeyManager::usage`] returns: each key's series, the organization's series and the
/// totals, over buckets of one granularity.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "admin", derive(utoipa::ToSchema))]
pub struct UsageReport {
    /// The buckets' size.
    pub granularity: Granularity,
    /// The first bucket's start (the range's start, rounded down to a bucket; Unix seconds in
    /// JSON).
    #[cfg_attr(feature = "admin", schema(value_type = u64))]
    pub from: Timestamp,
    /// The end of the range (excluded; Unix seconds in JSON).
    #[cfg_attr(feature = "admin", schema(value_type = u64))]
    pub to: Timestamp,
    /// The organization's requests over the whole range.
    pub total: UsageCounts,
    /// The organization's buckets with requests (all keys added), oldest first.
    pub buckets: Vec<UsageBucket>,
    /// Each key with requests in the range, by key id.
    pub keys: Vec<KeyUsage>,
}

impl UsageReport {
    fn from_rows(
        granularity: Granularity,
        from: Timestamp,
        to: Timestamp,
        rows: Vec<UsageRow>,
    ) -> Self {
        let mut total = UsageCounts::default();
        let mut org: std::collections::BTreeMap<Timestamp, UsageCounts> = Default::default();
        let mut keys: std::collections::BTreeMap<KeyId, KeyUsage> = Default::default();
        for row in rows {
            total += row.counts;
            *org.entry(row.bucket).or_default() += row.counts;
            let key = keys.entry(row.key_id.clone()).or_insert_with(|| KeyUsage {
                key_id: row.key_id.clone(),
                total: UsageCounts::default(),
                buckets: Vec::new(),
            });
            key.total += row.counts;
            key.buckets.push(UsageBucket {
                start: row.bucket,
                counts: row.counts,
            });
        }
        let mut keys: Vec<KeyUsage> = keys.into_values().collect();
        for k in &mut keys {
            k.buckets.sort_by_key(|b| b.start);
        }
        Self {
            granularity,
            from,
            to,
            total,
            buckets: org
                .into_iter()
                .map(|(start, counts)| UsageBucket { start, counts })
                .collect(),
            keys,
        }
    }
}

/// A key's name, trimmed: 1 to 128 characters.
fn valid_name(name: &str) -> Result<&str, ManageError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 128 {
        return Err(ManageError::InvalidName);
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_render_as_problems_with_their_code() {
        for (e, status, code) in [
            (ManageError::NotFound, 404, "key_not_found"),
            (ManageError::ScopeEscalation, 403, "scope_escalation"),
            (ManageError::Revoked, 409, "key_revoked"),
            (ManageError::ExpiryInPast, 422, "expiry_in_past"),
            (
                ManageError::Store(StoreError::Timeout),
                503,
                "store_unavailable",
            ),
        ] {
            let res = e.problem_response();
            assert_eq!(res.status(), status);
            assert_eq!(res.headers()["content-type"], "application/problem+json");
            let v: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
            assert_eq!(v["code"], code);
            assert_eq!(v["status"], status);
        }
    }
}
