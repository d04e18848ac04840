#!/usr/bin/env bash
# The README's picture of the HTML report (docs/report.png): the embedded default suite run into a
# temporary proof folder (`parity run`, committed dumps, seconds), its report.html rendered by
# headless Chromium: the verdict, the checkpoint table and the first row of error-vs-layer charts.
#
#   scripts/screenshot.sh          # needs chromium (Debian: apt-get install -y chromium)
#
# The run's bundle, hash store and browser profile live in a temporary folder, removed at the end.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
if ! command -v chromium >/dev/null; then
    echo "screenshot.sh: chromium not found; install it (apt-get install -y chromium)" >&2
    exit 2
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

PARITY_CACHE="$tmp/cache" LLORCH_PROOF_DIR="$tmp/proof" LLORCH_RUN_ID=example \
    cargo run --release -q -p harness --bin parity -- run >/dev/null
# 1280 CSS pixels wide drawn at 0.75 (960 x 1268 pixels): small enough for the README (< 300 KB),
# tall enough to end below the first row of charts. --no-sandbox: Chromium refuses root otherwise.
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --user-data-dir="$tmp/chromium" \
    --force-device-scale-factor=0.75 --window-size=1280,1690 \
    --screenshot="$root/docs/report.png" "file://$tmp/proof/run/example/report.html" 2>/dev/null
ls -l docs/report.png
