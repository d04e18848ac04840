#!/usr/bin/env python3
"""Prints the results tables of docs/results.md from a parity run bundle (stdlib only).

    python3 scripts/readme-results.py .proof_bundle/run/<run id>

One table: per checkpoint (rows) and model (columns), the smallest margin to a threshold over every
prompt and reference of that model, and the worst status; a second, when the run had an f64
truth: the engine's largest distance from it in noise floors; then the confidence level, the
reference versions and the near-ties, all as the bundle recorded them.
"""

import json
import sys
import tomllib
from pathlib import Path

RANK = {"pass": 0, "near_tie": 1, "missing": 2, "layout": 2, "non_finite": 2, "fail": 3}


def main(bundle):
    bundle = Path(bundle)
    results = json.loads((bundle / "results.json").read_text())
    summary = json.loads((bundle / "summary.json").read_text())
    manifest = tomllib.loads((bundle / "manifest.toml").read_text())

    models, prompts, refs = [], {}, {}
    cells = {}  # (checkpoint_id, name, model) -> [status, margin, where]
    noise = {}  # (checkpoint_id, name, model) -> (largest noise_units against the truth, where)
    truth = {}  # model -> the truth's name
    for case in results["cases"]:
        if case["reference"].startswith("engine-repeat"):
            continue
        model = f'{case["model"]} ({case["dtype"]})'
        if model not in models:
            models.append(model)
        prompts.setdefault(model, set()).add(case["prompt"])
        if case.get("role") == "truth":
            truth[model] = case["reference"]
            for check in case["checks"]:
                units = check["metrics"].get("noise_units")
                key = (check["checkpoint_id"], check["checkpoint"], model)
                if units is not None and units >= noise.get(key, (-1.0, ""))[0]:
                    noise[key] = (units, f'{check["key"]}, {case["prompt"]}')
            continue
        refs.setdefault(model, set()).add(case["reference"])
        for check in case["checks"]:
            key = (check["checkpoint_id"], check["checkpoint"], model)
            cell = cells.setdefault(key, ["pass", None, ""])
            if RANK.get(check["status"], 3) > RANK.get(cell[0], 3):
                cell[0] = check["status"]
            for j in check["judgements"]:
                if check["status"] != "near_tie" and (cell[1] is None or j["margin"] < cell[1]):
                    cell[1] = j["margin"]
                    cell[2] = f'{check["key"]} vs {case["reference"]}, {case["prompt"]}'

    run = manifest["run"]
    conf = summary["confidence"]
    print(
        f'Run `{results["run_id"]}` (engine commit `{manifest["bundle"]["engine_commit"]}`, host `{run["host"]}`, '
        f'{run["threads"]} threads): **verdict {summary["verdict"].upper()}, confidence {conf.get("level")}/4 '
        f'({conf.get("name", "")})**.'
    )
    print()
    print("References: " + "; ".join(f"{k} {v}" for k, v in run["versions"].items() if k != "engine") + ".")
    print()
    print(
        "Cases: "
        + "; ".join(f"{m}: {len(prompts[m])} prompt(s) x {len(refs[m])} references" + (f" + {truth[m]}" if m in truth else "") for m in models)
        + "."
    )
    print()
    print(
        "Worst margin to the threshold per checkpoint and model, over every prompt, reference and layer "
        "(+100% is an exact match, 0% is at the threshold):"
    )
    print()
    print("| checkpoint | " + " | ".join(models) + " |")
    print("|---|" + "---|" * len(models))
    for cid, name in sorted({(k[0], k[1]) for k in cells}):
        row = []
        for m in models:
            c = cells.get((cid, name, m))
            if c is None:
                row.append("-")
            elif c[0] == "near_tie":
                row.append("near-tie")
            else:
                margin = "" if c[1] is None else f" {c[1] * 100:+.1f}%"
                row.append(f"{c[0]}{margin}")
        print(f"| {cid:02d} {name} | " + " | ".join(row) + " |")
    if noise:
        print()
        print(
            "The engine's largest distance from the f64 truth per checkpoint and model, over every prompt and layer, in "
            "units of the noise floor (the largest distance of a reference computing in f32); it fails above K = 4 "
            "(plus 2^-20 of the tensor's scale, which lets a tensor with a floor near 0 read a little above 4):"
        )
        print()
        print("| checkpoint | " + " | ".join(models) + " |")
        print("|---|" + "---|" * len(models))
        for cid, name in sorted({(k[0], k[1]) for k in noise}):
            row = [f"{noise[(cid, name, m)][0]:.2f}x" if (cid, name, m) in noise else "-" for m in models]
            print(f"| {cid:02d} {name} | " + " | ".join(row) + " |")
    if conf.get("near_ties"):
        print()
        print(
            "Near-ties (a greedy token flip that noise explains: on the truth's history, the reference's own logit gap within twice the per-logit noise):"
        )
        print()
        for note in conf["near_ties"]:
            print(f"- {note}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
