//! The gRPC and hyper examples run to completion and show the outcomes they promise.

#[path = "common/server.rs"]
mod server;

fn run(name: &str) -> String {
    let out = std::process::Command::new(server::example_binary(name))
        .output()
        .expect("run example");
    assert!(
        out.status.success(),
        "{name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

#[test]
fn grpc_example_shows_every_status() {
    let out = run("grpc");
    let line = |prefix: &str| {
        out.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line {prefix:?} in\n{out}"))
            .to_owned()
    };
    assert!(line("Exec without a key").contains("Unauthenticated: Invalid or missing API key"));
    assert!(line("Exec with a read-only key").contains("PermissionDenied"));
    assert!(line("Whoami with the read-only key").contains("OK: org_grpc_demo key_"));
    assert!(
        line("Exec #1 with the runner key").contains("OK: [org_grpc_demo in sbx_1] echo hello")
    );
    let exhausted = line("Exec #4 with the runner key");
    assert!(exhausted.contains("ResourceExhausted"), "{exhausted}");
    assert!(exhausted.contains("x-ratelimit-remaining=0"), "{exhausted}");
    assert!(exhausted.contains("retry-after="), "{exhausted}");
}

#[test]
fn hyper_example_shows_200_403_401() {
    let out = run("hyper");
    assert!(
        out.contains("GET /v1/browsers/brs_1 (reader key) -> 200 OK"),
        "{out}"
    );
    assert!(
        out.contains("DELETE /v1/browsers/brs_1 (reader key) -> 403 Forbidden"),
        "{out}"
    );
    assert!(
        out.contains("GET /v1/browsers/brs_1 (no key) -> 401 Unauthorized"),
        "{out}"
    );
}
