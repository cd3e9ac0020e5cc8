//! Permissions: [`Scope`] and [`Scopes`] (none listed = full access).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A scope string was not valid. Holds the scope as given, truncated to 64
/// characters (then `…`), so that the error names it without echoing a huge value whole.
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
            Err(InvalidScope(truncate_for_echo(s)))
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

/// How much of an invalid scope an error shows, in characters (then `…`): enough to find it,
/// never a whole (possibly huge or hostile) value.
pub const ECHO_CHARS: usize = 64;

/// `s` as an error may show it: at most [`ECHO_CHARS`] characters, then `…`.
fn truncate_for_echo(s: &str) -> String {
    match s.char_indices().nth(ECHO_CHARS) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
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

/// The scopes a key holds. **Empty means full access.**
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
#[derive(Clone, PartialEq, Eq, Default, Serialize)]
#[serde(transparent)]
pub struct Scopes(Arc<[Scope]>);

/// Read as [`Scopes::parse`] reads: sorted and without duplicates, so equal sets compare equal
/// however they were written.
impl<'de> Deserialize<'de> for Scopes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::<Scope>::deserialize(d).map(Self::from_iter)
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_scope_is_named_truncated_never_whole() {
        let long = format!("bad scope {}", "x".repeat(1000));
        let err = Scope::new(&long).unwrap_err();
        assert_eq!(err.0, format!("{}…", &long[..ECHO_CHARS]));
        assert!(!err.to_string().contains(&long));
        assert_eq!(Scope::new("a b").unwrap_err().0, "a b");
    }

    fn s(x: &str) -> Scope {
        Scope::new(x).unwrap()
    }

    #[test]
    fn json_scopes_are_normalised_as_parsed_ones() {
        let read: Scopes = serde_json::from_str(r#"["org:billing","a:b","a:b"]"#).unwrap();
        assert_eq!(read, Scopes::parse(["a:b", "org:billing"]).unwrap());
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
}
