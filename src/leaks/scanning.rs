//! [`SecretScanning`]: the receiver of GitHub's secret-scanning partner program.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{MethodRouter, post};
use base64::Engine as _;
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{DerSignature, VerifyingKey};
use p256::pkcs8::DecodePublicKey as _;
use serde::{Deserialize, Serialize};

use super::{LeakError, Leaks, Sighting, Verdict, Via};
use crate::key::KeyHash;
use crate::store::KeyStore;

/// The header naming the key that signed a report.
pub const KEY_IDENTIFIER_HEADER: &str = "github-public-key-identifier";
/// The header carrying the signature: base64 of an ASN.1 DER ECDSA P-256 / SHA-256 signature of
/// the raw body.
pub const SIGNATURE_HEADER: &str = "github-public-key-signature";

/// The default largest report body: 1 MiB.
pub const SCANNING_MAX_BODY: usize = 1 << 20;

/// Why a report's signature was refused (`401`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// `Github-Public-Key-Identifier` or `Github-Public-Key-Signature` is missing.
    #[error(
        "the report is not signed: send Github-Public-Key-Identifier and Github-Public-Key-Signature"
    )]
    Missing,
    /// The named key is not in the configured set (unknown, or the set needs a refresh).
    #[error("the report is signed by an unknown key")]
    UnknownKey,
    /// The signature is not base64 DER, or does not match the body.
    #[error("the report's signature does not match its body")]
    Invalid,
}

impl SignatureError {
    /// The stable `code` of the problem body: `signature_missing`, `unknown_signing_key` or
    /// `signature_invalid`.
    pub fn code(&self) -> &'static str {
        match self {
            SignatureError::Missing => "signature_missing",
            SignatureError::UnknownKey => "unknown_signing_key",
            SignatureError::Invalid => "signature_invalid",
        }
    }
}

/// A key set could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScanningKeysError {
    /// Not the JSON GitHub publishes (`{"public_keys": [{"key_identifier", "key", …}]}`).
    #[error("not GitHub's secret-scanning public keys JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A key is not a PEM-encoded P-256 public key (SubjectPublicKeyInfo).
    #[error("key {key_identifier:?} is not a PEM P-256 public key")]
    Pem {
        /// The identifier of the key that failed.
        key_identifier: String,
    },
}

/// The public keys that sign secret-scanning reports, by identifier.
///
/// Read from the JSON GitHub publishes at its `meta/public_keys/secret_scanning` API; the host
/// fetches it (the crate never reaches the network) and refreshes it now and then, since GitHub
/// rotates its keys. Every listed key is accepted, current or not: a report names its key.
/// Clones share one set, so a refresh through one reaches every route built with another.
///
/// ```
/// use tower_api_key::leaks::ScanningKeys;
///
/// let keys = ScanningKeys::from_github_json(br#"{"public_keys": []}"#)?;
/// assert!(keys.is_empty());
/// // Later, with the freshly fetched document:
/// keys.replace_from_github_json(br#"{"public_keys": []}"#)?;
/// # Ok::<(), tower_api_key::leaks::ScanningKeysError>(())
/// ```
#[derive(Clone, Default)]
pub struct ScanningKeys {
    keys: Arc<RwLock<Arc<HashMap<String, VerifyingKey>>>>,
}

impl fmt::Debug for ScanningKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys = self.current();
        let mut ids: Vec<&str> = keys.keys().map(String::as_str).collect();
        ids.sort_unstable();
        f.debug_struct("ScanningKeys").field("ids", &ids).finish()
    }
}

/// GitHub's published document.
#[derive(Deserialize)]
struct Published {
    public_keys: Vec<PublishedKey>,
}

#[derive(Deserialize)]
struct PublishedKey {
    key_identifier: String,
    key: String,
}

impl ScanningKeys {
    /// Parse GitHub's published key document:
    /// `{"public_keys": [{"key_identifier": "…", "key": "-----BEGIN PUBLIC KEY-----…", "is_current": true}]}`.
    pub fn from_github_json(json: &[u8]) -> Result<Self, ScanningKeysError> {
        let keys = Self::default();
        keys.replace_from_github_json(json)?;
        Ok(keys)
    }

    /// Replace the whole set with a freshly fetched document, for every clone. On an error the
    /// set is unchanged.
    pub fn replace_from_github_json(&self, json: &[u8]) -> Result<(), ScanningKeysError> {
        let published: Published = serde_json::from_slice(json)?;
        let mut keys = HashMap::with_capacity(published.public_keys.len());
        for k in published.public_keys {
            let key = VerifyingKey::from_public_key_pem(k.key.trim()).map_err(|_| {
                ScanningKeysError::Pem {
                    key_identifier: k.key_identifier.clone(),
                }
            })?;
            keys.insert(k.key_identifier, key);
        }
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
        Ok(())
    }

    /// How many keys the set holds.
    pub fn len(&self) -> usize {
        self.current().len()
    }

    /// Whether the set is empty (every report is then refused).
    pub fn is_empty(&self) -> bool {
        self.current().is_empty()
    }

    fn current(&self) -> Arc<HashMap<String, VerifyingKey>> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Check that `body` is signed by the key the headers name.
    pub fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), SignatureError> {
        let header = |name| headers.get(name).map(|v| v.to_str());
        let (Some(id), Some(signature)) = (header(KEY_IDENTIFIER_HEADER), header(SIGNATURE_HEADER))
        else {
            return Err(SignatureError::Missing);
        };
        let keys = self.current();
        let key = id
            .ok()
            .and_then(|id| keys.get(id.trim()))
            .ok_or(SignatureError::UnknownKey)?;
        let der = signature
            .ok()
            .and_then(|s| {
                base64::engine::general_purpose::STANDARD
                    .decode(s.trim())
                    .ok()
            })
            .ok_or(SignatureError::Invalid)?;
        let signature =
            DerSignature::try_from(der.as_slice()).map_err(|_| SignatureError::Invalid)?;
        key.verify(body, &signature)
            .map_err(|_| SignatureError::Invalid)
    }
}

/// GitHub's secret-scanning receiver: an axum route for the partner program's POST.
///
/// Verifies the body's signature against [`ScanningKeys`] (`401` otherwise, before the body is
/// read as JSON), revokes every reported token that is a live key of ours, reports each as a
/// [`LeakedKey`](super::LeakedKey), and answers `200` with the program's feedback:
///
/// ```text
/// POST  [{"token": "br_live_…", "type": "acme_api_key", "url": "https://github.com/…", "source": "content"}]
/// 200   [{"token_hash": "<hex SHA-256 of the token>", "token_type": "acme_api_key", "label": "true_positive"}]
/// ```
///
/// `true_positive`: a live key, now revoked. `false_positive`: a well-formed key of ours that is
/// unknown, already revoked or expired. A token that is not a well-formed key of ours (another
/// format, a wrong checksum) gets no entry: it is not ours to label. A replayed report changes
/// nothing (a revoked key stays revoked, and is then labelled `false_positive`).
///
/// ```
/// # use tower_api_key::leaks::{Leaks, ScanningKeys};
/// # use tower_api_key::{KeyManager, MemoryStore};
/// # let keys = ScanningKeys::default();
/// let leaks = Leaks::new(KeyManager::new(MemoryStore::new()));
/// let app: axum::Router = axum::Router::new().route(
///     "/security/secret-scanning",
///     leaks.secret_scanning(keys).max_body(256 * 1024).route(),
/// );
/// # let _ = app;
/// ```
#[derive(Clone, Debug)]
pub struct SecretScanning<St> {
    leaks: Leaks<St>,
    keys: ScanningKeys,
    max_body: usize,
}

/// One match in a report.
#[derive(Deserialize)]
struct Reported {
    token: String,
    #[serde(rename = "type", default)]
    token_type: String,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    source: Option<String>,
}

/// One entry of the feedback.
#[derive(Serialize)]
struct Feedback {
    token_hash: String,
    token_type: String,
    label: &'static str,
}

impl<St: KeyStore> SecretScanning<St> {
    /// The receiver; [`Leaks::secret_scanning`] builds it.
    pub fn new(leaks: Leaks<St>, keys: ScanningKeys) -> Self {
        Self {
            leaks,
            keys,
            max_body: SCANNING_MAX_BODY,
        }
    }

    /// The largest body accepted, in bytes (default 1 MiB); larger ones get `413`.
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// The route, answering `POST` (other methods get `405`). Mount it where you told GitHub.
    pub fn route<S: Clone + Send + Sync + 'static>(self) -> MethodRouter<S> {
        let limit = self.max_body;
        post(receive::<St>)
            .with_state(Arc::new(self))
            .layer(DefaultBodyLimit::max(limit))
    }

    /// Handle one report: verify, parse, revoke; the feedback entries.
    async fn handle(&self, headers: &HeaderMap, body: &[u8]) -> Result<Vec<Feedback>, LeakError> {
        self.keys.verify(headers, body)?;
        let reported: Vec<Reported> = serde_json::from_slice(body).map_err(|e| {
            LeakError::json(
                "a JSON array of {\"token\", \"type\", \"url\", \"source\"}",
                &e,
            )
        })?;
        // A token reported twice in one body is looked up once.
        let mut verdicts: HashMap<&str, Verdict> = HashMap::new();
        let mut feedback = Vec::new();
        for r in &reported {
            let verdict = match verdicts.get(r.token.as_str()) {
                Some(v) => *v,
                None => {
                    let sighting = Sighting {
                        url: r.url.as_deref(),
                        source: r.source.as_deref(),
                        via: Via::SecretScanning,
                    };
                    let v = self.leaks.revoke_leaked(&r.token, sighting).await?;
                    verdicts.insert(&r.token, v);
                    v
                }
            };
            let label = match verdict {
                Verdict::NotOurs => continue,
                Verdict::TruePositive => "true_positive",
                Verdict::FalsePositive => "false_positive",
            };
            feedback.push(Feedback {
                token_hash: KeyHash::of(&r.token).to_hex(),
                token_type: r.token_type.clone(),
                label,
            });
        }
        Ok(feedback)
    }
}

async fn receive<St: KeyStore>(
    State(scanning): State<Arc<SecretScanning<St>>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Vec<Feedback>>, LeakError> {
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => LeakError::BodyTooLarge,
        _ => LeakError::InvalidBody(e.body_text()),
    })?;
    Ok(Json(scanning.handle(&headers, &body).await?))
}
