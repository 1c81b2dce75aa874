#!/usr/bin/env bash
# The article's load test, `ab -k -c 8 -n 100000`, against one server: server on CPU 0,
# ab on CPU 1, loopback only, bounded (ab stops after -n requests; a 300 s timeout).
#
#   scripts/ab.sh [-s leftpad|floor|nginx] [-c 8] [-n 100000] [-o RAW_OUTPUT] [-- EXTRA SERVER ARGS]
#
# Prints one line: server, req/s, latency percentiles (ms, as ab reports them), failed
# requests, and the server's CPU µs per request (utime+stime from /proc over the run).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

server=leftpad conns=8 requests=100000 out=''
while getopts "s:c:n:o:" opt; do
  case $opt in
    s) server=$OPTARG ;; c) conns=$OPTARG ;; n) requests=$OPTARG ;; o) out=$OPTARG ;;
    *) sed -n '2,9p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
command -v ab >/dev/null || { echo "ab.sh: ab is not installed (apt-get install apache2-utils)" >&2; exit 1; }

# ab speaks HTTP/1.0 keep-alive: the floor must answer as leftpad answers such a client.
[ "$server" = floor ] && set -- --http10-keep-alive "$@"
addr="127.0.0.1:$(free_port)"
workdir=$(mktemp -d)
trap 'stop_server; rm -rf "$workdir"' EXIT
start_server "$server" "$addr" "$workdir" "$@"

ticks() { awk '{print $14 + $15}' "/proc/$server_pid/stat"; }
before=$(ticks)
timeout 300 taskset -c "$load_cpu" ab -k -q -c "$conns" -n "$requests" "http://$addr$bench_path" >"$workdir/ab.txt" 2>&1
after=$(ticks)
[ -n "$out" ] && cp "$workdir/ab.txt" "$out"

awk -v server="$server" -v ticks=$((after - before)) -v hz="$(getconf CLK_TCK)" '
  /^Complete requests:/ { done = $3 }
  /^Failed requests:/ { failed = $3 }
  /^Non-2xx responses:/ { non2xx = $3 }
  /^Requests per second:/ { rps = $4 }
  /^ +50% / { p50 = $2 } /^ +90% / { p90 = $2 } /^ +99% / { p99 = $2 } /^ +100% / { max = $2 }
  END {
    printf "server=%s tool=ab conns=%s requests=%s rps=%.0f p50_ms=%s p90_ms=%s p99_ms=%s max_ms=%s failed=%s non2xx=%d cpu_us_per_req=%.3f\n",
      server, "'"$conns"'", done, rps, p50, p90, p99, max, failed, non2xx, (done > 0 ? ticks / hz * 1e6 / done : 0)
  }' "$workdir/ab.txt"
