//! Which address a request comes from: [`ClientAddr`], the one extractor every address-based
//! decision of the crate uses (per-key allowed networks, per-address limits).
//!
//! By default the client is the TCP peer, read from a [`PeerAddr`] request extension
//! ([`serve::Server`](crate::serve) inserts it; elsewhere insert it in a small layer, or point
//! [`ClientAddr::peer_from`] at the extension your server sets).
//!
//! Behind a reverse proxy the peer is the proxy. [`ClientAddr::trusted_proxies`] then also reads
//! `Forwarded` (RFC 7239 `for=`) or, when that is absent, `X-Forwarded-For` — **only** when the
//! peer is one of the listed proxies, and walking the list from the right: the first address
//! that is not a trusted proxy is the client.
//!
//! # The spoofing risk
//!
//! Anyone can send `X-Forwarded-For: 10.0.0.1`. A header is believed only as far as it was
//! written by a proxy you listed: from an untrusted peer the header is ignored, and within the
//! header, entries left of the first untrusted hop are ignored too. List exactly your own
//! proxies (e.g. the load balancer's subnet), never `0.0.0.0/0`.
//!
//! ```
//! use std::net::{IpAddr, SocketAddr};
//! use tower_api_key::client_addr::{ClientAddr, PeerAddr};
//!
//! let behind_lb = ClientAddr::trusted_proxies(["10.0.0.0/8".parse()?]);
//! let mut req = http::Request::builder()
//!     .header("x-forwarded-for", "203.0.113.7, 10.1.2.3")
//!     .body(())?;
//! req.extensions_mut().insert(PeerAddr("10.0.0.5:4711".parse::<SocketAddr>()?));
//! assert_eq!(behind_lb.client_ip(&req), Some("203.0.113.7".parse::<IpAddr>()?));
//!
//! // Straight from the internet, the header is not believed.
//! req.extensions_mut().insert(PeerAddr("198.51.100.9:4711".parse::<SocketAddr>()?));
//! assert_eq!(behind_lb.client_ip(&req), Some("198.51.100.9".parse::<IpAddr>()?));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::{Extensions, HeaderMap, Request, header::FORWARDED};

pub use ipnet::IpNet;

/// The TCP peer of a request, as a request extension.
///
/// [`serve::Server`](crate::serve) inserts it into every request it serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerAddr(pub SocketAddr);

/// Reads the peer's address from a request's extensions.
type PeerFn = fn(&Extensions) -> Option<IpAddr>;

fn peer_addr_extension(extensions: &Extensions) -> Option<IpAddr> {
    extensions.get::<PeerAddr>().map(|p| p.0.ip())
}

/// How to find a request's client address. Cheap to clone.
///
/// See the [module docs](self) for the rules and the spoofing risk.
#[derive(Clone)]
pub struct ClientAddr {
    trusted: Arc<[IpNet]>,
    peer: PeerFn,
}

impl fmt::Debug for ClientAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientAddr")
            .field("trusted_proxies", &self.trusted)
            .finish_non_exhaustive()
    }
}

impl Default for ClientAddr {
    fn default() -> Self {
        Self::peer()
    }
}

const X_FORWARDED_FOR: &str = "x-forwarded-for";

impl ClientAddr {
    /// The client is the TCP peer; forwarding headers are ignored. The default.
    pub fn peer() -> Self {
        Self {
            trusted: Arc::from([]),
            peer: peer_addr_extension,
        }
    }

    /// The client is the TCP peer, or, when the peer is one of `proxies`, the address the
    /// proxies forwarded (`Forwarded`, else `X-Forwarded-For`).
    pub fn trusted_proxies(proxies: impl IntoIterator<Item = IpNet>) -> Self {
        Self {
            trusted: proxies.into_iter().map(|n| n.trunc()).collect(),
            peer: peer_addr_extension,
        }
    }

    /// Read the peer from another extension than [`PeerAddr`], e.g. axum's
    /// `ConnectInfo<SocketAddr>` or tonic's `TcpConnectInfo`:
    ///
    /// ```
    /// use std::net::SocketAddr;
    /// use tower_api_key::client_addr::ClientAddr;
    ///
    /// #[derive(Clone)]
    /// struct ConnectInfo(SocketAddr); // stands for axum::extract::ConnectInfo<SocketAddr>
    ///
    /// let addr = ClientAddr::peer().peer_from(|ext| ext.get::<ConnectInfo>().map(|c| c.0.ip()));
    /// # let _ = addr;
    /// ```
    #[must_use]
    pub fn peer_from(mut self, peer: fn(&Extensions) -> Option<IpAddr>) -> Self {
        self.peer = peer;
        self
    }

    /// The proxies whose forwarding headers are believed.
    pub fn trusted(&self) -> &[IpNet] {
        &self.trusted
    }

    /// The client address of `req`, or `None` when the peer address is unknown.
    pub fn client_ip<B>(&self, req: &Request<B>) -> Option<IpAddr> {
        self.from_parts(req.headers(), req.extensions())
    }

    /// The client address from a request's headers and extensions (for handlers that hold
    /// `http::request::Parts`).
    pub fn from_parts(&self, headers: &HeaderMap, extensions: &Extensions) -> Option<IpAddr> {
        let peer = canonical((self.peer)(extensions)?);
        if !self.is_trusted(peer) {
            return Some(peer);
        }
        let hops = if headers.contains_key(FORWARDED) {
            forwarded_for(headers)
        } else {
            x_forwarded_for(headers)
        };
        // Right to left: the nearest hop first. The first one that is not ours is the client;
        // past an unreadable hop nothing is believed, so the last readable one stands.
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Some(ip) = hop else { break };
            client = *ip;
            if !self.is_trusted(client) {
                break;
            }
        }
        Some(client)
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&ip))
    }
}

/// IPv4-mapped IPv6 (`::ffff:192.0.2.1`) as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// The `for=` of every `Forwarded` element, in order; `None` for one that is not an address
/// (`unknown`, an obfuscated `_id`, garbage).
fn forwarded_for(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let mut hops = Vec::new();
    for value in headers.get_all(FORWARDED) {
        let Ok(value) = value.to_str() else {
            hops.push(None);
            continue;
        };
        for element in value.split(',') {
            let node = element.split(';').find_map(|pair| {
                let (name, v) = pair.trim().split_once('=')?;
                name.trim().eq_ignore_ascii_case("for").then_some(v.trim())
            });
            if let Some(node) = node {
                hops.push(parse_node(node.trim_matches('"')));
            }
        }
    }
    hops
}

/// Every `X-Forwarded-For` entry, in order.
fn x_forwarded_for(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let mut hops = Vec::new();
    for value in headers.get_all(X_FORWARDED_FOR) {
        match value.to_str() {
            Ok(value) => hops.extend(value.split(',').map(|h| parse_node(h.trim()))),
            Err(_) => hops.push(None),
        }
    }
    hops
}

/// An address as proxies write it: `192.0.2.1`, `192.0.2.1:8080`, `[2001:db8::1]:8080`,
/// `2001:db8::1`.
fn parse_node(node: &str) -> Option<IpAddr> {
    let ip = if let Some(rest) = node.strip_prefix('[') {
        rest.split_once(']')?.0.parse().ok()?
    } else if let Ok(ip) = node.parse::<IpAddr>() {
        ip
    } else {
        node.parse::<SocketAddr>().ok()?.ip()
    };
    Some(canonical(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(peer: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder();
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let mut r = b.body(()).unwrap();
        r.extensions_mut()
            .insert(PeerAddr(peer.parse::<SocketAddr>().unwrap()));
        r
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    fn lb() -> ClientAddr {
        ClientAddr::trusted_proxies(["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()])
    }

    #[test]
    fn the_default_is_the_peer_and_ignores_headers() {
        let r = req("198.51.100.9:1", &[("x-forwarded-for", "1.2.3.4")]);
        assert_eq!(ClientAddr::peer().client_ip(&r), ip("198.51.100.9"));
    }

    #[test]
    fn no_peer_no_address() {
        let r = Request::new(());
        assert_eq!(ClientAddr::peer().client_ip(&r), None);
    }

    #[test]
    fn a_spoofed_header_from_an_untrusted_peer_is_ignored() {
        let r = req("198.51.100.9:1", &[("x-forwarded-for", "10.9.9.9")]);
        assert_eq!(lb().client_ip(&r), ip("198.51.100.9"));
    }

    #[test]
    fn behind_trusted_proxies_the_first_untrusted_hop_from_the_right_is_the_client() {
        // The client prepended a lie; our proxies appended the truth.
        let r = req(
            "10.0.0.1:1",
            &[("x-forwarded-for", "6.6.6.6, 203.0.113.7, 10.2.2.2")],
        );
        assert_eq!(lb().client_ip(&r), ip("203.0.113.7"));
    }

    #[test]
    fn several_header_lines_are_one_list() {
        let r = req(
            "10.0.0.1:1",
            &[
                ("x-forwarded-for", "203.0.113.7"),
                ("x-forwarded-for", "10.2.2.2"),
            ],
        );
        assert_eq!(lb().client_ip(&r), ip("203.0.113.7"));
    }

    #[test]
    fn forwarded_wins_over_x_forwarded_for_and_reads_ports_and_brackets() {
        let r = req(
            "10.0.0.1:1",
            &[
                ("x-forwarded-for", "6.6.6.6"),
                (
                    "forwarded",
                    r#"for=198.51.100.1;proto=https, For="[2001:db8::7]:4711";by=10.0.0.1"#,
                ),
            ],
        );
        assert_eq!(lb().client_ip(&r), ip("2001:db8::7"));
        let r = req("10.0.0.1:1", &[("forwarded", r#"for="192.0.2.60:8080""#)]);
        assert_eq!(lb().client_ip(&r), ip("192.0.2.60"));
    }

    #[test]
    fn an_unreadable_hop_stops_the_walk_at_the_last_readable_one() {
        let r = req(
            "10.0.0.1:1",
            &[("forwarded", "for=203.0.113.7, for=unknown, for=10.3.3.3")],
        );
        assert_eq!(lb().client_ip(&r), ip("10.3.3.3"));
    }

    #[test]
    fn all_hops_trusted_gives_the_leftmost() {
        let r = req("10.0.0.1:1", &[("x-forwarded-for", "10.5.5.5, 10.2.2.2")]);
        assert_eq!(lb().client_ip(&r), ip("10.5.5.5"));
    }

    #[test]
    fn mapped_ipv6_is_read_as_ipv4_for_the_peer_and_the_hops() {
        let r = req(
            "[::ffff:10.0.0.1]:1",
            &[("x-forwarded-for", "::ffff:203.0.113.7")],
        );
        assert_eq!(lb().client_ip(&r), ip("203.0.113.7"));
        let r = req("[::ffff:198.51.100.9]:1", &[]);
        assert_eq!(ClientAddr::peer().client_ip(&r), ip("198.51.100.9"));
    }

    #[test]
    fn ipv6_proxies_are_trusted_by_prefix() {
        let r = req("[fd00::1]:1", &[("x-forwarded-for", "2001:db8::1")]);
        assert_eq!(lb().client_ip(&r), ip("2001:db8::1"));
        let r = req("[2001:db8::9]:1", &[("x-forwarded-for", "2001:db8::1")]);
        assert_eq!(lb().client_ip(&r), ip("2001:db8::9"));
    }

    #[test]
    fn a_custom_peer_extension_is_read() {
        #[derive(Clone)]
        struct Conn(SocketAddr);
        let addr = ClientAddr::peer().peer_from(|e| e.get::<Conn>().map(|c| c.0.ip()));
        let mut r = Request::new(());
        r.extensions_mut()
            .insert(Conn("192.0.2.1:5".parse().unwrap()));
        assert_eq!(addr.client_ip(&r), ip("192.0.2.1"));
    }
}
