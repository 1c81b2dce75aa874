#!/usr/bin/env bash
# The timeline of an execution trace as a person sees it: `go tool trace -http` serves its
# viewer on loopback, headless Chromium (driven by playwright-core from npm, installed
# under target/screenshot on first use) draws the timeline once the viewer has imported
# it, and the picture is written to PNG. Bounded in time; stops the viewer by its process
# group.
#
#   scripts/trace-screenshot.sh TRACE_FILE OUT.png [WIDTHxHEIGHT] [FIRST-LAST]
#
# FIRST-LAST: which of the viewer's events to draw (default 100000-130000: a few
# milliseconds of a loaded server, where every row and slice is visible; a whole second
# is millions of events, more than a browser imports in a reasonable time).
set -euo pipefail
trace=$(realpath "$1") out=$(realpath -m "$2") size=${3:-1600x1000} range=${4:-100000-130000}
browser=$(command -v chromium || command -v chromium-browser || true)
[ -n "$browser" ] || { echo "trace-screenshot.sh: chromium is not installed (apt-get install chromium)" >&2; exit 1; }
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
command -v node >/dev/null || { echo "trace-screenshot.sh: node is not installed (apt-get install nodejs npm)" >&2; exit 1; }
cd "$(dirname "$0")/.."
[ -d target/screenshot/node_modules/playwright-core ] ||
  npm install --no-audit --no-fund --loglevel=error --prefix target/screenshot playwright-core@1 >/dev/null
setsid go tool trace -http="127.0.0.1:$port" "$trace" >/dev/null 2>&1 &
viewer=$!
trap 'kill -- -$viewer 2>/dev/null || true' EXIT
# The viewer analyses the whole trace before it listens.
for _ in $(seq 600); do
  curl -fs -o /dev/null "http://127.0.0.1:$port/" && break
  sleep 0.1
done
url="http://127.0.0.1:$port/trace?start=${range%-*}&end=${range#*-}"
w=${size%x*} h=${size#*x}
timeout 180 node scripts/trace-screenshot.js "$url" "$out" "$w" "$h"
[ -s "$out" ] && echo "trace-screenshot.sh: $url -> $out"
