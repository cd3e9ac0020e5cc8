#!/usr/bin/env bash
# Browser test of the dashboard: the example server on a free port of 127.0.0.1, driven by
# Playwright (tests/browser/dashboard.mjs) in Debian's headless Chromium. Installs what is missing
# (the chromium package, the npm dependencies), writes a screenshot of the API Keys page to
# docs/dashboard.png, stops the server, and exits nonzero if any check failed.
#
#   bash scripts/browser-test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

if [ ! -x /usr/bin/chromium ]; then
  echo "installing Debian's chromium"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)

# All features: the set `cargo test --all-features` has already built, so nothing recompiles.
cargo build --example server --all-features
server=target/debug/examples/server

log=$(mktemp)
"$server" --addr 127.0.0.1:0 --flush-interval-ms 200 >"$log" 2>&1 &
pid=$!
cleanup() {
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -f "$log"
}
trap cleanup EXIT

# The first stdout line is "listening on http://127.0.0.1:PORT"; wait for it, at most 30 s.
base=""
for _ in $(seq 1 300); do
  base=$(sed -n 's/^listening on \(http:\/\/127\.0\.0\.1:[0-9]*\)$/\1/p' "$log" | head -n 1)
  [ -n "$base" ] && break
  if ! kill -0 "$pid" 2>/dev/null; then
    cat "$log" >&2
    echo "the example server exited before listening" >&2
    exit 1
  fi
  sleep 0.1
done
if [ -z "$base" ]; then
  cat "$log" >&2
  echo "the example server did not print its address within 30 s" >&2
  exit 1
fi
echo "example server at $base"

BASE="$base" SCREENSHOT="$PWD/docs/dashboard.png" node tests/browser/dashboard.mjs
