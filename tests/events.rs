//! Event delivery: bounded queues that drop and count instead of waiting, retries in order, a
//! drain at shutdown, and the Standard Webhooks sink against a real HTTP receiver that checks
//! each signature with its own HMAC.

#[path = "common/observability.rs"]
mod observability;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use observability::verify_webhook;
use tokio::sync::{Notify, mpsc};
use tower_api_key::events::webhook::WebhookSink;
use tower_api_key::events::{
    Actor, Event, EventKind, EventSink, Events, RecentEvents, Retry, SinkError,
};
use tower_api_key::{KeyId, OrgId};

fn revoked(n: usize) -> EventKind {
    EventKind::KeyRevoked {
        key_id: KeyId::from(format!("key_{n}")),
        actor: Actor::System,
    }
}

/// Holds every delivery until released; tells the test when one has started.
struct Gate {
    started: mpsc::UnboundedSender<String>,
    release: Arc<Notify>,
    seen: Arc<Mutex<Vec<String>>>,
}

impl EventSink for Gate {
    async fn deliver(&self, event: &Event) -> Result<(), SinkError> {
        let _ = self.started.send(event.id.clone());
        self.release.notified().await;
        self.seen.lock().unwrap().push(event.id.clone());
        Ok(())
    }
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_without_waiting() {
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let release = Arc::new(Notify::new());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let gate = Gate {
        started: started_tx,
        release: release.clone(),
        seen: seen.clone(),
    };
    let (events, delivery) = Events::builder().sink(gate).capacity(4).start();
    let org = OrgId::from("org_1");

    // The first event is taken by the delivery task, which then blocks in the sink.
    let first = events.emit(&org, revoked(0));
    assert_eq!(started.recv().await.unwrap(), first);

    // The queue holds 4 more; the other 6 are dropped, and emitting never waited.
    let t = Instant::now();
    let ids: Vec<String> = (1..=10).map(|n| events.emit(&org, revoked(n))).collect();
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(events.emitted(), 11);
    assert_eq!(events.dropped(), 6);
    assert_eq!(events.queue_depth(), 4);

    // Released, the task delivers the first and the four queued, in order.
    release.notify_one();
    for id in &ids[..4] {
        assert_eq!(&started.recv().await.unwrap(), id);
        release.notify_one();
    }
    assert!(delivery.shutdown(Duration::from_secs(5)).await);
    let mut expected = vec![first];
    expected.extend_from_slice(&ids[..4]);
    assert_eq!(*seen.lock().unwrap(), expected);
    assert_eq!(events.delivered(), 5);
}

/// Fails the first `failures` attempts of every event.
#[derive(Clone)]
struct Flaky {
    failures: usize,
    attempts: Arc<Mutex<Vec<String>>>,
}

impl EventSink for Flaky {
    async fn deliver(&self, event: &Event) -> Result<(), SinkError> {
        let mut attempts = self.attempts.lock().unwrap();
        attempts.push(event.id.clone());
        let tries = attempts.iter().filter(|id| **id == event.id).count();
        if tries <= self.failures {
            Err(SinkError::new("not yet"))
        } else {
            Ok(())
        }
    }
}

fn quick_retry(attempts: u32) -> Retry {
    Retry::new(Duration::from_millis(1), Duration::from_millis(4), attempts)
}

#[tokio::test]
async fn a_failed_delivery_is_retried_before_the_next_event_and_given_up_at_the_limit() {
    let flaky = Flaky {
        failures: 2,
        attempts: Arc::default(),
    };
    let (events, delivery) = Events::builder()
        .sink(flaky.clone())
        .retry(quick_retry(3))
        .start();
    let org = OrgId::from("org_1");
    let a = events.emit(&org, revoked(1));
    let b = events.emit(&org, revoked(2));
    assert!(delivery.shutdown(Duration::from_secs(5)).await);
    assert_eq!(
        *flaky.attempts.lock().unwrap(),
        [&a, &a, &a, &b, &b, &b].map(String::clone)
    );
    assert_eq!((events.delivered(), events.failed()), (2, 0));

    let hopeless = Flaky {
        failures: usize::MAX,
        attempts: Arc::default(),
    };
    let (events, delivery) = Events::builder()
        .sink(hopeless.clone())
        .retry(quick_retry(4))
        .start();
    events.emit(&org, revoked(1));
    assert!(delivery.shutdown(Duration::from_secs(5)).await);
    assert_eq!(hopeless.attempts.lock().unwrap().len(), 4);
    assert_eq!((events.delivered(), events.failed()), (0, 1));
}

#[tokio::test]
async fn shutdown_delivers_what_is_queued_and_later_events_are_dropped() {
    let recent = RecentEvents::new(10);
    let (events, delivery) = Events::builder().sink(recent.clone()).start();
    let org = OrgId::from("org_1");
    let ids: Vec<String> = (0..5).map(|n| events.emit(&org, revoked(n))).collect();
    assert!(delivery.shutdown(Duration::from_secs(5)).await);
    let listed: Vec<String> = recent.list(&org).into_iter().map(|e| e.id).collect();
    assert_eq!(listed, ids.iter().rev().cloned().collect::<Vec<_>>());
    events.emit(&org, revoked(9));
    assert_eq!(events.dropped(), 1);
}

#[tokio::test]
async fn recent_events_keep_the_latest_per_org() {
    let recent = RecentEvents::new(3);
    let (events, delivery) = Events::builder().sink(recent.clone()).start();
    let (a, b) = (OrgId::from("org_a"), OrgId::from("org_b"));
    let ids: Vec<String> = (0..5).map(|n| events.emit(&a, revoked(n))).collect();
    let other = events.emit(&b, revoked(9));
    assert!(delivery.shutdown(Duration::from_secs(5)).await);
    let listed: Vec<String> = recent.list(&a).into_iter().map(|e| e.id).collect();
    assert_eq!(listed, [&ids[4], &ids[3], &ids[2]].map(String::clone));
    assert_eq!(recent.list(&b)[0].id, other);
}

const SECRET: &str = "whsec_dGVzdC1zZWNyZXQtZm9yLXdlYmhvb2tzLTEyMzQ=";

#[derive(Default)]
struct Received {
    /// (webhook-id, status answered) for every attempt, in arrival order.
    attempts: Vec<(String, u16)>,
    bodies: Vec<serde_json::Value>,
}

#[tokio::test]
async fn the_webhook_sink_signs_each_delivery_and_is_retried_after_500s_in_order() {
    let received = Arc::new(Mutex::new(Received::default()));
    let app = Router::new()
        .route(
            "/hooks",
            post(
                |State(rx): State<Arc<Mutex<Received>>>, headers: HeaderMap, body: Bytes| async move {
                    let id = match verify_webhook(SECRET, &headers, &body) {
                        Ok(id) => id,
                        Err(why) => panic!("receiver refused a delivery: {why}"),
                    };
                    let mut rx = rx.lock().unwrap();
                    // Every event fails twice with a 500 before it is taken.
                    let tries = rx.attempts.iter().filter(|(i, _)| *i == id).count();
                    let status = if tries < 2 { 500 } else { 204 };
                    rx.attempts.push((id, status));
                    if status == 204 {
                        rx.bodies.push(serde_json::from_slice(&body).unwrap());
                    }
                    StatusCode::from_u16(status).unwrap()
                },
            ),
        )
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let sink = WebhookSink::new(&format!("http://{addr}/hooks"), SECRET).unwrap();
    let (events, delivery) = Events::builder().sink(sink).retry(quick_retry(5)).start();
    let org = OrgId::from("org_1");
    let ids: Vec<String> = (0..3).map(|n| events.emit(&org, revoked(n))).collect();
    assert!(delivery.shutdown(Duration::from_secs(10)).await);
    server.abort();

    let rx = received.lock().unwrap();
    let expected: Vec<(String, u16)> = ids
        .iter()
        .flat_map(|id| [(id.clone(), 500), (id.clone(), 500), (id.clone(), 204)])
        .collect();
    assert_eq!(rx.attempts, expected);
    assert_eq!(rx.bodies.len(), 3);
    assert_eq!(rx.bodies[0]["type"], "key_revoked");
    assert_eq!(rx.bodies[0]["org_id"], "org_1");
    assert_eq!(rx.bodies[0]["key_id"], "key_0");
    assert_eq!(rx.bodies[0]["id"], ids[0].as_str());
    assert_eq!((events.delivered(), events.failed()), (3, 0));
}

#[tokio::test]
async fn an_unreachable_webhook_is_given_up_and_counted() {
    // A port nothing listens on: bind, read the address, close.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let sink = WebhookSink::new(&format!("http://{addr}/hooks"), SECRET).unwrap();
    let (events, delivery) = Events::builder().sink(sink).retry(quick_retry(3)).start();
    events.emit(&OrgId::from("org_1"), revoked(1));
    assert!(delivery.shutdown(Duration::from_secs(10)).await);
    assert_eq!((events.delivered(), events.failed()), (0, 1));
}

#[test]
fn bad_secrets_and_urls_are_refused() {
    use tower_api_key::events::webhook::WebhookError;
    assert_eq!(
        WebhookSink::new("http://127.0.0.1:1/", "secret").unwrap_err(),
        WebhookError::Secret
    );
    assert_eq!(
        WebhookSink::new("http://127.0.0.1:1/", "whsec_!!").unwrap_err(),
        WebhookError::Secret
    );
    assert_eq!(
        WebhookSink::new("ftp://127.0.0.1/", SECRET).unwrap_err(),
        WebhookError::Url
    );
    assert_eq!(
        WebhookSink::new("/relative", SECRET).unwrap_err(),
        WebhookError::Url
    );
}
