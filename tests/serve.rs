//! `serve::Server` over real sockets: slow and silent clients are cut off, a graceful shutdown
//! answers what is in flight and gives up on a half-sent request at the drain deadline.
#![cfg(feature = "serve")]

use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::{get, post};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tower_api_key::client_addr::{ClientAddr, PeerAddr};
use tower_api_key::serve::{Served, Server};

/// A running server and the handles a test needs to drive it.
struct Running {
    addr: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    served: tokio::task::JoinHandle<std::io::Result<Served>>,
    /// One message each time `/slow` or `/upload` starts handling a request.
    started: mpsc::UnboundedReceiver<()>,
    /// Lets every `/slow` handler answer.
    release: tokio::sync::watch::Sender<bool>,
}

async fn start(server: Server) -> Running {
    let (started_tx, started) = mpsc::unbounded_channel();
    let (release, release_rx) = tokio::sync::watch::channel(false);
    let slow_started = started_tx.clone();
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .route(
            "/peer",
            get(|req: axum::extract::Request| async move {
                let peer = req.extensions().get::<PeerAddr>().map(|p| p.0);
                let client = ClientAddr::peer().client_ip(&req);
                format!("{peer:?} {client:?}")
            }),
        )
        .route(
            "/slow",
            get(move || {
                let started = slow_started.clone();
                let mut release = release_rx.clone();
                async move {
                    let _ = started.send(());
                    let _ = release.wait_for(|r| *r).await;
                    "done"
                }
            }),
        )
        .route(
            "/upload",
            post(move |body: axum::body::Bytes| async move { format!("{} bytes", body.len()) }),
        )
        .layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let started = started_tx.clone();
                async move {
                    if req.uri().path() == "/upload" {
                        let _ = started.send(());
                    }
                    next.run(req).await
                }
            },
        ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(server.serve(listener, app, async {
        let _ = stopped.await;
    }));
    Running {
        addr,
        stop: Some(stop),
        served,
        started,
        release,
    }
}

impl Running {
    async fn shutdown(&mut self) -> Served {
        self.stop.take().unwrap().send(()).unwrap();
        (&mut self.served).await.unwrap().unwrap()
    }
}

/// Read until the peer closes (`Ok` with what was read) or `limit` passes (`Err`).
async fn read_to_close(tcp: &mut TcpStream, limit: Duration) -> Result<Vec<u8>, Vec<u8>> {
    let mut got = Vec::new();
    let outcome = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    match outcome {
        Ok(()) => Ok(got),
        Err(_) => Err(got),
    }
}

#[tokio::test]
async fn a_partial_request_head_is_cut_off_at_the_header_read_timeout() {
    let timeout = Duration::from_millis(300);
    let mut srv = start(Server::new().header_read_timeout(timeout)).await;
    let mut tcp = TcpStream::connect(srv.addr).await.unwrap();
    let sent = Instant::now();
    // A slowloris: the head never ends.
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nx-slow: ")
        .await
        .unwrap();
    let answer = read_to_close(&mut tcp, Duration::from_secs(5)).await;
    let took = sent.elapsed();
    let answer = answer.expect("the connection was closed");
    assert!(
        !answer.starts_with(b"HTTP/1.1 200"),
        "no request was served"
    );
    assert!(took >= timeout, "closed after {took:?}, before the timeout");
    assert_eq!(srv.shutdown().await.connections, 1);
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_at_the_header_read_timeout() {
    let timeout = Duration::from_millis(300);
    let mut srv = start(Server::new().header_read_timeout(timeout)).await;
    let opened = Instant::now();
    let mut tcp = TcpStream::connect(srv.addr).await.unwrap();
    let answer = read_to_close(&mut tcp, Duration::from_secs(5)).await;
    let took = opened.elapsed();
    assert_eq!(answer, Ok(Vec::new()), "closed without a byte");
    assert!(took >= timeout, "closed after {took:?}, before the timeout");
    srv.shutdown().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_at_the_idle_timeout() {
    let idle = Duration::from_millis(300);
    let mut srv = start(
        Server::new()
            .header_read_timeout(Duration::from_secs(30))
            .idle_timeout(idle),
    )
    .await;
    let mut tcp = TcpStream::connect(srv.addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let answered = Instant::now();
    let answer = read_to_close(&mut tcp, Duration::from_secs(5)).await;
    let took = answered.elapsed();
    let answer = String::from_utf8(answer.expect("closed while idle")).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("ok"), "{answer}");
    assert!(
        took >= idle,
        "closed after {took:?}, before the idle timeout"
    );
    srv.shutdown().await;
}

#[tokio::test]
async fn a_body_that_stops_halfway_is_dropped_after_two_idle_timeouts() {
    let idle = Duration::from_millis(300);
    let mut srv = start(Server::new().idle_timeout(idle)).await;
    let mut tcp = TcpStream::connect(srv.addr).await.unwrap();
    tcp.write_all(b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nhalf")
        .await
        .unwrap();
    srv.started.recv().await.unwrap();
    let since = Instant::now();
    let answer = read_to_close(&mut tcp, Duration::from_secs(5)).await;
    let took = since.elapsed();
    let answer = answer.expect("the silent connection was dropped");
    assert!(
        !answer.starts_with(b"HTTP/1.1 200"),
        "the upload was not completed"
    );
    assert!(took >= idle * 2, "dropped after {took:?}");
    srv.shutdown().await;
}

#[tokio::test]
async fn a_request_in_flight_at_shutdown_is_answered_and_new_connections_are_refused() {
    let mut srv = start(Server::new()).await;
    let mut tcp = TcpStream::connect(srv.addr).await.unwrap();
    tcp.write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    srv.started.recv().await.unwrap();
    srv.stop.take().unwrap().send(()).unwrap();
    // The listener closes at once, while the request is still being handled.
    let refused = loop {
        match TcpStream::connect(srv.addr).await {
            // In the listener's backlog as it closed: reset, try again.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => break e,
            // Accepted by the kernel before the listener closed: it must close unanswered.
            Ok(mut late) => {
                let answer = read_to_close(&mut late, Duration::from_secs(5)).await;
                assert_eq!(answer, Ok(Vec::new()), "a late connection got no answer");
            }
        }
    };
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    srv.release.send(true).unwrap();
    let answer = read_to_close(&mut tcp, Duration::from_secs(5)).await;
    let answer = String::from_utf8(answer.expect("closed after the answer")).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("done"), "{answer}");
    let served = (&mut srv.served).await.unwrap().unwrap();
    assert_eq!(served.open_at_shutdown, 1);
    assert_eq!(served.dropped, 0);
}

#[tokio::test]
async fn a_half_sent_request_is_dropped_at_the_drain_deadline() {
    let deadline = Duration::from_millis(400);
    let mut srv = start(Server::new().drain_deadline(deadline)).await;
    let mut tcp = TcpStream::connect(srv.addr).await.unwrap();
    tcp.write_all(b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nhalf")
        .await
        .unwrap();
    srv.started.recv().await.unwrap();
    let asked = Instant::now();
    let served = srv.shutdown().await;
    let took = asked.elapsed();
    assert_eq!(served.open_at_shutdown, 1);
    assert_eq!(served.dropped, 1);
    assert!(took >= deadline, "gave up after {took:?}");
    assert!(took < deadline * 5, "gave up only after {took:?}");
    let answer = read_to_close(&mut tcp, Duration::from_secs(5)).await;
    assert_eq!(answer, Ok(Vec::new()), "dropped without an answer");
}

#[tokio::test]
async fn every_request_carries_its_connections_peer_address() {
    let mut srv = start(Server::new()).await;
    let mut tcp = TcpStream::connect(srv.addr).await.unwrap();
    let local = tcp.local_addr().unwrap();
    tcp.write_all(b"GET /peer HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = read_to_close(&mut tcp, Duration::from_secs(5))
        .await
        .unwrap();
    let answer = String::from_utf8(answer).unwrap();
    assert!(
        answer.ends_with(&format!("Some({local}) Some({})", local.ip())),
        "{answer}"
    );
    srv.shutdown().await;
}
