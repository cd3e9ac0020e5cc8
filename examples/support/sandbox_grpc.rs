//! A small gRPC service, `sandbox.v1.Sandbox`, written by hand: the messages are `prost` structs
//! and the server and client stubs are what `tonic-build` would generate, so no `protoc` is needed.
//!
//! ```proto
//! package sandbox.v1;
//! service Sandbox {
//!   rpc Exec(ExecRequest) returns (ExecReply);       // scope sandbox_sessions:exec
//!   rpc Whoami(WhoamiRequest) returns (WhoamiReply); // any valid key
//! }
//! ```
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tower_api_key::Principal;

/// `sandbox.v1.ExecRequest`
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExecRequest {
    #[prost(string, tag = "1")]
    pub sandbox_id: String,
    #[prost(string, tag = "2")]
    pub command: String,
}

/// `sandbox.v1.ExecReply`
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExecReply {
    #[prost(int32, tag = "1")]
    pub exit_code: i32,
    #[prost(string, tag = "2")]
    pub stdout: String,
}

/// `sandbox.v1.WhoamiRequest`
#[derive(Clone, PartialEq, prost::Message)]
pub struct WhoamiRequest {}

/// `sandbox.v1.WhoamiReply`
#[derive(Clone, PartialEq, prost::Message)]
pub struct WhoamiReply {
    #[prost(string, tag = "1")]
    pub org_id: String,
    #[prost(string, tag = "2")]
    pub key_id: String,
}

pub const EXEC: &str = "/sandbox.v1.Sandbox/Exec";
pub const WHOAMI: &str = "/sandbox.v1.Sandbox/Whoami";

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

fn principal<T>(req: &tonic::Request<T>) -> Result<Principal, tonic::Status> {
    req.extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| tonic::Status::internal("authentication layer missing"))
}

struct Exec;

impl tonic::server::UnaryService<ExecRequest> for Exec {
    type Response = ExecReply;
    type Future = BoxFuture<Result<tonic::Response<ExecReply>, tonic::Status>>;
    fn call(&mut self, req: tonic::Request<ExecRequest>) -> Self::Future {
        let result = principal(&req).map(|p| {
            let msg = req.into_inner();
            tonic::Response::new(ExecReply {
                exit_code: 0,
                stdout: format!("[{} in {}] {}", p.org_id(), msg.sandbox_id, msg.command),
            })
        });
        Box::pin(async move { result })
    }
}

struct Whoami;

impl tonic::server::UnaryService<WhoamiRequest> for Whoami {
    type Response = WhoamiReply;
    type Future = BoxFuture<Result<tonic::Response<WhoamiReply>, tonic::Status>>;
    fn call(&mut self, req: tonic::Request<WhoamiRequest>) -> Self::Future {
        let result = principal(&req).map(|p| {
            tonic::Response::new(WhoamiReply {
                org_id: p.org_id().to_string(),
                key_id: p.key_id().to_string(),
            })
        });
        Box::pin(async move { result })
    }
}

/// The server stub.
#[derive(Clone, Default)]
pub struct SandboxServer;

impl tonic::server::NamedService for SandboxServer {
    const NAME: &'static str = "sandbox.v1.Sandbox";
}

impl tower::Service<http::Request<tonic::body::Body>> for SandboxServer {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        match req.uri().path() {
            EXEC => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                Ok(grpc.unary(Exec, req).await)
            }),
            WHOAMI => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                Ok(grpc.unary(Whoami, req).await)
            }),
            _ => Box::pin(
                async move { Ok(tonic::Status::unimplemented("no such method").into_http()) },
            ),
        }
    }
}

/// The client stub.
#[derive(Clone)]
pub struct SandboxClient {
    inner: tonic::client::Grpc<tonic::transport::Channel>,
    key: Option<String>,
}

impl SandboxClient {
    pub fn new(channel: tonic::transport::Channel, key: Option<&str>) -> Self {
        Self {
            inner: tonic::client::Grpc::new(channel),
            key: key.map(str::to_owned),
        }
    }

    async fn unary<Q, R>(&mut self, msg: Q, path: &'static str) -> Result<R, tonic::Status>
    where
        Q: prost::Message + Send + Sync + 'static,
        R: prost::Message + Default + Send + Sync + 'static,
    {
        self.inner
            .ready()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let mut req = tonic::Request::new(msg);
        if let Some(key) = &self.key {
            let value = format!("Bearer {key}")
                .parse()
                .map_err(|_| tonic::Status::invalid_argument("key is not a valid header value"))?;
            req.metadata_mut().insert("authorization", value);
        }
        let codec = tonic_prost::ProstCodec::default();
        self.inner
            .unary(req, http::uri::PathAndQuery::from_static(path), codec)
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn exec(
        &mut self,
        sandbox_id: &str,
        command: &str,
    ) -> Result<ExecReply, tonic::Status> {
        let msg = ExecRequest {
            sandbox_id: sandbox_id.to_owned(),
            command: command.to_owned(),
        };
        self.unary(msg, EXEC).await
    }

    pub async fn whoami(&mut self) -> Result<WhoamiReply, tonic::Status> {
        self.unary(WhoamiRequest {}, WHOAMI).await
    }
}
