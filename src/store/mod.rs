//! Where key records live: the [`KeyStore`] trait, its [`KeyRecord`], and implementations.
//!
//! A store holds only [`KeyHash`]es, never raw keys. Records are immutable snapshots shared by
//! `Arc`: a revocation or a last-used time replaces the record, it never mutates one a request
//! is reading.
//!
//! # A named lookup future
//!
//! [`KeyStore::find_by_hash`] returns an associated future type, not `impl Future`, so that
//! [`ApiKeyAuth`](crate::ApiKeyAuth)'s response future can name it and stay unboxed. The
//! in-memory store answers with [`std::future::Ready`]: no allocation, no await point. Stores that
//! talk to a network box their future; the round trip dwarfs the allocation. The management
//! operations are plain `async` methods: they are not on the request path.
//!
//! For `dyn` users, [`DynKeyStore`] is object safe and [`BoxedStore`] turns an
//! `Arc<dyn DynKeyStore>` back into a `KeyStore`.
//!
//! # The size of a record
//!
//! A [`MemoryStore`] holds a million keys in at most 300 bytes each: a record is an `Arc`
//! snapshot of 208 bytes with no further allocation for typical keys. How each field got there
//! is in `docs/DESIGN-NOTES.md` (Stores).
//!
//! # Implementations
//!
//! | store | feature | for |
//! |---|---|---|
//! | [`MemoryStore`] | | the embedded default: nothing on disk |
//! | `SqliteStore` | `sqlite` | embedded and durable: one process, one file |
//! | `PostgresStore` | `postgres` | many replicas over one database |
//! | [`CachedStore`] | | in front of a remote store: TTL, negative cache, single flight, pushed invalidation (`PgInvalidations`) |
//!
//! [`store_from_url`] picks one from a URL.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use compact_str::CompactString;
use serde::Serialize;
use serde::ser::SerializeStruct;

pub use crate::client_addr::IpNet;

use crate::audit::{AuditEntry, AuditQuery};
use crate::clock::Timestamp;
use crate::ids::{KeyId, OrgId};
use crate::key::KeyHash;
use crate::plan::Plan;
use crate::scopes::Scopes;

mod cached;
pub mod limits;
mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql;
#[cfg(feature = "sqlite")]
pub mod sqlite;
mod usage;

pub use cached::{CacheConfig, CacheStats, CachedStore, Invalidation, InvalidationSource};
pub use memory::MemoryStore;
#[cfg(feature = "postgres")]
pub use postgres::{PgInvalidations, PostgresStore, PostgresStoreBuilder};
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;
pub use usage::{
    Granularity, UsageCounts, UsageDelta, UsageMeter, UsageOutcome, UsageRetention, UsageRow,
};
pub(crate) use usage::{MarkList, UsageSlot, move_accepted};

/// A boxed error from a store's driver.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store could not be reached or failed; requests get `503`, never `401`.
    #[error("key store unavailable: {0}")]
    Unavailable(#[source] BoxError),
    /// The store did not answer in time; requests get `503`.
    #[error("key store timed out")]
    Timeout,
    /// A record with the same id or hash already exists.
    #[error("a key with this id or hash already exists")]
    Duplicate,
    /// The record (or the change) exceeds a bound of [`limits`]; nothing was written.
    #[error(transparent)]
    Invalid(#[from] limits::LimitError),
    /// The store failed repeatedly and was not asked: its [`Breaker`](crate::Breaker) is open
    /// (see [`CacheConfig::breaker`]). Requests get `503` with `Retry-After` set to what is left
    /// of the cool-down.
    #[error("key store not asked: {0}")]
    CircuitOpen(crate::breaker::Refused),
}

impl StoreError {
    /// Wrap a driver error as [`StoreError::Unavailable`].
    pub fn unavailable(e: impl Into<BoxError>) -> Self {
        Self::Unavailable(e.into())
    }
}

/// Everything stored about one key. Never contains the secret.
///
/// Held by stores as an immutable `Arc` snapshot, and sized for holding a million of them (see
/// the [module docs](self#design-note-the-size-of-a-record)): 208 bytes, strings included for
/// typical names and hints. The fields a request reads are public; the label, the hint and the
/// rarely set fields (`rotated_from`, the disabled flag, metadata, allowed client networks,
/// the expiry reminder) are read through accessors ([`name`](Self::name),
/// [`is_disabled`](Self::is_disabled), [`metadata`](Self::metadata), …), so that their compact
/// storage stays private: the rarely set ones share one optional pointer.
///
/// Serialized (JSON) with every field by name, the rarely set ones included (`disabled`,
/// `metadata`, `allowed_networks`, `rotated_from`), never the hash.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyRecord {
    /// Public identifier.
    pub id: KeyId,
    /// Owning organization.
    pub org_id: OrgId,
    /// Human label, e.g. `ci-pipeline`: inline up to 24 bytes.
    name: CompactString,
    /// SHA-256 of the full key.
    pub hash: KeyHash,
    /// Prefix and last four characters, e.g. `br_live_…o5p6`: inline up to 24 bytes.
    hint: CompactString,
    /// Permissions; empty = full access.
    pub scopes: Scopes,
    /// Environment of the key's format (`live`, `test`).
    pub environment: Arc<str>,
    /// Creation time.
    pub created_at: Timestamp,
    /// When the key stops working, if ever.
    pub expires_at: Option<Timestamp>,
    /// When the key was (or will be, after a rotation's grace period) revoked. Permanent.
    pub revoked_at: Option<Timestamp>,
    /// Last time a request used the key, at the recorder's granularity, as written by
    /// [`KeyStore::touch_last_used`]. `get` and `list` return it; the snapshot seen on the request
    /// path may lag (a request keeps the snapshot it looked up, and a cache its own).
    pub last_used_at: Option<Timestamp>,
    /// The rarely set fields, behind one pointer: `None` for a typical key, so that they cost
    /// 8 bytes, not their size, and the request path pays one null check.
    extras: Option<Arc<KeyExtras>>,
    /// Where [`LastUsedRecorder`](crate::LastUsedRecorder) marks this snapshot as used, lock-free
    /// and without a map lookup. Bookkeeping only: ignored by `==` and serialization.
    pub(crate) usage: UsageSlot,
}

impl fmt::Debug for KeyRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRecord")
            .field("id", &self.id)
            .field("org_id", &self.org_id)
            .field("name", &self.name)
            .field("hint", &self.hint)
            .field("scopes", &self.scopes)
            .field("environment", &&*self.environment)
            .field("created_at", &self.created_at)
            .field("expires_at", &self.expires_at)
            .field("revoked_at", &self.revoked_at)
            .field("last_used_at", &self.last_used_at)
            .field("rotated_from", &self.rotated_from())
            .field("disabled", &self.is_disabled())
            .field("metadata", &self.metadata())
            .field("allowed_networks", &self.allowed_networks())
            .finish_non_exhaustive()
    }
}

impl Serialize for KeyRecord {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("KeyRecord", 15)?;
        st.serialize_field("id", &self.id)?;
        st.serialize_field("org_id", &self.org_id)?;
        st.serialize_field("name", self.name())?;
        st.serialize_field("hint", self.hint())?;
        st.serialize_field("scopes", &self.scopes)?;
        st.serialize_field("environment", &*self.environment)?;
        st.serialize_field("created_at", &self.created_at)?;
        st.serialize_field("expires_at", &self.expires_at)?;
        st.serialize_field("revoked_at", &self.revoked_at)?;
        st.serialize_field("last_used_at", &self.last_used_at)?;
        st.serialize_field("rotated_from", &self.rotated_from())?;
        st.serialize_field("disabled", &self.is_disabled())?;
        st.serialize_field("metadata", &self.metadata())?;
        st.serialize_field("allowed_networks", self.allowed_networks())?;
        st.serialize_field("expiry_reminded_at", &self.expiry_reminded_at())?;
        st.end()
    }
}

/// A key's metadata: a small JSON object (see [`limits`] for its bounds).
pub type Metadata = serde_json::Map<String, serde_json::Value>;

/// The rarely set fields of a [`KeyRecord`], shared by its snapshots.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct KeyExtras {
    rotated_from: Option<KeyId>,
    disabled: bool,
    metadata: Option<Metadata>,
    allowed_networks: Box<[IpNet]>,
    expiry_reminded_at: Option<Timestamp>,
}

impl KeyExtras {
    fn is_default(&self) -> bool {
        self.rotated_from.is_none()
            && !self.disabled
            && self.metadata.is_none()
            && self.allowed_networks.is_empty()
            && self.expiry_reminded_at.is_none()
    }
}

/// Where a key stands at a given time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyStatus {
    /// Usable.
    Active,
    /// Past its expiry.
    Expired,
    /// Revoked; permanent.
    Revoked,
    /// Switched off ([`KeyRecord::is_disabled`]); reversible.
    Disabled,
}

impl KeyRecord {
    /// Build a record. Used by [`KeyManager`](crate::KeyManager) and by store implementations
    /// reading rows back; set the optional fields with [`with_rotated_from`](Self::with_rotated_from)
    /// and the public fields.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: KeyId,
        org_id: OrgId,
        name: String,
        hash: KeyHash,
        hint: String,
        scopes: Scopes,
        environment: Arc<str>,
        created_at: Timestamp,
    ) -> Self {
        Self {
            id,
            org_id,
            name: CompactString::from(name),
            hash,
            hint: CompactString::from(hint),
            scopes,
            environment,
            created_at,
            expires_at: None,
            revoked_at: None,
            last_used_at: None,
            extras: None,
            usage: UsageSlot::new(),
        }
    }

    /// Human label, e.g. `ci-pipeline`.
    #[inline]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Prefix and last four characters of the key, e.g. `br_live_…o5p6`.
    #[inline]
    pub fn hint(&self) -> &str {
        &self.hint
    }

    /// The key this one replaced, when it was created by a rotation.
    #[inline]
    pub fn rotated_from(&self) -> Option<&KeyId> {
        self.extras.as_deref()?.rotated_from.as_ref()
    }

    /// Set (or clear) the key this one replaced.
    pub fn set_rotated_from(&mut self, id: Option<KeyId>) {
        self.edit_extras(|x| x.rotated_from = id);
    }

    /// Whether any rarely set field is set: the request path's one check before it reads them.
    #[inline]
    pub(crate) fn has_extras(&self) -> bool {
        self.extras.is_some()
    }

    /// Whether the key is switched off ([`KeyManager::disable`](crate::KeyManager::disable)):
    /// refused like an unknown key until enabled again. Unlike revocation, reversible.
    #[inline]
    pub fn is_disabled(&self) -> bool {
        self.extras.as_deref().is_some_and(|x| x.disabled)
    }

    /// Switch the key off (`true`) or on again.
    pub fn set_disabled(&mut self, disabled: bool) {
        self.edit_extras(|x| x.disabled = disabled);
    }

    /// The key's metadata, returned on every verified request through
    /// [`Principal::metadata`](crate::Principal::metadata). `None` when unset (an empty object
    /// is stored as unset).
    #[inline]
    pub fn metadata(&self) -> Option<&Metadata> {
        self.extras.as_deref()?.metadata.as_ref()
    }

    /// Set (or clear) the key's metadata. Bounds are checked by the stores ([`limits`]).
    pub fn set_metadata(&mut self, metadata: Option<Metadata>) {
        let metadata = metadata.filter(|m| !m.is_empty());
        self.edit_extras(|x| x.metadata = metadata);
    }

    /// The client networks the key may be used from; empty = anywhere.
    #[inline]
    pub fn allowed_networks(&self) -> &[IpNet] {
        match self.extras.as_deref() {
            Some(x) => &x.allowed_networks,
            None => &[],
        }
    }

    /// Restrict the key to these client networks (empty: anywhere).
    pub fn set_allowed_networks(&mut self, networks: Vec<IpNet>) {
        self.edit_extras(|x| x.allowed_networks = networks.into_boxed_slice());
    }

    /// When the owner was reminded that the key expires soon, if they were
    /// ([`KeyStore::claim_expiry_reminders`]).
    #[inline]
    pub fn expiry_reminded_at(&self) -> Option<Timestamp> {
        self.extras.as_deref()?.expiry_reminded_at
    }

    /// Set (or clear) when the expiry reminder was sent.
    pub fn set_expiry_reminded_at(&mut self, at: Option<Timestamp>) {
        self.edit_extras(|x| x.expiry_reminded_at = at);
    }

    /// Change the rarely set fields, keeping no allocation when they end up all unset.
    fn edit_extras(&mut self, f: impl FnOnce(&mut KeyExtras)) {
        let mut extras = self
            .extras
            .take()
            .map(Arc::unwrap_or_clone)
            .unwrap_or_default();
        f(&mut extras);
        self.extras = (!extras.is_default()).then(|| Arc::new(extras));
    }

    /// This record with [`rotated_from`](Self::rotated_from) set to `id`.
    #[must_use]
    pub fn with_rotated_from(mut self, id: Option<KeyId>) -> Self {
        self.set_rotated_from(id);
        self
    }

    /// How far ahead of `now` a revocation time may lie and still count as revoked.
    ///
    /// A revocation is stamped with the clock of whoever revoked (a management call, another
    /// replica); the request path reads its own, possibly coarser or slightly slower, clock. So
    /// that "revoke now" is refused on the very next request whatever the skew, a revocation takes
    /// effect up to this much before its timestamp. Rotation grace periods end this much early.
    pub const REVOCATION_LEEWAY: std::time::Duration = std::time::Duration::from_secs(2);

    /// Whether the key is revoked at `now` (see [`REVOCATION_LEEWAY`](Self::REVOCATION_LEEWAY)).
    #[inline]
    pub fn is_revoked(&self, now: Timestamp) -> bool {
        matches!(self.revoked_at, Some(t) if t <= now.saturating_add(Self::REVOCATION_LEEWAY))
    }

    /// Whether the key is expired at `now`.
    #[inline]
    pub fn is_expired(&self, now: Timestamp) -> bool {
        matches!(self.expires_at, Some(t) if t <= now)
    }

    /// The key's status at `now` (revocation wins over expiry, expiry over disabled).
    pub fn status(&self, now: Timestamp) -> KeyStatus {
        if self.is_revoked(now) {
            KeyStatus::Revoked
        } else if self.is_expired(now) {
            KeyStatus::Expired
        } else if self.is_disabled() {
            KeyStatus::Disabled
        } else {
            KeyStatus::Active
        }
    }
}

/// What [`KeyStore::update`] changes in a key: its name, scopes, disabled flag, metadata or
/// allowed client networks; any of them, each left alone when unset.
///
/// ```
/// use tower_api_key::{KeyChanges, Scopes};
/// let changes = KeyChanges::new()
///     .name("ci (read only)")
///     .scopes(Scopes::parse(["browser_sessions:read"])?)
///     .disabled(true);
/// # Ok::<(), tower_api_key::InvalidScope>(())
/// ```
///
/// Why one change type: every field a request reads goes through `update`, so every one of
/// them invalidates caches on every replica by the same push as a revocation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyChanges {
    /// The new name, if it changes.
    pub name: Option<String>,
    /// The new scopes (empty: full access), if they change.
    pub scopes: Option<Scopes>,
    /// Switch the key off (`true`) or on (`false`), if it changes.
    pub disabled: Option<bool>,
    /// The new metadata (`Some(None)` clears it), if it changes.
    pub metadata: Option<Option<Metadata>>,
    /// The new allowed client networks (empty: anywhere), if they change.
    pub allowed_networks: Option<Vec<IpNet>>,
}

impl KeyChanges {
    /// No change.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rename the key.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Replace the key's scopes.
    pub fn scopes(mut self, scopes: Scopes) -> Self {
        self.scopes = Some(scopes);
        self
    }

    /// Switch the key off (`true`) or on again (`false`).
    pub fn disabled(mut self, disabled: bool) -> Self {
        self.disabled = Some(disabled);
        self
    }

    /// Replace the key's metadata (`None` clears it).
    pub fn metadata(mut self, metadata: Option<Metadata>) -> Self {
        self.metadata = Some(metadata);
        self
    }

    /// Replace the client networks the key may be used from (empty: anywhere).
    pub fn allowed_networks(mut self, networks: Vec<IpNet>) -> Self {
        self.allowed_networks = Some(networks);
        self
    }

    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.scopes.is_none()
            && self.disabled.is_none()
            && self.metadata.is_none()
            && self.allowed_networks.is_none()
    }

    /// `record` with these changes applied.
    pub fn apply(&self, record: &KeyRecord) -> KeyRecord {
        let mut changed = record.clone();
        if let Some(name) = &self.name {
            changed.name = CompactString::from(name.as_str());
        }
        if let Some(scopes) = &self.scopes {
            changed.scopes = scopes.clone();
        }
        if let Some(disabled) = self.disabled {
            changed.set_disabled(disabled);
        }
        if let Some(metadata) = &self.metadata {
            changed.set_metadata(metadata.clone());
        }
        if let Some(networks) = &self.allowed_networks {
            changed.set_allowed_networks(networks.clone());
        }
        changed
    }
}

/// What a successful [`KeyStore::find_by_hash`] yields: the record and its organization's plan.
#[derive(Clone, Debug)]
pub struct StoredKey {
    /// The key's record.
    pub record: Arc<KeyRecord>,
    /// The owning organization's current plan.
    pub plan: Plan,
}

/// The result of a lookup on the request path.
pub type LookupResult = Result<Option<StoredKey>, StoreError>;

/// Storage for key records and organization plans.
///
/// Implementations must be cheap to clone (shared state behind `Arc`). See the
/// [module docs](self) for why the lookup future is an associated type.
pub trait KeyStore: Clone + Send + Sync + 'static {
    /// The future of [`find_by_hash`](Self::find_by_hash). `Unpin` so that
    /// [`ApiKeyAuth`](crate::ApiKeyAuth) can poll it once in place and still move it: use
    /// [`std::future::Ready`] for synchronous stores and a boxed future for remote ones.
    type Lookup: Future<Output = LookupResult> + Send + Unpin + 'static;

    /// Find the key whose hash is `hash`, with its organization's plan. Revoked and expired
    /// records are returned too (the caller decides); `None` means no such key.
    fn find_by_hash(&self, hash: &KeyHash) -> Self::Lookup;

    /// Store a new record. Fails with [`StoreError::Duplicate`] if its id or hash exists.
    fn insert(&self, record: KeyRecord) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// A record by id, with its last-used time.
    fn get(&self, id: &KeyId)
    -> impl Future<Output = Result<Option<KeyRecord>, StoreError>> + Send;

    /// All records of an organization, newest first, with last-used times.
    fn list(&self, org: &OrgId) -> impl Future<Output = Result<Vec<KeyRecord>, StoreError>> + Send;

    /// Revoke a key as of `at`. Revocation only ever moves earlier: if the key is already revoked
    /// at or before `at`, nothing changes. Returns the updated record, `None` if no such key.
    fn revoke(
        &self,
        id: &KeyId,
        at: Timestamp,
    ) -> impl Future<Output = Result<Option<KeyRecord>, StoreError>> + Send;

    /// Change a key's name and/or scopes (what [`KeyChanges`] sets). Returns the updated record,
    /// `None` if no such key. A cache in front must drop the key's entry, as for a revocation:
    /// narrower scopes hold from the next request on.
    fn update(
        &self,
        id: &KeyId,
        changes: &KeyChanges,
    ) -> impl Future<Output = Result<Option<KeyRecord>, StoreError>> + Send;

    /// Record last-used times in one batch. Forward-only: a time earlier than the stored one is
    /// ignored. Unknown ids are ignored.
    ///
    /// Called by the [`LastUsedRecorder`](crate::LastUsedRecorder) flusher once per interval with
    /// every key marked since (each id once): write the batch in one round trip (e.g. one
    /// `UPDATE … SET last_used_at = GREATEST(last_used_at, v.t) FROM unnest(…) v`). An error
    /// keeps the whole batch for the next flush, so a retry must be harmless.
    fn touch_last_used(
        &self,
        batch: &[(KeyId, Timestamp)],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Add usage counts in one batch: each [`UsageDelta`] is added to its key's minute bucket
    /// and to the hour and day buckets holding that minute (three granularities, one write).
    ///
    /// Called by the [`LastUsedRecorder`](crate::LastUsedRecorder) flusher once per interval
    /// when usage metering is on: write the batch in one round trip (e.g. one
    /// `INSERT … SELECT … FROM unnest(…) ON CONFLICT DO UPDATE SET n = t.n + excluded.n`), so
    /// that replicas writing to one database add up. An error keeps the batch for the next flush.
    fn record_usage(
        &self,
        batch: &[UsageDelta],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The usage buckets of `org`'s keys at `granularity` whose start lies in `[from, to)`,
    /// ordered by bucket then key id. Only buckets with counts are stored (no zero rows).
    fn usage(
        &self,
        org: &OrgId,
        from: Timestamp,
        to: Timestamp,
        granularity: Granularity,
    ) -> impl Future<Output = Result<Vec<UsageRow>, StoreError>> + Send;

    /// Delete the usage buckets of `granularity` that start before `before`; returns how many
    /// were deleted. Run by the flusher every few minutes with [`UsageRetention`]'s cut-offs.
    fn prune_usage(
        &self,
        granularity: Granularity,
        before: Timestamp,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Set an organization's plan; takes effect on its next request.
    fn set_plan(
        &self,
        org: &OrgId,
        plan: Plan,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// An organization's plan (the store's default plan if never set).
    fn plan(&self, org: &OrgId) -> impl Future<Output = Result<Plan, StoreError>> + Send;

    /// Claim the expiry reminders due: up to `limit` keys, not revoked, whose expiry lies in
    /// `(now, until]` and whose reminder was not sent yet. Each is marked reminded at `now` and
    /// returned, atomically, so that a reminder fires once per key across restarts and replicas
    /// (in SQL: one `UPDATE … SET expiry_reminded_at = now WHERE … RETURNING …`). Used by
    /// [`ExpiryReminder`](crate::manage::ExpiryReminder).
    fn claim_expiry_reminders(
        &self,
        now: Timestamp,
        until: Timestamp,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<KeyRecord>, StoreError>> + Send;

    /// Append an entry to the audit log ([`KeyManager`](crate::KeyManager) does, after each
    /// change it makes). The default keeps nothing (logged at debug level): a store that
    /// cannot keep an audit log still manages keys; [`audit_log`](Self::audit_log) then lists
    /// nothing.
    fn append_audit(
        &self,
        entry: AuditEntry,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        tracing::debug!(audit_id = %entry.id, action = %entry.action, "audit entry not kept: this store has no audit log");
        std::future::ready(Ok(()))
    }

    /// The organization's audit entries, newest first (greatest id first): at most
    /// `query.limit`, older than `query.before` if given. The default lists nothing.
    fn audit_log(
        &self,
        org: &OrgId,
        query: &AuditQuery,
    ) -> impl Future<Output = Result<Vec<AuditEntry>, StoreError>> + Send {
        let _ = (org, query);
        std::future::ready(Ok(Vec::new()))
    }
}

/// A boxed future, as used by [`DynKeyStore`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An object-safe [`KeyStore`], implemented for every `KeyStore`.
#[allow(missing_docs)]
pub trait DynKeyStore: Send + Sync + 'static {
    fn find_by_hash(&self, hash: &KeyHash) -> BoxFuture<'static, LookupResult>;
    fn insert(&self, record: KeyRecord) -> BoxFuture<'_, Result<(), StoreError>>;
    fn get<'a>(&'a self, id: &'a KeyId) -> BoxFuture<'a, Result<Option<KeyRecord>, StoreError>>;
    fn list<'a>(&'a self, org: &'a OrgId) -> BoxFuture<'a, Result<Vec<KeyRecord>, StoreError>>;
    fn revoke<'a>(
        &'a self,
        id: &'a KeyId,
        at: Timestamp,
    ) -> BoxFuture<'a, Result<Option<KeyRecord>, StoreError>>;
    fn update<'a>(
        &'a self,
        id: &'a KeyId,
        changes: &'a KeyChanges,
    ) -> BoxFuture<'a, Result<Option<KeyRecord>, StoreError>>;
    fn touch_last_used<'a>(
        &'a self,
        batch: &'a [(KeyId, Timestamp)],
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    fn record_usage<'a>(&'a self, batch: &'a [UsageDelta])
    -> BoxFuture<'a, Result<(), StoreError>>;
    fn usage<'a>(
        &'a self,
        org: &'a OrgId,
        from: Timestamp,
        to: Timestamp,
        granularity: Granularity,
    ) -> BoxFuture<'a, Result<Vec<UsageRow>, StoreError>>;
    fn prune_usage(
        &self,
        granularity: Granularity,
        before: Timestamp,
    ) -> BoxFuture<'_, Result<u64, StoreError>>;
    fn set_plan<'a>(&'a self, org: &'a OrgId, plan: Plan) -> BoxFuture<'a, Result<(), StoreError>>;
    fn plan<'a>(&'a self, org: &'a OrgId) -> BoxFuture<'a, Result<Plan, StoreError>>;
    fn claim_expiry_reminders(
        &self,
        now: Timestamp,
        until: Timestamp,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<KeyRecord>, StoreError>>;
    fn append_audit(&self, entry: AuditEntry) -> BoxFuture<'_, Result<(), StoreError>>;
    fn audit_log<'a>(
        &'a self,
        org: &'a OrgId,
        query: &'a AuditQuery,
    ) -> BoxFuture<'a, Result<Vec<AuditEntry>, StoreError>>;
}

impl<T: KeyStore> DynKeyStore for T {
    fn find_by_hash(&self, hash: &KeyHash) -> BoxFuture<'static, LookupResult> {
        Box::pin(KeyStore::find_by_hash(self, hash))
    }
    fn insert(&self, record: KeyRecord) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(KeyStore::insert(self, record))
    }
    fn get<'a>(&'a self, id: &'a KeyId) -> BoxFuture<'a, Result<Option<KeyRecord>, StoreError>> {
        Box::pin(KeyStore::get(self, id))
    }
    fn list<'a>(&'a self, org: &'a OrgId) -> BoxFuture<'a, Result<Vec<KeyRecord>, StoreError>> {
        Box::pin(KeyStore::list(self, org))
    }
    fn revoke<'a>(
        &'a self,
        id: &'a KeyId,
        at: Timestamp,
    ) -> BoxFuture<'a, Result<Option<KeyRecord>, StoreError>> {
        Box::pin(KeyStore::revoke(self, id, at))
    }
    fn update<'a>(
        &'a self,
        id: &'a KeyId,
        changes: &'a KeyChanges,
    ) -> BoxFuture<'a, Result<Option<KeyRecord>, StoreError>> {
        Box::pin(KeyStore::update(self, id, changes))
    }
    fn touch_last_used<'a>(
        &'a self,
        batch: &'a [(KeyId, Timestamp)],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(KeyStore::touch_last_used(self, batch))
    }
    fn record_usage<'a>(
        &'a self,
        batch: &'a [UsageDelta],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(KeyStore::record_usage(self, batch))
    }
    fn usage<'a>(
        &'a self,
        org: &'a OrgId,
        from: Timestamp,
        to: Timestamp,
        granularity: Granularity,
    ) -> BoxFuture<'a, Result<Vec<UsageRow>, StoreError>> {
        Box::pin(KeyStore::usage(self, org, from, to, granularity))
    }
    fn prune_usage(
        &self,
        granularity: Granularity,
        before: Timestamp,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(KeyStore::prune_usage(self, granularity, before))
    }
    fn set_plan<'a>(&'a self, org: &'a OrgId, plan: Plan) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(KeyStore::set_plan(self, org, plan))
    }
    fn plan<'a>(&'a self, org: &'a OrgId) -> BoxFuture<'a, Result<Plan, StoreError>> {
        Box::pin(KeyStore::plan(self, org))
    }
    fn claim_expiry_reminders(
        &self,
        now: Timestamp,
        until: Timestamp,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<KeyRecord>, StoreError>> {
        Box::pin(KeyStore::claim_expiry_reminders(self, now, until, limit))
    }
    fn append_audit(&self, entry: AuditEntry) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(KeyStore::append_audit(self, entry))
    }
    fn audit_log<'a>(
        &'a self,
        org: &'a OrgId,
        query: &'a AuditQuery,
    ) -> BoxFuture<'a, Result<Vec<AuditEntry>, StoreError>> {
        Box::pin(KeyStore::audit_log(self, org, query))
    }
}

/// A type-erased store: `Arc<dyn DynKeyStore>` usable wherever a [`KeyStore`] is expected.
///
/// ```
/// use tower_api_key::{BoxedStore, MemoryStore};
/// let store = BoxedStore::new(MemoryStore::new());
/// let _layer = tower_api_key::ApiKeyAuth::new(store);
/// ```
#[derive(Clone)]
pub struct BoxedStore(Arc<dyn DynKeyStore>);

impl fmt::Debug for BoxedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BoxedStore(..)")
    }
}

impl BoxedStore {
    /// Erase a store's type.
    pub fn new(store: impl KeyStore) -> Self {
        Self(Arc::new(store))
    }

    /// Wrap an existing `Arc<dyn DynKeyStore>`.
    pub fn from_arc(store: Arc<dyn DynKeyStore>) -> Self {
        Self(store)
    }
}

impl KeyStore for BoxedStore {
    type Lookup = BoxFuture<'static, LookupResult>;

    fn find_by_hash(&self, hash: &KeyHash) -> Self::Lookup {
        self.0.find_by_hash(hash)
    }
    async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
        self.0.insert(record).await
    }
    async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.0.get(id).await
    }
    async fn list(&self, org: &OrgId) -> Result<Vec<KeyRecord>, StoreError> {
        self.0.list(org).await
    }
    async fn revoke(&self, id: &KeyId, at: Timestamp) -> Result<Option<KeyRecord>, StoreError> {
        self.0.revoke(id, at).await
    }
    async fn update(
        &self,
        id: &KeyId,
        changes: &KeyChanges,
    ) -> Result<Option<KeyRecord>, StoreError> {
        self.0.update(id, changes).await
    }
    async fn touch_last_used(&self, batch: &[(KeyId, Timestamp)]) -> Result<(), StoreError> {
        self.0.touch_last_used(batch).await
    }
    async fn record_usage(&self, batch: &[UsageDelta]) -> Result<(), StoreError> {
        self.0.record_usage(batch).await
    }
    async fn usage(
        &self,
        org: &OrgId,
        from: Timestamp,
        to: Timestamp,
        granularity: Granularity,
    ) -> Result<Vec<UsageRow>, StoreError> {
        self.0.usage(org, from, to, granularity).await
    }
    async fn prune_usage(
        &self,
        granularity: Granularity,
        before: Timestamp,
    ) -> Result<u64, StoreError> {
        self.0.prune_usage(granularity, before).await
    }
    async fn set_plan(&self, org: &OrgId, plan: Plan) -> Result<(), StoreError> {
        self.0.set_plan(org, plan).await
    }
    async fn plan(&self, org: &OrgId) -> Result<Plan, StoreError> {
        self.0.plan(org).await
    }
    async fn claim_expiry_reminders(
        &self,
        now: Timestamp,
        until: Timestamp,
        limit: usize,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        self.0.claim_expiry_reminders(now, until, limit).await
    }
    async fn append_audit(&self, entry: AuditEntry) -> Result<(), StoreError> {
        self.0.append_audit(entry).await
    }
    async fn audit_log(
        &self,
        org: &OrgId,
        query: &AuditQuery,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        self.0.audit_log(org, query).await
    }
}

/// The URL given to [`store_from_url`] is not supported (unknown scheme, or its feature is off).
#[derive(Debug, thiserror::Error)]
#[error(
    "unsupported key store URL {0:?}: use memory://, sqlite://PATH (feature `sqlite`) or postgres://.. (feature `postgres`)"
)]
pub struct UnsupportedStoreUrl(String);

/// A store from a URL, migrated and ready: the way to let deployment configuration choose.
///
/// - `memory://` (or `memory:`): a [`MemoryStore`].
/// - `sqlite://keys.db`, `sqlite::memory:` (feature `sqlite`): a `SqliteStore`, migrated.
/// - `postgres://…` / `postgresql://…` (feature `postgres`): a `PostgresStore`, migrated, behind a
///   [`CachedStore`] subscribed to its `LISTEN/NOTIFY` invalidations (default [`CacheConfig`]).
///
/// An unsupported URL fails with [`StoreError::Unavailable`] wrapping [`UnsupportedStoreUrl`]
/// (the URL is not echoed elsewhere; it may hold a password, so do not log the error verbatim
/// if your URLs do).
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let store = tower_api_key::store::store_from_url("memory://").await?;
/// let _layer = tower_api_key::ApiKeyAuth::new(store);
/// # Ok::<(), tower_api_key::StoreError>(()) }).unwrap();
/// ```
pub async fn store_from_url(url: &str) -> Result<BoxedStore, StoreError> {
    let scheme = url.split(':').next().unwrap_or_default();
    match scheme {
        "memory" => Ok(BoxedStore::new(MemoryStore::new())),
        #[cfg(feature = "sqlite")]
        "sqlite" => {
            let store = SqliteStore::connect(url).await?;
            store.migrate().await?;
            // Cached so the request path shares one record per key (and so the last-used
            // recorder queues each key once per interval, not once per request).
            Ok(BoxedStore::new(CachedStore::new(store)))
        }
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => {
            let store = PostgresStore::connect(url).await?;
            store.migrate().await?;
            let cached = CachedStore::new(store.clone());
            cached.subscribe(store.invalidations().await?);
            Ok(BoxedStore::new(cached))
        }
        _ => Err(StoreError::unavailable(UnsupportedStoreUrl(
            scheme.to_owned(),
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> KeyRecord {
        KeyRecord::new(
            KeyId::from("key_0123456789abcdefghij"),
            OrgId::from("org_1"),
            "ci-pipeline".into(),
            KeyHash::of("k"),
            "br_live_…o5p6".into(),
            Scopes::full_access(),
            Arc::from("live"),
            Timestamp::from_unix_secs(1),
        )
    }

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn a_record_stays_small() {
        // The memory budget: at most 300 bytes a key at 1M keys (see the module docs).
        assert_eq!(std::mem::size_of::<KeyRecord>(), 208);
    }

    #[test]
    fn accessors_serialization_and_equality_see_the_compact_fields() {
        let r = record();
        assert_eq!(r.name(), "ci-pipeline");
        assert_eq!(r.hint(), "br_live_…o5p6");
        assert_eq!(r.rotated_from(), None);
        let rotated = r.clone().with_rotated_from(Some(KeyId::from("key_old")));
        assert_eq!(rotated.rotated_from(), Some(&KeyId::from("key_old")));
        assert_ne!(rotated, r, "rotated_from takes part in ==");
        let json = serde_json::to_value(&rotated).unwrap();
        assert_eq!(json["id"], "key_0123456789abcdefghij");
        assert_eq!(json["name"], "ci-pipeline");
        assert_eq!(json["hint"], "br_live_…o5p6");
        assert_eq!(json["rotated_from"], "key_old");
        assert_eq!(json["expires_at"], serde_json::Value::Null);
        let long = "a label longer than twenty-four bytes, kept whole".to_owned();
        let mut r = KeyRecord::new(
            KeyId::from("key_an_id_longer_than_twenty_four_bytes"),
            r.org_id.clone(),
            long.clone(),
            r.hash,
            r.hint().to_owned(),
            r.scopes.clone(),
            r.environment.clone(),
            r.created_at,
        );
        assert_eq!(r.name(), long);
        assert_eq!(r.id.as_str(), "key_an_id_longer_than_twenty_four_bytes");
        r.set_rotated_from(None);
        assert_eq!(r.rotated_from(), None);
    }
}
