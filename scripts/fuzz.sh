#!/usr/bin/env bash
# Bounded fuzzing of every cargo-fuzz target in fuzz/ (run by CI): builds all targets once, then
# runs each for FUZZ_SECONDS, starting from its committed seed corpus, fuzz/corpus/<target>/.
#
#   scripts/fuzz.sh                          # every target, 30 s each
#   FUZZ_SECONDS=300 scripts/fuzz.sh         # longer
#   FUZZ_TARGETS="header_path query_check" scripts/fuzz.sh
#
# The repository stays clean: libFuzzer writes the inputs it finds to the first corpus directory
# it is given, so that is a temporary copy of the seeds (deleted on exit) and the committed corpus
# is only read. Crashes, timeouts and out-of-memory inputs go to FUZZ_ARTIFACTS/<target>/
# (default fuzz/target/artifacts, under the ignored build directory); any of them makes the
# script exit 1 after the other targets ran, printing each input's path and how to reproduce it.
#
# Settings (environment): FUZZ_SECONDS (30), FUZZ_TARGETS (all of `cargo fuzz list`),
# FUZZ_ARTIFACTS (fuzz/target/artifacts), FUZZ_TIMEOUT per input in seconds (10).
# Needs cargo-fuzz (installed with `cargo install cargo-fuzz --locked` if missing); the targets
# need nightly compiler flags, enabled on a stable toolchain with RUSTC_BOOTSTRAP=1.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$(pwd)

seconds=${FUZZ_SECONDS:-30}
per_input=${FUZZ_TIMEOUT:-10}
artifacts=${FUZZ_ARTIFACTS:-$root/fuzz/target/artifacts}
case $artifacts in /*) ;; *) artifacts=$root/$artifacts ;; esac
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

started=$(date +%s)
echo "== building the fuzz targets" >&2
cargo fuzz build
built=$(date +%s)

read -r -a targets <<<"${FUZZ_TARGETS:-$(cargo fuzz list | tr '\n' ' ')}"
if [ "${#targets[@]}" -eq 0 ]; then
    echo "no fuzz targets found" >&2
    exit 1
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/tower-api-key-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT

failed=()
for t in "${targets[@]}"; do
    seeds=$root/fuzz/corpus/$t
    if [ ! -d "$seeds" ]; then
        echo "fuzz/corpus/$t is missing: every target needs a committed seed corpus" >&2
        exit 1
    fi
    mkdir -p "$work/$t"
    rm -rf "${artifacts:?}/$t"
    mkdir -p "$artifacts/$t"
    echo "== $t: ${seconds}s from $(find "$seeds" -type f | wc -l) seeds" >&2
    status=0
    cargo fuzz run "$t" "$work/$t" "$seeds" -- \
        -max_total_time="$seconds" -timeout="$per_input" -print_final_stats=1 \
        -artifact_prefix="$artifacts/$t/" || status=$?
    # `cargo fuzz run` also makes fuzz/artifacts/<target>/ for its own default; drop it if empty.
    rmdir "$root/fuzz/artifacts/$t" 2>/dev/null || true
    if [ "$status" -ne 0 ]; then
        failed+=("$t")
        echo "== $t FAILED (exit $status)" >&2
    else
        echo "== $t: no failure; $(find "$work/$t" -type f | wc -l) new inputs (discarded)" >&2
    fi
done
rmdir "$root/fuzz/artifacts" 2>/dev/null || true

echo "== fuzzing took $(($(date +%s) - started))s (build $((built - started))s)" >&2
if [ "${#failed[@]}" -ne 0 ]; then
    for t in "${failed[@]}"; do
        found=$(find "$artifacts/$t" -type f)
        echo "FAILED: $t" >&2
        if [ -n "$found" ]; then
            while IFS= read -r a; do
                echo "  artifact: $a" >&2
                echo "  reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run $t $a" >&2
            done <<<"$found"
        else
            echo "  (no artifact written: see the output above)" >&2
        fi
    done
    exit 1
fi
