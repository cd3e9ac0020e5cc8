//! The `KeyStore` contract: one suite every store must pass.
//!
//! Each check uses organizations of its own (a random tag per run), so one store can run them
//! all, and a shared database can run several suites at once.

use std::sync::Arc;
use std::time::Duration;

use tower_api_key::store::KeyStore;
use tower_api_key::{
    Granularity, KeyFormat, KeyHash, KeyId, KeyRecord, OrgId, Plan, Quota, Scopes, StoreError,
    Timestamp, UsageCounts, UsageDelta,
};

/// An arbitrary instant with a sub-second part, so nanosecond precision is exercised.
const T0: u64 = 1_700_000_000_123_456_789;

pub fn at(offset_secs: u64) -> Timestamp {
    Timestamp::from_unix_nanos(T0 + offset_secs * 1_000_000_000)
}

fn tag() -> String {
    KeyId::generate().unwrap().as_str()[4..14].to_owned()
}

pub fn org(check: &str, tag: &str, n: u32) -> OrgId {
    OrgId::from(format!("org_{check}_{tag}_{n}"))
}

/// A fresh record: new id, new random key hash.
pub fn record(org: &OrgId, name: &str, created: Timestamp) -> KeyRecord {
    let format = KeyFormat::live();
    let key = format.generate().unwrap();
    KeyRecord::new(
        KeyId::generate().unwrap(),
        org.clone(),
        name.to_owned(),
        key.hash(),
        key.hint(&format),
        Scopes::full_access(),
        Arc::from("live"),
        created,
    )
}

fn unknown_hash() -> KeyHash {
    KeyFormat::live().generate().unwrap().hash()
}

/// Equal in every stored field; `last_used_at` is left out (the request path may lag it).
#[track_caller]
pub fn assert_same(label: &str, got: &KeyRecord, want: &KeyRecord) {
    assert_eq!(got.id, want.id, "{label}: id");
    assert_eq!(got.org_id, want.org_id, "{label}: org_id");
    assert_eq!(got.name(), want.name(), "{label}: name");
    assert!(got.hash == want.hash, "{label}: hash");
    assert_eq!(got.hint(), want.hint(), "{label}: hint");
    assert_eq!(got.scopes, want.scopes, "{label}: scopes");
    assert_eq!(got.environment, want.environment, "{label}: environment");
    assert_eq!(got.created_at, want.created_at, "{label}: created_at");
    assert_eq!(got.expires_at, want.expires_at, "{label}: expires_at");
    assert_eq!(got.revoked_at, want.revoked_at, "{label}: revoked_at");
    assert_eq!(
        got.rotated_from(),
        want.rotated_from(),
        "{label}: rotated_from"
    );
    assert_eq!(got.is_disabled(), want.is_disabled(), "{label}: disabled");
    assert_eq!(got.metadata(), want.metadata(), "{label}: metadata");
    assert_eq!(
        got.allowed_networks(),
        want.allowed_networks(),
        "{label}: allowed_networks"
    );
}

/// Run every check against `store`.
pub async fn run_all<S: KeyStore>(store: &S) {
    insert_then_find_with_plan(store).await;
    duplicates_are_refused(store).await;
    list_is_per_org_newest_first(store).await;
    revoke_is_forward_only_and_permanent(store).await;
    update_changes_only_name_and_scopes(store).await;
    touch_last_used_is_batched_forward_only(store).await;
    touch_last_used_of_many_keys_of_one_org(store).await;
    touch_revoke_touch_keeps_both(store).await;
    plans_default_and_change(store).await;
    policies_are_stored_and_updated(store).await;
    limits_are_enforced_on_insert_and_update(store).await;
    expiry_reminders_are_claimed_once(store).await;
    usage_adds_up_in_three_granularities(store).await;
    usage_prunes_one_granularity(store).await;
    audit_log_is_per_org_newest_first_and_pages(store).await;
}

fn metadata(v: serde_json::Value) -> tower_api_key::Metadata {
    match v {
        serde_json::Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

/// Disabled flag, metadata and allowed networks: stored on insert, returned by every read,
/// changed by `update` one at a time without touching the rest; disabling keeps the last-used
/// time, and a disabled key can still be revoked.
pub async fn policies_are_stored_and_updated<S: KeyStore>(store: &S) {
    use tower_api_key::KeyChanges;
    let t = tag();
    let o = org("policy", &t, 1);
    let mut rec = record(&o, "partner", at(0));
    rec.scopes = Scopes::parse(["browser_sessions:read"]).unwrap();
    rec.set_metadata(Some(metadata(serde_json::json!({
        "customer_id": "cus_42", "tier": 3, "tags": ["a", "b"], "nested": {"x": null}
    }))));
    rec.set_allowed_networks(vec![
        "203.0.113.0/24".parse().unwrap(),
        "2001:db8::/32".parse().unwrap(),
    ]);
    store.insert(rec.clone()).await.unwrap();
    let found = store.find_by_hash(&rec.hash).await.unwrap().unwrap();
    assert_same("policies on lookup", &found.record, &rec);
    assert_same(
        "policies on get",
        &store.get(&rec.id).await.unwrap().unwrap(),
        &rec,
    );
    assert_same("policies on list", &store.list(&o).await.unwrap()[0], &rec);
    assert!(!found.record.is_disabled());

    store
        .touch_last_used(&[(rec.id.clone(), at(5))])
        .await
        .unwrap();
    let got = store
        .update(&rec.id, &KeyChanges::new().disabled(true))
        .await
        .unwrap()
        .unwrap();
    let mut want = rec.clone();
    want.set_disabled(true);
    assert_same("disabled", &got, &want);
    assert_eq!(got.last_used_at, Some(at(5)), "disabling keeps last-used");
    let found = store.find_by_hash(&rec.hash).await.unwrap().unwrap();
    assert!(
        found.record.is_disabled(),
        "the lookup sees the key disabled"
    );
    assert_eq!(
        store.list(&o).await.unwrap().len(),
        1,
        "a disabled key still lists"
    );

    let new_meta = metadata(serde_json::json!({"customer_id": "cus_43"}));
    let got = store
        .update(&rec.id, &KeyChanges::new().metadata(Some(new_meta.clone())))
        .await
        .unwrap()
        .unwrap();
    want.set_metadata(Some(new_meta));
    assert_same("metadata replaced, still disabled", &got, &want);

    let got = store
        .update(
            &rec.id,
            &KeyChanges::new()
                .disabled(false)
                .metadata(None)
                .allowed_networks(vec!["10.0.0.0/8".parse().unwrap()]),
        )
        .await
        .unwrap()
        .unwrap();
    want.set_disabled(false);
    want.set_metadata(None);
    want.set_allowed_networks(vec!["10.0.0.0/8".parse().unwrap()]);
    assert_same("enabled, metadata cleared, networks replaced", &got, &want);
    let found = store.find_by_hash(&rec.hash).await.unwrap().unwrap();
    assert_same("lookup after the changes", &found.record, &want);

    let got = store
        .update(
            &rec.id,
            &KeyChanges::new().allowed_networks(vec![]).disabled(true),
        )
        .await
        .unwrap()
        .unwrap();
    assert!(got.allowed_networks().is_empty(), "networks cleared");
    let revoked = store.revoke(&rec.id, at(9)).await.unwrap().unwrap();
    assert_eq!(
        revoked.revoked_at,
        Some(at(9)),
        "a disabled key can be revoked"
    );
    assert!(revoked.is_disabled());
    assert_eq!(revoked.scopes, rec.scopes);
}

/// The bounds of `store::limits` hold for a direct store user: refused with the typed error,
/// nothing written.
pub async fn limits_are_enforced_on_insert_and_update<S: KeyStore>(store: &S) {
    use tower_api_key::KeyChanges;
    use tower_api_key::store::limits::{self, LimitError};
    let t = tag();
    let o = org("limits", &t, 1);

    let nul_org = record(&OrgId::from(format!("org_{t}\0x")), "n", at(0));
    let newline_id = {
        let r = record(&o, "n", at(0));
        KeyRecord::new(
            KeyId::from(format!("key_{t}\nforged")),
            o.clone(),
            "n".into(),
            r.hash,
            r.hint().to_owned(),
            Scopes::full_access(),
            Arc::from("live"),
            at(0),
        )
    };
    let mut many_scopes = record(&o, "n", at(0));
    many_scopes.scopes =
        Scopes::parse((0..=limits::MAX_SCOPES).map(|i| format!("r{i}:read"))).unwrap();
    let mut big_meta = record(&o, "n", at(0));
    big_meta.set_metadata(Some(metadata(
        serde_json::json!({"k": "x".repeat(limits::MAX_METADATA_BYTES)}),
    )));
    let control_name = record(&o, "line\u{1b}[2J", at(0));
    for (label, rec, want) in [
        (
            "NUL in org id",
            nul_org,
            LimitError::InvalidId {
                what: "org id",
                max: limits::MAX_ID_BYTES,
            },
        ),
        (
            "newline in key id",
            newline_id,
            LimitError::InvalidId {
                what: "key id",
                max: limits::MAX_ID_BYTES,
            },
        ),
        (
            "65 scopes",
            many_scopes,
            LimitError::TooManyScopes {
                max: limits::MAX_SCOPES,
                got: limits::MAX_SCOPES + 1,
            },
        ),
        (
            "4 KiB metadata",
            big_meta,
            LimitError::MetadataTooLarge {
                max: limits::MAX_METADATA_BYTES,
                got: limits::MAX_METADATA_BYTES + 8,
            },
        ),
        (
            "control character in name",
            control_name,
            LimitError::InvalidName {
                max: limits::MAX_NAME_CHARS,
            },
        ),
    ] {
        let hash = rec.hash;
        match store.insert(rec).await {
            Err(StoreError::Invalid(got)) => assert_eq!(got, want, "{label}"),
            other => panic!("{label}: {other:?}"),
        }
        assert!(
            store.find_by_hash(&hash).await.unwrap().is_none(),
            "{label}: not written"
        );
    }

    let rec = record(&o, "ok", at(0));
    store.insert(rec.clone()).await.unwrap();
    let too_many_members = metadata(serde_json::Value::Object(
        (0..=limits::MAX_METADATA_MEMBERS)
            .map(|i| (format!("k{i}"), i.into()))
            .collect(),
    ));
    let networks = (0..=limits::MAX_ALLOWED_NETWORKS)
        .map(|i| format!("10.{i}.0.0/16").parse().unwrap())
        .collect();
    for (label, changes, want) in [
        (
            "33 metadata members",
            KeyChanges::new().metadata(Some(too_many_members)),
            LimitError::TooManyMetadataMembers {
                max: limits::MAX_METADATA_MEMBERS,
                got: limits::MAX_METADATA_MEMBERS + 1,
            },
        ),
        (
            "65 networks",
            KeyChanges::new().allowed_networks(networks),
            LimitError::TooManyNetworks {
                max: limits::MAX_ALLOWED_NETWORKS,
                got: limits::MAX_ALLOWED_NETWORKS + 1,
            },
        ),
        (
            "empty name",
            KeyChanges::new().name(""),
            LimitError::InvalidName {
                max: limits::MAX_NAME_CHARS,
            },
        ),
    ] {
        match store.update(&rec.id, &changes).await {
            Err(StoreError::Invalid(got)) => assert_eq!(got, want, "{label}"),
            other => panic!("{label}: {other:?}"),
        }
    }
    assert_same(
        "refused updates wrote nothing",
        &store.get(&rec.id).await.unwrap().unwrap(),
        &rec,
    );
}

/// Reminders are claimed atomically, once per key: only keys not revoked, expiring inside the
/// window and not yet reminded.
pub async fn expiry_reminders_are_claimed_once<S: KeyStore>(store: &S) {
    let t = tag();
    let o = org("remind", &t, 1);
    let now = at(1_000_000);
    let day = 86_400;
    let mut due = record(&o, "due", at(0));
    due.expires_at = Some(at(1_000_000 + 2 * day));
    let mut later = record(&o, "later", at(0));
    later.expires_at = Some(at(1_000_000 + 30 * day));
    let mut expired = record(&o, "expired", at(0));
    expired.expires_at = Some(at(999_999));
    let mut revoked = record(&o, "revoked", at(0));
    revoked.expires_at = Some(at(1_000_000 + day));
    revoked.revoked_at = Some(at(10));
    let never = record(&o, "never", at(0));
    for r in [&due, &later, &expired, &revoked, &never] {
        store.insert(r.clone()).await.unwrap();
    }
    // Other suites share the store: look only at this check's keys.
    let until = at(1_000_000 + 7 * day);
    let mine = |claimed: Vec<KeyRecord>| -> Vec<KeyRecord> {
        claimed.into_iter().filter(|r| r.org_id == o).collect()
    };
    let first = mine(
        store
            .claim_expiry_reminders(now, until, 1000)
            .await
            .unwrap(),
    );
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0].id, due.id);
    assert_eq!(first[0].expiry_reminded_at(), Some(now));
    let again = mine(
        store
            .claim_expiry_reminders(at(1_000_100), until, 1000)
            .await
            .unwrap(),
    );
    assert!(again.is_empty(), "claimed once: {again:?}");
    assert_eq!(
        store
            .get(&due.id)
            .await
            .unwrap()
            .unwrap()
            .expiry_reminded_at(),
        Some(now)
    );
    assert_eq!(
        store
            .get(&later.id)
            .await
            .unwrap()
            .unwrap()
            .expiry_reminded_at(),
        None
    );
}

pub async fn insert_then_find_with_plan<S: KeyStore>(store: &S) {
    let t = tag();
    let o = org("find", &t, 1);
    let mut rec = record(&o, "ci-pipeline", at(0));
    rec.scopes = Scopes::parse(["browser_sessions:create", "browser_sessions:*"]).unwrap();
    rec.environment = Arc::from("test");
    rec.expires_at = Some(at(90 * 24 * 3600));
    rec.set_rotated_from(Some(KeyId::from("key_previous")));
    let plain = record(&o, "plain", at(1));

    assert!(
        store.find_by_hash(&rec.hash).await.unwrap().is_none(),
        "not there before insert"
    );
    store.insert(rec.clone()).await.unwrap();
    store.insert(plain.clone()).await.unwrap();

    let found = store
        .find_by_hash(&rec.hash)
        .await
        .unwrap()
        .expect("inserted key is found by its hash");
    assert_same("find_by_hash", &found.record, &rec);
    assert_eq!(found.plan, Plan::Free, "organizations default to Free");
    let found_plain = store.find_by_hash(&plain.hash).await.unwrap().unwrap();
    assert_same("full-access record", &found_plain.record, &plain);
    assert!(found_plain.record.scopes.is_full_access());

    let got = store.get(&rec.id).await.unwrap().expect("get by id");
    assert_same("get", &got, &rec);
    assert_eq!(got.last_used_at, None);

    assert!(store.find_by_hash(&unknown_hash()).await.unwrap().is_none());
    assert!(store.get(&KeyId::from("key_nope")).await.unwrap().is_none());
}

pub async fn update_changes_only_name_and_scopes<S: KeyStore>(store: &S) {
    use tower_api_key::KeyChanges;
    let t = tag();
    let o = org("update", &t, 1);
    let mut rec = record(&o, "ci", at(0));
    rec.scopes = Scopes::parse(["browser_sessions:create", "browser_sessions:read"]).unwrap();
    rec.expires_at = Some(at(3600));
    store.insert(rec.clone()).await.unwrap();

    let narrower = Scopes::parse(["browser_sessions:read"]).unwrap();
    let got = store
        .update(&rec.id, &KeyChanges::new().scopes(narrower.clone()))
        .await
        .unwrap()
        .expect("the key exists");
    let mut want = rec.clone();
    want.scopes = narrower.clone();
    assert_same("scopes changed", &got, &want);
    let found = store.find_by_hash(&rec.hash).await.unwrap().unwrap();
    assert_same("lookup sees the new scopes", &found.record, &want);

    let got = store
        .update(&rec.id, &KeyChanges::new().name("ci (read only)"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.name(), "ci (read only)");
    assert_eq!(got.scopes, narrower, "a rename keeps the scopes");
    let got = store
        .update(&rec.id, &KeyChanges::new().scopes(Scopes::full_access()))
        .await
        .unwrap()
        .unwrap();
    assert!(got.scopes.is_full_access());
    assert_eq!(
        got.name(),
        "ci (read only)",
        "a scope change keeps the name"
    );
    assert_eq!(got.expires_at, rec.expires_at);
    assert_eq!(got.hash, rec.hash);
    assert!(
        store
            .update(&KeyId::from("key_nope"), &KeyChanges::new().name("x"))
            .await
            .unwrap()
            .is_none()
    );
}

pub async fn duplicates_are_refused<S: KeyStore>(store: &S) {
    let t = tag();
    let o = org("dup", &t, 1);
    let rec = record(&o, "first", at(0));
    store.insert(rec.clone()).await.unwrap();

    let again = store.insert(rec.clone()).await;
    assert!(matches!(again, Err(StoreError::Duplicate)), "{again:?}");

    let mut same_hash = record(&o, "same hash", at(1));
    same_hash.hash = rec.hash;
    let r = store.insert(same_hash).await;
    assert!(matches!(r, Err(StoreError::Duplicate)), "same hash: {r:?}");

    let mut same_id = record(&o, "same id", at(2));
    same_id.id = rec.id.clone();
    let r = store.insert(same_id.clone()).await;
    assert!(matches!(r, Err(StoreError::Duplicate)), "same id: {r:?}");
    assert!(
        store.find_by_hash(&same_id.hash).await.unwrap().is_none(),
        "a refused insert leaves nothing behind"
    );

    let listed = store.list(&o).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_same("original intact", &listed[0], &rec);
}

pub async fn list_is_per_org_newest_first<S: KeyStore>(store: &S) {
    let t = tag();
    let (a, b, empty) = (org("list", &t, 1), org("list", &t, 2), org("list", &t, 3));
    let k1 = record(&a, "one", at(1));
    let k3 = record(&a, "three", at(3));
    let k2 = record(&a, "two", at(2));
    let other = record(&b, "other", at(2));
    for r in [&k1, &k3, &other, &k2] {
        store.insert(r.clone()).await.unwrap();
    }
    let listed = store.list(&a).await.unwrap();
    let names: Vec<&str> = listed.iter().map(|r| r.name()).collect();
    assert_eq!(names, ["three", "two", "one"], "newest first, own org only");
    assert_same("listed record", &listed[0], &k3);
    assert_eq!(store.list(&b).await.unwrap().len(), 1);
    assert!(store.list(&empty).await.unwrap().is_empty());

    // Same creation time: ordered by id, descending (a total, stable order).
    let c = org("list", &t, 4);
    let mut x = record(&c, "x", at(5));
    let mut y = record(&c, "y", at(5));
    x.id = KeyId::from(format!("key_{t}_A"));
    y.id = KeyId::from(format!("key_{t}_b"));
    store.insert(x).await.unwrap();
    store.insert(y).await.unwrap();
    let ids: Vec<String> = store
        .list(&c)
        .await
        .unwrap()
        .iter()
        .map(|r| r.id.to_string())
        .collect();
    assert_eq!(ids, [format!("key_{t}_b"), format!("key_{t}_A")]);
}

pub async fn revoke_is_forward_only_and_permanent<S: KeyStore>(store: &S) {
    let t = tag();
    let o = org("revoke", &t, 1);
    let rec = record(&o, "doomed", at(0));
    let bystander = record(&o, "bystander", at(0));
    store.insert(rec.clone()).await.unwrap();
    store.insert(bystander.clone()).await.unwrap();
    // Warm any cache: the revocation must still be seen.
    assert!(store.find_by_hash(&rec.hash).await.unwrap().is_some());

    let revoked = store
        .revoke(&rec.id, at(10))
        .await
        .unwrap()
        .expect("known key");
    assert_eq!(revoked.revoked_at, Some(at(10)));
    let found = store.find_by_hash(&rec.hash).await.unwrap().unwrap();
    assert_eq!(found.record.revoked_at, Some(at(10)));
    assert!(found.record.is_revoked(at(10)));
    // Not yet revoked before its time, allowing for the clock-skew leeway.
    let before = at(10).saturating_sub(KeyRecord::REVOCATION_LEEWAY + Duration::from_secs(1));
    assert!(!found.record.is_revoked(before));

    let later = store.revoke(&rec.id, at(20)).await.unwrap().unwrap();
    assert_eq!(
        later.revoked_at,
        Some(at(10)),
        "a later revocation changes nothing"
    );
    let earlier = store.revoke(&rec.id, at(5)).await.unwrap().unwrap();
    assert_eq!(
        earlier.revoked_at,
        Some(at(5)),
        "the earliest revocation wins"
    );

    assert!(
        store
            .revoke(&KeyId::from("key_nope"), at(1))
            .await
            .unwrap()
            .is_none()
    );

    // Nothing else un-revokes it.
    store
        .touch_last_used(&[(rec.id.clone(), at(30))])
        .await
        .unwrap();
    store.set_plan(&o, Plan::Paid).await.unwrap();
    assert_eq!(
        store.get(&rec.id).await.unwrap().unwrap().revoked_at,
        Some(at(5))
    );
    assert_eq!(
        store
            .find_by_hash(&rec.hash)
            .await
            .unwrap()
            .unwrap()
            .record
            .revoked_at,
        Some(at(5))
    );
    let other = store.find_by_hash(&bystander.hash).await.unwrap().unwrap();
    assert_eq!(
        other.record.revoked_at, None,
        "only the revoked key changed"
    );
    // The organization's listing sees the revocation too, and the plan set after it.
    let listed = store.list(&o).await.unwrap();
    let revoked_at = |id: &KeyId| listed.iter().find(|r| &r.id == id).unwrap().revoked_at;
    assert_eq!(listed.len(), 2);
    assert_eq!(revoked_at(&rec.id), Some(at(5)));
    assert_eq!(revoked_at(&bystander.id), None);
    assert_eq!(other.plan, Plan::Paid);
}

pub async fn touch_last_used_is_batched_forward_only<S: KeyStore>(store: &S) {
    let t = tag();
    let o = org("touch", &t, 1);
    let k1 = record(&o, "k1", at(0));
    let k2 = record(&o, "k2", at(1));
    let idle = record(&o, "idle", at(2));
    for r in [&k1, &k2, &idle] {
        store.insert(r.clone()).await.unwrap();
    }
    let unknown = KeyId::from(format!("key_{t}_unknown"));

    store.touch_last_used(&[]).await.unwrap();
    store
        .touch_last_used(&[
            (k1.id.clone(), at(10)),
            (k2.id.clone(), at(20)),
            (unknown.clone(), at(30)),
        ])
        .await
        .unwrap();
    let last = |r: Option<KeyRecord>| r.unwrap().last_used_at;
    assert_eq!(last(store.get(&k1.id).await.unwrap()), Some(at(10)));
    assert_eq!(last(store.get(&k2.id).await.unwrap()), Some(at(20)));
    assert_eq!(last(store.get(&idle.id).await.unwrap()), None);
    assert!(
        store.get(&unknown).await.unwrap().is_none(),
        "unknown ids are ignored, not created"
    );

    store
        .touch_last_used(&[(k1.id.clone(), at(5))])
        .await
        .unwrap();
    assert_eq!(
        last(store.get(&k1.id).await.unwrap()),
        Some(at(10)),
        "forward only"
    );

    store
        .touch_last_used(&[(k1.id.clone(), at(15)), (k1.id.clone(), at(12))])
        .await
        .unwrap();
    assert_eq!(
        last(store.get(&k1.id).await.unwrap()),
        Some(at(15)),
        "the latest of a batch wins"
    );

    let listed = store.list(&o).await.unwrap();
    let by_name = |n: &str| listed.iter().find(|r| r.name() == n).unwrap().last_used_at;
    assert_eq!(by_name("k1"), Some(at(15)), "list shows last-used times");
    assert_eq!(by_name("k2"), Some(at(20)));
    assert_eq!(by_name("idle"), None);
}

/// One batch over many keys of one organization, each id twice (later time first): every key
/// gets its latest time, in `get` and in `list`, and the other keys keep theirs.
pub async fn touch_last_used_of_many_keys_of_one_org<S: KeyStore>(store: &S) {
    let t = tag();
    let o = org("touch_many", &t, 1);
    let keys: Vec<KeyRecord> = (0..20)
        .map(|i| record(&o, &format!("k{i:02}"), at(i)))
        .collect();
    for r in &keys {
        store.insert(r.clone()).await.unwrap();
    }
    let (touched, idle) = keys.split_at(15);
    let mut batch: Vec<(KeyId, Timestamp)> = Vec::new();
    for (i, r) in touched.iter().enumerate() {
        batch.push((r.id.clone(), at(100 + i as u64)));
    }
    for (i, r) in touched.iter().enumerate() {
        batch.push((r.id.clone(), at(50 + i as u64)));
    }
    store.touch_last_used(&batch).await.unwrap();

    let listed = store.list(&o).await.unwrap();
    assert_eq!(listed.len(), keys.len());
    for (i, r) in touched.iter().enumerate() {
        let want = Some(at(100 + i as u64));
        let got = listed.iter().find(|l| l.id == r.id).unwrap();
        assert_eq!(got.last_used_at, want, "list: {}", r.name());
        assert_same("list", got, r);
        assert_eq!(
            store.get(&r.id).await.unwrap().unwrap().last_used_at,
            want,
            "get: {}",
            r.name()
        );
    }
    for r in idle {
        let got = listed.iter().find(|l| l.id == r.id).unwrap();
        assert_eq!(got.last_used_at, None, "untouched: {}", r.name());
    }
}

/// A last-used time and a revocation are both kept, in whichever order they come.
pub async fn touch_revoke_touch_keeps_both<S: KeyStore>(store: &S) {
    let t = tag();
    let o = org("touch_revoke", &t, 1);
    let rec = record(&o, "used-then-revoked", at(0));
    store.insert(rec.clone()).await.unwrap();
    // Warm any cache.
    assert!(store.find_by_hash(&rec.hash).await.unwrap().is_some());

    store
        .touch_last_used(&[(rec.id.clone(), at(10))])
        .await
        .unwrap();
    let revoked = store.revoke(&rec.id, at(20)).await.unwrap().unwrap();
    assert_eq!(revoked.revoked_at, Some(at(20)));
    assert_eq!(
        revoked.last_used_at,
        Some(at(10)),
        "a revocation keeps the last-used time"
    );
    store
        .touch_last_used(&[(rec.id.clone(), at(30))])
        .await
        .unwrap();

    let got = store.get(&rec.id).await.unwrap().unwrap();
    assert_eq!(got.revoked_at, Some(at(20)), "get: still revoked");
    assert_eq!(got.last_used_at, Some(at(30)), "get: latest last-used");
    let listed = store.list(&o).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].revoked_at, Some(at(20)), "list: still revoked");
    assert_eq!(
        listed[0].last_used_at,
        Some(at(30)),
        "list: latest last-used"
    );
    let found = store.find_by_hash(&rec.hash).await.unwrap().unwrap();
    assert_eq!(
        found.record.revoked_at,
        Some(at(20)),
        "the request path still sees the revocation"
    );
}

pub async fn plans_default_and_change<S: KeyStore>(store: &S) {
    let t = tag();
    let (o, other, fresh) = (org("plan", &t, 1), org("plan", &t, 2), org("plan", &t, 3));
    let rec = record(&o, "k", at(0));
    let rec_other = record(&other, "k", at(0));
    store.insert(rec.clone()).await.unwrap();
    store.insert(rec_other.clone()).await.unwrap();

    assert_eq!(store.plan(&o).await.unwrap(), Plan::Free);
    assert_eq!(
        store.find_by_hash(&rec.hash).await.unwrap().unwrap().plan,
        Plan::Free
    );

    store.set_plan(&o, Plan::Paid).await.unwrap();
    assert_eq!(store.plan(&o).await.unwrap(), Plan::Paid);
    assert_eq!(
        store.find_by_hash(&rec.hash).await.unwrap().unwrap().plan,
        Plan::Paid,
        "the next lookup carries the new plan"
    );

    let quota = Quota {
        requests: 25_000,
        period: Duration::from_secs(60),
        concurrent_sessions: 500,
    };
    store.set_plan(&o, Plan::Enterprise(quota)).await.unwrap();
    assert_eq!(store.plan(&o).await.unwrap(), Plan::Enterprise(quota));
    assert_eq!(
        store.find_by_hash(&rec.hash).await.unwrap().unwrap().plan,
        Plan::Enterprise(quota)
    );

    assert_eq!(
        store.plan(&other).await.unwrap(),
        Plan::Free,
        "other orgs untouched"
    );
    assert_eq!(
        store
            .find_by_hash(&rec_other.hash)
            .await
            .unwrap()
            .unwrap()
            .plan,
        Plan::Free
    );

    // A plan set before the org has any key applies to keys created later.
    store.set_plan(&fresh, Plan::Paid).await.unwrap();
    let later = record(&fresh, "later", at(1));
    store.insert(later.clone()).await.unwrap();
    assert_eq!(
        store.find_by_hash(&later.hash).await.unwrap().unwrap().plan,
        Plan::Paid
    );

    store.set_plan(&o, Plan::Free).await.unwrap();
    assert_eq!(
        store.plan(&o).await.unwrap(),
        Plan::Free,
        "plans can go down too"
    );
}

fn counts(accepted: i64, rate_limited: i64, scope: i64, session_quota: i64) -> UsageCounts {
    UsageCounts {
        accepted,
        rate_limited,
        scope,
        session_quota,
    }
}

fn delta(org: &OrgId, key: &KeyId, minute: Timestamp, c: UsageCounts) -> UsageDelta {
    UsageDelta {
        org_id: org.clone(),
        key_id: key.clone(),
        minute: Granularity::Minute.bucket(minute),
        counts: c,
    }
}

/// Deltas add to the minute, hour and day buckets; batches add to what is stored (a move out
/// of `accepted` is a negative delta); organizations and ranges are kept apart.
pub async fn usage_adds_up_in_three_granularities<S: KeyStore>(store: &S) {
    let tag = tag();
    let (a, b) = (org("usage", &tag, 1), org("usage", &tag, 2));
    // Key ids sort k1 < k2 by construction.
    let k1 = KeyId::from(format!("key_{tag}_1"));
    let k2 = KeyId::from(format!("key_{tag}_2"));
    let k3 = KeyId::from(format!("key_{tag}_3"));
    // A day boundary, so the day buckets differ: minute m0 of day d0, m1 = m0 + 1 min,
    // m2 = m0 + 2 h (next hour, same day), m3 = next day.
    let d0 = Granularity::Day.bucket(at(0));
    let m0 = Timestamp::from_unix_secs(d0.as_unix_secs() + 10 * 3600 + 5 * 60);
    let m1 = Timestamp::from_unix_secs(m0.as_unix_secs() + 60);
    let m2 = Timestamp::from_unix_secs(m0.as_unix_secs() + 2 * 3600);
    let m3 = Timestamp::from_unix_secs(m0.as_unix_secs() + 86_400);
    store
        .record_usage(&[
            delta(&a, &k1, m0, counts(3, 1, 0, 0)),
            delta(&a, &k1, m1, counts(2, 0, 1, 0)),
            delta(&a, &k2, m0, counts(1, 0, 0, 1)),
            delta(&b, &k3, m0, counts(50, 0, 0, 0)),
        ])
        .await
        .unwrap();
    store
        .record_usage(&[
            delta(&a, &k1, m0, counts(1, 0, 0, 0)),
            delta(&a, &k2, m0, counts(-1, 0, 1, 0)),
            delta(&a, &k1, m2, counts(4, 0, 0, 0)),
            delta(&a, &k1, m3, counts(7, 0, 0, 0)),
        ])
        .await
        .unwrap();
    store.record_usage(&[]).await.unwrap();

    let rows = |g| {
        store.usage(
            &a,
            d0,
            Timestamp::from_unix_secs(d0.as_unix_secs() + 2 * 86_400),
            g,
        )
    };
    let got: Vec<_> = rows(Granularity::Minute)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.key_id, r.bucket, r.counts))
        .collect();
    assert_eq!(
        got,
        vec![
            (k1.clone(), m0, counts(4, 1, 0, 0)),
            (k2.clone(), m0, counts(0, 0, 1, 1)),
            (k1.clone(), m1, counts(2, 0, 1, 0)),
            (k1.clone(), m2, counts(4, 0, 0, 0)),
            (k1.clone(), m3, counts(7, 0, 0, 0)),
        ],
        "minute buckets, by bucket then key"
    );
    let h0 = Granularity::Hour.bucket(m0);
    let h2 = Granularity::Hour.bucket(m2);
    let h3 = Granularity::Hour.bucket(m3);
    let got: Vec<_> = rows(Granularity::Hour)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.key_id, r.bucket, r.counts))
        .collect();
    assert_eq!(
        got,
        vec![
            (k1.clone(), h0, counts(6, 1, 1, 0)),
            (k2.clone(), h0, counts(0, 0, 1, 1)),
            (k1.clone(), h2, counts(4, 0, 0, 0)),
            (k1.clone(), h3, counts(7, 0, 0, 0)),
        ],
        "hour buckets"
    );
    let d3 = Granularity::Day.bucket(m3);
    let got: Vec<_> = rows(Granularity::Day)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.key_id, r.bucket, r.counts))
        .collect();
    assert_eq!(
        got,
        vec![
            (k1.clone(), d0, counts(10, 1, 1, 0)),
            (k2.clone(), d0, counts(0, 0, 1, 1)),
            (k1.clone(), d3, counts(7, 0, 0, 0)),
        ],
        "day buckets"
    );
    // [from, to): the end is excluded, the start included.
    let got = store.usage(&a, m1, m2, Granularity::Minute).await.unwrap();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!((got[0].bucket, got[0].counts), (m1, counts(2, 0, 1, 0)));
    assert!(
        store
            .usage(&a, m1, m1, Granularity::Minute)
            .await
            .unwrap()
            .is_empty()
    );
    // The other organization sees only its own.
    let got = store.usage(&b, d0, d3, Granularity::Day).await.unwrap();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!((&got[0].key_id, got[0].counts), (&k3, counts(50, 0, 0, 0)));
}

/// Pruning removes one granularity's buckets older than the cut-off, and only those.
pub async fn usage_prunes_one_granularity<S: KeyStore>(store: &S) {
    let tag = tag();
    let a = org("prune", &tag, 1);
    let k = KeyId::from(format!("key_{tag}_p"));
    // Far in the past (2001), so no other check's rows are older than the cut-off.
    let old = Timestamp::from_unix_secs(1_000_000_000);
    let cut = Timestamp::from_unix_secs(1_000_000_000 + 86_400 * 3);
    let newer = Timestamp::from_unix_secs(1_000_000_000 + 86_400 * 5);
    store
        .record_usage(&[
            delta(&a, &k, old, counts(1, 0, 0, 0)),
            delta(&a, &k, newer, counts(2, 0, 0, 0)),
        ])
        .await
        .unwrap();
    let pruned = store.prune_usage(Granularity::Minute, cut).await.unwrap();
    assert!(pruned >= 1, "the old minute bucket is deleted: {pruned}");
    let end = Timestamp::from_unix_secs(1_000_000_000 + 86_400 * 10);
    // From the start of the old day, so that the old hour and day buckets are in range.
    let old = Granularity::Day.bucket(old);
    let minutes = store
        .usage(&a, old, end, Granularity::Minute)
        .await
        .unwrap();
    assert_eq!(
        minutes
            .iter()
            .map(|r| r.counts.accepted)
            .collect::<Vec<_>>(),
        vec![2],
        "only the newer minute is left"
    );
    for g in [Granularity::Hour, Granularity::Day] {
        let rows = store.usage(&a, old, end, g).await.unwrap();
        assert_eq!(
            rows.iter().map(|r| r.counts.accepted).collect::<Vec<_>>(),
            vec![1, 2],
            "{g:?} buckets are untouched"
        );
    }
    store.prune_usage(Granularity::Day, end).await.unwrap();
    assert!(
        store
            .usage(&a, old, end, Granularity::Day)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .usage(&a, old, end, Granularity::Hour)
            .await
            .unwrap()
            .len(),
        2
    );
}

/// The audit log: every field round-trips, newest first (greatest id first), `limit` and
/// `before` page through it, and an organization sees only its own entries.
pub async fn audit_log_is_per_org_newest_first_and_pages<S: KeyStore>(store: &S) {
    use tower_api_key::{Actor, AuditAction, AuditEntry, AuditQuery};
    let tag = tag();
    let (a, b) = (org("audit", &tag, 1), org("audit", &tag, 2));
    let key = KeyId::generate().unwrap();
    let actors = [
        Actor::Key(KeyId::from("key_admin")),
        Actor::user("ann@example.com"),
        Actor::System,
    ];
    let mut written = Vec::new();
    for i in 0..5u64 {
        let entry = AuditEntry::new(
            at(i),
            a.clone(),
            actors[i as usize % 3].clone(),
            AuditAction::ALL[i as usize],
            (i % 2 == 0).then(|| key.clone()),
            serde_json::json!({ "n": i, "plan": "paid" }),
        );
        store.append_audit(entry.clone()).await.unwrap();
        written.push(entry);
    }
    let other = AuditEntry::new(
        at(9),
        b.clone(),
        Actor::System,
        AuditAction::PlanChanged,
        None,
        serde_json::json!({}),
    );
    store.append_audit(other.clone()).await.unwrap();

    let newest_first: Vec<AuditEntry> = written.iter().rev().cloned().collect();
    let all = store.audit_log(&a, &AuditQuery::new()).await.unwrap();
    assert_eq!(all, newest_first, "every field, newest first");

    let page1 = store
        .audit_log(&a, &AuditQuery::new().limit(2))
        .await
        .unwrap();
    assert_eq!(page1, newest_first[..2]);
    let page2 = store
        .audit_log(&a, &AuditQuery::new().limit(2).before(page1[1].id.clone()))
        .await
        .unwrap();
    assert_eq!(page2, newest_first[2..4]);
    let page3 = store
        .audit_log(&a, &AuditQuery::new().limit(2).before(page2[1].id.clone()))
        .await
        .unwrap();
    assert_eq!(page3, newest_first[4..]);
    let past_the_end = store
        .audit_log(&a, &AuditQuery::new().before(page3[0].id.clone()))
        .await
        .unwrap();
    assert_eq!(past_the_end, Vec::<AuditEntry>::new());

    assert_eq!(
        store.audit_log(&b, &AuditQuery::new()).await.unwrap(),
        vec![other],
        "another organization sees only its own"
    );
    assert_eq!(
        store
            .audit_log(&org("audit", &tag, 3), &AuditQuery::new())
            .await
            .unwrap(),
        Vec::<AuditEntry>::new()
    );
}
