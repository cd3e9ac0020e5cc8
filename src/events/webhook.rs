//! [`WebhookSink`]: events POSTed as JSON, signed the Standard Webhooks way (feature `webhook`).
//!
//! Each delivery is a `POST` of the event's JSON with three headers:
//!
//! | header | value |
//! |---|---|
//! | `webhook-id` | the event's id: the same on every retry, so a receiver can drop duplicates |
//! | `webhook-timestamp` | Unix seconds of this attempt |
//! | `webhook-signature` | `v1,` + base64 of HMAC-SHA256 over `{id}.{timestamp}.{body}` |
//!
//! The secret is given as `whsec_` + base64 of its bytes; the HMAC key is those bytes. A
//! receiver recomputes the signature with the same secret and compares in constant time, and
//! refuses timestamps too far from its clock (replays). Any status but 2xx, a timeout or a
//! connection error is retried by the delivery task ([`Retry`](super::Retry)).
//!
//! The default client speaks plain HTTP. For `https://` URLs, pass a TLS-capable
//! `hyper_util` client (e.g. with `hyper-rustls`'s connector) to [`WebhookSink::with_client`]:
//! the crate itself carries no TLS stack.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::{HeaderValue, Method, Request, Uri, header::CONTENT_TYPE};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::rt::TokioExecutor;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::{Event, EventSink, SinkError};
use crate::clock::Clock;

/// The webhook secret could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookError {
    /// The secret is not `whsec_` followed by base64.
    #[error("webhook secret must be `whsec_` followed by base64")]
    Secret,
    /// The URL is not an absolute `http` or `https` URL.
    #[error("webhook URL must be an absolute http(s) URL")]
    Url,
}

/// A Standard Webhooks signing secret. Its bytes never appear in `Debug`.
#[derive(Clone)]
pub struct WebhookSecret(Zeroizing<Vec<u8>>);

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(..)")
    }
}

impl WebhookSecret {
    /// Read a `whsec_…` secret.
    pub fn parse(secret: &str) -> Result<Self, WebhookError> {
        let b64 = secret.strip_prefix("whsec_").ok_or(WebhookError::Secret)?;
        let bytes = BASE64.decode(b64).map_err(|_| WebhookError::Secret)?;
        if bytes.is_empty() {
            return Err(WebhookError::Secret);
        }
        Ok(Self(Zeroizing::new(bytes)))
    }

    /// The `webhook-signature` value for one delivery: `v1,` + base64 of
    /// HMAC-SHA256(`{id}.{timestamp}.{body}`).
    ///
    /// ```
    /// use tower_api_key::events::webhook::WebhookSecret;
    /// // The example of the Standard Webhooks specification.
    /// let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")?;
    /// let body = r#"{"test": 2432232314}"#;
    /// assert_eq!(
    ///     secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body.as_bytes()),
    ///     "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    /// );
    /// # Ok::<(), tower_api_key::events::webhook::WebhookError>(())
    /// ```
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        // HMAC accepts keys of any length; the error type exists only for fixed-key MACs.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.0) else {
            unreachable!("HMAC takes keys of any length")
        };
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
    }
}

/// Delivers events to one URL, signed with a [`WebhookSecret`]; see the [module docs](self).
pub struct WebhookSink<C = HttpConnector> {
    client: Client<C, Full<Bytes>>,
    url: Uri,
    secret: WebhookSecret,
    timeout: Duration,
    clock: Clock,
}

impl<C> fmt::Debug for WebhookSink<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSink")
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl WebhookSink {
    /// POST events to `url` (plain HTTP), signed with `secret` (`whsec_…`).
    ///
    /// ```
    /// use tower_api_key::events::webhook::WebhookSink;
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let sink = WebhookSink::new(
    ///     "http://127.0.0.1:9000/hooks/keys",
    ///     "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    /// )?;
    /// # let _ = sink; Ok::<(), tower_api_key::events::webhook::WebhookError>(()) }).unwrap();
    /// ```
    pub fn new(url: &str, secret: &str) -> Result<Self, WebhookError> {
        let client = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        Self::with_client(client, url, secret)
    }
}

impl<C> WebhookSink<C>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    /// POST events through `client` (e.g. one with a TLS connector for `https://` URLs).
    pub fn with_client(
        client: Client<C, Full<Bytes>>,
        url: &str,
        secret: &str,
    ) -> Result<Self, WebhookError> {
        let url: Uri = url.parse().map_err(|_| WebhookError::Url)?;
        if !matches!(url.scheme_str(), Some("http" | "https")) || url.host().is_none() {
            return Err(WebhookError::Url);
        }
        Ok(Self {
            client,
            url,
            secret: WebhookSecret::parse(secret)?,
            timeout: Duration::from_secs(10),
            clock: Clock::system(),
        })
    }

    /// How long one attempt may take (default 10 s); a slower one is retried.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Stamp `webhook-timestamp` from `clock`.
    #[must_use]
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    fn request(&self, event: &Event) -> Result<Request<Full<Bytes>>, SinkError> {
        let body = Bytes::from(serde_json::to_vec(event).map_err(SinkError::new)?);
        let timestamp = self.clock.now().as_unix_secs();
        let signature = self.secret.sign(&event.id, timestamp, &body);
        Request::builder()
            .method(Method::POST)
            .uri(self.url.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header("webhook-id", event.id.as_str())
            .header("webhook-timestamp", timestamp)
            .header("webhook-signature", signature)
            .body(Full::new(body))
            .map_err(SinkError::new)
    }
}

impl<C> EventSink for WebhookSink<C>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    async fn deliver(&self, event: &Event) -> Result<(), SinkError> {
        let request = self.request(event)?;
        let response = tokio::time::timeout(self.timeout, self.client.request(request))
            .await
            .map_err(|_| SinkError::new("webhook timed out"))?
            .map_err(SinkError::new)?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(SinkError::new(format!(
                "webhook answered {}",
                response.status()
            )))
        }
    }
}
