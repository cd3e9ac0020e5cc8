//! Who a request is: [`Principal`], its [`Scopes`], its organization and [`Plan`].

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::store::KeyRecord;

macro_rules! string_id {
    ($(#[$m:meta])* $name:ident($inner:ty)) => {
        $(#[$m])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name($inner);

        impl $name {
            /// The identifier as a string.
            #[inline]
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(self.as_str(), f)
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(<$inner>::from(s))
            }
        }
        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(<$inner>::from(s))
            }
        }
        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                self.as_str()
            }
        }
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                self.as_str()
            }
        }
    };
}

string_id!(
    /// An organization: the tenant that owns keys, data and a rate-limit plan.
    ///
    /// Reference-counted: the many keys and requests of one organization share one string.
    OrgId(Arc<str>)
);

impl OrgId {
    /// Wrap an identifier.
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        Self(id.into())
    }
}

string_id!(
    /// The public identifier of a key (`key_…`): safe to log and show, unlike the key itself.
    ///
    /// Held inline, without an allocation, up to 24 bytes (generated ids are 24): 24 bytes in a
    /// record instead of a pointer and a 40-byte allocation. Longer ids are heap-allocated.
    KeyId(CompactString)
);

impl KeyId {
    /// Wrap an identifier.
    pub fn new(id: impl AsRef<str>) -> Self {
        Self(CompactString::new(id))
    }

    /// A fresh random identifier, `key_` + 20 base62 characters.
    pub fn generate() -> Result<Self, crate::key::RngError> {
        let mut id = String::with_capacity(24);
        id.push_str("key_");
        crate::key::push_random_alphanumerics(&mut id, 20)?;
        Ok(Self::from(id))
    }
}

/// A scope string was not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid scope {0:?}: use `resource:action` with [A-Za-z0-9_.-] segments, `resource:*`, or `*`"
)]
pub struct InvalidScope(pub String);

/// One permission, e.g. `browser_sessions:create`.
///
/// A scope is `:`-separated segments of `[A-Za-z0-9_.-]`; the last segment may be `*`, which
/// grants every scope below it (`browser_sessions:*`), and `*` alone grants everything.
///
/// ```
/// use tower_api_key::Scope;
/// let create: Scope = "browser_sessions:create".parse()?;
/// let all: Scope = "browser_sessions:*".parse()?;
/// assert!(all.grants(&create));
/// assert!(!create.grants(&all));
/// assert!("browser sessions".parse::<Scope>().is_err());
/// # Ok::<(), tower_api_key::InvalidScope>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope(Arc<str>);

impl Scope {
    /// Parse a scope.
    pub fn new(s: &str) -> Result<Self, InvalidScope> {
        if is_valid_scope(s) {
            Ok(Self(Arc::from(s)))
        } else {
            Err(InvalidScope(s.to_owned()))
        }
    }

    /// A scope from a string constant.
    ///
    /// # Panics
    ///
    /// If `s` is not a valid scope: meant for literals in route configuration, like
    /// `http::HeaderValue::from_static`. Use [`Scope::new`] for anything read at run time.
    pub fn from_static(s: &'static str) -> Self {
        match Self::new(s) {
            Ok(scope) => scope,
            Err(e) => panic!("{e}"),
        }
    }

    /// The scope as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether holding `self` grants `required`: equal, `*`, or a `prefix:*` wildcard covering it.
    #[inline]
    pub fn grants(&self, required: &Scope) -> bool {
        grants(&self.0, &required.0)
    }

    /// Whether this scope ends in a wildcard.
    pub fn is_wildcard(&self) -> bool {
        self.0.ends_with('*')
    }
}

#[inline]
fn grants(held: &str, required: &str) -> bool {
    use crate::bytes_eq::{bytes_eq, starts_with};
    if bytes_eq(held.as_bytes(), required.as_bytes()) {
        return true;
    }
    match held.strip_suffix('*') {
        // `*` alone, or `resource:*` where required starts with `resource:`.
        Some(stem) => {
            required.len() > stem.len() && starts_with(required.as_bytes(), stem.as_bytes())
        }
        None => false,
    }
}

fn is_valid_scope(s: &str) -> bool {
    if s == "*" {
        return true;
    }
    if s.is_empty() || s.len() > 128 {
        return false;
    }
    let mut segments = s.split(':').peekable();
    let mut count = 0;
    while let Some(seg) = segments.next() {
        count += 1;
        let last = segments.peek().is_none();
        let ok = !seg.is_empty()
            && (seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
                || (last && count > 1 && seg == "*"));
        if !ok {
            return false;
        }
    }
    true
}

impl FromStr for Scope {
    type Err = InvalidScope;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A scope from a string literal, as [`Scope::from_static`].
///
/// # Panics
///
/// If the literal is not a valid scope (a configuration error, caught by the first test that
/// builds the route table). Use [`Scope::new`] for strings read at run time.
impl From<&'static str> for Scope {
    fn from(s: &'static str) -> Self {
        Scope::from_static(s)
    }
}

impl TryFrom<String> for Scope {
    type Error = InvalidScope;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(&s)
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Scope {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Scope::new(&s).map_err(serde::de::Error::custom)
    }
}

/// The scopes a key holds. **Empty means full access**, as the seeds specify.
///
/// ```
/// use tower_api_key::{Scope, Scopes};
/// let read = Scope::from_static("browser_sessions:read");
/// assert!(Scopes::full_access().allows(&read));
/// let some = Scopes::parse(["browser_sessions:create", "browser_sessions:read"])?;
/// assert!(some.allows(&read));
/// assert!(!some.allows(&Scope::from_static("org:billing")));
/// # Ok::<(), tower_api_key::InvalidScope>(())
/// ```
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Scopes(Arc<[Scope]>);

impl Scopes {
    /// No scopes: full access.
    pub fn full_access() -> Self {
        Self::default()
    }

    /// Parse scope strings; duplicates are removed and the order normalised.
    pub fn parse<I, T>(scopes: I) -> Result<Self, InvalidScope>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        let v: Result<Vec<Scope>, _> = scopes.into_iter().map(|s| Scope::new(s.as_ref())).collect();
        Ok(Self::from_iter(v?))
    }

    /// Whether these scopes mean full access (none set, or `*` held).
    pub fn is_full_access(&self) -> bool {
        self.0.is_empty() || self.0.iter().any(|s| &*s.0 == "*")
    }

    /// Whether a key holding these scopes may do what `required` names.
    #[inline]
    pub fn allows(&self, required: &Scope) -> bool {
        self.0.is_empty() || self.0.iter().any(|h| h.grants(required))
    }

    /// Whether every scope in `other` is allowed by these: a key holding `self` may mint a key
    /// holding `other`. A full-access `other` is only covered by full access.
    pub fn covers(&self, other: &Scopes) -> bool {
        if self.is_full_access() {
            return true;
        }
        if other.is_full_access() {
            return false;
        }
        other.0.iter().all(|s| self.allows(s))
    }

    /// The scopes.
    pub fn iter(&self) -> impl Iterator<Item = &Scope> {
        self.0.iter()
    }

    /// How many scopes are listed (0 = full access).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no scope is listed (full access).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<Scope> for Scopes {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        let mut v: Vec<Scope> = iter.into_iter().collect();
        v.sort();
        v.dedup();
        Self(v.into())
    }
}

impl fmt::Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("Scopes(full access)")
        } else {
            f.debug_list().entries(self.0.iter()).finish()
        }
    }
}

/// A request rate and a concurrent-session allowance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Quota {
    /// Requests allowed per `period` (also the burst).
    pub requests: u32,
    /// The window `requests` refers to.
    #[serde(with = "secs")]
    pub period: Duration,
    /// Sessions an organization may hold open at once.
    pub concurrent_sessions: u32,
}

mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

impl Quota {
    /// `requests` per minute and `concurrent_sessions` open at once.
    pub const fn per_minute(requests: u32, concurrent_sessions: u32) -> Self {
        Self {
            requests,
            period: Duration::from_secs(60),
            concurrent_sessions,
        }
    }
}

/// An organization's plan, which sets its [`Quota`].
///
/// | plan | requests | concurrent sessions |
/// |---|---|---|
/// | Free | 100 / minute | 10 |
/// | Paid | 1,000 / minute | 100 |
/// | Enterprise | custom | custom |
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Plan {
    /// 100 requests per minute, 10 concurrent sessions.
    #[default]
    Free,
    /// 1,000 requests per minute, 100 concurrent sessions.
    Paid,
    /// A negotiated quota.
    Enterprise(Quota),
}

impl Plan {
    /// The quota this plan grants.
    pub const fn quota(&self) -> Quota {
        match self {
            Plan::Free => Quota::per_minute(100, 10),
            Plan::Paid => Quota::per_minute(1_000, 100),
            Plan::Enterprise(q) => *q,
        }
    }

    /// `free`, `paid` or `enterprise`.
    pub const fn name(&self) -> &'static str {
        match self {
            Plan::Free => "free",
            Plan::Paid => "paid",
            Plan::Enterprise(_) => "enterprise",
        }
    }
}

/// The authenticated caller, placed in the request's extensions by
/// [`ApiKeyAuth`](crate::ApiKeyAuth).
///
/// Cheap to clone (one `Arc`). Read it in axum with the `Principal` extractor (feature `axum`),
/// in tonic with `request.extensions().get::<Principal>()`, and in plain `http` the same way.
#[derive(Clone)]
pub struct Principal {
    record: Arc<KeyRecord>,
    plan: Plan,
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
        Self { record, plan }
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

    /// The key's stored record (never contains the secret).
    pub fn record(&self) -> &Arc<KeyRecord> {
        &self.record
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> Scope {
        Scope::new(x).unwrap()
    }

    #[test]
    fn scope_syntax() {
        for ok in [
            "browser_sessions:create",
            "org:billing",
            "browser_sessions:*",
            "*",
            "a.b-c:d",
            "admin",
        ] {
            assert!(Scope::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", ":", "a:", ":a", "a b", "a:*:b", "*:read", "a:**", "a:b*",
        ] {
            assert!(Scope::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn wildcards_grant_below_their_stem_only() {
        assert!(s("browser_sessions:*").grants(&s("browser_sessions:delete")));
        assert!(!s("browser_sessions:*").grants(&s("browser_sessionsX:delete")));
        assert!(!s("browser_sessions:*").grants(&s("sandbox_sessions:read")));
        assert!(s("*").grants(&s("org:manage")));
        assert!(!s("org:billing").grants(&s("org:manage")));
    }

    #[test]
    fn empty_scopes_are_full_access() {
        assert!(Scopes::full_access().allows(&s("members:remove")));
        assert!(Scopes::full_access().is_full_access());
        let star = Scopes::parse(["*"]).unwrap();
        assert!(star.is_full_access());
    }

    #[test]
    fn covers_is_subset_with_wildcards() {
        let mine = Scopes::parse(["browser_sessions:*", "org:billing"]).unwrap();
        assert!(mine.covers(&Scopes::parse(["browser_sessions:read"]).unwrap()));
        assert!(mine.covers(&Scopes::parse(["browser_sessions:*", "org:billing"]).unwrap()));
        assert!(!mine.covers(&Scopes::parse(["org:manage"]).unwrap()));
        assert!(!mine.covers(&Scopes::full_access()));
        assert!(Scopes::full_access().covers(&Scopes::full_access()));
    }

    #[test]
    fn plans_match_the_seeds() {
        assert_eq!(Plan::Free.quota(), Quota::per_minute(100, 10));
        assert_eq!(Plan::Paid.quota(), Quota::per_minute(1000, 100));
        let e = Plan::Enterprise(Quota::per_minute(50_000, 2_000));
        assert_eq!(e.quota().requests, 50_000);
        assert_eq!(serde_json::to_string(&Plan::Paid).unwrap(), "\"paid\"");
        let p: Plan = serde_json::from_str(
            r#"{"enterprise":{"requests":5,"period":1,"concurrent_sessions":2}}"#,
        )
        .unwrap();
        assert_eq!(
            p.quota(),
            Quota {
                requests: 5,
                period: Duration::from_secs(1),
                concurrent_sessions: 2
            }
        );
    }

    #[test]
    fn key_ids_are_prefixed_and_unique() {
        let a = KeyId::generate().unwrap();
        let b = KeyId::generate().unwrap();
        assert!(a.as_str().starts_with("key_"));
        assert_eq!(a.as_str().len(), 24);
        assert_ne!(a, b);
    }
}
