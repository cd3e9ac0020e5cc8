//! The audit log: who created, revoked, rotated or changed which key, changed a plan or set
//! credits, and when ([`AuditEntry`]).
//!
//! [`KeyManager`](crate::KeyManager) appends an entry after each change it makes, as the
//! [`Actor`] it acts for ([`KeyManager::as_actor`](crate::KeyManager::as_actor)); stores keep
//! them ([`KeyStore::append_audit`](crate::KeyStore::append_audit)) and list them newest first
//! ([`KeyManager::audit_log`](crate::KeyManager::audit_log)).
//!
//! ```
//! use tower_api_key::audit::{Actor, AuditAction, AuditQuery};
//! use tower_api_key::{KeyManager, MemoryStore, NewKey, OrgId};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let manager = KeyManager::new(MemoryStore::new());
//! let org = OrgId::from("org_1");
//! let key = manager.create(&org, NewKey::new("ci")).await?;
//! manager.as_actor(Actor::user("ops@example.com")).revoke(&org, &key.record.id).await?;
//!
//! let log = manager.audit_log(&org, &AuditQuery::new()).await?;
//! assert_eq!(log[0].action, AuditAction::KeyRevoked);
//! assert_eq!(log[0].actor, Actor::user("ops@example.com"));
//! assert_eq!(log[1].action, AuditAction::KeyCreated);
//! assert_eq!(log[1].actor, Actor::System);
//! # Ok::<(), tower_api_key::ManageError>(()) }).unwrap();
//! ```
//!
//! Entries carry ids, never a secret: keys appear by their [`KeyId`] only.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::ids::{KeyId, OrgId};

/// Who did something: a key (through the admin API), a person (through the dashboard or the
/// CLI), or the system itself (a rotation's grace period ending, a leak report).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", content = "id", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Actor {
    /// An API key, by id.
    Key(KeyId),
    /// A person, by the name the host signs them in with.
    User(String),
    /// The library or the host on its own.
    System,
}

impl Actor {
    /// A person, by name.
    pub fn user(name: impl Into<String>) -> Self {
        Self::User(name.into())
    }

    /// `key`, `user` or `system`: the kind, as stored.
    pub fn kind(&self) -> &'static str {
        match self {
            Actor::Key(_) => "key",
            Actor::User(_) => "user",
            Actor::System => "system",
        }
    }

    /// The key id or user name (`None` for the system), as stored.
    pub fn id(&self) -> Option<&str> {
        match self {
            Actor::Key(id) => Some(id.as_str()),
            Actor::User(name) => Some(name),
            Actor::System => None,
        }
    }

    /// The actor a store reads back from its [`kind`](Self::kind) and [`id`](Self::id) columns
    /// (`None` for an unknown kind or a missing id).
    pub fn from_parts(kind: &str, id: Option<&str>) -> Option<Self> {
        match (kind, id) {
            ("key", Some(id)) => Some(Actor::Key(KeyId::from(id))),
            ("user", Some(name)) => Some(Actor::User(name.to_owned())),
            ("system", _) => Some(Actor::System),
            _ => None,
        }
    }
}

impl fmt::Display for Actor {
    /// `key key_…`, `user NAME` or `system`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.id() {
            Some(id) => write!(f, "{} {id}", self.kind()),
            None => f.write_str(self.kind()),
        }
    }
}

/// What was done.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AuditAction {
    /// A key was created.
    KeyCreated,
    /// A key was revoked.
    KeyRevoked,
    /// A key was rotated (`detail.new_key_id` replaces it).
    KeyRotated,
    /// A key's name, scopes, metadata or networks changed (`detail.changed` lists which).
    KeyUpdated,
    /// A key was switched off.
    KeyDisabled,
    /// A key was switched on again.
    KeyEnabled,
    /// The organization's plan changed (`detail.plan`).
    PlanChanged,
    /// An organization's or a key's credits were set (`detail.balance`, `detail.refill`).
    CreditsSet,
}

impl AuditAction {
    /// Every action, in declaration order.
    pub const ALL: [AuditAction; 8] = [
        AuditAction::KeyCreated,
        AuditAction::KeyRevoked,
        AuditAction::KeyRotated,
        AuditAction::KeyUpdated,
        AuditAction::KeyDisabled,
        AuditAction::KeyEnabled,
        AuditAction::PlanChanged,
        AuditAction::CreditsSet,
    ];

    /// The action's name, as in JSON and in the stores (`key_created`, …).
    pub fn as_str(&self) -> &'static str {
        match self {
            AuditAction::KeyCreated => "key_created",
            AuditAction::KeyRevoked => "key_revoked",
            AuditAction::KeyRotated => "key_rotated",
            AuditAction::KeyUpdated => "key_updated",
            AuditAction::KeyDisabled => "key_disabled",
            AuditAction::KeyEnabled => "key_enabled",
            AuditAction::PlanChanged => "plan_changed",
            AuditAction::CreditsSet => "credits_set",
        }
    }

    /// The action named `name` (as [`as_str`](Self::as_str) writes it).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == name)
    }
}

impl fmt::Display for AuditAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of the audit log.
///
/// Serialized as `{"id": "aud_…", "at": <unix secs>, "org_id", "actor": {"type", "id"},
/// "action": "key_revoked", "key_id": "key_…" | null, "detail": {…}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AuditEntry {
    /// Unique; sorts in the order entries were made by one process (time first), so that
    /// "newest first" is "greatest id first".
    pub id: String,
    /// When (millisecond precision in the stores; Unix seconds in JSON).
    pub at: Timestamp,
    /// The organization concerned.
    pub org_id: OrgId,
    /// Who did it.
    pub actor: Actor,
    /// What was done.
    pub action: AuditAction,
    /// The key concerned, if any.
    pub key_id: Option<KeyId>,
    /// What changed, as a small JSON object (`{}` when the action says it all).
    pub detail: serde_json::Value,
}

impl AuditEntry {
    /// A new entry with a fresh id.
    pub fn new(
        at: Timestamp,
        org_id: OrgId,
        actor: Actor,
        action: AuditAction,
        key_id: Option<KeyId>,
        detail: serde_json::Value,
    ) -> Self {
        Self {
            id: audit_id(at),
            at,
            org_id,
            actor,
            action,
            key_id,
            detail,
        }
    }

    /// An entry as a store reads it back (id and all).
    pub fn from_parts(
        id: String,
        at: Timestamp,
        org_id: OrgId,
        actor: Actor,
        action: AuditAction,
        key_id: Option<KeyId>,
        detail: serde_json::Value,
    ) -> Self {
        Self {
            id,
            at,
            org_id,
            actor,
            action,
            key_id,
            detail,
        }
    }
}

/// Ids that sort by time, then in the order of this process, and do not collide across
/// replicas: `prefix` + milliseconds (12 hex) + a process-wide sequence (10 hex) + 6 random
/// base62. Audit entries (`aud_`) and events (`evt_`) are named this way.
pub(crate) fn time_ordered_id(prefix: &str, at: Timestamp) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed) & 0xff_ffff_ffff;
    let mut id = format!("{prefix}{:012x}{seq:010x}", at.as_unix_millis());
    // Without randomness the id is still unique within the process; across replicas the
    // suffix keeps ids apart. A failing RNG only shortens the id.
    let _ = crate::key::push_random_alphanumerics(&mut id, 6);
    id
}

fn audit_id(at: Timestamp) -> String {
    time_ordered_id("aud_", at)
}

/// A page of the audit log: at most `limit` entries older than the entry `before`, newest
/// first.
///
/// ```
/// use tower_api_key::audit::AuditQuery;
/// let first = AuditQuery::new().limit(20);
/// let next = AuditQuery::new().limit(20).before("aud_018f…"); // the last id of the page before
/// # let _ = (first, next);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuditQuery {
    /// Entries per page, 1 to [`AuditQuery::MAX_LIMIT`] (default 50).
    pub limit: usize,
    /// Only entries whose id sorts before this one (the last id of the previous page).
    pub before: Option<String>,
}

impl Default for AuditQuery {
    fn default() -> Self {
        Self {
            limit: 50,
            before: None,
        }
    }
}

impl AuditQuery {
    /// The largest page.
    pub const MAX_LIMIT: usize = 500;

    /// The newest 50 entries.
    pub fn new() -> Self {
        Self::default()
    }

    /// At most `n` entries (clamped to 1 to [`MAX_LIMIT`](Self::MAX_LIMIT)).
    pub fn limit(mut self, n: usize) -> Self {
        self.limit = n.clamp(1, Self::MAX_LIMIT);
        self
    }

    /// Entries older than the entry with id `id`.
    pub fn before(mut self, id: impl Into<String>) -> Self {
        self.before = Some(id.into());
        self
    }

    /// Whether `entry` belongs after the cursor.
    pub fn admits(&self, entry: &AuditEntry) -> bool {
        self.before.as_deref().is_none_or(|b| entry.id.as_str() < b)
    }
}

/// A hook called with each entry [`KeyManager`](crate::KeyManager) appends (see
/// [`KeyManager::on_audit`](crate::KeyManager::on_audit)).
pub type OnAudit = std::sync::Arc<dyn Fn(&AuditEntry) + Send + Sync>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_in_order_and_names_round_trip() {
        let at = Timestamp::from_unix_secs(1_700_000_000);
        let ids: Vec<_> = (0..50).map(|_| audit_id(at)).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
        for a in AuditAction::ALL {
            assert_eq!(AuditAction::parse(a.as_str()), Some(a));
            assert_eq!(
                serde_json::to_value(a).unwrap(),
                serde_json::json!(a.as_str())
            );
        }
        for actor in [
            Actor::Key(KeyId::from("key_1")),
            Actor::user("ann"),
            Actor::System,
        ] {
            assert_eq!(Actor::from_parts(actor.kind(), actor.id()), Some(actor));
        }
    }
}
