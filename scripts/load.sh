#!/usr/bin/env bash
# End-to-end load test: one axum hello-world app served several ways (no middleware, tower-http's
# static bearer check, this crate's full stack as four layers and as one service, and the same
# work written by hand with axum, sha2 and governor, `hand-rolled`), driven by wrk
# on 127.0.0.1 in short rounds that alternate between them, so drift of the machine hits all of
# them alike. Prints each
# round, then the median requests/s of each mode and its ratio to no middleware, as the ratio of
# the medians and as the median of the per-round ratios (the bar: the recommended stack ≥ 0.95), and,
# when `hand-rolled` runs, the same ratios of this crate's modes (full*, fused*) to it.
# It also prints the server's own CPU time per request (user + system, from /proc/PID/stat over
# each wrk run) and the reference's CPU per request divided by each mode's: with wrk and the
# server each saturating one of two cores, requests/s also moves with the client's work (more
# response bytes to parse), while CPU per request is the server's cost alone.
#
#   scripts/load.sh                 # 7 rounds of 3 s per mode (about 1.5 minutes)
#   ROUNDS=3 SECS=2 scripts/load.sh # shorter
#   LTO=1 scripts/load.sh           # every mode built with lto = "fat", codegen-units = 1
#
# The server is the bench target `load_target` (benches/load_target.rs, `harness = false`, which
# lists every mode), built with `cargo bench --bench load_target --no-run` (the `bench` profile:
# release settings); its executable is the `executable` field of `--message-format=json`.
#
# Settings (environment): ROUNDS (7), SECS per wrk run (3), CONNS (32), WRK_THREADS (1),
# SERVER_THREADS (1: with one wrk thread, each side has one of the two cores), BASE_PORT (18081),
# MODES ("none tower-http hand-rolled full fused fused-outer"; the first is the reference; add
# `full-separate` to see the cost of one `Router::layer` call per layer; benches/load_target.rs
# lists every mode; `old:MODE` serves MODE from OLD_BIN, another commit's load_target, for
# before/after ratios in one run), LTO (0).
# Installs wrk from Debian's packages if it is missing. Targets 127.0.0.1 only; every wrk run is
# bounded by `timeout`; the servers are stopped on exit, whatever happens. Not part of .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-7}
SECS=${SECS:-3}
CONNS=${CONNS:-32}
WRK_THREADS=${WRK_THREADS:-1}
SERVER_THREADS=${SERVER_THREADS:-1}
BASE_PORT=${BASE_PORT:-18081}
# shellcheck disable=SC2206
MODES=(${MODES:-none tower-http hand-rolled full fused fused-outer})
KEY=br_live_LoadTest0123456789abcdefghijklmn

if ! command -v wrk >/dev/null 2>&1; then
  echo "installing wrk (apt-get install -y wrk)" >&2
  if [ "$(id -u)" -eq 0 ]; then
    apt-get install -y wrk >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y wrk >/dev/null; }
  else
    sudo apt-get install -y wrk >/dev/null 2>&1 || { sudo apt-get update >/dev/null && sudo apt-get install -y wrk >/dev/null; }
  fi
fi

# The path of the executable cargo reports for the load_target bench target (JSON messages on
# stdout, one per line).
executable() {
  python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line) if line.startswith("{") else {}
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "load_target" and m.get("executable"):
        print(m["executable"])'
}

TARGET_DIR="${CARGO_TARGET_DIR:-target}"
BUILD=(cargo bench --bench load_target --no-run --message-format=json-render-diagnostics)
if [ "${LTO:-0}" = 1 ]; then
  # The bench profile (release settings) with fat LTO and one codegen unit, as many production
  # builds are configured; every mode is built alike. A target directory of its own keeps the
  # default build's artifacts.
  echo "building the load target (bench profile, lto = \"fat\", codegen-units = 1)" >&2
  TARGET_DIR="$TARGET_DIR/lto"
  BIN=$(CARGO_PROFILE_BENCH_LTO=fat CARGO_PROFILE_BENCH_CODEGEN_UNITS=1 \
    "${BUILD[@]}" --target-dir "$TARGET_DIR" | executable)
else
  echo "building the load target (bench profile)" >&2
  BIN=$("${BUILD[@]}" | executable)
fi
if [ -z "$BIN" ] || [ ! -x "$BIN" ]; then
  echo "cargo reported no load_target executable" >&2
  exit 1
fi
echo "load target: $BIN" >&2

PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM

port_of() { echo $((BASE_PORT + $1)); }

# Pin the servers and wrk to different cores when possible (fewer migrations, less noise).
PIN_SERVER=() PIN_WRK=()
if command -v taskset >/dev/null 2>&1 && [ "$(nproc)" -ge 2 ]; then
  PIN_SERVER=(taskset -c 0) PIN_WRK=(taskset -c 1)
fi

for i in "${!MODES[@]}"; do
  # `old:MODE` serves MODE from the load target named by OLD_BIN (another commit's build), for
  # before/after ratios in one run.
  mode_bin=$BIN mode=${MODES[$i]}
  if [[ $mode == old:* ]]; then
    mode_bin=${OLD_BIN:?"old:* modes need OLD_BIN, another commit's load_target"} mode=${mode#old:}
  fi
  "${PIN_SERVER[@]}" "$mode_bin" --mode "$mode" --addr "127.0.0.1:$(port_of "$i")" --key "$KEY" \
    --threads "$SERVER_THREADS" 2>/dev/null &
  PIDS+=($!)
done

# Wait (bounded) until each server answers.
for i in "${!MODES[@]}"; do
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$(port_of "$i")") 2>/dev/null; then break; fi
    sleep 0.1
  done
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $KEY" \
    "http://127.0.0.1:$(port_of "$i")/" 2>/dev/null || echo none)
  if [ "$code" != 200 ]; then
    echo "mode ${MODES[$i]} answered $code, not 200" >&2
    exit 1
  fi
done

CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; } # user + system time of a process

run_wrk() { # port seconds server-pid -> "requests/s server-CPU-µs/request"
  local before after out
  before=$(cpu_ticks "$3")
  out=$(timeout $(($2 + 10)) "${PIN_WRK[@]}" wrk -t"$WRK_THREADS" -c"$CONNS" -d"${2}s" \
    -H "Authorization: Bearer $KEY" "http://127.0.0.1:$1/")
  after=$(cpu_ticks "$3")
  awk -v t=$((after - before)) -v hz="$CLK_TCK" '
    /requests in/ {n = $1}
    /^Requests\/sec:/ {rps = $2}
    END {printf "%s %.3f\n", rps, (n > 0 ? t / hz / n * 1e6 : 0)}' <<<"$out"
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "wrk -t$WRK_THREADS -c$CONNS -d${SECS}s, server threads $SERVER_THREADS, $ROUNDS rounds"

# Warm-up: one short run per mode, not counted.
for i in "${!MODES[@]}"; do run_wrk "$(port_of "$i")" 1 "${PIDS[$i]}" >/dev/null; done

declare -A RESULTS CPU BY_ROUND
for r in $(seq 1 "$ROUNDS"); do
  line="round $r:"
  # Rotate the order each round so no mode always runs first or last.
  n=${#MODES[@]}
  for k in $(seq 0 $((n - 1))); do
    i=$(((k + r) % n))
    read -r rps cpu < <(run_wrk "$(port_of "$i")" "$SECS" "${PIDS[$i]}")
    RESULTS[${MODES[$i]}]+="$rps "
    CPU[${MODES[$i]}]+="$cpu "
    BY_ROUND[${MODES[$i]},$r]=$rps
    line+=" ${MODES[$i]}=$rps (${cpu} µs)"
  done
  echo "$line"
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

# One table of ratios to a reference mode: for each mode, its median requests/s, two estimates of
# its ratio to the reference (the ratio of the medians, and the median of the ratios within each
# round: the latter compares runs seconds apart, so slow drift of the machine cancels out), its
# server CPU time per request, and the reference's CPU per request divided by its own.
ratio_table() { # reference mode...
  local ref=$1 m med cpu r per_round
  shift
  local base cpu_base
  base=$(echo "${RESULTS[$ref]}" | median)
  cpu_base=$(echo "${CPU[$ref]}" | median)
  echo
  echo "ratios to $ref:"
  printf '%-18s %14s %16s %18s %16s %14s\n' mode "median req/s" "ratio of medians" \
    "median of ratios" "server µs/req" "CPU ratio"
  for m in "$@"; do
    med=$(echo "${RESULTS[$m]}" | median)
    cpu=$(echo "${CPU[$m]}" | median)
    per_round=""
    for r in $(seq 1 "$ROUNDS"); do
      per_round+="$(awk -v a="${BY_ROUND[$m,$r]}" -v b="${BY_ROUND[$ref,$r]}" 'BEGIN {print a / b}') "
    done
    printf '%-18s %14.0f %16.3f %18.3f %16.3f %14.3f\n' "$m" "$med" \
      "$(awk -v a="$med" -v b="$base" 'BEGIN {print a / b}')" "$(echo "$per_round" | median)" \
      "$cpu" "$(awk -v a="$cpu" -v b="$cpu_base" 'BEGIN {print (a > 0 ? b / a : 0)}')"
  done
}

# Every mode against the first (no middleware by default).
ratio_table "${MODES[0]}" "${MODES[@]}"

# This crate's modes against the same work written by hand, when both ran.
OURS=()
HAND=0
for m in "${MODES[@]}"; do
  case $m in
    full* | fused* | old:full* | old:fused*) OURS+=("$m") ;;
    hand-rolled) HAND=1 ;;
  esac
done
if [ "$HAND" = 1 ] && [ "${#OURS[@]}" -gt 0 ]; then
  ratio_table hand-rolled "${OURS[@]}"
fi
