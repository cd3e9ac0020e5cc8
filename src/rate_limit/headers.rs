//! Integer header values without an allocation per response.
//!
//! `HeaderValue::from(u64)` formats into a fresh heap buffer: ~50 ns, three times per response.
//! Small numbers (limits and remaining counts up to 9,999) come from one table of digits built
//! at compile time (39 KB in the binary) as `'static` values. Larger ones (Unix times, enterprise quotas) are
//! formatted into a per-thread 4 KB chunk that each value shares by reference count, so one
//! allocation serves a few hundred values; the reset time, which changes about once a second,
//! is also remembered per thread.

use std::cell::RefCell;

use bytes::BytesMut;
use http::{HeaderMap, HeaderValue};

use crate::reject::{RateLimitInfo, X_RATELIMIT_LIMIT, X_RATELIMIT_REMAINING, X_RATELIMIT_RESET};

const TABLE_LEN: u64 = 10_000;

/// The length of [`DIGITS`]: 10 one-digit numbers, 90 of two digits, 900 of three, 9,000 of
/// four.
const DIGITS_LEN: usize = 10 + 90 * 2 + 900 * 3 + 9_000 * 4;

/// "0123456789101112…9999": every number below `TABLE_LEN`, concatenated, built at compile
/// time. (Built at run time behind a `OnceLock`, each value paid a call and a check of the lock,
/// and slicing a `str` added char-boundary checks: ~30 instructions of ~70 per value.)
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
    arena_value(n)
}

const CHUNK: usize = 4096;

thread_local! {
    static ARENA: RefCell<BytesMut> = RefCell::new(BytesMut::new());
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

/// `n` in decimal, into a buffer; returns the digits.
fn format_u64(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[at..]
}

/// An integer header value sharing the thread's chunk.
fn arena_value(n: u64) -> HeaderValue {
    let mut buf = [0u8; 20];
    let digits = format_u64(n, &mut buf);
    ARENA
        .try_with(|arena| {
            let mut arena = arena.borrow_mut();
            if arena.capacity() - arena.len() < digits.len() {
                *arena = BytesMut::with_capacity(CHUNK);
            }
            arena.extend_from_slice(digits);
            HeaderValue::from_maybe_shared(arena.split().freeze()).ok()
        })
        .ok()
        .flatten()
        .unwrap_or_else(|| HeaderValue::from(n))
}

/// Write `X-RateLimit-Limit`, `-Remaining` and `-Reset` without allocating per value (the body
/// of [`RateLimitInfo::write_headers`]).
#[inline]
pub(crate) fn write_info(info: &RateLimitInfo, headers: &mut HeaderMap) {
    headers.insert(X_RATELIMIT_LIMIT, int_value(info.limit));
    headers.insert(X_RATELIMIT_REMAINING, int_value(info.remaining));
    headers.insert(X_RATELIMIT_RESET, reset_value(info.reset));
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
    fn arena_values_survive_chunk_changes() {
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
        write_info(&info, &mut a);
        b.insert(X_RATELIMIT_LIMIT, HeaderValue::from(info.limit));
        b.insert(X_RATELIMIT_REMAINING, HeaderValue::from(info.remaining));
        b.insert(X_RATELIMIT_RESET, HeaderValue::from(info.reset));
        assert_eq!(a, b);
    }
}
