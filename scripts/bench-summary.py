#!/usr/bin/env python3
"""Print the criterion medians of the `stack` bench (or of the groups named) with each figure's
cost net of its baseline in the same run.

    python3 scripts/bench-summary.py [CRITERION_DIR]

CRITERION_DIR defaults to $CARGO_TARGET_DIR/criterion, else target/criterion.
"""
import json
import os
import sys

root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.environ.get("CARGO_TARGET_DIR", "target"), "criterion")

# Which baseline each figure is net of.
NET_OF = {
    "suite.layer/api_key_auth": "suite.baseline/no_layer",
    "suite.layer/org_rate_limit": "suite.baseline/no_layer_with_principal",
    "suite.layer/last_used": "suite.baseline/no_layer_with_principal",
    "suite.layer/scope_guard": "suite.baseline/no_layer_with_principal",
    "suite.stack/": "suite.baseline/no_layer",
    "suite.baseline/tower_http": "suite.baseline/no_layer",
    "suite.baseline/hand_composed": "suite.baseline/no_layer",
    "suite.store_scale/api_key_auth": "suite.baseline/no_layer",
    "suite.store_scale/stack": "suite.baseline/no_layer",
}


def median(group, name):
    path = os.path.join(root, group, name, "new", "estimates.json")
    try:
        with open(path) as f:
            return json.load(f)["median"]["point_estimate"]
    except OSError:
        return None


rows = {}
for group in ["baseline", "rate_limit_step", "layer", "stack", "store_scale", "threads"]:
    group = "suite." + group
    gdir = os.path.join(root, group)
    if not os.path.isdir(gdir):
        continue
    for dirpath, dirnames, filenames in os.walk(gdir):
        if os.path.basename(dirpath) == "new" and "estimates.json" in filenames:
            bench = os.path.relpath(os.path.dirname(dirpath), root)
            with open(os.path.join(dirpath, "estimates.json")) as f:
                rows[bench] = json.load(f)["median"]["point_estimate"]

for bench in sorted(rows):
    ns = rows[bench]
    base = next((b for p, b in NET_OF.items() if bench.startswith(p)), None)
    net = ""
    if base and base in rows and base != bench:
        net = f"  net {ns - rows[base]:8.1f} ns (of {base})"
    print(f"{bench:50s} {ns:9.1f} ns{net}")

for label in ["hot_key", "random_keys"]:
    one = rows.get(f"suite.threads/stack_{label}/1_threads")
    two = rows.get(f"suite.threads/stack_{label}/2_threads")
    if one and two:
        # Each iteration is one request per thread: throughput = threads / time.
        print(f"threads/{label}: 2 threads = {2 * one / two:.2f}x one thread")
