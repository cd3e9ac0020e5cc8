//! The same authentication served three ways with real servers and clients on 127.0.0.1:
//! an axum `Router`, a bare hyper 1 server (hyper-util), and a tonic gRPC server called by a
//! tonic client.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use common::*;
use http::{Method, Request, Response};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_api_key::{ApiKeyAuth, Principal, ScopeGuard, ScopeRules};

async fn listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    (l, addr)
}

async fn http_status(
    addr: SocketAddr,
    method: Method,
    path: &str,
    auth: Option<&str>,
) -> (u16, String) {
    let client = reqwest::Client::new();
    let mut req = client.request(method, format!("http://{addr}{path}"));
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.text().await.unwrap())
}

#[tokio::test]
async fn axum_router() {
    use axum::Router;
    use axum::routing::{get, post};

    let fx = Fixture::new();
    let reader = fx.mint("org_a", &["browser_sessions:read"]).await;
    let app = Router::new()
        .route(
            "/v1/browsers",
            post(|p: Principal| async move { format!("created for {}", p.org_id()) })
                .route_layer(ScopeGuard::require("browser_sessions:create")),
        )
        .route(
            "/v1/browsers/{id}",
            get(|p: Principal| async move { format!("read by {}", p.org_id()) })
                .route_layer(ScopeGuard::require("browser_sessions:read")),
        )
        .layer(ApiKeyAuth::new(fx.store.clone()).clock(fx.clock.clone()));
    let (l, addr) = listener().await;
    tokio::spawn(async move { axum::serve(l, app).await });

    let auth = bearer(&reader);
    assert_eq!(
        http_status(addr, Method::GET, "/v1/browsers/b1", Some(&auth)).await,
        (200, "read by org_a".to_owned())
    );
    let (status, body) = http_status(addr, Method::POST, "/v1/browsers", Some(&auth)).await;
    assert_eq!(status, 403);
    let v = problem(body.as_bytes());
    assert_eq!(v["code"], "insufficient_scope");
    assert_eq!(v["status"], 403);
    let (status, body) = http_status(addr, Method::GET, "/v1/browsers/b1", None).await;
    assert_eq!(status, 401);
    let v = problem(body.as_bytes());
    assert_eq!(v["code"], "missing_api_key");
    assert_eq!(v["title"], "Invalid or missing API key");
}

#[tokio::test]
async fn axum_extractor_without_the_layer_says_so() {
    use axum::Router;
    use axum::routing::get;
    let app: Router = Router::new().route("/", get(|_: Principal| async { "unreachable" }));
    let (l, addr) = listener().await;
    tokio::spawn(async move { axum::serve(l, app).await });
    let (status, body) = http_status(addr, Method::GET, "/", None).await;
    assert_eq!(status, 500);
    let v = problem(body.as_bytes());
    assert_eq!(v["code"], "auth_layer_missing");
    assert_eq!(
        v["title"],
        "Server misconfiguration: the Principal extractor found no authenticated principal (is ApiKeyAuth in front of it?)"
    );
}

#[tokio::test]
async fn optional_principal_extractor() {
    use axum::Router;
    use axum::routing::get;
    let app: Router = Router::new().route(
        "/",
        get(|p: Option<Principal>| async move {
            p.map_or("anonymous".to_owned(), |p| p.org_id().to_string())
        }),
    );
    let (l, addr) = listener().await;
    tokio::spawn(async move { axum::serve(l, app).await });
    assert_eq!(
        http_status(addr, Method::GET, "/", None).await,
        (200, "anonymous".to_owned())
    );
}

#[tokio::test]
async fn bare_hyper_server() {
    let fx = Fixture::new();
    let reader = fx.mint("org_h", &["browser_sessions:read"]).await;
    let svc = ServiceBuilder::new()
        .layer(ApiKeyAuth::new(fx.store.clone()).clock(fx.clock.clone()))
        .layer(ScopeGuard::rules(
            ScopeRules::new()
                .route(Method::GET, "/v1/browsers/{id}", "browser_sessions:read")
                .route(
                    Method::DELETE,
                    "/v1/browsers/{id}",
                    "browser_sessions:delete",
                ),
        ))
        .service_fn(|req: Request<hyper::body::Incoming>| async move {
            let org = req
                .extensions()
                .get::<Principal>()
                .map(|p| p.org_id().to_string())
                .unwrap_or_default();
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                "hyper {org}"
            )))))
        });
    let (l, addr) = listener().await;
    tokio::spawn(async move {
        loop {
            let Ok((io, _)) = l.accept().await else {
                return;
            };
            let svc = TowerToHyperService::new(svc.clone());
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(io), svc)
                    .await;
            });
        }
    });

    let auth = bearer(&reader);
    assert_eq!(
        http_status(addr, Method::GET, "/v1/browsers/x", Some(&auth)).await,
        (200, "hyper org_h".to_owned())
    );
    let (status, body) = http_status(addr, Method::DELETE, "/v1/browsers/x", Some(&auth)).await;
    assert_eq!(status, 403);
    assert_eq!(problem(body.as_bytes())["code"], "insufficient_scope");
    let (status, body) = http_status(
        addr,
        Method::GET,
        "/v1/browsers/x",
        Some("Bearer br_live_nope"),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(problem(body.as_bytes())["code"], "invalid_api_key");
}

#[path = "../examples/support/sandbox_grpc.rs"]
mod sandbox_grpc;

#[tokio::test]
async fn tonic_server_and_client() {
    use sandbox_grpc::{EXEC, SandboxClient, SandboxServer, WHOAMI};

    let fx = Fixture::new();
    let key = fx.mint("org_g", &["sandbox_sessions:read"]).await;
    let rules = ScopeRules::new()
        .grpc(WHOAMI, "sandbox_sessions:read")
        .grpc(EXEC, "sandbox_sessions:exec");
    let (l, addr) = listener().await;
    let store = fx.store.clone();
    let clock = fx.clock.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .layer(ApiKeyAuth::new(store).clock(clock))
            .layer(ScopeGuard::rules(rules))
            .add_service(SandboxServer)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l))
            .await
    });
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();

    // The handler sees the Principal.
    let mut client = SandboxClient::new(channel.clone(), Some(key.key.expose_secret()));
    let reply = client.whoami().await.unwrap();
    assert_eq!(reply.org_id, "org_g");
    assert_eq!(reply.key_id, key.record.id.to_string());

    let err = SandboxClient::new(channel.clone(), None)
        .whoami()
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert_eq!(err.message(), "Invalid or missing API key");

    let err = SandboxClient::new(channel.clone(), Some("br_live_bad"))
        .whoami()
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);

    let err = client.exec("sbx_1", "ls").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert_eq!(
        err.message(),
        "This API key lacks the permission required: sandbox_sessions:exec"
    );
}
