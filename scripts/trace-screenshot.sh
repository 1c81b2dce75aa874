#!/usr/bin/env bash
# The timeline of an execution trace as a person sees it: `go tool trace -http` serves its
# viewer on loopback, headless Chromium draws the first range of the timeline, and the
# picture is written to PNG. Bounded in time; stops the viewer by its process group.
#
#   scripts/trace-screenshot.sh TRACE_FILE OUT.png [WIDTHxHEIGHT]
set -euo pipefail
trace=$1 out=$2 size=${3:-1600x1000}
browser=$(command -v chromium || command -v chromium-browser || true)
[ -n "$browser" ] || { echo "trace-screenshot.sh: chromium is not installed (apt-get install chromium)" >&2; exit 1; }
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
profile=$(mktemp -d)
setsid go tool trace -http="127.0.0.1:$port" "$trace" >/dev/null 2>&1 &
viewer=$!
trap 'kill -- -$viewer 2>/dev/null || true; rm -rf "$profile"' EXIT
# The viewer analyses the whole trace before it listens.
for _ in $(seq 600); do
  curl -fs -o /dev/null "http://127.0.0.1:$port/" && break
  sleep 0.1
done
# The first of the ranges the viewer splits a large trace into (or the whole trace).
range=$(curl -fs "http://127.0.0.1:$port/" | grep -o '/trace?start=[0-9]*&amp;end=[0-9]*' | head -1 | sed 's/&amp;/\&/')
url="http://127.0.0.1:$port${range:-/trace}"
timeout 120 "$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$profile" --hide-scrollbars --window-size="${size/x/,}" \
  --virtual-time-budget=30000 --screenshot="$out" "$url" >/dev/null 2>&1
[ -s "$out" ] && echo "trace-screenshot.sh: $url -> $out"
