//! The rate-limit header encoding: [`RateLimitInfo`] and the `X-RateLimit-*` fields, plus the
//! IETF draft `RateLimit-Policy` / `RateLimit` fields.
//!
//! Integer values below 10,000 come from a table of digits built at compile time, and the reset
//! time (which changes once a second) is remembered per thread, so an accepted response
//! allocates no header value.

use std::cell::RefCell;

use http::{HeaderMap, HeaderName, HeaderValue};

/// `x-ratelimit-limit`: requests allowed per window.
pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// `x-ratelimit-remaining`: requests left now.
pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// `x-ratelimit-reset`: Unix time, in seconds, at which the allowance is whole again.
pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
/// `ratelimit-policy` (IETF draft-ietf-httpapi-ratelimit-headers).
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `ratelimit` (IETF draft-ietf-httpapi-ratelimit-headers).
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// The rate-limit figures of one decision, as sent in `X-RateLimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitInfo {
    /// Requests allowed per window (`X-RateLimit-Limit`).
    pub limit: u64,
    /// Requests left now (`X-RateLimit-Remaining`).
    pub remaining: u64,
    /// Unix time, in seconds, at which the allowance is whole again (`X-RateLimit-Reset`).
    pub reset: u64,
    /// Whole seconds to wait before retrying, never 0 on a refusal (`Retry-After`).
    pub retry_after: u64,
}

impl RateLimitInfo {
    /// Write `X-RateLimit-Limit`, `-Remaining` and `-Reset`.
    #[inline]
    pub(crate) fn write(&self, headers: &mut HeaderMap) {
        headers.insert(X_RATELIMIT_LIMIT, int_value(self.limit));
        headers.insert(X_RATELIMIT_REMAINING, int_value(self.remaining));
        headers.insert(X_RATELIMIT_RESET, reset_value(self.reset));
    }
}

/// What the IETF draft fields name: the plan's policy, its window, and the time of the decision.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Draft {
    pub(crate) policy: &'static str,
    pub(crate) window_secs: u64,
    pub(crate) now_secs: u64,
}

/// The rate-limit headers an admitted request's response gets (and a refusal after
/// authentication): the decision's figures, and the draft fields if enabled.
#[derive(Clone, Copy, Debug)]
pub struct LimitHeaders {
    pub(crate) info: RateLimitInfo,
    pub(crate) draft: Option<Draft>,
}

impl LimitHeaders {
    /// Write the headers; the draft fields (formatted, rarely on) out of line.
    #[inline]
    pub(crate) fn write(&self, headers: &mut HeaderMap) {
        self.info.write(headers);
        if let Some(d) = &self.draft {
            self.write_draft(d, headers);
        }
    }

    #[inline(never)]
    fn write_draft(&self, d: &Draft, headers: &mut HeaderMap) {
        let policy = format!("\"{}\";q={};w={}", d.policy, self.info.limit, d.window_secs);
        let state = format!(
            "\"{}\";r={};t={}",
            d.policy,
            self.info.remaining,
            self.info.reset.saturating_sub(d.now_secs)
        );
        if let Ok(v) = HeaderValue::from_str(&policy) {
            headers.insert(RATELIMIT_POLICY, v);
        }
        if let Ok(v) = HeaderValue::from_str(&state) {
            headers.insert(RATELIMIT, v);
        }
    }
}

const TABLE_LEN: u64 = 10_000;

/// The length of [`DIGITS`]: 10 one-digit numbers, 90 of two digits, 900 of three, 9,000 of
/// four.
const DIGITS_LEN: usize = 10 + 90 * 2 + 900 * 3 + 9_000 * 4;

/// "0123456789101112…9999": every number below `TABLE_LEN`, concatenated, built at compile
/// time.
static DIGITS: [u8; DIGITS_LEN] = {
    let mut out = [0u8; DIGITS_LEN];
    let (mut n, mut at) = (0u64, 0usize);
    while n < TABLE_LEN {
        let len = span(n).1;
        let (mut i, mut rest) = (len, n);
        while i > 0 {
            i -= 1;
            out[at + i] = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        at += len;
        n += 1;
    }
    out
};

/// [`DIGITS`] as a `str` (checked at compile time: digits only).
static DIGITS_STR: &str = match std::str::from_utf8(&DIGITS) {
    Ok(s) => s,
    Err(_) => panic!("the digit table is ASCII"),
};

/// Where `n` (< `TABLE_LEN`) starts in [`digits`], and its length.
#[inline]
const fn span(n: u64) -> (usize, usize) {
    // 10 one-digit numbers, 90 of two digits, 900 of three, 9,000 of four.
    let (start, first, len) = match n {
        0..=9 => (0, 0, 1),
        10..=99 => (10, 10, 2),
        100..=999 => (190, 100, 3),
        _ => (2890, 1000, 4),
    };
    ((start + (n - first) * len) as usize, len as usize)
}

/// The header value of an integer.
#[inline]
pub(crate) fn int_value(n: u64) -> HeaderValue {
    if n < TABLE_LEN {
        let (at, len) = span(n);
        if let Some(s) = DIGITS_STR.get(at..at + len) {
            return HeaderValue::from_static(s);
        }
    }
    HeaderValue::from(n)
}

thread_local! {
    static LAST_RESET: RefCell<Option<(u64, HeaderValue)>> = const { RefCell::new(None) };
}

/// The value of a Unix time: the same as the thread's previous one most of the time.
#[inline]
fn reset_value(secs: u64) -> HeaderValue {
    LAST_RESET
        .try_with(|cell| {
            let mut last = cell.borrow_mut();
            match &*last {
                Some((s, v)) if *s == secs => v.clone(),
                _ => {
                    let v = int_value(secs);
                    *last = Some((secs, v.clone()));
                    v
                }
            }
        })
        .unwrap_or_else(|_| int_value(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_values_match_formatting() {
        for n in (0..12_000).chain([u64::MAX, 1_700_000_000]) {
            assert_eq!(int_value(n).to_str().unwrap(), n.to_string(), "{n}");
        }
        assert_eq!(DIGITS.len(), 38_890);
        assert!(DIGITS.starts_with(b"0123456789101112") && DIGITS.ends_with(b"99989999"));
    }

    #[test]
    fn reset_cache_follows_the_value() {
        assert_eq!(reset_value(1_700_000_060), "1700000060");
        assert_eq!(reset_value(1_700_000_060), "1700000060");
        assert_eq!(reset_value(1_700_000_061), "1700000061");
        assert_eq!(reset_value(7), "7");
    }

    #[test]
    fn large_values_are_formatted() {
        let values: Vec<_> = (0..2_000u64)
            .map(|i| (i, int_value(1_700_000_000 + i)))
            .collect();
        for (i, v) in values {
            assert_eq!(v.to_str().unwrap(), (1_700_000_000 + i).to_string());
        }
    }

    #[test]
    fn same_headers_as_the_reference_writer() {
        let info = RateLimitInfo {
            limit: 100,
            remaining: 42,
            reset: 1_700_000_060,
            retry_after: 0,
        };
        let (mut a, mut b) = (HeaderMap::new(), HeaderMap::new());
        info.write(&mut a);
        b.insert(X_RATELIMIT_LIMIT, HeaderValue::from(info.limit));
        b.insert(X_RATELIMIT_REMAINING, HeaderValue::from(info.remaining));
        b.insert(X_RATELIMIT_RESET, HeaderValue::from(info.reset));
        assert_eq!(a, b);
    }
}
