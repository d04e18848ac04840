#!/usr/bin/env bash
# Writes the reference dumps of a suite (default: checkpoints/suite.toml, whose dumps are committed)
# into the suite's `dumps` folder: `parity dumps`, which runs the real dumpers exactly as
# `parity run --live` does (the suite's truth first; its greedy ids are every other reference's
# decode history and its last logits their sampler input). A dump whose request was answered
# before (same dumpers, environment, catalog, model file, prompt and settings) is reused from the
# dump cache ($PARITY_CACHE/dump-cache) instead of recomputed; `--no-dump-cache` as a third
# argument makes every dump afresh. Needs the reference environment (scripts/setup-references.sh).
#
#   scripts/make-dumps.sh                                     # every model x prompt x reference, and the truth
#   scripts/make-dumps.sh checkpoints/suite.toml pytorch      # only one reference (and the truth it is fed from)
#   scripts/make-dumps.sh checkpoints/suite.toml pytorch-f64  # only the truth
#   scripts/make-dumps.sh checkpoints/suite-real.toml "" --no-dump-cache
set -euo pipefail
cd "$(dirname "$0")/.."
suite="${1:-checkpoints/suite.toml}"
only="${2:-}"
args=(dumps --suite "$suite")
[ -n "$only" ] && args+=(--only "$only")
[ -n "${3:-}" ] && args+=("$3")
cargo build --release -q -p harness --bin parity
exec target/release/parity "${args[@]}"
