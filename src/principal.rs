//! Who a request is: [`Principal`], read from the request's extensions.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::clock::Timestamp;
use crate::ids::{KeyId, OrgId};
use crate::plan::Plan;
use crate::scopes::{Scope, Scopes};
use crate::store::{KeyRecord, Metadata, UsageOutcome, move_accepted};

/// The authenticated caller, placed in the request's extensions by
/// [`ApiKeyAuth`](crate::ApiKeyAuth).
///
/// Cheap to clone (one `Arc`). Read it in axum with the `Principal` extractor (feature `axum`),
/// in tonic with `request.extensions().get::<Principal>()`, and in plain `http` the same way.
pub struct Principal {
    record: Arc<KeyRecord>,
    plan: Plan,
    /// Whether a usage meter counted this request `accepted` (when its key was marked), so
    /// that a refusal after that moves the count rather than adding a second one.
    counted: AtomicBool,
}

impl Clone for Principal {
    fn clone(&self) -> Self {
        Self {
            record: self.record.clone(),
            plan: self.plan,
            counted: AtomicBool::new(self.counted.load(Ordering::Relaxed)),
        }
    }
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Principal")
            .field("key_id", &self.record.id)
            .field("org_id", &self.record.org_id)
            .field("scopes", &self.record.scopes)
            .field("plan", &self.plan)
            .field("environment", &&*self.record.environment)
            .finish()
    }
}

impl Principal {
    /// A principal for a key record and its organization's plan.
    pub fn new(record: Arc<KeyRecord>, plan: Plan) -> Self {
        Self {
            record,
            plan,
            counted: AtomicBool::new(false),
        }
    }

    /// Note that a usage meter counted this request `accepted`.
    #[inline]
    pub(crate) fn set_counted(&self) {
        self.counted.store(true, Ordering::Relaxed);
    }

    /// This request, counted `accepted`, was refused after all (scope, session quota): move its
    /// count to `outcome`. Once per request; nothing if it was not counted.
    #[cold]
    pub(crate) fn refused_after_accept(&self, outcome: UsageOutcome) {
        if self.counted.swap(false, Ordering::Relaxed) {
            move_accepted(&self.record, outcome);
        }
    }

    /// The key's public id.
    pub fn key_id(&self) -> &KeyId {
        &self.record.id
    }

    /// The organization the key belongs to.
    pub fn org_id(&self) -> &OrgId {
        &self.record.org_id
    }

    /// The key's scopes (empty = full access).
    pub fn scopes(&self) -> &Scopes {
        &self.record.scopes
    }

    /// Whether this key may do what `required` names.
    #[inline]
    pub fn allows(&self, required: &Scope) -> bool {
        self.record.scopes.allows(required)
    }

    /// The organization's plan at the time of the request.
    pub fn plan(&self) -> Plan {
        self.plan
    }

    /// The environment of the key's format (`live`, `test`, …).
    pub fn environment(&self) -> &str {
        &self.record.environment
    }

    /// When the key expires, if it does.
    pub fn expires_at(&self) -> Option<Timestamp> {
        self.record.expires_at
    }

    /// The key's metadata, as set on create or update: read from the record the request was
    /// authenticated with, no second lookup.
    ///
    /// ```
    /// # fn handler(principal: tower_api_key::Principal) {
    /// let customer = principal
    ///     .metadata()
    ///     .and_then(|m| m.get("customer_id"))
    ///     .and_then(|v| v.as_str());
    /// # let _ = customer; }
    /// ```
    pub fn metadata(&self) -> Option<&Metadata> {
        self.record.metadata()
    }

    /// The key's stored record (never contains the secret).
    pub fn record(&self) -> &Arc<KeyRecord> {
        &self.record
    }
}
