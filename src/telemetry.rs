//! Metrics through the [`metrics`](https://docs.rs/metrics) facade (feature `metrics`): wire it
//! to Prometheus, StatsD or OpenTelemetry with the exporter you already use.
//!
//! The layers keep their own counters (plain atomics, no facade call, no label lookup per
//! request); a [`Telemetry`] collector publishes them through the facade when asked
//! ([`publish`](Telemetry::publish), e.g. right before an exporter renders) or every interval
//! ([`spawn`](Telemetry::spawn)). Labels have bounded cardinality only: never a key, never a
//! key id, never an organization.
//!
//! | metric | type | labels | what |
//! |---|---|---|---|
//! | `tower_api_key_cache_misses_total` | counter | | key lookups [`CachedStore`] could not answer from memory |
//! | `tower_api_key_cache_backend_lookups_total` | counter | | lookups sent to the store behind the cache (single flight: ≤ misses) |
//! | `tower_api_key_cache_entries` | gauge | `kind` = `known` \| `unknown` | keys and unknown hashes cached now |
//! | `tower_api_key_cache_invalidations_total` | counter | | invalidations applied (local and pushed) |
//! | `tower_api_key_breaker_state` | gauge | `backend` = `store` \| `redis` | 0 closed, 1 half-open (probing), 2 open |
//! | `tower_api_key_breaker_opened_total` | counter | `backend` | times the breaker opened |
//! | `tower_api_key_breaker_refused_total` | counter | `backend` | calls refused without touching the backend |
//! | `tower_api_key_redis_checks_total` | counter | `result` = `ok` \| `error` \| `timeout` \| `skipped` | rate-limit checks asked of Redis |
//! | `tower_api_key_redis_fallbacks_total` | counter | | decisions made by the local limiter while Redis failed |
//! | `tower_api_key_events_total` | counter | `result` = `emitted` \| `dropped` \| `delivered` \| `failed` | events and their deliveries |
//! | `tower_api_key_events_queue_depth` | gauge | | events waiting in the fullest sink queue |
//!
//! ```
//! use tower_api_key::telemetry::Telemetry;
//! use tower_api_key::{CachedStore, MemoryStore};
//!
//! // Install your exporter's recorder first (e.g. metrics-exporter-prometheus), then:
//! let store = CachedStore::new(MemoryStore::new());
//! let telemetry = Telemetry::new().cache(&store);
//! telemetry.publish(); // before each scrape, or `telemetry.spawn(interval)`
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use metrics::{Unit, counter, describe_counter, describe_gauge, gauge};

use crate::breaker::{BreakerState, BreakerStats};
use crate::store::CachedStore;

/// Something whose counters [`Telemetry`] publishes.
trait Source: Send + Sync + 'static {
    fn publish(&self);
}

/// Publishes the counters of the pieces it was given through the `metrics` facade.
///
/// Cheap to clone. See the [module docs](self) for the metrics and their labels.
#[derive(Clone, Default)]
pub struct Telemetry {
    sources: Vec<Arc<dyn Source>>,
}

impl fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Telemetry")
            .field("sources", &self.sources.len())
            .finish()
    }
}

impl Telemetry {
    /// A collector with nothing to publish yet; describes every metric to the installed
    /// recorder (help text and units).
    pub fn new() -> Self {
        describe();
        Self::default()
    }

    /// Publish a cache's hits, misses, sizes and invalidations, and its store breaker.
    #[must_use]
    pub fn cache<S: Send + Sync + 'static>(mut self, store: &CachedStore<S>) -> Self {
        self.sources.push(Arc::new(store.clone()));
        self
    }

    /// Publish a Redis rate limiter's checks, errors and fallbacks, and its breaker.
    #[cfg(feature = "redis")]
    #[must_use]
    pub fn redis_limiter(mut self, limiter: &crate::rate_limit::redis::RedisRateLimiter) -> Self {
        self.sources.push(Arc::new(limiter.clone()));
        self
    }

    /// Publish the event counters and queue depth.
    #[cfg(feature = "events")]
    #[must_use]
    pub fn events(mut self, events: &crate::events::Events) -> Self {
        self.sources.push(Arc::new(events.clone()));
        self
    }

    /// Publish every counter now.
    pub fn publish(&self) {
        for source in &self.sources {
            source.publish();
        }
    }

    /// Publish every `interval` on a task of the current tokio runtime, until it is aborted.
    pub fn spawn(self, interval: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            loop {
                ticker.tick().await;
                self.publish();
            }
        })
    }
}

fn describe() {
    describe_counter!(
        "tower_api_key_cache_misses_total",
        Unit::Count,
        "Key lookups the cache could not answer from memory."
    );
    describe_counter!(
        "tower_api_key_cache_backend_lookups_total",
        Unit::Count,
        "Lookups sent to the store behind the cache."
    );
    describe_gauge!(
        "tower_api_key_cache_entries",
        Unit::Count,
        "Entries cached now, by kind (known keys, unknown hashes)."
    );
    describe_counter!(
        "tower_api_key_cache_invalidations_total",
        Unit::Count,
        "Cache invalidations applied."
    );
    describe_gauge!(
        "tower_api_key_breaker_state",
        "Breaker state by backend: 0 closed, 1 half-open, 2 open."
    );
    describe_counter!(
        "tower_api_key_breaker_opened_total",
        Unit::Count,
        "Times a breaker opened, by backend."
    );
    describe_counter!(
        "tower_api_key_breaker_refused_total",
        Unit::Count,
        "Calls refused by an open breaker, by backend."
    );
    describe_counter!(
        "tower_api_key_redis_checks_total",
        Unit::Count,
        "Rate-limit checks asked of Redis, by result."
    );
    describe_counter!(
        "tower_api_key_redis_fallbacks_total",
        Unit::Count,
        "Rate-limit decisions made locally while Redis failed."
    );
    describe_counter!(
        "tower_api_key_events_total",
        Unit::Count,
        "Events emitted, dropped on a full queue, delivered, and given up."
    );
    describe_gauge!(
        "tower_api_key_events_queue_depth",
        Unit::Count,
        "Events waiting in the fullest sink queue."
    );
}

fn publish_breaker(backend: &'static str, stats: &BreakerStats) {
    let state = match stats.state {
        BreakerState::Closed => 0.0,
        BreakerState::HalfOpen => 1.0,
        BreakerState::Open => 2.0,
    };
    gauge!("tower_api_key_breaker_state", "backend" => backend).set(state);
    counter!("tower_api_key_breaker_opened_total", "backend" => backend).absolute(stats.opened);
    counter!("tower_api_key_breaker_refused_total", "backend" => backend).absolute(stats.refused);
}

impl<S: Send + Sync + 'static> Source for CachedStore<S> {
    fn publish(&self) {
        let s = self.stats();
        counter!("tower_api_key_cache_misses_total").absolute(s.misses);
        counter!("tower_api_key_cache_backend_lookups_total").absolute(s.backend_lookups);
        gauge!("tower_api_key_cache_entries", "kind" => "known").set(s.entries as f64);
        gauge!("tower_api_key_cache_entries", "kind" => "unknown").set(s.negative_entries as f64);
        counter!("tower_api_key_cache_invalidations_total").absolute(s.invalidations);
        publish_breaker("store", &s.breaker);
    }
}

#[cfg(feature = "redis")]
impl Source for crate::rate_limit::redis::RedisRateLimiter {
    fn publish(&self) {
        let s = self.stats();
        let ok = s.checks.saturating_sub(s.errors + s.timeouts + s.skipped);
        for (result, n) in [
            ("ok", ok),
            ("error", s.errors),
            ("timeout", s.timeouts),
            ("skipped", s.skipped),
        ] {
            counter!("tower_api_key_redis_checks_total", "result" => result).absolute(n);
        }
        counter!("tower_api_key_redis_fallbacks_total").absolute(s.fallbacks);
        publish_breaker("redis", &s.breaker);
    }
}

#[cfg(feature = "events")]
impl Source for crate::events::Events {
    fn publish(&self) {
        for (result, n) in [
            ("emitted", self.emitted()),
            ("dropped", self.dropped()),
            ("delivered", self.delivered()),
            ("failed", self.failed()),
        ] {
            counter!("tower_api_key_events_total", "result" => result).absolute(n);
        }
        gauge!("tower_api_key_events_queue_depth").set(self.queue_depth() as f64);
    }
}
