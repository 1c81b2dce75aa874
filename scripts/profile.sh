#!/usr/bin/env bash
# The article's profiling workflow in one command: start leftpad (one worker on CPU 0),
# load it with wrk (CPU 1), take a CPU profile and a flame graph from the admin port
# while the load runs, and write `go tool pprof -top` and the SVG.
#
#   scripts/profile.sh [-s SECONDS] [-p PIPELINE] [-o DIR] [-- EXTRA LEFTPAD ARGS]
#
# Output in DIR (default bench-results/profile): profile.pb.gz, top.txt, flamegraph.svg,
# run.txt (machine, commit, load figures).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

seconds=10 pipeline=1 outdir=bench-results/profile
while getopts "s:p:o:" opt; do
  case $opt in
    s) seconds=$OPTARG ;; p) pipeline=$OPTARG ;; o) outdir=$OPTARG ;;
    *) sed -n '2,9p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
for tool in wrk go curl; do
  command -v "$tool" >/dev/null || { echo "profile.sh: $tool is not installed (see .ci/run)" >&2; exit 1; }
done

commit=$(commit_id)
mkdir -p "$outdir"
cargo build --release --quiet --bin leftpad

addr="127.0.0.1:$(free_port)"
admin="127.0.0.1:$(free_port)"
workdir=$(mktemp -d)
trap 'stop_server; rm -rf "$workdir"' EXIT
start_server leftpad "$addr" "$workdir" --admin "$admin" "$@"

cat >"$workdir/pipeline.lua" <<LUA
init = function(args) req = string.rep(wrk.format(nil), tonumber(args[1]) or 1) end
request = function() return req end
LUA
# Load for both captures plus a margin; wrk stops by itself.
taskset -c "$load_cpu" wrk -t1 -c64 -d"$((2 * seconds + 4))s" --latency -s "$workdir/pipeline.lua" \
  "http://$addr$bench_path" -- "$pipeline" >"$workdir/wrk.txt" 2>&1 &
wrk_pid=$!
sleep 1
curl -fsS -o "$outdir/profile.pb.gz" "http://$admin/debug/pprof/profile?seconds=$seconds"
curl -fsS -o "$outdir/flamegraph.svg" "http://$admin/debug/pprof/flamegraph?seconds=$seconds"
wait "$wrk_pid"

go tool pprof -top -nodecount=40 "$outdir/profile.pb.gz" >"$outdir/top.txt" 2>&1
{
  echo "scripts/profile.sh -s $seconds -p $pipeline $*"
  echo "date: $(date -u +%FT%TZ)"
  echo "commit: $commit"
  echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r)"
  echo "load: wrk -t1 -c64, pipeline $pipeline, server on CPU $server_cpu, wrk on CPU $load_cpu"
  grep -E "Requests/sec|requests in" "$workdir/wrk.txt"
} >"$outdir/run.txt"
cat "$outdir/run.txt"
head -20 "$outdir/top.txt"
