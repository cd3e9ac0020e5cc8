//! `ScopeRules` tables and lookups built from arbitrary text, checked against the rules as the
//! `ScopeRules` docs state them.
//!
//! Input (lossy UTF-8), one item a line: a line `--` ends the table; before it, each line is a
//! rule `METHOD PATTERN` (method `*`: any method; a leading `!`: `authenticated`, no scope), or
//! `allow_unmatched`; after it, each line is a lookup `METHOD PATH`. Rule `i` requires the scope
//! `r<i>`, so the rule that answered is known. Lines with an invalid method are skipped.
//!
//! Property: `check` never panics, is deterministic (the same answer twice, and from a clone of
//! the table), and agrees with the documented semantics: the first rule whose method filter
//! (a method, or any for `any_method`) and pattern match wins, else `Unmatched`; a pattern is
//! `/`-separated segments (leading `/`s of pattern and path ignored) where a literal matches
//! itself, `{name}` or `*` exactly one non-empty segment, and `{*name}` or `**` all remaining
//! segments, none included. `allows_unmatched` reports the flag set, and never changes `check`.
#![no_main]

use http::Method;
use libfuzzer_sys::fuzz_target;
use tower_api_key::scope::RuleMatch;
use tower_api_key::{Requirement, Scope, ScopeRules};

const MAX_ITEMS: usize = 64;

/// A rule as written in the input.
struct Rule {
    method: Option<Method>,
    pattern: String,
    authenticated: bool,
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let mut rules = Vec::new();
    let mut allow_unmatched = false;
    let mut table = ScopeRules::new();
    for line in lines.by_ref().take(MAX_ITEMS) {
        if line == "--" {
            break;
        }
        if line == "allow_unmatched" {
            allow_unmatched = true;
            table = table.allow_unmatched();
            continue;
        }
        let (authenticated, line) = match line.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        let (method, pattern) = line.split_once(' ').unwrap_or((line, ""));
        let method = match method {
            "*" => None,
            m => match Method::from_bytes(m.as_bytes()) {
                Ok(m) => Some(m),
                Err(_) => continue,
            },
        };
        let requirement = Scope::new(&format!("r{}", rules.len())).expect("a valid scope");
        table = match (&method, authenticated) {
            (Some(m), true) => table.authenticated(m.clone(), pattern),
            (Some(m), false) => table.route(m.clone(), pattern, requirement),
            (None, _) => table.any_method(pattern, requirement),
        };
        // `authenticated` needs a method: `!* PATTERN` is an `any_method` rule with a scope.
        let authenticated = authenticated && method.is_some();
        rules.push(Rule {
            method,
            pattern: pattern.to_owned(),
            authenticated,
        });
    }
    assert_eq!(table.allows_unmatched(), allow_unmatched);
    let copy = table.clone();

    for line in lines.take(MAX_ITEMS) {
        let (method, path) = line.split_once(' ').unwrap_or((line, ""));
        let Ok(method) = Method::from_bytes(method.as_bytes()) else {
            continue;
        };
        let got = table.check(&method, path);
        assert_eq!(got, table.check(&method, path), "check is deterministic");
        assert_eq!(got, copy.check(&method, path), "a clone answers alike");
        let expected = rules.iter().position(|r| {
            r.method.as_ref().is_none_or(|m| *m == method) && matches(&r.pattern, path)
        });
        match (expected, got) {
            (None, RuleMatch::Unmatched) => {}
            (Some(i), RuleMatch::Authenticated) if rules[i].authenticated => {}
            (Some(i), RuleMatch::Requires(r)) if !rules[i].authenticated => {
                let want = Requirement::scope(Scope::new(&format!("r{i}")).unwrap());
                assert_eq!(r, &want, "{method} {path:?}: rule {i} should answer");
            }
            (expected, got) => {
                panic!("{method} {path:?}: expected rule {expected:?}, got {got:?}")
            }
        }
    }
});

#[derive(Debug, PartialEq)]
enum Seg<'a> {
    Literal(&'a str),
    One,
    Rest,
}

fn segments(s: &str) -> Vec<&str> {
    s.trim_start_matches('/').split('/').collect()
}

fn classify(seg: &str) -> Seg<'_> {
    let braced = seg.len() >= 2 && seg.starts_with('{') && seg.ends_with('}');
    if seg == "**" || (braced && seg[1..].starts_with('*')) {
        Seg::Rest
    } else if seg == "*" || braced {
        Seg::One
    } else {
        Seg::Literal(seg)
    }
}

/// The documented pattern match, segment by segment.
fn matches(pattern: &str, path: &str) -> bool {
    let pattern: Vec<Seg> = segments(pattern).into_iter().map(classify).collect();
    fn go(pattern: &[Seg], path: &[&str]) -> bool {
        match (pattern.split_first(), path.split_first()) {
            (None, None) => true,
            (None, Some(_)) => false,
            (Some((Seg::Rest, _)), _) => true,
            (Some(_), None) => false,
            (Some((Seg::One, p)), Some((s, rest))) => !s.is_empty() && go(p, rest),
            (Some((Seg::Literal(l), p)), Some((s, rest))) => l == s && go(p, rest),
        }
    }
    go(&pattern, &segments(path))
}
