#!/usr/bin/env bash
# Writes the reference dumps of a suite (default: checkpoints/suite.toml, whose dumps are committed)
# by running the real dumpers, into the suite's `dumps` folder. Needs the reference environment
# (scripts/setup-references.sh). Besides each model's `refs`, every case also gets the dump of the
# suite's `truth` (the float64 reference), from the model's `ref_paths` entry for it if any.
#
# With a truth, each case's truth dump is made first, decoding greedily, and its generated ids are
# the decode history every other reference of the case is fed (--force-tokens): all decode on the
# same tokens, so their step_logits compare step by step; and its last_logits are every other
# reference's sampler input (--sampler-logits), so their samplers are judged on the same logits. A truth dump already there (made before,
# or kept by "missing") gives its ids without being redone; for one reference alone, a case whose
# truth dump is not there yet gets it made first. "missing" skips any dump with a manifest, as
# before: a dump made on another history stays until removed.
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
import numpy as np
suite_path, only, missing = sys.argv[1], sys.argv[2], sys.argv[3] == "missing"
suite = tomllib.load(open(suite_path, "rb"))
cache = Path(os.environ.get("PARITY_CACHE", Path.home() / ".cache/parity"))
truth = suite.get("truth")

def resolve(path):  # as harness::suite::resolve
    return str(cache / path[len("cache:"):]) if path.startswith("cache:") else os.path.expanduser(path)

def dump(model, prompt, ref, out, force_tokens=None, sampler_logits=None):
    path = resolve(model.get("ref_paths", {}).get(ref, model["path"]))
    # "--prompt=TEXT" as one argument: a prompt starting with "-" is never parsed as an option.
    cmd = [sys.executable, f"references/{ref}/dump.py", "--model", path, "--prompt=" + prompt["text"],
           "--n-generate", str(suite["n_generate"]), "--temperature", str(suite["temperature"]),
           "--threads", str(suite["threads"]), "--out", out]
    if force_tokens is not None:
        cmd.append("--force-tokens=" + ",".join(map(str, force_tokens)))
    if sampler_logits is not None:
        cmd += ["--sampler-logits", sampler_logits]
    t0 = time.time()
    r = subprocess.run(cmd)
    print(f"make-dumps: {out} exit {r.returncode} in {time.time() - t0:.1f} s", flush=True)
    if r.returncode != 0:
        sys.exit(r.returncode)

def truth_tokens(out, prompt):
    """The truth dump's greedy ids, the case's decode history; a dump of another case is refused."""
    manifest = tomllib.load(open(Path(out, "manifest.toml"), "rb"))
    if manifest["prompt"] != prompt["text"] or manifest["n_generate"] != suite["n_generate"] or "force_tokens" in manifest:
        sys.exit(f"make-dumps: {out} is not this case's greedy truth dump (prompt, n_generate {manifest['n_generate']} "
                 f"or force_tokens differ from the suite's); remove it or make it again")
    return [int(t) for t in np.load(Path(out, "generated.npy"))]

for model in suite["model"]:
    for prompt in suite["prompt"]:
        if "prompts" in model and prompt["id"] not in model["prompts"]:
            continue
        case = f"{resolve(suite['dumps'])}/{model['id']}/{prompt['id']}"
        history, sampler_logits = None, None
        if truth is not None:  # first: its greedy ids are every other reference's history
            out = f"{case}/{truth}"
            there = Path(out, "manifest.toml").exists()
            wanted = not only or only == truth or (only in model["refs"] and not there)
            if wanted and not (missing and there):
                if only and only != truth:
                    print(f"make-dumps: {out} is not there yet; making it first, for the history {only} is fed", flush=True)
                dump(model, prompt, truth, out)
            if Path(out, "manifest.toml").exists():
                history = truth_tokens(out, prompt)
                sampler_logits = str(Path(out, "last_logits.npy"))
        for ref in model["refs"]:
            if ref == truth or (only and ref != only):
                continue
            out = f"{case}/{ref}"
            if missing and Path(out, "manifest.toml").exists():
                continue
            dump(model, prompt, ref, out, history, sampler_logits)
PYEOF
