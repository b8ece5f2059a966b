#!/usr/bin/env bash
# Check that a `securefed report` page renders in a real browser (headless Chromium).
#
# Usage:  bash docs/check_report_renders.sh [REPORT.html] [SCREENSHOT.png]
#
# Without arguments it runs examples/bfi_study.toml into a temporary folder,
# writes its report and screenshots it. Chromium is not a dependency of the
# project and CI installs nothing by hand: this script installs Debian's
# `chromium` with apt-get when it is missing (needs root), so run it on a
# workstation or a throwaway container. The tests check the same page without a
# browser (tests/securefed/test_report.py: every <img> is a PNG beside the page) and in
# headless Chromium when it is installed (tests/securefed/test_report_renders.py: the laid-out
# page, measured by the browser).
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
report="${1:-}"
shot="${2:-report_screenshot.png}"

if ! command -v chromium >/dev/null 2>&1; then
    echo "installing chromium (apt-get)..." >&2
    apt-get update >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y chromium >/dev/null
fi

if [ -z "$report" ]; then
    work="$(mktemp -d)"
    cp -r "$here/examples/." "$work/"
    rm -rf "$work/out"
    securefed run "$work/bfi_study.toml" --quiet >/dev/null
    securefed report "$work/out/bfi/result.json" --out "$work/report.html"
    report="$work/report.html"
fi

report="$(cd "$(dirname "$report")" && pwd)/$(basename "$report")"
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars \
    --window-size=1100,2200 --screenshot="$(realpath -m "$shot")" "file://$report" 2>/dev/null
test -s "$shot" || { echo "no screenshot written" >&2; exit 1; }
echo "screenshot of $report written to $shot"
