//! The leaked-key routes' JSON bodies from arbitrary bytes, through the real routers. The first
//! byte picks the route; the rest is the body. Secret-scanning bodies are signed with a key the
//! receiver trusts, so they reach the JSON parser; public-revoke bodies come from one address
//! under a limit they never reach.
//!
//! Property: the routers never panic, and answer
//! - the receiver: `200` with a JSON array of `{"token_hash", "token_type", "label"}` entries,
//!   each label `true_positive` or `false_positive`, or `400 invalid_request`;
//! - the public endpoint: `202` with its one constant body, or `400 invalid_request` /
//!   `413 too_many_credentials`;
//!
//! every refusal as `application/problem+json` whose `status` member matches the response's.
#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use base64::Engine as _;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::{EncodePublicKey as _, LineEnding};
use serde_json::{Value, json};
use tower_api_key::client_addr::PeerAddr;
use tower_api_key::leaks::{Leaks, ScanningKeys};
use tower_api_key::rate_limit::AddrRateLimit;
use tower_api_key::{KeyManager, MemoryStore, NewKey, OrgId};
use tower_service::Service;

struct Fixture {
    rt: tokio::runtime::Runtime,
    signer: SigningKey,
    app: Router,
    accepted: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        // A fixed secret scalar: the target needs a key the receiver trusts, not a secret one.
        let signer = SigningKey::from_bytes(&[7u8; 32].into()).expect("a valid scalar");
        let pem = signer
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .expect("PEM");
        let doc =
            json!({"public_keys": [{"key_identifier": "fuzz", "key": pem, "is_current": true}]});
        let keys = ScanningKeys::from_github_json(doc.to_string().as_bytes()).expect("keys");
        let manager = KeyManager::new(MemoryStore::new());
        rt.block_on(manager.create(&OrgId::from("org_fuzz"), NewKey::new("live")))
            .expect("a key");
        let leaks = Leaks::new(manager);
        let app = Router::new()
            .route("/scan", leaks.secret_scanning(keys).route())
            .route(
                "/revoke",
                leaks
                    .public_revoke()
                    .rate_limit(AddrRateLimit::new(u32::MAX, Duration::from_secs(1)))
                    .route(),
            );
        let mut f = Fixture {
            rt,
            signer,
            app,
            accepted: Vec::new(),
        };
        let (_, body) = f.call(1, br#"{"credentials": []}"#);
        f.accepted = body;
        f
    })
}

impl Fixture {
    fn call(&self, route: u8, body: &[u8]) -> ((StatusCode, Option<Vec<u8>>), Vec<u8>) {
        let mut req = if route % 2 == 0 {
            let sig: Signature = self.signer.sign(body);
            let sig = base64::engine::general_purpose::STANDARD.encode(sig.to_der().as_bytes());
            Request::post("/scan")
                .header("github-public-key-identifier", "fuzz")
                .header("github-public-key-signature", sig)
        } else {
            Request::post("/revoke")
        }
        .header("content-type", "application/json")
        .body(Body::from(body.to_vec()))
        .expect("a request");
        req.extensions_mut()
            .insert(PeerAddr(SocketAddr::from(([192, 0, 2, 1], 4711))));
        self.rt.block_on(async {
            let res = self.app.clone().call(req).await.expect("infallible");
            let status = res.status();
            let ct = res
                .headers()
                .get("content-type")
                .map(|v| v.as_bytes().to_vec());
            let bytes = res.into_body().collect().await.expect("body").to_bytes();
            ((status, ct), bytes.to_vec())
        })
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&route, body)) = data.split_first() else {
        return;
    };
    let f = fixture();
    let ((status, ct), bytes) = f.call(route, body);
    let json: Value = serde_json::from_slice(&bytes).expect("every answer is JSON");
    match (route % 2 == 0, status.as_u16()) {
        (true, 200) => {
            for entry in json.as_array().expect("a feedback array") {
                assert_eq!(entry["token_hash"].as_str().map(str::len), Some(64));
                assert!(entry["token_type"].is_string());
                assert!(matches!(
                    entry["label"].as_str(),
                    Some("true_positive" | "false_positive")
                ));
            }
        }
        (false, 202) => assert_eq!(bytes, f.accepted, "one constant answer"),
        (is_scan, code) => {
            assert_eq!(ct.as_deref(), Some(&b"application/problem+json"[..]));
            assert_eq!(json["status"], code);
            let documented = matches!(
                (is_scan, code, json["code"].as_str()),
                (_, 400, Some("invalid_request")) | (false, 413, Some("too_many_credentials"))
            );
            assert!(documented, "{status} {json}");
        }
    }
});
