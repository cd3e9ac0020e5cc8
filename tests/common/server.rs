//! Start the real example binaries.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

/// The example server, killed on drop.
pub struct ExampleServer {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub base: String,
}

/// Build (once per test binary and example) the example `name` and return its path.
pub fn example_binary(name: &str) -> std::path::PathBuf {
    // The examples built so far; held across the build so that two tests asking for the same
    // example build it once.
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if !built.iter().any(|b| b == name) {
        // Build (or confirm up to date) the example with the same cargo and target dir.
        // Same features as this test binary, so the library is not rebuilt for the example.
        let features: Vec<&str> = [
            ("axum", cfg!(feature = "axum")),
            ("tonic", cfg!(feature = "tonic")),
            ("sqlite", cfg!(feature = "sqlite")),
            ("postgres", cfg!(feature = "postgres")),
            ("redis", cfg!(feature = "redis")),
            ("serve", cfg!(feature = "serve")),
            ("admin", cfg!(feature = "admin")),
            ("dashboard", cfg!(feature = "dashboard")),
            ("leaks", cfg!(feature = "leaks")),
            ("events", cfg!(feature = "events")),
            ("webhook", cfg!(feature = "webhook")),
            ("metrics", cfg!(feature = "metrics")),
        ]
        .into_iter()
        .filter_map(|(f, on)| on.then_some(f))
        .collect();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let status = Command::new(cargo)
            .args([
                "build",
                "--example",
                name,
                "--quiet",
                "--no-default-features",
            ])
            .args(["--features", &features.join(",")])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build --example");
        assert!(status.success(), "cargo build --example {name} failed");
        built.push(name.to_owned());
    }
    // tests run from target/<profile>/deps/<test>; examples live in target/<profile>/examples
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = profile_dir.join("examples").join(name);
    assert!(bin.exists(), "{} missing", bin.display());
    bin
}

impl ExampleServer {
    /// Start `server --addr 127.0.0.1:0 <args>` and wait for its "listening on" line.
    pub fn start(args: &[&str]) -> Self {
        let mut child = Command::new(example_binary("server"))
            .args(["--addr", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn example server");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let first = lines
            .next()
            .expect("server printed nothing")
            .expect("read server stdout");
        let base = first
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
            .to_owned();
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self { child, base }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }
}

impl ExampleServer {
    /// Send SIGINT (Ctrl-C) and wait, at most `limit`, for the process to exit.
    pub fn interrupt(self, limit: std::time::Duration) -> std::process::ExitStatus {
        self.signal("INT", limit)
    }

    /// Send SIGTERM (what systemd and Kubernetes send) and wait, at most `limit`, for the
    /// process to exit.
    pub fn terminate(self, limit: std::time::Duration) -> std::process::ExitStatus {
        self.signal("TERM", limit)
    }

    fn signal(mut self, signal: &str, limit: std::time::Duration) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status();
        assert!(
            sent.is_ok_and(|s| s.success()),
            "could not send SIG{signal}"
        );
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for server") {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "server did not exit within {limit:?} of SIG{signal}"
            );
            // Polling for the exit of a child process: there is no event to wait on here.
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for ExampleServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
