//! Metrics through the [`metrics`](https://docs.rs/metrics) facade (feature `metrics`): wire it
//! to Prometheus, StatsD or OpenTelemetry with the exporter you already use.
//!
//! The layers keep their own counters (plain atomics, no facade call, no label lookup per
//! request); a [`Telemetry`] collector publishes them through the facade when asked
//! ([`publish`](Telemetry::publish), e.g. right before an exporter renders) or every interval
//! ([`spawn`](Telemetry::spawn)). Labels have bounded cardinality only: never a key, never a
//! key id, and an organization only where you opt in ([`usage_by_org`](Telemetry::usage_by_org)).
//!
//! | metric | type | labels | what |
//! |---|---|---|---|
//! | `tower_api_key_auth_decisions_total` | counter | `result` = `accepted` \| `refused`; `reason` = `none` (accepted) \| `missing` \| `malformed` \| `unknown` \| `revoked` \| `expired` \| `disabled` \| `client_not_allowed` \| `too_many_invalid_keys` \| `key_in_query` \| `unavailable` | authentication decisions ([`auth`](Telemetry::auth), [`stack`](Telemetry::stack)) |
//! | `tower_api_key_store_lookup_duration_seconds` | histogram | | key lookups that waited on the store (not the ones a cache or memory answered at once) |
//! | `tower_api_key_store_lookup_errors_total` | counter | `kind` = `error` \| `timeout` \| `circuit_open` | key lookups that failed (answered 503) |
//! | `tower_api_key_rate_limit_decisions_total` | counter | `result` = `accepted` \| `refused` \| `error`; `plan` = `free` \| `paid` \| `enterprise` | rate-limit decisions ([`rate_limit`](Telemetry::rate_limit), [`stack`](Telemetry::stack)); `error`: the backend failed and no decision was made |
//! | `tower_api_key_session_acquires_total` | counter | `result` = `accepted` \| `refused` | session-quota acquires ([`sessions`](Telemetry::sessions)) |
//! | `tower_api_key_last_used_flushes_total` | counter | `result` = `ok` \| `error` | last-used and usage flushes ([`last_used`](Telemetry::last_used)) |
//! | `tower_api_key_last_used_flush_duration_seconds` | gauge | | how long the last flush took |
//! | `tower_api_key_last_used_flush_lag_seconds` | gauge | | time since the last successful flush started: how far the store lags behind |
//! | `tower_api_key_org_requests_total` | counter | `org_id`; `outcome` = `accepted` \| `rate_limited` \| `scope` \| `session_quota` | requests per organization as written by the usage flusher; only with [`usage_by_org`](Telemetry::usage_by_org), the one opt-in label |
//! | `tower_api_key_cache_hits_total` | counter | | key lookups [`CachedStore`] answered from memory (known keys and unknown hashes) |
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
//! The lookup-duration histogram is counted in fixed buckets ([`LOOKUP_BUCKETS`]) and
//! published with `record_many` at each bucket's upper bound: give the exporter the same
//! buckets (e.g. `PrometheusBuilder::set_buckets_for_metric`) and its bucket counts are exact;
//! its `_sum` is then an upper bound.
//!
//! The request-path counters carry no organization label: it would need a per-organization
//! map looked up (and grown) on the request path, which is the lock or allocation the
//! counters avoid, and would multiply the series by the organizations. Per-organization
//! figures come from the usage metering instead: [`KeyManager::usage`](crate::KeyManager::usage)
//! reads them back, and [`usage_by_org`](Telemetry::usage_by_org) publishes the flusher's
//! per-organization totals as `tower_api_key_org_requests_total{org_id}` for those who turn
//! it on and accept one series per organization.
//!
//! ```
//! use tower_api_key::telemetry::Telemetry;
//! use tower_api_key::{ApiKeyAuth, CachedStore, MemoryStore, OrgRateLimit};
//!
//! // Install your exporter's recorder first (e.g. metrics-exporter-prometheus), then:
//! let store = CachedStore::new(MemoryStore::new());
//! let stack = ApiKeyAuth::new(store.clone()).rate_limit(OrgRateLimit::new());
//! let telemetry = Telemetry::new().cache(&store).stack(&stack);
//! telemetry.publish(); // before each scrape, or `telemetry.spawn(interval)`
//! ```

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};

use crate::auth::counts::{AuthCounts, LOOKUP_ERRORS, REASONS};
use crate::breaker::{BreakerState, BreakerStats};
use crate::rate_limit::{LIMIT_RESULTS, LimitCounts, PLANS, RateLimitBackend};
use crate::sessions::{SessionBackend, SessionCounts};
use crate::store::{CachedStore, KeyStore};
use crate::{
    ApiKeyAuthLayer, ApiKeyStackLayer, LastUsedRecorderLayer, OrgRateLimitLayer, SessionQuota,
};

/// Upper bounds, in seconds, of the buckets of `tower_api_key_store_lookup_duration_seconds`
/// (one more bucket, `+Inf`, holds longer lookups; they are published at 5 s).
pub const LOOKUP_BUCKETS: &[f64] = &crate::auth::counts::LOOKUP_BUCKETS;

/// Where longer lookups than the last bucket are published.
const OVERFLOW_SECS: f64 = 5.0;

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

    /// Publish an [`ApiKeyAuth`](crate::ApiKeyAuth) layer's decisions, waited lookups and
    /// store errors.
    #[must_use]
    pub fn auth<St: KeyStore>(mut self, layer: &ApiKeyAuthLayer<St>) -> Self {
        self.sources
            .push(Arc::new(AuthSource::new(layer.counts().clone())));
        self
    }

    /// Publish an [`ApiKeyStack`](crate::ApiKeyStack)'s authentication and rate-limit
    /// decisions (as [`auth`](Self::auth) and [`rate_limit`](Self::rate_limit)).
    #[must_use]
    pub fn stack<St: KeyStore, B: RateLimitBackend>(
        mut self,
        layer: &ApiKeyStackLayer<St, B>,
    ) -> Self {
        let (auth, limit) = layer.counts();
        self.sources.push(Arc::new(AuthSource::new(auth.clone())));
        if let Some(limit) = limit {
            self.sources.push(Arc::new(LimitSource(limit.clone())));
        }
        self
    }

    /// Publish an [`OrgRateLimit`](crate::OrgRateLimit) layer's decisions by plan.
    #[must_use]
    pub fn rate_limit<B: RateLimitBackend>(mut self, layer: &OrgRateLimitLayer<B>) -> Self {
        self.sources
            .push(Arc::new(LimitSource(layer.limiter().counts().clone())));
        self
    }

    /// Publish a session quota's acquires.
    #[must_use]
    pub fn sessions<B: SessionBackend>(mut self, quota: &SessionQuota<B>) -> Self {
        self.sources
            .push(Arc::new(SessionSource(quota.counts().clone())));
        self
    }

    /// Publish a last-used recorder's flushes: count, last duration, lag.
    #[must_use]
    pub fn last_used<St: KeyStore>(mut self, layer: &LastUsedRecorderLayer<St>) -> Self {
        self.sources.push(Arc::new(FlushSource(layer.clone())));
        self
    }

    /// Also publish the requests counted per organization, by outcome
    /// (`tower_api_key_org_requests_total{org_id, outcome}`), from a recorder that meters usage
    /// ([`meter_usage`](crate::LastUsedRecorderLayer::meter_usage)).
    ///
    /// Opt in knowingly: one series per organization and outcome (four per organization), so
    /// a platform with 100,000 organizations gets 400,000 series. The request path pays
    /// nothing for it (the flusher adds each batch it writes), and the figures trail the
    /// requests by at most a flush interval.
    #[must_use]
    pub fn usage_by_org<St: KeyStore>(mut self, layer: &LastUsedRecorderLayer<St>) -> Self {
        self.sources.push(Arc::new(OrgUsageSource(layer.clone())));
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
        "tower_api_key_auth_decisions_total",
        Unit::Count,
        "Authentication decisions, by result and refusal reason."
    );
    describe_histogram!(
        "tower_api_key_store_lookup_duration_seconds",
        Unit::Seconds,
        "Key lookups that waited on the store."
    );
    describe_counter!(
        "tower_api_key_store_lookup_errors_total",
        Unit::Count,
        "Key lookups that failed, by kind."
    );
    describe_counter!(
        "tower_api_key_rate_limit_decisions_total",
        Unit::Count,
        "Rate-limit decisions, by result and plan."
    );
    describe_counter!(
        "tower_api_key_session_acquires_total",
        Unit::Count,
        "Session-quota acquires, by result."
    );
    describe_counter!(
        "tower_api_key_org_requests_total",
        Unit::Count,
        "Requests per organization, by outcome, as written by the usage flusher."
    );
    describe_counter!(
        "tower_api_key_last_used_flushes_total",
        Unit::Count,
        "Last-used and usage flushes, by result."
    );
    describe_gauge!(
        "tower_api_key_last_used_flush_duration_seconds",
        Unit::Seconds,
        "How long the last last-used flush took."
    );
    describe_gauge!(
        "tower_api_key_last_used_flush_lag_seconds",
        Unit::Seconds,
        "Time since the last successful last-used flush started."
    );
    describe_counter!(
        "tower_api_key_cache_hits_total",
        Unit::Count,
        "Key lookups the cache answered from memory."
    );
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
        counter!("tower_api_key_cache_hits_total").absolute(s.hits);
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

/// An authenticator's counters, and the waited-lookup buckets already published.
struct AuthSource {
    counts: Arc<AuthCounts>,
    published: Mutex<Vec<u64>>,
}

impl AuthSource {
    fn new(counts: Arc<AuthCounts>) -> Self {
        let buckets = counts.waited.len();
        Self {
            counts,
            published: Mutex::new(vec![0; buckets]),
        }
    }
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

impl Source for AuthSource {
    fn publish(&self) {
        let c = &self.counts;
        counter!("tower_api_key_auth_decisions_total", "result" => "accepted", "reason" => "none")
            .absolute(load(&c.accepted));
        for (reason, n) in REASONS.iter().zip(&c.refused) {
            counter!("tower_api_key_auth_decisions_total", "result" => "refused", "reason" => *reason)
                .absolute(load(n));
        }
        for (kind, n) in LOOKUP_ERRORS.iter().zip(&c.lookup_errors) {
            counter!("tower_api_key_store_lookup_errors_total", "kind" => *kind).absolute(load(n));
        }
        let histogram = histogram!("tower_api_key_store_lookup_duration_seconds");
        let mut published = self
            .published
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (i, (n, seen)) in c.waited.iter().zip(published.iter_mut()).enumerate() {
            let n = load(n);
            let new = n.saturating_sub(*seen);
            if new > 0 {
                let bound = LOOKUP_BUCKETS.get(i).copied().unwrap_or(OVERFLOW_SECS);
                histogram.record_many(bound, usize::try_from(new).unwrap_or(usize::MAX));
                *seen = n;
            }
        }
    }
}

struct LimitSource(Arc<LimitCounts>);

impl Source for LimitSource {
    fn publish(&self) {
        for (plan, results) in PLANS.iter().zip(&self.0.by_plan) {
            for (result, n) in LIMIT_RESULTS.iter().zip(results) {
                counter!("tower_api_key_rate_limit_decisions_total", "result" => *result, "plan" => *plan)
                    .absolute(load(n));
            }
        }
    }
}

struct SessionSource(Arc<SessionCounts>);

impl Source for SessionSource {
    fn publish(&self) {
        counter!("tower_api_key_session_acquires_total", "result" => "accepted")
            .absolute(load(&self.0.accepted));
        counter!("tower_api_key_session_acquires_total", "result" => "refused")
            .absolute(load(&self.0.refused));
    }
}

struct OrgUsageSource<St>(LastUsedRecorderLayer<St>);

impl<St: KeyStore> Source for OrgUsageSource<St> {
    fn publish(&self) {
        for (org, c) in self.0.usage_by_org() {
            for (outcome, n) in [
                ("accepted", c.accepted),
                ("rate_limited", c.rate_limited),
                ("scope", c.scope),
                ("session_quota", c.session_quota),
            ] {
                counter!(
                    "tower_api_key_org_requests_total",
                    "org_id" => org.as_str().to_owned(),
                    "outcome" => outcome
                )
                .absolute(u64::try_from(n).unwrap_or(0));
            }
        }
    }
}

struct FlushSource<St>(LastUsedRecorderLayer<St>);

impl<St: KeyStore> Source for FlushSource<St> {
    fn publish(&self) {
        let s = self.0.flush_stats();
        counter!("tower_api_key_last_used_flushes_total", "result" => "ok").absolute(s.flushes);
        counter!("tower_api_key_last_used_flushes_total", "result" => "error").absolute(s.failures);
        gauge!("tower_api_key_last_used_flush_duration_seconds").set(s.last_duration.as_secs_f64());
        let now = self.0.recorder().clock().now();
        gauge!("tower_api_key_last_used_flush_lag_seconds").set(s.lag(now).as_secs_f64());
    }
}
