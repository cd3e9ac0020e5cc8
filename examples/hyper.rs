//! tower-api-key over a bare hyper 1 server (hyper-util), no framework.
//!
//! ```text
//! cargo run --example hyper
//! ```
//!
//! It mints two keys, prints them, serves `GET /v1/browsers/{id}` (scope `browser_sessions:read`)
//! and `DELETE /v1/browsers/{id}` (scope `browser_sessions:delete`) through a `ScopeRules` table,
//! and then calls itself with each key to show 200, 403 and 401. Pass `--serve` to keep serving.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tower::ServiceBuilder;
use tower_api_key::{
    ApiKeyAuth, KeyManager, MemoryStore, NewKey, OrgId, Principal, ScopeGuard, ScopeRules, Scopes,
};

async fn handler(req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let who = req
        .extensions()
        .get::<Principal>()
        .map(|p| format!("{} ({})", p.org_id(), p.key_id()))
        .unwrap_or_default();
    let body = format!("{} {} for {who}\n", req.method(), req.uri().path());
    Ok(Response::new(Full::new(Bytes::from(body))))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let serve_forever = std::env::args().any(|a| a == "--serve");
    let store = MemoryStore::new();
    let manager = KeyManager::new(store.clone());
    let org = OrgId::from("org_hyper");
    let reader = manager
        .create(
            &org,
            NewKey::new("reader").scopes(Scopes::parse(["browser_sessions:read"])?),
        )
        .await?;

    let svc = ServiceBuilder::new()
        .layer(ApiKeyAuth::new(store))
        .layer(ScopeGuard::rules(
            ScopeRules::new()
                .route(Method::GET, "/v1/browsers/{id}", "browser_sessions:read")
                .route(
                    Method::DELETE,
                    "/v1/browsers/{id}",
                    "browser_sessions:delete",
                ),
        ))
        .service_fn(handler);

    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let addr = listener.local_addr()?;
    println!("listening on http://{addr}");
    println!("reader key (shown once): {}", reader.key.expose_secret());
    tokio::spawn(async move {
        loop {
            let Ok((io, _)) = listener.accept().await else {
                return;
            };
            let svc = TowerToHyperService::new(svc.clone());
            tokio::spawn(async move {
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                if let Err(e) = builder.serve_connection(TokioIo::new(io), svc).await {
                    eprintln!("connection error: {e}");
                }
            });
        }
    });

    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let bearer = format!("Bearer {}", reader.key.expose_secret());
    for (method, auth) in [
        (Method::GET, Some(bearer.as_str())),
        (Method::DELETE, Some(bearer.as_str())),
        (Method::GET, None),
    ] {
        let mut req = Request::builder()
            .method(method.clone())
            .uri(format!("http://{addr}/v1/browsers/brs_1"));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let res = client.request(req.body(Empty::new())?).await?;
        let status = res.status();
        let body = res.into_body().collect().await?.to_bytes();
        println!(
            "{method} /v1/browsers/brs_1 ({}) -> {status}: {}",
            if auth.is_some() {
                "reader key"
            } else {
                "no key"
            },
            String::from_utf8_lossy(&body).trim()
        );
    }
    if serve_forever {
        println!("serving; Ctrl-C to stop");
        tokio::signal::ctrl_c().await?;
    }
    Ok(())
}
