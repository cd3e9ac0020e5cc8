//! The embedded in-memory store.

use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::{Ready, ready};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::clock::Timestamp;
use crate::key::{KeyHash, KeyHashBuilder};
use crate::principal::{KeyId, OrgId, Plan};

use super::{KeyRecord, KeyStore, LookupResult, StoreError, StoredKey};

/// The embedded default [`KeyStore`]: lock-free reads, serialized writes, nothing on disk.
///
/// Lookups on the request path read one lock-free map ([`papaya`]) keyed by the key's hash, with
/// the digest itself as the hash, and return the record together with the organization's plan in
/// one step. Writes (create, revoke, plan changes) take a mutex, so the maps always agree.
/// Clones share the same data.
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
    /// Last-used times, kept apart so records stay immutable snapshots.
    last_used: papaya::HashMap<KeyId, Timestamp>,
    /// Everything else, for management: behind one mutex that also serializes writes.
    admin: Mutex<Admin>,
    default_plan: Arc<Plan>,
}

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
                last_used: papaya::HashMap::new(),
                admin: Mutex::new(Admin::default()),
                default_plan: Arc::new(plan),
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

    fn with_last_used(&self, record: &KeyRecord) -> KeyRecord {
        let mut r = record.clone();
        if let Some(t) = self.inner.last_used.pin().get(&r.id) {
            r.last_used_at = Some(r.last_used_at.map_or(*t, |old| old.max(*t)));
        }
        r
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
        admin
            .by_id
            .get(id.as_str())
            .map(|r| self.with_last_used(&r.0))
    }

    fn list_sync(&self, org: &OrgId) -> Vec<KeyRecord> {
        let admin = self.admin();
        let mut out: Vec<KeyRecord> = admin
            .by_org
            .get(org)
            .into_iter()
            .flatten()
            .map(|r| self.with_last_used(r))
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
                let updated = Arc::new(record.clone());
                {
                    let by_hash = self.inner.by_hash.pin();
                    let plan = by_hash
                        .get(&record.hash)
                        .cloned()
                        .unwrap_or_else(|| self.plan_of(&admin, &record.org_id));
                    by_hash.insert(ByHash(updated.clone()), plan);
                }
                admin.replace_in_org(&current, &updated);
                admin.by_id.replace(ById(updated));
                self.reclaim();
            }
        }
        drop(admin);
        Some(self.with_last_used(&record))
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

    async fn touch_last_used(&self, batch: &[(KeyId, Timestamp)]) -> Result<(), StoreError> {
        let known: Vec<&(KeyId, Timestamp)> = {
            let admin = self.admin();
            batch
                .iter()
                .filter(|(id, _)| admin.by_id.contains(id.as_str()))
                .collect()
        };
        let last_used = self.inner.last_used.pin();
        for (id, t) in known {
            last_used.update_or_insert(id.clone(), |old| (*old).max(*t), *t);
        }
        Ok(())
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
}
