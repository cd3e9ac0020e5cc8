#!/usr/bin/env python3
"""Print the criterion medians of the `stack` bench (benches/stack.rs), group by group, and the
two-thread scaling ratios, and what the layers add over the hand-composed floor of the same work
(a difference of two medians of the run, each net of the no-layer baseline; measured minutes
apart, so on a noisy machine it can even come out below zero).

    python3 scripts/bench-summary.py [CRITERION_DIR]

CRITERION_DIR defaults to $CARGO_TARGET_DIR/criterion, else target/criterion. `suite.net/*`
figures are already net of the no-layer baseline (measured alternately with it).
"""
import json
import os
import sys

root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.environ.get("CARGO_TARGET_DIR", "target"), "criterion")

rows = {}
for group in ["baseline", "rate_limit_step", "decision", "net", "stack", "store_scale", "threads"]:
    gdir = os.path.join(root, "suite." + group)
    if not os.path.isdir(gdir):
        continue
    for dirpath, _, filenames in os.walk(gdir):
        if os.path.basename(dirpath) == "new" and "estimates.json" in filenames:
            with open(os.path.join(dirpath, "estimates.json")) as f:
                est = json.load(f)
            with open(os.path.join(dirpath, "benchmark.json")) as f:
                name = json.load(f)["full_id"]
            rows[name] = est["median"]["point_estimate"]

for name in sorted(rows):
    print(f"{name:50s} {rows[name]:9.1f} ns")

for label in ["stack_fused_hot_key", "stack_fused_random_keys", "stack_hot_key",
              "stack_random_keys", "memory_lookup_hot_key"]:
    one = rows.get(f"suite.threads/{label}/1_threads")
    two = rows.get(f"suite.threads/{label}/2_threads")
    if one and two:
        # Each iteration is one request per thread: aggregate throughput = threads / time.
        print(f"two threads, {label}: {2 * one / two:.2f}x the throughput of one")

for subject, floor in [("api_key_auth/malformed_refused", "hand_composed/malformed_refused"),
                       ("stack_fused/malformed_refused", "hand_composed/malformed_refused"),
                       ("api_key_auth/accept", "hand_composed/auth_accept"),
                       ("stack_fused/accept", "hand_composed/full_accept"),
                       ("stack/accept", "hand_composed/full_accept")]:
    ours = rows.get(f"suite.net/{subject}")
    base = rows.get(f"suite.net/{floor}")
    if ours is not None and base is not None:
        print(f"over the floor, {subject}: {ours - base:+.1f} ns ({floor} {base:.1f} ns)")
