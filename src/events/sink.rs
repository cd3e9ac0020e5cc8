//! Where events go: the [`EventSink`] trait and the sinks that need nothing else.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use super::Event;
use crate::ids::OrgId;

/// A delivery failed; the delivery task retries it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SinkError(#[source] pub Box<dyn std::error::Error + Send + Sync + 'static>);

impl SinkError {
    /// Wrap any error.
    pub fn new(e: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        Self(e.into())
    }
}

/// Somewhere events are delivered: a log, a webhook, a table.
///
/// Called by one delivery task per sink, one event at a time, in order; an `Err` is retried
/// (see [`Retry`](super::Retry)), so delivering the same event twice must be harmless (its
/// [`id`](Event::id) tells a receiver it has seen it).
pub trait EventSink: Send + Sync + 'static {
    /// Deliver one event.
    fn deliver(&self, event: &Event) -> impl Future<Output = Result<(), SinkError>> + Send;
}

/// The object-safe form of [`EventSink`], implemented for every sink.
pub trait DynEventSink: Send + Sync + 'static {
    /// Deliver one event.
    fn deliver<'a>(
        &'a self,
        event: &'a Event,
    ) -> Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send + 'a>>;
}

impl<S: EventSink> DynEventSink for S {
    fn deliver<'a>(
        &'a self,
        event: &'a Event,
    ) -> Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send + 'a>> {
        Box::pin(EventSink::deliver(self, event))
    }
}

/// Any sink, boxed.
#[derive(Clone)]
pub struct BoxedSink(Arc<dyn DynEventSink>);

impl BoxedSink {
    /// Box `sink`.
    pub fn new(sink: impl EventSink) -> Self {
        Self(Arc::new(sink))
    }
}

impl fmt::Debug for BoxedSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BoxedSink")
    }
}

impl EventSink for BoxedSink {
    async fn deliver(&self, event: &Event) -> Result<(), SinkError> {
        self.0.deliver(event).await
    }
}

/// Logs each event as a `tracing` event at INFO, target `tower_api_key::events`, with the event
/// as JSON in the field `event`.
#[derive(Clone, Copy, Debug, Default)]
pub struct TracingSink;

impl EventSink for TracingSink {
    async fn deliver(&self, event: &Event) -> Result<(), SinkError> {
        let json = serde_json::to_string(event).map_err(SinkError::new)?;
        tracing::info!(
            target: "tower_api_key::events",
            id = %event.id,
            kind = event.kind.name(),
            event = %json,
            "{}",
            event.kind.name()
        );
        Ok(())
    }
}

/// Keeps the latest events of each organization in memory, for a dashboard to list.
///
/// Bounded: at most `per_org` events per organization (the oldest go first).
#[derive(Clone, Debug)]
pub struct RecentEvents {
    per_org: usize,
    events: Arc<Mutex<HashMap<OrgId, VecDeque<Event>>>>,
}

impl RecentEvents {
    /// Keep the latest `per_org` events of each organization.
    pub fn new(per_org: usize) -> Self {
        Self {
            per_org: per_org.max(1),
            events: Arc::default(),
        }
    }

    /// The organization's kept events, newest first.
    pub fn list(&self, org: &OrgId) -> Vec<Event> {
        let events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        events
            .get(org)
            .map(|q| q.iter().rev().cloned().collect())
            .unwrap_or_default()
    }
}

impl EventSink for RecentEvents {
    async fn deliver(&self, event: &Event) -> Result<(), SinkError> {
        let mut events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        let queue = events.entry(event.org_id.clone()).or_default();
        // A retried delivery must not show twice.
        if queue.back().is_some_and(|last| last.id == event.id) {
            return Ok(());
        }
        if queue.len() == self.per_org {
            queue.pop_front();
        }
        queue.push_back(event.clone());
        Ok(())
    }
}
