//! The flush side: marks drained from the list into one batched store call per interval.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, Notify};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use super::marks::MarkList;
use crate::clock::Timestamp;
use crate::ids::KeyId;
use crate::store::{KeyStore, StoreError};

/// A flush of last-used marks failed. The marks are kept and written by the next flush.
#[derive(Debug, thiserror::Error)]
#[error("last-used flush failed; {pending} key marks kept for the next flush")]
pub struct FlushError {
    /// Why the store refused the batch.
    #[source]
    pub source: StoreError,
    /// How many keys still have a mark waiting to be written.
    pub pending: usize,
}

/// Marks drained from the list but not yet written, and the store to write them to.
pub(super) struct Flush<St> {
    pub(super) store: St,
    pub(super) list: Arc<MarkList>,
    /// Keys whose latest mark is not yet in the store: the last failed batch merged with newer
    /// marks. Also serializes flushes, so batches reach the store one at a time.
    pending: Mutex<HashMap<KeyId, Timestamp>>,
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
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// Drain the list and write every pending mark in one [`KeyStore::touch_last_used`] call.
    ///
    /// Cancel-safe: marks leave `pending` only once the store has accepted them.
    pub(super) async fn flush(&self, timeout: Duration) -> Result<usize, FlushError> {
        let mut pending = self.pending.lock().await;
        self.list.drain(|record, t| {
            pending
                .entry(record.id.clone())
                .and_modify(|old| *old = (*old).max(t))
                .or_insert(t);
        });
        if pending.is_empty() {
            return Ok(0);
        }
        let batch: Vec<(KeyId, Timestamp)> = pending.iter().map(|(k, t)| (k.clone(), *t)).collect();
        let written = match tokio::time::timeout(timeout, self.store.touch_last_used(&batch)).await
        {
            Ok(result) => result,
            Err(_) => Err(StoreError::Timeout),
        };
        match written {
            Ok(()) => {
                pending.clear();
                // Memory follows the keys used per interval: give back a burst's capacity.
                if pending.capacity() > 1024 {
                    pending.shrink_to(batch.len() / 2);
                }
                tracing::debug!(keys = batch.len(), "last-used marks flushed");
                Ok(batch.len())
            }
            Err(source) => {
                tracing::warn!(
                    error = %source, pending = pending.len(),
                    "last-used flush failed; marks kept for the next flush"
                );
                Err(FlushError {
                    source,
                    pending: pending.len(),
                })
            }
        }
    }

    /// Whether nothing waits to be written.
    pub(super) async fn is_idle(&self) -> bool {
        let pending = self.pending.lock().await;
        pending.is_empty() && self.list.is_empty()
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
    timeout: Duration,
}

impl<St: KeyStore> FinalFlush for FinalFlushOf<St> {
    fn run(&self) -> crate::store::BoxFuture<'_, Result<usize, FlushError>> {
        Box::pin(self.flush.flush(self.timeout))
    }
}

impl FlusherHandle {
    pub(super) fn spawn<St: KeyStore>(
        flush: Arc<Flush<St>>,
        interval: Duration,
        timeout: Duration,
    ) -> Self {
        let stop = Arc::new(Notify::new());
        let task = tokio::spawn(run(flush.clone(), interval, timeout, stop.clone()));
        Self {
            stop,
            task,
            final_flush: Box::new(FinalFlushOf { flush, timeout }),
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
    timeout: Duration,
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
                let _ = flush.flush(timeout).await;
            }
        }
    }
    flush.flush(timeout).await.map(|_| ())
}
