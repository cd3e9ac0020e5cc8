//! [`KeyManager`]: create, list, get, revoke and rotate keys; set plans.
//!
//! Every operation is scoped to an organization: a key id from another organization is
//! [`ManageError::NotFound`], exactly as if it did not exist. The `*_for` variants act on behalf of
//! an authenticated [`Principal`] and enforce that a key never grants more than it holds.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};

use crate::audit::{Actor, AuditAction, AuditEntry, AuditQuery, OnAudit};
use crate::clock::{Clock, Timestamp};
use crate::ids::{KeyId, OrgId};
use crate::key::{ApiKey, KeyFormat, KeyFormats, RngError};
use crate::plan::Plan;
use crate::principal::Principal;
use crate::scopes::Scopes;
use crate::store::limits::{self, LimitError};
use crate::store::{
    Granularity, IpNet, KeyChanges, KeyRecord, KeyStore, Metadata, StoreError, UsageCounts,
    UsageRow,
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
    /// The key would live longer than its organization's [`ExpiryPolicy`] allows.
    #[error("keys may live at most {max_secs} seconds (the expiry policy's maximum lifetime)")]
    LifetimeTooLong {
        /// The maximum lifetime, in seconds.
        max_secs: u64,
    },
    /// The record would exceed a bound of [`limits`] (`400`, the limit
    /// in the message).
    #[error(transparent)]
    Limit(LimitError),
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
    /// The random number generator failed.
    #[error(transparent)]
    Rng(#[from] RngError),
}

/// A store's refusal of an oversized record is the caller's error (`400`), not an outage.
impl From<StoreError> for ManageError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Invalid(limit) => ManageError::Limit(limit),
            other => ManageError::Store(other),
        }
    }
}

impl From<LimitError> for ManageError {
    fn from(e: LimitError) -> Self {
        ManageError::Limit(e)
    }
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
            ManageError::InvalidUsageRange
            | ManageError::LifetimeTooLong { .. }
            | ManageError::Limit(_) => StatusCode::BAD_REQUEST,
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
            ManageError::LifetimeTooLong { .. } => "lifetime_too_long",
            ManageError::Limit(e) => e.code(),
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
    metadata: Option<Metadata>,
    allowed_networks: Vec<IpNet>,
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

    /// Attach metadata, returned with the key in listings and on every verified request
    /// ([`Principal::metadata`]). At most 32 members and 4 KiB as JSON
    /// ([`limits`]).
    pub fn metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = Some(metadata);
        self
    }

    /// Accept the key only from these client networks (see
    /// [`ApiKeyAuthLayer::client_addr`](crate::ApiKeyAuthLayer::client_addr)).
    pub fn allowed_networks(mut self, networks: impl IntoIterator<Item = IpNet>) -> Self {
        self.allowed_networks = networks.into_iter().collect();
        self
    }
}

/// How long keys may live: a maximum lifetime that [`KeyManager::create`] and
/// [`KeyManager::rotate`] enforce, and a default lifetime for keys created without an expiry.
///
/// ```
/// use std::time::Duration;
/// use tower_api_key::{KeyManager, MemoryStore, OrgId};
/// use tower_api_key::manage::ExpiryPolicy;
/// const DAY: Duration = Duration::from_secs(86_400);
/// let manager = KeyManager::new(MemoryStore::new())
///     .expiry_policy(ExpiryPolicy::new().max_lifetime(365 * DAY).default_lifetime(90 * DAY))
///     .org_expiry_policy(OrgId::from("org_bank"), ExpiryPolicy::new().max_lifetime(30 * DAY));
/// ```
///
/// Why configuration rather than data: it is the operator's rule, set where the manager is
/// built (give every replica the same); an org's policy replaces the global one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExpiryPolicy {
    /// Keys may not live longer than this (from creation, or from a rotation).
    pub max_lifetime: Option<Duration>,
    /// Keys created without an expiry get this lifetime (capped by `max_lifetime`).
    pub default_lifetime: Option<Duration>,
}

impl ExpiryPolicy {
    /// No limit, no default: keys may never expire.
    pub fn new() -> Self {
        Self::default()
    }

    /// Refuse keys that would live longer than `max`.
    pub fn max_lifetime(mut self, max: Duration) -> Self {
        self.max_lifetime = Some(max);
        self
    }

    /// Give keys created without an expiry this lifetime.
    pub fn default_lifetime(mut self, lifetime: Duration) -> Self {
        self.default_lifetime = Some(lifetime);
        self
    }

    /// The expiry of a key created at `now` that asks for `requested`: the default lifetime
    /// (or the maximum) when it asks for none; refused when it asks for more than the maximum.
    pub fn expiry(
        &self,
        now: Timestamp,
        requested: Option<Timestamp>,
    ) -> Result<Option<Timestamp>, ManageError> {
        let max = self.max_lifetime.map(|m| now.saturating_add(m));
        let expires = requested.or_else(|| {
            self.default_lifetime
                .map(|d| now.saturating_add(d))
                .map(|t| max.map_or(t, |m| t.min(m)))
                .or(max)
        });
        match (expires, max, self.max_lifetime) {
            (Some(t), Some(m), Some(lifetime)) if t > m => Err(ManageError::LifetimeTooLong {
                max_secs: lifetime.as_secs(),
            }),
            _ => Ok(expires),
        }
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

/// The optional audit hook, with a `Debug` that says whether one is set.
#[derive(Clone, Default)]
struct AuditHook(Option<OnAudit>);

impl fmt::Debug for AuditHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() { "Some(..)" } else { "None" })
    }
}

/// Manages keys in a [`KeyStore`].
///
/// Every change it makes is written to the store's audit log, as the [`Actor`] the manager
/// acts for ([`as_actor`](Self::as_actor); [`Actor::System`] by default), *after* the change
/// succeeded: a failed audit write is logged at error level and neither undoes nor fails the
/// change (see [`audit`](crate::audit) and the design notes).
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
    expiry: ExpiryPolicy,
    org_expiry: Arc<HashMap<OrgId, ExpiryPolicy>>,
    actor: Actor,
    on_audit: AuditHook,
}

impl<St: KeyStore> KeyManager<St> {
    /// A manager issuing `br_live_` keys, on the same default clock as the layers
    /// ([`Clock::coarse`]).
    pub fn new(store: St) -> Self {
        Self {
            store,
            formats: KeyFormats::default(),
            clock: Clock::default(),
            expiry: ExpiryPolicy::default(),
            org_expiry: Arc::default(),
            actor: Actor::System,
            on_audit: AuditHook::default(),
        }
    }

    /// This manager acting as `actor`: a cheap clone (the store and settings are shared) whose
    /// changes are audited as done by `actor`. The admin API acts as the calling key, the
    /// dashboard as the signed-in user, the CLI as `--actor`.
    ///
    /// ```
    /// use tower_api_key::{Actor, KeyManager, MemoryStore};
    /// let manager = KeyManager::new(MemoryStore::new());
    /// let as_ann = manager.as_actor(Actor::user("ann@example.com"));
    /// assert_eq!(as_ann.actor(), &Actor::user("ann@example.com"));
    /// ```
    pub fn as_actor(&self, actor: Actor) -> Self {
        Self {
            actor,
            ..self.clone()
        }
    }

    /// Who this manager's changes are audited as.
    pub fn actor(&self) -> &Actor {
        &self.actor
    }

    /// Call `hook` with each audit entry this manager (and its [`as_actor`](Self::as_actor)
    /// clones) appends, after the store write (also when that write failed: the change
    /// happened). With the `events` feature, `Events::on_audit` makes one that emits events.
    pub fn on_audit(mut self, hook: impl Fn(&AuditEntry) + Send + Sync + 'static) -> Self {
        self.on_audit = AuditHook(Some(Arc::new(hook)));
        self
    }

    /// Append an audit entry for a change made outside the manager (the admin API's credits,
    /// say), as this manager's actor. Never fails: see the [type docs](Self).
    pub async fn record_audit(
        &self,
        org: &OrgId,
        action: AuditAction,
        key_id: Option<&KeyId>,
        detail: serde_json::Value,
    ) {
        let entry = AuditEntry::new(
            self.clock.now(),
            org.clone(),
            self.actor.clone(),
            action,
            key_id.cloned(),
            detail,
        );
        if let Err(error) = self.store.append_audit(entry.clone()).await {
            tracing::error!(
                %error, audit_id = %entry.id, action = %entry.action, org_id = %org,
                "audit entry not written; the change itself stands"
            );
        }
        if let Some(hook) = &self.on_audit.0 {
            hook(&entry);
        }
    }

    /// The organization's audit log, newest first, a page at a time ([`AuditQuery`]).
    pub async fn audit_log(
        &self,
        org: &OrgId,
        query: &AuditQuery,
    ) -> Result<Vec<AuditEntry>, ManageError> {
        Ok(self.store.audit_log(org, query).await?)
    }

    /// The expiry policy of every organization without one of its own (default: none).
    pub fn expiry_policy(mut self, policy: ExpiryPolicy) -> Self {
        self.expiry = policy;
        self
    }

    /// The expiry policy of `org`, in place of the global one.
    pub fn org_expiry_policy(mut self, org: OrgId, policy: ExpiryPolicy) -> Self {
        Arc::make_mut(&mut self.org_expiry).insert(org, policy);
        self
    }

    /// The expiry policy that applies to `org`.
    pub fn expiry_policy_of(&self, org: &OrgId) -> ExpiryPolicy {
        self.org_expiry.get(org).copied().unwrap_or(self.expiry)
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
        let created = self.create_inner(org, spec, None).await?;
        self.audit_created(&created).await;
        Ok(created)
    }

    async fn audit_created(&self, created: &CreatedKey) {
        let r = &created.record;
        self.record_audit(
            &r.org_id,
            AuditAction::KeyCreated,
            Some(&r.id),
            serde_json::json!({ "name": r.name() }),
        )
        .await;
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
        let created = self.create_inner(actor.org_id(), spec, None).await?;
        self.audit_created(&created).await;
        Ok(created)
    }

    async fn create_inner(
        &self,
        org: &OrgId,
        spec: NewKey,
        rotated_from: Option<KeyId>,
    ) -> Result<CreatedKey, ManageError> {
        let name = valid_name(&spec.name)?;
        limits::check_id("org id", org.as_str())?;
        let format = self.format_for(spec.environment.as_deref())?;
        let now = self.clock.now();
        let requested = match spec.expiry {
            None => None,
            Some(Expiry::At(t)) => Some(t),
            Some(Expiry::In(d)) => Some(now.saturating_add(d)),
        };
        if requested.is_some_and(|t| t <= now) {
            return Err(ManageError::ExpiryInPast);
        }
        let expires_at = self.expiry_policy_of(org).expiry(now, requested)?;
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
        record.set_metadata(spec.metadata);
        record.set_allowed_networks(spec.allowed_networks);
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
        self.record_audit(
            org,
            AuditAction::KeyRevoked,
            Some(id),
            serde_json::json!({}),
        )
        .await;
        Ok(record)
    }

    /// Switch a key off: refused (uniform `401`, logged as `disabled`) until
    /// [`enable`](Self::enable)d, yet kept, listed, and its last-used time too. Reversible,
    /// unlike [`revoke`](Self::revoke); a disabled key can still be revoked. Every replica
    /// refuses it within the revocation bound (the change travels as a revocation does).
    pub async fn disable(&self, org: &OrgId, id: &KeyId) -> Result<KeyRecord, ManageError> {
        self.set_disabled(org, id, true).await
    }

    /// Switch a disabled key on again. A revoked key stays off ([`ManageError::Revoked`]).
    pub async fn enable(&self, org: &OrgId, id: &KeyId) -> Result<KeyRecord, ManageError> {
        self.set_disabled(org, id, false).await
    }

    async fn set_disabled(
        &self,
        org: &OrgId,
        id: &KeyId,
        disabled: bool,
    ) -> Result<KeyRecord, ManageError> {
        let current = self.get(org, id).await?;
        if !disabled && current.revoked_at.is_some() {
            return Err(ManageError::Revoked);
        }
        let record = self
            .store
            .update(id, &KeyChanges::new().disabled(disabled))
            .await?
            .ok_or(ManageError::NotFound)?;
        tracing::info!(key_id = %id, org_id = %org, disabled, "api key disabled flag set");
        let action = if disabled {
            AuditAction::KeyDisabled
        } else {
            AuditAction::KeyEnabled
        };
        self.record_audit(org, action, Some(id), serde_json::json!({}))
            .await;
        Ok(record)
    }

    /// Change a key of `org` (name, scopes, disabled flag, metadata, allowed networks) as an
    /// operator: no actor, so no scope check (the CLI's path). A revoked key does not change.
    pub async fn update(
        &self,
        org: &OrgId,
        id: &KeyId,
        changes: KeyChanges,
    ) -> Result<KeyRecord, ManageError> {
        let current = self.get(org, id).await?;
        self.apply_update(current, changes).await
    }

    async fn apply_update(
        &self,
        current: KeyRecord,
        mut changes: KeyChanges,
    ) -> Result<KeyRecord, ManageError> {
        if current.revoked_at.is_some() {
            return Err(ManageError::Revoked);
        }
        if let Some(name) = &changes.name {
            changes.name = Some(valid_name(name)?.to_owned());
        }
        limits::check_changes(&changes)?;
        let record = self
            .store
            .update(&current.id, &changes)
            .await?
            .ok_or(ManageError::NotFound)?;
        tracing::info!(
            key_id = %current.id, org_id = %current.org_id, renamed = changes.name.is_some(),
            scopes_changed = changes.scopes.is_some(), disabled = ?changes.disabled,
            metadata_changed = changes.metadata.is_some(),
            networks_changed = changes.allowed_networks.is_some(), "api key updated"
        );
        let changed: Vec<&str> = [
            ("name", changes.name.is_some()),
            ("scopes", changes.scopes.is_some()),
            ("disabled", changes.disabled.is_some()),
            ("metadata", changes.metadata.is_some()),
            ("allowed_networks", changes.allowed_networks.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect();
        self.record_audit(
            &current.org_id,
            AuditAction::KeyUpdated,
            Some(&current.id),
            serde_json::json!({ "changed": changed }),
        )
        .await;
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
        changes: KeyChanges,
    ) -> Result<KeyRecord, ManageError> {
        let current = self.get(actor.org_id(), id).await?;
        let scopes = actor.scopes();
        if !scopes.covers(&current.scopes)
            || changes.scopes.as_ref().is_some_and(|s| !scopes.covers(s))
        {
            return Err(ManageError::ScopeEscalation);
        }
        if changes.disabled == Some(false) && current.revoked_at.is_some() {
            return Err(ManageError::Revoked);
        }
        self.apply_update(current, changes).await
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
            .environment(old.environment.to_string())
            .allowed_networks(old.allowed_networks().iter().copied());
        if let Some(metadata) = old.metadata() {
            spec = spec.metadata(metadata.clone());
        }
        // The new key keeps the old expiry; the policy's maximum counts from the rotation.
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
        self.record_audit(
            &old.org_id,
            AuditAction::KeyRotated,
            Some(&old.id),
            serde_json::json!({
                "new_key_id": created.record.id,
                "grace_secs": rotation.grace.map_or(0, |g| g.as_secs()),
            }),
        )
        .await;
        Ok(created)
    }

    /// Set an organization's plan; its next request is limited by it.
    pub async fn set_plan(&self, org: &OrgId, plan: Plan) -> Result<(), ManageError> {
        self.store.set_plan(org, plan).await?;
        tracing::info!(org_id = %org, plan = plan.name(), "plan changed");
        self.record_audit(
            org,
            AuditAction::PlanChanged,
            None,
            serde_json::json!({ "plan": plan.name() }),
        )
        .await;
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

/// What the host is told about a key that expires soon: once per key, by
/// [`ExpiryReminder`].
pub type OnExpiring = Arc<dyn Fn(&KeyRecord) + Send + Sync>;

/// Reminds owners before their keys expire: a task that periodically claims, from the store,
/// the keys expiring within `notice` not reminded yet, and reports each once — as a `tracing`
/// event (`key_expiring`, with the key id, org id and expiry) and through
/// [`on_expiring`](Self::on_expiring) (wire an event sink or a mailer there).
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::time::Duration;
/// use tower_api_key::{MemoryStore, manage::ExpiryReminder};
/// const DAY: Duration = Duration::from_secs(86_400);
/// let reminder = ExpiryReminder::new(MemoryStore::new(), 7 * DAY)
///     .on_expiring(|key| println!("{} expires at {:?}", key.id, key.expires_at));
/// let reminded = reminder.run_once().await?; // or `reminder.spawn(Duration::from_secs(3600))`
/// assert_eq!(reminded, 0);
/// # Ok::<(), tower_api_key::StoreError>(()) }).unwrap();
/// ```
///
/// Why "claim": the store marks each key reminded in the same step that returns it
/// ([`KeyStore::claim_expiry_reminders`]), so replicas running the task side by side, and
/// restarts, remind each key once.
#[derive(Clone)]
pub struct ExpiryReminder<St> {
    store: St,
    notice: Duration,
    clock: Clock,
    on_expiring: Option<OnExpiring>,
}

impl<St> fmt::Debug for ExpiryReminder<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExpiryReminder")
            .field("notice", &self.notice)
            .field("clock", &self.clock)
            .field("on_expiring", &self.on_expiring.is_some())
            .finish_non_exhaustive()
    }
}

impl<St: KeyStore> ExpiryReminder<St> {
    /// Keys claimed per store call.
    const BATCH: usize = 500;

    /// Remind about keys expiring within `notice` (e.g. seven days).
    pub fn new(store: St, notice: Duration) -> Self {
        Self {
            store,
            notice,
            clock: Clock::default(),
            on_expiring: None,
        }
    }

    /// The clock deciding what "within `notice`" means (default: [`Clock::coarse`]).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Call `f` with each key's record, once per key.
    pub fn on_expiring(mut self, f: impl Fn(&KeyRecord) + Send + Sync + 'static) -> Self {
        self.on_expiring = Some(Arc::new(f));
        self
    }

    /// Claim and report every reminder due now; returns how many.
    pub async fn run_once(&self) -> Result<usize, StoreError> {
        let now = self.clock.now();
        let until = now.saturating_add(self.notice);
        let mut total = 0;
        loop {
            let due = self
                .store
                .claim_expiry_reminders(now, until, Self::BATCH)
                .await?;
            for key in &due {
                tracing::info!(
                    event = "key_expiring", key_id = %key.id, org_id = %key.org_id,
                    expires_at = ?key.expires_at, "api key expires soon"
                );
                if let Some(f) = &self.on_expiring {
                    f(key);
                }
            }
            total += due.len();
            if due.len() < Self::BATCH {
                return Ok(total);
            }
        }
    }

    /// Run [`run_once`](Self::run_once) every `interval` on the Tokio runtime, until the
    /// handle is aborted. A store error is logged and retried at the next tick.
    pub fn spawn(self, interval: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                if let Err(error) = self.run_once().await {
                    tracing::warn!(%error, "expiry reminders: store failed; retrying next tick");
                }
            }
        })
    }
}

/// A key's name, trimmed, within [`limits::check_name`].
fn valid_name(name: &str) -> Result<&str, ManageError> {
    let name = name.trim();
    limits::check_name(name).map_err(|_| ManageError::InvalidName)?;
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
