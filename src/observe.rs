//! [`Observer`]: what the layers report about the rare transitions of the request path — an
//! organization's use crossing a level of its quota, an address starting to be blocked for
//! guessing keys, a revoked or expired key presented — and [`Observe`], the handle the layers
//! take with `.observe(..)`.
//!
//! The request path only does arithmetic on figures it already has (the remaining cells of a
//! decision it just made); an observer is called on a crossing or a refusal, never on an
//! ordinary admitted request. With feature `events`,
//! [`Events::signals`](crate::events::Events::signals) is the observer that turns these into
//! events (and webhooks); implement [`Observer`] for anything else.
//!
//! ```
//! use std::net::IpAddr;
//! use tower_api_key::observe::{Observe, Observer, UsageCrossing};
//! use tower_api_key::{ApiKeyAuth, MemoryStore, OrgRateLimit};
//!
//! struct Log;
//! impl Observer for Log {
//!     fn usage_crossed(&self, c: &UsageCrossing<'_>) {
//!         println!("{} at {} % of {}", c.org, c.percent, c.policy);
//!     }
//! }
//!
//! let observe = Observe::new(Log);
//! let stack = ApiKeyAuth::new(MemoryStore::new())
//!     .observe(observe.clone())
//!     .rate_limit(OrgRateLimit::new().observe(observe));
//! # let _ = stack;
//! ```

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::Timestamp;
use crate::ids::{KeyId, OrgId};

/// What a quota counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum UsageUnit {
    /// Requests per window (a request policy).
    Requests,
    /// Concurrent sessions (a session quota).
    Sessions,
}

impl UsageUnit {
    /// `requests` or `sessions`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Requests => "requests",
            Self::Sessions => "sessions",
        }
    }
}

/// An organization's use of one quota reached `percent` % of its limit with the decision just
/// made (it was below before it).
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct UsageCrossing<'a> {
    /// The organization.
    pub org: &'a OrgId,
    /// The policy's name (the plan's name for a single request policy, `sessions` for a
    /// session quota).
    pub policy: &'a str,
    /// What is counted.
    pub unit: UsageUnit,
    /// The level crossed, in percent.
    pub percent: u8,
    /// The quota's limit.
    pub limit: u64,
    /// The quota's window (zero for a session quota, which has none).
    pub window: Duration,
    /// When the decision was made.
    pub now: Timestamp,
}

/// Why a dead key was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeadKey {
    /// The key was revoked.
    Revoked,
    /// The key is past its expiry.
    Expired,
}

impl DeadKey {
    /// `revoked` or `expired`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Revoked => "revoked",
            Self::Expired => "expired",
        }
    }
}

/// Told about the rare transitions of the request path. Every method has an empty default;
/// implement the ones you need. Called on the request's task: return quickly (count, or push
/// into a bounded queue), never wait.
pub trait Observer: Send + Sync + 'static {
    /// The usage levels, in percent, whose crossing is reported (default 80, 90, 100). Read
    /// once, when the [`Observe`] handle is made.
    fn levels(&self) -> Vec<u8> {
        vec![80, 90, 100]
    }

    /// An organization's use of a quota crossed a level.
    fn usage_crossed(&self, crossing: &UsageCrossing<'_>) {
        let _ = crossing;
    }

    /// The invalid-key guard started blocking `client` after `attempts` invalid keys.
    fn invalid_key_burst(&self, client: IpAddr, attempts: u64) {
        let _ = (client, attempts);
    }

    /// A revoked or expired key was presented (and refused).
    fn dead_key_presented(&self, org: &OrgId, key_id: &KeyId, status: DeadKey) {
        let _ = (org, key_id, status);
    }
}

/// The observer handle the layers take with `.observe(..)`. Cheap to clone.
///
/// Per admitted request it costs a comparison per level (the levels are copied here); the
/// observer itself is called only when a level is crossed.
#[derive(Clone)]
pub struct Observe {
    observer: Arc<dyn Observer>,
    /// Sorted, each in `1..=100`.
    levels: Arc<[u8]>,
}

impl fmt::Debug for Observe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Observe")
            .field("levels", &self.levels)
            .finish_non_exhaustive()
    }
}

impl Observe {
    /// A handle on `observer`, with its [`levels`](Observer::levels) (each held in `1..=100`).
    pub fn new(observer: impl Observer) -> Self {
        Self::from_arc(Arc::new(observer))
    }

    /// A handle on a shared observer.
    pub fn from_arc(observer: Arc<dyn Observer>) -> Self {
        let mut levels: Vec<u8> = observer
            .levels()
            .into_iter()
            .map(|l| l.clamp(1, 100))
            .collect();
        levels.sort_unstable();
        levels.dedup();
        Self {
            observer,
            levels: levels.into(),
        }
    }

    /// The levels reported, in percent.
    pub fn levels(&self) -> &[u8] {
        &self.levels
    }

    /// The observer.
    pub fn observer(&self) -> &dyn Observer {
        &*self.observer
    }

    /// After a decision that admitted `cost` units and left `remaining` of `limit`: report
    /// every level the use crossed. Arithmetic only, unless a level was crossed.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn usage(
        &self,
        org: &OrgId,
        policy: &str,
        unit: UsageUnit,
        limit: u64,
        remaining: u64,
        cost: u64,
        window: Duration,
        now: Timestamp,
    ) {
        let Some(&lowest) = self.levels.first() else {
            return;
        };
        if limit == 0 || cost == 0 {
            return;
        }
        // Percent of cells: at most 100 · 2^64, in u128 (two multiplications).
        let used = u128::from(limit - remaining.min(limit)) * 100;
        let limit128 = u128::from(limit);
        // The usual request: below the lowest level, nothing can have been crossed.
        if used < u128::from(lowest) * limit128 {
            return;
        }
        self.crossings(org, policy, unit, limit, used, cost, window, now);
    }

    /// The levels `used` (percent of cells after the decision) reached with this decision.
    #[cold]
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn crossings(
        &self,
        org: &OrgId,
        policy: &str,
        unit: UsageUnit,
        limit: u64,
        used: u128,
        cost: u64,
        window: Duration,
        now: Timestamp,
    ) {
        let before = used.saturating_sub(u128::from(cost) * 100);
        let limit128 = u128::from(limit);
        for &level in self.levels.iter() {
            let at = u128::from(level) * limit128;
            if used >= at && before < at {
                self.crossed(org, policy, unit, level, limit, window, now);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn crossed(
        &self,
        org: &OrgId,
        policy: &str,
        unit: UsageUnit,
        percent: u8,
        limit: u64,
        window: Duration,
        now: Timestamp,
    ) {
        self.observer.usage_crossed(&UsageCrossing {
            org,
            policy,
            unit,
            percent,
            limit,
            window,
            now,
        });
    }
}

impl<O: Observer> From<Arc<O>> for Observe {
    fn from(observer: Arc<O>) -> Self {
        Self::from_arc(observer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Seen(Mutex<Vec<u8>>);
    impl Observer for Seen {
        fn usage_crossed(&self, c: &UsageCrossing<'_>) {
            self.0.lock().unwrap().push(c.percent);
        }
    }

    #[test]
    fn each_level_is_reported_on_the_decision_that_crosses_it() {
        let seen = Arc::new(Seen::default());
        let observe = Observe::from(seen.clone());
        let org = OrgId::from("org_1");
        let now = Timestamp::from_unix_secs(1);
        let mut per_request = Vec::new();
        for used in 1..=10u64 {
            observe.usage(
                &org,
                "p",
                UsageUnit::Requests,
                10,
                10 - used,
                1,
                Duration::ZERO,
                now,
            );
            per_request.push(seen.0.lock().unwrap().len());
        }
        assert_eq!(*seen.0.lock().unwrap(), vec![80, 90, 100]);
        assert_eq!(per_request, vec![0, 0, 0, 0, 0, 0, 0, 1, 2, 3]);
    }

    #[test]
    fn one_costly_decision_crosses_several_levels() {
        let seen = Arc::new(Seen::default());
        let observe = Observe::from(seen.clone());
        let org = OrgId::from("org_1");
        let now = Timestamp::from_unix_secs(1);
        observe.usage(
            &org,
            "p",
            UsageUnit::Requests,
            10,
            0,
            5,
            Duration::ZERO,
            now,
        );
        assert_eq!(*seen.0.lock().unwrap(), vec![80, 90, 100]);
    }
}
