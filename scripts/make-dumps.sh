#!/usr/bin/env bash
# Writes the reference dumps of a suite (default: checkpoints/suite.toml, whose dumps are committed)
# by running the real dumpers, into the suite's `dumps` folder. Needs the reference environment
# (scripts/setup-references.sh). Besides each model's `refs`, every case also gets the dump of the
# suite's `truth` (the float64 reference), from the model's `ref_paths` entry for it if any.
#
#   scripts/make-dumps.sh                                     # every model x prompt x reference, and the truth
#   scripts/make-dumps.sh checkpoints/suite.toml pytorch      # only one reference
#   scripts/make-dumps.sh checkpoints/suite.toml pytorch-f64  # only the truth
#   scripts/make-dumps.sh checkpoints/suite-real.toml "" missing  # only the dumps not there yet
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PARITY_CACHE:-$HOME/.cache/parity}/venv/bin/python"
[ -x "$PY" ] || { echo "make-dumps: no reference environment at $PY; run scripts/setup-references.sh" >&2; exit 3; }
suite="${1:-checkpoints/suite.toml}"
only="${2:-}"
# The same environment `parity run --live` gives the dumpers: every reference in f32.
export DEV=CPU HALF=0 PARITY_LLAMACPP_KV_TYPE=f32

"$PY" - "$suite" "$only" "${3:-}" <<'PYEOF'
import os, subprocess, sys, tomllib, time
from pathlib import Path
suite_path, only, missing = sys.argv[1], sys.argv[2], sys.argv[3] == "missing"
suite = tomllib.load(open(suite_path, "rb"))
cache = Path(os.environ.get("PARITY_CACHE", Path.home() / ".cache/parity"))

def resolve(path):  # as harness::suite::resolve
    return str(cache / path[len("cache:"):]) if path.startswith("cache:") else os.path.expanduser(path)

for model in suite["model"]:
    for prompt in suite["prompt"]:
        if "prompts" in model and prompt["id"] not in model["prompts"]:
            continue
        truth = [suite["truth"]] if "truth" in suite and suite["truth"] not in model["refs"] else []
        for ref in model["refs"] + truth:
            if only and ref != only:
                continue
            out = f"{resolve(suite['dumps'])}/{model['id']}/{prompt['id']}/{ref}"
            if missing and Path(out, "manifest.toml").exists():
                continue
            path = resolve(model.get("ref_paths", {}).get(ref, model["path"]))
            cmd = [sys.executable, f"references/{ref}/dump.py", "--model", path, "--prompt", prompt["text"],
                   "--n-generate", str(suite["n_generate"]), "--temperature", str(suite["temperature"]),
                   "--threads", str(suite["threads"]), "--out", out]
            t0 = time.time()
            r = subprocess.run(cmd)
            print(f"make-dumps: {out} exit {r.returncode} in {time.time() - t0:.1f} s", flush=True)
            if r.returncode != 0:
                sys.exit(r.returncode)
PYEOF
