#!/usr/bin/env bash
# Creates (or checks) the Python environment the reference dumpers run in.
#
#   scripts/setup-references.sh            # idempotent; a second run is a no-op
#   PARITY_CACHE=/some/dir scripts/setup-references.sh
#
# The environment lives outside git, in $PARITY_CACHE/venv (default ~/.cache/parity/venv); a
# reference with its own requirements.txt gets $PARITY_CACHE/venv-<reference> beside it.
# Pins below are the versions the committed dumps and tolerances were made with.
#
# Beside it, $PARITY_CACHE/venv-client holds the `openai` client package alone, for the server's
# client test (serve/tests/openai_client.py): kept apart so that it never changes the reference
# environment, whose identity every dump is cached by.
set -euo pipefail

CACHE="${PARITY_CACHE:-$HOME/.cache/parity}"
VENV="$CACHE/venv"
STAMP="$VENV/.parity-setup-done"

CLIENT_VENV="$CACHE/venv-client"
CLIENT_PIN="openai==3.51.0"
if [ ! -f "$CLIENT_VENV/.parity-setup-done" ] || [ "$(cat "$CLIENT_VENV/.parity-setup-done")" != "$CLIENT_PIN" ]; then
  echo "setup-references: installing $CLIENT_PIN into $CLIENT_VENV"
  mkdir -p "$CACHE"
  [ -x "$CLIENT_VENV/bin/python" ] || python3 -m venv "$CLIENT_VENV"
  "$CLIENT_VENV/bin/python" -m pip install -q "$CLIENT_PIN"
  printf '%s' "$CLIENT_PIN" > "$CLIENT_VENV/.parity-setup-done"
fi

PINS=(
  "numpy==2.3.5"
  "torch==2.15.0"
  "transformers==5.23.0"
  "accelerate==1.15.0"
  "safetensors==0.8.0"
  "tokenizers==0.23.3"
  "sentencepiece==0.2.3"
  "tinygrad==0.14.0"
  "gguf==0.19.0"
  "ruff==0.8.6"  # lints and formats the Python (.ci/run lint phase)
)
LLAMA_PIN="llama-cpp-python==0.3.36"
# A native (-march=native) build segfaulted in decode on the development machine.
LLAMA_CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF"

step() { echo "setup-references: $*"; }
t0=$(date +%s)

# A reference whose pins clash with the shared ones (references/<name>/requirements.txt) gets its
# own environment, $CACHE/venv-<name>; the harness runs its dumper there (Dumpers::python_for).
own_envs() {
  local req name env
  for req in "$(dirname "$0")"/../references/*/requirements.txt; do
    [ -f "$req" ] || continue
    name="$(basename "$(dirname "$req")")"
    env="$CACHE/venv-$name"
    if [ -f "$env/.parity-setup-done" ] && cmp -s "$req" "$env/.parity-setup-done"; then
      step "$env is up to date"
      continue
    fi
    step "creating $env from references/$name/requirements.txt"
    rm -rf "$env"
    python3 -m venv "$env"
    "$env/bin/python" -m pip install -q --upgrade pip
    "$env/bin/python" -m pip install -q -r "$req"
    cp "$req" "$env/.parity-setup-done"
  done
}
mkdir -p "$CACHE"
own_envs

want="$(printf '%s\n' "${PINS[@]}" "$LLAMA_PIN" "$LLAMA_CMAKE_ARGS")"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  echo "setup-references: $VENV is up to date (nothing to do)"
  exit 0
fi

need_apt=()
command -v clang >/dev/null 2>&1 || need_apt+=(clang)
command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)
command -v g++ >/dev/null 2>&1 || need_apt+=(g++)
if [ ${#need_apt[@]} -gt 0 ]; then
  step "installing ${need_apt[*]} through apt"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
  step "creating $VENV"
  mkdir -p "$CACHE"
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip wheel setuptools

step "installing ${PINS[*]}"
"$PY" -m pip install -q "${PINS[@]}"

if ! "$PY" -c "import llama_cpp" 2>/dev/null || ! "$PY" -m pip show llama-cpp-python 2>/dev/null | grep -q "^Version: ${LLAMA_PIN#*==}$"; then
  step "building $LLAMA_PIN from source (about 3 minutes on 2 cores)"
  CMAKE_ARGS="$LLAMA_CMAKE_ARGS" FORCE_CMAKE=1 "$PY" -m pip install -q --no-cache-dir --no-binary llama-cpp-python "$LLAMA_PIN"
fi

"$PY" - <<'PYEOF'
import importlib
for m in ("numpy", "torch", "transformers", "accelerate", "tinygrad", "gguf", "llama_cpp"):
    mod = importlib.import_module(m)
    print(f"setup-references:   {m} {getattr(mod, '__version__', '?')}")
PYEOF

printf '%s' "$want" > "$STAMP"
step "done in $(( $(date +%s) - t0 )) s; python is $PY"
