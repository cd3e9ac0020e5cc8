//! [`Events::on_audit`]: the audit log's entries as events, with their actor.

use super::{EventKind, Events};
use crate::audit::{AuditAction, AuditEntry};
use crate::ids::KeyId;

impl Events {
    /// The [`KeyManager::on_audit`](crate::KeyManager::on_audit) hook that emits, for each
    /// audit entry, the matching event carrying its actor: [`EventKind::KeyCreated`],
    /// [`KeyRevoked`](EventKind::KeyRevoked), [`KeyRotated`](EventKind::KeyRotated),
    /// [`KeyUpdated`](EventKind::KeyUpdated) (also for a key disabled or enabled) and
    /// [`PlanChanged`](EventKind::PlanChanged). Credits set emit nothing (no such event).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use tower_api_key::events::{Events, TracingSink};
    /// use tower_api_key::{KeyManager, MemoryStore};
    /// let (events, _delivery) = Events::builder().sink(TracingSink).start();
    /// let manager = KeyManager::new(MemoryStore::new()).on_audit(events.on_audit());
    /// # let _ = manager; });
    /// ```
    pub fn on_audit(&self) -> impl Fn(&AuditEntry) + Send + Sync + 'static {
        let events = self.clone();
        move |entry| {
            if let Some(kind) = event_of(entry) {
                events.emit(&entry.org_id, kind);
            }
        }
    }
}

/// The event of an audit entry, if it has one.
fn event_of(entry: &AuditEntry) -> Option<EventKind> {
    let actor = entry.actor.clone();
    let key_id = entry.key_id.clone();
    Some(match entry.action {
        AuditAction::KeyCreated => EventKind::KeyCreated {
            key_id: key_id?,
            actor,
        },
        AuditAction::KeyRevoked => EventKind::KeyRevoked {
            key_id: key_id?,
            actor,
        },
        AuditAction::KeyRotated => EventKind::KeyRotated {
            key_id: key_id?,
            new_key_id: KeyId::from(entry.detail.get("new_key_id")?.as_str()?),
            actor,
        },
        AuditAction::KeyUpdated | AuditAction::KeyDisabled | AuditAction::KeyEnabled => {
            EventKind::KeyUpdated {
                key_id: key_id?,
                actor,
            }
        }
        AuditAction::PlanChanged => EventKind::PlanChanged {
            plan: entry.detail.get("plan")?.as_str()?.to_owned(),
            actor,
        },
        AuditAction::CreditsSet => return None,
    })
}
