//! The header path on arbitrary bytes, through `ApiKeyAuth` itself: never panics, and a request
//! whose key cannot be valid is refused with a documented status. Key and scope parsing on
//! arbitrary strings: never panics, and a key that passes the format check has the shape the
//! format promises.
#![no_main]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use http::{HeaderValue, Request, Response};
use libfuzzer_sys::fuzz_target;
use tower_api_key::{ApiKeyAuth, KeyFormat, KeyFormats, MemoryStore};
use tower_layer::Layer;
use tower_service::Service;

fn formats() -> KeyFormats {
    KeyFormats::new([KeyFormat::live(), KeyFormat::test().with_checksum(true)])
}

fuzz_target!(|data: &[u8]| {
    let formats = formats();
    // The Authorization header (and, split at the first NUL, a query string).
    let (header, query) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], Some(&data[at + 1..])),
        None => (data, None),
    };
    if let Ok(value) = HeaderValue::from_bytes(header) {
        let uri = match query.and_then(|q| std::str::from_utf8(q).ok()) {
            Some(q) => format!("/v1/x?{q}"),
            None => "/v1/x".to_owned(),
        };
        if let Ok(mut req) = Request::builder().uri(uri).body(()) {
            req.headers_mut().insert(http::header::AUTHORIZATION, value);
            let mut svc = ApiKeyAuth::new(MemoryStore::new())
                .formats(formats.clone())
                .layer(Ok200);
            let mut cx = Context::from_waker(Waker::noop());
            let fut = pin!(svc.call(req));
            // The memory store answers at once: the future is ready on its first poll.
            let Poll::Ready(Ok(res)) = fut.poll(&mut cx) else {
                panic!("ApiKeyAuth over a MemoryStore answers at once");
            };
            // An empty store knows no key: every request is refused, never let through.
            assert!(
                matches!(res.status().as_u16(), 400 | 401),
                "status {}",
                res.status()
            );
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(format) = formats.check(s) {
            assert!(s.starts_with(format.prefix()));
            assert_eq!(s.len(), format.key_len());
            assert!(
                s[format.prefix().len()..]
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric())
            );
        }
        let _ = s.parse::<tower_api_key::Scope>();
    }
});

/// An inner service that answers 200: reaching it would be a bug here.
#[derive(Clone)]
struct Ok200;

impl Service<Request<()>> for Ok200 {
    type Response = Response<http_body_util::Empty<bytes::Bytes>>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        std::future::ready(Ok(Response::new(http_body_util::Empty::new())))
    }
}
