//! Serve a tower service over HTTP/1 and HTTP/2 the way production needs (feature `serve`):
//! slow or silent clients are cut off, and shutdown is graceful but bounded.
//!
//! ```no_run
//! use std::time::Duration;
//! use axum::{Router, routing::get};
//! use tower_api_key::serve::{Server, shutdown_signal};
//! use tower_api_key::{ApiKeyAuth, LastUsedRecorder, MemoryStore};
//!
//! # async fn run() -> std::io::Result<()> {
//! let store = MemoryStore::new();
//! let recorder = LastUsedRecorder::new(store.clone());
//! let flusher = recorder.spawn_flusher(Duration::from_secs(5));
//! let app = Router::new()
//!     .route("/v1/things", get(|| async { "ok" }))
//!     .layer(recorder)
//!     .layer(ApiKeyAuth::new(store));
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! // Runs until SIGINT or SIGTERM, then lets in-flight requests finish for up to 10 s.
//! let served = Server::new().serve(listener, app, shutdown_signal()).await?;
//! // Only then write what is still in memory: every request that was answered is counted.
//! if let Err(e) = flusher.shutdown().await {
//!     eprintln!("could not flush last-used times: {e}");
//! }
//! eprintln!("{served}");
//! # Ok(()) }
//! ```
//!
//! What it does, in order, once the `shutdown` future completes:
//! 1. stops accepting connections (the listener is closed, so new connections are refused);
//! 2. asks every open connection to finish: idle HTTP/1 connections close at once, busy ones
//!    after their current response; HTTP/2 connections send `GOAWAY` and finish their streams;
//! 3. waits at most the [drain deadline](Server::drain_deadline) (default 10 s), then drops the
//!    connections still open (a client that stopped sending halfway through a request cannot
//!    hold the process);
//! 4. returns a [`Served`] report; the host then flushes what it keeps in memory and exits.
//!
//! Every request carries its connection's [`PeerAddr`] as an extension, the address
//! [`ClientAddr`](crate::client_addr::ClientAddr) starts from.
//!
//! While serving, a connection is closed when its client:
//! - does not send a complete request head within the [header-read
//!   timeout](Server::header_read_timeout) (default 10 s) of connecting or, on an HTTP/1
//!   keep-alive connection, of the previous response;
//! - sends and receives nothing at all for the [idle timeout](Server::idle_timeout) (default
//!   60 s), on HTTP/1 and HTTP/2 alike. The close is graceful (a request still being handled
//!   is answered first); a connection still silent one more idle timeout later, such as a
//!   request body that stopped halfway, is dropped. Keep the idle timeout above the slowest
//!   handler's time to first byte.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower_service::Service;

use crate::client_addr::PeerAddr;

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Resolves on the first SIGINT (Ctrl-C) or SIGTERM (what systemd, Docker and Kubernetes send);
/// on non-Unix systems, on Ctrl-C.
///
/// If a signal handler cannot be installed, that signal is not waited for (and a warning is
/// logged), so a broken handler never stops the other one from working.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!(signal = "SIGINT", "shutting down"),
        () = terminate => tracing::info!(signal = "SIGTERM", "shutting down"),
    }
}

/// An HTTP server for a tower service (an axum `Router`, a tonic server, a `ServiceBuilder`
/// stack): HTTP/1 and HTTP/2 on one port, with timeouts and a bounded graceful shutdown.
///
/// ```
/// use std::time::Duration;
/// use tower_api_key::serve::Server;
/// let server = Server::new()
///     .header_read_timeout(Duration::from_secs(5))
///     .idle_timeout(Duration::from_secs(120))
///     .drain_deadline(Duration::from_secs(25));
/// ```
#[derive(Clone, Debug)]
pub struct Server {
    header_read_timeout: Duration,
    idle_timeout: Duration,
    drain_deadline: Duration,
}

impl Default for Server {
    fn default() -> Self {
        Self::new()
    }
}

impl Server {
    /// Header-read timeout 10 s, idle timeout 60 s, drain deadline 10 s.
    pub fn new() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            drain_deadline: Duration::from_secs(10),
        }
    }

    /// How long a client may take to send a whole request head, counted from the moment the
    /// server is ready to read one (a new connection, or the previous response on HTTP/1
    /// keep-alive). Past it the connection is closed. Slowloris clients are cut off here.
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout;
        self
    }

    /// How long a connection may go without a single byte read or written before it is closed
    /// gracefully (an in-flight request is still answered). Covers HTTP/2, where no header-read
    /// timeout exists.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// How long a shutdown waits for in-flight requests before dropping their connections.
    /// Keep it below the orchestrator's grace period (Kubernetes: 30 s by default) so the
    /// flush after it still runs.
    pub fn drain_deadline(mut self, deadline: Duration) -> Self {
        self.drain_deadline = deadline;
        self
    }

    /// Serve `service` on `listener` until `shutdown` completes, then drain (see the [module
    /// docs](self)). Fails only if the listener's address cannot be read; accept errors (such
    /// as running out of file descriptors) are logged and retried after a short pause.
    pub async fn serve<S, B>(
        self,
        listener: TcpListener,
        service: S,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<Served>
    where
        S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let addr = listener.local_addr()?;
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout);
        builder.http2().timer(TokioTimer::new());
        let builder = Arc::new(builder);
        let (stop_tx, stop_rx) = watch::channel(());
        let mut connections = JoinSet::new();
        let mut served = Served::default();
        let mut shutdown = pin!(shutdown);
        tracing::debug!(%addr, "serving");
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        served.connections += 1;
                        // Latency over throughput for small API responses; failure is harmless.
                        let _ = tcp.set_nodelay(true);
                        connections.spawn(connection(
                            builder.clone(),
                            tcp,
                            WithPeer { inner: service.clone(), peer: PeerAddr(peer) },
                            stop_rx.clone(),
                            self.header_read_timeout.min(self.idle_timeout),
                            self.idle_timeout,
                        ));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed; retrying in 50 ms");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        drop(listener);
        served.open_at_shutdown = connections.len();
        // Every connection task holds a receiver: this asks each one to finish.
        let _ = stop_tx.send(());
        let drained = tokio::time::timeout(self.drain_deadline, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            served.dropped = connections.len();
            tracing::warn!(
                connections = served.dropped,
                deadline = ?self.drain_deadline,
                "drain deadline passed; dropping the connections still open"
            );
            connections.shutdown().await;
        }
        Ok(served)
    }
}

/// What [`Server::serve`] did, for the shutdown log line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Served {
    /// Connections accepted in all.
    pub connections: u64,
    /// Connections still open when the shutdown began.
    pub open_at_shutdown: usize,
    /// Connections dropped because the drain deadline passed (their requests got no answer).
    pub dropped: usize,
}

impl fmt::Display for Served {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "served {} connections; {} open at shutdown, {} dropped at the drain deadline",
            self.connections, self.open_at_shutdown, self.dropped
        )
    }
}

/// One connection: hyper's state machine, plus the idle watchdog and the shutdown request.
/// `service` with the connection's [`PeerAddr`] inserted into each request, so that
/// [`ClientAddr`](crate::client_addr::ClientAddr) can read it.
#[derive(Clone)]
struct WithPeer<S> {
    inner: S,
    peer: PeerAddr,
}

impl<S, B> Service<Request<B>> for WithPeer<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> S::Future {
        req.extensions_mut().insert(self.peer);
        self.inner.call(req)
    }
}

async fn connection<S, B>(
    builder: Arc<auto::Builder<TokioExecutor>>,
    tcp: TcpStream,
    service: S,
    mut stop: watch::Receiver<()>,
    first_byte_timeout: Duration,
    idle_timeout: Duration,
) where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Tracked {
        inner: tcp,
        activity: activity.clone(),
    });
    let conn = builder.serve_connection_with_upgrades(io, TowerToHyperService::new(service));
    let mut conn = pin!(conn);
    // Whether hyper was asked to finish (shutdown or idleness), and when the idle watchdog
    // asked: a client that stays silent through a graceful close for another idle period (a
    // request body that never ends) has its connection dropped.
    let mut closing = false;
    let mut idle_close_at: Option<Instant> = None;
    loop {
        // Before the first byte, the header-read timeout bounds the silence too: hyper's own
        // timer only starts once it knows the protocol, which takes a byte.
        let limit = if activity.has_read() {
            idle_timeout
        } else {
            first_byte_timeout
        };
        let quiet_since = || idle_close_at.map_or(activity.last(), |at| at.max(activity.last()));
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(e) = done {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            changed = stop.changed(), if !closing => {
                // A dropped sender also means "stop": the server is gone.
                let _ = changed;
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            () = tokio::time::sleep_until(quiet_since() + limit) => {
                let now = Instant::now();
                if quiet_since() + limit > now {
                    continue; // a byte moved while we slept
                }
                if idle_close_at.is_some() {
                    tracing::debug!(?limit, "dropping a connection silent through its close");
                    return;
                }
                tracing::debug!(?limit, "closing an idle connection");
                conn.as_mut().graceful_shutdown();
                closing = true;
                idle_close_at = Some(now);
            }
        }
    }
}

/// When a connection last moved a byte.
struct Activity {
    opened: Instant,
    /// Milliseconds from `opened` to the last read or write.
    last_ms: AtomicU64,
    read_any: AtomicBool,
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            last_ms: AtomicU64::new(0),
            read_any: AtomicBool::new(false),
        }
    }

    fn touch(&self, read: bool) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
        if read {
            self.read_any.store(true, Ordering::Relaxed);
        }
    }

    fn has_read(&self) -> bool {
        self.read_any.load(Ordering::Relaxed)
    }

    fn last(&self) -> Instant {
        self.opened + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// A TCP stream that records when it last read or wrote a byte.
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch(true);
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch(false);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch(false);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
