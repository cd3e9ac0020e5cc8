//! The in-process backend: [`MemoryRateLimiter`].

use std::fmt;
use std::future::{Ready, ready};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use papaya::{Compute, Operation};
use smallvec::SmallVec;

use crate::clock::Timestamp;
use crate::headers::RateLimitInfo;
use crate::ids::OrgId;

use super::backend::{CheckResult, PoliciesCheck, RateLimitBackend, Spend};
use super::gcra::{Decision, Decisions, Gcra, MAX_TAT, decide_all};
use super::policies::Policies;

/// Set in a TAT word that must not be updated any more: its entry is being replaced (quota
/// change) or removed (idle eviction). TATs are nanoseconds since the epoch, at most
/// [`MAX_TAT`] (2^63 − 1, in the year 2262: the GCRA holds them there), so the top bit is free.
const SEALED: u64 = MAX_TAT + 1;

/// Sweep for idle organizations when the map has grown to this many entries at least.
const DEFAULT_SWEEP_FLOOR: usize = 1024;

/// Quotas refilling faster than one cell per this are striped (see the type's docs).
const DEFAULT_STRIPE_BELOW: Duration = Duration::from_micros(10);

/// At most this many stripes per organization.
const MAX_STRIPES: usize = 8;

/// Fractional bits of the fixed-point cell counts used to carry state between quotas.
const FRAC: u32 = 32;

type Hasher = foldhash::fast::RandomState;

/// One GCRA word and the quota share it enforces, alone on its cache line.
#[repr(align(64))]
struct Cell {
    tat: AtomicU64,
    gcra: Gcra,
}

impl Cell {
    fn new(gcra: Gcra, tat: u64) -> Self {
        Self {
            tat: AtomicU64::new(tat.min(MAX_TAT)),
            gcra,
        }
    }
}

enum Cells {
    One(Cell),
    Striped(Box<[Cell]>),
}

/// One organization's state: the quota it was written under, and its cells.
struct OrgState {
    gcra: Gcra,
    cells: Cells,
}

impl OrgState {
    #[inline]
    fn cells(&self) -> &[Cell] {
        match &self.cells {
            Cells::One(c) => std::slice::from_ref(c),
            Cells::Striped(cs) => cs,
        }
    }
}

/// Cells in use (fixed point, `FRAC` fractional bits, rounded up) of a word at `now`.
fn used(tat: u64, now: u64, gcra: &Gcra) -> u128 {
    let interval = gcra.interval_nanos();
    if interval == 0 {
        return 0;
    }
    if tat >= MAX_TAT && tat > now {
        // Held at the end of time: its true debt is unknown, so every cell counts as used.
        return u128::from(gcra.limit()) << FRAC;
    }
    (u128::from(tat.saturating_sub(now)) << FRAC).div_ceil(u128::from(interval))
}

/// The TAT at `now` of a word of quota `gcra` with `used` cells in use (rounded up, capped at
/// an exhausted bucket).
fn tat_for(used: u128, now: u64, gcra: &Gcra) -> u64 {
    let debt = (used * u128::from(gcra.interval_nanos())).div_ceil(1 << FRAC);
    let debt = u64::try_from(debt)
        .unwrap_or(u64::MAX)
        .min(gcra.capacity_nanos());
    now.saturating_add(debt).min(MAX_TAT)
}

/// The TAT of a one-cell state of quota `from` carried over to quota `to` at `now`, exactly as
/// this backend carries its state on a plan change (cells in use kept, rounded up, capped at an
/// exhausted bucket). Shared with the Redis backend so both decide alike.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) fn carry_over(tat: u64, now: u64, from: &Gcra, to: &Gcra) -> u64 {
    let now = now.min(MAX_TAT);
    tat_for(used(tat.min(MAX_TAT), now, from), now, to)
}

/// The TATs of states of policies `from` (`tats`, nanoseconds) carried over to policies `to` at
/// `now`, exactly as this backend carries a several-policy state: each new policy starts with
/// the largest count of cells in use among the old ones, capped at its quota. Shared with the
/// Redis backend so both decide alike.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) fn carry_over_many(from: &[Gcra], tats: &[u64], now: u64, to: &[Gcra]) -> Vec<u64> {
    let now = now.min(MAX_TAT);
    let tats: Vec<u64> = tats.iter().map(|t| (*t).min(MAX_TAT)).collect();
    carried(max_used(from, &tats, now), now, to).into_vec()
}

/// The largest power of two not above `n` (`n >= 1`).
fn prev_power_of_two(n: usize) -> usize {
    1 << (usize::BITS - 1 - n.max(1).leading_zeros())
}

/// This thread's stripe preference, assigned round-robin to threads on first use.
#[inline]
fn thread_slot() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local!(static SLOT: usize = NEXT.fetch_add(1, Ordering::Relaxed));
    SLOT.try_with(|s| *s).unwrap_or(0)
}

/// One organization's state under several policies: their quotas and TATs, under one lock,
/// so that a request is decided against all of them and spends all or none.
struct MultiState {
    inner: Mutex<MultiInner>,
}

struct MultiInner {
    gcras: SmallVec<[Gcra; 3]>,
    tats: SmallVec<[u64; 3]>,
    /// Set when the entry leaves the map (swept, or carried over to a one-policy state): a
    /// request that finds it set looks the organization up again.
    removed: bool,
}

impl MultiState {
    fn new(gcras: SmallVec<[Gcra; 3]>, tats: SmallVec<[u64; 3]>) -> Self {
        Self {
            inner: Mutex::new(MultiInner {
                gcras,
                tats,
                removed: false,
            }),
        }
    }

    /// The lock. The state is integers written only after a whole decision, so a poisoned
    /// lock (a panic elsewhere while holding it) still holds a consistent state.
    fn lock(&self) -> MutexGuard<'_, MultiInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The largest number of cells in use (fixed point) among policies `gcras` with states `tats`.
fn max_used(gcras: &[Gcra], tats: &[u64], now: u64) -> u128 {
    gcras
        .iter()
        .zip(tats)
        .map(|(g, t)| used(*t, now, g))
        .max()
        .unwrap_or(0)
}

/// The states of policies `gcras` that each have `used` cells in use at `now`.
fn carried(used: u128, now: u64, gcras: &[Gcra]) -> SmallVec<[u64; 3]> {
    gcras.iter().map(|g| tat_for(used, now, g)).collect()
}

/// Decide against states given as nanoseconds.
fn decide_on(gcras: &[Gcra], tats: &[u64], now: Timestamp, cost: u32) -> Decisions {
    let tats: SmallVec<[Timestamp; 3]> = tats
        .iter()
        .map(|t| Timestamp::from_unix_nanos(*t))
        .collect();
    decide_all(gcras, &tats, now, cost)
}

struct Inner {
    orgs: papaya::HashMap<OrgId, OrgState, Hasher>,
    /// Organizations limited by several policies at once.
    multi: papaya::HashMap<OrgId, MultiState, Hasher>,
    /// Whether `multi` ever held an entry: until then a new one-policy state has nothing to
    /// carry over from it and skips the look-up.
    any_multi: AtomicBool,
    /// Map size at which the next insertion triggers a sweep; `usize::MAX` while one runs.
    next_sweep: AtomicUsize,
    sweep_floor: usize,
    stripes: usize,
    stripe_below: u64,
}

/// The in-process [`RateLimitBackend`]: GCRA per organization, lock-free, never over quota.
///
/// - **State:** one lock-free map ([`papaya`]) from [`OrgId`] to a cache-line-aligned
///   `AtomicU64` TAT. A request reads the map without locking and admits itself with one
///   compare-and-swap on its organization's TAT; a refusal writes nothing. No per-organization
///   mutex, no global lock. Exact: concurrent requests never admit more than the quota (each
///   admission is a successful CAS from the TAT it was decided on), and the figures are
///   those of [`Gcra::decide`].
/// - **Very large quotas are striped.** One word written by every admitted request is one
///   cache line bouncing between cores: two threads admitting on one organization run slower
///   together than one alone. This can only happen to an organization admitted hundreds of
///   thousands of times a second, so only quotas refilling faster than one cell per 10 µs
///   (over 6 million requests a minute) are split into stripes, one per core (rounded down to
///   a power of two, at most 8), each a GCRA with its share of the quota. A thread admits itself on its own stripe and looks at
///   the others only when its own refuses; refusals still write nothing. What this trades:
///   the quota is still never exceeded (the stripes' bounds add up to the quota's, see
///   [`gcra`](super::gcra)), but a striped organization can be refused while a few cells
///   remain spread over stripes, refills per stripe (so a stripe that sits full wastes its
///   share of the refill), and `X-RateLimit-Remaining` on an admitted request is its stripe's
///   figure scaled to the quota. At those rates a few cells and microseconds are noise; every
///   quota a plan table realistically holds (Free, Paid, enterprise quotas up to millions a
///   minute) stays exact to the cell.
/// - **Plan changes:** the state remembers the [`Gcra`] it was written under. A request
///   carrying another quota *seals* the state (sets the top bit of each word, which freezes
///   it: every other writer's CAS now fails) and replaces the entry by the state carried over
///   to the new quota (cells used are kept, as [`Gcra::convert`]). Any thread that meets a
///   sealed entry helps finish the replacement, so nothing waits on a stalled thread.
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
            .field("stripes", &self.inner.stripes)
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
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::with_config(floor, cores, DEFAULT_STRIPE_BELOW)
    }

    pub(crate) fn with_config(floor: usize, stripes: usize, stripe_below: Duration) -> Self {
        let floor = floor.max(1);
        Self {
            inner: Arc::new(Inner {
                orgs: papaya::HashMap::builder().hasher(Hasher::default()).build(),
                multi: papaya::HashMap::builder().hasher(Hasher::default()).build(),
                any_multi: AtomicBool::new(false),
                next_sweep: AtomicUsize::new(floor),
                sweep_floor: floor,
                // A power of two, so a thread finds its stripe with a mask.
                stripes: prev_power_of_two(stripes.clamp(1, MAX_STRIPES)),
                stripe_below: crate::clock::duration_nanos(stripe_below),
            }),
        }
    }

    /// Organizations with state (idle ones not yet swept included).
    pub fn len(&self) -> usize {
        self.inner.orgs.len() + self.inner.multi.len()
    }

    /// Whether no organization has state.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A fresh state for `gcra` with `used` cells in use at `now`.
    fn state(&self, gcra: &Gcra, used: u128, now: u64) -> OrgState {
        let n = gcra.limit();
        let k = if gcra.interval_nanos() < self.inner.stripe_below {
            prev_power_of_two(
                self.inner
                    .stripes
                    .min(usize::try_from(n).unwrap_or(usize::MAX)),
            ) as u64
        } else {
            1
        };
        let cells = if k == 1 {
            Cells::One(Cell::new(*gcra, tat_for(used, now, gcra)))
        } else {
            let period = gcra.period();
            let cells = (0..k)
                .map(|i| {
                    // Shares of N as even as possible; each stripe carries its share of the
                    // cells in use.
                    let share = n / k + u64::from(i < n % k);
                    let g = Gcra::new(u32::try_from(share).unwrap_or(u32::MAX), period);
                    let part = (used * u128::from(share)).div_ceil(u128::from(n));
                    Cell::new(g, tat_for(part, now, &g))
                })
                .collect();
            Cells::Striped(cells)
        };
        OrgState { gcra: *gcra, cells }
    }

    /// Decide and record a request: the synchronous form of [`RateLimitBackend::check`].
    #[inline]
    pub fn decide(&self, org: &OrgId, gcra: &Gcra, cost: u32, now: Timestamp) -> Decision {
        let now_ns = now.as_unix_nanos().min(MAX_TAT);
        let now = Timestamp::from_unix_nanos(now_ns);
        let orgs = self.inner.orgs.pin();
        loop {
            // By `&OrgId`, not `&str`: the key in the map is a clone of the same `Arc` as the
            // record's organization, so equality is a pointer comparison, not a `memcmp`.
            let Some(state) = orgs.get(org) else {
                // A state under several policies (a plan change) is carried over.
                let in_use = self.take_multi(org, now_ns);
                if in_use == 0 {
                    let d = gcra.decide(Timestamp::EPOCH, now, cost);
                    if !d.allowed || d.tat.as_unix_nanos() <= now_ns {
                        // Nothing to remember: refused, or free and the bucket still full.
                        return d;
                    }
                }
                if orgs
                    .try_insert(org.clone(), self.state(gcra, in_use, now_ns))
                    .is_ok()
                {
                    self.maybe_sweep(now);
                }
                continue; // decide against the entry now in the map
            };
            if state.gcra != *gcra {
                self.replace(&orgs, org, state, gcra, now_ns);
                continue;
            }
            match Self::decide_in(state, cost, now) {
                Some(d) => return d,
                None => self.replace(&orgs, org, state, gcra, now_ns),
            }
        }
    }

    /// Decide on the cells of `state`; `None` if it is sealed.
    #[inline]
    fn decide_in(state: &OrgState, cost: u32, now: Timestamp) -> Option<Decision> {
        let cells = state.cells();
        let k = cells.len();
        // `k` is a power of two (see `with_config`), or 1.
        let mask = k - 1;
        let own = thread_slot() & mask;
        // For a striped refusal: the figures summed over the stripes.
        let mut remaining = 0u64;
        let mut reset = 0u64;
        let mut retry_after = u64::MAX;
        let mut last = None;
        for j in 0..k {
            let i = (own + j) & mask;
            let cell = &cells[i];
            let mut current = cell.tat.load(Ordering::Acquire);
            loop {
                if current & SEALED != 0 {
                    return None;
                }
                let d = cell
                    .gcra
                    .decide(Timestamp::from_unix_nanos(current), now, cost);
                if !d.allowed {
                    remaining = remaining.saturating_add(d.info.remaining);
                    reset = reset.max(d.info.reset);
                    if u64::from(cost) <= cell.gcra.limit() {
                        retry_after = retry_after.min(d.info.retry_after);
                    }
                    last = Some(d);
                    break;
                }
                let new = d.tat.as_unix_nanos().min(MAX_TAT);
                if new != current {
                    if let Err(actual) = cell.tat.compare_exchange_weak(
                        current,
                        new,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        current = actual;
                        continue;
                    }
                }
                return Some(if k == 1 {
                    d
                } else {
                    Decision {
                        info: RateLimitInfo {
                            limit: state.gcra.limit(),
                            // This stripe's figure, scaled to the whole quota.
                            remaining: u64::try_from(
                                u128::from(d.info.remaining) * u128::from(state.gcra.limit())
                                    / u128::from(cell.gcra.limit().max(1)),
                            )
                            .unwrap_or(u64::MAX),
                            ..d.info
                        },
                        ..d
                    }
                });
            }
        }
        let d = last?;
        if k == 1 {
            return Some(d);
        }
        Some(Decision {
            allowed: false,
            tat: d.tat,
            info: RateLimitInfo {
                limit: state.gcra.limit(),
                remaining,
                reset,
                retry_after: if retry_after == u64::MAX {
                    state.gcra.period().as_secs().max(1)
                } else {
                    retry_after
                },
            },
        })
    }

    /// Seal every word of `state` (idempotent) and return the cells in use, from the frozen
    /// values.
    fn seal(state: &OrgState, now: u64) -> u128 {
        state
            .cells()
            .iter()
            .map(|c| {
                let frozen = c.tat.fetch_or(SEALED, Ordering::AcqRel) & MAX_TAT;
                used(frozen, now, &c.gcra)
            })
            .sum()
    }

    /// Replace `state` by its state carried over to `gcra` (or help whoever is doing so).
    fn replace<G: papaya::Guard>(
        &self,
        orgs: &papaya::HashMapRef<'_, OrgId, OrgState, Hasher, G>,
        org: &OrgId,
        state: &OrgState,
        gcra: &Gcra,
        now: u64,
    ) {
        let in_use = Self::seal(state, now);
        let fresh = self.state(gcra, in_use, now);
        let mut fresh = Some(fresh);
        let result = orgs.compute(org.clone(), |entry| match (entry, fresh.take()) {
            (Some((_, v)), Some(new)) if std::ptr::eq(v, state) => Operation::Insert(new),
            _ => Operation::Abort(()),
        });
        if let Compute::Updated { .. } = result {
            tracing::trace!(org_id = %org, "rate-limit state carried over");
        }
    }

    /// Decide a request against every request policy of `policies` at once, and with
    /// [`Spend::Commit`] spend all of them if all admit it: the synchronous form of
    /// [`RateLimitBackend::check_policies`]. One lock per organization (a `Mutex` held for
    /// the decision only) makes the all-or-nothing spend atomic.
    pub fn decide_policies(
        &self,
        org: &OrgId,
        policies: &Policies,
        cost: u32,
        now: Timestamp,
        spend: Spend,
    ) -> Decisions {
        let now_ns = now.as_unix_nanos().min(MAX_TAT);
        let now = Timestamp::from_unix_nanos(now_ns);
        let gcras: SmallVec<[Gcra; 3]> = policies.rates().iter().map(|r| *r.gcra()).collect();
        let multi = self.inner.multi.pin();
        loop {
            let Some(state) = multi.get(org) else {
                // A one-policy state (a plan change) is carried over; a dry run only reads it.
                let in_use = match spend {
                    Spend::Commit => self.take_single(org, now_ns),
                    Spend::DryRun => self.single_used(org, now_ns),
                };
                let tats = carried(in_use, now_ns, &gcras);
                let d = decide_on(&gcras, &tats, now, cost);
                let idle = d.each().iter().all(|e| e.tat.as_unix_nanos() <= now_ns);
                if spend == Spend::DryRun || (in_use == 0 && (!d.allowed() || idle)) {
                    return d;
                }
                self.inner.any_multi.store(true, Ordering::Release);
                match multi.try_insert(org.clone(), MultiState::new(gcras.clone(), tats)) {
                    Ok(_) => self.maybe_sweep(now),
                    Err(lost) => {
                        // Another request inserted first: keep the stricter of both states.
                        let mut mine = lost.not_inserted.lock();
                        let mut theirs = lost.current.lock();
                        if !theirs.removed && theirs.gcras == mine.gcras {
                            for (t, m) in theirs.tats.iter_mut().zip(mine.tats.iter_mut()) {
                                *t = (*t).max(*m);
                            }
                        }
                    }
                }
                continue; // decide against the entry now in the map
            };
            let mut inner = state.lock();
            if inner.removed {
                continue;
            }
            if !policies.same_rates(&inner.gcras) {
                let in_use = max_used(&inner.gcras, &inner.tats, now_ns);
                let tats = carried(in_use, now_ns, &gcras);
                if spend == Spend::DryRun {
                    return decide_on(&gcras, &tats, now, cost);
                }
                inner.gcras = gcras.clone();
                inner.tats = tats;
            }
            let d = decide_on(&inner.gcras, &inner.tats, now, cost);
            if d.allowed() && spend == Spend::Commit {
                for (t, e) in inner.tats.iter_mut().zip(d.each()) {
                    *t = e.tat.as_unix_nanos().min(MAX_TAT);
                }
            }
            return d;
        }
    }

    /// Give back `cost` cells of every policy of `org` decided under `gcras` ([`Gcra::refund`]),
    /// if its state is still written under them (after a plan change there is nothing to give
    /// back to). Striped states are not refunded (their cells are spread over stripes).
    pub fn give_back(&self, org: &OrgId, gcras: &[Gcra], cost: u32, now: Timestamp) {
        if let [gcra] = gcras {
            let orgs = self.inner.orgs.pin();
            if let Some(state) = orgs.get(org) {
                if let (true, [cell]) = (state.gcra == *gcra, state.cells()) {
                    let mut current = cell.tat.load(Ordering::Acquire);
                    while current & SEALED == 0 {
                        let new = gcra
                            .refund(Timestamp::from_unix_nanos(current), now, cost)
                            .as_unix_nanos();
                        match cell.tat.compare_exchange_weak(
                            current,
                            new,
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        ) {
                            Ok(_) => break,
                            Err(actual) => current = actual,
                        }
                    }
                }
                return;
            }
        }
        let multi = self.inner.multi.pin();
        if let Some(state) = multi.get(org) {
            let mut inner = state.lock();
            if inner.removed || inner.gcras.as_slice() != gcras {
                return;
            }
            let MultiInner { gcras, tats, .. } = &mut *inner;
            for (g, t) in gcras.iter().zip(tats.iter_mut()) {
                *t = g
                    .refund(Timestamp::from_unix_nanos(*t), now, cost)
                    .as_unix_nanos();
            }
        }
    }

    /// Remove `org`'s one-policy state, if any, and return its cells in use at `now`.
    fn take_single(&self, org: &OrgId, now: u64) -> u128 {
        let orgs = self.inner.orgs.pin();
        let Some(state) = orgs.get(org) else {
            return 0;
        };
        let in_use = Self::seal(state, now);
        let _ = orgs.remove_if(org, |_, v| std::ptr::eq(v, state));
        in_use
    }

    /// The cells in use of `org`'s one-policy state at `now`, read only.
    fn single_used(&self, org: &OrgId, now: u64) -> u128 {
        let orgs = self.inner.orgs.pin();
        orgs.get(org).map_or(0, |state| {
            state
                .cells()
                .iter()
                .map(|c| used(c.tat.load(Ordering::Acquire) & MAX_TAT, now, &c.gcra))
                .sum()
        })
    }

    /// Remove `org`'s several-policy state, if any, and return the largest count of cells in
    /// use among its policies at `now`.
    fn take_multi(&self, org: &OrgId, now: u64) -> u128 {
        if !self.inner.any_multi.load(Ordering::Acquire) {
            return 0;
        }
        let multi = self.inner.multi.pin();
        let Some(state) = multi.get(org) else {
            return 0;
        };
        let in_use = {
            let mut inner = state.lock();
            if inner.removed {
                return 0;
            }
            inner.removed = true;
            max_used(&inner.gcras, &inner.tats, now)
        };
        let _ = multi.remove_if(org, |_, v| std::ptr::eq(v, state));
        in_use
    }

    /// The figures of `org` at `now` under `gcra`, spending nothing.
    pub fn peek(&self, org: &OrgId, gcra: &Gcra, now: Timestamp) -> RateLimitInfo {
        let now_ns = now.as_unix_nanos().min(MAX_TAT);
        let orgs = self.inner.orgs.pin();
        let tat = match orgs.get(org.as_str()) {
            Some(state) => match state.cells() {
                [one] if state.gcra == *gcra => one.tat.load(Ordering::Acquire) & MAX_TAT,
                cells => {
                    let in_use: u128 = cells
                        .iter()
                        .map(|c| used(c.tat.load(Ordering::Acquire) & MAX_TAT, now_ns, &c.gcra))
                        .sum();
                    tat_for(in_use, now_ns, gcra)
                }
            },
            None => 0,
        };
        gcra.peek(Timestamp::from_unix_nanos(tat), now)
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
            let idle = |sealing: bool| {
                state.cells().iter().all(|c| {
                    let v = if sealing {
                        c.tat.fetch_or(SEALED, Ordering::AcqRel)
                    } else {
                        c.tat.load(Ordering::Acquire)
                    };
                    (v & MAX_TAT) <= now_ns
                })
            };
            // Look first, then seal (freezing the words: no request can admit itself on an
            // entry being removed) and look again at the frozen values. An entry sealed but
            // found busy stays sealed; the next request replaces it with the same state.
            if idle(false)
                && idle(true)
                && orgs
                    .remove_if(org.as_str(), |_, v| std::ptr::eq(v, state))
                    .is_ok_and(|r| r.is_some())
            {
                removed += 1;
            }
        }
        let multi = self.inner.multi.pin();
        for (org, state) in multi.iter() {
            let idle = {
                let mut inner = state.lock();
                let idle = !inner.removed && inner.tats.iter().all(|t| *t <= now_ns);
                if idle {
                    inner.removed = true;
                }
                idle
            };
            if idle
                && multi
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

    fn check_policies(
        &self,
        org: &OrgId,
        policies: &Arc<Policies>,
        cost: u32,
        now: Timestamp,
        spend: Spend,
    ) -> PoliciesCheck {
        PoliciesCheck::ready(Ok(self.decide_policies(org, policies, cost, now, spend)))
    }

    fn refund(&self, org: &OrgId, gcras: &[Gcra], cost: u32, now: Timestamp) {
        self.give_back(org, gcras, cost, now);
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

    #[test]
    fn huge_quotas_are_striped_and_never_exceed_the_quota() {
        let l = MemoryRateLimiter::with_config(1024, 4, DEFAULT_STRIPE_BELOW);
        let g = Gcra::new(100_000, Duration::from_millis(100)); // one cell per µs
        let org = OrgId::from("hot");
        l.decide(&org, &g, 0, t(0));
        let admitted = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                let (l, org, g, admitted) = (&l, &org, &g, &admitted);
                s.spawn(move || {
                    for _ in 0..40_000 {
                        if l.decide(org, g, 1, t(0)).allowed {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        {
            let orgs = l.inner.orgs.pin();
            assert_eq!(orgs.get("hot").unwrap().cells().len(), 4);
        }
        // A refused thread looks at every stripe, so no cell is left behind.
        assert_eq!(admitted.load(Ordering::Relaxed), 100_000);
        let d = l.decide(&org, &g, 1, t(0));
        assert!(!d.allowed);
        assert_eq!(d.info.remaining, 0);
        assert_eq!(d.info.retry_after, 1);
        assert_eq!(l.peek(&org, &g, t(0)).remaining, 0);
        // Everything refills within the period; the idle state is swept.
        assert_eq!(l.sweep(t(1)), 1);
    }

    #[test]
    fn stripe_counts_are_powers_of_two() {
        assert_eq!(prev_power_of_two(1), 1);
        assert_eq!(prev_power_of_two(3), 2);
        assert_eq!(prev_power_of_two(8), 8);
        let l = MemoryRateLimiter::with_config(1024, 8, Duration::MAX);
        let org = OrgId::from("org");
        // Three requests per period: two stripes, and all three cells usable from one thread.
        let g = Gcra::new(3, Duration::from_secs(1));
        for _ in 0..3 {
            assert!(l.decide(&org, &g, 1, t(0)).allowed);
        }
        assert!(!l.decide(&org, &g, 1, t(0)).allowed);
        let orgs = l.inner.orgs.pin();
        assert_eq!(orgs.get("org").unwrap().cells().len(), 2);
    }

    #[test]
    fn usual_quotas_are_never_striped() {
        let l = MemoryRateLimiter::with_config(1024, 8, DEFAULT_STRIPE_BELOW);
        let org = OrgId::from("org");
        // Six million a minute is one cell per 10 µs: still exact.
        let g = Gcra::new(6_000_000, Duration::from_secs(60));
        assert!(l.decide(&org, &g, 1, t(0)).allowed);
        let orgs = l.inner.orgs.pin();
        assert_eq!(orgs.get("org").unwrap().cells().len(), 1);
    }

    #[test]
    fn cells_carry_over_between_exact_and_striped() {
        let l = MemoryRateLimiter::with_config(1024, 2, DEFAULT_STRIPE_BELOW);
        let org = OrgId::from("org");
        let free = Gcra::new(100, Duration::from_secs(60));
        let big = Gcra::new(1_000_000, Duration::from_secs(1)); // striped
        for _ in 0..100 {
            assert!(l.decide(&org, &free, 1, t(0)).allowed);
        }
        assert_eq!(l.peek(&org, &big, t(0)).remaining, 999_900);
        let d = l.decide(&org, &big, 1, t(0));
        assert!(d.allowed);
        // Back to free: the 101 cells in use exhaust it.
        let d = l.decide(&org, &free, 1, t(0));
        assert!(!d.allowed);
        assert_eq!(d.info.reset, 1_700_000_060);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Striped state (forced on, 2 stripes) still never admits more than
        /// `N + ⌊W·N/period⌋` cells in any window `W`, and a fresh organization still gets
        /// its whole burst.
        #[test]
        fn striped_state_respects_every_window(
            n in 3u32..=40,
            period_ms in 1u64..=5_000,
            events in proptest::collection::vec((0u64..=400, 0u32..=3), 1..300),
        ) {
            let l = MemoryRateLimiter::with_config(1024, 2, Duration::MAX);
            let period = Duration::from_millis(period_ms);
            let g = Gcra::new(n, period);
            let org = OrgId::from("org");
            let start = t(0).as_unix_nanos();
            for _ in 0..n {
                proptest::prop_assert!(l.decide(&org, &g, 1, t(0)).allowed);
            }
            proptest::prop_assert!(!l.decide(&org, &g, 1, t(0)).allowed);
            let mut admitted = vec![(start, u64::from(n))];
            let mut now = start;
            let step = period_ms * 1_000_000 / u64::from(n);
            for (gap, cost) in events {
                now += gap * step / 100;
                let d = l.decide(&org, &g, cost, Timestamp::from_unix_nanos(now));
                proptest::prop_assert!(d.info.remaining <= u64::from(n));
                if d.allowed {
                    admitted.push((now, u64::from(cost)));
                } else {
                    proptest::prop_assert!(d.info.retry_after >= 1);
                }
            }
            let p = u128::from(period_ms) * 1_000_000;
            for i in 0..admitted.len() {
                let mut sum = 0u64;
                for j in i..admitted.len() {
                    sum += admitted[j].1;
                    let w = u128::from(admitted[j].0 - admitted[i].0);
                    let bound = u128::from(n) + w * u128::from(n) / p;
                    proptest::prop_assert!(u128::from(sum) <= bound,
                        "{} cells in {} ns, bound {}", sum, w, bound);
                }
            }
        }

        /// Unstriped, the backend gives exactly the pure GCRA's decisions, figures included.
        #[test]
        fn exact_backend_agrees_with_the_pure_math(
            n in 1u32..=200,
            period_ms in 1u64..=120_000,
            events in proptest::collection::vec((0u64..=300, 0u32..=3), 1..300),
        ) {
            let l = MemoryRateLimiter::new();
            let g = Gcra::new(n, Duration::from_millis(period_ms));
            let org = OrgId::from("org");
            let step = period_ms * 1_000_000 / u64::from(n);
            let mut tat = Timestamp::EPOCH;
            let mut now = t(0).as_unix_nanos();
            for (gap, cost) in events {
                now += gap * step / 100;
                let at = Timestamp::from_unix_nanos(now);
                let expected = g.decide(tat, at, cost);
                let got = l.decide(&org, &g, cost, at);
                proptest::prop_assert_eq!(got.allowed, expected.allowed);
                proptest::prop_assert_eq!(got.info, expected.info);
                tat = expected.tat;
            }
        }
    }
}
