//! Leaked keys (feature `leaks`): the pattern secret scanners look for, GitHub's
//! secret-scanning receiver, and a public endpoint where anyone who finds a key can revoke it.
//!
//! The product documents warn never to expose a key "in public GitHub repositories, log files
//! or URL query parameters". When it happens anyway, the key should die before anyone uses it.
//! GitHub's secret-scanning partner program sends the provider every match of its key pattern
//! found in public code, signed; this module revokes every live key among them and answers with
//! the feedback the program defines. With it, a platform built on this crate joins the program
//! with a few lines:
//!
//! ```
//! use axum::Router;
//! use tower_api_key::leaks::{Leaks, ScanningKeys, scanner_pattern};
//! use tower_api_key::{KeyManager, MemoryStore};
//!
//! # fn demo(github_keys_json: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
//! let manager = KeyManager::new(MemoryStore::new());
//! // 1. The pattern to register with GitHub, one per key format.
//! println!("{}", scanner_pattern(manager.key_formats().primary())); // \bbr_live_[0-9A-Za-z]{32}\b
//!
//! // 2. GitHub's public keys, as published at its `meta/public_keys/secret_scanning` API
//! //    (fetched by the host: this crate never reaches the network). Refresh them now and then;
//! //    clones of a `ScanningKeys` share one set.
//! let keys = ScanningKeys::from_github_json(github_keys_json)?;
//!
//! // 3. The routes, and what to do when a key leaked (the tracing event is always emitted).
//! let leaks = Leaks::new(manager).on_leak(|leak| eprintln!("leaked: {} of {}", leak.key_id, leak.org_id));
//! let app: Router = Router::new()
//!     .route("/security/secret-scanning", leaks.secret_scanning(keys).route())
//!     .route("/credentials/revoke", leaks.public_revoke().route());
//! # let _ = app; Ok(()) }
//! ```
//!
//! | route | body | answer |
//! |---|---|---|
//! | [`SecretScanning`] | GitHub's signed `[{"token", "type", "url", "source"}]` | `200 [{"token_hash", "token_type", "label"}]`; `401` unsigned or wrongly signed; `413` too large |
//! | [`PublicRevoke`] | `{"credentials": ["…", …]}`, at most 1,000 | `202`, the same bytes whatever was sent; `429` per client address; `413` too many |
//!
//! Every refusal is `application/problem+json` with a stable `code` ([`LeakError`]). Both routes
//! revoke through [`KeyManager::revoke`], the path every revocation takes, so a leaked key is
//! refused by every replica within the same bound as any other revocation (see
//! [`CachedStore`](crate::CachedStore)). Each key revoked here is reported once, as a
//! [`LeakedKey`]: to the callbacks given to [`Leaks::on_leak`], and as a `tracing` event at
//! `WARN`, target `tower_api_key::leaks`, message `key_leaked`, with the key id, the
//! organization, where it was found and how it was reported, never the key itself.

mod error;
mod pattern;
mod revoke;
mod scanning;

use std::fmt;
use std::sync::Arc;

pub use error::LeakError;
pub use pattern::{is_well_formed, scanner_pattern};
pub use revoke::{MAX_CREDENTIALS, PublicRevoke, REVOKE_MAX_BODY, REVOKE_RATE};
pub use scanning::{
    KEY_IDENTIFIER_HEADER, SCANNING_MAX_BODY, SIGNATURE_HEADER, ScanningKeys, ScanningKeysError,
    SecretScanning, SignatureError,
};

use crate::ids::{KeyId, OrgId};
use crate::key::KeyHash;
use crate::manage::{KeyManager, ManageError};
use crate::store::{KeyStore, StoreError};

/// The longest `url` kept in a [`LeakedKey`] (bytes; a longer one is cut at a character).
pub const MAX_URL_LEN: usize = 2048;
/// The longest `source` kept in a [`LeakedKey`] (bytes).
pub const MAX_SOURCE_LEN: usize = 64;

/// How a leak was reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Via {
    /// A signed report of GitHub's secret scanning ([`SecretScanning`]).
    SecretScanning,
    /// Someone who found the key sent it to [`PublicRevoke`].
    PublicRevoke,
}

impl Via {
    /// `secret_scanning` or `public_revoke`, as in the `key_leaked` event's `via` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Via::SecretScanning => "secret_scanning",
            Via::PublicRevoke => "public_revoke",
        }
    }
}

/// A live key that leaked and was revoked: what [`Leaks::on_leak`] callbacks receive.
///
/// Never the key itself. `url` and `source` come from the reporter: control characters are
/// replaced by `U+FFFD` and their lengths bounded ([`MAX_URL_LEN`], [`MAX_SOURCE_LEN`]), so they
/// are safe to log.
///
/// ```
/// use tower_api_key::leaks::{Leaks, Via};
/// # use tower_api_key::{KeyManager, MemoryStore};
/// let leaks = Leaks::new(KeyManager::new(MemoryStore::new())).on_leak(|leak| {
///     if leak.via == Via::SecretScanning {
///         // e-mail the organization's owners: where the key was found, and that it is revoked
///         let _ = (&leak.org_id, &leak.key_id, &leak.url);
///     }
/// });
/// # let _ = leaks;
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeakedKey {
    /// The revoked key.
    pub key_id: KeyId,
    /// Its organization.
    pub org_id: OrgId,
    /// Where it was found (GitHub's `url`), when the reporter said.
    pub url: Option<String>,
    /// What kind of place it was found in (GitHub's `source`: `content`, `commit`, `gist`, …).
    pub source: Option<String>,
    /// How it was reported.
    pub via: Via,
}

impl LeakedKey {
    /// This leak as an event (feature `events`): the key, where it was found, and who reported
    /// it as `source`: `github` (secret scanning) or `public_revoke`.
    #[cfg(feature = "events")]
    pub fn event_kind(&self) -> crate::events::EventKind {
        crate::events::EventKind::KeyLeaked {
            key_id: self.key_id.clone(),
            url: self.url.clone(),
            source: match self.via {
                Via::SecretScanning => "github",
                Via::PublicRevoke => "public_revoke",
            }
            .to_owned(),
        }
    }
}

/// What a reported token turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// Not a well-formed key of ours (another provider's token, a wrong checksum): nothing done.
    NotOurs,
    /// A live key of ours: now revoked, and reported as a [`LeakedKey`].
    TruePositive,
    /// Well-formed, but no live key: unknown, already revoked, or expired.
    FalsePositive,
}

/// Where a reported token was found, as the reporter says.
#[derive(Clone, Copy, Debug)]
pub struct Sighting<'a> {
    /// The URL of the place (GitHub's `url`).
    pub url: Option<&'a str>,
    /// The kind of place (GitHub's `source`).
    pub source: Option<&'a str>,
    /// Who reported it.
    pub via: Via,
}

type LeakHook = Arc<dyn Fn(&LeakedKey) + Send + Sync + 'static>;

/// Revokes leaked keys and reports them; builds the [`SecretScanning`] and [`PublicRevoke`]
/// routes. See the [module docs](self).
///
/// ```
/// use tower_api_key::leaks::Leaks;
/// use tower_api_key::{KeyManager, MemoryStore};
/// let leaks = Leaks::new(KeyManager::new(MemoryStore::new()))
///     .on_leak(|leak| tracing::info!(key_id = %leak.key_id, "notify the owners"));
/// let route: axum::routing::MethodRouter = leaks.public_revoke().route();
/// # let _ = route;
/// ```
#[derive(Clone)]
pub struct Leaks<St> {
    manager: KeyManager<St>,
    hooks: Arc<[LeakHook]>,
}

impl<St> fmt::Debug for Leaks<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Leaks")
            .field("on_leak", &self.hooks.len())
            .finish_non_exhaustive()
    }
}

impl<St: KeyStore> Leaks<St> {
    /// Revoke leaked keys through `manager` (its formats decide what is a key of ours).
    pub fn new(manager: KeyManager<St>) -> Self {
        Self {
            manager,
            hooks: Arc::from(Vec::new()),
        }
    }

    /// Also call `hook` for every leaked key revoked (after the revocation is stored). Keep it
    /// quick: it runs inside the request that reported the leak; spawn anything slow.
    pub fn on_leak(mut self, hook: impl Fn(&LeakedKey) + Send + Sync + 'static) -> Self {
        let mut hooks: Vec<LeakHook> = self.hooks.iter().cloned().collect();
        hooks.push(Arc::new(hook));
        self.hooks = hooks.into();
        self
    }

    /// Also emit every leak as an [`EventKind::KeyLeaked`](crate::events::EventKind::KeyLeaked)
    /// to `events` (feature `events`): the organization's webhook and recent events hear of it.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use tower_api_key::events::{Events, RecentEvents};
    /// use tower_api_key::leaks::Leaks;
    /// # use tower_api_key::{KeyManager, MemoryStore};
    /// let recent = RecentEvents::new(100);
    /// let (events, _delivery) = Events::builder().sink(recent.clone()).start();
    /// let leaks = Leaks::new(KeyManager::new(MemoryStore::new())).events(events);
    /// # let _ = leaks; });
    /// ```
    #[cfg(feature = "events")]
    pub fn events(self, events: crate::events::Events) -> Self {
        self.on_leak(move |leak| {
            events.emit(&leak.org_id, leak.event_kind());
        })
    }

    /// The key manager revocations go through.
    pub fn manager(&self) -> &KeyManager<St> {
        &self.manager
    }

    /// GitHub's secret-scanning receiver, verifying reports against `keys`.
    pub fn secret_scanning(&self, keys: ScanningKeys) -> SecretScanning<St> {
        SecretScanning::new(self.clone(), keys)
    }

    /// The public revocation endpoint, with its default per-address limit.
    pub fn public_revoke(&self) -> PublicRevoke<St> {
        PublicRevoke::new(self.clone())
    }

    /// Handle one reported token: revoke it if it is a live key of ours, and report the leak.
    /// A malformed token costs no hashing and no lookup. Both routes use this; call it for
    /// reports from elsewhere (another scanner, a support ticket).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use tower_api_key::leaks::{Leaks, Sighting, Verdict, Via};
    /// use tower_api_key::{KeyManager, MemoryStore, NewKey, OrgId};
    ///
    /// let manager = KeyManager::new(MemoryStore::new());
    /// let created = manager.create(&OrgId::from("org_1"), NewKey::new("ci")).await?;
    /// let leaks = Leaks::new(manager);
    /// let seen = Sighting { url: Some("https://example.com/paste/1"), source: None, via: Via::PublicRevoke };
    /// let token = created.key.expose_secret();
    /// assert_eq!(leaks.revoke_leaked(token, seen).await?, Verdict::TruePositive);
    /// assert_eq!(leaks.revoke_leaked(token, seen).await?, Verdict::FalsePositive);
    /// assert_eq!(leaks.revoke_leaked("ghp_not_ours", seen).await?, Verdict::NotOurs);
    /// # Ok::<(), Box<dyn std::error::Error>>(()) }).unwrap();
    /// ```
    pub async fn revoke_leaked(
        &self,
        token: &str,
        sighting: Sighting<'_>,
    ) -> Result<Verdict, StoreError> {
        if !is_well_formed(self.manager.key_formats(), token) {
            return Ok(Verdict::NotOurs);
        }
        let hash = KeyHash::of(token);
        let record = match self.manager.store().find_by_hash(&hash).await? {
            Some(found) if found.record.hash.ct_eq(&hash) => found.record,
            _ => return Ok(Verdict::FalsePositive),
        };
        let now = self.manager.now();
        // A key revoked later (a rotation's grace period) is still live: it is revoked now.
        if record.is_revoked(now) || record.is_expired(now) {
            return Ok(Verdict::FalsePositive);
        }
        match self.manager.revoke(&record.org_id, &record.id).await {
            Ok(_) => {}
            // Gone between the lookup and the revocation: nothing left to revoke.
            Err(ManageError::NotFound) => return Ok(Verdict::FalsePositive),
            Err(ManageError::Store(e)) => return Err(e),
            // `revoke` fails only with the two above; anything else is treated as a store
            // failure, so the reporter retries.
            Err(other) => return Err(StoreError::unavailable(other)),
        }
        let leak = LeakedKey {
            key_id: record.id.clone(),
            org_id: record.org_id.clone(),
            url: sighting.url.map(|u| loggable(u, MAX_URL_LEN)),
            source: sighting.source.map(|s| loggable(s, MAX_SOURCE_LEN)),
            via: sighting.via,
        };
        self.report(&leak);
        Ok(Verdict::TruePositive)
    }

    fn report(&self, leak: &LeakedKey) {
        tracing::warn!(
            target: "tower_api_key::leaks",
            key_id = %leak.key_id,
            org_id = %leak.org_id,
            url = leak.url.as_deref().unwrap_or(""),
            source = leak.source.as_deref().unwrap_or(""),
            via = leak.via.as_str(),
            "key_leaked"
        );
        for hook in self.hooks.iter() {
            hook(leak);
        }
    }
}

/// `text` with control characters replaced by `U+FFFD`, cut to at most `max` bytes at a
/// character boundary: a reporter's string that can be logged without forging lines.
fn loggable(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    for c in text.chars() {
        let c = if c.is_control() { '\u{FFFD}' } else { c };
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loggable_replaces_control_characters_and_bounds_the_length() {
        assert_eq!(
            loggable("a\nb\r\u{1b}[31mc", 100),
            "a\u{FFFD}b\u{FFFD}\u{FFFD}[31mc"
        );
        assert_eq!(loggable("héllo", 2), "h");
        assert_eq!(loggable("héllo", 3), "hé");
        assert_eq!(loggable(&"x".repeat(5000), MAX_URL_LEN).len(), MAX_URL_LEN);
    }
}
