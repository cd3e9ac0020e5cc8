//! Scope requirements and route tables: pure matching, no tower.

use std::fmt;

use http::Method;

use crate::scopes::{Scope, Scopes};

/// What a route asks of a key's scopes.
///
/// ```
/// use tower_api_key::{Requirement, Scopes};
/// let held = Scopes::parse(["browser_sessions:*"])?;
/// assert!(Requirement::scope("browser_sessions:read").is_met(&held));
/// assert!(Requirement::any_of(["org:billing", "browser_sessions:read"]).is_met(&held));
/// assert!(!Requirement::all_of(["org:billing", "browser_sessions:read"]).is_met(&held));
/// assert!(Requirement::all_of(["org:billing"]).is_met(&Scopes::full_access()));
/// # Ok::<(), tower_api_key::InvalidScope>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Requirement {
    scopes: Box<[Scope]>,
    any: bool,
    described: Box<str>,
}

impl Requirement {
    /// One scope.
    pub fn scope(scope: impl Into<Scope>) -> Self {
        Self::build(std::iter::once(scope.into()), false)
    }

    /// At least one of these scopes.
    pub fn any_of<I>(scopes: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<Scope>,
    {
        Self::build(scopes.into_iter().map(Into::into), true)
    }

    /// Every one of these scopes.
    pub fn all_of<I>(scopes: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<Scope>,
    {
        Self::build(scopes.into_iter().map(Into::into), false)
    }

    fn build(scopes: impl Iterator<Item = Scope>, any: bool) -> Self {
        let scopes: Box<[Scope]> = scopes.collect();
        let described = scopes
            .iter()
            .map(Scope::as_str)
            .collect::<Vec<_>>()
            .join(" ")
            .into_boxed_str();
        Self {
            scopes,
            any,
            described,
        }
    }

    /// Whether a key holding `held` meets this requirement (an empty `held` is full access).
    #[inline]
    pub fn is_met(&self, held: &Scopes) -> bool {
        if held.is_empty() {
            return true;
        }
        if self.any {
            self.scopes.is_empty() || self.scopes.iter().any(|s| held.allows(s))
        } else {
            self.scopes.iter().all(|s| held.allows(s))
        }
    }

    /// The required scopes, space-separated (the RFC 6750 `scope` attribute).
    pub fn describe(&self) -> &str {
        &self.described
    }
}

impl fmt::Debug for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Requirement({}{:?})",
            if self.any { "any of " } else { "" },
            self.described
        )
    }
}

impl From<Scope> for Requirement {
    fn from(s: Scope) -> Self {
        Self::scope(s)
    }
}

/// A scope literal; panics on an invalid literal like [`Scope::from_static`].
impl From<&'static str> for Requirement {
    fn from(s: &'static str) -> Self {
        Self::scope(Scope::from_static(s))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(Box<str>),
    One,
    Rest,
}

#[derive(Clone, Debug)]
struct Pattern(Box<[Segment]>);

impl Pattern {
    fn parse(path: &str) -> Self {
        let segments = path
            .trim_start_matches('/')
            .split('/')
            .map(|seg| {
                if seg == "**" || (seg.starts_with("{*") && seg.ends_with('}')) {
                    Segment::Rest
                } else if seg == "*" || (seg.starts_with('{') && seg.ends_with('}')) {
                    Segment::One
                } else {
                    Segment::Literal(seg.into())
                }
            })
            .collect();
        Self(segments)
    }

    /// Whether `path` matches: its segments (after leading `/`s, split on `/`, as
    /// `str::split`) against the pattern's. Literal segments are compared inline, without
    /// `memcmp` (see [`bytes_eq`](crate::bytes_eq::bytes_eq)): a table is scanned on every
    /// request.
    fn matches(&self, path: &str) -> bool {
        let mut parts = Parts::new(path.as_bytes());
        for seg in self.0.iter() {
            match seg {
                Segment::Rest => return true,
                Segment::One => match parts.next() {
                    Some(p) if !p.is_empty() => {}
                    _ => return false,
                },
                Segment::Literal(lit) => match parts.next() {
                    Some(p) if crate::bytes_eq::bytes_eq(p, lit.as_bytes()) => {}
                    _ => return false,
                },
            }
        }
        parts.next().is_none()
    }
}

/// The segments of a path: `path.trim_start_matches('/').split('/')`, on bytes.
struct Parts<'a> {
    rest: Option<&'a [u8]>,
}

impl<'a> Parts<'a> {
    #[inline]
    fn new(mut path: &'a [u8]) -> Self {
        while let [b'/', tail @ ..] = path {
            path = tail;
        }
        Self { rest: Some(path) }
    }

    #[inline]
    fn next(&mut self) -> Option<&'a [u8]> {
        let rest = self.rest?;
        match rest.iter().position(|&b| b == b'/') {
            Some(i) => {
                self.rest = rest.get(i + 1..);
                rest.get(..i)
            }
            None => {
                self.rest = None;
                Some(rest)
            }
        }
    }
}

#[derive(Clone, Debug)]
struct Rule {
    method: Option<Method>,
    pattern: Pattern,
    requirement: Option<Requirement>,
}

/// What a [`ScopeRules`] table says about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleMatch<'a> {
    /// A rule matched and asks for this requirement.
    Requires(&'a Requirement),
    /// A rule matched and asks for no scope (any authenticated key).
    Authenticated,
    /// No rule matched.
    Unmatched,
}

/// A table of scope rules by HTTP method and path, for stacks without per-route layers (a bare
/// hyper service, a tonic server). The first matching rule wins.
///
/// Path patterns are `/`-separated: a literal segment, `{name}` or `*` for exactly one segment,
/// `{*name}` or `**` for all remaining segments. gRPC methods are matched by their path,
/// `/package.Service/Method`.
///
/// Requests no rule matches are **refused** (403) unless [`allow_unmatched`](Self::allow_unmatched)
/// is set: a route added without a rule fails closed.
///
/// ```
/// use http::Method;
/// use tower_api_key::ScopeRules;
/// use tower_api_key::scope::RuleMatch;
///
/// let rules = ScopeRules::new()
///     .route(Method::POST, "/v1/browsers", "browser_sessions:create")
///     .route(Method::GET, "/v1/browsers/{id}", "browser_sessions:read")
///     .grpc("/sandbox.v1.Sandbox/Exec", "sandbox_sessions:exec")
///     .authenticated(Method::GET, "/v1/whoami");
/// assert!(matches!(rules.check(&Method::GET, "/v1/browsers/b_1"), RuleMatch::Requires(_)));
/// assert_eq!(rules.check(&Method::GET, "/v1/whoami"), RuleMatch::Authenticated);
/// assert_eq!(rules.check(&Method::DELETE, "/v1/browsers/b_1"), RuleMatch::Unmatched);
/// ```
#[derive(Clone, Debug, Default)]
pub struct ScopeRules {
    rules: Vec<Rule>,
    allow_unmatched: bool,
}

impl ScopeRules {
    /// An empty table that refuses every request (add rules).
    pub fn new() -> Self {
        Self::default()
    }

    /// Requests with `method` on a path matching `path` need `requirement`.
    pub fn route(
        mut self,
        method: Method,
        path: &str,
        requirement: impl Into<Requirement>,
    ) -> Self {
        self.rules.push(Rule {
            method: Some(method),
            pattern: Pattern::parse(path),
            requirement: Some(requirement.into()),
        });
        self
    }

    /// Requests with any method on `path` need `requirement`.
    pub fn any_method(mut self, path: &str, requirement: impl Into<Requirement>) -> Self {
        self.rules.push(Rule {
            method: None,
            pattern: Pattern::parse(path),
            requirement: Some(requirement.into()),
        });
        self
    }

    /// Calls of the gRPC method `/package.Service/Method` need `requirement`.
    pub fn grpc(self, method_path: &str, requirement: impl Into<Requirement>) -> Self {
        self.route(Method::POST, method_path, requirement)
    }

    /// Requests with `method` on `path` need only a valid key, no scope.
    pub fn authenticated(mut self, method: Method, path: &str) -> Self {
        self.rules.push(Rule {
            method: Some(method),
            pattern: Pattern::parse(path),
            requirement: None,
        });
        self
    }

    /// Let requests that match no rule through with any valid key (default: refuse them).
    pub fn allow_unmatched(mut self) -> Self {
        self.allow_unmatched = true;
        self
    }

    /// Whether unmatched requests are let through.
    pub fn allows_unmatched(&self) -> bool {
        self.allow_unmatched
    }

    /// The first rule matching `method` and `path`.
    pub fn check(&self, method: &Method, path: &str) -> RuleMatch<'_> {
        for rule in &self.rules {
            if rule.method.as_ref().is_none_or(|m| m == method) && rule.pattern.matches(path) {
                return match &rule.requirement {
                    Some(r) => RuleMatch::Requires(r),
                    None => RuleMatch::Authenticated,
                };
            }
        }
        RuleMatch::Unmatched
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The matcher before it compared bytes inline: the reference for the one in use.
    fn reference_matches(pattern: &Pattern, path: &str) -> bool {
        let mut parts = path.trim_start_matches('/').split('/');
        for seg in pattern.0.iter() {
            match seg {
                Segment::Rest => return true,
                Segment::One => match parts.next() {
                    Some(p) if !p.is_empty() => {}
                    _ => return false,
                },
                Segment::Literal(lit) => {
                    if parts.next() != Some(&**lit) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }

    proptest::proptest! {
        #[test]
        fn path_matching_agrees_with_the_split_reference(
            pattern in "(/(v1|browsers|\\{id\\}|\\*|\\*\\*|\\{\\*rest\\}|)){0,4}",
            path in "/{0,2}((v1|browsers|x|)/?){0,5}",
        ) {
            let p = Pattern::parse(&pattern);
            proptest::prop_assert_eq!(p.matches(&path), reference_matches(&p, &path), "{} {}", pattern, path);
        }
    }

    #[test]
    fn patterns() {
        let p = Pattern::parse("/v1/browsers/{id}");
        assert!(p.matches("/v1/browsers/abc"));
        assert!(!p.matches("/v1/browsers/"));
        assert!(!p.matches("/v1/browsers"));
        assert!(!p.matches("/v1/browsers/abc/exec"));
        let r = Pattern::parse("/v1/{*rest}");
        assert!(r.matches("/v1/a/b/c"));
        assert!(r.matches("/v1/"));
        assert!(!r.matches("/v2/a"));
        assert!(Pattern::parse("/").matches("/"));
        assert!(Pattern::parse("/pkg.S/M").matches("/pkg.S/M"));
    }

    #[test]
    fn first_match_wins_and_methods_filter() {
        let rules = ScopeRules::new()
            .authenticated(Method::GET, "/v1/browsers/mine")
            .route(Method::GET, "/v1/browsers/*", "browser_sessions:read")
            .route(Method::DELETE, "/v1/browsers/*", "browser_sessions:delete");
        assert_eq!(
            rules.check(&Method::GET, "/v1/browsers/mine"),
            RuleMatch::Authenticated
        );
        match rules.check(&Method::DELETE, "/v1/browsers/x") {
            RuleMatch::Requires(r) => assert_eq!(r.describe(), "browser_sessions:delete"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            rules.check(&Method::PUT, "/v1/browsers/x"),
            RuleMatch::Unmatched
        );
    }

    #[test]
    fn requirement_semantics() {
        let held = Scopes::parse(["a:read", "b:*"]).unwrap();
        assert!(Requirement::scope("a:read").is_met(&held));
        assert!(Requirement::scope("b:write").is_met(&held));
        assert!(!Requirement::scope("a:write").is_met(&held));
        assert!(Requirement::all_of(["a:read", "b:x"]).is_met(&held));
        assert!(!Requirement::all_of(["a:read", "c:x"]).is_met(&held));
        assert!(Requirement::any_of(["c:x", "a:read"]).is_met(&held));
        assert_eq!(
            Requirement::any_of(["c:x", "a:read"]).describe(),
            "c:x a:read"
        );
    }
}
