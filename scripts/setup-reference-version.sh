#!/usr/bin/env bash
# Creates (or checks) a second, pinned environment for one reference, so that two releases of one
# implementation can be judged side by side:
#
#   scripts/setup-reference-version.sh llamacpp 0.3.20     # then: --refs llamacpp@0.3.20,...
#   scripts/setup-reference-version.sh llamacpp 0.3.36     # the shared pin, built the same way
#
# The environment is $PARITY_CACHE/venv-<reference>@<version> (default ~/.cache/parity), holding
# the shared numpy pin and the reference's library at that version; the harness runs
# references/<reference>/dump.py there for the name `<reference>@<version>` (harness/src/
# reference.rs) and refuses one without the stamp this script writes last. Idempotent: a second
# run is a no-op. Only llamacpp is versioned so far: its library is the one our reference exercises
# through its C API, built from the sdist (several minutes on 2 cores; run niced).
set -euo pipefail

usage() { echo "usage: $0 llamacpp VERSION   (e.g. 0.3.20)" >&2; exit 2; }
[ $# -eq 2 ] || usage
NAME="$1"
VERSION="$2"
[[ "$VERSION" =~ ^[0-9]+(\.[0-9]+)*$ ]] || { echo "setup-reference-version: version '$VERSION' is not dotted numbers" >&2; exit 2; }

case "$NAME" in
  llamacpp)
    # The shared environment's numpy pin and build flags (scripts/setup-references.sh): the two
    # environments differ in the llama.cpp release alone.
    PINS=("numpy==2.3.5" "llama-cpp-python==$VERSION")
    CMAKE="-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF"
    MODULE=llama_cpp
    ;;
  *) echo "setup-reference-version: '$NAME' has no versioned environment (known: llamacpp)" >&2; exit 2 ;;
esac

CACHE="${PARITY_CACHE:-$HOME/.cache/parity}"
ENV="$CACHE/venv-$NAME@$VERSION"
STAMP="$ENV/.parity-setup-done"
want="$(printf '%s\n' "${PINS[@]}" "$CMAKE")"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  echo "setup-reference-version: $ENV is up to date (nothing to do)"
  exit 0
fi

t0=$(date +%s)
echo "setup-reference-version: building $ENV (${PINS[*]}; from source, several minutes)"
rm -rf "$ENV"
mkdir -p "$CACHE"
python3 -m venv "$ENV"
PY="$ENV/bin/python"
"$PY" -m pip install -q --upgrade pip wheel setuptools
"$PY" -m pip install -q "${PINS[0]}"
CMAKE_ARGS="$CMAKE" FORCE_CMAKE=1 nice -n 10 "$PY" -m pip install -q --no-cache-dir --no-binary llama-cpp-python "${PINS[1]}"
got="$("$PY" -c "import $MODULE; print($MODULE.__version__)")"
if [ "$got" != "$VERSION" ]; then
  echo "setup-reference-version: $ENV imports $MODULE $got, not $VERSION" >&2
  exit 3
fi
printf '%s' "$want" > "$STAMP"
echo "setup-reference-version: done in $(( $(date +%s) - t0 )) s; python is $PY"
