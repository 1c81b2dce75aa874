#!/usr/bin/env bash
# The article's profiling workflow in one command: start leftpad (one worker on CPU 0,
# access log to a file and StatsD to a listening socket, as in production), load it with
# wrk (CPU 1), take a CPU profile and a flame graph from the admin port while the load
# runs, and write the article's reports: `top`, `top -cum`, `list` of a function, and
# `peek` at the system calls (who made them).
#
#   scripts/profile.sh [-s SECONDS] [-p PIPELINE] [-k auto|on|off] [-l REGEX] [-o DIR]
#                      [-- EXTRA LEFTPAD ARGS]
#
# -k: kernel frames (the profile's ?kernel=); -l: the function to `list` (default: the
# connection loop). Output in DIR (default bench-results/profile): profile.pb.gz,
# top.txt, top-cum.txt, list.txt, peek-syscalls.txt, cpu-split.txt (flat time by owner:
# kernel, libc, vDSO, our code, monoio, std), flamegraph.svg, run.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

seconds=10 pipeline=1 kernel=auto list='leftpad::worker::connection_loop' outdir=bench-results/profile
while getopts "s:p:k:l:o:" opt; do
  case $opt in
    s) seconds=$OPTARG ;; p) pipeline=$OPTARG ;; k) kernel=$OPTARG ;; l) list=$OPTARG ;;
    o) outdir=$OPTARG ;;
    *) sed -n '2,13p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
for tool in wrk go curl python3; do
  command -v "$tool" >/dev/null || { echo "profile.sh: $tool is not installed (see .ci/run)" >&2; exit 1; }
done

commit=$(commit_id)
mkdir -p "$outdir"
cargo build --release --quiet --bin leftpad

addr="127.0.0.1:$(free_port)"
admin="127.0.0.1:$(free_port)"
statsd_port=$(free_port)
workdir=$(mktemp -d)
# A StatsD stand-in that reads and discards, so datagrams are delivered as in production.
python3 -c "
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(('127.0.0.1', int(sys.argv[1])))
while True:
    s.recv(65536)
" "$statsd_port" &
statsd_pid=$!
trap 'stop_server; kill $statsd_pid 2>/dev/null || true; rm -rf "$workdir"' EXIT
start_server leftpad "$addr" "$workdir" --admin "$admin" \
  --access-log "$workdir/access.log" --statsd "127.0.0.1:$statsd_port" "$@"

cat >"$workdir/pipeline.lua" <<LUA
init = function(args) req = string.rep(wrk.format(nil), tonumber(args[1]) or 1) end
request = function() return req end
LUA
# Load for both captures plus a margin; wrk stops by itself.
taskset -c "$load_cpu" wrk -t1 -c64 -d"$((2 * seconds + 4))s" --latency -s "$workdir/pipeline.lua" \
  "http://$addr$bench_path" -- "$pipeline" >"$workdir/wrk.txt" 2>&1 &
wrk_pid=$!
sleep 1
curl -fsS -o "$outdir/profile.pb.gz" "http://$admin/debug/pprof/profile?seconds=$seconds&kernel=$kernel"
curl -fsS -o "$outdir/flamegraph.svg" "http://$admin/debug/pprof/flamegraph?seconds=$seconds&kernel=$kernel"
wait "$wrk_pid"

pprof() { go tool pprof "$@" "$outdir/profile.pb.gz" 2>&1; }
pprof -top -nodecount=40 >"$outdir/top.txt"
pprof -top -cum -nodecount=60 >"$outdir/top-cum.txt"
pprof -list "$list" >"$outdir/list.txt"
# The system-call wrappers (libc, vDSO) and who called them.
pprof -peek '^(syscall|__libc_send|__GI___libc_write|__libc_recv|clock_gettime|__vdso_clock_gettime)$' \
  >"$outdir/peek-syscalls.txt"
# Who owns the CPU: flat time by source file, grouped (kernel, libc, vDSO, our code,
# monoio, the io_uring crate, Rust's std, other crates).
pprof -top -files -nodecount=100000 -nodefraction=0 -edgefraction=0 |
  scripts/cpu-split.py >"$outdir/cpu-split.txt"
{
  echo "scripts/profile.sh -s $seconds -p $pipeline -k $kernel $*"
  echo "date: $(date -u +%FT%TZ)"
  echo "commit: $commit"
  echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r)"
  echo "load: wrk -t1 -c64, pipeline $pipeline, server on CPU $server_cpu, wrk on CPU $load_cpu"
  echo "server: access log to a file, StatsD (rate 0.5) to a listening socket"
  grep -E "Requests/sec|requests in" "$workdir/wrk.txt"
} >"$outdir/run.txt"
cat "$outdir/run.txt"
head -24 "$outdir/top.txt"
