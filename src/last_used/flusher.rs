//! The flush side: marks drained from the list into one batched store call per interval.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Mutex, Notify};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use super::Recorder;
use crate::clock::Timestamp;
use crate::ids::{KeyId, OrgId};
use crate::store::{Granularity, KeyStore, MarkList, StoreError, UsageCounts, UsageDelta};

/// A flush of last-used marks or usage counts failed. They are kept and written by the next
/// flush.
#[derive(Debug, thiserror::Error)]
#[error(
    "last-used flush failed; {pending} key marks and {pending_usage} usage buckets kept for the next flush"
)]
pub struct FlushError {
    /// Why the store refused the batch.
    #[source]
    pub source: StoreError,
    /// How many keys still have a mark waiting to be written.
    pub pending: usize,
    /// How many usage buckets (key and minute) still wait to be written.
    pub pending_usage: usize,
}

/// How often the flusher deletes usage buckets past their retention.
const PRUNE_EVERY: Duration = Duration::from_secs(300);

/// What was drained but not yet written.
#[derive(Default)]
struct Pending {
    /// Keys whose latest mark is not yet in the store: the last failed batch merged with newer
    /// marks.
    marks: HashMap<KeyId, Timestamp>,
    /// Counts not yet in the store, by key and the minute they were drained in (a retried
    /// batch keeps its minute).
    usage: HashMap<(KeyId, Timestamp), (OrgId, UsageCounts)>,
    /// When the flusher last pruned usage past its retention.
    pruned_at: Option<Timestamp>,
}

/// Marks and counts drained from the list but not yet written, and the store to write them to.
pub(super) struct Flush<St> {
    pub(super) store: St,
    pub(super) list: Arc<MarkList>,
    /// Also serializes flushes, so batches reach the store one at a time.
    pending: Mutex<Pending>,
    /// Flushes done, failed, and their timing, for [`FlushStats`].
    stats: FlushCounters,
    /// Counts written so far, per organization: what `Telemetry::usage_by_org` publishes.
    /// Added to by the flusher only (one lock per flush, never on the request path).
    org_totals: std::sync::Mutex<HashMap<OrgId, UsageCounts>>,
}

#[derive(Debug, Default)]
struct FlushCounters {
    flushes: AtomicU64,
    failures: AtomicU64,
    last_duration_ns: AtomicU64,
    /// Unix ns of the start of the last flush that succeeded; 0 before the first.
    last_success_ns: AtomicU64,
}

/// How the flushes of a [`LastUsedRecorderLayer`](super::LastUsedRecorderLayer) went: for
/// metrics (`Telemetry::last_used`, feature `metrics`) and health checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FlushStats {
    /// Flushes that wrote everything they drained.
    pub flushes: u64,
    /// Flushes the store refused (their marks and counts were kept for the next).
    pub failures: u64,
    /// How long the last flush took.
    pub last_duration: Duration,
    /// When the last successful flush started (marks made before it are in the store).
    pub last_success: Option<Timestamp>,
}

impl FlushStats {
    /// How far the store lags behind the marks at `now`: the time since the last successful
    /// flush started (zero before the first).
    pub fn lag(&self, now: Timestamp) -> Duration {
        self.last_success
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t))
    }
}

impl<St> fmt::Debug for Flush<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Flush")
            .field("list", &self.list)
            .finish_non_exhaustive()
    }
}

impl<St: KeyStore> Flush<St> {
    pub(super) fn new(store: St, list: Arc<MarkList>) -> Self {
        Self {
            store,
            list,
            pending: Mutex::new(Pending::default()),
            stats: FlushCounters::default(),
            org_totals: std::sync::Mutex::default(),
        }
    }

    /// The counts written so far, per organization, in no particular order.
    pub(super) fn org_totals(&self) -> Vec<(OrgId, UsageCounts)> {
        // A poisoned lock only means a thread panicked while adding: the totals are still
        // counts, at worst missing that one batch.
        let totals = self.org_totals.lock().unwrap_or_else(|e| e.into_inner());
        totals.iter().map(|(org, c)| (org.clone(), *c)).collect()
    }

    /// The flushes so far.
    pub(super) fn stats(&self) -> FlushStats {
        let s = &self.stats;
        let last = s.last_success_ns.load(Ordering::Relaxed);
        FlushStats {
            flushes: s.flushes.load(Ordering::Relaxed),
            failures: s.failures.load(Ordering::Relaxed),
            last_duration: Duration::from_nanos(s.last_duration_ns.load(Ordering::Relaxed)),
            last_success: (last > 0).then(|| Timestamp::from_unix_nanos(last)),
        }
    }

    /// [`flush_once`](Self::flush_once), counted in the stats.
    pub(super) async fn flush(&self, config: &Recorder) -> Result<usize, FlushError> {
        let started = Instant::now();
        let at = config.clock.now();
        let result = self.flush_once(config).await;
        let s = &self.stats;
        s.last_duration_ns.store(
            crate::clock::duration_nanos(started.elapsed()),
            Ordering::Relaxed,
        );
        match &result {
            Ok(_) => {
                s.flushes.fetch_add(1, Ordering::Relaxed);
                s.last_success_ns
                    .store(at.as_unix_nanos(), Ordering::Relaxed);
            }
            Err(_) => {
                s.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    /// Drain the list and write every pending mark in one [`KeyStore::touch_last_used`] call
    /// and every pending count in one [`KeyStore::record_usage`] call. Counts are attributed to
    /// the minute of the flush that drained them.
    ///
    /// Cancel-safe: marks and counts leave `pending` only once the store has accepted them.
    async fn flush_once(&self, config: &Recorder) -> Result<usize, FlushError> {
        let timeout = config.flush_timeout;
        let now = config.clock.now();
        let minute = Granularity::Minute.bucket(now);
        let mut guard = self.pending.lock().await;
        let pending = &mut *guard;
        self.list.drain(|record, t, counts| {
            if let Some(t) = t {
                pending
                    .marks
                    .entry(record.id.clone())
                    .and_modify(|old| *old = (*old).max(t))
                    .or_insert(t);
            }
            if !counts.is_zero() {
                pending
                    .usage
                    .entry((record.id.clone(), minute))
                    .or_insert_with(|| (record.org_id.clone(), UsageCounts::default()))
                    .1 += counts;
            }
        });
        let mut failure = None;
        let mut written = 0;
        if !pending.marks.is_empty() {
            let batch: Vec<(KeyId, Timestamp)> =
                pending.marks.iter().map(|(k, t)| (k.clone(), *t)).collect();
            match bounded(timeout, self.store.touch_last_used(&batch)).await {
                Ok(()) => {
                    pending.marks.clear();
                    // Memory follows the keys used per interval: give back a burst's capacity.
                    if pending.marks.capacity() > 1024 {
                        pending.marks.shrink_to(batch.len() / 2);
                    }
                    tracing::debug!(keys = batch.len(), "last-used marks flushed");
                    written = batch.len();
                }
                Err(source) => failure = Some(source),
            }
        }
        pending.usage.retain(|_, (_, c)| !c.is_zero());
        if !pending.usage.is_empty() {
            let batch: Vec<UsageDelta> = pending
                .usage
                .iter()
                .map(|((key_id, minute), (org_id, counts))| UsageDelta {
                    org_id: org_id.clone(),
                    key_id: key_id.clone(),
                    minute: *minute,
                    counts: *counts,
                })
                .collect();
            match bounded(timeout, self.store.record_usage(&batch)).await {
                Ok(()) => {
                    let mut totals = self.org_totals.lock().unwrap_or_else(|e| e.into_inner());
                    for delta in &batch {
                        *totals.entry(delta.org_id.clone()).or_default() += delta.counts;
                    }
                    drop(totals);
                    pending.usage.clear();
                    if pending.usage.capacity() > 1024 {
                        pending.usage.shrink_to(batch.len() / 2);
                    }
                    tracing::debug!(buckets = batch.len(), "usage counts flushed");
                }
                Err(source) => {
                    failure.get_or_insert(source);
                }
            }
        }
        if config.meter.is_on()
            && pending
                .pruned_at
                .is_none_or(|at| now >= at.saturating_add(PRUNE_EVERY))
        {
            pending.pruned_at = Some(now);
            for g in Granularity::ALL {
                let before = config.retention.cutoff(g, now);
                if let Err(error) = bounded(timeout, self.store.prune_usage(g, before)).await {
                    // Pruning again at the next turn is enough: nothing is lost by waiting.
                    tracing::warn!(%error, granularity = g.as_str(), "usage pruning failed");
                }
            }
        }
        match failure {
            None => Ok(written),
            Some(source) => {
                tracing::warn!(
                    error = %source, pending = pending.marks.len(),
                    pending_usage = pending.usage.len(),
                    "last-used flush failed; marks and counts kept for the next flush"
                );
                Err(FlushError {
                    source,
                    pending: pending.marks.len(),
                    pending_usage: pending.usage.len(),
                })
            }
        }
    }

    /// Whether nothing waits to be written.
    pub(super) async fn is_idle(&self) -> bool {
        let pending = self.pending.lock().await;
        pending.marks.is_empty() && pending.usage.is_empty() && self.list.is_empty()
    }
}

/// `write`, failed with [`StoreError::Timeout`] if it takes longer than `timeout`.
async fn bounded<T>(
    timeout: Duration,
    write: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(timeout, write).await {
        Ok(result) => result,
        Err(_) => Err(StoreError::Timeout),
    }
}

/// The handle of a flusher task started by
/// [`LastUsedRecorderLayer::spawn_flusher`](super::LastUsedRecorderLayer::spawn_flusher).
///
/// Call [`shutdown`](Self::shutdown) once the server has stopped taking requests: it writes
/// every mark still pending. Dropping the handle instead leaves the task running, flushing every
/// interval until the runtime stops (marks made after its last flush are then lost).
#[must_use = "call `shutdown().await` after the server stops, or the last interval's marks are lost"]
pub struct FlusherHandle {
    stop: Arc<Notify>,
    task: JoinHandle<Result<(), FlushError>>,
    final_flush: Box<dyn FinalFlush>,
}

impl fmt::Debug for FlusherHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlusherHandle")
            .field("finished", &self.task.is_finished())
            .finish_non_exhaustive()
    }
}

/// The last flush, run by [`FlusherHandle::shutdown`] itself if the task died.
trait FinalFlush: Send + Sync + 'static {
    fn run(&self) -> crate::store::BoxFuture<'_, Result<usize, FlushError>>;
}

struct FinalFlushOf<St> {
    flush: Arc<Flush<St>>,
    config: Arc<Recorder>,
}

impl<St: KeyStore> FinalFlush for FinalFlushOf<St> {
    fn run(&self) -> crate::store::BoxFuture<'_, Result<usize, FlushError>> {
        Box::pin(self.flush.flush(&self.config))
    }
}

impl FlusherHandle {
    pub(super) fn spawn<St: KeyStore>(
        flush: Arc<Flush<St>>,
        interval: Duration,
        config: Arc<Recorder>,
    ) -> Self {
        let stop = Arc::new(Notify::new());
        let task = tokio::spawn(run(flush.clone(), interval, config.clone(), stop.clone()));
        Self {
            stop,
            task,
            final_flush: Box::new(FinalFlushOf { flush, config }),
        }
    }

    /// Stop the task and write every mark still pending, then return.
    ///
    /// A flush in progress is finished first. On a store failure the marks stay in the recorder,
    /// so [`LastUsedRecorderLayer::flush`](super::LastUsedRecorderLayer::flush) can try again.
    pub async fn shutdown(self) -> Result<(), FlushError> {
        self.stop.notify_one();
        match self.task.await {
            Ok(result) => result,
            Err(error) => {
                // The task panicked (inside the store) or was cancelled: the marks are not in
                // the task but in the shared recorder, so write them from here.
                tracing::error!(%error, "last-used flusher task died; flushing from shutdown");
                self.final_flush.run().await.map(|_| ())
            }
        }
    }

    /// Whether the task has ended (after [`shutdown`](Self::shutdown), or if it panicked).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

async fn run<St: KeyStore>(
    flush: Arc<Flush<St>>,
    interval: Duration,
    config: Arc<Recorder>,
    stop: Arc<Notify>,
) -> Result<(), FlushError> {
    let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let stopped = stop.notified();
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            biased;
            () = &mut stopped => break,
            _ = ticker.tick() => {
                // A failure is logged and its marks kept; the next tick retries them.
                let _ = flush.flush(&config).await;
            }
        }
    }
    flush.flush(&config).await.map(|_| ())
}
