//! The JSON shapes of the admin API: one key object everywhere, one envelope for a new secret.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::audit::{Actor, AuditEntry};
use crate::clock::Timestamp;
use crate::manage::CreatedKey;
use crate::store::{KeyRecord, KeyStatus};

/// An API key as every admin route shows it. Never carries the secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyView {
    /// The key's id (`key_…`), used in the admin routes' paths.
    pub id: String,
    /// Human label.
    pub name: String,
    /// Enough of the secret to recognise it (`br_live_…o5p6`).
    pub hint: String,
    /// The permissions granted; empty when `access` is `full`.
    pub scopes: Vec<String>,
    /// `full` (every permission, present and future) or `scoped` (only `scopes`).
    pub access: Access,
    /// The key's environment (`live`, `test`, …).
    pub environment: String,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds; `null` for a key that never expires.
    pub expires_at: Option<u64>,
    /// Unix seconds of the last request made with the key (to the flush interval); `null` if never used.
    pub last_used_at: Option<u64>,
    /// Unix seconds; in the future while a rotated key's overlap lasts.
    pub revoked_at: Option<u64>,
    /// The id of the key this one replaced by rotation.
    pub rotated_from: Option<String>,
    /// Switched off (refused until enabled again); reversible, unlike revocation.
    pub disabled: bool,
    /// The key's metadata (a JSON object), returned on every verified request; `null` if none.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// The client networks (CIDR) the key may be used from; empty: anywhere.
    pub allowed_networks: Vec<String>,
    /// Where the key stands now.
    pub status: Status,
}

/// Whether a key holds every permission or only those listed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// Every permission, including ones added later.
    Full,
    /// Only the permissions in `scopes`.
    Scoped,
}

/// A key's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Usable.
    Active,
    /// Past its expiry.
    Expired,
    /// Revoked: permanent.
    Revoked,
    /// Disabled: refused until enabled again.
    Disabled,
}

impl ApiKeyView {
    /// The view of `record` at `now` (which decides `status`).
    pub fn of(record: &KeyRecord, now: Timestamp) -> Self {
        let secs = |t: Timestamp| t.as_unix_secs();
        Self {
            id: record.id.to_string(),
            name: record.name().to_owned(),
            hint: record.hint().to_owned(),
            scopes: if record.scopes.is_full_access() {
                Vec::new()
            } else {
                record
                    .scopes
                    .iter()
                    .map(|s| s.as_str().to_owned())
                    .collect()
            },
            access: if record.scopes.is_full_access() {
                Access::Full
            } else {
                Access::Scoped
            },
            environment: record.environment.to_string(),
            created_at: secs(record.created_at),
            expires_at: record.expires_at.map(secs),
            last_used_at: record.last_used_at.map(secs),
            revoked_at: record.revoked_at.map(secs),
            rotated_from: record.rotated_from().map(ToString::to_string),
            disabled: record.is_disabled(),
            metadata: record.metadata().cloned(),
            allowed_networks: record
                .allowed_networks()
                .iter()
                .map(ToString::to_string)
                .collect(),
            status: match record.status(now) {
                KeyStatus::Active => Status::Active,
                KeyStatus::Expired => Status::Expired,
                KeyStatus::Revoked => Status::Revoked,
                KeyStatus::Disabled => Status::Disabled,
            },
        }
    }
}

/// The answer that carries a new secret, on create and on rotate alike.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct NewSecret {
    /// The secret, shown this once: only its SHA-256 is stored.
    pub key: String,
    /// The new key.
    pub api_key: ApiKeyView,
}

impl NewSecret {
    /// The envelope of a freshly created key.
    pub fn of(created: &CreatedKey, now: Timestamp) -> Self {
        Self {
            key: created.key.expose_secret().to_owned(),
            api_key: ApiKeyView::of(&created.record, now),
        }
    }
}

impl std::fmt::Debug for NewSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewSecret")
            .field("key", &"<redacted>")
            .field("api_key", &self.api_key)
            .finish()
    }
}

/// A page of keys, newest first.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyPage {
    /// The keys of this page.
    pub data: Vec<ApiKeyView>,
    /// Whether more keys follow.
    pub has_more: bool,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// An organization's plan and the limits it sets.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct OrgView {
    /// The organization.
    pub org_id: String,
    /// `free`, `paid` or `enterprise`.
    pub plan: String,
    /// The limits of the plan.
    pub limits: Limits,
}

/// What a plan allows.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Limits {
    /// Requests allowed per window (also the burst).
    pub requests_per_window: u32,
    /// The window, in seconds.
    pub window_secs: u64,
    /// Sessions that may be open at once.
    pub concurrent_sessions: u32,
}

/// Who did something, as the audit log shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ActorView {
    /// `key`, `user` or `system`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The key id or the user's name; `null` for the system.
    pub id: Option<String>,
}

/// One audit log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditEntryView {
    /// The entry's id (`aud_…`), also the paging cursor.
    pub id: String,
    /// Unix seconds.
    pub at: u64,
    /// Who did it.
    pub actor: ActorView,
    /// `key_created`, `key_revoked`, `key_rotated`, `key_updated`, `key_disabled`,
    /// `key_enabled`, `plan_changed` or `credits_set`.
    pub action: String,
    /// The key concerned, if any.
    pub key_id: Option<String>,
    /// What changed (e.g. `{"new_key_id": …}` for a rotation, `{"plan": …}`).
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

impl AuditEntryView {
    /// The view of `entry`.
    pub fn of(entry: &AuditEntry) -> Self {
        Self {
            id: entry.id.clone(),
            at: entry.at.as_unix_secs(),
            actor: ActorView::of(&entry.actor),
            action: entry.action.as_str().to_owned(),
            key_id: entry.key_id.as_ref().map(ToString::to_string),
            detail: entry.detail.clone(),
        }
    }
}

impl ActorView {
    /// The view of `actor`.
    pub fn of(actor: &Actor) -> Self {
        Self {
            kind: actor.kind().to_owned(),
            id: actor.id().map(str::to_owned),
        }
    }
}

/// A page of the audit log, newest first.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    /// The entries of this page.
    pub data: Vec<AuditEntryView>,
    /// Whether older entries follow.
    pub has_more: bool,
    /// Pass as `before` to get the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}
