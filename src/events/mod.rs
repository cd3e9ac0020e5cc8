//! Events for people and machines: what happened to keys and organizations, delivered to
//! [`EventSink`]s off the request path (feature `events`).
//!
//! Whoever notices something calls [`Events::emit`]: it pushes into one bounded queue per sink
//! and never waits. A queue that is full drops the event and counts it
//! ([`Events::dropped`]): a stuck webhook cannot slow a request. One delivery task per sink
//! takes the events in order and retries a failed delivery with exponential backoff and jitter
//! ([`Retry`]) before going on, so a receiver sees every event at least once, in the order of
//! their ids.
//!
//! ```
//! use std::time::Duration;
//! use tower_api_key::events::{Actor, EventKind, Events, RecentEvents, TracingSink};
//! use tower_api_key::{KeyId, OrgId};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let recent = RecentEvents::new(100);
//! let (events, delivery) = Events::builder()
//!     .sink(TracingSink)
//!     .sink(recent.clone())
//!     .start();
//!
//! events.emit(
//!     &OrgId::from("org_1"),
//!     EventKind::KeyRevoked { key_id: KeyId::from("key_1"), actor: Actor::user("ops@example.com") },
//! );
//!
//! // At shutdown: deliver what is queued, for at most the deadline.
//! delivery.shutdown(Duration::from_secs(5)).await;
//! assert_eq!(recent.list(&OrgId::from("org_1")).len(), 1);
//! # });
//! ```
//!
//! Events carry an id, a time and the organization, never a secret: keys appear by their
//! [`KeyId`] only.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::clock::{Clock, Timestamp};
use crate::ids::{KeyId, OrgId};

mod audit;
mod signals;
mod sink;
#[cfg(feature = "webhook")]
pub mod webhook;

pub use signals::{Signals, UNAUTHENTICATED};
pub use sink::{BoxedSink, DynEventSink, EventSink, RecentEvents, SinkError, TracingSink};

/// Who did something (moved to [`audit`](crate::audit); re-exported here).
pub use crate::audit::Actor;

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventKind {
    /// A key was created.
    KeyCreated {
        /// The new key.
        key_id: KeyId,
        /// Who created it.
        actor: Actor,
    },
    /// A key was revoked.
    KeyRevoked {
        /// The revoked key.
        key_id: KeyId,
        /// Who revoked it.
        actor: Actor,
    },
    /// A key was rotated: `new_key_id` replaces `key_id`.
    KeyRotated {
        /// The key replaced.
        key_id: KeyId,
        /// Its replacement.
        new_key_id: KeyId,
        /// Who rotated it.
        actor: Actor,
    },
    /// A key's name, scopes or policy changed.
    KeyUpdated {
        /// The key.
        key_id: KeyId,
        /// Who changed it.
        actor: Actor,
    },
    /// The organization's plan changed.
    PlanChanged {
        /// The new plan's name.
        plan: String,
        /// Who changed it.
        actor: Actor,
    },
    /// A key was found where it should not be (a public repository, a paste) and revoked.
    KeyLeaked {
        /// The key.
        key_id: KeyId,
        /// Where it was found, as reported.
        url: Option<String>,
        /// Who reported it (e.g. `github`, `public_revoke`).
        source: String,
    },
    /// A revoked or expired key is still being presented: a leak signal.
    DeadKeyPresented {
        /// The key.
        key_id: KeyId,
        /// `revoked` or `expired`.
        status: &'static str,
        /// How many times it was presented since the last such event.
        times: u64,
    },
    /// A key will expire soon.
    KeyExpiring {
        /// The key.
        key_id: KeyId,
        /// When it expires, in Unix seconds.
        expires_at: u64,
    },
    /// The organization's use of a quota crossed a level ([`Signals`]).
    UsageThreshold {
        /// The policy's name (the plan's for a single request policy, `sessions`).
        policy: String,
        /// `requests` or `sessions`.
        unit: &'static str,
        /// The level crossed, in percent.
        percent: u8,
        /// The quota's limit.
        limit: u64,
        /// The window the level is reported once in, in seconds.
        window_secs: u64,
    },
    /// A client address started to be blocked for sending too many invalid keys
    /// ([`Signals`]); its organization is [`UNAUTHENTICATED`].
    InvalidKeyBurst {
        /// The client address (an IPv6 client is blocked by its `/64`).
        client: String,
        /// Invalid keys counted when the block started.
        attempts: u64,
    },
}

impl EventKind {
    /// The event's type as in its JSON (`key_created`, …).
    pub fn name(&self) -> &'static str {
        match self {
            Self::KeyCreated { .. } => "key_created",
            Self::KeyRevoked { .. } => "key_revoked",
            Self::KeyRotated { .. } => "key_rotated",
            Self::KeyUpdated { .. } => "key_updated",
            Self::PlanChanged { .. } => "plan_changed",
            Self::KeyLeaked { .. } => "key_leaked",
            Self::DeadKeyPresented { .. } => "dead_key_presented",
            Self::KeyExpiring { .. } => "key_expiring",
            Self::UsageThreshold { .. } => "usage_threshold",
            Self::InvalidKeyBurst { .. } => "invalid_key_burst",
        }
    }
}

/// One event: an id, a time, the organization, and what happened.
///
/// Serialized as `{"id": "evt_…", "at": <unix ms>, "org_id": "…", "type": "key_revoked", …}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Event {
    /// Unique, and increasing in the order events were emitted by one process.
    pub id: String,
    /// When it happened, in Unix milliseconds.
    pub at: u64,
    /// The organization concerned.
    pub org_id: OrgId,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// Ids that sort in emission order within a process and do not collide across replicas.
fn event_id(at: Timestamp) -> String {
    crate::audit::time_ordered_id("evt_", at)
}

/// How a delivery task retries a failed delivery: exponential backoff with full jitter,
/// from `initial` doubling up to `max_delay`, for at most `max_attempts` attempts (then the
/// event is given up, logged and counted in [`Events::failed`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Retry {
    /// The first backoff.
    pub initial: Duration,
    /// The longest backoff.
    pub max_delay: Duration,
    /// Attempts in all, the first included.
    pub max_attempts: u32,
}

impl Default for Retry {
    /// 0.5 s doubling to 5 minutes, 12 attempts: about half an hour of retrying.
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            max_delay: Duration::from_secs(300),
            max_attempts: 12,
        }
    }
}

impl Retry {
    /// A policy of `max_attempts` attempts, backing off from `initial` up to `max_delay`.
    pub fn new(initial: Duration, max_delay: Duration, max_attempts: u32) -> Self {
        Self {
            initial,
            max_delay,
            max_attempts: max_attempts.max(1),
        }
    }

    /// The wait before attempt `attempt + 1` (after `attempt` failures): uniformly random in
    /// `[d/2, d]`, `d = min(initial · 2^(attempt-1), max_delay)`.
    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .initial
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(31))
            .min(self.max_delay);
        let mut byte = [0u8; 1];
        let r = if getrandom::fill(&mut byte).is_ok() {
            byte[0]
        } else {
            255
        };
        exp / 2 + exp / 2 * u32::from(r) / 255
    }
}

/// Counts shared by an [`Events`] handle and its delivery tasks.
#[derive(Debug, Default)]
struct Counters {
    emitted: AtomicU64,
    dropped: AtomicU64,
    delivered: AtomicU64,
    failed: AtomicU64,
}

/// The handle that emits events. Cheap to clone; every clone feeds the same queues.
#[derive(Clone)]
pub struct Events {
    queues: Arc<[mpsc::Sender<Arc<Event>>]>,
    counters: Arc<Counters>,
    clock: Clock,
}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Events")
            .field("sinks", &self.queues.len())
            .field("counters", &self.counters)
            .finish()
    }
}

impl Events {
    /// Start configuring the sinks.
    pub fn builder() -> EventsBuilder {
        EventsBuilder {
            sinks: Vec::new(),
            capacity: 1024,
            retry: Retry::default(),
            clock: Clock::system(),
        }
    }

    /// Emit an event for `org`. Never waits: a full queue drops the event (counted in
    /// [`dropped`](Self::dropped)). Returns the event's id.
    pub fn emit(&self, org: &OrgId, kind: EventKind) -> String {
        let at = self.clock.now();
        let event = Arc::new(Event {
            id: event_id(at),
            at: at.as_unix_millis(),
            org_id: org.clone(),
            kind,
        });
        self.counters.emitted.fetch_add(1, Ordering::Relaxed);
        for queue in self.queues.iter() {
            if queue.try_send(event.clone()).is_err() {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        event.id.clone()
    }

    /// The [`ExpiryReminder::on_expiring`](crate::manage::ExpiryReminder::on_expiring) callback
    /// that emits [`EventKind::KeyExpiring`] for each key, once:
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use std::time::Duration;
    /// use tower_api_key::{MemoryStore, events::{Events, TracingSink}, manage::ExpiryReminder};
    /// let (events, _delivery) = Events::builder().sink(TracingSink).start();
    /// let reminder = ExpiryReminder::new(MemoryStore::new(), Duration::from_secs(7 * 86_400))
    ///     .on_expiring(events.on_expiring());
    /// # let _ = reminder; });
    /// ```
    pub fn on_expiring(&self) -> impl Fn(&crate::store::KeyRecord) + Send + Sync + 'static {
        let events = self.clone();
        move |key| {
            let expires_at = key.expires_at.map_or(0, Timestamp::as_unix_secs);
            events.emit(
                &key.org_id,
                EventKind::KeyExpiring {
                    key_id: key.id.clone(),
                    expires_at,
                },
            );
        }
    }

    /// Events emitted.
    pub fn emitted(&self) -> u64 {
        self.counters.emitted.load(Ordering::Relaxed)
    }

    /// Deliveries dropped because a sink's queue was full (or its task had stopped).
    pub fn dropped(&self) -> u64 {
        self.counters.dropped.load(Ordering::Relaxed)
    }

    /// Deliveries that succeeded.
    pub fn delivered(&self) -> u64 {
        self.counters.delivered.load(Ordering::Relaxed)
    }

    /// Deliveries given up after the last retry.
    pub fn failed(&self) -> u64 {
        self.counters.failed.load(Ordering::Relaxed)
    }

    /// Events waiting in the fullest queue.
    pub fn queue_depth(&self) -> usize {
        self.queues
            .iter()
            .map(|q| q.max_capacity() - q.capacity())
            .max()
            .unwrap_or(0)
    }
}

/// Configures and starts [`Events`]; from [`Events::builder`].
pub struct EventsBuilder {
    sinks: Vec<BoxedSink>,
    capacity: usize,
    retry: Retry,
    clock: Clock,
}

impl fmt::Debug for EventsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventsBuilder")
            .field("sinks", &self.sinks.len())
            .field("capacity", &self.capacity)
            .field("retry", &self.retry)
            .finish()
    }
}

impl EventsBuilder {
    /// Deliver to `sink` too, through its own queue and task.
    #[must_use]
    pub fn sink(mut self, sink: impl EventSink) -> Self {
        self.sinks.push(BoxedSink::new(sink));
        self
    }

    /// Events each sink's queue holds before dropping (default 1,024).
    #[must_use]
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity.max(1);
        self
    }

    /// How failed deliveries are retried (default [`Retry::default`]).
    #[must_use]
    pub fn retry(mut self, retry: Retry) -> Self {
        self.retry = retry;
        self
    }

    /// Stamp events with `clock` (tests use a manual clock).
    #[must_use]
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Spawn one delivery task per sink on the current tokio runtime.
    pub fn start(self) -> (Events, Delivery) {
        let counters = Arc::new(Counters::default());
        let (stop, stop_rx) = watch::channel(());
        let mut tasks = JoinSet::new();
        let mut queues = Vec::with_capacity(self.sinks.len());
        for sink in self.sinks {
            let (tx, rx) = mpsc::channel(self.capacity);
            queues.push(tx);
            tasks.spawn(deliver(
                sink,
                rx,
                stop_rx.clone(),
                self.retry,
                counters.clone(),
            ));
        }
        let events = Events {
            queues: queues.into(),
            counters,
            clock: self.clock,
        };
        let delivery = Delivery { tasks, stop };
        (events, delivery)
    }
}

/// The running delivery tasks; [`shutdown`](Self::shutdown) delivers what is queued.
/// Dropping it stops delivery at once.
#[derive(Debug)]
pub struct Delivery {
    tasks: JoinSet<()>,
    stop: watch::Sender<()>,
}

impl Delivery {
    /// Close the queues (later events are dropped and counted) and deliver what they hold, for
    /// at most `deadline`. Returns whether everything queued was handled (delivered or given
    /// up) in time.
    pub async fn shutdown(mut self, deadline: Duration) -> bool {
        let _ = self.stop.send(());
        let drained = tokio::time::timeout(deadline, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await
        .is_ok();
        if !drained {
            tracing::warn!(?deadline, "event delivery did not finish by the deadline");
            self.tasks.abort_all();
        }
        drained
    }
}

async fn deliver(
    sink: BoxedSink,
    mut queue: mpsc::Receiver<Arc<Event>>,
    mut stop: watch::Receiver<()>,
    retry: Retry,
    counters: Arc<Counters>,
) {
    loop {
        let event = tokio::select! {
            biased;
            event = queue.recv() => match event {
                Some(event) => event,
                None => break,
            },
            // Shutdown: refuse new events, then drain the queue (recv ends with None).
            _ = stop.changed() => {
                queue.close();
                continue;
            }
        };
        let mut attempt = 1;
        loop {
            match EventSink::deliver(&sink, &event).await {
                Ok(()) => {
                    counters.delivered.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(e) if attempt >= retry.max_attempts => {
                    tracing::warn!(event = %event.id, error = %e, attempts = attempt, "event delivery given up");
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(e) => {
                    tracing::debug!(event = %event.id, error = %e, attempt, "event delivery failed; retrying");
                    tokio::time::sleep(retry.backoff(attempt)).await;
                    attempt += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_in_emission_order() {
        let at = Timestamp::from_unix_secs(1_700_000_000);
        let ids: Vec<_> = (0..100).map(|_| event_id(at)).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
        assert!(ids[0].starts_with("evt_"));
    }

    #[test]
    fn backoff_doubles_within_jitter_and_stops_at_the_cap() {
        let r = Retry::new(Duration::from_millis(100), Duration::from_millis(800), 10);
        for (attempt, full) in [(1, 100), (2, 200), (3, 400), (4, 800), (9, 800)] {
            let d = r.backoff(attempt);
            assert!(
                d >= Duration::from_millis(full / 2) && d <= Duration::from_millis(full),
                "attempt {attempt}: {d:?}"
            );
        }
    }

    #[test]
    fn events_serialize_flat_with_their_type() {
        let e = Event {
            id: "evt_1".into(),
            at: 5,
            org_id: OrgId::from("org_1"),
            kind: EventKind::KeyRevoked {
                key_id: KeyId::from("key_1"),
                actor: Actor::Key(KeyId::from("key_admin")),
            },
        };
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            serde_json::json!({"id":"evt_1","at":5,"org_id":"org_1","type":"key_revoked",
                "key_id":"key_1","actor":{"type":"key","id":"key_admin"}})
        );
    }
}
