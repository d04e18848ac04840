#!/usr/bin/env python3
"""How far the engine sits from the f64 truth, in units of the noise floor, over one or more runs.

    python3 scripts/noise-floor-report.py .proof_bundle/run/<run id> [more bundles ...]

Reads each bundle's results.json, takes the checks against the truth (cases with role "truth"),
and prints per model: how many tensors were judged, the median, 99th percentile and largest
`noise_units` (the engine's distance from the truth divided by the largest f32 reference's, by
the worse of relative RMS and relative max), the tensor where the largest sits, and per f32
reference how its own distance compares with the floor (1.00 = it set the floor). These are the
numbers docs/noise-floor.md quotes to choose K and to check it on held-out prompts.
"""

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def quantile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(bundles):
    units = defaultdict(list)  # model -> [(noise_units, prompt, key)]
    share = defaultdict(lambda: defaultdict(list))  # model -> reference -> [its rel_rms / floor rel_rms]
    failures = defaultdict(int)
    for bundle in bundles:
        results = json.loads((Path(bundle) / "results.json").read_text())
        for case in results["cases"]:
            if case.get("role") != "truth":
                continue
            for check in case["checks"]:
                m = check["metrics"]
                if check["status"] != "pass":
                    failures[case["model"]] += 1
                if "noise_units" not in m:
                    continue
                units[case["model"]].append((m["noise_units"], case["prompt"], check["key"]))
                for name, value in m.items():
                    if name.startswith("rel_rms.") and m["noise_rms"] > 0:
                        share[case["model"]][name[len("rel_rms.") :]].append(value / m["noise_rms"])
    if not units:
        sys.exit("noise-floor-report: no checks against a truth in these bundles")
    print("| model | tensors | failed | median | p99 | max | where the max is | references' distance / floor (median) |")
    print("|---|---|---|---|---|---|---|---|")
    for model, rows in sorted(units.items()):
        values = [u for u, _, _ in rows]
        worst = max(rows)
        refs = ", ".join(f"{r} {statistics.median(v):.2f}" for r, v in sorted(share[model].items()))
        print(
            f"| {model} | {len(rows)} | {failures[model]} | {statistics.median(values):.2f} | {quantile(values, 0.99):.2f} | "
            f"{worst[0]:.2f} | {worst[1]} {worst[2]} | {refs} |"
        )


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
