//! [`Signals`]: the [`Observer`] that turns the request path's rare transitions into events.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use super::{EventKind, Events};
use crate::ids::{KeyId, OrgId};
use crate::observe::{DeadKey, Observe, Observer, UsageCrossing, UsageUnit};

/// The organization of events about requests without a valid key: `_unauthenticated`.
pub const UNAUTHENTICATED: &str = "_unauthenticated";

/// At most this many (organization, policy, level) crossings are remembered for the
/// once-per-window rule; past it, crossings of new ones are not reported until old windows
/// end.
const MAX_CROSSINGS: usize = 100_000;

/// At most this many dead keys are counted between two flushes; presentations of further keys
/// are dropped (and counted in [`Signals::dead_keys_dropped`]).
const MAX_DEAD_KEYS: usize = 10_000;

/// Turns what the layers observe into events on an [`Events`] handle:
///
/// - `usage_threshold` ([`EventKind::UsageThreshold`]): an organization's use of a request
///   policy (or its session quota) crossed one of the [levels](Signals::levels) (80, 90,
///   100 %), at most once per organization, policy, level and window (fixed windows of the
///   policy's period, counted from the Unix epoch; a session quota's window is the lease);
/// - `invalid_key_burst` ([`EventKind::InvalidKeyBurst`], organization [`UNAUTHENTICATED`]):
///   the invalid-key guard started blocking an address, once per block;
/// - `dead_key_presented` ([`EventKind::DeadKeyPresented`]): a revoked or expired key was
///   presented; counted per key and emitted by [`flush`](Signals::flush) (or
///   [`spawn_flusher`](Signals::spawn_flusher)), once per key with the count since the last.
///
/// Give it to the layers with `.observe(..)`; cheap to clone, clones share their state.
///
/// ```
/// use std::time::Duration;
/// use tower_api_key::events::{Events, TracingSink};
/// use tower_api_key::{ApiKeyAuth, MemoryStore, OrgRateLimit};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let (events, _delivery) = Events::builder().sink(TracingSink).start();
/// let signals = events.signals();
/// let _flusher = signals.spawn_flusher(Duration::from_secs(60));
/// let stack = ApiKeyAuth::new(MemoryStore::new())
///     .invalid_key_limit(20, Duration::from_secs(60))
///     .rate_limit(OrgRateLimit::new())
///     .observe(&signals);
/// # let _ = stack; });
/// ```
#[derive(Clone)]
pub struct Signals {
    inner: Arc<Inner>,
    levels: Arc<[u8]>,
}

/// (organization, policy, unit, level): what a usage level is reported once per window for.
type Crossing = (OrgId, Box<str>, UsageUnit, u8);

struct Inner {
    events: Events,
    /// (organization, policy, unit, level) → (window index, window seconds) of the last report.
    crossings: Mutex<HashMap<Crossing, (u64, u64)>>,
    /// Dead keys presented since the last flush.
    dead: Mutex<HashMap<KeyId, (OrgId, DeadKey, u64)>>,
    dead_dropped: AtomicU64,
}

impl fmt::Debug for Signals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signals")
            .field("levels", &self.levels)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The maps hold counts only; a panic elsewhere leaves them usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Events {
    /// The [`Signals`] observer emitting on this handle: usage thresholds, invalid-key bursts
    /// and dead keys presented, as events.
    pub fn signals(&self) -> Signals {
        Signals {
            inner: Arc::new(Inner {
                events: self.clone(),
                crossings: Mutex::new(HashMap::new()),
                dead: Mutex::new(HashMap::new()),
                dead_dropped: AtomicU64::new(0),
            }),
            levels: Arc::from([80, 90, 100]),
        }
    }
}

impl Signals {
    /// The usage levels reported, in percent (default 80, 90, 100; each held in `1..=100`
    /// by [`Observe`], which sorts them). Set before giving the signals to a layer: a layer
    /// copies them.
    #[must_use]
    pub fn levels(mut self, levels: impl IntoIterator<Item = u8>) -> Self {
        self.levels = levels.into_iter().collect();
        self
    }

    /// Emit one `dead_key_presented` event per key presented since the last flush, with the
    /// count; returns how many were emitted.
    pub fn flush(&self) -> usize {
        let dead = std::mem::take(&mut *lock(&self.inner.dead));
        let n = dead.len();
        for (key_id, (org, status, times)) in dead {
            self.inner.events.emit(
                &org,
                EventKind::DeadKeyPresented {
                    key_id,
                    status: status.as_str(),
                    times,
                },
            );
        }
        n
    }

    /// [`flush`](Self::flush) every `interval` on a task of the current tokio runtime, until
    /// it is aborted.
    pub fn spawn_flusher(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        let signals = self.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                signals.flush();
            }
        })
    }

    /// Presentations of dead keys not counted because 10,000 keys were
    /// already waiting for the flush.
    pub fn dead_keys_dropped(&self) -> u64 {
        self.inner.dead_dropped.load(Ordering::Relaxed)
    }
}

impl Observer for Signals {
    fn levels(&self) -> Vec<u8> {
        self.levels.to_vec()
    }

    fn usage_crossed(&self, c: &UsageCrossing<'_>) {
        let window_secs = c.window.as_secs().max(1);
        let now_secs = c.now.as_unix_secs();
        let index = now_secs / window_secs;
        {
            let mut crossings = lock(&self.inner.crossings);
            let key = (c.org.clone(), Box::<str>::from(c.policy), c.unit, c.percent);
            if crossings.get(&key).is_some_and(|(i, _)| *i >= index) {
                return;
            }
            if crossings.len() >= MAX_CROSSINGS && !crossings.contains_key(&key) {
                // Forget the crossings of windows that ended.
                crossings.retain(|_, (i, w)| now_secs / *w <= *i);
                if crossings.len() >= MAX_CROSSINGS {
                    tracing::debug!("usage crossings table full; crossing not reported");
                    return;
                }
            }
            crossings.insert(key, (index, window_secs));
        }
        self.inner.events.emit(
            c.org,
            EventKind::UsageThreshold {
                policy: c.policy.to_owned(),
                unit: c.unit.as_str(),
                percent: c.percent,
                limit: c.limit,
                window_secs,
            },
        );
    }

    fn invalid_key_burst(&self, client: IpAddr, attempts: u64) {
        self.inner.events.emit(
            &OrgId::from(UNAUTHENTICATED),
            EventKind::InvalidKeyBurst {
                client: client.to_string(),
                attempts,
            },
        );
    }

    fn dead_key_presented(&self, org: &OrgId, key_id: &KeyId, status: DeadKey) {
        let mut dead = lock(&self.inner.dead);
        if let Some((_, s, times)) = dead.get_mut(key_id) {
            *s = status;
            *times += 1;
        } else if dead.len() < MAX_DEAD_KEYS {
            dead.insert(key_id.clone(), (org.clone(), status, 1));
        } else {
            self.inner.dead_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl From<Signals> for Observe {
    fn from(signals: Signals) -> Self {
        Observe::new(signals)
    }
}

impl From<&Signals> for Observe {
    fn from(signals: &Signals) -> Self {
        Observe::new(signals.clone())
    }
}
