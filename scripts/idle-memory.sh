#!/usr/bin/env bash
# Memory per idle keep-alive connection: RSS growth of one server (one worker, CPU 0) over
# N connections (client on CPU 1) that each sent one request, read the answer, then stayed
# open and silent, for leftpad, nginx and Go's net/http (the article's service,
# bench/go-v2), side by side; each server measured ROUNDS times, alternating; medians.
#
#   scripts/idle-memory.sh [-n CONNECTIONS] [-r ROUNDS] [-s "leftpad nginx go-v2"] [-o DIR]
#
# A server may also be the path of a leftpad binary (another commit's build, to compare).
# Output: DIR/idle-memory.txt (default DIR: bench-results/runs/<date>-<commit>-idle-memory).
# Fails (exit 1) if a server did not hold every connection. Bounded: each round opens N
# connections once and holds them 3 s.
set -euo pipefail
# Transparent huge pages off for every server (PR_SET_THP_DISABLE, 41, is inherited across
# fork and exec): RSS then grows by 4 KiB pages, not 2 MiB ones, and one 2 MiB page more or
# less is 140 B per connection at 15,000, as much as the differences measured.
if [ -z "${IDLE_MEMORY_THP_OFF:-}" ]; then
  IDLE_MEMORY_THP_OFF=1 exec python3 -c 'import ctypes, os, sys
if ctypes.CDLL(None, use_errno=True).prctl(41, 1, 0, 0, 0) != 0:
    sys.exit("idle-memory.sh: prctl(PR_SET_THP_DISABLE) failed: errno %d" % ctypes.get_errno())
os.execvp("bash", ["bash"] + sys.argv[1:])' "$0" "$@"
fi
script=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
cd "$(dirname "$0")/.."
source scripts/lib.sh

conns=15000 rounds=3 servers="leftpad nginx go-v2" outdir=''
while getopts "n:r:s:o:" opt; do
  case $opt in
    n) conns=$OPTARG ;; r) rounds=$OPTARG ;; s) servers=$OPTARG ;; o) outdir=$OPTARG ;;
    *) sed -n '2,12p' "$script"; exit 2 ;;
  esac
done
# Client and server each need a descriptor per connection (the limit here is 20,000).
ulimit -n "$(ulimit -Hn)"
commit=$(commit_id)
outdir=${outdir:-bench-results/runs/$(date -u +%Y-%m-%d)-$commit-idle-memory}
mkdir -p "$outdir"
cargo build --release --quiet --bin leftpad
out="$outdir/idle-memory.txt"
workdir=$(mktemp -d)
trap 'stop_server; rm -rf "$workdir"' EXIT

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$server_pid/status"; }
median() { sort -n | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }

{
  echo "idle-memory.sh -n $conns -r $rounds, commit $commit, $(date -u +%FT%TZ)"
  echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r)"
  echo "server on CPU $server_cpu (one worker), client on CPU $load_cpu; RSS = VmRSS of the server process; transparent huge pages off for the servers"
} | tee "$out"

failures=0
for round in $(seq "$rounds"); do
  for server in $servers; do
    addr="127.0.0.1:$(free_port)"
    args=()
    # leftpad, its musl build, or a leftpad binary given by path (another commit's).
    case $server in
      leftpad | leftpad-musl | */*) args=(--access-log off --statsd off --max-connections 19000) ;;
    esac
    start_server "$server" "$addr" "$workdir" "${args[@]}"
    sleep 0.5
    grep -q '^THP_enabled:[[:space:]]*0' "/proc/$server_pid/status" ||
      { echo "idle-memory.sh: $server runs with transparent huge pages on" >&2; exit 1; }
    before=$(rss_kib)
    taskset -c "$load_cpu" python3 scripts/idle-client.py "${addr%:*}" "${addr##*:}" "$conns" \
      --hold 60 >"$workdir/client.txt" &
    client=$!
    for _ in $(seq 1200); do grep -q '^held' "$workdir/client.txt" && break; sleep 0.1; done
    sleep 3
    after=$(rss_kib)
    kill -TERM "$client"
    wait "$client" || true
    stop_server
    held=$(awk '$1 == "held" {print $2}' "$workdir/client.txt")
    closed=$(awk '$1 == "closed" {print $2}' "$workdir/client.txt")
    per=$(((after - before) * 1024 / (${held:-0} > 0 ? held : 1)))
    echo "round $round $server: held ${held:-0} closed ${closed:-?} rss_before_kib $before rss_after_kib $after bytes_per_conn $per" | tee -a "$out"
    if [ "${held:-0}" -ne "$conns" ] || [ "${closed:-1}" -ne 0 ]; then
      echo "FAIL $server: held ${held:-0} of $conns, ${closed:-?} closed by the server" | tee -a "$out"
      failures=$((failures + 1))
    fi
  done
done

echo "medians (bytes of RSS per idle keep-alive connection):" | tee -a "$out"
for server in $servers; do
  per=$(awk -v s="$server" '$3 == s":" {for (i = 4; i < NF; i++) if ($i == "bytes_per_conn") print $(i + 1)}' "$out" | median)
  printf '  %-8s %6s bytes = %s KiB\n' "$server" "$per" "$(awk -v b="$per" 'BEGIN {printf "%.2f", b / 1024}')" | tee -a "$out"
done
[ "$failures" -eq 0 ]
