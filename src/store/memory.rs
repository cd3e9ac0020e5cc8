//! The embedded in-memory store.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::future::{Ready, ready};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::audit::{AuditEntry, AuditQuery};
use crate::clock::Timestamp;
use crate::ids::{KeyId, OrgId};
use crate::key::{KeyHash, KeyHashBuilder};
use crate::plan::Plan;

use super::{
    Granularity, KeyChanges, KeyRecord, KeyStore, LookupResult, StoreError, StoredKey, UsageCounts,
    UsageDelta, UsageRow, limits,
};

/// The embedded default [`KeyStore`]: lock-free reads, serialized writes, nothing on disk.
///
/// Lookups on the request path read one lock-free map ([`papaya`]) keyed by the key's hash, with
/// the digest itself as the hash, and return the record together with the organization's plan in
/// one step. Writes (create, revoke, plan changes, last-used times) take a mutex, so the maps
/// always agree. Clones share the same data.
///
/// Records are immutable snapshots: a revocation or a last-used time replaces the key's record
/// in every index with an updated copy, and a request holding the previous snapshot reads it
/// unchanged. A used key costs no more memory than an unused one.
///
/// ```
/// # tokio_test_block_on(async {
/// use tower_api_key::{KeyManager, MemoryStore, NewKey, OrgId};
/// let store = MemoryStore::new();
/// let manager = KeyManager::new(store.clone());
/// let created = manager.create(&OrgId::from("org_1"), NewKey::new("ci")).await?;
/// assert_eq!(manager.list(&OrgId::from("org_1")).await?.len(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(()) }).unwrap();
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f) }
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

/// The request-path map's key: the record itself, hashed and compared by its key hash, so an
/// entry is one pointer and the plan's pointer (16 bytes) rather than a second copy of the digest
/// beside the record's and the plan (64 bytes).
struct ByHash(Arc<KeyRecord>);

impl Hash for ByHash {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash.hash(state);
    }
}

impl PartialEq for ByHash {
    fn eq(&self, other: &Self) -> bool {
        self.0.hash == other.0.hash
    }
}

impl Eq for ByHash {}

impl Borrow<KeyHash> for ByHash {
    #[inline]
    fn borrow(&self) -> &KeyHash {
        &self.0.hash
    }
}

/// The management index: the same record, hashed and compared by its id (one pointer per key,
/// not a copy of the id and of the digest).
struct ById(Arc<KeyRecord>);

impl Hash for ById {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // As `str` hashes, so that lookups by `&str` find it.
        self.0.id.as_str().hash(state);
    }
}

impl PartialEq for ById {
    fn eq(&self, other: &Self) -> bool {
        self.0.id == other.0.id
    }
}

impl Eq for ById {}

impl Borrow<str> for ById {
    fn borrow(&self) -> &str {
        self.0.id.as_str()
    }
}

struct Inner {
    /// Request path: hash → (record, plan). Read lock-free. The plan is shared by all the keys of
    /// an organization (one allocation per organization with a plan, one for the default).
    by_hash: papaya::HashMap<ByHash, Arc<Plan>, KeyHashBuilder>,
    /// Everything else, for management: behind one mutex that also serializes writes.
    admin: Mutex<Admin>,
    default_plan: Arc<Plan>,
    /// Usage buckets, by organization, granularity, start and key: written once per flush,
    /// behind a mutex of its own so that neither the request path nor management waits on it.
    usage: Mutex<UsageBuckets>,
    /// The audit log, per organization, oldest first, the last [`MemoryStore::AUDIT_KEPT`]
    /// entries each.
    audit: Mutex<HashMap<OrgId, VecDeque<AuditEntry>>>,
}

/// Usage buckets of a [`MemoryStore`], ordered so that one organization's range is one scan.
type UsageBuckets = BTreeMap<(OrgId, Granularity, Timestamp, KeyId), UsageCounts>;

/// Written under the mutex: `by_id`, `by_org` and `by_hash` always hold the same record `Arc`
/// per key.
#[derive(Default)]
struct Admin {
    by_id: HashSet<ById>,
    by_org: HashMap<OrgId, Vec<Arc<KeyRecord>>>,
    plans: HashMap<OrgId, Arc<Plan>>,
}

impl Admin {
    /// Replace `old` by `new` in its organization's list.
    fn replace_in_org(&mut self, old: &Arc<KeyRecord>, new: &Arc<KeyRecord>) {
        if let Some(slot) = self
            .by_org
            .get_mut(&old.org_id)
            .and_then(|list| list.iter_mut().find(|r| Arc::ptr_eq(r, old)))
        {
            *slot = new.clone();
        }
    }

    /// Put the updated records of one organization into its list, each in place of the record
    /// with its id. For the same id more than once, the last one wins.
    fn replace_all_in_org(&mut self, org: &OrgId, updated: &[Arc<KeyRecord>]) {
        /// Up to this many records, scan the list once per record; beyond, scan it once and look
        /// every entry up in a map of the updates (an organization may have many keys).
        const SCAN_PER_RECORD: usize = 8;
        let Some(list) = self.by_org.get_mut(org) else {
            return;
        };
        if updated.len() <= SCAN_PER_RECORD {
            for new in updated {
                if let Some(slot) = list.iter_mut().find(|r| r.id == new.id) {
                    *slot = new.clone();
                }
            }
        } else {
            let by_id: HashMap<&KeyId, &Arc<KeyRecord>> =
                updated.iter().map(|r| (&r.id, r)).collect();
            for slot in list.iter_mut() {
                if let Some(new) = by_id.get(&slot.id) {
                    *slot = Arc::clone(new);
                }
            }
        }
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("keys", &self.inner.by_hash.len())
            .field("default_plan", &*self.inner.default_plan)
            .finish()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store; organizations without a plan are on [`Plan::Free`].
    pub fn new() -> Self {
        Self::with_default_plan(Plan::Free)
    }

    /// The audit entries kept per organization: the newest 1,000 (memory stays bounded; a
    /// durable log is the SQL stores' job).
    pub const AUDIT_KEPT: usize = 1_000;

    /// An empty store whose organizations default to `plan`.
    pub fn with_default_plan(plan: Plan) -> Self {
        Self {
            inner: Arc::new(Inner {
                // Blocking resizes: writes are rare and serialized anyway, and an incremental
                // resize leaves lookups searching two tables (and both tables allocated) until
                // enough later writes finish it.
                by_hash: papaya::HashMap::builder()
                    .hasher(KeyHashBuilder)
                    .resize_mode(papaya::ResizeMode::Blocking)
                    .build(),
                admin: Mutex::new(Admin::default()),
                default_plan: Arc::new(plan),
                usage: Mutex::new(BTreeMap::new()),
                audit: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Pre-size the request-path map for `additional` more keys.
    pub fn reserve(&self, additional: usize) {
        self.inner.by_hash.pin().reserve(additional);
    }

    /// Number of keys stored (revoked ones included).
    pub fn len(&self) -> usize {
        self.inner.by_hash.len()
    }

    /// Whether the store holds no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn admin(&self) -> MutexGuard<'_, Admin> {
        // A panic while holding the lock cannot leave the maps half-written in a way that matters
        // more than refusing service, so recover the guard instead of propagating the poison.
        self.inner
            .admin
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Hand what the writes above retired (replaced entries, the tables a resize outgrew) to
    /// the reclaimer now rather than after a batch of 32: with few writes, a resize's old tables
    /// would otherwise stay allocated indefinitely (about 19 bytes per key at 1M keys).
    fn reclaim(&self) {
        use papaya::Guard;
        self.inner.by_hash.guard().flush();
    }

    fn plan_of(&self, admin: &Admin, org: &OrgId) -> Arc<Plan> {
        admin
            .plans
            .get(org)
            .unwrap_or(&self.inner.default_plan)
            .clone()
    }

    fn insert_sync(&self, record: KeyRecord) -> Result<(), StoreError> {
        limits::check_record(&record)?;
        let mut admin = self.admin();
        {
            let by_hash = self.inner.by_hash.pin();
            if admin.by_id.contains(record.id.as_str()) || by_hash.contains_key(&record.hash) {
                return Err(StoreError::Duplicate);
            }
            let plan = self.plan_of(&admin, &record.org_id);
            let record = Arc::new(record);
            admin
                .by_org
                .entry(record.org_id.clone())
                .or_default()
                .push(record.clone());
            admin.by_id.insert(ById(record.clone()));
            by_hash.insert(ByHash(record), plan);
        }
        self.reclaim();
        Ok(())
    }

    fn get_sync(&self, id: &KeyId) -> Option<KeyRecord> {
        let admin = self.admin();
        admin.by_id.get(id.as_str()).map(|r| KeyRecord::clone(&r.0))
    }

    fn list_sync(&self, org: &OrgId) -> Vec<KeyRecord> {
        let admin = self.admin();
        let mut out: Vec<KeyRecord> = admin
            .by_org
            .get(org)
            .into_iter()
            .flatten()
            .map(|r| KeyRecord::clone(r))
            .collect();
        out.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
        out
    }

    fn revoke_sync(&self, id: &KeyId, at: Timestamp) -> Option<KeyRecord> {
        let mut admin = self.admin();
        let current = admin.by_id.get(id.as_str())?.0.clone();
        let mut record = KeyRecord::clone(&current);
        match record.revoked_at {
            Some(t) if t <= at => {}
            _ => {
                record.revoked_at = Some(at);
                self.replace(&mut admin, &current, Arc::new(record.clone()));
            }
        }
        drop(admin);
        Some(record)
    }

    fn usage_buckets(&self) -> MutexGuard<'_, UsageBuckets> {
        // Each write is one map operation: a panic cannot leave the buckets half-updated.
        self.inner
            .usage
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Apply `changes` to a key by replacing its record with an updated copy, as a revocation does.
    fn update_sync(&self, id: &KeyId, changes: &KeyChanges) -> Option<KeyRecord> {
        let mut admin = self.admin();
        let current = admin.by_id.get(id.as_str())?.0.clone();
        let record = changes.apply(&current);
        self.replace(&mut admin, &current, Arc::new(record.clone()));
        drop(admin);
        Some(record)
    }

    /// Mark and return the reminders due (see [`KeyStore::claim_expiry_reminders`]), under the
    /// write mutex, so two callers never claim the same key.
    fn claim_reminders_sync(
        &self,
        now: Timestamp,
        until: Timestamp,
        limit: usize,
    ) -> Vec<KeyRecord> {
        let mut admin = self.admin();
        let due: Vec<Arc<KeyRecord>> = admin
            .by_id
            .iter()
            .filter(|r| {
                let r = &r.0;
                r.revoked_at.is_none()
                    && r.expiry_reminded_at().is_none()
                    && r.expires_at.is_some_and(|t| t > now && t <= until)
            })
            .take(limit)
            .map(|r| r.0.clone())
            .collect();
        let mut claimed = Vec::with_capacity(due.len());
        for current in due {
            let mut record = KeyRecord::clone(&current);
            record.set_expiry_reminded_at(Some(now));
            self.replace(&mut admin, &current, Arc::new(record.clone()));
            claimed.push(record);
        }
        claimed
    }

    /// Put `updated` in place of `current` in every index (the lookup map keeps the plan it
    /// had), under the write mutex `admin` guards; then reclaim the old snapshot.
    fn replace(&self, admin: &mut Admin, current: &Arc<KeyRecord>, updated: Arc<KeyRecord>) {
        {
            let by_hash = self.inner.by_hash.pin();
            let plan = by_hash
                .get(&updated.hash)
                .cloned()
                .unwrap_or_else(|| self.plan_of(admin, &updated.org_id));
            by_hash.insert(ByHash(updated.clone()), plan);
        }
        admin.replace_in_org(current, &updated);
        admin.by_id.replace(ById(updated));
        self.reclaim();
    }

    /// Raise the last-used times of a batch, forward only, by replacing each record that moves
    /// with an updated copy, as a revocation does.
    ///
    /// The copy carries the old snapshot's usage mark (a clone of its slot), so requests reading
    /// the new snapshot in the same granule do not queue it again; requests still holding the old
    /// snapshot mark that one, and the recorder writes its marks by key id, so they reach the
    /// new record on the next flush. The batch is applied in chunks, each under the write mutex
    /// and followed by a reclamation, so that a large flush neither holds off management calls
    /// for long nor keeps a second copy of every record it replaced allocated until the end.
    fn touch_sync(&self, batch: &[(KeyId, Timestamp)]) {
        const CHUNK: usize = 4096;
        for chunk in batch.chunks(CHUNK) {
            {
                let mut admin = self.admin();
                let by_hash = self.inner.by_hash.pin();
                let mut by_org: HashMap<OrgId, Vec<Arc<KeyRecord>>> = HashMap::new();
                for (id, t) in chunk {
                    let Some(current) = admin.by_id.get(id.as_str()) else {
                        continue;
                    };
                    if current.0.last_used_at.is_some_and(|old| old >= *t) {
                        continue;
                    }
                    let mut record = KeyRecord::clone(&current.0);
                    record.last_used_at = Some(*t);
                    let updated = Arc::new(record);
                    let plan = by_hash
                        .get(&updated.hash)
                        .cloned()
                        .unwrap_or_else(|| self.plan_of(&admin, &updated.org_id));
                    by_hash.insert(ByHash(updated.clone()), plan);
                    admin.by_id.replace(ById(updated.clone()));
                    by_org
                        .entry(updated.org_id.clone())
                        .or_default()
                        .push(updated);
                }
                for (org, updated) in &by_org {
                    admin.replace_all_in_org(org, updated);
                }
            }
            self.reclaim();
        }
    }

    fn set_plan_sync(&self, org: &OrgId, plan: Plan) {
        let mut admin = self.admin();
        let plan = Arc::new(plan);
        admin.plans.insert(org.clone(), plan.clone());
        {
            let by_hash = self.inner.by_hash.pin();
            for r in admin.by_org.get(org).into_iter().flatten() {
                by_hash.insert(ByHash(r.clone()), plan.clone());
            }
        }
        self.reclaim();
    }
}

impl KeyStore for MemoryStore {
    type Lookup = Ready<LookupResult>;

    #[inline]
    fn find_by_hash(&self, hash: &KeyHash) -> Self::Lookup {
        let by_hash = self.inner.by_hash.pin();
        ready(Ok(by_hash.get_key_value(hash).map(|(k, plan)| StoredKey {
            record: k.0.clone(),
            plan: **plan,
        })))
    }

    async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
        self.insert_sync(record)
    }

    async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        Ok(self.get_sync(id))
    }

    async fn list(&self, org: &OrgId) -> Result<Vec<KeyRecord>, StoreError> {
        Ok(self.list_sync(org))
    }

    async fn revoke(&self, id: &KeyId, at: Timestamp) -> Result<Option<KeyRecord>, StoreError> {
        Ok(self.revoke_sync(id, at))
    }

    async fn update(
        &self,
        id: &KeyId,
        changes: &KeyChanges,
    ) -> Result<Option<KeyRecord>, StoreError> {
        limits::check_changes(changes)?;
        Ok(self.update_sync(id, changes))
    }

    async fn touch_last_used(&self, batch: &[(KeyId, Timestamp)]) -> Result<(), StoreError> {
        self.touch_sync(batch);
        Ok(())
    }

    async fn record_usage(&self, batch: &[UsageDelta]) -> Result<(), StoreError> {
        let mut usage = self.usage_buckets();
        for delta in batch {
            for g in Granularity::ALL {
                let key = (
                    delta.org_id.clone(),
                    g,
                    g.bucket(delta.minute),
                    delta.key_id.clone(),
                );
                *usage.entry(key).or_default() += delta.counts;
            }
        }
        Ok(())
    }

    async fn usage(
        &self,
        org: &OrgId,
        from: Timestamp,
        to: Timestamp,
        granularity: Granularity,
    ) -> Result<Vec<UsageRow>, StoreError> {
        if from >= to {
            return Ok(Vec::new());
        }
        let usage = self.usage_buckets();
        let lo = (org.clone(), granularity, from, KeyId::from(""));
        let rows = usage
            .range(lo..)
            .take_while(|((o, g, t, _), _)| o == org && *g == granularity && *t < to)
            .map(|((_, _, t, k), c)| UsageRow {
                key_id: k.clone(),
                bucket: *t,
                counts: *c,
            })
            .collect();
        Ok(rows)
    }

    async fn prune_usage(
        &self,
        granularity: Granularity,
        before: Timestamp,
    ) -> Result<u64, StoreError> {
        let mut usage = self.usage_buckets();
        let n = usage.len();
        usage.retain(|(_, g, t, _), _| *g != granularity || *t >= before);
        Ok((n - usage.len()) as u64)
    }

    async fn set_plan(&self, org: &OrgId, plan: Plan) -> Result<(), StoreError> {
        self.set_plan_sync(org, plan);
        Ok(())
    }

    async fn plan(&self, org: &OrgId) -> Result<Plan, StoreError> {
        Ok(self
            .admin()
            .plans
            .get(org)
            .map_or(*self.inner.default_plan, |p| **p))
    }

    async fn claim_expiry_reminders(
        &self,
        now: Timestamp,
        until: Timestamp,
        limit: usize,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        Ok(self.claim_reminders_sync(now, until, limit))
    }

    async fn append_audit(&self, entry: AuditEntry) -> Result<(), StoreError> {
        // The log is appended to whole: a poisoned lock still holds a consistent one.
        let mut audit = self
            .inner
            .audit
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let log = audit.entry(entry.org_id.clone()).or_default();
        if log.len() >= Self::AUDIT_KEPT {
            log.pop_front();
        }
        // Ids sort by time: keep the log ordered even if an entry arrives late.
        let at = log.partition_point(|e| e.id < entry.id);
        log.insert(at, entry);
        Ok(())
    }

    async fn audit_log(
        &self,
        org: &OrgId,
        query: &AuditQuery,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let audit = self
            .inner
            .audit
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(audit.get(org).map_or_else(Vec::new, |log| {
            log.iter()
                .rev()
                .filter(|e| query.admits(e))
                .take(query.limit)
                .cloned()
                .collect()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_audit_log_keeps_the_newest_entries_per_org() {
        use crate::audit::{Actor, AuditAction};
        let store = MemoryStore::new();
        let org = OrgId::from("org_a");
        let mut ids = Vec::new();
        block_on(async {
            for i in 0..(MemoryStore::AUDIT_KEPT as u64 + 5) {
                let e = AuditEntry::new(
                    Timestamp::from_unix_secs(i),
                    org.clone(),
                    Actor::System,
                    AuditAction::KeyCreated,
                    None,
                    serde_json::json!({}),
                );
                ids.push(e.id.clone());
                store.append_audit(e).await.unwrap();
            }
            let log = store
                .audit_log(&org, &AuditQuery::new().limit(AuditQuery::MAX_LIMIT))
                .await
                .unwrap();
            assert_eq!(log[0].id, *ids.last().unwrap(), "newest first");
            let kept = store.inner.audit.lock().unwrap();
            assert_eq!(kept[&org].len(), MemoryStore::AUDIT_KEPT);
            assert_eq!(kept[&org][0].id, ids[5], "the five oldest were dropped");
        });
    }
    use crate::scopes::Scopes;

    fn record(org: &str, i: usize) -> KeyRecord {
        let id = format!("key_{org}_{i}");
        KeyRecord::new(
            KeyId::from(id.as_str()),
            OrgId::from(org),
            "n".into(),
            KeyHash::of(&id),
            "h".into(),
            Scopes::full_access(),
            Arc::from("live"),
            Timestamp::from_unix_secs(i as u64),
        )
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// Every index holds the same snapshot of each key, with the organization's plan.
    fn assert_indexes_agree(store: &MemoryStore) {
        let admin = store.admin();
        let by_hash = store.inner.by_hash.pin();
        assert_eq!(by_hash.len(), admin.by_id.len());
        let mut in_orgs = 0;
        for (org, list) in &admin.by_org {
            for r in list {
                in_orgs += 1;
                let (k, plan) = by_hash.get_key_value(&r.hash).unwrap();
                assert!(
                    Arc::ptr_eq(&k.0, r),
                    "by_hash holds the org list's snapshot"
                );
                let by_id = admin.by_id.get(r.id.as_str()).unwrap();
                assert!(
                    Arc::ptr_eq(&by_id.0, r),
                    "by_id holds the org list's snapshot"
                );
                assert_eq!(**plan, *store.plan_of(&admin, org));
            }
        }
        assert_eq!(in_orgs, admin.by_id.len());
    }

    #[test]
    fn touching_replaces_the_snapshot_in_every_index_and_keeps_the_plan() {
        let store = MemoryStore::new();
        block_on(async {
            // One organization touched a few keys at a time (the per-record scan), one with many
            // keys in one batch (the single pass), ids repeated, and an organization with a plan.
            for i in 0..30 {
                store.insert(record("big", i)).await.unwrap();
            }
            for i in 0..3 {
                store.insert(record("small", i)).await.unwrap();
            }
            store
                .set_plan(&OrgId::from("small"), Plan::Paid)
                .await
                .unwrap();
            let t = Timestamp::from_unix_secs;
            let mut batch: Vec<(KeyId, Timestamp)> = (0..30)
                .map(|i| (KeyId::from(format!("key_big_{i}").as_str()), t(1000 + i)))
                .collect();
            batch.push((KeyId::from("key_big_0"), t(999)));
            batch.push((KeyId::from("key_small_1"), t(500)));
            batch.push((KeyId::from("key_nope"), t(500)));
            store.touch_last_used(&batch).await.unwrap();
            assert_indexes_agree(&store);

            for i in 0..30u64 {
                let r = record("big", i as usize);
                let found = store.find_by_hash(&r.hash).await.unwrap().unwrap();
                assert_eq!(found.record.last_used_at, Some(t(1000 + i)));
                assert_eq!(found.plan, Plan::Free);
            }
            let small = store
                .find_by_hash(&record("small", 1).hash)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(small.record.last_used_at, Some(t(500)));
            assert_eq!(small.plan, Plan::Paid, "the plan entry is kept");
            let untouched = store
                .find_by_hash(&record("small", 0).hash)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(untouched.record.last_used_at, None);

            // Older times change nothing, not even the snapshot.
            let before = store
                .find_by_hash(&record("small", 1).hash)
                .await
                .unwrap()
                .unwrap();
            store
                .touch_last_used(&[(KeyId::from("key_small_1"), t(400))])
                .await
                .unwrap();
            let after = store
                .find_by_hash(&record("small", 1).hash)
                .await
                .unwrap()
                .unwrap();
            assert!(Arc::ptr_eq(&before.record, &after.record));
            assert_eq!(store.len(), 33);
        });
    }
}
