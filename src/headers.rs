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
/// `ratelimit-policy` (IETF draft-ietf-httpapi-ratelimit-headers-12): every policy.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `ratelimit` (IETF draft-ietf-httpapi-ratelimit-headers-12): what is left of each policy.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// The rate-limit figures of one decision, as sent in `X-RateLimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
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

/// The IETF fields of one response, rendered (draft-ietf-httpapi-ratelimit-headers-12):
/// `RateLimit-Policy` and `RateLimit`.
#[derive(Clone, Debug)]
pub(crate) struct DraftFields {
    policy: HeaderValue,
    state: HeaderValue,
}

/// One policy as the IETF fields show it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DraftItem<'a> {
    /// The policy's name: `[A-Za-z0-9_.:-]`, so a Structured Field string without escapes.
    pub(crate) name: &'a str,
    /// `q`: the quota.
    pub(crate) quota: u64,
    /// `w`: the window in whole seconds, if the policy has one.
    pub(crate) window: Option<u64>,
    /// `qu`: the quota unit when it is not the default `requests`.
    pub(crate) unit: Option<&'static str>,
    /// `r` and `t` for the `RateLimit` field: the quota left and the seconds it describes;
    /// `None` for a policy not decided per request (sessions), which `RateLimit` leaves out.
    pub(crate) state: Option<(u64, u64)>,
}

impl DraftFields {
    /// Render both fields: a Structured Field List of Items each (a String naming the
    /// policy, with the parameters `q`, `qu`, `w` and `r`, `t`). `None` if nothing renders.
    pub(crate) fn render(items: &[DraftItem<'_>]) -> Option<Box<Self>> {
        use std::fmt::Write as _;
        let (mut policy, mut state) = (String::new(), String::new());
        for item in items {
            let sep = if policy.is_empty() { "" } else { ", " };
            let _ = write!(policy, "{sep}\"{}\";q={}", item.name, item.quota);
            if let Some(unit) = item.unit {
                let _ = write!(policy, ";qu=\"{unit}\"");
            }
            if let Some(w) = item.window {
                let _ = write!(policy, ";w={}", w.max(1));
            }
            if let Some((r, t)) = item.state {
                let sep = if state.is_empty() { "" } else { ", " };
                let _ = write!(state, "{sep}\"{}\";r={r};t={t}", item.name);
            }
        }
        Some(Box::new(Self {
            policy: HeaderValue::from_str(&policy).ok()?,
            state: HeaderValue::from_str(&state).ok()?,
        }))
    }

    fn write(&self, headers: &mut HeaderMap) {
        headers.insert(RATELIMIT_POLICY, self.policy.clone());
        if !self.state.is_empty() {
            headers.insert(RATELIMIT, self.state.clone());
        }
    }
}

/// What to run if the inner service answers with a server error: give the request's cells
/// back to the limiter (set only when the layer refunds server errors).
pub(crate) struct Refund(pub(crate) Box<dyn FnOnce() + Send + Sync>);

impl std::fmt::Debug for Refund {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Refund")
    }
}

/// The rate-limit headers an admitted request's response gets (and a refusal after
/// authentication): the deciding policy's figures, and the IETF fields if enabled.
#[derive(Debug)]
pub struct LimitHeaders {
    /// `None` for a response that only carries a [`Refund`] (credits spent by a layer that
    /// sends no rate-limit figures).
    pub(crate) info: Option<RateLimitInfo>,
    pub(crate) draft: Option<Box<DraftFields>>,
    pub(crate) refund: Option<Refund>,
}

impl LimitHeaders {
    /// Write the headers; the IETF fields (rendered already, rarely on) out of line.
    #[inline]
    pub(crate) fn write(&self, headers: &mut HeaderMap) {
        if let Some(info) = &self.info {
            info.write(headers);
        }
        if let Some(d) = &self.draft {
            d.write(headers);
        }
    }

    /// Only a refund, no headers.
    pub(crate) fn refund_only(refund: Refund) -> Self {
        Self {
            info: None,
            draft: None,
            refund: Some(refund),
        }
    }

    /// The inner service answered `status`: refund the request if it is a server error and
    /// the layer asked for it.
    #[inline]
    pub(crate) fn answered(&mut self, status: http::StatusCode) {
        if status.is_server_error() {
            if let Some(refund) = self.refund.take() {
                (refund.0)();
            }
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
