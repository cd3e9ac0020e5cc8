//! `Scopes::parse` on arbitrary scope strings (the input as lossy UTF-8, one string a line, at
//! most 64).
//!
//! Property: parsing never panics, and
//! - a single string is accepted exactly when it has the documented shape (up to 128 bytes):
//!   `*`, or `:`-separated non-empty segments of `[A-Za-z0-9_.-]` whose last segment, after at
//!   least one other, may be `*`; an accepted scope displays as the string it was parsed from; a
//!   refused one is named in the error, truncated to 64 characters (then `…`);
//! - a list parses when every string does, else fails naming the first invalid one;
//! - a parsed set is normalised (sorted, without duplicates), holds exactly the strings given,
//!   allows each of them, covers itself, and is full access exactly when empty or holding `*`;
//! - `grants` is as documented: a scope grants itself, `*` grants every scope, `prefix:*` every
//!   scope below `prefix:`, and nothing else; a set allows a scope exactly when one of its
//!   scopes grants it;
//! - it round-trips: its scopes displayed and parsed again give the same set, and its JSON
//!   (an array of the scope strings) deserializes to the same set.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_api_key::{InvalidScope, Scope, Scopes};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let items: Vec<&str> = text.split('\n').take(64).collect();
    for item in &items {
        match Scope::new(item) {
            Ok(scope) => {
                assert!(documented_shape(item), "accepted {item:?}");
                assert_eq!(scope.to_string(), *item);
                assert_eq!(scope.as_str(), *item);
                assert_eq!(item.parse::<Scope>().as_ref(), Ok(&scope));
            }
            Err(InvalidScope(s)) => {
                assert_eq!(s, echoed(item), "the error names the scope, truncated");
                assert!(
                    item.len() > 128 || !documented_shape(item),
                    "refused {item:?}"
                );
            }
        }
    }

    let set = match Scopes::parse(&items) {
        Ok(set) => set,
        Err(InvalidScope(s)) => {
            let first_bad = items.iter().find(|i| Scope::new(i).is_err());
            assert_eq!(
                first_bad.map(|i| echoed(i)),
                Some(s),
                "the error names the first invalid scope"
            );
            return;
        }
    };
    assert!(items.iter().all(|i| Scope::new(i).is_ok()));

    let listed: Vec<&Scope> = set.iter().collect();
    assert!(
        listed.windows(2).all(|w| w[0] < w[1]),
        "sorted and deduplicated: {set:?}"
    );
    assert_eq!(listed.len(), set.len());
    assert!(
        !set.is_empty(),
        "a list of at least one scope parses to a non-empty set"
    );
    for item in &items {
        assert!(listed.iter().any(|s| s.as_str() == *item), "{item:?} kept");
        assert!(set.allows(&Scope::new(item).unwrap()), "{item:?} allowed");
    }
    assert!(
        listed.iter().all(|s| items.contains(&s.as_str())),
        "nothing added"
    );
    assert!(set.covers(&set));
    assert_eq!(
        set.is_full_access(),
        set.is_empty() || listed.iter().any(|s| s.as_str() == "*")
    );

    let valid: Vec<Scope> = items.iter().map(|i| Scope::new(i).unwrap()).collect();
    for required in &valid {
        for held in &valid {
            assert_eq!(
                held.grants(required),
                documented_grant(held.as_str(), required.as_str()),
                "{held:?} grants {required:?}"
            );
        }
        assert_eq!(
            set.allows(required),
            listed.iter().any(|h| h.grants(required))
        );
    }

    // Displayed and parsed again.
    let shown: Vec<String> = set.iter().map(|s| s.to_string()).collect();
    assert_eq!(Scopes::parse(&shown).as_ref(), Ok(&set));
    // Serialized and parsed again.
    let json = serde_json::to_string(&set).expect("scopes serialize");
    let as_strings: Vec<String> = serde_json::from_str(&json).expect("an array of strings");
    assert_eq!(as_strings, shown);
    let back: Scopes = serde_json::from_str(&json).expect("serialized scopes deserialize");
    assert!(back == set, "{json} deserialized to {back:?}, not {set:?}");
});

/// A refused scope as `InvalidScope` documents holding it: the first 64 characters, then `…`
/// when there were more.
fn echoed(s: &str) -> String {
    if s.chars().count() > 64 {
        format!("{}…", s.chars().take(64).collect::<String>())
    } else {
        s.to_owned()
    }
}

/// The scope syntax as the `Scope` docs state it (without the length limit).
fn documented_shape(s: &str) -> bool {
    if s == "*" {
        return true;
    }
    let segments: Vec<&str> = s.split(':').collect();
    let last = segments.len() - 1;
    segments.iter().enumerate().all(|(i, seg)| {
        let plain = !seg.is_empty()
            && seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        plain || (i == last && i > 0 && *seg == "*")
    })
}

/// Whether holding `held` grants `required`, as the `Scope::grants` docs state it.
fn documented_grant(held: &str, required: &str) -> bool {
    held == required
        || held == "*"
        || held.strip_suffix(":*").is_some_and(|stem| {
            required.len() > stem.len() + 1
                && required.starts_with(stem)
                && required.as_bytes()[stem.len()] == b':'
        })
}
