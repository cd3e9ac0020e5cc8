//! tower-api-key in front of a tonic gRPC service, with a client run that shows every outcome.
//!
//! ```text
//! cargo run --example grpc
//! ```
//!
//! The server (`sandbox.v1.Sandbox`, see `examples/support/sandbox_grpc.rs`) sits behind
//! `ApiKeyAuth` → `OrgRateLimit` → `LastUsedRecorder` → `ScopeGuard` with a rule table (tonic has
//! no per-route layers). The client then calls it with no key (UNAUTHENTICATED), with a key
//! lacking `sandbox_sessions:exec` (PERMISSION_DENIED), with a good key (OK), and keeps calling
//! until the organization's quota is spent (RESOURCE_EXHAUSTED, with the `retry-after` and
//! `x-ratelimit-*` figures as metadata). Pass `--serve` to keep the server running afterwards.

#[path = "support/sandbox_grpc.rs"]
mod sandbox_grpc;

use std::net::SocketAddr;
use std::time::Duration;

use sandbox_grpc::{EXEC, SandboxClient, SandboxServer, WHOAMI};
use tower_api_key::LastUsedRecorder;
use tower_api_key::{
    ApiKeyAuth, KeyManager, MemoryStore, NewKey, OrgId, OrgRateLimit, Plan, Quota, ScopeGuard,
    ScopeRules, Scopes,
};

fn show(what: &str, result: Result<String, tonic::Status>) {
    match result {
        Ok(ok) => println!("{what:<40} -> OK: {ok}"),
        Err(status) => {
            let meta = status.metadata();
            let figures: Vec<String> =
                ["retry-after", "x-ratelimit-limit", "x-ratelimit-remaining"]
                    .iter()
                    .filter_map(|k| {
                        meta.get(*k)
                            .and_then(|v| v.to_str().ok())
                            .map(|v| format!("{k}={v}"))
                    })
                    .collect();
            println!(
                "{what:<40} -> {:?}: {} {}",
                status.code(),
                status.message(),
                figures.join(" ")
            );
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let serve_forever = std::env::args().any(|a| a == "--serve");
    let store = MemoryStore::new();
    let manager = KeyManager::new(store.clone());
    let org = OrgId::from("org_grpc_demo");
    // A tiny enterprise quota so the demo reaches the limit in a few calls.
    manager
        .set_plan(
            &org,
            Plan::Enterprise(Quota {
                requests: 5,
                period: Duration::from_secs(60),
                concurrent_sessions: 1,
            }),
        )
        .await?;
    let runner = manager
        .create(
            &org,
            NewKey::new("runner").scopes(Scopes::parse(["sandbox_sessions:*"])?),
        )
        .await?;
    let reader = manager
        .create(
            &org,
            NewKey::new("reader").scopes(Scopes::parse(["sandbox_sessions:read"])?),
        )
        .await?;

    let recorder = LastUsedRecorder::new(store.clone());
    let flusher = recorder.spawn_flusher(Duration::from_secs(5));
    let rules = ScopeRules::new()
        .grpc(EXEC, "sandbox_sessions:exec")
        .grpc(WHOAMI, "sandbox_sessions:read");

    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let addr = listener.local_addr()?;
    println!("gRPC server on http://{addr}");
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .layer(ApiKeyAuth::new(store.clone()))
            .layer(OrgRateLimit::new())
            .layer(recorder)
            .layer(ScopeGuard::rules(rules))
            .add_service(SandboxServer)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut anonymous = SandboxClient::new(channel.clone(), None);
    let mut reader = SandboxClient::new(channel.clone(), Some(reader.key.expose_secret()));
    let mut runner = SandboxClient::new(channel, Some(runner.key.expose_secret()));

    show(
        "Exec without a key",
        anonymous.exec("sbx_1", "ls").await.map(|r| r.stdout),
    );
    show(
        "Exec with a read-only key",
        reader.exec("sbx_1", "ls").await.map(|r| r.stdout),
    );
    show(
        "Whoami with the read-only key",
        reader
            .whoami()
            .await
            .map(|r| format!("{} {}", r.org_id, r.key_id)),
    );
    for i in 1..=4 {
        show(
            &format!("Exec #{i} with the runner key"),
            runner.exec("sbx_1", "echo hello").await.map(|r| r.stdout),
        );
    }

    if serve_forever {
        println!("serving; Ctrl-C to stop");
        tokio::signal::ctrl_c().await?;
    }
    server.abort();
    flusher.shutdown().await?;
    Ok(())
}
