//! The audit log through `KeyManager`: every change appended after it succeeds, as the actor
//! the manager acts for; a failed audit write neither fails nor undoes the change; the
//! `on_audit` hook sees every entry, and with `events` it emits the matching event.

mod common;

use std::sync::{Arc, Mutex};

use common::stores::{Mode, TestStore};

use tower_api_key::{
    Actor, AuditAction, AuditEntry, AuditQuery, KeyChanges, KeyId, KeyManager, KeyStore,
    MemoryStore, NewKey, OrgId, Plan, Rotation,
};

/// What the hook saw: (action, actor, key).
type Seen = Arc<Mutex<Vec<(AuditAction, Actor, Option<KeyId>)>>>;

fn recording<St: KeyStore>(manager: KeyManager<St>) -> (KeyManager<St>, Seen) {
    let seen: Seen = Arc::default();
    let sink = seen.clone();
    let manager = manager.on_audit(move |e| {
        sink.lock()
            .unwrap()
            .push((e.action, e.actor.clone(), e.key_id.clone()))
    });
    (manager, seen)
}

#[tokio::test]
async fn every_change_is_audited_as_the_manager_s_actor() {
    let (manager, seen) = recording(KeyManager::new(MemoryStore::new()));
    let org = OrgId::from("org_a");
    let ann = manager.as_actor(Actor::user("ann"));
    let k = ann.create(&org, NewKey::new("ci")).await.unwrap().record.id;
    ann.update(&org, &k, KeyChanges::new().name("ci 2"))
        .await
        .unwrap();
    ann.disable(&org, &k).await.unwrap();
    ann.enable(&org, &k).await.unwrap();
    let k2 = ann
        .rotate(&org, &k, Rotation::immediate())
        .await
        .unwrap()
        .record
        .id;
    manager.revoke(&org, &k2).await.unwrap();
    manager.set_plan(&org, Plan::Paid).await.unwrap();
    // A refused change is not audited.
    assert!(ann.enable(&org, &k2).await.is_err());

    let log = manager.audit_log(&org, &AuditQuery::new()).await.unwrap();
    let got: Vec<(AuditAction, Actor, Option<KeyId>)> = log
        .iter()
        .rev()
        .map(|e| (e.action, e.actor.clone(), e.key_id.clone()))
        .collect();
    let user = Actor::user("ann");
    let want = vec![
        (AuditAction::KeyCreated, user.clone(), Some(k.clone())),
        (AuditAction::KeyUpdated, user.clone(), Some(k.clone())),
        (AuditAction::KeyDisabled, user.clone(), Some(k.clone())),
        (AuditAction::KeyEnabled, user.clone(), Some(k.clone())),
        (AuditAction::KeyRotated, user.clone(), Some(k.clone())),
        (AuditAction::KeyRevoked, Actor::System, Some(k2.clone())),
        (AuditAction::PlanChanged, Actor::System, None),
    ];
    assert_eq!(got, want);
    assert_eq!(*seen.lock().unwrap(), want, "the hook saw the same entries");
    assert_eq!(log[5].detail["changed"], serde_json::json!(["name"]));
    assert_eq!(log[2].detail["new_key_id"], k2.as_str());
}

#[tokio::test]
async fn a_failed_audit_write_neither_fails_nor_undoes_the_change() {
    let (manager, seen) = recording(KeyManager::new(
        TestStore::new(MemoryStore::new(), Mode::Pass).audit_down(),
    ));
    let org = OrgId::from("org_a");
    let created = manager.create(&org, NewKey::new("ci")).await.unwrap();
    let revoked = manager.revoke(&org, &created.record.id).await.unwrap();
    assert!(revoked.revoked_at.is_some());
    assert!(
        manager
            .get(&org, &created.record.id)
            .await
            .unwrap()
            .revoked_at
            .is_some(),
        "the revocation stands"
    );
    // The store kept nothing; the hook still heard of both changes.
    assert_eq!(
        manager.audit_log(&org, &AuditQuery::new()).await.unwrap(),
        Vec::<AuditEntry>::new()
    );
    let actions: Vec<AuditAction> = seen.lock().unwrap().iter().map(|s| s.0).collect();
    assert_eq!(actions, [AuditAction::KeyCreated, AuditAction::KeyRevoked]);
}

#[cfg(feature = "events")]
#[tokio::test]
async fn on_audit_emits_key_revoked_with_the_actor() {
    use std::time::Duration;
    use tower_api_key::events::{EventKind, Events, RecentEvents};
    let recent = RecentEvents::new(10);
    let (events, delivery) = Events::builder().sink(recent.clone()).start();
    let manager = KeyManager::new(MemoryStore::new()).on_audit(events.on_audit());
    let org = OrgId::from("org_a");
    let created = manager.create(&org, NewKey::new("ci")).await.unwrap();
    manager
        .as_actor(Actor::user("ops@example.com"))
        .revoke(&org, &created.record.id)
        .await
        .unwrap();
    // Shutting down delivers what is queued: no waiting on time.
    assert!(delivery.shutdown(Duration::from_secs(5)).await);
    let kinds: Vec<EventKind> = recent.list(&org).into_iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            EventKind::KeyRevoked {
                key_id: created.record.id.clone(),
                actor: Actor::user("ops@example.com"),
            },
            EventKind::KeyCreated {
                key_id: created.record.id.clone(),
                actor: Actor::System,
            },
        ]
    );
}
