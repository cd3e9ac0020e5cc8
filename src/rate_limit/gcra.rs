//! The Generic Cell Rate Algorithm, as pure functions on integers. No tower, no clock, no state.
//!
//! A quota of `N` requests per `period` is a bucket of `N` cells that refills one cell every
//! *emission interval* `T = ⌈period / N⌉` (in nanoseconds, rounded **up** so integer rounding
//! can only make the limiter stricter, never looser). The whole state of one organization is a
//! single number, its *theoretical arrival time* (TAT): the instant at which its bucket is full
//! again. A TAT in the past means a full bucket, so a fresh organization starts at
//! [`Timestamp::EPOCH`].
//!
//! A request costing `n` cells at time `t` is admitted iff
//! `max(TAT, t) + n·T ≤ t + N·T`, and then the TAT becomes `max(TAT, t) + n·T`. A refusal leaves
//! the TAT unchanged.
//!
//! # What the quota allows
//!
//! - **Burst:** an idle organization may send `N` requests at once.
//! - **Refill:** then one more every `T`, evenly (Free: 100/minute → one every 600 ms).
//! - **Bound:** in *any* time window of length `W` (ends included), the cells admitted never
//!   exceed `N + ⌊W / T⌋`: the full bucket at the window's start plus what refills during it.
//!   For `W = period` that is at most `2N` (a full burst just before the window closes on the
//!   refill of the previous one); over long horizons the rate tends to `N / period` and never
//!   exceeds it. This is the same contract as a token bucket of capacity `N`, which is what
//!   "a burst of N, then an even refill" means. The property tests in this module check this
//!   bound over random traces against an independently written token-bucket model.
//! - A request costing more than `N` can never be admitted; it is refused with a
//!   `Retry-After` of one period. A cost of `0` is always admitted and changes nothing.
//! - A quota of `0` requests refuses everything.
//!
//! # At the extremes
//!
//! Every quota the types accept works, up to a `u32::MAX` burst and a period of
//! `Duration::MAX` (computed as `u64::MAX` ns: shortening a period that long can admit
//! nothing more, see below), at any clock reading. The arithmetic runs on the *debt*
//! `max(TAT, t) − t`, which is at most `N·T` for an admitted request, so nothing overflows.
//! Time ends at 2^63 − 1 ns after the epoch (year 2262), the last TAT a state holds:
//!
//! - a TAT that would run past it is **held** there, and a TAT held there never clears (its
//!   true value is unknown): every request costing cells is refused until a plan change, with
//!   a `Retry-After` of one period. One request per 1.8·10^10 s admits its first request,
//!   whose cell would refill long after 2262, and nothing after.
//! - clock readings past it count as that instant, so no later request is admitted.
//!
//! Both only ever refuse; they never admit a request the exact arithmetic would refuse, so
//! the bound below holds for every quota. The price is only paid by quotas whose period
//! reaches past 2262 from now (over two centuries): they may get fewer cells than the quota
//! grants, never more.
//!
//! # Figures
//!
//! Every decision carries the [`RateLimitInfo`] sent to the client:
//! `limit = N`; `remaining` = whole cells left after the decision; `reset` = the Unix second
//! (rounded up) at which the bucket is full again; `retry_after` = whole seconds (rounded up,
//! at least 1) until the refused request would be admitted, 0 when admitted.
//!
//! ```
//! use std::time::Duration;
//! use tower_api_key::Timestamp;
//! use tower_api_key::rate_limit::Gcra;
//!
//! let gcra = Gcra::new(100, Duration::from_secs(60)); // Free plan
//! let t0 = Timestamp::from_unix_secs(1_700_000_000);
//! let mut tat = Timestamp::EPOCH;
//! for _ in 0..100 {
//!     let d = gcra.decide(tat, t0, 1);
//!     assert!(d.allowed);
//!     tat = d.tat;
//! }
//! let refused = gcra.decide(tat, t0, 1);
//! assert!(!refused.allowed);
//! assert_eq!(refused.info.remaining, 0);
//! assert_eq!(refused.info.retry_after, 1); // one cell refills in 600 ms, rounded up
//! assert_eq!(refused.info.reset, 1_700_000_060);
//! ```

use std::time::Duration;

use smallvec::SmallVec;

use crate::clock::Timestamp;
use crate::headers::RateLimitInfo;
use crate::plan::Quota;

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// The end of time for a rate limit: the last TAT a state holds, `2^63 − 1` ns after the
/// epoch (in the year 2262), so that a backend can keep a flag beside a TAT in one 64-bit word.
/// A TAT that would run past it is held at it, and a TAT held at it never clears.
pub(crate) const MAX_TAT: u64 = (1 << 63) - 1;

/// The parameters of one quota, ready for [`decide`](Gcra::decide): the limit `N`, the emission
/// interval `T` and the period.
///
/// Two `Gcra`s are equal iff they admit exactly the same traces, so a backend can tell cheaply
/// whether an organization's quota changed since its state was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Gcra {
    limit: u64,
    /// `T` in nanoseconds; 0 only when `limit` is 0.
    interval: u64,
    /// `N·T` in nanoseconds: how far ahead of now the TAT may run.
    capacity: u64,
    /// The period as configured (for `RateLimit-Policy: w=`), at least a nanosecond.
    period: Duration,
}

/// The outcome of one [`Gcra::decide`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request is admitted.
    pub allowed: bool,
    /// The state to store: the new TAT if admitted, the unchanged one if refused.
    pub tat: Timestamp,
    /// The figures for the client.
    pub info: RateLimitInfo,
}

impl Gcra {
    /// `requests` per `period`. A zero period is treated as one nanosecond.
    ///
    /// Every `period` works, up to `Duration::MAX`: the emission interval is computed from the
    /// exact period, and held at `u64::MAX` ns (584 years) when longer, which admits nothing
    /// more, since one cell then outlasts every clock reading.
    pub const fn new(requests: u32, period: Duration) -> Self {
        let limit = requests as u64;
        let period = if period.is_zero() {
            Duration::from_nanos(1)
        } else {
            period
        };
        if limit == 0 {
            return Self {
                limit: 0,
                interval: 0,
                capacity: 0,
                period,
            };
        }
        let nanos = period.as_nanos();
        let interval = if nanos <= u64::MAX as u128 {
            // The usual case, in u64: a u128 division is a call to a slow routine, and the
            // layer builds a `Gcra` on every request.
            (nanos as u64).div_ceil(limit)
        } else {
            let interval = nanos.div_ceil(limit as u128);
            if interval > u64::MAX as u128 {
                u64::MAX
            } else {
                interval as u64
            }
        };
        Self {
            limit,
            interval,
            capacity: interval.saturating_mul(limit),
            period,
        }
    }

    /// The GCRA of a plan's [`Quota`] (its request rate; sessions are not rate-limited here).
    pub const fn from_quota(quota: &Quota) -> Self {
        Self::new(quota.requests, quota.period)
    }

    /// `N`: requests per period, also the burst.
    pub const fn limit(&self) -> u64 {
        self.limit
    }

    /// `T`: one cell refills every this long (at most `u64::MAX` ns).
    pub const fn emission_interval(&self) -> Duration {
        Duration::from_nanos(self.interval)
    }

    /// The period the quota was given for.
    pub const fn period(&self) -> Duration {
        self.period
    }

    pub(crate) const fn interval_nanos(&self) -> u64 {
        self.interval
    }

    pub(crate) const fn capacity_nanos(&self) -> u64 {
        self.capacity
    }

    /// The `Retry-After` of a request that can never be admitted: one period in whole seconds,
    /// at most 2^52 (142 million years), which a Lua double and a Redis integer hold exactly.
    pub(crate) fn never_secs(&self) -> u64 {
        ceil_duration_secs(self.period).clamp(1, 1 << 52)
    }

    /// Decide a request costing `cost` cells at `now`, given the organization's `tat`.
    ///
    /// Pure: the caller stores [`Decision::tat`] if it wants the decision to count (a backend
    /// does so atomically, e.g. by compare-and-swap from `tat`).
    ///
    /// Saturating rather than refusing quotas at configuration, so every quota the types
    /// accept works: a TAT that would pass 2^63 − 1 ns (year 2262) is held there, and a TAT
    /// held there refuses every request costing cells ([module docs](self#at-the-extremes)).
    #[inline]
    pub fn decide(&self, tat: Timestamp, now: Timestamp, cost: u32) -> Decision {
        let now_ns = now.as_unix_nanos().min(MAX_TAT);
        let base = tat.as_unix_nanos().max(now_ns);
        // How far the TAT runs ahead of now; a TAT held at the end of time never clears.
        let debt = if base < MAX_TAT {
            base - now_ns
        } else {
            u64::MAX
        };
        let cost = u64::from(cost);
        if cost > self.limit {
            // Never admissible (this also covers a zero limit with a non-zero cost).
            return self.refuse(tat, base, debt, self.never_secs());
        }
        let need = cost.saturating_mul(self.interval);
        if need <= self.capacity.saturating_sub(debt) {
            // `debt + need <= capacity`: no overflow.
            let debt = debt + need;
            let new_tat = now_ns.saturating_add(debt).min(MAX_TAT);
            Decision {
                allowed: true,
                tat: Timestamp::from_unix_nanos(new_tat),
                info: RateLimitInfo {
                    limit: self.limit,
                    // Held at the end of time: nothing more until then.
                    remaining: if new_tat < MAX_TAT {
                        self.remaining(debt)
                    } else {
                        0
                    },
                    reset: ceil_secs(new_tat),
                    retry_after: 0,
                },
            }
        } else if debt == u64::MAX {
            self.refuse(tat, base, debt, self.never_secs())
        } else {
            // Admissible once the debt has shrunk by `debt + need - capacity`.
            let wait = u128::from(debt) + u128::from(need) - u128::from(self.capacity);
            let secs = u64::try_from(wait.div_ceil(u128::from(NANOS_PER_SEC)));
            // At most 2^65 ns: always fits in u64 seconds.
            self.refuse(tat, base, debt, secs.unwrap_or(u64::MAX))
        }
    }

    /// A refusal: the state unchanged, `retry_after` in whole seconds (at least 1 is sent).
    fn refuse(&self, tat: Timestamp, base: u64, debt: u64, retry_after: u64) -> Decision {
        Decision {
            allowed: false,
            tat,
            info: RateLimitInfo {
                limit: self.limit,
                remaining: self.remaining(debt),
                reset: ceil_secs(base.min(MAX_TAT)),
                retry_after: retry_after.max(1),
            },
        }
    }

    /// Whole cells available with the TAT `debt` nanoseconds ahead of now.
    #[inline]
    fn remaining(&self, debt: u64) -> u64 {
        if self.interval == 0 {
            return 0;
        }
        self.capacity.saturating_sub(debt) / self.interval
    }

    /// The figures at `now` without spending anything (a cost-0 decision).
    pub fn peek(&self, tat: Timestamp, now: Timestamp) -> RateLimitInfo {
        self.decide(tat, now, 0).info
    }

    /// Give back the cells of an admitted request costing `cost`, at `now`: the TAT moves back
    /// by `cost·T`, but never before `now` (a full bucket gets no fuller) and a TAT held at the
    /// end of time stays held. Used to refund requests the inner service failed (`5xx`).
    pub fn refund(&self, tat: Timestamp, now: Timestamp, cost: u32) -> Timestamp {
        let now_ns = now.as_unix_nanos().min(MAX_TAT);
        let tat_ns = tat.as_unix_nanos();
        if tat_ns <= now_ns || tat_ns >= MAX_TAT {
            return tat;
        }
        let back = u64::from(cost).saturating_mul(self.interval);
        Timestamp::from_unix_nanos(tat_ns.saturating_sub(back).max(now_ns))
    }

    /// Carry a state written under quota `from` over to this quota, at `now`.
    ///
    /// The *cells* in use are kept, not the time debt: a Free organization that spent 100 of
    /// its 100 requests and upgrades to Paid has spent 100 of 1,000, so its next request is
    /// admitted. The carried debt is capped at this quota's capacity, so a downgrade leaves
    /// the organization at worst exhausted, refilling within one period. Rounds up (stricter).
    pub fn convert(&self, tat: Timestamp, now: Timestamp, from: &Gcra) -> Timestamp {
        let now_ns = now.as_unix_nanos().min(MAX_TAT);
        let tat_ns = tat.as_unix_nanos();
        if tat_ns <= now_ns {
            return tat;
        }
        let debt = tat_ns - now_ns;
        let new_debt = if tat_ns >= MAX_TAT {
            // Held at the end of time: its true debt is unknown, so every cell counts as used.
            u64::MAX
        } else if from.interval == 0 || self.interval == 0 {
            debt
        } else {
            let scaled =
                (u128::from(debt) * u128::from(self.interval)).div_ceil(u128::from(from.interval));
            u64::try_from(scaled).unwrap_or(u64::MAX)
        };
        let carried = now_ns.saturating_add(new_debt.min(self.capacity));
        Timestamp::from_unix_nanos(carried.min(MAX_TAT))
    }
}

/// The outcome of one request checked against several policies ([`decide_all`]): admitted
/// only if every policy admits it, and then every policy spends its cells; refused, no policy
/// spends anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decisions {
    allowed: bool,
    each: SmallVec<[Decision; 3]>,
}

impl Decisions {
    /// Whether the request is admitted (every policy admits it).
    pub fn allowed(&self) -> bool {
        self.allowed
    }

    /// One decision per policy, in the policies' order. When the request is refused, each
    /// `tat` is the unchanged state, `allowed` says whether this policy alone would have
    /// admitted it (`false`: it is among the violated policies) and the figures of those that
    /// would have are what they are without the request.
    pub fn each(&self) -> &[Decision] {
        &self.each
    }

    /// The policy whose figures go into `X-RateLimit-*`: when refused, the violated policy that
    /// admits last (largest `retry_after`); when admitted, the one closest to refusing (fewest
    /// `remaining`, then the latest `reset`).
    pub fn deciding(&self) -> usize {
        let mut best = 0;
        for (i, d) in self.each.iter().enumerate().skip(1) {
            let b = &self.each[best];
            let better = if self.allowed {
                (d.info.remaining, std::cmp::Reverse(d.info.reset))
                    < (b.info.remaining, std::cmp::Reverse(b.info.reset))
            } else {
                match (d.allowed, b.allowed) {
                    (false, true) => true,
                    (false, false) => d.info.retry_after > b.info.retry_after,
                    _ => false,
                }
            };
            if better {
                best = i;
            }
        }
        best
    }

    /// The figures for `X-RateLimit-*` and `Retry-After`: the [deciding](Self::deciding)
    /// policy's, whose `retry_after` is, when refused, the largest of the violated policies'
    /// (never earlier than every violated policy admits the request again).
    pub fn info(&self) -> RateLimitInfo {
        self.each
            .get(self.deciding())
            .map_or(RateLimitInfo::default(), |d| d.info)
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn from_parts(allowed: bool, each: SmallVec<[Decision; 3]>) -> Self {
        Self { allowed, each }
    }
}

/// Decide a request costing `cost` at `now` against several policies at once, given each
/// policy's state (`tats[i]` for `gcras[i]`; a missing state is a full bucket).
///
/// The one multi-policy decision, shared by every backend: each policy decides with
/// [`Gcra::decide`]; the request is admitted iff all admit it, and then the new states are
/// every policy's new TAT; refused, every state is unchanged and the policies that admitted
/// report their figures without the request (a cost-0 decision).
pub fn decide_all(gcras: &[Gcra], tats: &[Timestamp], now: Timestamp, cost: u32) -> Decisions {
    let tat_of = |i: usize| tats.get(i).copied().unwrap_or(Timestamp::EPOCH);
    let mut each: SmallVec<[Decision; 3]> = gcras
        .iter()
        .enumerate()
        .map(|(i, g)| g.decide(tat_of(i), now, cost))
        .collect();
    let allowed = each.iter().all(|d| d.allowed);
    if !allowed {
        for (i, d) in each.iter_mut().enumerate() {
            if d.allowed {
                *d = Decision {
                    allowed: true,
                    ..gcras[i].decide(tat_of(i), now, 0)
                };
            }
        }
    }
    Decisions { allowed, each }
}

impl From<Quota> for Gcra {
    fn from(q: Quota) -> Self {
        Self::from_quota(&q)
    }
}

impl From<&Quota> for Gcra {
    fn from(q: &Quota) -> Self {
        Self::from_quota(q)
    }
}

/// Nanoseconds to whole seconds, rounded up.
#[inline]
fn ceil_secs(nanos: u64) -> u64 {
    nanos.div_ceil(NANOS_PER_SEC)
}

/// Whole seconds, rounded up, of a duration (used by the session quota too), saturating.
pub(crate) fn ceil_duration_secs(d: Duration) -> u64 {
    d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T0: u64 = 1_700_000_000;

    fn at(ms: u64) -> Timestamp {
        Timestamp::from_unix_millis(T0 * 1000 + ms)
    }

    fn free() -> Gcra {
        Gcra::new(100, Duration::from_secs(60))
    }

    #[test]
    fn free_plan_burst_then_refusal() {
        let g = free();
        assert_eq!(g.emission_interval(), Duration::from_millis(600));
        let mut tat = Timestamp::EPOCH;
        for i in 0..100u64 {
            let d = g.decide(tat, at(0), 1);
            assert!(d.allowed, "request {i}");
            assert_eq!(d.info.limit, 100);
            assert_eq!(d.info.remaining, 99 - i);
            assert_eq!(d.info.retry_after, 0);
            // Full again (i+1)·600 ms from now, rounded up to the second.
            assert_eq!(d.info.reset, T0 + ((i + 1) * 600).div_ceil(1000));
            tat = d.tat;
        }
        let d = g.decide(tat, at(0), 1);
        assert!(!d.allowed);
        assert_eq!(d.tat, tat, "a refusal leaves the state unchanged");
        assert_eq!(d.info.remaining, 0);
        assert_eq!(d.info.reset, T0 + 60);
        assert_eq!(d.info.retry_after, 1);
    }

    #[test]
    fn refills_one_cell_per_interval() {
        let g = free();
        let mut tat = Timestamp::EPOCH;
        for _ in 0..100 {
            tat = g.decide(tat, at(0), 1).tat;
        }
        // 599 ms later: still nothing; 600 ms: exactly one.
        let d = g.decide(tat, at(599), 1);
        assert!(!d.allowed);
        assert_eq!(d.info.retry_after, 1);
        let d = g.decide(tat, at(600), 1);
        assert!(d.allowed);
        assert_eq!(d.info.remaining, 0);
        tat = d.tat;
        assert!(!g.decide(tat, at(600), 1).allowed);
        // 30 s later, 50 cells are back.
        let info = g.peek(tat, at(30_600));
        assert_eq!(info.remaining, 50);
        assert_eq!(info.reset, T0 + 61);
    }

    #[test]
    fn retry_after_is_rounded_up_and_never_zero() {
        let g = Gcra::new(1, Duration::from_secs(10));
        let tat = g.decide(Timestamp::EPOCH, at(0), 1).tat;
        assert_eq!(g.decide(tat, at(0), 1).info.retry_after, 10);
        assert_eq!(g.decide(tat, at(1), 1).info.retry_after, 10);
        assert_eq!(g.decide(tat, at(9_000), 1).info.retry_after, 1);
        assert_eq!(g.decide(tat, at(9_999), 1).info.retry_after, 1);
        assert!(g.decide(tat, at(10_000), 1).allowed);
    }

    #[test]
    fn cost_counts_several_cells() {
        let g = Gcra::new(10, Duration::from_secs(10));
        let d = g.decide(Timestamp::EPOCH, at(0), 4);
        assert!(d.allowed);
        assert_eq!(d.info.remaining, 6);
        let d = g.decide(d.tat, at(0), 6);
        assert!(d.allowed);
        assert_eq!(d.info.remaining, 0);
        // Needs 3 cells: 3 s of refill.
        let r = g.decide(d.tat, at(0), 3);
        assert!(!r.allowed);
        assert_eq!(r.info.retry_after, 3);
        // Cost 0 is always admitted and free.
        let z = g.decide(d.tat, at(0), 0);
        assert!(z.allowed);
        assert_eq!(z.tat, d.tat);
        // More than the whole quota: never, retry after a period.
        let big = g.decide(Timestamp::EPOCH, at(0), 11);
        assert!(!big.allowed);
        assert_eq!(big.info.retry_after, 10);
        assert_eq!(big.info.remaining, 10);
    }

    #[test]
    fn zero_quota_refuses_everything() {
        let g = Gcra::new(0, Duration::from_secs(60));
        let d = g.decide(Timestamp::EPOCH, at(0), 1);
        assert!(!d.allowed);
        assert_eq!(d.info.limit, 0);
        assert_eq!(d.info.retry_after, 60);
    }

    #[test]
    fn interval_rounds_up_so_the_burst_is_exact() {
        // 60 s / 7 is not a whole number of nanoseconds.
        let g = Gcra::new(7, Duration::from_secs(60));
        let mut tat = Timestamp::EPOCH;
        for _ in 0..7 {
            let d = g.decide(tat, at(0), 1);
            assert!(d.allowed);
            tat = d.tat;
        }
        assert!(!g.decide(tat, at(0), 1).allowed);
        // Huge quotas stay exact too.
        let g = Gcra::new(u32::MAX, Duration::from_secs(1));
        let d = g.decide(Timestamp::EPOCH, at(0), u32::MAX);
        assert!(d.allowed);
        assert_eq!(d.info.remaining, 0);
        assert!(!g.decide(d.tat, at(0), 1).allowed);
    }

    #[test]
    fn conversion_keeps_cells_used() {
        let free = free();
        let paid = Gcra::new(1000, Duration::from_secs(60));
        let mut tat = Timestamp::EPOCH;
        for _ in 0..100 {
            tat = free.decide(tat, at(0), 1).tat;
        }
        let up = paid.convert(tat, at(0), &free);
        let d = paid.decide(up, at(0), 1);
        assert!(d.allowed);
        assert_eq!(d.info.remaining, 899);
        // Downgrade with 500 of 1000 used: capped at exhausted, full again within a period.
        let mut tat = Timestamp::EPOCH;
        for _ in 0..500 {
            tat = paid.decide(tat, at(0), 1).tat;
        }
        let down = free.convert(tat, at(0), &paid);
        assert_eq!(down, at(60_000));
        // Idle states are unchanged.
        assert_eq!(paid.convert(at(0), at(5), &free), at(0));
    }

    #[test]
    fn a_tat_that_would_pass_2262_is_held_and_refuses_until_a_plan_change() {
        // 1000 per 1.8e10 s: one cell per 1.8e7 s. From 2023, the 418th cell's TAT passes
        // 2^63 - 1 ns: it is admitted and the TAT held there.
        let g = Gcra::new(1000, Duration::from_secs(18_000_000_000));
        let mut tat = Timestamp::EPOCH;
        let mut admitted = 0;
        for _ in 0..1000 {
            let d = g.decide(tat, at(0), 1);
            if d.allowed {
                admitted += 1;
                tat = d.tat;
            }
        }
        assert_eq!(admitted, 418);
        assert_eq!(tat.as_unix_nanos(), MAX_TAT);
        let d = g.decide(tat, at(86_400_000), 1);
        assert!(!d.allowed);
        assert_eq!(d.info.remaining, 0);
        assert_eq!(d.info.retry_after, 18_000_000_000);
        // Free requests still pass and change nothing.
        let z = g.decide(tat, at(0), 0);
        assert!(z.allowed);
        assert_eq!(z.tat, tat);
        // A plan change counts a held state as fully spent: exhausted, refilling in a period.
        assert_eq!(free().convert(tat, at(0), &g), at(60_000));
    }

    #[test]
    fn clock_readings_past_2262_admit_only_free_requests() {
        let late = Timestamp::from_unix_nanos(MAX_TAT + 1);
        let d = free().decide(Timestamp::EPOCH, late, 1);
        assert!(!d.allowed);
        assert_eq!(d.info.retry_after, 60);
        assert!(free().decide(Timestamp::EPOCH, Timestamp::MAX, 0).allowed);
    }

    /// A token bucket with exact integer credit, written independently of the TAT form: credit
    /// in nanoseconds of refill, capped at `N·T`, a cell costs `T`.
    struct Bucket {
        n: u64,
        t: u64,
        credit: u64,
        last: u64,
    }

    impl Bucket {
        fn new(n: u32, period: Duration) -> Self {
            let n = u64::from(n);
            let t = (period.as_nanos() as u64).div_ceil(n);
            Self {
                n,
                t,
                credit: n * t,
                last: 0,
            }
        }
        /// (allowed, remaining after, retry_after secs)
        fn request(&mut self, now: u64, cost: u64) -> (bool, u64, u64) {
            self.credit = (self.credit + (now - self.last)).min(self.n * self.t);
            self.last = now;
            let need = cost * self.t;
            if need > self.n * self.t {
                return (false, self.credit / self.t, 0);
            }
            if self.credit >= need {
                self.credit -= need;
                (true, self.credit / self.t, 0)
            } else {
                let wait = need - self.credit;
                (
                    false,
                    self.credit / self.t,
                    wait.div_ceil(NANOS_PER_SEC).max(1),
                )
            }
        }
    }

    fn trace() -> impl Strategy<Value = (u32, u64, Vec<(u64, u32)>)> {
        (
            1u32..=50,
            // period from 1 ms to 90 s
            1_000_000u64..=90_000_000_000,
        )
            .prop_flat_map(|(n, period)| {
                let step = period / u64::from(n);
                (
                    Just(n),
                    Just(period),
                    // gaps from 0 to ~3 emission intervals; costs mostly 1, sometimes more
                    prop::collection::vec(
                        (
                            prop_oneof![3 => Just(0u64), 5 => 0..=step * 3],
                            prop_oneof![8 => Just(1u32), 1 => 0..=4u32, 1 => 0..=n + 1],
                        ),
                        1..300,
                    ),
                )
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The limiter agrees with the reference bucket on every request, and the admitted
        /// cells in every window respect `N + ⌊W/T⌋` (so at most 2N per period).
        #[test]
        fn agrees_with_reference_and_respects_every_window((n, period, events) in trace()) {
            let g = Gcra::new(n, Duration::from_nanos(period));
            let t = g.emission_interval().as_nanos() as u64;
            let start = T0 * NANOS_PER_SEC;
            let mut model = Bucket::new(n, Duration::from_nanos(period));
            model.last = start;
            let mut tat = Timestamp::EPOCH;
            let mut now = start;
            let mut admitted: Vec<(u64, u64)> = Vec::new();
            for (gap, cost) in events {
                now += gap;
                let d = g.decide(tat, Timestamp::from_unix_nanos(now), cost);
                let (ok, remaining, retry) = model.request(now, u64::from(cost));
                prop_assert_eq!(d.allowed, ok);
                prop_assert_eq!(d.info.remaining, remaining);
                if ok {
                    prop_assert_eq!(d.info.retry_after, 0);
                    admitted.push((now, u64::from(cost)));
                } else {
                    prop_assert!(d.info.retry_after >= 1);
                    if u64::from(cost) <= u64::from(n) {
                        prop_assert_eq!(d.info.retry_after, retry);
                    }
                }
                // reset: the second by which the bucket is full again
                let full_at = d.tat.as_unix_nanos().max(now);
                prop_assert_eq!(d.info.reset, full_at.div_ceil(NANOS_PER_SEC));
                tat = d.tat;
            }
            // Every window [a, b] between admitted instants.
            for i in 0..admitted.len() {
                let mut sum = 0u64;
                for j in i..admitted.len() {
                    sum += admitted[j].1;
                    let w = admitted[j].0 - admitted[i].0;
                    prop_assert!(sum <= u64::from(n) + w / t,
                        "{} cells in a window of {} ns (N={}, T={})", sum, w, n, t);
                    if w <= period {
                        prop_assert!(sum <= 2 * u64::from(n));
                    }
                }
            }
        }

        /// Retrying exactly after `Retry-After` succeeds (for an admissible cost).
        #[test]
        fn retry_after_is_sufficient((n, period, events) in trace()) {
            let g = Gcra::new(n, Duration::from_nanos(period));
            let mut tat = Timestamp::EPOCH;
            let mut now = T0 * NANOS_PER_SEC;
            for (gap, cost) in events {
                now += gap;
                let d = g.decide(tat, Timestamp::from_unix_nanos(now), cost);
                if !d.allowed && u64::from(cost) <= u64::from(n) {
                    let later = now + d.info.retry_after * NANOS_PER_SEC;
                    prop_assert!(g.decide(tat, Timestamp::from_unix_nanos(later), cost).allowed);
                }
                tat = d.tat;
            }
        }
    }
}
