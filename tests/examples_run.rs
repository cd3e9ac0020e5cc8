//! The gRPC and hyper examples run to completion and show the outcomes they promise.

mod common;
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
    // What a line reports: the text after its `->`.
    let outcome = |prefix: &str| {
        let l = line(prefix);
        let (_, outcome) = l
            .split_once("-> ")
            .unwrap_or_else(|| panic!("no outcome in {l:?}"));
        outcome.trim_end().to_owned()
    };
    assert_eq!(
        outcome("Exec without a key"),
        "Unauthenticated: Invalid or missing API key"
    );
    // The org's first request: one of its five cells spent.
    assert_eq!(
        outcome("Exec with a read-only key"),
        "PermissionDenied: This API key lacks the permission required: sandbox_sessions:exec \
         x-ratelimit-limit=5 x-ratelimit-remaining=4"
    );
    let whoami = outcome("Whoami with the read-only key");
    assert!(whoami.starts_with("OK: org_grpc_demo key_"), "{whoami}");
    assert_eq!(
        outcome("Exec #1 with the runner key"),
        "OK: [org_grpc_demo in sbx_1] echo hello"
    );
    // Five per minute: a cell every 12 s, so the wait is at most 12 s (real time, so it may be
    // less), and the message and the metadata agree on it.
    let exhausted = outcome("Exec #4 with the runner key");
    let (retry, rest) = exhausted
        .strip_prefix("ResourceExhausted: Rate limit of 5 requests exceeded; retry after ")
        .and_then(|r| r.split_once(" seconds retry-after="))
        .unwrap_or_else(|| panic!("{exhausted}"));
    let secs: u64 = retry.parse().unwrap();
    assert!((1..=12).contains(&secs), "{exhausted}");
    assert_eq!(
        rest,
        format!("{retry} x-ratelimit-limit=5 x-ratelimit-remaining=0"),
        "{exhausted}"
    );
}

#[test]
fn hyper_example_shows_200_403_401() {
    let out = run("hyper");
    // The text after `prefix` on the line that starts with it.
    let after = |prefix: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no line {prefix:?} in\n{out}"))
    };
    let ok = after("GET /v1/browsers/brs_1 (reader key) -> 200 OK: ");
    assert!(
        ok.starts_with("GET /v1/browsers/brs_1 for org_hyper (key_"),
        "{ok}"
    );
    let forbidden = common::problem(
        after("DELETE /v1/browsers/brs_1 (reader key) -> 403 Forbidden: ").as_bytes(),
    );
    assert_eq!(forbidden["code"], "insufficient_scope");
    assert_eq!(forbidden["status"], 403);
    let unauthorized =
        common::problem(after("GET /v1/browsers/brs_1 (no key) -> 401 Unauthorized: ").as_bytes());
    assert_eq!(unauthorized["code"], "missing_api_key");
    assert_eq!(unauthorized["status"], 401);
}
