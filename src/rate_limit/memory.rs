//! The in-process backend: [`MemoryRateLimiter`].

use std::fmt;
use std::future::{Ready, ready};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use papaya::{Compute, Operation};

use crate::clock::Timestamp;
use crate::principal::OrgId;
use crate::reject::RateLimitInfo;

use super::backend::{CheckResult, RateLimitBackend};
use super::gcra::{Decision, Gcra};

/// Set in a TAT word that must not be updated any more: its entry is being replaced (quota
/// change) or removed (idle eviction). TATs are nanoseconds since the epoch, below 2^63 until
/// the year 2262; larger values are clamped.
const SEALED: u64 = 1 << 63;
const MAX_TAT: u64 = SEALED - 1;

/// Sweep for idle organizations when the map has grown to this many entries at least.
const DEFAULT_SWEEP_FLOOR: usize = 1024;

type Hasher = foldhash::fast::RandomState;

/// One organization's state: the quota it was written under and its TAT. Aligned to a cache
/// line so two hot organizations never share one.
#[repr(align(64))]
struct OrgState {
    tat: AtomicU64,
    gcra: Gcra,
}

impl OrgState {
    fn new(gcra: Gcra, tat: u64) -> Self {
        Self {
            tat: AtomicU64::new(tat.min(MAX_TAT)),
            gcra,
        }
    }
}

struct Inner {
    orgs: papaya::HashMap<OrgId, OrgState, Hasher>,
    /// Map size at which the next insertion triggers a sweep; `usize::MAX` while one runs.
    next_sweep: AtomicUsize,
    sweep_floor: usize,
}

/// The in-process [`RateLimitBackend`]: exact GCRA per organization, lock-free.
///
/// - **State:** one lock-free map ([`papaya`]) from [`OrgId`] to a cache-line-aligned
///   `AtomicU64` TAT. A request reads the map without locking and admits itself with one
///   compare-and-swap on its organization's TAT; a refusal writes nothing. No per-organization
///   mutex, no global lock. Exact: concurrent requests never admit more than the quota (each
///   admission is a successful CAS from the TAT it was decided on).
/// - **Plan changes:** the state remembers the [`Gcra`] it was written under. A request
///   carrying another quota *seals* the TAT (sets its top bit with a CAS, which freezes it:
///   every other writer's CAS now fails) and replaces the entry with the state converted by
///   [`Gcra::convert`] (cells used are kept). Any thread that meets a sealed entry helps
///   finish the replacement, so nothing waits on a stalled thread.
/// - **Bounded memory:** an organization whose TAT is in the past has a full bucket, exactly
///   like one never seen, so its entry can go. When the number of organizations doubles
///   since the last sweep (and is at least [`with_sweep_floor`](Self::with_sweep_floor),
///   1,024 by default), the inserting request sweeps: idle entries are sealed then removed.
///   The map thus holds at most about twice the organizations active within the last period,
///   plus the floor. [`sweep`](Self::sweep) runs one on demand.
/// - Clones share the state: every clone of the layer limits against the same numbers.
///
/// ```
/// use std::time::Duration;
/// use tower_api_key::{OrgId, Timestamp};
/// use tower_api_key::rate_limit::{Gcra, MemoryRateLimiter};
///
/// let limiter = MemoryRateLimiter::new();
/// let gcra = Gcra::new(2, Duration::from_secs(1));
/// let org = OrgId::from("org_1");
/// let now = Timestamp::from_unix_secs(1_000);
/// assert!(limiter.decide(&org, &gcra, 1, now).allowed);
/// assert!(limiter.decide(&org, &gcra, 1, now).allowed);
/// assert!(!limiter.decide(&org, &gcra, 1, now).allowed);
/// // A second later the bucket is full: the state is idle and a sweep drops it.
/// assert_eq!(limiter.sweep(now.saturating_add(Duration::from_secs(1))), 1);
/// assert!(limiter.is_empty());
/// ```
#[derive(Clone)]
pub struct MemoryRateLimiter {
    inner: Arc<Inner>,
}

impl fmt::Debug for MemoryRateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryRateLimiter")
            .field("orgs", &self.inner.orgs.len())
            .field("sweep_floor", &self.inner.sweep_floor)
            .finish()
    }
}

impl Default for MemoryRateLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryRateLimiter {
    /// An empty limiter.
    pub fn new() -> Self {
        Self::with_sweep_floor(DEFAULT_SWEEP_FLOOR)
    }

    /// An empty limiter that sweeps idle organizations once it holds `floor` of them (and then
    /// each time their number doubles).
    pub fn with_sweep_floor(floor: usize) -> Self {
        let floor = floor.max(1);
        Self {
            inner: Arc::new(Inner {
                orgs: papaya::HashMap::builder().hasher(Hasher::default()).build(),
                next_sweep: AtomicUsize::new(floor),
                sweep_floor: floor,
            }),
        }
    }

    /// Organizations with state (idle ones not yet swept included).
    pub fn len(&self) -> usize {
        self.inner.orgs.len()
    }

    /// Whether no organization has state.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Decide and record a request: the synchronous form of [`RateLimitBackend::check`].
    #[inline]
    pub fn decide(&self, org: &OrgId, gcra: &Gcra, cost: u32, now: Timestamp) -> Decision {
        let now = Timestamp::from_unix_nanos(now.as_unix_nanos().min(MAX_TAT));
        let orgs = self.inner.orgs.pin();
        loop {
            let Some(state) = orgs.get(org.as_str()) else {
                let d = gcra.decide(Timestamp::EPOCH, now, cost);
                if !d.allowed || d.tat.as_unix_nanos() <= now.as_unix_nanos() {
                    // Nothing to remember: refused, or free and the bucket still full.
                    return d;
                }
                let fresh = OrgState::new(*gcra, d.tat.as_unix_nanos());
                if orgs.try_insert(org.clone(), fresh).is_ok() {
                    drop(orgs);
                    self.maybe_sweep(now);
                    return d;
                }
                continue; // another request inserted it first: decide against its state
            };
            let mut current = state.tat.load(Ordering::Acquire);
            loop {
                if current & SEALED != 0 {
                    self.finish_replacement(&orgs, org, state, current & MAX_TAT, gcra, now);
                    break;
                }
                if state.gcra != *gcra {
                    match state.tat.compare_exchange_weak(
                        current,
                        current | SEALED,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => {
                            self.finish_replacement(&orgs, org, state, current, gcra, now);
                            break;
                        }
                        Err(actual) => {
                            current = actual;
                            continue;
                        }
                    }
                }
                let d = gcra.decide(Timestamp::from_unix_nanos(current), now, cost);
                let new = d.tat.as_unix_nanos().min(MAX_TAT);
                if !d.allowed || new == current {
                    return d;
                }
                match state.tat.compare_exchange_weak(
                    current,
                    new,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => return d,
                    Err(actual) => current = actual,
                }
            }
        }
    }

    /// The figures of `org` at `now` under `gcra`, spending nothing.
    pub fn peek(&self, org: &OrgId, gcra: &Gcra, now: Timestamp) -> RateLimitInfo {
        let orgs = self.inner.orgs.pin();
        let tat = match orgs.get(org.as_str()) {
            Some(state) => {
                let raw = state.tat.load(Ordering::Acquire) & MAX_TAT;
                let tat = Timestamp::from_unix_nanos(raw);
                if state.gcra == *gcra {
                    tat
                } else {
                    gcra.convert(tat, now, &state.gcra)
                }
            }
            None => Timestamp::EPOCH,
        };
        gcra.peek(tat, now)
    }

    /// Replace a sealed entry by its state converted to `gcra` (or help whoever is doing so).
    fn finish_replacement<G: papaya::Guard>(
        &self,
        orgs: &papaya::HashMapRef<'_, OrgId, OrgState, Hasher, G>,
        org: &OrgId,
        sealed: &OrgState,
        tat: u64,
        gcra: &Gcra,
        now: Timestamp,
    ) {
        let converted = gcra
            .convert(Timestamp::from_unix_nanos(tat), now, &sealed.gcra)
            .as_unix_nanos();
        let result = orgs.compute(org.clone(), |entry| match entry {
            Some((_, v)) if std::ptr::eq(v, sealed) => {
                Operation::Insert(OrgState::new(*gcra, converted))
            }
            _ => Operation::Abort(()),
        });
        if let Compute::Updated { .. } = result {
            tracing::trace!(org_id = %org, "rate-limit state carried over to a new quota");
        }
    }

    fn maybe_sweep(&self, now: Timestamp) {
        let inner = &*self.inner;
        let threshold = inner.next_sweep.load(Ordering::Relaxed);
        if inner.orgs.len() < threshold {
            return;
        }
        // Claim the sweep; concurrent inserters skip it.
        if inner
            .next_sweep
            .compare_exchange(threshold, usize::MAX, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let removed = self.sweep(now);
        let left = inner.orgs.len();
        inner.next_sweep.store(
            left.saturating_mul(2).max(inner.sweep_floor),
            Ordering::Release,
        );
        tracing::debug!(removed, left, "rate-limit state swept");
    }

    /// Remove the state of every organization idle at `now` (bucket full again). Exact: an
    /// idle state is indistinguishable from none. Returns how many were removed.
    pub fn sweep(&self, now: Timestamp) -> usize {
        let now_ns = now.as_unix_nanos().min(MAX_TAT);
        let orgs = self.inner.orgs.pin();
        let mut removed = 0;
        for (org, state) in orgs.iter() {
            let current = state.tat.load(Ordering::Acquire);
            let idle = (current & MAX_TAT) <= now_ns;
            if !idle {
                continue;
            }
            // Seal first, so that no request can admit itself on an entry being removed; a
            // request that finds it sealed replaces it with a fresh one.
            let sealed = current & SEALED != 0
                || state
                    .tat
                    .compare_exchange(
                        current,
                        current | SEALED,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    )
                    .is_ok();
            if sealed
                && orgs
                    .remove_if(org.as_str(), |_, v| std::ptr::eq(v, state))
                    .is_ok_and(|r| r.is_some())
            {
                removed += 1;
            }
        }
        removed
    }
}

impl RateLimitBackend for MemoryRateLimiter {
    type Check = Ready<CheckResult>;

    #[inline]
    fn check(&self, org: &OrgId, gcra: &Gcra, cost: u32, now: Timestamp) -> Self::Check {
        ready(Ok(self.decide(org, gcra, cost, now)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn t(secs: u64) -> Timestamp {
        Timestamp::from_unix_secs(1_700_000_000 + secs)
    }

    #[test]
    fn orgs_are_independent() {
        let l = MemoryRateLimiter::new();
        let g = Gcra::new(1, Duration::from_secs(60));
        let (a, b) = (OrgId::from("a"), OrgId::from("b"));
        assert!(l.decide(&a, &g, 1, t(0)).allowed);
        assert!(!l.decide(&a, &g, 1, t(0)).allowed);
        assert!(l.decide(&b, &g, 1, t(0)).allowed);
    }

    #[test]
    fn quota_change_carries_cells_over() {
        let l = MemoryRateLimiter::new();
        let free = Gcra::new(100, Duration::from_secs(60));
        let paid = Gcra::new(1000, Duration::from_secs(60));
        let org = OrgId::from("org");
        for _ in 0..100 {
            assert!(l.decide(&org, &free, 1, t(0)).allowed);
        }
        assert!(!l.decide(&org, &free, 1, t(0)).allowed);
        let d = l.decide(&org, &paid, 1, t(0));
        assert!(d.allowed);
        assert_eq!(d.info.remaining, 899);
        assert_eq!(l.peek(&org, &paid, t(0)).remaining, 899);
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn refusals_and_free_requests_store_nothing() {
        let l = MemoryRateLimiter::new();
        let g = Gcra::new(1, Duration::from_secs(60));
        let org = OrgId::from("org");
        assert!(!l.decide(&org, &g, 2, t(0)).allowed);
        assert!(l.decide(&org, &g, 0, t(0)).allowed);
        assert!(l.is_empty());
    }

    #[test]
    fn sweep_removes_idle_orgs_only() {
        let l = MemoryRateLimiter::new();
        let g = Gcra::new(10, Duration::from_secs(10));
        for i in 0..10 {
            let org = OrgId::from(format!("org_{i}"));
            // org_i spends i+1 cells: idle again after i+1 seconds.
            assert!(l.decide(&org, &g, i + 1, t(0)).allowed);
        }
        assert_eq!(l.sweep(t(0)), 0);
        assert_eq!(l.sweep(t(5)), 5);
        assert_eq!(l.len(), 5);
        // Survivors keep their state exactly.
        let org9 = OrgId::from("org_9");
        assert_eq!(l.peek(&org9, &g, t(5)).remaining, 5);
        assert_eq!(l.sweep(t(10)), 5);
        assert!(l.is_empty());
    }

    #[test]
    fn automatic_sweep_bounds_memory() {
        let l = MemoryRateLimiter::with_sweep_floor(64);
        let g = Gcra::new(1, Duration::from_secs(1));
        // 10,000 distinct organizations, each seen once, one second apart in batches of 10:
        // each batch's state is idle by the next one.
        let mut peak = 0;
        for i in 0..10_000u64 {
            let org = OrgId::from(format!("org_{i}"));
            assert!(l.decide(&org, &g, 1, t(i / 10)).allowed);
            peak = peak.max(l.len());
        }
        assert!(peak <= 2 * 64, "peak {peak}");
    }

    #[test]
    fn concurrent_requests_never_exceed_the_quota() {
        let l = MemoryRateLimiter::new();
        let free = Gcra::new(1000, Duration::from_secs(3600));
        let paid = Gcra::new(2000, Duration::from_secs(3600));
        let org = OrgId::from("hot");
        let admitted = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for th in 0..4 {
                let (l, org, admitted) = (&l, &org, &admitted);
                s.spawn(move || {
                    for i in 0..2_000 {
                        // Threads disagree on the plan half of the time: every switch converts.
                        let g = if (th + i) % 7 == 0 { &paid } else { &free };
                        if l.decide(org, g, 1, t(0)).allowed && g == &free {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        // Cells are carried across conversions (rounded up), so spending under the free quota
        // can never exceed its 1,000.
        assert!(admitted.load(Ordering::Relaxed) <= 1000);

        let l = MemoryRateLimiter::new();
        let admitted = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                let (l, org, admitted) = (&l, &org, &admitted);
                s.spawn(move || {
                    for _ in 0..1_000 {
                        if l.decide(org, &free, 1, t(0)).allowed {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(admitted.load(Ordering::Relaxed), 1000);
    }
}
