#!/usr/bin/env bash
# How small a bug does the oracle catch? For each model of a suite, plants deterministic noise of
# relative RMS REL on a middle layer's block output (`--plant perturb:LAYER:REL`) and walks down the
# ladder 1e-1, 3e-2, 1e-2, ... 1e-7 until `parity run` stops failing (exit 1). Prints, per model,
# the smallest REL still caught (every larger rung caught too) and the first one missed.
#
#   scripts/sharpness.sh                                   # checkpoints/suite.toml, its committed dumps
#   scripts/sharpness.sh --suite checkpoints/suite-real.toml --model smollm2-f32 --prompt short
#   scripts/sharpness.sh --before                          # the same, judged without the f64 truth
#
# Options: --suite FILE (default checkpoints/suite.toml) and --model ID (default: every model of
# the suite) pick what runs; --before judges a copy of the suite with its `truth = ...` line
# removed, the judgement before the noise-floor one (the hook for comparing the two: run once with
# and once without); anything else (--prompt, --refs, --live, --threads ...) is passed through to
# `parity run` unchanged. A model whose unplanted run already fails is reported as such, not measured.
#
# Uses the parity binary built with the plant feature (built or brought up to date first):
#   cargo build --release -p harness --features plant --target-dir target/plant
# Bundles of the many runs go to a temporary LLORCH_PROOF_DIR, removed at the end.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
parity=target/plant/release/parity
ladder=(1e-1 3e-2 1e-2 3e-3 1e-3 3e-4 1e-4 3e-5 1e-5 3e-6 1e-6 3e-7 1e-7)

suite=checkpoints/suite.toml
model=""
before=0
pass=()
while (($#)); do
    case "$1" in
        --suite) suite=${2:?--suite needs a file}; shift 2 ;;
        --model) model=${2:?--model needs an id}; shift 2 ;;
        --before) before=1; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) pass+=("$1"); shift ;;
    esac
done
[[ -f $suite ]] || { echo "sharpness: no suite $suite" >&2; exit 2; }

# Always through cargo, so the binary is never older than the tree (a no-op when it is current).
cargo build --release -q -p harness --features plant --target-dir target/plant

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export LLORCH_PROOF_DIR=$work/bundles

# --before: the same suite without its f64 truth. Suite paths are relative to the project root,
# not to the suite file, so the copy may live anywhere.
if ((before)); then
    sed '/^[[:space:]]*truth[[:space:]]*=/d' "$suite" >"$work/suite-before.toml"
    suite=$work/suite-before.toml
fi

# The suite's model ids and paths, in order ([[model]] tables: `id = "..."`, `path = "..."`).
mapfile -t models < <(awk '
    /^\[\[/ { in_model = ($0 ~ /^\[\[model\]\]/) }
    in_model && /^id[[:space:]]*=/ { gsub(/.*=[[:space:]]*"|".*/, ""); id = $0 }
    in_model && /^path[[:space:]]*=/ { gsub(/.*=[[:space:]]*"|".*/, ""); print id "\t" $0 }
' "$suite")
if [[ -n $model ]]; then
    mapfile -t models < <(printf '%s\n' "${models[@]}" | awk -F'\t' -v m="$model" '$1 == m')
    ((${#models[@]})) || { echo "sharpness: no model $model in $suite" >&2; exit 2; }
fi

# Exit code of one run of `model` (0 pass, 1 a check failed, 2/3 trouble), planted with $3 if given.
run() {
    local id=$1 plant=${2:-}
    local args=(run --suite "$suite" --model "$id" --format json "${pass[@]}")
    [[ -n $plant ]] && args+=(--plant "$plant")
    local code=0
    "$parity" "${args[@]}" >/dev/null 2>"$work/stderr" || code=$?
    echo "$code"
}

printf '%-20s %6s  %-16s %-16s\n' model layer "smallest caught" "first missed"
for entry in "${models[@]}"; do
    id=${entry%%$'\t'*}
    path=${entry#*$'\t'}
    case $path in
        cache:*) path=${PARITY_CACHE:-$HOME/.cache/parity}/${path#cache:} ;;
        "~/"*) path=$HOME/${path#"~/"} ;;
        /*) ;;
        *) path=$root/$path ;;
    esac
    layers=$("$parity" inspect "$path" 2>/dev/null | sed -n 's/.*layers: \([0-9][0-9]*\).*/\1/p' | head -1 || true)
    if [[ -z $layers ]]; then
        printf '%-20s %6s  %s\n' "$id" - "cannot inspect $path"
        continue
    fi
    layer=$((layers / 2))
    base=$(run "$id")
    if [[ $base != 0 ]]; then
        printf '%-20s %6s  %s\n' "$id" "$layer" "unplanted run exits $base: $(head -c 200 "$work/stderr" | tr '\n' ' ')"
        continue
    fi
    caught=none missed=none
    for rel in "${ladder[@]}"; do
        code=$(run "$id" "perturb:$layer:$rel")
        case $code in
            1) caught=$rel ;;
            0) missed=$rel; break ;;
            *) missed="error (exit $code)"; break ;;
        esac
    done
    printf '%-20s %6s  %-16s %-16s\n' "$id" "$layer" "$caught" "$missed"
done
