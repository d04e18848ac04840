#!/usr/bin/env bash
# Builds the worked outside engine, examples/candle-dumper (candle, put under test by the dump
# contract: docs/subjects.md#a-worked-example-candle), and prints the command line that runs it.
#
#   dumper="$(scripts/candle-example.sh)"
#   target/release/parity conform --subject candle --subject-cmd "$dumper" --model tiny-llama-hf
#
# It is its own cargo workspace (candle's build, minutes on 2 cores, stays out of the main
# workspace's), built into $PARITY_CACHE/candle-target so that a second run only checks it is
# fresh. Build output goes to stderr; stdout is the dumper's path alone.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${PARITY_CACHE:-$HOME/.cache/parity}"
export CARGO_TARGET_DIR="$CACHE/candle-target"
nice -n 10 cargo build --release --locked --manifest-path examples/candle-dumper/Cargo.toml >&2
echo "$CARGO_TARGET_DIR/release/candle-dumper"
