//! One tiny axum app, served several ways, for the end-to-end load test (`scripts/load.sh`):
//!
//! - `--mode none`: no middleware;
//! - `--mode tower-http`: tower-http's `ValidateRequestHeaderLayer::bearer` (a static token);
//! - `--mode full`: this crate's full stack, ApiKeyAuth → OrgRateLimit → LastUsedRecorder →
//!   router → ScopeGuard, over a `MemoryStore` holding the key, its organization on an
//!   enterprise plan with a quota high enough never to refuse. The three outer layers are one
//!   `ServiceBuilder` given to one `Router::layer` call;
//! - `--mode full-separate`: the same with one `Router::layer` call per layer. axum wraps every
//!   such call around each route (a boxed, cloned service, a boxed future and a boxed body per
//!   request), which costs more than the layers themselves: compose them first;
//! - `--mode full-outer`: the same three layers wrapped around the whole router
//!   (`ServiceBuilder::service(router)`, served with `tower::make::Shared`), so axum adds no
//!   per-route wrapper for them;
//! - `--mode full-rules`: the scope check as a `ScopeRules` table in the same `ServiceBuilder`;
//! - `--mode none-headers`: no middleware, the handler adds the three `X-RateLimit-*` headers
//!   (static names, pre-encoded values): what those headers alone cost;
//! - `--mode fused`: the same four stages as one service, [`ApiKeyStack`] (the scope check as a
//!   `ScopeRules` table inside it), given to one `Router::layer` call: the recommended stack;
//! - `--mode fused-outer`: that one service wrapped around the whole router;
//! - `--mode fused-outer-route`: the same without the rule table, the scope checked by a
//!   per-route `route_layer(ScopeGuard::require(..))` instead: what axum's per-route wrapper
//!   costs;
//! - `--mode hand-rolled`: what a user writes by hand instead of this crate: an axum
//!   `middleware::from_fn_with_state` that parses the bearer key, hashes it with SHA-256, looks
//!   it up in an `Arc<RwLock<HashMap<[u8; 32], Record>>>`, checks revocation and expiry against
//!   `SystemTime::now()`, checks the route's scope, inserts its own principal (key id, org id,
//!   scopes) into the request's extensions, and limits per organization with governor's keyed
//!   limiter (the same quota as the other modes' plan), adding the same three `X-RateLimit-*`
//!   headers. No last-used tracking (the crate's modes record it).
//!
//! A bench target with `harness = false` (bench tooling stays out of `examples/`), built in the
//! `bench` profile (release settings) and run as a program. `cargo bench --no-run` builds it and
//! prints where the executable is; `scripts/load.sh` takes the `executable` field of
//! `--message-format=json`:
//!
//! ```text
//! cargo bench --bench load_target --no-run   # "Executable benches/load_target.rs (target/release/deps/load_target-<hash>)"
//! target/release/deps/load_target-<hash> --mode full --addr 127.0.0.1:18083 \
//!     --key br_live_0123456789abcdefghijABCDEFGHIJ01 [--threads 1]
//! cargo bench --bench load_target -- --mode full --addr 127.0.0.1:18083 --key br_live_…   # in one go
//! ```
//!
//! `cargo bench` passes `--bench` to the program, which ignores it. Run by a plain `cargo bench`
//! or `cargo test --all-targets` (no `--mode`, or a filter meant for other targets), it does
//! nothing and exits 0.
//!
//! Every mode answers `GET /` with `Hello, World!`; clients send `Authorization: Bearer <key>`
//! in every mode so the requests are byte for byte the same. Stops on Ctrl-C or SIGTERM.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::response::IntoResponse;
use axum::routing::get;
use http::{HeaderName, HeaderValue};
use tower::ServiceBuilder;
use tower_api_key::{
    ApiKeyAuth, KeyFormat, KeyHash, KeyId, KeyManager, KeyRecord, KeyStore, LastUsedRecorder,
    MemoryStore, OrgId, OrgRateLimit, Plan, Quota, ScopeGuard, ScopeRules, Scopes, Timestamp,
};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    None,
    /// No middleware, but the handler adds three `X-RateLimit-*` headers of the sizes the full
    /// stack sends: what those bytes alone cost the server.
    NoneHeaders,
    TowerHttp,
    /// The stack as one `Router::layer` call (a `ServiceBuilder`): the recommended way.
    Full,
    /// The same layers as three `Router::layer` calls: axum wraps, boxes and clones each one
    /// per request, which costs more than the layers themselves.
    FullSeparate,
    /// The same as `full` with the scope check in the same `ServiceBuilder` (a `ScopeRules`
    /// table) instead of a per-route `route_layer`: one axum wrapper instead of two.
    FullRules,
    /// The same layers as `full`, wrapped around the whole router (`ServiceBuilder::service`)
    /// instead of given to `Router::layer`: no per-request boxed service, future and body.
    FullOuter,
    /// The four stages as one service (`ApiKeyStack`), scope check by rule table, given to one
    /// `Router::layer` call.
    Fused,
    /// The same one service wrapped around the whole router.
    FusedOuter,
    /// `FusedOuter` with the scope checked by a per-route `route_layer` instead of the table.
    FusedOuterRoute,
    /// What a user writes by hand instead of this crate (`hand_rolled.rs`): one
    /// `from_fn_with_state` middleware, a `HashMap` of SHA-256 hashes, governor's keyed limiter.
    HandRolled,
}

struct Args {
    mode: Mode,
    addr: SocketAddr,
    key: String,
    threads: usize,
}

/// Whether cargo started the program: `cargo bench` passes `--bench` to `harness = false`
/// targets, and `cargo bench` and `cargo test` (which runs bench targets under `--benches` and
/// `--all-targets`) set `CARGO_MANIFEST_DIR`.
fn by_cargo() -> bool {
    std::env::args().any(|a| a == "--bench") || std::env::var_os("CARGO_MANIFEST_DIR").is_some()
}

fn usage() -> ! {
    if by_cargo() {
        // Run by a plain `cargo bench` or `cargo test` (every target, perhaps with a filter or an
        // option of criterion's or libtest's, none of them ours): nothing to serve, and the run
        // of the other targets goes on.
        eprintln!("load_target: a server for scripts/load.sh (benches/load_target.rs); skipped");
        std::process::exit(0);
    }
    eprintln!(
        "usage: load_target --mode none|none-headers|tower-http|full|full-separate|full-rules|full-outer|fused|fused-outer|fused-outer-route|hand-rolled --addr 127.0.0.1:PORT --key br_live_… [--threads N]"
    );
    std::process::exit(2)
}

fn args() -> Args {
    let mut mode = None;
    let mut addr = None;
    let mut key = None;
    let mut threads = 1;
    let mut it = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(a) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--mode" => {
                mode = Some(match value().as_str() {
                    "none" => Mode::None,
                    "none-headers" => Mode::NoneHeaders,
                    "tower-http" => Mode::TowerHttp,
                    "full" => Mode::Full,
                    "full-separate" => Mode::FullSeparate,
                    "full-rules" => Mode::FullRules,
                    "full-outer" => Mode::FullOuter,
                    "fused" => Mode::Fused,
                    "fused-outer" => Mode::FusedOuter,
                    "fused-outer-route" => Mode::FusedOuterRoute,
                    "hand-rolled" => Mode::HandRolled,
                    _ => usage(),
                })
            }
            "--addr" => addr = Some(value().parse().unwrap_or_else(|_| usage())),
            "--key" => key = Some(value()),
            "--threads" => threads = value().parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    let (Some(mode), Some(addr), Some(key)) = (mode, addr, key) else {
        usage()
    };
    if KeyFormat::live().check(&key).is_err() {
        eprintln!("--key must be a br_live_ key: br_live_ and 32 characters of [0-9A-Za-z]");
        std::process::exit(2);
    }
    Args {
        mode,
        addr,
        key,
        threads: threads.max(1),
    }
}

/// The organization's enterprise quota: 9,999 requests per millisecond (10 million a second),
/// far above what one core can serve, so nothing is ever refused; its figures have four digits,
/// like those of Free and Paid plans.
const QUOTA: Quota = Quota {
    requests: 9_999,
    period: Duration::from_millis(1),
    concurrent_sessions: 1_000,
};

const X_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

async fn hello() -> &'static str {
    "Hello, World!"
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = args();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()?
        .block_on(serve(args))
}

async fn serve(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind(args.addr).await?;
    let mut flusher = None;
    let app = match args.mode {
        Mode::None => Router::new().route("/", get(hello)),
        Mode::NoneHeaders => Router::new().route(
            "/",
            get(|| async {
                // Names and values built once, as the stack's are (`RateLimitInfo::write_headers`
                // uses static names and pre-encoded values): only the inserts and the bytes on
                // the wire are left to cost, the least any response carrying them can pay.
                (
                    [
                        (X_LIMIT, HeaderValue::from_static("9999")),
                        (X_REMAINING, HeaderValue::from_static("9998")),
                        (X_RESET, HeaderValue::from_static("1795420787")),
                    ],
                    "Hello, World!",
                )
            }),
        ),
        Mode::TowerHttp => {
            #[allow(deprecated)] // `bearer` is deprecated in favour of a custom validator
            let layer = tower_http::validate_request::ValidateRequestHeaderLayer::bearer(&args.key);
            Router::new().route("/", get(hello)).layer(layer)
        }
        Mode::HandRolled => {
            hand_rolled::protect(Router::new().route("/", get(hello)), &args.key, QUOTA)
        }
        Mode::Full
        | Mode::FullSeparate
        | Mode::FullRules
        | Mode::FullOuter
        | Mode::Fused
        | Mode::FusedOuter
        | Mode::FusedOuterRoute => {
            let store = MemoryStore::new();
            let org = OrgId::from("org_load");
            KeyManager::new(store.clone())
                .set_plan(&org, Plan::Enterprise(QUOTA))
                .await?;
            let record = KeyRecord::new(
                KeyId::from("key_load"),
                org,
                "load".into(),
                KeyHash::of(&args.key),
                String::new(),
                Scopes::parse(["hello:read"])?,
                Arc::from("live"),
                Timestamp::now(),
            );
            store.insert(record).await?;
            let recorder = LastUsedRecorder::new(store.clone());
            flusher = Some(recorder.spawn_flusher(Duration::from_secs(1)));
            if args.mode == Mode::FusedOuterRoute {
                let stack = ApiKeyAuth::new(store)
                    .rate_limit(OrgRateLimit::new())
                    .record_last_used(recorder);
                let router = Router::new().route(
                    "/",
                    get(hello).route_layer(ScopeGuard::require("hello:read")),
                );
                let app = ServiceBuilder::new()
                    .map_response(IntoResponse::into_response)
                    .layer(stack)
                    .service(router);
                return run(listener, app, flusher).await;
            }
            if let Mode::Fused | Mode::FusedOuter = args.mode {
                let rules = ScopeRules::new().route(http::Method::GET, "/", "hello:read");
                let stack = ApiKeyAuth::new(store)
                    .rate_limit(OrgRateLimit::new())
                    .record_last_used(recorder)
                    .scope_guard(ScopeGuard::rules(rules));
                let router = Router::new().route("/", get(hello));
                if args.mode == Mode::FusedOuter {
                    let app = ServiceBuilder::new()
                        .map_response(IntoResponse::into_response)
                        .layer(stack)
                        .service(router);
                    return run(listener, app, flusher).await;
                }
                return run(listener, router.layer(stack), flusher).await;
            }
            if args.mode == Mode::FullRules {
                let rules = ScopeRules::new().route(http::Method::GET, "/", "hello:read");
                return run(
                    listener,
                    Router::new().route("/", get(hello)).layer(
                        ServiceBuilder::new()
                            .layer(ApiKeyAuth::new(store))
                            .layer(OrgRateLimit::new())
                            .layer(recorder)
                            .layer(ScopeGuard::rules(rules)),
                    ),
                    flusher,
                )
                .await;
            }
            let router = Router::new().route(
                "/",
                get(hello).route_layer(ScopeGuard::require("hello:read")),
            );
            if args.mode == Mode::FullOuter {
                let app = ServiceBuilder::new()
                    .map_response(IntoResponse::into_response) // one boxed body, as axum's own
                    .layer(ApiKeyAuth::new(store))
                    .layer(OrgRateLimit::new())
                    .layer(recorder)
                    .service(router);
                return run(listener, app, flusher).await;
            }
            if args.mode == Mode::Full {
                router.layer(
                    ServiceBuilder::new()
                        .layer(ApiKeyAuth::new(store))
                        .layer(OrgRateLimit::new())
                        .layer(recorder),
                )
            } else {
                router
                    .layer(recorder)
                    .layer(OrgRateLimit::new())
                    .layer(ApiKeyAuth::new(store))
            }
        }
    };
    run(listener, app, flusher).await
}

async fn run<S>(
    listener: tokio::net::TcpListener,
    app: S,
    flusher: Option<tower_api_key::FlusherHandle>,
) -> Result<(), Box<dyn std::error::Error>>
where
    S: tower::Service<
            axum::extract::Request,
            Response = axum::response::Response,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    eprintln!("load_target listening on http://{}", listener.local_addr()?);
    axum::serve(listener, tower::make::Shared::new(app))
        .with_graceful_shutdown(async {
            let term = async {
                #[cfg(unix)]
                if let Ok(mut s) =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                {
                    s.recv().await;
                    return;
                }
                std::future::pending::<()>().await
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term => {}
            }
        })
        .await?;
    if let Some(f) = flusher {
        f.shutdown().await?;
    }
    Ok(())
}

/// `--mode hand-rolled`: what a user writes by hand instead of this crate, with axum, `sha2`
/// and governor. The same key, quota and headers as the crate's modes; no key format check, no
/// constant-time comparison, no last-used tracking, no gRPC or problem+json refusals.
mod hand_rolled {
    use std::collections::HashMap;
    use std::num::NonZeroU32;
    use std::sync::{Arc, PoisonError, RwLock};
    use std::time::{SystemTime, UNIX_EPOCH};

    use axum::Router;
    use axum::extract::{Request, State};
    use axum::middleware::{self, Next};
    use axum::response::{IntoResponse, Response};
    use governor::clock::Clock;
    use governor::middleware::StateInformationMiddleware;
    use governor::{DefaultKeyedRateLimiter, RateLimiter};
    use http::{HeaderValue, StatusCode, header};
    use sha2::{Digest, Sha256};

    use super::{X_LIMIT, X_REMAINING, X_RESET};

    /// A stored key, found by the SHA-256 of the secret.
    struct Record {
        key_id: String,
        org_id: String,
        scopes: Vec<String>,
        revoked_at: Option<SystemTime>,
        expires_at: Option<SystemTime>,
    }

    /// Who is calling: what the middleware gives the handlers in the request's extensions.
    #[derive(Clone, Debug)]
    #[allow(dead_code)] // for handlers to read; `GET /` answers the same to everyone
    pub struct Caller {
        pub key_id: String,
        pub org_id: String,
        pub scopes: Vec<String>,
    }

    #[derive(Clone)]
    struct Auth {
        keys: Arc<RwLock<HashMap<[u8; 32], Record>>>,
        limiter: Arc<DefaultKeyedRateLimiter<String, StateInformationMiddleware>>,
    }

    /// The scope `GET /` requires (as the crate's modes require it).
    const REQUIRED: &str = "hello:read";

    /// `router` behind the middleware, with one key (`key`, of `org_load`) whose organization
    /// gets `quota`: a burst of `quota.requests`, one more every `quota.period / quota.requests`.
    pub fn protect(router: Router, key: &str, quota: tower_api_key::Quota) -> Router {
        let mut keys = HashMap::new();
        keys.insert(
            Sha256::digest(key.as_bytes()).into(),
            Record {
                key_id: "key_load".into(),
                org_id: "org_load".into(),
                scopes: vec![REQUIRED.into()],
                revoked_at: None,
                expires_at: None,
            },
        );
        let burst = NonZeroU32::new(quota.requests).expect("a quota of at least one request");
        let quota = governor::Quota::with_period(quota.period / quota.requests)
            .expect("a period of at least one nanosecond per request")
            .allow_burst(burst);
        let auth = Auth {
            keys: Arc::new(RwLock::new(keys)),
            limiter: Arc::new(RateLimiter::keyed(quota).with_middleware()),
        };
        router.layer(middleware::from_fn_with_state(auth, authenticate))
    }

    fn refuse(status: StatusCode, body: &'static str) -> Response {
        let mut res = (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        res
    }

    fn unauthorized() -> Response {
        refuse(
            StatusCode::UNAUTHORIZED,
            r#"{"error":"invalid_api_key","message":"Invalid or missing API key"}"#,
        )
    }

    async fn authenticate(State(auth): State<Auth>, mut req: Request, next: Next) -> Response {
        let Some(key) = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_at_checked(7))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer "))
            .map(|(_, key)| key.trim())
            .filter(|key| !key.is_empty())
        else {
            return unauthorized();
        };
        let hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let now = SystemTime::now();
        let caller = {
            let keys = auth.keys.read().unwrap_or_else(PoisonError::into_inner);
            let Some(record) = keys.get(&hash) else {
                return unauthorized();
            };
            if record.revoked_at.is_some_and(|at| at <= now)
                || record.expires_at.is_some_and(|at| at <= now)
            {
                return unauthorized();
            }
            Caller {
                key_id: record.key_id.clone(),
                org_id: record.org_id.clone(),
                scopes: record.scopes.clone(),
            }
        };
        let state = match auth.limiter.check_key(&caller.org_id) {
            Ok(state) => state,
            Err(not_until) => {
                let wait = not_until.wait_time_from(auth.limiter.clock().now());
                let mut res = refuse(
                    StatusCode::TOO_MANY_REQUESTS,
                    r#"{"error":"rate_limited","message":"Rate limit exceeded"}"#,
                );
                res.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(wait.as_secs() + u64::from(wait.subsec_nanos() > 0)),
                );
                return res;
            }
        };
        let mut res = if caller.scopes.iter().any(|s| s == REQUIRED) {
            req.extensions_mut().insert(caller);
            next.run(req).await
        } else {
            refuse(
                StatusCode::FORBIDDEN,
                r#"{"error":"insufficient_scope","message":"This API key lacks the scope required"}"#,
            )
        };
        // Limit: the burst. Remaining: what is left of it after this request. Reset: when the
        // burst is whole again, one cell per replenish interval, in Unix seconds rounded up.
        let quota = state.quota();
        let limit = quota.burst_size().get();
        let remaining = state.remaining_burst_capacity();
        let whole = now + quota.replenish_interval() * (limit - remaining);
        let reset = whole
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() + u64::from(d.subsec_nanos() > 0));
        let headers = res.headers_mut();
        headers.insert(X_LIMIT, HeaderValue::from(limit));
        headers.insert(X_REMAINING, HeaderValue::from(remaining));
        headers.insert(X_RESET, HeaderValue::from(reset));
        res
    }
}
