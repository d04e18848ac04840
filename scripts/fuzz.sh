#!/usr/bin/env bash
# Runs every cargo-fuzz target for SECONDS each (default 60) on the committed seeds plus a local
# corpus (fuzz/corpus, not committed), and prints each target's run count. A crash stops with the
# input saved under fuzz/artifacts/<target>/: add it to fuzz/seeds/<target>/ once fixed, as a
# regression input.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(gguf safetensors tokenizer npy manifest spec)
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
rustup toolchain list | grep -q nightly || { echo "fuzz.sh: cargo fuzz needs a nightly toolchain (rustup toolchain install nightly)" >&2; exit 2; }
for t in "${targets[@]}"; do
  grep -q "name = \"$t\"" Cargo.toml || { echo "fuzz.sh: no target $t"; continue; }
  mkdir -p "corpus/$t" "seeds/$t"
  log="$(mktemp)"
  cargo +nightly fuzz run "$t" "corpus/$t" "seeds/$t" -- -max_total_time="$seconds" -rss_limit_mb=2048 -malloc_limit_mb=1024 >"$log" 2>&1 || { tail -30 "$log"; echo "fuzz.sh: $t FOUND A CRASH (see above)"; exit 1; }
  echo "fuzz.sh: $t: $(grep -o 'Done [0-9]* runs in [0-9]* second(s)' "$log") , no crash"
done
