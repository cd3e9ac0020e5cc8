//! Drive one request path of the benchmark suite many times in a plain loop, for profilers that
//! want a process doing one thing: `perf record`, `perf stat`, `valgrind --tool=callgrind`
//! (whose instruction counts do not move with the machine's load or the code's layout).
//!
//! ```text
//! cargo build --release --example profile_paths
//! valgrind --tool=callgrind target/release/examples/profile_paths malformed 200000
//! valgrind --tool=callgrind target/release/examples/profile_paths none 200000
//! perf record -e cpu-clock target/release/examples/profile_paths fused 10000000
//! ```
//!
//! Paths (the fixture of `benches/support`: a hot key on an enterprise plan that is never
//! refused, a malformed key):
//!
//! - `none`: the inner service alone (subtract it);
//! - `accept`, `malformed`: `ApiKeyAuth` alone;
//! - `layers`, `layers-malformed`: the four layers composed with `ServiceBuilder`;
//! - `fused`, `fused-malformed`: the same stack as one service, `ApiKeyStack`;
//! - `floor-malformed`: the malformed-key refusal composed by hand, no tower (the suite's
//!   `hand_composed/malformed_refused`);
//! - `floor-accept`, `floor-full`: `ApiKeyAuth`'s and the full stack's work on an accepted
//!   request composed by hand (`hand_composed/auth_accept` and `hand_composed/full_accept`).
//!
//! Every request's status is checked, so a path that went wrong cannot pass for a fast one.

#[path = "../benches/support/mod.rs"]
mod support;

use support::*;
use tower::Layer;
use tower_api_key::KeyFormats;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(path), n) = (args.next(), args.next()) else {
        eprintln!("usage: profile_paths PATH [N]; see the example's docs for the paths");
        std::process::exit(2);
    };
    let n: u64 = n.and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
    let fx = fixture();
    let mut auth = auth_layer(&fx.store).layer(Hello);
    let mut layers = full_stack(&fx.store, Hello);
    let mut fused = fused_stack_layer(&fx.store).layer(Hello);
    let formats = KeyFormats::default();
    let floor = Floor::new(&fx.store);
    let (expected, mut step): (u16, Box<dyn FnMut() -> u16>) = match path.as_str() {
        "none" => (200, Box::new(|| run(&mut Hello, request(fx.hot)))),
        "accept" => (200, Box::new(|| run(&mut auth, request(fx.hot)))),
        "malformed" => (401, Box::new(|| run(&mut auth, request(fx.malformed)))),
        "layers" => (200, Box::new(|| run(&mut layers, request(fx.hot)))),
        "layers-malformed" => (401, Box::new(|| run(&mut layers, request(fx.malformed)))),
        "fused" => (200, Box::new(|| run(&mut fused, request(fx.hot)))),
        "fused-malformed" => (401, Box::new(|| run(&mut fused, request(fx.malformed)))),
        "floor-malformed" => (
            401,
            Box::new(|| floor_malformed(&formats, request(fx.malformed))),
        ),
        "floor-accept" => (200, Box::new(|| floor.auth_only(request(fx.hot)))),
        "floor-full" => (200, Box::new(|| floor.full(request(fx.hot)))),
        other => {
            eprintln!("unknown path {other:?}; see the example's docs for the paths");
            std::process::exit(2);
        }
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
