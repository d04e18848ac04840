#!/usr/bin/env bash
# Renders proof bundles' report.html in headless Chromium, as a reader's browser would, and checks
# the result for rendering errors (not pixels): the page's DOM after rendering must hold the
# verdict, the checkpoint table and a layer x checkpoint heatmap with a detail panel per cell, the
# browser must log no console error, and a full-width screenshot must come out (a blank or failed
# render gives a tiny, single-colour PNG).
#
#   scripts/check-report-render.sh BUNDLE...     # e.g. .proof_bundle/run/<run id>
#
# Installs chromium with apt when it is missing and this runs as root (Debian 12); exit 2 otherwise.
set -euo pipefail

[ $# -gt 0 ] || { echo "usage: $0 BUNDLE..." >&2; exit 2; }
if ! command -v chromium >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq chromium >/dev/null
    else
        echo "check-report-render: chromium not found; install it (apt-get install -y chromium)" >&2
        exit 2
    fi
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
browse() {  # --no-sandbox: Chromium refuses root otherwise
    chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --user-data-dir="$tmp/profile" \
        --enable-logging=stderr --v=0 "$@"
}
status=0
for bundle in "$@"; do
    page="$(cd "$bundle" && pwd)/report.html"
    [ -f "$page" ] || { echo "check-report-render: $page: no report" >&2; exit 2; }
    browse --dump-dom "file://$page" >"$tmp/dom.html" 2>"$tmp/log.txt" || true
    browse --window-size=1280,2000 --screenshot="$tmp/shot.png" "file://$page" 2>>"$tmp/log.txt" >/dev/null || true
    problems=()
    grep -q "Verdict:" "$tmp/dom.html" || problems+=("no verdict in the rendered page")
    grep -q '<table class="map">' "$tmp/dom.html" || problems+=("no layer x checkpoint heatmap")
    cells=$({ grep -o '<td class="m[0-9][^"]*"><a href="#map-' "$tmp/dom.html" || true; } | wc -l)
    panels=$({ grep -o '<div class="detail" id="map-' "$tmp/dom.html" || true; } | wc -l)
    [ "$cells" -gt 0 ] && [ "$cells" = "$panels" ] || problems+=("$cells heatmap cells but $panels detail panels")
    if grep -E "CONSOLE|Uncaught|Refused to" "$tmp/log.txt" >"$tmp/console.txt"; then
        problems+=("console: $(head -1 "$tmp/console.txt")")
    fi
    size=$(stat -c %s "$tmp/shot.png" 2>/dev/null || echo 0)
    [ "$size" -gt 20000 ] || problems+=("screenshot of $size bytes: blank or failed render")
    if [ ${#problems[@]} -eq 0 ]; then
        echo "check-report-render: $bundle: rendered ($cells heatmap cells, screenshot $size bytes)"
    else
        for problem in "${problems[@]}"; do echo "check-report-render: $bundle: $problem" >&2; done
        status=1
    fi
done
exit $status
