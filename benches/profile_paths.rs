//! Drive one request path of the benchmark suite many times in a plain loop, for profilers that
//! want a process doing one thing: `perf record`, `perf stat`, `valgrind --tool=callgrind`
//! (whose instruction counts do not move with the machine's load or the code's layout).
//!
//! A bench target with `harness = false` (bench tooling stays out of `examples/`), built in the
//! `bench` profile (release settings) and run as a program: `cargo bench --no-run` builds it and
//! prints where the executable is (`target/release/deps/profile_paths-<hash>`), or take the
//! `executable` field of `--message-format=json`:
//!
//! ```text
//! cargo bench --bench profile_paths --no-run
//! BIN=$(cargo bench --bench profile_paths --no-run --message-format=json | python3 -c \
//!   'import json,sys; print([m["executable"] for m in map(json.loads, sys.stdin) if m.get("executable")][0])')
//! valgrind --tool=callgrind "$BIN" malformed 200000
//! valgrind --tool=callgrind "$BIN" none 200000
//! # the cost of observing (BENCHMARKS.md): build with `--features events,metrics`, then
//! valgrind --tool=callgrind "$BIN" fused-observed 100000   # and 50000, and `fused`, `none`
//! perf record -e cpu-clock "$BIN" fused 10000000
//! cargo bench --bench profile_paths -- accept 2000   # or build and run in one go
//! ```
//!
//! With fat LTO and one codegen unit (as `LTO=1 scripts/load.sh` builds the load target), in a
//! target directory of its own: prefix the `cargo bench` with
//! `CARGO_PROFILE_BENCH_LTO=fat CARGO_PROFILE_BENCH_CODEGEN_UNITS=1` and add
//! `--target-dir target/lto`.
//!
//! Paths (the fixture of `benches/support`: a hot key on an enterprise plan that is never
//! refused, a malformed key):
//!
//! - `none`: the inner service alone (subtract it);
//! - `accept`, `malformed`: `ApiKeyAuth` alone;
//! - `accept-query`: `ApiKeyAuth` alone, the URL carrying an ordinary query string
//!   (`?page=2&per_page=50&sort=created_at`), which the key-in-URL check reads;
//! - `layers`, `layers-malformed`: the four layers composed with `ServiceBuilder`;
//! - `fused`, `fused-malformed`: the same stack as one service, `ApiKeyStack`;
//! - `fused-metered`: `fused` with usage metering on (`meter_usage(true)`): the cost of
//!   counting each request by outcome (no flusher runs, so every request is counted in place);
//! - `fused-observed` (with `--features events`): `fused` with everything observing on: usage
//!   metering, the invalid-key guard (`invalid_key_limit`), the signals observer
//!   (`Events::signals`, usage levels checked on every decision) and, with `metrics` too, a
//!   `Telemetry` over the stack (its counters are plain atomics, always counted);
//! - `fused-nolimit`: `ApiKeyStack` without its rate limit (subtract it to get the limit's cost);
//! - `fused-p1`, `fused-p2`, `fused-p3`: `ApiKeyStack` with 1, 2 or 3 named request policies
//!   (`QuotaPolicy::policies`, the several-policy path) instead of the plan's one;
//! - `floor-malformed`: the malformed-key refusal composed by hand, no tower (the suite's
//!   `hand_composed/malformed_refused`);
//! - `floor-accept`, `floor-full`: `ApiKeyAuth`'s and the full stack's work on an accepted
//!   request composed by hand (`hand_composed/auth_accept` and `hand_composed/full_accept`).
//!
//! Every request's status is checked, so a path that went wrong cannot pass for a fast one.

mod support;

use support::*;
use tower::Layer;
use tower_api_key::KeyFormats;

fn main() {
    // `cargo bench` passes `--bench` (after any arguments of its own) to a `harness = false`
    // target: not one of ours. Run by a plain `cargo bench` or `cargo test --all-targets`
    // (which set `CARGO_MANIFEST_DIR`) with no path, or a filter or option meant for other
    // targets, there is nothing to do, and the run of the other targets goes on.
    let by_cargo = std::env::args().any(|a| a == "--bench")
        || std::env::var_os("CARGO_MANIFEST_DIR").is_some();
    let usage = |problem: &str| -> ! {
        if by_cargo {
            eprintln!("profile_paths: a program for profilers (benches/profile_paths.rs); skipped");
            std::process::exit(0);
        }
        eprintln!(
            "profile_paths: {problem}; usage: profile_paths PATH [N] (paths: benches/profile_paths.rs)"
        );
        std::process::exit(2)
    };
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let (Some(path), n) = (args.next(), args.next()) else {
        usage("no path")
    };
    let n: u64 = n.and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
    let fx = fixture();
    let mut auth = auth_layer(&fx.store).layer(Hello);
    let mut layers = full_stack(&fx.store, Hello);
    let mut fused = fused_stack_layer(&fx.store).layer(Hello);
    let mut metered = fused_stack_layer_metered(&fx.store).layer(Hello);
    let mut fused_nolimit = fused_unlimited_layer(&fx.store).layer(Hello);
    #[cfg(feature = "events")]
    let mut observed = observed::layer(&fx.store).layer(Hello);
    let mut fused_p: Vec<_> = (1..=3)
        .map(|k| fused_policies_layer(&fx.store, k).layer(Hello))
        .collect();
    let formats = KeyFormats::default();
    let floor = Floor::new(&fx.store);
    let (expected, mut step): (u16, Box<dyn FnMut() -> u16>) = match path.as_str() {
        "none" => (200, Box::new(|| run(&mut Hello, request(fx.hot)))),
        "accept" => (200, Box::new(|| run(&mut auth, request(fx.hot)))),
        "accept-query" => (
            200,
            Box::new(|| run(&mut auth, with_query(request(fx.hot)))),
        ),
        "malformed" => (401, Box::new(|| run(&mut auth, request(fx.malformed)))),
        "layers" => (200, Box::new(|| run(&mut layers, request(fx.hot)))),
        "layers-malformed" => (401, Box::new(|| run(&mut layers, request(fx.malformed)))),
        "fused" => (200, Box::new(|| run(&mut fused, request(fx.hot)))),
        "fused-metered" => (200, Box::new(|| run(&mut metered, request(fx.hot)))),
        "fused-malformed" => (401, Box::new(|| run(&mut fused, request(fx.malformed)))),
        "fused-nolimit" => (200, Box::new(|| run(&mut fused_nolimit, request(fx.hot)))),
        #[cfg(feature = "events")]
        "fused-observed" => (200, Box::new(|| run(&mut observed, request(fx.hot)))),
        p @ ("fused-p1" | "fused-p2" | "fused-p3") => {
            let k = usize::from(p.as_bytes()[7] - b'1');
            let svc = &mut fused_p[k];
            (200, Box::new(move || run(svc, request(fx.hot))))
        }
        "floor-malformed" => (
            401,
            Box::new(|| floor_malformed(&formats, request(fx.malformed))),
        ),
        "floor-accept" => (200, Box::new(|| floor.auth_only(request(fx.hot)))),
        "floor-full" => (200, Box::new(|| floor.full(request(fx.hot)))),
        other => usage(&format!("unknown path {other:?}")),
    };
    let mut other = 0u64;
    for _ in 0..n {
        other += u64::from(step() != expected);
    }
    if other > 0 {
        eprintln!("{other} of {n} requests answered otherwise than {expected}");
        std::process::exit(1);
    }
    println!("{n} requests, {path}: all {expected}");
}

/// `req` with an ordinary query string: what most list endpoints receive.
fn with_query<B>(mut req: http::Request<B>) -> http::Request<B> {
    *req.uri_mut() = http::Uri::from_static("/v1/browsers?page=2&per_page=50&sort=created_at");
    req
}

/// The fused stack with everything that observes the request path turned on.
#[cfg(feature = "events")]
mod observed {
    use std::time::Duration;

    use tower_api_key::events::{Events, TracingSink};
    use tower_api_key::{
        ApiKeyStackLayer, LastUsedRecorder, MemoryStore, OrgRateLimit, ScopeGuard,
    };

    use super::support::{REQUIRED, auth_layer};

    /// `fused_stack_layer` plus metering, the invalid-key guard, the signals observer and (with
    /// `metrics`) a telemetry collector over it. The events' delivery task never runs: the loop
    /// emits nothing (the hot key's plan is never near a level).
    pub fn layer(store: &MemoryStore) -> ApiKeyStackLayer<MemoryStore> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime");
        let (events, delivery) = {
            let _in = rt.enter();
            Events::builder().sink(TracingSink).start()
        };
        // Kept for the process's life: the queues stay open.
        std::mem::forget((rt, delivery));
        let signals = events.signals();
        let layer = auth_layer(store)
            .invalid_key_limit(20, Duration::from_secs(60))
            .rate_limit(OrgRateLimit::new())
            .record_last_used(LastUsedRecorder::new(store.clone()).meter_usage(true))
            .scope_guard(ScopeGuard::require(REQUIRED))
            .observe(&signals);
        #[cfg(feature = "metrics")]
        std::mem::forget(
            tower_api_key::telemetry::Telemetry::new()
                .stack(&layer)
                .events(&events),
        );
        layer
    }
}
