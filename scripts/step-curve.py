#!/usr/bin/env python3
"""Draws the engine's per-step logit error along the generation, one line per reference, as an SVG
(stdlib only), from a parity run bundle.

    python3 scripts/step-curve.py .proof_bundle/run/<run id> smollm2-q4_1 docs/step-error-smollm2-q4_1.svg

Each point is the relative RMS distance (`step_rel_rms.<t>` of the `step_logits` check) between the
engine's logits at generated step t and one reference's (or the f64 truth's), every implementation
fed the truth's history; at each step the worst over the model's prompts. Prints the values drawn.
"""

import json
import math
import sys
from pathlib import Path

COLORS = ["#1f77b4", "#2ca02c", "#9467bd", "#d62728", "#ff7f0e"]


def curves(results, model):
    """{reference: {step: worst relative RMS over prompts}} for `model`'s step_logits checks."""
    out = {}
    for case in results["cases"]:
        if case["model"] != model or case["reference"].startswith("engine-repeat"):
            continue
        for check in case["checks"]:
            if check["key"] != "step_logits":
                continue
            for name, value in check["metrics"].items():
                if name.startswith("step_rel_rms."):
                    step = int(name.rsplit(".", 1)[1])
                    line = out.setdefault(case["reference"], {})
                    line[step] = max(line.get(step, 0.0), value)
    return out


def svg(lines, title):
    w, h, left, right, top, bottom = 640, 300, 56, 150, 28, 36
    values = [v for line in lines.values() for v in line.values() if v > 0]
    steps = [s for line in lines.values() for s in line]
    lo, hi = math.floor(math.log10(min(values))), math.ceil(math.log10(max(values)))
    hi = max(hi, lo + 1)
    last = max(steps)
    x = lambda s: left + (w - left - right) * s / max(last, 1)  # noqa: E731
    y = lambda v: top + (h - top - bottom) * (hi - math.log10(max(v, 10.0**lo))) / (hi - lo)  # noqa: E731
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="11">']
    out.append(f'<rect width="{w}" height="{h}" fill="white"/><text x="{left}" y="16" font-size="12">{title}</text>')
    for decade in range(lo, hi + 1):
        yy = y(10.0**decade)
        out.append(f'<line x1="{left}" y1="{yy:.1f}" x2="{w - right}" y2="{yy:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{left - 4}" y="{yy + 3:.1f}" text-anchor="end">1e{decade}</text>')
    for s in range(0, last + 1, 4):
        out.append(f'<text x="{x(s):.1f}" y="{h - bottom + 14}" text-anchor="middle">{s}</text>')
    out.append(f'<text x="{(left + w - right) / 2:.1f}" y="{h - 6}" text-anchor="middle">generated step</text>')
    for i, (name, line) in enumerate(sorted(lines.items())):
        color = COLORS[i % len(COLORS)]
        points = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in sorted(line.items()))
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{points}"/>')
        ly = top + 14 * i + 8
        out.append(f'<line x1="{w - right + 10}" y1="{ly}" x2="{w - right + 28}" y2="{ly}" stroke="{color}" stroke-width="2"/>')
        out.append(f'<text x="{w - right + 32}" y="{ly + 4}">engine vs {name}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main(bundle, model, target):
    results = json.loads((Path(bundle) / "results.json").read_text())
    lines = curves(results, model)
    if not lines:
        sys.exit(f"step-curve: no step_logits checks of model {model!r} in {bundle}")
    Path(target).write_text(svg(lines, f"{model}: relative RMS of the step logits, worst over prompts (log scale)"))
    for name, line in sorted(lines.items()):
        print(f"{name}: " + " ".join(f"{line[s]:.1e}" for s in sorted(line)))


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
