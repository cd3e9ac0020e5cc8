//! Leaked keys (feature `leaks`): GitHub's signed secret-scanning reports, the public revoke
//! endpoint, and the scanner pattern. The signing key pair is made in each test; with
//! `DATABASE_URL`, a leak revoked on one replica is refused by another.

mod common;
#[cfg(all(feature = "serve", feature = "dashboard"))]
#[path = "common/server.rs"]
mod server;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use base64::Engine as _;
use common::{Fixture, bearer, body_json, echo_principal, get, problem_of};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::{EncodePublicKey as _, LineEnding};
use proptest::prelude::*;
use serde_json::{Value, json};
use tower::ServiceExt;
use tower_api_key::client_addr::PeerAddr;
use tower_api_key::leaks::{
    LeakedKey, Leaks, MAX_CREDENTIALS, ScanningKeys, ScanningKeysError, Via, is_well_formed,
    scanner_pattern,
};
use tower_api_key::rate_limit::AddrRateLimit;
use tower_api_key::{ApiKeyAuth, CreatedKey, KeyFormat, KeyFormats, KeyHash, MemoryStore, OrgId};
use tower_layer::Layer;

// ---------------------------------------------------------------------------------------------
// Fixtures.

/// A P-256 key pair made here, and GitHub's published-keys JSON naming its public half.
struct Signer {
    id: String,
    key: SigningKey,
}

impl Signer {
    fn new(id: &str) -> Self {
        loop {
            let mut secret = [0u8; 32];
            getrandom::fill(&mut secret).unwrap();
            // Fails only for zero or a value past the group order: about 2^-32 of draws.
            if let Ok(key) = SigningKey::from_bytes(&secret.into()) {
                return Self {
                    id: id.to_owned(),
                    key,
                };
            }
        }
    }

    fn pem(&self) -> String {
        self.key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap()
    }

    /// `{"public_keys": [...]}` as GitHub publishes it, with these signers.
    fn github_json(signers: &[&Signer]) -> Vec<u8> {
        let keys: Vec<Value> = signers
            .iter()
            .enumerate()
            .map(|(i, s)| json!({"key_identifier": s.id, "key": s.pem(), "is_current": i == 0}))
            .collect();
        serde_json::to_vec(&json!({ "public_keys": keys })).unwrap()
    }

    /// Base64 of the DER signature of `body`.
    fn sign(&self, body: &[u8]) -> String {
        let sig: Signature = self.key.sign(body);
        base64::engine::general_purpose::STANDARD.encode(sig.to_der().as_bytes())
    }
}

/// The leaks routes over a fixture's manager, with the leaks reported to `seen`.
struct Leak {
    fx: Fixture,
    seen: Arc<Mutex<Vec<LeakedKey>>>,
    github: Signer,
    app: Router,
}

const SCANNING: &str = "/security/secret-scanning";
const REVOKE: &str = "/credentials/revoke";

impl Leak {
    fn new() -> Self {
        Self::with(|fx| fx.manager.clone(), |r| r)
    }

    fn with(
        manager: impl FnOnce(&Fixture) -> tower_api_key::KeyManager<MemoryStore>,
        revoke: impl FnOnce(
            tower_api_key::leaks::PublicRevoke<MemoryStore>,
        ) -> tower_api_key::leaks::PublicRevoke<MemoryStore>,
    ) -> Self {
        let fx = Fixture::new();
        let github = Signer::new("github-key-1");
        let other = Signer::new("github-key-0");
        let keys =
            ScanningKeys::from_github_json(&Signer::github_json(&[&github, &other])).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let leaks =
            Leaks::new(manager(&fx)).on_leak(move |leak| sink.lock().unwrap().push(leak.clone()));
        let app = Router::new()
            .route(
                SCANNING,
                leaks.secret_scanning(keys).max_body(64 * 1024).route(),
            )
            .route(REVOKE, revoke(leaks.public_revoke()).route());
        Self {
            fx,
            seen,
            github,
            app,
        }
    }

    fn leaked(&self) -> Vec<LeakedKey> {
        self.seen.lock().unwrap().clone()
    }

    async fn send(&self, req: Request<Body>) -> Response<Body> {
        self.app.clone().oneshot(req).await.unwrap()
    }

    /// A report signed by `key_id` with `signature`, both optional.
    async fn report_raw(
        &self,
        body: &[u8],
        key_id: Option<&str>,
        signature: Option<&str>,
    ) -> Response<Body> {
        let mut req = Request::post(SCANNING).header("content-type", "application/json");
        if let Some(id) = key_id {
            req = req.header("Github-Public-Key-Identifier", id);
        }
        if let Some(sig) = signature {
            req = req.header("Github-Public-Key-Signature", sig);
        }
        self.send(req.body(Body::from(body.to_vec())).unwrap())
            .await
    }

    /// A report correctly signed by GitHub's key; the feedback.
    async fn report(&self, matches: Value) -> Value {
        let body = serde_json::to_vec(&matches).unwrap();
        let res = self
            .report_raw(&body, Some(&self.github.id), Some(&self.github.sign(&body)))
            .await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["content-type"], "application/json");
        body_json(res).await
    }

    /// A public revocation from `peer`.
    async fn revoke_from(&self, peer: &str, body: impl Into<Body>) -> Response<Body> {
        let mut req = Request::post(REVOKE)
            .header("content-type", "application/json")
            .body(body.into())
            .unwrap();
        req.extensions_mut()
            .insert(PeerAddr(peer.parse::<SocketAddr>().unwrap()));
        self.send(req).await
    }

    /// What the API answers for `key`: the status of an `ApiKeyAuth`-guarded request.
    async fn api_status(&self, key: &CreatedKey) -> StatusCode {
        let svc = ApiKeyAuth::new(self.fx.store.clone())
            .clock(self.fx.clock.clone())
            .layer(tower::service_fn(echo_principal));
        svc.oneshot(get("/v1/browsers", Some(&bearer(key))))
            .await
            .unwrap()
            .status()
    }

    async fn is_revoked(&self, key: &CreatedKey) -> bool {
        let org = &key.record.org_id;
        let record = self.fx.manager.get(org, &key.record.id).await.unwrap();
        record.revoked_at.is_some()
    }
}

type BadReport<'a> = (&'a str, &'a [u8], Option<&'a str>, Option<String>, &'a str);

fn token_hash(token: &str) -> String {
    KeyHash::of(token).to_hex()
}

async fn parts(res: Response<Body>) -> (StatusCode, Vec<(String, Vec<u8>)>, Vec<u8>) {
    let status = res.status();
    let headers = res
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect();
    let body = res.into_body().collect().await.unwrap().to_bytes().to_vec();
    (status, headers, body)
}

fn match_of(token: &str) -> Value {
    json!({
        "token": token,
        "type": "acme_api_key",
        "url": "https://github.com/octocat/hello/blob/abc/config.env",
        "source": "content",
    })
}

// ---------------------------------------------------------------------------------------------
// Secret scanning.

#[tokio::test]
async fn a_signed_report_revokes_the_live_key_and_the_api_then_answers_401() {
    let t = Leak::new();
    let key = t.fx.mint("org_acme", &[]).await;
    assert_eq!(t.api_status(&key).await, StatusCode::OK);
    let token = key.key.expose_secret();

    let feedback = t.report(json!([match_of(token)])).await;

    assert_eq!(
        feedback,
        json!([{"token_hash": token_hash(token), "token_type": "acme_api_key", "label": "true_positive"}])
    );
    assert!(t.is_revoked(&key).await);
    assert_eq!(t.api_status(&key).await, StatusCode::UNAUTHORIZED);
    let leak = &t.leaked()[..];
    assert_eq!(leak.len(), 1);
    assert_eq!(leak[0].key_id, key.record.id);
    assert_eq!(leak[0].org_id, OrgId::from("org_acme"));
    assert_eq!(
        leak[0].url.as_deref(),
        Some("https://github.com/octocat/hello/blob/abc/config.env")
    );
    assert_eq!(leak[0].source.as_deref(), Some("content"));
    assert_eq!(leak[0].via, Via::SecretScanning);
}

#[tokio::test]
async fn unknown_and_revoked_keys_are_false_positives_and_other_tokens_get_no_entry() {
    let t = Leak::new();
    let revoked = t.fx.mint("org_acme", &[]).await;
    t.fx.manager
        .revoke(&revoked.record.org_id, &revoked.record.id)
        .await
        .unwrap();
    let unknown = KeyFormat::live().generate().unwrap();
    let live = t.fx.mint("org_acme", &[]).await;

    let feedback = t
        .report(json!([
            match_of(unknown.expose_secret()),
            match_of(revoked.key.expose_secret()),
            match_of("ghp_16C7e42F292c6912E7710c838347Ae178B4a"),
            match_of("br_live_tooshort"),
            match_of(&format!("{}!", &live.key.expose_secret()[..39])),
        ]))
        .await;

    assert_eq!(
        feedback,
        json!([
            {"token_hash": token_hash(unknown.expose_secret()), "token_type": "acme_api_key", "label": "false_positive"},
            {"token_hash": token_hash(revoked.key.expose_secret()), "token_type": "acme_api_key", "label": "false_positive"},
        ])
    );
    assert!(
        t.leaked().is_empty(),
        "no live key leaked: {:?}",
        t.leaked()
    );
    assert!(!t.is_revoked(&live).await, "a near miss revokes nothing");
}

#[tokio::test]
async fn a_token_reported_twice_in_one_report_is_revoked_once_and_labelled_twice() {
    let t = Leak::new();
    let key = t.fx.mint("org_acme", &[]).await;
    let token = key.key.expose_secret();
    let feedback = t.report(json!([match_of(token), match_of(token)])).await;
    let labels: Vec<&str> = feedback
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["true_positive", "true_positive"]);
    assert_eq!(t.leaked().len(), 1);
}

#[tokio::test]
async fn a_checksummed_format_labels_no_token_with_a_bad_checksum() {
    let format = KeyFormat::new("btk_", "live").unwrap().with_checksum(true);
    let formats = KeyFormats::from(format.clone());
    let t = Leak::with(|fx| fx.manager.clone().formats(formats), |r| r);
    let key = t.fx.mint("org_acme", &[]).await;
    let token = key.key.expose_secret();
    // The same key with its last checksum digit changed.
    let last = token.as_bytes()[token.len() - 1];
    let bad = format!(
        "{}{}",
        &token[..token.len() - 1],
        if last == b'0' { '1' } else { '0' }
    );

    let feedback = t.report(json!([match_of(&bad)])).await;

    assert_eq!(feedback, json!([]));
    assert!(!t.is_revoked(&key).await);
}

#[tokio::test]
async fn badly_signed_reports_are_refused_with_401_and_revoke_nothing() {
    let t = Leak::new();
    let key = t.fx.mint("org_acme", &[]).await;
    let body = serde_json::to_vec(&json!([match_of(key.key.expose_secret())])).unwrap();
    let good = t.github.sign(&body);
    let stranger = Signer::new("not-github");
    let other_body = serde_json::to_vec(&json!([match_of("br_live_x")])).unwrap();
    let mut tampered = body.clone();
    // The same report pointing somewhere else: the signature no longer covers it.
    let at = tampered.windows(7).position(|w| w == b"octocat").unwrap();
    tampered[at] = b'O';

    // (case, body, key id header, signature header, expected code)
    let cases: [BadReport; 7] = [
        (
            "unknown key id",
            &body,
            Some("not-github"),
            Some(stranger.sign(&body)),
            "unknown_signing_key",
        ),
        (
            "known id, signed by another key",
            &body,
            Some(&t.github.id),
            Some(stranger.sign(&body)),
            "signature_invalid",
        ),
        (
            "tampered body",
            &tampered,
            Some(&t.github.id),
            Some(good.clone()),
            "signature_invalid",
        ),
        (
            "replayed with another body's signature",
            &body,
            Some(&t.github.id),
            Some(t.github.sign(&other_body)),
            "signature_invalid",
        ),
        (
            "signature not base64",
            &body,
            Some(&t.github.id),
            Some("%%%".to_owned()),
            "signature_invalid",
        ),
        (
            "no signature header",
            &body,
            Some(&t.github.id),
            None,
            "signature_missing",
        ),
        (
            "no key id header",
            &body,
            None,
            Some(good.clone()),
            "signature_missing",
        ),
    ];
    for (case, body, id, sig, code) in cases {
        let res = t.report_raw(body, id, sig.as_deref()).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{case}");
        assert!(res.headers().contains_key("www-authenticate"), "{case}");
        assert_eq!(problem_of(res).await["code"], code, "{case}");
    }
    assert!(!t.is_revoked(&key).await);
    assert!(t.leaked().is_empty());
    // The genuine report still works after all that.
    let res = t.report_raw(&body, Some(&t.github.id), Some(&good)).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(t.is_revoked(&key).await);
}

#[tokio::test]
async fn oversized_and_malformed_reports_are_refused_with_their_codes() {
    let t = Leak::new();
    let big = vec![b' '; 64 * 1024 + 1];
    let res = t
        .report_raw(&big, Some(&t.github.id), Some(&t.github.sign(&big)))
        .await;
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(problem_of(res).await["code"], "body_too_large");

    let not_a_report = br#"{"token": "br_live_x"}"#;
    let res = t
        .report_raw(
            not_a_report,
            Some(&t.github.id),
            Some(&t.github.sign(not_a_report)),
        )
        .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(problem_of(res).await["code"], "invalid_request");
}

#[test]
fn github_s_key_document_is_read_and_bad_keys_are_named() {
    let a = Signer::new("a");
    let b = Signer::new("b");
    let keys = ScanningKeys::from_github_json(&Signer::github_json(&[&a, &b])).unwrap();
    assert_eq!(keys.len(), 2);

    let bad = json!({"public_keys": [{"key_identifier": "k9", "key": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "is_current": true}]});
    match ScanningKeys::from_github_json(bad.to_string().as_bytes()) {
        Err(ScanningKeysError::Pem { key_identifier }) => assert_eq!(key_identifier, "k9"),
        other => panic!("expected ScanningKeysError::Pem, got {other:?}"),
    }
    assert!(matches!(
        ScanningKeys::from_github_json(b"[]"),
        Err(ScanningKeysError::Json(_))
    ));

    // A refresh reaches every clone; a failed one changes nothing.
    let shared = keys.clone();
    keys.replace_from_github_json(&Signer::github_json(&[&a]))
        .unwrap();
    assert_eq!(shared.len(), 1);
    assert!(keys.replace_from_github_json(b"{").is_err());
    assert_eq!(shared.len(), 1);
}

#[tokio::test]
async fn the_leak_report_carries_no_control_characters() {
    let t = Leak::new();
    let key = t.fx.mint("org_acme", &[]).await;
    let mut m = match_of(key.key.expose_secret());
    m["url"] = json!("https://github.com/x\n2026-01-01 INFO forged line");
    m["source"] = json!("content\r\u{1b}[2J");
    t.report(json!([m])).await;
    let leak = &t.leaked()[0];
    assert_eq!(
        leak.url.as_deref(),
        Some("https://github.com/x\u{FFFD}2026-01-01 INFO forged line")
    );
    assert_eq!(leak.source.as_deref(), Some("content\u{FFFD}\u{FFFD}[2J"));
}

#[cfg(feature = "events")]
#[tokio::test]
async fn leaks_reach_the_event_sink_with_one_line() {
    use tower_api_key::events::{EventKind, Events, RecentEvents};
    let recent = RecentEvents::new(10);
    let (events, delivery) = Events::builder().sink(recent.clone()).start();
    let fx = Fixture::new();
    let leaks = Leaks::new(fx.manager.clone()).events(events);
    let app: Router = Router::new().route(REVOKE, leaks.public_revoke().route());
    let key = fx.mint("org_events", &[]).await;
    let mut req = Request::post(REVOKE)
        .header("content-type", "application/json")
        .body(Body::from(credentials(&[key.key.expose_secret()])))
        .unwrap();
    req.extensions_mut()
        .insert(PeerAddr("203.0.113.7:4711".parse().unwrap()));
    assert_eq!(
        app.oneshot(req).await.unwrap().status(),
        StatusCode::ACCEPTED
    );
    // Deliver what is queued, then read it.
    delivery.shutdown(Duration::from_secs(5)).await;
    let got = recent.list(&OrgId::from("org_events"));
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].kind,
        EventKind::KeyLeaked {
            key_id: key.record.id.clone(),
            url: None,
            source: "public_revoke".to_owned(),
        }
    );
}

// ---------------------------------------------------------------------------------------------
// The public endpoint.

fn credentials(tokens: &[&str]) -> String {
    json!({ "credentials": tokens }).to_string()
}

#[tokio::test]
async fn the_public_endpoint_answers_the_same_bytes_for_real_unknown_and_malformed_keys() {
    let t = Leak::new();
    let real = t.fx.mint("org_acme", &[]).await;
    let unknown = KeyFormat::live().generate().unwrap();

    let mut answers = Vec::new();
    for body in [
        credentials(&[real.key.expose_secret()]),
        credentials(&[unknown.expose_secret()]),
        credentials(&["not a key at all"]),
        credentials(&[]),
        credentials(&[real.key.expose_secret()]), // again, now revoked
    ] {
        answers.push(parts(t.revoke_from("203.0.113.7:4711", body).await).await);
    }
    assert_eq!(answers[0].0, StatusCode::ACCEPTED);
    for (i, a) in answers.iter().enumerate() {
        assert_eq!(a, &answers[0], "answer {i} differs from the first");
    }
    assert!(t.is_revoked(&real).await);
    assert_eq!(t.api_status(&real).await, StatusCode::UNAUTHORIZED);
    let leaked = t.leaked();
    assert_eq!(leaked.len(), 1);
    assert_eq!(leaked[0].key_id, real.record.id);
    assert_eq!(leaked[0].via, Via::PublicRevoke);
    assert_eq!(leaked[0].url, None);
}

#[tokio::test]
async fn the_public_endpoint_revokes_every_real_key_of_a_batch() {
    let t = Leak::new();
    let a = t.fx.mint("org_a", &[]).await;
    let b = t.fx.mint("org_b", &[]).await;
    let bystander = t.fx.mint("org_a", &[]).await;
    let res = t
        .revoke_from(
            "203.0.113.7:4711",
            credentials(&[a.key.expose_secret(), "junk", b.key.expose_secret()]),
        )
        .await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    assert!(t.is_revoked(&a).await && t.is_revoked(&b).await);
    assert!(!t.is_revoked(&bystander).await);
}

#[tokio::test]
async fn the_1001st_credential_is_refused_and_nothing_is_revoked() {
    let t = Leak::new();
    let real = t.fx.mint("org_acme", &[]).await;
    let filler = KeyFormat::live().generate().unwrap();
    let mut tokens = vec![filler.expose_secret(); MAX_CREDENTIALS];
    tokens[0] = real.key.expose_secret();

    tokens.push("one too many");
    let res = t
        .revoke_from("203.0.113.7:4711", credentials(&tokens))
        .await;
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(problem_of(res).await["code"], "too_many_credentials");
    assert!(!t.is_revoked(&real).await);

    tokens.pop();
    let res = t
        .revoke_from("203.0.113.7:4711", credentials(&tokens))
        .await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    assert!(t.is_revoked(&real).await);
}

#[tokio::test]
async fn a_flood_from_one_address_is_refused_with_429_and_others_still_get_through() {
    let t = Leak::with(
        |fx| fx.manager.clone(),
        |r| r.rate_limit(AddrRateLimit::new(3, Duration::from_secs(60))),
    );
    let body = credentials(&["br_live_whatever"]);
    for i in 0..3 {
        let res = t.revoke_from("198.51.100.9:1000", body.clone()).await;
        assert_eq!(res.status(), StatusCode::ACCEPTED, "request {i}");
    }
    let res = t.revoke_from("198.51.100.9:2000", body.clone()).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=20).contains(&retry), "Retry-After {retry}");
    assert_eq!(problem_of(res).await["code"], "rate_limited");
    // A real key in a refused request is not revoked: the limit is checked first.
    let real = t.fx.mint("org_acme", &[]).await;
    let res = t
        .revoke_from(
            "198.51.100.9:3000",
            credentials(&[real.key.expose_secret()]),
        )
        .await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(!t.is_revoked(&real).await);

    let res = t.revoke_from("192.0.2.1:1000", body).await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
}

#[tokio::test]
async fn the_public_endpoint_refuses_bad_bodies_and_requests_without_an_address() {
    let t = Leak::new();
    for (body, code) in [
        ("{", "invalid_request"),
        (r#"{"credentials": "br_live_x"}"#, "invalid_request"),
        (r#"{"credentials": [1, 2]}"#, "invalid_request"),
        (r#"["br_live_x"]"#, "invalid_request"),
    ] {
        let res = t.revoke_from("203.0.113.7:4711", body).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{body}");
        let problem = problem_of(res).await;
        assert_eq!(problem["code"], code, "{body}");
        // What is wrong and where, but no value of the body: it may be a live key.
        let title = problem["title"].as_str().unwrap();
        assert!(title.contains("line 1, column"), "{title}");
        assert!(!title.contains("br_live_x"), "{title}");
    }
    let huge = credentials(&[&"x".repeat(200 * 1024)]);
    let res = t.revoke_from("203.0.113.7:4711", huge).await;
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(problem_of(res).await["code"], "body_too_large");

    // Not served by serve::Server, and no PeerAddr: fail closed rather than share one bucket.
    let req = Request::post(REVOKE)
        .header("content-type", "application/json")
        .body(Body::from(credentials(&[])))
        .unwrap();
    let res = t.send(req).await;
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(problem_of(res).await["code"], "client_address_unknown");
}

// ---------------------------------------------------------------------------------------------
// Replicas: a leak revoked through one replica is refused by the other, through the same
// LISTEN/NOTIFY invalidation as any revocation (tests/replicas.rs measures the bound).

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leak_revoked_on_one_replica_is_refused_by_the_other() {
    use std::time::Instant;
    use tower_api_key::store::{CacheConfig, CachedStore};
    use tower_api_key::{Clock, KeyManager, NewKey};

    let Some(url) = common::pg::database_url("leaks replicas") else {
        return;
    };
    let (store_a, guard) = common::pg::store(&url).await;
    let store_b = common::pg::replica(&url, &guard).await;
    // Caches that would serve a stale entry for an hour: only the pushed invalidation can
    // explain a refusal on B.
    let config = CacheConfig::default()
        .ttl(Duration::from_secs(3600))
        .negative_ttl(Duration::from_secs(3600));
    let a = CachedStore::with_config(store_a.clone(), config.clone());
    a.subscribe(store_a.invalidations().await.unwrap());
    let b = CachedStore::with_config(store_b.clone(), config);
    b.subscribe(store_b.invalidations().await.unwrap());

    let manager = KeyManager::new(a).clock(Clock::coarse());
    let created = manager
        .create(&OrgId::from("org_leak_replicas"), NewKey::new("ci"))
        .await
        .unwrap();
    let app: Router = Router::new().route(REVOKE, Leaks::new(manager).public_revoke().route());
    let api_b = ApiKeyAuth::new(b.clone()).layer(tower::service_fn(echo_principal));
    let call_b = || {
        api_b
            .clone()
            .oneshot(get("/v1/browsers", Some(&bearer(&created))))
    };
    // Until B serves the key from its cache (its own creation notice may evict it once).
    let start = Instant::now();
    loop {
        let misses = b.stats().misses;
        assert_eq!(call_b().await.unwrap().status(), StatusCode::OK);
        if b.stats().misses == misses {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "B never caches the key"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    let mut req = Request::post(REVOKE)
        .header("content-type", "application/json")
        .body(Body::from(credentials(&[created.key.expose_secret()])))
        .unwrap();
    req.extensions_mut()
        .insert(PeerAddr("203.0.113.7:4711".parse().unwrap()));
    assert_eq!(
        app.oneshot(req).await.unwrap().status(),
        StatusCode::ACCEPTED
    );

    let revoked = Instant::now();
    while call_b().await.unwrap().status() != StatusCode::UNAUTHORIZED {
        assert!(
            revoked.elapsed() < Duration::from_secs(2),
            "replica B still accepts the leaked key"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    println!(
        "leak revoked on A -> refused on B in {:?}",
        revoked.elapsed()
    );
    drop(guard);
}

// ---------------------------------------------------------------------------------------------
// The example server: both routes mounted, GitHub's keys from `--scanning-keys`.

#[cfg(all(feature = "serve", feature = "dashboard"))]
#[tokio::test]
async fn the_example_server_revokes_keys_reported_by_github_and_by_anyone() {
    let github = Signer::new("gh-1");
    let file = std::env::temp_dir().join(format!("tak-scanning-keys-{}.json", std::process::id()));
    std::fs::write(&file, Signer::github_json(&[&github])).unwrap();
    let srv = server::ExampleServer::start(&["--scanning-keys", file.to_str().unwrap()]);
    std::fs::remove_file(&file).unwrap();
    let http = reqwest::Client::new();
    let seed = || async {
        let v: Value = http
            .post(srv.url("/dev/seed"))
            .json(&json!({"org_id": "org_leaky"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["key"].as_str().unwrap().to_owned()
    };
    let usage = |key: String| {
        let req = http.get(srv.url("/v1/usage")).bearer_auth(key);
        async move { req.send().await.unwrap().status() }
    };
    let (scanned, posted) = (seed().await, seed().await);
    assert_eq!(usage(scanned.clone()).await, StatusCode::OK);
    assert_eq!(usage(posted.clone()).await, StatusCode::OK);

    let report = serde_json::to_vec(&json!([match_of(&scanned)])).unwrap();
    let unsigned = http
        .post(srv.url("/security/secret-scanning"))
        .body(report.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), StatusCode::UNAUTHORIZED);
    let res = http
        .post(srv.url("/security/secret-scanning"))
        .header("Github-Public-Key-Identifier", "gh-1")
        .header("Github-Public-Key-Signature", github.sign(&report))
        .body(report)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let feedback: Value = res.json().await.unwrap();
    assert_eq!(feedback[0]["label"], "true_positive");
    assert_eq!(usage(scanned).await, StatusCode::UNAUTHORIZED);

    let res = http
        .post(srv.url("/credentials/revoke"))
        .json(&json!({ "credentials": [posted] }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    assert_eq!(usage(posted).await, StatusCode::UNAUTHORIZED);
}

// ---------------------------------------------------------------------------------------------
// Nothing secret in the logs.

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn the_key_leaked_event_names_the_key_and_never_the_secret() {
    let out = Captured::default();
    let writer = out.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let t = Leak::new();
    let scanned = t.fx.mint("org_acme", &[]).await;
    let posted = t.fx.mint("org_acme", &[]).await;
    t.report(json!([match_of(scanned.key.expose_secret())]))
        .await;
    let res = t
        .revoke_from(
            "203.0.113.7:4711",
            credentials(&[posted.key.expose_secret()]),
        )
        .await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);

    let logs = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    let events: Vec<&str> = logs.lines().filter(|l| l.contains("key_leaked")).collect();
    assert_eq!(events.len(), 2, "{logs}");
    assert!(events[0].contains("WARN") && events[0].contains("tower_api_key::leaks"));
    assert!(events[0].contains(&format!("key_id={}", scanned.record.id)));
    assert!(events[0].contains("org_id=org_acme"));
    assert!(
        events[0].contains("via=\"secret_scanning\""),
        "{}",
        events[0]
    );
    assert!(events[1].contains(&format!("key_id={}", posted.record.id)));
    for key in [&scanned, &posted] {
        let secret = &key.key.expose_secret()["br_live_".len()..];
        assert!(!logs.contains(secret), "a raw key is in the logs");
    }
}

// ---------------------------------------------------------------------------------------------
// The pattern.

/// The checksum as the key format documents it, computed here independently: CRC32 of prefix
/// and random part, as 6 base62 digits, most significant first.
fn base62_crc32(text: &str) -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut sum = crc32fast::hash(text.as_bytes());
    let mut digits = [0u8; 6];
    for d in digits.iter_mut().rev() {
        *d = ALPHABET[(sum % 62) as usize];
        sum /= 62;
    }
    String::from_utf8(digits.to_vec()).unwrap()
}

#[test]
fn the_independent_checksum_agrees_with_generated_keys() {
    let key = KeyFormat::live().with_checksum(true).generate().unwrap();
    let key = key.expose_secret();
    assert_eq!(base62_crc32(&key[..key.len() - 6]), key[key.len() - 6..]);
}

fn format_strategy() -> impl Strategy<Value = KeyFormat> {
    ("[a-z0-9]{1,8}_", 16usize..=64, any::<bool>()).prop_map(|(prefix, len, checksum)| {
        KeyFormat::new(&prefix, "live")
            .unwrap()
            .with_random_len(len)
            .unwrap()
            .with_checksum(checksum)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_generated_key_matches_the_pattern_and_is_well_formed(
        format in format_strategy(),
        before in "[ =:\"'(]{0,2}",
        after in "[ \n\"',)]{0,2}",
    ) {
        let re = regex::Regex::new(&scanner_pattern(&format)).unwrap();
        let key = format.generate().unwrap();
        let key = key.expose_secret();
        let text = format!("API_KEY={before}{key}{after}");
        let found: Vec<&str> = re.find_iter(&text).map(|m| m.as_str()).collect();
        prop_assert_eq!(found, vec![key]);
        prop_assert!(is_well_formed(&KeyFormats::from(format.clone()), key));
    }

    #[test]
    fn random_strings_with_a_bad_checksum_are_not_well_formed(
        format in format_strategy(),
        body in "[0-9A-Za-z]{64}",
        sum in "[0-9A-Za-z]{6}",
    ) {
        let format = format.with_checksum(true);
        let random_len = format.key_len() - format.prefix().len() - 6;
        let candidate = format!("{}{}{}", format.prefix(), &body[..random_len], sum);
        // The regex alone cannot tell: it matches.
        let re = regex::Regex::new(&format!("^(?:{})$", scanner_pattern(&format))).unwrap();
        prop_assert!(re.is_match(&candidate));
        // One draw in 2^32 carries the right checksum by chance: that one is a key.
        let right = base62_crc32(&candidate[..candidate.len() - 6]);
        let formats = KeyFormats::from(format);
        prop_assert_eq!(is_well_formed(&formats, &candidate), sum == right);
    }

    #[test]
    fn a_one_character_typo_in_a_checksummed_key_is_caught(
        format in format_strategy(),
        at in any::<prop::sample::Index>(),
        with in "[0-9A-Za-z]",
    ) {
        let format = format.with_checksum(true);
        let key = format.generate().unwrap();
        let key = key.expose_secret();
        let at = format.prefix().len() + at.index(key.len() - format.prefix().len());
        prop_assume!(key[at..at + 1] != *with);
        let typo = format!("{}{}{}", &key[..at], with, &key[at + 1..]);
        prop_assert!(!is_well_formed(&KeyFormats::from(format), &typo));
    }
}
