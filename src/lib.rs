//! # tower-api-key
//!
//! API-key authentication for any [tower] service (axum, hyper, tonic), the way hosted API
//! platforms sell it: prefixed secret keys shown once and stored only as SHA-256 hashes,
//! per-key permission scopes, expiry, immediate revocation, rotation, and per-organization plans.
//!
//! ## Quick start
//!
//! ```
//! use axum::{Router, routing::post};
//! use tower_api_key::{ApiKeyAuth, KeyManager, MemoryStore, NewKey, OrgId, Principal, ScopeGuard, Scopes};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let store = MemoryStore::new();
//! let manager = KeyManager::new(store.clone());
//!
//! // Mint a key: the secret is returned once; only its hash is stored.
//! let created = manager
//!     .create(&OrgId::from("org_1"), NewKey::new("ci").scopes(Scopes::parse(["browser_sessions:create"])?))
//!     .await?;
//!
//! let app: Router = Router::new()
//!     .route(
//!         "/v1/browsers",
//!         post(|p: Principal| async move { format!("session for {}", p.org_id()) })
//!             .route_layer(ScopeGuard::require("browser_sessions:create")),
//!     )
//!     .layer(ApiKeyAuth::new(store));
//! # let _ = (app, created);
//! # Ok::<(), Box<dyn std::error::Error>>(()) }).unwrap();
//! ```
//!
//! Clients send `Authorization: Bearer br_live_…`. A missing or invalid key gets
//! `401 Invalid or missing API key`; see [`reject`] for every response a client can see.
//!
//! ## Pieces
//!
//! - [`KeyFormat`], [`ApiKey`], [`KeyHash`]: generating, checking and hashing keys.
//! - [`KeyStore`] with [`MemoryStore`] (the embedded default); [`KeyManager`] to create, list,
//!   revoke and rotate keys and set plans.
//! - Durable and shared stores (features `sqlite`, `postgres`) and [`CachedStore`] in front of
//!   them, with invalidation pushed between replicas; see [`store`].
//! - [`ApiKeyAuth`]: the layer that authenticates and inserts a [`Principal`].
//! - [`ApiKeyStack`]: authentication, rate limit, last-used marks and scope rules in one
//!   service, built with [`ApiKeyAuthLayer::rate_limit`] and friends ([`stack`]).
//! - [`ScopeGuard`]: per-route scope checks, or a [`ScopeRules`] table for hyper and tonic.
//! - [`LastUsedRecorder`]: when each key was last used, marked lock-free per request and written
//!   to the store in one batch per interval by a flusher task ([`last_used`]).
//! - [`OrgRateLimit`]: per-organization GCRA by plan with `X-RateLimit-*` headers (and the
//!   IETF `RateLimit-Policy` / `RateLimit` fields), several named limits per plan
//!   ([`rate_limit::Policies`]), and [`SessionQuota`] for concurrent-session leases
//!   ([`rate_limit`]); over Redis (feature `redis`), one limit and one session count shared by
//!   every replica.
//! - [`audit`]: who created, revoked, rotated or changed which key, and when; appended by
//!   [`KeyManager`] after each change.
//! - [`credits`]: balances a call spends, topped up daily or monthly, in memory, Redis or
//!   PostgreSQL.
//! - [`Clock`]: injectable time, so expiry is testable without sleeping.
//! - [`observe`]: what the request path reports on its rare transitions (usage levels crossed,
//!   invalid-key bursts, dead keys), and the brute-force guard
//!   ([`ApiKeyAuthLayer::invalid_key_limit`]); with `events`, as events and webhooks.
//! - `leaks` (feature `leaks`): the pattern secret scanners look for, GitHub's secret-scanning
//!   receiver and a public endpoint that revoke leaked keys.
//!
//! ## Features
//!
//! | feature | adds |
//! |---|---|
//! | `axum` | `Principal` / `Option<Principal>` extractors |
//! | `tonic` | `grpc::PrincipalExt` for `tonic::Request` |
//! | `sqlite` | `store::SqliteStore`: embedded durable store (sqlx, bundled SQLite) |
//! | `postgres` | `store::PostgresStore` and `store::PgInvalidations` (`LISTEN/NOTIFY`) |
//! | `redis` | `RedisRateLimiter` and `RedisSessions`: one rate limit and one session count shared by replicas |
//! | `events` | [`events`]: an event sink trait, non-blocking queues, delivery with retries |
//! | `webhook` | `events::webhook::WebhookSink`: Standard Webhooks signed delivery |
//! | `metrics` | `telemetry::Telemetry`: counters published through the `metrics` facade |
//! | `leaks` | [`leaks`]: the key pattern for secret scanners, GitHub's secret-scanning receiver and a public revoke endpoint |
//! | `cli` | the `tower-api-key` operator CLI (a binary; the library does not use clap): see the README's "Going to production" |
//!
//! [tower]: https://docs.rs/tower
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

// The README's examples compile and run as doctests.
// (Its "Leaked keys" section uses the `leaks` feature.)
#[cfg(all(doctest, feature = "axum", feature = "serve", feature = "leaks"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

mod bytes_eq;
mod future;
mod headers;
mod ids;
mod plan;
mod scopes;

#[cfg(feature = "admin")]
pub mod admin;
pub mod audit;
pub mod auth;
pub mod breaker;
pub mod client_addr;
pub mod clock;
pub mod credits;
#[cfg(feature = "dashboard")]
pub mod dashboard;
#[cfg(feature = "events")]
pub mod events;
pub mod key;
pub mod last_used;
#[cfg(feature = "leaks")]
pub mod leaks;
pub mod manage;
pub mod observe;
pub mod principal;
pub mod rate_limit;
pub mod reject;
pub mod scope;
pub mod sessions;
pub mod stack;
pub mod store;

#[cfg(feature = "axum")]
pub mod axum;
#[cfg(feature = "tonic")]
pub mod grpc;
#[cfg(feature = "serve")]
pub mod serve;
#[cfg(feature = "metrics")]
pub mod telemetry;

// Failing fast while a backend is down.
pub use breaker::{Breaker, BreakerConfig, BreakerState, BreakerStats};

// Keys and who holds them.
pub use clock::{Clock, ManualClock, Timestamp};
pub use ids::{KeyId, OrgId};
pub use key::{ApiKey, KeyFormat, KeyFormats, KeyHash, MalformedKey};
pub use plan::{Plan, Quota};
pub use principal::Principal;
pub use scopes::{InvalidScope, Scope, Scopes};

// Stores and key management.
pub use audit::{Actor, AuditAction, AuditEntry, AuditQuery};
pub use manage::{
    CreatedKey, ExpiryPolicy, KeyManager, KeyUsage, ManageError, NewKey, Rotation, UsageBucket,
    UsageReport,
};
pub use store::{
    BoxedStore, KeyChanges, KeyRecord, KeyStatus, KeyStore, MemoryStore, Metadata, StoreError,
    StoredKey,
};
pub use store::{CacheConfig, CachedStore, Invalidation};
pub use store::{
    Granularity, UsageCounts, UsageDelta, UsageMeter, UsageOutcome, UsageRetention, UsageRow,
};

// The layers, and the stack of all four as one service.
pub use auth::{ApiKeyAuth, ApiKeyAuthLayer};
pub use last_used::{FlushError, FlusherHandle, LastUsedRecorder, LastUsedRecorderLayer};
#[cfg(feature = "redis")]
pub use rate_limit::redis::RedisRateLimiter;
pub use rate_limit::{
    Cost, MemoryRateLimiter, OnBackendError, OrgRateLimit, OrgRateLimitLayer, QuotaPolicy,
    RateLimitBackend, RateLimitInfo,
};
pub use scope::{Requirement, ScopeGuard, ScopeGuardLayer, ScopeRules};
pub use stack::{ApiKeyStack, ApiKeyStackLayer};

// Concurrent-session quotas.
#[cfg(feature = "redis")]
pub use sessions::RedisSessions;
pub use sessions::{MemorySessions, SessionError, SessionLease, SessionQuota};

// Refusals.
pub use reject::{Rejection, Responder, ResponseBody};
