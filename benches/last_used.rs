//! LastUsedRecorder's mark next to a no-op layer, in the same run.
//!
//! Every variant wraps the same no-op inner service, which puts the request back in a slot for
//! the next iteration: no request is built or dropped in the timed loop, so what differs between
//! the variants is the layer alone. The request carries a `Principal`, as it would behind
//! `ApiKeyAuth`.
//!
//! ```text
//! cargo bench --bench last_used -- --warm-up-time 1 --measurement-time 3
//! ```

use std::cell::Cell;
use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use tower::{Layer, Service, ServiceBuilder};
use tower_api_key::{
    Clock, KeyHash, KeyId, KeyRecord, LastUsedRecorder, LastUsedRecorderLayer, MemoryStore, OrgId,
    Plan, Principal, ScopeGuard, Scopes, Timestamp,
};

type Slot = Rc<Cell<Option<Request<()>>>>;

/// The no-op inner service: hands the request back through `Slot`.
#[derive(Clone)]
struct Inner(Slot);

impl Service<Request<()>> for Inner {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = Ready<Result<Response<()>, Infallible>>;
    #[inline]
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
    #[inline]
    fn call(&mut self, req: Request<()>) -> Self::Future {
        self.0.set(Some(req));
        ready(Ok(Response::new(())))
    }
}

/// A layer that does nothing: the baseline.
#[derive(Clone)]
struct Noop<S>(S);

impl<S: Service<Request<()>>> Service<Request<()>> for Noop<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;
    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }
    #[inline]
    fn call(&mut self, req: Request<()>) -> S::Future {
        self.0.call(req)
    }
}

/// A layer that only reads the `Principal`: the share of the mark spent finding it.
#[derive(Clone)]
struct ReadPrincipal<S>(S);

impl<S: Service<Request<()>>> Service<Request<()>> for ReadPrincipal<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;
    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }
    #[inline]
    fn call(&mut self, req: Request<()>) -> S::Future {
        black_box(req.extensions().get::<Principal>());
        self.0.call(req)
    }
}

/// A no-op layer that calls [`LastUsedRecorderLayer::mark`]: the mark without the response
/// wrapping every guard layer does (a `GuardFuture` and `ResponseBody`, needed to answer 500 when
/// the `Principal` is missing).
#[derive(Clone)]
struct MarkOnly<S>(S, LastUsedRecorderLayer<MemoryStore>);

impl<S: Service<Request<()>>> Service<Request<()>> for MarkOnly<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;
    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }
    #[inline]
    fn call(&mut self, req: Request<()>) -> S::Future {
        if let Some(p) = req.extensions().get::<Principal>() {
            self.1.mark(p);
        }
        self.0.call(req)
    }
}

fn principal() -> Principal {
    let record = KeyRecord::new(
        KeyId::from("key_bench"),
        OrgId::from("org_bench"),
        "bench".into(),
        KeyHash::of("br_live_bench"),
        "br_live_…ench".into(),
        Scopes::full_access(),
        Arc::from("live"),
        Timestamp::EPOCH,
    );
    Principal::new(Arc::new(record), Plan::Free)
}

fn request(p: &Principal) -> Request<()> {
    let mut req = Request::new(());
    req.extensions_mut().insert(p.clone());
    req
}

/// Time `svc`, which wraps an [`Inner`] sharing `slot`.
fn run<S, B>(c: &mut Criterion, name: &str, slot: &Slot, mut svc: S, mut before_each: impl FnMut())
where
    S: Service<Request<()>, Response = Response<B>, Error = Infallible>,
{
    let p = principal();
    slot.set(Some(request(&p)));
    let mut cx = Context::from_waker(Waker::noop());
    c.bench_function(name, |b| {
        b.iter(|| {
            before_each();
            let Some(req) = slot.take() else {
                unreachable!("the inner service hands the request back");
            };
            let _ = svc.poll_ready(&mut cx);
            let fut = pin!(svc.call(req));
            match fut.poll(&mut cx) {
                Poll::Ready(Ok(res)) => black_box(res),
                _ => unreachable!("the inner service is ready at once"),
            }
        })
    });
}

fn bench(c: &mut Criterion) {
    let slot = Slot::default();
    let inner = || Inner(slot.clone());

    run(c, "baseline/noop_layer", &slot, Noop(inner()), || {});
    run(
        c,
        "baseline/read_principal_only",
        &slot,
        ReadPrincipal(inner()),
        || {},
    );

    // A guard layer that passes (full-access key): the cost of a `GuardFuture` response.
    run(
        c,
        "baseline/scope_guard_pass",
        &slot,
        ScopeGuard::require("browser_sessions:create").layer(inner()),
        || {},
    );

    // The mark alone, from a pass-through layer.
    run(
        c,
        "last_used/mark_only_no_guard_future",
        &slot,
        MarkOnly(inner(), LastUsedRecorder::new(MemoryStore::new())),
        || {},
    );

    // The recorder with its defaults (coarse clock, 1 s granularity): a hot key is marked in
    // the current second already, the common case.
    let recorder = LastUsedRecorder::new(MemoryStore::new());
    run(
        c,
        "last_used/mark_hot_key",
        &slot,
        ServiceBuilder::new().layer(recorder).service(inner()),
        || {},
    );

    // The same with a manual clock, to separate the clock read from the mark.
    let (clock, _time) = Clock::manual(Timestamp::from_unix_secs(1_700_000_000));
    let recorder = LastUsedRecorder::new(MemoryStore::new()).clock(clock);
    run(
        c,
        "last_used/mark_hot_key_manual_clock",
        &slot,
        recorder.layer(inner()),
        || {},
    );

    // Worst case: every request falls in a new granule (fetch_max + queued check; the record
    // stays queued since nothing flushes here).
    let (clock, time) = Clock::manual(Timestamp::from_unix_secs(1_700_000_000));
    let recorder = LastUsedRecorder::new(MemoryStore::new())
        .clock(clock)
        .granularity(Duration::from_secs(1));
    run(
        c,
        "last_used/mark_new_granule_every_request",
        &slot,
        recorder.layer(inner()),
        move || time.advance(Duration::from_secs(1)),
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
