//! [`LastUsedRecorder`]: when each key was last used, at no cost per request, nothing lost.
//!
//! Writing to the store on every request would turn every read into a database write. Instead
//! the layer marks the request's key in memory and a flusher task, started by you, writes all
//! marks since its last run in **one** [`KeyStore::touch_last_used`] call per interval.
//!
//! - **Request path**: reads the [`Principal`] that [`ApiKeyAuth`](crate::ApiKeyAuth) inserted
//!   and marks its key as used now, truncated to the granularity (default 1 s). The mark lives in
//!   the key's record snapshot, so it costs one relaxed atomic load while the time stays in the
//!   same granule; in a new granule, one `fetch_max`, and the first mark since the last flush
//!   pushes the record onto a lock-free list (one CAS, no allocation). No lock, no allocation, no
//!   store call. Without a `Principal` the layer fails closed: `500 auth_layer_missing` and an
//!   error log naming the missing `ApiKeyAuth`.
//! - **Flusher** ([`LastUsedRecorderLayer::spawn_flusher`]): every interval, takes the list,
//!   merges it with any marks a failed flush kept, and writes them in one batch. The store's
//!   update is forward-only, so a stale batch never moves a key's time backwards. A failed or
//!   timed-out flush keeps every mark and the next interval retries it, merged with newer marks.
//! - **Shutdown**: [`FlusherHandle::shutdown`] writes everything still pending before it returns.
//!   Call it after the server has stopped taking requests (axum: after `with_graceful_shutdown`
//!   resolves), as in the example below.
//! - **Usage** (opt-in, [`LastUsedRecorderLayer::meter_usage`]): the same marks count each
//!   request by outcome (accepted; refused by the rate limit, a scope check, the session
//!   quota) in a counter block of the key's snapshot, one atomic add per request, and the same
//!   flusher adds the counts to the store's minute, hour and day buckets in one
//!   [`KeyStore::record_usage`] call per interval; shutdown writes them too. Read them with
//!   [`KeyManager::usage`](crate::KeyManager::usage).
//! - **Memory** is bounded by the keys used since the last successful flush: each record is in the
//!   list at most once, however many requests used it. (A record is the store's snapshot of a
//!   key, shared by `Arc`; [`MemoryStore`](crate::MemoryStore) and caching stores hand out the
//!   same snapshot to every request. A store that builds a fresh record per lookup queues one per
//!   request and granule: put a cache in front of it.)
//!
//! Use one recorder per store: clones of the layer share their marks and flusher; marks of a
//! key go to the first recorder that queued it in each interval.
//!
//! The last-used times appear in [`KeyManager::list`](crate::KeyManager::list) and
//! [`get`](crate::KeyManager::get) once flushed.
//!
//! # Example: axum with graceful shutdown
//!
//! ```
//! use std::time::Duration;
//! use axum::{Extension, Router, routing::get};
//! use tower_api_key::{ApiKeyAuth, LastUsedRecorder, MemoryStore, Principal};
//!
//! async fn whoami(Extension(p): Extension<Principal>) -> String {
//!     p.key_id().to_string()
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = MemoryStore::new();
//! let recorder = LastUsedRecorder::new(store.clone()).granularity(Duration::from_secs(60));
//! let flusher = recorder.spawn_flusher(Duration::from_secs(30));
//!
//! let app: Router = Router::new()
//!     .route("/v1/whoami", get(whoami))
//!     .layer(recorder) // inner: runs after ApiKeyAuth has inserted the Principal
//!     .layer(ApiKeyAuth::new(store)); // outer
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! axum::serve(listener, app)
//!     // your shutdown signal, e.g. `async { tokio::signal::ctrl_c().await.ok(); }`
//!     .with_graceful_shutdown(std::future::ready(()))
//!     .await?;
//! // The server has drained its requests: write the marks of the last interval.
//! flusher.shutdown().await?;
//! # Ok(()) }
//! ```

mod flusher;
mod marks;

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;

pub use flusher::{FlushError, FlushStats, FlusherHandle};

use crate::clock::{Clock, Timestamp, duration_nanos};
use crate::future::inner_accessors;
use crate::ids::OrgId;
use crate::principal::Principal;
use crate::reject::{Responder, ResponseBody};
use crate::store::{KeyStore, MarkList, UsageCounts, UsageMeter, UsageOutcome, UsageRetention};
use flusher::Flush;

/// The response future of [`LastUsedRecorder`].
pub type ResponseFuture<F> = crate::future::ResponseFuture<F>;

/// The default granularity of marks: one second.
pub const DEFAULT_GRANULARITY: Duration = Duration::from_secs(1);

/// The default bound on one flush's store call: ten seconds.
pub const DEFAULT_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// What the request path needs, behind one `Arc` (or held by value inside an
/// [`ApiKeyStack`](crate::ApiKeyStack)).
#[derive(Clone)]
pub(crate) struct Recorder {
    /// Granularity in nanoseconds, at least 1.
    granularity: u64,
    clock: Clock,
    responder: Responder,
    list: Arc<MarkList>,
    flush_timeout: Duration,
    /// Counts requests by outcome when usage metering is on (into `list`).
    meter: UsageMeter,
    retention: UsageRetention,
}

impl Recorder {
    #[inline]
    fn mark(&self, principal: &Principal) {
        self.mark_at(principal, self.clock.now());
    }

    /// Mark `principal`'s key as used at `now` (read from [`clock`](Self::clock)).
    #[inline]
    pub(crate) fn mark_at(&self, principal: &Principal, now: Timestamp) {
        marks::mark(
            &self.list,
            principal.record(),
            now.as_unix_nanos(),
            self.granularity,
        );
        if self.meter.is_on() {
            self.meter.count(principal.record(), UsageOutcome::Accepted);
            principal.set_counted();
        }
    }

    /// The meter counting into this recorder's queue (off unless metering is on).
    pub(crate) fn meter(&self) -> &UsageMeter {
        &self.meter
    }

    /// The clock marks are read from.
    pub(crate) fn clock(&self) -> &Clock {
        &self.clock
    }
}

/// Records when each key was last used. Build its layer with [`LastUsedRecorder::new`].
///
/// See the [module docs](self) for how marks reach the store.
#[derive(Clone)]
pub struct LastUsedRecorder<S> {
    inner: S,
    core: Arc<Recorder>,
}

impl<S: fmt::Debug> fmt::Debug for LastUsedRecorder<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LastUsedRecorder")
            .field("inner", &self.inner)
            .field("granularity", &Duration::from_nanos(self.core.granularity))
            .finish_non_exhaustive()
    }
}

impl LastUsedRecorder<()> {
    /// The layer writing to `store`, with the defaults: 1 s granularity, coarse clock, 10 s
    /// flush timeout, problem+json rejections.
    ///
    /// Start its flusher with [`LastUsedRecorderLayer::spawn_flusher`].
    #[allow(clippy::new_ret_no_self)]
    pub fn new<St: KeyStore>(store: St) -> LastUsedRecorderLayer<St> {
        LastUsedRecorderLayer::new(store)
    }
}

/// Layer that adds [`LastUsedRecorder`], and the owner of its flusher. Cheap to clone; clones
/// share their marks.
///
/// ```
/// use std::time::Duration;
/// use tower_api_key::{Clock, LastUsedRecorder, MemoryStore};
///
/// let layer = LastUsedRecorder::new(MemoryStore::new())
///     .granularity(Duration::from_secs(60))
///     .clock(Clock::coarse())
///     .flush_timeout(Duration::from_secs(5));
/// ```
pub struct LastUsedRecorderLayer<St> {
    core: Arc<Recorder>,
    flush: Arc<Flush<St>>,
}

impl<St> Clone for LastUsedRecorderLayer<St> {
    fn clone(&self) -> Self {
        Self {
            core: self.core.clone(),
            flush: self.flush.clone(),
        }
    }
}

impl<St> fmt::Debug for LastUsedRecorderLayer<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LastUsedRecorderLayer")
            .field("granularity", &Duration::from_nanos(self.core.granularity))
            .field("clock", &self.core.clock)
            .field("flush_timeout", &self.core.flush_timeout)
            .finish_non_exhaustive()
    }
}

impl<St: KeyStore> LastUsedRecorderLayer<St> {
    /// The layer with the defaults (see [`LastUsedRecorder::new`]).
    pub(crate) fn new(store: St) -> Self {
        let list = Arc::new(MarkList::new());
        Self {
            core: Arc::new(Recorder {
                granularity: duration_nanos(DEFAULT_GRANULARITY),
                clock: Clock::default(),
                responder: Responder::default(),
                list: list.clone(),
                flush_timeout: DEFAULT_FLUSH_TIMEOUT,
                meter: UsageMeter::new(None),
                retention: UsageRetention::default(),
            }),
            flush: Arc::new(Flush::new(store, list)),
        }
    }

    fn map(self, f: impl FnOnce(&mut Recorder)) -> Self {
        // The mark list is behind its own `Arc`, so a copied configuration keeps sharing it.
        let mut core = Arc::try_unwrap(self.core).unwrap_or_else(|arc| Recorder::clone(&arc));
        f(&mut core);
        Self {
            core: Arc::new(core),
            flush: self.flush,
        }
    }

    /// Truncate marks to this granularity (default 1 s; e.g. a minute). A zero granularity
    /// records the clock's full resolution, at the cost of an atomic read-modify-write per
    /// request whenever the clock has moved.
    pub fn granularity(self, granularity: Duration) -> Self {
        let nanos = duration_nanos(granularity).max(1);
        self.map(|c| c.granularity = nanos)
    }

    /// The clock marks are read from (default: [`Clock::coarse`]).
    pub fn clock(self, clock: Clock) -> Self {
        self.map(|c| c.clock = clock)
    }

    /// How a request without a [`Principal`] is answered (default: problem+json / gRPC 500).
    pub fn responder(self, responder: Responder) -> Self {
        self.map(|c| c.responder = responder)
    }

    /// How long one flush's store call may take before it counts as failed (its marks kept);
    /// default 10 s. Bounds [`FlusherHandle::shutdown`] when the store hangs.
    pub fn flush_timeout(self, timeout: Duration) -> Self {
        self.map(|c| c.flush_timeout = timeout)
    }

    /// Count requests per key by outcome (accepted; refused by the rate limit, a scope check,
    /// the session quota), and have the flusher add the counts to the store's usage buckets
    /// (minute, hour, day) in one [`KeyStore::record_usage`] call per interval, with the marks.
    /// Off by default. The counting costs one atomic add per request and allocates once per
    /// key snapshot; read the figures with [`KeyManager::usage`](crate::KeyManager::usage).
    /// Counts land in the minute of the flush that writes them (at most one interval after
    /// the request), and [`FlusherHandle::shutdown`] writes what is left.
    ///
    /// This layer (or the [`ApiKeyStack`](crate::ApiKeyStack) it joins) counts `accepted`; scope
    /// and session-quota refusals after it move that count to their reason. Rate-limit
    /// refusals happen before it: the stack counts them by itself, a separate
    /// [`OrgRateLimit`](crate::OrgRateLimit) layer once given [`usage_meter`](Self::usage_meter).
    ///
    /// ```
    /// use tower_api_key::{LastUsedRecorder, MemoryStore};
    /// let recorder = LastUsedRecorder::new(MemoryStore::new()).meter_usage(true);
    /// assert!(recorder.usage_meter().is_on());
    /// ```
    pub fn meter_usage(self, on: bool) -> Self {
        let list = self.core.list.clone();
        self.map(|c| c.meter = UsageMeter::new(on.then_some(list)))
    }

    /// How long usage buckets are kept (default: [`UsageRetention::default`]); the flusher
    /// deletes older ones every five minutes while metering is on.
    pub fn usage_retention(self, retention: UsageRetention) -> Self {
        self.map(|c| c.retention = retention)
    }

    /// The meter to give the layers that refuse requests before this one runs (a separate
    /// [`OrgRateLimitLayer::meter`](crate::rate_limit::OrgRateLimitLayer::meter)). Counts
    /// nothing unless [`meter_usage`](Self::meter_usage) is on.
    pub fn usage_meter(&self) -> UsageMeter {
        self.core.meter.clone()
    }

    /// Start the flusher: a task that writes the marks every `interval` (at least 1 ms) in one
    /// batched store call. Keep the handle and call [`FlusherHandle::shutdown`] when the server
    /// has stopped.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime, like [`tokio::spawn`].
    pub fn spawn_flusher(&self, interval: Duration) -> FlusherHandle {
        let interval = interval.max(Duration::from_millis(1));
        FlusherHandle::spawn(self.flush.clone(), interval, self.core.clone())
    }

    /// Write every pending mark now, in one batched store call; returns how many keys were
    /// written. On failure the marks are kept for the next flush. Flushes never overlap: this
    /// waits for one in progress.
    pub async fn flush(&self) -> Result<usize, FlushError> {
        self.flush.flush(&self.core).await
    }

    /// How the flushes went so far: count, failures, last duration, last success.
    pub fn flush_stats(&self) -> FlushStats {
        self.flush.stats()
    }

    /// The requests counted per organization since this recorder was made, as far as they
    /// have been written to the store (so behind by at most a flush interval), in no
    /// particular order. For per-organization metrics
    /// (`Telemetry::usage_by_org`, feature `metrics`); empty unless
    /// [`meter_usage`](Self::meter_usage) is on. One entry per organization seen.
    pub fn usage_by_org(&self) -> Vec<(OrgId, UsageCounts)> {
        self.flush.org_totals()
    }

    /// Whether no mark is waiting to be written.
    pub async fn is_flushed(&self) -> bool {
        self.flush.is_idle().await
    }

    /// Mark `principal`'s key as used now, as the layer does for each request. For code paths
    /// that do not go through the layer (a tonic interceptor, a websocket message loop).
    #[inline]
    pub fn mark(&self, principal: &Principal) {
        self.core.mark(principal);
    }

    /// The store marks are written to.
    pub fn store(&self) -> &St {
        &self.flush.store
    }

    /// The request path's configuration, for [`ApiKeyStack`](crate::ApiKeyStack).
    pub(crate) fn recorder(&self) -> &Recorder {
        &self.core
    }
}

impl<S, St> Layer<S> for LastUsedRecorderLayer<St> {
    type Service = LastUsedRecorder<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LastUsedRecorder {
            inner,
            core: self.core.clone(),
        }
    }
}

inner_accessors!(LastUsedRecorder<S>);

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for LastUsedRecorder<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let recorder = &*self.core;
        match req.extensions().get::<Principal>() {
            Some(principal) => recorder.mark(principal),
            None => {
                let headers = std::mem::take(req.headers_mut());
                return ResponseFuture::refused(crate::reject::missing_principal(
                    "LastUsedRecorder",
                    &recorder.responder,
                    headers,
                ));
            }
        }
        ResponseFuture::inner(self.inner.call(req), None)
    }
}
