#!/usr/bin/env bash
# Regenerates the committed reference dumps of the default suite (checkpoints/suite.toml) by
# running the real dumpers. Needs the reference environment (scripts/setup-references.sh).
#
#   scripts/make-dumps.sh            # every model x prompt x reference of the suite
#   scripts/make-dumps.sh pytorch    # only one reference
#   scripts/make-dumps.sh "" missing # only the dumps not there yet
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PARITY_CACHE:-$HOME/.cache/parity}/venv/bin/python"
[ -x "$PY" ] || { echo "make-dumps: no reference environment at $PY; run scripts/setup-references.sh" >&2; exit 3; }
only="${1:-}"
# The same environment `parity run --live` gives the dumpers: every reference in f32.
export DEV=CPU HALF=0 PARITY_LLAMACPP_KV_TYPE=f32

"$PY" - "$only" "${2:-}" <<'PYEOF'
import subprocess, sys, tomllib, time
from pathlib import Path
only = sys.argv[1]
suite = tomllib.load(open("checkpoints/suite.toml", "rb"))
for model in suite["model"]:
    for prompt in suite["prompt"]:
        for ref in model["refs"]:
            if only and ref != only:
                continue
            out = f"{suite['dumps']}/{model['id']}/{prompt['id']}/{ref}"
            if len(sys.argv) > 2 and sys.argv[2] == "missing" and Path(out, "manifest.toml").exists():
                continue
            path = model.get("ref_paths", {}).get(ref, model["path"])
            cmd = [sys.executable, f"references/{ref}/dump.py", "--model", path, "--prompt", prompt["text"],
                   "--n-generate", str(suite["n_generate"]), "--temperature", str(suite["temperature"]),
                   "--threads", str(suite["threads"]), "--out", out]
            t0 = time.time()
            r = subprocess.run(cmd)
            print(f"make-dumps: {out} exit {r.returncode} in {time.time() - t0:.1f} s", flush=True)
            if r.returncode != 0:
                sys.exit(r.returncode)
PYEOF
