//! The counters published through the `metrics` facade, rendered by the Prometheus exporter:
//! the values match what happened, and `promtool check metrics` accepts the output.
#![cfg(all(feature = "metrics", feature = "events"))]

mod common;
#[path = "common/observability.rs"]
mod observability;

use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use observability::{promtool_check, sample};
use tower_api_key::events::{Actor, EventKind, Events, RecentEvents};
use tower_api_key::telemetry::Telemetry;
use tower_api_key::{CachedStore, KeyHash, KeyId, KeyStore, MemoryStore, OrgId};

#[tokio::test]
async fn published_counters_match_what_happened_and_pass_promtool() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).unwrap();

    // Three lookups of unknown hashes: three misses, and the negative cache holds them.
    let store = CachedStore::new(MemoryStore::new());
    for i in 0..3u8 {
        let hash = KeyHash::of(&format!("br_live_{i:0>32}"));
        assert!(store.find_by_hash(&hash).await.unwrap().is_none());
    }
    // Five events into a queue of two behind a sink that is never polled before the emits.
    let (events, delivery) = Events::builder()
        .sink(RecentEvents::new(10))
        .capacity(2)
        .start();
    let org = OrgId::from("org_1");
    for n in 0..5 {
        events.emit(
            &org,
            EventKind::KeyRevoked {
                key_id: KeyId::from(format!("key_{n}")),
                actor: Actor::System,
            },
        );
    }
    let dropped = events.dropped();
    assert!(
        dropped >= 2,
        "at most 2 queued and 1 in delivery: {dropped}"
    );
    assert!(delivery.shutdown(Duration::from_secs(5)).await);

    let telemetry = Telemetry::new().cache(&store).events(&events);
    telemetry.publish();
    let text = handle.render();

    assert_eq!(sample(&text, "tower_api_key_cache_misses_total", ""), 3.0);
    assert_eq!(
        sample(&text, "tower_api_key_cache_entries", r#"kind="unknown""#),
        3.0
    );
    assert_eq!(
        sample(&text, "tower_api_key_breaker_state", r#"backend="store""#),
        0.0
    );
    assert_eq!(
        sample(&text, "tower_api_key_events_total", r#"result="emitted""#),
        5.0
    );
    assert_eq!(
        sample(&text, "tower_api_key_events_total", r#"result="dropped""#),
        dropped as f64
    );
    assert_eq!(
        sample(&text, "tower_api_key_events_total", r#"result="delivered""#),
        5.0 - dropped as f64
    );
    assert!(text.contains("# HELP tower_api_key_cache_misses_total"));
    promtool_check(&text);
}

/// A GET from TCP peer `peer` with `authorization` (if any).
fn from(peer: &str, auth: Option<&str>) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let mut req = common::get("/v1/things", auth);
    req.extensions_mut()
        .insert(tower_api_key::client_addr::PeerAddr(peer.parse().unwrap()));
    req
}

#[tokio::test]
async fn request_path_counters_match_the_requests_driven_through_the_stack() {
    use common::stores::{Mode, TestStore};
    use common::{Fixture, bearer, echo_principal};
    use metrics_exporter_prometheus::Matcher;
    use tower::{Service, ServiceExt, service_fn};
    use tower_api_key::telemetry::LOOKUP_BUCKETS;
    use tower_api_key::{
        ApiKeyAuth, KeyFormat, LastUsedRecorder, OrgRateLimit, Plan, Quota, SessionQuota,
    };

    // A recorder of this test's own (the other test installs the global one).
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("tower_api_key_store_lookup_duration_seconds".into()),
            LOOKUP_BUCKETS,
        )
        .unwrap()
        .build_recorder();
    let handle = recorder.handle();

    let f = Fixture::new();
    let free = f.mint("org_free", &[]).await;
    let ent = OrgId::from("org_ent");
    let quota = Quota {
        requests: 2,
        period: Duration::from_secs(60),
        concurrent_sessions: 1,
    };
    f.manager
        .set_plan(&ent, Plan::Enterprise(quota))
        .await
        .unwrap();
    let enterprise = f.mint("org_ent", &[]).await;
    let revoked = f.mint("org_free", &[]).await;
    f.manager
        .revoke(&revoked.record.org_id, &revoked.record.id)
        .await
        .unwrap();
    // Every cache miss waits on the store (it yields once before answering).
    let store = CachedStore::new(TestStore::new(f.store.clone(), Mode::Yield));
    let last_used = LastUsedRecorder::new(f.store.clone())
        .clock(f.clock.clone())
        .meter_usage(true);
    let stack = ApiKeyAuth::new(store.clone())
        .clock(f.clock.clone())
        .invalid_key_limit(4, Duration::from_secs(60))
        .rate_limit(OrgRateLimit::new().clock(f.clock.clone()))
        .record_last_used(last_used.clone());
    let mut svc = tower::ServiceBuilder::new()
        .layer(stack.clone())
        .service(service_fn(echo_principal));
    let mut statuses = Vec::new();
    let mut send = async |req| {
        let res = svc.ready().await.unwrap().call(req).await.unwrap();
        statuses.push(res.status().as_u16());
    };
    let ok_peer = "198.51.100.1:1";
    let bad_peer = "203.0.113.7:1";
    for _ in 0..3 {
        send(from(ok_peer, Some(&bearer(&free)))).await;
    }
    for _ in 0..3 {
        send(from(ok_peer, Some(&bearer(&enterprise)))).await;
    }
    let unknown = format!(
        "Bearer {}",
        KeyFormat::live().generate().unwrap().expose_secret()
    );
    send(from(bad_peer, None)).await;
    send(from(bad_peer, Some("Bearer br_live_nope"))).await;
    send(from(bad_peer, Some("Bearer br_live_nope"))).await;
    send(from(bad_peer, Some(&unknown))).await;
    send(from(bad_peer, Some(&bearer(&revoked)))).await;
    send(from(bad_peer, Some("Bearer br_live_nope"))).await;
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 200, 429, 401, 401, 401, 401, 401, 429]
    );

    let sessions = SessionQuota::new().clock(f.clock.clone());
    sessions
        .acquire_for(&ent, 1, "s1", Duration::from_secs(60))
        .await
        .unwrap();
    assert!(
        sessions
            .acquire_for(&ent, 1, "s2", Duration::from_secs(60))
            .await
            .is_err()
    );

    last_used.flush().await.unwrap();
    f.time.advance(Duration::from_secs(30));

    // Made under the recorder: `Telemetry::new` describes the metrics to the current one.
    let telemetry = metrics::with_local_recorder(&recorder, || {
        let telemetry = Telemetry::new()
            .cache(&store)
            .stack(&stack)
            .sessions(&sessions)
            .last_used(&last_used);
        telemetry.publish();
        telemetry
    });
    // No organization label unless asked for.
    assert!(!handle.render().contains("org_id="));
    // The same sources again, plus the opt-in one: only what is new is added.
    metrics::with_local_recorder(&recorder, || {
        telemetry.usage_by_org(&last_used).publish();
    });
    let text = handle.render();
    let org = |org: &str, outcome: &str| {
        sample(
            &text,
            "tower_api_key_org_requests_total",
            &format!(r#"org_id="{org}",outcome="{outcome}""#),
        )
    };
    assert_eq!(org("org_free", "accepted"), 3.0);
    assert_eq!(org("org_free", "rate_limited"), 0.0);
    assert_eq!(org("org_ent", "accepted"), 2.0);
    assert_eq!(org("org_ent", "rate_limited"), 1.0);
    let auth = |result: &str, reason: &str| {
        sample(
            &text,
            "tower_api_key_auth_decisions_total",
            &format!(r#"result="{result}",reason="{reason}""#),
        )
    };
    assert_eq!(auth("accepted", "none"), 6.0);
    assert_eq!(auth("refused", "missing"), 1.0);
    assert_eq!(auth("refused", "malformed"), 2.0);
    assert_eq!(auth("refused", "unknown"), 1.0);
    assert_eq!(auth("refused", "revoked"), 1.0);
    assert_eq!(auth("refused", "expired"), 0.0);
    assert_eq!(auth("refused", "too_many_invalid_keys"), 1.0);
    let limit = |result: &str, plan: &str| {
        sample(
            &text,
            "tower_api_key_rate_limit_decisions_total",
            &format!(r#"result="{result}",plan="{plan}""#),
        )
    };
    assert_eq!(limit("accepted", "free"), 3.0);
    assert_eq!(limit("accepted", "enterprise"), 2.0);
    assert_eq!(limit("refused", "enterprise"), 1.0);
    assert_eq!(limit("refused", "free"), 0.0);
    let acquires = |result: &str| {
        sample(
            &text,
            "tower_api_key_session_acquires_total",
            &format!(r#"result="{result}""#),
        )
    };
    assert_eq!(acquires("accepted"), 1.0);
    assert_eq!(acquires("refused"), 1.0);
    // Four distinct keys looked up (free, enterprise, unknown, revoked): four misses that
    // waited on the store; the other four lookups of the valid keys were hits.
    assert_eq!(sample(&text, "tower_api_key_cache_misses_total", ""), 4.0);
    assert_eq!(sample(&text, "tower_api_key_cache_hits_total", ""), 4.0);
    assert_eq!(
        sample(
            &text,
            "tower_api_key_store_lookup_duration_seconds_count",
            ""
        ),
        4.0
    );
    assert_eq!(
        sample(
            &text,
            "tower_api_key_store_lookup_duration_seconds_bucket",
            r#"le="+Inf""#
        ),
        4.0
    );
    assert_eq!(
        sample(
            &text,
            "tower_api_key_store_lookup_errors_total",
            r#"kind="timeout""#
        ),
        0.0
    );
    assert_eq!(
        sample(
            &text,
            "tower_api_key_last_used_flushes_total",
            r#"result="ok""#
        ),
        1.0
    );
    assert_eq!(
        sample(&text, "tower_api_key_last_used_flush_lag_seconds", ""),
        30.0
    );
    assert!(text.contains("# TYPE tower_api_key_store_lookup_duration_seconds histogram"));
    assert!(
        text.lines()
            .filter(|l| l.contains("org_id="))
            .all(|l| l.starts_with("tower_api_key_org_requests_total{")),
        "an organization label only on the opted-in series"
    );
    promtool_check(&text);
}
