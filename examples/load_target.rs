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
//!   costs.
//!
//! ```text
//! cargo run --release --example load_target -- --mode full --addr 127.0.0.1:18083 \
//!     --key br_live_0123456789abcdefghijABCDEFGHIJ01 [--threads 1]
//! ```
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
use tower_api_key::store::KeyRecord;
use tower_api_key::{
    ApiKeyAuth, KeyFormat, KeyHash, KeyId, KeyManager, KeyStore, LastUsedRecorder, MemoryStore,
    OrgId, OrgRateLimit, Plan, Quota, ScopeGuard, ScopeRules, Scopes, Timestamp,
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
}

struct Args {
    mode: Mode,
    addr: SocketAddr,
    key: String,
    threads: usize,
}

fn usage() -> ! {
    eprintln!(
        "usage: load_target --mode none|none-headers|tower-http|full|full-separate|full-rules|full-outer|fused|fused-outer|fused-outer-route --addr 127.0.0.1:PORT --key br_live_… [--threads N]"
    );
    std::process::exit(2)
}

fn args() -> Args {
    let mut mode = None;
    let mut addr = None;
    let mut key = None;
    let mut threads = 1;
    let mut it = std::env::args().skip(1);
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
