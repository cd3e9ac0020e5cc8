//! The brute-force guard of [`ApiKeyAuthLayer::invalid_key_limit`](super::ApiKeyAuthLayer::invalid_key_limit):
//! invalid-key attempts counted per client address with the crate's GCRA; past the limit the
//! address is blocked (429 `too_many_invalid_keys`) until its allowance refills one attempt,
//! valid keys included.
//!
//! Bounds: the attempts live in an [`AddrRateLimit`] (IPv4 per address, IPv6 per `/64`), whose
//! entries disappear once idle (allowance whole again, at most `per` after the last attempt) by
//! the limiter's sweep; besides, at most [`MAX_ADDRESSES`] addresses are tracked at once: when
//! the table is full after a sweep (at most one a second), attempts from new addresses are not
//! counted (they still get 401; an address already blocked stays blocked). The blocked
//! addresses are a second map, filled only when a block starts and pruned of ended blocks at
//! the same time, so it never holds more entries than the first.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::clock::Timestamp;
use crate::rate_limit::{AddrRateLimit, client_of};

/// At most this many client addresses are tracked at once.
pub(crate) const MAX_ADDRESSES: usize = 100_000;

type Hasher = foldhash::fast::RandomState;

/// Per-address invalid-key counts and blocks.
pub(crate) struct InvalidKeyGuard {
    attempts: AddrRateLimit,
    /// Bucketed address → end of its block, Unix ns.
    blocked: papaya::HashMap<IpAddr, u64, Hasher>,
    /// The latest end of any block, Unix ns: while the clock is past it, no address is blocked
    /// and an accepted key costs one atomic load.
    blocked_until: AtomicU64,
    /// Unix ns of the last sweep of a full table: at most one a second, so a flood of new
    /// addresses cannot make every attempt walk the table.
    swept_at: AtomicU64,
}

/// What an invalid attempt led to.
pub(crate) enum Attempt {
    /// Counted (or not counted: table full); answer the usual 401.
    Counted,
    /// Over the limit: answer 429. `new_block` is set on the attempt that started the block.
    Blocked {
        /// Seconds until the address may try again.
        retry_after: u64,
        /// This attempt started the block.
        new_block: bool,
    },
}

impl InvalidKeyGuard {
    pub(crate) fn new(attempts: u32, per: Duration) -> Self {
        Self {
            attempts: AddrRateLimit::new(attempts, per),
            blocked: papaya::HashMap::builder().hasher(Hasher::default()).build(),
            blocked_until: AtomicU64::new(0),
            swept_at: AtomicU64::new(0),
        }
    }

    /// Attempts admitted per window before the block.
    pub(crate) fn limit(&self) -> u64 {
        self.attempts.gcra().limit()
    }

    /// An accepted key from `ip` (read lazily) at `now`: the seconds left of the address's
    /// block, if it is blocked.
    #[inline]
    pub(crate) fn blocked(
        &self,
        ip: impl FnOnce() -> Option<IpAddr>,
        now: Timestamp,
    ) -> Option<u64> {
        if now.as_unix_nanos() >= self.blocked_until.load(Ordering::Relaxed) {
            return None;
        }
        self.blocked_slow(ip()?, now)
    }

    #[cold]
    #[inline(never)]
    fn blocked_slow(&self, ip: IpAddr, now: Timestamp) -> Option<u64> {
        let until = *self.blocked.pin().get(&client_of(ip))?;
        let now = now.as_unix_nanos();
        (until > now).then(|| (until - now).div_ceil(1_000_000_000).max(1))
    }

    /// Count an invalid attempt from `ip` at `now`.
    pub(crate) fn attempt(&self, ip: IpAddr, now: Timestamp) -> Attempt {
        let limiter = self.attempts.limiter();
        if limiter.len() >= MAX_ADDRESSES {
            let last = self.swept_at.load(Ordering::Relaxed);
            let now_ns = now.as_unix_nanos();
            if now_ns.saturating_sub(last) >= 1_000_000_000
                && self
                    .swept_at
                    .compare_exchange(last, now_ns, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                limiter.sweep(now);
                self.prune(now);
            }
            if limiter.len() >= MAX_ADDRESSES {
                // An address blocked already stays blocked; others are not counted.
                if let Some(retry_after) = self.blocked_slow(ip, now) {
                    return Attempt::Blocked {
                        retry_after,
                        new_block: false,
                    };
                }
                tracing::debug!("invalid-key guard table full; attempt not counted");
                return Attempt::Counted;
            }
        }
        let decision = self.attempts.check_at(ip, now);
        if decision.allowed {
            return Attempt::Counted;
        }
        let retry_after = decision.info.retry_after.max(1);
        let until = now
            .saturating_add(Duration::from_secs(retry_after))
            .as_unix_nanos();
        let key = client_of(ip);
        let blocked = self.blocked.pin();
        let prev = blocked.insert(key, until).copied();
        let new_block = prev.is_none_or(|end| end <= now.as_unix_nanos());
        self.blocked_until.fetch_max(until, Ordering::Relaxed);
        if new_block && blocked.len() > 1 {
            drop(blocked);
            self.prune(now);
        }
        Attempt::Blocked {
            retry_after,
            new_block,
        }
    }

    /// Forget the blocks that ended.
    fn prune(&self, now: Timestamp) {
        let now = now.as_unix_nanos();
        self.blocked.pin().retain(|_, until| *until > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: u64) -> Timestamp {
        Timestamp::from_unix_secs(1_700_000_000 + secs)
    }

    #[test]
    fn the_attempt_past_the_limit_starts_one_block() {
        let guard = InvalidKeyGuard::new(2, Duration::from_secs(60));
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        assert!(matches!(guard.attempt(ip, t(0)), Attempt::Counted));
        assert!(matches!(guard.attempt(ip, t(0)), Attempt::Counted));
        assert!(matches!(
            guard.attempt(ip, t(0)),
            Attempt::Blocked {
                retry_after: 30,
                new_block: true
            }
        ));
        assert!(matches!(
            guard.attempt(ip, t(1)),
            Attempt::Blocked {
                retry_after: 29,
                new_block: false
            }
        ));
        assert_eq!(guard.blocked(|| Some(ip), t(1)), Some(29));
        assert_eq!(guard.blocked(|| Some(ip), t(30)), None);
    }

    #[test]
    fn a_full_table_counts_no_new_address_but_keeps_blocks_until_a_sweep_frees_it() {
        let guard = InvalidKeyGuard::new(1, Duration::from_secs(60));
        let blocked: IpAddr = "203.0.113.7".parse().unwrap();
        assert!(matches!(guard.attempt(blocked, t(0)), Attempt::Counted));
        assert!(matches!(
            guard.attempt(blocked, t(0)),
            Attempt::Blocked { .. }
        ));
        for i in 1..MAX_ADDRESSES as u32 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            assert!(matches!(guard.attempt(ip, t(0)), Attempt::Counted));
        }
        assert_eq!(guard.attempts.limiter().len(), MAX_ADDRESSES);
        let new: IpAddr = "198.51.100.1".parse().unwrap();
        for _ in 0..3 {
            assert!(matches!(guard.attempt(new, t(1)), Attempt::Counted));
        }
        assert!(matches!(
            guard.attempt(blocked, t(1)),
            Attempt::Blocked {
                new_block: false,
                ..
            }
        ));
        // A minute later every entry is idle: the sweep empties the table.
        assert!(matches!(guard.attempt(new, t(61)), Attempt::Counted));
        assert!(matches!(
            guard.attempt(new, t(61)),
            Attempt::Blocked {
                new_block: true,
                ..
            }
        ));
    }

    #[test]
    fn ipv6_addresses_of_one_64_are_one_client() {
        let guard = InvalidKeyGuard::new(1, Duration::from_secs(60));
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        assert!(matches!(guard.attempt(a, t(0)), Attempt::Counted));
        assert!(matches!(guard.attempt(b, t(0)), Attempt::Blocked { .. }));
        assert!(guard.blocked(|| Some(a), t(0)).is_some());
    }
}
